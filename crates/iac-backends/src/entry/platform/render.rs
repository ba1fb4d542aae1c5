//! Render blueprint `render.yaml`: the first `web` service (else the first service) with a
//! `startCommand` (or `dockerCommand`); its `buildCommand` becomes a build step; `rootDir` is the
//! working directory.

use std::path::Path;

use iac_core::EntryError;

use super::{Found, at, build_step, declared, rel_dir};
use crate::entry::read_optional;

/// Reads `render.yaml`: each service's `startCommand`; nothing when the file is absent.
pub fn scan(dir: &Path) -> Result<Found, EntryError> {
    let path = dir.join("render.yaml");
    let Some(text) = read_optional(&path)? else {
        return Ok(Found::nothing("render.yaml: there is no render.yaml"));
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
    let has_start = |s: &&yaml_serde::Value| {
        s.get("startCommand").and_then(|v| v.as_str()).is_some()
            || s.get("dockerCommand").and_then(|v| v.as_str()).is_some()
    };
    let is_web = |s: &&yaml_serde::Value| s.get("type").and_then(|v| v.as_str()) == Some("web");
    let Some(svc) = services
        .iter()
        .find(|s| is_web(s) && has_start(s))
        .or_else(|| services.iter().find(|s| has_start(s)))
    else {
        return Ok(Found::nothing(
            "render.yaml: no service has a `startCommand`",
        ));
    };
    let name = svc.get("name").and_then(|v| v.as_str()).unwrap_or("?");
    let workdir = match svc.get("rootDir").and_then(|v| v.as_str()) {
        Some(r) => rel_dir(r, &path, "rootDir")?,
        None => None,
    };
    let (key, raw) = match svc.get("startCommand").and_then(|v| v.as_str()) {
        Some(c) => ("startCommand", c),
        None => (
            "dockerCommand",
            svc.get("dockerCommand")
                .and_then(|v| v.as_str())
                .unwrap_or(""),
        ),
    };
    let origin = at(
        "render.yaml",
        &text,
        raw.lines().next().unwrap_or(raw),
        &format!("service `{name}` {key}"),
    );
    let d = declared(
        "platform:render",
        "Render",
        origin,
        raw,
        &path,
        workdir.clone(),
        // Render routes web services to $PORT.
        Some(iac_core::DEFAULT_APP_PORT),
    )?;
    let mut build_steps = Vec::new();
    if let Some(b) = svc.get("buildCommand").and_then(|v| v.as_str()) {
        let origin = at(
            "render.yaml",
            &text,
            b.lines().next().unwrap_or(b),
            &format!("service `{name}` buildCommand"),
        );
        build_steps.extend(build_step(b, origin, &path, workdir)?);
    }
    Ok(Found {
        starts: vec![d],
        build_steps,
        looked: None,
        overrides_dockerfile: false,
    })
}
