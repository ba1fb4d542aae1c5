//! Railway config-as-code: `railway.json` (or `railway.toml`) `deploy.startCommand`; its
//! `build.buildCommand` becomes a build step. `deploy.preDeployCommand` is a release step, read by
//! [`super::release`].

use std::path::Path;

use iac_core::EntryError;

use super::{Found, at, build_step, declared};
use crate::entry::read_optional;

/// A repo's Railway config as Railway reads it: `railway.json`, else `railway.toml`.
pub(crate) struct RailwayConfig {
    /// `railway.json` or `railway.toml`.
    pub file: &'static str,
    /// Its path.
    pub path: std::path::PathBuf,
    /// Its text (for line numbers).
    pub text: String,
    /// Its document, TOML turned into the JSON shape.
    pub doc: serde_json::Value,
}

/// Reads `railway.json` (else `railway.toml`); `None` when neither exists.
pub(crate) fn read_config(dir: &Path) -> Result<Option<RailwayConfig>, EntryError> {
    let json_path = dir.join("railway.json");
    let toml_path = dir.join("railway.toml");
    if let Some(text) = read_optional(&json_path)? {
        let doc = serde_json::from_str(&text).map_err(|e| EntryError::Parse {
            file: json_path.clone(),
            message: format!("{e} (expected a JSON object with `deploy`/`build`)"),
        })?;
        return Ok(Some(RailwayConfig {
            file: "railway.json",
            path: json_path,
            text,
            doc,
        }));
    }
    let Some(text) = read_optional(&toml_path)? else {
        return Ok(None);
    };
    let t: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| EntryError::Parse {
            file: toml_path.clone(),
            message: e.to_string(),
        })?;
    let doc = serde_json::to_value(t).map_err(|e| EntryError::Parse {
        file: toml_path.clone(),
        message: e.to_string(),
    })?;
    Ok(Some(RailwayConfig {
        file: "railway.toml",
        path: toml_path,
        text,
        doc,
    }))
}

/// Reads `railway.json` or `railway.toml`: `deploy.startCommand`; nothing when neither exists.
pub fn scan(dir: &Path) -> Result<Found, EntryError> {
    let Some(RailwayConfig {
        file,
        path,
        text,
        doc,
    }) = read_config(dir)?
    else {
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
