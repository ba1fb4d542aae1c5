//! The admin API over real TCP HTTP (reqwest) with a fake backend and a static verifier: the
//! deploy stream end to end (NDJSON and SSE), `GET /deployments/{id}` after the stream, 409 on a
//! concurrent deploy, request validation and the one JSON error shape (including axum's own
//! rejections, 404 and 405), logs, destroy, health, graceful shutdown, and the OpenAPI document
//! against the routes actually served.

mod api_support;

use std::sync::Arc;
use std::time::Duration;

use api_support::*;
use iac_bin::api::{DeploymentRecord, DeploymentStatus, MockControlPlaneBackend, StreamItem};
use iac_core::{DeployEvent, ProjectName};
use tokio::sync::Semaphore;

fn parse_ndjson(body: &str) -> Vec<StreamItem> {
    body.lines()
        .map(|l| {
            serde_json::from_str::<StreamItem>(l).unwrap_or_else(|e| panic!("bad line ({e}): {l}"))
        })
        .collect()
}

#[tokio::test]
async fn deploy_streams_ndjson_events_then_report_and_is_queryable_afterwards() {
    let backend = Arc::new(FakeBackend::new());
    let srv = start(backend.clone(), Arc::new(StaticVerifier)).await;
    let resp = client()
        .post(format!("{}/deploy", srv.base))
        .bearer_auth(GOOD)
        .json(&serde_json::json!({"slugs": ["gh:acme/hello", {"slug": "gh:acme/world#v1", "name": "w"}], "project": "demo"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 202);
    assert_eq!(resp.headers()["content-type"], "application/x-ndjson");
    let id = resp.headers()["x-deployment-id"]
        .to_str()
        .unwrap()
        .to_string();
    assert_eq!(
        resp.headers()["location"].to_str().unwrap(),
        format!("/deployments/{id}")
    );
    let body = resp.text().await.unwrap();
    let items = parse_ndjson(&body);
    // 1 accepted + 3 per service + "all healthy", then the report.
    assert_eq!(items.len(), 1 + 2 * 3 + 1 + 1, "{body}");
    let (last, events) = items.split_last().unwrap();
    for (i, it) in events.iter().enumerate() {
        assert!(
            matches!(it, StreamItem::Event(_)),
            "line {i} is not an event: {it:?}"
        );
    }
    // Every event line is a plain DeployEvent plus its `type` tag.
    for line in body.lines().take(events.len()) {
        let mut v: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(v["type"], "event");
        v.as_object_mut().unwrap().remove("type");
        let _: DeployEvent = serde_json::from_value(v).unwrap();
    }
    let StreamItem::Event(first) = &events[0] else {
        unreachable!()
    };
    assert!(
        first.message.contains(&id) && first.message.contains("hello, w"),
        "{}",
        first.message
    );
    let StreamItem::Report(report) = last else {
        panic!("last line is not the report: {last:?}")
    };
    assert_eq!(report.project.as_str(), "demo");
    assert_eq!(
        report
            .services
            .iter()
            .map(|s| s.service.as_str())
            .collect::<Vec<_>>(),
        vec!["hello", "w"]
    );

    let rec: DeploymentRecord = client()
        .get(format!("{}/deployments/{id}", srv.base))
        .bearer_auth(GOOD)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(rec.status, DeploymentStatus::Succeeded);
    assert_eq!(rec.report.as_ref(), Some(report));
    assert_eq!(rec.events.len(), events.len());
    assert_eq!(rec.origin, "http");
    let list: serde_json::Value = client()
        .get(format!("{}/deployments", srv.base))
        .bearer_auth(GOOD)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list["deployments"][0]["id"], id.as_str());
    assert_eq!(list["deployments"][0]["kind"], "deploy");
    assert_eq!(list["deployments"][0]["who"], "service_role");
    srv.shutdown().await.unwrap();
}

#[tokio::test]
async fn deploy_streams_sse_when_asked() {
    let srv = start(Arc::new(FakeBackend::new()), Arc::new(StaticVerifier)).await;
    let resp = client()
        .post(format!("{}/deploy", srv.base))
        .bearer_auth(GOOD)
        .header("accept", "text/event-stream")
        .json(&serde_json::json!({"services": [{"name": "api", "slug": "gh:acme/api"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 202);
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    assert!(resp.headers().contains_key("x-deployment-id"));
    let body = resp.text().await.unwrap();
    let frames: Vec<(String, serde_json::Value)> = body
        .split("\n\n")
        .filter(|f| f.contains("data:"))
        .map(|f| {
            let ev = f
                .lines()
                .find_map(|l| l.strip_prefix("event:"))
                .unwrap()
                .trim()
                .to_string();
            let data = f
                .lines()
                .find_map(|l| l.strip_prefix("data:"))
                .unwrap()
                .trim();
            (ev, serde_json::from_str(data).unwrap())
        })
        .collect();
    let (last, rest) = frames.split_last().unwrap();
    assert!(
        rest.len() >= 5
            && rest
                .iter()
                .all(|(e, d)| e == "event" && d["type"] == "event"),
        "{body}"
    );
    assert_eq!(last.0, "report");
    assert_eq!(last.1["project"], "default");
    assert_eq!(last.1["services"][0]["service"], "api");
    srv.shutdown().await.unwrap();
}

#[tokio::test]
async fn second_deploy_of_a_running_project_gets_409_not_queued() {
    let gate = Arc::new(Semaphore::new(0));
    let backend = Arc::new(FakeBackend::gated(gate.clone()));
    let srv = start(backend.clone(), Arc::new(StaticVerifier)).await;
    let body = serde_json::json!({"slugs": ["gh:acme/hello"], "project": "demo"});
    let first = client()
        .post(format!("{}/deploy", srv.base))
        .bearer_auth(GOOD)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(first.status().as_u16(), 202);
    let second = client()
        .post(format!("{}/deploy", srv.base))
        .bearer_auth(GOOD)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(second.status().as_u16(), 409);
    let (code, msg) = assert_error_shape(&second.text().await.unwrap());
    assert_eq!(code, "conflict");
    assert!(msg.contains("demo") && msg.contains("not queued"), "{msg}");
    let destroy = client()
        .post(format!("{}/destroy", srv.base))
        .bearer_auth(GOOD)
        .json(&serde_json::json!({"project": "demo"}))
        .send()
        .await
        .unwrap();
    assert_eq!(destroy.status().as_u16(), 409);
    // Another project is independent.
    let other = client()
        .post(format!("{}/deploy", srv.base))
        .bearer_auth(GOOD)
        .json(&serde_json::json!({"slugs": ["gh:acme/hello"], "project": "other"}))
        .send()
        .await
        .unwrap();
    assert_eq!(other.status().as_u16(), 202);
    assert_eq!(backend.deploys.load(std::sync::atomic::Ordering::SeqCst), 2);
    gate.add_permits(2);
    let items = parse_ndjson(&first.text().await.unwrap());
    assert!(matches!(items.last(), Some(StreamItem::Report(_))));
    let _ = other.text().await.unwrap();
    // Once finished, the project takes deploys again.
    gate.add_permits(1);
    let again = client()
        .post(format!("{}/deploy", srv.base))
        .bearer_auth(GOOD)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status().as_u16(), 202);
    let _ = again.text().await.unwrap();
    srv.shutdown().await.unwrap();
}

#[tokio::test]
async fn bad_requests_get_the_json_error_shape() {
    let srv = start(Arc::new(FakeBackend::new()), Arc::new(StaticVerifier)).await;
    let c = client();
    let post = |body: String, ct: &'static str| {
        c.post(format!("{}/deploy", srv.base))
            .bearer_auth(GOOD)
            .header("content-type", ct)
            .body(body)
            .send()
    };
    let cases: Vec<(String, &str, u16, &str, &str)> = vec![
        // (body, content type, status, code, message fragment)
        (
            format!(r#"{{"slugs": ["gh:a/{}"]}}"#, "x".repeat(100 * 1024)),
            "application/json",
            413,
            "payload_too_large",
            "too large",
        ),
        (
            "{not json".into(),
            "application/json",
            400,
            "bad_request",
            "JSON",
        ),
        (
            r#"{"slugs": ["gh:a/b"]}"#.into(),
            "text/plain",
            415,
            "unsupported_media_type",
            "Content-Type",
        ),
        (
            r#"{"slugs": ["gh:a/b"], "extra": 1}"#.into(),
            "application/json",
            422,
            "invalid_request",
            "extra",
        ),
        (
            r#"{"slugs": ["gh:a/b"], "services": []}"#.into(),
            "application/json",
            422,
            "invalid_request",
            "exactly one",
        ),
        (
            r#"{}"#.into(),
            "application/json",
            422,
            "invalid_request",
            "exactly one",
        ),
        (
            r#"{"slugs": []}"#.into(),
            "application/json",
            422,
            "invalid_request",
            "at least one",
        ),
        (
            r#"{"slugs": ["nope:x"]}"#.into(),
            "application/json",
            422,
            "invalid_request",
            "nope:x",
        ),
        (
            r#"{"slugs": ["gh:a/b"], "project": "Bad_Name"}"#.into(),
            "application/json",
            422,
            "invalid_request",
            "Bad_Name",
        ),
        (
            r#"{"services": [{"name": "a", "slug": "gh:x/a"}, {"name": "a", "slug": "gh:x/b"}]}"#
                .into(),
            "application/json",
            409,
            "duplicate_service_name",
            "unique",
        ),
    ];
    for (body, ct, status, code, frag) in cases {
        let r = post(body.clone(), ct).await.unwrap();
        assert_eq!(r.status().as_u16(), status, "body {:.80}", body);
        let text = r.text().await.unwrap();
        let (c2, msg) = assert_error_shape(&text);
        assert_eq!(c2, code, "{text}");
        assert!(
            msg.contains(frag),
            "message {msg:?} should mention {frag:?}"
        );
    }
    // Routing errors.
    let r = c
        .get(format!("{}/nope", srv.base))
        .bearer_auth(GOOD)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 404);
    assert_eq!(assert_error_shape(&r.text().await.unwrap()).0, "not_found");
    let r = c
        .get(format!("{}/deploy", srv.base))
        .bearer_auth(GOOD)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 405);
    assert_eq!(r.headers()["allow"], "POST");
    let (code, msg) = assert_error_shape(&r.text().await.unwrap());
    assert_eq!(code, "method_not_allowed");
    assert!(msg.contains("allowed: POST"), "{msg}");
    let r = c
        .get(format!("{}/deployments/not-a-uuid", srv.base))
        .bearer_auth(GOOD)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    assert_error_shape(&r.text().await.unwrap());
    let r = c
        .get(format!("{}/deployments/{}", srv.base, uuid::Uuid::new_v4()))
        .bearer_auth(GOOD)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 404);
    assert!(
        assert_error_shape(&r.text().await.unwrap())
            .1
            .contains("no deployment")
    );
    let r = c
        .get(format!("{}/services/hello/logs?bogus=1", srv.base))
        .bearer_auth(GOOD)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    assert_error_shape(&r.text().await.unwrap());
    srv.shutdown().await.unwrap();
}

#[tokio::test]
async fn auth_failures_map_to_401_403_503_and_health_is_open() {
    let srv = start(Arc::new(FakeBackend::new()), Arc::new(StaticVerifier)).await;
    let c = client();
    let url = format!("{}/services", srv.base);
    let r = c.get(&url).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 401);
    assert!(
        r.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .starts_with("Bearer")
    );
    assert_eq!(
        assert_error_shape(&r.text().await.unwrap()).0,
        "missing_credentials"
    );
    for bad in ["Basic Zm9vOmJhcg==", "Bearer", "Bearer a b", "bearer"] {
        let r = c
            .get(&url)
            .header("authorization", bad)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 401, "{bad}");
        assert_eq!(
            assert_error_shape(&r.text().await.unwrap()).0,
            "malformed_credentials",
            "{bad}"
        );
    }
    let r = c.get(&url).bearer_auth("wrong").send().await.unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let r = c.get(&url).bearer_auth("forbidden").send().await.unwrap();
    assert_eq!(r.status().as_u16(), 403);
    assert_eq!(assert_error_shape(&r.text().await.unwrap()).0, "forbidden");
    let r = c.get(&url).bearer_auth("down").send().await.unwrap();
    assert_eq!(r.status().as_u16(), 503);
    assert_eq!(
        assert_error_shape(&r.text().await.unwrap()).0,
        "auth_unavailable"
    );
    let r = c.get(&url).bearer_auth(GOOD).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(r.text().await.unwrap(), "[]");
    let h: serde_json::Value = c
        .get(format!("{}/health", srv.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(h["status"], "ok");
    assert_eq!(h["engine"]["reachable"], true);
    assert_eq!(h["engine"]["detail"], "answers");
    srv.shutdown().await.unwrap();
}

#[tokio::test]
async fn health_reports_an_unreachable_engine_as_degraded() {
    let mut b = FakeBackend::new();
    b.engine = Err("cannot connect to /var/run/docker.sock".into());
    let srv = start(Arc::new(b), Arc::new(StaticVerifier)).await;
    let r = client()
        .get(format!("{}/health", srv.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let h: serde_json::Value = r.json().await.unwrap();
    assert_eq!(h["status"], "degraded");
    assert_eq!(h["engine"]["reachable"], false);
    assert!(
        h["engine"]["detail"]
            .as_str()
            .unwrap()
            .contains("docker.sock")
    );
    srv.shutdown().await.unwrap();
}

#[tokio::test]
async fn logs_stream_ndjson_and_unknown_services_are_404() {
    let srv = start(Arc::new(FakeBackend::new()), Arc::new(StaticVerifier)).await;
    let c = client();
    let r = c
        .get(format!("{}/services/hello/logs?tail=3", srv.base))
        .bearer_auth(GOOD)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(r.headers()["content-type"], "application/x-ndjson");
    let body = r.text().await.unwrap();
    let lines: Vec<iac_core::LogLine> = body
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        lines.iter().map(|l| l.msg.as_str()).collect::<Vec<_>>(),
        vec!["line 0", "line 1", "line 2"]
    );
    let r = c
        .get(format!("{}/services/missing/logs", srv.base))
        .bearer_auth(GOOD)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 404);
    assert_error_shape(&r.text().await.unwrap());
    let r = c
        .get(format!("{}/services/Bad_Name/logs", srv.base))
        .bearer_auth(GOOD)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 422);
    srv.shutdown().await.unwrap();
}

#[tokio::test]
async fn destroy_calls_the_backend_with_the_requested_or_default_project() {
    let mut mock = MockControlPlaneBackend::new();
    mock.expect_default_project()
        .returning(|| ProjectName::new("fallback").unwrap());
    mock.expect_destroy()
        .withf(|p, _| p.as_str() == "demo")
        .times(1)
        .returning(|_, _| Ok(vec!["demo-hello".into()]));
    mock.expect_destroy()
        .withf(|p, _| p.as_str() == "fallback")
        .times(1)
        .returning(|_, _| Ok(vec![]));
    let srv = start(Arc::new(mock), Arc::new(StaticVerifier)).await;
    let c = client();
    let r = c
        .post(format!("{}/destroy", srv.base))
        .bearer_auth(GOOD)
        .json(&serde_json::json!({"project": "demo"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(
        v,
        serde_json::json!({"project": "demo", "removed": ["demo-hello"]})
    );
    // No body at all: the default project.
    let r = c
        .post(format!("{}/destroy", srv.base))
        .bearer_auth(GOOD)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(
        r.json::<serde_json::Value>().await.unwrap()["project"],
        "fallback"
    );
    srv.shutdown().await.unwrap();
}

#[tokio::test]
async fn shutdown_lets_an_in_flight_deploy_stream_finish_and_ends_follow_streams() {
    let gate = Arc::new(Semaphore::new(0));
    let srv = start(
        Arc::new(FakeBackend::gated(gate.clone())),
        Arc::new(StaticVerifier),
    )
    .await;
    let c = client();
    let deploy = c
        .post(format!("{}/deploy", srv.base))
        .bearer_auth(GOOD)
        .json(&serde_json::json!({"slugs": ["gh:acme/hello"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(deploy.status().as_u16(), 202);
    let follow = c
        .get(format!(
            "{}/services/hello/logs?follow=true&tail=2",
            srv.base
        ))
        .bearer_auth(GOOD)
        .send()
        .await
        .unwrap();
    assert_eq!(follow.status().as_u16(), 200);
    let Running {
        stop, done, _dir, ..
    } = srv;
    stop.unwrap().send(()).unwrap();
    // The follow stream ends by itself at shutdown, with the lines it had.
    let logs = tokio::time::timeout(Duration::from_secs(10), follow.text())
        .await
        .expect("follow ended")
        .unwrap();
    assert_eq!(logs.lines().count(), 2);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !done.is_finished(),
        "server must wait for the running deploy"
    );
    gate.add_permits(1);
    let body = tokio::time::timeout(Duration::from_secs(10), deploy.text())
        .await
        .expect("deploy stream ended")
        .unwrap();
    assert!(
        matches!(parse_ndjson(&body).last(), Some(StreamItem::Report(_))),
        "{body}"
    );
    tokio::time::timeout(Duration::from_secs(10), done)
        .await
        .expect("server stopped")
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn openapi_document_is_served_and_matches_the_routes() {
    let srv = start(Arc::new(FakeBackend::new()), Arc::new(StaticVerifier)).await;
    let c = client();
    let doc: serde_json::Value = c
        .get(format!("{}/openapi.json", srv.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(doc, serde_json::to_value(iac_bin::api::openapi()).unwrap());
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let mut ops = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            ops.push(format!("{} {path}", method.to_uppercase()));
        }
    }
    ops.sort();
    assert_eq!(
        ops,
        vec![
            "GET /deployments",
            "GET /deployments/{id}",
            "GET /health",
            "GET /openapi.json",
            "GET /refs",
            "GET /services",
            "GET /services/{name}/logs",
            "POST /deploy",
            "POST /destroy",
            "POST /plan",
        ]
    );
    assert!(doc["components"]["securitySchemes"]["bearer"].is_object());
    assert!(doc["components"]["schemas"]["DeployStreamItem"].is_object());
    // Every documented operation is routed (not a 404 route miss, not a 405).
    for op in &ops {
        let (method, path) = op.split_once(' ').unwrap();
        let path = path
            .replace("{id}", &uuid::Uuid::new_v4().to_string())
            .replace("{name}", "hello");
        let url = format!("{}{path}", srv.base);
        let req = match method {
            "GET" => c.get(&url),
            _ => c.post(&url).json(&serde_json::json!({})),
        };
        let r = req.bearer_auth(GOOD).send().await.unwrap();
        let status = r.status().as_u16();
        let text = r.text().await.unwrap();
        assert_ne!(status, 405, "{op}: {text}");
        if status == 404 {
            let (_, msg) = assert_error_shape(&text);
            assert!(
                !msg.starts_with("no route"),
                "{op} is documented but not routed: {msg}"
            );
        }
    }
    srv.shutdown().await.unwrap();
}

#[tokio::test]
async fn openapi_mirror_schemas_match_the_core_types() {
    use iac_bin::api::schema::*;
    use iac_core::*;
    fn roundtrip<T: serde::Serialize, M: serde::de::DeserializeOwned + serde::Serialize>(v: &T) {
        let json = serde_json::to_value(v).unwrap();
        let m: M = serde_json::from_value(json.clone())
            .unwrap_or_else(|e| panic!("mirror out of date ({e}): {json}"));
        let back = serde_json::to_value(&m).unwrap();
        // Every field of the real value is in the mirror (the mirror may print absent options as null).
        for (k, val) in json.as_object().unwrap() {
            assert_eq!(&back[k], val, "field {k}");
        }
    }
    let svc = ServiceName::new("hello").unwrap();
    let health = HealthReport {
        uptime_ms: Some(5300),
        listening_ports: vec![8000],
        app_port: Some(8000),
        ..HealthReport::new(
            svc.clone(),
            HealthState::Serving,
            Some(0),
            "running".into(),
            2,
        )
    };
    let mut sr = ServiceReport::new(svc.clone(), "gh:acme/hello".into());
    sr.stages.push(StageTiming {
        stage: Stage::Build,
        millis: 5,
        ok: true,
    });
    sr.commit = Some("abc".into());
    sr.image = Some("img".into());
    sr.image_reused = Some(false);
    sr.entry = Some(Entry {
        language: Language::Python,
        rule: "main.py".into(),
        argv: vec!["python".into()],
        why: "w".into(),
        port: Some(8000),
        ..Default::default()
    });
    sr.action = Some(Action::Create);
    sr.endpoint = Some("127.0.0.1:1".into());
    sr.url = Some("http://127.0.0.1:2/".into());
    sr.warnings = vec!["w".into()];
    sr.health = Some(health.clone());
    sr.fail(Stage::Health, "x");
    let report = DeployReport {
        project: ProjectName::new("p").unwrap(),
        ok: false,
        services: vec![sr],
        removed: vec![svc.clone()],
        error: Some("e".into()),
        millis: 9,
    };
    roundtrip::<_, DeployReportSchema>(&report);
    roundtrip::<_, RefListSchema>(&RefList {
        branches: vec!["main".into()],
        tags: vec!["v1".into()],
        default: Some("main".into()),
    });
    let ev = DeployEvent {
        ts: "t".into(),
        service: Some(svc.clone()),
        stage: Stage::Fetch,
        level: EventLevel::Info,
        message: "m".into(),
        traceparent: Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into()),
    };
    roundtrip::<_, DeployEventSchema>(&ev);
    roundtrip::<_, LogLineSchema>(&LogLine {
        service: svc.clone(),
        ts: "t".into(),
        stream: "stdout".into(),
        msg: "m".into(),
    });
    let status = iac_bin::api::ServiceStatus::new(
        RunningService {
            service: svc.clone(),
            endpoint: Some("127.0.0.1:9".parse().unwrap()),
            edge: Some("127.0.0.1:10".parse().unwrap()),
            spec_hash: "h".into(),
            image: "i".into(),
            state: "running".into(),
            sandbox: None,
        },
        health,
    );
    assert_eq!(status.url.as_deref(), Some("http://127.0.0.1:10/"));
    roundtrip::<_, ServiceStatusSchema>(&status);
    let finish = iac_core::history::HistoryFinish::from_report(&report, "t".into());
    let rec = DeploymentRecord {
        id: uuid::Uuid::new_v4(),
        project: ProjectName::new("p").unwrap(),
        kind: iac_core::history::HistoryKind::Deploy,
        status: DeploymentStatus::Failed,
        origin: "http".into(),
        who: "service_role".into(),
        services: vec!["hello".into()],
        started_at: "t".into(),
        finished_at: Some("t".into()),
        repos: Some("[]".into()),
        events: vec![ev].into(),
        events_dropped: 0,
        outcomes: finish.outcomes,
        removed: vec!["old".into()],
        log_tails: vec![iac_core::history::LogTail {
            service: "hello".into(),
            container: "p-hello".into(),
            role: "app".into(),
            reason: "replaced".into(),
            saved_at: "t".into(),
            lines: vec!["bye".into()],
            truncated: false,
        }],
        report: Some(report),
        error: Some(iac_bin::api::ErrorBody {
            code: "c".into(),
            message: "m".into(),
        }),
    };
    roundtrip::<_, DeploymentSchema>(&rec);
    let summary = iac_bin::api::DeploymentSummary {
        id: rec.id,
        project: rec.project.clone(),
        kind: iac_core::history::HistoryKind::Destroy,
        status: DeploymentStatus::Succeeded,
        origin: "cli".into(),
        who: "cli:alice".into(),
        services: vec![],
        started_at: "t".into(),
        finished_at: None,
    };
    roundtrip::<_, DeploymentPageSchema>(&iac_bin::api::DeploymentPage {
        deployments: vec![summary],
        next_cursor: Some("7".into()),
    });
}

async fn post_deploy(srv: &Running, body: serde_json::Value) -> reqwest::Response {
    client()
        .post(format!("{}/deploy", srv.base))
        .bearer_auth(GOOD)
        .json(&body)
        .send()
        .await
        .unwrap()
}

async fn record(srv: &Running, id: &str) -> (u16, serde_json::Value) {
    let r = client()
        .get(format!("{}/deployments/{id}", srv.base))
        .bearer_auth(GOOD)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

fn deployment_id(r: &reqwest::Response) -> String {
    r.headers()["x-deployment-id"].to_str().unwrap().to_string()
}

#[tokio::test]
async fn local_sources_are_refused_over_the_api_unless_the_operator_allows_them() {
    let backend = Arc::new(FakeBackend::new());
    let srv = start(backend.clone(), Arc::new(StaticVerifier)).await;
    let cases = [
        serde_json::json!({"slugs": ["gh:acme/ok", "path:/etc"]}),
        serde_json::json!({"slugs": [{"slug": "git+file:///srv/secrets#main", "name": "x"}]}),
        serde_json::json!({"services": [{"name": "leak", "slug": "path:./secrets"}]}),
        serde_json::json!({"services": [{"name": "leak", "slug": "git+file:///root/repo"}]}),
    ];
    for body in &cases {
        let r = post_deploy(&srv, body.clone()).await;
        assert_eq!(r.status().as_u16(), 403, "{body}");
        let (code, msg) = assert_error_shape(&r.text().await.unwrap());
        assert_eq!(code, "local_source_refused");
        assert!(
            msg.contains("allow_local_sources")
                && (msg.contains("path:") || msg.contains("git+file:")),
            "names the slug and the setting: {msg}"
        );
        // The same over the Unix socket.
        let (status, _, body) = uds_request(
            &srv.uds,
            "POST",
            "/deploy",
            &[("content-type", "application/json")],
            Some(&body.to_string()),
        )
        .await;
        assert_eq!(status, 403, "{body}");
    }
    assert!(
        post_deploy(&srv, cases[0].clone())
            .await
            .text()
            .await
            .unwrap()
            .contains("/etc")
    );
    assert_eq!(
        backend.deploys.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "nothing reached the backend"
    );
    srv.shutdown().await.unwrap();

    // The operator opts in: the same request is accepted.
    let backend = Arc::new(FakeBackend::new());
    let srv = start_with(backend.clone(), Arc::new(StaticVerifier), |c| {
        c.allow_local_sources = true
    })
    .await;
    let r = post_deploy(&srv, cases[2].clone()).await;
    assert_eq!(r.status().as_u16(), 202);
    let _ = r.text().await.unwrap();
    assert_eq!(backend.deploys.load(std::sync::atomic::Ordering::SeqCst), 1);
    srv.shutdown().await.unwrap();
}

#[tokio::test]
async fn api_callers_may_expose_apps_on_loopback_only() {
    let backend = Arc::new(FakeBackend::new());
    let srv = start(backend.clone(), Arc::new(StaticVerifier)).await;
    for body in [
        serde_json::json!({"slugs": [{"slug": "gh:acme/web", "expose": "0.0.0.0:8081"}]}),
        serde_json::json!({"services": [{"name": "web", "slug": "gh:acme/web", "expose": "192.0.2.1:80"}]}),
        serde_json::json!({"services": [{"name": "web", "slug": "gh:acme/web", "expose": "[::]:0"}]}),
    ] {
        let r = post_deploy(&srv, body.clone()).await;
        assert_eq!(r.status().as_u16(), 403, "{body}");
        let (code, msg) = assert_error_shape(&r.text().await.unwrap());
        assert_eq!(code, "public_expose_refused");
        assert!(
            msg.contains("service web") && msg.contains("loopback"),
            "names the service and the rule: {msg}"
        );
    }
    // A bad value is a 422 naming what `expose` takes.
    let r = post_deploy(
        &srv,
        serde_json::json!({"slugs": [{"slug": "gh:acme/web", "expose": "everywhere"}]}),
    )
    .await;
    assert_eq!(r.status().as_u16(), 422);
    let (_, msg) = assert_error_shape(&r.text().await.unwrap());
    assert!(msg.contains("`expose` to be"), "{msg}");
    assert_eq!(backend.deploys.load(std::sync::atomic::Ordering::SeqCst), 0);
    // Loopback, in every form, is accepted.
    for (i, expose) in [
        serde_json::json!(true),
        serde_json::json!(false),
        serde_json::json!(8081),
        serde_json::json!("127.0.0.1:0"),
        serde_json::json!("[::1]:8082"),
    ]
    .into_iter()
    .enumerate()
    {
        let body = serde_json::json!({"services": [{"name": "web", "slug": "gh:acme/web", "expose": expose}], "project": format!("p{i}")});
        let r = post_deploy(&srv, body.clone()).await;
        assert_eq!(r.status().as_u16(), 202, "{body}");
        let _ = r.text().await.unwrap();
    }
    assert_eq!(backend.deploys.load(std::sync::atomic::Ordering::SeqCst), 5);
    srv.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_client_that_does_not_read_its_stream_never_stalls_the_deploy_or_grows_memory() {
    // Enough that the socket buffers (a few MB on loopback) cannot hide an unbounded channel.
    const STEPS: usize = 200_000;
    let backend = Arc::new(FakeBackend {
        events_per_service: STEPS,
        ..FakeBackend::new()
    });
    let srv = start_with(backend, Arc::new(StaticVerifier), |c| {
        c.max_events_per_deployment = 100
    })
    .await;
    // A client with a tiny receive buffer, so the kernel does not hide what the server holds.
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    let stream = sock.connect(srv.addr).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = hyper::Request::post("/deploy")
        .header("host", "localhost")
        .header("authorization", format!("Bearer {GOOD}"))
        .header("content-type", "application/json")
        .body(http_body_util::Full::new(hyper::body::Bytes::from(
            r#"{"slugs": ["gh:acme/chatty"]}"#,
        )))
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status().as_u16(), 202);
    let id = resp.headers()["x-deployment-id"]
        .to_str()
        .unwrap()
        .to_string();
    // Not reading the body: the deploy still finishes.
    let t = std::time::Instant::now();
    loop {
        let (_, rec) = record(&srv, &id).await;
        if rec["status"] == "succeeded" {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "the deploy is stalled by its unread stream: {}",
            rec["status"]
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let body = http_body_util::BodyExt::collect(resp.into_body())
        .await
        .unwrap()
        .to_bytes();
    let items = parse_ndjson(&String::from_utf8_lossy(&body));
    // What arrives is the server's bounded stream buffer plus what the kernel's socket buffers
    // took (bounded by tcp_wmem, ~4 MB ≈ 27k lines here), never the whole deploy.
    assert!(
        items.len() < STEPS / 4,
        "{} lines were held for a client that did not read",
        items.len()
    );
    let mut delivered = 0u64;
    let mut dropped = 0u64;
    for it in &items {
        if let StreamItem::Event(e) = it {
            match e.dropped_count() {
                Some(n) => dropped += n,
                None => delivered += 1,
            }
        }
    }
    assert!(dropped > 0, "a marker says events were dropped");
    eprintln!(
        "{} lines delivered, {dropped} events counted as dropped",
        items.len()
    );
    // accepted + every step + "all healthy": each is either delivered or counted.
    assert_eq!(delivered + dropped, (1 + STEPS + 1) as u64);
    assert!(matches!(items.last(), Some(StreamItem::Report(r)) if r.ok));
    srv.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_deploy_past_its_deadline_is_stopped_and_its_project_is_free_again() {
    // A backend that never finishes (the gate never opens).
    let gate = Arc::new(Semaphore::new(0));
    let backend = Arc::new(FakeBackend::gated(gate.clone()));
    let srv = start_with(backend.clone(), Arc::new(StaticVerifier), |c| {
        c.deploy_deadline = Duration::from_millis(300)
    })
    .await;
    let body = serde_json::json!({"slugs": ["gh:acme/hello"], "project": "stuck"});
    let first = post_deploy(&srv, body.clone()).await;
    assert_eq!(first.status().as_u16(), 202);
    let id = deployment_id(&first);
    let items = tokio::time::timeout(Duration::from_secs(10), first.text())
        .await
        .expect("the stream ends at the deadline")
        .unwrap();
    let items = parse_ndjson(&items);
    let Some(StreamItem::Error(e)) = items.last() else {
        panic!("the stream ends with an error: {items:?}")
    };
    assert_eq!(e.code, "deadline_exceeded");
    assert!(
        e.message.contains("stuck") && e.message.contains("deploy_deadline"),
        "{}",
        e.message
    );
    let (status, rec) = record(&srv, &id).await;
    assert_eq!(status, 200);
    assert_eq!(rec["status"], "error");
    assert!(rec["finished_at"].is_string());
    // The project is not held: the next deploy is accepted, not 409.
    let next = post_deploy(&srv, body).await;
    assert_eq!(next.status().as_u16(), 202);
    let _ = next.text().await.unwrap();
    srv.shutdown().await.unwrap();
}

#[tokio::test]
async fn finished_records_are_pruned_by_the_history_retention_and_running_ones_are_bounded() {
    // The memory keeps 1 record for 1 s; the history keeps 2 for 3 s.
    let srv = start_with_history(
        Arc::new(FakeBackend::new()),
        Arc::new(StaticVerifier),
        |c| {
            c.max_deployments = 1;
            c.deployment_ttl = Duration::from_secs(1);
        },
        iac_bin::config::HistorySection {
            keep: 2,
            max_age: Duration::from_secs(3),
            ..Default::default()
        },
    )
    .await;
    let deploy = async |p: &str| {
        let r = post_deploy(
            &srv,
            serde_json::json!({"slugs": ["gh:acme/x"], "project": p}),
        )
        .await;
        let id = deployment_id(&r);
        let _ = r.text().await.unwrap();
        id
    };
    let ids = [deploy("a").await, deploy("b").await, deploy("c").await];
    assert_eq!(
        record(&srv, &ids[0]).await.0,
        404,
        "the oldest is pruned by count"
    );
    assert_eq!(
        record(&srv, &ids[1]).await.0,
        200,
        "out of memory, in the history"
    );
    assert_eq!(record(&srv, &ids[2]).await.0, 200);
    tokio::time::sleep(Duration::from_millis(3500)).await;
    // Retention runs after every finish (and at startup).
    let d = deploy("d").await;
    assert_eq!(record(&srv, &ids[2]).await.0, 404, "pruned by age");
    assert_eq!(record(&srv, &d).await.0, 200);
    srv.shutdown().await.unwrap();

    // Running deploys count too: with the store full of running ones, a new one gets 503.
    let gate = Arc::new(Semaphore::new(0));
    let srv = start_with(
        Arc::new(FakeBackend::gated(gate.clone())),
        Arc::new(StaticVerifier),
        |c| c.max_deployments = 2,
    )
    .await;
    let r1 = post_deploy(
        &srv,
        serde_json::json!({"slugs": ["gh:acme/x"], "project": "p1"}),
    )
    .await;
    let r2 = post_deploy(
        &srv,
        serde_json::json!({"slugs": ["gh:acme/x"], "project": "p2"}),
    )
    .await;
    assert_eq!((r1.status().as_u16(), r2.status().as_u16()), (202, 202));
    let r3 = post_deploy(
        &srv,
        serde_json::json!({"slugs": ["gh:acme/x"], "project": "p3"}),
    )
    .await;
    assert_eq!(r3.status().as_u16(), 503);
    let (code, msg) = assert_error_shape(&r3.text().await.unwrap());
    assert_eq!(code, "unavailable");
    assert!(msg.contains("max_deployments"), "{msg}");
    gate.add_permits(2);
    let _ = (r1.text().await.unwrap(), r2.text().await.unwrap());
    let r4 = post_deploy(
        &srv,
        serde_json::json!({"slugs": ["gh:acme/x"], "project": "p3"}),
    )
    .await;
    assert_eq!(r4.status().as_u16(), 202, "a finished record makes room");
    gate.add_permits(1);
    let _ = r4.text().await.unwrap();
    srv.shutdown().await.unwrap();
}

/// Regressions found by schemathesis (scripts/schemathesis.sh): the document must call valid
/// only what the server accepts, and list every status a route can answer.
#[tokio::test]
async fn openapi_describes_what_the_server_accepts() {
    let backend = Arc::new(FakeBackend::new());
    let srv = start(backend.clone(), Arc::new(StaticVerifier)).await;
    let doc: serde_json::Value = client()
        .get(format!("{}/openapi.json", srv.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    // POST /deploy: exactly one of slugs/services, non-empty, remote slugs by pattern.
    let req = &doc["components"]["schemas"]["DeployRequest"];
    let variants = req["oneOf"].as_array().expect("oneOf");
    assert_eq!(variants.len(), 2);
    for v in variants {
        assert_eq!(v["additionalProperties"], false);
        let list = if v["required"][0] == "slugs" {
            "slugs"
        } else {
            "services"
        };
        assert_eq!(v["properties"][list]["minItems"], 1, "{v}");
    }
    let pattern = req["oneOf"][0]["properties"]["slugs"]["items"]["oneOf"][0]["pattern"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(pattern, iac_bin::api::schema::REMOTE_SLUG_PATTERN);
    for body in [
        serde_json::json!({"services": []}),
        serde_json::json!({"slugs": []}),
        serde_json::json!({}),
    ] {
        let r = post_deploy(&srv, body.clone()).await;
        assert_eq!(r.status().as_u16(), 422, "{body}");
    }
    // Every slug shape the pattern documents is accepted.
    for slug in iac_bin::api::schema::remote_slug_examples() {
        let r = post_deploy(&srv, serde_json::json!({"slugs": [slug]})).await;
        assert_eq!(r.status().as_u16(), 202, "{slug}");
        let _ = r.text().await.unwrap();
        let r = post_deploy(
            &srv,
            serde_json::json!({"services": [{"name": "s", "slug": slug, "env": {"_A1": "x"}}]}),
        )
        .await;
        assert_eq!(r.status().as_u16(), 202, "{slug}");
        let _ = r.text().await.unwrap();
    }
    // entrypoint: `null` is taken in `services` (and documented so), an empty one never.
    let svc = &req["oneOf"][1]["properties"]["services"]["items"]["properties"];
    assert_eq!(
        svc["entrypoint"]["type"],
        serde_json::json!(["string", "null"])
    );
    assert_eq!(svc["entrypoint"]["pattern"], "\\S");
    let r = post_deploy(
        &srv,
        serde_json::json!({"services": [{"name": "n", "slug": "gh:a/b", "entrypoint": null}]}),
    )
    .await;
    assert_eq!(r.status().as_u16(), 202);
    let _ = r.text().await.unwrap();
    let r = post_deploy(
        &srv,
        serde_json::json!({"services": [{"name": "n", "slug": "gh:a/b", "entrypoint": ""}]}),
    )
    .await;
    assert_eq!(r.status().as_u16(), 422);
    // Unknown query parameters are refused, and that 400 is documented.
    let r = client()
        .get(format!("{}/services?bogus=1", srv.base))
        .bearer_auth(GOOD)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    for path in ["/services", "/services/{name}/logs"] {
        assert!(
            doc["paths"][path]["get"]["responses"]["400"].is_object(),
            "{path}"
        );
    }
    // `project`: a DNS label or empty (the default), exactly as documented; no trimming.
    let project_pattern = req["oneOf"][0]["properties"]["project"]["pattern"]
        .as_str()
        .unwrap();
    assert_eq!(project_pattern, iac_bin::api::schema::PROJECT_PATTERN);
    for (project, status) in [("", 202), (" demo", 422), ("\u{94}è", 422)] {
        let r = post_deploy(
            &srv,
            serde_json::json!({"slugs": ["gh:a/b"], "project": project}),
        )
        .await;
        assert_eq!(r.status().as_u16(), status, "{project:?}");
        let _ = r.text().await.unwrap();
    }
    let q = &doc["paths"]["/services"]["get"]["parameters"][0];
    assert_eq!(
        q["schema"]["pattern"],
        iac_bin::api::schema::PROJECT_PATTERN,
        "{q}"
    );
    let logs = &doc["paths"]["/services/{name}/logs"]["get"]["parameters"];
    let name = logs
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "name")
        .unwrap();
    assert_eq!(
        name["schema"]["pattern"],
        iac_bin::api::schema::DNS_LABEL_PATTERN
    );
    // The same item twice: `uniqueItems` in the document, 422 from the server.
    assert_eq!(req["oneOf"][0]["properties"]["slugs"]["uniqueItems"], true);
    let r = post_deploy(&srv, serde_json::json!({"slugs": ["gh:a/b", "gh:a/b"]})).await;
    assert_eq!(r.status().as_u16(), 422);
    // Two services with one name: 409 duplicate_service_name, in both shapes.
    for body in [
        serde_json::json!({"services": [{"name": "0", "slug": "gh:0/n"}, {"name": "0", "slug": "gh:0/0"}]}),
        serde_json::json!({"slugs": [{"slug": "gh:a/b", "name": "x"}, {"slug": "gh:a/c", "name": "x"}]}),
    ] {
        let r = post_deploy(&srv, body.clone()).await;
        assert_eq!(r.status().as_u16(), 409, "{body}");
        let (code, msg) = assert_error_shape(&r.text().await.unwrap());
        assert_eq!(code, "duplicate_service_name");
        assert!(msg.contains("unique"), "{msg}");
    }
    // {id} is a UUID; anything else is the documented 400.
    let id = &doc["paths"]["/deployments/{id}"]["get"]["parameters"][0];
    assert_eq!(id["schema"]["format"], "uuid", "{id}");
    assert_eq!(record(&srv, "0").await.0, 400);
    // POST /destroy: a `null` body is the documented optional body (default project).
    let r = client()
        .post(format!("{}/destroy", srv.base))
        .bearer_auth(GOOD)
        .header("content-type", "application/json")
        .body("null")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let r = client()
        .post(format!("{}/destroy", srv.base))
        .bearer_auth(GOOD)
        .header("content-type", "application/json")
        .body("[null, null]")
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16().to_string();
    assert!(
        doc["paths"]["/destroy"]["post"]["responses"][&status].is_object(),
        "{status} is documented for POST /destroy"
    );
    // A JSON array is not the documented object, though serde would build a struct from it.
    for (path, body) in [
        ("/destroy", "[null]"),
        ("/deploy", r#"[["gh:a/b"], null, null]"#),
    ] {
        let r = client()
            .post(format!("{}{path}", srv.base))
            .bearer_auth(GOOD)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 422, "{path} {body}");
        let (_, msg) = assert_error_shape(&r.text().await.unwrap());
        assert!(msg.contains("an array"), "{msg}");
    }
    // Routes that reach the engine document its failures.
    for (path, method) in [
        ("/services", "get"),
        ("/services/{name}/logs", "get"),
        ("/destroy", "post"),
    ] {
        for status in ["502", "503"] {
            assert!(
                doc["paths"][path][method]["responses"][status].is_object(),
                "{method} {path} documents {status}"
            );
        }
    }
    srv.shutdown().await.unwrap();
}

#[tokio::test]
async fn plan_answers_what_a_deploy_would_do_with_the_deploy_checks() {
    let backend = Arc::new(FakeBackend::new());
    let srv = start(backend.clone(), Arc::new(StaticVerifier)).await;
    let c = client();
    let r = c
        .post(format!("{}/plan", srv.base))
        .bearer_auth(GOOD)
        .json(&serde_json::json!({"slugs": ["gh:acme/hello"], "project": "demo"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(
        body,
        serde_json::json!({"project": "demo", "failures": [],
            "changes": [{"service": "hello", "action": "create", "reason": "not running"}]})
    );
    assert_eq!(
        backend.deploys.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "a plan deploys nothing"
    );
    // The deploy request's validation applies: no credentials, a bad body.
    let r = c
        .post(format!("{}/plan", srv.base))
        .json(&serde_json::json!({"slugs": ["gh:acme/hello"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let r = c
        .post(format!("{}/plan", srv.base))
        .bearer_auth(GOOD)
        .json(&serde_json::json!({"slugs": []}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 422);
    assert!(r.text().await.unwrap().contains("`slugs` is empty"));
}

#[tokio::test]
async fn deploy_bodies_carry_egress_lists_and_bad_items_are_named() {
    let backend = Arc::new(FakeBackend::new());
    let srv = start(backend.clone(), Arc::new(StaticVerifier)).await;
    for body in [
        serde_json::json!({"egress": ["*.pypi.org:443"], "slugs": [{"slug": "gh:acme/web", "egress": ["api.stripe.com:443"]}]}),
        serde_json::json!({"egress": ["*.pypi.org:443"], "services": [{"name": "web", "slug": "gh:acme/web", "egress": ["10.0.0.7:8080"]}]}),
        serde_json::json!({"slugs": ["gh:acme/web"], "egress": null}),
    ] {
        let r = post_deploy(&srv, body.clone()).await;
        assert_eq!(r.status().as_u16(), 202, "{body}");
        let _ = r.text().await.unwrap();
    }
    assert_eq!(backend.deploys.load(std::sync::atomic::Ordering::SeqCst), 3);
    for (body, says) in [
        (
            serde_json::json!({"slugs": [{"slug": "gh:acme/web", "egress": ["https://api.stripe.com"]}]}),
            "\"https://api.stripe.com\"",
        ),
        (
            serde_json::json!({"egress": ["*:443"], "slugs": ["gh:acme/web"]}),
            "project's `egress`",
        ),
        (
            serde_json::json!({"services": [{"name": "web", "slug": "gh:acme/web", "egress": "api.stripe.com:443"}]}),
            "expected a sequence",
        ),
    ] {
        let r = post_deploy(&srv, body.clone()).await;
        assert_eq!(r.status().as_u16(), 422, "{body}");
        let (_, msg) = assert_error_shape(&r.text().await.unwrap());
        assert!(msg.contains(says), "{body} → {msg}");
    }
    assert_eq!(backend.deploys.load(std::sync::atomic::Ordering::SeqCst), 3);
    srv.shutdown().await.unwrap();
}

/// Schemathesis (issue 22 audit run) found `egress: ["0:0"]` valid by the document and refused
/// by the server. The item pattern now admits only what `iac_core::egress` parses: known
/// shapes either way, and every string generated from the pattern within its length cap.
#[test]
fn the_egress_item_pattern_admits_only_what_the_parser_takes() {
    use iac_bin::api::schema::{EGRESS_ITEM_MAX_LEN, EGRESS_ITEM_PATTERN};
    use iac_core::egress::EgressRule;
    let re = regex::Regex::new(EGRESS_ITEM_PATTERN).unwrap();
    for ok in [
        "api.example.com:443",
        "*.example.com:443",
        "10.0.0.1:5432",
        "API.Example.COM.:65535",
        "a-b.c:1",
    ] {
        assert!(re.is_match(ok), "{ok}: the pattern refuses it");
        ok.parse::<EgressRule>()
            .unwrap_or_else(|e| panic!("{ok}: the parser refuses it: {e}"));
    }
    for bad in [
        "0:0",
        "a:65536",
        "a:99999",
        "a:0",
        "a..b:1",
        "-a:1",
        "a-:1",
        "a.-b:1",
        "*:1",
        "*.*.a:1",
        "a:1/x",
        "a",
        "[::1]:1",
        "https://a:1",
    ] {
        assert!(!re.is_match(bad), "{bad}: the pattern admits it");
        assert!(
            bad.parse::<EgressRule>().is_err(),
            "{bad}: the parser takes it"
        );
    }
    let inner = EGRESS_ITEM_PATTERN
        .strip_prefix('^')
        .and_then(|p| p.strip_suffix('$'))
        .unwrap();
    let strategy = proptest::string::string_regex(inner).unwrap();
    let mut runner = proptest::test_runner::TestRunner::default();
    runner
        .run(&strategy, |item| {
            // The one shape a pattern without lookahead cannot leave out (the document says
            // so): `*.` before an IPv4 address.
            let wild_ip = item.strip_prefix("*.").is_some_and(|r| {
                let host = r.rsplit_once(':').map_or(r, |(h, _)| h);
                host.trim_end_matches('.')
                    .parse::<std::net::Ipv4Addr>()
                    .is_ok()
            });
            if item.len() <= EGRESS_ITEM_MAX_LEN && !wild_ip {
                proptest::prop_assert!(item.parse::<EgressRule>().is_ok(), "{item:?}");
            }
            Ok(())
        })
        .unwrap();
}
