//! The admin API over the deployment history: a deploy and a destroy (through the fake backend)
//! are recorded with who asked, their events and outcome; after the server is stopped and a new
//! one started on the same state directory, `GET /deployments` (paged, filtered by project) and
//! `GET /deployments/{id}` still answer for them; a bad page request is a clear error.

mod api_support;

use std::sync::Arc;

use api_support::*;
use serde_json::{Value, json};

async fn get_json(srv: &Running, path: &str) -> (u16, Value) {
    let r = client()
        .get(format!("{}{path}", srv.base))
        .bearer_auth(GOOD)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap())
}

async fn deploy(srv: &Running, project: &str) -> String {
    let r = client()
        .post(format!("{}/deploy", srv.base))
        .bearer_auth(GOOD)
        .json(&json!({"slugs": ["gh:acme/hello"], "project": project}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 202);
    let id = r.headers()["x-deployment-id"].to_str().unwrap().to_string();
    let body = r.text().await.unwrap();
    assert!(
        body.lines().last().unwrap().contains("\"report\""),
        "{body}"
    );
    id
}

#[tokio::test]
async fn deployments_and_destroys_are_read_back_after_a_restart() {
    let state_dir = tempfile::tempdir().unwrap();
    let state = state_dir.path().join("state");
    let backend = Arc::new(FakeBackend::new());
    let srv = start_on_state(
        backend.clone(),
        Arc::new(StaticVerifier),
        |_| {},
        Default::default(),
        tempfile::tempdir().unwrap(),
        &state,
    )
    .await;
    let first = deploy(&srv, "demo").await;
    let other = deploy(&srv, "other").await;
    let second = deploy(&srv, "demo").await;
    let r = client()
        .post(format!("{}/destroy", srv.base))
        .bearer_auth(GOOD)
        .json(&json!({"project": "demo"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let (_, before) = get_json(&srv, &format!("/deployments/{second}")).await;
    srv.shutdown().await.unwrap();

    // A new server on the same state directory: nothing in memory, everything in the history.
    let srv = start_on_state(
        backend,
        Arc::new(StaticVerifier),
        |_| {},
        Default::default(),
        tempfile::tempdir().unwrap(),
        &state,
    )
    .await;
    let (status, rec) = get_json(&srv, &format!("/deployments/{second}")).await;
    assert_eq!(status, 200, "{rec}");
    assert_eq!(rec, before, "the same answer as before the restart");
    assert_eq!(rec["status"], "succeeded");
    assert_eq!(rec["kind"], "deploy");
    assert_eq!(rec["who"], "service_role");
    assert_eq!(rec["origin"], "http");
    assert_eq!(rec["services"], json!(["hello"]));
    assert!(
        rec["repos"].as_str().unwrap().contains("gh:acme/hello"),
        "{rec}"
    );
    // accepted + 3 fetch steps + all healthy.
    assert_eq!(rec["events"].as_array().unwrap().len(), 5, "{rec}");
    assert_eq!(rec["outcomes"][0]["service"], "hello");
    assert_eq!(rec["outcomes"][0]["ok"], true);
    assert_eq!(rec["report"]["ok"], true);

    let (status, list) = get_json(&srv, "/deployments").await;
    assert_eq!(status, 200, "{list}");
    let items = list["deployments"].as_array().unwrap();
    assert_eq!(items.len(), 4, "{list}");
    assert_eq!(items[0]["kind"], "destroy", "newest first: {list}");
    assert_eq!(items[0]["project"], "demo");
    assert_eq!(items[0]["status"], "succeeded");
    let ids: Vec<&str> = items[1..]
        .iter()
        .map(|i| i["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [second.as_str(), other.as_str(), first.as_str()]);
    assert!(list.get("next_cursor").is_none(), "{list}");

    let destroy_id = items[0]["id"].as_str().unwrap().to_string();
    let (_, d) = get_json(&srv, &format!("/deployments/{destroy_id}")).await;
    assert_eq!(
        d["removed"],
        json!(["demo-hello", "demo-hello-envoy"]),
        "{d}"
    );

    // Paged and filtered.
    let (_, page1) = get_json(&srv, "/deployments?project=demo&limit=2").await;
    let p1: Vec<&str> = page1["deployments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_str().unwrap())
        .collect();
    assert_eq!(p1, [destroy_id.as_str(), second.as_str()]);
    let cursor = page1["next_cursor"].as_str().expect("a next page");
    let (_, page2) = get_json(
        &srv,
        &format!("/deployments?project=demo&limit=2&cursor={cursor}"),
    )
    .await;
    let p2: Vec<&str> = page2["deployments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_str().unwrap())
        .collect();
    assert_eq!(p2, [first.as_str()]);
    assert!(page2.get("next_cursor").is_none(), "{page2}");

    // Bad requests name what was wrong.
    for (q, status, code) in [
        ("limit=0", 422, "invalid_request"),
        ("limit=501", 422, "invalid_request"),
        ("cursor=zzz", 400, "bad_request"),
        ("project=Not_A_Label", 422, "invalid_request"),
        ("colour=red", 400, "bad_request"),
    ] {
        let (s, body) = get_json(&srv, &format!("/deployments?{q}")).await;
        assert_eq!(s, status, "{q}: {body}");
        assert_eq!(body["error"]["code"], code, "{q}: {body}");
    }
    srv.shutdown().await.unwrap();
}
