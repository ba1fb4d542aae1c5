//! Console sessions: the server-side store behind the `iac_session` cookie, the cookie itself
//! (HttpOnly, SameSite=Strict, Secure when `[serve] public_origin` is https) and the `Origin`
//! check of state-changing requests.
//!
//! The cookie holds only an opaque, random session id (244 bits from the OS generator); the
//! Supabase tokens never reach the browser, a log line or a URL. Sessions in use are kept in
//! this process's memory and, so that a restart of `iac serve` signs nobody out, in the
//! deployment history's database ([`iac_core::history::SessionStore`]: SQLite under the state
//! dir, or PostgreSQL): a hash of the id, the principal, the expiry and the refresh token (or a
//! pasted access token) sealed with a key derived from the id ([`super::sealed`]). A session
//! unknown to memory is looked up there and comes back with a fresh access token. Only sign-in
//! inserts a row; a refresh and the expiry slide of a session in use update it, and only while
//! it is there, so sign-out (which deletes the row) cannot be undone by a refresh in flight or
//! by another control plane: the session is then dropped from memory too. Expired rows are
//! pruned when a session starts and when `iac serve` starts.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::http::{HeaderMap, HeaderValue, Method, header};
use iac_core::history::{SessionStore as Rows, StoredSession};

use super::sealed::{self, Credential};

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
/// Sessions kept in memory at most; the least recently used goes first (it stays in the store).
const MAX_SESSIONS: usize = 10_000;
/// A session unused this long is forgotten (in memory, and its stored row expires).
const IDLE: Duration = Duration::from_secs(12 * 3600);
/// A session in use has its stored expiry slid forward at most this often.
const TOUCH: Duration = Duration::from_secs(10 * 60);
/// Refresh the access token when it expires within this.
pub const REFRESH_BEFORE: Duration = Duration::from_secs(60);

/// The tokens of one signed-in browser. Never logged (`Debug` is not derived).
pub struct Tokens {
    /// The access token (a Supabase JWT), verified on every request. Empty for a session
    /// brought back from the store until its refresh token gives it a new one.
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

    /// What the store keeps to bring the session back: the refresh token, else the access token.
    fn credential(&self) -> Credential {
        match &self.refresh {
            Some(r) => Credential::Refresh(r.clone()),
            None => Credential::Access(self.access.clone()),
        }
    }

    /// The tokens of a session brought back from the store: a refresh token gives an access
    /// token on first use (marked expired so it is refreshed before anything is verified).
    fn restored(c: Credential) -> Tokens {
        match c {
            Credential::Refresh(r) => Tokens {
                access: String::new(),
                refresh: Some(r),
                expires_at: Some(0),
            },
            Credential::Access(a) => Tokens {
                access: a,
                refresh: None,
                expires_at: None,
            },
        }
    }
}

/// One signed-in browser.
pub struct Session {
    /// Its tokens; locked while a refresh is under way.
    pub tokens: tokio::sync::Mutex<Tokens>,
    /// Who signed in (as [`crate::api::deployments::who`] names a caller): a session whose
    /// refreshed token names someone else is ended.
    pub principal: String,
}

struct Entry {
    session: Arc<Session>,
    last_used: Instant,
    /// When the stored row was last written; `None`: due.
    persisted: Option<Instant>,
    /// Whether the session has a stored row: not when the store could not be written at
    /// sign-in (the session then lasts as long as this process, and nothing is written later).
    stored: bool,
}

/// The sessions of this process, backed by the store when there is one.
#[derive(Clone, Default)]
pub struct SessionStore {
    inner: Arc<Mutex<HashMap<String, Entry>>>,
    rows: Option<Arc<dyn Rows>>,
}

/// Milliseconds since the epoch.
fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl SessionStore {
    /// Sessions kept in memory and in `rows` (the history database).
    pub fn new(rows: Option<Arc<dyn Rows>>) -> SessionStore {
        SessionStore {
            inner: Arc::default(),
            rows,
        }
    }

    /// Stores `tokens` of `principal` under a new random id and returns the id (the cookie
    /// value). A store that cannot be written is logged: the session then lasts as long as
    /// this process.
    pub async fn create(&self, tokens: Tokens, principal: String) -> String {
        let id = new_id();
        let credential = tokens.credential();
        self.prune().await;
        let session = Arc::new(Session {
            tokens: tokio::sync::Mutex::new(tokens),
            principal: principal.clone(),
        });
        {
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
                    session,
                    last_used: now,
                    persisted: None,
                    stored: true,
                },
            );
        }
        let Some(rows) = &self.rows else { return id };
        let inserted = match self.row(&id, &principal, &credential) {
            Some(row) => match rows.insert_session(&row).await {
                Ok(()) => true,
                Err(e) => {
                    tracing::warn!(
                        "console sessions: not stored, so this session ends if iac serve restarts: {e}"
                    );
                    false
                }
            },
            None => false,
        };
        if let Some(e) = self
            .inner
            .lock()
            .expect("session store poisoned")
            .get_mut(&id)
        {
            e.stored = inserted;
            e.persisted = inserted.then(Instant::now);
        }
        id
    }

    /// Session `id`, if it exists and is not expired: from memory, else from the store. A
    /// session whose stored row is gone when its expiry is slid (signed out on another control
    /// plane) is dropped and not returned.
    pub async fn get(&self, id: &str) -> Option<Arc<Session>> {
        let hit = {
            let mut map = self.inner.lock().expect("session store poisoned");
            let now = Instant::now();
            match map.get_mut(id) {
                Some(e) if now.duration_since(e.last_used) >= IDLE => {
                    map.remove(id);
                    None
                }
                Some(e) => {
                    e.last_used = now;
                    let due = e.persisted.is_none_or(|p| now.duration_since(p) >= TOUCH);
                    Some((e.session.clone(), due))
                }
                None => None,
            }
        };
        if let Some((session, due)) = hit {
            if due {
                // The token lock is held across the write, so a refresh cannot store its new
                // refresh token in between and be overwritten with the old one.
                let tokens = session.tokens.lock().await;
                if !self.write(id, &session, &tokens.credential()).await {
                    return None;
                }
            }
            return Some(session);
        }
        let rows = self.rows.as_ref()?;
        let row = match rows.session(&sealed::id_hash(id), now_ms()).await {
            Ok(row) => row?,
            Err(e) => {
                tracing::warn!("console sessions: lookup failed: {e}");
                return None;
            }
        };
        let credential = match sealed::open(id, &row.sealed) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!("console sessions: {e}; the session is ended");
                self.remove(id).await;
                return None;
            }
        };
        // Parallel first requests with the same cookie (after a restart) share one session,
        // so its token lock orders their refreshes: the second sees the first's new token
        // instead of spending the same refresh token again (which GoTrue refuses).
        let session = self
            .inner
            .lock()
            .expect("session store poisoned")
            .entry(id.to_string())
            .or_insert_with(|| Entry {
                session: Arc::new(Session {
                    tokens: tokio::sync::Mutex::new(Tokens::restored(credential)),
                    principal: row.principal,
                }),
                last_used: Instant::now(),
                persisted: None,
                stored: true,
            })
            .session
            .clone();
        Some(session)
    }

    /// Writes session `id`'s new tokens to the store (after a refresh: GoTrue rotates the
    /// refresh token, so the stored one would no longer work); call it with `session`'s token
    /// lock held. Returns `false` when the session ended meanwhile (signed out here or on
    /// another control plane): nothing was written, it is forgotten, and the caller must not
    /// use it.
    pub async fn refreshed(&self, id: &str, session: &Arc<Session>, tokens: &Tokens) -> bool {
        self.write(id, session, &tokens.credential()).await
    }

    /// Forgets session `id`, in memory and in the store.
    pub async fn remove(&self, id: &str) {
        self.inner
            .lock()
            .expect("session store poisoned")
            .remove(id);
        if let Some(rows) = &self.rows
            && let Err(e) = rows.delete_session(&sealed::id_hash(id)).await
        {
            tracing::warn!("console sessions: sign-out not stored: {e}");
        }
    }

    /// Deletes the store's expired sessions.
    pub async fn prune(&self) {
        if let Some(rows) = &self.rows {
            match rows.prune_sessions(now_ms()).await {
                Ok(0) => {}
                Ok(n) => tracing::info!("console sessions: {n} expired session(s) pruned"),
                Err(e) => tracing::warn!("console sessions: pruning failed: {e}"),
            }
        }
    }

    /// The row of session `id`, expiring `IDLE` from now; `None` (logged) when it cannot be
    /// sealed.
    fn row(&self, id: &str, principal: &str, credential: &Credential) -> Option<StoredSession> {
        match sealed::seal(id, credential) {
            Ok(s) => Some(StoredSession {
                id_hash: sealed::id_hash(id),
                principal: principal.to_string(),
                expires_ms: now_ms() + IDLE.as_millis() as i64,
                sealed: s,
            }),
            Err(e) => {
                tracing::warn!("console sessions: {e}");
                None
            }
        }
    }

    /// Updates session `id`'s stored row (never inserts it), expiring `IDLE` from now. Returns
    /// whether the session lives on: `false` when it is no longer this process's session `id`
    /// (signed out: nothing is written) or its row is gone (signed out on another control
    /// plane, or while this write was on its way: it is forgotten here too). A store that
    /// cannot be written is logged and the session lives on.
    async fn write(&self, id: &str, session: &Arc<Session>, credential: &Credential) -> bool {
        let Some(rows) = &self.rows else { return true };
        {
            let map = self.inner.lock().expect("session store poisoned");
            match map.get(id) {
                Some(e) if Arc::ptr_eq(&e.session, session) => {
                    if !e.stored {
                        return true;
                    }
                }
                _ => return false,
            }
        }
        let Some(row) = self.row(id, &session.principal, credential) else {
            return true;
        };
        match rows.update_session(&row).await {
            Ok(true) => {
                if let Some(e) = self
                    .inner
                    .lock()
                    .expect("session store poisoned")
                    .get_mut(id)
                {
                    e.persisted = Some(Instant::now());
                }
                true
            }
            Ok(false) => {
                let mut map = self.inner.lock().expect("session store poisoned");
                if map
                    .get(id)
                    .is_some_and(|e| Arc::ptr_eq(&e.session, session))
                {
                    map.remove(id);
                }
                tracing::info!("console sessions: a session signed out elsewhere is ended");
                false
            }
            Err(e) => {
                tracing::warn!(
                    "console sessions: the stored session was not updated, so a restart of iac serve may end it: {e}"
                );
                true
            }
        }
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

    #[tokio::test]
    async fn sessions_are_created_found_and_removed() {
        let s = SessionStore::default();
        let id = s
            .create(
                Tokens {
                    access: "a".into(),
                    refresh: None,
                    expires_at: Some(100),
                },
                "alice".into(),
            )
            .await;
        assert_eq!(id.len(), 64);
        assert!(s.get(&id).await.is_some());
        assert!(s.get(&"f".repeat(64)).await.is_none());
        s.remove(&id).await;
        assert!(s.get(&id).await.is_none());
        let t = Tokens {
            access: String::new(),
            refresh: None,
            expires_at: Some(1000),
        };
        assert!(t.expiring(950) && !t.expiring(900));
    }

    /// A second process on the same database (a restart of `iac serve`) finds the session by
    /// its cookie, with the refresh token and the principal; the database holds neither the id
    /// nor the token in the clear; sign-out deletes the row for every process.
    #[tokio::test]
    async fn a_session_outlives_its_process_in_the_store_and_sign_out_ends_it() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("history");
        let db = iac_backends::history::SqliteHistory::open(&dir)
            .await
            .unwrap();
        let rows: Arc<dyn Rows> = Arc::new(db.clone());
        let first = SessionStore::new(Some(rows.clone()));
        let id = first
            .create(
                Tokens {
                    access: "access-jwt".into(),
                    refresh: Some("refresh-secret-1".into()),
                    expires_at: Some(now_secs() + 3600),
                },
                "alice (a@example.com)".into(),
            )
            .await;
        let pasted = first
            .create(
                Tokens {
                    access: "pasted-jwt".into(),
                    refresh: None,
                    expires_at: Some(now_secs() + 3600),
                },
                "bob".into(),
            )
            .await;
        let bytes = std::fs::read(db.path()).unwrap_or_default();
        let wal = std::fs::read(dir.join("history.db-wal")).unwrap_or_default();
        for secret in [id.as_bytes(), b"refresh-secret-1", b"pasted-jwt"] {
            for file in [&bytes, &wal] {
                assert!(
                    !file.windows(secret.len()).any(|w| w == secret),
                    "a secret in the clear"
                );
            }
        }
        // The restart.
        let second = SessionStore::new(Some(rows.clone()));
        let s = second.get(&id).await.expect("the session came back");
        assert_eq!(s.principal, "alice (a@example.com)");
        {
            let t = s.tokens.lock().await;
            assert_eq!(t.refresh.as_deref(), Some("refresh-secret-1"));
            assert!(t.expiring(now_secs()), "refreshed before first use");
            // A refresh rotates the token; the store follows.
            let rotated = Tokens {
                access: "access-2".into(),
                refresh: Some("refresh-secret-2".into()),
                expires_at: Some(now_secs() + 3600),
            };
            second.refreshed(&id, &s, &rotated).await;
        }
        let third = SessionStore::new(Some(rows.clone()));
        let t = third.get(&id).await.unwrap();
        assert_eq!(
            t.tokens.lock().await.refresh.as_deref(),
            Some("refresh-secret-2")
        );
        let p = third.get(&pasted).await.unwrap();
        let pt = p.tokens.lock().await;
        assert_eq!(
            (pt.access.as_str(), pt.refresh.is_none()),
            ("pasted-jwt", true)
        );
        drop(pt);
        // Sign-out in one process ends it for a process that starts after.
        third.remove(&id).await;
        assert!(
            SessionStore::new(Some(rows.clone()))
                .get(&id)
                .await
                .is_none()
        );
        assert!(
            rows.session(&sealed::id_hash(&id), 0)
                .await
                .unwrap()
                .is_none()
        );
        // A cookie that is not the session's does not open another row.
        assert!(
            SessionStore::new(Some(rows))
                .get(&"0".repeat(64))
                .await
                .is_none()
        );
    }

    /// Tokens with refresh token `refresh`, valid for an hour.
    fn tokens(refresh: &str) -> Tokens {
        Tokens {
            access: format!("access-for-{refresh}"),
            refresh: Some(refresh.into()),
            expires_at: Some(now_secs() + 3600),
        }
    }

    /// The refresh token stored for session `id` (`None`: no row).
    async fn stored_refresh(rows: &dyn Rows, id: &str) -> Option<String> {
        let row = rows.session(&sealed::id_hash(id), 0).await.unwrap()?;
        match sealed::open(id, &row.sealed).unwrap() {
            Credential::Refresh(r) => Some(r),
            Credential::Access(_) => panic!("a refresh token was stored"),
        }
    }

    async fn sqlite_rows(tmp: &tempfile::TempDir) -> Arc<dyn Rows> {
        Arc::new(
            iac_backends::history::SqliteHistory::open(&tmp.path().join("history"))
                .await
                .unwrap(),
        )
    }

    /// Sign-out while a refresh is under way (GoTrue answering): the refresh's write comes
    /// after the row is deleted and must not bring it back, here or on another control plane
    /// whose refresh or expiry slide lands after the sign-out; that one forgets the session.
    #[tokio::test]
    async fn a_refresh_or_expiry_slide_after_sign_out_does_not_bring_the_session_back() {
        let tmp = tempfile::tempdir().unwrap();
        let rows = sqlite_rows(&tmp).await;
        let here = SessionStore::new(Some(rows.clone()));
        let id = here.create(tokens("r1"), "alice".into()).await;
        let s = here.get(&id).await.unwrap();
        // The refresh starts (it holds the token lock while GoTrue answers)…
        let mut t = s.tokens.lock().await;
        // …the user signs out meanwhile…
        here.remove(&id).await;
        // …and the refresh's new tokens arrive.
        *t = tokens("r2");
        assert!(!here.refreshed(&id, &s, &t).await, "the session ended");
        drop(t);
        assert_eq!(
            stored_refresh(&*rows, &id).await,
            None,
            "the row stays gone"
        );
        assert!(here.get(&id).await.is_none());
        assert!(
            SessionStore::new(Some(rows.clone()))
                .get(&id)
                .await
                .is_none(),
            "not after a restart either"
        );

        // Another control plane that brought the session back before the sign-out: its
        // refresh lands after it.
        let id = here.create(tokens("r1"), "alice".into()).await;
        let other = SessionStore::new(Some(rows.clone()));
        let s = other.get(&id).await.unwrap();
        let mut t = s.tokens.lock().await;
        here.remove(&id).await;
        *t = tokens("r2");
        assert!(!other.refreshed(&id, &s, &t).await, "signed out elsewhere");
        drop(t);
        assert_eq!(stored_refresh(&*rows, &id).await, None);
        assert!(other.get(&id).await.is_none(), "forgotten there too");
        assert_eq!(stored_refresh(&*rows, &id).await, None);

        // Its expiry slide (due on the first use after it was brought back) lands after it.
        let id = here.create(tokens("r1"), "alice".into()).await;
        let other = SessionStore::new(Some(rows.clone()));
        assert!(other.get(&id).await.is_some());
        here.remove(&id).await;
        assert!(other.get(&id).await.is_none(), "the slide finds no row");
        assert_eq!(stored_refresh(&*rows, &id).await, None);
        assert!(other.get(&id).await.is_none(), "and it is forgotten");

        // A session in use still slides and rotates its row.
        let id = here.create(tokens("r1"), "alice".into()).await;
        let other = SessionStore::new(Some(rows.clone()));
        let s = other.get(&id).await.unwrap();
        assert!(other.get(&id).await.is_some(), "slid");
        let t = tokens("r2");
        assert!(other.refreshed(&id, &s, &t).await);
        assert_eq!(stored_refresh(&*rows, &id).await.as_deref(), Some("r2"));
    }

    /// Sessions in a map. `session` lookups wait for `lookups` callers together (so parallel
    /// requests are both past the memory check); the first `update_session` tells `entered`
    /// and waits for `release`.
    struct Gated {
        rows: Mutex<HashMap<String, StoredSession>>,
        lookups: tokio::sync::Barrier,
        hold_first_update: std::sync::atomic::AtomicBool,
        entered: tokio::sync::Notify,
        release: tokio::sync::Notify,
    }

    impl Gated {
        fn new(lookups: usize, hold_first_update: bool) -> Gated {
            Gated {
                rows: Mutex::default(),
                lookups: tokio::sync::Barrier::new(lookups),
                hold_first_update: hold_first_update.into(),
                entered: tokio::sync::Notify::new(),
                release: tokio::sync::Notify::new(),
            }
        }
    }

    #[async_trait::async_trait]
    impl Rows for Gated {
        async fn insert_session(
            &self,
            s: &StoredSession,
        ) -> Result<(), iac_core::history::HistoryError> {
            self.rows
                .lock()
                .unwrap()
                .insert(s.id_hash.clone(), s.clone());
            Ok(())
        }
        async fn update_session(
            &self,
            s: &StoredSession,
        ) -> Result<bool, iac_core::history::HistoryError> {
            if self
                .hold_first_update
                .swap(false, std::sync::atomic::Ordering::SeqCst)
            {
                self.entered.notify_one();
                self.release.notified().await;
            }
            let mut rows = self.rows.lock().unwrap();
            Ok(match rows.get_mut(&s.id_hash) {
                Some(r) => {
                    r.expires_ms = s.expires_ms;
                    r.sealed = s.sealed.clone();
                    true
                }
                None => false,
            })
        }
        async fn session(
            &self,
            id_hash: &str,
            _: i64,
        ) -> Result<Option<StoredSession>, iac_core::history::HistoryError> {
            self.lookups.wait().await;
            Ok(self.rows.lock().unwrap().get(id_hash).cloned())
        }
        async fn delete_session(
            &self,
            id_hash: &str,
        ) -> Result<bool, iac_core::history::HistoryError> {
            Ok(self.rows.lock().unwrap().remove(id_hash).is_some())
        }
        async fn prune_sessions(&self, _: i64) -> Result<u64, iac_core::history::HistoryError> {
            Ok(0)
        }
    }

    /// After a restart, two first requests with the same cookie at once share one session (and
    /// so its token lock: the second waits for the first's refresh and uses its new token
    /// instead of spending the same refresh token, which GoTrue refuses).
    #[tokio::test]
    async fn parallel_first_requests_after_a_restart_share_one_session() {
        let rows = Arc::new(Gated::new(2, false));
        let before = SessionStore::new(Some(rows.clone()));
        let id = before.create(tokens("r1"), "alice".into()).await;
        let after = SessionStore::new(Some(rows.clone()));
        let (a, b) = tokio::join!(after.get(&id), after.get(&id));
        let (a, b) = (a.unwrap(), b.unwrap());
        assert!(Arc::ptr_eq(&a, &b), "one session, one token lock");
        *a.tokens.lock().await = tokens("r2");
        assert_eq!(b.tokens.lock().await.refresh.as_deref(), Some("r2"));
    }

    /// An expiry slide that read the old refresh token cannot store it over the one a refresh
    /// stored meanwhile (the stored one would be spent, and the next restart would sign the
    /// user out): the slide holds the token lock until its write is done.
    #[tokio::test]
    async fn an_expiry_slide_does_not_overwrite_a_newer_refresh_token() {
        let rows = Arc::new(Gated::new(1, false));
        let before = SessionStore::new(Some(rows.clone()));
        let id = before.create(tokens("r1"), "alice".into()).await;
        let store = SessionStore::new(Some(rows.clone()));
        let s = store.get(&id).await.unwrap();
        rows.hold_first_update
            .store(true, std::sync::atomic::Ordering::SeqCst);
        // A request whose slide (due: brought back, never written) stalls in the store…
        let slide = tokio::spawn({
            let (store, id) = (store.clone(), id.clone());
            async move { store.get(&id).await.is_some() }
        });
        rows.entered.notified().await;
        // …while another request refreshes the token.
        let refresh = tokio::spawn({
            let (store, id, s) = (store.clone(), id.clone(), s.clone());
            async move {
                let mut t = s.tokens.lock().await;
                *t = tokens("r2");
                store.refreshed(&id, &s, &t).await
            }
        });
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        rows.release.notify_one();
        assert!(slide.await.unwrap());
        assert!(refresh.await.unwrap());
        assert_eq!(stored_refresh(&*rows, &id).await.as_deref(), Some("r2"));
    }
}
