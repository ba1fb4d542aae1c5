//! Saving the last lines of a Swarm service's logs before the provisioner replaces (rolling
//! update) or removes it (left the repos file, destroyed), into the [`Events`] sink's log tails
//! for the deployment history — what the docker provisioner does per container
//! (`provision/docker/tails.rs`). A Swarm task is one container running the agent, the app and
//! Envoy, so one tail per service holds both (`role` "pod"), read with the engine's service
//! logs (every task's, the newest lines). Only when the sink collects them; a log that cannot be
//! read is a warning, never a failed removal.

use std::time::Duration;

use iac_core::history::{LOG_TAIL_BYTES, LOG_TAIL_LINES, LogTail};
use iac_core::{Events, ServiceName, Stage};

use super::SwarmProvisioner;

/// Longest wait for one service's log.
const TAIL_TIMEOUT: Duration = Duration::from_secs(5);

/// The role a Swarm tail is saved under: the task's one container (app and sidecar).
pub const POD_ROLE: &str = "pod";

impl SwarmProvisioner {
    /// Saves the log tail of Swarm service `id` (named `name`, iac service `service`), giving
    /// `reason` (`replaced`, `removed`, `destroyed`).
    pub(super) async fn save_log_tail(
        &self,
        id: &str,
        name: &str,
        service: &ServiceName,
        reason: &str,
        events: &Events,
    ) {
        if !events.wants_log_tails() {
            return;
        }
        let ev = events.for_service(service);
        // One line more than is kept: more than LOG_TAIL_LINES back means some were cut.
        let read = self
            .engine
            .service_log_tail(id, LOG_TAIL_LINES + 1, LOG_TAIL_BYTES + 1);
        match tokio::time::timeout(TAIL_TIMEOUT, read).await {
            Ok(Ok(text)) => {
                let (lines, truncated) = LogTail::cap(&text);
                ev.debug(
                    Stage::Provision,
                    format!(
                        "saved the last {} log line(s) of service {name}",
                        lines.len()
                    ),
                );
                ev.save_log_tail(LogTail {
                    service: service.to_string(),
                    container: name.to_string(),
                    role: POD_ROLE.to_string(),
                    reason: reason.to_string(),
                    saved_at: iac_core::event::now_rfc3339(),
                    lines,
                    truncated,
                });
            }
            Ok(Err(e)) => ev.warn(
                Stage::Provision,
                format!("could not save the last log lines of service {name}: {e}"),
            ),
            Err(_) => ev.warn(
                Stage::Provision,
                format!(
                    "could not save the last log lines of service {name}: no answer within {}s",
                    TAIL_TIMEOUT.as_secs()
                ),
            ),
        }
    }
}
