//! Tests of the terraform provisioner: the pure tfvars render (golden file), the offline check
//! that the tfvars fit `infra/variables.tf` (and its negative), and the driver against the
//! scripted stand-in `tests/fixtures/fake-terraform` (no provider registry here; see its header).
//! Every driver test works in its own temp dir and passes the stand-in's settings through
//! `TerraformConfig::extra_env`, so tests run in parallel without touching the process env.

use iac_backends::secret::Secret;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use iac_backends::provision::terraform::{
    DIFF_TFVARS_FILE, EMBEDDED_MODULE, TFVARS_FILE, TerraformConfig, TerraformProvisioner, Tfvars,
    check_declared, render_tfvars, tfvars_json,
};
use iac_backends::provision::{ContainerLimits, with_limits};
use iac_core::plan::{PlanInput, PlannedService, plan};
use iac_core::{
    Action, CertPaths, DeployEvent, Events, IssuedCerts, MockHealthProber, NetworkMode,
    ProjectName, ProvisionError, Provisioner, ServiceName, Stack, Stage,
};
use serde_json::Value;

const DOCKER_HOST: &str = "unix:///var/run/docker.sock";

fn manifest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Installs the stand-in as `<dir>/bin/terraform`, with its shebang pointing straight at a
/// python3 (`/usr/bin/python3` when present: version-manager shims cost ~0.5 s per call).
fn install_fake_terraform(dir: &Path) -> PathBuf {
    let script =
        std::fs::read_to_string(manifest_dir().join("tests/fixtures/fake-terraform")).unwrap();
    let body = script.split_once('\n').expect("shebang line").1;
    let python = ["/usr/bin/python3", "/usr/local/bin/python3"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from("/usr/bin/env python3"));
    let bin = dir.join("bin/terraform");
    std::fs::create_dir_all(bin.parent().unwrap()).unwrap();
    std::fs::write(&bin, format!("#!{}\n{body}", python.display())).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    bin
}

fn infra_files() -> Vec<(String, String)> {
    let dir = manifest_dir().join("../../infra");
    let mut files: Vec<(String, String)> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "tf"))
        .map(|p| {
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read_to_string(&p).unwrap(),
            )
        })
        .collect();
    files.sort();
    files
}

fn service(name: &str, port: Option<u16>, root: &Path) -> PlannedService {
    PlannedService {
        name: ServiceName::new(name).unwrap(),
        image: format!("iac/demo-{name}:0123456789ab"),
        envoy_config: root.join(format!("projects/demo/services/{name}/envoy.yaml")),
        envoy_config_digest: format!("sha256:{name}-config"),
        certs: IssuedCerts {
            paths: CertPaths {
                ca: root.join("secrets/ca.pem"),
                cert: root.join(format!("secrets/demo/{name}.pem")),
                key: root.join(format!("secrets/demo/{name}.key")),
            },
            fingerprint: format!("sha256:{name}-certs"),
        },
        app_port: port,
        env: [("GREETING".to_string(), "hi".to_string())].into(),
        edge: port.map(|_| iac_core::EdgeBind::loopback()),
        replicas: 1,
        egress: Default::default(),
    }
}

fn input(root: &Path) -> PlanInput {
    PlanInput {
        project: ProjectName::new("demo").unwrap(),
        network: "iacnet".into(),
        envoy_image: "iac/envoy:1.40".into(),
        otel_endpoint: None,
        services: vec![service("web", Some(8000), root), service("api", None, root)],
        keep: Vec::new(),
        sandbox: None,
    }
}

/// The two-service stack the golden file is made from (fixed host paths).
fn two_service_stack() -> Stack {
    plan(&input(Path::new("/srv/iac")))
}

fn as_value(t: &Tfvars) -> Value {
    serde_json::from_str(&tfvars_json(t)).unwrap()
}

// ---------------------------------------------------------------------------------------------
// Render
// ---------------------------------------------------------------------------------------------

#[test]
fn golden_tfvars_for_two_services() {
    let got = tfvars_json(&render_tfvars(&two_service_stack(), None, DOCKER_HOST).unwrap());
    let golden = manifest_dir().join("tests/golden/terraform/terraform.tfvars.json");
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::create_dir_all(golden.parent().unwrap()).unwrap();
        std::fs::write(&golden, &got).unwrap();
    }
    let want =
        std::fs::read_to_string(&golden).expect("golden file (run with UPDATE_GOLDEN=1 to create)");
    assert_eq!(
        got, want,
        "tfvars render changed; review and re-run with UPDATE_GOLDEN=1"
    );
    // Pure: rendering again, or from services given in another order, gives the same bytes.
    let mut reordered = input(Path::new("/srv/iac"));
    reordered.services.reverse();
    assert_eq!(
        tfvars_json(&render_tfvars(&plan(&reordered), None, DOCKER_HOST).unwrap()),
        want
    );
}

/// `api` with its egress controlled: the module runs the plan's containers, so the sidecar's
/// command carries the pod filter's output chain (Envoy started with the egress group) and the
/// app its proxy variables; golden-tested, and every key still declared by the module.
#[test]
fn golden_tfvars_with_egress_controlled() {
    let mut input = input(Path::new("/srv/iac"));
    input.services[1].egress = iac_core::EgressPolicy::Allow(
        iac_core::egress::parse_rules(&["api.stripe.com:443"]).unwrap(),
    );
    let t = render_tfvars(&plan(&input), None, DOCKER_HOST).unwrap();
    let got = tfvars_json(&t);
    let golden = manifest_dir().join("tests/golden/terraform/terraform.tfvars.egress.json");
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&golden, &got).unwrap();
    }
    let want =
        std::fs::read_to_string(&golden).expect("golden file (run with UPDATE_GOLDEN=1 to create)");
    assert_eq!(got, want, "review and re-run with UPDATE_GOLDEN=1");
    let v = as_value(&t);
    let script = v["services"]["api"]["envoy"]["command"][2]
        .as_str()
        .unwrap();
    assert!(
        script.contains("chain output") && script.contains("meta skgid 1337 accept"),
        "{script}"
    );
    assert!(
        got.contains("\"HTTPS_PROXY\": \"http://127.0.0.1:15002\""),
        "{got}"
    );
    let web = v["services"]["web"]["envoy"]["command"][2]
        .as_str()
        .unwrap();
    assert!(!web.contains("chain output"), "web stays open");
    check_declared(&v, &infra_files()).unwrap();
}

#[test]
fn render_carries_the_topology_the_module_needs() {
    let t = render_tfvars(&two_service_stack(), None, "tcp://10.0.0.5:2376").unwrap();
    assert_eq!(
        t.docker_host, "tcp://10.0.0.5:2376",
        "provider host comes from config"
    );
    assert_eq!(t.mesh_port, 15000);
    let api = &t.services["api"];
    // The sidecar is the pod's network namespace: the alias and the published port are its.
    assert_eq!(api.envoy.aliases, ["api"]);
    assert_eq!(api.envoy.ports.len(), 1);
    assert_eq!(
        (
            api.envoy.ports[0].internal,
            api.envoy.ports[0].ip.as_str(),
            api.envoy.ports[0].external
        ),
        (15000, "127.0.0.1", None)
    );
    assert_eq!(
        (api.app.restart.as_str(), api.envoy.restart.as_str()),
        ("unless-stopped", "unless-stopped")
    );
    let json = tfvars_json(&t);
    assert!(
        !json.contains("\"external\""),
        "an ephemeral port omits `external` entirely"
    );
    assert!(
        api.envoy.mounts.iter().all(|m| m.read_only),
        "sidecar mounts are read-only"
    );
    assert_eq!(api.envoy.mounts.len(), 4, "config + ca + cert + key");
    for labels in [&api.app.labels, &api.envoy.labels, &t.network.labels] {
        assert_eq!(
            labels.get("iac.project").map(String::as_str),
            Some("demo"),
            "{labels:?}"
        );
    }
    assert_eq!(api.app.labels["iac.spec-hash"], api.spec_hash);
}

#[test]
fn kept_services_keep_their_previous_entry() {
    let previous = render_tfvars(&two_service_stack(), None, DOCKER_HOST).unwrap();
    // web failed to prepare this time: the stack has only api, and asks to keep web.
    let mut i = input(Path::new("/srv/iac"));
    i.services.retain(|s| s.name.as_str() == "api");
    i.keep = vec![
        ServiceName::new("web").unwrap(),
        ServiceName::new("never-deployed").unwrap(),
    ];
    let stack = plan(&i);
    let t = render_tfvars(&stack, Some(&previous), DOCKER_HOST).unwrap();
    assert_eq!(t.services.keys().collect::<Vec<_>>(), ["api", "web"]);
    assert_eq!(t.services["web"], previous.services["web"]);
    // Without a previous apply there is nothing to keep.
    let t = render_tfvars(&stack, None, DOCKER_HOST).unwrap();
    assert_eq!(t.services.keys().collect::<Vec<_>>(), ["api"]);
}

#[test]
fn render_rejects_shapes_the_module_cannot_express() {
    let mut stack = two_service_stack();
    stack.services[0].app.network = NetworkMode::Network {
        name: "iacnet".into(),
        aliases: vec![],
    };
    let e = render_tfvars(&stack, None, DOCKER_HOST).unwrap_err();
    assert!(
        e.to_string()
            .contains("must share the network namespace of its sidecar demo-api-envoy"),
        "{e}"
    );

    let mut stack = two_service_stack();
    stack.services[1].envoy.mounts[0].source = PathBuf::from("relative/envoy.yaml");
    let e = render_tfvars(&stack, None, DOCKER_HOST).unwrap_err();
    assert!(
        e.to_string().contains("relative/envoy.yaml") && e.to_string().contains("absolute"),
        "{e}"
    );

    let mut stack = two_service_stack();
    stack.services[1].envoy.network = NetworkMode::Network {
        name: "othernet".into(),
        aliases: vec!["web".into()],
    };
    let e = render_tfvars(&stack, None, DOCKER_HOST).unwrap_err();
    assert!(
        e.to_string()
            .contains("must join the stack network \"iacnet\""),
        "{e}"
    );

    // The kreuzwerker/docker provider has no pids limit: refused, not silently dropped.
    let stack = with_limits(&two_service_stack(), &ContainerLimits::default());
    let e = render_tfvars(&stack, None, DOCKER_HOST).unwrap_err();
    assert!(
        e.to_string().contains("pids limit of 512") && e.to_string().contains("_pids to 0"),
        "{e}"
    );
}

#[test]
fn render_carries_privileges_memory_and_the_managed_by_label() {
    let stack = with_limits(&two_service_stack(), &TerraformConfig::default().limits);
    let t = render_tfvars(&stack, None, DOCKER_HOST).unwrap();
    let web = &t.services["web"];
    assert!(web.app.security.no_new_privileges && web.envoy.security.no_new_privileges);
    assert_eq!(web.app.security.cap_drop, ["ALL"]);
    assert_eq!(web.app.security.cap_add, ["KILL", "SETGID", "SETUID"]);
    assert_eq!(
        web.envoy.security.cap_add,
        ["NET_ADMIN", "SETGID", "SETPCAP", "SETUID"]
    );
    assert_eq!(web.app.memory_mib, Some(1024));
    assert_eq!(web.envoy.memory_mib, Some(256));
    assert!(
        web.envoy.command.join(" ").contains("nft -f -"),
        "the sidecar installs the pod filter: {:?}",
        web.envoy.command
    );
    for labels in [&web.app.labels, &web.envoy.labels, &t.network.labels] {
        assert_eq!(labels["iac.managed-by"], "iac");
    }
    // Set by the provisioner even when the stack does not carry it.
    let mut bare = stack.clone();
    bare.services[1].app.labels.remove("iac.managed-by");
    bare.network.labels.remove("iac.managed-by");
    let t = render_tfvars(&bare, None, DOCKER_HOST).unwrap();
    assert_eq!(t.services["web"].app.labels["iac.managed-by"], "iac");
    assert_eq!(t.network.labels["iac.managed-by"], "iac");
    check_declared(&as_value(&t), &infra_files()).expect("fits infra/*.tf");
}

// ---------------------------------------------------------------------------------------------
// Offline check against infra/variables.tf
// ---------------------------------------------------------------------------------------------

#[test]
fn every_rendered_key_is_declared_in_the_module() {
    let v = as_value(&render_tfvars(&two_service_stack(), None, DOCKER_HOST).unwrap());
    check_declared(&v, &infra_files()).expect("the rendered tfvars fit infra/*.tf");
    // The embedded copy is the one in infra/.
    let embedded: Vec<(String, String)> = EMBEDDED_MODULE
        .iter()
        .map(|(n, t)| (n.to_string(), t.to_string()))
        .collect();
    assert_eq!(
        embedded,
        infra_files(),
        "EMBEDDED_MODULE must list every infra/*.tf file"
    );
    // The golden file fits too.
    let golden: Value = serde_json::from_str(
        &std::fs::read_to_string(
            manifest_dir().join("tests/golden/terraform/terraform.tfvars.json"),
        )
        .unwrap(),
    )
    .unwrap();
    check_declared(&golden, &infra_files()).unwrap();
}

#[test]
fn undeclared_keys_are_rejected() {
    let base = as_value(&render_tfvars(&two_service_stack(), None, DOCKER_HOST).unwrap());

    let mut v = base.clone();
    v["replicas"] = Value::from(2);
    let e = check_declared(&v, &infra_files()).unwrap_err();
    assert!(matches!(e, ProvisionError::Invalid(_)), "{e:?}");
    assert!(
        e.to_string()
            .contains("sets \"replicas\", which no variable block"),
        "{e}"
    );

    // Nested: Terraform would silently drop an attribute its object type lacks.
    let mut v = base.clone();
    v["services"]["api"]["app"]["cpu_shares"] = Value::from(512);
    let e = check_declared(&v, &infra_files()).unwrap_err();
    assert!(
        e.to_string()
            .contains("var.services[\"api\"].app.cpu_shares is set"),
        "{e}"
    );

    // A module that lacks a variable the renderer sets.
    let files: Vec<(String, String)> = infra_files()
        .into_iter()
        .map(|(n, t)| {
            if n == "variables.tf" {
                (
                    n,
                    t.replace("variable \"mesh_port\"", "variable \"inbound_port\""),
                )
            } else {
                (n, t)
            }
        })
        .collect();
    let e = check_declared(&base, &files).unwrap_err();
    assert!(e.to_string().contains("\"mesh_port\""), "{e}");

    // Wrong type.
    let mut v = base;
    v["services"]["web"]["envoy"]["ports"][0]["internal"] = Value::from("https");
    let e = check_declared(&v, &infra_files()).unwrap_err();
    assert!(
        e.to_string()
            .contains("ports[0].internal is a string, but the module declares number"),
        "{e}"
    );
}

#[test]
fn infra_is_terraform_fmt_clean() {
    let Ok(out) = std::process::Command::new("terraform")
        .args(["fmt", "-check", "-diff", "-no-color"])
        .current_dir(manifest_dir().join("../../infra"))
        .output()
    else {
        eprintln!("SKIPPED infra_is_terraform_fmt_clean: no `terraform` on PATH");
        return;
    };
    assert!(
        out.status.success(),
        "terraform fmt -check failed for infra/:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The services' env (repos file, API: it may hold secrets) reaches the app container through
/// `sensitive(...)`, so Terraform never prints it in a plan or apply; the sidecar's env is iac's
/// own (`ENVOY_UID`).
#[test]
fn the_app_env_is_sensitive_in_the_module() {
    let main = std::fs::read_to_string(manifest_dir().join("../../infra/main.tf")).unwrap();
    let app = main
        .split_once("resource \"docker_container\" \"app\"")
        .expect("main.tf declares docker_container.app")
        .1;
    let app = &app[..app.find("\nresource ").unwrap_or(app.len())];
    let env: Vec<&str> = app
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("env ") || l.starts_with("env="))
        .collect();
    assert_eq!(
        env,
        [r#"env          = sensitive([for k, v in each.value.app.env : "${k}=${v}"])"#],
        "docker_container.app's env must be wrapped in sensitive():\n{app}"
    );
}

// ---------------------------------------------------------------------------------------------
// Driver against the stand-in
// ---------------------------------------------------------------------------------------------

struct Fixture {
    dir: tempfile::TempDir,
    log: PathBuf,
    terraform: PathBuf,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("calls.jsonl");
        let terraform = install_fake_terraform(dir.path());
        Fixture {
            dir,
            log,
            terraform,
        }
    }

    fn config(&self, extra: &[(&str, &str)]) -> TerraformConfig {
        let mut env: BTreeMap<String, Secret> = [(
            "FAKE_TF_LOG".to_string(),
            Secret::new(self.log.display().to_string()),
        )]
        .into();
        env.extend(
            extra
                .iter()
                .map(|(k, v)| (k.to_string(), Secret::new(v.to_string()))),
        );
        TerraformConfig {
            binary: self.terraform.display().to_string(),
            work_root: self.dir.path().join("projects"),
            extra_env: env,
            ..TerraformConfig::default()
        }
    }

    fn provisioner(&self, extra: &[(&str, &str)]) -> TerraformProvisioner {
        TerraformProvisioner::new(self.config(extra))
    }

    fn stack(&self) -> Stack {
        plan(&input(self.dir.path()))
    }

    fn work_dir(&self) -> PathBuf {
        self.dir.path().join("projects/demo/terraform")
    }

    /// Every recorded call: (argv, cwd, env).
    fn calls(&self) -> Vec<(Vec<String>, PathBuf, BTreeMap<String, String>)> {
        let Ok(text) = std::fs::read_to_string(&self.log) else {
            return Vec::new();
        };
        text.lines()
            .map(|l| {
                let v: Value = serde_json::from_str(l).unwrap();
                (
                    serde_json::from_value(v["argv"].clone()).unwrap(),
                    PathBuf::from(v["cwd"].as_str().unwrap()),
                    serde_json::from_value(v["env"].clone()).unwrap(),
                )
            })
            .collect()
    }

    fn argvs(&self) -> Vec<String> {
        self.calls()
            .into_iter()
            .map(|(a, _, _)| a.join(" "))
            .collect()
    }

    fn clear_log(&self) {
        let _ = std::fs::remove_file(&self.log);
    }
}

fn gate() -> Arc<MockHealthProber> {
    // Terraform cannot gate per service: the provisioner must never call the prober.
    let mut m = MockHealthProber::new();
    m.expect_check().never();
    Arc::new(m)
}

fn drain(rx: &mut iac_core::EventReceiver) -> Vec<DeployEvent> {
    let mut out = Vec::new();
    while let Ok(e) = rx.try_recv() {
        out.push(e);
    }
    out
}

#[tokio::test]
async fn apply_runs_init_plan_apply_output_in_the_work_dir_and_reads_endpoints() {
    let fx = Fixture::new();
    let tf = fx.provisioner(&[("FAKE_EXTRA", "passed-through")]);
    let stack = fx.stack();
    let (events, mut rx) = Events::channel();

    let applied = tf.apply(&stack, gate(), &events).await.expect("apply");

    let expected = [
        "init -input=false -no-color",
        "plan -input=false -no-color -out=iac.tfplan",
        "show -json -no-color iac.tfplan",
        "apply -input=false -no-color -auto-approve iac.tfplan",
        "output -json -no-color",
    ];
    assert_eq!(fx.argvs(), expected);
    let work = fx.work_dir().canonicalize().unwrap();
    for (argv, cwd, env) in fx.calls() {
        assert_eq!(
            cwd.canonicalize().unwrap(),
            work,
            "{argv:?} ran in the project's terraform dir"
        );
        assert_eq!(env.get("TF_IN_AUTOMATION").map(String::as_str), Some("1"));
        assert_eq!(
            env.get("CHECKPOINT_DISABLE").map(String::as_str),
            Some("1"),
            "no version check over the network"
        );
        assert_eq!(
            env.get("FAKE_EXTRA").map(String::as_str),
            Some("passed-through"),
            "extra_env reaches terraform"
        );
    }

    // Module + rendered data in the work dir.
    for f in ["main.tf", "variables.tf", "outputs.tf", "versions.tf"] {
        let want = std::fs::read_to_string(manifest_dir().join("../../infra").join(f)).unwrap();
        assert_eq!(
            std::fs::read_to_string(work.join(f)).unwrap(),
            want,
            "{f} copied from infra/"
        );
    }
    let tfvars = std::fs::read_to_string(work.join(TFVARS_FILE)).unwrap();
    let limited = with_limits(&stack, &TerraformConfig::default().limits);
    assert_eq!(
        tfvars,
        tfvars_json(&render_tfvars(&limited, None, DOCKER_HOST).unwrap()),
        "the stack with the configured memory limits filled in"
    );
    assert!(
        !work.join("iac.tfplan").exists(),
        "the saved plan is removed after apply"
    );

    // Endpoints come from `output -json` (the stand-in hands out 41001, 41002 in key order).
    let by: BTreeMap<&str, _> = applied
        .services
        .iter()
        .map(|s| (s.service.as_str(), s))
        .collect();
    assert_eq!(by.len(), 2);
    assert_eq!(by["api"].endpoint, Some("127.0.0.1:41001".parse().unwrap()));
    assert_eq!(by["web"].endpoint, Some("127.0.0.1:41002".parse().unwrap()));
    for s in &applied.services {
        assert_eq!(s.action, Action::Create, "{s:?}");
        assert!(
            s.health.is_none() && s.error.is_none(),
            "no per-service gate: {s:?}"
        );
    }
    assert!(applied.removed.is_empty());

    // Output was streamed as events, attributed to services where a line names one.
    let evs = drain(&mut rx);
    assert!(evs.iter().all(|e| e.stage == Stage::Provision), "{evs:?}");
    assert!(evs.iter().any(|e| {
        e.message
            .contains("Terraform has been successfully initialized!")
    }));
    assert!(evs.iter().any(|e| {
        e.message
            .starts_with("Plan: 8 to add, 0 to change, 0 to destroy.")
    }));
    assert!(
        evs.iter()
            .any(|e| e.message.starts_with("Apply complete! Resources: 8 added"))
    );
    let creating = evs
        .iter()
        .find(|e| e.message == "docker_container.app[\"api\"]: Creating...")
        .expect("apply progress streamed");
    assert_eq!(
        creating.service.as_ref().map(ServiceName::as_str),
        Some("api")
    );
    assert!(
        !evs.iter()
            .any(|e| e.message.contains("\"resource_changes\"")),
        "machine JSON is not streamed"
    );
}

#[tokio::test]
async fn tfvars_holding_env_values_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let fx = Fixture::new();
    let tf = fx.provisioner(&[]);
    let stack = fx.stack();
    // An earlier iac wrote the same bytes world-readable.
    let work = fx.work_dir();
    std::fs::create_dir_all(&work).unwrap();
    let limited = with_limits(&stack, &TerraformConfig::default().limits);
    let old = tfvars_json(&render_tfvars(&limited, None, DOCKER_HOST).unwrap());
    assert!(old.contains("\"GREETING\": \"hi\""), "env values are in it");
    std::fs::write(work.join(TFVARS_FILE), &old).unwrap();
    std::fs::set_permissions(
        work.join(TFVARS_FILE),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    std::fs::set_permissions(&work, std::fs::Permissions::from_mode(0o755)).unwrap();

    tf.apply(&stack, gate(), &Events::discard())
        .await
        .expect("apply");
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&work.join(TFVARS_FILE)), 0o600, "{TFVARS_FILE}");
    assert_eq!(
        mode(&work),
        0o700,
        "the work dir also holds terraform.tfstate and plans with the same values"
    );
    assert_eq!(
        std::fs::read_to_string(work.join(TFVARS_FILE)).unwrap(),
        old
    );
    // No temp file left behind; `iac plan`'s copy is private too (and removed afterwards).
    let names: Vec<String> = std::fs::read_dir(&work)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".tmp-"))
        .collect();
    assert!(names.is_empty(), "{names:?}");
}

#[tokio::test]
async fn redeploy_keeps_unchanged_and_replaces_changed_services() {
    let fx = Fixture::new();
    let tf = fx.provisioner(&[]);
    let first = tf
        .apply(&fx.stack(), gate(), &Events::discard())
        .await
        .unwrap();

    let again = tf
        .apply(&fx.stack(), gate(), &Events::discard())
        .await
        .unwrap();
    assert!(
        again.services.iter().all(|s| s.action == Action::Unchanged),
        "{again:?}"
    );
    assert_eq!(
        again
            .services
            .iter()
            .map(|s| s.endpoint)
            .collect::<Vec<_>>(),
        first
            .services
            .iter()
            .map(|s| s.endpoint)
            .collect::<Vec<_>>()
    );

    // Change web only.
    let mut i = input(fx.dir.path());
    i.services[0].image = "iac/demo-web:fedcba987654".into();
    let changed = tf
        .apply(&plan(&i), gate(), &Events::discard())
        .await
        .unwrap();
    let by: BTreeMap<&str, _> = changed
        .services
        .iter()
        .map(|s| (s.service.as_str(), s))
        .collect();
    assert_eq!(by["api"].action, Action::Unchanged);
    assert_eq!(by["web"].action, Action::Replace);
    assert_eq!(by["api"].endpoint, Some("127.0.0.1:41001".parse().unwrap()));
    assert_eq!(
        by["web"].endpoint,
        Some("127.0.0.1:41003".parse().unwrap()),
        "replacement got a new port"
    );

    // Drop api from the stack: it is removed.
    i.services.retain(|s| s.name.as_str() == "web");
    let shrunk = tf
        .apply(&plan(&i), gate(), &Events::discard())
        .await
        .unwrap();
    assert_eq!(shrunk.removed, [ServiceName::new("api").unwrap()]);
    assert_eq!(shrunk.services.len(), 1);

    let running = tf
        .running(&ProjectName::new("demo").unwrap())
        .await
        .unwrap();
    assert_eq!(running.len(), 1);
    assert_eq!(running[0].service.as_str(), "web");
    assert_eq!(running[0].image, "iac/demo-web:fedcba987654");
    let limited = with_limits(&plan(&i), &TerraformConfig::default().limits);
    assert_eq!(running[0].spec_hash, limited.services[0].spec_hash);
    assert_eq!(
        running[0].endpoint,
        Some("127.0.0.1:41003".parse().unwrap())
    );
}

#[tokio::test]
async fn diff_maps_the_plan_without_changing_what_apply_wrote() {
    let fx = Fixture::new();
    let tf = fx.provisioner(&[]);
    // Nothing deployed: everything is a create.
    let changes = tf.diff(&fx.stack()).await.unwrap();
    assert_eq!(
        changes
            .iter()
            .map(|c| (c.service.as_str(), c.action))
            .collect::<Vec<_>>(),
        [("api", Action::Create), ("web", Action::Create)]
    );
    assert_eq!(
        fx.argvs()[1],
        format!("plan -input=false -no-color -var-file={DIFF_TFVARS_FILE} -out=iac-diff.tfplan")
    );
    assert_eq!(fx.argvs()[2], "show -json -no-color iac-diff.tfplan");
    assert!(
        !fx.argvs().iter().any(|a| a.starts_with("apply")),
        "diff never applies"
    );
    let project = ProjectName::new("demo").unwrap();
    assert!(tf.running(&project).await.unwrap().is_empty());
    let calls = fx.calls().len();
    assert!(
        tf.destroy(&project, &Events::discard())
            .await
            .unwrap()
            .is_empty(),
        "plan only: nothing to destroy"
    );
    assert_eq!(
        fx.calls().len(),
        calls,
        "destroy after a mere plan runs no terraform"
    );

    tf.apply(&fx.stack(), gate(), &Events::discard())
        .await
        .unwrap();
    let applied_tfvars = std::fs::read_to_string(fx.work_dir().join(TFVARS_FILE)).unwrap();
    let mut i = input(fx.dir.path());
    i.services[1].env.insert("NEW".into(), "1".into());
    i.services.retain(|s| s.name.as_str() == "api");
    let changes = tf.diff(&plan(&i)).await.unwrap();
    assert_eq!(
        changes
            .iter()
            .map(|c| (c.service.as_str(), c.action))
            .collect::<Vec<_>>(),
        [("api", Action::Replace), ("web", Action::Remove)]
    );
    assert!(
        changes[0]
            .reason
            .contains("docker_container.app[\"api\"] is replaced"),
        "{}",
        changes[0].reason
    );
    assert_eq!(
        std::fs::read_to_string(fx.work_dir().join(TFVARS_FILE)).unwrap(),
        applied_tfvars
    );
    assert!(
        !fx.work_dir().join(DIFF_TFVARS_FILE).exists()
            && !fx.work_dir().join("iac-diff.tfplan").exists()
    );
}

#[tokio::test]
async fn failing_apply_is_a_tool_error_naming_the_step_and_exit_code() {
    let fx = Fixture::new();
    let tf = fx.provisioner(&[("FAKE_TF_FAIL", "apply"), ("FAKE_TF_FAIL_CODE", "3")]);
    let (events, mut rx) = Events::channel();
    let err = tf.apply(&fx.stack(), gate(), &events).await.unwrap_err();
    match &err {
        ProvisionError::Tool {
            tool,
            step,
            code,
            message,
        } => {
            assert!(tool.ends_with("bin/terraform"), "{tool}");
            assert_eq!(step, "apply");
            assert_eq!(*code, Some(3));
            assert!(message.contains("Unable to create container"), "{message}");
            assert!(
                message.contains("with docker_container.app[\"api\"]"),
                "last stderr lines: {message}"
            );
        }
        other => panic!("expected a Tool error, got {other:?}"),
    }
    assert!(err.to_string().contains("apply failed (exit 3)"), "{err}");
    assert!(
        !fx.argvs().iter().any(|a| a.starts_with("output")),
        "no output read after a failed apply"
    );
    let evs = drain(&mut rx);
    assert!(
        evs.iter()
            .any(|e| e.message.starts_with("Error: Unable to create container")),
        "stderr streamed"
    );
}

#[tokio::test]
async fn failing_init_names_init() {
    let fx = Fixture::new();
    let tf = fx.provisioner(&[("FAKE_TF_FAIL", "init")]);
    let err = tf
        .apply(&fx.stack(), gate(), &Events::discard())
        .await
        .unwrap_err();
    let ProvisionError::Tool {
        step,
        code,
        message,
        ..
    } = &err
    else {
        panic!("{err:?}")
    };
    assert_eq!((step.as_str(), *code), ("init", Some(1)));
    assert!(message.contains("registry.terraform.io"), "{message}");
    assert_eq!(
        fx.argvs(),
        ["init -input=false -no-color"],
        "nothing runs after a failed init"
    );
}

#[tokio::test]
async fn missing_binary_is_a_clear_error() {
    let fx = Fixture::new();
    let mut cfg = fx.config(&[]);
    cfg.binary = fx
        .dir
        .path()
        .join("no-such-terraform")
        .display()
        .to_string();
    let err = TerraformProvisioner::new(cfg)
        .apply(&fx.stack(), gate(), &Events::discard())
        .await
        .unwrap_err();
    let ProvisionError::Tool {
        step,
        code,
        message,
        ..
    } = &err
    else {
        panic!("{err:?}")
    };
    assert_eq!((step.as_str(), *code), ("init", None));
    assert!(
        message.contains("cannot run") && message.contains("no-such-terraform"),
        "{message}"
    );
}

#[tokio::test]
async fn a_module_that_does_not_declare_the_rendered_keys_fails_before_terraform_runs() {
    let fx = Fixture::new();
    let module = fx.dir.path().join("my-module");
    std::fs::create_dir_all(&module).unwrap();
    for (name, text) in infra_files() {
        let text = if name == "variables.tf" {
            text.replace("variable \"docker_host\"", "variable \"engine\"")
        } else {
            text
        };
        std::fs::write(module.join(name), text).unwrap();
    }
    let mut cfg = fx.config(&[]);
    cfg.module_source = Some(module.clone());
    let err = TerraformProvisioner::new(cfg.clone())
        .apply(&fx.stack(), gate(), &Events::discard())
        .await
        .unwrap_err();
    assert!(matches!(err, ProvisionError::Invalid(_)), "{err:?}");
    assert!(err.to_string().contains("sets \"docker_host\""), "{err}");
    assert!(fx.calls().is_empty(), "terraform never ran");

    // A tweaked module that still declares everything is used instead of the embedded one.
    let tweaked = std::fs::read_to_string(manifest_dir().join("../../infra/main.tf"))
        .unwrap()
        .replace("restart      = \"no\"", "restart      = \"unless-stopped\"");
    std::fs::write(module.join("main.tf"), &tweaked).unwrap();
    std::fs::write(
        module.join("variables.tf"),
        std::fs::read_to_string(manifest_dir().join("../../infra/variables.tf")).unwrap(),
    )
    .unwrap();
    TerraformProvisioner::new(cfg)
        .apply(&fx.stack(), gate(), &Events::discard())
        .await
        .unwrap();
    assert_eq!(
        std::fs::read_to_string(fx.work_dir().join("main.tf")).unwrap(),
        tweaked
    );
}

#[tokio::test]
async fn destroy_removes_everything_and_is_idempotent() {
    let fx = Fixture::new();
    let tf = fx.provisioner(&[]);
    let project = ProjectName::new("demo").unwrap();

    // Never deployed: nothing to do, terraform not even run.
    assert!(
        tf.destroy(&project, &Events::discard())
            .await
            .unwrap()
            .is_empty()
    );
    assert!(tf.running(&project).await.unwrap().is_empty());
    assert!(fx.calls().is_empty());

    tf.apply(&fx.stack(), gate(), &Events::discard())
        .await
        .unwrap();
    assert_eq!(tf.running(&project).await.unwrap().len(), 2);
    fx.clear_log();

    let (events, mut rx) = Events::channel();
    let mut removed = tf.destroy(&project, &events).await.unwrap();
    removed.sort();
    assert_eq!(
        removed,
        [
            "demo-api",
            "demo-api-envoy",
            "demo-web",
            "demo-web-envoy",
            "iacnet"
        ]
    );
    assert_eq!(
        fx.argvs(),
        [
            "output -json -no-color",
            "destroy -input=false -no-color -auto-approve"
        ]
    );
    let evs = drain(&mut rx);
    assert!(evs.iter().all(|e| e.stage == Stage::Destroy));
    assert!(
        evs.iter().any(|e| e
            .message
            .starts_with("Destroy complete! Resources: 8 destroyed.")),
        "{evs:?}"
    );
    assert!(
        evs.iter().any(
            |e| e.service.as_ref().map(ServiceName::as_str) == Some("web")
                && e.message
                    .starts_with("docker_container.app[\"web\"]: Destroying")
        ),
        "{evs:?}"
    );
    assert!(
        tf.running(&project).await.unwrap().is_empty(),
        "nothing runs after destroy"
    );

    // Again: nothing left, still fine.
    assert!(
        tf.destroy(&project, &Events::discard())
            .await
            .unwrap()
            .is_empty()
    );

    // A failing destroy names the step.
    tf.apply(&fx.stack(), gate(), &Events::discard())
        .await
        .unwrap();
    let failing = fx.provisioner(&[("FAKE_TF_FAIL", "destroy"), ("FAKE_TF_FAIL_CODE", "2")]);
    let err = failing
        .destroy(&project, &Events::discard())
        .await
        .unwrap_err();
    let ProvisionError::Tool { step, code, .. } = &err else {
        panic!("{err:?}")
    };
    assert_eq!((step.as_str(), *code), ("destroy", Some(2)));
}

#[tokio::test]
async fn kept_services_stay_deployed_across_an_apply() {
    let fx = Fixture::new();
    let tf = fx.provisioner(&[]);
    tf.apply(&fx.stack(), gate(), &Events::discard())
        .await
        .unwrap();
    // web failed to prepare this time.
    let mut i = input(fx.dir.path());
    i.services.retain(|s| s.name.as_str() == "api");
    i.keep = vec![ServiceName::new("web").unwrap()];
    let applied = tf
        .apply(&plan(&i), gate(), &Events::discard())
        .await
        .unwrap();
    assert!(applied.removed.is_empty(), "{applied:?}");
    assert_eq!(
        applied
            .services
            .iter()
            .map(|s| s.service.as_str())
            .collect::<Vec<_>>(),
        ["api"]
    );
    let running = tf
        .running(&ProjectName::new("demo").unwrap())
        .await
        .unwrap();
    assert_eq!(
        running
            .iter()
            .map(|r| r.service.as_str())
            .collect::<Vec<_>>(),
        ["api", "web"]
    );
}

#[test]
fn provisioner_is_named_terraform() {
    assert_eq!(
        TerraformProvisioner::new(TerraformConfig::default()).name(),
        "terraform"
    );
}

#[tokio::test]
async fn concurrent_runs_in_one_project_serialize() {
    let fx = Fixture::new();
    let tf = fx.provisioner(&[]);
    let stack = fx.stack();
    let events = Events::discard();
    let (a, b) = tokio::join!(
        tf.apply(&stack, gate(), &events),
        tf.apply(&stack, gate(), &events)
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    let mut actions: Vec<Action> = a
        .services
        .iter()
        .chain(&b.services)
        .map(|s| s.action)
        .collect();
    actions.sort_by_key(|a| a.as_str());
    assert_eq!(
        actions,
        [
            Action::Create,
            Action::Create,
            Action::Unchanged,
            Action::Unchanged
        ]
    );
    let one_run = [
        "init -input=false -no-color",
        "plan -input=false -no-color -out=iac.tfplan",
        "show -json -no-color iac.tfplan",
        "apply -input=false -no-color -auto-approve iac.tfplan",
        "output -json -no-color",
    ];
    let want: Vec<&str> = one_run.iter().chain(one_run.iter()).copied().collect();
    assert_eq!(
        fx.argvs(),
        want,
        "the second run starts after the first ends"
    );
}

/// With an engine, the containers a run destroys leave their last log lines first: a replaced
/// service's pair (`replaced`), a service gone from the stack (`removed`), every pair on
/// `destroy` (`destroyed`), read by the names the previous run's outputs give. An unreadable
/// log is a warning, and the run goes on.
#[tokio::test]
async fn replaced_removed_and_destroyed_containers_leave_their_log_tails() {
    use iac_backends::engine::{EngineError, MockEngine};
    let fx = Fixture::new();
    let mut engine = MockEngine::new();
    engine.expect_log_tail().returning(|name, lines, _| {
        assert_eq!(lines, iac_core::history::LOG_TAIL_LINES + 1);
        if name == "demo-api-envoy" {
            return Err(EngineError::new(
                "reading the log",
                Some(501),
                "log driver none",
            ));
        }
        Ok(format!("first\nlast words of {name}\n"))
    });
    let tf = fx.provisioner(&[]).with_engine(Arc::new(engine));
    let project = ProjectName::new("demo").unwrap();
    // The first apply destroys nothing: no log is read.
    let (events, tails) = Events::discard().with_log_tails();
    tf.apply(&fx.stack(), gate(), &events).await.unwrap();
    assert!(tails.take().0.is_empty());

    let seen = |tails: &iac_core::event::LogTails| -> Vec<(String, String, String, String)> {
        let mut v: Vec<_> = tails
            .take()
            .0
            .into_iter()
            .map(|t| {
                assert_eq!(
                    t.lines.last().unwrap(),
                    &format!("last words of {}", t.container)
                );
                (t.service, t.container, t.role, t.reason)
            })
            .collect();
        v.sort();
        v
    };
    let row = |s: &str, c: &str, r: &str, why: &str| {
        (s.to_string(), c.to_string(), r.to_string(), why.to_string())
    };
    // web changes: its pair is replaced.
    let mut i = input(fx.dir.path());
    i.services[0].image = "iac/demo-web:fedcba987654".into();
    let (events, tails) = Events::discard().with_log_tails();
    tf.apply(&plan(&i), gate(), &events).await.unwrap();
    assert_eq!(
        seen(&tails),
        [
            row("web", "demo-web", "app", "replaced"),
            row("web", "demo-web-envoy", "sidecar", "replaced"),
        ]
    );
    // api leaves the stack: removed (its sidecar's log cannot be read: a warning).
    i.services.retain(|s| s.name.as_str() == "web");
    let (events, mut rx) = Events::channel();
    let (events, tails) = events.with_log_tails();
    let shrunk = tf.apply(&plan(&i), gate(), &events).await.unwrap();
    assert_eq!(shrunk.removed, [ServiceName::new("api").unwrap()]);
    assert_eq!(seen(&tails), [row("api", "demo-api", "app", "removed")]);
    drop(events);
    assert!(
        drain(&mut rx).iter().any(|e| e
            .message
            .contains("could not save the last log lines of demo-api-envoy")),
        "the unreadable log is a warning"
    );
    // destroy: every pair left.
    let (events, tails) = Events::discard().with_log_tails();
    tf.destroy(&project, &events).await.unwrap();
    assert_eq!(
        seen(&tails),
        [
            row("web", "demo-web", "app", "destroyed"),
            row("web", "demo-web-envoy", "sidecar", "destroyed"),
        ]
    );
}
