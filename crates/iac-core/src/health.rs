//! Health and logs as the control plane sees them: [`ProbeTarget`], [`HealthReport`], [`LogLine`].

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
}

impl HealthReport {
    /// State is SERVING.
    pub fn is_serving(&self) -> bool {
        self.state == HealthState::Serving
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
