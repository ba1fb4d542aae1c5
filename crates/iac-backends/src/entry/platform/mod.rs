//! Start commands a repo already declares for a platform, one file per platform (like nixpacks'
//! providers). Each source reads its file(s) statically and reports the start command(s) it
//! declares, the build commands it declares (which become [`BuildStep`]s) and port hints.
//!
//! Sources, in precedence order (the first one that declares a start command wins; the others
//! become runner-up candidates):
//!
//! | rule id | file | platform |
//! |---|---|---|
//! | `platform:procfile` | `Procfile` (`web`, else `worker`, else the first line) | Heroku / Dokku |
//! | `platform:render` | `render.yaml` `startCommand` (+ `buildCommand`) | Render |
//! | `platform:railway` | `railway.json` / `railway.toml` `deploy.startCommand` (+ `build.buildCommand`) | Railway |
//! | `platform:app.json` | `app.json` `formation.web.command`, else `scripts.start`/`scripts.web` | Heroku / Dokku |
//! | `platform:fly` | `fly.toml` `[processes]` (`app`/`web`/first), else `[experimental] cmd` | Fly.io |
//! | `platform:nixpacks` | `nixpacks.toml` `[start] cmd` (+ `[phases.build] cmds`) | nixpacks |
//! | `platform:railpack` | `railpack.json` `deploy.startCommand` (+ `steps.build.commands`) | Railpack |
//! | `platform:dockerfile` | `Dockerfile`: CMD/ENTRYPOINT of the final runtime stage | Docker |
//! | `platform:compose` | compose file: `command` of the service that builds `.` | Docker Compose |
//!
//! Buildpack-style platforms come first: they run the repo checked out as the working directory,
//! exactly as iac does (`/app`). Two exceptions: a compose `command`/`entrypoint` for the service
//! that builds the repo's own `./Dockerfile` takes that Dockerfile's place (compose runs it
//! instead of the CMD), and a placeholder command ([`placeholder`]: a bare shell, a REPL,
//! `sleep infinity`, `tail -f /dev/null`, `true`) is never a start command, whatever declares it. Dockerfile and compose commands were written for an image whose
//! layout the repo's Dockerfile decides; [`dockerfile`] maps its WORKDIR and COPY paths back onto
//! the repo, but they are the less direct statement, so they rank after.
//!
//! Build commands that only install dependencies (`pip install`, `poetry install`, `uv sync`, …)
//! are dropped: the image build installs the dependencies itself (offline when it must).
//! Release/pre-deploy commands (Procfile `release`, Railway `preDeployCommand`, fly
//! `release_command`) are never build steps; [`release`] reads the one iac runs before a deploy.

pub mod appjson;
pub mod compose;
pub mod dockerfile;
pub mod fly;
pub mod nixpacks;
pub mod placeholder;
pub mod procfile;
pub mod railpack;
pub mod railway;
pub mod release;
pub mod render;

use std::path::Path;

use iac_core::{BuildStep, EntryError};

use super::command::{Command, parse_command, port_of};

/// A start command declared for a platform.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Declared {
    /// Rule id, e.g. `platform:procfile`.
    pub rule: &'static str,
    /// The platform, e.g. `Heroku`.
    pub platform: &'static str,
    /// File and line (and key), e.g. `Procfile line 3 (process web)`.
    pub origin: String,
    /// The command as iac will run it.
    pub argv: Vec<String>,
    /// Extra words for the `why` sentence (runner dropped, sh -c, path mapping, …).
    pub note: String,
    /// Working directory relative to `/app`.
    pub workdir: Option<String>,
    /// The port it listens on (from the command, else the platform's own port setting).
    pub port: Option<u16>,
}

/// Everything the platform sources found.
#[derive(Debug, Clone, Default)]
pub struct Scan {
    /// Start commands in precedence order.
    pub starts: Vec<Declared>,
    /// Declared build commands, in source order.
    pub build_steps: Vec<BuildStep>,
    /// What each source looked for when it found no start command (for the NotFound listing).
    pub looked: Vec<String>,
}

/// What one source found.
#[derive(Debug, Clone, Default)]
pub struct Found {
    /// Start commands declared, in file order.
    pub starts: Vec<Declared>,
    /// Build commands declared (run at image build time).
    pub build_steps: Vec<BuildStep>,
    /// Set when no start command was found: what was looked for and what was there.
    pub looked: Option<String>,
    /// The start command replaces the repo's own Dockerfile CMD (a compose service that builds
    /// `./Dockerfile` and declares `command`/`entrypoint`, as compose runs it).
    pub overrides_dockerfile: bool,
}

impl Found {
    /// Nothing found; `looked` says what was looked for.
    pub fn nothing(looked: impl Into<String>) -> Found {
        Found {
            looked: Some(looked.into()),
            ..Found::default()
        }
    }
}

/// One platform source: reads its file(s) under the repo directory.
type Source = fn(&Path) -> Result<Found, EntryError>;

/// Runs every source in precedence order.
pub fn scan(dir: &Path) -> Result<Scan, EntryError> {
    let sources: [Source; 9] = [
        procfile::scan,
        render::scan,
        railway::scan,
        appjson::scan,
        fly::scan,
        nixpacks::scan,
        railpack::scan,
        dockerfile::scan,
        compose::scan,
    ];
    let mut out = Scan::default();
    let mut overriding: Vec<Declared> = Vec::new();
    for source in sources {
        let found = source(dir)?;
        if found.overrides_dockerfile {
            overriding.extend(found.starts);
        } else {
            out.starts.extend(found.starts);
        }
        out.build_steps.extend(found.build_steps);
        out.looked.extend(found.looked);
    }
    // A compose `command` for the repo's own build runs instead of that Dockerfile's CMD, as
    // compose runs it: it takes the Dockerfile's place (the CMD stays a runner-up).
    for mut d in overriding {
        match out
            .starts
            .iter()
            .position(|s| s.rule == "platform:dockerfile")
        {
            Some(i) => {
                d.note
                    .push_str("; it replaces the Dockerfile's CMD, as compose runs the service");
                out.starts.insert(i, d);
            }
            None => out.starts.push(d),
        }
    }
    // Placeholders (a bare shell, a REPL, `sleep infinity`, …) are never a start command.
    let (real, placeholders): (Vec<Declared>, Vec<Declared>) = out
        .starts
        .into_iter()
        .partition(|d| placeholder::placeholder(&d.argv).is_none());
    out.starts = real;
    for d in placeholders {
        out.looked.push(format!(
            "{}: `{}` is only a placeholder ({}), not a start command",
            d.origin,
            d.argv.join(" "),
            placeholder::placeholder(&d.argv).unwrap_or("a placeholder")
        ));
    }
    Ok(out)
}

/// A [`Declared`] from a command line written in a platform file. `port_hint` is the platform's
/// own port setting (fly `internal_port`, Dockerfile `EXPOSE`), used when the command says none.
#[allow(clippy::too_many_arguments)]
pub fn declared(
    rule: &'static str,
    platform: &'static str,
    origin: String,
    raw: &str,
    file: &Path,
    workdir: Option<String>,
    port_hint: Option<u16>,
) -> Result<Declared, EntryError> {
    // `cd DIR && CMD` (a common Procfile idiom) runs CMD in DIR: make DIR the workdir so the
    // command can be exec'ed directly.
    let (raw, workdir) = match split_cd(raw) {
        Some((d, rest)) if workdir.is_none() => match rel_dir(d, file, "cd") {
            Ok(Some(d)) => (rest, Some(d)),
            _ => (raw, workdir),
        },
        _ => (raw, workdir),
    };
    let cmd: Command = parse_command(raw).map_err(|e| EntryError::Parse {
        file: file.to_path_buf(),
        message: format!("{origin}: start command {raw:?}: {e}"),
    })?;
    let port = port_of(&cmd.argv).or(port_hint);
    Ok(Declared {
        rule,
        platform,
        origin,
        note: cmd.note(),
        argv: cmd.argv,
        workdir,
        port,
    })
}

/// `cd DIR && REST` → `(DIR, REST)` when DIR is one plain word.
fn split_cd(raw: &str) -> Option<(&str, &str)> {
    let rest = raw.trim().strip_prefix("cd ")?;
    let (d, cmd) = rest.split_once("&&")?;
    let d = d.trim();
    let plain = !d.is_empty()
        && d.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '/'));
    (plain && !cmd.trim().is_empty()).then(|| (d, cmd.trim()))
}

/// Whether one simple command only installs dependencies (which the image build does itself).
fn installs_dependencies(cmd: &str) -> bool {
    let w: Vec<&str> = cmd.split_whitespace().collect();
    let w: Vec<&str> = match w.as_slice() {
        ["python" | "python3", "-m", rest @ ..] => rest.to_vec(),
        _ => w,
    };
    matches!(
        w.as_slice(),
        ["pip" | "pip3", "install", ..]
            | ["uv", "sync" | "pip", ..]
            | ["poetry", "install" | "lock", ..]
            | ["pipenv", "install" | "sync", ..]
            | ["pdm", "install" | "sync", ..]
            | ["rye", "sync", ..]
    )
}

/// A build step from a declared build command, with dependency installs dropped from `&&`/`;`
/// chains. `None` when nothing is left.
pub fn build_step(
    raw: &str,
    origin: String,
    file: &Path,
    workdir: Option<String>,
) -> Result<Option<BuildStep>, EntryError> {
    let mut kept: Vec<&str> = Vec::new();
    for part in raw.split("&&").flat_map(|p| p.split(';')) {
        let p = part.trim();
        if !p.is_empty() && !installs_dependencies(p) {
            kept.push(p);
        }
    }
    if kept.is_empty() {
        return Ok(None);
    }
    let line = kept.join(" && ");
    let cmd = parse_command(&line).map_err(|e| EntryError::Parse {
        file: file.to_path_buf(),
        message: format!("{origin}: build command {raw:?}: {e}"),
    })?;
    Ok(Some(BuildStep {
        argv: cmd.argv,
        workdir,
        // Written for another platform's build environment (network, tools): a failure there
        // is reported with its output but does not stop the image.
        warn_on_failure: true,
        origin,
    }))
}

/// A relative directory from a platform file (`rootDir`, compose `context`), normalised:
/// `None` for the repo root; an error for absolute paths or `..`.
pub fn rel_dir(value: &str, file: &Path, key: &str) -> Result<Option<String>, EntryError> {
    let v = value.trim().trim_start_matches("./").trim_end_matches('/');
    if v.is_empty() || v == "." {
        return Ok(None);
    }
    if v.starts_with('/') || v.split('/').any(|c| c == "..") {
        return Err(EntryError::Parse {
            file: file.to_path_buf(),
            message: format!(
                "{key} {value:?}: expected a directory inside the repo (relative, without `..`)"
            ),
        });
    }
    Ok(Some(v.to_string()))
}

/// The 1-based line of the first line containing `needle` (for origins in YAML/JSON files).
pub fn line_of(text: &str, needle: &str) -> Option<usize> {
    text.lines().position(|l| l.contains(needle)).map(|i| i + 1)
}

/// `file line N (key)` or `file (key)`.
pub fn at(file: &str, text: &str, needle: &str, key: &str) -> String {
    match line_of(text, needle) {
        Some(n) => format!("{file} line {n} ({key})"),
        None => format!("{file} ({key})"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dependency_installs_are_dropped_from_build_commands() {
        let f = Path::new("render.yaml");
        assert_eq!(
            build_step("pip install -r requirements.txt", "o".into(), f, None).unwrap(),
            None
        );
        let s = build_step(
            "pip install -r requirements.txt && python manage.py collectstatic --no-input",
            "o".into(),
            f,
            None,
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            s.argv,
            ["python", "manage.py", "collectstatic", "--no-input"]
        );
        let s = build_step("./build.sh", "o".into(), f, Some("web".into()))
            .unwrap()
            .unwrap();
        assert_eq!(s.argv, ["./build.sh"]);
        assert_eq!(s.workdir.as_deref(), Some("web"));
        assert!(s.warn_on_failure);
    }

    #[test]
    fn rel_dirs() {
        let f = Path::new("x");
        assert_eq!(rel_dir(".", f, "k").unwrap(), None);
        assert_eq!(rel_dir("./app/", f, "k").unwrap().as_deref(), Some("app"));
        assert!(
            rel_dir("../up", f, "k")
                .unwrap_err()
                .to_string()
                .contains("`..`")
        );
        assert!(rel_dir("/abs", f, "k").is_err());
    }
}
