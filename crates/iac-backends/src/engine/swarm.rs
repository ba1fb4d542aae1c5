//! Swarm on the engine layer: the [`SwarmEngine`] trait — every Docker API call the Swarm
//! provisioner makes (the swarm's state, overlay networks, services, their tasks and containers,
//! nodes, configs and secrets, images and the pod image build) — its bollard implementation
//! [`BollardSwarm`], and a mockall fake for the provisioner's unit tests. Failures are
//! [`EngineError`]s (mapped once, in `error.rs`: a 404 is "not found", a 409 a conflict).
//!
//! The Swarm object types the provisioner renders and reads ([`ServiceSpec`], [`Service`],
//! [`Task`], …) are the engine API's own models, re-exported from here so nothing outside
//! `engine/` names the client library.

use std::collections::HashMap;
use std::net::IpAddr;

use async_trait::async_trait;
use base64::Engine as _;
use bollard::Docker;
use bollard::models::{ConfigSpec, NetworkCreateRequest, SecretSpec};
use bollard::query_parameters::{
    BuildImageOptionsBuilder, InspectNetworkOptions, InspectServiceOptions,
    ListConfigsOptionsBuilder, ListContainersOptionsBuilder, ListNetworksOptionsBuilder,
    ListNodesOptions, ListSecretsOptionsBuilder, ListServicesOptionsBuilder,
    ListTasksOptionsBuilder, LogsOptionsBuilder, UpdateServiceOptionsBuilder,
};
use futures::StreamExt;

pub use bollard::models::{
    EndpointPortConfig, EndpointPortConfigProtocolEnum, EndpointPortConfigPublishModeEnum,
    EndpointSpec, EndpointSpecModeEnum, HealthConfig, Limit, NetworkAttachmentConfig, PortStatus,
    Service, ServiceSpec, ServiceSpecMode, ServiceSpecModeReplicated, ServiceSpecRollbackConfig,
    ServiceSpecRollbackConfigFailureActionEnum, ServiceSpecRollbackConfigOrderEnum,
    ServiceSpecUpdateConfig, ServiceSpecUpdateConfigFailureActionEnum,
    ServiceSpecUpdateConfigOrderEnum, ServiceUpdateStatus, ServiceUpdateStatusStateEnum, Task,
    TaskSpec, TaskSpecContainerSpec, TaskSpecContainerSpecConfigs, TaskSpecContainerSpecFile,
    TaskSpecContainerSpecFile1, TaskSpecContainerSpecPrivileges, TaskSpecContainerSpecSecrets,
    TaskSpecResources, TaskSpecRestartPolicy, TaskSpecRestartPolicyConditionEnum, TaskState,
    TaskStatus,
};

use super::{DockerEngine, EngineError, RegistryAuth};

/// What the engine says about the swarm it is part of.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SwarmState {
    /// Whether this engine is a manager (can create services).
    pub manager: bool,
    /// The node's swarm state (`inactive`, `active`, …), for messages.
    pub node_state: String,
    /// How many nodes the swarm has (1 when the engine does not say).
    pub nodes: i64,
}

/// A network as the engine reports it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NetworkView {
    /// The engine's id.
    pub id: String,
    /// The network's name.
    pub name: String,
    /// `overlay`, `bridge`, …
    pub driver: String,
    /// Its labels (iac's say whether iac made it, for which project).
    pub labels: HashMap<String, String>,
}

/// Whether a Swarm object is a config or a secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ObjectKind {
    /// A Swarm config (envoy.yaml, the CA and the leaf certificate).
    Config,
    /// A Swarm secret (the leaf's private key).
    Secret,
}

impl ObjectKind {
    /// `config` or `secret`.
    pub fn as_str(self) -> &'static str {
        match self {
            ObjectKind::Config => "config",
            ObjectKind::Secret => "secret",
        }
    }
}

/// A config or secret: its kind, id and name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SwarmObject {
    /// Config or secret.
    pub kind: ObjectKind,
    /// The engine's id.
    pub id: String,
    /// Its name (content-addressed: see `provision/swarm/objects.rs`).
    pub name: String,
}

/// An image as the Swarm provisioner needs it: its id and its command.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageView {
    /// `sha256:…`.
    pub id: String,
    /// The image's `CMD`.
    pub cmd: Vec<String>,
}

/// Label filters (`label` → `KEY=VALUE`s), as the engine's list endpoints take them.
pub type Filters = HashMap<String, Vec<String>>;

/// The Docker API calls of the Swarm provisioner. Every method names what it attempted in its
/// error.
#[cfg_attr(test, mockall::automock)]
#[async_trait]
pub trait SwarmEngine: Send + Sync {
    /// The engine's swarm state.
    async fn swarm_state(&self) -> Result<SwarmState, EngineError>;
    /// The network `name`, `None` when there is none.
    async fn network(&self, name: &str) -> Result<Option<NetworkView>, EngineError>;
    /// Creates an attachable overlay network.
    async fn create_overlay_network(
        &self,
        name: &str,
        labels: HashMap<String, String>,
    ) -> Result<(), EngineError>;
    /// The networks matching `filters`.
    async fn networks(&self, filters: Filters) -> Result<Vec<NetworkView>, EngineError>;
    /// Removes a network (a 404 is an error with [`EngineError::is_not_found`]).
    async fn remove_network(&self, id: &str) -> Result<(), EngineError>;
    /// The services matching `filters`.
    async fn services(&self, filters: Filters) -> Result<Vec<Service>, EngineError>;
    /// One service.
    async fn service(&self, id: &str) -> Result<Service, EngineError>;
    /// Creates a service; its id. `auth` goes to every node that pulls its image.
    async fn create_service(
        &self,
        spec: ServiceSpec,
        auth: Option<RegistryAuth>,
    ) -> Result<String, EngineError>;
    /// Updates service `id` at `version` to `spec`.
    async fn update_service(
        &self,
        id: &str,
        spec: ServiceSpec,
        version: u64,
        auth: Option<RegistryAuth>,
    ) -> Result<(), EngineError>;
    /// The last `lines` lines (at most `max_bytes`) of every task of service `id`, stdout and
    /// stderr (a task is one container: the agent tees the app's output and Envoy's).
    async fn service_log_tail(
        &self,
        id: &str,
        lines: usize,
        max_bytes: usize,
    ) -> Result<String, EngineError>;
    /// Removes a service (a 404 is an error with [`EngineError::is_not_found`]).
    async fn remove_service(&self, id: &str) -> Result<(), EngineError>;
    /// How many containers of service `id`'s tasks are on this engine (in any state).
    async fn task_containers(&self, service_id: &str) -> Result<usize, EngineError>;
    /// The tasks of service `id`.
    async fn tasks(&self, service_id: &str) -> Result<Vec<Task>, EngineError>;
    /// Node id → its address as the swarm knows it.
    async fn node_addresses(&self) -> Result<HashMap<String, IpAddr>, EngineError>;
    /// The configs and secrets matching `filters`.
    async fn objects(&self, filters: Filters) -> Result<Vec<SwarmObject>, EngineError>;
    /// Creates a config or secret holding `data`; its id.
    async fn create_object(
        &self,
        kind: ObjectKind,
        name: &str,
        labels: HashMap<String, String>,
        data: Vec<u8>,
    ) -> Result<String, EngineError>;
    /// Removes a config or secret.
    async fn remove_object(&self, kind: ObjectKind, id: &str) -> Result<(), EngineError>;
    /// The image `name`, `None` when the engine does not have it.
    async fn image(&self, name: &str) -> Result<Option<ImageView>, EngineError>;
    /// Builds `dockerfile` (a context of that file alone) as `tag`, with no network: every stage
    /// starts from a local image.
    async fn build_image(&self, tag: &str, dockerfile: &str) -> Result<(), EngineError>;
}

/// [`SwarmEngine`] over a bollard client.
#[derive(Debug, Clone)]
pub struct BollardSwarm {
    docker: Docker,
}

impl BollardSwarm {
    /// The Swarm API over an engine connection (a clone of the client: cheap).
    pub fn new(engine: &DockerEngine) -> Self {
        BollardSwarm {
            docker: engine.docker().clone(),
        }
    }
}

fn err(op: impl Into<String>) -> impl FnOnce(bollard::errors::Error) -> EngineError {
    let op = op.into();
    move |e| EngineError::from_bollard(op, e)
}

fn network_view(n: bollard::models::Network) -> NetworkView {
    NetworkView {
        id: n.id.unwrap_or_default(),
        name: n.name.unwrap_or_default(),
        driver: n.driver.unwrap_or_default(),
        labels: n.labels.unwrap_or_default(),
    }
}

/// A tar holding only `Dockerfile`.
fn dockerfile_context(dockerfile: &str) -> Result<Vec<u8>, std::io::Error> {
    let mut tar = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_gnu();
    header.set_size(dockerfile.len() as u64);
    header.set_mode(0o644);
    header.set_cksum();
    tar.append_data(&mut header, "Dockerfile", dockerfile.as_bytes())?;
    tar.into_inner()
}

#[async_trait]
impl SwarmEngine for BollardSwarm {
    async fn swarm_state(&self) -> Result<SwarmState, EngineError> {
        let info = self
            .docker
            .info()
            .await
            .map_err(err("read the engine's info"))?;
        let swarm = info.swarm.unwrap_or_default();
        Ok(SwarmState {
            manager: swarm.control_available == Some(true),
            node_state: swarm
                .local_node_state
                .map(|s| s.to_string())
                .unwrap_or_else(|| "unknown".into()),
            nodes: swarm.nodes.unwrap_or(1),
        })
    }

    async fn network(&self, name: &str) -> Result<Option<NetworkView>, EngineError> {
        match self
            .docker
            .inspect_network(name, None::<InspectNetworkOptions>)
            .await
        {
            Ok(n) => Ok(Some(NetworkView {
                id: n.id.unwrap_or_default(),
                name: n.name.unwrap_or_default(),
                driver: n.driver.unwrap_or_default(),
                labels: n.labels.unwrap_or_default(),
            })),
            Err(e) => {
                let e = EngineError::from_bollard(format!("inspect network {name}"), e);
                if e.is_not_found() { Ok(None) } else { Err(e) }
            }
        }
    }

    async fn create_overlay_network(
        &self,
        name: &str,
        labels: HashMap<String, String>,
    ) -> Result<(), EngineError> {
        self.docker
            .create_network(NetworkCreateRequest {
                name: name.to_string(),
                driver: Some("overlay".into()),
                attachable: Some(true),
                labels: Some(labels),
                ..Default::default()
            })
            .await
            .map_err(err(format!("create overlay network {name}")))?;
        Ok(())
    }

    async fn networks(&self, filters: Filters) -> Result<Vec<NetworkView>, EngineError> {
        let nets = self
            .docker
            .list_networks(Some(
                ListNetworksOptionsBuilder::default()
                    .filters(&filters)
                    .build(),
            ))
            .await
            .map_err(err("list networks"))?;
        Ok(nets.into_iter().map(network_view).collect())
    }

    async fn remove_network(&self, id: &str) -> Result<(), EngineError> {
        self.docker
            .remove_network(id)
            .await
            .map_err(err(format!("remove network {id}")))
    }

    async fn services(&self, filters: Filters) -> Result<Vec<Service>, EngineError> {
        self.docker
            .list_services(Some(
                ListServicesOptionsBuilder::default()
                    .filters(&filters)
                    .build(),
            ))
            .await
            .map_err(err("list services"))
    }

    async fn service(&self, id: &str) -> Result<Service, EngineError> {
        self.docker
            .inspect_service(id, None::<InspectServiceOptions>)
            .await
            .map_err(err(format!("inspect service {id}")))
    }

    async fn create_service(
        &self,
        spec: ServiceSpec,
        auth: Option<RegistryAuth>,
    ) -> Result<String, EngineError> {
        let name = spec.name.clone().unwrap_or_default();
        let created = self
            .docker
            .create_service(spec, auth.as_ref().map(RegistryAuth::credentials))
            .await
            .map_err(err(format!("create service {name}")))?;
        Ok(created.id.unwrap_or(name))
    }

    async fn update_service(
        &self,
        id: &str,
        spec: ServiceSpec,
        version: u64,
        auth: Option<RegistryAuth>,
    ) -> Result<(), EngineError> {
        let opts = UpdateServiceOptionsBuilder::default()
            .version(i32::try_from(version).unwrap_or(i32::MAX))
            .build();
        self.docker
            .update_service(id, spec, opts, auth.as_ref().map(RegistryAuth::credentials))
            .await
            .map_err(err(format!("update service {id}")))?;
        Ok(())
    }

    async fn service_log_tail(
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
        let stream = Box::pin(self.docker.service_logs(id, Some(opts)));
        super::containers::last_bytes(
            stream,
            max_bytes,
            &format!("reading the log of service {id}"),
        )
        .await
    }

    async fn remove_service(&self, id: &str) -> Result<(), EngineError> {
        self.docker
            .delete_service(id)
            .await
            .map_err(err(format!("remove service {id}")))
    }

    async fn task_containers(&self, service_id: &str) -> Result<usize, EngineError> {
        let filters = HashMap::from([(
            "label".to_string(),
            vec![format!("com.docker.swarm.service.id={service_id}")],
        )]);
        let list = self
            .docker
            .list_containers(Some(
                ListContainersOptionsBuilder::default()
                    .all(true)
                    .filters(&filters)
                    .build(),
            ))
            .await
            .map_err(err(format!(
                "list the task containers of service {service_id}"
            )))?;
        Ok(list.len())
    }

    async fn tasks(&self, service_id: &str) -> Result<Vec<Task>, EngineError> {
        let filters = HashMap::from([("service".to_string(), vec![service_id.to_string()])]);
        self.docker
            .list_tasks(Some(
                ListTasksOptionsBuilder::default().filters(&filters).build(),
            ))
            .await
            .map_err(err(format!("list the tasks of service {service_id}")))
    }

    async fn node_addresses(&self) -> Result<HashMap<String, IpAddr>, EngineError> {
        let nodes = self
            .docker
            .list_nodes(None::<ListNodesOptions>)
            .await
            .map_err(err("list nodes"))?;
        Ok(nodes
            .into_iter()
            .filter_map(|n| {
                let ip = n.status?.addr?.parse().ok()?;
                Some((n.id?, ip))
            })
            .collect())
    }

    async fn objects(&self, filters: Filters) -> Result<Vec<SwarmObject>, EngineError> {
        let mut out = Vec::new();
        let configs = self
            .docker
            .list_configs(Some(
                ListConfigsOptionsBuilder::default()
                    .filters(&filters)
                    .build(),
            ))
            .await
            .map_err(err("list configs"))?;
        out.extend(configs.into_iter().map(|c| SwarmObject {
            kind: ObjectKind::Config,
            id: c.id.unwrap_or_default(),
            name: c.spec.and_then(|s| s.name).unwrap_or_default(),
        }));
        let secrets = self
            .docker
            .list_secrets(Some(
                ListSecretsOptionsBuilder::default()
                    .filters(&filters)
                    .build(),
            ))
            .await
            .map_err(err("list secrets"))?;
        out.extend(secrets.into_iter().map(|s| SwarmObject {
            kind: ObjectKind::Secret,
            id: s.id.unwrap_or_default(),
            name: s.spec.and_then(|s| s.name).unwrap_or_default(),
        }));
        Ok(out)
    }

    async fn create_object(
        &self,
        kind: ObjectKind,
        name: &str,
        labels: HashMap<String, String>,
        data: Vec<u8>,
    ) -> Result<String, EngineError> {
        let encoded = base64::engine::general_purpose::STANDARD.encode(data);
        let op = format!("create {} {name}", kind.as_str());
        let created = match kind {
            ObjectKind::Config => self
                .docker
                .create_config(ConfigSpec {
                    name: Some(name.to_string()),
                    labels: Some(labels),
                    data: Some(encoded),
                    templating: None,
                })
                .await
                .map_err(err(op))?,
            ObjectKind::Secret => self
                .docker
                .create_secret(SecretSpec {
                    name: Some(name.to_string()),
                    labels: Some(labels),
                    data: Some(encoded),
                    driver: None,
                    templating: None,
                })
                .await
                .map_err(err(op))?,
        };
        Ok(created.id)
    }

    async fn remove_object(&self, kind: ObjectKind, id: &str) -> Result<(), EngineError> {
        let op = format!("remove {} {id}", kind.as_str());
        match kind {
            ObjectKind::Config => self.docker.delete_config(id).await.map_err(err(op)),
            ObjectKind::Secret => self.docker.delete_secret(id).await.map_err(err(op)),
        }
    }

    async fn image(&self, name: &str) -> Result<Option<ImageView>, EngineError> {
        match self.docker.inspect_image(name).await {
            Ok(i) => Ok(Some(ImageView {
                id: i.id.unwrap_or_default(),
                cmd: i.config.and_then(|c| c.cmd).unwrap_or_default(),
            })),
            Err(e) => {
                let e = EngineError::from_bollard(format!("inspect image {name}"), e);
                if e.is_not_found() { Ok(None) } else { Err(e) }
            }
        }
    }

    async fn build_image(&self, tag: &str, dockerfile: &str) -> Result<(), EngineError> {
        let op = format!("build image {tag}");
        let body = dockerfile_context(dockerfile).map_err(|e| {
            EngineError::new(op.clone(), None, format!("packing the build context: {e}"))
        })?;
        let opts = BuildImageOptionsBuilder::new()
            .dockerfile("Dockerfile")
            .t(tag)
            .labels(&HashMap::<String, String>::new())
            .rm(true)
            .forcerm(true)
            // Nothing to fetch: every stage starts from a local image.
            .networkmode("none")
            .build();
        let mut stream = self
            .docker
            .build_image(opts, None, Some(bollard::body_full(body.into())));
        let mut output = String::new();
        while let Some(item) = stream.next().await {
            match item {
                Ok(info) => {
                    if let Some(text) = info.stream.as_deref() {
                        output.push_str(text);
                    }
                    if let Some(e) = info.error_detail.and_then(|d| d.message) {
                        return Err(EngineError::new(op, None, format!("{e}\n{output}")));
                    }
                }
                Err(e) => {
                    let e = EngineError::from_bollard(op, e);
                    return Err(EngineError::new(
                        e.op,
                        e.status,
                        format!("{}\n{output}", e.message),
                    ));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_build_context_is_the_dockerfile_alone() {
        let tar = dockerfile_context("FROM scratch\n").unwrap();
        let mut archive = tar::Archive::new(&tar[..]);
        let entries: Vec<(String, u32)> = archive
            .entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (
                    e.path().unwrap().display().to_string(),
                    e.header().mode().unwrap(),
                )
            })
            .collect();
        assert_eq!(entries, [("Dockerfile".to_string(), 0o644)]);
    }
}
