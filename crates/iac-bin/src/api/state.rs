//! What the admin API's HTTP routes and gRPC service share: the handler state [`AppState`] and the
//! validation of a deploy request (`validate_deploy`: the caller's grant on the project, one
//! project, unique names, the slug policy, the service limit), so neither transport depends on
//! the other.

use std::sync::Arc;
use std::time::Instant;

use iac_core::{AuthVerifier, Expose, ProjectName, ServiceName, ServiceSpec, Slug};
use tokio_util::sync::CancellationToken;

use super::ServeConfig;
use super::authz::{AccessPolicy, Action, Caller};
use super::backend::{ControlPlaneBackend, DeployInput};
use super::deployments::Deployments;
use super::error::ApiError;
use super::ratelimit::FailureLimiter;
use super::schema::DeployRequest;

/// Everything a handler needs.
#[derive(Clone)]
pub struct AppState {
    pub(crate) backend: Arc<dyn ControlPlaneBackend>,
    pub(crate) auth: Arc<dyn AuthVerifier>,
    pub(crate) deployments: Deployments,
    pub(crate) cfg: Arc<ServeConfig>,
    /// The served OpenAPI document ([`super::openapi`]).
    pub(crate) openapi: Arc<serde_json::Value>,
    /// Cancelled at shutdown: ends `follow` log streams (deploy streams run to their end).
    pub(crate) shutdown: CancellationToken,
    pub(crate) server_uid: u32,
    pub(crate) started: Instant,
    /// Who may do what to which project (`[serve.projects]`, `project_claim`).
    pub(crate) access: Arc<AccessPolicy>,
    /// Failed authentications per client (`auth_failure_limit`).
    pub(crate) failures: Arc<FailureLimiter>,
    /// The web console: its sessions (cookie authentication of the API too) and templates.
    pub(crate) console: Arc<crate::api::console::Console>,
}

/// `project` as the document describes it ([`super::schema::PROJECT_PATTERN`]): absent or empty → the
/// server's default; otherwise exactly a DNS label (no trimming).
pub(crate) fn project_or_default(
    st: &AppState,
    project: Option<&str>,
) -> Result<ProjectName, ApiError> {
    match project.filter(|p| !p.is_empty()) {
        None => Ok(st.backend.default_project()),
        Some(p) => {
            ProjectName::new(p).map_err(|e| ApiError::unprocessable(format!("project: {e}")))
        }
    }
}

/// Two items naming the same service: 409 (the second would take the first one's name). JSON
/// Schema cannot say "unique by `name`", so this is a conflict, not a validation error the
/// document could have prevented.
fn check_unique_names<'a>(names: impl Iterator<Item = &'a str>) -> Result<(), ApiError> {
    let mut seen = std::collections::BTreeSet::new();
    for n in names.filter(|n| ServiceName::new(n).is_ok()) {
        if !seen.insert(n) {
            return Err(ApiError::new(
                409,
                "duplicate_service_name",
                format!("two services are named {n:?}; expected unique service names"),
            ));
        }
    }
    Ok(())
}

/// Checks that `caller` may deploy to the request's project (403 first, before anything else
/// is looked at), then the request as the document describes it, and turns it into the
/// backend's input and the repos file it amounts to (the `slugs` or `services` as JSON, for
/// the deployment history).
pub(crate) fn validate_deploy(
    st: &AppState,
    caller: &Caller,
    req: DeployRequest,
) -> Result<(DeployInput, String), ApiError> {
    let project = project_or_default(st, req.project.as_deref())?;
    st.access.check(caller, &project, Action::Deploy)?;
    if let Some(slugs) = &req.slugs {
        check_unique_names(slugs.iter().filter_map(|v| v.get("name")?.as_str()))?;
    }
    if let Some(services) = &req.services {
        check_unique_names(services.iter().map(|s| s.name.as_str()))?;
    }
    let repos: String;
    // The project's `egress` items ride along as a repos file's do (`{egress, services}`), so the
    // parser merges and checks them, and the history records them.
    let wrap = |items: String| -> Result<String, ApiError> {
        match &req.egress {
            None => Ok(items),
            Some(egress) => {
                let items: serde_json::Value =
                    serde_json::from_str(&items).map_err(|e| ApiError::internal(e.to_string()))?;
                serde_json::to_string_pretty(
                    &serde_json::json!({"egress": egress, "services": items}),
                )
                .map_err(|e| ApiError::internal(e.to_string()))
            }
        }
    };
    let services: Vec<ServiceSpec> = match (req.slugs, req.services) {
        (Some(_), Some(_)) | (None, None) => {
            return Err(ApiError::unprocessable(
                "expected exactly one of `slugs` or `services`",
            ));
        }
        (Some(slugs), None) => {
            if slugs.is_empty() {
                return Err(ApiError::unprocessable(
                    "`slugs` is empty: expected at least one slug",
                ));
            }
            // `uniqueItems` in the document: the same item twice is a mistake, not two services.
            for (j, item) in slugs.iter().enumerate() {
                if let Some(i) = slugs[..j].iter().position(|earlier| earlier == item) {
                    return Err(ApiError::unprocessable(format!(
                        "slugs: item {} repeats item {} ({item}); expected distinct items",
                        j + 1,
                        i + 1
                    )));
                }
            }
            repos = wrap(
                serde_json::to_string_pretty(&slugs)
                    .map_err(|e| ApiError::internal(e.to_string()))?,
            )?;
            iac_core::parse_repos_file(&repos, iac_core::ReposFormat::Json)
                .map_err(|e| ApiError::unprocessable(format!("slugs: {e}")))?
                .services
        }
        (None, Some(services)) => {
            if services.is_empty() {
                return Err(ApiError::unprocessable(
                    "`services` is empty: expected at least one service",
                ));
            }
            // Same validation as a repos file with explicit names (DNS labels, unique, slugs parse).
            repos = wrap(
                serde_json::to_string_pretty(&services)
                    .map_err(|e| ApiError::internal(e.to_string()))?,
            )?;
            iac_core::parse_repos_file(&repos, iac_core::ReposFormat::Json)
                .map_err(|e| ApiError::unprocessable(format!("services: {e}")))?
                .services
        }
    };
    if !st.cfg.allow_local_sources {
        check_remote_sources(&services)?;
    }
    check_expose(&services)?;
    if services.len() > st.cfg.max_services {
        return Err(ApiError::unprocessable(format!(
            "{} services in one deploy; the limit is {} (max_services)",
            services.len(),
            st.cfg.max_services
        )));
    }
    let sandbox = match req.sandbox.as_deref().filter(|s| !s.is_empty()) {
        None => {
            if req.ttl.is_some() {
                return Err(ApiError::unprocessable(
                    "`ttl` without `sandbox`: expected a ttl only for a sandbox deploy",
                ));
            }
            None
        }
        Some(name) => Some(iac_core::deployer::SandboxTarget {
            name: iac_core::SandboxName::new(name)
                .map_err(|e| ApiError::unprocessable(format!("sandbox: {e}")))?,
            ttl: req
                .ttl
                .as_deref()
                .map(iac_core::duration::parse)
                .transpose()
                .map_err(|e| {
                    ApiError::unprocessable(format!(
                        "ttl: {e} (expected a duration such as 2h or 30m)"
                    ))
                })?,
        }),
    };
    Ok((
        DeployInput {
            project,
            services,
            sandbox,
        },
        repos,
    ))
}

/// The API's edge policy: a caller may publish an app on the server's loopback only. A public
/// address (`0.0.0.0`, a LAN address) would put the app in front of everyone who can reach the
/// server, without a certificate, which only the operator (the CLI's repos file) decides.
pub(crate) fn check_expose(services: &[ServiceSpec]) -> Result<(), ApiError> {
    for s in services {
        if let Expose::On(bind) = s.expose
            && !bind.is_loopback()
        {
            return Err(ApiError::new(
                403,
                "public_expose_refused",
                format!(
                    "service {}: `expose` {bind} is not a loopback address; API callers may publish apps only on the server's loopback (127.0.0.0/8, [::1]); the operator can expose elsewhere in a repos file with `iac deploy`",
                    s.name
                ),
            ));
        }
    }
    Ok(())
}

/// The API's slug policy: `path:` and `git+file:` name directories on this host, which an API
/// caller must not be able to bake into an image (or probe with `GET /refs`), so they are
/// refused (403) unless the operator set `[serve] allow_local_sources = true`. The CLI is not
/// subject to it.
pub(crate) fn check_remote_sources(services: &[ServiceSpec]) -> Result<(), ApiError> {
    for s in services {
        check_remote_slug(&format!("service {}: ", s.name), &s.slug)?;
    }
    Ok(())
}

/// [`check_remote_sources`] for one slug; `context` prefixes the message.
pub(crate) fn check_remote_slug(context: &str, slug: &Slug) -> Result<(), ApiError> {
    if matches!(slug, Slug::Path { .. } | Slug::GitFile { .. }) {
        return Err(ApiError::new(
            403,
            "local_source_refused",
            format!(
                "{context}slug {:?} names a directory on the server's host; API callers may only use remote sources (gh:, gl:, bb:, git+https:) unless the operator sets `[serve] allow_local_sources = true`",
                slug.to_string()
            ),
        ));
    }
    Ok(())
}
