//! The release step of a deploy: after the images are built and the stack planned, before the
//! provisioner creates or replaces any pod, each service that declares a release command and whose
//! pod is about to be created or replaced runs it once ([`crate::Provisioner::run_release`]). A
//! service whose release fails is taken out of the stack and kept as it runs now (its old pods keep
//! serving); its peers go on.
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
use crate::report::{ServiceReport, StageTiming};
use crate::repos::ServiceSpec;
use crate::stack::{Action, Stack};
use crate::stages::ReleaseJob;
use crate::trace_context;

use super::Deployer;
use super::prepare::Prepared;

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

    /// Runs the release commands `stack` calls for (services created or replaced by it), at most
    /// `parallelism` at a time. Returns the stack without the services whose release failed
    /// (moved to `keep`), the services still going, and the failed services' reports.
    pub(super) async fn run_releases(
        &self,
        mut stack: Stack,
        services: Vec<Prepared>,
        events: &Events,
    ) -> (Stack, Vec<Prepared>, Vec<ServiceReport>) {
        if services.iter().all(|p| p.entry.release.is_none()) {
            return (stack, services, Vec::new());
        }
        // Which pods this apply would create or replace: only those run their release.
        let changes = match self.stages.provisioner.diff(&stack).await {
            Ok(c) => c,
            Err(e) => {
                // Without knowing, no new pod may start before its release: those services fail.
                let why = format!("cannot tell whether the service changed: {e}");
                return self.fail_releases(stack, services, events, |p| {
                    p.entry.release.is_some().then(|| why.clone())
                });
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
        let n = self.opts.parallelism.max(1);
        let ran: Vec<(Prepared, bool)> = futures::stream::iter(jobs)
            .map(|(p, job)| self.run_release(p, job, events))
            .buffer_unordered(n)
            .collect()
            .await;
        let mut failed = Vec::new();
        for (p, ok) in ran {
            if ok {
                rest.push(p);
            } else {
                stack.services.retain(|s| s.service != p.spec.name);
                stack.keep.push(p.spec.name.clone());
                failed.push(p.report);
            }
        }
        stack.keep.sort();
        stack.keep.dedup();
        (stack, rest, failed)
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
