//! Swarm configs (Envoy's config) and secrets (the certificates) of a service, named by content:
//! `<project>-<svc>-<role>-<sha256 of the data, 12 hex>`. A change of content is a new name, so a
//! service update mounts new objects (Swarm objects are immutable) and the old ones stay intact
//! for a rollback; [`Objects::prune`] removes those no service of the project uses any more.
//!
//! Every object carries `iac.project`, `iac.service`, `iac.managed-by=iac` and `iac.role`; only
//! objects with the project's labels are ever listed or removed.

use std::collections::{BTreeSet, HashMap};

use base64::Engine as _;
use bollard::Docker;
use bollard::models::{ConfigSpec, SecretSpec};
use bollard::query_parameters::{ListConfigsOptionsBuilder, ListSecretsOptionsBuilder};

use iac_core::fsutil::sha256_tagged;
use iac_core::stack::{LABEL_PROJECT, LABEL_ROLE, LABEL_SERVICE};
use iac_core::{ProjectName, ProvisionError, ServiceName};

use super::super::{LABEL_MANAGED, MANAGED_BY};
use super::engine_error;
use super::spec::ObjectRef;

/// Swarm's limit on config and secret names.
const MAX_NAME: usize = 64;

/// Whether an object is a Swarm config or a secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A Swarm config: Envoy's YAML.
    Config,
    /// A Swarm secret: the CA bundle, the certificate and the private key.
    Secret,
}

impl Kind {
    /// The word used in names and messages: `config` or `secret`.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Config => "config",
            Kind::Secret => "secret",
        }
    }
}

/// The content-addressed name of one object: `<project>-<svc>-<role>-<hash12>`, or, when that
/// exceeds Swarm's 64 characters, `iac-<hash of project/svc, 16>-<role>-<hash12>`.
pub fn object_name(project: &ProjectName, svc: &ServiceName, role: &str, data: &[u8]) -> String {
    let content = sha256_tagged(data);
    let content = &content.trim_start_matches("sha256:")[..12];
    let name = format!("{project}-{svc}-{role}-{content}");
    if name.len() <= MAX_NAME {
        return name;
    }
    let who = sha256_tagged(format!("{project}/{svc}").as_bytes());
    format!(
        "iac-{}-{role}-{content}",
        &who.trim_start_matches("sha256:")[..16]
    )
}

/// The labels of an object.
pub fn object_labels(
    project: &ProjectName,
    svc: &ServiceName,
    kind: Kind,
) -> HashMap<String, String> {
    HashMap::from([
        (LABEL_PROJECT.to_string(), project.to_string()),
        (LABEL_SERVICE.to_string(), svc.to_string()),
        (LABEL_MANAGED.to_string(), MANAGED_BY.to_string()),
        (LABEL_ROLE.to_string(), kind.as_str().to_string()),
    ])
}

/// The label filter selecting a project's objects.
pub fn project_filter(project: &ProjectName) -> HashMap<String, Vec<String>> {
    HashMap::from([(
        "label".to_string(),
        vec![
            format!("{LABEL_MANAGED}={MANAGED_BY}"),
            format!("{LABEL_PROJECT}={project}"),
        ],
    )])
}

/// A project's configs and secrets on one engine.
pub struct Objects<'a> {
    /// The manager's engine.
    pub docker: &'a Docker,
    /// The project the objects are labelled with.
    pub project: &'a ProjectName,
}

impl Objects<'_> {
    /// Every object of the project: (kind, id, name).
    pub async fn list(&self) -> Result<Vec<(Kind, String, String)>, ProvisionError> {
        let filters = project_filter(self.project);
        let mut out = Vec::new();
        let configs = self
            .docker
            .list_configs(Some(
                ListConfigsOptionsBuilder::default()
                    .filters(&filters)
                    .build(),
            ))
            .await
            .map_err(|e| engine_error("listing configs", e))?;
        for c in configs {
            let name = c.spec.and_then(|s| s.name).unwrap_or_default();
            out.push((Kind::Config, c.id.unwrap_or_default(), name));
        }
        let secrets = self
            .docker
            .list_secrets(Some(
                ListSecretsOptionsBuilder::default()
                    .filters(&filters)
                    .build(),
            ))
            .await
            .map_err(|e| engine_error("listing secrets", e))?;
        for s in secrets {
            let name = s.spec.and_then(|s| s.name).unwrap_or_default();
            out.push((Kind::Secret, s.id.unwrap_or_default(), name));
        }
        Ok(out)
    }

    /// The object holding `data` for `svc`'s `role`: the existing one with that name, else a new
    /// one.
    pub async fn ensure(
        &self,
        existing: &[(Kind, String, String)],
        kind: Kind,
        svc: &ServiceName,
        role: &str,
        data: &[u8],
    ) -> Result<(ObjectRef, bool), ProvisionError> {
        let name = object_name(self.project, svc, role, data);
        if let Some((_, id, _)) = existing.iter().find(|(k, _, n)| *k == kind && *n == name) {
            return Ok((
                ObjectRef {
                    id: id.clone(),
                    name,
                },
                false,
            ));
        }
        let labels = object_labels(self.project, svc, kind);
        let encoded = base64::engine::general_purpose::STANDARD.encode(data);
        let created = match kind {
            Kind::Config => self
                .docker
                .create_config(ConfigSpec {
                    name: Some(name.clone()),
                    labels: Some(labels),
                    data: Some(encoded),
                    templating: None,
                })
                .await
                .map_err(|e| engine_error(&format!("creating config {name}"), e))?,
            Kind::Secret => self
                .docker
                .create_secret(SecretSpec {
                    name: Some(name.clone()),
                    labels: Some(labels),
                    data: Some(encoded),
                    driver: None,
                    templating: None,
                })
                .await
                .map_err(|e| engine_error(&format!("creating secret {name}"), e))?,
        };
        Ok((
            ObjectRef {
                id: created.id,
                name,
            },
            true,
        ))
    }

    /// Removes the project's objects whose names are not in `used`; returns what it removed.
    /// An object Swarm still considers in use (a task of another update, say) is left for the
    /// next deploy.
    pub async fn prune(&self, used: &BTreeSet<String>) -> Result<Vec<String>, ProvisionError> {
        let mut removed = Vec::new();
        for (kind, id, name) in self.list().await? {
            if used.contains(&name) {
                continue;
            }
            let r = match kind {
                Kind::Config => self.docker.delete_config(&id).await,
                Kind::Secret => self.docker.delete_secret(&id).await,
            };
            match r {
                Ok(()) => removed.push(format!("{} {name}", kind.as_str())),
                Err(bollard::errors::Error::DockerResponseServerError {
                    status_code: 400 | 404 | 409,
                    ..
                }) => {}
                Err(e) => {
                    return Err(engine_error(
                        &format!("removing {} {name}", kind.as_str()),
                        e,
                    ));
                }
            }
        }
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_content_and_fit_swarms_limit() {
        let p = ProjectName::new("demo").unwrap();
        let s = ServiceName::new("web").unwrap();
        let a = object_name(&p, &s, "key", b"one");
        assert!(a.starts_with("demo-web-key-"), "{a}");
        assert_eq!(a.len(), "demo-web-key-".len() + 12);
        assert_eq!(a, object_name(&p, &s, "key", b"one"), "deterministic");
        assert_ne!(
            a,
            object_name(&p, &s, "key", b"two"),
            "new content, new name"
        );
        assert_ne!(a, object_name(&p, &s, "cert", b"one"));

        let long = ProjectName::new(&"p".repeat(40)).unwrap();
        let svc = ServiceName::new(&"s".repeat(40)).unwrap();
        let n = object_name(&long, &svc, "envoy-config", b"x");
        assert!(n.len() <= MAX_NAME, "{n}");
        assert!(n.starts_with("iac-") && n.contains("-envoy-config-"), "{n}");
        let other = ServiceName::new(&"t".repeat(40)).unwrap();
        assert_ne!(n, object_name(&long, &other, "envoy-config", b"x"));
    }

    #[test]
    fn labels_say_whose_it_is() {
        let p = ProjectName::new("demo").unwrap();
        let s = ServiceName::new("web").unwrap();
        let l = object_labels(&p, &s, Kind::Secret);
        assert_eq!(l["iac.project"], "demo");
        assert_eq!(l["iac.service"], "web");
        assert_eq!(l["iac.managed-by"], "iac");
        assert_eq!(l["iac.role"], "secret");
        assert_eq!(
            project_filter(&p)["label"],
            ["iac.managed-by=iac", "iac.project=demo"]
        );
    }
}
