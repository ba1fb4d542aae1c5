//! The `terraform` provisioner: applies a [`Stack`] with Terraform (or OpenTofu) and the
//! kreuzwerker/docker provider.
//!
//! Shape (DESIGN §6): the Terraform code is a real, readable module in `infra/` (`main.tf`,
//! `variables.tf`, `outputs.tf`, `versions.tf`, `for_each` over a `services` variable). iac renders
//! only *data*: [`render_tfvars`] is a pure function `Stack → terraform.tfvars.json`. Before every
//! run the module (the copy embedded in this binary, or [`TerraformConfig::module_source`]) and the
//! tfvars are written atomically into `<work_root>/<project>/terraform/`, and [`check_declared`]
//! verifies offline — by parsing the module's HCL — that every key the tfvars sets is declared, with
//! the declared type (Terraform silently drops unknown object attributes, so a mismatch between the
//! renderer and a tweaked module would otherwise go unnoticed).
//!
//! Then it drives `<binary> init`, `plan -out`, `show -json <planfile>`, `apply <planfile>`,
//! `output -json` (and `destroy`), all with `-input=false -no-color`, in that directory. Every
//! stdout/stderr line becomes a [`iac_core::DeployEvent`] (attributed to a service when the line
//! names one of its resources, e.g. `docker_container.app["api"]: Creating...`). A failing step is a
//! [`ProvisionError::Tool`] naming the step, its exit code and the last lines of its stderr.
//! Endpoints come from `output -json`; `diff` maps the plan's `resource_changes` to per-service
//! [`Change`]s.
//!
//! **No health gating, no per-service rollback.** Terraform applies the whole configuration at
//! once; there is no point where one service's new pair can be probed before its old pair is
//! removed. [`TerraformProvisioner::apply`] therefore returns every service with `health: None` and
//! the Deployer probes afterwards; an unhealthy service stays deployed (fix and redeploy, or
//! use the `docker` provisioner when rollback matters). Services the stack asks to keep
//! ([`Stack::keep`], they failed to prepare) keep their previously applied entry in the tfvars,
//! so Terraform leaves their containers alone.
//!
//! **Hardening.** Each container's privileges (capabilities, `no-new-privileges`) and memory limit
//! travel in the tfvars (`security`, `memory_mib`) and `main.tf` applies them
//! (`capabilities`, `security_opts`, `memory`/`memory_swap`); open memory limits are filled from
//! [`TerraformConfig::limits`]. The kreuzwerker/docker provider has no pids limit on
//! `docker_container`, so a pids limit is refused here rather than silently dropped (use the
//! `docker` provisioner for one). The sidecar installs the pod's packet filter as with the docker
//! provisioner, but nothing checks it before Terraform reports the apply done.
//!
//! **Secrets on disk.** The tfvars hold the services' environment values: they are written 0600
//! (temp file with the mode set, then renamed), and the work directory — where Terraform also
//! keeps its state and plan files, which hold the same values — is kept 0700.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use serde::{Deserialize, Serialize, Serializer};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};

use iac_core::fsutil::write_atomic;
use iac_core::stack::LABEL_MANAGED;
use iac_core::{
    Action, Applied, AppliedService, Change, EventLevel, Events, HealthProber, Limits, MeshPorts,
    NetworkMode, Privileges, ProjectName, ProvisionError, Provisioner, RunningService, ServiceName,
    Stack, Stage,
};

use super::{ContainerLimits, MANAGED_BY, with_limits};

/// The module in `infra/`, embedded so a lone `iac` binary can deploy with Terraform.
pub const EMBEDDED_MODULE: &[(&str, &str)] = &[
    ("main.tf", include_str!("../../../../../infra/main.tf")),
    ("outputs.tf", include_str!("../../../../../infra/outputs.tf")),
    (
        "variables.tf",
        include_str!("../../../../../infra/variables.tf"),
    ),
    ("versions.tf", include_str!("../../../../../infra/versions.tf")),
];

/// The variables file Terraform loads automatically (so `terraform plan` by hand in the work
/// directory sees exactly what iac applied).
pub const TFVARS_FILE: &str = "terraform.tfvars.json";
/// `iac plan` renders here (passed with `-var-file`) so a plan never changes what `apply` wrote.
pub const DIFF_TFVARS_FILE: &str = "iac-diff.tfvars.json";
/// Saved plans of `apply` and of `diff`.
pub const PLAN_FILE: &str = "iac.tfplan";
pub const DIFF_PLAN_FILE: &str = "iac-diff.tfplan";
/// The provider host used when the config names none.
pub const DEFAULT_DOCKER_HOST: &str = "unix:///var/run/docker.sock";

/// `[terraform]` in `iac.toml`.
#[derive(Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default)]
pub struct TerraformConfig {
    /// Executable to run: `terraform`, `tofu`, or a path.
    pub binary: String,
    /// Per-project work directories live in `<work_root>/<project>/terraform/`.
    pub work_root: PathBuf,
    /// A directory with the module's `*.tf` files (a tweaked copy of `infra/`); `None` → the copy
    /// embedded in iac.
    pub module_source: Option<PathBuf>,
    /// Docker engine for the provider (`var.docker_host`).
    pub docker_host: String,
    /// `init -plugin-dir=…`: a local provider directory, for machines without registry access.
    pub plugin_dir: Option<PathBuf>,
    /// Extra environment for every Terraform run (e.g. `TF_CLI_CONFIG_FILE`,
    /// `TF_PLUGIN_CACHE_DIR`, `TF_TOKEN_…`). Values of secret-looking keys are redacted when
    /// printed.
    #[serde(serialize_with = "serialize_redacted_env")]
    pub extra_env: BTreeMap<String, String>,
    /// How many trailing stderr lines a failure message carries.
    pub error_tail_lines: usize,
    /// Memory limits of the containers (`[terraform.limits]` in iac.toml, MiB, 0 = none). The
    /// `*_pids` keys must stay 0: the kreuzwerker/docker provider cannot set a pids limit.
    pub limits: ContainerLimits,
}

impl Default for TerraformConfig {
    fn default() -> Self {
        TerraformConfig {
            binary: "terraform".into(),
            work_root: PathBuf::from(".iac/projects"),
            module_source: None,
            docker_host: DEFAULT_DOCKER_HOST.into(),
            plugin_dir: None,
            extra_env: BTreeMap::new(),
            error_tail_lines: 12,
            limits: ContainerLimits {
                app_pids: 0,
                sidecar_pids: 0,
                ..ContainerLimits::default()
            },
        }
    }
}

fn is_secret_key(key: &str) -> bool {
    let k = key.to_ascii_uppercase();
    [
        "TOKEN",
        "SECRET",
        "PASSWORD",
        "PASSWD",
        "KEY",
        "CREDENTIAL",
        "AUTH",
    ]
    .iter()
    .any(|s| k.contains(s))
}

fn redacted_env(env: &BTreeMap<String, String>) -> BTreeMap<&str, &str> {
    env.iter()
        .map(|(k, v)| {
            (
                k.as_str(),
                if is_secret_key(k) {
                    "<redacted>"
                } else {
                    v.as_str()
                },
            )
        })
        .collect()
}

fn serialize_redacted_env<S: Serializer>(
    env: &BTreeMap<String, String>,
    s: S,
) -> Result<S::Ok, S::Error> {
    redacted_env(env).serialize(s)
}

impl std::fmt::Debug for TerraformConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TerraformConfig")
            .field("binary", &self.binary)
            .field("work_root", &self.work_root)
            .field("module_source", &self.module_source)
            .field("docker_host", &self.docker_host)
            .field("plugin_dir", &self.plugin_dir)
            .field("extra_env", &redacted_env(&self.extra_env))
            .field("error_tail_lines", &self.error_tail_lines)
            .field("limits", &self.limits)
            .finish()
    }
}

// ---------------------------------------------------------------------------------------------
// Render: Stack → terraform.tfvars.json (pure)
// ---------------------------------------------------------------------------------------------

/// The contents of `terraform.tfvars.json`; mirrors `infra/variables.tf`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tfvars {
    pub docker_host: String,
    pub project: String,
    pub network: TfNetwork,
    pub mesh_port: u16,
    pub services: BTreeMap<String, TfService>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TfNetwork {
    pub name: String,
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TfService {
    pub spec_hash: String,
    pub app: TfApp,
    pub envoy: TfSidecar,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TfApp {
    pub name: String,
    pub image: String,
    pub command: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub labels: BTreeMap<String, String>,
    pub aliases: Vec<String>,
    pub ports: Vec<TfPort>,
    pub mounts: Vec<TfMount>,
    pub stop_timeout: u32,
    pub security: TfSecurity,
    /// Memory limit in MiB (`memory` and `memory_swap`); omitted → none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_mib: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TfSidecar {
    pub name: String,
    pub image: String,
    pub command: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub labels: BTreeMap<String, String>,
    pub mounts: Vec<TfMount>,
    pub stop_timeout: u32,
    pub security: TfSecurity,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_mib: Option<i64>,
}

/// A container's privileges as `main.tf` applies them (`capabilities`, `security_opts`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TfSecurity {
    pub no_new_privileges: bool,
    pub cap_add: Vec<String>,
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
    out.insert(LABEL_MANAGED.to_string(), MANAGED_BY.to_string());
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

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TfPort {
    pub internal: u16,
    pub ip: String,
    /// Omitted → an ephemeral host port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external: Option<u16>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TfMount {
    pub source: String,
    pub target: String,
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
/// Fails when the stack has a shape the module cannot express: an app not attached to the stack
/// network, a sidecar not sharing its app's network namespace, ports published by a sidecar,
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
        let aliases = match &s.app.network {
            NetworkMode::Network { name, aliases } if *name == stack.network.name => {
                aliases.clone()
            }
            other => {
                return Err(ProvisionError::Invalid(format!(
                    "service {svc}: app container {} must join the stack network {:?}, got {other:?}; \
                     the terraform module attaches every app container to docker_network.this",
                    s.app.name, stack.network.name
                )));
            }
        };
        match &s.envoy.network {
            NetworkMode::Container { name } if *name == s.app.name => {}
            other => {
                return Err(ProvisionError::Invalid(format!(
                    "service {svc}: sidecar {} must share the network namespace of {} (container:{}), got {other:?}",
                    s.envoy.name, s.app.name, s.app.name
                )));
            }
        }
        if !s.envoy.ports.is_empty() {
            return Err(ProvisionError::Invalid(format!(
                "service {svc}: sidecar {} publishes ports, but a container sharing another's network \
                 namespace cannot; publish them on the app container",
                s.envoy.name
            )));
        }
        let first = s.app.ports.first().ok_or_else(|| {
            ProvisionError::Invalid(format!(
                "service {svc}: app container {} publishes no port; the sidecar's mTLS listener must be published",
                s.app.name
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
            aliases,
            ports: s
                .app
                .ports
                .iter()
                .map(|p| TfPort {
                    internal: p.container_port,
                    ip: p.host_ip.clone(),
                    external: p.host_port,
                })
                .collect(),
            mounts: render_mounts(svc, &s.app.mounts)?,
            stop_timeout: s.app.stop_timeout_secs,
            security: TfSecurity::from(&s.app.privileges),
            memory_mib: tf_memory(svc, &s.app.name, &s.app.limits)?,
        };
        let envoy = TfSidecar {
            name: s.envoy.name.clone(),
            image: s.envoy.image.clone(),
            command: s.envoy.cmd.clone(),
            env: s.envoy.env.clone(),
            labels: managed(&s.envoy.labels),
            mounts: render_mounts(svc, &s.envoy.mounts)?,
            stop_timeout: s.envoy.stop_timeout_secs,
            security: TfSecurity::from(&s.envoy.privileges),
            memory_mib: tf_memory(svc, &s.envoy.name, &s.envoy.limits)?,
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
        services,
    })
}

/// `tfvars` as the bytes written to disk (pretty JSON, trailing newline).
pub fn tfvars_json(tfvars: &Tfvars) -> String {
    serde_json::to_string_pretty(tfvars).expect("plain data serializes") + "\n"
}

// ---------------------------------------------------------------------------------------------
// Offline check: every tfvars key is a declared variable, with a matching type
// ---------------------------------------------------------------------------------------------

/// A Terraform type constraint, as far as the check needs it.
#[derive(Debug, Clone, PartialEq)]
enum TfType {
    Any,
    String,
    Number,
    Bool,
    List(Box<TfType>),
    Map(Box<TfType>),
    Tuple(Vec<TfType>),
    /// attribute → (type, optional)
    Object(BTreeMap<String, (TfType, bool)>),
}

/// One `variable` block of the module.
#[derive(Debug, Clone)]
struct Declared {
    ty: TfType,
    required: bool,
    file: String,
}

fn type_error(file: &str, var: &str, what: impl std::fmt::Display) -> ProvisionError {
    ProvisionError::Invalid(format!(
        "{file}: variable {var:?}: unsupported type constraint: {what}"
    ))
}

fn parse_type(
    expr: &hcl::Expression,
    file: &str,
    var: &str,
) -> Result<(TfType, bool), ProvisionError> {
    use hcl::Expression as E;
    match expr {
        E::Variable(v) => Ok((
            match v.as_str() {
                "any" => TfType::Any,
                "string" => TfType::String,
                "number" => TfType::Number,
                "bool" => TfType::Bool,
                other => return Err(type_error(file, var, format!("unknown type {other:?}"))),
            },
            false,
        )),
        E::Parenthesis(inner) => parse_type(inner, file, var),
        E::FuncCall(call) => {
            let name = call.name.name.as_str();
            let one = |args: &[E]| -> Result<TfType, ProvisionError> {
                match args {
                    [t] => Ok(parse_type(t, file, var)?.0),
                    _ => Err(type_error(
                        file,
                        var,
                        format!("{name}(…) takes one type argument"),
                    )),
                }
            };
            match name {
                "list" | "set" => Ok((TfType::List(Box::new(one(&call.args)?)), false)),
                "map" => Ok((TfType::Map(Box::new(one(&call.args)?)), false)),
                "optional" => match call.args.as_slice() {
                    [t] | [t, _] => Ok((parse_type(t, file, var)?.0, true)),
                    _ => Err(type_error(file, var, "optional(type[, default])")),
                },
                "tuple" => match call.args.as_slice() {
                    [E::Array(items)] => Ok((
                        TfType::Tuple(
                            items
                                .iter()
                                .map(|t| parse_type(t, file, var).map(|x| x.0))
                                .collect::<Result<_, _>>()?,
                        ),
                        false,
                    )),
                    _ => Err(type_error(file, var, "tuple([…]) takes a list of types")),
                },
                "object" => match call.args.as_slice() {
                    [E::Object(attrs)] => {
                        let mut out = BTreeMap::new();
                        for (k, t) in attrs {
                            let key = match k {
                                hcl::ObjectKey::Identifier(id) => id.as_str().to_string(),
                                hcl::ObjectKey::Expression(E::String(s)) => s.clone(),
                                hcl::ObjectKey::Expression(E::Variable(v)) => {
                                    v.as_str().to_string()
                                }
                                other => {
                                    return Err(type_error(
                                        file,
                                        var,
                                        format!("object attribute name {other:?}"),
                                    ));
                                }
                            };
                            out.insert(key, parse_type(t, file, var)?);
                        }
                        Ok((TfType::Object(out), false))
                    }
                    _ => Err(type_error(
                        file,
                        var,
                        "object({…}) takes an object of attribute types",
                    )),
                },
                other => Err(type_error(
                    file,
                    var,
                    format!("unknown type function {other}(…)"),
                )),
            }
        }
        other => Err(type_error(file, var, format!("{other:?}"))),
    }
}

/// Every `variable` block in the module's files: name → declaration.
fn declared_variables(
    files: &[(String, String)],
) -> Result<BTreeMap<String, Declared>, ProvisionError> {
    let mut out: BTreeMap<String, Declared> = BTreeMap::new();
    for (file, text) in files.iter().filter(|(f, _)| f.ends_with(".tf")) {
        let body = hcl::parse(text).map_err(|e| {
            ProvisionError::Invalid(format!("cannot parse terraform module file {file}: {e}"))
        })?;
        for block in body
            .blocks()
            .filter(|b| b.identifier.as_str() == "variable")
        {
            let [label] = block.labels.as_slice() else {
                return Err(ProvisionError::Invalid(format!(
                    "{file}: a variable block needs exactly one name label"
                )));
            };
            let name = label.as_str().to_string();
            let mut ty = TfType::Any;
            let mut has_default = false;
            for attr in block.body.attributes() {
                match attr.key.as_str() {
                    "type" => ty = parse_type(&attr.expr, file, &name)?.0,
                    "default" => has_default = true,
                    _ => {}
                }
            }
            if let Some(prev) = out.get(&name) {
                return Err(ProvisionError::Invalid(format!(
                    "variable {name:?} is declared twice ({} and {file})",
                    prev.file
                )));
            }
            out.insert(
                name,
                Declared {
                    ty,
                    required: !has_default,
                    file: file.clone(),
                },
            );
        }
    }
    Ok(out)
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a bool",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

fn check_value(v: &Value, ty: &TfType, path: &str) -> Result<(), String> {
    let mismatch = |want: &str| {
        Err(format!(
            "{path} is {}, but the module declares {want}",
            json_kind(v)
        ))
    };
    if v.is_null() {
        return Ok(());
    }
    match ty {
        TfType::Any => Ok(()),
        // Terraform converts between primitives; strings must still look like what they become.
        TfType::String => match v {
            Value::String(_) | Value::Number(_) | Value::Bool(_) => Ok(()),
            _ => mismatch("string"),
        },
        TfType::Number => match v {
            Value::Number(_) => Ok(()),
            Value::String(s) if s.parse::<f64>().is_ok() => Ok(()),
            _ => mismatch("number"),
        },
        TfType::Bool => match v {
            Value::Bool(_) => Ok(()),
            Value::String(s) if s == "true" || s == "false" => Ok(()),
            _ => mismatch("bool"),
        },
        TfType::List(inner) => match v {
            Value::Array(items) => items
                .iter()
                .enumerate()
                .try_for_each(|(i, item)| check_value(item, inner, &format!("{path}[{i}]"))),
            _ => mismatch("a list"),
        },
        TfType::Tuple(types) => match v {
            Value::Array(items) if items.len() == types.len() => items
                .iter()
                .zip(types)
                .enumerate()
                .try_for_each(|(i, (item, t))| check_value(item, t, &format!("{path}[{i}]"))),
            _ => mismatch(&format!("a tuple of {} elements", types.len())),
        },
        TfType::Map(inner) => match v {
            Value::Object(m) => m
                .iter()
                .try_for_each(|(k, item)| check_value(item, inner, &format!("{path}[{k:?}]"))),
            _ => mismatch("a map"),
        },
        TfType::Object(attrs) => match v {
            Value::Object(m) => {
                for (k, item) in m {
                    let Some((t, _)) = attrs.get(k) else {
                        return Err(format!(
                            "{path}.{k} is set, but the module's object type has no attribute {k:?} (it declares: {})",
                            attrs.keys().cloned().collect::<Vec<_>>().join(", ")
                        ));
                    };
                    check_value(item, t, &format!("{path}.{k}"))?;
                }
                for (k, (_, optional)) in attrs {
                    if !optional && !m.contains_key(k) {
                        return Err(format!("{path}.{k} is missing, but the module requires it"));
                    }
                }
                Ok(())
            }
            _ => mismatch("an object"),
        },
    }
}

/// Checks, offline, that the tfvars `value` fits the module `files` (`(file name, HCL text)`):
/// every top-level key is a declared `variable`, every nested value matches the declared type
/// (no attribute the type lacks, none it requires missing), and every variable without a
/// default is set.
pub fn check_declared(value: &Value, files: &[(String, String)]) -> Result<(), ProvisionError> {
    let declared = declared_variables(files)?;
    let Value::Object(top) = value else {
        return Err(ProvisionError::Invalid(format!(
            "{TFVARS_FILE} must be a JSON object, got {}",
            json_kind(value)
        )));
    };
    for (key, v) in top {
        let Some(d) = declared.get(key) else {
            return Err(ProvisionError::Invalid(format!(
                "{TFVARS_FILE} sets {key:?}, which no variable block of the terraform module declares (declared: {})",
                declared.keys().cloned().collect::<Vec<_>>().join(", ")
            )));
        };
        check_value(v, &d.ty, &format!("var.{key}")).map_err(|e| {
            ProvisionError::Invalid(format!("{TFVARS_FILE} does not fit {}: {e}", d.file))
        })?;
    }
    for (name, d) in &declared {
        if d.required && !top.contains_key(name) {
            return Err(ProvisionError::Invalid(format!(
                "{TFVARS_FILE} does not set {name:?}, which {} declares without a default",
                d.file
            )));
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Reading Terraform's JSON: plans and outputs
// ---------------------------------------------------------------------------------------------

/// One service as `output -json` reports it (`output "services"` in `infra/outputs.tf`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct OutputService {
    pub host_ip: Option<String>,
    pub host_port: Option<u16>,
    pub app_container_id: Option<String>,
    pub app_container_name: Option<String>,
    pub envoy_container_id: Option<String>,
    pub envoy_container_name: Option<String>,
    pub spec_hash: Option<String>,
    pub image: Option<String>,
}

impl OutputService {
    /// The mTLS endpoint on the host, when both address and port are known.
    pub fn endpoint(&self) -> Option<SocketAddr> {
        let ip: IpAddr = self.host_ip.as_deref()?.parse().ok()?;
        let ip = if ip.is_unspecified() {
            IpAddr::from([127, 0, 0, 1])
        } else {
            ip
        };
        Some(SocketAddr::new(ip, self.host_port?))
    }
}

/// What `output -json` says: services by name and the network's name, if any.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outputs {
    pub services: BTreeMap<String, OutputService>,
    pub network_name: Option<String>,
}

/// Parses `terraform output -json` (`{}` when there is no state).
pub fn parse_outputs(json: &str) -> Result<Outputs, ProvisionError> {
    let bad = |why: String| {
        ProvisionError::Invalid(format!("cannot read `terraform output -json`: {why}"))
    };
    let v: Value = serde_json::from_str(json.trim()).map_err(|e| bad(e.to_string()))?;
    let Value::Object(top) = v else {
        return Err(bad(format!(
            "expected a JSON object, got {}",
            json_kind(&v)
        )));
    };
    let mut out = Outputs::default();
    if let Some(services) = top.get("services") {
        let value = services
            .get("value")
            .ok_or_else(|| bad("output \"services\" has no value".into()))?;
        out.services = serde_json::from_value(value.clone()).map_err(|e| {
            bad(format!(
                "output \"services\" does not have the shape of infra/outputs.tf: {e}"
            ))
        })?;
    }
    if let Some(net) = top.get("network") {
        out.network_name = net
            .pointer("/value/name")
            .and_then(Value::as_str)
            .map(str::to_string);
    }
    Ok(out)
}

#[derive(Debug, Default)]
struct ServiceActions {
    /// `(address, actions, replace paths)`
    resources: Vec<(String, Vec<String>, Vec<String>)>,
}

/// Maps the `resource_changes` of `terraform show -json <planfile>` to one [`Change`] per service
/// of `services` (in that order), plus a `Remove` for every other service whose containers the
/// plan deletes. Images and the network are shared and not attributed to a service.
pub fn changes_from_plan(
    plan: &Value,
    services: &[ServiceName],
) -> Result<Vec<Change>, ProvisionError> {
    let bad = |why: String| {
        ProvisionError::Invalid(format!("cannot read the terraform plan JSON: {why}"))
    };
    let empty = Vec::new();
    let rcs = match plan.get("resource_changes") {
        None | Some(Value::Null) => &empty,
        Some(Value::Array(a)) => a,
        Some(other) => return Err(bad(format!("resource_changes is {}", json_kind(other)))),
    };
    let mut per: BTreeMap<String, ServiceActions> = BTreeMap::new();
    for rc in rcs {
        if rc.get("mode").and_then(Value::as_str) != Some("managed")
            || rc.get("type").and_then(Value::as_str) != Some("docker_container")
            || rc.get("module_address").is_some()
        {
            continue;
        }
        let Some(svc) = rc.get("index").and_then(Value::as_str) else {
            continue;
        };
        let address = rc
            .get("address")
            .and_then(Value::as_str)
            .unwrap_or("?")
            .to_string();
        let change = rc
            .get("change")
            .ok_or_else(|| bad(format!("{address} has no change")))?;
        let actions: Vec<String> = change
            .get("actions")
            .and_then(Value::as_array)
            .ok_or_else(|| bad(format!("{address} has no change.actions")))?
            .iter()
            .filter_map(|a| a.as_str().map(str::to_string))
            .collect();
        let paths: Vec<String> = change
            .get("replace_paths")
            .and_then(Value::as_array)
            .map(|ps| {
                ps.iter()
                    .filter_map(|p| {
                        let parts: Vec<String> = p
                            .as_array()?
                            .iter()
                            .map(|x| match x {
                                Value::String(s) => s.clone(),
                                other => other.to_string(),
                            })
                            .collect();
                        Some(parts.join("."))
                    })
                    .collect()
            })
            .unwrap_or_default();
        per.entry(svc.to_string())
            .or_default()
            .resources
            .push((address, actions, paths));
    }
    let summarize = |sa: &ServiceActions, in_stack: bool| -> (Action, String) {
        let has = |a: &str| {
            sa.resources
                .iter()
                .any(|(_, acts, _)| acts.iter().any(|x| x == a))
        };
        let only = |a: &str| {
            sa.resources
                .iter()
                .all(|(_, acts, _)| acts.len() == 1 && acts[0] == a)
        };
        let describe = |filter: &dyn Fn(&[String]) -> bool, verb: &str| {
            sa.resources
                .iter()
                .filter(|(_, acts, _)| filter(acts))
                .map(|(addr, _, paths)| {
                    if paths.is_empty() {
                        format!("{addr} {verb}")
                    } else {
                        format!("{addr} {verb} ({} changed)", paths.join(", "))
                    }
                })
                .collect::<Vec<_>>()
                .join("; ")
        };
        if !in_stack {
            return (
                Action::Remove,
                "not in the stack: terraform destroys its containers".into(),
            );
        }
        if only("no-op") || only("read") {
            return (Action::Unchanged, "terraform plans no change".into());
        }
        if only("create") {
            return (
                Action::Create,
                "not deployed: terraform creates its containers".into(),
            );
        }
        let replaced = |acts: &[String]| acts.len() == 2 && acts.iter().any(|a| a == "delete");
        if sa.resources.iter().any(|(_, acts, _)| replaced(acts)) {
            return (Action::Replace, describe(&replaced, "is replaced"));
        }
        if has("update") {
            return (
                Action::Replace,
                describe(
                    &|acts| acts.iter().any(|a| a == "update"),
                    "is updated in place",
                ),
            );
        }
        (
            Action::Replace,
            describe(&|acts| !(acts.len() == 1 && acts[0] == "no-op"), "changes"),
        )
    };
    let mut changes = Vec::new();
    for svc in services {
        let (action, reason) = match per.get(svc.as_str()) {
            Some(sa) => summarize(sa, true),
            None => (Action::Unchanged, "terraform plans no change".into()),
        };
        changes.push(Change {
            service: svc.clone(),
            action,
            reason,
        });
    }
    for (svc, sa) in &per {
        if services.iter().any(|s| s.as_str() == svc) {
            continue;
        }
        let deletes = sa
            .resources
            .iter()
            .any(|(_, acts, _)| acts.iter().any(|a| a == "delete"));
        if !deletes {
            continue;
        }
        let service = ServiceName::new(svc).map_err(|e| {
            bad(format!(
                "the plan names service {svc:?}, which is not a service name: {e}"
            ))
        })?;
        let (action, reason) = summarize(sa, false);
        changes.push(Change {
            service,
            action,
            reason,
        });
    }
    Ok(changes)
}

// ---------------------------------------------------------------------------------------------
// The driver
// ---------------------------------------------------------------------------------------------

/// Applies stacks with Terraform/OpenTofu. See the module docs.
#[derive(Debug, Clone)]
pub struct TerraformProvisioner {
    cfg: TerraformConfig,
}

/// Where and for whom a Terraform run happens.
struct RunCtx<'a> {
    dir: &'a Path,
    stage: Stage,
    events: &'a Events,
    /// Service names output lines may be attributed to.
    services: &'a [String],
}

/// What one Terraform run printed.
struct RunOutput {
    stdout: String,
}

impl TerraformProvisioner {
    pub fn new(cfg: TerraformConfig) -> Self {
        TerraformProvisioner { cfg }
    }

    pub fn config(&self) -> &TerraformConfig {
        &self.cfg
    }

    /// `<work_root>/<project>/terraform`.
    pub fn work_dir(&self, project: &ProjectName) -> PathBuf {
        self.cfg.work_root.join(project.as_str()).join("terraform")
    }

    /// The module's files: `(file name, contents)`, sorted by name.
    pub fn module_files(&self) -> Result<Vec<(String, String)>, ProvisionError> {
        let Some(dir) = &self.cfg.module_source else {
            return Ok(EMBEDDED_MODULE
                .iter()
                .map(|(n, t)| (n.to_string(), t.to_string()))
                .collect());
        };
        let io = |source| ProvisionError::Io {
            path: dir.clone(),
            source,
        };
        let mut files = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(io)? {
            let entry = entry.map_err(io)?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if !(name.ends_with(".tf") || name == ".terraform.lock.hcl")
                || !entry.file_type().map_err(io)?.is_file()
            {
                continue;
            }
            let text =
                std::fs::read_to_string(entry.path()).map_err(|source| ProvisionError::Io {
                    path: entry.path(),
                    source,
                })?;
            files.push((name, text));
        }
        if !files.iter().any(|(n, _)| n.ends_with(".tf")) {
            return Err(ProvisionError::Invalid(format!(
                "terraform module_source {} contains no .tf file; expected a copy of iac's infra/ module",
                dir.display()
            )));
        }
        files.sort();
        Ok(files)
    }

    /// Renders and checks the tfvars for `stack`, then writes the module and the tfvars (as
    /// `tfvars_name`) into the work dir, atomically. Returns the work dir.
    fn prepare(&self, stack: &Stack, tfvars_name: &str) -> Result<PathBuf, ProvisionError> {
        self.cfg
            .limits
            .validate("terraform")
            .map_err(ProvisionError::Invalid)?;
        let stack = &with_limits(stack, &self.cfg.limits);
        let dir = self.work_dir(&stack.project);
        let files = self.module_files()?;
        let previous = if stack.keep.is_empty() {
            None
        } else {
            read_tfvars(&dir.join(TFVARS_FILE))?
        };
        let tfvars = render_tfvars(stack, previous.as_ref(), &self.cfg.docker_host)?;
        let json = tfvars_json(&tfvars);
        let value: Value = serde_json::from_str(&json).expect("just rendered");
        check_declared(&value, &files)?;
        create_private_dir(&dir)?;
        let wanted: BTreeSet<&str> = files.iter().map(|(n, _)| n.as_str()).collect();
        // Module files from an earlier module_source that this one no longer has.
        for entry in std::fs::read_dir(&dir).map_err(|source| ProvisionError::Io {
            path: dir.clone(),
            source,
        })? {
            let entry = entry.map_err(|source| ProvisionError::Io {
                path: dir.clone(),
                source,
            })?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.ends_with(".tf") && !wanted.contains(name.as_str()) {
                std::fs::remove_file(entry.path()).map_err(|source| ProvisionError::Io {
                    path: entry.path(),
                    source,
                })?;
            }
        }
        for (name, text) in &files {
            write_if_changed(&dir.join(name), text.as_bytes())?;
        }
        write_secret_if_changed(&dir.join(tfvars_name), json.as_bytes())?;
        Ok(dir)
    }

    /// Runs `<binary> <args>` in `dir`, streaming its lines as events. `capture_only`: stdout is
    /// machine output (JSON) and is not streamed.
    async fn run(
        &self,
        cx: &RunCtx<'_>,
        step: &str,
        args: &[String],
        capture_only: bool,
    ) -> Result<RunOutput, ProvisionError> {
        let RunCtx {
            dir,
            stage,
            events,
            services,
        } = *cx;
        let tool = self.cfg.binary.clone();
        events.debug(
            stage,
            format!("{tool} {} (in {})", args.join(" "), dir.display()),
        );
        let mut cmd = tokio::process::Command::new(&tool);
        cmd.args(args)
            .current_dir(dir)
            .env("TF_IN_AUTOMATION", "1")
            .env("TF_INPUT", "0")
            .env("CHECKPOINT_DISABLE", "1")
            .envs(&self.cfg.extra_env)
            .envs(iac_core::trace_context::env())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd.spawn().map_err(|e| ProvisionError::Tool {
            tool: tool.clone(),
            step: step.to_string(),
            code: None,
            message: format!(
                "cannot run {tool:?} in {}: {e}; install Terraform or OpenTofu, or set the terraform provisioner's `binary`",
                dir.display()
            ),
        })?;
        let stdout = child.stdout.take().expect("piped");
        let stderr = child.stderr.take().expect("piped");
        let tail_len = self.cfg.error_tail_lines.max(1);
        let err_tail: Arc<Mutex<Vec<String>>> = Arc::new(Mutex::new(Vec::new()));
        let out_events = events.clone();
        let out_services = services.to_vec();
        let out_task = async move {
            let mut lines = BufReader::new(stdout).lines();
            let mut all = String::new();
            while let Ok(Some(line)) = lines.next_line().await {
                if !capture_only && !line.trim().is_empty() {
                    emit_line(&out_events, stage, &out_services, EventLevel::Info, &line);
                }
                all.push_str(&line);
                all.push('\n');
            }
            all
        };
        let err_events = events.clone();
        let err_services = services.to_vec();
        let tail = err_tail.clone();
        let err_task = async move {
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if line.trim().is_empty() {
                    continue;
                }
                let level = if line.trim_start().starts_with("Error") {
                    EventLevel::Error
                } else {
                    EventLevel::Warn
                };
                emit_line(&err_events, stage, &err_services, level, &line);
                let mut t = tail.lock().expect("not poisoned");
                t.push(line);
                if t.len() > tail_len {
                    t.remove(0);
                }
            }
        };
        let (stdout, ()) = tokio::join!(out_task, err_task);
        let status = child.wait().await.map_err(|e| ProvisionError::Tool {
            tool: tool.clone(),
            step: step.to_string(),
            code: None,
            message: format!("waiting for {tool}: {e}"),
        })?;
        if !status.success() {
            let tail = err_tail.lock().expect("not poisoned").join("\n");
            let message = if tail.is_empty() {
                let out_tail: Vec<&str> = stdout.lines().filter(|l| !l.trim().is_empty()).collect();
                let from = out_tail.len().saturating_sub(tail_len);
                if out_tail.is_empty() {
                    format!("{tool} {step} printed nothing", step = args.join(" "))
                } else {
                    out_tail[from..].join("\n")
                }
            } else {
                tail
            };
            let code = status.code();
            events.error(
                stage,
                format!(
                    "{tool} {step} failed ({})",
                    code.map_or("killed by a signal".into(), |c| format!("exit {c}"))
                ),
            );
            return Err(ProvisionError::Tool {
                tool,
                step: step.to_string(),
                code,
                message,
            });
        }
        Ok(RunOutput { stdout })
    }

    fn init_args(&self) -> Vec<String> {
        let mut args = vec![
            "init".to_string(),
            "-input=false".into(),
            "-no-color".into(),
        ];
        if let Some(p) = &self.cfg.plugin_dir {
            args.push(format!("-plugin-dir={}", p.display()));
        }
        args
    }

    /// init → plan -out → show -json: the changes the saved plan makes.
    async fn plan_changes(
        &self,
        cx: &RunCtx<'_>,
        stack: &Stack,
        plan_file: &str,
        var_file: Option<&str>,
    ) -> Result<Vec<Change>, ProvisionError> {
        self.run(cx, "init", &self.init_args(), false).await?;
        let mut plan = vec![
            "plan".to_string(),
            "-input=false".into(),
            "-no-color".into(),
        ];
        if let Some(f) = var_file {
            plan.push(format!("-var-file={f}"));
        }
        plan.push(format!("-out={plan_file}"));
        self.run(cx, "plan", &plan, false).await?;
        let show = ["show", "-json", "-no-color", plan_file].map(String::from);
        let out = self.run(cx, "show", &show, true).await?;
        let json: Value = serde_json::from_str(out.stdout.trim()).map_err(|e| {
            ProvisionError::Invalid(format!(
                "`{} show -json {plan_file}` did not print JSON: {e}",
                self.cfg.binary
            ))
        })?;
        let services: Vec<ServiceName> = stack.services.iter().map(|s| s.service.clone()).collect();
        changes_from_plan(&json, &services)
    }

    async fn outputs(&self, cx: &RunCtx<'_>) -> Result<Outputs, ProvisionError> {
        let args = ["output", "-json", "-no-color"].map(String::from);
        let out = self.run(cx, "output", &args, true).await?;
        parse_outputs(&out.stdout)
    }

    /// Serializes iac's runs in one project's work dir (`<work_root>/<project>/terraform.lock`):
    /// a concurrent `iac plan` must not re-init or rewrite the module under a running apply.
    /// Held until the returned file is dropped.
    async fn lock(
        &self,
        project: &ProjectName,
        events: &Events,
        stage: Stage,
    ) -> Result<std::fs::File, ProvisionError> {
        let path = self
            .cfg
            .work_root
            .join(project.as_str())
            .join("terraform.lock");
        let io = |source| ProvisionError::Io {
            path: path.clone(),
            source,
        };
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(io)?;
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io)?;
        match file.try_lock() {
            Ok(()) => return Ok(file),
            Err(std::fs::TryLockError::WouldBlock) => {
                events.info(
                    stage,
                    format!(
                        "waiting for another terraform run of project {project} ({})",
                        path.display()
                    ),
                );
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(io(e)),
        }
        tokio::task::spawn_blocking(move || file.lock().map(|()| file))
            .await
            .map_err(|e| io(std::io::Error::other(e)))?
            .map_err(io)
    }

    /// Whether Terraform has ever run for this project (a state file or an initialized dir).
    fn has_state(dir: &Path) -> bool {
        dir.join("terraform.tfstate").exists() || dir.join(".terraform").is_dir()
    }
}

/// Creates `dir` (and its parents) and makes it 0700: Terraform's state and plan files in it hold
/// the services' environment values.
fn create_private_dir(dir: &Path) -> Result<(), ProvisionError> {
    use std::os::unix::fs::PermissionsExt;
    let io = |source| ProvisionError::Io {
        path: dir.to_path_buf(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(io)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(io)
}

/// Like [`write_if_changed`] for a file holding secrets: 0600 (set on the temp file before the
/// rename), and rewritten when an earlier version has looser permissions even if the bytes match.
fn write_secret_if_changed(path: &Path, bytes: &[u8]) -> Result<(), ProvisionError> {
    use std::os::unix::fs::PermissionsExt;
    let private = std::fs::metadata(path)
        .map(|m| m.permissions().mode() & 0o777 == 0o600)
        .unwrap_or(false);
    if private && std::fs::read(path).ok().as_deref() == Some(bytes) {
        return Ok(());
    }
    write_atomic(path, bytes, Some(0o600)).map_err(|source| ProvisionError::Io {
        path: path.to_path_buf(),
        source,
    })
}

fn write_if_changed(path: &Path, bytes: &[u8]) -> Result<(), ProvisionError> {
    if std::fs::read(path).ok().as_deref() == Some(bytes) {
        return Ok(());
    }
    write_atomic(path, bytes, Some(0o644)).map_err(|source| ProvisionError::Io {
        path: path.to_path_buf(),
        source,
    })
}

fn read_tfvars(path: &Path) -> Result<Option<Tfvars>, ProvisionError> {
    match std::fs::read_to_string(path) {
        Ok(text) => serde_json::from_str(&text).map(Some).map_err(|e| {
            ProvisionError::Invalid(format!(
                "{}: cannot read the previously applied tfvars (needed to keep services that failed to prepare): {e}",
                path.display()
            ))
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(ProvisionError::Io { path: path.to_path_buf(), source }),
    }
}

/// Emits one line of Terraform output, attributed to a service when it names one of its
/// resources (`…["<service>"]…`).
fn emit_line(events: &Events, stage: Stage, services: &[String], level: EventLevel, line: &str) {
    let svc = line.split("[\"").skip(1).find_map(|rest| {
        let key = rest.split("\"]").next()?;
        services.iter().find(|s| s.as_str() == key)
    });
    match svc.and_then(|s| ServiceName::new(s).ok()) {
        Some(name) => events.for_service(&name).emit(stage, level, line),
        None => events.emit(stage, level, line),
    }
}

fn service_names(stack: &Stack) -> Vec<String> {
    stack
        .services
        .iter()
        .map(|s| s.service.to_string())
        .chain(stack.keep.iter().map(|s| s.to_string()))
        .collect()
}

#[async_trait]
impl Provisioner for TerraformProvisioner {
    fn name(&self) -> &'static str {
        "terraform"
    }

    async fn diff(&self, stack: &Stack) -> Result<Vec<Change>, ProvisionError> {
        let events = Events::discard();
        let _lock = self.lock(&stack.project, &events, Stage::Plan).await?;
        let dir = self.prepare(stack, DIFF_TFVARS_FILE)?;
        let names = service_names(stack);
        let cx = RunCtx {
            dir: &dir,
            stage: Stage::Plan,
            events: &events,
            services: &names,
        };
        let result = self
            .plan_changes(&cx, stack, DIFF_PLAN_FILE, Some(DIFF_TFVARS_FILE))
            .await;
        let _ = std::fs::remove_file(dir.join(DIFF_PLAN_FILE));
        let _ = std::fs::remove_file(dir.join(DIFF_TFVARS_FILE));
        result
    }

    async fn apply(
        &self,
        stack: &Stack,
        _gate: Arc<dyn HealthProber>,
        events: &Events,
    ) -> Result<Applied, ProvisionError> {
        let _lock = self.lock(&stack.project, events, Stage::Provision).await?;
        let dir = self.prepare(stack, TFVARS_FILE)?;
        events.info(
            Stage::Provision,
            format!(
                "terraform: {} service(s) rendered into {} (no per-service health gate: terraform applies all at once)",
                stack.services.len(),
                dir.join(TFVARS_FILE).display()
            ),
        );
        let names = service_names(stack);
        let cx = RunCtx {
            dir: &dir,
            stage: Stage::Provision,
            events,
            services: &names,
        };
        let changes = self.plan_changes(&cx, stack, PLAN_FILE, None).await?;
        let apply = [
            "apply",
            "-input=false",
            "-no-color",
            "-auto-approve",
            PLAN_FILE,
        ]
        .map(String::from);
        let applied = self.run(&cx, "apply", &apply, false).await;
        let _ = std::fs::remove_file(dir.join(PLAN_FILE));
        applied?;
        let outputs = self.outputs(&cx).await?;
        let mut result = Applied::default();
        for s in &stack.services {
            let change = changes.iter().find(|c| c.service == s.service);
            let action = change.map_or(Action::Unchanged, |c| c.action);
            let out = outputs.services.get(s.service.as_str());
            let endpoint = out.and_then(OutputService::endpoint);
            let error = match (out, endpoint) {
                (_, Some(_)) => None,
                (None, None) => Some(format!(
                    "terraform output \"services\" has no entry for {}",
                    s.service
                )),
                (Some(_), None) => Some(format!(
                    "terraform output \"services\"[{:?}] has no host address for the mesh port (host_ip/host_port)",
                    s.service.as_str()
                )),
            };
            result.services.push(AppliedService {
                service: s.service.clone(),
                action,
                endpoint,
                health: None,
                error,
            });
        }
        result.removed = changes
            .iter()
            .filter(|c| c.action == Action::Remove)
            .map(|c| c.service.clone())
            .collect::<Vec<_>>();
        Ok(result)
    }

    async fn destroy(
        &self,
        project: &ProjectName,
        events: &Events,
    ) -> Result<Vec<String>, ProvisionError> {
        let dir = self.work_dir(project);
        if !Self::has_state(&dir) {
            events.info(
                Stage::Destroy,
                format!(
                    "terraform: nothing to destroy for project {project} (no state in {})",
                    dir.display()
                ),
            );
            return Ok(Vec::new());
        }
        let _lock = self.lock(project, events, Stage::Destroy).await?;
        if !dir.join(TFVARS_FILE).exists() && !dir.join("terraform.tfstate").exists() {
            // Only `iac plan` ran here (it never writes the applied tfvars): nothing was applied.
            events.info(
                Stage::Destroy,
                format!("terraform: nothing to destroy for project {project} (never applied)"),
            );
            return Ok(Vec::new());
        }
        if !dir.join(TFVARS_FILE).exists() {
            return Err(ProvisionError::Invalid(format!(
                "{} is missing, but terraform needs the variables of the last apply to destroy project {project}; \
                 restore it or run `terraform destroy` in {} yourself",
                dir.join(TFVARS_FILE).display(),
                dir.display()
            )));
        }
        // Bring the module up to date (a newer iac may ship a newer one); the tfvars stay as applied.
        for (name, text) in self.module_files()? {
            write_if_changed(&dir.join(&name), text.as_bytes())?;
        }
        let names: Vec<String> = read_tfvars(&dir.join(TFVARS_FILE))?
            .map(|t| t.services.into_keys().collect())
            .unwrap_or_default();
        let cx = RunCtx {
            dir: &dir,
            stage: Stage::Destroy,
            events,
            services: &names,
        };
        if !dir.join(".terraform").is_dir() {
            self.run(&cx, "init", &self.init_args(), false).await?;
        }
        let before = self.outputs(&cx).await?;
        let args = ["destroy", "-input=false", "-no-color", "-auto-approve"].map(String::from);
        self.run(&cx, "destroy", &args, false).await?;
        let mut removed = Vec::new();
        for s in before.services.values() {
            removed.extend(s.envoy_container_name.clone());
            removed.extend(s.app_container_name.clone());
        }
        removed.extend(before.network_name);
        Ok(removed)
    }

    async fn running(&self, project: &ProjectName) -> Result<Vec<RunningService>, ProvisionError> {
        let dir = self.work_dir(project);
        if !Self::has_state(&dir) {
            return Ok(Vec::new());
        }
        let events = Events::discard();
        let cx = RunCtx {
            dir: &dir,
            stage: Stage::Health,
            events: &events,
            services: &[],
        };
        let outputs = self.outputs(&cx).await?;
        outputs
            .services
            .into_iter()
            .map(|(name, s)| {
                let service = ServiceName::new(&name).map_err(|e| {
                    ProvisionError::Invalid(format!(
                        "terraform output names service {name:?}, which is invalid: {e}"
                    ))
                })?;
                Ok(RunningService {
                    endpoint: s.endpoint(),
                    spec_hash: s.spec_hash.clone().unwrap_or_default(),
                    image: s.image.clone().unwrap_or_default(),
                    // Terraform's state, not a live inspect: must_run = true means it was running
                    // when last applied.
                    state: "running".into(),
                    service,
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn module() -> Vec<(String, String)> {
        EMBEDDED_MODULE
            .iter()
            .map(|(n, t)| (n.to_string(), t.to_string()))
            .collect()
    }

    #[test]
    fn embedded_module_declares_the_expected_variables() {
        let d = declared_variables(&module()).unwrap();
        let names: Vec<&str> = d.keys().map(String::as_str).collect();
        assert_eq!(
            names,
            ["docker_host", "mesh_port", "network", "project", "services"]
        );
        assert!(d["project"].required && d["services"].required && !d["docker_host"].required);
        let TfType::Map(svc) = &d["services"].ty else {
            panic!("services is a map: {:?}", d["services"].ty)
        };
        let TfType::Object(attrs) = svc.as_ref() else {
            panic!("of objects")
        };
        let TfType::Object(app) = &attrs["app"].0 else {
            panic!("app is an object")
        };
        let TfType::List(ports) = &app["ports"].0 else {
            panic!("ports is a list")
        };
        let TfType::Object(port) = ports.as_ref() else {
            panic!("of objects")
        };
        assert_eq!(
            port["external"],
            (TfType::Number, true),
            "external is optional"
        );
        assert_eq!(port["internal"], (TfType::Number, false));
    }

    #[test]
    fn type_check_reports_the_path() {
        let files = vec![(
            "v.tf".to_string(),
            r#"variable "x" { type = map(object({ a = string, b = optional(list(number)) })) }"#
                .to_string(),
        )];
        check_declared(
            &serde_json::json!({"x": {"k": {"a": "s", "b": [1, 2]}}}),
            &files,
        )
        .unwrap();
        check_declared(&serde_json::json!({"x": {"k": {"a": "s"}}}), &files).unwrap();
        let e = check_declared(&serde_json::json!({"x": {"k": {"a": "s", "c": 1}}}), &files)
            .unwrap_err();
        assert!(e.to_string().contains(r#"var.x["k"].c is set"#), "{e}");
        let e = check_declared(&serde_json::json!({"x": {"k": {"b": []}}}), &files).unwrap_err();
        assert!(e.to_string().contains(r#"var.x["k"].a is missing"#), "{e}");
        let e = check_declared(
            &serde_json::json!({"x": {"k": {"a": "s", "b": ["one"]}}}),
            &files,
        )
        .unwrap_err();
        assert!(
            e.to_string()
                .contains(r#"var.x["k"].b[0] is a string, but the module declares number"#),
            "{e}"
        );
        let e = check_declared(&serde_json::json!({}), &files).unwrap_err();
        assert!(e.to_string().contains(r#"does not set "x""#), "{e}");
    }

    #[test]
    fn unparsable_module_is_an_error_naming_the_file() {
        let files = vec![("broken.tf".to_string(), "variable \"x\" {".to_string())];
        let e = check_declared(&serde_json::json!({}), &files).unwrap_err();
        assert!(e.to_string().contains("broken.tf"), "{e}");
    }

    #[test]
    fn config_redacts_secret_env() {
        let mut cfg = TerraformConfig::default();
        cfg.extra_env
            .insert("TF_TOKEN_app_terraform_io".into(), "s3cr3t".into());
        cfg.extra_env
            .insert("TF_PLUGIN_CACHE_DIR".into(), "/cache".into());
        let dbg = format!("{cfg:?}");
        let ser = serde_json::to_string(&cfg).unwrap();
        for s in [&dbg, &ser] {
            assert!(!s.contains("s3cr3t"), "{s}");
            assert!(s.contains("/cache"), "{s}");
        }
        let back: TerraformConfig = serde_json::from_str(r#"{"binary": "tofu"}"#).unwrap();
        assert_eq!(back.binary, "tofu");
        assert_eq!(back.work_root, PathBuf::from(".iac/projects"));
    }

    #[test]
    fn outputs_parse_and_empty_state() {
        assert_eq!(parse_outputs("{}\n").unwrap(), Outputs::default());
        let o = parse_outputs(
            r#"{"services":{"sensitive":false,"type":"x","value":{"api":{"host_ip":"127.0.0.1","host_port":41001,
              "app_container_id":"a","app_container_name":"demo-api","envoy_container_id":"b",
              "envoy_container_name":"demo-api-envoy","spec_hash":"h","image":"i"}}},
              "network":{"sensitive":false,"type":"y","value":{"id":"n","name":"iacnet"}}}"#,
        )
        .unwrap();
        assert_eq!(
            o.services["api"].endpoint(),
            Some("127.0.0.1:41001".parse().unwrap())
        );
        assert_eq!(o.network_name.as_deref(), Some("iacnet"));
        let e = parse_outputs("not json").unwrap_err();
        assert!(e.to_string().contains("output -json"), "{e}");
    }

    #[test]
    fn plan_changes_map_per_service() {
        let rc = |addr: &str, name: &str, idx: &str, actions: &[&str]| {
            serde_json::json!({"address": addr, "mode": "managed", "type": "docker_container", "name": name,
                "index": idx, "change": {"actions": actions, "replace_paths": [["image"]]}})
        };
        let plan = serde_json::json!({"resource_changes": [
            rc("docker_container.app[\"a\"]", "app", "a", &["create"]),
            rc("docker_container.envoy[\"a\"]", "envoy", "a", &["create"]),
            rc("docker_container.app[\"b\"]", "app", "b", &["delete", "create"]),
            rc("docker_container.envoy[\"b\"]", "envoy", "b", &["no-op"]),
            rc("docker_container.app[\"c\"]", "app", "c", &["no-op"]),
            rc("docker_container.envoy[\"c\"]", "envoy", "c", &["no-op"]),
            rc("docker_container.app[\"d\"]", "app", "d", &["update"]),
            rc("docker_container.app[\"gone\"]", "app", "gone", &["delete"]),
            {"address": "docker_image.this[\"x\"]", "mode": "managed", "type": "docker_image", "name": "this",
             "index": "x", "change": {"actions": ["create"]}},
        ]});
        let svcs: Vec<ServiceName> = ["a", "b", "c", "d", "e"]
            .iter()
            .map(|s| ServiceName::new(s).unwrap())
            .collect();
        let ch = changes_from_plan(&plan, &svcs).unwrap();
        let actions: Vec<(&str, Action)> =
            ch.iter().map(|c| (c.service.as_str(), c.action)).collect();
        assert_eq!(
            actions,
            [
                ("a", Action::Create),
                ("b", Action::Replace),
                ("c", Action::Unchanged),
                ("d", Action::Replace),
                ("e", Action::Unchanged),
                ("gone", Action::Remove)
            ]
        );
        assert!(
            ch[1]
                .reason
                .contains("docker_container.app[\"b\"] is replaced (image changed)"),
            "{}",
            ch[1].reason
        );
        assert!(
            ch[3].reason.contains("updated in place"),
            "{}",
            ch[3].reason
        );
    }
}
