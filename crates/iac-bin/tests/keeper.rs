//! The project keeper on the real engine (issue 18, reboot ordering): a pod whose app the
//! engine tried to start before its sidecar — what moby's restore after an engine restart or a
//! reboot does, in no order and never again — comes back SERVING with no person, because the
//! keeper (`<project>_iac-keeper`, `iac-agent --keeper` from an image holding the agent alone)
//! starts the app once the sidecar runs. Also: the keeper is created once per project and left
//! alone by a redeploy, leaves an app a person stopped alone, and goes with `iac destroy`.
//!
//! The recovery time is printed (`recovered: …`) for docs/reliability.md.

use std::time::{Duration, Instant};

mod e2e;
use e2e::{HELLO, Project, curl_code, docker, docker_status, fixture, json_of};

fn state(name: &str) -> String {
    docker(&["inspect", "-f", "{{.State.Status}}", name])
        .trim()
        .to_string()
}

#[test]
fn the_keeper_brings_back_a_pod_restored_in_the_worst_order() {
    if e2e::skip_without_docker("the_keeper_brings_back_a_pod_restored_in_the_worst_order") {
        return;
    }
    let p = Project::new();
    let repos = p.workdir.path().join("repos");
    let hello = fixture(&repos, "hello", &[("main.py", HELLO)]);
    let file = p.workdir.path().join("repos.yaml");
    std::fs::write(
        &file,
        format!(
            "- slug: git+file://{}#main\n  expose: true\n",
            hello.display()
        ),
    )
    .unwrap();
    let file = file.to_str().unwrap();
    let out = p.iac(&["deploy", "--file", file, "--json"]);
    assert_eq!(out.status.code(), Some(0), "{:#}", json_of(&out));
    let url = json_of(&out)["report"]["services"][0]["url"]
        .as_str()
        .expect("hello has a url")
        .to_string();
    assert_eq!(curl_code(&url), "200");

    let app = format!("{}-hello", p.name);
    let sidecar = format!("{}-hello-envoy", p.name);
    let keeper = format!("{}_iac-keeper", p.name);

    // The keeper: labelled, confined, restarted by the engine, from an image of the agent alone.
    let inspect = |what: &str| docker(&["inspect", "-f", what, &keeper]).trim().to_string();
    assert_eq!(inspect("{{.State.Status}}"), "running");
    assert_eq!(inspect("{{index .Config.Labels \"iac.role\"}}"), "keeper");
    assert_eq!(
        inspect("{{index .Config.Labels \"iac.managed-by\"}}"),
        "iac"
    );
    assert_eq!(
        inspect("{{.HostConfig.RestartPolicy.Name}}"),
        "unless-stopped"
    );
    assert_eq!(inspect("{{.HostConfig.NetworkMode}}"), "none");
    assert_eq!(inspect("{{.HostConfig.CapDrop}}"), "[ALL]");
    let image = inspect("{{.Config.Image}}");
    assert!(image.starts_with("iac/keeper:"), "{image}");
    let layers = docker(&["image", "inspect", "-f", "{{len .RootFS.Layers}}", &image]);
    assert_eq!(layers.trim(), "1", "FROM scratch + the agent: one layer");
    let keeper_id = inspect("{{.Id}}");

    // A redeploy leaves it alone.
    let out = p.iac(&["deploy", "--file", file, "--json"]);
    assert_eq!(out.status.code(), Some(0), "{:#}", json_of(&out));
    assert_eq!(inspect("{{.Id}}"), keeper_id, "the same keeper");

    // An app a person stops stays stopped (as `unless-stopped` would have it).
    assert!(docker_status(&["stop", "-t", "2", &app]).0);
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(state(&app), "exited", "the keeper left a stopped app alone");
    assert!(docker_status(&["start", &app]).0);

    // What a restore does in the worst order: everything stopped, then the keeper, then the
    // app — which cannot join the namespace of a sidecar that is not running — then the sidecar.
    let (ok, text) = docker_status(&["stop", "-t", "2", &keeper, &app, &sidecar]);
    assert!(ok, "{text}");
    assert!(docker_status(&["start", &keeper]).0);
    let (ok, text) = docker_status(&["start", &app]);
    assert!(!ok, "the app cannot start before its sidecar: {text}");
    assert!(
        text.contains("non running container") || text.contains("cannot join network"),
        "{text}"
    );
    assert_ne!(state(&app), "running");
    let t = Instant::now();
    assert!(docker_status(&["start", &sidecar]).0);
    let out = p.iac(&["health", "--wait", "60s", "--json"]);
    let took = t.elapsed();
    let v = json_of(&out);
    assert_eq!(out.status.code(), Some(0), "{v:#}");
    assert_eq!(state(&app), "running");
    assert_eq!(curl_code(&url), "200");
    eprintln!(
        "recovered: app tried before its sidecar (restore order keeper, app, sidecar): {:.1}s",
        took.as_secs_f64()
    );
    let logs = docker_status(&["logs", &keeper]).1;
    assert!(
        logs.contains(&format!("keeper: starting {app}: its last start failed"))
            && logs.contains(&format!("keeper: started {app}")),
        "{logs}"
    );

    // The order where the keeper comes last: it looks at every pod when it starts.
    let (ok, text) = docker_status(&["stop", "-t", "2", &keeper, &app, &sidecar]);
    assert!(ok, "{text}");
    assert!(!docker_status(&["start", &app]).0);
    assert!(docker_status(&["start", &sidecar]).0);
    let t = Instant::now();
    assert!(docker_status(&["start", &keeper]).0);
    let out = p.iac(&["health", "--wait", "60s", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{:#}", json_of(&out));
    eprintln!(
        "recovered: app tried before its sidecar, keeper started last: {:.1}s",
        t.elapsed().as_secs_f64()
    );
    assert_eq!(curl_code(&url), "200");

    // destroy removes the keeper with the pods.
    assert!(p.iac(&["destroy"]).status.success());
    assert!(
        docker(&[
            "ps",
            "-aq",
            "--filter",
            &format!("label=iac.project={}", p.name)
        ])
        .trim()
        .is_empty()
    );
}
