//! The Docker provisioner (the default [`Provisioner`]): reconciles a [`Stack`] against the local
//! engine through bollard, by labels (`iac.project`, `iac.service`, `iac.spec-hash`, `iac.role`).
//!
//! * Only objects iac created are ever looked at: containers and networks are selected by
//!   `iac.managed-by=iac` **and** `iac.project=<project>`. The provisioner sets `iac.managed-by`
//!   itself at create time; images only carry `iac.project`/`iac.service`, so a container someone
//!   starts by hand from an iac image is neither reconciled nor destroyed.
//! * Containers get the stack's privileges (capabilities, `no-new-privileges`) and its limits,
//!   open limits filled from [`DockerProvisionerConfig::limits`] ([`super::with_limits`]).
//! * When a service's pair installs a pod packet filter ([`iac_core::PodFilter`]), the pair only
//!   counts as started once the filter is seen in the pod (`nft list table` run in the sidecar,
//!   within [`DockerProvisionerConfig::pod_filter_deadline`]); a sidecar that cannot install
//!   it fails the pair, which is then removed — an unfiltered app is never left running.
//!
//! * The decisions are pure ([`super::reconcile`]); this file only acts on them through the small
//!   [`Engine`] trait ([`BollardEngine`] for the real engine, a mockall fake in the unit tests).
//! * Unchanged services are not touched (their endpoint is read back from the published port).
//! * New services: app container (network alias, port 15000 published on `127.0.0.1:<ephemeral>`,
//!   labels, env, stop timeout), then Envoy sharing the app's network namespace
//!   (`container:<app id>` — the id, so renaming the app later cannot break it).
//! * Changed (or half-present, or stopped) services are **replaced health-gated**:
//!   1. the new pair starts under temporary names (`<name>-next-<spec hash>`) on the project
//!      network *without* the service alias, so no peer can reach it yet;
//!   2. the `gate` prober checks it through its own published port, up to the configured deadline;
//!   3. unhealthy → the new pair is removed, the old pair was never touched
//!      ([`Action::RolledBack`] with the gate's report);
//!   4. healthy → the new app is reconnected to the network *with* the alias (Docker cannot add an
//!      alias to an existing endpoint, so: disconnect + connect), then the old pair is stopped and
//!      removed (Envoy first), then the new pair is renamed to the canonical names.
//!
//!   Because the alias is added before the old pair goes away there is no window in which the
//!   service name resolves to nothing; instead there is a short overlap (the duration of stopping
//!   the old pair) in which Docker's DNS answers with both pairs — both of which are known
//!   to be running, the new one proven healthy. The new app itself is off the network for the
//!   instant between disconnect and connect; its published port may change on reconnect, so the
//!   endpoint is read back afterwards.
//! * Whatever an apply created for a service that then failed is removed before returning (no
//!   half-created pairs), and the failure is reported on that service only.
//! * `destroy` removes every container (Envoy first) and network with the project label; a
//!   network still used by another project's containers is left in place with a warning.
//!
//! Serializing concurrent deploys of one project is the caller's job (the `Deployer` holds a
//! per-project file lock around `apply` and `destroy`).

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bollard::Docker;
use bollard::exec::{CreateExecOptions, StartExecResults};
use bollard::models::{
    ContainerCreateBody, EndpointSettings, HostConfig, Mount as DockerMount, MountType,
    NetworkConnectRequest, NetworkCreateRequest, NetworkDisconnectRequest, NetworkingConfig,
    PortBinding,
};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, InspectContainerOptionsBuilder, ListContainersOptionsBuilder,
    ListNetworksOptionsBuilder, RemoveContainerOptionsBuilder, RenameContainerOptionsBuilder,
    StopContainerOptionsBuilder,
};
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use serde::{Deserialize, Serialize};

use iac_core::plan::app_container_name;
use iac_core::stack::{LABEL_MANAGED, LABEL_PROJECT, LABEL_ROLE, LABEL_SERVICE, LABEL_SPEC_HASH};
use iac_core::{
    Action, Applied, AppliedService, Change, ContainerSpec, Events, HealthProber, MeshPorts,
    NetworkMode, NetworkSpec, PodFilter, ProbeTarget, ProjectName, ProvisionError, Provisioner,
    RunningService, ServiceName, ServiceStack, Stack, Stage,
};

use super::reconcile::{Observed, ServicePlan, reconcile};
use super::{ContainerLimits, MANAGED_BY, with_limits};

/// `[docker]` in `iac.toml`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct DockerProvisionerConfig {
    /// Engine address: `unix:///path`, a bare socket path, `tcp://host:port`, … `None`: the
    /// `DOCKER_HOST` environment variable, else the local socket `/var/run/docker.sock`.
    pub docker_host: Option<String>,
    /// How long a replacement's new pair may take to become healthy before it is rolled back
    /// (`"60s"`; iac sets it from the top-level `health_deadline`).
    #[serde(with = "iac_core::duration")]
    pub health_deadline: Duration,
    /// Time between SIGTERM and SIGKILL when stopping containers being removed (whole seconds).
    #[serde(with = "iac_core::duration")]
    pub stop_timeout: Duration,
    /// Services reconciled at the same time.
    pub parallelism: usize,
    /// Timeout of a single engine request.
    #[serde(with = "iac_core::duration")]
    pub request_timeout: Duration,
    /// How long a new sidecar may take to install the pod's packet filter before the pair is
    /// given up (and removed), e.g. `"15s"`.
    #[serde(with = "iac_core::duration")]
    pub pod_filter_deadline: Duration,
    /// cgroup limits of the containers (`[docker.limits]` in iac.toml; 0 = no limit).
    pub limits: ContainerLimits,
}

impl Default for DockerProvisionerConfig {
    fn default() -> Self {
        DockerProvisionerConfig {
            docker_host: None,
            health_deadline: Duration::from_secs(60),
            stop_timeout: Duration::from_secs(10),
            parallelism: 4,
            request_timeout: Duration::from_secs(120),
            pod_filter_deadline: Duration::from_secs(15),
            limits: ContainerLimits::default(),
        }
    }
}

impl DockerProvisionerConfig {
    /// `stop_timeout` in whole seconds, as the engine takes it.
    pub fn stop_timeout_secs(&self) -> u32 {
        u32::try_from(self.stop_timeout.as_secs()).unwrap_or(u32::MAX)
    }
}

/// One failed engine request: what was attempted and what the engine said.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{op}: {message}")]
pub struct EngineError {
    /// e.g. `create container demo-web`.
    pub op: String,
    /// HTTP status from the engine, when it answered.
    pub status: Option<u16>,
    pub message: String,
}

impl EngineError {
    pub fn new(op: impl Into<String>, status: Option<u16>, message: impl Into<String>) -> Self {
        EngineError {
            op: op.into(),
            status,
            message: message.into(),
        }
    }

    fn from_bollard(op: impl Into<String>, e: bollard::errors::Error) -> Self {
        match e {
            bollard::errors::Error::DockerResponseServerError {
                status_code,
                message,
            } => EngineError::new(op, Some(status_code), message),
            other => EngineError::new(op, None, other.to_string()),
        }
    }

    pub fn is_not_found(&self) -> bool {
        self.status == Some(404)
    }
}

impl From<EngineError> for ProvisionError {
    fn from(e: EngineError) -> Self {
        ProvisionError::Engine(e.to_string())
    }
}

/// What a command run in a container (`docker exec`) ended with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecOutput {
    /// `None` when the engine did not report one.
    pub exit_code: Option<i64>,
    /// stdout and stderr, interleaved.
    pub output: String,
}

/// A network as the engine reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkInfo {
    pub id: String,
    pub name: String,
    pub labels: BTreeMap<String, String>,
}

/// The engine operations the provisioner needs, nothing more. Implementations must treat
/// "already stopped" / "already gone" as success in `stop_container` and `remove_container`.
#[cfg_attr(test, mockall::automock)]
#[async_trait]
pub trait Engine: Send + Sync {
    /// Every container (any state) labelled `iac.managed-by=iac` and `iac.project=<project>`.
    async fn list_containers(&self, project: &ProjectName) -> Result<Vec<Observed>, EngineError>;
    /// Every network labelled `iac.managed-by=iac` and `iac.project=<project>`.
    async fn list_networks(&self, project: &ProjectName) -> Result<Vec<NetworkInfo>, EngineError>;
    /// Networks named exactly `name`, whoever owns them.
    async fn find_networks(&self, name: &str) -> Result<Vec<NetworkInfo>, EngineError>;
    /// Creates a bridge network labelled `iac.managed-by=iac`; returns its id.
    async fn create_network(&self, spec: &NetworkSpec) -> Result<String, EngineError>;
    async fn remove_network(&self, id: &str) -> Result<(), EngineError>;
    /// Creates (does not start) a container exactly as specified, labelled
    /// `iac.managed-by=iac`; returns its id.
    async fn create_container(&self, spec: &ContainerSpec) -> Result<String, EngineError>;
    async fn start_container(&self, id: &str) -> Result<(), EngineError>;
    async fn stop_container(&self, id: &str, timeout_secs: u32) -> Result<(), EngineError>;
    async fn remove_container(&self, id: &str) -> Result<(), EngineError>;
    async fn rename_container(&self, id: &str, new_name: &str) -> Result<(), EngineError>;
    async fn connect_network(
        &self,
        network: &str,
        container: &str,
        aliases: Vec<String>,
    ) -> Result<(), EngineError>;
    async fn disconnect_network(&self, network: &str, container: &str) -> Result<(), EngineError>;
    /// Runs `argv` in the running container `id` (with the container's own privileges) and waits
    /// for it. A container that is not running is an error (status 409).
    async fn exec(&self, id: &str, argv: Vec<String>) -> Result<ExecOutput, EngineError>;
    /// Host address `container_port/tcp` is published on (from inspect), if any.
    async fn published_port(
        &self,
        id: &str,
        container_port: u16,
    ) -> Result<Option<SocketAddr>, EngineError>;
}

/// [`Engine`] over bollard.
#[derive(Debug, Clone)]
pub struct BollardEngine {
    docker: Docker,
}

impl BollardEngine {
    /// Connects to `host` (see [`DockerProvisionerConfig::docker_host`]) and negotiates the API
    /// version with the engine.
    pub async fn connect(
        host: Option<&str>,
        request_timeout: Duration,
    ) -> Result<Self, ProvisionError> {
        let shown = host.unwrap_or("the default Docker host");
        let bad = |e: bollard::errors::Error| {
            ProvisionError::Engine(format!(
                "cannot connect to {shown}: {e} (expected a reachable Docker engine)"
            ))
        };
        let docker = match host {
            None => Docker::connect_with_defaults().map_err(bad)?,
            Some(h) if h.starts_with('/') => Docker::connect_with_unix(
                h,
                request_timeout.as_secs(),
                bollard::API_DEFAULT_VERSION,
            )
            .map_err(bad)?,
            Some(h) => Docker::connect_with_host(h).map_err(bad)?,
        };
        let docker = docker
            .with_timeout(request_timeout)
            .negotiate_version()
            .await
            .map_err(bad)?;
        Ok(BollardEngine { docker })
    }

    pub fn docker(&self) -> &Docker {
        &self.docker
    }
}

/// The `/containers/create` request for `spec` (pure; unit-tested).
pub fn create_body(spec: &ContainerSpec) -> ContainerCreateBody {
    let port_key = |p: u16| format!("{p}/tcp");
    let port_bindings: HashMap<String, Option<Vec<PortBinding>>> = spec
        .ports
        .iter()
        .map(|p| {
            let binding = PortBinding {
                host_ip: Some(p.host_ip.clone()),
                host_port: Some(p.host_port.map(|h| h.to_string()).unwrap_or_default()),
            };
            (port_key(p.container_port), Some(vec![binding]))
        })
        .collect();
    let mounts: Vec<DockerMount> = spec
        .mounts
        .iter()
        .map(|m| DockerMount {
            source: Some(m.source.display().to_string()),
            target: Some(m.target.display().to_string()),
            typ: Some(MountType::BIND),
            read_only: Some(m.read_only),
            ..Default::default()
        })
        .collect();
    let (network_mode, networking_config) = match &spec.network {
        NetworkMode::Network { name, aliases } => {
            let endpoint = EndpointSettings {
                aliases: if aliases.is_empty() {
                    None
                } else {
                    Some(aliases.clone())
                },
                ..Default::default()
            };
            (
                name.clone(),
                Some(NetworkingConfig {
                    endpoints_config: Some([(name.clone(), endpoint)].into()),
                }),
            )
        }
        NetworkMode::Container { name } => (format!("container:{name}"), None),
    };
    ContainerCreateBody {
        image: Some(spec.image.clone()),
        cmd: if spec.cmd.is_empty() {
            None
        } else {
            Some(spec.cmd.clone())
        },
        env: Some(spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect()),
        labels: Some(managed_labels(&spec.labels)),
        exposed_ports: if spec.ports.is_empty() {
            None
        } else {
            Some(
                spec.ports
                    .iter()
                    .map(|p| port_key(p.container_port))
                    .collect(),
            )
        },
        stop_timeout: Some(i64::from(spec.stop_timeout_secs)),
        host_config: Some(HostConfig {
            network_mode: Some(network_mode),
            port_bindings: if port_bindings.is_empty() {
                None
            } else {
                Some(port_bindings)
            },
            mounts: if mounts.is_empty() {
                None
            } else {
                Some(mounts)
            },
            cap_drop: nonempty(&spec.privileges.cap_drop),
            cap_add: nonempty(&spec.privileges.cap_add),
            security_opt: spec
                .privileges
                .no_new_privileges
                .then(|| vec!["no-new-privileges:true".to_string()]),
            pids_limit: spec.limits.pids,
            memory: spec.limits.memory_bytes,
            // No swap on top of the memory limit.
            memory_swap: spec.limits.memory_bytes,
            ..Default::default()
        }),
        networking_config,
        ..Default::default()
    }
}

fn nonempty(v: &[String]) -> Option<Vec<String>> {
    (!v.is_empty()).then(|| v.to_vec())
}

/// `labels` plus `iac.managed-by=iac`, whatever the spec says.
fn managed_labels(labels: &BTreeMap<String, String>) -> HashMap<String, String> {
    let mut out: HashMap<String, String> =
        labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    out.insert(LABEL_MANAGED.to_string(), MANAGED_BY.to_string());
    out
}

/// A published binding as a dialable address: unspecified host IPs become loopback.
fn dialable(host_ip: Option<&str>, port: u16) -> Option<SocketAddr> {
    let ip: IpAddr = match host_ip.unwrap_or("") {
        "" => IpAddr::V4(Ipv4Addr::LOCALHOST),
        s => s.parse().ok()?,
    };
    let ip = match ip {
        IpAddr::V4(v4) if v4.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(v6) if v6.is_unspecified() => IpAddr::V6(std::net::Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    (port != 0).then_some(SocketAddr::new(ip, port))
}

/// IPv4 bindings first (the engine lists `0.0.0.0` and `::` twins for unqualified publishes).
fn pick(mut addrs: Vec<SocketAddr>) -> Option<SocketAddr> {
    addrs.sort_by_key(|a| !a.is_ipv4());
    addrs.into_iter().next()
}

/// Objects iac created for `project` (the engine ANDs label filters).
fn label_filter(project: &ProjectName) -> HashMap<String, Vec<String>> {
    [(
        "label".to_string(),
        vec![
            format!("{LABEL_MANAGED}={MANAGED_BY}"),
            format!("{LABEL_PROJECT}={project}"),
        ],
    )]
    .into()
}

#[async_trait]
impl Engine for BollardEngine {
    async fn list_containers(&self, project: &ProjectName) -> Result<Vec<Observed>, EngineError> {
        let opts = ListContainersOptionsBuilder::default()
            .all(true)
            .filters(&label_filter(project))
            .build();
        let list = self.docker.list_containers(Some(opts)).await.map_err(|e| {
            EngineError::from_bollard(format!("list containers of project {project}"), e)
        })?;
        Ok(list
            .into_iter()
            .map(|c| {
                let labels = c.labels.unwrap_or_default();
                let mut published: Vec<(u16, SocketAddr)> = c
                    .ports
                    .unwrap_or_default()
                    .into_iter()
                    .filter_map(|p| {
                        Some((p.private_port, dialable(p.ip.as_deref(), p.public_port?)?))
                    })
                    .collect();
                published.sort_by_key(|(p, a)| (*p, !a.is_ipv4()));
                Observed {
                    id: c.id.unwrap_or_default(),
                    name: c
                        .names
                        .and_then(|n| n.into_iter().next())
                        .map(|n| n.trim_start_matches('/').to_string())
                        .unwrap_or_default(),
                    service: labels.get(LABEL_SERVICE).cloned(),
                    role: labels.get(LABEL_ROLE).cloned(),
                    spec_hash: labels.get(LABEL_SPEC_HASH).cloned(),
                    image: c.image.unwrap_or_default(),
                    state: c.state.map(|s| s.to_string()).unwrap_or_default(),
                    published,
                }
            })
            .collect())
    }

    async fn list_networks(&self, project: &ProjectName) -> Result<Vec<NetworkInfo>, EngineError> {
        let opts = ListNetworksOptionsBuilder::default()
            .filters(&label_filter(project))
            .build();
        let list = self.docker.list_networks(Some(opts)).await.map_err(|e| {
            EngineError::from_bollard(format!("list networks of project {project}"), e)
        })?;
        Ok(list.into_iter().map(network_info).collect())
    }

    async fn find_networks(&self, name: &str) -> Result<Vec<NetworkInfo>, EngineError> {
        let filters: HashMap<String, Vec<String>> =
            [("name".to_string(), vec![name.to_string()])].into();
        let opts = ListNetworksOptionsBuilder::default()
            .filters(&filters)
            .build();
        let list = self
            .docker
            .list_networks(Some(opts))
            .await
            .map_err(|e| EngineError::from_bollard(format!("look up network {name}"), e))?;
        // The engine's name filter matches substrings.
        Ok(list
            .into_iter()
            .map(network_info)
            .filter(|n| n.name == name)
            .collect())
    }

    async fn create_network(&self, spec: &NetworkSpec) -> Result<String, EngineError> {
        let req = NetworkCreateRequest {
            name: spec.name.clone(),
            driver: Some("bridge".into()),
            attachable: Some(true),
            labels: Some(managed_labels(&spec.labels)),
            ..Default::default()
        };
        let r =
            self.docker.create_network(req).await.map_err(|e| {
                EngineError::from_bollard(format!("create network {}", spec.name), e)
            })?;
        Ok(r.id)
    }

    async fn remove_network(&self, id: &str) -> Result<(), EngineError> {
        match self.docker.remove_network(id).await {
            Ok(()) => Ok(()),
            Err(e) => {
                let e = EngineError::from_bollard(format!("remove network {id}"), e);
                if e.is_not_found() { Ok(()) } else { Err(e) }
            }
        }
    }

    async fn create_container(&self, spec: &ContainerSpec) -> Result<String, EngineError> {
        let opts = CreateContainerOptionsBuilder::default()
            .name(&spec.name)
            .build();
        let r = self
            .docker
            .create_container(Some(opts), create_body(spec))
            .await
            .map_err(|e| {
                EngineError::from_bollard(
                    format!("create container {} (image {})", spec.name, spec.image),
                    e,
                )
            })?;
        Ok(r.id)
    }

    async fn start_container(&self, id: &str) -> Result<(), EngineError> {
        self.docker
            .start_container(id, None)
            .await
            .map_err(|e| EngineError::from_bollard(format!("start container {id}"), e))
    }

    async fn stop_container(&self, id: &str, timeout_secs: u32) -> Result<(), EngineError> {
        let t = i32::try_from(timeout_secs).unwrap_or(i32::MAX);
        let opts = StopContainerOptionsBuilder::default().t(t).build();
        match self.docker.stop_container(id, Some(opts)).await {
            Ok(()) => Ok(()),
            Err(e) => {
                let e = EngineError::from_bollard(format!("stop container {id}"), e);
                // 304: already stopped; 404: already gone.
                if matches!(e.status, Some(304) | Some(404)) {
                    Ok(())
                } else {
                    Err(e)
                }
            }
        }
    }

    async fn remove_container(&self, id: &str) -> Result<(), EngineError> {
        let opts = RemoveContainerOptionsBuilder::default().force(true).build();
        match self.docker.remove_container(id, Some(opts)).await {
            Ok(()) => Ok(()),
            Err(e) => {
                let e = EngineError::from_bollard(format!("remove container {id}"), e);
                let in_progress =
                    e.status == Some(409) && e.message.contains("already in progress");
                if e.is_not_found() || in_progress {
                    Ok(())
                } else {
                    Err(e)
                }
            }
        }
    }

    async fn rename_container(&self, id: &str, new_name: &str) -> Result<(), EngineError> {
        let opts = RenameContainerOptionsBuilder::default()
            .name(new_name)
            .build();
        self.docker.rename_container(id, opts).await.map_err(|e| {
            EngineError::from_bollard(format!("rename container {id} to {new_name}"), e)
        })
    }

    async fn connect_network(
        &self,
        network: &str,
        container: &str,
        aliases: Vec<String>,
    ) -> Result<(), EngineError> {
        let req = NetworkConnectRequest {
            container: container.to_string(),
            endpoint_config: Some(EndpointSettings {
                aliases: Some(aliases),
                ..Default::default()
            }),
        };
        self.docker
            .connect_network(network, req)
            .await
            .map_err(|e| {
                EngineError::from_bollard(
                    format!("connect container {container} to network {network}"),
                    e,
                )
            })
    }

    async fn disconnect_network(&self, network: &str, container: &str) -> Result<(), EngineError> {
        let req = NetworkDisconnectRequest {
            container: container.to_string(),
            force: Some(true),
        };
        self.docker
            .disconnect_network(network, req)
            .await
            .map_err(|e| {
                EngineError::from_bollard(
                    format!("disconnect container {container} from network {network}"),
                    e,
                )
            })
    }

    async fn exec(&self, id: &str, argv: Vec<String>) -> Result<ExecOutput, EngineError> {
        let op = || format!("exec {:?} in container {id}", argv.join(" "));
        let created = self
            .docker
            .create_exec(
                id,
                CreateExecOptions {
                    cmd: Some(argv.clone()),
                    attach_stdout: Some(true),
                    attach_stderr: Some(true),
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| EngineError::from_bollard(op(), e))?;
        let mut output = String::new();
        match self
            .docker
            .start_exec(&created.id, None)
            .await
            .map_err(|e| EngineError::from_bollard(op(), e))?
        {
            StartExecResults::Attached {
                output: mut out, ..
            } => {
                while let Some(chunk) = out.next().await {
                    let chunk = chunk.map_err(|e| EngineError::from_bollard(op(), e))?;
                    output.push_str(&String::from_utf8_lossy(&chunk.into_bytes()));
                }
            }
            StartExecResults::Detached => {}
        }
        let inspected = self
            .docker
            .inspect_exec(&created.id)
            .await
            .map_err(|e| EngineError::from_bollard(op(), e))?;
        Ok(ExecOutput {
            exit_code: inspected.exit_code,
            output,
        })
    }

    async fn published_port(
        &self,
        id: &str,
        container_port: u16,
    ) -> Result<Option<SocketAddr>, EngineError> {
        let opts = InspectContainerOptionsBuilder::default()
            .size(false)
            .build();
        let c = self
            .docker
            .inspect_container(id, Some(opts))
            .await
            .map_err(|e| EngineError::from_bollard(format!("inspect container {id}"), e))?;
        let bindings = c
            .network_settings
            .and_then(|n| n.ports)
            .and_then(|mut p| p.remove(&format!("{container_port}/tcp")))
            .flatten()
            .unwrap_or_default();
        let addrs = bindings
            .iter()
            .filter_map(|b| dialable(b.host_ip.as_deref(), b.host_port.as_deref()?.parse().ok()?))
            .collect();
        Ok(pick(addrs))
    }
}

fn network_info(n: bollard::models::Network) -> NetworkInfo {
    NetworkInfo {
        id: n.id.unwrap_or_default(),
        name: n.name.unwrap_or_default(),
        labels: n.labels.unwrap_or_default().into_iter().collect(),
    }
}

/// The temporary name of a replacement container.
pub fn next_name(canonical: &str, spec_hash: &str) -> String {
    format!("{canonical}-next-{spec_hash}")
}

/// A pair this apply started.
#[derive(Debug, Clone)]
struct StartedPair {
    app_id: String,
    envoy_id: String,
}

/// The Docker provisioner. Construct with [`DockerProvisioner::connect`] (real engine) or
/// [`DockerProvisioner::with_engine`] (any [`Engine`]).
#[derive(Clone)]
pub struct DockerProvisioner {
    engine: Arc<dyn Engine>,
    config: DockerProvisionerConfig,
}

impl std::fmt::Debug for DockerProvisioner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DockerProvisioner")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl DockerProvisioner {
    /// Connects to the engine named by `config.docker_host` and negotiates the API version.
    pub async fn connect(config: DockerProvisionerConfig) -> Result<Self, ProvisionError> {
        let timeout = config.request_timeout.max(Duration::from_secs(1));
        let engine = BollardEngine::connect(config.docker_host.as_deref(), timeout).await?;
        Ok(Self::with_engine(Arc::new(engine), config))
    }

    pub fn with_engine(engine: Arc<dyn Engine>, config: DockerProvisionerConfig) -> Self {
        DockerProvisioner { engine, config }
    }

    pub fn config(&self) -> &DockerProvisionerConfig {
        &self.config
    }

    /// `stack` with the configured limits filled in (and its hashes updated accordingly).
    fn effective(&self, stack: &Stack) -> Result<Stack, ProvisionError> {
        self.config
            .limits
            .validate("docker")
            .map_err(ProvisionError::Invalid)?;
        Ok(with_limits(stack, &self.config.limits))
    }

    /// Makes sure a network named like the stack's exists; returns its id. A network of that
    /// name created by someone else (another project sharing it) is used as it is. If a
    /// concurrent creator raced us into a duplicate name, the lowest id wins and ours goes.
    async fn ensure_network(
        &self,
        spec: &NetworkSpec,
        events: &Events,
    ) -> Result<String, EngineError> {
        let mut found = self.engine.find_networks(&spec.name).await?;
        let mut created = None;
        if found.is_empty() {
            let id = self.engine.create_network(spec).await?;
            events.info(Stage::Provision, format!("created network {}", spec.name));
            created = Some(id.clone());
            found = self.engine.find_networks(&spec.name).await?;
            if found.is_empty() {
                found.push(NetworkInfo {
                    id,
                    name: spec.name.clone(),
                    labels: spec.labels.clone(),
                });
            }
        }
        found.sort_by(|a, b| a.id.cmp(&b.id));
        let winner = found[0].id.clone();
        if let Some(ours) = created
            && ours != winner
        {
            events.debug(
                Stage::Provision,
                format!(
                    "network {} was created concurrently; using {winner}",
                    spec.name
                ),
            );
            self.engine.remove_network(&ours).await?;
        }
        Ok(winner)
    }

    /// Stops (with the configured timeout) and removes containers in the given order. Returns
    /// the failures (it always tries every container).
    async fn remove_all(
        &self,
        containers: &[(String, String)],
        events: &Events,
    ) -> Vec<EngineError> {
        let mut errors = Vec::new();
        for (id, name) in containers {
            let r = async {
                self.engine
                    .stop_container(id, self.config.stop_timeout_secs())
                    .await?;
                self.engine.remove_container(id).await
            }
            .await;
            match r {
                Ok(()) => events.debug(Stage::Provision, format!("removed container {name}")),
                Err(e) => {
                    events.warn(
                        Stage::Provision,
                        format!("could not remove container {name}: {e}"),
                    );
                    errors.push(e);
                }
            }
        }
        errors
    }

    /// Removes what a failed step created (newest first: Envoy before the app it lives in).
    async fn clean_up(&self, created: &[(String, String)], events: &Events) -> String {
        let reversed: Vec<(String, String)> = created.iter().rev().cloned().collect();
        let errors = self.remove_all(&reversed, events).await;
        if errors.is_empty() {
            String::new()
        } else {
            let list: Vec<String> = errors.iter().map(ToString::to_string).collect();
            format!("; cleaning up also failed: {}", list.join("; "))
        }
    }

    /// Creates and starts a pair for `want`. `temporary`: under `-next-` names and without the
    /// network alias. Every container created is pushed to `created` (id, name) before anything
    /// else can fail.
    async fn start_pair(
        &self,
        want: &ServiceStack,
        temporary: bool,
        created: &mut Vec<(String, String)>,
        events: &Events,
    ) -> Result<StartedPair, EngineError> {
        let mut app = want.app.clone();
        let mut envoy = want.envoy.clone();
        if temporary {
            app.name = next_name(&app.name, &want.spec_hash);
            envoy.name = next_name(&envoy.name, &want.spec_hash);
            if let NetworkMode::Network { aliases, .. } = &mut app.network {
                aliases.clear();
            }
        }
        let app_id = self.engine.create_container(&app).await?;
        created.push((app_id.clone(), app.name.clone()));
        self.engine.start_container(&app_id).await?;
        let app_started = tokio::time::Instant::now();
        events.debug(
            Stage::Provision,
            format!("started {} ({})", app.name, short_id(&app_id)),
        );
        if let NetworkMode::Container { .. } = envoy.network {
            envoy.network = NetworkMode::Container {
                name: app_id.clone(),
            };
        }
        let envoy_id = self.engine.create_container(&envoy).await?;
        created.push((envoy_id.clone(), envoy.name.clone()));
        self.engine.start_container(&envoy_id).await?;
        events.debug(
            Stage::Provision,
            format!("started {} ({})", envoy.name, short_id(&envoy_id)),
        );
        if let Some(filter) = &want.pod_filter {
            self.confirm_pod_filter(&envoy_id, &envoy.name, filter, app_started, events)
                .await?;
        }
        Ok(StartedPair { app_id, envoy_id })
    }

    /// Waits until the pod's packet filter is in place, asking `nft` inside the sidecar (which
    /// holds NET_ADMIN; the app container could not even read the ruleset). Fails when the
    /// sidecar stops first (it could not install the filter: `docker logs` says why) or when the
    /// deadline passes.
    async fn confirm_pod_filter(
        &self,
        envoy_id: &str,
        envoy_name: &str,
        filter: &PodFilter,
        app_started: tokio::time::Instant,
        events: &Events,
    ) -> Result<(), EngineError> {
        let started = tokio::time::Instant::now();
        let deadline = self.config.pod_filter_deadline.max(Duration::from_secs(1));
        let argv: Vec<String> = ["nft", "list", "table", "inet", filter.table.as_str()]
            .map(String::from)
            .to_vec();
        let op = format!("checking the pod packet filter in {envoy_name}");
        let mut last: String;
        loop {
            match self.engine.exec(envoy_id, argv.clone()).await {
                Ok(out) if out.exit_code == Some(0) => {
                    let port = format!("tcp dport {} accept", filter.inbound_port);
                    if !out.output.contains(&port) {
                        return Err(EngineError::new(
                            op,
                            None,
                            format!(
                                "table inet {} does not admit {port}: {}",
                                filter.table,
                                out.output.trim()
                            ),
                        ));
                    }
                    // The second figure is the window in which the app ran unfiltered.
                    events.debug(
                        Stage::Provision,
                        format!(
                            "pod filter inet {} in place ({} ms after the sidecar started, {} ms after the app started)",
                            filter.table,
                            started.elapsed().as_millis(),
                            app_started.elapsed().as_millis()
                        ),
                    );
                    return Ok(());
                }
                Ok(out) => last = format!("exit {:?}: {}", out.exit_code, out.output.trim()),
                Err(e) if e.status == Some(409) || e.is_not_found() => {
                    return Err(EngineError::new(
                        op,
                        e.status,
                        format!(
                            "the sidecar stopped before installing the pod's packet filter \
                             (`docker logs {envoy_name}` says why): {}",
                            e.message
                        ),
                    ));
                }
                Err(e) => last = e.to_string(),
            }
            if started.elapsed() >= deadline {
                return Err(EngineError::new(
                    op,
                    None,
                    format!(
                        "table inet {} not in place after {}s (last answer: {last})",
                        filter.table,
                        deadline.as_secs()
                    ),
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn endpoint(
        &self,
        app_id: &str,
        want: &ServiceStack,
    ) -> Result<Option<SocketAddr>, EngineError> {
        match want.app.ports.first() {
            Some(p) => self.engine.published_port(app_id, p.container_port).await,
            None => Ok(None),
        }
    }

    async fn apply_service(
        &self,
        plan: &ServicePlan,
        gate: Arc<dyn HealthProber>,
        events: &Events,
    ) -> AppliedService {
        let events = events.for_service(&plan.service);
        let mut out = AppliedService {
            service: plan.service.clone(),
            action: plan.action,
            endpoint: None,
            health: None,
            error: None,
        };
        let Some(want) = &plan.desired else {
            out.error = Some("internal: a service without a desired pair reached apply".into());
            return out;
        };
        if !plan.strays.is_empty() {
            let strays: Vec<(String, String)> = plan
                .strays
                .iter()
                .map(|c| (c.id.clone(), c.name.clone()))
                .collect();
            events.info(
                Stage::Provision,
                format!("removing {} leftover container(s)", strays.len()),
            );
            let errors = self.remove_all(&strays, &events).await;
            if let Some(e) = errors.first() {
                out.error = Some(format!("removing leftover containers: {e}"));
                return out;
            }
        }
        match plan.action {
            Action::Unchanged => {
                events.info(Stage::Provision, format!("unchanged ({})", plan.reason));
                let app = plan
                    .current
                    .app
                    .as_ref()
                    .map(|c| c.id.as_str())
                    .unwrap_or_default();
                match self.endpoint(app, want).await {
                    Ok(ep) => out.endpoint = ep,
                    Err(e) => out.error = Some(e.to_string()),
                }
            }
            Action::Create => {
                events.info(Stage::Provision, format!("creating ({})", plan.reason));
                let mut created = Vec::new();
                let r = async {
                    let pair = self.start_pair(want, false, &mut created, &events).await?;
                    self.endpoint(&pair.app_id, want).await
                }
                .await;
                match r {
                    Ok(ep) => {
                        out.endpoint = ep;
                        events.info(
                            Stage::Provision,
                            format!("created, mTLS endpoint {}", show(ep)),
                        );
                    }
                    Err(e) => {
                        let cleanup = self.clean_up(&created, &events).await;
                        out.error = Some(format!("{e}; removed what was created{cleanup}"));
                    }
                }
            }
            Action::Replace => self.replace(plan, want, gate, &events, &mut out).await,
            Action::Remove | Action::RolledBack => {
                out.error = Some(format!(
                    "internal: unexpected action {} for a desired service",
                    plan.action.as_str()
                ));
            }
        }
        if let Some(e) = &out.error {
            events.error(Stage::Provision, e.clone());
        }
        out
    }

    async fn replace(
        &self,
        plan: &ServicePlan,
        want: &ServiceStack,
        gate: Arc<dyn HealthProber>,
        events: &Events,
        out: &mut AppliedService,
    ) {
        events.info(
            Stage::Provision,
            format!(
                "replacing ({}), starting the new pair beside the old",
                plan.reason
            ),
        );
        let old_endpoint = match &plan.current.app {
            Some(app) => self.endpoint(&app.id, want).await.ok().flatten(),
            None => None,
        };
        let mut created = Vec::new();
        let started = async {
            let pair = self.start_pair(want, true, &mut created, events).await?;
            let ep = self.endpoint(&pair.app_id, want).await?;
            Ok::<_, EngineError>((pair, ep))
        }
        .await;
        let (pair, addr) = match started {
            Ok((pair, Some(addr))) => (pair, addr),
            Ok((_, None)) => {
                let cleanup = self.clean_up(&created, events).await;
                out.error = Some(format!(
                    "cannot health-gate the new pair of {}: its app container publishes no port; \
                     new pair removed{cleanup}, old pair kept",
                    plan.service
                ));
                out.endpoint = old_endpoint;
                return;
            }
            Err(e) => {
                let cleanup = self.clean_up(&created, events).await;
                out.error = Some(format!(
                    "starting the new pair: {e}; new pair removed{cleanup}, old pair kept"
                ));
                out.endpoint = old_endpoint;
                return;
            }
        };
        let deadline = self.config.health_deadline;
        events.info(
            Stage::Provision,
            format!(
                "health-gating the new pair at {addr} (deadline {}s)",
                deadline.as_secs()
            ),
        );
        let health = gate
            .check(&ProbeTarget {
                service: plan.service.clone(),
                addr,
                deadline,
            })
            .await;
        if !health.is_serving() {
            events.warn(
                Stage::Provision,
                format!(
                    "new pair is {} ({}): rolling back, old pair kept",
                    health.state.as_str(),
                    health.detail
                ),
            );
            let cleanup = self.clean_up(&created, events).await;
            out.action = Action::RolledBack;
            out.endpoint = old_endpoint;
            out.health = Some(health);
            if !cleanup.is_empty() {
                out.error = Some(format!("rolled back{cleanup}"));
            }
            return;
        }
        out.health = Some(health);
        let mut old_removed = false;
        let swapped = async {
            if let NetworkMode::Network { name, aliases } = &want.app.network
                && !aliases.is_empty()
            {
                self.engine.disconnect_network(name, &pair.app_id).await?;
                self.engine
                    .connect_network(name, &pair.app_id, aliases.clone())
                    .await?;
            }
            let old: Vec<(String, String)> = plan
                .current
                .containers()
                .iter()
                .map(|c| (c.id.clone(), c.name.clone()))
                .collect();
            if let Some(e) = self.remove_all(&old, events).await.into_iter().next() {
                return Err(e);
            }
            old_removed = true;
            self.engine
                .rename_container(&pair.app_id, &want.app.name)
                .await?;
            self.engine
                .rename_container(&pair.envoy_id, &want.envoy.name)
                .await?;
            self.endpoint(&pair.app_id, want).await
        }
        .await;
        match swapped {
            Ok(ep) => {
                out.endpoint = ep;
                events.info(
                    Stage::Provision,
                    format!("replaced, mTLS endpoint {}", show(ep)),
                );
            }
            Err(e) => {
                let cleanup = self.clean_up(&created, events).await;
                let old = if old_removed {
                    "the old pair had already been removed: the service is not running"
                } else {
                    "the old pair is kept"
                };
                out.error = Some(format!(
                    "swapping in the new pair: {e}; new pair removed{cleanup}; {old}"
                ));
                out.endpoint = if old_removed { None } else { old_endpoint };
            }
        }
    }

    async fn remove_service(&self, plan: &ServicePlan, events: &Events) -> AppliedService {
        let events = events.for_service(&plan.service);
        events.info(Stage::Provision, format!("removing ({})", plan.reason));
        // Envoy-role containers first: they live in their app's network namespace.
        let mut all: Vec<&Observed> = plan
            .strays
            .iter()
            .chain(plan.current.containers())
            .collect();
        all.sort_by_key(|c| c.role.as_deref() != Some("envoy"));
        let ordered: Vec<(String, String)> =
            all.iter().map(|c| (c.id.clone(), c.name.clone())).collect();
        let errors = self.remove_all(&ordered, &events).await;
        AppliedService {
            service: plan.service.clone(),
            action: Action::Remove,
            endpoint: None,
            health: None,
            error: errors.first().map(|e| format!("removing: {e}")),
        }
    }

    async fn observe(&self, project: &ProjectName) -> Result<Vec<Observed>, ProvisionError> {
        Ok(self.engine.list_containers(project).await?)
    }
}

fn short_id(id: &str) -> &str {
    &id[..id.len().min(12)]
}

fn show(ep: Option<SocketAddr>) -> String {
    ep.map_or_else(|| "(none published)".to_string(), |e| e.to_string())
}

#[async_trait]
impl Provisioner for DockerProvisioner {
    fn name(&self) -> &'static str {
        "docker"
    }

    async fn diff(&self, stack: &Stack) -> Result<Vec<Change>, ProvisionError> {
        let stack = &self.effective(stack)?;
        let observed = self.observe(&stack.project).await?;
        Ok(reconcile(stack, &observed)
            .iter()
            .map(ServicePlan::change)
            .collect())
    }

    async fn apply(
        &self,
        stack: &Stack,
        gate: Arc<dyn HealthProber>,
        events: &Events,
    ) -> Result<Applied, ProvisionError> {
        let stack = &self.effective(stack)?;
        let network = self.ensure_network(&stack.network, events).await?;
        events.debug(
            Stage::Provision,
            format!("network {} ({})", stack.network.name, short_id(&network)),
        );
        let observed = self.observe(&stack.project).await?;
        let plans = reconcile(stack, &observed);
        let n = self.config.parallelism.max(1);
        // Boxed so the stream's item type does not borrow from the closure (async_trait's
        // `Send` check cannot prove that for a `map` closure over borrowed plans).
        let desired: Vec<BoxFuture<'_, AppliedService>> = plans
            .iter()
            .filter(|p| p.desired.is_some())
            .map(|p| self.apply_service(p, gate.clone(), events).boxed())
            .collect();
        let mut services: Vec<AppliedService> =
            futures::stream::iter(desired).buffered(n).collect().await;
        for p in plans.iter().filter(|p| p.kept) {
            events
                .for_service(&p.service)
                .info(Stage::Provision, format!("left as it is ({})", p.reason));
            services.push(AppliedService {
                service: p.service.clone(),
                action: Action::Unchanged,
                endpoint: p
                    .current
                    .app
                    .as_ref()
                    .and_then(|a| a.published_addr(MeshPorts::default().inbound)),
                health: None,
                error: None,
            });
        }
        let removals: Vec<BoxFuture<'_, AppliedService>> = plans
            .iter()
            .filter(|p| p.desired.is_none() && !p.kept)
            .map(|p| self.remove_service(p, events).boxed())
            .collect();
        let removed: Vec<AppliedService> =
            futures::stream::iter(removals).buffered(n).collect().await;
        let mut applied = Applied::default();
        for r in removed {
            if r.error.is_none() {
                applied.removed.push(r.service.clone());
            }
            services.push(r);
        }
        applied.services = services;
        Ok(applied)
    }

    async fn destroy(
        &self,
        project: &ProjectName,
        events: &Events,
    ) -> Result<Vec<String>, ProvisionError> {
        let mut containers = self.engine.list_containers(project).await?;
        containers.sort_by_key(|c| (c.role.as_deref() != Some("envoy"), c.name.clone()));
        let mut removed = Vec::new();
        let mut errors = Vec::new();
        for c in &containers {
            let r = async {
                self.engine
                    .stop_container(&c.id, self.config.stop_timeout_secs())
                    .await?;
                self.engine.remove_container(&c.id).await
            }
            .await;
            match r {
                Ok(()) => {
                    events.info(Stage::Destroy, format!("removed container {}", c.name));
                    removed.push(format!("container {}", c.name));
                }
                Err(e) => errors.push(e.to_string()),
            }
        }
        for n in self.engine.list_networks(project).await? {
            match self.engine.remove_network(&n.id).await {
                Ok(()) => {
                    events.info(Stage::Destroy, format!("removed network {}", n.name));
                    removed.push(format!("network {}", n.name));
                }
                // In use by containers of other projects sharing the network.
                Err(e)
                    if matches!(e.status, Some(403) | Some(409))
                        || e.message.contains("active endpoints") =>
                {
                    events.warn(
                        Stage::Destroy,
                        format!(
                            "network {} is still in use, left in place: {}",
                            n.name, e.message
                        ),
                    );
                }
                Err(e) => errors.push(e.to_string()),
            }
        }
        if errors.is_empty() {
            Ok(removed)
        } else {
            Err(ProvisionError::Engine(format!(
                "destroying project {project} removed {} object(s) but failed on: {}",
                removed.len(),
                errors.join("; ")
            )))
        }
    }

    async fn running(&self, project: &ProjectName) -> Result<Vec<RunningService>, ProvisionError> {
        let inbound = MeshPorts::default().inbound;
        let mut out: Vec<RunningService> = self
            .observe(project)
            .await?
            .into_iter()
            .filter(|c| c.role.as_deref() == Some("app"))
            .filter_map(|c| {
                let service = ServiceName::new(c.service.as_deref()?).ok()?;
                (c.name == app_container_name(project, &service)).then(|| RunningService {
                    endpoint: c.published_addr(inbound),
                    spec_hash: c.spec_hash.clone().unwrap_or_default(),
                    image: c.image.clone(),
                    state: c.state.clone(),
                    service,
                })
            })
            .collect();
        out.sort_by(|a, b| a.service.cmp(&b.service));
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use iac_core::{HealthReport, HealthState, MockHealthProber, Mount, PortPublish};
    use mockall::Sequence;

    const NET: &str = "iacnet-t";

    fn project() -> ProjectName {
        ProjectName::new("demo").unwrap()
    }

    fn svc(n: &str) -> ServiceName {
        ServiceName::new(n).unwrap()
    }

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    fn labels(n: &str, role: &str, hash: &str) -> BTreeMap<String, String> {
        [
            (LABEL_PROJECT.to_string(), "demo".to_string()),
            (LABEL_SERVICE.to_string(), n.to_string()),
            (LABEL_ROLE.to_string(), role.to_string()),
            (LABEL_SPEC_HASH.to_string(), hash.to_string()),
        ]
        .into()
    }

    fn desired(n: &str, hash: &str) -> ServiceStack {
        ServiceStack {
            service: svc(n),
            app: ContainerSpec {
                name: format!("demo-{n}"),
                image: format!("iac/demo-{n}:{hash}"),
                cmd: vec![],
                env: [("PORT".to_string(), "8080".to_string())].into(),
                labels: labels(n, "app", hash),
                network: NetworkMode::Network {
                    name: NET.into(),
                    aliases: vec![n.to_string()],
                },
                mounts: vec![],
                ports: vec![PortPublish {
                    container_port: 15000,
                    host_ip: "127.0.0.1".into(),
                    host_port: None,
                }],
                stop_timeout_secs: 10,
                privileges: Default::default(),
                limits: Default::default(),
            },
            envoy: ContainerSpec {
                name: format!("demo-{n}-envoy"),
                image: "iac/envoy:1.40.0".into(),
                cmd: vec!["envoy".into(), "-c".into(), "/etc/envoy/envoy.yaml".into()],
                env: BTreeMap::new(),
                labels: labels(n, "envoy", hash),
                network: NetworkMode::Container {
                    name: format!("demo-{n}"),
                },
                mounts: vec![Mount {
                    source: "/state/envoy.yaml".into(),
                    target: "/etc/envoy/envoy.yaml".into(),
                    read_only: true,
                }],
                ports: vec![],
                stop_timeout_secs: 5,
                privileges: Default::default(),
                limits: Default::default(),
            },
            spec_hash: hash.into(),
            replicas: 1,
            pod_filter: None,
        }
    }

    fn stack(services: Vec<ServiceStack>, keep: &[&str]) -> Stack {
        Stack {
            project: project(),
            network: NetworkSpec {
                name: NET.into(),
                labels: [(LABEL_PROJECT.to_string(), "demo".to_string())].into(),
            },
            services,
            keep: keep.iter().map(|k| svc(k)).collect(),
        }
    }

    fn observed(name: &str, n: &str, role: &str, hash: &str, port: Option<u16>) -> Observed {
        Observed {
            id: format!("id-{name}"),
            name: name.into(),
            service: Some(n.into()),
            role: Some(role.into()),
            spec_hash: Some(hash.into()),
            image: "img".into(),
            state: "running".into(),
            published: port.map(|p| vec![(15000, addr(p))]).unwrap_or_default(),
        }
    }

    fn running_pair(n: &str, hash: &str, port: u16) -> Vec<Observed> {
        vec![
            observed(&format!("demo-{n}"), n, "app", hash, Some(port)),
            observed(&format!("demo-{n}-envoy"), n, "envoy", hash, None),
        ]
    }

    fn net_info(id: &str) -> NetworkInfo {
        NetworkInfo {
            id: id.into(),
            name: NET.into(),
            labels: BTreeMap::new(),
        }
    }

    fn config() -> DockerProvisionerConfig {
        DockerProvisionerConfig {
            stop_timeout: Duration::from_secs(3),
            parallelism: 1,
            health_deadline: Duration::from_secs(7),
            // The decisions under test, not the limits (which would rehash every spec).
            limits: ContainerLimits::unlimited(),
            ..Default::default()
        }
    }

    fn network_exists(e: &mut MockEngine) {
        e.expect_find_networks()
            .withf(|n| n == NET)
            .returning(|_| Ok(vec![net_info("net1")]));
    }

    fn lists(e: &mut MockEngine, containers: Vec<Observed>) {
        e.expect_list_containers()
            .withf(|p| p.as_str() == "demo")
            .returning(move |_| Ok(containers.clone()));
    }

    fn stop_remove(e: &mut MockEngine, seq: &mut Sequence, id: &str) {
        let a = id.to_string();
        let b = id.to_string();
        e.expect_stop_container()
            .withf(move |i, t| i == a && *t == 3)
            .times(1)
            .in_sequence(seq)
            .returning(|_, _| Ok(()));
        e.expect_remove_container()
            .withf(move |i| i == b)
            .times(1)
            .in_sequence(seq)
            .returning(|_| Ok(()));
    }

    fn report(n: &str, state: HealthState) -> HealthReport {
        HealthReport {
            service: svc(n),
            state,
            exit_code: None,
            detail: format!("{} said so", state.as_str()),
            attempts: 2,
        }
    }

    fn gate_never() -> Arc<dyn HealthProber> {
        let mut g = MockHealthProber::new();
        g.expect_check().never();
        Arc::new(g)
    }

    fn gate_says(n: &'static str, at: SocketAddr, state: HealthState) -> Arc<dyn HealthProber> {
        let mut g = MockHealthProber::new();
        g.expect_check()
            .withf(move |t| {
                t.addr == at && t.service.as_str() == n && t.deadline == Duration::from_secs(7)
            })
            .times(1)
            .returning(move |_| report(n, state));
        Arc::new(g)
    }

    fn provisioner(e: MockEngine) -> DockerProvisioner {
        DockerProvisioner::with_engine(Arc::new(e), config())
    }

    /// Expects create+start of the canonical pair for `n`, returning ids `new-<n>` / `new-<n>-envoy`.
    fn creates_pair(
        e: &mut MockEngine,
        seq: &mut Sequence,
        n: &'static str,
        temp_hash: Option<&'static str>,
    ) {
        let suffix = temp_hash.map(|h| format!("-next-{h}")).unwrap_or_default();
        let app_name = format!("demo-{n}{suffix}");
        let envoy_name = format!("demo-{n}-envoy{suffix}");
        let temp = temp_hash.is_some();
        e.expect_create_container()
            .withf(move |s| {
                s.name == app_name
                    && match &s.network {
                        NetworkMode::Network { name, aliases } => {
                            name == NET
                                && if temp {
                                    aliases.is_empty()
                                } else {
                                    aliases == &[n.to_string()]
                                }
                        }
                        _ => false,
                    }
            })
            .times(1)
            .in_sequence(seq)
            .returning(move |_| Ok(format!("new-{n}")));
        e.expect_start_container()
            .withf(move |i| i == format!("new-{n}"))
            .times(1)
            .in_sequence(seq)
            .returning(|_| Ok(()));
        e.expect_create_container()
            .withf(move |s| {
                s.name == envoy_name
                    && s.network
                        == NetworkMode::Container {
                            name: format!("new-{n}"),
                        }
            })
            .times(1)
            .in_sequence(seq)
            .returning(move |_| Ok(format!("new-{n}-envoy")));
        e.expect_start_container()
            .withf(move |i| i == format!("new-{n}-envoy"))
            .times(1)
            .in_sequence(seq)
            .returning(|_| Ok(()));
    }

    fn port_of(e: &mut MockEngine, seq: &mut Sequence, id: &'static str, port: u16) {
        e.expect_published_port()
            .withf(move |i, p| i == id && *p == 15000)
            .times(1)
            .in_sequence(seq)
            .returning(move |_, _| Ok(Some(addr(port))));
    }

    #[tokio::test]
    async fn create_starts_app_then_envoy_and_creates_the_missing_network() {
        let mut e = MockEngine::new();
        let mut seq = Sequence::new();
        e.expect_find_networks()
            .times(1)
            .in_sequence(&mut seq)
            .returning(|_| Ok(vec![]));
        e.expect_create_network()
            .withf(|n| {
                n.name == NET && n.labels.get(LABEL_PROJECT).map(String::as_str) == Some("demo")
            })
            .times(1)
            .in_sequence(&mut seq)
            .returning(|_| Ok("net1".into()));
        e.expect_find_networks()
            .times(1)
            .in_sequence(&mut seq)
            .returning(|_| Ok(vec![net_info("net1")]));
        e.expect_list_containers()
            .times(1)
            .in_sequence(&mut seq)
            .returning(|_| Ok(vec![]));
        creates_pair(&mut e, &mut seq, "web", None);
        port_of(&mut e, &mut seq, "new-web", 32001);
        let (events, mut rx) = Events::channel();
        let applied = provisioner(e)
            .apply(
                &stack(vec![desired("web", "h1")], &[]),
                gate_never(),
                &events,
            )
            .await
            .unwrap();
        assert_eq!(
            applied.services,
            vec![AppliedService {
                service: svc("web"),
                action: Action::Create,
                endpoint: Some(addr(32001)),
                health: None,
                error: None
            }]
        );
        assert!(applied.removed.is_empty());
        drop(events);
        let mut msgs = Vec::new();
        while let Some(ev) = rx.recv().await {
            msgs.push(ev.message);
        }
        assert!(
            msgs.iter().any(|m| m.contains("created network iacnet-t")),
            "{msgs:?}"
        );
        assert!(
            msgs.iter().any(|m| m.contains("127.0.0.1:32001")),
            "{msgs:?}"
        );
    }

    #[tokio::test]
    async fn unchanged_service_is_not_touched_and_reports_its_endpoint() {
        let mut e = MockEngine::new();
        network_exists(&mut e);
        lists(&mut e, running_pair("web", "h1", 32002));
        let mut seq = Sequence::new();
        port_of(&mut e, &mut seq, "id-demo-web", 32002);
        // No create/start/stop/remove expectations: any such call panics.
        let applied = provisioner(e)
            .apply(
                &stack(vec![desired("web", "h1")], &[]),
                gate_never(),
                &Events::discard(),
            )
            .await
            .unwrap();
        assert_eq!(applied.services[0].action, Action::Unchanged);
        assert_eq!(applied.services[0].endpoint, Some(addr(32002)));
        assert_eq!(applied.services[0].error, None);
    }

    #[tokio::test]
    async fn healthy_replacement_swaps_alias_then_removes_old_then_renames() {
        let mut e = MockEngine::new();
        network_exists(&mut e);
        lists(&mut e, running_pair("web", "h1", 32003));
        let mut seq = Sequence::new();
        port_of(&mut e, &mut seq, "id-demo-web", 32003);
        creates_pair(&mut e, &mut seq, "web", Some("h2"));
        port_of(&mut e, &mut seq, "new-web", 32010);
        e.expect_disconnect_network()
            .withf(|n, c| n == NET && c == "new-web")
            .times(1)
            .in_sequence(&mut seq)
            .returning(|_, _| Ok(()));
        e.expect_connect_network()
            .withf(|n, c, a| n == NET && c == "new-web" && a == &["web".to_string()])
            .times(1)
            .in_sequence(&mut seq)
            .returning(|_, _, _| Ok(()));
        stop_remove(&mut e, &mut seq, "id-demo-web-envoy");
        stop_remove(&mut e, &mut seq, "id-demo-web");
        e.expect_rename_container()
            .withf(|i, n| i == "new-web" && n == "demo-web")
            .times(1)
            .in_sequence(&mut seq)
            .returning(|_, _| Ok(()));
        e.expect_rename_container()
            .withf(|i, n| i == "new-web-envoy" && n == "demo-web-envoy")
            .times(1)
            .in_sequence(&mut seq)
            .returning(|_, _| Ok(()));
        port_of(&mut e, &mut seq, "new-web", 32011);
        let gate = gate_says("web", addr(32010), HealthState::Serving);
        let applied = provisioner(e)
            .apply(
                &stack(vec![desired("web", "h2")], &[]),
                gate,
                &Events::discard(),
            )
            .await
            .unwrap();
        let a = &applied.services[0];
        assert_eq!(a.action, Action::Replace);
        assert_eq!(
            a.endpoint,
            Some(addr(32011)),
            "the endpoint is read back after the swap"
        );
        assert_eq!(
            a.health.as_ref().map(|h| h.state),
            Some(HealthState::Serving)
        );
        assert_eq!(a.error, None);
    }

    #[tokio::test]
    async fn unhealthy_replacement_rolls_back_and_keeps_the_old_pair() {
        let mut e = MockEngine::new();
        network_exists(&mut e);
        lists(&mut e, running_pair("web", "h1", 32004));
        let mut seq = Sequence::new();
        port_of(&mut e, &mut seq, "id-demo-web", 32004);
        creates_pair(&mut e, &mut seq, "web", Some("h2"));
        port_of(&mut e, &mut seq, "new-web", 32020);
        // Only the new pair goes, Envoy first; the old pair (id-demo-web*) is never stopped.
        stop_remove(&mut e, &mut seq, "new-web-envoy");
        stop_remove(&mut e, &mut seq, "new-web");
        e.expect_disconnect_network().never();
        e.expect_rename_container().never();
        let gate = gate_says("web", addr(32020), HealthState::NotServing);
        let applied = provisioner(e)
            .apply(
                &stack(vec![desired("web", "h2")], &[]),
                gate,
                &Events::discard(),
            )
            .await
            .unwrap();
        let a = &applied.services[0];
        assert_eq!(a.action, Action::RolledBack);
        assert_eq!(
            a.endpoint,
            Some(addr(32004)),
            "still the old pair's endpoint"
        );
        assert_eq!(a.health, Some(report("web", HealthState::NotServing)));
        assert_eq!(a.error, None);
    }

    #[tokio::test]
    async fn replacement_of_a_half_pair_removes_only_what_exists() {
        let mut e = MockEngine::new();
        network_exists(&mut e);
        // Only the app runs (its Envoy vanished) → replace.
        lists(
            &mut e,
            vec![observed("demo-web", "web", "app", "h1", Some(32005))],
        );
        let mut seq = Sequence::new();
        port_of(&mut e, &mut seq, "id-demo-web", 32005);
        creates_pair(&mut e, &mut seq, "web", Some("h1"));
        port_of(&mut e, &mut seq, "new-web", 32030);
        e.expect_disconnect_network()
            .times(1)
            .in_sequence(&mut seq)
            .returning(|_, _| Ok(()));
        e.expect_connect_network()
            .times(1)
            .in_sequence(&mut seq)
            .returning(|_, _, _| Ok(()));
        stop_remove(&mut e, &mut seq, "id-demo-web");
        e.expect_rename_container()
            .times(2)
            .in_sequence(&mut seq)
            .returning(|_, _| Ok(()));
        port_of(&mut e, &mut seq, "new-web", 32031);
        let gate = gate_says("web", addr(32030), HealthState::Serving);
        let applied = provisioner(e)
            .apply(
                &stack(vec![desired("web", "h1")], &[]),
                gate,
                &Events::discard(),
            )
            .await
            .unwrap();
        assert_eq!(applied.services[0].action, Action::Replace);
        assert_eq!(applied.services[0].endpoint, Some(addr(32031)));
    }

    #[tokio::test]
    async fn failed_swap_removes_the_new_pair_and_keeps_the_old() {
        let mut e = MockEngine::new();
        network_exists(&mut e);
        lists(&mut e, running_pair("web", "h1", 32006));
        let mut seq = Sequence::new();
        port_of(&mut e, &mut seq, "id-demo-web", 32006);
        creates_pair(&mut e, &mut seq, "web", Some("h2"));
        port_of(&mut e, &mut seq, "new-web", 32040);
        e.expect_disconnect_network()
            .times(1)
            .in_sequence(&mut seq)
            .returning(|_, _| Ok(()));
        e.expect_connect_network()
            .times(1)
            .in_sequence(&mut seq)
            .returning(|n, c, _| {
                Err(EngineError::new(
                    format!("connect container {c} to network {n}"),
                    Some(500),
                    "boom",
                ))
            });
        stop_remove(&mut e, &mut seq, "new-web-envoy");
        stop_remove(&mut e, &mut seq, "new-web");
        let gate = gate_says("web", addr(32040), HealthState::Serving);
        let applied = provisioner(e)
            .apply(
                &stack(vec![desired("web", "h2")], &[]),
                gate,
                &Events::discard(),
            )
            .await
            .unwrap();
        let a = &applied.services[0];
        assert_eq!(a.action, Action::Replace);
        let err = a.error.as_deref().unwrap();
        assert!(
            err.contains("connect container new-web to network iacnet-t: boom"),
            "{err}"
        );
        assert!(err.contains("old pair is kept"), "{err}");
        assert_eq!(a.endpoint, Some(addr(32006)));
    }

    #[tokio::test]
    async fn failed_create_removes_the_half_created_pair_and_peers_continue() {
        let mut e = MockEngine::new();
        network_exists(&mut e);
        lists(&mut e, vec![]);
        let mut seq = Sequence::new();
        // api: app created and started, Envoy creation fails → the app is removed again.
        e.expect_create_container()
            .withf(|s| s.name == "demo-api")
            .times(1)
            .in_sequence(&mut seq)
            .returning(|_| Ok("new-api".into()));
        e.expect_start_container()
            .withf(|i| i == "new-api")
            .times(1)
            .in_sequence(&mut seq)
            .returning(|_| Ok(()));
        e.expect_create_container()
            .withf(|s| s.name == "demo-api-envoy")
            .times(1)
            .in_sequence(&mut seq)
            .returning(|s| {
                Err(EngineError::new(
                    format!("create container {} (image {})", s.name, s.image),
                    Some(404),
                    "No such image: iac/envoy:1.40.0",
                ))
            });
        stop_remove(&mut e, &mut seq, "new-api");
        // web: created normally.
        creates_pair(&mut e, &mut seq, "web", None);
        port_of(&mut e, &mut seq, "new-web", 32050);
        let s = stack(vec![desired("api", "h1"), desired("web", "h1")], &[]);
        let applied = provisioner(e)
            .apply(&s, gate_never(), &Events::discard())
            .await
            .unwrap();
        let api = &applied.services[0];
        assert_eq!(api.service.as_str(), "api");
        let err = api.error.as_deref().unwrap();
        assert!(
            err.contains("demo-api-envoy") && err.contains("No such image"),
            "{err}"
        );
        assert!(err.contains("removed what was created"), "{err}");
        assert_eq!(applied.services[1].endpoint, Some(addr(32050)));
        assert_eq!(applied.services[1].error, None);
    }

    #[tokio::test]
    async fn services_not_in_the_stack_are_removed_envoy_first_unless_kept() {
        let mut e = MockEngine::new();
        network_exists(&mut e);
        let mut all = running_pair("web", "h1", 32060);
        all.extend(running_pair("old", "h0", 32061));
        all.extend(running_pair("kept", "h0", 32062));
        lists(&mut e, all);
        let mut seq = Sequence::new();
        port_of(&mut e, &mut seq, "id-demo-web", 32060);
        stop_remove(&mut e, &mut seq, "id-demo-old-envoy");
        stop_remove(&mut e, &mut seq, "id-demo-old");
        let applied = provisioner(e)
            .apply(
                &stack(vec![desired("web", "h1")], &["kept"]),
                gate_never(),
                &Events::discard(),
            )
            .await
            .unwrap();
        assert_eq!(applied.removed, vec![svc("old")]);
        let by: BTreeMap<&str, (Action, Option<SocketAddr>)> = applied
            .services
            .iter()
            .map(|a| (a.service.as_str(), (a.action, a.endpoint)))
            .collect();
        assert_eq!(by["web"], (Action::Unchanged, Some(addr(32060))));
        assert_eq!(by["kept"], (Action::Unchanged, Some(addr(32062))));
        assert_eq!(by["old"], (Action::Remove, None));
    }

    #[tokio::test]
    async fn leftover_next_containers_are_removed_before_acting() {
        let mut e = MockEngine::new();
        network_exists(&mut e);
        let mut all = running_pair("web", "h1", 32070);
        all.push(observed("demo-web-next-h9", "web", "app", "h9", None));
        all.push(observed(
            "demo-web-envoy-next-h9",
            "web",
            "envoy",
            "h9",
            None,
        ));
        lists(&mut e, all);
        let mut seq = Sequence::new();
        stop_remove(&mut e, &mut seq, "id-demo-web-envoy-next-h9");
        stop_remove(&mut e, &mut seq, "id-demo-web-next-h9");
        port_of(&mut e, &mut seq, "id-demo-web", 32070);
        let applied = provisioner(e)
            .apply(
                &stack(vec![desired("web", "h1")], &[]),
                gate_never(),
                &Events::discard(),
            )
            .await
            .unwrap();
        assert_eq!(applied.services[0].action, Action::Unchanged);
        assert_eq!(applied.services[0].error, None);
    }

    #[tokio::test]
    async fn an_unreachable_engine_fails_the_whole_apply() {
        let mut e = MockEngine::new();
        e.expect_find_networks().returning(|n| {
            Err(EngineError::new(
                format!("look up network {n}"),
                None,
                "connection refused",
            ))
        });
        let err = provisioner(e)
            .apply(
                &stack(vec![desired("web", "h1")], &[]),
                gate_never(),
                &Events::discard(),
            )
            .await
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "docker engine: look up network iacnet-t: connection refused"
        );
    }

    #[tokio::test]
    async fn a_concurrently_created_duplicate_network_is_dropped() {
        let mut e = MockEngine::new();
        let mut seq = Sequence::new();
        e.expect_find_networks()
            .times(1)
            .in_sequence(&mut seq)
            .returning(|_| Ok(vec![]));
        e.expect_create_network()
            .times(1)
            .in_sequence(&mut seq)
            .returning(|_| Ok("net2".into()));
        e.expect_find_networks()
            .times(1)
            .in_sequence(&mut seq)
            .returning(|_| Ok(vec![net_info("net2"), net_info("net1")]));
        e.expect_remove_network()
            .withf(|i| i == "net2")
            .times(1)
            .in_sequence(&mut seq)
            .returning(|_| Ok(()));
        e.expect_list_containers()
            .times(1)
            .in_sequence(&mut seq)
            .returning(|_| Ok(vec![]));
        let applied = provisioner(e)
            .apply(&stack(vec![], &[]), gate_never(), &Events::discard())
            .await
            .unwrap();
        assert_eq!(applied, Applied::default());
    }

    #[tokio::test]
    async fn diff_decides_without_acting() {
        let mut e = MockEngine::new();
        let mut all = running_pair("web", "h1", 1);
        all.extend(running_pair("old", "h0", 2));
        lists(&mut e, all);
        let changes = provisioner(e)
            .diff(&stack(
                vec![desired("web", "h2"), desired("api", "h1")],
                &[],
            ))
            .await
            .unwrap();
        let got: Vec<(&str, Action)> = changes
            .iter()
            .map(|c| (c.service.as_str(), c.action))
            .collect();
        assert_eq!(
            got,
            [
                ("web", Action::Replace),
                ("api", Action::Create),
                ("old", Action::Remove)
            ]
        );
    }

    #[tokio::test]
    async fn destroy_removes_envoys_first_then_networks_and_is_idempotent() {
        let mut e = MockEngine::new();
        let mut seq = Sequence::new();
        let mut all = running_pair("web", "h1", 1);
        all.push(observed("demo-api", "api", "app", "h1", None));
        e.expect_list_containers()
            .times(1)
            .in_sequence(&mut seq)
            .returning(move |_| Ok(all.clone()));
        stop_remove(&mut e, &mut seq, "id-demo-web-envoy");
        stop_remove(&mut e, &mut seq, "id-demo-api");
        stop_remove(&mut e, &mut seq, "id-demo-web");
        e.expect_list_networks()
            .times(1)
            .in_sequence(&mut seq)
            .returning(|_| {
                Ok(vec![
                    net_info("net1"),
                    NetworkInfo {
                        id: "shared".into(),
                        name: "iacnet".into(),
                        labels: BTreeMap::new(),
                    },
                ])
            });
        e.expect_remove_network()
            .withf(|i| i == "net1")
            .times(1)
            .in_sequence(&mut seq)
            .returning(|_| Ok(()));
        e.expect_remove_network()
            .withf(|i| i == "shared")
            .times(1)
            .in_sequence(&mut seq)
            .returning(|i| {
                Err(EngineError::new(
                    format!("remove network {i}"),
                    Some(403),
                    "network iacnet has active endpoints",
                ))
            });
        e.expect_list_containers()
            .times(1)
            .in_sequence(&mut seq)
            .returning(|_| Ok(vec![]));
        e.expect_list_networks()
            .times(1)
            .in_sequence(&mut seq)
            .returning(|_| Ok(vec![]));
        let p = provisioner(e);
        let removed = p.destroy(&project(), &Events::discard()).await.unwrap();
        assert_eq!(
            removed,
            [
                "container demo-web-envoy",
                "container demo-api",
                "container demo-web",
                "network iacnet-t"
            ]
        );
        assert!(
            p.destroy(&project(), &Events::discard())
                .await
                .unwrap()
                .is_empty()
        );
    }

    #[tokio::test]
    async fn destroy_reports_what_it_could_not_remove() {
        let mut e = MockEngine::new();
        lists(&mut e, vec![observed("demo-web", "web", "app", "h1", None)]);
        e.expect_stop_container().returning(|_, _| Ok(()));
        e.expect_remove_container().returning(|i| {
            Err(EngineError::new(
                format!("remove container {i}"),
                Some(500),
                "device busy",
            ))
        });
        e.expect_list_networks().returning(|_| Ok(vec![]));
        let err = provisioner(e)
            .destroy(&project(), &Events::discard())
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("remove container id-demo-web: device busy"),
            "{err}"
        );
        assert!(err.contains("project demo"), "{err}");
    }

    #[tokio::test]
    async fn running_lists_canonical_app_containers() {
        let mut e = MockEngine::new();
        let mut all = running_pair("web", "h1", 32080);
        all.push(observed(
            "demo-web-next-h2",
            "web",
            "app",
            "h2",
            Some(32081),
        ));
        let mut exited = observed("demo-api", "api", "app", "h3", None);
        exited.state = "exited".into();
        all.push(exited);
        lists(&mut e, all);
        let running = provisioner(e).running(&project()).await.unwrap();
        assert_eq!(
            running,
            vec![
                RunningService {
                    service: svc("api"),
                    endpoint: None,
                    spec_hash: "h3".into(),
                    image: "img".into(),
                    state: "exited".into()
                },
                RunningService {
                    service: svc("web"),
                    endpoint: Some(addr(32080)),
                    spec_hash: "h1".into(),
                    image: "img".into(),
                    state: "running".into()
                },
            ]
        );
    }

    #[test]
    fn create_body_maps_the_spec() {
        let d = desired("web", "h1");
        let app = create_body(&d.app);
        assert_eq!(app.image.as_deref(), Some("iac/demo-web:h1"));
        assert_eq!(app.cmd, None, "empty cmd keeps the image's CMD");
        assert_eq!(app.env, Some(vec!["PORT=8080".to_string()]));
        assert_eq!(app.labels.as_ref().unwrap()[LABEL_SPEC_HASH], "h1");
        assert_eq!(app.stop_timeout, Some(10));
        assert_eq!(app.exposed_ports, Some(vec!["15000/tcp".to_string()]));
        let hc = app.host_config.unwrap();
        assert_eq!(hc.network_mode.as_deref(), Some(NET));
        let bindings = hc.port_bindings.unwrap();
        assert_eq!(
            bindings["15000/tcp"],
            Some(vec![PortBinding {
                host_ip: Some("127.0.0.1".into()),
                host_port: Some(String::new())
            }])
        );
        let eps = app.networking_config.unwrap().endpoints_config.unwrap();
        assert_eq!(eps[NET].aliases, Some(vec!["web".to_string()]));

        let envoy = create_body(&d.envoy);
        let hc = envoy.host_config.unwrap();
        assert_eq!(hc.network_mode.as_deref(), Some("container:demo-web"));
        assert!(
            envoy.networking_config.is_none()
                && hc.port_bindings.is_none()
                && envoy.exposed_ports.is_none()
        );
        let m = &hc.mounts.unwrap()[0];
        assert_eq!(
            (m.source.as_deref(), m.target.as_deref(), m.typ, m.read_only),
            (
                Some("/state/envoy.yaml"),
                Some("/etc/envoy/envoy.yaml"),
                Some(MountType::BIND),
                Some(true)
            )
        );
        assert_eq!(envoy.cmd.unwrap()[0], "envoy");

        let mut fixed = d.app.clone();
        fixed.ports[0].host_port = Some(18000);
        fixed.network = NetworkMode::Network {
            name: NET.into(),
            aliases: vec![],
        };
        let body = create_body(&fixed);
        assert_eq!(
            body.host_config.unwrap().port_bindings.unwrap()["15000/tcp"]
                .as_ref()
                .unwrap()[0]
                .host_port
                .as_deref(),
            Some("18000")
        );
        assert_eq!(
            body.networking_config.unwrap().endpoints_config.unwrap()[NET].aliases,
            None
        );
    }

    #[test]
    fn create_body_hardens_and_marks_the_container_as_iacs() {
        let mut d = desired("web", "h1");
        let body = create_body(&d.app);
        let hc = body.host_config.as_ref().unwrap();
        assert_eq!(
            body.labels.as_ref().unwrap()[LABEL_MANAGED],
            "iac",
            "set at create time even when the spec lacks it"
        );
        assert!(!d.app.labels.contains_key(LABEL_MANAGED));
        assert_eq!(
            (
                &hc.cap_drop,
                &hc.cap_add,
                &hc.security_opt,
                hc.pids_limit,
                hc.memory
            ),
            (&None, &None, &None, None, None),
            "a spec without privileges/limits leaves the engine's defaults"
        );
        d.app.privileges = iac_core::plan::app_privileges();
        d.app.limits = iac_core::Limits {
            pids: Some(64),
            memory_bytes: Some(128 << 20),
        };
        let hc = create_body(&d.app).host_config.unwrap();
        assert_eq!(hc.cap_drop, Some(vec!["ALL".to_string()]));
        assert_eq!(
            hc.cap_add,
            Some(vec!["KILL".into(), "SETGID".into(), "SETUID".into()])
        );
        assert_eq!(
            hc.security_opt,
            Some(vec!["no-new-privileges:true".to_string()])
        );
        assert_eq!(hc.pids_limit, Some(64));
        assert_eq!(hc.memory, Some(128 << 20));
        assert_eq!(hc.memory_swap, Some(128 << 20), "no swap beyond the limit");
    }

    #[test]
    fn only_iac_objects_of_the_project_are_selected() {
        let f = label_filter(&project());
        assert_eq!(
            f["label"],
            vec!["iac.managed-by=iac".to_string(), "iac.project=demo".into()]
        );
    }

    fn filtered(mut d: ServiceStack) -> ServiceStack {
        d.pod_filter = Some(PodFilter {
            table: "iac_pod".into(),
            inbound_port: 15000,
        });
        d
    }

    #[tokio::test]
    async fn a_pair_counts_as_started_only_once_its_pod_filter_is_in() {
        let mut e = MockEngine::new();
        network_exists(&mut e);
        lists(&mut e, vec![]);
        let mut seq = Sequence::new();
        creates_pair(&mut e, &mut seq, "web", None);
        let argv = |a: &Vec<String>| a.join(" ") == "nft list table inet iac_pod";
        // Not yet (the script is still loading it), then there.
        e.expect_exec()
            .withf(move |id, a| id == "new-web-envoy" && argv(a))
            .times(1)
            .in_sequence(&mut seq)
            .returning(|_, _| {
                Ok(ExecOutput {
                    exit_code: Some(1),
                    output: "Error: No such file or directory".into(),
                })
            });
        e.expect_exec()
            .withf(move |id, a| id == "new-web-envoy" && argv(a))
            .times(1)
            .in_sequence(&mut seq)
            .returning(|_, _| {
                Ok(ExecOutput {
                    exit_code: Some(0),
                    output: "table inet iac_pod {\n chain input {\n tcp dport 15000 accept\n"
                        .into(),
                })
            });
        port_of(&mut e, &mut seq, "new-web", 32001);
        let applied = provisioner(e)
            .apply(
                &stack(vec![filtered(desired("web", "h1"))], &[]),
                gate_never(),
                &Events::discard(),
            )
            .await
            .unwrap();
        assert_eq!(applied.services[0].error, None);
        assert_eq!(applied.services[0].endpoint, Some(addr(32001)));
    }

    #[tokio::test]
    async fn a_sidecar_that_dies_before_filtering_takes_its_pair_down() {
        let mut e = MockEngine::new();
        network_exists(&mut e);
        lists(&mut e, vec![]);
        let mut seq = Sequence::new();
        creates_pair(&mut e, &mut seq, "web", None);
        e.expect_exec()
            .times(1)
            .in_sequence(&mut seq)
            .returning(|id, _| {
                Err(EngineError::new(
                    format!("exec in {id}"),
                    Some(409),
                    "container is not running",
                ))
            });
        stop_remove(&mut e, &mut seq, "new-web-envoy");
        stop_remove(&mut e, &mut seq, "new-web");
        let applied = provisioner(e)
            .apply(
                &stack(vec![filtered(desired("web", "h1"))], &[]),
                gate_never(),
                &Events::discard(),
            )
            .await
            .unwrap();
        let err = applied.services[0].error.as_deref().unwrap();
        assert!(
            err.contains("stopped before installing the pod's packet filter")
                && err.contains("docker logs demo-web-envoy")
                && err.contains("removed what was created"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn a_filter_that_does_not_admit_the_mesh_port_is_refused() {
        let mut e = MockEngine::new();
        network_exists(&mut e);
        lists(&mut e, vec![]);
        let mut seq = Sequence::new();
        creates_pair(&mut e, &mut seq, "web", None);
        e.expect_exec()
            .times(1)
            .in_sequence(&mut seq)
            .returning(|_, _| {
                Ok(ExecOutput {
                    exit_code: Some(0),
                    output: "table inet iac_pod { tcp dport 8080 accept }".into(),
                })
            });
        stop_remove(&mut e, &mut seq, "new-web-envoy");
        stop_remove(&mut e, &mut seq, "new-web");
        let applied = provisioner(e)
            .apply(
                &stack(vec![filtered(desired("web", "h1"))], &[]),
                gate_never(),
                &Events::discard(),
            )
            .await
            .unwrap();
        let err = applied.services[0].error.as_deref().unwrap();
        assert!(err.contains("does not admit tcp dport 15000"), "{err}");
    }

    #[test]
    fn published_addresses_are_dialable() {
        assert_eq!(dialable(Some("127.0.0.1"), 5), Some(addr(5)));
        assert_eq!(dialable(Some("0.0.0.0"), 5), Some(addr(5)));
        assert_eq!(dialable(Some(""), 5), Some(addr(5)));
        assert_eq!(dialable(Some("::"), 5), Some("[::1]:5".parse().unwrap()));
        assert_eq!(dialable(Some("not an ip"), 5), None);
        assert_eq!(dialable(Some("127.0.0.1"), 0), None);
        assert_eq!(
            pick(vec!["[::1]:5".parse().unwrap(), addr(6)]),
            Some(addr(6))
        );
    }

    #[tokio::test]
    async fn an_unreachable_docker_host_is_named_in_the_error() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("no-engine.sock");
        for host in [
            sock.display().to_string(),
            format!("unix://{}", sock.display()),
        ] {
            let config = DockerProvisionerConfig {
                docker_host: Some(host.clone()),
                ..Default::default()
            };
            let err = DockerProvisioner::connect(config)
                .await
                .unwrap_err()
                .to_string();
            assert!(
                err.contains(&host) && err.contains("expected a reachable Docker engine"),
                "{err}"
            );
        }
        let config = DockerProvisionerConfig {
            docker_host: Some("ftp://nowhere".into()),
            ..Default::default()
        };
        let err = DockerProvisioner::connect(config)
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("ftp://nowhere"), "{err}");
    }

    #[test]
    fn config_defaults_and_partial_toml() {
        let c: DockerProvisionerConfig = toml::from_str("health_deadline = \"5s\"").unwrap();
        assert_eq!(c.health_deadline, Duration::from_secs(5));
        assert_eq!(
            c.stop_timeout,
            DockerProvisionerConfig::default().stop_timeout
        );
        assert_eq!(c.docker_host, None);
        assert_eq!(c.limits, ContainerLimits::default());
        let c: DockerProvisionerConfig =
            toml::from_str("[limits]\napp_pids = 100\napp_memory_mib = 0").unwrap();
        assert_eq!(c.limits.app_pids, 100);
        assert_eq!(c.limits.app().memory_bytes, None, "0 = no limit");
        assert_eq!(c.limits.sidecar_pids, 256);
        let e = toml::from_str::<DockerProvisionerConfig>("[limits]\napp_pid = 1").unwrap_err();
        assert!(e.to_string().contains("app_pid"), "{e}");
    }
}
