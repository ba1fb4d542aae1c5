//! The three public web apps of issue 10, end to end with the real `iac` binary, the real Docker
//! engine, real Envoy and real mTLS: a Flask quickstart (`app.run()`), a Django 6 app (Procfile
//! gunicorn, `.python-version` 3.14, WhiteNoise manifest storage) and a FastAPI app (`render.yaml`
//! `startCommand`), from `tests/fixtures/apps/` (see the README there), each committed into a
//! fresh git repository and deployed by `git+file://` slug in one project. Then:
//!
//! 1. every service is SERVING; each entry is what a person would run; the Django image is built
//!    on Python 3.14 and the others on the default 3.11, with their wheels downloaded for that
//!    interpreter; Django's Procfile `release:` (migrate) ran before its pod;
//! 2. each app answers its own page with HTTP 200 through the mesh: from a peer's container to
//!    its sidecar's outbound listener, over mTLS to the app's sidecar, to the app (the Django page
//!    uses `{% static %}` with a manifest storage, so it only renders when `collectstatic` ran at
//!    build);
//! 3. each app answers its own page with HTTP 200 from the host at the `url` that
//!    `iac health --json` gives (the same as the deploy report's), with no client certificate;
//! 4. `iac destroy` leaves no container or network with the project label.
//!
//! The apps' dependencies come from the wheels `make test-deps` downloads (`scripts/test-wheels.sh`)
//! with the resolver container pointed there by `--no-index`: no network. The Python 3.14 base image and its
//! wheelhouse come from `make test-deps` too (`bootstrap-images.sh --python 3.14`): a deploy would
//! build them on demand from Debian's mirror, which a test must not reach, so their absence fails
//! the test up front (the on-demand path is tested with a stand-in maker in
//! iac-backends/tests/build_docker.rs). With IAC_REQUIRE_DOCKER unset and no Docker it is skipped
//! loudly.
//! Everything it creates is removed by label on drop, even on panic.

use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

mod e2e;
use e2e::{docker, docker_ok, fixture_repo, json_of, remove_labelled};

struct Project {
    name: String,
    workdir: tempfile::TempDir,
}

impl Drop for Project {
    fn drop(&mut self) {
        remove_labelled(&format!("iac.project={}", self.name));
    }
}

/// The wheels `scripts/test-wheels.sh` downloaded (`make test-deps`).
fn test_wheels() -> PathBuf {
    let dir = e2e::test_wheels_dir();
    assert!(
        dir.join(".iac-test-wheels").is_file(),
        "{} has no wheels for the fixture apps: run `make test-deps` (scripts/test-wheels.sh)",
        dir.display()
    );
    dir
}

impl Project {
    fn iac(&self, args: &[&str]) -> Output {
        e2e::iac(self.workdir.path(), &self.name, args, &[], &[])
    }

    /// GET / of `to` from inside `from`'s app container, through `from`'s sidecar (outbound,
    /// plaintext on 127.0.0.1:15001, routed by Host) and `to`'s sidecar (inbound mTLS); retried
    /// while the app is still starting. Returns (status, body).
    fn get_through_mesh(&self, from: &str, to: &str) -> (u16, String) {
        const GET: &str = "import sys, urllib.request, urllib.error\n\
            req = urllib.request.Request('http://127.0.0.1:15001/', headers={'Host': sys.argv[1]})\n\
            try:\n    r = urllib.request.urlopen(req, timeout=10); print(r.status); print(r.read().decode())\n\
            except urllib.error.HTTPError as e:\n    print(e.code); print(e.read().decode())\n";
        let container = format!("{}-{from}", self.name);
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let out = Command::new("docker")
                .args(["exec", "-u", "nobody", &container, "python3", "-c", GET, to])
                .output()
                .expect("docker exec");
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            let (status, body) = text.split_once('\n').unwrap_or((&text, ""));
            let status: u16 = status.trim().parse().unwrap_or(0);
            if status == 200 || Instant::now() > deadline {
                if status != 200 {
                    eprintln!(
                        "{from} → {to}: {status} {body}\nstderr: {}\n--- {to} logs\n{}",
                        String::from_utf8_lossy(&out.stderr),
                        String::from_utf8_lossy(
                            &self.iac(&["logs", "--service", to, "--tail", "40"]).stdout
                        )
                    );
                }
                return (status, body.to_string());
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

#[test]
fn flask_django_and_fastapi_apps_serve_their_pages_through_the_mesh() {
    if !docker_ok() {
        assert!(
            std::env::var_os("IAC_REQUIRE_DOCKER").is_none(),
            "IAC_REQUIRE_DOCKER is set but Docker is unreachable"
        );
        eprintln!("SKIPPED public apps end to end: no Docker engine");
        return;
    }
    let started = Instant::now();
    let wheels = test_wheels();
    let project = Project {
        name: format!("t{}", &uuid::Uuid::new_v4().simple().to_string()[..10]),
        workdir: tempfile::tempdir().unwrap(),
    };
    let repos = project.workdir.path().join("repos");
    let flask = fixture_repo(&repos, "apps", "flask-quickstart");
    let django = fixture_repo(&repos, "apps", "django-getting-started");
    let fastapi = fixture_repo(&repos, "apps", "fastapi-render");
    let file = project.workdir.path().join("repos.yaml");
    // The Django app allows the hosts it is called by: its mesh name and the host's loopback (its
    // edge `url`), as a person sets DJANGO_ALLOWED_HOSTS for where they open it.
    std::fs::write(
        &file,
        format!(
            "- slug: git+file://{}#main\n  name: flask\n\
             - slug: git+file://{}#main\n  name: django\n  env: {{ DJANGO_ALLOWED_HOSTS: \"django,127.0.0.1\" }}\n\
             - slug: git+file://{}#main\n  name: fastapi\n",
            flask.display(),
            django.display(),
            fastapi.display()
        ),
    )
    .unwrap();
    // The resolver container reads the pre-downloaded wheels only: no index, no network.
    std::fs::write(
        project.workdir.path().join("iac.toml"),
        format!(
            "[images]\npip_args = [\"--no-index\"]\n[images.resolver]\nfind_links = [{:?}]\n",
            wheels.display().to_string()
        ),
    )
    .unwrap();
    let file = file.to_str().unwrap();
    let py314_offline = "iac/python:3.14-sid";
    let py314_present = !docker(&["images", "-q", "python:3.14-slim"])
        .trim()
        .is_empty()
        || !docker(&["images", "-q", py314_offline]).trim().is_empty();
    let defaults = iac_backends::build::ImageConfig::default();
    let wh314 = defaults.wheelhouse_for(&defaults.python_images(Some("3.14")).unwrap());
    assert!(
        py314_present && wh314.join(".iac-wheelhouse").is_file(),
        "the Python 3.14 base image ({py314_offline}) or its wheelhouse {} is missing: run `make test-deps` \
         (a deploy would build them from Debian's mirror, which tests do not reach)",
        wh314.display()
    );

    // 1. deploy: all three SERVING, each with the entry and Python a person would expect.
    let out = project.iac(&["deploy", "--file", file, "--json"]);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let report = json_of(&out)["report"].clone();
    assert_eq!(out.status.code(), Some(0), "{report:#}");
    let svc = |name: &str| {
        report["services"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["service"] == name)
            .unwrap_or_else(|| panic!("{name} in the report: {report:#}"))
            .clone()
    };
    for name in ["flask", "django", "fastapi"] {
        assert_eq!(
            svc(name)["health"]["state"],
            "SERVING",
            "{name}: {report:#}"
        );
    }
    // Django's Procfile `release:` (migrate) ran once, before its pod; the others declare none.
    let ran_release = |name: &str| {
        svc(name)["stages"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["stage"] == "release" && t["ok"] == true)
    };
    assert!(ran_release("django"), "{report:#}");
    assert!(!ran_release("flask") && !ran_release("fastapi"));
    let entry = |name: &str| svc(name)["entry"].clone();
    assert_eq!(
        entry("flask")["rule"],
        "framework:wsgi",
        "{}",
        entry("flask")
    );
    assert!(
        entry("flask")["argv"].to_string().contains("flask"),
        "{}",
        entry("flask")
    );
    assert_eq!(
        entry("django")["rule"],
        "platform:procfile",
        "{}",
        entry("django")
    );
    assert_eq!(
        entry("django")["python"]["version"],
        "3.14",
        "{}",
        entry("django")
    );
    assert!(
        entry("django")["build_steps"]
            .to_string()
            .contains("collectstatic"),
        "{}",
        entry("django")
    );
    assert_eq!(
        entry("fastapi")["rule"],
        "platform:render",
        "{}",
        entry("fastapi")
    );
    for name in ["flask", "fastapi"] {
        assert!(
            entry(name)["python"].is_null(),
            "{name} names no Python: the default: {}",
            entry(name)
        );
    }
    assert!(
        !stdout.contains("bootstrap recipe"),
        "nothing is built from Debian's mirror during the test"
    );

    // Each image runs the interpreter its entry asked for.
    for (name, want) in [
        ("django", "Python 3.14"),
        ("flask", "Python 3.11"),
        ("fastapi", "Python 3.11"),
    ] {
        let container = format!("{}-{name}", project.name);
        let got = docker(&["exec", &container, "python3", "--version"]);
        assert!(got.starts_with(want), "{name}: {got}");
    }
    let django_image = docker(&[
        "inspect",
        "-f",
        "{{index .Config.Labels \"iac.base-image\"}}",
        &format!("{}-django", project.name),
    ]);
    assert!(
        ["python:3.14-slim", py314_offline].contains(&django_image.trim()),
        "django's base image: {django_image}"
    );

    // 2. each app's own page through the mesh (from a peer, over mTLS between the sidecars).
    let (status, body) = project.get_through_mesh("fastapi", "flask");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("Hello, World!"), "{body}");
    let (status, body) = project.get_through_mesh("flask", "django");
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains("Getting Started with Python on Django") && body.contains("Python 3.14"),
        "{body}"
    );
    // The manifest storage rendered a hashed name: collectstatic ran at build.
    assert!(
        body.contains("/static/hello/style.") && !body.contains("/static/hello/style.css\""),
        "hashed static URL: {body}"
    );
    let (status, body) = project.get_through_mesh("django", "fastapi");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"message\":\"Hello World\""), "{body}");

    // 3. each app's own page at the `url` that `iac health --json` gives: from the host, through
    //    the sidecar's edge listener, no client certificate.
    let health = project.iac(&["health", "--json"]);
    assert!(health.status.success(), "iac health --json");
    let hj = json_of(&health);
    for (name, want) in [
        ("flask", "Hello, World!"),
        ("django", "Getting Started with Python on Django"),
        ("fastapi", "\"message\":\"Hello World\""),
    ] {
        let url = hj["services"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["running"]["service"] == name)
            .and_then(|s| s["url"].as_str())
            .unwrap_or_else(|| panic!("{name} has a url in `iac health --json`: {hj:#}"))
            .to_string();
        assert_eq!(
            svc(name)["url"],
            url.as_str(),
            "the deploy report's url for {name}"
        );
        let page = Command::new("curl")
            .args([
                "-s",
                "--noproxy",
                "*",
                "--max-time",
                "10",
                "-w",
                "\n%{http_code}",
                &url,
            ])
            .output()
            .expect("curl");
        let page = String::from_utf8_lossy(&page.stdout).into_owned();
        let (body, code) = page.rsplit_once('\n').unwrap_or(("", page.as_str()));
        assert_eq!(code, "200", "GET {url} ({name}) from the host: {body}");
        assert!(body.contains(want), "{name} at {url}: {body}");
    }

    // 4. destroy leaves nothing with the project label.
    assert!(project.iac(&["destroy"]).status.success());
    let label = format!("label=iac.project={}", project.name);
    assert!(
        docker(&["ps", "-aq", "--filter", &label]).trim().is_empty(),
        "containers left"
    );
    assert!(
        docker(&["network", "ls", "-q", "--filter", &label])
            .trim()
            .is_empty(),
        "networks left"
    );
    eprintln!("public apps end to end took {:?}", started.elapsed());
}
