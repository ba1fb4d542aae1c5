//! The gRPC `ControlPlane` service of the control plane (`iac.controlplane.v1`), served on the
//! same listeners as the HTTP API (axum routes `/iac.controlplane.v1.ControlPlane/*` to tonic;
//! HTTP/2 cleartext, prior knowledge). Authentication is the HTTP middleware's: metadata
//! `authorization: Bearer <token>` on TCP, peer uid on the Unix socket; `HealthCheck` is open
//! like `GET /health`, failures come back as `UNAUTHENTICATED`/`PERMISSION_DENIED`/`UNAVAILABLE`
//! (`RESOURCE_EXHAUSTED` past the failed-authentication limit). Authorization is
//! [`super::authz`]'s, as on HTTP: `Deploy` needs `deploy` on its project, `StreamLogs` `read`
//! on the default project (`PERMISSION_DENIED` otherwise).
//!
//! * `HealthCheck`: liveness of the control plane itself (always SERVING while it answers; the
//!   detail names the engine's reachability, never a version).
//! * `Deploy`: the same path as `POST /deploy` (validation, 409 → `ABORTED`, the deployment
//!   store) but answers once, with the result, when the deploy has finished.
//! * `StreamLogs`: proxied to the service's agent through [`super::ControlPlaneBackend::logs`],
//!   for the server's default project (the proto's `LogRequest` names no project).

use std::pin::Pin;

use futures::{Stream, StreamExt};
use iac_core::{HealthReport, HealthState, LogQuery, ServiceName};
use iac_proto::v1::health_status::Status as ProtoStatus;
use iac_proto::{
    ControlPlane, DeployRequest, DeployResult, HealthStatus, LogLine, LogRequest, ServiceResult,
};
use tonic::{Request, Response, Status};

use super::authz::{Action, Caller};
use super::deployments::StreamItem;
use super::schema;
use super::state::{AppState, validate_deploy};

/// The tonic service; built by the router.
pub struct GrpcControlPlane {
    st: AppState,
}

impl GrpcControlPlane {
    pub(crate) fn new(st: AppState) -> Self {
        GrpcControlPlane { st }
    }
}

/// The [`Caller`] the authentication middleware attached (the HTTP request's extensions reach
/// tonic's request unchanged).
fn caller<T>(request: &Request<T>) -> Result<Caller, Status> {
    request
        .extensions()
        .get::<Caller>()
        .cloned()
        .ok_or_else(|| Status::internal("request reached the service without authentication"))
}

fn health_to_proto(h: &HealthReport) -> HealthStatus {
    HealthStatus {
        status: match h.state {
            HealthState::Serving => ProtoStatus::Serving,
            HealthState::NotServing => ProtoStatus::NotServing,
            HealthState::Unknown | HealthState::Unreachable => ProtoStatus::Unknown,
        } as i32,
        exit_code: h.exit_code,
        detail: h.detail.clone(),
        uptime_ms: h.uptime_ms.unwrap_or(0),
        listening_ports: h.listening_ports.iter().map(|&p| u32::from(p)).collect(),
        app_port: h.app_port.map(u32::from).unwrap_or(0),
        forwarded_to: h.forwarded_to.map(u32::from).unwrap_or(0),
        restarts: h.restarts.as_ref().map(|r| iac_proto::Restarts {
            count: r.count,
            last_exit: r.last_exit.clone().unwrap_or_default(),
            last_exit_code: r.last_exit_code,
            last_exit_at: r.last_exit_at.clone().unwrap_or_default(),
            backoff_ms: r.backoff_ms.unwrap_or(0),
            restart_in_ms: r.restart_in_ms.unwrap_or(0),
        }),
    }
}

#[tonic::async_trait]
impl ControlPlane for GrpcControlPlane {
    async fn health_check(&self, _request: Request<()>) -> Result<Response<HealthStatus>, Status> {
        let engine = match tokio::time::timeout(
            self.st.cfg.engine_ping_timeout,
            self.st.backend.engine_ping(),
        )
        .await
        {
            Ok(Ok(_version)) => "engine reachable".to_string(),
            Ok(Err(e)) => format!("engine unreachable: {e}"),
            Err(_) => "engine unreachable: no answer in time".to_string(),
        };
        Ok(Response::new(HealthStatus {
            status: ProtoStatus::Serving as i32,
            exit_code: None,
            detail: format!("iac control plane serving; {engine}"),
            ..HealthStatus::default()
        }))
    }

    type StreamLogsStream = Pin<Box<dyn Stream<Item = Result<LogLine, Status>> + Send + 'static>>;

    async fn stream_logs(
        &self,
        request: Request<LogRequest>,
    ) -> Result<Response<Self::StreamLogsStream>, Status> {
        let caller = caller(&request)?;
        let req = request.into_inner();
        let service = ServiceName::new(&req.service)
            .map_err(|e| Status::invalid_argument(format!("service: {e}")))?;
        let project = self.st.backend.default_project();
        self.st
            .access
            .check(&caller, &project, Action::Read)
            .map_err(|e| e.to_grpc())?;
        let stream = self
            .st
            .backend
            .logs(
                project,
                service,
                LogQuery {
                    follow: req.follow,
                    tail: req.tail,
                },
            )
            .await
            .map_err(|e| e.to_grpc())?;
        let out = stream
            .take_until(self.st.shutdown.clone().cancelled_owned())
            .map(|item| {
                item.map(|l| LogLine {
                    ts: l.ts,
                    stream: l.stream,
                    msg: l.msg,
                    service: l.service.to_string(),
                })
                .map_err(|e| e.to_grpc())
            });
        Ok(Response::new(Box::pin(out)))
    }

    async fn deploy(
        &self,
        request: Request<DeployRequest>,
    ) -> Result<Response<DeployResult>, Status> {
        let caller = caller(&request)?;
        let req = request.into_inner();
        let body = schema::DeployRequest {
            slugs: Some(
                req.slugs
                    .into_iter()
                    .map(serde_json::Value::String)
                    .collect(),
            ),
            services: None,
            project: Some(req.project).filter(|p| !p.is_empty()),
            egress: None,
            sandbox: None,
            ttl: None,
        };
        let (input, repos) = validate_deploy(&self.st, &caller, body).map_err(|e| e.to_grpc())?;
        let (id, mut rx) = self
            .st
            .deployments
            .start(
                self.st.backend.clone(),
                input,
                repos,
                "grpc",
                super::deployments::who(&caller),
            )
            .await
            .map_err(|e| e.to_grpc())?;
        while let Some(item) = rx.recv().await {
            match item {
                StreamItem::Event(_) => {}
                StreamItem::Error(e) => {
                    let message = format!("deployment {id}: {}", e.message);
                    if e.code == "deadline_exceeded" {
                        return Err(Status::deadline_exceeded(message));
                    }
                    return Err(super::error::ApiError::new(500, e.code, message).to_grpc());
                }
                StreamItem::Report(r) => {
                    let services = r
                        .services
                        .iter()
                        .map(|s| ServiceResult {
                            service: s.service.to_string(),
                            slug: s.slug.clone(),
                            ok: s.ok,
                            health: s.health.as_ref().map(health_to_proto),
                            image: s.image.clone().unwrap_or_default(),
                            argv: s.entry.as_ref().map(|e| e.argv.clone()).unwrap_or_default(),
                            error: s
                                .error
                                .clone()
                                .or_else(|| r.error.clone())
                                .unwrap_or_default(),
                            url: s.url.clone().unwrap_or_default(),
                            warnings: s.warnings.clone(),
                        })
                        .collect();
                    return Ok(Response::new(DeployResult {
                        deployment_id: id.to_string(),
                        services,
                        ok: r.ok,
                    }));
                }
            }
        }
        Err(Status::internal(format!(
            "deployment {id} ended without a report"
        )))
    }
}
