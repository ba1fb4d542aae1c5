//! One shape for every target: a stack that uses every field of the plan's service type
//! ([`ServiceStack`], its two [`ContainerSpec`]s, their [`Privileges`] and [`Limits`]) is rendered
//! by every target's pure builder — docker (`engine::create_body`, the create request the docker
//! provisioner sends), swarm (`swarm::spec::service_spec` and the pod image's Dockerfile),
//! terraform (`render_tfvars`), kubernetes (`kubernetes::render`) and compose
//! (`compose::render`) — and each field is looked up in each output. A field a target does not
//! carry must be explained in the table "What each target carries" of docs/provisioners.md
//! (which the test reads): a cell is `yes` (asserted here) or the reason it is not carried. A
//! `yes` the output does not back fails, and so does a reason where the output does carry the
//! field (the table would be stale).
//!
//! The plan's types are destructured exhaustively below: a field added to them does not compile
//! here until it is walked, and the table must gain its row.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use iac_backends::provision::swarm::image::pod_dockerfile;
use iac_backends::provision::swarm::spec::{
    ObjectRef, PodInput, PodObjects, SwarmSettings, service_spec, spec_hash,
};
use iac_backends::provision::terraform::render_tfvars;
use iac_backends::provision::{ContainerLimits, with_limits};
use iac_backends::{compose, engine, kubernetes};
use iac_core::plan::{PlanInput, PlannedService, plan};
use iac_core::stack::{ContainerSpec, NetworkMode, PodFilter, Privileges, ServiceStack};
use iac_core::{
    CertPaths, EdgeBind, EgressPolicy, IssuedCerts, Limits, Mount, ProjectName, ServiceName, Stack,
};
use serde_json::{Value, json};

const TARGETS: [&str; 5] = ["docker", "swarm", "terraform", "kubernetes", "compose"];

/// A stack using every field: replicas, limits (pids and memory on both containers), an app
/// command, environment with a `$`, an edge on a fixed host port, an app mount, distinct stop
/// timeouts (none equal to a target's default), controlled egress.
fn stack(pids: bool) -> Stack {
    let svc = PlannedService {
        name: ServiceName::new("pay").unwrap(),
        image: "iac/shop-pay:0123456789ab".into(),
        envoy_config: "/state/shop/services/pay/envoy.yaml".into(),
        envoy_config_digest: "sha256:pay-config".into(),
        certs: IssuedCerts {
            paths: CertPaths {
                ca: "/secrets/ca.pem".into(),
                cert: "/secrets/shop/pay.pem".into(),
                key: "/secrets/shop/pay.key".into(),
            },
            fingerprint: "sha256:pay-certs".into(),
        },
        app_port: Some(8000),
        env: [("PRICE".to_string(), "costs $5".to_string())].into(),
        edge: Some(EdgeBind {
            port: Some(8081),
            ..EdgeBind::loopback()
        }),
        replicas: 3,
        egress: iac_core::EgressPolicy::Allow(
            iac_core::egress::parse_rules(&["api.stripe.com:443"]).unwrap(),
        ),
    };
    let mut s = plan(&PlanInput {
        project: ProjectName::new("shop").unwrap(),
        network: "iacnet".into(),
        envoy_image: "iac/envoy:1.40.0".into(),
        otel_endpoint: None,
        services: vec![svc],
        keep: vec![],
        sandbox: None,
    });
    let app = &mut s.services[0].app;
    app.cmd = vec![
        "iac-agent".into(),
        "--".into(),
        "python".into(),
        "-m".into(),
        "pay".into(),
    ];
    app.mounts.push(Mount {
        source: "/srv/pay/data".into(),
        target: "/data".into(),
        read_only: false,
    });
    app.stop_timeout_secs = 17;
    s.services[0].envoy.stop_timeout_secs = 7;
    with_limits(
        &s,
        &ContainerLimits {
            app_pids: if pids { 333 } else { 0 },
            app_memory_mib: 700,
            sidecar_pids: if pids { 111 } else { 0 },
            sidecar_memory_mib: 90,
        },
    )
}

fn files(stack: &Stack) -> BTreeMap<PathBuf, Vec<u8>> {
    compose::mounted_files(stack)
        .into_iter()
        .map(|p| {
            let body = format!("content of {}\n", p.display());
            (p, body.into_bytes())
        })
        .collect()
}

/// What one target made of the service, where a field of each role is looked up.
struct Scopes {
    app: Value,
    envoy: Value,
    service: Value,
}

fn without(mut v: Value, pointer: &str) -> Value {
    if let Some(x) = v.pointer_mut(pointer) {
        *x = Value::Null;
    }
    v
}

fn render(target: &str, stack: &Stack) -> Scopes {
    let svc = &stack.services[0];
    match target {
        "docker" => {
            let c = |c: &ContainerSpec| json!({ "name": c.name, "create": serde_json::to_value(engine::create_body(c)).unwrap() });
            Scopes {
                app: c(&svc.app),
                envoy: c(&svc.envoy),
                service: json!([c(&svc.app), c(&svc.envoy)]),
            }
        }
        "swarm" => {
            let settings = SwarmSettings::default();
            let obj = |n: &str| ObjectRef {
                id: format!("id-{n}"),
                name: format!("shop-pay-{n}-0123"),
            };
            let hash = spec_hash(svc, &settings, &svc.envoy.image);
            let image_cmd: Vec<String> = ["iac-agent", "--", "python", "/app/main.py"]
                .map(String::from)
                .into();
            let spec = service_spec(&PodInput {
                project: &stack.project,
                svc,
                network: &stack.network.name,
                image: "iac/shop-pay:pod-0123456789abcdef",
                image_cmd: &image_cmd,
                objects: &PodObjects {
                    envoy_config: obj("envoy-config"),
                    ca: obj("ca"),
                    cert: obj("cert"),
                    key: obj("key"),
                },
                settings: &settings,
                hash: &hash,
            })
            .unwrap();
            // One task is both containers: the spec and the pod image it runs.
            let all = json!({
                "spec": serde_json::to_value(spec).unwrap(),
                "pod_image": pod_dockerfile(&svc.app.image, &svc.envoy.image),
            });
            Scopes {
                app: all.clone(),
                envoy: all.clone(),
                service: all,
            }
        }
        "terraform" => {
            let tf = serde_json::to_value(
                render_tfvars(stack, None, "unix:///var/run/docker.sock").unwrap(),
            )
            .unwrap();
            let one = tf["services"]["pay"].clone();
            let around = json!({ "network": tf["network"], "mesh_port": tf["mesh_port"], "edge_port": tf["edge_port"] });
            Scopes {
                app: json!([without(one.clone(), "/envoy"), around]),
                envoy: json!([without(one.clone(), "/app"), around]),
                service: tf,
            }
        }
        "kubernetes" => {
            let out = kubernetes::render(
                stack,
                &files(stack),
                &kubernetes::KubernetesOptions::default(),
            )
            .unwrap();
            let yaml = &out.iter().find(|m| m.file == "pay.yaml").unwrap().yaml;
            let docs: Vec<Value> = yaml
                .split("---\n")
                .map(|d| yaml_serde::from_str(d).unwrap())
                .collect();
            let strip = |pointer: &str| {
                Value::Array(docs.iter().map(|d| without(d.clone(), pointer)).collect())
            };
            Scopes {
                app: strip("/spec/template/spec/initContainers"),
                envoy: strip("/spec/template/spec/containers"),
                service: Value::Array(docs.clone()),
            }
        }
        "compose" => {
            let out = compose::render(stack, &files(stack)).unwrap();
            let doc: Value = yaml_serde::from_str(out.compose_yaml()).unwrap();
            // Compose reads `$$` as `$`.
            let doc = unescape(doc);
            let nets = doc["networks"].clone();
            Scopes {
                app: doc["services"]["pay"].clone(),
                envoy: json!([doc["services"]["pay.envoy"], nets]),
                service: doc,
            }
        }
        other => panic!("unknown target {other}"),
    }
}

fn unescape(v: Value) -> Value {
    match v {
        Value::String(s) => Value::String(s.replace("$$", "$")),
        Value::Array(a) => Value::Array(a.into_iter().map(unescape).collect()),
        Value::Object(o) => Value::Object(o.into_iter().map(|(k, v)| (k, unescape(v))).collect()),
        other => other,
    }
}

/// One way a value can show up in a target's output.
#[derive(Debug, Clone)]
enum Needle {
    /// A string (or object key) equal to it.
    Str(String),
    /// A string (or object key) containing it.
    Sub(String),
    /// A string ending with it.
    EndsWith(String),
    /// A number equal to it (or a string spelling it).
    Num(i64),
    /// `KEY: VALUE` in an object, `{name: KEY, value: VALUE}`, or the string `KEY=VALUE`.
    Pair(String, String),
}

use Needle::*;

fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn found(v: &Value, n: &Needle) -> bool {
    let here = match (v, n) {
        (Value::String(s), Str(x)) => s == x,
        (Value::String(s), Sub(x)) => s.contains(x.as_str()),
        (Value::String(s), EndsWith(x)) => s.ends_with(x.as_str()),
        (Value::String(s), Num(x)) => *s == x.to_string(),
        (Value::Number(num), Num(x)) => num.as_i64() == Some(*x),
        (Value::String(s), Pair(k, x)) => *s == format!("{k}={x}"),
        (Value::Object(o), Pair(k, x)) => {
            o.get(k).and_then(scalar).as_deref() == Some(x.as_str())
                || (o.get("name").and_then(scalar).as_deref() == Some(k.as_str())
                    && o.get("value").and_then(scalar).as_deref() == Some(x.as_str()))
        }
        (Value::Object(o), Sub(x)) => o.keys().any(|k| k.contains(x.as_str())),
        (Value::Object(o), Str(x)) => o.contains_key(x.as_str()),
        _ => false,
    };
    here || match v {
        Value::Array(a) => a.iter().any(|x| found(x, n)),
        Value::Object(o) => o.values().any(|x| found(x, n)),
        _ => false,
    }
}

/// Every item must be found, each through one of its needles.
type Requirement = Vec<Vec<Needle>>;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Scope {
    App,
    Envoy,
    Service,
}

/// Every field of the service, what proves it is carried, and where to look. Exhaustive
/// destructuring: a new field of the plan's types does not compile here until it is walked.
fn walk(svc: &ServiceStack) -> Vec<(String, Scope, Requirement)> {
    let ServiceStack {
        service,
        app,
        envoy,
        spec_hash,
        replicas,
        pod_filter,
        egress,
    } = svc;
    let mut out = vec![
        (
            "service".to_string(),
            Scope::Service,
            vec![vec![Str(service.to_string())]],
        ),
        (
            "spec_hash".to_string(),
            Scope::Service,
            vec![vec![Sub(spec_hash.clone())]],
        ),
        (
            "replicas".to_string(),
            Scope::Service,
            vec![vec![
                Pair("replicas".into(), replicas.to_string()),
                Pair("Replicas".into(), replicas.to_string()),
            ]],
        ),
    ];
    let PodFilter {
        table,
        inbound_port,
    } = pod_filter.clone().expect("the plan filters every pod");
    out.push((
        "pod_filter".to_string(),
        Scope::Envoy,
        vec![
            vec![
                Sub(format!("table inet {table}")),
                Pair("kind".into(), "NetworkPolicy".into()),
            ],
            vec![
                Num(i64::from(inbound_port)),
                Sub(format!("dport {inbound_port}")),
            ],
        ],
    ));
    // Controlled egress: enforced (the pod filter's outbound chain, or an Egress
    // NetworkPolicy) and the app sent through the sidecar (proxy variables). The allowlist
    // itself is in the rendered envoy.yaml every target mounts (stand-in content here).
    assert!(
        matches!(egress, EgressPolicy::Allow(_)),
        "the walked stack controls egress"
    );
    out.push((
        "egress".to_string(),
        Scope::Service,
        vec![
            vec![Sub("chain output".into()), Str("Egress".into())],
            vec![Sub("HTTPS_PROXY".into())],
        ],
    ));
    let sum = |f: fn(&Limits) -> Option<i64>| Some(f(&app.limits)? + f(&envoy.limits)?);
    let pod_pids = sum(|l| l.pids);
    let pod_memory = sum(|l| l.memory_bytes);
    for (role, scope, c) in [("app", Scope::App, app), ("envoy", Scope::Envoy, envoy)] {
        let ContainerSpec {
            name,
            image,
            cmd,
            env,
            labels,
            network,
            mounts,
            ports,
            stop_timeout_secs,
            privileges,
            limits,
            restart,
        } = c;
        let f = |field: &str| format!("{role}.{field}");
        out.push((f("name"), scope, vec![vec![Str(name.clone())]]));
        out.push((
            f("image"),
            scope,
            vec![vec![Str(image.clone()), Sub(format!("FROM {image}"))]],
        ));
        out.push((
            f("cmd"),
            scope,
            cmd.iter().map(|a| vec![Str(a.clone())]).collect(),
        ));
        out.push((
            f("env"),
            scope,
            env.iter()
                .map(|(k, v)| vec![Pair(k.clone(), v.clone())])
                .collect(),
        ));
        out.push((
            f("labels"),
            scope,
            labels
                .iter()
                .map(|(k, v)| vec![Pair(k.clone(), v.clone())])
                .collect(),
        ));
        out.push((
            f("network"),
            scope,
            match network {
                NetworkMode::Network { name, aliases } => std::iter::once(vec![Str(name.clone())])
                    .chain(aliases.iter().map(|a| vec![Str(a.clone())]))
                    .collect(),
                NetworkMode::Container { name } => vec![vec![
                    Str(format!("container:{name}")),
                    Str(format!("service:{service}.envoy")),
                ]],
            },
        ));
        out.push((
            f("mounts"),
            scope,
            mounts
                .iter()
                .flat_map(
                    |Mount {
                         source: _,
                         target,
                         read_only,
                     }| {
                        let t = target.display().to_string();
                        let dir = target
                            .parent()
                            .unwrap_or(Path::new("/"))
                            .display()
                            .to_string();
                        let mut items =
                            vec![vec![EndsWith(t.clone()), Str(dir), Sub(format!("{t}:"))]];
                        if !read_only {
                            // Writable: no read-only marker may be the only way it is mounted.
                            items.push(vec![
                                Pair("read_only".into(), "false".into()),
                                Pair("ReadOnly".into(), "false".into()),
                                Str(format!("./pay{t}:{t}")),
                            ]);
                        }
                        items
                    },
                )
                .collect(),
        ));
        out.push((
            f("ports"),
            scope,
            ports
                .iter()
                .flat_map(|p| {
                    let cp = p.container_port;
                    let mut items = vec![
                        vec![
                            Num(i64::from(cp)),
                            Str(format!("{cp}/tcp")),
                            EndsWith(format!(":{cp}")),
                        ],
                        vec![Str(p.host_ip.clone()), Sub(format!("{}:", p.host_ip))],
                    ];
                    if let Some(h) = p.host_port {
                        items.push(vec![Num(i64::from(h)), Sub(format!(":{h}:"))]);
                    }
                    items
                })
                .collect(),
        ));
        let s = i64::from(*stop_timeout_secs);
        out.push((
            f("stop_timeout_secs"),
            scope,
            vec![vec![Num(s), Str(format!("{s}s")), Num(s * 1_000_000_000)]],
        ));
        let Privileges {
            no_new_privileges,
            cap_drop,
            cap_add,
        } = privileges;
        let mut p: Requirement = cap_drop
            .iter()
            .chain(cap_add)
            .map(|cap| vec![Str(cap.clone())])
            .collect();
        if *no_new_privileges {
            p.push(vec![
                Str("no-new-privileges:true".into()),
                Pair("allowPrivilegeEscalation".into(), "false".into()),
                Pair("NoNewPrivileges".into(), "true".into()),
                Pair("no_new_privileges".into(), "true".into()),
            ]);
        }
        out.push((f("privileges"), scope, p));
        let Limits { pids, memory_bytes } = limits;
        let mut l: Requirement = Vec::new();
        if let Some(p) = pids {
            l.push(
                [Some(*p), pod_pids]
                    .into_iter()
                    .flatten()
                    .map(Num)
                    .collect(),
            );
        }
        if let Some(m) = memory_bytes {
            let mib = (m + (1 << 20) - 1) / (1 << 20);
            l.push(
                [Some(*m), Some(mib), pod_memory]
                    .into_iter()
                    .flatten()
                    .map(Num)
                    .collect(),
            );
        }
        out.push((f("limits"), scope, l));
        out.push((
            f("restart"),
            scope,
            vec![vec![
                Str(restart.as_str().to_string()),
                Pair("Name".into(), restart.as_str().to_string()),
            ]],
        ));
    }
    out
}

/// The table "What each target carries" of docs/provisioners.md: field → target → cell.
fn table() -> BTreeMap<String, BTreeMap<String, String>> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/provisioners.md");
    let text = std::fs::read_to_string(&path).unwrap();
    let section = text
        .split("### What each target carries")
        .nth(1)
        .expect("docs/provisioners.md has a section `### What each target carries`");
    let mut lines = section.lines().skip_while(|l| !l.starts_with('|'));
    let header: Vec<String> = lines
        .next()
        .unwrap()
        .split('|')
        .map(|c| c.trim().to_string())
        .filter(|c| !c.is_empty())
        .collect();
    assert_eq!(header[1..], TARGETS.map(String::from), "table columns");
    let mut out = BTreeMap::new();
    for line in lines.skip(1).take_while(|l| l.starts_with('|')) {
        let cells: Vec<String> = line
            .trim_matches('|')
            .split(" | ")
            .map(|c| c.trim().to_string())
            .collect();
        assert_eq!(cells.len(), 6, "row {line}");
        let field = cells[0].trim_matches('`').to_string();
        let row = TARGETS
            .iter()
            .zip(&cells[1..])
            .map(|(t, c)| (t.to_string(), c.clone()))
            .collect();
        assert!(
            out.insert(field.clone(), row).is_none(),
            "row {field} twice"
        );
    }
    out
}

#[test]
fn every_target_carries_every_field_or_the_table_says_why() {
    let s = stack(true);
    // Terraform's provider has no pids limit: its render refuses one (checked below), so it is
    // walked with the same stack minus the pids limits.
    let s_tf = stack(false);
    let walked = walk(&s.services[0]);
    let table = table();
    let fields: Vec<&String> = walked.iter().map(|(f, _, _)| f).collect();
    let rows: Vec<&String> = table.keys().collect();
    let mut sorted = fields.clone();
    sorted.sort();
    assert_eq!(
        sorted, rows,
        "the table's rows must be exactly the walked fields"
    );
    let mut wrong = Vec::new();
    for target in TARGETS {
        let stack = if target == "terraform" { &s_tf } else { &s };
        let scopes = render(target, stack);
        for (field, scope, req) in walk(&stack.services[0]) {
            let v = match scope {
                Scope::App => &scopes.app,
                Scope::Envoy => &scopes.envoy,
                Scope::Service => &scopes.service,
            };
            let missing: Vec<&Vec<Needle>> = req
                .iter()
                .filter(|alts| !alts.iter().any(|n| found(v, n)))
                .collect();
            let carried = missing.is_empty();
            let cell = &table[&field][target];
            let yes = cell == "yes" || cell.starts_with("yes (");
            if yes && !carried {
                wrong.push(format!(
                    "{field} on {target}: the table says yes, but the output lacks {missing:?}"
                ));
            } else if !yes && carried && !req.is_empty() {
                wrong.push(format!(
                    "{field} on {target}: carried, but the table says {cell:?} (make it `yes`)"
                ));
            } else if !yes && cell.len() < 12 {
                wrong.push(format!("{field} on {target}: {cell:?} is not a reason"));
            }
        }
    }
    assert!(wrong.is_empty(), "\n{}", wrong.join("\n"));
}

#[test]
fn the_walked_stack_uses_every_field() {
    let s = stack(true);
    for (field, _, req) in walk(&s.services[0]) {
        // The app publishes nothing: a container in another's network namespace cannot.
        if field == "app.ports" {
            assert!(req.is_empty());
            continue;
        }
        assert!(!req.is_empty(), "{field} is empty in the walked stack");
    }
}

#[test]
fn terraform_refuses_a_pids_limit_by_name() {
    let err = render_tfvars(&stack(true), None, "unix:///var/run/docker.sock").unwrap_err();
    assert!(err.to_string().contains("pids limit"), "{err}");
}
