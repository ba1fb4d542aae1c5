//! `[auth.supabase]` in `iac.toml`: [`SupabaseConfig`] (filled from the `SUPABASE_*` environment
//! variables by [`SupabaseConfig::apply_env`]) and [`SupabaseConfigError`].

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::*;

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
    /// The project's anon (publishable) key (`SUPABASE_ANON_KEY`): the `apikey` the console
    /// sends with its sign-in and refresh calls to `/auth/v1/token`. Not a credential for the
    /// API; only needed for password sign-in in the console.
    pub anon_key: Option<Secret>,
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
    #[serde(with = "iac_core::duration")]
    pub jwks_cache_ttl: Duration,
    /// Minimum time between two JWKS fetches triggered by unknown `kid`s.
    #[serde(with = "iac_core::duration")]
    pub min_refetch_interval: Duration,
    /// How long a positive Supabase confirmation is reused.
    #[serde(with = "iac_core::duration")]
    pub confirm_cache_ttl: Duration,
    /// Timeout of every call to Supabase.
    #[serde(with = "iac_core::duration")]
    pub http_timeout: Duration,
    /// Leeway for `exp` and `nbf`.
    #[serde(with = "iac_core::duration")]
    pub clock_skew: Duration,
}

impl Default for SupabaseConfig {
    fn default() -> Self {
        SupabaseConfig {
            url: None,
            service_role_key: None,
            anon_key: None,
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
    /// Fills `url`, `service_role_key`, `anon_key` and `jwt_secret` from `SUPABASE_URL`,
    /// `SUPABASE_SERVICE_ROLE_KEY`, `SUPABASE_ANON_KEY` and `SUPABASE_JWT_SECRET` as returned by `lookup` (pass
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
        if let Some(v) = get("SUPABASE_ANON_KEY") {
            self.anon_key = Some(Secret::new(v));
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

impl SupabaseConfig {
    /// Checks `anon_key` for the console's sign-in: it needs `url`, and is one token (it is
    /// sent as a header). `Ok(None)`: no anon key, so no password sign-in.
    pub fn console_sign_in(&self) -> Result<Option<(String, Secret)>, SupabaseConfigError> {
        let Some(key) = self
            .anon_key
            .as_ref()
            .filter(|k| !k.expose().trim().is_empty())
        else {
            return Ok(None);
        };
        if key
            .expose()
            .chars()
            .any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(SupabaseConfigError(
                "anon_key (SUPABASE_ANON_KEY) contains spaces or control characters; expected the project's anon key as one token".into(),
            ));
        }
        let Some(url) = self.url.as_deref().map(str::trim).filter(|u| !u.is_empty()) else {
            return Err(SupabaseConfigError(
                "anon_key (SUPABASE_ANON_KEY) is set but url (SUPABASE_URL) is not; password sign-in needs both".into(),
            ));
        };
        Ok(Some((url.trim_end_matches('/').to_string(), key.clone())))
    }
}

/// A [`SupabaseConfig`] that cannot work; the message names the setting and what it needs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("supabase auth config: {0}")]
pub struct SupabaseConfigError(pub String);
