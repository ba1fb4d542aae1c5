//! The restart record kept across restarts of the app's *container* (`--restart-state PATH`,
//! set by iac on Docker pods): the restart count, the crash series and the last exit, as a small
//! JSON file the agent (root, PID 1) writes whole (temp file + rename) into a root-only
//! directory of the container's own writable layer.
//!
//! Why there: a container restart (`docker restart`, the engine's `unless-stopped` after a
//! crash of PID 1 or a reboot, the agent ending its container when the sidecar's namespace is
//! replaced) keeps the container's filesystem, while a new container — a new pod, from a
//! replace or a repair — starts without the file, at zero, as a new Kubernetes pod does. The
//! app runs as another user and cannot write the directory. Nothing outside the container
//! (no volume, no host path) has to be created or cleaned up.
//!
//! When the agent starts and finds a record, the app it starts is a restart: the count goes up
//! by one, and the last exit is the one the previous agent saw (how the app ended when its
//! container stopped). A record that cannot be read is reported and ignored (counting starts
//! over); one that cannot be written is reported, and the counts then last as long as the
//! container.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::state::ChildState;

/// What the file holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Saved {
    /// Restarts of the app so far (its starts after the first, in this container).
    pub restarts: u32,
    /// Crashes in the current back-off series.
    pub series: u32,
    /// How the last run that ended, ended.
    pub last_exit: Option<SavedExit>,
}

/// How the last run ended (`restart::LastExit`), with wall-clock times as milliseconds since
/// the epoch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedExit {
    /// Its final state.
    pub state: ChildState,
    /// When it ended.
    pub at_ms: u64,
    /// How long it had run.
    pub ran_ms: u64,
}

/// The record at `path`: `Ok(None)` when there is none (the container's first start), an
/// error naming the file when it cannot be read or parsed.
pub fn load(path: &Path) -> Result<Option<Saved>, String> {
    let text = match std::fs::read(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(format!(
                "cannot read the restart record {}: {e}",
                path.display()
            ));
        }
    };
    serde_json::from_slice(&text).map(Some).map_err(|e| {
        format!(
            "the restart record {} is not what this agent writes ({e}); counting restarts from zero",
            path.display()
        )
    })
}

/// Writes `saved` to `path` whole: its directory created 0700, a temp file (0600) beside it
/// written and synced, then renamed over the old record.
pub fn save(path: &Path, saved: &Saved) -> Result<(), String> {
    let err =
        |e: std::io::Error| format!("cannot write the restart record {}: {e}", path.display());
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(err)?;
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        path.file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("restarts"),
        std::process::id()
    ));
    let body = serde_json::to_vec(saved).expect("plain data serializes");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(err)?;
    f.write_all(&body)
        .and_then(|()| f.sync_all())
        .map_err(err)?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        err(e)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_is_written_whole_and_read_back() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("state/restarts.json");
        assert_eq!(
            load(&path).unwrap(),
            None,
            "no record before the first save"
        );
        let saved = Saved {
            restarts: 3,
            series: 2,
            last_exit: Some(SavedExit {
                state: ChildState::Signaled { signal: 9 },
                at_ms: 1_700_000_000_123,
                ran_ms: 4_500,
            }),
        };
        save(&path, &saved).unwrap();
        assert_eq!(load(&path).unwrap(), Some(saved.clone()));
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(path.parent().unwrap()), 0o700);
        assert_eq!(mode(&path), 0o600);
        let names: Vec<_> = std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["restarts.json"], "no temp file left");
        // Something else at the path: an error naming it.
        std::fs::write(&path, b"{not json").unwrap();
        let e = load(&path).unwrap_err();
        assert!(
            e.contains(&path.display().to_string()) && e.contains("from zero"),
            "{e}"
        );
    }
}
