//! The desired state: [`Stack`] (network + two containers per service, fully specified, with spec
//! hashes) and what provisioning it did ([`Applied`], [`Change`]). Produced by [`crate::plan::plan`].

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::health::HealthReport;
use crate::name::{ProjectName, ServiceName};

pub use crate::labels::{LABEL_MANAGED, LABEL_PROJECT, LABEL_ROLE, LABEL_SERVICE, LABEL_SPEC_HASH};

/// What an object iac creates is for: the value of its [`LABEL_ROLE`] label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// A service's app container (PID 1 the agent).
    App,
    /// A service's Envoy sidecar, sharing the app's network namespace.
    Envoy,
    /// The project's network.
    Network,
    /// The project's keeper (Docker): starts the apps an engine restart left down.
    Keeper,
}

impl Role {
    /// The label value: `app`, `envoy` or `network`.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::App => "app",
            Role::Envoy => "envoy",
            Role::Network => "network",
            Role::Keeper => "keeper",
        }
    }

    /// The role a label value names; `None` for anything else (an object iac did not label).
    pub fn from_label(value: &str) -> Option<Role> {
        [Role::App, Role::Envoy, Role::Network, Role::Keeper]
            .into_iter()
            .find(|r| r.as_str() == value)
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The project's network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkSpec {
    /// Its name.
    pub name: String,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
}

/// How a container joins the network.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum NetworkMode {
    /// Attach to a user network with DNS aliases.
    Network {
        /// The network.
        name: String,
        /// DNS names the container answers to on it.
        aliases: Vec<String>,
    },
    /// Share another container's network namespace (`container:<name>`), like a pod.
    Container {
        /// The container whose namespace is shared.
        name: String,
    },
}

/// A bind mount of a host path.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Mount {
    /// Host path.
    pub source: PathBuf,
    /// Path in the container.
    pub target: PathBuf,
    /// Mounted read-only.
    pub read_only: bool,
}

/// A container port published on the host.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PortPublish {
    /// The TCP port in the container.
    pub container_port: u16,
    /// The host address it is bound to (`127.0.0.1` by default).
    pub host_ip: String,
    /// `None`: an ephemeral port chosen by the engine.
    pub host_port: Option<u16>,
}

/// One container, as a provisioner creates it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerSpec {
    /// Container name.
    pub name: String,
    /// Image tag.
    pub image: String,
    /// Overrides the image's CMD when non-empty.
    pub cmd: Vec<String>,
    /// Environment.
    pub env: BTreeMap<String, String>,
    /// Labels (project, service, role, spec hash).
    pub labels: BTreeMap<String, String>,
    /// Network attachment.
    pub network: NetworkMode,
    /// Bind mounts.
    pub mounts: Vec<Mount>,
    /// Published ports.
    pub ports: Vec<PortPublish>,
    /// Seconds the engine waits after SIGTERM before SIGKILL.
    pub stop_timeout_secs: u32,
    /// Kernel privileges (capabilities, `no-new-privileges`). Default: the engine's defaults.
    #[serde(default)]
    pub privileges: Privileges,
    /// Resource limits. Default: none here; provisioners fill in their configured limits.
    #[serde(default)]
    pub limits: Limits,
    /// What the engine does when the container stops by itself or the engine restarts.
    #[serde(default)]
    pub restart: RestartPolicy,
}

/// The engine's restart policy for a container (Docker's `--restart`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestartPolicy {
    /// Never restarted by the engine.
    #[default]
    No,
    /// Restarted whenever it stops by itself, and started again when the engine starts (after
    /// a reboot), unless a person stopped it.
    UnlessStopped,
}

impl RestartPolicy {
    /// Docker's (and Compose's, and the Terraform provider's) spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            RestartPolicy::No => "no",
            RestartPolicy::UnlessStopped => "unless-stopped",
        }
    }
}

/// What a container's processes may do beyond an unprivileged process. Capabilities are names
/// without the `CAP_` prefix (`NET_ADMIN`); `cap_drop` applies first (`ALL`: every one), then
/// `cap_add`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Privileges {
    /// `no-new-privileges`: setuid binaries and file capabilities grant nothing.
    pub no_new_privileges: bool,
    /// Capabilities dropped (`ALL`: every one).
    pub cap_drop: Vec<String>,
    /// Capabilities added back after the drop.
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

/// One service's pair of containers (a pod). Both carry `spec_hash` in their labels. The sidecar
/// owns the pod's network namespace (it is on the project network, with the service's alias,
/// and publishes the pod's ports); the app joins it (`container:<sidecar>`), so restarting the
/// app never takes the pod's address or filter away.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceStack {
    /// The service.
    pub service: ServiceName,
    /// The app container (PID 1 the agent), in the sidecar's network namespace.
    pub app: ContainerSpec,
    /// The Envoy sidecar: the pod's network namespace and its published ports.
    pub envoy: ContainerSpec,
    /// Hash of both specs: unchanged hash → the running pair is left alone.
    pub spec_hash: String,
    /// How many copies an orchestrator runs (Swarm, Kubernetes); not part of `spec_hash` (the
    /// docker and terraform provisioners run one pair whatever it says).
    #[serde(default = "one_replica")]
    pub replicas: u32,
    /// The packet filter the sidecar installs in the pod, when it installs one; a provisioner
    /// that can check it does so before reporting the pair created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_filter: Option<PodFilter>,
    /// Where the app may connect outside the mesh (`[mesh] egress` and its `egress` list); the
    /// app container's proxy variables and the pod filter's outbound chain already follow it.
    #[serde(default)]
    pub egress: crate::egress::EgressPolicy,
}

fn one_replica() -> u32 {
    1
}

impl ServiceStack {
    /// Where the pod's port `container_port` is published on the host (the sidecar publishes
    /// them all), if it is.
    pub fn published(&self, container_port: u16) -> Option<&PortPublish> {
        self.envoy
            .ports
            .iter()
            .find(|p| p.container_port == container_port)
    }
}

/// An nftables table (family `inet`) in the pod's network namespace that lets only `inbound_port`
/// in from outside the pod.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PodFilter {
    /// The nftables table name.
    pub table: String,
    /// The only port admitted from outside the pod (Envoy's mTLS listener).
    pub inbound_port: u16,
}

/// Everything a project should run: the pure output of [`crate::plan::plan`], the input of [`crate::Provisioner::apply`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stack {
    /// The project.
    pub project: ProjectName,
    /// Its network.
    pub network: NetworkSpec,
    /// One pair per service.
    pub services: Vec<ServiceStack>,
    /// Services that failed before provisioning: whatever runs for them now is left alone.
    pub keep: Vec<ServiceName>,
    /// Services whose pods run with the desired spec but were found broken (unreachable through
    /// their sidecar), with why: replaced all the same, health-gated ([`Action::Repair`]).
    /// Filled by the deployer after probing, never by [`crate::plan::plan`].
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub repair: BTreeMap<ServiceName, String>,
    /// Set when the stack is one sandbox's copies ([`crate::sandbox`]): a provisioner then
    /// reconciles only the objects labelled with this sandbox (creating, replacing and removing
    /// copies), and never touches the baseline; unset, it never touches any sandbox's objects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<crate::sandbox::SandboxName>,
}

/// What reconciling will do (plan) or did (apply) to one service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Not running yet: created.
    Create,
    /// Running with another spec (or half present, or stopped): replaced.
    Replace,
    /// Running with this spec: left alone.
    Unchanged,
    /// Running but no longer wanted: removed.
    Remove,
    /// A replacement failed its health check: the new pair was removed, the old one kept.
    RolledBack,
    /// Running with this spec, but broken (a container missing, stopped or dead, or the pod
    /// unreachable): replaced with the same spec, health-gated.
    Repair,
}

impl Action {
    /// How reports print it.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Create => "create",
            Action::Replace => "replace",
            Action::Unchanged => "unchanged",
            Action::Remove => "remove",
            Action::RolledBack => "rolled back",
            Action::Repair => "repair",
        }
    }
}

/// What a deploy would do to one service (`iac plan`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    /// The service.
    pub service: ServiceName,
    /// What would happen.
    pub action: Action,
    /// Why, e.g. "spec hash 1a2b… → 3c4d…", "not running", "not in the repos file".
    pub reason: String,
}

/// What an apply did to one service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppliedService {
    /// The service.
    pub service: ServiceName,
    /// What happened.
    pub action: Action,
    /// Host address of the service's mTLS listener.
    pub endpoint: Option<SocketAddr>,
    /// Host address of the service's edge listener (plain HTTP to the app), if it has one.
    #[serde(default)]
    pub edge: Option<SocketAddr>,
    /// The gate's verdict when the provisioner health-checked it (replacements).
    pub health: Option<HealthReport>,
    /// Why this service failed, when it did (its peers are unaffected).
    pub error: Option<String>,
}

/// The outcome of [`crate::Provisioner::apply`] when the apply as a whole ran.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Applied {
    /// Per service of the stack.
    pub services: Vec<AppliedService>,
    /// Services removed because they are no longer in the stack.
    pub removed: Vec<ServiceName>,
}

/// A service currently running in a project, as the provisioner sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunningService {
    /// The service.
    pub service: ServiceName,
    /// Host address of its mTLS listener, when published.
    pub endpoint: Option<SocketAddr>,
    /// Host address of the service's edge listener, if it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub edge: Option<SocketAddr>,
    /// The spec hash it was created from.
    pub spec_hash: String,
    /// Its app image.
    pub image: String,
    /// Engine state of the app container, e.g. "running", "exited".
    pub state: String,
    /// The sandbox it is a copy in (its `service` is then the copy's name), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<crate::sandbox::SandboxName>,
}
