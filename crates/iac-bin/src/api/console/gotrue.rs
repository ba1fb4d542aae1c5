//! The console's client of Supabase Auth (GoTrue): the password grant of the sign-in form and the
//! refresh grant that keeps a session's access token fresh, both
//! `POST <url>/auth/v1/token?grant_type=…` with the project's anon key as `apikey`. Tokens and
//! passwords are never logged; GoTrue's refusal becomes a message for the sign-in page.

use std::time::Duration;

use iac_backends::secret::Secret;
use serde::Deserialize;

use super::session::{Tokens, now_secs};

/// Most bytes of a GoTrue token or error answer read (a few KiB in practice); past it the
/// sign-in fails as unavailable and the rest is never read.
const GOTRUE_MAX_BYTES: usize = 256 * 1024;

/// Why a grant failed.
#[derive(Debug, thiserror::Error)]
pub enum GrantError {
    /// GoTrue refused the credentials (4xx); the message is GoTrue's own, or a generic one.
    #[error("{0}")]
    Refused(String),
    /// GoTrue could not be reached or answered something unexpected.
    #[error("Supabase Auth is unavailable: {0}")]
    Unavailable(String),
}

/// A configured GoTrue endpoint.
pub struct GoTrue {
    /// `<url>/auth/v1/token`.
    token_url: String,
    anon_key: Secret,
    http: reqwest::Client,
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    #[serde(default)]
    refresh_token: Option<String>,
    #[serde(default)]
    expires_in: Option<u64>,
    #[serde(default)]
    expires_at: Option<u64>,
}

#[derive(Deserialize, Default)]
struct GoTrueError {
    #[serde(default)]
    error_description: Option<String>,
    #[serde(default)]
    msg: Option<String>,
    #[serde(default)]
    message: Option<String>,
}

impl GoTrue {
    /// A client of `<url>/auth/v1` with `anon_key`; `timeout` bounds every call.
    pub fn new(url: &str, anon_key: Secret, timeout: Duration) -> Result<GoTrue, String> {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
        Ok(GoTrue {
            token_url: format!("{}/auth/v1/token", url.trim_end_matches('/')),
            anon_key,
            http,
        })
    }

    /// The password grant (the sign-in form).
    pub async fn password(&self, email: &str, password: &str) -> Result<Tokens, GrantError> {
        self.grant(
            "password",
            serde_json::json!({ "email": email, "password": password }),
        )
        .await
    }

    /// The refresh grant (a session whose access token is about to expire).
    pub async fn refresh(&self, refresh_token: &str) -> Result<Tokens, GrantError> {
        self.grant(
            "refresh_token",
            serde_json::json!({ "refresh_token": refresh_token }),
        )
        .await
    }

    async fn grant(&self, grant: &str, body: serde_json::Value) -> Result<Tokens, GrantError> {
        let resp = self
            .http
            .post(format!("{}?grant_type={grant}", self.token_url))
            .header("apikey", self.anon_key.expose())
            .json(&body)
            .send()
            .await
            .map_err(|e| GrantError::Unavailable(e.without_url().to_string()))?;
        let status = resp.status();
        let bytes = iac_backends::http_body::read_capped(resp, GOTRUE_MAX_BYTES)
            .await
            .map_err(|e| GrantError::Unavailable(e.to_string()))?;
        if status.is_client_error() {
            let e: GoTrueError = serde_json::from_slice(&bytes).unwrap_or_default();
            let msg = e
                .error_description
                .or(e.msg)
                .or(e.message)
                .filter(|m| !m.trim().is_empty())
                .unwrap_or_else(|| format!("Supabase Auth refused the sign-in (HTTP {status})"));
            return Err(GrantError::Refused(msg));
        }
        if !status.is_success() {
            return Err(GrantError::Unavailable(format!("HTTP {status}")));
        }
        let t: TokenResponse = serde_json::from_slice(&bytes)
            .map_err(|e| GrantError::Unavailable(format!("unexpected token response ({e})")))?;
        let expires_at = t
            .expires_at
            .or_else(|| t.expires_in.map(|s| now_secs() + s));
        Ok(Tokens {
            access: t.access_token,
            refresh: t.refresh_token.filter(|r| !r.is_empty()),
            expires_at,
        })
    }
}
