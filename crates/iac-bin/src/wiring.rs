//! Configuration → concrete backends → a [`Deployer`]. The only place that names backend types;
//! everything else talks to the `iac-core` traits.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use async_trait::async_trait;
use bollard::Docker;
use futures::StreamExt;
use futures::stream::BoxStream;
use iac_backends::auth::supabase::SupabaseVerifier;
use iac_backends::build::DockerImageBuilder;
use iac_backends::entry::DefaultResolver;
use iac_backends::fetch::DefaultFetcher;
use iac_backends::health::grpc::GrpcProber;
use iac_backends::pki::DevCa;
use iac_backends::provision::docker::{BollardEngine, DockerProvisioner};
use iac_backends::provision::swarm::SwarmProvisioner;
use iac_backends::provision::terraform::TerraformProvisioner;
use iac_backends::sidecar::envoy::{EnvoyConfig, EnvoyRenderer};
use iac_core::{
    Applied, AuthVerifier, Change, DeployOptions, DeployReport, Deployer, EntryResolver, Events,
    HealthProber, LogLine, LogQuery, LogStreamer, ProbeError, ProbeTarget, ProjectName,
    ProvisionError, Provisioner, RunningService, ServiceName, SourceFetcher, Stack, Stages,
};

use crate::api::{
    ApiError, ControlPlaneBackend, DeployInput, LogStream, ServeConfig, ServiceStatus,
};
use crate::cli::CaAction;
use crate::config::{IacConfig, ProvisionerKind};

/// Everything a command needs for one project.
pub struct App {
    pub cfg: IacConfig,
    pub project: ProjectName,
    pub deployer: Deployer,
    pub fetcher: Arc<dyn SourceFetcher>,
    pub resolver: Arc<dyn EntryResolver>,
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
    Ok((Arc::new(fetcher), Arc::new(DefaultResolver::new())))
}

impl App {
    pub async fn build(cfg: IacConfig, project: ProjectName) -> anyhow::Result<App> {
        Self::build_with(cfg, project, EngineUse::Required).await
    }

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
                // One connection (to `[docker] docker_host`, else DOCKER_HOST / the local socket),
                // shared by the image builder and the docker provisioner.
                let engine = connect_engine(&cfg).await?;
                let docker = engine.docker().clone();
                let envoy_image =
                    resolve_image(&docker, &cfg.sidecar.image, &cfg.sidecar.offline_image).await?;
                let builder = DockerImageBuilder::with_docker(docker, cfg.images.clone())
                    .context("image builder ([images])")?;
                let provisioner: Arc<dyn Provisioner> = match cfg.provisioner {
                    ProvisionerKind::Docker => Arc::new(DockerProvisioner::with_engine(
                        Arc::new(engine),
                        cfg.docker.clone(),
                    )),
                    ProvisionerKind::Terraform => {
                        Arc::new(TerraformProvisioner::new(cfg.terraform.clone()))
                    }
                    // The same engine connection: the swarm manager that builds the images.
                    ProvisionerKind::Swarm => Arc::new(SwarmProvisioner::with_docker(
                        engine.docker().clone(),
                        cfg.swarm.clone(),
                    )),
                };
                (Arc::new(builder), provisioner, envoy_image)
            }
            EngineUse::None => {
                let docker = Docker::connect_with_defaults().context("docker client")?;
                let builder = DockerImageBuilder::with_docker(docker, cfg.images.clone())
                    .context("image builder ([images])")?;
                (
                    Arc::new(builder),
                    Arc::new(NoProvisioner),
                    cfg.sidecar.image.clone(),
                )
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
                otel_endpoint: cfg.otel_endpoint.clone(),
                deadline: cfg.deploy_deadline,
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

    pub fn provisioner_name(&self) -> &'static str {
        self.deployer.stages().provisioner.name()
    }
}

async fn connect_engine(cfg: &IacConfig) -> anyhow::Result<BollardEngine> {
    let timeout = cfg.docker.request_timeout.max(Duration::from_secs(1));
    BollardEngine::connect(cfg.docker.docker_host.as_deref(), timeout)
        .await
        .context("cannot reach the Docker engine (is dockerd running, and may this user use its socket?)")
}

/// `preferred` when the engine has it, else `offline` when it has that, else a clear error.
async fn resolve_image(docker: &Docker, preferred: &str, offline: &str) -> anyhow::Result<String> {
    if docker.inspect_image(preferred).await.is_ok() {
        return Ok(preferred.to_string());
    }
    if docker.inspect_image(offline).await.is_ok() {
        tracing::info!(
            "image {preferred} is not on this engine; using its offline equivalent {offline}"
        );
        return Ok(offline.to_string());
    }
    anyhow::bail!(
        "neither {preferred} nor its offline equivalent {offline} is on this Docker engine: run `make bootstrap` (or `iac bootstrap`)"
    )
}

/// The provisioner of commands that never provision (`iac render`, `iac inspect`): asking it
/// anything is a programming error reported as such, never a silent success.
struct NoProvisioner;

#[async_trait]
impl Provisioner for NoProvisioner {
    fn name(&self) -> &'static str {
        "none"
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

/// `iac ca init|show|rotate`.
pub fn ca_command(cfg: &IacConfig, action: CaAction, json: bool) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(
        cfg.pki.external.is_none(),
        "[pki.external] is configured: certificates are issued outside iac, there is no CA to manage"
    );
    let ca = DevCa::new(cfg.pki.clone());
    let info = match action {
        CaAction::Init => {
            let outcome = ca.init()?;
            if !json {
                println!("{outcome:?}");
            }
            ca.show()?
        }
        CaAction::Show => ca.show()?,
        CaAction::Rotate => ca.rotate()?,
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&info)?);
    } else {
        println!("{info}");
    }
    Ok(ExitCode::SUCCESS)
}

/// `iac serve`.
pub async fn serve(
    cfg: IacConfig,
    http: Option<String>,
    uds: Option<PathBuf>,
) -> anyhow::Result<ExitCode> {
    let mut serve_cfg: ServeConfig = cfg.serve.clone();
    serve_cfg.deploy_deadline = cfg.deploy_deadline;
    let http_given = http.is_some();
    if let Some(h) = http {
        serve_cfg.http_addr = h
            .parse()
            .with_context(|| format!("--http {h:?}: expected HOST:PORT"))?;
    }
    if let Some(u) = uds {
        serve_cfg.uds_path = Some(u);
    }
    let supabase_configured = cfg.supabase.url.is_some()
        || cfg.supabase.service_role_key.is_some()
        || cfg.supabase.jwt_secret.is_some();
    let auth: Arc<dyn AuthVerifier> = if supabase_configured {
        Arc::new(
            SupabaseVerifier::new(cfg.supabase.clone())
                .context("Supabase auth ([supabase] / SUPABASE_*)")?,
        )
    } else if http_given {
        anyhow::bail!(
            "--http needs an auth provider: set SUPABASE_URL and SUPABASE_SERVICE_ROLE_KEY (or [supabase] in iac.toml); without them only the Unix socket is served"
        );
    } else {
        // Nothing to verify TCP callers against: serve the Unix socket only (peer-uid auth).
        tracing::warn!(
            "no Supabase configured (SUPABASE_URL, SUPABASE_SERVICE_ROLE_KEY): the TCP listener is off, serving the Unix socket only"
        );
        serve_cfg.http_enabled = false;
        Arc::new(NoAuthProvider)
    };
    let default_project = crate::commands::resolve_project(&cfg, None)?;
    let backend = Arc::new(LiveBackend {
        cfg,
        default_project,
    });
    let shutdown = async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = term.recv() => {},
            _ = tokio::signal::ctrl_c() => {},
        }
        tracing::info!("shutting down: waiting for in-flight requests and deploys");
    };
    crate::api::serve(serve_cfg, backend, auth, shutdown).await?;
    Ok(ExitCode::SUCCESS)
}

/// The verifier when no auth provider is configured: every bearer credential is refused (fail
/// closed). Only reachable if a TCP listener were enabled, which `serve` prevents.
struct NoAuthProvider;

#[async_trait]
impl AuthVerifier for NoAuthProvider {
    async fn verify(&self, _bearer: &str) -> Result<iac_core::Principal, iac_core::AuthError> {
        Err(iac_core::AuthError::Unavailable(
            "no auth provider is configured".into(),
        ))
    }
}

/// The admin API's backend: a fresh [`App`] per request's project.
struct LiveBackend {
    cfg: IacConfig,
    default_project: ProjectName,
}

impl LiveBackend {
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
        let app = self.app(input.project).await?;
        Ok(app.deployer.deploy(&input.services, &events).await)
    }

    async fn destroy(&self, project: ProjectName, events: Events) -> Result<Vec<String>, ApiError> {
        let app = self.app(project).await?;
        app.deployer
            .destroy(&events)
            .await
            .map_err(|e| ApiError::bad_gateway(e.to_string()))
    }

    async fn services(&self, project: ProjectName) -> Result<Vec<ServiceStatus>, ApiError> {
        let app = self.app(project).await?;
        let checked = app
            .deployer
            .health()
            .await
            .map_err(|e| ApiError::bad_gateway(e.to_string()))?;
        Ok(checked
            .into_iter()
            .map(|(running, health)| ServiceStatus { running, health })
            .collect())
    }

    async fn logs(
        &self,
        project: ProjectName,
        service: ServiceName,
        query: LogQuery,
    ) -> Result<LogStream, ApiError> {
        let app = self.app(project.clone()).await?;
        let running = app
            .deployer
            .stages()
            .provisioner
            .running(&project)
            .await
            .map_err(|e| ApiError::bad_gateway(e.to_string()))?;
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
        Ok(stream
            .map(|item| item.map_err(|e| ApiError::bad_gateway(e.to_string())))
            .boxed())
    }

    async fn engine_ping(&self) -> Result<String, String> {
        let engine = connect_engine(&self.cfg)
            .await
            .map_err(|e| format!("{e:#}"))?;
        let docker = engine.docker();
        let v = docker.version().await.map_err(|e| e.to_string())?;
        Ok(format!(
            "docker {} (API {})",
            v.version.unwrap_or_default(),
            v.api_version.unwrap_or_default()
        ))
    }
}
