//! [`DeployReport`]: the outcome of one deploy, per service: stages and durations, image, entry,
//! provisioning action, health, the URL people open (`url`, when the service has an edge),
//! warnings and error.

use serde::{Deserialize, Serialize};

use crate::entry::Entry;
use crate::health::HealthReport;
use crate::name::{ProjectName, ServiceName};
use crate::stack::Action;
use crate::stage::Stage;

/// How long one stage of one service took, and whether it succeeded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StageTiming {
    /// The stage.
    pub stage: Stage,
    /// Wall time, milliseconds.
    pub millis: u64,
    /// Whether it succeeded.
    pub ok: bool,
}

/// One service's outcome: every stage it went through, what it ran, and how it ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceReport {
    /// The service.
    pub service: ServiceName,
    /// Its source, as the repos file (or API request) gave it.
    pub slug: String,
    /// Deployed and proven SERVING.
    pub ok: bool,
    /// The stages run, in order.
    pub stages: Vec<StageTiming>,
    /// The commit fetched, when the source has one.
    pub commit: Option<String>,
    /// The image tag built or reused.
    pub image: Option<String>,
    /// Whether an existing image with the same build key was reused.
    pub image_reused: Option<bool>,
    /// The entry point resolved.
    pub entry: Option<Entry>,
    /// What provisioning did to the service.
    pub action: Option<Action>,
    /// The host address of its mTLS listener.
    pub endpoint: Option<String>,
    /// Where a person opens the app on the host, no client certificate needed
    /// (`http://127.0.0.1:<port>/`); `None` without an edge.
    #[serde(default)]
    pub url: Option<String>,
    /// The last health answer.
    pub health: Option<HealthReport>,
    /// Things that did not fail the deploy but need a person's attention (e.g. the app listens
    /// on another port than the one the sidecar routes to).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    /// The first error, with the stage it happened in.
    pub error: Option<String>,
    /// The stage of [`ServiceReport::error`].
    pub failed_stage: Option<Stage>,
}

impl ServiceReport {
    /// A report with nothing run yet (not ok).
    pub fn new(service: ServiceName, slug: String) -> Self {
        ServiceReport {
            service,
            slug,
            ok: false,
            stages: Vec::new(),
            commit: None,
            image: None,
            image_reused: None,
            entry: None,
            action: None,
            endpoint: None,
            url: None,
            health: None,
            warnings: Vec::new(),
            error: None,
            failed_stage: None,
        }
    }

    /// Marks the service failed in `stage`; the first error is kept.
    pub fn fail(&mut self, stage: Stage, error: impl std::fmt::Display) {
        if self.error.is_none() {
            self.error = Some(format!("{}: {error}", stage.as_str()));
            self.failed_stage = Some(stage);
        }
        self.ok = false;
    }
}

/// The outcome of one deploy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeployReport {
    /// The project.
    pub project: ProjectName,
    /// Every service ok and no project-wide error.
    pub ok: bool,
    /// Every service of the deploy, sorted by name.
    pub services: Vec<ServiceReport>,
    /// Services removed because they are no longer in the repos file.
    pub removed: Vec<ServiceName>,
    /// A project-wide failure (provisioning as a whole), if any.
    pub error: Option<String>,
    /// Wall time of the whole deploy, milliseconds.
    pub millis: u64,
}
