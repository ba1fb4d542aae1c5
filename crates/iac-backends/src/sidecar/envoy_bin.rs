//! Running a real Envoy on the host: locate the binary, `--mode validate` a rendered config, and
//! run one as a child process that is killed when its guard drops. Used by `iac render
//! --validate`, by CI and by the mesh tests; deployments run Envoy in its own container instead.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use iac_core::SidecarError;

/// Environment variable naming the Envoy binary (default: `envoy` on `PATH`).
pub const ENVOY_BIN_ENV: &str = "IAC_ENVOY";

/// The Envoy binary to use: `$IAC_ENVOY`, else the first `envoy` on `PATH`. `None` if neither exists.
pub fn envoy_binary() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os(ENVOY_BIN_ENV).filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        return p.is_file().then_some(p);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join("envoy"))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// `envoy --version`, e.g. `.../1.40.0/Clean/RELEASE/BoringSSL`.
pub fn version(bin: &Path) -> Result<String, SidecarError> {
    let out = Command::new(bin).arg("--version").output().map_err(|e| {
        SidecarError::Template(format!("cannot run {} --version: {e}", bin.display()))
    })?;
    if !out.status.success() {
        return Err(SidecarError::Template(format!(
            "{} --version exited with {}: {}",
            bin.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Runs `envoy --mode validate -c config`. Envoy loads the certificate files named in the
/// config, so they must exist where the config says. The error carries Envoy's own message.
pub fn validate(bin: &Path, config: &Path) -> Result<(), SidecarError> {
    let out = Command::new(bin)
        .args(["--mode", "validate", "--log-level", "error", "-c"])
        .arg(config)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| SidecarError::Template(format!("cannot run {}: {e}", bin.display())))?;
    if out.status.success() {
        return Ok(());
    }
    let mut msg = String::from_utf8_lossy(&out.stderr).trim().to_string();
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !stdout.trim().is_empty() {
        msg.push('\n');
        msg.push_str(stdout.trim());
    }
    Err(SidecarError::Invalid {
        service: config.display().to_string(),
        why: format!("envoy --mode validate failed ({}): {msg}", out.status),
    })
}

/// A running Envoy, killed (and reaped) on drop. Its output goes to `log`.
#[derive(Debug)]
pub struct EnvoyProcess {
    child: Child,
    log: PathBuf,
}

impl EnvoyProcess {
    /// Starts `envoy -c config` with hot restart disabled (so several can run on one host) and
    /// one worker thread.
    pub fn spawn(bin: &Path, config: &Path, log: &Path) -> Result<EnvoyProcess, SidecarError> {
        let out = std::fs::File::create(log)
            .map_err(|e| SidecarError::Template(format!("cannot create {}: {e}", log.display())))?;
        let err = out
            .try_clone()
            .map_err(|e| SidecarError::Template(format!("{}: {e}", log.display())))?;
        let child = Command::new(bin)
            .args([
                "--disable-hot-restart",
                "--concurrency",
                "1",
                "--log-level",
                "info",
                "-c",
            ])
            .arg(config)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|e| SidecarError::Template(format!("cannot start {}: {e}", bin.display())))?;
        Ok(EnvoyProcess {
            child,
            log: log.to_path_buf(),
        })
    }

    /// The Envoy process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Envoy's output so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until every address accepts TCP connections. Fails early, with Envoy's log, if it exits.
    pub async fn wait_listening(
        &mut self,
        addrs: &[SocketAddr],
        timeout: Duration,
    ) -> Result<(), SidecarError> {
        let start = Instant::now();
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(SidecarError::Template(format!(
                    "envoy exited early ({status}):\n{}",
                    self.log()
                )));
            }
            let mut all = true;
            for a in addrs {
                if tokio::net::TcpStream::connect(a).await.is_err() {
                    all = false;
                    break;
                }
            }
            if all {
                return Ok(());
            }
            if start.elapsed() > timeout {
                return Err(SidecarError::Template(format!(
                    "envoy did not listen on {addrs:?} within {timeout:?}:\n{}",
                    self.log()
                )));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for EnvoyProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
