//! `GrpcProber` against an in-process tonic ControlPlane server with real mutual TLS (certificates
//! from a dev CA in a temp dir; the server requires a client certificate from that CA). No Envoy
//! needed: this pins the prober's own behaviour: retry with backoff until the deadline, SERVING /
//! NOT_SERVING (at once, with exit code) / UNKNOWN / UNREACHABLE with the last reason, server
//! name verification, and StreamLogs mapping.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use iac_backends::health::{GrpcProber, ProbeConfig};
use iac_backends::pki::{DevCa, PkiConfig};
use iac_core::{
    CertPaths, HealthProber, HealthState, LogQuery, LogStreamer, Pki, ProbeTarget, ProjectName,
    ServiceName,
};
use iac_proto::v1::control_plane_server::ControlPlane;
use iac_proto::{
    ControlPlaneServer, DeployRequest, DeployResult, HealthStatus, HealthStatusCode, LogLine,
    LogRequest,
};
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};
use tonic::{Request, Response, Status};

#[derive(Clone)]
struct StandIn {
    status: Arc<Mutex<HealthStatus>>,
    calls: Arc<Mutex<u32>>,
    /// The client address of every call: one address, one connection.
    peers: Arc<Mutex<BTreeSet<SocketAddr>>>,
    /// Answer SERVING from this call on (0: never switch).
    serving_from_call: u32,
}

#[tonic::async_trait]
impl ControlPlane for StandIn {
    async fn health_check(&self, req: Request<()>) -> Result<Response<HealthStatus>, Status> {
        if let Some(peer) = req.remote_addr() {
            self.peers.lock().unwrap().insert(peer);
        }
        let mut calls = self.calls.lock().unwrap();
        *calls += 1;
        if self.serving_from_call != 0 && *calls >= self.serving_from_call {
            return Ok(Response::new(status(
                HealthStatusCode::Serving,
                None,
                "running",
            )));
        }
        Ok(Response::new(self.status.lock().unwrap().clone()))
    }

    type StreamLogsStream = futures::stream::BoxStream<'static, Result<LogLine, Status>>;

    async fn stream_logs(
        &self,
        req: Request<LogRequest>,
    ) -> Result<Response<Self::StreamLogsStream>, Status> {
        let req = req.into_inner();
        let lines = vec![
            LogLine {
                ts: "2026-01-01T00:00:00.000Z".into(),
                stream: "stdout".into(),
                msg: format!("tail={}", req.tail),
                service: String::new(),
            },
            LogLine {
                ts: "2026-01-01T00:00:00.001Z".into(),
                stream: "stderr".into(),
                msg: format!("follow={}", req.follow),
                service: String::new(),
            },
        ];
        Ok(Response::new(
            futures::stream::iter(lines.into_iter().map(Ok)).boxed(),
        ))
    }

    async fn deploy(&self, _: Request<DeployRequest>) -> Result<Response<DeployResult>, Status> {
        Err(Status::unimplemented("agents do not deploy"))
    }
}

fn status(code: HealthStatusCode, exit: Option<i32>, detail: &str) -> HealthStatus {
    HealthStatus {
        status: code as i32,
        exit_code: exit,
        detail: detail.into(),
        ..HealthStatus::default()
    }
}

struct Fixture {
    _tmp: tempfile::TempDir,
    server_certs: CertPaths,
    client: CertPaths,
}

async fn fixture() -> Fixture {
    let tmp = tempfile::tempdir().unwrap();
    let ca = DevCa::new(PkiConfig {
        secrets_dir: tmp.path().to_path_buf(),
        ..PkiConfig::default()
    });
    let server_certs = ca
        .issue(
            &ProjectName::new("p").unwrap(),
            &ServiceName::new("api").unwrap(),
        )
        .await
        .unwrap()
        .paths;
    let client = ca.client_identity().await.unwrap().paths;
    Fixture {
        _tmp: tmp,
        server_certs,
        client,
    }
}

fn read(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap()
}

/// Serves `svc` with mTLS on `addr` (after `delay`) until the test ends.
fn serve(addr: SocketAddr, certs: &CertPaths, svc: StandIn, delay: Duration) {
    iac_backends::health::install_crypto_provider();
    let tls = ServerTlsConfig::new()
        .identity(Identity::from_pem(read(&certs.cert), read(&certs.key)))
        .client_ca_root(Certificate::from_pem(read(&certs.ca)));
    tokio::spawn(async move {
        tokio::time::sleep(delay).await;
        Server::builder()
            .tls_config(tls)
            .unwrap()
            .add_service(ControlPlaneServer::new(svc))
            .serve(addr)
            .await
            .unwrap();
    });
}

fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

fn target(svc: &str, addr: SocketAddr, deadline: Duration) -> ProbeTarget {
    ProbeTarget {
        service: ServiceName::new(svc).unwrap(),
        addr,
        deadline,
    }
}

fn stand_in(s: HealthStatus) -> StandIn {
    StandIn {
        status: Arc::new(Mutex::new(s)),
        calls: Arc::new(Mutex::new(0)),
        peers: Arc::new(Mutex::new(BTreeSet::new())),
        serving_from_call: 0,
    }
}

fn quick() -> ProbeConfig {
    ProbeConfig {
        initial_backoff: Duration::from_millis(50),
        max_backoff: Duration::from_millis(400),
        connect_timeout: Duration::from_millis(1000),
        rpc_timeout: Duration::from_millis(1000),
    }
}

#[tokio::test]
async fn retries_until_the_server_appears_then_serving() {
    let f = fixture().await;
    let addr = free_addr();
    serve(
        addr,
        &f.server_certs,
        stand_in(status(HealthStatusCode::Serving, None, "running (pid 7)")),
        Duration::from_millis(700),
    );
    let prober = GrpcProber::new(&f.client, quick()).unwrap();
    let t = Instant::now();
    let r = prober
        .check(&target("api", addr, Duration::from_secs(15)))
        .await;
    assert_eq!(r.state, HealthState::Serving, "{r:?}");
    assert_eq!(r.detail, "running (pid 7)");
    assert!(
        r.attempts >= 2,
        "the first attempts hit a closed port: {r:?}"
    );
    assert!(t.elapsed() >= Duration::from_millis(700));
}

#[tokio::test]
async fn unreachable_at_the_deadline_with_the_last_reason() {
    let f = fixture().await;
    let addr = free_addr();
    let prober = GrpcProber::new(&f.client, quick()).unwrap();
    let t = Instant::now();
    let r = prober
        .check(&target("api", addr, Duration::from_millis(900)))
        .await;
    let took = t.elapsed();
    assert_eq!(r.state, HealthState::Unreachable, "{r:?}");
    assert!(
        r.detail.contains(&addr.to_string()),
        "names the address: {r:?}"
    );
    assert!(r.detail.contains("attempts"), "{r:?}");
    assert!(r.attempts >= 3, "backoff starts at 50ms: {r:?}");
    assert!(r.attempts < 30, "backoff grows: {r:?}");
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(4),
        "took {took:?}"
    );
}

#[tokio::test]
async fn not_serving_returns_at_once_with_the_exit_code() {
    let f = fixture().await;
    let addr = free_addr();
    let svc = stand_in(status(
        HealthStatusCode::NotServing,
        Some(3),
        "exited with code 3",
    ));
    let calls = svc.calls.clone();
    serve(addr, &f.server_certs, svc, Duration::ZERO);
    let prober = GrpcProber::new(&f.client, quick()).unwrap();
    let r = prober
        .check(&target("api", addr, Duration::from_secs(10)))
        .await;
    assert_eq!(r.state, HealthState::NotServing, "{r:?}");
    assert_eq!(r.exit_code, Some(3));
    assert_eq!(r.detail, "exited with code 3");
    assert_eq!(
        *calls.lock().unwrap(),
        1,
        "a definitive answer is not retried"
    );
}

#[tokio::test]
async fn unknown_is_retried_until_the_deadline() {
    let f = fixture().await;
    let addr = free_addr();
    let svc = stand_in(status(HealthStatusCode::Unknown, None, "starting"));
    let calls = svc.calls.clone();
    serve(addr, &f.server_certs, svc.clone(), Duration::ZERO);
    let prober = GrpcProber::new(&f.client, quick()).unwrap();
    let r = prober
        .check(&target("api", addr, Duration::from_millis(800)))
        .await;
    assert_eq!(r.state, HealthState::Unknown, "{r:?}");
    assert!(r.detail.contains("starting"), "{r:?}");
    assert!(*calls.lock().unwrap() >= 2);

    // Once the agent says SERVING the next probe returns it.
    *svc.status.lock().unwrap() = status(HealthStatusCode::Serving, None, "running");
    assert!(
        prober
            .check(&target("api", addr, Duration::from_secs(5)))
            .await
            .is_serving()
    );
}

#[tokio::test]
async fn a_starting_agent_is_polled_over_one_connection_at_the_short_interval() {
    let f = fixture().await;
    let addr = free_addr();
    let svc = StandIn {
        serving_from_call: 12,
        ..stand_in(status(HealthStatusCode::Unknown, None, "starting"))
    };
    let (calls, peers) = (svc.calls.clone(), svc.peers.clone());
    serve(addr, &f.server_certs, svc, Duration::ZERO);
    let prober = GrpcProber::new(&f.client, quick()).unwrap();
    // Backing off (50, 100, 200, then 400 ms) would need about 4 s for 12 answers; polling at
    // the 50 ms interval needs well under the 3 s deadline.
    let r = prober
        .check(&target("api", addr, Duration::from_secs(3)))
        .await;
    assert_eq!(r.state, HealthState::Serving, "{r:?}");
    assert_eq!(*calls.lock().unwrap(), 12);
    // (plus any attempt made before the server was listening)
    assert!(r.attempts >= 12, "{r:?}");
    assert_eq!(
        peers.lock().unwrap().len(),
        1,
        "every poll went over the first connection: {:?}",
        peers.lock().unwrap()
    );
}

#[tokio::test]
async fn server_certificate_must_name_the_service() {
    let f = fixture().await;
    let addr = free_addr();
    serve(
        addr,
        &f.server_certs,
        stand_in(status(HealthStatusCode::Serving, None, "running")),
        Duration::ZERO,
    );
    let prober = GrpcProber::new(&f.client, quick()).unwrap();
    // Ready as `api`...
    assert!(
        prober
            .check(&target("api", addr, Duration::from_secs(5)))
            .await
            .is_serving()
    );
    // ...and refused as `web` (its certificate names api and api.p only).
    let r = prober
        .check(&target("web", addr, Duration::from_millis(300)))
        .await;
    assert_eq!(r.state, HealthState::Unreachable, "{r:?}");
    assert!(r.detail.starts_with("TLS:"), "classified as TLS: {r:?}");
    assert!(r.detail.to_lowercase().contains("certificate"), "{r:?}");
}

#[tokio::test]
async fn a_server_from_another_ca_is_not_trusted() {
    let f = fixture().await;
    let other = fixture().await;
    let addr = free_addr();
    serve(
        addr,
        &other.server_certs,
        stand_in(status(HealthStatusCode::Serving, None, "running")),
        Duration::ZERO,
    );
    let prober = GrpcProber::new(&f.client, quick()).unwrap();
    let r = prober
        .check(&target("api", addr, Duration::from_millis(500)))
        .await;
    assert_eq!(r.state, HealthState::Unreachable, "{r:?}");
    assert!(r.detail.starts_with("TLS:"), "{r:?}");
}

#[tokio::test]
async fn stream_logs_maps_lines_and_passes_the_query() {
    let f = fixture().await;
    let addr = free_addr();
    serve(
        addr,
        &f.server_certs,
        stand_in(status(HealthStatusCode::Serving, None, "running")),
        Duration::ZERO,
    );
    let prober = GrpcProber::new(&f.client, quick()).unwrap();
    assert!(
        prober
            .check(&target("api", addr, Duration::from_secs(5)))
            .await
            .is_serving()
    );
    let lines: Vec<_> = prober
        .stream(
            &target("api", addr, Duration::from_secs(5)),
            LogQuery {
                follow: true,
                tail: 5,
            },
        )
        .await
        .unwrap()
        .collect::<Vec<_>>()
        .await;
    let lines: Vec<_> = lines.into_iter().map(Result::unwrap).collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(
        (
            lines[0].service.as_str(),
            lines[0].stream.as_str(),
            lines[0].msg.as_str()
        ),
        ("api", "stdout", "tail=5")
    );
    assert_eq!(
        (
            lines[1].stream.as_str(),
            lines[1].msg.as_str(),
            lines[1].ts.as_str()
        ),
        ("stderr", "follow=true", "2026-01-01T00:00:00.001Z")
    );
}

#[tokio::test]
async fn bad_identity_files_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = CertPaths {
        ca: tmp.path().join("ca.pem"),
        cert: tmp.path().join("c.pem"),
        key: tmp.path().join("c.key"),
    };
    let err = GrpcProber::new(&missing, ProbeConfig::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("ca.pem"), "{err}");
    let err = GrpcProber::from_pem(b"nope", b"nope", b"nope", ProbeConfig::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("CA") && err.contains("PEM"), "{err}");
    // The identity never shows up in Debug output.
    let f = fixture().await;
    let p = GrpcProber::new(&f.client, ProbeConfig::default()).unwrap();
    let dbg = format!("{p:?}");
    assert!(
        dbg.contains("redacted") && !dbg.contains("PRIVATE KEY"),
        "{dbg}"
    );
}
