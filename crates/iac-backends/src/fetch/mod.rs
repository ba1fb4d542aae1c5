//! Source fetching: the [`DefaultFetcher`] that implements [`iac_core::SourceFetcher`], and its
//! backends, one file each:
//!
//! | file | job |
//! |---|---|
//! | `config.rs` | [`FetchConfig`]: cache dir, per-forge hosts/URL templates/tokens, caps, timeout, deadline |
//! | `extract.rs` | safe streamed `tar.gz` extraction (also used to write git trees) |
//! | `tarball.rs` | forge archive download (reqwest, streamed, never buffered whole) |
//! | `tar_guard.rs` | streaming check of tar header blocks: long-name/pax entries over their caps are refused before the `tar` crate buffers them |
//! | `git.rs` | ref resolution (ls-remote) and depth-1 clones with gix |
//! | `guard.rs` | SSRF guard of API-originated fetches: private/local addresses refused after DNS resolution (a filtering resolver), IP literals and every redirect hop checked, no proxy; `[fetch] allow_private_hosts` |
//! | `refs.rs` | branch and tag listing: a remote's ref advertisement (no objects, response bytes capped) or a local repository's refs |
//! | `trust.rs` | extra HTTPS trust roots (`[fetch] ca_bundle`, git's `http.sslCAInfo`) merged with the platform's |
//! | `chain.rs` | hosted slugs: tarball first, git clone when the archive is unavailable |
//! | `local.rs` | `path:` slugs: the directory as is (refused when it holds the state or secrets dir), digested over the build context's file set |
//! | `cache.rs` | content cache under `.iac/cache`: trees keyed by repository + commit (or archive digest), ref index |
//! | `digest.rs` | the tree digest every backend reports as `Source.digest` |

//!
//! Dispatch by slug kind: hosted (`gh:`/`gl:`/`bb:`) → [`chain`]; `git+https://`/`git+file://`
//! → [`git`]; `path:` → [`local`]. Every [`Source`] carries `digest = sha256:<hex>` over the tree
//! (see [`digest`]) and `commit` when known. Cache rules (branches vs tags vs shas) are in
//! [`cache`].
//!
//! Fetches asked for through the admin API ([`FetchOrigin::Api`], or all with
//! `[fetch] refuse_private = "always"`) never connect to private or local addresses
//! ([`guard`]); such a slug fails with [`FetchError::Refused`] naming it.
//!
//! Every fetch has a total deadline (`[fetch] deadline`): past it [`DefaultFetcher`]
//! returns [`FetchError::Deadline`] naming the slug, sets the interrupt flag that stops a running
//! git transfer, and abandons the download (whose extraction task then removes its staging dir).

pub mod cache;
pub mod chain;
pub mod config;
pub mod digest;
pub mod extract;
pub mod git;
pub mod guard;
pub mod local;
pub mod refs;
pub mod tar_guard;
pub mod tarball;
pub mod trust;

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_hardening;
#[cfg(test)]
mod tests_issue22;
#[cfg(test)]
mod tests_refs;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use async_trait::async_trait;
use iac_core::{Events, FetchError, RefList, Slug, Source, SourceFetcher, Stage};

pub use cache::Cache;
pub use chain::ChainFetcher;
pub use config::{FetchConfig, ForgeConfig, ForgeEndpoints, Secret};
pub use extract::Limits;
pub use git::{GitFetcher, GitRequest};
pub use guard::{AllowedHost, FetchOrigin, NetGuard, RefusePrivate};
pub use local::IGNORED_DIRS;
pub use tarball::TarballFetcher;

/// The default [`SourceFetcher`]: tarball-then-git for hosted slugs, git for `git+…` slugs,
/// in-place for `path:` slugs, all sharing one content cache.
#[derive(Debug, Clone)]
pub struct DefaultFetcher {
    config: Arc<FetchConfig>,
    chain: ChainFetcher,
    git: GitFetcher,
}

impl DefaultFetcher {
    /// Builds the fetchers from `config`. A relative `cache_dir` is made absolute against the
    /// current directory now, so later `chdir`s do not move the cache.
    pub fn new(mut config: FetchConfig) -> Result<Self, FetchError> {
        let cwd = std::env::current_dir().map_err(FetchError::io("."))?;
        if config.cache_dir.is_relative() {
            config.cache_dir = cwd.join(&config.cache_dir);
        }
        for p in &mut config.protected_dirs {
            if p.is_relative() {
                *p = cwd.join(&*p);
            }
        }
        let mut roots = Vec::new();
        if let Some(ca) = &mut config.ca_bundle {
            if ca.is_relative() {
                *ca = cwd.join(&*ca);
            }
            roots = trust::load_roots(ca, "[fetch] ca_bundle")?;
            // Carried to git's HTTP client through the git configuration (see git.rs).
            config
                .git_config
                .push(format!("{}={}", git::CA_BUNDLE_KEY, ca.display()));
        }
        if !config.protected_dirs.contains(&config.cache_dir) {
            config.protected_dirs.push(config.cache_dir.clone());
        }
        let cache = Cache::new(&config.cache_dir);
        let limits = config.limits();
        let guard = config
            .guarded()
            .then(|| Arc::new(NetGuard::new(&config.allow_private_hosts)));
        let tarball = TarballFetcher::new(config.http_timeout(), limits, guard.clone(), roots)?;
        let git = GitFetcher::new(
            cache.clone(),
            limits,
            (
                config.max_pack_bytes,
                refs::RefLimits {
                    max_refs: config.max_refs,
                    max_bytes: config.max_ref_bytes,
                },
            ),
            config.git_config.clone(),
            guard,
        );
        let config = Arc::new(config);
        let chain = ChainFetcher::new(config.clone(), cache, tarball, git.clone());
        Ok(DefaultFetcher { config, chain, git })
    }

    /// The `[fetch]` settings it was made with.
    pub fn config(&self) -> &FetchConfig {
        &self.config
    }

    fn ref_limits(&self) -> refs::RefLimits {
        refs::RefLimits {
            max_refs: self.config.max_refs,
            max_bytes: self.config.max_ref_bytes,
        }
    }

    /// One ref listing without the deadline (the caller bounds it), blocking.
    fn list_refs_blocking(&self, slug: &Slug) -> Result<RefList, FetchError> {
        let limits = self.ref_limits();
        let url = match slug {
            Slug::Hosted {
                forge, owner, repo, ..
            } => self.config.forge(*forge).clone_url(owner, repo),
            Slug::GitHttps { url, .. } => url.clone(),
            Slug::GitFile { path, .. } => return refs::list_local(path, false, limits),
            Slug::Path { dir } => return refs::list_local(dir, true, limits),
        };
        if let Some(path) = url.strip_prefix("file://") {
            return refs::list_local(std::path::Path::new(path), false, limits);
        }
        let scratch = Cache::new(&self.config.cache_dir).staging("refs")?;
        refs::list_remote(
            &url,
            scratch.path(),
            &self.config.git_config,
            self.git.guard(),
            limits,
        )
    }

    /// One fetch without the deadline (the caller bounds it).
    async fn fetch_unbounded(
        &self,
        slug: &Slug,
        events: &Events,
        interrupt: Arc<AtomicBool>,
    ) -> Result<Source, FetchError> {
        match slug {
            Slug::Hosted {
                forge,
                owner,
                repo,
                reference,
            } => {
                self.chain
                    .fetch(*forge, owner, repo, reference.as_deref(), events, interrupt)
                    .await
            }
            Slug::GitHttps { url, reference } => {
                let identity = cache::repo_identity("git", url);
                let req = GitRequest {
                    url,
                    repo: &identity,
                    reference: reference.as_deref(),
                    known: None,
                    reason: None,
                };
                self.git.fetch(req, interrupt).await
            }
            Slug::GitFile { path, reference } => {
                let url = format!("file://{}", path.display());
                let identity = cache::repo_identity("git", &url);
                let req = GitRequest {
                    url: &url,
                    repo: &identity,
                    reference: reference.as_deref(),
                    known: None,
                    reason: None,
                };
                self.git.fetch(req, interrupt).await
            }
            Slug::Path { dir } => {
                let dir = dir.clone();
                let protected = self.config.protected_dirs.clone();
                tokio::task::spawn_blocking(move || local::fetch_local(&dir, &protected))
                    .await
                    .map_err(|e| FetchError::Io {
                        path: Default::default(),
                        source: std::io::Error::other(e.to_string()),
                    })?
            }
        }
    }
}

#[async_trait]
impl SourceFetcher for DefaultFetcher {
    /// Lists refs under the fetch deadline. Every error names the slug; a refusal reads as
    /// [`FetchError::Refused`] of the slug. (A listing past its deadline is abandoned: its
    /// blocking thread ends at the HTTP client's own timeouts.)
    async fn list_refs(&self, slug: &Slug) -> Result<RefList, FetchError> {
        let deadline = self.config.deadline();
        let (this, s) = (self.clone(), slug.clone());
        let work = tokio::task::spawn_blocking(move || this.list_refs_blocking(&s));
        let listed = match tokio::time::timeout(deadline, work).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => Err(FetchError::Io {
                path: Default::default(),
                source: std::io::Error::other(format!("ref listing task failed: {e}")),
            }),
            Err(_) => {
                return Err(FetchError::Deadline {
                    slug: slug.to_string(),
                    secs: deadline.as_secs(),
                });
            }
        };
        listed.map_err(|e| match e {
            FetchError::Refused { .. } => FetchError::Refused {
                slug: slug.to_string(),
            },
            e => FetchError::Refs {
                slug: slug.to_string(),
                source: Box::new(e),
            },
        })
    }

    async fn fetch(&self, slug: &Slug, events: &Events) -> Result<Source, FetchError> {
        events.info(Stage::Fetch, format!("fetching {slug}"));
        let interrupt = Arc::new(AtomicBool::new(false));
        let deadline = self.config.deadline();
        let work = self.fetch_unbounded(slug, events, interrupt.clone());
        let source = match tokio::time::timeout(deadline, work).await {
            Ok(r) => r,
            Err(_) => {
                // Stops a git transfer at its next read; a download is abandoned by dropping it.
                interrupt.store(true, Ordering::SeqCst);
                Err(FetchError::Deadline {
                    slug: slug.to_string(),
                    secs: deadline.as_secs(),
                })
            }
        };
        // A refusal reads the same whichever step (ref listing, download, clone) refused it.
        let source = source.map_err(|e| match e {
            FetchError::Refused { .. } => FetchError::Refused {
                slug: slug.to_string(),
            },
            FetchError::Fallback { git, .. } if matches!(*git, FetchError::Refused { .. }) => {
                FetchError::Refused {
                    slug: slug.to_string(),
                }
            }
            e => e,
        });
        match &source {
            Ok(s) => events.info(
                Stage::Fetch,
                format!("{slug}: {} → {} ({})", s.origin, s.dir.display(), s.digest),
            ),
            Err(e) => events.error(Stage::Fetch, format!("{slug}: {e}")),
        }
        source
    }
}
