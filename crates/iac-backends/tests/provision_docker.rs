//! The Docker provisioner against the real local engine. Needs the offline base image
//! `iac/python:3.11-bookworm` (`scripts/bootstrap-images.sh`); both containers of a pair run it
//! (`python3 -m http.server 15000` as the "app", `sleep infinity` as the "Envoy"), and a fake gate
//! answers SERVING / NOT_SERVING on demand after checking the new pair's published port really
//! accepts connections: this tests the provisioner, not the mesh.
//!
//! Every test uses its own random project and network, labels everything `iac.test=<id>`, and a
//! Drop guard removes all of it by label even when the test panics, so the tests run in parallel.
//!
//! The pod tests at the end run the real thing instead: the containers `plan()` specifies (its
//! sidecar command installing the packet filter, then a real Envoy from `iac/envoy:1.40.0`), the
//! real static `iac-agent` as the app's PID 1 dropping to `nobody`, and plain containers on the
//! project network (IPv4 + IPv6) attacking the pod. One of them has an edge: its published host
//! port answers from the host, while the edge port refuses the pod's peers.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bollard::Docker;
use bollard::query_parameters::{ListContainersOptionsBuilder, ListNetworksOptionsBuilder};
use iac_backends::provision::ContainerLimits;
use iac_backends::provision::docker::{DockerProvisioner, DockerProvisionerConfig};
use iac_core::plan::{POD_FILTER_TABLE, pod_filter_rules};
use iac_core::stack::{LABEL_MANAGED, LABEL_PROJECT, LABEL_ROLE, LABEL_SERVICE, LABEL_SPEC_HASH};
use iac_core::{
    Action, Applied, ContainerSpec, EdgeBind, EgressPolicy, Events, HealthProber, HealthReport,
    HealthState, Mount, NetworkMode, NetworkSpec, PortPublish, ProbeTarget, ProjectName,
    Provisioner, ServiceName, ServiceStack, Stack,
};

const IMAGE: &str = "iac/python:3.11-bookworm";
const LABEL_TEST: &str = "iac.test";

fn unique() -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    let mix = nanos
        ^ (u64::from(std::process::id()) << 32)
        ^ N.fetch_add(1, Ordering::Relaxed)
            .wrapping_mul(0x9e37_79b9_7f4a_7c15);
    format!("{:010x}", mix & 0xff_ffff_ffff)
}

/// Removes every container and network labelled with the test id, even on panic.
struct Guard {
    id: String,
}

impl Drop for Guard {
    fn drop(&mut self) {
        let filter = format!("label={LABEL_TEST}={}", self.id);
        let out = std::process::Command::new("docker")
            .args(["ps", "-aq", "--filter", &filter])
            .output();
        if let Ok(out) = out {
            let ids: Vec<String> = String::from_utf8_lossy(&out.stdout)
                .split_whitespace()
                .map(String::from)
                .collect();
            if !ids.is_empty() {
                let _ = std::process::Command::new("docker")
                    .args(["rm", "-f"])
                    .args(&ids)
                    .output();
            }
        }
        let out = std::process::Command::new("docker")
            .args(["network", "ls", "-q", "--filter", &filter])
            .output();
        if let Ok(out) = out {
            for id in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                let _ = std::process::Command::new("docker")
                    .args(["network", "rm", id])
                    .output();
            }
        }
        let out = std::process::Command::new("docker")
            .args(["images", "-q", "--filter", &filter])
            .output();
        if let Ok(out) = out {
            let ids: Vec<String> = String::from_utf8_lossy(&out.stdout)
                .split_whitespace()
                .map(String::from)
                .collect();
            if !ids.is_empty() {
                let _ = std::process::Command::new("docker")
                    .args(["rmi", "-f"])
                    .args(&ids)
                    .output();
            }
        }
    }
}

/// A stand-in gate: checks the target accepts TCP connections (the new pair is really up and
/// published), then says whatever the test wants.
struct FakeGate {
    serving: AtomicBool,
    calls: Mutex<Vec<ProbeTarget>>,
}

impl FakeGate {
    fn new(serving: bool) -> Arc<Self> {
        Arc::new(FakeGate {
            serving: AtomicBool::new(serving),
            calls: Mutex::new(Vec::new()),
        })
    }

    fn calls(&self) -> Vec<ProbeTarget> {
        self.calls.lock().unwrap().clone()
    }
}

#[async_trait]
impl HealthProber for FakeGate {
    async fn check(&self, target: &ProbeTarget) -> HealthReport {
        self.calls.lock().unwrap().push(target.clone());
        let reachable = http_get(target.addr, Duration::from_secs(10)).await.is_ok();
        let (state, detail) = match (reachable, self.serving.load(Ordering::SeqCst)) {
            (false, _) => (
                HealthState::Unreachable,
                format!("{} did not answer", target.addr),
            ),
            (true, true) => (HealthState::Serving, "fake gate: serving".to_string()),
            (true, false) => (
                HealthState::NotServing,
                "fake gate: told to fail".to_string(),
            ),
        };
        HealthReport::new(target.service.clone(), state, None, detail, 1)
    }
}

/// `GET /` against the python http.server behind `addr`, retried until `within`.
async fn http_get(addr: SocketAddr, within: Duration) -> Result<String, String> {
    let started = Instant::now();
    loop {
        let attempt = tokio::task::spawn_blocking(move || -> std::io::Result<String> {
            let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
            s.set_read_timeout(Some(Duration::from_secs(2)))?;
            s.write_all(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n")?;
            let mut buf = String::new();
            s.read_to_string(&mut buf)?;
            Ok(buf)
        })
        .await
        .unwrap();
        match attempt {
            Ok(body) if body.starts_with("HTTP/1.0 200") => return Ok(body),
            Ok(body) if started.elapsed() > within => {
                return Err(format!("{addr}: unexpected answer {body:.60}"));
            }
            Err(e) if started.elapsed() > within => return Err(format!("{addr}: {e}")),
            _ => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

struct Fixture {
    id: String,
    project: ProjectName,
    network: String,
    docker: Docker,
    provisioner: DockerProvisioner,
    envoy_config: PathBuf,
    _dir: tempfile::TempDir,
    _guard: Guard,
}

impl Fixture {
    async fn new() -> Fixture {
        let id = unique();
        let guard = Guard { id: id.clone() };
        let docker = Docker::connect_with_defaults()
            .unwrap()
            .negotiate_version()
            .await
            .unwrap();
        if docker.inspect_image(IMAGE).await.is_err() {
            panic!("image {IMAGE} is missing: run scripts/bootstrap-images.sh first");
        }
        let dir = tempfile::tempdir().unwrap();
        let envoy_config = dir.path().join("envoy.yaml");
        std::fs::write(
            &envoy_config,
            "# mounted read-only into the sidecar stand-in\n",
        )
        .unwrap();
        let config = DockerProvisionerConfig {
            health_deadline: Duration::from_secs(20),
            stop_timeout: Duration::from_secs(1),
            parallelism: 2,
            // These tests are about reconciling (and assert the specs' own hashes); the limits
            // have their own tests below.
            limits: ContainerLimits::unlimited(),
            ..Default::default()
        };
        let provisioner = DockerProvisioner::connect(config).await.unwrap();
        Fixture {
            project: ProjectName::new(&format!("t{id}")).unwrap(),
            network: format!("iac-t{id}"),
            id,
            docker,
            provisioner,
            envoy_config,
            _dir: dir,
            _guard: guard,
        }
    }

    fn labels(&self, svc: &str, role: &str, hash: &str) -> BTreeMap<String, String> {
        [
            (LABEL_PROJECT.to_string(), self.project.to_string()),
            (LABEL_SERVICE.to_string(), svc.to_string()),
            (LABEL_ROLE.to_string(), role.to_string()),
            (LABEL_SPEC_HASH.to_string(), hash.to_string()),
            (LABEL_TEST.to_string(), self.id.clone()),
        ]
        .into()
    }

    /// One service; `version` goes into the app's env and the spec hash.
    fn service(&self, svc: &str, version: &str) -> ServiceStack {
        let hash = format!("{svc}{version}");
        let app_name = format!("{}-{svc}", self.project);
        ServiceStack {
            service: ServiceName::new(svc).unwrap(),
            app: ContainerSpec {
                name: app_name.clone(),
                image: IMAGE.into(),
                cmd: ["python3", "-m", "http.server", "15000"]
                    .map(String::from)
                    .to_vec(),
                env: [("VERSION".to_string(), version.to_string())].into(),
                labels: self.labels(svc, "app", &hash),
                // The sidecar's namespace: its published 15000 reaches this server.
                network: NetworkMode::Container {
                    name: format!("{app_name}-envoy"),
                },
                mounts: vec![],
                ports: vec![],
                stop_timeout_secs: 1,
                privileges: Default::default(),
                limits: Default::default(),
                restart: Default::default(),
            },
            envoy: ContainerSpec {
                name: format!("{app_name}-envoy"),
                image: IMAGE.into(),
                cmd: ["sleep", "infinity"].map(String::from).to_vec(),
                env: BTreeMap::new(),
                labels: self.labels(svc, "envoy", &hash),
                network: NetworkMode::Network {
                    name: self.network.clone(),
                    aliases: vec![svc.to_string()],
                },
                mounts: vec![Mount {
                    source: self.envoy_config.clone(),
                    target: "/etc/envoy/envoy.yaml".into(),
                    read_only: true,
                }],
                ports: vec![PortPublish {
                    container_port: 15000,
                    host_ip: "127.0.0.1".into(),
                    host_port: None,
                }],
                stop_timeout_secs: 1,
                privileges: Default::default(),
                limits: Default::default(),
                restart: Default::default(),
            },
            spec_hash: hash,
            replicas: 1,
            pod_filter: None,
            egress: Default::default(),
        }
    }

    fn stack(&self, services: Vec<ServiceStack>, keep: &[&str]) -> Stack {
        Stack {
            project: self.project.clone(),
            network: NetworkSpec {
                name: self.network.clone(),
                labels: [
                    (LABEL_PROJECT.to_string(), self.project.to_string()),
                    (LABEL_ROLE.to_string(), "network".to_string()),
                    (LABEL_TEST.to_string(), self.id.clone()),
                ]
                .into(),
            },
            services,
            keep: keep.iter().map(|k| ServiceName::new(k).unwrap()).collect(),
            repair: Default::default(),
            sandbox: None,
        }
    }

    async fn apply(&self, stack: &Stack, gate: &Arc<FakeGate>) -> Applied {
        let gate: Arc<dyn HealthProber> = gate.clone();
        self.provisioner
            .apply(stack, gate, &Events::discard())
            .await
            .expect("apply")
    }

    /// name → (id, state, labels) of every container with the project label.
    async fn containers(&self) -> BTreeMap<String, (String, String, BTreeMap<String, String>)> {
        let filters = [(
            "label".to_string(),
            vec![format!("{LABEL_PROJECT}={}", self.project)],
        )]
        .into();
        let opts = ListContainersOptionsBuilder::default()
            .all(true)
            .filters(&filters)
            .build();
        self.docker
            .list_containers(Some(opts))
            .await
            .unwrap()
            .into_iter()
            .map(|c| {
                let name = c.names.unwrap()[0].trim_start_matches('/').to_string();
                (
                    name,
                    (
                        c.id.unwrap(),
                        c.state.map(|s| s.to_string()).unwrap_or_default(),
                        c.labels.unwrap_or_default().into_iter().collect(),
                    ),
                )
            })
            .collect()
    }

    async fn ids(&self) -> BTreeMap<String, String> {
        self.containers()
            .await
            .into_iter()
            .map(|(n, (id, _, _))| (n, id))
            .collect()
    }

    async fn networks(&self) -> Vec<String> {
        let filters = [(
            "label".to_string(),
            vec![format!("{LABEL_PROJECT}={}", self.project)],
        )]
        .into();
        let opts = ListNetworksOptionsBuilder::default()
            .filters(&filters)
            .build();
        self.docker
            .list_networks(Some(opts))
            .await
            .unwrap()
            .into_iter()
            .filter_map(|n| n.name)
            .collect()
    }

    /// The aliases a container (a sidecar: the pod's namespace) answers to on the project network.
    async fn aliases(&self, container: &str) -> Vec<String> {
        let c = self
            .docker
            .inspect_container(container, None)
            .await
            .unwrap();
        let nets = c.network_settings.unwrap().networks.unwrap();
        nets.get(&self.network)
            .and_then(|e| e.aliases.clone())
            .unwrap_or_default()
    }

    fn name(&self, svc: &str) -> String {
        format!("{}-{svc}", self.project)
    }
}

fn action_of(applied: &Applied, svc: &str) -> (Action, Option<SocketAddr>) {
    let a = applied
        .services
        .iter()
        .find(|a| a.service.as_str() == svc)
        .unwrap_or_else(|| panic!("{svc} not reported: {applied:?}"));
    assert_eq!(a.error, None, "{svc}: {applied:?}");
    (a.action, a.endpoint)
}

fn assert_loopback(ep: Option<SocketAddr>) -> SocketAddr {
    let ep = ep.expect("an endpoint");
    assert_eq!(ep.ip().to_string(), "127.0.0.1");
    assert_ne!(ep.port(), 0);
    ep
}

#[tokio::test]
async fn create_reapply_untouched_then_destroy_twice() {
    let f = Fixture::new().await;
    let gate = FakeGate::new(true);
    let stack = f.stack(vec![f.service("web", "1"), f.service("api", "1")], &[]);

    let diff = f.provisioner.diff(&stack).await.unwrap();
    assert!(diff.iter().all(|c| c.action == Action::Create), "{diff:?}");

    let applied = f.apply(&stack, &gate).await;
    for svc in ["web", "api"] {
        let (action, ep) = action_of(&applied, svc);
        assert_eq!(action, Action::Create);
        let ep = assert_loopback(ep);
        http_get(ep, Duration::from_secs(15)).await.unwrap();
    }
    assert!(
        gate.calls().is_empty(),
        "creations are not gated by the provisioner"
    );

    let containers = f.containers().await;
    assert_eq!(containers.len(), 4, "{containers:?}");
    for svc in ["web", "api"] {
        for (name, role) in [
            (f.name(svc), "app"),
            (format!("{}-envoy", f.name(svc)), "envoy"),
        ] {
            let (_, state, labels) = containers
                .get(&name)
                .unwrap_or_else(|| panic!("{name} missing: {containers:?}"));
            assert_eq!(state, "running", "{name}");
            assert_eq!(labels[LABEL_SERVICE], svc);
            assert_eq!(labels[LABEL_ROLE], role);
            assert_eq!(labels[LABEL_SPEC_HASH], format!("{svc}1"));
        }
        // The sidecar stand-in owns the pod's namespace (alias, ports) and sees its config
        // read-only; the app shares it.
        let envoy_name = format!("{}-envoy", f.name(svc));
        assert!(f.aliases(&envoy_name).await.contains(&svc.to_string()));
        let app = f
            .docker
            .inspect_container(&f.name(svc), None)
            .await
            .unwrap();
        let mode = app.host_config.unwrap().network_mode.unwrap();
        assert_eq!(mode, format!("container:{}", containers[&envoy_name].0));
        let envoy = f.docker.inspect_container(&envoy_name, None).await.unwrap();
        let mounts = envoy.mounts.unwrap();
        // The config's directory, not the file: a file bind mount would keep showing the old
        // file after iac's temp + rename, and a reload must see the new one.
        assert!(
            mounts
                .iter()
                .any(|m| m.destination.as_deref() == Some("/etc/envoy") && m.rw == Some(false)),
            "{mounts:?}"
        );
        assert!(
            !mounts
                .iter()
                .any(|m| m.destination.as_deref() == Some("/etc/envoy/envoy.yaml")),
            "{mounts:?}"
        );
    }
    assert_eq!(f.networks().await, vec![f.network.clone()]);

    let running = f.provisioner.running(&f.project).await.unwrap();
    let names: Vec<&str> = running.iter().map(|r| r.service.as_str()).collect();
    assert_eq!(names, ["api", "web"]);
    assert!(
        running
            .iter()
            .all(|r| r.state == "running" && r.endpoint.is_some() && r.image == IMAGE)
    );

    // Same stack again: nothing is touched.
    let before = f.ids().await;
    let again = f.apply(&stack, &gate).await;
    for svc in ["web", "api"] {
        let (action, ep) = action_of(&again, svc);
        assert_eq!(action, Action::Unchanged);
        assert_eq!(ep, action_of(&applied, svc).1, "same published endpoint");
    }
    assert_eq!(f.ids().await, before, "same containers");
    assert!(
        f.provisioner
            .diff(&stack)
            .await
            .unwrap()
            .iter()
            .all(|c| c.action == Action::Unchanged)
    );

    let removed = f
        .provisioner
        .destroy(&f.project, &Events::discard())
        .await
        .unwrap();
    assert_eq!(removed.len(), 5, "{removed:?}");
    assert!(
        !removed[0].ends_with("-envoy") && !removed[1].ends_with("-envoy"),
        "app containers go first (they live in their sidecars' namespaces): {removed:?}"
    );
    assert!(f.containers().await.is_empty());
    assert!(f.networks().await.is_empty());
    assert_eq!(
        f.provisioner
            .destroy(&f.project, &Events::discard())
            .await
            .unwrap(),
        Vec::<String>::new()
    );
}

#[tokio::test]
async fn changed_service_alone_is_replaced_health_gated() {
    let f = Fixture::new().await;
    let gate = FakeGate::new(true);
    let t = Instant::now();
    let first = f
        .apply(
            &f.stack(vec![f.service("web", "1"), f.service("api", "1")], &[]),
            &gate,
        )
        .await;
    eprintln!("create 2 services: {:?}", t.elapsed());
    let before = f.ids().await;

    let stack = f.stack(vec![f.service("web", "1"), f.service("api", "2")], &[]);
    let diff = f.provisioner.diff(&stack).await.unwrap();
    let got: Vec<(&str, Action)> = diff
        .iter()
        .map(|c| (c.service.as_str(), c.action))
        .collect();
    assert_eq!(got, [("web", Action::Unchanged), ("api", Action::Replace)]);

    let t = Instant::now();
    let applied = f.apply(&stack, &gate).await;
    eprintln!("replace 1 of 2 services (health-gated): {:?}", t.elapsed());
    assert_eq!(
        action_of(&applied, "web"),
        (Action::Unchanged, action_of(&first, "web").1)
    );
    let (action, ep) = action_of(&applied, "api");
    assert_eq!(action, Action::Replace);
    let api = applied
        .services
        .iter()
        .find(|a| a.service.as_str() == "api")
        .unwrap();
    assert_eq!(
        api.health.as_ref().map(|h| h.state),
        Some(HealthState::Serving)
    );
    let ep = assert_loopback(ep);
    http_get(ep, Duration::from_secs(15)).await.unwrap();

    // The gate was asked once, about the new pair's own port, before it took the alias.
    let calls = gate.calls();
    assert_eq!(calls.len(), 1, "{calls:?}");
    assert_eq!(calls[0].service.as_str(), "api");
    assert_eq!(calls[0].deadline, Duration::from_secs(20));

    let after = f.ids().await;
    assert_eq!(after.len(), 4, "no leftovers: {after:?}");
    assert!(after.keys().all(|n| !n.contains("-next-")), "{after:?}");
    let (web, api_app, api_envoy) = (
        f.name("web"),
        f.name("api"),
        format!("{}-envoy", f.name("api")),
    );
    assert_eq!(after[&web], before[&web], "web untouched");
    assert_eq!(
        after[&format!("{web}-envoy")],
        before[&format!("{web}-envoy")]
    );
    assert_ne!(after[&api_app], before[&api_app], "api replaced");
    assert_ne!(after[&api_envoy], before[&api_envoy]);
    let containers = f.containers().await;
    assert_eq!(containers[&api_app].2[LABEL_SPEC_HASH], "api2");
    assert!(
        containers.values().all(|(_, state, _)| state == "running"),
        "{containers:?}"
    );
    assert!(
        f.aliases(&api_envoy).await.contains(&"api".to_string()),
        "the new pod took over the alias"
    );
    let app = f.docker.inspect_container(&api_app, None).await.unwrap();
    assert_eq!(
        app.host_config.unwrap().network_mode.unwrap(),
        format!("container:{}", after[&api_envoy])
    );
}

#[tokio::test]
async fn replaced_and_destroyed_pods_leave_their_log_tails() {
    let f = Fixture::new().await;
    let gate = FakeGate::new(true);
    let first = f
        .apply(&f.stack(vec![f.service("web", "1")], &[]), &gate)
        .await;
    // http.server logs each request on stderr: the old app's log has a line to save.
    let ep = assert_loopback(action_of(&first, "web").1);
    http_get(ep, Duration::from_secs(15)).await.unwrap();

    let (events, tails) = Events::discard().with_log_tails();
    let g: Arc<dyn HealthProber> = gate.clone();
    f.provisioner
        .apply(&f.stack(vec![f.service("web", "2")], &[]), g, &events)
        .await
        .expect("apply");
    let (saved, left_out) = tails.take();
    assert_eq!(left_out, 0);
    let roles: Vec<(&str, &str, &str)> = saved
        .iter()
        .map(|t| (t.container.as_str(), t.role.as_str(), t.reason.as_str()))
        .collect();
    let (app, envoy) = (f.name("web"), format!("{}-envoy", f.name("web")));
    assert_eq!(
        roles,
        [
            (app.as_str(), "app", "replaced"),
            (envoy.as_str(), "sidecar", "replaced")
        ]
    );
    assert!(
        saved[0]
            .lines
            .iter()
            .any(|l| l.contains("\"GET / HTTP/1.0\" 200")),
        "the old app's request log: {:?}",
        saved[0].lines
    );
    assert!(!saved[0].truncated);

    f.provisioner.destroy(&f.project, &events).await.unwrap();
    let (saved, _) = tails.take();
    let reasons: Vec<(&str, &str)> = saved
        .iter()
        .map(|t| (t.role.as_str(), t.reason.as_str()))
        .collect();
    assert_eq!(reasons, [("app", "destroyed"), ("sidecar", "destroyed")]);
}

#[tokio::test]
async fn unhealthy_replacement_is_rolled_back() {
    let f = Fixture::new().await;
    let healthy = FakeGate::new(true);
    let first = f
        .apply(&f.stack(vec![f.service("web", "1")], &[]), &healthy)
        .await;
    let before = f.ids().await;

    let failing = FakeGate::new(false);
    let applied = f
        .apply(&f.stack(vec![f.service("web", "2")], &[]), &failing)
        .await;
    let a = &applied.services[0];
    assert_eq!(a.action, Action::RolledBack, "{applied:?}");
    assert_eq!(a.error, None);
    let h = a.health.as_ref().expect("the gate's report");
    assert_eq!(
        h.state,
        HealthState::NotServing,
        "the new pair was reachable but said NOT_SERVING: {h:?}"
    );
    assert_eq!(
        a.endpoint,
        action_of(&first, "web").1,
        "the old endpoint is reported"
    );
    assert_eq!(failing.calls().len(), 1);
    assert_ne!(
        Some(failing.calls()[0].addr),
        a.endpoint,
        "the gate probed the new pair, not the old"
    );

    assert_eq!(f.ids().await, before, "old pair kept, no -next- leftovers");
    let containers = f.containers().await;
    assert!(
        containers
            .values()
            .all(|(_, state, l)| state == "running" && l[LABEL_SPEC_HASH] == "web1")
    );
    http_get(a.endpoint.unwrap(), Duration::from_secs(5))
        .await
        .unwrap();
}

#[tokio::test]
async fn dropped_service_is_removed_and_keep_is_honoured() {
    let f = Fixture::new().await;
    let gate = FakeGate::new(true);
    f.apply(
        &f.stack(
            vec![
                f.service("a", "1"),
                f.service("b", "1"),
                f.service("c", "1"),
            ],
            &[],
        ),
        &gate,
    )
    .await;
    let before = f.ids().await;

    let applied = f
        .apply(&f.stack(vec![f.service("a", "1")], &["b"]), &gate)
        .await;
    assert_eq!(applied.removed, vec![ServiceName::new("c").unwrap()]);
    assert_eq!(action_of(&applied, "a").0, Action::Unchanged);
    assert_eq!(action_of(&applied, "b").0, Action::Unchanged, "kept");
    let after = f.ids().await;
    let mut expected = before.clone();
    expected.retain(|n, _| !n.starts_with(&f.name("c")));
    assert_eq!(after, expected, "c removed, a and b untouched");

    // Without `keep`, b goes too.
    let applied = f
        .apply(&f.stack(vec![f.service("a", "1")], &[]), &gate)
        .await;
    assert_eq!(applied.removed, vec![ServiceName::new("b").unwrap()]);
    assert_eq!(f.ids().await.len(), 2);
}

#[tokio::test]
async fn failed_create_leaves_no_half_created_pair() {
    let f = Fixture::new().await;
    let gate = FakeGate::new(true);
    let mut broken = f.service("broken", "1");
    broken.envoy.image = format!("iac/does-not-exist:{}", f.id);
    let applied = f
        .apply(&f.stack(vec![broken, f.service("fine", "1")], &[]), &gate)
        .await;
    let b = applied
        .services
        .iter()
        .find(|a| a.service.as_str() == "broken")
        .unwrap();
    let err = b.error.as_deref().expect("an error for the broken service");
    assert!(
        err.contains("does-not-exist") && err.contains(&format!("{}-envoy", f.name("broken"))),
        "{err}"
    );
    assert_eq!(
        action_of(&applied, "fine").0,
        Action::Create,
        "peers are not affected"
    );
    let names: Vec<String> = f.ids().await.into_keys().collect();
    assert_eq!(names, [f.name("fine"), format!("{}-envoy", f.name("fine"))]);
    assert!(Path::new(&f.envoy_config).exists());
}

#[tokio::test]
async fn stopped_pair_is_repaired_with_the_same_spec() {
    let f = Fixture::new().await;
    let gate = FakeGate::new(true);
    let stack = f.stack(vec![f.service("web", "1")], &[]);
    f.apply(&stack, &gate).await;
    let before = f.ids().await;
    let app = f.name("web");
    let out = std::process::Command::new("docker")
        .args(["stop", "-t", "0", &app])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");

    let diff = f.provisioner.diff(&stack).await.unwrap();
    assert_eq!(diff[0].action, Action::Repair);
    assert!(
        diff[0].reason.contains("app container is exited"),
        "{diff:?}"
    );
    let applied = f.apply(&stack, &gate).await;
    let (action, ep) = action_of(&applied, "web");
    assert_eq!(action, Action::Repair);
    http_get(assert_loopback(ep), Duration::from_secs(15))
        .await
        .unwrap();
    let after = f.containers().await;
    assert_eq!(after.len(), 2, "{after:?}");
    assert_ne!(after[&app].0, before[&app]);
    assert!(
        after.values().all(|(_, state, _)| state == "running"),
        "{after:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// The real pod: packet filter, privileges, limits, ownership
// ---------------------------------------------------------------------------------------------

const ENVOY_IMAGE: &str = "iac/envoy:1.40.0";

/// The static agent (`scripts/build-agent.sh`): `IAC_TEST_AGENT_BINARY`, else next to this test
/// binary's target dir, else the repo's `target/`.
fn agent_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("IAC_TEST_AGENT_BINARY") {
        return PathBuf::from(p);
    }
    let rel = "x86_64-unknown-linux-gnu/release/iac-agent";
    let exe = std::env::current_exe().unwrap();
    let found = exe
        .ancestors()
        .map(|d| d.join(rel))
        .chain([Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../target")
            .join(rel)])
        .find(|p| p.is_file());
    found.unwrap_or_else(|| {
        panic!(
            "no static iac-agent found: run scripts/build-agent.sh (or set IAC_TEST_AGENT_BINARY)"
        )
    })
}

fn docker(args: &[&str]) -> std::process::Output {
    std::process::Command::new("docker")
        .args(args)
        .output()
        .expect("docker CLI")
}

fn docker_ok(args: &[&str]) -> String {
    let out = docker(args);
    assert!(
        out.status.success(),
        "docker {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The app: listens dual-stack on [::]:8000 and IPv4-only on 0.0.0.0:8001 (what an app that
/// ignores the loopback advice does), after printing its uid and capabilities.
const APP_SERVER: &str = r#"
import http.server, socket, threading
st = dict(l.split(":\t", 1) for l in open("/proc/self/status").read().splitlines() if ":\t" in l)
print("app: uid", st["Uid"].split()[0], "capeff", st["CapEff"].strip(), "nnp", st["NoNewPrivs"].strip(), flush=True)
class Dual(http.server.ThreadingHTTPServer):
    address_family = socket.AF_INET6
    def server_bind(self):
        self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        super().server_bind()
v4 = http.server.ThreadingHTTPServer(("0.0.0.0", 8001), http.server.SimpleHTTPRequestHandler)
threading.Thread(target=v4.serve_forever, daemon=True).start()
print("app: listening on [::]:8000 and 0.0.0.0:8001", flush=True)
Dual(("::", 8000), http.server.SimpleHTTPRequestHandler).serve_forever()
"#;

/// The app for the pids test: starts threads until the kernel refuses one, says how many it got,
/// lets them go and exits 3.
const APP_THREADS: &str = r#"
import threading, time, sys
stop = threading.Event()
started = []
try:
    for i in range(10000):
        t = threading.Thread(target=stop.wait)
        t.start()
        started.append(t)
except RuntimeError as e:
    print(f"app: pids limit hit after {len(started)} threads: {e}", flush=True)
    stop.set()
    for t in started:
        t.join()
    sys.exit(3)
print(f"app: no limit hit after {len(started)} threads", flush=True)
stop.set()
"#;

/// A minimal real Envoy config for the sidecar: the inbound port routes to the app on loopback
/// (plain HTTP, no TLS: the filter is under test, not mTLS), so does the edge port 15080, and
/// 127.0.0.1:15001 is the outbound listener, routed to `peer`:9000.
fn envoy_config(peer: &str) -> String {
    let route = |name: &str, bind: &str, port: u16, cluster: &str| {
        format!(
            r#"
  - name: {name}
    address: {{socket_address: {{address: {bind}, port_value: {port}}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: {name}
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {{prefix: "/"}}
                route: {{cluster: {cluster}}}
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"#
        )
    };
    let cluster = |name: &str, kind: &str, host: &str, port: u16| {
        format!(
            r#"
  - name: {name}
    type: {kind}
    connect_timeout: 2s
    dns_lookup_family: V4_ONLY
    load_assignment:
      cluster_name: {name}
      endpoints:
      - lb_endpoints:
        - endpoint: {{address: {{socket_address: {{address: {host}, port_value: {port}}}}}}}"#
        )
    };
    format!(
        "static_resources:\n  listeners:{}{}{}\n  clusters:{}{}\n",
        route("inbound", "0.0.0.0", 15000, "app"),
        route("outbound", "127.0.0.1", 15001, "peer"),
        route("edge", "0.0.0.0", 15080, "app"),
        cluster("app", "STATIC", "127.0.0.1", 8000),
        cluster("peer", "STRICT_DNS", peer, 9000),
    )
}

/// A pod as `plan()` specifies it, with the app's command and the sidecar's config swapped for
/// test stand-ins (see [`APP_SERVER`], [`envoy_config`]), everything labelled `iac.test`.
struct Pod {
    f: Fixture,
    provisioner: DockerProvisioner,
    stack: Stack,
    /// A plain container on the project network: the attacker / the app's peer (`:9000`).
    peer: String,
}

impl Pod {
    async fn new(app_script: &str, limits: ContainerLimits, edge: Option<EdgeBind>) -> Pod {
        Pod::build(app_script, limits, edge, EgressPolicy::Open).await
    }

    /// [`Pod::new`] with an egress policy. A controlled pod runs the real rendered Envoy config
    /// (its egress listener is under test), with certificates from a dev CA.
    async fn build(
        app_script: &str,
        limits: ContainerLimits,
        edge: Option<EdgeBind>,
        egress: EgressPolicy,
    ) -> Pod {
        let f = Fixture::new().await;
        for image in [ENVOY_IMAGE, IMAGE] {
            assert!(
                f.docker.inspect_image(image).await.is_ok(),
                "image {image} is missing: run scripts/bootstrap-images.sh"
            );
        }
        // The project network, with IPv6 (a ULA /64 unique to this test): the provisioner uses an
        // existing network of that name as it is.
        let id = &f.id;
        let v6 = format!("fd{}:{}:{}::/64", &id[0..2], &id[2..6], &id[6..10]);
        docker_ok(&[
            "network",
            "create",
            "--ipv6",
            "--subnet",
            &v6,
            "--label",
            &format!("{LABEL_TEST}={id}"),
            &f.network,
        ]);
        let peer = format!("{}-peer", f.project);
        docker_ok(&[
            "run",
            "-d",
            "--name",
            &peer,
            "--label",
            &format!("{LABEL_TEST}={id}"),
            "--network",
            &f.network,
            IMAGE,
            "python3",
            "-m",
            "http.server",
            "9000",
        ]);
        let dir = f._dir.path();
        if egress.is_controlled() {
            let ca = iac_backends::pki::DevCa::new(iac_backends::pki::PkiConfig {
                secrets_dir: dir.join("secrets"),
                ..Default::default()
            });
            let issued = ca
                .issue_blocking(&f.project, &ServiceName::new("web").unwrap())
                .unwrap();
            for (from, to) in [
                (&issued.paths.ca, "ca.pem"),
                (&issued.paths.cert, "web.pem"),
                (&issued.paths.key, "web.key"),
            ] {
                std::fs::copy(from, dir.join(to)).unwrap();
            }
            let mesh = iac_core::Mesh {
                project: f.project.clone(),
                services: vec![iac_core::MeshService {
                    name: ServiceName::new("web").unwrap(),
                    address: "web".into(),
                    port: 15000,
                    app_port: Some(8000),
                    edge: edge.is_some(),
                    egress: egress.clone(),
                    sandbox: None,
                }],
                ports: iac_core::MeshPorts::default(),
                certs: iac_core::CertPaths::in_container(),
            };
            let yaml = <iac_backends::sidecar::EnvoyRenderer as iac_core::SidecarRenderer>::render(
                &iac_backends::sidecar::EnvoyRenderer::default(),
                &mesh,
                &ServiceName::new("web").unwrap(),
            )
            .unwrap();
            std::fs::write(dir.join("envoy.yaml"), yaml).unwrap();
        } else {
            std::fs::write(dir.join("envoy.yaml"), envoy_config(&peer)).unwrap();
            for name in ["ca.pem", "web.pem", "web.key"] {
                std::fs::write(dir.join(name), "not used by the test config\n").unwrap();
            }
        }
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.join("web.key"), std::fs::Permissions::from_mode(0o600))
            .unwrap();
        let input = iac_core::plan::PlanInput {
            project: f.project.clone(),
            network: f.network.clone(),
            envoy_image: ENVOY_IMAGE.into(),
            otel_endpoint: None,
            services: vec![iac_core::plan::PlannedService {
                name: ServiceName::new("web").unwrap(),
                image: IMAGE.into(),
                envoy_config: dir.join("envoy.yaml"),
                envoy_config_digest: "sha256:test".into(),
                certs: iac_core::IssuedCerts {
                    paths: iac_core::CertPaths {
                        ca: dir.join("ca.pem"),
                        cert: dir.join("web.pem"),
                        key: dir.join("web.key"),
                    },
                    fingerprint: "sha256:test".into(),
                },
                app_port: Some(8000),
                env: BTreeMap::new(),
                edge,
                replicas: 1,
                egress,
            }],
            keep: Vec::new(),
            sandbox: None,
        };
        let mut stack = iac_core::plan::plan(&input);
        let svc = &mut stack.services[0];
        svc.app.cmd = [
            "/usr/local/bin/iac-agent",
            "--user",
            "nobody",
            "--grace",
            "2s",
            "--",
            "python3",
            "-c",
            app_script,
        ]
        .map(String::from)
        .to_vec();
        svc.app.mounts.push(Mount {
            source: agent_binary(),
            target: "/usr/local/bin/iac-agent".into(),
            read_only: true,
        });
        svc.app.stop_timeout_secs = 5;
        for c in [&mut svc.app, &mut svc.envoy] {
            c.labels.insert(LABEL_TEST.into(), id.clone());
        }
        stack.network.labels.insert(LABEL_TEST.into(), id.clone());
        let provisioner = DockerProvisioner::connect(DockerProvisionerConfig {
            stop_timeout: std::time::Duration::from_secs(5),
            limits,
            ..Default::default()
        })
        .await
        .unwrap();
        Pod {
            f,
            provisioner,
            stack,
            peer,
        }
    }

    async fn apply(&self) -> (Applied, Vec<String>) {
        let (events, mut rx) = Events::channel();
        let gate: Arc<dyn HealthProber> = FakeGate::new(true);
        let applied = self
            .provisioner
            .apply(&self.stack, gate, &events)
            .await
            .expect("apply");
        drop(events);
        let mut msgs = Vec::new();
        while let Some(e) = rx.recv().await {
            msgs.push(e.message);
        }
        (applied, msgs)
    }

    fn app(&self) -> String {
        self.f.name("web")
    }

    fn sidecar(&self) -> String {
        format!("{}-envoy", self.f.name("web"))
    }

    /// The pod's addresses on the project network (its sidecar's, the namespace owner's):
    /// (IPv4, IPv6 if any).
    fn addresses(&self) -> (String, Option<String>) {
        let out = docker_ok(&[
            "inspect",
            "-f",
            "{{range .NetworkSettings.Networks}}{{.IPAddress}} {{.GlobalIPv6Address}}{{end}}",
            &self.sidecar(),
        ]);
        let mut it = out.split_whitespace();
        let v4 = it.next().expect("an IPv4 address").to_string();
        (v4, it.next().map(String::from))
    }

    /// From a fresh plain container on the project network, what `host:port` does: `open`
    /// (connected; `body` holds the first bytes of a `GET /`), `refused`, or `timeout`.
    fn probe(&self, targets: &[(String, u16)]) -> BTreeMap<String, String> {
        let script = r#"
import json, socket, sys
out = {}
for host, port in json.loads(sys.argv[1]):
    key = f"{host}:{port}"
    try:
        s = socket.create_connection((host, port), timeout=3)
        s.settimeout(3)
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        body = b""
        try:
            while len(body) < 4096:
                chunk = s.recv(4096)
                if not chunk:
                    break
                body += chunk
        except OSError:
            pass
        out[key] = "open " + body.decode(errors="replace")[:1500]
    except ConnectionRefusedError:
        out[key] = "refused"
    except OSError as e:
        out[key] = "timeout" if isinstance(e, (socket.timeout, TimeoutError)) else f"error {e}"
print(json.dumps(out))
"#;
        let targets: Vec<(String, u16)> = targets.to_vec();
        let arg = serde_json::to_string(&targets).unwrap();
        let out = docker_ok(&[
            "run",
            "--rm",
            "--label",
            &format!("{LABEL_TEST}={}", self.f.id),
            "--network",
            &self.f.network,
            IMAGE,
            "python3",
            "-c",
            script,
            &arg,
        ]);
        serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("probe output {out:?}: {e}"))
    }

    fn status_of_pid1(&self, container: &str) -> BTreeMap<String, String> {
        parse_status(&docker_ok(&["exec", container, "cat", "/proc/1/status"]))
    }

    /// `/proc/<pid>/status` of the process in `container` whose name starts with `name`.
    fn status_of_named(&self, container: &str, name: &str) -> BTreeMap<String, String> {
        let all = docker_ok(&[
            "exec",
            container,
            "sh",
            "-c",
            "for f in /proc/[0-9]*/status; do cat \"$f\"; echo ---; done",
        ]);
        all.split("---\n")
            .map(parse_status)
            .find(|s| s.get("Name").is_some_and(|n| n.starts_with(name)))
            .unwrap_or_else(|| panic!("no process {name} in {container}: {all}"))
    }
}

fn parse_status(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| l.split_once(":\t"))
        .map(|(k, v)| (k.to_string(), v.trim().to_string()))
        .collect()
}

/// Sends one nftables `DELTABLE inet <table>` batch over raw netlink and prints the kernel's errno
/// (0 = done): what any process in the app container — root included — can try against the filter.
const NETLINK_DELETE_TABLE: &str = r#"
import errno, socket, struct, sys
table = sys.argv[1].encode() + b"\0"
def msg(kind, flags, seq, family, res_id, payload=b""):
    body = struct.pack("=BBH", family, 0, socket.htons(res_id)) + payload
    return struct.pack("=IHHII", 16 + len(body), kind, flags, seq, 0) + body
attr = struct.pack("=HH", 4 + len(table), 1) + table
attr += b"\0" * (-len(attr) % 4)
NFNL_SUBSYS_NFTABLES, NFT_MSG_DELTABLE, NFPROTO_INET = 10, 2, 1
BEGIN, END, REQ, ACK = 16, 17, 1, 4
s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 12)  # NETLINK_NETFILTER
s.bind((0, 0))
s.send(msg(BEGIN, REQ, 1, 0, NFNL_SUBSYS_NFTABLES)
       + msg((NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_DELTABLE, REQ | ACK, 2, NFPROTO_INET, 0, attr)
       + msg(END, REQ, 3, 0, NFNL_SUBSYS_NFTABLES))
data = s.recv(65536)
length, kind = struct.unpack_from("=IH", data)
assert kind == 2, f"expected NLMSG_ERROR, got type {kind}"
err = -struct.unpack_from("=i", data, 16)[0]
print(errno.errorcode.get(err, str(err)) if err else "OK")
"#;

#[tokio::test]
async fn a_sidecar_that_cannot_install_the_filter_fails_its_pair_with_its_own_words() {
    let mut pod = Pod::new(APP_SERVER, ContainerLimits::default(), None).await;
    // Without NET_ADMIN, nft cannot load the ruleset: the sidecar's script says so and exits.
    pod.stack.services[0]
        .envoy
        .privileges
        .cap_add
        .retain(|c| c != "NET_ADMIN");
    let (applied, _) = pod.apply().await;
    let err = applied.services[0].error.clone().unwrap_or_default();
    assert!(
        err.contains("stopped before installing the pod's packet filter")
            && err.contains("nft could not install the pod's packet filter")
            && err.contains("removed what was created"),
        "the error carries the sidecar's last lines: {err}"
    );
    assert!(
        pod.f.containers().await.is_empty(),
        "no half-created pair is left: {:?}",
        pod.f.containers().await
    );
}

#[tokio::test]
async fn pod_filter_admits_only_the_sidecar_port_from_the_network() {
    let pod = Pod::new(APP_SERVER, ContainerLimits::default(), None).await;
    let t = Instant::now();
    let (applied, msgs) = pod.apply().await;
    eprintln!("create 1 real pod (filter confirmed): {:?}", t.elapsed());
    let (action, _) = action_of(&applied, "web");
    assert_eq!(action, Action::Create);
    let confirmed = msgs
        .iter()
        .find(|m| m.contains("pod filter inet iac_pod in place"))
        .unwrap_or_else(|| panic!("the provisioner confirmed the filter: {msgs:?}"));
    eprintln!("{confirmed}");
    let logs = docker_ok(&["logs", &pod.sidecar()]);
    let logs = logs + &String::from_utf8_lossy(&docker(&["logs", &pod.sidecar()]).stderr);
    assert!(
        logs.contains("iac-sidecar: pod filter installed: inbound tcp/15000 only"),
        "{logs}"
    );

    // Wait until the app listens (inside the pod, loopback is open).
    let started = Instant::now();
    while !docker_ok(&["logs", &pod.app()]).contains("app: listening") {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "app never started: {}",
            docker_ok(&["logs", &pod.app()])
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    let (v4, v6) = pod.addresses();
    let v6 = v6.expect("the test network has IPv6");
    let targets: Vec<(String, u16)> = [&v4, &v6]
        .iter()
        .flat_map(|h| [8000, 8001, 15000].map(|p| (h.to_string(), p)))
        .filter(|(h, p)| !(h.contains(':') && *p == 8001))
        .collect();
    let seen = pod.probe(&targets);
    eprintln!("from a peer container: {seen:#?}");
    for (host, port) in &targets {
        let got = &seen[&format!("{host}:{port}")];
        if *port == 15000 && !host.contains(':') {
            // Through Envoy to the app on loopback: the directory listing.
            assert!(
                got.starts_with("open HTTP/1.1 200") && got.contains("Directory listing"),
                "{host}:15000 must reach the app through the sidecar: {got}"
            );
        } else if *port == 15000 {
            // Envoy listens on 0.0.0.0 only: nothing answers on IPv6, but the filter lets it in
            // (refused by the kernel, not dropped).
            assert_eq!(got, "refused", "{host}:15000");
        } else {
            assert_eq!(
                got, "refused",
                "{host}:{port}: the app's own port must not be reachable from the network"
            );
        }
    }

    // Loopback inside the pod: the sidecar reaches the app and the agent.
    let body = docker_ok(&[
        "exec",
        &pod.sidecar(),
        "curl",
        "-s",
        "http://127.0.0.1:8000/",
    ]);
    assert!(body.contains("Directory listing"), "{body}");
    let code = docker_ok(&[
        "exec",
        &pod.sidecar(),
        "curl",
        "-s",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "--http2-prior-knowledge",
        "-X",
        "POST",
        "http://127.0.0.1:50051/iac.controlplane.v1.ControlPlane/HealthCheck",
    ]);
    assert_ne!(code.trim(), "000", "the agent answers on 127.0.0.1:50051");
    // With the pod's privileges (no NET_ADMIN, default seccomp) the agent lists the pod's
    // sockets over NETLINK_SOCK_DIAG, not by walking the host's /proc/net/tcp.
    let agent_stderr = String::from_utf8_lossy(&docker(&["logs", &pod.app()]).stderr).into_owned();
    assert!(
        !agent_stderr.contains("socket diagnostics unavailable"),
        "{agent_stderr}"
    );
    // The app's outbound: DNS + a peer directly, and through the sidecar's outbound listener.
    for url in [
        format!("http://{}:9000/", pod.peer),
        "http://127.0.0.1:15001/".to_string(),
    ] {
        let out = docker_ok(&[
            "exec",
            "-u",
            "nobody",
            &pod.app(),
            "python3",
            "-c",
            "import sys, urllib.request; print(urllib.request.urlopen(sys.argv[1], timeout=10).status)",
            &url,
        ]);
        assert_eq!(out.trim(), "200", "app → {url}");
    }

    // Privileges: the sidecar's PID 1 (the Envoy supervisor that holds the pod's namespace)
    // gave up NET_ADMIN once the filter was in, Envoy kept nothing, the agent only what it
    // needs, the app nothing.
    let supervisor = pod.status_of_pid1(&pod.sidecar());
    assert_eq!(supervisor["Name"], "sh", "{supervisor:?}");
    // SETGID (6), SETUID (7), SETPCAP (8): what starting Envoy as the key's owner needs.
    assert_eq!(supervisor["CapBnd"], "00000000000001c0", "{supervisor:?}");
    assert_eq!(supervisor["CapEff"], "00000000000001c0", "{supervisor:?}");
    assert_eq!(supervisor["NoNewPrivs"], "1");
    let envoy = pod.status_of_named(&pod.sidecar(), "envoy");
    assert_eq!(
        envoy["PPid"], "1",
        "Envoy is the supervisor's child: {envoy:?}"
    );
    for k in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
        assert_eq!(envoy[k], "0000000000000000", "Envoy {k}");
    }
    assert_eq!(envoy["NoNewPrivs"], "1");
    let agent = pod.status_of_pid1(&pod.app());
    // KILL (5), SETGID (6), SETUID (7).
    assert_eq!(agent["CapBnd"], "00000000000000e0", "{agent:?}");
    assert_eq!(agent["CapEff"], "00000000000000e0");
    assert_eq!(agent["NoNewPrivs"], "1");
    let app_logs = docker_ok(&["logs", &pod.app()]);
    assert!(
        app_logs.contains("app: uid 65534 capeff 0000000000000000 nnp 1"),
        "{app_logs}"
    );

    // What the engine was told, on both containers.
    for (name, caps, pids, mem) in [
        (pod.app(), vec!["KILL", "SETGID", "SETUID"], 512, 1024),
        (
            pod.sidecar(),
            vec!["NET_ADMIN", "SETGID", "SETPCAP", "SETUID"],
            256,
            256,
        ),
    ] {
        let c = pod.f.docker.inspect_container(&name, None).await.unwrap();
        let hc = c.host_config.unwrap();
        assert_eq!(hc.cap_drop, Some(vec!["ALL".to_string()]), "{name}");
        let mut added: Vec<String> = hc
            .cap_add
            .unwrap()
            .into_iter()
            .map(|c| c.trim_start_matches("CAP_").to_string())
            .collect();
        added.sort();
        assert_eq!(added, caps, "{name}");
        assert_eq!(
            hc.security_opt,
            Some(vec!["no-new-privileges:true".to_string()]),
            "{name}"
        );
        assert_eq!(hc.pids_limit, Some(pids), "{name}");
        assert_eq!(hc.memory, Some(mem << 20), "{name}");
        let labels = c.config.unwrap().labels.unwrap();
        assert_eq!(labels[LABEL_MANAGED], "iac", "{name}");
    }

    // The app cannot undo the filter, not even as root in its container; the same request with
    // NET_ADMIN (in a throwaway namespace without the table) gets past the permission check.
    let tried = docker_ok(&[
        "exec",
        &pod.app(),
        "python3",
        "-c",
        NETLINK_DELETE_TABLE,
        "iac_pod",
    ]);
    assert_eq!(
        tried.trim(),
        "EPERM",
        "the app container may not touch nftables"
    );
    let control = docker_ok(&[
        "run",
        "--rm",
        "--label",
        &format!("{LABEL_TEST}={}", pod.f.id),
        "--network",
        "none",
        "--cap-add",
        "NET_ADMIN",
        IMAGE,
        "python3",
        "-c",
        NETLINK_DELETE_TABLE,
        "iac_pod",
    ]);
    assert_eq!(
        control.trim(),
        "ENOENT",
        "the request itself is well-formed"
    );
    let again = pod.probe(&[(v4.clone(), 8000), (v6.clone(), 8000)]);
    assert!(again.values().all(|v| v == "refused"), "{again:?}");
}

#[tokio::test]
async fn pids_limit_stops_an_app_that_starts_too_many_threads_cleanly() {
    let limits = ContainerLimits {
        app_pids: 48,
        ..ContainerLimits::default()
    };
    let pod = Pod::new(APP_THREADS, limits, None).await;
    let (applied, _) = pod.apply().await;
    assert_eq!(action_of(&applied, "web").0, Action::Create);
    let started = Instant::now();
    let logs = loop {
        let logs = docker_ok(&["logs", &pod.app()])
            + &String::from_utf8_lossy(&docker(&["logs", &pod.app()]).stderr);
        // (The agent's own line and the app's, teed from another pipe, in either order.)
        if logs.contains("child exited") && logs.contains("app: ") {
            break logs;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the app never finished: {logs}"
        );
        std::thread::sleep(Duration::from_millis(300));
    };
    eprintln!("{logs}");
    let n: usize = logs
        .split("app: pids limit hit after ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("the app saw the limit: {logs}"));
    assert!(n > 0 && n < 48, "{n} threads");
    assert!(logs.contains("child exited with code 3"), "{logs}");
    // The agent outlived the app's failure and still stops cleanly on SIGTERM.
    let state = docker_ok(&["inspect", "-f", "{{.State.Status}}", &pod.app()]);
    assert_eq!(state.trim(), "running");
    // (The app container alone: the sidecar's own stop time is not what this test is about.)
    let t = Instant::now();
    docker_ok(&["stop", "-t", "5", &pod.app()]);
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "the agent took {:?} to stop; its logs: {}",
        t.elapsed(),
        String::from_utf8_lossy(&docker(&["logs", "--tail", "5", &pod.app()]).stderr)
    );
    let code = docker_ok(&["inspect", "-f", "{{.State.ExitCode}}", &pod.app()]);
    assert_eq!(code.trim(), "3", "the agent exits with the app's code");
}

#[tokio::test]
async fn destroy_and_reconcile_spare_a_container_started_by_hand_from_an_iac_image() {
    let f = Fixture::new().await;
    let gate = FakeGate::new(true);
    // An image like the ones iac builds: it carries iac.project / iac.service.
    let image = format!("iac-test/handmade:{}", f.id);
    let dockerfile = format!(
        "FROM {IMAGE}\nLABEL {LABEL_PROJECT}=\"{}\" {LABEL_SERVICE}=\"web\"\n",
        f.project
    );
    let mut child = std::process::Command::new("docker")
        .args([
            "build",
            "-q",
            "-t",
            &image,
            "--label",
            &format!("{LABEL_TEST}={}", f.id),
            "-",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(dockerfile.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{out:?}");

    let stack = f.stack(vec![f.service("web", "1")], &[]);
    f.apply(&stack, &gate).await;
    let hand = format!("{}-by-hand", f.project);
    docker_ok(&["run", "-d", "--name", &hand, &image, "sleep", "infinity"]);
    let labels = &f.containers().await[&hand].2;
    assert_eq!(labels[LABEL_PROJECT], f.project.as_str(), "inherited");
    assert_eq!(labels[LABEL_SERVICE], "web", "inherited");
    assert!(!labels.contains_key(LABEL_MANAGED));
    assert_eq!(
        labels[LABEL_TEST], f.id,
        "inherited, so the guard removes it"
    );

    // Reconciling does not see it (it would be a leftover of `web` to clean up otherwise).
    let again = f.apply(&stack, &gate).await;
    assert_eq!(action_of(&again, "web").0, Action::Unchanged);
    assert!(f.containers().await.contains_key(&hand));

    let removed = f
        .provisioner
        .destroy(&f.project, &Events::discard())
        .await
        .unwrap();
    assert_eq!(removed.len(), 3, "{removed:?}");
    assert!(
        removed.iter().all(|r| !r.contains("by-hand")),
        "{removed:?}"
    );
    let left = f.containers().await;
    assert_eq!(left.keys().collect::<Vec<_>>(), [&hand], "{left:?}");
    assert_eq!(left[&hand].1, "running");
}

#[tokio::test]
async fn edge_port_answers_on_the_host_and_refuses_peers() {
    let pod = Pod::new(
        APP_SERVER,
        ContainerLimits::default(),
        Some(EdgeBind::loopback()),
    )
    .await;
    let (applied, msgs) = pod.apply().await;
    let (action, _) = action_of(&applied, "web");
    assert_eq!(action, Action::Create, "{msgs:?}");
    let a = &applied.services[0];
    let edge = a
        .edge
        .unwrap_or_else(|| panic!("the provisioner reports the edge's host address: {a:?}"));
    assert!(edge.ip().is_loopback(), "published on loopback: {edge}");
    assert_ne!(Some(edge), a.endpoint, "the edge is not the mesh port");
    let gateway = docker_ok(&[
        "network",
        "inspect",
        "-f",
        "{{range .IPAM.Config}}{{.Gateway}} {{end}}",
        &pod.f.network,
    ]);
    let gateway = gateway
        .split_whitespace()
        .find(|g| !g.contains(':'))
        .unwrap_or_else(|| panic!("an IPv4 gateway: {gateway:?}"))
        .to_string();
    // The sidecar says so right after loading the filter (the provisioner may see the table a
    // moment before the line is written).
    let said = format!("iac-sidecar: edge tcp/15080 admitted from the host ({gateway}) only");
    let started = Instant::now();
    let logs = loop {
        let logs = String::from_utf8_lossy(&docker(&["logs", &pod.sidecar()]).stderr).into_owned();
        if logs.contains(&said) || started.elapsed() > Duration::from_secs(10) {
            break logs;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(logs.contains(&said), "{logs}");

    // From the host, no certificate: the app answers on the published port.
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let started = Instant::now();
    let body = loop {
        match client
            .get(format!("http://{edge}/"))
            .timeout(Duration::from_secs(5))
            .send()
            .await
        {
            Ok(r) if r.status() == 200 => break r.text().await.unwrap(),
            other if started.elapsed() < Duration::from_secs(30) => {
                eprintln!("edge not answering yet: {other:?}");
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            other => panic!("the edge must answer on the host: {other:?}\nsidecar:\n{logs}"),
        }
    };
    assert!(body.contains("Directory listing"), "{body}");

    // From a peer on the project network: the edge port is reset by the pod's filter, while the
    // mesh port still lets the peer in (to the sidecar, which would demand a certificate).
    let (v4, _) = pod.addresses();
    let seen = pod.probe(&[(v4.clone(), 15080), (v4.clone(), 15000)]);
    eprintln!("from a peer container: {seen:#?}");
    assert_eq!(
        seen[&format!("{v4}:15080")],
        "refused",
        "a peer must not reach the app through the edge"
    );
    assert!(
        seen[&format!("{v4}:15000")].starts_with("open "),
        "{seen:?}"
    );
    let rules = docker_ok(&[
        "exec",
        &pod.sidecar(),
        "nft",
        "list",
        "set",
        "inet",
        "iac_pod",
        "edge_sources",
    ]);
    assert!(rules.contains(&gateway), "{rules}");

    // What `running` reports for `iac health`: the same edge.
    let running = pod.provisioner.running(&pod.f.project).await.unwrap();
    assert_eq!(running[0].edge, Some(edge), "{running:?}");
}

/// From the host, with the pod's filter taken away and then put back (as `nft` run in the pod's
/// network namespace by a helper container with NET_ADMIN): a connection to the app's own port
/// opened while there was no filter must not carry a request once the filter is back. Conntrack
/// marks that connection "established", and the filter accepts established traffic only in the
/// reply direction (replies to the pod's own connections), so the request is reset.
#[tokio::test]
async fn a_connection_opened_before_the_filter_does_not_survive_it() {
    let pod = Pod::new(APP_SERVER, ContainerLimits::default(), None).await;
    let (applied, _) = pod.apply().await;
    assert_eq!(action_of(&applied, "web").0, Action::Create);
    let started = Instant::now();
    while !docker_ok(&["logs", &pod.app()]).contains("app: listening") {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "app never started"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let (v4, _) = pod.addresses();
    let nft = |script: &str| {
        let out = std::process::Command::new("docker")
            .args([
                "run",
                "--rm",
                "-i",
                "--label",
                &format!("{LABEL_TEST}={}", pod.f.id),
                "--network",
                &format!("container:{}", pod.sidecar()),
                "--cap-add",
                "NET_ADMIN",
                "--entrypoint",
                "nft",
                ENVOY_IMAGE,
                "-f",
                "-",
            ])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .and_then(|mut c| {
                use std::io::Write;
                c.stdin.take().unwrap().write_all(script.as_bytes())?;
                c.wait_with_output()
            })
            .expect("docker run nft");
        assert!(
            out.status.success(),
            "nft: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    // No filter: the host opens a connection to the app's own port (nothing sent yet).
    nft(&format!(
        "table inet {POD_FILTER_TABLE}\ndelete table inet {POD_FILTER_TABLE}\n"
    ));
    let mut early = std::net::TcpStream::connect_timeout(
        &format!("{v4}:8001").parse().unwrap(),
        Duration::from_secs(5),
    )
    .expect("without the filter the app's port is open");
    // The filter comes back (exactly what the sidecar loads).
    nft(&pod_filter_rules(15000, None));
    // A fresh connection is refused, as always.
    let fresh = std::net::TcpStream::connect_timeout(
        &format!("{v4}:8001").parse().unwrap(),
        Duration::from_secs(5),
    );
    assert!(fresh.is_err(), "a new connection to 8001 is refused");
    // The early one carries nothing: its request is answered by a reset (or nothing at all).
    use std::io::{Read, Write};
    early
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let sent = early.write_all(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n");
    let mut body = Vec::new();
    let read = early.read_to_end(&mut body);
    let text = String::from_utf8_lossy(&body);
    assert!(
        !text.contains("HTTP/1.0 200"),
        "the early connection reached the app past the filter: {text}"
    );
    assert!(
        sent.is_err() || read.is_err() || body.is_empty(),
        "sent {sent:?}, read {read:?}"
    );
}

/// The "world" servers of the egress test: plain HTTP on 8000 and HTTPS on 443 (a certificate
/// for its own name from the test's dev CA), each answering with its name.
const WORLD_SERVER: &str = r#"
import http.server, os, ssl, sys, threading
name = sys.argv[1]
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = f"{name} says hi\n".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
plain = http.server.ThreadingHTTPServer(("0.0.0.0", 8000), H)
threading.Thread(target=plain.serve_forever, daemon=True).start()
tls = http.server.ThreadingHTTPServer(("0.0.0.0", 443), H)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain("/world/cert.pem", "/world/key.pem")
tls.socket = ctx.wrap_socket(tls.socket, server_side=True)
print(f"{name}: listening", flush=True)
tls.serve_forever()
"#;

/// What the app tries, as `nobody` in its own container (its environment is the container's:
/// the proxy variables iac set). Prints one JSON object: each attempt → its outcome.
const EGRESS_PROBES: &str = r#"
import json, os, socket, ssl, sys, urllib.request, urllib.error
a_ip, b_ip = sys.argv[1], sys.argv[2]
out = {"env": {k: os.environ.get(k) for k in ("HTTPS_PROXY", "HTTP_PROXY", "NO_PROXY")}}
insecure = ssl._create_unverified_context()
def fetch(key, url):
    try:
        r = urllib.request.urlopen(url, timeout=10, context=insecure if url.startswith("https") else None)
        out[key] = f"{r.status} {r.read().decode().strip()}"
    except urllib.error.HTTPError as e:
        out[key] = f"{e.code}"
    except Exception as e:
        out[key] = f"error {e}"
fetch("http_a", "http://world-a:8000/")
fetch("http_b", "http://world-b:8000/")
fetch("https_a", "https://world-a/")
fetch("https_b", "https://world-b/")
def sni(key, name):
    try:
        s = socket.create_connection(("127.0.0.1", 15002), timeout=10)
        t = insecure.wrap_socket(s, server_hostname=name)
        t.sendall(f"GET / HTTP/1.1\r\nHost: {name}\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while True:
            chunk = t.recv(4096)
            if not chunk:
                break
            data += chunk
        out[key] = data.decode(errors="replace").splitlines()[-1]
    except Exception as e:
        out[key] = f"error {type(e).__name__}"
sni("sni_a", "world-a")
sni("sni_b", "world-b")
def direct(key, host, port):
    try:
        socket.create_connection((host, port), timeout=5).close()
        out[key] = "connected"
    except OSError as e:
        out[key] = f"errno {e.errno} {e.strerror}"
direct("direct_a_ip", a_ip, 8000)
direct("direct_a_name", "world-a", 443)
direct("direct_b_ip", b_ip, 8000)
try:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.sendto(b"x", (a_ip, 53))
    out["udp_a"] = "sent"
except OSError as e:
    out["udp_a"] = f"errno {e.errno} {e.strerror}"
print(json.dumps(out))
"#;

/// Egress on the real engine: a pod whose list allows world A (HTTP on 8000, HTTPS on 443) and
/// not world B, both on a separate "world" network the test makes and the pod is attached to
/// (so a route to both exists at the IP level). Through the proxy variables iac set, the app
/// reaches A over plain HTTP, CONNECT and TLS by SNI, and gets 403 / a failed handshake for B;
/// connecting directly, bypassing the proxy, gets "no route to host" for both, even to A; the
/// refusals are in Envoy's log (service, destination, rule) and stats; Envoy runs with the
/// egress group. Everything is labelled `iac.test` and removed by the guard.
#[tokio::test]
async fn egress_allows_the_list_refuses_the_rest_and_nothing_bypasses_the_sidecar() {
    let rules = iac_core::egress::parse_rules(&["world-a:8000", "world-a:443"]).unwrap();
    let pod = Pod::build(
        APP_SERVER,
        ContainerLimits::default(),
        None,
        EgressPolicy::Allow(rules),
    )
    .await;
    let id = pod.f.id.clone();
    let label = format!("{LABEL_TEST}={id}");

    // The world: its own network, two servers with certificates for their names.
    let world = format!("{}-world", pod.f.network);
    docker_ok(&["network", "create", "--label", &label, &world]);
    let certs = pod.f._dir.path().join("world");
    let ca = iac_backends::pki::DevCa::new(iac_backends::pki::PkiConfig {
        secrets_dir: certs.join("secrets"),
        ..Default::default()
    });
    let mut ips = BTreeMap::new();
    for name in ["world-a", "world-b"] {
        let issued = ca
            .issue_blocking(&pod.f.project, &ServiceName::new(name).unwrap())
            .unwrap();
        let dir = certs.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::copy(&issued.paths.cert, dir.join("cert.pem")).unwrap();
        std::fs::copy(&issued.paths.key, dir.join("key.pem")).unwrap();
        let container = format!("{}-{name}", pod.f.project);
        docker_ok(&[
            "run",
            "-d",
            "--name",
            &container,
            "--label",
            &label,
            "--network",
            &world,
            "--network-alias",
            name,
            "-v",
            &format!("{}:/world:ro", dir.display()),
            IMAGE,
            "python3",
            "-c",
            WORLD_SERVER,
            name,
        ]);
        let started = Instant::now();
        while !docker_ok(&["logs", &container]).contains("listening") {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "{name} never started: {:?}",
                docker(&["logs", &container])
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        let ip = docker_ok(&[
            "inspect",
            "-f",
            "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
            &container,
        ]);
        ips.insert(name, ip.trim().to_string());
    }

    let (applied, msgs) = pod.apply().await;
    assert_eq!(action_of(&applied, "web").0, Action::Create, "{msgs:?}");
    // The pod joins the world: the route exists; only the filter and the proxy stand between.
    docker_ok(&["network", "connect", &world, &pod.sidecar()]);
    let started = Instant::now();
    while !docker_ok(&["logs", &pod.app()]).contains("app: listening") {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "app never started"
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    let out = docker_ok(&[
        "exec",
        "-u",
        "nobody",
        &pod.app(),
        "python3",
        "-c",
        EGRESS_PROBES,
        &ips["world-a"],
        &ips["world-b"],
    ]);
    let seen: serde_json::Value =
        serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{out:?}: {e}"));
    eprintln!("{seen:#}");
    let at = |k: &str| seen[k].as_str().unwrap_or_default().to_string();
    let envoy_log = || {
        let o = docker(&["logs", &pod.sidecar()]);
        String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr)
    };
    assert_eq!(
        seen["env"]["HTTPS_PROXY"], "http://127.0.0.1:15002",
        "{seen}"
    );
    assert!(
        at("http_a").starts_with("200 world-a says hi"),
        "{seen}\n{}",
        envoy_log()
    );
    assert_eq!(at("http_b"), "403", "{seen}");
    assert!(
        at("https_a").starts_with("200 world-a says hi"),
        "{seen}\n{}",
        envoy_log()
    );
    assert!(
        at("https_b").contains("403"),
        "CONNECT to B refused: {seen}"
    );
    assert_eq!(at("sni_a"), "world-a says hi", "{seen}\n{}", envoy_log());
    assert!(at("sni_b").starts_with("error"), "{seen}");
    for k in ["direct_a_ip", "direct_a_name", "direct_b_ip"] {
        assert_eq!(
            at(k),
            "errno 113 No route to host",
            "{k}: a connection that skips the proxy has no route: {seen}"
        );
    }
    // A datagram is dropped before it leaves (the kernel says EPERM to the sender).
    assert!(
        at("udp_a").starts_with("errno "),
        "UDP does not get out either: {seen}"
    );

    // Refusals: logged with service, destination and rule (Envoy flushes its access log about
    // once a second), and counted.
    let wanted = [
        "iac-egress refused service=web destination=world-b:8000 method=GET rule=none",
        "iac-egress refused service=web destination=world-b:443 method=CONNECT rule=none",
        "iac-egress refused service=web destination=world-b rule=none",
        "iac-egress allowed service=web destination=world-a:443 method=CONNECT rule=world-a:443",
        "iac-egress allowed service=web destination=world-a:443 rule=sni:world-a:443",
    ];
    let started = Instant::now();
    loop {
        let log = envoy_log();
        let missing: Vec<&&str> = wanted.iter().filter(|l| !log.contains(**l)).collect();
        if missing.is_empty() {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "missing {missing:?} in:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    let stats = docker_ok(&[
        "exec",
        &pod.sidecar(),
        "curl",
        "-s",
        "http://127.0.0.1:9901/stats/prometheus",
    ]);
    // Prometheus series of the egress listener's RBAC filters, by their stat prefix.
    let stat = |name: &str, prefix: &str| -> u64 {
        stats
            .lines()
            .filter(|l| l.starts_with(&format!("{name}{{")) && l.contains(&format!("\"{prefix}\"")))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .map(|v| v as u64)
            .sum()
    };
    assert!(stat("envoy_http_rbac_denied", "egress") >= 2, "{stats}");
    assert!(
        stat("envoy_tcp_downstream_cx_total", "egress_sni_refused") >= 1,
        "{stats}"
    );
    assert!(stat("envoy_http_rbac_allowed", "egress") >= 2, "{stats}");

    // Envoy (and only Envoy) carries the egress group; the app cannot take it.
    let envoy = pod.status_of_named(&pod.sidecar(), "envoy");
    assert_eq!(
        envoy["Gid"].split_whitespace().next(),
        Some("1337"),
        "{envoy:?}"
    );
    let tried = docker(&[
        "exec",
        "-u",
        "nobody",
        &pod.app(),
        "python3",
        "-c",
        "import os; os.setgid(1337)",
    ]);
    assert!(
        !tried.status.success(),
        "the app cannot switch to Envoy's group"
    );
}
