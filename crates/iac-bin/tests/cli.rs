//! The `iac` binary's commands that need no container engine, run for real: `inspect --json`
//! (the documented shape, and the exit code when nothing matches), `render` (entry, Envoy config
//! and certificates per service, key 0600), `config show` (secrets redacted) and `serve`'s refusal
//! of a TCP listener without an auth provider.

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
    assert_eq!(keys, ["entry", "language", "service", "source"]);
}

#[test]
fn inspect_shows_the_source_and_the_runner_ups() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("fastapi-render");
    std::fs::create_dir(&repo).unwrap();
    std::fs::write(
        repo.join("render.yaml"),
        "services:\n  - type: web\n    name: api\n    buildCommand: pip install -r requirements.txt\n    startCommand: uvicorn main:app --host 0.0.0.0 --port $PORT\n",
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
    let out = iac(dir.path(), &["inspect", repo.to_str().unwrap()], &[]);
    let text = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "from      render.yaml line 5",
        "python    3.13",
        "also      framework:asgi",
    ] {
        assert!(text.contains(needle), "{needle:?} in:\n{text}");
    }
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
