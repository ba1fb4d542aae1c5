//! The deployment store and runner: starts deploys in their own tasks (a client disconnecting
//! never cancels a deploy), enforces one deploy/destroy at a time per project (a second one gets
//! 409 — it is not queued), keeps the last `max_deployments` deployments in memory (events capped
//! per deployment) for `GET /deployments/{id}`, and hands each caller a channel of
//! [`StreamItem`]s: every event, then the report (or an error) as the last item.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use iac_core::{DeployEvent, DeployReport, Events, ProjectName, Stage};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_util::task::TaskTracker;
use uuid::Uuid;

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

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeploymentStatus {
    /// Still running.
    Running,
    /// Finished and every service is healthy.
    Succeeded,
    /// Finished with at least one failed service or a project-wide error.
    Failed,
    /// Could not run (the backend refused to start it).
    Error,
}

/// What `GET /deployments/{id}` returns.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeploymentRecord {
    pub id: Uuid,
    pub project: ProjectName,
    pub status: DeploymentStatus,
    /// Where it came from: `http` or `grpc`.
    pub origin: String,
    pub services: Vec<String>,
    pub started_at: String,
    pub finished_at: Option<String>,
    /// The most recent events (at most `max_events_per_deployment`).
    pub events: Vec<DeployEvent>,
    /// How many older events were dropped to respect that cap.
    pub events_dropped: u64,
    pub report: Option<DeployReport>,
    pub error: Option<ErrorBody>,
}

/// A short form for listings.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeploymentSummary {
    pub id: Uuid,
    pub project: ProjectName,
    pub status: DeploymentStatus,
    pub origin: String,
    pub started_at: String,
    pub finished_at: Option<String>,
}

struct Inner {
    records: HashMap<Uuid, DeploymentRecord>,
    /// Insertion order, oldest first.
    order: VecDeque<Uuid>,
    /// Projects with a deploy or destroy in progress → what holds them.
    busy: HashMap<ProjectName, String>,
}

/// Shared store; cheap to clone.
#[derive(Clone)]
pub struct Deployments {
    inner: Arc<Mutex<Inner>>,
    max_records: usize,
    max_events: usize,
    tracker: TaskTracker,
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
    pub fn new(max_records: usize, max_events: usize) -> Self {
        Deployments {
            inner: Arc::new(Mutex::new(Inner {
                records: HashMap::new(),
                order: VecDeque::new(),
                busy: HashMap::new(),
            })),
            max_records: max_records.max(1),
            max_events: max_events.max(1),
            tracker: TaskTracker::new(),
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
        g.busy.insert(project.clone(), what.to_string());
        Ok(ProjectGuard {
            inner: self.inner.clone(),
            project: project.clone(),
        })
    }

    pub fn get(&self, id: &Uuid) -> Option<DeploymentRecord> {
        self.lock().records.get(id).cloned()
    }

    /// Newest first.
    pub fn list(&self) -> Vec<DeploymentSummary> {
        let g = self.lock();
        g.order
            .iter()
            .rev()
            .filter_map(|id| g.records.get(id))
            .map(|r| DeploymentSummary {
                id: r.id,
                project: r.project.clone(),
                status: r.status,
                origin: r.origin.clone(),
                started_at: r.started_at.clone(),
                finished_at: r.finished_at.clone(),
            })
            .collect()
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

    /// Runs `fut` as a tracked task (waited for at shutdown).
    pub fn spawn<F>(&self, fut: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: std::future::Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.tracker.spawn(fut)
    }

    /// Starts a deploy (409 if the project is busy). Returns its id and the stream of items;
    /// the deploy runs to completion whether or not the receiver is read or dropped.
    pub fn start(
        &self,
        backend: Arc<dyn ControlPlaneBackend>,
        input: DeployInput,
        origin: &str,
    ) -> Result<(Uuid, mpsc::UnboundedReceiver<StreamItem>), ApiError> {
        let id = Uuid::new_v4();
        let guard = self.reserve(&input.project, &format!("deployment {id}"))?;
        let record = DeploymentRecord {
            id,
            project: input.project.clone(),
            status: DeploymentStatus::Running,
            origin: origin.to_string(),
            services: input.services.iter().map(|s| s.name.to_string()).collect(),
            started_at: iac_core::event::now_rfc3339(),
            finished_at: None,
            events: Vec::new(),
            events_dropped: 0,
            report: None,
            error: None,
        };
        {
            let mut g = self.lock();
            g.records.insert(id, record);
            g.order.push_back(id);
            self.evict(&mut g);
        }
        let (out_tx, out_rx) = mpsc::unbounded_channel();
        let store = self.clone();
        self.tracker.spawn(async move {
            let _guard = guard;
            let (events, mut rx) = Events::channel();
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
            let run = backend.deploy(input, events);
            tokio::pin!(run);
            let result = loop {
                tokio::select! {
                    biased;
                    Some(ev) = rx.recv() => store.push_event(&id, &out_tx, ev),
                    r = &mut run => break r,
                }
            };
            // Events emitted right before the deploy returned.
            while let Ok(ev) = rx.try_recv() {
                store.push_event(&id, &out_tx, ev);
            }
            let last = store.finish(&id, result);
            let _ = out_tx.send(last);
        });
        Ok((id, out_rx))
    }

    fn push_event(&self, id: &Uuid, out: &mpsc::UnboundedSender<StreamItem>, ev: DeployEvent) {
        {
            let mut g = self.lock();
            if let Some(r) = g.records.get_mut(id) {
                if r.events.len() >= self.max_events {
                    r.events.remove(0);
                    r.events_dropped += 1;
                }
                r.events.push(ev.clone());
            }
        }
        // A gone client is fine: the deploy continues and the record keeps the outcome.
        let _ = out.send(StreamItem::Event(ev));
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
                    r.report = Some(rep.clone());
                }
                StreamItem::Error(e) => {
                    r.status = DeploymentStatus::Error;
                    r.error = Some(e.clone());
                }
                StreamItem::Event(_) => unreachable!("finish builds a report or an error"),
            }
        }
        self.evict(&mut g);
        item
    }

    /// Drops the oldest finished records beyond the cap (running ones are never dropped).
    fn evict(&self, g: &mut Inner) {
        while g.records.len() > self.max_records {
            let Some(pos) = g.order.iter().position(|id| {
                g.records
                    .get(id)
                    .is_some_and(|r| r.status != DeploymentStatus::Running)
            }) else {
                break;
            };
            if let Some(id) = g.order.remove(pos) {
                g.records.remove(&id);
            }
        }
    }
}
