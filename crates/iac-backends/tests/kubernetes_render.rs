//! Kubernetes render (`iac render --target kubernetes`): golden files for a two-service stack
//! (UPDATE_GOLDEN=1 rewrites them), structure checks (native sidecar, probes, policy, secrets),
//! determinism, clear errors, and validation of every manifest against the official schemas with
//! `kubernetes-validate` (PyPI; required when IAC_REQUIRE_K8S_VALIDATE=1, as `make test` sets).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use base64::Engine as _;
use iac_backends::kubernetes::{
    HEALTH_PORT, KubernetesError, KubernetesOptions, mounted_files, render,
};
use iac_core::plan::{PlanInput, PlannedService, plan};
use iac_core::{CertPaths, IssuedCerts, ProjectName, ServiceName, Stack};
use serde_json::Value;

/// The Kubernetes version the manifests are validated against (native sidecars are GA in 1.33).
const K8S_VERSION: &str = "1.34.0";

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
        env: [("GREETING".to_string(), "hi".to_string())].into(),
        edge: port.map(|_| iac_core::EdgeBind::loopback()),
        replicas: 1,
        egress: Default::default(),
    };
    // `api` may reach two hosts outside the mesh; `web` keeps the open behaviour.
    let mut api = svc("api", None);
    api.egress = iac_core::EgressPolicy::Allow(
        iac_core::egress::parse_rules(&[
            "api.stripe.com:443",
            "*.pypi.org:443",
            "mirror.internal:80",
        ])
        .unwrap(),
    );
    plan(&PlanInput {
        project: ProjectName::new("shop").unwrap(),
        network: "iacnet".into(),
        envoy_image: "iac/envoy:1.40.0".into(),
        otel_endpoint: None,
        services: vec![svc("web", Some(8000)), api],
        keep: vec![],
        sandbox: None,
    })
}

#[test]
fn a_controlled_pod_gets_an_egress_policy_and_the_proxy_variables() {
    let manifests = rendered();
    let api = manifests.iter().find(|m| m.file == "api.yaml").unwrap();
    let docs = docs(&api.yaml);
    let policies: Vec<&Value> = docs
        .iter()
        .filter(|d| d["kind"] == "NetworkPolicy")
        .collect();
    assert_eq!(policies.len(), 2, "mesh-only ingress and egress");
    let egress = policies
        .iter()
        .find(|p| p["metadata"]["name"] == "api-egress")
        .expect("api-egress");
    assert_eq!(egress["spec"]["policyTypes"], serde_json::json!(["Egress"]));
    let rules = egress["spec"]["egress"].as_array().unwrap();
    assert_eq!(rules.len(), 3, "DNS, the mesh, the listed ports");
    assert_eq!(rules[1]["ports"][0]["port"], 15000);
    let ports: Vec<u64> = rules[2]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["port"].as_u64().unwrap())
        .collect();
    assert_eq!(ports, [80, 443]);
    let deployment = kind(&docs, "Deployment");
    let env = &deployment["spec"]["template"]["spec"]["containers"][0]["env"];
    assert!(
        env.as_array()
            .unwrap()
            .iter()
            .any(|e| e["name"] == "HTTPS_PROXY" && e["value"] == "http://127.0.0.1:15002"),
        "{env}"
    );
    // Open: no egress policy, no proxy variables.
    let web = manifests.iter().find(|m| m.file == "web.yaml").unwrap();
    assert!(!web.yaml.contains("-egress"));
    assert!(!web.yaml.contains("HTTPS_PROXY"));
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

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/kubernetes")
}

fn rendered() -> Vec<iac_backends::kubernetes::Manifest> {
    let s = stack();
    render(&s, &files(&s), &KubernetesOptions::default()).unwrap()
}

#[test]
fn golden_manifests() {
    let out = rendered();
    let names: Vec<&str> = out.iter().map(|m| m.file.as_str()).collect();
    assert_eq!(names, ["00-namespace.yaml", "api.yaml", "web.yaml"]);
    let update = std::env::var_os("UPDATE_GOLDEN").is_some_and(|v| v == "1");
    for m in &out {
        let path = golden_dir().join(&m.file);
        if update {
            std::fs::create_dir_all(golden_dir()).unwrap();
            std::fs::write(&path, &m.yaml).unwrap();
            continue;
        }
        let expected = std::fs::read_to_string(&path).unwrap_or_else(|e| {
            panic!(
                "{}: {e}; run with UPDATE_GOLDEN=1 to create it",
                path.display()
            )
        });
        assert_eq!(
            expected,
            m.yaml,
            "{} differs from the render; run with UPDATE_GOLDEN=1 if intended",
            path.display()
        );
    }
}

fn docs(yaml: &str) -> Vec<Value> {
    yaml.split("---\n")
        .map(|d| yaml_serde::from_str(d).unwrap())
        .collect()
}

fn kind<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind}"))
}

#[test]
fn the_pod_is_app_plus_native_envoy_sidecar_with_the_docker_pods_files() {
    let s = stack();
    let f = files(&s);
    let out = render(&s, &f, &KubernetesOptions::default()).unwrap();
    let web = docs(&out.iter().find(|m| m.file == "web.yaml").unwrap().yaml);
    let kinds: Vec<&str> = web.iter().map(|d| d["kind"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        [
            "Secret",
            "ConfigMap",
            "Deployment",
            "Service",
            "NetworkPolicy"
        ]
    );
    for d in &web {
        assert_eq!(d["metadata"]["namespace"], "shop");
        assert_eq!(d["metadata"]["labels"]["iac.managed-by"], "iac");
    }

    // The Secret carries exactly the certificate files the Docker sidecar mounts.
    let secret = kind(&web, "Secret");
    let decode = |k: &str| {
        base64::engine::general_purpose::STANDARD
            .decode(secret["data"][k].as_str().unwrap())
            .unwrap()
    };
    assert_eq!(decode("key.pem"), f[Path::new("/secrets/shop/web.key")]);
    assert_eq!(decode("cert.pem"), f[Path::new("/secrets/shop/web.pem")]);
    assert_eq!(decode("ca.pem"), f[Path::new("/secrets/ca.pem")]);
    assert_eq!(
        kind(&web, "ConfigMap")["data"]["envoy.yaml"],
        "content of /state/shop/services/web/envoy.yaml\n"
    );

    let pod = &kind(&web, "Deployment")["spec"]["template"]["spec"];
    let envoy = &pod["initContainers"][0];
    assert_eq!(envoy["restartPolicy"], "Always", "native sidecar");
    assert_eq!(envoy["image"], "iac/envoy:1.40.0");
    assert_eq!(envoy["ports"][0]["containerPort"], 15000);
    let mounts: Vec<&str> = envoy["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["mountPath"].as_str().unwrap())
        .collect();
    assert_eq!(mounts, ["/etc/envoy", "/etc/iac/certs"]);
    let app = &pod["containers"][0];
    assert_eq!(app["image"], "registry.example/shop-web:0123456789ab");
    assert_eq!(app["readinessProbe"]["grpc"]["port"], HEALTH_PORT);
    let env: BTreeMap<&str, &str> = app["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["name"].as_str().unwrap(), e["value"].as_str().unwrap()))
        .collect();
    assert_eq!(env["IAC_HEALTH_LISTEN"], "0.0.0.0:15021");
    assert_eq!(env["PORT"], "8000");
    assert_eq!(env["GREETING"], "hi");
    assert_eq!(app["securityContext"]["allowPrivilegeEscalation"], false);
    assert_eq!(app["securityContext"]["capabilities"]["drop"][0], "ALL");
    assert_eq!(envoy["securityContext"]["capabilities"]["drop"][0], "ALL");
    assert!(envoy["securityContext"]["capabilities"]["add"].is_null());

    // Only the mesh port is admitted; the Service exposes only it.
    let policy = kind(&web, "NetworkPolicy");
    assert_eq!(policy["spec"]["policyTypes"][0], "Ingress");
    let ingress = policy["spec"]["ingress"].as_array().unwrap();
    assert_eq!(ingress.len(), 1);
    assert_eq!(ingress[0]["ports"].as_array().unwrap().len(), 1);
    assert_eq!(ingress[0]["ports"][0]["port"], 15000);
    assert!(ingress[0]["from"].is_null(), "any peer, but only on 15000");
    let svc = kind(&web, "Service");
    assert_eq!(svc["spec"]["ports"].as_array().unwrap().len(), 1);
    assert_eq!(svc["spec"]["ports"][0]["port"], 15000);
    // A changed spec rolls the pods.
    let hash = &s
        .services
        .iter()
        .find(|x| x.service.as_str() == "web")
        .unwrap()
        .spec_hash;
    assert_eq!(
        kind(&web, "Deployment")["spec"]["template"]["metadata"]["annotations"]["iac.spec-hash"],
        hash.as_str()
    );
}

#[test]
fn same_inputs_same_bytes_and_options_apply() {
    assert_eq!(rendered(), rendered());
    let s = stack();
    let opts = KubernetesOptions {
        namespace: Some("prod-shop".into()),
        ..KubernetesOptions::default()
    };
    let out = render(&s, &files(&s), &opts).unwrap();
    assert!(out[0].yaml.contains("name: prod-shop"));
    let api = docs(&out[1].yaml);
    assert_eq!(kind(&api, "Deployment")["spec"]["replicas"], 1);
    assert_eq!(
        kind(&api, "Deployment")["metadata"]["namespace"],
        "prod-shop"
    );
}

#[test]
fn a_missing_file_is_named() {
    let s = stack();
    let mut f = files(&s);
    f.remove(Path::new("/secrets/shop/api.key"));
    let err = render(&s, &f, &KubernetesOptions::default()).unwrap_err();
    assert_eq!(
        err,
        KubernetesError::MissingFile {
            service: "api".into(),
            path: "/secrets/shop/api.key".into()
        }
    );
    assert!(err.to_string().contains("/secrets/shop/api.key"));
}

#[test]
fn manifests_pass_the_official_schemas() {
    let have = Command::new("kubernetes-validate")
        .arg("--version")
        .output();
    if have.as_ref().map(|o| !o.status.success()).unwrap_or(true) {
        assert!(
            std::env::var_os("IAC_REQUIRE_K8S_VALIDATE").is_none(),
            "kubernetes-validate is required (pip install kubernetes-validate): {have:?}"
        );
        eprintln!("skipping: kubernetes-validate is not installed");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut paths = Vec::new();
    for m in rendered() {
        // One document per file: the validator reports per file.
        for (i, d) in m.yaml.split("---\n").enumerate() {
            let p = dir
                .path()
                .join(format!("{}-{i}.yaml", m.file.trim_end_matches(".yaml")));
            std::fs::write(&p, d).unwrap();
            paths.push(p);
        }
    }
    assert_eq!(
        paths.len(),
        12,
        "namespace, 5 per service, and api's egress policy"
    );
    let out = Command::new("kubernetes-validate")
        .args(["--strict", "-k", K8S_VERSION])
        .args(&paths)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "validation failed:\n{text}");
    assert_eq!(
        text.matches(" passed for resource ").count(),
        paths.len(),
        "every document must pass:\n{text}"
    );

    // The validator is not a rubber stamp: a broken manifest fails.
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: x}\nspec: {replicas: many}\n",
    )
    .unwrap();
    let out = Command::new("kubernetes-validate")
        .args(["--strict", "-k", K8S_VERSION])
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!out.status.success());
}

/// What the plan says reaches the manifests: replicas from the repos file, the app's
/// capabilities and no-new-privileges from the plan's privileges, memory from the stack's limits
/// (`[docker.limits]`), the options' defaults only where the stack has none.
#[test]
fn the_plan_decides_replicas_capabilities_and_limits() {
    let mut s = stack();
    let at = |s: &Stack| {
        s.services
            .iter()
            .position(|x| x.service.as_str() == "web")
            .unwrap()
    };
    let i = at(&s);
    s.services[i].replicas = 3;
    let s = iac_backends::provision::with_limits(
        &s,
        &iac_backends::provision::ContainerLimits::default(),
    );
    let web = &s.services[at(&s)];
    let out = render(&s, &files(&s), &KubernetesOptions::default()).unwrap();
    let manifest = out.iter().find(|m| m.file == "web.yaml").unwrap();
    let d = kind(&docs(&manifest.yaml), "Deployment").clone();
    assert_eq!(d["spec"]["replicas"], 3);
    let pod = &d["spec"]["template"]["spec"];
    let app = &pod["containers"][0];
    let mut want_caps = web.app.privileges.cap_add.clone();
    want_caps.sort();
    assert_eq!(
        app["securityContext"]["capabilities"]["add"],
        serde_json::json!(want_caps)
    );
    assert!(want_caps.contains(&"KILL".to_string()), "{want_caps:?}");
    assert_eq!(
        app["securityContext"]["capabilities"]["drop"],
        serde_json::json!(["ALL"])
    );
    assert_eq!(app["securityContext"]["allowPrivilegeEscalation"], false);
    let app_mem = web.app.limits.memory_bytes.expect("default limits set one");
    assert_eq!(
        app["resources"]["limits"]["memory"],
        serde_json::json!(app_mem.to_string())
    );
    let envoy_mem = web
        .envoy
        .limits
        .memory_bytes
        .expect("default limits set one");
    assert_eq!(
        pod["initContainers"][0]["resources"]["limits"]["memory"],
        serde_json::json!(envoy_mem.to_string())
    );
    // Without stack limits, the options' defaults.
    let plain = stack();
    let out = render(&plain, &files(&plain), &KubernetesOptions::default()).unwrap();
    let manifest = out.iter().find(|m| m.file == "web.yaml").unwrap();
    let d = kind(&docs(&manifest.yaml), "Deployment").clone();
    assert_eq!(
        d["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["memory"],
        "1Gi"
    );
}
