//! [`SqliteHistory`]: the default deployment history, an SQLite database under the state
//! directory (`<state_dir>/history/history.db`, dir 0700, file 0600, WAL journal so `iac serve`
//! and a CLI deploy can write at once), with each record's events also appended to
//! `<id>.events.jsonl` beside it ([`super::jsonl`]).
//!
//! Schema versions live in `PRAGMA user_version`; [`MIGRATIONS`] brings an older database up to
//! date in one transaction, and a newer one is refused naming the file and both versions.
//! rusqlite is blocking: every call runs on tokio's blocking pool, one connection behind a mutex.

use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use iac_core::history::{
    HistoryEntry, HistoryError, HistoryFinish, HistoryPage, HistoryQuery, HistoryStart,
    HistoryStatus, HistoryStore, LogTail, Retention, RunningRecord, SessionStore, StoredSession,
    rfc3339_millis, system_millis,
};
use iac_core::{DeployEvent, ProjectName};
use rusqlite::{Connection, OptionalExtension, params};

use super::jsonl::{EventLog, private_dir};
use super::{
    SUMMARY_COLUMNS, SummaryRow, check_id, check_session_hash, check_version, from_json,
    from_json_opt, into_page, page_bounds, running_record, to_json,
};

/// The schema, one entry per version (index 0 = version 1). Never edit a released entry: add one.
pub const MIGRATIONS: &[&str] = &[
    // 1: records and their events.
    "CREATE TABLE deployments (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        id TEXT NOT NULL UNIQUE,
        project TEXT NOT NULL,
        kind TEXT NOT NULL,
        status TEXT NOT NULL,
        who TEXT NOT NULL,
        origin TEXT NOT NULL,
        started_at TEXT NOT NULL,
        started_ms INTEGER NOT NULL,
        finished_at TEXT,
        services TEXT NOT NULL,
        repos TEXT,
        outcomes TEXT,
        report TEXT,
        removed TEXT,
        error TEXT,
        error_code TEXT
    );
    CREATE INDEX deployments_by_project ON deployments (project, seq);
    CREATE TABLE events (
        n INTEGER PRIMARY KEY AUTOINCREMENT,
        deployment TEXT NOT NULL,
        body TEXT NOT NULL
    );
    CREATE INDEX events_by_deployment ON events (deployment, n);",
    // 2: saved log tails of replaced and destroyed pods.
    "CREATE TABLE log_tails (
        n INTEGER PRIMARY KEY AUTOINCREMENT,
        deployment TEXT NOT NULL,
        service TEXT NOT NULL,
        container TEXT NOT NULL,
        role TEXT NOT NULL,
        reason TEXT NOT NULL,
        saved_at TEXT NOT NULL,
        lines TEXT NOT NULL,
        truncated INTEGER NOT NULL
    );
    CREATE INDEX log_tails_by_deployment ON log_tails (deployment, n);",
    // 3: who runs a record (host, boot id, pid, start time), to tell a killed run.
    "ALTER TABLE deployments ADD COLUMN owner TEXT;
    CREATE INDEX deployments_running ON deployments (status) WHERE status = 'running';",
    // 4: the console's sessions (a hash of the id, the principal, the expiry, a sealed token).
    "CREATE TABLE sessions (
        id_hash TEXT PRIMARY KEY,
        principal TEXT NOT NULL,
        expires_ms INTEGER NOT NULL,
        sealed TEXT NOT NULL
    );
    CREATE INDEX sessions_by_expiry ON sessions (expires_ms);",
];

/// How long a writer waits for another process's write (a CLI deploy beside `iac serve`).
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// The SQLite store; cheap to clone.
#[derive(Clone)]
pub struct SqliteHistory {
    conn: Arc<Mutex<Connection>>,
    path: PathBuf,
    log: EventLog,
}

fn db_err(path: &Path, e: impl std::fmt::Display) -> HistoryError {
    HistoryError::Backend(format!("{}: {e}", path.display()))
}

impl SqliteHistory {
    /// Opens (creating, migrating) `<dir>/history.db`; event logs go to `dir` too.
    pub async fn open(dir: &Path) -> Result<SqliteHistory, HistoryError> {
        Self::open_at(&dir.join(super::SQLITE_FILE), dir).await
    }

    /// Opens (creating, migrating) the database at `path`; event logs go to `events_dir`.
    pub async fn open_at(path: &Path, events_dir: &Path) -> Result<SqliteHistory, HistoryError> {
        let path = path.to_path_buf();
        let events_dir = events_dir.to_path_buf();
        tokio::task::spawn_blocking(move || Self::open_blocking(&path, &events_dir))
            .await
            .map_err(|e| HistoryError::Backend(format!("open task failed: {e}")))?
    }

    fn open_blocking(path: &Path, events_dir: &Path) -> Result<SqliteHistory, HistoryError> {
        if let Some(parent) = path.parent() {
            private_dir(parent)?;
        }
        let log = EventLog::new(events_dir)?;
        // Created 0600 before SQLite sees it; SQLite gives its -wal and -shm files the same mode.
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(path)
            .map_err(|e| db_err(path, e))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| db_err(path, e))?;
        let mut conn = Connection::open(path).map_err(|e| db_err(path, e))?;
        conn.busy_timeout(BUSY_TIMEOUT)
            .map_err(|e| db_err(path, e))?;
        let mode: String = conn
            .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
            .map_err(|e| db_err(path, e))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(db_err(
                path,
                format!("could not switch to WAL journal mode (got {mode:?})"),
            ));
        }
        // WAL's usual pairing: commits need no fsync of their own, the checkpoint syncs.
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(|e| db_err(path, e))?;
        migrate(&mut conn, path)?;
        Ok(SqliteHistory {
            conn: Arc::new(Mutex::new(conn)),
            path: path.to_path_buf(),
            log,
        })
    }

    /// Writes a finish; with `only_running`, only to a record still `running` (returns whether
    /// it wrote). Without, an unknown id is [`HistoryError::NotFound`].
    async fn finish_where(
        &self,
        id: &str,
        f: &HistoryFinish,
        only_running: bool,
    ) -> Result<bool, HistoryError> {
        check_id(id)?;
        let outcomes = to_json(&f.outcomes)?;
        let report = f.report.as_ref().map(to_json).transpose()?;
        let removed = to_json(&f.removed)?;
        let (id, f) = (id.to_string(), f.clone());
        self.with(move |c, path, _| {
            let n = c
                .execute(
                    "UPDATE deployments SET status = ?2, finished_at = ?3, outcomes = ?4, report = ?5, removed = ?6, error = ?7, error_code = ?8
                     WHERE id = ?1 AND (?9 = 0 OR status = 'running')",
                    params![
                        id,
                        f.status.as_str(),
                        f.finished_at,
                        outcomes,
                        report,
                        removed,
                        f.error,
                        f.error_code,
                        only_running
                    ],
                )
                .map_err(|e| db_err(path, e))?;
            if n == 0 && !only_running {
                return Err(HistoryError::NotFound(id));
            }
            Ok(n > 0)
        })
        .await
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The event log of record `id`.
    pub fn events_file(&self, id: &str) -> PathBuf {
        self.log.path(id)
    }

    async fn with<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection, &Path, &EventLog) -> Result<T, HistoryError> + Send + 'static,
    ) -> Result<T, HistoryError> {
        let conn = self.conn.clone();
        let path = self.path.clone();
        let log = self.log.clone();
        tokio::task::spawn_blocking(move || {
            let mut c = conn
                .lock()
                .map_err(|_| HistoryError::Backend("history connection poisoned".into()))?;
            f(&mut c, &path, &log)
        })
        .await
        .map_err(|e| HistoryError::Backend(format!("history task failed: {e}")))?
    }
}

/// The newest schema version this binary knows.
pub fn known_version() -> i64 {
    MIGRATIONS.len() as i64
}

/// Brings the database at `path` to [`known_version`] (one transaction, taken before reading the
/// version so two processes opening a fresh file do not both migrate it).
pub fn migrate(conn: &mut Connection, path: &Path) -> Result<(), HistoryError> {
    migrate_to(conn, path, known_version())
}

/// Brings the database to `target` (≤ [`known_version`]); tests build old databases with it.
pub fn migrate_to(conn: &mut Connection, path: &Path, target: i64) -> Result<(), HistoryError> {
    let tx = conn
        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .map_err(|e| db_err(path, e))?;
    let found: i64 = tx
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .map_err(|e| db_err(path, e))?;
    check_version(&path.display().to_string(), found, known_version())?;
    for v in found + 1..=target {
        tx.execute_batch(MIGRATIONS[(v - 1) as usize])
            .map_err(|e| db_err(path, format!("migration to schema version {v}: {e}")))?;
    }
    if target > found {
        tx.pragma_update(None, "user_version", target)
            .map_err(|e| db_err(path, e))?;
    }
    tx.commit().map_err(|e| db_err(path, e))
}

fn status_of(conn: &Connection, path: &Path, id: &str) -> Result<HistoryStatus, HistoryError> {
    let s: Option<String> = conn
        .query_row(
            "SELECT status FROM deployments WHERE id = ?1",
            params![id],
            |r| r.get(0),
        )
        .optional()
        .map_err(|e| db_err(path, e))?;
    match s {
        Some(s) => HistoryStatus::parse(&s),
        None => Err(HistoryError::NotFound(id.to_string())),
    }
}

fn summary_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<SummaryRow> {
    Ok(SummaryRow {
        seq: r.get(0)?,
        id: r.get(1)?,
        project: r.get(2)?,
        kind: r.get(3)?,
        status: r.get(4)?,
        who: r.get(5)?,
        origin: r.get(6)?,
        started_at: r.get(7)?,
        finished_at: r.get(8)?,
        services: r.get(9)?,
    })
}

#[async_trait]
impl SessionStore for SqliteHistory {
    async fn insert_session(&self, s: &StoredSession) -> Result<(), HistoryError> {
        check_session_hash(&s.id_hash)?;
        let s = s.clone();
        self.with(move |c, path, _| {
            c.execute(
                "INSERT INTO sessions (id_hash, principal, expires_ms, sealed) VALUES (?1, ?2, ?3, ?4)",
                params![s.id_hash, s.principal, s.expires_ms, s.sealed],
            )
            .map_err(|e| db_err(path, e))?;
            Ok(())
        })
        .await
    }

    async fn update_session(&self, s: &StoredSession) -> Result<bool, HistoryError> {
        check_session_hash(&s.id_hash)?;
        let s = s.clone();
        self.with(move |c, path, _| {
            let n = c
                .execute(
                    "UPDATE sessions SET expires_ms = ?2, sealed = ?3 WHERE id_hash = ?1",
                    params![s.id_hash, s.expires_ms, s.sealed],
                )
                .map_err(|e| db_err(path, e))?;
            Ok(n > 0)
        })
        .await
    }

    async fn session(
        &self,
        id_hash: &str,
        now_ms: i64,
    ) -> Result<Option<StoredSession>, HistoryError> {
        check_session_hash(id_hash)?;
        let id_hash = id_hash.to_string();
        self.with(move |c, path, _| {
            c.query_row(
                "SELECT id_hash, principal, expires_ms, sealed FROM sessions
                 WHERE id_hash = ?1 AND expires_ms > ?2",
                params![id_hash, now_ms],
                |r| {
                    Ok(StoredSession {
                        id_hash: r.get(0)?,
                        principal: r.get(1)?,
                        expires_ms: r.get(2)?,
                        sealed: r.get(3)?,
                    })
                },
            )
            .optional()
            .map_err(|e| db_err(path, e))
        })
        .await
    }

    async fn delete_session(&self, id_hash: &str) -> Result<bool, HistoryError> {
        check_session_hash(id_hash)?;
        let id_hash = id_hash.to_string();
        self.with(move |c, path, _| {
            let n = c
                .execute("DELETE FROM sessions WHERE id_hash = ?1", params![id_hash])
                .map_err(|e| db_err(path, e))?;
            Ok(n > 0)
        })
        .await
    }

    async fn prune_sessions(&self, now_ms: i64) -> Result<u64, HistoryError> {
        self.with(move |c, path, _| {
            let n = c
                .execute(
                    "DELETE FROM sessions WHERE expires_ms <= ?1",
                    params![now_ms],
                )
                .map_err(|e| db_err(path, e))?;
            Ok(n as u64)
        })
        .await
    }
}

#[async_trait]
impl HistoryStore for SqliteHistory {
    async fn start(&self, s: &HistoryStart) -> Result<(), HistoryError> {
        check_id(&s.id)?;
        let started_ms = rfc3339_millis(&s.started_at)?;
        let services = to_json(&s.services)?;
        let owner = s.owner.as_ref().map(to_json).transpose()?;
        let s = s.clone();
        self.with(move |c, path, _| {
            c.execute(
                "INSERT INTO deployments (id, project, kind, status, who, origin, started_at, started_ms, services, repos, owner)
                 VALUES (?1, ?2, ?3, 'running', ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
                params![
                    s.id,
                    s.project.as_str(),
                    s.kind.as_str(),
                    s.who,
                    s.origin,
                    s.started_at,
                    started_ms,
                    services,
                    s.repos,
                    owner
                ],
            )
            .map_err(|e| db_err(path, format!("record {}: {e}", s.id)))?;
            Ok(())
        })
        .await
    }

    async fn append_events(&self, id: &str, events: &[DeployEvent]) -> Result<(), HistoryError> {
        check_id(id)?;
        let bodies = events.iter().map(to_json).collect::<Result<Vec<_>, _>>()?;
        let (id, events) = (id.to_string(), events.to_vec());
        self.with(move |c, path, log| {
            let tx = c.transaction().map_err(|e| db_err(path, e))?;
            status_of(&tx, path, &id)?;
            {
                let mut ins = tx
                    .prepare("INSERT INTO events (deployment, body) VALUES (?1, ?2)")
                    .map_err(|e| db_err(path, e))?;
                for b in &bodies {
                    ins.execute(params![id, b]).map_err(|e| db_err(path, e))?;
                }
            }
            tx.commit().map_err(|e| db_err(path, e))?;
            log.append(&id, &events)
        })
        .await
    }

    async fn finish(&self, id: &str, f: &HistoryFinish) -> Result<(), HistoryError> {
        self.finish_where(id, f, false).await.map(|_| ())
    }

    async fn finish_if_running(&self, id: &str, f: &HistoryFinish) -> Result<bool, HistoryError> {
        self.finish_where(id, f, true).await
    }

    async fn running(
        &self,
        project: Option<&ProjectName>,
    ) -> Result<Vec<RunningRecord>, HistoryError> {
        let project = project.map(|p| p.to_string());
        self.with(move |c, path, _| {
            let mut st = c
                .prepare(
                    "SELECT id, project, owner FROM deployments
                     WHERE status = 'running' AND (?1 IS NULL OR project = ?1) ORDER BY seq",
                )
                .map_err(|e| db_err(path, e))?;
            let rows = st
                .query_map(params![project], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, Option<String>>(2)?,
                    ))
                })
                .map_err(|e| db_err(path, e))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| db_err(path, e))?;
            rows.into_iter()
                .map(|(id, project, owner)| running_record(id, &project, owner.as_deref()))
                .collect()
        })
        .await
    }

    async fn attach_log_tail(&self, id: &str, t: &LogTail) -> Result<(), HistoryError> {
        check_id(id)?;
        let lines = to_json(&t.lines)?;
        let (id, t) = (id.to_string(), t.clone());
        self.with(move |c, path, _| {
            status_of(c, path, &id)?;
            c.execute(
                "INSERT INTO log_tails (deployment, service, container, role, reason, saved_at, lines, truncated)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                params![id, t.service, t.container, t.role, t.reason, t.saved_at, lines, t.truncated],
            )
            .map_err(|e| db_err(path, e))?;
            Ok(())
        })
        .await
    }

    async fn list(&self, q: &HistoryQuery) -> Result<HistoryPage, HistoryError> {
        let (limit, cursor) = page_bounds(q)?;
        let project = q.project.as_ref().map(|p| p.to_string());
        self.with(move |c, path, _| {
            let sql = format!(
                "SELECT {SUMMARY_COLUMNS} FROM deployments
                 WHERE (?1 IS NULL OR project = ?1) AND (?2 IS NULL OR seq < ?2)
                 ORDER BY seq DESC LIMIT ?3"
            );
            let mut st = c.prepare(&sql).map_err(|e| db_err(path, e))?;
            let rows = st
                .query_map(params![project, cursor, limit + 1], summary_row)
                .map_err(|e| db_err(path, e))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| db_err(path, e))?;
            into_page(rows, limit)
        })
        .await
    }

    async fn get(&self, id: &str) -> Result<Option<HistoryEntry>, HistoryError> {
        let id = id.to_string();
        self.with(move |c, path, _| {
            let sql = format!(
                "SELECT {SUMMARY_COLUMNS}, repos, outcomes, report, removed, error, error_code FROM deployments WHERE id = ?1"
            );
            type Rest = (
                Option<String>,
                Option<String>,
                Option<String>,
                Option<String>,
                Option<String>,
                Option<String>,
            );
            let row: Option<(SummaryRow, Rest)> = c
                .query_row(&sql, params![id], |r| {
                    Ok((
                        summary_row(r)?,
                        (
                            r.get(10)?,
                            r.get(11)?,
                            r.get(12)?,
                            r.get(13)?,
                            r.get(14)?,
                            r.get(15)?,
                        ),
                    ))
                })
                .optional()
                .map_err(|e| db_err(path, e))?;
            let Some((summary, (repos, outcomes, report, removed, error, error_code))) = row else {
                return Ok(None);
            };
            let mut st = c
                .prepare("SELECT body FROM events WHERE deployment = ?1 ORDER BY n")
                .map_err(|e| db_err(path, e))?;
            let events = st
                .query_map(params![id], |r| r.get::<_, String>(0))
                .map_err(|e| db_err(path, e))?
                .map(|b| {
                    let b: String = b.map_err(|e| db_err(path, e))?;
                    from_json::<DeployEvent>(&id, "events.body", &b)
                })
                .collect::<Result<Vec<DeployEvent>, HistoryError>>()?;
            let mut st = c
                .prepare(
                    "SELECT service, container, role, reason, saved_at, lines, truncated
                     FROM log_tails WHERE deployment = ?1 ORDER BY n",
                )
                .map_err(|e| db_err(path, e))?;
            let log_tails = st
                .query_map(params![id], |r| {
                    Ok((
                        LogTail {
                            service: r.get(0)?,
                            container: r.get(1)?,
                            role: r.get(2)?,
                            reason: r.get(3)?,
                            saved_at: r.get(4)?,
                            lines: Vec::new(),
                            truncated: r.get(6)?,
                        },
                        r.get::<_, String>(5)?,
                    ))
                })
                .map_err(|e| db_err(path, e))?
                .map(|row| {
                    let (mut t, lines) = row.map_err(|e| db_err(path, e))?;
                    t.lines = from_json(&id, "log_tails.lines", &lines)?;
                    Ok(t)
                })
                .collect::<Result<Vec<_>, HistoryError>>()?;
            Ok(Some(HistoryEntry {
                summary: summary.into_summary()?,
                repos,
                outcomes: from_json_opt(&id, "outcomes", outcomes.as_deref())?.unwrap_or_default(),
                report: from_json_opt(&id, "report", report.as_deref())?,
                removed: from_json_opt(&id, "removed", removed.as_deref())?.unwrap_or_default(),
                error,
                error_code,
                events,
                log_tails,
            }))
        })
        .await
    }

    async fn prune(&self, r: &Retention, now: SystemTime) -> Result<u64, HistoryError> {
        let cutoff = system_millis(now) - r.max_age.as_millis().min(i64::MAX as u128) as i64;
        let keep = r.keep.min(i64::MAX as usize) as i64;
        self.with(move |c, path, log| {
            let tx = c.transaction().map_err(|e| db_err(path, e))?;
            let doomed: Vec<String> = {
                let mut st = tx
                    .prepare(
                        "SELECT id FROM deployments WHERE status <> 'running' AND (
                            started_ms < ?1 OR seq NOT IN (
                                SELECT seq FROM deployments WHERE status <> 'running'
                                ORDER BY seq DESC LIMIT ?2))",
                    )
                    .map_err(|e| db_err(path, e))?;
                st.query_map(params![cutoff, keep], |r| r.get(0))
                    .map_err(|e| db_err(path, e))?
                    .collect::<Result<_, _>>()
                    .map_err(|e| db_err(path, e))?
            };
            for id in &doomed {
                for table in [
                    "DELETE FROM events WHERE deployment = ?1",
                    "DELETE FROM log_tails WHERE deployment = ?1",
                    "DELETE FROM deployments WHERE id = ?1",
                ] {
                    tx.execute(table, params![id])
                        .map_err(|e| db_err(path, e))?;
                }
            }
            tx.commit().map_err(|e| db_err(path, e))?;
            for id in &doomed {
                log.remove(id)?;
            }
            Ok(doomed.len() as u64)
        })
        .await
    }
}
