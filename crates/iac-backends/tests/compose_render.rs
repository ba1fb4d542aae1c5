//! Compose render (`iac render --target compose`): the golden compose file of a two-service stack
//! (UPDATE_GOLDEN=1 rewrites it), the pod's shape (sidecar owns the namespace, app joins it),
//! the files beside it, `$` escaping, determinism and clear errors. The real-engine run is
//! `crates/iac-bin/tests/compose_render.rs`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use iac_backends::compose::{COMPOSE_FILE, ComposeError, mounted_files, render};
use iac_core::plan::{PlanInput, PlannedService, plan};
use iac_core::{CertPaths, IssuedCerts, Limits, ProjectName, ServiceName, Stack};
use serde_json::Value;

fn stack() -> Stack {
    let svc = |n: &str, port: Option<u16>| PlannedService {
        name: ServiceName::new(n).unwrap(),
        image: format!("registry.example/shop-{n}:0123456789ab"),
        envoy_config: format!("/state/shop/services/{n}/envoy.yaml").into(),
        envoy_config_digest: format!("sha256:{n}-config"),
        certs: IssuedCerts {
            paths: CertPaths {
                ca: "/secrets/ca.pem".into(),
                cert: format!("/secrets/shop/{n}.pem").into(),
                key: format!("/secrets/shop/{n}.key").into(),
            },
            fingerprint: format!("sha256:{n}-certs"),
        },
        app_port: port,
        env: [("GREETING".to_string(), "costs $5".to_string())].into(),
        edge: port.map(|_| iac_core::EdgeBind::loopback()),
        replicas: 1,
        egress: Default::default(),
    };
    let mut s = plan(&PlanInput {
        project: ProjectName::new("shop").unwrap(),
        network: "iacnet".into(),
        envoy_image: "iac/envoy:1.40.0".into(),
        otel_endpoint: None,
        services: vec![svc("web", Some(8000)), svc("api", None)],
        keep: vec![],
        sandbox: None,
    });
    // Limits as `[docker.limits]` fills them in.
    for svc in &mut s.services {
        svc.app.limits = Limits {
            pids: Some(512),
            memory_bytes: Some(1 << 30),
        };
        svc.envoy.limits = Limits {
            pids: Some(128),
            memory_bytes: Some(256 << 20),
        };
    }
    s
}

fn files(stack: &Stack) -> BTreeMap<PathBuf, Vec<u8>> {
    mounted_files(stack)
        .into_iter()
        .map(|p| {
            let body = format!("content of {}\n", p.display());
            (p, body.into_bytes())
        })
        .collect()
}

fn compose_doc(stack: &Stack) -> Value {
    let out = render(stack, &files(stack)).unwrap();
    yaml_serde::from_str(out.compose_yaml()).unwrap()
}

#[test]
fn golden_compose_file() {
    let s = stack();
    let out = render(&s, &files(&s)).unwrap();
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/compose/compose.yaml");
    if std::env::var_os("UPDATE_GOLDEN").is_some_and(|v| v == "1") {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, out.compose_yaml()).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; run with UPDATE_GOLDEN=1 to create it",
            path.display()
        )
    });
    assert_eq!(
        expected,
        out.compose_yaml(),
        "{} differs from the render; run with UPDATE_GOLDEN=1 if intended",
        path.display()
    );
}

#[test]
fn each_pod_is_a_sidecar_owning_the_namespace_and_an_app_joining_it() {
    let s = stack();
    let doc = compose_doc(&s);
    assert_eq!(doc["version"], "2.4");
    let services = doc["services"].as_object().unwrap();
    let keys: Vec<&str> = services.keys().map(String::as_str).collect();
    assert_eq!(keys, ["api", "api.envoy", "web", "web.envoy"]);
    for svc in &s.services {
        let name = svc.service.as_str();
        let app = &services[name];
        let envoy = &services[&format!("{name}.envoy")];
        assert_eq!(app["container_name"], svc.app.name.as_str());
        assert_eq!(envoy["container_name"], svc.envoy.name.as_str());
        assert_eq!(app["image"], svc.app.image.as_str());
        assert_eq!(envoy["image"], svc.envoy.image.as_str());
        assert_eq!(app["network_mode"], format!("service:{name}.envoy"));
        assert_eq!(
            app["depends_on"],
            serde_json::json!([format!("{name}.envoy")])
        );
        assert!(app.get("networks").is_none() && app.get("ports").is_none());
        assert_eq!(
            envoy["networks"][&s.network.name]["aliases"],
            serde_json::json!([name])
        );
        assert_eq!(
            doc["networks"][&s.network.name]["name"],
            s.network.name.as_str()
        );
        // The mesh port, on loopback, an ephemeral host port.
        assert_eq!(envoy["ports"][0], "127.0.0.1::15000");
        for (c, spec) in [(app, &svc.app), (envoy, &svc.envoy)] {
            assert_eq!(c["restart"], "unless-stopped");
            assert_eq!(
                c["security_opt"],
                serde_json::json!(["no-new-privileges:true"])
            );
            assert_eq!(c["cap_drop"], serde_json::json!(spec.privileges.cap_drop));
            assert_eq!(c["cap_add"], serde_json::json!(spec.privileges.cap_add));
            assert_eq!(c["pids_limit"], spec.limits.pids.unwrap());
            assert_eq!(c["mem_limit"], spec.limits.memory_bytes.unwrap());
            assert_eq!(c["memswap_limit"], spec.limits.memory_bytes.unwrap());
            assert_eq!(
                c["stop_grace_period"],
                format!("{}s", spec.stop_timeout_secs)
            );
            for (k, v) in &spec.labels {
                assert_eq!(c["labels"][k], v.replace('$', "$$"), "label {k}");
            }
        }
        // `$` is written `$$` (Compose would interpolate it).
        assert_eq!(app["environment"]["GREETING"], "costs $$5");
        let cmd: Vec<&str> = envoy["command"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        let want: Vec<String> = svc.envoy.cmd.iter().map(|a| a.replace('$', "$$")).collect();
        assert_eq!(cmd, want);
    }
    // The edge port of `web`, as the plan publishes it.
    assert_eq!(
        services["web.envoy"]["ports"],
        serde_json::json!(["127.0.0.1::15000", "127.0.0.1::15080"])
    );
}

#[test]
fn mounted_files_sit_beside_the_compose_file_and_keys_are_owner_only() {
    let s = stack();
    let f = files(&s);
    let out = render(&s, &f).unwrap();
    assert_eq!(out.files[0].path, Path::new(COMPOSE_FILE));
    assert_eq!(out.files[0].mode, 0o600, "the environment is inside");
    let doc = compose_doc(&s);
    for svc in &s.services {
        let name = svc.service.as_str();
        let vols = doc["services"][&format!("{name}.envoy")]["volumes"]
            .as_array()
            .unwrap();
        assert_eq!(vols.len(), svc.envoy.mounts.len());
        for m in &svc.envoy.mounts {
            let rel = Path::new(name).join(m.target.strip_prefix("/").unwrap());
            let want = format!("./{}:{}:ro", rel.display(), m.target.display());
            assert!(vols.iter().any(|v| v == &want), "{want} in {vols:?}");
            let file = out.files.iter().find(|p| p.path == rel).unwrap();
            assert_eq!(file.bytes, f[&m.source]);
            let key = m.target == CertPaths::in_container().key;
            assert_eq!(file.mode, if key { 0o600 } else { 0o644 });
        }
    }
    assert_eq!(
        out.files.len(),
        1 + s
            .services
            .iter()
            .map(|s| s.envoy.mounts.len())
            .sum::<usize>()
    );
}

#[test]
fn same_input_same_bytes() {
    let s = stack();
    assert_eq!(render(&s, &files(&s)), render(&s, &files(&s)));
}

#[test]
fn a_missing_file_is_named() {
    let s = stack();
    let mut f = files(&s);
    f.remove(Path::new("/secrets/shop/web.key"));
    let err = render(&s, &f).unwrap_err();
    assert_eq!(
        err,
        ComposeError::MissingFile {
            service: "web".into(),
            path: "/secrets/shop/web.key".into()
        }
    );
    assert!(err.to_string().contains("/secrets/shop/web.key"), "{err}");
}
