//! The per-project deploy lock (`<state_dir>/deploy.lock`, an exclusive file lock held for the
//! whole provision step): a second deploy of the same project waits, and says it waits.

use crate::error::Error;
use crate::event::{Events, Stage};

use super::Deployer;

impl Deployer {
    pub(super) async fn lock(&self, events: &Events) -> Result<std::fs::File, Error> {
        let path = self.opts.state_dir.join("deploy.lock");
        let dir = self.opts.state_dir.clone();
        let p = path.clone();
        let file = tokio::task::spawn_blocking(move || -> std::io::Result<std::fs::File> {
            std::fs::create_dir_all(&dir)?;
            std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&p)
        })
        .await
        .expect("lock task never panics")
        .map_err(|source| Error::Io {
            path: path.clone(),
            source,
        })?;
        match file.try_lock() {
            Ok(()) => return Ok(file),
            Err(std::fs::TryLockError::WouldBlock) => {
                events.info(
                    Stage::Deploy,
                    format!(
                        "waiting for another deploy of project {} ({})",
                        self.opts.project,
                        path.display()
                    ),
                );
            }
            Err(std::fs::TryLockError::Error(source)) => return Err(Error::Io { path, source }),
        }
        tokio::task::spawn_blocking(move || file.lock().map(|()| file))
            .await
            .expect("lock task never panics")
            .map_err(|source| Error::Io { path, source })
    }
}
