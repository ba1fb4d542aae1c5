//! The command line (clap derive): every subcommand and flag of `iac`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::config::ProvisionerKind;

/// `iac --version`: iac's version, and the agent and Envoy versions it expects.
pub const LONG_VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    "\nagent: iac-agent ",
    env!("CARGO_PKG_VERSION"),
    " (copied into every app image: [images] agent_binary, else iac-agent next to iac, else on PATH)",
    "\nenvoy: 1.40.0 (sidecar image [sidecar] image = envoyproxy/envoy:v1.40.0, offline iac/envoy:1.40.0)",
);

/// The `iac` command line: global options, then one command.
#[derive(Debug, Parser)]
#[command(name = "iac", version, long_version = LONG_VERSION, about = "Repo slugs in, mTLS-meshed containers out.", long_about = None)]
pub struct Cli {
    /// Configuration file (default: ./iac.toml when it exists).
    #[arg(long, global = true, env = "IAC_CONFIG")]
    pub config: Option<PathBuf>,
    /// Project name (default: config, then the repos file's `project`, then the directory name).
    #[arg(long, short = 'p', global = true)]
    pub project: Option<String>,
    /// Machine-readable output: NDJSON events and a JSON result.
    #[arg(long, global = true)]
    pub json: bool,
    /// Override the configured provisioner.
    #[arg(long, global = true, value_enum)]
    pub provisioner: Option<ProvisionerKind>,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The `--file`/`-f` option of the commands that read a repos file.
#[derive(Debug, Args, Clone)]
pub struct FileArg {
    /// Repos file (YAML or JSON): a list of slugs or {slug, name, entrypoint, env} maps.
    #[arg(long, short = 'f', default_value = "repos.yaml")]
    pub file: PathBuf,
}

/// The commands of `iac`; each doc line is its `iac --help` summary.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Fetch, resolve, build, provision and health-check every service in the repos file.
    Deploy {
        /// The repos file to deploy.
        #[command(flatten)]
        file: FileArg,
        /// Services prepared at once.
        #[arg(long)]
        parallel: Option<usize>,
        /// Deploy the file's services as copies in this sandbox, beside the baseline (overrides
        /// the file's `sandbox:`); see the README's Sandboxes section.
        #[arg(long, value_name = "NAME", value_parser = parse_sandbox)]
        sandbox: Option<iac_core::SandboxName>,
        /// With `--sandbox`: remove the sandbox at the first deploy or `iac gc` after this long
        /// (overrides the file's `ttl:`).
        #[arg(long, value_name = "DURATION", value_parser = parse_duration, requires = "sandbox")]
        ttl: Option<std::time::Duration>,
    },
    /// Show what a deploy would create, replace, keep or remove (builds nothing).
    Plan {
        /// The repos file to plan.
        #[command(flatten)]
        file: FileArg,
        /// Plan the file's services as copies in this sandbox.
        #[arg(long, value_name = "NAME", value_parser = parse_sandbox)]
        sandbox: Option<iac_core::SandboxName>,
    },
    /// Remove every container and network of the project (with `--sandbox`: that sandbox only).
    Destroy {
        /// Take the project name from this repos file.
        #[arg(long, short = 'f')]
        file: Option<PathBuf>,
        /// Remove only this sandbox's copies; the baseline is not touched.
        #[arg(long, value_name = "NAME", value_parser = parse_sandbox)]
        sandbox: Option<iac_core::SandboxName>,
    },
    /// Remove the sandboxes whose ttl has passed.
    Gc {
        /// Take the project name from this repos file.
        #[arg(long, short = 'f')]
        file: Option<PathBuf>,
    },
    /// Health-check every running service through its Envoy over mTLS (all at once).
    Health {
        /// Take the project name from this repos file.
        #[arg(long, short = 'f')]
        file: Option<PathBuf>,
        /// Only this sandbox's copies.
        #[arg(long, value_name = "NAME", value_parser = parse_sandbox)]
        sandbox: Option<iac_core::SandboxName>,
        /// How long to wait for each service's answer (default: `health_check_timeout`, 2s).
        #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
        timeout: Option<std::time::Duration>,
        /// Keep asking until every service is SERVING or this much time has passed (e.g. 60s);
        /// prints the last answer either way.
        #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
        wait: Option<std::time::Duration>,
    },
    /// Stream service logs from the agents (all services, prefixed, when none is named).
    Logs {
        /// Take the project name from this repos file.
        #[arg(long, short = 'f')]
        file: Option<PathBuf>,
        /// The service to show (all of the project's when omitted).
        #[arg(long, short = 's')]
        service: Option<String>,
        /// Keep streaming new lines until interrupted.
        #[arg(long, short = 'F')]
        follow: bool,
        /// Lines of history first (0 = all buffered).
        #[arg(long, default_value_t = 100)]
        tail: u32,
        /// Print the apps' lines byte for byte. By default control characters other than tab
        /// (terminal escape sequences) and bidi controls are shown escaped (`\u{1b}`), since an
        /// app's output is repo-controlled text.
        #[arg(long)]
        raw: bool,
    },
    /// Fetch one slug (or read a local directory) and print how its main() would be run.
    Inspect {
        /// A slug (gh:owner/repo#ref, git+file:///…, path:DIR) or a directory.
        target: String,
        /// Extras to show in the install plan, as the repos file's `extras:` would ask (comma-separated).
        #[arg(long, value_delimiter = ',')]
        extras: Vec<String>,
        /// Dependency groups to show in the install plan, as the repos file's `groups:` would ask.
        #[arg(long, value_delimiter = ',')]
        groups: Vec<String>,
    },
    /// List a repository's branches and tags and the branch its HEAD points at (no objects are
    /// fetched).
    Refs {
        /// A slug (gh:owner/repo, git+https://…, git+file:///…, path:DIR); a `#REF` is ignored.
        slug: String,
    },
    /// Write, per service, the resolved entry, the Envoy config and the certs it would use.
    Render {
        /// The repos file to render.
        #[command(flatten)]
        file: FileArg,
        /// Directory to write into (created if missing).
        #[arg(long, short = 'o')]
        out: PathBuf,
        /// `files`: per service entry.json, envoy.yaml and certs (what a deploy hands the
        /// provisioner); `kubernetes`: manifests for `kubectl apply -f OUT/kubernetes/<project>`;
        /// `compose`: a Compose project in `OUT/compose/<project>` (compose.yaml plus the certs
        /// and envoy configs it mounts) for `docker-compose -p <project> up -d` — the eject path.
        #[arg(long, value_enum, default_value_t = RenderTarget::Files)]
        target: RenderTarget,
    },
    /// Manage the development CA.
    Ca {
        /// What to do with the CA.
        #[command(subcommand)]
        action: CaAction,
    },
    /// Configuration.
    Config {
        /// What to do with the configuration.
        #[command(subcommand)]
        action: ConfigAction,
    },
    /// Make sure every image the config needs exists: present → kept, official image present or
    /// pullable → used, else the offline equivalent is built (Debian rootfs + docker import; the
    /// recipe is built into iac). Also the OpenTelemetry wheelhouse; reports the iac-agent in use.
    Bootstrap {
        /// Only report what is present and what would be built; change nothing.
        #[arg(long)]
        check: bool,
        /// Never try `docker pull`.
        #[arg(long)]
        no_pull: bool,
        /// Rebuild the offline images and the wheelhouse even when present.
        #[arg(long, conflicts_with = "check")]
        rebuild: bool,
        /// Also the base image and wheelhouse of this Python minor (3.13: Debian trixie, 3.14:
        /// Debian unstable; repeatable). Without it they are built when a deploy first needs them.
        #[arg(long = "python", value_name = "X.Y")]
        pythons: Vec<String>,
        /// Also the Swarm node image (`iac/swarm-node:bookworm`: Debian's Docker engine and
        /// registry), what the multi-node tests run as worker nodes.
        #[arg(long)]
        swarm_node: bool,
    },
    /// Run the admin API (HTTP on TCP and a Unix socket, plus gRPC ControlPlane).
    Serve {
        /// TCP listen address.
        #[arg(long)]
        http: Option<String>,
        /// Unix socket path.
        #[arg(long)]
        uds: Option<PathBuf>,
    },
    /// Past deploys and destroys (CLI and API), newest first; `--project` filters.
    History {
        /// `show ID`; without it, the most recent deploys and destroys are listed.
        #[command(subcommand)]
        action: Option<HistoryAction>,
        /// How many to list (1 to 500).
        #[arg(long, short = 'n', default_value_t = 20)]
        limit: usize,
    },
    /// Print shell completions.
    Completions {
        /// The shell to print completions for.
        shell: clap_complete::Shell,
    },
}

/// The subcommands of `iac history`.
#[derive(Debug, Subcommand)]
pub enum HistoryAction {
    /// Everything recorded about one deploy or destroy: outcome per service with stage
    /// timings, events, saved log tails of replaced or destroyed pods, the repos file.
    Show {
        /// The id `iac history` lists (and `iac deploy` prints).
        id: String,
    },
}

/// What `iac render` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RenderTarget {
    /// Per service entry.json, envoy.yaml and certs.
    Files,
    /// Kubernetes manifests for `kubectl apply -f`.
    Kubernetes,
    /// A Compose project (compose.yaml + configs and certs) for `docker-compose up -d`: the eject path.
    Compose,
}

/// The subcommands of `iac ca`.
#[derive(Debug, Subcommand)]
pub enum CaAction {
    /// Create the CA if there is none (never overwrites).
    Init,
    /// Print the CA's subject, fingerprint and expiry.
    Show,
    /// Replace the CA (the old one is kept as ca.pem.prev); leaves are reissued on next deploy.
    Rotate,
}

/// The subcommands of `iac config`.
#[derive(Debug, Subcommand)]
pub enum ConfigAction {
    /// Print the effective configuration (secrets redacted).
    Show,
}

/// A duration argument (`2s`, `500ms`, `5m`).
fn parse_sandbox(s: &str) -> Result<iac_core::SandboxName, String> {
    iac_core::SandboxName::new(s).map_err(|e| format!("sandbox name {e}"))
}

fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    humantime::parse_duration(s)
        .map_err(|e| format!("{s:?}: {e} (expected a duration such as 2s, 500ms or 5m)"))
}
