//! [`SupabaseVerifier`]: the Supabase implementation of [`AuthVerifier`] for the admin API.
//!
//! A bearer credential is accepted in one of three shapes:
//!
//! 1. **Opaque secret key** (`sb_secret_…`): accepted only if it equals the configured
//!    `SUPABASE_SERVICE_ROLE_KEY`, compared in constant time (SHA-256 of both sides, then
//!    `subtle`), and then acts as `service_role`. It is not sent anywhere.
//! 2. **JWT, verified locally.** The algorithm comes from the *key*, never from the header:
//!    * `ES256`/`ES384`/`RS256`/`RS384`/`RS512` tokens must carry a `kid` naming a key of the
//!      project's JWKS (`<url>/auth/v1/.well-known/jwks.json`, cached for `jwks_cache_ttl`,
//!      refetched when an unknown `kid` shows up but at most once per `min_refetch_interval`);
//!      the header's `alg` must equal the algorithm of that key (from its `kty`/`crv`/`alg`).
//!      Symmetric (`oct`) keys in a JWKS are ignored.
//!    * `HS256` tokens (legacy projects, legacy `anon`/`service_role` keys) are verified only
//!      with `SUPABASE_JWT_SECRET` — never with a public key, so an HS256 token "signed" with
//!      the RSA public key PEM fails. Without a configured secret, the only HS256 token accepted
//!      is one equal to the configured service-role key (constant time).
//!    * `alg: none` and every other algorithm are refused before any key is looked at.
//!
//!    `exp` is required, `exp`/`nbf` are checked with `clock_skew` leeway, `aud` (when present)
//!    must be one of `audiences`. `iss` must be the project issuer (`<url>/auth/v1`, or the
//!    configured `issuer`) — except for legacy service keys (no `sub`, `role: service_role`),
//!    which Supabase mints with `iss: "supabase"`; those may carry either.
//! 3. Then **authorization**: the `role` claim must be in `allowed_roles` (default
//!    `["service_role"]`) or the `sub` in `allowed_user_ids`, else 403. This runs *before* the
//!    Supabase round trip so that arbitrary signed-up users cannot make the server call
//!    Supabase on every request.
//! 4. Then, when `confirm_with_supabase` is on (the default whenever `url` is set), the JWT is
//!    **confirmed upstream**: a user token (has `sub`) with `GET <url>/auth/v1/user`
//!    (`apikey: <service-role key>`, `Authorization: Bearer <token>`), which fails for deleted
//!    users and revoked sessions; a service-role token with an admin call
//!    (`GET <url>/auth/v1/admin/users?per_page=1`, the token as bearer and apikey). A positive
//!    answer is cached for `confirm_cache_ttl` (never past the token's `exp`) keyed by the
//!    SHA-256 of the token. Supabase saying 401/403/404 → 401; Supabase unreachable, timing out,
//!    rate limiting or answering 5xx → [`AuthError::Unavailable`] (503): fail closed.
//!
//! Tokens are never logged and error messages never contain a token, key or secret.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use base64::Engine as _;
use iac_core::{AuthError, AuthVerifier, Principal};
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::secret::Secret;

/// Supabase auth settings (`[auth.supabase]` in `iac.toml`; the `SUPABASE_*` environment
/// variables fill the same fields through [`SupabaseConfig::apply_env`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SupabaseConfig {
    /// Project URL, e.g. `https://abcd.supabase.co` (`SUPABASE_URL`).
    pub url: Option<String>,
    /// Service-role key: an `sb_secret_…` key or a legacy service_role JWT
    /// (`SUPABASE_SERVICE_ROLE_KEY`). Needed as `apikey` for confirmation calls.
    pub service_role_key: Option<Secret>,
    /// Legacy HS256 JWT secret (`SUPABASE_JWT_SECRET`); HS256 tokens are refused without it.
    pub jwt_secret: Option<Secret>,
    /// Confirm every JWT with Supabase. Unset = on when `url` is set.
    pub confirm_with_supabase: Option<bool>,
    /// Roles (`role` claim) allowed to use the API.
    pub allowed_roles: Vec<String>,
    /// User ids (`sub` claim) allowed whatever their role.
    pub allowed_user_ids: Vec<String>,
    /// Accepted `aud` values when a token carries one (Supabase user tokens: `authenticated`).
    pub audiences: Vec<String>,
    /// Expected `iss`; unset = `<url>/auth/v1`. Without both, `iss` is not checked.
    pub issuer: Option<String>,
    /// How long a fetched JWKS is trusted.
    #[serde(with = "humantime_serde")]
    pub jwks_cache_ttl: Duration,
    /// Minimum time between two JWKS fetches triggered by unknown `kid`s.
    #[serde(with = "humantime_serde")]
    pub min_refetch_interval: Duration,
    /// How long a positive Supabase confirmation is reused.
    #[serde(with = "humantime_serde")]
    pub confirm_cache_ttl: Duration,
    /// Timeout of every call to Supabase.
    #[serde(with = "humantime_serde")]
    pub http_timeout: Duration,
    /// Leeway for `exp` and `nbf`.
    #[serde(with = "humantime_serde")]
    pub clock_skew: Duration,
}

impl Default for SupabaseConfig {
    fn default() -> Self {
        SupabaseConfig {
            url: None,
            service_role_key: None,
            jwt_secret: None,
            confirm_with_supabase: None,
            allowed_roles: vec!["service_role".to_string()],
            allowed_user_ids: Vec::new(),
            audiences: vec!["authenticated".to_string()],
            issuer: None,
            jwks_cache_ttl: Duration::from_secs(600),
            min_refetch_interval: Duration::from_secs(30),
            confirm_cache_ttl: Duration::from_secs(30),
            http_timeout: Duration::from_secs(5),
            clock_skew: Duration::from_secs(30),
        }
    }
}

impl SupabaseConfig {
    /// Fills `url`, `service_role_key` and `jwt_secret` from `SUPABASE_URL`,
    /// `SUPABASE_SERVICE_ROLE_KEY` and `SUPABASE_JWT_SECRET` as returned by `lookup` (pass
    /// `|k| std::env::var(k).ok()`); empty values are ignored, set values win over the file.
    pub fn apply_env(&mut self, lookup: impl Fn(&str) -> Option<String>) {
        let get = |k: &str| {
            lookup(k)
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
        };
        if let Some(v) = get("SUPABASE_URL") {
            self.url = Some(v);
        }
        if let Some(v) = get("SUPABASE_SERVICE_ROLE_KEY") {
            self.service_role_key = Some(Secret::new(v));
        }
        if let Some(v) = get("SUPABASE_JWT_SECRET") {
            self.jwt_secret = Some(Secret::new(v));
        }
    }

    /// Whether confirmation with Supabase is on after defaults are applied.
    pub fn confirms(&self) -> bool {
        self.confirm_with_supabase.unwrap_or(self.url.is_some())
    }
}

/// A [`SupabaseConfig`] that cannot work; the message names the setting and what it needs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("supabase auth config: {0}")]
pub struct SupabaseConfigError(pub String);

/// An asymmetric key from the JWKS, with the one algorithm it verifies.
#[derive(Clone)]
struct JwksKey {
    alg: Algorithm,
    key: DecodingKey,
}

#[derive(Default)]
struct JwksCache {
    keys: HashMap<String, JwksKey>,
    fetched_at: Option<Instant>,
    /// Last fetch attempt and its error, for the refetch rate limit.
    last_attempt: Option<(Instant, Option<String>)>,
}

/// Verifies Supabase credentials; see the module docs for the exact rules.
pub struct SupabaseVerifier {
    cfg: SupabaseConfig,
    /// `url` without a trailing slash.
    base_url: Option<String>,
    issuer: Option<String>,
    confirm: bool,
    hs_key: Option<DecodingKey>,
    /// SHA-256 of the configured service-role key, for constant-time comparison.
    service_key_digest: Option<[u8; 32]>,
    http: reqwest::Client,
    jwks: tokio::sync::RwLock<JwksCache>,
    /// Serializes JWKS fetches so a burst of unknown `kid`s costs one request.
    jwks_fetch: tokio::sync::Mutex<()>,
    /// SHA-256(token) → when the positive confirmation stops counting.
    confirmed: Mutex<HashMap<[u8; 32], Instant>>,
}

/// Most confirmations remembered at once; the cache is pruned when it grows past this.
const CONFIRM_CACHE_MAX: usize = 4096;
/// Largest JWKS document read.
const JWKS_MAX_BYTES: usize = 256 * 1024;

#[derive(Debug, Deserialize)]
struct Claims {
    sub: Option<String>,
    role: Option<String>,
    iss: Option<String>,
    email: Option<String>,
    exp: Option<u64>,
}

impl SupabaseVerifier {
    /// Checks the config and builds the verifier (no network call: the JWKS is fetched on first use).
    pub fn new(cfg: SupabaseConfig) -> Result<Self, SupabaseConfigError> {
        let err = |m: &str| SupabaseConfigError(m.to_string());
        let base_url = match cfg.url.as_deref().map(str::trim).filter(|u| !u.is_empty()) {
            None => None,
            Some(u) => {
                let u = u.trim_end_matches('/');
                let parsed = reqwest::Url::parse(u).map_err(|e| {
                    SupabaseConfigError(format!(
                        "url {u:?} is not a URL ({e}); expected e.g. https://<ref>.supabase.co"
                    ))
                })?;
                if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
                    return Err(SupabaseConfigError(format!(
                        "url {u:?}: expected an http(s) URL with a host, e.g. https://<ref>.supabase.co"
                    )));
                }
                Some(u.to_string())
            }
        };
        let service_key = cfg.service_role_key.as_ref().filter(|k| !k.is_empty());
        let jwt_secret = cfg.jwt_secret.as_ref().filter(|k| !k.is_empty());
        if base_url.is_none() && service_key.is_none() && jwt_secret.is_none() {
            return Err(err(
                "nothing configured: set SUPABASE_URL and SUPABASE_SERVICE_ROLE_KEY (and SUPABASE_JWT_SECRET for HS256 projects)",
            ));
        }
        let confirm = cfg.confirm_with_supabase.unwrap_or(base_url.is_some());
        if confirm && base_url.is_none() {
            return Err(err("confirm_with_supabase = true needs SUPABASE_URL"));
        }
        if confirm && service_key.is_none() {
            return Err(err(
                "confirm_with_supabase needs SUPABASE_SERVICE_ROLE_KEY (sent as the apikey header of /auth/v1/user)",
            ));
        }
        if cfg.allowed_roles.is_empty() && cfg.allowed_user_ids.is_empty() {
            return Err(err(
                "allowed_roles and allowed_user_ids are both empty: nobody could be authorized",
            ));
        }
        if cfg.http_timeout.is_zero() {
            return Err(err("http_timeout must be greater than zero"));
        }
        let issuer = cfg
            .issuer
            .clone()
            .filter(|i| !i.trim().is_empty())
            .or_else(|| base_url.as_ref().map(|u| format!("{u}/auth/v1")));
        let http = reqwest::Client::builder()
            .timeout(cfg.http_timeout)
            .connect_timeout(cfg.http_timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| SupabaseConfigError(format!("cannot build the HTTP client: {e}")))?;
        Ok(SupabaseVerifier {
            base_url,
            issuer,
            confirm,
            hs_key: jwt_secret.map(|s| DecodingKey::from_secret(s.expose().as_bytes())),
            service_key_digest: service_key.map(|k| sha256(k.expose())),
            http,
            jwks: tokio::sync::RwLock::new(JwksCache::default()),
            jwks_fetch: tokio::sync::Mutex::new(()),
            confirmed: Mutex::new(HashMap::new()),
            cfg,
        })
    }

    /// The config this verifier was built from (secrets stay redacted in `Debug`).
    pub fn config(&self) -> &SupabaseConfig {
        &self.cfg
    }

    /// Whether tokens are confirmed with Supabase.
    pub fn confirms(&self) -> bool {
        self.confirm
    }

    fn is_configured_service_key(&self, token: &str) -> bool {
        match &self.service_key_digest {
            Some(d) => bool::from(sha256(token).ct_eq(d)),
            None => false,
        }
    }

    fn service_principal(method: &str) -> Principal {
        Principal {
            subject: "service_role".to_string(),
            role: "service_role".to_string(),
            email: None,
            method: method.to_string(),
        }
    }

    fn authorize(&self, p: &Principal, has_sub: bool) -> Result<(), AuthError> {
        if self.cfg.allowed_roles.iter().any(|r| r == &p.role) {
            return Ok(());
        }
        if has_sub && self.cfg.allowed_user_ids.iter().any(|u| u == &p.subject) {
            return Ok(());
        }
        Err(AuthError::Forbidden(format!(
            "role {:?} is not allowed to use this API",
            p.role
        )))
    }

    /// Local JWT verification: header, key choice, signature, claims. Returns the principal,
    /// whether the token has a `sub`, and its `exp`.
    async fn verify_jwt(&self, token: &str) -> Result<(Principal, bool, Option<u64>), AuthError> {
        let alg_name = header_alg(token)?;
        let (alg, key, how) = match alg_name.as_str() {
            "HS256" => match &self.hs_key {
                Some(k) => (
                    Algorithm::HS256,
                    k.clone(),
                    "jwt HS256 (jwt secret)".to_string(),
                ),
                None => {
                    if self.is_configured_service_key(token) {
                        let p = Self::service_principal(
                            "configured service-role key (constant-time match)",
                        );
                        return Ok((p, false, None));
                    }
                    return Err(AuthError::Invalid(
                        "HS256 token but no SUPABASE_JWT_SECRET is configured to verify it".into(),
                    ));
                }
            },
            "ES256" | "ES384" | "RS256" | "RS384" | "RS512" => {
                let kid = header_kid(token)?.ok_or_else(|| {
                    AuthError::Invalid(format!("{alg_name} token without a kid header"))
                })?;
                let k = self.jwks_key(&kid).await?;
                let key_alg = alg_label(k.alg);
                if key_alg != alg_name {
                    return Err(AuthError::Invalid(format!(
                        "token alg {alg_name} does not match the {key_alg} key it names"
                    )));
                }
                (k.alg, k.key, format!("jwt {key_alg} (jwks)"))
            }
            "none" | "None" | "NONE" => {
                return Err(AuthError::Invalid("alg none is not accepted".into()));
            }
            other => {
                let shown: String = other
                    .chars()
                    .filter(|c| c.is_ascii_alphanumeric())
                    .take(16)
                    .collect();
                return Err(AuthError::Invalid(format!(
                    "unsupported alg {shown:?}: expected ES256, RS256 or HS256"
                )));
            }
        };
        let mut v = Validation::new(alg);
        v.leeway = self.cfg.clock_skew.as_secs();
        v.validate_exp = true;
        v.validate_nbf = true;
        v.set_required_spec_claims(&["exp"]);
        if self.cfg.audiences.is_empty() {
            v.validate_aud = false;
        } else {
            v.set_audience(&self.cfg.audiences);
        }
        let data = jsonwebtoken::decode::<Claims>(token, &key, &v).map_err(map_jwt_error)?;
        let c = data.claims;
        let role = c
            .role
            .filter(|r| !r.is_empty())
            .ok_or_else(|| AuthError::Invalid("token has no role claim".into()))?;
        let has_sub = c.sub.as_deref().is_some_and(|s| !s.is_empty());
        if let Some(expected) = &self.issuer {
            let iss = c.iss.as_deref().unwrap_or("");
            let legacy_service_key = !has_sub && role == "service_role" && iss == "supabase";
            if iss != expected && !legacy_service_key {
                return Err(AuthError::Invalid(if iss.is_empty() {
                    "token has no iss claim".to_string()
                } else {
                    "token issuer is not this Supabase project".to_string()
                }));
            }
        }
        let principal = Principal {
            subject: c
                .sub
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| role.clone()),
            role,
            email: c.email,
            method: how,
        };
        Ok((principal, has_sub, c.exp))
    }

    /// The JWKS key named `kid`, fetching the JWKS when it is stale or lacks the key.
    async fn jwks_key(&self, kid: &str) -> Result<JwksKey, AuthError> {
        if let Some(k) = self.cached_key(kid).await {
            return Ok(k);
        }
        let base = self.base_url.as_ref().ok_or_else(|| {
            AuthError::Invalid(
                "asymmetric token but no SUPABASE_URL to fetch signing keys from".into(),
            )
        })?;
        let _fetching = self.jwks_fetch.lock().await;
        // Another request may have refreshed the cache while we waited.
        if let Some(k) = self.cached_key(kid).await {
            return Ok(k);
        }
        let now = Instant::now();
        {
            let cache = self.jwks.read().await;
            let fresh = cache
                .fetched_at
                .is_some_and(|t| now.duration_since(t) < self.cfg.jwks_cache_ttl);
            if let Some((at, err)) = &cache.last_attempt
                && now.duration_since(*at) < self.cfg.min_refetch_interval
            {
                // Rate limited: answer from what we know.
                return Err(match (fresh, err) {
                    (true, _) => AuthError::Invalid(
                        "token signed by an unknown key (kid not in the JWKS)".into(),
                    ),
                    (false, Some(e)) => {
                        AuthError::Unavailable(format!("cannot fetch the JWKS: {e}"))
                    }
                    (false, None) => AuthError::Invalid(
                        "token signed by an unknown key (kid not in the JWKS)".into(),
                    ),
                });
            }
        }
        let url = format!("{base}/auth/v1/.well-known/jwks.json");
        let fetched = self.fetch_jwks(&url).await;
        let mut cache = self.jwks.write().await;
        match fetched {
            Ok(keys) => {
                tracing::info!(keys = keys.len(), "fetched Supabase JWKS");
                cache.keys = keys;
                cache.fetched_at = Some(now);
                cache.last_attempt = Some((now, None));
                cache.keys.get(kid).cloned().ok_or_else(|| {
                    AuthError::Invalid(
                        "token signed by an unknown key (kid not in the JWKS)".into(),
                    )
                })
            }
            Err(e) => {
                tracing::warn!(error = %e, "Supabase JWKS fetch failed");
                cache.last_attempt = Some((now, Some(e.clone())));
                Err(AuthError::Unavailable(format!(
                    "cannot fetch the JWKS: {e}"
                )))
            }
        }
    }

    async fn cached_key(&self, kid: &str) -> Option<JwksKey> {
        let cache = self.jwks.read().await;
        let fresh = cache
            .fetched_at
            .is_some_and(|t| t.elapsed() < self.cfg.jwks_cache_ttl);
        if fresh {
            cache.keys.get(kid).cloned()
        } else {
            None
        }
    }

    async fn fetch_jwks(&self, url: &str) -> Result<HashMap<String, JwksKey>, String> {
        let resp = self
            .http
            .get(url)
            .send()
            .await
            .map_err(|e| describe_reqwest(url, &e))?;
        let status = resp.status();
        if !status.is_success() {
            return Err(format!("GET {url} answered HTTP {}", status.as_u16()));
        }
        let body = resp.bytes().await.map_err(|e| describe_reqwest(url, &e))?;
        if body.len() > JWKS_MAX_BYTES {
            return Err(format!(
                "GET {url}: JWKS larger than {JWKS_MAX_BYTES} bytes"
            ));
        }
        parse_jwks(&body).map_err(|e| format!("GET {url}: {e}"))
    }

    /// Asks Supabase whether the token is still good. Positive answers are cached.
    async fn confirm_upstream(
        &self,
        token: &str,
        has_sub: bool,
        exp: Option<u64>,
    ) -> Result<(), AuthError> {
        let digest = sha256(token);
        let now = Instant::now();
        {
            let cache = self.confirmed.lock().expect("confirm cache poisoned");
            if cache.get(&digest).is_some_and(|until| *until > now) {
                return Ok(());
            }
        }
        let base = self
            .base_url
            .as_deref()
            .expect("confirm implies url (checked in new)");
        let (url, apikey) = if has_sub {
            let key = self
                .cfg
                .service_role_key
                .as_ref()
                .expect("confirm implies a service key (checked in new)");
            (format!("{base}/auth/v1/user"), key.expose().to_string())
        } else {
            (
                format!("{base}/auth/v1/admin/users?per_page=1"),
                token.to_string(),
            )
        };
        let what = if has_sub {
            "GET /auth/v1/user"
        } else {
            "GET /auth/v1/admin/users"
        };
        let resp = self
            .http
            .get(&url)
            .header("apikey", apikey)
            .bearer_auth(token)
            .send()
            .await
            .map_err(|e| {
                AuthError::Unavailable(format!("Supabase {what}: {}", describe_reqwest(base, &e)))
            })?;
        let status = resp.status().as_u16();
        match status {
            200 => {}
            401 | 403 | 404 => {
                return Err(AuthError::Invalid(format!(
                    "Supabase rejected the token ({what} answered HTTP {status}: user deleted, session revoked or key revoked)"
                )));
            }
            400 | 422 => {
                return Err(AuthError::Invalid(format!(
                    "Supabase rejected the token ({what} answered HTTP {status})"
                )));
            }
            _ => {
                return Err(AuthError::Unavailable(format!(
                    "Supabase {what} answered HTTP {status}"
                )));
            }
        }
        if has_sub {
            // The user Supabase returns must be the token's subject.
            #[derive(Deserialize)]
            struct User {
                id: Option<String>,
            }
            let user: User = resp.json().await.map_err(|_| {
                AuthError::Unavailable(format!(
                    "Supabase {what} returned a body that is not a user"
                ))
            })?;
            let claims_sub = insecure_sub(token);
            if user.id.is_none() || user.id != claims_sub {
                return Err(AuthError::Invalid(format!(
                    "Supabase {what} returned a different user than the token's sub"
                )));
            }
        }
        let mut ttl = self.cfg.confirm_cache_ttl;
        if let Some(exp) = exp {
            let left = exp.saturating_sub(unix_now());
            ttl = ttl.min(Duration::from_secs(left));
        }
        if !ttl.is_zero() {
            let mut cache = self.confirmed.lock().expect("confirm cache poisoned");
            if cache.len() >= CONFIRM_CACHE_MAX {
                cache.retain(|_, until| *until > now);
                if cache.len() >= CONFIRM_CACHE_MAX {
                    cache.clear();
                }
            }
            cache.insert(digest, now + ttl);
        }
        Ok(())
    }
}

#[async_trait]
impl AuthVerifier for SupabaseVerifier {
    async fn verify(&self, bearer: &str) -> Result<Principal, AuthError> {
        let token = bearer.trim();
        if token.is_empty() {
            return Err(AuthError::Missing);
        }
        if token.starts_with("sb_secret_") {
            if self.is_configured_service_key(token) {
                let p = Self::service_principal("sb_secret key (constant-time match)");
                self.authorize(&p, false)?;
                return Ok(p);
            }
            return Err(AuthError::Invalid(
                "secret key does not match the configured service-role key".into(),
            ));
        }
        if token.starts_with("sb_publishable_") {
            return Err(AuthError::Invalid(
                "publishable keys do not grant access to this API".into(),
            ));
        }
        if token.split('.').count() != 3
            || !token
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.=".contains(&b))
        {
            return Err(AuthError::Malformed(
                "expected a JWT (three base64url segments) or an sb_secret_ key".into(),
            ));
        }
        let (mut principal, has_sub, exp) = self.verify_jwt(token).await?;
        self.authorize(&principal, has_sub)?;
        if self.confirm && principal.method.starts_with("jwt") {
            self.confirm_upstream(token, has_sub, exp).await?;
            principal.method.push_str(if has_sub {
                " + supabase /auth/v1/user"
            } else {
                " + supabase admin api"
            });
        }
        tracing::debug!(subject = %principal.subject, role = %principal.role, method = %principal.method, "authenticated");
        Ok(principal)
    }
}

fn sha256(s: &str) -> [u8; 32] {
    Sha256::digest(s.as_bytes()).into()
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The decoded JOSE header as JSON (no verification).
fn header_json(token: &str) -> Result<serde_json::Value, AuthError> {
    let seg = token.split('.').next().unwrap_or("");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(seg.trim_end_matches('='))
        .map_err(|_| AuthError::Malformed("JWT header is not base64url".into()))?;
    let v: serde_json::Value = serde_json::from_slice(&bytes)
        .map_err(|_| AuthError::Malformed("JWT header is not JSON".into()))?;
    if !v.is_object() {
        return Err(AuthError::Malformed(
            "JWT header is not a JSON object".into(),
        ));
    }
    Ok(v)
}

fn header_alg(token: &str) -> Result<String, AuthError> {
    let h = header_json(token)?;
    match h.get("alg") {
        Some(serde_json::Value::String(a)) => Ok(a.clone()),
        _ => Err(AuthError::Invalid("JWT header has no alg".into())),
    }
}

fn header_kid(token: &str) -> Result<Option<String>, AuthError> {
    let h = header_json(token)?;
    Ok(h.get("kid").and_then(|k| k.as_str()).map(str::to_string))
}

/// The `sub` of an already verified token (used to compare with Supabase's answer).
fn insecure_sub(token: &str) -> Option<String> {
    let seg = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(seg.trim_end_matches('='))
        .ok()?;
    let v: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    v.get("sub").and_then(|s| s.as_str()).map(str::to_string)
}

fn alg_label(a: Algorithm) -> &'static str {
    match a {
        Algorithm::HS256 => "HS256",
        Algorithm::HS384 => "HS384",
        Algorithm::HS512 => "HS512",
        Algorithm::ES256 => "ES256",
        Algorithm::ES384 => "ES384",
        Algorithm::RS256 => "RS256",
        Algorithm::RS384 => "RS384",
        Algorithm::RS512 => "RS512",
        Algorithm::PS256 => "PS256",
        Algorithm::PS384 => "PS384",
        Algorithm::PS512 => "PS512",
        Algorithm::EdDSA => "EdDSA",
        _ => "unsupported",
    }
}

fn map_jwt_error(e: jsonwebtoken::errors::Error) -> AuthError {
    use jsonwebtoken::errors::ErrorKind as K;
    match e.kind() {
        K::ExpiredSignature => AuthError::Expired,
        K::ImmatureSignature => AuthError::NotYetValid,
        K::InvalidSignature => AuthError::Invalid("bad signature".into()),
        K::InvalidAudience => AuthError::Invalid("audience not accepted".into()),
        K::InvalidIssuer => AuthError::Invalid("token issuer is not this Supabase project".into()),
        K::MissingRequiredClaim(c) => AuthError::Invalid(format!("token has no {c} claim")),
        K::InvalidClaimFormat(c) => AuthError::Invalid(format!("claim {c} has the wrong type")),
        K::InvalidAlgorithm
        | K::MissingAlgorithm
        | K::InvalidAlgorithmName
        | K::UnsupportedAlgorithm => AuthError::Invalid("algorithm not accepted".into()),
        K::Base64(_) | K::Json(_) | K::Utf8(_) | K::InvalidToken => {
            AuthError::Malformed("JWT does not decode".into())
        }
        _ => AuthError::Invalid("token could not be verified".into()),
    }
}

/// Parses a JWKS document into `kid → key`, keeping only asymmetric keys with a `kid` and an
/// algorithm we verify. Unusable entries are skipped (logged), not fatal.
fn parse_jwks(body: &[u8]) -> Result<HashMap<String, JwksKey>, String> {
    #[derive(Deserialize)]
    struct Set {
        keys: Vec<serde_json::Value>,
    }
    let set: Set =
        serde_json::from_slice(body).map_err(|e| format!("not a JWKS document ({e})"))?;
    let mut out = HashMap::new();
    let mut seen = HashSet::new();
    for raw in set.keys {
        let Ok(jwk) = serde_json::from_value::<Jwk>(raw) else {
            tracing::warn!("skipping a JWKS entry that does not parse as a JWK");
            continue;
        };
        let Some(kid) = jwk.common.key_id.clone() else {
            tracing::warn!("skipping a JWKS entry without kid");
            continue;
        };
        let natural = match &jwk.algorithm {
            AlgorithmParameters::EllipticCurve(p) => match p.curve {
                EllipticCurve::P256 => Some(Algorithm::ES256),
                EllipticCurve::P384 => Some(Algorithm::ES384),
                _ => None,
            },
            AlgorithmParameters::RSA(_) => Some(Algorithm::RS256),
            // Symmetric or other keys are never taken from a JWKS.
            _ => None,
        };
        let Some(natural) = natural else {
            tracing::warn!(kid = %kid, "skipping a JWKS key of an unsupported type");
            continue;
        };
        let alg = match jwk.common.key_algorithm {
            None => natural,
            Some(KeyAlgorithm::ES256) if natural == Algorithm::ES256 => Algorithm::ES256,
            Some(KeyAlgorithm::ES384) if natural == Algorithm::ES384 => Algorithm::ES384,
            Some(KeyAlgorithm::RS256) if natural == Algorithm::RS256 => Algorithm::RS256,
            Some(KeyAlgorithm::RS384) if natural == Algorithm::RS256 => Algorithm::RS384,
            Some(KeyAlgorithm::RS512) if natural == Algorithm::RS256 => Algorithm::RS512,
            Some(other) => {
                tracing::warn!(kid = %kid, alg = ?other, "skipping a JWKS key whose alg does not fit its type");
                continue;
            }
        };
        let Ok(key) = DecodingKey::from_jwk(&jwk) else {
            tracing::warn!(kid = %kid, "skipping a JWKS key that does not decode");
            continue;
        };
        if !seen.insert(kid.clone()) {
            tracing::warn!(kid = %kid, "duplicate kid in the JWKS; keeping the first");
            continue;
        }
        out.insert(kid, JwksKey { alg, key });
    }
    Ok(out)
}

fn describe_reqwest(target: &str, e: &reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "connection failed"
    } else if e.is_decode() || e.is_body() {
        "bad response body"
    } else {
        "request failed"
    };
    // reqwest errors carry the URL, which holds no secret (keys travel in headers only).
    format!("{target}: {kind}")
}

/// `humantime` (de)serialization of durations ("30s", "10m").
mod humantime_serde {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s).map_err(|e| {
            serde::de::Error::custom(format!(
                "invalid duration {s:?} ({e}): expected e.g. \"30s\", \"10m\""
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_env() {
        let mut c = SupabaseConfig::default();
        assert!(!c.confirms());
        c.apply_env(|k| match k {
            "SUPABASE_URL" => Some("https://x.supabase.co/".into()),
            "SUPABASE_SERVICE_ROLE_KEY" => Some("sb_secret_k".into()),
            _ => None,
        });
        assert!(c.confirms());
        assert_eq!(c.allowed_roles, vec!["service_role"]);
        let v = SupabaseVerifier::new(c.clone()).unwrap();
        assert_eq!(v.issuer.as_deref(), Some("https://x.supabase.co/auth/v1"));
        let dbg = format!("{c:?}");
        assert!(!dbg.contains("sb_secret_k"), "{dbg}");
        let json = serde_json::to_string(&c).unwrap();
        assert!(!json.contains("sb_secret_k"), "{json}");
    }

    #[test]
    fn config_errors_name_the_setting() {
        let e = SupabaseVerifier::new(SupabaseConfig::default())
            .err()
            .unwrap();
        assert!(e.to_string().contains("SUPABASE_URL"), "{e}");
        let c = SupabaseConfig {
            url: Some("https://x.supabase.co".into()),
            ..Default::default()
        };
        let e = SupabaseVerifier::new(c).err().unwrap();
        assert!(e.to_string().contains("SUPABASE_SERVICE_ROLE_KEY"), "{e}");
        let c = SupabaseConfig {
            url: Some("ftp://x".into()),
            ..Default::default()
        };
        assert!(
            SupabaseVerifier::new(c)
                .err()
                .unwrap()
                .to_string()
                .contains("http(s)")
        );
        let c = SupabaseConfig {
            jwt_secret: Some("s".into()),
            allowed_roles: vec![],
            ..Default::default()
        };
        assert!(
            SupabaseVerifier::new(c)
                .err()
                .unwrap()
                .to_string()
                .contains("nobody")
        );
    }

    #[test]
    fn durations_parse_from_toml_style_strings() {
        let c: SupabaseConfig =
            serde_json::from_str(r#"{"jwks_cache_ttl":"5m","min_refetch_interval":"2s"}"#).unwrap();
        assert_eq!(c.jwks_cache_ttl, Duration::from_secs(300));
        assert_eq!(c.min_refetch_interval, Duration::from_secs(2));
        let e = serde_json::from_str::<SupabaseConfig>(r#"{"http_timeout":"soon"}"#).unwrap_err();
        assert!(e.to_string().contains("soon"), "{e}");
    }

    #[test]
    fn jwks_skips_symmetric_and_mismatched_keys() {
        let doc = br#"{"keys":[
            {"kty":"oct","kid":"sym","k":"c2VjcmV0"},
            {"kty":"EC","kid":"ec","crv":"P-256","alg":"RS256",
             "x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"},
            {"kty":"EC","kid":"ec2","crv":"P-256",
             "x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"},
            {"kty":"weird","kid":"w"}
        ]}"#;
        let keys = parse_jwks(doc).unwrap();
        assert_eq!(keys.keys().collect::<Vec<_>>(), vec!["ec2"]);
        assert_eq!(keys["ec2"].alg, Algorithm::ES256);
        assert!(parse_jwks(b"{}").is_err());
    }

    #[test]
    fn header_parsing() {
        let enc = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        let t = format!(
            "{}.{}.",
            enc(r#"{"alg":"none"}"#),
            enc(r#"{"role":"service_role"}"#)
        );
        assert_eq!(header_alg(&t).unwrap(), "none");
        let t = format!("{}.e30.x", enc("[]"));
        assert!(matches!(header_alg(&t), Err(AuthError::Malformed(_))));
    }
}
