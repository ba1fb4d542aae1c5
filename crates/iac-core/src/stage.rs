//! [`Stage`]: the steps of a deploy (fetch … health, destroy), as events, reports, timings and
//! trace spans name them. Its own module so that events and trace context both use it without
//! depending on each other.

use serde::{Deserialize, Serialize};

/// The pipeline stage an event belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stage {
    /// Fetching the source.
    Fetch,
    /// Resolving the entry point.
    Resolve,
    /// Building the image.
    Build,
    /// Issuing certificates.
    Certs,
    /// Rendering the sidecar config.
    Render,
    /// Planning the stack.
    Plan,
    /// Running a service's release command before its new pods start.
    Release,
    /// Applying the stack.
    Provision,
    /// Proving health.
    Health,
    /// Removing a project.
    Destroy,
    /// The deploy as a whole.
    Deploy,
}

impl Stage {
    /// Lowercase name, as events and reports print it.
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Fetch => "fetch",
            Stage::Resolve => "resolve",
            Stage::Build => "build",
            Stage::Certs => "certs",
            Stage::Render => "render",
            Stage::Plan => "plan",
            Stage::Release => "release",
            Stage::Provision => "provision",
            Stage::Health => "health",
            Stage::Destroy => "destroy",
            Stage::Deploy => "deploy",
        }
    }
}
