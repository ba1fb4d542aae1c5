//! Docker Compose project for a planned [`Stack`] (`iac render --target compose`): a pure render,
//! golden-tested, and brought up on the real engine by `crates/iac-bin/tests/compose_render.rs`.
//! It is the eject path: a team can leave iac and keep running what it made with
//! `docker-compose up -d`.
//!
//! The project is what the docker provisioner creates, container for container: per service the
//! sidecar (compose service `<svc>.envoy`, container `<project>-<svc>-envoy`, on the project's
//! network with the service's alias, publishing the pod's ports) and the app (compose service
//! `<svc>`, container `<project>-<svc>`, `network_mode: service:<svc>.envoy` — the pod's shared
//! namespace — and `depends_on` it), with the same images, commands, environment, labels
//! (`iac.project`, `iac.service`, `iac.role`, `iac.spec-hash`, `iac.managed-by`, so `iac health`
//! and `iac destroy` find them), capabilities, `no-new-privileges`, limits, restart policies,
//! stop timeouts and published ports. A `.` never appears in a service name (a DNS label), so
//! `<svc>.envoy` cannot clash with another service.
//!
//! Every file the containers mount (envoy.yaml, the certificates) is copied beside the compose
//! file as `<svc>/<path in the container>` and mounted by a relative path, so the directory is
//! self-contained: it can be moved to another host. Contents come in as `files` (read by the
//! caller, see [`mounted_files`]), so the render does no I/O.
//!
//! Format: `version: "2.4"` — docker-compose 1.29 (Debian's `docker-compose`) reads it (it
//! validates every version against its Compose-spec schema), and 2.4 is the last file format
//! whose `pids_limit`, `mem_limit` and `memswap_limit` apply outside Swarm's `deploy:` for Compose
//! v1 and v2 alike. Compose interpolates `$VAR` in every string, so every `$` of the plan is
//! written `$$`.

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

use iac_core::mesh::CertPaths;
use iac_core::stack::{ContainerSpec, NetworkMode, RestartPolicy, ServiceStack, Stack};
use serde_json::{Map, Value, json};

/// The compose file's name inside the rendered directory.
pub const COMPOSE_FILE: &str = "compose.yaml";

/// The Compose file format version written.
pub const COMPOSE_VERSION: &str = "2.4";

/// One file of the rendered project, relative to its directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProjectFile {
    /// Path relative to the project directory (no `..`, not absolute).
    pub path: PathBuf,
    /// Content.
    pub bytes: Vec<u8>,
    /// Unix mode to write it with (keys and the compose file, which holds the environment,
    /// are owner-only).
    pub mode: u32,
}

/// A rendered Compose project: the compose file first, then the files it mounts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ComposeProject {
    /// `compose.yaml` and every mounted file.
    pub files: Vec<ProjectFile>,
}

impl ComposeProject {
    /// The compose file's text.
    pub fn compose_yaml(&self) -> &str {
        let f = self
            .files
            .iter()
            .find(|f| f.path == Path::new(COMPOSE_FILE))
            .expect("render always writes the compose file");
        std::str::from_utf8(&f.bytes).expect("the compose file is YAML text")
    }
}

/// Why a stack cannot be rendered as a Compose project.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ComposeError {
    /// A container mounts a host file whose content the caller did not supply.
    #[error(
        "compose render: service {service}: no content for mounted file {} (expected it among the files read for the render)",
        path.display()
    )]
    MissingFile {
        /// The service.
        service: String,
        /// The host path.
        path: PathBuf,
    },
    /// A mount target that cannot be placed inside the project directory.
    #[error(
        "compose render: service {service}: mount target {} is not an absolute path without `..`",
        target.display()
    )]
    BadTarget {
        /// The service.
        service: String,
        /// The container path.
        target: PathBuf,
    },
}

/// Every host file the stack's containers mount (what the caller reads for [`render`]).
pub fn mounted_files(stack: &Stack) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = stack
        .services
        .iter()
        .flat_map(|s| [&s.envoy, &s.app])
        .flat_map(|c| c.mounts.iter().map(|m| m.source.clone()))
        .collect();
    out.sort();
    out.dedup();
    out
}

/// The compose service name of a service's sidecar.
pub fn sidecar_service(svc: &ServiceStack) -> String {
    format!("{}.envoy", svc.service)
}

/// Renders the stack. Same inputs, same bytes.
pub fn render(
    stack: &Stack,
    files: &BTreeMap<PathBuf, Vec<u8>>,
) -> Result<ComposeProject, ComposeError> {
    let mut services = Map::new();
    let mut mounted = Vec::new();
    for svc in &stack.services {
        let sidecar = sidecar_service(svc);
        for (key, c) in [
            (sidecar.clone(), &svc.envoy),
            (svc.service.to_string(), &svc.app),
        ] {
            let mut out = container(c, stack, &sidecar);
            let mut volumes = Vec::new();
            for m in &c.mounts {
                let rel = relative_target(&m.target).ok_or_else(|| ComposeError::BadTarget {
                    service: svc.service.to_string(),
                    target: m.target.clone(),
                })?;
                let path = Path::new(svc.service.as_str()).join(rel);
                let bytes = files
                    .get(&m.source)
                    .ok_or_else(|| ComposeError::MissingFile {
                        service: svc.service.to_string(),
                        path: m.source.clone(),
                    })?
                    .clone();
                let mode = if m.target == CertPaths::in_container().key {
                    0o600
                } else {
                    0o644
                };
                volumes.push(json!(lit(&format!(
                    "./{}:{}{}",
                    path.display(),
                    m.target.display(),
                    if m.read_only { ":ro" } else { "" }
                ))));
                mounted.push(ProjectFile { path, bytes, mode });
            }
            if !volumes.is_empty() {
                out.insert("volumes".into(), Value::Array(volumes));
            }
            services.insert(key, Value::Object(out));
        }
    }
    let doc = json!({
        "version": COMPOSE_VERSION,
        "services": services,
        "networks": {
            stack.network.name.clone(): {
                "name": stack.network.name,
                "labels": lit_map(&stack.network.labels),
            }
        },
    });
    let header = format!(
        "# Project {project}, rendered by `iac render --target compose` from iac's plan: the same\n\
         # containers the docker provisioner runs. Bring it up with\n\
         #   docker-compose -p {project} up -d\n\
         # from this directory; `iac health --project {project}` proves every service over mTLS.\n",
        project = stack.project
    );
    let yaml = yaml_serde::to_string(&doc).expect("JSON values serialize to YAML");
    let mut out = vec![ProjectFile {
        path: PathBuf::from(COMPOSE_FILE),
        bytes: format!("{header}{yaml}").into_bytes(),
        mode: 0o600,
    }];
    mounted.sort_by(|a, b| a.path.cmp(&b.path));
    mounted.dedup_by(|a, b| a.path == b.path);
    out.extend(mounted);
    Ok(ComposeProject { files: out })
}

/// The compose keys of one container, mounts aside.
fn container(c: &ContainerSpec, stack: &Stack, sidecar: &str) -> Map<String, Value> {
    let mut out = Map::new();
    out.insert("container_name".into(), json!(c.name));
    out.insert("image".into(), json!(lit(&c.image)));
    if !c.cmd.is_empty() {
        out.insert(
            "command".into(),
            json!(c.cmd.iter().map(|a| lit(a)).collect::<Vec<_>>()),
        );
    }
    out.insert("environment".into(), lit_map(&c.env));
    out.insert("labels".into(), lit_map(&c.labels));
    match &c.network {
        NetworkMode::Network { name, aliases } => {
            out.insert(
                "networks".into(),
                json!({ name.clone(): { "aliases": aliases } }),
            );
        }
        NetworkMode::Container { name } => {
            // The pod's namespace: every container a plan makes share one joins its sidecar's
            // (the only owner the planner knows); another owner would be a compose service of
            // this stack too.
            let owner = stack
                .services
                .iter()
                .find(|s| &s.envoy.name == name)
                .map(sidecar_service)
                .unwrap_or_else(|| sidecar.to_string());
            out.insert("network_mode".into(), json!(format!("service:{owner}")));
            out.insert("depends_on".into(), json!([owner]));
        }
    }
    if !c.ports.is_empty() {
        let ports: Vec<Value> = c
            .ports
            .iter()
            .map(|p| {
                let ip = if p.host_ip.contains(':') {
                    format!("[{}]", p.host_ip)
                } else {
                    p.host_ip.clone()
                };
                let host = p.host_port.map(|h| h.to_string()).unwrap_or_default();
                json!(format!("{ip}:{host}:{}", p.container_port))
            })
            .collect();
        out.insert("ports".into(), Value::Array(ports));
    }
    out.insert(
        "stop_grace_period".into(),
        json!(format!("{}s", c.stop_timeout_secs)),
    );
    if !c.privileges.cap_drop.is_empty() {
        out.insert("cap_drop".into(), json!(c.privileges.cap_drop));
    }
    if !c.privileges.cap_add.is_empty() {
        out.insert("cap_add".into(), json!(c.privileges.cap_add));
    }
    if c.privileges.no_new_privileges {
        out.insert("security_opt".into(), json!(["no-new-privileges:true"]));
    }
    if let Some(pids) = c.limits.pids {
        out.insert("pids_limit".into(), json!(pids));
    }
    if let Some(bytes) = c.limits.memory_bytes {
        // No swap on top of the memory limit, as the docker provisioner sets it.
        out.insert("mem_limit".into(), json!(bytes));
        out.insert("memswap_limit".into(), json!(bytes));
    }
    if c.restart != RestartPolicy::No {
        out.insert("restart".into(), json!(c.restart.as_str()));
    }
    out
}

/// `target` without its root, when it is absolute and has no `..`.
fn relative_target(target: &Path) -> Option<PathBuf> {
    let mut comps = target.components();
    if comps.next() != Some(Component::RootDir) {
        return None;
    }
    let rest: PathBuf = comps
        .map(|c| match c {
            Component::Normal(n) => Some(n),
            _ => None,
        })
        .collect::<Option<_>>()?;
    (!rest.as_os_str().is_empty()).then_some(rest)
}

/// A literal for Compose, which interpolates `$VAR` in strings: `$` is written `$$`.
fn lit(s: &str) -> String {
    s.replace('$', "$$")
}

fn lit_map(m: &BTreeMap<String, String>) -> Value {
    Value::Object(m.iter().map(|(k, v)| (k.clone(), json!(lit(v)))).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_outside_the_root_or_relative_are_refused() {
        assert_eq!(
            relative_target(Path::new("/etc/iac/certs/key.pem")),
            Some(PathBuf::from("etc/iac/certs/key.pem"))
        );
        assert_eq!(relative_target(Path::new("etc/x")), None);
        assert_eq!(relative_target(Path::new("/etc/../x")), None);
        assert_eq!(relative_target(Path::new("/")), None);
    }

    #[test]
    fn dollars_are_escaped_for_interpolation() {
        assert_eq!(lit("a$b$$c"), "a$$b$$$$c");
    }
}
