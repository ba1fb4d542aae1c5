//! The real `iac-agent` binary in pod mode (`--sidecar`, as on Docker Swarm): the sidecar runs next
//! to the app, HealthCheck reports both (and waits for the sidecar's port), either one dying stops
//! the other and fails the agent, SIGTERM stops both, and a finished job keeps the pod up.

mod common;

use std::net::TcpListener;
use std::time::Duration;

use common::Agent;
use iac_proto::HealthStatusCode;

const SERVING: i32 = HealthStatusCode::Serving as i32;
const UNKNOWN: i32 = HealthStatusCode::Unknown as i32;

/// `--sidecar ARG` for every element of `argv`.
fn sidecar_opts<'a>(argv: &[&'a str]) -> Vec<&'a str> {
    argv.iter().flat_map(|a| ["--sidecar", a]).collect()
}

/// A shell loop that says `ready-<name>`, says `term-<name>` on SIGTERM and exits with `code`.
fn trapping(name: &str, code: i32) -> String {
    format!(
        "trap 'echo term-{name}; exit {code}' TERM; echo ready-{name}; while :; do sleep 0.05; done"
    )
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test]
async fn health_names_both_and_sigterm_stops_both() {
    let side = trapping("sidecar", 0);
    let mut opts = sidecar_opts(&["sh", "-c", &side]);
    opts.push("--grace");
    opts.push("5s");
    let app = trapping("app", 7);
    let mut agent = Agent::start(&opts, &["sh", "-c", &app]);
    agent.stdout.wait_for("ready-app");
    agent.stdout.wait_for("ready-sidecar");
    let h = agent
        .health_until(|h| h.detail.contains("sidecar running"))
        .await;
    assert_eq!(h.status, SERVING, "{h:?}");
    assert!(
        h.detail.starts_with("running (pid ") && h.detail.contains("; sidecar running (pid "),
        "{}",
        h.detail
    );
    assert!(agent.stderr.contains("iac-agent: started sidecar pid "));

    // SIGTERM goes to both; the agent exits with the app's code.
    assert_eq!(agent.stop(), 7);
    assert!(agent.stdout.contains("term-app"));
    assert!(agent.stdout.contains("term-sidecar"));
}

#[tokio::test]
async fn a_dying_sidecar_stops_the_app_and_fails_the_agent() {
    let go = tempfile::tempdir().unwrap();
    let flag = go.path().join("die");
    let side = format!(
        "echo ready-sidecar; while [ ! -e {} ]; do sleep 0.02; done; exit 1",
        flag.display()
    );
    let opts = sidecar_opts(&["sh", "-c", &side]);
    let app = trapping("app", 0);
    let mut agent = Agent::start(&opts, &["sh", "-c", &app]);
    agent.stdout.wait_for("ready-app");
    agent.stdout.wait_for("ready-sidecar");
    assert_eq!(agent.health().await.status, SERVING);
    std::fs::write(&flag, b"").unwrap();
    let status = agent.wait_exit();
    assert_eq!(status.code(), Some(3), "{:#?}", agent.stderr.lines());
    assert!(agent.stdout.contains("term-app"), "the app was stopped");
    agent.stderr.wait_for("sidecar exited with code 1");
    agent
        .stderr
        .wait_for("the sidecar is gone; stopping the pod");
    agent
        .stderr
        .wait_for("exiting with code 3: the sidecar died");
}

#[tokio::test]
async fn a_failing_app_stops_the_sidecar_with_its_own_code() {
    let side = trapping("sidecar", 0);
    let opts = sidecar_opts(&["sh", "-c", &side]);
    let mut agent = Agent::spawn(
        &opts,
        &["sh", "-c", "echo app-up; sleep 0.5; echo app-fails; exit 9"],
    );
    let status = agent.wait_exit();
    assert_eq!(status.code(), Some(9), "{:#?}", agent.stderr.lines());
    assert!(agent.stdout.contains("app-fails"));
    assert!(
        agent.stdout.contains("term-sidecar"),
        "the sidecar was stopped"
    );
    assert!(agent.stderr.contains("the app is gone; stopping the pod"));
}

#[tokio::test]
async fn a_sidecar_that_cannot_start_fails_the_pod() {
    let opts = sidecar_opts(&["/nonexistent/envoy", "-c", "x"]);
    let app = trapping("app", 0);
    let mut agent = Agent::spawn(&opts, &["sh", "-c", &app]);
    let status = agent.wait_exit();
    assert_eq!(status.code(), Some(3), "{:#?}", agent.stderr.lines());
    assert!(agent.stderr.contains("sidecar spawn failed"));
}

#[tokio::test]
async fn a_finished_job_keeps_the_pod_and_the_sidecar_port_gates_serving() {
    let port = free_port();
    let go = tempfile::tempdir().unwrap();
    let flag = go.path().join("listen");
    // The sidecar listens on `port` once the flag exists (like Envoy after loading its config).
    let script = format!(
        "import os, socket, time\n\
         while not os.path.exists({flag:?}): time.sleep(0.02)\n\
         s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
         s.bind(('0.0.0.0', {port})); s.listen(); print('sidecar-listening', flush=True)\n\
         time.sleep(600)\n"
    );
    let port_text = port.to_string();
    let mut opts = sidecar_opts(&["python3", "-c", &script]);
    opts.extend(["--sidecar-port", &port_text]);
    let mut agent = Agent::start(&opts, &["sh", "-c", "echo job-done"]);
    agent.stdout.wait_for("job-done");
    let h = agent
        .health_until(|h| h.detail.contains("exited with code 0"))
        .await;
    assert_eq!(h.status, UNKNOWN, "{h:?}");
    assert!(
        h.detail
            .ends_with(&format!("not listening on port {port} yet")),
        "{}",
        h.detail
    );
    std::fs::write(&flag, b"").unwrap();
    let h = agent.health_until(|h| h.status == SERVING).await;
    assert!(
        h.detail.starts_with("exited with code 0; sidecar running"),
        "{}",
        h.detail
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(agent.is_running(), "a finished job does not end the pod");
    assert_eq!(agent.stop(), 0);
}

#[tokio::test]
async fn the_sidecar_runs_as_its_own_user_without_capabilities() {
    // SAFETY: geteuid never fails.
    if unsafe { libc::geteuid() } != 0 {
        // Not root: switching users is refused, which the agent reports as a failed sidecar.
        let mut opts = sidecar_opts(&["sh", "-c", "sleep 5"]);
        opts.extend(["--sidecar-user", "4242"]);
        let mut agent = Agent::spawn(&opts, &["sh", "-c", &trapping("app", 0)]);
        assert_eq!(agent.wait_exit().code(), Some(3));
        return;
    }
    let side = "echo \"sidecar uid=$(id -u) gid=$(id -g) $(grep CapEff /proc/self/status)\"; \
                echo \"sidecar environ=[$(tr '\\0' ' ' </proc/$$/environ)]\"; \
                while :; do sleep 0.05; done";
    let mut opts = sidecar_opts(&["sh", "-c", side]);
    opts.extend(["--sidecar-user", "4242:4343", "--user", "4444:4444"]);
    let mut agent = Agent::start(&opts, &["sh", "-c", &trapping("app", 0)]);
    let line = agent.stdout.wait_for("sidecar uid=");
    assert!(line.starts_with("sidecar uid=4242 gid=4343 "), "{line}");
    assert!(
        line.ends_with("0000000000000000"),
        "no capability left: {line}"
    );
    // Nothing of the agent's environment (the app's, the repos file's) reaches the sidecar.
    let line = agent.stdout.wait_for("sidecar environ=");
    assert_eq!(line, "sidecar environ=[]");
    assert!(
        agent
            .stderr
            .wait_for("started sidecar pid ")
            .contains(" as uid 4242 gid 4343")
    );
    assert_eq!(agent.stop(), 0);
}

#[test]
fn an_app_user_that_is_root_or_the_sidecars_uid_is_refused() {
    let side = sidecar_opts(&["sh", "-c", "sleep 5"]);
    for (user, want) in [
        ("4242", "the sidecar's own uid"),
        ("4242:0", "the sidecar's own uid"),
        ("0", "root"),
    ] {
        let mut opts = side.clone();
        opts.extend(["--sidecar-user", "4242", "--user", user]);
        let mut agent = Agent::spawn(&opts, &["sh", "-c", "echo app-ran"]);
        assert_eq!(agent.wait_exit().code(), Some(2), "--user {user}");
        let err = agent.stderr.lines().join("\n");
        assert!(
            err.contains(want) && err.contains("private key"),
            "--user {user}: {err}"
        );
        assert!(!agent.stdout.contains("app-ran"), "--user {user}");
    }
}
