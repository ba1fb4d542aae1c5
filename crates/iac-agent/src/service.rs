//! The agent's `iac.controlplane.v1.ControlPlane` implementation: HealthCheck from the child's
//! state, its uptime and the ports it listens on; StreamLogs from the ring buffer (tail, then live
//! lines when following); Deploy refused.
//!
//! HealthCheck's status (of the current run, when the app has been restarted; `restarts` then
//! says how often, how the last run ended, and what back-off a pending restart waits out):
//! * running, no declared app port → SERVING;
//! * running with a declared app port → UNKNOWN ("starting") until that port accepts connections
//!   on 127.0.0.1 (where the sidecar sends traffic), then SERVING;
//! * exited 0 → SERVING for a job without a port, NOT_SERVING for a service with a declared port
//!   (a server that exits is not serving);
//! * exited non-zero, killed, or never started → NOT_SERVING with the exit code.
//!
//! When the agent forwards the declared port to where the app really listens
//! ([`crate::forward`]), readiness is judged at that place, `forwarded_to` names its port and the
//! detail says so.
//!
//! In pod mode (a sidecar supervised next to the app, [`AgentService::with_sidecar`]) the sidecar
//! must run too — and listen on its port when one is given — for SERVING; the detail names both
//! ("running (pid 7); sidecar running (pid 6)").

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use iac_proto::{
    ControlPlane, DeployRequest, DeployResult, HealthStatus, HealthStatusCode, LogLine, LogRequest,
    Restarts,
};
use tokio::sync::watch;
use tokio_stream::wrappers::BroadcastStream;
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status};

use crate::forward::Forwarding;
use crate::logbuf::{LogBuffer, StreamKind};
use crate::ports::{PortView, port_view, read_listeners};
use crate::restart::{RestartStatus, Tracker};
use crate::state::{ChildState, Clock};
use crate::timefmt::rfc3339_millis;

/// What HealthCheck needs to know to tell "started" from "ready".
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Readiness {
    /// The port the app must accept connections on before it counts as SERVING.
    pub app_port: Option<u16>,
    /// The uid the app runs as (its sockets are the app's ports); `None` when it runs as the agent.
    pub app_uid: Option<u32>,
    /// The agent's own gRPC port (never reported as an app port).
    pub own_port: u16,
}

/// Serves one supervised child.
#[derive(Debug, Clone)]
pub struct AgentService {
    state: watch::Receiver<ChildState>,
    logs: Arc<LogBuffer>,
    readiness: Readiness,
    clock: Arc<Clock>,
    sidecar: Option<(watch::Receiver<ChildState>, Option<u16>)>,
    forwarding: Option<watch::Receiver<Option<Forwarding>>>,
    restarts: Option<Arc<Mutex<Tracker>>>,
}

impl AgentService {
    /// The service over the supervisor's child state and the entry's log buffer.
    pub fn new(state: watch::Receiver<ChildState>, logs: Arc<LogBuffer>) -> Self {
        Self {
            state,
            logs,
            readiness: Readiness::default(),
            clock: Arc::new(Clock::default()),
            sidecar: None,
            forwarding: None,
            restarts: None,
        }
    }

    /// Reports the restarts the supervisor records in `tracker` (count, last exit, back-off).
    pub fn with_restarts(mut self, tracker: Arc<Mutex<Tracker>>) -> Self {
        self.restarts = Some(tracker);
        self
    }

    /// Reports (and judges readiness by) what the forwarder publishes on `rx`.
    pub fn with_forwarding(mut self, rx: watch::Receiver<Option<Forwarding>>) -> Self {
        self.forwarding = Some(rx);
        self
    }

    /// Reports uptime from `clock` and holds SERVING until `readiness.app_port` accepts.
    pub fn with_readiness(mut self, readiness: Readiness, clock: Arc<Clock>) -> Self {
        self.readiness = readiness;
        self.clock = clock;
        self
    }

    /// Pod mode: HealthCheck also reports the sidecar's state and, with `port`, waits for it to
    /// listen there.
    pub fn with_sidecar(mut self, state: watch::Receiver<ChildState>, port: Option<u16>) -> Self {
        self.sidecar = Some((state, port));
        self
    }

    /// HealthCheck's answer right now.
    pub fn current_health(&self) -> HealthStatus {
        let state = self.state.borrow().clone();
        let r = self.readiness;
        let fwd = self.forwarding.as_ref().and_then(|rx| *rx.borrow());
        let listeners = read_listeners().map_err(|e| format!("cannot list the pod's sockets: {e}"));
        let ports = listeners
            .as_ref()
            .map(|all| port_view(all, r.app_uid, r.own_port, r.app_port, fwd))
            .map_err(Clone::clone);
        let mut health = with_forwarding(
            health_of(&state, self.clock.uptime(), r.app_port, &ports),
            fwd,
        );
        if let Some(tracker) = &self.restarts {
            let status = tracker
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .status()
                .clone();
            health = with_restarts(
                health,
                &status,
                std::time::Instant::now(),
                SystemTime::now(),
            );
        }
        match &self.sidecar {
            None => health,
            Some((sidecar, port)) => {
                let listening = port.map(|p| {
                    listeners
                        .as_ref()
                        .map(|all| all.iter().any(|l| l.port == p))
                        .unwrap_or(false)
                });
                with_sidecar(health, &sidecar.borrow(), *port, listening)
            }
        }
    }
}

/// Folds the sidecar into the app's HealthCheck answer: NOT_SERVING once it is gone, UNKNOWN
/// ("starting") while it does not listen on `port` yet (`listening`), unchanged otherwise; the
/// detail gets `"; sidecar <state>"`.
pub fn with_sidecar(
    mut health: HealthStatus,
    sidecar: &ChildState,
    port: Option<u16>,
    listening: Option<bool>,
) -> HealthStatus {
    let serving = HealthStatusCode::Serving as i32;
    let mut note = format!("sidecar {}", sidecar.detail());
    if sidecar.is_final() {
        health.status = HealthStatusCode::NotServing as i32;
    } else if let (Some(p), Some(false)) = (port, listening) {
        note = format!("{note}, not listening on port {p} yet");
        if health.status == serving {
            health.status = HealthStatusCode::Unknown as i32;
        }
    }
    health.detail = format!("{}; {note}", health.detail);
    health
}

/// Adds the supervisor's restart record to a HealthCheck answer: the `restarts` message once the
/// app has exited at least once, and — while a restart is pending — the back-off in the detail.
pub fn with_restarts(
    mut health: HealthStatus,
    status: &RestartStatus,
    now: std::time::Instant,
    wall_now: SystemTime,
) -> HealthStatus {
    if status.restarts == 0 && status.last_exit.is_none() {
        return health;
    }
    let (backoff_ms, restart_in_ms) = match status.pending {
        Some((at, delay)) => (
            millis(delay).max(1),
            millis(at.saturating_duration_since(now)),
        ),
        None => (0, 0),
    };
    if let Some(note) = status.pending_note(now) {
        health.detail = format!("{}; {note}", health.detail);
    }
    let last = status.last_exit.as_ref();
    health.restarts = Some(Restarts {
        count: status.restarts,
        last_exit: last.map(|l| l.state.detail()).unwrap_or_default(),
        last_exit_code: last.and_then(|l| l.state.exit_code()),
        last_exit_at: last
            .map(|l| rfc3339_millis(l.at.min(wall_now)))
            .unwrap_or_default(),
        backoff_ms,
        restart_in_ms,
    });
    health
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Adds the forwarder's part to a HealthCheck answer: `forwarded_to` and a detail naming both ends.
/// Once the app has exited there is nothing to forward to, and nothing is said.
pub fn with_forwarding(mut health: HealthStatus, fwd: Option<Forwarding>) -> HealthStatus {
    if let Some(f) = fwd.filter(|_| health.exit_code.is_none()) {
        health.forwarded_to = u32::from(f.to.port());
        health.detail = format!(
            "{}; the app listens on {}, not on $PORT {}: the agent forwards 127.0.0.1:{} there",
            health.detail, f.to, f.from, f.from
        );
    }
    health
}

/// The line a lagging follower gets in place of the lines it missed.
pub fn lagged_line(skipped: u64) -> LogLine {
    LogLine {
        ts: rfc3339_millis(std::time::SystemTime::now()),
        stream: StreamKind::Stderr.as_str().to_owned(),
        msg: format!(
            "[iac-agent: this follower fell behind; {skipped} lines skipped (use StreamLogs without follow to read the buffer)]"
        ),
        service: String::new(),
    }
}

/// HealthCheck's answer for a state, its uptime, the declared app port and the ports seen.
pub fn health_of(
    state: &ChildState,
    uptime: Duration,
    app_port: Option<u16>,
    ports: &Result<PortView, String>,
) -> HealthStatus {
    let mut detail = state.detail();
    let status = match (state, app_port) {
        (ChildState::Starting, _) => HealthStatusCode::Unknown,
        (ChildState::Running { .. }, Some(port)) => match ports {
            Ok(view) if view.app_port_open => HealthStatusCode::Serving,
            Ok(view) => {
                detail = format!(
                    "{detail}, starting for {:.1}s: waiting for the app to accept connections on 127.0.0.1:{port}{}",
                    uptime.as_secs_f64(),
                    listening_note(&view.ports)
                );
                HealthStatusCode::Unknown
            }
            Err(why) => {
                detail = format!("{detail}, cannot tell whether port {port} is open: {why}");
                HealthStatusCode::Unknown
            }
        },
        (ChildState::Exited { code: 0 }, Some(port)) => {
            detail = format!(
                "{detail} after {:.1}s; a service that serves port {port} must keep running",
                uptime.as_secs_f64()
            );
            HealthStatusCode::NotServing
        }
        _ if state.is_serving() => HealthStatusCode::Serving,
        _ => HealthStatusCode::NotServing,
    };
    HealthStatus {
        status: status as i32,
        exit_code: state.exit_code(),
        detail,
        uptime_ms: u64::try_from(uptime.as_millis()).unwrap_or(u64::MAX),
        listening_ports: ports
            .as_ref()
            .map(|v| v.ports.iter().map(|&p| u32::from(p)).collect())
            .unwrap_or_default(),
        app_port: app_port.map(u32::from).unwrap_or(0),
        forwarded_to: 0,
        restarts: None,
    }
}

fn listening_note(ports: &[u16]) -> String {
    if ports.is_empty() {
        " (it listens on no TCP port yet)".to_owned()
    } else {
        let list: Vec<String> = ports.iter().map(u16::to_string).collect();
        format!(" (it listens on {})", list.join(", "))
    }
}

type LogStream = Pin<Box<dyn Stream<Item = Result<LogLine, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl ControlPlane for AgentService {
    async fn health_check(&self, _: Request<()>) -> Result<Response<HealthStatus>, Status> {
        Ok(Response::new(self.current_health()))
    }

    type StreamLogsStream = LogStream;

    async fn stream_logs(
        &self,
        request: Request<LogRequest>,
    ) -> Result<Response<Self::StreamLogsStream>, Status> {
        let req = request.into_inner();
        let tail = usize::try_from(req.tail).unwrap_or(usize::MAX);
        let sub = self.logs.subscribe(tail, req.follow);
        let backlog = tokio_stream::iter(sub.backlog).map(|e| Ok(e.to_proto()));
        let stream: LogStream = match sub.live {
            Some(rx) => Box::pin(backlog.chain(BroadcastStream::new(rx).map(|item| {
                Ok(match item {
                    Ok(entry) => entry.to_proto(),
                    Err(BroadcastStreamRecvError::Lagged(n)) => lagged_line(n),
                })
            }))),
            None => Box::pin(backlog),
        };
        Ok(Response::new(stream))
    }

    async fn deploy(&self, _: Request<DeployRequest>) -> Result<Response<DeployResult>, Status> {
        Err(Status::unimplemented(
            "iac-agent serves HealthCheck and StreamLogs only; Deploy is served by the control plane (`iac serve`)",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restarts_are_reported_once_the_app_has_exited() {
        use crate::restart::{Backoff, Tracker};
        let now = std::time::Instant::now();
        let wall = SystemTime::UNIX_EPOCH + Duration::from_secs(1_796_000_000);
        let running = health_of(&ChildState::Running { pid: 7 });
        let mut t = Tracker::new(Backoff::default());
        let h = with_restarts(running.clone(), t.status(), now, wall);
        assert_eq!(h, running, "nothing to say before the first exit");
        t.exited(
            ChildState::Signaled { signal: 9 },
            Duration::from_secs(3),
            wall,
            now,
        );
        let waiting = health_of(&ChildState::Signaled { signal: 9 });
        let h = with_restarts(waiting, t.status(), now + Duration::from_secs(4), wall);
        assert_eq!(h.status, HealthStatusCode::NotServing as i32);
        assert_eq!(
            h.detail,
            "killed by signal 9; restarting in 6.0s (back-off 10s, restart 1)"
        );
        let r = h.restarts.unwrap();
        assert_eq!(r.count, 0);
        assert_eq!(r.last_exit, "killed by signal 9");
        assert_eq!(r.last_exit_code, Some(137));
        assert_eq!(r.last_exit_at, rfc3339_millis(wall));
        assert_eq!((r.backoff_ms, r.restart_in_ms), (10_000, 6_000));
        t.restarted();
        let h = with_restarts(running.clone(), t.status(), now, wall);
        assert_eq!(h.detail, running.detail, "no back-off once it runs again");
        let r = h.restarts.unwrap();
        assert_eq!((r.count, r.backoff_ms, r.restart_in_ms), (1, 0, 0));
        assert_eq!(r.last_exit, "killed by signal 9");
    }

    fn no_ports() -> Result<PortView, String> {
        Ok(PortView {
            ports: vec![],
            app_port_open: true,
        })
    }

    fn health_of(state: &ChildState) -> HealthStatus {
        super::health_of(state, Duration::from_millis(1500), None, &no_ports())
    }

    #[test]
    fn a_declared_port_gates_serving() {
        let running = ChildState::Running { pid: 7 };
        let up = Duration::from_millis(2500);
        let closed = Ok(PortView {
            ports: vec![5000],
            app_port_open: false,
        });
        let h = super::health_of(&running, up, Some(8000), &closed);
        assert_eq!(h.status, HealthStatusCode::Unknown as i32);
        assert_eq!(
            h.detail,
            "running (pid 7), starting for 2.5s: waiting for the app to accept connections on 127.0.0.1:8000 (it listens on 5000)"
        );
        assert_eq!(
            (h.uptime_ms, h.app_port, h.listening_ports),
            (2500, 8000, vec![5000])
        );

        let open = Ok(PortView {
            ports: vec![8000],
            app_port_open: true,
        });
        let h = super::health_of(&running, up, Some(8000), &open);
        assert_eq!(h.status, HealthStatusCode::Serving as i32);
        assert_eq!(h.detail, "running (pid 7)");

        let h = super::health_of(&running, up, Some(8000), &Err("denied".into()));
        assert_eq!(h.status, HealthStatusCode::Unknown as i32);
        assert!(
            h.detail
                .ends_with("cannot tell whether port 8000 is open: denied"),
            "{}",
            h.detail
        );

        // A server that exits cleanly is not serving; a job without a port is.
        let done = ChildState::Exited { code: 0 };
        let h = super::health_of(&done, Duration::from_millis(300), Some(8000), &open);
        assert_eq!(h.status, HealthStatusCode::NotServing as i32);
        assert_eq!(
            h.detail,
            "exited with code 0 after 0.3s; a service that serves port 8000 must keep running"
        );
        let h = super::health_of(&done, Duration::from_millis(300), None, &open);
        assert_eq!(h.status, HealthStatusCode::Serving as i32);
        assert_eq!(h.exit_code, Some(0));
    }

    #[test]
    fn forwarding_is_reported() {
        let running = health_of(&ChildState::Running { pid: 7 });
        assert_eq!(with_forwarding(running.clone(), None), running);
        let f = Forwarding {
            from: 8080,
            to: "127.0.0.1:5000".parse().unwrap(),
        };
        let exited = health_of(&ChildState::Exited { code: 1 });
        assert_eq!(with_forwarding(exited.clone(), Some(f)), exited);
        let h = with_forwarding(running, Some(f));
        assert_eq!(h.forwarded_to, 5000);
        assert_eq!(h.status, HealthStatusCode::Serving as i32);
        assert_eq!(
            h.detail,
            "running (pid 7); the app listens on 127.0.0.1:5000, not on $PORT 8080: the agent forwards 127.0.0.1:8080 there"
        );
    }

    #[test]
    fn the_sidecar_is_part_of_the_answer() {
        let app = health_of(&ChildState::Running { pid: 7 });
        let up = ChildState::Running { pid: 6 };
        let h = with_sidecar(app.clone(), &up, Some(15000), Some(true));
        assert_eq!(h.status, HealthStatusCode::Serving as i32);
        assert_eq!(h.detail, "running (pid 7); sidecar running (pid 6)");

        let h = with_sidecar(app.clone(), &up, Some(15000), Some(false));
        assert_eq!(h.status, HealthStatusCode::Unknown as i32);
        assert_eq!(
            h.detail,
            "running (pid 7); sidecar running (pid 6), not listening on port 15000 yet"
        );

        let dead = ChildState::Signaled { signal: 9 };
        let h = with_sidecar(app, &dead, Some(15000), Some(false));
        assert_eq!(h.status, HealthStatusCode::NotServing as i32);
        assert_eq!(h.detail, "running (pid 7); sidecar killed by signal 9");
        assert_eq!(h.exit_code, None, "the exit code stays the app's");

        // A failed app stays NOT_SERVING whatever the sidecar does.
        let failed = health_of(&ChildState::Exited { code: 1 });
        let h = with_sidecar(failed, &up, None, None);
        assert_eq!(h.status, HealthStatusCode::NotServing as i32);
        assert_eq!(h.detail, "exited with code 1; sidecar running (pid 6)");
    }

    #[test]
    fn health_mapping() {
        let h = health_of(&ChildState::Starting);
        assert_eq!(h.status, HealthStatusCode::Unknown as i32);
        let h = health_of(&ChildState::Running { pid: 7 });
        assert_eq!(h.status, HealthStatusCode::Serving as i32);
        assert_eq!((h.exit_code, h.detail.as_str()), (None, "running (pid 7)"));

        let h = health_of(&ChildState::Exited { code: 0 });
        assert_eq!(h.status, HealthStatusCode::Serving as i32);
        assert_eq!(h.exit_code, Some(0));

        let h = health_of(&ChildState::Exited { code: 1 });
        assert_eq!(h.status, HealthStatusCode::NotServing as i32);
        assert_eq!(
            (h.exit_code, h.detail.as_str(), h.uptime_ms),
            (Some(1), "exited with code 1", 1500)
        );

        let h = health_of(&ChildState::Signaled { signal: 9 });
        assert_eq!(h.status, HealthStatusCode::NotServing as i32);
        assert_eq!(
            (h.exit_code, h.detail.as_str()),
            (Some(137), "killed by signal 9")
        );

        let h = health_of(&ChildState::SpawnFailed {
            error: "No such file or directory (os error 2)".into(),
            program: "python".into(),
            code: 127,
        });
        assert_eq!(h.status, HealthStatusCode::NotServing as i32);
        assert_eq!(h.exit_code, Some(127));
        assert_eq!(
            h.detail,
            "spawn failed: No such file or directory (os error 2): python"
        );
    }
}
