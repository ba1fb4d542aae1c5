//! The real `iac-agent` binary's readiness reporting: a declared app port holds HealthCheck at
//! UNKNOWN ("starting") until the app listens on it, the listening ports and the uptime are
//! reported, a server that exits cleanly is NOT_SERVING, and `--probe` answers for a HEALTHCHECK.

mod common;

use std::net::TcpListener;
use std::process::Command;
use std::time::Duration;

use common::{AGENT, Agent};
use iac_proto::HealthStatusCode;

const SERVING: i32 = HealthStatusCode::Serving as i32;
const NOT_SERVING: i32 = HealthStatusCode::NotServing as i32;
const UNKNOWN: i32 = HealthStatusCode::Unknown as i32;

/// A port that is free right now (bound and released).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A child that listens on `port` once the file `go` exists, then serves until killed.
fn late_listener(port: u16, go: &std::path::Path) -> String {
    format!(
        "import os, socket, time\n\
         while not os.path.exists({go:?}): time.sleep(0.02)\n\
         s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
         s.bind(('0.0.0.0', {port})); s.listen(); print('listening', flush=True)\n\
         time.sleep(600)\n"
    )
}

#[tokio::test]
async fn a_declared_port_holds_starting_until_the_app_listens() {
    let dir = tempfile::tempdir().unwrap();
    let go = dir.path().join("go");
    let port = free_port();
    let port_s = port.to_string();
    let script = late_listener(port, &go);
    let mut agent = Agent::start(&["--app-port", &port_s], &["python3", "-c", &script]);

    let h = agent.health().await;
    assert_eq!(h.status, UNKNOWN, "{h:?}");
    assert_eq!(h.app_port, u32::from(port));
    assert!(
        h.detail.contains(&format!(
            "waiting for the app to accept connections on 127.0.0.1:{port}"
        )),
        "{}",
        h.detail
    );
    assert!(!h.listening_ports.contains(&u32::from(port)));
    let probe = Command::new(AGENT)
        .args(["--probe", "--listen", &agent.addr.unwrap().to_string()])
        .output()
        .unwrap();
    assert_eq!(probe.status.code(), Some(1), "{probe:?}");
    assert!(String::from_utf8_lossy(&probe.stdout).starts_with("UNKNOWN: running (pid "));

    tokio::time::sleep(Duration::from_millis(300)).await;
    std::fs::write(&go, "").unwrap();
    agent.stdout.wait_for("listening");
    let h = agent.health_until(|h| h.status != UNKNOWN).await;
    assert_eq!(h.status, SERVING, "{h:?}");
    assert!(h.listening_ports.contains(&u32::from(port)), "{h:?}");
    assert!(
        !h.listening_ports
            .contains(&u32::from(agent.addr.unwrap().port())),
        "the agent's own port is not an app port: {h:?}"
    );
    assert!(h.uptime_ms >= 300, "uptime counts from the start: {h:?}");
    let probe = Command::new(AGENT)
        .args(["--probe", "--listen", &agent.addr.unwrap().to_string()])
        .output()
        .unwrap();
    assert_eq!(probe.status.code(), Some(0), "{probe:?}");
    assert!(String::from_utf8_lossy(&probe.stdout).starts_with("SERVING: running (pid "));
    agent.stop();
}

#[tokio::test]
async fn a_server_that_exits_cleanly_is_not_serving_but_a_job_is() {
    let port = free_port().to_string();
    let agent = Agent::start(&["--app-port", &port], &["sh", "-c", "sleep 0.2; exit 0"]);
    let h = agent.health_until(|h| h.exit_code.is_some()).await;
    assert_eq!(h.status, NOT_SERVING, "{h:?}");
    assert_eq!(h.exit_code, Some(0));
    assert!(
        h.detail.starts_with("exited with code 0 after ")
            && h.detail.contains(&format!(
                "a service that serves port {port} must keep running; restarting in "
            )),
        "{}",
        h.detail
    );
    // The clock starts just after the spawn, so a 0.2 s run can read a millisecond short.
    assert!(h.uptime_ms >= 150, "{h:?}");
    let up = h.uptime_ms;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        agent.health().await.uptime_ms,
        up,
        "uptime stops at the exit"
    );

    let job = Agent::start(&[], &["sh", "-c", "exit 0"]);
    let h = job.health_until(|h| h.exit_code.is_some()).await;
    assert_eq!((h.status, h.app_port), (SERVING, 0), "{h:?}");
}

#[test]
fn probe_reports_an_absent_agent_as_unreachable() {
    let port = free_port();
    let out = Command::new(AGENT)
        .args(["--probe", "--listen", &format!("127.0.0.1:{port}")])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.starts_with(&format!(
            "UNREACHABLE: cannot connect to the agent at 127.0.0.1:{port}"
        )),
        "{text}"
    );
}

#[tokio::test]
async fn the_standard_health_service_follows_healthcheck_on_its_own_listener() {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;

    let dir = tempfile::tempdir().unwrap();
    let go = dir.path().join("go");
    let port = free_port();
    let (port_s, health) = (port.to_string(), format!("127.0.0.1:{}", free_port()));
    let script = late_listener(port, &go);
    let mut agent = Agent::start(
        &["--app-port", &port_s, "--health-listen", &health],
        &["python3", "-c", &script],
    );
    agent.stderr.wait_for("health service listening on ");
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{health}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = HealthClient::new(channel);
    let ask = |service: &str| HealthCheckRequest {
        service: service.into(),
    };
    let status = client.check(ask("")).await.unwrap().into_inner().status;
    assert_eq!(
        status,
        ServingStatus::NotServing as i32,
        "starting is not serving"
    );
    let err = client.check(ask("nope")).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
    // Only the health service is on that listener: the ControlPlane API is not.
    let mut cp = iac_proto::ControlPlaneClient::connect(format!("http://{health}"))
        .await
        .unwrap();
    assert_eq!(
        cp.health_check(()).await.unwrap_err().code(),
        tonic::Code::Unimplemented
    );

    let mut watch = client
        .watch(ask("iac.controlplane.v1.ControlPlane"))
        .await
        .unwrap()
        .into_inner();
    let first = watch.message().await.unwrap().unwrap();
    assert_eq!(first.status, ServingStatus::NotServing as i32);
    std::fs::write(&go, "").unwrap();
    let next = tokio::time::timeout(Duration::from_secs(10), watch.message())
        .await
        .expect("watch reports the change")
        .unwrap()
        .unwrap();
    assert_eq!(next.status, ServingStatus::Serving as i32);
    let status = client.check(ask("")).await.unwrap().into_inner().status;
    assert_eq!(status, ServingStatus::Serving as i32);
    agent.stop();
}

/// `UID:GID` for the app of test `n`, unique to this test process (another run of these tests
/// at the same time, on the same host, gets others).
fn test_uid(n: u32) -> String {
    let uid = 20_000 + (std::process::id() % 20_000) * 2 + n;
    format!("{uid}:{uid}")
}

/// An app on a hard-coded port: after `--forward-after`, the agent listens on the declared port
/// and forwards there; HealthCheck says so and is SERVING; a connection to the declared port
/// reaches the app. Needs root (the app runs as its own user, which is what makes its sockets
/// recognisable). Each test here uses a uid of its own: the tests share the host's network
/// namespace, and another test's app socket under the same uid would make the choice ambiguous.
#[tokio::test]
async fn an_app_on_another_port_is_forwarded_to() {
    // SAFETY: geteuid never fails.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIP: forwarding needs --user, which needs root");
        return;
    }
    let (declared, real) = (free_port(), free_port());
    // Debian's python (root's pyenv is not readable by another user).
    let script = format!(
        "import socket\n\
         s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
         s.bind(('127.0.0.1', {real})); s.listen(); print('listening', flush=True)\n\
         while True:\n\
         \x20   c, _ = s.accept(); c.sendall(b'app on {real}'); c.close()\n"
    );
    let declared_s = declared.to_string();
    let user = test_uid(0);
    let mut agent = Agent::start(
        &[
            "--app-port",
            &declared_s,
            "--user",
            &user,
            "--forward-after",
            "500ms",
        ],
        &["/usr/bin/python3", "-c", &script],
    );
    agent.stdout.wait_for("listening");
    let h = agent.health().await;
    assert_eq!(h.status, UNKNOWN, "not forwarded yet: {h:?}");
    assert_eq!(h.forwarded_to, 0, "{h:?}");
    let h = agent.health_until(|h| h.status != UNKNOWN).await;
    assert_eq!(h.status, SERVING, "{h:?}");
    assert_eq!(h.forwarded_to, u32::from(real), "{h:?}");
    assert_eq!(h.listening_ports, [u32::from(real)], "{h:?}");
    assert!(
        h.detail.ends_with(&format!(
            "the app listens on 127.0.0.1:{real}, not on $PORT {declared}: the agent forwards 127.0.0.1:{declared} there"
        )),
        "{}",
        h.detail
    );
    use std::io::Read;
    let mut got = String::new();
    std::net::TcpStream::connect(("127.0.0.1", declared))
        .unwrap()
        .read_to_string(&mut got)
        .unwrap();
    assert_eq!(got, format!("app on {real}"));
    agent.stop();
}

/// `--forward-after off`: the app on another port stays "starting"; nothing binds the declared
/// port.
#[tokio::test]
async fn forwarding_can_be_turned_off() {
    // SAFETY: geteuid never fails.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIP: needs root for --user");
        return;
    }
    let (declared, real) = (free_port(), free_port());
    let script = format!(
        "import socket, time\n\
         s = socket.socket(); s.bind(('127.0.0.1', {real})); s.listen(); print('listening', flush=True)\n\
         time.sleep(600)\n"
    );
    let declared_s = declared.to_string();
    let user = test_uid(1);
    let mut agent = Agent::start(
        &[
            "--app-port",
            &declared_s,
            "--user",
            &user,
            "--forward-after",
            "off",
        ],
        &["/usr/bin/python3", "-c", &script],
    );
    agent.stdout.wait_for("listening");
    tokio::time::sleep(Duration::from_millis(800)).await;
    let h = agent.health().await;
    assert_eq!((h.status, h.forwarded_to), (UNKNOWN, 0), "{h:?}");
    assert!(std::net::TcpListener::bind(("127.0.0.1", declared)).is_ok());
    agent.stop();
}
