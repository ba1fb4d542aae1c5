//! The project's JWKS: fetched from `<url>/auth/v1/.well-known/jwks.json`, cached for
//! `jwks_cache_ttl`, refetched (rate limited) when an unknown `kid` shows up; only asymmetric keys
//! with a `kid` and an algorithm we verify are kept.

use std::collections::{HashMap, HashSet};
use std::time::Instant;

use iac_core::AuthError;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm};
use jsonwebtoken::{Algorithm, DecodingKey};
use serde::Deserialize;

use super::*;

/// An asymmetric key from the JWKS, with the one algorithm it verifies.
#[derive(Clone)]
pub(super) struct JwksKey {
    pub(super) alg: Algorithm,
    pub(super) key: DecodingKey,
}

#[derive(Default)]
pub(super) struct JwksCache {
    pub(super) keys: HashMap<String, JwksKey>,
    pub(super) fetched_at: Option<Instant>,
    /// Last fetch attempt and its error, for the refetch rate limit.
    pub(super) last_attempt: Option<(Instant, Option<String>)>,
}

/// Largest JWKS document read.
pub(super) const JWKS_MAX_BYTES: usize = 256 * 1024;

/// Parses a JWKS document into `kid → key`, keeping only asymmetric keys with a `kid` and an
/// algorithm we verify. Unusable entries are skipped (logged), not fatal.
pub(super) fn parse_jwks(body: &[u8]) -> Result<HashMap<String, JwksKey>, String> {
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

impl SupabaseVerifier {
    /// The JWKS key named `kid`, fetching the JWKS when it is stale or lacks the key.
    pub(super) async fn jwks_key(&self, kid: &str) -> Result<JwksKey, AuthError> {
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

    pub(super) async fn cached_key(&self, kid: &str) -> Option<JwksKey> {
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

    pub(super) async fn fetch_jwks(&self, url: &str) -> Result<HashMap<String, JwksKey>, String> {
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
        // Read in chunks and dropped past the cap: never more than the cap in memory.
        let body = crate::http_body::read_capped(resp, JWKS_MAX_BYTES)
            .await
            .map_err(|e| match e {
                crate::http_body::BodyError::TooLarge { .. } => {
                    format!("GET {url}: JWKS larger than {JWKS_MAX_BYTES} bytes")
                }
                crate::http_body::BodyError::Read(e) => format!("GET {url}: {e}"),
            })?;
        parse_jwks(&body).map_err(|e| format!("GET {url}: {e}"))
    }
}
