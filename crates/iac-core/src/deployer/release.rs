//! The release step of a deploy: after the images are built and the stack planned, each service
//! that declares a release command and whose pod is about to be created or replaced runs it once,
//! in a one-off pod of its new spec ([`crate::Provisioner::run_release`]), before its new pods
//! exist. A service whose release fails is taken out of the stack and kept as it runs now (its old
//! pods keep serving); its peers go on.
//!
//! The order within one deploy: the services without a release to run are applied and proved
//! first, then the releases run, then the services whose release succeeded are applied. A release
//! usually migrates a database or records a version in a peer; deployed together with that peer
//! (one repos file holding the app and its store), it finds the peer serving, as on Heroku, Fly or
//! Render, where the database exists before the app's release runs. Releases of several services
//! run in parallel (at most `parallelism`), so one release must not depend on another service's
//! release having run.
//!
//! Unchanged services (same spec hash, hence the same image) run nothing: their release already ran
//! when that spec was deployed, and a release is for a new version, not for every deploy command.
//! Repairs (a broken pod replaced with the same spec) do not run it either, for the same reason.

use std::time::Instant;

use futures::StreamExt;
use tracing::Instrument;

use crate::entry::Entry;
use crate::error::ReleaseError;
use crate::event::{Events, Stage};
use crate::name::ServiceName;
use crate::report::{ServiceReport, StageTiming};
use crate::repos::ServiceSpec;
use crate::stack::{Action, Stack};
use crate::stages::ReleaseJob;
use crate::trace_context;

use super::prepare::Prepared;
use super::{ApplyOutcome, Deployer};

impl Deployer {
    /// Refuses, before anything is built, a release command on a target that cannot run one.
    pub(super) fn check_release_supported(
        &self,
        spec: &ServiceSpec,
        entry: &Entry,
    ) -> Result<(), ReleaseError> {
        let Some(release) = &entry.release else {
            return Ok(());
        };
        if self.stages.provisioner.runs_releases() {
            return Ok(());
        }
        Err(ReleaseError::Unsupported {
            provisioner: self.stages.provisioner.name().to_string(),
            service: spec.name.to_string(),
            command: release.line(),
            origin: release.origin.clone(),
        })
    }

    /// Applies `stack` and proves `services`, running the release commands it calls for (services
    /// created or replaced by it that declare one) in two phases:
    ///
    /// 1. every service without a release to run is applied and proved first (the services with
    ///    one are kept as they run now), so a release finds the peers it may need — its database,
    ///    its cache, a service of the same deploy — up and serving, as on a platform where the
    ///    database exists before the app's release runs;
    /// 2. the releases run, at most `parallelism` at a time, each in a one-off pod of its new
    ///    spec; then the services whose release succeeded are applied and proved (the phase-1
    ///    services are kept as they now run). A service whose release failed is never applied:
    ///    its old pods serve on, its report says why.
    ///
    /// Without a release to run it is one apply. Returns what [`Deployer::apply_and_prove`]
    /// returns, over both phases, the failed releases' reports included.
    pub(super) async fn apply_with_releases(
        &self,
        stack: Stack,
        services: Vec<Prepared>,
        context: &super::prepare::MeshContext,
        events: &Events,
    ) -> ApplyOutcome {
        if services.iter().all(|p| p.entry.release.is_none()) {
            return self.apply_and_prove(stack, services, context, events).await;
        }
        if let Some(t) = &self.opts.sandbox {
            // A release (a migration, typically) would run against the baseline's peers and
            // data, which a sandbox must never change: copies start without theirs.
            for p in services.iter().filter(|p| p.entry.release.is_some()) {
                events.for_service(&p.spec.name).warn(
                    Stage::Release,
                    format!(
                        "sandbox {}: the release command is not run for a sandbox copy (it would act on the baseline's data); run it by hand if the copy needs it",
                        t.name
                    ),
                );
            }
            return self.apply_and_prove(stack, services, context, events).await;
        }
        // Which pods this apply would create or replace: only those run their release.
        let changes = match self.stages.provisioner.diff(&stack).await {
            Ok(c) => c,
            Err(e) => {
                // Without knowing, no new pod may start before its release: those services fail.
                let why = format!("cannot tell whether the service changed: {e}");
                let (stack, rest, failed) = self.fail_releases(stack, services, events, |p| {
                    p.entry.release.is_some().then(|| why.clone())
                });
                return with_failed(
                    self.apply_and_prove(stack, rest, context, events).await,
                    failed,
                );
            }
        };
        let changed = |p: &Prepared| {
            changes.iter().any(|c| {
                c.service == p.spec.name && matches!(c.action, Action::Create | Action::Replace)
            })
        };
        let mut jobs = Vec::new();
        let mut rest = Vec::new();
        for p in services {
            let pod = stack.services.iter().find(|s| s.service == p.spec.name);
            match (&p.entry.release, pod) {
                (Some(release), Some(pod)) if changed(&p) => {
                    let job = ReleaseJob {
                        service: p.spec.name.clone(),
                        release: release.clone(),
                        network: stack.network.clone(),
                        pod: pod.clone(),
                        timeout: self.opts.release_timeout,
                    };
                    jobs.push((p, job));
                }
                (Some(release), _) => {
                    events.for_service(&p.spec.name).info(
                        Stage::Release,
                        format!(
                            "`{}` not run: the service is unchanged (its release ran when this version was deployed)",
                            release.line()
                        ),
                    );
                    rest.push(p);
                }
                (None, _) => rest.push(p),
            }
        }
        if jobs.is_empty() {
            return self.apply_and_prove(stack, rest, context, events).await;
        }

        // Phase 1: the services without a release to run.
        let released: Vec<ServiceName> = jobs.iter().map(|(p, _)| p.spec.name.clone()).collect();
        let (first, second) = split_stack(&stack, &released);
        let mut reports = Vec::new();
        let mut removed = Vec::new();
        if !first.services.is_empty() || !rest.is_empty() {
            events.info(
                Stage::Release,
                format!(
                    "{} service(s) without a release to run go first, so the release(s) of {} find their peers up",
                    first.services.len(),
                    names(&released)
                ),
            );
            match self.apply_and_prove(first, rest, context, events).await {
                Ok((r, gone)) => {
                    reports.extend(r);
                    removed.extend(gone);
                }
                Err((why, mut r)) => {
                    // Nothing of the second phase starts: those services fail with the apply.
                    for (mut p, _) in jobs {
                        p.report
                            .fail(Stage::Provision, format!("not started: {why}"));
                        r.push(p.report);
                    }
                    return Err((why, r));
                }
            }
        }

        // Phase 2: the releases, then the services whose release succeeded.
        let n = self.opts.parallelism.max(1);
        let ran: Vec<(Prepared, bool)> = futures::stream::iter(jobs)
            .map(|(p, job)| self.run_release(p, job, events))
            .buffer_unordered(n)
            .collect()
            .await;
        let mut second = second;
        let mut go = Vec::new();
        for (p, ok) in ran {
            if ok {
                go.push(p);
            } else {
                second.services.retain(|s| s.service != p.spec.name);
                second.keep.push(p.spec.name.clone());
                reports.push(p.report);
            }
        }
        second.keep.sort();
        second.keep.dedup();
        if go.is_empty() {
            return Ok((reports, removed));
        }
        match self.apply_and_prove(second, go, context, events).await {
            Ok((r, gone)) => {
                reports.extend(r);
                removed.extend(gone);
                Ok((reports, removed))
            }
            Err((why, r)) => {
                reports.extend(r);
                Err((why, reports))
            }
        }
    }

    /// Runs one service's release, timing and reporting it; `false` when it failed.
    async fn run_release(
        &self,
        mut p: Prepared,
        job: ReleaseJob,
        events: &Events,
    ) -> (Prepared, bool) {
        let ev = events.for_service(&p.spec.name);
        let span = trace_context::task_span(
            Stage::Release,
            Some(&p.spec.name),
            Some(&p.spec.slug),
            p.report.commit.as_deref(),
        );
        ev.info(
            Stage::Release,
            format!(
                "running `{}` ({}) in {} …",
                job.command_line(),
                job.release.origin,
                job.pod.app.image
            ),
        );
        let t = Instant::now();
        let r = self
            .stages
            .provisioner
            .run_release(&job, &ev)
            .instrument(span.clone())
            .await;
        trace_context::finish_task(&span, Stage::Release, &r);
        let millis = t.elapsed().as_millis() as u64;
        p.report.stages.push(StageTiming {
            stage: Stage::Release,
            millis,
            ok: r.is_ok(),
        });
        match r {
            Ok(_) => {
                ev.info(
                    Stage::Release,
                    format!(
                        "`{}` succeeded in {:.1}s",
                        job.command_line(),
                        millis as f64 / 1000.0
                    ),
                );
                (p, true)
            }
            Err(e) => {
                let msg = format!("{e}; the new version was not started and what runs now is kept");
                ev.error(Stage::Release, msg.clone());
                p.report.fail(Stage::Release, msg);
                (p, false)
            }
        }
    }

    /// Fails the services `why` names (the others go on) and takes them out of the stack.
    fn fail_releases(
        &self,
        mut stack: Stack,
        services: Vec<Prepared>,
        events: &Events,
        why: impl Fn(&Prepared) -> Option<String>,
    ) -> (Stack, Vec<Prepared>, Vec<ServiceReport>) {
        let mut rest = Vec::new();
        let mut failed = Vec::new();
        for mut p in services {
            match why(&p) {
                Some(w) => {
                    events
                        .for_service(&p.spec.name)
                        .error(Stage::Release, w.clone());
                    p.report.fail(Stage::Release, w);
                    stack.services.retain(|s| s.service != p.spec.name);
                    stack.keep.push(p.spec.name.clone());
                    failed.push(p.report);
                }
                None => rest.push(p),
            }
        }
        stack.keep.sort();
        stack.keep.dedup();
        (stack, rest, failed)
    }
}

/// The two phases of a deploy with releases to run: the stack without the `released` services
/// (kept as they run now), and the stack of only those (every other service kept).
fn split_stack(stack: &Stack, released: &[ServiceName]) -> (Stack, Stack) {
    let mut first = stack.clone();
    first.services.retain(|s| !released.contains(&s.service));
    first.keep.extend(released.iter().cloned());
    first.keep.sort();
    first.keep.dedup();
    let mut second = stack.clone();
    second.keep.extend(
        second
            .services
            .iter()
            .filter(|s| !released.contains(&s.service))
            .map(|s| s.service.clone()),
    );
    second.services.retain(|s| released.contains(&s.service));
    second.keep.sort();
    second.keep.dedup();
    (first, second)
}

/// `a, b and c`.
fn names(list: &[ServiceName]) -> String {
    let names: Vec<&str> = list.iter().map(|n| n.as_str()).collect();
    match names.split_last() {
        Some((last, rest)) if !rest.is_empty() => format!("{} and {last}", rest.join(", ")),
        _ => names.join(""),
    }
}

/// `applied`'s reports with the `failed` ones added, whichever way the apply went.
fn with_failed(applied: ApplyOutcome, failed: Vec<ServiceReport>) -> ApplyOutcome {
    match applied {
        Ok((mut r, removed)) => {
            r.extend(failed);
            Ok((r, removed))
        }
        Err((why, mut r)) => {
            r.extend(failed);
            Err((why, r))
        }
    }
}
