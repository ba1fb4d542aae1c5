//! POSIX shell quoting, for the scripts and command lines iac renders (the sidecar's script in
//! [`crate::plan`], `RUN` lines and entry commands in the backends).

/// Single-quotes one word for a POSIX shell (`it's` → `'it'\''s'`): the shell reads it back as
/// exactly `word`, with no expansion of `$`, backquotes or backslashes.
pub fn sh_quote(word: &str) -> String {
    format!("'{}'", word.replace('\'', "'\\''"))
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
}
