//! Browser-test harness: Debian's `chromedriver` driving headless `chromium`, spoken to in the
//! W3C WebDriver JSON protocol with reqwest (fantoccini would add a second `http` major and a
//! second ICU to Cargo.lock through the `webdriver` crate), plus `iac serve` as a child process
//! and the browser console log check. Skips (loudly) without chromium/chromedriver unless
//! `IAC_REQUIRE_BROWSER` is set.

#![allow(dead_code)]

pub mod supabase;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{Value, json};

/// The W3C element key.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

pub const CHROMIUM: &str = "/usr/bin/chromium";
pub const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// Whether a browser test must be skipped: says so, and fails instead when
/// `IAC_REQUIRE_BROWSER` is set (`make test` sets it).
pub fn skip_without_browser(test: &str) -> bool {
    if Path::new(CHROMIUM).exists() && Path::new(CHROMEDRIVER).exists() {
        return false;
    }
    assert!(
        std::env::var_os("IAC_REQUIRE_BROWSER").is_none(),
        "IAC_REQUIRE_BROWSER is set but {CHROMIUM} or {CHROMEDRIVER} is missing (scripts/install-deps.sh installs Debian's chromium and chromium-driver)"
    );
    eprintln!("SKIPPED {test}: no {CHROMIUM} / {CHROMEDRIVER}");
    true
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Kills the child (SIGKILL, via PR_SET_PDEATHSIG too, so a killed test leaves nothing).
fn die_with_parent(cmd: &mut Command) {
    // SAFETY: only prctl, async-signal-safe, runs between fork and exec.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(cmd, || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// A chromedriver process; killed on drop.
pub struct Driver {
    child: Child,
    pub base: String,
    http: reqwest::Client,
}

impl Driver {
    pub async fn start() -> Driver {
        let port = free_port();
        let mut cmd = Command::new(CHROMEDRIVER);
        cmd.arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // Its own process group, which the browsers it starts share: dropping the driver
        // kills them too, also when a test panics before it quits its session.
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        die_with_parent(&mut cmd);
        let child = cmd.spawn().expect("start chromedriver");
        let d = Driver {
            child,
            base: format!("http://127.0.0.1:{port}"),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(120))
                .build()
                .unwrap(),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(r) = d.http.get(format!("{}/status", d.base)).send().await
                && let Ok(v) = r.json::<Value>().await
                && v["value"]["ready"] == true
            {
                break;
            }
            assert!(Instant::now() < deadline, "chromedriver not ready in 20 s");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        d
    }

    /// A headless Chromium session at `width` x `height`, collecting the browser console log.
    pub async fn session(&self, width: u32, height: u32) -> Session {
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                         "--no-first-run", "--disable-extensions", "--hide-scrollbars",
                         format!("--window-size={width},{height}")],
            },
            "goog:loggingPrefs": {"browser": "ALL"},
        }}});
        let r: Value = self
            .http
            .post(format!("{}/session", self.base))
            .json(&caps)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let id = r["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {r}"))
            .to_string();
        Session {
            http: self.http.clone(),
            url: format!("{}/session/{id}", self.base),
        }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        // SAFETY: kill(2) on the process group this driver leads (chromedriver and its browsers).
        unsafe {
            libc::kill(-(self.child.id() as i32), libc::SIGKILL);
        }
        let _ = self.child.wait();
    }
}

/// One browser session.
pub struct Session {
    http: reqwest::Client,
    url: String,
}

impl Session {
    async fn cmd(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut req = self
            .http
            .request(method.clone(), format!("{}{path}", self.url));
        if let Some(b) = body {
            req = req.json(&b);
        } else if method == reqwest::Method::POST {
            req = req.json(&json!({}));
        }
        let v: Value = req.send().await.unwrap().json().await.unwrap();
        v["value"].clone()
    }

    async fn try_cmd(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Value,
    ) -> Result<Value, String> {
        let v = self.cmd(method, path, Some(body)).await;
        if let Some(e) = v.get("error") {
            return Err(format!("{e}: {}", v["message"]));
        }
        Ok(v)
    }

    pub async fn goto(&self, url: &str) {
        self.cmd(reqwest::Method::POST, "/url", Some(json!({"url": url})))
            .await;
    }

    pub async fn current_url(&self) -> String {
        self.cmd(reqwest::Method::GET, "/url", None)
            .await
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    pub async fn set_size(&self, width: u32, height: u32) {
        self.cmd(
            reqwest::Method::POST,
            "/window/rect",
            Some(json!({"width": width, "height": height})),
        )
        .await;
    }

    /// The first element matching `css`, if any.
    pub async fn find(&self, css: &str) -> Option<String> {
        let v = self
            .try_cmd(
                reqwest::Method::POST,
                "/element",
                json!({"using": "css selector", "value": css}),
            )
            .await
            .ok()?;
        v[ELEMENT].as_str().map(str::to_string)
    }

    /// Waits up to `timeout` for an element matching `css`.
    pub async fn wait(&self, css: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(e) = self.find(css).await {
                return e;
            }
            assert!(
                Instant::now() < deadline,
                "no element {css:?} within {timeout:?} on {}; page text:\n{}",
                self.current_url().await,
                self.body_text().await
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Waits up to `timeout` until the text of `css` contains `needle`; returns the text.
    pub async fn wait_text(&self, css: &str, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(e) = self.find(css).await {
                let t = self.text(&e).await;
                if t.contains(needle) {
                    return t;
                }
            }
            assert!(
                Instant::now() < deadline,
                "{css:?} did not show {needle:?} within {timeout:?} on {}; page text:\n{}",
                self.current_url().await,
                self.body_text().await
            );
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }

    pub async fn text(&self, el: &str) -> String {
        self.cmd(reqwest::Method::GET, &format!("/element/{el}/text"), None)
            .await
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    pub async fn body_text(&self) -> String {
        match self.find("body").await {
            Some(b) => self.text(&b).await,
            None => String::new(),
        }
    }

    pub async fn attr(&self, el: &str, name: &str) -> Option<String> {
        self.cmd(
            reqwest::Method::GET,
            &format!("/element/{el}/attribute/{name}"),
            None,
        )
        .await
        .as_str()
        .map(str::to_string)
    }

    pub async fn click(&self, css: &str) {
        let el = self.wait(css, Duration::from_secs(10)).await;
        self.cmd(reqwest::Method::POST, &format!("/element/{el}/click"), None)
            .await;
    }

    pub async fn type_into(&self, css: &str, text: &str) {
        let el = self.wait(css, Duration::from_secs(10)).await;
        self.cmd(reqwest::Method::POST, &format!("/element/{el}/clear"), None)
            .await;
        self.cmd(
            reqwest::Method::POST,
            &format!("/element/{el}/value"),
            Some(json!({"text": text})),
        )
        .await;
    }

    pub async fn execute(&self, script: &str, args: Value) -> Value {
        self.cmd(
            reqwest::Method::POST,
            "/execute/sync",
            Some(json!({"script": script, "args": args})),
        )
        .await
    }

    /// A cookie as WebDriver sees it (HttpOnly ones included).
    pub async fn cookie(&self, name: &str) -> Value {
        self.cmd(reqwest::Method::GET, &format!("/cookie/{name}"), None)
            .await
    }

    pub async fn screenshot(&self, path: &Path) {
        let v = self.cmd(reqwest::Method::GET, "/screenshot", None).await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(v.as_str().expect("screenshot data"))
            .unwrap();
        std::fs::write(path, png).unwrap();
    }

    /// The browser console log since the last call (chromedriver's `goog:loggingPrefs` log).
    pub async fn browser_log(&self) -> Vec<Value> {
        let v = self
            .cmd(
                reqwest::Method::POST,
                "/se/log",
                Some(json!({"type": "browser"})),
            )
            .await;
        v.as_array()
            .cloned()
            .unwrap_or_else(|| panic!("chromedriver gave no browser log: {v}"))
    }

    /// Fails on any SEVERE entry of the browser console log (JavaScript errors, failed loads,
    /// CSP violations) except those `allowed` matches (expected HTTP errors of the page).
    pub async fn assert_console_clean(&self, page: &str, allowed: &[&str]) {
        let bad: Vec<Value> = self
            .browser_log()
            .await
            .into_iter()
            .filter(|e| e["level"] == "SEVERE")
            .filter(|e| {
                let m = e["message"].as_str().unwrap_or_default();
                !allowed.iter().any(|a| m.contains(a))
            })
            .collect();
        assert!(bad.is_empty(), "browser console errors on {page}: {bad:#?}");
    }

    pub async fn quit(self) {
        let _ = self.http.delete(&self.url).send().await;
    }

    /// Screenshots at desktop (1280) and phone (390) width into `$IAC_SCREENSHOTS/NAME-*.png`
    /// when that is set; puts the window back to desktop size.
    pub async fn shots(&self, name: &str) {
        let Some(dir) = std::env::var_os("IAC_SCREENSHOTS") else {
            return;
        };
        let dir = PathBuf::from(dir);
        std::fs::create_dir_all(&dir).unwrap();
        for (w, h, kind) in [(1280, 900, "desktop"), (390, 844, "phone")] {
            self.set_size(w, h).await;
            tokio::time::sleep(Duration::from_millis(300)).await;
            self.screenshot(&dir.join(format!("{name}-{kind}.png")))
                .await;
        }
        self.set_size(1280, 900).await;
    }
}

/// `iac serve` as a child process; SIGTERM + wait on drop.
pub struct Serve {
    child: Child,
    pub base: String,
    pub log: PathBuf,
}

impl Serve {
    /// Starts `iac serve` in `workdir` (its `iac.toml`), with state under `workdir/.iac`, on a
    /// free port, with `env` on top; waits until `GET /health` answers.
    pub async fn start(workdir: &Path, project: &str, env: &[(&str, String)]) -> Serve {
        let port = free_port();
        let sock = workdir.join("iac.sock");
        let log = workdir.join(format!("serve-{port}.log"));
        let out = std::fs::File::create(&log).unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_iac"));
        cmd.args(["serve", "--http", &format!("127.0.0.1:{port}")])
            .args(["--uds", sock.to_str().unwrap(), "--project", project])
            .current_dir(workdir)
            .env("IAC_STATE_DIR", workdir.join(".iac"))
            .env("IAC_PKI__SECRETS_DIR", workdir.join("secrets"))
            .env("RUST_LOG", "info")
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out);
        die_with_parent(&mut cmd);
        let child = cmd.spawn().expect("start iac serve");
        let s = Serve {
            child,
            base: format!("http://127.0.0.1:{port}"),
            log,
        };
        let http = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(r) = http.get(format!("{}/health", s.base)).send().await
                && r.status().is_success()
            {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "iac serve did not answer within 60 s:\n{}",
                s.log_text()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        s
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, then wait for the process to exit (it drains first).
    pub fn stop(mut self) {
        self.terminate();
    }

    fn terminate(&mut self) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.terminate();
        }
    }
}
