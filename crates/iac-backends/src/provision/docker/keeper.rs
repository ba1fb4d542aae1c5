//! The project's keeper container (Docker provisioner): `<project>_iac-keeper`, from the image
//! `iac/keeper:<agent digest>` (built here `FROM scratch` with the static `iac-agent` only),
//! running `iac-agent --keeper <project>` with the engine's socket, restart policy
//! `unless-stopped`. The engine starts it again after an engine restart or a reboot, and it
//! starts the apps the engine's restore tried before their sidecar ran (see the agent's
//! `keeper` module for what it does and never does).
//!
//! One keeper **per project**, not per host: it is created, replaced and removed with the
//! project's own objects (same labels, same deploy lock, `destroy` removes it), so no two
//! projects' deploys ever share or race over one; it sees only its project's containers
//! (labels); and it costs one idle process (a few MiB) per project.
//!
//! Its name has an underscore, which no service's container name can have (services are DNS
//! labels), and it carries no `iac.service` label, so reconciling never takes it for a pod.
//! The spec (pure, [`keeper_spec`]) and the image's Dockerfile ([`keeper_dockerfile`]) have
//! golden tests; `DockerProvisioner::ensure_keeper` acts through the [`crate::engine::Engine`] trait.
//!
//! Keeper images are garbage-collected on every deploy and destroy that runs a keeper: a tag
//! `iac/keeper:*` other than the current agent's, not used for [`KEEPER_IMAGE_GRACE`] and that
//! no container at all (any project, any state) was created from, is removed — never forced,
//! so an image a container uses is refused by the engine even if one appeared meanwhile.
//! "Used" is the engine's last tag time of the image, not its creation time: a deploy that finds
//! its keeper image already there tags it again ([`crate::engine::Engine::tag_again`]) before
//! creating its keeper, so an old image (or one rebuilt from the build cache, which keeps its
//! first creation time) that another project's deploy is about to use is young again for every
//! collector. The grace keeps an image another deploy has just built or touched for a keeper it
//! has not created yet; should a collector still win that race, the keeper's create finds no
//! image and the deploy builds it again and retries once. The current agent's image stays for
//! the next deploy (one image of about 5 MB). [`collectable`] is the pure choice.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use sha2::{Digest, Sha256};

use iac_core::stack::{LABEL_PROJECT, LABEL_ROLE, LABEL_SPEC_HASH};
use iac_core::{
    ContainerSpec, Events, Limits, Mount, NetworkMode, Privileges, ProjectName, RestartPolicy,
    Role, Stage,
};

use super::{DockerProvisioner, EngineError, short_id};
use crate::engine::ImageTag;

/// Keeper images built or tagged again more recently than this are never collected (another
/// deploy may have just built or touched one for a keeper it has not created yet).
pub const KEEPER_IMAGE_GRACE: Duration = Duration::from_secs(600);

/// The keeper tags worth asking about (pure): every `tags` entry but `keep`, whose image was
/// last used (tagged, else created: [`ImageTag::last_used`]) at least `grace` before `now`
/// (seconds since the Unix epoch). Whether a container uses it is asked of the engine
/// afterwards, tag by tag.
pub fn collectable(tags: &[ImageTag], keep: &str, now: i64, grace: Duration) -> Vec<String> {
    let cutoff = now.saturating_sub(grace.as_secs().min(i64::MAX as u64) as i64);
    let mut out: Vec<String> = tags
        .iter()
        .filter(|t| t.tag != keep && t.tag.starts_with(&format!("{KEEPER_IMAGE_REPO}:")))
        .filter(|t| t.last_used() <= cutoff)
        .map(|t| t.tag.clone())
        .collect();
    out.sort();
    out.dedup();
    out
}

/// The keeper image's repository; the tag is the agent binary's digest (12 hex digits).
pub const KEEPER_IMAGE_REPO: &str = "iac/keeper";
/// Where the engine's socket is mounted in the keeper.
pub const KEEPER_SOCKET: &str = "/var/run/docker.sock";

/// What the provisioner needs to run a keeper (wired from `[images] agent_binary` and
/// `[docker] docker_host`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeeperSetup {
    /// The static `iac-agent` (the one copied into app images).
    pub agent_binary: PathBuf,
    /// The engine's Unix socket on the engine's host.
    pub socket: PathBuf,
    /// Labels of the keeper image (`[images] labels`).
    pub image_labels: BTreeMap<String, String>,
}

/// The engine's Unix socket a keeper can mount, from `[docker] docker_host` (else
/// `DOCKER_HOST`, else the default socket): `None` for an engine reached over TCP, which a
/// container cannot be given.
pub fn keeper_socket(docker_host: Option<&str>, env: Option<&str>) -> Option<PathBuf> {
    let host = docker_host
        .or(env)
        .unwrap_or(crate::engine::DEFAULT_DOCKER_HOST);
    if let Some(path) = host.strip_prefix("unix://") {
        return Some(PathBuf::from(path));
    }
    host.starts_with('/').then(|| PathBuf::from(host))
}

/// The keeper container's name for `project`.
pub fn keeper_name(project: &ProjectName) -> String {
    format!("{project}_iac-keeper")
}

/// The keeper image's tag for an agent binary with these bytes.
pub fn keeper_tag(agent: &[u8]) -> String {
    let digest = hex::encode(Sha256::digest(agent));
    format!("{KEEPER_IMAGE_REPO}:{}", &digest[..12])
}

/// The keeper image's Dockerfile (pure): the agent alone on an empty root.
pub fn keeper_dockerfile(labels: &BTreeMap<String, String>) -> String {
    let mut out = String::from(
        "# Generated by iac: the project keeper, the static iac-agent alone.\n\
         FROM scratch\n\
         COPY iac-agent /iac-agent\n\
         ENTRYPOINT [\"/iac-agent\"]\n",
    );
    for (k, v) in labels {
        out.push_str(&format!("LABEL {}={}\n", json_str(k), json_str(v)));
    }
    out
}

fn json_str(s: &str) -> String {
    serde_json::Value::String(s.to_string()).to_string()
}

/// The keeper container of `project` (pure): no network, no capability, `no-new-privileges`,
/// small limits, the engine's socket, restart `unless-stopped`. Its spec hash label covers
/// everything else, so a new agent or socket replaces it.
pub fn keeper_spec(project: &ProjectName, image: &str, socket: &Path) -> ContainerSpec {
    let mut spec = ContainerSpec {
        name: keeper_name(project),
        image: image.to_string(),
        cmd: vec![
            "--keeper".into(),
            project.to_string(),
            "--engine-socket".into(),
            KEEPER_SOCKET.into(),
        ],
        env: BTreeMap::new(),
        labels: [
            (LABEL_PROJECT.to_string(), project.to_string()),
            (LABEL_ROLE.to_string(), Role::Keeper.as_str().to_string()),
        ]
        .into(),
        network: NetworkMode::Network {
            name: "none".into(),
            aliases: Vec::new(),
        },
        mounts: vec![Mount {
            source: socket.to_path_buf(),
            target: KEEPER_SOCKET.into(),
            read_only: false,
        }],
        ports: Vec::new(),
        stop_timeout_secs: 5,
        privileges: Privileges {
            no_new_privileges: true,
            cap_drop: vec!["ALL".into()],
            cap_add: Vec::new(),
        },
        limits: Limits {
            pids: Some(64),
            memory_bytes: Some(64 * 1024 * 1024),
        },
        restart: RestartPolicy::UnlessStopped,
    };
    let hash = hex::encode(Sha256::digest(
        serde_json::to_vec(&spec).expect("a container spec serializes"),
    ));
    spec.labels
        .insert(LABEL_SPEC_HASH.to_string(), hash[..16].to_string());
    spec
}

/// A tar holding `Dockerfile` and `iac-agent`.
fn context(dockerfile: &str, agent: &[u8]) -> Result<Vec<u8>, std::io::Error> {
    let mut tar = tar::Builder::new(Vec::new());
    for (name, body, mode) in [
        ("Dockerfile", dockerfile.as_bytes(), 0o644),
        ("iac-agent", agent, 0o755),
    ] {
        let mut header = tar::Header::new_gnu();
        header.set_size(body.len() as u64);
        header.set_mode(mode);
        header.set_cksum();
        tar.append_data(&mut header, name, body)?;
    }
    tar.into_inner()
}

impl DockerProvisioner {
    /// Makes sure the project's keeper runs the current spec (see `run_keeper`), then collects
    /// the keeper images nothing uses. Does nothing without a [`KeeperSetup`].
    pub(super) async fn ensure_keeper(
        &self,
        project: &ProjectName,
        events: &Events,
    ) -> Result<(), EngineError> {
        let Some(setup) = &self.keeper else {
            return Ok(());
        };
        let tag = self.run_keeper(project, setup, events).await?;
        self.collect_keeper_images(&tag, events, Stage::Provision)
            .await;
        Ok(())
    }

    /// The current agent's keeper image tag; `None` without a keeper or when the agent binary
    /// cannot be read (then nothing is collected: what to keep is unknown).
    pub(super) async fn current_keeper_tag(&self) -> Option<String> {
        let setup = self.keeper.as_ref()?;
        tokio::fs::read(&setup.agent_binary)
            .await
            .ok()
            .map(|agent| keeper_tag(&agent))
    }

    /// Removes the keeper image tags [`collectable`] picks that no container was created from.
    /// Best effort: a failure is a warning event, never a failed deploy or destroy.
    pub(super) async fn collect_keeper_images(&self, keep: &str, events: &Events, stage: Stage) {
        let tags = match self.engine.image_tags(KEEPER_IMAGE_REPO).await {
            Ok(t) => t,
            Err(e) => {
                events.warn(stage, format!("keeper images not collected: {e}"));
                return;
            }
        };
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        for tag in collectable(&tags, keep, now, KEEPER_IMAGE_GRACE) {
            match self.engine.image_users(&tag).await {
                Ok(users) if users.is_empty() => {}
                Ok(users) => {
                    events.debug(
                        stage,
                        format!("keeper image {tag} kept: used by {}", users.join(", ")),
                    );
                    continue;
                }
                Err(e) => {
                    events.warn(stage, format!("keeper image {tag} not collected: {e}"));
                    continue;
                }
            }
            match self.engine.remove_image_tag(&tag).await {
                Ok(()) => events.info(
                    stage,
                    format!("removed keeper image {tag}: no container uses it"),
                ),
                // Gone meanwhile, or a container was created from it meanwhile: fine.
                Err(e) if e.is_not_found() || e.status == Some(409) => {
                    events.debug(stage, format!("keeper image {tag} not removed: {e}"))
                }
                Err(e) => events.warn(stage, format!("keeper image {tag} not collected: {e}")),
            }
        }
    }

    /// Makes sure the project's keeper runs the current spec: builds its image when missing,
    /// leaves a running keeper of the same spec alone, starts a stopped one, replaces one of
    /// another spec. Returns the image's tag.
    async fn run_keeper(
        &self,
        project: &ProjectName,
        setup: &KeeperSetup,
        events: &Events,
    ) -> Result<String, EngineError> {
        let op = || format!("the keeper of project {project}");
        let agent = tokio::fs::read(&setup.agent_binary).await.map_err(|e| {
            EngineError::new(
                op(),
                None,
                format!(
                    "cannot read the agent binary {} ([images] agent_binary): {e}",
                    setup.agent_binary.display()
                ),
            )
        })?;
        let tag = keeper_tag(&agent);
        let build = || async {
            events.info(Stage::Provision, format!("building keeper image {tag}"));
            let body = context(&keeper_dockerfile(&setup.image_labels), &agent)
                .map_err(|e| EngineError::new(op(), None, format!("packing its image: {e}")))?;
            self.engine.build_image(&tag, body).await
        };
        if !self.engine.image_present(&tag).await? {
            build().await?;
        } else if let Err(e) = self.engine.tag_again(&tag).await {
            // Its use is then not recorded: the grace from its last tag still protects it,
            // and a create that finds it gone builds it again (below).
            events.debug(
                Stage::Provision,
                format!("keeper image {tag} not touched: {e}"),
            );
        }
        let want = keeper_spec(project, &tag, &setup.socket);
        let hash = want.labels.get(LABEL_SPEC_HASH).cloned();
        let mut current = None;
        let mut stale = Vec::new();
        for c in self.engine.list_containers(project).await? {
            if c.role != Some(Role::Keeper) {
                continue;
            }
            if c.name == want.name && c.spec_hash == hash && current.is_none() {
                current = Some(c);
            } else {
                stale.push((c.id.clone(), c.name.clone()));
            }
        }
        if !stale.is_empty() {
            events.info(
                Stage::Provision,
                format!("replacing the keeper ({} of another spec)", stale.len()),
            );
            if let Some(e) = self.remove_all(&stale, events).await.into_iter().next() {
                return Err(e);
            }
        }
        match current {
            Some(c) if c.is_running() => Ok(tag),
            Some(c) => {
                self.engine.start_container(&c.id).await?;
                events.info(Stage::Provision, format!("started keeper {}", c.name));
                Ok(tag)
            }
            None => {
                let id = match self.engine.create_container(&want).await {
                    // Collected by another project's deploy between the check and now.
                    Err(e) if e.is_not_found() => {
                        events.info(
                            Stage::Provision,
                            format!("keeper image {tag} was removed meanwhile ({e})"),
                        );
                        build().await?;
                        self.engine.create_container(&want).await
                    }
                    other => other,
                }
                .map_err(|e| super::name_taken(e, &want.name, project.as_str()))?;
                if let Err(e) = self.engine.start_container(&id).await {
                    let _ = self.engine.remove_container(&id).await;
                    return Err(e);
                }
                events.info(
                    Stage::Provision,
                    format!("started keeper {} ({})", want.name, short_id(&id)),
                );
                Ok(tag)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The agent cannot depend on iac-core, so the keeper spells the labels it selects by itself;
    /// they must be the one set iac puts on what it creates.
    #[test]
    fn the_keeper_selects_by_the_labels_iac_sets() {
        use iac_core::labels;
        assert_eq!(iac_agent::keeper::LABEL_MANAGED, labels::LABEL_MANAGED);
        assert_eq!(iac_agent::keeper::MANAGED_BY, labels::MANAGED_BY);
        assert_eq!(iac_agent::keeper::LABEL_PROJECT, labels::LABEL_PROJECT);
        assert_eq!(iac_agent::keeper::LABEL_ROLE, labels::LABEL_ROLE);
        // The keeper starts an app once its sidecar wrote the line the provisioner waits for.
        assert_eq!(
            iac_agent::keeper::decide::FILTER_INSTALLED_PREFIX,
            iac_core::plan::FILTER_INSTALLED_PREFIX
        );
        // And the agent refuses an app in the group the egress filter lets out.
        assert_eq!(iac_agent::EGRESS_GID, iac_core::egress::ENVOY_EGRESS_GID);
        assert_eq!(iac_core::Role::App.as_str(), "app");
        assert_eq!(iac_core::Role::Envoy.as_str(), "envoy");
    }

    fn project() -> ProjectName {
        ProjectName::new("demo").unwrap()
    }

    #[test]
    fn the_keeper_spec_is_confined_and_labelled() {
        let spec = keeper_spec(
            &project(),
            "iac/keeper:0123456789ab",
            Path::new("/run/docker.sock"),
        );
        insta::assert_json_snapshot!("keeper_spec", spec);
        let other = keeper_spec(
            &project(),
            "iac/keeper:ba9876543210",
            Path::new("/run/docker.sock"),
        );
        assert_ne!(spec.labels[LABEL_SPEC_HASH], other.labels[LABEL_SPEC_HASH]);
    }

    #[test]
    fn the_keeper_image_is_the_agent_alone() {
        let labels: BTreeMap<String, String> = [("iac.test".to_string(), "t1".to_string())].into();
        insta::assert_snapshot!("keeper_dockerfile", keeper_dockerfile(&labels));
        let tag = keeper_tag(b"agent");
        assert_eq!(tag.len(), "iac/keeper:".len() + 12, "{tag}");
        assert_ne!(tag, keeper_tag(b"another agent"));
    }

    #[test]
    fn only_a_unix_socket_can_be_given_to_the_keeper() {
        assert_eq!(
            keeper_socket(None, None),
            Some(PathBuf::from("/var/run/docker.sock"))
        );
        assert_eq!(
            keeper_socket(Some("unix:///run/x.sock"), None),
            Some(PathBuf::from("/run/x.sock"))
        );
        assert_eq!(
            keeper_socket(None, Some("/run/y.sock")),
            Some(PathBuf::from("/run/y.sock"))
        );
        assert_eq!(
            keeper_socket(Some("tcp://10.0.0.1:2375"), Some("/run/y.sock")),
            None
        );
    }

    #[test]
    fn no_service_can_take_the_keepers_name() {
        let name = keeper_name(&project());
        assert!(name.contains('_'), "{name}");
        assert!(iac_core::ServiceName::new(name.strip_prefix("demo-").unwrap_or(&name)).is_err());
    }
}
