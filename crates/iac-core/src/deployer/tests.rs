//! Deployer unit tests: every stage is a mockall fake.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use super::*;
use crate::entry::DEFAULT_APP_PORT;
use crate::entry::Language;
use crate::error::{FetchError, ProvisionError};
use crate::event::DeployEvent;
use crate::expose::{EdgeBind, Expose};
use crate::health::{HealthReport, HealthState};
use crate::mesh::{CertPaths, MeshPorts};
use crate::source::Source;
use crate::stack::{Action, Applied, AppliedService, RunningService};

fn spec(name: &str) -> ServiceSpec {
    ServiceSpec {
        name: ServiceName::new(name).unwrap(),
        slug: format!("gh:o/{name}").parse().unwrap(),
        entrypoint: None,
        env: Default::default(),
        expose: Default::default(),
        replicas: 1,
        install: Default::default(),
        egress: Vec::new(),
    }
}

fn source(dir: &str) -> Source {
    Source {
        dir: dir.into(),
        commit: Some("abc".into()),
        digest: format!("sha256:{dir}"),
        origin: "test".into(),
    }
}

fn entry() -> Entry {
    Entry {
        language: Language::Python,
        rule: "main.py".into(),
        argv: vec!["python".into(), "/app/main.py".into()],
        why: "root main.py".into(),
        ..Default::default()
    }
}

fn image(svc: &str) -> ImageRef {
    ImageRef {
        id: format!("sha256:id-{svc}"),
        tag: format!("iac/p-{svc}:k"),
        key: "k".into(),
        reused: false,
    }
}

fn serving(svc: &ServiceName, state: HealthState) -> HealthReport {
    HealthReport::new(svc.clone(), state, None, "d".into(), 1)
}

struct Fakes {
    fetcher: MockSourceFetcher,
    resolver: MockEntryResolver,
    builder: MockImageBuilder,
    pki: MockPki,
    sidecar: MockSidecarRenderer,
    provisioner: MockProvisioner,
    prober: MockHealthProber,
}

impl Fakes {
    /// Every stage succeeds; the provisioner creates everything it is given on port 40000+i.
    fn happy() -> Self {
        let mut f = Fakes {
            fetcher: MockSourceFetcher::new(),
            resolver: MockEntryResolver::new(),
            builder: MockImageBuilder::new(),
            pki: MockPki::new(),
            sidecar: MockSidecarRenderer::new(),
            provisioner: MockProvisioner::new(),
            prober: MockHealthProber::new(),
        };
        f.fetcher
            .expect_fetch()
            .returning(|slug, _| Ok(source(&slug.repo_name())));
        f.resolver.expect_resolve().returning(|_, _| Ok(entry()));
        f.builder
            .expect_build()
            .returning(|s, _| Ok(image(s.service.as_str())));
        f.builder
            .expect_planned()
            .returning(|s| Ok(image(s.service.as_str())));
        f.pki.expect_issue().returning(|_, svc| {
            Ok(IssuedCerts {
                paths: CertPaths {
                    ca: "/ca".into(),
                    cert: format!("/{svc}.pem").into(),
                    key: format!("/{svc}.key").into(),
                },
                fingerprint: "fp".into(),
            })
        });
        f.sidecar.expect_render().returning(|mesh, svc| {
            Ok(format!(
                "config for {svc} with {} members",
                mesh.services.len()
            ))
        });
        f.provisioner.expect_apply().returning(|stack, _, _| {
            Ok(Applied {
                services: stack
                    .services
                    .iter()
                    .enumerate()
                    .map(|(i, s)| AppliedService {
                        service: s.service.clone(),
                        action: Action::Create,
                        endpoint: Some(format!("127.0.0.1:{}", 40000 + i).parse().unwrap()),
                        edge: None,
                        health: None,
                        error: None,
                    })
                    .collect(),
                removed: vec![],
            })
        });
        f.prober
            .expect_check()
            .returning(|t| serving(&t.service, HealthState::Serving));
        f
    }

    fn deployer(self, dir: &std::path::Path, parallelism: usize) -> Deployer {
        self.deployer_with(dir, parallelism, |_| {})
    }

    fn deployer_with(
        self,
        dir: &std::path::Path,
        parallelism: usize,
        tweak: impl FnOnce(&mut DeployOptions),
    ) -> Deployer {
        let mut opts = DeployOptions {
            project: ProjectName::new("p").unwrap(),
            network: "iacnet".into(),
            envoy_image: "envoy:test".into(),
            parallelism,
            state_dir: dir.to_path_buf(),
            health_deadline: Duration::from_secs(1),
            health_settle: Duration::ZERO,
            health_settle_listening: Duration::ZERO,
            health_check_timeout: Duration::from_secs(2),
            otel_endpoint: None,
            deadline: Duration::from_secs(30),
            release_timeout: Duration::from_secs(5),
            egress: Default::default(),
            sandbox: None,
        };
        tweak(&mut opts);
        Deployer::new(
            Stages {
                fetcher: Arc::new(self.fetcher),
                resolver: Arc::new(self.resolver),
                builder: Arc::new(self.builder),
                pki: Arc::new(self.pki),
                sidecar: Arc::new(self.sidecar),
                provisioner: Arc::new(self.provisioner),
                prober: Arc::new(self.prober),
            },
            opts,
        )
    }
}

fn drain(mut rx: crate::event::EventReceiver) -> Vec<DeployEvent> {
    let mut v = Vec::new();
    while let Ok(e) = rx.try_recv() {
        v.push(e);
    }
    v
}

#[tokio::test]
async fn happy_path_runs_stages_in_order_and_writes_configs() {
    let dir = tempfile::tempdir().unwrap();
    let d = Fakes::happy().deployer(dir.path(), 4);
    let (events, rx) = Events::channel();
    let report = d.deploy(&[spec("web"), spec("api")], &events).await;
    assert!(report.ok, "{report:#?}");
    assert_eq!(
        report
            .services
            .iter()
            .map(|s| s.service.as_str())
            .collect::<Vec<_>>(),
        ["api", "web"]
    );
    for s in &report.services {
        let stages: Vec<_> = s.stages.iter().map(|t| t.stage).collect();
        assert_eq!(
            stages,
            [
                Stage::Fetch,
                Stage::Resolve,
                Stage::Build,
                Stage::Certs,
                Stage::Render,
                Stage::Provision,
                Stage::Health
            ]
        );
        assert_eq!(s.health.as_ref().unwrap().state, HealthState::Serving);
        assert_eq!(s.action, Some(Action::Create));
        let cfg = std::fs::read_to_string(
            dir.path()
                .join("services")
                .join(s.service.as_str())
                .join("envoy.yaml"),
        )
        .unwrap();
        assert_eq!(cfg, format!("config for {} with 2 members", s.service));
    }
    let events = drain(rx);
    let web: Vec<_> = events
        .iter()
        .filter(|e| e.service.as_ref().is_some_and(|s| s.as_str() == "web"))
        .map(|e| e.stage)
        .collect();
    let pos = |st: Stage| {
        web.iter()
            .position(|s| *s == st)
            .unwrap_or_else(|| panic!("no {st:?} event"))
    };
    assert!(
        pos(Stage::Fetch) < pos(Stage::Resolve)
            && pos(Stage::Resolve) < pos(Stage::Build)
            && pos(Stage::Build) < pos(Stage::Health)
    );
    assert!(
        events
            .iter()
            .any(|e| e.service.is_none() && e.stage == Stage::Plan)
    );
}

#[tokio::test]
async fn one_failing_service_does_not_stop_its_peers_and_is_kept() {
    let dir = tempfile::tempdir().unwrap();
    let mut f = Fakes::happy();
    f.fetcher = MockSourceFetcher::new();
    f.fetcher.expect_fetch().returning(|slug, _| {
        if slug.repo_name() == "bad" {
            Err(FetchError::Http {
                url: "http://x/bad.tgz".into(),
                status: Some(404),
                message: "404 Not Found".into(),
            })
        } else {
            Ok(source(&slug.repo_name()))
        }
    });
    f.provisioner = MockProvisioner::new();
    f.provisioner
        .expect_apply()
        .withf(|stack, _, _| {
            stack
                .services
                .iter()
                .map(|s| s.service.as_str())
                .collect::<Vec<_>>()
                == ["good"]
                && stack.keep.iter().map(|s| s.as_str()).collect::<Vec<_>>() == ["bad"]
        })
        .times(1)
        .returning(|stack, _, _| {
            Ok(Applied {
                services: vec![AppliedService {
                    service: stack.services[0].service.clone(),
                    action: Action::Create,
                    endpoint: Some("127.0.0.1:1".parse().unwrap()),
                    edge: None,
                    health: None,
                    error: None,
                }],
                removed: vec![],
            })
        });
    let d = f.deployer(dir.path(), 2);
    let (events, rx) = Events::channel();
    let report = d.deploy(&[spec("bad"), spec("good")], &events).await;
    assert!(!report.ok);
    let bad = &report.services[0];
    assert_eq!(bad.service.as_str(), "bad");
    assert_eq!(bad.failed_stage, Some(Stage::Fetch));
    assert!(
        bad.error.as_ref().unwrap().contains("404"),
        "{:?}",
        bad.error
    );
    assert!(report.services[1].ok);
    assert!(
        drain(rx)
            .iter()
            .any(|e| e.level == crate::EventLevel::Error && e.stage == Stage::Fetch)
    );
}

/// A hand-written fetcher that really awaits, so overlapping fetches can be observed.
struct SlowFetcher {
    now: AtomicUsize,
    max: AtomicUsize,
}

#[async_trait::async_trait]
impl SourceFetcher for SlowFetcher {
    async fn fetch(&self, slug: &crate::Slug, _: &Events) -> Result<Source, FetchError> {
        let cur = self.now.fetch_add(1, Ordering::SeqCst) + 1;
        self.max.fetch_max(cur, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(30)).await;
        self.now.fetch_sub(1, Ordering::SeqCst);
        Ok(source(&slug.repo_name()))
    }
}

#[tokio::test]
async fn parallelism_is_bounded_and_used() {
    for limit in [1usize, 2, 3] {
        let dir = tempfile::tempdir().unwrap();
        let slow = Arc::new(SlowFetcher {
            now: AtomicUsize::new(0),
            max: AtomicUsize::new(0),
        });
        let f = Fakes::happy();
        let mut d = f.deployer(dir.path(), limit);
        d.stages.fetcher = slow.clone();
        let specs: Vec<_> = (0..7).map(|i| spec(&format!("s{i}"))).collect();
        let report = d.deploy(&specs, &Events::discard()).await;
        assert!(report.ok);
        assert_eq!(
            slow.max.load(Ordering::SeqCst),
            limit,
            "exactly {limit} fetches overlap at most"
        );
    }
}

#[tokio::test]
async fn provision_failure_fails_every_prepared_service() {
    let dir = tempfile::tempdir().unwrap();
    let mut f = Fakes::happy();
    f.provisioner = MockProvisioner::new();
    f.provisioner
        .expect_apply()
        .returning(|_, _, _| Err(ProvisionError::Engine("connection refused".into())));
    f.prober = MockHealthProber::new();
    f.prober.expect_check().never();
    let d = f.deployer(dir.path(), 2);
    let report = d.deploy(&[spec("a"), spec("b")], &Events::discard()).await;
    assert!(!report.ok);
    assert!(
        report
            .error
            .as_ref()
            .unwrap()
            .contains("connection refused")
    );
    assert!(
        report
            .services
            .iter()
            .all(|s| s.failed_stage == Some(Stage::Provision))
    );
}

#[tokio::test]
async fn not_serving_and_rolled_back_are_failures_peers_stay_ok() {
    let dir = tempfile::tempdir().unwrap();
    let mut f = Fakes::happy();
    f.provisioner = MockProvisioner::new();
    f.provisioner.expect_apply().returning(|stack, _, _| {
        Ok(Applied {
            services: stack
                .services
                .iter()
                .map(|s| {
                    let rolled = s.service.as_str() == "rolled";
                    AppliedService {
                        service: s.service.clone(),
                        action: if rolled {
                            Action::RolledBack
                        } else {
                            Action::Create
                        },
                        endpoint: Some("127.0.0.1:2".parse().unwrap()),
                        edge: None,
                        health: rolled.then(|| serving(&s.service, HealthState::NotServing)),
                        error: None,
                    }
                })
                .collect(),
            removed: vec![ServiceName::new("gone").unwrap()],
        })
    });
    f.prober = MockHealthProber::new();
    f.prober.expect_check().returning(|t| {
        let st = if t.service.as_str() == "sick" {
            HealthState::NotServing
        } else {
            HealthState::Serving
        };
        serving(&t.service, st)
    });
    let d = f.deployer(dir.path(), 2);
    let report = d
        .deploy(
            &[spec("ok"), spec("sick"), spec("rolled")],
            &Events::discard(),
        )
        .await;
    let by = |n: &str| {
        report
            .services
            .iter()
            .find(|s| s.service.as_str() == n)
            .unwrap()
    };
    assert!(by("ok").ok);
    assert!(!by("sick").ok && by("sick").failed_stage == Some(Stage::Health));
    assert!(!by("rolled").ok && by("rolled").error.as_ref().unwrap().contains("rolled back"));
    assert_eq!(report.removed, [ServiceName::new("gone").unwrap()]);
    assert!(!report.ok);
}

#[tokio::test]
async fn plan_never_builds_or_applies() {
    let dir = tempfile::tempdir().unwrap();
    let mut f = Fakes::happy();
    f.builder = MockImageBuilder::new();
    f.builder.expect_build().never();
    f.builder
        .expect_planned()
        .times(2)
        .returning(|s| Ok(image(s.service.as_str())));
    f.provisioner = MockProvisioner::new();
    f.provisioner.expect_apply().never();
    f.provisioner.expect_diff().times(1).returning(|stack| {
        Ok(stack
            .services
            .iter()
            .map(|s| Change {
                service: s.service.clone(),
                action: Action::Create,
                reason: "not running".into(),
            })
            .collect())
    });
    let d = f.deployer(dir.path(), 2);
    let out = d
        .plan(&[spec("a"), spec("b")], &Events::discard())
        .await
        .unwrap();
    assert_eq!(out.changes.len(), 2);
    assert!(out.failures.is_empty());
    assert!(
        !dir.path().join("services/a/envoy.yaml").exists(),
        "plan writes no configs"
    );
}

/// The plan and the mesh carry each service's egress: its list (with the project's items the
/// repos file merged in) plus the OTLP endpoint when the mode is closed; nothing enforced, and a
/// warning, when it is open.
#[tokio::test]
async fn egress_lists_reach_the_mesh_and_the_plan_and_open_mode_warns() {
    use crate::egress::{EgressMode, EgressPolicy};
    for mode in [EgressMode::Closed, EgressMode::Open] {
        let dir = tempfile::tempdir().unwrap();
        let mut f = Fakes::happy();
        f.provisioner = MockProvisioner::new();
        f.provisioner.expect_runs_releases().return_const(true);
        f.provisioner.expect_name().return_const("docker");
        f.provisioner.expect_diff().returning(|_| Ok(vec![]));
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let record = Arc::clone(&seen);
        f.sidecar = MockSidecarRenderer::new();
        f.sidecar.expect_render().returning(move |mesh, svc| {
            record
                .lock()
                .unwrap()
                .push((svc.to_string(), mesh.service(svc).unwrap().egress.clone()));
            Ok("static_resources: {}\n".into())
        });
        let d = f.deployer_with(dir.path(), 1, |o| {
            o.egress = mode;
            o.otel_endpoint = Some("http://10.1.2.3:4318".into());
        });
        let mut web = spec("web");
        web.egress = crate::egress::parse_rules(&["api.example.com:443"]).unwrap();
        let (events, rx) = Events::channel();
        let out = d.plan(&[web, spec("api")], &events).await.unwrap();
        drop(events);
        let warned = drain(rx).iter().any(|e| {
            e.level == crate::event::EventLevel::Warn
                && e.message.contains("[mesh] egress = \"open\"")
        });
        let of = |n: &str| {
            out.stack
                .services
                .iter()
                .find(|s| s.service.as_str() == n)
                .unwrap()
                .egress
                .clone()
        };
        match mode {
            EgressMode::Closed => {
                assert!(!warned);
                assert_eq!(of("web").summary(), "10.1.2.3:4318, api.example.com:443");
                assert_eq!(of("api").summary(), "10.1.2.3:4318");
            }
            EgressMode::Open => {
                assert!(warned, "open mode warns");
                assert_eq!(of("web"), EgressPolicy::Open);
            }
        }
        let mut rendered = seen.lock().unwrap().clone();
        rendered.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(rendered.len(), 2);
        assert_eq!(rendered[1].1, of("web"), "the mesh and the plan agree");
    }
}

#[tokio::test]
async fn sidecar_render_failure_is_per_service() {
    let dir = tempfile::tempdir().unwrap();
    let mut f = Fakes::happy();
    f.sidecar = MockSidecarRenderer::new();
    f.sidecar.expect_render().returning(|_, svc| {
        if svc.as_str() == "x" {
            Err(crate::error::SidecarError::Invalid {
                service: "x".into(),
                why: "bad port".into(),
            })
        } else {
            Ok("cfg".into())
        }
    });
    let d = f.deployer(dir.path(), 2);
    let report = d.deploy(&[spec("x"), spec("y")], &Events::discard()).await;
    assert_eq!(report.services[0].failed_stage, Some(Stage::Render));
    assert!(report.services[1].ok);
}

#[tokio::test]
async fn concurrent_deploys_of_one_project_serialize_on_the_lock() {
    let dir = tempfile::tempdir().unwrap();
    let inside = Arc::new(AtomicUsize::new(0));
    let overlap = Arc::new(AtomicUsize::new(0));
    let mk = |inside: Arc<AtomicUsize>, overlap: Arc<AtomicUsize>| {
        let mut f = Fakes::happy();
        f.provisioner = MockProvisioner::new();
        f.provisioner.expect_apply().returning(move |stack, _, _| {
            if inside.fetch_add(1, Ordering::SeqCst) > 0 {
                overlap.fetch_add(1, Ordering::SeqCst);
            }
            std::thread::sleep(Duration::from_millis(100));
            inside.fetch_sub(1, Ordering::SeqCst);
            Ok(Applied {
                services: stack
                    .services
                    .iter()
                    .map(|s| AppliedService {
                        service: s.service.clone(),
                        action: Action::Unchanged,
                        endpoint: Some("127.0.0.1:3".parse().unwrap()),
                        edge: None,
                        health: None,
                        error: None,
                    })
                    .collect(),
                removed: vec![],
            })
        });
        f.deployer(dir.path(), 1)
    };
    let a = Arc::new(mk(inside.clone(), overlap.clone()));
    let b = Arc::new(mk(inside.clone(), overlap.clone()));
    let ta = tokio::spawn(async move { a.deploy(&[spec("a")], &Events::discard()).await });
    let tb = tokio::spawn(async move { b.deploy(&[spec("a")], &Events::discard()).await });
    assert!(ta.await.unwrap().ok);
    assert!(tb.await.unwrap().ok);
    assert_eq!(
        overlap.load(Ordering::SeqCst),
        0,
        "the project lock serializes apply"
    );
}

/// Another process (the CLI, the admin API) holds the project's deploy lock: the deploy waits,
/// says whom it waits for, and goes on once the lock is free.
#[tokio::test]
async fn a_waiting_deploy_names_who_holds_the_lock() {
    let dir = tempfile::tempdir().unwrap();
    let held = crate::fsutil::FileLock::acquire(&dir.path().join("deploy.lock"), |_| {
        panic!("free at first")
    })
    .await
    .unwrap();
    let d = Arc::new(Fakes::happy().deployer(dir.path(), 1));
    let (events, mut rx) = Events::channel();
    let deploy = tokio::spawn({
        let d = d.clone();
        async move { d.deploy(&[spec("a")], &events).await }
    });
    let said = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let e = rx.recv().await.expect("events until it says it waits");
            if e.message.starts_with("waiting for another deploy") {
                return e.message;
            }
        }
    })
    .await
    .expect("the deploy says it waits");
    assert!(
        said.contains(&format!("held by pid {} (", std::process::id())),
        "{said}"
    );
    assert!(!deploy.is_finished(), "it waits for the lock");
    drop(held);
    let report = tokio::time::timeout(Duration::from_secs(10), deploy)
        .await
        .expect("it goes on once the lock is free")
        .unwrap();
    assert!(report.ok, "{report:#?}");
}

#[tokio::test]
async fn a_new_service_must_stay_serving_through_the_settle_window() {
    let dir = tempfile::tempdir().unwrap();
    let mut f = Fakes::happy();
    let calls = Arc::new(AtomicUsize::new(0));
    let c2 = calls.clone();
    f.prober = MockHealthProber::new();
    // First answer SERVING (the entry is starting), second NOT_SERVING (it crashed meanwhile).
    f.prober.expect_check().returning(move |t| {
        let n = c2.fetch_add(1, Ordering::SeqCst);
        let mut h = serving(
            &t.service,
            if n == 0 {
                HealthState::Serving
            } else {
                HealthState::NotServing
            },
        );
        h.exit_code = (n > 0).then_some(1);
        h
    });
    let mut d = f.deployer(dir.path(), 1);
    d.opts.health_settle = Duration::from_millis(20);
    let report = d.deploy(&[spec("crashy")], &Events::discard()).await;
    assert!(!report.ok);
    let h = report.services[0].health.as_ref().unwrap();
    assert_eq!(h.state, HealthState::NotServing);
    assert_eq!(h.exit_code, Some(1));
    assert_eq!(h.attempts, 2);
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_new_service_whose_agent_reports_uptime_past_the_window_is_not_held() {
    let dir = tempfile::tempdir().unwrap();
    let mut f = Fakes::happy();
    f.prober = MockHealthProber::new();
    f.prober.expect_check().times(1).returning(|t| {
        let mut h = serving(&t.service, HealthState::Serving);
        h.uptime_ms = Some(31_000);
        h
    });
    let mut d = f.deployer(dir.path(), 1);
    d.opts.health_settle = Duration::from_secs(30);
    let (events, mut rx) = Events::channel();
    let t = std::time::Instant::now();
    let report = d.deploy(&[spec("steady")], &events).await;
    drop(events);
    assert!(report.ok, "{report:?}");
    assert_eq!(
        report.services[0].health.as_ref().unwrap().uptime_ms,
        Some(31_000)
    );
    assert!(
        t.elapsed() < Duration::from_secs(30),
        "not held for the window"
    );
    let mut said_no_wait = false;
    while let Some(e) = rx.recv().await {
        said_no_wait |= e.message.contains("past the 30s settle window: no wait");
    }
    assert!(said_no_wait, "the event says why it did not wait");
}

#[tokio::test]
async fn a_new_service_that_just_started_is_checked_again_after_the_remainder() {
    let dir = tempfile::tempdir().unwrap();
    let mut f = Fakes::happy();
    let calls = Arc::new(AtomicUsize::new(0));
    let c2 = calls.clone();
    f.prober = MockHealthProber::new();
    // Up 29.9 s of a 30 s window at the first answer: one more check, 0.1 s later.
    f.prober.expect_check().returning(move |t| {
        let n = c2.fetch_add(1, Ordering::SeqCst);
        let mut h = serving(&t.service, HealthState::Serving);
        h.uptime_ms = Some(if n == 0 { 29_900 } else { 30_050 });
        h
    });
    let mut d = f.deployer(dir.path(), 1);
    d.opts.health_settle = Duration::from_secs(30);
    let t = std::time::Instant::now();
    let report = d.deploy(&[spec("fresh")], &Events::discard()).await;
    assert!(report.ok, "{report:?}");
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    let h = report.services[0].health.as_ref().unwrap();
    assert_eq!((h.attempts, h.uptime_ms), (2, Some(30_050)));
    assert!(
        t.elapsed() < Duration::from_secs(30),
        "held for the remainder, not the window"
    );
}

/// A prober answering SERVING for a service with a declared port (the port accepts), up 100 ms;
/// counts its calls.
fn listening_prober(calls: Arc<AtomicUsize>) -> MockHealthProber {
    let mut p = MockHealthProber::new();
    p.expect_check().returning(move |t| {
        let n = calls.fetch_add(1, Ordering::SeqCst) as u64;
        let mut h = serving(&t.service, HealthState::Serving);
        h.app_port = Some(8000);
        h.uptime_ms = Some(100 + n * 300);
        h
    });
    p
}

/// A deployer over `dir` whose prober is [`listening_prober`] (its call counter returned), with
/// a 30 s settle window for services without a port.
fn web_deployer(dir: &std::path::Path) -> (Deployer, Arc<AtomicUsize>) {
    let mut f = Fakes::happy();
    let calls = Arc::new(AtomicUsize::new(0));
    f.prober = listening_prober(calls.clone());
    let mut d = f.deployer(dir, 1);
    d.opts.health_settle = Duration::from_secs(30);
    (d, calls)
}

#[tokio::test]
async fn a_new_web_app_is_proven_by_its_port_without_the_settle_window() {
    let dir = tempfile::tempdir().unwrap();
    let (d, calls) = web_deployer(dir.path());
    let t = std::time::Instant::now();
    let report = d.deploy(&[spec("web")], &Events::discard()).await;
    assert!(report.ok, "{report:?}");
    assert_eq!(calls.load(Ordering::SeqCst), 1, "asked once, not held");
    assert!(t.elapsed() < Duration::from_secs(30));
}

#[tokio::test]
async fn health_settle_listening_holds_a_new_web_app_for_the_remainder() {
    let dir = tempfile::tempdir().unwrap();
    let (mut d, calls) = web_deployer(dir.path());
    // Up 100 ms at the first answer, 400 ms at the second: held once, for what is left of 350 ms.
    d.opts.health_settle_listening = Duration::from_millis(350);
    let report = d.deploy(&[spec("web")], &Events::discard()).await;
    assert!(report.ok, "{report:?}");
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    let h = report.services[0].health.as_ref().unwrap();
    assert_eq!((h.attempts, h.uptime_ms), (2, Some(400)));
}

#[tokio::test]
async fn unchanged_services_are_not_held_for_the_settle_window() {
    let dir = tempfile::tempdir().unwrap();
    let mut f = Fakes::happy();
    f.provisioner = MockProvisioner::new();
    f.provisioner.expect_apply().returning(|stack, _, _| {
        Ok(Applied {
            services: stack
                .services
                .iter()
                .map(|s| AppliedService {
                    service: s.service.clone(),
                    action: Action::Unchanged,
                    endpoint: Some("127.0.0.1:4".parse().unwrap()),
                    edge: None,
                    health: None,
                    error: None,
                })
                .collect(),
            removed: vec![],
        })
    });
    f.prober = MockHealthProber::new();
    f.prober
        .expect_check()
        .times(1)
        .returning(|t| serving(&t.service, HealthState::Serving));
    let mut d = f.deployer(dir.path(), 1);
    d.opts.health_settle = Duration::from_secs(30);
    let t = std::time::Instant::now();
    assert!(d.deploy(&[spec("steady")], &Events::discard()).await.ok);
    assert!(t.elapsed() < Duration::from_secs(5));
}

/// A fetch that never returns (a server trickling bytes forever, a hung clone).
struct NeverFetcher;

#[async_trait::async_trait]
impl SourceFetcher for NeverFetcher {
    async fn fetch(
        &self,
        _slug: &crate::slug::Slug,
        _events: &Events,
    ) -> Result<Source, FetchError> {
        futures::future::pending().await
    }
}

/// A provisioner whose apply never returns (an engine that stopped answering), holding the lock.
struct HungProvisioner;

#[async_trait::async_trait]
impl Provisioner for HungProvisioner {
    fn name(&self) -> &'static str {
        "hung"
    }
    async fn diff(&self, _stack: &Stack) -> Result<Vec<Change>, ProvisionError> {
        Ok(vec![])
    }
    async fn apply(
        &self,
        _stack: &Stack,
        _gate: Arc<dyn HealthProber>,
        _events: &Events,
    ) -> Result<Applied, ProvisionError> {
        futures::future::pending().await
    }
    async fn destroy(
        &self,
        _project: &ProjectName,
        _events: &Events,
    ) -> Result<Vec<String>, ProvisionError> {
        Ok(vec![])
    }
    async fn running(&self, _project: &ProjectName) -> Result<Vec<RunningService>, ProvisionError> {
        Ok(vec![])
    }
}

#[tokio::test]
async fn a_fetch_that_never_returns_fails_the_deploy_at_its_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let mut d = Fakes::happy().deployer(dir.path(), 2);
    d.stages.fetcher = Arc::new(NeverFetcher);
    d.opts.deadline = Duration::from_millis(300);
    let (events, rx) = Events::channel();
    let t = std::time::Instant::now();
    let report = d.deploy(&[spec("slow"), spec("other")], &events).await;
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    assert!(!report.ok);
    let err = report.error.as_deref().unwrap();
    assert!(
        err.contains("deploy deadline of 300ms passed") && err.contains("project p"),
        "{err}"
    );
    assert_eq!(report.services.len(), 2);
    for s in &report.services {
        assert!(!s.ok);
        assert_eq!(s.failed_stage, Some(Stage::Deploy));
        assert!(s.error.as_deref().unwrap().contains("deadline"), "{s:?}");
    }
    drop(events);
    let evs = drain(rx);
    assert!(
        evs.iter()
            .any(|e| e.level == crate::event::EventLevel::Error && e.message.contains("deadline")),
        "{evs:#?}"
    );
}

#[tokio::test]
async fn a_deploy_stopped_at_its_deadline_releases_the_project_lock() {
    let dir = tempfile::tempdir().unwrap();
    let mut hung = Fakes::happy().deployer(dir.path(), 1);
    hung.stages.provisioner = Arc::new(HungProvisioner);
    hung.opts.deadline = Duration::from_millis(300);
    let report = hung.deploy(&[spec("a")], &Events::discard()).await;
    assert!(!report.ok);
    assert!(report.error.unwrap().contains("deadline"));
    // The lock file is free again: another process (here: this test) can take it at once.
    let lock = std::fs::OpenOptions::new()
        .write(true)
        .open(dir.path().join("deploy.lock"))
        .unwrap();
    lock.try_lock().expect("the project lock was released");
    drop(lock);
    // And the next deploy of the same project goes through.
    let next = Fakes::happy().deployer(dir.path(), 1);
    let report = tokio::time::timeout(
        Duration::from_secs(10),
        next.deploy(&[spec("a")], &Events::discard()),
    )
    .await
    .expect("the next deploy is not blocked by the stopped one");
    assert!(report.ok, "{report:#?}");
}

#[tokio::test]
async fn a_consumer_that_never_reads_events_does_not_stall_the_deploy() {
    let dir = tempfile::tempdir().unwrap();
    let d = Fakes::happy().deployer(dir.path(), 4);
    let (events, rx) = Events::bounded(4);
    let specs: Vec<ServiceSpec> = (0..20).map(|i| spec(&format!("s{i}"))).collect();
    let report = tokio::time::timeout(Duration::from_secs(10), d.deploy(&specs, &events))
        .await
        .expect("the deploy finishes although nobody reads its events");
    assert!(report.ok, "{report:#?}");
    assert_eq!(rx.len(), 4, "only the buffer is held");
    drop(events);
    let evs = drain(rx);
    let dropped: u64 = evs.iter().filter_map(|e| e.dropped_count()).sum();
    assert!(dropped > 20, "a marker counts what was dropped: {evs:#?}");
}

/// A provisioner that publishes an edge for every service whose app container publishes the
/// edge port (as the Docker provisioner reads it back), and records the stacks it was given.
fn edge_provisioner(seen: Arc<std::sync::Mutex<Vec<crate::stack::Stack>>>) -> MockProvisioner {
    let mut p = MockProvisioner::new();
    p.expect_apply().returning(move |stack, _, _| {
        seen.lock().unwrap().push(stack.clone());
        let edge_port = MeshPorts::default().edge;
        Ok(Applied {
            services: stack
                .services
                .iter()
                .enumerate()
                .map(|(i, s)| AppliedService {
                    service: s.service.clone(),
                    action: Action::Create,
                    endpoint: Some(format!("127.0.0.1:{}", 40000 + i).parse().unwrap()),
                    edge: s.published(edge_port).map(|p| {
                        format!("{}:{}", p.host_ip, p.host_port.unwrap_or(49000 + i as u16))
                            .parse()
                            .unwrap()
                    }),
                    health: None,
                    error: None,
                })
                .collect(),
            removed: vec![],
        })
    });
    p
}

#[tokio::test]
async fn services_with_an_http_port_get_an_edge_and_its_url() {
    let dir = tempfile::tempdir().unwrap();
    let mut f = Fakes::happy();
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    f.provisioner = edge_provisioner(seen.clone());
    // Every sidecar render sees which members have an edge.
    let meshes = Arc::new(std::sync::Mutex::new(Vec::new()));
    let m = meshes.clone();
    f.sidecar = MockSidecarRenderer::new();
    f.sidecar.expect_render().returning(move |mesh, svc| {
        m.lock().unwrap().push(mesh.clone());
        Ok(format!("config for {svc}"))
    });
    let d = f.deployer(dir.path(), 2);
    let mut web = spec("web");
    web.env.insert("PORT".into(), "8080".into());
    let worker = spec("worker");
    let mut fixed = spec("fixed");
    fixed.expose = Expose::On(EdgeBind {
        port: Some(8081),
        ..EdgeBind::loopback()
    });
    let mut off = spec("off");
    off.env.insert("PORT".into(), "9000".into());
    off.expose = Expose::Off;
    let report = d
        .deploy(&[web, worker, fixed, off], &Events::discard())
        .await;
    assert!(report.ok, "{report:#?}");
    let url = |name: &str| {
        report
            .services
            .iter()
            .find(|s| s.service.as_str() == name)
            .unwrap()
            .url
            .clone()
    };
    // The HTTP service gets an automatic loopback port; a worker (no port) and `expose: false`
    // get none; `expose: 8081` gets exactly that.
    // (the stack is in name order: fixed, off, web, worker → web is the third, port 49002)
    assert_eq!(url("web"), Some("http://127.0.0.1:49002/".into()));
    assert_eq!(url("worker"), None);
    assert_eq!(url("off"), None);
    assert_eq!(url("fixed"), Some("http://127.0.0.1:8081/".into()));
    let stack = seen.lock().unwrap()[0].clone();
    let svc = |name: &str| {
        stack
            .services
            .iter()
            .find(|s| s.service.as_str() == name)
            .unwrap()
            .clone()
    };
    assert_eq!(svc("worker").envoy.ports.len(), 1, "the mesh port only");
    assert_eq!(svc("off").envoy.ports.len(), 1);
    // `expose: 8081` without a declared port: the app is expected on the default $PORT.
    assert_eq!(svc("fixed").app.env["PORT"], DEFAULT_APP_PORT.to_string());
    assert_eq!(
        svc("fixed").app.env["IAC_APP_PORT"],
        DEFAULT_APP_PORT.to_string()
    );
    let mesh = meshes.lock().unwrap()[0].clone();
    let member = |name: &str| {
        mesh.services
            .iter()
            .find(|s| s.name.as_str() == name)
            .unwrap()
            .clone()
    };
    assert!(member("web").edge && member("fixed").edge);
    assert!(!member("worker").edge && !member("off").edge);
    assert_eq!(member("fixed").app_port, Some(DEFAULT_APP_PORT));
    assert_eq!(
        member("off").app_port,
        Some(9000),
        "no edge, still a mesh route"
    );
}

#[tokio::test]
async fn the_report_warns_when_the_app_listens_on_another_port() {
    let dir = tempfile::tempdir().unwrap();
    let mut f = Fakes::happy();
    f.prober = MockHealthProber::new();
    // Like a Flask app that ignores $PORT: 127.0.0.1:5000 while the sidecar routes to 8080. The
    // agent holds it at UNKNOWN ("starting") and says which ports it does listen on.
    f.prober.expect_check().returning(|t| {
        let (state, listening) = if t.service.as_str() == "flask" {
            (HealthState::Unknown, vec![5000])
        } else {
            (HealthState::Serving, vec![8080])
        };
        HealthReport {
            uptime_ms: Some(4000),
            listening_ports: listening,
            app_port: Some(8080),
            ..serving(&t.service, state)
        }
    });
    let d = f.deployer(dir.path(), 2);
    let mut flask = spec("flask");
    flask.env.insert("PORT".into(), "8080".into());
    let mut good = spec("good");
    good.env.insert("PORT".into(), "8080".into());
    let (events, rx) = Events::channel();
    let report = d.deploy(&[flask, good], &events).await;
    drop(events);
    let flask = &report.services[0];
    assert_eq!(flask.service.as_str(), "flask");
    assert!(!flask.ok, "it never serves $PORT");
    assert_eq!(flask.warnings.len(), 1, "{flask:#?}");
    let w = &flask.warnings[0];
    assert!(
        w.contains("listens on port 5000") && w.contains("routes to port 8080"),
        "{w}"
    );
    assert!(
        w.contains("`env: {PORT: \"5000\"}`"),
        "says what to set: {w}"
    );
    let h = flask.health.as_ref().unwrap();
    assert_eq!(
        (h.uptime_ms, h.listening_ports.clone()),
        (Some(4000), vec![5000])
    );
    let good = &report.services[1];
    assert!(good.ok && good.warnings.is_empty(), "{good:#?}");
    let warned: Vec<DeployEvent> = drain(rx)
        .into_iter()
        .filter(|e| e.level == crate::event::EventLevel::Warn)
        .collect();
    assert_eq!(warned.len(), 1, "{warned:#?}");
    assert_eq!(warned[0].message, *w);
    assert_eq!(
        warned[0].service.as_ref().map(|s| s.as_str()),
        Some("flask")
    );
}

/// A provisioner that reports every service unchanged unless the stack asks to repair it; the
/// stacks it was given are kept in `seen`.
fn repairing_provisioner(seen: Arc<std::sync::Mutex<Vec<Stack>>>) -> MockProvisioner {
    let mut p = MockProvisioner::new();
    p.expect_apply().returning(move |stack, _, _| {
        seen.lock().unwrap().push(stack.clone());
        Ok(Applied {
            services: stack
                .services
                .iter()
                .enumerate()
                .map(|(i, s)| {
                    let repaired = stack.repair.contains_key(&s.service);
                    AppliedService {
                        service: s.service.clone(),
                        action: if repaired {
                            Action::Repair
                        } else {
                            Action::Unchanged
                        },
                        // A repaired pod is a new one, at another port.
                        endpoint: Some(
                            format!("127.0.0.1:{}", 40000 + i + if repaired { 100 } else { 0 })
                                .parse()
                                .unwrap(),
                        ),
                        edge: None,
                        health: None,
                        error: None,
                    }
                })
                .collect(),
            removed: vec![],
        })
    });
    p
}

#[tokio::test]
async fn an_unchanged_pod_that_does_not_answer_is_repaired_and_proved_again() {
    let dir = tempfile::tempdir().unwrap();
    let mut f = Fakes::happy();
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    f.provisioner = repairing_provisioner(seen.clone());
    // api's old pod (port 40000) is unreachable; its new one (40100) and web answer.
    f.prober = MockHealthProber::new();
    let asked = Arc::new(std::sync::Mutex::new(Vec::new()));
    let a = asked.clone();
    f.prober.expect_check().returning(move |t| {
        a.lock().unwrap().push((t.addr.port(), t.deadline));
        if t.addr.port() == 40000 {
            HealthReport::new(
                t.service.clone(),
                HealthState::Unreachable,
                None,
                "upstream connect error".into(),
                3,
            )
        } else {
            serving(&t.service, HealthState::Serving)
        }
    });
    let d = f.deployer(dir.path(), 2);
    let (events, rx) = Events::channel();
    let report = d.deploy(&[spec("web"), spec("api")], &events).await;
    assert!(report.ok, "{report:#?}");
    let api = &report.services[0];
    assert_eq!(api.service.as_str(), "api");
    assert_eq!(api.action, Some(Action::Repair));
    assert_eq!(api.endpoint.as_deref(), Some("127.0.0.1:40100"));
    assert!(
        api.warnings
            .iter()
            .any(|w| w
                .starts_with("repaired: unreachable through its sidecar (upstream connect error)")),
        "{:?}",
        api.warnings
    );
    assert_eq!(report.services[1].action, Some(Action::Unchanged));
    let stacks = seen.lock().unwrap().clone();
    assert_eq!(stacks.len(), 2, "applied once, then once more to repair");
    assert!(stacks[0].repair.is_empty());
    assert_eq!(
        stacks[1]
            .repair
            .keys()
            .map(|s| s.as_str())
            .collect::<Vec<_>>(),
        ["api"]
    );
    // The unchanged pods were asked with the short deadline, not the full one.
    let asked = asked.lock().unwrap().clone();
    assert!(
        asked
            .iter()
            .any(|(port, d)| *port == 40000
                && *d == Duration::from_secs(1).min(Duration::from_secs(2))),
        "{asked:?}"
    );
    let evs = drain(rx);
    assert!(
        evs.iter().any(|e| e
            .message
            .starts_with("repairing: unreachable through its sidecar")),
        "{evs:?}"
    );
}

#[tokio::test]
async fn an_unchanged_pod_whose_app_crashed_is_reported_not_recreated() {
    let dir = tempfile::tempdir().unwrap();
    let mut f = Fakes::happy();
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    f.provisioner = repairing_provisioner(seen.clone());
    f.prober = MockHealthProber::new();
    f.prober.expect_check().returning(|t| {
        HealthReport::new(
            t.service.clone(),
            HealthState::NotServing,
            Some(1),
            "exited with code 1; restarting in 9.0s".into(),
            1,
        )
    });
    let d = f.deployer(dir.path(), 2);
    let report = d.deploy(&[spec("web")], &Events::discard()).await;
    assert!(!report.ok);
    assert_eq!(report.services[0].action, Some(Action::Unchanged));
    assert!(
        report.services[0]
            .error
            .as_deref()
            .unwrap()
            .contains("restarting in"),
        "{:?}",
        report.services[0].error
    );
    assert_eq!(
        seen.lock().unwrap().len(),
        1,
        "its agent restarts it; no repair"
    );
}

/// An app port the sidecar uses is refused at resolve, naming the service, where the port came
/// from (the repo's Procfile line, or the service's `env: PORT`) and every reserved port; the
/// service is neither built nor planned, the others deploy.
#[tokio::test]
async fn an_app_port_the_sidecar_uses_is_refused_naming_its_source() {
    let dir = tempfile::tempdir().unwrap();
    let mut f = Fakes::happy();
    f.resolver = MockEntryResolver::new();
    f.resolver.expect_resolve().returning(|src, _| {
        let mut e = entry();
        if src.dir.ends_with("procfile") {
            // What the Procfile resolver reports for `web: gunicorn -b 127.0.0.1:15001 app:app`.
            e.rule = "platform:procfile".into();
            e.port = Some(15001);
            e.origin = Some("Procfile line 1 (Heroku)".into());
        }
        Ok(e)
    });
    f.builder = MockImageBuilder::new();
    f.builder
        .expect_build()
        .withf(|s, _| s.service.as_str() == "good")
        .times(1)
        .returning(|s, _| Ok(image(s.service.as_str())));
    let d = f.deployer(dir.path(), 2);
    let mut by_env = spec("byenv");
    by_env.env.insert("PORT".into(), "15080".into());
    let report = d
        .deploy(
            &[spec("procfile"), by_env, spec("good")],
            &Events::discard(),
        )
        .await;
    let by = |n: &str| {
        report
            .services
            .iter()
            .find(|s| s.service.as_str() == n)
            .unwrap()
    };
    let reserved = "9901 (stats), 15000 (inbound mTLS), 15001 (outbound), 15002 (egress), 15021 (health probe), 15080 (edge), 50051 (agent gRPC)";
    let procfile = by("procfile");
    assert_eq!(procfile.failed_stage, Some(Stage::Resolve));
    let err = procfile.error.as_deref().unwrap();
    assert!(
        err.contains("procfile: app port 15001")
            && err.contains("Procfile line 1 (Heroku), entry rule platform:procfile")
            && err.contains(reserved),
        "{err}"
    );
    let by_env = by("byenv");
    assert_eq!(by_env.failed_stage, Some(Stage::Resolve));
    let err = by_env.error.as_deref().unwrap();
    assert!(
        err.contains("byenv: app port 15080")
            && err.contains("`env: PORT` of byenv")
            && err.contains(reserved),
        "{err}"
    );
    assert!(by("good").ok, "{report:#?}");
}

#[test]
fn every_port_of_the_sidecar_side_is_reserved_and_nothing_else() {
    let ports = MeshPorts::default();
    let reserved: Vec<u16> = ports.reserved().iter().map(|(p, _)| *p).collect();
    assert_eq!(reserved, [9901, 15000, 15001, 15002, 15021, 15080, 50051]);
    let web = spec("web");
    let mut e = entry();
    for (port, ok) in [
        (8000, true),
        (15001, false),
        (50051, false),
        (15002, false),
        (15003, true),
    ] {
        e.port = Some(port);
        assert_eq!(
            super::prepare::check_app_port(&web, &e, &ports).is_ok(),
            ok,
            "{port}"
        );
    }
    // No port at all (a worker): nothing to check.
    e.port = None;
    assert!(super::prepare::check_app_port(&web, &e, &ports).is_ok());
}

/// Release commands: fakes whose `web` declares `python manage.py migrate` (Procfile line 2)
/// and whose `api` declares none; the provisioner runs releases and its diff says `web_action`
/// for web (create for api); `applies` are the applies expected, in order, each with the
/// services it is given and those it keeps.
fn release_fakes(
    web_action: Action,
    release: Result<crate::stages::ReleaseOutcome, crate::error::ReleaseError>,
    runs: usize,
    applies: &'static [(&'static [&'static str], &'static [&'static str])],
) -> Fakes {
    let mut f = Fakes::happy();
    f.resolver = MockEntryResolver::new();
    f.resolver.expect_resolve().returning(|src, _| {
        let mut e = entry();
        if src.dir.ends_with("web") {
            e.release = Some(crate::entry::ReleaseCommand {
                argv: vec!["python".into(), "manage.py".into(), "migrate".into()],
                workdir: None,
                origin: "Procfile line 2 (release)".into(),
            });
        }
        Ok(e)
    });
    f.provisioner = MockProvisioner::new();
    f.provisioner.expect_runs_releases().return_const(true);
    f.provisioner.expect_diff().returning(move |stack| {
        Ok(stack
            .services
            .iter()
            .map(|s| Change {
                service: s.service.clone(),
                action: if s.service.as_str() == "web" {
                    web_action
                } else {
                    Action::Create
                },
                reason: "test".into(),
            })
            .collect())
    });
    f.provisioner
        .expect_run_release()
        .withf(|job, _| {
            job.service.as_str() == "web"
                && job.release.argv == ["python", "manage.py", "migrate"]
                && job.pod.app.image == "iac/p-web:k"
                && job.pod.app.env.get("IAC_SERVICE").map(String::as_str) == Some("web")
                && job.network.name == "iacnet"
                && job.timeout == Duration::from_secs(5)
        })
        .times(runs)
        .return_once(move |_, _| release);
    let mut order = mockall::Sequence::new();
    for (applied_services, kept) in applies {
        f.provisioner
            .expect_apply()
            .withf(move |stack, _, _| {
                stack
                    .services
                    .iter()
                    .map(|s| s.service.as_str())
                    .collect::<Vec<_>>()
                    == *applied_services
                    && stack.keep.iter().map(|s| s.as_str()).collect::<Vec<_>>() == *kept
            })
            .times(1)
            .in_sequence(&mut order)
            .returning(|stack, _, _| {
                Ok(Applied {
                    services: stack
                        .services
                        .iter()
                        .enumerate()
                        .map(|(i, s)| AppliedService {
                            service: s.service.clone(),
                            action: Action::Replace,
                            endpoint: Some(format!("127.0.0.1:{}", 41000 + i).parse().unwrap()),
                            edge: None,
                            health: None,
                            error: None,
                        })
                        .collect(),
                    removed: vec![],
                })
            });
    }
    f
}

#[tokio::test]
async fn a_failed_release_keeps_the_old_pod_and_its_peers_go_on() {
    let dir = tempfile::tempdir().unwrap();
    let failed = crate::error::ReleaseError::Failed {
        command: "python manage.py migrate".into(),
        origin: "Procfile line 2 (release)".into(),
        status: "exited with code 3".into(),
        tail: "django.db.utils.OperationalError: no such table".into(),
    };
    let d = release_fakes(Action::Replace, Err(failed), 1, &[(&["api"], &["web"])])
        .deployer(dir.path(), 2);
    let (events, rx) = Events::channel();
    let report = d.deploy(&[spec("web"), spec("api")], &events).await;
    assert!(!report.ok);
    let api = report
        .services
        .iter()
        .find(|s| s.service.as_str() == "api")
        .unwrap();
    assert!(api.ok, "{api:#?}");
    assert!(api.stages.iter().all(|t| t.stage != Stage::Release));
    let web = report
        .services
        .iter()
        .find(|s| s.service.as_str() == "web")
        .unwrap();
    assert_eq!(web.failed_stage, Some(Stage::Release));
    let err = web.error.as_deref().unwrap();
    for needle in [
        "python manage.py migrate",
        "Procfile line 2",
        "exited with code 3",
        "no such table",
        "what runs now is kept",
    ] {
        assert!(err.contains(needle), "{needle:?} in {err}");
    }
    let release = web.stages.last().unwrap();
    assert_eq!((release.stage, release.ok), (Stage::Release, false));
    assert_eq!(web.action, None, "the provisioner never touched web");
    assert!(drain(rx).iter().any(|e| e.stage == Stage::Release
        && e.level == crate::EventLevel::Error
        && e.service.as_ref().is_some_and(|s| s.as_str() == "web")));
}

/// The baseline record is what runs, not what was tried: a service whose replace failed (its
/// old pair serves on) or was rolled back stays recorded, so a later sandbox reload does not
/// drop the peers' routes to it; only what the apply removed leaves the record.
#[tokio::test]
async fn a_failed_or_rolled_back_replace_stays_in_the_baseline_record() {
    let dir = tempfile::tempdir().unwrap();
    let mut f = Fakes::happy();
    f.provisioner = MockProvisioner::new();
    f.provisioner.expect_runs_sandboxes().return_const(true);
    f.provisioner
        .expect_reload_sidecars()
        .returning(|_, names, _| Ok(reloaded(names)));
    let round = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let r = round.clone();
    f.provisioner.expect_apply().returning(move |stack, _, _| {
        let n = r.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Ok(Applied {
            services: stack
                .services
                .iter()
                .map(|s| {
                    let (action, error) = match (n, s.service.as_str()) {
                        (0, _) => (Action::Create, None),
                        (1, "web") => (Action::Replace, Some("health: NOT_SERVING".to_string())),
                        (1, _) => (Action::RolledBack, None),
                        _ => (Action::Unchanged, None),
                    };
                    AppliedService {
                        service: s.service.clone(),
                        action,
                        endpoint: Some("127.0.0.1:40000".parse().unwrap()),
                        edge: None,
                        health: None,
                        error,
                    }
                })
                .collect(),
            removed: if n == 2 {
                vec![ServiceName::new("api").unwrap()]
            } else {
                vec![]
            },
        })
    });
    let d = f.deployer(dir.path(), 2);
    let (events, _rx) = Events::channel();
    let names = || -> Vec<String> {
        d.read_baseline()
            .unwrap()
            .unwrap()
            .iter()
            .map(|m| m.name.to_string())
            .collect()
    };
    d.deploy(&[spec("web"), spec("api")], &events).await;
    assert_eq!(names(), ["api", "web"]);
    d.deploy(&[spec("web"), spec("api")], &events).await;
    assert_eq!(
        names(),
        ["api", "web"],
        "failed and rolled back stay recorded"
    );
    d.deploy(&[spec("web")], &events).await;
    assert_eq!(names(), ["web"], "what the apply removed leaves the record");
}

/// A sandbox copy never runs its release command: a migration there would act on the
/// baseline's data. The copy is applied at once, and the report says why nothing ran.
#[tokio::test]
async fn a_sandbox_copy_runs_no_release() {
    let dir = tempfile::tempdir().unwrap();
    let ok = crate::stages::ReleaseOutcome {
        tail: String::new(),
    };
    // The baseline: web unchanged (so no release), then the sandbox's one apply of its copy.
    let mut f = release_fakes(
        Action::Unchanged,
        Ok(ok),
        0,
        &[(&["api", "web"], &[]), (&["web--sb-feat"], &[])],
    );
    f.provisioner.expect_runs_sandboxes().return_const(true);
    f.provisioner
        .expect_reload_sidecars()
        .returning(|_, names, _| Ok(reloaded(names)));
    let mut d = f.deployer(dir.path(), 2);
    let (events, _rx) = Events::channel();
    let report = d.deploy(&[spec("api"), spec("web")], &events).await;
    assert!(report.ok, "{report:#?}");
    d.set_sandbox(Some(SandboxTarget {
        name: crate::SandboxName::new("feat").unwrap(),
        ttl: None,
    }));
    let (events, rx) = Events::channel();
    let report = d.deploy(&[spec("web")], &events).await;
    assert!(report.ok, "{report:#?}");
    drop(events);
    let said = drain(rx);
    assert!(
        said.iter().any(|e| e
            .message
            .contains("release command is not run for a sandbox copy")),
        "{said:#?}"
    );
}

#[tokio::test]
async fn a_successful_release_runs_before_the_replacement() {
    let dir = tempfile::tempdir().unwrap();
    let ok = crate::stages::ReleaseOutcome {
        tail: "Applying app.0001_initial... OK".into(),
    };
    // api (no release) is applied first, web after its release, with api kept as it then runs.
    let d = release_fakes(
        Action::Replace,
        Ok(ok),
        1,
        &[(&["api"], &["web"]), (&["web"], &["api"])],
    )
    .deployer(dir.path(), 2);
    let (events, rx) = Events::channel();
    let report = d.deploy(&[spec("web"), spec("api")], &events).await;
    assert!(report.ok, "{report:#?}");
    let web = report
        .services
        .iter()
        .find(|s| s.service.as_str() == "web")
        .unwrap();
    let stages: Vec<_> = web.stages.iter().map(|t| t.stage).collect();
    assert_eq!(
        stages,
        [
            Stage::Fetch,
            Stage::Resolve,
            Stage::Build,
            Stage::Certs,
            Stage::Render,
            Stage::Release,
            Stage::Provision,
            Stage::Health
        ]
    );
    assert_eq!(web.action, Some(Action::Replace));
    let events = drain(rx);
    let web_events: Vec<_> = events
        .iter()
        .filter(|e| e.service.as_ref().is_some_and(|s| s.as_str() == "web"))
        .collect();
    let release = web_events
        .iter()
        .position(|e| e.stage == Stage::Release && e.message.contains("succeeded"))
        .expect("a release success event");
    let health = web_events
        .iter()
        .position(|e| e.stage == Stage::Health)
        .expect("a health event");
    assert!(release < health);
    // The peer without a release was applied and proved before web's release started.
    let is =
        |e: &&crate::DeployEvent, svc: &str| e.service.as_ref().is_some_and(|s| s.as_str() == svc);
    let api_health = events
        .iter()
        .position(|e| is(&e, "api") && e.stage == Stage::Health)
        .expect("api's health event");
    let web_release = events
        .iter()
        .position(|e| {
            is(&e, "web") && e.stage == Stage::Release && e.message.starts_with("running")
        })
        .expect("web's release start");
    assert!(api_health < web_release, "{events:#?}");
}

#[tokio::test]
async fn a_failed_first_phase_runs_no_release_and_fails_every_service() {
    let dir = tempfile::tempdir().unwrap();
    let never = crate::stages::ReleaseOutcome {
        tail: String::new(),
    };
    // web's release would run after api is up; api's apply fails: no release, no second apply.
    let mut f = release_fakes(Action::Create, Ok(never), 0, &[]);
    f.provisioner
        .expect_apply()
        .withf(|stack, _, _| {
            stack.services.len() == 1
                && stack.services[0].service.as_str() == "api"
                && stack.keep.iter().map(|s| s.as_str()).collect::<Vec<_>>() == ["web"]
        })
        .times(1)
        .returning(|_, _, _| Err(ProvisionError::Engine("connection refused".into())));
    let d = f.deployer(dir.path(), 2);
    let report = d
        .deploy(&[spec("web"), spec("api")], &Events::discard())
        .await;
    assert!(!report.ok);
    assert!(
        report
            .error
            .as_deref()
            .unwrap()
            .contains("connection refused")
    );
    for s in &report.services {
        assert_eq!(s.failed_stage, Some(Stage::Provision), "{s:#?}");
        assert!(s.stages.iter().all(|t| t.stage != Stage::Release), "{s:#?}");
    }
    let web = report
        .services
        .iter()
        .find(|s| s.service.as_str() == "web")
        .unwrap();
    assert!(
        web.error.as_deref().unwrap().contains("not started"),
        "{web:#?}"
    );
}

#[tokio::test]
async fn an_unchanged_service_does_not_run_its_release() {
    let dir = tempfile::tempdir().unwrap();
    let never = crate::stages::ReleaseOutcome {
        tail: String::new(),
    };
    let d = release_fakes(Action::Unchanged, Ok(never), 0, &[(&["api", "web"], &[])])
        .deployer(dir.path(), 2);
    let (events, rx) = Events::channel();
    let report = d.deploy(&[spec("web"), spec("api")], &events).await;
    assert!(report.ok, "{report:#?}");
    let web = report
        .services
        .iter()
        .find(|s| s.service.as_str() == "web")
        .unwrap();
    assert!(web.stages.iter().all(|t| t.stage != Stage::Release));
    assert!(
        drain(rx).iter().any(|e| e.stage == Stage::Release
            && e.message.contains("not run: the service is unchanged"))
    );
}

#[tokio::test]
async fn a_target_without_release_support_refuses_at_plan_time_before_building() {
    let dir = tempfile::tempdir().unwrap();
    let mut f = Fakes::happy();
    f.resolver = MockEntryResolver::new();
    f.resolver.expect_resolve().returning(|_, _| {
        let mut e = entry();
        e.release = Some(crate::entry::ReleaseCommand {
            argv: vec!["python".into(), "migrate.py".into()],
            workdir: None,
            origin: "fly.toml line 4 ([deploy] release_command)".into(),
        });
        Ok(e)
    });
    f.builder = MockImageBuilder::new();
    f.builder.expect_planned().times(0);
    f.builder.expect_build().times(0);
    f.provisioner = MockProvisioner::new();
    f.provisioner.expect_runs_releases().return_const(false);
    f.provisioner.expect_name().return_const("swarm");
    f.provisioner.expect_diff().returning(|_| Ok(vec![]));
    let d = f.deployer(dir.path(), 1);
    let outcome = d.plan(&[spec("web")], &Events::discard()).await.unwrap();
    assert!(outcome.stack.services.is_empty());
    let err = outcome.failures[0].error.as_deref().unwrap();
    assert_eq!(outcome.failures[0].failed_stage, Some(Stage::Release));
    assert!(
        err.contains("the swarm provisioner cannot run release commands")
            && err.contains("python migrate.py")
            && err.contains("fly.toml line 4"),
        "{err}"
    );
}

#[tokio::test]
async fn plan_lists_the_release_commands() {
    let dir = tempfile::tempdir().unwrap();
    let mut f = Fakes::happy();
    f.resolver = MockEntryResolver::new();
    f.resolver.expect_resolve().returning(|src, _| {
        let mut e = entry();
        if src.dir.ends_with("web") {
            e.release = Some(crate::entry::ReleaseCommand {
                argv: vec!["python".into(), "manage.py".into(), "migrate".into()],
                workdir: None,
                origin: "Procfile line 2 (release)".into(),
            });
        }
        Ok(e)
    });
    f.provisioner = MockProvisioner::new();
    f.provisioner.expect_runs_releases().return_const(true);
    f.provisioner.expect_diff().returning(|_| Ok(vec![]));
    f.provisioner.expect_run_release().times(0);
    f.provisioner.expect_apply().times(0);
    let d = f.deployer(dir.path(), 2);
    let outcome = d
        .plan(&[spec("web"), spec("api")], &Events::discard())
        .await
        .unwrap();
    assert!(outcome.failures.is_empty(), "{:?}", outcome.failures);
    assert_eq!(outcome.releases.len(), 1);
    assert_eq!(
        outcome.releases[&ServiceName::new("web").unwrap()].origin,
        "Procfile line 2 (release)"
    );
    let json = serde_json::to_value(&outcome).unwrap();
    assert_eq!(
        json["releases"]["web"]["argv"],
        serde_json::json!(["python", "manage.py", "migrate"])
    );
}

/// A provisioner that does not keep copies beside the baseline (Swarm, Terraform) would take a
/// sandbox stack for the whole project and remove the baseline: the deploy and the plan are
/// refused before anything is built or applied (the mock has no `apply`, `diff` or `destroy`).
#[tokio::test]
async fn a_sandbox_is_refused_by_a_provisioner_that_does_not_run_sandboxes() {
    let dir = tempfile::tempdir().unwrap();
    let mut f = Fakes::happy();
    f.provisioner = MockProvisioner::new();
    f.provisioner.expect_runs_sandboxes().return_const(false);
    f.provisioner.expect_name().return_const("swarm");
    let mut d = f.deployer(dir.path(), 2);
    let (events, _rx) = Events::channel();
    d.set_sandbox(Some(SandboxTarget {
        name: crate::SandboxName::new("feat").unwrap(),
        ttl: None,
    }));
    let report = d.deploy(&[spec("api")], &events).await;
    assert!(!report.ok);
    let e = report.error.unwrap();
    assert!(
        e.contains("swarm provisioner does not run sandboxes") && e.contains("feat"),
        "{e}"
    );
    let e = d
        .plan(&[spec("api")], &events)
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("does not run sandboxes"), "{e}");
}

/// Sandboxes: a sandbox deploy needs the baseline recorded and names only its services; its
/// stack holds only the copies; the baseline's configs gain the routes without their spec hash
/// changing, and are reloaded; destroying the sandbox and its ttl take the routes away again.
#[tokio::test]
async fn a_sandbox_deploys_copies_beside_a_baseline_it_never_changes() {
    let dir = tempfile::tempdir().unwrap();
    let stacks: Arc<std::sync::Mutex<Vec<Stack>>> = Arc::default();
    let reloads: Arc<std::sync::Mutex<Vec<Vec<ServiceName>>>> = Arc::default();
    let destroyed: Arc<std::sync::Mutex<Vec<String>>> = Arc::default();
    let mut f = Fakes::happy();
    f.provisioner = MockProvisioner::new();
    f.provisioner.expect_runs_sandboxes().return_const(true);
    let seen = stacks.clone();
    f.provisioner.expect_apply().returning(move |stack, _, _| {
        seen.lock().unwrap().push(stack.clone());
        Ok(Applied {
            services: stack
                .services
                .iter()
                .map(|s| AppliedService {
                    service: s.service.clone(),
                    action: Action::Create,
                    endpoint: Some("127.0.0.1:40000".parse().unwrap()),
                    edge: None,
                    health: None,
                    error: None,
                })
                .collect(),
            removed: vec![],
        })
    });
    let r = reloads.clone();
    f.provisioner
        .expect_reload_sidecars()
        .returning(move |_, names, _| {
            r.lock().unwrap().push(names.to_vec());
            Ok(reloaded(names))
        });
    f.provisioner.expect_destroy().returning(|_, _| Ok(vec![]));
    let d_ = destroyed.clone();
    f.provisioner
        .expect_destroy_sandbox()
        .returning(move |_, name, _| {
            d_.lock().unwrap().push(name.to_string());
            Ok(vec![format!("container p-api--sb-{name}")])
        });
    let mut d = f.deployer(dir.path(), 2);
    let (events, _rx) = Events::channel();
    let feat = SandboxTarget {
        name: crate::SandboxName::new("feat").unwrap(),
        ttl: None,
    };

    // No baseline yet: refused, naming what is missing.
    d.set_sandbox(Some(feat.clone()));
    let report = d.deploy(&[spec("api")], &events).await;
    assert!(!report.ok);
    let e = report.error.unwrap();
    assert!(
        e.contains("no baseline deploy") && e.contains("feat"),
        "{e}"
    );

    d.set_sandbox(None);
    assert!(d.deploy(&[spec("web"), spec("api")], &events).await.ok);
    let state = dir.path().to_path_buf();
    let config = |svc: &str| {
        std::fs::read_to_string(state.join("services").join(svc).join("envoy.yaml")).unwrap()
    };
    assert_eq!(config("web"), "config for web with 2 members");

    // A service the baseline does not run: refused, listing the ones it runs.
    d.set_sandbox(Some(feat.clone()));
    let report = d.deploy(&[spec("db")], &events).await;
    let e = report.error.unwrap();
    assert!(e.contains("db") && e.contains("api, web"), "{e}");

    let report = d.deploy(&[spec("api")], &events).await;
    assert!(report.ok, "{report:#?}");
    assert_eq!(report.services[0].service.as_str(), "api--sb-feat");
    {
        let stacks = stacks.lock().unwrap();
        let sb = stacks.last().unwrap();
        assert_eq!(sb.sandbox.as_ref().unwrap().as_str(), "feat");
        assert_eq!(sb.services.len(), 1);
        let copy = &sb.services[0];
        assert_eq!(copy.service.as_str(), "api--sb-feat");
        assert_eq!(copy.app.name, "p-api--sb-feat");
        assert_eq!(copy.envoy.name, "p-api--sb-feat-envoy");
        assert_eq!(copy.app.labels["iac.sandbox"], "feat");
        assert_eq!(copy.envoy.labels["iac.sandbox"], "feat");
        assert_eq!(copy.app.env["IAC_SANDBOX"], "feat");
    }
    // The baseline's sidecars were rendered with the copy and reloaded.
    assert_eq!(config("web"), "config for web with 3 members");
    assert_eq!(
        config("api--sb-feat"),
        "config for api--sb-feat with 3 members"
    );
    let mut last: Vec<String> = reloads
        .lock()
        .unwrap()
        .last()
        .unwrap()
        .iter()
        .map(|s| s.to_string())
        .collect();
    last.sort();
    assert_eq!(last, ["api", "web"]);
    assert_eq!(d.sandboxes().unwrap().len(), 1);

    // Deploying the baseline again keeps the sandbox's routes, and its spec hashes.
    d.set_sandbox(None);
    assert!(d.deploy(&[spec("web"), spec("api")], &events).await.ok);
    {
        let stacks = stacks.lock().unwrap();
        let (first, again) = (&stacks[0], stacks.last().unwrap());
        assert!(again.sandbox.is_none());
        assert_eq!(
            again.services.len(),
            2,
            "the baseline stack never holds copies"
        );
        for (a, b) in first.services.iter().zip(&again.services) {
            assert_eq!(
                a.spec_hash, b.spec_hash,
                "{}: a sandbox must not change the baseline's hash",
                a.service
            );
        }
    }
    assert_eq!(config("web"), "config for web with 3 members");

    // Destroying the sandbox: its copies through the provisioner, its routes from the others.
    let removed = d.destroy_sandbox(&feat.name, &events).await.unwrap();
    assert_eq!(removed, ["container p-api--sb-feat"]);
    assert_eq!(config("web"), "config for web with 2 members");
    assert!(d.sandboxes().unwrap().is_empty());

    // A ttl that has passed: the next deploy removes the sandbox first.
    d.set_sandbox(Some(SandboxTarget {
        ttl: Some(Duration::ZERO),
        ..feat.clone()
    }));
    assert!(d.deploy(&[spec("api")], &events).await.ok);
    assert_eq!(d.sandboxes().unwrap().len(), 1);
    d.set_sandbox(None);
    assert_eq!(
        d.gc(&events).await.unwrap(),
        std::slice::from_ref(&feat.name)
    );
    assert!(d.sandboxes().unwrap().is_empty());
    assert_eq!(destroyed.lock().unwrap().as_slice(), ["feat", "feat"]);
    assert_eq!(config("web"), "config for web with 2 members");

    // Destroying the whole project forgets its records: a sandbox left behind is gone with
    // it, and a sandbox deploy afterwards is refused for want of a baseline.
    d.set_sandbox(Some(feat.clone()));
    assert!(d.deploy(&[spec("api")], &events).await.ok);
    assert_eq!(d.sandboxes().unwrap().len(), 1);
    d.set_sandbox(None);
    d.destroy(&events).await.unwrap();
    assert!(d.sandboxes().unwrap().is_empty());
    d.set_sandbox(Some(feat.clone()));
    let e = d.deploy(&[spec("api")], &events).await.error.unwrap();
    assert!(e.contains("no baseline deploy"), "{e}");
}

/// Every sidecar of `names` reloaded (what a provisioner answers when all went well).
fn reloaded(names: &[ServiceName]) -> Vec<crate::SidecarReload> {
    names
        .iter()
        .map(|n| crate::SidecarReload {
            service: n.clone(),
            outcome: crate::ReloadOutcome::Reloaded,
        })
        .collect()
}

/// Reload safety: a re-rendered sidecar config Envoy refuses goes back to the previous one (the
/// running Envoy never left it); one whose reload leaves the sidecar unhealthy goes back too and
/// is reloaded once more with it; both are warnings, the sandbox deploy itself stands.
#[tokio::test]
async fn a_refused_or_unhealthy_reload_restores_the_previous_config() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().to_path_buf();
    let config = move |svc: &str| {
        std::fs::read_to_string(state.join("services").join(svc).join("envoy.yaml")).unwrap()
    };
    // Per reload call: each sidecar's name and what its config file held then.
    type Calls = Vec<Vec<(String, String)>>;
    let calls: Arc<std::sync::Mutex<Calls>> = Arc::default();
    let mut f = Fakes::happy();
    f.provisioner.expect_runs_sandboxes().return_const(true);
    let seen = calls.clone();
    let read = config.clone();
    f.provisioner
        .expect_reload_sidecars()
        .returning(move |_, names, _| {
            let mut seen = seen.lock().unwrap();
            // What each sidecar's file holds when the provisioner reloads it.
            seen.push(
                names
                    .iter()
                    .map(|n| (n.to_string(), read(n.as_str())))
                    .collect(),
            );
            let first = seen.len() == 1;
            Ok(names
                .iter()
                .map(|n| crate::SidecarReload {
                    service: n.clone(),
                    outcome: match (first, n.as_str()) {
                        (true, "web") => crate::ReloadOutcome::Refused("bad route".into()),
                        (true, "db") => crate::ReloadOutcome::Unhealthy("no answer".into()),
                        _ => crate::ReloadOutcome::Reloaded,
                    },
                })
                .collect())
        });
    let mut d = f.deployer(dir.path(), 2);
    let (events, _rx) = Events::channel();
    assert!(
        d.deploy(&[spec("web"), spec("api"), spec("db")], &events)
            .await
            .ok
    );
    assert_eq!(config("web"), "config for web with 3 members");
    d.set_sandbox(Some(SandboxTarget {
        name: crate::SandboxName::new("feat").unwrap(),
        ttl: None,
    }));
    let (events, rx) = Events::channel();
    let report = d.deploy(&[spec("api")], &events).await;
    assert!(report.ok, "{report:#?}");
    drop(events);
    let calls = calls.lock().unwrap().clone();
    assert_eq!(calls.len(), 2, "{calls:?}");
    assert_eq!(
        calls[0],
        [
            (
                "api".to_string(),
                "config for api with 4 members".to_string()
            ),
            ("db".to_string(), "config for db with 4 members".to_string()),
            (
                "web".to_string(),
                "config for web with 4 members".to_string()
            ),
        ]
    );
    assert_eq!(
        calls[1],
        [("db".to_string(), "config for db with 3 members".to_string())],
        "the unhealthy one is reloaded again, on its previous config"
    );
    assert_eq!(config("web"), "config for web with 3 members");
    assert_eq!(config("db"), "config for db with 3 members");
    assert_eq!(config("api"), "config for api with 4 members");
    let said = drain(rx);
    let warned = |svc: &str, needle: &str| {
        said.iter().any(|e| {
            e.level == crate::EventLevel::Warn
                && e.service.as_ref().is_some_and(|s| s.as_str() == svc)
                && e.message.contains(needle)
        })
    };
    assert!(warned("web", "bad route"), "{said:#?}");
    assert!(warned("db", "no answer"), "{said:#?}");
}

/// A pod whose replacement was rolled back runs its old version: its sidecar config file goes
/// back to the old one (its Envoy reads that at its next restart), while a replaced pod keeps
/// the new one.
#[tokio::test]
async fn a_rolled_back_pod_keeps_its_previous_config_file() {
    let dir = tempfile::tempdir().unwrap();
    let mut f = Fakes::happy();
    f.provisioner = MockProvisioner::new();
    f.provisioner.expect_runs_sandboxes().return_const(true);
    let round = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let r = round.clone();
    f.provisioner.expect_apply().returning(move |stack, _, _| {
        let n = r.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Ok(Applied {
            services: stack
                .services
                .iter()
                .map(|s| AppliedService {
                    service: s.service.clone(),
                    action: match (n, s.service.as_str()) {
                        (1, "web") => Action::RolledBack,
                        (1, "api") => Action::Replace,
                        _ => Action::Create,
                    },
                    endpoint: Some("127.0.0.1:40000".parse().unwrap()),
                    edge: None,
                    health: None,
                    error: None,
                })
                .collect(),
            removed: vec![],
        })
    });
    let d = f.deployer(dir.path(), 2);
    let (events, _rx) = Events::channel();
    let state = dir.path().to_path_buf();
    let config = |svc: &str| {
        std::fs::read_to_string(state.join("services").join(svc).join("envoy.yaml")).unwrap()
    };
    d.deploy(&[spec("web"), spec("api")], &events).await;
    assert_eq!(config("web"), "config for web with 2 members");
    d.deploy(&[spec("web"), spec("api"), spec("db")], &events)
        .await;
    assert_eq!(
        config("web"),
        "config for web with 2 members",
        "rolled back"
    );
    assert_eq!(config("api"), "config for api with 3 members", "replaced");
    assert_eq!(config("db"), "config for db with 3 members", "created");
}
