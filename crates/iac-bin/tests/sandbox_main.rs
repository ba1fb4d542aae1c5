//! Sandboxes end to end (issue 20), with the real `iac` binary, the real Docker engine, real
//! Envoy, real mTLS and OpenTelemetry's real instrumentations. Fixture repos are made on the fly
//! and deployed by `git+file://` slug under a random project name:
//!
//! * a chain a → b → c of HTTP services: a and b are Flask apps that call the next service
//!   through their sidecar's outbound listener (`$IAC_MESH_OUTBOUND`, `Host: <next>`) with
//!   `urllib` and copy **no** header by hand: only what OpenTelemetry's auto-instrumentation
//!   propagates (W3C `baggage`, `traceparent`) reaches the next hop. c answers `c-base`.
//!
//! 1. the baseline deploys; a's edge answers `a>b>c-base`;
//! 2. `iac deploy --sandbox feat` with only c's `feature` branch (answering `c-feat`): every
//!    baseline container keeps its id (the other sidecars are reloaded, not replaced: the deploy
//!    says each was validated and came back);
//! 3. through a's edge: `x-iac-sandbox: feat` reaches the copy through a → b → c (the edge turns
//!    the header into baggage, the apps propagate it, c's route in b's sidecar matches it);
//!    `baggage: iac-sandbox=feat` (also among other members) too; no header, another sandbox's
//!    name or a header that is not a sandbox name reach the baseline; a config Envoy refuses,
//!    reloaded in b's real sidecar, leaves its running Envoy and routes alone;
//! 4. `iac health --sandbox feat --json` lists the copy `c--sb-feat`, SERVING, and only it;
//! 5. `iac destroy --sandbox feat` removes the copy's two containers, leaves every baseline
//!    container id unchanged, and the header reaches the baseline again.
//!
//! gRPC is not part of it: no fixture wheel of `grpcio` is in the test wheelhouse (the routes are
//! the same for gRPC, a header being metadata: `envoy_render.rs` checks them).
//! Needs the base images, the OpenTelemetry wheelhouse and the fixture wheels from
//! `make test-deps`; with IAC_REQUIRE_DOCKER unset and no Docker it is skipped loudly.
//! Everything it creates is removed by label on drop, even on panic.

use std::process::Command;
use std::time::{Duration, Instant};

mod e2e;
use e2e::{Project, docker, fixture, git, json_of};

/// a and b: a Flask app that answers its own name, then `>` and what the next service (`$NEXT`)
/// answered, called through the sidecar's outbound listener with `urllib`. No header of the
/// incoming request is copied: propagation is OpenTelemetry's alone.
const HOP: &str = r#"
import os, urllib.request
from flask import Flask

app = Flask(__name__)

@app.get("/")
def index():
    nxt = os.environ["NEXT"]
    req = urllib.request.Request(os.environ["IAC_MESH_OUTBOUND"] + "/", headers={"Host": nxt})
    with urllib.request.urlopen(req, timeout=20) as r:
        return os.environ["IAC_SERVICE"] + ">" + r.read().decode()

if __name__ == "__main__":
    app.run(host="127.0.0.1", port=int(os.environ["PORT"]))
"#;

/// c: the standard library's HTTP server answering `BODY` (the test writes `c-base` on main and
/// `c-feat` on the feature branch).
const LEAF: &str = r#"
import http.server, os, signal, sys
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
class Page(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = b"BODY"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
http.server.ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), Page).serve_forever()
"#;

/// `GET url` from the host with `headers`: (status code, body); `000` when nothing answered.
fn get(url: &str, headers: &[&str]) -> (String, String) {
    let mut cmd = Command::new("curl");
    cmd.args([
        "-s",
        "--noproxy",
        "*",
        "--max-time",
        "30",
        "-w",
        "\n%{http_code}",
    ]);
    for h in headers {
        cmd.args(["-H", h]);
    }
    let out = cmd.arg(url).output().expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    (code.to_string(), body.to_string())
}

/// Asks `url` with `headers` until it answers 200 with `want`, at most 60 s (the sidecars a deploy
/// or a sandbox's removal reloaded restart their Envoy just after it returns), and panics with
/// the last answer otherwise.
fn answers(url: &str, headers: &[&str], want: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (code, body) = get(url, headers);
        if code == "200" && body == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "GET {url} {headers:?}: still {code} {body:?} after 60 s; expected 200 {want:?}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// `GET url` with `headers` answers 200 with `want` now.
fn answers_now(url: &str, headers: &[&str], want: &str) {
    let (code, body) = get(url, headers);
    assert_eq!(
        (code.as_str(), body.as_str()),
        ("200", want),
        "GET {url} {headers:?}"
    );
}

/// The project's pod containers (label `iac.service`: not its keeper) with `filter` (an extra
/// `docker ps --filter`), as (name, id), sorted.
fn pods(project: &Project, filter: Option<&str>) -> Vec<(String, String)> {
    let project_label = format!("label=iac.project={}", project.name);
    let mut args = vec![
        "ps",
        "-a",
        "--filter",
        &project_label,
        "--filter",
        "label=iac.service",
    ];
    if let Some(f) = filter {
        args.extend(["--filter", f]);
    }
    args.extend(["--format", "{{.Names}} {{.ID}}"]);
    let mut v: Vec<(String, String)> = docker(&args)
        .lines()
        .filter_map(|l| {
            l.split_once(' ')
                .map(|(a, b)| (a.to_string(), b.to_string()))
        })
        .collect();
    v.sort();
    v
}

/// The baseline's pod containers (no `iac.sandbox` label), as (name, id), sorted.
fn baseline_ids(project: &Project) -> Vec<(String, String)> {
    let copies = copy_ids(project);
    pods(project, None)
        .into_iter()
        .filter(|c| !copies.contains(c))
        .collect()
}

/// The project's sandbox containers (label `iac.sandbox`), as (name, id), sorted.
fn copy_ids(project: &Project) -> Vec<(String, String)> {
    pods(project, Some("label=iac.sandbox"))
}

#[test]
fn a_sandbox_copy_of_the_last_hop_is_reached_through_the_chain_by_header_and_baggage() {
    if e2e::skip_without_docker("sandbox_main") {
        return;
    }
    let started = Instant::now();
    let wheels = e2e::test_wheels_dir();
    assert!(
        wheels.join(".iac-test-wheels").is_file(),
        "{} has no fixture wheels (Flask): run `make test-deps` (scripts/test-wheels.sh)",
        wheels.display()
    );
    let images = iac_backends::build::ImageConfig::default();
    let wheelhouse = std::env::var_os("IAC_IMAGES__WHEELHOUSE")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| images.wheelhouse_for(&images.python_images(None).unwrap()));
    let has = |prefix: &str| {
        std::fs::read_dir(&wheelhouse)
            .map(|d| {
                d.flatten()
                    .any(|e| e.file_name().to_string_lossy().starts_with(prefix))
            })
            .unwrap_or(false)
    };
    assert!(
        has("opentelemetry_instrumentation_flask-") && has("opentelemetry_instrumentation_urllib-"),
        "the OpenTelemetry wheelhouse {} lacks the Flask/urllib instrumentations: run `make test-deps` \
         (scripts/bootstrap-images.sh downloads scripts/images/otel-requirements.txt)",
        wheelhouse.display()
    );

    let project = Project::new();
    let repos = project.workdir.path().join("repos");
    let hop = [("main.py", HOP), ("requirements.txt", "Flask>=3.0\n")];
    let procfile = ("Procfile", "web: python main.py\n");
    let a = fixture(&repos, "a", &[hop[0], hop[1], procfile]);
    let b = fixture(&repos, "b", &[hop[0], hop[1], procfile]);
    let leaf = LEAF.replace("BODY", "c-base");
    let c = fixture(&repos, "c", &[("main.py", &leaf), procfile]);
    git(&c, &["checkout", "-qb", "feature"]);
    std::fs::write(c.join("main.py"), LEAF.replace("BODY", "c-feat")).unwrap();
    git(&c, &["commit", "-qam", "feature: c-feat"]);
    git(&c, &["checkout", "-q", "main"]);

    // The resolver container reads the pre-downloaded fixture wheels only: no index, no network.
    std::fs::write(
        project.workdir.path().join("iac.toml"),
        format!(
            "[images]\npip_args = [\"--no-index\"]\n[images.resolver]\nfind_links = [{:?}]\n",
            wheels.display().to_string()
        ),
    )
    .unwrap();
    let base = project.workdir.path().join("repos.yaml");
    std::fs::write(
        &base,
        format!(
            "- slug: git+file://{}#main\n  env: {{PORT: \"8000\", NEXT: b}}\n\
             - slug: git+file://{}#main\n  env: {{PORT: \"8000\", NEXT: c}}\n\
             - slug: git+file://{}#main\n  env: {{PORT: \"8000\"}}\n",
            a.display(),
            b.display(),
            c.display()
        ),
    )
    .unwrap();
    let sandbox = project.workdir.path().join("sandbox.yaml");
    std::fs::write(
        &sandbox,
        format!(
            "- slug: git+file://{}#feature\n  env: {{PORT: \"8000\"}}\n",
            c.display()
        ),
    )
    .unwrap();

    // 1. the baseline: a>b>c-base through a's edge.
    let out = project.iac(&["deploy", "--file", base.to_str().unwrap(), "--json"]);
    let report = json_of(&out)["report"].clone();
    assert_eq!(out.status.code(), Some(0), "{report:#}");
    let url = report["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["service"] == "a")
        .and_then(|s| s["url"].as_str())
        .unwrap_or_else(|| panic!("a has an edge url: {report:#}"))
        .to_string();
    answers(&url, &[], "a>b>c-base");
    let baseline = baseline_ids(&project);
    assert_eq!(baseline.len(), 6, "three pods of two: {baseline:?}");
    eprintln!("baseline up after {:?}", started.elapsed());

    // 2. the sandbox: only c's copy is created; the baseline keeps every container.
    let out = project.iac(&[
        "deploy",
        "--sandbox",
        "feat",
        "--file",
        sandbox.to_str().unwrap(),
        "--json",
    ]);
    let report = json_of(&out)["report"].clone();
    assert_eq!(out.status.code(), Some(0), "{report:#}");
    let copies = copy_ids(&project);
    let names: Vec<&str> = copies.iter().map(|(n, _)| n.as_str()).collect();
    let copy = format!("{}-c--sb-feat", project.name);
    assert_eq!(
        names,
        [copy.as_str(), &format!("{copy}-envoy")],
        "the copy's pair"
    );
    assert_eq!(
        baseline_ids(&project),
        baseline,
        "no baseline container replaced"
    );
    // The baseline's sidecars were reloaded with the copy's routes: validated, restarted, and
    // answering again before the deploy returned.
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    for svc in ["a", "b", "c"] {
        assert!(
            said.lines()
                .any(|l| l.contains(&format!("\"service\":\"{svc}\""))
                    && l.contains("sidecar reloaded with the new sandbox routes")),
            "{svc}'s sidecar reloaded: {said}"
        );
    }

    // 3. routing through a → b → c, with a and b propagating only what OpenTelemetry does.
    answers(&url, &["x-iac-sandbox: feat"], "a>b>c-feat");
    answers_now(&url, &[], "a>b>c-base");
    answers_now(&url, &["baggage: iac-sandbox=feat"], "a>b>c-feat");
    answers_now(
        &url,
        &["baggage: userId=alice, iac-sandbox=feat;p=1"],
        "a>b>c-feat",
    );
    // The header is added to an existing baggage list.
    answers_now(
        &url,
        &["x-iac-sandbox: feat", "baggage: userId=alice"],
        "a>b>c-feat",
    );
    answers_now(&url, &["x-iac-sandbox: other"], "a>b>c-base");
    // A header that is not a sandbox name is never copied into baggage.
    answers_now(&url, &["x-iac-sandbox: feat,iac-sandbox=x"], "a>b>c-base");

    // Reload safety in a real sidecar: a config Envoy's `--mode validate` refuses leaves the
    // running Envoy (and b's routes to the copy) alone, and the reload says why.
    let config = project
        .workdir
        .path()
        .join(".iac/projects")
        .join(&project.name)
        .join("services/b/envoy.yaml");
    let good = std::fs::read(&config).unwrap();
    std::fs::write(
        &config,
        "static_resources:\n  listeners:\n  - name: broken\n",
    )
    .unwrap();
    let said = docker(&[
        "exec",
        &format!("{}-b-envoy", project.name),
        "/bin/sh",
        "-c",
        &iac_core::plan::sidecar_reload_script(),
        "iac-reload",
        "1",
        "http://127.0.0.1:9901/stats/prometheus",
    ]);
    assert!(
        said.trim().starts_with(iac_core::plan::RELOAD_REFUSED),
        "a broken config is refused: {said}"
    );
    answers_now(&url, &["x-iac-sandbox: feat"], "a>b>c-feat");
    std::fs::write(&config, good).unwrap();

    // 4. health of the sandbox: its copy only.
    let out = project.iac(&["health", "--sandbox", "feat", "--json"]);
    assert_eq!(out.status.code(), Some(0));
    let health = json_of(&out);
    let listed: Vec<(String, String)> = health["services"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["running"]["service"].as_str().unwrap_or("").to_string(),
                s["health"]["state"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    assert_eq!(
        listed,
        [("c--sb-feat".to_string(), "SERVING".to_string())],
        "{health:#}"
    );

    // 5. removing the sandbox: its pair goes, the baseline stays, the header reaches c-base.
    let out = project.iac(&["destroy", "--sandbox", "feat"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(copy_ids(&project).is_empty(), "{:?}", copy_ids(&project));
    assert_eq!(
        baseline_ids(&project),
        baseline,
        "no baseline container replaced"
    );
    answers(&url, &["x-iac-sandbox: feat"], "a>b>c-base");
    answers_now(&url, &["baggage: iac-sandbox=feat"], "a>b>c-base");
    eprintln!("sandbox_main took {:?}", started.elapsed());
}
