//! Saving the last lines of a pod's logs before the provisioner removes its containers
//! (replaced, repaired, removed from the repos file, destroyed): the app's (the agent tees the
//! app's output) and the sidecar's, through [`crate::provision::tails`].

use iac_core::{Events, Role};

use super::DockerProvisioner;
use crate::provision::reconcile::Observed;
use crate::provision::tails::{TailOf, save_container_tail};

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
            let Some(service) = c.service.as_deref() else {
                continue;
            };
            let of = TailOf {
                id: &c.id,
                name: &c.name,
                service,
                role,
            };
            save_container_tail(self.engine.as_ref(), &of, reason, events).await;
        }
    }
}
