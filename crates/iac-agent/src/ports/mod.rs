//! What the app listens on, read from the pod's network namespace as [`Listener`]s (LISTEN
//! sockets only): from the kernel's socket diagnostics ([`diag`]), or from `/proc/net/tcp` and
//! `/proc/net/tcp6` where that interface is unavailable. HealthCheck uses it to report the app's
//! ports and to hold a service with a declared port at "starting" until that port accepts
//! connections on loopback (where the sidecar sends traffic).
//!
//! No connection is ever made to the app for this: a probe connection would show up in the app's
//! own logs (and some servers log a bare connect as a bad request).

pub mod diag;

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// One listening TCP socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Listener {
    /// The local address the socket is bound to (`0.0.0.0`/`::` for all interfaces).
    pub addr: IpAddr,
    /// The TCP port it listens on.
    pub port: u16,
    /// The socket owner's uid (the `uid` column).
    pub uid: u32,
}

impl Listener {
    /// Whether a connection to `127.0.0.1:port` reaches this socket: bound to the IPv4 wildcard,
    /// to 127.0.0.1, to the IPv6 wildcard (dual-stack, the Linux default) or to ::ffff:127.0.0.1.
    pub fn reachable_from_ipv4_loopback(&self) -> bool {
        match self.addr {
            IpAddr::V4(a) => a.is_unspecified() || a == Ipv4Addr::LOCALHOST,
            IpAddr::V6(a) => a.is_unspecified() || a.to_ipv4_mapped() == Some(Ipv4Addr::LOCALHOST),
        }
    }
}

/// TCP state LISTEN as the kernel prints it (`st` column).
const TCP_LISTEN: &str = "0A";

/// Parses the text of `/proc/net/tcp` (`v6 = false`) or `/proc/net/tcp6` (`v6 = true`) and keeps
/// the LISTEN sockets. Lines that do not parse (the header, a future format) are skipped.
pub fn parse_proc_net_tcp(text: &str, v6: bool) -> Vec<Listener> {
    text.lines()
        .filter_map(|line| {
            let mut cols = line.split_whitespace();
            let _slot = cols.next()?;
            let local = cols.next()?;
            let _remote = cols.next()?;
            if cols.next()? != TCP_LISTEN {
                return None;
            }
            // tx:rx queue, tr:when, retransmits, then uid.
            let uid = cols.nth(3)?.parse().ok()?;
            let (ip_hex, port_hex) = local.split_once(':')?;
            let port = u16::from_str_radix(port_hex, 16).ok()?;
            let addr = if v6 {
                IpAddr::V6(parse_v6(ip_hex)?)
            } else {
                IpAddr::V4(parse_v4(ip_hex)?)
            };
            Some(Listener { addr, port, uid })
        })
        .collect()
}

/// The kernel prints the address as the `%08X` of the 32-bit word in host byte order.
fn parse_v4(hex: &str) -> Option<Ipv4Addr> {
    if hex.len() != 8 {
        return None;
    }
    let word = u32::from_str_radix(hex, 16).ok()?;
    Some(Ipv4Addr::from(word.to_ne_bytes()))
}

/// Four such words for IPv6.
fn parse_v6(hex: &str) -> Option<Ipv6Addr> {
    if hex.len() != 32 || !hex.is_ascii() {
        return None;
    }
    let mut bytes = [0u8; 16];
    for (i, chunk) in bytes.chunks_mut(4).enumerate() {
        let word = u32::from_str_radix(&hex[i * 8..i * 8 + 8], 16).ok()?;
        chunk.copy_from_slice(&word.to_ne_bytes());
    }
    Some(Ipv6Addr::from(bytes))
}

/// Every LISTEN socket of this network namespace: from [`diag::listeners`], or, when the
/// kernel refuses that (no `NETLINK_SOCK_DIAG`, e.g. under a sandboxing runtime), from
/// [`read_proc_listeners`] (said once on the agent's stderr). An error is the fallback's.
pub fn read_listeners() -> io::Result<Vec<Listener>> {
    static FELL_BACK: std::sync::Once = std::sync::Once::new();
    diag::listeners().or_else(|e| {
        FELL_BACK.call_once(|| {
            crate::log::log(format!(
                "socket diagnostics unavailable ({e}); reading /proc/net/tcp instead (slower)"
            ))
        });
        read_proc_listeners()
    })
}

/// Every LISTEN socket of this network namespace from `/proc/net/tcp` and `/proc/net/tcp6` (a
/// missing `/proc/net/tcp6`, IPv6 disabled, is not an error). Slow on a big host: see [`diag`].
pub fn read_proc_listeners() -> io::Result<Vec<Listener>> {
    let mut all = parse_proc_net_tcp(&std::fs::read_to_string("/proc/net/tcp")?, false);
    match std::fs::read_to_string("/proc/net/tcp6") {
        Ok(text) => all.extend(parse_proc_net_tcp(&text, true)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    Ok(all)
}

/// What HealthCheck reports about ports, computed from a set of listeners.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PortView {
    /// The app's listening ports, ascending, deduplicated.
    pub ports: Vec<u16>,
    /// The declared app port accepts connections on 127.0.0.1 (true when none is declared).
    pub app_port_open: bool,
}

/// Which sockets belong to the app: owned by `app_uid` when the agent runs the app as another
/// user (the sidecar and the agent run as root, so their sockets drop out), otherwise every socket
/// on a port not in `not_app` (the agent's own, the sidecar's).
pub fn app_listeners(
    listeners: &[Listener],
    app_uid: Option<u32>,
    not_app: &[u16],
) -> Vec<Listener> {
    listeners
        .iter()
        .filter(|l| app_uid.is_none_or(|uid| l.uid == uid) && !not_app.contains(&l.port))
        .copied()
        .collect()
}

/// What the forwarder is doing, for HealthCheck.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Forwarding {
    /// The declared port the agent listens on (on 127.0.0.1).
    pub from: u16,
    /// Where the app listens.
    pub to: SocketAddr,
}

/// The port view HealthCheck reports. `ready_port` is where the app must accept connections for
/// `app_port_open` — the declared port, or where the agent forwards it (see [`crate::forward`]),
/// whose own socket on `127.0.0.1:<declared port>` is then no app port.
pub fn port_view(
    listeners: &[Listener],
    app_uid: Option<u32>,
    own_port: u16,
    app_port: Option<u16>,
    forwarding: Option<Forwarding>,
) -> PortView {
    let app = app_listeners(listeners, app_uid, &[own_port]);
    let mut ports: Vec<u16> = app
        .iter()
        .filter(|l| {
            forwarding
                .is_none_or(|f| !(l.port == f.from && l.addr == IpAddr::V4(Ipv4Addr::LOCALHOST)))
        })
        .map(|l| l.port)
        .collect();
    ports.sort_unstable();
    ports.dedup();
    let app_port_open = match forwarding {
        Some(f) => app.iter().any(|l| {
            l.port == f.to.port() && (l.addr == f.to.ip() || l.reachable_from_ipv4_loopback())
        }),
        None => app_port.is_none_or(|p| {
            listeners
                .iter()
                .any(|l| l.port == p && l.reachable_from_ipv4_loopback())
        }),
    };
    PortView {
        ports,
        app_port_open,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Captured from a container: python -m http.server on 0.0.0.0:8000 (uid 10001), the agent on
    // 127.0.0.1:50051 (root), Envoy on 0.0.0.0:15000 and 127.0.0.1:15001 (root), and an
    // established connection that must be ignored.
    const TCP: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000:1F40 00000000:0000 0A 00000000:00000000 00:00000000 00000000 10001        0 41234 1 0000000000000000 100 0 0 10 0
   1: 0100007F:C383 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 41001 1 0000000000000000 100 0 0 10 0
   2: 00000000:3A98 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 41100 1 0000000000000000 100 0 0 10 0
   3: 0100007F:3A99 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 41101 1 0000000000000000 100 0 0 10 0
   4: 0100007F:C383 0100007F:D2F0 01 00000000:00000000 00:00000000 00000000     0        0 41300 1 0000000000000000 20 4 30 10 -1
";
    // gunicorn on [::]:5000 and a server on [::1]:7000, both uid 10001.
    const TCP6: &str = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000000000000:1388 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000 10001        0 51234 1 0000000000000000 100 0 0 10 0
   1: 00000000000000000000000001000000:1B58 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000 10001        0 51235 1 0000000000000000 100 0 0 10 0
";

    #[test]
    fn parses_listen_sockets_only() {
        let v4 = parse_proc_net_tcp(TCP, false);
        assert_eq!(v4.len(), 4, "{v4:?}");
        assert_eq!(
            v4[0],
            Listener {
                addr: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                port: 8000,
                uid: 10001
            }
        );
        assert_eq!(v4[1].addr, IpAddr::V4(Ipv4Addr::LOCALHOST));
        assert_eq!(v4[1].port, 50051);
        let v6 = parse_proc_net_tcp(TCP6, true);
        assert_eq!(v6[0].addr, IpAddr::V6(Ipv6Addr::UNSPECIFIED));
        assert_eq!(v6[0].port, 5000);
        assert_eq!(v6[1].addr, IpAddr::V6(Ipv6Addr::LOCALHOST));
    }

    #[test]
    fn garbage_is_skipped_not_fatal() {
        assert!(parse_proc_net_tcp("", false).is_empty());
        assert!(parse_proc_net_tcp("0: zz:1 00:0 0A a b c d 5", false).is_empty());
        assert!(parse_proc_net_tcp("0: 0100007F:FFFFF 0:0 0A a b c 0", false).is_empty());
        assert!(parse_proc_net_tcp("0: 0100007F:0050 0:0 0A a b c", false).is_empty());
        assert!(parse_proc_net_tcp("0: 0100007F:0050 0:0 0A a b c 0", true).is_empty());
    }

    #[test]
    fn loopback_reachability() {
        let l = |addr: IpAddr| Listener {
            addr,
            port: 1,
            uid: 0,
        };
        assert!(l(Ipv4Addr::UNSPECIFIED.into()).reachable_from_ipv4_loopback());
        assert!(l(Ipv4Addr::LOCALHOST.into()).reachable_from_ipv4_loopback());
        assert!(!l(Ipv4Addr::new(172, 18, 0, 2).into()).reachable_from_ipv4_loopback());
        assert!(l(Ipv6Addr::UNSPECIFIED.into()).reachable_from_ipv4_loopback());
        assert!(!l(Ipv6Addr::LOCALHOST.into()).reachable_from_ipv4_loopback());
        assert!(l(Ipv4Addr::LOCALHOST.to_ipv6_mapped().into()).reachable_from_ipv4_loopback());
    }

    #[test]
    fn view_filters_by_the_apps_user() {
        let mut all = parse_proc_net_tcp(TCP, false);
        all.extend(parse_proc_net_tcp(TCP6, true));
        let v = port_view(&all, Some(10001), 50051, Some(8000), None);
        assert_eq!(v.ports, [5000, 7000, 8000]);
        assert!(v.app_port_open);
        // Declared 7000 but only on ::1: Envoy's 127.0.0.1 would not reach it.
        assert!(!port_view(&all, Some(10001), 50051, Some(7000), None).app_port_open);
        assert!(!port_view(&all, Some(10001), 50051, Some(9999), None).app_port_open);
        // Without a separate user: everything but the agent's own port.
        let v = port_view(&all, None, 50051, None, None);
        assert_eq!(v.ports, [5000, 7000, 8000, 15000, 15001]);
        assert!(v.app_port_open, "no declared port is always open");
    }

    #[test]
    fn a_forwarded_port_is_ready_when_its_target_listens() {
        use crate::forward::Forwarding;
        let app = |addr: &str, port| Listener {
            addr: addr.parse().unwrap(),
            port,
            uid: 10001,
        };
        let agent = Listener {
            addr: Ipv4Addr::LOCALHOST.into(),
            port: 8080,
            uid: 0,
        };
        let fwd = |to: &str| {
            Some(Forwarding {
                from: 8080,
                to: to.parse().unwrap(),
            })
        };
        let all = [app("127.0.0.1", 5000), agent];
        let v = port_view(&all, Some(10001), 50051, Some(8080), fwd("127.0.0.1:5000"));
        assert_eq!(
            (v.ports.as_slice(), v.app_port_open),
            ([5000].as_slice(), true)
        );
        // Without a separate user the forwarder's own socket is still not an app port.
        let v = port_view(&all, None, 50051, Some(8080), fwd("127.0.0.1:5000"));
        assert_eq!(
            (v.ports.as_slice(), v.app_port_open),
            ([5000].as_slice(), true)
        );
        // The app closed its port: the forwarder's socket alone is not readiness.
        let v = port_view(&[agent], None, 50051, Some(8080), fwd("127.0.0.1:5000"));
        assert_eq!((v.ports.len(), v.app_port_open), (0, false));
        // $PORT on the container's own address, forwarded from loopback.
        let all = [app("172.18.0.5", 8080), agent];
        let v = port_view(&all, Some(10001), 50051, Some(8080), fwd("172.18.0.5:8080"));
        assert_eq!(
            (v.ports.as_slice(), v.app_port_open),
            ([8080].as_slice(), true)
        );
    }

    #[test]
    fn reads_this_hosts_table() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let all = read_listeners().unwrap();
        let me = unsafe { libc::geteuid() };
        assert!(
            all.iter()
                .any(|x| x.port == port && x.uid == me && x.reachable_from_ipv4_loopback()),
            "port {port} not found in {all:?}"
        );
    }
}
