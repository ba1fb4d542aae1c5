//! The Docker Swarm provisioner (`provisioner = "swarm"`): the same [`Stack`] as the docker
//! provisioner, applied as Swarm objects through the engine's API (bollard), for more than one
//! host.
//!
//! * One attachable overlay network per project (the Stack's network name), one Swarm service per
//!   iac service named like the docker provisioner's app container (`<project>-<svc>`), with the
//!   service name as its network alias, `endpoint_mode: dnsrr` and `replicas` from the repos file.
//! * A task is one container ([`spec`]): `iac-agent` supervises Envoy and the app side by side
//!   (Swarm cannot share a network namespace between containers); the image is the app image plus
//!   Envoy ([`image`]). With `[swarm] registry` set the pod image is pushed there and the service
//!   runs it by digest (`HOST:PORT/<repo>@sha256:…`), so every node pulls the same image; without
//!   it only a single-node swarm is accepted (its engine has the images it built). Envoy's config
//!   and the certificates are Swarm configs/secrets named by content ([`objects`]): a change makes
//!   new ones and updates the service; ones no service uses any more are removed after the
//!   deploy.
//! * Every object carries `iac.project`, `iac.service`, `iac.managed-by=iac` (and services
//!   `iac.spec-hash`); only objects with the project's labels are ever looked at.
//! * Inbound 15000 is published in host mode on a port the engine picks per task; the control
//!   plane reaches each task at its node's address and that port ([`tasks`]).
//! * Updates are Swarm's own rolling updates, gated by health: a HEALTHCHECK asks the agent
//!   (`iac-agent --probe`), `update_config` is start-first with `failure_action: rollback` and a
//!   monitor window; a rolled-back service is reported [`Action::RolledBack`]. After create or
//!   update iac itself proves every task SERVING over mTLS through its published port (the
//!   `gate`). An equal spec hash leaves the service untouched (a no-op redeploy updates nothing).
//! * There is no pod packet filter on Swarm: installing one needs NET_ADMIN in the task's network
//!   namespace, i.e. in the one container that also runs the app (see docs/limitations.md).
//!
//! Serializing deploys of one project is the caller's job (the `Deployer`'s project lock).

pub mod image;
pub mod objects;
pub mod spec;
pub mod tasks;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bollard::Docker;
use bollard::models::{NetworkCreateRequest, Service, ServiceUpdateStatusStateEnum};
use bollard::query_parameters::{
    InspectServiceOptions, ListContainersOptionsBuilder, ListServicesOptionsBuilder,
    UpdateServiceOptionsBuilder,
};
use futures::FutureExt;
use futures::StreamExt;
use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};

use iac_core::stack::{LABEL_MANAGED, LABEL_PROJECT, LABEL_ROLE, LABEL_SERVICE, LABEL_SPEC_HASH};
use iac_core::{
    Action, Applied, AppliedService, Change, Events, HealthProber, HealthReport, MeshPorts,
    NetworkSpec, ProbeTarget, ProjectName, ProvisionError, Provisioner, RunningService,
    ServiceName, ServiceStack, Stack, Stage,
};

use super::{ContainerLimits, MANAGED_BY, with_limits};
use crate::engine::{BollardRegistry, DockerEngine, RegistryAuth};
use crate::secret::Secret;
use objects::{Kind, Objects, project_filter};
use spec::{PodInput, PodObjects, SwarmSettings, service_name};

/// `[swarm]` in `iac.toml`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SwarmConfig {
    /// How long a task of a rolling update is watched before the update moves on; a task failing
    /// within it rolls the update back (`"5s"`).
    #[serde(with = "iac_core::duration")]
    pub update_monitor: Duration,
    /// Time between SIGTERM and SIGKILL when a task stops.
    #[serde(with = "iac_core::duration")]
    pub stop_grace: Duration,
    /// HEALTHCHECK: how often the agent is asked, how long one answer may take, after how many
    /// misses a task is unhealthy, and how long after the start misses do not count.
    #[serde(with = "iac_core::duration")]
    pub health_interval: Duration,
    /// How long one HEALTHCHECK answer may take.
    #[serde(with = "iac_core::duration")]
    pub health_timeout: Duration,
    /// Misses in a row after which a task is unhealthy.
    pub health_retries: u32,
    /// How long after a task starts its misses do not count.
    #[serde(with = "iac_core::duration")]
    pub health_start_period: Duration,
    /// How long a create or update may take to converge (all tasks running and healthy, or the
    /// update rolled back) before the service is reported failed.
    #[serde(with = "iac_core::duration")]
    pub converge_deadline: Duration,
    /// How long iac's own mTLS check of each task may take (iac sets it from `health_deadline`).
    #[serde(with = "iac_core::duration")]
    pub health_deadline: Duration,
    /// Services applied at the same time.
    pub parallelism: usize,
    /// cgroup limits; a task's container gets the app's and the sidecar's together.
    pub limits: ContainerLimits,
    /// `HOST:PORT` of a registry every node can pull from: pod images are pushed there and
    /// services run them by digest. Without it only a single-node swarm is accepted (its engine
    /// has the images it built).
    pub registry: Option<String>,
    /// Login for `registry` (both or neither): used for the push, on the manager only — unless
    /// no pull login is set, when it is also what the nodes get.
    pub registry_username: Option<String>,
    /// The push login's password (redacted when printed).
    pub registry_password: Option<Secret>,
    /// A read-only login for `registry` (both or neither): sent with service creates and
    /// updates so every node can pull, in place of the push login. Which rights a login has is
    /// the registry's to enforce.
    pub registry_pull_username: Option<String>,
    /// The pull login's password (redacted when printed).
    pub registry_pull_password: Option<Secret>,
}

impl Default for SwarmConfig {
    fn default() -> Self {
        let s = SwarmSettings::default();
        SwarmConfig {
            update_monitor: s.update_monitor,
            stop_grace: s.stop_grace,
            health_interval: s.health_interval,
            health_timeout: s.health_timeout,
            health_retries: s.health_retries,
            health_start_period: s.health_start_period,
            converge_deadline: Duration::from_secs(180),
            health_deadline: Duration::from_secs(60),
            parallelism: 4,
            limits: ContainerLimits::default(),
            registry: None,
            registry_username: None,
            registry_password: None,
            registry_pull_username: None,
            registry_pull_password: None,
        }
    }
}

impl SwarmConfig {
    /// The settings that go into every service spec (and its hash).
    pub fn settings(&self) -> SwarmSettings {
        SwarmSettings {
            update_monitor: self.update_monitor,
            stop_grace: self.stop_grace,
            health_interval: self.health_interval,
            health_timeout: self.health_timeout,
            health_retries: self.health_retries,
            health_start_period: self.health_start_period,
            registry: self.registry.clone(),
        }
    }

    /// The registry login (the push login), when one is configured.
    pub fn registry_auth(&self) -> Option<RegistryAuth> {
        login(
            &self.registry,
            &self.registry_username,
            &self.registry_password,
        )
    }

    /// The login every node gets with service creates and updates: the pull login when one is
    /// set; otherwise the push login, with a warning to show (the nodes then hold a credential
    /// that can push).
    pub fn node_auth(&self) -> (Option<RegistryAuth>, Option<String>) {
        if let Some(pull) = login(
            &self.registry,
            &self.registry_pull_username,
            &self.registry_pull_password,
        ) {
            return (Some(pull), None);
        }
        match self.registry_auth() {
            Some(push) => {
                let warning = format!(
                    "every node of the swarm gets registry {}'s login {:?}, which can push; set \
                     [swarm] registry_pull_username/registry_pull_password to a read-only login \
                     so nodes get only that",
                    push.server, push.username
                );
                (Some(push), Some(warning))
            }
            None => (None, None),
        }
    }

    /// A config error names the key.
    pub fn validate(&self) -> Result<(), String> {
        self.limits.validate("swarm")?;
        if self.health_retries == 0 {
            return Err("swarm.health_retries = 0: expected at least 1".into());
        }
        for (key, d) in [
            ("health_interval", self.health_interval),
            ("health_timeout", self.health_timeout),
        ] {
            // The engine refuses HEALTHCHECK durations under 1 ms.
            if d < Duration::from_millis(1) {
                return Err(format!("swarm.{key} = {d:?}: expected at least 1ms"));
            }
        }
        if let Some(r) = &self.registry
            && (r.is_empty() || r.contains('/') || r.contains(char::is_whitespace))
        {
            return Err(format!(
                "swarm.registry = {r:?}: expected HOST:PORT of a registry (no scheme, no path)"
            ));
        }
        match (
            &self.registry,
            self.registry_username.is_some(),
            self.registry_password.is_some(),
        ) {
            (None, true, _) | (None, _, true) => {
                return Err(
                    "swarm.registry_username/registry_password are set but swarm.registry is not; expected registry = \"HOST:PORT\" they log in to"
                        .into(),
                );
            }
            (Some(_), true, false) => {
                return Err(
                    "swarm.registry_username is set without swarm.registry_password; expected both or neither"
                        .into(),
                );
            }
            (Some(_), false, true) => {
                return Err(
                    "swarm.registry_password is set without swarm.registry_username; expected both or neither"
                        .into(),
                );
            }
            _ => {}
        }
        if self.registry_username.as_deref() == Some("") {
            return Err(
                "swarm.registry_username is empty; expected a user name or no login at all".into(),
            );
        }
        match (
            &self.registry,
            self.registry_pull_username.as_deref(),
            self.registry_pull_password.is_some(),
        ) {
            (None, Some(_), _) | (None, _, true) => Err(
                "swarm.registry_pull_username/registry_pull_password are set but swarm.registry is not; expected registry = \"HOST:PORT\" they log in to"
                    .into(),
            ),
            (Some(_), Some(_), false) => Err(
                "swarm.registry_pull_username is set without swarm.registry_pull_password; expected both or neither"
                    .into(),
            ),
            (Some(_), None, true) => Err(
                "swarm.registry_pull_password is set without swarm.registry_pull_username; expected both or neither"
                    .into(),
            ),
            (_, Some(""), _) => Err(
                "swarm.registry_pull_username is empty; expected a user name or no pull login at all"
                    .into(),
            ),
            _ => Ok(()),
        }
    }
}

/// A login for `registry` when all three parts are there.
fn login(
    registry: &Option<String>,
    username: &Option<String>,
    password: &Option<Secret>,
) -> Option<RegistryAuth> {
    match (registry, username, password) {
        (Some(server), Some(username), Some(password)) => Some(RegistryAuth {
            server: server.clone(),
            username: username.clone(),
            password: password.clone(),
        }),
        _ => None,
    }
}

/// A failed engine request as a provisioning error naming what was attempted.
pub(crate) fn engine_error(op: &str, e: bollard::errors::Error) -> ProvisionError {
    ProvisionError::Engine(format!("{op}: {e}"))
}

fn is_not_found(e: &bollard::errors::Error) -> bool {
    matches!(
        e,
        bollard::errors::Error::DockerResponseServerError {
            status_code: 404,
            ..
        }
    )
}

/// The Swarm provisioner over one engine connection (a swarm manager).
#[derive(Clone)]
pub struct SwarmProvisioner {
    docker: Docker,
    config: SwarmConfig,
    /// Pushes pod images to `config.registry` (unused without one).
    registry: BollardRegistry,
}

impl std::fmt::Debug for SwarmProvisioner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SwarmProvisioner")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// What an apply decided for one service before acting.
struct Existing {
    id: String,
    hash: Option<String>,
    version: u64,
    update_started: Option<String>,
}

fn existing(s: &Service) -> Option<(ServiceName, Existing)> {
    let spec = s.spec.as_ref()?;
    let labels = spec.labels.as_ref()?;
    let name = ServiceName::new(labels.get(LABEL_SERVICE)?).ok()?;
    Some((
        name,
        Existing {
            id: s.id.clone()?,
            hash: labels.get(LABEL_SPEC_HASH).cloned(),
            version: s.version.as_ref().and_then(|v| v.index).unwrap_or(0),
            update_started: s
                .update_status
                .as_ref()
                .and_then(|u| u.started_at.as_ref())
                .map(|t| format!("{t:?}")),
        },
    ))
}

/// Config and secret names a service spec mounts.
fn mounted_objects(s: &Service) -> impl Iterator<Item = String> + '_ {
    let c = s
        .spec
        .as_ref()
        .and_then(|s| s.task_template.as_ref())
        .and_then(|t| t.container_spec.as_ref());
    let configs = c
        .and_then(|c| c.configs.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|x| x.config_name.clone());
    let secrets = c
        .and_then(|c| c.secrets.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|x| x.secret_name.clone());
    configs.chain(secrets)
}

impl SwarmProvisioner {
    /// Uses the engine connection the image builder uses (the swarm manager).
    pub fn new(engine: &DockerEngine, config: SwarmConfig) -> Self {
        SwarmProvisioner {
            docker: engine.docker().clone(),
            registry: BollardRegistry::new(engine, config.registry_auth()),
            config,
        }
    }

    /// The `[swarm]` settings it was made with.
    pub fn config(&self) -> &SwarmConfig {
        &self.config
    }

    /// `stack` with the configured limits filled in; a bad `[swarm]` section is refused here.
    fn effective(&self, stack: &Stack) -> Result<Stack, ProvisionError> {
        self.config.validate().map_err(ProvisionError::Invalid)?;
        Ok(with_limits(stack, &self.config.limits))
    }

    /// The engine must be a swarm manager; several nodes need a registry.
    async fn check_swarm(&self) -> Result<(), ProvisionError> {
        let info = self
            .docker
            .info()
            .await
            .map_err(|e| engine_error("reading the engine's info", e))?;
        let swarm = info.swarm.unwrap_or_default();
        if swarm.control_available != Some(true) {
            return Err(ProvisionError::Engine(format!(
                "the engine is not a swarm manager (swarm state: {}); expected `docker swarm init` (or a manager's address in [docker] docker_host) for provisioner = \"swarm\"",
                swarm
                    .local_node_state
                    .map(|s| s.to_string())
                    .unwrap_or_else(|| "unknown".into())
            )));
        }
        let nodes = swarm.nodes.unwrap_or(1);
        if nodes > 1 && self.config.registry.is_none() {
            return Err(ProvisionError::Engine(format!(
                "this swarm has {nodes} nodes and [swarm] registry is not set: images built here exist on this node only; expected registry = \"HOST:PORT\" that every node can pull from"
            )));
        }
        Ok(())
    }

    /// The project's overlay network: reused when iac made it, created otherwise.
    async fn ensure_network(
        &self,
        net: &NetworkSpec,
        project: &ProjectName,
        events: &Events,
    ) -> Result<(), ProvisionError> {
        match self
            .docker
            .inspect_network(
                &net.name,
                None::<bollard::query_parameters::InspectNetworkOptions>,
            )
            .await
        {
            Ok(n) => {
                let labels = n.labels.unwrap_or_default();
                let ours = labels.get(LABEL_MANAGED).map(String::as_str) == Some(MANAGED_BY)
                    && labels.get(LABEL_PROJECT).map(String::as_str) == Some(project.as_str());
                let driver = n.driver.unwrap_or_default();
                if ours && driver == "overlay" {
                    return Ok(());
                }
                Err(ProvisionError::Conflict(format!(
                    "network {} exists as a {driver} network{}; expected iac's overlay network for project {project} (remove it first, e.g. `iac destroy --provisioner docker` when the docker provisioner made it)",
                    net.name,
                    if ours {
                        " made by iac"
                    } else {
                        " iac did not make"
                    }
                )))
            }
            Err(e) if is_not_found(&e) => {
                let mut labels: HashMap<String, String> = net.labels.clone().into_iter().collect();
                labels.insert(LABEL_MANAGED.into(), MANAGED_BY.into());
                labels.insert(LABEL_PROJECT.into(), project.to_string());
                self.docker
                    .create_network(NetworkCreateRequest {
                        name: net.name.clone(),
                        driver: Some("overlay".into()),
                        attachable: Some(true),
                        labels: Some(labels),
                        ..Default::default()
                    })
                    .await
                    .map_err(|e| {
                        engine_error(&format!("creating overlay network {}", net.name), e)
                    })?;
                events.info(
                    Stage::Provision,
                    format!("created overlay network {}", net.name),
                );
                Ok(())
            }
            Err(e) => Err(engine_error(&format!("inspecting network {}", net.name), e)),
        }
    }

    /// The project's services.
    async fn services(&self, project: &ProjectName) -> Result<Vec<Service>, ProvisionError> {
        let mut filters = project_filter(project);
        filters
            .get_mut("label")
            .expect("project_filter filters by label")
            .push(format!("{LABEL_ROLE}=service"));
        self.docker
            .list_services(Some(
                ListServicesOptionsBuilder::default()
                    .filters(&filters)
                    .build(),
            ))
            .await
            .map_err(|e| engine_error("listing services", e))
    }

    async fn inspect(&self, id: &str) -> Result<Service, ProvisionError> {
        self.docker
            .inspect_service(id, None::<InspectServiceOptions>)
            .await
            .map_err(|e| engine_error(&format!("inspecting service {id}"), e))
    }

    /// Waits until `replicas` tasks run (healthy: Swarm reports `running` only then).
    async fn wait_running(
        &self,
        id: &str,
        replicas: u32,
        started: Instant,
    ) -> Result<tasks::TaskView, String> {
        let inbound = MeshPorts::default().inbound;
        loop {
            let view = tasks::observe(&self.docker, id, inbound)
                .await
                .map_err(|e| e.to_string())?;
            if view.running.len() >= replicas as usize
                && view.running.iter().all(|t| t.addr.is_some())
            {
                return Ok(view);
            }
            if started.elapsed() > self.config.converge_deadline {
                return Err(format!(
                    "{} of {replicas} task(s) running and healthy after {:?}{}",
                    view.running.len(),
                    self.config.converge_deadline,
                    view.last_error
                        .map(|e| format!("; last failure: {e}"))
                        .unwrap_or_default()
                ));
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Waits for the rolling update started after `before` to end: `Ok(None)` when it completed,
    /// `Ok(Some(message))` when Swarm rolled it back, `Err` when it paused or did not end in time.
    async fn wait_update(
        &self,
        id: &str,
        before: &Option<String>,
        started: Instant,
    ) -> Result<Option<String>, String> {
        loop {
            let s = self.inspect(id).await.map_err(|e| e.to_string())?;
            if let Some(u) = &s.update_status {
                let this = u.started_at.as_ref().map(|t| format!("{t:?}"));
                let message = u.message.clone().unwrap_or_default();
                if this != *before {
                    match u.state {
                        Some(ServiceUpdateStatusStateEnum::COMPLETED) => return Ok(None),
                        Some(ServiceUpdateStatusStateEnum::ROLLBACK_COMPLETED) => {
                            return Ok(Some(message));
                        }
                        Some(
                            ServiceUpdateStatusStateEnum::PAUSED
                            | ServiceUpdateStatusStateEnum::ROLLBACK_PAUSED,
                        ) => {
                            return Err(format!(
                                "the rolling update paused: {message} (`docker service inspect {id}`)"
                            ));
                        }
                        _ => {}
                    }
                }
            }
            if started.elapsed() > self.config.converge_deadline {
                return Err(format!(
                    "the rolling update did not finish within {:?}",
                    self.config.converge_deadline
                ));
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Proves every running task SERVING over mTLS through its published port; the first
    /// failing report, or the first task's report and endpoint.
    async fn prove(
        &self,
        svc: &ServiceName,
        view: &tasks::TaskView,
        gate: &Arc<dyn HealthProber>,
        events: &Events,
    ) -> (Option<std::net::SocketAddr>, Option<HealthReport>) {
        let mut first = None;
        let mut endpoint = None;
        for t in &view.running {
            let Some(addr) = t.addr else { continue };
            events.info(
                Stage::Health,
                format!("task {} at {addr}: probing over mTLS", t.slot),
            );
            let h = gate
                .check(&ProbeTarget {
                    service: svc.clone(),
                    addr,
                    deadline: self.config.health_deadline,
                })
                .await;
            if !h.is_serving() {
                return (Some(addr), Some(h));
            }
            endpoint.get_or_insert(addr);
            first.get_or_insert(h);
        }
        (endpoint, first)
    }

    #[allow(clippy::too_many_arguments)]
    async fn apply_service(
        &self,
        project: &ProjectName,
        network: &str,
        svc: &ServiceStack,
        current: Option<&Existing>,
        existing_objects: &[(Kind, String, String)],
        gate: Arc<dyn HealthProber>,
        events: &Events,
    ) -> AppliedService {
        let ev = events.for_service(&svc.service);
        let started = Instant::now();
        let result = self
            .apply_service_inner(
                project,
                network,
                svc,
                current,
                existing_objects,
                &gate,
                &ev,
                started,
            )
            .await;
        match result {
            Ok(a) => a,
            Err((action, e)) => {
                ev.error(Stage::Provision, e.clone());
                AppliedService {
                    edge: None,
                    service: svc.service.clone(),
                    action,
                    endpoint: None,
                    health: None,
                    error: Some(e),
                }
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn apply_service_inner(
        &self,
        project: &ProjectName,
        network: &str,
        svc: &ServiceStack,
        current: Option<&Existing>,
        existing_objects: &[(Kind, String, String)],
        gate: &Arc<dyn HealthProber>,
        ev: &Events,
        started: Instant,
    ) -> Result<AppliedService, (Action, String)> {
        let settings = self.config.settings();
        let hash = spec::spec_hash(svc, &settings, &svc.envoy.image);
        let action = match current {
            None => Action::Create,
            Some(c) if c.hash.as_deref() == Some(hash.as_str()) => Action::Unchanged,
            Some(_) => Action::Replace,
        };
        let fail = |e: String| (action, e);
        let inbound = MeshPorts::default().inbound;
        if let (Action::Unchanged, Some(c)) = (action, current) {
            ev.info(Stage::Provision, format!("unchanged (spec hash {hash})"));
            let view = tasks::observe(&self.docker, &c.id, inbound)
                .await
                .map_err(|e| fail(e.to_string()))?;
            return Ok(AppliedService {
                edge: None,
                service: svc.service.clone(),
                action,
                endpoint: view.running.first().and_then(|t| t.addr),
                health: None,
                error: None,
            });
        }

        // The task's files: the same Envoy config and certificates the docker provisioner mounts.
        let sources = spec::pod_file_sources(svc).map_err(fail)?;
        let store = Objects {
            docker: &self.docker,
            project,
        };
        let mut refs = BTreeMap::new();
        for (role, path) in &sources {
            let data = tokio::fs::read(path)
                .await
                .map_err(|e| fail(format!("{}: {e}", path.display())))?;
            let kind = if *role == "envoy-config" {
                Kind::Config
            } else {
                Kind::Secret
            };
            let (r, created) = store
                .ensure(existing_objects, kind, &svc.service, role, &data)
                .await
                .map_err(|e| fail(e.to_string()))?;
            if created {
                ev.info(
                    Stage::Provision,
                    format!("created {} {}", kind.as_str(), r.name),
                );
            }
            refs.insert(*role, r);
        }
        let objects = PodObjects {
            envoy_config: refs.remove("envoy-config").expect("four roles"),
            ca: refs.remove("ca").expect("four roles"),
            cert: refs.remove("cert").expect("four roles"),
            key: refs.remove("key").expect("four roles"),
        };
        let (image, image_cmd) =
            image::ensure_pod_image(&self.docker, &svc.app.image, &svc.envoy.image, ev)
                .await
                .map_err(|e| fail(e.to_string()))?;
        let image = match &self.config.registry {
            Some(registry) => image::publish(&self.registry, registry, &image, ev)
                .await
                .map_err(|e| fail(e.to_string()))?,
            None => image,
        };
        // Sent with create and update so every node can pull from a registry that needs a login:
        // the pull login, never the push login when a pull login is set.
        let (node_auth, warning) = self.config.node_auth();
        if let Some(w) = warning {
            ev.warn(Stage::Provision, w);
        }
        let auth = node_auth.as_ref().map(RegistryAuth::credentials);
        let spec = spec::service_spec(&PodInput {
            project,
            svc,
            network,
            image: &image,
            image_cmd: &image_cmd,
            objects: &objects,
            settings: &settings,
            hash: &hash,
        })
        .map_err(fail)?;
        let name = service_name(project, &svc.service);

        match current {
            None => {
                let created = self
                    .docker
                    .create_service(spec, auth)
                    .await
                    .map_err(|e| fail(format!("creating service {name}: {e}")))?;
                let id = created.id.unwrap_or_else(|| name.clone());
                ev.info(
                    Stage::Provision,
                    format!(
                        "created service {name} ({} replica(s), spec hash {hash}); waiting for its tasks to be healthy",
                        svc.replicas
                    ),
                );
                let view = match self.wait_running(&id, svc.replicas, started).await {
                    Ok(v) => v,
                    Err(e) => {
                        // A service that never became healthy is not left restarting forever.
                        let _ = self.docker.delete_service(&id).await;
                        return Err(fail(format!("service {name} removed again: {e}")));
                    }
                };
                let (endpoint, health) = self.prove(&svc.service, &view, gate, ev).await;
                let error = health
                    .as_ref()
                    .filter(|h| !h.is_serving())
                    .map(|h| format!("a task is not serving over mTLS: {}", h.detail));
                Ok(AppliedService {
                    edge: None,
                    service: svc.service.clone(),
                    action,
                    endpoint,
                    health,
                    error,
                })
            }
            Some(c) => {
                let opts = UpdateServiceOptionsBuilder::default()
                    .version(i32::try_from(c.version).unwrap_or(i32::MAX))
                    .build();
                self.docker
                    .update_service(&c.id, spec, opts, auth)
                    .await
                    .map_err(|e| fail(format!("updating service {name}: {e}")))?;
                ev.info(
                    Stage::Provision,
                    format!(
                        "rolling update of {name} to spec hash {hash} (start-first, health-gated, rollback on failure)"
                    ),
                );
                match self.wait_update(&c.id, &c.update_started, started).await {
                    Ok(None) => {}
                    Ok(Some(why)) => {
                        ev.warn(Stage::Provision, format!("Swarm rolled {name} back: {why}"));
                        let view = tasks::observe(&self.docker, &c.id, inbound)
                            .await
                            .map_err(|e| fail(e.to_string()))?;
                        return Ok(AppliedService {
                            edge: None,
                            service: svc.service.clone(),
                            action: Action::RolledBack,
                            endpoint: view.running.first().and_then(|t| t.addr),
                            health: Some(HealthReport::new(
                                svc.service.clone(),
                                iac_core::HealthState::NotServing,
                                None,
                                format!(
                                    "Swarm rolled the update back: {why}{}",
                                    view.last_error
                                        .map(|e| format!(" ({e})"))
                                        .unwrap_or_default()
                                ),
                                0,
                            )),
                            error: None,
                        });
                    }
                    Err(e) => return Err(fail(format!("service {name}: {e}"))),
                }
                let view = self
                    .wait_running(&c.id, svc.replicas, started)
                    .await
                    .map_err(|e| fail(format!("service {name}: {e}")))?;
                let (endpoint, health) = self.prove(&svc.service, &view, gate, ev).await;
                let error = health
                    .as_ref()
                    .filter(|h| !h.is_serving())
                    .map(|h| format!("a task is not serving over mTLS: {}", h.detail));
                Ok(AppliedService {
                    edge: None,
                    service: svc.service.clone(),
                    action,
                    endpoint,
                    health,
                    error,
                })
            }
        }
    }

    /// Removes a service and waits until its tasks are gone (their containers hold the network
    /// and the objects).
    async fn remove_service(&self, id: &str, name: &str) -> Result<(), ProvisionError> {
        match self.docker.delete_service(id).await {
            Ok(()) => {}
            Err(e) if is_not_found(&e) => return Ok(()),
            Err(e) => return Err(engine_error(&format!("removing service {name}"), e)),
        }
        // On this node, the task containers go a moment after the service (they hold the
        // network and the mounted objects): wait for them, within the stop grace and a margin.
        let filters = HashMap::from([(
            "label".to_string(),
            vec![format!("com.docker.swarm.service.id={id}")],
        )]);
        let deadline = Instant::now() + self.config.stop_grace + Duration::from_secs(30);
        loop {
            let left = self
                .docker
                .list_containers(Some(
                    ListContainersOptionsBuilder::default()
                        .all(true)
                        .filters(&filters)
                        .build(),
                ))
                .await
                .map_err(|e| engine_error("listing containers", e))?;
            if left.is_empty() {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(ProvisionError::Engine(format!(
                    "service {name} removed, but {} of its task containers are still there after {:?}",
                    left.len(),
                    self.config.stop_grace + Duration::from_secs(30)
                )));
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }

    /// Removes the project's configs and secrets no current service mounts.
    async fn prune_objects(
        &self,
        project: &ProjectName,
        events: &Events,
    ) -> Result<Vec<String>, ProvisionError> {
        let used: BTreeSet<String> = self
            .services(project)
            .await?
            .iter()
            .flat_map(|s| mounted_objects(s).collect::<Vec<_>>())
            .collect();
        let removed = Objects {
            docker: &self.docker,
            project,
        }
        .prune(&used)
        .await?;
        for r in &removed {
            events.debug(Stage::Provision, format!("removed unused {r}"));
        }
        Ok(removed)
    }
}

#[async_trait]
impl Provisioner for SwarmProvisioner {
    fn name(&self) -> &'static str {
        "swarm"
    }

    async fn diff(&self, stack: &Stack) -> Result<Vec<Change>, ProvisionError> {
        let stack = self.effective(stack)?;
        let settings = self.config.settings();
        let current: HashMap<ServiceName, Existing> = self
            .services(&stack.project)
            .await?
            .iter()
            .filter_map(existing)
            .collect();
        let mut out = Vec::new();
        for s in &stack.services {
            let hash = spec::spec_hash(s, &settings, &s.envoy.image);
            let (action, reason) = match current.get(&s.service) {
                None => (Action::Create, "no such Swarm service".to_string()),
                Some(c) if c.hash.as_deref() == Some(hash.as_str()) => {
                    (Action::Unchanged, format!("spec hash {hash}"))
                }
                Some(c) => (
                    Action::Replace,
                    format!(
                        "spec hash {} → {hash}",
                        c.hash.as_deref().unwrap_or("(none)")
                    ),
                ),
            };
            out.push(Change {
                service: s.service.clone(),
                action,
                reason,
            });
        }
        for name in current.keys() {
            if stack.services.iter().all(|s| &s.service != name) && !stack.keep.contains(name) {
                out.push(Change {
                    service: name.clone(),
                    action: Action::Remove,
                    reason: "not in the repos file".into(),
                });
            }
        }
        Ok(out)
    }

    async fn apply(
        &self,
        stack: &Stack,
        gate: Arc<dyn HealthProber>,
        events: &Events,
    ) -> Result<Applied, ProvisionError> {
        let stack = &self.effective(stack)?;
        self.check_swarm().await?;
        let project = &stack.project;
        self.ensure_network(&stack.network, project, events).await?;
        let current: HashMap<ServiceName, Existing> = self
            .services(project)
            .await?
            .iter()
            .filter_map(existing)
            .collect();
        let existing_objects = Objects {
            docker: &self.docker,
            project,
        }
        .list()
        .await?;
        let work: Vec<BoxFuture<'_, AppliedService>> = stack
            .services
            .iter()
            .map(|s| {
                self.apply_service(
                    project,
                    &stack.network.name,
                    s,
                    current.get(&s.service),
                    &existing_objects,
                    gate.clone(),
                    events,
                )
                .boxed()
            })
            .collect();
        let mut services: Vec<AppliedService> = futures::stream::iter(work)
            .buffered(self.config.parallelism.max(1))
            .collect()
            .await;
        let mut applied = Applied::default();
        for (name, c) in &current {
            if stack.services.iter().any(|s| &s.service == name) {
                continue;
            }
            if stack.keep.contains(name) {
                events
                    .for_service(name)
                    .info(Stage::Provision, "left as it is (its build failed)");
                services.push(AppliedService {
                    edge: None,
                    service: name.clone(),
                    action: Action::Unchanged,
                    endpoint: None,
                    health: None,
                    error: None,
                });
                continue;
            }
            let svc_name = service_name(project, name);
            let r = self.remove_service(&c.id, &svc_name).await;
            let error = r.err().map(|e| e.to_string());
            if error.is_none() {
                events
                    .for_service(name)
                    .info(Stage::Provision, format!("removed service {svc_name}"));
                applied.removed.push(name.clone());
            }
            services.push(AppliedService {
                edge: None,
                service: name.clone(),
                action: Action::Remove,
                endpoint: None,
                health: None,
                error,
            });
        }
        self.prune_objects(project, events).await?;
        applied.services = services;
        Ok(applied)
    }

    async fn destroy(
        &self,
        project: &ProjectName,
        events: &Events,
    ) -> Result<Vec<String>, ProvisionError> {
        let mut removed = Vec::new();
        for s in self.services(project).await? {
            let Some(id) = s.id.clone() else { continue };
            let name = s
                .spec
                .as_ref()
                .and_then(|s| s.name.clone())
                .unwrap_or(id.clone());
            self.remove_service(&id, &name).await?;
            events.info(Stage::Destroy, format!("removed service {name}"));
            removed.push(format!("service {name}"));
        }
        for r in (Objects {
            docker: &self.docker,
            project,
        })
        .prune(&BTreeSet::new())
        .await?
        {
            events.info(Stage::Destroy, format!("removed {r}"));
            removed.push(r);
        }
        let filters = project_filter(project);
        let networks = self
            .docker
            .list_networks(Some(
                bollard::query_parameters::ListNetworksOptionsBuilder::default()
                    .filters(&filters)
                    .build(),
            ))
            .await
            .map_err(|e| engine_error("listing networks", e))?;
        for n in networks {
            let (Some(id), name) = (n.id, n.name.unwrap_or_default()) else {
                continue;
            };
            if n.driver.as_deref() != Some("overlay") {
                continue;
            }
            // The last task's endpoint may take a moment to leave the network.
            let mut tries = 0;
            loop {
                match self.docker.remove_network(&id).await {
                    Ok(()) => {
                        // The node drops its copy of a swarm network a moment after the manager.
                        for _ in 0..40 {
                            match self
                                .docker
                                .inspect_network(
                                    &id,
                                    None::<bollard::query_parameters::InspectNetworkOptions>,
                                )
                                .await
                            {
                                Err(e) if is_not_found(&e) => break,
                                _ => tokio::time::sleep(Duration::from_millis(250)).await,
                            }
                        }
                        events.info(Stage::Destroy, format!("removed network {name}"));
                        removed.push(format!("network {name}"));
                        break;
                    }
                    Err(e) if is_not_found(&e) => break,
                    Err(e) if tries < 20 => {
                        tries += 1;
                        tracing::debug!("network {name} not removable yet: {e}");
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                    Err(e) => return Err(engine_error(&format!("removing network {name}"), e)),
                }
            }
        }
        Ok(removed)
    }

    async fn running(&self, project: &ProjectName) -> Result<Vec<RunningService>, ProvisionError> {
        let inbound = MeshPorts::default().inbound;
        let mut out = Vec::new();
        for s in self.services(project).await? {
            let Some((service, e)) = existing(&s) else {
                continue;
            };
            let want = s
                .spec
                .as_ref()
                .and_then(|s| s.mode.as_ref())
                .and_then(|m| m.replicated.as_ref())
                .and_then(|r| r.replicas)
                .unwrap_or(1);
            let view = tasks::observe(&self.docker, &e.id, inbound).await?;
            let image = s
                .spec
                .as_ref()
                .and_then(|s| s.task_template.as_ref())
                .and_then(|t| t.container_spec.as_ref())
                .and_then(|c| c.image.clone())
                .unwrap_or_default();
            out.push(RunningService {
                edge: None,
                service,
                endpoint: view.running.first().and_then(|t| t.addr),
                spec_hash: e.hash.unwrap_or_default(),
                image,
                state: format!("{} of {want} task(s) running", view.running.len()),
            });
        }
        out.sort_by(|a, b| a.service.cmp(&b.service));
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_validation_names_the_key() {
        SwarmConfig::default().validate().unwrap();
        let bad = SwarmConfig {
            health_retries: 0,
            ..Default::default()
        };
        assert!(bad.validate().unwrap_err().contains("swarm.health_retries"));
        let bad = SwarmConfig {
            registry: Some("http://reg:5000/x".into()),
            ..Default::default()
        };
        let e = bad.validate().unwrap_err();
        assert!(
            e.contains("swarm.registry") && e.contains("HOST:PORT"),
            "{e}"
        );
        let bad = SwarmConfig {
            limits: ContainerLimits {
                app_pids: -1,
                ..Default::default()
            },
            ..Default::default()
        };
        assert!(
            bad.validate()
                .unwrap_err()
                .contains("swarm.limits.app_pids")
        );
    }

    #[test]
    fn a_registry_login_needs_both_halves_and_a_registry() {
        let with = |registry: Option<&str>, user: Option<&str>, pass: Option<&str>| SwarmConfig {
            registry: registry.map(String::from),
            registry_username: user.map(String::from),
            registry_password: pass.map(Secret::from),
            ..Default::default()
        };
        let ok = with(Some("reg:5000"), Some("ci"), Some("pw"));
        ok.validate().unwrap();
        let auth = ok.registry_auth().unwrap();
        assert_eq!(
            (auth.server.as_str(), auth.username.as_str()),
            ("reg:5000", "ci")
        );
        assert_eq!(auth.password.expose(), "pw");
        with(Some("reg:5000"), None, None).validate().unwrap();
        assert_eq!(with(Some("reg:5000"), None, None).registry_auth(), None);
        for (cfg, want) in [
            (with(None, Some("ci"), Some("pw")), "swarm.registry is not"),
            (
                with(Some("reg:5000"), Some("ci"), None),
                "without swarm.registry_password",
            ),
            (
                with(Some("reg:5000"), None, Some("pw")),
                "without swarm.registry_username",
            ),
            (
                with(Some("reg:5000"), Some(""), Some("pw")),
                "swarm.registry_username is empty",
            ),
        ] {
            let e = cfg.validate().unwrap_err();
            assert!(e.contains(want), "{e}");
        }
        // The password never shows (`iac config show` serializes the config).
        let shown = serde_json::to_string(&ok).unwrap();
        assert!(
            !shown.contains("\"pw\"") && shown.contains("[redacted]"),
            "{shown}"
        );
        assert!(!format!("{ok:?}").contains("\"pw\""));
        // The registry is part of every service's spec hash; the login is not.
        assert_eq!(ok.settings().registry.as_deref(), Some("reg:5000"));
        assert_eq!(ok.settings(), with(Some("reg:5000"), None, None).settings());
    }

    #[test]
    fn nodes_get_the_pull_login_and_the_push_login_only_with_a_warning() {
        let cfg = |pull: Option<(&str, &str)>| SwarmConfig {
            registry: Some("reg:5000".into()),
            registry_username: Some("pusher".into()),
            registry_password: Some(Secret::from("push-pw")),
            registry_pull_username: pull.map(|p| p.0.to_string()),
            registry_pull_password: pull.map(|p| Secret::from(p.1)),
            ..Default::default()
        };
        let with_pull = cfg(Some(("puller", "pull-pw")));
        with_pull.validate().unwrap();
        let (auth, warning) = with_pull.node_auth();
        let auth = auth.unwrap();
        assert_eq!(
            (auth.server.as_str(), auth.username.as_str()),
            ("reg:5000", "puller")
        );
        assert_eq!(auth.password.expose(), "pull-pw");
        assert_eq!(warning, None);
        // The push keeps the push login.
        assert_eq!(with_pull.registry_auth().unwrap().username, "pusher");

        let (auth, warning) = cfg(None).node_auth();
        assert_eq!(auth.unwrap().username, "pusher");
        let w = warning.unwrap();
        assert!(
            w.contains("can push")
                && w.contains("registry_pull_username")
                && !w.contains("push-pw"),
            "{w}"
        );
        assert_eq!(SwarmConfig::default().node_auth(), (None, None));

        for (c, want) in [
            (
                SwarmConfig {
                    registry: None,
                    registry_pull_username: Some("p".into()),
                    registry_pull_password: Some(Secret::from("x")),
                    ..Default::default()
                },
                "swarm.registry is not",
            ),
            (
                SwarmConfig {
                    registry_pull_password: None,
                    ..cfg(Some(("p", "x")))
                },
                "without swarm.registry_pull_password",
            ),
            (
                SwarmConfig {
                    registry_pull_username: None,
                    ..cfg(Some(("p", "x")))
                },
                "without swarm.registry_pull_username",
            ),
            (cfg(Some(("", "x"))), "registry_pull_username is empty"),
        ] {
            let e = c.validate().unwrap_err();
            assert!(e.contains(want), "{e}");
        }
    }

    #[test]
    fn config_reads_durations_and_refuses_unknown_keys() {
        let c: SwarmConfig =
            serde_json::from_str(r#"{"update_monitor":"10s","registry":"reg:5000"}"#).unwrap();
        assert_eq!(c.update_monitor, Duration::from_secs(10));
        assert_eq!(c.registry.as_deref(), Some("reg:5000"));
        assert_eq!(c.health_retries, 3);
        assert!(serde_json::from_str::<SwarmConfig>(r#"{"replicas":2}"#).is_err());
    }
}
