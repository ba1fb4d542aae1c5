//! A CLI deploy and an admin-API deploy of one project at the same time, for real: `iac serve`
//! (a child, on a Unix socket) and `iac deploy` (a child) on the same state directory and
//! engine. Deploys of a project are serialized whoever starts them, and the second is told who
//! holds the project (docs/api.md, "Concurrent deploys"):
//!
//! 1. the CLI holds the project's deploy lock → `POST /deploy` gets 409 naming the CLI's pid and
//!    command line; once the CLI is done, the same request deploys (a report, every service
//!    SERVING);
//! 2. an API deploy holds it → a CLI deploy started meanwhile waits, saying it waits for the
//!    `iac serve` process by pid, and starts provisioning only after the API's deploy reported;
//!    both end SERVING.
//!
//! `health_settle` is raised to 6 s so a worker's create or replace holds the lock long enough
//! for the other side to arrive on a loaded machine. Everything is removed by label on drop.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod e2e;
use e2e::{HELLO, Project, fixture, static_agent};

const WORKER: &str = r#"
import signal, sys, time
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
while True:
    time.sleep(1)
"#;

/// How long a created or replaced worker must stay up before it counts: the time the lock is
/// held at least.
const SETTLE: &str = "6s";

/// Stops `iac serve` when dropped.
struct Serve(Child);

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct Race {
    p: Project,
    agent: String,
    hello: PathBuf,
    worker: PathBuf,
    sock: PathBuf,
}

impl Race {
    /// `iac <args> --project P` with this test's state, secrets and agent.
    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_iac"));
        cmd.args(args)
            .args(["--project", &self.p.name])
            .current_dir(self.p.workdir.path())
            .env("IAC_IMAGES__AGENT_BINARY", &self.agent)
            .env("IAC_STATE_DIR", self.p.workdir.path().join(".iac"))
            .env(
                "IAC_PKI__SECRETS_DIR",
                self.p.workdir.path().join("secrets"),
            )
            .env("IAC_HEALTH_SETTLE", SETTLE)
            .env("RUST_LOG", "warn");
        cmd
    }

    fn serve(&self) -> Serve {
        let child = self
            .command(&["serve", "--uds", self.sock.to_str().unwrap()])
            .env("IAC_SERVE__ALLOW_LOCAL_SOURCES", "true")
            .env_remove("SUPABASE_URL")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("run iac serve");
        let t = Instant::now();
        while !self.sock.exists() {
            assert!(
                t.elapsed() < Duration::from_secs(30),
                "iac serve did not listen"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        Serve(child)
    }

    /// The repos file (worker env `V=version`), written to the workdir; its path.
    fn repos_file(&self, version: u32) -> String {
        let path = self.p.workdir.path().join(format!("repos-{version}.yaml"));
        std::fs::write(
            &path,
            format!(
                "- slug: git+file://{}#main\n  env: {{PORT: 8080}}\n- slug: git+file://{}#main\n  env: {{V: \"{version}\"}}\n",
                self.hello.display(),
                self.worker.display()
            ),
        )
        .unwrap();
        path.to_string_lossy().into_owned()
    }

    /// The same services as an API request body.
    fn body(&self, version: u32) -> String {
        serde_json::json!({
            "project": self.p.name,
            "slugs": [
                {"slug": format!("git+file://{}#main", self.hello.display()), "env": {"PORT": "8080"}},
                {"slug": format!("git+file://{}#main", self.worker.display()), "env": {"V": version.to_string()}},
            ],
        })
        .to_string()
    }

    /// `curl` on the socket, streaming: the child, its stdout read line by line.
    fn post_deploy(&self, version: u32) -> Child {
        Command::new("curl")
            .args([
                "-sS",
                "-N",
                "--unix-socket",
                self.sock.to_str().unwrap(),
                "-H",
                "content-type: application/json",
                "-w",
                "\nstatus %{http_code}\n",
                "--data-binary",
                &self.body(version),
                "http://localhost/deploy",
            ])
            .stdout(Stdio::piped())
            .spawn()
            .expect("curl")
    }

    fn lock_file(&self) -> PathBuf {
        self.p
            .workdir
            .path()
            .join(".iac/projects")
            .join(&self.p.name)
            .join("deploy.lock")
    }
}

/// Every line of a finished request, and its HTTP status (the `-w` line).
fn finish(child: Child) -> (u16, Vec<String>) {
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    let status = lines
        .iter()
        .rev()
        .find_map(|l| l.strip_prefix("status "))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line: {text}"));
    lines.retain(|l| !l.starts_with("status ") && !l.is_empty());
    (status, lines)
}

/// The report line of a deploy stream: every service SERVING.
fn assert_serving_report(lines: &[String], who: &str) {
    let last: serde_json::Value = serde_json::from_str(
        lines
            .last()
            .unwrap_or_else(|| panic!("{who}: empty stream")),
    )
    .unwrap();
    assert_eq!(last["type"], "report", "{who}: {last:#}");
    let services = last["services"].as_array().unwrap();
    assert_eq!(services.len(), 2, "{who}: {last:#}");
    for s in services {
        assert_eq!(s["health"]["state"], "SERVING", "{who}: {s:#}");
    }
}

fn pid_of(holder_line: &str) -> Option<u32> {
    holder_line
        .strip_prefix("pid ")?
        .split(' ')
        .next()?
        .parse()
        .ok()
}

#[test]
fn cli_and_api_deploys_of_one_project_are_serialized_and_name_the_holder() {
    if e2e::skip_without_docker(
        "cli_and_api_deploys_of_one_project_are_serialized_and_name_the_holder",
    ) {
        return;
    }
    let p = Project::new();
    let repos = p.workdir.path().join("repos");
    let race = Race {
        hello: fixture(&repos, "hello", &[("main.py", HELLO)]),
        worker: fixture(&repos, "worker", &[("main.py", WORKER)]),
        sock: p.workdir.path().join("iac.sock"),
        agent: static_agent(),
        p,
    };
    let serve = race.serve();
    let serve_pid = serve.0.id();

    // 1. The CLI holds the lock: the API refuses, naming it.
    let t = Instant::now();
    let cli = race
        .command(&["deploy", "--file", &race.repos_file(1), "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let cli_pid = cli.id();
    let lock = race.lock_file();
    loop {
        let text = std::fs::read_to_string(&lock).unwrap_or_default();
        if pid_of(&text) == Some(cli_pid) {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(300),
            "the CLI deploy never took the lock: {text:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let (status, lines) = finish(race.post_deploy(1));
    let body = lines.join("\n");
    assert_eq!(status, 409, "{body}");
    let err: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(err["error"]["code"], "conflict", "{body}");
    let msg = err["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains(&format!("pid {cli_pid} (iac deploy --file")) && msg.contains("deploy.lock"),
        "the 409 names the CLI process: {msg}"
    );
    let out = cli.wait_with_output().unwrap();
    let cli_text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(0), "{cli_text}");
    assert!(
        !cli_text.contains("waiting for another deploy"),
        "the refused API deploy never held the lock: {cli_text}"
    );
    eprintln!(
        "case 1 (CLI first, API refused) took {:.1}s",
        t.elapsed().as_secs_f64()
    );
    // Once the CLI is done, the same request deploys.
    let (status, lines) = finish(race.post_deploy(1));
    assert_eq!(status, 202, "{lines:?}");
    assert_serving_report(&lines, "the API deploy after the CLI");

    // 2. An API deploy holds the lock (it replaces the worker: V=2): a CLI deploy waits for it,
    // naming `iac serve`, and provisions only after the API's report.
    let t = Instant::now();
    let mut api = race.post_deploy(2);
    let mut reader = BufReader::new(api.stdout.take().unwrap());
    let mut api_lines = Vec::new();
    loop {
        let mut line = String::new();
        assert!(
            reader.read_line(&mut line).unwrap() > 0,
            "the API stream ended before provisioning: {api_lines:?}"
        );
        let v: serde_json::Value = serde_json::from_str(line.trim()).unwrap_or_default();
        api_lines.push(line.trim().to_string());
        if matches!(v["stage"].as_str(), Some("plan" | "provision" | "health")) {
            break;
        }
    }
    assert_eq!(
        pid_of(&std::fs::read_to_string(&lock).unwrap()),
        Some(serve_pid),
        "iac serve holds the lock now"
    );
    let cli = race
        .command(&["deploy", "--file", &race.repos_file(3), "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The rest of the API's stream; the instant its report arrives.
    for line in reader.lines() {
        let line = line.unwrap();
        if !line.trim().is_empty() {
            api_lines.push(line.trim().to_string());
        }
    }
    let api_done = Instant::now();
    let _ = api.wait();
    api_lines.retain(|l| !l.starts_with("status "));
    assert_serving_report(&api_lines, "the API deploy holding the lock");
    let out = cli.wait_with_output().unwrap();
    let cli_done = Instant::now();
    let cli_text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(0), "{cli_text}");
    let events: Vec<serde_json::Value> = cli_text
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let waited = events
        .iter()
        .find_map(|e| {
            e["message"]
                .as_str()
                .filter(|m| m.starts_with("waiting for another deploy"))
        })
        .unwrap_or_else(|| panic!("the CLI did not wait: {cli_text}"));
    assert!(
        waited.contains(&format!("held by pid {serve_pid} (iac serve")),
        "and names iac serve: {waited}"
    );
    assert!(
        cli_done > api_done,
        "the CLI finished after the API's report"
    );
    let report = events
        .iter()
        .rev()
        .find(|e| e.get("report").is_some())
        .map(|e| e["report"].clone())
        .unwrap_or_else(|| panic!("no report: {cli_text}"));
    for s in report["services"].as_array().unwrap() {
        assert_eq!(s["health"]["state"], "SERVING", "{s:#}");
    }
    // The CLI's worker (V=3) is what runs: its deploy came second.
    let env = e2e::docker(&[
        "inspect",
        "--format",
        "{{range .Config.Env}}{{println .}}{{end}}",
        &format!("{}-worker", race.p.name),
    ]);
    assert!(env.lines().any(|l| l == "V=3"), "{env}");
    eprintln!(
        "case 2 (API first, CLI waited) took {:.1}s",
        t.elapsed().as_secs_f64()
    );

    drop(serve);
    let out = race.command(&["destroy"]).output().unwrap();
    assert!(out.status.success(), "{out:?}");
}
