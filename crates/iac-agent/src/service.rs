//! The agent's `iac.controlplane.v1.ControlPlane` implementation: HealthCheck from the child's
//! state, StreamLogs from the ring buffer (tail, then live lines when following), Deploy refused.

use std::pin::Pin;
use std::sync::Arc;

use iac_proto::{
    ControlPlane, DeployRequest, DeployResult, HealthStatus, HealthStatusCode, LogLine, LogRequest,
};
use tokio::sync::watch;
use tokio_stream::wrappers::BroadcastStream;
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status};

use crate::logbuf::{LogBuffer, StreamKind};
use crate::state::ChildState;
use crate::timefmt::rfc3339_millis;

/// Serves one supervised child.
#[derive(Debug, Clone)]
pub struct AgentService {
    state: watch::Receiver<ChildState>,
    logs: Arc<LogBuffer>,
}

impl AgentService {
    pub fn new(state: watch::Receiver<ChildState>, logs: Arc<LogBuffer>) -> Self {
        Self { state, logs }
    }
}

/// The line a lagging follower gets in place of the lines it missed.
pub fn lagged_line(skipped: u64) -> LogLine {
    LogLine {
        ts: rfc3339_millis(std::time::SystemTime::now()),
        stream: StreamKind::Stderr.as_str().to_owned(),
        msg: format!(
            "[iac-agent: this follower fell behind; {skipped} lines skipped (use StreamLogs without follow to read the buffer)]"
        ),
        service: String::new(),
    }
}

/// HealthCheck's answer for a state.
pub fn health_of(state: &ChildState) -> HealthStatus {
    let status = if state.is_serving() {
        HealthStatusCode::Serving
    } else {
        HealthStatusCode::NotServing
    };
    HealthStatus {
        status: status as i32,
        exit_code: state.exit_code(),
        detail: state.detail(),
    }
}

type LogStream = Pin<Box<dyn Stream<Item = Result<LogLine, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl ControlPlane for AgentService {
    async fn health_check(&self, _: Request<()>) -> Result<Response<HealthStatus>, Status> {
        let reply = health_of(&self.state.borrow());
        Ok(Response::new(reply))
    }

    type StreamLogsStream = LogStream;

    async fn stream_logs(
        &self,
        request: Request<LogRequest>,
    ) -> Result<Response<Self::StreamLogsStream>, Status> {
        let req = request.into_inner();
        let tail = usize::try_from(req.tail).unwrap_or(usize::MAX);
        let sub = self.logs.subscribe(tail, req.follow);
        let backlog = tokio_stream::iter(sub.backlog).map(|e| Ok(e.to_proto()));
        let stream: LogStream = match sub.live {
            Some(rx) => Box::pin(backlog.chain(BroadcastStream::new(rx).map(|item| {
                Ok(match item {
                    Ok(entry) => entry.to_proto(),
                    Err(BroadcastStreamRecvError::Lagged(n)) => lagged_line(n),
                })
            }))),
            None => Box::pin(backlog),
        };
        Ok(Response::new(stream))
    }

    async fn deploy(&self, _: Request<DeployRequest>) -> Result<Response<DeployResult>, Status> {
        Err(Status::unimplemented(
            "iac-agent serves HealthCheck and StreamLogs only; Deploy is served by the control plane (`iac serve`)",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_mapping() {
        let h = health_of(&ChildState::Running { pid: 7 });
        assert_eq!(h.status, HealthStatusCode::Serving as i32);
        assert_eq!((h.exit_code, h.detail.as_str()), (None, "running (pid 7)"));

        let h = health_of(&ChildState::Exited { code: 0 });
        assert_eq!(h.status, HealthStatusCode::Serving as i32);
        assert_eq!(h.exit_code, Some(0));

        let h = health_of(&ChildState::Exited { code: 1 });
        assert_eq!(h.status, HealthStatusCode::NotServing as i32);
        assert_eq!(
            (h.exit_code, h.detail.as_str()),
            (Some(1), "exited with code 1")
        );

        let h = health_of(&ChildState::Signaled { signal: 9 });
        assert_eq!(h.status, HealthStatusCode::NotServing as i32);
        assert_eq!(
            (h.exit_code, h.detail.as_str()),
            (Some(137), "killed by signal 9")
        );

        let h = health_of(&ChildState::SpawnFailed {
            error: "No such file or directory (os error 2)".into(),
            program: "python".into(),
            code: 127,
        });
        assert_eq!(h.status, HealthStatusCode::NotServing as i32);
        assert_eq!(h.exit_code, Some(127));
        assert_eq!(
            h.detail,
            "spawn failed: No such file or directory (os error 2): python"
        );
    }
}
