//! Tarball backend: one HTTP GET of a forge archive, streamed chunk by chunk from reqwest into a
//! blocking task that gunzips and untars it through [`extract_tar_gz`] — the archive is never
//! held in memory whole (at most a bounded queue of chunks).

use std::io::{self, Read};
use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use iac_core::FetchError;

use super::extract::{Extracted, Limits, extract_tar_gz};

/// Downloads and safely extracts `.tar.gz` archives.
#[derive(Debug, Clone)]
pub struct TarballFetcher {
    client: reqwest::Client,
    limits: Limits,
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
    pub fn new(timeout: Duration, limits: Limits) -> Result<Self, FetchError> {
        let client = reqwest::Client::builder()
            .connect_timeout(timeout)
            .read_timeout(timeout)
            .user_agent(concat!("iac/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| FetchError::Http {
                url: String::new(),
                status: None,
                message: chain(&e),
            })?;
        Ok(TarballFetcher { client, limits })
    }

    /// GETs `url` (with `header`, e.g. a token) and extracts it into `staging`, an existing empty
    /// directory. HTTP failures are [`FetchError::Http`] with the status when there was one.
    pub async fn download(
        &self,
        url: &str,
        header: Option<(&'static str, String)>,
        staging: &Path,
    ) -> Result<Extracted, FetchError> {
        let mut req = self.client.get(url);
        if let Some((k, v)) = header {
            req = req.header(k, v);
        }
        let resp = req.send().await.map_err(|e| FetchError::Http {
            url: url.to_string(),
            status: None,
            message: chain(&e),
        })?;
        let status = resp.status();
        if !status.is_success() {
            return Err(FetchError::Http {
                url: url.to_string(),
                status: Some(status.as_u16()),
                message: format!("HTTP {status}; expected 200 with a .tar.gz body"),
            });
        }
        let (tx, rx) = tokio::sync::mpsc::channel::<io::Result<Bytes>>(16);
        let (dir, limits, label) = (staging.to_path_buf(), self.limits, url.to_string());
        let extract = tokio::task::spawn_blocking(move || {
            extract_tar_gz(
                ChannelReader {
                    rx,
                    buf: Bytes::new(),
                },
                &dir,
                limits,
                &label,
            )
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
