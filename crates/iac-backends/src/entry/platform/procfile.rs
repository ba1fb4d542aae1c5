//! Heroku/Dokku `Procfile`: `name: command` lines. The `web` process is the start command, else
//! `worker`, else the first line in file order. `release` is a release-phase command (migrations)
//! and is never a build step nor a start command ([`super::release`] reads it).

use std::path::Path;

use iac_core::EntryError;

use super::{Found, declared};
use crate::entry::read_optional;

/// One `name: command` line of a Procfile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcfileLine {
    /// The process type (`web`, `worker`, …).
    pub name: String,
    /// The command after the colon, trimmed.
    pub command: String,
    /// 1-based line number.
    pub line: usize,
}

/// Parses a Procfile: `name: command` lines in file order; blank and `#` lines are skipped.
pub fn parse_procfile(text: &str) -> Vec<ProcfileLine> {
    text.lines()
        .enumerate()
        .filter_map(|(i, l)| {
            let l = l.trim();
            if l.is_empty() || l.starts_with('#') {
                return None;
            }
            let (name, cmd) = l.split_once(':')?;
            let name = name.trim();
            let valid = !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
            (valid && !cmd.trim().is_empty()).then(|| ProcfileLine {
                name: name.to_string(),
                command: cmd.trim().to_string(),
                line: i + 1,
            })
        })
        .collect()
}

/// Reads `Procfile`: one start command per process type; nothing when the file is absent.
pub fn scan(dir: &Path) -> Result<Found, EntryError> {
    let path = dir.join("Procfile");
    let Some(text) = read_optional(&path)? else {
        return Ok(Found::nothing("Procfile: there is no Procfile"));
    };
    let procs: Vec<ProcfileLine> = parse_procfile(&text)
        .into_iter()
        .filter(|p| p.name != "release")
        .collect();
    let chosen = procs
        .iter()
        .find(|p| p.name == "web")
        .map(|p| (p, "the `web` process"))
        .or_else(|| {
            procs
                .iter()
                .find(|p| p.name == "worker")
                .map(|p| (p, "the `worker` process, as there is no `web`"))
        })
        .or_else(|| {
            procs.first().map(|p| {
                (
                    p,
                    "the first process, as there is neither `web` nor `worker`",
                )
            })
        });
    let Some((p, which)) = chosen else {
        return Ok(Found::nothing(
            "Procfile: it has no `name: command` line other than `release`",
        ));
    };
    let d = declared(
        "platform:procfile",
        "Heroku",
        format!("Procfile line {} ({which})", p.line),
        &p.command,
        &path,
        None,
        // Heroku's contract: the web process binds $PORT.
        (p.name == "web").then_some(iac_core::DEFAULT_APP_PORT),
    )?;
    Ok(Found {
        starts: vec![d],
        ..Found::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn procfile_lines() {
        let p = parse_procfile(
            "# comment\nrelease: ./migrate\n\nworker: celery -A x worker\nweb: gunicorn app:app\nbad line\n: empty\n",
        );
        let names: Vec<(&str, usize)> = p.iter().map(|l| (l.name.as_str(), l.line)).collect();
        assert_eq!(names, [("release", 2), ("worker", 4), ("web", 5)]);
        assert_eq!(p[2].command, "gunicorn app:app");
    }

    #[test]
    fn release_only_procfile_declares_nothing() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(
            d.path().join("Procfile"),
            "release: python manage.py migrate\n",
        )
        .unwrap();
        let f = scan(d.path()).unwrap();
        assert!(f.starts.is_empty() && f.build_steps.is_empty());
        assert!(f.looked.unwrap().contains("release"));
    }
}
