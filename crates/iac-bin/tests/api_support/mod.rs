//! Shared helpers of the admin API tests: a scriptable fake backend (deploys that emit events
//! and can be held open), a static bearer verifier, starting a real server on 127.0.0.1:0 plus a
//! temp Unix socket, and a minimal HTTP/1 client over the Unix socket (hyper).
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use async_trait::async_trait;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use iac_bin::api::{
    ApiError, ControlPlaneBackend, DeployInput, LogStream, ServeConfig, Server, ServiceStatus,
};
use iac_core::{
    AuthError, AuthVerifier, DeployReport, Events, LogLine, LogQuery, Principal, ProjectName,
    ServiceName, ServiceReport, Stage,
};
use tokio::sync::{Semaphore, oneshot};

/// A backend whose deploy emits `events_per_service` events per service, then (if `gate` is
/// set) waits for a permit, then reports every service ok.
pub struct FakeBackend {
    pub events_per_service: usize,
    pub gate: Option<Arc<Semaphore>>,
    pub deploys: AtomicUsize,
    pub engine: Result<String, String>,
}

impl FakeBackend {
    pub fn new() -> Self {
        FakeBackend {
            events_per_service: 3,
            gate: None,
            deploys: AtomicUsize::new(0),
            engine: Ok("20.10.0".into()),
        }
    }
    pub fn gated(gate: Arc<Semaphore>) -> Self {
        FakeBackend {
            gate: Some(gate),
            ..Self::new()
        }
    }
}

pub fn report_for(input: &DeployInput) -> DeployReport {
    DeployReport {
        project: input.project.clone(),
        ok: true,
        services: input
            .services
            .iter()
            .map(|s| {
                let mut r = ServiceReport::new(s.name.clone(), s.slug.to_string());
                r.ok = true;
                r.image = Some(format!("iac/{}:test", s.name));
                r.url = Some("http://127.0.0.1:49153/".into());
                r
            })
            .collect(),
        removed: vec![],
        error: None,
        millis: 1,
    }
}

#[async_trait]
impl ControlPlaneBackend for FakeBackend {
    fn default_project(&self) -> ProjectName {
        ProjectName::new("default").unwrap()
    }
    /// Every service would be created.
    async fn plan(&self, input: DeployInput) -> Result<iac_bin::api::PlanPreview, ApiError> {
        Ok(iac_bin::api::PlanPreview {
            project: input.project.to_string(),
            changes: input
                .services
                .iter()
                .map(|s| iac_bin::api::backend::PlannedChange {
                    service: s.name.to_string(),
                    action: "create".into(),
                    reason: "not running".into(),
                })
                .collect(),
            failures: Vec::new(),
        })
    }
    async fn deploy(&self, input: DeployInput, events: Events) -> Result<DeployReport, ApiError> {
        self.deploys.fetch_add(1, Ordering::SeqCst);
        for s in &input.services {
            let ev = events.for_service(&s.name);
            for i in 0..self.events_per_service {
                ev.info(Stage::Fetch, format!("step {i} of {}", s.name));
                tokio::task::yield_now().await;
            }
        }
        if let Some(g) = &self.gate {
            let _permit = g.acquire().await.expect("gate open");
        }
        events.info(Stage::Health, "all healthy");
        Ok(report_for(&input))
    }
    async fn destroy(
        &self,
        project: ProjectName,
        _events: Events,
    ) -> Result<Vec<String>, ApiError> {
        Ok(vec![
            format!("{project}-hello"),
            format!("{project}-hello-envoy"),
        ])
    }
    async fn services(&self, _project: ProjectName) -> Result<Vec<ServiceStatus>, ApiError> {
        Ok(vec![])
    }
    async fn logs(
        &self,
        _project: ProjectName,
        service: ServiceName,
        query: LogQuery,
    ) -> Result<LogStream, ApiError> {
        if service.as_str() == "missing" {
            return Err(ApiError::not_found("no service missing"));
        }
        let n = if query.tail == 0 {
            5
        } else {
            query.tail as usize
        };
        let lines: Vec<Result<LogLine, ApiError>> = (0..n)
            .map(|i| {
                Ok(LogLine {
                    service: service.clone(),
                    ts: iac_core::event::now_rfc3339(),
                    stream: "stdout".into(),
                    msg: format!("line {i}"),
                })
            })
            .collect();
        let head = futures::stream::iter(lines);
        if query.follow {
            // Then nothing more, forever: only shutdown ends it.
            Ok(Box::pin(futures::StreamExt::chain(
                head,
                futures::stream::pending(),
            )))
        } else {
            Ok(Box::pin(head))
        }
    }
    async fn engine_ping(&self) -> Result<String, String> {
        self.engine.clone()
    }
}

/// Accepts `good` (service_role), answers 403 for `forbidden`, 503 for `down`, else 401.
pub struct StaticVerifier;

pub const GOOD: &str = "good-token";

#[async_trait]
impl AuthVerifier for StaticVerifier {
    async fn verify(&self, bearer: &str) -> Result<Principal, AuthError> {
        match bearer {
            GOOD => Ok(Principal {
                subject: "service_role".into(),
                role: "service_role".into(),
                email: None,
                method: "static".into(),
                claims: Default::default(),
            }),
            "forbidden" => Err(AuthError::Forbidden(
                "role \"authenticated\" is not allowed".into(),
            )),
            "down" => Err(AuthError::Unavailable("supabase down".into())),
            _ => Err(AuthError::Invalid("bad token".into())),
        }
    }
}

/// A running server and the means to stop it.
pub struct Running {
    pub base: String,
    pub addr: std::net::SocketAddr,
    pub uds: PathBuf,
    pub stop: Option<oneshot::Sender<()>>,
    pub done: tokio::task::JoinHandle<anyhow::Result<()>>,
    pub _dir: tempfile::TempDir,
}

impl Running {
    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        self.done.await.expect("server task")
    }
}

/// The server config of the tests. The failed-authentication limit is off: the auth matrices
/// send many bad credentials from 127.0.0.1 on purpose; the tests of the limit set their own.
pub fn test_config(dir: &Path) -> ServeConfig {
    ServeConfig {
        http_addr: "127.0.0.1:0".parse().unwrap(),
        uds_path: Some(dir.join("iac_wrapper.sock")),
        max_body_bytes: 64 * 1024,
        auth_failure_limit: 0,
        ..ServeConfig::default()
    }
}

pub async fn start(backend: Arc<dyn ControlPlaneBackend>, auth: Arc<dyn AuthVerifier>) -> Running {
    start_with(backend, auth, |_| {}).await
}

pub async fn start_with(
    backend: Arc<dyn ControlPlaneBackend>,
    auth: Arc<dyn AuthVerifier>,
    tweak: impl FnOnce(&mut ServeConfig),
) -> Running {
    start_with_history(backend, auth, tweak, Default::default()).await
}

/// [`start_with`] with a `[history]` section of the test's choosing (its store under the
/// server's temp dir).
pub async fn start_with_history(
    backend: Arc<dyn ControlPlaneBackend>,
    auth: Arc<dyn AuthVerifier>,
    tweak: impl FnOnce(&mut ServeConfig),
    section: iac_bin::config::HistorySection,
) -> Running {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    start_on_state(backend, auth, tweak, section, dir, &state).await
}

/// A server in `dir` whose state directory (the history) is `state`: a second server on the
/// same `state` is the first one restarted.
pub async fn start_on_state(
    backend: Arc<dyn ControlPlaneBackend>,
    auth: Arc<dyn AuthVerifier>,
    tweak: impl FnOnce(&mut ServeConfig),
    section: iac_bin::config::HistorySection,
    dir: tempfile::TempDir,
    state: &Path,
) -> Running {
    let mut cfg = test_config(dir.path());
    tweak(&mut cfg);
    let history = iac_bin::api::History {
        store: section.open(state).await.expect("open the history"),
        retention: section.retention(),
    };
    let server = Server::bind(cfg, backend, auth, history)
        .await
        .expect("bind");
    let addr = server.http_addr().unwrap();
    let uds = server.uds_path().unwrap().to_path_buf();
    let (tx, rx) = oneshot::channel::<()>();
    let done = tokio::spawn(server.run(async move {
        let _ = rx.await;
    }));
    Running {
        base: format!("http://{addr}"),
        addr,
        uds,
        stop: Some(tx),
        done,
        _dir: dir,
    }
}

/// The default (SQLite) deployment history under `state_dir`, as `iac serve` opens it.
pub async fn history_in(state_dir: &Path) -> iac_bin::api::History {
    let section = iac_bin::config::HistorySection::default();
    iac_bin::api::History {
        store: section.open(state_dir).await.expect("open the history"),
        retention: section.retention(),
    }
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

/// One HTTP/1.1 request over the Unix socket; returns status, headers and the whole body.
pub async fn uds_request(
    path: &Path,
    method: &str,
    uri: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> (u16, hyper::HeaderMap, String) {
    let stream = tokio::net::UnixStream::connect(path)
        .await
        .expect("connect unix socket");
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let mut b = hyper::Request::builder()
        .method(method)
        .uri(uri)
        .header("host", "localhost");
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let req = b
        .body(Full::new(Bytes::from(body.unwrap_or("").to_string())))
        .unwrap();
    let resp = sender
        .send_request(req)
        .await
        .expect("request over unix socket");
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, headers, String::from_utf8_lossy(&body).to_string())
}

/// Asserts the one error shape and returns (code, message).
pub fn assert_error_shape(body: &str) -> (String, String) {
    let v: serde_json::Value = serde_json::from_str(body)
        .unwrap_or_else(|e| panic!("error body is not JSON ({e}): {body}"));
    let obj = v.as_object().expect("object");
    assert_eq!(obj.len(), 1, "only `error` at the top: {body}");
    let e = &v["error"];
    assert_eq!(
        e.as_object().map(|o| o.len()),
        Some(2),
        "error has code+message only: {body}"
    );
    let code = e["code"].as_str().expect("code string").to_string();
    let message = e["message"].as_str().expect("message string").to_string();
    assert!(!code.is_empty() && !message.is_empty(), "{body}");
    (code, message)
}
