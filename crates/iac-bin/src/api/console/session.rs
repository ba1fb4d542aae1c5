//! Console sessions: the server-side store behind the `iac_session` cookie, the cookie itself
//! (HttpOnly, SameSite=Strict, Secure when `[serve] public_origin` is https) and the `Origin`
//! check of state-changing requests.
//!
//! The cookie holds only an opaque, random session id (244 bits from the OS generator); the
//! Supabase access and refresh tokens stay in this process's memory and never reach the browser,
//! a log line or a URL. A stolen cookie is therefore worth one session, which sign-out, expiry
//! of the refresh token or a restart of `iac serve` ends. Sessions are in memory only: after a
//! restart people sign in again.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::http::{HeaderMap, HeaderValue, Method, header};

/// The cookie's name over plain HTTP.
pub const COOKIE: &str = "iac_session";
/// Its name over TLS: a `__Host-` cookie is one the browser takes only from this very host, with
/// `Secure`, `Path=/` and no `Domain`, so an app served on a sibling subdomain cannot plant its
/// own session in the console (login CSRF).
pub const SECURE_COOKIE: &str = "__Host-iac_session";

/// The session cookie's name: [`SECURE_COOKIE`] over TLS, else [`COOKIE`].
pub fn cookie_name(secure: bool) -> &'static str {
    if secure { SECURE_COOKIE } else { COOKIE }
}
/// Sessions kept at most; the least recently used goes first.
const MAX_SESSIONS: usize = 10_000;
/// A session unused this long is forgotten.
const IDLE: Duration = Duration::from_secs(12 * 3600);
/// Refresh the access token when it expires within this.
pub const REFRESH_BEFORE: Duration = Duration::from_secs(60);

/// The tokens of one signed-in browser. Never logged (`Debug` is not derived).
pub struct Tokens {
    /// The access token (a Supabase JWT), verified on every request.
    pub access: String,
    /// Absent for a pasted access token: the session ends with the token.
    pub refresh: Option<String>,
    /// When `access` expires (seconds since the epoch); `None`: unknown (opaque key).
    pub expires_at: Option<u64>,
}

impl Tokens {
    /// Whether the access token expires within `REFRESH_BEFORE` of `now` (seconds).
    pub fn expiring(&self, now: u64) -> bool {
        self.expires_at
            .is_some_and(|e| e <= now + REFRESH_BEFORE.as_secs())
    }
}

struct Entry {
    tokens: Arc<tokio::sync::Mutex<Tokens>>,
    last_used: Instant,
}

/// The sessions of this process.
#[derive(Clone, Default)]
pub struct SessionStore {
    inner: Arc<Mutex<HashMap<String, Entry>>>,
}

impl SessionStore {
    /// Stores `tokens` under a new random id and returns the id (the cookie value).
    pub fn create(&self, tokens: Tokens) -> String {
        let id = new_id();
        let mut map = self.inner.lock().expect("session store poisoned");
        let now = Instant::now();
        map.retain(|_, e| now.duration_since(e.last_used) < IDLE);
        if map.len() >= MAX_SESSIONS
            && let Some(oldest) = map
                .iter()
                .min_by_key(|(_, e)| e.last_used)
                .map(|(k, _)| k.clone())
        {
            map.remove(&oldest);
        }
        map.insert(
            id.clone(),
            Entry {
                tokens: Arc::new(tokio::sync::Mutex::new(tokens)),
                last_used: now,
            },
        );
        id
    }

    /// The tokens of session `id`, if it exists and is not idle-expired.
    pub fn get(&self, id: &str) -> Option<Arc<tokio::sync::Mutex<Tokens>>> {
        let mut map = self.inner.lock().expect("session store poisoned");
        let now = Instant::now();
        let e = map.get_mut(id)?;
        if now.duration_since(e.last_used) >= IDLE {
            map.remove(id);
            return None;
        }
        e.last_used = now;
        Some(e.tokens.clone())
    }

    /// Forgets session `id`.
    pub fn remove(&self, id: &str) {
        self.inner
            .lock()
            .expect("session store poisoned")
            .remove(id);
    }
}

/// 244 random bits (two v4 UUIDs, from the OS generator) as 64 hex digits.
fn new_id() -> String {
    let a = uuid::Uuid::new_v4();
    let b = uuid::Uuid::new_v4();
    format!("{}{}", a.simple(), b.simple())
}

/// Seconds since the epoch.
pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The session id in the request's `Cookie` headers, if any (a well-formed one: 64 hex digits,
/// under [`cookie_name`]`(secure)` only).
pub fn cookie_id(headers: &HeaderMap, secure: bool) -> Option<String> {
    let name = cookie_name(secure);
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim().to_string())
        .filter(|v| v.len() == 64 && v.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// `Set-Cookie` for session `id` (`secure` when the console is served over TLS).
pub fn set_cookie(id: &str, secure: bool) -> HeaderValue {
    let v = format!(
        "{}={id}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{}",
        cookie_name(secure),
        IDLE.as_secs(),
        if secure { "; Secure" } else { "" }
    );
    HeaderValue::from_str(&v).expect("hex id is a header value")
}

/// `Set-Cookie` that deletes the session cookie.
pub fn clear_cookie(secure: bool) -> HeaderValue {
    let v = format!(
        "{}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0{}",
        cookie_name(secure),
        if secure { "; Secure" } else { "" }
    );
    HeaderValue::from_str(&v).expect("static header value")
}

/// Whether `method` changes state (everything but GET, HEAD, OPTIONS).
pub fn state_changing(method: &Method) -> bool {
    !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// Checks the `Origin` of a state-changing, cookie-authenticated request: it must be
/// `public_origin` when configured, else `http://<Host>`. The error is the message of the 403.
pub fn check_origin(headers: &HeaderMap, public_origin: Option<&str>) -> Result<(), String> {
    let expected = match public_origin {
        Some(o) => o.trim_end_matches('/').to_string(),
        None => {
            let host = headers
                .get(header::HOST)
                .and_then(|v| v.to_str().ok())
                .ok_or("the request has no Host header, so its Origin cannot be checked")?;
            format!("http://{host}")
        }
    };
    let origin = headers
        .get(header::ORIGIN)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| {
            format!("this request changes state with the console's session cookie but has no Origin header; expected Origin: {expected}")
        })?;
    if origin.eq_ignore_ascii_case(&expected) {
        Ok(())
    } else {
        Err(format!(
            "Origin {origin:?} does not match this console ({expected}); a request that changes state with the session cookie must come from the console's own pages (set [serve] public_origin when it is served through a proxy)"
        ))
    }
}

/// Whether a request on the Unix socket may go on. The socket's callers are the operator (peer
/// uid), with no cookie or token, so a browser pointed at it — the end of an `ssh -L` tunnel, the
/// console's documented way in — must not be drivable by another site: a cross-site form post
/// (CSRF) or a page whose name was rebound to 127.0.0.1 (DNS rebinding) would act as the operator.
/// So a request that carries a browser's marks (`Origin`, `Sec-Fetch-Site`, `Sec-Fetch-Mode`)
/// needs a loopback `Host` (`localhost`, `127.0.0.1`, `[::1]`, any port) or `[serve]
/// public_origin`'s, and an `Origin`, when it has one, equal to `http://<Host>` or that origin.
/// Clients that are not browsers (the CLI, curl) send none of those marks and are not affected.
pub fn unix_browser_ok(headers: &HeaderMap, public_origin: Option<&str>) -> Result<(), String> {
    let from_browser = [header::ORIGIN.as_str(), "sec-fetch-site", "sec-fetch-mode"]
        .iter()
        .any(|h| headers.contains_key(*h));
    if !from_browser {
        return Ok(());
    }
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .ok_or("a browser request on the Unix socket without a Host header")?;
    let name = if host.starts_with('[') {
        host.split_inclusive(']').next().unwrap_or(host)
    } else {
        host.split(':').next().unwrap_or(host)
    };
    let public_host = public_origin
        .and_then(|o| o.split_once("://"))
        .map(|(_, h)| h);
    let loopback = matches!(
        name.to_ascii_lowercase().as_str(),
        "localhost" | "127.0.0.1" | "[::1]"
    );
    if !loopback && !public_host.is_some_and(|p| p.eq_ignore_ascii_case(host)) {
        return Err(format!(
            "a browser request on the Unix socket for Host {host:?}; expected localhost, 127.0.0.1 or [::1] (the end of an ssh tunnel) or [serve] public_origin's host: any other name is how a DNS-rebinding page would reach the operator's socket"
        ));
    }
    if let Some(origin) = headers.get(header::ORIGIN) {
        let origin = origin.to_str().unwrap_or("");
        let own = format!("http://{host}");
        if !(origin.eq_ignore_ascii_case(&own)
            || public_origin.is_some_and(|p| origin.eq_ignore_ascii_case(p)))
        {
            return Err(format!(
                "Origin {origin:?} does not match this console ({own}): a page of another site cannot act on the operator's Unix socket"
            ));
        }
    }
    Ok(())
}

/// Checks `[serve] public_origin`: `http(s)://host[:port]`, no path, query or user info.
pub fn validate_public_origin(o: &str) -> Result<(), String> {
    let (scheme, rest) = o
        .split_once("://")
        .ok_or_else(|| format!("public_origin {o:?}: expected http(s)://HOST[:PORT]"))?;
    if !matches!(scheme, "http" | "https")
        || rest.is_empty()
        || rest.contains(['/', '?', '#', '@', ' '])
    {
        return Err(format!(
            "public_origin {o:?}: expected http(s)://HOST[:PORT] without a path, e.g. https://iac.example.com"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn a_browser_on_the_unix_socket_must_be_the_operators_own_page() {
        // Not a browser (the CLI, curl): whatever the Host.
        assert!(unix_browser_ok(&headers(&[("host", "iac")]), None).is_ok());
        // The console through `ssh -L 8080:/run/iac.sock`.
        for (host, origin) in [
            ("localhost:8080", "http://localhost:8080"),
            ("127.0.0.1:8080", "http://127.0.0.1:8080"),
            ("[::1]:8080", "http://[::1]:8080"),
        ] {
            let h = headers(&[
                ("host", host),
                ("origin", origin),
                ("sec-fetch-site", "same-origin"),
            ]);
            assert!(unix_browser_ok(&h, None).is_ok(), "{host}");
        }
        let get = headers(&[("host", "localhost:8080"), ("sec-fetch-mode", "navigate")]);
        assert!(unix_browser_ok(&get, None).is_ok());
        // Another site's form posted at the tunnel (CSRF).
        let csrf = headers(&[
            ("host", "localhost:8080"),
            ("origin", "https://evil.example"),
        ]);
        let e = unix_browser_ok(&csrf, None).unwrap_err();
        assert!(
            e.contains("evil.example") && e.contains("another site"),
            "{e}"
        );
        // A rebound name: same-origin for the browser, so no Origin on a GET.
        let rebound = headers(&[
            ("host", "evil.example:8080"),
            ("sec-fetch-site", "same-origin"),
        ]);
        let e = unix_browser_ok(&rebound, None).unwrap_err();
        assert!(e.contains("DNS-rebinding"), "{e}");
        assert!(
            unix_browser_ok(
                &headers(&[
                    ("host", "localhost.evil.example"),
                    ("sec-fetch-mode", "cors")
                ]),
                None
            )
            .is_err()
        );
        // The public origin's host is the operator's too.
        let public = headers(&[
            ("host", "iac.example.com"),
            ("origin", "https://iac.example.com"),
        ]);
        assert!(unix_browser_ok(&public, Some("https://iac.example.com")).is_ok());
        assert!(unix_browser_ok(&public, None).is_err());
    }

    #[test]
    fn cookie_is_found_among_others_and_must_be_well_formed() {
        let id = "ab".repeat(32);
        let h = headers(&[("cookie", &format!("a=b; {COOKIE}={id}; c=d"))]);
        assert_eq!(cookie_id(&h, false).as_deref(), Some(id.as_str()));
        assert_eq!(
            cookie_id(&h, true),
            None,
            "over TLS only the __Host- cookie counts"
        );
        let tls = headers(&[(
            "cookie",
            &format!("{COOKIE}={}; {SECURE_COOKIE}={id}", "1".repeat(64)),
        )]);
        assert_eq!(cookie_id(&tls, true).as_deref(), Some(id.as_str()));
        let h = headers(&[("cookie", &format!("{COOKIE}=short"))]);
        assert_eq!(cookie_id(&h, false), None);
        assert_eq!(cookie_id(&HeaderMap::new(), false), None);
    }

    #[test]
    fn the_cookie_is_http_only_strict_and_secure_only_over_tls() {
        let c = set_cookie(&"0".repeat(64), false);
        let c = c.to_str().unwrap();
        assert!(
            c.contains("HttpOnly") && c.contains("SameSite=Strict"),
            "{c}"
        );
        assert!(!c.contains("Secure"), "{c}");
        let tls = set_cookie(&"0".repeat(64), true);
        let tls = tls.to_str().unwrap();
        assert!(
            tls.starts_with("__Host-iac_session=")
                && tls.contains("; Path=/;")
                && tls.ends_with("; Secure")
                && !tls.contains("Domain"),
            "{tls}"
        );
        assert!(
            clear_cookie(true)
                .to_str()
                .unwrap()
                .starts_with("__Host-iac_session=;")
        );
        assert!(clear_cookie(false).to_str().unwrap().contains("Max-Age=0"));
    }

    #[test]
    fn origin_must_match_host_or_public_origin() {
        let h = headers(&[
            ("host", "127.0.0.1:8080"),
            ("origin", "http://127.0.0.1:8080"),
        ]);
        assert_eq!(check_origin(&h, None), Ok(()));
        let h = headers(&[
            ("host", "127.0.0.1:8080"),
            ("origin", "http://evil.example"),
        ]);
        let e = check_origin(&h, None).unwrap_err();
        assert!(
            e.contains("evil.example") && e.contains("does not match"),
            "{e}"
        );
        let h = headers(&[("host", "127.0.0.1:8080")]);
        assert!(check_origin(&h, None).unwrap_err().contains("no Origin"));
        let h = headers(&[
            ("host", "internal:8080"),
            ("origin", "https://iac.example.com"),
        ]);
        assert_eq!(check_origin(&h, Some("https://iac.example.com/")), Ok(()));
        assert!(check_origin(&h, None).is_err());
    }

    #[test]
    fn public_origin_is_scheme_host_port_only() {
        assert!(validate_public_origin("https://iac.example.com").is_ok());
        assert!(validate_public_origin("http://127.0.0.1:8080").is_ok());
        for bad in [
            "iac.example.com",
            "ftp://x",
            "https://x/path",
            "https://u@x",
            "https://",
        ] {
            assert!(validate_public_origin(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn sessions_are_created_found_and_removed() {
        let s = SessionStore::default();
        let id = s.create(Tokens {
            access: "a".into(),
            refresh: None,
            expires_at: Some(100),
        });
        assert_eq!(id.len(), 64);
        assert!(s.get(&id).is_some());
        assert!(s.get(&"f".repeat(64)).is_none());
        s.remove(&id);
        assert!(s.get(&id).is_none());
        let t = Tokens {
            access: String::new(),
            refresh: None,
            expires_at: Some(1000),
        };
        assert!(t.expiring(950) && !t.expiring(900));
    }
}
