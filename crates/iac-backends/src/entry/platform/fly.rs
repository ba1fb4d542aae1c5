//! Fly.io `fly.toml`: `[processes]` (`app`, else `web`, else the first), else
//! `[experimental] cmd` (string or list). `[http_service] internal_port` (or the first
//! `[[services]] internal_port`) is the port the app listens on. `[deploy] release_command` is a
//! release step, read by [`super::release`]. A fly.toml without a command runs the Dockerfile's CMD, which the
//! Dockerfile source reads.

use std::path::Path;

use iac_core::EntryError;

use super::{Found, declared, line_of};
use crate::entry::read_optional;
use iac_core::shell::sh_join;

/// The port fly routes to, when fly.toml says.
pub fn internal_port(dir: &Path) -> Result<Option<u16>, EntryError> {
    let path = dir.join("fly.toml");
    let Some(text) = read_optional(&path)? else {
        return Ok(None);
    };
    let t = parse(&text, &path)?;
    let port = t
        .get("http_service")
        .and_then(|h| h.get("internal_port"))
        .or_else(|| {
            t.get("services")
                .and_then(|s| s.as_array())
                .and_then(|s| s.first())
                .and_then(|s| s.get("internal_port"))
        })
        .and_then(|p| p.as_integer())
        .and_then(|p| u16::try_from(p).ok());
    Ok(port)
}

fn parse(text: &str, path: &Path) -> Result<toml::Table, EntryError> {
    text.parse()
        .map_err(|e: toml::de::Error| EntryError::Parse {
            file: path.to_path_buf(),
            message: e.to_string(),
        })
}

/// Reads `fly.toml`: its process command and `internal_port`; nothing when the file is absent.
pub fn scan(dir: &Path) -> Result<Found, EntryError> {
    let path = dir.join("fly.toml");
    let Some(text) = read_optional(&path)? else {
        return Ok(Found::nothing("fly.toml: there is no fly.toml"));
    };
    let t = parse(&text, &path)?;
    let port = internal_port(dir)?;
    let from_processes = t.get("processes").and_then(|p| p.as_table()).and_then(|p| {
        ["app", "web"]
            .iter()
            .find_map(|k| {
                p.get(*k)
                    .and_then(|v| v.as_str())
                    .map(|v| (k.to_string(), v))
            })
            .or_else(|| {
                p.iter()
                    .find_map(|(k, v)| v.as_str().map(|v| (k.clone(), v)))
            })
    });
    let (origin_key, raw, needle): (String, String, String) = if let Some((name, cmd)) =
        from_processes
    {
        (
            format!("[processes] {name}"),
            cmd.to_string(),
            cmd.to_string(),
        )
    } else {
        match t.get("experimental").and_then(|e| e.get("cmd")) {
            Some(toml::Value::String(s)) => ("[experimental] cmd".into(), s.clone(), "cmd".into()),
            Some(toml::Value::Array(items)) => {
                let words: Option<Vec<&str>> = items.iter().map(|v| v.as_str()).collect();
                let words = words.ok_or_else(|| EntryError::Parse {
                    file: path.clone(),
                    message: "[experimental] cmd: expected a string or a list of strings"
                        .to_string(),
                })?;
                // An argv list: quote each word so the line splits back into the same argv.
                let line = sh_join(&words);
                ("[experimental] cmd".into(), line, "cmd".into())
            }
            _ => {
                return Ok(Found::nothing(
                    "fly.toml: no `[processes]` command and no `[experimental] cmd` (fly runs the Dockerfile's CMD)",
                ));
            }
        }
    };
    let origin = match line_of(&text, &needle) {
        Some(n) => format!("fly.toml line {n} ({origin_key})"),
        None => format!("fly.toml ({origin_key})"),
    };
    let d = declared("platform:fly", "Fly.io", origin, &raw, &path, None, port)?;
    Ok(Found {
        starts: vec![d],
        ..Found::default()
    })
}
