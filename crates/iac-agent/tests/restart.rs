//! The real `iac-agent` restarting a dead app: a killed app comes back with a new pid, a crash
//! loop backs off (doubling, capped) and says so in HealthCheck and in the logs, a finished job
//! stays done, `--restart never` only reports, a stop during a back-off ends the agent at once,
//! and a log follower keeps streaming across restarts.

mod common;

use std::time::{Duration, Instant};

use common::Agent;
use iac_proto::{HealthStatusCode, LogRequest};
use tokio_stream::StreamExt;

const SERVING: i32 = HealthStatusCode::Serving as i32;
const NOT_SERVING: i32 = HealthStatusCode::NotServing as i32;

fn pid_of(detail: &str) -> i32 {
    let rest = detail
        .strip_prefix("running (pid ")
        .unwrap_or_else(|| panic!("not running: {detail}"));
    rest[..rest.find(')').unwrap()].parse().unwrap()
}

#[tokio::test]
async fn a_killed_app_is_restarted_after_its_back_off() {
    let mut agent = Agent::start(
        &["--restart-backoff", "300ms"],
        &["sh", "-c", "echo up; exec sleep 60"],
    );
    let first = agent.health_until(|h| h.status == SERVING).await;
    assert_eq!(first.restarts, None, "no restart record before any exit");
    let pid = pid_of(&first.detail);
    // What an OOM kill or a bug does.
    // SAFETY: kill(2) on the app the agent started.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
    let waiting = agent.health_until(|h| h.status == NOT_SERVING).await;
    assert!(
        waiting
            .detail
            .starts_with("killed by signal 9; restarting in "),
        "{}",
        waiting.detail
    );
    let r = waiting.restarts.clone().expect("restart record");
    assert_eq!(r.count, 0);
    assert_eq!(r.last_exit, "killed by signal 9");
    assert_eq!(r.last_exit_code, Some(137));
    assert_eq!(r.backoff_ms, 300);
    assert!(r.restart_in_ms <= 300, "{r:?}");
    assert!(!r.last_exit_at.is_empty());
    let t0 = Instant::now();
    let again = agent
        .health_until(|h| h.status == SERVING && h.restarts.as_ref().is_some_and(|r| r.count == 1))
        .await;
    assert!(t0.elapsed() < Duration::from_secs(3), "{:?}", t0.elapsed());
    assert_ne!(pid_of(&again.detail), pid, "a new process");
    let r = again.restarts.unwrap();
    assert_eq!((r.backoff_ms, r.restart_in_ms), (0, 0), "{r:?}");
    assert_eq!(r.last_exit, "killed by signal 9");
    assert!(
        again.uptime_ms < 2_000,
        "uptime is the new run's: {}",
        again.uptime_ms
    );
    agent.stderr.wait_for("restarting it in 300ms (restart 1)");
    // Both runs' output, and the agent's marker between them, are in the buffer (the new run's
    // line may land a moment after it counts as running).
    let deadline = Instant::now() + Duration::from_secs(10);
    let logs = loop {
        let logs: Vec<String> = agent.logs(0).await.into_iter().map(|l| l.msg).collect();
        if logs.iter().filter(|m| *m == "up").count() == 2 || Instant::now() > deadline {
            break logs;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(logs.iter().filter(|m| *m == "up").count(), 2, "{logs:?}");
    assert!(
        logs.iter()
            .any(|m| m.starts_with("[iac-agent: the app killed by signal 9 after ")),
        "{logs:?}"
    );
    assert_eq!(agent.stop(), 143);
}

#[tokio::test]
async fn a_crash_loop_backs_off_doubling_up_to_the_cap() {
    let mut agent = Agent::start(
        &[
            "--restart-backoff",
            "100ms",
            "--restart-backoff-max",
            "400ms",
        ],
        &["sh", "-c", "echo crash >&2; exit 3"],
    );
    let mut delays = Vec::new();
    for n in 1..=5u32 {
        let h = agent
            .health_until(|h| {
                h.restarts
                    .as_ref()
                    .is_some_and(|r| r.count == n - 1 && r.backoff_ms > 0)
            })
            .await;
        assert_eq!(h.status, NOT_SERVING);
        assert_eq!(h.exit_code, Some(3));
        let r = h.restarts.unwrap();
        assert_eq!(r.last_exit, "exited with code 3");
        delays.push(r.backoff_ms);
    }
    assert_eq!(delays, [100, 200, 400, 400, 400]);
    // A stop while waiting ends the agent at once, with the last run's code.
    let t0 = Instant::now();
    assert_eq!(agent.stop(), 3);
    assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());
    assert!(agent.stderr.contains("the pending restart is cancelled"));
}

#[tokio::test]
async fn a_long_enough_run_starts_the_back_off_again() {
    // Runs 0.5 s, then fails: longer than --restart-reset-after, so every crash is the first of
    // its series.
    let mut agent = Agent::start(
        &[
            "--restart-backoff",
            "100ms",
            "--restart-reset-after",
            "300ms",
        ],
        &["sh", "-c", "sleep 0.5; exit 1"],
    );
    for n in 1..=2u32 {
        let h = agent
            .health_until(|h| {
                h.restarts
                    .as_ref()
                    .is_some_and(|r| r.count == n - 1 && r.backoff_ms > 0)
            })
            .await;
        assert_eq!(h.restarts.unwrap().backoff_ms, 100, "restart {n}");
    }
    agent.stop();
}

#[tokio::test]
async fn a_finished_job_stays_done_but_a_server_that_exits_is_restarted() {
    let mut job = Agent::start(&["--restart-backoff", "100ms"], &["sh", "-c", "echo done"]);
    let h = job.health_until(|h| h.exit_code == Some(0)).await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    let h2 = job.health().await;
    assert_eq!(h2.status, SERVING, "{h:?}");
    assert_eq!(h2.restarts, None, "a job is not restarted: {h2:?}");
    assert_eq!(job.stop(), 0);

    // A service with a port that exits 0 is a server that stopped: restarted.
    let mut server = Agent::start(
        &["--restart-backoff", "100ms", "--app-port", "1"],
        &["sh", "-c", "exit 0"],
    );
    let h = server
        .health_until(|h| h.restarts.as_ref().is_some_and(|r| r.count >= 1))
        .await;
    assert_eq!(h.restarts.unwrap().last_exit, "exited with code 0");
    server.stop();
}

#[tokio::test]
async fn restart_never_only_reports() {
    let mut agent = Agent::start(
        &["--restart", "never", "--restart-backoff", "100ms"],
        &["sh", "-c", "exit 4"],
    );
    let h = agent.health_until(|h| h.exit_code.is_some()).await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    let h2 = agent.health().await;
    assert_eq!((h.status, h2.status), (NOT_SERVING, NOT_SERVING));
    assert_eq!(h2.detail, "exited with code 4");
    assert_eq!(h2.restarts, None);
    assert_eq!(agent.stop(), 4);
}

#[tokio::test]
async fn a_follower_keeps_streaming_across_restarts() {
    let mut agent = Agent::start(
        &["--restart-backoff", "100ms"],
        &["sh", "-c", "echo line-$$; sleep 0.3; exit 1"],
    );
    let mut stream = agent
        .client()
        .await
        .stream_logs(LogRequest {
            service: String::new(),
            follow: true,
            tail: 0,
        })
        .await
        .unwrap()
        .into_inner();
    let mut runs = std::collections::BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while runs.len() < 3 {
        let line = tokio::time::timeout_at(deadline.into(), stream.next())
            .await
            .expect("lines of three runs in time")
            .expect("the stream stays open across restarts")
            .unwrap();
        if line.msg.starts_with("line-") {
            runs.insert(line.msg);
        }
    }
    agent.stop();
}

/// iac sets `IAC_FOLLOW_POD_NETWORK=1` on every Docker app container: the agent takes it (and, on
/// a host whose namespace has a network, keeps running).
#[test]
fn the_follow_pod_network_switch_is_taken_from_the_environment() {
    let mut child = std::process::Command::new(common::AGENT)
        .env("IAC_FOLLOW_POD_NETWORK", "1")
        .args(["--listen", "127.0.0.1:0", "--", "sleep", "30"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    let running = child.try_wait().unwrap().is_none();
    let _ = child.kill();
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(running, "the agent exited: {err}");
    assert!(!err.contains("invalid value"), "{err}");
}

/// A run that dies leaving processes behind (a master's workers holding its port) takes them
/// with it before the restart.
#[tokio::test]
async fn what_a_dead_run_left_behind_is_stopped_before_the_restart() {
    let mut agent = Agent::start(
        &["--restart-backoff", "300ms"],
        &[
            "sh",
            "-c",
            "sleep 300 & echo \"orphan $!\"; sleep 0.2; exit 1",
        ],
    );
    let line = agent.stdout.wait_for("orphan ");
    let orphan: i32 = line.trim_start_matches("orphan ").trim().parse().unwrap();
    agent
        .health_until(|h| h.restarts.as_ref().is_some_and(|r| r.count >= 1))
        .await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while std::path::Path::new(&format!("/proc/{orphan}")).exists() {
        assert!(
            Instant::now() < deadline,
            "the first run's sleep (pid {orphan}) outlived it"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    agent
        .stderr
        .wait_for("stopped what the last run left in its process group");
    agent.stop();
}

/// With `--restart-state` (iac sets it on Docker pods), a restart of the container — here: the
/// agent stopped and a new one started on the same file — keeps the count, the crash series and
/// the last exit: the new agent's app is one more restart, its last exit the SIGTERM of the stop.
#[tokio::test]
async fn restart_counts_outlive_the_agent_with_a_restart_record() {
    let dir = tempfile::tempdir().unwrap();
    let record = dir.path().join("iac-agent/restarts.json");
    let record_arg = record.to_str().unwrap();
    let mut agent = Agent::start(
        &["--restart-backoff", "100ms", "--restart-state", record_arg],
        &["sh", "-c", "echo up; exec sleep 60"],
    );
    let first = agent.health_until(|h| h.status == SERVING).await;
    assert_eq!(first.restarts, None);
    assert!(
        record.exists(),
        "written at start, so the next start finds it"
    );
    // SAFETY: kill(2) on the app the agent started.
    assert_eq!(
        unsafe { libc::kill(pid_of(&first.detail), libc::SIGKILL) },
        0
    );
    agent
        .health_until(|h| h.status == SERVING && h.restarts.as_ref().is_some_and(|r| r.count == 1))
        .await;
    agent.stop();
    let saved: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&record).unwrap()).unwrap();
    assert_eq!(saved["restarts"], 1, "{saved}");
    assert_eq!(saved["last_exit"]["state"]["state"], "signaled", "{saved}");
    assert_eq!(
        saved["last_exit"]["state"]["signal"], 15,
        "the stop's SIGTERM: {saved}"
    );

    // The container starts again: the same file.
    let mut again = Agent::start(
        &["--restart-backoff", "100ms", "--restart-state", record_arg],
        &["sh", "-c", "echo up; exec sleep 60"],
    );
    let h = again
        .health_until(|h| h.status == SERVING && h.restarts.is_some())
        .await;
    let r = h.restarts.unwrap();
    assert_eq!(r.count, 2, "{r:?}");
    assert_eq!(r.last_exit, "killed by signal 15");
    assert!(!r.last_exit_at.is_empty());
    again
        .stderr
        .wait_for("the container was restarted: restart 2 of the app");
    again.stop();

    // Without the option, nothing is kept: a new agent starts from zero.
    let mut plain = Agent::start(&[], &["sh", "-c", "exec sleep 60"]);
    let h = plain.health_until(|h| h.status == SERVING).await;
    assert_eq!(h.restarts, None);
    plain.stop();
}
