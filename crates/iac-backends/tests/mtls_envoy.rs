//! Host-only mTLS end to end on loopback, with real components: the real `iac-agent` binary
//! (built with `cargo build -p iac-agent` if needed, or `$IAC_AGENT_BIN`) supervising a small
//! shell child, a real Envoy 1.40 in front of it with the config rendered by `EnvoyRenderer`
//! (ports remapped to free loopback ports, inbound bound to 127.0.0.1, certificates from a dev CA
//! in a temp dir), and the `GrpcProber` dialing Envoy with the control-plane certificate.
//!
//! Checked: SERVING through Envoy; a client certificate from another CA, no client certificate
//! and a wrong server name are all refused (and Envoy counts the refusals); StreamLogs returns
//! the child's stdout and stderr; after the child exits 7 the prober gets NOT_SERVING with exit
//! code 7; the stats listener answers /stats/prometheus and 404s /config_dump and
//! /quitquitquit; the outbound listener routes by authority to a peer's app over mTLS and
//! refuses a peer whose certificate names someone else or names a service of another project.
//!
//! Inbound RBAC, with real TLS clients (tonic and reqwest on rustls) holding real leaves of one
//! dev CA that spans two projects, in front of a real agent and a tiny echo app that reports the
//! `x-forwarded-client-cert` it received: the ControlPlane routes (HealthCheck, StreamLogs,
//! Deploy) answer only the control-plane identity (403 → PERMISSION_DENIED for a same-project
//! peer, a peer of another project, and a service squatting the name `iac-control-plane`); app
//! routes answer only services of the same project (403 for another project's leaf and for the
//! control plane); a request no route matches is refused; a forged XFCC never reaches the app,
//! which sees Envoy's own header naming the caller's `spiffe://iac/<project>/<svc>`.
//!
//! The edge listener (plain HTTP, no client certificate): a request reaches the app, which sees
//! `URI=spiffe://iac/ingress` and never a forged XFCC; the ControlPlane API is 404 there however
//! the path is spelled, and a gRPC HealthCheck over h2c never reaches the agent; the mesh port
//! still refuses a client without a certificate.
//! Envoy, the agents and the echo apps are stopped on drop.
//!
//! Envoy is required when IAC_REQUIRE_ENVOY=1 (CI); otherwise a missing binary skips loudly.

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use iac_backends::health::{GrpcProber, ProbeConfig};
use iac_backends::pki::{DevCa, PkiConfig};
use iac_backends::sidecar::EnvoyRenderer;
use iac_backends::sidecar::envoy_bin::{self, EnvoyProcess};
use iac_core::{
    CertPaths, HealthProber, HealthState, LogQuery, LogStreamer, Mesh, MeshPorts, MeshService, Pki,
    ProbeTarget, ProjectName, ServiceName, SidecarRenderer,
};
use iac_proto::ControlPlaneClient;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};

const PROJECT: &str = "mt";

fn svc(name: &str) -> ServiceName {
    ServiceName::new(name).unwrap()
}

fn envoy_or_skip(test: &str) -> Option<PathBuf> {
    match envoy_bin::envoy_binary() {
        Some(p) => Some(p),
        None if std::env::var_os("IAC_REQUIRE_ENVOY")
            .is_some_and(|v| !v.is_empty() && v != "0") =>
        {
            panic!(
                "IAC_REQUIRE_ENVOY is set but no envoy binary was found (PATH or $IAC_ENVOY); run scripts/install-envoy.sh"
            )
        }
        None => {
            eprintln!(
                "\n!!!!! SKIPPING {test}: no `envoy` on PATH (set IAC_REQUIRE_ENVOY=1 to make this a failure; scripts/install-envoy.sh installs it) !!!!!\n"
            );
            None
        }
    }
}

/// The `iac-agent` binary: `$IAC_AGENT_BIN`, else built (a no-op when fresh) into this target dir.
fn agent_binary() -> PathBuf {
    static BUILT: Mutex<Option<PathBuf>> = Mutex::new(None);
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(p) = built.as_ref() {
        return p.clone();
    }
    if let Some(p) = std::env::var_os("IAC_AGENT_BIN") {
        let p = PathBuf::from(p);
        assert!(p.is_file(), "IAC_AGENT_BIN={} does not exist", p.display());
        *built = Some(p.clone());
        return p;
    }
    // <target>/<profile>/deps/mtls_envoy-<hash>
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().and_then(Path::parent).unwrap().to_path_buf();
    let target_dir = profile_dir.parent().unwrap();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(&cargo);
    cmd.args(["build", "-p", "iac-agent"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("CARGO_TARGET_DIR", target_dir);
    if profile_dir.file_name().is_some_and(|n| n == "release") {
        cmd.arg("--release");
    }
    let status = cmd
        .status()
        .unwrap_or_else(|e| panic!("cannot run {cargo} build -p iac-agent: {e}"));
    assert!(
        status.success(),
        "cargo build -p iac-agent failed: {status}"
    );
    let bin = profile_dir.join("iac-agent");
    assert!(
        bin.is_file(),
        "{} missing after cargo build -p iac-agent",
        bin.display()
    );
    *built = Some(bin.clone());
    bin
}

/// A free loopback port, never handed out twice while this process lives — in this process or in
/// any other test process — and taken below the kernel's ephemeral range (32768+), so neither
/// another test's Envoy nor an agent binding port 0 can be given the same one between this check
/// and Envoy's bind. (Envoy's listeners are rendered with `enable_reuse_port: false`; a shared
/// port would otherwise split connections between two Envoys — the flake this replaced.)
///
/// Under cargo-nextest every test is its own process, so a per-process counter alone could hand
/// two concurrent tests the same port: each port is also claimed by an exclusive `flock` on
/// `$TMPDIR/iac-test-ports/<port>.lock`, held until this process exits (the kernel drops it then,
/// also on a crash, so a dead test never keeps a port).
fn free_port() -> u16 {
    use std::fs::{File, TryLockError};
    use std::sync::atomic::{AtomicU32, Ordering};
    const LOW: u32 = 20_000;
    const SPAN: u32 = 12_000;
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    static CLAIMS: Mutex<Vec<File>> = Mutex::new(Vec::new());
    let dir = std::env::temp_dir().join("iac-test-ports");
    std::fs::create_dir_all(&dir)
        .unwrap_or_else(|e| panic!("cannot create the port claim dir {}: {e}", dir.display()));
    // Each test process starts at its own offset (by pid), so concurrent ones rarely even meet.
    let _ = NEXT.compare_exchange(
        u32::MAX,
        (std::process::id() * 97) % SPAN,
        Ordering::SeqCst,
        Ordering::SeqCst,
    );
    for _ in 0..SPAN {
        let port = (LOW + NEXT.fetch_add(1, Ordering::SeqCst) % SPAN) as u16;
        let path = dir.join(format!("{port}.lock"));
        let claim = File::create(&path)
            .unwrap_or_else(|e| panic!("cannot open the port claim {}: {e}", path.display()));
        match claim.try_lock() {
            Ok(()) => {}
            // Another live test process holds this port.
            Err(TryLockError::WouldBlock) => continue,
            Err(TryLockError::Error(e)) => {
                panic!("cannot lock the port claim {}: {e}", path.display())
            }
        }
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            CLAIMS.lock().unwrap_or_else(|e| e.into_inner()).push(claim);
            return port;
        }
    }
    panic!("no free loopback port in {LOW}..{}", LOW + SPAN);
}

/// The real agent in its own process group; the whole group is killed on drop.
struct AgentProc {
    child: Child,
    addr: SocketAddr,
    stderr: Arc<Mutex<Vec<String>>>,
}

impl AgentProc {
    fn start(argv: &[&str]) -> AgentProc {
        let mut child = Command::new(agent_binary())
            // (Exits are what these tests read back; restarting is the agent's own tests'.)
            .args([
                "--listen",
                "127.0.0.1:0",
                "--grace",
                "1s",
                "--restart",
                "never",
                "--",
            ])
            .args(argv)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()
            .expect("start iac-agent");
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let lines = Arc::clone(&stderr);
        let pipe = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                lines.lock().unwrap().push(line);
            }
        });
        let deadline = Instant::now() + Duration::from_secs(20);
        let addr = loop {
            let found = stderr.lock().unwrap().iter().find_map(|l| {
                l.split_once("iac-agent: listening on ")
                    .and_then(|(_, a)| a.trim().parse::<SocketAddr>().ok())
            });
            if let Some(a) = found {
                break a;
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "iac-agent exited ({status}) before listening: {:#?}",
                    stderr.lock().unwrap()
                );
            }
            assert!(
                Instant::now() < deadline,
                "iac-agent did not listen: {:#?}",
                stderr.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        AgentProc {
            child,
            addr,
            stderr,
        }
    }
}

impl Drop for AgentProc {
    fn drop(&mut self) {
        // SAFETY: kill(2) on the process group this test created.
        unsafe { libc::kill(-(self.child.id() as i32), libc::SIGKILL) };
        let _ = self.child.wait();
    }
}

/// One service: agent + Envoy with ports remapped to free loopback ports.
struct Node {
    // Drop order: Envoy first, then the agent.
    envoy: EnvoyProcess,
    agent: AgentProc,
    inbound: SocketAddr,
    outbound: u16,
    stats: u16,
    /// The edge listener's port (listening only when the service has an edge).
    edge: u16,
    config: String,
}

struct Ports {
    inbound: u16,
    outbound: u16,
    stats: u16,
    edge: u16,
    egress: u16,
}

impl Ports {
    fn free() -> Ports {
        Ports {
            inbound: free_port(),
            outbound: free_port(),
            stats: free_port(),
            edge: free_port(),
            egress: free_port(),
        }
    }
}

/// Renders `name`'s config from `mesh` (its ports replaced) and starts Envoy in front of `agent`.
fn start_node(
    envoy: &Path,
    dir: &Path,
    mut mesh: Mesh,
    name: &str,
    ports: Ports,
    certs: CertPaths,
    agent: AgentProc,
) -> Node {
    mesh.ports = MeshPorts {
        inbound_bind: "127.0.0.1".into(),
        inbound: ports.inbound,
        outbound: ports.outbound,
        agent: agent.addr.port(),
        stats: ports.stats,
        edge: ports.edge,
        admin_socket: dir.join(format!("{name}-admin.sock")).display().to_string(),
        egress: ports.egress,
    };
    mesh.certs = certs;
    let config = EnvoyRenderer::default().render(&mesh, &svc(name)).unwrap();
    let path = dir.join(format!("{name}-envoy.yaml"));
    std::fs::write(&path, &config).unwrap();
    let envoy = EnvoyProcess::spawn(envoy, &path, &dir.join(format!("{name}-envoy.log"))).unwrap();
    Node {
        envoy,
        agent,
        inbound: SocketAddr::from(([127, 0, 0, 1], ports.inbound)),
        outbound: ports.outbound,
        stats: ports.stats,
        edge: ports.edge,
        config,
    }
}

impl Node {
    async fn wait_ready(&mut self) {
        let addrs = [
            self.inbound,
            SocketAddr::from(([127, 0, 0, 1], self.outbound)),
            SocketAddr::from(([127, 0, 0, 1], self.stats)),
        ];
        if let Err(e) = self
            .envoy
            .wait_listening(&addrs, Duration::from_secs(30))
            .await
        {
            panic!("{e}\n--- config ---\n{}", self.config);
        }
    }

    async fn stat(&self, name: &str) -> u64 {
        let body = http_get(self.stats, "/stats/prometheus").await.1;
        body.lines()
            .filter(|l| {
                l.starts_with(name)
                    && (l[name.len()..].starts_with('{') || l[name.len()..].starts_with(' '))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .map(|v| v as u64)
            .sum()
    }
}

async fn http_get(port: u16, path: &str) -> (u16, String) {
    http(reqwest::Method::GET, port, path).await
}

async fn http(method: reqwest::Method, port: u16, path: &str) -> (u16, String) {
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let resp = client
        .request(method, format!("http://127.0.0.1:{port}{path}"))
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {path} on the stats listener: {e}"));
    let status = resp.status().as_u16();
    (status, resp.text().await.unwrap_or_default())
}

fn target(service: &str, addr: SocketAddr, deadline: Duration) -> ProbeTarget {
    ProbeTarget {
        service: svc(service),
        addr,
        deadline,
    }
}

fn dev_ca(dir: &Path) -> DevCa {
    DevCa::new(PkiConfig {
        secrets_dir: dir.to_path_buf(),
        ..PkiConfig::default()
    })
}

fn read(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap()
}

/// A tiny upstream app on 127.0.0.1: answers every request with JSON `{app, path, xfcc, envoy,
/// forwarded, tracing}`, where `xfcc` lists every `x-forwarded-client-cert` value it received,
/// `envoy` every `x-envoy-*` header, `forwarded` every other `x-forwarded-*` and `forwarded`
/// header, and `tracing` every `traceparent` and `baggage` header (each `name: value`). Stopped
/// on drop.
struct EchoApp {
    port: u16,
    /// Requests served so far.
    hits: Arc<std::sync::atomic::AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl EchoApp {
    async fn start(name: &'static str) -> EchoApp {
        let hits = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = Arc::clone(&hits);
        let app = axum::Router::new().fallback(move |req: axum::extract::Request| async move {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let xfcc: Vec<String> = req
                .headers()
                .get_all("x-forwarded-client-cert")
                .iter()
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                .collect();
            let envoy: Vec<String> = req
                .headers()
                .iter()
                .filter(|(k, _)| k.as_str().starts_with("x-envoy-"))
                .map(|(k, v)| format!("{k}: {}", String::from_utf8_lossy(v.as_bytes())))
                .collect();
            let named = |keep: &dyn Fn(&str) -> bool| -> Vec<String> {
                req.headers()
                    .iter()
                    .filter(|(k, _)| keep(k.as_str()))
                    .map(|(k, v)| format!("{k}: {}", String::from_utf8_lossy(v.as_bytes())))
                    .collect()
            };
            let forwarded = named(&|k| {
                (k.starts_with("x-forwarded-") && k != "x-forwarded-client-cert")
                    || k == "forwarded"
            });
            let tracing = named(&|k| k == "traceparent" || k == "baggage");
            axum::Json(serde_json::json!({
                "app": name,
                "path": req.uri().path(),
                "xfcc": xfcc,
                "envoy": envoy,
                "forwarded": forwarded,
                "tracing": tracing,
            }))
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        EchoApp { port, hits, task }
    }
}

impl Drop for EchoApp {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What the echo app saw.
#[derive(Debug, serde::Deserialize)]
struct Echo {
    app: String,
    path: String,
    xfcc: Vec<String>,
    envoy: Vec<String>,
    forwarded: Vec<String>,
    tracing: Vec<String>,
}

/// Headers a hostile caller sends to steer Envoy: retries against the app (an amplifier), its
/// timeouts, tracing; claiming to be internal through `x-forwarded-for` first, which is what
/// makes Envoy honour them when it trusts that header.
const HOSTILE_ENVOY_HEADERS: &[(&str, &str)] = &[
    ("x-forwarded-for", "10.0.0.7"),
    ("x-envoy-internal", "true"),
    ("x-envoy-max-retries", "9"),
    ("x-envoy-retry-on", "5xx,reset,connect-failure"),
    ("x-envoy-upstream-rq-timeout-ms", "1"),
    ("x-envoy-force-trace", "true"),
];

/// A W3C trace context a caller may send (and that the mesh and the edge pass on).
const TRACEPARENT: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

/// None of [`HOSTILE_ENVOY_HEADERS`] reached the app.
fn assert_no_caller_envoy_headers(echo: &Echo) {
    let leaked: Vec<&String> = echo
        .envoy
        .iter()
        .filter(|h| {
            HOSTILE_ENVOY_HEADERS
                .iter()
                .any(|(k, _)| h.starts_with(&format!("{k}:")))
        })
        .collect();
    assert!(
        leaked.is_empty(),
        "x-envoy-* headers from the caller reached the app: {leaked:?} (all: {:?})",
        echo.envoy
    );
}

/// An HTTPS client presenting `identity` (a leaf's cert + key), trusting only `ca`, with
/// `server` resolved to `addr` so the server certificate is verified for that name.
fn https_client(
    ca: &CertPaths,
    identity: &CertPaths,
    server: &str,
    addr: SocketAddr,
) -> reqwest::Client {
    let mut pem = read(&identity.cert);
    pem.extend_from_slice(&read(&identity.key));
    reqwest::Client::builder()
        .no_proxy()
        .tls_certs_only([reqwest::Certificate::from_pem(&read(&ca.ca)).unwrap()])
        .identity(reqwest::Identity::from_pem(&pem).unwrap())
        .resolve(server, addr)
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// GET `https://<server>:<port><path>` with `headers`; status and body.
async fn https_get(
    client: &reqwest::Client,
    server: &str,
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, String) {
    let mut req = client.get(format!("https://{server}:{}{path}", addr.port()));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {path} on {server} at {addr}: {e:?}"));
    let status = resp.status().as_u16();
    (status, resp.text().await.unwrap_or_default())
}

/// A ControlPlane gRPC client presenting `identity`, server verified as `server`.
async fn grpc_as(
    ca: &CertPaths,
    identity: &CertPaths,
    server: &str,
    addr: SocketAddr,
) -> ControlPlaneClient<tonic::transport::Channel> {
    iac_backends::health::grpc::install_crypto_provider();
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(read(&ca.ca)))
        .identity(tonic::transport::Identity::from_pem(
            read(&identity.cert),
            read(&identity.key),
        ))
        .domain_name(server);
    let channel = Endpoint::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .unwrap_or_else(|e| {
            panic!("TLS to {server} at {addr} must succeed (RBAC refuses later): {e:?}")
        });
    ControlPlaneClient::new(channel)
}

/// Every ControlPlane RPC `client` can make, each expected to be refused by RBAC.
async fn assert_control_plane_refused(
    client: &mut ControlPlaneClient<tonic::transport::Channel>,
    who: &str,
) {
    let health = client.health_check(()).await.unwrap_err();
    assert_eq!(
        health.code(),
        tonic::Code::PermissionDenied,
        "{who}: HealthCheck: {health}"
    );
    assert!(health.message().contains("RBAC"), "{who}: {health}");
    let logs = client
        .stream_logs(iac_proto::LogRequest {
            service: String::new(),
            follow: false,
            tail: 0,
        })
        .await
        .map(|_| ())
        .unwrap_err();
    assert_eq!(
        logs.code(),
        tonic::Code::PermissionDenied,
        "{who}: StreamLogs: {logs}"
    );
    let deploy = client
        .deploy(iac_proto::DeployRequest::default())
        .await
        .unwrap_err();
    assert_eq!(
        deploy.code(),
        tonic::Code::PermissionDenied,
        "{who}: Deploy: {deploy}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_through_envoy_to_the_real_agent() {
    let Some(envoy) = envoy_or_skip("mtls_through_envoy_to_the_real_agent") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let project = ProjectName::new(PROJECT).unwrap();
    let ca = dev_ca(&tmp.path().join("secrets"));
    let leaf = ca.issue(&project, &svc("echo")).await.unwrap();
    let control = ca.client_identity().await.unwrap();

    // The child: writes to both streams, runs until the flag file appears, then exits 7.
    let flag = tmp.path().join("exit-now");
    let script = "echo hello-stdout; echo hello-stderr >&2; while [ ! -e \"$0\" ]; do sleep 0.05; done; echo bye-stdout; exit 7";
    let agent = AgentProc::start(&["sh", "-c", script, flag.to_str().unwrap()]);

    let mesh = Mesh {
        project: project.clone(),
        services: vec![
            MeshService {
                name: svc("echo"),
                address: "127.0.0.1".into(),
                port: 1,
                app_port: None,
                edge: false,
                egress: Default::default(),
                sandbox: None,
            },
            MeshService {
                name: svc("other"),
                address: "127.0.0.1".into(),
                port: free_port(),
                app_port: None,
                edge: false,
                egress: Default::default(),
                sandbox: None,
            },
        ],
        ports: MeshPorts::default(),
        certs: leaf.paths.clone(),
    };
    let mut node = start_node(
        &envoy,
        tmp.path(),
        mesh,
        "echo",
        Ports::free(),
        leaf.paths.clone(),
        agent,
    );
    node.wait_ready().await;

    // 1. The prober gets SERVING through Envoy, with the agent's detail.
    let prober = GrpcProber::new(&control.paths, ProbeConfig::default()).unwrap();
    let t0 = Instant::now();
    let report = prober
        .check(&target("echo", node.inbound, Duration::from_secs(20)))
        .await;
    let first_probe = t0.elapsed();
    assert_eq!(
        report.state,
        HealthState::Serving,
        "{report:?}\nenvoy log:\n{}",
        node.envoy.log()
    );
    assert!(report.detail.contains("running"), "{report:?}");
    assert_eq!(report.exit_code, None);
    // The agent's uptime comes through, so the deployer's settle window can count from it.
    assert!(
        report.uptime_ms.is_some_and(|ms| ms > 0),
        "the prober carries the agent's uptime: {report:?}"
    );
    eprintln!(
        "first SERVING after {first_probe:?} ({} attempts)",
        report.attempts
    );

    // 2. A client certificate from another CA is refused (the server is still verified fine).
    let other_ca = dev_ca(&tmp.path().join("other-secrets"));
    let intruder = other_ca.client_identity().await.unwrap();
    let wrong_ca_prober = GrpcProber::from_pem(
        &read(&control.paths.ca),
        &read(&intruder.paths.cert),
        &read(&intruder.paths.key),
        fast(),
    )
    .unwrap();
    let refused = wrong_ca_prober
        .check(&target("echo", node.inbound, Duration::from_millis(600)))
        .await;
    assert_eq!(refused.state, HealthState::Unreachable, "{refused:?}");
    eprintln!("client cert from another CA: {}", refused.detail);
    assert!(
        node.stat("envoy_listener_ssl_fail_verify_error").await >= 1,
        "Envoy must count a failed client-cert verification"
    );

    // 3. A client with no certificate at all is refused.
    let before = node.stat("envoy_listener_ssl_fail_verify_no_cert").await;
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(read(&control.paths.ca)))
        .domain_name("echo");
    let no_cert = async {
        let channel = Endpoint::from_shared(format!("https://{}", node.inbound))?
            .tls_config(tls)?
            .connect()
            .await?;
        let status = ControlPlaneClient::new(channel).health_check(()).await?;
        Ok::<_, Box<dyn std::error::Error>>(status.into_inner())
    }
    .await;
    let err = no_cert.expect_err("a client without a certificate must not get an answer");
    eprintln!("no client cert: {err}");
    assert!(
        node.stat("envoy_listener_ssl_fail_verify_no_cert").await > before,
        "Envoy must count the missing client cert"
    );

    // 4. The server is verified by name: the same endpoint probed as `other` fails TLS.
    let wrong_name = GrpcProber::new(&control.paths, fast()).unwrap();
    let r = wrong_name
        .check(&target("other", node.inbound, Duration::from_millis(400)))
        .await;
    assert_eq!(r.state, HealthState::Unreachable, "{r:?}");
    assert!(
        r.detail.contains("TLS") || r.detail.to_lowercase().contains("certificate"),
        "{r:?}"
    );

    // 5. StreamLogs returns the child's output, with the stream it came from.
    let lines: Vec<_> = prober
        .stream(
            &target("echo", node.inbound, Duration::from_secs(5)),
            LogQuery {
                follow: false,
                tail: 0,
            },
        )
        .await
        .unwrap()
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<_, _>>()
        .unwrap();
    assert!(
        lines
            .iter()
            .any(|l| l.msg == "hello-stdout" && l.stream == "stdout"),
        "{lines:?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.msg == "hello-stderr" && l.stream == "stderr"),
        "{lines:?}"
    );
    assert!(
        lines
            .iter()
            .all(|l| l.service.as_str() == "echo" && !l.ts.is_empty()),
        "{lines:?}"
    );

    // 6. Stats: Prometheus text on /stats/prometheus, nothing else of the admin API.
    let (code, body) = http_get(node.stats, "/stats/prometheus").await;
    assert_eq!(code, 200);
    assert!(
        body.contains("# TYPE envoy_") && body.contains("envoy_cluster_upstream_rq"),
        "{}",
        &body[..body.len().min(500)]
    );
    assert_eq!(http_get(node.stats, "/config_dump").await.0, 404);
    assert_eq!(http_get(node.stats, "/stats").await.0, 404);
    assert_eq!(
        http(reqwest::Method::POST, node.stats, "/quitquitquit")
            .await
            .0,
        404
    );
    assert_eq!(
        http(reqwest::Method::POST, node.stats, "/stats/prometheus")
            .await
            .0,
        404
    );
    let (code, _) = http_get(node.stats, "/stats/prometheus").await;
    assert_eq!(code, 200, "Envoy still up after the /quitquitquit attempt");

    // 7. The child exits 7: NOT_SERVING with the exit code, and its last words in the logs.
    std::fs::write(&flag, b"").unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let report = loop {
        let r = prober
            .check(&target("echo", node.inbound, Duration::from_secs(5)))
            .await;
        if r.state != HealthState::Serving || Instant::now() > deadline {
            break r;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(report.state, HealthState::NotServing, "{report:?}");
    assert_eq!(report.exit_code, Some(7), "{report:?}");
    assert!(report.detail.contains('7'), "{report:?}");
    let lines: Vec<_> = prober
        .stream(
            &target("echo", node.inbound, Duration::from_secs(5)),
            LogQuery {
                follow: false,
                tail: 1,
            },
        )
        .await
        .unwrap()
        .collect::<Vec<_>>()
        .await;
    let msgs: Vec<String> = lines.into_iter().map(|l| l.unwrap().msg).collect();
    assert_eq!(msgs, ["bye-stdout"]);
    assert!(
        node.agent
            .stderr
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains("listening"))
    );
}

/// Short timings for probes that are expected to fail.
fn fast() -> ProbeConfig {
    ProbeConfig {
        initial_backoff: Duration::from_millis(50),
        max_backoff: Duration::from_millis(200),
        connect_timeout: Duration::from_millis(500),
        rpc_timeout: Duration::from_millis(500),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbound_routes_by_authority_to_a_verified_peer() {
    let Some(envoy) = envoy_or_skip("outbound_routes_by_authority_to_a_verified_peer") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let project = ProjectName::new(PROJECT).unwrap();
    let other_project = ProjectName::new("other").unwrap();
    // One CA for both projects, as the dev CA is: only the names tell the projects apart.
    let ca = dev_ca(&tmp.path().join("secrets"));
    let (a_ports, b_ports, c_ports) = (Ports::free(), Ports::free(), Ports::free());
    let (b_inbound, c_inbound) = (b_ports.inbound, c_ports.inbound);
    let b_app = EchoApp::start("b").await;
    let c_app = EchoApp::start("c-of-other").await;
    // `impostor` is routed to b's listener, whose certificate names b: a's Envoy must refuse it.
    // `c` is routed to the `c` of project `other`, whose certificate names `c` and `c.other`
    // (not `c.mt`): a's Envoy must refuse it too.
    let member = |name: &str, port: u16, app_port: Option<u16>| MeshService {
        name: svc(name),
        address: "127.0.0.1".into(),
        port,
        app_port,
        edge: false,
        egress: Default::default(),
        sandbox: None,
    };
    let mesh = Mesh {
        project: project.clone(),
        services: vec![
            member("a", a_ports.inbound, None),
            member("b", b_inbound, Some(b_app.port)),
            member("impostor", b_inbound, None),
            member("c", c_inbound, None),
        ],
        ports: MeshPorts::default(),
        certs: CertPaths::in_container(),
    };
    let other_mesh = Mesh {
        project: other_project.clone(),
        services: vec![member("c", c_inbound, Some(c_app.port))],
        ports: MeshPorts::default(),
        certs: CertPaths::in_container(),
    };
    let a_certs = ca.issue(&project, &svc("a")).await.unwrap().paths;
    let b_certs = ca.issue(&project, &svc("b")).await.unwrap().paths;
    let c_certs = ca.issue(&other_project, &svc("c")).await.unwrap().paths;
    let agent_a = AgentProc::start(&["sh", "-c", "echo i-am-a; exec sleep 600"]);
    let agent_b = AgentProc::start(&["sh", "-c", "echo i-am-b; exec sleep 600"]);
    let agent_c = AgentProc::start(&["sh", "-c", "echo i-am-c; exec sleep 600"]);
    let mut a = start_node(
        &envoy,
        tmp.path(),
        mesh.clone(),
        "a",
        a_ports,
        a_certs,
        agent_a,
    );
    let mut b = start_node(
        &envoy,
        tmp.path(),
        mesh,
        "b",
        b_ports,
        b_certs.clone(),
        agent_b,
    );
    let mut c = start_node(
        &envoy,
        tmp.path(),
        other_mesh,
        "c",
        c_ports,
        c_certs,
        agent_c,
    );
    a.wait_ready().await;
    b.wait_ready().await;
    c.wait_ready().await;

    // The app in a's network namespace speaks plaintext HTTP to 127.0.0.1:<outbound> with
    // authority `b` (and `b.mt`, and with the port); a's Envoy carries it over mTLS to b's Envoy,
    // then b's app. The app tries to forge its identity in x-forwarded-client-cert: b's app sees
    // only the identity Envoy verified.
    let plain = reqwest::Client::builder().no_proxy().build().unwrap();
    for authority in ["b", "b.mt", &format!("b:{}", a.outbound)] {
        let deadline = Instant::now() + Duration::from_secs(20);
        let echo: Echo = loop {
            let resp = plain
                .get(format!("http://127.0.0.1:{}/hello?x=1", a.outbound))
                .header("host", authority)
                .header(
                    "x-forwarded-client-cert",
                    "By=spiffe://iac/mt/b;URI=spiffe://iac/control-plane",
                )
                .header("traceparent", TRACEPARENT)
                .header("baggage", "tenant=acme")
                .timeout(Duration::from_secs(5))
                .send()
                .await;
            match resp {
                Ok(r) if r.status() == 200 => break r.json().await.unwrap(),
                other if Instant::now() < deadline => {
                    eprintln!("outbound via {authority:?} not ready yet: {other:?}");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                other => panic!(
                    "outbound via {authority:?}: {other:?}\nenvoy a:\n{}\nenvoy b:\n{}",
                    a.envoy.log(),
                    b.envoy.log()
                ),
            }
        };
        assert_eq!(echo.app, "b", "authority {authority:?} must reach b's app");
        assert_eq!(echo.path, "/hello");
        assert_eq!(echo.xfcc.len(), 1, "{echo:?}");
        assert!(
            echo.xfcc[0].contains("URI=spiffe://iac/mt/a;"),
            "b's app must see a's verified identity: {echo:?}"
        );
        assert!(!echo.xfcc[0].contains("control-plane"), "{echo:?}");
        // The mesh carries the caller's trace context and baggage through both Envoys.
        assert!(
            echo.tracing.contains(&"baggage: tenant=acme".to_string())
                && echo.tracing.iter().any(|t| t.starts_with("traceparent: ")),
            "{echo:?}"
        );
    }

    // A peer's app may not use the ControlPlane API of another service, even in its project.
    let channel = Endpoint::from_shared(format!("http://127.0.0.1:{}", a.outbound))
        .unwrap()
        .origin("http://b".parse().unwrap())
        .connect()
        .await
        .unwrap();
    assert_control_plane_refused(&mut ControlPlaneClient::new(channel), "a via its outbound").await;

    // An unknown authority has no route.
    let channel = Endpoint::from_shared(format!("http://127.0.0.1:{}", a.outbound))
        .unwrap()
        .origin("http://nobody".parse().unwrap())
        .connect()
        .await
        .unwrap();
    let err = ControlPlaneClient::new(channel)
        .health_check(())
        .await
        .unwrap_err();
    assert_eq!(
        err.code(),
        tonic::Code::Unimplemented,
        "Envoy 404 → UNIMPLEMENTED: {err}"
    );

    // A peer whose certificate does not name it is refused by a's Envoy (SAN check), and so is
    // a `c` whose certificate names it in another project.
    for (peer, server) in [("impostor", &b), ("c", &c)] {
        let before = a.stat("envoy_cluster_ssl_fail_verify_san").await;
        let resp = plain
            .get(format!("http://127.0.0.1:{}/", a.outbound))
            .header("host", peer)
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 503, "{peer}: {:?}", resp.text().await);
        assert!(
            a.stat("envoy_cluster_ssl_fail_verify_san").await > before,
            "a's Envoy must count the SAN mismatch of {peer}"
        );
        assert_eq!(
            server.stat("envoy_listener_ssl_fail_verify_error").await,
            0,
            "{peer}'s server accepted a's client certificate"
        );
    }
    // The app of the other project's c never saw a request.
    assert_eq!(c_app.hits.load(std::sync::atomic::Ordering::SeqCst), 0);

    // A request that matches no route of a (which has no app) is refused, not passed on.
    let b_https = https_client(&b_certs, &b_certs, "a", a.inbound);
    let (code, body) = https_get(&b_https, "a", a.inbound, "/", &[]).await;
    assert_eq!(code, 403, "no route on a: {body}");
}

/// Inbound RBAC on b (project mt, with an app) and c (project other, with an app), called
/// directly by real TLS clients holding leaves of one shared CA.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbound_rbac_admits_the_control_plane_and_same_project_peers_only() {
    let Some(envoy) =
        envoy_or_skip("inbound_rbac_admits_the_control_plane_and_same_project_peers_only")
    else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let mt = ProjectName::new(PROJECT).unwrap();
    let other = ProjectName::new("other").unwrap();
    let ca = dev_ca(&tmp.path().join("secrets"));
    let control = ca.client_identity().await.unwrap().paths;
    let b_certs = ca.issue(&mt, &svc("b")).await.unwrap().paths;
    let c_certs = ca.issue(&other, &svc("c")).await.unwrap().paths;
    // Callers: a peer of mt, a peer of other, and a service of mt squatting the control plane's
    // DNS name (its leaf carries DNS SAN `iac-control-plane`, URI spiffe://iac/mt/iac-control-plane).
    let a_mt = ca.issue(&mt, &svc("a")).await.unwrap().paths;
    let d_other = ca.issue(&other, &svc("d")).await.unwrap().paths;
    let squatter = ca
        .issue(&mt, &svc("iac-control-plane"))
        .await
        .unwrap()
        .paths;

    let (b_ports, c_ports) = (Ports::free(), Ports::free());
    let b_app = EchoApp::start("b").await;
    let c_app = EchoApp::start("c").await;
    let member = |name: &str, port: u16, app_port: Option<u16>| MeshService {
        name: svc(name),
        address: "127.0.0.1".into(),
        port,
        app_port,
        edge: false,
        egress: Default::default(),
        sandbox: None,
    };
    let b_mesh = Mesh {
        project: mt.clone(),
        services: vec![
            member("b", b_ports.inbound, Some(b_app.port)),
            member("a", free_port(), None),
        ],
        ports: MeshPorts::default(),
        certs: CertPaths::in_container(),
    };
    let c_mesh = Mesh {
        project: other.clone(),
        services: vec![member("c", c_ports.inbound, Some(c_app.port))],
        ports: MeshPorts::default(),
        certs: CertPaths::in_container(),
    };
    let agent_b = AgentProc::start(&["sh", "-c", "echo i-am-b; exec sleep 600"]);
    let agent_c = AgentProc::start(&["sh", "-c", "echo i-am-c; exec sleep 600"]);
    let mut b = start_node(&envoy, tmp.path(), b_mesh, "b", b_ports, b_certs, agent_b);
    let mut c = start_node(&envoy, tmp.path(), c_mesh, "c", c_ports, c_certs, agent_c);
    b.wait_ready().await;
    c.wait_ready().await;

    // 1. The control plane: HealthCheck and StreamLogs through the sidecar, as the prober and
    //    `iac logs` do.
    let prober = GrpcProber::new(&control, ProbeConfig::default()).unwrap();
    let report = prober
        .check(&target("b", b.inbound, Duration::from_secs(20)))
        .await;
    assert_eq!(
        report.state,
        HealthState::Serving,
        "{report:?}\nenvoy log:\n{}",
        b.envoy.log()
    );
    let lines: Vec<String> = prober
        .stream(
            &target("b", b.inbound, Duration::from_secs(5)),
            LogQuery {
                follow: false,
                tail: 0,
            },
        )
        .await
        .unwrap()
        .map(|l| l.unwrap().msg)
        .collect()
        .await;
    assert_eq!(lines, ["i-am-b"]);
    // ... but not the app: nothing the control plane does needs it.
    let cp_https = https_client(&control, &control, "b", b.inbound);
    let (code, body) = https_get(&cp_https, "b", b.inbound, "/", &[]).await;
    assert_eq!(code, 403, "control plane on b's app route: {body}");

    // 2. A peer of the same project: the app yes, the ControlPlane API no.
    let a_https = https_client(&control, &a_mt, "b", b.inbound);
    let (code, body) = https_get(
        &a_https,
        "b",
        b.inbound,
        "/orders",
        &[
            (
                "x-forwarded-client-cert",
                "By=spiffe://iac/mt/b;Hash=00;URI=spiffe://iac/control-plane",
            ),
            ("x-forwarded-client-cert", "URI=spiffe://iac/mt/forged"),
        ]
        .into_iter()
        .chain(HOSTILE_ENVOY_HEADERS.iter().copied())
        .collect::<Vec<_>>(),
    )
    .await;
    assert_eq!(code, 200, "{body}");
    let echo: Echo = serde_json::from_str(&body).unwrap();
    assert_eq!((echo.app.as_str(), echo.path.as_str()), ("b", "/orders"));
    assert_no_caller_envoy_headers(&echo);
    assert_eq!(echo.xfcc.len(), 1, "exactly Envoy's own header: {echo:?}");
    let xfcc = &echo.xfcc[0];
    assert!(
        xfcc.contains("By=spiffe://iac/mt/b;")
            && xfcc.contains("URI=spiffe://iac/mt/a;")
            && xfcc.contains("DNS=a.mt")
            && xfcc.contains("Subject=\"CN=a"),
        "{xfcc}"
    );
    assert!(
        !xfcc.contains("control-plane") && !xfcc.contains("forged") && !xfcc.contains("Hash=00;"),
        "a forged XFCC reached the app: {xfcc}"
    );
    let mut a_grpc = grpc_as(&control, &a_mt, "b", b.inbound).await;
    assert_control_plane_refused(&mut a_grpc, "a of mt on b").await;

    // 3. A service named like the control plane is still just a service.
    let mut squat = grpc_as(&control, &squatter, "b", b.inbound).await;
    assert_control_plane_refused(&mut squat, "mt/iac-control-plane on b").await;

    // 4. Another project's leaf, from the same CA: TLS succeeds, every route refuses it.
    let d_https = https_client(&control, &d_other, "b", b.inbound);
    let (code, body) = https_get(&d_https, "b", b.inbound, "/orders", &[]).await;
    assert_eq!(code, 403, "other/d on mt/b's app: {body}");
    assert!(body.contains("RBAC"), "{body}");
    let mut d_grpc = grpc_as(&control, &d_other, "b", b.inbound).await;
    assert_control_plane_refused(&mut d_grpc, "d of other on b").await;
    // ... while in its own project it is a peer like any other,
    let d_on_c = https_client(&control, &d_other, "c", c.inbound);
    let (code, body) = https_get(&d_on_c, "c", c.inbound, "/", &[]).await;
    assert_eq!(code, 200, "other/d on other/c's app: {body}");
    let echo: Echo = serde_json::from_str(&body).unwrap();
    assert!(
        echo.xfcc[0].contains("URI=spiffe://iac/other/d;"),
        "{echo:?}"
    );
    // ... and mt's a is refused by other's c, both ways.
    let a_on_c = https_client(&control, &a_mt, "c", c.inbound);
    let (code, body) = https_get(&a_on_c, "c", c.inbound, "/", &[]).await;
    assert_eq!(code, 403, "mt/a on other/c's app: {body}");
    let mut a_grpc_c = grpc_as(&control, &a_mt, "c", c.inbound).await;
    assert_control_plane_refused(&mut a_grpc_c, "a of mt on c").await;
    assert_eq!(
        GrpcProber::new(&control, fast())
            .unwrap()
            .check(&target("c", c.inbound, Duration::from_secs(5)))
            .await
            .state,
        HealthState::Serving,
        "the control plane serves every project"
    );

    // 5. Envoy counted the refusals as RBAC denials, not TLS failures.
    // On b: the control plane on the app (1), a's three RPCs (3), the squatter's (3), d on the
    // app (1) and d's RPCs (3).
    assert_eq!(b.stat("envoy_http_rbac_denied").await, 11);
    assert_eq!(b.stat("envoy_listener_ssl_fail_verify_error").await, 0);
}

/// The edge: plain HTTP from the host to the app, nothing else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edge_listener_reaches_the_app_and_never_the_control_plane() {
    let Some(envoy) = envoy_or_skip("edge_listener_reaches_the_app_and_never_the_control_plane")
    else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let mt = ProjectName::new(PROJECT).unwrap();
    let ca = dev_ca(&tmp.path().join("secrets"));
    let control = ca.client_identity().await.unwrap().paths;
    let web_certs = ca.issue(&mt, &svc("web")).await.unwrap().paths;
    let ports = Ports::free();
    let app = EchoApp::start("web").await;
    let mesh = Mesh {
        project: mt.clone(),
        services: vec![MeshService {
            name: svc("web"),
            address: "127.0.0.1".into(),
            port: ports.inbound,
            app_port: Some(app.port),
            edge: true,
            egress: Default::default(),
            sandbox: None,
        }],
        ports: MeshPorts::default(),
        certs: CertPaths::in_container(),
    };
    let agent = AgentProc::start(&["sh", "-c", "echo i-am-web; exec sleep 600"]);
    let mut web = start_node(&envoy, tmp.path(), mesh, "web", ports, web_certs, agent);
    web.wait_ready().await;
    let edge = SocketAddr::from(([127, 0, 0, 1], web.edge));
    if let Err(e) = web
        .envoy
        .wait_listening(&[edge], Duration::from_secs(30))
        .await
    {
        panic!("{e}\n--- config ---\n{}", web.config);
    }
    let hits = || app.hits.load(std::sync::atomic::Ordering::SeqCst);

    // 1. A person on the host, no certificate: the app answers, and sees the edge identity
    //    instead of anything the caller claimed.
    let plain = reqwest::Client::builder().no_proxy().build().unwrap();
    let mut req = plain
        .get(format!("http://{edge}/shop?q=1"))
        .header(
            "x-forwarded-client-cert",
            "By=spiffe://iac/mt/web;URI=spiffe://iac/control-plane",
        )
        .timeout(Duration::from_secs(5));
    for (k, v) in HOSTILE_ENVOY_HEADERS {
        req = req.header(*k, *v);
    }
    let resp = req.send().await.unwrap();
    assert_eq!(resp.status(), 200, "edge GET: {:?}", web.envoy.log());
    let echo: Echo = resp.json().await.unwrap();
    assert_eq!((echo.app.as_str(), echo.path.as_str()), ("web", "/shop"));
    assert_no_caller_envoy_headers(&echo);
    assert_eq!(echo.xfcc, ["URI=spiffe://iac/ingress"], "{echo:?}");
    assert_eq!(hits(), 1);

    // 1b. Where the request came from is Envoy's to say: a caller claiming another client
    //     address, host, scheme or path reaches the app with none of it; tracing passes.
    let spoofed: &[(&str, &str)] = &[
        ("x-forwarded-for", "6.6.6.6"),
        ("x-envoy-original-path", "/admin/spoofed"),
        ("x-envoy-external-address", "6.6.6.6"),
        ("x-envoy-made-up", "spoofed"),
        ("x-forwarded-host", "spoofed.example"),
        ("x-forwarded-proto", "https"),
        ("x-forwarded-port", "6666"),
        ("x-forwarded-prefix", "/spoofed"),
        ("forwarded", "for=6.6.6.6;host=spoofed.example;proto=https"),
    ];
    let mut req = plain
        .get(format!("http://{edge}/shop"))
        .header("traceparent", TRACEPARENT)
        .header("baggage", "tenant=acme")
        .timeout(Duration::from_secs(5));
    for (k, v) in spoofed {
        req = req.header(*k, *v);
    }
    let resp = req.send().await.unwrap();
    assert_eq!(resp.status(), 200, "edge GET: {:?}", web.envoy.log());
    let echo: Echo = resp.json().await.unwrap();
    let seen: Vec<&String> = echo.forwarded.iter().chain(&echo.envoy).collect();
    for s in &seen {
        assert!(
            !s.contains("6.6.6.6") && !s.contains("spoofed") && !s.contains("6666"),
            "a caller's value reached the app: {s} (all: {echo:?})"
        );
    }
    assert!(
        !seen.iter().any(|s| s.starts_with("x-envoy-original-path:")),
        "{echo:?}"
    );
    // Envoy's own view: one address (the peer of the connection, no hop trusted), plain http.
    let xff: Vec<&String> = echo
        .forwarded
        .iter()
        .filter(|h| h.starts_with("x-forwarded-for:"))
        .collect();
    assert_eq!(xff.len(), 1, "{echo:?}");
    let addr = xff[0].trim_start_matches("x-forwarded-for:").trim();
    assert!(
        addr.parse::<std::net::IpAddr>().is_ok(),
        "x-forwarded-for is one address: {echo:?}"
    );
    assert!(
        echo.forwarded
            .contains(&"x-forwarded-proto: http".to_string()),
        "{echo:?}"
    );
    assert!(
        echo.tracing
            .contains(&format!("traceparent: {TRACEPARENT}"))
            && echo.tracing.contains(&"baggage: tenant=acme".to_string()),
        "trace context passes the edge: {echo:?}"
    );
    assert_eq!(echo.xfcc, ["URI=spiffe://iac/ingress"], "{echo:?}");
    assert_eq!(hits(), 2);

    // 2. The ControlPlane API is not there, however the path is spelled.
    for path in [
        "/iac.controlplane.v1.ControlPlane/HealthCheck",
        "/iac.controlplane.v1.ControlPlane/StreamLogs",
        "/iac.controlplane.v1.ControlPlane/Deploy",
        "//iac.controlplane.v1.ControlPlane/HealthCheck",
        "/x/../iac.controlplane.v1.ControlPlane/HealthCheck",
        "/%69ac.controlplane.v1.ControlPlane/HealthCheck",
    ] {
        for grpc in [false, true] {
            let mut req = plain
                .post(format!("http://{edge}{path}"))
                .timeout(Duration::from_secs(5));
            if grpc {
                req = req.header("content-type", "application/grpc");
            }
            let resp = req.send().await.unwrap();
            let status = resp.status().as_u16();
            let headers = resp.headers().clone();
            let body = resp.text().await.unwrap_or_default();
            let header = |k: &str| headers.get(k).and_then(|v| v.to_str().ok()).unwrap_or("");
            // Refused at the edge: 404, which Envoy turns into gRPC's UNIMPLEMENTED (12) with
            // the same message for a gRPC caller. Or — for a spelling Envoy does not
            // normalize — passed to the app like any other path. Never the agent.
            let refused = if grpc {
                status == 200
                    && header("grpc-status") == "12"
                    && header("grpc-message") == "not found%0A"
            } else {
                status == 404 && body == "not found\n"
            };
            assert!(
                refused || body.contains("\"app\":\"web\""),
                "POST {path} (grpc: {grpc}): {status} {headers:?} {body}\n--- log ---\n{}",
                web.envoy.log()
            );
        }
    }
    // The canonical spellings were refused at the edge, not passed to the app.
    let resp = plain
        .post(format!(
            "http://{edge}/iac.controlplane.v1.ControlPlane/HealthCheck"
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    assert_eq!(resp.text().await.unwrap(), "not found\n");

    // 3. A real gRPC client over h2c gets no answer from the agent.
    let channel = Endpoint::from_shared(format!("http://{edge}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut grpc = ControlPlaneClient::new(channel);
    let err = grpc.health_check(()).await.unwrap_err();
    assert_eq!(
        err.code(),
        tonic::Code::Unimplemented,
        "Envoy's 404 → UNIMPLEMENTED, never a HealthStatus: {err}"
    );
    let err = grpc
        .stream_logs(iac_proto::LogRequest {
            service: String::new(),
            follow: false,
            tail: 0,
        })
        .await
        .map(|_| ())
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unimplemented, "{err}");

    // 4. The mesh port is unchanged: no certificate, no service.
    let no_cert = reqwest::Client::builder()
        .no_proxy()
        .tls_certs_only([reqwest::Certificate::from_pem(&read(&control.ca)).unwrap()])
        .resolve("web", web.inbound)
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let err = no_cert
        .get(format!("https://web:{}/shop", web.inbound.port()))
        .send()
        .await
        .expect_err("the mesh port must refuse a client without a certificate");
    eprintln!("no client certificate on the mesh port: {err:?}");
    // ... while the control plane still gets its HealthCheck there.
    let report = GrpcProber::new(&control, ProbeConfig::default())
        .unwrap()
        .check(&target("web", web.inbound, Duration::from_secs(20)))
        .await;
    assert_eq!(report.state, HealthState::Serving, "{report:?}");
    assert_eq!(report.uptime_ms.map(|u| u > 0), Some(true), "{report:?}");

    // Envoy normalized every spelling (%69 → i, //, ..): none reached even the app.
    assert_eq!(hits(), 2, "only the requests meant for the app reached it");
}

/// The value of the Prometheus series `name` whose labels contain `label` (0 when absent).
fn labelled_stat(stats: &str, name: &str, label: &str) -> u64 {
    stats
        .lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) && l.contains(label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|v| v as u64)
        .sum()
}

/// Sends `request` on a fresh connection to the egress listener and returns everything read
/// until `until` appears in it (or the peer closes, or 5 s pass).
async fn egress_exchange(port: u16, request: &str, then: Option<&str>, until: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    s.write_all(request.as_bytes()).await.unwrap();
    let mut got = Vec::new();
    let mut sent_then = false;
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut buf = [0u8; 4096];
    loop {
        let text = String::from_utf8_lossy(&got).into_owned();
        if let Some(next) = then
            && !sent_then
            && text.contains("\r\n\r\n")
        {
            if !text.starts_with("HTTP/1.1 200") {
                return text;
            }
            s.write_all(next.as_bytes()).await.unwrap();
            sent_then = true;
        }
        if (then.is_none() || sent_then) && text.contains(until) {
            return text;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return text,
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
}

/// The egress listener against real servers on loopback ("the world": two echo apps reached as
/// `localhost`, resolved by Envoy itself). The allowlist names world A only: plain HTTP
/// proxying and CONNECT reach A; B is refused with 403 both ways and never sees a request; TLS
/// sent directly with an SNI no rule names is closed; every refusal is logged naming the
/// service, the destination and the rule, and counted in Envoy's stats.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn egress_listener_admits_only_the_allowlist() {
    let Some(envoy) = envoy_or_skip("egress_listener_admits_only_the_allowlist") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let mt = ProjectName::new(PROJECT).unwrap();
    let ca = dev_ca(&tmp.path().join("secrets"));
    let web_certs = ca.issue(&mt, &svc("web")).await.unwrap().paths;
    let ports = Ports::free();
    let egress_port = ports.egress;
    let world_a = EchoApp::start("world-a").await;
    let world_b = EchoApp::start("world-b").await;
    let rules = vec![
        format!("localhost:{}", world_a.port).parse().unwrap(),
        "*.allowed.example:443".parse().unwrap(),
    ];
    let mesh = Mesh {
        project: mt.clone(),
        services: vec![MeshService {
            name: svc("web"),
            address: "127.0.0.1".into(),
            port: ports.inbound,
            app_port: None,
            edge: false,
            egress: iac_core::EgressPolicy::Allow(rules),
            sandbox: None,
        }],
        ports: MeshPorts::default(),
        certs: CertPaths::in_container(),
    };
    let agent = AgentProc::start(&["sh", "-c", "exec sleep 600"]);
    let mut web = start_node(&envoy, tmp.path(), mesh, "web", ports, web_certs, agent);
    web.wait_ready().await;
    let egress = SocketAddr::from(([127, 0, 0, 1], egress_port));
    if let Err(e) = web
        .envoy
        .wait_listening(&[egress], Duration::from_secs(30))
        .await
    {
        panic!("{e}\n--- config ---\n{}", web.config);
    }
    let (a, b) = (world_a.port, world_b.port);

    // 1. Plain HTTP through the proxy (what HTTP_PROXY makes requests/pip/httpx do).
    let proxied = reqwest::Client::builder()
        .proxy(reqwest::Proxy::http(format!("http://{egress}")).unwrap())
        .build()
        .unwrap();
    let resp = proxied
        .get(format!("http://localhost:{a}/through-proxy"))
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "allowed: {}", web.envoy.log());
    let echo: Echo = resp.json().await.unwrap();
    assert_eq!(
        (echo.app.as_str(), echo.path.as_str()),
        ("world-a", "/through-proxy")
    );
    let resp = proxied
        .get(format!("http://localhost:{b}/nope"))
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403, "not on the list: {}", web.envoy.log());

    // 2. CONNECT (what HTTPS_PROXY makes clients do), then bytes through the tunnel.
    let tunnel = egress_exchange(
        egress_port,
        &format!("CONNECT localhost:{a} HTTP/1.1\r\nHost: localhost:{a}\r\n\r\n"),
        Some("GET /tunnelled HTTP/1.1\r\nHost: world-a\r\nConnection: close\r\n\r\n"),
        "world-a",
    )
    .await;
    assert!(
        tunnel.starts_with("HTTP/1.1 200") && tunnel.contains("\"path\":\"/tunnelled\""),
        "CONNECT to an allowed host tunnels: {tunnel}\n{}",
        web.envoy.log()
    );
    let refused = egress_exchange(
        egress_port,
        &format!("CONNECT localhost:{b} HTTP/1.1\r\nHost: localhost:{b}\r\n\r\n"),
        Some("GET / HTTP/1.1\r\nHost: world-b\r\n\r\n"),
        "world-b",
    )
    .await;
    assert!(
        refused.starts_with("HTTP/1.1 403"),
        "CONNECT to a host not on the list: {refused}"
    );
    // The apex of a suffix rule and another port of an allowed host are not on the list either.
    for authority in ["allowed.example:443".to_string(), format!("localhost:{b}")] {
        let r = egress_exchange(
            egress_port,
            &format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n"),
            None,
            "\r\n\r\n",
        )
        .await;
        assert!(r.starts_with("HTTP/1.1 403"), "{authority}: {r}");
    }
    assert_eq!(
        world_b.hits.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "world B never saw a request"
    );

    // 3. TLS sent straight to the listener with an SNI no rule names: closed without a byte.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(
        rustls::ClientConfig::builder()
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth(),
    ));
    let tcp = tokio::net::TcpStream::connect(egress).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("blocked.example").unwrap();
    let tls = tokio::time::timeout(Duration::from_secs(10), connector.connect(name, tcp))
        .await
        .expect("the refusal is prompt");
    assert!(tls.is_err(), "a TLS handshake by an unlisted SNI fails");

    // 4. Refusals are counted and logged with service, destination and rule.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let stats = http_get(web.stats, "/stats/prometheus").await.1;
        let http_denied = labelled_stat(&stats, "envoy_http_rbac_denied", "\"egress\"");
        let sni_denied = labelled_stat(
            &stats,
            "envoy_tcp_downstream_cx_total",
            "\"egress_sni_refused\"",
        );
        let log = web.envoy.log();
        let done = http_denied >= 4
            && sni_denied >= 1
            && log.contains(&format!(
                "iac-egress refused service=web destination=localhost:{b} method=GET rule=none"
            ))
            && log.contains(&format!(
                "iac-egress refused service=web destination=localhost:{b} method=CONNECT rule=none"
            ))
            && log.contains("iac-egress refused service=web destination=blocked.example rule=none")
            && log.contains(&format!(
                "iac-egress allowed service=web destination=localhost:{a} method=CONNECT rule=localhost:{a}"
            ));
        if done {
            assert!(labelled_stat(&stats, "envoy_http_rbac_allowed", "\"egress\"") >= 2);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "denied: http {http_denied}, sni {sni_denied}\n--- log ---\n{log}\n--- stats ---\n{}",
            http_get(web.stats, "/stats/prometheus")
                .await
                .1
                .lines()
                .filter(|l| l.contains("egress"))
                .collect::<Vec<_>>()
                .join("\n")
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
