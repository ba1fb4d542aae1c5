//! [`DeployEvent`]s and the [`Events`] sink every stage writes to. The CLI progress display, the
//! admin API's streamed response and tracing all consume the same events.
//!
//! The sink is bounded ([`crate::lossy`]): a consumer that falls behind loses events, never
//! stalls the deploy, and receives one [`DeployEvent::dropped`] marker in their place.

use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::log_tail::LogTail;
use crate::lossy::{self, LossyReceiver, LossySender};
use crate::name::ServiceName;
pub use crate::stage::Stage;

/// Events buffered per channel by [`Events::channel`].
pub const DEFAULT_EVENT_BUFFER: usize = 1024;

/// Start of the message of a [`DeployEvent::dropped`] marker.
pub const DROPPED_PREFIX: &str = "events dropped: ";

/// How important an event is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventLevel {
    /// Detail for debugging.
    Debug,
    /// Progress.
    Info,
    /// Something to look at; the deploy goes on.
    Warn,
    /// A failure.
    Error,
}

/// One thing that happened during a deploy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeployEvent {
    /// RFC 3339, UTC, milliseconds.
    pub ts: String,
    /// `None` for project-wide events (plan, provision of the network, …).
    pub service: Option<ServiceName>,
    /// The stage that emitted it.
    pub stage: Stage,
    /// Its level.
    pub level: EventLevel,
    /// What happened.
    pub message: String,
    /// W3C `traceparent` of the span the event was emitted in (the deploy's trace), when iac
    /// exports traces; lets a consumer of the admin API's stream join the trace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
}

impl DeployEvent {
    /// The marker a bounded channel delivers in place of `n` events it had to drop because its
    /// consumer fell behind: project-wide (`service: null`), stage `deploy`, level `warn`, message
    /// `events dropped: <n> …`.
    pub fn dropped(n: u64) -> DeployEvent {
        DeployEvent {
            ts: now_rfc3339(),
            service: None,
            stage: Stage::Deploy,
            level: EventLevel::Warn,
            message: format!(
                "{DROPPED_PREFIX}{n} event(s) were dropped here because this consumer fell behind (the deploy was not slowed down)"
            ),
            traceparent: None,
        }
    }

    /// How many events this marker stands for; `None` for every other event.
    pub fn dropped_count(&self) -> Option<u64> {
        if self.stage != Stage::Deploy || self.service.is_some() {
            return None;
        }
        let rest = self.message.strip_prefix(DROPPED_PREFIX)?;
        rest.split_whitespace().next()?.parse().ok()
    }
}

/// The receiving end of an [`Events`] channel: bounded; see [`crate::lossy`].
pub type EventReceiver = LossyReceiver<DeployEvent>;

/// A cheap, cloneable sink for [`DeployEvent`]s, optionally scoped to one service. Sending never
/// blocks and never fails: when nobody listens, events only reach tracing; when the consumer
/// falls behind, events are dropped and counted (see [`DeployEvent::dropped`]).
///
/// A sink may also collect log tails ([`Events::with_log_tails`]): the provisioner saves the
/// last lines of the containers it removes into it, for the deployment history.
#[derive(Debug, Clone, Default)]
pub struct Events {
    tx: Option<LossySender<DeployEvent>>,
    service: Option<ServiceName>,
    tails: Option<LogTails>,
}

/// Most log tails one deploy or destroy collects (each is capped by
/// [`crate::history::LOG_TAIL_BYTES`]); later ones are left out, and counted.
pub const MAX_LOG_TAILS: usize = 64;

/// The log tails collected through an [`Events`] sink; see [`Events::with_log_tails`].
#[derive(Debug, Clone, Default)]
pub struct LogTails {
    inner: std::sync::Arc<std::sync::Mutex<(Vec<LogTail>, u64)>>,
}

impl LogTails {
    /// Everything collected so far (emptied), and how many tails were left out over
    /// [`MAX_LOG_TAILS`].
    pub fn take(&self) -> (Vec<LogTail>, u64) {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        (std::mem::take(&mut g.0), std::mem::take(&mut g.1))
    }
}

impl Events {
    /// A sink and the receiving end, buffering [`DEFAULT_EVENT_BUFFER`] events.
    pub fn channel() -> (Events, EventReceiver) {
        Events::bounded(DEFAULT_EVENT_BUFFER)
    }

    /// A sink and the receiving end, buffering at most `capacity` events.
    pub fn bounded(capacity: usize) -> (Events, EventReceiver) {
        let (tx, rx) = lossy::channel(capacity, DeployEvent::dropped);
        (
            Events {
                tx: Some(tx),
                service: None,
                tails: None,
            },
            rx,
        )
    }

    /// The same sink, also collecting log tails ([`Events::save_log_tail`]) into the returned
    /// [`LogTails`].
    pub fn with_log_tails(self) -> (Events, LogTails) {
        let tails = LogTails::default();
        (
            Events {
                tails: Some(tails.clone()),
                ..self
            },
            tails,
        )
    }

    /// Whether log tails are collected (a provisioner reads container logs only then).
    pub fn wants_log_tails(&self) -> bool {
        self.tails.is_some()
    }

    /// Collects a log tail (dropped, and counted, past [`MAX_LOG_TAILS`]; ignored when nothing
    /// collects).
    pub fn save_log_tail(&self, tail: LogTail) {
        if let Some(t) = &self.tails {
            let mut g = t.inner.lock().unwrap_or_else(|p| p.into_inner());
            if g.0.len() < MAX_LOG_TAILS {
                g.0.push(tail);
            } else {
                g.1 += 1;
            }
        }
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
            tails: self.tails.clone(),
        }
    }

    /// The service this sink attributes events to, if any.
    pub fn service(&self) -> Option<&ServiceName> {
        self.service.as_ref()
    }

    /// Sends one event (dropped, and counted, when the consumer is behind).
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
            tx.send(DeployEvent {
                ts: now_rfc3339(),
                service: self.service.clone(),
                stage,
                level,
                message,
                traceparent: crate::trace_context::traceparent(),
            });
        }
    }

    /// [`Events::emit`] at debug level.
    pub fn debug(&self, stage: Stage, message: impl Into<String>) {
        self.emit(stage, EventLevel::Debug, message)
    }
    /// [`Events::emit`] at info level.
    pub fn info(&self, stage: Stage, message: impl Into<String>) {
        self.emit(stage, EventLevel::Info, message)
    }
    /// [`Events::emit`] at warn level.
    pub fn warn(&self, stage: Stage, message: impl Into<String>) {
        self.emit(stage, EventLevel::Warn, message)
    }
    /// [`Events::emit`] at error level.
    pub fn error(&self, stage: Stage, message: impl Into<String>) {
        self.emit(stage, EventLevel::Error, message)
    }
}

/// Current time as RFC 3339 with milliseconds.
pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_consumer_that_does_not_read_costs_a_bounded_buffer_and_gets_a_count() {
        let (events, mut rx) = Events::bounded(16);
        let svc = ServiceName::new("web").unwrap();
        let ev = events.for_service(&svc);
        for i in 0..50_000 {
            ev.info(Stage::Build, format!("line {i}"));
        }
        assert_eq!(
            rx.len(),
            16,
            "at most the buffer is held, however many are sent"
        );
        drop((events, ev));
        let mut delivered = 0u64;
        let mut dropped = 0u64;
        while let Some(e) = rx.recv().await {
            match e.dropped_count() {
                Some(n) => dropped += n,
                None => {
                    assert_eq!(e.service.as_ref(), Some(&svc));
                    delivered += 1;
                }
            }
        }
        assert_eq!(delivered, 16);
        assert_eq!(dropped, 50_000 - 16);
    }

    #[test]
    fn log_tails_are_collected_only_when_asked_for_and_bounded() {
        let tail = |n: usize| LogTail {
            service: "web".into(),
            container: format!("c{n}"),
            role: "app".into(),
            reason: "destroyed".into(),
            saved_at: String::new(),
            lines: vec![],
            truncated: false,
        };
        let plain = Events::discard();
        assert!(!plain.wants_log_tails());
        plain.save_log_tail(tail(0));
        let (events, tails) = Events::discard().with_log_tails();
        let svc = events.for_service(&ServiceName::new("web").unwrap());
        assert!(svc.wants_log_tails(), "a service's sink collects too");
        for n in 0..MAX_LOG_TAILS + 3 {
            svc.save_log_tail(tail(n));
        }
        let (got, left_out) = tails.take();
        assert_eq!(got.len(), MAX_LOG_TAILS);
        assert_eq!(got[0].container, "c0");
        assert_eq!(left_out, 3);
        assert_eq!(tails.take(), (vec![], 0));
    }

    #[test]
    fn only_the_marker_has_a_dropped_count() {
        let m = DeployEvent::dropped(7);
        assert_eq!(m.dropped_count(), Some(7));
        assert_eq!(m.level, EventLevel::Warn);
        assert!(m.message.contains("fell behind"), "{}", m.message);
        let mut other = m.clone();
        other.stage = Stage::Fetch;
        assert_eq!(other.dropped_count(), None);
        let plain = DeployEvent {
            message: "events dropped: soon".into(),
            ..DeployEvent::dropped(1)
        };
        assert_eq!(plain.dropped_count(), None);
    }
}
