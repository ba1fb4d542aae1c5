//! Commands that only keep a container open or drop into a prompt — a bare shell (`bash`,
//! `sh`, `/bin/bash -l`), a REPL (`python`, `python3`, `ipython`), `sleep infinity`,
//! `tail -f /dev/null`, `true` — written into Dockerfiles as a CMD that `docker compose` or a
//! person overrides. They are never a start command ([`super::scan`] drops them, saying so), so
//! a real command found elsewhere wins. Pure.

const SHELLS: &[&str] = &["sh", "bash", "dash", "ash", "zsh", "fish", "ksh"];
const REPLS: &[&str] = &[
    "python", "python3", "ipython", "ipython3", "bpython", "ptpython",
];
/// Process wrappers that run the rest of the command line.
const WRAPPERS: &[&str] = &["tini", "dumb-init", "exec"];

fn base(word: &str) -> &str {
    word.rsplit('/').next().unwrap_or(word)
}

/// What the command is when it is only a placeholder (`a bare shell`, …); `None` for a real one.
pub fn placeholder(argv: &[String]) -> Option<&'static str> {
    let mut words: Vec<&str> = argv.iter().map(String::as_str).collect();
    // `sh -c "exec bash"` (a shell-form CMD) is the command inside.
    while let [sh, "-c", script] = words.as_slice()
        && SHELLS.contains(&base(sh))
    {
        words = script.split_whitespace().collect();
    }
    while let Some(first) = words.first()
        && WRAPPERS.contains(&base(first))
    {
        words.remove(0);
        if words.first() == Some(&"--") {
            words.remove(0);
        }
    }
    let (program, args) = words.split_first()?;
    let program = base(program);
    let is_python_minor = program
        .strip_prefix("python3.")
        .is_some_and(|m| !m.is_empty() && m.bytes().all(|b| b.is_ascii_digit()));
    match (program, args) {
        (p, a) if SHELLS.contains(&p) && a.iter().all(|x| x.starts_with('-') && *x != "-c") => {
            Some("a bare shell")
        }
        (p, []) if REPLS.contains(&p) || is_python_minor => Some("an interactive interpreter"),
        ("sleep", ["infinity" | "inf"]) => Some("sleeps forever"),
        ("tail", ["-f" | "-F", "/dev/null"]) => Some("waits forever"),
        ("true" | ":", []) => Some("does nothing"),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(s: &[&str]) -> Vec<String> {
        s.iter().map(|w| w.to_string()).collect()
    }

    #[test]
    fn placeholders_are_recognised_and_real_commands_are_not() {
        let yes: &[&[&str]] = &[
            &["bash"],
            &["sh"],
            &["/bin/bash", "-l"],
            &["/bin/sh", "-c", "exec bash"],
            &["python"],
            &["python3"],
            &["python3.12"],
            &["ipython"],
            &["sleep", "infinity"],
            &["tail", "-f", "/dev/null"],
            &["tini", "--", "sleep", "infinity"],
            &["true"],
            &["/bin/true"],
        ];
        for a in yes {
            assert!(placeholder(&argv(a)).is_some(), "{a:?}");
        }
        let no: &[&[&str]] = &[
            &["python", "app.py"],
            &["python3", "-m", "http.server"],
            &["bash", "start.sh"],
            &["sh", "-c", "exec gunicorn app:app"],
            &["sleep", "5"],
            &["tail", "-f", "/var/log/app.log"],
            &["gunicorn", "app:app"],
            &[],
        ];
        for a in no {
            assert_eq!(placeholder(&argv(a)), None, "{a:?}");
        }
        assert_eq!(placeholder(&argv(&["bash"])), Some("a bare shell"));
        assert_eq!(
            placeholder(&argv(&["python"])),
            Some("an interactive interpreter")
        );
    }
}
