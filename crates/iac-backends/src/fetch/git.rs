//! Git backend (gix): ref resolution with a ref listing (the `git ls-remote` equivalent) and a
//! depth-1 fetch of exactly the resolved commit, whose tree is then written into the cache
//! through the same safe `TreeWriter` as archives (see `extract.rs`; no `.git/` in the result;
//! submodules are skipped and reported). Works for `https://` and `file://` URLs; gix runs `git upload-pack`
//! for `file://`, so the `git` binary must be on PATH for local repositories.
//!
//! A commit sha that the server refuses to send shallowly (servers speaking only protocol v0
//! without `uploadpack.allowAnySHA1InWant`) is fetched with a full clone instead, and the
//! origin says so.

use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use gix::bstr::ByteSlice;
use iac_core::{FetchError, Source};

use super::cache::{Cache, IndexEntry, RefKind, TreeKey};
use super::extract::{Limits, TreeWriter, WriteError, is_full_sha};

/// A ref as the remote advertised it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedRef {
    /// Full name (`refs/heads/main`, `refs/tags/v1`, `HEAD`), or the sha itself.
    pub name: String,
    /// The commit it points at (tags peeled).
    pub commit: String,
    pub kind: RefKind,
}

fn git_err(url: &str, what: &str, e: impl std::fmt::Display) -> FetchError {
    FetchError::Git {
        url: url.to_string(),
        message: format!("{what}: {e}"),
    }
}

/// Lists the remote's refs and picks `reference` (a branch wins over a tag of the same name,
/// like `git clone --branch`); `None` is the remote HEAD. A full sha resolves to itself without
/// asking. `scratch` is an empty directory for a throwaway repository; `git_config` holds
/// `key=value` overrides.
pub fn resolve_ref(
    url: &str,
    reference: Option<&str>,
    scratch: &Path,
    git_config: &[String],
) -> Result<ResolvedRef, FetchError> {
    if let Some(r) = reference.filter(|r| is_full_sha(r)) {
        return Ok(ResolvedRef {
            name: r.to_ascii_lowercase(),
            commit: r.to_ascii_lowercase(),
            kind: RefKind::Commit,
        });
    }
    let dir = scratch.join("ls-remote.git");
    gix::init_bare(&dir).map_err(|e| git_err(url, "init scratch repository", e))?;
    let opts =
        gix::open::Options::default().config_overrides(git_config.iter().map(String::as_str));
    let repo =
        gix::open_opts(&dir, opts).map_err(|e| git_err(url, "open scratch repository", e))?;
    let remote = repo
        .remote_at(url)
        .map_err(|e| git_err(url, "invalid remote URL", e))?
        .with_refspecs(
            [
                "+refs/heads/*:refs/remotes/origin/*",
                "+refs/tags/*:refs/tags/*",
            ],
            gix::remote::Direction::Fetch,
        )
        .map_err(|e| git_err(url, "refspecs", e))?;
    let conn = remote
        .connect(gix::remote::Direction::Fetch)
        .map_err(|e| git_err(url, "connect", e))?;
    let opts = gix::remote::ref_map::Options {
        prefix_from_spec_as_filter_on_remote: false,
        ..Default::default()
    };
    let (map, _handshake) = conn
        .ref_map(gix::progress::Discard, opts)
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

/// Fetches `commit` from `url` and writes its tree under `staging/tree`. Returns the tree root
/// and a note when the shallow fetch had to be replaced by a full clone.
pub fn fetch_tree(
    url: &str,
    commit: &str,
    staging: &Path,
    limits: Limits,
    git_config: &[String],
) -> Result<(PathBuf, Option<String>, Vec<String>), FetchError> {
    let id =
        gix::ObjectId::from_hex(commit.as_bytes()).map_err(|e| git_err(url, "commit id", e))?;
    let interrupt = AtomicBool::new(false);
    let shallow_dir = staging.join("shallow.git");
    let shallow = (|| {
        let mut prep = gix::prepare_clone_bare(url, &shallow_dir)
            .map_err(|e| git_err(url, "prepare clone", e))?
            .with_in_memory_config_overrides(git_config.iter().map(String::as_str))
            .with_shallow(gix::remote::fetch::Shallow::DepthAtRemote(NonZeroU32::MIN))
            .with_revision(Some(commit))
            .map_err(|e| git_err(url, "revision", e))?;
        let (repo, _) = prep
            .fetch_only(gix::progress::Discard, &interrupt)
            .map_err(|e| git_err(url, "shallow fetch", e))?;
        Ok::<_, FetchError>(repo)
    })();
    let (repo, note) = match shallow {
        Ok(repo) => (repo, None),
        Err(shallow_err) => {
            let _ = std::fs::remove_dir_all(&shallow_dir);
            let full_dir = staging.join("full.git");
            let mut prep = gix::prepare_clone_bare(url, &full_dir)
                .map_err(|e| git_err(url, "prepare clone", e))?
                .with_in_memory_config_overrides(git_config.iter().map(String::as_str));
            let (repo, _) = prep
                .fetch_only(gix::progress::Discard, &interrupt)
                .map_err(|e| {
                    git_err(
                        url,
                        &format!("full clone (after the shallow fetch failed: {shallow_err})"),
                        e,
                    )
                })?;
            (
                repo,
                Some(format!(
                    "full clone: shallow fetch of {commit} refused ({shallow_err})"
                )),
            )
        }
    };
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
        let tree = repo
            .find_tree(tree_id)
            .map_err(|e| git_err(url, "read tree", e))?;
        let decoded = tree.decode().map_err(|e| git_err(url, "decode tree", e))?;
        for e in &decoded.entries {
            let name = format!("{prefix}{}", e.filename.to_str_lossy());
            let oid = e.oid.to_owned();
            if e.mode.is_tree() {
                writer.dir(&name)?;
                stack.push((oid, format!("{name}/")));
            } else if e.mode.is_commit() {
                skipped.push(name);
            } else {
                let blob = repo
                    .find_blob(oid)
                    .map_err(|err| git_err(url, &format!("read {name}"), err))?;
                if e.mode.is_link() {
                    writer.symlink(&name, &blob.data.to_str_lossy())?;
                } else {
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
    }
    let (root, _, _) = writer.finish(false)?;
    Ok((root, note, skipped))
}

/// Clones `url` at `reference` into the cache (or finds it there).
#[derive(Debug, Clone)]
pub struct GitFetcher {
    cache: Cache,
    limits: Limits,
    git_config: Vec<String>,
}

impl GitFetcher {
    /// `git_config`: `key=value` overrides applied to every ref listing and clone.
    pub fn new(cache: Cache, limits: Limits, git_config: Vec<String>) -> Self {
        GitFetcher {
            cache,
            limits,
            git_config,
        }
    }

    /// Resolves `reference` (skipped for full shas and tags recorded in the index), then serves
    /// the commit from the cache or clones it. `reason` is prepended to the origin (e.g. why the
    /// tarball was not used).
    pub async fn fetch(
        &self,
        url: &str,
        reference: Option<&str>,
        known: Option<ResolvedRef>,
        reason: Option<&str>,
    ) -> Result<Source, FetchError> {
        let this = self.clone();
        let url = url.to_string();
        let reference = reference.map(str::to_string);
        let reason = reason.map(str::to_string);
        tokio::task::spawn_blocking(move || {
            this.fetch_blocking(&url, reference.as_deref(), known, reason.as_deref())
        })
        .await
        .map_err(|e| FetchError::Git {
            url: String::new(),
            message: format!("clone task failed: {e}"),
        })?
    }

    fn fetch_blocking(
        &self,
        url: &str,
        reference: Option<&str>,
        known: Option<ResolvedRef>,
        reason: Option<&str>,
    ) -> Result<Source, FetchError> {
        let index_ref = reference.unwrap_or("HEAD");
        let prefix = reason.map(|r| format!(" ({r})")).unwrap_or_default();
        if let Some(hit) = self.cache.lookup_immutable(url, index_ref)? {
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
            None => resolve_ref(url, reference, staging.path(), &self.git_config)?,
        };
        let key = TreeKey::Commit(resolved.commit.clone());
        let record = |key: &TreeKey| {
            if resolved.kind.immutable() {
                let _ = self.cache.index_put(&IndexEntry {
                    location: url.to_string(),
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
        let (tree, note, skipped) = fetch_tree(
            url,
            &resolved.commit,
            staging.path(),
            self.limits,
            &self.git_config,
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
