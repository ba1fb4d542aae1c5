//! The pure half of the Swarm provisioner's reconciling, as `provision/reconcile.rs` is for
//! docker: given the desired stack, the `[swarm]` settings and the project's services as the
//! engine reports them, what happens to each service. Both `diff` (`iac plan`) and `apply` act on
//! [`decide`]'s answer, so they cannot disagree.
//!
//! Rules:
//! * a service in the stack with no Swarm service → **create**;
//! * one whose Swarm service carries the desired Swarm spec hash ([`spec::spec_hash`]) →
//!   **unchanged**; another hash (or none) → **replace** (Swarm's rolling update);
//! * a Swarm service of the project not in the stack but in `stack.keep` (its build failed) →
//!   **kept** as it is;
//! * any other Swarm service of the project → **remove**.

use std::collections::HashMap;

use iac_core::stack::LABEL_SERVICE;
use iac_core::stack::LABEL_SPEC_HASH;
use iac_core::{Action, Change, ServiceName, ServiceStack, Stack};

use super::spec::{self, SwarmSettings};
use crate::engine::swarm::Service;

/// A Swarm service of the project as the engine reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Existing {
    /// The engine's service id.
    pub id: String,
    /// Its `iac.spec-hash` label.
    pub hash: Option<String>,
    /// Its version (an update names the version it replaces).
    pub version: u64,
    /// When its last rolling update started, if it had one (to tell the next one from it).
    pub update_started: Option<String>,
}

/// The iac service a Swarm service belongs to (its `iac.service` label) and what it is now;
/// `None` for a service without the labels.
pub fn existing(s: &Service) -> Option<(ServiceName, Existing)> {
    let spec = s.spec.as_ref()?;
    let labels = spec.labels.as_ref()?;
    let name = ServiceName::new(labels.get(LABEL_SERVICE)?).ok()?;
    Some((
        name,
        Existing {
            id: s.id.clone()?,
            hash: labels.get(LABEL_SPEC_HASH).cloned(),
            version: s.version.as_ref().and_then(|v| v.index).unwrap_or(0),
            update_started: s
                .update_status
                .as_ref()
                .and_then(|u| u.started_at.as_ref())
                .map(|t| format!("{t:?}")),
        },
    ))
}

/// What to do with one service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step<'a> {
    /// A service of the stack: created, replaced or left unchanged (`action`), with the Swarm
    /// spec hash it must carry.
    Apply {
        /// The service as planned.
        svc: &'a ServiceStack,
        /// Create, replace or unchanged.
        action: Action,
        /// The Swarm spec hash the service must carry.
        hash: String,
        /// Why, as the plan report says it.
        reason: String,
    },
    /// Not in the stack, but its build failed this time: left running as it is.
    Keep {
        /// The service kept.
        service: ServiceName,
    },
    /// Not in the stack: removed.
    Remove {
        /// The service removed.
        service: ServiceName,
        /// Its engine id.
        id: String,
    },
}

impl Step<'_> {
    /// The change `iac plan` shows; `None` for a kept service (plans do not list them).
    pub fn change(&self) -> Option<Change> {
        match self {
            Step::Apply {
                svc,
                action,
                reason,
                ..
            } => Some(Change {
                service: svc.service.clone(),
                action: *action,
                reason: reason.clone(),
            }),
            Step::Keep { .. } => None,
            Step::Remove { service, .. } => Some(Change {
                service: service.clone(),
                action: Action::Remove,
                reason: "not in the repos file".into(),
            }),
        }
    }
}

/// Every service's step: the stack's services in order, then the others by name.
pub fn decide<'a>(
    stack: &'a Stack,
    settings: &SwarmSettings,
    current: &HashMap<ServiceName, Existing>,
) -> Vec<Step<'a>> {
    let mut out: Vec<Step<'a>> = stack
        .services
        .iter()
        .map(|svc| {
            let hash = spec::spec_hash(svc, settings, &svc.envoy.image);
            let (action, reason) = match current.get(&svc.service) {
                None => (Action::Create, "no such Swarm service".to_string()),
                Some(c) if c.hash.as_deref() == Some(hash.as_str()) => {
                    (Action::Unchanged, format!("spec hash {hash}"))
                }
                Some(c) => (
                    Action::Replace,
                    format!(
                        "spec hash {} → {hash}",
                        c.hash.as_deref().unwrap_or("(none)")
                    ),
                ),
            };
            Step::Apply {
                svc,
                action,
                hash,
                reason,
            }
        })
        .collect();
    let mut others: Vec<(&ServiceName, &Existing)> = current
        .iter()
        .filter(|(name, _)| stack.services.iter().all(|s| &s.service != *name))
        .collect();
    others.sort_by(|a, b| a.0.cmp(b.0));
    for (name, c) in others {
        out.push(if stack.keep.contains(name) {
            Step::Keep {
                service: name.clone(),
            }
        } else {
            Step::Remove {
                service: name.clone(),
                id: c.id.clone(),
            }
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use iac_core::plan::{PlanInput, PlannedService, plan};
    use iac_core::{CertPaths, IssuedCerts, ProjectName};

    fn stack(names: &[&str], keep: &[&str]) -> Stack {
        let svc = |n: &str| PlannedService {
            name: ServiceName::new(n).unwrap(),
            image: format!("iac/p-{n}:1"),
            envoy_config: format!("/s/{n}/envoy.yaml").into(),
            envoy_config_digest: format!("sha256:{n}"),
            certs: IssuedCerts {
                paths: CertPaths {
                    ca: "/s/ca.pem".into(),
                    cert: format!("/s/{n}.pem").into(),
                    key: format!("/s/{n}.key").into(),
                },
                fingerprint: format!("sha256:{n}-certs"),
            },
            app_port: None,
            env: Default::default(),
            edge: None,
            replicas: 2,
            egress: Default::default(),
        };
        plan(&PlanInput {
            project: ProjectName::new("p").unwrap(),
            network: "iacnet".into(),
            envoy_image: "iac/envoy:1.40.0".into(),
            otel_endpoint: None,
            services: names.iter().map(|n| svc(n)).collect(),
            keep: keep.iter().map(|n| ServiceName::new(n).unwrap()).collect(),
            sandbox: None,
        })
    }

    fn ex(id: &str, hash: Option<&str>) -> Existing {
        Existing {
            id: id.into(),
            hash: hash.map(String::from),
            version: 3,
            update_started: None,
        }
    }

    fn name(n: &str) -> ServiceName {
        ServiceName::new(n).unwrap()
    }

    #[test]
    fn create_unchanged_replace_keep_remove() {
        let s = stack(&["new", "same", "changed"], &["broken"]);
        let settings = SwarmSettings::default();
        let same = s
            .services
            .iter()
            .find(|x| x.service.as_str() == "same")
            .unwrap();
        let same_hash = spec::spec_hash(same, &settings, "iac/envoy:1.40.0");
        let current = HashMap::from([
            (name("same"), ex("id-same", Some(&same_hash))),
            (name("changed"), ex("id-changed", Some("0ld"))),
            (name("broken"), ex("id-broken", Some("x"))),
            (name("gone"), ex("id-gone", None)),
        ]);
        let steps = decide(&s, &settings, &current);
        let summary: Vec<String> = steps
            .iter()
            .map(|st| match st {
                Step::Apply { svc, action, .. } => format!("{} {}", svc.service, action.as_str()),
                Step::Keep { service } => format!("{service} keep"),
                Step::Remove { service, id } => format!("{service} remove {id}"),
            })
            .collect();
        assert_eq!(
            summary,
            [
                "changed replace",
                "new create",
                "same unchanged",
                "broken keep",
                "gone remove id-gone"
            ]
        );
        let Step::Apply { hash, reason, .. } = &steps[0] else {
            panic!()
        };
        assert_eq!(*reason, format!("spec hash 0ld → {hash}"));
        // What `iac plan` shows: the kept service is not listed.
        let changes: Vec<Change> = steps.iter().filter_map(Step::change).collect();
        assert_eq!(changes.len(), 4);
        assert_eq!(changes[3].action, Action::Remove);
        assert_eq!(changes[3].reason, "not in the repos file");
    }

    #[test]
    fn a_service_without_a_hash_label_is_replaced() {
        let s = stack(&["a"], &[]);
        let current = HashMap::from([(name("a"), ex("id-a", None))]);
        let steps = decide(&s, &SwarmSettings::default(), &current);
        let Step::Apply { action, reason, .. } = &steps[0] else {
            panic!()
        };
        assert_eq!(*action, Action::Replace);
        assert!(reason.starts_with("spec hash (none) → "), "{reason}");
    }

    #[test]
    fn the_settings_and_replicas_are_part_of_the_hash() {
        let s = stack(&["a"], &[]);
        let base = spec::spec_hash(
            &s.services[0],
            &SwarmSettings::default(),
            "iac/envoy:1.40.0",
        );
        let current = HashMap::from([(name("a"), ex("id-a", Some(&base)))]);
        let slower = SwarmSettings {
            stop_grace: std::time::Duration::from_secs(30),
            ..SwarmSettings::default()
        };
        let steps = decide(&s, &slower, &current);
        assert!(matches!(
            steps[0],
            Step::Apply {
                action: Action::Replace,
                ..
            }
        ));
        let mut more = s.clone();
        more.services[0].replicas = 5;
        let steps = decide(&more, &SwarmSettings::default(), &current);
        assert!(matches!(
            steps[0],
            Step::Apply {
                action: Action::Replace,
                ..
            }
        ));
    }
}
