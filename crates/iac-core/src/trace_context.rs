//! The shape of a deploy's trace, and its W3C `traceparent` for the processes iac starts.
//!
//! A pipeline run (`deploy`, `plan`, `render`, `destroy`) is one span ([`pipeline_span`], kind
//! SERVER, named `{action} {pipeline}` as the OpenTelemetry CI/CD conventions ask); every stage of
//! every service is a child ([`task_span`], named `{stage} {service}`). The attributes follow the
//! CI/CD and VCS semantic conventions: `cicd.pipeline.name`, `cicd.pipeline.action.name`,
//! `cicd.pipeline.run.id`, `cicd.pipeline.result`; `cicd.pipeline.task.name`,
//! `cicd.pipeline.task.type`, `cicd.pipeline.task.run.id`, `cicd.pipeline.task.run.result`,
//! `error.type`; `vcs.provider.name`, `vcs.owner.name`, `vcs.repository.name`,
//! `vcs.repository.url.full`, `vcs.ref.head.name`, `vcs.ref.head.revision` where the slug or the
//! fetched source says them (a hosted slug's URL depends on configured hosts, so only its
//! provider/owner/name are set).
//!
//! These are plain `tracing` spans: this crate has no OpenTelemetry dependency. The binary
//! installs the exporter (tracing-opentelemetry) and registers, through
//! [`set_traceparent_source`], how to read the OpenTelemetry context of a span; [`traceparent`]
//! then gives the current span's `traceparent`, which backends hand to child processes (`pip`,
//! `terraform`) with [`env()`] and the [`crate::Events`] sink stamps on every event.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use sha2::{Digest, Sha256};
use tracing::Span;
use tracing::field::Empty;

use crate::name::{ProjectName, ServiceName};
use crate::slug::Slug;
use crate::source::Source;
use crate::stage::Stage;

/// The environment variable child processes read the trace context from (W3C / OTel env carriers).
pub const TRACEPARENT_ENV: &str = "TRACEPARENT";

static SOURCE: OnceLock<fn(&Span) -> Option<String>> = OnceLock::new();

/// Registers how to read a span's `traceparent` (done once by the binary when it exports traces;
/// later calls are ignored). Without it [`traceparent`] is always `None`.
pub fn set_traceparent_source(f: fn(&Span) -> Option<String>) {
    let _ = SOURCE.set(f);
}

/// `00-<trace id>-<span id>-<flags>` of the current span, when traces are exported.
pub fn traceparent() -> Option<String> {
    let f = SOURCE.get()?;
    let span = Span::current();
    if span.is_disabled() {
        return None;
    }
    f(&span)
}

/// `("TRACEPARENT", value)` for the current span, if any: `Command::envs(trace_context::env())`.
pub fn env() -> Option<(&'static str, String)> {
    traceparent().map(|tp| (TRACEPARENT_ENV, tp))
}

/// What a pipeline run does: names its span and its `cicd.pipeline.action.name`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pipeline {
    /// `iac deploy` / `POST /deploy`.
    Deploy,
    /// `iac plan`.
    Plan,
    /// `iac render`.
    Render,
    /// `iac destroy`.
    Destroy,
}

impl Pipeline {
    fn name(self) -> &'static str {
        match self {
            Pipeline::Deploy => "deploy",
            Pipeline::Plan => "plan",
            Pipeline::Render => "render",
            Pipeline::Destroy => "destroy",
        }
    }

    /// `cicd.pipeline.action.name`: BUILD, RUN or SYNC.
    fn action(self) -> &'static str {
        match self {
            Pipeline::Deploy | Pipeline::Destroy => "SYNC",
            Pipeline::Plan => "RUN",
            Pipeline::Render => "BUILD",
        }
    }
}

/// A fresh id for a pipeline or task run: 16 hex digits from the clock, the pid and a counter.
pub fn new_run_id() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let mut h = Sha256::new();
    h.update(nanos.to_le_bytes());
    h.update(std::process::id().to_le_bytes());
    h.update(COUNTER.fetch_add(1, Ordering::Relaxed).to_le_bytes());
    hex::encode(&h.finalize()[..8])
}

/// The span of one pipeline run of `project` (SERVER kind; the root of the trace unless the
/// caller is inside a span already).
pub fn pipeline_span(kind: Pipeline, project: &ProjectName) -> Span {
    let pipeline = format!("{} {project}", kind.name());
    tracing::info_span!(
        "pipeline",
        "otel.name" = %format!("{} {pipeline}", kind.action()),
        "otel.kind" = "server",
        "otel.status_code" = Empty,
        "cicd.pipeline.name" = %pipeline,
        "cicd.pipeline.action.name" = kind.action(),
        "cicd.pipeline.run.id" = %new_run_id(),
        "cicd.pipeline.result" = Empty,
        "error.type" = Empty,
        "iac.project" = %project,
    )
}

/// Records the outcome of the current pipeline span: `cicd.pipeline.result` = success or
/// failure (with `error.type` naming the failed stage, or `deploy` for a project-wide error).
pub fn finish_pipeline(ok: bool, error_type: Option<&str>) {
    let span = Span::current();
    if ok {
        span.record("cicd.pipeline.result", "success");
        span.record("otel.status_code", "ok");
    } else {
        span.record("cicd.pipeline.result", "failure");
        span.record("otel.status_code", "error");
        span.record("error.type", error_type.unwrap_or("deploy"));
    }
}

fn task_type(stage: Stage) -> &'static str {
    match stage {
        Stage::Provision | Stage::Release | Stage::Destroy | Stage::Deploy => "deploy",
        Stage::Health => "test",
        _ => "build",
    }
}

/// The span of one stage of one service (`service` `None`: a project-wide stage such as
/// provision). `slug` adds the `vcs.*` attributes it knows; `revision` the fetched commit.
pub fn task_span(
    stage: Stage,
    service: Option<&ServiceName>,
    slug: Option<&Slug>,
    revision: Option<&str>,
) -> Span {
    let name = match service {
        Some(s) => format!("{} {s}", stage.as_str()),
        None => stage.as_str().to_string(),
    };
    let span = tracing::info_span!(
        "task",
        "otel.name" = %name,
        "otel.status_code" = Empty,
        "cicd.pipeline.task.name" = %name,
        "cicd.pipeline.task.type" = task_type(stage),
        "cicd.pipeline.task.run.id" = %new_run_id(),
        "cicd.pipeline.task.run.result" = Empty,
        "error.type" = Empty,
        "iac.stage" = stage.as_str(),
        "iac.service" = Empty,
        "vcs.provider.name" = Empty,
        "vcs.owner.name" = Empty,
        "vcs.repository.name" = Empty,
        "vcs.repository.url.full" = Empty,
        "vcs.ref.head.name" = Empty,
        "vcs.ref.head.revision" = Empty,
    );
    if let Some(s) = service {
        span.record("iac.service", s.as_str());
    }
    if let Some(slug) = slug {
        record_slug(&span, slug);
    }
    if let Some(r) = revision {
        span.record("vcs.ref.head.revision", r);
    }
    span
}

fn record_slug(span: &Span, slug: &Slug) {
    span.record("vcs.repository.name", slug.repo_name().as_str());
    if let Some(r) = slug.reference() {
        span.record("vcs.ref.head.name", r);
    }
    match slug {
        Slug::Hosted { forge, owner, .. } => {
            let provider = match forge {
                crate::slug::Forge::GitHub => "github",
                crate::slug::Forge::GitLab => "gitlab",
                crate::slug::Forge::Bitbucket => "bitbucket",
            };
            span.record("vcs.provider.name", provider);
            span.record("vcs.owner.name", owner.as_str());
        }
        Slug::GitHttps { url, .. } => {
            span.record("vcs.repository.url.full", url.as_str());
        }
        Slug::GitFile { path, .. } => {
            span.record(
                "vcs.repository.url.full",
                format!("file://{}", path.display()).as_str(),
            );
        }
        Slug::Path { dir } => {
            span.record(
                "vcs.repository.url.full",
                format!("file://{}", dir.display()).as_str(),
            );
        }
    }
}

/// Records a stage's outcome on its span: `cicd.pipeline.task.run.result` success/failure,
/// `error.type` = the failed stage (low cardinality: `fetch`, `build`, …), and the fetched commit
/// when the output is a [`Source`].
pub fn finish_task<T: 'static, E>(span: &Span, stage: Stage, result: &Result<T, E>) {
    match result {
        Ok(v) => {
            span.record("cicd.pipeline.task.run.result", "success");
            span.record("otel.status_code", "ok");
            if let Some(src) = (v as &dyn std::any::Any).downcast_ref::<Source>()
                && let Some(c) = &src.commit
            {
                span.record("vcs.ref.head.revision", c.as_str());
            }
        }
        Err(_) => {
            span.record("cicd.pipeline.task.run.result", "failure");
            span.record("otel.status_code", "error");
            span.record("error.type", stage.as_str());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_ids_are_distinct_hex() {
        let a = new_run_id();
        let b = new_run_id();
        assert_ne!(a, b);
        assert_eq!(a.len(), 16);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
    }

    #[test]
    fn no_source_registered_means_no_traceparent() {
        // This test binary never registers a source.
        assert_eq!(traceparent(), None);
        assert_eq!(env(), None);
    }
}
