//! `iac-agent --probe`: a one-shot HealthCheck client against a running agent on loopback, for a
//! container HEALTHCHECK (Docker runs it inside the container, next to the agent). Prints the
//! status and detail on one line; exit 0 when SERVING, 1 when not (or when nothing answers within
//! the timeout), 2 when the runtime cannot start.

use std::net::SocketAddr;
use std::time::Duration;

use iac_proto::{ControlPlaneClient, HealthStatus, HealthStatusCode};

use crate::supervisor::EXIT_SETUP_FAILED;

/// How long one probe may take before it counts as failed.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// One line for a HealthCheck answer, e.g. `SERVING: running (pid 7)`.
pub fn describe(h: &HealthStatus) -> String {
    let status = HealthStatusCode::try_from(h.status)
        .map(|s| s.as_str_name())
        .unwrap_or("INVALID");
    format!("{status}: {}", h.detail)
}

/// Asks the agent at `addr`; returns the process exit code.
pub fn run(addr: SocketAddr) -> i32 {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("iac-agent --probe: cannot start the async runtime: {e}");
            return EXIT_SETUP_FAILED;
        }
    };
    let answer = runtime.block_on(async {
        tokio::time::timeout(PROBE_TIMEOUT, async {
            let mut client = ControlPlaneClient::connect(format!("http://{addr}"))
                .await
                .map_err(|e| format!("cannot connect to the agent at {addr}: {e}"))?;
            client
                .health_check(())
                .await
                .map(|r| r.into_inner())
                .map_err(|e| format!("HealthCheck at {addr} failed: {}", e.message()))
        })
        .await
        .unwrap_or_else(|_| {
            Err(format!(
                "the agent at {addr} did not answer within {PROBE_TIMEOUT:?}"
            ))
        })
    });
    match answer {
        Ok(h) => {
            println!("{}", describe(&h));
            if h.status == HealthStatusCode::Serving as i32 {
                0
            } else {
                1
            }
        }
        Err(e) => {
            println!("UNREACHABLE: {e}");
            1
        }
    }
}
