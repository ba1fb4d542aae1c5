//! The `iac` binary's commands that need no container engine, run for real: `inspect --json`
//! (the documented shape, and the exit code when nothing matches), `refs` (text and JSON), `render` (entry, Envoy config
//! and certificates per service, key 0600), `config show` (secrets redacted) and `serve`'s refusal
//! of a TCP listener without an auth provider. Also: every command with
//! `OTEL_EXPORTER_OTLP_ENDPOINT` set (it used to panic), the strict configuration (unknown tables,
//! placeholders, the starter files), `--version`, and `iac bootstrap --help/--check` from an empty
//! directory with only `iac` and `iac-agent` on PATH.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

fn examples() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples")
}

fn iac(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_iac"));
    cmd.args(args).current_dir(dir).env("RUST_LOG", "warn");
    for var in [
        "SUPABASE_URL",
        "SUPABASE_SERVICE_ROLE_KEY",
        "SUPABASE_JWT_SECRET",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_PROTOCOL",
        "OTEL_TRACES_EXPORTER",
    ] {
        cmd.env_remove(var);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run iac")
}

#[test]
fn inspect_json_has_the_documented_shape() {
    let dir = tempfile::tempdir().unwrap();
    let greeter = examples().join("greeter");
    let out = iac(
        dir.path(),
        &["inspect", greeter.to_str().unwrap(), "--json"],
        &[],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["service"], "greeter");
    assert_eq!(v["language"], "python");
    assert!(v["source"]["commit"].is_null());
    assert!(
        v["source"]["digest"]
            .as_str()
            .unwrap()
            .starts_with("sha256:")
    );
    assert!(
        v["source"]["dir"]
            .as_str()
            .unwrap()
            .ends_with("examples/greeter")
    );
    assert_eq!(v["entry"]["rule"], "project.scripts");
    assert!(
        v["entry"]["argv"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a.as_str().unwrap().contains("greeter.cli"))
    );
    assert!(
        v["entry"]["why"]
            .as_str()
            .unwrap()
            .contains("pyproject.toml")
    );
    let keys: Vec<_> = v.as_object().unwrap().keys().cloned().collect();
    assert_eq!(keys, ["entry", "install", "language", "service", "source"]);
    // The install plan: greeter declares a build backend, so the project itself is installed.
    let install = &v["install"];
    assert_eq!(install["project_installed"], true, "{install}");
    assert!(
        install["project_why"]
            .as_str()
            .unwrap()
            .contains("build backend"),
        "{install}"
    );
    assert_eq!(install["local"][0], ".", "{install}");
}

fn git(dir: &Path, args: &[&str]) {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .env("GIT_AUTHOR_NAME", "t")
        .env("GIT_AUTHOR_EMAIL", "t@example.invalid")
        .env("GIT_COMMITTER_NAME", "t")
        .env("GIT_COMMITTER_EMAIL", "t@example.invalid")
        .output()
        .expect("git runs");
    assert!(out.status.success(), "git {args:?}");
}

#[test]
fn refs_lists_branches_tags_and_the_default_as_text_and_json() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    std::fs::create_dir(&repo).unwrap();
    git(&repo, &["init", "-q", "-b", "trunk"]);
    std::fs::write(repo.join("main.py"), "print(1)\n").unwrap();
    git(&repo, &["add", "-A"]);
    git(&repo, &["commit", "-q", "-m", "one"]);
    git(&repo, &["tag", "v1"]);
    git(&repo, &["branch", "feature/x"]);
    let slug = format!("git+file://{}", repo.display());
    let out = iac(dir.path(), &["refs", &slug, "--json"], &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        v,
        serde_json::json!({"branches": ["feature/x", "trunk"], "tags": ["v1"], "default": "trunk"})
    );
    let out = iac(dir.path(), &["refs", &slug], &[]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(
        text.starts_with("default   trunk\nbranches (2)\n"),
        "{text}"
    );
    assert!(
        text.contains("  feature/x\n  trunk\ntags (1)\n  v1\n"),
        "{text}"
    );
    // Not a repository: an error naming the slug.
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let bad = format!("git+file://{}", empty.display());
    let out = iac(dir.path(), &["refs", &bad], &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains(&bad) && err.contains("expected a git repository"),
        "{err}"
    );
}

#[test]
fn inspect_shows_the_source_and_the_runner_ups() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("fastapi-render");
    std::fs::create_dir(&repo).unwrap();
    std::fs::write(
        repo.join("render.yaml"),
        "services:\n  - type: web\n    name: api\n    buildCommand: pip install -r requirements.txt\n    startCommand: uvicorn main:app --host 0.0.0.0 --port $PORT\n    preDeployCommand: python migrate.py\n",
    )
    .unwrap();
    std::fs::write(
        repo.join("main.py"),
        "from fastapi import FastAPI\napp = FastAPI()\n",
    )
    .unwrap();
    std::fs::write(repo.join("requirements.txt"), "fastapi\nuvicorn\n").unwrap();
    std::fs::write(repo.join(".python-version"), "3.13\n").unwrap();
    let out = iac(
        dir.path(),
        &["inspect", repo.to_str().unwrap(), "--json"],
        &[],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let e = &v["entry"];
    assert_eq!(e["rule"], "platform:render");
    assert!(
        e["origin"].as_str().unwrap().contains("render.yaml line 5"),
        "{e}"
    );
    assert_eq!(e["port"], 8000);
    assert_eq!(e["python"]["version"], "3.13");
    let cands = e["candidates"].as_array().unwrap();
    assert!(cands.iter().any(|c| c["rule"] == "framework:asgi"), "{e}");
    assert_eq!(
        e["release"]["argv"],
        serde_json::json!(["python", "migrate.py"])
    );
    assert_eq!(
        e["release"]["origin"],
        "render.yaml line 6 (service `api` preDeployCommand)"
    );
    let out = iac(dir.path(), &["inspect", repo.to_str().unwrap()], &[]);
    let text = String::from_utf8_lossy(&out.stdout);
    // Groups named on the command line, as the repos file's `groups:` would: requirements.txt
    // has none, so asking is refused naming the group and the file.
    let out = iac(
        dir.path(),
        &["inspect", repo.to_str().unwrap(), "--groups", "Docs"],
        &[],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("group \"docs\"") && err.contains("requirements.txt"),
        "{err}"
    );
    for needle in [
        "from      render.yaml line 5",
        "python    3.13",
        "also      framework:asgi",
        "release   python migrate.py [render.yaml line 6 (service `api` preDeployCommand)]",
        "install   from requirements.txt (markers for CPython 3.13)",
        "project   not installed: no build backend",
        "deps      fastapi  [requirements.txt:1]",
        "          uvicorn  [requirements.txt:2]",
    ] {
        assert!(text.contains(needle), "{needle:?} in:\n{text}");
    }
}

/// A Procfile carrying terminal escape sequences (retitle the window, clear the screen) is shown
/// with them escaped, in the report and in an error quoting the Procfile; `--json` escapes
/// them as JSON does.
#[test]
fn inspect_escapes_terminal_sequences_from_the_repo() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("hostile");
    std::fs::create_dir(&repo).unwrap();
    std::fs::write(
        repo.join("Procfile"),
        "web: python app.py --title \x1b]0;pwned\x07 --clear \x1b[2J\n",
    )
    .unwrap();
    std::fs::write(repo.join("app.py"), "print('hi')\n").unwrap();
    let out = iac(dir.path(), &["inspect", repo.to_str().unwrap()], &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        !text.contains('\x1b') && !text.contains('\x07'),
        "raw control characters on stdout: {text:?}"
    );
    assert!(
        text.contains("--title \\u{1b}]0;pwned\\u{7} --clear \\u{1b}[2J"),
        "{text}"
    );
    let json = iac(
        dir.path(),
        &["inspect", repo.to_str().unwrap(), "--json"],
        &[],
    );
    assert!(!json.stdout.contains(&0x1b), "{json:?}");
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert!(
        v["entry"]["argv"].as_array().unwrap().iter().any(|a| a
            .as_str()
            .unwrap()
            .contains("\x1b]0;pwned\x07 --clear \x1b[2J")),
        "the JSON keeps the real value: {v}"
    );

    // An error that quotes the Procfile's line.
    std::fs::write(
        repo.join("Procfile"),
        "web: python app.py '\x1b]0;pwned\x07\x1b[2J\n",
    )
    .unwrap();
    let out = iac(dir.path(), &["inspect", repo.to_str().unwrap()], &[]);
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        !err.contains('\x1b') && !err.contains('\x07'),
        "raw control characters on stderr: {err:?}"
    );
    assert!(err.contains("\\u{1b}]0;pwned\\u{7}"), "{err}");
}

#[test]
fn inspect_without_an_entry_fails_listing_the_rules() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty-repo");
    std::fs::create_dir(&empty).unwrap();
    std::fs::write(empty.join("README.md"), "nothing to run").unwrap();
    let out = iac(dir.path(), &["inspect", empty.to_str().unwrap()], &[]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no entry point found"), "{err}");
    assert!(err.contains("rule 6"), "every rule is listed: {err}");
    let bad = iac(dir.path(), &["inspect", "svn:nope"], &[]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("svn:nope"));
}

#[test]
fn render_writes_entry_envoy_and_certs_per_service() {
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("out");
    let file = examples().join("repos.local.yaml");
    let out = iac(
        dir.path(),
        &[
            "render",
            "--file",
            file.to_str().unwrap(),
            "--out",
            out_dir.to_str().unwrap(),
        ],
        &[("IAC_IMAGES__AGENT_BINARY", "/bin/true")],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for svc in ["hello", "greeter"] {
        let d = out_dir.join(svc);
        let entry: serde_json::Value =
            serde_json::from_slice(&std::fs::read(d.join("entry.json")).unwrap()).unwrap();
        assert!(entry["entry"]["argv"].is_array());
        let envoy = std::fs::read_to_string(d.join("envoy.yaml")).unwrap();
        let peer = if svc == "hello" { "greeter" } else { "hello" };
        assert!(
            envoy.contains(&format!("peer_{peer}")),
            "{svc}'s Envoy routes to its peer {peer}"
        );
        assert!(envoy.contains("require_client_certificate: true"));
        for f in ["ca.pem", "cert.pem", "key.pem"] {
            assert!(d.join("certs").join(f).exists(), "{svc}/certs/{f}");
        }
        let mode = std::fs::metadata(d.join("certs/key.pem"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600);
    }
    // The dev CA was created under ./secrets of the working directory, key 0600 in a 0700 dir.
    let secrets = dir.path().join("secrets");
    assert_eq!(
        std::fs::metadata(&secrets).unwrap().permissions().mode() & 0o777,
        0o700
    );
    assert_eq!(
        std::fs::metadata(secrets.join("ca.key"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o600
    );
}

#[test]
fn config_show_redacts_secrets_and_serve_refuses_tcp_without_auth() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("iac.toml"), "parallelism = 3\n").unwrap();
    let out = iac(
        dir.path(),
        &["config", "show"],
        &[
            ("SUPABASE_URL", "http://127.0.0.1:9"),
            ("SUPABASE_SERVICE_ROLE_KEY", "sb_secret_do-not-print"),
            ("IAC_NETWORK", "meshnet"),
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("parallelism = 3"), "{text}");
    assert!(text.contains("network = \"meshnet\""), "{text}");
    assert!(text.contains("http://127.0.0.1:9"));
    assert!(!text.contains("do-not-print"), "secret leaked: {text}");

    let bad = iac(
        dir.path(),
        &["config", "show", "--config", "/nonexistent/iac.toml"],
        &[],
    );
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("/nonexistent/iac.toml"));

    let serve = iac(
        dir.path(),
        &[
            "serve",
            "--http",
            "127.0.0.1:0",
            "--uds",
            "/nonexistent/dir/x.sock",
        ],
        &[],
    );
    assert_eq!(serve.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&serve.stderr).contains("SUPABASE_URL"));
}

#[test]
fn render_kubernetes_writes_manifests_with_the_real_envoy_config_and_certs() {
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("out");
    let file = examples().join("repos.local.yaml");
    let run = || {
        iac(
            dir.path(),
            &[
                "render",
                "--target",
                "kubernetes",
                "--file",
                file.to_str().unwrap(),
                "--out",
                out_dir.to_str().unwrap(),
            ],
            &[("IAC_IMAGES__AGENT_BINARY", "/bin/true")],
        )
    };
    let out = run();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("kubectl apply -f"));
    let k8s = out_dir.join("kubernetes").join("demo");
    let mut names: Vec<String> = std::fs::read_dir(&k8s)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["00-namespace.yaml", "greeter.yaml", "hello.yaml"]);
    let hello = std::fs::read_to_string(k8s.join("hello.yaml")).unwrap();
    // The ConfigMap holds the real rendered Envoy config (routes to the peer), the Secret the
    // service's real key, and the file is owner-only.
    assert!(hello.contains("peer_greeter"), "{hello}");
    assert!(hello.contains("require_client_certificate: true"));
    let secret: serde_json::Value = hello
        .split("---\n")
        .map(|d| yaml_serde::from_str::<serde_json::Value>(d).unwrap())
        .find(|d| d["kind"] == "Secret")
        .expect("a Secret");
    use base64::Engine as _;
    let key = base64::engine::general_purpose::STANDARD
        .decode(secret["data"]["key.pem"].as_str().unwrap())
        .unwrap();
    assert!(
        String::from_utf8_lossy(&key).contains("PRIVATE KEY-----"),
        "the Secret holds the service's real private key"
    );
    assert_eq!(
        std::fs::metadata(k8s.join("hello.yaml"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o600
    );
    // A second render replaces the directory whole: a stale file does not survive.
    std::fs::write(k8s.join("stale.yaml"), "x").unwrap();
    assert!(run().status.success());
    assert!(!k8s.join("stale.yaml").exists());
}

/// A port nothing listens on (bound, then released).
fn closed_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn docker_ok() -> bool {
    Command::new("docker")
        .args(["version", "--format", "{{.Server.Version}}"])
        .output()
        .is_ok_and(|o| o.status.success())
}

fn assert_no_panic(what: &str, out: &Output) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !err.contains("panicked") && !err.contains("no reactor") && out.status.code() != Some(101),
        "{what} panicked: {err}"
    );
}

#[test]
fn every_command_works_with_an_otlp_endpoint_set() {
    let dir = tempfile::tempdir().unwrap();
    let repos = dir.path().join("repos.yaml");
    std::fs::write(
        &repos,
        format!(
            "project: otelcheck\nservices:\n  - path:{}\n",
            examples().join("hello").display()
        ),
    )
    .unwrap();
    let endpoint = format!("http://127.0.0.1:{}", closed_port());
    for protocol in ["grpc", "http/protobuf"] {
        let env = [
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", protocol),
            ("IAC_IMAGES__AGENT_BINARY", "/bin/true"),
            ("IAC_STATE_DIR", ".iac"),
        ];
        let show = iac(dir.path(), &["config", "show"], &env);
        assert_no_panic("config show", &show);
        assert!(
            show.status.success(),
            "{}",
            String::from_utf8_lossy(&show.stderr)
        );
        assert!(String::from_utf8_lossy(&show.stdout).contains(&endpoint));

        let greeter = examples().join("greeter");
        let inspect = iac(dir.path(), &["inspect", greeter.to_str().unwrap()], &env);
        assert_no_panic("inspect", &inspect);
        assert!(
            inspect.status.success(),
            "{}",
            String::from_utf8_lossy(&inspect.stderr)
        );

        let plan = iac(dir.path(), &["plan", "-f", repos.to_str().unwrap()], &env);
        assert_no_panic("plan", &plan);
        if docker_ok() {
            assert!(
                plan.status.success(),
                "{protocol}: {}",
                String::from_utf8_lossy(&plan.stderr)
            );
            assert!(String::from_utf8_lossy(&plan.stdout).contains("hello"));
        } else {
            assert!(
                std::env::var_os("IAC_REQUIRE_DOCKER").is_none(),
                "IAC_REQUIRE_DOCKER is set but Docker is unreachable"
            );
            eprintln!("plan: no Docker engine, only checked that it does not panic");
        }
    }
}

#[test]
fn unknown_tables_placeholders_and_renamed_keys_are_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("iac.toml"),
        "health_deadline_secs = 45\n[provision.docker]\ndocker_host = \"unix:///x\"\n[supabase]\nservice_role_key = \"<redacted>\"\n",
    )
    .unwrap();
    let out = iac(
        dir.path(),
        &["config", "show"],
        &[("IAC_DOCKER_HOST", "unix:///y")],
    );
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("unknown table [provision]") && err.contains("did you mean [docker]?"),
        "{err}"
    );
    assert!(err.contains("use `health_deadline` = \"45s\""), "{err}");
    assert!(
        err.contains("`service_role_key` in [supabase]") && err.contains("placeholder"),
        "{err}"
    );
    assert!(
        err.contains("IAC_DOCKER_HOST") && err.contains("IAC_DOCKER__DOCKER_HOST"),
        "{err}"
    );
    std::fs::remove_file(dir.path().join("iac.toml")).unwrap();
    // The redaction marker pasted into the environment is refused by name, too.
    let out = iac(
        dir.path(),
        &["config", "show"],
        &[("SUPABASE_SERVICE_ROLE_KEY", "[redacted]")],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("SUPABASE_SERVICE_ROLE_KEY"));
}

#[test]
fn the_starter_iac_toml_and_env_example_work_as_shipped_and_uncommented() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let toml = std::fs::read_to_string(root.join("templates/iac.toml")).unwrap();
    let env = std::fs::read_to_string(root.join(".env.example")).unwrap();
    // Every commented-out setting switched on, as a user editing the files would.
    let uncomment = |text: &str, is_setting: &dyn Fn(&str) -> bool| -> String {
        text.lines()
            .map(|l| match l.strip_prefix("# ") {
                Some(rest) if is_setting(rest) => rest.to_string(),
                _ => l.to_string(),
            })
            .collect::<Vec<_>>()
            .join("\n")
    };
    let toml_on = uncomment(&toml, &|r| {
        r.split_once(" = ").is_some_and(|(k, _)| !k.contains(' ')) || r.starts_with('[')
    });
    let env_on = uncomment(&env, &|r| {
        r.split_once('=').is_some_and(|(k, _)| {
            !k.is_empty()
                && k.chars()
                    .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
        })
    });
    for (toml, env) in [(&toml, &env), (&toml_on, &env_on)] {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("iac.toml"), toml).unwrap();
        std::fs::write(dir.path().join(".env"), env).unwrap();
        let out = iac(dir.path(), &["config", "show"], &[]);
        assert!(
            out.status.success(),
            "{}\n--- iac.toml\n{toml}\n--- .env\n{env}",
            String::from_utf8_lossy(&out.stderr)
        );
        let greeter = examples().join("greeter");
        let out = iac(dir.path(), &["inspect", greeter.to_str().unwrap()], &[]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert!(
        toml_on.contains("\nproject = \"shop\""),
        "the uncommenting did something"
    );
}

#[test]
fn version_names_the_agent_and_envoy_it_expects() {
    let dir = tempfile::tempdir().unwrap();
    let out = iac(dir.path(), &["--version"], &[]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.starts_with(&format!("iac {}", env!("CARGO_PKG_VERSION"))),
        "{text}"
    );
    assert!(
        text.contains(&format!("agent: iac-agent {}", env!("CARGO_PKG_VERSION"))),
        "{text}"
    );
    assert!(text.contains("envoy: 1.40.0"), "{text}");
}

/// An installation: a copy of `iac` and an `iac-agent` reporting `agent_version`, alone in a
/// directory that becomes the front of PATH.
fn install(agent_version: &str) -> tempfile::TempDir {
    let bin = tempfile::tempdir().unwrap();
    let iac_copy = bin.path().join("iac");
    if std::fs::hard_link(env!("CARGO_BIN_EXE_iac"), &iac_copy).is_err() {
        std::fs::copy(env!("CARGO_BIN_EXE_iac"), &iac_copy).unwrap();
    }
    let agent = bin.path().join("iac-agent");
    std::fs::write(
        &agent,
        format!("#!/bin/sh\n[ \"$1\" = --version ] && echo 'iac-agent {agent_version}'\n"),
    )
    .unwrap();
    std::fs::set_permissions(&agent, std::fs::Permissions::from_mode(0o755)).unwrap();
    bin
}

fn installed(bin: &Path, cwd: &Path, args: &[&str], cache: &Path) -> Output {
    Command::new(bin.join("iac"))
        .args(args)
        .current_dir(cwd)
        .env_clear()
        .env(
            "PATH",
            format!("{}:/usr/local/bin:/usr/bin:/bin", bin.display()),
        )
        .env("HOME", cwd)
        .env("XDG_CACHE_HOME", cache)
        .envs(
            std::env::var("DOCKER_HOST")
                .ok()
                .map(|h| ("DOCKER_HOST", h)),
        )
        .output()
        .expect("run the installed iac")
}

#[test]
fn bootstrap_runs_from_an_empty_directory_with_only_the_installed_binaries() {
    let bin = install(env!("CARGO_PKG_VERSION"));
    let empty = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let help = installed(
        bin.path(),
        empty.path(),
        &["bootstrap", "--help"],
        cache.path(),
    );
    assert!(help.status.success());
    let text = String::from_utf8_lossy(&help.stdout);
    assert!(
        text.contains("--check") && text.contains("--no-pull"),
        "{text}"
    );

    // A wheelhouse as the recipe leaves it.
    let wh = cache.path().join("iac/wheelhouse");
    std::fs::create_dir_all(&wh).unwrap();
    std::fs::write(wh.join(".iac-wheelhouse"), "stamp\n").unwrap();
    std::fs::write(wh.join("opentelemetry_api-1.0-py3-none-any.whl"), "").unwrap();

    let check = installed(
        bin.path(),
        empty.path(),
        &["bootstrap", "--check"],
        cache.path(),
    );
    let out = String::from_utf8_lossy(&check.stdout);
    let err = String::from_utf8_lossy(&check.stderr);
    assert_no_panic("bootstrap --check", &check);
    let agent = bin.path().join("iac-agent");
    assert!(
        out.contains(&format!("{}", agent.display()))
            && out.contains(&format!(
                "iac-agent {} (expected)",
                env!("CARGO_PKG_VERSION")
            )),
        "the agent on PATH is found and its version checked: {out}{err}"
    );
    assert_eq!(
        std::fs::read_dir(empty.path()).unwrap().count(),
        0,
        "--check writes nothing"
    );
    if docker_ok() {
        assert!(
            out.contains("iac/python:3.11-bookworm") && out.contains("iac/envoy:1.40.0"),
            "{out}"
        );
        assert!(out.contains(&format!("wheels   {}", wh.display())), "{out}");
        // The other Pythons are listed: present, or built when a deploy first needs them.
        for tag in ["iac/python:3.13-trixie", "iac/python:3.14-sid"] {
            let line = out.lines().find(|l| l.contains(tag)).unwrap_or_default();
            assert!(
                line.contains("present") || line.contains("built on demand"),
                "{tag}: {out}"
            );
        }
        // The shared engine has both images (scripts/bootstrap-images.sh made them).
        assert_eq!(check.status.code(), Some(0), "{out}{err}");
        assert!(out.contains("everything is present"), "{out}");
    } else {
        assert!(
            std::env::var_os("IAC_REQUIRE_DOCKER").is_none(),
            "IAC_REQUIRE_DOCKER is set but Docker is unreachable"
        );
        assert_eq!(check.status.code(), Some(1), "{out}{err}");
    }

    // A Python iac has no base image for is refused, naming what is configured.
    let bad = installed(
        bin.path(),
        empty.path(),
        &["bootstrap", "--check", "--python", "3.12"],
        cache.path(),
    );
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(!bad.status.success(), "{err}");
    assert!(
        err.contains("--python 3.12") && err.contains("3.11, 3.13, 3.14"),
        "{err}"
    );

    // An agent of another version is reported, and --check says there is work to do.
    let stale = install("0.0.1");
    let check = installed(
        stale.path(),
        empty.path(),
        &["bootstrap", "--check"],
        cache.path(),
    );
    let out = String::from_utf8_lossy(&check.stdout);
    assert_eq!(check.status.code(), Some(1), "{out}");
    assert!(out.contains("mismatch") && out.contains("0.0.1"), "{out}");
}

/// Kubernetes manifests cannot run a release command before the new pods: the render refuses a
/// service that declares one, naming it, the command and where it is declared.
#[test]
fn render_kubernetes_refuses_a_release_command() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("migrating");
    std::fs::create_dir(&repo).unwrap();
    std::fs::write(
        repo.join("Procfile"),
        "web: python app.py\nrelease: python manage.py migrate\n",
    )
    .unwrap();
    std::fs::write(repo.join("app.py"), "print('hi')\n").unwrap();
    let file = dir.path().join("repos.yaml");
    std::fs::write(&file, format!("- path:{}\n", repo.display())).unwrap();
    let out_dir = dir.path().join("out");
    let out = iac(
        dir.path(),
        &[
            "render",
            "--target",
            "kubernetes",
            "--file",
            file.to_str().unwrap(),
            "--out",
            out_dir.to_str().unwrap(),
        ],
        &[("IAC_IMAGES__AGENT_BINARY", "/bin/true")],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("service migrating declares the release command `python manage.py migrate` (Procfile line 2 (release))"),
        "{err}"
    );
    assert!(!out_dir.join("kubernetes").exists(), "nothing written");
}
