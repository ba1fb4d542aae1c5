//! Release commands on Docker ([`Provisioner::run_release`](iac_core::Provisioner::run_release)):
//! a one-off pod of the service's new spec that runs the command once and is removed.
//!
//! * The pod is the service's planned pair under temporary names (`<name>-release-<spec hash>`):
//!   a sidecar from the planned Envoy spec — the same config, certificates and packet filter, on
//!   the project network but without the service's alias and without published ports, so no peer
//!   or host reaches it — and, once its filter is in, a container from the planned app spec (same
//!   image, environment, privileges, limits filled from `[docker.limits]`) in the sidecar's network
//!   namespace. The command therefore reaches the mesh exactly as the app would (through
//!   `IAC_MESH_OUTBOUND`), as the same identity.
//! * The app container runs `iac-agent --once --user app --chdir DIR --wait-tcp 127.0.0.1:15001
//!   -- ARGV` instead of the image's command: the agent waits for the sidecar's outbound listener,
//!   drops to the app's user as it does for the app, runs the command once and exits with its
//!   status. Neither container restarts.
//! * Its output is followed into bounded debug events and a bounded tail ([`OutputTail`]); past
//!   `job.timeout` the pod is removed (SIGKILL) and the error says so, with the output's tail.
//! * Whatever was created is removed on every path: explicitly once the command ended, failed or
//!   timed out, and by a guard's `Drop` when the deploy is dropped mid-run (its deadline). Leftovers
//!   of a crashed control plane carry the service's labels under non-canonical names: the next
//!   apply removes them as strays, `destroy` with the project, and the next release of the same
//!   spec removes them by name first.
//!
//! [`OutputTail`]: crate::output_tail::OutputTail

use std::sync::Arc;

use iac_core::{
    ContainerSpec, Events, MeshPorts, NetworkMode, ReleaseError, ReleaseJob, ReleaseOutcome,
    RestartPolicy, Stage,
};

use super::{DockerProvisioner, Engine, EngineError, ExitState, short_id};

/// Bytes of the command's output kept for the error message.
const TAIL_BYTES: usize = 4 * 1024;
/// Lines of a timed-out release's output read back for its error (at most [`TAIL_BYTES`]).
const TAIL_LINES: usize = 40;

/// The user the image's agent runs the app as (the app Dockerfile template's `--user app`).
const APP_USER: &str = "app";

/// The temporary name of a release pod's container.
pub fn release_name(canonical: &str, spec_hash: &str) -> String {
    format!("{canonical}-release-{spec_hash}")
}

/// The one-off pod's containers, removed when dropped unless [`ReleasePod::remove`] ran.
struct ReleasePod {
    engine: Arc<dyn Engine>,
    /// (id, name), in creation order (the sidecar first).
    created: Vec<(String, String)>,
}

impl ReleasePod {
    /// Removes the containers (the app first: it lives in the sidecar's namespace); force-removal
    /// kills what still runs. Returns the failures.
    async fn remove(mut self) -> Vec<String> {
        let created = std::mem::take(&mut self.created);
        let mut errors = Vec::new();
        for (id, name) in created.iter().rev() {
            if let Err(e) = self.engine.remove_container(id).await {
                errors.push(format!("{name}: {e}"));
            }
        }
        errors
    }
}

impl Drop for ReleasePod {
    fn drop(&mut self) {
        if self.created.is_empty() {
            return;
        }
        let created = std::mem::take(&mut self.created);
        let engine = self.engine.clone();
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn(async move {
                    for (id, name) in created.iter().rev() {
                        if let Err(e) = engine.remove_container(id).await {
                            tracing::warn!(container = %name, error = %e, "could not remove a release container");
                        }
                    }
                });
            }
            Err(_) => {
                let names: Vec<&str> = created.iter().map(|(_, n)| n.as_str()).collect();
                tracing::warn!(containers = ?names, "release containers left behind (no runtime to remove them); the next apply removes them");
            }
        }
    }
}

/// How a command that did not succeed ended, in words.
pub fn describe_exit(exit: ExitState) -> String {
    if exit.oom_killed {
        return "was killed for exceeding its memory limit (OOM)".to_string();
    }
    match exit.code {
        Some(code) if (129..=128 + 64).contains(&code) => {
            format!("exited with code {code} (killed by signal {})", code - 128)
        }
        Some(127) => "exited with code 127 (the program was not found)".to_string(),
        Some(126) => "exited with code 126 (the program could not be executed)".to_string(),
        Some(code) => format!("exited with code {code}"),
        None => "ended without an exit code".to_string(),
    }
}

impl DockerProvisioner {
    /// See the module docs.
    pub(super) async fn release(
        &self,
        job: &ReleaseJob,
        events: &Events,
    ) -> Result<ReleaseOutcome, ReleaseError> {
        let command = job.command_line();
        let engine_err = |e: &dyn std::fmt::Display| ReleaseError::Engine {
            command: command.clone(),
            message: e.to_string(),
        };
        self.config
            .limits
            .validate("docker")
            .map_err(|e| engine_err(&e))?;
        self.ensure_network(&job.network, events)
            .await
            .map_err(|e| engine_err(&e))?;
        let (envoy, app) = self.release_specs(job);
        // A leftover of a control plane that died mid-release would hold the names.
        for name in [&app.name, &envoy.name] {
            self.engine
                .remove_container(name)
                .await
                .map_err(|e| engine_err(&e))?;
        }
        let mut pod = ReleasePod {
            engine: self.engine.clone(),
            created: Vec::new(),
        };
        let started = self
            .start_release_pod(job, envoy, app, &mut pod, events)
            .await;
        let result = match started {
            Ok(app_id) => self.watch(job, &app_id, events).await,
            Err(e) => Err(engine_err(&e)),
        };
        let errors = pod.remove().await;
        if !errors.is_empty() {
            events.warn(
                Stage::Release,
                format!(
                    "could not remove the release containers ({}); the next apply removes them",
                    errors.join("; ")
                ),
            );
        }
        result
    }

    /// The release pod's sidecar and app specs, from the planned pair.
    fn release_specs(&self, job: &ReleaseJob) -> (ContainerSpec, ContainerSpec) {
        let hash = &job.pod.spec_hash;
        let mut envoy = job.pod.envoy.clone();
        envoy.name = release_name(&envoy.name, hash);
        if let NetworkMode::Network { aliases, .. } = &mut envoy.network {
            aliases.clear();
        }
        envoy.ports.clear();
        envoy.restart = RestartPolicy::No;
        let mut app = job.pod.app.clone();
        app.name = release_name(&app.name, hash);
        app.restart = RestartPolicy::No;
        let mut cmd: Vec<String> = vec![
            "iac-agent".into(),
            "--once".into(),
            "--user".into(),
            APP_USER.into(),
            "--chdir".into(),
            job.release.dir(),
            // The mesh is there when the command starts (migrations connect at once).
            "--wait-tcp".into(),
            format!("127.0.0.1:{}", MeshPorts::default().outbound),
            "--".into(),
        ];
        cmd.extend(job.release.argv.iter().cloned());
        app.cmd = cmd;
        let fill = |have: &mut iac_core::Limits, want: iac_core::Limits| {
            have.pids = have.pids.or(want.pids);
            have.memory_bytes = have.memory_bytes.or(want.memory_bytes);
        };
        fill(&mut app.limits, self.config.limits.app());
        fill(&mut envoy.limits, self.config.limits.sidecar());
        (envoy, app)
    }

    /// Creates and starts the sidecar, waits for its packet filter, then creates and starts the
    /// command's container in its namespace; returns the latter's id.
    async fn start_release_pod(
        &self,
        job: &ReleaseJob,
        envoy: ContainerSpec,
        mut app: ContainerSpec,
        pod: &mut ReleasePod,
        events: &Events,
    ) -> Result<String, EngineError> {
        let envoy_id = self.engine.create_container(&envoy).await?;
        pod.created.push((envoy_id.clone(), envoy.name.clone()));
        self.engine.start_container(&envoy_id).await?;
        if let Some(filter) = &job.pod.pod_filter {
            self.confirm_pod_filter(&envoy_id, &envoy.name, filter, events)
                .await?;
        }
        app.network = NetworkMode::Container {
            name: envoy_id.clone(),
        };
        let app_id = self.engine.create_container(&app).await?;
        pod.created.push((app_id.clone(), app.name.clone()));
        self.engine.start_container(&app_id).await?;
        events.debug(
            Stage::Release,
            format!(
                "started {} ({}) in the namespace of {}",
                app.name,
                short_id(&app_id),
                envoy.name
            ),
        );
        Ok(app_id)
    }

    /// Follows the command to its end (or its deadline) and judges how it ended.
    async fn watch(
        &self,
        job: &ReleaseJob,
        app_id: &str,
        events: &Events,
    ) -> Result<ReleaseOutcome, ReleaseError> {
        let command = job.command_line();
        let origin = job.release.origin.clone();
        let run = async {
            let tail = match self
                .engine
                .follow_output(app_id, events, Stage::Release, TAIL_BYTES)
                .await
            {
                Ok(t) => t,
                Err(e) => format!("(its output could not be read: {e})"),
            };
            let exit = self.engine.wait_exit(app_id).await?;
            Ok::<_, EngineError>((tail, exit))
        };
        match tokio::time::timeout(job.timeout, run).await {
            Ok(Ok((tail, exit))) if exit.code == Some(0) && !exit.oom_killed => {
                Ok(ReleaseOutcome { tail })
            }
            Ok(Ok((tail, exit))) => Err(ReleaseError::Failed {
                command,
                origin,
                status: describe_exit(exit),
                tail,
            }),
            Ok(Err(e)) => Err(ReleaseError::Engine {
                command,
                message: e.to_string(),
            }),
            Err(_) => {
                let tail = self
                    .engine
                    .log_tail(app_id, TAIL_LINES, TAIL_BYTES)
                    .await
                    .unwrap_or_else(|e| format!("(its output could not be read: {e})"));
                Err(ReleaseError::Deadline {
                    command,
                    origin,
                    timeout: humantime::format_duration(job.timeout).to_string(),
                    tail,
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use iac_core::plan::{PlanInput, PlannedService, filter_installed_line, plan};
    use iac_core::{CertPaths, IssuedCerts, ProjectName, Provisioner, ReleaseCommand, ServiceName};
    use mockall::Sequence;

    use super::super::{DockerProvisionerConfig, LogWait, MockEngine, NetworkInfo};
    use super::*;
    use crate::provision::ContainerLimits;

    /// A release job for service `web` of project `demo`, planned as a deploy plans it.
    fn job(timeout: Duration) -> ReleaseJob {
        let stack = plan(&PlanInput {
            project: ProjectName::new("demo").unwrap(),
            network: "iacnet-demo".into(),
            envoy_image: "iac/envoy:test".into(),
            otel_endpoint: None,
            services: vec![PlannedService {
                name: ServiceName::new("web").unwrap(),
                image: "iac/demo-web:k".into(),
                envoy_config: "/state/web/envoy.yaml".into(),
                envoy_config_digest: "sha256:c".into(),
                certs: IssuedCerts {
                    paths: CertPaths {
                        ca: "/s/ca.pem".into(),
                        cert: "/s/web.pem".into(),
                        key: "/s/web.key".into(),
                    },
                    fingerprint: "f".into(),
                },
                app_port: Some(8000),
                env: [("DATABASE_URL".to_string(), "postgres://db".to_string())].into(),
                edge: Some(iac_core::EdgeBind::loopback()),
                replicas: 1,
                egress: Default::default(),
            }],
            keep: vec![],
            sandbox: None,
        });
        ReleaseJob {
            service: ServiceName::new("web").unwrap(),
            release: ReleaseCommand {
                argv: vec!["python".into(), "manage.py".into(), "migrate".into()],
                workdir: Some("backend".into()),
                origin: "Procfile line 2 (release)".into(),
            },
            network: stack.network.clone(),
            pod: stack.services[0].clone(),
            timeout,
        }
    }

    /// The engine calls up to the command's start; ids `rel-envoy` and `rel-app`.
    fn starts_pod(e: &mut MockEngine, seq: &mut Sequence, j: &ReleaseJob) {
        let hash = j.pod.spec_hash.clone();
        e.expect_find_networks()
            .times(1)
            .in_sequence(seq)
            .returning(|n| {
                Ok(vec![NetworkInfo {
                    id: "net1".into(),
                    name: n.into(),
                    labels: Default::default(),
                }])
            });
        for stale in [
            format!("demo-web-release-{hash}"),
            format!("demo-web-envoy-release-{hash}"),
        ] {
            e.expect_remove_container()
                .withf(move |i| i == stale)
                .times(1)
                .in_sequence(seq)
                .returning(|_| Ok(()));
        }
        let envoy_name = format!("demo-web-envoy-release-{hash}");
        e.expect_create_container()
            .withf(move |s| {
                s.name == envoy_name
                    && s.ports.is_empty()
                    && s.restart == RestartPolicy::No
                    && matches!(&s.network, NetworkMode::Network { name, aliases }
                        if name == "iacnet-demo" && aliases.is_empty())
            })
            .times(1)
            .in_sequence(seq)
            .returning(|_| Ok("rel-envoy".into()));
        e.expect_start_container()
            .withf(|i| i == "rel-envoy")
            .times(1)
            .in_sequence(seq)
            .returning(|_| Ok(()));
        e.expect_wait_for_log_line()
            .withf(|i, _| i == "rel-envoy")
            .times(1)
            .in_sequence(seq)
            .returning(|_, _| Ok(LogWait::Found(filter_installed_line(15000))));
        let app = j.pod.app.clone();
        let app_name = format!("demo-web-release-{hash}");
        e.expect_create_container()
            .withf(move |s| {
                s.name == app_name
                    && s.image == app.image
                    && s.env == app.env
                    && s.privileges == app.privileges
                    && s.restart == RestartPolicy::No
                    && s.network
                        == NetworkMode::Container {
                            name: "rel-envoy".into(),
                        }
                    && s.cmd
                        == [
                            "iac-agent",
                            "--once",
                            "--user",
                            "app",
                            "--chdir",
                            "/app/backend",
                            "--wait-tcp",
                            "127.0.0.1:15001",
                            "--",
                            "python",
                            "manage.py",
                            "migrate",
                        ]
            })
            .times(1)
            .in_sequence(seq)
            .returning(|_| Ok("rel-app".into()));
        e.expect_start_container()
            .withf(|i| i == "rel-app")
            .times(1)
            .in_sequence(seq)
            .returning(|_| Ok(()));
    }

    /// Both containers removed at the end, the command's first.
    fn removes_pod(e: &mut MockEngine, seq: &mut Sequence) {
        for id in ["rel-app", "rel-envoy"] {
            e.expect_remove_container()
                .withf(move |i| i == id)
                .times(1)
                .in_sequence(seq)
                .returning(|_| Ok(()));
        }
    }

    fn provisioner(e: MockEngine) -> DockerProvisioner {
        DockerProvisioner::with_engine(
            Arc::new(e),
            DockerProvisionerConfig {
                limits: ContainerLimits::unlimited(),
                ..Default::default()
            },
        )
    }

    #[tokio::test]
    async fn a_successful_command_runs_in_a_one_off_pod_of_the_new_spec_then_removed() {
        let j = job(Duration::from_secs(5));
        let mut e = MockEngine::new();
        let mut seq = Sequence::new();
        starts_pod(&mut e, &mut seq, &j);
        e.expect_follow_output()
            .withf(|i, _, st, _| i == "rel-app" && *st == Stage::Release)
            .times(1)
            .in_sequence(&mut seq)
            .returning(|_, _, _, _| Ok("Applying 0001... OK".into()));
        e.expect_wait_exit()
            .times(1)
            .in_sequence(&mut seq)
            .returning(|_| {
                Ok(ExitState {
                    code: Some(0),
                    oom_killed: false,
                })
            });
        removes_pod(&mut e, &mut seq);
        let out = provisioner(e)
            .run_release(&j, &Events::discard())
            .await
            .unwrap();
        assert_eq!(out.tail, "Applying 0001... OK");
    }

    #[tokio::test]
    async fn a_failing_command_is_reported_with_its_status_and_output_and_removed() {
        let j = job(Duration::from_secs(5));
        let mut e = MockEngine::new();
        let mut seq = Sequence::new();
        starts_pod(&mut e, &mut seq, &j);
        e.expect_follow_output()
            .times(1)
            .in_sequence(&mut seq)
            .returning(|_, _, _, _| Ok("relation \"users\" already exists".into()));
        e.expect_wait_exit()
            .times(1)
            .in_sequence(&mut seq)
            .returning(|_| {
                Ok(ExitState {
                    code: Some(1),
                    oom_killed: false,
                })
            });
        removes_pod(&mut e, &mut seq);
        let err = provisioner(e)
            .run_release(&j, &Events::discard())
            .await
            .unwrap_err()
            .to_string();
        for needle in [
            "python manage.py migrate",
            "Procfile line 2 (release)",
            "exited with code 1",
            "already exists",
        ] {
            assert!(err.contains(needle), "{needle:?} in {err}");
        }
    }

    #[tokio::test]
    async fn a_pod_that_cannot_start_is_removed_and_named() {
        let j = job(Duration::from_secs(5));
        let mut e = MockEngine::new();
        let mut seq = Sequence::new();
        e.expect_find_networks()
            .returning(|_| Ok(vec![]))
            .times(1)
            .in_sequence(&mut seq);
        e.expect_create_network()
            .times(1)
            .in_sequence(&mut seq)
            .returning(|_| Ok("net1".into()));
        e.expect_find_networks().returning(|_| Ok(vec![]));
        e.expect_remove_container()
            .withf(|i| i.contains("-release-"))
            .times(2)
            .returning(|_| Ok(()));
        e.expect_create_container()
            .times(1)
            .returning(|_| Ok("rel-envoy".into()));
        e.expect_start_container().times(1).returning(|_| {
            Err(EngineError::new(
                "start container rel-envoy",
                Some(500),
                "boom",
            ))
        });
        e.expect_remove_container()
            .withf(|i| i == "rel-envoy")
            .times(1)
            .returning(|_| Ok(()));
        let err = provisioner(e)
            .run_release(&j, &Events::discard())
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("python manage.py migrate") && err.contains("boom"),
            "{err}"
        );
    }

    #[test]
    fn exits_in_words() {
        let e = |code, oom| ExitState {
            code,
            oom_killed: oom,
        };
        assert_eq!(describe_exit(e(Some(3), false)), "exited with code 3");
        assert_eq!(
            describe_exit(e(Some(137), false)),
            "exited with code 137 (killed by signal 9)"
        );
        assert_eq!(
            describe_exit(e(Some(127), false)),
            "exited with code 127 (the program was not found)"
        );
        assert!(describe_exit(e(Some(137), true)).contains("memory limit"));
        assert_eq!(describe_exit(e(None, false)), "ended without an exit code");
    }
}
