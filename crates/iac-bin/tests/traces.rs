//! A deploy is one trace, and it reaches a real OTLP receiver: the tests start local receivers
//! — a tonic `TraceService` (OTLP/gRPC) and an axum route `POST /v1/traces` (OTLP/HTTP with
//! protobuf bodies) — and decode what iac sends.
//!
//! * The real `iac render` (fetch, resolve, build, certs, render; no engine needed) with
//!   `OTEL_EXPORTER_OTLP_ENDPOINT` set, over gRPC and over `http/protobuf`: one root span
//!   `BUILD render demo` (kind SERVER, `cicd.pipeline.*`), a child per service and stage with
//!   `cicd.pipeline.task.*` and `vcs.*`, and the resource `service.name=iac`, `service.version`.
//! * An in-process deploy (fake stages from iac-core's `mocks`, the real Terraform provisioner
//!   driving a stand-in `terraform`) exported through `iac_bin::telemetry`: root `SYNC deploy demo`
//!   with provision and health children, the `TRACEPARENT` each terraform call received naming the
//!   provision span, and the deploy events stamped with the trace.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{KeyValue, any_value};
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use prost::Message;

/// Every export request a receiver got.
#[derive(Clone, Default)]
struct Sink(Arc<Mutex<Vec<ExportTraceServiceRequest>>>);

#[tonic::async_trait]
impl TraceService for Sink {
    async fn export(
        &self,
        req: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.0.lock().unwrap().push(req.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

async fn grpc_receiver() -> (SocketAddr, Sink) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let sink = Sink::default();
    let svc = TraceServiceServer::new(sink.clone());
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(svc)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    (addr, sink)
}

async fn http_receiver() -> (SocketAddr, Sink) {
    let sink = Sink::default();
    let s = sink.clone();
    let app = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(
            move |headers: axum::http::HeaderMap, body: axum::body::Bytes| {
                let s = s.clone();
                async move {
                    assert_eq!(
                        headers.get("content-type").and_then(|v| v.to_str().ok()),
                        Some("application/x-protobuf"),
                        "OTLP/HTTP sends protobuf"
                    );
                    let req = ExportTraceServiceRequest::decode(body).expect("protobuf body");
                    s.0.lock().unwrap().push(req);
                    (
                        [("content-type", "application/x-protobuf")],
                        ExportTraceServiceResponse {
                            partial_success: None,
                        }
                        .encode_to_vec(),
                    )
                }
            },
        ),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (addr, sink)
}

/// One received span, flattened.
#[derive(Debug, Clone)]
struct Got {
    name: String,
    trace_id: String,
    span_id: String,
    parent: String,
    kind: i32,
    attrs: BTreeMap<String, String>,
    resource: BTreeMap<String, String>,
}

fn flat(kvs: &[KeyValue]) -> BTreeMap<String, String> {
    kvs.iter()
        .map(|kv| {
            let v = match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                Some(any_value::Value::StringValue(s)) => s.clone(),
                Some(any_value::Value::IntValue(i)) => i.to_string(),
                Some(any_value::Value::BoolValue(b)) => b.to_string(),
                Some(other) => format!("{other:?}"),
                None => String::new(),
            };
            (kv.key.clone(), v)
        })
        .collect()
}

impl Sink {
    fn spans(&self) -> Vec<Got> {
        let mut out = Vec::new();
        for req in self.0.lock().unwrap().iter() {
            for rs in &req.resource_spans {
                let resource = rs
                    .resource
                    .as_ref()
                    .map(|r| flat(&r.attributes))
                    .unwrap_or_default();
                for ss in &rs.scope_spans {
                    for s in &ss.spans {
                        out.push(Got {
                            name: s.name.clone(),
                            trace_id: hex(&s.trace_id),
                            span_id: hex(&s.span_id),
                            parent: hex(&s.parent_span_id),
                            kind: s.kind,
                            attrs: flat(&s.attributes),
                            resource: resource.clone(),
                        });
                    }
                }
            }
        }
        out
    }

    /// Waits until a span named `name` arrived (the exporter batches).
    async fn wait_for(&self, name: &str) -> Vec<Got> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let spans = self.spans();
            if spans.iter().any(|s| s.name == name) || Instant::now() > deadline {
                return spans;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples")
}

fn iac(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_iac"));
    cmd.args(args).current_dir(dir).env("RUST_LOG", "warn");
    for var in [
        "SUPABASE_URL",
        "SUPABASE_SERVICE_ROLE_KEY",
        "SUPABASE_JWT_SECRET",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        "OTEL_EXPORTER_OTLP_PROTOCOL",
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
        "OTEL_TRACES_EXPORTER",
        "OTEL_SERVICE_NAME",
        "TRACEPARENT",
    ] {
        cmd.env_remove(var);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run iac")
}

/// The span tree of one `iac render` of examples/repos.local.yaml.
fn assert_render_trace(spans: &[Got]) {
    let roots: Vec<&Got> = spans.iter().filter(|s| s.parent.is_empty()).collect();
    assert_eq!(roots.len(), 1, "one root span: {spans:#?}");
    let root = roots[0];
    assert_eq!(root.name, "BUILD render demo");
    assert_eq!(root.kind, SpanKind::Server as i32);
    assert_eq!(root.attrs["cicd.pipeline.name"], "render demo");
    assert_eq!(root.attrs["cicd.pipeline.action.name"], "BUILD");
    assert_eq!(root.attrs["cicd.pipeline.result"], "success");
    assert_eq!(root.attrs["cicd.pipeline.run.id"].len(), 16);
    assert_eq!(root.resource["service.name"], "iac");
    assert_eq!(root.resource["service.version"], env!("CARGO_PKG_VERSION"));
    for s in spans {
        assert_eq!(s.trace_id, root.trace_id, "one trace: {}", s.name);
    }
    for svc in ["hello", "greeter"] {
        for stage in ["fetch", "resolve", "build", "certs", "render"] {
            let name = format!("{stage} {svc}");
            let s = spans
                .iter()
                .find(|s| s.name == name)
                .unwrap_or_else(|| panic!("no span {name}: {spans:#?}"));
            assert_eq!(s.parent, root.span_id, "{name} is a child of the root");
            assert_eq!(s.kind, SpanKind::Internal as i32);
            assert_eq!(s.attrs["cicd.pipeline.task.name"], name);
            assert_eq!(s.attrs["cicd.pipeline.task.type"], "build");
            assert_eq!(s.attrs["cicd.pipeline.task.run.result"], "success");
            assert_eq!(s.attrs["cicd.pipeline.task.run.id"].len(), 16);
            assert_eq!(s.attrs["iac.service"], svc);
            assert_eq!(s.attrs["vcs.repository.name"], svc);
            let url = &s.attrs["vcs.repository.url.full"];
            assert!(
                url.starts_with("file://") && url.ends_with(&format!("examples/{svc}")),
                "{url}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn render_exports_one_trace_over_otlp_grpc() {
    let (addr, sink) = grpc_receiver().await;
    let dir = tempfile::tempdir().unwrap();
    let file = examples().join("repos.local.yaml");
    let endpoint = format!("http://{addr}");
    let d = dir.path().to_path_buf();
    let out = tokio::task::spawn_blocking(move || {
        iac(
            &d,
            &["render", "--file", file.to_str().unwrap(), "--out", "out"],
            &[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
                ("IAC_IMAGES__AGENT_BINARY", "/bin/true"),
            ],
        )
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let spans = sink.wait_for("BUILD render demo").await;
    assert_render_trace(&spans);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn render_exports_one_trace_over_otlp_http_protobuf() {
    let (addr, sink) = http_receiver().await;
    let dir = tempfile::tempdir().unwrap();
    let file = examples().join("repos.local.yaml");
    let endpoint = format!("http://{addr}");
    let d = dir.path().to_path_buf();
    let out = tokio::task::spawn_blocking(move || {
        iac(
            &d,
            &["render", "--file", file.to_str().unwrap(), "--out", "out"],
            &[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
                ("IAC_IMAGES__AGENT_BINARY", "/bin/true"),
            ],
        )
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let spans = sink.wait_for("BUILD render demo").await;
    assert_render_trace(&spans);
}

#[test]
fn console_exporter_prints_the_spans_and_none_exports_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let file = examples().join("repos.local.yaml");
    let args = ["render", "--file", file.to_str().unwrap(), "--out", "out"];
    let out = iac(
        dir.path(),
        &args,
        &[
            ("OTEL_TRACES_EXPORTER", "console"),
            ("IAC_IMAGES__AGENT_BINARY", "/bin/true"),
        ],
    );
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("BUILD render demo"), "{text}");
    assert!(text.contains("cicd.pipeline.task.name"), "{text}");
    let quiet = iac(
        dir.path(),
        &args,
        &[
            ("OTEL_TRACES_EXPORTER", "none"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9"),
            ("IAC_IMAGES__AGENT_BINARY", "/bin/true"),
        ],
    );
    assert!(quiet.status.success());
    assert!(!String::from_utf8_lossy(&quiet.stdout).contains("cicd.pipeline"));
}

mod deploy {
    //! The in-process deploy with fake stages and the real Terraform provisioner.

    use super::*;
    use iac_backends::provision::terraform::{TerraformConfig, TerraformProvisioner};
    use iac_core::*;
    use tracing_subscriber::layer::SubscriberExt;

    fn fake_terraform(dir: &Path, log: &Path) -> PathBuf {
        let fake = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../iac-backends/tests/fixtures/fake-terraform")
            .canonicalize()
            .unwrap();
        let bin = dir.join("terraform");
        std::fs::write(
            &bin,
            format!(
                "#!/bin/sh\nprintf '%s %s\\n' \"$1\" \"${{TRACEPARENT:-none}}\" >> {}\nexec python3 {} \"$@\"\n",
                log.display(),
                fake.display()
            ),
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
        bin
    }

    fn deployer(dir: &Path) -> Deployer {
        let mut fetcher = MockSourceFetcher::new();
        fetcher.expect_fetch().returning(|slug, _| {
            Ok(Source {
                dir: "/src".into(),
                commit: Some(format!("{}0123456789abcdef", slug.repo_name())),
                digest: "sha256:d".into(),
                origin: "test".into(),
            })
        });
        let mut resolver = MockEntryResolver::new();
        resolver.expect_resolve().returning(|_, _| {
            Ok(Entry {
                language: Language::Python,
                rule: "main.py".into(),
                argv: vec!["python".into(), "/app/main.py".into()],
                why: "root main.py".into(),
                port: None,
                ..Default::default()
            })
        });
        let mut builder = MockImageBuilder::new();
        builder.expect_build().returning(|s, _| {
            Ok(ImageRef {
                id: "sha256:i".into(),
                tag: format!("iac/demo-{}:k", s.service),
                key: "k".into(),
                reused: false,
            })
        });
        let mut pki = MockPki::new();
        let secrets = dir.join("secrets");
        pki.expect_issue().returning(move |_, svc| {
            Ok(IssuedCerts {
                paths: CertPaths {
                    ca: secrets.join("ca.pem"),
                    cert: secrets.join(format!("{svc}.pem")),
                    key: secrets.join(format!("{svc}.key")),
                },
                fingerprint: "fp".into(),
            })
        });
        let mut sidecar = MockSidecarRenderer::new();
        sidecar
            .expect_render()
            .returning(|_, svc| Ok(format!("config for {svc}")));
        let mut prober = MockHealthProber::new();
        prober.expect_check().returning(|t| {
            HealthReport::new(
                t.service.clone(),
                HealthState::Serving,
                None,
                "running".into(),
                1,
            )
        });
        let tp_log = dir.join("traceparents.log");
        let mut tf = TerraformConfig {
            binary: fake_terraform(dir, &tp_log).display().to_string(),
            work_root: dir.join("projects"),
            ..TerraformConfig::default()
        };
        tf.extra_env.insert(
            "FAKE_TF_LOG".into(),
            iac_backends::secret::Secret::new(dir.join("tf.log").display().to_string()),
        );
        Deployer::new(
            Stages {
                fetcher: Arc::new(fetcher),
                resolver: Arc::new(resolver),
                builder: Arc::new(builder),
                pki: Arc::new(pki),
                sidecar: Arc::new(sidecar),
                provisioner: Arc::new(TerraformProvisioner::new(tf)),
                prober: Arc::new(prober),
            },
            DeployOptions {
                project: ProjectName::new("demo").unwrap(),
                network: "iacnet-demo".into(),
                envoy_image: "iac/envoy:1.40.0".into(),
                parallelism: 2,
                state_dir: dir.join("state"),
                health_deadline: Duration::from_secs(5),
                health_settle: Duration::ZERO,
                health_settle_listening: Duration::ZERO,
                health_check_timeout: Duration::from_secs(2),
                otel_endpoint: None,
                deadline: Duration::from_secs(300),
                release_timeout: Duration::from_secs(60),
                egress: Default::default(),
                sandbox: None,
            },
        )
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_deploy_is_one_trace_and_its_traceparent_reaches_terraform_and_the_events() {
        let (addr, sink) = grpc_receiver().await;
        let provider = iac_bin::telemetry::provider(
            &iac_bin::telemetry::TracesExporter::OtlpGrpc,
            Some(&format!("http://{addr}")),
        )
        .unwrap()
        .unwrap();
        let subscriber =
            tracing_subscriber::registry().with(iac_bin::telemetry::otel_layer(&provider));
        iac_bin::telemetry::register_traceparent_source();
        // The only test of this binary that installs a subscriber in-process.
        tracing::subscriber::set_global_default(subscriber).unwrap();

        let dir = tempfile::tempdir().unwrap();
        let d = deployer(dir.path());
        let specs: Vec<ServiceSpec> = ["web", "api"]
            .into_iter()
            .map(|n| ServiceSpec {
                name: ServiceName::new(n).unwrap(),
                slug: format!("git+https://git.example/acme/{n}.git#main")
                    .parse()
                    .unwrap(),
                entrypoint: None,
                env: Default::default(),
                expose: Default::default(),
                replicas: 1,
                install: Default::default(),
                egress: Vec::new(),
            })
            .collect();
        let (events, mut rx) = Events::channel();
        let report = d.deploy(&specs, &events).await;
        drop(events);
        assert!(report.ok, "{report:#?}");
        provider.force_flush().unwrap();
        let spans = sink.wait_for("SYNC deploy demo").await;

        let root = spans
            .iter()
            .find(|s| s.name == "SYNC deploy demo")
            .unwrap_or_else(|| panic!("{spans:#?}"));
        assert!(root.parent.is_empty());
        assert_eq!(root.attrs["cicd.pipeline.action.name"], "SYNC");
        assert_eq!(root.attrs["cicd.pipeline.result"], "success");
        let child = |name: &str| -> &Got {
            let s = spans
                .iter()
                .find(|s| s.name == name)
                .unwrap_or_else(|| panic!("no span {name}: {spans:#?}"));
            assert_eq!(s.parent, root.span_id, "{name} is a child of the deploy");
            assert_eq!(s.trace_id, root.trace_id);
            s
        };
        for svc in ["web", "api"] {
            for stage in ["fetch", "resolve", "build", "certs", "render", "health"] {
                let s = child(&format!("{stage} {svc}"));
                assert_eq!(s.attrs["cicd.pipeline.task.run.result"], "success");
            }
            let fetch = child(&format!("fetch {svc}"));
            assert_eq!(
                fetch.attrs["vcs.repository.url.full"],
                format!("https://git.example/acme/{svc}.git")
            );
            assert_eq!(fetch.attrs["vcs.ref.head.name"], "main");
            assert_eq!(
                fetch.attrs["vcs.ref.head.revision"],
                format!("{svc}0123456789abcdef")
            );
            assert_eq!(
                child(&format!("build {svc}")).attrs["vcs.ref.head.revision"],
                format!("{svc}0123456789abcdef")
            );
            assert_eq!(
                child(&format!("health {svc}")).attrs["cicd.pipeline.task.type"],
                "test"
            );
        }
        let provision = child("provision");
        assert_eq!(provision.attrs["cicd.pipeline.task.type"], "deploy");

        // Every terraform call ran with the provision span's traceparent.
        let calls = std::fs::read_to_string(dir.path().join("traceparents.log")).unwrap();
        let want = format!("00-{}-{}-01", root.trace_id, provision.span_id);
        assert!(calls.lines().count() >= 3, "{calls}");
        for line in calls.lines() {
            assert!(line.ends_with(&want), "{line} (want {want})");
        }

        // The streamed events carry the trace: stage events the stage span's traceparent.
        let mut stamped = 0;
        while let Ok(ev) = rx.try_recv() {
            let Some(tp) = ev.traceparent.as_deref() else {
                // Only events emitted outside any span (none in the deployer itself).
                assert_ne!(ev.stage, Stage::Build, "{ev:?}");
                continue;
            };
            assert!(tp.starts_with(&format!("00-{}-", root.trace_id)), "{tp}");
            if ev.stage == Stage::Build && ev.service.as_ref().map(|s| s.as_str()) == Some("web") {
                let build = child("build web");
                assert_eq!(tp, format!("00-{}-{}-01", root.trace_id, build.span_id));
                stamped += 1;
            }
        }
        assert!(stamped > 0, "build events of web were stamped");
        let _ = provider.shutdown();
    }
}
