//! Kubernetes manifests for a planned [`Stack`] (`iac render --target kubernetes`): a pure render,
//! golden-tested and validated offline against the official schemas. Applying them is
//! `kubectl apply -f DIR` — iac does not talk to a cluster.
//!
//! Per project: a `Namespace` (the project name). Per service, one file with
//! * a `Secret` `<svc>-certs` (ca.pem, cert.pem, key.pem — the same certificates the Docker pod
//!   mounts), mounted read-only at the same paths;
//! * a `ConfigMap` `<svc>-envoy` holding the same rendered `envoy.yaml`;
//! * a `Deployment` `<svc>` whose Pod is the app container (PID 1 `iac-agent`, the same image) plus
//!   Envoy as a native sidecar (an init container with `restartPolicy: Always`, Kubernetes ≥ 1.29),
//!   both with `allowPrivilegeEscalation: false` and every capability dropped but what the agent
//!   needs to drop to the app user; a `grpc:` readiness probe asks the agent's standard health
//!   service on [`HEALTH_PORT`] (`iac-agent --health-listen`, which serves nothing else there);
//! * a `Service` `<svc>` for the mesh port 15000 (peers' Envoys dial `<svc>:15000`, as on Docker);
//! * a `NetworkPolicy` admitting ingress to the pod on the mesh port only — the Kubernetes form of
//!   the Docker pod's packet filter (the kubelet's probes come from the node and are not subject
//!   to it on common network plugins).
//! * when the service's egress is controlled, a `NetworkPolicy` `<svc>-egress` (see
//!   `egress_policy`): DNS, the project's pods on the mesh port, and the ports its `egress:`
//!   list names; the names themselves are checked by the same Envoy egress listener as on Docker.
//!
//! A service with an edge (its stack publishes the edge port) gets an `edge` container port on
//! the sidecar and nothing else: the policy keeps it closed to the cluster, and a person reaches
//! it with `kubectl port-forward deploy/<svc> 8080:15080` (port-forward enters the pod itself).
//!
//! The mesh semantics are the Docker provisioner's: same Envoy config, same certificates, same
//! listeners. Contents of the mounted files come in as `files` (read at the edge by the caller,
//! see [`mounted_files`]), so the render itself does no I/O.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use iac_core::labels::{
    LABEL_PROJECT, LABEL_SERVICE, LABEL_SPEC_HASH, project_labels, service_labels,
};
use iac_core::mesh::{CertPaths, MeshPorts};
use iac_core::plan::{ENVOY_CONFIG_IN_CONTAINER, envoy_argv};
use iac_core::stack::{ServiceStack, Stack};
use serde_json::{Value, json};

/// The port the agent's standard gRPC health service listens on inside the pod (the kubelet's
/// readiness probe target; Istio uses the same number for its health port). Reserved: no app
/// port may be this one ([`iac_core::MeshPorts::reserved`]).
pub const HEALTH_PORT: u16 = iac_core::mesh::HEALTH_PROBE_PORT;

/// Choices the stack does not make. Replicas, capabilities and limits come from the stack
/// (`replicas:` of the repos file, the plan's privileges, `[docker.limits]` filled in by
/// [`crate::provision::with_limits`]); these memory limits apply only where the stack sets none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KubernetesOptions {
    /// The namespace; `None` → the project name.
    pub namespace: Option<String>,
    /// Memory limit of the app container when the stack has none (Kubernetes quantity).
    pub app_memory: String,
    /// Memory limit of the Envoy sidecar when the stack has none.
    pub envoy_memory: String,
}

impl Default for KubernetesOptions {
    fn default() -> Self {
        Self {
            namespace: None,
            app_memory: "1Gi".into(),
            envoy_memory: "256Mi".into(),
        }
    }
}

/// A container's memory limit: the stack's, in bytes, else `fallback`.
fn memory_limit(limits: &iac_core::Limits, fallback: &str) -> Value {
    match limits.memory_bytes {
        Some(bytes) => json!(bytes.to_string()),
        None => json!(fallback),
    }
}

/// A securityContext from the plan's privileges for a container.
fn security_context(p: &iac_core::stack::Privileges) -> Value {
    let mut add = p.cap_add.clone();
    add.sort();
    json!({
        "allowPrivilegeEscalation": !p.no_new_privileges,
        "capabilities": { "drop": p.cap_drop, "add": add },
    })
}

/// One output file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    /// File name, e.g. `00-namespace.yaml`, `api.yaml` (sorted so the namespace comes first).
    pub file: String,
    /// One or more YAML documents separated by `---`.
    pub yaml: String,
}

/// Why a stack cannot be rendered as Kubernetes manifests.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KubernetesError {
    #[error(
        "service {service}: the content of {path} was not provided (expected every path of mounted_files)"
    )]
    /// A mounted file's content was not handed to the render.
    MissingFile {
        /// The service whose pod mounts it.
        service: String,
        /// The host path whose content is missing.
        path: PathBuf,
    },
    #[error("service {service}: {path} is not UTF-8 text (expected the rendered envoy.yaml)")]
    /// A file that goes into a ConfigMap is not UTF-8.
    NotText {
        /// The service whose pod mounts it.
        service: String,
        /// The host path of the file.
        path: PathBuf,
    },
    #[error(
        "service {service}: the Envoy container mounts nothing at {target} (expected the stack's sidecar layout)"
    )]
    /// The sidecar has no mount where the Envoy config or certs are expected.
    MissingMount {
        /// The service.
        service: String,
        /// The container path nothing is mounted at.
        target: String,
    },
}

/// The host files the manifests embed: each service's Envoy config and certificates.
pub fn mounted_files(stack: &Stack) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = stack
        .services
        .iter()
        .flat_map(|s| s.envoy.mounts.iter().map(|m| m.source.clone()))
        .collect();
    out.sort();
    out.dedup();
    out
}

/// Renders the stack. Same inputs, same bytes.
pub fn render(
    stack: &Stack,
    files: &BTreeMap<PathBuf, Vec<u8>>,
    opts: &KubernetesOptions,
) -> Result<Vec<Manifest>, KubernetesError> {
    let ns = opts
        .namespace
        .clone()
        .unwrap_or_else(|| stack.project.to_string());
    let mut out = vec![Manifest {
        file: "00-namespace.yaml".into(),
        yaml: to_yaml(&[json!({
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {
                "name": ns,
                "labels": project_labels(stack.project.as_str()),
            },
        })]),
    }];
    for svc in &stack.services {
        out.push(Manifest {
            file: format!("{}.yaml", svc.service),
            yaml: to_yaml(&service_documents(stack, svc, &ns, files, opts)?),
        });
    }
    Ok(out)
}

fn to_yaml(docs: &[Value]) -> String {
    docs.iter()
        .map(|d| yaml_serde::to_string(d).expect("JSON values serialize to YAML"))
        .collect::<Vec<_>>()
        .join("---\n")
}

/// The mount of the Envoy container whose target is `target`, and its content.
fn mounted<'a>(
    svc: &ServiceStack,
    files: &'a BTreeMap<PathBuf, Vec<u8>>,
    target: &Path,
) -> Result<&'a [u8], KubernetesError> {
    let mount = svc
        .envoy
        .mounts
        .iter()
        .find(|m| m.target == target)
        .ok_or_else(|| KubernetesError::MissingMount {
            service: svc.service.to_string(),
            target: target.display().to_string(),
        })?;
    files
        .get(&mount.source)
        .map(Vec::as_slice)
        .ok_or_else(|| KubernetesError::MissingFile {
            service: svc.service.to_string(),
            path: mount.source.clone(),
        })
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn dir_of(p: &Path) -> String {
    p.parent()
        .map(|d| d.display().to_string())
        .unwrap_or_else(|| "/".into())
}

fn service_documents(
    stack: &Stack,
    svc: &ServiceStack,
    ns: &str,
    files: &BTreeMap<PathBuf, Vec<u8>>,
    opts: &KubernetesOptions,
) -> Result<Vec<Value>, KubernetesError> {
    let name = svc.service.to_string();
    let project = stack.project.to_string();
    let mesh = MeshPorts::default();
    let selector = json!({ LABEL_PROJECT: project, LABEL_SERVICE: name });
    let labels = json!(service_labels(&project, &name));
    let meta = |suffix: &str| {
        json!({
            "name": format!("{name}{suffix}"),
            "namespace": ns,
            "labels": labels,
        })
    };

    let certs = CertPaths::in_container();
    let b64 = |bytes: &[u8]| base64::engine::general_purpose::STANDARD.encode(bytes);
    let mut secret_data = serde_json::Map::new();
    for path in [&certs.ca, &certs.cert, &certs.key] {
        secret_data.insert(file_name(path), json!(b64(mounted(svc, files, path)?)));
    }
    let envoy_target = Path::new(ENVOY_CONFIG_IN_CONTAINER);
    let envoy_bytes = mounted(svc, files, envoy_target)?;
    let envoy_yaml = std::str::from_utf8(envoy_bytes).map_err(|_| KubernetesError::NotText {
        service: name.clone(),
        path: envoy_target.into(),
    })?;

    let secret = json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": meta("-certs"),
        "type": "Opaque",
        "data": secret_data,
    });
    let config_map = json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": meta("-envoy"),
        "data": { file_name(envoy_target): envoy_yaml },
    });

    // The app container's environment is the Docker pod's, plus the health listener for probes.
    let mut env: Vec<Value> = svc
        .app
        .env
        .iter()
        .map(|(k, v)| json!({ "name": k, "value": v }))
        .collect();
    env.push(json!({ "name": "IAC_HEALTH_LISTEN", "value": format!("0.0.0.0:{HEALTH_PORT}") }));
    // The same Envoy command line as on Docker and Swarm, `envoy` itself as the command.
    let envoy_args: Vec<String> = envoy_argv(&stack.project, &svc.service)
        .into_iter()
        .skip(1)
        .collect();
    let mut envoy_ports =
        vec![json!({ "name": "mesh", "containerPort": mesh.inbound, "protocol": "TCP" })];
    if svc.published(mesh.edge).is_some() {
        envoy_ports.push(json!({ "name": "edge", "containerPort": mesh.edge, "protocol": "TCP" }));
    }
    let mut app_container = json!({
        "name": "app",
        "image": svc.app.image,
        "env": env,
        "ports": [{ "name": "health", "containerPort": HEALTH_PORT, "protocol": "TCP" }],
        "readinessProbe": {
            "grpc": { "port": HEALTH_PORT, "service": "" },
            "periodSeconds": 2,
            "failureThreshold": 3,
        },
        "resources": { "limits": { "memory": memory_limit(&svc.app.limits, &opts.app_memory) } },
        // The plan's: PID 1 is iac-agent as root, which needs SETUID/SETGID to drop to the app
        // user and KILL to stop what the app left behind.
        "securityContext": security_context(&svc.app.privileges),
    });
    // The plan's command, when it sets one, replaces the image's CMD (as on Docker).
    if !svc.app.cmd.is_empty() {
        app_container["args"] = json!(svc.app.cmd);
    }
    let envoy_container = json!({
        "name": "envoy",
        "image": svc.envoy.image,
        "command": ["envoy"],
        "args": envoy_args,
        // A native sidecar: started before the app, kept running beside it, stopped after it.
        "restartPolicy": "Always",
        "ports": envoy_ports,
        "startupProbe": {
            "tcpSocket": { "port": mesh.inbound },
            "periodSeconds": 1,
            "failureThreshold": 30,
        },
        "resources": { "limits": { "memory": memory_limit(&svc.envoy.limits, &opts.envoy_memory) } },
        "securityContext": {
            "allowPrivilegeEscalation": false,
            "capabilities": { "drop": ["ALL"] },
        },
        "volumeMounts": [
            { "name": "envoy-config", "mountPath": dir_of(envoy_target), "readOnly": true },
            { "name": "certs", "mountPath": dir_of(&certs.ca), "readOnly": true },
        ],
    });
    let deployment = json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": meta(""),
        "spec": {
            "replicas": svc.replicas,
            "selector": { "matchLabels": selector },
            "template": {
                "metadata": {
                    "labels": labels,
                    // A changed spec (image, config, certificates) rolls the pods.
                    "annotations": { LABEL_SPEC_HASH: svc.spec_hash },
                },
                "spec": {
                    "enableServiceLinks": false,
                    "automountServiceAccountToken": false,
                    "terminationGracePeriodSeconds": svc.app.stop_timeout_secs,
                    "initContainers": [envoy_container],
                    "containers": [app_container],
                    "volumes": [
                        {
                            "name": "envoy-config",
                            "configMap": { "name": format!("{name}-envoy") },
                        },
                        {
                            "name": "certs",
                            "secret": { "secretName": format!("{name}-certs"), "defaultMode": 0o400 },
                        },
                    ],
                },
            },
        },
    });
    let service = json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": meta(""),
        "spec": {
            "selector": selector,
            "ports": [{
                "name": "mesh",
                "port": mesh.inbound,
                "targetPort": "mesh",
                "protocol": "TCP",
                "appProtocol": "https",
            }],
        },
    });
    let policy = json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": meta("-mesh-only"),
        "spec": {
            "podSelector": { "matchLabels": selector },
            "policyTypes": ["Ingress"],
            "ingress": [{ "ports": [{ "protocol": "TCP", "port": mesh.inbound }] }],
        },
    });
    let mut out = vec![secret, config_map, deployment, service, policy];
    if let Some(p) = egress_policy(svc, &selector, mesh.inbound, meta("-egress")) {
        out.push(p);
    }
    Ok(out)
}

/// A pod whose egress is controlled gets a `NetworkPolicy` of type Egress: DNS (Envoy resolves
/// the listed names itself), the project's pods on the mesh port, and any address on the ports
/// the `egress:` list names — a NetworkPolicy selects pods and addresses, not names, so the
/// names are checked by the sidecar's egress listener (the same Envoy config as on Docker; the
/// app gets the same proxy variables). It cannot tell the app from Envoy inside the pod: an app
/// that skips the proxy still reaches any address on a listed port (Docker's pod filter is per
/// socket; see docs/limitations.md). `None` when egress is open.
fn egress_policy(
    svc: &ServiceStack,
    selector: &Value,
    mesh_port: u16,
    metadata: Value,
) -> Option<Value> {
    if !svc.egress.is_controlled() {
        return None;
    }
    let mut ports: Vec<u16> = svc.egress.rules().iter().map(|r| r.port).collect();
    ports.sort();
    ports.dedup();
    let mut rules = vec![
        json!({
            "ports": [
                { "protocol": "UDP", "port": 53 },
                { "protocol": "TCP", "port": 53 },
            ],
        }),
        json!({
            "to": [{ "podSelector": {} }],
            "ports": [{ "protocol": "TCP", "port": mesh_port }],
        }),
    ];
    if !ports.is_empty() {
        rules.push(json!({
            "to": [{ "ipBlock": { "cidr": "0.0.0.0/0" } }],
            "ports": ports
                .iter()
                .map(|p| json!({ "protocol": "TCP", "port": p }))
                .collect::<Vec<_>>(),
        }));
    }
    Some(json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": metadata,
        "spec": {
            "podSelector": { "matchLabels": selector },
            "policyTypes": ["Egress"],
            "egress": rules,
        },
    }))
}
