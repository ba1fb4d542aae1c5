//! Configuration: figment layers, lowest to highest precedence:
//! built-in defaults < `iac.toml` (or `--config FILE`) < environment (`.env` loaded by dotenvy
//! first, then `IAC_*` with `__` for nesting, plus the well-known `SUPABASE_*` and
//! `OTEL_EXPORTER_OTLP_ENDPOINT`) < CLI flags. `iac config show` prints the result, secrets redacted.
//!
//! The configuration is strict ([`strict`]): an unknown key or table, in the file or in an
//! `IAC_*` variable that looks like a key, is an error with a "did you mean"; a placeholder value
//! (`[redacted]`, `<your key>`) is an error naming the key. Every duration is a humantime string
//! (`"3s"`, `"5m"`), see [`iac_core::duration`].

pub mod history;
pub mod strict;

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use iac_backends::auth::supabase::SupabaseConfig;
use iac_backends::build::ImageConfig;
use iac_backends::fetch::FetchConfig;
use iac_backends::health::grpc::ProbeConfig;
use iac_backends::pki::PkiConfig;
use iac_backends::provision::docker::DockerProvisionerConfig;
use iac_backends::provision::swarm::SwarmConfig;
use iac_backends::provision::terraform::TerraformConfig;
use serde::{Deserialize, Serialize};

use crate::api::ServeConfig;

/// The Envoy release the sidecar template and the default sidecar images are made for (`iac
/// --version` prints it too: [`crate::cli::LONG_VERSION`], checked by a test).
pub const ENVOY_VERSION: &str = "1.40.0";
pub use history::HistorySection;

/// Which provisioner applies the stack.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ProvisionerKind {
    /// Containers and networks created through the Docker engine's API (the default).
    #[default]
    Docker,
    /// A Terraform JSON configuration (docker provider) applied with the `terraform` binary.
    Terraform,
    /// Docker Swarm services on the engine (a swarm manager).
    Swarm,
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
            image: format!("envoyproxy/envoy:v{}", ENVOY_VERSION),
            offline_image: format!("iac/envoy:{}", ENVOY_VERSION),
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
    /// Which provisioner creates the containers (`docker`, `terraform`, `swarm`).
    pub provisioner: ProvisionerKind,
    /// How long the prober keeps trying one service (also the Docker provisioner's gate deadline).
    #[serde(with = "iac_core::duration")]
    pub health_deadline: Duration,
    /// How long `iac health` (and the admin API's service listing) waits for one service's
    /// answer; every service is asked at once.
    #[serde(with = "iac_core::duration")]
    pub health_check_timeout: Duration,
    /// A new or replaced service without a declared port must have been running this long (its
    /// agent's uptime) and still be SERVING; only what is left of it is waited.
    #[serde(with = "iac_core::duration")]
    pub health_settle: Duration,
    /// The same for a service with a declared port (its SERVING means the port accepts);
    /// `"0s"`: the accept is the proof.
    #[serde(with = "iac_core::duration")]
    pub health_settle_listening: Duration,
    /// OTLP endpoint for apps (and iac's own traces); unset → apps export to stdout.
    pub otel_endpoint: Option<String>,
    /// The longest one deploy may take, fetch to health (`"30m"`); past it the deploy fails and
    /// releases the project lock (CLI and admin API alike).
    #[serde(with = "iac_core::duration")]
    pub deploy_deadline: std::time::Duration,
    /// The longest a service's release command (Procfile `release:`, …) may run (`"10m"`);
    /// past it the command is stopped and the service's deploy fails, its old pods kept.
    #[serde(with = "iac_core::duration")]
    pub release_timeout: Duration,
    /// `[images]`: base images and image naming.
    pub images: ImageConfig,
    /// `[sidecar]`: the Envoy sidecar.
    pub sidecar: SidecarSection,
    /// `[fetch]`: source fetching (cache, limits, credentials).
    pub fetch: FetchConfig,
    /// `[pki]`: the CA and certificate lifetimes.
    pub pki: PkiConfig,
    /// `[probe]`: health probing.
    pub probe: ProbeConfig,
    /// `[docker]`: the Docker provisioner.
    pub docker: DockerProvisionerConfig,
    /// `[terraform]`: the Terraform provisioner.
    pub terraform: TerraformConfig,
    /// `[swarm]`: the Swarm provisioner.
    pub swarm: SwarmConfig,
    /// `[supabase]`: the admin API's token verification.
    pub supabase: SupabaseConfig,
    /// `[serve]`: the admin API (`iac serve`).
    pub serve: ServeConfig,
    /// Deployment history: the store and its retention.
    pub history: HistorySection,
    /// The mesh: whether egress lists are enforced.
    pub mesh: MeshSection,
}

/// `[mesh]`: settings every pod's sidecar applies.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct MeshSection {
    /// `"closed"` (default): an app reaches only its `egress` list, through its sidecar;
    /// `"open"`: today's open behaviour for one more release (apps reach anything, lists are not
    /// enforced, every deploy warns).
    pub egress: iac_core::EgressMode,
}

impl Default for IacConfig {
    fn default() -> Self {
        IacConfig {
            project: None,
            state_dir: ".iac".into(),
            network: "iacnet".into(),
            parallelism: 4,
            provisioner: ProvisionerKind::Docker,
            health_deadline: Duration::from_secs(45),
            health_check_timeout: Duration::from_secs(2),
            health_settle: Duration::from_secs(3),
            health_settle_listening: Duration::ZERO,
            otel_endpoint: None,
            deploy_deadline: std::time::Duration::from_secs(30 * 60),
            release_timeout: Duration::from_secs(10 * 60),
            images: ImageConfig::default(),
            sidecar: SidecarSection::default(),
            fetch: FetchConfig::default(),
            pki: PkiConfig::default(),
            probe: ProbeConfig::default(),
            docker: DockerProvisionerConfig::default(),
            terraform: TerraformConfig::default(),
            swarm: SwarmConfig::default(),
            supabase: SupabaseConfig::default(),
            serve: ServeConfig::default(),
            history: HistorySection::default(),
            mesh: MeshSection::default(),
        }
    }
}

/// Values given on the command line (highest precedence).
#[derive(Debug, Clone, Default, Serialize)]
pub struct CliOverrides {
    /// `--project`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
    /// `--provisioner`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub provisioner: Option<ProvisionerKind>,
    /// `--parallelism` of `iac deploy`.
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
        let fig = Self::figment(file, cli)?;
        Self::check(&fig)?;
        let mut cfg: IacConfig = fig
            .extract()
            .map_err(|e| anyhow::anyhow!("invalid configuration: {e}"))?;
        let mut problems = Vec::new();
        for var in [
            "SUPABASE_URL",
            "SUPABASE_SERVICE_ROLE_KEY",
            "SUPABASE_JWT_SECRET",
        ] {
            if let Ok(v) = std::env::var(var)
                && strict::is_placeholder(&v)
            {
                problems.push(format!(
                    "{var} (environment) is the placeholder {v:?}, not a value: set the real value or leave it empty"
                ));
            }
        }
        problems.extend(cfg.timing_problems());
        if cfg.images.app_uid == iac_core::egress::ENVOY_EGRESS_GID {
            problems.push(format!(
                "[images] app_uid = {}: expected another uid; {} is the group Envoy runs as, the only one a pod's filter lets out (the app's group has its uid as gid)",
                cfg.images.app_uid,
                iac_core::egress::ENVOY_EGRESS_GID
            ));
        }
        problems.extend(cfg.history.problems());
        anyhow::ensure!(
            problems.is_empty(),
            "invalid configuration:\n  {}",
            problems.join("\n  ")
        );
        cfg.supabase.apply_env(|k| std::env::var(k).ok());
        cfg.absolutize_paths()?;
        if cfg.images.agent_binary.is_none() {
            cfg.images.agent_binary = default_agent_binary();
        }
        Ok(cfg)
    }

    /// Deadlines that cannot work together: a release command needs some time, and must end
    /// within the deploy it belongs to.
    pub fn timing_problems(&self) -> Vec<String> {
        let fmt = |d: Duration| humantime::format_duration(d).to_string();
        let mut problems = Vec::new();
        if self.release_timeout < Duration::from_secs(1) {
            problems.push(format!(
                "release_timeout = \"{}\": expected at least 1s (a release command needs time to run)",
                fmt(self.release_timeout)
            ));
        } else if self.release_timeout >= self.deploy_deadline {
            problems.push(format!(
                "release_timeout = \"{}\" is not shorter than deploy_deadline = \"{}\": expected a release timeout that leaves the deploy time to start the new pods",
                fmt(self.release_timeout),
                fmt(self.deploy_deadline)
            ));
        }
        problems
    }

    /// The strictness checks of [`strict`] on a merged figment: unknown keys and placeholder
    /// values, all reported together.
    pub fn check(fig: &Figment) -> anyhow::Result<()> {
        let mut problems = strict::unknown_keys(fig);
        problems.extend(strict::placeholder_values(fig));
        anyhow::ensure!(
            problems.is_empty(),
            "invalid configuration:\n  {}",
            problems.join("\n  ")
        );
        Ok(())
    }

    /// The layers, lowest first: defaults, `file` (or ./iac.toml), `IAC_*` and OTEL env, `cli`.
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
            .merge({
                let top = std::sync::Arc::new(strict::TopLevel::of_defaults());
                Env::prefixed("IAC_")
                    .filter(move |k| top.env_is_config(k.as_str()))
                    .split("__")
            })
            .merge(
                Env::raw()
                    .only(&["OTEL_EXPORTER_OTLP_ENDPOINT"])
                    .map(|_| "otel_endpoint".into()),
            )
            .merge(Serialized::defaults(cli));
        Ok(fig)
    }

    /// The effective configuration as TOML. Secrets are typed ([`iac_backends::secret::Secret`]:
    /// Supabase keys, the fetch tokens, every `[terraform.extra_env]` value, credentials
    /// in `pip_args` URLs) and print themselves redacted, always as `[redacted]`. Paths such as `secrets_dir`
    /// are not secrets and are shown. Pasting the output back is accepted unless it holds a
    /// redacted secret, which is refused by name.
    pub fn to_redacted_toml(&self) -> anyhow::Result<String> {
        let v = serde_json::to_value(self).context("serialize config")?;
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

/// The `iac-agent` copied into images when `[images] agent_binary` is unset: the one next to the
/// running `iac`, else the first on `PATH` (an installed pair need not sit in one directory).
pub fn default_agent_binary() -> Option<PathBuf> {
    let beside = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|d| d.join("iac-agent")));
    if let Some(p) = beside.filter(|p| p.is_file()) {
        return Some(p);
    }
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join("iac-agent"))
        .find(|p| p.is_file())
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
            assert!(
                shown.contains("service_role_key = \"[redacted]\""),
                "{shown}"
            );
            // A path is not a secret.
            assert!(shown.contains("secrets_dir = \"secrets\""), "{shown}");
            assert!(!format!("{c:?}").contains("sekrit"));
            Ok(())
        });
    }

    #[test]
    fn mesh_egress_is_closed_by_default_open_on_request_and_nothing_else() {
        Jail::expect_with(|jail| {
            let c: IacConfig = IacConfig::figment(None, &CliOverrides::default())
                .unwrap()
                .extract()?;
            assert_eq!(c.mesh.egress, iac_core::EgressMode::Closed);
            jail.create_file("iac.toml", "[mesh]\negress = \"open\"\n")?;
            let c: IacConfig = IacConfig::figment(None, &CliOverrides::default())
                .unwrap()
                .extract()?;
            assert_eq!(c.mesh.egress, iac_core::EgressMode::Open);
            jail.create_file("iac.toml", "[mesh]\negress = \"sometimes\"\n")?;
            let e = IacConfig::figment(None, &CliOverrides::default())
                .unwrap()
                .extract::<IacConfig>()
                .unwrap_err()
                .to_string();
            assert!(e.contains("sometimes"), "{e}");
            jail.create_file("iac.toml", "[images]\napp_uid = 1337\n")?;
            let e = IacConfig::load(None, &CliOverrides::default())
                .unwrap_err()
                .to_string();
            assert!(e.contains("app_uid = 1337"), "{e}");
            Ok(())
        });
    }

    #[test]
    fn the_swarm_registry_login_is_read_and_shown_redacted() {
        Jail::expect_with(|jail| {
            jail.create_file(
                "iac.toml",
                "[swarm]\nregistry = \"127.0.0.1:5000\"\nregistry_username = \"ci\"\n",
            )?;
            jail.set_env("IAC_SWARM__REGISTRY_PASSWORD", "regsekrit");
            let c: IacConfig = IacConfig::figment(None, &CliOverrides::default())
                .unwrap()
                .extract()?;
            c.swarm.validate().map_err(figment::Error::from)?;
            let auth = c.swarm.registry_auth().expect("a login");
            assert_eq!(auth.server, "127.0.0.1:5000");
            assert_eq!(auth.username, "ci");
            assert_eq!(auth.password.expose(), "regsekrit");
            let shown = c.to_redacted_toml().unwrap();
            assert!(!shown.contains("regsekrit"), "{shown}");
            assert!(
                shown.contains("registry_password = \"[redacted]\""),
                "{shown}"
            );
            assert!(shown.contains("registry_username = \"ci\""), "{shown}");
            assert!(!format!("{c:?}").contains("regsekrit"));
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

    #[test]
    fn release_timeout_defaults_to_ten_minutes_and_is_validated() {
        Jail::expect_with(|jail| {
            let c = IacConfig::load(None, &CliOverrides::default()).unwrap();
            assert_eq!(c.release_timeout, Duration::from_secs(600));
            jail.create_file("iac.toml", "release_timeout = \"90s\"\n")?;
            let c = IacConfig::load(None, &CliOverrides::default()).unwrap();
            assert_eq!(c.release_timeout, Duration::from_secs(90));
            jail.create_file("iac.toml", "release_timeout = \"0s\"\n")?;
            let e = IacConfig::load(None, &CliOverrides::default()).unwrap_err();
            assert!(
                e.to_string()
                    .contains("release_timeout = \"0s\": expected at least 1s"),
                "{e}"
            );
            jail.create_file(
                "iac.toml",
                "release_timeout = \"40m\"\ndeploy_deadline = \"30m\"\n",
            )?;
            let e = IacConfig::load(None, &CliOverrides::default()).unwrap_err();
            assert!(
                e.to_string()
                    .contains("not shorter than deploy_deadline = \"30m\""),
                "{e}"
            );
            Ok(())
        });
    }

    fn load_errors(jail: &mut Jail, toml: &str) -> String {
        jail.create_file("iac.toml", toml).unwrap();
        let fig = IacConfig::figment(None, &CliOverrides::default()).unwrap();
        IacConfig::check(&fig)
            .map(|()| String::new())
            .unwrap_or_else(|e| e.to_string())
    }

    #[test]
    fn fetch_guard_settings_are_validated_when_read() {
        Jail::expect_with(|jail| {
            jail.create_file(
                "iac.toml",
                "[fetch]\nrefuse_private = \"always\"\nallow_private_hosts = [\"git.internal:443\", \"10.0.0.0/8\"]\n",
            )?;
            let c = IacConfig::load(None, &CliOverrides::default()).unwrap();
            assert!(c.fetch.guarded());
            assert_eq!(c.fetch.allow_private_hosts.len(), 2);
            for (toml, names) in [
                (
                    "[fetch]\nallow_private_hosts = [\"10.0.0.0/8\", \"10.0.0.0/40\"]\n",
                    "\"10.0.0.0/40\": prefix \"40\" is not a number from 0 to 32",
                ),
                (
                    "[fetch]\nallow_private_hosts = [\"https://git.internal\"]\n",
                    "\"https://git.internal\": a URL, not a host",
                ),
                ("[fetch]\nrefuse_private = \"sometimes\"\n", "sometimes"),
                ("[fetch]\norigin = \"api\"\n", "`origin`"),
            ] {
                jail.create_file("iac.toml", toml)?;
                let e = format!(
                    "{:#}",
                    IacConfig::load(None, &CliOverrides::default()).unwrap_err()
                );
                assert!(e.contains(names), "{toml}: {e}");
            }
            Ok(())
        });
    }

    #[test]
    fn unknown_tables_and_keys_are_named_with_a_suggestion() {
        Jail::expect_with(|jail| {
            let e = load_errors(jail, "[provision.docker]\ndocker_host = \"unix:///x\"\n");
            assert!(e.contains("unknown table [provision]"), "{e}");
            assert!(e.contains("did you mean [docker]?"), "{e}");
            let e = load_errors(jail, "paralelism = 2\n[sidecar]\nimgae = \"x\"\n");
            assert!(
                e.contains("`paralelism`") && e.contains("did you mean `parallelism`"),
                "{e}"
            );
            assert!(e.contains("did you mean `image` in [sidecar]"), "{e}");
            let e = load_errors(jail, "docker_host = \"unix:///x\"\n");
            assert!(e.contains("`docker_host` in [docker]"), "{e}");
            // Every renamed key points at its new name, with the value converted.
            let e = load_errors(
                jail,
                "health_deadline_secs = 45\n[probe]\nrpc_timeout_ms = 250\n[pki]\nleaf_days = 30\n",
            );
            assert!(e.contains("use `health_deadline` = \"45s\""), "{e}");
            assert!(
                e.contains("use `rpc_timeout` in [probe] = \"250ms\""),
                "{e}"
            );
            assert!(e.contains("use `leaf_validity` in [pki] = \"30d\""), "{e}");
            // A struct added later is strict too: [serve] and nested [fetch.github].
            let e = load_errors(jail, "[fetch.github]\nhots = \"h\"\n");
            assert!(e.contains("did you mean `host` in [fetch.github]"), "{e}");
            // Free-form maps accept any key.
            let e = load_errors(
                jail,
                "[images.labels]\nanything = \"goes\"\n[terraform.extra_env]\nTF_LOG = \"info\"\n",
            );
            assert_eq!(e, "");
            Ok(())
        });
    }

    #[test]
    fn serve_project_grants_are_read_checked_and_named_when_wrong() {
        Jail::expect_with(|jail| {
            jail.create_file(
                "iac.toml",
                r#"
[serve]
project_claim = "app_metadata.projects"
auth_failure_limit = 5
auth_failure_window = "30s"
[serve.projects.demo]
read = ["ops@example.test"]
deploy = ["11111111-1111-4111-8111-111111111111"]
[serve.projects."*"]
read = ["audit@example.test"]
"#,
            )?;
            let fig = IacConfig::figment(None, &CliOverrides::default()).unwrap();
            IacConfig::check(&fig).map_err(|e| figment::Error::from(e.to_string()))?;
            let c: IacConfig = fig.extract()?;
            assert_eq!(c.serve.projects["demo"].read, vec!["ops@example.test"]);
            assert_eq!(c.serve.projects["*"].deploy, Vec::<String>::new());
            assert_eq!(c.serve.auth_failure_window, Duration::from_secs(30));
            crate::api::AccessPolicy::from_config(&c.serve)
                .map_err(|e| figment::Error::from(e.to_string()))?;
            // `iac config show` prints it back in a form that reads back the same.
            let shown = c.to_redacted_toml().unwrap();
            jail.create_file("iac.toml", &shown)?;
            let back: IacConfig = IacConfig::figment(None, &CliOverrides::default())
                .unwrap()
                .extract()?;
            assert_eq!(back.serve, c.serve, "{shown}");

            // A misspelt key inside a project table is named, with the right one.
            let e = load_errors(jail, "[serve.projects.demo]\ndeploi = [\"a@b.test\"]\n");
            assert!(
                e.contains("`deploi` in [serve.projects.demo]")
                    && e.contains("did you mean `deploy`"),
                "{e}"
            );
            // A bad entry, project name or claim is named with what was expected.
            jail.create_file(
                "iac.toml",
                r#"
[serve]
project_claim = "user_metadata.projects"
[serve.projects.Demo]
deploy = ["alice"]
[serve.projects.shop]
read = ["alice"]
"#,
            )?;
            let c: IacConfig = IacConfig::figment(None, &CliOverrides::default())
                .unwrap()
                .extract()?;
            let e = crate::api::AccessPolicy::from_config(&c.serve)
                .unwrap_err()
                .to_string();
            for want in [
                "[serve.projects.Demo]: \"Demo\" is not a project name",
                "[serve.projects.shop] read[0] = \"alice\" is neither a user id nor an email address",
                "[serve] project_claim = \"user_metadata.projects\"",
            ] {
                assert!(e.contains(want), "{want}: {e}");
            }
            // Not a list: the extraction names the key.
            jail.create_file("iac.toml", "[serve.projects.demo]\ndeploy = \"a@b.test\"\n")?;
            let e = IacConfig::figment(None, &CliOverrides::default())
                .unwrap()
                .extract::<IacConfig>()
                .unwrap_err()
                .to_string();
            assert!(e.contains("deploy"), "{e}");
            Ok(())
        });
    }

    #[test]
    fn durations_are_humantime_strings_everywhere() {
        Jail::expect_with(|jail| {
            jail.create_file(
                "iac.toml",
                "health_deadline = \"2m\"\nhealth_settle = \"500ms\"\nhealth_settle_listening = \"2s\"\n[docker]\nstop_timeout = \"3s\"\n[probe]\nrpc_timeout = \"1s\"\n[pki]\nleaf_validity = \"7d\"\n",
            )?;
            let c: IacConfig = IacConfig::figment(None, &CliOverrides::default())
                .unwrap()
                .extract()?;
            assert_eq!(c.health_deadline, Duration::from_secs(120));
            assert_eq!(c.health_settle, Duration::from_millis(500));
            assert_eq!(c.health_settle_listening, Duration::from_secs(2));
            assert_eq!(c.docker.stop_timeout, Duration::from_secs(3));
            assert_eq!(c.probe.rpc_timeout, Duration::from_secs(1));
            assert_eq!(c.pki.leaf_validity, Duration::from_secs(7 * 86_400));
            jail.create_file("iac.toml", "health_settle = 3\n")?;
            let e = IacConfig::figment(None, &CliOverrides::default())
                .unwrap()
                .extract::<IacConfig>()
                .unwrap_err()
                .to_string();
            assert!(e.contains("health_settle") && e.contains("\"3s\""), "{e}");
            Ok(())
        });
    }

    #[test]
    fn env_vars_that_look_like_keys_are_checked_and_others_left_alone() {
        Jail::expect_with(|jail| {
            jail.set_env("IAC_DOCKER__STOP_TIMEOUT", "4s");
            jail.set_env("IAC_PYTHON_IMAGE", "recipe/python:1"); // the bootstrap recipe's
            jail.set_env("IAC_REQUIRE_DOCKER", "1"); // a test switch
            let fig = IacConfig::figment(None, &CliOverrides::default()).unwrap();
            IacConfig::check(&fig).unwrap();
            let c: IacConfig = fig.extract()?;
            assert_eq!(c.docker.stop_timeout, Duration::from_secs(4));
            for (var, want) in [
                (
                    "IAC_DOCKER__STOP_TIMEOUT_SECS",
                    "IAC_DOCKER__STOP_TIMEOUT=4s",
                ),
                ("IAC_SECRETS_DIR", "IAC_PKI__SECRETS_DIR"),
                ("IAC_DOCKER_DOCKER_HOST", "IAC_DOCKER__DOCKER_HOST"),
                ("IAC_PARALELISM", "IAC_PARALLELISM"),
                ("IAC_FETCH__NOPE", "IAC_FETCH__NOPE"),
            ] {
                jail.set_env(var, "4");
                let fig = IacConfig::figment(None, &CliOverrides::default()).unwrap();
                let e = IacConfig::check(&fig).unwrap_err().to_string();
                assert!(e.contains(var) && e.contains(want), "{var}: {e}");
                unsafe { std::env::remove_var(var) };
            }
            Ok(())
        });
    }

    #[test]
    fn iac_version_names_the_envoy_release_the_defaults_use() {
        let line = format!("envoy: {ENVOY_VERSION} (");
        assert!(
            crate::cli::LONG_VERSION.contains(&line),
            "{}",
            crate::cli::LONG_VERSION
        );
        let d = IacConfig::default();
        assert!(d.sidecar.offline_image.ends_with(ENVOY_VERSION));
        assert!(d.sidecar.image.ends_with(ENVOY_VERSION));
    }

    #[test]
    fn placeholders_are_never_values() {
        for p in [
            "[redacted]",
            "<redacted>",
            "***redacted***",
            "https://***@pypi.example/simple",
            "<your service-role key>",
            "sb_secret_…",
        ] {
            assert!(strict::is_placeholder(p), "{p}");
        }
        for v in ["sb_secret_abc", "https://u:p@h/simple", "a<b>c", "<>"] {
            assert!(!strict::is_placeholder(v), "{v}");
        }
        Jail::expect_with(|jail| {
            let e = load_errors(jail, "[supabase]\nservice_role_key = \"<redacted>\"\n");
            assert!(e.contains("`service_role_key` in [supabase]"), "{e}");
            assert!(e.contains("placeholder"), "{e}");
            jail.set_env("IAC_FETCH__GITHUB__TOKEN", "***redacted***");
            let e = load_errors(jail, "");
            assert!(e.contains("IAC_FETCH__GITHUB__TOKEN"), "{e}");
            Ok(())
        });
    }

    #[test]
    fn config_show_output_reads_back_unchanged() {
        Jail::expect_with(|jail| {
            jail.create_file(
                "iac.toml",
                "parallelism = 3\n[pki]\nleaf_validity = \"30d\"\n",
            )?;
            let c: IacConfig = IacConfig::figment(None, &CliOverrides::default())
                .unwrap()
                .extract()?;
            let shown = c.to_redacted_toml().unwrap();
            jail.create_file("iac.toml", &shown)?;
            let fig = IacConfig::figment(None, &CliOverrides::default()).unwrap();
            IacConfig::check(&fig).map_err(|e| figment::Error::from(e.to_string()))?;
            let back: IacConfig = fig.extract()?;
            assert_eq!(back, c, "{shown}");
            Ok(())
        });
    }
}
