//! Hosted slugs (`gh:`, `gl:`, `bb:`): tarball first, git clone when the archive is unavailable.
//!
//! Order of work for `SCHEME:OWNER/REPO#REF`:
//! 1. no network: a full-sha ref already cached, or a tag recorded in the cache index;
//! 2. resolve the ref to a commit with a git ref listing on the forge's clone URL
//!    (`resolve_refs`, default on); a cached commit is served from the cache;
//! 3. download the archive (of the resolved commit when known, else of the ref by name) and
//!    extract it safely; hostile or oversized archives are hard errors (no fallback: a clone of
//!    the same tree would be rejected for the same reason), and so is an archive whose pax
//!    `comment=<sha>` names another commit than the one the forge resolved. The tree is cached
//!    under the repository and the resolved commit — never under the commit an archive claims
//!    (an unresolved archive is cached under its own digest);
//! 4. on an unavailable archive (HTTP error, network error, not a tar.gz), clone with git instead
//!    (a guarded fetch refused for a private address is final at any step: no fallback);
//!    the reason is in `Source.origin` and in a `warn` [`DeployEvent`](iac_core::DeployEvent).

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use iac_core::{Events, FetchError, Forge, Source, Stage};

use super::cache::{Cache, IndexEntry, RefKind, TreeKey, repo_identity};
use super::config::FetchConfig;
use super::extract::is_full_sha;
use super::git::{GitFetcher, GitRequest, ResolvedRef, resolve_ref};
use super::tarball::TarballFetcher;

/// The tarball → git chain for hosted forges.
#[derive(Debug, Clone)]
pub struct ChainFetcher {
    config: Arc<FetchConfig>,
    cache: Cache,
    tarball: TarballFetcher,
    git: GitFetcher,
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, FetchError> + Send + 'static,
) -> Result<T, FetchError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| FetchError::Io {
            path: Default::default(),
            source: std::io::Error::other(format!("fetch task failed: {e}")),
        })?
}

impl ChainFetcher {
    /// A fetcher trying the sources of a slug in order, sharing `cache`.
    pub fn new(
        config: Arc<FetchConfig>,
        cache: Cache,
        tarball: TarballFetcher,
        git: GitFetcher,
    ) -> Self {
        ChainFetcher {
            config,
            cache,
            tarball,
            git,
        }
    }

    /// Fetches `owner/repo` at `reference` from `forge`. A git clone stops when `interrupt` is
    /// set (the caller's deadline).
    pub async fn fetch(
        &self,
        forge: Forge,
        owner: &str,
        repo: &str,
        reference: Option<&str>,
        events: &Events,
        interrupt: Arc<AtomicBool>,
    ) -> Result<Source, FetchError> {
        let ep = self.config.forge(forge);
        let clone_url = ep.clone_url(owner, repo);
        // Cache keys and index entries are scoped to forge + host + owner/repo.
        let identity = repo_identity(forge.scheme(), &clone_url);
        let index_ref = reference.unwrap_or("HEAD").to_string();
        let slug = format!("{}:{owner}/{repo}#{index_ref}", forge.scheme());

        // 1. No network.
        if let Some(sha) = reference.filter(|r| is_full_sha(r)) {
            let cache = self.cache.clone();
            let key = TreeKey::commit(&identity, sha);
            if let Some(hit) = blocking(move || cache.lookup(&key)).await? {
                events.info(Stage::Fetch, format!("{slug}: cache hit (commit)"));
                return Ok(hit_source(hit, format!("cache hit: commit {sha}")));
            }
        }
        {
            let (cache, loc, r) = (self.cache.clone(), identity.clone(), index_ref.clone());
            if let Some(hit) = blocking(move || cache.lookup_immutable(&loc, &r)).await? {
                events.info(
                    Stage::Fetch,
                    format!("{slug}: cache hit (tag, not re-resolved)"),
                );
                return Ok(hit_source(
                    hit,
                    format!("cache hit: {index_ref} (immutable ref, not re-resolved)"),
                ));
            }
        }

        // 2. Resolve the ref to a commit.
        let mut resolved: Option<ResolvedRef> = None;
        let mut unresolved_why = None;
        if self.config.resolve_refs || reference.is_some_and(is_full_sha) {
            let (cache, url, r) = (
                self.cache.clone(),
                clone_url.clone(),
                reference.map(str::to_string),
            );
            let git_config = self.config.git_config.clone();
            let guard = self.git.guard().cloned();
            let max_ref_bytes = self.config.max_ref_bytes;
            let res = blocking(move || {
                let scratch = cache.staging("resolve")?;
                resolve_ref(
                    &url,
                    r.as_deref(),
                    scratch.path(),
                    &git_config,
                    guard.as_ref(),
                    max_ref_bytes,
                )
            })
            .await;
            match res {
                Ok(r) => resolved = Some(r),
                // Refused is final: no download by name, no clone.
                Err(e @ FetchError::Refused { .. }) => return Err(e),
                Err(e) => {
                    events.debug(
                        Stage::Fetch,
                        format!(
                            "{slug}: could not resolve the ref with git ({e}); downloading by name"
                        ),
                    );
                    unresolved_why = Some(e.to_string());
                }
            }
        }
        if let Some(r) = &resolved {
            let key = TreeKey::commit(&identity, &r.commit);
            let cache = self.cache.clone();
            let k = key.clone();
            if let Some(hit) = blocking(move || cache.lookup(&k)).await? {
                self.record(&identity, &index_ref, r.kind, &key, Some(&r.commit));
                events.info(
                    Stage::Fetch,
                    format!("{slug}: cache hit (resolved to {})", r.commit),
                );
                return Ok(hit_source(
                    hit,
                    format!("cache hit: commit {} ({} at {clone_url})", r.commit, r.name),
                ));
            }
        }

        // 3. Tarball.
        let archive_ref = resolved
            .as_ref()
            .map(|r| r.commit.clone())
            .unwrap_or_else(|| index_ref.clone());
        let url = ep.archive_url(owner, repo, &archive_ref);
        events.info(Stage::Fetch, format!("{slug}: downloading {url}"));
        let staging = self.cache.staging("tarball")?;
        match self.tarball.download(&url, ep.auth_header(), staging).await {
            Ok((x, staging)) => {
                if let (Some(r), Some(claim)) = (&resolved, &x.commit)
                    && !claim.eq_ignore_ascii_case(&r.commit)
                {
                    let e = FetchError::Unsafe {
                        entry: "pax_global_header".into(),
                        why: format!(
                            "the archive {url} claims to be commit {claim}, but {clone_url} resolved {} to {}; refusing to cache it",
                            r.name, r.commit
                        ),
                    };
                    events.error(Stage::Fetch, format!("{slug}: {e}"));
                    return Err(e);
                }
                let kind = match (&resolved, reference) {
                    (Some(r), _) => r.kind,
                    (None, Some(r)) if is_full_sha(r) => RefKind::Commit,
                    _ => RefKind::Unknown,
                };
                // The key comes from what the forge resolved, never from the archive's claim.
                let (key, commit) = match &resolved {
                    Some(r) => (
                        TreeKey::commit(&identity, &r.commit),
                        Some(r.commit.clone()),
                    ),
                    None => (
                        TreeKey::archive(&identity, &x.archive_digest),
                        x.commit.clone(),
                    ),
                };
                let mut origin = format!(
                    "tarball {url} ({} bytes, {} entries)",
                    x.archive_bytes, x.files
                );
                if resolved.is_none()
                    && let Some(claim) = &x.commit
                {
                    origin.push_str(&format!(
                        "; commit {claim} as the archive claims (not resolved with the forge)"
                    ));
                }
                if let Some(why) = &unresolved_why {
                    origin.push_str(&format!("; ref not resolved with git: {why}"));
                }
                let (cache, k, root, c, o) = (
                    self.cache.clone(),
                    key.clone(),
                    x.root.clone(),
                    commit.clone(),
                    origin.clone(),
                );
                let cached = blocking(move || {
                    let r = cache.insert(&k, &root, c, &o);
                    drop(staging);
                    r
                })
                .await?;
                self.record(&identity, &index_ref, kind, &key, commit.as_deref());
                events.info(Stage::Fetch, format!("{slug}: {origin}"));
                Ok(Source {
                    dir: cached.dir,
                    commit,
                    digest: cached.digest,
                    origin,
                })
            }
            Err(
                e @ (FetchError::Unsafe { .. }
                | FetchError::TooLarge { .. }
                | FetchError::Io { .. }
                | FetchError::Refused { .. }),
            ) => {
                events.error(Stage::Fetch, format!("{slug}: {e}"));
                Err(e)
            }
            Err(e) if !self.config.git_fallback => Err(e),
            Err(tarball_err) => {
                events.warn(
                    Stage::Fetch,
                    format!("{slug}: archive unavailable ({tarball_err}); falling back to git clone of {clone_url}"),
                );
                let reason = format!("tarball unavailable: {tarball_err}");
                self.git
                    .fetch(
                        GitRequest {
                            url: &clone_url,
                            repo: &identity,
                            reference,
                            known: resolved,
                            reason: Some(&reason),
                        },
                        interrupt,
                    )
                    .await
                    .map_err(|git| FetchError::Fallback {
                        tarball: Box::new(tarball_err),
                        git: Box::new(git),
                    })
            }
        }
    }

    fn record(
        &self,
        location: &str,
        reference: &str,
        kind: RefKind,
        key: &TreeKey,
        commit: Option<&str>,
    ) {
        if !kind.immutable() {
            return;
        }
        let entry = IndexEntry {
            location: location.to_string(),
            reference: reference.to_string(),
            kind,
            key: key.dir_name(),
            commit: commit.map(str::to_string),
        };
        if let Err(e) = self.cache.index_put(&entry) {
            tracing::warn!("cache index not updated: {e}");
        }
    }
}

fn hit_source(hit: super::cache::Cached, origin: String) -> Source {
    Source {
        dir: hit.dir,
        commit: hit.commit,
        digest: hit.digest,
        origin,
    }
}
