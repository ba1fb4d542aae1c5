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
//! /quitquitquit; the outbound listener routes by authority to a peer over mTLS and refuses a
//! peer whose certificate names someone else. Envoy and the agents are killed on drop.
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

/// A free loopback port (bound then released; good enough on a test host).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
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
            .args(["--listen", "127.0.0.1:0", "--grace", "1", "--"])
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
    config: String,
}

struct Ports {
    inbound: u16,
    outbound: u16,
    stats: u16,
}

impl Ports {
    fn free() -> Ports {
        Ports {
            inbound: free_port(),
            outbound: free_port(),
            stats: free_port(),
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
        admin_socket: dir.join(format!("{name}-admin.sock")).display().to_string(),
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
            },
            MeshService {
                name: svc("other"),
                address: "127.0.0.1".into(),
                port: free_port(),
                app_port: None,
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
    let ca = dev_ca(&tmp.path().join("secrets"));
    let (a_ports, b_ports) = (Ports::free(), Ports::free());
    let b_inbound = b_ports.inbound;
    // `impostor` is routed to b's listener, whose certificate names b: a's Envoy must refuse it.
    let mesh = Mesh {
        project: project.clone(),
        services: vec![
            MeshService {
                name: svc("a"),
                address: "127.0.0.1".into(),
                port: a_ports.inbound,
                app_port: None,
            },
            MeshService {
                name: svc("b"),
                address: "127.0.0.1".into(),
                port: b_inbound,
                app_port: None,
            },
            MeshService {
                name: svc("impostor"),
                address: "127.0.0.1".into(),
                port: b_inbound,
                app_port: None,
            },
        ],
        ports: MeshPorts::default(),
        certs: CertPaths::in_container(),
    };
    let a_certs = ca.issue(&project, &svc("a")).await.unwrap().paths;
    let b_certs = ca.issue(&project, &svc("b")).await.unwrap().paths;
    let agent_a = AgentProc::start(&["sh", "-c", "echo i-am-a; exec sleep 600"]);
    let agent_b = AgentProc::start(&["sh", "-c", "echo i-am-b; exec sleep 600"]);
    let mut a = start_node(
        &envoy,
        tmp.path(),
        mesh.clone(),
        "a",
        a_ports,
        a_certs,
        agent_a,
    );
    let mut b = start_node(&envoy, tmp.path(), mesh, "b", b_ports, b_certs, agent_b);
    a.wait_ready().await;
    b.wait_ready().await;

    // The app in a's network namespace speaks plaintext h2 to 127.0.0.1:<outbound> with
    // authority `b` (and `b.mt`); a's Envoy carries it over mTLS to b's Envoy, then b's agent.
    for authority in ["b", "b.mt", &format!("b:{}", a.outbound)] {
        let channel = Endpoint::from_shared(format!("http://127.0.0.1:{}", a.outbound))
            .unwrap()
            .origin(format!("http://{authority}").parse().unwrap())
            .connect()
            .await
            .unwrap();
        let mut client = ControlPlaneClient::new(channel);
        let deadline = Instant::now() + Duration::from_secs(20);
        let logs = loop {
            let req = iac_proto::LogRequest {
                service: String::new(),
                follow: false,
                tail: 0,
            };
            match client.stream_logs(req).await {
                Ok(resp) => {
                    let lines: Vec<_> = resp.into_inner().collect::<Vec<_>>().await;
                    break lines
                        .into_iter()
                        .map(|l| l.unwrap().msg)
                        .collect::<Vec<_>>();
                }
                Err(e) if Instant::now() < deadline => {
                    eprintln!("outbound via {authority:?} not ready yet: {e}");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => panic!(
                    "outbound via {authority:?}: {e}\nenvoy a:\n{}\nenvoy b:\n{}",
                    a.envoy.log(),
                    b.envoy.log()
                ),
            }
        };
        assert_eq!(
            logs,
            ["i-am-b"],
            "authority {authority:?} must reach b's agent"
        );
    }

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

    // A peer whose certificate does not name it is refused by a's Envoy (SAN check).
    let before = a.stat("envoy_cluster_ssl_fail_verify_san").await;
    let channel = Endpoint::from_shared(format!("http://127.0.0.1:{}", a.outbound))
        .unwrap()
        .origin("http://impostor".parse().unwrap())
        .connect()
        .await
        .unwrap();
    let err = ControlPlaneClient::new(channel)
        .health_check(())
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err}");
    assert!(
        a.stat("envoy_cluster_ssl_fail_verify_san").await > before,
        "a's Envoy must count the SAN mismatch"
    );
    assert!(
        b.stat("envoy_listener_ssl_fail_verify_error").await == 0,
        "b accepted a's client certificate"
    );
}
