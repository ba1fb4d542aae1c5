//! The web console in a real browser: headless Chromium driven over WebDriver (chromedriver)
//! against a real `iac serve` and a stand-in Supabase Auth that issues real ES256 JWTs.
//!
//! * `console_sign_in_grants_and_origin`: a wrong password is a clear message on the sign-in
//!   page; the right one signs in (HttpOnly, SameSite=Strict session cookie; no token in the
//!   page's storage or URL); the projects page lists only the projects granted to the user; a
//!   state-changing API request made with the session cookie from another origin (or none) is
//!   403 `origin_mismatch`, the same with the right origin passes the check; sign-out ends the
//!   session. Needs no container engine.
//! * `console_deploy_watch_logs_destroy_history` (real Docker engine): sign in, load the
//!   fixture repo's branches, preview the plan (`create`), deploy and watch every service reach
//!   SERVING, see the app's log line on the logs page, destroy with confirmation, restart
//!   `iac serve` on the same state directory, still be signed in, and find the deployment in the
//!   history with its outcome and the log lines saved at the destroy. Access tokens live 70 s,
//!   so the session is refreshed (refresh grant) on the way.
//!
//! Both check the browser console log (chromedriver's `goog:loggingPrefs`) for errors on every
//! page. With `IAC_SCREENSHOTS=DIR` (`make screenshots`) every page is also captured at 1280 and
//! 390 px wide. Skipped loudly without chromium/chromedriver unless `IAC_REQUIRE_BROWSER` is set.

mod browser;
mod e2e;

use std::time::Duration;

use browser::supabase::{self, StandIn};
use browser::{Driver, Serve, Session, skip_without_browser};
use e2e::{HELLO, Project, fixture, git};
use serde_json::Value;

const EMAIL: &str = "dev@example.test";
const PASSWORD: &str = "correct horse battery staple";
const SECOND: Duration = Duration::from_secs(1);

/// `iac.toml` for the tests: user tokens accepted, the project granted to the user by email,
/// another project granted to someone else, local sources allowed (the fixture is git+file).
fn write_config(dir: &std::path::Path, project: &str) {
    std::fs::write(
        dir.join("iac.toml"),
        format!(
            "[supabase]\nallowed_roles = [\"service_role\", \"authenticated\"]\n\n[serve]\nallow_local_sources = true\n\n[serve.projects.{project}]\ndeploy = [\"{EMAIL}\"]\n\n[serve.projects.other-team]\ndeploy = [\"someone-else@example.test\"]\n"
        ),
    )
    .unwrap();
}

fn serve_env(sb: &StandIn) -> Vec<(&'static str, String)> {
    let mut env = vec![
        ("SUPABASE_URL", sb.url.clone()),
        (
            "SUPABASE_SERVICE_ROLE_KEY",
            supabase::SERVICE_KEY.to_string(),
        ),
        ("SUPABASE_ANON_KEY", supabase::ANON_KEY.to_string()),
        ("SUPABASE_JWT_SECRET", String::new()),
    ];
    if let Ok(agent) = std::env::var("IAC_IMAGES__AGENT_BINARY") {
        env.push(("IAC_IMAGES__AGENT_BINARY", agent));
    }
    env
}

async fn sign_in(s: &Session, base: &str, password: &str) {
    s.goto(&format!("{base}/")).await;
    s.wait("#signin-form", 10 * SECOND).await;
    s.type_into("#email", EMAIL).await;
    s.type_into("#password", password).await;
    s.click("#signin-submit").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_sign_in_grants_and_origin() {
    if skip_without_browser("console_sign_in_grants_and_origin") {
        return;
    }
    let sb = StandIn::start(EMAIL, PASSWORD, 3600).await;
    let p = Project::new();
    write_config(p.workdir.path(), &p.name);
    let srv = Serve::start(p.workdir.path(), &p.name, &serve_env(&sb)).await;
    let driver = Driver::start().await;
    let s = driver.session(1280, 900).await;

    // A visitor is sent to the sign-in page.
    s.goto(&format!("{}/projects/{}", srv.base, p.name)).await;
    s.wait("#signin-form", 10 * SECOND).await;
    assert!(s.current_url().await.ends_with("/signin"));
    s.assert_console_clean("sign-in", &[]).await;
    s.shots("signin").await;

    // Wrong password: GoTrue's 400 becomes a clear message; no cookie is set.
    sign_in(&s, &srv.base, "wrong password").await;
    let msg = s
        .wait_text("#signin-error", "Invalid login credentials", 10 * SECOND)
        .await;
    assert!(msg.starts_with("Sign-in failed"), "{msg}");
    assert_eq!(sb.failed_sign_ins(), 1);
    assert!(s.cookie("iac_session").await.get("value").is_none());
    s.assert_console_clean("sign-in (wrong password)", &[])
        .await;
    // The console log is really read: an error the test logs itself shows up.
    s.execute("console.error('probe-1234');", serde_json::json!([]))
        .await;
    let log = s.browser_log().await;
    assert!(
        log.iter().any(|e| e["level"] == "SEVERE"
            && e["message"]
                .as_str()
                .unwrap_or_default()
                .contains("probe-1234")),
        "{log:#?}"
    );

    // Right password: the projects page, with only the granted project.
    sign_in(&s, &srv.base, PASSWORD).await;
    let projects = s.wait_text("#projects", &p.name, 10 * SECOND).await;
    assert!(!projects.contains("other-team"), "{projects}");
    let user = s.wait_text(".who .user", EMAIL, 5 * SECOND).await;
    assert_eq!(user, EMAIL);
    s.assert_console_clean("projects", &[]).await;
    s.shots("projects").await;

    // The cookie: HttpOnly, SameSite=Strict, an opaque id (no JWT); nothing in web storage.
    let c = s.cookie("iac_session").await;
    assert_eq!(c["httpOnly"], true, "{c}");
    assert_eq!(c["sameSite"], "Strict", "{c}");
    let id = c["value"].as_str().unwrap().to_string();
    assert_eq!(id.len(), 64, "{c}");
    assert!(!id.contains('.'), "the cookie holds no JWT: {c}");
    let storage = s
        .execute(
            "return JSON.stringify([localStorage.length, sessionStorage.length, location.href]);",
            serde_json::json!([]),
        )
        .await;
    assert_eq!(
        storage.as_str().unwrap(),
        format!("[0,0,\"{}/\"]", srv.base)
    );

    // A project granted to someone else: 403 page, and the API says project_forbidden.
    s.goto(&format!("{}/projects/other-team", srv.base)).await;
    let t = s.wait_text("main", "Not allowed", 10 * SECOND).await;
    assert!(t.contains("other-team"), "{t}");
    let _ = s.browser_log().await; // the page's own 403

    // Origin: the API with the session cookie and a foreign or missing Origin is refused.
    let http = reqwest::Client::new();
    let cookie = format!("iac_session={id}");
    let destroy = |origin: Option<&str>| {
        let mut r = http
            .post(format!("{}/destroy", srv.base))
            .header("cookie", &cookie)
            .json(&serde_json::json!({"project": p.name}));
        if let Some(o) = origin {
            r = r.header("origin", o);
        }
        r.send()
    };
    for origin in [Some("http://evil.example"), None] {
        let r = destroy(origin).await.unwrap();
        assert_eq!(r.status().as_u16(), 403, "{origin:?}");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["error"]["code"], "origin_mismatch", "{body}");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("Origin"),
            "{body}"
        );
    }
    // A read with the cookie needs no Origin; the bearer API is unchanged (no cookie: 401).
    let r = http
        .get(format!("{}/deployments?project={}", srv.base, p.name))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let r = http
        .get(format!("{}/deployments", srv.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    // The console's own forms check Origin too.
    let r = http
        .post(format!("{}/signout", srv.base))
        .header("cookie", &cookie)
        .header("origin", "http://evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 403);
    assert!(r.text().await.unwrap().contains("does not match"));

    // Sign-out (a real button) ends the session: the old cookie is worthless.
    s.goto(&format!("{}/", srv.base)).await;
    s.click(".who form button").await;
    s.wait("#signin-form", 10 * SECOND).await;
    let r = http
        .get(format!("{}/deployments", srv.base))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    s.assert_console_clean("sign-out", &[]).await;
    s.quit().await;
    srv.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_deploy_watch_logs_destroy_history() {
    if skip_without_browser("console_deploy_watch_logs_destroy_history")
        || e2e::skip_without_docker("console_deploy_watch_logs_destroy_history")
    {
        return;
    }
    let agent = e2e::static_agent();
    let sb = StandIn::start(EMAIL, PASSWORD, 70).await;
    let p = Project::new();
    write_config(p.workdir.path(), &p.name);
    let repos = tempfile::tempdir().unwrap();
    let hello = fixture(repos.path(), "hello", &[("main.py", HELLO)]);
    git(&hello, &["tag", "v1"]);
    git(&hello, &["branch", "feature"]);
    let slug = format!("git+file://{}", hello.display());
    let mut env = serve_env(&sb);
    env.push(("IAC_IMAGES__AGENT_BINARY", agent));
    let srv = Serve::start(p.workdir.path(), &p.name, &env).await;
    let driver = Driver::start().await;
    let s = driver.session(1280, 900).await;

    sign_in(&s, &srv.base, PASSWORD).await;
    s.wait_text("#projects", &p.name, 10 * SECOND).await;
    s.click(&format!("#projects a[href=\"/projects/{}\"]", p.name))
        .await;
    s.wait("#no-services", 30 * SECOND).await;
    s.assert_console_clean("project (empty)", &[]).await;

    // Deploy: slug, its branches, a plan preview, then the deploy itself.
    s.click("#deploy-link").await;
    s.type_into("#svc1-slug", &slug).await;
    s.click("#rows .load-refs").await;
    s.wait("#svc1-ref option[value=\"feature\"]", 30 * SECOND)
        .await;
    s.wait_text("#status", "2 branches, 1 tags", 5 * SECOND)
        .await;
    let options = s
        .execute(
            "return [...document.querySelectorAll('#svc1-ref option')].map(o => o.value).join(',');",
            serde_json::json!([]),
        )
        .await;
    let options = options.as_str().unwrap().to_string();
    for r in ["main", "feature", "v1"] {
        assert!(options.split(',').any(|o| o == r), "{r} in {options}");
    }
    s.execute(
        "const s = document.getElementById('svc1-ref'); s.value = 'main'; s.dispatchEvent(new Event('input', {bubbles: true}));",
        serde_json::json!([]),
    )
    .await;
    s.type_into("#svc1-expose", "true").await;
    s.click("#preview").await;
    s.wait(
        "#plan tr[data-service=\"hello\"][data-action=\"create\"]",
        120 * SECOND,
    )
    .await;
    s.assert_console_clean("deploy (plan)", &[]).await;
    s.shots("deploy-plan").await;
    s.click("#confirm").await;
    let result = s.wait("#result[data-ok]", 600 * SECOND).await;
    let ok = s.attr(&result, "data-ok").await;
    let text = s.text(&result).await;
    assert_eq!(ok.as_deref(), Some("true"), "{text}\n{}", srv.log_text());
    assert!(text.contains("every service is SERVING"), "{text}");
    let state = s
        .wait(
            "#progress tr[data-service=\"hello\"][data-state=\"SERVING\"]",
            5 * SECOND,
        )
        .await;
    assert!(!state.is_empty());
    s.assert_console_clean("deploy (progress)", &[]).await;
    s.execute(
        "document.getElementById('plan-box').scrollIntoView();",
        serde_json::json!([]),
    )
    .await;
    s.shots("deploy-progress").await;

    // The services page: SERVING, a URL, the entry and its rule.
    s.goto(&format!("{}/projects/{}", srv.base, p.name)).await;
    let row = s
        .wait_text(
            "#services tr[data-service=\"hello\"]",
            "SERVING",
            30 * SECOND,
        )
        .await;
    assert!(row.contains("http://127.0.0.1:"), "{row}");
    assert!(row.contains("main.py"), "{row}");
    s.assert_console_clean("services", &[]).await;
    s.shots("services").await;

    // Live logs: the app's printed line.
    s.click("#services tr[data-service=\"hello\"] a[href$=\"/logs/hello\"]")
        .await;
    s.wait_text("#log", "hello-main says hi", 30 * SECOND).await;
    s.assert_console_clean("logs", &[]).await;
    s.shots("logs").await;

    // Destroy, with the confirmation step.
    s.goto(&format!("{}/projects/{}", srv.base, p.name)).await;
    s.click("#destroy-link").await;
    s.wait("#destroy-form", 10 * SECOND).await;
    s.shots("destroy").await;
    s.type_into("#confirm", &p.name).await;
    s.click("#destroy-submit").await;
    s.wait_text("#message", "removed", 120 * SECOND).await;
    s.assert_console_clean("destroyed", &[]).await;
    assert!(
        sb.refreshes() >= 1,
        "the 70 s access token was refreshed during the run"
    );

    // Restart `iac serve` on the same state directory: the session (kept in the history
    // database) and the history both stay; the browser is still signed in.
    srv.stop();
    let srv = Serve::start(p.workdir.path(), &p.name, &env).await;
    s.goto(&srv.base).await;
    s.wait_text("#projects", &p.name, 10 * SECOND).await;
    assert!(
        s.find("#signin-form").await.is_none(),
        "signed out by a restart of iac serve"
    );
    s.goto(&format!("{}/history?project={}", srv.base, p.name))
        .await;
    let list = s.wait_text("#history", "destroy", 10 * SECOND).await;
    assert!(
        list.contains("deploy") && list.contains("succeeded"),
        "{list}"
    );
    s.assert_console_clean("history", &[]).await;
    s.shots("history").await;
    // The deploy (the older row) with its outcome.
    let deploy_link = s
        .execute(
            "const rows = [...document.querySelectorAll('#history tbody tr')]; const r = rows.find(r => r.children[2].textContent.trim() === 'deploy'); return r.querySelector('a').getAttribute('href');",
            serde_json::json!([]),
        )
        .await;
    s.goto(&format!("{}{}", srv.base, deploy_link.as_str().unwrap()))
        .await;
    s.wait_text(
        "#outcomes tr[data-service=\"hello\"]",
        "SERVING",
        10 * SECOND,
    )
    .await;
    s.wait("#progress tr[data-service=\"hello\"]", 10 * SECOND)
        .await;
    s.assert_console_clean("deployment", &[]).await;
    s.shots("deployment").await;
    // The destroy (the newest row), with the log lines saved from the removed pod.
    s.goto(&format!("{}/history?project={}", srv.base, p.name))
        .await;
    s.click("#history tbody tr:first-child a").await;
    s.wait_text(".tail pre", "hello-main says hi", 10 * SECOND)
        .await;
    s.assert_console_clean("deployment (destroy)", &[]).await;
    s.quit().await;
    srv.stop();
}
