//! Heroku/Dokku `app.json`: `formation.web.command` (else the first formation entry with a
//! `command`), else `scripts.start` / `scripts.web`. `scripts.postdeploy`, `scripts.dokku.*` and
//! `pr-predestroy` are not start commands (`scripts.postdeploy` is the release step
//! [`super::release`] reads).

use std::path::Path;

use iac_core::EntryError;

use super::{Found, at, declared};
use crate::entry::read_optional;

/// Reads `app.json` (Heroku): `formation.*.command`, else `scripts.start`/`scripts.web`; nothing when absent.
pub fn scan(dir: &Path) -> Result<Found, EntryError> {
    let path = dir.join("app.json");
    let Some(text) = read_optional(&path)? else {
        return Ok(Found::nothing("app.json: there is no app.json"));
    };
    let doc: serde_json::Value = serde_json::from_str(&text).map_err(|e| EntryError::Parse {
        file: path.clone(),
        message: format!("{e} (expected an app.json manifest object)"),
    })?;
    let formation = doc.get("formation").and_then(|f| f.as_object());
    let from_formation = formation.and_then(|f| {
        f.get("web")
            .and_then(|w| w.get("command"))
            .and_then(|c| c.as_str())
            .map(|c| ("web".to_string(), c))
            .or_else(|| {
                f.iter().find_map(|(k, v)| {
                    v.get("command")
                        .and_then(|c| c.as_str())
                        .map(|c| (k.clone(), c))
                })
            })
    });
    let (origin, raw) = if let Some((name, cmd)) = from_formation {
        (
            at(
                "app.json",
                &text,
                "\"command\"",
                &format!("formation.{name}.command"),
            ),
            cmd,
        )
    } else if let Some((key, cmd)) = ["start", "web"].iter().find_map(|k| {
        doc.pointer(&format!("/scripts/{k}"))
            .and_then(|c| c.as_str())
            .map(|c| (*k, c))
    }) {
        (
            at(
                "app.json",
                &text,
                &format!("\"{key}\""),
                &format!("scripts.{key}"),
            ),
            cmd,
        )
    } else {
        return Ok(Found::nothing(
            "app.json: no `formation.*.command` and no `scripts.start`/`scripts.web` (its formation only sizes the Procfile's processes)",
        ));
    };
    let d = declared(
        "platform:app.json",
        "Heroku app.json",
        origin,
        raw,
        &path,
        None,
        None,
    )?;
    Ok(Found {
        starts: vec![d],
        ..Found::default()
    })
}
