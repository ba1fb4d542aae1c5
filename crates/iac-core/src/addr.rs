//! Published address → dialable address: the one helper every caller that reads a host port
//! binding (the docker provisioner's inspect, Terraform's `output -json`) goes through before
//! dialing it from the host.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// `addr` as the host dials it: an unspecified address (`0.0.0.0`, `::`, "every interface") is
/// reached through the loopback address of the same family; anything else is kept.
pub fn dialable(addr: SocketAddr) -> SocketAddr {
    let ip = match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, addr.port())
}

/// A host port binding as an engine or tool reports it (`host_ip` may be absent or empty, which
/// means every interface) as a dialable address; `None` when the IP does not parse or the port is
/// 0 (not published yet).
pub fn published(host_ip: Option<&str>, port: u16) -> Option<SocketAddr> {
    let ip: IpAddr = match host_ip.unwrap_or("") {
        "" => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        s => s.parse().ok()?,
    };
    (port != 0).then(|| dialable(SocketAddr::new(ip, port)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unspecified_becomes_loopback_of_the_same_family() {
        let cases = [
            (Some("0.0.0.0"), 32768, Some("127.0.0.1:32768")),
            (Some("::"), 32768, Some("[::1]:32768")),
            (Some(""), 80, Some("127.0.0.1:80")),
            (None, 80, Some("127.0.0.1:80")),
            (Some("127.0.0.1"), 15000, Some("127.0.0.1:15000")),
            (Some("10.1.2.3"), 15000, Some("10.1.2.3:15000")),
            (Some("0.0.0.0"), 0, None),
            (Some("not-an-ip"), 80, None),
        ];
        for (ip, port, want) in cases {
            let got = published(ip, port).map(|a| a.to_string());
            assert_eq!(got.as_deref(), want, "{ip:?}:{port}");
        }
    }
}
