//! setup.py read, never executed: [`SetupPy`] finds the `setup(...)` call in the token stream
//! ([`super::pylex`]) and reads a keyword's value as a Python literal, following a top-level
//! `NAME = literal` (and, inside `if`/`else`, the non-Windows branch). Anything else is reported as
//! not a literal, with what it is.

use super::pylex::{self, PyValue, TokKind, Token};

/// What static reading of one setup.py keyword found.
#[derive(Debug, Clone, PartialEq)]
pub enum SetupArg {
    /// No `setup(...)` call, or the call has no such keyword.
    Absent,
    /// The keyword's value is a literal (possibly via a top-level `NAME = literal`).
    Literal {
        /// The literal.
        value: PyValue,
        /// 1-based line of the keyword.
        line: usize,
        /// The top-level name the value came through, if any.
        via: Option<String>,
    },
    /// The keyword is there but its value is not a literal; the string says what it is.
    NotLiteral {
        /// 1-based line of the keyword.
        line: usize,
        /// What the value is instead (a call, a name, an expression…).
        why: String,
    },
}

/// A setup.py read as tokens.
#[derive(Debug, Clone)]
pub struct SetupPy {
    tokens: Vec<Token>,
}

impl SetupPy {
    /// Tokenizes setup.py; fails only when the lexer does.
    pub fn parse(text: &str) -> Result<SetupPy, pylex::LexError> {
        Ok(SetupPy {
            tokens: pylex::tokenize(text)?,
        })
    }

    /// Start positions (just after the `(`) of every `setup(` / `setuptools.setup(` call.
    fn calls(&self) -> Vec<usize> {
        let t = &self.tokens;
        (0..t.len())
            .filter(|&i| {
                t[i].is_name("setup")
                    && t.get(i + 1).is_some_and(|n| n.is_op("("))
                    && !(i > 0 && t[i - 1].is_name("def"))
                    && (i == 0
                        || !t[i - 1].is_op(".")
                        || (i >= 2 && t[i - 2].is_name("setuptools")))
            })
            .map(|i| i + 2)
            .collect()
    }

    /// The value of keyword `kw` in the first `setup(...)` call that has it.
    pub fn arg(&self, kw: &str) -> SetupArg {
        let t = &self.tokens;
        for start in self.calls() {
            let mut depth = 0usize;
            let mut i = start;
            while i < t.len() {
                let tok = &t[i];
                if tok.kind == TokKind::Op {
                    match tok.text.as_str() {
                        "(" | "[" | "{" => depth += 1,
                        ")" | "]" | "}" if depth == 0 => break,
                        ")" | "]" | "}" => depth -= 1,
                        _ => {}
                    }
                }
                let at_arg_start = i == start || t[i - 1].is_op(",");
                if depth == 0
                    && at_arg_start
                    && tok.is_name(kw)
                    && t.get(i + 1).is_some_and(|n| n.is_op("="))
                {
                    return self.literal_at(i + 2, tok.line);
                }
                i += 1;
            }
        }
        SetupArg::Absent
    }

    fn literal_at(&self, pos: usize, line: usize) -> SetupArg {
        let t = &self.tokens;
        let ends_arg = |p: usize| t.get(p).is_some_and(|n| n.is_op(",") || n.is_op(")"));
        match pylex::parse_literal(t, pos) {
            Ok((value, next)) if ends_arg(next) => SetupArg::Literal {
                value,
                line,
                via: None,
            },
            Ok((_, next)) => SetupArg::NotLiteral {
                line,
                why: format!(
                    "the value is an expression (continues with {})",
                    pylex::describe(t, next)
                ),
            },
            Err(why) => {
                // `entry_points=NAME` where NAME is assigned a literal at the top level.
                if let Some(name) = t
                    .get(pos)
                    .filter(|n| n.kind == TokKind::Name && ends_arg(pos + 1))
                {
                    let assigned = (0..t.len())
                        .rev()
                        .find(|&i| {
                            t[i].line_start
                                && t[i].col == 0
                                && t[i].is_name(&name.text)
                                && t.get(i + 1).is_some_and(|n| n.is_op("="))
                        })
                        .map(|a| (a, String::new()))
                        .or_else(|| branch_assignment(t, &name.text));
                    if let Some((a, branch)) = assigned {
                        return match pylex::parse_literal(t, a + 2) {
                            Ok((value, next))
                                if t.get(next).is_some_and(|n| n.kind == TokKind::Newline) =>
                            {
                                SetupArg::Literal {
                                    value,
                                    line,
                                    via: Some(format!(
                                        "`{}` assigned on line {}{branch}",
                                        name.text, t[a].line
                                    )),
                                }
                            }
                            Ok(_) => SetupArg::NotLiteral {
                                line,
                                why: format!(
                                    "`{}` (line {}) is assigned an expression, not a literal",
                                    name.text, t[a].line
                                ),
                            },
                            Err(e) => SetupArg::NotLiteral {
                                line,
                                why: format!(
                                    "`{}` (line {}) is not assigned a literal: {e}",
                                    name.text, t[a].line
                                ),
                            },
                        };
                    }
                }
                SetupArg::NotLiteral { line, why }
            }
        }
    }
}

/// Whether an `if`/`elif` condition (tokens) tests for Windows, and whether it is negated:
/// `Some(true)` when the branch runs on Windows, `Some(false)` when it runs elsewhere, `None`
/// when the condition is not about the platform.
fn windows_condition(cond: &[Token]) -> Option<bool> {
    let about_windows = cond.iter().any(|c| {
        let text = c
            .str_value()
            .unwrap_or_else(|| c.text.clone())
            .to_ascii_lowercase();
        (c.kind == TokKind::Str && (text.starts_with("win") || text == "nt" || text == "cygwin"))
            || (c.kind == TokKind::Name && text.contains("windows"))
    });
    if !about_windows {
        return None;
    }
    let negated = cond.iter().any(|c| c.is_op("!=") || c.is_name("not"));
    Some(!negated)
}

/// The condition tokens of the `if`/`elif` at `k` (up to its `:`).
fn condition(t: &[Token], k: usize) -> &[Token] {
    let end = (k + 1..t.len())
        .find(|&j| t[j].is_op(":") || t[j].kind == TokKind::Newline)
        .unwrap_or(t.len());
    &t[k + 1..end]
}

/// `NAME = …` assigned inside a top-level `if`/`else`: the assignment in the branch that runs
/// on a non-Windows platform (else the first one), with a note saying which branch.
fn branch_assignment(t: &[Token], name: &str) -> Option<(usize, String)> {
    let mut picks: Vec<(usize, Option<bool>)> = Vec::new();
    for a in 0..t.len() {
        if !(t[a].line_start
            && t[a].col > 0
            && t[a].is_name(name)
            && t.get(a + 1).is_some_and(|n| n.is_op("=")))
        {
            continue;
        }
        // The block header: the nearest earlier logical line at a smaller indent.
        let Some(k) = (0..a)
            .rev()
            .find(|&k| t[k].line_start && t[k].col < t[a].col)
        else {
            continue;
        };
        if t[k].col != 0 {
            continue;
        }
        let windows = if t[k].is_name("if") || t[k].is_name("elif") {
            windows_condition(condition(t, k))
        } else if t[k].is_name("else") {
            // The `if` this `else` belongs to.
            (0..k)
                .rev()
                .find(|&j| t[j].line_start && t[j].col == 0 && t[j].is_name("if"))
                .and_then(|j| windows_condition(condition(t, j)))
                .map(|w| !w)
        } else {
            continue;
        };
        picks.push((a, windows));
    }
    if let Some((a, _)) = picks.iter().find(|(_, w)| *w == Some(false)) {
        return Some((*a, " (the non-Windows branch)".to_string()));
    }
    picks
        .first()
        .map(|(a, _)| (*a, " (the first branch that assigns it)".to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn setup_py_args() {
        let s = SetupPy::parse("from setuptools import setup\nEP = {'console_scripts': ['x = a.b:c']}\nsetup(\n  name='demo',\n  entry_points=EP,\n  install_requires=['gunicorn>=20', 'flask'],\n)\n").unwrap();
        assert!(
            matches!(s.arg("name"), SetupArg::Literal { value: PyValue::Str(ref n), line: 4, .. } if n == "demo")
        );
        match s.arg("entry_points") {
            SetupArg::Literal {
                value,
                line: 5,
                via: Some(via),
            } => {
                assert!(via.contains("`EP` assigned on line 2"), "{via}");
                assert!(value.get("console_scripts").is_some());
            }
            other => panic!("{other:?}"),
        }
        let s = SetupPy::parse("import setuptools\nsetuptools.setup(entry_points=get_eps())\n")
            .unwrap();
        assert!(matches!(
            s.arg("entry_points"),
            SetupArg::NotLiteral { line: 2, .. }
        ));
        let s =
            SetupPy::parse("setup(entry_points={'console_scripts': ['a=b:c']} | more)\n").unwrap();
        assert!(
            matches!(s.arg("entry_points"), SetupArg::NotLiteral { ref why, .. } if why.contains("expression"))
        );
        let s = SetupPy::parse("def setup(**kw): pass\nprint('entry_points=1')\n").unwrap();
        assert_eq!(s.arg("entry_points"), SetupArg::Absent);
    }

    #[test]
    fn entry_points_bound_in_if_else_take_the_non_windows_branch() {
        let cases = [
            (
                "import os\nif os.name == 'nt':\n    EP = {'console_scripts': ['t = w:main']}\nelse:\n    EP = {'console_scripts': ['t = posix:main']}\nsetup(entry_points=EP)\n",
                "posix:main",
                "line 5 (the non-Windows branch)",
            ),
            (
                "import sys\nif not sys.platform.startswith('win'):\n    EP = {'console_scripts': ['t = posix:main']}\nelse:\n    EP = {'console_scripts': ['t = w:main']}\nsetup(entry_points=EP)\n",
                "posix:main",
                "line 3 (the non-Windows branch)",
            ),
            (
                "if HAVE_X:\n    EP = {'console_scripts': ['t = a:main']}\nelse:\n    EP = {'console_scripts': ['t = b:main']}\nsetup(entry_points=EP)\n",
                "a:main",
                "line 2 (the first branch that assigns it)",
            ),
        ];
        for (src, want, via) in cases {
            let s = SetupPy::parse(src).unwrap();
            match s.arg("entry_points") {
                SetupArg::Literal {
                    value,
                    via: Some(v),
                    ..
                } => {
                    let scripts = value.get("console_scripts").unwrap();
                    assert!(format!("{scripts:?}").contains(want), "{src}: {scripts:?}");
                    assert!(v.contains(via), "{src}: {v}");
                }
                other => panic!("{src}: {other:?}"),
            }
        }
    }
}
