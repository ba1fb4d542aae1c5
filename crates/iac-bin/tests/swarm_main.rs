//! hello-main on Docker Swarm, end to end with the real `iac` binary (`--provisioner swarm`), the
//! real engine as a single-node swarm, real Envoy (supervised by the agent inside each task) and
//! real mTLS. Fixture repos are made on the fly and deployed by `git+file://` slug:
//!
//! 1. `hello` and `scripted` deploy as Swarm services and are SERVING over mTLS through each
//!    task's published port; `iac health` agrees;
//! 2. `iac logs` shows hello's output (tasks found through the Swarm API);
//! 3. a redeploy with no change leaves every service version unchanged;
//! 4. a change to `scripted` rolls it over (health-gated, start-first); hello is untouched;
//! 5. a broken `hello` (exits 1) is rolled back by Swarm and reported so; the old one serves on;
//! 6. `iac destroy` leaves no service, network, config or secret with the project label.
//!
//! The swarm: `docker swarm init --advertise-addr 127.0.0.1` only when the engine is not in one,
//! and `docker swarm leave --force` at the end whatever happens (a Drop guard, also on panic);
//! tests that touch the swarm are serialised across processes by a lock file. Everything the test
//! creates carries its project label and is removed by it.

use std::fs::File;
use std::process::Output;
use std::time::Instant;

mod e2e;
use e2e::{HELLO, SCRIPTED_CLI, docker, docker_status, fixture, git, json_of, remove_labelled};

/// A single-node swarm for the duration of the test: joined (init) when the engine was in none,
/// always left on drop. Holds an exclusive lock on a file so two test processes never share it.
struct SwarmGuard {
    _lock: File,
    /// This test joined the swarm (so the `docker_gwbridge` network it made is ours to remove).
    inited: bool,
}

impl SwarmGuard {
    fn start() -> SwarmGuard {
        let lock = e2e::swarm_lock();
        let mut guard = SwarmGuard {
            _lock: lock,
            inited: false,
        };
        let state = docker(&["info", "--format", "{{.Swarm.LocalNodeState}}"]);
        if state.trim() == "inactive" {
            guard.inited = true;
            let (ok, text) = docker_status(&["swarm", "init", "--advertise-addr", "127.0.0.1"]);
            assert!(ok, "docker swarm init: {text}");
        }
        guard
    }
}

impl Drop for SwarmGuard {
    fn drop(&mut self) {
        let (ok, text) = docker_status(&["swarm", "leave", "--force"]);
        if !ok {
            eprintln!("docker swarm leave --force: {text}");
        }
        if self.inited {
            // `swarm init` created it; leaving keeps it. Refused (kept) while a container uses it.
            docker_status(&["network", "rm", "docker_gwbridge"]);
        }
    }
}

struct Project {
    name: String,
    workdir: tempfile::TempDir,
}

impl Drop for Project {
    fn drop(&mut self) {
        let label = format!("label=iac.project={}", self.name);
        for kind in ["service", "config", "secret"] {
            let ids = docker(&[kind, "ls", "-q", "--filter", &label]);
            for id in ids.split_whitespace() {
                docker_status(&[kind, "rm", id]);
            }
        }
        remove_labelled(&format!("iac.project={}", self.name));
    }
}

impl Project {
    fn iac(&self, args: &[&str]) -> Output {
        e2e::iac(
            self.workdir.path(),
            &self.name,
            args,
            &["--provisioner", "swarm"],
            &[
                ("IAC_SWARM__UPDATE_MONITOR", "3s"),
                ("IAC_SWARM__CONVERGE_DEADLINE", "120s"),
            ],
        )
    }

    /// Service name → its Swarm version index.
    fn versions(&self) -> Vec<(String, String)> {
        let out = docker(&[
            "service",
            "ls",
            "--filter",
            &format!("label=iac.project={}", self.name),
            "--format",
            "{{.Name}}",
        ]);
        let mut v: Vec<(String, String)> = out
            .split_whitespace()
            .map(|name| {
                let index = docker(&["service", "inspect", "--format", "{{.Version.Index}}", name]);
                (name.to_string(), index.trim().to_string())
            })
            .collect();
        v.sort();
        v
    }

    fn left(&self, kind: &[&str]) -> String {
        let label = format!("label=iac.project={}", self.name);
        let mut args = kind.to_vec();
        args.extend(["-q", "--filter", &label]);
        docker(&args).trim().to_string()
    }
}

fn service(report: &serde_json::Value, name: &str) -> serde_json::Value {
    report["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["service"] == name)
        .unwrap_or_else(|| panic!("no {name} in {report:#}"))
        .clone()
}

fn health_of(project: &Project) -> std::collections::BTreeMap<String, String> {
    let health = project.iac(&["health", "--json"]);
    json_of(&health)["services"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["running"]["service"].as_str().unwrap().to_string(),
                s["health"]["state"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[test]
fn hello_main_on_a_single_node_swarm() {
    if !docker_status(&["info"]).0 {
        assert!(
            std::env::var_os("IAC_REQUIRE_DOCKER").is_none(),
            "IAC_REQUIRE_DOCKER is set but Docker is unreachable"
        );
        eprintln!("SKIPPED hello_main_on_a_single_node_swarm: no Docker engine");
        return;
    }
    let started = Instant::now();
    // Dropped in reverse order: the project's objects go first, then the swarm is left.
    let _swarm = SwarmGuard::start();
    let project = Project {
        name: format!("s{}", &uuid::Uuid::new_v4().simple().to_string()[..10]),
        workdir: tempfile::tempdir().unwrap(),
    };
    let repos = project.workdir.path().join("repos");
    let hello = fixture(&repos, "hello", &[("main.py", HELLO)]);
    let scripted = fixture(
        &repos,
        "scripted",
        &[
            (
                "pyproject.toml",
                "[project]\nname = \"scripted\"\nversion = \"0.1.0\"\n\n[project.scripts]\nscripted = \"scripted.cli:main\"\n\n[build-system]\nrequires = [\"setuptools>=61\"]\nbuild-backend = \"setuptools.build_meta\"\n",
            ),
            ("scripted/__init__.py", ""),
            ("scripted/cli.py", &SCRIPTED_CLI.replace("VERSION", "v1")),
        ],
    );
    let file = project.workdir.path().join("repos.yaml");
    std::fs::write(
        &file,
        format!(
            "- git+file://{}#main\n- slug: git+file://{}#main\n  replicas: 2\n",
            hello.display(),
            scripted.display(),
        ),
    )
    .unwrap();
    let file = file.to_str().unwrap();

    // 1. deploy: both SERVING over mTLS through their tasks' published ports.
    let out = project.iac(&["deploy", "--file", file, "--json"]);
    assert_eq!(out.status.code(), Some(0), "first deploy");
    let report = json_of(&out)["report"].clone();
    for name in ["hello", "scripted"] {
        let s = service(&report, name);
        assert_eq!(s["health"]["state"], "SERVING", "{name}: {s:#}");
        assert_eq!(s["action"], "create", "{name}: {s:#}");
    }
    let h = health_of(&project);
    assert_eq!(h["hello"], "SERVING");
    assert_eq!(h["scripted"], "SERVING");
    let tasks = docker(&[
        "service",
        "ps",
        "-q",
        "--filter",
        "desired-state=running",
        &format!("{}-scripted", project.name),
    ]);
    assert_eq!(tasks.split_whitespace().count(), 2, "replicas: 2");
    let net = docker(&[
        "network",
        "inspect",
        "--format",
        "{{.Driver}} {{.Attachable}} {{index .Labels \"iac.managed-by\"}}",
        &format!("iacnet-{}", project.name),
    ]);
    assert_eq!(net.trim(), "overlay true iac");
    assert!(
        !project.left(&["secret", "ls"]).is_empty(),
        "certificates as secrets"
    );
    assert!(
        !project.left(&["config", "ls"]).is_empty(),
        "envoy.yaml as configs"
    );

    // 2. logs through the agent's StreamLogs, over mTLS, the task found through the Swarm API.
    let logs = project.iac(&["logs", "--service", "hello", "--tail", "50"]);
    assert!(logs.status.success());
    assert!(String::from_utf8_lossy(&logs.stdout).contains("hello-main says hi"));

    // 3. a no-op redeploy updates nothing.
    let before = project.versions();
    assert_eq!(before.len(), 2, "{before:?}");
    let out = project.iac(&["deploy", "--file", file, "--json"]);
    assert_eq!(out.status.code(), Some(0));
    let report = json_of(&out)["report"].clone();
    assert_eq!(service(&report, "hello")["action"], "unchanged");
    assert_eq!(
        project.versions(),
        before,
        "no change → same service versions"
    );

    // 4. change scripted: it rolls over, hello is untouched.
    std::fs::write(
        scripted.join("scripted/cli.py"),
        SCRIPTED_CLI.replace("VERSION", "v2"),
    )
    .unwrap();
    git(&scripted, &["commit", "-qam", "v2"]);
    let out = project.iac(&["deploy", "--file", file, "--json"]);
    assert_eq!(out.status.code(), Some(0));
    let report = json_of(&out)["report"].clone();
    assert_eq!(service(&report, "scripted")["action"], "replace");
    assert_eq!(service(&report, "scripted")["health"]["state"], "SERVING");
    let after = project.versions();
    assert_eq!(after[0], before[0], "hello untouched");
    assert_ne!(after[1], before[1], "scripted updated");
    let logs = project.iac(&["logs", "--service", "scripted", "--tail", "20"]);
    assert!(String::from_utf8_lossy(&logs.stdout).contains("scripted v2"));

    // 5. a broken hello: Swarm rolls it back, iac says so, the old one still serves.
    std::fs::write(
        hello.join("main.py"),
        "import sys\nprint('broken hello', flush=True)\nsys.exit(1)\n",
    )
    .unwrap();
    git(&hello, &["commit", "-qam", "broken"]);
    let out = project.iac(&["deploy", "--file", file, "--json"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "a rolled-back service fails the deploy"
    );
    let report = json_of(&out)["report"].clone();
    let h = service(&report, "hello");
    assert_eq!(h["action"], "rolled_back", "{h:#}");
    assert!(
        h["error"]
            .as_str()
            .unwrap_or_default()
            .contains("rolled back"),
        "{h:#}"
    );
    assert_eq!(service(&report, "scripted")["action"], "unchanged");
    assert_eq!(
        health_of(&project)["hello"],
        "SERVING",
        "the old hello serves on"
    );
    let logs = project.iac(&["logs", "--service", "hello", "--tail", "50"]);
    assert!(String::from_utf8_lossy(&logs.stdout).contains("hello-main says hi"));

    // 6. destroy leaves nothing with the project label; a second destroy is a no-op.
    assert!(project.iac(&["destroy"]).status.success());
    for kind in [
        &["service", "ls"][..],
        &["config", "ls"],
        &["secret", "ls"],
        &["network", "ls"],
        &["ps", "-a"],
    ] {
        assert!(project.left(kind).is_empty(), "{kind:?} left");
    }
    assert!(project.iac(&["destroy"]).status.success());
    eprintln!("swarm end to end took {:?}", started.elapsed());
}
