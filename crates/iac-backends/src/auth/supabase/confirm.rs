//! Upstream confirmation: asks Supabase (`/auth/v1/user`, or an admin call for service-role
//! tokens) whether a locally valid token is still good, caching positive answers; Supabase
//! unreachable fails closed.

use std::time::{Duration, Instant};

use iac_core::AuthError;
use serde::Deserialize;

use super::*;

/// Most confirmations remembered at once; the cache is pruned when it grows past this.
pub(super) const CONFIRM_CACHE_MAX: usize = 4096;

/// Most bytes of a user answer read (a user object is a few KiB; more is refused, unread).
pub(super) const USER_MAX_BYTES: usize = 256 * 1024;

impl SupabaseVerifier {
    /// Asks Supabase whether the token is still good. Positive answers are cached.
    pub(super) async fn confirm_upstream(
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
            let body = crate::http_body::read_capped(resp, USER_MAX_BYTES)
                .await
                .map_err(|e| AuthError::Unavailable(format!("Supabase {what}: {e}")))?;
            let user: User = serde_json::from_slice(&body).map_err(|_| {
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
