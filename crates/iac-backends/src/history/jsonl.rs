//! The append-only event log of each deploy: `<dir>/<id>.events.jsonl`, one `DeployEvent` as
//! JSON per line, opened with `O_APPEND` (a line is never rewritten; a crash loses at most the
//! batch being written). The directory is 0700 and the files 0600: events name repositories,
//! images and errors.

use std::fs::{DirBuilder, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use iac_core::DeployEvent;
use iac_core::history::HistoryError;

/// The event logs under one directory.
#[derive(Debug, Clone)]
pub struct EventLog {
    dir: PathBuf,
}

impl EventLog {
    /// Event logs in `dir` (created 0700 when missing; an existing one is tightened to 0700).
    pub fn new(dir: &Path) -> Result<EventLog, HistoryError> {
        private_dir(dir)?;
        Ok(EventLog {
            dir: dir.to_path_buf(),
        })
    }

    /// The file of record `id` (ids are checked by the stores: letters, digits, `-`).
    pub fn path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.events.jsonl"))
    }

    /// Appends `events`, one JSON line each, in one write.
    pub fn append(&self, id: &str, events: &[DeployEvent]) -> Result<(), HistoryError> {
        if events.is_empty() {
            return Ok(());
        }
        let mut buf = Vec::new();
        for e in events {
            serde_json::to_writer(&mut buf, e)
                .map_err(|e| HistoryError::Backend(format!("serialize event: {e}")))?;
            buf.push(b'\n');
        }
        let path = self.path(id);
        let mut f = OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| HistoryError::Backend(format!("open {}: {e}", path.display())))?;
        f.write_all(&buf)
            .map_err(|e| HistoryError::Backend(format!("append to {}: {e}", path.display())))
    }

    /// Removes the log of a pruned record (a missing file is fine).
    pub fn remove(&self, id: &str) -> Result<(), HistoryError> {
        let path = self.path(id);
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(HistoryError::Backend(format!(
                "remove {}: {e}",
                path.display()
            ))),
        }
    }
}

/// Creates `dir` (and its parents) 0700, or tightens an existing one to 0700.
pub(crate) fn private_dir(dir: &Path) -> Result<(), HistoryError> {
    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| HistoryError::Backend(format!("create {}: {e}", dir.display())))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| HistoryError::Backend(format!("chmod 0700 {}: {e}", dir.display())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use iac_core::{EventLevel, Stage};

    fn ev(msg: &str) -> DeployEvent {
        DeployEvent {
            ts: "2026-01-01T00:00:00.000Z".into(),
            service: None,
            stage: Stage::Deploy,
            level: EventLevel::Info,
            message: msg.into(),
            traceparent: None,
        }
    }

    #[test]
    fn appends_lines_in_private_files() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("history");
        let log = EventLog::new(&dir).unwrap();
        log.append("abc", &[ev("one"), ev("two")]).unwrap();
        log.append("abc", &[ev("three")]).unwrap();
        let text = std::fs::read_to_string(log.path("abc")).unwrap();
        let msgs: Vec<String> = text
            .lines()
            .map(|l| serde_json::from_str::<DeployEvent>(l).unwrap().message)
            .collect();
        assert_eq!(msgs, ["one", "two", "three"]);
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&log.path("abc")), 0o600);
        log.remove("abc").unwrap();
        log.remove("abc").unwrap();
        assert!(!log.path("abc").exists());
    }
}
