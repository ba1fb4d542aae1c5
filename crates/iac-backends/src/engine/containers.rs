//! Containers and networks: the [`Engine`] trait (the handful of Docker API calls the docker
//! provisioner's reconciling needs — a mockall fake in its unit tests), its bollard implementation
//! [`BollardEngine`] over a [`DockerEngine`] connection, and the container create body built from
//! a [`ContainerSpec`].

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;

use async_trait::async_trait;
use bollard::Docker;
use bollard::exec::{CreateExecOptions, StartExecResults};
use bollard::models::{
    ContainerCreateBody, EndpointSettings, HostConfig, Mount as DockerMount, MountType,
    NetworkConnectRequest, NetworkCreateRequest, NetworkDisconnectRequest, NetworkingConfig,
    PortBinding, RestartPolicy as DockerRestartPolicy, RestartPolicyNameEnum,
};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, InspectContainerOptionsBuilder, ListContainersOptionsBuilder,
    ListNetworksOptionsBuilder, LogsOptionsBuilder, RemoveContainerOptionsBuilder,
    RenameContainerOptionsBuilder, StopContainerOptionsBuilder,
};
use futures::StreamExt;

use iac_core::stack::{LABEL_PROJECT, LABEL_ROLE, LABEL_SERVICE, LABEL_SPEC_HASH};
use iac_core::{
    ContainerSpec, Events, NetworkMode, NetworkSpec, ProjectName, RestartPolicy, Role, Stage,
};

use super::{DockerEngine, EngineError};
use crate::output_tail::OutputTail;
use iac_core::addr::published;
use iac_core::labels::{managed_filter, mark_managed};

/// One tag of an image ([`Engine::image_tags`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageTag {
    /// `repo:tag`.
    pub tag: String,
    /// When its image was created, seconds since the Unix epoch. An image rebuilt from the
    /// build cache keeps its first creation time.
    pub created: i64,
    /// When the engine last tagged its image (a build, or [`Engine::tag_again`] when a deploy
    /// uses it), seconds since the Unix epoch; `None` when the engine does not say.
    pub last_tagged: Option<i64>,
}

impl ImageTag {
    /// The latest sign of use: the last tag, else the creation.
    pub fn last_used(&self) -> i64 {
        self.last_tagged
            .map_or(self.created, |t| t.max(self.created))
    }
}

/// One container of the project as the engine reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    /// The engine's container id.
    pub id: String,
    /// Without Docker's leading `/`.
    pub name: String,
    /// `iac.service` label (absent on objects that belong to no service).
    pub service: Option<String>,
    /// `iac.role` label (`None` when absent or not a role iac sets).
    pub role: Option<Role>,
    /// `iac.spec-hash` label.
    pub spec_hash: Option<String>,
    /// The image the container was created from, as the engine reports it.
    pub image: String,
    /// Engine state, e.g. `running`, `exited`, `created`.
    pub state: String,
    /// Published ports: (container port, host address).
    pub published: Vec<(u16, SocketAddr)>,
    /// `iac.sandbox` label: the sandbox a copy's container belongs to (`None`: the baseline,
    /// or an object of no service).
    pub sandbox: Option<String>,
}

impl Observed {
    /// The engine says `running`.
    pub fn is_running(&self) -> bool {
        self.state == "running"
    }

    /// The host address a container port is published on, if any.
    pub fn published_addr(&self, container_port: u16) -> Option<SocketAddr> {
        self.published
            .iter()
            .find(|(p, _)| *p == container_port)
            .map(|(_, a)| *a)
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

/// How following a container's log for a line ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogWait {
    /// The first line containing the needle.
    Found(String),
    /// The log ended (the container stopped) without it; its last lines.
    Ended(String),
}

/// How a stopped container ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExitState {
    /// Its PID 1's exit code, when the engine reports one.
    pub code: Option<i64>,
    /// Whether the kernel killed it for exceeding its memory limit.
    pub oom_killed: bool,
}

/// A network as the engine reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkInfo {
    /// The engine's network id.
    pub id: String,
    /// The network's name.
    pub name: String,
    /// The network's labels.
    pub labels: BTreeMap<String, String>,
}

/// The engine operations the provisioner needs, nothing more. Implementations must treat
/// "already stopped" / "already gone" as success in `stop_container` and `remove_container`.
#[cfg_attr(any(test, feature = "mocks"), mockall::automock)]
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
    /// Removes the network `id` (it must have no containers left).
    async fn remove_network(&self, id: &str) -> Result<(), EngineError>;
    /// Creates (does not start) a container exactly as specified, labelled
    /// `iac.managed-by=iac`; returns its id.
    async fn create_container(&self, spec: &ContainerSpec) -> Result<String, EngineError>;
    /// Starts the created container `id`.
    async fn start_container(&self, id: &str) -> Result<(), EngineError>;
    /// Stops container `id`: SIGTERM, then SIGKILL after `timeout_secs`.
    async fn stop_container(&self, id: &str, timeout_secs: u32) -> Result<(), EngineError>;
    /// Removes container `id`, running or not (forced).
    async fn remove_container(&self, id: &str) -> Result<(), EngineError>;
    /// Renames container `id` to `new_name`.
    async fn rename_container(&self, id: &str, new_name: &str) -> Result<(), EngineError>;
    /// Connects `container` to `network` under the DNS `aliases`.
    async fn connect_network(
        &self,
        network: &str,
        container: &str,
        aliases: Vec<String>,
    ) -> Result<(), EngineError>;
    /// Disconnects `container` from `network`.
    async fn disconnect_network(&self, network: &str, container: &str) -> Result<(), EngineError>;
    /// Runs `argv` in the running container `id` (with the container's own privileges) and waits
    /// for it. A container that is not running is an error (status 409).
    async fn exec(&self, id: &str, argv: Vec<String>) -> Result<ExecOutput, EngineError>;
    /// Follows the stderr of container `id` from its start until a line contains `needle`, or
    /// until the log ends because the container stopped. No process runs in the container (unlike
    /// `exec`). An engine whose log driver cannot be read back is an error.
    async fn wait_for_log_line(&self, id: &str, needle: &str) -> Result<LogWait, EngineError>;
    /// Follows the stdout and stderr of container `id` from its start until it stops: each line
    /// becomes a debug event under `stage` (bounded, see [`OutputTail`]); returns the last lines
    /// (about `tail_bytes`).
    async fn follow_output(
        &self,
        id: &str,
        events: &Events,
        stage: Stage,
        tail_bytes: usize,
    ) -> Result<String, EngineError>;
    /// Waits until container `id` has stopped; how it ended.
    async fn wait_exit(&self, id: &str) -> Result<ExitState, EngineError>;
    /// The last `lines` lines of container `id`'s log (stdout and stderr interleaved as the
    /// engine stored them), at most `max_bytes` read; does not follow.
    async fn log_tail(
        &self,
        id: &str,
        lines: usize,
        max_bytes: usize,
    ) -> Result<String, EngineError>;
    /// Host address `container_port/tcp` is published on (from inspect), if any.
    async fn published_port(
        &self,
        id: &str,
        container_port: u16,
    ) -> Result<Option<SocketAddr>, EngineError>;
    /// Whether an image named `name` is on the engine.
    async fn image_present(&self, name: &str) -> Result<bool, EngineError>;
    /// Builds image `tag` from `context` (a tar holding a `Dockerfile` and what it copies),
    /// without network: every stage starts from `scratch` or a local image.
    async fn build_image(&self, tag: &str, context: Vec<u8>) -> Result<(), EngineError>;
    /// Every tag `repo:*` on the engine, with its image's creation and last tag times.
    async fn image_tags(&self, repo: &str) -> Result<Vec<ImageTag>, EngineError>;
    /// Tags image `tag` as `tag` again: nothing changes but the engine's record of when the
    /// image was last tagged (`Metadata.LastTagTime`), which says "in use now" to a collector.
    async fn tag_again(&self, tag: &str) -> Result<(), EngineError>;
    /// The names of every container (any project, any state, managed or not) created from
    /// image `image` (a tag or an id).
    async fn image_users(&self, image: &str) -> Result<Vec<String>, EngineError>;
    /// Removes the tag `tag` (the image goes with its last tag); never forced, so the engine
    /// refuses (a 409 [`EngineError`]) while a container uses it.
    async fn remove_image_tag(&self, tag: &str) -> Result<(), EngineError>;
}

/// Lines of a followed container's output shown as events (the rest is only counted).
const OUTPUT_EVENT_LINES: usize = 200;

/// The last `max_bytes` of a log stream (a container's or a Swarm service's), as text: the
/// newest lines matter, so older bytes are dropped as the stream goes.
pub(crate) async fn last_bytes(
    mut stream: impl futures::Stream<
        Item = Result<bollard::container::LogOutput, bollard::errors::Error>,
    > + Unpin,
    max_bytes: usize,
    op: &str,
) -> Result<String, EngineError> {
    let mut out: Vec<u8> = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| EngineError::from_bollard(op.to_string(), e))?;
        out.extend_from_slice(&chunk.into_bytes());
        if out.len() > 2 * max_bytes {
            out.drain(..out.len() - max_bytes);
        }
    }
    if out.len() > max_bytes {
        out.drain(..out.len() - max_bytes);
    }
    Ok(String::from_utf8_lossy(&out).into_owned())
}

/// [`Engine`] over bollard.
#[derive(Debug, Clone)]
pub struct BollardEngine {
    docker: Docker,
}

impl BollardEngine {
    /// The containers/networks API over an engine connection (a clone of the client: cheap).
    pub fn new(engine: &DockerEngine) -> Self {
        BollardEngine {
            docker: engine.docker().clone(),
        }
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
            restart_policy: (spec.restart != RestartPolicy::No).then_some(DockerRestartPolicy {
                name: Some(match spec.restart {
                    RestartPolicy::No => RestartPolicyNameEnum::NO,
                    RestartPolicy::UnlessStopped => RestartPolicyNameEnum::UNLESS_STOPPED,
                }),
                maximum_retry_count: None,
            }),
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
    mark_managed(&mut out);
    out
}

/// IPv4 bindings first (the engine lists `0.0.0.0` and `::` twins for unqualified publishes).
pub(crate) fn pick(mut addrs: Vec<SocketAddr>) -> Option<SocketAddr> {
    addrs.sort_by_key(|a| !a.is_ipv4());
    addrs.into_iter().next()
}

/// Objects iac created for `project` (the engine ANDs label filters).
pub(crate) fn label_filter(project: &ProjectName) -> HashMap<String, Vec<String>> {
    [(
        "label".to_string(),
        vec![managed_filter(), format!("{LABEL_PROJECT}={project}")],
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
                        Some((p.private_port, published(p.ip.as_deref(), p.public_port?)?))
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
                    role: labels.get(LABEL_ROLE).and_then(|r| Role::from_label(r)),
                    spec_hash: labels.get(LABEL_SPEC_HASH).cloned(),
                    image: c.image.unwrap_or_default(),
                    state: c.state.map(|s| s.to_string()).unwrap_or_default(),
                    published,
                    sandbox: labels.get(iac_core::sandbox::LABEL_SANDBOX).cloned(),
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

    async fn wait_for_log_line(&self, id: &str, needle: &str) -> Result<LogWait, EngineError> {
        let op = || format!("following the log of container {id}");
        let opts = LogsOptionsBuilder::new()
            .follow(true)
            .stderr(true)
            .stdout(false)
            .build();
        let mut stream = self.docker.logs(id, Some(opts));
        let mut pending = String::new();
        let mut tail: Vec<String> = Vec::new();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| EngineError::from_bollard(op(), e))?;
            pending.push_str(&String::from_utf8_lossy(&chunk.into_bytes()));
            while let Some(end) = pending.find('\n') {
                let line: String = pending.drain(..=end).collect();
                let line = line.trim_end().to_string();
                if line.contains(needle) {
                    return Ok(LogWait::Found(line));
                }
                tail.push(line);
                if tail.len() > 5 {
                    tail.remove(0);
                }
            }
        }
        if pending.contains(needle) {
            return Ok(LogWait::Found(pending.trim_end().to_string()));
        }
        if !pending.trim().is_empty() {
            tail.push(pending.trim_end().to_string());
        }
        Ok(LogWait::Ended(tail.join(" | ")))
    }

    async fn follow_output(
        &self,
        id: &str,
        events: &Events,
        stage: Stage,
        tail_bytes: usize,
    ) -> Result<String, EngineError> {
        let opts = LogsOptionsBuilder::new()
            .follow(true)
            .stdout(true)
            .stderr(true)
            .build();
        let mut stream = self.docker.logs(id, Some(opts));
        let mut tail = OutputTail::new(tail_bytes, OUTPUT_EVENT_LINES);
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| {
                EngineError::from_bollard(format!("following the output of container {id}"), e)
            })?;
            tail.push_as_events(&chunk.into_bytes(), events, stage, "");
        }
        tail.finish_as_events(events, stage, "");
        Ok(tail.text())
    }

    async fn wait_exit(&self, id: &str) -> Result<ExitState, EngineError> {
        let op = || format!("waiting for container {id} to stop");
        let mut waits = self.docker.wait_container(id, None);
        let mut code = None;
        while let Some(r) = waits.next().await {
            match r {
                Ok(resp) => code = Some(resp.status_code),
                // bollard reports a non-zero exit as this error.
                Err(bollard::errors::Error::DockerContainerWaitError { code: c, .. }) => {
                    code = Some(c)
                }
                Err(e) => return Err(EngineError::from_bollard(op(), e)),
            }
        }
        let opts = InspectContainerOptionsBuilder::default()
            .size(false)
            .build();
        let c = self
            .docker
            .inspect_container(id, Some(opts))
            .await
            .map_err(|e| EngineError::from_bollard(op(), e))?;
        let state = c.state.unwrap_or_default();
        Ok(ExitState {
            code: state.exit_code.or(code),
            oom_killed: state.oom_killed.unwrap_or(false),
        })
    }

    async fn log_tail(
        &self,
        id: &str,
        lines: usize,
        max_bytes: usize,
    ) -> Result<String, EngineError> {
        let opts = LogsOptionsBuilder::new()
            .follow(false)
            .stdout(true)
            .stderr(true)
            .tail(&lines.to_string())
            .build();
        last_bytes(
            self.docker.logs(id, Some(opts)),
            max_bytes,
            &format!("reading the log of container {id}"),
        )
        .await
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
            .filter_map(|b| published(b.host_ip.as_deref(), b.host_port.as_deref()?.parse().ok()?))
            .collect();
        Ok(pick(addrs))
    }

    async fn image_present(&self, name: &str) -> Result<bool, EngineError> {
        match self.docker.inspect_image(name).await {
            Ok(_) => Ok(true),
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(false),
            Err(e) => Err(EngineError::from_bollard(
                format!("inspect image {name}"),
                e,
            )),
        }
    }

    async fn image_tags(&self, repo: &str) -> Result<Vec<ImageTag>, EngineError> {
        let filters: HashMap<String, Vec<String>> =
            HashMap::from([("reference".to_string(), vec![repo.to_string()])]);
        let list = self
            .docker
            .list_images(Some(
                bollard::query_parameters::ListImagesOptionsBuilder::new()
                    .filters(&filters)
                    .build(),
            ))
            .await
            .map_err(|e| EngineError::from_bollard(format!("list images {repo}"), e))?;
        let prefix = format!("{repo}:");
        let mut out = Vec::new();
        for i in list {
            let tags: Vec<String> = i
                .repo_tags
                .into_iter()
                .filter(|t| t.starts_with(&prefix))
                .collect();
            if tags.is_empty() {
                continue;
            }
            let last_tagged = match self.docker.inspect_image(&i.id).await {
                Ok(v) => v
                    .metadata
                    .and_then(|m| m.last_tag_time)
                    .and_then(|t| humantime::parse_rfc3339_weak(&t).ok())
                    .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                    .map(|d| d.as_secs() as i64),
                // Removed meanwhile: nothing to list.
                Err(bollard::errors::Error::DockerResponseServerError {
                    status_code: 404, ..
                }) => continue,
                Err(e) => {
                    return Err(EngineError::from_bollard(
                        format!("inspect image {}", i.id),
                        e,
                    ));
                }
            };
            out.extend(tags.into_iter().map(|tag| ImageTag {
                tag,
                created: i.created,
                last_tagged,
            }));
        }
        Ok(out)
    }

    async fn tag_again(&self, tag: &str) -> Result<(), EngineError> {
        let (repo, name) = tag.rsplit_once(':').ok_or_else(|| {
            EngineError::new(format!("tag image {tag}"), None, "expected REPO:TAG")
        })?;
        self.docker
            .tag_image(
                tag,
                Some(
                    bollard::query_parameters::TagImageOptionsBuilder::new()
                        .repo(repo)
                        .tag(name)
                        .build(),
                ),
            )
            .await
            .map_err(|e| EngineError::from_bollard(format!("tag image {tag}"), e))
    }

    async fn image_users(&self, image: &str) -> Result<Vec<String>, EngineError> {
        let filters: HashMap<String, Vec<String>> =
            HashMap::from([("ancestor".to_string(), vec![image.to_string()])]);
        let list = self
            .docker
            .list_containers(Some(
                ListContainersOptionsBuilder::default()
                    .all(true)
                    .filters(&filters)
                    .build(),
            ))
            .await
            .map_err(|e| {
                EngineError::from_bollard(format!("list containers using image {image}"), e)
            })?;
        Ok(list
            .into_iter()
            .map(|c| {
                c.names
                    .and_then(|n| n.into_iter().next())
                    .map(|n| n.trim_start_matches('/').to_string())
                    .or(c.id)
                    .unwrap_or_default()
            })
            .collect())
    }

    async fn remove_image_tag(&self, tag: &str) -> Result<(), EngineError> {
        self.docker
            .remove_image(
                tag,
                Some(
                    bollard::query_parameters::RemoveImageOptionsBuilder::new()
                        .force(false)
                        .noprune(false)
                        .build(),
                ),
                None,
            )
            .await
            .map(|_| ())
            .map_err(|e| EngineError::from_bollard(format!("remove image {tag}"), e))
    }

    async fn build_image(&self, tag: &str, context: Vec<u8>) -> Result<(), EngineError> {
        let op = || format!("building image {tag}");
        let opts = bollard::query_parameters::BuildImageOptionsBuilder::new()
            .dockerfile("Dockerfile")
            .t(tag)
            .rm(true)
            .forcerm(true)
            .networkmode("none")
            .build();
        let mut stream =
            self.docker
                .build_image(opts, None, Some(bollard::body_full(context.into())));
        // The last few KiB of the build's output, for the error.
        let mut output = String::new();
        while let Some(item) = stream.next().await {
            let info = item.map_err(|e| EngineError::from_bollard(op(), e))?;
            if let Some(text) = info.stream.as_deref() {
                output.push_str(text);
                if output.len() > 8192 {
                    let cut = output.len() - 4096;
                    let cut = (cut..output.len())
                        .find(|i| output.is_char_boundary(*i))
                        .unwrap_or(output.len());
                    output.drain(..cut);
                }
            }
            if let Some(err) = info.error_detail.and_then(|d| d.message) {
                return Err(EngineError::new(op(), None, format!("{err}\n{output}")));
            }
        }
        Ok(())
    }
}

fn network_info(n: bollard::models::Network) -> NetworkInfo {
    NetworkInfo {
        id: n.id.unwrap_or_default(),
        name: n.name.unwrap_or_default(),
        labels: n.labels.unwrap_or_default().into_iter().collect(),
    }
}
