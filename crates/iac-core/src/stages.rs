//! The stage traits. Each has one job; `iac-backends` has the default implementations (one file
//! per backend) and tests use the mockall fakes (`Mock*`, behind the `mocks` feature).
//!
//! | trait | job | default backend |
//! |---|---|---|
//! | [`SourceFetcher`] | slug → source tree on disk | `iac_backends::fetch::{tarball,git,chain,local}` |
//! | [`EntryResolver`] | source → how main() runs | `iac_backends::entry` (python, binary providers) |
//! | [`ImageBuilder`] | source + entry → image | `iac_backends::build::docker` |
//! | [`Pki`] | service → certificate files | `iac_backends::pki::dev_ca` |
//! | [`SidecarRenderer`] | mesh + service → Envoy config (pure) | `iac_backends::sidecar::envoy` |
//! | [`Provisioner`] | stack → running containers (and release commands) | `iac_backends::provision::{docker,terraform}` |
//! | [`HealthProber`] | endpoint → SERVING? over mTLS | `iac_backends::health::grpc` |
//! | [`LogStreamer`] | endpoint → log lines over mTLS | `iac_backends::health::grpc` |
//! | [`AuthVerifier`] | bearer token → principal | `iac_backends::auth::supabase` |

use async_trait::async_trait;
use futures::stream::BoxStream;
use serde::{Deserialize, Serialize};

use crate::entry::{Entry, ReleaseCommand};
use crate::error::*;
use crate::event::Events;
use crate::health::{HealthReport, LogLine, LogQuery, ProbeTarget};
use crate::image::{BuildSpec, ImageRef};
use crate::mesh::{IssuedCerts, Mesh};
use crate::name::{ProjectName, ServiceName};
use crate::refs::RefList;
use crate::slug::Slug;
use crate::source::Source;
use crate::stack::{Applied, Change, NetworkSpec, RunningService, ServiceStack, Stack};

/// Brings a slug's source tree onto local disk.
#[cfg_attr(any(test, feature = "mocks"), mockall::automock)]
#[async_trait]
pub trait SourceFetcher: Send + Sync {
    /// The source tree of `slug` (from the cache when this commit was fetched before).
    async fn fetch(&self, slug: &Slug, events: &Events) -> Result<Source, FetchError>;

    /// The branches and tags of `slug`'s repository and the branch its `HEAD` points at (the
    /// slug's `#REF` is ignored), without fetching any objects. Fetchers that cannot list refs
    /// keep this default, which says so.
    async fn list_refs(&self, slug: &Slug) -> Result<RefList, FetchError> {
        Err(FetchError::Unsupported {
            slug: slug.to_string(),
            why: "this source fetcher cannot list branches and tags".to_string(),
        })
    }
}

/// Decides how a source tree's main() is run. Pure apart from reading the tree.
#[cfg_attr(any(test, feature = "mocks"), mockall::automock)]
pub trait EntryResolver: Send + Sync {
    /// `entrypoint` is the repos file's override, if any (it wins over everything).
    fn resolve(&self, source: &Source, entrypoint: Option<String>) -> Result<Entry, EntryError>;
}

/// Builds (or reuses) a container image for one service.
#[cfg_attr(any(test, feature = "mocks"), mockall::automock)]
#[async_trait]
pub trait ImageBuilder: Send + Sync {
    /// The image this spec would produce, without building: tag and key are pure functions of
    /// the inputs, so `plan` can compare against what runs.
    fn planned(&self, spec: &BuildSpec) -> Result<ImageRef, BuildError>;
    /// Builds the image, or reuses one with the same build key (`ImageRef::reused`).
    async fn build(&self, spec: &BuildSpec, events: &Events) -> Result<ImageRef, BuildError>;
}

/// Issues the certificates of the mesh.
#[cfg_attr(any(test, feature = "mocks"), mockall::automock)]
#[async_trait]
pub trait Pki: Send + Sync {
    /// A leaf for `service` (SAN `<service>`, `<service>.<project>`), reissued when missing,
    /// expiring or signed by another CA. Returns host paths.
    async fn issue(
        &self,
        project: &ProjectName,
        service: &ServiceName,
    ) -> Result<IssuedCerts, PkiError>;
    /// The control plane's client identity.
    async fn client_identity(&self) -> Result<IssuedCerts, PkiError>;
}

/// Renders one service's sidecar config. Must be a pure function of its inputs.
#[cfg_attr(any(test, feature = "mocks"), mockall::automock)]
pub trait SidecarRenderer: Send + Sync {
    /// The sidecar config of `service` within `mesh` (its peers are the mesh's other services).
    fn render(&self, mesh: &Mesh, service: &ServiceName) -> Result<String, SidecarError>;
}

/// How the reload of one sidecar went ([`Provisioner::reload_sidecars`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReloadOutcome {
    /// Its Envoy runs with the new config file and answers.
    Reloaded,
    /// The sidecar is not running: it reads the file when it starts.
    NotRunning,
    /// Envoy refused the new config (`--mode validate`): the running Envoy keeps the old one.
    Refused(String),
    /// The reload left the sidecar without a working Envoy (or it did not say how it went).
    Unhealthy(String),
}

/// The reload of one service's sidecar.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SidecarReload {
    /// The service.
    pub service: ServiceName,
    /// How it went.
    pub outcome: ReloadOutcome,
}

/// Makes the engine match a [`Stack`].
#[cfg_attr(any(test, feature = "mocks"), mockall::automock)]
#[async_trait]
pub trait Provisioner: Send + Sync {
    /// `docker`, `terraform`, …
    fn name(&self) -> &'static str;
    /// What `apply` would do, without doing it.
    async fn diff(&self, stack: &Stack) -> Result<Vec<Change>, ProvisionError>;
    /// Reconciles the engine with `stack`. Replacements are health-gated through `gate` where
    /// the backend can do it.
    ///
    /// **`Err` versus a per-service error.** `Err` means the apply as a whole could not run or
    /// did not finish, so nothing can be said per service: the stack is invalid for this backend
    /// (e.g. a limit it cannot enforce), the engine is unreachable, the project's network cannot
    /// be created, the current containers cannot be listed, or (Terraform, which applies
    /// everything at once) a `terraform` step failed. The Deployer then fails every service of
    /// the stack with that error. `Ok` means each service of the stack was attempted on its
    /// own: every one has an [`crate::AppliedService`] whose `error` says why *that* service
    /// failed (its pair could not be created or started, a replacement's cleanup failed, …),
    /// while its peers may have succeeded; a replacement whose new pair failed the `gate` is
    /// `Action::RolledBack` with the gate's `health`, not an error.
    async fn apply(
        &self,
        stack: &Stack,
        gate: std::sync::Arc<dyn HealthProber>,
        events: &Events,
    ) -> Result<Applied, ProvisionError>;
    /// Removes everything labelled with the project. Idempotent. Returns what was removed.
    async fn destroy(
        &self,
        project: &ProjectName,
        events: &Events,
    ) -> Result<Vec<String>, ProvisionError>;
    /// Whether this backend keeps a sandbox's copies beside the baseline (reads
    /// [`Stack::sandbox`]). A backend that does not would take a sandbox stack for the whole
    /// project and remove the baseline, so the deployer refuses sandboxes unless this is `true`.
    fn runs_sandboxes(&self) -> bool {
        false
    }

    /// Removes one sandbox's copies of the project ([`crate::sandbox`]), nothing else: the
    /// baseline's objects are not touched. Idempotent. Returns what was removed. Backends that
    /// cannot run sandboxes refuse.
    async fn destroy_sandbox(
        &self,
        project: &ProjectName,
        sandbox: &crate::sandbox::SandboxName,
        events: &Events,
    ) -> Result<Vec<String>, ProvisionError> {
        let _ = (project, events);
        Err(ProvisionError::Invalid(format!(
            "the {} provisioner does not run sandboxes (sandbox {sandbox}); expected the docker provisioner",
            self.name()
        )))
    }
    /// Makes the sidecars of `services` load their rewritten config files (new sandbox
    /// routes) without touching their app containers: each new config is validated by Envoy
    /// first, and the outcome of each is returned ([`SidecarReload`]). Backends that cannot
    /// reload refuse, and the sidecars keep their routes until replaced.
    async fn reload_sidecars(
        &self,
        project: &ProjectName,
        services: &[ServiceName],
        events: &Events,
    ) -> Result<Vec<SidecarReload>, ProvisionError> {
        let _ = (project, services, events);
        Err(ProvisionError::Invalid(format!(
            "the {} provisioner cannot reload sidecars in place",
            self.name()
        )))
    }
    /// Services running in the project now, with their mTLS endpoints.
    async fn running(&self, project: &ProjectName) -> Result<Vec<RunningService>, ProvisionError>;
    /// Whether [`Provisioner::run_release`] can run release commands on this target. Services
    /// that declare one are refused at plan time by targets that cannot.
    fn runs_releases(&self) -> bool {
        false
    }
    /// Runs a service's release command to its end in a one-off container of the new image, as
    /// confined as the app's and with the app's environment and mesh access, stopped at
    /// `job.timeout`; whatever it created is removed on every path. `Ok` only for exit 0.
    async fn run_release(
        &self,
        job: &ReleaseJob,
        events: &Events,
    ) -> Result<ReleaseOutcome, ReleaseError> {
        let _ = events;
        Err(ReleaseError::Unsupported {
            provisioner: self.name().to_string(),
            service: job.service.to_string(),
            command: job.command_line(),
            origin: job.release.origin.clone(),
        })
    }
}

/// One service's release command, as [`Provisioner::run_release`] runs it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReleaseJob {
    /// The service.
    pub service: ServiceName,
    /// The command and where it is declared.
    pub release: ReleaseCommand,
    /// The project's network (the release may run before any pod of the project exists).
    pub network: NetworkSpec,
    /// The service's planned pod: the release runs from its app container's image, environment,
    /// privileges and limits, in a network namespace set up like its sidecar's.
    pub pod: ServiceStack,
    /// How long it may run before it is stopped.
    pub timeout: std::time::Duration,
}

impl ReleaseJob {
    /// The command as one line, for messages.
    pub fn command_line(&self) -> String {
        self.release.line()
    }
}

/// A release command that exited 0.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseOutcome {
    /// The last lines of its output (bounded).
    pub tail: String,
}

/// Asks a service's agent, through its Envoy over mTLS, whether it is serving.
#[cfg_attr(any(test, feature = "mocks"), mockall::automock)]
#[async_trait]
pub trait HealthProber: Send + Sync {
    /// Never fails: unreachable is a [`crate::HealthState`] with the reason in `detail`.
    async fn check(&self, target: &ProbeTarget) -> HealthReport;
}

/// Streams a service's agent logs, through its Envoy over mTLS.
#[cfg_attr(any(test, feature = "mocks"), mockall::automock)]
#[async_trait]
pub trait LogStreamer: Send + Sync {
    /// Opens the log stream `query` asks for; each item is one line or the error that ended it.
    async fn stream(
        &self,
        target: &ProbeTarget,
        query: LogQuery,
    ) -> Result<BoxStream<'static, Result<LogLine, ProbeError>>, ProbeError>;
}

/// Who a verified token belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Principal {
    /// `sub` claim, or `service_role` for service keys.
    pub subject: String,
    /// `role` claim (`service_role` for service keys).
    pub role: String,
    /// `email` claim, when present.
    pub email: Option<String>,
    /// How it was verified, e.g. "jwt ES256 (jwks) + supabase /auth/v1/user".
    pub method: String,
    /// Every claim of the verified token (a JWT's payload), for rules on claims such as
    /// `app_metadata.projects`; empty for opaque keys and for callers not identified by a token.
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    pub claims: serde_json::Map<String, serde_json::Value>,
}

impl Principal {
    /// The claim at a dotted path (`app_metadata.projects`), if the token carries it.
    pub fn claim(&self, path: &str) -> Option<&serde_json::Value> {
        let mut parts = path.split('.');
        let mut v = self.claims.get(parts.next()?)?;
        for part in parts {
            v = v.as_object()?.get(part)?;
        }
        Some(v)
    }
}

/// Verifies a bearer credential and authorizes it.
#[cfg_attr(any(test, feature = "mocks"), mockall::automock)]
#[async_trait]
pub trait AuthVerifier: Send + Sync {
    /// The principal `bearer` (the token after `Bearer `) belongs to, if it verifies and is
    /// allowed; [`AuthError::status`] says which HTTP status a refusal is.
    async fn verify(&self, bearer: &str) -> Result<Principal, AuthError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_claim_is_found_by_its_dotted_path_and_only_there() {
        let claims = serde_json::json!({
            "sub": "u1",
            "app_metadata": {"projects": ["demo"], "provider": "email"},
            "flat.key": true,
        });
        let p = Principal {
            subject: "u1".into(),
            role: "authenticated".into(),
            email: None,
            method: "test".into(),
            claims: claims.as_object().unwrap().clone(),
        };
        assert_eq!(
            p.claim("app_metadata.projects"),
            Some(&serde_json::json!(["demo"]))
        );
        assert_eq!(p.claim("sub"), Some(&serde_json::json!("u1")));
        assert_eq!(p.claim("app_metadata.missing"), None);
        assert_eq!(p.claim("sub.deeper"), None, "a string has no fields");
        assert_eq!(p.claim("flat.key"), None, "a dot always means nesting");
        assert_eq!(p.claim(""), None);
    }
}
