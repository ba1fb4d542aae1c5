//! The pure half of the Docker provisioner: given the desired [`Stack`] and the containers the
//! engine reports for the project (identified by their `iac.*` labels), decide per service
//! whether to create, replace, leave unchanged or remove it. No engine access here, so every
//! decision is table-tested.
//!
//! Rules (first match wins):
//! * a service in the stack with neither container of its pair → **create**;
//! * a service in the stack with a container labelled with another spec hash → **replace**
//!   (health-gated by the provisioner);
//! * a service in the stack running the desired spec hash but broken — a container missing or
//!   not running, or named in `stack.repair` (the deployer found it unreachable) → **repair**
//!   (the same health-gated replacement, with the same spec);
//! * a service in the stack whose pair is complete, running and labelled with the desired spec
//!   hash → **unchanged**;
//! * a service not in the stack but listed in `stack.keep` → left alone (reported unchanged);
//! * a service not in the stack and not kept → **remove**.
//!
//! Containers of a service that do not carry the canonical names (`<project>-<svc>`,
//! `<project>-<svc>-envoy`) — e.g. the temporary `-next-` pair of an interrupted replacement —
//! are *strays*: the provisioner removes them before acting on the service (never for kept
//! services).

use std::collections::{BTreeMap, BTreeSet};

use iac_core::plan::{app_container_name, envoy_container_name};
use iac_core::{Action, Change, ProjectName, Role, ServiceName, ServiceStack, Stack};

pub use crate::engine::Observed;

/// A service's canonical pair as found on the engine.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pair {
    /// The app container, when there is one.
    pub app: Option<Observed>,
    /// The Envoy sidecar, when there is one.
    pub envoy: Option<Observed>,
}

impl Pair {
    /// Neither container exists.
    pub fn is_empty(&self) -> bool {
        self.app.is_none() && self.envoy.is_none()
    }

    /// The app first (it lives in the sidecar's network namespace), then the sidecar: the order
    /// to remove them in.
    pub fn containers(&self) -> Vec<&Observed> {
        self.app.iter().chain(self.envoy.iter()).collect()
    }
}

/// What to do with one service, and what the engine has for it now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServicePlan {
    /// The service.
    pub service: ServiceName,
    /// What happens to it (create, replace, unchanged, remove).
    pub action: Action,
    /// Why, in a sentence (shown by `iac plan`).
    pub reason: String,
    /// The desired pair (absent for removals and kept services).
    pub desired: Option<ServiceStack>,
    /// The canonical pair currently on the engine.
    pub current: Pair,
    /// The service's non-canonical containers (leftovers), removed before acting.
    pub strays: Vec<Observed>,
    /// Not in the stack but listed in `stack.keep`: nothing is done to it.
    pub kept: bool,
}

impl ServicePlan {
    /// The plan line `iac plan` and the events show.
    pub fn change(&self) -> Change {
        Change {
            service: self.service.clone(),
            action: self.action,
            reason: self.reason.clone(),
        }
    }
}

fn short(hash: &str) -> &str {
    &hash[..hash.len().min(12)]
}

/// Groups the observed containers by service (containers without a valid `iac.service` label are
/// ignored: they belong to no service and only `destroy` touches them).
fn by_service(observed: &[Observed]) -> BTreeMap<ServiceName, Vec<Observed>> {
    let mut out: BTreeMap<ServiceName, Vec<Observed>> = BTreeMap::new();
    for o in observed {
        if let Some(svc) = o.service.as_deref().and_then(|s| ServiceName::new(s).ok()) {
            out.entry(svc).or_default().push(o.clone());
        }
    }
    out
}

fn split(
    project: &ProjectName,
    svc: &ServiceName,
    containers: Vec<Observed>,
) -> (Pair, Vec<Observed>) {
    let app_name = app_container_name(project, svc);
    let envoy_name = envoy_container_name(project, svc);
    let mut pair = Pair::default();
    let mut strays = Vec::new();
    for c in containers {
        if c.name == app_name {
            pair.app = Some(c);
        } else if c.name == envoy_name {
            pair.envoy = Some(c);
        } else {
            strays.push(c);
        }
    }
    // App-role strays first: they live in their sidecar's namespace.
    strays.sort_by_key(|c| (c.role != Some(Role::App), c.name.clone()));
    (pair, strays)
}

/// What is wrong with a present pair, if anything: its spec differs (→ replace), or it runs the
/// desired spec but is broken — a container missing or not running (→ repair).
enum Mismatch {
    Spec(String),
    Broken(String),
}

fn mismatch(pair: &Pair, want: &ServiceStack) -> Option<Mismatch> {
    // A present container with another spec: the pair is replaced whatever state it is in.
    for c in pair.containers() {
        let have = c.spec_hash.as_deref().unwrap_or("");
        if have != want.spec_hash {
            let have = if have.is_empty() {
                "(none)"
            } else {
                short(have)
            };
            return Some(Mismatch::Spec(format!(
                "spec hash {have} → {}",
                short(&want.spec_hash)
            )));
        }
    }
    match (&pair.app, &pair.envoy) {
        (Some(_), None) => return Some(Mismatch::Broken("sidecar container missing".into())),
        (None, Some(_)) => return Some(Mismatch::Broken("app container missing".into())),
        (None, None) => return Some(Mismatch::Broken("not running".into())),
        (Some(_), Some(_)) => {}
    }
    for (what, c) in [(Role::Envoy, &pair.envoy), (Role::App, &pair.app)] {
        let c = c.as_ref().expect("both present");
        if !c.is_running() {
            let what = if what == Role::Envoy {
                "sidecar"
            } else {
                "app"
            };
            return Some(Mismatch::Broken(format!(
                "{what} container is {}",
                if c.state.is_empty() {
                    "not running"
                } else {
                    &c.state
                }
            )));
        }
    }
    None
}

/// Decides what to do per service. The result lists the stack's services in stack order, then
/// the other services found on the engine (removed or kept) by name.
pub fn reconcile(stack: &Stack, observed: &[Observed]) -> Vec<ServicePlan> {
    let mut groups = by_service(observed);
    let mut plans = Vec::new();
    for want in &stack.services {
        let (current, strays) = split(
            &stack.project,
            &want.service,
            groups.remove(&want.service).unwrap_or_default(),
        );
        let (action, reason) = if current.is_empty() {
            let reason = if strays.is_empty() {
                "not running".to_string()
            } else {
                format!(
                    "not running ({} leftover container(s) to clean up)",
                    strays.len()
                )
            };
            (Action::Create, reason)
        } else {
            match mismatch(&current, want) {
                Some(Mismatch::Spec(why)) => (Action::Replace, why),
                Some(Mismatch::Broken(why)) => (Action::Repair, why),
                None => match stack.repair.get(&want.service) {
                    Some(why) => (Action::Repair, why.clone()),
                    None => (
                        Action::Unchanged,
                        format!("spec hash {} matches", short(&want.spec_hash)),
                    ),
                },
            }
        };
        plans.push(ServicePlan {
            service: want.service.clone(),
            action,
            reason,
            desired: Some(want.clone()),
            current,
            strays,
            kept: false,
        });
    }
    let keep: BTreeSet<&ServiceName> = stack.keep.iter().collect();
    for (svc, containers) in groups {
        let (current, strays) = split(&stack.project, &svc, containers);
        let kept = keep.contains(&svc);
        let (action, reason) = if kept {
            (
                Action::Unchanged,
                "kept: not prepared in this run, what runs is left as it is".to_string(),
            )
        } else {
            (Action::Remove, "not in the stack".to_string())
        };
        plans.push(ServicePlan {
            service: svc,
            action,
            reason,
            desired: None,
            current,
            strays,
            kept,
        });
    }
    plans
}

#[cfg(test)]
mod tests {
    use super::*;
    use iac_core::{ContainerSpec, NetworkMode, NetworkSpec};

    fn project() -> ProjectName {
        ProjectName::new("demo").unwrap()
    }

    fn svc(n: &str) -> ServiceName {
        ServiceName::new(n).unwrap()
    }

    fn spec(name: &str) -> ContainerSpec {
        ContainerSpec {
            name: name.into(),
            image: "img".into(),
            cmd: vec![],
            env: Default::default(),
            labels: Default::default(),
            network: NetworkMode::Network {
                name: "net".into(),
                aliases: vec![],
            },
            mounts: vec![],
            ports: vec![],
            stop_timeout_secs: 1,
            privileges: Default::default(),
            limits: Default::default(),
            restart: Default::default(),
        }
    }

    fn desired(n: &str, hash: &str) -> ServiceStack {
        ServiceStack {
            service: svc(n),
            app: spec(&format!("demo-{n}")),
            envoy: spec(&format!("demo-{n}-envoy")),
            spec_hash: hash.into(),
            replicas: 1,
            pod_filter: None,
            egress: Default::default(),
        }
    }

    fn stack(services: Vec<ServiceStack>, keep: &[&str]) -> Stack {
        Stack {
            project: project(),
            network: NetworkSpec {
                name: "net".into(),
                labels: Default::default(),
            },
            services,
            keep: keep.iter().map(|k| svc(k)).collect(),
            repair: Default::default(),
            sandbox: None,
        }
    }

    fn c(name: &str, service: &str, role: &str, hash: &str, state: &str) -> Observed {
        Observed {
            id: format!("id-{name}"),
            name: name.into(),
            service: Some(service.into()),
            role: Role::from_label(role),
            spec_hash: Some(hash.into()),
            image: "img".into(),
            state: state.into(),
            published: vec![],
            sandbox: None,
        }
    }

    fn pair(n: &str, hash: &str, app_state: &str, envoy_state: &str) -> Vec<Observed> {
        vec![
            c(&format!("demo-{n}"), n, "app", hash, app_state),
            c(&format!("demo-{n}-envoy"), n, "envoy", hash, envoy_state),
        ]
    }

    /// (case, stack, observed, expected [(service, action, reason contains)])
    #[test]
    fn decisions_table() {
        type Case = (
            &'static str,
            Stack,
            Vec<Observed>,
            Vec<(&'static str, Action, &'static str)>,
        );
        let cases: Vec<Case> = vec![
            (
                "nothing running → create",
                stack(vec![desired("web", "h1")], &[]),
                vec![],
                vec![("web", Action::Create, "not running")],
            ),
            (
                "same hash, both running → unchanged",
                stack(vec![desired("web", "h1")], &[]),
                pair("web", "h1", "running", "running"),
                vec![("web", Action::Unchanged, "matches")],
            ),
            (
                "hash differs → replace",
                stack(vec![desired("web", "h2")], &[]),
                pair("web", "h1", "running", "running"),
                vec![("web", Action::Replace, "spec hash h1 → h2")],
            ),
            (
                "only the app exists → repair",
                stack(vec![desired("web", "h1")], &[]),
                vec![c("demo-web", "web", "app", "h1", "running")],
                vec![("web", Action::Repair, "sidecar container missing")],
            ),
            (
                "only the sidecar exists → repair",
                stack(vec![desired("web", "h1")], &[]),
                vec![c("demo-web-envoy", "web", "envoy", "h1", "running")],
                vec![("web", Action::Repair, "app container missing")],
            ),
            (
                "app exited → repair",
                stack(vec![desired("web", "h1")], &[]),
                pair("web", "h1", "exited", "running"),
                vec![("web", Action::Repair, "app container is exited")],
            ),
            (
                "sidecar only created → repair",
                stack(vec![desired("web", "h1")], &[]),
                pair("web", "h1", "running", "created"),
                vec![("web", Action::Repair, "sidecar container is created")],
            ),
            (
                "a half pair of another spec → replace",
                stack(vec![desired("web", "h2")], &[]),
                vec![c("demo-web", "web", "app", "h1", "exited")],
                vec![("web", Action::Replace, "spec hash h1 → h2")],
            ),
            (
                "running and matching, but found unreachable → repair",
                {
                    let mut s = stack(vec![desired("web", "h1")], &[]);
                    s.repair
                        .insert(svc("web"), "unreachable: connection refused".into());
                    s
                },
                pair("web", "h1", "running", "running"),
                vec![("web", Action::Repair, "unreachable: connection refused")],
            ),
            (
                "missing hash label → replace",
                stack(vec![desired("web", "h1")], &[]),
                {
                    let mut p = pair("web", "h1", "running", "running");
                    p[1].spec_hash = None;
                    p
                },
                vec![("web", Action::Replace, "spec hash (none) → h1")],
            ),
            (
                "not in the stack → remove",
                stack(vec![desired("web", "h1")], &[]),
                [
                    pair("web", "h1", "running", "running"),
                    pair("old", "h9", "running", "running"),
                ]
                .concat(),
                vec![
                    ("web", Action::Unchanged, "matches"),
                    ("old", Action::Remove, "not in the stack"),
                ],
            ),
            (
                "not in the stack but kept → left alone",
                stack(vec![desired("web", "h1")], &["old"]),
                [
                    pair("web", "h1", "running", "running"),
                    pair("old", "h9", "exited", "running"),
                ]
                .concat(),
                vec![
                    ("web", Action::Unchanged, "matches"),
                    ("old", Action::Unchanged, "kept"),
                ],
            ),
            (
                "kept but nothing runs → nothing to report",
                stack(vec![desired("web", "h1")], &["ghost"]),
                vec![],
                vec![("web", Action::Create, "not running")],
            ),
            (
                "only leftovers → create, leftovers reported",
                stack(vec![desired("web", "h2")], &[]),
                vec![c("demo-web-next-h2", "web", "app", "h2", "running")],
                vec![("web", Action::Create, "1 leftover")],
            ),
            (
                "empty stack removes everything",
                stack(vec![], &[]),
                [
                    pair("a", "h1", "running", "running"),
                    pair("b", "h2", "running", "running"),
                ]
                .concat(),
                vec![
                    ("a", Action::Remove, "not in the stack"),
                    ("b", Action::Remove, "not in the stack"),
                ],
            ),
            (
                "mixed: one changed, one unchanged, one new",
                stack(
                    vec![desired("a", "h1"), desired("b", "h3"), desired("c", "h4")],
                    &[],
                ),
                [
                    pair("a", "h1", "running", "running"),
                    pair("b", "h2", "running", "running"),
                ]
                .concat(),
                vec![
                    ("a", Action::Unchanged, "matches"),
                    ("b", Action::Replace, "h2 → h3"),
                    ("c", Action::Create, "not running"),
                ],
            ),
        ];
        for (name, stack, observed, want) in cases {
            let got = reconcile(&stack, &observed);
            let got: Vec<(String, Action, String)> = got
                .iter()
                .map(|p| (p.service.to_string(), p.action, p.reason.clone()))
                .collect();
            assert_eq!(got.len(), want.len(), "{name}: {got:?}");
            for ((gs, ga, gr), (ws, wa, wr)) in got.iter().zip(&want) {
                assert_eq!(gs, ws, "{name}: {got:?}");
                assert_eq!(ga, wa, "{name}: {got:?}");
                assert!(
                    gr.contains(wr),
                    "{name}: reason {gr:?} should contain {wr:?}"
                );
            }
        }
    }

    #[test]
    fn pairs_and_strays_are_split_by_canonical_name() {
        let mut observed = pair("web", "h1", "running", "running");
        observed.push(c("demo-web-next-h2", "web", "app", "h2", "running"));
        observed.push(c("demo-web-envoy-next-h2", "web", "envoy", "h2", "running"));
        let plans = reconcile(&stack(vec![desired("web", "h1")], &[]), &observed);
        let p = &plans[0];
        assert_eq!(p.action, Action::Unchanged);
        assert_eq!(p.current.app.as_ref().unwrap().name, "demo-web");
        assert_eq!(p.current.envoy.as_ref().unwrap().name, "demo-web-envoy");
        let strays: Vec<&str> = p.strays.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(
            strays,
            ["demo-web-next-h2", "demo-web-envoy-next-h2"],
            "app strays first (they live in their sidecar's namespace)"
        );
        assert_eq!(
            p.current
                .containers()
                .iter()
                .map(|c| c.name.as_str())
                .collect::<Vec<_>>(),
            ["demo-web", "demo-web-envoy"]
        );
    }

    #[test]
    fn kept_services_keep_their_strays_and_desired_is_absent() {
        let mut observed = pair("old", "h1", "running", "running");
        observed.push(c("demo-old-next-h2", "old", "app", "h2", "running"));
        let plans = reconcile(&stack(vec![], &["old"]), &observed);
        assert_eq!(plans.len(), 1);
        assert!(plans[0].kept);
        assert!(plans[0].desired.is_none());
        assert_eq!(plans[0].action, Action::Unchanged);
    }

    #[test]
    fn containers_without_a_service_label_are_ignored() {
        let mut stray = c("demo-something", "x", "app", "h", "running");
        stray.service = None;
        let mut bad = c("demo-bad", "Not A Label", "app", "h", "running");
        bad.service = Some("Not A Label".into());
        assert!(reconcile(&stack(vec![], &[]), &[stray, bad]).is_empty());
    }

    #[test]
    fn change_mirrors_the_plan() {
        let plans = reconcile(&stack(vec![desired("web", "h1")], &[]), &[]);
        assert_eq!(
            plans[0].change(),
            Change {
                service: svc("web"),
                action: Action::Create,
                reason: "not running".into()
            }
        );
    }
}
