//! A Docker Swarm of several nodes on one machine, for the multi-node tests: the host's engine is
//! the manager (iac builds there, where the base images are) and worker nodes are containers of
//! `iac/swarm-node:bookworm` (`scripts/bootstrap-images.sh --swarm-node`: Debian's docker.io), each
//! with its own engine on a volume, on a labelled bridge network. A registry (the same image,
//! `registry` mode) runs on that network and is published on the host's `127.0.0.1:<port>`; every
//! worker forwards its own `127.0.0.1:<port>` to it, so an image named `127.0.0.1:<port>/…` is pushed
//! by the host and pulled by every node with no insecure-registry setting anywhere.
//!
//! The manager advertises on the bridge's gateway address (the workers reach it there and the
//! overlay's VXLAN runs over the bridge) and is drained, so every task runs on a worker and is
//! pulled from the registry. [`Nodes`] takes the lock every test using the host's swarm takes
//! ([`super::swarm_lock`]), requires the engine not to be in a swarm (one a killed test run left,
//! marked by an `iac.test` label on the manager, is left first), and on drop — also on panic,
//! also when start-up failed half way — leaves the swarm and removes every container, volume and
//! network it made (all labelled `iac.test=<id>`).

use std::fs::File;
use std::time::{Duration, Instant};

use super::{docker, docker_status};

/// The node image (`IAC_SWARM_NODE_IMAGE` overrides it).
pub fn node_image() -> String {
    std::env::var("IAC_SWARM_NODE_IMAGE").unwrap_or_else(|_| "iac/swarm-node:bookworm".into())
}

/// The options a node container runs with. Not `--privileged`: it asks for every capability the
/// kernel knows, and an engine lacking one in its own bounding set (this VM has no
/// CAP_SYS_RESOURCE) refuses with "unable to apply caps: operation not permitted"; the node's
/// entry point makes /sys and the cgroups writable itself.
pub const NODE_OPTIONS: &[&str] = &[
    "--init",
    "--cap-add",
    "ALL",
    "--cap-drop",
    "SYS_RESOURCE",
    "--security-opt",
    "seccomp=unconfined",
    "--security-opt",
    "apparmor=unconfined",
    "--security-opt",
    "systempaths=unconfined",
    "--device-cgroup-rule",
    "a *:* rwm",
];

/// One worker node.
#[derive(Debug, Clone)]
pub struct Worker {
    /// Its container's name (also its hostname and Swarm node name).
    pub name: String,
    /// Its address on the bridge network (where its published ports answer).
    pub ip: String,
    /// Its Swarm node id.
    pub node_id: String,
}

/// The swarm: the host as drained manager, `workers`, the registry. Dropping it tears it down.
pub struct Nodes {
    _lock: File,
    /// `iac.test=<id>` is on everything made here.
    pub id: String,
    pub network: String,
    /// The bridge's gateway: the manager's advertised address.
    pub gateway: String,
    /// `127.0.0.1:<port>`: the registry, as every node (host included) names it.
    pub registry: String,
    pub workers: Vec<Worker>,
    /// Seconds spent per start-up step, for the test's report.
    pub timings: Vec<(String, f64)>,
    inited: bool,
}

/// Polls `f` every half second until it returns `Some` or `timeout` passes.
pub fn wait_for<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if start.elapsed() > timeout {
            return None;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn must(args: &[&str]) -> String {
    let (ok, text) = docker_status(args);
    assert!(ok, "docker {}: {text}", args.join(" "));
    text.trim().to_string()
}

impl Nodes {
    /// Whether the node image is present (`scripts/bootstrap-images.sh --swarm-node` builds it).
    pub fn image_present() -> bool {
        docker_status(&["image", "inspect", &node_image()]).0
    }

    /// Brings up the registry, `workers` worker nodes and the swarm; panics (after cleaning up)
    /// when a step fails.
    pub fn start(id: &str, workers: usize) -> Nodes {
        let lock = super::swarm_lock();
        super::leave_leftover_test_swarm();
        let label = format!("iac.test={id}");
        let mut nodes = Nodes {
            _lock: lock,
            id: id.to_string(),
            network: format!("iac-mn-{id}"),
            gateway: String::new(),
            registry: String::new(),
            workers: Vec::new(),
            timings: Vec::new(),
            inited: false,
        };
        let state = docker(&["info", "--format", "{{.Swarm.LocalNodeState}}"]);
        assert_eq!(
            state.trim(),
            "inactive",
            "the engine is already in a swarm: a multi-node test needs to make its own (manager advertising on its bridge network); leave it first (docker swarm leave --force)"
        );
        let image = node_image();
        let t = Instant::now();
        must(&["network", "create", "--label", &label, &nodes.network]);
        nodes.gateway = must(&[
            "network",
            "inspect",
            "--format",
            "{{(index .IPAM.Config 0).Gateway}}",
            &nodes.network,
        ]);
        let registry = format!("{}-registry", nodes.network);
        must(&[
            "run",
            "-d",
            "--label",
            &label,
            "--name",
            &registry,
            "--network",
            &nodes.network,
            "-p",
            "127.0.0.1::5000",
            &image,
            "registry",
        ]);
        let published = must(&["port", &registry, "5000/tcp"]);
        let port = published
            .lines()
            .next()
            .and_then(|l| l.rsplit(':').next())
            .unwrap_or_else(|| panic!("docker port {registry}: {published:?}"))
            .to_string();
        nodes.registry = format!("127.0.0.1:{port}");
        let registry_ip = container_ip(&registry, &nodes.network);
        let forward = format!("IAC_NODE_FORWARD={port}={registry_ip}:5000");
        for n in 1..=workers {
            let name = format!("{}-w{n}", nodes.network);
            must(&["volume", "create", "--label", &label, &name]);
            let volume = format!("{name}:/var/lib/docker");
            let mut args = vec!["run", "-d", "--label", &label, "--name", &name];
            args.extend(["--hostname", &name, "--network", &nodes.network]);
            args.extend(NODE_OPTIONS);
            args.extend(["-v", &volume, "-e", &forward, &image]);
            must(&args);
            let ip = container_ip(&name, &nodes.network);
            nodes.workers.push(Worker {
                name,
                ip,
                node_id: String::new(),
            });
        }
        for w in &nodes.workers {
            let up = wait_for(Duration::from_secs(90), || {
                let (ok, _) = docker_status(&["exec", &w.name, "docker", "version"]);
                ok.then_some(())
            });
            if up.is_none() {
                let logs = docker_status(&["logs", "--tail", "30", &w.name]).1;
                panic!(
                    "{}: its engine did not answer within 90s; its log:\n{logs}",
                    w.name
                );
            }
        }
        nodes.step("engines up", t);
        // A registry that answers through the host's loopback (the pushes) and a worker's (the pulls).
        let t = Instant::now();
        let url = format!("http://{}/v2/", nodes.registry);
        let check = wait_for(Duration::from_secs(30), || {
            docker_status(&[
                "exec",
                &nodes.workers[0].name,
                "bash",
                "-c",
                &format!(
                    "exec 3<>/dev/tcp/127.0.0.1/{port} || exit 1; printf 'GET /v2/ HTTP/1.0\\r\\n\\r\\n' >&3; head -n1 <&3"
                ),
            ])
            .1
            .contains(" 200 ")
            .then_some(())
        });
        assert!(
            check.is_some(),
            "the registry does not answer {url} from {}",
            nodes.workers[0].name
        );
        let from_host = super::http_get(&nodes.registry, "/v2/").unwrap_or_default();
        assert!(
            from_host
                .lines()
                .next()
                .is_some_and(|l| l.contains(" 200 ")),
            "the registry does not answer {url} from the host: {from_host:?}"
        );
        nodes.step("registry", t);

        let t = Instant::now();
        let listen = format!("{}:2377", nodes.gateway);
        must(&[
            "swarm",
            "init",
            "--advertise-addr",
            &nodes.gateway,
            "--listen-addr",
            &listen,
        ]);
        nodes.inited = true;
        let manager = must(&["info", "--format", "{{.Swarm.NodeID}}"]);
        // The label marks the swarm as a test's, should this process die before it leaves.
        must(&[
            "node",
            "update",
            "--availability",
            "drain",
            "--label-add",
            &label,
            &manager,
        ]);
        let token = must(&["swarm", "join-token", "-q", "worker"]);
        for i in 0..nodes.workers.len() {
            let w = nodes.workers[i].clone();
            must(&[
                "exec",
                &w.name,
                "docker",
                "swarm",
                "join",
                "--token",
                &token,
                "--advertise-addr",
                &w.ip,
                &listen,
            ]);
            nodes.workers[i].node_id = must(&[
                "exec",
                &w.name,
                "docker",
                "info",
                "--format",
                "{{.Swarm.NodeID}}",
            ]);
        }
        let ready = wait_for(Duration::from_secs(60), || {
            let ready = nodes
                .workers
                .iter()
                .filter(|w| nodes.node_state(w) == "ready")
                .count();
            (ready == nodes.workers.len()).then_some(())
        });
        assert!(
            ready.is_some(),
            "the workers did not become ready: {}",
            docker(&["node", "ls"])
        );
        nodes.step("swarm formed", t);
        nodes
    }

    fn step(&mut self, what: &str, since: Instant) {
        self.timings
            .push((what.to_string(), since.elapsed().as_secs_f64()));
    }

    /// The Swarm's view of a worker (`ready`, `down`, …).
    pub fn node_state(&self, w: &Worker) -> String {
        docker(&[
            "node",
            "inspect",
            "--format",
            "{{.Status.State}}",
            &w.node_id,
        ])
        .trim()
        .to_string()
    }

    /// `docker ARGS` on a worker's own engine: success and output.
    pub fn on(&self, w: &Worker, args: &[&str]) -> (bool, String) {
        let mut all = vec!["exec", &w.name, "docker"];
        all.extend(args);
        docker_status(&all)
    }

    /// Stops a worker's container (its engine and every task on it go with it).
    pub fn stop(&self, w: &Worker) {
        must(&["stop", "--time", "10", &w.name]);
    }

    /// The worker a Swarm node id belongs to.
    pub fn worker_of(&self, node_id: &str) -> Option<&Worker> {
        self.workers.iter().find(|w| w.node_id == node_id)
    }
}

fn container_ip(container: &str, network: &str) -> String {
    must(&[
        "inspect",
        "--format",
        &format!("{{{{(index .NetworkSettings.Networks \"{network}\").IPAddress}}}}"),
        container,
    ])
}

impl Drop for Nodes {
    fn drop(&mut self) {
        if self.inited {
            let (ok, text) = docker_status(&["swarm", "leave", "--force"]);
            if !ok {
                eprintln!("docker swarm leave --force: {text}");
            }
        }
        let filter = format!("label=iac.test={}", self.id);
        for id in docker(&["ps", "-aq", "--filter", &filter]).split_whitespace() {
            docker_status(&["rm", "-f", "-v", id]);
        }
        for v in docker(&["volume", "ls", "-q", "--filter", &filter]).split_whitespace() {
            docker_status(&["volume", "rm", v]);
        }
        for n in docker(&["network", "ls", "-q", "--filter", &filter]).split_whitespace() {
            docker_status(&["network", "rm", n]);
        }
        if self.inited {
            // `swarm init` made it; refused (kept) while another container still uses it.
            docker_status(&["network", "rm", "docker_gwbridge"]);
        }
    }
}
