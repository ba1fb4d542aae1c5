//! [`Recorder`]: writes one deploy or destroy into a [`HistoryStore`] as it happens — the start,
//! the events in batches, the finish, then the retention — for the CLI and the admin API alike.
//!
//! History never slows or fails a deploy: events go through a bounded channel ([`crate::lossy`])
//! to a writer task, so a slow store loses events (recorded as one `events dropped` marker)
//! rather than stalling the deploy; a store that refuses a write is logged (warn) and the
//! recorder goes on; a record whose start could not be written gets nothing more.

use std::sync::Arc;
use std::time::SystemTime;

use super::{HistoryFinish, HistoryStart, HistoryStore, LogTail, Retention};
use crate::event::{DeployEvent, EventLevel, LogTails, Stage};
use crate::lossy::{self, LossyReceiver, LossySender};

/// Events waiting for the writer at most.
pub const RECORD_BUFFER: usize = 16 * 1024;
/// Events written in one batch at most.
const BATCH: usize = 512;

/// Records one deploy or destroy; see the module docs.
pub struct Recorder {
    store: Arc<dyn HistoryStore>,
    id: String,
    tx: Option<LossySender<DeployEvent>>,
    writer: Option<tokio::task::JoinHandle<()>>,
    retention: Option<Retention>,
}

impl Recorder {
    /// Records `start`; prunes by `retention` (if any) after the finish.
    pub async fn start(
        store: Arc<dyn HistoryStore>,
        start: HistoryStart,
        retention: Option<Retention>,
    ) -> Recorder {
        let (tx, writer) = match store.start(&start).await {
            Ok(()) => {
                let (tx, rx) = lossy::channel(RECORD_BUFFER, DeployEvent::dropped);
                let writer = tokio::spawn(write_events(store.clone(), start.id.clone(), rx));
                (Some(tx), Some(writer))
            }
            Err(e) => {
                tracing::warn!(deployment = %start.id, "not recorded in the history: {e}");
                (None, None)
            }
        };
        Recorder {
            store,
            id: start.id,
            tx,
            writer,
            retention,
        }
    }

    /// The record's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Whether the start was recorded (later writes are skipped otherwise).
    pub fn is_recording(&self) -> bool {
        self.tx.is_some()
    }

    /// Queues one event for the writer (never waits).
    pub fn event(&self, ev: DeployEvent) {
        if let Some(tx) = &self.tx {
            tx.send(ev);
        }
    }

    /// Saves a container's log tail with the record.
    pub async fn log_tail(&self, tail: &LogTail) {
        if !self.is_recording() {
            return;
        }
        if let Err(e) = self.store.attach_log_tail(&self.id, tail).await {
            tracing::warn!(deployment = %self.id, container = %tail.container, "log tail not recorded in the history: {e}");
        }
    }

    /// Saves every log tail `tails` collected (and an event counting those left out over
    /// [`crate::event::MAX_LOG_TAILS`]).
    pub async fn log_tails(&self, tails: &LogTails) {
        let (saved, left_out) = tails.take();
        for t in &saved {
            self.log_tail(t).await;
        }
        if left_out > 0 {
            self.event(DeployEvent {
                ts: crate::event::now_rfc3339(),
                service: None,
                stage: Stage::Provision,
                level: EventLevel::Warn,
                message: format!(
                    "{left_out} more log tail(s) were not saved: at most {} are kept per deployment",
                    crate::event::MAX_LOG_TAILS
                ),
                traceparent: None,
            });
        }
    }

    /// Waits for the queued events to be written, writes the finish, then applies the retention.
    pub async fn finish(mut self, finish: HistoryFinish) {
        drop(self.tx.take());
        let Some(writer) = self.writer.take() else {
            return;
        };
        if let Err(e) = writer.await {
            tracing::warn!(deployment = %self.id, "history writer failed: {e}");
        }
        if let Err(e) = self.store.finish(&self.id, &finish).await {
            tracing::warn!(deployment = %self.id, "outcome not recorded in the history: {e}");
        }
        if let Some(r) = &self.retention {
            match self.store.prune(r, SystemTime::now()).await {
                Ok(0) => {}
                Ok(n) => tracing::debug!("history retention removed {n} record(s)"),
                Err(e) => tracing::warn!("history retention failed: {e}"),
            }
        }
    }
}

/// The writer task: everything queued, in order, in batches, until every sender is gone.
async fn write_events(
    store: Arc<dyn HistoryStore>,
    id: String,
    mut rx: LossyReceiver<DeployEvent>,
) {
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while batch.len() < BATCH {
            match rx.try_recv() {
                Ok(ev) => batch.push(ev),
                Err(_) => break,
            }
        }
        if let Err(e) = store.append_events(&id, &batch).await {
            tracing::warn!(deployment = %id, "{} event(s) not recorded in the history: {e}", batch.len());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::{
        HistoryEntry, HistoryError, HistoryKind, HistoryPage, HistoryQuery, HistoryStatus,
    };
    use crate::name::ProjectName;
    use std::sync::Mutex;

    /// Keeps what it is told; fails `start` for the id `refuse`.
    #[derive(Default)]
    struct Memory {
        events: Mutex<Vec<DeployEvent>>,
        finished: Mutex<Option<HistoryFinish>>,
        pruned: Mutex<u32>,
    }

    #[async_trait::async_trait]
    impl crate::history::SessionStore for Memory {
        async fn insert_session(
            &self,
            _: &crate::history::StoredSession,
        ) -> Result<(), HistoryError> {
            unreachable!()
        }
        async fn update_session(
            &self,
            _: &crate::history::StoredSession,
        ) -> Result<bool, HistoryError> {
            unreachable!()
        }
        async fn session(
            &self,
            _: &str,
            _: i64,
        ) -> Result<Option<crate::history::StoredSession>, HistoryError> {
            unreachable!()
        }
        async fn delete_session(&self, _: &str) -> Result<bool, HistoryError> {
            unreachable!()
        }
        async fn prune_sessions(&self, _: i64) -> Result<u64, HistoryError> {
            unreachable!()
        }
    }

    #[async_trait::async_trait]
    impl HistoryStore for Memory {
        async fn start(&self, s: &HistoryStart) -> Result<(), HistoryError> {
            if s.id == "refuse" {
                return Err(HistoryError::Backend("disk full".into()));
            }
            Ok(())
        }
        async fn append_events(&self, _: &str, e: &[DeployEvent]) -> Result<(), HistoryError> {
            tokio::task::yield_now().await;
            self.events.lock().unwrap().extend_from_slice(e);
            Ok(())
        }
        async fn finish(&self, _: &str, f: &HistoryFinish) -> Result<(), HistoryError> {
            *self.finished.lock().unwrap() = Some(f.clone());
            Ok(())
        }
        async fn attach_log_tail(&self, _: &str, _: &LogTail) -> Result<(), HistoryError> {
            unreachable!()
        }
        async fn list(&self, _: &HistoryQuery) -> Result<HistoryPage, HistoryError> {
            unreachable!()
        }
        async fn get(&self, _: &str) -> Result<Option<HistoryEntry>, HistoryError> {
            unreachable!()
        }
        async fn prune(&self, _: &Retention, _: SystemTime) -> Result<u64, HistoryError> {
            *self.pruned.lock().unwrap() += 1;
            Ok(0)
        }
        async fn running(
            &self,
            _: Option<&ProjectName>,
        ) -> Result<Vec<crate::history::RunningRecord>, HistoryError> {
            unreachable!()
        }
        async fn finish_if_running(
            &self,
            _: &str,
            _: &HistoryFinish,
        ) -> Result<bool, HistoryError> {
            unreachable!()
        }
    }

    fn start(id: &str) -> HistoryStart {
        HistoryStart {
            id: id.into(),
            project: ProjectName::new("p").unwrap(),
            kind: HistoryKind::Deploy,
            who: "t".into(),
            origin: "cli".into(),
            started_at: "2026-01-01T00:00:00.000Z".into(),
            services: vec![],
            repos: None,
            owner: None,
        }
    }

    fn ev(i: usize) -> DeployEvent {
        DeployEvent {
            ts: String::new(),
            service: None,
            stage: Stage::Build,
            level: EventLevel::Info,
            message: format!("e{i}"),
            traceparent: None,
        }
    }

    #[tokio::test]
    async fn every_event_is_written_in_order_before_the_finish() {
        let store = Arc::new(Memory::default());
        let r = Recorder::start(
            store.clone(),
            start("a"),
            Some(Retention {
                keep: 1,
                max_age: std::time::Duration::from_secs(1),
            }),
        )
        .await;
        assert!(r.is_recording());
        for i in 0..2000 {
            r.event(ev(i));
        }
        r.finish(HistoryFinish::destroyed(vec![], String::new()))
            .await;
        let msgs: Vec<String> = store
            .events
            .lock()
            .unwrap()
            .iter()
            .map(|e| e.message.clone())
            .collect();
        assert_eq!(msgs, (0..2000).map(|i| format!("e{i}")).collect::<Vec<_>>());
        assert_eq!(
            store.finished.lock().unwrap().as_ref().unwrap().status,
            HistoryStatus::Succeeded
        );
        assert_eq!(*store.pruned.lock().unwrap(), 1);
    }

    #[tokio::test]
    async fn a_refused_start_records_nothing_more_and_does_not_fail() {
        let store = Arc::new(Memory::default());
        let r = Recorder::start(store.clone(), start("refuse"), None).await;
        assert!(!r.is_recording());
        r.event(ev(0));
        r.finish(HistoryFinish::destroyed(vec![], String::new()))
            .await;
        assert!(store.events.lock().unwrap().is_empty());
        assert!(store.finished.lock().unwrap().is_none());
    }
}
