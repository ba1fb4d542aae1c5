//! The admin API over its Unix socket with a real hyper client: the socket is 0600, a deploy
//! stream arrives end to end without any token (the peer uid is the credential), and another
//! uid is refused. The tests run as root, so the other-uid case re-runs this test binary as a
//! child process that `setuid`s to `nobody` (65534) and talks to the socket: with the socket at
//! 0600 the child cannot even connect; with the mode loosened to 0666 it connects and gets 403
//! from the peer-uid check. (When not run as root, that test checks only the uid rule.)

mod api_support;

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::sync::Arc;

use api_support::*;
use iac_bin::api::StreamItem;

const CHILD_ENV: &str = "IAC_TEST_UDS_CHILD_SOCKET";
const NOBODY: u32 = 65534;

#[tokio::test]
async fn socket_is_0600_and_streams_a_deploy_without_a_token() {
    let srv = start(Arc::new(FakeBackend::new()), Arc::new(StaticVerifier)).await;
    let mode = std::fs::metadata(&srv.uds).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "socket mode {mode:o}");
    let (status, headers, body) = uds_request(
        &srv.uds,
        "POST",
        "/deploy",
        &[("content-type", "application/json")],
        Some(r#"{"slugs": ["gh:acme/hello", "gh:acme/world"]}"#),
    )
    .await;
    assert_eq!(status, 202, "{body}");
    assert!(headers.contains_key("x-deployment-id"));
    let items: Vec<StreamItem> = body
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let (last, events) = items.split_last().unwrap();
    assert!(events.len() >= 7 && events.iter().all(|i| matches!(i, StreamItem::Event(_))));
    let StreamItem::Report(r) = last else {
        panic!("last is not a report: {last:?}")
    };
    assert_eq!(r.services.len(), 2);
    // A bearer token is neither needed nor looked at on the socket.
    let (status, _, _) = uds_request(
        &srv.uds,
        "GET",
        "/services",
        &[("authorization", "Bearer garbage")],
        None,
    )
    .await;
    assert_eq!(status, 200);
    let (status, _, body) = uds_request(&srv.uds, "GET", "/nope", &[], None).await;
    assert_eq!(status, 404);
    assert_error_shape(&body);
    // A browser at the end of an `ssh -L` tunnel is the operator only on its own pages: another
    // site's form post (CSRF) is refused, API and console (a rebound Host: console::session tests).
    for (method, uri, hdrs) in [
        ("POST", "/destroy", vec![("origin", "https://evil.example")]),
        (
            "POST",
            "/projects/demo/destroy",
            vec![("origin", "https://evil.example")],
        ),
        ("POST", "/deploy", vec![("origin", "null")]),
    ] {
        let (status, _, body) = uds_request(&srv.uds, method, uri, &hdrs, None).await;
        let (code, _) = assert_error_shape(&body);
        assert_eq!(
            (status, code.as_str()),
            (403, "origin_mismatch"),
            "{method} {uri}: {body}"
        );
    }
    let (status, _, _) = uds_request(
        &srv.uds,
        "GET",
        "/services",
        &[
            ("origin", "http://localhost"),
            ("sec-fetch-site", "same-origin"),
        ],
        None,
    )
    .await;
    assert_eq!(status, 200, "the operator's own page on the tunnel");
    let path = srv.uds.clone();
    srv.shutdown().await.unwrap();
    assert!(!path.exists(), "socket file removed at shutdown");
}

/// Runs this binary's `uds_child_client` as uid `nobody` against `socket`; returns its stdout.
fn run_child_as_nobody(socket: &std::path::Path) -> String {
    let exe = std::env::current_exe().unwrap();
    let out = std::process::Command::new(exe)
        .args([
            "--exact",
            "uds_child_client",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, socket)
        .uid(NOBODY)
        .gid(NOBODY)
        .output()
        .expect("spawn child as nobody");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "child failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[tokio::test]
async fn another_uid_is_refused() {
    assert!(iac_bin::api::check_peer_uid(Some(NOBODY), 0).is_err());
    assert!(iac_bin::api::check_peer_uid(Some(0), 0).is_ok());
    if iac_bin::api::listen::current_uid() != 0 {
        eprintln!("not root: cannot run a client as another uid; only the uid rule was checked");
        return;
    }
    let srv = start(Arc::new(FakeBackend::new()), Arc::new(StaticVerifier)).await;
    // The child must be able to reach the directory and run this binary.
    let dir = srv.uds.parent().unwrap().to_path_buf();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let sock = srv.uds.clone();
    let out = tokio::task::spawn_blocking(move || run_child_as_nobody(&sock))
        .await
        .unwrap();
    assert!(
        out.contains("CONNECT-ERROR"),
        "0600 socket must refuse other users at connect: {out}"
    );
    std::fs::set_permissions(&srv.uds, std::fs::Permissions::from_mode(0o666)).unwrap();
    let sock = srv.uds.clone();
    let out = tokio::task::spawn_blocking(move || run_child_as_nobody(&sock))
        .await
        .unwrap();
    assert!(
        out.contains("STATUS 403"),
        "peer-uid check must refuse uid {NOBODY}: {out}"
    );
    assert!(
        out.contains("uid 65534") && out.contains("\"forbidden\""),
        "{out}"
    );
    srv.shutdown().await.unwrap();
}

/// Child-process half of `another_uid_is_refused`: does nothing unless that test started it
/// (with the socket path in the environment); then it reports what the server answered.
#[tokio::test]
async fn uds_child_client() {
    let Some(socket) = std::env::var_os(CHILD_ENV) else {
        return;
    };
    let socket = std::path::PathBuf::from(socket);
    match tokio::net::UnixStream::connect(&socket).await {
        Err(e) => println!("CONNECT-ERROR {e}"),
        Ok(_) => {
            let (status, _, body) = uds_request(&socket, "GET", "/services", &[], None).await;
            println!("STATUS {status} {body}");
        }
    }
}
