//! `GET /refs` over real TCP HTTP with the mockall backend: the answer's shape, auth, the slug
//! policy (`path:`/`git+file:` refused unless `[serve] allow_local_sources`, before the backend
//! is asked), bad slugs, backend errors passed through with their status, and the route in the
//! OpenAPI document.

mod api_support;

use std::sync::Arc;

use api_support::*;
use iac_bin::api::{MockControlPlaneBackend, refs_error};
use iac_core::{FetchError, ProjectName, RefList};

fn listed() -> RefList {
    RefList {
        branches: vec!["feature/x".into(), "main".into()],
        tags: vec!["v1".into()],
        default: Some("main".into()),
    }
}

fn mock() -> MockControlPlaneBackend {
    let mut m = MockControlPlaneBackend::new();
    m.expect_default_project()
        .returning(|| ProjectName::new("demo").unwrap());
    m
}

/// Percent-encodes a query value (everything but unreserved characters, `/` and `:`).
fn encode(v: &str) -> String {
    v.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~/:".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

async fn get(base: &str, query: &[(&str, &str)], token: &str) -> (u16, serde_json::Value) {
    let q: Vec<String> = query
        .iter()
        .map(|(k, v)| format!("{k}={}", encode(v)))
        .collect();
    let r = client()
        .get(format!("{base}/refs?{}", q.join("&")))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap())
}

#[tokio::test]
async fn lists_refs_of_a_remote_slug_for_any_authenticated_caller() {
    let mut m = mock();
    m.expect_refs()
        .withf(|s| s.to_string() == "gh:acme/hello#dev")
        .times(1)
        .returning(|_| Ok(listed()));
    m.expect_refs()
        .withf(|s| s.to_string() == "git+https://git.example.com/a/b.git")
        .times(1)
        .returning(|s| {
            Err(refs_error(FetchError::Refused {
                slug: s.to_string(),
            }))
        });
    let srv = start(Arc::new(m), Arc::new(StaticVerifier)).await;
    let (status, v) = get(&srv.base, &[("slug", "gh:acme/hello#dev")], GOOD).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(
        v,
        serde_json::json!({"branches": ["feature/x", "main"], "tags": ["v1"], "default": "main"})
    );
    let (status, v) = get(
        &srv.base,
        &[("slug", "git+https://git.example.com/a/b.git")],
        GOOD,
    )
    .await;
    assert_eq!(status, 403, "{v}");
    assert_eq!(v["error"]["code"], "source_refused");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("git+https://git.example.com/a/b.git"),
        "{v}"
    );
    // No or a bad credential: 401, the backend is not asked (times(1) above).
    let (status, _) = get(&srv.base, &[("slug", "gh:acme/hello#dev")], "nope").await;
    assert_eq!(status, 401);
    srv.shutdown().await.unwrap();
}

#[tokio::test]
async fn local_slugs_are_refused_unless_allowed_and_bad_input_is_named() {
    // The backend must not be asked: no expectation for `refs`.
    let srv = start(Arc::new(mock()), Arc::new(StaticVerifier)).await;
    for s in ["path:/etc", "git+file:///srv/repo.git"] {
        let (status, v) = get(&srv.base, &[("slug", s)], GOOD).await;
        assert_eq!(status, 403, "{s}: {v}");
        assert_eq!(v["error"]["code"], "local_source_refused");
        assert!(
            v["error"]["message"].as_str().unwrap().contains(s)
                && v["error"]["message"]
                    .as_str()
                    .unwrap()
                    .contains("allow_local_sources"),
            "{v}"
        );
    }
    let (status, v) = get(&srv.base, &[("slug", "ftp:x/y")], GOOD).await;
    assert_eq!(status, 422, "{v}");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("ftp:x/y"),
        "{v}"
    );
    let (status, v) = get(&srv.base, &[], GOOD).await;
    assert_eq!(status, 400, "missing slug: {v}");
    let (status, v) = get(&srv.base, &[("slug", "gh:a/b"), ("ref", "x")], GOOD).await;
    assert_eq!(status, 400, "unknown parameter: {v}");
    let doc: serde_json::Value = client()
        .get(format!("{}/openapi.json", srv.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let op = &doc["paths"]["/refs"]["get"];
    assert_eq!(op["parameters"][0]["name"], "slug", "{op}");
    assert_eq!(op["parameters"][0]["required"], true, "{op}");
    assert!(op["responses"]["200"].is_object(), "{op}");
    srv.shutdown().await.unwrap();

    let mut m = mock();
    m.expect_refs()
        .withf(|s| s.to_string() == "git+file:///srv/repo.git")
        .times(1)
        .returning(|_| Ok(RefList::default()));
    let srv = start_with(Arc::new(m), Arc::new(StaticVerifier), |c| {
        c.allow_local_sources = true
    })
    .await;
    let (status, v) = get(&srv.base, &[("slug", "git+file:///srv/repo.git")], GOOD).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(
        v,
        serde_json::json!({"branches": [], "tags": [], "default": null})
    );
    srv.shutdown().await.unwrap();
}
