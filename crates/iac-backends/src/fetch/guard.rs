//! The network guard of fetches that must not reach private or local addresses (SSRF from the
//! admin API): [`NetGuard`] decides, [`GuardResolver`] enforces it on every DNS answer.
//!
//! When it applies: to fetches that came in through the admin API (`iac serve`, marked by
//! [`FetchOrigin::Api`] on the fetcher the API builds), and to every fetch with
//! `[fetch] refuse_private = "always"`. The CLI's own fetches are not guarded by default: the
//! operator typing a slug may reach whatever they can reach anyway (and tests use local servers).
//!
//! What is refused: loopback, unspecified, link-local, private (RFC 1918), CGNAT `100.64/10`,
//! benchmarking `198.18/15`, reserved `240/4` and `0/8`, broadcast, multicast, unique-local
//! `fc00::/7`, site-local `fec0::/10`, and IPv6 forms embedding an IPv4 address (IPv4-mapped
//! `::ffff:a.b.c.d`, IPv4-compatible `::a.b.c.d`, NAT64 `64:ff9b::/96`, 6to4 `2002::/16`),
//! which are judged by that IPv4 address.
//!
//! How, so that no check can be raced:
//! - names are filtered *after* resolution, by the HTTP client's own resolver
//!   ([`GuardResolver`], a `reqwest::dns::Resolve`): the addresses it hands to the connector are
//!   the only ones ever connected to, so DNS rebinding between a check and the connect cannot
//!   slip a private address through;
//! - IP literals never reach a resolver (the connector parses them itself), so every URL is
//!   checked with [`NetGuard::check_url`] before its request is sent: the archive download does
//!   so on every redirect hop (it follows redirects itself), and git fetches (gix over reqwest)
//!   are run with redirects off (`http.followRedirects` = none, set in the transport options
//!   after the git configuration is read, so no override can turn it back on) — so the one URL
//!   checked is the only one git connects to. gix's reqwest client is built through its
//!   `configure_client` hook with the same resolver;
//! - guarded clients ignore proxy environment variables (`no_proxy`): a proxy would connect on
//!   our behalf to wherever it is told, internal hosts included. An operator who needs a proxy
//!   for API-originated fetches cannot have one; CLI fetches keep using it.
//!
//! Refusals are uniform ([`FetchError::Refused`]: "refused: SLUG resolves to a private or local
//! address; allow it with `[fetch] allow_private_hosts`") and happen before any connection, so
//! the answer says nothing about whether a port is open.
//!
//! `[fetch] allow_private_hosts` lets operators reach an internal Git host. Entries:
//! - `HOST` — a DNS name, any port; `HOST:PORT` — that name on that port only (the name on
//!   another port is refused). A listed name is trusted whatever it resolves to (its DNS is the
//!   operator's);
//! - `IP` or `IP/PREFIX` (`10.0.0.0/8`, `fd00::/8`) — those addresses, any port, whether a URL
//!   names them literally or a name resolves to them;
//! - `IP:PORT` / `[IPv6]:PORT` — a URL naming that address literally, on that port.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use iac_core::FetchError;
use serde::{Deserialize, Serialize};

/// Which fetches refuse private and local addresses (`[fetch] refuse_private`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RefusePrivate {
    /// Only fetches that came in through the admin API (the default).
    #[default]
    Api,
    /// Every fetch, the CLI's too.
    Always,
}

/// Where a fetch was asked for. The admin API builds its fetcher with [`FetchOrigin::Api`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum FetchOrigin {
    /// The operator's command line.
    #[default]
    Cli,
    /// A request to `iac serve` (HTTP or gRPC).
    Api,
}

/// Text of the resolver's refusal: found in an HTTP client's error chain, it becomes
/// [`FetchError::Refused`].
pub const REFUSED_MARKER: &str = "resolves only to private or local addresses";

/// One `allow_private_hosts` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Allow {
    /// A DNS name (lower case, no trailing dot), on `port` or any.
    Host { name: String, port: Option<u16> },
    /// An address block (an address alone is a full-length prefix).
    Net { addr: IpAddr, prefix: u8 },
    /// One address named literally in a URL, on one port.
    Addr { ip: IpAddr, port: u16 },
}

/// One validated `[fetch] allow_private_hosts` entry (the formats are in the module doc); an
/// invalid one fails when the configuration is read, naming the entry and what was expected.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct AllowedHost {
    text: String,
    parsed: Allow,
}

impl AllowedHost {
    /// Parses one `allow_private_hosts` entry (formats in the module doc); the error says what was expected.
    pub fn new(entry: &str) -> Result<Self, String> {
        Ok(AllowedHost {
            text: entry.to_string(),
            parsed: parse_entry(entry)?,
        })
    }

    /// The entry as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl TryFrom<String> for AllowedHost {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        AllowedHost::new(&s)
    }
}

impl From<AllowedHost> for String {
    fn from(a: AllowedHost) -> String {
        a.text
    }
}

/// The refusal rule and the operator's allowlist.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetGuard {
    allow: Vec<Allow>,
}

fn entry_error(entry: &str, why: &str) -> String {
    format!(
        "[fetch] allow_private_hosts entry {entry:?}: {why}; expected HOST, HOST:PORT, IP, IP/PREFIX, IP:PORT or [IPv6]:PORT (e.g. \"git.internal:443\", \"10.0.0.0/8\")"
    )
}

fn parse_port(entry: &str, p: &str) -> Result<u16, String> {
    match p.parse::<u16>() {
        Ok(0) | Err(_) => Err(entry_error(
            entry,
            &format!("port {p:?} is not a number from 1 to 65535"),
        )),
        Ok(n) => Ok(n),
    }
}

fn parse_name(entry: &str, name: &str) -> Result<String, String> {
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    let ok = !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    if ok {
        Ok(name)
    } else {
        Err(entry_error(entry, "not a valid host name"))
    }
}

fn parse_entry(entry: &str) -> Result<Allow, String> {
    let e = entry.trim();
    if e.is_empty() {
        return Err(entry_error(entry, "empty"));
    }
    if e.contains("://") {
        return Err(entry_error(entry, "a URL, not a host"));
    }
    if let Some((addr, prefix)) = e.split_once('/') {
        let addr: IpAddr = addr
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse()
            .map_err(|_| entry_error(entry, &format!("{addr:?} is not an IP address")))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = prefix
            .parse::<u8>()
            .ok()
            .filter(|p| *p <= max)
            .ok_or_else(|| {
                entry_error(
                    entry,
                    &format!("prefix {prefix:?} is not a number from 0 to {max}"),
                )
            })?;
        return Ok(Allow::Net { addr, prefix });
    }
    if let Some(rest) = e.strip_prefix('[') {
        let (ip, port) = rest
            .split_once(']')
            .ok_or_else(|| entry_error(entry, "'[' without a closing ']'"))?;
        let ip: Ipv6Addr = ip
            .parse()
            .map_err(|_| entry_error(entry, &format!("{ip:?} is not an IPv6 address")))?;
        return match port {
            "" => Ok(Allow::Net {
                addr: IpAddr::V6(ip),
                prefix: 128,
            }),
            p => {
                let p = p
                    .strip_prefix(':')
                    .ok_or_else(|| entry_error(entry, "expected ':PORT' after ']'"))?;
                Ok(Allow::Addr {
                    ip: IpAddr::V6(ip),
                    port: parse_port(entry, p)?,
                })
            }
        };
    }
    if let Ok(ip) = e.parse::<IpAddr>() {
        let prefix = if ip.is_ipv4() { 32 } else { 128 };
        return Ok(Allow::Net { addr: ip, prefix });
    }
    match e.rsplit_once(':') {
        Some((host, port)) => {
            let port = parse_port(entry, port)?;
            if host.contains(':') {
                return Err(entry_error(
                    entry,
                    "an IPv6 address with a port needs brackets",
                ));
            }
            match host.parse::<Ipv4Addr>() {
                Ok(ip) => Ok(Allow::Addr {
                    ip: IpAddr::V4(ip),
                    port,
                }),
                Err(_) => Ok(Allow::Host {
                    name: parse_name(entry, host)?,
                    port: Some(port),
                }),
            }
        }
        None => Ok(Allow::Host {
            name: parse_name(entry, e)?,
            port: None,
        }),
    }
}

fn in_net(ip: IpAddr, net: IpAddr, prefix: u8) -> bool {
    match (canonical(ip), canonical(net)) {
        (IpAddr::V4(a), IpAddr::V4(n)) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
            u32::from(a) & mask == u32::from(n) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(n)) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
            u128::from(a) & mask == u128::from(n) & mask
        }
        _ => false,
    }
}

/// An IPv4-mapped IPv6 address as the IPv4 address it is (so `10.0.0.0/8` matches it).
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => ip,
        },
        v4 => v4,
    }
}

fn private_v4(ip: Ipv4Addr) -> bool {
    let [a, b, ..] = ip.octets();
    ip.is_loopback()
        || ip.is_unspecified()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_broadcast()
        || ip.is_multicast()
        || a == 0
        || a >= 240
        || (a == 100 && (64..128).contains(&b))
        || (a == 198 && (b == 18 || b == 19))
}

/// Whether `ip` is loopback, private, link-local or otherwise not a public unicast address
/// (the list is in the module doc).
pub fn is_private(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => private_v4(v4),
        IpAddr::V6(v6) => {
            let seg = v6.segments();
            let embedded_v4 =
                |hi: u16, lo: u16| Ipv4Addr::from((u32::from(hi) << 16) | u32::from(lo));
            if let Some(v4) = v6.to_ipv4_mapped() {
                return private_v4(v4);
            }
            // IPv4-compatible (::a.b.c.d, deprecated) and NAT64 (64:ff9b::/96).
            if seg[..6] == [0; 6] && !(v6.is_loopback() || v6.is_unspecified())
                || seg[..6] == [0x64, 0xff9b, 0, 0, 0, 0]
            {
                return private_v4(embedded_v4(seg[6], seg[7]));
            }
            // 6to4 (2002:a.b.c.d::/48).
            if seg[0] == 0x2002 {
                return private_v4(embedded_v4(seg[1], seg[2]));
            }
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (seg[0] & 0xfe00) == 0xfc00
                || (seg[0] & 0xffc0) == 0xfe80
                || (seg[0] & 0xffc0) == 0xfec0
        }
    }
}

impl NetGuard {
    /// The guard with the operator's allowlist.
    pub fn new(allow_private_hosts: &[AllowedHost]) -> Self {
        NetGuard {
            allow: allow_private_hosts
                .iter()
                .map(|a| a.parsed.clone())
                .collect(),
        }
    }

    /// Whether a resolved (or literal) address may be connected to on any port.
    fn allows_addr(&self, ip: IpAddr) -> bool {
        !is_private(ip)
            || self.allow.iter().any(|a| match a {
                Allow::Net { addr, prefix } => in_net(ip, *addr, *prefix),
                _ => false,
            })
    }

    /// Whether `name` is listed (on some port): its resolved addresses are not filtered.
    fn lists_name(&self, name: &str) -> bool {
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        self.allow
            .iter()
            .any(|a| matches!(a, Allow::Host { name: n, .. } if *n == name))
    }

    /// Checks a URL before its request is sent: an IP literal must be public or allowed (with
    /// its port), a listed name must be on a listed port. Names otherwise pass here and are
    /// filtered by [`GuardResolver`] when they are resolved. Non-HTTP URLs (`file://` mirrors
    /// from the operator's own configuration) are not network fetches and pass.
    pub fn check_url(&self, url: &str) -> Result<(), FetchError> {
        let refused = || FetchError::Refused {
            slug: url.to_string(),
        };
        let parsed = reqwest::Url::parse(url).map_err(|_| refused())?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Ok(());
        }
        let port = parsed.port_or_known_default().ok_or_else(refused)?;
        let host = parsed.host_str().ok_or_else(refused)?;
        // The URL parser has already normalised IPv4 forms (`2130706433`, `0x7f.1`) to dotted
        // quads and bracketed IPv6.
        let ip = match host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
        {
            Ok(ip) => ip,
            Err(_) => {
                let name = host.trim_end_matches('.').to_ascii_lowercase();
                let ports: Vec<Option<u16>> = self
                    .allow
                    .iter()
                    .filter_map(|a| match a {
                        Allow::Host { name: n, port } if *n == name => Some(*port),
                        _ => None,
                    })
                    .collect();
                return if ports.is_empty() || ports.iter().any(|p| p.is_none_or(|p| p == port)) {
                    Ok(())
                } else {
                    Err(refused())
                };
            }
        };
        let literal_allowed = self
            .allow
            .iter()
            .any(|a| matches!(a, Allow::Addr { ip: i, port: p } if canonical(*i) == canonical(ip) && *p == port));
        if self.allows_addr(ip) || literal_allowed {
            Ok(())
        } else {
            Err(refused())
        }
    }

    /// The resolver enforcing this guard on every name a client resolves; it sets `refused`
    /// (when given) each time it refuses a name, so a caller whose library flattens errors
    /// (gix) can still tell a refusal from a network failure.
    pub fn resolver(self: &Arc<Self>, refused: Option<Arc<AtomicBool>>) -> Arc<GuardResolver> {
        Arc::new(GuardResolver {
            guard: self.clone(),
            refused,
        })
    }

    /// Applies the guard to an async reqwest client (the archive download's): the filtering
    /// resolver and no proxy.
    pub fn configure_async(
        self: &Arc<Self>,
        builder: reqwest::ClientBuilder,
    ) -> reqwest::ClientBuilder {
        builder.dns_resolver(self.resolver(None)).no_proxy()
    }
}

/// Whether an error message (with its sources, as the archive download prints them) is the
/// guard's refusal.
pub fn is_refusal(message: &str) -> bool {
    message.contains(REFUSED_MARKER)
}

/// The resolver's refusal (its text holds [`REFUSED_MARKER`]).
#[derive(Debug)]
struct RefusedName(String);

impl std::fmt::Display for RefusedName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {REFUSED_MARKER}", self.0)
    }
}

impl std::error::Error for RefusedName {}

/// A `reqwest::dns::Resolve` that resolves with the system resolver and drops every address
/// [`NetGuard`] refuses; a name left with none fails with [`REFUSED_MARKER`].
#[derive(Debug, Clone)]
pub struct GuardResolver {
    guard: Arc<NetGuard>,
    refused: Option<Arc<AtomicBool>>,
}

impl reqwest::dns::Resolve for GuardResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let guard = self.guard.clone();
        let refused = self.refused.clone();
        let host = name.as_str().to_string();
        Box::pin(async move {
            let found: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let listed = guard.lists_name(&host);
            let kept: Vec<SocketAddr> = found
                .into_iter()
                .filter(|a| listed || guard.allows_addr(a.ip()))
                .collect();
            if kept.is_empty() {
                if let Some(flag) = refused {
                    flag.store(true, Ordering::SeqCst);
                }
                return Err(Box::new(RefusedName(host)) as Box<dyn std::error::Error + Send + Sync>);
            }
            Ok(Box::new(kept.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

#[cfg(test)]
mod tests;
