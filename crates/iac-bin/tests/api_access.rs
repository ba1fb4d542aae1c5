//! Who may do what through the admin API, end to end on a real server: per-project
//! authorization (`[serve.projects]`, `project_claim`) with the real `SupabaseVerifier`
//! verifying HS256 user tokens locally (no Supabase needed: `confirm_with_supabase = false`),
//! the failed-authentication limit (429 + `Retry-After`), and the open `/health` naming no
//! version. Cross-project deploys, destroys and reads are 403 `project_forbidden`; listings show
//! only what the caller may read; service-role keys and the Unix socket keep full access.

mod api_support;

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Duration;

use api_support::*;
use iac_backends::auth::testkit;
use iac_backends::auth::{Secret, SupabaseConfig, SupabaseVerifier};
use iac_bin::api::{ProjectGrant, ServeConfig};
use iac_proto::{ControlPlaneClient, DeployRequest, LogRequest};
use serde_json::{Value, json};
use tonic::metadata::MetadataValue;

const SERVICE_KEY: &str = "sb_secret_0123456789abcdef";
const JWT_SECRET: &str = "legacy-jwt-secret-with-at-least-32-characters";
/// Granted `deploy` on `alice-app` by user id.
const ALICE: &str = "aaaaaaaa-aaaa-4aaa-8aaa-aaaaaaaaaaaa";
/// Granted `read` on `alice-app` by email.
const BOB: &str = "bbbbbbbb-bbbb-4bbb-8bbb-bbbbbbbbbbbb";
/// Granted nothing; role `authenticated` (an allowed role).
const MALLORY: &str = "cccccccc-cccc-4ccc-8ccc-cccccccccccc";
/// Admitted only by `allowed_user_ids` (its role is not allowed); granted nothing.
const LONER: &str = "dddddddd-dddd-4ddd-8ddd-dddddddddddd";
/// Granted `deploy` on every project by email, through `[serve.projects."*"]`.
const OPS: &str = "eeeeeeee-eeee-4eee-8eee-eeeeeeeeeeee";

fn verifier() -> Arc<SupabaseVerifier> {
    Arc::new(
        SupabaseVerifier::new(SupabaseConfig {
            service_role_key: Some(Secret::new(SERVICE_KEY)),
            jwt_secret: Some(Secret::new(JWT_SECRET)),
            confirm_with_supabase: Some(false),
            allowed_roles: vec!["service_role".into(), "authenticated".into()],
            allowed_user_ids: vec![LONER.into()],
            ..SupabaseConfig::default()
        })
        .unwrap(),
    )
}

fn grant(read: &[&str], deploy: &[&str]) -> ProjectGrant {
    ProjectGrant {
        read: read.iter().map(|s| s.to_string()).collect(),
        deploy: deploy.iter().map(|s| s.to_string()).collect(),
    }
}

/// `alice-app`: Alice deploys (by id), Bob reads (by email).
fn policy(cfg: &mut ServeConfig) {
    cfg.projects
        .insert("alice-app".into(), grant(&["Bob@Example.test"], &[ALICE]));
}

/// An HS256 user token (role `authenticated` unless `extra` says otherwise).
fn token(sub: &str, extra: Value) -> String {
    let now = testkit::now();
    let mut claims = json!({
        "sub": sub, "role": "authenticated", "aud": "authenticated",
        "email": format!("{}@example.test", name_of(sub)),
        "iat": now, "exp": now + 3600,
    });
    for (k, v) in extra.as_object().cloned().unwrap_or_default() {
        claims[k] = v;
    }
    testkit::sign_hs256(JWT_SECRET.as_bytes(), None, &claims)
}

fn name_of(sub: &str) -> &'static str {
    match sub {
        ALICE => "alice",
        BOB => "bob",
        MALLORY => "mallory",
        LONER => "loner",
        OPS => "ops",
        _ => "someone",
    }
}

/// `POST {path}` with `body`; returns status, body and the deployment id header.
async fn post(srv: &Running, path: &str, tok: &str, body: Value) -> (u16, String, Option<String>) {
    let r = client()
        .post(format!("{}{path}", srv.base))
        .bearer_auth(tok)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let id = r
        .headers()
        .get("x-deployment-id")
        .map(|v| v.to_str().unwrap().to_string());
    (status, r.text().await.unwrap(), id)
}

async fn get(srv: &Running, path: &str, tok: &str) -> (u16, String) {
    let r = client()
        .get(format!("{}{path}", srv.base))
        .bearer_auth(tok)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

fn deploy_body(project: &str) -> Value {
    json!({"slugs": ["gh:acme/hello"], "project": project})
}

/// Asserts a 403 `project_forbidden` whose message names the project (when given).
fn assert_forbidden(what: &str, status: u16, body: &str, project: Option<&str>) {
    assert_eq!(status, 403, "{what}: {body}");
    let (code, message) = assert_error_shape(body);
    assert_eq!(code, "project_forbidden", "{what}: {body}");
    if let Some(p) = project {
        assert!(message.contains(p), "{what}: {message}");
    }
}

/// The projects of `GET /deployments` as the caller sees them.
async fn listed_projects(srv: &Running, tok: &str) -> Vec<String> {
    let (s, body) = get(srv, "/deployments", tok).await;
    assert_eq!(s, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    v["deployments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["project"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn cross_project_deploy_destroy_and_reads_are_refused_with_403() {
    let srv = start_with(Arc::new(FakeBackend::new()), verifier(), policy).await;
    let alice = token(ALICE, json!({}));
    // Someone else's deployment, made with the service-role key.
    let (s, body, other_id) = post(&srv, "/deploy", SERVICE_KEY, deploy_body("bob-app")).await;
    assert_eq!(s, 202, "{body}");
    let other_id = other_id.unwrap();

    // Alice in her own project: deploy, read, destroy.
    let (s, body, own_id) = post(&srv, "/deploy", &alice, deploy_body("alice-app")).await;
    assert_eq!(s, 202, "{body}");
    let own_id = own_id.unwrap();
    let (s, body) = get(&srv, &format!("/deployments/{own_id}"), &alice).await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(
        get(&srv, "/services?project=alice-app", &alice).await.0,
        200
    );
    let (s, body) = get(&srv, "/services/hello/logs?project=alice-app", &alice).await;
    assert_eq!(s, 200, "{body}");

    // Another project: every route refuses, naming the project.
    let (s, body, id) = post(&srv, "/deploy", &alice, deploy_body("bob-app")).await;
    assert_forbidden("deploy", s, &body, Some("bob-app"));
    assert!(id.is_none(), "a refused deploy has no deployment");
    let (s, body, _) = post(&srv, "/destroy", &alice, json!({"project": "bob-app"})).await;
    assert_forbidden("destroy", s, &body, Some("bob-app"));
    let (s, body) = get(&srv, "/services?project=bob-app", &alice).await;
    assert_forbidden("services", s, &body, Some("bob-app"));
    let (s, body) = get(&srv, "/services/hello/logs?project=bob-app", &alice).await;
    assert_forbidden("logs", s, &body, Some("bob-app"));
    // Another project's deployment record: 403 without naming its project.
    let (s, body) = get(&srv, &format!("/deployments/{other_id}"), &alice).await;
    assert_forbidden("deployment record", s, &body, None);
    assert!(!body.contains("bob-app"), "{body}");
    // The default project (no `project`) is a project like any other.
    let (s, body, _) = post(&srv, "/deploy", &alice, json!({"slugs": ["gh:acme/hello"]})).await;
    assert_forbidden("deploy to the default project", s, &body, Some("default"));
    let (s, body, _) = post(&srv, "/destroy", &alice, json!({})).await;
    assert_forbidden("destroy the default project", s, &body, Some("default"));

    // The listing shows Alice her project only; the service role sees both.
    assert_eq!(listed_projects(&srv, &alice).await, vec!["alice-app"]);
    let mut all = listed_projects(&srv, SERVICE_KEY).await;
    all.sort();
    assert_eq!(all, vec!["alice-app", "bob-app"]);

    let (s, body, _) = post(&srv, "/destroy", &alice, json!({"project": "alice-app"})).await;
    assert_eq!(s, 200, "{body}");
    srv.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_read_grant_reads_but_neither_deploys_nor_destroys() {
    let srv = start_with(Arc::new(FakeBackend::new()), verifier(), policy).await;
    let (_, _, id) = post(&srv, "/deploy", SERVICE_KEY, deploy_body("alice-app")).await;
    let id = id.unwrap();
    post(&srv, "/deploy", SERVICE_KEY, deploy_body("bob-app")).await;
    // Bob is granted `read` by his email, written in another case in the config.
    let bob = token(BOB, json!({}));
    assert_eq!(get(&srv, &format!("/deployments/{id}"), &bob).await.0, 200);
    assert_eq!(get(&srv, "/services?project=alice-app", &bob).await.0, 200);
    assert_eq!(listed_projects(&srv, &bob).await, vec!["alice-app"]);
    let (s, body, _) = post(&srv, "/deploy", &bob, deploy_body("alice-app")).await;
    assert_forbidden("deploy with read", s, &body, Some("alice-app"));
    let (s, body, _) = post(&srv, "/destroy", &bob, json!({"project": "alice-app"})).await;
    assert_forbidden("destroy with read", s, &body, Some("alice-app"));
    srv.shutdown().await.unwrap();
}

#[tokio::test]
async fn users_admitted_by_role_or_user_id_alone_reach_no_project() {
    let srv = start_with(Arc::new(FakeBackend::new()), verifier(), policy).await;
    post(&srv, "/deploy", SERVICE_KEY, deploy_body("alice-app")).await;
    let mallory = token(MALLORY, json!({}));
    // LONER's role is not allowed: `allowed_user_ids` alone lets it authenticate.
    let loner = token(LONER, json!({"role": "iac_user"}));
    for (who, tok) in [("role alone", &mallory), ("allowed_user_ids alone", &loner)] {
        for project in ["alice-app", "default", "fresh"] {
            let (s, body, _) = post(&srv, "/deploy", tok, deploy_body(project)).await;
            assert_forbidden(who, s, &body, Some(project));
            let (s, body) = get(&srv, &format!("/services?project={project}"), tok).await;
            assert_forbidden(who, s, &body, Some(project));
        }
        assert!(listed_projects(&srv, tok).await.is_empty(), "{who}");
    }
    // A role that is not allowed and no user id: the verifier's 403, not ours.
    let (s, body) = get(
        &srv,
        "/deployments",
        &token(MALLORY, json!({"role": "iac_user"})),
    )
    .await;
    assert_eq!(s, 403);
    assert_eq!(assert_error_shape(&body).0, "forbidden");
    srv.shutdown().await.unwrap();
}

#[tokio::test]
async fn the_star_project_grants_every_project_and_emails_match_the_email_claim() {
    let srv = start_with(Arc::new(FakeBackend::new()), verifier(), |cfg| {
        policy(cfg);
        cfg.projects
            .insert("*".into(), grant(&[], &["ops@example.test"]));
    })
    .await;
    let ops = token(OPS, json!({}));
    for project in ["alice-app", "anything", "default"] {
        let (s, body, _) = post(&srv, "/deploy", &ops, deploy_body(project)).await;
        assert_eq!(s, 202, "{project}: {body}");
        let (s, body, _) = post(&srv, "/destroy", &ops, json!({"project": project})).await;
        assert_eq!(s, 200, "{project}: {body}");
    }
    // The same id with another email is someone else.
    let impostor = token(MALLORY, json!({"email": "ops@example.test.evil"}));
    let (s, body, _) = post(&srv, "/deploy", &impostor, deploy_body("anything")).await;
    assert_forbidden("other email", s, &body, Some("anything"));
    // `*` adds to a project's own grants: Alice still deploys to hers only.
    let alice = token(ALICE, json!({}));
    assert_eq!(
        post(&srv, "/deploy", &alice, deploy_body("alice-app"))
            .await
            .0,
        202
    );
    assert_eq!(
        post(&srv, "/deploy", &alice, deploy_body("anything"))
            .await
            .0,
        403
    );
    srv.shutdown().await.unwrap();
}

#[tokio::test]
async fn the_project_claim_grants_the_projects_it_lists() {
    let srv = start_with(Arc::new(FakeBackend::new()), verifier(), |cfg| {
        cfg.project_claim = Some("app_metadata.projects".into());
    })
    .await;
    let carol = token(
        MALLORY,
        json!({"app_metadata": {"provider": "email", "projects": ["shop", "blog"]}}),
    );
    for project in ["shop", "blog"] {
        let (s, body, _) = post(&srv, "/deploy", &carol, deploy_body(project)).await;
        assert_eq!(s, 202, "{project}: {body}");
        assert_eq!(
            get(&srv, &format!("/services?project={project}"), &carol)
                .await
                .0,
            200
        );
    }
    let (s, body, _) = post(&srv, "/deploy", &carol, deploy_body("bank")).await;
    assert_forbidden("unlisted project", s, &body, Some("bank"));
    assert!(body.contains("app_metadata.projects"), "{body}");
    let mut listed = listed_projects(&srv, &carol).await;
    listed.sort();
    assert_eq!(listed, vec!["blog", "shop"]);
    // user_metadata is the user's own to write: it grants nothing.
    let self_served = token(MALLORY, json!({"user_metadata": {"projects": ["bank"]}}));
    let (s, body, _) = post(&srv, "/deploy", &self_served, deploy_body("bank")).await;
    assert_forbidden("user_metadata", s, &body, Some("bank"));
    srv.shutdown().await.unwrap();
}

#[tokio::test]
async fn service_role_keys_and_the_unix_socket_keep_full_access() {
    let srv = start_with(Arc::new(FakeBackend::new()), verifier(), policy).await;
    let alice = token(ALICE, json!({}));
    post(&srv, "/deploy", &alice, deploy_body("alice-app")).await;
    // The service-role key: any project.
    for project in ["alice-app", "bob-app", "default"] {
        let (s, body, _) = post(&srv, "/deploy", SERVICE_KEY, deploy_body(project)).await;
        assert_eq!(s, 202, "{project}: {body}");
        assert_eq!(
            get(&srv, &format!("/services?project={project}"), SERVICE_KEY)
                .await
                .0,
            200
        );
    }
    // The Unix socket (the operator, by peer uid): any project, and the whole listing.
    let (s, _, body) = uds_request(
        &srv.uds,
        "POST",
        "/deploy",
        &[("content-type", "application/json")],
        Some(&deploy_body("carol-app").to_string()),
    )
    .await;
    assert_eq!(s, 202, "{body}");
    let (s, _, body) = uds_request(&srv.uds, "GET", "/deployments", &[], None).await;
    assert_eq!(s, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["deployments"].as_array().unwrap().len(), 5, "{body}");
    let (s, _, body) = uds_request(
        &srv.uds,
        "POST",
        "/destroy",
        &[("content-type", "application/json")],
        Some(r#"{"project": "alice-app"}"#),
    )
    .await;
    assert_eq!(s, 200, "{body}");
    srv.shutdown().await.unwrap();
}

fn authed<T>(msg: T, tok: &str) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut().insert(
        "authorization",
        MetadataValue::try_from(format!("Bearer {tok}")).unwrap(),
    );
    r
}

#[tokio::test]
async fn grpc_deploy_and_logs_are_authorized_like_http() {
    let srv = start_with(Arc::new(FakeBackend::new()), verifier(), policy).await;
    let mut c = ControlPlaneClient::connect(srv.base.clone()).await.unwrap();
    let alice = token(ALICE, json!({}));
    let req = |project: &str| DeployRequest {
        slugs: vec!["gh:acme/hello".into()],
        project: project.into(),
    };
    let ok = c.deploy(authed(req("alice-app"), &alice)).await.unwrap();
    assert!(ok.into_inner().ok);
    let e = c.deploy(authed(req("bob-app"), &alice)).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
    assert!(e.message().contains("bob-app"), "{}", e.message());
    // StreamLogs reads the server's default project, which Alice may not read.
    let logs = LogRequest {
        service: "hello".into(),
        follow: false,
        tail: 1,
    };
    let e = c
        .stream_logs(authed(logs.clone(), &alice))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
    c.stream_logs(authed(logs, SERVICE_KEY)).await.unwrap();
    srv.shutdown().await.unwrap();
}

/// A client whose connections come from `ip` (any 127.0.0.0/8 address is local on Linux).
fn client_from(ip: Ipv4Addr) -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .local_address(IpAddr::V4(ip))
        .build()
        .unwrap()
}

#[tokio::test]
async fn repeated_auth_failures_get_429_with_retry_after_per_client_until_the_window_passes() {
    let window = Duration::from_secs(2);
    let srv = start_with(
        Arc::new(FakeBackend::new()),
        Arc::new(StaticVerifier),
        |cfg| {
            cfg.auth_failure_limit = 3;
            cfg.auth_failure_window = window;
        },
    )
    .await;
    let url = format!("{}/services", srv.base);
    let here = client_from(Ipv4Addr::new(127, 0, 0, 1));
    let status = |c: &reqwest::Client, tok: &'static str| {
        let r = c.get(&url).bearer_auth(tok).send();
        async move { r.await.unwrap() }
    };
    // An unreachable auth provider is not the client's failure.
    for _ in 0..5 {
        assert_eq!(status(&here, "down").await.status().as_u16(), 503);
    }
    assert_eq!(status(&here, GOOD).await.status().as_u16(), 200);
    // Three failures within the window are answered as such…
    for tok in ["wrong", "forbidden", "wrong"] {
        let want = if tok == "forbidden" { 403 } else { 401 };
        assert_eq!(status(&here, tok).await.status().as_u16(), want, "{tok}");
    }
    // …then this client is refused, whatever it presents.
    for tok in ["wrong", GOOD] {
        let r = status(&here, tok).await;
        assert_eq!(r.status().as_u16(), 429, "{tok}");
        let retry: u64 = r.headers()["retry-after"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!((1..=2).contains(&retry), "Retry-After {retry}");
        let (code, message) = assert_error_shape(&r.text().await.unwrap());
        assert_eq!(code, "too_many_auth_failures");
        assert!(message.contains("3 times within 2s"), "{message}");
    }
    // gRPC from the same client too.
    let mut g = ControlPlaneClient::connect(srv.base.clone()).await.unwrap();
    let e = g
        .deploy(authed(
            DeployRequest {
                slugs: vec!["gh:acme/hello".into()],
                project: "demo".into(),
            },
            GOOD,
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::ResourceExhausted, "{e:?}");
    // The open routes stay open.
    let r = here
        .get(format!("{}/health", srv.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    // Another client address, and the socket's operator, are not affected.
    let there = client_from(Ipv4Addr::new(127, 0, 0, 2));
    assert_eq!(status(&there, GOOD).await.status().as_u16(), 200);
    assert_eq!(status(&there, "wrong").await.status().as_u16(), 401);
    let (s, _, body) = uds_request(&srv.uds, "GET", "/services", &[], None).await;
    assert_eq!(s, 200, "{body}");
    // After the window, the first client is heard again.
    tokio::time::sleep(window + Duration::from_millis(200)).await;
    assert_eq!(status(&here, GOOD).await.status().as_u16(), 200);
    srv.shutdown().await.unwrap();
}

#[tokio::test]
async fn with_the_default_limit_bad_tokens_stop_being_answered_401_after_ten() {
    let limit = ServeConfig::default().auth_failure_limit;
    assert_eq!(limit, 10);
    let srv = start_with(
        Arc::new(FakeBackend::new()),
        Arc::new(StaticVerifier),
        |cfg| {
            cfg.auth_failure_limit = limit;
            cfg.auth_failure_window = ServeConfig::default().auth_failure_window;
        },
    )
    .await;
    let c = client();
    let mut statuses = Vec::new();
    for i in 0..200 {
        let r = c
            .get(format!("{}/deployments", srv.base))
            .bearer_auth(format!("guess-{i}"))
            .send()
            .await
            .unwrap();
        statuses.push(r.status().as_u16());
    }
    assert!(statuses[..10].iter().all(|s| *s == 401), "{statuses:?}");
    assert!(statuses[10..].iter().all(|s| *s == 429), "{statuses:?}");
    srv.shutdown().await.unwrap();
}

#[tokio::test]
async fn the_open_health_route_names_no_version() {
    let srv = start(Arc::new(FakeBackend::new()), Arc::new(StaticVerifier)).await;
    let r = client()
        .get(format!("{}/health", srv.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let body = r.text().await.unwrap();
    let h: Value = serde_json::from_str(&body).unwrap();
    assert!(h.get("version").is_none(), "{body}");
    assert_eq!(h["engine"]["reachable"], true, "{body}");
    // The fake engine's version, and iac's own.
    for version in ["20.10.0", env!("CARGO_PKG_VERSION")] {
        assert!(!body.contains(version), "{version} in {body}");
    }
    let mut g = ControlPlaneClient::connect(srv.base.clone()).await.unwrap();
    let detail = g
        .health_check(tonic::Request::new(()))
        .await
        .unwrap()
        .into_inner()
        .detail;
    for version in ["20.10.0", env!("CARGO_PKG_VERSION")] {
        assert!(!detail.contains(version), "{version} in {detail}");
    }
    srv.shutdown().await.unwrap();
}
