//! [`ControlPlaneBackend`]: what the admin API needs from the rest of the program. The binary
//! implements it over the real `Deployer` (one per project); tests use the mockall
//! `MockControlPlaneBackend` (feature `mocks`). The API itself owns validation, auth, the
//! deployment store and the per-project 409 rule, so implementations only do the work.

use async_trait::async_trait;
use futures::stream::BoxStream;
use iac_core::{
    DeployReport, Events, FetchError, HealthReport, LogLine, LogQuery, ProjectName, RefList,
    RunningService, ServiceName, ServiceSpec, Slug,
};
use serde::{Deserialize, Serialize};

use super::error::ApiError;

/// A validated deploy: the project and its services (names unique, slugs parsed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeployInput {
    /// The project the services are deployed into.
    pub project: ProjectName,
    /// The services asked for, in request order.
    pub services: Vec<ServiceSpec>,
    /// The sandbox they are deployed in as copies (`None`: the baseline).
    pub sandbox: Option<iac_core::deployer::SandboxTarget>,
}

/// One running service and what its health check said just now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceStatus {
    /// What the provisioner knows about the running service (endpoint, image, spec hash, state).
    #[serde(flatten)]
    pub running: RunningService,
    /// `http://<edge>/`: where a person opens the app without a client certificate, when the
    /// service has an edge.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// A health probe made for this request.
    pub health: HealthReport,
}

impl ServiceStatus {
    /// A running service and its health; `url` from its edge.
    pub fn new(running: RunningService, health: HealthReport) -> ServiceStatus {
        ServiceStatus {
            url: running.edge.map(iac_core::edge_url),
            running,
            health,
        }
    }
}

/// What `POST /plan` answers: what a deploy would do, per service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PlanPreview {
    /// The project planned.
    pub project: String,
    /// Per service: `create`, `replace`, `repair`, `unchanged` or `remove` (a running service
    /// the request does not name), and why.
    pub changes: Vec<PlannedChange>,
    /// Services that failed before they could be planned (fetch, entry resolution, …).
    pub failures: Vec<PlanFailure>,
}

/// One service's planned change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PlannedChange {
    /// The service.
    pub service: String,
    /// `create`, `replace`, `repair`, `unchanged` or `remove`.
    pub action: String,
    /// Why (e.g. "not running", "spec changed").
    pub reason: String,
}

/// A service that could not be planned.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PlanFailure {
    /// The service.
    pub service: String,
    /// The stage that failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage: Option<String>,
    /// What went wrong.
    pub error: String,
}

impl PlanPreview {
    /// The preview of a deployer's plan outcome.
    pub fn from_outcome(project: &ProjectName, o: &iac_core::PlanOutcome) -> PlanPreview {
        PlanPreview {
            project: project.to_string(),
            changes: o
                .changes
                .iter()
                .map(|c| PlannedChange {
                    service: c.service.to_string(),
                    action: c.action.as_str().to_string(),
                    reason: c.reason.clone(),
                })
                .collect(),
            failures: o
                .failures
                .iter()
                .map(|f| PlanFailure {
                    service: f.service.to_string(),
                    stage: f.failed_stage.map(|s| s.as_str().to_string()),
                    error: f.error.clone().unwrap_or_default(),
                })
                .collect(),
        }
    }
}

/// A stream of log lines; an `Err` item ends the stream with that error.
pub type LogStream = BoxStream<'static, Result<LogLine, ApiError>>;

/// The operations behind the admin API (HTTP and gRPC).
#[cfg_attr(any(test, feature = "mocks"), mockall::automock)]
#[async_trait]
pub trait ControlPlaneBackend: Send + Sync {
    /// The project used when a request names none.
    fn default_project(&self) -> ProjectName;

    /// Runs one deploy to completion, emitting progress on `events`. A service failing is a
    /// report with `ok: false`, not an `Err`; `Err` is for "could not even start" (the stream
    /// then ends with an error line instead of a report). Never called twice concurrently for
    /// the same project from this server: the API answers 409 first (another process, such as
    /// a CLI deploy, may still take the project's deploy lock first: the deploy then waits).
    async fn deploy(&self, input: DeployInput, events: Events) -> Result<DeployReport, ApiError>;

    /// Removes everything the project runs; returns the removed objects' names.
    async fn destroy(&self, project: ProjectName, events: Events) -> Result<Vec<String>, ApiError>;

    /// The project's running services, each freshly health-checked.
    async fn services(&self, project: ProjectName) -> Result<Vec<ServiceStatus>, ApiError>;

    /// A service's logs (through its Envoy and agent). Unknown service → `ApiError::not_found`.
    async fn logs(
        &self,
        project: ProjectName,
        service: ServiceName,
        query: LogQuery,
    ) -> Result<LogStream, ApiError>;

    /// What a deploy of `input` would change (`POST /plan`), without building or running
    /// anything. Backends that cannot plan keep this default: 501.
    async fn plan(&self, input: DeployInput) -> Result<PlanPreview, ApiError> {
        Err(ApiError::new(
            501,
            "not_implemented",
            format!("project {}: this control plane cannot plan", input.project),
        ))
    }

    /// Reachability of the container engine: `Ok(version)` or `Err(why)`.
    async fn engine_ping(&self) -> Result<String, String>;

    /// The branches and tags of `slug`'s repository (`GET /refs`), with the policy of
    /// API-originated fetches (private addresses refused, deadline, caps). The slug policy of the
    /// API (`allow_local_sources`) is checked before this is called. Backends that cannot list
    /// refs keep this default: 501.
    async fn refs(&self, slug: Slug) -> Result<RefList, ApiError> {
        Err(ApiError::new(
            501,
            "not_implemented",
            format!("{slug}: this control plane cannot list branches and tags"),
        ))
    }
}

/// The API error of a failed ref listing: a refused private address is 403
/// (`source_refused`), the fetch deadline 504 (`deadline_exceeded`), a fetcher that cannot list
/// refs 501, and anything else — the git host failed, a cap was hit, no repository — 502
/// (`refs_failed`). The message always names the slug.
pub fn refs_error(e: FetchError) -> ApiError {
    let (status, code) = match &e {
        FetchError::Refused { .. } => (403, "source_refused"),
        FetchError::Deadline { .. } => (504, "deadline_exceeded"),
        FetchError::Unsupported { .. } => (501, "not_implemented"),
        _ => (502, "refs_failed"),
    };
    ApiError::new(status, code, e.to_string())
}
