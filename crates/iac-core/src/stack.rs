//! The desired state: [`Stack`] (network + two containers per service, fully specified, with spec
//! hashes) and what provisioning it did ([`Applied`], [`Change`]). Produced by [`crate::plan::plan`].

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::health::HealthReport;
use crate::name::{ProjectName, ServiceName};

pub const LABEL_PROJECT: &str = "iac.project";
pub const LABEL_SERVICE: &str = "iac.service";
pub const LABEL_SPEC_HASH: &str = "iac.spec-hash";
pub const LABEL_ROLE: &str = "iac.role";
pub const LABEL_MANAGED: &str = "iac.managed-by";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkSpec {
    pub name: String,
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum NetworkMode {
    /// Attach to a user network with DNS aliases.
    Network { name: String, aliases: Vec<String> },
    /// Share another container's network namespace (`container:<name>`), like a pod.
    Container { name: String },
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Mount {
    pub source: PathBuf,
    pub target: PathBuf,
    pub read_only: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PortPublish {
    pub container_port: u16,
    pub host_ip: String,
    /// `None`: an ephemeral port chosen by the engine.
    pub host_port: Option<u16>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerSpec {
    pub name: String,
    pub image: String,
    /// Overrides the image's CMD when non-empty.
    pub cmd: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub labels: BTreeMap<String, String>,
    pub network: NetworkMode,
    pub mounts: Vec<Mount>,
    pub ports: Vec<PortPublish>,
    /// Seconds the engine waits after SIGTERM before SIGKILL.
    pub stop_timeout_secs: u32,
}

/// One service's pair of containers. Both carry `spec_hash` in their labels.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceStack {
    pub service: ServiceName,
    pub app: ContainerSpec,
    pub envoy: ContainerSpec,
    pub spec_hash: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stack {
    pub project: ProjectName,
    pub network: NetworkSpec,
    pub services: Vec<ServiceStack>,
    /// Services that failed before provisioning: whatever runs for them now is left alone.
    pub keep: Vec<ServiceName>,
}

/// What reconciling will do (plan) or did (apply) to one service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Create,
    Replace,
    Unchanged,
    Remove,
    /// A replacement failed its health check: the new pair was removed, the old one kept.
    RolledBack,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Create => "create",
            Action::Replace => "replace",
            Action::Unchanged => "unchanged",
            Action::Remove => "remove",
            Action::RolledBack => "rolled back",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    pub service: ServiceName,
    pub action: Action,
    /// Why, e.g. "spec hash 1a2b… → 3c4d…", "not running", "not in the repos file".
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppliedService {
    pub service: ServiceName,
    pub action: Action,
    /// Host address of the service's mTLS listener.
    pub endpoint: Option<SocketAddr>,
    /// The gate's verdict when the provisioner health-checked it (replacements).
    pub health: Option<HealthReport>,
    pub error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Applied {
    pub services: Vec<AppliedService>,
    /// Services removed because they are no longer in the stack.
    pub removed: Vec<ServiceName>,
}

/// A service currently running in a project, as the provisioner sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunningService {
    pub service: ServiceName,
    pub endpoint: Option<SocketAddr>,
    pub spec_hash: String,
    pub image: String,
    /// Engine state of the app container, e.g. "running", "exited".
    pub state: String,
}
