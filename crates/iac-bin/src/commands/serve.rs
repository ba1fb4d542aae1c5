//! `iac serve`: the admin API (HTTP + gRPC on TCP and the Unix socket) over a
//! [`crate::wiring::LiveBackend`], with the auth provider the configuration names.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use async_trait::async_trait;
use iac_backends::auth::supabase::SupabaseVerifier;
use iac_core::AuthVerifier;

use crate::api::ServeConfig;
use crate::config::IacConfig;
use crate::wiring::LiveBackend;

/// `iac serve`.
pub async fn serve(
    cfg: IacConfig,
    http: Option<String>,
    uds: Option<PathBuf>,
) -> anyhow::Result<ExitCode> {
    let mut serve_cfg: ServeConfig = cfg.serve.clone();
    serve_cfg.deploy_deadline = cfg.deploy_deadline;
    serve_cfg.projects_dir = Some(cfg.state_dir.join("projects"));
    let http_given = http.is_some();
    if let Some(h) = http {
        serve_cfg.http_addr = h
            .parse()
            .with_context(|| format!("--http {h:?}: expected HOST:PORT"))?;
    }
    if let Some(u) = uds {
        serve_cfg.uds_path = Some(u);
    }
    if let Some((url, key)) = cfg
        .supabase
        .console_sign_in()
        .context("console sign-in ([supabase] anon_key / SUPABASE_ANON_KEY)")?
    {
        serve_cfg.console_auth = crate::api::console::ConsoleAuth {
            supabase_url: Some(url),
            anon_key: Some(key),
            http_timeout: cfg.supabase.http_timeout,
        };
    }
    let supabase_configured = cfg.supabase.url.is_some()
        || cfg.supabase.service_role_key.is_some()
        || cfg.supabase.jwt_secret.is_some();
    let auth: Arc<dyn AuthVerifier> = if supabase_configured {
        Arc::new(
            SupabaseVerifier::new(cfg.supabase.clone())
                .context("Supabase auth ([supabase] / SUPABASE_*)")?,
        )
    } else if http_given {
        anyhow::bail!(
            "--http needs an auth provider: set SUPABASE_URL and SUPABASE_SERVICE_ROLE_KEY (or [supabase] in iac.toml); without them only the Unix socket is served"
        );
    } else {
        // Nothing to verify TCP callers against: serve the Unix socket only (peer-uid auth).
        tracing::warn!(
            "no Supabase configured (SUPABASE_URL, SUPABASE_SERVICE_ROLE_KEY): the TCP listener is off, serving the Unix socket only"
        );
        serve_cfg.http_enabled = false;
        Arc::new(NoAuthProvider)
    };
    let history = crate::api::History {
        store: cfg
            .history
            .open(&cfg.state_dir)
            .await
            .context("deployment history ([history] url)")?,
        retention: cfg.history.retention(),
    };
    let default_project = super::resolve_project(&cfg, None)?;
    let backend = Arc::new(LiveBackend::new(cfg, default_project));
    let shutdown = async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = term.recv() => {},
            _ = tokio::signal::ctrl_c() => {},
        }
        tracing::info!("shutting down: waiting for in-flight requests and deploys");
    };
    crate::api::serve(serve_cfg, backend, auth, history, shutdown).await?;
    Ok(ExitCode::SUCCESS)
}

/// The verifier when no auth provider is configured: every bearer credential is refused (fail
/// closed). Only reachable if a TCP listener were enabled, which `serve` prevents.
struct NoAuthProvider;

#[async_trait]
impl AuthVerifier for NoAuthProvider {
    async fn verify(&self, _bearer: &str) -> Result<iac_core::Principal, iac_core::AuthError> {
        Err(iac_core::AuthError::Unavailable(
            "no auth provider is configured".into(),
        ))
    }
}
