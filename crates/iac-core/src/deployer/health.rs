//! Proving health: every provisioned service is checked through its Envoy (with the settle
//! window for new pairs), its edge's URL and any port warning land in its report, and
//! [`Deployer::health`] re-checks a running project.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::error::Error;
use crate::event::{Events, Stage};
use crate::expose::edge_url;
use crate::health::{HealthReport, HealthState, ProbeTarget};
use crate::report::{ServiceReport, StageTiming};
use crate::stack::{Action, AppliedService, RunningService};
use crate::stages::HealthProber;

use super::{Deployer, Prepared};

/// The settle windows of a deploy ([`super::DeployOptions::health_settle`] and
/// [`super::DeployOptions::health_settle_listening`]).
#[derive(Debug, Clone, Copy)]
pub(super) struct Settle {
    /// For a service without a declared port (SERVING: the process runs).
    pub no_port: Duration,
    /// For a service with one (SERVING: the port accepts connections).
    pub listening: Duration,
}

impl Settle {
    /// The window for the service `first` answered for.
    fn window(&self, first: &HealthReport) -> Duration {
        if first.app_port.is_some() {
            self.listening
        } else {
            self.no_port
        }
    }
}

/// How long a service is probed for.
#[derive(Debug, Clone, Copy)]
pub(super) struct Deadlines {
    /// A created, replaced or repaired service, and an unchanged one whose agent answers but is
    /// not SERVING yet.
    pub full: Duration,
    /// An unchanged service's first answer: one that has none by then is unreachable (and the
    /// deployer repairs it).
    pub unchanged: Duration,
}

/// Proves one provisioned service: takes the provisioner's outcome for it (`applied`), then
/// probes it through its Envoy until its deadline; a created, replaced or repaired service must
/// have been running for its `settle` window (by its agent's uptime, [`crate::settle`]) and still
/// be SERVING. Returns the service's finished report.
pub(super) async fn prove(
    mut p: Prepared,
    applied_svc: Option<AppliedService>,
    prober: Arc<dyn HealthProber>,
    deadlines: Deadlines,
    settle: Settle,
    provision_ms: u64,
    svc_events: Events,
) -> ServiceReport {
    p.report.stages.push(StageTiming {
        stage: Stage::Provision,
        millis: provision_ms,
        ok: true,
    });
    let Some(a) = applied_svc else {
        p.report.fail(
            Stage::Provision,
            "the provisioner did not report this service",
        );
        return p.report;
    };
    p.report.action = Some(a.action);
    p.report.endpoint = a.endpoint.map(|e| e.to_string());
    p.report.url = a.edge.map(edge_url);
    if let Some(err) = &a.error {
        p.report.health = a.health.clone();
        p.report.fail(Stage::Provision, err);
        svc_events.error(Stage::Provision, err.clone());
        return p.report;
    }
    if a.action == Action::RolledBack {
        p.report.health = a.health.clone();
        let why = a
            .health
            .as_ref()
            .map(|h| h.detail.clone())
            .unwrap_or_default();
        p.report.fail(
            Stage::Health,
            format!("new version was not healthy ({why}); rolled back, previous version kept"),
        );
        return p.report;
    }
    let Some(addr) = a.endpoint else {
        p.report.fail(
            Stage::Provision,
            "no published endpoint for the mTLS listener",
        );
        return p.report;
    };
    let t = Instant::now();
    let target = ProbeTarget {
        service: p.spec.name.clone(),
        addr,
        deadline: deadlines.full,
    };
    svc_events.info(Stage::Health, format!("probing {addr} over mTLS"));
    let mut h = if a.action == Action::Unchanged {
        // A pod left alone should answer at once; one whose agent says "starting" (its app was
        // just restarted) gets the full deadline; one that does not answer is unreachable.
        let quick = ProbeTarget {
            deadline: deadlines.unchanged.min(deadlines.full),
            ..target.clone()
        };
        let h = prober.check(&quick).await;
        match h.state {
            HealthState::Unknown => prober.check(&target).await,
            _ => h,
        }
    } else {
        prober.check(&target).await
    };
    if matches!(a.action, Action::Create | Action::Replace | Action::Repair) {
        let window = settle.window(&h);
        h = crate::settle::settle(prober.as_ref(), &target, h, window, &svc_events).await;
    }
    // The app listens, but not where its sidecar sends traffic: say so, whatever the verdict.
    if let Some(warning) = h.port_warning() {
        svc_events.warn(Stage::Health, warning.clone());
        p.report.warnings.push(warning);
    }
    let ok = h.state == HealthState::Serving;
    p.report.stages.push(StageTiming {
        stage: Stage::Health,
        millis: t.elapsed().as_millis() as u64,
        ok,
    });
    if ok {
        svc_events.info(Stage::Health, format!("SERVING ({})", h.detail));
        p.report.ok = true;
    } else {
        svc_events.error(
            Stage::Health,
            format!("{} ({})", h.state.as_str(), h.detail),
        );
        p.report
            .fail(Stage::Health, format!("{}: {}", h.state.as_str(), h.detail));
    }
    p.report.health = Some(h);
    p.report
}

impl Deployer {
    /// Re-checks every running service of the project, all at once, each for at most `timeout`
    /// (an unreachable or dead service is reported after that, not after the deploy's health
    /// deadline).
    pub async fn health(
        &self,
        timeout: Duration,
    ) -> Result<Vec<(RunningService, HealthReport)>, Error> {
        let running = self.stages.provisioner.running(&self.opts.project).await?;
        let checks = running.into_iter().map(|r| {
            let prober = self.stages.prober.clone();
            let deadline = timeout;
            async move {
                let h = match r.endpoint {
                    Some(addr) => {
                        prober
                            .check(&ProbeTarget {
                                service: r.service.clone(),
                                addr,
                                deadline,
                            })
                            .await
                    }
                    None => HealthReport::new(
                        r.service.clone(),
                        HealthState::Unreachable,
                        None,
                        format!("no published mTLS endpoint (container {})", r.state),
                        0,
                    ),
                };
                (r, h)
            }
        });
        Ok(futures::future::join_all(checks).await)
    }
}
