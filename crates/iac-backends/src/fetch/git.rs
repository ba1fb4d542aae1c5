//! Git backend (gix): ref resolution with a ref listing (the `git ls-remote` equivalent) and a
//! depth-1 fetch of exactly the resolved commit, whose tree is then written into the cache
//! through the same safe `TreeWriter` as archives (see `extract.rs`; no `.git/` in the result;
//! submodules are skipped and reported). Works for `https://` and `file://` URLs; gix runs `git upload-pack`
//! for `file://`, so the `git` binary must be on PATH for local repositories.
//!
//! A commit sha that the server refuses to send shallowly (servers speaking only protocol v0
//! without `uploadpack.allowAnySHA1InWant`) is fetched with a full clone instead, and the
//! origin says so.
//!
//! Guarded fetches (API-originated, see `guard.rs`): the URL is checked before anything
//! connects, and HTTP(S) transfers run with gix's transport options as the git configuration
//! makes them but with redirects off and a reqwest client built with the guard's filtering
//! resolver and no proxy; a name the resolver refused makes the error `FetchError::Refused`.
//!
//! Bounds (the server is untrusted): the transfer runs with an interrupt flag that the fetch's
//! deadline and a disk watcher set — the watcher measures the staging repository every
//! [`WATCH_INTERVAL`] and stops the transfer once it holds more than `max_pack_bytes`, and the
//! size is checked once more when the transfer ends. Every object's size is read from its header
//! before it is inflated (blobs against the tree's `max_bytes`, trees and commits against the
//! metadata bound), and tree entry names must be single path components (a hostile server can
//! send names containing `/`).

use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use gix::bstr::ByteSlice;
use iac_core::{FetchError, Source};

use super::cache::{Cache, IndexEntry, RefKind, TreeKey};
use super::extract::{Limits, TreeWriter, WriteError, is_full_sha};
use super::guard::NetGuard;

/// A ref as the remote advertised it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedRef {
    /// Full name (`refs/heads/main`, `refs/tags/v1`, `HEAD`), or the sha itself.
    pub name: String,
    /// The commit it points at (tags peeled).
    pub commit: String,
    /// Whether it is a commit, tag, branch or the default branch.
    pub kind: RefKind,
}

pub(super) fn git_err(url: &str, what: &str, e: impl std::fmt::Display) -> FetchError {
    FetchError::Git {
        url: url.to_string(),
        message: format!("{what}: {e}"),
    }
}

/// Lists the remote's refs and picks `reference` (a branch wins over a tag of the same name,
/// like `git clone --branch`); `None` is the remote HEAD. A full sha resolves to itself without
/// asking. `scratch` is an empty directory for a throwaway repository; `git_config` holds
/// `key=value` overrides. Over HTTP(S) the listing is read through the byte-counting transport
/// of `refs.rs` and fails past `max_ref_bytes` (`[fetch] max_ref_bytes`), so a hostile server
/// cannot make a deploy hold more of its advertisement than that; a protocol-v2 server is asked
/// for `HEAD`, branches, tags (and the ref itself when it is another `refs/…`) only.
pub fn resolve_ref(
    url: &str,
    reference: Option<&str>,
    scratch: &Path,
    git_config: &[String],
    guard: Option<&Arc<NetGuard>>,
    max_ref_bytes: u64,
) -> Result<ResolvedRef, FetchError> {
    if let Some(r) = reference.filter(|r| is_full_sha(r)) {
        return Ok(ResolvedRef {
            name: r.to_ascii_lowercase(),
            commit: r.to_ascii_lowercase(),
            kind: RefKind::Commit,
        });
    }
    if let Some(g) = guard {
        g.check_url(url)?;
    }
    let refused = Arc::new(AtomicBool::new(false));
    let read = Arc::new(AtomicU64::new(0));
    let cap = (&read, max_ref_bytes);
    resolve_ref_inner(url, reference, scratch, git_config, guard, &refused, cap)
        .map_err(|e| {
            if read.load(Ordering::SeqCst) > max_ref_bytes {
                super::refs::too_big_bytes(url, max_ref_bytes)
            } else {
                e
            }
        })
        .map_err(|e| refused_or(url, &refused, e))
}

fn resolve_ref_inner(
    url: &str,
    reference: Option<&str>,
    scratch: &Path,
    git_config: &[String],
    guard: Option<&Arc<NetGuard>>,
    refused: &Arc<AtomicBool>,
    (read, max_ref_bytes): (&Arc<AtomicU64>, u64),
) -> Result<ResolvedRef, FetchError> {
    let dir = scratch.join("ls-remote.git");
    gix::init_bare(&dir).map_err(|e| git_err(url, "init scratch repository", e))?;
    let opts =
        gix::open::Options::default().config_overrides(git_config.iter().map(String::as_str));
    let repo =
        gix::open_opts(&dir, opts).map_err(|e| git_err(url, "open scratch repository", e))?;
    let mut specs = vec![
        "HEAD",
        "+refs/heads/*:refs/remotes/origin/*",
        "+refs/tags/*:refs/tags/*",
    ];
    if let Some(r) = reference.filter(|r| {
        r.starts_with("refs/") && !r.starts_with("refs/heads/") && !r.starts_with("refs/tags/")
    }) {
        specs.push(r);
    }
    let remote = repo
        .remote_at(url)
        .map_err(|e| git_err(url, "invalid remote URL", e))?
        .with_refspecs(specs, gix::remote::Direction::Fetch)
        .map_err(|e| git_err(url, "refspecs", e))?;
    let cap = Arc::new(AtomicU64::new(max_ref_bytes));
    let conn = counted_connection(&remote, url, guard, refused, (read, &cap))?;
    let (map, _handshake) = conn
        .ref_map(
            gix::progress::Discard,
            gix::remote::ref_map::Options::default(),
        )
        .map_err(|e| git_err(url, "list refs", e))?;
    let mut refs: Vec<(String, String)> = Vec::new();
    for r in &map.remote_refs {
        let (name, target, peeled) = r.unpack();
        if let Some(id) = peeled.or(target) {
            refs.push((name.to_str_lossy().into_owned(), id.to_string()));
        }
    }
    let find = |full: &str| refs.iter().find(|(n, _)| n == full).map(|(_, c)| c.clone());
    let candidates: Vec<(String, RefKind)> = match reference {
        None => vec![("HEAD".into(), RefKind::Head)],
        Some(r) if r.starts_with("refs/tags/") => vec![(r.into(), RefKind::Tag)],
        Some(r) if r.starts_with("refs/") => vec![(r.into(), RefKind::Branch)],
        Some(r) => vec![
            (format!("refs/heads/{r}"), RefKind::Branch),
            (format!("refs/tags/{r}"), RefKind::Tag),
        ],
    };
    for (name, kind) in &candidates {
        if let Some(commit) = find(name) {
            return Ok(ResolvedRef {
                name: name.clone(),
                commit,
                kind: *kind,
            });
        }
    }
    let mut names: Vec<&str> = refs
        .iter()
        .map(|(n, _)| n.as_str())
        .filter(|n| !n.starts_with("refs/pull/"))
        .collect();
    names.truncate(12);
    let wanted = reference.unwrap_or("HEAD");
    let hint = if wanted.len() >= 4 && wanted.bytes().all(|b| b.is_ascii_hexdigit()) {
        "; abbreviated shas cannot be resolved remotely, give the full 40-hex sha"
    } else {
        ""
    };
    Err(FetchError::Git {
        url: url.to_string(),
        message: format!(
            "ref {wanted:?} not found; expected a branch, tag or full commit sha{hint} (the remote has: {})",
            if names.is_empty() {
                "no refs".to_string()
            } else {
                names.join(", ")
            }
        ),
    })
}

/// The in-memory git configuration key carrying `[fetch] ca_bundle` to `transport_options`.
pub const CA_BUNDLE_KEY: &str = "iac.caBundle";

/// gix's transport options for an HTTP(S) `url` as the git configuration makes them, plus what
/// gix's reqwest client does not do itself: the roots of `http.sslCAInfo` (`[fetch] ca_bundle`,
/// see `trust.rs`) merged with the platform's, and for a guarded fetch redirects off (so the URL
/// checked is the only one connected to) and the guard's resolver without any proxy. `None`
/// for other URLs (`file://`) and when there is nothing to change.
pub(super) fn transport_options(
    repo: &gix::Repository,
    url: &str,
    guard: Option<&Arc<NetGuard>>,
    refused: &Arc<AtomicBool>,
) -> Result<Option<Box<dyn std::any::Any>>, FetchError> {
    use gix::protocol::transport::client::blocking_io::http;
    let lower = url.to_ascii_lowercase();
    if !(lower.starts_with("https://") || lower.starts_with("http://")) {
        return Ok(None);
    }
    let mut opts = repo
        .transport_options(url, None)
        .map_err(|e| git_err(url, "transport options", e))?
        .unwrap_or_else(|| Box::new(http::Options::default()));
    let http_opts = opts
        .downcast_mut::<http::Options>()
        .ok_or_else(|| git_err(url, "transport options", "not the HTTP transport's"))?;
    // `http.sslCAInfo` as gix resolved it (a system gitconfig may set it), plus `[fetch]
    // ca_bundle`, which DefaultFetcher passes as the in-memory key `iac.caBundle` (an override
    // of `http.sslCAInfo` would lose to a system value).
    let mut roots = Vec::new();
    if let Some(p) = &http_opts.ssl_ca_info {
        roots.extend(super::trust::load_roots(p, "http.sslCAInfo")?);
    }
    if let Some(v) = repo.config_snapshot().string(CA_BUNDLE_KEY) {
        let p = PathBuf::from(v.to_str_lossy().into_owned());
        roots.extend(super::trust::load_roots(&p, "[fetch] ca_bundle")?);
    }
    if guard.is_none() && roots.is_empty() {
        return Ok(None);
    }
    let resolver = guard.map(|g| {
        http_opts.follow_redirects = http::options::FollowRedirects::None;
        g.resolver(Some(refused.clone()))
    });
    let backend = http::reqwest::Options {
        configure_client: Some(Box::new(move |b| {
            let b = b.tls_certs_merge(roots.iter().cloned());
            Ok(match &resolver {
                Some(r) => b.dns_resolver(r.clone()).no_proxy(),
                None => b,
            })
        })),
        configure_request: None,
    };
    http_opts.backend = Some(Arc::new(std::sync::Mutex::new(backend)));
    Ok(Some(opts))
}

/// `e`, or [`FetchError::Refused`] when the guard's resolver refused a name during the
/// operation (gix flattens the resolver's error into its own).
pub(super) fn refused_or(url: &str, refused: &AtomicBool, e: FetchError) -> FetchError {
    if refused.load(Ordering::SeqCst) || matches!(e, FetchError::Refused { .. }) {
        FetchError::Refused {
            slug: url.to_string(),
        }
    } else {
        e
    }
}

/// How often the disk watcher measures a running git transfer.
pub const WATCH_INTERVAL: Duration = Duration::from_millis(20);

/// Bytes of regular files and symlinks under `dir` (not following links).
fn disk_usage(dir: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            match e.metadata() {
                Ok(m) if m.is_dir() => stack.push(e.path()),
                Ok(m) => total += m.len(),
                Err(_) => {}
            }
        }
    }
    total
}

/// A thread measuring `dir` until dropped; past `cap` it records the size and sets `interrupt`.
struct DiskWatch {
    stop: Arc<AtomicBool>,
    over: Arc<AtomicU64>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl DiskWatch {
    fn start(dir: PathBuf, cap: u64, interrupt: Arc<AtomicBool>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let over = Arc::new(AtomicU64::new(0));
        let (s, o) = (stop.clone(), over.clone());
        let handle = std::thread::Builder::new()
            .name("iac-git-disk-watch".into())
            .spawn(move || {
                while !s.load(Ordering::Relaxed) {
                    let used = disk_usage(&dir);
                    if used > cap {
                        o.store(used, Ordering::SeqCst);
                        interrupt.store(true, Ordering::SeqCst);
                        return;
                    }
                    std::thread::sleep(WATCH_INTERVAL);
                }
            })
            .ok();
        DiskWatch { stop, over, handle }
    }

    /// Stops the thread; the size it saw past the cap, if it did.
    fn finish(mut self) -> Option<u64> {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
        Some(self.over.load(Ordering::SeqCst)).filter(|&n| n > 0)
    }
}

impl Drop for DiskWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// Bounds of one git transfer.
#[derive(Debug, Clone)]
pub struct GitBounds {
    /// The tree caps (blob sizes are checked against them before inflation).
    pub limits: Limits,
    /// Disk space the transfer may use (packs, index, refs).
    pub max_pack_bytes: u64,
    /// The clone's own ref listing: its response bytes (HTTP) and the refs it maps.
    pub refs: super::refs::RefLimits,
    /// Set by the fetch's deadline (or the disk watcher): gix stops at its next read.
    pub interrupt: Arc<AtomicBool>,
}

fn pack_too_large(url: &str, used: u64, cap: u64) -> FetchError {
    FetchError::TooLarge {
        what: format!("git transfer from {url} ({used} bytes on disk; [fetch] max_pack_bytes)"),
        limit: cap,
    }
}

/// What a fetch into a fresh bare repository asks for.
#[derive(Debug, Clone, Copy)]
enum Want<'a> {
    /// Exactly this commit, depth 1.
    Shallow(&'a str),
    /// Every branch and tag, whole history (for servers that refuse a shallow fetch of a sha).
    Full,
}

/// The connection of one clone or ref listing: over HTTP(S) through the byte-counting
/// transport of `refs.rs` (response bytes added to `read`, reads failing past `cap`), else gix's
/// own; with the trust roots and the guard's options ([`transport_options`]).
fn counted_connection<'a, 'repo>(
    remote: &'a gix::Remote<'repo>,
    url: &str,
    guard: Option<&Arc<NetGuard>>,
    refused: &Arc<AtomicBool>,
    (read, cap): (&Arc<AtomicU64>, &Arc<AtomicU64>),
) -> Result<
    gix::remote::Connection<
        'a,
        'static,
        'repo,
        Box<dyn gix::protocol::transport::client::blocking_io::Transport + Send>,
    >,
    FetchError,
> {
    let lower = url.to_ascii_lowercase();
    let mut conn = if lower.starts_with("https://") || lower.starts_with("http://") {
        super::refs::capped_connection(remote, url, read, cap)?
    } else {
        remote
            .connect(gix::remote::Direction::Fetch)
            .map_err(|e| git_err(url, "connect", e))?
    };
    if let Some(opts) = transport_options(remote.repo(), url, guard, refused)? {
        conn.set_transport_options(opts);
    }
    Ok(conn)
}

/// Fetches `want` from `url` into a new bare repository at `dir`, under the disk watcher. The
/// clone's ref listing is bounded like the one that resolved the ref ([`GitBounds::refs`]):
/// its response bytes while it streams in, then the number of refs it maps; only then is the
/// cap lifted for the pack, which the disk watcher bounds. An interrupt caused by the disk cap
/// is [`FetchError::TooLarge`].
fn bounded_fetch(
    url: &str,
    dir: &Path,
    bounds: &GitBounds,
    what: &str,
    (git_config, guard, refused): (&[String], Option<&Arc<NetGuard>>, &Arc<AtomicBool>),
    want: Want<'_>,
) -> Result<gix::Repository, FetchError> {
    let watch = DiskWatch::start(
        dir.to_path_buf(),
        bounds.max_pack_bytes,
        bounds.interrupt.clone(),
    );
    let read = Arc::new(AtomicU64::new(0));
    let cap = Arc::new(AtomicU64::new(bounds.refs.max_bytes));
    let result = fetch_into(
        url,
        dir,
        bounds,
        what,
        (git_config, guard, refused),
        want,
        (&read, &cap),
    );
    if let Some(used) = watch.finish() {
        return Err(pack_too_large(url, used, bounds.max_pack_bytes));
    }
    let used = disk_usage(dir);
    if used > bounds.max_pack_bytes {
        return Err(pack_too_large(url, used, bounds.max_pack_bytes));
    }
    result
}

fn fetch_into(
    url: &str,
    dir: &Path,
    bounds: &GitBounds,
    what: &str,
    (git_config, guard, refused): (&[String], Option<&Arc<NetGuard>>, &Arc<AtomicBool>),
    want: Want<'_>,
    (read, cap): (&Arc<AtomicU64>, &Arc<AtomicU64>),
) -> Result<gix::Repository, FetchError> {
    let max_bytes = bounds.refs.max_bytes;
    gix::init_bare(dir).map_err(|e| git_err(url, "init clone repository", e))?;
    let opts =
        gix::open::Options::default().config_overrides(git_config.iter().map(String::as_str));
    let repo = gix::open_opts(dir, opts).map_err(|e| git_err(url, "open clone repository", e))?;
    {
        let remote = repo
            .remote_at(url)
            .map_err(|e| git_err(url, "invalid remote URL", e))?
            .with_fetch_tags(gix::remote::fetch::Tags::None);
        let (specs, shallow): (Vec<&str>, _) = match want {
            Want::Shallow(commit) => (
                vec![commit],
                gix::remote::fetch::Shallow::DepthAtRemote(NonZeroU32::MIN),
            ),
            Want::Full => (
                vec!["+refs/heads/*:refs/heads/*", "+refs/tags/*:refs/tags/*"],
                gix::remote::fetch::Shallow::NoChange,
            ),
        };
        let mut extra_refspecs = Vec::new();
        for spec in specs {
            extra_refspecs.push(
                gix::refspec::parse(spec.into(), gix::refspec::parse::Operation::Fetch)
                    .map_err(|e| git_err(url, "refspec", e))?
                    .to_owned(),
            );
        }
        let conn = counted_connection(&remote, url, guard, refused, (read, cap))?;
        let listed = conn
            .prepare_fetch(
                gix::progress::Discard,
                gix::remote::ref_map::Options {
                    extra_refspecs,
                    ..Default::default()
                },
            )
            .map_err(|e| {
                if read.load(Ordering::SeqCst) > max_bytes {
                    super::refs::too_big_bytes(url, max_bytes)
                } else {
                    git_err(url, &format!("{what}: list refs"), e)
                }
            })?;
        let advertised = listed.ref_map().remote_refs.len() as u64;
        if advertised > bounds.refs.max_refs {
            return Err(super::refs::too_many(url, &bounds.refs));
        }
        // The listing is over: the pack that follows is bounded on disk, not by this cap.
        cap.store(u64::MAX, Ordering::SeqCst);
        listed
            .with_shallow(shallow)
            .receive(gix::progress::Discard, &bounds.interrupt)
            .map_err(|e| {
                if bounds.interrupt.load(Ordering::SeqCst) {
                    git_err(
                        url,
                        &format!("{what} interrupted (the fetch's deadline passed)"),
                        e,
                    )
                } else {
                    git_err(url, what, e)
                }
            })?;
    }
    Ok(repo)
}

/// The size of object `id` from its header, refused when over `cap` — read without inflating
/// the object.
fn checked_size(
    repo: &gix::Repository,
    url: &str,
    id: gix::ObjectId,
    what: &str,
    cap: u64,
) -> Result<u64, FetchError> {
    let header = repo
        .find_header(id)
        .map_err(|e| git_err(url, &format!("read the header of {what}"), e))?;
    let size = header.size();
    if size > cap {
        return Err(FetchError::TooLarge {
            what: format!(
                "object size ({what} is {size} bytes by its header, refused before inflating it)"
            ),
            limit: cap,
        });
    }
    Ok(size)
}

/// A tree entry name must be one path component: not empty, `.` or `..`, and without `/` or NUL
/// (git itself never writes such names; a hostile server can).
fn check_entry_name(prefix: &str, name: &[u8]) -> Result<(), FetchError> {
    let shown = format!("{prefix}{}", name.to_str_lossy());
    let why = if name.is_empty() {
        "an empty git tree entry name"
    } else if name == b"." || name == b".." {
        "a git tree entry named '.' or '..'"
    } else if name.contains(&b'/') {
        "a git tree entry name containing '/'; expected a single path component"
    } else if name.contains(&0) {
        "a git tree entry name containing NUL"
    } else {
        return Ok(());
    };
    Err(FetchError::Unsafe {
        entry: shown,
        why: why.to_string(),
    })
}

/// Fetches `commit` from `url` and writes its tree under `staging/tree`. Returns the tree root,
/// a note when the shallow fetch had to be replaced by a full clone, and the submodules skipped.
pub fn fetch_tree(
    url: &str,
    commit: &str,
    staging: &Path,
    bounds: &GitBounds,
    git_config: &[String],
    guard: Option<&Arc<NetGuard>>,
) -> Result<(PathBuf, Option<String>, Vec<String>), FetchError> {
    if let Some(g) = guard {
        g.check_url(url)?;
    }
    let refused = Arc::new(AtomicBool::new(false));
    fetch_tree_inner(url, commit, staging, bounds, git_config, guard, &refused)
        .map_err(|e| refused_or(url, &refused, e))
}

fn fetch_tree_inner(
    url: &str,
    commit: &str,
    staging: &Path,
    bounds: &GitBounds,
    git_config: &[String],
    guard: Option<&Arc<NetGuard>>,
    refused: &Arc<AtomicBool>,
) -> Result<(PathBuf, Option<String>, Vec<String>), FetchError> {
    let limits = bounds.limits;
    let id =
        gix::ObjectId::from_hex(commit.as_bytes()).map_err(|e| git_err(url, "commit id", e))?;
    let interrupted = || bounds.interrupt.load(Ordering::SeqCst);
    let shallow_dir = staging.join("shallow.git");
    let net = (git_config, guard, refused);
    let shallow = bounded_fetch(
        url,
        &shallow_dir,
        bounds,
        "shallow fetch",
        net,
        Want::Shallow(commit),
    );
    let (repo, note) = match shallow {
        Ok(repo) => (repo, None),
        Err(e @ FetchError::TooLarge { .. }) => return Err(e),
        Err(e) if interrupted() || refused.load(Ordering::SeqCst) => return Err(e),
        Err(shallow_err) => {
            let _ = std::fs::remove_dir_all(&shallow_dir);
            let full_dir = staging.join("full.git");
            let what = format!("full clone (after the shallow fetch failed: {shallow_err})");
            let repo = bounded_fetch(url, &full_dir, bounds, &what, net, Want::Full)?;
            (
                repo,
                Some(format!(
                    "full clone: shallow fetch of {commit} refused ({shallow_err})"
                )),
            )
        }
    };
    let meta_cap = limits.max_stream();
    checked_size(&repo, url, id, &format!("commit {commit}"), meta_cap)?;
    let commit_obj = repo.find_commit(id).map_err(|e| {
        git_err(
            url,
            &format!("commit {commit} not in the fetched history"),
            e,
        )
    })?;
    let root_tree = commit_obj
        .tree_id()
        .map_err(|e| git_err(url, "commit tree", e))?
        .detach();
    let tree_root = staging.join("tree");
    std::fs::create_dir_all(&tree_root).map_err(FetchError::io(&tree_root))?;
    let mut writer = TreeWriter::new(&tree_root, limits);
    let mut skipped = Vec::new();
    let mut stack = vec![(root_tree, String::new())];
    while let Some((tree_id, prefix)) = stack.pop() {
        if interrupted() {
            return Err(git_err(url, "write tree", "interrupted"));
        }
        let label = if prefix.is_empty() {
            "the root tree".to_string()
        } else {
            format!("tree {prefix:?}")
        };
        checked_size(&repo, url, tree_id, &label, meta_cap)?;
        let tree = repo
            .find_tree(tree_id)
            .map_err(|e| git_err(url, "read tree", e))?;
        let decoded = tree.decode().map_err(|e| git_err(url, "decode tree", e))?;
        for e in &decoded.entries {
            check_entry_name(&prefix, e.filename)?;
            let name = format!("{prefix}{}", e.filename.to_str_lossy());
            let oid = e.oid.to_owned();
            if e.mode.is_tree() {
                writer.dir(&name)?;
                stack.push((oid, format!("{name}/")));
            } else if e.mode.is_commit() {
                skipped.push(name);
            } else if e.mode.is_link() {
                // Link targets are paths: PATH_MAX bounds them.
                checked_size(&repo, url, oid, &format!("symlink {name:?}"), 4096)?;
                let blob = repo
                    .find_blob(oid)
                    .map_err(|err| git_err(url, &format!("read {name}"), err))?;
                writer.symlink(&name, &blob.data.to_str_lossy())?;
            } else {
                let size = checked_size(&repo, url, oid, &format!("{name:?}"), u64::MAX)?;
                writer.reserve(&name, size).map_err(|_| FetchError::TooLarge {
                    what: format!(
                        "unpacked size (exceeded at entry {name:?}: {size} bytes by its object header, refused before inflating it)"
                    ),
                    limit: limits.max_bytes,
                })?;
                let blob = repo
                    .find_blob(oid)
                    .map_err(|err| git_err(url, &format!("read {name}"), err))?;
                let data: &[u8] = &blob.data;
                writer
                    .file(
                        &name,
                        data.len() as u64,
                        &mut &data[..],
                        e.mode.is_executable(),
                    )
                    .map_err(|w| match w {
                        WriteError::Fetch(f) => f,
                        WriteError::Read(err) => git_err(url, &format!("read {name}"), err),
                    })?;
            }
        }
    }
    let (root, _, _) = writer.finish(false)?;
    Ok((root, note, skipped))
}

/// Clones `url` at `reference` into the cache (or finds it there).
#[derive(Debug, Clone)]
pub struct GitFetcher {
    cache: Cache,
    limits: Limits,
    max_pack_bytes: u64,
    refs: super::refs::RefLimits,
    git_config: Vec<String>,
    guard: Option<Arc<NetGuard>>,
}

/// What one [`GitFetcher::fetch`] is about.
#[derive(Debug, Clone)]
pub struct GitRequest<'a> {
    /// Clone URL.
    pub url: &'a str,
    /// The repository identity cache keys are scoped to ([`super::cache::repo_identity`]).
    pub repo: &'a str,
    /// The ref asked for; `None`: the remote's default branch.
    pub reference: Option<&'a str>,
    /// The ref, already resolved by the caller.
    pub known: Option<ResolvedRef>,
    /// Prepended to the origin (e.g. why the tarball was not used).
    pub reason: Option<&'a str>,
}

impl GitFetcher {
    /// `git_config`: `key=value` overrides applied to every ref listing and clone. `guard`:
    /// refuse private and local addresses (see `guard.rs`). `refs`: the caps on every ref
    /// listing, the one that resolves the ref ([`resolve_ref`]: bytes) and the clone's own
    /// ([`fetch_tree`]: bytes and count).
    pub fn new(
        cache: Cache,
        limits: Limits,
        (max_pack_bytes, refs): (u64, super::refs::RefLimits),
        git_config: Vec<String>,
        guard: Option<Arc<NetGuard>>,
    ) -> Self {
        GitFetcher {
            cache,
            limits,
            max_pack_bytes,
            refs,
            git_config,
            guard,
        }
    }

    /// The network guard of these fetches, if they are guarded.
    pub fn guard(&self) -> Option<&Arc<NetGuard>> {
        self.guard.as_ref()
    }

    /// Resolves the ref (skipped for full shas and tags recorded in the index), then serves the
    /// commit from the cache or clones it. The clone stops when `interrupt` is set (the fetch's
    /// deadline).
    pub async fn fetch(
        &self,
        req: GitRequest<'_>,
        interrupt: Arc<AtomicBool>,
    ) -> Result<Source, FetchError> {
        let this = self.clone();
        let url = req.url.to_string();
        let repo = req.repo.to_string();
        let reference = req.reference.map(str::to_string);
        let reason = req.reason.map(str::to_string);
        let known = req.known;
        tokio::task::spawn_blocking(move || {
            this.fetch_blocking(
                GitRequest {
                    url: &url,
                    repo: &repo,
                    reference: reference.as_deref(),
                    known,
                    reason: reason.as_deref(),
                },
                interrupt,
            )
        })
        .await
        .map_err(|e| FetchError::Git {
            url: String::new(),
            message: format!("clone task failed: {e}"),
        })?
    }

    fn fetch_blocking(
        &self,
        req: GitRequest<'_>,
        interrupt: Arc<AtomicBool>,
    ) -> Result<Source, FetchError> {
        let GitRequest {
            url,
            repo,
            reference,
            known,
            reason,
        } = req;
        let index_ref = reference.unwrap_or("HEAD");
        let prefix = reason.map(|r| format!(" ({r})")).unwrap_or_default();
        if let Some(hit) = self.cache.lookup_immutable(repo, index_ref)? {
            return Ok(Source {
                origin: format!(
                    "cache hit: {url}#{index_ref} (immutable ref, not re-resolved){prefix}"
                ),
                dir: hit.dir,
                commit: hit.commit,
                digest: hit.digest,
            });
        }
        let staging = self.cache.staging("git")?;
        let resolved = match known {
            Some(k) => k,
            None => resolve_ref(
                url,
                reference,
                staging.path(),
                &self.git_config,
                self.guard.as_ref(),
                self.refs.max_bytes,
            )?,
        };
        let key = TreeKey::commit(repo, &resolved.commit);
        let record = |key: &TreeKey| {
            if resolved.kind.immutable() {
                let _ = self.cache.index_put(&IndexEntry {
                    location: repo.to_string(),
                    reference: index_ref.to_string(),
                    kind: resolved.kind,
                    key: key.dir_name(),
                    commit: Some(resolved.commit.clone()),
                });
            }
        };
        if let Some(hit) = self.cache.lookup(&key)? {
            record(&key);
            return Ok(Source {
                origin: format!(
                    "cache hit: commit {} ({} at {url}){prefix}",
                    resolved.commit, resolved.name
                ),
                dir: hit.dir,
                commit: hit.commit,
                digest: hit.digest,
            });
        }
        let bounds = GitBounds {
            limits: self.limits,
            max_pack_bytes: self.max_pack_bytes,
            refs: self.refs,
            interrupt,
        };
        let (tree, note, skipped) = fetch_tree(
            url,
            &resolved.commit,
            staging.path(),
            &bounds,
            &self.git_config,
            self.guard.as_ref(),
        )?;
        let mut origin = format!("git clone {url} at {} ({})", resolved.name, resolved.commit);
        if let Some(n) = note {
            origin.push_str(&format!("; {n}"));
        } else {
            origin.push_str("; depth 1");
        }
        if !skipped.is_empty() {
            origin.push_str(&format!("; submodules not fetched: {}", skipped.join(", ")));
        }
        origin.push_str(&prefix);
        let cached = self
            .cache
            .insert(&key, &tree, Some(resolved.commit.clone()), &origin)?;
        record(&key);
        Ok(Source {
            dir: cached.dir,
            commit: Some(resolved.commit),
            digest: cached.digest,
            origin,
        })
    }
}
