//! `iac-agent`: the PID-1 supervisor inside every iac app container.
//!
//! It starts the entry argv (optionally as another user), forwards signals to it, reaps every
//! zombie, tees the entry's stdout/stderr to its own (so `docker logs` works) and into a bounded
//! ring buffer, and serves `iac.controlplane.v1.ControlPlane` (HealthCheck, StreamLogs; Deploy is
//! UNIMPLEMENTED) as plaintext HTTP/2 on loopback, where the service's Envoy sidecar reaches it.
//!
//! Lifecycle and exit codes:
//! * an entry that should be running and exits by itself (any failure; a clean exit of an app
//!   with a declared port) is started again after a back-off — 10 s doubling to 5 min, forgotten
//!   after 10 min of running, as Kubernetes' CrashLoopBackOff — and HealthCheck reports the
//!   restarts, the last exit and the back-off ([`restart`]); `--restart never` turns that off;
//! * the agent keeps running after the entry exits for good (a job that exited 0, or with
//!   `--restart never`), reporting the exit in HealthCheck (SERVING after exit 0, NOT_SERVING
//!   otherwise), until SIGTERM or SIGINT;
//! * on SIGTERM/SIGINT it forwards the signal, waits up to `--grace`, SIGKILLs the entry if it is
//!   still running, and exits with the entry's exit code (128+N after signal N, 127 when the
//!   program was not found, 126 when it could not be executed);
//! * SIGHUP, SIGQUIT, SIGUSR1 and SIGUSR2 are only forwarded;
//! * with `--follow-pod-network`, a pod network namespace left behind by its restarted owner
//!   (the sidecar container) ends the agent like a SIGTERM, with exit code 75
//!   ([`netwatch::EXIT_POD_NETWORK_LOST`]), so the engine restarts the container into the new one;
//! * a following StreamLogs call ends when the client goes away or when the entry's stdout and
//!   stderr have both closed (no line can arrive any more);
//! * exit code 2 means the agent itself could not start (bad arguments, unknown `--user`, listen
//!   address taken) and the entry was never run.
//!
//! Pod mode (`--sidecar ARG...`, used on Docker Swarm where a task is one container): the agent
//! also runs the sidecar (Envoy) next to the entry. When either dies by itself — the sidecar for
//! any reason, the entry unless it is a finished job (exit 0, no declared port) — the agent stops
//! the other (SIGTERM, `--grace`, SIGKILL) and exits non-zero: with the entry's code when the entry
//! failed, with [`supervisor::EXIT_SIDECAR_DIED`] (3) when the sidecar did; the orchestrator then
//! fails and restarts the task. HealthCheck is SERVING only while both run (and, with
//! `--sidecar-port`, once the sidecar listens), and its detail names both.
//!
//! One-off mode (`--once`, used for release commands): run the entry once, as `--user`, in
//! `--chdir`, and exit with its code ([`once`]).
//!
//! Keeper mode (`--keeper PROJECT`, one container per project on Docker): supervise nothing;
//! follow the engine's events and start the project's apps an engine restart or a reboot left
//! down because they were tried before their sidecar ran ([`keeper`]).
//!
//! The library exposes the pieces (and [`config::AgentConfig`] for the `iac` binary, which renders
//! the agent's command line into images); `src/main.rs` is the thin executable.

#![warn(missing_docs)]

pub mod config;
pub mod forward;
pub mod keeper;
pub mod log;
pub mod logbuf;
pub mod netwatch;
pub mod once;
pub mod otel;
pub mod ports;
pub mod probe;
pub mod restart;
pub mod restart_record;
pub mod service;
pub mod sidecar_root;
pub mod state;
pub mod std_health;
pub mod supervisor;
pub mod timefmt;
pub mod user;

pub use config::{AgentConfig, Cli};
pub use supervisor::{Options, Sidecar, run};

/// With a sidecar running as its own user (it alone may read its private key), the app must run
/// as neither that uid nor root: either could read the key. An app image whose build gave the
/// app's user the sidecar's uid (or uid 0) is refused here, before anything starts.
pub fn check_app_user_apart(
    app: Option<&user::ResolvedUser>,
    sidecar: &user::ResolvedUser,
) -> Result<(), String> {
    // SAFETY: geteuid never fails. Without --user the app runs as the agent's own user.
    let uid = app.map_or_else(|| unsafe { libc::geteuid() }, |u| u.uid);
    let name = app
        .and_then(|u| u.name.clone())
        .map(|n| format!("{n:?} "))
        .unwrap_or_default();
    if uid == 0 || uid == sidecar.uid {
        return Err(format!(
            "--user: the app's user {name}is uid {uid}, {}; expected a uid other than 0 and the \
             sidecar's ({}), so the app cannot read the sidecar's private key",
            if uid == 0 {
                "root"
            } else {
                "the sidecar's own uid"
            },
            sidecar.uid
        ));
    }
    Ok(())
}

/// The group whose sockets a controlled pod's packet filter lets out (Envoy's, for its egress
/// listener; `iac_core::egress::ENVOY_EGRESS_GID`, which a test in iac-backends keeps equal).
pub const EGRESS_GID: u32 = 1337;

/// The app must not run in [`EGRESS_GID`], as its primary group or a supplementary one: its
/// sockets would then pass the pod's egress filter as Envoy's do. The group comes from the image's
/// `/etc/passwd` and `/etc/group`, which a repo's build step (run as root) can edit, so it is
/// checked here, where the app is started, not only in iac's configuration.
pub fn check_app_groups(app: Option<&user::ResolvedUser>) -> Result<(), String> {
    // SAFETY: getegid never fails. Without --user the app runs as the agent's own group.
    let (gid, groups) = app.map_or_else(
        || (unsafe { libc::getegid() }, Vec::new()),
        |u| (u.gid, u.groups.clone()),
    );
    if gid == EGRESS_GID || groups.contains(&EGRESS_GID) {
        let name = app
            .and_then(|u| u.name.clone())
            .map(|n| format!("{n:?} "))
            .unwrap_or_default();
        return Err(format!(
            "--user: the app's user {name}is in group {EGRESS_GID}, the sidecar's egress group; \
             expected any other group, so the app's connections cannot pass the pod's egress filter"
        ));
    }
    Ok(())
}

impl Options {
    /// Validates the command line into run options (resolving `--user` against /etc/passwd).
    pub fn from_cli(cli: Cli) -> Result<Self, String> {
        let limits = cli.ring_limits()?;
        let backoff = cli.backoff()?;
        let user = cli
            .user
            .as_deref()
            .map(user::resolve_from_system)
            .transpose()
            .map_err(|e| e.to_string())?;
        check_app_groups(user.as_ref())?;
        let python_path = match &cli.otel_auto_instrument {
            None => None,
            Some(venv) => {
                let dir = otel::find_auto_instrumentation(venv)?;
                let cwd = std::env::current_dir()
                    .map_err(|e| format!("--otel-auto-instrument: the working directory: {e}"))?;
                Some(otel::python_path(
                    &dir,
                    &cwd,
                    std::env::var_os("PYTHONPATH").as_deref(),
                ))
            }
        };
        let sidecar = if cli.sidecar.is_empty() {
            None
        } else {
            let sidecar_user = cli
                .sidecar_user
                .as_deref()
                .map(user::resolve_from_system)
                .transpose()
                .map_err(|e| format!("--sidecar-user: {e}"))?;
            if let Some(root) = &cli.sidecar_root {
                sidecar_root::check(root, &cli.sidecar[0])?;
            }
            if let Some(su) = &sidecar_user {
                check_app_user_apart(user.as_ref(), su)?;
            }
            Some(Sidecar {
                argv: cli.sidecar,
                port: cli.sidecar_port,
                user: sidecar_user,
                root: cli.sidecar_root,
            })
        };
        Ok(Self {
            listen: cli.listen,
            user,
            python_path,
            limits,
            grace: cli.grace,
            argv: cli.argv,
            app_port: cli.app_port,
            forward_after: cli.forward_after.0,
            health_listen: cli.health_listen,
            restart: cli.restart,
            follow_pod_network: cli.follow_pod_network,
            restart_state: cli.restart_state,
            backoff,
            sidecar,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(gid: u32, groups: &[u32]) -> user::ResolvedUser {
        user::ResolvedUser {
            uid: 1000,
            gid,
            groups: groups.to_vec(),
            name: Some("app".into()),
            home: None,
        }
    }

    #[test]
    fn an_app_in_the_egress_group_is_refused() {
        assert!(check_app_groups(Some(&user(1000, &[1000, 20]))).is_ok());
        for (gid, groups) in [
            (EGRESS_GID, vec![EGRESS_GID]),
            (1000, vec![1000, EGRESS_GID]),
        ] {
            let e = check_app_groups(Some(&user(gid, &groups))).unwrap_err();
            assert!(
                e.contains("\"app\" is in group 1337") && e.contains("egress filter"),
                "{e}"
            );
        }
    }
}
