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
    /// Kernel privileges (capabilities, `no-new-privileges`). Default: the engine's defaults.
    #[serde(default)]
    pub privileges: Privileges,
    /// Resource limits. Default: none here; provisioners fill in their configured limits.
    #[serde(default)]
    pub limits: Limits,
}

/// What a container's processes may do beyond an unprivileged process. Capabilities are names
/// without the `CAP_` prefix (`NET_ADMIN`); `cap_drop` applies first (`ALL`: every one), then
/// `cap_add`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Privileges {
    /// `no-new-privileges`: setuid binaries and file capabilities grant nothing.
    pub no_new_privileges: bool,
    pub cap_drop: Vec<String>,
    pub cap_add: Vec<String>,
}

/// cgroup limits of one container; `None`: no limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Limits {
    /// Maximum number of processes and threads (`pids.max`).
    pub pids: Option<i64>,
    /// Memory limit in bytes (swap included: the container gets no swap beyond it).
    pub memory_bytes: Option<i64>,
}

/// One service's pair of containers. Both carry `spec_hash` in their labels.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceStack {
    pub service: ServiceName,
    pub app: ContainerSpec,
    pub envoy: ContainerSpec,
    pub spec_hash: String,
    /// How many copies an orchestrator runs (Swarm, Kubernetes); not part of `spec_hash` (the
    /// docker and terraform provisioners run one pair whatever it says).
    #[serde(default = "one_replica")]
    pub replicas: u32,
    /// The packet filter the sidecar installs in the pod, when it installs one; a provisioner
    /// that can check it does so before reporting the pair created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_filter: Option<PodFilter>,
}

fn one_replica() -> u32 {
    1
}

/// An nftables table (family `inet`) in the pod's network namespace that lets only `inbound_port`
/// in from outside the pod.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PodFilter {
    pub table: String,
    pub inbound_port: u16,
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
