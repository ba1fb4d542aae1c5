//! The pure half of the Swarm provisioner: one planned service ([`ServiceStack`]) as a Swarm
//! service spec, its spec hash, and the pod's command line. Same inputs, same spec (unit-tested).
//!
//! A task is one container (Swarm has no shared network namespaces): PID 1 is `iac-agent` in pod
//! mode (`--sidecar …`), which runs Envoy — exactly the docker provisioner's Envoy arguments,
//! config and certificates — next to the app. Envoy runs as [`SIDECAR_UID`], the only user that
//! can read its key (a secret mounted 0400); the app runs as the image's app user, as on Docker,
//! and the agent refuses to start an app whose user is root or that uid.
//!
//! Envoy runs `chroot`ed in its own root filesystem ([`super::image::ENVOY_ROOT`], the pod
//! image's last layer): its config and certificates are mounted inside it, its environment is
//! empty, and nothing the app image's build changed (libraries, `/etc/ld.so.preload`,
//! `/etc/passwd`) applies to it. The task gets `SYS_CHROOT` for that, on top of the app's own
//! capabilities; the app, running as a non-root user, keeps none of them.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use crate::engine::swarm::{
    EndpointPortConfig, EndpointPortConfigProtocolEnum, EndpointPortConfigPublishModeEnum,
    EndpointSpec, EndpointSpecModeEnum, HealthConfig, Limit, NetworkAttachmentConfig, ServiceSpec,
    ServiceSpecMode, ServiceSpecModeReplicated, ServiceSpecRollbackConfig,
    ServiceSpecRollbackConfigFailureActionEnum, ServiceSpecRollbackConfigOrderEnum,
    ServiceSpecUpdateConfig, ServiceSpecUpdateConfigFailureActionEnum,
    ServiceSpecUpdateConfigOrderEnum, TaskSpec, TaskSpecContainerSpec,
    TaskSpecContainerSpecConfigs, TaskSpecContainerSpecFile, TaskSpecContainerSpecFile1,
    TaskSpecContainerSpecPrivileges, TaskSpecContainerSpecSecrets, TaskSpecResources,
    TaskSpecRestartPolicy, TaskSpecRestartPolicyConditionEnum,
};
use serde::Serialize;

use iac_core::fsutil::sha256_tagged;
use iac_core::plan::{ENVOY_CONFIG_IN_CONTAINER, app_container_name, envoy_argv};
use iac_core::stack::{LABEL_ROLE, LABEL_SPEC_HASH};
use iac_core::{CertPaths, Limits, MeshPorts, ProjectName, ServiceStack};

use super::image::{ENVOY_BINARY, ENVOY_ROOT};
use iac_core::labels::service_labels;

/// The uid (and gid) Envoy runs as inside a task; its config and certificates belong to it.
pub const SIDECAR_UID: &str = "101";
/// Bumped when the shape of the rendered spec changes, so every service is updated once.
pub const POD_FORMAT: u32 = 2;
/// The agent's address when the image's command does not say (`iac-agent --listen`'s default).
const DEFAULT_AGENT_LISTEN: &str = "127.0.0.1:50051";

/// Swarm behaviour that is the same for every service (from `[swarm]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SwarmSettings {
    /// After a task of an update starts, how long Swarm watches it before the next one (and
    /// before calling the update done); a task failing within it rolls the update back.
    pub update_monitor: Duration,
    /// Between SIGTERM and SIGKILL when a task stops.
    pub stop_grace: Duration,
    /// HEALTHCHECK timing: every `health_interval`, failing after `health_retries` misses, misses
    /// within `health_start_period` of the start not counted.
    pub health_interval: Duration,
    /// How long one HEALTHCHECK answer may take.
    pub health_timeout: Duration,
    /// Misses in a row after which a task is unhealthy.
    pub health_retries: u32,
    /// How long after a task starts its misses do not count.
    pub health_start_period: Duration,
    /// `[swarm] registry`: services run their pod image from there, by digest. Part of the hash
    /// (setting or changing it moves every service to the registry's images); left out of it
    /// when unset, so hashes made before the setting existed stay equal.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub registry: Option<String>,
}

impl Default for SwarmSettings {
    fn default() -> Self {
        SwarmSettings {
            update_monitor: Duration::from_secs(5),
            stop_grace: Duration::from_secs(10),
            health_interval: Duration::from_secs(2),
            health_timeout: Duration::from_secs(5),
            health_retries: 3,
            health_start_period: Duration::from_secs(30),
            registry: None,
        }
    }
}

/// A Swarm config or secret the task mounts, by name and id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectRef {
    /// Swarm's id of the object.
    pub id: String,
    /// Its name (content-addressed, so a change makes a new object).
    pub name: String,
}

/// The objects one task mounts: Envoy's config and the service's three certificate files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodObjects {
    /// Envoy's YAML (a config).
    pub envoy_config: ObjectRef,
    /// The CA bundle (a secret).
    pub ca: ObjectRef,
    /// The service's certificate (a secret).
    pub cert: ObjectRef,
    /// The service's private key (a secret).
    pub key: ObjectRef,
}

/// Everything [`service_spec`] renders from.
#[derive(Debug, Clone)]
pub struct PodInput<'a> {
    /// The project (labels, names).
    pub project: &'a ProjectName,
    /// The service's stack: app and sidecar as planned.
    pub svc: &'a ServiceStack,
    /// The overlay network.
    pub network: &'a str,
    /// The pod image (the app image plus Envoy).
    pub image: &'a str,
    /// The image's own command (`iac-agent … -- <entry>`), turned into the pod's by
    /// [`pod_command`].
    pub image_cmd: &'a [String],
    /// The config and secrets the task mounts.
    pub objects: &'a PodObjects,
    /// The `[swarm]` settings that go into the spec.
    pub settings: &'a SwarmSettings,
    /// [`spec_hash`] of this service.
    pub hash: &'a str,
}

/// The name of a service's Swarm service (the docker provisioner's app container name).
pub fn service_name(project: &ProjectName, svc: &iac_core::ServiceName) -> String {
    app_container_name(project, svc)
}

/// The spec hash of a service on Swarm: the plan's hash (image, env, Envoy config digest,
/// certificate fingerprint, limits) plus what only Swarm uses (replicas, `settings`, the Envoy
/// image, [`POD_FORMAT`]). Equal hash → the service is left alone.
pub fn spec_hash(svc: &ServiceStack, settings: &SwarmSettings, envoy_image: &str) -> String {
    #[derive(Serialize)]
    struct Input<'a> {
        plan: &'a str,
        replicas: u32,
        settings: &'a SwarmSettings,
        envoy_image: &'a str,
        format: u32,
    }
    let json = serde_json::to_vec(&Input {
        plan: &svc.spec_hash,
        replicas: svc.replicas,
        settings,
        envoy_image,
        format: POD_FORMAT,
    })
    .expect("plain data serializes");
    sha256_tagged(&json).trim_start_matches("sha256:")[..16].to_string()
}

/// The pod's command: the image's `iac-agent … -- <entry>` with `--sidecar` arguments (Envoy as
/// the docker provisioner starts it), `--sidecar-port` (the inbound port) and `--sidecar-user`
/// inserted before `--`. An image whose command is not the agent's is an error naming it.
pub fn pod_command(
    image: &str,
    image_cmd: &[String],
    project: &ProjectName,
    svc: &iac_core::ServiceName,
) -> Result<Vec<String>, String> {
    let is_agent = image_cmd
        .first()
        .is_some_and(|p| p == "iac-agent" || p.ends_with("/iac-agent"));
    let split = image_cmd.iter().position(|a| a == "--");
    let (true, Some(split)) = (is_agent, split) else {
        return Err(format!(
            "image {image}: its command {image_cmd:?} is not `iac-agent … -- <entry>`; expected an image built by iac"
        ));
    };
    let mut cmd = image_cmd[..split].to_vec();
    for arg in pod_envoy_argv(project, svc) {
        cmd.extend(["--sidecar".to_string(), arg]);
    }
    cmd.extend([
        "--sidecar-port".to_string(),
        MeshPorts::default().inbound.to_string(),
        "--sidecar-user".to_string(),
        format!("{SIDECAR_UID}:{SIDECAR_UID}"),
        "--sidecar-root".to_string(),
        ENVOY_ROOT.to_string(),
    ]);
    cmd.extend(image_cmd[split..].iter().cloned());
    Ok(cmd)
}

/// Envoy's argv in a pod: the docker provisioner's, with the binary by its absolute path inside
/// Envoy's root and hot restart off (the root has no `/dev/shm`, and the agent never hot-restarts
/// Envoy: the task is restarted instead).
pub fn pod_envoy_argv(project: &ProjectName, svc: &iac_core::ServiceName) -> Vec<String> {
    let mut argv = envoy_argv(project, svc);
    argv[0] = ENVOY_BINARY.to_string();
    argv.push("--disable-hot-restart".to_string());
    argv
}

/// Where a file Envoy reads at `inside` (its config, a certificate) is mounted in the task: the
/// same path inside Envoy's root.
pub fn in_envoy_root(inside: &std::path::Path) -> String {
    format!("{ENVOY_ROOT}{}", inside.display())
}

/// The HEALTHCHECK command: the same agent binary asking the agent (`--probe`) at the address the
/// command gives it (`--listen`, else the default).
pub fn probe_command(image_cmd: &[String]) -> Vec<String> {
    let agent = image_cmd
        .first()
        .cloned()
        .unwrap_or_else(|| "iac-agent".into());
    let end = image_cmd
        .iter()
        .position(|a| a == "--")
        .unwrap_or(image_cmd.len());
    let listen = image_cmd[..end]
        .windows(2)
        .find(|w| w[0] == "--listen")
        .map(|w| w[1].clone())
        .unwrap_or_else(|| DEFAULT_AGENT_LISTEN.to_string());
    vec![
        "CMD".into(),
        agent,
        "--probe".into(),
        "--listen".into(),
        listen,
    ]
}

/// The task's added capabilities: the app's, plus `SYS_CHROOT` for the agent to put Envoy in its
/// root (sorted, no duplicates).
pub fn task_cap_add(app: &[String]) -> Vec<String> {
    let mut caps: Vec<String> = app.to_vec();
    caps.push("SYS_CHROOT".to_string());
    caps.sort();
    caps.dedup();
    caps
}

/// One container holds both processes: its limits are the app's and the sidecar's together (no
/// limit when either has none).
pub fn pod_limits(app: Limits, sidecar: Limits) -> Limits {
    let add = |a: Option<i64>, b: Option<i64>| Some(a?.saturating_add(b?));
    Limits {
        pids: add(app.pids, sidecar.pids),
        memory_bytes: add(app.memory_bytes, sidecar.memory_bytes),
    }
}

/// Labels of the service and of its tasks' containers.
pub fn labels(project: &ProjectName, svc: &ServiceStack, hash: &str) -> HashMap<String, String> {
    let mut l: HashMap<String, String> = service_labels(project.as_str(), svc.service.as_str())
        .into_iter()
        .collect();
    l.insert(LABEL_SPEC_HASH.to_string(), hash.to_string());
    l.insert(LABEL_ROLE.to_string(), "service".to_string());
    l
}

fn nanos(d: Duration) -> i64 {
    i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)
}

/// The Swarm service for one iac service. Fails only on an image whose command is not the
/// agent's ([`pod_command`]).
pub fn service_spec(input: &PodInput<'_>) -> Result<ServiceSpec, String> {
    let svc = input.svc;
    let s = input.settings;
    // The plan's command when it sets one (as `docker run IMAGE CMD…` would), else the image's.
    let image_cmd: &[String] = if svc.app.cmd.is_empty() {
        input.image_cmd
    } else {
        &svc.app.cmd
    };
    let command = pod_command(input.image, image_cmd, input.project, &svc.service)?;
    let labels = labels(input.project, svc, input.hash);
    let env: Vec<String> = svc
        .app
        .env
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    let inside = CertPaths::in_container();
    let secret =
        |r: &ObjectRef, target: &std::path::Path, mode: u32| TaskSpecContainerSpecSecrets {
            file: Some(TaskSpecContainerSpecFile {
                name: Some(in_envoy_root(target)),
                uid: Some(SIDECAR_UID.into()),
                gid: Some(SIDECAR_UID.into()),
                mode: Some(mode),
            }),
            secret_id: Some(r.id.clone()),
            secret_name: Some(r.name.clone()),
        };
    let limits = pod_limits(svc.app.limits, svc.envoy.limits);
    let container = TaskSpecContainerSpec {
        image: Some(input.image.to_string()),
        labels: Some(labels.clone()),
        // `args` replaces the image's CMD (the image has no ENTRYPOINT).
        args: Some(command),
        env: Some(env),
        health_check: Some(HealthConfig {
            test: Some(probe_command(image_cmd)),
            interval: Some(nanos(s.health_interval)),
            timeout: Some(nanos(s.health_timeout)),
            retries: Some(i64::from(s.health_retries)),
            start_period: Some(nanos(s.health_start_period)),
            start_interval: None,
        }),
        stop_grace_period: Some(nanos(s.stop_grace)),
        configs: Some(vec![TaskSpecContainerSpecConfigs {
            file: Some(TaskSpecContainerSpecFile1 {
                name: Some(in_envoy_root(std::path::Path::new(
                    ENVOY_CONFIG_IN_CONTAINER,
                ))),
                uid: Some(SIDECAR_UID.into()),
                gid: Some(SIDECAR_UID.into()),
                mode: Some(0o400),
            }),
            runtime: None,
            config_id: Some(input.objects.envoy_config.id.clone()),
            config_name: Some(input.objects.envoy_config.name.clone()),
        }]),
        secrets: Some(vec![
            secret(&input.objects.ca, &inside.ca, 0o444),
            secret(&input.objects.cert, &inside.cert, 0o444),
            secret(&input.objects.key, &inside.key, 0o400),
        ]),
        // The docker provisioner's app privileges: the agent switches users and signals the app.
        capability_drop: (!svc.app.privileges.cap_drop.is_empty())
            .then(|| svc.app.privileges.cap_drop.clone()),
        capability_add: Some(task_cap_add(&svc.app.privileges.cap_add)),
        // Honoured by engines with API ≥ 1.46; older ones ignore the field.
        privileges: svc.app.privileges.no_new_privileges.then_some(
            TaskSpecContainerSpecPrivileges {
                no_new_privileges: Some(true),
                ..Default::default()
            },
        ),
        ..Default::default()
    };
    let inbound = i64::from(MeshPorts::default().inbound);
    Ok(ServiceSpec {
        name: Some(service_name(input.project, &svc.service)),
        labels: Some(labels),
        task_template: Some(TaskSpec {
            container_spec: Some(container),
            resources: (limits != Limits::default()).then_some(TaskSpecResources {
                limits: Some(Limit {
                    nano_cpus: None,
                    memory_bytes: limits.memory_bytes,
                    pids: limits.pids,
                }),
                ..Default::default()
            }),
            restart_policy: Some(TaskSpecRestartPolicy {
                condition: Some(TaskSpecRestartPolicyConditionEnum::ON_FAILURE),
                delay: Some(nanos(Duration::from_secs(2))),
                max_attempts: Some(0),
                window: None,
            }),
            networks: Some(vec![NetworkAttachmentConfig {
                target: Some(input.network.to_string()),
                aliases: Some(vec![svc.service.to_string()]),
                driver_opts: None,
            }]),
            ..Default::default()
        }),
        mode: Some(ServiceSpecMode {
            replicated: Some(ServiceSpecModeReplicated {
                replicas: Some(i64::from(svc.replicas)),
            }),
            ..Default::default()
        }),
        update_config: Some(ServiceSpecUpdateConfig {
            parallelism: Some(1),
            delay: Some(0),
            failure_action: Some(ServiceSpecUpdateConfigFailureActionEnum::ROLLBACK),
            monitor: Some(nanos(s.update_monitor)),
            max_failure_ratio: Some(0.0),
            order: Some(ServiceSpecUpdateConfigOrderEnum::START_FIRST),
        }),
        rollback_config: Some(ServiceSpecRollbackConfig {
            parallelism: Some(1),
            delay: Some(0),
            failure_action: Some(ServiceSpecRollbackConfigFailureActionEnum::PAUSE),
            monitor: Some(nanos(s.update_monitor)),
            max_failure_ratio: Some(0.0),
            order: Some(ServiceSpecRollbackConfigOrderEnum::START_FIRST),
        }),
        networks: None,
        // VIP mode fails on this kind of host ("No route to host"); DNS round robin works, and
        // the routing mesh is not used: 15000 is published on each task's node (host mode), on
        // a port the engine picks per task, so two tasks of a service (or an old and a new one
        // during a start-first update) never compete for one host port.
        endpoint_spec: Some(EndpointSpec {
            mode: Some(EndpointSpecModeEnum::DNSRR),
            ports: Some(vec![EndpointPortConfig {
                name: None,
                protocol: Some(EndpointPortConfigProtocolEnum::TCP),
                target_port: Some(inbound),
                published_port: None,
                publish_mode: Some(EndpointPortConfigPublishModeEnum::HOST),
            }]),
        }),
    })
}

/// Where each certificate and the Envoy config come from on the host: the sources the docker
/// provisioner mounts (the Stack's Envoy container mounts), by their path inside the container.
pub fn pod_file_sources(
    svc: &ServiceStack,
) -> Result<BTreeMap<&'static str, std::path::PathBuf>, String> {
    let inside = CertPaths::in_container();
    let wanted: [(&'static str, std::path::PathBuf); 4] = [
        ("envoy-config", ENVOY_CONFIG_IN_CONTAINER.into()),
        ("ca", inside.ca),
        ("cert", inside.cert),
        ("key", inside.key),
    ];
    let mut out = BTreeMap::new();
    for (role, target) in wanted {
        let m = svc
            .envoy
            .mounts
            .iter()
            .find(|m| m.target == target)
            .ok_or_else(|| {
                format!(
                    "service {}: the planned sidecar mounts nothing at {}; expected the Envoy config and certificates",
                    svc.service,
                    target.display()
                )
            })?;
        out.insert(role, m.source.clone());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use iac_core::plan::{PlanInput, PlannedService, plan};
    use iac_core::{IssuedCerts, ServiceName};

    fn stack_service(replicas: u32) -> (ProjectName, ServiceStack) {
        let project = ProjectName::new("demo").unwrap();
        let input = PlanInput {
            project: project.clone(),
            network: "iacnet-demo".into(),
            envoy_image: "iac/envoy:1.40.0".into(),
            otel_endpoint: None,
            services: vec![PlannedService {
                edge: None,
                name: ServiceName::new("web").unwrap(),
                image: "iac/demo-web:0123456789ab".into(),
                envoy_config: "/state/web/envoy.yaml".into(),
                envoy_config_digest: "sha256:cfg".into(),
                certs: IssuedCerts {
                    paths: CertPaths {
                        ca: "/s/ca.pem".into(),
                        cert: "/s/web.pem".into(),
                        key: "/s/web.key".into(),
                    },
                    fingerprint: "sha256:certs".into(),
                },
                app_port: Some(8000),
                env: BTreeMap::new(),
                replicas,
                egress: Default::default(),
            }],
            keep: vec![],
            sandbox: None,
        };
        let stack = super::super::super::with_limits(
            &plan(&input),
            &super::super::super::ContainerLimits::default(),
        );
        (project, stack.services[0].clone())
    }

    fn image_cmd() -> Vec<String> {
        [
            "iac-agent",
            "--listen",
            "127.0.0.1:50051",
            "--user",
            "app",
            "--",
            "python",
            "/app/main.py",
        ]
        .map(String::from)
        .to_vec()
    }

    fn objects() -> PodObjects {
        let r = |n: &str| ObjectRef {
            id: format!("id-{n}"),
            name: n.to_string(),
        };
        PodObjects {
            envoy_config: r("cfg"),
            ca: r("ca"),
            cert: r("cert"),
            key: r("key"),
        }
    }

    #[test]
    fn pod_command_inserts_envoy_before_the_entry() {
        let project = ProjectName::new("demo").unwrap();
        let svc = ServiceName::new("web").unwrap();
        let cmd = pod_command("img", &image_cmd(), &project, &svc).unwrap();
        let text = cmd.join(" ");
        assert_eq!(
            text,
            "iac-agent --listen 127.0.0.1:50051 --user app \
             --sidecar /usr/local/bin/envoy --sidecar -c --sidecar /etc/envoy/envoy.yaml \
             --sidecar --concurrency --sidecar 2 --sidecar --log-level \
             --sidecar warn --sidecar --service-cluster --sidecar demo --sidecar --service-node \
             --sidecar web --sidecar --disable-hot-restart --sidecar-port 15000 \
             --sidecar-user 101:101 --sidecar-root /iac-envoy -- python /app/main.py"
        );
        // The agent's own parser reads it back: Envoy's argv and the entry, untouched.
        let cli = <iac_agent::Cli as clap::Parser>::try_parse_from(&cmd).unwrap();
        assert_eq!(cli.sidecar, pod_envoy_argv(&project, &svc));
        assert_eq!(
            cli.sidecar[1..envoy_argv(&project, &svc).len()],
            envoy_argv(&project, &svc)[1..]
        );
        assert_eq!(
            cli.sidecar_root.as_deref(),
            Some(std::path::Path::new("/iac-envoy"))
        );
        assert_eq!(cli.sidecar_port, Some(15000));
        assert_eq!(cli.sidecar_user.as_deref(), Some("101:101"));
        assert_eq!(cli.argv, ["python", "/app/main.py"]);

        let e = pod_command("busybox", &["sh".to_string()], &project, &svc).unwrap_err();
        assert!(
            e.contains("image busybox") && e.contains("iac-agent … -- <entry>"),
            "{e}"
        );
    }

    #[test]
    fn probe_uses_the_agents_listen_address() {
        assert_eq!(
            probe_command(&image_cmd()),
            ["CMD", "iac-agent", "--probe", "--listen", "127.0.0.1:50051"]
        );
        let bare = ["/usr/local/bin/iac-agent", "--", "x"].map(String::from);
        assert_eq!(
            probe_command(&bare),
            [
                "CMD",
                "/usr/local/bin/iac-agent",
                "--probe",
                "--listen",
                DEFAULT_AGENT_LISTEN
            ]
        );
    }

    #[test]
    fn the_service_spec() {
        let (project, svc) = stack_service(2);
        let settings = SwarmSettings::default();
        let hash = spec_hash(&svc, &settings, "iac/envoy:1.40.0");
        let spec = service_spec(&PodInput {
            project: &project,
            svc: &svc,
            network: "iacnet-demo",
            image: "iac/demo-web:pod-1",
            image_cmd: &image_cmd(),
            objects: &objects(),
            settings: &settings,
            hash: &hash,
        })
        .unwrap();
        assert_eq!(spec.name.as_deref(), Some("demo-web"));
        let labels = spec.labels.as_ref().unwrap();
        for (k, v) in [
            ("iac.project", "demo"),
            ("iac.service", "web"),
            ("iac.managed-by", "iac"),
            ("iac.spec-hash", hash.as_str()),
        ] {
            assert_eq!(labels.get(k).map(String::as_str), Some(v), "{k}");
        }
        assert_eq!(
            spec.mode.unwrap().replicated.unwrap().replicas,
            Some(2),
            "replicas from the repos file"
        );
        let ep = spec.endpoint_spec.unwrap();
        assert_eq!(ep.mode, Some(EndpointSpecModeEnum::DNSRR));
        let port = &ep.ports.unwrap()[0];
        assert_eq!(port.target_port, Some(15000));
        assert_eq!(port.published_port, None, "the engine picks one per task");
        assert_eq!(
            port.publish_mode,
            Some(EndpointPortConfigPublishModeEnum::HOST)
        );
        let upd = spec.update_config.unwrap();
        assert_eq!(
            upd.order,
            Some(ServiceSpecUpdateConfigOrderEnum::START_FIRST)
        );
        assert_eq!(
            upd.failure_action,
            Some(ServiceSpecUpdateConfigFailureActionEnum::ROLLBACK)
        );
        assert_eq!(upd.monitor, Some(5_000_000_000));
        let task = spec.task_template.unwrap();
        let net = &task.networks.unwrap()[0];
        assert_eq!(net.target.as_deref(), Some("iacnet-demo"));
        assert_eq!(net.aliases.as_deref(), Some(&["web".to_string()][..]));
        let limits = task.resources.unwrap().limits.unwrap();
        assert_eq!(limits.pids, Some(512 + 256), "app + sidecar");
        assert_eq!(limits.memory_bytes, Some((1024 + 256) << 20));
        let c = task.container_spec.unwrap();
        assert_eq!(c.image.as_deref(), Some("iac/demo-web:pod-1"));
        assert_eq!(c.labels.as_ref().unwrap()["iac.spec-hash"], hash);
        assert!(c.args.as_ref().unwrap().contains(&"--sidecar".to_string()));
        assert_eq!(
            c.health_check.unwrap().test.unwrap(),
            ["CMD", "iac-agent", "--probe", "--listen", "127.0.0.1:50051"]
        );
        assert!(c.env.unwrap().contains(&"IAC_APP_PORT=8000".to_string()));
        assert_eq!(c.capability_drop.unwrap(), ["ALL"]);
        assert_eq!(
            c.capability_add.unwrap(),
            ["KILL", "SETGID", "SETUID", "SYS_CHROOT"]
        );
        let cfg = &c.configs.unwrap()[0];
        let f = cfg.file.as_ref().unwrap();
        assert_eq!(f.name.as_deref(), Some("/iac-envoy/etc/envoy/envoy.yaml"));
        assert_eq!((f.uid.as_deref(), f.mode), (Some("101"), Some(0o400)));
        let secrets = c.secrets.unwrap();
        let key = secrets
            .iter()
            .find(|s| s.secret_name.as_deref() == Some("key"))
            .unwrap();
        let f = key.file.as_ref().unwrap();
        assert_eq!(f.name.as_deref(), Some("/iac-envoy/etc/iac/certs/key.pem"));
        assert_eq!((f.uid.as_deref(), f.mode), (Some("101"), Some(0o400)));
        assert_eq!(key.secret_id.as_deref(), Some("id-key"));
    }

    #[test]
    fn the_hash_follows_the_plan_and_the_replicas_only() {
        let s = SwarmSettings::default();
        let (_, one) = stack_service(1);
        let (_, two) = stack_service(2);
        let h = spec_hash(&one, &s, "e");
        assert_eq!(h, spec_hash(&one, &s, "e"), "deterministic");
        assert_eq!(h.len(), 16);
        assert_ne!(h, spec_hash(&two, &s, "e"));
        assert_ne!(h, spec_hash(&one, &s, "other-envoy"));
        let mut changed = one.clone();
        changed.spec_hash = "different".into();
        assert_ne!(h, spec_hash(&changed, &s, "e"));
        let slow = SwarmSettings {
            update_monitor: Duration::from_secs(30),
            ..SwarmSettings::default()
        };
        assert_ne!(h, spec_hash(&one, &slow, "e"));
        let pushed = SwarmSettings {
            registry: Some("127.0.0.1:5000".into()),
            ..SwarmSettings::default()
        };
        let hp = spec_hash(&one, &pushed, "e");
        assert_ne!(h, hp, "setting a registry moves services to it");
        assert_eq!(hp, spec_hash(&one, &pushed.clone(), "e"), "deterministic");
        let other = SwarmSettings {
            registry: Some("127.0.0.1:6000".into()),
            ..SwarmSettings::default()
        };
        assert_ne!(hp, spec_hash(&one, &other, "e"));
        // Unset, it is not in the hashed input: hashes from before the setting stay valid.
        assert!(!serde_json::to_string(&s).unwrap().contains("registry"));
    }

    #[test]
    fn a_registry_image_is_run_by_its_digest() {
        let (project, svc) = stack_service(1);
        let settings = SwarmSettings {
            registry: Some("127.0.0.1:5000".into()),
            ..SwarmSettings::default()
        };
        let hash = spec_hash(&svc, &settings, "iac/envoy:1.40.0");
        let pinned = "127.0.0.1:5000/iac/demo-web@sha256:ca487c4325fb79cf1bec5631686f0d3ae944f8f6de991d7459b5dd582c6d1b29";
        let spec = service_spec(&PodInput {
            project: &project,
            svc: &svc,
            network: "iacnet-demo",
            image: pinned,
            image_cmd: &image_cmd(),
            objects: &objects(),
            settings: &settings,
            hash: &hash,
        })
        .unwrap();
        let c = spec.task_template.unwrap().container_spec.unwrap();
        assert_eq!(c.image.as_deref(), Some(pinned));
        assert_eq!(spec.labels.unwrap()["iac.spec-hash"], hash);
    }

    #[test]
    fn file_sources_come_from_the_sidecar_mounts() {
        let (_, svc) = stack_service(1);
        let src = pod_file_sources(&svc).unwrap();
        assert_eq!(
            src["envoy-config"],
            std::path::Path::new("/state/web/envoy.yaml")
        );
        assert_eq!(src["key"], std::path::Path::new("/s/web.key"));
        assert_eq!(src["ca"], std::path::Path::new("/s/ca.pem"));
        let mut bare = svc.clone();
        bare.envoy.mounts.clear();
        let e = pod_file_sources(&bare).unwrap_err();
        assert!(
            e.contains("service web") && e.contains("/etc/envoy/envoy.yaml"),
            "{e}"
        );
    }

    #[test]
    fn limits_add_up_unless_one_is_open() {
        let a = Limits {
            pids: Some(10),
            memory_bytes: Some(100),
        };
        let open = Limits {
            pids: None,
            memory_bytes: Some(1),
        };
        assert_eq!(
            pod_limits(a, a),
            Limits {
                pids: Some(20),
                memory_bytes: Some(200)
            }
        );
        assert_eq!(
            pod_limits(a, open),
            Limits {
                pids: None,
                memory_bytes: Some(101)
            }
        );
    }
}
