//! The HTTP routes of the admin API, their OpenAPI annotations (collected by utoipa-axum, so the
//! document is generated from the very routes the router serves), the authentication middleware
//! and `router`, which assembles routes + gRPC + layers.
//!
//! Authentication (middleware `authenticate`), which attaches a [`Caller`] to the request:
//! * TCP: `Authorization: Bearer <token>` checked by the [`AuthVerifier`]; `GET /health`,
//!   `GET /openapi.json` and gRPC `HealthCheck` are open (liveness and discovery; they name no
//!   version of anything).
//! * Unix socket: the peer's uid (from `SO_PEERCRED`) must equal the server's uid; no token is
//!   needed or looked at. Filesystem permissions (0600) already keep other users out; the uid
//!   check also covers a socket whose mode was loosened, or root-owned clients of a non-root
//!   server. Requests from any other uid get 403, on every route. The socket's peer is the
//!   operator, who may use every project.
//! * TCP without `Authorization`: the console's `iac_session` cookie, whose session's access
//!   token is verified by the same [`AuthVerifier`]; a state-changing request (not GET/HEAD/
//!   OPTIONS) made with it must carry the console's `Origin` (403 `origin_mismatch`).
//! * A client over `[serve] auth_failure_limit` failures gets 429 with `Retry-After`
//!   ([`super::ratelimit`]) before its credential is looked at.
//!
//! Authorization: each handler checks the [`Caller`] against the project it touches
//! ([`super::authz`]): 403 `project_forbidden` for a deploy, destroy, service listing, log
//! stream or deployment record of a project the caller may not use; `GET /deployments` lists
//! only the projects the caller may read.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Extension;
use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use iac_core::{AuthError, AuthVerifier, LogQuery, Principal, ServiceName};
use tokio_util::sync::CancellationToken;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::ServeConfig;
use super::authz::{AccessPolicy, Action, Caller};
use super::backend::{ControlPlaneBackend, PlanPreview, ServiceStatus};
use super::deployments::{DeploymentPage, DeploymentRecord, DeploymentSummary, Deployments, who};
use super::error::{AllowTable, ApiError, ErrorBody, ErrorResponse, json_errors};
use super::listen::{Peer, check_peer_uid};
use super::ratelimit::{ClientKey, FailureLimiter};
use super::schema::*;
use super::state::{AppState, check_remote_slug, project_or_default, validate_deploy};
use crate::api::console::session;

/// Path of the gRPC health method, open like `GET /health`.
pub const GRPC_HEALTH_PATH: &str = "/iac.controlplane.v1.ControlPlane/HealthCheck";
/// Prefix of every gRPC method of the control plane.
pub const GRPC_PREFIX: &str = "/iac.controlplane.v1.ControlPlane/";

/// The documented 429 of every authenticated route.
const TOO_MANY: &str = "This client failed authentication `[serve] auth_failure_limit` times within `auth_failure_window`; `Retry-After` says when to try again (`too_many_auth_failures`)";

#[derive(OpenApi)]
#[openapi(
    info(
        title = "iac admin API",
        description = "Deploy git repositories as mTLS-meshed services. TCP requests need `Authorization: Bearer <Supabase JWT or sb_secret key>`; the Unix socket authorizes by peer uid. Every error is `{\"error\": {\"code\", \"message\"}}`."
    ),
    modifiers(&BearerScheme),
    components(schemas(ErrorResponse, ErrorBody, StreamItemSchema, DeployEventSchema, DeployReportSchema))
)]
struct ApiDoc;

struct BearerScheme;

impl Modify for BearerScheme {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("Supabase JWT (ES256/RS256/HS256) or sb_secret_ key")
                    .build(),
            ),
        );
    }
}

/// The documented routes (everything but gRPC and the fallbacks).
fn openapi_router() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(health))
        .routes(routes!(openapi_json))
        .routes(routes!(deploy))
        .routes(routes!(list_deployments))
        .routes(routes!(get_deployment))
        .routes(routes!(list_services))
        .routes(routes!(service_logs))
        .routes(routes!(destroy))
        .routes(routes!(list_refs))
        .routes(routes!(plan))
}

/// The OpenAPI document of the routes `router` serves, as served.
pub fn openapi() -> serde_json::Value {
    document(&openapi_router().split_for_parts().1)
}

/// utoipa's document with what utoipa cannot express filled in by hand: the `POST /deploy` body
/// (a `oneOf` with patterns and `propertyNames`, see [`deploy_request_schema`]) and the UUID
/// format of `{id}` (a non-UUID id is a 400, so the document must not call it valid).
fn document(doc: &utoipa::openapi::OpenApi) -> serde_json::Value {
    let mut v = serde_json::to_value(doc).expect("the OpenAPI document serializes");
    v["components"]["schemas"]["DeployRequest"] = deploy_request_schema();
    if let Some(params) = v["paths"]["/deployments/{id}"]["get"]["parameters"].as_array_mut() {
        for p in params.iter_mut().filter(|p| p["name"] == "id") {
            p["schema"] = serde_json::json!({"type": "string", "format": "uuid"});
        }
    }
    // `GET /refs?slug=`: the slugs `POST /deploy` takes (local ones only where allowed).
    if let Some(params) = v["paths"]["/refs"]["get"]["parameters"].as_array_mut() {
        for p in params.iter_mut().filter(|p| p["name"] == "slug") {
            p["schema"] = slug_schema();
        }
    }
    if let Some(params) = v["paths"]["/services/{name}/logs"]["get"]["parameters"].as_array_mut() {
        for p in params.iter_mut().filter(|p| p["name"] == "name") {
            p["schema"] = serde_json::json!({"type": "string", "pattern": DNS_LABEL_PATTERN});
        }
    }
    v
}

/// Builds the complete router: documented routes, gRPC `ControlPlane`, JSON fallbacks, auth,
/// body limit and the error-shape layer.
pub(crate) fn router(
    backend: Arc<dyn ControlPlaneBackend>,
    auth: Arc<dyn AuthVerifier>,
    access: Arc<AccessPolicy>,
    deployments: Deployments,
    cfg: Arc<ServeConfig>,
    shutdown: CancellationToken,
    console: Arc<crate::api::console::Console>,
) -> axum::Router {
    let (routes, doc) = openapi_router().split_for_parts();
    let allow = Arc::new(AllowTable::from_openapi(&doc));
    let state = AppState {
        backend,
        auth,
        deployments,
        cfg: cfg.clone(),
        openapi: Arc::new(document(&doc)),
        shutdown,
        server_uid: super::listen::current_uid(),
        started: Instant::now(),
        access,
        failures: Arc::new(FailureLimiter::new(
            cfg.auth_failure_limit,
            cfg.auth_failure_window,
        )),
        console,
    };
    let grpc =
        iac_proto::ControlPlaneServer::new(super::grpc::GrpcControlPlane::new(state.clone()))
            .max_decoding_message_size(cfg.max_body_bytes);
    routes
        .route_service(&format!("{GRPC_PREFIX}{{*method}}"), grpc)
        .fallback(fallback)
        .layer(DefaultBodyLimit::max(cfg.max_body_bytes))
        .layer(middleware::from_fn_with_state(state.clone(), authenticate))
        .layer(middleware::from_fn_with_state(allow, json_errors))
        .with_state(state.clone())
        .merge(crate::api::console::pages::router().with_state(state.clone()))
        .layer(middleware::from_fn_with_state(state, unix_browser_guard))
}

/// Every route, the console's included: a browser's request on the Unix socket is refused unless
/// it is the operator's own page ([`session::unix_browser_ok`]: no CSRF, no DNS rebinding).
async fn unix_browser_guard(State(st): State<AppState>, req: Request, next: Next) -> Response {
    let unix = matches!(
        req.extensions().get::<ConnectInfo<Peer>>().map(|c| &c.0),
        Some(Peer::Unix { .. })
    );
    if unix
        && let Err(why) =
            session::unix_browser_ok(req.headers(), st.console.public_origin.as_deref())
    {
        tracing::warn!("unix socket request refused: {why}");
        return ApiError::new(403, "origin_mismatch", why).into_response();
    }
    next.run(req).await
}

fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"))
}

/// Unknown route: JSON 404 (gRPC clients get UNIMPLEMENTED).
async fn fallback(req: Request) -> Response {
    if is_grpc(req.headers()) {
        return tonic::Status::unimplemented(format!("no gRPC method {}", req.uri().path()))
            .into_http();
    }
    ApiError::not_found(format!(
        "no route for {} {}",
        req.method(),
        req.uri().path()
    ))
    .into_response()
}

fn reject(e: ApiError, grpc: bool) -> Response {
    if grpc {
        e.to_grpc().into_http()
    } else {
        e.into_response()
    }
}

/// Authenticates every request except the open ones and attaches its [`Caller`]; see the
/// module docs.
pub(crate) async fn authenticate(
    State(st): State<AppState>,
    mut req: Request,
    next: Next,
) -> Response {
    let grpc = is_grpc(req.headers());
    let peer = req
        .extensions()
        .get::<ConnectInfo<Peer>>()
        .map(|c| c.0.clone());
    let path = req.uri().path();
    let open = path == "/health" || path == "/openapi.json" || path == GRPC_HEALTH_PATH;
    let caller = match peer {
        Some(Peer::Unix { uid, pid, .. }) => {
            let key = ClientKey::Uid(uid);
            if let Some(wait) = st.failures.blocked(&key, Instant::now()) {
                tracing::warn!(peer_uid = ?uid, peer_pid = ?pid, "unix socket request refused: too many failures");
                return too_many_failures(&st.failures, wait, grpc);
            }
            match check_peer_uid(uid, st.server_uid) {
                Ok(()) => Caller::Operator(Principal {
                    subject: format!("uid:{}", st.server_uid),
                    role: "local".to_string(),
                    email: None,
                    method: format!(
                        "unix socket peer uid (pid {})",
                        pid.map(|p| p.to_string()).unwrap_or_else(|| "?".into())
                    ),
                    claims: Default::default(),
                }),
                Err(why) => {
                    st.failures.failed(key, Instant::now());
                    tracing::warn!(peer_uid = ?uid, peer_pid = ?pid, "unix socket request refused: {why}");
                    return reject(ApiError::new(403, "forbidden", why), grpc);
                }
            }
        }
        Some(Peer::Tcp(addr)) => {
            if open {
                return next.run(req).await;
            }
            let key = ClientKey::of_ip(addr.ip());
            if let Some(wait) = st.failures.blocked(&key, Instant::now()) {
                tracing::info!(peer = %addr, path, "request refused: too many failed authentications");
                return too_many_failures(&st.failures, wait, grpc);
            }
            // The console's session cookie stands in for the bearer token when there is no
            // `Authorization` header; a state-changing request made with it must come from the
            // console's own origin.
            let cookie = if req.headers().contains_key(header::AUTHORIZATION) {
                None
            } else {
                session::cookie_id(req.headers(), st.console.secure)
            };
            let verified = match cookie {
                Some(id) => {
                    if session::state_changing(req.method())
                        && let Err(why) = st.console.check_origin(req.headers())
                    {
                        tracing::info!(peer = %addr, path, "request refused: {why}");
                        return reject(ApiError::new(403, "origin_mismatch", why), grpc);
                    }
                    st.console
                        .session_caller(&st, &id)
                        .await
                        .map(|c| c.principal().clone())
                }
                None => match bearer(req.headers()) {
                    Ok(token) => st.auth.verify(&token).await,
                    Err(e) => Err(e),
                },
            };
            match verified {
                Ok(p) => Caller::Token(p),
                Err(e) => {
                    if !matches!(e, AuthError::Unavailable(_))
                        && st.failures.failed(key, Instant::now()).is_some()
                    {
                        tracing::warn!(peer = %addr, "too many failed authentications: refusing this client for auth_failure_window");
                    }
                    tracing::info!(peer = %addr, path, reason = %e, "request refused");
                    return reject(e.into(), grpc);
                }
            }
        }
        None => {
            return reject(
                ApiError::internal("connection info missing; serve the router through api::serve"),
                grpc,
            );
        }
    };
    req.extensions_mut().insert(caller);
    next.run(req).await
}

/// 429 with `Retry-After` (whole seconds, rounded up) for a client over the failure limit.
fn too_many_failures(limiter: &FailureLimiter, wait: Duration, grpc: bool) -> Response {
    let (limit, window) = limiter.limits();
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    let mut resp = reject(
        ApiError::new(
            429,
            "too_many_auth_failures",
            format!(
                "this client failed authentication {limit} times within {}; retry in {secs} s",
                humantime::format_duration(window)
            ),
        ),
        grpc,
    );
    resp.headers_mut().insert(
        header::RETRY_AFTER,
        HeaderValue::from_str(&secs.to_string()).expect("digits are a header value"),
    );
    resp
}

/// The bearer token of `Authorization`, or why there is none. The token is never logged.
fn bearer(headers: &HeaderMap) -> Result<String, AuthError> {
    let mut values = headers.get_all(header::AUTHORIZATION).iter();
    let Some(v) = values.next() else {
        return Err(AuthError::Missing);
    };
    if values.next().is_some() {
        return Err(AuthError::Malformed(
            "more than one Authorization header".into(),
        ));
    }
    let v = v
        .to_str()
        .map_err(|_| AuthError::Malformed("Authorization header is not ASCII".into()))?;
    let (scheme, token) = v
        .trim()
        .split_once(' ')
        .ok_or_else(|| AuthError::Malformed("expected `Authorization: Bearer <token>`".into()))?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(AuthError::Malformed("expected the Bearer scheme".into()));
    }
    let token = token.trim();
    if token.is_empty() || token.contains(char::is_whitespace) {
        return Err(AuthError::Malformed(
            "expected `Authorization: Bearer <token>` with one token".into(),
        ));
    }
    Ok(token.to_string())
}

/// Liveness of the control plane and reachability of the container engine. Open to everyone, so
/// it names no version (of iac or of the engine).
#[utoipa::path(get, path = "/health", tag = "system",
    responses((status = 200, description = "The server is alive; `status` says whether the engine answers", body = HealthResponse)))]
async fn health(State(st): State<AppState>) -> Json<HealthResponse> {
    let engine =
        match tokio::time::timeout(st.cfg.engine_ping_timeout, st.backend.engine_ping()).await {
            Ok(Ok(_version)) => EngineHealth {
                reachable: true,
                detail: "answers".to_string(),
            },
            Ok(Err(e)) => EngineHealth {
                reachable: false,
                detail: e,
            },
            Err(_) => EngineHealth {
                reachable: false,
                detail: format!(
                    "no answer within {}",
                    humantime::format_duration(st.cfg.engine_ping_timeout)
                ),
            },
        };
    Json(HealthResponse {
        status: if engine.reachable { "ok" } else { "degraded" }.to_string(),
        uptime_secs: st.started.elapsed().as_secs(),
        engine,
        running_deployments: st.deployments.running(),
    })
}

/// This document.
#[utoipa::path(get, path = "/openapi.json", tag = "system",
    responses((status = 200, description = "OpenAPI 3.1 document of this API", content_type = "application/json")))]
async fn openapi_json(State(st): State<AppState>) -> Json<serde_json::Value> {
    Json((*st.openapi).clone())
}

/// Deploy services. Answers 202 at once and streams the deploy: NDJSON by default, SSE when
/// `Accept: text/event-stream`. Every line but the last is a DeployEvent (`"type": "event"`); the
/// last is the DeployReport (`"type": "report"`), or `"type": "error"` when the deploy could not
/// run. Closing the connection does not stop the deploy; `GET /deployments/{id}` has the outcome.
/// A deploy or destroy of the same project already running → 409 (not queued).
#[utoipa::path(post, path = "/deploy", tag = "deploy", request_body = DeployRequest,
    security(("bearer" = [])),
    responses(
        (status = 202, description = "Accepted; the body streams the deploy",
            headers(("x-deployment-id" = String, description = "Deployment id"), ("location" = String, description = "/deployments/{id}")),
            content((StreamItemSchema = "application/x-ndjson"), (StreamItemSchema = "text/event-stream"))),
        (status = 400, description = "Body is not JSON", body = ErrorResponse),
        (status = 401, description = "Missing or invalid credentials", body = ErrorResponse),
        (status = 403, description = "Authenticated but not allowed: not granted `deploy` on the project (`project_forbidden`), a `path:`/`git+file:` slug while `[serve] allow_local_sources` is off (`local_source_refused`), or an `expose` address that is not loopback (`public_expose_refused`)", body = ErrorResponse),
        (status = 409, description = "A deploy/destroy of this project is running (`conflict`), or two services of the request have the same name (`duplicate_service_name`)", body = ErrorResponse),
        (status = 413, description = "Body larger than max_body_bytes", body = ErrorResponse),
        (status = 415, description = "Content-Type is not application/json", body = ErrorResponse),
        (status = 422, description = "Body does not validate", body = ErrorResponse),
        (status = 429, description = TOO_MANY, body = ErrorResponse),
        (status = 503, description = "Auth provider unreachable, or `max_deployments` deploys are all running", body = ErrorResponse),
    ))]
async fn deploy(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    Json(req): Json<serde_json::Value>,
) -> Result<Response, ApiError> {
    let req: DeployRequest = json_object(req, false)?.unwrap_or_default();
    let (input, repos) = validate_deploy(&st, &caller, req)?;
    let (id, rx) = st
        .deployments
        .start(st.backend.clone(), input, repos, "http", who(&caller))
        .await?;
    let sse = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/event-stream"));
    let items = rx.into_stream();
    let mut resp = if sse {
        let events = items.map(|item| SseEvent::default().event(item.kind()).json_data(&item));
        (
            StatusCode::ACCEPTED,
            Sse::new(events).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))),
        )
            .into_response()
    } else {
        let lines = items.map(|item| Ok::<Bytes, Infallible>(ndjson_line(&item)));
        let mut r = Response::new(Body::from_stream(lines));
        *r.status_mut() = StatusCode::ACCEPTED;
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/x-ndjson"),
        );
        r
    };
    let h = resp.headers_mut();
    h.insert(
        "x-deployment-id",
        HeaderValue::from_str(&id.to_string()).expect("uuid is a header value"),
    );
    h.insert(
        header::LOCATION,
        HeaderValue::from_str(&format!("/deployments/{id}")).expect("path is a header value"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(resp)
}

/// A request body as its documented object type. serde would also build a struct from a JSON
/// array (`[null]` → every field absent); the document says "object", so only an object (or
/// `null` where `null_ok`, meaning `None`) is taken. 422 otherwise, like axum's own rejection.
fn json_object<T: serde::de::DeserializeOwned>(
    v: serde_json::Value,
    null_ok: bool,
) -> Result<Option<T>, ApiError> {
    match v {
        serde_json::Value::Null if null_ok => Ok(None),
        serde_json::Value::Object(_) => serde_json::from_value(v).map(Some).map_err(|e| {
            ApiError::unprocessable(format!(
                "Failed to deserialize the JSON body into the target type: {e}"
            ))
        }),
        other => Err(ApiError::unprocessable(format!(
            "expected a JSON object{} as the body, got {}",
            if null_ok { " (or null)" } else { "" },
            match other {
                serde_json::Value::Null => "null",
                serde_json::Value::Bool(_) => "a boolean",
                serde_json::Value::Number(_) => "a number",
                serde_json::Value::String(_) => "a string",
                serde_json::Value::Array(_) => "an array",
                serde_json::Value::Object(_) => "an object",
            }
        ))),
    }
}

fn ndjson_line<T: serde::Serialize>(v: &T) -> Bytes {
    let mut b = serde_json::to_vec(v).expect("stream items serialize");
    b.push(b'\n');
    Bytes::from(b)
}

/// Deployments and destroys of the projects the caller may read, newest first, from the
/// deployment history (so also those from before a restart, and those of the CLI). Paged:
/// pass `next_cursor` as `cursor` for the next page.
#[utoipa::path(get, path = "/deployments", tag = "deploy", security(("bearer" = [])), params(DeploymentsQuery),
    responses((status = 200, body = DeploymentPageSchema),
        (status = 400, description = "An unknown or malformed query parameter, or a cursor this server did not hand out", body = ErrorResponse),
        (status = 401, body = ErrorResponse),
        (status = 403, description = "`project` names a project the caller may not read (`project_forbidden`)", body = ErrorResponse),
        (status = 422, description = "`project` is not a DNS label, or `limit` is out of range", body = ErrorResponse),
        (status = 429, description = TOO_MANY, body = ErrorResponse),
        (status = 503, description = "The deployment history cannot be read", body = ErrorResponse)))]
async fn list_deployments(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
    Query(q): Query<DeploymentsQuery>,
) -> Result<Json<DeploymentPage>, ApiError> {
    let project = match q.project.as_deref().filter(|p| !p.is_empty()) {
        None => None,
        Some(p) => {
            let p = iac_core::ProjectName::new(p)
                .map_err(|e| ApiError::unprocessable(format!("project: {e}")))?;
            st.access.check(&caller, &p, Action::Read)?;
            Some(p)
        }
    };
    let limit = q.limit.unwrap_or(DEFAULT_PAGE);
    if limit == 0 || limit > iac_core::history::MAX_PAGE {
        return Err(ApiError::unprocessable(format!(
            "limit = {limit}: expected 1 to {}",
            iac_core::history::MAX_PAGE
        )));
    }
    // The store pages over every project; records the caller may not read are skipped, so a
    // page is filled from as many store pages as it takes (bounded).
    st.deployments.settle_interrupted(project.as_ref()).await;
    let mut out: Vec<DeploymentSummary> = Vec::new();
    let mut cursor = q.cursor.clone().filter(|c| !c.is_empty());
    let mut next = None;
    for _ in 0..MAX_STORE_PAGES {
        let page = st
            .deployments
            .history()
            .store
            .list(&iac_core::history::HistoryQuery {
                project: project.clone(),
                limit: limit - out.len(),
                cursor: cursor.clone(),
            })
            .await
            .map_err(|e| match e {
                iac_core::history::HistoryError::BadCursor(_) => {
                    ApiError::bad_request(e.to_string())
                }
                e => ApiError::unavailable(e.to_string()),
            })?;
        out.extend(
            page.items
                .into_iter()
                .filter(|s| st.access.allows(&caller, &s.project, Action::Read))
                .filter_map(DeploymentSummary::from_history),
        );
        next = page.next_cursor;
        if out.len() >= limit || next.is_none() {
            break;
        }
        cursor = next.clone();
    }
    Ok(Json(DeploymentPage {
        deployments: out,
        next_cursor: next,
    }))
}

/// Page size of `GET /deployments` without `limit`.
const DEFAULT_PAGE: usize = 50;
/// Store pages one `GET /deployments` reads at most to fill a page with readable records.
const MAX_STORE_PAGES: usize = 20;

/// A deployment's (or destroy's) status, who started it, its events, per-service outcome,
/// report and saved log tails — while it runs and after its stream ended, also after a restart
/// (from the deployment history, within its retention).
#[utoipa::path(get, path = "/deployments/{id}", tag = "deploy", security(("bearer" = [])),
    params(("id" = String, Path, description = "Deployment id (UUID) from the x-deployment-id header")),
    responses(
        (status = 200, body = DeploymentSchema),
        (status = 400, description = "id is not a UUID", body = ErrorResponse),
        (status = 401, body = ErrorResponse),
        (status = 403, description = "The deployment belongs to a project the caller may not read (`project_forbidden`)", body = ErrorResponse),
        (status = 404, description = "Unknown deployment (or removed by the history's retention)", body = ErrorResponse),
        (status = 429, description = TOO_MANY, body = ErrorResponse)))]
async fn get_deployment(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<Uuid>,
) -> Result<Json<DeploymentRecord>, ApiError> {
    let record = st.deployments.record(&id).await?.ok_or_else(|| {
        ApiError::not_found(format!(
            "no deployment {id} (unknown, or removed by the history's retention: [history] keep, max_age)"
        ))
    })?;
    if !st.access.allows(&caller, &record.project, Action::Read) {
        // The project is not named: the caller may not learn it.
        return Err(ApiError::new(
            403,
            "project_forbidden",
            format!("deployment {id} belongs to a project you may not read"),
        ));
    }
    Ok(Json(record))
}

/// Running services of the project, each freshly health-checked through its Envoy.
#[utoipa::path(get, path = "/services", tag = "services", security(("bearer" = [])), params(ProjectQuery),
    responses((status = 200, body = Vec<ServiceStatusSchema>),
        (status = 400, description = "An unknown or malformed query parameter", body = ErrorResponse),
        (status = 401, body = ErrorResponse),
        (status = 403, description = "The caller may not read the project (`project_forbidden`)", body = ErrorResponse),
        (status = 422, description = "`project` is not a DNS label", body = ErrorResponse),
        (status = 429, description = TOO_MANY, body = ErrorResponse),
        (status = 502, description = "The engine failed the request", body = ErrorResponse),
        (status = 503, description = "The container engine is unreachable", body = ErrorResponse)))]
async fn list_services(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
    Query(q): Query<ProjectQuery>,
) -> Result<Json<Vec<ServiceStatus>>, ApiError> {
    let project = project_or_default(&st, q.project.as_deref())?;
    st.access.check(&caller, &project, Action::Read)?;
    Ok(Json(st.backend.services(project).await?))
}

/// A service's logs as NDJSON LogLines; with `follow=true` the stream stays open (until the
/// server shuts down). A failure mid-stream ends it with an `{"error": {…}}` line.
#[utoipa::path(get, path = "/services/{name}/logs", tag = "services", security(("bearer" = [])),
    params(("name" = String, Path, description = "Service name"), LogsQuery),
    responses(
        (status = 200, description = "NDJSON log lines", content_type = "application/x-ndjson", body = LogLineSchema),
        (status = 400, description = "An unknown or malformed query parameter", body = ErrorResponse),
        (status = 401, body = ErrorResponse),
        (status = 403, description = "The caller may not read the project (`project_forbidden`)", body = ErrorResponse),
        (status = 404, description = "The service is not running", body = ErrorResponse),
        (status = 422, description = "A name or query parameter is invalid", body = ErrorResponse),
        (status = 429, description = TOO_MANY, body = ErrorResponse),
        (status = 502, description = "The service's Envoy or agent failed the request", body = ErrorResponse),
        (status = 503, description = "The container engine is unreachable", body = ErrorResponse)))]
async fn service_logs(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    Query(q): Query<LogsQuery>,
) -> Result<Response, ApiError> {
    let service =
        ServiceName::new(&name).map_err(|e| ApiError::unprocessable(format!("service: {e}")))?;
    let project = project_or_default(&st, q.project.as_deref())?;
    st.access.check(&caller, &project, Action::Read)?;
    let query = LogQuery {
        follow: q.follow.unwrap_or(false),
        tail: q.tail.unwrap_or(0),
    };
    let stream = st.backend.logs(project, service, query).await?;
    let lines = stream
        .take_until(st.shutdown.clone().cancelled_owned())
        .scan(false, |failed, item| {
            if *failed {
                return futures::future::ready(None);
            }
            let line = match item {
                Ok(l) => ndjson_line(&l),
                Err(e) => {
                    *failed = true;
                    ndjson_line(&ErrorResponse { error: e.body() })
                }
            };
            futures::future::ready(Some(Ok::<Bytes, Infallible>(line)))
        });
    let mut r = Response::new(Body::from_stream(lines));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-ndjson"),
    );
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    Ok(r)
}

/// Remove everything the project runs. 409 while a deploy of it runs.
#[utoipa::path(post, path = "/destroy", tag = "deploy", security(("bearer" = [])), request_body(content = Option<DestroyRequest>),
    responses((status = 200, body = DestroyResponse),
        (status = 400, description = "Body is not JSON", body = ErrorResponse),
        (status = 401, body = ErrorResponse),
        (status = 403, description = "The caller may not deploy to (so not destroy) the project (`project_forbidden`)", body = ErrorResponse),
        (status = 409, body = ErrorResponse),
        (status = 413, description = "Body larger than max_body_bytes", body = ErrorResponse),
        (status = 415, description = "Content-Type is not application/json", body = ErrorResponse),
        (status = 422, body = ErrorResponse),
        (status = 429, description = TOO_MANY, body = ErrorResponse),
        (status = 502, description = "The engine failed the request", body = ErrorResponse),
        (status = 503, description = "The container engine is unreachable", body = ErrorResponse)))]
async fn destroy(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
    body: Option<Json<serde_json::Value>>,
) -> Result<Json<DestroyResponse>, ApiError> {
    // No body, `null` and `{}` all mean "the default project".
    let req: DestroyRequest = match body {
        Some(Json(v)) => json_object(v, true)?.unwrap_or_default(),
        None => DestroyRequest::default(),
    };
    let project = project_or_default(&st, req.project.as_deref())?;
    st.access.check(&caller, &project, Action::Destroy)?;
    let removed = st
        .deployments
        .destroy(st.backend.clone(), project.clone(), "http", who(&caller))
        .await?;
    Ok(Json(DestroyResponse {
        project: project.to_string(),
        removed,
    }))
}

/// Branches and tags of a repository and the branch its `HEAD` points at, from the git host's
/// ref advertisement (no objects are fetched) or, for `path:`/`git+file:` where
/// `[serve] allow_local_sources` allows them, the local repository. The same policy as an
/// API-originated fetch: private and local addresses refused (`[fetch] allow_private_hosts`),
/// `[fetch] deadline`, `[fetch] max_refs` and `max_ref_bytes`.
#[utoipa::path(get, path = "/refs", tag = "deploy", security(("bearer" = [])), params(RefsQuery),
    responses((status = 200, body = RefListSchema),
        (status = 400, description = "`slug` missing, or an unknown query parameter", body = ErrorResponse),
        (status = 401, body = ErrorResponse),
        (status = 403, description = "A `path:`/`git+file:` slug while `[serve] allow_local_sources` is off (`local_source_refused`), or a host that resolves to a private or local address (`source_refused`)", body = ErrorResponse),
        (status = 422, description = "`slug` is not a slug", body = ErrorResponse),
        (status = 429, description = TOO_MANY, body = ErrorResponse),
        (status = 501, description = "This control plane cannot list refs", body = ErrorResponse),
        (status = 502, description = "The listing failed: the git host answered an error, a cap was exceeded, or there is no repository (`refs_failed`)", body = ErrorResponse),
        (status = 504, description = "The listing exceeded `[fetch] deadline` (`deadline_exceeded`)", body = ErrorResponse)))]
async fn list_refs(
    State(st): State<AppState>,
    Query(q): Query<RefsQuery>,
) -> Result<Json<iac_core::RefList>, ApiError> {
    let slug: iac_core::Slug = q
        .slug
        .parse()
        .map_err(|e| ApiError::unprocessable(format!("slug: {e}")))?;
    if !st.cfg.allow_local_sources {
        check_remote_slug("", &slug)?;
    }
    Ok(Json(st.backend.refs(slug).await?))
}

/// What a deploy of these services would change, without building images or touching
/// containers: sources are fetched and entries resolved (as a deploy would), then compared with
/// what runs. The same body, checks and grants as `POST /deploy` (`deploy` on the project).
#[utoipa::path(post, path = "/plan", tag = "deploy", request_body = DeployRequest,
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The plan: per service `create`, `replace`, `repair`, `unchanged` or `remove`, and the services that failed before planning", body = PlanPreview),
        (status = 400, description = "Body is not JSON", body = ErrorResponse),
        (status = 401, description = "Missing or invalid credentials", body = ErrorResponse),
        (status = 403, description = "Not granted `deploy` on the project (`project_forbidden`), a local slug (`local_source_refused`), a public `expose` (`public_expose_refused`), or a cookie-authenticated request from another origin (`origin_mismatch`)", body = ErrorResponse),
        (status = 409, description = "Two services of the request have the same name (`duplicate_service_name`)", body = ErrorResponse),
        (status = 413, description = "Body larger than max_body_bytes", body = ErrorResponse),
        (status = 415, description = "Content-Type is not application/json", body = ErrorResponse),
        (status = 422, description = "Body does not validate", body = ErrorResponse),
        (status = 429, description = TOO_MANY, body = ErrorResponse),
        (status = 501, description = "This control plane cannot plan", body = ErrorResponse),
        (status = 502, description = "The engine failed the request", body = ErrorResponse),
        (status = 503, description = "Auth provider or container engine unreachable", body = ErrorResponse),
    ))]
async fn plan(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
    Json(req): Json<serde_json::Value>,
) -> Result<Json<PlanPreview>, ApiError> {
    let req: DeployRequest = json_object(req, false)?.unwrap_or_default();
    let (input, _repos) = validate_deploy(&st, &caller, req)?;
    Ok(Json(st.backend.plan(input).await?))
}
