//! Swarm configs (Envoy's config) and secrets (the certificates) of a service, named by content:
//! `<project>-<svc>-<role>-<sha256 of the data, 12 hex>`. A change of content is a new name, so a
//! service update mounts new objects (Swarm objects are immutable) and the old ones stay intact
//! for a rollback; [`Objects::prune`] removes those no service of the project uses any more.
//!
//! Every object carries `iac.project`, `iac.service`, `iac.managed-by=iac` and `iac.role`; only
//! objects with the project's labels are ever listed or removed.

use std::collections::{BTreeSet, HashMap};

use iac_core::fsutil::sha256_tagged;
use iac_core::stack::{LABEL_PROJECT, LABEL_ROLE};
use iac_core::{ProjectName, ProvisionError, ServiceName};

use super::spec::ObjectRef;
pub use crate::engine::swarm::ObjectKind as Kind;
use crate::engine::swarm::{SwarmEngine, SwarmObject};
use iac_core::labels::{managed_filter, service_labels};

/// Swarm's limit on config and secret names.
const MAX_NAME: usize = 64;

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
    let mut l: HashMap<String, String> = service_labels(project.as_str(), svc.as_str())
        .into_iter()
        .collect();
    l.insert(LABEL_ROLE.to_string(), kind.as_str().to_string());
    l
}

/// The label filter selecting a project's objects.
pub fn project_filter(project: &ProjectName) -> HashMap<String, Vec<String>> {
    HashMap::from([(
        "label".to_string(),
        vec![managed_filter(), format!("{LABEL_PROJECT}={project}")],
    )])
}

/// A project's configs and secrets on one engine.
pub struct Objects<'a> {
    /// The engine they live on.
    pub engine: &'a dyn SwarmEngine,
    /// Whose they are (their `iac.project` label).
    pub project: &'a ProjectName,
}

impl Objects<'_> {
    /// Every object of the project.
    pub async fn list(&self) -> Result<Vec<SwarmObject>, ProvisionError> {
        Ok(self.engine.objects(project_filter(self.project)).await?)
    }

    /// The object holding `data` for `svc`'s `role`: the existing one with that name, else a new
    /// one (and whether it was created).
    pub async fn ensure(
        &self,
        existing: &[SwarmObject],
        kind: Kind,
        svc: &ServiceName,
        role: &str,
        data: &[u8],
    ) -> Result<(ObjectRef, bool), ProvisionError> {
        let name = object_name(self.project, svc, role, data);
        if let Some(o) = existing.iter().find(|o| o.kind == kind && o.name == name) {
            return Ok((
                ObjectRef {
                    id: o.id.clone(),
                    name,
                },
                false,
            ));
        }
        let labels = object_labels(self.project, svc, kind);
        let id = self
            .engine
            .create_object(kind, &name, labels, data.to_vec())
            .await?;
        Ok((ObjectRef { id, name }, true))
    }

    /// Removes the project's objects whose names are not in `used`; returns what it removed.
    /// An object Swarm still considers in use (a task of another update, say) is left for the
    /// next deploy.
    pub async fn prune(&self, used: &BTreeSet<String>) -> Result<Vec<String>, ProvisionError> {
        let mut removed = Vec::new();
        for o in self.list().await? {
            if used.contains(&o.name) {
                continue;
            }
            match self.engine.remove_object(o.kind, &o.id).await {
                Ok(()) => removed.push(format!("{} {}", o.kind.as_str(), o.name)),
                // In use (400/409), or gone meanwhile (404).
                Err(e) if matches!(e.status, Some(400 | 404 | 409)) => {}
                Err(e) => return Err(e.into()),
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
