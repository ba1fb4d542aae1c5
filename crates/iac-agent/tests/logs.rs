//! StreamLogs against the real `iac-agent` binary: tail N, ring bounds (lines, bytes, long-line
//! truncation, lossy UTF-8), the tee to the agent's own stdout/stderr, and follow mode.

mod common;

use std::time::Duration;

use common::{Agent, TIMEOUT, msgs};
use iac_proto::{LogLine, LogRequest};
use tokio_stream::StreamExt;

async fn next(s: &mut tonic::Streaming<LogLine>) -> LogLine {
    tokio::time::timeout(TIMEOUT, s.next())
        .await
        .expect("a line within the timeout")
        .expect("stream still open")
        .expect("a line, not an error")
}

fn twenty_lines_then_sleep() -> Vec<&'static str> {
    vec![
        "sh",
        "-c",
        "i=1; while [ $i -le 20 ]; do echo line$i; i=$((i+1)); done; exec sleep 60",
    ]
}

#[tokio::test]
async fn tail_returns_the_last_n_lines() {
    let agent = Agent::start(&[], &twenty_lines_then_sleep());
    let all = agent.logs_until(20).await;
    assert_eq!(all.len(), 20);
    assert_eq!(all[0].msg, "line1");
    assert_eq!(
        agent
            .logs(3)
            .await
            .iter()
            .map(|l| l.msg.clone())
            .collect::<Vec<_>>(),
        ["line18", "line19", "line20"]
    );
    assert_eq!(agent.logs(500).await.len(), 20);
    for l in &all {
        assert_eq!(l.stream, "stdout");
        assert!(l.service.is_empty());
        // RFC 3339, UTC, milliseconds: 2026-11-25T16:59:38.123Z
        assert_eq!(l.ts.len(), 24, "{}", l.ts);
        assert!(
            l.ts.ends_with('Z') && l.ts.as_bytes()[10] == b'T',
            "{}",
            l.ts
        );
    }
    // The tee: the agent's own stdout carries the same lines (what `docker logs` shows).
    agent.stdout.wait_for("line20");
}

#[tokio::test]
async fn stderr_lines_are_tagged_and_teed_to_stderr() {
    let agent = Agent::start(
        &[],
        &["sh", "-c", "echo to-out; echo to-err >&2; exec sleep 60"],
    );
    let lines = agent.logs_until(2).await;
    let err = lines
        .iter()
        .find(|l| l.msg == "to-err")
        .expect("stderr line");
    assert_eq!(err.stream, "stderr");
    let out = lines
        .iter()
        .find(|l| l.msg == "to-out")
        .expect("stdout line");
    assert_eq!(out.stream, "stdout");
    agent.stderr.wait_for("to-err");
    assert!(!agent.stdout.contains("to-err"));
}

#[tokio::test]
async fn ring_is_bounded_by_lines() {
    let agent = Agent::start(&["--ring-lines", "5"], &twenty_lines_then_sleep());
    agent.stdout.wait_for("line20");
    // Wait until the last line went through the ring too, then check only 5 are kept.
    let deadline = std::time::Instant::now() + TIMEOUT;
    loop {
        let lines = agent.logs(0).await;
        if lines.last().is_some_and(|l| l.msg == "line20") {
            assert_eq!(
                msgs(&lines),
                ["line16", "line17", "line18", "line19", "line20"]
            );
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{lines:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn ring_is_bounded_by_bytes_and_cuts_long_lines() {
    // 10 lines of 49 bytes, one 5000-byte line (cut to 100 bytes plus the marker in the ring; the
    // tee still carries all of it) and a line with invalid UTF-8, into a 512-byte ring.
    let script = r#"i=0; while [ $i -lt 10 ]; do printf '%049d\n' $i; i=$((i+1)); done
        head -c 5000 /dev/zero | tr '\0' 'x'; echo; printf 'bad\377utf8\n'; exec sleep 60"#;
    let agent = Agent::start(
        &["--ring-bytes", "512", "--max-line-bytes", "100"],
        &["sh", "-c", script],
    );
    agent.stdout.wait_for("bad");
    let deadline = std::time::Instant::now() + TIMEOUT;
    let lines = loop {
        let lines = agent.logs(0).await;
        if lines.last().is_some_and(|l| l.msg.starts_with("bad")) {
            break lines;
        }
        assert!(std::time::Instant::now() < deadline, "{lines:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let n = lines.len();
    assert_eq!(lines[n - 1].msg, "bad\u{FFFD}utf8");
    let marker = iac_agent::logbuf::truncation_marker(100);
    assert_eq!(lines[n - 2].msg, format!("{}{marker}", "x".repeat(100)));
    // The oldest lines were evicted, and no more than needed: one more would break the bound.
    let total: usize = lines.iter().map(|l| l.msg.len()).sum();
    assert!(total <= 512, "{total} bytes buffered: {lines:#?}");
    let first: usize = lines[0].msg.parse().expect("a number line survived");
    assert!(first > 0, "nothing was evicted: {lines:#?}");
    assert_eq!(msgs(&lines[..n - 2]).len(), 10 - first);
    assert!(
        total + 49 > 512,
        "line {} was evicted needlessly",
        first - 1
    );
    // The tee is not truncated.
    let full = agent.stdout.wait_for("xxxxxxxx");
    assert_eq!(full.len(), 5000);

    // And the bytes bound alone, without the long line: 10 × 49 bytes + newline.
    let agent = Agent::start(
        &["--ring-bytes", "256"],
        &[
            "sh",
            "-c",
            r#"i=0; while [ $i -lt 10 ]; do printf '%049d\n' $i; i=$((i+1)); done; exec sleep 60"#,
        ],
    );
    agent.stdout.wait_for(&format!("{:049}", 9));
    let deadline = std::time::Instant::now() + TIMEOUT;
    loop {
        let lines = agent.logs(0).await;
        if lines.last().is_some_and(|l| l.msg == format!("{:049}", 9)) {
            // 5 × 49 = 245 <= 256 < 6 × 49.
            assert_eq!(lines.len(), 5, "{lines:#?}");
            assert_eq!(lines[0].msg, format!("{:049}", 5));
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{lines:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn follow_streams_lines_printed_after_connecting() {
    let dir = tempfile::tempdir().unwrap();
    let go = dir.path().join("go");
    let script = format!(
        "echo before; while [ ! -e '{}' ]; do sleep 0.02; done; echo after1; echo after2 >&2; exec sleep 60",
        go.display()
    );
    let agent = Agent::start(&[], &["sh", "-c", &script]);
    agent.logs_until(1).await;
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
    assert_eq!(next(&mut stream).await.msg, "before");
    // Nothing more until the child is told to print.
    assert!(
        tokio::time::timeout(Duration::from_millis(200), stream.next())
            .await
            .is_err()
    );
    std::fs::write(&go, b"").unwrap();
    let mut live = vec![next(&mut stream).await, next(&mut stream).await];
    live.sort_by(|a, b| a.msg.cmp(&b.msg));
    assert_eq!(msgs(&live), ["after1", "after2"]);
    assert_eq!(live[0].stream, "stdout");
    assert_eq!(live[1].stream, "stderr");
}

#[tokio::test]
async fn follow_with_tail_then_ends_when_the_output_closes() {
    let dir = tempfile::tempdir().unwrap();
    let go = dir.path().join("go");
    let script = format!(
        "echo a; echo b; echo c; while [ ! -e '{}' ]; do sleep 0.02; done; echo d; exit 4",
        go.display()
    );
    // Without restarts: a restarted app's output goes on (tests/restart.rs).
    let agent = Agent::start(&["--restart", "never"], &["sh", "-c", &script]);
    agent.logs_until(3).await;
    let mut stream = agent
        .client()
        .await
        .stream_logs(LogRequest {
            service: String::new(),
            follow: true,
            tail: 1,
        })
        .await
        .unwrap()
        .into_inner();
    std::fs::write(&go, b"").unwrap();
    let collected = tokio::time::timeout(TIMEOUT, async {
        let mut v = Vec::new();
        while let Some(line) = stream.next().await {
            v.push(line.unwrap().msg);
        }
        v
    })
    .await
    .expect("the follow stream ends once the child's output is closed");
    assert_eq!(collected, ["c", "d"]);
    let h = agent.health_until(|h| h.exit_code.is_some()).await;
    assert_eq!(h.exit_code, Some(4));
}

#[tokio::test]
async fn a_slow_follower_does_not_block_the_child() {
    // A follower that connects and does not read while a burst larger than every buffer goes by:
    // the child must still finish, its output must reach the ring and the tee, and the follower
    // later gets either every line or a marker where it skipped.
    let dir = tempfile::tempdir().unwrap();
    let go = dir.path().join("go");
    let script = format!(
        "echo ready; while [ ! -e '{}' ]; do sleep 0.02; done; i=0; while [ $i -lt 5000 ]; do echo burst$i; i=$((i+1)); done; echo done-bursting; exec sleep 60",
        go.display()
    );
    let agent = Agent::start(&[], &["sh", "-c", &script]);
    agent.logs_until(1).await;
    let stalled = agent
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
    std::fs::write(&go, b"").unwrap();
    agent.stdout.wait_for("done-bursting");
    let lines = agent.logs_until(5002).await;
    assert_eq!(lines.last().unwrap().msg, "done-bursting");

    // Reading the stalled stream now: either everything in order, or a lag marker in between.
    let mut stalled = stalled;
    let mut seen = Vec::new();
    while seen.last().map(String::as_str) != Some("done-bursting") {
        let line = tokio::time::timeout(TIMEOUT, stalled.next())
            .await
            .expect("line")
            .expect("open")
            .unwrap();
        seen.push(line.msg);
    }
    let lagged = seen.iter().any(|m| m.contains("fell behind"));
    assert!(
        lagged || seen.len() == 5002,
        "{} lines, no lag marker",
        seen.len()
    );
    // Whatever arrived is in order and without duplicates.
    let numbers: Vec<u32> = seen
        .iter()
        .filter_map(|m| m.strip_prefix("burst"))
        .map(|n| n.parse().unwrap())
        .collect();
    assert!(numbers.windows(2).all(|w| w[0] < w[1]), "out of order");
    assert_eq!(numbers.last(), Some(&4999));
}
