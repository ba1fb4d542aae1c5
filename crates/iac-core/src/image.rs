//! [`BuildSpec`] (what to build for one service) and [`ImageRef`] (what was built or reused).

use serde::{Deserialize, Serialize};

use crate::entry::Entry;
use crate::name::{ProjectName, ServiceName};
use crate::repos::{InstallSelection, ServiceSpec};
use crate::source::Source;

/// What an image is built from: one service's source and entry (and the extras/groups of its
/// dependencies the repos file asks for). Deliberately without the
/// service's `env` (repos file, API): an image's metadata (`Config.Env`, labels, history) is
/// readable by anyone who can pull it — and on Swarm it is pushed to a registry — so that
/// environment goes into the app container when it is created (the plan's
/// [`crate::ContainerSpec`]), never into the image, and changing it replaces the pod without
/// rebuilding the image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BuildSpec {
    /// The project (part of the tag and labels).
    pub project: ProjectName,
    /// The service.
    pub service: ServiceName,
    /// Its source tree.
    pub source: Source,
    /// Its entry point.
    pub entry: Entry,
    /// Extras and dependency groups the repos file asks for (Python).
    #[serde(default, skip_serializing_if = "InstallSelection::is_empty")]
    pub install: InstallSelection,
}

impl BuildSpec {
    /// What to build for `spec` in `project`, from its fetched source and resolved entry. Takes
    /// nothing else from the spec (see the type's documentation for why not its `env`).
    pub fn for_service(
        project: &ProjectName,
        spec: &ServiceSpec,
        source: Source,
        entry: Entry,
    ) -> Self {
        BuildSpec {
            project: project.clone(),
            service: spec.name.clone(),
            source,
            entry,
            install: spec.install.clone(),
        }
    }
}

/// An image built (or planned, or reused) for a service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageRef {
    /// Engine image id (`sha256:…`); empty when only planned.
    pub id: String,
    /// Content-addressed tag, e.g. `iac/shop-api:3f2a…`; a pure function of the build inputs.
    pub tag: String,
    /// The build key (source digest + Dockerfile + agent digest) the tag is derived from.
    pub key: String,
    /// True when an image with this key already existed and nothing was built.
    pub reused: bool,
}
