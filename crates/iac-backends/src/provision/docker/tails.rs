//! Saving the last lines of a pod's logs before the provisioner removes its containers
//! (replaced, repaired, removed from the repos file, destroyed): the app's (the agent tees the
//! app's output) and the sidecar's, into the [`Events`] sink's log tails for the deployment
//! history. Only when the sink collects them; a log that cannot be read is a warning, never a
//! failed removal.

use std::time::Duration;

use iac_core::history::{LOG_TAIL_BYTES, LOG_TAIL_LINES, LogTail};
use iac_core::{Events, Role, ServiceName, Stage};

use super::DockerProvisioner;
use crate::provision::reconcile::Observed;

/// Longest wait for one container's log.
const TAIL_TIMEOUT: Duration = Duration::from_secs(5);

impl DockerProvisioner {
    /// Saves the log tail of every app and sidecar container in `containers`, giving `reason`
    /// (`replaced`, `repaired`, `removed`, `destroyed`).
    pub(super) async fn save_log_tails(
        &self,
        containers: &[&Observed],
        reason: &str,
        events: &Events,
    ) {
        if !events.wants_log_tails() {
            return;
        }
        for c in containers {
            let role = match c.role {
                Some(Role::App) => "app",
                Some(Role::Envoy) => "sidecar",
                _ => continue,
            };
            let Some(service) = c.service.clone() else {
                continue;
            };
            let ev = match ServiceName::new(&service) {
                Ok(s) => events.for_service(&s),
                Err(_) => events.clone(),
            };
            // One line more than is kept: more than LOG_TAIL_LINES back means some were cut.
            let read = self
                .engine
                .log_tail(&c.id, LOG_TAIL_LINES + 1, LOG_TAIL_BYTES + 1);
            match tokio::time::timeout(TAIL_TIMEOUT, read).await {
                Ok(Ok(text)) => {
                    let (lines, truncated) = LogTail::cap(&text);
                    ev.debug(
                        Stage::Provision,
                        format!("saved the last {} log line(s) of {}", lines.len(), c.name),
                    );
                    ev.save_log_tail(LogTail {
                        service,
                        container: c.name.clone(),
                        role: role.to_string(),
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
    }
}
