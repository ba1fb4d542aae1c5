//! Tarball backend: one HTTP GET of a forge archive, streamed chunk by chunk from reqwest into a
//! blocking task that gunzips and untars it through [`extract_tar_gz`] — the archive is never
//! held in memory whole (at most a bounded queue of chunks).
//!
//! Redirects are followed here, not by reqwest (at most [`MAX_REDIRECTS`]): the credential
//! header (GitLab's `PRIVATE-TOKEN`, `Authorization`) is sent only to the origin (scheme, host
//! and port) of the URL it was configured for, never to the host a redirect points at.
//!
//! A guarded fetcher (API-originated fetches, see `guard.rs`) checks every hop's URL before its
//! request and resolves names through the guard's filtering resolver, never through a proxy.
//!
//! The blocking extraction task owns the staging directory: when the fetch is abandoned (its
//! deadline passed) the task sees the end of the stream, fails, and removes the directory
//! itself, so nothing is left half-written.

use std::io::{self, Read};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use iac_core::FetchError;

use super::extract::{Extracted, Limits, extract_tar_gz};
use super::guard::{NetGuard, is_refusal};

/// Downloads and safely extracts `.tar.gz` archives.
#[derive(Debug, Clone)]
pub struct TarballFetcher {
    client: reqwest::Client,
    limits: Limits,
    guard: Option<Arc<NetGuard>>,
}

/// An error's message with its whole `source()` chain (reqwest hides the cause otherwise).
pub(crate) fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let m = c.to_string();
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        cur = c.source();
    }
    s
}

impl TarballFetcher {
    /// `timeout` bounds connecting and each wait for more body bytes, not the whole download.
    /// With a `guard`, every hop's URL is checked before its request and names are resolved
    /// through the guard's filtering resolver, without any proxy (see `guard.rs`). `roots` are
    /// trusted in addition to the platform's (`[fetch] ca_bundle`).
    pub fn new(
        timeout: Duration,
        limits: Limits,
        guard: Option<Arc<NetGuard>>,
        roots: Vec<reqwest::Certificate>,
    ) -> Result<Self, FetchError> {
        let mut builder = reqwest::Client::builder()
            .tls_certs_merge(roots)
            .connect_timeout(timeout)
            .read_timeout(timeout)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("iac/", env!("CARGO_PKG_VERSION")));
        if let Some(g) = &guard {
            builder = g.configure_async(builder);
        }
        let client = builder.build().map_err(|e| FetchError::Http {
            url: String::new(),
            status: None,
            message: chain(&e),
        })?;
        Ok(TarballFetcher {
            client,
            limits,
            guard,
        })
    }

    /// GETs `url` (with `header`, e.g. a token, sent to `url`'s origin only) and extracts it
    /// into `staging`, an empty directory that the extraction task owns from now on: it is handed
    /// back with the result, and removed by the task on failure. HTTP failures are
    /// [`FetchError::Http`] with the status when there was one.
    pub async fn download(
        &self,
        url: &str,
        header: Option<(&'static str, String)>,
        staging: iac_core::fsutil::OwnedTempDir,
    ) -> Result<(Extracted, iac_core::fsutil::OwnedTempDir), FetchError> {
        let resp = self.get_following_redirects(url, header).await?;
        let status = resp.status();
        if !status.is_success() {
            return Err(FetchError::Http {
                url: url.to_string(),
                status: Some(status.as_u16()),
                message: format!("HTTP {status}; expected 200 with a .tar.gz body"),
            });
        }
        let (tx, rx) = tokio::sync::mpsc::channel::<io::Result<Bytes>>(16);
        let (limits, label) = (self.limits, url.to_string());
        let extract = tokio::task::spawn_blocking(move || {
            let reader = ChannelReader {
                rx,
                buf: Bytes::new(),
            };
            // On error `staging` is dropped (removed) here, by the task that wrote into it.
            extract_tar_gz(reader, staging.path(), limits, &label).map(|x| (x, staging))
        });
        let mut body = resp.bytes_stream();
        while let Some(chunk) = body.next().await {
            let item = chunk.map_err(|e| io::Error::other(chain(&e)));
            let failed = item.is_err();
            // A closed channel means extraction stopped (error or done): stop downloading.
            if tx.send(item).await.is_err() || failed {
                break;
            }
        }
        drop(tx);
        extract.await.map_err(|e| FetchError::Http {
            url: url.to_string(),
            status: None,
            message: format!("extraction task failed: {e}"),
        })?
    }

    /// Sends the GET and follows up to [`MAX_REDIRECTS`] redirects, attaching `header` only
    /// while the request goes to the origin of `url`.
    async fn get_following_redirects(
        &self,
        url: &str,
        header: Option<(&'static str, String)>,
    ) -> Result<reqwest::Response, FetchError> {
        let http_err = |message: String| FetchError::Http {
            url: url.to_string(),
            status: None,
            message,
        };
        let first = reqwest::Url::parse(url)
            .map_err(|e| http_err(format!("invalid URL ({e}); expected http(s)://HOST/PATH")))?;
        let mut current = first.clone();
        for hop in 0..=MAX_REDIRECTS {
            // Before any connection: an IP literal never reaches the guard's resolver.
            if let Some(g) = &self.guard {
                g.check_url(current.as_str())?;
            }
            let mut req = self.client.get(current.clone());
            if let Some((k, v)) = &header
                && same_origin(&first, &current)
            {
                req = req.header(*k, v);
            }
            let resp = req.send().await.map_err(|e| {
                let message = chain(&e);
                if is_refusal(&message) {
                    FetchError::Refused {
                        slug: current.to_string(),
                    }
                } else {
                    http_err(message)
                }
            })?;
            if !resp.status().is_redirection() {
                return Ok(resp);
            }
            let status = resp.status();
            let location = resp
                .headers()
                .get(reqwest::header::LOCATION)
                .and_then(|l| l.to_str().ok())
                .ok_or_else(|| {
                    http_err(format!(
                        "HTTP {status} from {current} without a usable Location header"
                    ))
                })?;
            let next = current.join(location).map_err(|e| {
                http_err(format!(
                    "HTTP {status} from {current}: invalid Location {location:?} ({e})"
                ))
            })?;
            if !matches!(next.scheme(), "http" | "https") {
                return Err(http_err(format!(
                    "redirected to {next}; expected an http(s) URL"
                )));
            }
            if hop == MAX_REDIRECTS {
                break;
            }
            tracing::debug!(from = %current, to = %next, "following redirect");
            current = next;
        }
        Err(http_err(format!(
            "more than {MAX_REDIRECTS} redirects; expected the archive"
        )))
    }
}

/// Most redirects followed for one archive.
pub const MAX_REDIRECTS: usize = 10;

/// Same scheme, host and port: the only destinations that get the credential header.
fn same_origin(a: &reqwest::Url, b: &reqwest::Url) -> bool {
    a.scheme() == b.scheme()
        && a.host_str() == b.host_str()
        && a.port_or_known_default() == b.port_or_known_default()
}

/// Blocking `Read` over chunks sent from the async side.
struct ChannelReader {
    rx: tokio::sync::mpsc::Receiver<io::Result<Bytes>>,
    buf: Bytes,
}

impl Read for ChannelReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.buf.is_empty() {
            match self.rx.blocking_recv() {
                None => return Ok(0),
                Some(Err(e)) => return Err(e),
                Some(Ok(b)) => self.buf = b,
            }
        }
        let n = out.len().min(self.buf.len());
        out[..n].copy_from_slice(&self.buf[..n]);
        let _ = self.buf.split_to(n);
        Ok(n)
    }
}
