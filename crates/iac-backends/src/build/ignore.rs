//! `.dockerignore` rules, applied the way Docker (moby's `patternmatcher`) applies them. Pure: text
//! in, decisions out; [`super::tree`] is the only caller that touches the file system.
//!
//! - A line starting with `#` is a comment; lines are trimmed; blank lines are skipped; a leading
//!   `!` makes an exception (re-include). A UTF-8 BOM at the start of the file is ignored.
//! - Each pattern is cleaned like Go's `filepath.Clean` (`./a//b/` → `a/b`, `a/../b` → `b`) and a
//!   leading `/` is dropped: patterns are relative to the context root, and a pattern without `/`
//!   matches at the root only (unlike `.gitignore`: `*.pyc` does not match `pkg/x.pyc`, `**/*.pyc`
//!   does).
//! - The glob is Go's `filepath.Match` plus `**`: `*` and `?` never match `/`; `[...]` is a
//!   character class, negated by a leading `^`; `\` escapes the next character; `**/` matches any
//!   number of directories (including none) and a trailing `**` matches anything.
//! - A path is excluded when the LAST rule that matches it (or any of its parent directories) is
//!   not an exception: `node_modules` excludes everything under it, and `!node_modules/keep`
//!   re-includes that one path.

use std::fmt;

/// A `.dockerignore` line Docker would refuse too.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IgnoreError {
    /// 1-based line number.
    pub line: usize,
    /// What Docker would say about the line.
    pub message: String,
}

impl fmt::Display for IgnoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.message)
    }
}

impl std::error::Error for IgnoreError {}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Literal(char),
    /// `*`: any run of characters but `/`.
    Star,
    /// `?`: one character but `/`.
    Question,
    /// `[...]`: ranges (inclusive), negated when `[^...]`. Docker hands the class to Go's regexp
    /// unchanged, so a negated class matches `/` too.
    Class {
        negated: bool,
        ranges: Vec<(char, char)>,
    },
    /// `**/` (or `**` before more pattern): any number of whole directories, including none.
    AnyDirs,
    /// A trailing `**`: anything at all.
    AnyTail,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Rule {
    exception: bool,
    tokens: Vec<Token>,
}

/// The parsed rules of one `.dockerignore` file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IgnoreRules {
    rules: Vec<Rule>,
}

impl IgnoreRules {
    /// Parses a `.dockerignore` file's text, refusing what Docker refuses: a bare `!`, an
    /// unterminated `[` and a class range that runs backwards.
    pub fn parse(text: &str) -> Result<IgnoreRules, IgnoreError> {
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let mut rules = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let line = i + 1;
            if raw.starts_with('#') {
                continue;
            }
            let mut pattern = raw.trim();
            if pattern.is_empty() {
                continue;
            }
            let exception = pattern.starts_with('!');
            if exception {
                pattern = pattern[1..].trim();
                if pattern.is_empty() {
                    return Err(IgnoreError {
                        line,
                        message: "illegal exclusion pattern \"!\" (an exception needs a pattern)"
                            .into(),
                    });
                }
            }
            let cleaned = clean(pattern);
            let cleaned = cleaned.strip_prefix('/').unwrap_or(&cleaned).to_string();
            let tokens = compile(&cleaned).map_err(|message| IgnoreError {
                line,
                message: format!("pattern {pattern:?}: {message}"),
            })?;
            rules.push(Rule { exception, tokens });
        }
        Ok(IgnoreRules { rules })
    }

    /// Whether any rule is an exception (then an excluded directory must still be walked).
    pub fn has_exceptions(&self) -> bool {
        self.rules.iter().any(|r| r.exception)
    }

    /// Whether `path` (relative to the context root, `/`-separated, no leading `/`) is excluded.
    pub fn excludes(&self, path: &str) -> bool {
        let path = clean(path);
        let parents: Vec<&str> = match path.rfind('/') {
            Some(i) => {
                let parent = &path[..i];
                parent
                    .char_indices()
                    .filter(|(_, c)| *c == '/')
                    .map(|(j, _)| &parent[..j])
                    .chain(std::iter::once(parent))
                    .collect()
            }
            None => Vec::new(),
        };
        let mut matched = false;
        for rule in &self.rules {
            // An exception only matters once something matched, a pattern only while nothing has.
            if rule.exception != matched {
                continue;
            }
            let hit =
                matches(&rule.tokens, &path) || parents.iter().any(|p| matches(&rule.tokens, p));
            if hit {
                matched = !rule.exception;
            }
        }
        matched
    }
}

/// Go's `filepath.Clean` for `/`-separated paths.
fn clean(path: &str) -> String {
    if path.is_empty() {
        return ".".into();
    }
    let rooted = path.starts_with('/');
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                if parts.last().is_some_and(|p| *p != "..") {
                    parts.pop();
                } else if !rooted {
                    parts.push("..");
                }
            }
            p => parts.push(p),
        }
    }
    let body = parts.join("/");
    match (rooted, body.is_empty()) {
        (true, _) => format!("/{body}"),
        (false, true) => ".".into(),
        (false, false) => body,
    }
}

fn compile(pattern: &str) -> Result<Vec<Token>, String> {
    let chars: Vec<char> = pattern.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        i += 1;
        match c {
            '*' if chars.get(i) == Some(&'*') => {
                i += 1;
                if chars.get(i) == Some(&'/') {
                    i += 1;
                }
                out.push(if i >= chars.len() {
                    Token::AnyTail
                } else {
                    Token::AnyDirs
                });
            }
            '*' => out.push(Token::Star),
            '?' => out.push(Token::Question),
            '\\' => match chars.get(i) {
                Some(&next) => {
                    out.push(Token::Literal(next));
                    i += 1;
                }
                None => out.push(Token::Literal('\\')),
            },
            '[' => {
                let mut negated = false;
                if chars.get(i) == Some(&'^') {
                    negated = true;
                    i += 1;
                }
                let mut ranges = Vec::new();
                let mut first = true;
                loop {
                    let Some(&c) = chars.get(i) else {
                        return Err("unterminated character class '['".into());
                    };
                    i += 1;
                    if c == ']' && !first {
                        break;
                    }
                    if c == ']' && first {
                        // `[]` is not a class Docker accepts.
                        return Err("empty character class \"[]\"".into());
                    }
                    first = false;
                    let lo = if c == '\\' {
                        let Some(&e) = chars.get(i) else {
                            return Err("unterminated character class '['".into());
                        };
                        i += 1;
                        e
                    } else {
                        c
                    };
                    let mut hi = lo;
                    if chars.get(i) == Some(&'-') && chars.get(i + 1).is_some_and(|c| *c != ']') {
                        i += 1;
                        let c = chars[i];
                        i += 1;
                        hi = if c == '\\' {
                            let Some(&e) = chars.get(i) else {
                                return Err("unterminated character class '['".into());
                            };
                            i += 1;
                            e
                        } else {
                            c
                        };
                        if hi < lo {
                            return Err(format!("character range {lo}-{hi} runs backwards"));
                        }
                    }
                    ranges.push((lo, hi));
                }
                out.push(Token::Class { negated, ranges });
            }
            ']' => out.push(Token::Literal(']')),
            c => out.push(Token::Literal(c)),
        }
    }
    Ok(out)
}

/// Whether `tokens` match all of `text`. Dynamic programming over (token, position), so hostile
/// patterns (`*a*a*a*…`) cost O(tokens × length), not exponential backtracking.
fn matches(tokens: &[Token], text: &str) -> bool {
    let chars: Vec<char> = text.chars().collect();
    let n = chars.len();
    // reach[j]: the tokens so far can match exactly chars[..j].
    let mut reach = vec![false; n + 1];
    reach[0] = true;
    for token in tokens {
        let mut next = vec![false; n + 1];
        match token {
            Token::Literal(c) => {
                for j in 0..n {
                    if reach[j] && chars[j] == *c {
                        next[j + 1] = true;
                    }
                }
            }
            Token::Question => {
                for j in 0..n {
                    if reach[j] && chars[j] != '/' {
                        next[j + 1] = true;
                    }
                }
            }
            Token::Class { negated, ranges } => {
                for j in 0..n {
                    if reach[j] {
                        let c = chars[j];
                        let inside = ranges.iter().any(|(lo, hi)| *lo <= c && c <= *hi);
                        if inside != *negated {
                            next[j + 1] = true;
                        }
                    }
                }
            }
            Token::Star => {
                let mut on = false;
                for j in 0..=n {
                    on = (on && j > 0 && chars[j - 1] != '/') || reach[j];
                    next[j] = on;
                }
            }
            Token::AnyDirs => {
                // `(.*/)?`: stay, or jump to just after any later `/`.
                let mut on = false;
                for j in 0..=n {
                    next[j] = reach[j];
                    if j > 0 && chars[j - 1] == '/' && on {
                        next[j] = true;
                    }
                    if reach[j] {
                        on = true;
                    }
                }
            }
            Token::AnyTail => {
                let mut on = false;
                for j in 0..=n {
                    on = on || reach[j];
                    next[j] = on;
                }
            }
        }
        reach = next;
    }
    reach[n]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(text: &str) -> IgnoreRules {
        IgnoreRules::parse(text).unwrap()
    }

    #[test]
    fn docker_pattern_table() {
        // (pattern file, path, excluded) — cases from Docker's documentation and moby's tests.
        let table: &[(&str, &str, bool)] = &[
            ("*.pyc", "x.pyc", true),
            ("*.pyc", "pkg/x.pyc", false),
            ("**/*.pyc", "pkg/x.pyc", true),
            ("**/*.pyc", "x.pyc", true),
            ("**/*.pyc", "a/b/c/x.pyc", true),
            ("*/temp*", "somedir/temporary.txt", true),
            ("*/temp*", "temp", false),
            ("*/*/temp*", "a/b/temp.txt", true),
            ("temp?", "temp1", true),
            ("temp?", "temp12", false),
            ("temp?", "temp/", false),
            ("node_modules", "node_modules/x/y.js", true),
            ("node_modules/", "node_modules/x", true),
            ("/secret", "secret", true),
            ("./secret", "secret/key", true),
            ("a//b/../c", "a/c", true),
            ("docs/**", "docs/a/b", true),
            ("docs/**", "docs", false),
            ("**", "anything/at/all", true),
            ("a/**/b", "a/b", true),
            ("a/**/b", "a/x/y/b", true),
            ("a/**/b", "a/x/yb", false),
            ("[ab].txt", "a.txt", true),
            ("[ab].txt", "c.txt", false),
            ("[^ab].txt", "c.txt", true),
            ("[^ab].txt", "a.txt", false),
            ("[!ab].txt", "!.txt", true),
            ("[a-c]x", "bx", true),
            ("[a-c]x", "dx", false),
            ("\\*x", "*x", true),
            ("\\*x", "ax", false),
            ("*", "top", true),
            ("*", "dir/file", true),
            ("*\n!keep.txt", "keep.txt", false),
            ("*\n!keep.txt", "other.txt", true),
            ("logs\n!logs/keep", "logs/keep", false),
            ("logs\n!logs/keep", "logs/drop", true),
            ("logs\n!logs/keep\nlogs/keep", "logs/keep", true),
            ("!x\nx", "x", true),
            ("# comment\n\n  spaced.txt  ", "spaced.txt", true),
            ("#x", "#x", false),
            ("../outside", "outside", false),
            ("\u{feff}bom", "bom", true),
        ];
        for (text, path, want) in table {
            assert_eq!(
                rules(text).excludes(path),
                *want,
                "patterns {text:?} on {path:?}"
            );
        }
    }

    #[test]
    fn refuses_what_docker_refuses_with_the_line() {
        for (text, line, needle) in [
            ("ok\n!\n", 2, "illegal exclusion"),
            ("a[bc\n", 1, "unterminated"),
            ("x\ny\n[z-a]\n", 3, "backwards"),
        ] {
            let err = IgnoreRules::parse(text).unwrap_err();
            assert_eq!(err.line, line, "{text:?}");
            assert!(err.to_string().contains(needle), "{err}");
        }
    }

    #[test]
    fn exceptions_are_reported() {
        assert!(!rules("a\nb\n").has_exceptions());
        assert!(rules("a\n!a/b\n").has_exceptions());
    }

    #[test]
    fn hostile_patterns_stay_cheap() {
        let pattern = "*a".repeat(200);
        let r = rules(&pattern);
        let path = "a".repeat(5000) + "b";
        let t = std::time::Instant::now();
        assert!(!r.excludes(&path));
        assert!(t.elapsed() < std::time::Duration::from_secs(2));
    }

    proptest::proptest! {
        #[test]
        fn parse_and_match_never_panic(text in "\\PC{0,80}", path in "[a-z/.*?\\[\\]^!-]{0,40}") {
            if let Ok(r) = IgnoreRules::parse(&text) {
                let _ = r.excludes(&path);
            }
        }

        #[test]
        fn literal_names_match_themselves_and_their_children(name in "[a-z][a-z0-9_]{0,12}", child in "[a-z]{1,8}") {
            let r = rules(&name);
            proptest::prop_assert!(r.excludes(&name));
            let nested = format!("{name}/{child}");
            proptest::prop_assert!(r.excludes(&nested));
            let other = format!("{name}x");
            proptest::prop_assert!(!r.excludes(&other));
        }
    }
}
