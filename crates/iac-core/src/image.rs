//! [`BuildSpec`] (what to build for one service) and [`ImageRef`] (what was built or reused).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::entry::Entry;
use crate::name::{ProjectName, ServiceName};
use crate::source::Source;

/// What an image is built from: one service's source, entry and environment.
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
    /// Extra environment baked into the image (from the repos file).
    pub env: BTreeMap<String, String>,
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
