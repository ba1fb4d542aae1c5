//! Shared scaffolding of the end-to-end tests (`hello_main`, `public_apps`, `swarm_main`,
//! `swarm_multinode`): the docker CLI, fixture git repositories made on the fly, the static agent
//! every image gets, the JSON line `iac --json` prints last, removing everything labelled with a
//! test's project, the lock on the host's swarm, a plain HTTP GET, and ([`nodes`]) a swarm of
//! several nodes on this machine.
#![allow(dead_code)]

pub mod nodes;

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

/// `docker ARGS`: its stdout (whatever the exit status; callers that care use [`docker_status`]).
pub fn docker(args: &[&str]) -> String {
    let out = Command::new("docker")
        .args(args)
        .output()
        .expect("docker CLI");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `docker ARGS`: whether it succeeded, and its stdout followed by its stderr.
pub fn docker_status(args: &[&str]) -> (bool, String) {
    let out = Command::new("docker")
        .args(args)
        .output()
        .expect("docker CLI");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

/// Whether a Docker engine answers.
pub fn docker_ok() -> bool {
    Command::new("docker")
        .arg("info")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// The lock every test that uses the host engine's swarm holds for as long as it does (an exclusive
/// `flock` on `$TMPDIR/iac-swarm-test.lock`; a person experimenting by hand takes it with
/// `flock /tmp/iac-swarm-test.lock …`).
pub fn swarm_lock() -> File {
    let lock = File::create(std::env::temp_dir().join("iac-swarm-test.lock")).unwrap();
    lock.lock().expect("lock the swarm test lock file");
    lock
}

/// Leaves the engine's swarm when a multi-node test made it and was killed before it could leave
/// (its manager node carries an `iac.test` label, see [`nodes`]): drained and with dead workers, it
/// would run nothing. Call with [`swarm_lock`] held, so no running test uses it.
pub fn leave_leftover_test_swarm() {
    let label = docker(&[
        "node",
        "inspect",
        "self",
        "--format",
        "{{index .Spec.Labels \"iac.test\"}}",
    ]);
    if !label.trim().is_empty() {
        eprintln!(
            "leaving the swarm a killed test run (iac.test={}) left behind",
            label.trim()
        );
        let (ok, text) = docker_status(&["swarm", "leave", "--force"]);
        assert!(ok, "docker swarm leave --force: {text}");
        docker_status(&["network", "rm", "docker_gwbridge"]);
    }
}

/// `GET path` over plain HTTP/1.0 to `addr` (`HOST:PORT`): the whole response, or `None` when the
/// connection fails or nothing arrives within 5 s.
pub fn http_get(addr: &str, path: &str) -> Option<String> {
    let sock: std::net::SocketAddr = addr.parse().ok()?;
    let mut s = std::net::TcpStream::connect_timeout(&sock, Duration::from_secs(5)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    (!out.is_empty()).then_some(out)
}

/// The HTTP status code `curl` gets for `GET url` from the host (no proxy, 10 s at most);
/// `000` when nothing answered.
pub fn curl_code(url: &str) -> String {
    let out = Command::new("curl")
        .args([
            "-s",
            "--noproxy",
            "*",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--max-time",
            "10",
            url,
        ])
        .output()
        .expect("curl");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Removes the containers, networks and images carrying `label` (`KEY=VALUE`). Images go with
/// `--no-prune`: the unlabelled shared layers (base + OTel SDK + agent) stay as the build cache
/// every later build reuses.
pub fn remove_labelled(label: &str) {
    let filter = format!("label={label}");
    for id in docker(&["ps", "-aq", "--filter", &filter]).split_whitespace() {
        docker(&["rm", "-f", id]);
    }
    for net in docker(&["network", "ls", "-q", "--filter", &filter]).split_whitespace() {
        docker(&["network", "rm", net]);
    }
    for img in docker(&["images", "-aq", "--filter", &filter]).split_whitespace() {
        docker(&["rmi", "-f", "--no-prune", img]);
    }
}

/// Whether an end-to-end test must be skipped for want of a Docker engine: says so loudly, and
/// fails instead when `IAC_REQUIRE_DOCKER` is set (CI sets it).
pub fn skip_without_docker(test: &str) -> bool {
    if docker_ok() {
        return false;
    }
    assert!(
        std::env::var_os("IAC_REQUIRE_DOCKER").is_none(),
        "IAC_REQUIRE_DOCKER is set but Docker is unreachable"
    );
    eprintln!("SKIPPED {test}: no Docker engine");
    true
}

/// A test's project: a random name (`t` + 10 hex digits), a work directory for its state and
/// secrets, and — on drop, even after a panic — everything labelled with its name removed.
pub struct Project {
    pub name: String,
    pub workdir: tempfile::TempDir,
}

impl Project {
    pub fn new() -> Project {
        Project {
            name: format!("t{}", &uuid::Uuid::new_v4().simple().to_string()[..10]),
            workdir: tempfile::tempdir().unwrap(),
        }
    }

    /// [`iac`] for this project.
    pub fn iac(&self, args: &[&str]) -> Output {
        self.iac_env(args, &[])
    }

    /// [`iac`] for this project, with `env` on top.
    pub fn iac_env(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        iac(self.workdir.path(), &self.name, args, &[], env)
    }

    /// The project's containers (every state), as (name, id), sorted by name.
    pub fn container_ids(&self) -> Vec<(String, String)> {
        let out = docker(&[
            "ps",
            "-a",
            "--filter",
            &format!("label=iac.project={}", self.name),
            "--format",
            "{{.Names}} {{.ID}}",
        ]);
        let mut v: Vec<(String, String)> = out
            .lines()
            .filter_map(|l| {
                l.split_once(' ')
                    .map(|(a, b)| (a.to_string(), b.to_string()))
            })
            .collect();
        v.sort();
        v
    }
}

impl Drop for Project {
    fn drop(&mut self) {
        remove_labelled(&format!("iac.project={}", self.name));
    }
}

/// `git ARGS` in `dir` with a fixed identity and `main` as the default branch; panics on failure.
pub fn git(dir: &Path, args: &[&str]) {
    let out = Command::new("git")
        .args([
            "-c",
            "user.email=t@example.invalid",
            "-c",
            "user.name=test",
            "-c",
            "init.defaultBranch=main",
        ])
        .args(args)
        .current_dir(dir)
        .output()
        .expect("git");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Commits everything in `dir` as the first commit of a new repository.
pub fn init_and_commit(dir: &Path, message: &str) {
    git(dir, &["init", "-q"]);
    git(dir, &["add", "-A"]);
    git(dir, &["commit", "-qm", message]);
}

/// A git repository `root/name` holding `files` (path, contents), committed.
pub fn fixture(root: &Path, name: &str, files: &[(&str, &str)]) -> PathBuf {
    let dir = root.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    for (path, body) in files {
        let p = dir.join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, body).unwrap();
    }
    init_and_commit(&dir, "fixture");
    dir
}

/// `tests/fixtures/<set>/<name>` copied (modes kept: boot scripts stay executable) into a new git
/// repository `root/name`, committed as published.
pub fn fixture_repo(root: &Path, set: &str, name: &str) -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(set)
        .join(name);
    let dir = root.join(name);
    copy_tree(&src, &dir);
    init_and_commit(&dir, "as published");
    dir
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_tree(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), &target).unwrap();
        }
    }
}

/// Where `scripts/test-wheels.sh` (`make test-deps`) put the fixtures' wheels:
/// `$IAC_TEST_WHEELS`, else `${XDG_CACHE_HOME:-$HOME/.cache}/iac/test-wheels`.
pub fn test_wheels_dir() -> PathBuf {
    std::env::var_os("IAC_TEST_WHEELS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let cache = std::env::var_os("XDG_CACHE_HOME")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap()).join(".cache"));
            cache.join("iac/test-wheels")
        })
}

/// The static agent every image gets: `$IAC_AGENT_BIN`, else what `scripts/build-agent.sh` builds
/// (a cargo no-op when it is up to date).
pub fn static_agent() -> String {
    if let Ok(p) = std::env::var("IAC_AGENT_BIN") {
        return p;
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let out = Command::new("bash")
        .arg(root.join("scripts/build-agent.sh"))
        .output()
        .expect("run scripts/build-agent.sh");
    assert!(
        out.status.success(),
        "scripts/build-agent.sh failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Runs the `iac` binary under test for `project` (`--project` and `extra_args` after `args`), with
/// its state and secrets under `workdir`, the static agent, and `env` on top; prints the command,
/// its status, the last 200 lines of its stdout and its stderr (shown when the test fails).
pub fn iac(
    workdir: &Path,
    project: &str,
    args: &[&str],
    extra_args: &[&str],
    env: &[(&str, &str)],
) -> Output {
    static AGENT: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let agent = AGENT.get_or_init(static_agent);
    let out = Command::new(env!("CARGO_BIN_EXE_iac"))
        .env("IAC_IMAGES__AGENT_BINARY", agent)
        .args(args)
        .args(["--project", project])
        .args(extra_args)
        .current_dir(workdir)
        .env("IAC_STATE_DIR", workdir.join(".iac"))
        .env("IAC_PKI__SECRETS_DIR", workdir.join("secrets"))
        .env("RUST_LOG", "warn")
        .envs(env.iter().copied())
        .output()
        .expect("run iac");
    eprintln!(
        "$ iac {} → {}\n--- stdout (last 200 lines)\n{}\n--- stderr\n{}",
        args.join(" "),
        out.status,
        tail(&String::from_utf8_lossy(&out.stdout), 200),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The last `n` lines of `text`.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// The last JSON object line `iac … --json` printed on stdout.
pub fn json_of(out: &Output) -> serde_json::Value {
    let text = String::from_utf8_lossy(&out.stdout);
    let last = text
        .lines()
        .rev()
        .find(|l| l.trim_start().starts_with('{'))
        .expect("a JSON line on stdout");
    serde_json::from_str(last).expect("valid JSON")
}

/// `hello`: a root main.py that prints a line and serves `$PORT` until SIGTERM.
pub const HELLO: &str = r#"
import http.server, os, signal, sys
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
print("hello-main says hi", flush=True)
http.server.ThreadingHTTPServer(("0.0.0.0", int(os.environ["PORT"])), http.server.SimpleHTTPRequestHandler).serve_forever()
"#;

/// The `scripted` fixture repo under `root`: a setuptools project whose `[project.scripts]`
/// table holds `scripts` (TOML lines), with `scripted/cli.py` = [`SCRIPTED_CLI`] at v1.
pub fn scripted_fixture(root: &Path, scripts: &str) -> PathBuf {
    let pyproject = format!(
        "[project]\nname = \"scripted\"\nversion = \"0.1.0\"\n\n[project.scripts]\n{scripts}\n\n[build-system]\nrequires = [\"setuptools>=61\"]\nbuild-backend = \"setuptools.build_meta\"\n"
    );
    fixture(
        root,
        "scripted",
        &[
            ("pyproject.toml", &pyproject),
            ("scripted/__init__.py", ""),
            ("scripted/cli.py", &SCRIPTED_CLI.replace("VERSION", "v1")),
        ],
    )
}

/// `scripted`: a CLI module whose `[project.scripts]` entry prints `scripted VERSION` (the test
/// replaces VERSION) and stays up; `other` is a second function that is never the default.
pub const SCRIPTED_CLI: &str = r#"
import signal, sys, time
def main():
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print("scripted VERSION", flush=True)
    while True:
        time.sleep(1)
def other():
    print("never the default")
"#;
