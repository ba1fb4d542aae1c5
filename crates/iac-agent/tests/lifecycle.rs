//! The real `iac-agent` binary's process lifecycle: signal forwarding, exit codes, the grace
//! period, spawn failures, zombie reaping, privilege dropping, and early setup failures.

mod common;

use std::time::{Duration, Instant};

use common::Agent;
use iac_proto::{DeployRequest, HealthStatusCode};

const SERVING: i32 = HealthStatusCode::Serving as i32;
const NOT_SERVING: i32 = HealthStatusCode::NotServing as i32;

#[tokio::test]
async fn forwards_signals_and_exits_with_the_childs_code() {
    let mut agent = Agent::start(
        &[],
        &[
            "sh",
            "-c",
            r#"trap 'echo got-usr1' USR1; trap 'echo got-hup' HUP; trap 'echo got-usr2' USR2
               trap 'echo got-term; exit 42' TERM
               echo ready; while :; do sleep 0.05; done"#,
        ],
    );
    agent.stdout.wait_for("ready");
    let h = agent.health().await;
    assert_eq!(h.status, SERVING);
    assert_eq!(h.exit_code, None);
    assert!(h.detail.starts_with("running (pid "), "{}", h.detail);

    for (sig, marker) in [
        (libc::SIGUSR1, "got-usr1"),
        (libc::SIGHUP, "got-hup"),
        (libc::SIGUSR2, "got-usr2"),
    ] {
        agent.signal(sig);
        agent.stdout.wait_for(marker);
    }
    // Forward-only signals do not stop anything.
    assert!(agent.is_running());
    assert_eq!(agent.health().await.status, SERVING);

    assert_eq!(agent.stop(), 42);
    assert!(agent.stdout.contains("got-term"));
}

#[tokio::test]
async fn sigint_is_a_stop_request_too() {
    let mut agent = Agent::start(
        &[],
        &[
            "sh",
            "-c",
            "trap 'echo got-int; exit 5' INT; echo ready; while :; do sleep 0.05; done",
        ],
    );
    agent.stdout.wait_for("ready");
    agent.signal(libc::SIGINT);
    let status = agent.wait_exit();
    assert_eq!(status.code(), Some(5));
    assert!(agent.stdout.contains("got-int"));
}

#[tokio::test]
async fn child_killed_by_the_forwarded_sigterm_gives_143() {
    let mut agent = Agent::start(&[], &["sleep", "60"]);
    agent.health_until(|h| h.status == SERVING).await;
    assert_eq!(agent.stop(), 143);
}

#[tokio::test]
async fn child_ignoring_sigterm_is_killed_after_the_grace_period() {
    let mut agent = Agent::start(
        &["--grace", "700ms"],
        &[
            "sh",
            "-c",
            "trap '' TERM; echo ready; while :; do sleep 0.05; done",
        ],
    );
    agent.stdout.wait_for("ready");
    let t0 = Instant::now();
    assert_eq!(agent.stop(), 137);
    let took = t0.elapsed();
    assert!(took >= Duration::from_millis(700), "killed after {took:?}");
    assert!(took < Duration::from_secs(10), "killed after {took:?}");
    agent.stderr.wait_for("sending SIGKILL");
}

#[tokio::test]
async fn clean_exit_is_serving_and_the_agent_keeps_running() {
    let mut agent = Agent::start(&[], &["sh", "-c", "echo bye"]);
    let h = agent.health_until(|h| h.exit_code.is_some()).await;
    assert_eq!(h.status, SERVING);
    assert_eq!(h.exit_code, Some(0));
    assert_eq!(h.detail, "exited with code 0");
    // Still up and answering after the child is gone.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(agent.is_running());
    assert_eq!(agent.health().await.exit_code, Some(0));
    assert_eq!(agent.stop(), 0);
}

#[tokio::test]
async fn non_zero_exit_is_not_serving() {
    // (Without restarts: restarting is tests/restart.rs's subject.)
    let mut agent = Agent::start(
        &["--restart", "never"],
        &["sh", "-c", "echo failing >&2; exit 3"],
    );
    let h = agent.health_until(|h| h.exit_code.is_some()).await;
    assert_eq!(h.status, NOT_SERVING);
    assert_eq!(h.exit_code, Some(3));
    assert_eq!(h.detail, "exited with code 3");
    assert!(agent.is_running());
    assert_eq!(agent.stop(), 3);
    assert!(agent.stderr.contains("failing"));
}

#[tokio::test]
async fn killed_by_a_signal_is_not_serving() {
    let mut agent = Agent::start(&["--restart", "never"], &["sh", "-c", "kill -9 $$"]);
    let h = agent.health_until(|h| h.exit_code.is_some()).await;
    assert_eq!(h.status, NOT_SERVING);
    assert_eq!(h.exit_code, Some(137));
    assert_eq!(h.detail, "killed by signal 9");
    assert_eq!(agent.stop(), 137);
}

#[tokio::test]
async fn spawn_failure_is_not_serving_with_detail() {
    let mut agent = Agent::start(&["--restart", "never"], &["/definitely/not/here", "--flag"]);
    let h = agent.health().await;
    assert_eq!(h.status, NOT_SERVING);
    assert_eq!(h.exit_code, Some(127));
    assert_eq!(
        h.detail,
        "spawn failed: No such file or directory (os error 2): /definitely/not/here"
    );
    assert_eq!(agent.logs(0).await.len(), 0);
    assert_eq!(agent.stop(), 127);
}

#[tokio::test]
async fn non_executable_program_is_126() {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("not-executable.sh");
    std::fs::write(&script, "#!/bin/sh\necho hi\n").unwrap();
    let mut agent = Agent::start(&[], &[script.to_str().unwrap()]);
    let h = agent.health().await;
    assert_eq!(h.status, NOT_SERVING);
    assert_eq!(h.exit_code, Some(126));
    assert!(
        h.detail.starts_with("spawn failed: Permission denied"),
        "{}",
        h.detail
    );
    assert_eq!(agent.stop(), 126);
}

#[tokio::test]
async fn deploy_is_unimplemented() {
    let agent = Agent::start(&[], &["sleep", "60"]);
    let err = agent
        .client()
        .await
        .deploy(DeployRequest {
            slugs: vec!["gh:o/r".into()],
            project: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unimplemented);
}

/// Reads a field of /proc/PID/status; `None` once the process is gone.
fn proc_status(pid: i32, field: &str) -> Option<String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .map(|v| v.trim().to_owned())
}

#[tokio::test]
async fn orphaned_grandchildren_are_reaped() {
    // The inner shell starts a background sleep and exits at once, orphaning it; the agent (a
    // child subreaper when not PID 1) inherits it and must reap it when it exits.
    let agent = Agent::start(
        &[],
        &[
            "sh",
            "-c",
            r#"sh -c 'sleep 3 >/dev/null 2>&1 & echo "orphan $!"'; exec sleep 60"#,
        ],
    );
    let line = agent.stdout.wait_for("orphan ");
    let pid: i32 = line["orphan ".len()..].trim().parse().unwrap();
    let ppid = proc_status(pid, "PPid").expect("orphan still sleeping");
    assert_eq!(
        ppid,
        agent.pid().to_string(),
        "the orphan was not re-parented to the agent"
    );
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        match proc_status(pid, "State") {
            None => break,
            Some(state) => assert!(
                Instant::now() < deadline,
                "orphan {pid} not reaped: state {state}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The supervised child itself is unaffected.
    assert_eq!(agent.health().await.exit_code, None);
}

fn is_root() -> bool {
    // SAFETY: getuid never fails.
    unsafe { libc::geteuid() == 0 }
}

#[tokio::test]
async fn drops_privileges_to_the_given_user() {
    let script = r#"echo "uid=$(id -u) gid=$(id -g) groups=$(id -G) home=$HOME user=$USER""#;
    if is_root() {
        let mut agent = Agent::start(&["--user", "nobody"], &["sh", "-c", script]);
        agent.stdout.wait_for("uid=");
        agent.health_until(|h| h.exit_code.is_some()).await;
        let line = agent.stdout.wait_for("uid=");
        let gid = line
            .split("gid=")
            .nth(1)
            .unwrap()
            .split(' ')
            .next()
            .unwrap();
        let expected_gid = std::fs::read_to_string("/etc/passwd")
            .unwrap()
            .lines()
            .find(|l| l.starts_with("nobody:"))
            .unwrap()
            .split(':')
            .nth(3)
            .unwrap()
            .to_owned();
        assert!(line.starts_with("uid=65534 "), "{line}");
        assert_eq!(gid, expected_gid, "{line}");
        assert!(line.contains(&format!("groups={expected_gid} ")), "{line}");
        assert!(line.contains("user=nobody"), "{line}");
        // HOME follows the dropped user unless it was set to something specific.
        match std::env::var("HOME").ok().filter(|h| h != "/root") {
            None => assert!(line.contains("home=/nonexistent "), "{line}"),
            Some(home) => assert!(line.contains(&format!("home={home} ")), "{line}"),
        }
        assert_eq!(agent.stop(), 0);

        let mut agent = Agent::start(&["--user", "4242:4343"], &["sh", "-c", script]);
        let line = agent.stdout.wait_for("uid=");
        assert!(line.starts_with("uid=4242 gid=4343 groups=4343 "), "{line}");
        assert_eq!(agent.stop(), 0);
    } else {
        // Unprivileged: changing user is refused, and that is a spawn failure, not a silent run.
        let mut agent = Agent::start(&["--user", "4242:4343"], &["sh", "-c", script]);
        let h = agent.health().await;
        assert_eq!(h.status, NOT_SERVING);
        assert!(h.detail.contains("Operation not permitted"), "{}", h.detail);
        assert!(!agent.stdout.contains("uid="));
        assert_eq!(agent.stop(), 126);
    }
}

#[tokio::test]
async fn unknown_user_fails_before_running_anything() {
    let mut agent = Agent::spawn(
        &["--user", "no-such-user-here"],
        &["sh", "-c", "echo should-not-run"],
    );
    let status = agent.wait_exit();
    assert_eq!(status.code(), Some(2));
    agent.stderr.wait_for("\"no-such-user-here\"");
    assert!(!agent.stdout.contains("should-not-run"));
}

#[tokio::test]
async fn listen_address_in_use_fails_before_running_anything() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let mut agent = Agent::spawn(&["--listen", &addr], &["sh", "-c", "echo should-not-run"]);
    let status = agent.wait_exit();
    assert_eq!(status.code(), Some(2));
    agent.stderr.wait_for(&format!("cannot listen on {addr}"));
    assert!(!agent.stdout.contains("should-not-run"));
}

#[tokio::test]
async fn missing_argv_is_a_usage_error() {
    let out = std::process::Command::new(common::AGENT)
        .args(["--listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("ARGV"));
}
