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
//! Skipped (with a line saying so) when there is no engine or no node image; with
//! `IAC_REQUIRE_DOCKER` set a missing node image fails instead.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

mod e2e;
use e2e::nodes::{Nodes, wait_for};
use e2e::{docker, docker_status, http_get};

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

#[test]
fn two_workers_serve_across_nodes_and_reschedule() {
    if !docker_status(&["info"]).0 {
        assert!(
            std::env::var_os("IAC_REQUIRE_DOCKER").is_none(),
            "IAC_REQUIRE_DOCKER is set but Docker is unreachable"
        );
        eprintln!("SKIPPED two_workers_serve_across_nodes_and_reschedule: no Docker engine");
        return;
    }
    if !Nodes::image_present() {
        assert!(
            std::env::var_os("IAC_REQUIRE_DOCKER").is_none(),
            "IAC_REQUIRE_DOCKER is set but the node image {} is missing: run scripts/bootstrap-images.sh --swarm-node",
            e2e::nodes::node_image()
        );
        eprintln!(
            "SKIPPED two_workers_serve_across_nodes_and_reschedule: no {} (scripts/bootstrap-images.sh --swarm-node)",
            e2e::nodes::node_image()
        );
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
        let b = body(&addr).unwrap_or_else(|| panic!("no answer from {addr} ({})", w.name));
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
    let (ok, probe) = nodes.on(w1, &["exec", &ctr, "python3", "-c", PROBE, &svc]);
    assert!(ok, "probe from {}: {probe}", w1.name);
    let (ips, bodies) = probe.trim().split_once('|').expect("ADDRESSES|BODIES");
    assert_eq!(
        ips.split(',').count(),
        2,
        "tasks.{svc} resolves to both tasks: {probe}"
    );
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
