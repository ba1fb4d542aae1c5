//! Release commands end to end, with the real `iac` binary, the real Docker engine, real Envoy and
//! real mTLS. Two fixture repos, deployed by `git+file://` slug under a random project name:
//!
//! * `store`: a tiny key-value HTTP service on `$PORT` (the "database");
//! * `app`: a Procfile with `web: python web.py` and `release: python release.py`. The release
//!   command PUTs a marker into `store` through the mesh (its pod's sidecar, as the app would reach
//!   it); the web process serves what `store` held when it started.
//!
//! 0. `store` and `app` v0 (no release) are deployed: the store is empty;
//! 1. app v1 adds the release: `iac plan` shows it; the deploy runs it once, before v1's pod, which
//!    reads the marker at its start (so the release ran first) and serves it at app's `url`; the
//!    report has a successful `release` stage before `provision`; the store is unchanged;
//! 2. app v2, whose release exits 3 after printing a line: the deploy fails at `release` with the
//!    command, the exit status and that line; app's old container is untouched and still serves
//!    v1's page (asked inside the container: host ports are shared with other tests); no release
//!    container is left;
//! 3. app v3, whose release hangs, with `release_timeout` 4s: stopped at the deadline with its
//!    output so far; v1 is untouched and still serving.
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

const RELEASE_V3: &str = r#"
import time
print("waiting for a lock forever", flush=True)
time.sleep(3600)
"#;

/// The web process: what the store held when it started (read once, through the mesh: proof that
/// the release ran before it), and what it holds now.
const WEB: &str = r#"
import http.server, os, signal, sys, time, urllib.error, urllib.request
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
VERSION = "v1"
def marker():
    req = urllib.request.Request(os.environ["IAC_MESH_OUTBOUND"] + "/marker", headers={"Host": "store"})
    for attempt in range(60):
        try:
            return urllib.request.urlopen(req, timeout=5).read()
        except urllib.error.HTTPError as e:
            if e.code == 404:
                return b"none"
        except Exception:
            pass
        time.sleep(1)
    return b"store unreachable"
AT_START = marker()
class Page(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = VERSION.encode() + b" marker at start: " + AT_START
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
            .args(["-sS", "--noproxy", "*", "--max-time", "10", url])
            .output()
            .expect("curl");
        let body = String::from_utf8_lossy(&out.stdout).into_owned();
        if body.starts_with(want) || Instant::now() > deadline {
            if !body.starts_with(want) {
                eprintln!(
                    "GET {url}: {}\n{}",
                    String::from_utf8_lossy(&out.stderr),
                    docker(&["ps", "-a", "--format", "{{.Names}} {{.Status}} {{.Ports}}"])
                );
            }
            return body;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// GET / of the app from inside its own container (port 8000, no host port involved: other tests
/// on a shared engine — Swarm's init and leave — can unpublish host ports meanwhile).
fn body_inside(container: &str) -> String {
    const GET: &str = "import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:8000/', timeout=10).read().decode(), end='')";
    let out = std::process::Command::new("docker")
        .args(["exec", "-u", "nobody", container, "python3", "-c", GET])
        .output()
        .expect("docker exec");
    if !out.status.success() {
        eprintln!(
            "GET / in {container}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    String::from_utf8_lossy(&out.stdout).into_owned()
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
    // v0 declares no release yet.
    let app = fixture(
        &repos,
        "app",
        &[
            ("web.py", &WEB.replace("\"v1\"", "\"v0\"")),
            ("Procfile", "web: python web.py\n"),
        ],
    );
    let file = project.workdir.path().join("repos.yaml");
    std::fs::write(
        &file,
        format!(
            "- git+file://{}#main\n- slug: git+file://{}#main\n  expose: true\n",
            store.display(),
            app.display()
        ),
    )
    .unwrap();
    let file = file.to_str().unwrap();

    // 0. Both services, no release anywhere: the store is empty.
    let out = project.iac(&["deploy", "--file", file, "--json"]);
    let report = json_of(&out)["report"].clone();
    assert!(out.status.success(), "{report:#}");
    let url = service(&report, "app")["url"]
        .as_str()
        .unwrap_or_else(|| panic!("app has a url: {report:#}"))
        .to_string();
    assert_eq!(body_of(&url, "v0"), "v0 marker at start: none");
    let store_ids: Vec<(String, String)> = project
        .container_ids()
        .into_iter()
        .filter(|(n, _)| n.contains("-store"))
        .collect();

    // 1. v1 declares a release: it runs once, before v1's pod, which finds the marker at its
    // start. The store is unchanged (same mesh), so what the release wrote stays.
    std::fs::write(app.join("web.py"), WEB).unwrap();
    std::fs::write(app.join("release.py"), RELEASE_V1).unwrap();
    std::fs::write(app.join("Procfile"), PROCFILE).unwrap();
    git(&app, &["add", "-A"]);
    git(&app, &["commit", "-qm", "v1"]);
    let plan = project.iac(&["plan", "--file", file]);
    let plan_text = String::from_utf8_lossy(&plan.stdout);
    assert!(
        plan_text.contains("python release.py [Procfile line 2 (release)]: runs first"),
        "{plan_text}"
    );
    let out = project.iac(&["deploy", "--file", file, "--json"]);
    let report = json_of(&out)["report"].clone();
    assert!(out.status.success(), "{report:#}");
    let app_report = service(&report, "app");
    assert_eq!(app_report["action"], "replace", "{report:#}");
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
    assert_eq!(service(&report, "store")["action"], "unchanged");
    let events = String::from_utf8_lossy(&out.stdout);
    assert!(
        events.contains("marker written as 10001 in /app"),
        "the release ran as the app's user in /app and its output is in the events"
    );
    // The replacement publishes its edge anew.
    let url = app_report["url"].as_str().unwrap().to_string();
    assert_eq!(
        body_of(&url, "v1"),
        "v1 marker at start: release ran for v1"
    );
    let before = project.container_ids();
    assert!(
        before.iter().all(|(n, _)| !n.contains("-release-")),
        "no release container left: {before:?}"
    );
    assert!(
        store_ids.iter().all(|s| before.contains(s)),
        "store untouched"
    );

    // 2. v2's release fails: the deploy fails at release, v1 keeps serving untouched.
    std::fs::write(app.join("release.py"), RELEASE_V2).unwrap();
    std::fs::write(app.join("web.py"), WEB.replace("\"v1\"", "\"v2\"")).unwrap();
    git(&app, &["commit", "-qam", "v2"]);
    let out = project.iac(&["deploy", "--file", file, "--json"]);
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
    let app_container = format!("{}-app", project.name);
    assert_eq!(
        body_inside(&app_container),
        "v1 marker at start: release ran for v1"
    );

    // 3. v3's release hangs: stopped at release_timeout, v1 keeps serving untouched.
    std::fs::write(app.join("release.py"), RELEASE_V3).unwrap();
    git(&app, &["commit", "-qam", "v3"]);
    let started = Instant::now();
    let out = project.iac_env(
        &["deploy", "--file", file, "--json"],
        &[("IAC_RELEASE_TIMEOUT", "4s")],
    );
    let report = json_of(&out)["report"].clone();
    assert_eq!(out.status.code(), Some(1), "{report:#}");
    let app_report = service(&report, "app");
    assert_eq!(app_report["failed_stage"], "release", "{report:#}");
    let err = app_report["error"].as_str().unwrap();
    assert!(
        err.contains("did not finish within 4s (release_timeout)")
            && err.contains("waiting for a lock forever"),
        "{err}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(100),
        "not held by the hanging command"
    );
    assert_eq!(project.container_ids(), before, "v1's pods untouched");
    assert_eq!(
        body_inside(&app_container),
        "v1 marker at start: release ran for v1"
    );
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
