//! hello-main on Docker Swarm, end to end with the real `iac` binary (`--provisioner swarm`), the
//! real engine as a single-node swarm, real Envoy (supervised by the agent inside each task) and
//! real mTLS. Fixture repos are made on the fly and deployed by `git+file://` slug:
//!
//! 1. `hello` and `scripted` deploy as Swarm services and are SERVING over mTLS through each
//!    task's published port; `iac health` agrees;
//! 2. `iac logs` shows hello's output (tasks found through the Swarm API);
//! 3. a redeploy with no change leaves every service version unchanged;
//! 4. a change to `scripted` rolls it over (health-gated, start-first); hello is untouched;
//! 5. a broken `hello` (exits 1) is rolled back by Swarm and reported so; the old one serves on;
//! 6. `iac destroy` leaves no service, network, config or secret with the project label;
//! 7. with `[swarm] registry` set to a registry the test starts (Debian's `docker-registry` on a
//!    free loopback port, with a login, killed at the end, also on panic): without
//!    `registry_username`/`registry_password` the push is refused and reported with the registry,
//!    the image and the engine's message; with them `scripted` is pushed there and runs by digest
//!    (`127.0.0.1:PORT/…@sha256:…`), the registry lists it, it is SERVING over mTLS;
//! 8. a no-op redeploy pushes nothing and changes no service version;
//! 9. a change of the spec but not of the image (`update_monitor`) updates the service without a
//!    push: the registry holds that digest already;
//! 10. `iac destroy` again leaves nothing behind.
//!
//! The swarm: `docker swarm init --advertise-addr 127.0.0.1` only when the engine is not in one,
//! and `docker swarm leave --force` at the end whatever happens (a Drop guard, also on panic);
//! tests that touch the swarm are serialised across processes by a lock file. Everything the test
//! creates carries its project label and is removed by it.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

mod e2e;
use e2e::{
    HELLO, SCRIPTED_CLI, docker, docker_status, fixture, git, json_of, remove_labelled,
    scripted_fixture,
};

/// A single-node swarm for the duration of the test: joined (init) when the engine was in none,
/// always left on drop. Holds an exclusive lock on a file so two test processes never share it.
struct SwarmGuard {
    _lock: File,
    /// This test joined the swarm (so the `docker_gwbridge` network it made is ours to remove).
    inited: bool,
}

impl SwarmGuard {
    fn start() -> SwarmGuard {
        let lock = e2e::swarm_lock();
        e2e::leave_leftover_test_swarm();
        let mut guard = SwarmGuard {
            _lock: lock,
            inited: false,
        };
        let state = docker(&["info", "--format", "{{.Swarm.LocalNodeState}}"]);
        if state.trim() == "inactive" {
            guard.inited = true;
            let (ok, text) = docker_status(&["swarm", "init", "--advertise-addr", "127.0.0.1"]);
            assert!(ok, "docker swarm init: {text}");
        }
        guard
    }
}

impl Drop for SwarmGuard {
    fn drop(&mut self) {
        let (ok, text) = docker_status(&["swarm", "leave", "--force"]);
        if !ok {
            eprintln!("docker swarm leave --force: {text}");
        }
        if self.inited {
            // `swarm init` created it; leaving keeps it. Refused (kept) while a container uses it.
            docker_status(&["network", "rm", "docker_gwbridge"]);
        }
    }
}

/// The registry's one login: [`REGISTRY_USER`] with this password.
const REGISTRY_PASSWORD: &str = "iac-registry-test";
const REGISTRY_USER: &str = "iac";
/// `REGISTRY_PASSWORD` as an htpasswd bcrypt entry (made with
/// `perl -e 'print crypt("iac-registry-test", q($2y$05$abcdefghijklmnopqrstuu))'`).
const REGISTRY_HTPASSWD: &str =
    "iac:$2y$05$abcdefghijklmnopqrstuuFhiUh6JpjxJoDocoBJbFOReBDljDEPy\n";

/// A registry (`docker-registry serve`) on a free loopback port with its storage in a temp dir,
/// requiring a login (htpasswd), killed on drop (also on panic). The engine allows plain HTTP to
/// 127.0.0.0/8 registries.
struct Registry {
    child: Child,
    addr: String,
    dir: tempfile::TempDir,
}

impl Registry {
    /// `None` when Debian's `docker-registry` is not installed (`make test-deps` installs it).
    fn start() -> Option<Registry> {
        let bin = Path::new("/usr/bin/docker-registry");
        if !bin.exists() {
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr = format!("127.0.0.1:{port}");
        let config = dir.path().join("config.yml");
        let htpasswd = dir.path().join("htpasswd");
        std::fs::write(&htpasswd, REGISTRY_HTPASSWD).unwrap();
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {addr}\nauth:\n  htpasswd:\n    realm: iac-test\n    path: {}\n",
                dir.path().join("data").display(),
                htpasswd.display()
            ),
        )
        .unwrap();
        let log = File::create(dir.path().join("registry.log")).unwrap();
        let mut cmd = Command::new(bin);
        cmd.arg("serve")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        // A test process killed outright runs no Drop: the registry then dies with it.
        // SAFETY: only prctl, async-signal-safe, runs between fork and exec.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == -1 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().expect("start docker-registry");
        let registry = Registry { child, addr, dir };
        let deadline = Instant::now() + Duration::from_secs(15);
        while registry.try_get("/v2/").is_none() {
            assert!(
                Instant::now() < deadline,
                "docker-registry did not answer on {} within 15 s: {}",
                registry.addr,
                std::fs::read_to_string(registry.dir.path().join("registry.log"))
                    .unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        Some(registry)
    }

    /// The body of `GET path` (with the login) when the registry answers 200.
    fn try_get(&self, path: &str) -> Option<String> {
        self.try_get_accepting(path, "*/*")
    }

    /// [`Registry::try_get`] with an `Accept` header (manifests come in the type asked for).
    fn try_get_accepting(&self, path: &str, accept: &str) -> Option<String> {
        use base64::Engine as _;
        let login = base64::engine::general_purpose::STANDARD
            .encode(format!("{REGISTRY_USER}:{REGISTRY_PASSWORD}"));
        let mut s = TcpStream::connect(&self.addr).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
        write!(
            s,
            "GET {path} HTTP/1.0\r\nHost: {}\r\nAuthorization: Basic {login}\r\nAccept: {accept}\r\n\r\n",
            self.addr
        )
        .ok()?;
        let mut text = String::new();
        s.read_to_string(&mut text).ok()?;
        let (head, body) = text.split_once("\r\n\r\n")?;
        let status = head.split_whitespace().nth(1)?;
        (status == "200").then(|| body.to_string())
    }

    fn get_json(&self, path: &str) -> serde_json::Value {
        let body = self
            .try_get(path)
            .unwrap_or_else(|| panic!("GET {path} from the registry at {}", self.addr));
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path}: {e}: {body}"))
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Project {
    name: String,
    workdir: tempfile::TempDir,
}

impl Drop for Project {
    fn drop(&mut self) {
        let label = format!("label=iac.project={}", self.name);
        for kind in ["service", "config", "secret"] {
            let ids = docker(&[kind, "ls", "-q", "--filter", &label]);
            for id in ids.split_whitespace() {
                docker_status(&[kind, "rm", id]);
            }
        }
        remove_labelled(&format!("iac.project={}", self.name));
    }
}

impl Project {
    fn iac(&self, args: &[&str]) -> Output {
        self.iac_with(args, &[])
    }

    /// [`Project::iac`] with more environment on top (`[swarm] registry`, …).
    fn iac_with(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        let mut all = vec![
            ("IAC_SWARM__UPDATE_MONITOR", "3s"),
            ("IAC_SWARM__CONVERGE_DEADLINE", "120s"),
        ];
        all.extend_from_slice(env);
        e2e::iac(
            self.workdir.path(),
            &self.name,
            args,
            &["--provisioner", "swarm"],
            &all,
        )
    }

    /// Service name → its Swarm version index.
    fn versions(&self) -> Vec<(String, String)> {
        let out = docker(&[
            "service",
            "ls",
            "--filter",
            &format!("label=iac.project={}", self.name),
            "--format",
            "{{.Name}}",
        ]);
        let mut v: Vec<(String, String)> = out
            .split_whitespace()
            .map(|name| {
                let index = docker(&["service", "inspect", "--format", "{{.Version.Index}}", name]);
                (name.to_string(), index.trim().to_string())
            })
            .collect();
        v.sort();
        v
    }

    fn left(&self, kind: &[&str]) -> String {
        let label = format!("label=iac.project={}", self.name);
        let mut args = kind.to_vec();
        args.extend(["-q", "--filter", &label]);
        docker(&args).trim().to_string()
    }

    /// No service, config, secret, network or container with the project label.
    fn assert_nothing_left(&self) {
        for kind in [
            &["service", "ls"][..],
            &["config", "ls"],
            &["secret", "ls"],
            &["network", "ls"],
            &["ps", "-a"],
        ] {
            assert!(self.left(kind).is_empty(), "{kind:?} left");
        }
    }
}

/// The messages of the events `iac --json` printed (one JSON object a line, before the report).
fn event_messages(out: &Output) -> Vec<String> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v["message"].as_str().map(String::from))
        .collect()
}

fn service(report: &serde_json::Value, name: &str) -> serde_json::Value {
    report["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["service"] == name)
        .unwrap_or_else(|| panic!("no {name} in {report:#}"))
        .clone()
}

fn health_of(project: &Project) -> std::collections::BTreeMap<String, String> {
    let health = project.iac(&["health", "--json"]);
    json_of(&health)["services"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["running"]["service"].as_str().unwrap().to_string(),
                s["health"]["state"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[test]
fn hello_main_on_a_single_node_swarm() {
    if !docker_status(&["info"]).0 {
        assert!(
            std::env::var_os("IAC_REQUIRE_DOCKER").is_none(),
            "IAC_REQUIRE_DOCKER is set but Docker is unreachable"
        );
        eprintln!("SKIPPED hello_main_on_a_single_node_swarm: no Docker engine");
        return;
    }
    let started = Instant::now();
    // Dropped in reverse order: the project's objects go first, then the swarm is left.
    let _swarm = SwarmGuard::start();
    let project = Project {
        name: format!("s{}", &uuid::Uuid::new_v4().simple().to_string()[..10]),
        workdir: tempfile::tempdir().unwrap(),
    };
    let repos = project.workdir.path().join("repos");
    let hello = fixture(&repos, "hello", &[("main.py", HELLO)]);
    let scripted = scripted_fixture(&repos, "scripted = \"scripted.cli:main\"");
    let file = project.workdir.path().join("repos.yaml");
    std::fs::write(
        &file,
        format!(
            "- git+file://{}#main\n- slug: git+file://{}#main\n  replicas: 2\n",
            hello.display(),
            scripted.display(),
        ),
    )
    .unwrap();
    let file = file.to_str().unwrap();

    // 1. deploy: both SERVING over mTLS through their tasks' published ports.
    let out = project.iac(&["deploy", "--file", file, "--json"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "first deploy: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let report = json_of(&out)["report"].clone();
    for name in ["hello", "scripted"] {
        let s = service(&report, name);
        assert_eq!(s["health"]["state"], "SERVING", "{name}: {s:#}");
        assert_eq!(s["action"], "create", "{name}: {s:#}");
    }
    let h = health_of(&project);
    assert_eq!(h["hello"], "SERVING");
    assert_eq!(h["scripted"], "SERVING");
    let tasks = docker(&[
        "service",
        "ps",
        "-q",
        "--filter",
        "desired-state=running",
        &format!("{}-scripted", project.name),
    ]);
    assert_eq!(tasks.split_whitespace().count(), 2, "replicas: 2");
    let net = docker(&[
        "network",
        "inspect",
        "--format",
        "{{.Driver}} {{.Attachable}} {{index .Labels \"iac.managed-by\"}}",
        &format!("iacnet-{}", project.name),
    ]);
    assert_eq!(net.trim(), "overlay true iac");
    assert!(
        !project.left(&["secret", "ls"]).is_empty(),
        "certificates as secrets"
    );
    assert!(
        !project.left(&["config", "ls"]).is_empty(),
        "envoy.yaml as configs"
    );

    // 1b. Envoy's key is out of the app's reach: the app's user cannot read it, and Envoy runs
    // chrooted in its own root with an empty environment (nothing of the app image's loader
    // configuration or the service's env applies to it).
    let task = docker(&[
        "ps",
        "-q",
        "--filter",
        &format!("label=com.docker.swarm.service.name={}-hello", project.name),
    ]);
    let task = task
        .split_whitespace()
        .next()
        .expect("a running hello task");
    let (ok, out) = docker_status(&[
        "exec",
        "-u",
        "app",
        task,
        "cat",
        "/iac-envoy/etc/iac/certs/key.pem",
    ]);
    assert!(!ok && out.contains("Permission denied"), "as app: {out}");
    let (ok, out) = docker_status(&[
        "exec",
        "-u",
        "101:101",
        task,
        "sh",
        "-c",
        "for p in /proc/[0-9]*; do case \"$(readlink $p/exe)\" in */usr/local/bin/envoy) \
         echo \"envoy root=$(readlink $p/root) environ=$(wc -c < $p/environ)\";; esac; done",
    ]);
    assert!(ok, "{out}");
    assert_eq!(out.trim(), "envoy root=/iac-envoy environ=0", "{out}");
    let (ok, out) = docker_status(&["exec", "-u", "app", task, "id", "-u"]);
    assert!(
        ok && out.trim() != "101" && out.trim() != "0",
        "app uid: {out}"
    );

    // 2. logs through the agent's StreamLogs, over mTLS, the task found through the Swarm API.
    let logs = project.iac(&["logs", "--service", "hello", "--tail", "50"]);
    assert!(logs.status.success());
    assert!(String::from_utf8_lossy(&logs.stdout).contains("hello-main says hi"));

    // 3. a no-op redeploy updates nothing.
    let before = project.versions();
    assert_eq!(before.len(), 2, "{before:?}");
    let out = project.iac(&["deploy", "--file", file, "--json"]);
    assert_eq!(out.status.code(), Some(0));
    let report = json_of(&out)["report"].clone();
    assert_eq!(service(&report, "hello")["action"], "unchanged");
    assert_eq!(
        project.versions(),
        before,
        "no change → same service versions"
    );

    // 4. change scripted: it rolls over, hello is untouched.
    std::fs::write(
        scripted.join("scripted/cli.py"),
        SCRIPTED_CLI.replace("VERSION", "v2"),
    )
    .unwrap();
    git(&scripted, &["commit", "-qam", "v2"]);
    let out = project.iac(&["deploy", "--file", file, "--json"]);
    assert_eq!(out.status.code(), Some(0));
    let report = json_of(&out)["report"].clone();
    assert_eq!(service(&report, "scripted")["action"], "replace");
    assert_eq!(service(&report, "scripted")["health"]["state"], "SERVING");
    let after = project.versions();
    assert_eq!(after[0], before[0], "hello untouched");
    assert_ne!(after[1], before[1], "scripted updated");
    let logs = project.iac(&["logs", "--service", "scripted", "--tail", "20"]);
    assert!(String::from_utf8_lossy(&logs.stdout).contains("scripted v2"));

    // 5. a broken hello: Swarm rolls it back, iac says so, the old one still serves.
    std::fs::write(
        hello.join("main.py"),
        "import sys\nprint('broken hello', flush=True)\nsys.exit(1)\n",
    )
    .unwrap();
    git(&hello, &["commit", "-qam", "broken"]);
    let out = project.iac(&["deploy", "--file", file, "--json"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "a rolled-back service fails the deploy"
    );
    let report = json_of(&out)["report"].clone();
    let h = service(&report, "hello");
    assert_eq!(h["action"], "rolled_back", "{h:#}");
    assert!(
        h["error"]
            .as_str()
            .unwrap_or_default()
            .contains("rolled back"),
        "{h:#}"
    );
    assert_eq!(service(&report, "scripted")["action"], "unchanged");
    assert_eq!(
        health_of(&project)["hello"],
        "SERVING",
        "the old hello serves on"
    );
    let logs = project.iac(&["logs", "--service", "hello", "--tail", "50"]);
    assert!(String::from_utf8_lossy(&logs.stdout).contains("hello-main says hi"));

    // 6. destroy leaves nothing with the project label; a second destroy is a no-op.
    assert!(project.iac(&["destroy"]).status.success());
    project.assert_nothing_left();
    assert!(project.iac(&["destroy"]).status.success());
    eprintln!("swarm end to end took {:?}", started.elapsed());

    // 7. [swarm] registry: pushed to a registry started here, run by digest.
    let Some(registry) = Registry::start() else {
        assert!(
            std::env::var_os("IAC_REQUIRE_DOCKER").is_none(),
            "IAC_REQUIRE_DOCKER is set but /usr/bin/docker-registry is missing (`make test-deps` installs Debian's docker-registry)"
        );
        eprintln!("SKIPPED the registry steps: /usr/bin/docker-registry is not installed");
        return;
    };
    let started = Instant::now();
    let only_scripted = project.workdir.path().join("scripted.yaml");
    // Issue 22: a secret in the service's env must reach its container and never the image
    // pushed to the registry.
    let secret = format!("db-password-{}", uuid::Uuid::new_v4().simple());
    std::fs::write(
        &only_scripted,
        format!(
            "- slug: git+file://{}#main\n  env:\n    DB_PASSWORD: {secret}\n",
            scripted.display()
        ),
    )
    .unwrap();
    let only_scripted = only_scripted.to_str().unwrap();
    let svc_name = format!("{}-scripted", project.name);
    // Without the login the push is refused: the error names the registry, the image and what
    // the engine said, and no service is made.
    let out = project.iac_with(
        &["deploy", "--file", only_scripted, "--json"],
        &[("IAC_SWARM__REGISTRY", registry.addr.as_str())],
    );
    assert_eq!(
        out.status.code(),
        Some(1),
        "a refused push fails the deploy"
    );
    let s = service(&json_of(&out)["report"], "scripted");
    let error = s["error"].as_str().unwrap_or_default();
    assert!(
        error.contains(&format!("to registry {}", registry.addr))
            && error.contains("scripted:pod-")
            && error.contains("no basic auth credentials"),
        "{s:#}"
    );
    assert!(project.left(&["service", "ls"]).is_empty());
    let reg_env = [
        ("IAC_SWARM__REGISTRY", registry.addr.as_str()),
        ("IAC_SWARM__REGISTRY_USERNAME", REGISTRY_USER),
        ("IAC_SWARM__REGISTRY_PASSWORD", REGISTRY_PASSWORD),
    ];
    let out = project.iac_with(&["deploy", "--file", only_scripted, "--json"], &reg_env);
    assert_eq!(out.status.code(), Some(0), "deploy with a registry");
    let report = json_of(&out)["report"].clone();
    let s = service(&report, "scripted");
    assert_eq!(s["action"], "create", "{s:#}");
    assert_eq!(s["health"]["state"], "SERVING", "{s:#}");
    let image = docker(&[
        "service",
        "inspect",
        "--format",
        "{{.Spec.TaskTemplate.ContainerSpec.Image}}",
        &svc_name,
    ])
    .trim()
    .to_string();
    let (repo, digest) = image.split_once("@sha256:").expect("an image by digest");
    let path = repo
        .strip_prefix(&format!("{}/", registry.addr))
        .unwrap_or_else(|| panic!("{image}: not from the registry {}", registry.addr));
    assert_eq!(digest.len(), 64, "{image}");
    let pushed = event_messages(&out);
    assert!(
        pushed.iter().any(|m| m == &format!("pushed {image}")),
        "{pushed:#?}"
    );
    assert_eq!(
        registry.get_json("/v2/_catalog")["repositories"],
        serde_json::json!([path])
    );
    let tags = registry.get_json(&format!("/v2/{path}/tags/list"));
    let tags: Vec<&str> = tags["tags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    assert!(
        tags.len() == 1 && tags[0].starts_with("pod-"),
        "one pod image pushed: {tags:?}"
    );
    // The pushed manifest and the image config it names (Env, Labels, history) hold no trace
    // of the secret; neither does the image on the engine. The service's container has it.
    let manifest = registry
        .try_get_accepting(
            &format!("/v2/{path}/manifests/{}", tags[0]),
            "application/vnd.docker.distribution.manifest.v2+json, application/vnd.oci.image.manifest.v1+json",
        )
        .expect("the pushed manifest");
    let config_digest =
        serde_json::from_str::<serde_json::Value>(&manifest).unwrap()["config"]["digest"]
            .as_str()
            .unwrap_or_else(|| panic!("a manifest naming its config: {manifest}"))
            .to_string();
    let config_blob = registry
        .try_get(&format!("/v2/{path}/blobs/{config_digest}"))
        .expect("the pushed image config");
    assert!(
        config_blob.contains("\"Env\"") && config_blob.contains("iac.build-key"),
        "read the image config: {config_blob}"
    );
    for (what, text) in [
        ("manifest", manifest.clone()),
        ("image config", config_blob.clone()),
        ("engine's image", docker(&["image", "inspect", &image])),
        (
            "engine's image history",
            docker(&["history", "--no-trunc", &image]),
        ),
    ] {
        assert!(
            !text.contains(&secret),
            "the {what} carries the service's env secret"
        );
    }
    let env = docker(&[
        "service",
        "inspect",
        "--format",
        "{{json .Spec.TaskTemplate.ContainerSpec.Env}}",
        &svc_name,
    ]);
    assert!(
        env.contains(&format!("DB_PASSWORD={secret}")),
        "the service's container gets its env: {env}"
    );
    let task = docker(&[
        "ps",
        "-q",
        "--filter",
        &format!("label=com.docker.swarm.service.name={svc_name}"),
    ]);
    let running = docker(&["inspect", "--format", "{{.Config.Image}}", task.trim()]);
    assert_eq!(running.trim(), image, "the task runs the registry's image");
    assert_eq!(health_of(&project)["scripted"], "SERVING");

    // 8. a no-op redeploy: nothing pushed, the service version unchanged.
    let before = project.versions();
    let out = project.iac_with(&["deploy", "--file", only_scripted, "--json"], &reg_env);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        service(&json_of(&out)["report"], "scripted")["action"],
        "unchanged"
    );
    let events = event_messages(&out);
    assert!(
        !events.iter().any(|m| m.starts_with("push")),
        "nothing pushed: {events:#?}"
    );
    assert_eq!(project.versions(), before, "same service version");

    // 9. a new spec with the same image: updated, not pushed (the registry holds that digest).
    let out = project.iac_with(
        &["deploy", "--file", only_scripted, "--json"],
        &[
            reg_env[0],
            reg_env[1],
            reg_env[2],
            ("IAC_SWARM__UPDATE_MONITOR", "2s"),
        ],
    );
    assert_eq!(out.status.code(), Some(0));
    let s = service(&json_of(&out)["report"], "scripted");
    assert_eq!(s["action"], "replace", "{s:#}");
    assert_eq!(s["health"]["state"], "SERVING", "{s:#}");
    let events = event_messages(&out);
    assert!(
        events
            .iter()
            .any(|m| m.contains(&format!("in registry {} already as {image}", registry.addr))),
        "{events:#?}"
    );
    assert!(
        !events.iter().any(|m| m.starts_with("push")),
        "nothing pushed: {events:#?}"
    );
    assert_ne!(project.versions(), before, "the service was updated");

    // 10. destroy leaves nothing on the engine (the registry keeps what was pushed).
    assert!(project.iac_with(&["destroy"], &reg_env).status.success());
    project.assert_nothing_left();
    eprintln!("swarm registry steps took {:?}", started.elapsed());
}
