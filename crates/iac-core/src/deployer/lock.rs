//! The per-project deploy lock (`<state_dir>/deploy.lock`, an exclusive file lock held for the
//! whole provision step): a second deploy of the same project — from the CLI or the admin API —
//! waits, and says whom it waits for.

use crate::error::Error;
use crate::event::{Events, Stage};
use crate::fsutil::FileLock;

use super::Deployer;

impl Deployer {
    pub(super) async fn lock(&self, events: &Events) -> Result<FileLock, Error> {
        let path = self.opts.state_dir.join("deploy.lock");
        FileLock::acquire(&path, |holder| {
            let who = if holder.is_empty() {
                String::new()
            } else {
                format!(", held by {holder}")
            };
            events.info(
                Stage::Deploy,
                format!(
                    "waiting for another deploy of project {} ({}{who})",
                    self.opts.project,
                    path.display()
                ),
            );
        })
        .await
        .map_err(|source| Error::Io {
            path: path.clone(),
            source,
        })
    }
}
