//! [`DeployReport`]: the outcome of one deploy, per service: stages and durations, image, entry,
//! provisioning action, health and error.

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
    pub health: Option<HealthReport>,
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
            health: None,
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
