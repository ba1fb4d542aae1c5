//! Configuration: figment layers, lowest to highest precedence:
//! built-in defaults < `iac.toml` (or `--config FILE`) < environment (`.env` loaded by dotenvy
//! first, then `IAC_*` with `__` for nesting, plus the well-known `SUPABASE_*` and
//! `OTEL_EXPORTER_OTLP_ENDPOINT`) < CLI flags. `iac config show` prints the result, secrets redacted.

use std::path::{Path, PathBuf};

use anyhow::Context;
use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use iac_backends::auth::supabase::SupabaseConfig;
use iac_backends::build::ImageConfig;
use iac_backends::fetch::FetchConfig;
use iac_backends::health::grpc::ProbeConfig;
use iac_backends::pki::PkiConfig;
use iac_backends::provision::docker::DockerProvisionerConfig;
use iac_backends::provision::terraform::TerraformConfig;
use serde::{Deserialize, Serialize};

use crate::api::ServeConfig;

/// Which provisioner applies the stack.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ProvisionerKind {
    #[default]
    Docker,
    Terraform,
}

/// The sidecar: which Envoy image runs next to every app, and an optional template override.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct SidecarSection {
    /// Used when the engine has it (or can pull it).
    pub image: String,
    /// Used instead when `image` is absent; `make bootstrap` builds it on engines that cannot pull.
    pub offline_image: String,
    /// A directory holding an `envoy.yaml.tmpl` that replaces the built-in template.
    pub template_dir: Option<PathBuf>,
}

impl Default for SidecarSection {
    fn default() -> Self {
        SidecarSection {
            image: "envoyproxy/envoy:v1.40.0".into(),
            offline_image: "iac/envoy:1.40.0".into(),
            template_dir: None,
        }
    }
}

/// The effective configuration. Sections map one to one onto backend config structs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct IacConfig {
    /// Project name; default: the repos file's `project`, else the current directory's name.
    pub project: Option<String>,
    /// Where iac keeps per-project state (`<state_dir>/projects/<project>`).
    pub state_dir: PathBuf,
    /// Network name prefix: each project gets its own network `<network>-<project>`.
    pub network: String,
    /// Services prepared (fetched, resolved, built) at once.
    pub parallelism: usize,
    pub provisioner: ProvisionerKind,
    /// How long the prober keeps trying one service (also the Docker provisioner's gate deadline).
    pub health_deadline_secs: u64,
    /// A new or replaced service must still be SERVING this many seconds after its first SERVING.
    pub health_settle_secs: u64,
    /// OTLP endpoint for apps (and iac's own traces); unset → apps export to stdout.
    pub otel_endpoint: Option<String>,
    /// The longest one deploy may take, fetch to health (`"30m"`); past it the deploy fails and
    /// releases the project lock (CLI and admin API alike).
    #[serde(with = "crate::api::duration_str")]
    pub deploy_deadline: std::time::Duration,
    pub images: ImageConfig,
    pub sidecar: SidecarSection,
    pub fetch: FetchConfig,
    pub pki: PkiConfig,
    pub probe: ProbeConfig,
    pub docker: DockerProvisionerConfig,
    pub terraform: TerraformConfig,
    pub supabase: SupabaseConfig,
    pub serve: ServeConfig,
}

impl Default for IacConfig {
    fn default() -> Self {
        IacConfig {
            project: None,
            state_dir: ".iac".into(),
            network: "iacnet".into(),
            parallelism: 4,
            provisioner: ProvisionerKind::Docker,
            health_deadline_secs: 45,
            health_settle_secs: 3,
            otel_endpoint: None,
            deploy_deadline: std::time::Duration::from_secs(30 * 60),
            images: ImageConfig::default(),
            sidecar: SidecarSection::default(),
            fetch: FetchConfig::default(),
            pki: PkiConfig::default(),
            probe: ProbeConfig::default(),
            docker: DockerProvisionerConfig::default(),
            terraform: TerraformConfig::default(),
            supabase: SupabaseConfig::default(),
            serve: ServeConfig::default(),
        }
    }
}

/// Values given on the command line (highest precedence).
#[derive(Debug, Clone, Default, Serialize)]
pub struct CliOverrides {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub provisioner: Option<ProvisionerKind>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parallelism: Option<usize>,
}

impl IacConfig {
    /// Loads the layers. `file` is `--config`; when absent `iac.toml` in the current directory
    /// is used if it exists. A missing explicit file is an error.
    pub fn load(file: Option<&Path>, cli: &CliOverrides) -> anyhow::Result<Self> {
        // .env first, so its values count as environment (never overriding real env vars).
        match dotenvy::dotenv() {
            Ok(_) => {}
            Err(e) if e.not_found() => {}
            Err(e) => return Err(anyhow::anyhow!(".env: {e}")),
        }
        let mut cfg: IacConfig = Self::figment(file, cli)?
            .extract()
            .map_err(|e| anyhow::anyhow!("invalid configuration: {e}"))?;
        cfg.supabase.apply_env(|k| std::env::var(k).ok());
        cfg.absolutize_paths()?;
        Ok(cfg)
    }

    pub fn figment(file: Option<&Path>, cli: &CliOverrides) -> anyhow::Result<Figment> {
        let mut fig = Figment::from(Serialized::defaults(IacConfig::default()));
        match file {
            Some(f) => {
                anyhow::ensure!(f.exists(), "config file {} does not exist", f.display());
                fig = fig.merge(Toml::file_exact(f));
            }
            None if Path::new("iac.toml").exists() => fig = fig.merge(Toml::file_exact("iac.toml")),
            None => {}
        }
        let fig = fig
            .merge(Env::prefixed("IAC_").split("__"))
            .merge(
                Env::raw()
                    .only(&["OTEL_EXPORTER_OTLP_ENDPOINT"])
                    .map(|_| "otel_endpoint".into()),
            )
            .merge(Serialized::defaults(cli));
        Ok(fig)
    }

    /// The effective configuration as TOML with every secret replaced by `<redacted>`.
    pub fn to_redacted_toml(&self) -> anyhow::Result<String> {
        let mut v = serde_json::to_value(self).context("serialize config")?;
        redact(&mut v);
        let v = strip_nulls(v);
        toml::to_string_pretty(&v).context("render config as TOML")
    }

    /// Relative paths are relative to the current directory; the engine (bind mounts) and child
    /// processes (terraform) need absolute ones.
    pub fn absolutize_paths(&mut self) -> anyhow::Result<()> {
        let cwd = std::env::current_dir().context("current directory")?;
        for p in [
            &mut self.state_dir,
            &mut self.pki.secrets_dir,
            &mut self.fetch.cache_dir,
            &mut self.terraform.work_root,
        ] {
            if p.is_relative() {
                *p = cwd.join(&*p);
            }
        }
        Ok(())
    }

    /// `<state_dir>/projects/<project>`.
    pub fn project_dir(&self, project: &iac_core::ProjectName) -> PathBuf {
        self.state_dir.join("projects").join(project.as_str())
    }

    /// The project's own network.
    pub fn network_name(&self, project: &iac_core::ProjectName) -> String {
        format!("{}-{project}", self.network)
    }
}

const SECRET_KEYS: &[&str] = &[
    "service_role_key",
    "jwt_secret",
    "token",
    "password",
    "secret",
    "api_key",
];

fn redact(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Object(map) => {
            for (k, val) in map.iter_mut() {
                let lk = k.to_ascii_lowercase();
                if SECRET_KEYS.iter().any(|s| lk.contains(s)) && !val.is_null() {
                    *val = serde_json::Value::String("<redacted>".into());
                } else {
                    redact(val);
                }
            }
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(redact),
        _ => {}
    }
}

fn strip_nulls(v: serde_json::Value) -> serde_json::Value {
    match v {
        serde_json::Value::Object(map) => serde_json::Value::Object(
            map.into_iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k, strip_nulls(v)))
                .collect(),
        ),
        serde_json::Value::Array(items) => {
            serde_json::Value::Array(items.into_iter().map(strip_nulls).collect())
        }
        other => other,
    }
}

#[cfg(test)]
#[allow(clippy::result_large_err)] // figment::Jail's closures return figment::Error
mod tests {
    use super::*;
    use figment::Jail;

    #[test]
    fn layers_in_order() {
        Jail::expect_with(|jail| {
            jail.create_file(
                "iac.toml",
                "parallelism = 2\nnetwork = \"fromfile\"\n[images]\nbase_image = \"py:file\"\n",
            )?;
            jail.set_env("IAC_NETWORK", "fromenv");
            jail.set_env("IAC_SIDECAR__IMAGE", "envoy:env");
            jail.set_env("SUPABASE_URL", "http://127.0.0.1:9");
            jail.set_env("SUPABASE_SERVICE_ROLE_KEY", "sekrit");
            let cli = CliOverrides {
                parallelism: Some(7),
                ..Default::default()
            };
            let mut c: IacConfig = IacConfig::figment(None, &cli).unwrap().extract()?;
            c.supabase.apply_env(|k| std::env::var(k).ok());
            assert_eq!(c.parallelism, 7, "CLI beats file");
            assert_eq!(c.network, "fromenv", "env beats file");
            assert_eq!(c.images.base_image, "py:file", "file beats defaults");
            assert_eq!(c.sidecar.image, "envoy:env");
            assert_eq!(c.supabase.url.as_deref(), Some("http://127.0.0.1:9"));
            let shown = c.to_redacted_toml().unwrap();
            assert!(!shown.contains("sekrit"), "{shown}");
            assert!(shown.contains("<redacted>"));
            assert!(!format!("{c:?}").contains("sekrit"));
            Ok(())
        });
    }

    #[test]
    fn the_starter_config_in_templates_is_valid() {
        let starter = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../templates/iac.toml");
        let c: IacConfig = IacConfig::figment(Some(&starter), &CliOverrides::default())
            .unwrap()
            .extract()
            .expect("templates/iac.toml parses into IacConfig");
        assert_eq!(c.network, "iacnet");
        assert_eq!(c.images.offline_base_image, "iac/python:3.11-bookworm");
    }

    #[test]
    fn missing_explicit_file_is_an_error_and_bad_values_are_named() {
        let e = IacConfig::figment(
            Some(Path::new("/nonexistent/iac.toml")),
            &CliOverrides::default(),
        )
        .unwrap_err();
        assert!(e.to_string().contains("/nonexistent/iac.toml"));
        Jail::expect_with(|jail| {
            jail.create_file("iac.toml", "parallelism = \"many\"\n")?;
            let e = IacConfig::figment(None, &CliOverrides::default())
                .unwrap()
                .extract::<IacConfig>()
                .unwrap_err();
            assert!(e.to_string().contains("parallelism"), "{e}");
            Ok(())
        });
    }
}
