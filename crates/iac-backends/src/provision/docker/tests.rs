//! Unit tests of the Docker provisioner against a mockall [`MockEngine`](super::MockEngine):
//! creation, unchanged services, health-gated replacement and rollback, pod filters, destroy and
//! the config format.

use crate::provision::ContainerLimits;
use crate::provision::reconcile::Observed;
use bollard::models::{MountType, PortBinding};
use iac_core::stack::{LABEL_MANAGED, LABEL_PROJECT, LABEL_ROLE, LABEL_SERVICE, LABEL_SPEC_HASH};
use iac_core::{
    Action, Applied, AppliedService, ContainerSpec, Events, HealthProber, NetworkMode, NetworkSpec,
    PodFilter, ProjectName, Provisioner, RunningService, ServiceName, ServiceStack, Stack,
};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::engine::containers::{label_filter, pick};
use iac_core::{HealthReport, HealthState, MockHealthProber, Mount, PortPublish};
use mockall::Sequence;

const NET: &str = "iacnet-t";

fn project() -> ProjectName {
    ProjectName::new("demo").unwrap()
}

fn svc(n: &str) -> ServiceName {
    ServiceName::new(n).unwrap()
}

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

fn labels(n: &str, role: &str, hash: &str) -> BTreeMap<String, String> {
    [
        (LABEL_PROJECT.to_string(), "demo".to_string()),
        (LABEL_SERVICE.to_string(), n.to_string()),
        (LABEL_ROLE.to_string(), role.to_string()),
        (LABEL_SPEC_HASH.to_string(), hash.to_string()),
    ]
    .into()
}

fn desired(n: &str, hash: &str) -> ServiceStack {
    ServiceStack {
        service: svc(n),
        app: ContainerSpec {
            name: format!("demo-{n}"),
            image: format!("iac/demo-{n}:{hash}"),
            cmd: vec![],
            env: [("PORT".to_string(), "8080".to_string())].into(),
            labels: labels(n, "app", hash),
            network: NetworkMode::Container {
                name: format!("demo-{n}-envoy"),
            },
            mounts: vec![],
            ports: vec![],
            stop_timeout_secs: 10,
            privileges: Default::default(),
            limits: Default::default(),
            restart: Default::default(),
        },
        envoy: ContainerSpec {
            name: format!("demo-{n}-envoy"),
            image: "iac/envoy:1.40.0".into(),
            cmd: vec!["envoy".into(), "-c".into(), "/etc/envoy/envoy.yaml".into()],
            env: BTreeMap::new(),
            labels: labels(n, "envoy", hash),
            network: NetworkMode::Network {
                name: NET.into(),
                aliases: vec![n.to_string()],
            },
            mounts: vec![Mount {
                source: "/state/envoy.yaml".into(),
                target: "/etc/envoy/envoy.yaml".into(),
                read_only: true,
            }],
            // Pinned, as the provisioner would pin an engine-chosen port: the mock engine is
            // not the host.
            ports: vec![PortPublish {
                container_port: 15000,
                host_ip: "127.0.0.1".into(),
                host_port: Some(39999),
            }],
            stop_timeout_secs: 5,
            privileges: Default::default(),
            limits: Default::default(),
            restart: Default::default(),
        },
        spec_hash: hash.into(),
        replicas: 1,
        pod_filter: None,
        egress: Default::default(),
    }
}

fn stack(services: Vec<ServiceStack>, keep: &[&str]) -> Stack {
    Stack {
        project: project(),
        network: NetworkSpec {
            name: NET.into(),
            labels: [(LABEL_PROJECT.to_string(), "demo".to_string())].into(),
        },
        services,
        keep: keep.iter().map(|k| svc(k)).collect(),
        repair: Default::default(),
        sandbox: None,
    }
}

fn observed(name: &str, n: &str, role: &str, hash: &str, port: Option<u16>) -> Observed {
    Observed {
        id: format!("id-{name}"),
        name: name.into(),
        service: Some(n.into()),
        role: Role::from_label(role),
        spec_hash: Some(hash.into()),
        image: "img".into(),
        state: "running".into(),
        published: port.map(|p| vec![(15000, addr(p))]).unwrap_or_default(),
        sandbox: None,
    }
}

fn running_pair(n: &str, hash: &str, port: u16) -> Vec<Observed> {
    vec![
        observed(&format!("demo-{n}"), n, "app", hash, None),
        observed(&format!("demo-{n}-envoy"), n, "envoy", hash, Some(port)),
    ]
}

fn net_info(id: &str) -> NetworkInfo {
    NetworkInfo {
        id: id.into(),
        name: NET.into(),
        labels: BTreeMap::new(),
    }
}

fn config() -> DockerProvisionerConfig {
    DockerProvisionerConfig {
        stop_timeout: Duration::from_secs(3),
        parallelism: 1,
        health_deadline: Duration::from_secs(7),
        // The decisions under test, not the limits (which would rehash every spec).
        limits: ContainerLimits::unlimited(),
        ..Default::default()
    }
}

fn network_exists(e: &mut MockEngine) {
    e.expect_find_networks()
        .withf(|n| n == NET)
        .returning(|_| Ok(vec![net_info("net1")]));
}

fn lists(e: &mut MockEngine, containers: Vec<Observed>) {
    e.expect_list_containers()
        .withf(|p| p.as_str() == "demo")
        .returning(move |_| Ok(containers.clone()));
}

fn stop_remove(e: &mut MockEngine, seq: &mut Sequence, id: &str) {
    let a = id.to_string();
    let b = id.to_string();
    e.expect_stop_container()
        .withf(move |i, t| i == a && *t == 3)
        .times(1)
        .in_sequence(seq)
        .returning(|_, _| Ok(()));
    e.expect_remove_container()
        .withf(move |i| i == b)
        .times(1)
        .in_sequence(seq)
        .returning(|_| Ok(()));
}

fn report(n: &str, state: HealthState) -> HealthReport {
    HealthReport::new(
        svc(n),
        state,
        None,
        format!("{} said so", state.as_str()),
        2,
    )
}

fn gate_never() -> Arc<dyn HealthProber> {
    let mut g = MockHealthProber::new();
    g.expect_check().never();
    Arc::new(g)
}

fn gate_says(n: &'static str, at: SocketAddr, state: HealthState) -> Arc<dyn HealthProber> {
    let mut g = MockHealthProber::new();
    g.expect_check()
        .withf(move |t| {
            t.addr == at && t.service.as_str() == n && t.deadline == Duration::from_secs(7)
        })
        .times(1)
        .returning(move |_| report(n, state));
    Arc::new(g)
}

fn provisioner(e: MockEngine) -> DockerProvisioner {
    DockerProvisioner::with_engine(Arc::new(e), config())
}

/// Expects create+start of the canonical pair for `n` — the sidecar (the pod's namespace, on the
/// network) first, then the app in its namespace — returning ids `new-<n>-envoy` / `new-<n>`.
fn creates_pair(
    e: &mut MockEngine,
    seq: &mut Sequence,
    n: &'static str,
    temp_hash: Option<&'static str>,
) {
    let suffix = temp_hash.map(|h| format!("-next-{h}")).unwrap_or_default();
    let app_name = format!("demo-{n}{suffix}");
    let envoy_name = format!("demo-{n}-envoy{suffix}");
    let temp = temp_hash.is_some();
    e.expect_create_container()
        .withf(move |s| {
            s.name == envoy_name
                && match &s.network {
                    NetworkMode::Network { name, aliases } => {
                        name == NET
                            && if temp {
                                aliases.is_empty()
                            } else {
                                aliases == &[n.to_string()]
                            }
                    }
                    _ => false,
                }
        })
        .times(1)
        .in_sequence(seq)
        .returning(move |_| Ok(format!("new-{n}-envoy")));
    e.expect_start_container()
        .withf(move |i| i == format!("new-{n}-envoy"))
        .times(1)
        .in_sequence(seq)
        .returning(|_| Ok(()));
    e.expect_create_container()
        .withf(move |s| {
            s.name == app_name
                && s.network
                    == NetworkMode::Container {
                        name: format!("new-{n}-envoy"),
                    }
        })
        .times(1)
        .in_sequence(seq)
        .returning(move |_| Ok(format!("new-{n}")));
    e.expect_start_container()
        .withf(move |i| i == format!("new-{n}"))
        .times(1)
        .in_sequence(seq)
        .returning(|_| Ok(()));
}

fn port_of(e: &mut MockEngine, seq: &mut Sequence, id: &'static str, port: u16) {
    e.expect_published_port()
        .withf(move |i, p| i == id && *p == 15000)
        .times(1)
        .in_sequence(seq)
        .returning(move |_, _| Ok(Some(addr(port))));
}

#[tokio::test]
async fn create_starts_the_sidecar_then_the_app_and_creates_the_missing_network() {
    let mut e = MockEngine::new();
    let mut seq = Sequence::new();
    e.expect_find_networks()
        .times(1)
        .in_sequence(&mut seq)
        .returning(|_| Ok(vec![]));
    e.expect_create_network()
        .withf(|n| n.name == NET && n.labels.get(LABEL_PROJECT).map(String::as_str) == Some("demo"))
        .times(1)
        .in_sequence(&mut seq)
        .returning(|_| Ok("net1".into()));
    e.expect_find_networks()
        .times(1)
        .in_sequence(&mut seq)
        .returning(|_| Ok(vec![net_info("net1")]));
    e.expect_list_containers()
        .times(1)
        .in_sequence(&mut seq)
        .returning(|_| Ok(vec![]));
    creates_pair(&mut e, &mut seq, "web", None);
    port_of(&mut e, &mut seq, "new-web-envoy", 32001);
    let (events, mut rx) = Events::channel();
    let applied = provisioner(e)
        .apply(
            &stack(vec![desired("web", "h1")], &[]),
            gate_never(),
            &events,
        )
        .await
        .unwrap();
    assert_eq!(
        applied.services,
        vec![AppliedService {
            service: svc("web"),
            action: Action::Create,
            endpoint: Some(addr(32001)),
            edge: None,
            health: None,
            error: None
        }]
    );
    assert!(applied.removed.is_empty());
    drop(events);
    let mut msgs = Vec::new();
    while let Some(ev) = rx.recv().await {
        msgs.push(ev.message);
    }
    assert!(
        msgs.iter().any(|m| m.contains("created network iacnet-t")),
        "{msgs:?}"
    );
    assert!(
        msgs.iter().any(|m| m.contains("127.0.0.1:32001")),
        "{msgs:?}"
    );
}

#[tokio::test]
async fn unchanged_service_is_not_touched_and_reports_its_endpoint_from_the_listing() {
    let mut e = MockEngine::new();
    network_exists(&mut e);
    lists(&mut e, running_pair("web", "h1", 32002));
    // No create/start/stop/remove expectations, and none for an inspect either: the endpoint
    // comes from the listing the plan was made from. Any other call panics.
    let applied = provisioner(e)
        .apply(
            &stack(vec![desired("web", "h1")], &[]),
            gate_never(),
            &Events::discard(),
        )
        .await
        .unwrap();
    assert_eq!(applied.services[0].action, Action::Unchanged);
    assert_eq!(applied.services[0].endpoint, Some(addr(32002)));
    assert_eq!(applied.services[0].error, None);
}

#[tokio::test]
async fn healthy_replacement_swaps_alias_then_removes_old_then_renames() {
    let mut e = MockEngine::new();
    network_exists(&mut e);
    lists(&mut e, running_pair("web", "h1", 32003));
    let mut seq = Sequence::new();
    port_of(&mut e, &mut seq, "id-demo-web-envoy", 32003);
    creates_pair(&mut e, &mut seq, "web", Some("h2"));
    port_of(&mut e, &mut seq, "new-web-envoy", 32010);
    e.expect_disconnect_network()
        .withf(|n, c| n == NET && c == "new-web-envoy")
        .times(1)
        .in_sequence(&mut seq)
        .returning(|_, _| Ok(()));
    e.expect_connect_network()
        .withf(|n, c, a| n == NET && c == "new-web-envoy" && a == &["web".to_string()])
        .times(1)
        .in_sequence(&mut seq)
        .returning(|_, _, _| Ok(()));
    stop_remove(&mut e, &mut seq, "id-demo-web");
    stop_remove(&mut e, &mut seq, "id-demo-web-envoy");
    e.expect_rename_container()
        .withf(|i, n| i == "new-web" && n == "demo-web")
        .times(1)
        .in_sequence(&mut seq)
        .returning(|_, _| Ok(()));
    e.expect_rename_container()
        .withf(|i, n| i == "new-web-envoy" && n == "demo-web-envoy")
        .times(1)
        .in_sequence(&mut seq)
        .returning(|_, _| Ok(()));
    port_of(&mut e, &mut seq, "new-web-envoy", 32011);
    let gate = gate_says("web", addr(32010), HealthState::Serving);
    let applied = provisioner(e)
        .apply(
            &stack(vec![desired("web", "h2")], &[]),
            gate,
            &Events::discard(),
        )
        .await
        .unwrap();
    let a = &applied.services[0];
    assert_eq!(a.action, Action::Replace);
    assert_eq!(
        a.endpoint,
        Some(addr(32011)),
        "the endpoint is read back after the swap"
    );
    assert_eq!(
        a.health.as_ref().map(|h| h.state),
        Some(HealthState::Serving)
    );
    assert_eq!(a.error, None);
}

#[tokio::test]
async fn unhealthy_replacement_rolls_back_and_keeps_the_old_pair() {
    let mut e = MockEngine::new();
    network_exists(&mut e);
    lists(&mut e, running_pair("web", "h1", 32004));
    let mut seq = Sequence::new();
    port_of(&mut e, &mut seq, "id-demo-web-envoy", 32004);
    creates_pair(&mut e, &mut seq, "web", Some("h2"));
    port_of(&mut e, &mut seq, "new-web-envoy", 32020);
    // Only the new pair goes, the app first; the old pair (id-demo-web*) is never stopped.
    stop_remove(&mut e, &mut seq, "new-web");
    stop_remove(&mut e, &mut seq, "new-web-envoy");
    e.expect_disconnect_network().never();
    e.expect_rename_container().never();
    let gate = gate_says("web", addr(32020), HealthState::NotServing);
    let applied = provisioner(e)
        .apply(
            &stack(vec![desired("web", "h2")], &[]),
            gate,
            &Events::discard(),
        )
        .await
        .unwrap();
    let a = &applied.services[0];
    assert_eq!(a.action, Action::RolledBack);
    assert_eq!(
        a.endpoint,
        Some(addr(32004)),
        "still the old pair's endpoint"
    );
    assert_eq!(a.health, Some(report("web", HealthState::NotServing)));
    assert_eq!(a.error, None);
}

#[tokio::test]
async fn replacement_of_a_half_pair_removes_only_what_exists() {
    let mut e = MockEngine::new();
    network_exists(&mut e);
    // Only the sidecar runs (its app vanished) → replace.
    lists(
        &mut e,
        vec![observed(
            "demo-web-envoy",
            "web",
            "envoy",
            "h1",
            Some(32005),
        )],
    );
    let mut seq = Sequence::new();
    port_of(&mut e, &mut seq, "id-demo-web-envoy", 32005);
    creates_pair(&mut e, &mut seq, "web", Some("h1"));
    port_of(&mut e, &mut seq, "new-web-envoy", 32030);
    e.expect_disconnect_network()
        .times(1)
        .in_sequence(&mut seq)
        .returning(|_, _| Ok(()));
    e.expect_connect_network()
        .times(1)
        .in_sequence(&mut seq)
        .returning(|_, _, _| Ok(()));
    stop_remove(&mut e, &mut seq, "id-demo-web-envoy");
    e.expect_rename_container()
        .times(2)
        .in_sequence(&mut seq)
        .returning(|_, _| Ok(()));
    port_of(&mut e, &mut seq, "new-web-envoy", 32031);
    let gate = gate_says("web", addr(32030), HealthState::Serving);
    let applied = provisioner(e)
        .apply(
            &stack(vec![desired("web", "h1")], &[]),
            gate,
            &Events::discard(),
        )
        .await
        .unwrap();
    assert_eq!(applied.services[0].action, Action::Repair);
    assert_eq!(applied.services[0].endpoint, Some(addr(32031)));
}

#[tokio::test]
async fn failed_swap_removes_the_new_pair_and_keeps_the_old() {
    let mut e = MockEngine::new();
    network_exists(&mut e);
    lists(&mut e, running_pair("web", "h1", 32006));
    let mut seq = Sequence::new();
    port_of(&mut e, &mut seq, "id-demo-web-envoy", 32006);
    creates_pair(&mut e, &mut seq, "web", Some("h2"));
    port_of(&mut e, &mut seq, "new-web-envoy", 32040);
    e.expect_disconnect_network()
        .times(1)
        .in_sequence(&mut seq)
        .returning(|_, _| Ok(()));
    e.expect_connect_network()
        .times(1)
        .in_sequence(&mut seq)
        .returning(|n, c, _| {
            Err(EngineError::new(
                format!("connect container {c} to network {n}"),
                Some(500),
                "boom",
            ))
        });
    stop_remove(&mut e, &mut seq, "new-web");
    stop_remove(&mut e, &mut seq, "new-web-envoy");
    let gate = gate_says("web", addr(32040), HealthState::Serving);
    let applied = provisioner(e)
        .apply(
            &stack(vec![desired("web", "h2")], &[]),
            gate,
            &Events::discard(),
        )
        .await
        .unwrap();
    let a = &applied.services[0];
    assert_eq!(a.action, Action::Replace);
    let err = a.error.as_deref().unwrap();
    assert!(
        err.contains("connect container new-web-envoy to network iacnet-t: boom"),
        "{err}"
    );
    assert!(err.contains("old pair is kept"), "{err}");
    assert_eq!(a.endpoint, Some(addr(32006)));
}

#[tokio::test]
async fn failed_create_removes_the_half_created_pair_and_peers_continue() {
    let mut e = MockEngine::new();
    network_exists(&mut e);
    lists(&mut e, vec![]);
    let mut seq = Sequence::new();
    // api: the sidecar created and started, the app's creation fails → the sidecar is removed
    // again.
    e.expect_create_container()
        .withf(|s| s.name == "demo-api-envoy")
        .times(1)
        .in_sequence(&mut seq)
        .returning(|_| Ok("new-api-envoy".into()));
    e.expect_start_container()
        .withf(|i| i == "new-api-envoy")
        .times(1)
        .in_sequence(&mut seq)
        .returning(|_| Ok(()));
    e.expect_create_container()
        .withf(|s| s.name == "demo-api")
        .times(1)
        .in_sequence(&mut seq)
        .returning(|s| {
            Err(EngineError::new(
                format!("create container {} (image {})", s.name, s.image),
                Some(404),
                "No such image: iac/demo-api:h1",
            ))
        });
    stop_remove(&mut e, &mut seq, "new-api-envoy");
    // web: created normally.
    creates_pair(&mut e, &mut seq, "web", None);
    port_of(&mut e, &mut seq, "new-web-envoy", 32050);
    let s = stack(vec![desired("api", "h1"), desired("web", "h1")], &[]);
    let applied = provisioner(e)
        .apply(&s, gate_never(), &Events::discard())
        .await
        .unwrap();
    let api = &applied.services[0];
    assert_eq!(api.service.as_str(), "api");
    let err = api.error.as_deref().unwrap();
    assert!(
        err.contains("create container demo-api ") && err.contains("No such image"),
        "{err}"
    );
    assert!(err.contains("removed what was created"), "{err}");
    assert_eq!(applied.services[1].endpoint, Some(addr(32050)));
    assert_eq!(applied.services[1].error, None);
}

#[tokio::test]
async fn services_not_in_the_stack_are_removed_app_first_unless_kept() {
    let mut e = MockEngine::new();
    network_exists(&mut e);
    let mut all = running_pair("web", "h1", 32060);
    all.extend(running_pair("old", "h0", 32061));
    all.extend(running_pair("kept", "h0", 32062));
    lists(&mut e, all);
    let mut seq = Sequence::new();
    stop_remove(&mut e, &mut seq, "id-demo-old");
    stop_remove(&mut e, &mut seq, "id-demo-old-envoy");
    let applied = provisioner(e)
        .apply(
            &stack(vec![desired("web", "h1")], &["kept"]),
            gate_never(),
            &Events::discard(),
        )
        .await
        .unwrap();
    assert_eq!(applied.removed, vec![svc("old")]);
    let by: BTreeMap<&str, (Action, Option<SocketAddr>)> = applied
        .services
        .iter()
        .map(|a| (a.service.as_str(), (a.action, a.endpoint)))
        .collect();
    assert_eq!(by["web"], (Action::Unchanged, Some(addr(32060))));
    assert_eq!(by["kept"], (Action::Unchanged, Some(addr(32062))));
    assert_eq!(by["old"], (Action::Remove, None));
}

#[tokio::test]
async fn leftover_next_containers_are_removed_before_acting() {
    let mut e = MockEngine::new();
    network_exists(&mut e);
    let mut all = running_pair("web", "h1", 32070);
    all.push(observed("demo-web-next-h9", "web", "app", "h9", None));
    all.push(observed(
        "demo-web-envoy-next-h9",
        "web",
        "envoy",
        "h9",
        None,
    ));
    lists(&mut e, all);
    let mut seq = Sequence::new();
    stop_remove(&mut e, &mut seq, "id-demo-web-next-h9");
    stop_remove(&mut e, &mut seq, "id-demo-web-envoy-next-h9");
    let applied = provisioner(e)
        .apply(
            &stack(vec![desired("web", "h1")], &[]),
            gate_never(),
            &Events::discard(),
        )
        .await
        .unwrap();
    assert_eq!(applied.services[0].action, Action::Unchanged);
    assert_eq!(applied.services[0].error, None);
}

#[tokio::test]
async fn an_unreachable_engine_fails_the_whole_apply() {
    let mut e = MockEngine::new();
    e.expect_find_networks().returning(|n| {
        Err(EngineError::new(
            format!("look up network {n}"),
            None,
            "connection refused",
        ))
    });
    let err = provisioner(e)
        .apply(
            &stack(vec![desired("web", "h1")], &[]),
            gate_never(),
            &Events::discard(),
        )
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "docker engine: look up network iacnet-t: connection refused"
    );
}

#[tokio::test]
async fn a_concurrently_created_duplicate_network_is_dropped() {
    let mut e = MockEngine::new();
    let mut seq = Sequence::new();
    e.expect_find_networks()
        .times(1)
        .in_sequence(&mut seq)
        .returning(|_| Ok(vec![]));
    e.expect_create_network()
        .times(1)
        .in_sequence(&mut seq)
        .returning(|_| Ok("net2".into()));
    e.expect_find_networks()
        .times(1)
        .in_sequence(&mut seq)
        .returning(|_| Ok(vec![net_info("net2"), net_info("net1")]));
    e.expect_remove_network()
        .withf(|i| i == "net2")
        .times(1)
        .in_sequence(&mut seq)
        .returning(|_| Ok(()));
    e.expect_list_containers()
        .times(1)
        .in_sequence(&mut seq)
        .returning(|_| Ok(vec![]));
    let applied = provisioner(e)
        .apply(&stack(vec![], &[]), gate_never(), &Events::discard())
        .await
        .unwrap();
    assert_eq!(applied, Applied::default());
}

#[tokio::test]
async fn diff_decides_without_acting() {
    let mut e = MockEngine::new();
    let mut all = running_pair("web", "h1", 1);
    all.extend(running_pair("old", "h0", 2));
    lists(&mut e, all);
    let changes = provisioner(e)
        .diff(&stack(
            vec![desired("web", "h2"), desired("api", "h1")],
            &[],
        ))
        .await
        .unwrap();
    let got: Vec<(&str, Action)> = changes
        .iter()
        .map(|c| (c.service.as_str(), c.action))
        .collect();
    assert_eq!(
        got,
        [
            ("web", Action::Replace),
            ("api", Action::Create),
            ("old", Action::Remove)
        ]
    );
}

#[tokio::test]
async fn destroy_removes_envoys_first_then_networks_and_is_idempotent() {
    let mut e = MockEngine::new();
    let mut seq = Sequence::new();
    let mut all = running_pair("web", "h1", 1);
    all.push(observed("demo-api", "api", "app", "h1", None));
    e.expect_list_containers()
        .times(1)
        .in_sequence(&mut seq)
        .returning(move |_| Ok(all.clone()));
    stop_remove(&mut e, &mut seq, "id-demo-api");
    stop_remove(&mut e, &mut seq, "id-demo-web");
    stop_remove(&mut e, &mut seq, "id-demo-web-envoy");
    e.expect_list_networks()
        .times(1)
        .in_sequence(&mut seq)
        .returning(|_| {
            Ok(vec![
                net_info("net1"),
                NetworkInfo {
                    id: "shared".into(),
                    name: "iacnet".into(),
                    labels: BTreeMap::new(),
                },
            ])
        });
    e.expect_remove_network()
        .withf(|i| i == "net1")
        .times(1)
        .in_sequence(&mut seq)
        .returning(|_| Ok(()));
    e.expect_remove_network()
        .withf(|i| i == "shared")
        .times(1)
        .in_sequence(&mut seq)
        .returning(|i| {
            Err(EngineError::new(
                format!("remove network {i}"),
                Some(403),
                "network iacnet has active endpoints",
            ))
        });
    e.expect_list_containers()
        .times(1)
        .in_sequence(&mut seq)
        .returning(|_| Ok(vec![]));
    e.expect_list_networks()
        .times(1)
        .in_sequence(&mut seq)
        .returning(|_| Ok(vec![]));
    let p = provisioner(e);
    let removed = p.destroy(&project(), &Events::discard()).await.unwrap();
    assert_eq!(
        removed,
        [
            "container demo-api",
            "container demo-web",
            "container demo-web-envoy",
            "network iacnet-t"
        ]
    );
    assert!(
        p.destroy(&project(), &Events::discard())
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn destroy_reports_what_it_could_not_remove() {
    let mut e = MockEngine::new();
    lists(&mut e, vec![observed("demo-web", "web", "app", "h1", None)]);
    e.expect_stop_container().returning(|_, _| Ok(()));
    e.expect_remove_container().returning(|i| {
        Err(EngineError::new(
            format!("remove container {i}"),
            Some(500),
            "device busy",
        ))
    });
    e.expect_list_networks().returning(|_| Ok(vec![]));
    let err = provisioner(e)
        .destroy(&project(), &Events::discard())
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("remove container id-demo-web: device busy"),
        "{err}"
    );
    assert!(err.contains("project demo"), "{err}");
}

#[tokio::test]
async fn running_lists_canonical_app_containers_with_their_sidecars_endpoints() {
    let mut e = MockEngine::new();
    let mut all = running_pair("web", "h1", 32080);
    all.push(observed(
        "demo-web-next-h2",
        "web",
        "app",
        "h2",
        Some(32081),
    ));
    let mut exited = observed("demo-api", "api", "app", "h3", None);
    exited.state = "exited".into();
    all.push(exited);
    let mut sidecar_down = observed("demo-api-envoy", "api", "envoy", "h3", None);
    sidecar_down.state = "exited".into();
    all.push(sidecar_down);
    let mut lonely = running_pair("db", "h4", 32090);
    lonely.truncate(1);
    all.extend(lonely);
    lists(&mut e, all);
    let running = provisioner(e).running(&project()).await.unwrap();
    assert_eq!(
        running,
        vec![
            RunningService {
                service: svc("api"),
                endpoint: None,
                edge: None,
                spec_hash: "h3".into(),
                image: "img".into(),
                state: "exited (sidecar exited)".into(),
                sandbox: None,
            },
            RunningService {
                service: svc("db"),
                endpoint: None,
                edge: None,
                spec_hash: "h4".into(),
                image: "img".into(),
                state: "running (sidecar missing)".into(),
                sandbox: None,
            },
            RunningService {
                service: svc("web"),
                endpoint: Some(addr(32080)),
                edge: None,
                spec_hash: "h1".into(),
                image: "img".into(),
                state: "running".into(),
                sandbox: None,
            },
        ]
    );
}

#[test]
fn create_body_maps_the_spec() {
    let d = desired("web", "h1");
    let app = create_body(&d.app);
    assert_eq!(app.image.as_deref(), Some("iac/demo-web:h1"));
    assert_eq!(app.cmd, None, "empty cmd keeps the image's CMD");
    assert_eq!(app.env, Some(vec!["PORT=8080".to_string()]));
    assert_eq!(app.labels.as_ref().unwrap()[LABEL_SPEC_HASH], "h1");
    assert_eq!(app.stop_timeout, Some(10));
    let hc = app.host_config.unwrap();
    assert_eq!(hc.network_mode.as_deref(), Some("container:demo-web-envoy"));
    assert!(
        app.networking_config.is_none()
            && hc.port_bindings.is_none()
            && app.exposed_ports.is_none()
    );
    assert_eq!(hc.restart_policy, None, "the spec's default: no policy");

    let envoy = create_body(&d.envoy);
    assert_eq!(envoy.exposed_ports, Some(vec!["15000/tcp".to_string()]));
    let hc = envoy.host_config.unwrap();
    assert_eq!(hc.network_mode.as_deref(), Some(NET));
    assert_eq!(
        hc.port_bindings.unwrap()["15000/tcp"],
        Some(vec![PortBinding {
            host_ip: Some("127.0.0.1".into()),
            host_port: Some("39999".into())
        }])
    );
    let eps = envoy.networking_config.unwrap().endpoints_config.unwrap();
    assert_eq!(eps[NET].aliases, Some(vec!["web".to_string()]));
    let m = &hc.mounts.unwrap()[0];
    assert_eq!(
        (m.source.as_deref(), m.target.as_deref(), m.typ, m.read_only),
        (
            Some("/state/envoy.yaml"),
            Some("/etc/envoy/envoy.yaml"),
            Some(MountType::BIND),
            Some(true)
        )
    );
    assert_eq!(envoy.cmd.unwrap()[0], "envoy");

    let mut engine_picks = d.envoy.clone();
    engine_picks.ports[0].host_port = None;
    engine_picks.network = NetworkMode::Network {
        name: NET.into(),
        aliases: vec![],
    };
    engine_picks.restart = iac_core::RestartPolicy::UnlessStopped;
    let body = create_body(&engine_picks);
    let hc = body.host_config.unwrap();
    assert_eq!(
        hc.port_bindings.unwrap()["15000/tcp"].as_ref().unwrap()[0]
            .host_port
            .as_deref(),
        Some("")
    );
    assert_eq!(
        hc.restart_policy.and_then(|r| r.name),
        Some(bollard::models::RestartPolicyNameEnum::UNLESS_STOPPED)
    );
    assert_eq!(
        body.networking_config.unwrap().endpoints_config.unwrap()[NET].aliases,
        None
    );
}

#[test]
fn free_ports_are_pinned_where_the_engine_would_pick() {
    let mut ports = vec![
        PortPublish {
            container_port: 15000,
            host_ip: "127.0.0.1".into(),
            host_port: None,
        },
        PortPublish {
            container_port: 15080,
            host_ip: "127.0.0.1".into(),
            host_port: Some(8081),
        },
        PortPublish {
            container_port: 15090,
            host_ip: "not-an-address".into(),
            host_port: None,
        },
    ];
    pin_free_ports(&mut ports);
    let pinned = ports[0].host_port.expect("a free loopback port");
    assert!(pinned > 0);
    std::net::TcpListener::bind(("127.0.0.1", pinned)).expect("and it is free");
    assert_eq!(ports[1].host_port, Some(8081), "a chosen port stays");
    assert_eq!(ports[2].host_port, None, "left to the engine");
    let taken = EngineError::new(
        "start container x",
        Some(500),
        "driver failed programming external connectivity on endpoint x: Bind for 127.0.0.1:40000 failed: port is already allocated",
    );
    assert!(port_taken(&taken));
    assert!(!port_taken(&EngineError::new("start", Some(500), "boom")));
}

#[test]
fn a_name_held_by_a_stranger_is_said_plainly() {
    let e = EngineError::new(
        "create container demo-web",
        Some(409),
        "Conflict. The container name \"/demo-web\" is already in use by container \"abc\".",
    );
    let said = name_taken(e, "demo-web", "demo").message;
    assert!(
        said.starts_with(
            "a container named demo-web already exists and is not one iac manages for project demo"
        ) && said.contains("iac never removes it")
            && said.contains("already in use by container"),
        "{said}"
    );
    let other = EngineError::new("create container demo-web", Some(409), "something else");
    assert_eq!(name_taken(other.clone(), "demo-web", "demo"), other);
}

#[tokio::test]
async fn a_sidecar_whose_pinned_port_was_taken_is_made_again() {
    let mut e = MockEngine::new();
    network_exists(&mut e);
    lists(&mut e, vec![]);
    let mut seq = Sequence::new();
    e.expect_create_container()
        .withf(|s| s.name == "demo-web-envoy")
        .times(1)
        .in_sequence(&mut seq)
        .returning(|_| Ok("first-envoy".into()));
    e.expect_start_container()
        .withf(|i| i == "first-envoy")
        .times(1)
        .in_sequence(&mut seq)
        .returning(|i| {
            Err(EngineError::new(
                format!("start container {i}"),
                Some(500),
                "Bind for 127.0.0.1:39999 failed: port is already allocated",
            ))
        });
    e.expect_remove_container()
        .withf(|i| i == "first-envoy")
        .times(1)
        .in_sequence(&mut seq)
        .returning(|_| Ok(()));
    creates_pair(&mut e, &mut seq, "web", None);
    port_of(&mut e, &mut seq, "new-web-envoy", 32001);
    let applied = provisioner(e)
        .apply(
            &stack(vec![desired("web", "h1")], &[]),
            gate_never(),
            &Events::discard(),
        )
        .await
        .unwrap();
    assert_eq!(applied.services[0].error, None);
    assert_eq!(applied.services[0].endpoint, Some(addr(32001)));
}

#[test]
fn create_body_hardens_and_marks_the_container_as_iacs() {
    let mut d = desired("web", "h1");
    let body = create_body(&d.app);
    let hc = body.host_config.as_ref().unwrap();
    assert_eq!(
        body.labels.as_ref().unwrap()[LABEL_MANAGED],
        "iac",
        "set at create time even when the spec lacks it"
    );
    assert!(!d.app.labels.contains_key(LABEL_MANAGED));
    assert_eq!(
        (
            &hc.cap_drop,
            &hc.cap_add,
            &hc.security_opt,
            hc.pids_limit,
            hc.memory
        ),
        (&None, &None, &None, None, None),
        "a spec without privileges/limits leaves the engine's defaults"
    );
    d.app.privileges = iac_core::plan::app_privileges();
    d.app.limits = iac_core::Limits {
        pids: Some(64),
        memory_bytes: Some(128 << 20),
    };
    let hc = create_body(&d.app).host_config.unwrap();
    assert_eq!(hc.cap_drop, Some(vec!["ALL".to_string()]));
    assert_eq!(
        hc.cap_add,
        Some(vec!["KILL".into(), "SETGID".into(), "SETUID".into()])
    );
    assert_eq!(
        hc.security_opt,
        Some(vec!["no-new-privileges:true".to_string()])
    );
    assert_eq!(hc.pids_limit, Some(64));
    assert_eq!(hc.memory, Some(128 << 20));
    assert_eq!(hc.memory_swap, Some(128 << 20), "no swap beyond the limit");
}

#[test]
fn only_iac_objects_of_the_project_are_selected() {
    let f = label_filter(&project());
    assert_eq!(
        f["label"],
        vec!["iac.managed-by=iac".to_string(), "iac.project=demo".into()]
    );
}

fn filtered(mut d: ServiceStack) -> ServiceStack {
    d.pod_filter = Some(PodFilter {
        table: "iac_pod".into(),
        inbound_port: 15000,
    });
    d
}

/// Applies a stack of one service `web` whose pair installs the pod filter.
async fn apply_filtered_web(e: MockEngine) -> Applied {
    provisioner(e)
        .apply(
            &stack(vec![filtered(desired("web", "h1"))], &[]),
            gate_never(),
            &Events::discard(),
        )
        .await
        .unwrap()
}

/// An engine on which `web` is created from nothing: its network exists, no container does, its
/// sidecar is created and started (in the returned sequence), and its app is created while the
/// sidecar's filter is awaited (in no particular order with that wait). Starting the app is the
/// test's to expect ([`starts_web_app`]): only after the filter is confirmed.
fn creating_web() -> (MockEngine, Sequence) {
    let mut e = MockEngine::new();
    network_exists(&mut e);
    lists(&mut e, vec![]);
    let mut seq = Sequence::new();
    e.expect_create_container()
        .withf(|s| s.name == "demo-web-envoy")
        .times(1)
        .in_sequence(&mut seq)
        .returning(|_| Ok("new-web-envoy".into()));
    e.expect_start_container()
        .withf(|i| i == "new-web-envoy")
        .times(1)
        .in_sequence(&mut seq)
        .returning(|_| Ok(()));
    e.expect_create_container()
        .withf(|s| {
            s.name == "demo-web"
                && s.network
                    == NetworkMode::Container {
                        name: "new-web-envoy".into(),
                    }
        })
        .times(1)
        .returning(|_| Ok("new-web".into()));
    (e, seq)
}

/// The app's start, after the filter is in.
fn starts_web_app(e: &mut MockEngine, seq: &mut Sequence) {
    e.expect_start_container()
        .withf(|i| i == "new-web")
        .times(1)
        .in_sequence(seq)
        .returning(|_| Ok(()));
}

/// The sidecar's log, followed for the filter line: answers `r` once.
fn log_says(e: &mut MockEngine, seq: &mut Sequence, r: Result<LogWait, EngineError>) {
    let r = std::sync::Mutex::new(Some(r));
    e.expect_wait_for_log_line()
        .withf(|id, needle| {
            id == "new-web-envoy" && needle == "iac-sidecar: pod filter installed: "
        })
        .times(1)
        .in_sequence(seq)
        .returning(move |_, _| r.lock().unwrap().take().unwrap());
}

#[tokio::test]
async fn a_pair_counts_as_started_only_once_its_sidecar_says_the_filter_is_in() {
    let (mut e, mut seq) = creating_web();
    log_says(
        &mut e,
        &mut seq,
        Ok(LogWait::Found(
            "iac-sidecar: pod filter installed: inbound tcp/15000 only".into(),
        )),
    );
    starts_web_app(&mut e, &mut seq);
    port_of(&mut e, &mut seq, "new-web-envoy", 32001);
    // No exec expectation: no process is started in the sidecar to check.
    let applied = apply_filtered_web(e).await;
    assert_eq!(applied.services[0].error, None);
    assert_eq!(applied.services[0].endpoint, Some(addr(32001)));
}

#[tokio::test]
async fn an_engine_that_cannot_read_logs_back_is_asked_through_nft() {
    let (mut e, mut seq) = creating_web();
    log_says(
        &mut e,
        &mut seq,
        Err(EngineError::new(
            "following the log of container new-web-envoy",
            Some(501),
            "configured logging driver does not support reading",
        )),
    );
    let argv = |a: &Vec<String>| a.join(" ") == "nft list table inet iac_pod";
    // Not yet (the script is still loading it), then there.
    e.expect_exec()
        .withf(move |id, a| id == "new-web-envoy" && argv(a))
        .times(1)
        .in_sequence(&mut seq)
        .returning(|_, _| {
            Ok(ExecOutput {
                exit_code: Some(1),
                output: "Error: No such file or directory".into(),
            })
        });
    e.expect_exec()
        .withf(move |id, a| id == "new-web-envoy" && argv(a))
        .times(1)
        .in_sequence(&mut seq)
        .returning(|_, _| {
            Ok(ExecOutput {
                exit_code: Some(0),
                output: "table inet iac_pod {\n chain input {\n tcp dport 15000 accept\n".into(),
            })
        });
    starts_web_app(&mut e, &mut seq);
    port_of(&mut e, &mut seq, "new-web-envoy", 32001);
    let applied = apply_filtered_web(e).await;
    assert_eq!(applied.services[0].error, None);
    assert_eq!(applied.services[0].endpoint, Some(addr(32001)));
}

#[tokio::test]
async fn a_sidecar_that_dies_before_filtering_takes_its_pair_down() {
    let (mut e, mut seq) = creating_web();
    log_says(
        &mut e,
        &mut seq,
        Ok(LogWait::Ended(
            "iac-sidecar: nft could not install the pod's packet filter (the sidecar needs CAP_NET_ADMIN)"
                .into(),
        )),
    );
    // The app was created but never started; it goes first, then its sidecar.
    e.expect_start_container().withf(|i| i == "new-web").never();
    stop_remove(&mut e, &mut seq, "new-web");
    stop_remove(&mut e, &mut seq, "new-web-envoy");
    let applied = apply_filtered_web(e).await;
    let err = applied.services[0].error.as_deref().unwrap();
    assert!(
        err.contains("stopped before installing the pod's packet filter")
            && err.contains("docker logs demo-web-envoy")
            && err.contains("needs CAP_NET_ADMIN")
            && err.contains("removed what was created"),
        "{err}"
    );
}

#[tokio::test]
async fn a_filter_that_does_not_admit_the_mesh_port_is_refused() {
    let (mut e, mut seq) = creating_web();
    log_says(
        &mut e,
        &mut seq,
        Ok(LogWait::Found(
            "iac-sidecar: pod filter installed: inbound tcp/8080 only".into(),
        )),
    );
    e.expect_start_container().withf(|i| i == "new-web").never();
    stop_remove(&mut e, &mut seq, "new-web");
    stop_remove(&mut e, &mut seq, "new-web-envoy");
    let applied = apply_filtered_web(e).await;
    let err = applied.services[0].error.as_deref().unwrap();
    assert!(err.contains("does not admit tcp dport 15000"), "{err}");
}

#[test]
fn ipv4_bindings_are_preferred() {
    assert_eq!(
        pick(vec!["[::1]:5".parse().unwrap(), addr(6)]),
        Some(addr(6))
    );
}

#[tokio::test]
async fn an_unreachable_docker_host_is_named_in_the_error() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("no-engine.sock");
    for host in [
        sock.display().to_string(),
        format!("unix://{}", sock.display()),
    ] {
        let config = DockerProvisionerConfig {
            docker_host: Some(host.clone()),
            ..Default::default()
        };
        let err = DockerProvisioner::connect(config)
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(&host) && err.contains("expected a reachable Docker engine"),
            "{err}"
        );
    }
    let config = DockerProvisionerConfig {
        docker_host: Some("ftp://nowhere".into()),
        ..Default::default()
    };
    let err = DockerProvisioner::connect(config)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("ftp://nowhere"), "{err}");
}

#[test]
fn config_defaults_and_partial_toml() {
    let c: DockerProvisionerConfig = toml::from_str("health_deadline = \"5s\"").unwrap();
    assert_eq!(c.health_deadline, Duration::from_secs(5));
    assert_eq!(
        c.stop_timeout,
        DockerProvisionerConfig::default().stop_timeout
    );
    assert_eq!(c.docker_host, None);
    assert_eq!(c.limits, ContainerLimits::default());
    let c: DockerProvisionerConfig =
        toml::from_str("[limits]\napp_pids = 100\napp_memory_mib = 0").unwrap();
    assert_eq!(c.limits.app_pids, 100);
    assert_eq!(c.limits.app().memory_bytes, None, "0 = no limit");
    assert_eq!(c.limits.sidecar_pids, 256);
    let e = toml::from_str::<DockerProvisionerConfig>("[limits]\napp_pid = 1").unwrap_err();
    assert!(e.to_string().contains("app_pid"), "{e}");
}

#[tokio::test]
async fn destroy_saves_the_log_tails_of_app_and_sidecar_before_removing_them() {
    let mut e = MockEngine::new();
    let mut seq = Sequence::new();
    let pair = running_pair("web", "h1", 1);
    e.expect_list_containers()
        .times(1)
        .in_sequence(&mut seq)
        .returning(move |_| Ok(pair.clone()));
    // Both logs are read first (newest lines, one more than kept), then the removals.
    e.expect_log_tail()
        .withf(|i, lines, bytes| {
            i == "id-demo-web"
                && *lines == iac_core::history::LOG_TAIL_LINES + 1
                && *bytes == iac_core::history::LOG_TAIL_BYTES + 1
        })
        .times(1)
        .in_sequence(&mut seq)
        .returning(|_, _, _| {
            Ok((0..250)
                .map(|i| format!("app line {i}\n"))
                .collect::<String>())
        });
    e.expect_log_tail()
        .withf(|i, _, _| i == "id-demo-web-envoy")
        .times(1)
        .in_sequence(&mut seq)
        .returning(|_, _, _| {
            Err(EngineError::new(
                "reading the log",
                Some(501),
                "log driver none",
            ))
        });
    stop_remove(&mut e, &mut seq, "id-demo-web");
    stop_remove(&mut e, &mut seq, "id-demo-web-envoy");
    e.expect_list_networks()
        .times(1)
        .in_sequence(&mut seq)
        .returning(|_| Ok(vec![]));
    let p = provisioner(e);
    let (events, mut rx) = Events::channel();
    let (events, tails) = events.with_log_tails();
    p.destroy(&project(), &events).await.unwrap();
    let (got, left_out) = tails.take();
    assert_eq!(left_out, 0);
    assert_eq!(got.len(), 1, "the sidecar's log could not be read: {got:?}");
    let t = &got[0];
    assert_eq!(
        (
            t.service.as_str(),
            t.container.as_str(),
            t.role.as_str(),
            t.reason.as_str()
        ),
        ("web", "demo-web", "app", "destroyed")
    );
    assert_eq!(t.lines.len(), iac_core::history::LOG_TAIL_LINES);
    assert_eq!(t.lines.last().unwrap(), "app line 249");
    assert!(t.truncated);
    drop(events);
    let mut warned = false;
    while let Some(ev) = rx.recv().await {
        warned |= ev
            .message
            .contains("could not save the last log lines of demo-web-envoy")
            && ev.message.contains("log driver none");
    }
    assert!(
        warned,
        "the unreadable log is a warning, the destroy goes on"
    );
}

/// Keeper images: on destroy, every `iac/keeper:*` tag but the current agent's, old enough and
/// used by no container at all, is removed (never forced); one another project's keeper uses,
/// one just built, the current one and one the engine refuses (a container appeared) stay.
#[tokio::test]
async fn destroy_collects_keeper_images_no_container_uses() {
    use super::keeper::{KeeperSetup, keeper_tag};
    let dir = tempfile::tempdir().unwrap();
    let agent = dir.path().join("iac-agent");
    std::fs::write(&agent, b"the static agent").unwrap();
    let current = keeper_tag(b"the static agent");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let old = now - 3600;
    let mut e = MockEngine::new();
    e.expect_list_containers().returning(|_| Ok(vec![]));
    e.expect_list_networks().returning(|_| Ok(vec![]));
    let tag = |tag: &str, created: i64, last_tagged: Option<i64>| crate::engine::ImageTag {
        tag: tag.into(),
        created,
        last_tagged,
    };
    let tags = vec![
        tag(&current, old, None),
        tag("iac/keeper:aaaaaaaaaaaa", old, Some(old)),
        tag("iac/keeper:bbbbbbbbbbbb", old, None),
        tag("iac/keeper:cccccccccccc", now - 5, None),
        tag("iac/keeper:dddddddddddd", old, None),
        // Created long ago (or rebuilt from the cache), tagged again by a deploy just now:
        // about to be used, so not even asked about.
        tag("iac/keeper:eeeeeeeeeeee", old, Some(now - 5)),
    ];
    e.expect_image_tags()
        .withf(|r| r == "iac/keeper")
        .times(1)
        .returning(move |_| Ok(tags.clone()));
    e.expect_image_users().times(3).returning(|tag| {
        Ok(match tag {
            "iac/keeper:bbbbbbbbbbbb" => vec!["other_iac-keeper".to_string()],
            _ => vec![],
        })
    });
    let removed = Arc::new(std::sync::Mutex::new(Vec::new()));
    let r = removed.clone();
    e.expect_remove_image_tag().times(2).returning(move |tag| {
        r.lock().unwrap().push(tag.to_string());
        if tag == "iac/keeper:dddddddddddd" {
            Err(EngineError::new(
                format!("remove image {tag}"),
                Some(409),
                "image is being used by running container 123",
            ))
        } else {
            Ok(())
        }
    });
    let p = provisioner(e).with_keeper(KeeperSetup {
        agent_binary: agent,
        socket: "/var/run/docker.sock".into(),
        image_labels: BTreeMap::new(),
    });
    let (events, mut rx) = Events::channel();
    p.destroy(&project(), &events).await.unwrap();
    assert_eq!(
        *removed.lock().unwrap(),
        ["iac/keeper:aaaaaaaaaaaa", "iac/keeper:dddddddddddd"],
        "asked to remove only old, unused, not current tags"
    );
    drop(events);
    let mut said = Vec::new();
    while let Some(ev) = rx.recv().await {
        said.push(ev.message);
    }
    assert!(
        said.iter()
            .any(|m| m == "removed keeper image iac/keeper:aaaaaaaaaaaa: no container uses it"),
        "{said:?}"
    );
    assert!(
        !said.iter().any(|m| m.contains("not collected")),
        "a refused removal is no warning: {said:?}"
    );
}

#[test]
fn keeper_images_to_collect_are_old_other_tags_only() {
    use super::keeper::{KEEPER_IMAGE_GRACE, collectable};
    let t = |tag: &str, created: i64, last_tagged: Option<i64>| crate::engine::ImageTag {
        tag: tag.into(),
        created,
        last_tagged,
    };
    let now = 10_000;
    let tags = [
        t("iac/keeper:cur", 0, None),
        t("iac/keeper:old", now - 600, None),
        t("iac/keeper:young", now - 599, None),
        t("iac/keeperx:odd", 0, None),
        t("iac/keeper:old", now - 600, Some(now - 700)),
        // Old, but tagged again by a deploy that is about to use it: its use counts.
        t("iac/keeper:touched", 0, Some(now - 10)),
        t("iac/keeper:touched-long-ago", 0, Some(now - 601)),
    ];
    assert_eq!(
        collectable(&tags, "iac/keeper:cur", now, KEEPER_IMAGE_GRACE),
        ["iac/keeper:old", "iac/keeper:touched-long-ago"]
    );
}

/// A deploy that finds its keeper image there tags it again (its use, for every collector)
/// before creating the keeper; if another project's collector removed it meanwhile anyway, the
/// create's 404 builds the image again and the create is retried once.
#[tokio::test]
async fn a_deploy_touches_its_keeper_image_and_rebuilds_it_if_collected_meanwhile() {
    use super::keeper::{KeeperSetup, keeper_tag};
    let dir = tempfile::tempdir().unwrap();
    let agent = dir.path().join("iac-agent");
    std::fs::write(&agent, b"the static agent").unwrap();
    let current = keeper_tag(b"the static agent");
    let mut e = MockEngine::new();
    let mut seq = Sequence::new();
    let cur = current.clone();
    e.expect_image_present()
        .withf(move |t| t == cur)
        .times(1)
        .in_sequence(&mut seq)
        .returning(|_| Ok(true));
    let cur = current.clone();
    e.expect_tag_again()
        .withf(move |t| t == cur)
        .times(1)
        .in_sequence(&mut seq)
        .returning(|_| Ok(()));
    e.expect_list_containers()
        .times(1)
        .in_sequence(&mut seq)
        .returning(|_| Ok(vec![]));
    e.expect_create_container()
        .times(1)
        .in_sequence(&mut seq)
        .returning(|spec| {
            Err(EngineError::new(
                format!("create container {}", spec.name),
                Some(404),
                format!("No such image: {}", spec.image),
            ))
        });
    let cur = current.clone();
    e.expect_build_image()
        .withf(move |t, _| t == cur)
        .times(1)
        .in_sequence(&mut seq)
        .returning(|_, _| Ok(()));
    e.expect_create_container()
        .times(1)
        .in_sequence(&mut seq)
        .returning(|_| Ok("keeper-id".into()));
    e.expect_start_container()
        .withf(|id| id == "keeper-id")
        .times(1)
        .in_sequence(&mut seq)
        .returning(|_| Ok(()));
    e.expect_image_tags().returning(|_| Ok(vec![]));
    let p = provisioner(e).with_keeper(KeeperSetup {
        agent_binary: agent,
        socket: "/var/run/docker.sock".into(),
        image_labels: BTreeMap::new(),
    });
    let (events, mut rx) = Events::channel();
    p.ensure_keeper(&project(), &events).await.unwrap();
    drop(events);
    let mut said = Vec::new();
    while let Some(ev) = rx.recv().await {
        said.push(ev.message);
    }
    assert!(
        said.iter().any(|m| m.contains("was removed meanwhile")),
        "{said:?}"
    );
}

/// A sandbox's pair: the copy's names, labelled with the sandbox.
fn sandbox_pair(n: &str, sandbox: &str, hash: &str, port: u16) -> Vec<Observed> {
    let copy = format!("{n}--sb-{sandbox}");
    running_pair(&copy, hash, port)
        .into_iter()
        .map(|mut o| {
            o.sandbox = Some(sandbox.into());
            o
        })
        .collect()
}

#[tokio::test]
async fn a_baseline_stack_never_sees_sandboxes_and_a_sandbox_stack_sees_only_its_own() {
    let mut e = MockEngine::new();
    let mut all = running_pair("web", "h1", 1);
    all.extend(sandbox_pair("web", "feat", "h1", 2));
    all.extend(sandbox_pair("api", "other", "h1", 3));
    lists(&mut e, all);
    let p = provisioner(e);
    // The baseline: its copies are neither removed nor replaced.
    let changes = p
        .diff(&stack(vec![desired("web", "h1")], &[]))
        .await
        .unwrap();
    let got: Vec<(&str, Action)> = changes
        .iter()
        .map(|c| (c.service.as_str(), c.action))
        .collect();
    assert_eq!(got, [("web", Action::Unchanged)]);
    // Sandbox feat: its copy is unchanged, sandbox other's copy is not its to remove, and the
    // baseline is invisible.
    let mut sb = stack(vec![desired("web--sb-feat", "h1")], &[]);
    sb.sandbox = Some(iac_core::SandboxName::new("feat").unwrap());
    let got: Vec<(String, Action)> = p
        .diff(&sb)
        .await
        .unwrap()
        .iter()
        .map(|c| (c.service.to_string(), c.action))
        .collect();
    assert_eq!(got, [("web--sb-feat".to_string(), Action::Unchanged)]);
    // An empty sandbox stack removes only that sandbox's copies.
    sb.services.clear();
    let got: Vec<(String, Action)> = p
        .diff(&sb)
        .await
        .unwrap()
        .iter()
        .map(|c| (c.service.to_string(), c.action))
        .collect();
    assert_eq!(got, [("web--sb-feat".to_string(), Action::Remove)]);
}

#[tokio::test]
async fn destroying_a_sandbox_removes_only_its_containers_apps_first() {
    let mut e = MockEngine::new();
    let mut seq = Sequence::new();
    let mut all = running_pair("web", "h1", 1);
    all.extend(sandbox_pair("web", "feat", "h1", 2));
    all.extend(sandbox_pair("api", "other", "h1", 3));
    lists(&mut e, all);
    e.expect_log_tail().returning(|_, _, _| Ok(String::new()));
    stop_remove(&mut e, &mut seq, "id-demo-web--sb-feat");
    stop_remove(&mut e, &mut seq, "id-demo-web--sb-feat-envoy");
    let removed = provisioner(e)
        .destroy_sandbox(
            &project(),
            &iac_core::SandboxName::new("feat").unwrap(),
            &Events::discard(),
        )
        .await
        .unwrap();
    assert_eq!(
        removed,
        [
            "container demo-web--sb-feat",
            "container demo-web--sb-feat-envoy"
        ]
    );
}

#[tokio::test]
async fn reloading_runs_the_reload_script_in_running_sidecars_only_and_reports_each() {
    let mut e = MockEngine::new();
    let mut all = running_pair("web", "h1", 1);
    let mut api = running_pair("api", "h1", 2);
    api[1].state = "exited".into();
    all.extend(api);
    all.extend(running_pair("cart", "h1", 3));
    lists(&mut e, all);
    let script = iac_core::plan::sidecar_reload_script();
    e.expect_exec()
        .withf(move |id, argv| {
            id == "id-demo-web-envoy"
                && argv[..3] == ["/bin/sh".to_string(), "-c".into(), script.clone()]
                && argv[3..] == ["iac-reload", "1", "http://127.0.0.1:9901/stats/prometheus"]
        })
        .times(1)
        .returning(|_, _| {
            Ok(ExecOutput {
                exit_code: Some(0),
                output: "ok\n".into(),
            })
        });
    e.expect_exec()
        .withf(|id, _| id == "id-demo-cart-envoy")
        .times(1)
        .returning(|_, _| {
            Ok(ExecOutput {
                exit_code: Some(0),
                output: "refused: error initializing configuration: bad route\n".into(),
            })
        });
    let done = provisioner(e)
        .reload_sidecars(
            &project(),
            &[svc("web"), svc("api"), svc("cart")],
            &Events::discard(),
        )
        .await
        .unwrap();
    let outcomes: Vec<(String, ReloadOutcome)> = done
        .into_iter()
        .map(|r| (r.service.to_string(), r.outcome))
        .collect();
    assert_eq!(
        outcomes,
        [
            ("web".to_string(), ReloadOutcome::Reloaded),
            ("api".to_string(), ReloadOutcome::NotRunning),
            (
                "cart".to_string(),
                ReloadOutcome::Refused("error initializing configuration: bad route".into())
            ),
        ]
    );
}

#[test]
fn what_the_reload_script_says_becomes_an_outcome() {
    let unhealthy = |o: ReloadOutcome| match o {
        ReloadOutcome::Unhealthy(why) => why,
        other => panic!("expected unhealthy, got {other:?}"),
    };
    assert_eq!(reload_outcome(Some(0), "ok\n"), ReloadOutcome::Reloaded);
    let why = unhealthy(reload_outcome(
        Some(0),
        "unhealthy: envoy restarted with the new config but did not answer\n",
    ));
    assert!(why.starts_with("envoy restarted"), "{why}");
    let why = unhealthy(reload_outcome(Some(126), "sh: permission denied"));
    assert!(
        why.contains("Some(126)") && why.contains("permission denied"),
        "{why}"
    );
    let why = unhealthy(reload_outcome(Some(0), "what?"));
    assert!(
        why.contains("\"what?\"") && why.contains("expected ok"),
        "{why}"
    );
}

#[test]
fn the_config_file_mount_becomes_its_directory_and_nothing_else_changes() {
    let want = desired("web", "h1");
    let mut mounts = want.envoy.mounts.clone();
    mounts.push(Mount {
        source: "/secrets/key.pem".into(),
        target: "/etc/iac/certs/key.pem".into(),
        read_only: true,
    });
    let live = live_config_mounts(&mounts);
    assert_eq!(live[0].source, std::path::PathBuf::from("/state"));
    assert_eq!(live[0].target, std::path::PathBuf::from("/etc/envoy"));
    assert!(live[0].read_only);
    assert_eq!(live[1], mounts[1]);
}
