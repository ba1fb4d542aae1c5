//! Provisioners: make the engine match a planned `Stack`.
//!
//! * [`docker`]: the default — reconciles through the Docker Engine API (bollard), with its pure
//!   decision logic in [`reconcile`] and health-gated replacement;
//! * [`terraform`]: Terraform/OpenTofu with the kreuzwerker/docker provider, driving the module in `infra/`;
//! * [`swarm`]: Docker Swarm services (one container per task: the agent supervises Envoy and the
//!   app), for more than one host.
//!
//! Shared here: the resource limits both provisioners put on the containers they create
//! ([`ContainerLimits`], configured per provisioner) and [`with_limits`], which writes them into a
//! stack — and into its spec hashes, so changing a limit replaces the pairs it applies to.

pub mod docker;
pub mod reconcile;
pub mod swarm;
pub mod tails;
pub mod terraform;

use serde::{Deserialize, Serialize};

use iac_core::fsutil::sha256_tagged;
use iac_core::stack::LABEL_SPEC_HASH;
use iac_core::{Events, Limits, Stack, Stage};

/// The label every container and network a provisioner creates carries (value `iac`), set at
/// create time — never an image label, so a container started by hand from an iac image does not
/// have it. `destroy` and reconciling select by it together with `iac.project`.
pub use iac_core::labels::{LABEL_MANAGED, MANAGED_BY};

/// cgroup limits of the containers a provisioner creates (`limits` in its config section).
/// `0` means no limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ContainerLimits {
    /// Processes + threads in the app container (the agent, the app and everything it forks).
    pub app_pids: i64,
    /// Memory of the app container, MiB (no swap beyond it).
    pub app_memory_mib: i64,
    /// Processes + threads in the Envoy sidecar (one worker thread per CPU plus a few).
    pub sidecar_pids: i64,
    /// Memory of the Envoy sidecar, MiB.
    pub sidecar_memory_mib: i64,
}

impl Default for ContainerLimits {
    fn default() -> Self {
        ContainerLimits {
            app_pids: 512,
            app_memory_mib: 1024,
            sidecar_pids: 256,
            sidecar_memory_mib: 256,
        }
    }
}

impl ContainerLimits {
    /// No limit at all (what the engine does by itself).
    pub fn unlimited() -> Self {
        ContainerLimits {
            app_pids: 0,
            app_memory_mib: 0,
            sidecar_pids: 0,
            sidecar_memory_mib: 0,
        }
    }

    /// A negative value is a config error naming the key.
    pub fn validate(&self, section: &str) -> Result<(), String> {
        for (key, v) in [
            ("app_pids", self.app_pids),
            ("app_memory_mib", self.app_memory_mib),
            ("sidecar_pids", self.sidecar_pids),
            ("sidecar_memory_mib", self.sidecar_memory_mib),
        ] {
            if v < 0 {
                return Err(format!(
                    "{section}.limits.{key} = {v}: expected 0 (no limit) or a positive number"
                ));
            }
        }
        for (key, v) in [
            ("app_memory_mib", self.app_memory_mib),
            ("sidecar_memory_mib", self.sidecar_memory_mib),
        ] {
            // Docker refuses less than 6 MiB; an Envoy or a Python app needs far more anyway.
            if v > 0 && v < 6 {
                return Err(format!(
                    "{section}.limits.{key} = {v}: expected at least 6 (MiB), or 0 for no limit"
                ));
            }
        }
        Ok(())
    }

    fn pick(pids: i64, memory_mib: i64) -> Limits {
        Limits {
            pids: (pids > 0).then_some(pids),
            memory_bytes: (memory_mib > 0).then(|| memory_mib.saturating_mul(1024 * 1024)),
        }
    }

    /// The app container's limits (a value of 0 means none).
    pub fn app(&self) -> Limits {
        Self::pick(self.app_pids, self.app_memory_mib)
    }

    /// The sidecar's limits (a value of 0 means none).
    pub fn sidecar(&self) -> Limits {
        Self::pick(self.sidecar_pids, self.sidecar_memory_mib)
    }
}

/// Limits the stack leaves open (`None`) are filled from `limits`; what a container spec sets
/// itself wins. When that changes any container of a service, its spec hash becomes
/// `sha256(plan hash, app limits, sidecar limits)` (labels updated too), so a changed limit
/// replaces the pair like any other spec change; a service whose limits come entirely from its
/// spec keeps the plan's hash. Pure.
pub fn with_limits(stack: &Stack, limits: &ContainerLimits) -> Stack {
    let mut out = stack.clone();
    for s in &mut out.services {
        let fill = |have: &mut Limits, want: Limits| {
            let before = *have;
            have.pids = have.pids.or(want.pids);
            have.memory_bytes = have.memory_bytes.or(want.memory_bytes);
            *have != before
        };
        let app_changed = fill(&mut s.app.limits, limits.app());
        let envoy_changed = fill(&mut s.envoy.limits, limits.sidecar());
        if !(app_changed || envoy_changed) {
            continue;
        }
        let input = serde_json::json!({
            "plan": s.spec_hash,
            "app": s.app.limits,
            "sidecar": s.envoy.limits,
        });
        let hash = sha256_tagged(input.to_string().as_bytes());
        s.spec_hash = hash.trim_start_matches("sha256:")[..16].to_string();
        for c in [&mut s.app, &mut s.envoy] {
            c.labels
                .insert(LABEL_SPEC_HASH.to_string(), s.spec_hash.clone());
        }
    }
    out
}

/// Warns, per service, when the repos file asks for more than one copy of it and `provisioner`
/// runs exactly one (the docker and terraform provisioners: one app + sidecar pair per service),
/// so a `replicas:` that only Swarm honours is never ignored silently.
pub(crate) fn warn_single_copy(stack: &Stack, provisioner: &str, events: &Events) {
    for s in stack.services.iter().filter(|s| s.replicas > 1) {
        events.for_service(&s.service).warn(
            Stage::Provision,
            format!(
                "replicas: {} asked for, but the {provisioner} provisioner runs one copy of each service; use `--provisioner swarm` for several",
                s.replicas
            ),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use iac_core::{
        ContainerSpec, NetworkMode, NetworkSpec, ProjectName, ServiceName, ServiceStack,
    };
    use std::collections::BTreeMap;

    fn spec(name: &str) -> ContainerSpec {
        ContainerSpec {
            name: name.into(),
            image: "img".into(),
            cmd: vec![],
            env: BTreeMap::new(),
            labels: [(LABEL_SPEC_HASH.to_string(), "planhash".to_string())].into(),
            network: NetworkMode::Container { name: "x".into() },
            mounts: vec![],
            ports: vec![],
            stop_timeout_secs: 1,
            privileges: Default::default(),
            limits: Default::default(),
            restart: Default::default(),
        }
    }

    fn stack() -> Stack {
        Stack {
            project: ProjectName::new("demo").unwrap(),
            network: NetworkSpec {
                name: "n".into(),
                labels: BTreeMap::new(),
            },
            services: vec![ServiceStack {
                service: ServiceName::new("web").unwrap(),
                app: spec("demo-web"),
                envoy: spec("demo-web-envoy"),
                spec_hash: "planhash".into(),
                replicas: 1,
                pod_filter: None,
                egress: Default::default(),
            }],
            keep: vec![],
            repair: Default::default(),
            sandbox: None,
        }
    }

    #[test]
    fn more_than_one_replica_is_a_warning_naming_service_and_provisioner() {
        let (events, mut rx) = Events::channel();
        let mut s = stack();
        warn_single_copy(&s, "docker", &events);
        assert!(rx.try_recv().is_err(), "one replica: nothing to say");
        s.services[0].replicas = 3;
        warn_single_copy(&s, "terraform", &events);
        let e = rx.try_recv().expect("a warning");
        assert_eq!(e.level, iac_core::EventLevel::Warn);
        assert_eq!(e.service.as_ref().map(|n| n.as_str()), Some("web"));
        assert!(
            e.message.contains("replicas: 3")
                && e.message.contains("terraform provisioner runs one copy"),
            "{}",
            e.message
        );
    }

    #[test]
    fn fills_open_limits_and_rehashes() {
        let s = with_limits(&stack(), &ContainerLimits::default());
        let svc = &s.services[0];
        assert_eq!(svc.app.limits.pids, Some(512));
        assert_eq!(svc.app.limits.memory_bytes, Some(1 << 30));
        assert_eq!(svc.envoy.limits.pids, Some(256));
        assert_eq!(svc.envoy.limits.memory_bytes, Some(256 << 20));
        assert_ne!(svc.spec_hash, "planhash");
        assert_eq!(svc.spec_hash.len(), 16);
        assert_eq!(svc.app.labels[LABEL_SPEC_HASH], svc.spec_hash);
        assert_eq!(svc.envoy.labels[LABEL_SPEC_HASH], svc.spec_hash);
        // Deterministic, and a different limit gives a different hash.
        assert_eq!(with_limits(&stack(), &ContainerLimits::default()), s);
        let other = ContainerLimits {
            app_pids: 100,
            ..Default::default()
        };
        assert_ne!(
            with_limits(&stack(), &other).services[0].spec_hash,
            svc.spec_hash
        );
    }

    #[test]
    fn unlimited_or_spec_set_limits_keep_the_plan_hash() {
        let s = with_limits(&stack(), &ContainerLimits::unlimited());
        assert_eq!(s, stack());
        let mut own = stack();
        own.services[0].app.limits = Limits {
            pids: Some(7),
            memory_bytes: Some(64 << 20),
        };
        own.services[0].envoy.limits = own.services[0].app.limits;
        let s = with_limits(&own, &ContainerLimits::default());
        assert_eq!(s, own, "the spec's own limits win");
    }

    #[test]
    fn negative_or_tiny_limits_are_config_errors() {
        let bad = ContainerLimits {
            app_pids: -1,
            ..Default::default()
        };
        let e = bad.validate("provision.docker").unwrap_err();
        assert!(e.contains("provision.docker.limits.app_pids = -1"), "{e}");
        let tiny = ContainerLimits {
            sidecar_memory_mib: 2,
            ..Default::default()
        };
        assert!(
            tiny.validate("provision.terraform")
                .unwrap_err()
                .contains("sidecar_memory_mib = 2")
        );
        ContainerLimits::default().validate("x").unwrap();
        ContainerLimits::unlimited().validate("x").unwrap();
    }
}
