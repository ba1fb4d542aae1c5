//! The release (pre-deploy) step a repo declares for a platform: the command run once per deploy,
//! in the new image, before the new pods take traffic (usually database migrations).
//!
//! | file | key | platform |
//! |---|---|---|
//! | `Procfile` | the `release:` process | Heroku / Dokku |
//! | `render.yaml` | `preDeployCommand` of the service whose start command is read | Render |
//! | `railway.json` / `railway.toml` | `deploy.preDeployCommand` (a command, or a list of commands run in order) | Railway |
//! | `app.json` | `scripts.postdeploy` (a string, or `{ "command": … }`) | Heroku / Dokku |
//! | `fly.toml` | `[deploy] release_command` | Fly.io |
//!
//! The files are read in the order the start command's sources rank ([`super`]): the first one
//! that declares a release step wins. A file ranked above the winner that does not parse is an
//! error (it might declare the step that should run); files below it are not read.

use std::path::Path;

use iac_core::{EntryError, ReleaseCommand};

use super::procfile::parse_procfile;
use super::{at, rel_dir};
use crate::entry::command::parse_command;
use crate::entry::{read_optional, toml_key_line};

/// One source of a release step: reads its file under the repo directory.
type Source = fn(&Path) -> Result<Option<ReleaseCommand>, EntryError>;

/// The release step the repo declares, from the highest-ranked file that declares one.
pub fn scan(dir: &Path) -> Result<Option<ReleaseCommand>, EntryError> {
    let sources: [Source; 5] = [procfile, render, railway, appjson, fly];
    for source in sources {
        if let Some(r) = source(dir)? {
            return Ok(Some(r));
        }
    }
    Ok(None)
}

/// A [`ReleaseCommand`] from a command line written in `file`.
fn command(
    raw: &str,
    origin: String,
    file: &Path,
    workdir: Option<String>,
) -> Result<ReleaseCommand, EntryError> {
    let cmd = parse_command(raw).map_err(|e| EntryError::Parse {
        file: file.to_path_buf(),
        message: format!("{origin}: release command {raw:?}: {e}"),
    })?;
    Ok(ReleaseCommand {
        argv: cmd.argv,
        workdir,
        origin,
    })
}

/// `Procfile`: the first `release:` line.
fn procfile(dir: &Path) -> Result<Option<ReleaseCommand>, EntryError> {
    let path = dir.join("Procfile");
    let Some(text) = read_optional(&path)? else {
        return Ok(None);
    };
    let Some(p) = parse_procfile(&text)
        .into_iter()
        .find(|p| p.name == "release")
    else {
        return Ok(None);
    };
    command(
        &p.command,
        format!("Procfile line {} (release)", p.line),
        &path,
        None,
    )
    .map(Some)
}

/// `render.yaml`: `preDeployCommand` of the service the start command is read from (the first
/// `web` service with a start command, else the first service with one), else of the first
/// service that has one; run from its `rootDir`.
fn render(dir: &Path) -> Result<Option<ReleaseCommand>, EntryError> {
    let path = dir.join("render.yaml");
    let Some(text) = read_optional(&path)? else {
        return Ok(None);
    };
    let doc: yaml_serde::Value = yaml_serde::from_str(&text).map_err(|e| EntryError::Parse {
        file: path.clone(),
        message: format!("{e} (expected a Render blueprint: `services:` list)"),
    })?;
    let services: Vec<&yaml_serde::Value> = doc
        .get("services")
        .and_then(|s| s.as_sequence())
        .map(|s| s.iter().collect())
        .unwrap_or_default();
    let str_of = |s: &yaml_serde::Value, k: &str| s.get(k).and_then(|v| v.as_str()).is_some();
    let has_start =
        |s: &&&yaml_serde::Value| str_of(s, "startCommand") || str_of(s, "dockerCommand");
    let is_web = |s: &&&yaml_serde::Value| s.get("type").and_then(|v| v.as_str()) == Some("web");
    let started = services
        .iter()
        .find(|s| is_web(s) && has_start(s))
        .or_else(|| services.iter().find(|s| has_start(s)));
    let Some(svc) = started
        .filter(|s| str_of(s, "preDeployCommand"))
        .or_else(|| services.iter().find(|s| str_of(s, "preDeployCommand")))
    else {
        return Ok(None);
    };
    let raw = svc
        .get("preDeployCommand")
        .and_then(|v| v.as_str())
        .unwrap_or_default();
    let name = svc.get("name").and_then(|v| v.as_str()).unwrap_or("?");
    let workdir = match svc.get("rootDir").and_then(|v| v.as_str()) {
        Some(r) => rel_dir(r, &path, "rootDir")?,
        None => None,
    };
    let origin = at(
        "render.yaml",
        &text,
        raw.lines().next().unwrap_or(raw),
        &format!("service `{name}` preDeployCommand"),
    );
    command(raw, origin, &path, workdir).map(Some)
}

/// `railway.json` (else `railway.toml`, as Railway reads them): `deploy.preDeployCommand`, a
/// command string or a list of them (run in order, the first failure stopping the release).
fn railway(dir: &Path) -> Result<Option<ReleaseCommand>, EntryError> {
    let Some(super::railway::RailwayConfig {
        file,
        path,
        text,
        doc,
    }) = super::railway::read_config(dir)?
    else {
        return Ok(None);
    };
    let wrong = || EntryError::Parse {
        file: path.clone(),
        message: "deploy.preDeployCommand: expected a command string or a list of command strings"
            .into(),
    };
    let raw = match doc.pointer("/deploy/preDeployCommand") {
        None | Some(serde_json::Value::Null) => return Ok(None),
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(serde_json::Value::Array(list)) => {
            let cmds = list
                .iter()
                .map(|c| c.as_str().map(str::trim).ok_or_else(wrong))
                .collect::<Result<Vec<_>, _>>()?;
            let cmds: Vec<&str> = cmds.into_iter().filter(|c| !c.is_empty()).collect();
            match cmds.as_slice() {
                [] => return Ok(None),
                [one] => one.to_string(),
                // One after the other, as Railway runs them; a failure stops the release.
                many => many
                    .iter()
                    .map(|c| format!("( {c} )"))
                    .collect::<Vec<_>>()
                    .join(" && "),
            }
        }
        Some(_) => return Err(wrong()),
    };
    if raw.trim().is_empty() {
        return Ok(None);
    }
    let origin = at(file, &text, "preDeployCommand", "deploy.preDeployCommand");
    command(&raw, origin, &path, None).map(Some)
}

/// `app.json`: `scripts.postdeploy`, a command string or an object with a `command`.
fn appjson(dir: &Path) -> Result<Option<ReleaseCommand>, EntryError> {
    let path = dir.join("app.json");
    let Some(text) = read_optional(&path)? else {
        return Ok(None);
    };
    let doc: serde_json::Value = serde_json::from_str(&text).map_err(|e| EntryError::Parse {
        file: path.clone(),
        message: format!("{e} (expected an app.json manifest object)"),
    })?;
    let raw = match doc.pointer("/scripts/postdeploy") {
        None | Some(serde_json::Value::Null) => return Ok(None),
        Some(serde_json::Value::String(s)) => s.as_str(),
        Some(v) => v
            .get("command")
            .and_then(|c| c.as_str())
            .ok_or_else(|| EntryError::Parse {
                file: path.clone(),
                message: "scripts.postdeploy: expected a command string or an object with a `command` string".into(),
            })?,
    };
    let origin = at("app.json", &text, "\"postdeploy\"", "scripts.postdeploy");
    command(raw, origin, &path, None).map(Some)
}

/// `fly.toml`: `[deploy] release_command`.
fn fly(dir: &Path) -> Result<Option<ReleaseCommand>, EntryError> {
    let path = dir.join("fly.toml");
    let Some(text) = read_optional(&path)? else {
        return Ok(None);
    };
    let t: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| EntryError::Parse {
            file: path.clone(),
            message: e.to_string(),
        })?;
    let raw = match t.get("deploy").and_then(|d| d.get("release_command")) {
        None => return Ok(None),
        Some(toml::Value::String(s)) => s.as_str(),
        Some(_) => {
            return Err(EntryError::Parse {
                file: path,
                message: "[deploy] release_command: expected a command string".into(),
            });
        }
    };
    let origin = match toml_key_line(&text, "deploy", "release_command") {
        Some(n) => format!("fly.toml line {n} ([deploy] release_command)"),
        None => "fly.toml ([deploy] release_command)".to_string(),
    };
    command(raw, origin, &path, None).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repo(files: &[(&str, &str)]) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        for (name, body) in files {
            std::fs::write(d.path().join(name), body).unwrap();
        }
        d
    }

    fn release(files: &[(&str, &str)]) -> Option<ReleaseCommand> {
        scan(repo(files).path()).unwrap()
    }

    #[test]
    fn procfile_release_line_with_its_line_number() {
        let r = release(&[(
            "Procfile",
            "web: gunicorn app:app\nrelease: python manage.py migrate --no-input\n",
        )])
        .unwrap();
        assert_eq!(r.argv, ["python", "manage.py", "migrate", "--no-input"]);
        assert_eq!(r.origin, "Procfile line 2 (release)");
        assert_eq!(r.workdir, None);
        assert_eq!(r.dir(), "/app");
    }

    #[test]
    fn procfile_release_that_needs_a_shell_runs_under_sh() {
        let r = release(&[("Procfile", "release: ./migrate.sh && echo done > /tmp/m\n")]).unwrap();
        assert_eq!(r.argv[..2], ["sh", "-c"]);
        assert_eq!(r.argv[2], "./migrate.sh && echo done > /tmp/m");
    }

    #[test]
    fn fly_release_command() {
        let r = release(&[(
            "fly.toml",
            "app = \"x\"\n\n[deploy]\n  release_command = \"poetry run python manage.py migrate\"\n",
        )])
        .unwrap();
        assert_eq!(r.argv, ["python", "manage.py", "migrate"], "runner dropped");
        assert_eq!(r.origin, "fly.toml line 4 ([deploy] release_command)");
    }

    #[test]
    fn fly_release_command_of_the_wrong_type_is_an_error_naming_the_key() {
        let d = repo(&[("fly.toml", "[deploy]\nrelease_command = 3\n")]);
        let e = scan(d.path()).unwrap_err().to_string();
        assert!(
            e.contains("fly.toml") && e.contains("release_command"),
            "{e}"
        );
    }

    #[test]
    fn render_pre_deploy_command_of_the_started_service_with_its_root_dir() {
        let r = release(&[(
            "render.yaml",
            "services:\n  - type: worker\n    name: jobs\n    startCommand: celery worker\n    preDeployCommand: ./jobs-only\n  - type: web\n    name: api\n    rootDir: backend\n    startCommand: gunicorn app:app\n    preDeployCommand: python manage.py migrate\n",
        )])
        .unwrap();
        assert_eq!(r.argv, ["python", "manage.py", "migrate"]);
        assert_eq!(r.workdir.as_deref(), Some("backend"));
        assert_eq!(r.dir(), "/app/backend");
        assert_eq!(
            r.origin,
            "render.yaml line 10 (service `api` preDeployCommand)"
        );
    }

    #[test]
    fn app_json_postdeploy_as_string_or_object() {
        let r = release(&[(
            "app.json",
            "{\n  \"name\": \"x\",\n  \"scripts\": {\n    \"postdeploy\": \"python seed.py\"\n  }\n}\n",
        )])
        .unwrap();
        assert_eq!(r.argv, ["python", "seed.py"]);
        assert_eq!(r.origin, "app.json line 4 (scripts.postdeploy)");
        let r = release(&[(
            "app.json",
            r#"{"scripts": {"postdeploy": {"command": "python seed.py --once", "size": "basic"}}}"#,
        )])
        .unwrap();
        assert_eq!(r.argv, ["python", "seed.py", "--once"]);
        let d = repo(&[("app.json", r#"{"scripts": {"postdeploy": ["a"]}}"#)]);
        let e = scan(d.path()).unwrap_err().to_string();
        assert!(e.contains("scripts.postdeploy"), "{e}");
    }

    #[test]
    fn railway_pre_deploy_command_from_json_or_toml() {
        let r = release(&[(
            "railway.json",
            "{\n  \"deploy\": {\n    \"startCommand\": \"gunicorn app:app\",\n    \"preDeployCommand\": \"python manage.py migrate\"\n  }\n}\n",
        )])
        .unwrap();
        assert_eq!(r.argv, ["python", "manage.py", "migrate"]);
        assert_eq!(r.origin, "railway.json line 4 (deploy.preDeployCommand)");
        assert_eq!(r.workdir, None);
        let r = release(&[(
            "railway.toml",
            "[deploy]\nstartCommand = \"gunicorn app:app\"\npreDeployCommand = \"python seed.py\"\n",
        )])
        .unwrap();
        assert_eq!(r.argv, ["python", "seed.py"]);
        assert_eq!(r.origin, "railway.toml line 3 (deploy.preDeployCommand)");
        // railway.json wins over railway.toml, as Railway reads it first.
        let r = release(&[
            (
                "railway.json",
                r#"{"deploy": {"preDeployCommand": ["python from_json.py"]}}"#,
            ),
            (
                "railway.toml",
                "[deploy]\npreDeployCommand = \"python from_toml.py\"\n",
            ),
        ])
        .unwrap();
        assert_eq!(r.argv, ["python", "from_json.py"], "a one-command list");
    }

    #[test]
    fn railway_pre_deploy_commands_in_a_list_run_in_order_under_sh() {
        let r = release(&[(
            "railway.json",
            r#"{"deploy": {"preDeployCommand": ["python manage.py migrate", "", "python seed.py"]}}"#,
        )])
        .unwrap();
        assert_eq!(
            r.argv,
            [
                "sh",
                "-c",
                "( python manage.py migrate ) && ( python seed.py )"
            ]
        );
        for bad in [
            r#"{"deploy": {"preDeployCommand": 3}}"#,
            r#"{"deploy": {"preDeployCommand": ["ok", 3]}}"#,
        ] {
            let d = repo(&[("railway.json", bad)]);
            let e = scan(d.path()).unwrap_err().to_string();
            assert!(
                e.contains("railway.json") && e.contains("deploy.preDeployCommand"),
                "{e}"
            );
        }
        // No command, an empty one or an empty list: no release step.
        for none in [
            r#"{"deploy": {"startCommand": "gunicorn app:app"}}"#,
            r#"{"deploy": {"preDeployCommand": ""}}"#,
            r#"{"deploy": {"preDeployCommand": []}}"#,
            r#"{"deploy": {"preDeployCommand": null}}"#,
        ] {
            assert_eq!(release(&[("railway.json", none)]), None, "{none}");
        }
    }

    #[test]
    fn precedence_follows_the_start_command_sources() {
        let procfile = (
            "Procfile",
            "web: python app.py\nrelease: python from_procfile.py\n",
        );
        let render = (
            "render.yaml",
            "services:\n  - type: web\n    name: w\n    startCommand: python app.py\n    preDeployCommand: python from_render.py\n",
        );
        let appjson = (
            "app.json",
            r#"{"scripts": {"postdeploy": "python from_appjson.py"}}"#,
        );
        let fly = (
            "fly.toml",
            "[deploy]\nrelease_command = \"python from_fly.py\"\n",
        );
        let railway = (
            "railway.json",
            r#"{"deploy": {"preDeployCommand": "python from_railway.py"}}"#,
        );
        let first = |files: &[(&str, &str)]| release(files).unwrap().argv[1].clone();
        assert_eq!(
            first(&[fly, appjson, railway, render, procfile]),
            "from_procfile.py"
        );
        assert_eq!(first(&[fly, appjson, railway, render]), "from_render.py");
        assert_eq!(first(&[fly, appjson, railway]), "from_railway.py");
        assert_eq!(first(&[fly, appjson]), "from_appjson.py");
        assert_eq!(first(&[fly]), "from_fly.py");
        // A Procfile without a release line does not stop the search.
        assert_eq!(
            first(&[fly, ("Procfile", "web: python app.py\n")]),
            "from_fly.py"
        );
    }

    #[test]
    fn no_release_step_anywhere() {
        assert_eq!(
            release(&[
                ("Procfile", "web: python app.py\n"),
                ("fly.toml", "[deploy]\nstrategy = \"rolling\"\n"),
                ("app.json", r#"{"scripts": {"postdeploy": null}}"#),
            ]),
            None
        );
        assert_eq!(release(&[]), None);
    }
}
