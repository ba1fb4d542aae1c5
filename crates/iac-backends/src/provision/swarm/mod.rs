//! The Docker Swarm provisioner (`provisioner = "swarm"`): the same [`Stack`] as the docker
//! provisioner, applied as Swarm objects for more than one host. Every engine call goes through
//! [`SwarmEngine`] (`engine/swarm.rs`: a mockall fake in the unit tests, engine errors mapped in
//! one place); what happens to each service is decided once, purely, by [`mod@decide`], for both
//! `diff` and `apply`. `[swarm]` is [`config`].
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

pub mod config;
pub mod decide;
pub mod image;
pub mod objects;
pub mod spec;
pub mod tails;
pub mod tasks;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures::FutureExt;
use futures::StreamExt;
use futures::future::BoxFuture;

use iac_core::labels::{is_managed, project_labels};
use iac_core::stack::{LABEL_PROJECT, LABEL_ROLE};
use iac_core::{
    Action, Applied, AppliedService, Change, Events, HealthProber, HealthReport, MeshPorts,
    NetworkSpec, ProbeTarget, ProjectName, ProvisionError, Provisioner, RunningService,
    ServiceName, ServiceStack, Stack, Stage,
};

use super::with_limits;
use crate::engine::swarm::{
    BollardSwarm, ObjectKind, Service, ServiceUpdateStatusStateEnum, SwarmEngine, SwarmObject,
};
use crate::engine::{BollardRegistry, DockerEngine, EngineError, Registry};
pub use config::SwarmConfig;
use decide::{Existing, Step, decide, existing};
use objects::{Objects, project_filter};
use spec::{PodInput, PodObjects, service_name};

/// The Swarm provisioner over one engine connection (a swarm manager).
#[derive(Clone)]
pub struct SwarmProvisioner {
    engine: Arc<dyn SwarmEngine>,
    config: SwarmConfig,
    /// Pushes pod images to `config.registry` (unused without one).
    registry: Arc<dyn Registry>,
}

impl std::fmt::Debug for SwarmProvisioner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SwarmProvisioner")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
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
            engine: Arc::new(BollardSwarm::new(engine)),
            registry: Arc::new(BollardRegistry::new(engine, config.registry_auth())),
            config,
        }
    }

    /// Over any [`SwarmEngine`] and [`Registry`] (the unit tests' fakes).
    pub fn with_engine(
        engine: Arc<dyn SwarmEngine>,
        registry: Arc<dyn Registry>,
        config: SwarmConfig,
    ) -> Self {
        SwarmProvisioner {
            engine,
            registry,
            config,
        }
    }

    /// The `[swarm]` settings it runs with.
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
        let swarm = self.engine.swarm_state().await?;
        if !swarm.manager {
            return Err(ProvisionError::Engine(format!(
                "the engine is not a swarm manager (swarm state: {}); expected `docker swarm init` (or a manager's address in [docker] docker_host) for provisioner = \"swarm\"",
                swarm.node_state
            )));
        }
        let nodes = swarm.nodes;
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
        if let Some(n) = self.engine.network(&net.name).await? {
            let ours = is_managed(|k| n.labels.get(k).map(String::as_str))
                && n.labels.get(LABEL_PROJECT).map(String::as_str) == Some(project.as_str());
            if ours && n.driver == "overlay" {
                return Ok(());
            }
            return Err(ProvisionError::Conflict(format!(
                "network {} exists as a {} network{}; expected iac's overlay network for project {project} (remove it first, e.g. `iac destroy --provisioner docker` when the docker provisioner made it)",
                net.name,
                n.driver,
                if ours {
                    " made by iac"
                } else {
                    " iac did not make"
                }
            )));
        }
        let mut labels: HashMap<String, String> = net.labels.clone().into_iter().collect();
        labels.extend(project_labels(project.as_str()));
        self.engine
            .create_overlay_network(&net.name, labels)
            .await?;
        events.info(
            Stage::Provision,
            format!("created overlay network {}", net.name),
        );
        Ok(())
    }

    /// The project's services.
    async fn services(&self, project: &ProjectName) -> Result<Vec<Service>, ProvisionError> {
        let mut filters = project_filter(project);
        filters
            .get_mut("label")
            .expect("project_filter filters by label")
            .push(format!("{LABEL_ROLE}=service"));
        Ok(self.engine.services(filters).await?)
    }

    /// The project's services by the iac service they run.
    async fn current(
        &self,
        project: &ProjectName,
    ) -> Result<HashMap<ServiceName, Existing>, ProvisionError> {
        Ok(self
            .services(project)
            .await?
            .iter()
            .filter_map(existing)
            .collect())
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
            let view = tasks::observe(self.engine.as_ref(), id, inbound)
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
            let s = self.engine.service(id).await.map_err(|e| e.to_string())?;
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
        decided: (Action, &str),
        current: Option<&Existing>,
        existing_objects: &[SwarmObject],
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
                decided,
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
        (action, hash): (Action, &str),
        current: Option<&Existing>,
        existing_objects: &[SwarmObject],
        gate: &Arc<dyn HealthProber>,
        ev: &Events,
        started: Instant,
    ) -> Result<AppliedService, (Action, String)> {
        let settings = self.config.settings();
        let fail = |e: String| (action, e);
        let inbound = MeshPorts::default().inbound;
        if let (Action::Unchanged, Some(c)) = (action, current) {
            ev.info(Stage::Provision, format!("unchanged (spec hash {hash})"));
            let view = tasks::observe(self.engine.as_ref(), &c.id, inbound)
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
            engine: self.engine.as_ref(),
            project,
        };
        let mut refs = BTreeMap::new();
        for (role, path) in &sources {
            let data = tokio::fs::read(path)
                .await
                .map_err(|e| fail(format!("{}: {e}", path.display())))?;
            let kind = if *role == "envoy-config" {
                ObjectKind::Config
            } else {
                ObjectKind::Secret
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
            image::ensure_pod_image(self.engine.as_ref(), &svc.app.image, &svc.envoy.image, ev)
                .await
                .map_err(|e| fail(e.to_string()))?;
        let image = match &self.config.registry {
            Some(registry) => image::publish(self.registry.as_ref(), registry, &image, ev)
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
        let spec = spec::service_spec(&PodInput {
            project,
            svc,
            network,
            image: &image,
            image_cmd: &image_cmd,
            objects: &objects,
            settings: &settings,
            hash,
        })
        .map_err(fail)?;
        let name = service_name(project, &svc.service);

        match current {
            None => {
                let id = self
                    .engine
                    .create_service(spec, node_auth)
                    .await
                    .map_err(|e| fail(e.to_string()))?;
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
                        let _ = self.engine.remove_service(&id).await;
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
                self.save_log_tail(&c.id, &name, &svc.service, "replaced", ev)
                    .await;
                self.engine
                    .update_service(&c.id, spec, c.version, node_auth)
                    .await
                    .map_err(|e| fail(format!("{name}: {e}")))?;
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
                        let view = tasks::observe(self.engine.as_ref(), &c.id, inbound)
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
        match self.engine.remove_service(id).await {
            Ok(()) => {}
            Err(e) if e.is_not_found() => return Ok(()),
            Err(e) => {
                return Err(EngineError::new(
                    format!("remove service {name}"),
                    e.status,
                    e.message,
                )
                .into());
            }
        }
        // On this node, the task containers go a moment after the service (they hold the
        // network and the mounted objects): wait for them, within the stop grace and a margin.
        let grace = self.config.stop_grace + Duration::from_secs(30);
        let deadline = Instant::now() + grace;
        loop {
            let left = self.engine.task_containers(id).await?;
            if left == 0 {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(ProvisionError::Engine(format!(
                    "service {name} removed, but {left} of its task containers are still there after {grace:?}"
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
            engine: self.engine.as_ref(),
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
        let current = self.current(&stack.project).await?;
        Ok(decide(&stack, &self.config.settings(), &current)
            .iter()
            .filter_map(Step::change)
            .collect())
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
        let current = self.current(project).await?;
        let existing_objects = Objects {
            engine: self.engine.as_ref(),
            project,
        }
        .list()
        .await?;
        let steps = decide(stack, &self.config.settings(), &current);
        let work: Vec<BoxFuture<'_, AppliedService>> = steps
            .iter()
            .filter_map(|step| match step {
                Step::Apply {
                    svc, action, hash, ..
                } => Some(
                    self.apply_service(
                        project,
                        &stack.network.name,
                        svc,
                        (*action, hash.as_str()),
                        current.get(&svc.service),
                        &existing_objects,
                        gate.clone(),
                        events,
                    )
                    .boxed(),
                ),
                _ => None,
            })
            .collect();
        let mut services: Vec<AppliedService> = futures::stream::iter(work)
            .buffered(self.config.parallelism.max(1))
            .collect()
            .await;
        let mut applied = Applied::default();
        for step in &steps {
            let (name, action, error) = match step {
                Step::Apply { .. } => continue,
                Step::Keep { service } => {
                    events
                        .for_service(service)
                        .info(Stage::Provision, "left as it is (its build failed)");
                    (service, Action::Unchanged, None)
                }
                Step::Remove { service, id } => {
                    let svc_name = service_name(project, service);
                    self.save_log_tail(id, &svc_name, service, "removed", events)
                        .await;
                    let error = self
                        .remove_service(id, &svc_name)
                        .await
                        .err()
                        .map(|e| e.to_string());
                    if error.is_none() {
                        events
                            .for_service(service)
                            .info(Stage::Provision, format!("removed service {svc_name}"));
                        applied.removed.push(service.clone());
                    }
                    (service, Action::Remove, error)
                }
            };
            services.push(AppliedService {
                edge: None,
                service: name.clone(),
                action,
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
            if let Some((service, _)) = existing(&s) {
                self.save_log_tail(&id, &name, &service, "destroyed", events)
                    .await;
            }
            self.remove_service(&id, &name).await?;
            events.info(Stage::Destroy, format!("removed service {name}"));
            removed.push(format!("service {name}"));
        }
        for r in (Objects {
            engine: self.engine.as_ref(),
            project,
        })
        .prune(&BTreeSet::new())
        .await?
        {
            events.info(Stage::Destroy, format!("removed {r}"));
            removed.push(r);
        }
        let networks = self.engine.networks(project_filter(project)).await?;
        for n in networks.into_iter().filter(|n| n.driver == "overlay") {
            let (id, name) = (n.id, n.name);
            // The last task's endpoint may take a moment to leave the network.
            let mut tries = 0;
            loop {
                match self.engine.remove_network(&id).await {
                    Ok(()) => {
                        // The node drops its copy of a swarm network a moment after the manager.
                        for _ in 0..40 {
                            match self.engine.network(&id).await {
                                Ok(None) => break,
                                _ => tokio::time::sleep(Duration::from_millis(250)).await,
                            }
                        }
                        events.info(Stage::Destroy, format!("removed network {name}"));
                        removed.push(format!("network {name}"));
                        break;
                    }
                    Err(e) if e.is_not_found() => break,
                    Err(e) if tries < 20 => {
                        tries += 1;
                        tracing::debug!("network {name} not removable yet: {e}");
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                    Err(e) => return Err(e.into()),
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
            let view = tasks::observe(self.engine.as_ref(), &e.id, inbound).await?;
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
                sandbox: None,
            });
        }
        out.sort_by(|a, b| a.service.cmp(&b.service));
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    //! The provisioner against the mockall [`MockSwarmEngine`]: `diff` and `apply` act on the one
    //! decision, engine failures map in one place (404 tolerated where it means "already gone",
    //! 409 a conflict), and `destroy` removes services, objects and overlay networks only.

    use super::*;
    use crate::engine::MockRegistry;
    use crate::engine::swarm::{
        MockSwarmEngine, NetworkView, ServiceSpec, SwarmObject, SwarmState,
    };
    use iac_core::labels::{LABEL_MANAGED, MANAGED_BY};
    use iac_core::plan::{PlanInput, PlannedService, plan};
    use iac_core::stack::{LABEL_SERVICE, LABEL_SPEC_HASH};
    use iac_core::{CertPaths, IssuedCerts, MockHealthProber};

    fn stack(names: &[&str], keep: &[&str]) -> Stack {
        let svc = |n: &str| PlannedService {
            name: ServiceName::new(n).unwrap(),
            image: format!("iac/p-{n}:1"),
            envoy_config: format!("/s/{n}/envoy.yaml").into(),
            envoy_config_digest: format!("sha256:{n}"),
            certs: IssuedCerts {
                paths: CertPaths {
                    ca: "/s/ca.pem".into(),
                    cert: format!("/s/{n}.pem").into(),
                    key: format!("/s/{n}.key").into(),
                },
                fingerprint: format!("sha256:{n}-certs"),
            },
            app_port: None,
            env: Default::default(),
            edge: None,
            replicas: 1,
            egress: Default::default(),
        };
        plan(&PlanInput {
            project: ProjectName::new("p").unwrap(),
            network: "iacnet".into(),
            envoy_image: "iac/envoy:1.40.0".into(),
            otel_endpoint: None,
            services: names.iter().map(|n| svc(n)).collect(),
            keep: keep.iter().map(|n| ServiceName::new(n).unwrap()).collect(),
            sandbox: None,
        })
    }

    fn service(name: &str, hash: &str) -> Service {
        Service {
            id: Some(format!("id-{name}")),
            spec: Some(ServiceSpec {
                name: Some(format!("p-{name}")),
                labels: Some(HashMap::from([
                    (LABEL_SERVICE.to_string(), name.to_string()),
                    (LABEL_SPEC_HASH.to_string(), hash.to_string()),
                ])),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn provisioner(engine: MockSwarmEngine) -> SwarmProvisioner {
        SwarmProvisioner::with_engine(
            Arc::new(engine),
            Arc::new(MockRegistry::new()),
            SwarmConfig::default(),
        )
    }

    fn manager(engine: &mut MockSwarmEngine) {
        engine.expect_swarm_state().returning(|| {
            Ok(SwarmState {
                manager: true,
                node_state: "active".into(),
                nodes: 1,
            })
        });
    }

    fn our_network(engine: &mut MockSwarmEngine) {
        engine.expect_network().returning(|name| {
            Ok(Some(NetworkView {
                id: "net1".into(),
                name: name.to_string(),
                driver: "overlay".into(),
                labels: HashMap::from([
                    (LABEL_MANAGED.to_string(), MANAGED_BY.to_string()),
                    (LABEL_PROJECT.to_string(), "p".to_string()),
                ]),
            }))
        });
    }

    #[tokio::test]
    async fn diff_shows_the_one_decision() {
        let s = stack(&["same", "new"], &["kept"]);
        let limited = with_limits(&s, &SwarmConfig::default().limits);
        let hash = spec::spec_hash(
            limited
                .services
                .iter()
                .find(|x| x.service.as_str() == "same")
                .unwrap(),
            &SwarmConfig::default().settings(),
            "iac/envoy:1.40.0",
        );
        let mut engine = MockSwarmEngine::new();
        engine.expect_services().returning(move |filters| {
            assert!(filters["label"].contains(&"iac.project=p".to_string()));
            assert!(filters["label"].contains(&"iac.role=service".to_string()));
            Ok(vec![
                service("same", &hash),
                service("kept", "x"),
                service("gone", "y"),
            ])
        });
        let changes = provisioner(engine).diff(&s).await.unwrap();
        let got: Vec<(String, Action)> = changes
            .iter()
            .map(|c| (c.service.to_string(), c.action))
            .collect();
        assert_eq!(
            got,
            [
                ("new".to_string(), Action::Create),
                ("same".to_string(), Action::Unchanged),
                ("gone".to_string(), Action::Remove),
            ]
        );
    }

    #[tokio::test]
    async fn apply_refuses_an_engine_that_is_not_a_manager() {
        let mut engine = MockSwarmEngine::new();
        engine.expect_swarm_state().returning(|| {
            Ok(SwarmState {
                manager: false,
                node_state: "inactive".into(),
                nodes: 1,
            })
        });
        let err = provisioner(engine)
            .apply(
                &stack(&["a"], &[]),
                Arc::new(MockHealthProber::new()),
                &Events::discard(),
            )
            .await
            .unwrap_err();
        assert!(
            matches!(&err, ProvisionError::Engine(m) if m.contains("not a swarm manager") && m.contains("inactive")),
            "{err:?}"
        );
    }

    #[tokio::test]
    async fn a_network_iac_did_not_make_is_a_conflict_and_so_is_an_engine_409() {
        let mut engine = MockSwarmEngine::new();
        manager(&mut engine);
        engine.expect_network().returning(|name| {
            Ok(Some(NetworkView {
                id: "n".into(),
                name: name.to_string(),
                driver: "bridge".into(),
                labels: HashMap::new(),
            }))
        });
        let err = provisioner(engine)
            .apply(
                &stack(&["a"], &[]),
                Arc::new(MockHealthProber::new()),
                &Events::discard(),
            )
            .await
            .unwrap_err();
        assert!(
            matches!(&err, ProvisionError::Conflict(m) if m.contains("bridge network iac did not make")),
            "{err:?}"
        );

        let mut engine = MockSwarmEngine::new();
        manager(&mut engine);
        engine.expect_network().returning(|_| Ok(None));
        engine.expect_create_overlay_network().returning(|name, _| {
            Err(EngineError::new(
                format!("create overlay network {name}"),
                Some(409),
                "network with name iacnet-p already exists",
            ))
        });
        let err = provisioner(engine)
            .apply(
                &stack(&["a"], &[]),
                Arc::new(MockHealthProber::new()),
                &Events::discard(),
            )
            .await
            .unwrap_err();
        assert!(matches!(err, ProvisionError::Conflict(_)), "{err:?}");
    }

    #[tokio::test]
    async fn apply_keeps_a_failed_build_and_removes_what_left_the_repos_file() {
        let mut engine = MockSwarmEngine::new();
        manager(&mut engine);
        our_network(&mut engine);
        engine
            .expect_services()
            .returning(|_| Ok(vec![service("kept", "x"), service("gone", "y")]));
        engine.expect_objects().returning(|_| Ok(vec![]));
        engine
            .expect_remove_service()
            .withf(|id| id == "id-gone")
            .times(1)
            .returning(|_| Ok(()));
        engine
            .expect_task_containers()
            .withf(|id| id == "id-gone")
            .returning(|_| Ok(0));
        let applied = provisioner(engine)
            .apply(
                &stack(&[], &["kept"]),
                Arc::new(MockHealthProber::new()),
                &Events::discard(),
            )
            .await
            .unwrap();
        let got: Vec<(String, Action, Option<String>)> = applied
            .services
            .iter()
            .map(|s| (s.service.to_string(), s.action, s.error.clone()))
            .collect();
        assert_eq!(
            got,
            [
                ("gone".to_string(), Action::Remove, None),
                ("kept".to_string(), Action::Unchanged, None),
            ]
        );
        assert_eq!(applied.removed, [ServiceName::new("gone").unwrap()]);
    }

    #[tokio::test]
    async fn destroy_removes_services_objects_and_overlay_networks_and_tolerates_gone_ones() {
        let mut engine = MockSwarmEngine::new();
        engine
            .expect_services()
            .returning(|_| Ok(vec![service("a", "h")]));
        // Already gone: not an error.
        engine.expect_remove_service().returning(|id| {
            Err(EngineError::new(
                format!("remove service {id}"),
                Some(404),
                "no such service",
            ))
        });
        engine.expect_objects().returning(|_| {
            Ok(vec![
                SwarmObject {
                    kind: ObjectKind::Config,
                    id: "c1".into(),
                    name: "p-a-envoy-config-1".into(),
                },
                SwarmObject {
                    kind: ObjectKind::Secret,
                    id: "s1".into(),
                    name: "p-a-key-1".into(),
                },
            ])
        });
        engine
            .expect_remove_object()
            .returning(|kind, id| match (kind, id) {
                (ObjectKind::Config, "c1") => Ok(()),
                // Still in use by a task that is going away: left for the next run.
                (ObjectKind::Secret, "s1") => {
                    Err(EngineError::new("remove secret s1", Some(409), "in use"))
                }
                other => panic!("unexpected {other:?}"),
            });
        engine.expect_networks().returning(|_| {
            Ok(vec![
                NetworkView {
                    id: "o1".into(),
                    name: "iacnet-p".into(),
                    driver: "overlay".into(),
                    labels: HashMap::new(),
                },
                NetworkView {
                    id: "b1".into(),
                    name: "iacnet-p-docker".into(),
                    driver: "bridge".into(),
                    labels: HashMap::new(),
                },
            ])
        });
        engine
            .expect_remove_network()
            .withf(|id| id == "o1")
            .times(1)
            .returning(|_| Ok(()));
        engine
            .expect_network()
            .withf(|id| id == "o1")
            .returning(|_| Ok(None));
        let removed = provisioner(engine)
            .destroy(&ProjectName::new("p").unwrap(), &Events::discard())
            .await
            .unwrap();
        assert_eq!(
            removed,
            [
                "service p-a",
                "config p-a-envoy-config-1",
                "network iacnet-p"
            ]
        );
    }

    /// Destroy: each service's log tail (every task's newest lines, one more than kept) is
    /// read before the service is removed and saved as the pod's (app and sidecar in one).
    #[tokio::test]
    async fn destroy_saves_each_services_log_tail_before_removing_it() {
        let mut engine = MockSwarmEngine::new();
        let mut seq = mockall::Sequence::new();
        engine
            .expect_services()
            .returning(|_| Ok(vec![service("a", "h")]));
        engine
            .expect_service_log_tail()
            .withf(|id, lines, bytes| {
                id == "id-a"
                    && *lines == iac_core::history::LOG_TAIL_LINES + 1
                    && *bytes == iac_core::history::LOG_TAIL_BYTES + 1
            })
            .times(1)
            .in_sequence(&mut seq)
            .returning(|_, _, _| Ok("app says bye\n[envoy] draining\n".into()));
        engine
            .expect_remove_service()
            .times(1)
            .in_sequence(&mut seq)
            .returning(|_| Ok(()));
        engine.expect_task_containers().returning(|_| Ok(0));
        engine.expect_objects().returning(|_| Ok(vec![]));
        engine.expect_networks().returning(|_| Ok(vec![]));
        let (events, tails) = Events::discard().with_log_tails();
        provisioner(engine)
            .destroy(&ProjectName::new("p").unwrap(), &events)
            .await
            .unwrap();
        let (got, _) = tails.take();
        assert_eq!(got.len(), 1, "{got:?}");
        let t = &got[0];
        assert_eq!(
            (
                t.service.as_str(),
                t.container.as_str(),
                t.role.as_str(),
                t.reason.as_str()
            ),
            ("a", "p-a", tails::POD_ROLE, "destroyed")
        );
        assert_eq!(t.lines, ["app says bye", "[envoy] draining"]);
        assert!(!t.truncated);
    }

    /// A service that left the repos file: its tail is saved as `removed`; a log the engine
    /// cannot read is a warning and the removal goes on. Without a sink that collects tails,
    /// no log is read at all.
    #[tokio::test]
    async fn a_removed_service_saves_its_tail_and_an_unreadable_log_does_not_stop_it() {
        for (collect, readable) in [(true, true), (true, false), (false, true)] {
            let mut engine = MockSwarmEngine::new();
            manager(&mut engine);
            our_network(&mut engine);
            engine
                .expect_services()
                .returning(|_| Ok(vec![service("gone", "y")]));
            engine.expect_objects().returning(|_| Ok(vec![]));
            engine
                .expect_service_log_tail()
                .times(usize::from(collect))
                .returning(move |_, _, _| {
                    if readable {
                        Ok((0..250).map(|i| format!("line {i}\n")).collect())
                    } else {
                        Err(EngineError::new(
                            "reading the log",
                            Some(501),
                            "log driver none",
                        ))
                    }
                });
            engine
                .expect_remove_service()
                .withf(|id| id == "id-gone")
                .times(1)
                .returning(|_| Ok(()));
            engine.expect_task_containers().returning(|_| Ok(0));
            let (events, mut rx) = Events::channel();
            let (events, tails) = if collect {
                let (e, t) = events.with_log_tails();
                (e, Some(t))
            } else {
                (events, None)
            };
            let applied = provisioner(engine)
                .apply(&stack(&[], &[]), Arc::new(MockHealthProber::new()), &events)
                .await
                .unwrap();
            assert_eq!(applied.removed, [ServiceName::new("gone").unwrap()]);
            drop(events);
            let mut warned = false;
            while let Some(ev) = rx.recv().await {
                warned |= ev
                    .message
                    .contains("could not save the last log lines of service p-gone");
            }
            let got = tails.map(|t| t.take().0).unwrap_or_default();
            match (collect, readable) {
                (true, true) => {
                    assert_eq!(got.len(), 1);
                    assert_eq!(got[0].reason, "removed");
                    assert_eq!(got[0].lines.last().unwrap(), "line 249");
                    assert!(got[0].truncated);
                    assert!(!warned);
                }
                (true, false) => assert!(got.is_empty() && warned),
                _ => assert!(got.is_empty() && !warned),
            }
        }
    }
}
