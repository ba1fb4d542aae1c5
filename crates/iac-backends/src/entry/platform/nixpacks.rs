//! nixpacks `nixpacks.toml`: `[start] cmd`; `[phases.build] cmds` (or the older `[build] cmds`)
//! become build steps (`"..."`, nixpacks' "the provider's defaults", is skipped).

use std::path::Path;

use iac_core::EntryError;

use super::{Found, at, build_step, declared};
use crate::entry::read_optional;

/// Reads `nixpacks.toml`: its `[start] cmd`; nothing when the file is absent.
pub fn scan(dir: &Path) -> Result<Found, EntryError> {
    let path = dir.join("nixpacks.toml");
    let Some(text) = read_optional(&path)? else {
        return Ok(Found::nothing("nixpacks.toml: there is no nixpacks.toml"));
    };
    let t: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| EntryError::Parse {
            file: path.clone(),
            message: e.to_string(),
        })?;
    let mut build_steps = Vec::new();
    let cmds = t
        .get("phases")
        .and_then(|p| p.get("build"))
        .and_then(|b| b.get("cmds"))
        .or_else(|| t.get("build").and_then(|b| b.get("cmds")));
    if let Some(cmds) = cmds.and_then(|c| c.as_array()) {
        for c in cmds
            .iter()
            .filter_map(|c| c.as_str())
            .filter(|c| *c != "...")
        {
            let origin = at("nixpacks.toml", &text, c, "build cmds");
            build_steps.extend(build_step(c, origin, &path, None)?);
        }
    }
    let Some(cmd) = t
        .get("start")
        .and_then(|s| s.get("cmd"))
        .and_then(|c| c.as_str())
    else {
        return Ok(Found {
            build_steps,
            looked: Some("nixpacks.toml: it has no `[start] cmd`".to_string()),
            ..Found::default()
        });
    };
    let origin = at("nixpacks.toml", &text, "cmd", "[start] cmd");
    let d = declared(
        "platform:nixpacks",
        "nixpacks",
        origin,
        cmd,
        &path,
        None,
        None,
    )?;
    Ok(Found {
        starts: vec![d],
        build_steps,
        looked: None,
        overrides_dockerfile: false,
    })
}
