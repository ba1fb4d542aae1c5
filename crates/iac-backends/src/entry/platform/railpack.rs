//! Railpack `railpack.json`: `deploy.startCommand`; `steps.build.commands` (strings or
//! `{ "cmd": … }` objects) become build steps. `steps.install` only installs dependencies, which
//! the image build does itself.

use std::path::Path;

use iac_core::EntryError;

use super::{Found, at, build_step, declared};
use crate::entry::read_optional;

/// Reads `railpack.json`: its start command; nothing when the file is absent.
pub fn scan(dir: &Path) -> Result<Found, EntryError> {
    let path = dir.join("railpack.json");
    let Some(text) = read_optional(&path)? else {
        return Ok(Found::nothing("railpack.json: there is no railpack.json"));
    };
    let doc: serde_json::Value = serde_json::from_str(&text).map_err(|e| EntryError::Parse {
        file: path.clone(),
        message: format!("{e} (expected a Railpack config object)"),
    })?;
    let mut build_steps = Vec::new();
    if let Some(cmds) = doc
        .pointer("/steps/build/commands")
        .and_then(|c| c.as_array())
    {
        for c in cmds {
            let cmd = c.as_str().or_else(|| c.get("cmd").and_then(|v| v.as_str()));
            if let Some(cmd) = cmd.filter(|c| *c != "...") {
                let origin = at("railpack.json", &text, cmd, "steps.build.commands");
                build_steps.extend(build_step(cmd, origin, &path, None)?);
            }
        }
    }
    let Some(start) = doc.pointer("/deploy/startCommand").and_then(|v| v.as_str()) else {
        return Ok(Found {
            build_steps,
            looked: Some("railpack.json: it has no `deploy.startCommand`".to_string()),
            ..Found::default()
        });
    };
    let origin = at(
        "railpack.json",
        &text,
        "startCommand",
        "deploy.startCommand",
    );
    let d = declared(
        "platform:railpack",
        "Railpack",
        origin,
        start,
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
