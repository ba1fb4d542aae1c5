//! The start command a repo's `Dockerfile` declares: CMD/ENTRYPOINT of the final runtime stage.
//!
//! * Instructions are read like Docker does: `# escape=` directive, backslash continuations,
//!   comments inside continuations, heredocs (`RUN <<EOF … EOF`) skipped as bodies.
//! * Stages: `FROM image [AS name]`. The runtime stage is the last one whose name is not a
//!   test/dev stage (any `-`/`_`-separated part of the name among `test(s)`, `testing`, `dev`,
//!   `development`, `debug`, `lint`, `ci`, `devcontainer`, `local`, `docs`). A stage built `FROM`
//!   an earlier stage inherits its CMD, ENTRYPOINT, WORKDIR, COPYs and EXPOSEs; an ENTRYPOINT
//!   set in a stage clears an inherited CMD (Docker's rule).
//! * ENTRYPOINT + CMD combine as Docker does: exec ENTRYPOINT + exec CMD concatenate; an exec
//!   ENTRYPOINT with a shell-form CMD gets `/bin/sh -c CMD` appended; a shell-form ENTRYPOINT
//!   ignores CMD. Exec form runs as written (no variable expansion, as in Docker); shell form goes
//!   through [`crate::entry::command`] (`sh -c` only when it needs a shell; `${PORT}` is kept for
//!   run time, as Docker does not expand CMD at build time).
//! * Paths: iac puts the repo at `/app`. The stage's COPY/ADD instructions (not `--from`) map
//!   image paths back onto the repo: the final WORKDIR becomes the Entry's `workdir` when it is a
//!   copy of a repo directory, and absolute argv words under a copied directory (or a file copied
//!   into a PATH directory) are rewritten to their place under `/app`.
//! * `EXPOSE` gives the port when the command itself says none.

use std::path::Path;

use iac_core::EntryError;

use super::{Declared, Found, declared};
use crate::entry::read_optional;

/// One instruction: keyword (upper case), arguments, first line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instruction {
    /// The keyword, upper case (`CMD`, `ENTRYPOINT`, …).
    pub keyword: String,
    /// The arguments, continuation lines joined, trimmed.
    pub args: String,
    /// 1-based line where the instruction starts.
    pub line: usize,
}

/// The escape character from a `# escape=` parser directive (default `\`).
pub fn escape_char(text: &str) -> char {
    for line in text.lines() {
        let Some(d) = line.trim().strip_prefix('#') else {
            break;
        };
        let d = d.trim().to_ascii_lowercase();
        if let Some(v) = d
            .strip_prefix("escape")
            .map(str::trim_start)
            .and_then(|r| r.strip_prefix('='))
        {
            if v.trim() == "`" {
                return '`';
            }
        } else if !d.starts_with("syntax") && !d.starts_with("check") {
            break;
        }
    }
    '\\'
}

/// Heredoc delimiters opened by an instruction (`<<EOF`, `<<-EOF`, `<<"EOF"`).
fn heredoc_words(ins: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = ins;
    while let Some(i) = rest.find("<<") {
        let after = rest[i + 2..].trim_start_matches('-');
        let word: String = after
            .trim_matches(|c| c == '"' || c == '\'')
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        if !word.is_empty() {
            out.push(word);
        }
        rest = &rest[i + 2..];
    }
    out
}

/// Splits a Dockerfile into instructions, as Docker reads them: the one Dockerfile reader
/// (entry rules and `LABEL ENTRYPOINT=` overrides both use it).
pub fn instructions(text: &str) -> Vec<Instruction> {
    let escape = escape_char(text);
    let mut out: Vec<Instruction> = Vec::new();
    let mut current: Option<(usize, String)> = None;
    let mut heredocs: Vec<String> = Vec::new();
    for (idx, line) in text.lines().enumerate() {
        if let Some(word) = heredocs.first() {
            if line.trim() == word {
                heredocs.remove(0);
            }
            continue;
        }
        let trimmed = line.trim();
        if trimmed.starts_with('#') || (trimmed.is_empty() && current.is_none()) {
            continue;
        }
        if trimmed.is_empty() {
            continue;
        }
        let body = if current.is_some() {
            line.trim_end()
        } else {
            trimmed
        };
        let (body, continues) = match body.strip_suffix(escape) {
            Some(b) => (b, true),
            None => (body, false),
        };
        let entry = current.get_or_insert_with(|| (idx + 1, String::new()));
        entry.1.push_str(body);
        if !continues {
            let (line, ins) = current.take().expect("just inserted");
            let (word, args) = ins.split_once(char::is_whitespace).unwrap_or((&ins, ""));
            let keyword = word.to_ascii_uppercase();
            if matches!(keyword.as_str(), "RUN" | "COPY" | "ADD") {
                heredocs = heredoc_words(args);
            }
            out.push(Instruction {
                keyword,
                args: args.trim().to_string(),
                line,
            });
        }
    }
    if let Some((line, ins)) = current {
        let (word, args) = ins.split_once(char::is_whitespace).unwrap_or((&ins, ""));
        out.push(Instruction {
            keyword: word.to_ascii_uppercase(),
            args: args.trim().to_string(),
            line,
        });
    }
    out
}

/// CMD / ENTRYPOINT in exec (JSON array) or shell form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Form {
    /// `["prog", "arg"]`: run as is.
    Exec(Vec<String>),
    /// A command line, run with `/bin/sh -c`.
    Shell(String),
}

fn form(args: &str) -> Form {
    let a = args.trim();
    if a.starts_with('[')
        && let Ok(v) = serde_json::from_str::<Vec<String>>(a)
    {
        return Form::Exec(v);
    }
    Form::Shell(a.to_string())
}

/// A COPY/ADD from the build context: sources (repo-relative) → absolute destination.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Copy {
    srcs: Vec<String>,
    dest: String,
}

#[derive(Debug, Clone, Default)]
struct Stage {
    name: Option<String>,
    line: usize,
    entrypoint: Option<(Form, usize)>,
    cmd: Option<(Form, usize)>,
    cmd_here: bool,
    workdir: String,
    copies: Vec<Copy>,
    expose: Vec<u16>,
}

const DEV_STAGE_WORDS: &[&str] = &[
    "test",
    "tests",
    "testing",
    "dev",
    "development",
    "debug",
    "lint",
    "ci",
    "devcontainer",
    "local",
    "docs",
];

fn is_dev_stage(name: &str) -> bool {
    name.to_ascii_lowercase()
        .split(['-', '_', '.'])
        .any(|p| DEV_STAGE_WORDS.contains(&p))
}

fn join_abs(base: &str, p: &str) -> String {
    let joined = if p.starts_with('/') {
        p.to_string()
    } else {
        format!("{}/{}", base.trim_end_matches('/'), p)
    };
    let mut parts: Vec<&str> = Vec::new();
    for c in joined.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            c => parts.push(c),
        }
    }
    format!("/{}", parts.join("/"))
}

/// Parses COPY/ADD arguments: flags, then sources and destination (JSON or words).
fn copy_args(args: &str) -> Option<(Vec<String>, String, bool)> {
    let mut words: Vec<String> = if args.trim_start().starts_with('[') {
        serde_json::from_str(args.trim()).ok()?
    } else {
        args.split_whitespace().map(str::to_string).collect()
    };
    let mut from = false;
    while words.first().is_some_and(|w| w.starts_with("--")) {
        let flag = words.remove(0);
        if flag.starts_with("--from") {
            from = true;
        }
    }
    let dest = words.pop()?;
    if words.is_empty() {
        return None;
    }
    Some((words, dest, from))
}

fn parse_stages(ins: &[Instruction]) -> Vec<Stage> {
    let mut stages: Vec<Stage> = Vec::new();
    for i in ins {
        match i.keyword.as_str() {
            "FROM" => {
                let words: Vec<&str> = i
                    .args
                    .split_whitespace()
                    .filter(|w| !w.starts_with("--"))
                    .collect();
                let base = words.first().copied().unwrap_or("");
                let name = (words.len() >= 3 && words[1].eq_ignore_ascii_case("as"))
                    .then(|| words[2].to_string());
                let parent = stages
                    .iter()
                    .rev()
                    .find(|s| {
                        s.name
                            .as_deref()
                            .is_some_and(|n| n.eq_ignore_ascii_case(base))
                    })
                    .cloned();
                let mut s = parent.unwrap_or_else(|| Stage {
                    workdir: "/".to_string(),
                    ..Stage::default()
                });
                s.name = name;
                s.line = i.line;
                s.cmd_here = false;
                stages.push(s);
            }
            _ if stages.is_empty() => {}
            "CMD" => {
                let s = stages.last_mut().expect("non-empty");
                s.cmd = Some((form(&i.args), i.line));
                s.cmd_here = true;
            }
            "ENTRYPOINT" => {
                let s = stages.last_mut().expect("non-empty");
                s.entrypoint = Some((form(&i.args), i.line));
                if !s.cmd_here {
                    s.cmd = None;
                }
            }
            "WORKDIR" => {
                let s = stages.last_mut().expect("non-empty");
                s.workdir = join_abs(&s.workdir, i.args.trim().trim_matches('"'));
            }
            "COPY" | "ADD" => {
                let s = stages.last_mut().expect("non-empty");
                if let Some((srcs, dest, from)) = copy_args(&i.args)
                    && !from
                    && !srcs.iter().any(|x| x.contains("://"))
                {
                    let dest_abs = if dest.ends_with('/') {
                        format!("{}/", join_abs(&s.workdir, &dest))
                    } else {
                        join_abs(&s.workdir, &dest)
                    };
                    s.copies.push(Copy {
                        srcs,
                        dest: dest_abs,
                    });
                }
            }
            "EXPOSE" => {
                let s = stages.last_mut().expect("non-empty");
                for w in i.args.split_whitespace() {
                    if let Ok(p) = w.split('/').next().unwrap_or("").parse::<u16>() {
                        s.expose.push(p);
                    }
                }
            }
            _ => {}
        }
    }
    stages
}

/// Maps image paths back onto the repo, using the stage's copies from the build context.
struct PathMap<'a> {
    dir: &'a Path,
    copies: &'a [Copy],
}

impl PathMap<'_> {
    /// The repo-relative path (`""` = root) an absolute image path comes from, if copied.
    fn repo_path(&self, image_path: &str) -> Option<String> {
        let norm = |s: &str| s.trim_start_matches("./").trim_end_matches('/').to_string();
        for c in self.copies.iter().rev() {
            let dest = c.dest.trim_end_matches('/');
            let dest = if dest.is_empty() { "/" } else { dest };
            for src in &c.srcs {
                let src_n = norm(src);
                let src_n = if src_n == "." { String::new() } else { src_n };
                let src_is_dir = src_n.is_empty() || self.dir.join(&src_n).is_dir();
                // A directory's contents land in dest; a file lands at dest/name when dest is a
                // directory (ends with `/` or several sources), else at dest.
                let (image_root, repo_root) = if src_is_dir {
                    (dest.to_string(), src_n.clone())
                } else if c.dest.ends_with('/') || c.srcs.len() > 1 {
                    let name = src_n.rsplit('/').next().unwrap_or(&src_n);
                    (join_abs(dest, name), src_n.clone())
                } else {
                    (dest.to_string(), src_n.clone())
                };
                let rest = if image_path == image_root {
                    Some("")
                } else if image_root == "/" {
                    image_path.strip_prefix('/')
                } else {
                    image_path
                        .strip_prefix(&image_root)
                        .and_then(|r| r.strip_prefix('/'))
                };
                if let Some(rest) = rest {
                    let repo = match (repo_root.is_empty(), rest.is_empty()) {
                        (true, _) => rest.to_string(),
                        (false, true) => repo_root.clone(),
                        (false, false) => format!("{repo_root}/{rest}"),
                    };
                    if repo.is_empty() || self.dir.join(&repo).exists() {
                        return Some(repo);
                    }
                }
            }
        }
        // A directory that received copies of repo paths under the same names
        // (`COPY ./app /code/app` makes /code the repo root).
        let prefix = format!("{}/", image_path.trim_end_matches('/'));
        self.copies.iter().rev().find_map(|c| {
            let dest = c.dest.trim_end_matches('/');
            let below = dest.strip_prefix(&prefix)?;
            c.srcs.iter().find_map(|src| {
                let src_n = norm(src);
                let base = if src_n == below {
                    ""
                } else {
                    src_n.strip_suffix(&format!("/{below}"))?
                };
                self.dir.join(base).is_dir().then(|| base.to_string())
            })
        })
    }

    /// A file copied into a PATH directory under this bare name.
    fn on_path(&self, name: &str) -> Option<String> {
        const PATH_DIRS: &[&str] = &["/usr/local/bin", "/usr/bin", "/bin", "/usr/local/sbin"];
        PATH_DIRS
            .iter()
            .find_map(|d| self.repo_path(&format!("{d}/{name}")))
            .filter(|r| !r.is_empty() && self.dir.join(r).is_file())
    }
}

/// The Dockerfile's runtime start command, or what was looked for.
pub fn from_dockerfile(
    dir: &Path,
    rel: &str,
    rule: &'static str,
    platform: &'static str,
) -> Result<Result<Declared, String>, EntryError> {
    let path = dir.join(rel);
    let Some(text) = read_optional(&path)? else {
        return Ok(Err(format!("{rel}: there is no {rel}")));
    };
    let stages = parse_stages(&instructions(&text));
    let skipped: Vec<String> = stages
        .iter()
        .filter_map(|s| s.name.clone().filter(|n| is_dev_stage(n)))
        .collect();
    let Some(stage) = stages
        .iter()
        .rev()
        .find(|s| !s.name.as_deref().is_some_and(is_dev_stage))
    else {
        return Ok(Err(format!(
            "{rel}: it has no runtime stage (no FROM, or only test/dev stages)"
        )));
    };
    let stage_desc = match &stage.name {
        Some(n) => format!("stage `{n}` (line {})", stage.line),
        None => format!("the stage at line {}", stage.line),
    };
    let skip_note = if skipped.is_empty() {
        String::new()
    } else {
        format!(", skipping test/dev stage(s) {}", skipped.join(", "))
    };
    let (argv_words, shell_line, line): (Option<Vec<String>>, Option<String>, usize) =
        match (&stage.entrypoint, &stage.cmd) {
            (Some((Form::Shell(s), l)), _) => (None, Some(s.clone()), *l),
            (Some((Form::Exec(e), l)), Some((Form::Exec(c), _))) => {
                (Some(e.iter().chain(c).cloned().collect()), None, *l)
            }
            (Some((Form::Exec(e), l)), Some((Form::Shell(c), _))) => {
                let mut v = e.clone();
                v.extend(["/bin/sh".to_string(), "-c".to_string(), c.clone()]);
                (Some(v), None, *l)
            }
            (Some((Form::Exec(e), l)), None) => (Some(e.clone()), None, *l),
            (None, Some((Form::Exec(c), l))) => (Some(c.clone()), None, *l),
            (None, Some((Form::Shell(s), l))) => (None, Some(s.clone()), *l),
            (None, None) => {
                return Ok(Err(format!(
                    "{rel}: runtime {stage_desc} has no CMD or ENTRYPOINT{skip_note}"
                )));
            }
        };
    let which = match (&stage.entrypoint, &stage.cmd) {
        (Some(_), Some(_)) => "ENTRYPOINT + CMD",
        (Some(_), None) => "ENTRYPOINT",
        _ => "CMD",
    };
    let origin = format!("{rel} line {line} ({which} of {stage_desc}{skip_note})");
    let map = PathMap {
        dir,
        copies: &stage.copies,
    };
    let workdir_repo = map.repo_path(&stage.workdir);
    let workdir = workdir_repo.clone().filter(|w| !w.is_empty());
    let expose = stage.expose.first().copied();
    let mut d = match (argv_words, shell_line) {
        (Some(words), _) => {
            if words.is_empty() || words[0].is_empty() {
                return Ok(Err(format!("{rel} line {line}: {which} is an empty list")));
            }
            let port = super::port_of(&words).or(expose);
            Declared {
                rule,
                platform,
                origin,
                argv: words,
                note: " (exec form, run as written)".to_string(),
                workdir,
                port,
            }
        }
        (None, Some(line_text)) => {
            declared(rule, platform, origin, &line_text, &path, workdir, expose)?
        }
        (None, None) => unreachable!("one form is always set"),
    };
    // Rewrite image paths onto /app.
    let mut rewritten = Vec::new();
    for (i, w) in d.argv.iter_mut().enumerate() {
        let repo = if w.starts_with('/') && !w.starts_with("/bin/") {
            map.repo_path(w).filter(|r| !r.is_empty())
        } else if i == 0 && !w.contains('/') && !w.is_empty() {
            map.on_path(w)
        } else {
            None
        };
        if let Some(r) = repo {
            let new = format!("/app/{r}");
            rewritten.push(format!("{w} → {new}"));
            *w = new;
        }
    }
    let wd_note = match (&workdir_repo, stage.workdir.as_str()) {
        (_, "/") => String::new(),
        (Some(r), w) if r.is_empty() => format!("; WORKDIR {w} is the repo root"),
        (Some(r), w) => format!("; WORKDIR {w} is the repo's {r}/"),
        (None, w) => {
            format!("; WORKDIR {w} is not a copy of a repo directory, so it runs from /app")
        }
    };
    let rw_note = if rewritten.is_empty() {
        String::new()
    } else {
        format!("; paths mapped onto /app: {}", rewritten.join(", "))
    };
    d.note = format!("{}{wd_note}{rw_note}", d.note);
    Ok(Ok(d))
}

/// Reads the repo's `Dockerfile`: its ENTRYPOINT/CMD; nothing when the file is absent.
pub fn scan(dir: &Path) -> Result<Found, EntryError> {
    match from_dockerfile(dir, "Dockerfile", "platform:dockerfile", "Docker")? {
        Ok(d) => Ok(Found {
            starts: vec![d],
            ..Found::default()
        }),
        Err(looked) => Ok(Found::nothing(looked)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolve(df: &str, files: &[&str]) -> Result<Declared, String> {
        let d = tempfile::tempdir().unwrap();
        for f in files {
            let p = d.path().join(f);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            if !f.ends_with('/') {
                std::fs::write(p, "x").unwrap();
            }
        }
        std::fs::write(d.path().join("Dockerfile"), df).unwrap();
        from_dockerfile(d.path(), "Dockerfile", "platform:dockerfile", "Docker").unwrap()
    }

    #[test]
    fn instructions_handle_continuations_heredocs_and_comments() {
        let ins = instructions(
            "# syntax=docker/dockerfile:1\nFROM python:3.12 AS base\nRUN <<EOF\nCMD not-an-instruction\nEOF\nCMD [\"python\", \\\n  # comment\n  \"app.py\"]\n",
        );
        let kw: Vec<(&str, usize)> = ins.iter().map(|i| (i.keyword.as_str(), i.line)).collect();
        assert_eq!(kw, [("FROM", 2), ("RUN", 3), ("CMD", 6)]);
        assert_eq!(
            form(&ins[2].args),
            Form::Exec(vec!["python".into(), "app.py".into()])
        );
    }

    #[test]
    fn final_stage_skips_dev_stages_and_inherits() {
        // docker/awesome-compose flask/app/Dockerfile, reduced.
        let d = resolve(
            "FROM --platform=$BUILDPLATFORM python:3.10-alpine AS builder\nWORKDIR /app\nCOPY requirements.txt /app\nCOPY . /app\nENTRYPOINT [\"python3\"]\nCMD [\"app.py\"]\n\nFROM builder as dev-envs\nRUN <<EOF\napk add git\nEOF\nCMD [\"sleep\", \"infinity\"]\n",
            &["app.py", "requirements.txt"],
        )
        .unwrap();
        assert_eq!(d.argv, ["python3", "app.py"]);
        assert!(
            d.origin.contains("stage `builder`") && d.origin.contains("dev-envs"),
            "{}",
            d.origin
        );
        assert_eq!(d.workdir, None);
    }

    #[test]
    fn entrypoint_clears_inherited_cmd_and_forms_combine() {
        let d = resolve(
            "FROM python AS base\nCMD [\"python\", \"x.py\"]\nFROM base AS prod\nENTRYPOINT [\"gunicorn\"]\n",
            &[],
        )
        .unwrap();
        assert_eq!(d.argv, ["gunicorn"]);
        let d = resolve(
            "FROM python\nENTRYPOINT [\"tini\", \"--\"]\nCMD gunicorn -b 0.0.0.0:$PORT app:app\n",
            &[],
        )
        .unwrap();
        assert_eq!(
            d.argv,
            [
                "tini",
                "--",
                "/bin/sh",
                "-c",
                "gunicorn -b 0.0.0.0:$PORT app:app"
            ]
        );
        let d = resolve(
            "FROM python\nENTRYPOINT python serve.py\nCMD [\"ignored\"]\n",
            &[],
        )
        .unwrap();
        assert_eq!(d.argv, ["python", "serve.py"]);
        let d = resolve(
            "FROM python\nCMD uvicorn main:app --host 0.0.0.0 --port ${PORT}\n",
            &[],
        )
        .unwrap();
        assert_eq!(
            d.argv,
            [
                "sh",
                "-c",
                "exec uvicorn main:app --host 0.0.0.0 --port ${PORT}"
            ]
        );
        assert_eq!(d.port, Some(iac_core::DEFAULT_APP_PORT));
    }

    #[test]
    fn workdir_and_paths_map_onto_the_repo() {
        let d = resolve(
            "FROM python:3.12-slim\nWORKDIR /code\nCOPY ./requirements.txt /code/requirements.txt\nCOPY ./app /code/app\nCOPY start.sh /usr/local/bin/\nEXPOSE 80\nCMD [\"start.sh\", \"/code/app/main.py\"]\n",
            &["app/main.py", "start.sh", "requirements.txt"],
        )
        .unwrap();
        assert_eq!(d.argv, ["/app/start.sh", "/app/app/main.py"]);
        assert_eq!(d.workdir, None, "{}", d.note);
        assert_eq!(d.port, Some(80));
        let d = resolve(
            "FROM python\nWORKDIR /srv\nCOPY backend/ .\nCMD [\"uvicorn\", \"main:app\", \"--port\", \"9000\"]\n",
            &["backend/main.py"],
        )
        .unwrap();
        assert_eq!(d.workdir.as_deref(), Some("backend"));
        assert_eq!(d.port, Some(9000));
        assert!(
            d.note.contains("WORKDIR /srv is the repo's backend/"),
            "{}",
            d.note
        );
    }

    #[test]
    fn no_command_is_reported() {
        let e = resolve("FROM python:3.12\nCOPY . .\n", &[]).unwrap_err();
        assert!(e.contains("has no CMD or ENTRYPOINT"), "{e}");
        let e = resolve("FROM python AS test\nCMD pytest\n", &[]).unwrap_err();
        assert!(e.contains("no runtime stage"), "{e}");
    }
}
