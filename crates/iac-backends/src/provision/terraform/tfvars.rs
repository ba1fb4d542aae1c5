//! The pure render `Stack → terraform.tfvars.json` ([`render_tfvars`], [`tfvars_json`]) and the
//! [`Tfvars`] types mirroring `infra/variables.tf`.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use iac_core::{Limits, MeshPorts, NetworkMode, Privileges, ProvisionError, Stack};

/// The contents of `terraform.tfvars.json`; mirrors `infra/variables.tf`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tfvars {
    /// The provider's `host`: the engine iac talks to (`unix:///var/run/docker.sock`, `tcp://…`).
    pub docker_host: String,
    /// The project name; prefixes every object the module creates.
    pub project: String,
    /// The project's bridge network.
    pub network: TfNetwork,
    /// The sidecars' mTLS listener port (inside the network).
    pub mesh_port: u16,
    /// The sidecars' edge port, whose host address the module reports (`edge_host_ip/port`).
    pub edge_port: u16,
    /// One entry per service, keyed by service name.
    pub services: BTreeMap<String, TfService>,
}

/// The project network as `variables.tf` declares it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TfNetwork {
    /// The network's name (`iac-<project>`).
    pub name: String,
    /// Labels set on the network, `iac.managed-by=iac` included.
    pub labels: BTreeMap<String, String>,
}

/// One service: its app container and its Envoy sidecar.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TfService {
    /// The service's spec hash; a change replaces both containers.
    pub spec_hash: String,
    /// The app container.
    pub app: TfApp,
    /// The Envoy sidecar, which owns the pod's network namespace.
    pub envoy: TfSidecar,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
/// The app container: in its sidecar's network namespace (`network_mode = container:…`).
pub struct TfApp {
    /// The container's name.
    pub name: String,
    /// The app image (name:tag).
    pub image: String,
    /// The container's command (the agent and the entry argv).
    pub command: Vec<String>,
    /// Environment variables, by name.
    pub env: BTreeMap<String, String>,
    /// Container labels, `iac.managed-by=iac` included.
    pub labels: BTreeMap<String, String>,
    /// Host paths mounted into the container.
    pub mounts: Vec<TfMount>,
    /// Seconds the engine waits after SIGTERM before SIGKILL.
    pub stop_timeout: u32,
    /// Privileges (no-new-privileges, capabilities).
    pub security: TfSecurity,
    /// Memory limit in MiB (`memory` and `memory_swap`); omitted → none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_mib: Option<i64>,
    /// The engine's restart policy (`no`, `unless-stopped`).
    pub restart: String,
}

/// The sidecar: the pod's network namespace, on the project network with the service's aliases,
/// publishing the pod's ports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TfSidecar {
    /// The container's name.
    pub name: String,
    /// The Envoy image (name:tag).
    pub image: String,
    /// Envoy's command line.
    pub command: Vec<String>,
    /// Environment variables, by name.
    pub env: BTreeMap<String, String>,
    /// Container labels, `iac.managed-by=iac` included.
    pub labels: BTreeMap<String, String>,
    /// DNS names of the pod on the project network (the service name).
    pub aliases: Vec<String>,
    /// Ports published on the host (mesh and edge listeners).
    pub ports: Vec<TfPort>,
    /// Host paths mounted into the container (Envoy config, certs).
    pub mounts: Vec<TfMount>,
    /// Seconds the engine waits after SIGTERM before SIGKILL.
    pub stop_timeout: u32,
    /// Privileges (no-new-privileges, capabilities).
    pub security: TfSecurity,
    /// Memory limit in MiB (`memory` and `memory_swap`); omitted → none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_mib: Option<i64>,
    /// Docker restart policy (`unless-stopped`, …).
    pub restart: String,
}

/// A container's privileges as `main.tf` applies them (`capabilities`, `security_opts`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TfSecurity {
    /// Run with `no-new-privileges` (setuid binaries cannot gain privileges).
    pub no_new_privileges: bool,
    /// Capabilities added to the engine's default set.
    pub cap_add: Vec<String>,
    /// Capabilities dropped (`ALL` first when the pod drops everything).
    pub cap_drop: Vec<String>,
}

impl From<&Privileges> for TfSecurity {
    fn from(p: &Privileges) -> Self {
        TfSecurity {
            no_new_privileges: p.no_new_privileges,
            cap_add: p.cap_add.clone(),
            cap_drop: p.cap_drop.clone(),
        }
    }
}

/// `labels` plus `iac.managed-by=iac`: set by the provisioner on everything it creates.
fn managed(labels: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    let mut out = labels.clone();
    iac_core::labels::mark_managed(&mut out);
    out
}

/// A container's limits as the module can express them: memory in whole MiB (rounded up); a
/// pids limit is an error (the provider has no such attribute).
fn tf_memory(service: &str, container: &str, l: &Limits) -> Result<Option<i64>, ProvisionError> {
    if let Some(pids) = l.pids {
        return Err(ProvisionError::Invalid(format!(
            "service {service}: container {container} asks for a pids limit of {pids}, but the \
             kreuzwerker/docker provider's docker_container has no pids limit; set \
             terraform.limits.*_pids to 0 or use the docker provisioner"
        )));
    }
    Ok(l.memory_bytes
        .map(|b| (b.max(0) + (1 << 20) - 1) / (1 << 20)))
}

/// One published port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TfPort {
    /// The container's port.
    pub internal: u16,
    /// The host address it is published on.
    pub ip: String,
    /// Omitted → an ephemeral host port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external: Option<u16>,
}

/// One bind mount.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TfMount {
    /// The host path.
    pub source: String,
    /// The path inside the container.
    pub target: String,
    /// Mounted read-only.
    pub read_only: bool,
}

fn path_str(service: &str, what: &str, p: &Path) -> Result<String, ProvisionError> {
    let s = p.to_str().ok_or_else(|| {
        ProvisionError::Invalid(format!(
            "service {service}: {what} path {} is not valid UTF-8",
            p.display()
        ))
    })?;
    Ok(s.to_string())
}

fn render_mounts(
    service: &str,
    mounts: &[iac_core::Mount],
) -> Result<Vec<TfMount>, ProvisionError> {
    mounts
        .iter()
        .map(|m| {
            if !m.source.is_absolute() {
                return Err(ProvisionError::Invalid(format!(
                    "service {service}: mount source {} must be an absolute host path (Docker bind mounts need one)",
                    m.source.display()
                )));
            }
            Ok(TfMount {
                source: path_str(service, "mount source", &m.source)?,
                target: path_str(service, "mount target", &m.target)?,
                read_only: m.read_only,
            })
        })
        .collect()
}

/// Renders the tfvars for `stack`. Pure: the same inputs give the same bytes.
///
/// `previous` is the tfvars of the last apply: services in [`Stack::keep`] that are not in the
/// stack keep their previous entry (so Terraform leaves them running as they are).
///
/// Fails when the stack has a shape the module cannot express: a sidecar not attached to the
/// stack network, an app not sharing its sidecar's network namespace, ports published by an app,
/// relative or non-UTF-8 mount paths, or services disagreeing on the mesh port.
pub fn render_tfvars(
    stack: &Stack,
    previous: Option<&Tfvars>,
    docker_host: &str,
) -> Result<Tfvars, ProvisionError> {
    let mut services = BTreeMap::new();
    let mut mesh_port: Option<(u16, String)> = None;
    for s in &stack.services {
        let svc = s.service.as_str();
        let aliases = match &s.envoy.network {
            NetworkMode::Network { name, aliases } if *name == stack.network.name => {
                aliases.clone()
            }
            other => {
                return Err(ProvisionError::Invalid(format!(
                    "service {svc}: sidecar {} must join the stack network {:?}, got {other:?}; \
                     the terraform module attaches every sidecar (the pod's network namespace) to \
                     docker_network.this",
                    s.envoy.name, stack.network.name
                )));
            }
        };
        match &s.app.network {
            NetworkMode::Container { name } if *name == s.envoy.name => {}
            other => {
                return Err(ProvisionError::Invalid(format!(
                    "service {svc}: app {} must share the network namespace of its sidecar {} (container:{}), got {other:?}",
                    s.app.name, s.envoy.name, s.envoy.name
                )));
            }
        }
        if !s.app.ports.is_empty() {
            return Err(ProvisionError::Invalid(format!(
                "service {svc}: app container {} publishes ports, but a container sharing another's \
                 network namespace cannot; publish them on the sidecar",
                s.app.name
            )));
        }
        let first = s.envoy.ports.first().ok_or_else(|| {
            ProvisionError::Invalid(format!(
                "service {svc}: sidecar {} publishes no port; its mTLS listener must be published",
                s.envoy.name
            ))
        })?;
        match &mesh_port {
            None => mesh_port = Some((first.container_port, svc.to_string())),
            Some((port, by)) if *port != first.container_port => {
                return Err(ProvisionError::Invalid(format!(
                    "service {svc} publishes mesh port {} but service {by} publishes {port}; \
                     the terraform module reads one mesh port for all services",
                    first.container_port
                )));
            }
            Some(_) => {}
        }
        let app = TfApp {
            name: s.app.name.clone(),
            image: s.app.image.clone(),
            command: s.app.cmd.clone(),
            env: s.app.env.clone(),
            labels: managed(&s.app.labels),
            mounts: render_mounts(svc, &s.app.mounts)?,
            stop_timeout: s.app.stop_timeout_secs,
            security: TfSecurity::from(&s.app.privileges),
            memory_mib: tf_memory(svc, &s.app.name, &s.app.limits)?,
            restart: s.app.restart.as_str().to_string(),
        };
        let envoy = TfSidecar {
            name: s.envoy.name.clone(),
            image: s.envoy.image.clone(),
            command: s.envoy.cmd.clone(),
            env: s.envoy.env.clone(),
            labels: managed(&s.envoy.labels),
            aliases,
            ports: s
                .envoy
                .ports
                .iter()
                .map(|p| TfPort {
                    internal: p.container_port,
                    ip: p.host_ip.clone(),
                    external: p.host_port,
                })
                .collect(),
            mounts: render_mounts(svc, &s.envoy.mounts)?,
            stop_timeout: s.envoy.stop_timeout_secs,
            security: TfSecurity::from(&s.envoy.privileges),
            memory_mib: tf_memory(svc, &s.envoy.name, &s.envoy.limits)?,
            restart: s.envoy.restart.as_str().to_string(),
        };
        services.insert(
            svc.to_string(),
            TfService {
                spec_hash: s.spec_hash.clone(),
                app,
                envoy,
            },
        );
    }
    if let Some(prev) = previous {
        for kept in &stack.keep {
            if services.contains_key(kept.as_str()) {
                continue;
            }
            if let Some(entry) = prev.services.get(kept.as_str()) {
                services.insert(kept.to_string(), entry.clone());
            }
        }
    }
    Ok(Tfvars {
        docker_host: docker_host.to_string(),
        project: stack.project.to_string(),
        network: TfNetwork {
            name: stack.network.name.clone(),
            labels: managed(&stack.network.labels),
        },
        mesh_port: mesh_port
            .map(|(p, _)| p)
            .unwrap_or(MeshPorts::default().inbound),
        edge_port: MeshPorts::default().edge,
        services,
    })
}

/// `tfvars` as the bytes written to disk (pretty JSON, trailing newline).
pub fn tfvars_json(tfvars: &Tfvars) -> String {
    serde_json::to_string_pretty(tfvars).expect("plain data serializes") + "\n"
}
