//! Tests of branch and tag listing (`list_refs`): local repositories (`git+file:`, `path:`, a
//! forge whose clone URL is `file://`), and a real smart-HTTP server the test starts — `git
//! http-backend` run as CGI behind a small axum handler — for the remote listing, its caps and
//! a clone through the same server; and the same server over TLS with a private CA the test makes
//! (rcgen): `git+https://` listing and clone trusted through `[fetch] ca_bundle`, refused
//! without it. Everything stays on loopback.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use iac_core::{Events, FetchError, RefList, Slug, SourceFetcher};
use tokio::io::AsyncWriteExt;

use super::tests::{Fixture, git};
use super::{DefaultFetcher, FetchConfig, FetchOrigin};

/// Runs `git http-backend` for one request (CGI), serving the repositories under `root`.
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
    let split = out
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| (i, 4))
        .or_else(|| out.windows(2).position(|w| w == b"\n\n").map(|i| (i, 2)))
        .expect("CGI output has a header block");
    let head = String::from_utf8_lossy(&out[..split.0]).into_owned();
    let mut resp = Response::new(axum::body::Body::from(out[split.0 + split.1..].to_vec()));
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
    resp.into_response()
}

/// Serves the bare repositories under `root` over plain HTTP on loopback; returns the base URL.
pub(super) async fn git_http_server(root: &Path) -> String {
    let app = axum::Router::new()
        .fallback(cgi)
        .with_state(root.to_path_buf());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    base
}

/// A TLS listener for axum: TCP accept, then the rustls handshake (failed handshakes are
/// dropped, like a real server's).
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

/// A private CA (PEM written to `ca_pem`) and `git http-backend` over HTTPS with a leaf it
/// signed for `localhost` and `127.0.0.1`; returns the base URL (`https://localhost:PORT`).
pub(super) async fn git_https_server(root: &Path, ca_pem: &Path) -> String {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    std::fs::write(ca_pem, ca.pem()).unwrap();
    let issuer = Issuer::from_ca_cert_der(ca.der(), &ca_key).unwrap();
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()])
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
        acceptor: tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config)),
    };
    let port = listener.tcp.local_addr().unwrap().port();
    let app = axum::Router::new()
        .fallback(cgi)
        .with_state(root.to_path_buf());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("https://localhost:{port}")
}

/// The fixture plus a branch `feature/x` and a lightweight tag `v2`, pushed to the bare repo.
fn fixture() -> Fixture {
    let fx = Fixture::new();
    git(&fx.work, &["branch", "feature/x"]);
    git(&fx.work, &["tag", "v2"]);
    git(
        &fx.work,
        &["push", "-q", fx.bare().to_str().unwrap(), "feature/x", "v2"],
    );
    fx
}

fn expected() -> RefList {
    RefList {
        branches: vec!["feature/x".into(), "main".into()],
        tags: vec!["v1".into(), "v2".into()],
        default: Some("main".into()),
    }
}

fn config(fx: &Fixture) -> FetchConfig {
    FetchConfig {
        cache_dir: fx.dir.path().join("cache"),
        ..FetchConfig::default()
    }
}

#[tokio::test]
async fn local_listings_of_git_file_path_and_a_file_forge() {
    let fx = fixture();
    let mut c = config(&fx);
    c.github.clone_url = Some(format!(
        "file://{}/forge/{{owner}}/{{repo}}.git",
        fx.dir.path().display()
    ));
    let f = DefaultFetcher::new(c).unwrap();
    for s in [
        format!("git+file://{}#v1", fx.bare().display()),
        "gh:octo/hello".to_string(),
    ] {
        let slug = s.parse::<Slug>().unwrap();
        assert_eq!(f.list_refs(&slug).await.unwrap(), expected(), "{s}");
    }
    // path: a directory inside the work tree lists the work repository (its own branches).
    let slug = format!("path:{}", fx.work.join("pkg").display())
        .parse::<Slug>()
        .unwrap();
    let l = f.list_refs(&slug).await.unwrap();
    assert_eq!(l.branches, ["feature/x", "main"]);
    assert_eq!(l.default.as_deref(), Some("main"));

    let not_repo = tempfile::tempdir().unwrap();
    let s = format!("git+file://{}", not_repo.path().display());
    let err = f.list_refs(&s.parse::<Slug>().unwrap()).await.unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, FetchError::Refs { .. }), "{err:?}");
    assert!(
        msg.contains(&s) && msg.contains("expected a git repository"),
        "{msg}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_listing_over_smart_http_then_a_clone_through_the_same_server() {
    let fx = fixture();
    let base = git_http_server(&fx.dir.path().join("forge")).await;
    let mut c = config(&fx);
    c.github.clone_url = Some(format!("{base}/{{owner}}/{{repo}}.git"));
    c.github.archive_url = Some(format!("{base}/no-archives/{{repo}}/{{ref}}"));
    let f = DefaultFetcher::new(c.clone()).unwrap();
    let slug = "gh:octo/hello".parse::<Slug>().unwrap();
    assert_eq!(f.list_refs(&slug).await.unwrap(), expected());
    // Protocol v0/v1 (no ref-prefix filtering) gives the same answer.
    let mut v1 = c.clone();
    v1.git_config = vec!["protocol.version=1".into()];
    let f1 = DefaultFetcher::new(v1).unwrap();
    assert_eq!(f1.list_refs(&slug).await.unwrap(), expected());
    // The same server serves a clone (the archive URL 404s, so git is used).
    let src = f
        .fetch(
            &"gh:octo/hello#feature/x".parse::<Slug>().unwrap(),
            &Events::discard(),
        )
        .await
        .unwrap();
    assert_eq!(src.commit.as_deref(), Some(fx.c2.as_str()));
    assert!(src.origin.contains("git clone"), "{}", src.origin);

    // Caps: refs and bytes, each error naming the slug and the setting.
    let mut few = c.clone();
    few.max_refs = 2;
    let err = DefaultFetcher::new(few)
        .unwrap()
        .list_refs(&slug)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("gh:octo/hello") && err.contains("max_refs"),
        "{err}"
    );
    let mut small = c.clone();
    small.max_ref_bytes = 64;
    let err = DefaultFetcher::new(small)
        .unwrap()
        .list_refs(&slug)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("gh:octo/hello") && err.contains("max_ref_bytes"),
        "{err}"
    );

    // API-originated: loopback is refused before connecting, naming the slug.
    let mut api = c.clone();
    api.origin = FetchOrigin::Api;
    let err = DefaultFetcher::new(api)
        .unwrap()
        .list_refs(&slug)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, FetchError::Refused { slug } if slug == "gh:octo/hello"),
        "{err:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn git_https_with_a_private_ca_through_ca_bundle() {
    let fx = fixture();
    let ca = fx.dir.path().join("ca.pem");
    let base = git_https_server(&fx.dir.path().join("forge"), &ca).await;
    let listing = format!("git+{base}/octo/hello.git");
    let slug: Slug = listing.parse().unwrap();
    let branch: Slug = format!("{listing}#feature/x").parse().unwrap();

    // Without the CA: the platform roots do not know it, and the error names the slug.
    let plain = DefaultFetcher::new(config(&fx)).unwrap();
    let err = plain.list_refs(&slug).await.unwrap_err().to_string();
    assert!(
        err.contains(&listing) && err.contains("certificate"),
        "{err}"
    );
    assert!(plain.fetch(&branch, &Events::discard()).await.is_err());

    let mut c = config(&fx);
    c.ca_bundle = Some(ca.clone());
    let f = DefaultFetcher::new(c.clone()).unwrap();
    assert_eq!(f.list_refs(&slug).await.unwrap(), expected());
    let src = f.fetch(&branch, &Events::discard()).await.unwrap();
    assert_eq!(src.commit.as_deref(), Some(fx.c2.as_str()));
    assert!(src.origin.contains("git clone"), "{}", src.origin);
    assert_eq!(
        std::fs::read_to_string(src.dir.join("main.py")).unwrap(),
        "print('two')\n"
    );

    // API-originated: refused for the loopback host, allowed by [fetch] allow_private_hosts.
    c.origin = FetchOrigin::Api;
    let err = DefaultFetcher::new(c.clone())
        .unwrap()
        .list_refs(&slug)
        .await
        .unwrap_err();
    assert!(matches!(err, FetchError::Refused { .. }), "{err:?}");
    c.allow_private_hosts = vec![super::AllowedHost::new("localhost").unwrap()];
    let api = DefaultFetcher::new(c).unwrap();
    assert_eq!(api.list_refs(&slug).await.unwrap(), expected());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listing_past_the_fetch_deadline_fails_naming_the_slug() {
    let fx = fixture();
    // Accepts connections and never answers.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = silent.local_addr().unwrap().port();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = silent.accept().await {
            held.push(s);
        }
    });
    let mut c = config(&fx);
    c.deadline = std::time::Duration::from_secs(1);
    c.github.clone_url = Some(format!("http://127.0.0.1:{port}/{{owner}}/{{repo}}.git"));
    let started = std::time::Instant::now();
    let err = DefaultFetcher::new(c)
        .unwrap()
        .list_refs(&"gh:octo/hello".parse::<Slug>().unwrap())
        .await
        .unwrap_err();
    assert!(
        matches!(&err, FetchError::Deadline { slug, secs: 1 } if slug == "gh:octo/hello"),
        "{err:?}"
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
}

/// Issue 22: the ref listing a fetch makes to resolve its ref (every deploy of a forge or
/// `git+https://` slug) goes through the same byte-counting transport as `GET /refs`: past
/// `[fetch] max_ref_bytes` it fails naming the setting, and no clone follows. Within the cap
/// the same fetch resolves, over protocol v2 (filtered by ref prefix) and v1 (everything).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fetchs_ref_resolution_is_capped_like_a_listing() {
    let fx = fixture();
    let base = git_http_server(&fx.dir.path().join("forge")).await;
    let mut c = config(&fx);
    c.github.clone_url = Some(format!("{base}/{{owner}}/{{repo}}.git"));
    c.github.archive_url = Some(format!("{base}/no-archives/{{repo}}/{{ref}}"));
    let slug = "gh:octo/hello#feature/x".parse::<Slug>().unwrap();
    for protocol in ["protocol.version=2", "protocol.version=1"] {
        let mut small = c.clone();
        small.git_config = vec![protocol.into()];
        small.max_ref_bytes = 64;
        let err = DefaultFetcher::new(small)
            .unwrap()
            .fetch(&slug, &Events::discard())
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("max_ref_bytes") && err.contains("larger than 64 bytes"),
            "{protocol}: {err}"
        );
        let mut fine = c.clone();
        fine.git_config = vec![protocol.into()];
        fine.cache_dir = fx.dir.path().join(format!("cache-{protocol}"));
        let src = DefaultFetcher::new(fine)
            .unwrap()
            .fetch(&slug, &Events::discard())
            .await
            .unwrap();
        assert_eq!(src.commit.as_deref(), Some(fx.c2.as_str()), "{protocol}");
    }
}

/// Issue 22: the clone's own ref listing is capped too. A full sha needs no resolution, so
/// the clone's listing is the only one; a repository with 3000 long branch names answers it
/// with about 400 KB. Past `[fetch] max_ref_bytes` the fetch fails naming the repository and
/// the setting; past `[fetch] max_refs` likewise; within both the same fetch clones the commit,
/// over protocol v2 and v1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_clones_own_ref_listing_is_capped_in_bytes_and_count() {
    let fx = fixture();
    let mut stdin = String::new();
    for i in 0..3000 {
        stdin.push_str(&format!(
            "create refs/heads/bulk/{i:04}-{} {}\n",
            "x".repeat(100),
            fx.c2
        ));
    }
    let mut child = std::process::Command::new("git")
        .arg("-C")
        .arg(fx.bare())
        .args(["update-ref", "--stdin"])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(stdin.as_bytes())
            .unwrap();
    }
    assert!(child.wait().unwrap().success(), "git update-ref");
    let base = git_http_server(&fx.dir.path().join("forge")).await;
    let mut c = config(&fx);
    c.github.clone_url = Some(format!("{base}/{{owner}}/{{repo}}.git"));
    c.github.archive_url = Some(format!("{base}/no-archives/{{repo}}/{{ref}}"));
    let slug = format!("gh:octo/hello#{}", fx.c2).parse::<Slug>().unwrap();
    let repo_url = format!("{base}/octo/hello.git");
    for protocol in ["protocol.version=2", "protocol.version=1"] {
        let fetch = |tweak: &dyn Fn(&mut FetchConfig)| {
            let mut c = c.clone();
            c.git_config = vec![protocol.into()];
            c.cache_dir = fx
                .dir
                .path()
                .join(format!("cache-{protocol}-{}", rand_suffix()));
            tweak(&mut c);
            let slug = slug.clone();
            async move {
                DefaultFetcher::new(c)
                    .unwrap()
                    .fetch(&slug, &Events::discard())
                    .await
            }
        };
        let err = fetch(&|c| c.max_ref_bytes = 64 * 1024)
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(&repo_url)
                && err.contains("max_ref_bytes")
                && err.contains("larger than 65536 bytes"),
            "{protocol}: {err}"
        );
        let err = fetch(&|c| c.max_refs = 100).await.unwrap_err().to_string();
        assert!(
            err.contains(&repo_url)
                && err.contains("more than 100 refs")
                && err.contains("max_refs"),
            "{protocol}: {err}"
        );
        let src = fetch(&|_| {}).await.unwrap();
        assert_eq!(src.commit.as_deref(), Some(fx.c2.as_str()), "{protocol}");
        assert!(src.origin.contains("git clone"), "{}", src.origin);
    }
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::SeqCst)
}
