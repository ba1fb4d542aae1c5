//! Branch and tag listing (`GET /refs`, `iac refs`): the git ref advertisement of a remote
//! (smart HTTP, no objects fetched) or the refs of a local repository, as a [`RefList`].
//!
//! Remote listings run through gix's HTTP transport wrapped in `CappedHttp`, which counts
//! every response byte as it is read and fails the listing past `[fetch] max_ref_bytes`, so a
//! hostile server cannot make the listing hold more than that in memory. The refspecs ask a
//! protocol-v2 server for `HEAD`, `refs/heads/` and `refs/tags/` only (`ref-prefix`), so forges
//! with many `refs/pull/*` stay under `[fetch] max_refs`; a v0 server sends everything and the
//! other namespaces are dropped after counting. Guarded (API-originated) listings use the same
//! transport options as guarded clones (`git.rs`): filtering resolver, no proxy, no redirects.

use std::io::{self, BufRead, Read};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use gix::bstr::ByteSlice;
use gix::protocol::handshake::Ref;
use gix::protocol::transport::client::blocking_io::Transport;
use gix::protocol::transport::client::blocking_io::http::{
    self, GetResponse, Http, PostBodyDataKind, PostResponse,
};
use iac_core::{FetchError, RefList};

use super::git::{git_err, refused_or, transport_options};
use super::guard::NetGuard;

/// The caps of one listing.
#[derive(Debug, Clone, Copy)]
pub struct RefLimits {
    /// Refs accepted (every advertised ref counts, whatever its namespace).
    pub max_refs: u64,
    /// Response bytes (remote) or ref-name bytes (local) accepted.
    pub max_bytes: u64,
}

pub(super) fn too_many(url: &str, limits: &RefLimits) -> FetchError {
    git_err(
        url,
        "list refs",
        format!(
            "more than {} refs; expected at most [fetch] max_refs",
            limits.max_refs
        ),
    )
}

fn too_big(url: &str, limits: &RefLimits) -> FetchError {
    too_big_bytes(url, limits.max_bytes)
}

/// The error of a ref listing past `max` response bytes.
pub(super) fn too_big_bytes(url: &str, max: u64) -> FetchError {
    git_err(
        url,
        "list refs",
        format!(
            "the ref listing is larger than {max} bytes; expected at most [fetch] max_ref_bytes"
        ),
    )
}

/// A fetch connection of `remote` (at the HTTP(S) `url`) through gix's HTTP transport wrapped
/// in `CappedHttp`: every response byte is added to `read`, and reads fail once it passes `cap`
/// (which the caller may raise once the part it bounds is over).
pub(super) fn capped_connection<'a, 'repo>(
    remote: &'a gix::Remote<'repo>,
    url: &str,
    read: &Arc<AtomicU64>,
    cap: &Arc<AtomicU64>,
) -> Result<gix::remote::Connection<'a, 'static, 'repo, Box<dyn Transport + Send>>, FetchError> {
    let (gurl, version) = remote
        .sanitized_url_and_version(gix::remote::Direction::Fetch)
        .map_err(|e| git_err(url, "remote URL", e))?;
    let capped = CappedHttp {
        inner: http::reqwest::Remote::default(),
        read: read.clone(),
        cap: cap.clone(),
    };
    let transport: Box<dyn Transport + Send> =
        Box::new(http::connect_http(capped, gurl, version, false));
    Ok(remote.to_connection_with_transport(transport))
}

/// The refs of the repository at `dir` (`discover`: `dir` may be inside a work tree, as for
/// `path:` slugs; otherwise it must be the repository itself, as for `git+file:`).
pub fn list_local(dir: &Path, discover: bool, limits: RefLimits) -> Result<RefList, FetchError> {
    let shown = dir.display().to_string();
    let repo = if discover {
        gix::discover(dir).map_err(|e| {
            git_err(
                &shown,
                "open repository",
                format!("{e}; expected a directory inside a git work tree"),
            )
        })?
    } else {
        gix::open(dir).map_err(|e| {
            git_err(
                &shown,
                "open repository",
                format!("{e}; expected a git repository (bare or with a work tree)"),
            )
        })?
    };
    let head = repo
        .head_name()
        .map_err(|e| git_err(&shown, "read HEAD", e))?
        .map(|n| n.as_bstr().to_str_lossy().into_owned());
    let platform = repo
        .references()
        .map_err(|e| git_err(&shown, "list refs", e))?;
    let iter = platform
        .all()
        .map_err(|e| git_err(&shown, "list refs", e))?;
    let (mut names, mut bytes) = (Vec::new(), 0u64);
    for r in iter {
        let r = r.map_err(|e| git_err(&shown, "list refs", e))?;
        let name = r.name().as_bstr().to_str_lossy().into_owned();
        bytes += name.len() as u64;
        if names.len() as u64 >= limits.max_refs {
            return Err(too_many(&shown, &limits));
        }
        if bytes > limits.max_bytes {
            return Err(too_big(&shown, &limits));
        }
        names.push(name);
    }
    Ok(RefList::from_full_names(
        names.iter().map(String::as_str),
        head.as_deref(),
    ))
}

/// The refs `url` (`https://` or `http://`) advertises, read with a ref listing only.
/// `scratch` is an empty directory for a throwaway repository; `git_config` holds `key=value`
/// overrides; `guard` refuses private and local addresses.
pub fn list_remote(
    url: &str,
    scratch: &Path,
    git_config: &[String],
    guard: Option<&Arc<NetGuard>>,
    limits: RefLimits,
) -> Result<RefList, FetchError> {
    let lower = url.to_ascii_lowercase();
    if !(lower.starts_with("https://") || lower.starts_with("http://")) {
        return Err(git_err(
            url,
            "list refs",
            "unsupported URL scheme; expected https://, http:// or file://",
        ));
    }
    if let Some(g) = guard {
        g.check_url(url)?;
    }
    let refused = Arc::new(AtomicBool::new(false));
    let read = Arc::new(AtomicU64::new(0));
    list_remote_inner(url, scratch, git_config, guard, &refused, &read, limits)
        .map_err(|e| {
            if read.load(Ordering::SeqCst) > limits.max_bytes {
                too_big(url, &limits)
            } else {
                e
            }
        })
        .map_err(|e| refused_or(url, &refused, e))
}

fn list_remote_inner(
    url: &str,
    scratch: &Path,
    git_config: &[String],
    guard: Option<&Arc<NetGuard>>,
    refused: &Arc<AtomicBool>,
    read: &Arc<AtomicU64>,
    limits: RefLimits,
) -> Result<RefList, FetchError> {
    let dir = scratch.join("ls-refs.git");
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
                "HEAD",
                "+refs/heads/*:refs/remotes/origin/*",
                "+refs/tags/*:refs/tags/*",
            ],
            gix::remote::Direction::Fetch,
        )
        .map_err(|e| git_err(url, "refspecs", e))?;
    let mut conn = capped_connection(
        &remote,
        url,
        read,
        &Arc::new(AtomicU64::new(limits.max_bytes)),
    )?;
    if let Some(opts) = transport_options(&repo, url, guard, refused)? {
        conn.set_transport_options(opts);
    }
    let (map, _handshake) = conn
        .ref_map(
            gix::progress::Discard,
            gix::remote::ref_map::Options::default(),
        )
        .map_err(|e| git_err(url, "list refs", one_line(&format!("{e:#}"))))?;
    if map.remote_refs.len() as u64 > limits.max_refs {
        return Err(too_many(url, &limits));
    }
    let mut head = None;
    let mut names = Vec::with_capacity(map.remote_refs.len());
    for r in &map.remote_refs {
        match r {
            Ref::Symbolic {
                full_ref_name,
                target,
                ..
            }
            | Ref::Unborn {
                full_ref_name,
                target,
            } if full_ref_name == "HEAD" => {
                head = Some(target.to_str_lossy().into_owned());
            }
            _ => {}
        }
        // An unborn HEAD names a branch that does not exist yet: not a branch to list.
        if !matches!(r, Ref::Unborn { .. }) {
            names.push(r.unpack().0.to_str_lossy().into_owned());
        }
    }
    Ok(RefList::from_full_names(
        names.iter().map(String::as_str),
        head.as_deref(),
    ))
}

/// gix's alternate error format (the whole cause chain, e.g. the TLS verifier's reason) on one
/// line.
fn one_line(chain: &str) -> String {
    chain
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ")
}

/// gix's reqwest HTTP client with every response body counted: past `cap` bytes reads fail.
struct CappedHttp {
    inner: http::reqwest::Remote,
    read: Arc<AtomicU64>,
    cap: Arc<AtomicU64>,
}

impl CappedHttp {
    fn wrap<R>(&self, inner: R) -> CappedBody<R> {
        CappedBody {
            inner,
            read: self.read.clone(),
            cap: self.cap.clone(),
        }
    }
}

type Inner = http::reqwest::Remote;

impl Http for CappedHttp {
    type Headers = <Inner as Http>::Headers;
    type ResponseBody = CappedBody<<Inner as Http>::ResponseBody>;
    type PostBody = <Inner as Http>::PostBody;

    fn get(
        &mut self,
        url: &str,
        base_url: &str,
        headers: impl IntoIterator<Item = impl AsRef<str>>,
    ) -> gix::error::Result<GetResponse<Self::Headers, Self::ResponseBody>> {
        let r = self.inner.get(url, base_url, headers)?;
        Ok(GetResponse {
            headers: r.headers,
            body: self.wrap(r.body),
        })
    }

    fn post(
        &mut self,
        url: &str,
        base_url: &str,
        headers: impl IntoIterator<Item = impl AsRef<str>>,
        body: PostBodyDataKind,
    ) -> gix::error::Result<PostResponse<Self::Headers, Self::ResponseBody, Self::PostBody>> {
        let r = self.inner.post(url, base_url, headers, body)?;
        Ok(PostResponse {
            post_body: r.post_body,
            headers: r.headers,
            body: self.wrap(r.body),
        })
    }

    fn configure(&mut self, config: &dyn std::any::Any) -> gix::error::Result {
        self.inner.configure(config)
    }

    fn redirected_base_url(&self) -> Option<String> {
        self.inner.redirected_base_url()
    }
}

/// A response body whose bytes count against a shared cap.
struct CappedBody<R> {
    inner: R,
    read: Arc<AtomicU64>,
    cap: Arc<AtomicU64>,
}

impl<R> CappedBody<R> {
    fn check(&self) -> io::Result<()> {
        let cap = self.cap.load(Ordering::SeqCst);
        if self.read.load(Ordering::SeqCst) > cap {
            return Err(io::Error::other(format!(
                "ref listing larger than {cap} bytes ([fetch] max_ref_bytes)"
            )));
        }
        Ok(())
    }
}

impl<R: Read> Read for CappedBody<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.check()?;
        let n = self.inner.read(buf)?;
        self.read.fetch_add(n as u64, Ordering::SeqCst);
        Ok(n)
    }
}

impl<R: BufRead> BufRead for CappedBody<R> {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        self.check()?;
        self.inner.fill_buf()
    }

    fn consume(&mut self, amt: usize) {
        self.read.fetch_add(amt as u64, Ordering::SeqCst);
        self.inner.consume(amt);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_capped_body_fails_once_past_its_cap() {
        let read = Arc::new(AtomicU64::new(0));
        let mut body = CappedBody {
            inner: io::Cursor::new(vec![7u8; 100]),
            read: read.clone(),
            cap: Arc::new(AtomicU64::new(40)),
        };
        let mut buf = [0u8; 30];
        assert_eq!(body.read(&mut buf).unwrap(), 30);
        assert_eq!(
            body.read(&mut buf).unwrap(),
            30,
            "the read that crosses the cap"
        );
        let err = body.read(&mut buf).unwrap_err();
        assert!(err.to_string().contains("max_ref_bytes"), "{err}");
        assert_eq!(read.load(Ordering::SeqCst), 60);
    }
}
