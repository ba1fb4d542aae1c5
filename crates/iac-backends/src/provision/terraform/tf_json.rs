//! Reading Terraform's JSON: `output -json` ([`parse_outputs`] → per-service endpoints) and
//! `show -json <planfile>` ([`changes_from_plan`] → per-service [`Change`]s).

use std::collections::BTreeMap;
use std::net::SocketAddr;

use serde::Deserialize;
use serde_json::Value;

use iac_core::{Action, Change, ProvisionError, ServiceName};

use super::declared::json_kind;

/// One service as `output -json` reports it (`output "services"` in `infra/outputs.tf`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct OutputService {
    /// The mesh listener's host address; null until the sidecar is published.
    pub host_ip: Option<String>,
    /// The mesh listener's host port.
    pub host_port: Option<u16>,
    /// The edge listener's host address (null for a service without an edge).
    #[serde(default)]
    pub edge_host_ip: Option<String>,
    /// The edge listener's host port (null without an edge).
    #[serde(default)]
    pub edge_host_port: Option<u16>,
    /// The app container's id.
    pub app_container_id: Option<String>,
    /// The app container's name.
    pub app_container_name: Option<String>,
    /// The Envoy container's id.
    pub envoy_container_id: Option<String>,
    /// The Envoy container's name.
    pub envoy_container_name: Option<String>,
    /// The spec hash the containers were created with.
    pub spec_hash: Option<String>,
    /// The app image.
    pub image: Option<String>,
}

impl OutputService {
    /// The mTLS endpoint on the host, when both address and port are known.
    pub fn endpoint(&self) -> Option<SocketAddr> {
        iac_core::addr::published(Some(self.host_ip.as_deref()?), self.host_port?)
    }

    /// The edge listener on the host, when the service has one.
    pub fn edge(&self) -> Option<SocketAddr> {
        iac_core::addr::published(Some(self.edge_host_ip.as_deref()?), self.edge_host_port?)
    }
}

/// What `output -json` says: services by name and the network's name, if any.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outputs {
    /// Services by name.
    pub services: BTreeMap<String, OutputService>,
    /// The project network's name, when the state has one.
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
