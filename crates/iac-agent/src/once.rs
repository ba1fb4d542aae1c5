//! `--once`: run ARGV one time, as a job, and exit with its status — how iac runs a service's
//! release command (migrations) in a one-off container of the new image, as the same user and with
//! the same confinement the app gets.
//!
//! No gRPC listener, no ring buffer, no restart: ARGV's stdout and stderr are the container's own
//! (inherited), `--chdir` sets its working directory, `--user` its user, and `--wait-tcp ADDR`
//! holds the start (up to [`WAIT_TCP_LIMIT`]) until the pod's sidecar accepts connections. SIGTERM/SIGINT are
//! forwarded to ARGV's process group; past `--grace` the group is SIGKILLed. The agent reaps every
//! process (it is PID 1) and exits with ARGV's code: 128+N after signal N, 127 when the program
//! was not found, 126 when it could not be executed, 2 when the agent could not start it at all.

use std::io;
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tokio::signal::unix::{SignalKind, signal};

use crate::log::log;
use crate::supervisor::{EXIT_SETUP_FAILED, as_user};
use crate::user::ResolvedUser;

/// How long `--wait-tcp` waits at most before running the command anyway.
pub const WAIT_TCP_LIMIT: Duration = Duration::from_secs(30);

/// What `--once` runs.
#[derive(Debug, Clone)]
pub struct Job {
    /// The command and its arguments; never empty.
    pub argv: Vec<String>,
    /// `--user`, resolved; `None` runs it as the agent's own user.
    pub user: Option<ResolvedUser>,
    /// The working directory (`--chdir`); `None`: the agent's own.
    pub chdir: Option<PathBuf>,
    /// Between a forwarded SIGTERM/SIGINT and SIGKILL.
    pub grace: Duration,
    /// Wait (up to `wait_limit`) until this address accepts TCP connections before starting the
    /// command (`--wait-tcp`: the pod's sidecar, so the command's first request reaches the mesh).
    pub wait_tcp: Option<SocketAddr>,
    /// The longest `wait_tcp` is waited for ([`WAIT_TCP_LIMIT`]); then the command runs anyway.
    pub wait_limit: Duration,
}

/// Waits until `addr` accepts a connection or `limit` passes; whether it did.
pub fn wait_tcp(addr: SocketAddr, limit: Duration) -> bool {
    let until = Instant::now() + limit;
    loop {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_ok() {
            return true;
        }
        if Instant::now() >= until {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Runs `job` to its end; returns the exit code the agent should exit with.
pub fn run(job: Job) -> i32 {
    let Some(program) = job.argv.first() else {
        log("--once: expected a command after `--`");
        return EXIT_SETUP_FAILED;
    };
    if let Some(addr) = job.wait_tcp
        && !wait_tcp(addr, job.wait_limit)
    {
        log(format!(
            "{addr} did not accept connections within {}s; running the command anyway",
            job.wait_limit.as_secs_f64()
        ));
    }
    let mut cmd = Command::new(program);
    cmd.args(&job.argv[1..])
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit());
    if let Some(dir) = &job.chdir {
        cmd.current_dir(dir);
    }
    if let Some(u) = &job.user {
        as_user(&mut cmd, u);
    }
    let child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            let code = match e.kind() {
                io::ErrorKind::NotFound => 127,
                io::ErrorKind::PermissionDenied => 126,
                _ => EXIT_SETUP_FAILED,
            };
            let dir = job
                .chdir
                .as_ref()
                .map(|d| format!(" in {}", d.display()))
                .unwrap_or_default();
            log(format!("cannot start {program:?}{dir}: {e}"));
            return code;
        }
    };
    let pid = child.id() as libc::pid_t;
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            log(format!("cannot start the async runtime: {e}"));
            signal_group(pid, libc::SIGKILL);
            return EXIT_SETUP_FAILED;
        }
    };
    runtime.block_on(supervise(pid, job.grace))
}

/// Waits for `pid` (reaping every other process on the way), forwarding SIGTERM/SIGINT.
async fn supervise(pid: libc::pid_t, grace: Duration) -> i32 {
    let mut reaped = tokio::task::spawn_blocking(move || reap_until(pid));
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        log("cannot listen for SIGTERM/SIGINT; the command runs without signal forwarding");
        return reaped.await.unwrap_or(EXIT_SETUP_FAILED);
    };
    let forwarded = tokio::select! {
        code = &mut reaped => return code.unwrap_or(EXIT_SETUP_FAILED),
        _ = term.recv() => libc::SIGTERM,
        _ = int.recv() => libc::SIGINT,
    };
    log(format!(
        "forwarding signal {forwarded} to the command; it is killed in {}s",
        grace.as_secs_f64()
    ));
    signal_group(pid, forwarded);
    match tokio::time::timeout(grace, &mut reaped).await {
        Ok(code) => code.unwrap_or(EXIT_SETUP_FAILED),
        Err(_) => {
            signal_group(pid, libc::SIGKILL);
            reaped.await.unwrap_or(EXIT_SETUP_FAILED)
        }
    }
}

fn signal_group(pgid: libc::pid_t, sig: libc::c_int) {
    // SAFETY: kill(2) on the process group the agent created for its child.
    unsafe {
        libc::kill(-pgid, sig);
    }
}

/// Reaps children until `pid` is gone (as PID 1, every orphan too; otherwise only `pid`, so as
/// not to take another part of the process's children); its exit code (128+N after signal N).
fn reap_until(pid: libc::pid_t) -> i32 {
    let which = if std::process::id() == 1 { -1 } else { pid };
    loop {
        let mut status: libc::c_int = 0;
        // SAFETY: waitpid with a valid pointer to a local.
        let got = unsafe { libc::waitpid(which, &mut status, 0) };
        if got == -1 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            log(format!("waiting for the command: {e}"));
            return EXIT_SETUP_FAILED;
        }
        if got != pid {
            continue;
        }
        if libc::WIFEXITED(status) {
            return libc::WEXITSTATUS(status);
        }
        if libc::WIFSIGNALED(status) {
            return 128 + libc::WTERMSIG(status);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::TcpListener;

    use super::*;

    fn job(argv: &[&str]) -> Job {
        Job {
            argv: argv.iter().map(|s| s.to_string()).collect(),
            user: None,
            chdir: None,
            grace: Duration::from_secs(1),
            wait_tcp: None,
            wait_limit: WAIT_TCP_LIMIT,
        }
    }

    #[test]
    fn wait_tcp_waits_for_a_listener_and_gives_up_at_its_limit() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        assert!(wait_tcp(addr, Duration::from_secs(1)));
        drop(l);
        let t = Instant::now();
        assert!(!wait_tcp(addr, Duration::from_millis(300)));
        assert!(t.elapsed() >= Duration::from_millis(300));
        // The command still runs after the wait gave up.
        let mut j = job(&["sh", "-c", "exit 4"]);
        j.wait_tcp = Some(addr);
        j.wait_limit = Duration::from_millis(200);
        assert_eq!(run(j), 4);
    }

    #[test]
    fn exit_codes_signals_and_missing_programs() {
        assert_eq!(run(job(&["sh", "-c", "exit 0"])), 0);
        assert_eq!(run(job(&["sh", "-c", "exit 7"])), 7);
        assert_eq!(run(job(&["sh", "-c", "kill -9 $$"])), 128 + 9);
        assert_eq!(run(job(&["/no/such/program"])), 127);
    }

    #[test]
    fn chdir_sets_the_working_directory() {
        let d = tempfile::tempdir().unwrap();
        let mut j = job(&["sh", "-c", "pwd > out"]);
        j.chdir = Some(d.path().to_path_buf());
        assert_eq!(run(j), 0);
        let out = std::fs::read_to_string(d.path().join("out")).unwrap();
        assert_eq!(
            std::fs::canonicalize(out.trim()).unwrap(),
            std::fs::canonicalize(d.path()).unwrap()
        );
        let mut j = job(&["true"]);
        j.chdir = Some("/no/such/dir".into());
        assert_eq!(
            run(j),
            127,
            "a missing directory is reported like a missing program"
        );
    }
}
