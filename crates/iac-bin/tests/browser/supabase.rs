//! A stand-in Supabase Auth (GoTrue) for the browser tests: a small axum server that publishes
//! a JWKS, issues real ES256-signed access tokens for one user on the password grant, rotates
//! refresh tokens on the refresh grant (an old refresh token is refused, like GoTrue's reuse
//! detection), answers 400 `invalid_credentials` to a wrong password, and confirms its own
//! tokens on `GET /auth/v1/user`. The anon key is checked on the token endpoint.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use iac_backends::auth::testkit::{self, TestKey};
use serde_json::{Value, json};

pub const ANON_KEY: &str = "sb_publishable_console_test_anon";
pub const SERVICE_KEY: &str = "sb_secret_console_test_service";
pub const USER_ID: &str = "6b1f2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d";

struct Inner {
    key: TestKey,
    issuer: String,
    email: String,
    password: String,
    /// Lifetime of issued access tokens.
    ttl: i64,
    refresh_tokens: HashSet<String>,
    access_tokens: HashSet<String>,
    /// Every access and refresh token issued, in order (spent ones too).
    issued: Vec<String>,
    /// How many refresh grants succeeded.
    refreshes: usize,
    /// How many password grants failed.
    failed_sign_ins: usize,
}

#[derive(Clone)]
pub struct StandIn {
    inner: Arc<Mutex<Inner>>,
    pub url: String,
    task: Arc<tokio::task::JoinHandle<()>>,
}

impl StandIn {
    /// Starts the stand-in for one user; access tokens live `ttl` seconds.
    pub async fn start(email: &str, password: &str, ttl: i64) -> StandIn {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let inner = Arc::new(Mutex::new(Inner {
            key: TestKey::es256("console-test-key"),
            issuer: format!("{url}/auth/v1"),
            email: email.to_string(),
            password: password.to_string(),
            ttl,
            refresh_tokens: HashSet::new(),
            access_tokens: HashSet::new(),
            issued: Vec::new(),
            refreshes: 0,
            failed_sign_ins: 0,
        }));
        let app = Router::new()
            .route("/auth/v1/.well-known/jwks.json", get(jwks))
            .route("/auth/v1/token", post(token))
            .route("/auth/v1/user", get(user))
            .with_state(inner.clone());
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        StandIn {
            inner,
            url,
            task: Arc::new(task),
        }
    }

    pub fn refreshes(&self) -> usize {
        self.inner.lock().unwrap().refreshes
    }

    /// Every access and refresh token issued so far, spent or not.
    pub fn issued_tokens(&self) -> Vec<String> {
        self.inner.lock().unwrap().issued.clone()
    }

    pub fn failed_sign_ins(&self) -> usize {
        self.inner.lock().unwrap().failed_sign_ins
    }
}

impl Drop for StandIn {
    fn drop(&mut self) {
        if Arc::strong_count(&self.task) == 1 {
            self.task.abort();
        }
    }
}

type St = State<Arc<Mutex<Inner>>>;

async fn jwks(State(s): St) -> Json<Value> {
    Json(testkit::jwks(&[&s.lock().unwrap().key]))
}

fn gotrue_error(status: StatusCode, code: &str, msg: &str) -> Response {
    (
        status,
        Json(json!({"code": status.as_u16(), "error_code": code, "msg": msg})),
    )
        .into_response()
}

fn issue(s: &mut Inner) -> Value {
    let mut claims = testkit::user_claims(&s.issuer, USER_ID, "authenticated", s.ttl);
    claims["email"] = json!(s.email);
    let access = s.key.sign(&claims);
    let refresh = uuid::Uuid::new_v4().simple().to_string();
    s.access_tokens.insert(access.clone());
    s.refresh_tokens.insert(refresh.clone());
    s.issued.push(access.clone());
    s.issued.push(refresh.clone());
    json!({
        "access_token": access,
        "token_type": "bearer",
        "expires_in": s.ttl,
        "expires_at": testkit::now() + s.ttl,
        "refresh_token": refresh,
        "user": {"id": USER_ID, "email": s.email, "role": "authenticated"},
    })
}

async fn token(
    State(s): St,
    headers: HeaderMap,
    Query(q): Query<std::collections::HashMap<String, String>>,
    Json(body): Json<Value>,
) -> Response {
    if headers.get("apikey").and_then(|v| v.to_str().ok()) != Some(ANON_KEY) {
        return gotrue_error(StatusCode::UNAUTHORIZED, "no_api_key", "Invalid API key");
    }
    let mut s = s.lock().unwrap();
    match q.get("grant_type").map(String::as_str) {
        Some("password") => {
            if body["email"] == json!(s.email) && body["password"] == json!(s.password) {
                Json(issue(&mut s)).into_response()
            } else {
                s.failed_sign_ins += 1;
                gotrue_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_credentials",
                    "Invalid login credentials",
                )
            }
        }
        Some("refresh_token") => {
            let Some(rt) = body["refresh_token"].as_str() else {
                return gotrue_error(
                    StatusCode::BAD_REQUEST,
                    "validation_failed",
                    "refresh_token missing",
                );
            };
            if !s.refresh_tokens.remove(rt) {
                return gotrue_error(
                    StatusCode::BAD_REQUEST,
                    "refresh_token_not_found",
                    "Invalid Refresh Token: Refresh Token Not Found",
                );
            }
            s.refreshes += 1;
            Json(issue(&mut s)).into_response()
        }
        _ => gotrue_error(
            StatusCode::BAD_REQUEST,
            "validation_failed",
            "unsupported grant_type",
        ),
    }
}

async fn user(State(s): St, headers: HeaderMap) -> Response {
    let s = s.lock().unwrap();
    let ok_key = headers.get("apikey").and_then(|v| v.to_str().ok()) == Some(SERVICE_KEY);
    let token = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default();
    if !ok_key || !s.access_tokens.contains(token) {
        return gotrue_error(StatusCode::UNAUTHORIZED, "bad_jwt", "invalid JWT");
    }
    Json(json!({"id": USER_ID, "email": s.email, "role": "authenticated", "aud": "authenticated"}))
        .into_response()
}
