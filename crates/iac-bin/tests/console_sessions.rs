//! Console sessions outlive `iac serve`: a real `iac serve` child and the stand-in Supabase Auth
//! of the browser tests, spoken to over plain HTTP as a browser would (the console's own
//! sign-in and sign-out forms, with the `Origin` a browser sends). Needs no browser and no
//! container engine.
//!
//! Signed in, then `iac serve` is restarted on the same state directory: the same cookie is
//! still signed in (the stored refresh token gets a new access token: one refresh grant), on
//! the API and on the console's pages; a second restart still knows it (the rotated refresh
//! token was stored). Sign-out ends it, and it stays ended after another restart. No file under
//! the state directory holds the cookie's id or any access or refresh token the stand-in issued
//! in the clear.

mod browser;

use browser::Serve;
use browser::supabase::{self, StandIn};
use reqwest::StatusCode;

const EMAIL: &str = "dev@example.test";
const PASSWORD: &str = "correct horse battery staple";
const PROJECT: &str = "sessions-demo";

fn serve_env(sb: &StandIn) -> Vec<(&'static str, String)> {
    vec![
        ("SUPABASE_URL", sb.url.clone()),
        (
            "SUPABASE_SERVICE_ROLE_KEY",
            supabase::SERVICE_KEY.to_string(),
        ),
        ("SUPABASE_ANON_KEY", supabase::ANON_KEY.to_string()),
        ("SUPABASE_JWT_SECRET", String::new()),
    ]
}

/// A client that shows redirects instead of following them (the cookie is on the 303).
fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// `GET /deployments?project=…` with the session cookie: 200 signed in, 401 not.
async fn api_status(srv: &Serve, cookie: &str) -> StatusCode {
    client()
        .get(format!("{}/deployments?project={PROJECT}", srv.base))
        .header("cookie", cookie)
        .send()
        .await
        .unwrap()
        .status()
}

/// Every byte of every file under `dir`.
fn all_bytes(dir: &std::path::Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(all_bytes(&p));
        } else {
            out.push((p.display().to_string(), std::fs::read(&p).unwrap()));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_console_session_survives_a_restart_of_iac_serve_until_sign_out() {
    let sb = StandIn::start(EMAIL, PASSWORD, 3600).await;
    let work = tempfile::tempdir().unwrap();
    std::fs::write(
        work.path().join("iac.toml"),
        format!(
            "[supabase]\nallowed_roles = [\"service_role\", \"authenticated\"]\n\n[serve.projects.{PROJECT}]\ndeploy = [\"{EMAIL}\"]\n"
        ),
    )
    .unwrap();
    let env = serve_env(&sb);
    let srv = Serve::start(work.path(), PROJECT, &env).await;

    // Sign in with the console's form, as the browser posts it.
    let r = client()
        .post(format!("{}/signin", srv.base))
        .header("origin", &srv.base)
        .header("content-type", "application/x-www-form-urlencoded")
        // EMAIL and PASSWORD, form-encoded.
        .body("email=dev%40example.test&password=correct+horse+battery+staple")
        .send()
        .await
        .unwrap();
    assert!(r.status().is_redirection(), "{}", r.status());
    let set = r
        .headers()
        .get("set-cookie")
        .expect("a session cookie")
        .to_str()
        .unwrap()
        .to_string();
    let id = set
        .strip_prefix("iac_session=")
        .and_then(|v| v.split(';').next())
        .unwrap()
        .to_string();
    assert_eq!(id.len(), 64, "{set}");
    let cookie = format!("iac_session={id}");
    assert_eq!(api_status(&srv, &cookie).await, StatusCode::OK);
    assert_eq!(sb.refreshes(), 0);
    srv.stop();

    // Restarted on the same state dir: still signed in, with a token refreshed from the store.
    let srv = Serve::start(work.path(), PROJECT, &env).await;
    assert_eq!(
        api_status(&srv, &cookie).await,
        StatusCode::OK,
        "{}",
        srv.log_text()
    );
    assert_eq!(sb.refreshes(), 1, "the stored refresh token was used once");
    let page = client()
        .get(format!("{}/", srv.base))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    let html = page.text().await.unwrap();
    assert!(
        html.contains(EMAIL) && !html.contains("signin-form"),
        "signed in on the pages too:\n{html}"
    );
    srv.stop();

    // Again: the rotated refresh token was stored (the stand-in refuses a used one).
    let srv = Serve::start(work.path(), PROJECT, &env).await;
    assert_eq!(api_status(&srv, &cookie).await, StatusCode::OK);
    assert_eq!(sb.refreshes(), 2);

    // Nothing on disk gives the session away: neither the cookie's id nor any access or
    // refresh token the stand-in issued (the sign-in's and both refreshes').
    let state = work.path().join(".iac");
    let issued = sb.issued_tokens();
    assert_eq!(issued.len(), 6, "three grants, two tokens each");
    let files = all_bytes(&state);
    assert!(
        files.iter().any(|(f, _)| f.contains("history")),
        "the history database is under the state dir: {:?}",
        files.iter().map(|(f, _)| f).collect::<Vec<_>>()
    );
    for (file, bytes) in &files {
        for (what, secret) in std::iter::once(("the cookie's id", id.as_str()))
            .chain(issued.iter().map(|t| ("a Supabase token", t.as_str())))
        {
            assert!(
                !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
                "{what} is in {file}"
            );
        }
    }

    // Sign-out ends the session, here and after a restart.
    let r = client()
        .post(format!("{}/signout", srv.base))
        .header("cookie", &cookie)
        .header("origin", &srv.base)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_redirection(), "{}", r.status());
    assert_eq!(api_status(&srv, &cookie).await, StatusCode::UNAUTHORIZED);
    srv.stop();
    let srv = Serve::start(work.path(), PROJECT, &env).await;
    assert_eq!(api_status(&srv, &cookie).await, StatusCode::UNAUTHORIZED);
    assert_eq!(sb.refreshes(), 2, "a signed-out session is not renewed");
    srv.stop();
}
