//! The deployment store and runner: starts deploys in their own tasks (a client disconnecting
//! never cancels a deploy), enforces one deploy/destroy at a time per project (a second one gets
//! 409 naming the holder — it is not queued —, also when another process such as a CLI deploy
//! holds the project's deploy lock: [`Deployments::with_projects_dir`]), keeps deployments in memory (events capped per deployment) for
//! `GET /deployments/{id}`, and hands each caller a bounded channel of [`StreamItem`]s: every
//! event, then the report (or an error) as the last item.
//!
//! Bounds, so no caller can make the server grow or hang:
//! * a caller that does not read its stream loses events (the deploy is never slowed): the
//!   stream holds at most [`STREAM_BUFFER`] items and shows a `DeployEvent::dropped` marker
//!   where events were left out; the final report always arrives;
//! * a deploy still running a grace period past `deploy_deadline` is stopped: its stream ends
//!   with a `deadline_exceeded` error, its record is finished and its project is free again;
//! * finished records are evicted beyond `max_deployments` and after `deployment_ttl`; when
//!   `max_deployments` deploys are all still running, a new one gets 503.
//!
//! Every deploy and destroy is also recorded in the deployment history ([`History`], through
//! an [`iac_core::history::Recorder`]): the start, every event, the outcome. The history, not
//! this memory, answers for finished deployments, also after a restart; a running one is read
//! from memory (its newest events may not be written yet).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use iac_core::history::{
    HistoryEntry, HistoryFinish, HistoryKind, HistoryStart, HistoryStatus, HistoryStore,
    LocalProcesses, LogTail, Recorder, Retention, RunOwner, ServiceOutcome,
};
use iac_core::lossy::{self, LossyReceiver, LossySender};
use iac_core::{DeployEvent, DeployReport, Events, ProjectName, Stage};
use serde::{Deserialize, Serialize};
use tokio_util::task::TaskTracker;
use uuid::Uuid;

/// Items buffered for one deploy stream whose reader is slower than the deploy.
pub const STREAM_BUFFER: usize = 1024;

/// The receiving end of a deploy stream (bounded; see the module docs).
pub type DeployStream = LossyReceiver<StreamItem>;

use super::backend::{ControlPlaneBackend, DeployInput};
use super::error::{ApiError, ErrorBody};

/// One line of a deploy stream (NDJSON line or SSE event), tagged by `type`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum StreamItem {
    /// A [`DeployEvent`] (its fields next to `"type": "event"`).
    Event(DeployEvent),
    /// The final [`DeployReport`] (its fields next to `"type": "report"`); always last on success.
    Report(DeployReport),
    /// The deploy could not run at all; last item.
    Error(ErrorBody),
}

impl StreamItem {
    /// SSE event name.
    pub fn kind(&self) -> &'static str {
        match self {
            StreamItem::Event(_) => "event",
            StreamItem::Report(_) => "report",
            StreamItem::Error(_) => "error",
        }
    }
}

/// Running, succeeded, failed, error or interrupted: the history's status.
pub type DeploymentStatus = HistoryStatus;

/// Where the history is and how much of it is kept (`[history]`).
#[derive(Clone)]
pub struct History {
    /// Where finished and running records are written (`[history] store`).
    pub store: Arc<dyn HistoryStore>,
    /// How many records and how long the store keeps them.
    pub retention: Retention,
}

/// What `GET /deployments/{id}` returns.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeploymentRecord {
    /// A fresh v4 id, given when the deploy or destroy is accepted.
    pub id: Uuid,
    /// The project it runs on.
    pub project: ProjectName,
    /// `deploy` or `destroy`.
    #[serde(default = "deploy_kind")]
    pub kind: HistoryKind,
    /// running, succeeded, failed, error or interrupted (its process died while it ran).
    pub status: DeploymentStatus,
    /// Where it came from: `http`, `grpc` or `cli`.
    pub origin: String,
    /// Who asked: the caller's subject (and email), or `cli:<user>`.
    #[serde(default)]
    pub who: String,
    /// The services asked for (deploy) or the project's services (destroy).
    pub services: Vec<String>,
    /// When it was accepted: RFC 3339 UTC.
    pub started_at: String,
    /// When it finished: RFC 3339 UTC; `None` while it runs.
    pub finished_at: Option<String>,
    /// The services asked for, as JSON (API) or the repos file's text (CLI).
    #[serde(default)]
    pub repos: Option<String>,
    /// The most recent events (at most `max_events_per_deployment`).
    pub events: VecDeque<DeployEvent>,
    /// How many older events were dropped to respect that cap.
    pub events_dropped: u64,
    /// Per service: ok, action, error and stage timings (once finished).
    #[serde(default)]
    pub outcomes: Vec<ServiceOutcome>,
    /// Removed services (a deploy) or objects (a destroy).
    #[serde(default)]
    pub removed: Vec<String>,
    /// The last lines of the app and sidecar logs of pods this deployment replaced or removed.
    #[serde(default)]
    pub log_tails: Vec<LogTail>,
    /// The deploy report, once a deploy finished.
    pub report: Option<DeployReport>,
    /// Why it could not run, when the status is `error`.
    pub error: Option<ErrorBody>,
}

fn deploy_kind() -> HistoryKind {
    HistoryKind::Deploy
}

impl DeploymentRecord {
    /// The API's view of a history entry: the newest `max_events` events, an `error` body when
    /// it could not run.
    pub fn from_history(e: HistoryEntry, max_events: usize) -> Result<Self, ApiError> {
        let id = Uuid::parse_str(&e.summary.id).map_err(|_| {
            ApiError::internal(format!(
                "history record {:?} does not have a UUID id",
                e.summary.id
            ))
        })?;
        let total = e.events.len();
        let skip = total.saturating_sub(max_events);
        let error = (e.summary.status == HistoryStatus::Error).then(|| ErrorBody {
            code: e.error_code.clone().unwrap_or_else(|| "error".to_string()),
            message: e.error.clone().unwrap_or_default(),
        });
        Ok(DeploymentRecord {
            id,
            project: e.summary.project,
            kind: e.summary.kind,
            status: e.summary.status,
            origin: e.summary.origin,
            who: e.summary.who,
            services: e.summary.services,
            started_at: e.summary.started_at,
            finished_at: e.summary.finished_at,
            repos: e.repos,
            events: e.events.into_iter().skip(skip).collect(),
            events_dropped: skip as u64,
            outcomes: e.outcomes,
            removed: e.removed,
            log_tails: e.log_tails,
            report: e.report,
            error,
        })
    }
}

/// A short form for listings.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeploymentSummary {
    /// The record's id.
    pub id: Uuid,
    /// The project it ran on.
    pub project: ProjectName,
    /// `deploy` or `destroy`.
    #[serde(default = "deploy_kind")]
    pub kind: HistoryKind,
    /// running, succeeded, failed, error or interrupted (its process died while it ran).
    pub status: DeploymentStatus,
    /// Where it came from: `http`, `grpc` or `cli`.
    pub origin: String,
    /// The caller's subject (and email), or `cli:<user>`; empty in records from before it was kept.
    #[serde(default)]
    pub who: String,
    /// The services asked for (deploy) or the project's services (destroy).
    #[serde(default)]
    pub services: Vec<String>,
    /// When it was accepted: RFC 3339 UTC.
    pub started_at: String,
    /// When it finished: RFC 3339 UTC; `None` while it runs.
    pub finished_at: Option<String>,
}

/// One page of `GET /deployments`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeploymentPage {
    /// Newest first.
    pub deployments: Vec<DeploymentSummary>,
    /// Pass as `cursor` for the next page; absent on the last one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

impl DeploymentSummary {
    /// A history listing row; `None` (logged) for a record without a UUID id.
    pub fn from_history(s: iac_core::history::HistorySummary) -> Option<Self> {
        let Ok(id) = Uuid::parse_str(&s.id) else {
            tracing::warn!(record = %s.id, "history record without a UUID id left out of the listing");
            return None;
        };
        Some(DeploymentSummary {
            id,
            project: s.project,
            kind: s.kind,
            status: s.status,
            origin: s.origin,
            who: s.who,
            services: s.services,
            started_at: s.started_at,
            finished_at: s.finished_at,
        })
    }
}

/// How the history names an API caller: the subject, and the email when the token has one.
pub fn who(caller: &super::authz::Caller) -> String {
    let p = caller.principal();
    match p.email.as_deref().filter(|e| !e.is_empty()) {
        Some(e) => format!("{} ({e})", p.subject),
        None => p.subject.clone(),
    }
}

struct Inner {
    records: HashMap<Uuid, DeploymentRecord>,
    /// Insertion order, oldest first.
    order: VecDeque<Uuid>,
    /// When each finished record finished (for `deployment_ttl`).
    finished: HashMap<Uuid, Instant>,
    /// Projects with a deploy or destroy in progress → what holds them.
    busy: HashMap<ProjectName, String>,
}

/// The store's bounds (from `[serve]`).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Records kept (`max_deployments`).
    pub max_records: usize,
    /// Events kept per record (`max_events_per_deployment`).
    pub max_events: usize,
    /// How long a finished record is kept (`deployment_ttl`).
    pub ttl: Duration,
    /// The deploy deadline; the store stops a deploy [`Limits::grace`] after it.
    pub deadline: Duration,
}

impl Limits {
    /// The limits `[serve]` sets.
    pub fn from_config(cfg: &super::ServeConfig) -> Self {
        Limits {
            max_records: cfg.max_deployments,
            max_events: cfg.max_events_per_deployment,
            ttl: cfg.deployment_ttl,
            deadline: cfg.deploy_deadline,
        }
    }

    /// How long past the deadline the store waits for the backend's own deadline handling
    /// (which reports per service): a tenth of the deadline, at most a minute.
    pub fn grace(&self) -> Duration {
        (self.deadline / 10).min(Duration::from_secs(60))
    }
}

/// Shared store; cheap to clone.
#[derive(Clone)]
pub struct Deployments {
    inner: Arc<Mutex<Inner>>,
    limits: Limits,
    tracker: TaskTracker,
    history: History,
    /// `<state_dir>/projects`: each project's `deploy.lock` is checked too (another process).
    projects_dir: Option<Arc<std::path::PathBuf>>,
}

/// Holds a project busy until dropped.
pub struct ProjectGuard {
    inner: Arc<Mutex<Inner>>,
    project: ProjectName,
}

impl Drop for ProjectGuard {
    fn drop(&mut self) {
        if let Ok(mut g) = self.inner.lock() {
            g.busy.remove(&self.project);
        }
    }
}

impl Deployments {
    /// An empty registry (no project busy) that records into `history`.
    pub fn new(limits: Limits, history: History) -> Self {
        Deployments {
            inner: Arc::new(Mutex::new(Inner {
                records: HashMap::new(),
                order: VecDeque::new(),
                finished: HashMap::new(),
                busy: HashMap::new(),
            })),
            limits: Limits {
                max_records: limits.max_records.max(1),
                max_events: limits.max_events.max(1),
                ..limits
            },
            tracker: TaskTracker::new(),
            history,
            projects_dir: None,
        }
    }

    /// Also refuses a project whose deploy lock (`<dir>/<project>/deploy.lock`) another process
    /// holds — a CLI deploy or destroy, another `iac serve` — naming it (`None`: not checked).
    pub fn with_projects_dir(mut self, dir: Option<std::path::PathBuf>) -> Self {
        self.projects_dir = dir.map(Arc::new);
        self
    }

    /// The history store.
    pub fn history(&self) -> &History {
        &self.history
    }

    /// Finishes as `interrupted` the history's `running` records (of `project`, else all) whose
    /// process on this host provably died (a killed CLI deploy, an `iac serve` killed before a
    /// restart); called before the history is read and when a deploy starts. Logged, never an
    /// error.
    pub async fn settle_interrupted(&self, project: Option<&ProjectName>) {
        let now = iac_core::event::now_rfc3339();
        if let Err(e) = iac_core::history::mark_interrupted(
            self.history.store.as_ref(),
            project,
            &LocalProcesses,
            &now,
        )
        .await
        {
            tracing::warn!("deployment history: interrupted runs not marked: {e}");
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().expect("deployment store poisoned")
    }

    /// Marks `project` busy for `what`, or 409 naming what holds it.
    pub fn reserve(&self, project: &ProjectName, what: &str) -> Result<ProjectGuard, ApiError> {
        let mut g = self.lock();
        if let Some(holder) = g.busy.get(project) {
            return Err(ApiError::conflict(format!(
                "project {project} is busy with {holder}; a second deploy or destroy is refused, not queued — retry when it has finished"
            )));
        }
        if let Some(dir) = &self.projects_dir {
            let lock = dir.join(project.as_str()).join("deploy.lock");
            match iac_core::fsutil::FileLock::holder_if_held(&lock) {
                Ok(None) => {}
                Ok(Some(holder)) => {
                    return Err(ApiError::conflict(format!(
                        "project {project} is busy: another process holds its deploy lock ({}): {holder}; a deploy or destroy is refused, not queued — retry when it has finished",
                        lock.display()
                    )));
                }
                Err(e) => {
                    return Err(ApiError::unavailable(format!(
                        "project {project}: cannot read its deploy lock {}: {e}",
                        lock.display()
                    )));
                }
            }
        }
        g.busy.insert(project.clone(), what.to_string());
        Ok(ProjectGuard {
            inner: self.inner.clone(),
            project: project.clone(),
        })
    }

    /// The in-memory record (recent deployments of this process only).
    pub fn get(&self, id: &Uuid) -> Option<DeploymentRecord> {
        let mut g = self.lock();
        self.evict(&mut g);
        g.records.get(id).cloned()
    }

    /// A deployment as `GET /deployments/{id}` shows it: a running one from memory, a finished
    /// one from the history (so it survives restarts), memory again when the history lacks it.
    pub async fn record(&self, id: &Uuid) -> Result<Option<DeploymentRecord>, ApiError> {
        let memory = self.get(id);
        if let Some(r) = &memory
            && r.status == DeploymentStatus::Running
        {
            return Ok(memory);
        }
        self.settle_interrupted(None).await;
        match self.history.store.get(&id.to_string()).await {
            Ok(Some(e)) => DeploymentRecord::from_history(e, self.limits.max_events).map(Some),
            Ok(None) => Ok(memory),
            Err(e) if memory.is_some() => {
                tracing::warn!(deployment = %id, "history unreadable, answering from memory: {e}");
                Ok(memory)
            }
            Err(e) => Err(ApiError::unavailable(e.to_string())),
        }
    }

    /// Deploys still running.
    pub fn running(&self) -> usize {
        self.lock()
            .records
            .values()
            .filter(|r| r.status == DeploymentStatus::Running)
            .count()
    }

    /// Waits for every deploy task (call after the listeners stopped).
    pub async fn wait_idle(&self) {
        self.tracker.close();
        self.tracker.wait().await;
    }

    /// Starts a deploy (409 if the project is busy, 503 if `max_deployments` deploys are all
    /// running). Returns its id and the stream of items; the deploy runs to completion (or to
    /// its deadline) whether or not the receiver is read or dropped.
    pub async fn start(
        &self,
        backend: Arc<dyn ControlPlaneBackend>,
        input: DeployInput,
        repos: String,
        origin: &str,
        who: String,
    ) -> Result<(Uuid, DeployStream), ApiError> {
        let id = Uuid::new_v4();
        {
            let mut g = self.lock();
            self.evict(&mut g);
            if g.records.len() >= self.limits.max_records
                && g.records
                    .values()
                    .all(|r| r.status == DeploymentStatus::Running)
            {
                return Err(ApiError::unavailable(format!(
                    "{} deployments are running, the most this server keeps (max_deployments); retry when one has finished",
                    g.records.len()
                )));
            }
        }
        let guard = self.reserve(&input.project, &format!("deployment {id}"))?;
        self.settle_interrupted(Some(&input.project)).await;
        let repos = Some(repos);
        let record = DeploymentRecord {
            id,
            project: input.project.clone(),
            kind: HistoryKind::Deploy,
            status: DeploymentStatus::Running,
            origin: origin.to_string(),
            who,
            services: input.services.iter().map(|s| s.name.to_string()).collect(),
            started_at: iac_core::event::now_rfc3339(),
            finished_at: None,
            repos,
            events: VecDeque::new(),
            events_dropped: 0,
            outcomes: Vec::new(),
            removed: Vec::new(),
            log_tails: Vec::new(),
            report: None,
            error: None,
        };
        let recorder = Recorder::start(
            self.history.store.clone(),
            HistoryStart {
                id: id.to_string(),
                project: record.project.clone(),
                kind: HistoryKind::Deploy,
                who: record.who.clone(),
                origin: record.origin.clone(),
                started_at: record.started_at.clone(),
                services: record.services.clone(),
                repos: record.repos.clone(),
                owner: RunOwner::current(&LocalProcesses),
            },
            Some(self.history.retention),
        )
        .await;
        {
            let mut g = self.lock();
            g.records.insert(id, record);
            g.order.push_back(id);
            self.evict(&mut g);
        }
        let (out_tx, out_rx) = lossy::channel(STREAM_BUFFER, |n| {
            StreamItem::Event(DeployEvent::dropped(n))
        });
        let store = self.clone();
        let limit = self.limits.deadline + self.limits.grace();
        let project = input.project.clone();
        self.tracker.spawn(async move {
            let _guard = guard;
            let (events, mut rx) = Events::channel();
            let (events, tails) = events.with_log_tails();
            events.info(
                Stage::Deploy,
                format!(
                    "deployment {id} accepted: project {}, services {}",
                    input.project,
                    input
                        .services
                        .iter()
                        .map(|s| s.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            );
            // Dropping the backend's future at the limit drops everything it holds (locks too).
            let run = tokio::time::timeout(limit, backend.deploy(input, events));
            tokio::pin!(run);
            let result = loop {
                tokio::select! {
                    biased;
                    Some(ev) = rx.recv() => {
                        store.push_event(&id, &out_tx, ev.clone());
                        recorder.event(ev);
                    }
                    r = &mut run => break r,
                }
            };
            // Events emitted right before the deploy returned.
            while let Ok(ev) = rx.try_recv() {
                store.push_event(&id, &out_tx, ev.clone());
                recorder.event(ev);
            }
            let result = result.unwrap_or_else(|_| {
                let e = ApiError::new(
                    504,
                    "deadline_exceeded",
                    format!(
                        "deployment {id} of project {project} was still running {} after it started, past its deadline (deploy_deadline = {}); it was stopped and the project released",
                        humantime::format_duration(limit),
                        humantime::format_duration(store.limits.deadline)
                    ),
                );
                tracing::warn!(deployment = %id, "{}", e.message);
                Err(e)
            });
            recorder.log_tails(&tails).await;
            let last = store.finish(&id, result);
            let finished_at = iac_core::event::now_rfc3339();
            let outcome = match &last {
                StreamItem::Report(r) => HistoryFinish::from_report(r, finished_at),
                StreamItem::Error(e) => {
                    HistoryFinish::error(Some(e.code.clone()), e.message.clone(), finished_at)
                }
                StreamItem::Event(_) => unreachable!("finish builds a report or an error"),
            };
            // Recorded before the last item goes out: a client that reads the report and then
            // asks the history finds the outcome there.
            recorder.finish(outcome).await;
            out_tx.send_last(last);
        });
        Ok((id, out_rx))
    }

    /// Destroys `project` (409 while a deploy or destroy of it runs) in a tracked task (a client
    /// hanging up does not abort a half-done destroy) and records it in the history.
    pub async fn destroy(
        &self,
        backend: Arc<dyn ControlPlaneBackend>,
        project: ProjectName,
        origin: &str,
        who: String,
    ) -> Result<Vec<String>, ApiError> {
        let id = Uuid::new_v4();
        let guard = self.reserve(&project, "a destroy")?;
        self.settle_interrupted(Some(&project)).await;
        let recorder = Recorder::start(
            self.history.store.clone(),
            HistoryStart {
                id: id.to_string(),
                project: project.clone(),
                kind: HistoryKind::Destroy,
                who,
                origin: origin.to_string(),
                started_at: iac_core::event::now_rfc3339(),
                services: Vec::new(),
                repos: None,
                owner: RunOwner::current(&LocalProcesses),
            },
            Some(self.history.retention),
        )
        .await;
        self.tracker
            .spawn(async move {
                let _guard = guard;
                let (events, mut rx) = Events::channel();
                let (events, tails) = events.with_log_tails();
                let run = backend.destroy(project, events);
                tokio::pin!(run);
                let result = loop {
                    tokio::select! {
                        biased;
                        Some(ev) = rx.recv() => recorder.event(ev),
                        r = &mut run => break r,
                    }
                };
                while let Ok(ev) = rx.try_recv() {
                    recorder.event(ev);
                }
                recorder.log_tails(&tails).await;
                let at = iac_core::event::now_rfc3339();
                recorder
                    .finish(match &result {
                        Ok(removed) => HistoryFinish::destroyed(removed.clone(), at),
                        Err(e) => {
                            let b = e.body();
                            HistoryFinish::error(Some(b.code), b.message, at)
                        }
                    })
                    .await;
                result
            })
            .await
            .map_err(|e| ApiError::internal(format!("destroy task failed: {e}")))?
    }

    fn push_event(&self, id: &Uuid, out: &LossySender<StreamItem>, ev: DeployEvent) {
        {
            let mut g = self.lock();
            if let Some(r) = g.records.get_mut(id) {
                if r.events.len() >= self.limits.max_events {
                    r.events.pop_front();
                    r.events_dropped += 1;
                }
                r.events.push_back(ev.clone());
            }
        }
        // A gone or slow client is fine: the deploy continues and the record keeps the outcome.
        out.send(StreamItem::Event(ev));
    }

    fn finish(&self, id: &Uuid, result: Result<DeployReport, ApiError>) -> StreamItem {
        let mut g = self.lock();
        let item = match result {
            Ok(report) => StreamItem::Report(report),
            Err(e) => StreamItem::Error(e.body()),
        };
        if let Some(r) = g.records.get_mut(id) {
            r.finished_at = Some(iac_core::event::now_rfc3339());
            match &item {
                StreamItem::Report(rep) => {
                    r.status = if rep.ok {
                        DeploymentStatus::Succeeded
                    } else {
                        DeploymentStatus::Failed
                    };
                    let outcome = HistoryFinish::from_report(rep, String::new());
                    r.outcomes = outcome.outcomes;
                    r.removed = outcome.removed;
                    r.report = Some(rep.clone());
                }
                StreamItem::Error(e) => {
                    r.status = DeploymentStatus::Error;
                    r.error = Some(e.clone());
                }
                StreamItem::Event(_) => unreachable!("finish builds a report or an error"),
            }
            g.finished.insert(*id, Instant::now());
        }
        self.evict(&mut g);
        item
    }

    /// Drops finished records older than the ttl, then the oldest finished records beyond the
    /// cap. Running records are never dropped here: the deadline finishes them first.
    fn evict(&self, g: &mut Inner) {
        let now = Instant::now();
        let expired: Vec<Uuid> = g
            .finished
            .iter()
            .filter(|(_, at)| now.duration_since(**at) >= self.limits.ttl)
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
            g.finished.remove(&id);
            g.records.remove(&id);
        }
        let Inner { records, order, .. } = &mut *g;
        order.retain(|id| records.contains_key(id));
        while g.records.len() > self.limits.max_records {
            let Some(pos) = g.order.iter().position(|id| {
                g.records
                    .get(id)
                    .is_some_and(|r| r.status != DeploymentStatus::Running)
            }) else {
                break;
            };
            if let Some(id) = g.order.remove(pos) {
                g.records.remove(&id);
                g.finished.remove(&id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::backend::{LogStream, ServiceStatus};
    use async_trait::async_trait;
    use iac_core::{LogQuery, ServiceName};

    /// Emits `n` events as fast as it can, then reports.
    struct Chatty(usize);

    #[async_trait]
    impl ControlPlaneBackend for Chatty {
        fn default_project(&self) -> ProjectName {
            ProjectName::new("p").unwrap()
        }
        async fn deploy(
            &self,
            input: DeployInput,
            events: Events,
        ) -> Result<DeployReport, ApiError> {
            for i in 0..self.0 {
                events.info(Stage::Build, format!("step {i}"));
                if i % 64 == 0 {
                    tokio::task::yield_now().await;
                }
            }
            Ok(DeployReport {
                project: input.project,
                ok: true,
                services: vec![],
                removed: vec![],
                error: None,
                millis: 0,
            })
        }
        async fn destroy(&self, _: ProjectName, _: Events) -> Result<Vec<String>, ApiError> {
            unreachable!()
        }
        async fn services(&self, _: ProjectName) -> Result<Vec<ServiceStatus>, ApiError> {
            unreachable!()
        }
        async fn logs(
            &self,
            _: ProjectName,
            _: ServiceName,
            _: LogQuery,
        ) -> Result<LogStream, ApiError> {
            unreachable!()
        }
        async fn engine_ping(&self) -> Result<String, String> {
            Ok(String::new())
        }
    }

    fn limits() -> Limits {
        Limits {
            max_records: 10,
            max_events: 100,
            ttl: Duration::from_secs(60),
            deadline: Duration::from_secs(60),
        }
    }

    async fn history(dir: &std::path::Path) -> History {
        History {
            store: Arc::new(
                iac_backends::history::SqliteHistory::open(dir)
                    .await
                    .unwrap(),
            ),
            retention: Retention {
                keep: 100,
                max_age: Duration::from_secs(3600),
            },
        }
    }

    #[tokio::test]
    async fn an_unread_stream_holds_at_most_its_buffer_and_the_record_at_most_its_cap() {
        const N: usize = 20_000;
        let tmp = tempfile::tempdir().unwrap();
        let store = Deployments::new(limits(), history(tmp.path()).await);
        let input = DeployInput {
            project: ProjectName::new("p").unwrap(),
            services: vec![],
            sandbox: None,
        };
        let (id, mut rx) = store
            .start(
                Arc::new(Chatty(N)),
                input,
                "[]".into(),
                "test",
                "tester".into(),
            )
            .await
            .unwrap();
        let t = Instant::now();
        while store.get(&id).unwrap().status == DeploymentStatus::Running {
            assert!(t.elapsed() < Duration::from_secs(20), "deploy stalled");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(
            rx.len() <= STREAM_BUFFER + 2,
            "{} items held for a reader that never read",
            rx.len()
        );
        let rec = store.get(&id).unwrap();
        assert_eq!(rec.events.len(), 100);
        assert_eq!(rec.events_dropped as usize, N + 1 - 100);
        let (mut delivered, mut dropped, mut last) = (0u64, 0u64, None);
        while let Some(item) = rx.recv().await {
            match &item {
                StreamItem::Event(e) => match e.dropped_count() {
                    Some(n) => dropped += n,
                    None => delivered += 1,
                },
                _ => last = Some(item),
            }
        }
        assert_eq!(delivered as usize, STREAM_BUFFER);
        assert_eq!((delivered + dropped) as usize, N + 1);
        assert!(matches!(last, Some(StreamItem::Report(r)) if r.ok));

        // The history has every event (the deploy was never slowed down for it either), and a
        // fresh store over the same database — a restarted server — answers with the newest
        // `max_events` of them.
        let entry = store
            .history()
            .store
            .get(&id.to_string())
            .await
            .unwrap()
            .expect("recorded");
        // Every event is in the history, or counted by a marker where the writer fell behind.
        let accounted: u64 = entry
            .events
            .iter()
            .map(|e| e.dropped_count().unwrap_or(1))
            .sum();
        assert_eq!(accounted as usize, N + 1);
        assert_eq!(entry.summary.who, "tester");
        let restarted = Deployments::new(limits(), history(tmp.path()).await);
        assert!(
            restarted.get(&id).is_none(),
            "memory is empty after a restart"
        );
        let rec = restarted
            .record(&id)
            .await
            .unwrap()
            .expect("from the history");
        assert_eq!(rec.status, DeploymentStatus::Succeeded);
        assert_eq!(rec.events.len(), 100);
        assert_eq!(rec.events_dropped as usize, entry.events.len() - 100);
        assert!(
            rec.events
                .iter()
                .eq(entry.events[entry.events.len() - 100..].iter()),
            "the newest events, in order"
        );
        assert!(rec.report.is_some_and(|r| r.ok));
    }
}
