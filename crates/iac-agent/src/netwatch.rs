//! Following the pod's network namespace (`--follow-pod-network`, set by iac on Docker pods).
//!
//! On Docker the app container joins its sidecar's network namespace. When the sidecar
//! *container* is restarted (by a person, by the engine), it comes back in a new namespace, and
//! the app is left in the old one: only loopback remains, nothing reaches the agent or the app,
//! and nothing outside can tell. The agent watches the interfaces of its own namespace
//! (`/proc/net/dev`); once the pod's network interface has gone for good it ends the container
//! with [`EXIT_POD_NETWORK_LOST`], after giving the sidecar time to come back, so the engine's
//! restart policy starts the app again — in the sidecar's new namespace.

use std::time::Duration;

use crate::log::log;

/// The agent's exit code when its pod's network namespace lost its network (`EX_TEMPFAIL`).
pub const EXIT_POD_NETWORK_LOST: i32 = 75;
/// How often the interfaces are looked at.
pub const POLL: Duration = Duration::from_secs(1);
/// How long the interface must stay gone before the agent ends the container (a reconnect is
/// quicker); a restarted sidecar is normally back by then, and the app container's restart must
/// find it running (an engine does not retry a start that found the namespace's owner stopped).
pub const GRACE: Duration = Duration::from_secs(3);

/// The network interfaces named in a `/proc/net/dev` text, loopback excluded.
pub fn interfaces(proc_net_dev: &str) -> Vec<String> {
    proc_net_dev
        .lines()
        .skip(2)
        .filter_map(|l| l.split_once(':'))
        .map(|(name, _)| name.trim().to_string())
        .filter(|n| !n.is_empty() && n != "lo")
        .collect()
}

/// What one look at the namespace means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The pod has a network interface (or never had one: nothing to follow).
    Fine,
    /// The interface it had is gone; seen for the first time.
    Lost,
}

/// Remembers whether the namespace ever had an interface; a namespace that had one and has none
/// now has been left behind by its owner.
#[derive(Debug, Default)]
pub struct Watcher {
    had_interface: bool,
}

impl Watcher {
    /// Takes one look at the namespace's interfaces (as listed by the caller) and says what it means.
    pub fn observe(&mut self, interfaces: &[String]) -> Verdict {
        if !interfaces.is_empty() {
            self.had_interface = true;
            Verdict::Fine
        } else if self.had_interface {
            Verdict::Lost
        } else {
            Verdict::Fine
        }
    }
}

/// Watches until the pod's network is lost for good (returns then), or forever. Reads `path`
/// (`/proc/net/dev`, the agent's own namespace). An interface that is back within [`GRACE`]
/// (the sidecar's endpoint reconnected with the service's alias, during a replacement) was not
/// lost.
pub async fn lost(path: &str) {
    let mut watcher = Watcher::default();
    loop {
        match std::fs::read_to_string(path) {
            Ok(text) => {
                if watcher.observe(&interfaces(&text)) == Verdict::Lost {
                    tokio::time::sleep(GRACE).await;
                    let back = std::fs::read_to_string(path)
                        .map(|t| !interfaces(&t).is_empty())
                        .unwrap_or(false);
                    if !back {
                        log(
                            "the pod's network interface is gone (its sidecar was restarted into a new network namespace); ending this container so the engine restarts it into the new one",
                        );
                        return;
                    }
                }
            }
            Err(e) => {
                log(format!(
                    "not following the pod's network: cannot read {path}: {e}"
                ));
                return std::future::pending().await;
            }
        }
        tokio::time::sleep(POLL).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEV: &str = "Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo:    1234      10    0    0    0     0          0         0     1234      10    0    0    0     0       0          0
  eth0: 5678      20    0    0    0     0          0         0     5678      20    0    0    0     0       0          0
";

    #[test]
    fn reads_the_interfaces_but_loopback() {
        assert_eq!(interfaces(DEV), ["eth0"]);
        let only_lo: String = DEV.lines().take(3).collect::<Vec<_>>().join("\n");
        assert!(interfaces(&only_lo).is_empty());
        assert!(interfaces("").is_empty());
    }

    #[test]
    fn only_a_namespace_that_had_an_interface_can_lose_it() {
        let mut w = Watcher::default();
        assert_eq!(
            w.observe(&[]),
            Verdict::Fine,
            "never had one (network none)"
        );
        assert_eq!(w.observe(&["eth0".into()]), Verdict::Fine);
        assert_eq!(w.observe(&[]), Verdict::Lost);
    }
}
