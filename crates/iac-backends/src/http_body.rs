//! Bounded reading of HTTP response bodies a server fills (Supabase's JWKS, user and token
//! answers): [`read_capped`] refuses a `Content-Length` over the cap before reading and stops
//! reading — dropping the connection — as soon as the chunks received pass it, so a hostile or
//! broken server can make iac hold at most the cap plus one chunk, never the whole body.

use std::fmt;

/// Why a body was not read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BodyError {
    /// The body is (or announced itself as) larger than the cap.
    TooLarge {
        /// The cap, in bytes.
        max: usize,
    },
    /// The transfer failed (the reqwest error, without the URL).
    Read(String),
}

impl fmt::Display for BodyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BodyError::TooLarge { max } => {
                write!(f, "response body larger than {max} bytes")
            }
            BodyError::Read(e) => write!(f, "reading the response body: {e}"),
        }
    }
}

impl std::error::Error for BodyError {}

/// The whole body of `resp`, at most `max` bytes.
pub async fn read_capped(mut resp: reqwest::Response, max: usize) -> Result<Vec<u8>, BodyError> {
    if resp.content_length().is_some_and(|n| n > max as u64) {
        return Err(BodyError::TooLarge { max });
    }
    let mut out = Vec::new();
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| BodyError::Read(e.without_url().to_string()))?
    {
        if out.len() + chunk.len() > max {
            return Err(BodyError::TooLarge { max });
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A server answering every request with an endless chunked body (or one that announces
    /// `length` bytes and then sends them without end), counting what it managed to send.
    async fn endless(announce: Option<u64>) -> (String, Arc<AtomicU64>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let sent = Arc::new(AtomicU64::new(0));
        let counter = sent.clone();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let counter = counter.clone();
                tokio::spawn(async move {
                    let mut req = [0u8; 4096];
                    let _ = s.read(&mut req).await;
                    let head = match announce {
                        Some(n) => format!("HTTP/1.1 200 OK\r\ncontent-length: {n}\r\n\r\n"),
                        None => "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n".into(),
                    };
                    if s.write_all(head.as_bytes()).await.is_err() {
                        return;
                    }
                    let block = vec![b'x'; 64 * 1024];
                    let mut chunk = format!("{:x}\r\n", block.len()).into_bytes();
                    chunk.extend_from_slice(&block);
                    chunk.extend_from_slice(b"\r\n");
                    let piece = if announce.is_some() { &block } else { &chunk };
                    // Up to 1 GiB; a reader that does not stop would hold all of it.
                    for _ in 0..(1 << 14) {
                        if s.write_all(piece).await.is_err() {
                            return;
                        }
                        counter.fetch_add(piece.len() as u64, Ordering::SeqCst);
                    }
                });
            }
        });
        (format!("http://{addr}/"), sent)
    }

    #[tokio::test]
    async fn an_endless_body_is_cut_at_the_cap_and_the_connection_dropped() {
        let (url, sent) = endless(None).await;
        let resp = reqwest::get(&url).await.unwrap();
        let got = tokio::time::timeout(
            std::time::Duration::from_secs(30),
            read_capped(resp, 256 * 1024),
        )
        .await
        .expect("the read stops at the cap");
        assert_eq!(got, Err(BodyError::TooLarge { max: 256 * 1024 }));
        assert!(
            got.unwrap_err()
                .to_string()
                .contains("larger than 262144 bytes")
        );
        // The server could send at most what the socket buffers hold after the reader left.
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        let sent = sent.load(Ordering::SeqCst);
        assert!(sent < 64 << 20, "the server sent {sent} bytes");
    }

    #[tokio::test]
    async fn an_announced_length_over_the_cap_is_refused_before_reading() {
        let (url, _) = endless(Some(1 << 30)).await;
        let resp = reqwest::get(&url).await.unwrap();
        assert_eq!(
            read_capped(resp, 1024).await,
            Err(BodyError::TooLarge { max: 1024 })
        );
    }

    #[tokio::test]
    async fn a_body_within_the_cap_is_read_whole() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut req = [0u8; 4096];
            let _ = s.read(&mut req).await;
            s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\nconnection: close\r\n\r\nhello")
                .await
                .unwrap();
        });
        let resp = reqwest::get(format!("http://{addr}/")).await.unwrap();
        assert_eq!(read_capped(resp, 5).await.unwrap(), b"hello");
    }
}
