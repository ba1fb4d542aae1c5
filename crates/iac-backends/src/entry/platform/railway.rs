//! Railway config-as-code: `railway.json` (or `railway.toml`) `deploy.startCommand`; its
//! `build.buildCommand` becomes a build step. `deploy.preDeployCommand` is a release step, read by
//! [`super::release`].

use std::path::Path;

use iac_core::EntryError;

use super::{Found, at, build_step, declared};
use crate::entry::read_optional;

/// Reads `railway.json` or `railway.toml`: `deploy.startCommand`; nothing when neither exists.
pub fn scan(dir: &Path) -> Result<Found, EntryError> {
    let json_path = dir.join("railway.json");
    let toml_path = dir.join("railway.toml");
    let (file, path, text, doc): (&str, _, String, serde_json::Value) =
        if let Some(text) = read_optional(&json_path)? {
            let v = serde_json::from_str(&text).map_err(|e| EntryError::Parse {
                file: json_path.clone(),
                message: format!("{e} (expected a JSON object with `deploy`/`build`)"),
            })?;
            ("railway.json", json_path, text, v)
        } else if let Some(text) = read_optional(&toml_path)? {
            let t: toml::Table = text
                .parse()
                .map_err(|e: toml::de::Error| EntryError::Parse {
                    file: toml_path.clone(),
                    message: e.to_string(),
                })?;
            let v = serde_json::to_value(t).map_err(|e| EntryError::Parse {
                file: toml_path.clone(),
                message: e.to_string(),
            })?;
            ("railway.toml", toml_path, text, v)
        } else {
            return Ok(Found::nothing(
                "railway.json/railway.toml: there is neither",
            ));
        };
    let mut build_steps = Vec::new();
    if let Some(b) = doc.pointer("/build/buildCommand").and_then(|v| v.as_str()) {
        let origin = at(file, &text, "buildCommand", "build.buildCommand");
        build_steps.extend(build_step(b, origin, &path, None)?);
    }
    let Some(start) = doc.pointer("/deploy/startCommand").and_then(|v| v.as_str()) else {
        return Ok(Found {
            build_steps,
            looked: Some(format!("{file}: it has no `deploy.startCommand`")),
            ..Found::default()
        });
    };
    let origin = at(file, &text, "startCommand", "deploy.startCommand");
    // Railway injects PORT and routes to it.
    let d = declared(
        "platform:railway",
        "Railway",
        origin,
        start,
        &path,
        None,
        Some(iac_core::DEFAULT_APP_PORT),
    )?;
    Ok(Found {
        starts: vec![d],
        build_steps,
        looked: None,
        overrides_dockerfile: false,
    })
}
