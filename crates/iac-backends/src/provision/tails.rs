//! Saving the last lines of a container's log before a provisioner removes it (replaced,
//! repaired, removed from the repos file, destroyed) into the [`Events`] sink's log tails for the
//! deployment history. Shared by the docker provisioner (`docker/tails.rs`, per observed
//! container) and the terraform one (the containers its outputs name, read before Terraform
//! destroys them); Swarm reads a service's log instead (`swarm/tails.rs`). Only when the sink
//! collects tails; a log that cannot be read is a warning, never a failed removal.

use std::time::Duration;

use iac_core::history::{LOG_TAIL_BYTES, LOG_TAIL_LINES, LogTail};
use iac_core::{Events, ServiceName, Stage};

use crate::engine::Engine;

/// Longest wait for one container's log.
pub const TAIL_TIMEOUT: Duration = Duration::from_secs(5);

/// One container whose log is saved.
pub struct TailOf<'a> {
    /// Its id, or its name (the engine takes either).
    pub id: &'a str,
    /// Its name, as saved and shown.
    pub name: &'a str,
    /// The iac service it belongs to.
    pub service: &'a str,
    /// `app` or `sidecar`.
    pub role: &'a str,
}

/// Reads the log tail of container `c` and saves it with `reason`; a warning when it cannot
/// be read. Nothing at all when `events` does not collect tails.
pub async fn save_container_tail(
    engine: &dyn Engine,
    c: &TailOf<'_>,
    reason: &str,
    events: &Events,
) {
    if !events.wants_log_tails() {
        return;
    }
    let ev = match ServiceName::new(c.service) {
        Ok(s) => events.for_service(&s),
        Err(_) => events.clone(),
    };
    // One line more than is kept: more than LOG_TAIL_LINES back means some were cut.
    let read = engine.log_tail(c.id, LOG_TAIL_LINES + 1, LOG_TAIL_BYTES + 1);
    match tokio::time::timeout(TAIL_TIMEOUT, read).await {
        Ok(Ok(text)) => {
            let (lines, truncated) = LogTail::cap(&text);
            ev.debug(
                Stage::Provision,
                format!("saved the last {} log line(s) of {}", lines.len(), c.name),
            );
            ev.save_log_tail(LogTail {
                service: c.service.to_string(),
                container: c.name.to_string(),
                role: c.role.to_string(),
                reason: reason.to_string(),
                saved_at: iac_core::event::now_rfc3339(),
                lines,
                truncated,
            });
        }
        Ok(Err(e)) => ev.warn(
            Stage::Provision,
            format!("could not save the last log lines of {}: {e}", c.name),
        ),
        Err(_) => ev.warn(
            Stage::Provision,
            format!(
                "could not save the last log lines of {}: no answer within {}s",
                c.name,
                TAIL_TIMEOUT.as_secs()
            ),
        ),
    }
}
