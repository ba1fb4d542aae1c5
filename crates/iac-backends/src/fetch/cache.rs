//! The content cache under `FetchConfig::cache_dir` (default `.iac/cache`):
//!
//! ```text
//! trees/commit-<sha>-<repo>/     a source tree, keyed by the repository and the commit it was made from
//! trees/archive-<hex>-<repo>/    a tree from an archive whose commit the forge did not resolve
//! trees/<key>.json               its repository, digest, commit and first origin
//! index/<hash>.json              (repository, ref) → tree key, for refs that cannot move
//! tmp/                           staging dirs (same filesystem, so moves are renames)
//! ```
//!
//! `<repo>` is the first 16 hex digits of the sha256 of the repository identity (see
//! [`repo_identity`]: the forge's scheme and the expanded clone URL, i.e. forge + host +
//! owner/repo; or the URL of a `git+…` slug). The identity itself is stored in the tree's
//! metadata and checked on every lookup. So a tree fetched for one repository is never served
//! for another, even for the same commit id.
//!
//! Rules:
//! - A full commit sha ref is looked up directly (`commit-<sha>-<repo>`): no network at all, and
//!   only the same forge + repository can hit.
//! - A tag, once resolved, is recorded in the index and never looked up remotely again
//!   (tags are treated as immutable; delete the index file to force a re-resolve).
//! - A branch (or no ref: the remote HEAD) is re-resolved on every fetch with a git ref listing
//!   (the `ls-remote` equivalent, a few hundred bytes) and then served from `commit-<sha>-<repo>`
//!   when present. When the listing is unavailable (`resolve_refs = false`, git protocol
//!   blocked), a branch's tarball is downloaded again and lands on `archive-<digest>-<repo>`:
//!   the commit id an archive claims for itself (its pax `comment=` header) is reported, never
//!   used as a cache key. When the forge did resolve the commit, an archive claiming another one
//!   is refused.
//! - The cache dir and its `trees/`, `index/` and `tmp/` are private (0700, created or tightened
//!   with `iac_core::fsutil::create_private_dir`, which refuses a symlink or another uid's
//!   directory); metadata and index files are 0600. Tree files keep their normalised 0644/0755
//!   (the image build copies them with those modes); the 0700 directories above them are what
//!   keeps other local users out.
//! - Trees are staged under `tmp/` and renamed into `trees/` in one step. Two concurrent fetches
//!   of the same commit both stage; the first rename wins and the loser's copy is dropped, so a
//!   reader never sees a half-written tree.

use std::path::{Path, PathBuf};

use iac_core::FetchError;
use iac_core::fsutil::{OwnedTempDir, PRIVATE_FILE_MODE, create_private_dir, sweep_orphans};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::digest::tree_digest;

/// What a ref turned out to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RefKind {
    /// A full commit sha.
    Commit,
    /// A tag name; re-resolved against the remote on every fetch (tags can move).
    Tag,
    /// A branch name; re-resolved against the remote on every fetch.
    Branch,
    /// No ref given: the remote's default branch.
    Head,
    /// Not resolved (archive downloaded by name without a ref listing).
    Unknown,
}

impl RefKind {
    /// Refs whose target cannot move, so their index entry may be trusted without asking.
    pub fn immutable(self) -> bool {
        matches!(self, RefKind::Commit | RefKind::Tag)
    }
}

/// The identity of a repository for cache keys: `<scheme> <url>`, where `scheme` is the forge's
/// slug scheme (`gh`, `gl`, `bb`) or `git` for `git+…` slugs, and `url` the clone URL as
/// configured and expanded (host, owner and repo included).
pub fn repo_identity(scheme: &str, url: &str) -> String {
    format!("{scheme} {url}")
}

/// First 16 hex digits of the sha256 of a repository identity: the suffix of its tree names.
fn repo_tag(repo: &str) -> String {
    hex::encode(Sha256::digest(repo.as_bytes()))[..16].to_string()
}

/// The name of a cached tree: always scoped to one repository.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TreeKey {
    /// A commit the forge (or git) resolved, of repository `repo` (a [`repo_identity`]).
    Commit {
        /// The repository identity.
        repo: String,
        /// The full commit sha.
        sha: String,
    },
    /// `sha256:<hex>` of the archive bytes, for archives whose commit was not resolved.
    Archive {
        /// The repository identity.
        repo: String,
        /// `sha256:<hex>` of the archive bytes.
        digest: String,
    },
}

impl TreeKey {
    /// The key of commit `sha` of `repo`.
    pub fn commit(repo: &str, sha: &str) -> Self {
        TreeKey::Commit {
            repo: repo.to_string(),
            sha: sha.to_ascii_lowercase(),
        }
    }

    /// The key of an archive of `repo` whose bytes hash to `digest` (`sha256:<hex>`).
    pub fn archive(repo: &str, digest: &str) -> Self {
        TreeKey::Archive {
            repo: repo.to_string(),
            digest: digest.to_string(),
        }
    }

    /// The repository identity the tree belongs to.
    pub fn repo(&self) -> &str {
        match self {
            TreeKey::Commit { repo, .. } | TreeKey::Archive { repo, .. } => repo,
        }
    }

    /// The tree's directory name under the cache root: the commit or digest, then a tag of the repo.
    pub fn dir_name(&self) -> String {
        match self {
            TreeKey::Commit { repo, sha } => {
                format!("commit-{}-{}", sha.to_ascii_lowercase(), repo_tag(repo))
            }
            TreeKey::Archive { repo, digest } => format!(
                "archive-{}-{}",
                digest.trim_start_matches("sha256:"),
                repo_tag(repo)
            ),
        }
    }

    fn commit_id(&self) -> Option<String> {
        match self {
            TreeKey::Commit { sha, .. } => Some(sha.clone()),
            TreeKey::Archive { .. } => None,
        }
    }
}

/// A tree in the cache.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cached {
    /// The extracted tree.
    pub dir: PathBuf,
    /// `sha256:<hex>` of the tree's contents (paths, modes, bytes), as `tree_digest` computes it.
    pub digest: String,
    /// The commit the tree is, when it was resolved.
    pub commit: Option<String>,
    /// How the tree was first obtained.
    pub origin: String,
}

/// One index record: `reference` of `location` is the tree `key`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexEntry {
    /// The repository identity the ref was resolved in.
    pub location: String,
    /// The ref as given (empty for the default branch).
    pub reference: String,
    /// What the ref turned out to be; decides whether the record may be reused without asking.
    pub kind: RefKind,
    /// The tree's [`TreeKey::dir_name`].
    pub key: String,
    /// The commit the ref pointed at, when known.
    pub commit: Option<String>,
}

#[derive(Serialize, Deserialize)]
struct Meta {
    /// The [`repo_identity`] the tree was fetched for (absent in caches written before it
    /// existed; such trees have names without the repository suffix and are never looked up).
    #[serde(default)]
    repo: Option<String>,
    digest: String,
    commit: Option<String>,
    origin: String,
}

/// A staging entry without an owner's lock file (left by an iac older than those locks) is
/// removed once it is this old.
const STALE_STAGING: std::time::Duration = std::time::Duration::from_secs(3600);

/// Handle on the cache directory. Cheap to clone; all state is on disk.
#[derive(Debug, Clone)]
pub struct Cache {
    root: PathBuf,
}

impl Cache {
    /// A cache rooted at `root` (created on first store).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Cache { root: root.into() }
    }

    /// The directory holding the trees and the index.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `root/sub`, created private (0700) like the root itself: cached trees may be private
    /// sources, so other local users must not be able to reach them.
    fn mkdir(&self, sub: &str) -> Result<PathBuf, FetchError> {
        create_private_dir(&self.root).map_err(FetchError::io(&self.root))?;
        let d = self.root.join(sub);
        create_private_dir(&d).map_err(FetchError::io(&d))?;
        Ok(d)
    }

    /// A fresh staging directory under `tmp/`, removed when dropped. What a killed fetch left
    /// there (its owner's lock no longer held) is swept first.
    pub fn staging(&self, what: &str) -> Result<OwnedTempDir, FetchError> {
        let tmp = self.mkdir("tmp")?;
        sweep_orphans(&tmp, STALE_STAGING);
        OwnedTempDir::new_in(&tmp, &format!("{what}-")).map_err(FetchError::io(&tmp))
    }

    /// The cached tree for `key`, if present. A tree whose metadata is missing (a crash
    /// between rename and metadata write) is digested again and repaired; one whose metadata
    /// names another repository is never served.
    pub fn lookup(&self, key: &TreeKey) -> Result<Option<Cached>, FetchError> {
        self.lookup_name(&key.dir_name(), key.repo(), key.commit_id())
    }

    fn lookup_name(
        &self,
        name: &str,
        repo: &str,
        commit: Option<String>,
    ) -> Result<Option<Cached>, FetchError> {
        // A fetch killed while writing a tree's metadata left its temp file here; a later
        // fetch that only hits the cache writes nothing, so it sweeps.
        iac_core::fsutil::sweep_dead_temps(&self.root.join("trees"));
        let dir = self.root.join("trees").join(name);
        if !dir.is_dir() {
            return Ok(None);
        }
        let meta_path = self.root.join("trees").join(format!("{name}.json"));
        let meta = std::fs::read(&meta_path)
            .ok()
            .and_then(|b| serde_json::from_slice::<Meta>(&b).ok());
        let meta = match meta {
            Some(m) if m.repo.as_deref() == Some(repo) => m,
            Some(m) => {
                tracing::warn!(
                    tree = %name,
                    stored = ?m.repo,
                    wanted = %repo,
                    "cache: tree belongs to another repository; not served"
                );
                return Ok(None);
            }
            None => {
                let m = Meta {
                    repo: Some(repo.to_string()),
                    digest: tree_digest(&dir, &[])?,
                    commit,
                    origin: "cache (metadata rebuilt)".into(),
                };
                self.write_meta(&meta_path, &m)?;
                m
            }
        };
        Ok(Some(Cached {
            dir,
            digest: meta.digest,
            commit: meta.commit,
            origin: meta.origin,
        }))
    }

    /// Moves the staged `tree` into the cache under `key` (rename), recording its digest.
    /// If another fetch put the same key in place first, that tree is used and ours dropped.
    pub fn insert(
        &self,
        key: &TreeKey,
        tree: &Path,
        commit: Option<String>,
        origin: &str,
    ) -> Result<Cached, FetchError> {
        let trees = self.mkdir("trees")?;
        let name = key.dir_name();
        let dir = trees.join(&name);
        let meta_path = trees.join(format!("{name}.json"));
        let digest = tree_digest(tree, &[])?;
        if let Err(e) = std::fs::rename(tree, &dir) {
            if dir.is_dir() {
                tracing::debug!(key = %name, "cache: a concurrent fetch stored this tree first");
                return self.lookup(key)?.ok_or_else(|| FetchError::Io {
                    path: dir.clone(),
                    source: e,
                });
            }
            return Err(FetchError::Io {
                path: dir,
                source: e,
            });
        }
        let meta = Meta {
            repo: Some(key.repo().to_string()),
            digest: digest.clone(),
            commit: commit.clone(),
            origin: origin.to_string(),
        };
        self.write_meta(&meta_path, &meta)?;
        Ok(Cached {
            dir,
            digest,
            commit,
            origin: origin.to_string(),
        })
    }

    fn write_meta(&self, path: &Path, meta: &Meta) -> Result<(), FetchError> {
        let bytes = serde_json::to_vec_pretty(meta).expect("metadata serializes");
        iac_core::fsutil::write_atomic(path, &bytes, Some(PRIVATE_FILE_MODE))
            .map_err(FetchError::io(path))
    }

    fn index_path(&self, location: &str, reference: &str) -> PathBuf {
        let h = Sha256::digest(format!("{location}\n{reference}").as_bytes());
        self.root
            .join("index")
            .join(format!("{}.json", &hex::encode(h)[..32]))
    }

    /// The index record of `reference` at `location`, if one was written.
    pub fn index_get(&self, location: &str, reference: &str) -> Option<IndexEntry> {
        iac_core::fsutil::sweep_dead_temps(&self.root.join("index"));
        let bytes = std::fs::read(self.index_path(location, reference)).ok()?;
        let e: IndexEntry = serde_json::from_slice(&bytes).ok()?;
        (e.location == location && e.reference == reference).then_some(e)
    }

    /// Records an index entry (atomically).
    pub fn index_put(&self, entry: &IndexEntry) -> Result<(), FetchError> {
        self.mkdir("index")?;
        let path = self.index_path(&entry.location, &entry.reference);
        let bytes = serde_json::to_vec_pretty(entry).expect("index entry serializes");
        iac_core::fsutil::write_atomic(&path, &bytes, Some(PRIVATE_FILE_MODE))
            .map_err(FetchError::io(&path))
    }

    /// The cached tree an immutable index entry points at, if both exist and the tree belongs
    /// to `location` (a [`repo_identity`]).
    pub fn lookup_immutable(
        &self,
        location: &str,
        reference: &str,
    ) -> Result<Option<Cached>, FetchError> {
        let Some(e) = self
            .index_get(location, reference)
            .filter(|e| e.kind.immutable())
        else {
            return Ok(None);
        };
        let own = format!("-{}", repo_tag(location));
        let valid_name = (e.key.starts_with("commit-") || e.key.starts_with("archive-"))
            && e.key.ends_with(&own)
            && !e.key.contains('/')
            && !e.key.contains("..");
        if !valid_name {
            return Ok(None);
        }
        self.lookup_name(&e.key, location, e.commit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn staged(cache: &Cache, content: &str) -> (OwnedTempDir, PathBuf) {
        let s = cache.staging("t").unwrap();
        let tree = s.path().join("tree");
        std::fs::create_dir_all(&tree).unwrap();
        std::fs::write(tree.join("main.py"), content).unwrap();
        (s, tree)
    }

    #[test]
    fn insert_lookup_and_concurrent_loser() {
        let d = tempfile::tempdir().unwrap();
        let cache = Cache::new(d.path());
        let key = TreeKey::commit("gh https://h/o/r.git", &"AB".repeat(20));
        assert!(cache.lookup(&key).unwrap().is_none());
        let (_s1, t1) = staged(&cache, "one");
        let (_s2, t2) = staged(&cache, "one");
        let a = cache
            .insert(&key, &t1, Some("ab".repeat(20)), "tarball x")
            .unwrap();
        assert!(a.dir.ends_with(key.dir_name()));
        assert!(
            key.dir_name()
                .starts_with(&format!("commit-{}-", "ab".repeat(20)))
        );
        let b = cache
            .insert(&key, &t2, Some("ab".repeat(20)), "git y")
            .unwrap();
        assert_eq!(
            a, b,
            "the second insert of the same key reuses the first tree"
        );
        assert_eq!(cache.lookup(&key).unwrap().unwrap(), a);

        std::fs::remove_file(d.path().join(format!("trees/{}.json", key.dir_name()))).unwrap();
        let repaired = cache.lookup(&key).unwrap().unwrap();
        assert_eq!(repaired.digest, a.digest);
    }

    #[test]
    fn index_only_trusts_immutable_refs() {
        let d = tempfile::tempdir().unwrap();
        let cache = Cache::new(d.path());
        let sha = "cd".repeat(20);
        let (_s, t) = staged(&cache, "x");
        let repo = "gh https://h/o/r.git";
        cache
            .insert(&TreeKey::commit(repo, &sha), &t, Some(sha.clone()), "o")
            .unwrap();
        for (reference, kind, hit) in [("v1", RefKind::Tag, true), ("main", RefKind::Branch, false)]
        {
            cache
                .index_put(&IndexEntry {
                    location: repo.into(),
                    reference: reference.into(),
                    kind,
                    key: TreeKey::commit(repo, &sha).dir_name(),
                    commit: Some(sha.clone()),
                })
                .unwrap();
            assert_eq!(
                cache.lookup_immutable(repo, reference).unwrap().is_some(),
                hit
            );
        }
        assert!(
            cache
                .lookup_immutable("gh https://h/o/other.git", "v1")
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn trees_are_scoped_to_their_repository() {
        let d = tempfile::tempdir().unwrap();
        let cache = Cache::new(d.path());
        let sha = "ef".repeat(20);
        let (a, b) = ("gh https://h/octo/hello.git", "gl https://h/evil/mal.git");
        let (_s, t) = staged(&cache, "evil");
        let evil = cache
            .insert(&TreeKey::commit(b, &sha), &t, Some(sha.clone()), "o")
            .unwrap();
        assert!(
            cache.lookup(&TreeKey::commit(a, &sha)).unwrap().is_none(),
            "the same commit id of another repository is not a hit"
        );
        assert_eq!(
            cache.lookup(&TreeKey::commit(b, &sha)).unwrap().unwrap(),
            evil
        );

        // An index entry of repo `a` that points at repo `b`'s tree is ignored.
        cache
            .index_put(&IndexEntry {
                location: a.into(),
                reference: "v1".into(),
                kind: RefKind::Tag,
                key: TreeKey::commit(b, &sha).dir_name(),
                commit: Some(sha.clone()),
            })
            .unwrap();
        assert!(cache.lookup_immutable(a, "v1").unwrap().is_none());

        // A tree renamed to `a`'s name still carries `b` in its metadata: not served.
        let trees = d.path().join("trees");
        let (from, to) = (
            TreeKey::commit(b, &sha).dir_name(),
            TreeKey::commit(a, &sha).dir_name(),
        );
        std::fs::rename(trees.join(&from), trees.join(&to)).unwrap();
        std::fs::rename(
            trees.join(format!("{from}.json")),
            trees.join(format!("{to}.json")),
        )
        .unwrap();
        assert!(cache.lookup(&TreeKey::commit(a, &sha)).unwrap().is_none());
    }
}
