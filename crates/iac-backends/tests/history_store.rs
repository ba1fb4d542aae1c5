//! The deployment history stores' conformance suite: one generic function per behaviour, run
//! against SQLite (a temp dir) and against a real PostgreSQL server the test starts
//! ([`history_support::PgServer`], a fresh database per behaviour); plus the migration rules
//! (a newer database refused by name, an older one migrated with its data) for both.

mod history_support;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use history_support::PgServer;
use iac_backends::history::{PostgresHistory, SqliteHistory, postgres, sqlite};
use iac_core::history::{
    HistoryError, HistoryFinish, HistoryKind, HistoryQuery, HistoryStart, HistoryStatus,
    HistoryStore, HostIdentity, INTERRUPTED_CODE, LogTail, ProcessState, ProcessView, Retention,
    RunOwner, ServiceOutcome, SessionStore, StoredSession, mark_interrupted,
};
use iac_core::{DeployEvent, DeployReport, EventLevel, ProjectName, ServiceName, Stage};

/// A store under test and the directory its event logs go to.
struct Subject {
    store: Arc<dyn HistoryStore>,
    events_dir: PathBuf,
}

fn project(p: &str) -> ProjectName {
    ProjectName::new(p).unwrap()
}

fn ts(secs: u64) -> String {
    humantime::format_rfc3339_millis(SystemTime::UNIX_EPOCH + Duration::from_secs(secs)).to_string()
}

fn id(n: u32) -> String {
    format!("00000000-0000-4000-8000-{n:012}")
}

fn start(n: u32, p: &str, at: u64) -> HistoryStart {
    HistoryStart {
        id: id(n),
        project: project(p),
        kind: HistoryKind::Deploy,
        who: "cli:alice".into(),
        origin: "cli".into(),
        started_at: ts(at),
        services: vec!["web".into(), "api".into()],
        repos: Some("- gh:acme/web\n- gh:acme/api\n".into()),
        owner: None,
    }
}

fn event(msg: &str) -> DeployEvent {
    DeployEvent {
        ts: ts(1_700_000_000),
        service: Some(ServiceName::new("web").unwrap()),
        stage: Stage::Build,
        level: EventLevel::Info,
        message: msg.into(),
        traceparent: None,
    }
}

fn finished(status: HistoryStatus) -> HistoryFinish {
    HistoryFinish {
        status,
        finished_at: ts(1_700_000_100),
        outcomes: vec![],
        report: None,
        removed: vec![],
        error: None,
        error_code: None,
    }
}

// ---- behaviours --------------------------------------------------------------------------

/// Everything recorded comes back: start, events (in order, across batches), log tails, the
/// finish with per-service outcome and stage timings; the events are also in the JSONL file.
async fn records_and_reads_back(s: Subject) {
    let st = &s.store;
    let start = start(1, "demo", 1_700_000_000);
    st.start(&start).await.unwrap();
    let running = st.get(&id(1)).await.unwrap().expect("recorded");
    assert_eq!(running.summary.status, HistoryStatus::Running);
    assert_eq!(running.summary.finished_at, None);
    st.append_events(&id(1), &[event("one"), event("two")])
        .await
        .unwrap();
    st.append_events(&id(1), &[event("three")]).await.unwrap();
    st.append_events(&id(1), &[]).await.unwrap();
    let tail = LogTail {
        service: "web".into(),
        container: "demo-web".into(),
        role: "app".into(),
        reason: "replaced".into(),
        saved_at: ts(1_700_000_050),
        lines: vec!["booting".into(), "listening on :8000".into()],
        truncated: true,
    };
    st.attach_log_tail(&id(1), &tail).await.unwrap();
    let report = DeployReport {
        project: project("demo"),
        ok: false,
        services: vec![],
        removed: vec![ServiceName::new("old").unwrap()],
        error: Some("provision: boom".into()),
        millis: 1234,
    };
    let mut fin = HistoryFinish::from_report(&report, ts(1_700_000_100));
    fin.outcomes = vec![ServiceOutcome {
        service: "web".into(),
        ok: false,
        action: Some("replace".into()),
        error: Some("health: NOT_SERVING".into()),
        stages: vec![iac_core::StageTiming {
            stage: Stage::Fetch,
            millis: 42,
            ok: true,
        }],
    }];
    st.finish(&id(1), &fin).await.unwrap();

    let e = st.get(&id(1)).await.unwrap().expect("recorded");
    assert_eq!(e.summary.id, id(1));
    assert_eq!(e.summary.project, project("demo"));
    assert_eq!(e.summary.kind, HistoryKind::Deploy);
    assert_eq!(e.summary.status, HistoryStatus::Failed);
    assert_eq!(e.summary.who, "cli:alice");
    assert_eq!(e.summary.origin, "cli");
    assert_eq!(e.summary.started_at, start.started_at);
    assert_eq!(
        e.summary.finished_at.as_deref(),
        Some(ts(1_700_000_100).as_str())
    );
    assert_eq!(e.summary.services, ["web", "api"]);
    assert_eq!(e.repos, start.repos);
    assert_eq!(e.outcomes, fin.outcomes);
    assert_eq!(e.report, Some(report));
    assert_eq!(e.removed, ["old"]);
    assert_eq!(e.error.as_deref(), Some("provision: boom"));
    assert_eq!(e.error_code, None);
    let msgs: Vec<&str> = e.events.iter().map(|e| e.message.as_str()).collect();
    assert_eq!(msgs, ["one", "two", "three"]);
    assert_eq!(e.events[0], event("one"));
    assert_eq!(e.log_tails, vec![tail]);

    let file = s.events_dir.join(format!("{}.events.jsonl", id(1)));
    let lines: Vec<DeployEvent> = std::fs::read_to_string(&file)
        .unwrap_or_else(|e| panic!("{}: {e}", file.display()))
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines, e.events, "the JSONL file holds the same events");
}

/// Listing: newest first, paged by cursor without gaps or repeats, filtered by project; a
/// cursor the store did not hand out is refused.
async fn lists_newest_first_in_pages(s: Subject) {
    let st = &s.store;
    for n in 1..=7 {
        let p = if n % 2 == 0 { "even" } else { "odd" };
        st.start(&start(n, p, 1_700_000_000 + n as u64))
            .await
            .unwrap();
    }
    st.finish(&id(3), &finished(HistoryStatus::Succeeded))
        .await
        .unwrap();
    let mut seen = Vec::new();
    let mut cursor = None;
    loop {
        let page = st
            .list(&HistoryQuery {
                project: None,
                limit: 3,
                cursor: cursor.clone(),
            })
            .await
            .unwrap();
        assert!(page.items.len() <= 3);
        seen.extend(page.items.iter().map(|i| i.id.clone()));
        match page.next_cursor {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    let expected: Vec<String> = (1..=7).rev().map(id).collect();
    assert_eq!(seen, expected);

    let odd = st
        .list(&HistoryQuery {
            project: Some(project("odd")),
            limit: 10,
            cursor: None,
        })
        .await
        .unwrap();
    let ids: Vec<String> = odd.items.iter().map(|i| i.id.clone()).collect();
    assert_eq!(ids, [id(7), id(5), id(3), id(1)]);
    assert_eq!(odd.next_cursor, None);
    let three = odd.items.iter().find(|i| i.id == id(3)).unwrap();
    assert_eq!(three.status, HistoryStatus::Succeeded);
    assert_eq!(
        three.finished_at.as_deref(),
        Some(ts(1_700_000_100).as_str())
    );

    let exact = st
        .list(&HistoryQuery {
            project: Some(project("even")),
            limit: 3,
            cursor: None,
        })
        .await
        .unwrap();
    assert_eq!(exact.items.len(), 3);
    assert_eq!(exact.next_cursor, None, "no next page when exactly full");

    for bad in ["abc", "-1", "0"] {
        let e = st
            .list(&HistoryQuery {
                project: None,
                limit: 3,
                cursor: Some(bad.into()),
            })
            .await
            .unwrap_err();
        assert!(matches!(e, HistoryError::BadCursor(_)), "{bad}: {e}");
    }
}

/// Mistakes are errors, never silent: a second start with the same id, events, a log tail or
/// a finish for an unknown id, an id unfit for a file name; an unknown id reads as `None`.
async fn refuses_unknown_and_duplicate_ids(s: Subject) {
    let st = &s.store;
    st.start(&start(1, "demo", 1_700_000_000)).await.unwrap();
    assert!(st.start(&start(1, "demo", 1_700_000_001)).await.is_err());
    let e = st.append_events(&id(9), &[event("x")]).await.unwrap_err();
    assert!(matches!(e, HistoryError::NotFound(_)), "{e}");
    let e = st
        .finish(&id(9), &finished(HistoryStatus::Succeeded))
        .await
        .unwrap_err();
    assert!(matches!(e, HistoryError::NotFound(_)), "{e}");
    let tail = LogTail {
        service: "web".into(),
        container: "c".into(),
        role: "app".into(),
        reason: "destroyed".into(),
        saved_at: ts(1),
        lines: vec![],
        truncated: false,
    };
    let e = st.attach_log_tail(&id(9), &tail).await.unwrap_err();
    assert!(matches!(e, HistoryError::NotFound(_)), "{e}");
    assert!(st.get(&id(9)).await.unwrap().is_none());
    let mut bad = start(2, "demo", 1);
    bad.id = "../etc/passwd".into();
    let e = st.start(&bad).await.unwrap_err();
    assert!(e.to_string().contains("../etc/passwd"), "{e}");
    let mut bad = start(3, "demo", 1);
    bad.started_at = "yesterday".into();
    assert!(st.start(&bad).await.is_err());
}

/// Retention: by count (newest finished kept), by age; running records are never pruned; a
/// pruned record's event file goes with it.
async fn prunes_by_count_and_age(s: Subject) {
    let st = &s.store;
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    // 1..=5 finished, started 50, 40, 30, 20, 10 days ago; 6 running, 100 days old.
    for n in 1..=5u32 {
        let age_days = 60 - 10 * n as u64;
        st.start(&start(n, "demo", 1_700_000_000 - age_days * 86_400))
            .await
            .unwrap();
        st.append_events(&id(n), &[event("e")]).await.unwrap();
        st.finish(&id(n), &finished(HistoryStatus::Succeeded))
            .await
            .unwrap();
    }
    st.start(&start(6, "demo", 1_700_000_000 - 100 * 86_400))
        .await
        .unwrap();
    let ids = |page: iac_core::history::HistoryPage| -> Vec<String> {
        page.items.into_iter().map(|i| i.id).collect()
    };
    let all = HistoryQuery {
        project: None,
        limit: 100,
        cursor: None,
    };

    let gone = st
        .prune(
            &Retention {
                keep: 100,
                max_age: Duration::from_secs(35 * 86_400),
            },
            now,
        )
        .await
        .unwrap();
    assert_eq!(gone, 2, "the 50- and 40-day-old records");
    assert_eq!(
        ids(st.list(&all).await.unwrap()),
        [id(6), id(5), id(4), id(3)]
    );
    assert!(
        !s.events_dir
            .join(format!("{}.events.jsonl", id(1)))
            .exists()
    );
    assert!(
        s.events_dir
            .join(format!("{}.events.jsonl", id(3)))
            .exists()
    );

    let gone = st
        .prune(
            &Retention {
                keep: 1,
                max_age: Duration::from_secs(365 * 86_400),
            },
            now,
        )
        .await
        .unwrap();
    assert_eq!(gone, 2);
    assert_eq!(
        ids(st.list(&all).await.unwrap()),
        [id(6), id(5)],
        "the newest finished one and the running one"
    );
    assert!(st.get(&id(4)).await.unwrap().is_none());
    assert_eq!(
        st.prune(
            &Retention {
                keep: 0,
                max_age: Duration::ZERO
            },
            now
        )
        .await
        .unwrap(),
        1
    );
    assert_eq!(ids(st.list(&all).await.unwrap()), [id(6)]);
}

/// A destroy is recorded like a deploy, with what it removed.
async fn records_a_destroy(s: Subject) {
    let st = &s.store;
    let mut d = start(1, "demo", 1_700_000_000);
    d.kind = HistoryKind::Destroy;
    d.repos = None;
    d.services = vec![];
    st.start(&d).await.unwrap();
    st.finish(
        &id(1),
        &HistoryFinish::destroyed(vec!["demo-web".into(), "demo-web-envoy".into()], ts(5)),
    )
    .await
    .unwrap();
    let e = st.get(&id(1)).await.unwrap().unwrap();
    assert_eq!(e.summary.kind, HistoryKind::Destroy);
    assert_eq!(e.summary.status, HistoryStatus::Succeeded);
    assert_eq!(e.removed, ["demo-web", "demo-web-envoy"]);
    assert_eq!(e.repos, None);

    let mut d = start(2, "demo", 1_700_000_001);
    d.kind = HistoryKind::Destroy;
    st.start(&d).await.unwrap();
    st.finish(
        &id(2),
        &HistoryFinish::error(Some("engine_unreachable".into()), "no engine", ts(6)),
    )
    .await
    .unwrap();
    let e = st.get(&id(2)).await.unwrap().unwrap();
    assert_eq!(e.summary.status, HistoryStatus::Error);
    assert_eq!(e.error.as_deref(), Some("no engine"));
    assert_eq!(e.error_code.as_deref(), Some("engine_unreachable"));
}

/// A host as a test describes it: identity `box`/`boot-1`, and the pids that are alive.
struct FakeHost {
    alive: Vec<(u32, u64)>,
}

impl ProcessView for FakeHost {
    fn identity(&self) -> Option<HostIdentity> {
        Some(HostIdentity {
            host: "box".into(),
            machine_id: Some("machine-box".into()),
            boot_id: "boot-1".into(),
            pid_ns: None,
        })
    }
    fn process(&self, pid: u32) -> ProcessState {
        match self.alive.iter().find(|(p, _)| *p == pid) {
            Some((_, start_ticks)) => ProcessState::Alive {
                start_ticks: *start_ticks,
            },
            None => ProcessState::Gone,
        }
    }
}

fn owned(n: u32, p: &str, host: &str, boot: &str, pid: u32, ticks: u64) -> HistoryStart {
    HistoryStart {
        owner: Some(RunOwner {
            host: host.into(),
            // One machine per host name here (a new boot id counts as a reboot only when the
            // machine ids match).
            machine_id: Some(format!("machine-{host}")),
            boot_id: boot.into(),
            pid_ns: None,
            pid,
            start_ticks: ticks,
        }),
        ..start(n, p, u64::from(n))
    }
}

/// Killed runs: a `running` record whose owner on this host is provably dead (pid gone, pid
/// reused, host rebooted) becomes `interrupted`, with the reason; a live owner, another host's
/// run, a record without an owner and an already finished record are left alone; the project
/// filter holds; the owner survives the round trip.
async fn marks_dead_owners_runs_interrupted(s: Subject) {
    let st = &s.store;
    let records = [
        owned(1, "demo", "box", "boot-1", 100, 5),  // alive
        owned(2, "demo", "box", "boot-1", 200, 5),  // pid gone
        owned(3, "demo", "box", "boot-1", 100, 9),  // pid 100 reused
        owned(4, "demo", "box", "boot-0", 100, 5),  // before a reboot
        owned(5, "demo", "far", "boot-7", 200, 5),  // another host
        start(6, "demo", 6),                        // no owner
        owned(7, "demo", "box", "boot-1", 300, 5),  // dead, but finished
        owned(8, "other", "box", "boot-1", 200, 5), // dead, another project
    ];
    for r in &records {
        st.start(r).await.unwrap();
    }
    st.finish(&id(7), &finished(HistoryStatus::Succeeded))
        .await
        .unwrap();
    let running = st.running(Some(&project("demo"))).await.unwrap();
    assert_eq!(
        running.iter().map(|r| r.id.clone()).collect::<Vec<_>>(),
        [1, 2, 3, 4, 5, 6].map(id).to_vec()
    );
    assert_eq!(running[0].owner, records[0].owner, "the owner round-trips");
    assert_eq!(running[5].owner, None);
    let host = FakeHost {
        alive: vec![(100, 5)],
    };
    let now = ts(1_800_000_000);
    let mut marked = mark_interrupted(st.as_ref(), Some(&project("demo")), &host, &now)
        .await
        .unwrap();
    marked.sort();
    assert_eq!(marked, [2, 3, 4].map(id).to_vec());
    for (n, words) in [
        (2, "pid 200 on box) is gone"),
        (3, "now another process"),
        (4, "rebooted"),
    ] {
        let e = st.get(&id(n)).await.unwrap().unwrap();
        assert_eq!(e.summary.status, HistoryStatus::Interrupted, "record {n}");
        assert_eq!(e.summary.finished_at.as_deref(), Some(now.as_str()));
        assert_eq!(e.error_code.as_deref(), Some(INTERRUPTED_CODE));
        let err = e.error.unwrap();
        assert!(err.contains(words), "record {n}: {err}");
    }
    for n in [1, 5, 6, 8] {
        let e = st.get(&id(n)).await.unwrap().unwrap();
        assert_eq!(e.summary.status, HistoryStatus::Running, "record {n}");
    }
    let e = st.get(&id(7)).await.unwrap().unwrap();
    assert_eq!(e.summary.status, HistoryStatus::Succeeded);
    // A finished record is never finished again by the conditional write.
    assert!(
        !st.finish_if_running(&id(2), &finished(HistoryStatus::Failed))
            .await
            .unwrap()
    );
    assert_eq!(
        st.get(&id(2)).await.unwrap().unwrap().summary.status,
        HistoryStatus::Interrupted
    );
    // The listing shows it, and every project is settled without a filter.
    let page = st
        .list(&HistoryQuery {
            project: Some(project("demo")),
            limit: 10,
            cursor: None,
        })
        .await
        .unwrap();
    assert!(
        page.items
            .iter()
            .any(|i| i.id == id(2) && i.status == HistoryStatus::Interrupted)
    );
    let marked = mark_interrupted(st.as_ref(), None, &host, &now)
        .await
        .unwrap();
    assert_eq!(marked, vec![id(8)]);
    // Interrupted records are finished: retention may prune them.
    let pruned = st
        .prune(
            &Retention {
                keep: 0,
                max_age: Duration::from_secs(1),
            },
            SystemTime::UNIX_EPOCH + Duration::from_secs(1_900_000_000),
        )
        .await
        .unwrap();
    assert_eq!(pruned, 5, "the interrupted four and the finished one");
}

// ---- console sessions --------------------------------------------------------------------

/// Session `n` (its key a 64-hex-digit hash), expiring at `expires_ms`.
fn session(n: u8, expires_ms: i64) -> StoredSession {
    StoredSession {
        id_hash: format!("{n:02x}").repeat(32),
        principal: format!("user-{n} (u{n}@example.com)"),
        expires_ms,
        sealed: format!("v1.sealed-{n}"),
    }
}

async fn keeps_sessions_until_expiry_and_sign_out(s: Subject) {
    let st = &s.store;
    st.insert_session(&session(1, 10_000)).await.unwrap();
    st.insert_session(&session(2, 20_000)).await.unwrap();
    let key1 = session(1, 0).id_hash;
    let key2 = session(2, 0).id_hash;
    assert_eq!(
        st.session(&key1, 5_000).await.unwrap(),
        Some(session(1, 10_000))
    );
    assert_eq!(
        st.session(&"ab".repeat(32), 5_000).await.unwrap(),
        None,
        "unknown"
    );
    // Expired: not returned even before it is pruned.
    assert_eq!(st.session(&key1, 10_000).await.unwrap(), None);
    // A second sign-in never lands on an existing row.
    assert!(st.insert_session(&session(2, 40_000)).await.is_err());
    // A refresh rotates the sealed token and slides the expiry: one row, the new values.
    let mut rotated = session(2, 30_000);
    rotated.sealed = "v1.rotated".into();
    assert!(st.update_session(&rotated).await.unwrap());
    assert_eq!(
        st.session(&key2, 25_000).await.unwrap(),
        Some(rotated.clone())
    );
    // Pruning removes the expired one only.
    assert_eq!(st.prune_sessions(15_000).await.unwrap(), 1);
    assert_eq!(st.prune_sessions(15_000).await.unwrap(), 0);
    assert_eq!(st.session(&key2, 15_000).await.unwrap(), Some(rotated));
    // Sign-out deletes the row.
    assert!(st.delete_session(&key2).await.unwrap());
    assert!(!st.delete_session(&key2).await.unwrap());
    assert_eq!(st.session(&key2, 0).await.unwrap(), None);
    // A refresh or an expiry slide that lands after the sign-out does not bring the row back.
    let mut late = session(2, 90_000);
    late.sealed = "v1.late".into();
    assert!(!st.update_session(&late).await.unwrap(), "no row to update");
    assert_eq!(st.session(&key2, 0).await.unwrap(), None);
    // A key that is not a SHA-256 in hex never reaches SQL.
    for bad in [
        "",
        "x'; DROP TABLE sessions; --",
        &"AB".repeat(32),
        &"a".repeat(63),
    ] {
        let e = st.session(bad, 0).await.unwrap_err().to_string();
        assert!(e.contains("64 lowercase hex digits"), "{e}");
        assert!(st.delete_session(bad).await.is_err());
    }
    let mut bad = session(3, 1);
    bad.id_hash = "short".into();
    assert!(st.insert_session(&bad).await.is_err());
    assert!(st.update_session(&bad).await.is_err());
}

// ---- runners -----------------------------------------------------------------------------

async fn sqlite_subject(dir: &Path) -> Subject {
    let events_dir = dir.join("history");
    let store = SqliteHistory::open(&events_dir).await.unwrap();
    Subject {
        store: Arc::new(store),
        events_dir,
    }
}

async fn postgres_subject(pg: &PgServer, dir: &Path) -> Subject {
    let events_dir = dir.join("history");
    let store = PostgresHistory::connect(&pg.fresh_db().await, &events_dir)
        .await
        .unwrap();
    Subject {
        store: Arc::new(store),
        events_dir,
    }
}

macro_rules! sqlite_tests {
    ($($behaviour:ident),* $(,)?) => {
        mod on_sqlite {
            $(
                #[tokio::test]
                async fn $behaviour() {
                    let tmp = tempfile::tempdir().unwrap();
                    super::$behaviour(super::sqlite_subject(tmp.path()).await).await;
                }
            )*
        }
        /// Every behaviour against one PostgreSQL server, each in a fresh database.
        #[tokio::test]
        async fn on_postgres_every_behaviour() {
            let Some(pg) = PgServer::start().await else { return };
            $(
                eprintln!("postgres: {}", stringify!($behaviour));
                let tmp = tempfile::tempdir().unwrap();
                $behaviour(postgres_subject(&pg, tmp.path()).await).await;
            )*
            postgres_migrations(&pg).await;
            postgres_reconnects(&pg).await;
        }
    };
}

sqlite_tests!(
    records_and_reads_back,
    lists_newest_first_in_pages,
    refuses_unknown_and_duplicate_ids,
    prunes_by_count_and_age,
    records_a_destroy,
    marks_dead_owners_runs_interrupted,
    keeps_sessions_until_expiry_and_sign_out,
);

// ---- migrations --------------------------------------------------------------------------

#[tokio::test]
async fn sqlite_database_newer_than_the_binary_is_refused_by_name() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("history");
    drop(SqliteHistory::open(&dir).await.unwrap());
    let file = dir.join("history.db");
    let conn = rusqlite::Connection::open(&file).unwrap();
    conn.pragma_update(None, "user_version", 99).unwrap();
    drop(conn);
    let e = SqliteHistory::open(&dir).await.err().expect("refused");
    let msg = e.to_string();
    assert!(matches!(e, HistoryError::TooNew { found: 99, .. }), "{msg}");
    assert!(msg.contains(&file.display().to_string()), "{msg}");
    assert!(msg.contains("99"), "{msg}");
    assert!(
        msg.contains(&format!("the {} this iac knows", sqlite::known_version())),
        "{msg}"
    );
}

#[tokio::test]
async fn sqlite_database_of_version_1_is_migrated_and_keeps_its_records() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("history");
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("history.db");
    {
        let mut conn = rusqlite::Connection::open(&file).unwrap();
        sqlite::migrate_to(&mut conn, &file, 1).unwrap();
        let v: i64 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(v, 1);
        conn.execute(
            "INSERT INTO deployments (id, project, kind, status, who, origin, started_at, started_ms, services)
             VALUES (?1, 'demo', 'deploy', 'succeeded', 'cli:old', 'cli', ?2, 1, '[\"web\"]')",
            rusqlite::params![id(1), ts(1)],
        )
        .unwrap();
    }
    let store = SqliteHistory::open(&dir).await.unwrap();
    let e = store.get(&id(1)).await.unwrap().expect("kept");
    assert_eq!(e.summary.who, "cli:old");
    assert!(e.log_tails.is_empty());
    // Version 2's table is there now.
    store
        .attach_log_tail(
            &id(1),
            &LogTail {
                service: "web".into(),
                container: "demo-web".into(),
                role: "app".into(),
                reason: "destroyed".into(),
                saved_at: ts(2),
                lines: vec!["bye".into()],
                truncated: false,
            },
        )
        .await
        .unwrap();
    drop(store);
    let conn = rusqlite::Connection::open(&file).unwrap();
    let v: i64 = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .unwrap();
    assert_eq!(v, sqlite::known_version());
    let mode: String = conn
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
}

/// A version-2 database (before owners were kept) with a record left `running`: migrated, the
/// record kept without an owner (so never marked interrupted), new records carry theirs.
#[tokio::test]
async fn sqlite_database_of_version_2_gains_owners_and_keeps_running_records() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("history");
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("history.db");
    {
        let mut conn = rusqlite::Connection::open(&file).unwrap();
        sqlite::migrate_to(&mut conn, &file, 2).unwrap();
        conn.execute(
            "INSERT INTO deployments (id, project, kind, status, who, origin, started_at, started_ms, services)
             VALUES (?1, 'demo', 'deploy', 'running', 'cli:old', 'cli', ?2, 1, '[\"web\"]')",
            rusqlite::params![id(1), ts(1)],
        )
        .unwrap();
    }
    let store = SqliteHistory::open(&dir).await.unwrap();
    store
        .start(&owned(2, "demo", "box", "boot-1", 200, 5))
        .await
        .unwrap();
    let running = store.running(None).await.unwrap();
    assert_eq!(running.len(), 2);
    assert_eq!(running[0].id, id(1));
    assert_eq!(running[0].owner, None);
    assert_eq!(running[1].owner.as_ref().unwrap().pid, 200);
    let marked = mark_interrupted(&store, None, &FakeHost { alive: vec![] }, &ts(9))
        .await
        .unwrap();
    assert_eq!(
        marked,
        vec![id(2)],
        "the ownerless old record is left alone"
    );
    drop(store);
    let conn = rusqlite::Connection::open(&file).unwrap();
    let v: i64 = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .unwrap();
    assert_eq!(v, sqlite::known_version());
}

/// A version-3 database (before sessions were kept), with a record: migrated to version 4, the
/// record kept, sessions stored.
#[tokio::test]
async fn sqlite_database_of_version_3_gains_sessions() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("history");
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("history.db");
    {
        let mut conn = rusqlite::Connection::open(&file).unwrap();
        sqlite::migrate_to(&mut conn, &file, 3).unwrap();
        conn.execute(
            "INSERT INTO deployments (id, project, kind, status, who, origin, started_at, started_ms, services)
             VALUES (?1, 'demo', 'deploy', 'succeeded', 'cli:old', 'cli', ?2, 1, '[\"web\"]')",
            rusqlite::params![id(1), ts(1)],
        )
        .unwrap();
        let has: i64 = conn
            .query_row(
                "SELECT count(*) FROM sqlite_master WHERE name = 'sessions'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(has, 0, "version 3 has no sessions table");
    }
    let store = SqliteHistory::open(&dir).await.unwrap();
    assert_eq!(
        store.get(&id(1)).await.unwrap().unwrap().summary.who,
        "cli:old"
    );
    store.insert_session(&session(1, 5_000)).await.unwrap();
    assert_eq!(
        store.session(&session(1, 0).id_hash, 1_000).await.unwrap(),
        Some(session(1, 5_000))
    );
    drop(store);
    let conn = rusqlite::Connection::open(&file).unwrap();
    let v: i64 = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .unwrap();
    assert_eq!(v, 4);
    assert_eq!(sqlite::known_version(), 4);
}

#[tokio::test]
async fn sqlite_files_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    let s = sqlite_subject(tmp.path()).await;
    s.store.start(&start(1, "demo", 1)).await.unwrap();
    s.store.append_events(&id(1), &[event("e")]).await.unwrap();
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&s.events_dir), 0o700);
    for entry in std::fs::read_dir(&s.events_dir).unwrap() {
        let p = entry.unwrap().path();
        assert_eq!(mode(&p), 0o600, "{}", p.display());
    }
}

/// The same migration rules on PostgreSQL (called from the PostgreSQL runner, which owns the
/// server).
async fn postgres_migrations(pg: &PgServer) {
    let tmp = tempfile::tempdir().unwrap();
    let events = tmp.path().join("history");
    // Version 1, one record, then opened by this binary: migrated, record kept.
    let url = pg.fresh_db().await;
    let old = PostgresHistory::connect_at_version(&url, &events, 1)
        .await
        .unwrap();
    drop(old);
    {
        let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .unwrap();
        let task = tokio::spawn(conn);
        client
            .execute(
                "INSERT INTO iac_deployments (id, project, kind, status, who, origin, started_at, started_ms, services)
                 VALUES ($1, 'demo', 'deploy', 'running', 'cli:alice', 'cli', $2, 1, '[\"web\"]')",
                &[&id(1), &ts(1)],
            )
            .await
            .unwrap();
        drop(client);
        let _ = task.await;
    }
    let store = PostgresHistory::connect(&url, &events).await.unwrap();
    assert_eq!(postgres::known_version(), 4);
    assert_eq!(
        store.get(&id(1)).await.unwrap().unwrap().summary.who,
        "cli:alice"
    );
    // Version 3's owner column: the old running record has none (left alone), a new one has.
    store
        .start(&owned(2, "demo", "box", "boot-1", 200, 5))
        .await
        .unwrap();
    let running = store.running(Some(&project("demo"))).await.unwrap();
    assert_eq!(running.len(), 2);
    assert_eq!(running[0].owner, None);
    assert_eq!(running[1].owner.as_ref().unwrap().boot_id, "boot-1");
    let marked = mark_interrupted(&store, None, &FakeHost { alive: vec![] }, &ts(9))
        .await
        .unwrap();
    assert_eq!(marked, vec![id(2)]);
    // Version 4's sessions.
    store.insert_session(&session(1, 5_000)).await.unwrap();
    assert_eq!(
        store.session(&session(1, 0).id_hash, 1_000).await.unwrap(),
        Some(session(1, 5_000))
    );
    store
        .attach_log_tail(
            &id(1),
            &LogTail {
                service: "web".into(),
                container: "demo-web".into(),
                role: "sidecar".into(),
                reason: "replaced".into(),
                saved_at: ts(2),
                lines: vec!["x".into()],
                truncated: false,
            },
        )
        .await
        .unwrap();
    drop(store);
    // A newer database: refused, naming the URL and both versions.
    let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    let task = tokio::spawn(conn);
    client
        .batch_execute("UPDATE iac_schema_version SET version = 99")
        .await
        .unwrap();
    drop(client);
    let _ = task.await;
    let e = PostgresHistory::connect(&url, &events)
        .await
        .err()
        .expect("refused");
    let msg = e.to_string();
    assert!(matches!(e, HistoryError::TooNew { found: 99, .. }), "{msg}");
    assert!(msg.contains(&url), "{msg}");
    assert!(
        msg.contains(&format!("the {} this iac knows", postgres::known_version())),
        "{msg}"
    );
}

/// A connection the server ends (a restarted database, a terminated backend) is opened again:
/// at most the call that noticed fails.
async fn postgres_reconnects(pg: &PgServer) {
    let tmp = tempfile::tempdir().unwrap();
    let url = pg.fresh_db().await;
    let store = PostgresHistory::connect(&url, &tmp.path().join("history"))
        .await
        .unwrap();
    store.start(&start(1, "demo", 1)).await.unwrap();
    let (admin, conn) = tokio_postgres::connect(&pg.url("postgres"), tokio_postgres::NoTls)
        .await
        .unwrap();
    let task = tokio::spawn(conn);
    let db = url.rsplit('/').next().unwrap().to_string();
    let n = admin
        .execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1",
            &[&db],
        )
        .await
        .unwrap();
    assert_eq!(n, 1, "the store's one connection was ended");
    drop(admin);
    let _ = task.await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut failures = 0;
    let entry = loop {
        match store.get(&id(1)).await {
            Ok(e) => break e,
            Err(e) => {
                failures += 1;
                assert!(failures < 2, "still failing after a reconnect: {e}");
            }
        }
    };
    assert_eq!(entry.unwrap().summary.id, id(1));
    store
        .append_events(&id(1), &[event("after")])
        .await
        .unwrap();
}

#[tokio::test]
async fn open_picks_the_store_from_the_url() {
    let tmp = tempfile::tempdir().unwrap();
    let st = iac_backends::history::open("sqlite:history/history.db", tmp.path())
        .await
        .unwrap();
    st.start(&start(1, "demo", 1)).await.unwrap();
    assert!(tmp.path().join("history/history.db").is_file());
    for bad in ["mysql://db/iac", "sqlite:", "history.db"] {
        let e = iac_backends::history::open(bad, tmp.path())
            .await
            .err()
            .expect("refused");
        assert!(e.to_string().contains("[history] url"), "{bad}: {e}");
    }
    let e = iac_backends::history::open("postgres://iac:s3cret@127.0.0.1:1/iac", tmp.path())
        .await
        .err()
        .expect("nothing listens on port 1");
    assert!(!e.to_string().contains("s3cret"), "{e}");
}
