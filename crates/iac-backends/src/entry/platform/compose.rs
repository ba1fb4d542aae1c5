//! Docker Compose: the `command` (with `entrypoint`) of the service that builds the repo itself
//! (`build: .`, `build: {context: .}`; else the only service with a `build`). A service without
//! `command` runs its Dockerfile's CMD, read from `build.dockerfile` when it names another file.
//! Files tried: `compose.yaml`, `compose.yml`, `docker-compose.yaml`, `docker-compose.yml`.
//! `ports: ["HOST:CONTAINER"]` gives the port when the command says none; `working_dir` maps onto
//! the repo like a Dockerfile WORKDIR when it is the Dockerfile's copy of the repo. A `command` for
//! a service that builds the repo's own `./Dockerfile` replaces that Dockerfile's CMD
//! ([`Found::overrides_dockerfile`]), as compose runs it.

use std::path::Path;

use iac_core::EntryError;

use super::dockerfile::from_dockerfile;
use super::{Found, at, declared, rel_dir};
use crate::entry::read_optional;
use iac_core::shell::sh_join;

const FILES: &[&str] = &[
    "compose.yaml",
    "compose.yml",
    "docker-compose.yaml",
    "docker-compose.yml",
];

/// A compose `command`/`entrypoint` value as one command line (lists are quoted word by word).
fn as_line(v: &yaml_serde::Value) -> Option<String> {
    match v {
        yaml_serde::Value::String(s) => Some(s.clone()),
        yaml_serde::Value::Sequence(items) => {
            let words: Option<Vec<String>> = items
                .iter()
                .map(|i| match i {
                    yaml_serde::Value::String(s) => Some(s.clone()),
                    yaml_serde::Value::Number(n) => Some(n.to_string()),
                    _ => None,
                })
                .collect();
            Some(sh_join(&words?))
        }
        _ => None,
    }
}

fn container_port(svc: &yaml_serde::Value) -> Option<u16> {
    let first = svc.get("ports")?.as_sequence()?.first()?;
    let s = match first {
        yaml_serde::Value::String(s) => s.clone(),
        yaml_serde::Value::Number(n) => n.to_string(),
        m @ yaml_serde::Value::Mapping(_) => {
            return m
                .get("target")?
                .as_u64()
                .and_then(|p| u16::try_from(p).ok());
        }
        _ => return None,
    };
    s.rsplit(':').next()?.split('/').next()?.parse().ok()
}

/// Reads the first compose file present: each service's `command`; nothing when there is none.
pub fn scan(dir: &Path) -> Result<Found, EntryError> {
    let Some((file, text)) = FILES
        .iter()
        .map(|f| read_optional(&dir.join(f)).map(|t| t.map(|t| (*f, t))))
        .collect::<Result<Vec<_>, _>>()?
        .into_iter()
        .flatten()
        .next()
    else {
        return Ok(Found::nothing(
            "compose: there is no compose.yaml / docker-compose.yml",
        ));
    };
    let path = dir.join(file);
    let doc: yaml_serde::Value = yaml_serde::from_str(&text).map_err(|e| EntryError::Parse {
        file: path.clone(),
        message: format!("{e} (expected a compose file with `services:`)"),
    })?;
    let Some(services) = doc.get("services").and_then(|s| s.as_mapping()) else {
        return Ok(Found::nothing(format!("{file}: it has no `services:`")));
    };
    let context_of = |svc: &yaml_serde::Value| -> Option<String> {
        match svc.get("build")? {
            yaml_serde::Value::String(s) => Some(s.clone()),
            m => Some(
                m.get("context")
                    .and_then(|c| c.as_str())
                    .unwrap_or(".")
                    .to_string(),
            ),
        }
    };
    let builders: Vec<(String, &yaml_serde::Value, String)> = services
        .iter()
        .filter_map(|(k, v)| {
            let ctx = context_of(v)?;
            Some((k.as_str()?.to_string(), v, ctx))
        })
        .collect();
    let root = |c: &str| matches!(c.trim_end_matches('/'), "." | "" | "./");
    let chosen = builders
        .iter()
        .find(|(_, _, c)| root(c))
        .or_else(|| (builders.len() == 1).then(|| &builders[0]));
    let Some((name, svc, ctx)) = chosen else {
        return Ok(Found::nothing(format!(
            "{file}: no service builds the repo (`build: .`)"
        )));
    };
    let context = rel_dir(ctx, &path, &format!("services.{name}.build context"))?;
    let port = container_port(svc);
    let command = svc.get("command").and_then(as_line);
    let entrypoint = svc.get("entrypoint").and_then(as_line);
    if command.is_none() && entrypoint.is_none() {
        // The service runs its Dockerfile's CMD; read it when it is not ./Dockerfile (which the
        // Dockerfile source already reads).
        let df = svc
            .get("build")
            .and_then(|b| b.get("dockerfile"))
            .and_then(|d| d.as_str())
            .unwrap_or("Dockerfile");
        let rel = match &context {
            Some(c) => format!("{c}/{df}"),
            None => df.to_string(),
        };
        if rel != "Dockerfile" && rel_dir(&rel, &path, "dockerfile").is_ok() {
            return Ok(
                match from_dockerfile(dir, &rel, "platform:compose", "Docker Compose")? {
                    Ok(mut d) => {
                        d.origin = format!("{file} service `{name}` → {}", d.origin);
                        if d.port.is_none() {
                            d.port = port;
                        }
                        Found {
                            starts: vec![d],
                            ..Found::default()
                        }
                    }
                    Err(looked) => Found::nothing(format!("{file} service `{name}`: {looked}")),
                },
            );
        }
        return Ok(Found::nothing(format!(
            "{file}: service `{name}` has no `command` (it runs the Dockerfile's CMD)"
        )));
    }
    // Compose turns `$$` into a literal `$` (what the container's shell then sees).
    let (entrypoint, command) = (
        entrypoint.map(|e| e.replace("$$", "$")),
        command.map(|c| c.replace("$$", "$")),
    );
    let line = match (&entrypoint, &command) {
        (Some(e), Some(c)) => format!("{e} {c}"),
        (Some(e), None) => e.clone(),
        (None, Some(c)) => c.clone(),
        (None, None) => unreachable!("checked above"),
    };
    let key = if command.is_some() {
        "command"
    } else {
        "entrypoint"
    };
    let origin = at(
        file,
        &text,
        &format!("{key}:"),
        &format!("service `{name}` {key}"),
    );
    let mut d = declared(
        "platform:compose",
        "Docker Compose",
        origin,
        &line,
        &path,
        context.clone(),
        port,
    )?;
    if d.port.is_none() {
        d.port = port;
    }
    // The service builds the repo's own ./Dockerfile: its command replaces that CMD.
    let dockerfile = svc
        .get("build")
        .and_then(|b| b.get("dockerfile"))
        .and_then(|d| d.as_str())
        .unwrap_or("Dockerfile");
    let own = context.is_none() && matches!(dockerfile.trim_start_matches("./"), "Dockerfile");
    Ok(Found {
        starts: vec![d],
        overrides_dockerfile: own && dir.join("Dockerfile").is_file(),
        ..Found::default()
    })
}
