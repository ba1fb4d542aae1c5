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

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use iac_core::{AuthError, AuthVerifier, Principal};
use jsonwebtoken::DecodingKey;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::secret::Secret;

mod config;
mod confirm;
mod jwks;
mod jwt;

pub use config::{SupabaseConfig, SupabaseConfigError};
use jwks::JwksCache;
use jwt::insecure_sub;

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
            claims: serde_json::Map::new(),
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

#[cfg(test)]
mod tests;
