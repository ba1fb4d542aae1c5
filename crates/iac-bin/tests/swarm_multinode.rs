//! Docker Swarm with several nodes, for real, on one machine (tests/e2e/nodes.rs): the host's
//! engine as a drained manager, two worker nodes that are containers running Debian's `docker.io`
//! (`scripts/bootstrap-images.sh --swarm-node`), and a registry every node pulls from.
//!
//! `two_workers_serve_across_nodes_and_reschedule` checks the platform itself with the docker CLI,
//! the way iac's swarm provisioner uses it: an image pushed by the host and pulled by both workers,
//! an attachable overlay network spanning them, a `dnsrr` service whose two tasks land on two nodes
//! and reach each other by name, each task's host-mode published port answering on its worker's
//! address from the host, and — one worker stopped — both tasks running and answering on the other.
//!
//! `hello_and_scripted_on_two_nodes_survive_one_stopping` is iac's swarm provisioner on it
//! (`--provisioner swarm`, `[swarm] registry` the test's registry): `hello` (2 replicas, one per
//! worker) and `scripted` deploy, their pod images pushed by the host and pulled by the workers,
//! and are SERVING over mTLS through each task's port on its worker's address (the manager is
//! drained, so nothing answers on 127.0.0.1); the worker running `scripted` stops, Swarm
//! reschedules it on the other, and `iac health` reports both SERVING again; `iac destroy` then
//! leaves nothing with the project label.
//!
//! Skipped (with a line saying so) when there is no engine or no node image; with
//! `IAC_REQUIRE_DOCKER` set a missing node image fails instead.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

mod e2e;
use e2e::nodes::{Nodes, wait_for};
use e2e::{
    HELLO, docker, docker_status, fixture, http_get, json_of, remove_labelled, scripted_fixture,
};

/// A task: where it runs and the host port its 8080 is published on.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Task {
    node_id: String,
    port: String,
}

/// The running tasks of `service` (desired and actual state running, port published).
fn running_tasks(service: &str) -> Vec<Task> {
    let ids = docker(&[
        "service",
        "ps",
        "-q",
        "--filter",
        "desired-state=running",
        service,
    ]);
    let mut tasks: Vec<Task> = ids
        .split_whitespace()
        .filter_map(|id| {
            let out = docker(&[
                "inspect",
                "--format",
                "{{.Status.State}} {{.NodeID}} {{range .Status.PortStatus.Ports}}{{.PublishedPort}}{{end}}",
                id,
            ]);
            let mut f = out.split_whitespace();
            (f.next()? == "running").then_some(())?;
            Some(Task {
                node_id: f.next()?.to_string(),
                port: f.next()?.to_string(),
            })
        })
        .collect();
    tasks.sort();
    tasks
}

/// The body of `GET /` at `addr`, if it answered 200.
fn body(addr: &str) -> Option<String> {
    let resp = http_get(addr, "/")?;
    resp.lines()
        .next()
        .is_some_and(|l| l.contains(" 200 "))
        .then(|| {
            resp.split("\r\n\r\n")
                .nth(1)
                .unwrap_or_default()
                .to_string()
        })
}

/// Serves its container's hostname on 8080.
const SERVER: &str = "import http.server, socket\n\
class H(http.server.BaseHTTPRequestHandler):\n    \
def do_GET(self):\n        \
b = socket.gethostname().encode()\n        \
self.send_response(200); self.send_header('Content-Length', str(len(b))); self.end_headers(); self.wfile.write(b)\n\
http.server.ThreadingHTTPServer(('0.0.0.0', 8080), H).serve_forever()\n";

/// Run inside a task: resolves `tasks.SVC` and `SVC`, fetches `/` from every address; prints
/// `addresses|bodies` (sorted, comma-separated).
const PROBE: &str = "import socket, sys, urllib.request\n\
svc = sys.argv[1]\n\
ips = sorted({a[4][0] for a in socket.getaddrinfo('tasks.' + svc, 8080)})\n\
by_name = sorted({a[4][0] for a in socket.getaddrinfo(svc, 8080)})\n\
assert ips == by_name, (ips, by_name)\n\
bodies = sorted(urllib.request.urlopen('http://%s:8080/' % ip, timeout=5).read().decode() for ip in ips)\n\
print(','.join(ips) + '|' + ','.join(bodies))\n";

/// Whether the test can run here: an engine and the node image; with `IAC_REQUIRE_DOCKER` set a
/// missing one fails the test instead of skipping it.
fn runnable(test: &str) -> bool {
    let required = std::env::var_os("IAC_REQUIRE_DOCKER").is_some();
    if !docker_status(&["info"]).0 {
        assert!(
            !required,
            "IAC_REQUIRE_DOCKER is set but Docker is unreachable"
        );
        eprintln!("SKIPPED {test}: no Docker engine");
        return false;
    }
    if !Nodes::image_present() {
        let image = e2e::nodes::node_image();
        assert!(
            !required,
            "IAC_REQUIRE_DOCKER is set but the node image {image} is missing: run scripts/bootstrap-images.sh --swarm-node"
        );
        eprintln!("SKIPPED {test}: no {image} (scripts/bootstrap-images.sh --swarm-node)");
        return false;
    }
    true
}

#[test]
fn two_workers_serve_across_nodes_and_reschedule() {
    if !runnable("two_workers_serve_across_nodes_and_reschedule") {
        return;
    }
    let id = format!("m{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let started = Instant::now();
    let nodes = Nodes::start(&id, 2);
    let mut timings = nodes.timings.clone();

    // The host pushes; the workers pull (docker service create makes them).
    let t = Instant::now();
    let image = format!("{}/iac-test/python:{id}", nodes.registry);
    let base =
        std::env::var("IAC_PYTHON_IMAGE").unwrap_or_else(|_| "iac/python:3.11-bookworm".into());
    let (ok, text) = docker_status(&["tag", &base, &image]);
    assert!(ok, "docker tag {base} {image}: {text}");
    let (ok, text) = docker_status(&["push", &image]);
    docker_status(&["rmi", &image]);
    assert!(ok, "docker push {image}: {text}");
    timings.push(("push".into(), t.elapsed().as_secs_f64()));

    let net = format!("{id}-net");
    let (ok, text) = docker_status(&[
        "network",
        "create",
        "--driver",
        "overlay",
        "--attachable",
        "--label",
        &format!("iac.test={id}"),
        &net,
    ]);
    assert!(ok, "overlay network: {text}");
    let svc = format!("{id}-web");
    let t = Instant::now();
    let (ok, text) = docker_status(&[
        "service",
        "create",
        "--detach",
        "--name",
        &svc,
        "--label",
        &format!("iac.test={id}"),
        "--network",
        &net,
        "--endpoint-mode",
        "dnsrr",
        "--replicas",
        "2",
        "--publish",
        "mode=host,target=8080",
        &image,
        "python3",
        "-c",
        SERVER,
    ]);
    assert!(ok, "service create: {text}");
    // Removed before the swarm goes (Nodes' drop), also on failure.
    struct Service(String);
    impl Drop for Service {
        fn drop(&mut self) {
            docker_status(&["service", "rm", &self.0]);
        }
    }
    let _service = Service(svc.clone());
    let spread = wait_for(Duration::from_secs(180), || {
        let tasks = running_tasks(&svc);
        let on: BTreeSet<&str> = tasks.iter().map(|t| t.node_id.as_str()).collect();
        (tasks.len() == 2 && on.len() == 2).then_some(tasks)
    });
    let tasks = spread.unwrap_or_else(|| {
        panic!(
            "two tasks on two nodes within 180s; the service's tasks:\n{}",
            docker(&["service", "ps", "--no-trunc", &svc])
        )
    });
    timings.push((
        "two tasks running (pull included)".into(),
        t.elapsed().as_secs_f64(),
    ));

    // Each task answers from the host on its worker's address and its own published port.
    let mut hostnames = BTreeSet::new();
    for task in &tasks {
        let w = nodes
            .worker_of(&task.node_id)
            .expect("a task on a worker, the manager is drained");
        let addr = format!("{}:{}", w.ip, task.port);
        // Swarm says running once the process started; the server may still be importing.
        let b = wait_for(Duration::from_secs(30), || body(&addr))
            .unwrap_or_else(|| panic!("no answer from {addr} ({}) within 30s", w.name));
        hostnames.insert(b);
    }
    assert_eq!(
        hostnames.len(),
        2,
        "two tasks, two hostnames: {hostnames:?}"
    );

    // Across the overlay, by name: a task on the first worker sees both tasks and reaches them.
    let w1 = &nodes.workers[0];
    let (ok, ctr) = nodes.on(
        w1,
        &[
            "ps",
            "-q",
            "--filter",
            &format!("label=com.docker.swarm.service.name={svc}"),
        ],
    );
    assert!(ok, "{ctr}");
    let ctr = ctr.trim().to_string();
    assert!(!ctr.is_empty(), "no task container on {}", w1.name);
    // The overlay's DNS learns of a new task shortly after it starts: retried for a while.
    let mut last = String::new();
    let probe = wait_for(Duration::from_secs(30), || {
        let (ok, out) = nodes.on(w1, &["exec", &ctr, "python3", "-c", PROBE, &svc]);
        let both = ok
            && out
                .trim()
                .split_once('|')
                .is_some_and(|(ips, _)| ips.split(',').count() == 2);
        last = out.clone();
        both.then_some(out)
    })
    .unwrap_or_else(|| panic!("probe from {} within 30s: {last}", w1.name));
    // tasks.<svc> (and <svc>, dnsrr) resolved to both tasks' addresses; each answered with its name.
    let (_, bodies) = probe.trim().split_once('|').expect("ADDRESSES|BODIES");
    let seen: BTreeSet<String> = bodies.split(',').map(str::to_string).collect();
    assert_eq!(seen, hostnames, "both tasks answer over the overlay");

    // One worker stops: its task is rescheduled on the other, and both answer there.
    let gone = nodes.worker_of(&tasks[1].node_id).unwrap().clone();
    let stays = nodes
        .workers
        .iter()
        .find(|w| w.node_id != gone.node_id)
        .unwrap()
        .clone();
    let t = Instant::now();
    nodes.stop(&gone);
    let moved = wait_for(Duration::from_secs(180), || {
        let tasks = running_tasks(&svc);
        (tasks.len() == 2 && tasks.iter().all(|t| t.node_id == stays.node_id)).then_some(tasks)
    });
    let moved = moved.unwrap_or_else(|| {
        panic!(
            "both tasks on {} within 180s of stopping {} (node {}); the service's tasks:\n{}",
            stays.name,
            gone.name,
            nodes.node_state(&gone),
            docker(&["service", "ps", "--no-trunc", &svc])
        )
    });
    assert_eq!(nodes.node_state(&gone), "down");
    for task in &moved {
        let addr = format!("{}:{}", stays.ip, task.port);
        let answered = wait_for(Duration::from_secs(30), || body(&addr));
        assert!(
            answered.is_some(),
            "no answer from {addr} after the reschedule"
        );
    }
    timings.push((
        format!("rescheduled after stopping {}", gone.name),
        t.elapsed().as_secs_f64(),
    ));
    let report: Vec<String> = timings
        .iter()
        .map(|(w, s)| format!("{w} {s:.1}s"))
        .collect();
    eprintln!(
        "multi-node swarm: {} (total {:.1}s)",
        report.join(", "),
        started.elapsed().as_secs_f64()
    );
}

/// An iac project on the multi-node swarm; its services, configs, secrets, containers, networks and
/// images go on drop (before the swarm does).
struct Project {
    name: String,
    workdir: tempfile::TempDir,
    registry: String,
}

impl Drop for Project {
    fn drop(&mut self) {
        let label = format!("label=iac.project={}", self.name);
        for kind in ["service", "config", "secret"] {
            for id in docker(&[kind, "ls", "-q", "--filter", &label]).split_whitespace() {
                docker_status(&[kind, "rm", id]);
            }
        }
        remove_labelled(&format!("iac.project={}", self.name));
    }
}

impl Project {
    fn iac(&self, args: &[&str]) -> std::process::Output {
        e2e::iac(
            self.workdir.path(),
            &self.name,
            args,
            &["--provisioner", "swarm"],
            &[
                ("IAC_SWARM__REGISTRY", self.registry.as_str()),
                ("IAC_SWARM__UPDATE_MONITOR", "3s"),
                ("IAC_SWARM__CONVERGE_DEADLINE", "240s"),
            ],
        )
    }

    /// Service → health state, as `iac health --json` reports it.
    fn health(&self) -> std::collections::BTreeMap<String, String> {
        let out = self.iac(&["health", "--json"]);
        json_of(&out)["services"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|s| {
                        (
                            s["running"]["service"].as_str().unwrap_or("?").to_string(),
                            s["health"]["state"].as_str().unwrap_or("?").to_string(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// The Swarm node ids the running tasks of `service` are on.
fn task_nodes(service: &str) -> Vec<String> {
    let ids = docker(&[
        "service",
        "ps",
        "-q",
        "--filter",
        "desired-state=running",
        service,
    ]);
    let mut nodes: Vec<String> = ids
        .split_whitespace()
        .filter_map(|id| {
            let out = docker(&["inspect", "--format", "{{.Status.State}} {{.NodeID}}", id]);
            let (state, node) = out.trim().split_once(' ')?;
            (state == "running").then(|| node.to_string())
        })
        .collect();
    nodes.sort();
    nodes
}

#[test]
fn hello_and_scripted_on_two_nodes_survive_one_stopping() {
    if !runnable("hello_and_scripted_on_two_nodes_survive_one_stopping") {
        return;
    }
    let id = format!("m{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let started = Instant::now();
    let nodes = Nodes::start(&id, 2);
    let mut timings = nodes.timings.clone();
    let project = Project {
        name: format!("s{}", &uuid::Uuid::new_v4().simple().to_string()[..10]),
        workdir: tempfile::tempdir().unwrap(),
        registry: nodes.registry.clone(),
    };
    let repos = project.workdir.path().join("repos");
    let hello = fixture(&repos, "hello", &[("main.py", HELLO)]);
    let scripted = scripted_fixture(&repos, "scripted = \"scripted.cli:main\"");
    let file = project.workdir.path().join("repos.yaml");
    std::fs::write(
        &file,
        format!(
            "- slug: git+file://{}#main\n  replicas: 2\n- git+file://{}#main\n",
            hello.display(),
            scripted.display(),
        ),
    )
    .unwrap();

    // Deploy: built on the host, pushed, pulled by the workers, SERVING on the workers' addresses.
    let t = Instant::now();
    let out = project.iac(&["deploy", "--file", file.to_str().unwrap(), "--json"]);
    assert_eq!(out.status.code(), Some(0), "deploy");
    let report = json_of(&out)["report"].clone();
    for name in ["hello", "scripted"] {
        let s = report["services"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["service"] == name)
            .unwrap_or_else(|| panic!("no {name} in {report:#}"));
        assert_eq!(s["health"]["state"], "SERVING", "{name}: {s:#}");
    }
    timings.push(("deploy".into(), t.elapsed().as_secs_f64()));
    let hello_svc = format!("{}-hello", project.name);
    let scripted_svc = format!("{}-scripted", project.name);
    let on = task_nodes(&hello_svc);
    assert_eq!(on.len(), 2, "hello: 2 running tasks");
    assert_ne!(on[0], on[1], "hello's two tasks on two nodes");
    for n in on.iter().chain(&task_nodes(&scripted_svc)) {
        assert!(
            nodes.worker_of(n).is_some(),
            "a task on {n}, not a worker (the manager is drained)"
        );
    }
    let image = docker(&[
        "service",
        "inspect",
        "--format",
        "{{.Spec.TaskTemplate.ContainerSpec.Image}}",
        &scripted_svc,
    ]);
    assert!(
        image.starts_with(&format!("{}/", nodes.registry)) && image.contains("@sha256:"),
        "scripted runs from the registry, by digest: {image}"
    );
    let h = project.health();
    assert_eq!(h.get("hello").map(String::as_str), Some("SERVING"), "{h:?}");
    assert_eq!(
        h.get("scripted").map(String::as_str),
        Some("SERVING"),
        "{h:?}"
    );

    // The worker running scripted stops: scripted comes back on the other one, SERVING.
    let scripted_on = task_nodes(&scripted_svc);
    assert_eq!(scripted_on.len(), 1, "scripted: 1 running task");
    let gone = nodes.worker_of(&scripted_on[0]).unwrap().clone();
    let stays = nodes
        .workers
        .iter()
        .find(|w| w.node_id != gone.node_id)
        .unwrap()
        .clone();
    let t = Instant::now();
    nodes.stop(&gone);
    let back = wait_for(Duration::from_secs(240), || {
        let all_moved = [&hello_svc, &scripted_svc].iter().all(|s| {
            let on = task_nodes(s);
            !on.is_empty() && on.iter().all(|n| *n == stays.node_id)
        });
        if !all_moved {
            return None;
        }
        let h = project.health();
        (h.get("hello").map(String::as_str) == Some("SERVING")
            && h.get("scripted").map(String::as_str) == Some("SERVING"))
        .then_some(h)
    });
    assert!(
        back.is_some(),
        "hello and scripted SERVING on {} within 240s of stopping {} (node {}); tasks:\n{}\n{}",
        stays.name,
        gone.name,
        nodes.node_state(&gone),
        docker(&["service", "ps", "--no-trunc", &hello_svc]),
        docker(&["service", "ps", "--no-trunc", &scripted_svc])
    );
    assert_eq!(
        task_nodes(&hello_svc).len(),
        2,
        "hello keeps 2 replicas on the one worker left"
    );
    timings.push((
        format!("SERVING again after stopping {}", gone.name),
        t.elapsed().as_secs_f64(),
    ));
    let logs = project.iac(&["logs", "--service", "scripted", "--tail", "20"]);
    assert!(
        String::from_utf8_lossy(&logs.stdout).contains("scripted v1"),
        "iac logs reaches the rescheduled task"
    );

    assert!(project.iac(&["destroy"]).status.success());
    let label = format!("label=iac.project={}", project.name);
    for kind in [&["service", "ls"][..], &["config", "ls"], &["secret", "ls"]] {
        let mut args = kind.to_vec();
        args.extend(["-q", "--filter", &label]);
        assert!(docker(&args).trim().is_empty(), "{kind:?} left");
    }
    let report: Vec<String> = timings
        .iter()
        .map(|(w, s)| format!("{w} {s:.1}s"))
        .collect();
    eprintln!(
        "iac on a multi-node swarm: {} (total {:.1}s)",
        report.join(", "),
        started.elapsed().as_secs_f64()
    );
}
