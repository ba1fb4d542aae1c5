//! Configuration: figment layers, lowest to highest precedence:
//! built-in defaults < `iac.toml` (or `--config FILE`) < environment (`.env` loaded by dotenvy
//! first, then `IAC_*` with `__` for nesting, plus the well-known `SUPABASE_*` and
//! `OTEL_EXPORTER_OTLP_ENDPOINT`) < CLI flags. `iac config show` prints the result, secrets redacted.

use std::path::{Path, PathBuf};

use anyhow::Context;
use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

/// Which provisioner applies the stack.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ProvisionerKind {
    #[default]
    Docker,
    Terraform,
}

/// Images iac needs, with the offline equivalents `make bootstrap` builds on a no-pull engine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ImagesConfig {
    pub base_image: String,
    pub offline_base_image: String,
    pub envoy_image: String,
    pub offline_envoy_image: String,
    /// Static `iac-agent` binary copied into every image; default: next to the `iac` executable,
    /// else the workspace's static build output.
    pub agent_binary: Option<PathBuf>,
    /// Wheels for offline installs (OTel SDK); default `$XDG_CACHE_HOME/iac/wheelhouse`.
    pub wheelhouse: Option<PathBuf>,
}

impl Default for ImagesConfig {
    fn default() -> Self {
        ImagesConfig {
            base_image: "python:3.11-slim".into(),
            offline_base_image: "iac/python:3.11-bookworm".into(),
            envoy_image: "envoyproxy/envoy:v1.40.0".into(),
            offline_envoy_image: "iac/envoy:1.40.0".into(),
            agent_binary: None,
            wheelhouse: None,
        }
    }
}

/// `iac serve` listeners.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ServeSection {
    pub http: String,
    /// Unix socket path; default `/run/iac_wrapper.sock` as root, else `$XDG_RUNTIME_DIR/iac_wrapper.sock`.
    pub uds: Option<PathBuf>,
}

impl Default for ServeSection {
    fn default() -> Self {
        ServeSection { http: "127.0.0.1:8080".into(), uds: None }
    }
}

/// Supabase settings (secrets are redacted when printed).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct SupabaseSection {
    pub url: Option<String>,
    pub service_role_key: Option<String>,
    pub jwt_secret: Option<String>,
    /// Confirm tokens with Supabase (`/auth/v1/user`); default on whenever `url` is set.
    pub confirm: Option<bool>,
    pub allowed_roles: Option<Vec<String>>,
    pub allowed_user_ids: Option<Vec<String>>,
}

impl std::fmt::Debug for SupabaseSection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SupabaseSection")
            .field("url", &self.url)
            .field("service_role_key", &self.service_role_key.as_ref().map(|_| "<redacted>"))
            .field("jwt_secret", &self.jwt_secret.as_ref().map(|_| "<redacted>"))
            .field("confirm", &self.confirm)
            .field("allowed_roles", &self.allowed_roles)
            .field("allowed_user_ids", &self.allowed_user_ids)
            .finish()
    }
}

/// The effective configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct IacConfig {
    /// Project name; default: the repos file's `project`, else the current directory's name.
    pub project: Option<String>,
    /// Where iac keeps state (`<state_dir>/projects/<project>`, `<state_dir>/cache`).
    pub state_dir: PathBuf,
    /// Dev CA and leaf certificates.
    pub secrets_dir: PathBuf,
    /// Network name prefix: each project gets its own network `<network>-<project>`.
    pub network: String,
    /// Services prepared (fetched, resolved, built) at once.
    pub parallelism: usize,
    pub provisioner: ProvisionerKind,
    /// How long the prober keeps trying one service.
    pub health_deadline_secs: u64,
    /// OTLP endpoint for apps (and iac's own traces); unset → apps export to stdout.
    pub otel_endpoint: Option<String>,
    pub images: ImagesConfig,
    pub serve: ServeSection,
    pub supabase: SupabaseSection,
    /// Backend sections are passed through to the backends as they are.
    pub fetch: serde_json::Value,
    pub pki: serde_json::Value,
    pub docker: serde_json::Value,
    pub terraform: serde_json::Value,
}

impl Default for IacConfig {
    fn default() -> Self {
        IacConfig {
            project: None,
            state_dir: ".iac".into(),
            secrets_dir: "secrets".into(),
            network: "iacnet".into(),
            parallelism: 4,
            provisioner: ProvisionerKind::Docker,
            health_deadline_secs: 45,
            otel_endpoint: None,
            images: ImagesConfig::default(),
            serve: ServeSection::default(),
            supabase: SupabaseSection::default(),
            fetch: serde_json::Value::Object(Default::default()),
            pki: serde_json::Value::Object(Default::default()),
            docker: serde_json::Value::Object(Default::default()),
            terraform: serde_json::Value::Object(Default::default()),
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
        Self::figment(file, cli)?.extract().map_err(|e| anyhow::anyhow!("invalid configuration: {e}"))
    }

    pub fn figment(file: Option<&Path>, cli: &CliOverrides) -> anyhow::Result<Figment> {
        let mut fig = Figment::from(Serialized::defaults(IacConfig::default()));
        match file {
            Some(f) => {
                anyhow::ensure!(f.exists(), "config file {} does not exist", f.display());
                fig = fig.merge(Toml::file_exact(f));
            }
            None => fig = fig.merge(Toml::file_exact("iac.toml")),
        }
        let fig = fig
            .merge(Env::prefixed("IAC_").split("__"))
            .merge(Env::raw().only(&["SUPABASE_URL", "SUPABASE_SERVICE_ROLE_KEY", "SUPABASE_JWT_SECRET"]).map(|k| {
                let k = k.as_str().to_ascii_lowercase();
                format!("supabase.{}", k.trim_start_matches("supabase_")).into()
            }).split("."))
            .merge(Env::raw().only(&["OTEL_EXPORTER_OTLP_ENDPOINT"]).map(|_| "otel_endpoint".into()))
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

    /// `<state_dir>/projects/<project>`.
    pub fn project_dir(&self, project: &iac_core::ProjectName) -> PathBuf {
        self.state_dir.join("projects").join(project.as_str())
    }

    /// The project's own network.
    pub fn network_name(&self, project: &iac_core::ProjectName) -> String {
        format!("{}-{project}", self.network)
    }
}

const SECRET_KEYS: &[&str] = &["service_role_key", "jwt_secret", "token", "password", "secret", "api_key"];

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
            map.into_iter().filter(|(_, v)| !v.is_null()).map(|(k, v)| (k, strip_nulls(v))).collect(),
        ),
        serde_json::Value::Array(items) => serde_json::Value::Array(items.into_iter().map(strip_nulls).collect()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use figment::Jail;

    #[test]
    fn layers_in_order() {
        Jail::expect_with(|jail| {
            jail.create_file("iac.toml", "parallelism = 2\nnetwork = \"fromfile\"\n[images]\nbase_image = \"py:file\"\n")?;
            jail.set_env("IAC_NETWORK", "fromenv");
            jail.set_env("IAC_IMAGES__ENVOY_IMAGE", "envoy:env");
            jail.set_env("SUPABASE_URL", "http://127.0.0.1:9");
            jail.set_env("SUPABASE_SERVICE_ROLE_KEY", "sekrit");
            let cli = CliOverrides { parallelism: Some(7), ..Default::default() };
            let c: IacConfig = IacConfig::figment(None, &cli).unwrap().extract()?;
            assert_eq!(c.parallelism, 7, "CLI beats file");
            assert_eq!(c.network, "fromenv", "env beats file");
            assert_eq!(c.images.base_image, "py:file", "file beats defaults");
            assert_eq!(c.images.envoy_image, "envoy:env");
            assert_eq!(c.supabase.url.as_deref(), Some("http://127.0.0.1:9"));
            let shown = c.to_redacted_toml().unwrap();
            assert!(!shown.contains("sekrit"), "{shown}");
            assert!(shown.contains("<redacted>"));
            assert!(!format!("{c:?}").contains("sekrit"));
            Ok(())
        });
    }

    #[test]
    fn missing_explicit_file_is_an_error_and_bad_values_are_named() {
        let e = IacConfig::figment(Some(Path::new("/nonexistent/iac.toml")), &CliOverrides::default()).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/iac.toml"));
        Jail::expect_with(|jail| {
            jail.create_file("iac.toml", "parallelism = \"many\"\n")?;
            let e = IacConfig::figment(None, &CliOverrides::default()).unwrap().extract::<IacConfig>().unwrap_err();
            assert!(e.to_string().contains("parallelism"), "{e}");
            Ok(())
        });
    }
}
