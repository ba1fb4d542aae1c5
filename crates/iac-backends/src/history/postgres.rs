//! [`PostgresHistory`]: the deployment history in PostgreSQL (`[history] url = "postgres://…"`),
//! for teams whose several control planes share one history. tokio-postgres, no TLS (reach the
//! server over a trusted network or a local socket: `postgres:///iac?host=/run/postgresql`).
//!
//! Same semantics as the SQLite store: tables `iac_deployments`, `iac_events`, `iac_log_tails`;
//! the schema version in `iac_schema_version`, migrated under an advisory lock in one
//! transaction (control planes starting together migrate once); a newer database is refused
//! naming the URL (password hidden) and both versions. Each record's events are also appended
//! to a local `<id>.events.jsonl` ([`super::jsonl`]).

use std::path::Path;
use std::time::SystemTime;

use async_trait::async_trait;
use iac_core::history::{
    HistoryEntry, HistoryError, HistoryFinish, HistoryPage, HistoryQuery, HistoryStart,
    HistoryStatus, HistoryStore, LogTail, Retention, RunningRecord, SessionStore, StoredSession,
    redact_url, rfc3339_millis, system_millis,
};
use iac_core::{DeployEvent, ProjectName};
use tokio::sync::Mutex;
use tokio_postgres::{Client, GenericClient, NoTls, Row};

use super::jsonl::EventLog;
use super::{
    SUMMARY_COLUMNS, SummaryRow, check_id, check_session_hash, check_version, from_json,
    from_json_opt, into_page, page_bounds, running_record, to_json,
};

/// The schema, one entry per version (index 0 = version 1). Never edit a released entry: add one.
pub const MIGRATIONS: &[&str] = &[
    // 1: records and their events.
    "CREATE TABLE iac_deployments (
        seq BIGSERIAL PRIMARY KEY,
        id TEXT NOT NULL UNIQUE,
        project TEXT NOT NULL,
        kind TEXT NOT NULL,
        status TEXT NOT NULL,
        who TEXT NOT NULL,
        origin TEXT NOT NULL,
        started_at TEXT NOT NULL,
        started_ms BIGINT NOT NULL,
        finished_at TEXT,
        services TEXT NOT NULL,
        repos TEXT,
        outcomes TEXT,
        report TEXT,
        removed TEXT,
        error TEXT,
        error_code TEXT
    );
    CREATE INDEX iac_deployments_by_project ON iac_deployments (project, seq);
    CREATE TABLE iac_events (
        n BIGSERIAL PRIMARY KEY,
        deployment TEXT NOT NULL,
        body TEXT NOT NULL
    );
    CREATE INDEX iac_events_by_deployment ON iac_events (deployment, n);",
    // 2: saved log tails of replaced and destroyed pods.
    "CREATE TABLE iac_log_tails (
        n BIGSERIAL PRIMARY KEY,
        deployment TEXT NOT NULL,
        service TEXT NOT NULL,
        container TEXT NOT NULL,
        role TEXT NOT NULL,
        reason TEXT NOT NULL,
        saved_at TEXT NOT NULL,
        lines TEXT NOT NULL,
        truncated BOOLEAN NOT NULL
    );
    CREATE INDEX iac_log_tails_by_deployment ON iac_log_tails (deployment, n);",
    // 3: who runs a record (host, boot id, pid, start time), to tell a killed run.
    "ALTER TABLE iac_deployments ADD COLUMN owner TEXT;
    CREATE INDEX iac_deployments_running ON iac_deployments (status) WHERE status = 'running';",
    // 4: the console's sessions (a hash of the id, the principal, the expiry, a sealed token).
    "CREATE TABLE iac_sessions (
        id_hash TEXT PRIMARY KEY,
        principal TEXT NOT NULL,
        expires_ms BIGINT NOT NULL,
        sealed TEXT NOT NULL
    );
    CREATE INDEX iac_sessions_by_expiry ON iac_sessions (expires_ms);",
];

/// The advisory lock key that serializes migrations across control planes ("iachist").
const MIGRATION_LOCK: i64 = 0x0069_6163_6869_7374;

/// The PostgreSQL store.
pub struct PostgresHistory {
    conn: Mutex<Conn>,
    /// With its password: kept to reconnect, never shown (see `location`).
    url: String,
    location: String,
    log: EventLog,
}

/// One connection: the client and the task driving it.
struct Conn {
    client: Client,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The newest schema version this binary knows.
pub fn known_version() -> i64 {
    MIGRATIONS.len() as i64
}

async fn open_conn(url: &str, location: &str) -> Result<Conn, HistoryError> {
    let (client, connection) = tokio_postgres::connect(url, NoTls)
        .await
        .map_err(|e| HistoryError::Backend(format!("{location}: {e}")))?;
    let loc = location.to_string();
    let task = tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::warn!("deployment history {loc}: connection ended: {e}");
        }
    });
    Ok(Conn { client, task })
}

impl PostgresHistory {
    /// Connects to `url`, migrates to [`known_version`]; event logs go to `events_dir`.
    pub async fn connect(url: &str, events_dir: &Path) -> Result<PostgresHistory, HistoryError> {
        Self::connect_at_version(url, events_dir, known_version()).await
    }

    /// [`PostgresHistory::connect`] migrating only to `target` (tests build old databases).
    pub async fn connect_at_version(
        url: &str,
        events_dir: &Path,
        target: i64,
    ) -> Result<PostgresHistory, HistoryError> {
        let location = redact_url(url);
        let mut conn = open_conn(url, &location).await?;
        migrate(&mut conn.client, &location, target).await?;
        Ok(PostgresHistory {
            conn: Mutex::new(conn),
            url: url.to_string(),
            location,
            log: EventLog::new(events_dir)?,
        })
    }

    /// The connection, opened again first when the server closed it (a restarted database, a
    /// terminated backend): the call that noticed failed, the next ones go on.
    async fn conn(&self) -> Result<tokio::sync::MutexGuard<'_, Conn>, HistoryError> {
        let mut g = self.conn.lock().await;
        if g.client.is_closed() {
            tracing::info!("deployment history {}: reconnecting", self.location);
            *g = open_conn(&self.url, &self.location).await?;
        }
        Ok(g)
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
        let g = self.conn().await?;
        let c = &g.client;
        let n = c
            .execute(
                "UPDATE iac_deployments SET status = $2, finished_at = $3, outcomes = $4, report = $5, removed = $6, error = $7, error_code = $8
                 WHERE id = $1 AND (NOT $9 OR status = 'running')",
                &[
                    &id,
                    &f.status.as_str(),
                    &f.finished_at,
                    &outcomes,
                    &report,
                    &removed,
                    &f.error,
                    &f.error_code,
                    &only_running,
                ],
            )
            .await
            .map_err(|e| self.err(e))?;
        if n == 0 && !only_running {
            return Err(HistoryError::NotFound(id.to_string()));
        }
        Ok(n > 0)
    }

    fn err(&self, e: impl std::fmt::Display) -> HistoryError {
        HistoryError::Backend(format!("{}: {e}", self.location))
    }
}

/// Brings the database to `target` (≤ [`known_version`]) in one transaction under
/// [`MIGRATION_LOCK`].
async fn migrate(client: &mut Client, location: &str, target: i64) -> Result<(), HistoryError> {
    let err = |e: tokio_postgres::Error| HistoryError::Backend(format!("{location}: {e}"));
    let tx = client.transaction().await.map_err(err)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(err)?;
    tx.batch_execute("CREATE TABLE IF NOT EXISTS iac_schema_version (version BIGINT NOT NULL)")
        .await
        .map_err(err)?;
    let found: Option<i64> = tx
        .query_opt("SELECT max(version) FROM iac_schema_version", &[])
        .await
        .map_err(err)?
        .and_then(|r| r.get(0));
    let found = found.unwrap_or(0);
    check_version(location, found, known_version())?;
    for v in found + 1..=target {
        tx.batch_execute(MIGRATIONS[(v - 1) as usize])
            .await
            .map_err(|e| {
                HistoryError::Backend(format!("{location}: migration to schema version {v}: {e}"))
            })?;
    }
    if target > found {
        tx.execute("DELETE FROM iac_schema_version", &[])
            .await
            .map_err(err)?;
        tx.execute(
            "INSERT INTO iac_schema_version (version) VALUES ($1)",
            &[&target],
        )
        .await
        .map_err(err)?;
    }
    tx.commit().await.map_err(err)
}

async fn status_of(
    c: &impl GenericClient,
    location: &str,
    id: &str,
) -> Result<HistoryStatus, HistoryError> {
    let row = c
        .query_opt("SELECT status FROM iac_deployments WHERE id = $1", &[&id])
        .await
        .map_err(|e| HistoryError::Backend(format!("{location}: {e}")))?;
    match row {
        Some(r) => HistoryStatus::parse(r.get::<_, &str>(0)),
        None => Err(HistoryError::NotFound(id.to_string())),
    }
}

fn summary_row(r: &Row) -> SummaryRow {
    SummaryRow {
        seq: r.get(0),
        id: r.get(1),
        project: r.get(2),
        kind: r.get(3),
        status: r.get(4),
        who: r.get(5),
        origin: r.get(6),
        started_at: r.get(7),
        finished_at: r.get(8),
        services: r.get(9),
    }
}

#[async_trait]
impl SessionStore for PostgresHistory {
    async fn insert_session(&self, s: &StoredSession) -> Result<(), HistoryError> {
        check_session_hash(&s.id_hash)?;
        let g = self.conn().await?;
        g.client
            .execute(
                "INSERT INTO iac_sessions (id_hash, principal, expires_ms, sealed) VALUES ($1, $2, $3, $4)",
                &[&s.id_hash, &s.principal, &s.expires_ms, &s.sealed],
            )
            .await
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    async fn update_session(&self, s: &StoredSession) -> Result<bool, HistoryError> {
        check_session_hash(&s.id_hash)?;
        let g = self.conn().await?;
        let n = g
            .client
            .execute(
                "UPDATE iac_sessions SET expires_ms = $2, sealed = $3 WHERE id_hash = $1",
                &[&s.id_hash, &s.expires_ms, &s.sealed],
            )
            .await
            .map_err(|e| self.err(e))?;
        Ok(n > 0)
    }

    async fn session(
        &self,
        id_hash: &str,
        now_ms: i64,
    ) -> Result<Option<StoredSession>, HistoryError> {
        check_session_hash(id_hash)?;
        let g = self.conn().await?;
        let row = g
            .client
            .query_opt(
                "SELECT id_hash, principal, expires_ms, sealed FROM iac_sessions
                 WHERE id_hash = $1 AND expires_ms > $2",
                &[&id_hash, &now_ms],
            )
            .await
            .map_err(|e| self.err(e))?;
        Ok(row.map(|r| StoredSession {
            id_hash: r.get(0),
            principal: r.get(1),
            expires_ms: r.get(2),
            sealed: r.get(3),
        }))
    }

    async fn delete_session(&self, id_hash: &str) -> Result<bool, HistoryError> {
        check_session_hash(id_hash)?;
        let g = self.conn().await?;
        let n = g
            .client
            .execute("DELETE FROM iac_sessions WHERE id_hash = $1", &[&id_hash])
            .await
            .map_err(|e| self.err(e))?;
        Ok(n > 0)
    }

    async fn prune_sessions(&self, now_ms: i64) -> Result<u64, HistoryError> {
        let g = self.conn().await?;
        g.client
            .execute(
                "DELETE FROM iac_sessions WHERE expires_ms <= $1",
                &[&now_ms],
            )
            .await
            .map_err(|e| self.err(e))
    }
}

#[async_trait]
impl HistoryStore for PostgresHistory {
    async fn start(&self, s: &HistoryStart) -> Result<(), HistoryError> {
        check_id(&s.id)?;
        let started_ms = rfc3339_millis(&s.started_at)?;
        let services = to_json(&s.services)?;
        let owner = s.owner.as_ref().map(to_json).transpose()?;
        let g = self.conn().await?;
        let c = &g.client;
        c.execute(
            "INSERT INTO iac_deployments (id, project, kind, status, who, origin, started_at, started_ms, services, repos, owner)
             VALUES ($1, $2, $3, 'running', $4, $5, $6, $7, $8, $9, $10)",
            &[
                &s.id,
                &s.project.as_str(),
                &s.kind.as_str(),
                &s.who,
                &s.origin,
                &s.started_at,
                &started_ms,
                &services,
                &s.repos,
                &owner,
            ],
        )
        .await
        .map_err(|e| self.err(format!("record {}: {e}", s.id)))?;
        Ok(())
    }

    async fn append_events(&self, id: &str, events: &[DeployEvent]) -> Result<(), HistoryError> {
        check_id(id)?;
        let bodies = events.iter().map(to_json).collect::<Result<Vec<_>, _>>()?;
        {
            let mut g = self.conn().await?;
            let tx = g.client.transaction().await.map_err(|e| self.err(e))?;
            status_of(&tx, &self.location, id).await?;
            let ins = tx
                .prepare("INSERT INTO iac_events (deployment, body) VALUES ($1, $2)")
                .await
                .map_err(|e| self.err(e))?;
            for b in &bodies {
                tx.execute(&ins, &[&id, b]).await.map_err(|e| self.err(e))?;
            }
            tx.commit().await.map_err(|e| self.err(e))?;
        }
        let (log, id, events) = (self.log.clone(), id.to_string(), events.to_vec());
        tokio::task::spawn_blocking(move || log.append(&id, &events))
            .await
            .map_err(|e| self.err(format!("event log task failed: {e}")))?
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
        let g = self.conn().await?;
        let rows = g
            .client
            .query(
                "SELECT id, project, owner FROM iac_deployments
                 WHERE status = 'running' AND ($1::TEXT IS NULL OR project = $1) ORDER BY seq",
                &[&project],
            )
            .await
            .map_err(|e| self.err(e))?;
        rows.iter()
            .map(|r| running_record(r.get(0), r.get(1), r.get(2)))
            .collect()
    }

    async fn attach_log_tail(&self, id: &str, t: &LogTail) -> Result<(), HistoryError> {
        check_id(id)?;
        let lines = to_json(&t.lines)?;
        let g = self.conn().await?;
        let c = &g.client;
        status_of(c, &self.location, id).await?;
        c.execute(
            "INSERT INTO iac_log_tails (deployment, service, container, role, reason, saved_at, lines, truncated)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            &[&id, &t.service, &t.container, &t.role, &t.reason, &t.saved_at, &lines, &t.truncated],
        )
        .await
        .map_err(|e| self.err(e))?;
        Ok(())
    }

    async fn list(&self, q: &HistoryQuery) -> Result<HistoryPage, HistoryError> {
        let (limit, cursor) = page_bounds(q)?;
        let project = q.project.as_ref().map(|p| p.to_string());
        let sql = format!(
            "SELECT {SUMMARY_COLUMNS} FROM iac_deployments
             WHERE ($1::TEXT IS NULL OR project = $1) AND ($2::BIGINT IS NULL OR seq < $2)
             ORDER BY seq DESC LIMIT $3"
        );
        let g = self.conn().await?;
        let c = &g.client;
        let rows = c
            .query(&sql, &[&project, &cursor, &(limit + 1)])
            .await
            .map_err(|e| self.err(e))?;
        into_page(rows.iter().map(summary_row).collect(), limit)
    }

    async fn get(&self, id: &str) -> Result<Option<HistoryEntry>, HistoryError> {
        let g = self.conn().await?;
        let c = &g.client;
        let sql = format!(
            "SELECT {SUMMARY_COLUMNS}, repos, outcomes, report, removed, error, error_code FROM iac_deployments WHERE id = $1"
        );
        let Some(row) = c.query_opt(&sql, &[&id]).await.map_err(|e| self.err(e))? else {
            return Ok(None);
        };
        let summary = summary_row(&row);
        let (repos, outcomes, report, removed, error, error_code): (
            Option<String>,
            Option<String>,
            Option<String>,
            Option<String>,
            Option<String>,
            Option<String>,
        ) = (
            row.get(10),
            row.get(11),
            row.get(12),
            row.get(13),
            row.get(14),
            row.get(15),
        );
        let events = c
            .query(
                "SELECT body FROM iac_events WHERE deployment = $1 ORDER BY n",
                &[&id],
            )
            .await
            .map_err(|e| self.err(e))?
            .iter()
            .map(|r| from_json(id, "events.body", r.get::<_, &str>(0)))
            .collect::<Result<Vec<DeployEvent>, _>>()?;
        let log_tails = c
            .query(
                "SELECT service, container, role, reason, saved_at, lines, truncated
                 FROM iac_log_tails WHERE deployment = $1 ORDER BY n",
                &[&id],
            )
            .await
            .map_err(|e| self.err(e))?
            .iter()
            .map(|r| {
                Ok(LogTail {
                    service: r.get(0),
                    container: r.get(1),
                    role: r.get(2),
                    reason: r.get(3),
                    saved_at: r.get(4),
                    lines: from_json(id, "log_tails.lines", r.get::<_, &str>(5))?,
                    truncated: r.get(6),
                })
            })
            .collect::<Result<Vec<_>, HistoryError>>()?;
        Ok(Some(HistoryEntry {
            summary: summary.into_summary()?,
            repos,
            outcomes: from_json_opt(id, "outcomes", outcomes.as_deref())?.unwrap_or_default(),
            report: from_json_opt(id, "report", report.as_deref())?,
            removed: from_json_opt(id, "removed", removed.as_deref())?.unwrap_or_default(),
            error,
            error_code,
            events,
            log_tails,
        }))
    }

    async fn prune(&self, r: &Retention, now: SystemTime) -> Result<u64, HistoryError> {
        let cutoff = system_millis(now) - r.max_age.as_millis().min(i64::MAX as u128) as i64;
        let keep = r.keep.min(i64::MAX as usize) as i64;
        let doomed: Vec<String> = {
            let mut g = self.conn().await?;
            let tx = g.client.transaction().await.map_err(|e| self.err(e))?;
            let doomed: Vec<String> = tx
                .query(
                    "SELECT id FROM iac_deployments WHERE status <> 'running' AND (
                        started_ms < $1 OR seq NOT IN (
                            SELECT seq FROM iac_deployments WHERE status <> 'running'
                            ORDER BY seq DESC LIMIT $2))",
                    &[&cutoff, &keep],
                )
                .await
                .map_err(|e| self.err(e))?
                .iter()
                .map(|r| r.get(0))
                .collect();
            for sql in [
                "DELETE FROM iac_events WHERE deployment = ANY($1)",
                "DELETE FROM iac_log_tails WHERE deployment = ANY($1)",
                "DELETE FROM iac_deployments WHERE id = ANY($1)",
            ] {
                tx.execute(sql, &[&doomed]).await.map_err(|e| self.err(e))?;
            }
            tx.commit().await.map_err(|e| self.err(e))?;
            doomed
        };
        for id in &doomed {
            self.log.remove(id)?;
        }
        Ok(doomed.len() as u64)
    }
}
