//! Traffic still reaches an app that listens somewhere other than its declared port.
//!
//! The sidecar sends the app's traffic to `127.0.0.1:$PORT`. An app that ignores `$PORT` (a
//! hard-coded `app.run(port=5000)`, a server bound to the container's own address) would never
//! get any. The agent watches the app's LISTEN sockets; once the app has listened on exactly one
//! other place — and not on `$PORT` reachable from loopback — for a grace period
//! (`--forward-after`), the agent listens on `127.0.0.1:$PORT` itself and copies every connection
//! to where the app listens. HealthCheck then judges readiness by that port and says so in its
//! detail and in `forwarded_to`, and the deploy warns (one extra local hop; the fix is to set
//! `PORT`).
//!
//! The grace period is what keeps the agent from taking `$PORT` from an app that is merely slow
//! to bind it while it already listens elsewhere (a metrics port, say). An app with several other
//! ports is never forwarded (which one is HTTP is a guess); the warning still names them.
//! Forwarding, once started, lasts as long as the agent. It is only done for an app that runs as
//! its own user (`--user`, as in every iac image), so the sockets judged are certainly the app's.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::log::log;
pub use crate::ports::Forwarding;
use crate::ports::{Listener, app_listeners, read_listeners};
use crate::state::ChildState;

/// How often the app's sockets are read while nothing is decided.
const POLL: Duration = Duration::from_millis(250);

/// Where a connection to a listener is best made from inside the pod: loopback when the socket
/// accepts it there, else the address it is bound to.
fn dial_addr(l: &Listener) -> SocketAddr {
    let ip = if l.reachable_from_ipv4_loopback() {
        IpAddr::V4(Ipv4Addr::LOCALHOST)
    } else {
        l.addr
    };
    SocketAddr::new(ip, l.port)
}

/// Where `127.0.0.1:app_port` should be forwarded, judging by the app's own listeners right now:
/// `None` when the app already accepts on `127.0.0.1:app_port`, listens nowhere, or listens in
/// more than one other place. A socket on `app_port` bound to another address (the container's
/// own IP) counts as "another place".
pub fn forward_target(app: &[Listener], app_port: u16) -> Option<SocketAddr> {
    if app
        .iter()
        .any(|l| l.port == app_port && l.reachable_from_ipv4_loopback())
    {
        return None;
    }
    let mut places: Vec<SocketAddr> = app.iter().map(dial_addr).collect();
    places.sort_unstable();
    places.dedup();
    // The same port on 0.0.0.0 and [::] is one place (both dial as 127.0.0.1).
    match places.as_slice() {
        [one] => Some(*one),
        _ => None,
    }
}

/// Decides when to start forwarding: the same target seen continuously for `after`.
#[derive(Debug)]
pub struct Decider {
    after: Duration,
    seen: Option<(SocketAddr, Instant)>,
}

impl Decider {
    /// A decider that forwards once the same target has been seen for `after` (zero: at once).
    pub fn new(after: Duration) -> Self {
        Self { after, seen: None }
    }

    /// Feeds one observation; returns the target once it has been stable long enough.
    pub fn observe(&mut self, target: Option<SocketAddr>, now: Instant) -> Option<SocketAddr> {
        match (target, self.seen) {
            (None, _) => {
                self.seen = None;
                None
            }
            (Some(t), Some((prev, since))) if prev == t => {
                (now.duration_since(since) >= self.after).then_some(t)
            }
            (Some(t), _) => {
                self.seen = Some((t, now));
                self.after.is_zero().then_some(t)
            }
        }
    }
}

/// What the watcher needs to tell the app's sockets apart.
#[derive(Debug, Clone, Copy)]
pub struct Watch {
    /// The port the app was told to listen on (`PORT`); a socket found elsewhere gets forwarded here.
    pub app_port: u16,
    /// The app's user: only its sockets are candidates.
    pub app_uid: u32,
    /// Ports that are never the app's (the agent's own, the sidecar's).
    pub not_app: [u16; 2],
    /// How long one candidate socket must stay the only one before forwarding starts.
    pub after: Duration,
}

/// Watches the app's sockets until it either listens on `app_port` (nothing to do) or has
/// listened elsewhere for `w.after`, then forwards for the rest of the agent's life, publishing
/// what it does on `status`. A run that ends is waited out (a restart watches afresh). Returns
/// when the supervisor is gone or forwarding could not start.
pub async fn run(
    w: Watch,
    mut child: watch::Receiver<ChildState>,
    status: watch::Sender<Option<Forwarding>>,
) {
    let mut decider = Decider::new(w.after);
    let target = loop {
        let state = child.borrow_and_update().clone();
        match state {
            ChildState::Starting => {}
            ChildState::Running { .. } => {
                let all = match read_listeners() {
                    Ok(all) => all,
                    Err(e) => {
                        log(format!(
                            "not watching for an app on another port: cannot list the pod's sockets: {e}"
                        ));
                        return;
                    }
                };
                let app = app_listeners(&all, Some(w.app_uid), &w.not_app);
                if app
                    .iter()
                    .any(|l| l.port == w.app_port && l.reachable_from_ipv4_loopback())
                {
                    return; // The app serves where it should.
                }
                if let Some(t) = decider.observe(forward_target(&app, w.app_port), Instant::now()) {
                    break t;
                }
            }
            // Exited or never started: nothing to forward to, unless the supervisor starts it
            // again (then the watch begins anew with the next run).
            _ => {
                decider = Decider::new(w.after);
                if child.changed().await.is_err() {
                    return;
                }
                continue;
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(POLL) => {}
            changed = child.changed() => if changed.is_err() { return },
        }
    };
    let from = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), w.app_port);
    let listener = match TcpListener::bind(from).await {
        Ok(l) => l,
        Err(e) => {
            log(format!(
                "the app listens on {target}, not on $PORT {}; cannot forward {from} there: {e}",
                w.app_port
            ));
            return;
        }
    };
    log(format!(
        "the app listens on {target}, not on $PORT {port}: forwarding {from} there (set PORT={tp} for the service to route to it directly)",
        port = w.app_port,
        tp = target.port(),
    ));
    status.send_replace(Some(Forwarding {
        from: w.app_port,
        to: target,
    }));
    serve(listener, target).await;
}

/// Accepts on `listener` and copies each connection to and from `target` until either side
/// closes. A connection the app refuses is closed at once (the client sees a reset or EOF).
pub async fn serve(listener: TcpListener, target: SocketAddr) {
    loop {
        let (mut inbound, _) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // EMFILE and friends: back off rather than spin.
                log(format!("forwarder: accept failed: {e}"));
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        tokio::spawn(async move {
            let Ok(mut outbound) = TcpStream::connect(target).await else {
                return;
            };
            let _ = inbound.set_nodelay(true);
            let _ = outbound.set_nodelay(true);
            let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn l(addr: &str, port: u16) -> Listener {
        Listener {
            addr: addr.parse().unwrap(),
            port,
            uid: 10001,
        }
    }

    fn at(s: &str) -> Option<SocketAddr> {
        Some(s.parse().unwrap())
    }

    #[test]
    fn one_other_port_is_the_target() {
        assert_eq!(
            forward_target(&[l("127.0.0.1", 5000)], 8080),
            at("127.0.0.1:5000")
        );
        assert_eq!(
            forward_target(&[l("0.0.0.0", 5000), l("::", 5000)], 8080),
            at("127.0.0.1:5000"),
            "v4 and v6 wildcards on one port are one place"
        );
        assert_eq!(forward_target(&[l("::1", 5000)], 8080), at("[::1]:5000"));
        assert_eq!(
            forward_target(&[l("172.18.0.5", 8080)], 8080),
            at("172.18.0.5:8080"),
            "$PORT bound to the container's address only is not reachable from the sidecar"
        );
    }

    #[test]
    fn no_target_when_the_app_serves_port_or_it_is_ambiguous() {
        assert_eq!(forward_target(&[l("0.0.0.0", 8080)], 8080), None);
        assert_eq!(
            forward_target(&[l("127.0.0.1", 8080), l("0.0.0.0", 9100)], 8080),
            None,
            "serving $PORT plus a metrics port needs nothing"
        );
        assert_eq!(
            forward_target(&[l("0.0.0.0", 5000), l("0.0.0.0", 9100)], 8080),
            None
        );
        assert_eq!(forward_target(&[], 8080), None);
    }

    #[test]
    fn decider_waits_for_a_stable_target() {
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        let mut d = Decider::new(Duration::from_secs(3));
        assert_eq!(d.observe(at("127.0.0.1:5000"), t0), None);
        assert_eq!(d.observe(at("127.0.0.1:5000"), t0 + 2 * s), None);
        assert_eq!(
            d.observe(at("127.0.0.1:5001"), t0 + 3 * s),
            None,
            "a change restarts the clock"
        );
        assert_eq!(d.observe(at("127.0.0.1:5001"), t0 + 5 * s), None);
        assert_eq!(d.observe(None, t0 + 6 * s), None, "gone: reset");
        assert_eq!(d.observe(at("127.0.0.1:5001"), t0 + 7 * s), None);
        assert_eq!(
            d.observe(at("127.0.0.1:5001"), t0 + 10 * s),
            at("127.0.0.1:5001")
        );
        let mut now = Decider::new(Duration::ZERO);
        assert_eq!(now.observe(at("127.0.0.1:1"), t0), at("127.0.0.1:1"));
    }

    #[tokio::test]
    async fn serve_copies_both_ways_and_survives_a_refused_connection() {
        let app = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let target = app.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (mut s, _) = app.accept().await.unwrap();
                tokio::spawn(async move {
                    let mut buf = [0u8; 5];
                    s.read_exact(&mut buf).await.unwrap();
                    s.write_all(&[b"echo:".as_slice(), &buf].concat())
                        .await
                        .unwrap();
                });
            }
        });
        let front = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let from = front.local_addr().unwrap();
        tokio::spawn(serve(front, target));
        for _ in 0..2 {
            let mut c = TcpStream::connect(from).await.unwrap();
            c.write_all(b"hello").await.unwrap();
            let mut got = Vec::new();
            c.read_to_end(&mut got).await.unwrap();
            assert_eq!(got, b"echo:hello");
        }

        // A target nobody listens on: the client's connection is closed, the forwarder lives on.
        let dead = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let dead_addr = dead.local_addr().unwrap();
        drop(dead);
        let front = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let from = front.local_addr().unwrap();
        tokio::spawn(serve(front, dead_addr));
        for _ in 0..2 {
            let mut c = TcpStream::connect(from).await.unwrap();
            let mut got = Vec::new();
            let _ = c.read_to_end(&mut got).await;
            assert!(got.is_empty());
        }
    }
}
