//! Listeners of the admin API: the TCP socket and the Unix socket, and [`Peer`], the connect
//! info both attach to every request (TCP: remote address; Unix: the peer's credentials read
//! with `SO_PEERCRED` at accept time).
//!
//! The Unix socket is created safely: an existing path is replaced only if it is a socket that
//! nothing answers on (a stale file from a crashed server); a live server or a non-socket file
//! is an error. The new socket is bound inside a fresh 0700 directory next to the target, made
//! 0600, then renamed into place, so it is never reachable with looser permissions.

use std::net::SocketAddr;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use axum::extract::connect_info::Connected;
use axum::serve::IncomingStream;
use tokio::net::{TcpListener, UnixListener};

/// Who is on the other end of a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Peer {
    /// A TCP client at this address.
    Tcp(SocketAddr),
    /// Credentials of the process that connected to the Unix socket (`None` if unreadable).
    Unix {
        /// The peer's uid (`SO_PEERCRED`).
        uid: Option<u32>,
        /// The peer's gid.
        gid: Option<u32>,
        /// The peer's process id.
        pid: Option<i32>,
    },
}

impl Connected<IncomingStream<'_, TcpListener>> for Peer {
    fn connect_info(stream: IncomingStream<'_, TcpListener>) -> Self {
        Peer::Tcp(*stream.remote_addr())
    }
}

impl Connected<IncomingStream<'_, UnixListener>> for Peer {
    fn connect_info(stream: IncomingStream<'_, UnixListener>) -> Self {
        match stream.io().peer_cred() {
            Ok(c) => Peer::Unix {
                uid: Some(c.uid()),
                gid: Some(c.gid()),
                pid: c.pid(),
            },
            Err(e) => {
                tracing::warn!(error = %e, "cannot read peer credentials of a unix socket connection");
                Peer::Unix {
                    uid: None,
                    gid: None,
                    pid: None,
                }
            }
        }
    }
}

/// The effective uid of this process.
pub fn current_uid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// The Unix-socket authorization rule: only the server's own uid may talk to it. `Err` says why
/// not, naming both uids.
pub fn check_peer_uid(peer_uid: Option<u32>, server_uid: u32) -> Result<(), String> {
    match peer_uid {
        Some(u) if u == server_uid => Ok(()),
        Some(u) => Err(format!(
            "unix socket peer uid {u} is not allowed: only uid {server_uid} (the server's own) may use this socket"
        )),
        None => {
            Err("unix socket peer credentials could not be read; refusing the request".to_string())
        }
    }
}

/// `/run/iac_wrapper.sock` as root, else `$XDG_RUNTIME_DIR/iac_wrapper.sock`.
pub fn default_socket_path() -> Result<PathBuf, String> {
    default_socket_path_for(
        current_uid(),
        std::env::var_os("XDG_RUNTIME_DIR").map(PathBuf::from),
    )
}

pub(crate) fn default_socket_path_for(
    uid: u32,
    xdg_runtime_dir: Option<PathBuf>,
) -> Result<PathBuf, String> {
    if uid == 0 {
        return Ok(PathBuf::from("/run/iac_wrapper.sock"));
    }
    match xdg_runtime_dir.filter(|d| !d.as_os_str().is_empty()) {
        Some(d) => Ok(d.join("iac_wrapper.sock")),
        None => Err(
            "no default unix socket path: not running as root and XDG_RUNTIME_DIR is not set; set the socket path explicitly (--uds PATH)"
                .to_string(),
        ),
    }
}

/// Binds the Unix socket at `path` (0600), replacing a stale socket file only.
pub async fn bind_unix(path: &Path) -> anyhow::Result<UnixListener> {
    use anyhow::{Context, bail};
    let parent = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_path_buf();
    let file_name = path
        .file_name()
        .with_context(|| format!("unix socket path {} has no file name", path.display()))?
        .to_string_lossy()
        .to_string();
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            match tokio::net::UnixStream::connect(path).await {
                Ok(_) => bail!(
                    "unix socket {} is in use: another server answers on it (stop it or choose another path)",
                    path.display()
                ),
                Err(e) => {
                    tracing::info!(path = %path.display(), error = %e, "replacing stale unix socket")
                }
            }
        }
        Ok(_) => bail!(
            "refusing to replace {}: it exists and is not a unix socket",
            path.display()
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("cannot inspect {}", path.display())),
    }
    std::fs::create_dir_all(&parent)
        .with_context(|| format!("cannot create directory {}", parent.display()))?;
    let staging = tempfile::Builder::new()
        .prefix(&format!(".{file_name}."))
        .tempdir_in(&parent)
        .with_context(|| format!("cannot create a staging directory in {}", parent.display()))?;
    std::fs::set_permissions(staging.path(), std::fs::Permissions::from_mode(0o700))
        .with_context(|| format!("cannot chmod {}", staging.path().display()))?;
    let tmp = staging.path().join("sock");
    let listener = UnixListener::bind(&tmp)
        .with_context(|| format!("cannot bind unix socket {}", tmp.display()))?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("cannot chmod 0600 {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| {
        format!(
            "cannot move the unix socket into place at {}",
            path.display()
        )
    })?;
    Ok(listener)
}

/// Identity of the socket file we created, to remove it on shutdown only if it is still ours.
pub(crate) fn socket_identity(path: &Path) -> Option<(u64, u64)> {
    std::fs::symlink_metadata(path)
        .ok()
        .map(|m| (m.dev(), m.ino()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uid_rule() {
        assert!(check_peer_uid(Some(0), 0).is_ok());
        let e = check_peer_uid(Some(65534), 0).unwrap_err();
        assert!(e.contains("65534") && e.contains("uid 0"), "{e}");
        assert!(check_peer_uid(None, 0).is_err());
        assert!(check_peer_uid(Some(0), 1000).is_err());
    }

    #[test]
    fn default_paths() {
        assert_eq!(
            default_socket_path_for(0, None).unwrap(),
            PathBuf::from("/run/iac_wrapper.sock")
        );
        assert_eq!(
            default_socket_path_for(1000, Some("/run/user/1000".into())).unwrap(),
            PathBuf::from("/run/user/1000/iac_wrapper.sock")
        );
        assert!(
            default_socket_path_for(1000, None)
                .unwrap_err()
                .contains("XDG_RUNTIME_DIR")
        );
    }

    #[tokio::test]
    async fn stale_socket_replaced_live_one_and_plain_file_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        // A stale socket: bound then dropped, the file stays.
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        assert!(path.exists());
        let live = bind_unix(&path).await.unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        // Now something answers: refused.
        let err = bind_unix(&path).await.unwrap_err().to_string();
        assert!(err.contains("in use"), "{err}");
        drop(live);
        let file = dir.path().join("plain");
        std::fs::write(&file, "x").unwrap();
        let err = bind_unix(&file).await.unwrap_err().to_string();
        assert!(err.contains("not a unix socket"), "{err}");
        // No staging directories left behind.
        let leftovers: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().starts_with('.'))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }
}
