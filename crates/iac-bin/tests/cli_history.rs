//! `iac history` and `iac history show` for real (the binary over a state directory): a record
//! written the way `iac serve` writes it is listed and shown with its outcome, stage timings,
//! events, log tails and repos file (terminal sequences escaped), `--project` filters, `--json`
//! is the documented shape, an unknown id is a clear error; and `iac destroy` run by the CLI
//! (against the real engine; a project with nothing in it) is recorded as `cli:<user>`.

use std::path::Path;
use std::process::{Command, Output};

use iac_backends::history::SqliteHistory;
use iac_core::history::{
    HistoryFinish, HistoryKind, HistoryStart, HistoryStore, LogTail, ServiceOutcome,
};
use iac_core::{DeployEvent, EventLevel, ProjectName, ServiceName, Stage, StageTiming};

fn iac(dir: &Path, args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_iac"));
    cmd.args(args)
        .current_dir(dir)
        .env("RUST_LOG", "warn")
        .env("IAC_STATE_DIR", dir.join("state"))
        .env("IAC_IMAGES__AGENT_BINARY", "/bin/true")
        .env("USER", "tester");
    for var in [
        "SUPABASE_URL",
        "SUPABASE_SERVICE_ROLE_KEY",
        "SUPABASE_JWT_SECRET",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "IAC_PROJECT",
        "IAC_CONFIG",
    ] {
        cmd.env_remove(var);
    }
    cmd.output().expect("run iac")
}

fn ok(what: &str, out: &Output) -> String {
    assert!(
        out.status.success(),
        "{what}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

const ID: &str = "6f1c2a3b-0000-4000-8000-000000000001";
const OTHER: &str = "6f1c2a3b-0000-4000-8000-000000000002";

async fn seed(state: &Path) {
    let store = SqliteHistory::open(&state.join("history")).await.unwrap();
    for (id, project, at) in [
        (OTHER, "other", "2026-01-01T10:00:00.000Z"),
        (ID, "demo", "2026-01-01T11:00:00.000Z"),
    ] {
        store
            .start(&HistoryStart {
                id: id.into(),
                project: ProjectName::new(project).unwrap(),
                kind: HistoryKind::Deploy,
                who: "user-1 (ann@example.com)".into(),
                origin: "http".into(),
                started_at: at.into(),
                services: vec!["web".into()],
                repos: Some("- gh:acme/web\n".into()),
                owner: None,
            })
            .await
            .unwrap();
    }
    store
        .append_events(
            ID,
            &[DeployEvent {
                ts: "2026-01-01T11:00:01.000Z".into(),
                service: Some(ServiceName::new("web").unwrap()),
                stage: Stage::Build,
                level: EventLevel::Info,
                message: "built iac/web:1 \u{1b}[31mred".into(),
                traceparent: None,
            }],
        )
        .await
        .unwrap();
    store
        .attach_log_tail(
            ID,
            &LogTail {
                service: "web".into(),
                container: "demo-web".into(),
                role: "app".into(),
                reason: "replaced".into(),
                saved_at: "2026-01-01T11:00:02.000Z".into(),
                lines: vec!["listening on 8000".into()],
                truncated: true,
            },
        )
        .await
        .unwrap();
    store
        .finish(
            ID,
            &HistoryFinish {
                outcomes: vec![ServiceOutcome {
                    service: "web".into(),
                    ok: false,
                    action: Some("replace".into()),
                    error: Some("health: NOT_SERVING".into()),
                    stages: vec![
                        StageTiming {
                            stage: Stage::Fetch,
                            millis: 120,
                            ok: true,
                        },
                        StageTiming {
                            stage: Stage::Health,
                            millis: 2000,
                            ok: false,
                        },
                    ],
                }],
                ..HistoryFinish::error(
                    None,
                    "one service failed",
                    "2026-01-01T11:00:12.500Z".into(),
                )
            },
        )
        .await
        .unwrap();
}

#[tokio::test]
async fn history_lists_and_shows_what_was_recorded() {
    let dir = tempfile::tempdir().unwrap();
    seed(&dir.path().join("state")).await;

    let list = ok("history", &iac(dir.path(), &["history"]));
    let lines: Vec<&str> = list.lines().collect();
    assert!(lines[0].starts_with("ID"), "{list}");
    assert!(lines[1].starts_with(ID), "newest first: {list}");
    assert!(
        lines[1].contains("demo") && lines[1].contains("error"),
        "{list}"
    );
    assert!(lines[1].contains("12.5s"), "took: {list}");
    assert!(
        lines[2].starts_with(OTHER) && lines[2].contains("running"),
        "{list}"
    );

    let only = ok(
        "history --project other",
        &iac(dir.path(), &["history", "--project", "other"]),
    );
    assert!(only.contains(OTHER) && !only.contains(ID), "{only}");

    let json = ok(
        "history --json --limit 1",
        &iac(dir.path(), &["history", "--json", "--limit", "1"]),
    );
    let v: serde_json::Value = serde_json::from_str(json.trim()).unwrap();
    assert_eq!(v["items"].as_array().unwrap().len(), 1, "{v}");
    assert_eq!(v["items"][0]["id"], ID);
    assert!(v["next_cursor"].is_string(), "{v}");

    let show = ok("history show", &iac(dir.path(), &["history", "show", ID]));
    for want in [
        "deploy 6f1c2a3b",
        "status:   error",
        "who:      user-1 (ann@example.com) (http)",
        "took 12.5s",
        "error:    one service failed",
        "web              FAILED replace   fetch 120ms, health 2000ms FAILED",
        "error: health: NOT_SERVING",
        "events (1):",
        "built iac/web:1 \\u{1b}[31mred",
        "log tail: web app (demo-web, replaced at 2026-01-01T11:00:02.000Z), 1 line(s), older lines left out:",
        "  | listening on 8000",
        "  | - gh:acme/web",
    ] {
        assert!(show.contains(want), "missing {want:?} in:\n{show}");
    }
    assert!(!show.contains('\u{1b}'), "escape sequences are escaped");

    let json = ok(
        "history show --json",
        &iac(dir.path(), &["history", "show", ID, "--json"]),
    );
    let v: serde_json::Value = serde_json::from_str(json.trim()).unwrap();
    assert_eq!(v["id"], ID);
    assert_eq!(v["log_tails"][0]["lines"][0], "listening on 8000");
    assert_eq!(v["outcomes"][0]["stages"][1]["stage"], "health");

    let missing = iac(dir.path(), &["history", "show", "nope"]);
    assert_eq!(missing.status.code(), Some(2));
    let err = String::from_utf8_lossy(&missing.stderr);
    assert!(err.contains("no deployment \"nope\""), "{err}");

    let bad = iac(dir.path(), &["history", "--limit", "0"]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--limit 0"));
}

fn docker_ok() -> bool {
    Command::new("docker")
        .args(["version", "--format", "{{.Server.Version}}"])
        .output()
        .is_ok_and(|o| o.status.success())
}

#[test]
fn a_cli_destroy_is_recorded_as_the_cli_user() {
    if !docker_ok() {
        assert!(
            std::env::var_os("IAC_REQUIRE_DOCKER").is_none(),
            "IAC_REQUIRE_DOCKER is set but Docker is unreachable"
        );
        eprintln!("SKIPPED: no Docker engine for `iac destroy`");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // A project name no test creates objects for: the destroy removes nothing.
    let project = format!("histcli{}", std::process::id());
    ok(
        "destroy",
        &iac(dir.path(), &["destroy", "--project", &project]),
    );
    let json = ok(
        "history --json",
        &iac(dir.path(), &["history", "--json", "--project", &project]),
    );
    let v: serde_json::Value = serde_json::from_str(json.trim()).unwrap();
    let item = &v["items"][0];
    assert_eq!(item["kind"], "destroy", "{v}");
    assert_eq!(item["who"], "cli:tester");
    assert_eq!(item["origin"], "cli");
    assert_eq!(item["status"], "succeeded");
    assert!(
        dir.path().join("state/history/history.db").is_file(),
        "the default store is under the state dir"
    );
}
