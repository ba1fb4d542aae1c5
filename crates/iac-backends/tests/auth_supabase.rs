//! `SupabaseVerifier` against a mock Supabase (wiremock) with in-memory ES256/RS256 keys: what
//! the HTTP matrix in iac-bin cannot see from a status code — the principal it returns, the
//! confirmation cache, the bounded JWKS refetch, authorization before the upstream call, user-id
//! allow lists, the legacy-key issuer rule and HS256 without a secret.

use std::time::Duration;

use iac_backends::auth::testkit::{self, TestKey};
use iac_backends::auth::{Secret, SupabaseConfig, SupabaseVerifier};
use iac_core::{AuthError, AuthVerifier};
use serde_json::json;
use wiremock::matchers::{header, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

const KEY: &str = "sb_secret_unit";
const SECRET: &str = "unit-test-jwt-secret-of-sufficient-length";
const USER: &str = "44444444-4444-4444-8444-444444444444";

async fn supabase(keys: &[&TestKey]) -> MockServer {
    let s = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/auth/v1/.well-known/jwks.json"))
        .respond_with(ResponseTemplate::new(200).set_body_json(testkit::jwks(keys)))
        .mount(&s)
        .await;
    s
}

fn cfg(url: &str) -> SupabaseConfig {
    SupabaseConfig {
        url: Some(url.into()),
        service_role_key: Some(Secret::new(KEY)),
        jwt_secret: Some(Secret::new(SECRET)),
        allowed_roles: vec!["service_role".into(), "iac_admin".into()],
        ..SupabaseConfig::default()
    }
}

async fn jwks_hits(s: &MockServer) -> usize {
    s.received_requests()
        .await
        .unwrap()
        .iter()
        .filter(|r| r.url.path().ends_with("jwks.json"))
        .count()
}

async fn user_hits(s: &MockServer) -> usize {
    s.received_requests()
        .await
        .unwrap()
        .iter()
        .filter(|r| r.url.path() == "/auth/v1/user")
        .count()
}

#[tokio::test]
async fn user_token_principal_and_confirmation_cache() {
    let es = TestKey::es256("k1");
    let s = supabase(&[&es]).await;
    let issuer = format!("{}/auth/v1", s.uri());
    let mut claims = testkit::user_claims(&issuer, USER, "iac_admin", 3600);
    claims["app_metadata"] = json!({"provider": "email", "projects": ["demo", "shop"]});
    let tok = es.sign(&claims);
    Mock::given(method("GET"))
        .and(path("/auth/v1/user"))
        .and(header("apikey", KEY))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"id": USER})))
        .mount(&s)
        .await;
    let v = SupabaseVerifier::new(cfg(&s.uri())).unwrap();
    let p = v.verify(&tok).await.unwrap();
    assert_eq!(p.subject, USER);
    assert_eq!(p.role, "iac_admin");
    assert_eq!(
        p.email.as_deref(),
        Some(format!("{USER}@example.test").as_str())
    );
    assert_eq!(p.method, "jwt ES256 (jwks) + supabase /auth/v1/user");
    // The verified payload travels with the principal, for rules on claims.
    assert_eq!(
        p.claim("app_metadata.projects"),
        Some(&json!(["demo", "shop"]))
    );
    assert_eq!(p.claim("sub"), Some(&json!(USER)));
    v.verify(&tok).await.unwrap();
    assert_eq!(
        user_hits(&s).await,
        1,
        "second verification answered from the cache"
    );
    assert_eq!(jwks_hits(&s).await, 1, "JWKS cached");

    // Without the cache every verification asks Supabase.
    let v = SupabaseVerifier::new(SupabaseConfig {
        confirm_cache_ttl: Duration::ZERO,
        ..cfg(&s.uri())
    })
    .unwrap();
    v.verify(&tok).await.unwrap();
    v.verify(&tok).await.unwrap();
    assert_eq!(user_hits(&s).await, 3);
}

#[tokio::test]
async fn supabase_answering_for_another_user_is_refused() {
    let es = TestKey::es256("k1");
    let s = supabase(&[&es]).await;
    Mock::given(method("GET"))
        .and(path("/auth/v1/user"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"id": "someone-else"})))
        .mount(&s)
        .await;
    let tok = es.sign(&testkit::user_claims(
        &format!("{}/auth/v1", s.uri()),
        USER,
        "iac_admin",
        3600,
    ));
    let v = SupabaseVerifier::new(cfg(&s.uri())).unwrap();
    assert!(
        matches!(v.verify(&tok).await, Err(AuthError::Invalid(m)) if m.contains("different user"))
    );
}

#[tokio::test]
async fn unknown_kid_refetch_is_rate_limited() {
    let es = TestKey::es256("k1");
    let s = supabase(&[&es]).await;
    let issuer = format!("{}/auth/v1", s.uri());
    let known = es.sign(&testkit::user_claims(&issuer, USER, "iac_admin", 3600));
    let stranger = TestKey::es256("k-unknown");
    let c = SupabaseConfig {
        confirm_with_supabase: Some(false),
        min_refetch_interval: Duration::from_secs(60),
        ..cfg(&s.uri())
    };
    let v = SupabaseVerifier::new(c).unwrap();
    v.verify(&known).await.unwrap();
    for i in 0..5 {
        let t = stranger.sign(&testkit::user_claims(
            &issuer,
            &format!("u{i}"),
            "iac_admin",
            3600,
        ));
        assert!(
            matches!(v.verify(&t).await, Err(AuthError::Invalid(m)) if m.contains("unknown key"))
        );
    }
    assert_eq!(
        jwks_hits(&s).await,
        1,
        "unknown kids within min_refetch_interval cause no refetch"
    );

    // With no minimum interval, an unknown kid triggers a refetch each time.
    let c = SupabaseConfig {
        confirm_with_supabase: Some(false),
        min_refetch_interval: Duration::ZERO,
        ..cfg(&s.uri())
    };
    let v = SupabaseVerifier::new(c).unwrap();
    v.verify(&known).await.unwrap();
    let t = stranger.sign(&testkit::user_claims(&issuer, USER, "iac_admin", 3600));
    assert!(v.verify(&t).await.is_err());
    assert_eq!(jwks_hits(&s).await, 3);
}

#[tokio::test]
async fn authorization_happens_before_the_upstream_call_and_user_ids_can_be_allowed() {
    let rs = TestKey::rs256("r1");
    let s = supabase(&[&rs]).await;
    let issuer = format!("{}/auth/v1", s.uri());
    Mock::given(method("GET"))
        .and(path("/auth/v1/user"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"id": USER})))
        .mount(&s)
        .await;
    let plain = rs.sign(&testkit::user_claims(&issuer, USER, "authenticated", 3600));
    let v = SupabaseVerifier::new(cfg(&s.uri())).unwrap();
    let e = v.verify(&plain).await.unwrap_err();
    assert_eq!(e.status(), 403, "{e}");
    assert_eq!(
        user_hits(&s).await,
        0,
        "a forbidden role never costs an upstream call"
    );
    let v = SupabaseVerifier::new(SupabaseConfig {
        allowed_user_ids: vec![USER.into()],
        ..cfg(&s.uri())
    })
    .unwrap();
    let p = v.verify(&plain).await.unwrap();
    assert_eq!(
        (p.subject.as_str(), p.role.as_str()),
        (USER, "authenticated")
    );
    assert_eq!(p.method, "jwt RS256 (jwks) + supabase /auth/v1/user");
}

#[tokio::test]
async fn local_only_mode_and_issuer_rules() {
    // No URL: HS256 secret only, no upstream call; iss checked against the configured issuer.
    let c = SupabaseConfig {
        url: None,
        issuer: Some("https://proj.supabase.co/auth/v1".into()),
        jwt_secret: Some(Secret::new(SECRET)),
        ..SupabaseConfig::default()
    };
    let v = SupabaseVerifier::new(c).unwrap();
    assert!(!v.confirms());
    let legacy = testkit::sign_hs256(
        SECRET.as_bytes(),
        None,
        &testkit::legacy_service_claims(3600),
    );
    let p = v.verify(&legacy).await.unwrap();
    assert_eq!(
        (p.subject.as_str(), p.role.as_str(), p.method.as_str()),
        ("service_role", "service_role", "jwt HS256 (jwt secret)")
    );
    // A user token claiming the legacy issuer is not a legacy service key.
    let mut user = testkit::user_claims("supabase", USER, "service_role", 3600);
    let forged = testkit::sign_hs256(SECRET.as_bytes(), None, &user);
    assert!(matches!(v.verify(&forged).await, Err(AuthError::Invalid(m)) if m.contains("issuer")));
    user["iss"] = json!("https://proj.supabase.co/auth/v1");
    let ok = testkit::sign_hs256(SECRET.as_bytes(), None, &user);
    assert_eq!(v.verify(&ok).await.unwrap().subject, USER);
    // Asymmetric tokens cannot be checked without a URL to fetch keys from.
    let es = TestKey::es256("k");
    let t = es.sign(&testkit::user_claims(
        "https://proj.supabase.co/auth/v1",
        USER,
        "service_role",
        3600,
    ));
    assert!(matches!(v.verify(&t).await, Err(AuthError::Invalid(m)) if m.contains("SUPABASE_URL")));
    // Missing exp is refused.
    let no_exp = testkit::sign_hs256(
        SECRET.as_bytes(),
        None,
        &json!({"iss": "supabase", "role": "service_role"}),
    );
    assert!(matches!(v.verify(&no_exp).await, Err(AuthError::Invalid(m)) if m.contains("exp")));
}

#[tokio::test]
async fn hs256_without_a_secret_only_matches_the_configured_legacy_key() {
    let legacy_key = testkit::sign_hs256(
        b"the-projects-secret-we-do-not-have",
        None,
        &testkit::legacy_service_claims(3600),
    );
    let other = testkit::sign_hs256(
        b"some-other-secret",
        None,
        &testkit::legacy_service_claims(3600),
    );
    let c = SupabaseConfig {
        url: None,
        service_role_key: Some(Secret::new(legacy_key.clone())),
        jwt_secret: None,
        ..SupabaseConfig::default()
    };
    let v = SupabaseVerifier::new(c).unwrap();
    let p = v.verify(&legacy_key).await.unwrap();
    assert_eq!(p.role, "service_role");
    assert!(p.method.contains("constant-time"), "{}", p.method);
    assert!(
        matches!(v.verify(&other).await, Err(AuthError::Invalid(m)) if m.contains("SUPABASE_JWT_SECRET"))
    );
    assert!(matches!(
        v.verify("sb_secret_nope").await,
        Err(AuthError::Invalid(_))
    ));
    assert!(matches!(v.verify("").await, Err(AuthError::Missing)));
}

#[tokio::test]
async fn opaque_secret_key_needs_no_upstream_and_forbidden_roles_still_apply() {
    let s = MockServer::start().await;
    let v = SupabaseVerifier::new(cfg(&s.uri())).unwrap();
    let p = v.verify(KEY).await.unwrap();
    assert_eq!(p.role, "service_role");
    assert!(p.claims.is_empty(), "an opaque key has no claims");
    assert!(
        s.received_requests().await.unwrap().is_empty(),
        "sb_secret keys are not sent anywhere"
    );
    // If service_role is not an allowed role, even the right key is forbidden.
    let v = SupabaseVerifier::new(SupabaseConfig {
        allowed_roles: vec!["iac_admin".into()],
        ..cfg(&s.uri())
    })
    .unwrap();
    assert_eq!(v.verify(KEY).await.unwrap_err().status(), 403);
}

/// Issue 22: what Supabase answers is read with a cap. A JWKS or a user answer padded past it
/// fails the verification as unavailable (closed), naming the cap, instead of being held.
#[tokio::test]
async fn oversized_jwks_and_user_answers_are_refused_unread() {
    let es = TestKey::es256("k1");
    let s = MockServer::start().await;
    let mut jwks = testkit::jwks(&[&es]);
    jwks["padding"] = json!("x".repeat(4 << 20));
    Mock::given(method("GET"))
        .and(path("/auth/v1/.well-known/jwks.json"))
        .respond_with(ResponseTemplate::new(200).set_body_json(jwks))
        .mount(&s)
        .await;
    let issuer = format!("{}/auth/v1", s.uri());
    let tok = es.sign(&testkit::user_claims(&issuer, USER, "iac_admin", 3600));
    let v = SupabaseVerifier::new(cfg(&s.uri())).unwrap();
    let err = v.verify(&tok).await.unwrap_err();
    assert!(
        matches!(&err, AuthError::Unavailable(m) if m.contains("JWKS larger than 262144 bytes")),
        "{err:?}"
    );

    let s = supabase(&[&es]).await;
    Mock::given(method("GET"))
        .and(path("/auth/v1/user"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!({"id": USER, "padding": "x".repeat(4 << 20)})),
        )
        .mount(&s)
        .await;
    let issuer = format!("{}/auth/v1", s.uri());
    let tok = es.sign(&testkit::user_claims(&issuer, USER, "iac_admin", 3600));
    let v = SupabaseVerifier::new(cfg(&s.uri())).unwrap();
    let err = v.verify(&tok).await.unwrap_err();
    assert!(
        matches!(&err, AuthError::Unavailable(m) if m.contains("larger than 262144 bytes")),
        "{err:?}"
    );
}
