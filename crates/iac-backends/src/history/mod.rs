//! The deployment history stores behind [`iac_core::history::HistoryStore`]: [`sqlite`] (the
//! default, a file under the state directory) and [`postgres`] (`[history] url =
//! "postgres://…"`, for several control planes sharing one history). Both keep every deploy's
//! full event log as an append-only JSON-lines file as well ([`jsonl`]).
//!
//! This module owns what the two share: [`open`] (a URL → a store), the schema-version rule
//! (a database newer than this binary is refused by name) and the conversion of stored rows
//! into the domain types.

pub mod jsonl;
pub mod postgres;
pub mod sqlite;

use std::path::Path;
use std::sync::Arc;

use iac_core::ProjectName;
use iac_core::history::{
    HistoryError, HistoryKind, HistoryQuery, HistoryStatus, HistoryStore, HistorySummary, MAX_PAGE,
    RunningRecord,
};
use serde::de::DeserializeOwned;

pub use postgres::PostgresHistory;
pub use sqlite::SqliteHistory;

/// The file name of the SQLite database under the history directory.
pub const SQLITE_FILE: &str = "history.db";

/// Opens the store `url` names: `sqlite:PATH` (relative paths under `state_dir`) or
/// `postgres://…` / `postgresql://…`. Event logs go to `<state_dir>/history/`.
pub async fn open(url: &str, state_dir: &Path) -> Result<Arc<dyn HistoryStore>, HistoryError> {
    let events_dir = state_dir.join("history");
    if let Some(path) = url.strip_prefix("sqlite:") {
        let path = path.strip_prefix("//").unwrap_or(path);
        if path.is_empty() {
            return Err(HistoryError::Backend(format!(
                "[history] url {url:?}: expected sqlite:PATH (a file), e.g. sqlite:history/history.db"
            )));
        }
        let path = state_dir.join(path);
        let dir = path.parent().unwrap_or(state_dir).to_path_buf();
        let store = SqliteHistory::open_at(&path, &dir).await?;
        return Ok(Arc::new(store));
    }
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let store = PostgresHistory::connect(url, &events_dir).await?;
        return Ok(Arc::new(store));
    }
    Err(HistoryError::Backend(format!(
        "[history] url {:?}: expected sqlite:PATH or postgres://USER@HOST/DB",
        iac_core::history::redact_url(url)
    )))
}

/// The rule both stores apply after reading a database's schema version: newer than `known`
/// is an error naming the database and both versions.
pub(crate) fn check_version(location: &str, found: i64, known: i64) -> Result<(), HistoryError> {
    if found > known {
        return Err(HistoryError::TooNew {
            location: location.to_string(),
            found,
            known,
        });
    }
    Ok(())
}

/// Record ids name files (`<id>.events.jsonl`): only letters, digits and `-` (a UUID fits).
pub(crate) fn check_id(id: &str) -> Result<(), HistoryError> {
    if id.is_empty() || id.len() > 64 || !id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
    {
        return Err(HistoryError::Backend(format!(
            "record id {id:?}: expected 1 to 64 letters, digits or '-' (a UUID)"
        )));
    }
    Ok(())
}

/// A session's key is a SHA-256 in lowercase hex (64 digits); anything else is refused before
/// it reaches SQL.
pub(crate) fn check_session_hash(h: &str) -> Result<(), HistoryError> {
    if h.len() != 64 || !h.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return Err(HistoryError::Backend(format!(
            "session key {h:?}: expected a SHA-256 as 64 lowercase hex digits"
        )));
    }
    Ok(())
}

/// The page size and position of a query: the limit clamped to 1..=[`MAX_PAGE`], the cursor
/// parsed (it is the `seq` of the last record of the previous page).
pub(crate) fn page_bounds(q: &HistoryQuery) -> Result<(i64, Option<i64>), HistoryError> {
    let limit = q.limit.clamp(1, MAX_PAGE) as i64;
    let cursor = match &q.cursor {
        None => None,
        Some(c) => Some(
            c.parse::<i64>()
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| HistoryError::BadCursor(c.clone()))?,
        ),
    };
    Ok((limit, cursor))
}

/// A listing row as stored (both stores select the same columns).
pub(crate) struct SummaryRow {
    pub seq: i64,
    pub id: String,
    pub project: String,
    pub kind: String,
    pub status: String,
    pub who: String,
    pub origin: String,
    pub started_at: String,
    pub finished_at: Option<String>,
    pub services: String,
}

/// The columns of [`SummaryRow`], in its order.
pub(crate) const SUMMARY_COLUMNS: &str =
    "seq, id, project, kind, status, who, origin, started_at, finished_at, services";

impl SummaryRow {
    pub fn into_summary(self) -> Result<HistorySummary, HistoryError> {
        Ok(HistorySummary {
            project: ProjectName::new(&self.project)
                .map_err(|e| HistoryError::Corrupt(format!("record {}: project: {e}", self.id)))?,
            kind: HistoryKind::parse(&self.kind)?,
            status: HistoryStatus::parse(&self.status)?,
            who: self.who,
            origin: self.origin,
            started_at: self.started_at,
            finished_at: self.finished_at,
            services: from_json(&self.id, "services", &self.services)?,
            id: self.id,
        })
    }
}

/// One page out of `limit + 1` rows fetched: the extra row only says there is a next page.
pub(crate) fn into_page(
    mut rows: Vec<SummaryRow>,
    limit: i64,
) -> Result<iac_core::history::HistoryPage, HistoryError> {
    let more = rows.len() as i64 > limit;
    rows.truncate(limit as usize);
    let next_cursor = if more {
        rows.last().map(|r| r.seq.to_string())
    } else {
        None
    };
    Ok(iac_core::history::HistoryPage {
        items: rows
            .into_iter()
            .map(SummaryRow::into_summary)
            .collect::<Result<_, _>>()?,
        next_cursor,
    })
}

/// A `running` row (id, project, owner JSON) as a [`RunningRecord`].
pub(crate) fn running_record(
    id: String,
    project: &str,
    owner: Option<&str>,
) -> Result<RunningRecord, HistoryError> {
    Ok(RunningRecord {
        project: ProjectName::new(project)
            .map_err(|e| HistoryError::Corrupt(format!("record {id}: project: {e}")))?,
        owner: from_json_opt(&id, "owner", owner)?,
        id,
    })
}

/// A JSON column.
pub(crate) fn from_json<T: DeserializeOwned>(
    id: &str,
    column: &str,
    text: &str,
) -> Result<T, HistoryError> {
    serde_json::from_str(text)
        .map_err(|e| HistoryError::Corrupt(format!("record {id}: column {column}: {e}")))
}

/// An optional JSON column.
pub(crate) fn from_json_opt<T: DeserializeOwned>(
    id: &str,
    column: &str,
    text: Option<&str>,
) -> Result<Option<T>, HistoryError> {
    text.map(|t| from_json(id, column, t)).transpose()
}

/// A value as a JSON column.
pub(crate) fn to_json<T: serde::Serialize>(v: &T) -> Result<String, HistoryError> {
    serde_json::to_string(v).map_err(|e| HistoryError::Backend(format!("serialize: {e}")))
}
