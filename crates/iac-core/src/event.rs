//! [`DeployEvent`]s and the [`Events`] sink every stage writes to. The CLI progress display, the
//! admin API's streamed response and tracing all consume the same events.

use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::name::ServiceName;

/// The pipeline stage an event belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stage {
    Fetch,
    Resolve,
    Build,
    Certs,
    Render,
    Plan,
    Provision,
    Health,
    Destroy,
    Deploy,
}

impl Stage {
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Fetch => "fetch",
            Stage::Resolve => "resolve",
            Stage::Build => "build",
            Stage::Certs => "certs",
            Stage::Render => "render",
            Stage::Plan => "plan",
            Stage::Provision => "provision",
            Stage::Health => "health",
            Stage::Destroy => "destroy",
            Stage::Deploy => "deploy",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventLevel {
    Debug,
    Info,
    Warn,
    Error,
}

/// One thing that happened during a deploy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeployEvent {
    /// RFC 3339, UTC, milliseconds.
    pub ts: String,
    /// `None` for project-wide events (plan, provision of the network, …).
    pub service: Option<ServiceName>,
    pub stage: Stage,
    pub level: EventLevel,
    pub message: String,
    /// W3C `traceparent` of the span the event was emitted in (the deploy's trace), when iac
    /// exports traces; lets a consumer of the admin API's stream join the trace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
}

/// A cheap, cloneable sink for [`DeployEvent`]s, optionally scoped to one service. Sending never
/// blocks and never fails: when nobody listens, events only reach tracing.
#[derive(Debug, Clone, Default)]
pub struct Events {
    tx: Option<mpsc::UnboundedSender<DeployEvent>>,
    service: Option<ServiceName>,
}

impl Events {
    /// A sink and the receiving end.
    pub fn channel() -> (Events, mpsc::UnboundedReceiver<DeployEvent>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (
            Events {
                tx: Some(tx),
                service: None,
            },
            rx,
        )
    }

    /// A sink that only forwards to tracing.
    pub fn discard() -> Events {
        Events::default()
    }

    /// The same sink, with every event attributed to `service`.
    pub fn for_service(&self, service: &ServiceName) -> Events {
        Events {
            tx: self.tx.clone(),
            service: Some(service.clone()),
        }
    }

    pub fn service(&self) -> Option<&ServiceName> {
        self.service.as_ref()
    }

    pub fn emit(&self, stage: Stage, level: EventLevel, message: impl Into<String>) {
        let message = message.into();
        let svc = self
            .service
            .as_ref()
            .map(ServiceName::as_str)
            .unwrap_or("-");
        match level {
            EventLevel::Debug => {
                tracing::debug!(service = svc, stage = stage.as_str(), "{message}")
            }
            EventLevel::Info => tracing::info!(service = svc, stage = stage.as_str(), "{message}"),
            EventLevel::Warn => tracing::warn!(service = svc, stage = stage.as_str(), "{message}"),
            EventLevel::Error => {
                tracing::error!(service = svc, stage = stage.as_str(), "{message}")
            }
        }
        if let Some(tx) = &self.tx {
            let _ = tx.send(DeployEvent {
                ts: now_rfc3339(),
                service: self.service.clone(),
                stage,
                level,
                message,
                traceparent: crate::trace_context::traceparent(),
            });
        }
    }

    pub fn debug(&self, stage: Stage, message: impl Into<String>) {
        self.emit(stage, EventLevel::Debug, message)
    }
    pub fn info(&self, stage: Stage, message: impl Into<String>) {
        self.emit(stage, EventLevel::Info, message)
    }
    pub fn warn(&self, stage: Stage, message: impl Into<String>) {
        self.emit(stage, EventLevel::Warn, message)
    }
    pub fn error(&self, stage: Stage, message: impl Into<String>) {
        self.emit(stage, EventLevel::Error, message)
    }
}

/// Current time as RFC 3339 with milliseconds.
pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}
