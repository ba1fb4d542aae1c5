//! [`DeployReport`]: the outcome of one deploy, per service: stages and durations, image, entry,
//! provisioning action, health, the URL people open (`url`, when the service has an edge),
//! warnings and error.

use serde::{Deserialize, Serialize};

use crate::entry::Entry;
use crate::event::Stage;
use crate::health::HealthReport;
use crate::name::{ProjectName, ServiceName};
use crate::stack::Action;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StageTiming {
    pub stage: Stage,
    pub millis: u64,
    pub ok: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceReport {
    pub service: ServiceName,
    pub slug: String,
    pub ok: bool,
    pub stages: Vec<StageTiming>,
    pub commit: Option<String>,
    pub image: Option<String>,
    pub image_reused: Option<bool>,
    pub entry: Option<Entry>,
    pub action: Option<Action>,
    pub endpoint: Option<String>,
    /// Where a person opens the app on the host, no client certificate needed
    /// (`http://127.0.0.1:<port>/`); `None` without an edge.
    #[serde(default)]
    pub url: Option<String>,
    pub health: Option<HealthReport>,
    /// Things that did not fail the deploy but need a person's attention (e.g. the app listens
    /// on another port than the one the sidecar routes to).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    /// The first error, with the stage it happened in.
    pub error: Option<String>,
    pub failed_stage: Option<Stage>,
}

impl ServiceReport {
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

    pub fn fail(&mut self, stage: Stage, error: impl std::fmt::Display) {
        if self.error.is_none() {
            self.error = Some(format!("{}: {error}", stage.as_str()));
            self.failed_stage = Some(stage);
        }
        self.ok = false;
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeployReport {
    pub project: ProjectName,
    pub ok: bool,
    pub services: Vec<ServiceReport>,
    pub removed: Vec<ServiceName>,
    /// A project-wide failure (provisioning as a whole), if any.
    pub error: Option<String>,
    pub millis: u64,
}
