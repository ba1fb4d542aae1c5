//! The supervisor proper: spawns the child (dropping privileges), pumps its pipes into the tee and
//! the ring buffer, reaps every child process on SIGCHLD, forwards signals, serves gRPC, and runs
//! the SIGTERM/SIGINT shutdown (forward, grace period, SIGKILL, exit with the child's code).
//!
//! Lifecycle: after the child exits by itself the agent keeps running and serving HealthCheck
//! (SERVING after exit 0, NOT_SERVING otherwise) and StreamLogs, until SIGTERM or SIGINT. That is
//! what makes a crashed entry observable through the mesh instead of a vanished container.
//!
//! Pod mode ([`Options::sidecar`]): a second process, the sidecar, runs next to the child; either
//! one dying by itself stops the other and ends the agent with a failure code (see the crate docs).
//!
//! The agent reaps with `waitpid(-1, WNOHANG)`, so it must not use `tokio::process` (whose own
//! reaper would race it): the child is spawned with `std::process` and never `wait`ed through it.

use std::io;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use iac_proto::ControlPlaneServer;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep_until, timeout};
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;
use tonic_health::pb::health_server::HealthServer;

use crate::forward;
use crate::log::log;
use crate::logbuf::{LineSplitter, LogBuffer, LogEntry, RingLimits, StreamKind};
use crate::restart::{Backoff, RestartPolicy, Tracker};
use crate::service::{AgentService, Readiness};
use crate::state::{ChildState, Clock};
use crate::std_health::StdHealth;
use crate::user::ResolvedUser;

/// How many live lines a follower may fall behind before it skips ahead.
pub const FOLLOW_CAPACITY: usize = 1024;
/// After the child is gone, how long to wait for its pipes to drain before exiting.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);
const READ_CHUNK: usize = 32 * 1024;

/// Exit code for a failure of the agent itself before the child runs (bad listen address...).
pub const EXIT_SETUP_FAILED: i32 = 2;
/// Exit code in pod mode when the sidecar died by itself (the app was stopped because of it).
pub const EXIT_SIDECAR_DIED: i32 = 3;

/// The second process of pod mode (`--sidecar`, `--sidecar-port`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sidecar {
    /// Its argv (Envoy and its arguments); output inherited.
    pub argv: Vec<String>,
    /// Run it as this user (`--sidecar-user`); `None`: as the agent's own user.
    pub user: Option<ResolvedUser>,
    /// HealthCheck waits for it to listen on this port.
    pub port: Option<u16>,
    /// Run it `chroot`ed into this directory (`--sidecar-root`, checked by
    /// [`crate::sidecar_root::check`]), its argv\[0\] an absolute path inside it.
    pub root: Option<std::path::PathBuf>,
}

/// Everything `run` needs, already validated.
#[derive(Debug, Clone)]
pub struct Options {
    /// Where the gRPC server listens (`--listen`).
    pub listen: SocketAddr,
    /// `--user`, resolved; `None` runs the entry as the agent's own user.
    pub user: Option<ResolvedUser>,
    /// Limits of the output ring buffer.
    pub limits: RingLimits,
    /// How long to wait after forwarding SIGTERM/SIGINT before SIGKILL (`--grace`).
    pub grace: Duration,
    /// The entry command and its arguments; never empty.
    pub argv: Vec<String>,
    /// `PYTHONPATH` for the entry (set by `--otel-auto-instrument`, see [`crate::otel`]).
    pub python_path: Option<std::ffi::OsString>,
    /// The port the app is expected to serve on (HealthCheck holds "starting" until it accepts).
    pub app_port: Option<u16>,
    /// Forward `app_port` to where the app listens once it has listened elsewhere this long
    /// (see [`crate::forward`]); `None`: never.
    pub forward_after: Option<Duration>,
    /// A second listener serving only grpc.health.v1.Health.
    pub health_listen: Option<SocketAddr>,
    /// Pod mode: the sidecar supervised next to the child.
    pub sidecar: Option<Sidecar>,
    /// Which exits of the child are followed by a restart (never in pod mode).
    pub restart: RestartPolicy,
    /// The delays between restarts.
    pub backoff: Backoff,
    /// End the agent when the pod's network namespace loses its network ([`crate::netwatch`]).
    pub follow_pod_network: bool,
    /// Where the restart record outlives a restart of the container ([`crate::restart_record`]).
    pub restart_state: Option<std::path::PathBuf>,
}

impl Options {
    /// Whether this agent may restart its child: not in pod mode, where the orchestrator
    /// restarts the whole task.
    fn restarts_child(&self) -> bool {
        self.sidecar.is_none() && self.restart != RestartPolicy::Never
    }
}

fn signal_name(sig: i32) -> &'static str {
    match sig {
        libc::SIGTERM => "SIGTERM",
        libc::SIGINT => "SIGINT",
        libc::SIGHUP => "SIGHUP",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGUSR1 => "SIGUSR1",
        libc::SIGUSR2 => "SIGUSR2",
        libc::SIGKILL => "SIGKILL",
        _ => "signal",
    }
}

/// Result of one pass of the reaping loop.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Reaped {
    /// The supervised child's final state, if it was among the reaped.
    pub child: Option<ChildState>,
    /// The sidecar's final state (pod mode), if it was among the reaped.
    pub sidecar: Option<ChildState>,
    /// Other processes (orphans re-parented to the agent) reaped in this pass.
    pub others: usize,
}

/// Collects every exited child: calls `wait` (a `waitpid(-1, WNOHANG)`) until it reports that no
/// more are ready (`Ok(None)`) or that there are no children at all (`Err(ECHILD)`); `EINTR` is
/// retried. The supervised child's and the sidecar's statuses are recorded; everybody else is
/// just reaped.
pub fn reap_all(
    child_pid: Option<i32>,
    sidecar_pid: Option<i32>,
    mut wait: impl FnMut() -> io::Result<Option<(i32, i32)>>,
) -> Reaped {
    let mut reaped = Reaped::default();
    loop {
        match wait() {
            Ok(Some((pid, status))) => {
                if Some(pid) == child_pid || Some(pid) == sidecar_pid {
                    // A stop/continue report is not an exit; keep looking.
                    if let Some(state) = ChildState::from_wait_status(status) {
                        if Some(pid) == child_pid {
                            reaped.child = Some(state);
                        } else {
                            reaped.sidecar = Some(state);
                        }
                    }
                } else {
                    reaped.others += 1;
                }
            }
            Ok(None) => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                if e.raw_os_error() != Some(libc::ECHILD) {
                    log(format!("waitpid failed: {e}"));
                }
                break;
            }
        }
    }
    reaped
}

/// `waitpid(-1, &status, WNOHANG)` as `Ok(None)` (nothing ready), `Ok(Some((pid, status)))`, or the
/// OS error.
fn waitpid_any() -> io::Result<Option<(i32, i32)>> {
    let mut status = 0;
    // SAFETY: plain syscall with a valid out-pointer.
    let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
    match pid {
        0 => Ok(None),
        p if p > 0 => Ok(Some((p, status))),
        _ => Err(io::Error::last_os_error()),
    }
}

fn send_signal(pid: i32, sig: i32) {
    // SAFETY: kill(2) on a pid we spawned and have not reaped yet (callers check the state).
    if unsafe { libc::kill(pid, sig) } != 0 {
        let err = io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::ESRCH) {
            log(format!(
                "cannot send {} to pid {pid}: {err}",
                signal_name(sig)
            ));
        }
    }
}

/// SIGKILLs every process left in the process group `pgid` (a dead run's leftovers); none left
/// is fine.
fn kill_group(pgid: i32) {
    // SAFETY: kill(2) on a process group the agent created for its child.
    if unsafe { libc::kill(-pgid, libc::SIGKILL) } == 0 {
        log(format!(
            "stopped what the last run left in its process group {pgid}"
        ));
    }
}

/// When the agent is not PID 1 (tests, `docker run --init`, running it by hand), orphans of the
/// child would re-parent to some other process; make them re-parent to the agent instead so it
/// reaps them exactly as it would as PID 1.
fn become_subreaper() {
    if std::process::id() == 1 {
        return;
    }
    // SAFETY: prctl with integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) } != 0 {
        log(format!(
            "cannot become a child subreaper: {}",
            io::Error::last_os_error()
        ));
    }
}

/// Starts `argv` with stdin inherited and stdout/stderr piped, as `user` when given, with
/// `python_path` as its `PYTHONPATH` when given.
fn spawn_child(
    argv: &[String],
    user: Option<&ResolvedUser>,
    python_path: Option<&std::ffi::OsStr>,
) -> io::Result<std::process::Child> {
    let mut cmd = Command::new(&argv[0]);
    // Its own process group: what it started can be stopped with it before a restart.
    cmd.process_group(0);
    cmd.args(&argv[1..])
        .stdin(Stdio::inherit())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(p) = python_path {
        cmd.env("PYTHONPATH", p);
    }
    if let Some(u) = user {
        as_user(&mut cmd, u);
    }
    cmd.spawn()
}

/// Makes `cmd` run as `user`: its USER/LOGNAME/HOME, then [`drop_privileges`].
pub(crate) fn as_user(cmd: &mut Command, u: &ResolvedUser) {
    if let Some(name) = &u.name {
        cmd.env("USER", name).env("LOGNAME", name);
    }
    // Docker derives HOME from the container's user (root: /root); follow the dropped user's,
    // unless HOME was set to something specific.
    if let Some(home) = &u.home {
        let inherited = std::env::var_os("HOME");
        if inherited.is_none() || inherited.as_deref() == Some("/root".as_ref()) {
            cmd.env("HOME", home);
        }
    }
    drop_privileges(cmd, u);
}

/// Makes `cmd` switch to `user` (groups, gid, then uid) between fork and exec.
fn drop_privileges(cmd: &mut Command, user: &ResolvedUser) {
    let groups: Vec<libc::gid_t> = user.groups.clone();
    let (uid, gid) = (user.uid, user.gid);
    // SAFETY: the closure runs between fork and exec and only makes async-signal-safe
    // syscalls; `groups` was allocated before the fork. Order matters: groups and gid while
    // still privileged, uid last.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setgroups(groups.len(), groups.as_ptr()) != 0
                || libc::setgid(gid) != 0
                || libc::setuid(uid) != 0
            {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Starts the sidecar with stdin from /dev/null and stdout/stderr inherited (its log lines reach
/// `docker logs` directly; they are not the app's and stay out of the ring buffer), as `user`
/// when given (a non-root user ends up with no capabilities at all).
///
/// Its environment is empty: nothing the app's environment carries (`LD_PRELOAD`, proxies, the
/// repos file's env) reaches it. With a root it is `chroot`ed there first (while still root),
/// after the engine-written DNS files are copied in.
fn spawn_sidecar(sidecar: &Sidecar) -> io::Result<std::process::Child> {
    let mut cmd = Command::new(&sidecar.argv[0]);
    cmd.args(&sidecar.argv[1..])
        .env_clear()
        .stdin(Stdio::null())
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit());
    if let Some(root) = &sidecar.root {
        crate::sidecar_root::prepare(root)?;
        let dir = std::ffi::CString::new(root.as_os_str().as_encoded_bytes())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        // SAFETY: runs between fork and exec, making only async-signal-safe syscalls on a
        // string allocated before the fork; registered before the privilege drop, so it runs
        // first, as root.
        unsafe {
            cmd.pre_exec(move || {
                if libc::chroot(dir.as_ptr()) != 0 || libc::chdir(c"/".as_ptr()) != 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    if let Some(u) = &sidecar.user {
        drop_privileges(&mut cmd, u);
    }
    cmd.spawn()
}

/// Whether a finished child ends the pod: anything but a finished job (exit 0 without a declared
/// port, which stays SERVING) does.
pub fn child_exit_fails_pod(state: &ChildState, app_port: Option<u16>) -> bool {
    state.is_final() && !(app_port.is_none() && *state == ChildState::Exited { code: 0 })
}

/// Copies one of the child's pipes to the agent's own stdout/stderr and into the ring buffer.
async fn pump(
    mut pipe: impl AsyncRead + Unpin,
    mut tee: impl AsyncWrite + Unpin,
    kind: StreamKind,
    logs: Arc<LogBuffer>,
    max_line_bytes: usize,
) {
    let mut splitter = LineSplitter::new(max_line_bytes);
    let mut buf = vec![0u8; READ_CHUNK];
    let mut lines = Vec::new();
    let mut tee_ok = true;
    loop {
        let n = match pipe.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                log(format!("reading the child's {}: {e}", kind.as_str()));
                break;
            }
        };
        if tee_ok {
            let written = async {
                tee.write_all(&buf[..n]).await?;
                tee.flush().await
            };
            if let Err(e) = written.await {
                log(format!(
                    "cannot copy the child's {0} to the agent's {0} ({e}); still buffering it",
                    kind.as_str()
                ));
                tee_ok = false;
            }
        }
        splitter.feed(&buf[..n], &mut lines);
        let now = SystemTime::now();
        for msg in lines.drain(..) {
            logs.push(LogEntry {
                ts: now,
                stream: kind,
                msg,
            });
        }
    }
    if let Some(msg) = splitter.finish() {
        logs.push(LogEntry {
            ts: SystemTime::now(),
            stream: kind,
            msg,
        });
    }
    logs.producer_finished();
}

fn start_pump(
    fd: OwnedFd,
    kind: StreamKind,
    logs: &Arc<LogBuffer>,
    max_line_bytes: usize,
) -> Option<JoinHandle<()>> {
    match tokio::net::unix::pipe::Receiver::from_owned_fd(fd) {
        Ok(rx) => {
            let logs = Arc::clone(logs);
            Some(match kind {
                StreamKind::Stdout => {
                    tokio::spawn(pump(rx, tokio::io::stdout(), kind, logs, max_line_bytes))
                }
                StreamKind::Stderr => {
                    tokio::spawn(pump(rx, tokio::io::stderr(), kind, logs, max_line_bytes))
                }
            })
        }
        Err(e) => {
            log(format!(
                "cannot read the child's {}: {e}; its output is lost",
                kind.as_str()
            ));
            logs.producer_finished();
            None
        }
    }
}

struct Signals {
    term: Signal,
    int: Signal,
    hup: Signal,
    quit: Signal,
    usr1: Signal,
    usr2: Signal,
    chld: Signal,
}

impl Signals {
    fn register() -> io::Result<Self> {
        Ok(Self {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            hup: signal(SignalKind::hangup())?,
            quit: signal(SignalKind::quit())?,
            usr1: signal(SignalKind::user_defined1())?,
            usr2: signal(SignalKind::user_defined2())?,
            chld: signal(SignalKind::child())?,
        })
    }
}

/// How many of Tokio's blocking-pool threads the tee needs at once (stdout and stderr writes).
const TEE_THREADS: usize = 2;

/// Starts the blocking-pool threads the tee writes through now, before the child runs: an app that
/// exhausts the pod's pids limit would otherwise leave the agent unable to start one, and its output
/// would stop reaching `docker logs`. The runtime keeps idle blocking threads alive (see main.rs),
/// so these stay.
async fn warm_blocking_pool() {
    let barrier = Arc::new(std::sync::Barrier::new(TEE_THREADS));
    let warm: Vec<_> = (0..TEE_THREADS)
        .map(|_| {
            let b = Arc::clone(&barrier);
            tokio::task::spawn_blocking(move || {
                b.wait();
            })
        })
        .collect();
    for w in warm {
        let _ = w.await;
    }
}

/// Runs the agent to completion and returns the process exit code. Must run inside a Tokio
/// runtime with IO and time enabled.
pub async fn run(opts: Options) -> i32 {
    // Before spawning, so no SIGCHLD or early SIGTERM is missed.
    let mut sig = match Signals::register() {
        Ok(s) => s,
        Err(e) => {
            log(format!("cannot install signal handlers: {e}"));
            return EXIT_SETUP_FAILED;
        }
    };
    become_subreaper();

    let listener = match TcpListener::bind(opts.listen).await {
        Ok(l) => l,
        Err(e) => {
            log(format!(
                "cannot listen on {} ({e}); expected a free local address such as {}",
                opts.listen,
                crate::config::DEFAULT_LISTEN
            ));
            return EXIT_SETUP_FAILED;
        }
    };
    match listener.local_addr() {
        Ok(addr) => log(format!("listening on {addr}")),
        Err(e) => log(format!("listening (address unknown: {e})")),
    }
    let health_listener = match opts.health_listen {
        None => None,
        Some(addr) => match TcpListener::bind(addr).await {
            Ok(l) => {
                match l.local_addr() {
                    Ok(a) => log(format!("health service listening on {a}")),
                    Err(e) => log(format!("health service listening (address unknown: {e})")),
                }
                Some(l)
            }
            Err(e) => {
                log(format!(
                    "cannot listen on {addr} for --health-listen ({e}); expected a free address such as 0.0.0.0:15021"
                ));
                return EXIT_SETUP_FAILED;
            }
        },
    };

    // stdout and stderr; plus, while the child may still be restarted, a hold of the
    // supervisor's own, so followers keep streaming across restarts (released once no restart
    // can follow).
    let restarts = opts.restarts_child();
    let logs = Arc::new(LogBuffer::new(
        opts.limits,
        if restarts { 3 } else { 2 },
        FOLLOW_CAPACITY,
    ));
    let (state_tx, state_rx) = watch::channel(ChildState::Starting);
    let clock = Arc::new(Clock::default());
    let record = opts.restart_state.as_deref().filter(|_| restarts);
    let tracker = Arc::new(Mutex::new(resume_tracker(record, opts.backoff)));
    warm_blocking_pool().await;
    // The sidecar first: Envoy takes a moment to listen, the app's first outbound call needs it.
    let sidecar_tx = opts.sidecar.as_ref().map(|sc| {
        let state = match spawn_sidecar(sc) {
            Ok(child) => {
                let pid = i32::try_from(child.id()).expect("pids fit in i32");
                let as_user = sc
                    .user
                    .as_ref()
                    .map(|u| format!(" as uid {} gid {}", u.uid, u.gid))
                    .unwrap_or_default();
                log(format!("started sidecar pid {pid}{as_user}: {:?}", sc.argv));
                ChildState::Running { pid }
            }
            Err(e) => {
                let state = ChildState::spawn_failed(&sc.argv[0], &e);
                log(format!("sidecar {}", state.detail()));
                state
            }
        };
        watch::channel(state).0
    });
    let mut entry = Entry {
        opts: &opts,
        logs: Arc::clone(&logs),
        pumps: Vec::new(),
        last_pid: None,
    };
    entry.spawn(&state_tx, &clock);

    let readiness = Readiness {
        app_port: opts.app_port,
        app_uid: opts.user.as_ref().map(|u| u.uid),
        own_port: listener.local_addr().map(|a| a.port()).unwrap_or(0),
    };
    let mut agent = AgentService::new(state_rx, Arc::clone(&logs))
        .with_readiness(readiness, Arc::clone(&clock))
        .with_restarts(Arc::clone(&tracker));
    if let (Some(tx), Some(sc)) = (&sidecar_tx, &opts.sidecar) {
        agent = agent.with_sidecar(tx.subscribe(), sc.port);
    }
    // Only for an app running as its own user: then its sockets are certainly its own (without
    // one, every socket of the namespace would be a candidate).
    if let (Some(app_port), Some(after), Some(uid)) =
        (opts.app_port, opts.forward_after, readiness.app_uid)
    {
        let (tx, rx) = watch::channel(None);
        agent = agent.with_forwarding(rx);
        let w = forward::Watch {
            app_port,
            app_uid: uid,
            not_app: [
                readiness.own_port,
                opts.sidecar.as_ref().and_then(|s| s.port).unwrap_or(0),
            ],
            after,
        };
        tokio::spawn(forward::run(w, state_tx.subscribe(), tx));
    }
    let std_health = HealthServer::new(StdHealth::new(agent.clone()));
    let service = ControlPlaneServer::new(agent);
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    let main_health = std_health.clone();
    tokio::spawn(async move {
        let served = Server::builder()
            .http2_keepalive_interval(Some(Duration::from_secs(30)))
            .add_service(service)
            .add_service(main_health)
            .serve_with_incoming(incoming)
            .await;
        if let Err(e) = served {
            log(format!("gRPC server stopped: {e}"));
        }
    });
    if let Some(l) = health_listener {
        let incoming = TcpIncoming::from(l).with_nodelay(Some(true));
        tokio::spawn(async move {
            let served = Server::builder()
                .add_service(std_health)
                .serve_with_incoming(incoming)
                .await;
            if let Err(e) = served {
                log(format!("health server stopped: {e}"));
            }
        });
    }

    let pod = sidecar_tx.as_ref().map(|tx| Pod {
        sidecar: tx,
        app_port: opts.app_port,
    });
    let restarter = restarts.then(|| Restarter {
        policy: opts.restart,
        app_port: opts.app_port,
        tracker: &tracker,
        hold_released: false,
        record,
    });
    let network_lost = async {
        if opts.follow_pod_network {
            crate::netwatch::lost("/proc/net/dev").await
        } else {
            std::future::pending().await
        }
    };
    let ended = supervise(
        &mut sig,
        &state_tx,
        pod,
        restarter,
        &mut entry,
        &clock,
        opts.grace,
        network_lost,
    )
    .await;

    // Let the pipes drain so the last lines reach `docker logs`, unless an orphan keeps them open.
    let pumps = std::mem::take(&mut entry.pumps);
    let drained = timeout(DRAIN_TIMEOUT, async {
        for p in pumps {
            let _ = p.await;
        }
    })
    .await;
    if drained.is_err() {
        log("the child's output is still open (held by another process); exiting anyway");
    }
    let state = state_tx.borrow().clone();
    if let Some(path) = record
        && state.is_final()
    {
        let mut t = tracker.lock().unwrap_or_else(|e| e.into_inner());
        let ran = clock.uptime();
        // A crash that was waiting out its back-off is already the last exit, with its time.
        let recorded = t
            .status()
            .last_exit
            .as_ref()
            .is_some_and(|e| e.state == state && e.ran == ran);
        if !recorded {
            t.stopped(state.clone(), ran, SystemTime::now());
        }
        save_record(path, &t);
    }
    if ended.network_lost {
        log(format!(
            "exiting with code {}: the pod's network is gone (the app {})",
            crate::netwatch::EXIT_POD_NETWORK_LOST,
            state.detail()
        ));
        return crate::netwatch::EXIT_POD_NETWORK_LOST;
    }
    if ended.sidecar_died {
        log(format!(
            "exiting with code {EXIT_SIDECAR_DIED}: the sidecar died (the app {})",
            state.detail()
        ));
        return EXIT_SIDECAR_DIED;
    }
    let code = state.exit_code().unwrap_or(EXIT_SETUP_FAILED);
    log(format!("exiting with code {code} ({})", state.detail()));
    code
}

/// The supervised program: how to start it (again), and the pumps of every run's pipes.
struct Entry<'a> {
    opts: &'a Options,
    logs: Arc<LogBuffer>,
    pumps: Vec<JoinHandle<()>>,
    /// The last run's pid, which is also its process group's id.
    last_pid: Option<i32>,
}

impl Entry<'_> {
    /// Starts a run of the child (a restart when one ran before): publishes its state, starts
    /// its uptime and the pumps of its pipes. A failed spawn is a final state like an exit.
    fn spawn(&mut self, state_tx: &watch::Sender<ChildState>, clock: &Clock) {
        let opts = self.opts;
        let again = *state_tx.borrow() != ChildState::Starting;
        if again {
            // This run's stdout and stderr, on top of the supervisor's hold.
            self.logs.producers_started(2);
        }
        self.pumps.retain(|p| !p.is_finished());
        match spawn_child(&opts.argv, opts.user.as_ref(), opts.python_path.as_deref()) {
            Ok(mut child) => {
                let pid = i32::try_from(child.id()).expect("pids fit in i32");
                self.last_pid = Some(pid);
                clock.restart();
                state_tx.send_replace(ChildState::Running { pid });
                let as_user = opts
                    .user
                    .as_ref()
                    .map(|u| format!(" as uid {} gid {}", u.uid, u.gid))
                    .unwrap_or_default();
                log(format!("started pid {pid}{as_user}: {:?}", opts.argv));
                let max = opts.limits.max_line_bytes;
                let out = child.stdout.take().map(OwnedFd::from);
                let err = child.stderr.take().map(OwnedFd::from);
                for (fd, kind) in [(out, StreamKind::Stdout), (err, StreamKind::Stderr)] {
                    match fd {
                        Some(fd) => self.pumps.extend(start_pump(fd, kind, &self.logs, max)),
                        None => self.logs.producer_finished(),
                    }
                }
                // `child` is dropped without waiting: reap_all owns reaping.
            }
            Err(e) => {
                let state = ChildState::spawn_failed(&opts.argv[0], &e);
                log(state.detail());
                clock.restart();
                clock.end();
                state_tx.send_replace(state);
                self.logs.producer_finished();
                self.logs.producer_finished();
            }
        }
    }
}

/// The tracker of this run of the agent: carried on from the container's restart record when
/// there is one ([`crate::restart_record`]), else new; the record is written at once, so the
/// next start of this container finds it.
fn resume_tracker(record: Option<&std::path::Path>, backoff: Backoff) -> Tracker {
    let Some(path) = record else {
        return Tracker::new(backoff);
    };
    let t = match crate::restart_record::load(path) {
        Ok(Some(saved)) => {
            let t = Tracker::resume(backoff, &saved);
            let last = t
                .status()
                .last_exit
                .as_ref()
                .map(|e| format!("; the app's last run {}", e.state.detail()))
                .unwrap_or_default();
            log(format!(
                "the container was restarted: restart {} of the app{last}",
                t.status().restarts
            ));
            t
        }
        Ok(None) => Tracker::new(backoff),
        Err(e) => {
            log(e);
            Tracker::new(backoff)
        }
    };
    save_record(path, &t);
    t
}

/// Writes the tracker's record; a failure is logged (the counts then last as long as the
/// container).
fn save_record(path: &std::path::Path, t: &Tracker) {
    if let Err(e) = crate::restart_record::save(path, &t.saved()) {
        log(e);
    }
}

/// The restarting part of the signal loop (absent in pod mode and with `--restart never`).
struct Restarter<'a> {
    policy: RestartPolicy,
    app_port: Option<u16>,
    tracker: &'a Mutex<Tracker>,
    /// Whether the supervisor's hold on the log buffer is released (no restart can follow).
    hold_released: bool,
    /// Where the restart record is kept across container restarts.
    record: Option<&'a std::path::Path>,
}

impl Restarter<'_> {
    fn tracker(&self) -> std::sync::MutexGuard<'_, Tracker> {
        self.tracker.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Writes the restart record, if one is kept.
    fn save(&self) {
        if let Some(path) = self.record {
            save_record(path, &self.tracker());
        }
    }

    /// No restart can follow any more: followers of the logs may end with the last run's output.
    fn release(&mut self, logs: &LogBuffer) {
        if !self.hold_released {
            self.hold_released = true;
            self.tracker().ended();
            logs.producer_finished();
        }
    }
}

/// Pod mode's part of the signal loop: the sidecar's state and whether a finished app ends the pod.
struct Pod<'a> {
    sidecar: &'a watch::Sender<ChildState>,
    app_port: Option<u16>,
}

/// What woke the signal loop.
enum Event {
    ChildSignal,
    Stop(i32),
    Forward(i32),
    GraceOver,
    Restart,
    NetworkLost,
}

/// Why the signal loop ended (besides a stop signal).
#[derive(Debug, Default, Clone, Copy)]
struct Ended {
    /// Pod mode: the sidecar died by itself.
    sidecar_died: bool,
    /// The pod's network namespace lost its network.
    network_lost: bool,
}

/// The signal loop: reaps on SIGCHLD, forwards signals, restarts a child that died when the
/// `restarter` says so (after its back-off), and returns once a stop was requested
/// (SIGTERM/SIGINT) and the child (and the sidecar, in pod mode) is gone. In pod mode the death of
/// either process is a stop request too, and so is `network_lost` completing; says which.
#[allow(clippy::too_many_arguments)]
async fn supervise(
    sig: &mut Signals,
    state_tx: &watch::Sender<ChildState>,
    pod: Option<Pod<'_>>,
    mut restarter: Option<Restarter<'_>>,
    entry: &mut Entry<'_>,
    clock: &Clock,
    grace: Duration,
    network_lost: impl std::future::Future<Output = ()>,
) -> Ended {
    let mut network_lost = std::pin::pin!(network_lost);
    let mut network_gone = false;
    let sidecar_pid = pod.as_ref().and_then(|p| p.sidecar.borrow().pid());
    let reap = || {
        let reaped = reap_all(state_tx.borrow().pid(), sidecar_pid, waitpid_any);
        if let Some(state) = reaped.child {
            log(format!("child {}", state.detail()));
            if state.is_final() {
                clock.end();
            }
            state_tx.send_replace(state);
        }
        if let (Some(state), Some(pod)) = (reaped.sidecar, &pod) {
            log(format!("sidecar {}", state.detail()));
            pod.sidecar.send_replace(state);
        }
    };
    // The pids of every supervised process still running.
    let running = || {
        let mut all = Vec::new();
        if let Some(pid) = state_tx.borrow().pid() {
            all.push(pid);
        }
        if let Some(pid) = pod.as_ref().and_then(|p| p.sidecar.borrow().pid()) {
            all.push(pid);
        }
        all
    };
    // The child may have died before the SIGCHLD handler could notice anything.
    reap();
    let mut stop_requested = false;
    let mut sidecar_died = false;
    let mut kill_at: Option<Instant> = None;
    let mut restart_at: Option<Instant> = None;
    loop {
        let alive = running();
        // A child that died by itself: restart it after its back-off, or let it rest for good.
        if let Some(r) = restarter.as_mut()
            && !stop_requested
            && restart_at.is_none()
        {
            let state = state_tx.borrow().clone();
            if state.is_final() {
                if r.policy.restarts(&state, r.app_port) {
                    let ran = clock.uptime();
                    let (delay, n) = {
                        let mut t = r.tracker();
                        let delay = t.exited(
                            state.clone(),
                            ran,
                            SystemTime::now(),
                            std::time::Instant::now(),
                        );
                        (delay, t.status().restarts + 1)
                    };
                    r.save();
                    let msg = format!(
                        "the app {} after {:.1}s; restarting it in {} (restart {n})",
                        state.detail(),
                        ran.as_secs_f64(),
                        humantime::format_duration(delay)
                    );
                    log(&msg);
                    // What the dead run left behind (workers of a killed master, holding its
                    // port) goes with it, as a container restart would take it.
                    if let Some(pgid) = entry.last_pid.take() {
                        kill_group(pgid);
                    }
                    entry.logs.push(LogEntry {
                        ts: SystemTime::now(),
                        stream: StreamKind::Stderr,
                        msg: format!("[iac-agent: {msg}]"),
                    });
                    restart_at = Some(Instant::now() + delay);
                } else {
                    r.release(&entry.logs);
                }
            }
        }
        if let Some(p) = &pod
            && !stop_requested
        {
            let sidecar_gone = p.sidecar.borrow().is_final();
            let app_failed = child_exit_fails_pod(&state_tx.borrow(), p.app_port);
            if sidecar_gone || app_failed {
                stop_requested = true;
                sidecar_died = sidecar_gone && !app_failed;
                let who = if sidecar_died { "sidecar" } else { "app" };
                log(format!(
                    "the {who} is gone; stopping the pod (SIGTERM to {alive:?}) so the task fails"
                ));
                for &pid in &alive {
                    send_signal(pid, libc::SIGTERM);
                }
                kill_at.get_or_insert_with(|| Instant::now() + grace);
            }
        }
        if stop_requested && alive.is_empty() {
            if let Some(r) = restarter.as_mut() {
                r.release(&entry.logs);
            }
            return Ended {
                sidecar_died,
                network_lost: network_gone,
            };
        }
        let event = tokio::select! {
            _ = sig.chld.recv() => Event::ChildSignal,
            _ = sig.term.recv() => Event::Stop(libc::SIGTERM),
            _ = sig.int.recv() => Event::Stop(libc::SIGINT),
            _ = sig.hup.recv() => Event::Forward(libc::SIGHUP),
            _ = sig.quit.recv() => Event::Forward(libc::SIGQUIT),
            _ = sig.usr1.recv() => Event::Forward(libc::SIGUSR1),
            _ = sig.usr2.recv() => Event::Forward(libc::SIGUSR2),
            () = sleep_until(kill_at.unwrap_or_else(Instant::now)), if kill_at.is_some() => {
                Event::GraceOver
            }
            () = sleep_until(restart_at.unwrap_or_else(Instant::now)), if restart_at.is_some() && !stop_requested => {
                Event::Restart
            }
            () = &mut network_lost, if !network_gone => Event::NetworkLost,
        };
        match event {
            Event::ChildSignal => reap(),
            Event::Restart => {
                restart_at = None;
                if let Some(r) = restarter.as_ref() {
                    r.tracker().restarted();
                    r.save();
                }
                entry.spawn(state_tx, clock);
                // A spawn that failed at once is seen (and backed off) on the next turn.
            }
            Event::NetworkLost => {
                network_gone = true;
                stop_requested = true;
                restart_at = None;
                for &pid in &alive {
                    send_signal(pid, libc::SIGTERM);
                }
                if !alive.is_empty() {
                    kill_at.get_or_insert_with(|| Instant::now() + grace);
                }
            }
            Event::Stop(signo) => {
                stop_requested = true;
                if restart_at.take().is_some() {
                    log(format!(
                        "received {}: the pending restart is cancelled",
                        signal_name(signo)
                    ));
                }
                if alive.is_empty() {
                    log(format!("received {}, stopping", signal_name(signo)));
                } else {
                    log(format!(
                        "received {}, forwarding it to {}",
                        signal_name(signo),
                        pids_text(&alive)
                    ));
                    for &pid in &alive {
                        send_signal(pid, signo);
                    }
                    kill_at.get_or_insert_with(|| Instant::now() + grace);
                }
            }
            // Forward-only signals concern the app; the sidecar (Envoy) would treat SIGHUP and
            // SIGUSR1 as its own commands (hot restart, reopen logs).
            Event::Forward(signo) => match state_tx.borrow().pid() {
                Some(pid) => send_signal(pid, signo),
                None => log(format!(
                    "received {}, but the child is not running",
                    signal_name(signo)
                )),
            },
            Event::GraceOver => {
                kill_at = None;
                for pid in running() {
                    log(format!(
                        "pid {pid} still running {:.1}s after the stop signal, sending SIGKILL",
                        grace.as_secs_f64()
                    ));
                    send_signal(pid, libc::SIGKILL);
                }
            }
        }
    }
}

fn pids_text(pids: &[i32]) -> String {
    let list: Vec<String> = pids.iter().map(|p| format!("pid {p}")).collect();
    list.join(" and ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_waits(
        script: Vec<io::Result<Option<(i32, i32)>>>,
    ) -> impl FnMut() -> io::Result<Option<(i32, i32)>> {
        let mut it = script.into_iter();
        move || {
            it.next()
                .expect("reap_all called wait after it should have stopped")
        }
    }

    #[test]
    fn reaps_orphans_and_records_the_child() {
        let reaped = reap_all(
            Some(7),
            None,
            fake_waits(vec![
                Ok(Some((50, 0))),
                Ok(Some((7, 3 << 8))),
                Ok(Some((51, libc::SIGKILL))),
                Ok(None),
            ]),
        );
        assert_eq!(
            reaped,
            Reaped {
                child: Some(ChildState::Exited { code: 3 }),
                sidecar: None,
                others: 2
            }
        );
    }

    #[test]
    fn stops_on_echild_and_retries_eintr() {
        let reaped = reap_all(
            Some(7),
            None,
            fake_waits(vec![
                Err(io::Error::from_raw_os_error(libc::EINTR)),
                Ok(Some((7, libc::SIGTERM))),
                Err(io::Error::from_raw_os_error(libc::ECHILD)),
            ]),
        );
        assert_eq!(reaped.child, Some(ChildState::Signaled { signal: 15 }));
        assert_eq!(reaped.others, 0);
    }

    #[test]
    fn nothing_ready_reaps_nothing() {
        let reaped = reap_all(None, None, fake_waits(vec![Ok(None)]));
        assert_eq!(reaped, Reaped::default());
    }

    #[test]
    fn records_the_sidecar_apart_from_the_child() {
        let reaped = reap_all(
            Some(7),
            Some(8),
            fake_waits(vec![Ok(Some((8, 1 << 8))), Ok(Some((9, 0))), Ok(None)]),
        );
        assert_eq!(
            reaped,
            Reaped {
                child: None,
                sidecar: Some(ChildState::Exited { code: 1 }),
                others: 1
            }
        );
    }

    #[test]
    fn only_a_finished_job_keeps_the_pod() {
        let done = ChildState::Exited { code: 0 };
        assert!(!child_exit_fails_pod(&done, None));
        assert!(child_exit_fails_pod(&done, Some(8000)));
        assert!(child_exit_fails_pod(&ChildState::Exited { code: 1 }, None));
        assert!(child_exit_fails_pod(
            &ChildState::Signaled { signal: 9 },
            None
        ));
        assert!(!child_exit_fails_pod(
            &ChildState::Running { pid: 4 },
            Some(8000)
        ));
    }
}
