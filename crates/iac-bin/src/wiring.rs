//! Configuration → concrete backends → a [`Deployer`]. The only place that names backend types;
//! everything else talks to the `iac-core` traits.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use async_trait::async_trait;
use futures::StreamExt;
use futures::stream::BoxStream;
use iac_backends::build::DockerImageBuilder;
use iac_backends::engine::{BollardEngine, DockerEngine};
use iac_backends::entry::DefaultResolver;
use iac_backends::fetch::DefaultFetcher;
use iac_backends::health::grpc::GrpcProber;
use iac_backends::provision::docker::DockerProvisioner;
use iac_backends::provision::swarm::SwarmProvisioner;
use iac_backends::provision::terraform::TerraformProvisioner;
use iac_backends::sidecar::envoy::{EnvoyConfig, EnvoyRenderer};
use iac_core::{
    Applied, Change, DeployOptions, DeployReport, Deployer, EntryResolver, Events, HealthProber,
    LogLine, LogQuery, LogStreamer, ProbeError, ProbeTarget, ProjectName, ProvisionError,
    Provisioner, RunningService, ServiceName, SourceFetcher, Stack, Stages,
};

use crate::api::{ApiError, ControlPlaneBackend, DeployInput, LogStream, ServiceStatus};
use crate::config::{IacConfig, ProvisionerKind};

/// Everything a command needs for one project.
pub struct App {
    /// The effective configuration.
    pub cfg: IacConfig,
    /// The project every command acts on.
    pub project: ProjectName,
    /// The pipeline over the configured stages.
    pub deployer: Deployer,
    /// The deployer's source fetcher, for commands that fetch without deploying.
    pub fetcher: Arc<dyn SourceFetcher>,
    /// The deployer's entry resolver, for commands that resolve without deploying.
    pub resolver: Arc<dyn EntryResolver>,
    /// Streams logs from the agents (`iac logs`).
    pub streamer: Arc<dyn LogStreamer>,
}

/// How long opening a log stream keeps retrying an agent.
const LOG_CONNECT_DEADLINE: Duration = Duration::from_secs(10);

/// Whether the command talks to the container engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EngineUse {
    /// deploy, plan, destroy, health, logs, serve.
    Required,
    /// inspect, render: nothing is built, provisioned or probed.
    None,
    /// `render --target compose`: as `None`, but the engine is asked which sidecar image it has
    /// (the official one, else the offline equivalent), so the rendered project runs the images
    /// a deploy on this engine would.
    Images,
}

/// The fetcher and resolver alone (no engine, no certificates).
pub fn source_stages(
    cfg: &IacConfig,
) -> anyhow::Result<(Arc<dyn SourceFetcher>, Arc<dyn EntryResolver>)> {
    // A `path:` source must neither hold nor lie in the state or secrets dir actually configured.
    let mut fetch = cfg.fetch.clone();
    fetch
        .protected_dirs
        .extend([cfg.state_dir.clone(), cfg.pki.secrets_dir.clone()]);
    let fetcher = DefaultFetcher::new(fetch).context("source fetcher configuration ([fetch])")?;
    let pythons = cfg
        .images
        .available_pythons()
        .map_err(|e| anyhow::anyhow!("[images]: {e}"))?;
    let default_python = iac_backends::build::config::parse_minor(&cfg.images.default_python)
        .map_err(|e| anyhow::anyhow!("[images] default_python: {e}"))?;
    let resolver = DefaultResolver::new()
        .with_pythons(pythons)
        .with_default_python(default_python);
    Ok((Arc::new(fetcher), Arc::new(resolver)))
}

impl App {
    /// The wiring for a command that needs the container engine.
    pub async fn build(cfg: IacConfig, project: ProjectName) -> anyhow::Result<App> {
        Self::build_with(cfg, project, EngineUse::Required).await
    }

    /// The wiring with `engine` saying whether the container engine must answer.
    pub async fn build_with(
        mut cfg: IacConfig,
        project: ProjectName,
        engine: EngineUse,
    ) -> anyhow::Result<App> {
        cfg.docker.health_deadline = cfg.health_deadline;
        cfg.swarm.health_deadline = cfg.health_deadline;
        let (fetcher, resolver) = source_stages(&cfg)?;
        let pki = iac_backends::pki::from_config(&cfg.pki);
        let client = pki
            .client_identity()
            .await
            .context("control-plane client certificate ([pki])")?;
        let prober =
            Arc::new(GrpcProber::new(&client.paths, cfg.probe.clone()).context("health prober")?);
        let sidecar = Arc::new(
            EnvoyRenderer::new(&EnvoyConfig {
                template_dir: cfg.sidecar.template_dir.clone(),
            })
            .context("sidecar template ([sidecar].template_dir)")?,
        );
        let (builder, provisioner, envoy_image): (
            Arc<dyn iac_core::ImageBuilder>,
            Arc<dyn Provisioner>,
            String,
        ) = match engine {
            EngineUse::Required => {
                // The state dir holds rendered configs, Terraform state and the deploy lock:
                // private (0700; a symlink or another uid's directory is refused).
                iac_core::fsutil::create_private_dir(&cfg.state_dir).with_context(|| {
                    format!("state dir ({}, state_dir)", cfg.state_dir.display())
                })?;
                // One connection (to `[docker] docker_host`, else DOCKER_HOST / the local socket),
                // shared by the image builder and the docker provisioner.
                let engine = connect_engine(&cfg).await?;
                let envoy_image =
                    resolve_image(&engine, &cfg.sidecar.image, &cfg.sidecar.offline_image).await?;
                let provisioner: Arc<dyn Provisioner> = match cfg.provisioner {
                    ProvisionerKind::Docker => {
                        let p = DockerProvisioner::with_engine(
                            Arc::new(BollardEngine::new(&engine)),
                            cfg.docker.clone(),
                        );
                        Arc::new(match keeper_setup(&cfg) {
                            Some(setup) => p.with_keeper(setup),
                            None => p,
                        })
                    }
                    ProvisionerKind::Terraform => {
                        // The same engine reads the log tails of containers Terraform is about
                        // to destroy (the provider's `docker_host` is normally this one).
                        Arc::new(
                            TerraformProvisioner::new(cfg.terraform.clone())
                                .with_engine(Arc::new(BollardEngine::new(&engine))),
                        )
                    }
                    // The same engine connection: the swarm manager that builds the images.
                    ProvisionerKind::Swarm => {
                        Arc::new(SwarmProvisioner::new(&engine, cfg.swarm.clone()))
                    }
                };
                // A Python base image a deploy needs and the engine lacks is built on demand by
                // the embedded bootstrap recipe.
                let builder = DockerImageBuilder::new(engine, cfg.images.clone())
                    .context("image builder ([images])")?
                    .with_base_maker(Arc::new(crate::recipe::RecipeMaker::new(cfg.clone())))
                    .with_proxy_image(envoy_image.clone());
                (Arc::new(builder), provisioner, envoy_image)
            }
            EngineUse::None | EngineUse::Images => {
                // Asked at most which sidecar image it has: `planned()` only reads files.
                let (engine, envoy_image) = if engine == EngineUse::Images {
                    let engine = connect_engine(&cfg).await?;
                    let envoy_image =
                        resolve_image(&engine, &cfg.sidecar.image, &cfg.sidecar.offline_image)
                            .await?;
                    (engine, envoy_image)
                } else {
                    let engine = DockerEngine::client(
                        cfg.docker.docker_host.as_deref(),
                        cfg.docker.request_timeout,
                    )
                    .context("[docker] docker_host")?;
                    (engine, cfg.sidecar.image.clone())
                };
                let builder = DockerImageBuilder::new(engine, cfg.images.clone())
                    .context("image builder ([images])")?;
                (Arc::new(builder), Arc::new(NoProvisioner), envoy_image)
            }
        };
        let deployer = Deployer::new(
            Stages {
                fetcher: fetcher.clone(),
                resolver: resolver.clone(),
                builder,
                pki,
                sidecar,
                provisioner,
                prober: prober.clone() as Arc<dyn HealthProber>,
            },
            DeployOptions {
                project: project.clone(),
                network: cfg.network_name(&project),
                envoy_image,
                parallelism: cfg.parallelism.max(1),
                state_dir: cfg.project_dir(&project),
                health_deadline: cfg.health_deadline.max(Duration::from_secs(1)),
                health_settle: cfg.health_settle,
                health_settle_listening: cfg.health_settle_listening,
                health_check_timeout: cfg.health_check_timeout.max(Duration::from_millis(100)),
                otel_endpoint: cfg.otel_endpoint.clone(),
                deadline: cfg.deploy_deadline,
                release_timeout: cfg.release_timeout,
                egress: cfg.mesh.egress,
                sandbox: None,
            },
        );
        Ok(App {
            cfg,
            project,
            deployer,
            fetcher,
            resolver,
            streamer: prober,
        })
    }

    /// Opens a running service's log stream through its Envoy (shared by `iac logs` and the
    /// admin API). The error says why: no published endpoint, or what the agent/Envoy answered.
    pub async fn log_stream(
        &self,
        running: &RunningService,
        query: LogQuery,
    ) -> Result<BoxStream<'static, Result<LogLine, ProbeError>>, String> {
        let addr = running
            .endpoint
            .ok_or_else(|| format!("no published endpoint (container {})", running.state))?;
        let target = ProbeTarget {
            service: running.service.clone(),
            addr,
            deadline: LOG_CONNECT_DEADLINE,
        };
        self.streamer
            .stream(&target, query)
            .await
            .map_err(|e| e.to_string())
    }

    /// The configured provisioner's name (`docker`, `terraform`, `swarm`).
    pub fn provisioner_name(&self) -> &'static str {
        self.deployer.stages().provisioner.name()
    }
}

/// The engine `[docker] docker_host` names (else `DOCKER_HOST`, else the local socket): the one
/// way the binary reaches Docker (deploys, `iac serve`'s `/health`, `iac bootstrap`).
pub async fn connect_engine(cfg: &IacConfig) -> anyhow::Result<DockerEngine> {
    DockerEngine::connect(
        cfg.docker.docker_host.as_deref(),
        cfg.docker.request_timeout,
    )
    .await
    .context("cannot reach the Docker engine ([docker] docker_host)")
}

/// `preferred` when the engine has it, else `offline` when it has that, else a clear error.
async fn resolve_image(
    engine: &DockerEngine,
    preferred: &str,
    offline: &str,
) -> anyhow::Result<String> {
    match engine.first_present(&[preferred, offline]).await? {
        Some(found) if found == preferred => Ok(preferred.to_string()),
        Some(found) => {
            tracing::info!(
                "image {preferred} is not on this engine; using its offline equivalent {found}"
            );
            Ok(found.to_string())
        }
        None => anyhow::bail!(
            "neither {preferred} nor its offline equivalent {offline} is on this Docker engine: run `make bootstrap` (or `iac bootstrap`)"
        ),
    }
}

/// The provisioner of commands that never provision (`iac render`, `iac inspect`): asking it
/// anything is a programming error reported as such, never a silent success.
struct NoProvisioner;

#[async_trait]
impl Provisioner for NoProvisioner {
    fn name(&self) -> &'static str {
        "none"
    }
    /// Renders run nothing, release commands included: they pass through (into `entry.json`);
    /// whether a target can run them is decided by its own render (Kubernetes refuses) or plan.
    fn runs_releases(&self) -> bool {
        true
    }
    async fn diff(&self, _: &Stack) -> Result<Vec<Change>, ProvisionError> {
        Err(ProvisionError::Invalid(
            "this command does not talk to a provisioner".into(),
        ))
    }
    async fn apply(
        &self,
        _: &Stack,
        _: Arc<dyn HealthProber>,
        _: &Events,
    ) -> Result<Applied, ProvisionError> {
        Err(ProvisionError::Invalid(
            "this command does not talk to a provisioner".into(),
        ))
    }
    async fn destroy(&self, _: &ProjectName, _: &Events) -> Result<Vec<String>, ProvisionError> {
        Err(ProvisionError::Invalid(
            "this command does not talk to a provisioner".into(),
        ))
    }
    async fn running(&self, _: &ProjectName) -> Result<Vec<RunningService>, ProvisionError> {
        Err(ProvisionError::Invalid(
            "this command does not talk to a provisioner".into(),
        ))
    }
}

/// The admin API's backend: a fresh [`App`] per request's project. Core errors become API errors
/// through `From` (`ApiError::from`): a conflict is 409, the engine unreachable 503, a failing
/// provisioner or agent 502.
pub struct LiveBackend {
    cfg: IacConfig,
    default_project: ProjectName,
}

impl LiveBackend {
    /// The backend `iac serve` runs: requests without a project use `default_project`. Its
    /// fetches are marked API-originated, so they refuse private and local addresses
    /// (`[fetch] allow_private_hosts` lists the exceptions).
    pub fn new(mut cfg: IacConfig, default_project: ProjectName) -> Self {
        cfg.fetch.origin = iac_backends::fetch::FetchOrigin::Api;
        LiveBackend {
            cfg,
            default_project,
        }
    }

    async fn app(&self, project: ProjectName) -> Result<App, ApiError> {
        App::build(self.cfg.clone(), project)
            .await
            .map_err(|e| ApiError::unavailable(format!("{e:#}")))
    }
}

#[async_trait]
impl ControlPlaneBackend for LiveBackend {
    fn default_project(&self) -> ProjectName {
        self.default_project.clone()
    }

    async fn deploy(&self, input: DeployInput, events: Events) -> Result<DeployReport, ApiError> {
        let mut app = self.app(input.project).await?;
        app.deployer.set_sandbox(input.sandbox);
        Ok(app.deployer.deploy(&input.services, &events).await)
    }

    async fn destroy(&self, project: ProjectName, events: Events) -> Result<Vec<String>, ApiError> {
        let app = self.app(project).await?;
        Ok(app.deployer.destroy(&events).await?)
    }

    async fn services(&self, project: ProjectName) -> Result<Vec<ServiceStatus>, ApiError> {
        let app = self.app(project).await?;
        let checked = app.deployer.health(app.cfg.health_check_timeout).await?;
        Ok(checked
            .into_iter()
            .map(|(running, health)| ServiceStatus::new(running, health))
            .collect())
    }

    async fn logs(
        &self,
        project: ProjectName,
        service: ServiceName,
        query: LogQuery,
    ) -> Result<LogStream, ApiError> {
        let app = self.app(project.clone()).await?;
        let running = app.deployer.stages().provisioner.running(&project).await?;
        let r = running
            .into_iter()
            .find(|r| r.service == service)
            .ok_or_else(|| {
                ApiError::not_found(format!(
                    "service {service} is not running in project {project}"
                ))
            })?;
        let stream = app
            .log_stream(&r, query)
            .await
            .map_err(|e| ApiError::bad_gateway(format!("service {service}: {e}")))?;
        Ok(stream.map(|item| item.map_err(ApiError::from)).boxed())
    }

    async fn plan(&self, input: DeployInput) -> Result<crate::api::backend::PlanPreview, ApiError> {
        let project = input.project.clone();
        let app = self.app(input.project).await?;
        let (events, _rx) = iac_core::Events::channel();
        let outcome = app.deployer.plan(&input.services, &events).await?;
        Ok(crate::api::backend::PlanPreview::from_outcome(
            &project, &outcome,
        ))
    }

    /// Lists refs with the API's fetcher (guarded), without the engine or certificates.
    async fn refs(&self, slug: iac_core::Slug) -> Result<iac_core::RefList, ApiError> {
        let (fetcher, _) =
            source_stages(&self.cfg).map_err(|e| ApiError::unavailable(format!("{e:#}")))?;
        fetcher
            .list_refs(&slug)
            .await
            .map_err(crate::api::refs_error)
    }

    async fn engine_ping(&self) -> Result<String, String> {
        let engine = connect_engine(&self.cfg)
            .await
            .map_err(|e| format!("{e:#}"))?;
        let v = engine.version().await.map_err(|e| e.to_string())?;
        Ok(v.to_string())
    }
}

/// The project keeper the docker provisioner runs (`[docker] keeper`): the agent copied into
/// images, the engine's socket. `None` when switched off, or when the engine is not on a Unix
/// socket (a container cannot be handed a TCP engine's credentials; said once, here).
fn keeper_setup(cfg: &IacConfig) -> Option<iac_backends::provision::docker::keeper::KeeperSetup> {
    use iac_backends::provision::docker::keeper::{KeeperSetup, keeper_socket};
    if !cfg.docker.keeper {
        return None;
    }
    let env = std::env::var("DOCKER_HOST").ok().filter(|h| !h.is_empty());
    let Some(socket) = keeper_socket(cfg.docker.docker_host.as_deref(), env.as_deref()) else {
        tracing::warn!(
            "[docker] keeper: the engine is not on a Unix socket; no keeper runs, and pods an engine restart leaves down need `iac deploy`"
        );
        return None;
    };
    Some(KeeperSetup {
        agent_binary: cfg.images.agent_binary_path(),
        socket,
        image_labels: cfg.images.labels.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_api_backend_guards_its_fetches_and_the_cli_does_not() {
        let cfg = IacConfig::default();
        assert!(
            !cfg.fetch.guarded(),
            "CLI fetches still reach local servers"
        );
        let api = LiveBackend::new(cfg, ProjectName::new("demo").unwrap());
        assert_eq!(api.cfg.fetch.origin, iac_backends::fetch::FetchOrigin::Api);
        assert!(api.cfg.fetch.guarded());
    }
}
