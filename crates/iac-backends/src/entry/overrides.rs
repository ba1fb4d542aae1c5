//! Rule 0: entrypoint overrides. Finds the override (repos-file `entrypoint`, then a
//! `LABEL ENTRYPOINT=…` in the repo's Dockerfile, then `[tool.iac] entrypoint` in pyproject.toml),
//! and parses its value: `module:function` (dotted module, dotted attribute path, optional
//! `[extras]`) is a [`Callable`]; anything else is split shell-like into argv (and run through
//! `sh -c` when it uses `$VAR` expansion or shell operators). Also owns the small POSIX-style word
//! splitter both this and the Procfile rule use.

use std::path::Path;

use iac_core::EntryError;
use iac_core::shell::{Split, split_words};

use super::platform::dockerfile::{escape_char, instructions};

use super::{read_optional, toml_key_line};

/// A `module:function` reference (console-script syntax).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Callable {
    /// Dotted module path, e.g. `pkg.cli`.
    pub module: String,
    /// Attribute path inside the module, e.g. `main` or `App.run`.
    pub attr: String,
}

fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c == '_' || c.is_alphabetic())
        && chars.all(|c| c == '_' || c.is_alphanumeric())
}

fn is_dotted(s: &str) -> bool {
    !s.is_empty() && s.split('.').all(is_identifier)
}

impl Callable {
    /// Parses `pkg.mod:func`, `pkg.mod:Obj.method`, with an optional trailing `[extra, …]`.
    /// Whitespace around the parts is allowed (as in entry-point specs).
    pub fn parse(value: &str) -> Option<Callable> {
        let mut v = value.trim();
        if let Some(open) = v.find('[') {
            let rest = v[open..].trim_end();
            if !rest.ends_with(']') || rest[1..rest.len() - 1].contains(['[', ']']) {
                return None;
            }
            v = v[..open].trim_end();
        }
        let (module, attr) = v.split_once(':')?;
        let (module, attr) = (module.trim(), attr.trim());
        (is_dotted(module) && is_dotted(attr)).then(|| Callable {
            module: module.to_string(),
            attr: attr.to_string(),
        })
    }

    /// The argv that imports the module and calls the function, exiting with its return value
    /// (exactly what a console-script wrapper does).
    pub fn argv(&self) -> Vec<String> {
        vec![
            "python".to_string(),
            "-c".to_string(),
            format!(
                "import sys, importlib; sys.exit(importlib.import_module('{}').{}())",
                self.module, self.attr
            ),
        ]
    }
}

impl std::fmt::Display for Callable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.module, self.attr)
    }
}

/// The argv for a command line: split words, or `sh -c` when it needs a shell (`exec` in front
/// when it is a single command, so signals reach the program and not the shell).
pub fn command_argv(line: &str, split: &Split) -> Vec<String> {
    if split.operators {
        vec!["sh".into(), "-c".into(), line.trim().to_string()]
    } else if split.expands {
        vec!["sh".into(), "-c".into(), format!("exec {}", line.trim())]
    } else {
        split.words.clone()
    }
}

/// What an override asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OverrideValue {
    /// `module:function`: call it.
    Callable(Callable),
    /// A command: run this argv.
    Argv(Vec<String>),
}

/// A rule-0 override, with where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Override {
    /// The raw value as written.
    pub raw: String,
    /// What to run.
    pub value: OverrideValue,
    /// Stable rule id: `override:repos-file`, `override:dockerfile-label` or `override:pyproject`.
    pub rule: &'static str,
    /// Human description of the origin, e.g. "Dockerfile line 4 (LABEL ENTRYPOINT)".
    pub origin: String,
}

impl Override {
    /// Parses an override value from `origin`.
    pub fn parse(raw: &str, rule: &'static str, origin: String) -> Result<Override, EntryError> {
        let invalid = |expected: &str| EntryError::InvalidOverride {
            value: raw.to_string(),
            origin: origin.clone(),
            expected: expected.to_string(),
        };
        let trimmed = raw.trim();
        if trimmed.is_empty() {
            return Err(invalid("a non-empty `module:function` or command line"));
        }
        if let Some(c) = Callable::parse(trimmed) {
            return Ok(Override {
                raw: raw.to_string(),
                value: OverrideValue::Callable(c),
                rule,
                origin,
            });
        }
        // One word with a colon and no path separator (optionally followed by `[extras]`) is an
        // attempted `module:function`.
        let base = match trimmed.find('[') {
            Some(i) if trimmed.ends_with(']') => trimmed[..i].trim_end(),
            _ => trimmed,
        };
        if !base.contains(char::is_whitespace) && base.contains(':') && !base.contains('/') {
            return Err(invalid(
                "`module:function` with a dotted Python module and a Python identifier (e.g. `pkg.cli:main`, optional `[extras]`), or a command line",
            ));
        }
        let split = split_words(trimmed)
            .map_err(|e| invalid(&format!("a shell-like command line ({e})")))?;
        if split.words.is_empty() {
            return Err(invalid("a non-empty `module:function` or command line"));
        }
        let argv = command_argv(trimmed, &split);
        Ok(Override {
            raw: raw.to_string(),
            value: OverrideValue::Argv(argv),
            rule,
            origin,
        })
    }

    /// Builds an override from an argv array (`[tool.iac] entrypoint = ["python", "x.py"]`).
    fn from_array(items: &[toml::Value], origin: String) -> Result<Override, EntryError> {
        let raw = toml::Value::Array(items.to_vec()).to_string();
        let argv: Option<Vec<String>> = items
            .iter()
            .map(|v| v.as_str().map(str::to_string))
            .collect();
        match argv {
            Some(argv) if !argv.is_empty() && !argv[0].is_empty() => Ok(Override {
                raw,
                value: OverrideValue::Argv(argv),
                rule: RULE_PYPROJECT,
                origin,
            }),
            _ => Err(EntryError::InvalidOverride {
                value: raw,
                origin,
                expected: "a non-empty array of strings (argv), or a string".to_string(),
            }),
        }
    }
}

/// Rule id of an `entrypoint:` given in the repos file.
pub const RULE_REPOS_FILE: &str = "override:repos-file";
/// Rule id of a `LABEL iac.entrypoint=…` in the repo's Dockerfile.
pub const RULE_DOCKERFILE: &str = "override:dockerfile-label";
/// Rule id of `[tool.iac] entrypoint` in pyproject.toml.
pub const RULE_PYPROJECT: &str = "override:pyproject";

/// A `LABEL` value found in a Dockerfile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DockerLabel {
    /// The label key.
    pub key: String,
    /// The label value, unquoted.
    pub value: String,
    /// 1-based line of the `LABEL` instruction.
    pub line: usize,
}

/// All `LABEL` key/value pairs of a Dockerfile, in order (later ones override earlier ones, as
/// in Docker). The instructions come from the one Dockerfile reader
/// ([`super::platform::dockerfile::instructions`]: continuations, comments, the `# escape=`
/// directive, heredocs); this reads quoted values, several pairs per instruction and the legacy
/// `LABEL key value` form.
pub fn dockerfile_labels(text: &str) -> Result<Vec<DockerLabel>, String> {
    let escape = escape_char(text);
    let mut labels = Vec::new();
    for ins in instructions(text) {
        if ins.keyword != "LABEL" {
            continue;
        }
        let (line, rest) = (ins.line, ins.args.as_str());
        let rest_for_split = if escape == '`' {
            rest.replace('`', "\\")
        } else {
            rest.to_string()
        };
        let first = rest.split_whitespace().next().unwrap_or("");
        if !first.contains('=') {
            // Legacy `LABEL key value`: the value is the rest, with surrounding quotes removed.
            let key = split_words(first)
                .map_err(|e| format!("line {line}: LABEL key: {e}"))?
                .words
                .join("");
            let raw_value = rest[first.len()..].trim();
            let value = split_words(raw_value)
                .map(|s| {
                    if raw_value.starts_with(['"', '\'']) && s.words.len() == 1 {
                        s.words[0].clone()
                    } else {
                        raw_value.to_string()
                    }
                })
                .unwrap_or_else(|_| raw_value.to_string());
            labels.push(DockerLabel { key, value, line });
            continue;
        }
        let split = split_words(&rest_for_split).map_err(|e| format!("line {line}: LABEL: {e}"))?;
        for w in split.words {
            let Some((k, v)) = w.split_once('=') else {
                return Err(format!(
                    "line {line}: LABEL pair {w:?} has no `=` (expected key=value)"
                ));
            };
            labels.push(DockerLabel {
                key: k.to_string(),
                value: v.to_string(),
                line,
            });
        }
    }
    Ok(labels)
}

/// Finds the override, in rule-0 order. Returns it, or a description of what was looked for
/// (for the "every rule tried" listing).
pub fn find_override(
    dir: &Path,
    repos_file: Option<&str>,
) -> Result<Result<Override, String>, EntryError> {
    if let Some(v) = repos_file {
        return Override::parse(
            v,
            RULE_REPOS_FILE,
            "the repos file's `entrypoint`".to_string(),
        )
        .map(Ok);
    }
    let mut looked = vec!["no `entrypoint` in the repos file".to_string()];

    let dockerfile = dir.join("Dockerfile");
    match read_optional(&dockerfile)? {
        None => looked.push("no Dockerfile".to_string()),
        Some(text) => {
            let labels = dockerfile_labels(&text).map_err(|message| EntryError::Parse {
                file: dockerfile.clone(),
                message,
            })?;
            match labels
                .iter()
                .rev()
                .find(|l| l.key.eq_ignore_ascii_case("entrypoint"))
            {
                Some(l) => {
                    let origin = format!("Dockerfile line {} (LABEL {})", l.line, l.key);
                    return Override::parse(&l.value, RULE_DOCKERFILE, origin).map(Ok);
                }
                None => looked.push("no `LABEL ENTRYPOINT=` in the Dockerfile".to_string()),
            }
        }
    }

    let pyproject = dir.join("pyproject.toml");
    match read_optional(&pyproject)? {
        None => looked.push("no pyproject.toml".to_string()),
        Some(text) => {
            let table: toml::Table =
                text.parse()
                    .map_err(|e: toml::de::Error| EntryError::Parse {
                        file: pyproject.clone(),
                        message: e.to_string(),
                    })?;
            let value = table
                .get("tool")
                .and_then(|t| t.get("iac"))
                .and_then(|t| t.get("entrypoint"));
            let origin = || match toml_key_line(&text, "tool.iac", "entrypoint") {
                Some(n) => format!("pyproject.toml line {n} ([tool.iac] entrypoint)"),
                None => "pyproject.toml ([tool.iac] entrypoint)".to_string(),
            };
            match value {
                Some(toml::Value::String(s)) => {
                    return Override::parse(s, RULE_PYPROJECT, origin()).map(Ok);
                }
                Some(toml::Value::Array(items)) => {
                    return Override::from_array(items, origin()).map(Ok);
                }
                Some(other) => {
                    return Err(EntryError::InvalidOverride {
                        value: other.to_string(),
                        origin: origin(),
                        expected:
                            "a string (`module:function` or a command line) or an array of strings"
                                .to_string(),
                    });
                }
                None => looked.push("no `[tool.iac] entrypoint` in pyproject.toml".to_string()),
            }
        }
    }
    Ok(Err(format!(
        "rule 0 (override): looked for a repos-file `entrypoint`, `LABEL ENTRYPOINT=` in ./Dockerfile and `[tool.iac] entrypoint` in ./pyproject.toml; found {}",
        looked.join(", ")
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn callables() {
        let c = Callable::parse("pkg.cli:main").unwrap();
        assert_eq!((c.module.as_str(), c.attr.as_str()), ("pkg.cli", "main"));
        let c = Callable::parse(" pkg.cli : App.run [fast, extra] ").unwrap();
        assert_eq!((c.module.as_str(), c.attr.as_str()), ("pkg.cli", "App.run"));
        assert_eq!(
            c.argv(),
            [
                "python",
                "-c",
                "import sys, importlib; sys.exit(importlib.import_module('pkg.cli').App.run())"
            ]
        );
        for bad in [
            "pkg-x:main",
            "pkg:",
            ":main",
            "pkg:main()",
            "pkg:main [x",
            "a b:c",
            "1pkg:main",
            "pkg..x:main",
            "pkg:ma-in",
        ] {
            assert_eq!(Callable::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn override_values() {
        let o = Override::parse("pkg.main:run[x]", RULE_REPOS_FILE, "t".into()).unwrap();
        assert_eq!(
            o.value,
            OverrideValue::Callable(Callable {
                module: "pkg.main".into(),
                attr: "run".into()
            })
        );
        let o =
            Override::parse("python serve.py --port 9000", RULE_REPOS_FILE, "t".into()).unwrap();
        assert_eq!(
            o.value,
            OverrideValue::Argv(vec![
                "python".into(),
                "serve.py".into(),
                "--port".into(),
                "9000".into()
            ])
        );
        let o = Override::parse(
            "gunicorn -b 0.0.0.0:$PORT app:app",
            RULE_REPOS_FILE,
            "t".into(),
        )
        .unwrap();
        assert_eq!(
            o.value,
            OverrideValue::Argv(vec![
                "sh".into(),
                "-c".into(),
                "exec gunicorn -b 0.0.0.0:$PORT app:app".into()
            ])
        );
        let o = Override::parse("./migrate && ./serve", RULE_REPOS_FILE, "t".into()).unwrap();
        assert_eq!(
            o.value,
            OverrideValue::Argv(vec![
                "sh".into(),
                "-c".into(),
                "./migrate && ./serve".into()
            ])
        );
        let o = Override::parse("/app/bin/server:x", RULE_REPOS_FILE, "t".into()).unwrap();
        assert_eq!(
            o.value,
            OverrideValue::Argv(vec!["/app/bin/server:x".into()])
        );
        for (bad, needle) in [
            ("  ", "non-empty"),
            ("my-pkg:main", "dotted Python module"),
            ("my-pkg:main [web]", "dotted Python module"),
            ("python 'x", "single quote"),
        ] {
            let e = Override::parse(bad, RULE_DOCKERFILE, "Dockerfile line 3".into())
                .unwrap_err()
                .to_string();
            assert!(
                e.contains(needle)
                    && e.contains("Dockerfile line 3")
                    && e.contains(&format!("{bad:?}")),
                "{e}"
            );
        }
    }

    #[test]
    fn docker_labels() {
        let df = "# syntax=docker/dockerfile:1\nFROM python:3.11\nLABEL a=1 \\\n  # comment in continuation\n  entrypoint=\"python -m app\"\nlabel ENTRYPOINT='pkg.cli:main' other=\"x y\"\nLABEL legacy some value here\n";
        let labels = dockerfile_labels(df).unwrap();
        let pairs: Vec<(&str, &str, usize)> = labels
            .iter()
            .map(|l| (l.key.as_str(), l.value.as_str(), l.line))
            .collect();
        assert_eq!(
            pairs,
            [
                ("a", "1", 3),
                ("entrypoint", "python -m app", 3),
                ("ENTRYPOINT", "pkg.cli:main", 6),
                ("other", "x y", 6),
                ("legacy", "some value here", 7)
            ]
        );
        let df = "# escape=`\nFROM x\nLABEL ENTRYPOINT=\"run`\n me\"\n";
        let labels = dockerfile_labels(df).unwrap();
        assert_eq!(labels[0].value, "run me");
        assert!(
            dockerfile_labels("FROM x\nLABEL a=\"open\n")
                .unwrap_err()
                .contains("line 2")
        );
    }

    /// Values checked against Docker 20.10 (`docker build` of this Dockerfile, then
    /// `docker image inspect`): the same, except that Docker substitutes `$PORT` at build time
    /// (empty) while iac keeps it for the shell at run time.
    #[test]
    fn docker_labels_match_docker() {
        let df = "FROM scratch\nLABEL q=\"gunicorn -b 0.0.0.0:$PORT app:app\" r=python\\ -m\\ x s=\"say \\\"hi\\\"\"\nLABEL t=\"multi \\\n   line\"\n";
        let labels = dockerfile_labels(df).unwrap();
        let got: Vec<(&str, &str)> = labels
            .iter()
            .map(|l| (l.key.as_str(), l.value.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                ("q", "gunicorn -b 0.0.0.0:$PORT app:app"),
                ("r", "python -m x"),
                ("s", "say \"hi\""),
                ("t", "multi    line")
            ]
        );
    }

    proptest::proptest! {
        #[test]
        fn parsers_never_panic(src in "(?s)[ -~\\n\\t`é]{0,160}") {
            let _ = split_words(&src);
            let _ = dockerfile_labels(&src);
            let _ = dockerfile_labels(&format!("# escape=`\nLABEL {src}"));
            let _ = Callable::parse(&src);
            let _ = Override::parse(&src, RULE_REPOS_FILE, "fuzz".into());
        }
    }
}
