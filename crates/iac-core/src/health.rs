//! Health and logs as the control plane sees them: [`ProbeTarget`], [`HealthReport`] (with what
//! the agent saw of the app's ports, and [`HealthReport::port_warning`] when they do not match
//! the port the sidecar routes to), [`LogLine`].

use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::name::ServiceName;

/// Where to reach one service's agent: its Envoy's mTLS listener as published on the host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbeTarget {
    /// The service.
    pub service: ServiceName,
    /// Host address of its mTLS listener.
    pub addr: SocketAddr,
    /// Keep retrying (with backoff) until this much time has passed.
    #[serde(with = "millis")]
    pub deadline: Duration,
}

/// A service's health as the agent reports it (or why it could not be asked).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum HealthState {
    /// The entry runs (or exited 0).
    Serving,
    /// The entry exited non-zero or failed to start.
    NotServing,
    /// The agent answered without a state.
    Unknown,
    /// Nothing answered (connection, TLS or deadline failure); `detail` says why.
    Unreachable,
}

impl HealthState {
    /// Upper-case name, as gRPC health spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            HealthState::Serving => "SERVING",
            HealthState::NotServing => "NOT_SERVING",
            HealthState::Unknown => "UNKNOWN",
            HealthState::Unreachable => "UNREACHABLE",
        }
    }
}

/// The outcome of probing one service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthReport {
    /// The service.
    pub service: ServiceName,
    /// Its state.
    pub state: HealthState,
    /// The entry's exit code, when it exited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// The agent's detail, or why it could not be reached.
    pub detail: String,
    /// How many attempts the prober made.
    pub attempts: u32,
    /// How long the entry has been running (or ran, once it exited), as the agent last said;
    /// `None` when no agent answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uptime_ms: Option<u64>,
    /// TCP ports the app listens on, ascending, as the agent last saw them (empty when no agent
    /// answered or the app listens nowhere).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub listening_ports: Vec<u16>,
    /// The port the sidecar routes the app's traffic to (`$PORT`), as the agent knows it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_port: Option<u16>,
    /// The app listens elsewhere and the agent forwards `app_port` there: the app's port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forwarded_to: Option<u16>,
    /// What the agent says of restarting the app: how often it has, the last exit, and the
    /// back-off it waits out. `None` when no agent answered, or before the app ever exited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restarts: Option<Restarts>,
}

/// The agent's record of restarting a service's app (it restarts an app that should be running
/// and died, with a growing back-off, as Kubernetes' CrashLoopBackOff does).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Restarts {
    /// Restarts so far.
    pub count: u32,
    /// How the last run that ended, ended ("exited with code 1", "killed by signal 9").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_exit: Option<String>,
    /// That run's exit code (128+N after signal N).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_exit_code: Option<i32>,
    /// When it ended (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_exit_at: Option<String>,
    /// While a restart is being waited for: the back-off delay, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff_ms: Option<u64>,
    /// While a restart is being waited for: the time left before it, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart_in_ms: Option<u64>,
}

impl Restarts {
    /// One line for people: `3 restarts, last: exited with code 1 at 2026-…; back-off 40s,
    /// restarting in 12.0s`.
    pub fn summary(&self) -> String {
        let mut s = format!(
            "{} restart{}",
            self.count,
            if self.count == 1 { "" } else { "s" }
        );
        if let Some(last) = &self.last_exit {
            s.push_str(&format!(", last: {last}"));
            if let Some(at) = &self.last_exit_at {
                s.push_str(&format!(" at {at}"));
            }
        }
        if let (Some(b), Some(left)) = (self.backoff_ms, self.restart_in_ms) {
            s.push_str(&format!(
                "; back-off {:.0}s, restarting in {:.1}s",
                b as f64 / 1000.0,
                left as f64 / 1000.0
            ));
        }
        s
    }
}

impl HealthReport {
    /// A report with nothing from an agent (no uptime, no ports).
    pub fn new(
        service: ServiceName,
        state: HealthState,
        exit_code: Option<i32>,
        detail: String,
        attempts: u32,
    ) -> HealthReport {
        HealthReport {
            service,
            state,
            exit_code,
            detail,
            attempts,
            uptime_ms: None,
            listening_ports: Vec::new(),
            app_port: None,
            forwarded_to: None,
            restarts: None,
        }
    }

    /// Whether the agent answered SERVING.
    pub fn is_serving(&self) -> bool {
        self.state == HealthState::Serving
    }

    /// When the app listens on TCP ports but not on the one the sidecar routes to: a warning
    /// naming both and what to change — and, when the agent forwards the port, that traffic
    /// reaches the app through it. `None` when the ports match, when no port is declared, or when
    /// the app listens nowhere (yet).
    pub fn port_warning(&self) -> Option<String> {
        let want = self.app_port?;
        let svc = &self.service;
        if let Some(to) = self.forwarded_to {
            return Some(format!(
                "{svc}: the app listens on port {to}, not on $PORT ({want}); its agent forwards 127.0.0.1:{want} there, so traffic reaches it through one extra local hop; to route to it directly, make the app listen on $PORT or set `env: {{PORT: \"{to}\"}}` for {svc} in the repos file"
            ));
        }
        if self.listening_ports.is_empty() || self.listening_ports.contains(&want) {
            return None;
        }
        let seen: Vec<String> = self.listening_ports.iter().map(|p| p.to_string()).collect();
        let (it, port_word) = if seen.len() == 1 {
            ("it", "port")
        } else {
            ("one of them", "ports")
        };
        let first = self.listening_ports[0];
        Some(format!(
            "{svc}: the app listens on {port_word} {seen} but the sidecar routes to port {want} ($PORT); make the app listen on $PORT ({want}) on 127.0.0.1, or, if {it} is the app's HTTP port, set `env: {{PORT: \"{first}\"}}` for {svc} in the repos file",
            seen = seen.join(", "),
        ))
    }

    /// [`HealthReport::uptime_ms`] as a duration.
    pub fn uptime(&self) -> Option<Duration> {
        self.uptime_ms.map(Duration::from_millis)
    }
}

/// What `StreamLogs` should send.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct LogQuery {
    /// Keep streaming new lines.
    pub follow: bool,
    /// 0 = everything buffered.
    pub tail: u32,
}

/// One line of a service's output, as the agent kept it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogLine {
    /// The service.
    pub service: ServiceName,
    /// When the agent read it (RFC 3339).
    pub ts: String,
    /// "stdout" or "stderr".
    pub stream: String,
    /// The line.
    pub msg: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(app_port: Option<u16>, listening: &[u16]) -> HealthReport {
        HealthReport {
            app_port,
            listening_ports: listening.to_vec(),
            uptime_ms: Some(4200),
            ..HealthReport::new(
                ServiceName::new("flask").unwrap(),
                HealthState::Unknown,
                None,
                "starting".into(),
                3,
            )
        }
    }

    #[test]
    fn restarts_read_as_one_line() {
        let mut r = Restarts {
            count: 1,
            ..Restarts::default()
        };
        assert_eq!(r.summary(), "1 restart");
        r.count = 3;
        r.last_exit = Some("exited with code 1".into());
        r.last_exit_at = Some("2026-12-07T03:00:00.000Z".into());
        r.backoff_ms = Some(40_000);
        r.restart_in_ms = Some(12_000);
        assert_eq!(
            r.summary(),
            "3 restarts, last: exited with code 1 at 2026-12-07T03:00:00.000Z; back-off 40s, restarting in 12.0s"
        );
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["count"], 3);
        assert_eq!(json["restart_in_ms"], 12_000);
        assert!(
            serde_json::to_value(Restarts::default())
                .unwrap()
                .get("last_exit")
                .is_none()
        );
    }

    #[test]
    fn a_mismatch_names_both_ports_and_what_to_set() {
        let w = report(Some(8080), &[5000]).port_warning().unwrap();
        assert!(w.starts_with("flask: "), "{w}");
        assert!(w.contains("listens on port 5000"), "{w}");
        assert!(w.contains("routes to port 8080 ($PORT)"), "{w}");
        assert!(w.contains("`env: {PORT: \"5000\"}` for flask"), "{w}");
        let w = report(Some(8000), &[5000, 5001]).port_warning().unwrap();
        assert!(w.contains("listens on ports 5000, 5001"), "{w}");
        assert!(w.contains("if one of them is"), "{w}");
    }

    #[test]
    fn a_forwarded_port_says_traffic_reaches_the_app() {
        let mut r = report(Some(8080), &[5000]);
        r.forwarded_to = Some(5000);
        let w = r.port_warning().unwrap();
        assert!(
            w.starts_with("flask: the app listens on port 5000, not on $PORT (8080)"),
            "{w}"
        );
        assert!(w.contains("forwards 127.0.0.1:8080 there"), "{w}");
        assert!(w.contains("`env: {PORT: \"5000\"}` for flask"), "{w}");
        let json = serde_json::to_string(&r).unwrap();
        assert!(json.contains("\"forwarded_to\":5000"), "{json}");
    }

    #[test]
    fn no_warning_when_the_ports_agree_or_say_nothing() {
        assert_eq!(report(Some(8080), &[8080]).port_warning(), None);
        assert_eq!(report(Some(8080), &[8080, 9090]).port_warning(), None);
        assert_eq!(report(Some(8080), &[]).port_warning(), None);
        assert_eq!(report(None, &[5000]).port_warning(), None);
    }

    #[test]
    fn agent_facts_round_trip_and_stay_out_of_json_when_absent() {
        let r = report(Some(8080), &[5000]);
        let json = serde_json::to_string(&r).unwrap();
        assert!(json.contains("\"listening_ports\":[5000]") && json.contains("\"uptime_ms\":4200"));
        assert_eq!(serde_json::from_str::<HealthReport>(&json).unwrap(), r);
        let bare = HealthReport::new(
            ServiceName::new("x").unwrap(),
            HealthState::Unreachable,
            None,
            "refused".into(),
            1,
        );
        let json = serde_json::to_string(&bare).unwrap();
        assert!(
            !json.contains("uptime_ms") && !json.contains("listening_ports"),
            "{json}"
        );
        // Reports written before these fields existed still read.
        let old = r#"{"service":"x","state":"SERVING","detail":"ok","attempts":1}"#;
        assert!(
            serde_json::from_str::<HealthReport>(old)
                .unwrap()
                .listening_ports
                .is_empty()
        );
    }
}

mod millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_millis() as u64)
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_millis)
    }
}
