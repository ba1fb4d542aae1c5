//! Start commands as written in a repo's files (Procfile lines, `startCommand`s, Dockerfile shell
//! forms, compose `command` strings): turning a command line into the argv iac runs, and reading
//! the port it listens on.
//!
//! * A command runs under `sh -c` only when it really needs a shell: unquoted `$`/backtick
//!   expansion, operators (`; && || | & < > ( )`), globs (`* ? [`), a leading `~` or `#`, or
//!   leading `NAME=value` assignments. A single command keeps signals by being `exec`ed
//!   (`sh -c "exec gunicorn …"`, `sh -c "A=1 exec python app.py"`); a chain (`a && b`) is not.
//! * Environment runners that only activate the project's virtualenv (`uv run`, `poetry run`,
//!   `pipenv run`, `pdm run`, `rye run`) are dropped in front of a command: the image installs the
//!   dependencies into its own interpreter and may not have the runner.
//! * [`port_of`] reads `--port N`, `-p N`, `--server.port N`, `-b/--bind/--listen HOST:PORT`,
//!   `runserver [HOST:]PORT` and `$PORT`, else the server's documented default (gunicorn honours
//!   `$PORT` itself; uvicorn/hypercorn/daphne/`fastapi run`/runserver 8000; `flask run` 5000;
//!   `streamlit run` 8501; waitress 8080).

use iac_core::DEFAULT_APP_PORT;
/// Quoting lives in the core, which renders shell scripts too.
use iac_core::shell::split_words;

/// Runners whose `X run CMD` means "run CMD in the project's environment".
const ENV_RUNNERS: &[&str] = &["uv", "poetry", "pipenv", "pdm", "rye"];

/// A command line turned into argv.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    /// The words, split as a POSIX shell would (no expansion), environment runners dropped.
    pub argv: Vec<String>,
    /// The line after dropping environment runners (what the argv runs).
    pub line: String,
    /// Why it runs under `sh -c`, when it does.
    pub shell: Option<&'static str>,
    /// The runner dropped in front, e.g. `poetry run`.
    pub dropped_runner: Option<String>,
}

impl Command {
    /// A short note for a `why` sentence (empty when there is nothing to say).
    pub fn note(&self) -> String {
        let mut parts = Vec::new();
        if let Some(r) = &self.dropped_runner {
            parts.push(format!(
                "`{r}` dropped (the image installs the dependencies itself)"
            ));
        }
        if let Some(s) = self.shell {
            parts.push(format!("run through `sh -c` because it {s}"));
        }
        if parts.is_empty() {
            String::new()
        } else {
            format!(" ({})", parts.join("; "))
        }
    }
}

fn is_assignment(word: &str) -> bool {
    match word.split_once('=') {
        Some((name, _)) => {
            let mut c = name.chars();
            c.next()
                .is_some_and(|f| f == '_' || f.is_ascii_alphabetic())
                && c.all(|x| x == '_' || x.is_ascii_alphanumeric())
        }
        None => false,
    }
}

/// Unquoted characters that make the shell do something: globs, `~` and `#` at a word start.
fn unquoted_specials(line: &str) -> (bool, bool) {
    let (mut glob, mut tilde_or_comment) = (false, false);
    let (mut in_s, mut in_d, mut esc) = (false, false, false);
    let mut word_start = true;
    for c in line.chars() {
        if esc {
            esc = false;
            word_start = false;
            continue;
        }
        match c {
            '\\' if !in_s => esc = true,
            '\'' if !in_d => in_s = !in_s,
            '"' if !in_s => in_d = !in_d,
            '*' | '?' | '[' if !in_s && !in_d => glob = true,
            '~' | '#' if !in_s && !in_d && word_start => tilde_or_comment = true,
            _ => {}
        }
        word_start = c.is_whitespace() && !in_s && !in_d;
    }
    (glob, tilde_or_comment)
}

/// Drops a leading `uv run` / `poetry run` / … (only when no runner flag follows).
fn drop_runner(line: &str) -> (String, Option<String>) {
    let t = line.trim();
    let mut it = t.splitn(3, char::is_whitespace);
    if let (Some(tool), Some("run"), Some(rest)) = (it.next(), it.next(), it.next()) {
        let rest = rest.trim_start();
        if ENV_RUNNERS.contains(&tool) && !rest.is_empty() && !rest.starts_with('-') {
            return (rest.to_string(), Some(format!("{tool} run")));
        }
    }
    (t.to_string(), None)
}

/// Turns a command line into argv. Errors (e.g. an unterminated quote) name the problem.
pub fn parse_command(raw: &str) -> Result<Command, String> {
    // Join backslash-newline continuations the way a shell would.
    let joined = raw.replace("\\\r\n", " ").replace("\\\n", " ");
    let (line, dropped_runner) = drop_runner(&joined);
    let split = split_words(&line)?;
    if split.words.is_empty() {
        return Err("the command is empty".to_string());
    }
    let (glob, tilde_or_comment) = unquoted_specials(&line);
    let assignments = split.words.iter().take_while(|w| is_assignment(w)).count();
    let line = line.trim().to_string();
    let (argv, shell) = if split.operators {
        (
            vec!["sh".into(), "-c".into(), line.clone()],
            Some("chains commands or redirects (`;`, `&&`, `|`, …)"),
        )
    } else if split.expands || glob || tilde_or_comment || assignments > 0 {
        let why = if split.expands {
            "expands variables (`$…`)"
        } else if glob {
            "uses glob patterns"
        } else if tilde_or_comment {
            "uses `~` or a `#` comment"
        } else {
            "sets variables in front of the command"
        };
        // Assignments stay in front of `exec` so they reach the program's environment.
        let script = if assignments > 0 && assignments < split.words.len() {
            let mut rest = line.as_str();
            for _ in 0..assignments {
                rest = skip_word(rest);
            }
            let prefix = &line[..line.len() - rest.len()];
            format!("{} exec {}", prefix.trim_end(), rest.trim_start())
        } else if assignments == split.words.len() {
            line.clone()
        } else {
            format!("exec {line}")
        };
        (vec!["sh".into(), "-c".into(), script], Some(why))
    } else {
        (split.words.clone(), None)
    };
    Ok(Command {
        argv,
        line,
        shell,
        dropped_runner,
    })
}

/// The rest of `s` after its first shell word (quotes respected) and the blanks after it.
fn skip_word(s: &str) -> &str {
    let s = s.trim_start();
    let (mut in_s, mut in_d, mut esc) = (false, false, false);
    for (i, c) in s.char_indices() {
        if esc {
            esc = false;
            continue;
        }
        match c {
            '\\' if !in_s => esc = true,
            '\'' if !in_d => in_s = !in_s,
            '"' if !in_s => in_d = !in_d,
            c if c.is_whitespace() && !in_s && !in_d => return &s[i..],
            _ => {}
        }
    }
    ""
}

/// Whether a word reads `$PORT` (`$PORT`, `${PORT}`, `${PORT:-…}`).
fn reads_port_var(w: &str) -> bool {
    let mut rest = w;
    while let Some(i) = rest.find('$') {
        let after = &rest[i + 1..];
        if let Some(name) = after.strip_prefix('{') {
            let end = name.find(['}', ':', '-']).unwrap_or(name.len());
            if &name[..end] == "PORT" {
                return true;
            }
        } else {
            let end = after
                .find(|c: char| !(c == '_' || c.is_ascii_alphanumeric()))
                .unwrap_or(after.len());
            if &after[..end] == "PORT" {
                return true;
            }
        }
        rest = after;
    }
    false
}

/// The port in a `--port` value: digits, or `$PORT` (→ [`DEFAULT_APP_PORT`], which iac sets).
fn port_value(v: &str) -> Option<u16> {
    let v = v.trim_matches(['"', '\'']);
    if reads_port_var(v) {
        return Some(DEFAULT_APP_PORT);
    }
    v.parse::<u16>().ok().filter(|p| *p != 0)
}

/// The port in a `HOST:PORT` bind value (`0.0.0.0:8000`, `[::]:$PORT`, `:8000`, `8000`).
fn bind_value(v: &str) -> Option<u16> {
    let v = v.trim_matches(['"', '\'']);
    if v.starts_with("unix:") || v.starts_with("fd://") {
        return None;
    }
    match v.rsplit_once(':') {
        Some((host, port)) if !host.ends_with('$') && !host.ends_with("${PORT") => port_value(port),
        _ => port_value(v),
    }
}

/// The words of a command, looking through `sh -c SCRIPT`.
fn words_of(argv: &[String]) -> Vec<String> {
    if argv.len() >= 3 && argv[0] == "sh" && argv[1] == "-c" {
        split_words(&argv[2]).map(|s| s.words).unwrap_or_default()
    } else {
        argv.to_vec()
    }
}

/// The port the command listens on, when the command (or its server's default) says.
pub fn port_of(argv: &[String]) -> Option<u16> {
    let words = words_of(argv);
    let mut explicit = None;
    for (i, w) in words.iter().enumerate() {
        let next = words.get(i + 1).map(String::as_str);
        let (flag, inline) = match w.split_once('=') {
            Some((f, v)) if f.starts_with('-') => (f, Some(v)),
            _ => (w.as_str(), None),
        };
        let value = inline.or(next);
        let found = match flag {
            "--port" | "-p" | "--server.port" | "-P" => value.and_then(port_value),
            "--bind" | "-b" | "--listen" | "--host-port" => value.and_then(bind_value),
            "runserver" => next.filter(|n| !n.starts_with('-')).and_then(bind_value),
            _ => None,
        };
        if found.is_some() {
            explicit = found;
        }
    }
    if explicit.is_some() {
        return explicit;
    }
    if words.iter().any(|w| reads_port_var(w)) {
        return Some(DEFAULT_APP_PORT);
    }
    let base = |w: &String| w.rsplit('/').next().unwrap_or(w).to_string();
    let names: Vec<String> = words.iter().map(base).collect();
    let has = |n: &str| names.iter().any(|w| w == n);
    let has_pair = |a: &str, b: &str| names.windows(2).any(|p| p[0] == a && p[1] == b);
    if has("gunicorn") {
        // gunicorn binds 0.0.0.0:$PORT when PORT is set, which iac always does.
        Some(DEFAULT_APP_PORT)
    } else if has("uvicorn")
        || has("hypercorn")
        || has("daphne")
        || has("runserver")
        || has_pair("fastapi", "run")
        || has_pair("fastapi", "dev")
    {
        Some(8000)
    } else if has_pair("flask", "run") || (has("flask") && has("run")) {
        Some(5000)
    } else if has_pair("streamlit", "run") {
        Some(8501)
    } else if has("waitress-serve") {
        Some(8080)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(line: &str) -> Vec<String> {
        parse_command(line).unwrap().argv
    }

    #[test]
    fn shell_only_when_needed() {
        let cases: &[(&str, &[&str])] = &[
            ("gunicorn app:app", &["gunicorn", "app:app"]),
            ("python -m 'my app'", &["python", "-m", "my app"]),
            (
                "uvicorn main:app --host 0.0.0.0 --port $PORT",
                &[
                    "sh",
                    "-c",
                    "exec uvicorn main:app --host 0.0.0.0 --port $PORT",
                ],
            ),
            (
                "python manage.py migrate && gunicorn x.wsgi",
                &["sh", "-c", "python manage.py migrate && gunicorn x.wsgi"],
            ),
            ("a; b", &["sh", "-c", "a; b"]),
            ("python run_*.py", &["sh", "-c", "exec python run_*.py"]),
            ("python 'run_*.py'", &["python", "run_*.py"]),
            (
                "FLASK_APP=app.py flask run",
                &["sh", "-c", "FLASK_APP=app.py exec flask run"],
            ),
            ("echo '$HOME'", &["echo", "$HOME"]),
            ("poetry run gunicorn app:app", &["gunicorn", "app:app"]),
            (
                "uv run --with x gunicorn",
                &["uv", "run", "--with", "x", "gunicorn"],
            ),
            ("python \\\n  app.py", &["python", "app.py"]),
        ];
        for (line, want) in cases {
            assert_eq!(argv(line), *want, "{line}");
        }
        assert!(parse_command("").is_err());
        assert!(parse_command("echo 'x").unwrap_err().contains("quote"));
        let c = parse_command("pipenv run python app.py --port $PORT").unwrap();
        assert!(c.note().contains("`pipenv run` dropped") && c.note().contains("sh -c"));
    }

    #[test]
    fn assignments_reach_the_program_in_dash() {
        // The `A=1 exec prog` form must export A to prog in a POSIX sh.
        let c = parse_command("GREETING=hi env").unwrap();
        let out = std::process::Command::new(&c.argv[0])
            .args(&c.argv[1..])
            .output()
            .unwrap();
        assert!(String::from_utf8_lossy(&out.stdout).contains("GREETING=hi"));
    }

    #[test]
    fn ports() {
        let cases: &[(&str, Option<u16>)] = &[
            ("uvicorn main:app --host 0.0.0.0 --port $PORT", Some(8000)),
            ("uvicorn main:app --port=9001", Some(9001)),
            ("uvicorn main:app", Some(8000)),
            ("gunicorn app:app", Some(DEFAULT_APP_PORT)),
            ("gunicorn -b 0.0.0.0:5005 app:app", Some(5005)),
            ("gunicorn --bind=:7000 app:app", Some(7000)),
            (
                "hypercorn main:app --bind \"[::]:$PORT\"",
                Some(DEFAULT_APP_PORT),
            ),
            ("python manage.py runserver 0.0.0.0:8765", Some(8765)),
            ("python manage.py runserver", Some(8000)),
            ("flask run --host 0.0.0.0", Some(5000)),
            ("python -m flask --app app run", Some(5000)),
            ("streamlit run app.py --server.port 8502", Some(8502)),
            ("streamlit run app.py", Some(8501)),
            ("waitress-serve --listen=*:6543 app:app", Some(6543)),
            ("python bot.py", None),
            ("python app.py --port ${PORT:-5000}", Some(DEFAULT_APP_PORT)),
            ("fastapi run app/main.py", Some(8000)),
        ];
        for (line, want) in cases {
            assert_eq!(port_of(&argv(line)), *want, "{line}");
        }
    }
}
