//! Release commands end to end, with the real `iac` binary, the real Docker engine, real Envoy and
//! real mTLS. Two fixture repos, deployed by `git+file://` slug under a random project name:
//!
//! * `store`: a tiny key-value HTTP service on `$PORT` (the "database");
//! * `app`: a Procfile with `web: python web.py` and `release: python release.py`. The release
//!   command PUTs a marker into `store` through the mesh (its pod's sidecar, as the app would reach
//!   it); the web process serves what `store` holds.
//!
//! 1. `store` alone is deployed, then `store` + `app`: app's release runs once, before its pod, and
//!    app's `url` serves the marker the release wrote; the report has a successful `release` stage;
//! 2. app v2, whose release exits 3 after printing a line: the deploy fails at `release` with the
//!    command, the exit status and that line; app's old container is untouched and its `url` still
//!    serves v1's page; no release container is left.
//!
//! Needs the base images from `make test-deps`; with IAC_REQUIRE_DOCKER unset and no Docker it is
//! skipped loudly. Everything it creates is removed by label on drop, even on panic.

use std::time::{Duration, Instant};

mod e2e;
use e2e::{Project, docker, fixture, git, json_of};

const STORE: &str = r#"
import http.server, os, signal, sys
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
data = {}
class Store(http.server.BaseHTTPRequestHandler):
    def do_PUT(self):
        data[self.path] = self.rfile.read(int(self.headers["Content-Length"]))
        self.send_response(204)
        self.end_headers()
    def do_GET(self):
        body = data.get(self.path)
        self.send_response(200 if body is not None else 404)
        body = body or b"nothing"
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
http.server.ThreadingHTTPServer(("0.0.0.0", int(os.environ["PORT"])), Store).serve_forever()
"#;

/// The release command: the marker, through the mesh (retried while the peer's route warms up).
const RELEASE_V1: &str = r#"
import os, sys, time, urllib.request
mesh = os.environ["IAC_MESH_OUTBOUND"]
for attempt in range(60):
    try:
        req = urllib.request.Request(mesh + "/marker", data=b"release ran for v1", method="PUT", headers={"Host": "store"})
        urllib.request.urlopen(req, timeout=5)
        print("marker written as", os.getuid(), "in", os.getcwd(), flush=True)
        sys.exit(0)
    except Exception as e:
        print("store not ready:", e, flush=True)
        time.sleep(1)
sys.exit(1)
"#;

const RELEASE_V2: &str = r#"
import sys
print("migration exploded: column already exists", file=sys.stderr, flush=True)
sys.exit(3)
"#;

/// The web process: what the store holds, through the mesh.
const WEB: &str = r#"
import http.server, os, signal, sys, urllib.request
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
VERSION = "v1"
class Page(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        req = urllib.request.Request(os.environ["IAC_MESH_OUTBOUND"] + "/marker", headers={"Host": "store"})
        try:
            marker = urllib.request.urlopen(req, timeout=5).read()
        except Exception as e:
            marker = str(e).encode()
        body = VERSION.encode() + b" marker: " + marker
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
http.server.ThreadingHTTPServer(("0.0.0.0", int(os.environ["PORT"])), Page).serve_forever()
"#;

const PROCFILE: &str = "web: python web.py\nrelease: python release.py\n";

/// GET `url` from the host with curl (no proxy); the body, retried for up to 60 s until it
/// starts with `want`.
fn body_of(url: &str, want: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let out = std::process::Command::new("curl")
            .args(["-s", "--noproxy", "*", "--max-time", "10", url])
            .output()
            .expect("curl");
        let body = String::from_utf8_lossy(&out.stdout).into_owned();
        if body.starts_with(want) || Instant::now() > deadline {
            return body;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn service(report: &serde_json::Value, name: &str) -> serde_json::Value {
    report["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["service"] == name)
        .unwrap_or_else(|| panic!("{name} in {report:#}"))
        .clone()
}

#[test]
fn release_commands_run_before_the_new_pod_and_a_failure_keeps_the_old_one() {
    if e2e::skip_without_docker("release_commands") {
        return;
    }
    let project = Project::new();
    let repos = project.workdir.path().join("repos");
    let store = fixture(
        &repos,
        "store",
        &[("store.py", STORE), ("Procfile", "web: python store.py\n")],
    );
    let app = fixture(
        &repos,
        "app",
        &[
            ("web.py", WEB),
            ("release.py", RELEASE_V1),
            ("Procfile", PROCFILE),
        ],
    );
    let file = project.workdir.path().join("repos.yaml");
    let store_only = format!("- git+file://{}#main\n", store.display());
    let both = format!(
        "{store_only}- slug: git+file://{}#main\n  expose: true\n",
        app.display()
    );

    // 1. The store first (a release needs its database up), then the app: its release runs.
    std::fs::write(&file, &store_only).unwrap();
    let out = project.iac(&["deploy", "--file", file.to_str().unwrap(), "--json"]);
    assert!(out.status.success(), "store deploys");
    std::fs::write(&file, &both).unwrap();
    let plan = project.iac(&["plan", "--file", file.to_str().unwrap()]);
    let plan_text = String::from_utf8_lossy(&plan.stdout);
    assert!(
        plan_text.contains("python release.py [Procfile line 2 (release)]: runs first"),
        "{plan_text}"
    );
    let out = project.iac(&["deploy", "--file", file.to_str().unwrap(), "--json"]);
    let report = json_of(&out)["report"].clone();
    assert!(out.status.success(), "{report:#}");
    let app_report = service(&report, "app");
    let stages: Vec<(String, bool)> = app_report["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| (t["stage"].as_str().unwrap().to_string(), t["ok"] == true))
        .collect();
    let release = stages.iter().position(|(s, _)| s == "release");
    let provision = stages.iter().position(|(s, _)| s == "provision");
    assert!(
        release.is_some() && release < provision && stages[release.unwrap()].1,
        "a successful release stage before provision: {stages:?}"
    );
    assert!(
        service(&report, "store")["stages"]
            .as_array()
            .unwrap()
            .iter()
            .all(|t| t["stage"] != "release"),
        "store declares no release"
    );
    let url = app_report["url"]
        .as_str()
        .unwrap_or_else(|| panic!("app has a url: {report:#}"))
        .to_string();
    assert_eq!(
        body_of(&url, "v1 marker: release ran"),
        "v1 marker: release ran for v1"
    );
    let before = project.container_ids();
    assert!(
        before.iter().all(|(n, _)| !n.contains("-release-")),
        "no release container left: {before:?}"
    );

    // 2. v2's release fails: the deploy fails at release, v1 keeps serving untouched.
    std::fs::write(app.join("release.py"), RELEASE_V2).unwrap();
    std::fs::write(app.join("web.py"), WEB.replace("\"v1\"", "\"v2\"")).unwrap();
    git(&app, &["commit", "-qam", "v2"]);
    let out = project.iac(&["deploy", "--file", file.to_str().unwrap(), "--json"]);
    let report = json_of(&out)["report"].clone();
    assert_eq!(out.status.code(), Some(1), "{report:#}");
    let app_report = service(&report, "app");
    assert_eq!(app_report["failed_stage"], "release", "{report:#}");
    let err = app_report["error"].as_str().unwrap();
    for needle in [
        "python release.py",
        "Procfile line 2 (release)",
        "exited with code 3",
        "migration exploded: column already exists",
    ] {
        assert!(err.contains(needle), "{needle:?} in {err}");
    }
    assert_eq!(service(&report, "store")["ok"], true, "{report:#}");
    assert_eq!(
        project.container_ids(),
        before,
        "the old pods are untouched and no release container is left"
    );
    assert_eq!(body_of(&url, "v1 marker"), "v1 marker: release ran for v1");
    // Nothing of the release pod is left on the engine under any name.
    let left = docker(&[
        "ps",
        "-a",
        "--filter",
        &format!("label=iac.project={}", project.name),
        "--format",
        "{{.Names}}",
    ]);
    assert!(!left.contains("-release-"), "{left}");
}
