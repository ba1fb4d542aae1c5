//! The pure planner: prepared services in, [`Stack`] out. Same inputs, same stack, same hashes —
//! golden-tested. Container layout per service (DESIGN §4):
//!
//! * `<project>-<svc>`: the app (PID 1 `iac-agent`), on the project network with alias `<svc>`,
//!   publishing the sidecar's inbound port 15000 on `127.0.0.1:<ephemeral>`;
//! * `<project>-<svc>-envoy`: Envoy sharing the app's network namespace, its config and the
//!   service's certificates mounted read-only.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Serialize;

use crate::fsutil::sha256_tagged;
use crate::mesh::{CertPaths, IssuedCerts, MeshPorts};
use crate::name::{ProjectName, ServiceName};
use crate::stack::*;

/// Where the sidecar's config is mounted inside the Envoy container.
pub const ENVOY_CONFIG_IN_CONTAINER: &str = "/etc/envoy/envoy.yaml";
/// Default port handed to apps in `PORT` when they declare none (the one constant, defined with
/// [`crate::Entry`]).
pub use crate::entry::DEFAULT_APP_PORT;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PlanInput {
    pub project: ProjectName,
    pub network: String,
    pub envoy_image: String,
    /// OTLP endpoint handed to apps; `None` → the stdout exporter.
    pub otel_endpoint: Option<String>,
    pub services: Vec<PlannedService>,
    pub keep: Vec<ServiceName>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PlannedService {
    pub name: ServiceName,
    /// Image tag (content-addressed).
    pub image: String,
    /// Host path of the rendered Envoy config, and the digest of its contents.
    pub envoy_config: PathBuf,
    pub envoy_config_digest: String,
    /// Host paths of the service's certificates.
    pub certs: IssuedCerts,
    pub app_port: Option<u16>,
    pub env: BTreeMap<String, String>,
}

pub fn app_container_name(project: &ProjectName, svc: &ServiceName) -> String {
    format!("{project}-{svc}")
}

pub fn envoy_container_name(project: &ProjectName, svc: &ServiceName) -> String {
    format!("{project}-{svc}-envoy")
}

/// The network name for a project: `<network>` shared by the project's containers.
pub fn plan(input: &PlanInput) -> Stack {
    let project = &input.project;
    let base_labels = |role: &str, svc: Option<&ServiceName>| {
        let mut l = BTreeMap::new();
        l.insert(LABEL_PROJECT.to_string(), project.to_string());
        l.insert(LABEL_MANAGED.to_string(), "iac".to_string());
        if let Some(s) = svc {
            l.insert(LABEL_SERVICE.to_string(), s.to_string());
        }
        l.insert(LABEL_ROLE.to_string(), role.to_string());
        l
    };
    let ports = MeshPorts::default();
    let mut services: Vec<ServiceStack> = input
        .services
        .iter()
        .map(|s| {
            let app_name = app_container_name(project, &s.name);
            let mut env = BTreeMap::new();
            env.insert(
                "PORT".into(),
                s.app_port.unwrap_or(DEFAULT_APP_PORT).to_string(),
            );
            env.insert("IAC_PROJECT".into(), project.to_string());
            env.insert("IAC_SERVICE".into(), s.name.to_string());
            env.insert(
                "IAC_MESH_OUTBOUND".into(),
                format!("http://127.0.0.1:{}", ports.outbound),
            );
            env.insert("OTEL_SERVICE_NAME".into(), s.name.to_string());
            env.insert(
                "OTEL_RESOURCE_ATTRIBUTES".into(),
                format!("service.namespace={project},deployment.environment=iac"),
            );
            match &input.otel_endpoint {
                Some(ep) => {
                    env.insert("OTEL_EXPORTER_OTLP_ENDPOINT".into(), ep.clone());
                    for k in [
                        "OTEL_TRACES_EXPORTER",
                        "OTEL_METRICS_EXPORTER",
                        "OTEL_LOGS_EXPORTER",
                    ] {
                        env.insert(k.into(), "otlp".into());
                    }
                }
                None => {
                    env.insert("OTEL_TRACES_EXPORTER".into(), "console".into());
                    env.insert("OTEL_METRICS_EXPORTER".into(), "none".into());
                    env.insert("OTEL_LOGS_EXPORTER".into(), "none".into());
                }
            }
            env.extend(s.env.iter().map(|(k, v)| (k.clone(), v.clone())));
            let app = ContainerSpec {
                name: app_name.clone(),
                image: s.image.clone(),
                cmd: Vec::new(),
                env,
                labels: base_labels("app", Some(&s.name)),
                network: NetworkMode::Network {
                    name: input.network.clone(),
                    aliases: vec![s.name.to_string()],
                },
                mounts: Vec::new(),
                ports: vec![PortPublish {
                    container_port: ports.inbound,
                    host_ip: "127.0.0.1".into(),
                    host_port: None,
                }],
                stop_timeout_secs: 10,
            };
            let inside = CertPaths::in_container();
            let ro = |source: &PathBuf, target: &PathBuf| Mount {
                source: source.clone(),
                target: target.clone(),
                read_only: true,
            };
            let envoy = ContainerSpec {
                name: envoy_container_name(project, &s.name),
                image: input.envoy_image.clone(),
                cmd: vec![
                    "envoy".into(),
                    "-c".into(),
                    ENVOY_CONFIG_IN_CONTAINER.into(),
                    "--log-level".into(),
                    "warn".into(),
                    "--service-cluster".into(),
                    project.to_string(),
                    "--service-node".into(),
                    s.name.to_string(),
                ],
                // The official image's entrypoint drops to uid 101 unless ENVOY_UID=0; the mounted
                // keys are 0600, so Envoy must stay root to read them (harmless elsewhere).
                env: BTreeMap::from([("ENVOY_UID".to_string(), "0".to_string())]),
                labels: base_labels("envoy", Some(&s.name)),
                network: NetworkMode::Container { name: app_name },
                mounts: vec![
                    ro(&s.envoy_config, &PathBuf::from(ENVOY_CONFIG_IN_CONTAINER)),
                    ro(&s.certs.paths.ca, &inside.ca),
                    ro(&s.certs.paths.cert, &inside.cert),
                    ro(&s.certs.paths.key, &inside.key),
                ],
                ports: Vec::new(),
                stop_timeout_secs: 5,
            };
            #[derive(Serialize)]
            struct HashInput<'a> {
                app: &'a ContainerSpec,
                envoy: &'a ContainerSpec,
                envoy_config_digest: &'a str,
                certs: &'a str,
            }
            let hash_input = HashInput {
                app: &app,
                envoy: &envoy,
                envoy_config_digest: &s.envoy_config_digest,
                certs: &s.certs.fingerprint,
            };
            let json = serde_json::to_vec(&hash_input).expect("plain data serializes");
            let spec_hash = sha256_tagged(&json).trim_start_matches("sha256:")[..16].to_string();
            let mut app = app;
            let mut envoy = envoy;
            app.labels.insert(LABEL_SPEC_HASH.into(), spec_hash.clone());
            envoy
                .labels
                .insert(LABEL_SPEC_HASH.into(), spec_hash.clone());
            ServiceStack {
                service: s.name.clone(),
                app,
                envoy,
                spec_hash,
            }
        })
        .collect();
    services.sort_by(|a, b| a.service.cmp(&b.service));
    let mut keep = input.keep.clone();
    keep.sort();
    keep.dedup();
    Stack {
        project: project.clone(),
        network: NetworkSpec {
            name: input.network.clone(),
            labels: base_labels("network", None),
        },
        services,
        keep,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn sample_input() -> PlanInput {
        let svc = |n: &str, port: Option<u16>| PlannedService {
            name: ServiceName::new(n).unwrap(),
            image: format!("iac/demo-{n}:0123456789ab"),
            envoy_config: format!("/state/demo/services/{n}/envoy.yaml").into(),
            envoy_config_digest: format!("sha256:{n}-config"),
            certs: IssuedCerts {
                paths: CertPaths {
                    ca: "/secrets/ca.pem".into(),
                    cert: format!("/secrets/demo/{n}.pem").into(),
                    key: format!("/secrets/demo/{n}.key").into(),
                },
                fingerprint: format!("sha256:{n}-certs"),
            },
            app_port: port,
            env: [("GREETING".to_string(), "hi".to_string())].into(),
        };
        PlanInput {
            project: ProjectName::new("demo").unwrap(),
            network: "iacnet".into(),
            envoy_image: "iac/envoy:1.40".into(),
            otel_endpoint: None,
            services: vec![svc("web", Some(8000)), svc("api", None)],
            keep: vec![ServiceName::new("broken").unwrap()],
        }
    }

    #[test]
    fn golden_stack() {
        let stack = plan(&sample_input());
        let got = serde_json::to_string_pretty(&stack).unwrap() + "\n";
        let golden =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/stack.json");
        if std::env::var_os("UPDATE_GOLDEN").is_some() {
            std::fs::create_dir_all(golden.parent().unwrap()).unwrap();
            std::fs::write(&golden, &got).unwrap();
        }
        let want = std::fs::read_to_string(&golden)
            .expect("golden file (run with UPDATE_GOLDEN=1 to create)");
        assert_eq!(
            got, want,
            "plan() output changed; review and re-run with UPDATE_GOLDEN=1"
        );
    }

    #[test]
    fn pure_and_order_independent() {
        let a = plan(&sample_input());
        let mut input = sample_input();
        input.services.reverse();
        assert_eq!(plan(&input), a);
    }

    #[test]
    fn hash_tracks_every_input_that_matters() {
        let base = plan(&sample_input()).services[0].spec_hash.clone();
        let tweaks: [fn(&mut PlanInput); 6] = [
            |i| i.services[1].image = "iac/demo-api:other".into(),
            |i| i.services[1].envoy_config_digest = "sha256:changed".into(),
            |i| i.services[1].certs.fingerprint = "sha256:rotated".into(),
            |i| {
                i.services[1].env.insert("X".into(), "1".into());
            },
            |i| i.envoy_image = "envoyproxy/envoy:v1.40.0".into(),
            |i| i.otel_endpoint = Some("http://collector:4317".into()),
        ];
        for (n, t) in tweaks.iter().enumerate() {
            let mut input = sample_input();
            t(&mut input);
            let stack = plan(&input);
            let api = stack
                .services
                .iter()
                .find(|s| s.service.as_str() == "api")
                .unwrap();
            assert_ne!(api.spec_hash, base, "tweak {n} must change the api hash");
            let web = stack
                .services
                .iter()
                .find(|s| s.service.as_str() == "web")
                .unwrap();
            let web_base = plan(&sample_input()).services[1].spec_hash.clone();
            if n < 4 {
                assert_eq!(web.spec_hash, web_base, "tweak {n} must not change web");
            }
        }
    }
}
