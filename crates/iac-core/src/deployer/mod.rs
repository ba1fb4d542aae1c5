//! The [`Deployer`]: runs the stages for every service with bounded parallelism, renders the mesh,
//! plans the [`Stack`], provisions it and proves health. A failure in one service's pipeline marks
//! that service failed and never stops its peers. It owns the per-project deploy lock.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::FutureExt;
use serde::Serialize;
use tracing::Instrument;

use crate::entry::{Entry, ReleaseCommand};
use crate::error::Error;
use crate::event::{Events, Stage};
use crate::fsutil::write_atomic_if_changed;
use crate::health::HealthState;
use crate::image::ImageRef;
use crate::mesh::IssuedCerts;
use crate::name::{ProjectName, ServiceName};
use crate::plan::plan;
use crate::report::{DeployReport, ServiceReport, StageTiming};
use crate::repos::ServiceSpec;
use crate::stack::{Action, Applied, Change, Stack};
use crate::stages::*;
use crate::trace_context::{self, Pipeline};

mod health;
mod lock;
mod prepare;
mod release;
mod sandbox;

pub use sandbox::{SandboxRecord, SandboxTarget};

use health::Settle;

/// What [`Deployer::apply_and_prove`] returns: every service's report and what the apply
/// removed; or, when the apply as a whole failed, the provisioner's error and every report.
type ApplyOutcome = Result<(Vec<ServiceReport>, Vec<ServiceName>), (String, Vec<ServiceReport>)>;
use prepare::{Mode, Prepared};

/// The concrete stage implementations a [`Deployer`] runs.
#[derive(Clone)]
pub struct Stages {
    /// Fetches sources.
    pub fetcher: Arc<dyn SourceFetcher>,
    /// Resolves entry points.
    pub resolver: Arc<dyn EntryResolver>,
    /// Builds images.
    pub builder: Arc<dyn ImageBuilder>,
    /// Issues certificates.
    pub pki: Arc<dyn Pki>,
    /// Renders sidecar configs.
    pub sidecar: Arc<dyn SidecarRenderer>,
    /// Applies stacks.
    pub provisioner: Arc<dyn Provisioner>,
    /// Proves health.
    pub prober: Arc<dyn HealthProber>,
}

/// How a [`Deployer`] deploys one project.
#[derive(Debug, Clone)]
pub struct DeployOptions {
    /// The project.
    pub project: ProjectName,
    /// The project's network name.
    pub network: String,
    /// The sidecar image.
    pub envoy_image: String,
    /// How many services are fetched/resolved/built at once.
    pub parallelism: usize,
    /// `.iac/projects/<project>`: rendered configs, the deploy lock.
    pub state_dir: PathBuf,
    /// How long the prober keeps trying one service.
    pub health_deadline: Duration,
    /// A created or replaced service without a declared port must have been running this long
    /// (by its agent's reported uptime, see [`crate::settle`]) and still be SERVING (an entry
    /// that crashes right after starting is not healthy): its SERVING only says the process
    /// runs. Zero disables it.
    pub health_settle: Duration,
    /// The same for a service with a declared port, whose SERVING already says the port accepts
    /// connections (readiness as Kubernetes' TCP probe means it). Zero: the accept is the proof.
    /// Raise it for servers that bind before their app has loaded and can still fail to boot
    /// (gunicorn without `--preload`).
    pub health_settle_listening: Duration,
    /// How long an unchanged service may take to answer before it counts as unreachable and is
    /// repaired (its pod replaced with the same spec); also `iac health`'s wait per service.
    pub health_check_timeout: Duration,
    /// OTLP endpoint handed to the apps (`OTEL_EXPORTER_OTLP_ENDPOINT`), if any.
    pub otel_endpoint: Option<String>,
    /// The longest a whole deploy may take (fetch to health). Past it the deploy is stopped,
    /// every unfinished service is reported failed, and the project lock is released.
    pub deadline: Duration,
    /// The longest a service's release command may run before it is stopped (and the service's
    /// deploy fails, its old pods kept).
    pub release_timeout: Duration,
    /// `[mesh] egress`: whether the services' egress lists are enforced.
    pub egress: crate::egress::EgressMode,
    /// Set for a sandbox deploy (`--sandbox NAME`, `sandbox:` in the repos file): the services
    /// are deployed as copies in it, beside the baseline ([`crate::sandbox`]).
    pub sandbox: Option<SandboxTarget>,
}

/// One service's sidecar inputs and output, as `iac render` writes them.
#[derive(Debug, Clone, Serialize)]
pub struct RenderedService {
    /// The service.
    pub service: ServiceName,
    /// Its entry point.
    pub entry: Entry,
    /// Its image (planned, not built).
    pub image: ImageRef,
    /// Its certificates.
    pub certs: IssuedCerts,
    /// The rendered Envoy config.
    pub envoy_yaml: String,
}

/// What [`Deployer::desired_stack`] found.
#[derive(Debug, Clone)]
pub struct DesiredStack {
    /// The planned stack.
    pub stack: Stack,
    /// Each prepared service's rendered Envoy config, keyed by the host path the stack mounts it
    /// from (`ServiceStack::envoy` mounts); not written to disk.
    pub envoy_configs: BTreeMap<PathBuf, String>,
    /// Services that failed before planning (also in `stack.keep`).
    pub failures: Vec<ServiceReport>,
    /// The release command of each prepared service that declares one.
    pub releases: BTreeMap<ServiceName, ReleaseCommand>,
}

/// What `plan` found: the stack it would apply, the changes, and services that failed to prepare.
#[derive(Debug, Clone, Serialize)]
pub struct PlanOutcome {
    /// The stack a deploy would apply.
    pub stack: Stack,
    /// What applying it would change.
    pub changes: Vec<Change>,
    /// Services that failed before planning.
    pub failures: Vec<ServiceReport>,
    /// The release command of each service that declares one: a deploy runs it before the
    /// service's new pod when the change is a create or a replace.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub releases: BTreeMap<ServiceName, ReleaseCommand>,
}

/// Runs the stages for a project: deploy, plan, render, destroy, health.
pub struct Deployer {
    stages: Stages,
    opts: DeployOptions,
}

impl Deployer {
    /// A deployer running `stages` with `opts`.
    pub fn new(stages: Stages, opts: DeployOptions) -> Self {
        Deployer { stages, opts }
    }

    /// Targets a sandbox (or the baseline, with `None`) from now on ([`DeployOptions::sandbox`]).
    pub fn set_sandbox(&mut self, target: Option<SandboxTarget>) {
        self.opts.sandbox = target;
    }

    /// Its options.
    pub fn options(&self) -> &DeployOptions {
        &self.opts
    }

    /// Its stages.
    pub fn stages(&self) -> &Stages {
        &self.stages
    }

    /// Host path of a service's rendered Envoy config.
    pub fn envoy_config_path(&self, svc: &ServiceName) -> PathBuf {
        self.opts
            .state_dir
            .join("services")
            .join(svc.as_str())
            .join("envoy.yaml")
    }

    /// Deploys `specs`: every service ends up in the report, ok or with its error and stage.
    /// Bounded by [`DeployOptions::deadline`]: past it the work in flight is dropped (which
    /// releases the project lock) and the report says the deadline passed.
    pub async fn deploy(&self, specs: &[ServiceSpec], events: &Events) -> DeployReport {
        let span = trace_context::pipeline_span(Pipeline::Deploy, &self.opts.project);
        self.deploy_traced(specs, events).instrument(span).await
    }

    async fn deploy_traced(&self, specs: &[ServiceSpec], events: &Events) -> DeployReport {
        let started = Instant::now();
        let deadline = self.opts.deadline;
        match tokio::time::timeout(deadline, self.deploy_unbounded(specs, events, started)).await {
            Ok(report) => report,
            Err(_) => {
                let why = format!(
                    "deploy deadline of {} passed (deploy_deadline): the deploy was stopped and the lock of project {} released",
                    humantime::format_duration(deadline),
                    self.opts.project
                );
                events.error(Stage::Deploy, why.clone());
                let reports = specs
                    .iter()
                    .map(|s| {
                        let mut r = ServiceReport::new(s.name.clone(), s.slug.to_string());
                        r.fail(Stage::Deploy, &why);
                        r
                    })
                    .collect();
                self.finish(reports, Vec::new(), started, Some(why))
            }
        }
    }

    async fn deploy_unbounded(
        &self,
        specs: &[ServiceSpec],
        events: &Events,
        started: Instant,
    ) -> DeployReport {
        events.info(
            Stage::Deploy,
            format!(
                "deploying {} service(s) to project {}",
                specs.len(),
                self.opts.project
            ),
        );
        let copies;
        let specs: &[ServiceSpec] = match &self.opts.sandbox {
            None => specs,
            Some(t) => match self.sandbox_specs(t, specs) {
                Ok(c) => {
                    copies = c;
                    &copies
                }
                Err(e) => {
                    events.error(Stage::Deploy, e.to_string());
                    return self.abort(Vec::new(), Vec::new(), started, e.to_string());
                }
            },
        };
        let (prepared, mut failed) = self.prepare_all(specs, Mode::Build, events).await;
        let _lock = match self.lock(events).await {
            Ok(l) => l,
            Err(e) => return self.abort(failed, prepared, started, format!("deploy lock: {e}")),
        };
        crate::fault::point("locked");
        if let Err(e) = self.gc_locked(events).await {
            events.warn(Stage::Deploy, format!("removing expired sandboxes: {e}"));
        }
        let (input, rendered, render_failed, context) = self.mesh_and_plan_input(prepared, events);
        failed.extend(render_failed);
        let mut ok_services = Vec::new();
        // The configs this deploy rewrites, with what they held: a pod that keeps running its
        // old version (rolled back, or never applied) gets its old config file back.
        let mut rewritten = Vec::new();
        for (p, config) in rendered {
            let path = self.envoy_config_path(&p.spec.name);
            let svc_events = events.for_service(&p.spec.name);
            let before = std::fs::read(&path).ok();
            // Unchanged configs are not rewritten: no fsync per service on a no-op redeploy.
            match write_atomic_if_changed(&path, config.as_bytes(), Some(0o644)) {
                Ok(wrote) => {
                    if wrote && let Some(before) = before {
                        rewritten.push(sandbox::Rewritten {
                            service: p.spec.name.clone(),
                            before: Some(before),
                        });
                    }
                    let what = if wrote { "wrote" } else { "unchanged:" };
                    svc_events.debug(Stage::Render, format!("{what} {}", path.display()));
                    ok_services.push(p);
                }
                Err(e) => {
                    let mut p = p;
                    p.report
                        .fail(Stage::Render, format!("{}: {e}", path.display()));
                    svc_events.error(Stage::Render, p.report.error.clone().unwrap_or_default());
                    failed.push(p.report);
                }
            }
        }
        let mut input = input;
        input
            .services
            .retain(|s| ok_services.iter().any(|p| p.spec.name == s.name));
        input.keep.extend(failed.iter().map(|r| r.service.clone()));
        let stack = plan(&input);
        events.info(
            Stage::Plan,
            format!(
                "stack: {} service(s), network {}",
                stack.services.len(),
                stack.network.name
            ),
        );
        // Release commands run in the new image before its pods take traffic, after the services
        // without one are up (release.rs); a failed one keeps the old pods.
        match self
            .apply_with_releases(stack, ok_services, &context, events)
            .await
        {
            Ok((reports, removed)) => {
                self.restore_kept_configs(&rewritten, &reports, events);
                failed.extend(reports);
                self.finish(failed, removed, started, None)
            }
            Err((why, reports)) => {
                self.restore_kept_configs(&rewritten, &reports, events);
                failed.extend(reports);
                self.finish(
                    failed,
                    Vec::new(),
                    started,
                    Some(format!("provision: {why}")),
                )
            }
        }
    }

    /// Applies `stack`, then proves `services` (the stack's services that were prepared), and
    /// repairs and proves again an unchanged one found unreachable. Returns every service's report
    /// and what the apply removed; when the apply as a whole failed, the provisioner's error and
    /// every service's report, failed at the provision stage.
    async fn apply_and_prove(
        &self,
        stack: Stack,
        ok_services: Vec<Prepared>,
        context: &prepare::MeshContext,
        events: &Events,
    ) -> ApplyOutcome {
        let t = Instant::now();
        let applied = self
            .stages
            .provisioner
            .apply(&stack, self.stages.prober.clone(), events)
            .instrument(trace_context::task_span(Stage::Provision, None, None, None))
            .await;
        let provision_ms = t.elapsed().as_millis() as u64;
        let applied = match applied {
            Ok(a) => {
                self.after_apply(context, &a, events).await;
                a
            }
            Err(e) => {
                events.error(Stage::Provision, e.to_string());
                let mut reports = Vec::new();
                for mut p in ok_services {
                    p.report.stages.push(StageTiming {
                        stage: Stage::Provision,
                        millis: provision_ms,
                        ok: false,
                    });
                    p.report.fail(Stage::Provision, &e);
                    reports.push(p.report);
                }
                return Err((e.to_string(), reports));
            }
        };

        // Health: every provisioned service, through its Envoy, concurrently.
        let mut reports = Vec::new();
        let kept: Vec<Prepared> = ok_services.clone();
        let proved = self
            .prove_all(ok_services, &applied, provision_ms, events)
            .await;
        // An unchanged pod that does not answer through its sidecar is broken (its network
        // namespace, its sidecar, its agent): repaired — replaced with the same spec,
        // health-gated — and proved again.
        let repair: BTreeMap<ServiceName, String> = proved
            .iter()
            .filter(|r| r.action == Some(Action::Unchanged))
            .filter_map(|r| {
                let h = r.health.as_ref()?;
                (h.state == HealthState::Unreachable).then(|| {
                    (
                        r.service.clone(),
                        format!("unreachable through its sidecar ({})", h.detail),
                    )
                })
            })
            .collect();
        if repair.is_empty() {
            reports.extend(proved);
            return Ok((reports, applied.removed));
        }
        reports.extend(
            proved
                .into_iter()
                .filter(|r| !repair.contains_key(&r.service)),
        );
        for (svc, why) in &repair {
            events
                .for_service(svc)
                .warn(Stage::Provision, format!("repairing: {why}"));
        }
        let again: Vec<Prepared> = kept
            .into_iter()
            .filter(|p| repair.contains_key(&p.spec.name))
            .map(|mut p| {
                p.report
                    .warnings
                    .push(format!("repaired: {}", repair[&p.spec.name]));
                p
            })
            .collect();
        let mut stack = stack;
        stack.repair = repair;
        let t = Instant::now();
        let repaired = self
            .stages
            .provisioner
            .apply(&stack, self.stages.prober.clone(), events)
            .instrument(trace_context::task_span(Stage::Provision, None, None, None))
            .await;
        let repair_ms = t.elapsed().as_millis() as u64;
        match repaired {
            Ok(applied_again) => {
                reports.extend(
                    self.prove_all(again, &applied_again, repair_ms, events)
                        .await,
                );
            }
            Err(e) => {
                events.error(Stage::Provision, format!("repair: {e}"));
                for mut p in again {
                    p.report.fail(Stage::Provision, format!("repair: {e}"));
                    reports.push(p.report);
                }
            }
        }
        Ok((reports, applied.removed))
    }

    /// Proves every provisioned service in `services` through its Envoy, concurrently, from what
    /// the provisioner said of it in `applied`.
    async fn prove_all(
        &self,
        services: Vec<Prepared>,
        applied: &Applied,
        provision_ms: u64,
        events: &Events,
    ) -> Vec<ServiceReport> {
        let probes = services.into_iter().map(|p| {
            let applied_svc = applied
                .services
                .iter()
                .find(|a| a.service == p.spec.name)
                .cloned();
            let prober = self.stages.prober.clone();
            let deadlines = health::Deadlines {
                full: self.opts.health_deadline,
                unchanged: self.opts.health_check_timeout,
            };
            let settle = Settle {
                no_port: self.opts.health_settle,
                listening: self.opts.health_settle_listening,
            };
            let svc_events = events.for_service(&p.spec.name);
            let span = trace_context::task_span(
                Stage::Health,
                Some(&p.spec.name),
                None,
                p.report.commit.as_deref(),
            );
            let span_end = span.clone();
            health::prove(
                p,
                applied_svc,
                prober,
                deadlines,
                settle,
                provision_ms,
                svc_events,
            )
            .inspect(move |r| {
                trace_context::finish_task(
                    &span_end,
                    Stage::Health,
                    &if r.ok { Ok(()) } else { Err(()) },
                )
            })
            .instrument(span)
        });
        futures::future::join_all(probes).await
    }

    /// What a deploy would change, without building images or touching containers.
    pub async fn plan(&self, specs: &[ServiceSpec], events: &Events) -> Result<PlanOutcome, Error> {
        let span = trace_context::pipeline_span(Pipeline::Plan, &self.opts.project);
        self.plan_traced(specs, events).instrument(span).await
    }

    async fn plan_traced(
        &self,
        specs: &[ServiceSpec],
        events: &Events,
    ) -> Result<PlanOutcome, Error> {
        let copies;
        let specs = match &self.opts.sandbox {
            Some(t) => {
                copies = self.sandbox_specs(t, specs)?;
                &copies[..]
            }
            None => specs,
        };
        let DesiredStack {
            stack,
            failures: failed,
            releases,
            ..
        } = self.desired_stack(specs, events).await;
        let changes = self.stages.provisioner.diff(&stack).await;
        trace_context::finish_pipeline(
            changes.is_ok() && failed.is_empty(),
            failed
                .first()
                .and_then(|f| f.failed_stage)
                .map(Stage::as_str),
        );
        let changes = changes?;
        Ok(PlanOutcome {
            stack,
            changes,
            failures: failed,
            releases,
        })
    }

    /// The stack a deploy would hand the provisioner, without building or running anything and
    /// without asking the provisioner (renders for other targets, e.g. Kubernetes manifests, start
    /// here). Nothing is written: each service's Envoy config comes back in memory, keyed by the
    /// host path the stack mounts it from. Services that failed to prepare are in `stack.keep`
    /// and in `failures`.
    pub async fn desired_stack(&self, specs: &[ServiceSpec], events: &Events) -> DesiredStack {
        let (prepared, mut failures) = self.prepare_all(specs, Mode::PlanOnly, events).await;
        let (mut input, rendered, render_failed, _) = self.mesh_and_plan_input(prepared, events);
        failures.extend(render_failed);
        input
            .keep
            .extend(failures.iter().map(|r| r.service.clone()));
        let releases = rendered
            .iter()
            .filter_map(|(p, _)| Some((p.spec.name.clone(), p.entry.release.clone()?)))
            .collect();
        let envoy_configs = rendered
            .into_iter()
            .map(|(p, config)| (self.envoy_config_path(&p.spec.name), config))
            .collect();
        DesiredStack {
            stack: plan(&input),
            envoy_configs,
            failures,
            releases,
        }
    }

    /// Everything a deploy would hand the provisioner, per service, without building or running
    /// anything: the resolved entry, the planned image, the certificates and the Envoy config.
    pub async fn render(
        &self,
        specs: &[ServiceSpec],
        events: &Events,
    ) -> (Vec<RenderedService>, Vec<ServiceReport>) {
        let span = trace_context::pipeline_span(Pipeline::Render, &self.opts.project);
        self.render_traced(specs, events).instrument(span).await
    }

    async fn render_traced(
        &self,
        specs: &[ServiceSpec],
        events: &Events,
    ) -> (Vec<RenderedService>, Vec<ServiceReport>) {
        let (prepared, mut failed) = self.prepare_all(specs, Mode::PlanOnly, events).await;
        let (_input, rendered, render_failed, _) = self.mesh_and_plan_input(prepared, events);
        failed.extend(render_failed);
        trace_context::finish_pipeline(
            failed.is_empty(),
            failed
                .first()
                .and_then(|f| f.failed_stage)
                .map(Stage::as_str),
        );
        let ok = rendered
            .into_iter()
            .map(|(p, envoy_yaml)| RenderedService {
                service: p.spec.name,
                entry: p.entry,
                image: p.image,
                certs: p.certs,
                envoy_yaml,
            })
            .collect();
        (ok, failed)
    }

    /// Removes everything the project runs.
    pub async fn destroy(&self, events: &Events) -> Result<Vec<String>, Error> {
        let span = trace_context::pipeline_span(Pipeline::Destroy, &self.opts.project);
        async {
            let _lock = self.lock(events).await?;
            let r = self
                .stages
                .provisioner
                .destroy(&self.opts.project, events)
                .await;
            if r.is_ok()
                && let Err(e) = self.forget_mesh_records()
            {
                events.warn(
                    Stage::Deploy,
                    format!("removing the project's mesh and sandbox records: {e}"),
                );
            }
            trace_context::finish_pipeline(r.is_ok(), Some("destroy"));
            Ok(r?)
        }
        .instrument(span)
        .await
    }

    fn abort(
        &self,
        mut failed: Vec<ServiceReport>,
        prepared: Vec<Prepared>,
        started: Instant,
        why: String,
    ) -> DeployReport {
        for mut p in prepared {
            p.report.fail(Stage::Provision, &why);
            failed.push(p.report);
        }
        self.finish(failed, Vec::new(), started, Some(why))
    }

    fn finish(
        &self,
        mut services: Vec<ServiceReport>,
        removed: Vec<ServiceName>,
        started: Instant,
        error: Option<String>,
    ) -> DeployReport {
        services.sort_by(|a, b| a.service.cmp(&b.service));
        let ok = error.is_none() && services.iter().all(|s| s.ok);
        let failed_stage = services.iter().find_map(|s| s.failed_stage);
        trace_context::finish_pipeline(ok, failed_stage.map(Stage::as_str));
        DeployReport {
            project: self.opts.project.clone(),
            ok,
            services,
            removed,
            error,
            millis: started.elapsed().as_millis() as u64,
        }
    }
}

#[cfg(test)]
mod tests;
