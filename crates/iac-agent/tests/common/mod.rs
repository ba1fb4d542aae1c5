//! Test harness: runs the real `iac-agent` binary on a free loopback port (it binds port 0 and
//! logs the bound address), captures its stdout/stderr, talks to it with the tonic client from
//! `iac-proto`, and kills its whole process group on drop so no test leaks processes.

#![allow(dead_code)] // Each test binary uses a different subset.

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use iac_proto::{ControlPlaneClient, HealthStatus, LogLine, LogRequest};
use tokio_stream::StreamExt;
use tonic::transport::Channel;

pub const AGENT: &str = env!("CARGO_BIN_EXE_iac-agent");
pub const TIMEOUT: Duration = Duration::from_secs(15);

/// Lines read from one of the agent's pipes.
#[derive(Clone, Default)]
pub struct Captured(Arc<Mutex<Vec<String>>>);

impl Captured {
    fn spawn_reader(&self, pipe: impl Read + Send + 'static) {
        let lines = Arc::clone(&self.0);
        std::thread::spawn(move || {
            let mut reader = BufReader::new(pipe);
            let mut buf = Vec::new();
            while reader.read_until(b'\n', &mut buf).unwrap_or(0) > 0 {
                let line = String::from_utf8_lossy(&buf)
                    .trim_end_matches('\n')
                    .to_owned();
                lines.lock().unwrap().push(line);
                buf.clear();
            }
        });
    }

    pub fn lines(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }

    pub fn contains(&self, needle: &str) -> bool {
        self.lines().iter().any(|l| l.contains(needle))
    }

    /// Waits until some line contains `needle`; returns that line.
    pub fn wait_for(&self, needle: &str) -> String {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            if let Some(l) = self.lines().into_iter().find(|l| l.contains(needle)) {
                return l;
            }
            assert!(
                Instant::now() < deadline,
                "no line containing {needle:?} within {TIMEOUT:?}; got {:#?}",
                self.lines()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

pub struct Agent {
    pub child: Child,
    pub addr: Option<SocketAddr>,
    pub stdout: Captured,
    pub stderr: Captured,
}

impl Agent {
    /// Starts the agent with `opts` (before `--`) and `argv`, and waits until it listens.
    pub fn start(opts: &[&str], argv: &[&str]) -> Agent {
        let mut agent = Agent::spawn(opts, argv);
        let line = agent.stderr.wait_for("iac-agent: listening on ");
        let addr = line
            .rsplit(' ')
            .next()
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("cannot parse the listen address from {line:?}"));
        agent.addr = Some(addr);
        agent
    }

    /// Starts the agent without waiting for anything (for tests where it must fail early).
    pub fn spawn(opts: &[&str], argv: &[&str]) -> Agent {
        let mut cmd = Command::new(AGENT);
        if !opts.contains(&"--listen") {
            cmd.args(["--listen", "127.0.0.1:0"]);
        }
        cmd.args(opts)
            .arg("--")
            .args(argv)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Its own process group, so Drop can kill the agent and everything it started.
            .process_group(0);
        let mut child = cmd.spawn().expect("start iac-agent");
        let (stdout, stderr) = (Captured::default(), Captured::default());
        stdout.spawn_reader(child.stdout.take().unwrap());
        stderr.spawn_reader(child.stderr.take().unwrap());
        Agent {
            child,
            addr: None,
            stdout,
            stderr,
        }
    }

    pub fn pid(&self) -> i32 {
        i32::try_from(self.child.id()).unwrap()
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child.
        assert_eq!(unsafe { libc::kill(self.pid(), sig) }, 0, "kill({sig})");
    }

    /// Waits for the agent to exit; panics after `TIMEOUT`.
    pub fn wait_exit(&mut self) -> ExitStatus {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "agent still running after {TIMEOUT:?}; stderr: {:#?}",
                self.stderr.lines()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM, then the agent's exit code.
    pub fn stop(&mut self) -> i32 {
        self.signal(libc::SIGTERM);
        let status = self.wait_exit();
        status
            .code()
            .unwrap_or_else(|| panic!("agent died from a signal: {status:?}"))
    }

    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    pub async fn client(&self) -> ControlPlaneClient<Channel> {
        let addr = self.addr.expect("agent started with Agent::start");
        ControlPlaneClient::connect(format!("http://{addr}"))
            .await
            .expect("connect to the agent")
    }

    pub async fn health(&self) -> HealthStatus {
        self.client()
            .await
            .health_check(())
            .await
            .expect("HealthCheck")
            .into_inner()
    }

    /// Polls HealthCheck until `done` holds.
    pub async fn health_until(&self, done: impl Fn(&HealthStatus) -> bool) -> HealthStatus {
        let mut client = self.client().await;
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let h = client
                .health_check(())
                .await
                .expect("HealthCheck")
                .into_inner();
            if done(&h) {
                return h;
            }
            assert!(
                Instant::now() < deadline,
                "health never matched; last {h:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// A non-following StreamLogs call, collected.
    pub async fn logs(&self, tail: u32) -> Vec<LogLine> {
        let mut stream = self
            .client()
            .await
            .stream_logs(LogRequest {
                service: String::new(),
                follow: false,
                tail,
            })
            .await
            .expect("StreamLogs")
            .into_inner();
        let mut out = Vec::new();
        while let Some(line) = stream.next().await {
            out.push(line.expect("log line"));
        }
        out
    }

    /// Polls StreamLogs until at least `n` lines are buffered; returns all of them.
    pub async fn logs_until(&self, n: usize) -> Vec<LogLine> {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let lines = self.logs(0).await;
            if lines.len() >= n {
                return lines;
            }
            assert!(
                Instant::now() < deadline,
                "only {} lines buffered: {lines:#?}",
                lines.len()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        // SAFETY: kill(2) on the process group we created for this agent.
        unsafe { libc::kill(-self.pid(), libc::SIGKILL) };
        let _ = self.child.wait();
    }
}

pub fn msgs(lines: &[LogLine]) -> Vec<&str> {
    lines.iter().map(|l| l.msg.as_str()).collect()
}
