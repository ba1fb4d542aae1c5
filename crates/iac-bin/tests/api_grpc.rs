//! The gRPC `ControlPlane` served on the admin API's TCP port (h2c, routed by path next to the
//! HTTP routes), with a real tonic client: HealthCheck is open, Deploy and StreamLogs need the
//! same bearer token as HTTP (metadata `authorization`), Deploy shares the 409 rule and the
//! deployment store with `POST /deploy`.

mod api_support;

use std::sync::Arc;

use api_support::*;
use iac_proto::{ControlPlaneClient, DeployRequest, HealthStatusCode, LogRequest};
use tokio::sync::Semaphore;
use tonic::metadata::MetadataValue;

fn authed<T>(msg: T, token: &str) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut().insert(
        "authorization",
        MetadataValue::try_from(format!("Bearer {token}")).unwrap(),
    );
    r
}

#[tokio::test]
async fn grpc_health_deploy_and_logs_share_the_port_and_the_auth() {
    let gate = Arc::new(Semaphore::new(0));
    let srv = start(
        Arc::new(FakeBackend::gated(gate.clone())),
        Arc::new(StaticVerifier),
    )
    .await;
    let mut c = ControlPlaneClient::connect(srv.base.clone())
        .await
        .expect("h2c connect");

    let h = c
        .health_check(tonic::Request::new(()))
        .await
        .expect("HealthCheck is open")
        .into_inner();
    assert_eq!(h.status, HealthStatusCode::Serving as i32);
    assert!(h.detail.contains("engine reachable"), "{}", h.detail);

    let req = DeployRequest {
        slugs: vec!["gh:acme/hello".into()],
        project: "demo".into(),
    };
    let e = c
        .deploy(tonic::Request::new(req.clone()))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated, "{e:?}");
    let e = c
        .deploy(authed(req.clone(), "forbidden"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied);
    let e = c.deploy(authed(req.clone(), "down")).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unavailable);
    let e = c
        .deploy(authed(
            DeployRequest {
                slugs: vec!["bogus".into()],
                project: String::new(),
            },
            GOOD,
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(e.message().contains("bogus"), "{}", e.message());
    // Host paths are refused over gRPC as over HTTP (`[serve] allow_local_sources` is off).
    for slug in ["path:/etc", "git+file:///srv/repo#main"] {
        let e = c
            .deploy(authed(
                DeployRequest {
                    slugs: vec![slug.into()],
                    project: "demo".into(),
                },
                GOOD,
            ))
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::PermissionDenied, "{slug}: {e:?}");
        assert!(
            e.message().contains(slug) && e.message().contains("allow_local_sources"),
            "{}",
            e.message()
        );
    }

    // A deploy via gRPC holds the project: HTTP gets 409 meanwhile.
    let mut c2 = c.clone();
    let running = tokio::spawn(async move { c2.deploy(authed(req, GOOD)).await });
    let mut conflict = 0;
    for _ in 0..50 {
        let r = client()
            .post(format!("{}/deploy", srv.base))
            .bearer_auth(GOOD)
            .json(&serde_json::json!({"slugs": ["gh:acme/hello"], "project": "demo"}))
            .send()
            .await
            .unwrap();
        conflict = r.status().as_u16();
        if conflict == 409 {
            break;
        }
        let _ = r.text().await;
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(conflict, 409);
    gate.add_permits(1);
    let res = running.await.unwrap().expect("gRPC deploy").into_inner();
    assert!(res.ok);
    assert_eq!(res.services.len(), 1);
    assert_eq!(res.services[0].service, "hello");
    assert_eq!(res.services[0].image, "iac/hello:test");
    assert_eq!(res.services[0].url, "http://127.0.0.1:49153/");
    assert!(res.services[0].warnings.is_empty());
    let rec: serde_json::Value = client()
        .get(format!("{}/deployments/{}", srv.base, res.deployment_id))
        .bearer_auth(GOOD)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(rec["origin"], "grpc");
    assert_eq!(rec["status"], "succeeded");
    // Recorded in the history like an HTTP deploy: who, and the slugs it was given.
    assert_eq!(rec["who"], "service_role");
    assert!(
        rec["repos"].as_str().unwrap().contains("gh:acme/hello"),
        "{rec}"
    );

    let e = c
        .stream_logs(tonic::Request::new(LogRequest {
            service: "hello".into(),
            follow: false,
            tail: 2,
        }))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated);
    let mut s = c
        .stream_logs(authed(
            LogRequest {
                service: "hello".into(),
                follow: false,
                tail: 2,
            },
            GOOD,
        ))
        .await
        .unwrap()
        .into_inner();
    let mut got = Vec::new();
    while let Some(line) = s.message().await.unwrap() {
        got.push((line.service, line.msg));
    }
    assert_eq!(
        got,
        vec![
            ("hello".to_string(), "line 0".to_string()),
            ("hello".to_string(), "line 1".to_string())
        ]
    );
    let e = c
        .stream_logs(authed(
            LogRequest {
                service: "missing".into(),
                follow: false,
                tail: 0,
            },
            GOOD,
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound);
    srv.shutdown().await.unwrap();
}
