//! The keeper's Docker engine client: the few calls it needs (list, inspect, start, restart,
//! follow events) as HTTP/1.1 over the engine's Unix socket, one connection per request. The
//! agent carries no HTTP client crate (it is copied into every app image and kept small), and
//! these calls need none: a request line, `Host`, `Connection: close`, and a body that is either
//! `Content-Length`, `chunked` or read to the end.
//!
//! Every call is bounded by [`Engine::timeout`] ([`CALL_TIMEOUT`] by default): a wedged engine
//! (a hung daemon, a socket that accepts and never answers) makes the call fail, the keeper logs
//! it and backs off, instead of hanging for good. A streamed answer (the event stream) is bounded
//! up to its headers; the stream itself is long-lived by design.

use std::path::PathBuf;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

/// How long one engine call may take by default (a restart waits up to 10 s for the app to stop
/// before this).
pub const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// The engine at `socket`.
#[derive(Debug, Clone)]
pub struct Engine {
    /// The engine's Unix socket (mounted into the keeper's container).
    pub socket: PathBuf,
    /// The longest one call (connect, request, the whole answer) may take.
    pub timeout: Duration,
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

    /// The engine at `socket`, calls bounded by [`CALL_TIMEOUT`].
    pub fn new(socket: PathBuf) -> Engine {
        Engine {
            socket,
            timeout: CALL_TIMEOUT,
        }
    }

    fn timed_out(&self, method: &str, path: &str) -> String {
        format!(
            "{method} {path} on {}: no answer within {} (the engine is wedged or overloaded)",
            self.socket.display(),
            humantime::format_duration(self.timeout)
        )
    }

    /// `method path` and the whole answer (bodies are capped at 16 MiB), within
    /// [`Engine::timeout`].
    pub async fn call(&self, method: &str, path: &str) -> Result<Reply, String> {
        let whole = async {
            let (status, mut body) = self.send(method, path).await?;
            let mut all = Vec::new();
            while let Some(piece) = body.next().await? {
                all.extend_from_slice(&piece);
                if all.len() > 16 << 20 {
                    return Err(format!("{method} {path}: the answer exceeds 16 MiB"));
                }
            }
            Ok(Reply { status, body: all })
        };
        tokio::time::timeout(self.timeout, whole)
            .await
            .map_err(|_| self.timed_out(method, path))?
    }

    /// A streamed answer (`GET /events`): the status and the body, read piece by piece. The
    /// status and headers must come within [`Engine::timeout`]; the body may take forever.
    pub async fn stream(&self, path: &str) -> Result<(u16, Body), String> {
        tokio::time::timeout(self.timeout, self.send("GET", path))
            .await
            .map_err(|_| self.timed_out("GET", path))?
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

/// The text of a container log answer (`GET /containers/{id}/logs`): without a TTY the engine
/// multiplexes stdout and stderr in frames (`[stream, 0, 0, 0, size as u32 big-endian]` then
/// `size` bytes); with one it sends the bytes as they are. Frames are unwrapped; anything that
/// is not a frame is taken as text.
pub fn demux_log(raw: &[u8]) -> String {
    let mut out = Vec::with_capacity(raw.len());
    let mut rest = raw;
    while rest.len() >= 8 && rest[0] <= 2 && rest[1..4] == [0, 0, 0] {
        let size = u32::from_be_bytes([rest[4], rest[5], rest[6], rest[7]]) as usize;
        let end = (8 + size).min(rest.len());
        out.extend_from_slice(&rest[8..end]);
        rest = &rest[end..];
    }
    out.extend_from_slice(rest);
    String::from_utf8_lossy(&out).into_owned()
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
        (Engine::new(socket), task)
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
        let e = Engine::new("/nonexistent/engine.sock".into());
        let err = e.call("GET", "/_ping").await.unwrap_err();
        assert!(
            err.contains("/nonexistent/engine.sock") && err.contains("cannot connect"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn an_engine_that_never_answers_times_out() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("engine.sock");
        let listener = tokio::net::UnixListener::bind(&socket).unwrap();
        // Accepts, reads the request, never answers.
        let hold = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut req = vec![0u8; 4096];
            let _ = s.read(&mut req).await;
            let (mut s2, _) = listener.accept().await.unwrap();
            let _ = s2.read(&mut req).await;
            tokio::time::sleep(Duration::from_secs(3600)).await;
            drop((s, s2));
        });
        let e = Engine {
            socket,
            timeout: Duration::from_millis(200),
        };
        let t = std::time::Instant::now();
        let err = e.call("POST", "/containers/x/start").await.unwrap_err();
        assert!(
            err.contains("POST /containers/x/start") && err.contains("no answer within 200ms"),
            "{err}"
        );
        let err = e.stream("/events").await.err().expect("times out");
        assert!(err.contains("GET /events"), "{err}");
        assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
        hold.abort();
    }

    #[test]
    fn multiplexed_and_raw_logs_read_as_text() {
        let mut framed = vec![2, 0, 0, 0, 0, 0, 0, 6];
        framed.extend_from_slice(b"line1\n");
        framed.extend_from_slice(&[1, 0, 0, 0, 0, 0, 0, 3]);
        framed.extend_from_slice(b"ok\n");
        assert_eq!(demux_log(&framed), "line1\nok\n");
        assert_eq!(demux_log(b"plain tty text\n"), "plain tty text\n");
        // A frame cut short keeps what arrived.
        assert_eq!(demux_log(&[2, 0, 0, 0, 0, 0, 0, 9, b'a', b'b']), "ab");
        assert_eq!(demux_log(b""), "");
    }

    #[test]
    fn filters_are_escaped() {
        assert_eq!(
            query_escape(r#"{"a":["b=c"]}"#),
            "%7B%22a%22%3A%5B%22b%3Dc%22%5D%7D"
        );
    }
}
