//! The Docker provisioner against the real local engine. Needs the offline base image
//! `iac/python:3.11-bookworm` (`scripts/bootstrap-images.sh`); both containers of a pair run it
//! (`python3 -m http.server 15000` as the "app", `sleep infinity` as the "Envoy"), and a fake gate
//! answers SERVING / NOT_SERVING on demand after checking the new pair's published port really
//! accepts connections: this tests the provisioner, not the mesh.
//!
//! Every test uses its own random project and network, labels everything `iac.test=<id>`, and a
//! Drop guard removes all of it by label even when the test panics, so the tests run in parallel.

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
use iac_backends::provision::docker::{DockerProvisioner, DockerProvisionerConfig};
use iac_core::stack::{LABEL_PROJECT, LABEL_ROLE, LABEL_SERVICE, LABEL_SPEC_HASH};
use iac_core::{
    Action, Applied, ContainerSpec, Events, HealthProber, HealthReport, HealthState, Mount,
    NetworkMode, NetworkSpec, PortPublish, ProbeTarget, ProjectName, Provisioner, ServiceName,
    ServiceStack, Stack,
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
        HealthReport {
            service: target.service.clone(),
            state,
            exit_code: None,
            detail,
            attempts: 1,
        }
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
                network: NetworkMode::Network {
                    name: self.network.clone(),
                    aliases: vec![svc.to_string()],
                },
                mounts: vec![],
                ports: vec![PortPublish {
                    container_port: 15000,
                    host_ip: "127.0.0.1".into(),
                    host_port: None,
                }],
                stop_timeout_secs: 1,
            },
            envoy: ContainerSpec {
                name: format!("{app_name}-envoy"),
                image: IMAGE.into(),
                cmd: ["sleep", "infinity"].map(String::from).to_vec(),
                env: BTreeMap::new(),
                labels: self.labels(svc, "envoy", &hash),
                network: NetworkMode::Container { name: app_name },
                mounts: vec![Mount {
                    source: self.envoy_config.clone(),
                    target: "/etc/envoy/envoy.yaml".into(),
                    read_only: true,
                }],
                ports: vec![],
                stop_timeout_secs: 1,
            },
            spec_hash: hash,
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

    /// The aliases the app container answers to on the project network.
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
        assert!(f.aliases(&f.name(svc)).await.contains(&svc.to_string()));
        // The Envoy stand-in shares the app's network namespace and sees its config read-only.
        let envoy = f
            .docker
            .inspect_container(&format!("{}-envoy", f.name(svc)), None)
            .await
            .unwrap();
        let mode = envoy.host_config.unwrap().network_mode.unwrap();
        assert_eq!(mode, format!("container:{}", containers[&f.name(svc)].0));
        let mounts = envoy.mounts.unwrap();
        assert!(mounts.iter().any(
            |m| m.destination.as_deref() == Some("/etc/envoy/envoy.yaml") && m.rw == Some(false)
        ));
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
        removed[0].ends_with("-envoy"),
        "Envoy containers go first: {removed:?}"
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
        f.aliases(&api_app).await.contains(&"api".to_string()),
        "the new app took over the alias"
    );
    let envoy = f.docker.inspect_container(&api_envoy, None).await.unwrap();
    assert_eq!(
        envoy.host_config.unwrap().network_mode.unwrap(),
        format!("container:{}", after[&api_app])
    );
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
async fn stopped_pair_is_replaced_with_the_same_spec() {
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
    assert_eq!(diff[0].action, Action::Replace);
    assert!(diff[0].reason.contains("exited"), "{diff:?}");
    let applied = f.apply(&stack, &gate).await;
    let (action, ep) = action_of(&applied, "web");
    assert_eq!(action, Action::Replace);
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
