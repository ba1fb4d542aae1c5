//! The per-project deploy lock (`<state_dir>/deploy.lock`, an exclusive file lock held for the
//! whole provision step): a second deploy of the same project waits, and says it waits.

use crate::error::Error;
use crate::event::{Events, Stage};
use crate::fsutil::FileLock;

use super::Deployer;

impl Deployer {
    pub(super) async fn lock(&self, events: &Events) -> Result<FileLock, Error> {
        let path = self.opts.state_dir.join("deploy.lock");
        FileLock::acquire(&path, || {
            events.info(
                Stage::Deploy,
                format!(
                    "waiting for another deploy of project {} ({})",
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
