//! End-to-end tests of the fetchers, all offline: a git repository made by the test with the
//! `git` CLI (cloned bare as the "forge"), and a local axum server that plays the forge's archive
//! endpoint — it builds each tarball in memory with `git archive` (or serves a hostile one) and
//! counts every request.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};

use iac_core::{EventLevel, Events, FetchError, Slug, SourceFetcher};

use super::extract::tests::TarBuilder;
use super::{DefaultFetcher, FetchConfig};

pub(super) fn git(dir: &Path, args: &[&str]) -> String {
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
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A work repo and its bare clone at `<root>/forge/octo/hello.git`.
pub(super) struct Fixture {
    pub(super) dir: tempfile::TempDir,
    pub(super) work: PathBuf,
    /// `v1` (annotated tag) → c1; `main` → c2.
    pub(super) c1: String,
    pub(super) c2: String,
}

impl Fixture {
    pub(super) fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let work = dir.path().join("work");
        std::fs::create_dir_all(work.join("pkg")).unwrap();
        git(&work, &["init", "-q", "-b", "main"]);
        std::fs::write(work.join("main.py"), "print('one')\n").unwrap();
        std::fs::write(work.join("pkg/__init__.py"), "").unwrap();
        std::fs::write(work.join("run.sh"), "#!/bin/sh\nexec python3 main.py\n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(work.join("run.sh"), std::fs::Permissions::from_mode(0o755))
            .unwrap();
        std::os::unix::fs::symlink("main.py", work.join("entry.py")).unwrap();
        git(&work, &["add", "-A"]);
        git(&work, &["commit", "-q", "-m", "one"]);
        let c1 = git(&work, &["rev-parse", "HEAD"]);
        git(&work, &["tag", "-a", "v1", "-m", "release 1"]);
        std::fs::write(work.join("main.py"), "print('two')\n").unwrap();
        git(&work, &["commit", "-q", "-am", "two"]);
        let c2 = git(&work, &["rev-parse", "HEAD"]);
        let forge = dir.path().join("forge/octo");
        std::fs::create_dir_all(&forge).unwrap();
        git(
            dir.path(),
            &[
                "clone",
                "-q",
                "--bare",
                work.to_str().unwrap(),
                forge.join("hello.git").to_str().unwrap(),
            ],
        );
        Fixture { dir, work, c1, c2 }
    }

    pub(super) fn bare(&self) -> PathBuf {
        self.dir.path().join("forge/octo/hello.git")
    }

    /// Commits a change on main and pushes it to the bare repo; returns the new sha.
    fn advance_main(&self, content: &str) -> String {
        std::fs::write(self.work.join("main.py"), content).unwrap();
        git(&self.work, &["commit", "-q", "-am", "more"]);
        git(
            &self.work,
            &["push", "-q", self.bare().to_str().unwrap(), "main"],
        );
        git(&self.work, &["rev-parse", "HEAD"])
    }
}

#[derive(Clone)]
pub(super) enum Mode {
    /// `git archive` of the requested ref from the bare repo.
    Archive(PathBuf),
    NotFound,
    Bytes(Vec<u8>),
}

#[derive(Clone)]
struct ServerState {
    mode: Arc<Mutex<Mode>>,
    hits: Arc<Mutex<Vec<String>>>,
}

pub(super) struct Server {
    pub(super) base: String,
    state: ServerState,
}

impl Server {
    pub(super) async fn start(mode: Mode) -> Server {
        let state = ServerState {
            mode: Arc::new(Mutex::new(mode)),
            hits: Arc::default(),
        };
        let app = axum::Router::new()
            .route("/{*path}", axum::routing::get(serve))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Server { base, state }
    }

    pub(super) fn hits(&self) -> Vec<String> {
        self.state.hits.lock().unwrap().clone()
    }

    pub(super) fn set(&self, mode: Mode) {
        *self.state.mode.lock().unwrap() = mode;
    }
}

async fn serve(
    axum::extract::State(st): axum::extract::State<ServerState>,
    axum::extract::Path(path): axum::extract::Path<String>,
) -> (axum::http::StatusCode, Vec<u8>) {
    st.hits.lock().unwrap().push(path.clone());
    let mode = st.mode.lock().unwrap().clone();
    match mode {
        Mode::NotFound => (axum::http::StatusCode::NOT_FOUND, b"Not Found".to_vec()),
        Mode::Bytes(b) => (axum::http::StatusCode::OK, b),
        Mode::Archive(bare) => {
            // Path: {owner}/{repo}/tar.gz/{ref...}
            let Some((_, reference)) = path.split_once("/tar.gz/") else {
                return (axum::http::StatusCode::NOT_FOUND, Vec::new());
            };
            let out = Command::new("git")
                .arg("-C")
                .arg(&bare)
                .args([
                    "archive",
                    "--format=tar.gz",
                    "--prefix=octo-hello-abc1234/",
                    reference,
                ])
                .output()
                .unwrap();
            if out.status.success() {
                (axum::http::StatusCode::OK, out.stdout)
            } else {
                (axum::http::StatusCode::NOT_FOUND, out.stderr)
            }
        }
    }
}

pub(super) fn config(fx: &Fixture, server: &Server, cache: &Path) -> FetchConfig {
    let mut c = FetchConfig {
        cache_dir: cache.to_path_buf(),
        ..FetchConfig::default()
    };
    c.github.archive_url = Some(format!("{}/{{owner}}/{{repo}}/tar.gz/{{ref}}", server.base));
    c.github.clone_url = Some(format!(
        "file://{}/forge/{{owner}}/{{repo}}.git",
        fx.dir.path().display()
    ));
    c
}

pub(super) fn slug(s: &str) -> Slug {
    s.parse().unwrap()
}

fn events() -> (Events, iac_core::EventReceiver) {
    Events::channel()
}

fn drain(rx: &mut iac_core::EventReceiver) -> Vec<iac_core::DeployEvent> {
    let mut v = Vec::new();
    while let Ok(e) = rx.try_recv() {
        v.push(e);
    }
    v
}

pub(super) fn assert_tree(dir: &Path, main_py: &str) {
    assert_eq!(
        std::fs::read_to_string(dir.join("main.py")).unwrap(),
        main_py
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(dir.join("run.sh"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o111, 0o111, "run.sh keeps its executable bit");
    assert_eq!(
        std::fs::read_link(dir.join("entry.py")).unwrap(),
        Path::new("main.py")
    );
    assert!(dir.join("pkg/__init__.py").is_file());
    assert!(!dir.join(".git").exists(), "no .git in cached trees");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tarball_fetch_then_cache_hits_for_tag_branch_and_sha() {
    let fx = Fixture::new();
    let server = Server::start(Mode::Archive(fx.bare())).await;
    let cache = fx.dir.path().join("cache");
    let f = DefaultFetcher::new(config(&fx, &server, &cache)).unwrap();
    let (ev, mut rx) = events();

    // Tag: downloaded once (the archive of the resolved commit), then served from the index.
    let s = f.fetch(&slug("gh:octo/hello#v1"), &ev).await.unwrap();
    assert_eq!(s.commit.as_deref(), Some(fx.c1.as_str()));
    assert!(s.origin.starts_with("tarball "), "{}", s.origin);
    assert!(s.digest.starts_with("sha256:") && s.digest.len() == 71);
    assert!(s.dir.starts_with(&cache), "{:?}", s.dir);
    assert_tree(&s.dir, "print('one')\n");
    assert_eq!(server.hits(), vec![format!("octo/hello/tar.gz/{}", fx.c1)]);
    assert!(
        drain(&mut rx)
            .iter()
            .any(|e| e.message.contains("downloading"))
    );

    // The second fetch of the tag does no network work at all: the forge's git repo may vanish.
    let moved = fx.dir.path().join("forge/octo/moved.git");
    std::fs::rename(fx.bare(), &moved).unwrap();
    let again = f.fetch(&slug("gh:octo/hello#v1"), &ev).await.unwrap();
    std::fs::rename(&moved, fx.bare()).unwrap();
    assert_eq!(
        (
            again.dir.clone(),
            again.digest.clone(),
            again.commit.clone()
        ),
        (s.dir.clone(), s.digest.clone(), s.commit.clone())
    );
    assert!(again.origin.contains("cache hit"), "{}", again.origin);
    assert_eq!(
        server.hits().len(),
        1,
        "no second request reached the server"
    );

    // A full sha that is cached: no network either.
    let by_sha = f
        .fetch(&slug(&format!("gh:octo/hello#{}", fx.c1)), &ev)
        .await
        .unwrap();
    assert_eq!(by_sha.dir, s.dir);
    assert_eq!(server.hits().len(), 1);

    // Branch: re-resolved each time (ls-remote on the clone URL), downloaded only when it moved.
    let m = f.fetch(&slug("gh:octo/hello#main"), &ev).await.unwrap();
    assert_eq!(m.commit.as_deref(), Some(fx.c2.as_str()));
    assert_tree(&m.dir, "print('two')\n");
    assert_eq!(server.hits().len(), 2);
    let m2 = f.fetch(&slug("gh:octo/hello#main"), &ev).await.unwrap();
    assert_eq!(m2.dir, m.dir);
    assert!(m2.origin.contains("cache hit"), "{}", m2.origin);
    assert_eq!(server.hits().len(), 2, "unmoved branch: no download");
    let no_ref = f.fetch(&slug("gh:octo/hello"), &ev).await.unwrap();
    assert_eq!(
        no_ref.commit.as_deref(),
        Some(fx.c2.as_str()),
        "no ref = remote HEAD"
    );
    assert_eq!(server.hits().len(), 2);

    let c3 = fx.advance_main("print('three')\n");
    let m3 = f.fetch(&slug("gh:octo/hello#main"), &ev).await.unwrap();
    assert_eq!(m3.commit.as_deref(), Some(c3.as_str()));
    assert_tree(&m3.dir, "print('three')\n");
    assert_eq!(server.hits().len(), 3, "moved branch: downloaded again");
    assert_ne!(m3.digest, m.digest);

    // Staging dirs are gone.
    let tmp: Vec<_> = std::fs::read_dir(cache.join("tmp")).unwrap().collect();
    assert!(tmp.is_empty(), "staging left behind: {tmp:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_commit_has_same_digest_via_tarball_and_git() {
    let fx = Fixture::new();
    let server = Server::start(Mode::Archive(fx.bare())).await;
    let a = DefaultFetcher::new(config(&fx, &server, &fx.dir.path().join("cache-a"))).unwrap();
    let b = DefaultFetcher::new(config(&fx, &server, &fx.dir.path().join("cache-b"))).unwrap();
    let ev = Events::discard();
    let t = a.fetch(&slug("gh:octo/hello#v1"), &ev).await.unwrap();
    let g = b
        .fetch(
            &slug(&format!("git+file://{}#v1", fx.bare().display())),
            &ev,
        )
        .await
        .unwrap();
    assert!(
        t.origin.starts_with("tarball") && g.origin.starts_with("git clone"),
        "{} / {}",
        t.origin,
        g.origin
    );
    assert_eq!(t.commit, g.commit);
    assert_eq!(
        t.digest, g.digest,
        "tree digest is independent of the transport"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn git_fallback_when_the_archive_404s() {
    let fx = Fixture::new();
    let server = Server::start(Mode::NotFound).await;
    let f = DefaultFetcher::new(config(&fx, &server, &fx.dir.path().join("cache"))).unwrap();
    let (ev, mut rx) = events();
    let s = f.fetch(&slug("gh:octo/hello#v1"), &ev).await.unwrap();
    assert_eq!(s.commit.as_deref(), Some(fx.c1.as_str()));
    assert_tree(&s.dir, "print('one')\n");
    assert!(s.origin.starts_with("git clone file://"), "{}", s.origin);
    assert!(
        s.origin.contains("tarball unavailable") && s.origin.contains("404"),
        "{}",
        s.origin
    );
    assert_eq!(server.hits().len(), 1);
    let evs = drain(&mut rx);
    assert!(
        evs.iter().any(|e| e.level == EventLevel::Warn
            && e.message.contains("falling back to git clone")
            && e.message.contains("404")),
        "{evs:#?}"
    );

    // The clone landed in the same cache: the next fetch of the tag is a hit, no request.
    let again = f.fetch(&slug("gh:octo/hello#v1"), &ev).await.unwrap();
    assert_eq!(again.dir, s.dir);
    assert_eq!(server.hits().len(), 1);

    // Both unavailable: one error carrying both reasons.
    let e = f
        .fetch(&slug("gh:octo/missing#main"), &ev)
        .await
        .unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, FetchError::Fallback { .. }), "{msg}");
    assert!(
        msg.contains("404") && msg.contains("git clone failed"),
        "{msg}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tarball_by_name_when_refs_cannot_be_resolved() {
    let fx = Fixture::new();
    let server = Server::start(Mode::Archive(fx.bare())).await;
    let cache = fx.dir.path().join("cache");
    let mut cfg = config(&fx, &server, &cache);
    cfg.resolve_refs = false;
    let f = DefaultFetcher::new(cfg).unwrap();
    let ev = Events::discard();
    let s = f.fetch(&slug("gh:octo/hello#main"), &ev).await.unwrap();
    assert_eq!(
        s.commit.as_deref(),
        Some(fx.c2.as_str()),
        "commit read from the archive's pax header"
    );
    assert_eq!(server.hits(), vec!["octo/hello/tar.gz/main".to_string()]);
    let again = f.fetch(&slug("gh:octo/hello#main"), &ev).await.unwrap();
    assert_eq!(
        server.hits().len(),
        2,
        "an unresolved branch is downloaded again"
    );
    assert_eq!(again.dir, s.dir, "…and lands on the same commit-keyed tree");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_archive_from_the_server_is_rejected_without_fallback() {
    let fx = Fixture::new();
    let evil = TarBuilder::new()
        .dir("top/")
        .file("top/ok.py", b"x")
        .symlink("top/esc", "../../../../etc")
        .gz();
    let server = Server::start(Mode::Bytes(evil)).await;
    let cache = fx.dir.path().join("cache");
    let f = DefaultFetcher::new(config(&fx, &server, &cache)).unwrap();
    let e = f
        .fetch(&slug("gh:octo/hello#v1"), &Events::discard())
        .await
        .unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, FetchError::Unsafe { .. }), "{msg}");
    assert!(
        msg.contains("\"top/esc\"") && msg.contains("outside the tree"),
        "{msg}"
    );
    assert!(
        !cache.join("trees").exists()
            || std::fs::read_dir(cache.join("trees"))
                .unwrap()
                .next()
                .is_none()
    );
    assert!(
        std::fs::read_dir(cache.join("tmp"))
            .unwrap()
            .next()
            .is_none(),
        "staging removed"
    );

    server.set(Mode::Bytes(
        TarBuilder::new()
            .dir("top/")
            .file("top/a", &[1u8; 3000])
            .file("top/b", &[2u8; 3000])
            .gz(),
    ));
    let mut cfg = config(&fx, &server, &cache);
    cfg.max_bytes = 4000;
    let f = DefaultFetcher::new(cfg).unwrap();
    let msg = f
        .fetch(&slug("gh:octo/hello#main"), &Events::discard())
        .await
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("top/b") && msg.contains("limit of 4000"),
        "{msg}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn git_file_slugs_branch_tag_sha_and_errors() {
    let fx = Fixture::new();
    let cache = fx.dir.path().join("cache");
    let f = DefaultFetcher::new(FetchConfig {
        cache_dir: cache.clone(),
        ..FetchConfig::default()
    })
    .unwrap();
    let ev = Events::discard();
    let url = format!("git+file://{}", fx.bare().display());

    let head = f.fetch(&slug(&url), &ev).await.unwrap();
    assert_eq!(head.commit.as_deref(), Some(fx.c2.as_str()));
    assert!(head.origin.contains("depth 1"), "{}", head.origin);
    assert_tree(&head.dir, "print('two')\n");
    let tag = f.fetch(&slug(&format!("{url}#v1")), &ev).await.unwrap();
    assert_eq!(
        tag.commit.as_deref(),
        Some(fx.c1.as_str()),
        "annotated tag peeled to its commit"
    );
    assert_tree(&tag.dir, "print('one')\n");
    let branch = f.fetch(&slug(&format!("{url}#main")), &ev).await.unwrap();
    assert_eq!(branch.dir, head.dir);

    // A sha that is not a ref tip, in a fresh cache: fetched by id, depth 1.
    let f2 = DefaultFetcher::new(FetchConfig {
        cache_dir: fx.dir.path().join("cache2"),
        ..FetchConfig::default()
    })
    .unwrap();
    let sha = f2
        .fetch(&slug(&format!("{url}#{}", fx.c1)), &ev)
        .await
        .unwrap();
    assert_eq!(sha.commit.as_deref(), Some(fx.c1.as_str()));
    assert_tree(&sha.dir, "print('one')\n");
    assert_eq!(sha.digest, tag.digest);

    // Cached sha and tag: no access to the repository at all.
    let moved = fx.dir.path().join("moved.git");
    std::fs::rename(fx.bare(), &moved).unwrap();
    assert_eq!(
        f2.fetch(&slug(&format!("{url}#{}", fx.c1)), &ev)
            .await
            .unwrap()
            .dir,
        sha.dir
    );
    assert_eq!(
        f.fetch(&slug(&format!("{url}#v1")), &ev).await.unwrap().dir,
        tag.dir
    );
    let gone = f
        .fetch(&slug(&format!("{url}#main")), &ev)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        gone.contains(&fx.bare().display().to_string()),
        "a branch is re-resolved: {gone}"
    );
    std::fs::rename(&moved, fx.bare()).unwrap();

    let missing = f
        .fetch(&slug(&format!("{url}#nope")), &ev)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        missing.contains("\"nope\" not found") && missing.contains("refs/tags/v1"),
        "{missing}"
    );
    let short = f
        .fetch(&slug(&format!("{url}#{}", &fx.c1[..8])), &ev)
        .await
        .unwrap_err()
        .to_string();
    assert!(short.contains("full 40-hex sha"), "{short}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sha_refused_shallowly_falls_back_to_a_full_clone() {
    let fx = Fixture::new();
    // c2 stops being a ref tip; over protocol v0 `git upload-pack` refuses wants of non-tip
    // commits (uploadpack.allowReachableSHA1InWant is off by default), so depth 1 is impossible.
    let c3 = fx.advance_main("print('three')\n");
    let cfg = FetchConfig {
        cache_dir: fx.dir.path().join("cache"),
        git_config: vec!["protocol.version=0".into()],
        ..FetchConfig::default()
    };
    let f = DefaultFetcher::new(cfg).unwrap();
    let url = format!("git+file://{}", fx.bare().display());
    let s = f
        .fetch(&slug(&format!("{url}#{}", fx.c2)), &Events::discard())
        .await
        .unwrap();
    assert_eq!(s.commit.as_deref(), Some(fx.c2.as_str()));
    assert_tree(&s.dir, "print('two')\n");
    assert!(
        s.origin.contains("full clone: shallow fetch of") && s.origin.contains(&fx.c2),
        "{}",
        s.origin
    );
    // A tip is still fetched shallowly with the same settings.
    let tip = f
        .fetch(&slug(&format!("{url}#main")), &Events::discard())
        .await
        .unwrap();
    assert_eq!(tip.commit.as_deref(), Some(c3.as_str()));
    assert!(tip.origin.contains("depth 1"), "{}", tip.origin);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_fetches_of_one_slug_share_one_tree() {
    let fx = Fixture::new();
    let server = Server::start(Mode::Archive(fx.bare())).await;
    let f = DefaultFetcher::new(config(&fx, &server, &fx.dir.path().join("cache"))).unwrap();
    let ev = Events::discard();
    let s = slug("gh:octo/hello#main");
    let (a, b, c) = tokio::join!(f.fetch(&s, &ev), f.fetch(&s, &ev), f.fetch(&s, &ev));
    let (a, b, c) = (a.unwrap(), b.unwrap(), c.unwrap());
    assert!(a.dir == b.dir && b.dir == c.dir && a.digest == c.digest);
    assert_tree(&a.dir, "print('two')\n");
    let trees: Vec<_> = std::fs::read_dir(fx.dir.path().join("cache/trees"))
        .unwrap()
        .collect();
    assert_eq!(trees.len(), 2, "one tree + its metadata: {trees:?}");
}

#[tokio::test]
async fn path_slugs_use_the_directory_in_place() {
    let d = tempfile::tempdir().unwrap();
    let app = d.path().join("app");
    std::fs::create_dir_all(app.join(".venv/bin")).unwrap();
    std::fs::create_dir_all(app.join(".git")).unwrap();
    std::fs::create_dir_all(app.join("pkg/__pycache__")).unwrap();
    std::fs::write(app.join("main.py"), "print(1)\n").unwrap();
    std::fs::write(app.join("pkg/__pycache__/m.pyc"), "junk").unwrap();
    let f = DefaultFetcher::new(FetchConfig {
        cache_dir: d.path().join("cache"),
        ..FetchConfig::default()
    })
    .unwrap();
    let ev = Events::discard();
    let s = f
        .fetch(&slug(&format!("path:{}", app.display())), &ev)
        .await
        .unwrap();
    assert_eq!(s.dir, std::fs::canonicalize(&app).unwrap());
    assert_eq!(s.commit, None);
    std::fs::write(app.join(".venv/bin/python"), "host interpreter").unwrap();
    std::fs::write(app.join(".git/HEAD"), "ref: refs/heads/x").unwrap();
    std::fs::write(app.join("pkg/__pycache__/n.pyc"), "junk").unwrap();
    let same = f
        .fetch(&slug(&format!("path:{}", app.display())), &ev)
        .await
        .unwrap();
    assert_eq!(
        same.digest, s.digest,
        "what the image leaves out (.venv, .git, __pycache__) does not change the digest"
    );
    std::fs::write(app.join("main.py"), "print(2)\n").unwrap();
    let changed = f
        .fetch(&slug(&format!("path:{}", app.display())), &ev)
        .await
        .unwrap();
    assert_ne!(changed.digest, s.digest);
    assert!(
        !d.path().join("cache").exists(),
        "path: never copies into the cache"
    );

    let missing = d.path().join("nope");
    let e = f
        .fetch(&slug(&format!("path:{}", missing.display())), &ev)
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains(&missing.display().to_string()), "{e}");
}
