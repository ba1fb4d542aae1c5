//! Preparing services: fetch → resolve → build → certs per service (bounded parallel, each stage
//! timed, traced and reported), then the mesh every prepared service's sidecar is rendered against
//! and the plan input.

use std::time::Instant;

use futures::StreamExt;
use tracing::Instrument;

use crate::egress::{EgressMode, EgressPolicy};
use crate::entry::{DEFAULT_APP_PORT, Entry};
use crate::error::EntryError;
use crate::event::{Events, Stage};
use crate::expose::{EdgeBind, Expose};
use crate::fsutil::sha256_tagged;
use crate::image::{BuildSpec, ImageRef};
use crate::mesh::{CertPaths, IssuedCerts, Mesh, MeshPorts, MeshService};
use crate::name::ServiceName;
use crate::plan::{PlanInput, PlannedService};
use crate::report::{ServiceReport, StageTiming};
use crate::repos::ServiceSpec;
use crate::source::Source;
use crate::trace_context;

use super::Deployer;

/// The mesh a deploy rendered against: every member, the ones this deploy prepared, and the
/// ones it took from the records (whose sidecars it renders again after applying).
pub(super) struct MeshContext {
    pub(super) mesh: Mesh,
    pub(super) prepared: Vec<MeshService>,
    pub(super) recorded: Vec<crate::name::ServiceName>,
}

/// A service that made it through fetch → resolve → build → certs.
#[derive(Clone)]
pub(super) struct Prepared {
    pub(super) spec: ServiceSpec,
    pub(super) report: ServiceReport,
    pub(super) entry: Entry,
    pub(super) image: ImageRef,
    pub(super) certs: IssuedCerts,
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Mode {
    Build,
    PlanOnly,
}

/// The app's own port: `PORT` from the repos file's env, else the entry's (Django/gunicorn, a
/// framework server), else — for a service exposed on request (`expose: true`, a port, an
/// address) — the default `$PORT` it is handed.
pub(super) fn app_port(spec: &ServiceSpec, entry: &Entry) -> Option<u16> {
    app_port_and_source(spec, entry).map(|(port, _)| port)
}

/// [`app_port`] and, for people, where it comes from.
fn app_port_and_source(spec: &ServiceSpec, entry: &Entry) -> Option<(u16, String)> {
    if let Some(port) = spec.env.get("PORT").and_then(|p| p.parse().ok()) {
        return Some((
            port,
            format!(
                "`env: PORT` of {} in the repos file or API request",
                spec.name
            ),
        ));
    }
    if let Some(port) = entry.port {
        let from = match &entry.origin {
            Some(origin) => format!("{origin}, entry rule {}", entry.rule),
            None => format!("entry rule {}: {}", entry.rule, entry.why),
        };
        return Some((port, from));
    }
    matches!(spec.expose, Expose::On(_))
        .then(|| (DEFAULT_APP_PORT, "iac's default $PORT".to_string()))
}

/// Refuses an app port the sidecar uses ([`MeshPorts::reserved`]): the app shares the pod's
/// network namespace, so it would take the sidecar's port or have the sidecar's app traffic (the
/// edge's, the mesh's) land on a listener of its own.
pub(super) fn check_app_port(
    spec: &ServiceSpec,
    entry: &Entry,
    ports: &MeshPorts,
) -> Result<(), EntryError> {
    let Some((port, from)) = app_port_and_source(spec, entry) else {
        return Ok(());
    };
    if ports.reserved().iter().any(|(p, _)| *p == port) {
        return Err(EntryError::ReservedPort {
            service: spec.name.to_string(),
            port,
            from,
            reserved: ports.reserved_list(),
        });
    }
    Ok(())
}

/// Where the service's edge is published on the host, if it has one (see [`crate::expose`]).
pub(super) fn edge_of(spec: &ServiceSpec, entry: &Entry) -> Option<EdgeBind> {
    spec.expose.edge(app_port(spec, entry).is_some())
}

impl Deployer {
    pub(super) async fn prepare_all(
        &self,
        specs: &[ServiceSpec],
        mode: Mode,
        events: &Events,
    ) -> (Vec<Prepared>, Vec<ServiceReport>) {
        let n = self.opts.parallelism.max(1);
        let mut results: Vec<(usize, Result<Prepared, ServiceReport>)> =
            futures::stream::iter(specs.iter().cloned().enumerate())
                .map(|(i, spec)| async move { (i, self.prepare(spec, mode, events).await) })
                .buffer_unordered(n)
                .collect()
                .await;
        results.sort_by_key(|(i, _)| *i);
        let mut ok = Vec::new();
        let mut failed = Vec::new();
        for (_, r) in results {
            match r {
                Ok(p) => ok.push(p),
                Err(report) => failed.push(report),
            }
        }
        (ok, failed)
    }

    async fn prepare(
        &self,
        spec: ServiceSpec,
        mode: Mode,
        events: &Events,
    ) -> Result<Prepared, ServiceReport> {
        let ev = events.for_service(&spec.name);
        let mut report = ServiceReport::new(spec.name.clone(), spec.slug.to_string());
        macro_rules! stage {
            ($stage:expr, $fut:expr) => {{
                let t = Instant::now();
                let span = trace_context::task_span(
                    $stage,
                    Some(&spec.name),
                    Some(&spec.slug),
                    report.commit.as_deref(),
                );
                let r = async {
                    ev.info($stage, format!("{} …", $stage.as_str()));
                    $fut
                }
                .instrument(span.clone())
                .await;
                trace_context::finish_task(&span, $stage, &r);
                let ok = r.is_ok();
                report.stages.push(StageTiming {
                    stage: $stage,
                    millis: t.elapsed().as_millis() as u64,
                    ok,
                });
                match r {
                    Ok(v) => v,
                    Err(e) => {
                        ev.error($stage, e.to_string());
                        report.fail($stage, e);
                        return Err(report);
                    }
                }
            }};
        }
        let source: Source = stage!(
            Stage::Fetch,
            self.stages.fetcher.fetch(&spec.slug, &ev).await
        );
        report.commit = source.commit.clone();
        crate::fault::point("fetched");
        ev.info(
            Stage::Fetch,
            format!("{} ({})", source.digest, source.origin),
        );
        let entry = stage!(
            Stage::Resolve,
            self.stages
                .resolver
                .resolve(&source, spec.entrypoint.clone())
                .and_then(
                    |entry| check_app_port(&spec, &entry, &MeshPorts::default()).map(|()| entry)
                )
        );
        ev.info(
            Stage::Resolve,
            format!("{} → {:?} ({})", entry.rule, entry.argv, entry.why),
        );
        report.entry = Some(entry.clone());
        // Refused before anything is built (and by `plan`) where the target cannot run it.
        if let Err(e) = self.check_release_supported(&spec, &entry) {
            ev.error(Stage::Release, e.to_string());
            report.fail(Stage::Release, e);
            return Err(report);
        }
        let build = BuildSpec::for_service(&self.opts.project, &spec, source, entry.clone());
        let image = match mode {
            Mode::Build => stage!(Stage::Build, self.stages.builder.build(&build, &ev).await),
            Mode::PlanOnly => stage!(Stage::Build, self.stages.builder.planned(&build)),
        };
        report.image = Some(image.tag.clone());
        report.image_reused = Some(image.reused);
        if mode == Mode::Build {
            crate::fault::point("built");
        }
        let certs = stage!(
            Stage::Certs,
            self.stages.pki.issue(&self.opts.project, &spec.name).await
        );
        if mode == Mode::Build {
            crate::fault::point("certs");
        }
        Ok(Prepared {
            spec,
            report,
            entry,
            image,
            certs,
        })
    }

    /// A service's egress as the plan carries it: its list (the project's items included) under
    /// `[mesh] egress`, plus the OTLP endpoint iac hands the apps (their exporters reach it
    /// through the proxy like anything else).
    pub(super) fn egress_of(&self, spec: &ServiceSpec) -> EgressPolicy {
        let otlp: Vec<_> = self
            .opts
            .otel_endpoint
            .as_deref()
            .and_then(crate::egress::rule_for_endpoint)
            .into_iter()
            .collect();
        EgressPolicy::new(
            self.opts.egress,
            crate::egress::merge_rules(&otlp, &spec.egress),
        )
    }

    /// Renders every prepared service's sidecar against the mesh of all prepared services plus
    /// the members recorded from other deploys ([`Deployer::recorded_members`]: the baseline
    /// and the sandboxes). A config's digest (part of the spec hash) is taken from its render
    /// against the baseline alone (plus the member itself, for a copy): deploying or removing a
    /// sandbox never makes a pod "changed".
    #[allow(clippy::type_complexity)]
    pub(super) fn mesh_and_plan_input(
        &self,
        prepared: Vec<Prepared>,
        events: &Events,
    ) -> (
        PlanInput,
        Vec<(Prepared, String)>,
        Vec<ServiceReport>,
        MeshContext,
    ) {
        let ports = MeshPorts::default();
        if self.opts.egress == EgressMode::Open {
            events.warn(Stage::Render, crate::egress::OPEN_EGRESS_WARNING);
        }
        let mut members: Vec<MeshService> = prepared
            .iter()
            .map(|p| MeshService {
                name: p.spec.name.clone(),
                address: p.spec.name.to_string(),
                port: ports.inbound,
                app_port: app_port(&p.spec, &p.entry),
                edge: edge_of(&p.spec, &p.entry).is_some(),
                egress: self.egress_of(&p.spec),
                sandbox: None,
            })
            .collect();
        self.mark_copies(&mut members);
        let prepared_members = members.clone();
        let recorded = match self.recorded_members() {
            Ok(r) => r,
            Err(e) => {
                events.warn(
                    Stage::Render,
                    format!("rendering without the recorded baseline and sandboxes: {e}"),
                );
                Vec::new()
            }
        };
        let recorded_names: Vec<ServiceName> = recorded
            .iter()
            .filter(|m| !members.iter().any(|p| p.name == m.name))
            .map(|m| m.name.clone())
            .collect();
        members.extend(
            recorded
                .into_iter()
                .filter(|m| recorded_names.contains(&m.name)),
        );
        let mesh = Mesh {
            project: self.opts.project.clone(),
            services: members,
            ports,
            certs: CertPaths::in_container(),
        };
        let digest_mesh = |name: &ServiceName| {
            let mut m = mesh.baseline();
            if let Some(me) = mesh.service(name).filter(|s| s.sandbox.is_some()) {
                m.services.push(me.clone());
            }
            m
        };
        let mut rendered = Vec::new();
        let mut failed = Vec::new();
        let mut services = Vec::new();
        for mut p in prepared {
            let t = Instant::now();
            let span = trace_context::task_span(
                Stage::Render,
                Some(&p.spec.name),
                Some(&p.spec.slug),
                p.report.commit.as_deref(),
            );
            let result = span.in_scope(|| {
                let config = self.stages.sidecar.render(&mesh, &p.spec.name)?;
                // Without sandboxes the two meshes are the same: one render.
                let digest = if mesh.services.iter().all(|s| s.sandbox.is_none()) {
                    sha256_tagged(config.as_bytes())
                } else {
                    let baseline = self
                        .stages
                        .sidecar
                        .render(&digest_mesh(&p.spec.name), &p.spec.name)?;
                    sha256_tagged(baseline.as_bytes())
                };
                Ok::<_, crate::error::SidecarError>((config, digest))
            });
            trace_context::finish_task(&span, Stage::Render, &result);
            match result {
                Ok((config, digest)) => {
                    p.report.stages.push(StageTiming {
                        stage: Stage::Render,
                        millis: t.elapsed().as_millis() as u64,
                        ok: true,
                    });
                    services.push(PlannedService {
                        name: p.spec.name.clone(),
                        image: p.image.tag.clone(),
                        envoy_config: self.envoy_config_path(&p.spec.name),
                        envoy_config_digest: digest,
                        certs: p.certs.clone(),
                        app_port: app_port(&p.spec, &p.entry),
                        edge: edge_of(&p.spec, &p.entry),
                        env: p.spec.env.clone(),
                        replicas: p.spec.replicas,
                        egress: self.egress_of(&p.spec),
                    });
                    rendered.push((p, config));
                }
                Err(e) => {
                    p.report.stages.push(StageTiming {
                        stage: Stage::Render,
                        millis: t.elapsed().as_millis() as u64,
                        ok: false,
                    });
                    events
                        .for_service(&p.spec.name)
                        .error(Stage::Render, e.to_string());
                    p.report.fail(Stage::Render, e);
                    failed.push(p.report);
                }
            }
        }
        let input = PlanInput {
            project: self.opts.project.clone(),
            network: self.opts.network.clone(),
            envoy_image: self.opts.envoy_image.clone(),
            otel_endpoint: self.opts.otel_endpoint.clone(),
            services,
            keep: Vec::new(),
            sandbox: self.opts.sandbox.as_ref().map(|t| t.name.clone()),
        };
        let context = MeshContext {
            mesh,
            prepared: prepared_members,
            recorded: recorded_names,
        };
        (input, rendered, failed, context)
    }
}
