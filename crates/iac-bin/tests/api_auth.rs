//! The auth matrix end to end: real `SupabaseVerifier` in front of the real server, a mock
//! Supabase (wiremock) serving a JWKS with an ES256 and an RS256 key (generated in memory),
//! `/auth/v1/user` and an admin route. Every case is a real `POST /deploy` over TCP and checks
//! the exact status: valid credentials → 202, everything else 401/403/503 and never 2xx. The
//! user `ADMIN_ID` is granted `deploy` on every project (`[serve.projects."*"]`), so a 403 here
//! is always the verifier's (per-project authorization has its own tests in `api_access.rs`).

mod api_support;

use std::sync::Arc;
use std::time::Duration;

use api_support::*;
use iac_backends::auth::testkit::{self, TestKey};
use iac_backends::auth::{Secret, SupabaseConfig, SupabaseVerifier};
use iac_bin::api::ProjectGrant;
use serde_json::json;
use wiremock::matchers::{header, method, path, query_param};
use wiremock::{Mock, MockServer, ResponseTemplate};

const SERVICE_KEY: &str = "sb_secret_0123456789abcdef";
const JWT_SECRET: &str = "legacy-jwt-secret-with-at-least-32-characters";
const ADMIN_ID: &str = "11111111-1111-4111-8111-111111111111";
const PLAIN_ID: &str = "22222222-2222-4222-8222-222222222222";
const DELETED_ID: &str = "33333333-3333-4333-8333-333333333333";

struct Fixture {
    supabase: MockServer,
    es: TestKey,
    rs: TestKey,
    issuer: String,
}

async fn fixture() -> Fixture {
    let supabase = MockServer::start().await;
    let es = TestKey::es256("es-key-1");
    let rs = TestKey::rs256("rs-key-1");
    Mock::given(method("GET"))
        .and(path("/auth/v1/.well-known/jwks.json"))
        .respond_with(ResponseTemplate::new(200).set_body_json(testkit::jwks(&[&es, &rs])))
        .with_priority(5)
        .mount(&supabase)
        .await;
    let issuer = format!("{}/auth/v1", supabase.uri());
    Fixture {
        supabase,
        es,
        rs,
        issuer,
    }
}

/// `/auth/v1/user` answers 200 with the user for `token` (apikey must be the service key).
async fn user_ok(f: &Fixture, token: &str, id: &str) {
    Mock::given(method("GET"))
        .and(path("/auth/v1/user"))
        .and(header("apikey", SERVICE_KEY))
        .and(header("authorization", format!("Bearer {token}").as_str()))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!({"id": id, "aud": "authenticated", "role": "iac_admin"})),
        )
        .mount(&f.supabase)
        .await;
}

fn config(url: &str) -> SupabaseConfig {
    SupabaseConfig {
        url: Some(url.to_string()),
        service_role_key: Some(Secret::new(SERVICE_KEY)),
        jwt_secret: Some(Secret::new(JWT_SECRET)),
        allowed_roles: vec!["service_role".into(), "iac_admin".into()],
        min_refetch_interval: Duration::from_millis(0),
        http_timeout: Duration::from_secs(2),
        ..SupabaseConfig::default()
    }
}

async fn deploy_status(srv: &Running, auth: Option<&str>) -> (u16, String) {
    let mut req = client()
        .post(format!("{}/deploy", srv.base))
        .json(&json!({"slugs": ["gh:acme/hello"], "project": format!("p{}", rand_suffix())}));
    if let Some(a) = auth {
        req = req.header("authorization", a);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    let body = r.text().await.unwrap();
    (status, body)
}

/// A server whose `[serve.projects."*"]` lets `ADMIN_ID` deploy anywhere.
async fn start_granting_admin(verifier: Arc<SupabaseVerifier>) -> Running {
    start_with(Arc::new(FakeBackend::new()), verifier, |cfg| {
        cfg.projects.insert(
            "*".into(),
            ProjectGrant {
                deploy: vec![ADMIN_ID.into()],
                ..ProjectGrant::default()
            },
        );
    })
    .await
}

fn rand_suffix() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..8].to_string()
}

fn bearer(t: &str) -> String {
    format!("Bearer {t}")
}

#[tokio::test]
async fn auth_matrix_against_mock_supabase() {
    let f = fixture().await;
    let verifier = Arc::new(SupabaseVerifier::new(config(&f.supabase.uri())).unwrap());
    let srv = start_granting_admin(verifier).await;
    let now = testkit::now();

    // --- accepted ---
    // Legacy HS256 service_role key (iss "supabase", no sub), confirmed with an admin call.
    let legacy_service = testkit::sign_hs256(
        JWT_SECRET.as_bytes(),
        None,
        &testkit::legacy_service_claims(3600),
    );
    Mock::given(method("GET"))
        .and(path("/auth/v1/admin/users"))
        .and(query_param("per_page", "1"))
        .and(header("apikey", legacy_service.as_str()))
        .and(header("authorization", bearer(&legacy_service).as_str()))
        .respond_with(
            ResponseTemplate::new(200).set_body_json(json!({"users": [], "aud": "authenticated"})),
        )
        .expect(1) // the second use is answered from the confirmation cache
        .mount(&f.supabase)
        .await;
    for _ in 0..2 {
        let (s, body) = deploy_status(&srv, Some(&bearer(&legacy_service))).await;
        assert_eq!(s, 202, "legacy service-role JWT: {body}");
    }
    // Opaque sb_secret key: constant-time equality, no upstream call.
    let (s, body) = deploy_status(&srv, Some(&bearer(SERVICE_KEY))).await;
    assert_eq!(s, 202, "sb_secret key: {body}");
    // ES256 and RS256 user tokens with an allowed role, confirmed with /auth/v1/user.
    let es_user = f.es.sign(&testkit::user_claims(
        &f.issuer,
        ADMIN_ID,
        "iac_admin",
        3600,
    ));
    user_ok(&f, &es_user, ADMIN_ID).await;
    let (s, body) = deploy_status(&srv, Some(&bearer(&es_user))).await;
    assert_eq!(s, 202, "ES256 user token: {body}");
    let rs_user = f.rs.sign(&testkit::user_claims(
        &f.issuer,
        ADMIN_ID,
        "iac_admin",
        3600,
    ));
    user_ok(&f, &rs_user, ADMIN_ID).await;
    let (s, body) = deploy_status(&srv, Some(&bearer(&rs_user))).await;
    assert_eq!(s, 202, "RS256 user token: {body}");

    // --- refused ---
    // Another user's payload under this token's header and signature: the signature no longer matches.
    let tampered = {
        let parts: Vec<&str> = es_user.split('.').collect();
        let other = f.es.sign(&testkit::user_claims(
            &f.issuer,
            PLAIN_ID,
            "iac_admin",
            7200,
        ));
        format!(
            "{}.{}.{}",
            parts[0],
            other.split('.').nth(1).unwrap(),
            parts[2]
        )
    };
    let forged_by_other_key = TestKey::es256("es-key-1").sign(&testkit::user_claims(
        &f.issuer,
        ADMIN_ID,
        "iac_admin",
        3600,
    ));
    let none = testkit::unsigned(&testkit::user_claims(
        &f.issuer,
        ADMIN_ID,
        "service_role",
        3600,
    ));
    // HS/RS confusion: HS256 "signed" with the RSA public key PEM, naming the RSA key's kid.
    let confusion = testkit::sign_hs256(
        f.rs.public_pem.as_bytes(),
        Some(&f.rs.kid),
        &testkit::user_claims(&f.issuer, ADMIN_ID, "service_role", 3600),
    );
    // The RS key's signature presented as ES256 (alg from the header must match the key).
    let alg_swap = f.rs.sign_with_header(
        "ES256",
        Some(&f.rs.kid),
        &testkit::user_claims(&f.issuer, ADMIN_ID, "iac_admin", 3600),
    );
    let expired = f.es.sign(&testkit::user_claims(
        &f.issuer,
        ADMIN_ID,
        "iac_admin",
        -3600,
    ));
    let mut nbf_claims = testkit::user_claims(&f.issuer, ADMIN_ID, "iac_admin", 7200);
    nbf_claims["nbf"] = json!(now + 3600);
    let not_yet = f.es.sign(&nbf_claims);
    let wrong_issuer = f.es.sign(&testkit::user_claims(
        "https://evil.example/auth/v1",
        ADMIN_ID,
        "iac_admin",
        3600,
    ));
    let wrong_role = f.es.sign(&testkit::user_claims(
        &f.issuer,
        PLAIN_ID,
        "authenticated",
        3600,
    ));
    let deleted = f.es.sign(&testkit::user_claims(
        &f.issuer,
        DELETED_ID,
        "iac_admin",
        3600,
    ));
    Mock::given(method("GET"))
        .and(path("/auth/v1/user"))
        .and(header("authorization", bearer(&deleted).as_str()))
        .respond_with(
            ResponseTemplate::new(401)
                .set_body_json(json!({"code": 401, "error_code": "user_not_found"})),
        )
        .mount(&f.supabase)
        .await;
    let wrong_secret_key = "sb_secret_fedcba9876543210";
    let unknown_kid = TestKey::es256("never-published").sign(&testkit::user_claims(
        &f.issuer,
        ADMIN_ID,
        "iac_admin",
        3600,
    ));

    let cases: Vec<(&str, Option<String>, u16)> = vec![
        ("missing header", None, 401),
        (
            "malformed header (scheme)",
            Some(format!("Token {es_user}")),
            401,
        ),
        ("malformed header (empty)", Some("Bearer ".into()), 401),
        ("not a JWT", Some(bearer("definitely-not-a-jwt")), 401),
        (
            "bad signature (payload swapped)",
            Some(bearer(&tampered)),
            401,
        ),
        (
            "bad signature (other key, same kid)",
            Some(bearer(&forged_by_other_key)),
            401,
        ),
        ("alg none", Some(bearer(&none)), 401),
        ("HS/RS confusion", Some(bearer(&confusion)), 401),
        ("alg does not match the key", Some(bearer(&alg_swap)), 401),
        ("expired", Some(bearer(&expired)), 401),
        ("not yet valid", Some(bearer(&not_yet)), 401),
        ("wrong issuer", Some(bearer(&wrong_issuer)), 401),
        ("unknown kid", Some(bearer(&unknown_kid)), 401),
        ("wrong sb_secret key", Some(bearer(wrong_secret_key)), 401),
        ("publishable key", Some(bearer("sb_publishable_abc")), 401),
        ("wrong role", Some(bearer(&wrong_role)), 403),
        ("user deleted upstream", Some(bearer(&deleted)), 401),
    ];
    for (name, auth, want) in cases {
        let (s, body) = deploy_status(&srv, auth.as_deref()).await;
        assert_eq!(s, want, "{name}: {body}");
        let (_, msg) = assert_error_shape(&body);
        // No credential material in the reason.
        for secret in [SERVICE_KEY, JWT_SECRET, wrong_secret_key, es_user.as_str()] {
            assert!(
                !msg.contains(secret),
                "{name}: message leaks a secret: {msg}"
            );
        }
        if let Some(a) = &auth
            && let Some(t) = a.strip_prefix("Bearer ")
            && t.len() > 8
        {
            assert!(!msg.contains(t), "{name}: message echoes the token: {msg}");
        }
    }
    srv.shutdown().await.unwrap();
}

#[tokio::test]
async fn supabase_down_or_failing_is_503_never_2xx() {
    // Nothing listens on this port any more.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", l.local_addr().unwrap())
    };
    let verifier = Arc::new(SupabaseVerifier::new(config(&dead)).unwrap());
    let srv = start(Arc::new(FakeBackend::new()), verifier).await;
    let issuer = format!("{dead}/auth/v1");
    // HS256 user token verifies locally, but its confirmation cannot be had.
    let hs_user = testkit::sign_hs256(
        JWT_SECRET.as_bytes(),
        None,
        &testkit::user_claims(&issuer, ADMIN_ID, "iac_admin", 3600),
    );
    let (s, body) = deploy_status(&srv, Some(&bearer(&hs_user))).await;
    assert_eq!(s, 503, "{body}");
    assert_eq!(assert_error_shape(&body).0, "auth_unavailable");
    // ES256 token: the JWKS itself cannot be fetched.
    let es_user =
        TestKey::es256("k").sign(&testkit::user_claims(&issuer, ADMIN_ID, "iac_admin", 3600));
    let (s, body) = deploy_status(&srv, Some(&bearer(&es_user))).await;
    assert_eq!(s, 503, "{body}");
    // Legacy service key: the admin confirmation cannot be had.
    let legacy = testkit::sign_hs256(
        JWT_SECRET.as_bytes(),
        None,
        &testkit::legacy_service_claims(3600),
    );
    let (s, _) = deploy_status(&srv, Some(&bearer(&legacy))).await;
    assert_eq!(s, 503);
    srv.shutdown().await.unwrap();

    // Supabase up but failing (500) → 503 too.
    let f = fixture().await;
    Mock::given(method("GET"))
        .and(path("/auth/v1/user"))
        .respond_with(ResponseTemplate::new(500))
        .mount(&f.supabase)
        .await;
    let verifier = Arc::new(SupabaseVerifier::new(config(&f.supabase.uri())).unwrap());
    let srv = start(Arc::new(FakeBackend::new()), verifier).await;
    let tok = f.es.sign(&testkit::user_claims(
        &f.issuer,
        ADMIN_ID,
        "iac_admin",
        3600,
    ));
    let (s, body) = deploy_status(&srv, Some(&bearer(&tok))).await;
    assert_eq!(s, 503, "{body}");
    srv.shutdown().await.unwrap();
}

#[tokio::test]
async fn jwks_key_rotation_is_picked_up() {
    let f = fixture().await;
    let verifier = Arc::new(SupabaseVerifier::new(config(&f.supabase.uri())).unwrap());
    let srv = start_granting_admin(verifier).await;
    // Prime the cache with the current JWKS.
    let old = f.es.sign(&testkit::user_claims(
        &f.issuer,
        ADMIN_ID,
        "iac_admin",
        3600,
    ));
    user_ok(&f, &old, ADMIN_ID).await;
    assert_eq!(deploy_status(&srv, Some(&bearer(&old))).await.0, 202);
    // A new key is minted and published; tokens signed by it must be accepted.
    let rotated = TestKey::es256("es-key-2");
    Mock::given(method("GET"))
        .and(path("/auth/v1/.well-known/jwks.json"))
        .respond_with(
            ResponseTemplate::new(200).set_body_json(testkit::jwks(&[&f.es, &f.rs, &rotated])),
        )
        .with_priority(1)
        .mount(&f.supabase)
        .await;
    let new = rotated.sign(&testkit::user_claims(
        &f.issuer,
        ADMIN_ID,
        "iac_admin",
        3600,
    ));
    user_ok(&f, &new, ADMIN_ID).await;
    let (s, body) = deploy_status(&srv, Some(&bearer(&new))).await;
    assert_eq!(s, 202, "{body}");
    srv.shutdown().await.unwrap();
}

/// Runs `iac serve --http <addr>` (a stand-in Supabase URL; nothing is called at start-up) and
/// returns its stderr up to the "admin API listening" line, then stops it.
fn serve_stderr_until_listening(http: &str) -> String {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("iac.sock");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_iac"))
        .args(["serve", "--http", http, "--uds", sock.to_str().unwrap()])
        .current_dir(dir.path())
        .env("RUST_LOG", "info")
        .env("SUPABASE_URL", "http://127.0.0.1:9")
        .env("SUPABASE_SERVICE_ROLE_KEY", SERVICE_KEY)
        .env_remove("SUPABASE_JWT_SECRET")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run iac serve");
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut seen = String::new();
        for line in std::io::BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            seen.push_str(&line);
            seen.push('\n');
            if line.contains("admin API listening") {
                break;
            }
        }
        let _ = tx.send(seen);
    });
    let seen = rx.recv_timeout(Duration::from_secs(60));
    let _ = child.kill();
    let _ = child.wait();
    let seen = seen.expect("iac serve did not start within 60 s");
    assert!(
        seen.contains("admin API listening"),
        "iac serve stopped early: {seen}"
    );
    seen
}

#[test]
fn serve_warns_when_the_plaintext_listener_is_not_on_loopback() {
    let exposed = serve_stderr_until_listening("0.0.0.0:0");
    assert!(
        exposed.contains("WARN")
            && exposed.contains("not a loopback address")
            && exposed.contains("no TLS"),
        "{exposed}"
    );
    let local = serve_stderr_until_listening("127.0.0.1:0");
    assert!(!local.contains("loopback"), "{local}");
}
