//! Attacks on the fetchers from issue 9, each performed for real against local servers and
//! local git repositories: a hostile git tree (the archive symlink escape's twin), a server that
//! trickles one byte per second (archive and git), oversized git packs and blobs, archives that
//! lie about their commit, a tree of one repository posing as another's, and a redirect that
//! would carry a forge token to another host.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use iac_core::{Events, FetchError, SourceFetcher};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::extract::tests::TarBuilder;
use super::tests::{Fixture, Mode, Server, assert_tree, config, git, slug};
use super::{DefaultFetcher, FetchConfig, Secret};

/// `git hash-object --literally -w` of raw object bytes (git refuses to build such trees).
fn write_object(repo: &Path, kind: &str, data: &[u8]) -> String {
    let mut child = Command::new("git")
        .arg("-C")
        .arg(repo)
        .args(["hash-object", "--literally", "-w", "--stdin", "-t", kind])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(child.stdin.as_mut().unwrap(), data).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "hash-object -t {kind}");
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// One raw tree entry: `<mode> <name>\0<20-byte id>`.
fn entry(mode: &str, name: &str, id: &str) -> Vec<u8> {
    let mut e = format!("{mode} {name}\0").into_bytes();
    e.extend(hex::decode(id).unwrap());
    e
}

/// The git-tree twin of the archive: a bare repository whose `main` has a tree `top`
/// holding the link `esc -> <to_victim>` and an entry named `esc/x` (a `/` inside one name,
/// which only a hostile server sends) that is a link too.
fn hostile_git_repo(dir: &Path, to_victim: &str) -> std::path::PathBuf {
    let bare = dir.join("evil.git");
    git(dir, &["init", "-q", "--bare", bare.to_str().unwrap()]);
    let esc = write_object(&bare, "blob", to_victim.as_bytes());
    let x = write_object(&bare, "blob", b"../etc/passwd");
    let top = [entry("120000", "esc", &esc), entry("120000", "esc/x", &x)].concat();
    let top = write_object(&bare, "tree", &top);
    let root = write_object(&bare, "tree", &entry("40000", "top", &top));
    let commit = git(&bare, &["commit-tree", &root, "-m", "evil"]);
    git(&bare, &["update-ref", "refs/heads/main", &commit]);
    bare
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn git_tree_twin_of_the_symlink_escape_lands_nowhere() {
    let d = tempfile::tempdir().unwrap();
    let victim = d.path().join("victim");
    std::fs::create_dir(&victim).unwrap();
    // The tree is written to <cache>/tmp/git-XXXX/tree; from its `top/` five `..` reach `d`.
    let bare = hostile_git_repo(d.path(), "../../../../../victim");
    let cache = d.path().join("cache");
    let f = DefaultFetcher::new(FetchConfig {
        cache_dir: cache.clone(),
        ..FetchConfig::default()
    })
    .unwrap();
    let e = f
        .fetch(
            &slug(&format!("git+file://{}#main", bare.display())),
            &Events::discard(),
        )
        .await
        .unwrap_err();
    let msg = e.to_string();
    let landed: Vec<_> = std::fs::read_dir(&victim).unwrap().collect();
    assert!(landed.is_empty(), "created outside the tree: {landed:?}");
    assert!(matches!(e, FetchError::Unsafe { .. }), "{msg}");
    assert!(
        msg.contains("\"top/esc/x\"") && msg.contains("containing '/'"),
        "{msg}"
    );
    assert!(
        std::fs::read_dir(cache.join("tmp"))
            .unwrap()
            .next()
            .is_none(),
        "staging removed"
    );
    assert!(
        !cache.join("trees").exists()
            || std::fs::read_dir(cache.join("trees"))
                .unwrap()
                .next()
                .is_none()
    );
}

/// A raw HTTP server that answers every request with a 200 header and then `body` at one byte
/// per second. Returns its address.
async fn trickle_server(body: Vec<u8>, content_type: &'static str) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            let body = body.clone();
            tokio::spawn(async move {
                let mut req = [0u8; 4096];
                let _ = sock.read(&mut req).await;
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\r\n",
                    body.len()
                );
                if sock.write_all(head.as_bytes()).await.is_err() {
                    return;
                }
                for b in body {
                    if sock.write_all(&[b]).await.is_err() || sock.flush().await.is_err() {
                        return;
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            });
        }
    });
    addr
}

async fn wait_until_empty(dir: &Path) {
    for _ in 0..100 {
        if std::fs::read_dir(dir)
            .map(|mut d| d.next().is_none())
            .unwrap_or(true)
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let left: Vec<_> = std::fs::read_dir(dir).unwrap().collect();
    panic!("{} not emptied: {left:?}", dir.display());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trickled_archive_hits_the_total_deadline() {
    let fx = Fixture::new();
    let body = TarBuilder::new()
        .dir("top/")
        .file("top/main.py", &[b'x'; 4096])
        .gz();
    let addr = trickle_server(body, "application/gzip").await;
    let cache = fx.dir.path().join("cache");
    let mut cfg = FetchConfig {
        cache_dir: cache.clone(),
        deadline: std::time::Duration::from_secs(3),
        ..FetchConfig::default()
    };
    cfg.github.archive_url = Some(format!("http://{addr}/{{owner}}/{{repo}}/tar.gz/{{ref}}"));
    cfg.github.clone_url = Some(format!(
        "file://{}/forge/{{owner}}/{{repo}}.git",
        fx.dir.path().display()
    ));
    // The idle timeout (30 s) never fires: a byte arrives every second.
    assert!(cfg.http_timeout > std::time::Duration::from_secs(2));
    let f = DefaultFetcher::new(cfg).unwrap();
    let started = Instant::now();
    let e = f
        .fetch(&slug("gh:octo/hello#v1"), &Events::discard())
        .await
        .unwrap_err();
    let took = started.elapsed();
    let msg = e.to_string();
    assert!(matches!(e, FetchError::Deadline { secs: 3, .. }), "{msg}");
    assert!(
        msg.contains("gh:octo/hello#v1") && msg.contains("deadline of 3 s"),
        "{msg}"
    );
    assert!(
        took >= Duration::from_secs(3) && took < Duration::from_secs(8),
        "{took:?}"
    );
    // The abandoned extraction removes its own staging dir.
    wait_until_empty(&cache.join("tmp")).await;
    assert!(!cache.join("trees").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trickling_git_server_hits_the_total_deadline() {
    let d = tempfile::tempdir().unwrap();
    // Every request (ref listing, archive) is answered one byte per second.
    let advert = b"001e# service=git-upload-pack\n0000".repeat(50);
    let addr = trickle_server(advert, "application/x-git-upload-pack-advertisement").await;
    let mut cfg = FetchConfig {
        cache_dir: d.path().join("cache"),
        deadline: std::time::Duration::from_secs(2),
        ..FetchConfig::default()
    };
    cfg.github.archive_url = Some(format!("http://{addr}/{{owner}}/{{repo}}/tar.gz/{{ref}}"));
    cfg.github.clone_url = Some(format!("http://{addr}/{{owner}}/{{repo}}.git"));
    let f = DefaultFetcher::new(cfg).unwrap();
    let started = Instant::now();
    let e = f
        .fetch(&slug("gh:octo/slow#main"), &Events::discard())
        .await
        .unwrap_err();
    let took = started.elapsed();
    assert!(
        matches!(&e, FetchError::Deadline { slug, secs: 2 } if slug == "gh:octo/slow#main"),
        "{e}"
    );
    assert!(took < Duration::from_secs(6), "{took:?}");
}

/// `len` bytes that do not compress (xorshift).
fn noise(len: usize, mut seed: u64) -> Vec<u8> {
    (0..len)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed as u8
        })
        .collect()
}

/// A repository with one commit holding `name` = `data`; returns its path.
fn repo_with(dir: &Path, name: &str, data: &[u8]) -> std::path::PathBuf {
    let work = dir.join("big");
    std::fs::create_dir_all(&work).unwrap();
    git(&work, &["init", "-q", "-b", "main"]);
    std::fs::write(work.join(name), data).unwrap();
    git(&work, &["add", "-A"]);
    git(&work, &["commit", "-q", "-m", "big"]);
    work
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn git_packs_are_capped_on_disk() {
    let d = tempfile::tempdir().unwrap();
    let work = repo_with(d.path(), "blob.bin", &noise(2 << 20, 0x9e37_79b9_7f4a_7c15));
    let cache = d.path().join("cache");
    let f = DefaultFetcher::new(FetchConfig {
        cache_dir: cache.clone(),
        max_pack_bytes: 256 * 1024,
        ..FetchConfig::default()
    })
    .unwrap();
    let e = f
        .fetch(
            &slug(&format!("git+file://{}", work.display())),
            &Events::discard(),
        )
        .await
        .unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, FetchError::TooLarge { .. }), "{msg}");
    assert!(
        msg.contains("git transfer from file://")
            && msg.contains("max_pack_bytes")
            && msg.contains("limit of 262144"),
        "{msg}"
    );
    wait_until_empty(&cache.join("tmp")).await;

    // The tree cap alone (the default pack cap) lets it through.
    let ok = DefaultFetcher::new(FetchConfig {
        cache_dir: d.path().join("cache2"),
        ..FetchConfig::default()
    })
    .unwrap()
    .fetch(
        &slug(&format!("git+file://{}", work.display())),
        &Events::discard(),
    )
    .await
    .unwrap();
    assert_eq!(
        std::fs::metadata(ok.dir.join("blob.bin")).unwrap().len(),
        2 << 20
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn git_blobs_are_refused_by_their_header_before_inflation() {
    let d = tempfile::tempdir().unwrap();
    // 32 MiB of zeros: a pack of a few KiB that inflates to 32 MiB.
    let work = repo_with(d.path(), "bomb.bin", &vec![0u8; 32 << 20]);
    let f = DefaultFetcher::new(FetchConfig {
        cache_dir: d.path().join("cache"),
        max_bytes: 1 << 20,
        ..FetchConfig::default()
    })
    .unwrap();
    let e = f
        .fetch(
            &slug(&format!("git+file://{}", work.display())),
            &Events::discard(),
        )
        .await
        .unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, FetchError::TooLarge { .. }), "{msg}");
    assert!(
        msg.contains("\"bomb.bin\"")
            && msg.contains(&format!("{} bytes by its object header", 32 << 20))
            && msg.contains("refused before inflating")
            && msg.contains("limit of 1048576"),
        "{msg}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_archive_claiming_another_commit_than_the_forge_resolved_is_refused() {
    let fx = Fixture::new();
    // v1 resolves to c1; the archive says it is c2 (and holds something else entirely).
    let liar = TarBuilder::new()
        .commit(&fx.c2)
        .dir("top/")
        .file("top/main.py", b"print('pwned')\n")
        .gz();
    let server = Server::start(Mode::Bytes(liar)).await;
    let cache = fx.dir.path().join("cache");
    let f = DefaultFetcher::new(config(&fx, &server, &cache)).unwrap();
    let e = f
        .fetch(&slug("gh:octo/hello#v1"), &Events::discard())
        .await
        .unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, FetchError::Unsafe { .. }), "{msg}");
    assert!(
        msg.contains("pax_global_header")
            && msg.contains(&format!("claims to be commit {}", fx.c2))
            && msg.contains(&fx.c1),
        "{msg}"
    );
    assert!(
        !cache.join("trees").exists()
            || std::fs::read_dir(cache.join("trees"))
                .unwrap()
                .next()
                .is_none(),
        "nothing cached"
    );

    // The commit it claimed is later fetched from an honest server: the real tree, not the lie.
    server.set(Mode::Archive(fx.bare()));
    let real = f
        .fetch(
            &slug(&format!("gh:octo/hello#{}", fx.c2)),
            &Events::discard(),
        )
        .await
        .unwrap();
    assert_tree(&real.dir, "print('two')\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tree_of_one_repository_is_never_served_for_another() {
    let fx = Fixture::new();
    // GitHub: the honest fixture repository. GitLab: another server, whose archive of
    // `evil/mal#main` claims to be GitHub's c1.
    let honest = Server::start(Mode::Archive(fx.bare())).await;
    let evil_archive = TarBuilder::new()
        .commit(&fx.c1)
        .dir("top/")
        .file("top/main.py", b"print('pwned')\n")
        .gz();
    let evil = Server::start(Mode::Bytes(evil_archive)).await;
    let cache = fx.dir.path().join("cache");
    let mut cfg = config(&fx, &honest, &cache);
    // No ref listing: the archive's claim is all there is about its commit.
    cfg.resolve_refs = false;
    cfg.gitlab.archive_url = Some(format!("{}/{{owner}}/{{repo}}/tar.gz/{{ref}}", evil.base));
    cfg.gitlab.clone_url = Some(format!(
        "file://{}/gitlab/{{owner}}/{{repo}}.git",
        fx.dir.path().display()
    ));
    let f = DefaultFetcher::new(cfg).unwrap();
    let ev = Events::discard();

    let mal = f.fetch(&slug("gl:evil/mal#main"), &ev).await.unwrap();
    assert_eq!(
        std::fs::read_to_string(mal.dir.join("main.py")).unwrap(),
        "print('pwned')\n"
    );
    assert!(
        mal.origin.contains("as the archive claims"),
        "{}",
        mal.origin
    );

    // GitHub's c1 by full sha: not served from GitLab's tree; downloaded from GitHub.
    let hello = f
        .fetch(&slug(&format!("gh:octo/hello#{}", fx.c1)), &ev)
        .await
        .unwrap();
    assert_tree(&hello.dir, "print('one')\n");
    assert_ne!(hello.dir, mal.dir);
    assert_eq!(honest.hits(), vec![format!("octo/hello/tar.gz/{}", fx.c1)]);

    // Now cached for GitHub's repository (no request), but still not for GitLab's.
    let again = f
        .fetch(&slug(&format!("gh:octo/hello#{}", fx.c1)), &ev)
        .await
        .unwrap();
    assert_eq!(again.dir, hello.dir);
    assert_eq!(honest.hits().len(), 1);
    let evil_hits = evil.hits().len();
    let other = f
        .fetch(&slug(&format!("gl:evil/mal#{}", fx.c1)), &ev)
        .await
        .unwrap();
    assert_ne!(other.dir, hello.dir, "a full sha of another repository");
    assert_eq!(evil.hits().len(), evil_hits + 1, "asked its own forge");
}

/// Records the headers of every request; redirects to `to` (same path) when set, else serves
/// `git archive` of the requested ref of `bare`.
#[derive(Clone)]
struct Recorder {
    seen: Arc<Mutex<Vec<(String, axum::http::HeaderMap)>>>,
    to: Option<String>,
    bare: std::path::PathBuf,
}

impl Recorder {
    async fn start(host: &str, to: Option<String>, bare: &Path) -> (String, Recorder) {
        let rec = Recorder {
            seen: Arc::default(),
            to,
            bare: bare.to_path_buf(),
        };
        let app = axum::Router::new()
            .route("/{*path}", axum::routing::get(record))
            .with_state(rec.clone());
        let listener = tokio::net::TcpListener::bind(format!("{host}:0"))
            .await
            .unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (base, rec)
    }

    fn header_values(&self, name: &str) -> Vec<String> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter_map(|(_, h)| h.get(name).map(|v| v.to_str().unwrap().to_string()))
            .collect()
    }

    fn requests(&self) -> usize {
        self.seen.lock().unwrap().len()
    }
}

async fn record(
    axum::extract::State(rec): axum::extract::State<Recorder>,
    axum::extract::Path(path): axum::extract::Path<String>,
    headers: axum::http::HeaderMap,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    rec.seen.lock().unwrap().push((path.clone(), headers));
    if let Some(to) = &rec.to {
        // One same-origin hop first (`/first/...` → `/...`), then off to the other host.
        let location = match path.strip_prefix("first/") {
            Some(rest) => format!("/{rest}"),
            None => format!("{to}/{path}"),
        };
        return (
            axum::http::StatusCode::FOUND,
            [(axum::http::header::LOCATION, location)],
        )
            .into_response();
    }
    let reference = path.rsplit('/').next().unwrap_or_default().to_string();
    let out = Command::new("git")
        .arg("-C")
        .arg(&rec.bare)
        .args(["archive", "--format=tar.gz", "--prefix=x/", &reference])
        .output()
        .unwrap();
    (axum::http::StatusCode::OK, out.stdout).into_response()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forge_tokens_never_follow_a_redirect_to_another_host() {
    let fx = Fixture::new();
    let (b_base, b) = Recorder::start("127.0.0.2", None, &fx.bare()).await;
    let (a_base, a) = Recorder::start("127.0.0.1", Some(b_base), &fx.bare()).await;
    let mut cfg = FetchConfig {
        cache_dir: fx.dir.path().join("cache"),
        ..FetchConfig::default()
    };
    let clone = format!(
        "file://{}/forge/{{owner}}/{{repo}}.git",
        fx.dir.path().display()
    );
    let archive = format!("{a_base}/first/{{owner}}/{{repo}}/tar.gz/{{ref}}");
    cfg.gitlab.archive_url = Some(archive.clone());
    cfg.gitlab.clone_url = Some(clone.clone());
    cfg.gitlab.token = Some(Secret::new("glpat-must-stay-home"));
    cfg.github.archive_url = Some(archive);
    cfg.github.clone_url = Some(clone);
    cfg.github.token = Some(Secret::new("ghp-must-stay-home"));
    let f = DefaultFetcher::new(cfg).unwrap();
    let ev = Events::discard();

    let gl = f.fetch(&slug("gl:octo/hello#v1"), &ev).await.unwrap();
    assert_tree(&gl.dir, "print('one')\n");
    assert_eq!(
        a.header_values("private-token"),
        vec!["glpat-must-stay-home"; 2],
        "the token goes to the configured host, across a same-origin redirect"
    );
    assert_eq!(b.requests(), 1, "the archive came from the other host");
    assert!(
        b.header_values("private-token").is_empty(),
        "PRIVATE-TOKEN leaked to the redirect target"
    );

    let gh = f.fetch(&slug("gh:octo/hello#main"), &ev).await.unwrap();
    assert_tree(&gh.dir, "print('two')\n");
    assert_eq!(
        a.header_values("authorization"),
        vec!["Bearer ghp-must-stay-home"; 2]
    );
    assert_eq!(b.requests(), 2);
    assert!(
        b.header_values("authorization").is_empty(),
        "Authorization leaked to the redirect target"
    );
}

#[test]
fn a_set_interrupt_flag_stops_the_git_transfer() {
    use std::sync::atomic::AtomicBool;

    use super::extract::Limits;
    use super::git::{GitBounds, fetch_tree};

    let fx = Fixture::new();
    let staging = tempfile::tempdir().unwrap();
    let bounds = GitBounds {
        limits: Limits {
            max_bytes: 1 << 20,
            max_files: 100,
        },
        max_pack_bytes: 1 << 30,
        refs: super::refs::RefLimits {
            max_refs: 10_000,
            max_bytes: 8 << 20,
        },
        // What the deadline does when it passes.
        interrupt: Arc::new(AtomicBool::new(true)),
    };
    let url = format!("file://{}", fx.bare().display());
    let e = fetch_tree(&url, &fx.c2, staging.path(), &bounds, &[], None)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("shallow fetch interrupted (the fetch's deadline passed)"),
        "{e}"
    );
    assert!(
        !e.contains("full clone"),
        "an interrupted fetch is not retried: {e}"
    );
    assert!(!staging.path().join("tree").exists());
}
