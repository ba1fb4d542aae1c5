//! The agent's command line (`iac-agent [OPTIONS] -- ARGV...`) and [`AgentConfig`], the serde
//! form the `iac` binary keeps in its config and turns back into that command line when it writes
//! an image's ENTRYPOINT.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use serde::{Deserialize, Serialize};

use crate::logbuf::RingLimits;
use crate::restart::{self, Backoff, RestartPolicy};

/// Default `--listen`: loopback only; the pod's Envoy sidecar is the one client.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:50051";
/// Default `--ring-lines`: output lines kept for `StreamLogs`.
pub const DEFAULT_RING_LINES: usize = 10_000;
/// Default `--ring-bytes`: 4 MiB of output kept for `StreamLogs`.
pub const DEFAULT_RING_BYTES: usize = 4 * 1024 * 1024;
/// Default `--max-line-bytes`: longer lines are cut in the ring buffer (16 KiB).
pub const DEFAULT_MAX_LINE_BYTES: usize = 16 * 1024;
/// Default `--grace` in seconds, matching Docker's default stop timeout.
pub const DEFAULT_GRACE_SECS: u64 = 10;

/// `iac-agent`: PID 1 of an iac app container.
///
/// Starts ARGV, forwards signals to it, reaps every zombie, tees its stdout/stderr to its own and
/// into a bounded ring buffer, and serves the gRPC ControlPlane API (HealthCheck, StreamLogs) as
/// plaintext HTTP/2 on --listen. When ARGV exits by itself the agent keeps running and reports the
/// exit in HealthCheck until it receives SIGTERM or SIGINT; it then exits with ARGV's exit code
/// (128+N when ARGV was killed by signal N, 127/126 when it could not be started).
#[derive(Debug, Clone, Parser)]
#[command(name = "iac-agent", version)]
pub struct Cli {
    /// Address of the gRPC listener (plaintext h2; TLS is Envoy's job). Port 0 picks a free port;
    /// the bound address is logged on stderr as "iac-agent: listening on ADDR".
    #[arg(long, value_name = "ADDR", default_value = DEFAULT_LISTEN)]
    pub listen: SocketAddr,

    /// Run ARGV as this user: NAME, UID, NAME:GROUP or UID:GID, resolved against /etc/passwd and
    /// /etc/group. Without it ARGV runs as the agent's own user.
    #[arg(long, value_name = "UID[:GID]|NAME[:GROUP]")]
    pub user: Option<String>,

    /// Keep at most this many lines of output.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_RING_LINES)]
    pub ring_lines: usize,

    /// Keep at most this many bytes of output (at least 256).
    #[arg(long, value_name = "N", default_value_t = DEFAULT_RING_BYTES)]
    pub ring_bytes: usize,

    /// Cut longer lines to this many bytes (plus a marker) in the buffer; the tee is unaffected.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_MAX_LINE_BYTES)]
    pub max_line_bytes: usize,

    /// How long to wait after forwarding SIGTERM/SIGINT before SIGKILL: a duration ("10s",
    /// "1500ms"); a bare number is refused, as everywhere in iac.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_grace)]
    pub grace: Duration,

    /// The TCP port the app serves on. While ARGV runs, HealthCheck answers UNKNOWN ("starting")
    /// until this port accepts connections on 127.0.0.1, then SERVING; and a service with a port
    /// that exits is NOT_SERVING even after exit code 0. Set by iac on the container
    /// (IAC_APP_PORT) for services that declare a port.
    #[arg(long, value_name = "PORT", env = "IAC_APP_PORT", value_parser = clap::value_parser!(u16).range(1..))]
    pub app_port: Option<u16>,

    /// With --app-port and --user: when the app listens on exactly one other port (or on that port
    /// but not reachable from 127.0.0.1) and never on --app-port for this long, listen on
    /// 127.0.0.1:PORT and forward every connection to where the app listens, so the sidecar's
    /// traffic still reaches it. A duration ("3s", "500ms") or "off".
    #[arg(long, value_name = "DURATION|off", env = "IAC_FORWARD_AFTER", default_value = "3s", value_parser = parse_forward_after)]
    pub forward_after: ForwardAfter,

    /// Which exits of ARGV are followed by a restart: `auto` restarts an app that should be
    /// running (any failure, and a clean exit of an app with --app-port; a job without a port
    /// that exits 0 is done), after a back-off; `never` only reports the exit. Pod mode
    /// (--sidecar) never restarts: the orchestrator restarts the whole task.
    #[arg(
        long,
        value_enum,
        value_name = "auto|never",
        env = "IAC_RESTART",
        default_value = "auto"
    )]
    pub restart: RestartPolicy,

    /// The delay before the first restart of a crash series; it doubles with every crash in a
    /// row, up to --restart-backoff-max (as Kubernetes' CrashLoopBackOff: 10s, 20s, 40s … 5m).
    #[arg(long, value_name = "DURATION", env = "IAC_RESTART_BACKOFF", default_value = restart::DEFAULT_BACKOFF, value_parser = parse_duration)]
    pub restart_backoff: Duration,

    /// The longest delay between restarts (default 5m, or --restart-backoff when that is
    /// longer).
    #[arg(long, value_name = "DURATION", env = "IAC_RESTART_BACKOFF_MAX", value_parser = parse_duration)]
    pub restart_backoff_max: Option<Duration>,

    /// A run at least this long ends a crash series: the next crash waits --restart-backoff
    /// again.
    #[arg(long, value_name = "DURATION", env = "IAC_RESTART_RESET_AFTER", default_value = restart::DEFAULT_RESET_AFTER, value_parser = parse_duration)]
    pub restart_reset_after: Duration,

    /// End the container (exit code 75) when the pod's network namespace loses its network
    /// interface — its owner, the sidecar container, was restarted into a new one — so the
    /// engine's restart policy starts the app again in the new namespace. Set by iac on Docker
    /// pods (IAC_FOLLOW_POD_NETWORK=1).
    #[arg(long, env = "IAC_FOLLOW_POD_NETWORK", value_parser = clap::builder::BoolishValueParser::new())]
    pub follow_pod_network: bool,

    /// Keep the restart count, the crash series and the last exit in this file, so a restart
    /// of the container (not only of the app) does not reset them; read at start, written
    /// whole on every change. Set by iac on Docker pods
    /// (IAC_RESTART_STATE=/var/lib/iac-agent/restarts.json: the container's own layer, which a
    /// container restart keeps and a new pod does not have).
    #[arg(long, value_name = "PATH", env = "IAC_RESTART_STATE")]
    pub restart_state: Option<std::path::PathBuf>,

    /// Also serve the standard gRPC health service (grpc.health.v1.Health, and nothing else) on
    /// this address, for probes from outside the pod (Kubernetes' `grpc:` readiness probe). The
    /// ControlPlane API stays on --listen. Set in Kubernetes pods (IAC_HEALTH_LISTEN) by iac.
    #[arg(long, value_name = "ADDR", env = "IAC_HEALTH_LISTEN")]
    pub health_listen: Option<SocketAddr>,

    /// Pod mode (a Swarm task, where the sidecar cannot live in a container of its own): also run
    /// this program — Envoy — next to ARGV, as the agent's own user, its output going straight to
    /// the agent's stdout/stderr. Repeat once per argument (`--sidecar envoy --sidecar -c
    /// --sidecar /etc/envoy/envoy.yaml`). When either process dies the agent stops the other and
    /// exits non-zero, so the orchestrator fails (and restarts) the task; HealthCheck reports both.
    /// An app that exits 0 without a declared port is a finished job, as without this option.
    #[arg(
        long = "sidecar",
        value_name = "ARG",
        allow_hyphen_values = true,
        conflicts_with = "probe"
    )]
    pub sidecar: Vec<String>,

    /// With --sidecar: HealthCheck is SERVING only once the sidecar listens on this TCP port (its
    /// inbound mTLS listener, 15000 for iac).
    #[arg(long, value_name = "PORT", requires = "sidecar", value_parser = clap::value_parser!(u16).range(1..))]
    pub sidecar_port: Option<u16>,

    /// With --sidecar: run it as this user (as --user; a uid unknown to /etc/passwd is fine), so it
    /// keeps no capability and the app's user cannot read what only it may (its private key).
    #[arg(long, value_name = "UID[:GID]|NAME[:GROUP]", requires = "sidecar")]
    pub sidecar_user: Option<String>,

    /// With --sidecar: run it `chroot`ed into this directory, its own root filesystem (Envoy,
    /// its libraries and loader, its /etc), with the sidecar program an absolute path inside it.
    /// The root and every directory above it must be owned by root and writable by no one else.
    #[arg(long, value_name = "DIR", requires = "sidecar")]
    pub sidecar_root: Option<std::path::PathBuf>,

    /// Do not supervise anything: ask the agent listening on --listen for HealthCheck, print its
    /// answer and exit 0 when it is SERVING, 1 otherwise (for a container HEALTHCHECK).
    #[arg(long, conflicts_with = "argv")]
    pub probe: bool,

    /// Load OpenTelemetry's Python auto-instrumentation (installed in the virtualenv VENV) into
    /// ARGV as `opentelemetry-instrument ARGV` would, without the extra interpreter start: ARGV
    /// gets PYTHONPATH = `VENV/lib/python*/site-packages/opentelemetry/instrumentation/
    /// auto_instrumentation`, the working directory, then the inherited PYTHONPATH.
    #[arg(long, value_name = "VENV")]
    pub otel_auto_instrument: Option<std::path::PathBuf>,

    /// Run ARGV once, as a job, and exit with its exit code (iac's release commands): no gRPC
    /// listener, no restart, output inherited; --user, --grace and --chdir apply.
    #[arg(long, conflicts_with_all = ["probe", "sidecar"])]
    pub once: bool,

    /// With --once: run ARGV in this directory.
    #[arg(long, value_name = "DIR", requires = "once")]
    pub chdir: Option<std::path::PathBuf>,

    /// With --once: before starting ARGV, wait (at most 30 s) until this address accepts TCP
    /// connections (the pod sidecar's outbound listener).
    #[arg(long, value_name = "ADDR", requires = "once")]
    pub wait_tcp: Option<SocketAddr>,

    /// Keeper mode: supervise nothing; keep the pods of project PROJECT up through the engine
    /// at --engine-socket: start an app whose last start failed once its sidecar runs (what an
    /// engine restart or a reboot leaves behind), restart one left in its sidecar's old network
    /// namespace. Touches only containers labelled iac.managed-by=iac and iac.project=PROJECT.
    #[arg(long, value_name = "PROJECT", conflicts_with_all = ["probe", "once", "sidecar"])]
    pub keeper: Option<String>,

    /// With --keeper: the Docker engine's Unix socket.
    #[arg(
        long,
        value_name = "PATH",
        default_value = "/var/run/docker.sock",
        requires = "keeper"
    )]
    pub engine_socket: std::path::PathBuf,

    /// With --keeper: how long an app still running in its restarted sidecar's old namespace
    /// gets to end by itself (its agent ends it) before the keeper restarts it.
    #[arg(long, value_name = "DURATION", default_value = "20s", value_parser = parse_duration, requires = "keeper")]
    pub keeper_recheck: Duration,

    /// With --keeper: the longest delay between tries of a failed start (1 s, doubling).
    #[arg(long, value_name = "DURATION", default_value = "1m", value_parser = parse_duration, requires = "keeper")]
    pub keeper_backoff_max: Duration,

    /// The program to supervise and its arguments (after `--`).
    #[arg(last = true, required_unless_present_any = ["probe", "keeper"], value_name = "ARGV")]
    pub argv: Vec<String>,
}

fn parse_grace(s: &str) -> Result<Duration, String> {
    iac_duration::parse(s).map_err(|e| format!("--grace: {e}"))
}

/// A duration option (`10s`, `500ms`, `5m`) in iac's one duration style ([`iac_duration`], as the
/// configuration and the repos file take them). Bare numbers are refused: `10` could mean seconds
/// or milliseconds.
fn parse_duration(s: &str) -> Result<Duration, String> {
    iac_duration::parse(s)
}

/// `--forward-after`: how long the app must have listened elsewhere; `None` = never forward.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ForwardAfter(pub Option<Duration>);

fn parse_forward_after(s: &str) -> Result<ForwardAfter, String> {
    if s == "off" {
        return Ok(ForwardAfter(None));
    }
    iac_duration::parse(s)
        .map(|d| ForwardAfter(Some(d)))
        .map_err(|e| format!("--forward-after: {e}, or off"))
}

impl Cli {
    /// The validated ring-buffer bounds.
    pub fn ring_limits(&self) -> Result<RingLimits, String> {
        RingLimits::new(self.ring_lines, self.ring_bytes, self.max_line_bytes)
    }

    /// The validated restart back-off: a non-zero first delay no longer than the longest.
    pub fn backoff(&self) -> Result<Backoff, String> {
        if self.restart_backoff.is_zero() {
            return Err(
                "--restart-backoff 0s: expected a positive delay (a crashing app restarted at once would spin)"
                    .into(),
            );
        }
        let default_max =
            iac_duration::parse(restart::DEFAULT_BACKOFF_MAX).expect("a valid default");
        let max = match self.restart_backoff_max {
            Some(max) if max < self.restart_backoff => {
                return Err(format!(
                    "--restart-backoff-max {} is shorter than --restart-backoff {}: expected at least the first delay",
                    humantime::format_duration(max),
                    humantime::format_duration(self.restart_backoff)
                ));
            }
            Some(max) => max,
            None => default_max.max(self.restart_backoff),
        };
        Ok(Backoff {
            initial: self.restart_backoff,
            max,
            reset_after: self.restart_reset_after,
        })
    }
}

/// How the `iac` binary runs the agent in every app container (an `[agent]` section of `iac.toml`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct AgentConfig {
    /// `--listen`; Envoy's inbound route points here.
    pub listen: SocketAddr,
    /// `--user`; `None` runs the entry as the image's USER.
    pub user: Option<String>,
    /// `--ring-lines`: output lines the agent keeps for `StreamLogs`.
    pub ring_lines: usize,
    /// `--ring-bytes`: output bytes the agent keeps (at least 256).
    pub ring_bytes: usize,
    /// `--max-line-bytes`: longer lines are cut in the buffer (`docker logs` still sees them whole).
    pub max_line_bytes: usize,
    /// `--grace` in whole seconds. Keep it below the engine's stop timeout (Docker: 10 s) or the
    /// engine's SIGKILL of the agent wins and the exit code is lost.
    pub grace_secs: u64,
}

impl Default for AgentConfig {
    fn default() -> Self {
        Self {
            listen: DEFAULT_LISTEN
                .parse()
                .expect("DEFAULT_LISTEN is a socket address"),
            user: None,
            ring_lines: DEFAULT_RING_LINES,
            ring_bytes: DEFAULT_RING_BYTES,
            max_line_bytes: DEFAULT_MAX_LINE_BYTES,
            grace_secs: DEFAULT_GRACE_SECS,
        }
    }
}

impl AgentConfig {
    /// The full command line (e.g. an image's exec-form ENTRYPOINT): `agent_path`, the options,
    /// `--`, then `argv` untouched.
    pub fn command_line(&self, agent_path: &str, argv: &[String]) -> Vec<String> {
        let mut cmd = vec![
            agent_path.to_owned(),
            "--listen".into(),
            self.listen.to_string(),
        ];
        if let Some(user) = &self.user {
            cmd.extend(["--user".into(), user.clone()]);
        }
        cmd.extend([
            "--ring-lines".into(),
            self.ring_lines.to_string(),
            "--ring-bytes".into(),
            self.ring_bytes.to_string(),
            "--max-line-bytes".into(),
            self.max_line_bytes.to_string(),
            "--grace".into(),
            format!("{}s", self.grace_secs),
            "--".into(),
        ]);
        cmd.extend(argv.iter().cloned());
        cmd
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_trailing_argv() {
        let cli =
            Cli::try_parse_from(["iac-agent", "--", "python", "-u", "--x", "app.py"]).unwrap();
        assert_eq!(cli.listen, DEFAULT_LISTEN.parse().unwrap());
        assert_eq!(cli.argv, ["python", "-u", "--x", "app.py"]);
        assert_eq!(cli.grace, Duration::from_secs(10));
        assert_eq!(cli.ring_lines, 10_000);
        assert!(cli.user.is_none());
        assert_eq!(
            cli.forward_after,
            ForwardAfter(Some(Duration::from_secs(3)))
        );
    }

    #[test]
    fn forward_after_takes_a_duration_or_off() {
        let parse = |v: &str| Cli::try_parse_from(["iac-agent", "--forward-after", v, "--", "x"]);
        assert_eq!(
            parse("500ms").unwrap().forward_after,
            ForwardAfter(Some(Duration::from_millis(500)))
        );
        assert_eq!(parse("off").unwrap().forward_after, ForwardAfter(None));
        let e = parse("soon").unwrap_err().to_string();
        assert!(
            e.contains("--forward-after: invalid duration \"soon\"") && e.contains("or off"),
            "{e}"
        );
    }

    #[test]
    fn once_with_its_options_and_only_with_once() {
        let cli = Cli::try_parse_from([
            "iac-agent",
            "--once",
            "--user",
            "app",
            "--chdir",
            "/app/web",
            "--wait-tcp",
            "127.0.0.1:15001",
            "--",
            "python",
            "manage.py",
            "migrate",
        ])
        .unwrap();
        assert!(cli.once);
        assert_eq!(cli.chdir.as_deref(), Some(std::path::Path::new("/app/web")));
        assert_eq!(cli.wait_tcp, Some("127.0.0.1:15001".parse().unwrap()));
        assert_eq!(cli.argv, ["python", "manage.py", "migrate"]);
        for without_once in [["--chdir", "/x"], ["--wait-tcp", "127.0.0.1:1"]] {
            let mut args = vec!["iac-agent"];
            args.extend(without_once);
            args.extend(["--", "x"]);
            assert!(Cli::try_parse_from(args).is_err(), "{without_once:?}");
        }
        assert!(
            Cli::try_parse_from(["iac-agent", "--once", "--sidecar", "envoy", "--", "x"]).is_err()
        );
    }

    #[test]
    fn app_port_and_probe() {
        let cli = Cli::try_parse_from(["iac-agent", "--app-port", "8000", "--", "x"]).unwrap();
        assert_eq!(cli.app_port, Some(8000));
        assert!(Cli::try_parse_from(["iac-agent", "--app-port", "0", "--", "x"]).is_err());
        let cli = Cli::try_parse_from(["iac-agent", "--health-listen", "0.0.0.0:15021", "--", "x"])
            .unwrap();
        assert_eq!(cli.health_listen, Some("0.0.0.0:15021".parse().unwrap()));
        let cli = Cli::try_parse_from(["iac-agent", "--probe"]).unwrap();
        assert!(cli.probe && cli.argv.is_empty());
        assert!(Cli::try_parse_from(["iac-agent", "--probe", "--", "x"]).is_err());
    }

    #[test]
    fn sidecar_argv_is_repeated_and_keeps_hyphens() {
        let cli = Cli::try_parse_from([
            "iac-agent",
            "--sidecar",
            "/usr/local/bin/envoy",
            "--sidecar",
            "-c",
            "--sidecar",
            "/etc/envoy/envoy.yaml",
            "--sidecar-port",
            "15000",
            "--",
            "python",
            "app.py",
        ])
        .unwrap();
        assert_eq!(
            cli.sidecar,
            ["/usr/local/bin/envoy", "-c", "/etc/envoy/envoy.yaml"]
        );
        assert_eq!(cli.sidecar_port, Some(15000));
        assert_eq!(cli.argv, ["python", "app.py"]);
        let e = Cli::try_parse_from(["iac-agent", "--sidecar-port", "15000", "--", "x"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("--sidecar"), "{e}");
        assert!(Cli::try_parse_from(["iac-agent", "--probe", "--sidecar", "envoy"]).is_err());
    }

    #[test]
    fn restart_options_default_to_crash_loop_back_off() {
        let cli = Cli::try_parse_from(["iac-agent", "--", "x"]).unwrap();
        assert_eq!(cli.restart, RestartPolicy::Auto);
        assert_eq!(cli.backoff().unwrap(), Backoff::default());
        let cli = Cli::try_parse_from([
            "iac-agent",
            "--restart",
            "never",
            "--restart-backoff",
            "200ms",
            "--restart-backoff-max",
            "1s",
            "--restart-reset-after",
            "3s",
            "--",
            "x",
        ])
        .unwrap();
        assert_eq!(cli.restart, RestartPolicy::Never);
        assert_eq!(
            cli.backoff().unwrap(),
            Backoff {
                initial: Duration::from_millis(200),
                max: Duration::from_secs(1),
                reset_after: Duration::from_secs(3)
            }
        );
        let e = Cli::try_parse_from(["iac-agent", "--restart-backoff", "10", "--", "x"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("expected a number with a unit"), "{e}");
        let e = Cli::try_parse_from(["iac-agent", "--restart", "sometimes", "--", "x"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("sometimes"), "{e}");
        let zero =
            Cli::try_parse_from(["iac-agent", "--restart-backoff", "0s", "--", "x"]).unwrap();
        assert!(zero.backoff().unwrap_err().contains("positive"));
        // A first delay longer than the default longest one raises the longest one with it.
        let long =
            Cli::try_parse_from(["iac-agent", "--restart-backoff", "10m", "--", "x"]).unwrap();
        assert_eq!(long.backoff().unwrap().max, Duration::from_secs(600));
        let inverted = Cli::try_parse_from([
            "iac-agent",
            "--restart-backoff",
            "1m",
            "--restart-backoff-max",
            "10s",
            "--",
            "x",
        ])
        .unwrap();
        assert!(inverted.backoff().unwrap_err().contains("shorter than"));
    }

    #[test]
    fn follow_pod_network_is_a_flag_or_a_boolish_env_value() {
        let cli = Cli::try_parse_from(["iac-agent", "--", "x"]).unwrap();
        assert!(!cli.follow_pod_network);
        let cli = Cli::try_parse_from(["iac-agent", "--follow-pod-network", "--", "x"]).unwrap();
        assert!(cli.follow_pod_network);
        // What iac sets on a container is IAC_FOLLOW_POD_NETWORK=1: tests/restart.rs runs the
        // real agent with it (the environment is the process's, not a unit test's to change).
    }

    #[test]
    fn argv_is_required_after_double_dash() {
        assert!(Cli::try_parse_from(["iac-agent"]).is_err());
        assert!(Cli::try_parse_from(["iac-agent", "python"]).is_err());
    }

    #[test]
    fn grace_takes_a_duration_and_refuses_a_bare_number() {
        assert_eq!(parse_grace("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_grace("3s").unwrap(), Duration::from_secs(3));
        assert_eq!(parse_grace("1500ms").unwrap(), Duration::from_millis(1500));
        for bad in ["3", "0.5", "-1", "soon"] {
            let err = parse_grace(bad).unwrap_err();
            assert!(
                err.starts_with("--grace: ")
                    && err.contains(&format!("{bad:?}"))
                    && err.contains("\"3s\""),
                "{err}"
            );
        }
    }

    #[test]
    fn config_command_line_round_trips_through_the_cli() {
        let cfg = AgentConfig {
            listen: "127.0.0.1:6000".parse().unwrap(),
            user: Some("app:users".into()),
            ring_lines: 5,
            ring_bytes: 4096,
            max_line_bytes: 100,
            grace_secs: 3,
        };
        let argv = vec!["python".to_owned(), "--".to_owned(), "-m".to_owned()];
        let cmd = cfg.command_line("/usr/local/bin/iac-agent", &argv);
        assert_eq!(cmd[0], "/usr/local/bin/iac-agent");
        let cli = Cli::try_parse_from(&cmd).unwrap();
        assert_eq!(cli.listen, cfg.listen);
        assert_eq!(cli.user, cfg.user);
        assert_eq!(
            (cli.ring_lines, cli.ring_bytes, cli.max_line_bytes),
            (5, 4096, 100)
        );
        assert_eq!(cli.grace, Duration::from_secs(3));
        assert_eq!(cli.argv, argv);
    }

    #[test]
    fn config_deserializes_partially_with_defaults() {
        let cfg: AgentConfig = serde_json::from_str(r#"{"user":"app","grace_secs":5}"#).unwrap();
        assert_eq!(cfg.user.as_deref(), Some("app"));
        assert_eq!(cfg.grace_secs, 5);
        assert_eq!(cfg.listen, AgentConfig::default().listen);
        assert_eq!(cfg.ring_lines, DEFAULT_RING_LINES);
    }
}
