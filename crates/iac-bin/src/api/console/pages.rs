//! The console's pages: one handler per page, each rendering a minijinja template embedded from
//! `templates/` (auto-escaped HTML). Pages read through the same state and rules as the API
//! (the backend's `services()`, the deployment history, `authz` grants); their scripts call the
//! API for what is live (ref lists, the plan preview, the deploy stream, log streams).
//!
//! Every response carries a strict Content-Security-Policy (scripts and styles from this server
//! only, no inline script), `X-Frame-Options: DENY`, `Cache-Control: no-store` and
//! `Referrer-Policy: same-origin` (with `no-referrer` Chromium sends `Origin: null` on the
//! console's own form posts, which the `Origin` check must then refuse). Forms that
//! change state (sign-in, sign-out, destroy) check `Origin` like the API does.

use std::collections::BTreeSet;
use std::time::Instant;

use axum::Form;
use axum::body::Body;
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use iac_core::ProjectName;
use minijinja::context;
use serde::Deserialize;
use uuid::Uuid;

use super::assets;
use super::session;
use crate::api::authz::{Action, Caller, EVERY_PROJECT};
use crate::api::deployments::{DeploymentSummary, who};
use crate::api::listen::{Peer, check_peer_uid};
use crate::api::ratelimit::ClientKey;
use crate::api::state::AppState;

/// The embedded templates.
pub fn templates() -> minijinja::Environment<'static> {
    let mut env = minijinja::Environment::new();
    for (name, src) in [
        ("base.html", include_str!("templates/base.html")),
        ("signin.html", include_str!("templates/signin.html")),
        ("projects.html", include_str!("templates/projects.html")),
        ("project.html", include_str!("templates/project.html")),
        ("deploy.html", include_str!("templates/deploy.html")),
        ("logs.html", include_str!("templates/logs.html")),
        ("destroy.html", include_str!("templates/destroy.html")),
        ("history.html", include_str!("templates/history.html")),
        ("deployment.html", include_str!("templates/deployment.html")),
        ("message.html", include_str!("templates/message.html")),
    ] {
        env.add_template(name, src)
            .unwrap_or_else(|e| panic!("console template {name}: {e}"));
    }
    env.add_filter("query", query_component);
    env
}

/// A serializable value as a template value (minijinja is built without its `serde` feature
/// here, which would rebuild it for the whole workspace): through `serde_json::Value`.
pub(crate) fn ser<T: serde::Serialize>(v: &T) -> minijinja::Value {
    json_value(serde_json::to_value(v).unwrap_or_default())
}

fn json_value(v: serde_json::Value) -> minijinja::Value {
    use serde_json::Value as J;
    match v {
        J::Null => minijinja::Value::from(()),
        J::Bool(b) => b.into(),
        J::Number(n) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => i.into(),
            (None, Some(u)) => u.into(),
            _ => n.as_f64().unwrap_or_default().into(),
        },
        J::String(s) => s.into(),
        J::Array(a) => a.into_iter().map(json_value).collect(),
        J::Object(m) => minijinja::Value::from_object(
            m.into_iter()
                .map(|(k, v)| (k, json_value(v)))
                .collect::<std::collections::BTreeMap<String, minijinja::Value>>(),
        ),
    }
}

/// The `query` filter: percent-encodes a value for a URL query component (everything but
/// unreserved characters), e.g. a history cursor.
fn query_component(v: String) -> String {
    let mut out = String::with_capacity(v.len());
    for b in v.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The console's routes (the API's are elsewhere; these take no `Authorization` header).
pub fn router() -> axum::Router<AppState> {
    axum::Router::new()
        .route("/", get(projects))
        .route("/signin", get(signin_page).post(signin_submit))
        .route("/signout", post(signout))
        .route("/projects/{project}", get(project_page))
        .route("/projects/{project}/deploy", get(deploy_page))
        .route("/projects/{project}/logs/{service}", get(logs_page))
        .route(
            "/projects/{project}/destroy",
            get(destroy_page).post(destroy_submit),
        )
        .route("/history", get(history_page))
        .route("/history/{id}", get(deployment_page))
        .route("/console/repos", post(repos_to_json))
        .route(assets::CSS_PATH, get(assets::css))
        .route(assets::JS_PATH, get(assets::js))
        .route(assets::ICON_PATH, get(assets::icon))
}

/// A page for a signed-in caller: who it is and how to show them.
struct Viewer {
    caller: Caller,
    /// Email or subject, for the header.
    name: String,
    /// Signed in with a session (shows "Sign out"); the socket's operator is not.
    session: bool,
}

/// The page's HTML response with the console's security headers.
fn html(status: StatusCode, body: String) -> Response {
    let mut r = Response::new(Body::from(body));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    secure_headers(h);
    r
}

/// Headers every console response carries.
pub(crate) fn secure_headers(h: &mut HeaderMap) {
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
}

fn render(st: &AppState, status: StatusCode, name: &str, ctx: minijinja::Value) -> Response {
    match st
        .console
        .templates
        .get_template(name)
        .and_then(|t| t.render(ctx))
    {
        Ok(body) => html(status, body),
        Err(e) => {
            tracing::error!("console template {name}: {e:#}");
            html(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("console template {name} failed; see the server log"),
            )
        }
    }
}

/// A message page (errors, refusals, results).
fn message(
    st: &AppState,
    v: Option<&Viewer>,
    status: StatusCode,
    title: &str,
    text: &str,
) -> Response {
    render(
        st,
        status,
        "message.html",
        context! { title, text, user => v.map(|v| v.name.clone()), session => v.is_some_and(|v| v.session) },
    )
}

/// The signed-in caller, or the response to send instead (the sign-in page for a visitor).
async fn viewer(st: &AppState, peer: &Peer, headers: &HeaderMap) -> Result<Viewer, Box<Response>> {
    match peer {
        Peer::Unix { uid, .. } => match check_peer_uid(*uid, st.server_uid) {
            Ok(()) => Ok(Viewer {
                caller: Caller::Operator(iac_core::Principal {
                    subject: format!("uid:{}", st.server_uid),
                    role: "local".into(),
                    email: None,
                    method: "unix socket peer uid".into(),
                    claims: Default::default(),
                }),
                name: format!("operator (uid {})", st.server_uid),
                session: false,
            }),
            Err(why) => Err(Box::new(message(
                st,
                None,
                StatusCode::FORBIDDEN,
                "Forbidden",
                &why,
            ))),
        },
        Peer::Tcp(_) => {
            let Some(id) = session::cookie_id(headers, st.console.secure) else {
                return Err(Box::new(Redirect::to("/signin").into_response()));
            };
            match st.console.session_caller(st, &id).await {
                Ok(caller) => {
                    let p = caller.principal();
                    Ok(Viewer {
                        name: p.email.clone().unwrap_or_else(|| p.subject.clone()),
                        caller,
                        session: true,
                    })
                }
                Err(e @ iac_core::AuthError::Unavailable(_)) => Err(Box::new(message(
                    st,
                    None,
                    StatusCode::SERVICE_UNAVAILABLE,
                    "Sign-in unavailable",
                    &e.to_string(),
                ))),
                // The session ended (signed out elsewhere, expired, refused refresh, restart):
                // back to the sign-in page, with the cookie cleared.
                Err(e) => {
                    tracing::info!("console session refused: {e}");
                    let mut r = Redirect::to("/signin?ended=1").into_response();
                    r.headers_mut()
                        .insert(header::SET_COOKIE, session::clear_cookie(st.console.secure));
                    secure_headers(r.headers_mut());
                    Err(Box::new(r))
                }
            }
        }
    }
}

fn project_name(st: &AppState, v: &Viewer, p: &str) -> Result<ProjectName, Box<Response>> {
    ProjectName::new(p).map_err(|e| {
        Box::new(message(
            st,
            Some(v),
            StatusCode::NOT_FOUND,
            "No such project",
            &format!("project {p:?}: {e}"),
        ))
    })
}

/// The project a page's path names, once the viewer may do `a` on it ([`project_name`] then
/// [`require`]).
/// The viewer of a project page, and the project, once the viewer may do `a` in it: the
/// prelude of every page under `/projects/{project}`.
async fn viewer_granted(
    st: &AppState,
    peer: &Peer,
    headers: &HeaderMap,
    p: &str,
    a: Action,
) -> Result<(Viewer, ProjectName), Box<Response>> {
    let v = viewer(st, peer, headers).await?;
    let project = granted(st, &v, p, a)?;
    Ok((v, project))
}

fn granted(st: &AppState, v: &Viewer, p: &str, a: Action) -> Result<ProjectName, Box<Response>> {
    let project = project_name(st, v, p)?;
    require(st, v, &project, a)?;
    Ok(project)
}

fn require(st: &AppState, v: &Viewer, p: &ProjectName, a: Action) -> Result<(), Box<Response>> {
    st.access.check(&v.caller, p, a).map_err(|e| {
        Box::new(message(
            st,
            Some(v),
            StatusCode::FORBIDDEN,
            "Not allowed",
            &e.body().message,
        ))
    })
}

/// Checks `Origin` of a console form post (sign-in included, against login CSRF).
fn origin_ok(st: &AppState, peer: &Peer, headers: &HeaderMap) -> Result<(), Box<Response>> {
    if matches!(peer, Peer::Unix { .. }) {
        return Ok(());
    }
    st.console.check_origin(headers).map_err(|why| {
        tracing::info!("console form refused: {why}");
        Box::new(message(
            st,
            None,
            StatusCode::FORBIDDEN,
            "Request refused (origin_mismatch)",
            &why,
        ))
    })
}

// ---- sign-in ----

fn signin_with(
    st: &AppState,
    status: StatusCode,
    error: Option<String>,
    email: Option<String>,
    clear: bool,
) -> Response {
    let mut r = render(
        st,
        status,
        "signin.html",
        context! { error, email, password => st.console.password_sign_in() },
    );
    if clear {
        r.headers_mut()
            .insert(header::SET_COOKIE, session::clear_cookie(st.console.secure));
    }
    r
}

#[derive(Deserialize)]
struct SignInParams {
    #[serde(default)]
    ended: Option<String>,
}

async fn signin_page(State(st): State<AppState>, Query(q): Query<SignInParams>) -> Response {
    let note = q
        .ended
        .is_some()
        .then(|| "Your session has ended; sign in again.".to_string());
    signin_with(&st, StatusCode::OK, note, None, false)
}

#[derive(Deserialize)]
struct SignInForm {
    #[serde(default)]
    email: String,
    #[serde(default)]
    password: String,
    #[serde(default)]
    access_token: String,
}

async fn signin_submit(
    State(st): State<AppState>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    headers: HeaderMap,
    Form(f): Form<SignInForm>,
) -> Response {
    if let Err(r) = origin_ok(&st, &peer, &headers) {
        return *r;
    }
    let key = match &peer {
        Peer::Tcp(a) => ClientKey::of_ip(a.ip()),
        Peer::Unix { uid, .. } => ClientKey::Uid(*uid),
    };
    if let Some(wait) = st.failures.blocked(&key, Instant::now()) {
        return signin_with(
            &st,
            StatusCode::TOO_MANY_REQUESTS,
            Some(format!(
                "Too many failed sign-ins from this address; try again in {} s.",
                wait.as_secs() + 1
            )),
            Some(f.email),
            false,
        );
    }
    let result = if !f.access_token.trim().is_empty() {
        st.console.sign_in_token(&st, &f.access_token).await
    } else if f.email.trim().is_empty() || f.password.is_empty() {
        Err("Enter your email and password, or paste an access token.".to_string())
    } else {
        st.console
            .sign_in_password(&st, f.email.trim(), &f.password)
            .await
    };
    match result {
        Ok(id) => {
            let mut r = Redirect::to("/").into_response();
            r.headers_mut().insert(
                header::SET_COOKIE,
                session::set_cookie(&id, st.console.secure),
            );
            secure_headers(r.headers_mut());
            r
        }
        Err(msg) => {
            let _ = st.failures.failed(key, Instant::now());
            // The form again with the message. 200, not 401: the page itself is fine, and a
            // 401 would be an error in the browser's console.
            signin_with(&st, StatusCode::OK, Some(msg), Some(f.email), false)
        }
    }
}

async fn signout(
    State(st): State<AppState>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = origin_ok(&st, &peer, &headers) {
        return *r;
    }
    if let Some(id) = session::cookie_id(&headers, st.console.secure) {
        st.console.sessions.remove(&id).await;
    }
    let mut r = Redirect::to("/signin").into_response();
    r.headers_mut()
        .insert(header::SET_COOKIE, session::clear_cookie(st.console.secure));
    secure_headers(r.headers_mut());
    r
}

// ---- projects and services ----

/// The projects the viewer may read: those named in `[serve.projects]`, the default project
/// and those in the recent history.
async fn readable_projects(st: &AppState, v: &Viewer) -> Vec<(ProjectName, bool)> {
    let mut names: BTreeSet<String> = st
        .cfg
        .projects
        .keys()
        .filter(|k| k.as_str() != EVERY_PROJECT)
        .cloned()
        .collect();
    names.insert(st.backend.default_project().to_string());
    if let Ok(page) = st
        .deployments
        .history()
        .store
        .list(&iac_core::history::HistoryQuery {
            project: None,
            limit: iac_core::history::MAX_PAGE,
            cursor: None,
        })
        .await
    {
        names.extend(page.items.into_iter().map(|s| s.project.to_string()));
    }
    names
        .into_iter()
        .filter_map(|n| ProjectName::new(&n).ok())
        .filter(|p| st.access.allows(&v.caller, p, Action::Read))
        .map(|p| {
            let deploy = st.access.allows(&v.caller, &p, Action::Deploy);
            (p, deploy)
        })
        .collect()
}

async fn projects(
    State(st): State<AppState>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    headers: HeaderMap,
) -> Response {
    let v = match viewer(&st, &peer, &headers).await {
        Ok(v) => v,
        Err(r) => return *r,
    };
    let list: Vec<_> = readable_projects(&st, &v)
        .await
        .into_iter()
        .map(|(p, deploy)| context! { name => p.to_string(), deploy })
        .collect();
    render(
        &st,
        StatusCode::OK,
        "projects.html",
        context! { user => v.name, session => v.session, projects => list },
    )
}

/// The entry (argv and the rule that chose it) of each service of `project`, from its most
/// recent deploy in the history that reported one.
async fn entries(
    st: &AppState,
    project: &ProjectName,
) -> std::collections::BTreeMap<String, (String, String)> {
    let mut out = std::collections::BTreeMap::new();
    let Ok(page) = st
        .deployments
        .history()
        .store
        .list(&iac_core::history::HistoryQuery {
            project: Some(project.clone()),
            limit: 20,
            cursor: None,
        })
        .await
    else {
        return out;
    };
    for s in page
        .items
        .into_iter()
        .filter_map(DeploymentSummary::from_history)
    {
        let Ok(Some(rec)) = st.deployments.record(&s.id).await else {
            continue;
        };
        for svc in rec.report.iter().flat_map(|r| &r.services) {
            if let Some(e) = &svc.entry {
                out.entry(svc.service.to_string())
                    .or_insert_with(|| (e.argv.join(" "), format!("{}: {}", e.rule, e.why)));
            }
        }
    }
    out
}

fn uptime(ms: Option<u64>) -> Option<String> {
    let s = ms? / 1000;
    Some(match s {
        0..60 => format!("{s} s"),
        60..3600 => format!("{} min {} s", s / 60, s % 60),
        3600..86400 => format!("{} h {} min", s / 3600, (s % 3600) / 60),
        _ => format!("{} d {} h", s / 86400, (s % 86400) / 3600),
    })
}

async fn project_page(
    State(st): State<AppState>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    headers: HeaderMap,
    Path(project): Path<String>,
) -> Response {
    let (v, project) = match viewer_granted(&st, &peer, &headers, &project, Action::Read).await {
        Ok(vp) => vp,
        Err(r) => return *r,
    };
    let (services, error) = match st.backend.services(project.clone()).await {
        Ok(s) => (s, None),
        Err(e) => (Vec::new(), Some(e.body().message)),
    };
    let entries = entries(&st, &project).await;
    let rows: Vec<_> = services
        .iter()
        .map(|s| {
            let name = s.running.service.to_string();
            let (entry, why) = entries.get(&name).cloned().unzip();
            context! {
                name,
                health => ser(&s.health.state),
                detail => s.health.detail.clone(),
                state => s.running.state.clone(),
                restarts => s.health.restarts.as_ref().map(|r| r.count).unwrap_or(0),
                last_exit => s.health.restarts.as_ref().and_then(|r| r.last_exit.clone()),
                url => s.url.clone(),
                image => s.running.image.clone(),
                entry,
                why,
                uptime => uptime(s.health.uptime_ms),
            }
        })
        .collect();
    render(
        &st,
        StatusCode::OK,
        "project.html",
        context! {
            user => v.name, session => v.session,
            project => project.to_string(),
            deploy => st.access.allows(&v.caller, &project, Action::Deploy),
            services => rows, error,
        },
    )
}

async fn deploy_page(
    State(st): State<AppState>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    headers: HeaderMap,
    Path(project): Path<String>,
) -> Response {
    let (v, project) = match viewer_granted(&st, &peer, &headers, &project, Action::Deploy).await {
        Ok(vp) => vp,
        Err(r) => return *r,
    };
    render(
        &st,
        StatusCode::OK,
        "deploy.html",
        context! { user => v.name, session => v.session, project => project.to_string() },
    )
}

async fn logs_page(
    State(st): State<AppState>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    headers: HeaderMap,
    Path((project, service)): Path<(String, String)>,
) -> Response {
    let (v, project) = match viewer_granted(&st, &peer, &headers, &project, Action::Read).await {
        Ok(vp) => vp,
        Err(r) => return *r,
    };
    let service = match iac_core::ServiceName::new(&service) {
        Ok(s) => s,
        Err(e) => {
            return message(
                &st,
                Some(&v),
                StatusCode::NOT_FOUND,
                "No such service",
                &format!("service {service:?}: {e}"),
            );
        }
    };
    render(
        &st,
        StatusCode::OK,
        "logs.html",
        context! { user => v.name, session => v.session, project => project.to_string(), service => service.to_string() },
    )
}

async fn destroy_page(
    State(st): State<AppState>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    headers: HeaderMap,
    Path(project): Path<String>,
) -> Response {
    let (v, project) = match viewer_granted(&st, &peer, &headers, &project, Action::Destroy).await {
        Ok(vp) => vp,
        Err(r) => return *r,
    };
    let services: Vec<String> = match st.backend.services(project.clone()).await {
        Ok(s) => s
            .into_iter()
            .map(|s| s.running.service.to_string())
            .collect(),
        Err(_) => Vec::new(),
    };
    render(
        &st,
        StatusCode::OK,
        "destroy.html",
        context! { user => v.name, session => v.session, project => project.to_string(), services },
    )
}

#[derive(Deserialize)]
struct DestroyForm {
    #[serde(default)]
    confirm: String,
}

async fn destroy_submit(
    State(st): State<AppState>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    headers: HeaderMap,
    Path(project): Path<String>,
    Form(f): Form<DestroyForm>,
) -> Response {
    if let Err(r) = origin_ok(&st, &peer, &headers) {
        return *r;
    }
    let (v, project) = match viewer_granted(&st, &peer, &headers, &project, Action::Destroy).await {
        Ok(vp) => vp,
        Err(r) => return *r,
    };
    if f.confirm.trim() != project.as_str() {
        return message(
            &st,
            Some(&v),
            StatusCode::UNPROCESSABLE_ENTITY,
            "Not destroyed",
            &format!("Type the project name ({project}) to confirm; nothing was removed."),
        );
    }
    match st
        .deployments
        .destroy(
            st.backend.clone(),
            project.clone(),
            "console",
            who(&v.caller),
        )
        .await
    {
        Ok(removed) => message(
            &st,
            Some(&v),
            StatusCode::OK,
            "Destroyed",
            &if removed.is_empty() {
                format!("Project {project}: nothing was running.")
            } else {
                format!("Project {project}: removed {}.", removed.join(", "))
            },
        ),
        Err(e) => message(
            &st,
            Some(&v),
            e.status_code(),
            "Destroy failed",
            &e.body().message,
        ),
    }
}

// ---- history ----

#[derive(Deserialize)]
struct HistoryParams {
    #[serde(default)]
    project: Option<String>,
    #[serde(default)]
    cursor: Option<String>,
}

async fn history_page(
    State(st): State<AppState>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    headers: HeaderMap,
    Query(q): Query<HistoryParams>,
) -> Response {
    let v = match viewer(&st, &peer, &headers).await {
        Ok(v) => v,
        Err(r) => return *r,
    };
    let project = match q.project.as_deref().filter(|p| !p.is_empty()) {
        None => None,
        Some(p) => match project_name(&st, &v, p) {
            Ok(p) => {
                if let Err(r) = require(&st, &v, &p, Action::Read) {
                    return *r;
                }
                Some(p)
            }
            Err(r) => return *r,
        },
    };
    st.deployments.settle_interrupted(project.as_ref()).await;
    let page = st
        .deployments
        .history()
        .store
        .list(&iac_core::history::HistoryQuery {
            project: project.clone(),
            limit: 50,
            cursor: q.cursor.filter(|c| !c.is_empty()),
        })
        .await;
    let (items, next, error) = match page {
        Ok(p) => (
            p.items
                .into_iter()
                .filter(|s| st.access.allows(&v.caller, &s.project, Action::Read))
                .filter_map(DeploymentSummary::from_history)
                .collect::<Vec<_>>(),
            p.next_cursor,
            None,
        ),
        Err(e) => (Vec::new(), None, Some(e.to_string())),
    };
    render(
        &st,
        StatusCode::OK,
        "history.html",
        context! {
            user => v.name, session => v.session,
            project => project.map(|p| p.to_string()),
            items => ser(&items),
            next, error,
        },
    )
}

async fn deployment_page(
    State(st): State<AppState>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let v = match viewer(&st, &peer, &headers).await {
        Ok(v) => v,
        Err(r) => return *r,
    };
    let Ok(id) = Uuid::parse_str(&id) else {
        return message(
            &st,
            Some(&v),
            StatusCode::NOT_FOUND,
            "No such deployment",
            &format!("{id:?} is not a deployment id"),
        );
    };
    let rec = match st.deployments.record(&id).await {
        Ok(Some(r)) => r,
        Ok(None) => {
            return message(
                &st,
                Some(&v),
                StatusCode::NOT_FOUND,
                "No such deployment",
                &format!("no deployment {id} (unknown, or removed by the history's retention)"),
            );
        }
        Err(e) => {
            return message(
                &st,
                Some(&v),
                e.status_code(),
                "History unavailable",
                &e.body().message,
            );
        }
    };
    if !st.access.allows(&v.caller, &rec.project, Action::Read) {
        return message(
            &st,
            Some(&v),
            StatusCode::FORBIDDEN,
            "Not allowed",
            &format!("deployment {id} belongs to a project you may not read"),
        );
    }
    render(
        &st,
        StatusCode::OK,
        "deployment.html",
        context! {
            user => v.name, session => v.session,
            d => ser(&rec),
            running => rec.status == crate::api::DeploymentStatus::Running,
        },
    )
}

/// Turns a pasted repos file (YAML or JSON: a list, or a map with `services`) into the JSON
/// list `POST /deploy` takes as `slugs`; the project it names, if any, comes along.
async fn repos_to_json(
    State(st): State<AppState>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    headers: HeaderMap,
    body: String,
) -> Response {
    if let Err(r) = origin_ok(&st, &peer, &headers) {
        return *r;
    }
    if let Err(r) = viewer(&st, &peer, &headers).await {
        return *r;
    }
    let bad = |m: String| {
        let mut r = (
            StatusCode::UNPROCESSABLE_ENTITY,
            axum::Json(serde_json::json!({"error": {"code": "invalid_repos_file", "message": m}})),
        )
            .into_response();
        secure_headers(r.headers_mut());
        r
    };
    if let Err(e) = iac_core::parse_repos_file(&body, iac_core::ReposFormat::Auto) {
        return bad(format!("repos file: {e}"));
    }
    let v: serde_json::Value = match yaml_serde::from_str(&body) {
        Ok(v) => v,
        Err(e) => return bad(format!("repos file: {e}")),
    };
    let (project, slugs) = match v {
        serde_json::Value::Array(items) => (None, items),
        serde_json::Value::Object(mut m) => (
            m.remove("project"),
            match m.remove("services") {
                Some(serde_json::Value::Array(items)) => items,
                _ => {
                    return bad(
                        "repos file: expected a list of services, or a map with `services`".into(),
                    );
                }
            },
        ),
        _ => {
            return bad("repos file: expected a list of services, or a map with `services`".into());
        }
    };
    let mut r =
        axum::Json(serde_json::json!({ "project": project, "slugs": slugs })).into_response();
    secure_headers(r.headers_mut());
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn render_ok(name: &str, ctx: serde_json::Value) -> String {
        templates()
            .get_template(name)
            .unwrap()
            .render(ser(&ctx))
            .unwrap_or_else(|e| panic!("{name}: {e:#}"))
    }

    #[test]
    fn every_page_renders_and_escapes() {
        let user = "<b>eve</b>@example.test";
        let out = render_ok(
            "signin.html",
            json!({"error": "Sign-in failed: <x>", "email": user, "password": true}),
        );
        assert!(out.contains(r#"type="email""#) && out.contains(r#"type="password""#));
        assert!(out.contains("&lt;x&gt;") && !out.contains("<x>"), "escaped");
        let out = render_ok("signin.html", json!({"password": false}));
        assert!(!out.contains(r#"type="password""#) && out.contains("access_token"));
        let out = render_ok(
            "projects.html",
            json!({"user": user, "session": true, "projects": [{"name": "shop", "deploy": true}]}),
        );
        assert!(out.contains("/projects/shop/deploy") && out.contains("Sign out"));
        assert!(!out.contains("<b>eve"), "user escaped");
        let out = render_ok(
            "project.html",
            json!({"user": "u", "project": "shop", "deploy": true, "services": [
            {"name": "api", "health": "SERVING", "detail": "d", "state": "running", "restarts": 2, "last_exit": "exited with code 1",
             "url": "http://127.0.0.1:9000/", "image": "iac/shop-api:1", "entry": "python /app/main.py", "why": "main.py: root main.py", "uptime": "5 s"}]}),
        );
        assert!(
            out.contains("href=\"http:&#x2f;&#x2f;127.0.0.1:9000&#x2f;\"")
                && out.contains("h-SERVING")
                && out.contains("/projects/shop/logs/api")
        );
        let out = render_ok(
            "project.html",
            json!({"user": "u", "project": "shop", "deploy": false, "services": []}),
        );
        assert!(out.contains("no-services") && !out.contains("destroy-link"));
        render_ok("deploy.html", json!({"user": "u", "project": "shop"}));
        render_ok(
            "logs.html",
            json!({"user": "u", "project": "shop", "service": "api"}),
        );
        let out = render_ok(
            "destroy.html",
            json!({"user": "u", "project": "shop", "services": ["api", "web"]}),
        );
        assert!(out.contains("api, web") && out.contains(r#"name="confirm""#));
        let out = render_ok(
            "history.html",
            json!({"user": "u", "items": [{"id": "6b1f2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d", "project": "shop",
            "kind": "deploy", "status": "succeeded", "origin": "http", "who": "x", "services": ["api"], "started_at": "t"}], "next": "a+b/c="}),
        );
        assert!(out.contains("cursor=a%2Bb%2Fc%3D"), "{out}");
        let out = render_ok(
            "deployment.html",
            json!({"user": "u", "running": false, "d": {
            "id": "6b1f2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d", "project": "shop", "kind": "destroy", "status": "succeeded",
            "origin": "console", "who": "x", "services": [], "started_at": "t", "finished_at": null, "events": [
                {"ts": "t", "service": null, "stage": "destroy", "level": "info", "message": "removed <all>"}],
            "events_dropped": 0, "outcomes": [], "removed": ["shop-api"], "report": null, "error": null,
            "log_tails": [{"service": "api", "container": "shop-api", "role": "app", "reason": "destroy", "saved_at": "t", "lines": ["hello"]}]}}),
        );
        assert!(
            out.contains("Destroy of")
                && out.contains("removed &lt;all&gt;")
                && out.contains("hello")
        );
        render_ok("message.html", json!({"title": "t", "text": "x"}));
    }

    #[test]
    fn query_filter_encodes_everything_but_unreserved() {
        assert_eq!(query_component("a-b_c.d~e".into()), "a-b_c.d~e");
        assert_eq!(
            query_component("a b&c=d/é".into()),
            "a%20b%26c%3Dd%2F%C3%A9"
        );
    }
}
