//! Recording the CLI's deploys and destroys in the deployment history: who (`cli:<user>`),
//! the repos file, every event the progress display sees, the outcome. A history that cannot
//! be opened is a warning on stderr, never a failed deploy.

use std::sync::Arc;

use iac_core::ProjectName;
use iac_core::history::{
    HistoryKind, HistoryStart, HistoryStore, LocalProcesses, Recorder, RunOwner, mark_interrupted,
};

use crate::config::IacConfig;

/// `cli:<login name>` (`$USER`, else the uid).
pub fn cli_user() -> String {
    let user = std::env::var("USER")
        .ok()
        .filter(|u| !u.is_empty() && u.chars().all(|c| !c.is_control()))
        // SAFETY: getuid has no preconditions.
        .unwrap_or_else(|| format!("uid:{}", unsafe { libc::getuid() }));
    format!("cli:{user}")
}

/// Opens the configured history, or `None` after a warning on stderr.
pub async fn open_store(cfg: &IacConfig) -> Option<Arc<dyn HistoryStore>> {
    match cfg.history.open(&cfg.state_dir).await {
        Ok(s) => Some(s),
        Err(e) => {
            eprintln!("warning: {e:#}; this run is not recorded in the deployment history");
            None
        }
    }
}

/// Finishes as `interrupted` the `running` records (of `project`, else all) whose process on
/// this host provably died ([`mark_interrupted`]); a failure is a warning, never an error.
pub async fn settle_interrupted(store: &dyn HistoryStore, project: Option<&ProjectName>) {
    let now = iac_core::event::now_rfc3339();
    if let Err(e) = mark_interrupted(store, project, &LocalProcesses, &now).await {
        eprintln!("warning: {e:#}; runs killed earlier may still show as running");
    }
}

/// Starts recording a CLI deploy or destroy (`None` when the history cannot be opened); the
/// project's earlier runs whose process provably died are marked `interrupted` first.
pub async fn start(
    cfg: &IacConfig,
    project: &ProjectName,
    kind: HistoryKind,
    services: Vec<String>,
    repos: Option<String>,
) -> Option<Recorder> {
    let store = open_store(cfg).await?;
    settle_interrupted(store.as_ref(), Some(project)).await;
    let recorder = Recorder::start(
        store,
        HistoryStart {
            id: uuid::Uuid::new_v4().to_string(),
            project: project.clone(),
            kind,
            who: cli_user(),
            origin: "cli".to_string(),
            started_at: iac_core::event::now_rfc3339(),
            services,
            repos,
            owner: RunOwner::current(&LocalProcesses),
        },
        Some(cfg.history.retention()),
    )
    .await;
    recorder.is_recording().then_some(recorder)
}
