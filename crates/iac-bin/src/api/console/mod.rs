//! The web console served by `iac serve` at `/`, on the same listeners as the admin API (TCP and
//! the Unix socket): server-rendered minijinja pages ([`pages`]) plus one small script and one
//! stylesheet ([`assets`]), all embedded in the binary (no CDN, no Node).
//!
//! Who is signed in (`Console::session_caller`): on the Unix socket, the operator (peer uid, as for the
//! API); on TCP, the session behind the `iac_session` cookie ([`session`]), whose Supabase access
//! token is verified by the same [`iac_core::AuthVerifier`] as bearer tokens on every request and
//! refreshed with its refresh token ([`gotrue`]) shortly before it expires. The per-project grants
//! of [`crate::api::authz`] apply to every page and action. The pages' scripts call the admin
//! API with the same cookie (`routes::authenticate` accepts it when no `Authorization` header is
//! sent); every state-changing request made with the cookie must carry the console's own `Origin`
//! (403 `origin_mismatch` otherwise), on the API and on the console's own forms alike.

pub mod assets;
pub mod gotrue;
pub mod pages;
pub mod sealed;
pub mod session;

use std::sync::Arc;
use std::time::Duration;

use axum::http::HeaderMap;
use iac_backends::secret::Secret;
use iac_core::AuthError;
use serde::{Deserialize, Serialize};

use crate::api::authz::Caller;
use crate::api::state::AppState;
use gotrue::{GoTrue, GrantError};
use session::{SessionStore, Tokens, now_secs};

/// What the console needs of `[supabase]` for password sign-in (copied there by the binary; not
/// a `[serve]` key): the project URL and its anon key (`SUPABASE_ANON_KEY` or
/// `[supabase] anon_key`). Without both, the sign-in page offers only a pasted access token.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsoleAuth {
    /// The Supabase project URL (`[supabase] url`).
    pub supabase_url: Option<String>,
    /// The anon key GoTrue's password grant takes.
    pub anon_key: Option<Secret>,
    /// Timeout of every call to Supabase Auth (`[supabase] http_timeout`).
    #[serde(with = "iac_core::duration")]
    pub http_timeout: Duration,
}

/// The console's state, shared by its pages and by the API's cookie authentication.
pub struct Console {
    pub(crate) sessions: SessionStore,
    gotrue: Option<GoTrue>,
    templates: minijinja::Environment<'static>,
    /// `[serve] public_origin`, without a trailing slash.
    pub(crate) public_origin: Option<String>,
    /// Set the cookie's `Secure` attribute (the console is served over TLS, by a proxy).
    pub(crate) secure: bool,
}

impl Console {
    /// The console for `auth` and `public_origin` (checked by [`crate::api::Server::bind`]),
    /// its sessions kept in `rows` too (the history database) so they outlive the process.
    pub fn new(
        auth: &ConsoleAuth,
        public_origin: Option<&str>,
        rows: Option<Arc<dyn iac_core::history::SessionStore>>,
    ) -> Result<Console, String> {
        let gotrue = match (&auth.supabase_url, &auth.anon_key) {
            (Some(url), Some(key)) if !key.is_empty() => Some(GoTrue::new(
                url,
                key.clone(),
                if auth.http_timeout.is_zero() {
                    Duration::from_secs(5)
                } else {
                    auth.http_timeout
                },
            )?),
            _ => None,
        };
        let public_origin = public_origin.map(|o| o.trim_end_matches('/').to_string());
        Ok(Console {
            sessions: SessionStore::new(rows),
            gotrue,
            templates: pages::templates(),
            secure: public_origin
                .as_deref()
                .is_some_and(|o| o.starts_with("https://")),
            public_origin,
        })
    }

    /// Whether the sign-in form can take an email and a password.
    pub fn password_sign_in(&self) -> bool {
        self.gotrue.is_some()
    }

    /// The caller behind session `id`: refreshes its access token when it expires within a
    /// minute (and a refresh token is there), then verifies it with `st.auth`. A session that
    /// cannot be refreshed or verified any more is forgotten.
    pub(crate) async fn session_caller(
        &self,
        st: &AppState,
        id: &str,
    ) -> Result<Caller, AuthError> {
        let Some(session) = self.sessions.get(id).await else {
            return Err(AuthError::Invalid(
                "the console session has ended (signed out or expired); sign in again".into(),
            ));
        };
        let mut t = session.tokens.lock().await;
        if t.expiring(now_secs())
            && let (Some(refresh), Some(gt)) = (t.refresh.clone(), &self.gotrue)
        {
            match gt.refresh(&refresh).await {
                Ok(fresh) => {
                    *t = fresh;
                    if !self.sessions.refreshed(id, &session, &t).await {
                        return Err(AuthError::Invalid(
                            "the console session has ended (signed out); sign in again".into(),
                        ));
                    }
                }
                Err(GrantError::Refused(m)) => {
                    drop(t);
                    self.sessions.remove(id).await;
                    return Err(AuthError::Invalid(format!(
                        "the console session could not be refreshed ({m}); sign in again"
                    )));
                }
                // Still valid for up to a minute: try the current token below.
                Err(GrantError::Unavailable(m)) => {
                    tracing::warn!("console session refresh failed: {m}");
                }
            }
        }
        let access = t.access.clone();
        drop(t);
        if access.is_empty() {
            // Brought back from the store without an access token: Supabase Auth did not
            // answer the refresh (try again later), or password sign-in is no longer configured.
            if self.gotrue.is_none() {
                self.sessions.remove(id).await;
                return Err(AuthError::Invalid(
                    "the console session cannot be renewed: password sign-in is not configured on this server any more; sign in again".into(),
                ));
            }
            return Err(AuthError::Unavailable(
                "the console session could not be renewed: Supabase Auth did not answer; try again"
                    .into(),
            ));
        }
        match st.auth.verify(&access).await {
            Ok(p) => {
                let caller = Caller::Token(p);
                let who = crate::api::deployments::who(&caller);
                if who != session.principal {
                    tracing::warn!(
                        "console session of {:?} renewed as {who:?}; the session is ended",
                        session.principal
                    );
                    self.sessions.remove(id).await;
                    return Err(AuthError::Invalid(
                        "the console session's renewed token names someone else; sign in again"
                            .into(),
                    ));
                }
                Ok(caller)
            }
            Err(e @ AuthError::Unavailable(_)) => Err(e),
            Err(e) => {
                self.sessions.remove(id).await;
                Err(e)
            }
        }
    }

    /// Signs in with an email and a password (GoTrue's password grant), verifies the token like
    /// any other and starts a session; returns the cookie value.
    pub(crate) async fn sign_in_password(
        &self,
        st: &AppState,
        email: &str,
        password: &str,
    ) -> Result<String, String> {
        let gt = self.gotrue.as_ref().ok_or(
            "password sign-in is not configured on this server (SUPABASE_URL and SUPABASE_ANON_KEY); paste an access token instead",
        )?;
        let tokens = gt.password(email, password).await.map_err(|e| match e {
            GrantError::Refused(m) => format!("Sign-in failed: {m}."),
            e => e.to_string(),
        })?;
        self.start(st, tokens).await
    }

    /// Starts a session from a pasted access token (verified like a bearer token).
    pub(crate) async fn sign_in_token(&self, st: &AppState, token: &str) -> Result<String, String> {
        let token = token.trim();
        if token.is_empty() || token.contains(char::is_whitespace) {
            return Err("expected one access token (a JWT, no spaces)".into());
        }
        self.start(
            st,
            Tokens {
                access: token.to_string(),
                refresh: None,
                expires_at: None,
            },
        )
        .await
    }

    async fn start(&self, st: &AppState, mut tokens: Tokens) -> Result<String, String> {
        let p = st
            .auth
            .verify(&tokens.access)
            .await
            .map_err(|e| format!("The token was refused: {e}."))?;
        if tokens.expires_at.is_none() {
            tokens.expires_at = p.claims.get("exp").and_then(|v| v.as_u64());
        }
        let who = crate::api::deployments::who(&Caller::Token(p));
        Ok(self.sessions.create(tokens, who).await)
    }

    /// Checks the `Origin` of a state-changing request made with the session cookie.
    pub(crate) fn check_origin(&self, headers: &HeaderMap) -> Result<(), String> {
        session::check_origin(headers, self.public_origin.as_deref())
    }
}
