//! The standard gRPC health service (`grpc.health.v1.Health`, from tonic-health's generated
//! types) over the same state as HealthCheck, so Kubernetes' `grpc:` probes and other standard
//! tools can ask the agent. SERVING exactly when HealthCheck says SERVING; NOT_SERVING otherwise
//! (starting, exited, failed). Known service names: "" (the whole pod), the app's
//! `iac.controlplane.v1.ControlPlane`; anything else is NOT_FOUND, as the protocol asks.
//!
//! With `--health-listen` this is the only service on a second listener (the ControlPlane API
//! stays on loopback), for probes that come from outside the pod such as the kubelet's.

use std::pin::Pin;
use std::time::Duration;

use iac_proto::HealthStatusCode;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_server::Health;
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};

use crate::service::AgentService;

/// Service names a client may ask about.
pub const KNOWN_SERVICES: [&str; 2] = ["", "iac.controlplane.v1.ControlPlane"];

/// How often `Watch` looks for a change.
const WATCH_EVERY: Duration = Duration::from_millis(500);

/// `grpc.health.v1.Health` backed by the agent's state.
#[derive(Debug, Clone)]
pub struct StdHealth {
    agent: AgentService,
}

impl StdHealth {
    /// The standard health service answering from `agent`'s state.
    pub fn new(agent: AgentService) -> Self {
        Self { agent }
    }

    fn status(&self) -> ServingStatus {
        if self.agent.current_health().status == HealthStatusCode::Serving as i32 {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        }
    }
}

fn known(service: &str) -> Result<(), Status> {
    if KNOWN_SERVICES.contains(&service) {
        Ok(())
    } else {
        Err(Status::not_found(format!(
            "unknown service {service:?}; expected \"\" or \"iac.controlplane.v1.ControlPlane\""
        )))
    }
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<HealthCheckResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Health for StdHealth {
    async fn check(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<HealthCheckResponse>, Status> {
        known(&request.get_ref().service)?;
        Ok(Response::new(HealthCheckResponse {
            status: self.status() as i32,
        }))
    }

    type WatchStream = WatchStream;

    async fn watch(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        known(&request.get_ref().service)?;
        let this = self.clone();
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tokio::spawn(async move {
            let mut last = None;
            loop {
                let now = this.status();
                if last != Some(now) {
                    let reply = HealthCheckResponse { status: now as i32 };
                    if tx.send(Ok(reply)).await.is_err() {
                        return;
                    }
                    last = Some(now);
                }
                tokio::select! {
                    _ = tx.closed() => return,
                    _ = tokio::time::sleep(WATCH_EVERY) => {}
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }
}
