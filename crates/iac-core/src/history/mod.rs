//! Deployment history: the domain types of one recorded deploy or destroy (who, when, the repos
//! file, the event stream, per-service outcome with stage timings, saved log tails) and the
//! [`HistoryStore`] trait the stores in `iac-backends` (SQLite, PostgreSQL) implement. No
//! database code lives here.
//!
//! Life of a record: [`HistoryStore::start`] (status `running`) → any number of
//! [`HistoryStore::append_events`] and [`HistoryStore::attach_log_tail`] →
//! [`HistoryStore::finish`]. [`HistoryStore::list`] pages newest first, [`HistoryStore::get`]
//! returns everything, [`HistoryStore::prune`] applies the retention.
//!
//! The same store keeps the web console's sessions ([`StoredSession`]) so that a restart of
//! `iac serve` does not sign anyone out: only a hash of the session id, the principal, the
//! expiry and a sealed credential the store cannot open (the console seals it with a key derived
//! from the session id, which only the browser's cookie holds).

use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::event::DeployEvent;
use crate::name::ProjectName;
use crate::report::{DeployReport, StageTiming};

mod owner;
mod recorder;

pub use owner::{
    HostIdentity, INTERRUPTED_CODE, LocalProcesses, ProcessState, ProcessView, RunOwner,
    RunningRecord, Verdict, judge, mark_interrupted, parse_stat,
};
pub use recorder::Recorder;

pub use crate::log_tail::{LOG_TAIL_BYTES, LOG_TAIL_LINES, LogTail};

/// Most items one [`HistoryStore::list`] call returns.
pub const MAX_PAGE: usize = 500;

/// What a record is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HistoryKind {
    /// A deploy.
    Deploy,
    /// A destroy.
    Destroy,
}

impl HistoryKind {
    /// Lowercase name, as stored and printed.
    pub fn as_str(self) -> &'static str {
        match self {
            HistoryKind::Deploy => "deploy",
            HistoryKind::Destroy => "destroy",
        }
    }

    /// The inverse of [`HistoryKind::as_str`].
    pub fn parse(s: &str) -> Result<HistoryKind, HistoryError> {
        match s {
            "deploy" => Ok(HistoryKind::Deploy),
            "destroy" => Ok(HistoryKind::Destroy),
            other => Err(HistoryError::Corrupt(format!(
                "kind {other:?}: expected \"deploy\" or \"destroy\""
            ))),
        }
    }
}

/// Where a record stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HistoryStatus {
    /// Still running (or its process died before finishing it and nothing has proved that
    /// yet: see [`HistoryStatus::Interrupted`]).
    Running,
    /// Finished and every service is healthy (a destroy: everything removed).
    Succeeded,
    /// Finished with at least one failed service or a project-wide error.
    Failed,
    /// Could not run at all.
    Error,
    /// Never finished: its process provably died (killed, or the host rebooted) while it ran
    /// ([`mark_interrupted`]).
    Interrupted,
}

impl HistoryStatus {
    /// Lowercase name, as stored and printed.
    pub fn as_str(self) -> &'static str {
        match self {
            HistoryStatus::Running => "running",
            HistoryStatus::Succeeded => "succeeded",
            HistoryStatus::Failed => "failed",
            HistoryStatus::Error => "error",
            HistoryStatus::Interrupted => "interrupted",
        }
    }

    /// The inverse of [`HistoryStatus::as_str`].
    pub fn parse(s: &str) -> Result<HistoryStatus, HistoryError> {
        match s {
            "running" => Ok(HistoryStatus::Running),
            "succeeded" => Ok(HistoryStatus::Succeeded),
            "failed" => Ok(HistoryStatus::Failed),
            "error" => Ok(HistoryStatus::Error),
            "interrupted" => Ok(HistoryStatus::Interrupted),
            other => Err(HistoryError::Corrupt(format!(
                "status {other:?}: expected running, succeeded, failed, error or interrupted"
            ))),
        }
    }
}

/// What [`HistoryStore::start`] records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryStart {
    /// The record's id (the API's deployment id).
    pub id: String,
    /// The project.
    pub project: ProjectName,
    /// Deploy or destroy.
    pub kind: HistoryKind,
    /// Who asked: the API caller's subject, or `cli:<user>`.
    pub who: String,
    /// Where it came from: `http`, `grpc` or `cli`.
    pub origin: String,
    /// RFC 3339 with milliseconds.
    pub started_at: String,
    /// The services asked for, in order.
    pub services: Vec<String>,
    /// The repos file text (the CLI's file, or the API request's services as JSON); `None` for
    /// a destroy.
    pub repos: Option<String>,
    /// The process running it ([`RunOwner::current`]); `None` when the host could not be
    /// identified (such a record is never marked interrupted).
    #[serde(default)]
    pub owner: Option<RunOwner>,
}

/// One service's outcome.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceOutcome {
    /// The service.
    pub service: String,
    /// Deployed and proven SERVING.
    pub ok: bool,
    /// What provisioning did (`create`, `replace`, `unchanged`, …), when it got that far.
    pub action: Option<String>,
    /// The first error.
    pub error: Option<String>,
    /// Every stage run, in order, with its wall time.
    pub stages: Vec<StageTiming>,
}

/// What [`HistoryStore::finish`] records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryFinish {
    /// The final status (not `running`).
    pub status: HistoryStatus,
    /// RFC 3339 with milliseconds.
    pub finished_at: String,
    /// Per service.
    pub outcomes: Vec<ServiceOutcome>,
    /// The deploy's report, when there is one.
    pub report: Option<DeployReport>,
    /// A destroy's removed objects, or a deploy's removed services.
    pub removed: Vec<String>,
    /// Why it failed as a whole, if it did.
    pub error: Option<String>,
    /// A machine-readable code for [`HistoryFinish::error`] (the admin API's error code, e.g.
    /// `deadline_exceeded`), when there is one.
    pub error_code: Option<String>,
}

impl HistoryFinish {
    /// The finish of a deploy that produced `report`.
    pub fn from_report(report: &DeployReport, finished_at: String) -> HistoryFinish {
        HistoryFinish {
            status: if report.ok {
                HistoryStatus::Succeeded
            } else {
                HistoryStatus::Failed
            },
            finished_at,
            outcomes: report
                .services
                .iter()
                .map(|s| ServiceOutcome {
                    service: s.service.to_string(),
                    ok: s.ok,
                    action: s.action.map(|a| a.as_str().to_string()),
                    error: s.error.clone(),
                    stages: s.stages.clone(),
                })
                .collect(),
            report: Some(report.clone()),
            removed: report.removed.iter().map(|s| s.to_string()).collect(),
            error: report.error.clone(),
            error_code: None,
        }
    }

    /// The finish of something that could not run (or failed as a whole): `status` error,
    /// with an optional machine-readable `code`.
    pub fn error(
        code: Option<String>,
        error: impl Into<String>,
        finished_at: String,
    ) -> HistoryFinish {
        HistoryFinish {
            status: HistoryStatus::Error,
            finished_at,
            outcomes: Vec::new(),
            report: None,
            removed: Vec::new(),
            error: Some(error.into()),
            error_code: code,
        }
    }

    /// The finish of a destroy that removed `removed`.
    pub fn destroyed(removed: Vec<String>, finished_at: String) -> HistoryFinish {
        HistoryFinish {
            status: HistoryStatus::Succeeded,
            finished_at,
            outcomes: Vec::new(),
            report: None,
            removed,
            error: None,
            error_code: None,
        }
    }
}

/// One line of a listing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistorySummary {
    /// The record's id.
    pub id: String,
    /// The project.
    pub project: ProjectName,
    /// Deploy or destroy.
    pub kind: HistoryKind,
    /// Where it stands.
    pub status: HistoryStatus,
    /// Who asked.
    pub who: String,
    /// `http`, `grpc` or `cli`.
    pub origin: String,
    /// RFC 3339.
    pub started_at: String,
    /// RFC 3339, once finished.
    pub finished_at: Option<String>,
    /// The services asked for.
    pub services: Vec<String>,
}

/// Everything recorded about one deploy or destroy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryEntry {
    /// The listing fields.
    #[serde(flatten)]
    pub summary: HistorySummary,
    /// The repos file text, when recorded.
    pub repos: Option<String>,
    /// Per service, once finished.
    pub outcomes: Vec<ServiceOutcome>,
    /// The deploy's report, once finished.
    pub report: Option<DeployReport>,
    /// Removed objects or services.
    pub removed: Vec<String>,
    /// Why it failed as a whole.
    pub error: Option<String>,
    /// The machine-readable code of [`HistoryEntry::error`], when there is one.
    pub error_code: Option<String>,
    /// Every event, in the order appended.
    pub events: Vec<DeployEvent>,
    /// Saved log tails, in the order attached.
    pub log_tails: Vec<LogTail>,
}

/// A [`HistoryStore::list`] request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HistoryQuery {
    /// Only this project.
    pub project: Option<ProjectName>,
    /// At most this many (clamped to 1..=[`MAX_PAGE`]).
    pub limit: usize,
    /// The `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// One page of a listing, newest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryPage {
    /// The records.
    pub items: Vec<HistorySummary>,
    /// Pass it as [`HistoryQuery::cursor`] for the next page; `None` on the last one.
    pub next_cursor: Option<String>,
}

/// How much history is kept ([`HistoryStore::prune`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// The newest this many finished records are kept (older ones are removed).
    pub keep: usize,
    /// Finished records that started longer ago than this are removed.
    pub max_age: Duration,
}

/// A history store failed.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    /// The database could not be opened, read or written.
    #[error("deployment history: {0}")]
    Backend(String),
    /// The database's schema is newer than this binary knows.
    #[error(
        "deployment history {location}: the database has schema version {found}, newer than the {known} this iac knows; upgrade iac, or point [history] url at another database"
    )]
    TooNew {
        /// The file or URL (credentials left out).
        location: String,
        /// The database's version.
        found: i64,
        /// The newest version this binary knows.
        known: i64,
    },
    /// No record has this id.
    #[error("deployment history: no record {0}")]
    NotFound(String),
    /// A cursor this store did not hand out.
    #[error("deployment history: cursor {0:?} is not one this server handed out")]
    BadCursor(String),
    /// A stored value does not parse.
    #[error("deployment history: stored data is corrupt: {0}")]
    Corrupt(String),
}

/// Parses an RFC 3339 timestamp into milliseconds since the Unix epoch (for ordering and
/// retention by age).
pub fn rfc3339_millis(ts: &str) -> Result<i64, HistoryError> {
    let t = humantime::parse_rfc3339_weak(ts)
        .map_err(|e| HistoryError::Corrupt(format!("timestamp {ts:?}: {e}")))?;
    Ok(system_millis(t))
}

/// Milliseconds since the Unix epoch (0 before it).
pub fn system_millis(t: SystemTime) -> i64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// A store of deployment history; see the module docs. Implementations are shared across tasks.
#[async_trait]
pub trait HistoryStore: SessionStore + Send + Sync {
    /// Records the start of a deploy or destroy (status `running`). An id already recorded is
    /// an error.
    async fn start(&self, start: &HistoryStart) -> Result<(), HistoryError>;

    /// Appends events, in order, to a started record.
    async fn append_events(&self, id: &str, events: &[DeployEvent]) -> Result<(), HistoryError>;

    /// Finishes a started record.
    async fn finish(&self, id: &str, finish: &HistoryFinish) -> Result<(), HistoryError>;

    /// Saves a container's log tail with a record.
    async fn attach_log_tail(&self, id: &str, tail: &LogTail) -> Result<(), HistoryError>;

    /// Records newest first, filtered and paged as `query` says.
    async fn list(&self, query: &HistoryQuery) -> Result<HistoryPage, HistoryError>;

    /// One record with its events and log tails; `None` when unknown (or pruned).
    async fn get(&self, id: &str) -> Result<Option<HistoryEntry>, HistoryError>;

    /// Removes finished records beyond `retention` as of `now`; returns how many. Running
    /// records are never removed.
    async fn prune(&self, retention: &Retention, now: SystemTime) -> Result<u64, HistoryError>;

    /// The `running` records (of `project`, else all), with their owners.
    async fn running(
        &self,
        project: Option<&ProjectName>,
    ) -> Result<Vec<RunningRecord>, HistoryError>;

    /// Finishes record `id` only if it is still `running` (one conditional write: a record its
    /// owner finished meanwhile keeps that finish); returns whether it did.
    async fn finish_if_running(
        &self,
        id: &str,
        finish: &HistoryFinish,
    ) -> Result<bool, HistoryError>;
}

/// A console session as the store keeps it. The store cannot act as the session: `id_hash` is
/// a one-way hash of the cookie's secret id, and `sealed` is encrypted with a key derived from
/// that id (see `iac-bin`'s `console/sealed.rs`); without the cookie neither leads anywhere.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredSession {
    /// SHA-256 of the session id, 64 lowercase hex digits: the row's key.
    pub id_hash: String,
    /// Who signed in (subject, and email when known), for audit; the credential is verified
    /// again on use.
    pub principal: String,
    /// When the session ends unless used again (milliseconds since the epoch).
    pub expires_ms: i64,
    /// The credential (refresh token, or a pasted access token), sealed; opaque to the store.
    pub sealed: String,
}

/// Where the console's sessions are kept: the deployment history's database (one file or one
/// PostgreSQL database holds both; every [`HistoryStore`] is one), so sessions survive a
/// restart of `iac serve`.
#[cfg_attr(any(test, feature = "mocks"), mockall::automock)]
#[async_trait]
pub trait SessionStore: Send + Sync {
    /// Inserts a new session (sign-in); an error when a row with its `id_hash` exists.
    async fn insert_session(&self, session: &StoredSession) -> Result<(), HistoryError>;

    /// Overwrites the expiry and the sealed credential of the session with `session.id_hash`
    /// (use slides the expiry, a refresh rotates the sealed token) and returns whether there was
    /// one. Never inserts: once signed out (the row deleted) the session stays ended, even when
    /// a refresh or another control plane's expiry slide lands after the sign-out.
    async fn update_session(&self, session: &StoredSession) -> Result<bool, HistoryError>;

    /// The session with `id_hash` unless it expired by `now_ms`; `None` when unknown.
    async fn session(
        &self,
        id_hash: &str,
        now_ms: i64,
    ) -> Result<Option<StoredSession>, HistoryError>;

    /// Deletes the session (sign-out, a refused refresh); returns whether there was one.
    async fn delete_session(&self, id_hash: &str) -> Result<bool, HistoryError>;

    /// Deletes every session expired by `now_ms`; returns how many.
    async fn prune_sessions(&self, now_ms: i64) -> Result<u64, HistoryError>;
}

/// Where a store is (for messages and `iac config show`): a URL with its password replaced by
/// `[redacted]`.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let (auth, host) = match rest.rsplit_once('@') {
        Some((a, h)) => (Some(a), h),
        None => (None, rest),
    };
    match auth {
        Some(a) => match a.split_once(':') {
            Some((user, _)) => format!("{scheme}://{user}:[redacted]@{host}"),
            None => format!("{scheme}://{a}@{host}"),
        },
        None => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_and_urls() {
        assert_eq!(rfc3339_millis("1970-01-01T00:00:01.500Z").unwrap(), 1500);
        assert!(rfc3339_millis("yesterday").is_err());
        assert_eq!(
            redact_url("postgres://iac:s3cret@db:5432/iac"),
            "postgres://iac:[redacted]@db:5432/iac"
        );
        assert_eq!(redact_url("postgres://db/iac"), "postgres://db/iac");
    }

    #[test]
    fn kinds_and_statuses_round_trip() {
        for k in [HistoryKind::Deploy, HistoryKind::Destroy] {
            assert_eq!(HistoryKind::parse(k.as_str()).unwrap(), k);
        }
        for s in [
            HistoryStatus::Running,
            HistoryStatus::Succeeded,
            HistoryStatus::Failed,
            HistoryStatus::Error,
            HistoryStatus::Interrupted,
        ] {
            assert_eq!(HistoryStatus::parse(s.as_str()).unwrap(), s);
        }
        assert!(HistoryStatus::parse("done").is_err());
    }
}
