//! Health-gated replacement of a changed service: start the new pair under temporary names off
//! the service alias, gate it on the prober, then either roll back (remove the new pair, keep the
//! old) or swap it in (alias, remove the old pair, rename). The sequence is described in the
//! [module docs](super).

use std::sync::Arc;

use iac_core::{
    Action, AppliedService, Events, HealthProber, NetworkMode, ProbeTarget, ServiceStack, Stage,
};

use super::{DockerProvisioner, name_taken, project_of, show};
use crate::engine::EngineError;
use crate::provision::reconcile::ServicePlan;

impl DockerProvisioner {
    pub(super) async fn replace(
        &self,
        plan: &ServicePlan,
        want: &ServiceStack,
        gate: Arc<dyn HealthProber>,
        events: &Events,
        out: &mut AppliedService,
    ) {
        let verb = if plan.action == Action::Repair {
            "repairing"
        } else {
            "replacing"
        };
        events.info(
            Stage::Provision,
            format!(
                "{verb} ({}), starting the new pair beside the old",
                plan.reason
            ),
        );
        let old_endpoint = match &plan.current.envoy {
            Some(envoy) => self.endpoint(&envoy.id, want).await.ok().flatten(),
            None => None,
        };
        let mut created = Vec::new();
        let started = async {
            let pair = self.start_pair(want, true, &mut created, events).await?;
            let ep = self.endpoint(&pair.envoy_id, want).await?;
            Ok::<_, EngineError>((pair, ep))
        }
        .await;
        let (pair, addr) = match started {
            Ok((pair, Some(addr))) => (pair, addr),
            Ok((_, None)) => {
                let cleanup = self.clean_up(&created, events).await;
                out.error = Some(format!(
                    "cannot health-gate the new pair of {}: its sidecar publishes no port; \
                 new pair removed{cleanup}, old pair kept",
                    plan.service
                ));
                out.endpoint = old_endpoint;
                return;
            }
            Err(e) => {
                let cleanup = self.clean_up(&created, events).await;
                out.error = Some(format!(
                    "starting the new pair: {e}; new pair removed{cleanup}, old pair kept"
                ));
                out.endpoint = old_endpoint;
                return;
            }
        };
        iac_core::fault::point("replace-started");
        let deadline = self.config.health_deadline;
        events.info(
            Stage::Provision,
            format!(
                "health-gating the new pair at {addr} (deadline {}s)",
                deadline.as_secs()
            ),
        );
        let health = gate
            .check(&ProbeTarget {
                service: plan.service.clone(),
                addr,
                deadline,
            })
            .await;
        if !health.is_serving() {
            events.warn(
                Stage::Provision,
                format!(
                    "new pair is {} ({}): rolling back, old pair kept",
                    health.state.as_str(),
                    health.detail
                ),
            );
            let cleanup = self.clean_up(&created, events).await;
            out.action = Action::RolledBack;
            out.endpoint = old_endpoint;
            out.health = Some(health);
            if !cleanup.is_empty() {
                out.error = Some(format!("rolled back{cleanup}"));
            }
            return;
        }
        out.health = Some(health);
        let mut old_removed = false;
        let swapped = async {
            if let NetworkMode::Network { name, aliases } = &want.envoy.network
                && !aliases.is_empty()
            {
                self.engine.disconnect_network(name, &pair.envoy_id).await?;
                self.engine
                    .connect_network(name, &pair.envoy_id, aliases.clone())
                    .await?;
            }
            iac_core::fault::point("replace-swapped");
            let reason = if plan.action == Action::Repair {
                "repaired"
            } else {
                "replaced"
            };
            self.save_log_tails(&plan.current.containers(), reason, events)
                .await;
            let old: Vec<(String, String)> = plan
                .current
                .containers()
                .iter()
                .map(|c| (c.id.clone(), c.name.clone()))
                .collect();
            if let Some(e) = self.remove_all(&old, events).await.into_iter().next() {
                return Err(e);
            }
            old_removed = true;
            iac_core::fault::point("replace-old-removed");
            let project = project_of(&want.app);
            self.engine
                .rename_container(&pair.app_id, &want.app.name)
                .await
                .map_err(|e| name_taken(e, &want.app.name, project))?;
            self.engine
                .rename_container(&pair.envoy_id, &want.envoy.name)
                .await
                .map_err(|e| name_taken(e, &want.envoy.name, project))?;
            self.endpoint(&pair.envoy_id, want).await
        }
        .await;
        match swapped {
            Ok(ep) => {
                out.endpoint = ep;
                events.info(
                    Stage::Provision,
                    format!("replaced, mTLS endpoint {}", show(ep)),
                );
            }
            Err(e) => {
                let cleanup = self.clean_up(&created, events).await;
                let old = if old_removed {
                    "the old pair had already been removed: the service is not running"
                } else {
                    "the old pair is kept"
                };
                out.error = Some(format!(
                    "swapping in the new pair: {e}; new pair removed{cleanup}; {old}"
                ));
                out.endpoint = if old_removed { None } else { old_endpoint };
            }
        }
    }
}
