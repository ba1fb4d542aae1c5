//! The admin API under load (issue 18), against a real `iac serve` on its Unix socket, a real
//! engine and a real project (`hello`, a web app, and `worker`, a loop printing a line a second):
//! 100 concurrent streams at once — 80 following log streams (`GET /services/{name}/logs?
//! follow=true`) and 20 deploy-event streams (`POST /deploy` of the same project; a 409 while
//! another deploy of it runs is the API's documented answer, and the client asks again) — plus
//! `GET /services` polled the whole time. Asserts that nothing fails (every answer 2xx, or 409
//! then 202 for the deploys; no error line in any stream), that every log stream delivers lines
//! and every deploy stream ends with its report, all services SERVING. Not timed. The server's
//! RSS before and after is printed (`scripts/bench-load.sh` has the memory figures).

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;

mod e2e;
use e2e::{HELLO, Project, fixture, json_of};

const WORKER: &str = r#"
import signal, sys, time
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
while True:
    print("worker tick", flush=True)
    time.sleep(1)
"#;

/// `iac serve --uds` for the project, killed on drop.
struct Serve {
    child: Child,
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// Sends one request over the socket; returns the status and the body, read frame by frame:
/// `until` sees the text so far and says when to stop reading (a following stream never ends).
async fn request(
    sock: &Path,
    method: &str,
    uri: &str,
    body: Option<String>,
    until: impl Fn(&str) -> bool,
) -> Result<(u16, String), String> {
    let stream = tokio::net::UnixStream::connect(sock)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| format!("handshake: {e}"))?;
    tokio::spawn(conn);
    let req = hyper::Request::builder()
        .method(method)
        .uri(uri)
        .header("host", "localhost")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.unwrap_or_default())))
        .unwrap();
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| format!("{method} {uri}: {e}"))?;
    let status = resp.status().as_u16();
    let mut body = resp.into_body();
    let mut text = String::new();
    while !until(&text) {
        match body.frame().await {
            Some(Ok(f)) => {
                if let Some(d) = f.data_ref() {
                    text.push_str(&String::from_utf8_lossy(d));
                }
            }
            Some(Err(e)) => return Err(format!("{method} {uri}: reading the body: {e}")),
            None => break,
        }
    }
    Ok((status, text))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hundred_streams_and_health_polling_without_an_error() {
    if e2e::skip_without_docker("a_hundred_streams_and_health_polling_without_an_error") {
        return;
    }
    let p = Project::new();
    let repos = p.workdir.path().join("repos");
    let hello = fixture(&repos, "hello", &[("main.py", HELLO)]);
    let worker = fixture(&repos, "worker", &[("main.py", WORKER)]);
    let slugs = vec![
        serde_json::json!({"slug": format!("git+file://{}#main", hello.display()), "env": {"PORT": "8080"}}),
        serde_json::json!(format!("git+file://{}#main", worker.display())),
    ];
    let file = p.workdir.path().join("repos.yaml");
    std::fs::write(&file, serde_yaml_lines(&slugs)).unwrap();
    let out = p.iac(&["deploy", "--file", file.to_str().unwrap(), "--json"]);
    assert_eq!(out.status.code(), Some(0), "{:#}", json_of(&out));

    let sock = p.workdir.path().join("iac.sock");
    let agent = e2e::static_agent();
    let serve = Serve {
        child: Command::new(env!("CARGO_BIN_EXE_iac"))
            .args([
                "serve",
                "--uds",
                sock.to_str().unwrap(),
                "--project",
                &p.name,
            ])
            .current_dir(p.workdir.path())
            .env("IAC_IMAGES__AGENT_BINARY", &agent)
            .env("IAC_STATE_DIR", p.workdir.path().join(".iac"))
            .env("IAC_PKI__SECRETS_DIR", p.workdir.path().join("secrets"))
            .env("IAC_SERVE__ALLOW_LOCAL_SOURCES", "true")
            .env_remove("SUPABASE_URL")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("run iac serve"),
    };
    let t = Instant::now();
    while !sock.exists() {
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "iac serve did not listen"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let pid = serve.child.id();
    let rss_before = rss_kib(pid);

    let sock = Arc::new(sock);
    let done = Arc::new(AtomicBool::new(false));
    let polls = Arc::new(AtomicUsize::new(0));

    // Health polling the whole time.
    let poller = {
        let (sock, done, polls, project) =
            (sock.clone(), done.clone(), polls.clone(), p.name.clone());
        tokio::spawn(async move {
            while !done.load(Ordering::SeqCst) {
                let (status, body) = request(
                    &sock,
                    "GET",
                    &format!("/services?project={project}"),
                    None,
                    |_| false,
                )
                .await?;
                if status != 200 {
                    return Err(format!("GET /services: {status} {body}"));
                }
                polls.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Ok::<(), String>(())
        })
    };

    // 80 following log streams: each must deliver lines; they stay open until the deploys end.
    let mut logs = Vec::new();
    for i in 0..80 {
        let (sock, project) = (sock.clone(), p.name.clone());
        let svc = if i % 2 == 0 { "hello" } else { "worker" };
        logs.push(tokio::spawn(async move {
            let uri = format!("/services/{svc}/logs?project={project}&follow=true");
            let (status, text) = request(&sock, "GET", &uri, None, |t| t.contains('\n')).await?;
            if status != 200 || text.contains("\"error\"") {
                return Err(format!("{uri}: {status} {text}"));
            }
            Ok::<usize, String>(text.lines().count())
        }));
    }

    // 20 deploy-event streams of the same project, asked again after a 409.
    let body = serde_json::json!({"project": p.name, "slugs": slugs}).to_string();
    let mut deploys = Vec::new();
    for _ in 0..20 {
        let (sock, body) = (sock.clone(), body.clone());
        deploys.push(tokio::spawn(async move {
            let t = Instant::now();
            let mut conflicts = 0;
            loop {
                let (status, text) =
                    request(&sock, "POST", "/deploy", Some(body.clone()), |_| false).await?;
                match status {
                    409 if t.elapsed() < Duration::from_secs(240) => {
                        conflicts += 1;
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                    202 => {
                        let last: serde_json::Value = text
                            .lines()
                            .last()
                            .and_then(|l| serde_json::from_str(l).ok())
                            .ok_or_else(|| format!("no final item: {text}"))?;
                        if last["type"] != "report" {
                            return Err(format!("the stream did not end with a report: {last}"));
                        }
                        for s in last["services"].as_array().into_iter().flatten() {
                            if s["health"]["state"] != "SERVING" {
                                return Err(format!("not SERVING after a deploy: {s}"));
                            }
                        }
                        return Ok::<(usize, usize), String>((text.lines().count(), conflicts));
                    }
                    _ => return Err(format!("POST /deploy: {status} {text}")),
                }
            }
        }));
    }

    let mut events = 0;
    for d in deploys {
        let (n, _) = d
            .await
            .unwrap()
            .unwrap_or_else(|e| panic!("deploy stream: {e}"));
        events += n;
    }
    let mut lines = 0;
    for l in logs {
        lines += l
            .await
            .unwrap()
            .unwrap_or_else(|e| panic!("log stream: {e}"));
    }
    done.store(true, Ordering::SeqCst);
    poller
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("health poll: {e}"));
    let rss_after = rss_kib(pid);
    eprintln!(
        "api load: 20 deploy streams ({events} items), 80 log streams ({lines} lines), {} health polls; iac serve RSS {rss_before} KiB before, {rss_after} KiB after",
        polls.load(Ordering::SeqCst)
    );
    assert!(polls.load(Ordering::SeqCst) > 0);
    drop(serve);
    assert!(p.iac(&["destroy"]).status.success());
}

/// The repos file for `slugs` (JSON is YAML).
fn serde_yaml_lines(slugs: &[serde_json::Value]) -> String {
    serde_json::to_string(slugs).unwrap()
}
