//! The image recipe compiled into the binary: `scripts/bootstrap-images.sh` and the files of
//! `scripts/images/` (`include_str!` and `build.rs`), written into a private directory to run, and
//! the environment that hands it the configuration. `iac bootstrap` ([`crate::commands::bootstrap`])
//! runs it for every image; [`RecipeMaker`] runs it from a deploy when a build needs a Python base
//! image the engine does not have.

use std::path::{Path, PathBuf};

use anyhow::Context;

use iac_backends::engine::host_url;

use crate::config::IacConfig;

/// The recipe script, as in the source tree when this binary was built.
pub const SCRIPT: &str = include_str!("../../../scripts/bootstrap-images.sh");
/// The recipe's data files (`scripts/images/*`): name and contents.
pub const RECIPE_FILES: &[(&str, &[u8])] = include!(concat!(env!("OUT_DIR"), "/recipe_files.rs"));

/// Writes the script and its data files under `dir/scripts/` (the layout the script expects).
pub fn write_recipe(dir: &Path) -> anyhow::Result<PathBuf> {
    let images = dir.join("scripts").join("images");
    std::fs::create_dir_all(&images).with_context(|| format!("create {}", images.display()))?;
    for (name, bytes) in RECIPE_FILES {
        iac_core::fsutil::write_atomic(&images.join(name), bytes, Some(0o644))
            .with_context(|| format!("write {}", images.join(name).display()))?;
    }
    let script = dir.join("scripts").join("bootstrap-images.sh");
    iac_core::fsutil::write_atomic(&script, SCRIPT.as_bytes(), Some(0o755))
        .with_context(|| format!("write {}", script.display()))?;
    Ok(script)
}

/// `[docker] docker_host` in the form the docker CLI takes (`/path.sock` → `unix:///path.sock`).
fn docker_host(cfg: &IacConfig) -> Option<String> {
    cfg.docker.docker_host.as_deref().map(host_url)
}

/// Hands the recipe the configured image names, wheelhouse, pip and engine as its environment.
pub fn recipe_env(cfg: &IacConfig, cmd: &mut tokio::process::Command) {
    for (v, images) in &cfg.images.pythons {
        let key = v.replace('.', "_");
        cmd.env(format!("IAC_PYTHON_IMAGE_{key}"), &images.offline_image)
            .env(format!("IAC_PYTHON_OFFICIAL_{key}"), &images.image);
    }
    cmd.env("IAC_PYTHON_IMAGE", &cfg.images.offline_base_image)
        .env("IAC_PYTHON_OFFICIAL", &cfg.images.base_image)
        .env("IAC_PYTHON_VERSION", &cfg.images.default_python)
        .env("IAC_ENVOY_IMAGE", &cfg.sidecar.offline_image)
        .env("IAC_ENVOY_OFFICIAL", &cfg.sidecar.image)
        .env("IAC_ENVOY_VERSION", crate::config::ENVOY_VERSION)
        .env("IAC_WHEELHOUSE", cfg.images.wheelhouse_path())
        .env("IAC_PIP", cfg.images.pip.join(" "));
    if let Some(h) = docker_host(cfg) {
        cmd.env("DOCKER_HOST", h);
    }
}

/// Builds a missing Python base image (and its wheelhouse) during a deploy by running the
/// embedded recipe with `--only-python --python X.Y`; its progress lines become build events.
pub struct RecipeMaker {
    cfg: IacConfig,
}

impl RecipeMaker {
    /// A maker using `cfg`'s image names and sidecar settings.
    pub fn new(cfg: IacConfig) -> Self {
        RecipeMaker { cfg }
    }
}

#[async_trait::async_trait]
impl iac_backends::build::BaseImageMaker for RecipeMaker {
    async fn make(
        &self,
        python: &iac_backends::build::PythonChoice,
        events: &iac_core::Events,
    ) -> Result<(), String> {
        use tokio::io::AsyncBufReadExt;
        let dir = tempfile::Builder::new()
            .prefix("iac-bootstrap-")
            .tempdir()
            .map_err(|e| format!("create a private directory for the image recipe: {e}"))?;
        let script = write_recipe(dir.path()).map_err(|e| format!("{e:#}"))?;
        let mut cmd = tokio::process::Command::new("bash");
        cmd.arg(&script)
            .args(["--only-python", "--python", &python.version])
            .current_dir(dir.path())
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true);
        recipe_env(&self.cfg, &mut cmd);
        let mut child = cmd.spawn().map_err(|e| {
            format!("cannot run bash for the image recipe (it needs bash, the docker CLI and mmdebstrap): {e}")
        })?;
        let stdout = child.stdout.take().expect("piped");
        let stderr = child.stderr.take().expect("piped");
        let err_task = tokio::spawn(async move {
            let mut lines = tokio::io::BufReader::new(stderr).lines();
            let mut tail: std::collections::VecDeque<String> = Default::default();
            while let Ok(Some(l)) = lines.next_line().await {
                if tail.len() == 20 {
                    tail.pop_front();
                }
                tail.push_back(l);
            }
            tail.into_iter().collect::<Vec<_>>().join("\n")
        });
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        while let Ok(Some(l)) = lines.next_line().await {
            events.info(iac_core::Stage::Build, l);
        }
        let status = child
            .wait()
            .await
            .map_err(|e| format!("waiting for the image recipe: {e}"))?;
        let err = err_task.await.unwrap_or_default();
        if status.success() {
            Ok(())
        } else {
            Err(format!(
                "the image recipe (scripts/bootstrap-images.sh --only-python --python {}) failed ({status}): {}",
                python.version,
                if err.trim().is_empty() {
                    "no error output"
                } else {
                    err.trim()
                }
            ))
        }
    }
}
