//! `[terraform]` in `iac.toml`: [`TerraformConfig`], whose `Debug`/`Serialize` redact secret-looking
//! environment values.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::secret::Secret;

use super::*;

/// `[terraform]` in `iac.toml`.
#[derive(Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default)]
pub struct TerraformConfig {
    /// Executable to run: `terraform`, `tofu`, or a path.
    pub binary: String,
    /// Per-project work directories live in `<work_root>/<project>/terraform/`.
    pub work_root: PathBuf,
    /// A directory with the module's `*.tf` files (a tweaked copy of `infra/`); `None` → the copy
    /// embedded in iac.
    pub module_source: Option<PathBuf>,
    /// Docker engine for the provider (`var.docker_host`).
    pub docker_host: String,
    /// `init -plugin-dir=…`: a local provider directory, for machines without registry access.
    pub plugin_dir: Option<PathBuf>,
    /// Extra environment for every Terraform run (e.g. `TF_CLI_CONFIG_FILE`,
    /// `TF_PLUGIN_CACHE_DIR`, `TF_TOKEN_…`). Every value is a [`Secret`]: printed as
    /// `[redacted]`, whatever its key is called (no guessing from names).
    pub extra_env: BTreeMap<String, Secret>,
    /// How many trailing stderr lines a failure message carries.
    pub error_tail_lines: usize,
    /// Memory limits of the containers (`[terraform.limits]` in iac.toml, MiB, 0 = none). The
    /// `*_pids` keys must stay 0: the kreuzwerker/docker provider cannot set a pids limit.
    pub limits: ContainerLimits,
}

impl Default for TerraformConfig {
    fn default() -> Self {
        TerraformConfig {
            binary: "terraform".into(),
            work_root: PathBuf::from(".iac/projects"),
            module_source: None,
            docker_host: DEFAULT_DOCKER_HOST.into(),
            plugin_dir: None,
            extra_env: BTreeMap::new(),
            error_tail_lines: 12,
            limits: ContainerLimits {
                app_pids: 0,
                sidecar_pids: 0,
                ..ContainerLimits::default()
            },
        }
    }
}

impl std::fmt::Debug for TerraformConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TerraformConfig")
            .field("binary", &self.binary)
            .field("work_root", &self.work_root)
            .field("module_source", &self.module_source)
            .field("docker_host", &self.docker_host)
            .field("plugin_dir", &self.plugin_dir)
            .field("extra_env", &self.extra_env)
            .field("error_tail_lines", &self.error_tail_lines)
            .field("limits", &self.limits)
            .finish()
    }
}
