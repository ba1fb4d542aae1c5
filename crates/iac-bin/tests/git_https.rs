//! `git+https://` for real, end to end through the binary and the admin API: a smart-HTTP git
//! server the test starts (`git http-backend` run as CGI behind axum) over TLS with a private CA
//! made by rcgen, trusted through `[fetch] ca_bundle`. `iac refs` lists the branches, tags and
//! default; `iac inspect` of `git+https://localhost:PORT/…#branch` fetches through it (the
//! deploy's fetch stage, without needing a container engine); `GET /refs` on a real
//! `LiveBackend` lists them once `[fetch] allow_private_hosts` names the host and refuses them
//! before. `iac deploy` of a `git+https://` slug goes all the way: fetched over TLS, built,
//! deployed to SERVING on the engine, destroyed. Nothing leaves loopback.

mod api_support;
mod e2e;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;

use api_support::*;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::Response;
use tokio::io::AsyncWriteExt;

fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .env("GIT_AUTHOR_NAME", "t")
        .env("GIT_AUTHOR_EMAIL", "t@example.invalid")
        .env("GIT_COMMITTER_NAME", "t")
        .env("GIT_COMMITTER_EMAIL", "t@example.invalid")
        .output()
        .expect("git runs");
    assert!(out.status.success(), "git {args:?}");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// `git http-backend` for one request (CGI) over the repositories under `root`.
async fn cgi(
    State(root): State<PathBuf>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let header = |n: &str| {
        headers
            .get(n)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    let mut child = tokio::process::Command::new("git")
        .arg("http-backend")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("GIT_PROJECT_ROOT", &root)
        .env("GIT_HTTP_EXPORT_ALL", "1")
        .env("REQUEST_METHOD", method.as_str())
        .env("PATH_INFO", uri.path())
        .env("QUERY_STRING", uri.query().unwrap_or(""))
        .env("CONTENT_TYPE", header("content-type"))
        .env("CONTENT_LENGTH", body.len().to_string())
        .env("GIT_PROTOCOL", header("git-protocol"))
        .env("HTTP_CONTENT_ENCODING", header("content-encoding"))
        .env("REMOTE_ADDR", "127.0.0.1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("git http-backend starts");
    let mut stdin = child.stdin.take().unwrap();
    let write = async move {
        let _ = stdin.write_all(&body).await;
    };
    let (_, out) = tokio::join!(write, child.wait_with_output());
    let out = out.expect("git http-backend runs").stdout;
    let (at, sep) = out
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| (i, 4))
        .or_else(|| out.windows(2).position(|w| w == b"\n\n").map(|i| (i, 2)))
        .expect("CGI output has a header block");
    let head = String::from_utf8_lossy(&out[..at]).into_owned();
    let mut resp = Response::new(axum::body::Body::from(out[at + sep..].to_vec()));
    for line in head.lines() {
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        let v = v.trim();
        if k.eq_ignore_ascii_case("status") {
            let code = v.split(' ').next().unwrap().parse().unwrap();
            *resp.status_mut() = StatusCode::from_u16(code).unwrap();
        } else {
            resp.headers_mut()
                .insert::<axum::http::HeaderName>(k.parse().unwrap(), v.parse().unwrap());
        }
    }
    resp
}

struct TlsListener {
    tcp: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let Ok((tcp, addr)) = self.tcp.accept().await else {
                continue;
            };
            if let Ok(tls) = self.acceptor.accept(tcp).await {
                return (tls, addr);
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.tcp.local_addr()
    }
}

/// Writes the CA to `ca_pem` and serves `root` over HTTPS; returns `https://localhost:PORT`.
async fn git_https_server(root: &Path, ca_pem: &Path) -> String {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    std::fs::write(ca_pem, ca.pem()).unwrap();
    let issuer = Issuer::from_ca_cert_der(ca.der(), &ca_key).unwrap();
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["localhost".into()])
        .unwrap()
        .signed_by(&leaf_key, &issuer)
        .unwrap();
    let config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(
            vec![leaf.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into()),
        )
        .unwrap();
    let listener = TlsListener {
        tcp: tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
        acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)),
    };
    let port = listener.tcp.local_addr().unwrap().port();
    let app = axum::Router::new()
        .fallback(cgi)
        .with_state(root.to_path_buf());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("https://localhost:{port}")
}

/// `<root>/srv/octo/hello.git` (bare) with `main` (HEAD), `feature/x` and tag `v1`; returns
/// the commit of `feature/x`.
fn repo(root: &Path) -> String {
    let work = root.join("work");
    std::fs::create_dir_all(&work).unwrap();
    git(&work, &["init", "-q", "-b", "main"]);
    std::fs::write(work.join("main.py"), "print('hello')\n").unwrap();
    git(&work, &["add", "-A"]);
    git(&work, &["commit", "-q", "-m", "one"]);
    git(&work, &["tag", "v1"]);
    git(&work, &["checkout", "-q", "-b", "feature/x"]);
    std::fs::write(work.join("main.py"), "print('feature')\n").unwrap();
    git(&work, &["commit", "-q", "-am", "two"]);
    let feature = git(&work, &["rev-parse", "HEAD"]);
    git(&work, &["checkout", "-q", "main"]);
    std::fs::create_dir_all(root.join("srv/octo")).unwrap();
    git(
        root,
        &[
            "clone",
            "-q",
            "--bare",
            work.to_str().unwrap(),
            root.join("srv/octo/hello.git").to_str().unwrap(),
        ],
    );
    feature
}

fn iac(dir: &Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_iac"))
        .args(args)
        .current_dir(dir)
        .env("RUST_LOG", "warn")
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .output()
        .expect("run iac")
}

fn listed() -> serde_json::Value {
    serde_json::json!({"branches": ["feature/x", "main"], "tags": ["v1"], "default": "main"})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refs_and_fetch_over_git_https_with_a_private_ca() {
    let dir = tempfile::tempdir().unwrap();
    let feature = repo(dir.path());
    let ca = dir.path().join("ca.pem");
    let base = git_https_server(&dir.path().join("srv"), &ca).await;
    let slug = format!("git+{base}/octo/hello.git");
    let d = dir.path().to_path_buf();

    // Without the CA the certificate is unknown; the error names the slug.
    let out = iac(&d, &["refs", &slug]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains(&slug) && err.contains("UnknownIssuer"),
        "{err}"
    );

    std::fs::write(d.join("iac.toml"), "[fetch]\nca_bundle = \"ca.pem\"\n").unwrap();
    let out = iac(&d, &["refs", &slug, "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v, listed());

    let out = iac(&d, &["inspect", &format!("{slug}#feature/x"), "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["source"]["commit"], feature.as_str(), "{v}");

    // GET /refs on the real backend (Unix socket: the operator): refused, then allowed.
    for (allow, status) in [(false, 403), (true, 200)] {
        let mut cfg = iac_bin::config::IacConfig::default();
        cfg.fetch.ca_bundle = Some(ca.clone());
        cfg.fetch.cache_dir = d.join("cache");
        if allow {
            cfg.fetch.allow_private_hosts =
                vec![iac_backends::fetch::AllowedHost::new("localhost").unwrap()];
        }
        let backend =
            iac_bin::wiring::LiveBackend::new(cfg, iac_core::ProjectName::new("demo").unwrap());
        let srv = start(Arc::new(backend), Arc::new(StaticVerifier)).await;
        let uri = format!(
            "/refs?slug={}",
            slug.replace(':', "%3A").replace('+', "%2B")
        );
        let (got, _, body) = uds_request(&srv.uds, "GET", &uri, &[], None).await;
        assert_eq!(got, status, "allow_private_hosts {allow}: {body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        if status == 200 {
            assert_eq!(v, listed());
        } else {
            assert_eq!(v["error"]["code"], "source_refused", "{v}");
            assert!(
                v["error"]["message"].as_str().unwrap().contains(&slug),
                "{v}"
            );
        }
        srv.shutdown().await.unwrap();
    }
}

/// `<root>/srv/octo/worker.git` (bare, `main`): a worker that runs until SIGTERM.
fn worker_repo(root: &Path) {
    let work = root.join("worker-work");
    std::fs::create_dir_all(&work).unwrap();
    git(&work, &["init", "-q", "-b", "main"]);
    std::fs::write(
        work.join("main.py"),
        "import signal, sys, time\nsignal.signal(signal.SIGTERM, lambda *_: sys.exit(0))\nprint('worker up', flush=True)\nwhile True:\n    time.sleep(1)\n",
    )
    .unwrap();
    git(&work, &["add", "-A"]);
    git(&work, &["commit", "-q", "-m", "worker"]);
    std::fs::create_dir_all(root.join("srv/octo")).unwrap();
    git(
        root,
        &[
            "clone",
            "-q",
            "--bare",
            work.to_str().unwrap(),
            root.join("srv/octo/worker.git").to_str().unwrap(),
        ],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_over_git_https_reaches_serving_and_destroys() {
    if e2e::skip_without_docker("deploy_over_git_https_reaches_serving_and_destroys") {
        return;
    }
    let p = e2e::Project::new();
    let d = p.workdir.path().to_path_buf();
    worker_repo(&d);
    let ca = d.join("ca.pem");
    let base = git_https_server(&d.join("srv"), &ca).await;
    let slug = format!("git+{base}/octo/worker.git#main");
    std::fs::write(d.join("iac.toml"), "[fetch]\nca_bundle = \"ca.pem\"\n").unwrap();
    std::fs::write(d.join("repos.yaml"), format!("- {slug}\n")).unwrap();
    // The server runs on this runtime: the blocking `iac` children run beside it.
    let t = std::time::Instant::now();
    let out = {
        let d = d.clone();
        let name = p.name.clone();
        tokio::task::spawn_blocking(move || {
            e2e::iac(
                &d,
                &name,
                &["deploy", "--file", "repos.yaml", "--json"],
                &[],
                &[],
            )
        })
        .await
        .unwrap()
    };
    let report = e2e::json_of(&out)["report"].clone();
    assert_eq!(out.status.code(), Some(0), "{report:#}");
    let services = report["services"].as_array().unwrap();
    assert_eq!(services.len(), 1, "{report:#}");
    assert_eq!(services[0]["service"], "worker", "{report:#}");
    assert_eq!(services[0]["health"]["state"], "SERVING", "{report:#}");
    eprintln!(
        "deployed over git+https in {:.1}s",
        t.elapsed().as_secs_f64()
    );
    let names = e2e::docker(&[
        "ps",
        "--filter",
        &format!("label=iac.project={}", p.name),
        "--format",
        "{{.Names}}",
    ]);
    assert!(
        names.lines().any(|n| n == format!("{}-worker", p.name)),
        "{names}"
    );
    let out = {
        let d = d.clone();
        let name = p.name.clone();
        tokio::task::spawn_blocking(move || e2e::iac(&d, &name, &["destroy"], &[], &[]))
            .await
            .unwrap()
    };
    assert!(out.status.success(), "{out:?}");
    let left = e2e::docker(&[
        "ps",
        "-a",
        "--filter",
        &format!("label=iac.project={}", p.name),
        "-q",
    ]);
    assert!(left.trim().is_empty(), "destroy left {left}");
}
