//! hello-main end to end, with the real `iac` binary, the real Docker engine, real Envoy and real
//! mTLS. Fixture repos are made on the fly (git init + commit) and deployed by `git+file://` slug
//! under a random project name:
//!
//! 1. `hello` (root main.py prints a line and serves `$PORT` until stopped, `expose: true`),
//!    `scripted` (entry from `[project.scripts]`) and `crashy` (main exits 1; its agent waits
//!    10 min before restarting it, so every check sees the same exit) → deploy exits 1;
//!    hello and scripted are SERVING through Envoy over mTLS, crashy is NOT_SERVING with exit
//!    code 1; hello's `url` (deploy report and `iac health --json`) answers 200 from the host
//!    with no client certificate, the others have none;
//!    egress is closed by default: hello's app has `HTTPS_PROXY` and a direct connection to a
//!    peer (skipping its sidecar) gets "no route to host";
//! 2. `iac logs` shows hello's printed line;
//! 3. a redeploy with no change touches nothing (same container ids);
//! 4. a change to `scripted` replaces only that service; v2 serves HTTP on a hard-coded
//!    127.0.0.1:5000 (ignoring `$PORT`) with `expose: true`: its agent forwards `$PORT` there, so
//!    it is SERVING, the deploy warns, and its `url` answers with v2's page;
//!    The replaced pod's last log lines are in that deployment's history record
//!    (`iac history show ID --json`);
//! 5. `iac destroy` leaves no container or network with the project label, and is recorded.
//!
//! Needs the base images from `make test-deps`; with IAC_REQUIRE_DOCKER unset and no Docker it is
//! skipped loudly. Everything it creates is removed by label on drop, even on panic.

use std::process::Command;
use std::time::Instant;

mod e2e;
use e2e::{HELLO, Project, docker, fixture, git, json_of, scripted_fixture};

/// `scripted` v2: a web server on a hard-coded 127.0.0.1:5000, ignoring `$PORT`, as many
/// quickstarts are.
const SCRIPTED_V2: &str = r#"
import http.server, signal, sys
class Page(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = b"scripted v2 on 5000"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
def main():
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print("scripted v2", flush=True)
    http.server.ThreadingHTTPServer(("127.0.0.1", 5000), Page).serve_forever()
def other():
    print("never the default")
"#;

fn health_by_service(
    v: &serde_json::Value,
) -> std::collections::BTreeMap<String, (String, Option<i64>)> {
    v["services"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["running"]["service"].as_str().unwrap().to_string(),
                (
                    s["health"]["state"].as_str().unwrap().to_string(),
                    s["health"]["exit_code"].as_i64(),
                ),
            )
        })
        .collect()
}

#[test]
fn hello_main_end_to_end() {
    if e2e::skip_without_docker("hello_main_end_to_end") {
        return;
    }
    let started = Instant::now();
    let project = Project::new();
    let repos = project.workdir.path().join("repos");
    let hello = fixture(&repos, "hello", &[("main.py", HELLO)]);
    let scripted = scripted_fixture(
        &repos,
        "zz-first = \"scripted.cli:main\"\naa-second = \"scripted.cli:other\"",
    );
    let crashy = fixture(
        &repos,
        "crashy",
        &[(
            "main.py",
            "import sys\nprint('crashy starting', flush=True)\nsys.exit(1)\n",
        )],
    );
    let file = project.workdir.path().join("repos.yaml");
    std::fs::write(
        &file,
        format!(
            "- slug: git+file://{}#main\n  expose: true\n- git+file://{}#main\n- slug: git+file://{}#main\n  env: {{IAC_RESTART_BACKOFF: 10m}}\n",
            hello.display(),
            scripted.display(),
            crashy.display()
        ),
    )
    .unwrap();
    let file = file.to_str().unwrap();

    // 1. deploy: crashy fails, its peers are SERVING. The settle window is 10 s for this deploy,
    // not the default 3 s: it counts from the entry's start, and on a loaded CI machine
    // `opentelemetry-instrument python` can take longer than 3 s to reach crashy's
    // `sys.exit(1)`, which a shorter window would report as SERVING.
    let out = project.iac_env(
        &["deploy", "--file", file, "--json"],
        &[("IAC_HEALTH_SETTLE", "10s")],
    );
    let report = json_of(&out)["report"].clone();
    assert_eq!(
        out.status.code(),
        Some(1),
        "crashy must make the deploy fail: {report:#}"
    );
    let svc = |name: &str| {
        report["services"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["service"] == name)
            .unwrap()
            .clone()
    };
    assert_eq!(svc("hello")["health"]["state"], "SERVING", "{report:#}");
    assert_eq!(svc("scripted")["health"]["state"], "SERVING", "{report:#}");
    assert_eq!(svc("scripted")["entry"]["rule"], "project.scripts");
    assert!(
        svc("scripted")["entry"]["argv"]
            .to_string()
            .contains("scripted.cli"),
        "first script in file order: {}",
        svc("scripted")["entry"]
    );
    assert_eq!(
        svc("crashy")["health"]["state"],
        "NOT_SERVING",
        "{report:#}"
    );
    assert_eq!(svc("crashy")["health"]["exit_code"], 1);

    // 1b. Egress is closed by default: the app has the proxy variables, and a connection that
    // skips its sidecar has no route, even to a peer on the project network (Envoy reaches it).
    let app = format!("{}-hello", project.name);
    let env = docker(&["inspect", "-f", "{{json .Config.Env}}", &app]);
    assert!(
        env.contains("\"HTTPS_PROXY=http://127.0.0.1:15002\""),
        "{env}"
    );
    let direct = docker(&[
        "exec",
        "-u",
        "nobody",
        &app,
        "python3",
        "-c",
        "import socket\ntry:\n    socket.create_connection(('scripted', 15000), timeout=5); print('connected')\nexcept OSError as e:\n    print('errno', e.errno)",
    ]);
    assert_eq!(direct.trim(), "errno 113", "no route around the sidecar");

    // hello's edge: the same URL in the report and in `iac health --json`, answering from the
    // host without a client certificate; scripted and crashy declare no port, so no edge.
    let url = svc("hello")["url"]
        .as_str()
        .unwrap_or_else(|| panic!("hello has a url: {report:#}"))
        .to_string();
    assert!(url.starts_with("http://127.0.0.1:"), "{url}");
    assert!(svc("scripted")["url"].is_null() && svc("crashy")["url"].is_null());
    let health = project.iac(&["health", "--json"]);
    let hj = json_of(&health);
    let health_url = hj["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["running"]["service"] == "hello")
        .map(|s| s["url"].clone())
        .unwrap();
    assert_eq!(health_url, url.as_str(), "{hj:#}");
    assert_eq!(e2e::curl_code(&url), "200", "GET {url} from the host");
    let h = health_by_service(&hj);
    assert_eq!(h["hello"].0, "SERVING");
    assert_eq!(h["scripted"].0, "SERVING");
    assert_eq!(h["crashy"], ("NOT_SERVING".to_string(), Some(1)));

    // 2. logs through the agent's StreamLogs, over mTLS.
    let logs = project.iac(&["logs", "--service", "hello", "--tail", "50"]);
    assert!(logs.status.success());
    assert!(String::from_utf8_lossy(&logs.stdout).contains("hello-main says hi"));
    let all = project.iac(&["logs", "--tail", "50"]);
    let all = String::from_utf8_lossy(&all.stdout);
    assert!(
        all.lines()
            .any(|l| l.starts_with("scripted") && l.contains("scripted v1")),
        "prefixed lines: {all}"
    );

    // 3. redeploy without a change: nothing touched.
    let before = project.container_ids();
    assert_eq!(
        before.len(),
        7,
        "two containers per service and the project keeper: {before:?}"
    );
    let out = project.iac(&["deploy", "--file", file, "--json"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        project.container_ids(),
        before,
        "no change → same containers"
    );

    // 4. change scripted only: only its pair is replaced. v2 is a web server that ignores $PORT
    // (a hard-coded 127.0.0.1:5000) and is exposed: traffic must still reach it.
    std::fs::write(scripted.join("scripted/cli.py"), SCRIPTED_V2).unwrap();
    std::fs::write(
        file,
        format!(
            "- slug: git+file://{}#main\n  expose: true\n- slug: git+file://{}#main\n  expose: true\n- slug: git+file://{}#main\n  env: {{IAC_RESTART_BACKOFF: 10m}}\n",
            hello.display(),
            scripted.display(),
            crashy.display()
        ),
    )
    .unwrap();
    git(&scripted, &["commit", "-qam", "v2"]);
    let plan = project.iac(&["plan", "--file", file, "--json"]);
    let plan_text = String::from_utf8_lossy(&plan.stdout);
    assert!(
        plan_text.contains("\"replace\""),
        "plan shows the replacement: {plan_text}"
    );
    let out = project.iac(&["deploy", "--file", file, "--json"]);
    assert_eq!(out.status.code(), Some(1));
    let report = json_of(&out)["report"].clone();
    let v2 = report["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["service"] == "scripted")
        .unwrap_or_else(|| panic!("scripted in the report: {report:#}"))
        .clone();
    assert_eq!(v2["health"]["state"], "SERVING", "{v2:#}");
    assert_eq!(v2["health"]["forwarded_to"], 5000, "{v2:#}");
    let forwards = format!("forwards 127.0.0.1:{} there", v2["health"]["app_port"]);
    assert!(
        v2["warnings"].to_string().contains(&forwards),
        "the deploy says it {forwards}: {v2:#}"
    );
    let v2_url = v2["url"].as_str().unwrap_or_else(|| panic!("{v2:#}"));
    let page = Command::new("curl")
        .args(["-s", "--noproxy", "*", "--max-time", "10", v2_url])
        .output()
        .expect("curl");
    assert_eq!(
        String::from_utf8_lossy(&page.stdout),
        "scripted v2 on 5000",
        "GET {v2_url}: the edge → Envoy → $PORT → the agent's forwarder → the app"
    );
    let after = project.container_ids();
    let ids = |v: &[(String, String)], prefix: &str| -> Vec<String> {
        v.iter()
            .filter(|(n, _)| n.starts_with(&format!("{}-{prefix}", project.name)))
            .map(|(_, id)| id.clone())
            .collect()
    };
    assert_eq!(
        ids(&after, "hello"),
        ids(&before, "hello"),
        "hello untouched"
    );
    assert_eq!(
        ids(&after, "crashy"),
        ids(&before, "crashy"),
        "crashy untouched"
    );
    let (a, b) = (ids(&after, "scripted"), ids(&before, "scripted"));
    assert_eq!(a.len(), 2);
    assert!(
        a.iter().all(|id| !b.contains(id)),
        "scripted replaced: {b:?} → {a:?}"
    );
    let logs = project.iac(&["logs", "--service", "scripted", "--tail", "20"]);
    assert!(String::from_utf8_lossy(&logs.stdout).contains("scripted v2"));
    // The replaced pod's last log lines were saved with this deployment in the history.
    let id = json_of(&out)["deployment_id"]
        .as_str()
        .unwrap_or_else(|| panic!("deployment_id in the deploy's JSON"))
        .to_string();
    let shown = json_of(&project.iac(&["history", "show", &id, "--json"]));
    assert_eq!(shown["status"], "failed", "crashy still fails: {shown:#}");
    assert_eq!(shown["origin"], "cli");
    let tails = shown["log_tails"].as_array().unwrap();
    let tail_of = |role: &str| {
        tails
            .iter()
            .find(|t| t["service"] == "scripted" && t["role"] == role)
            .unwrap_or_else(|| panic!("scripted's {role} log tail: {shown:#}"))
    };
    assert_eq!(tail_of("app")["reason"], "replaced");
    assert!(
        tail_of("app")["lines"].to_string().contains("scripted "),
        "v1's printed line: {:#}",
        tail_of("app")
    );
    assert_eq!(tail_of("sidecar")["reason"], "replaced");
    assert!(
        !shown["events"].as_array().unwrap().is_empty(),
        "the events are recorded"
    );

    // 5. destroy leaves nothing with the project label; a second destroy is a no-op.
    assert!(project.iac(&["destroy"]).status.success());
    let label = format!("label=iac.project={}", project.name);
    let history = json_of(&project.iac(&["history", "--json"]));
    assert_eq!(history["items"][0]["kind"], "destroy", "{history:#}");
    assert_eq!(history["items"][0]["status"], "succeeded");
    assert_eq!(history["items"][1]["id"], id.as_str(), "{history:#}");
    assert!(
        docker(&["ps", "-aq", "--filter", &label]).trim().is_empty(),
        "containers left"
    );
    assert!(
        docker(&["network", "ls", "-q", "--filter", &label])
            .trim()
            .is_empty(),
        "networks left"
    );
    assert!(project.iac(&["destroy"]).status.success());
    eprintln!("hello-main end to end took {:?}", started.elapsed());
}
