//! Killed deploys leave nothing half-done: `iac deploy` stopped dead — at every step by a
//! fault point (`IAC_TEST_FAULT_POINT`, see `iac-core/src/fault.rs`), then by real SIGKILLs at
//! random moments — and run again converges every time:
//!
//! * the second deploy exits 0 and every service is SERVING;
//! * exactly one pod per service (two containers with the canonical names, nothing else with the
//!   project's label), one network;
//! * no staging or work directory left under the state directory;
//! * no stale lock (the second deploy never waits for another);
//! * the state files parse (each is written whole or not at all).
//!
//! Two fixture services (`hello`, a web app, and `worker`), deployed by `git+file://` slug; a new
//! pids limit (`IAC_DOCKER__LIMITS__APP_PIDS`, part of every pod's spec, not of its image) makes
//! every deploy replace both pods without a rebuild, and "create" rounds start from a destroyed
//! project. Everything is removed by label on drop.

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

mod e2e;
use e2e::{HELLO, Project, docker, fixture, json_of, static_agent};

const WORKER: &str = r#"
import signal, sys, time
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
while True:
    time.sleep(1)
"#;

/// The test's project and its two fixture repos.
struct Killed {
    p: Project,
    hello: std::path::PathBuf,
    worker: std::path::PathBuf,
    /// The pods' version: their pids limit is 500 + this.
    version: std::cell::Cell<u32>,
}

impl std::ops::Deref for Killed {
    type Target = Project;
    fn deref(&self) -> &Project {
        &self.p
    }
}

impl Killed {
    /// A fresh project with the `hello` and `worker` fixture repos, at version 1.
    fn new() -> Killed {
        let project = Project::new();
        let repos = project.workdir.path().join("repos");
        Killed {
            hello: fixture(&repos, "hello", &[("main.py", HELLO)]),
            worker: fixture(&repos, "worker", &[("main.py", WORKER)]),
            p: project,
            version: std::cell::Cell::new(1),
        }
    }

    fn file(&self) -> String {
        self.workdir
            .path()
            .join("repos.yaml")
            .to_string_lossy()
            .into_owned()
    }

    /// Writes the repos file, and makes the next deploys want pods of `version`.
    fn version(&self, version: u32) {
        self.version.set(version);
        std::fs::write(
            self.file(),
            format!(
                "- slug: git+file://{}#main\n  expose: true\n- git+file://{}#main\n",
                self.hello.display(),
                self.worker.display()
            ),
        )
        .unwrap();
    }

    fn pids(&self) -> String {
        (500 + self.version.get()).to_string()
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_iac"));
        cmd.env("IAC_IMAGES__AGENT_BINARY", agent())
            .args(args)
            .args(["--project", &self.name])
            .current_dir(self.workdir.path())
            .env("IAC_STATE_DIR", self.workdir.path().join(".iac"))
            .env("IAC_PKI__SECRETS_DIR", self.workdir.path().join("secrets"))
            .env("IAC_DOCKER__LIMITS__APP_PIDS", self.pids())
            .env("RUST_LOG", "warn");
        cmd
    }

    /// Every container of the project and the last lines of its log, on stderr (for a failure).
    fn dump(&self) {
        let list = docker(&[
            "ps",
            "-a",
            "--filter",
            &format!("label=iac.project={}", self.name),
            "--format",
            "{{.Names}} {{.ID}} {{.Status}}",
        ]);
        eprintln!("--- containers\n{list}");
        for line in list.lines() {
            let name = line.split(' ').next().unwrap_or_default();
            let out = Command::new("docker")
                .args(["logs", "--tail", "30", name])
                .output()
                .unwrap();
            eprintln!(
                "--- docker logs {name}\n{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }

    fn iac(&self, args: &[&str]) -> Output {
        self.p
            .iac_env(args, &[("IAC_DOCKER__LIMITS__APP_PIDS", &self.pids())])
    }

    /// The deploy that must converge, and every check of "converged".
    fn converges(&self, after: &str) {
        let t = Instant::now();
        let out = self.iac(&["deploy", "--file", &self.file(), "--json"]);
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let report = json_of(&out)["report"].clone();
        if out.status.code() != Some(0) {
            self.dump();
        }
        assert_eq!(out.status.code(), Some(0), "after {after}: {report:#}");
        for s in report["services"].as_array().unwrap() {
            assert_eq!(s["health"]["state"], "SERVING", "after {after}: {s:#}");
        }
        assert!(
            !stdout.contains("waiting for another deploy"),
            "after {after}: a stale lock: {stdout}"
        );
        let mut names: Vec<String> = docker(&[
            "ps",
            "-a",
            "--filter",
            &format!("label=iac.project={}", self.name),
            "--format",
            "{{.Names}} {{.State}}",
        ])
        .lines()
        .map(str::to_string)
        .collect();
        names.sort();
        let n = &self.name;
        assert_eq!(
            names,
            [
                format!("{n}-hello running"),
                format!("{n}-hello-envoy running"),
                format!("{n}-worker running"),
                format!("{n}-worker-envoy running"),
                format!("{n}_iac-keeper running"),
            ],
            "after {after}: exactly one pod per service, and the project keeper"
        );
        let nets = docker(&[
            "network",
            "ls",
            "--filter",
            &format!("label=iac.project={}", self.name),
            "-q",
        ]);
        assert_eq!(nets.lines().count(), 1, "after {after}: {nets}");
        let leftovers = temp_leftovers(&self.workdir.path().join(".iac"));
        assert!(leftovers.is_empty(), "after {after}: {leftovers:?}");
        let state = self
            .workdir
            .path()
            .join(".iac/projects")
            .join(&self.name)
            .join("last-deploy.json");
        let text = std::fs::read_to_string(&state).unwrap();
        serde_json::from_str::<serde_json::Value>(&text)
            .unwrap_or_else(|e| panic!("after {after}: {} is not whole: {e}", state.display()));
        eprintln!(
            "converged after {after} in {:.1}s",
            t.elapsed().as_secs_f64()
        );
    }
}

fn agent() -> &'static str {
    static AGENT: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    AGENT.get_or_init(static_agent)
}

/// Staging and work directories (and their owners' lock files) anywhere under `state`: the
/// fetch cache's `tmp/` and the wheel cache's `.<key>.tmp-*` entries.
fn temp_leftovers(state: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![state.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let path = e.path();
            let name = e.file_name().to_string_lossy().into_owned();
            let in_tmp = dir.file_name().is_some_and(|d| d == "tmp");
            if in_tmp || name.contains(".tmp-") {
                found.push(path);
            } else if path.is_dir() && !name.starts_with("commit-") && !name.starts_with("archive-")
            {
                stack.push(path);
            }
        }
    }
    found
}

/// A deterministic pseudo-random sequence (xorshift), seeded from the clock and printed, so a
/// failing run can be told apart from the next.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
}

#[test]
fn a_killed_deploy_converges_on_the_next_one() {
    if e2e::skip_without_docker("a_killed_deploy_converges_on_the_next_one") {
        return;
    }
    let p = Killed::new();
    let mut version = 1;
    p.version(version);
    p.converges("the first deploy");

    // Every step, deterministically (IAC_TEST_KILL_ROUNDS=N only runs N random rounds).
    let only_random = std::env::var_os("IAC_TEST_KILL_ROUNDS").is_some();
    for point in iac_core::fault::POINTS.iter().filter(|_| !only_random) {
        let replaces = point.starts_with("replace-");
        if replaces {
            version += 1;
            p.version(version);
        } else {
            assert!(p.iac(&["destroy"]).status.success());
        }
        let out = p
            .command(&["deploy", "--file", &p.file(), "--json"])
            .env(iac_core::fault::FAULT_ENV, point)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.code().is_none() && stderr.contains(&format!("fault point {point}")),
            "the deploy stopped dead at {point}: {:?} {stderr}",
            out.status
        );
        p.converges(&format!("a deploy killed at {point}"));
    }

    // Real SIGKILLs at random moments.
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    eprintln!("random kills: seed {seed}");
    let mut rng = Rng(seed);
    let rounds: u32 = std::env::var("IAC_TEST_KILL_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(20);
    for round in 0..rounds {
        if round % 4 == 3 {
            assert!(p.iac(&["destroy"]).status.success());
        } else {
            version += 1;
            p.version(version);
        }
        // A replacing deploy takes 2–3 s here: most kills land inside it.
        let delay = Duration::from_millis(rng.next() % 2500);
        let mut child = p
            .command(&["deploy", "--file", &p.file(), "--json"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(delay);
        let _ = child.kill();
        let status = child.wait().unwrap();
        p.converges(&format!(
            "round {round}: SIGKILL after {} ms ({status})",
            delay.as_millis()
        ));
    }

    assert!(p.iac(&["destroy"]).status.success());
}

/// The history of a deploy killed with SIGKILL: `running` while its process lives (a live run
/// is never marked), `interrupted` (with the reason) once it is dead, both by `iac history` and
/// by the next deploy, which converges and is recorded `succeeded`.
#[test]
fn a_killed_deploy_is_interrupted_in_the_history() {
    if e2e::skip_without_docker("a_killed_deploy_is_interrupted_in_the_history") {
        return;
    }
    let p = Killed::new();
    p.version(1);
    let history = |p: &Killed| -> Vec<serde_json::Value> {
        let out = p.iac(&["history", "--json"]);
        assert!(out.status.success(), "{out:?}");
        let page: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        page["items"].as_array().unwrap().clone()
    };
    let mut child = p
        .command(&["deploy", "--file", &p.file(), "--json"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Its record appears as soon as it starts (before fetch and build); while the process
    // lives, reading the history leaves it running.
    let t = Instant::now();
    let id = loop {
        if let Some(r) = history(&p).first() {
            assert_eq!(r["status"], "running", "{r:#}");
            break r["id"].as_str().unwrap().to_string();
        }
        assert!(t.elapsed() < Duration::from_secs(60), "no record appeared");
        std::thread::sleep(Duration::from_millis(100));
    };
    let items = history(&p);
    assert_eq!(items[0]["status"], "running", "alive: {:#}", items[0]);
    assert_eq!(child.try_wait().unwrap(), None, "the deploy still runs");
    let pid = child.id();
    child.kill().unwrap(); // SIGKILL
    let status = child.wait().unwrap();
    assert!(status.code().is_none(), "{status}");

    let t = Instant::now();
    let items = history(&p);
    eprintln!(
        "interrupted on the first read after the kill, in {:.2}s",
        t.elapsed().as_secs_f64()
    );
    assert_eq!(items.len(), 1);
    assert_eq!(items[0]["id"], id.as_str());
    assert_eq!(items[0]["status"], "interrupted", "{:#}", items[0]);
    assert!(items[0]["finished_at"].is_string());
    let out = p.iac(&["history", "show", &id, "--json"]);
    let entry: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(entry["error_code"], "interrupted");
    let err = entry["error"].as_str().unwrap();
    assert!(
        err.contains(&format!("pid {pid} on")) && err.contains("is gone"),
        "{err}"
    );
    let text = String::from_utf8(p.iac(&["history"]).stdout).unwrap();
    assert!(text.contains("interrupted"), "{text}");

    // The next deploy converges and is recorded as itself.
    p.converges("a SIGKILLed deploy");
    let items = history(&p);
    assert_eq!(items.len(), 2);
    assert_eq!(items[0]["status"], "succeeded", "{:#}", items[0]);
    assert_eq!(items[1]["status"], "interrupted");
    assert!(p.iac(&["destroy"]).status.success());
}
