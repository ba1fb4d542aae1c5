//! [`FetchConfig`]: everything the fetchers can be told — cache location, per-forge hosts and URL
//! templates, extraction and pack caps, the HTTP idle timeout, the total deadline of one fetch
//! and optional per-forge tokens (redacted whenever printed or serialized).
//!
//! URL templates use the placeholders `{host}`, `{owner}` (GitLab: may contain `/` subgroups),
//! `{repo}`, `{ref}` (percent-encoded, `/` kept) and `{ref_slug}` (the ref with `/` replaced by
//! `-`, for file names). A template may also be a `file://` URL (clone URLs), which is how tests and
//! air-gapped mirrors point a forge at local repositories.

use std::path::PathBuf;
use std::time::Duration;

use iac_core::Forge;
use serde::{Deserialize, Serialize};

use super::extract::Limits;
use super::guard::{AllowedHost, FetchOrigin, RefusePrivate};

pub use crate::secret::Secret;

/// One forge as configured: every field is optional and falls back to the public instance's
/// default for that forge (so `[fetch.gitlab] host = "git.example.com"` alone is enough).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ForgeConfig {
    /// Host substituted for `{host}` (`github.com`, a GitHub Enterprise host, `gitlab.example.com`…).
    pub host: Option<String>,
    /// Template of the `.tar.gz` archive URL of one ref.
    pub archive_url: Option<String>,
    /// Template of the git clone URL (`https://…` or `file:///…`).
    pub clone_url: Option<String>,
    /// Token sent with archive downloads (GitHub/Bitbucket: `Authorization: Bearer`, GitLab:
    /// `PRIVATE-TOKEN`). Git clones use the git credential helpers configured on the machine.
    pub token: Option<Secret>,
}

/// A forge's effective endpoints: [`ForgeConfig`] with the defaults filled in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForgeEndpoints {
    /// Which forge.
    pub forge: Forge,
    /// The forge's host name, matched against slugs.
    pub host: String,
    /// Archive URL pattern (`{owner}`, `{repo}`, `{ref}` filled in).
    pub archive_url: String,
    /// Clone URL pattern (`{owner}`, `{repo}` filled in).
    pub clone_url: String,
    /// Token sent to this forge only (redacted when printed).
    pub token: Option<Secret>,
}

impl ForgeEndpoints {
    /// The defaults of the public instance of `forge`.
    pub fn public(forge: Forge) -> Self {
        let (host, archive) = match forge {
            Forge::GitHub => (
                "github.com",
                "https://codeload.{host}/{owner}/{repo}/tar.gz/{ref}",
            ),
            Forge::GitLab => (
                "gitlab.com",
                "https://{host}/{owner}/{repo}/-/archive/{ref}/{repo}-{ref_slug}.tar.gz",
            ),
            Forge::Bitbucket => (
                "bitbucket.org",
                "https://{host}/{owner}/{repo}/get/{ref}.tar.gz",
            ),
        };
        ForgeEndpoints {
            forge,
            host: host.into(),
            archive_url: archive.into(),
            clone_url: "https://{host}/{owner}/{repo}.git".into(),
            token: None,
        }
    }

    /// The archive URL of `owner/repo` at `reference`.
    pub fn archive_url(&self, owner: &str, repo: &str, reference: &str) -> String {
        self.render(&self.archive_url, owner, repo, reference)
    }

    /// The clone URL of `owner/repo`.
    pub fn clone_url(&self, owner: &str, repo: &str) -> String {
        self.render(&self.clone_url, owner, repo, "HEAD")
    }

    /// The header carrying the token on archive downloads, if a token is configured.
    pub fn auth_header(&self) -> Option<(&'static str, String)> {
        let token = self.token.as_ref()?.expose();
        Some(match self.forge {
            Forge::GitLab => ("PRIVATE-TOKEN", token.to_string()),
            Forge::GitHub | Forge::Bitbucket => ("Authorization", format!("Bearer {token}")),
        })
    }

    fn render(&self, template: &str, owner: &str, repo: &str, reference: &str) -> String {
        template
            .replace("{host}", &self.host)
            .replace("{owner}", owner)
            .replace("{repo}", repo)
            .replace("{ref_slug}", &percent_encode(&reference.replace('/', "-")))
            .replace("{ref}", &percent_encode(reference))
    }
}

/// Percent-encodes everything but RFC 3986 unreserved characters and `/`.
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'/') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Configuration of the source fetchers (the `[fetch]` section of `iac.toml`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct FetchConfig {
    /// Content cache (trees, index, staging). Relative paths are resolved against the working
    /// directory when the fetcher is constructed.
    pub cache_dir: PathBuf,
    /// `[fetch.github]`: GitHub endpoints and token.
    pub github: ForgeConfig,
    /// `[fetch.gitlab]`: GitLab endpoints and token.
    pub gitlab: ForgeConfig,
    /// `[fetch.bitbucket]`: Bitbucket endpoints and token.
    pub bitbucket: ForgeConfig,
    /// Cap on the unpacked size of one source tree, in bytes (regular file contents).
    pub max_bytes: u64,
    /// Cap on the number of entries (files, directories, links) of one source tree.
    pub max_files: u64,
    /// HTTP connect timeout and read-idle timeout (`"30s"`). A download that keeps streaming is
    /// never cut off; one that stalls for this long is.
    #[serde(with = "iac_core::duration")]
    pub http_timeout: Duration,
    /// Total deadline of one fetch (ref listing, archive download and extraction, git clone),
    /// e.g. `"5m"`. Past it the fetch fails naming the slug and the deadline, and the git
    /// transfer is interrupted.
    #[serde(with = "iac_core::duration")]
    pub deadline: Duration,
    /// Cap on the disk space a git transfer may use (packs, index, refs), in bytes. Checked
    /// while the pack streams in and once more when it is complete.
    pub max_pack_bytes: u64,
    /// Cap on the number of refs one branch/tag listing (`GET /refs`, `iac refs`) accepts.
    pub max_refs: u64,
    /// Cap on the bytes of one remote ref listing (the smart-HTTP responses, counted as they
    /// stream in; a local listing counts ref-name bytes).
    pub max_ref_bytes: u64,
    /// Resolve a hosted slug's ref to a commit with a git ref listing (`ls-remote`) before
    /// downloading, so branches hit the cache when they have not moved. Off: a branch's tarball is
    /// downloaded every time.
    pub resolve_refs: bool,
    /// Fall back to a git clone when the archive is unavailable.
    pub git_fallback: bool,
    /// Extra git configuration, `key=value`, applied in memory to every ref listing and clone
    /// (e.g. `http.proxy=http://proxy:3128`, `protocol.version=2`).
    pub git_config: Vec<String>,
    /// Directories a `path:` source may neither contain nor lie inside: iac's state dir and the
    /// secrets dir (the defaults are those of `state_dir` and `pki.secrets_dir`; the binary adds
    /// the configured ones). `cache_dir` is always protected too. Relative paths are resolved
    /// against the working directory when the fetcher is constructed.
    pub protected_dirs: Vec<PathBuf>,
    /// Which fetches refuse hosts that resolve to private or local addresses: `"api"` (the
    /// default: fetches asked for through `iac serve`) or `"always"` (the CLI's too). See
    /// `guard.rs` for the address list and how it is enforced.
    pub refuse_private: RefusePrivate,
    /// Private hosts guarded fetches may still reach (an internal Git host): `"HOST"`,
    /// `"HOST:PORT"`, `"IP"`, `"IP/PREFIX"`, `"IP:PORT"`, `"[IPv6]:PORT"`.
    pub allow_private_hosts: Vec<AllowedHost>,
    /// PEM file of CA certificates trusted for HTTPS fetches (archives, git clones, ref
    /// listings) in addition to the platform's roots: an internal Git host with a private CA.
    /// Relative paths are resolved against the working directory when the fetcher is
    /// constructed. A `http.sslCAInfo` in the machine's git configuration is honoured too (for
    /// git transfers), merged with these.
    pub ca_bundle: Option<PathBuf>,
    /// Who asked for the fetches (never read from the file: the admin API sets
    /// [`FetchOrigin::Api`] on the fetcher it builds).
    #[serde(skip)]
    pub origin: FetchOrigin,
}

impl Default for FetchConfig {
    fn default() -> Self {
        FetchConfig {
            cache_dir: PathBuf::from(".iac/cache"),
            github: ForgeConfig::default(),
            gitlab: ForgeConfig::default(),
            bitbucket: ForgeConfig::default(),
            max_bytes: 512 * 1024 * 1024,
            max_files: 100_000,
            http_timeout: Duration::from_secs(30),
            deadline: Duration::from_secs(300),
            max_pack_bytes: 1024 * 1024 * 1024,
            max_refs: 10_000,
            max_ref_bytes: 8 * 1024 * 1024,
            resolve_refs: true,
            git_fallback: true,
            git_config: Vec::new(),
            protected_dirs: vec![PathBuf::from(".iac"), PathBuf::from("secrets")],
            refuse_private: RefusePrivate::Api,
            allow_private_hosts: Vec::new(),
            ca_bundle: None,
            origin: FetchOrigin::Cli,
        }
    }
}

impl FetchConfig {
    /// The effective endpoints of `forge`: configured values over the public defaults.
    pub fn forge(&self, forge: Forge) -> ForgeEndpoints {
        let c = match forge {
            Forge::GitHub => &self.github,
            Forge::GitLab => &self.gitlab,
            Forge::Bitbucket => &self.bitbucket,
        };
        let d = ForgeEndpoints::public(forge);
        ForgeEndpoints {
            forge,
            host: c.host.clone().unwrap_or(d.host),
            archive_url: c.archive_url.clone().unwrap_or(d.archive_url),
            clone_url: c.clone_url.clone().unwrap_or(d.clone_url),
            token: c.token.clone(),
        }
    }

    /// The size caps one extraction is held to.
    pub fn limits(&self) -> Limits {
        Limits {
            max_bytes: self.max_bytes,
            max_files: self.max_files,
        }
    }

    /// The HTTP timeout, at least 1 ms (zero would fail every request).
    pub fn http_timeout(&self) -> Duration {
        self.http_timeout.max(Duration::from_millis(1))
    }

    /// Whether these fetches refuse private and local addresses.
    pub fn guarded(&self) -> bool {
        self.refuse_private == RefusePrivate::Always || self.origin == FetchOrigin::Api
    }

    /// The total deadline of one fetch (at least one second).
    pub fn deadline(&self) -> Duration {
        self.deadline.max(Duration::from_secs(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::REDACTED;

    #[test]
    fn default_urls_per_forge() {
        let c = FetchConfig::default();
        let (gh, gl, bb) = (
            c.forge(Forge::GitHub),
            c.forge(Forge::GitLab),
            c.forge(Forge::Bitbucket),
        );
        assert_eq!(
            gh.archive_url("octo", "hello", "v1.0"),
            "https://codeload.github.com/octo/hello/tar.gz/v1.0"
        );
        assert_eq!(
            gh.clone_url("octo", "hello"),
            "https://github.com/octo/hello.git"
        );
        assert_eq!(
            gl.archive_url("grp/sub", "svc", "feature/x"),
            "https://gitlab.com/grp/sub/svc/-/archive/feature/x/svc-feature-x.tar.gz"
        );
        assert_eq!(
            gl.clone_url("grp/sub", "svc"),
            "https://gitlab.com/grp/sub/svc.git"
        );
        assert_eq!(
            bb.archive_url("team", "r", "a+b"),
            "https://bitbucket.org/team/r/get/a%2Bb.tar.gz"
        );
    }

    #[test]
    fn tokens_are_redacted_when_printed_or_serialized() {
        let mut c = FetchConfig::default();
        c.gitlab.token = Some(Secret::new("glpat-very-secret"));
        let dbg = format!("{c:?}");
        let json = serde_json::to_string(&c).unwrap();
        for out in [&dbg, &json] {
            assert!(!out.contains("glpat-very-secret"), "{out}");
            assert!(out.contains(REDACTED), "{out}");
        }
        let back: FetchConfig = serde_json::from_str(
            r#"{"gitlab": {"token": "t0k", "host": "git.example.com"}, "max_files": 7}"#,
        )
        .unwrap();
        let gl = back.forge(Forge::GitLab);
        assert_eq!(gl.token.as_ref().unwrap().expose(), "t0k");
        assert_eq!(
            gl.auth_header().unwrap(),
            ("PRIVATE-TOKEN", "t0k".to_string())
        );
        assert_eq!(
            gl.clone_url("a/b", "c"),
            "https://git.example.com/a/b/c.git"
        );
        assert!(
            gl.archive_url.contains("/-/archive/"),
            "unset fields keep the GitLab defaults"
        );
        assert_eq!(back.max_files, 7);
        assert_eq!(back.cache_dir, PathBuf::from(".iac/cache"));
    }
}
