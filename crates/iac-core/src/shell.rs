//! POSIX shell words, the one home for them: quoting and joining for the scripts and command
//! lines iac renders (the sidecar's script, `RUN` lines, entry commands) and splitting for the
//! command lines and option lists it reads (Procfile and compose commands, entry overrides, a
//! requirements line's options, which pip splits with `shlex`).

/// Single-quotes one word for a POSIX shell (`it's` → `'it'\''s'`): the shell reads it back as
/// exactly `word`, with no expansion of `$`, backquotes or backslashes.
pub fn sh_quote(word: &str) -> String {
    format!("'{}'", word.replace('\'', "'\\''"))
}

/// An argv as one shell line that splits back into the same words.
pub fn sh_join<S: AsRef<str>>(words: &[S]) -> String {
    words
        .iter()
        .map(|w| sh_quote(w.as_ref()))
        .collect::<Vec<_>>()
        .join(" ")
}

/// A command line split into words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Split {
    /// The words, quotes and escapes removed, nothing expanded.
    pub words: Vec<String>,
    /// Uses `$…` or backtick expansion (unquoted or in double quotes): needs a shell.
    pub expands: bool,
    /// Uses unquoted shell operators (`| & ; < > ( )`): needs a shell and cannot be `exec`ed.
    pub operators: bool,
}

/// Splits a command line like a POSIX shell does (single quotes literal; double quotes with
/// `\` escaping `$ \` " \\` and newline; backslash escapes outside quotes), without expanding
/// anything. Errors on unterminated quotes.
pub fn split_words(s: &str) -> Result<Split, String> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let (mut expands, mut operators) = (false, false);
    let mut it = s.chars().peekable();
    while let Some(c) = it.next() {
        match c {
            c if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            '\\' => match it.next() {
                Some('\n') => {}
                Some(n) => {
                    cur.push(n);
                    in_word = true;
                }
                None => return Err("a trailing backslash escapes nothing".to_string()),
            },
            '\'' => {
                in_word = true;
                loop {
                    match it.next() {
                        Some('\'') => break,
                        Some(n) => cur.push(n),
                        None => return Err("unterminated single quote".to_string()),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match it.next() {
                        Some('"') => break,
                        Some('\\') => match it.next() {
                            Some(n @ ('$' | '`' | '"' | '\\')) => cur.push(n),
                            Some('\n') => {}
                            Some(n) => {
                                cur.push('\\');
                                cur.push(n);
                            }
                            None => return Err("unterminated double quote".to_string()),
                        },
                        Some(n) => {
                            if n == '$' || n == '`' {
                                expands = true;
                            }
                            cur.push(n);
                        }
                        None => return Err("unterminated double quote".to_string()),
                    }
                }
            }
            '$' | '`' => {
                expands = true;
                cur.push(c);
                in_word = true;
            }
            '|' | '&' | ';' | '<' | '>' | '(' | ')' => {
                operators = true;
                cur.push(c);
                in_word = true;
            }
            c => {
                cur.push(c);
                in_word = true;
            }
        }
    }
    if in_word {
        words.push(cur);
    }
    Ok(Split {
        words,
        expands,
        operators,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_quoting_survives_the_shell() {
        let text = "it's $HOME and `x` \\ \"q\"\nline two\n";
        let out = std::process::Command::new("/bin/sh")
            .arg("-c")
            .arg(format!("printf '%s' {}", sh_quote(text)))
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), text);
        assert_eq!(sh_quote("it's"), r"'it'\''s'");
    }

    #[test]
    fn splitting() {
        let s = split_words(r#"python -m  app --name "a b" 'c d' e\ f"#).unwrap();
        assert_eq!(
            s.words,
            ["python", "-m", "app", "--name", "a b", "c d", "e f"]
        );
        assert!(!s.expands && !s.operators);
        let s = split_words(r#"gunicorn -b "0.0.0.0:$PORT" app:app"#).unwrap();
        assert!(s.expands && !s.operators);
        let s = split_words("echo '$HOME'").unwrap();
        assert!(!s.expands, "single-quoted $ is literal");
        let s = split_words("a && b").unwrap();
        assert!(s.operators);
        assert_eq!(
            split_words(r#"say "he said \"hi\"""#).unwrap().words,
            ["say", "he said \"hi\""]
        );
        assert!(
            split_words("echo 'oops")
                .unwrap_err()
                .contains("single quote")
        );
        assert!(
            split_words("echo \"oops")
                .unwrap_err()
                .contains("double quote")
        );
    }
}
