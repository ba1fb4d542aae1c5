//! The pod's listening TCP sockets from the kernel's socket-diagnostics netlink interface
//! (`NETLINK_SOCK_DIAG`, what `ss -lt` uses), asked for LISTEN sockets only.
//!
//! Why not `/proc/net/tcp`: reading it walks the kernel's whole TCP hash table, which is sized by
//! the host's memory and shared by every network namespace, whatever this pod holds. On a 24 GiB
//! host one read of `/proc/net/tcp` plus `/proc/net/tcp6` cost 7 ms of kernel CPU for a pod with
//! seven sockets, and HealthCheck reads them on every ask (the deploy's prober asks a starting
//! service ten times a second). A LISTEN-only dump skips the connection table and walks the
//! listening one: the same answer in about 50 µs. [`super::read_listeners`] falls back to
//! `/proc/net/tcp` where this interface is unavailable.
//!
//! The netlink socket is bound in the agent's own network namespace (the pod's), so only the
//! pod's sockets are listed, as with `/proc/net/tcp` there.

use std::io;
use std::os::fd::AsRawFd;
use std::time::Duration;

use netlink_packet_core::{
    NLM_F_DUMP, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_sock_diag::{
    AF_INET, AF_INET6, IPPROTO_TCP, SockDiagMessage, TCP_LISTEN,
    inet::{ExtensionFlags, InetRequest, SocketId, StateFlags},
};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_SOCK_DIAG};

use super::Listener;

/// Every LISTEN TCP socket of this network namespace, IPv4 then IPv6. A kernel without IPv6
/// (no AF_INET6 diagnostics handler) has no IPv6 sockets, which is not an error.
pub fn listeners() -> io::Result<Vec<Listener>> {
    let mut socket = Socket::new(NETLINK_SOCK_DIAG)?;
    set_receive_timeout(&socket, RECEIVE_TIMEOUT)?;
    socket.bind_auto()?;
    socket.connect(&SocketAddr::new(0, 0))?;
    let mut all = dump(&socket, AF_INET, 1)?;
    match dump(&socket, AF_INET6, 2) {
        Ok(v6) => all.extend(v6),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
        Err(e) => return Err(e),
    }
    Ok(all)
}

/// The kernel answers a dump at once; should it not, HealthCheck (which runs on the agent's one
/// thread) gives up after this and falls back instead of hanging.
const RECEIVE_TIMEOUT: Duration = Duration::from_secs(1);

fn set_receive_timeout(socket: &Socket, timeout: Duration) -> io::Result<()> {
    let tv = libc::timeval {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_usec: timeout.subsec_micros() as libc::suseconds_t,
    };
    // SAFETY: a valid socket descriptor and a timeval of the size passed.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&tv as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// One `SOCK_DIAG_BY_FAMILY` dump of `family`'s TCP sockets in state LISTEN.
fn dump(socket: &Socket, family: u8, seq: u32) -> io::Result<Vec<Listener>> {
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | NLM_F_DUMP;
    header.sequence_number = seq;
    let socket_id = if family == AF_INET {
        SocketId::new_v4()
    } else {
        SocketId::new_v6()
    };
    let mut request = NetlinkMessage::new(
        header,
        SockDiagMessage::InetRequest(InetRequest {
            family,
            protocol: IPPROTO_TCP,
            extensions: ExtensionFlags::empty(),
            states: StateFlags::LISTEN,
            socket_id,
        })
        .into(),
    );
    request.finalize();
    let mut out = vec![0; request.buffer_len()];
    request.serialize(&mut out);
    socket.send(&out, 0)?;

    let mut found = Vec::new();
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        let n = socket.recv(&mut &mut buf[..], 0)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "sock_diag: the kernel closed the dump without NLMSG_DONE",
            ));
        }
        if parse_datagram(&buf[..n], seq, &mut found)? {
            return Ok(found);
        }
    }
}

/// Parses one datagram of a dump answering request `seq` into `found`. Returns true once the
/// dump's `NLMSG_DONE` was seen; a netlink error message is the request's error.
fn parse_datagram(mut data: &[u8], seq: u32, found: &mut Vec<Listener>) -> io::Result<bool> {
    while !data.is_empty() {
        let msg = NetlinkMessage::<SockDiagMessage>::deserialize(data)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("sock_diag: {e}")))?;
        let len = msg.header.length as usize;
        if msg.header.sequence_number == seq {
            match msg.payload {
                NetlinkPayload::InnerMessage(SockDiagMessage::InetResponse(r))
                    if r.header.state == TCP_LISTEN =>
                {
                    found.push(Listener {
                        addr: r.header.socket_id.source_address,
                        port: r.header.socket_id.source_port,
                        uid: r.header.uid,
                    });
                }
                NetlinkPayload::Done(_) => return Ok(true),
                NetlinkPayload::Error(e) if e.code.is_some() => return Err(e.to_io()),
                _ => {}
            }
        }
        // Messages are 4-byte aligned within a datagram.
        let step = (len + 3) & !3;
        if len == 0 || step >= data.len() {
            break;
        }
        data = &data[step..];
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, TcpListener};

    #[test]
    fn lists_this_namespaces_listeners_with_owner_and_family() {
        let v4 = TcpListener::bind("127.0.0.1:0").unwrap();
        let v4_port = v4.local_addr().unwrap().port();
        let me = unsafe { libc::geteuid() };
        // A connected pair: its sockets are not LISTEN and must not be listed.
        let _client = std::net::TcpStream::connect(("127.0.0.1", v4_port)).unwrap();
        let all = listeners().unwrap();
        let mine: Vec<&Listener> = all.iter().filter(|l| l.port == v4_port).collect();
        assert_eq!(
            mine,
            [&Listener {
                addr: IpAddr::V4(Ipv4Addr::LOCALHOST),
                port: v4_port,
                uid: me
            }],
            "{all:?}"
        );
        // IPv6 where the host has it.
        if let Ok(v6) = TcpListener::bind("[::1]:0") {
            let port = v6.local_addr().unwrap().port();
            let all = listeners().unwrap();
            assert!(
                all.contains(&Listener {
                    addr: IpAddr::V6(Ipv6Addr::LOCALHOST),
                    port,
                    uid: me
                }),
                "[::1]:{port} not in {all:?}"
            );
        }
    }

    #[test]
    fn a_closed_listener_is_gone() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        assert!(listeners().unwrap().iter().any(|x| x.port == port));
        drop(l);
        assert!(!listeners().unwrap().iter().any(|x| x.port == port));
    }

    #[test]
    fn agrees_with_proc_net_tcp_on_our_own_sockets() {
        let held: Vec<TcpListener> = (0..3)
            .map(|_| TcpListener::bind("0.0.0.0:0").unwrap())
            .collect();
        let ports: Vec<u16> = held
            .iter()
            .map(|l| l.local_addr().unwrap().port())
            .collect();
        let pick = |all: Vec<Listener>| {
            let mut v: Vec<Listener> = all
                .into_iter()
                .filter(|l| ports.contains(&l.port))
                .collect();
            v.sort_by_key(|l| l.port);
            v
        };
        let from_diag = pick(listeners().unwrap());
        let from_proc = pick(super::super::read_proc_listeners().unwrap());
        assert_eq!(from_diag.len(), 3, "{from_diag:?}");
        assert_eq!(from_diag, from_proc);
    }

    #[test]
    fn a_silent_kernel_is_an_error_after_the_timeout_not_a_hang() {
        let mut socket = Socket::new(NETLINK_SOCK_DIAG).unwrap();
        set_receive_timeout(&socket, Duration::from_millis(50)).unwrap();
        socket.bind_auto().unwrap();
        // Nothing was asked, so nothing comes.
        let started = std::time::Instant::now();
        let mut buf = vec![0u8; 1024];
        let e = socket.recv(&mut &mut buf[..], 0).unwrap_err();
        assert!(
            matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ),
            "{e:?}"
        );
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    /// A netlink message: the 16-byte header (length, type, flags, sequence, port id) and
    /// the body: a 32-bit code (an error's negated errno, 0 in NLMSG_DONE) and `rest`.
    fn nlmsg(kind: u16, flags: u16, seq: u32, code: i32, rest: &[u8]) -> Vec<u8> {
        let len = 16 + 4 + rest.len() as u32;
        let mut m = Vec::new();
        m.extend_from_slice(&len.to_ne_bytes());
        m.extend_from_slice(&kind.to_ne_bytes());
        m.extend_from_slice(&flags.to_ne_bytes());
        m.extend_from_slice(&seq.to_ne_bytes());
        m.extend_from_slice(&0u32.to_ne_bytes());
        m.extend_from_slice(&code.to_ne_bytes());
        m.extend_from_slice(rest);
        m
    }

    #[test]
    fn a_netlink_error_is_the_requests_error_and_other_sequences_are_skipped() {
        // NLMSG_ERROR (type 2) for seq 7 carrying -EPERM, then the original header (16 bytes).
        let err = nlmsg(2, 0, 7, -libc::EPERM, &[0u8; 16]);
        let mut found = Vec::new();
        let e = parse_datagram(&err, 7, &mut found).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EPERM));
        // The same error answering another request is not ours.
        assert!(!parse_datagram(&err, 8, &mut found).unwrap());
        // NLMSG_DONE (type 3) ends the dump.
        let done = nlmsg(3, 2, 7, 0, &[]);
        assert!(parse_datagram(&done, 7, &mut found).unwrap());
        assert!(found.is_empty());
        // Garbage is an error, not a panic.
        assert_eq!(
            parse_datagram(&[1, 2, 3], 7, &mut found)
                .unwrap_err()
                .kind(),
            io::ErrorKind::InvalidData
        );
    }
}
