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
//!   counts as started once the sidecar's log says `nft` loaded the ruleset (followed through the
//!   engine's log API, no process started in the sidecar; `nft list table` run in the sidecar when
//!   the engine cannot read logs back), within [`DockerProvisionerConfig::pod_filter_deadline`];
//!   a sidecar that cannot install it fails the pair, which is then removed — an unfiltered app is
//!   never left running.
//!
//! * The decisions are pure ([`super::reconcile`]); this file only acts on them through the small
//!   [`Engine`] trait ([`BollardEngine`] for the real engine, a mockall fake in the unit tests).
//! * Unchanged services are not touched (their endpoint is read back from the published port).
//! * New services: the sidecar (network alias, port 15000 published on `127.0.0.1:<a free port>`,
//!   pinned so a restarted sidecar keeps its address; labels, config and certs), then — once its
//!   packet filter is in — the app, sharing the sidecar's network namespace
//!   (`container:<sidecar id>` — the id, so renaming the sidecar later cannot break it). Both
//!   restart with the engine (`unless-stopped`).
//! * Changed (or half-present, or stopped) services are **replaced health-gated**:
//!   1. the new pair starts under temporary names (`<name>-next-<spec hash>`) on the project
//!      network *without* the service alias, so no peer can reach it yet;
//!   2. the `gate` prober checks it through its own published port, up to the configured deadline;
//!   3. unhealthy → the new pair is removed, the old pair was never touched
//!      ([`Action::RolledBack`] with the gate's report);
//!   4. healthy → the new sidecar is reconnected to the network *with* the alias (Docker cannot
//!      add an alias to an existing endpoint, so: disconnect + connect), then the old pair is
//!      stopped and removed (app first), then the new pair is renamed to the canonical names.
//!
//!   Because the alias is added before the old pair goes away there is no window in which the
//!   service name resolves to nothing; instead there is a short overlap (the duration of stopping
//!   the old pair) in which Docker's DNS answers with both pairs — both of which are known
//!   to be running, the new one proven healthy. The new pod is off the network for the instant
//!   between disconnect and connect; the endpoint is read back afterwards.
//! * Whatever an apply created for a service that then failed is removed before returning (no
//!   half-created pairs), and the failure is reported on that service only.
//! * Release commands run in a one-off pod of the new spec before apply ([`release`]).
//! * `destroy` removes every container (all apps first, then the sidecars, `parallelism` at a time)
//!   and network with the project label; a network still used by another project's containers
//!   is left in place with a warning.
//!
//! Serializing concurrent deploys of one project is the caller's job (the `Deployer` holds a
//! per-project file lock around `apply` and `destroy`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use serde::{Deserialize, Serialize};

use iac_core::plan::{app_container_name, envoy_container_name};
use iac_core::{
    Action, Applied, AppliedService, Change, ContainerSpec, Events, HealthProber, MeshPorts,
    NetworkMode, NetworkSpec, PodFilter, PortPublish, ProjectName, ProvisionError, Provisioner,
    ReleaseError, ReleaseJob, ReleaseOutcome, ReloadOutcome, Role, RunningService, ServiceName,
    ServiceStack, SidecarReload, Stack, Stage,
};

use super::reconcile::{Observed, ServicePlan, reconcile};
use super::{ContainerLimits, with_limits};

pub mod keeper;
pub mod release;
mod replace;
mod tails;

use crate::engine::DockerEngine;
#[cfg(test)]
pub use crate::engine::MockEngine;
pub use crate::engine::{
    BollardEngine, Engine, EngineError, ExecOutput, ExitState, LogWait, NetworkInfo, create_body,
};

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
    /// Services reconciled (and, on destroy, containers removed) at the same time. 16 was tried:
    /// on a loaded 2-core engine, 30 pairs starting at once missed the health deadline.
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
    /// Run the project's keeper (`<project>_iac-keeper`, [`keeper`]): it starts the apps an
    /// engine restart or a reboot left down. Needs the engine on a Unix socket.
    pub keeper: bool,
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
            keeper: true,
        }
    }
}

impl DockerProvisionerConfig {
    /// `stop_timeout` in whole seconds, as the engine takes it.
    pub fn stop_timeout_secs(&self) -> u32 {
        u32::try_from(self.stop_timeout.as_secs()).unwrap_or(u32::MAX)
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
    /// The project keeper to run beside the pods ([`keeper`]); `None`: no keeper.
    keeper: Option<keeper::KeeperSetup>,
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
        let engine =
            DockerEngine::connect(config.docker_host.as_deref(), config.request_timeout).await?;
        Ok(Self::with_engine(
            Arc::new(BollardEngine::new(&engine)),
            config,
        ))
    }

    /// A provisioner over an existing engine (tests pass a fake).
    pub fn with_engine(engine: Arc<dyn Engine>, config: DockerProvisionerConfig) -> Self {
        DockerProvisioner {
            engine,
            config,
            keeper: None,
        }
    }

    /// Runs a keeper beside every project this provisioner applies ([`keeper`]).
    pub fn with_keeper(mut self, setup: keeper::KeeperSetup) -> Self {
        self.keeper = Some(setup);
        self
    }

    /// The `[docker]` settings it was made with.
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

    /// Creates and starts a pair for `want`: the sidecar first (it owns the pod's network
    /// namespace: network, alias, published ports), then — once its log says the pod's packet
    /// filter is in — the app, in the sidecar's namespace, so the app's first instruction already
    /// runs behind the filter. `temporary`: under `-next-` names and without the network alias.
    /// Every container created is pushed to `created` (id, name) before anything else can fail.
    async fn start_pair(
        &self,
        want: &ServiceStack,
        temporary: bool,
        created: &mut Vec<(String, String)>,
        events: &Events,
    ) -> Result<StartedPair, EngineError> {
        let mut app = want.app.clone();
        let mut envoy = want.envoy.clone();
        envoy.mounts = live_config_mounts(&envoy.mounts);
        if temporary {
            app.name = next_name(&app.name, &want.spec_hash);
            envoy.name = next_name(&envoy.name, &want.spec_hash);
            if let NetworkMode::Network { aliases, .. } = &mut envoy.network {
                aliases.clear();
            }
        }
        let envoy_id = self.start_sidecar(&mut envoy, created, events).await?;
        iac_core::fault::point("sidecar-started");
        // The app joins the sidecar's namespace by id (renaming the sidecar later cannot break it).
        if let NetworkMode::Container { .. } = app.network {
            app.network = NetworkMode::Container {
                name: envoy_id.clone(),
            };
        }
        // The app only has to exist (not run) to be created into the sidecar's namespace, so it
        // is created while the sidecar installs the filter: one engine round trip less per pair.
        let filter = async {
            match &want.pod_filter {
                Some(f) => {
                    self.confirm_pod_filter(&envoy_id, &envoy.name, f, events)
                        .await
                }
                None => Ok(()),
            }
        };
        let (filtered, app_create) = tokio::join!(filter, async {
            self.engine
                .create_container(&app)
                .await
                .map_err(|e| name_taken(e, &app.name, project_of(&app)))
        });
        if let Ok(app_id) = &app_create {
            created.push((app_id.clone(), app.name.clone()));
        }
        filtered?;
        let app_id = app_create?;
        iac_core::fault::point("app-created");
        self.engine.start_container(&app_id).await?;
        events.debug(
            Stage::Provision,
            format!("started {} ({})", app.name, short_id(&app_id)),
        );
        Ok(StartedPair { app_id, envoy_id })
    }

    /// Creates and starts the sidecar. Ports the plan leaves to the engine are pinned to a free
    /// host port first ([`pin_free_ports`]): an engine picks a new ephemeral port every time a
    /// container starts, so without it a restarted sidecar (engine restart, reboot) would come
    /// back at another address. When the engine finds the pinned port taken after all, the
    /// sidecar is removed and made again with other ports (three tries, then the engine's own
    /// choice).
    async fn start_sidecar(
        &self,
        envoy: &mut ContainerSpec,
        created: &mut Vec<(String, String)>,
        events: &Events,
    ) -> Result<String, EngineError> {
        let planned = envoy.ports.clone();
        for attempt in 1..=4u32 {
            envoy.ports = planned.clone();
            if attempt < 4 {
                pin_free_ports(&mut envoy.ports);
            }
            let id = self
                .engine
                .create_container(envoy)
                .await
                .map_err(|e| name_taken(e, &envoy.name, project_of(envoy)))?;
            created.push((id.clone(), envoy.name.clone()));
            match self.engine.start_container(&id).await {
                Ok(()) => {
                    events.debug(
                        Stage::Provision,
                        format!("started {} ({})", envoy.name, short_id(&id)),
                    );
                    return Ok(id);
                }
                Err(e) if attempt < 4 && port_taken(&e) => {
                    events.debug(
                        Stage::Provision,
                        format!(
                            "{}: a pinned host port was taken ({e}); trying others",
                            envoy.name
                        ),
                    );
                    created.pop();
                    self.engine.remove_container(&id).await?;
                }
                Err(e) => return Err(e),
            }
        }
        unreachable!("the last attempt returns")
    }

    /// Waits until the pod's packet filter is in place: the sidecar's script writes
    /// [`iac_core::plan::filter_installed_line`] to its stderr once `nft` has loaded the whole
    /// ruleset, before Envoy starts, and the provisioner follows that log (no process started in
    /// the sidecar). Fails when the sidecar stops first (it could not install the filter: its
    /// last lines say why), when the line names another port, or when the deadline passes. An
    /// engine that cannot read logs back (log driver `none`) is asked through `nft` instead
    /// ([`Self::confirm_pod_filter_by_exec`]), within the same deadline.
    async fn confirm_pod_filter(
        &self,
        envoy_id: &str,
        envoy_name: &str,
        filter: &PodFilter,
        events: &Events,
    ) -> Result<(), EngineError> {
        let check = FilterCheck {
            envoy_id,
            envoy_name,
            filter,
            started: tokio::time::Instant::now(),
            deadline: self.config.pod_filter_deadline.max(Duration::from_secs(1)),
        };
        let expected = iac_core::plan::filter_installed_line(filter.inbound_port);
        let waited = tokio::time::timeout(
            check.deadline,
            self.engine
                .wait_for_log_line(envoy_id, iac_core::plan::FILTER_INSTALLED_PREFIX),
        )
        .await;
        match waited {
            Ok(Ok(LogWait::Found(line))) if line.contains(&expected) => {
                check.in_place(events);
                Ok(())
            }
            Ok(Ok(LogWait::Found(line))) => Err(check.error(format!(
                "the sidecar installed a filter that does not admit tcp dport {}: {line}",
                filter.inbound_port
            ))),
            Ok(Ok(LogWait::Ended(tail))) => Err(check.error(format!(
                "the sidecar stopped before installing the pod's packet filter \
                 (`docker logs {envoy_name}` says why): {tail}"
            ))),
            Ok(Err(e)) => {
                events.debug(
                    Stage::Provision,
                    format!("cannot follow the log of {envoy_name} ({e}); asking nft instead"),
                );
                self.confirm_pod_filter_by_exec(&check, events).await
            }
            Err(_) => Err(check.error(format!(
                "table inet {} not in place after {}s (the sidecar never said so)",
                filter.table,
                check.deadline.as_secs()
            ))),
        }
    }

    /// [`Self::confirm_pod_filter`] by asking `nft` inside the sidecar (which holds NET_ADMIN; the
    /// app container could not even read the ruleset) every 50 ms, for engines whose logs cannot
    /// be read back; within what is left of the check's deadline.
    async fn confirm_pod_filter_by_exec(
        &self,
        check: &FilterCheck<'_>,
        events: &Events,
    ) -> Result<(), EngineError> {
        let filter = check.filter;
        let argv: Vec<String> = ["nft", "list", "table", "inet", filter.table.as_str()]
            .map(String::from)
            .to_vec();
        let mut last: String;
        loop {
            match self.engine.exec(check.envoy_id, argv.clone()).await {
                Ok(out) if out.exit_code == Some(0) => {
                    let port = format!("tcp dport {} accept", filter.inbound_port);
                    if !out.output.contains(&port) {
                        return Err(check.error(format!(
                            "table inet {} does not admit {port}: {}",
                            filter.table,
                            out.output.trim()
                        )));
                    }
                    check.in_place(events);
                    return Ok(());
                }
                Ok(out) => last = format!("exit {:?}: {}", out.exit_code, out.output.trim()),
                Err(e) if e.status == Some(409) || e.is_not_found() => {
                    return Err(EngineError::new(
                        check.op(),
                        e.status,
                        format!(
                            "the sidecar stopped before installing the pod's packet filter \
                             (`docker logs {}` says why): {}",
                            check.envoy_name, e.message
                        ),
                    ));
                }
                Err(e) => last = e.to_string(),
            }
            if check.started.elapsed() >= check.deadline {
                return Err(check.error(format!(
                    "table inet {} not in place after {}s (last answer: {last})",
                    filter.table,
                    check.deadline.as_secs()
                )));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Where the pod's mTLS port is published: asked of the sidecar, which publishes the pod's
    /// ports.
    async fn endpoint(
        &self,
        envoy_id: &str,
        want: &ServiceStack,
    ) -> Result<Option<SocketAddr>, EngineError> {
        match want.envoy.ports.first() {
            Some(p) => self.engine.published_port(envoy_id, p.container_port).await,
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
            edge: None,
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
                // Read from the listing the plan was made from: no request per unchanged service
                // (a no-op redeploy asks the engine once for the whole project).
                out.endpoint = want.envoy.ports.first().and_then(|p| {
                    plan.current
                        .envoy
                        .as_ref()
                        .and_then(|e| e.published_addr(p.container_port))
                });
            }
            Action::Create => {
                events.info(Stage::Provision, format!("creating ({})", plan.reason));
                let mut created = Vec::new();
                let r = async {
                    let pair = self.start_pair(want, false, &mut created, &events).await?;
                    self.endpoint(&pair.envoy_id, want).await
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
            Action::Replace | Action::Repair => {
                self.replace(plan, want, gate, &events, &mut out).await
            }
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

    async fn remove_service(&self, plan: &ServicePlan, events: &Events) -> AppliedService {
        let events = events.for_service(&plan.service);
        events.info(Stage::Provision, format!("removing ({})", plan.reason));
        // App-role containers first: they live in their sidecar's network namespace.
        let mut all: Vec<&Observed> = plan
            .strays
            .iter()
            .chain(plan.current.containers())
            .collect();
        all.sort_by_key(|c| c.role != Some(Role::App));
        self.save_log_tails(&all, "removed", &events).await;
        let ordered: Vec<(String, String)> =
            all.iter().map(|c| (c.id.clone(), c.name.clone())).collect();
        let errors = self.remove_all(&ordered, &events).await;
        AppliedService {
            service: plan.service.clone(),
            action: Action::Remove,
            endpoint: None,
            edge: None,
            health: None,
            error: errors.first().map(|e| format!("removing: {e}")),
        }
    }

    /// Fills in where each applied service's edge is published, read back from the engine once
    /// everything is applied: the canonical pair's (the new one, or the old one after a
    /// rollback). Only when the stack has a service with an edge; a failed read leaves `edge`
    /// empty (the deploy still reports the service, without a URL) and says why.
    /// `before` is the listing the apply started from: when nothing was created or replaced it
    /// is still current, and the engine is not asked again.
    async fn read_edges(
        &self,
        stack: &Stack,
        before: &[Observed],
        services: &mut [AppliedService],
    ) {
        let edge_port = MeshPorts::default().edge;
        let with_edge = |s: &ServiceStack| s.published(edge_port).is_some();
        if !stack.services.iter().any(with_edge) {
            return;
        }
        let fresh;
        let observed = if services.iter().all(|a| a.action == Action::Unchanged) {
            before
        } else {
            fresh = match self.observe_scope(stack).await {
                Ok(o) => o,
                Err(e) => {
                    tracing::warn!(project = %stack.project, error = %e, "cannot read the edges' host ports");
                    return;
                }
            };
            &fresh
        };
        for a in services.iter_mut() {
            let name = envoy_container_name(&stack.project, &a.service);
            a.edge = observed
                .iter()
                .find(|c| c.name == name && c.role == Some(iac_core::Role::Envoy))
                .and_then(|c| c.published_addr(edge_port));
        }
    }

    async fn observe(&self, project: &ProjectName) -> Result<Vec<Observed>, ProvisionError> {
        Ok(self.engine.list_containers(project).await?)
    }

    /// The project's containers a stack reconciles: a sandbox's own (label `iac.sandbox` =
    /// its name) for a sandbox stack, every other one for the baseline; so a baseline deploy
    /// never removes a sandbox's copies, and a sandbox deploy never touches the baseline.
    async fn observe_scope(&self, stack: &Stack) -> Result<Vec<Observed>, ProvisionError> {
        let want = stack.sandbox.as_ref().map(|s| s.as_str());
        let mut all = self.observe(&stack.project).await?;
        all.retain(|c| c.sandbox.as_deref() == want);
        Ok(all)
    }
}

/// One confirmation that a pair's pod filter is in place: which sidecar, which filter, since when
/// and for how long (one deadline, whichever way the sidecar is asked).
struct FilterCheck<'a> {
    envoy_id: &'a str,
    envoy_name: &'a str,
    filter: &'a PodFilter,
    /// When the sidecar started, the check with it.
    started: tokio::time::Instant,
    deadline: Duration,
}

impl FilterCheck<'_> {
    fn op(&self) -> String {
        format!("checking the pod packet filter in {}", self.envoy_name)
    }

    fn error(&self, message: String) -> EngineError {
        EngineError::new(self.op(), None, message)
    }

    /// Says that the filter is in place, and how long after the sidecar started (the app starts
    /// only now).
    fn in_place(&self, events: &Events) {
        events.debug(
            Stage::Provision,
            format!(
                "pod filter inet {} in place {} ms after the sidecar started; starting the app",
                self.filter.table,
                self.started.elapsed().as_millis(),
            ),
        );
    }
}

/// The sidecar's mounts as the engine gets them: the Envoy config file's mount becomes a mount
/// of its directory (`<state>/services/<svc>/` at `/etc/envoy`, read-only). A file bind mount
/// pins the file the path named when the container started, and iac replaces the config by a
/// rename (temp + rename): only through the directory does a running sidecar see the new file,
/// so a reload ([`Provisioner::reload_sidecars`]: SIGHUP to the sidecar's supervisor) picks up
/// new sandbox routes without a new container. The stack itself (and its spec hash) keeps the
/// file mount every other target renders.
pub fn live_config_mounts(mounts: &[iac_core::Mount]) -> Vec<iac_core::Mount> {
    let config = std::path::Path::new(iac_core::plan::ENVOY_CONFIG_IN_CONTAINER);
    mounts
        .iter()
        .map(|m| {
            let file_name = config.file_name();
            match (m.source.parent(), config.parent()) {
                (Some(src_dir), Some(dst_dir))
                    if m.target == config && m.source.file_name() == file_name =>
                {
                    iac_core::Mount {
                        source: src_dir.to_path_buf(),
                        target: dst_dir.to_path_buf(),
                        read_only: true,
                    }
                }
                _ => m.clone(),
            }
        })
        .collect()
}

/// Gives every port the engine would pick (`host_port: None`) a free port of the host, found by
/// binding port 0 on its address; a port whose address cannot be bound here (an engine on
/// another host) is left to the engine.
fn pin_free_ports(ports: &mut [PortPublish]) {
    for p in ports.iter_mut().filter(|p| p.host_port.is_none()) {
        let Ok(ip) = p.host_ip.parse::<std::net::IpAddr>() else {
            continue;
        };
        if let Ok(l) = std::net::TcpListener::bind((ip, 0))
            && let Ok(addr) = l.local_addr()
        {
            p.host_port = Some(addr.port());
        }
    }
}

/// Turns the engine's "name already in use" (a 409 from create or rename) into an error that
/// says what it means: a container iac does not manage holds a name iac needs, and iac leaves
/// it alone.
pub(super) fn name_taken(e: EngineError, name: &str, project: &str) -> EngineError {
    if e.status == Some(409) && e.message.contains("already in use") {
        let message = format!(
            "a container named {name} already exists and is not one iac manages for project \
             {project} (it lacks the iac.managed-by=iac and iac.project={project} labels); iac \
             never removes it: rename or remove it yourself, then deploy again ({})",
            e.message
        );
        EngineError::new(e.op, e.status, message)
    } else {
        e
    }
}

/// The engine could not publish a port because something else holds it.
fn port_taken(e: &EngineError) -> bool {
    e.message.contains("already allocated") || e.message.contains("address already in use")
}

/// The project a planned container belongs to (its `iac.project` label).
pub(super) fn project_of(spec: &ContainerSpec) -> &str {
    spec.labels
        .get(iac_core::stack::LABEL_PROJECT)
        .map_or("(none)", String::as_str)
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
        let observed = self.observe_scope(stack).await?;
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
        super::warn_single_copy(stack, "docker", events);
        let network = self.ensure_network(&stack.network, events).await?;
        events.debug(
            Stage::Provision,
            format!("network {} ({})", stack.network.name, short_id(&network)),
        );
        if let Err(e) = self.ensure_keeper(&stack.project, events).await {
            // The pods do not depend on it: the deploy goes on, saying what is missing.
            events.warn(
                Stage::Provision,
                format!(
                    "the project keeper is not running ({e}); pods an engine restart leaves down need `iac deploy`"
                ),
            );
        }
        let observed = self.observe_scope(stack).await?;
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
                    .envoy
                    .as_ref()
                    .and_then(|e| e.published_addr(MeshPorts::default().inbound)),
                edge: p
                    .current
                    .envoy
                    .as_ref()
                    .and_then(|e| e.published_addr(MeshPorts::default().edge)),
                health: None,
                error: None,
            });
        }
        self.read_edges(stack, &observed, &mut services).await;
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
        containers.sort_by_key(|c| (c.role != Some(Role::App), c.name.clone()));
        self.save_log_tails(&containers.iter().collect::<Vec<_>>(), "destroyed", events)
            .await;
        // The keeper first (nothing starts an app behind destroy's back), then every app (each
        // lives in its sidecar's network namespace), then the rest; within each phase
        // `parallelism` containers are stopped and removed at once.
        let (keepers, rest): (Vec<&Observed>, Vec<&Observed>) = containers
            .iter()
            .partition(|c| c.role == Some(Role::Keeper));
        let (apps, others): (Vec<&Observed>, Vec<&Observed>) =
            rest.into_iter().partition(|c| c.role == Some(Role::App));
        let n = self.config.parallelism.max(1);
        let mut removed = Vec::new();
        let mut errors = Vec::new();
        for phase in [keepers, apps, others] {
            // Boxed for the same reason as in `apply` (async_trait's `Send` check).
            let removals: Vec<BoxFuture<'_, (&Observed, Result<(), EngineError>)>> = phase
                .into_iter()
                .map(|c| {
                    async move {
                        let r = async {
                            self.engine
                                .stop_container(&c.id, self.config.stop_timeout_secs())
                                .await?;
                            self.engine.remove_container(&c.id).await
                        }
                        .await;
                        (c, r)
                    }
                    .boxed()
                })
                .collect();
            let results: Vec<(&Observed, Result<(), EngineError>)> =
                futures::stream::iter(removals).buffered(n).collect().await;
            for (c, r) in results {
                match r {
                    Ok(()) => {
                        events.info(Stage::Destroy, format!("removed container {}", c.name));
                        removed.push(format!("container {}", c.name));
                    }
                    Err(e) => errors.push(e.to_string()),
                }
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
        // The project's keeper is gone: its image may be one nothing uses any more.
        if let Some(keep) = self.current_keeper_tag().await {
            self.collect_keeper_images(&keep, events, Stage::Destroy)
                .await;
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

    fn runs_sandboxes(&self) -> bool {
        true
    }

    async fn destroy_sandbox(
        &self,
        project: &ProjectName,
        sandbox: &iac_core::SandboxName,
        events: &Events,
    ) -> Result<Vec<String>, ProvisionError> {
        let mut containers = self.engine.list_containers(project).await?;
        containers.retain(|c| c.sandbox.as_deref() == Some(sandbox.as_str()));
        // Apps first: each lives in its sidecar's network namespace.
        containers.sort_by_key(|c| (c.role != Some(Role::App), c.name.clone()));
        self.save_log_tails(&containers.iter().collect::<Vec<_>>(), "destroyed", events)
            .await;
        let ordered: Vec<(String, String)> = containers
            .iter()
            .map(|c| (c.id.clone(), c.name.clone()))
            .collect();
        let errors = self.remove_all(&ordered, events).await;
        if !errors.is_empty() {
            let list: Vec<String> = errors.iter().map(ToString::to_string).collect();
            return Err(ProvisionError::Engine(format!(
                "destroying sandbox {sandbox} of project {project} failed on: {}",
                list.join("; ")
            )));
        }
        for c in &containers {
            events.info(Stage::Destroy, format!("removed container {}", c.name));
        }
        Ok(containers
            .iter()
            .map(|c| format!("container {}", c.name))
            .collect())
    }

    async fn reload_sidecars(
        &self,
        project: &ProjectName,
        services: &[ServiceName],
        events: &Events,
    ) -> Result<Vec<SidecarReload>, ProvisionError> {
        let observed = self.observe(project).await?;
        let stats = format!(
            "http://127.0.0.1:{}/stats/prometheus",
            MeshPorts::default().stats
        );
        let mut out = Vec::new();
        for svc in services {
            let name = envoy_container_name(project, svc);
            let outcome = match observed
                .iter()
                .find(|c| c.name == name && c.role == Some(Role::Envoy) && c.is_running())
            {
                // Not running: it reads the new file when it starts.
                None => ReloadOutcome::NotRunning,
                Some(sidecar) => {
                    // The supervisor (PID 1) validates the file, restarts Envoy on SIGHUP and
                    // says how it went; the script waits for that and for the new Envoy.
                    let argv = vec![
                        "/bin/sh".to_string(),
                        "-c".into(),
                        iac_core::plan::sidecar_reload_script(),
                        "iac-reload".into(),
                        "1".into(),
                        stats.clone(),
                    ];
                    match self.engine.exec(&sidecar.id, argv).await {
                        Ok(run) => reload_outcome(run.exit_code, &run.output),
                        Err(e) => ReloadOutcome::Unhealthy(format!("{name}: {e}")),
                    }
                }
            };
            events
                .for_service(svc)
                .debug(Stage::Provision, format!("reload of {name}: {outcome:?}"));
            out.push(SidecarReload {
                service: svc.clone(),
                outcome,
            });
        }
        Ok(out)
    }

    fn runs_releases(&self) -> bool {
        true
    }

    async fn run_release(
        &self,
        job: &ReleaseJob,
        events: &Events,
    ) -> Result<ReleaseOutcome, ReleaseError> {
        self.release(job, events).await
    }

    async fn running(&self, project: &ProjectName) -> Result<Vec<RunningService>, ProvisionError> {
        let MeshPorts { inbound, edge, .. } = MeshPorts::default();
        let observed = self.observe(project).await?;
        // The app's image and state, the sidecar's published ports (the pod's endpoint).
        let mut out: Vec<RunningService> = observed
            .iter()
            .filter(|c| c.role == Some(Role::App))
            .filter_map(|c| {
                let service = ServiceName::new(c.service.as_deref()?).ok()?;
                if c.name != app_container_name(project, &service) {
                    return None;
                }
                let envoy_name = envoy_container_name(project, &service);
                let sidecar = observed
                    .iter()
                    .find(|e| e.name == envoy_name && e.role == Some(Role::Envoy));
                Some(RunningService {
                    endpoint: sidecar.and_then(|e| e.published_addr(inbound)),
                    edge: sidecar.and_then(|e| e.published_addr(edge)),
                    spec_hash: c.spec_hash.clone().unwrap_or_default(),
                    image: c.image.clone(),
                    state: match sidecar {
                        Some(e) if !e.is_running() => format!("{} (sidecar {})", c.state, e.state),
                        None => format!("{} (sidecar missing)", c.state),
                        Some(_) => c.state.clone(),
                    },
                    service,
                    sandbox: c
                        .sandbox
                        .as_deref()
                        .and_then(|s| iac_core::SandboxName::new(s).ok()),
                })
            })
            .collect();
        out.sort_by(|a, b| a.service.cmp(&b.service));
        Ok(out)
    }
}

/// What the reload script ([`iac_core::plan::sidecar_reload_script`]) said, as an outcome.
fn reload_outcome(exit_code: Option<i64>, output: &str) -> ReloadOutcome {
    let last = output.trim().lines().last().unwrap_or("").trim();
    if exit_code != Some(0) {
        return ReloadOutcome::Unhealthy(format!(
            "the reload script exited {exit_code:?}: {}",
            output.trim()
        ));
    }
    if last == iac_core::plan::RELOAD_OK {
        ReloadOutcome::Reloaded
    } else if let Some(why) = last.strip_prefix(iac_core::plan::RELOAD_REFUSED) {
        ReloadOutcome::Refused(why.trim().to_string())
    } else if let Some(why) = last.strip_prefix(iac_core::plan::RELOAD_UNHEALTHY) {
        ReloadOutcome::Unhealthy(why.trim().to_string())
    } else {
        ReloadOutcome::Unhealthy(format!(
            "the reload script said {:?}; expected ok, refused: or unhealthy:",
            output.trim()
        ))
    }
}

#[cfg(test)]
mod tests;
