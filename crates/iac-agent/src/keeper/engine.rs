//! The keeper's Docker engine client: the few calls it needs (list, inspect, start, restart,
//! follow events) as HTTP/1.1 over the engine's Unix socket, one connection per request. The
//! agent carries no HTTP client crate (it is copied into every app image and kept small), and
//! these calls need none: a request line, `Host`, `Connection: close`, and a body that is either
//! `Content-Length`, `chunked` or read to the end.

use std::path::PathBuf;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

/// The engine at `socket`.
#[derive(Debug, Clone)]
pub struct Engine {
    /// The engine's Unix socket (mounted into the keeper's container).
    pub socket: PathBuf,
}

/// An engine answer: status and the whole body.
#[derive(Debug)]
pub struct Reply {
    /// The HTTP status.
    pub status: u16,
    /// The body, de-chunked.
    pub body: Vec<u8>,
}

impl Reply {
    /// The body as JSON, or an error naming the request when the status is not 2xx/304 or the
    /// body is not JSON.
    pub fn json(self, what: &str) -> Result<serde_json::Value, String> {
        if !(200..300).contains(&self.status) {
            return Err(format!(
                "{what}: the engine answered {}: {}",
                self.status,
                String::from_utf8_lossy(&self.body).trim()
            ));
        }
        serde_json::from_slice(&self.body)
            .map_err(|e| format!("{what}: the engine's answer is not JSON ({e})"))
    }
}

/// A response body being read: by length, chunked, or to the end of the connection.
pub struct Body {
    reader: BufReader<UnixStream>,
    framing: Framing,
}

enum Framing {
    Length(usize),
    Chunked { left: usize, done: bool },
    Eof,
}

impl Engine {
    async fn send(&self, method: &str, path: &str) -> Result<(u16, Body), String> {
        let what = || format!("{method} {path} on {}", self.socket.display());
        let mut stream = UnixStream::connect(&self.socket)
            .await
            .map_err(|e| format!("{}: cannot connect to the engine: {e}", what()))?;
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: docker\r\nUser-Agent: iac-keeper\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
        );
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(|e| format!("{}: {e}", what()))?;
        let mut reader = BufReader::new(stream);
        let mut line = String::new();
        reader
            .read_line(&mut line)
            .await
            .map_err(|e| format!("{}: {e}", what()))?;
        let status = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse::<u16>().ok())
            .ok_or_else(|| format!("{}: not an HTTP status line: {line:?}", what()))?;
        let mut framing = Framing::Eof;
        loop {
            line.clear();
            let n = reader
                .read_line(&mut line)
                .await
                .map_err(|e| format!("{}: {e}", what()))?;
            let header = line.trim_end();
            if n == 0 || header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':') {
                let value = value.trim();
                if name.eq_ignore_ascii_case("content-length") {
                    let n = value
                        .parse()
                        .map_err(|_| format!("{}: bad Content-Length {value:?}", what()))?;
                    framing = Framing::Length(n);
                } else if name.eq_ignore_ascii_case("transfer-encoding")
                    && value.eq_ignore_ascii_case("chunked")
                {
                    framing = Framing::Chunked {
                        left: 0,
                        done: false,
                    };
                }
            }
        }
        if status == 204 || status == 304 {
            framing = Framing::Length(0);
        }
        Ok((status, Body { reader, framing }))
    }

    /// `method path` and the whole answer (bodies are capped at 16 MiB).
    pub async fn call(&self, method: &str, path: &str) -> Result<Reply, String> {
        let (status, mut body) = self.send(method, path).await?;
        let mut all = Vec::new();
        while let Some(piece) = body.next().await? {
            all.extend_from_slice(&piece);
            if all.len() > 16 << 20 {
                return Err(format!("{method} {path}: the answer exceeds 16 MiB"));
            }
        }
        Ok(Reply { status, body: all })
    }

    /// A streamed answer (`GET /events`): the status and the body, read piece by piece.
    pub async fn stream(&self, path: &str) -> Result<(u16, Body), String> {
        self.send("GET", path).await
    }
}

impl Body {
    /// The next piece of the body; `None` at its end.
    pub async fn next(&mut self) -> Result<Option<Vec<u8>>, String> {
        let io = |e: std::io::Error| format!("reading the engine's answer: {e}");
        match &mut self.framing {
            Framing::Length(0) => Ok(None),
            Framing::Length(left) => {
                let mut buf = vec![0u8; (*left).min(64 * 1024)];
                let n = self.reader.read(&mut buf).await.map_err(io)?;
                if n == 0 {
                    return Err("the engine closed the connection mid-answer".into());
                }
                *left -= n;
                buf.truncate(n);
                Ok(Some(buf))
            }
            Framing::Eof => {
                let mut buf = vec![0u8; 64 * 1024];
                let n = self.reader.read(&mut buf).await.map_err(io)?;
                if n == 0 {
                    return Ok(None);
                }
                buf.truncate(n);
                Ok(Some(buf))
            }
            Framing::Chunked { left, done } => {
                if *done {
                    return Ok(None);
                }
                if *left == 0 {
                    let mut line = String::new();
                    // The CRLF ending the previous chunk, then the size line.
                    loop {
                        line.clear();
                        if self.reader.read_line(&mut line).await.map_err(io)? == 0 {
                            return Err("the engine closed the connection mid-answer".into());
                        }
                        if !line.trim().is_empty() {
                            break;
                        }
                    }
                    let size = line.trim().split(';').next().unwrap_or_default();
                    let size = usize::from_str_radix(size, 16)
                        .map_err(|_| format!("a bad chunk size line {line:?}"))?;
                    if size == 0 {
                        *done = true;
                        return Ok(None);
                    }
                    *left = size;
                }
                let mut buf = vec![0u8; (*left).min(64 * 1024)];
                let n = self.reader.read(&mut buf).await.map_err(io)?;
                if n == 0 {
                    return Err("the engine closed the connection mid-chunk".into());
                }
                *left -= n;
                buf.truncate(n);
                Ok(Some(buf))
            }
        }
    }
}

/// `s` percent-encoded for a query string (everything but unreserved characters).
pub fn query_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A one-shot engine on a Unix socket answering with `raw`, returning what it was asked.
    async fn serve_once(raw: &'static [u8]) -> (Engine, tokio::task::JoinHandle<String>) {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("engine.sock");
        let listener = tokio::net::UnixListener::bind(&socket).unwrap();
        let task = tokio::spawn(async move {
            let _dir = dir;
            let (mut s, _) = listener.accept().await.unwrap();
            let mut req = vec![0u8; 4096];
            let n = s.read(&mut req).await.unwrap();
            s.write_all(raw).await.unwrap();
            String::from_utf8_lossy(&req[..n]).into_owned()
        });
        (Engine { socket }, task)
    }

    #[tokio::test]
    async fn chunked_and_sized_answers_are_read_whole() {
        let (e, asked) = serve_once(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n[1,2,\r\n3\r\n3]\n\r\n0\r\n\r\n",
        )
        .await;
        let r = e.call("GET", "/containers/json?all=1").await.unwrap();
        assert_eq!(r.json("list").unwrap(), serde_json::json!([1, 2, 3]));
        let asked = asked.await.unwrap();
        assert!(
            asked.starts_with("GET /containers/json?all=1 HTTP/1.1\r\n"),
            "{asked}"
        );

        let (e, _) = serve_once(
            b"HTTP/1.1 404 Not Found\r\nContent-Length: 27\r\n\r\n{\"message\":\"no such thing\"}",
        )
        .await;
        let err = e
            .call("GET", "/containers/x/json")
            .await
            .unwrap()
            .json("inspect x")
            .unwrap_err();
        assert!(
            err.contains("inspect x") && err.contains("404") && err.contains("no such thing"),
            "{err}"
        );

        let (e, _) = serve_once(b"HTTP/1.1 204 No Content\r\n\r\n").await;
        assert_eq!(
            e.call("POST", "/containers/x/start").await.unwrap().status,
            204
        );
    }

    #[tokio::test]
    async fn an_absent_engine_is_an_error_naming_the_socket() {
        let e = Engine {
            socket: "/nonexistent/engine.sock".into(),
        };
        let err = e.call("GET", "/_ping").await.unwrap_err();
        assert!(
            err.contains("/nonexistent/engine.sock") && err.contains("cannot connect"),
            "{err}"
        );
    }

    #[test]
    fn filters_are_escaped() {
        assert_eq!(
            query_escape(r#"{"a":["b=c"]}"#),
            "%7B%22a%22%3A%5B%22b%3Dc%22%5D%7D"
        );
    }
}
