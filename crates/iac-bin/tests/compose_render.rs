//! The eject path on the real engine: `iac render --target compose` output runs under
//! docker-compose 1.29 and `iac health` proves it.
//!
//! Two fixture services (`examples/hello` as `hello`, exposed; and `greeter`, a copy with an
//! environment value holding a `$`) are deployed by iac first — that builds their images and
//! gives the docker provisioner's containers to compare with — then destroyed. The project is
//! rendered as Compose, brought up with `docker-compose -p <project> up -d`, and then:
//! * `iac health --project <project>` finds both pods (the containers carry iac's names and
//!   labels) and proves each SERVING over mTLS through its Envoy;
//! * every container matches the one the docker provisioner made for the same spec: image,
//!   command, environment (the `$` arrives literally), capabilities, `no-new-privileges`, pids
//!   and memory limits (no swap), restart policy, stop timeout, iac's labels, the namespace
//!   sharing (the app in `container:` mode of its sidecar) and the mesh port published on
//!   loopback;
//! * `docker-compose down` leaves no container of the project.
//!
//! Needs docker-compose and the base images from `make test-deps`; skipped loudly without Docker
//! (fails instead with IAC_REQUIRE_DOCKER=1). Everything it creates carries the project's label
//! and is removed by label on drop, even on panic.

use std::path::Path;
use std::process::{Command, Output};

use serde_json::Value;

mod e2e;
use e2e::{Project, docker, json_of};

/// `docker inspect` of the project's container of `service` in `role` (app or envoy).
fn inspect(project: &str, service: &str, role: &str) -> Value {
    let ids = docker(&[
        "ps",
        "-aq",
        "--filter",
        &format!("label=iac.project={project}"),
        "--filter",
        &format!("label=iac.service={service}"),
        "--filter",
        &format!("label=iac.role={role}"),
    ]);
    let ids: Vec<&str> = ids.split_whitespace().collect();
    assert_eq!(ids.len(), 1, "one {role} container of {service}: {ids:?}");
    let v: Value = serde_json::from_str(&docker(&["inspect", ids[0]])).unwrap();
    v[0].clone()
}

/// What must be equal between iac's container and Compose's for the same spec.
fn shape(c: &Value) -> Value {
    let h = &c["HostConfig"];
    let mut env: Vec<String> = c["Config"]["Env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    env.sort();
    let labels: serde_json::Map<String, Value> = c["Config"]["Labels"]
        .as_object()
        .unwrap()
        .iter()
        .filter(|(k, _)| k.starts_with("iac."))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let mode = h["NetworkMode"].as_str().unwrap();
    let published: Vec<(String, String)> = h["PortBindings"]
        .as_object()
        .map(|m| {
            let mut v: Vec<_> = m
                .iter()
                .map(|(port, b)| (port.clone(), b[0]["HostIp"].as_str().unwrap().to_string()))
                .collect();
            v.sort();
            v
        })
        .unwrap_or_default();
    serde_json::json!({
        "image": c["Config"]["Image"],
        "cmd": c["Config"]["Cmd"],
        "env": env,
        "labels": labels,
        "cap_add": sorted(&h["CapAdd"]),
        "cap_drop": sorted(&h["CapDrop"]),
        "security_opt": h["SecurityOpt"],
        "pids": h["PidsLimit"],
        "memory": h["Memory"],
        "memory_swap": h["MemorySwap"],
        "restart": h["RestartPolicy"]["Name"],
        "stop_timeout": c["Config"]["StopTimeout"],
        "shares_a_namespace": mode.starts_with("container:"),
        "published": published,
    })
}

fn sorted(v: &Value) -> Value {
    let mut items: Vec<String> = v
        .as_array()
        .map(|a| a.iter().map(|x| x.as_str().unwrap().to_string()).collect())
        .unwrap_or_default();
    items.sort();
    serde_json::json!(items)
}

fn compose(dir: &Path, project: &str, args: &[&str]) -> Output {
    let out = Command::new("docker-compose")
        .args(["-p", project, "-f"])
        .arg(dir.join("compose.yaml"))
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run docker-compose");
    eprintln!(
        "$ docker-compose {} → {}\n{}{}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Runs `docker-compose down` on drop (the project's label sweep follows in [`Project`]'s drop).
struct ComposeUp<'a> {
    dir: &'a Path,
    project: &'a str,
}

impl Drop for ComposeUp<'_> {
    fn drop(&mut self) {
        compose(self.dir, self.project, &["down", "--timeout", "5"]);
    }
}

#[test]
fn compose_render_runs_under_docker_compose_and_passes_iac_health() {
    if e2e::skip_without_docker("compose_render_runs_under_docker_compose_and_passes_iac_health") {
        return;
    }
    let has_compose = Command::new("docker-compose")
        .arg("version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_compose {
        assert!(
            std::env::var_os("IAC_REQUIRE_DOCKER").is_none(),
            "IAC_REQUIRE_DOCKER is set but docker-compose is missing (apt-get install docker-compose)"
        );
        eprintln!("SKIPPED: no docker-compose");
        return;
    }
    let project = Project::new();
    let p = project.name.as_str();
    let work = project.workdir.path();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let src = work.join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::copy(root.join("examples/hello/main.py"), {
        std::fs::create_dir_all(src.join("hello")).unwrap();
        src.join("hello/main.py")
    })
    .unwrap();
    let file = work.join("repos.yaml");
    std::fs::write(
        &file,
        "- slug: path:src/hello\n  name: hello\n  expose: true\n  env: {PORT: 8080}\n\
         - slug: path:src/hello\n  name: greeter\n  env: {PORT: 8081, GREETING: \"costs $5 ${HOME}\"}\n",
    )
    .unwrap();
    let file = file.to_str().unwrap();

    // iac builds the images and runs the pods once: the reference shapes.
    let out = project.iac(&["deploy", "--file", file, "--json"]);
    assert!(out.status.success(), "iac deploy: {:#}", json_of(&out));
    let mut reference = Vec::new();
    for svc in ["hello", "greeter"] {
        for role in ["app", "envoy"] {
            reference.push((svc, role, shape(&inspect(p, svc, role))));
        }
    }
    let out = project.iac(&["destroy"]);
    assert!(out.status.success(), "iac destroy");
    assert!(
        project.container_ids().is_empty(),
        "destroy left containers"
    );

    // The render.
    let out_dir = work.join("out");
    let out = project.iac(&[
        "render",
        "--target",
        "compose",
        "--file",
        file,
        "--out",
        out_dir.to_str().unwrap(),
        "--json",
    ]);
    assert!(out.status.success(), "iac render --target compose");
    let dir = out_dir.join("compose").join(p);
    assert_eq!(
        json_of(&out)["compose_file"],
        dir.join("compose.yaml").to_str().unwrap()
    );
    // A move of the directory keeps it working: every mount is relative to it.
    let moved = work.join("ejected");
    std::fs::rename(&dir, &moved).unwrap();
    let dir = moved;
    let config = compose(&dir, p, &["config", "-q"]);
    assert!(config.status.success(), "docker-compose accepts the file");

    let up = compose(&dir, p, &["up", "-d"]);
    let _down = ComposeUp {
        dir: &dir,
        project: p,
    };
    assert!(up.status.success(), "docker-compose up -d");

    let out = project.iac(&["health", "--wait", "90s", "--json"]);
    let health = json_of(&out);
    assert!(out.status.success(), "iac health: {health:#}");
    let mut states: Vec<(String, String)> = health["services"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["running"]["service"].as_str().unwrap().to_string(),
                s["health"]["state"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    states.sort();
    assert_eq!(
        states,
        [
            ("greeter".to_string(), "SERVING".to_string()),
            ("hello".to_string(), "SERVING".to_string())
        ],
        "{health:#}"
    );

    for (svc, role, want) in &reference {
        let got = inspect(p, svc, role);
        assert_eq!(
            got["Config"]["Labels"]["com.docker.compose.project"], *p,
            "{svc} {role} is Compose's"
        );
        assert_eq!(
            &shape(&got),
            want,
            "{svc} {role}: Compose's container differs from iac's"
        );
    }
    let env = docker(&["exec", &format!("{p}-greeter"), "printenv", "GREETING"]);
    assert_eq!(env.trim(), "costs $5 ${HOME}", "`$` arrives literally");

    let down = compose(&dir, p, &["down", "--timeout", "5"]);
    assert!(down.status.success(), "docker-compose down");
    assert!(
        project.container_ids().is_empty(),
        "docker-compose down left containers"
    );
}
