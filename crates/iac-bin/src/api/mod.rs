//! The admin API behind `iac serve`: axum HTTP on TCP (default `127.0.0.1:8080`) and on a Unix
//! socket (default `/run/iac_wrapper.sock` as root, else `$XDG_RUNTIME_DIR/iac_wrapper.sock`),
//! both at once, plus the gRPC `ControlPlane` service on the same listeners.
//!
//! Wiring (what the binary does):
//! ```no_run
//! # async fn f(backend: std::sync::Arc<dyn iac_bin::api::ControlPlaneBackend>) -> anyhow::Result<()> {
//! use std::sync::Arc;
//! let cfg = iac_bin::api::ServeConfig::default(); // `[serve]` in iac.toml; --http/--uds override
//! let mut sb = iac_backends::auth::SupabaseConfig::default(); // `[auth.supabase]`
//! sb.apply_env(|k| std::env::var(k).ok());
//! let auth = Arc::new(iac_backends::auth::SupabaseVerifier::new(sb)?);
//! let section = iac_bin::config::HistorySection::default(); // `[history]`
//! let history = iac_bin::api::History {
//!     store: section.open(std::path::Path::new(".iac")).await?,
//!     retention: section.retention(),
//! };
//! iac_bin::api::serve(cfg, backend, auth, history, async { let _ = tokio::signal::ctrl_c().await; }).await
//! # }
//! ```
//!
//! The web console is served on the same listeners ([`crate::api::console`]).
//!
//! Routes, auth and behaviour: see [`routes`] (authentication, OpenAPI), [`authz`] (who may
//! read, deploy to and destroy which project), [`ratelimit`] (the failed-authentication limit),
//! [`deployments`] (streams, 409, the in-memory store of running deploys, recording into the
//! deployment history), [`error`] (the one error shape),
//! [`listen`] (socket safety, peer uid) and [`grpc`]; [`state`] holds what the two transports
//! share (handler state, deploy-request validation).
//!
//! Shutdown: when the `shutdown` future completes, both listeners stop accepting, idle
//! connections close, `follow` log streams end, and in-flight requests — deploy streams
//! included — run to completion; running deploys (even those whose client went away) are
//! awaited; all bounded by `shutdown_timeout`. The socket file is removed if it is still ours.

pub mod authz;
pub mod backend;
pub mod console;
pub mod deployments;
pub mod error;
pub mod grpc;
pub mod listen;
pub mod ratelimit;
pub mod routes;
pub mod schema;
pub mod state;

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use iac_core::AuthVerifier;
use serde::{Deserialize, Serialize};
use tokio::net::{TcpListener, UnixListener};
use tokio_util::sync::CancellationToken;

pub use authz::{AccessPolicy, Action, Caller, PolicyError, ProjectGrant};
#[cfg(any(test, feature = "mocks"))]
pub use backend::MockControlPlaneBackend;
pub use backend::{
    ControlPlaneBackend, DeployInput, LogStream, PlanPreview, ServiceStatus, refs_error,
};
pub use deployments::{
    DeploymentPage, DeploymentRecord, DeploymentStatus, DeploymentSummary, History, StreamItem,
};
pub use error::{ApiError, ErrorBody, ErrorResponse};
pub use listen::{Peer, check_peer_uid, default_socket_path};
pub use routes::openapi;

/// `[serve]` settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServeConfig {
    /// Serve HTTP (and gRPC) on TCP.
    pub http_enabled: bool,
    /// TCP address (`--http`).
    pub http_addr: SocketAddr,
    /// Serve on the Unix socket.
    pub uds_enabled: bool,
    /// Socket path (`--uds`); unset = `/run/iac_wrapper.sock` as root, else
    /// `$XDG_RUNTIME_DIR/iac_wrapper.sock`.
    pub uds_path: Option<PathBuf>,
    /// Largest request body (HTTP and gRPC messages).
    pub max_body_bytes: usize,
    /// Most services in one deploy.
    pub max_services: usize,
    /// Deployments kept in memory for `GET /deployments/{id}`.
    pub max_deployments: usize,
    /// Events kept per deployment (the newest).
    pub max_events_per_deployment: usize,
    /// Finished deployments are forgotten this long after they finished (`max_deployments`
    /// bounds their number as well).
    #[serde(with = "iac_core::duration")]
    pub deployment_ttl: Duration,
    /// Let API callers deploy `path:` and `git+file:` slugs, i.e. name directories on this host.
    /// Off by default: only the operator (the CLI) may deploy local sources.
    pub allow_local_sources: bool,
    /// The deploy deadline (the top-level `deploy_deadline`, copied here by the binary; not a
    /// `[serve]` key). A deploy still running a grace period past it (a tenth of it, at most a
    /// minute — the deployer's own deadline normally fires first) is stopped: its stream ends
    /// with a `deadline_exceeded` error, its record is finished and its project released.
    #[serde(skip)]
    pub deploy_deadline: Duration,
    /// Where the projects' deploy locks are (`<state_dir>/projects`, copied by `iac serve`): a
    /// deploy or destroy of a project whose lock another process (a CLI deploy, another
    /// control plane) holds is refused with 409 naming it. `None` (tests): not checked.
    #[serde(skip)]
    pub projects_dir: Option<PathBuf>,
    /// How long `GET /health` waits for the engine.
    #[serde(with = "iac_core::duration")]
    pub engine_ping_timeout: Duration,
    /// Longest wait for in-flight requests and deploys at shutdown.
    #[serde(with = "iac_core::duration")]
    pub shutdown_timeout: Duration,
    /// Failed authentications one client (IP address, IPv6 /64, socket uid) may have within
    /// `auth_failure_window`; the next request gets 429 with `Retry-After` for one window
    /// ([`ratelimit`]). 0 turns the limit off (e.g. behind a proxy that makes every client one
    /// address).
    pub auth_failure_limit: u32,
    /// The window of `auth_failure_limit`, and how long a client over it waits.
    #[serde(with = "iac_core::duration")]
    pub auth_failure_window: Duration,
    /// A token claim (dotted path, e.g. `"app_metadata.projects"`) listing the projects its
    /// user may deploy to (and so read and destroy); see [`authz`]. Unset: claims grant nothing.
    pub project_claim: Option<String>,
    /// `[serve.projects.<name>]`: who may read, deploy to and destroy each project (`"*"`: every
    /// project); see [`authz`]. Nothing here: only the operator (the Unix socket) and
    /// service-role keys reach any project.
    pub projects: BTreeMap<String, ProjectGrant>,
    /// The console's public origin (`https://iac.example.com`) when it is served through a
    /// proxy: state-changing requests made with the session cookie must carry it as `Origin`,
    /// and an `https` origin makes the cookie `Secure`. Unset: `http://<Host header>`.
    pub public_origin: Option<String>,
    /// What the console needs of `[supabase]` for password sign-in (the binary copies it;
    /// not a `[serve]` key).
    #[serde(skip)]
    pub console_auth: crate::api::console::ConsoleAuth,
}

impl Default for ServeConfig {
    fn default() -> Self {
        ServeConfig {
            http_enabled: true,
            http_addr: SocketAddr::from(([127, 0, 0, 1], 8080)),
            uds_enabled: true,
            uds_path: None,
            max_body_bytes: 1024 * 1024,
            max_services: 256,
            max_deployments: 100,
            max_events_per_deployment: 5000,
            deployment_ttl: Duration::from_secs(3600),
            allow_local_sources: false,
            deploy_deadline: Duration::from_secs(30 * 60),
            projects_dir: None,
            engine_ping_timeout: Duration::from_secs(3),
            shutdown_timeout: Duration::from_secs(600),
            auth_failure_limit: 10,
            auth_failure_window: Duration::from_secs(60),
            project_claim: None,
            projects: BTreeMap::new(),
            public_origin: None,
            console_auth: Default::default(),
        }
    }
}

/// Listeners bound, not yet serving. [`Server::bind`] then [`Server::run`]; [`serve`] does both.
pub struct Server {
    cfg: Arc<ServeConfig>,
    tcp: Option<TcpListener>,
    http_addr: Option<SocketAddr>,
    uds: Option<UnixListener>,
    uds_path: Option<PathBuf>,
    router: axum::Router,
    deployments: deployments::Deployments,
    shutdown: CancellationToken,
}

impl Server {
    /// Binds the configured listeners (at least one must be enabled); deployments are recorded
    /// in (and read back from) `history`.
    pub async fn bind(
        cfg: ServeConfig,
        backend: Arc<dyn ControlPlaneBackend>,
        auth: Arc<dyn AuthVerifier>,
        history: History,
    ) -> anyhow::Result<Server> {
        if !cfg.http_enabled && !cfg.uds_enabled {
            anyhow::bail!(
                "serve: both listeners are disabled (http_enabled = false, uds_enabled = false); enable at least one"
            );
        }
        let access = Arc::new(AccessPolicy::from_config(&cfg)?);
        if let Some(o) = &cfg.public_origin {
            crate::api::console::session::validate_public_origin(o)
                .map_err(|e| anyhow::anyhow!("[serve] {e}"))?;
        }
        let console = Arc::new(
            crate::api::console::Console::new(
                &cfg.console_auth,
                cfg.public_origin.as_deref(),
                Some(history.store.clone()),
            )
            .map_err(|e| anyhow::anyhow!("console sign-in ([supabase] anon_key): {e}"))?,
        );
        let cfg = Arc::new(cfg);
        let tcp = if cfg.http_enabled {
            Some(
                TcpListener::bind(cfg.http_addr)
                    .await
                    .with_context(|| format!("cannot listen on {} (http_addr)", cfg.http_addr))?,
            )
        } else {
            None
        };
        let http_addr = tcp.as_ref().map(|l| l.local_addr()).transpose()?;
        if let Some(warning) = http_addr.and_then(exposure_warning) {
            tracing::warn!("{warning}");
        }
        let (uds, uds_path) = if cfg.uds_enabled {
            let path = match &cfg.uds_path {
                Some(p) => p.clone(),
                None => default_socket_path().map_err(anyhow::Error::msg)?,
            };
            (Some(listen::bind_unix(&path).await?), Some(path))
        } else {
            (None, None)
        };
        let shutdown = CancellationToken::new();
        match history
            .store
            .prune(&history.retention, std::time::SystemTime::now())
            .await
        {
            Ok(0) => {}
            Ok(n) => tracing::info!("deployment history: retention removed {n} record(s)"),
            Err(e) => tracing::warn!("deployment history: retention failed: {e}"),
        }
        console.sessions.prune().await;
        let deployments =
            deployments::Deployments::new(deployments::Limits::from_config(&cfg), history)
                .with_projects_dir(cfg.projects_dir.clone());
        let router = routes::router(
            backend,
            auth,
            access,
            deployments.clone(),
            cfg.clone(),
            shutdown.clone(),
            console,
        );
        Ok(Server {
            cfg,
            tcp,
            http_addr,
            uds,
            uds_path,
            router,
            deployments,
            shutdown,
        })
    }

    /// The bound TCP address (resolves port 0).
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http_addr
    }

    /// The Unix socket path.
    pub fn uds_path(&self) -> Option<&std::path::Path> {
        self.uds_path.as_deref()
    }

    /// Serves until `shutdown` completes, then drains (see the module docs).
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        let Server {
            cfg,
            tcp,
            http_addr,
            uds,
            uds_path,
            router,
            deployments,
            shutdown: token,
        } = self;
        let socket_id = uds_path.as_deref().and_then(listen::socket_identity);
        let tcp_task = tcp.map(|l| {
            let svc = router
                .clone()
                .into_make_service_with_connect_info::<listen::Peer>();
            let stop = token.clone();
            tokio::spawn(async move {
                axum::serve(l, svc)
                    .with_graceful_shutdown(stop.cancelled_owned())
                    .await
            })
        });
        let uds_task = uds.map(|l| {
            let svc = router
                .clone()
                .into_make_service_with_connect_info::<listen::Peer>();
            let stop = token.clone();
            tokio::spawn(async move {
                axum::serve(l, svc)
                    .with_graceful_shutdown(stop.cancelled_owned())
                    .await
            })
        });
        tracing::info!(
            http = ?http_addr,
            uds = ?uds_path,
            "admin API listening"
        );
        let mut tasks: Vec<_> = tcp_task.into_iter().chain(uds_task).collect();
        let stopped_early = tokio::select! {
            _ = shutdown => None,
            (res, _, _) = futures::future::select_all(tasks.iter_mut()) => Some(res),
        };
        token.cancel();
        tracing::info!(
            running_deploys = deployments.running(),
            "shutting down: draining requests and deploys"
        );
        let drain = async {
            for t in tasks {
                if !t.is_finished() {
                    let _ = t.await;
                }
            }
            deployments.wait_idle().await;
        };
        let timed_out = tokio::time::timeout(cfg.shutdown_timeout, drain)
            .await
            .is_err();
        if let (Some(path), Some(id)) = (&uds_path, socket_id)
            && listen::socket_identity(path) == Some(id)
        {
            let _ = std::fs::remove_file(path);
        }
        if timed_out {
            tracing::warn!("shutdown_timeout reached with requests or deploys still running");
        }
        match stopped_early {
            Some(Ok(Ok(()))) | None => Ok(()),
            Some(Ok(Err(e))) => Err(anyhow::Error::new(e).context("admin API listener failed")),
            Some(Err(e)) => Err(anyhow::Error::new(e).context("admin API listener task panicked")),
        }
    }
}

/// The warning for a TCP listener that is reachable from other hosts: it has no TLS, so bearer
/// tokens and request bodies cross the network in clear text. `None` for loopback addresses.
pub fn exposure_warning(addr: SocketAddr) -> Option<String> {
    if addr.ip().is_loopback() {
        return None;
    }
    Some(format!(
        "the admin API listens on {addr}, which is not a loopback address, and this listener has no TLS: bearer tokens and deploy requests cross the network in clear text. Put a TLS-terminating proxy in front of it and bind it to 127.0.0.1, or use the Unix socket"
    ))
}

/// Binds both listeners and serves until `shutdown` completes; see the module docs.
pub async fn serve(
    cfg: ServeConfig,
    backend: Arc<dyn ControlPlaneBackend>,
    auth: Arc<dyn AuthVerifier>,
    history: History,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    Server::bind(cfg, backend, auth, history)
        .await?
        .run(shutdown)
        .await
}
