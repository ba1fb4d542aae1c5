//! The edge: how a person on the host reaches a service's app without a client certificate.
//! [`Expose`] is the repos file's `expose:` setting, [`EdgeBind`] the host address its sidecar's
//! plain-HTTP edge listener is published on, [`edge_url`] the URL a report shows for it.
//!
//! | repos file | meaning |
//! |---|---|
//! | (absent) | [`Expose::Auto`]: an edge on `127.0.0.1:<automatic port>` when the service has an HTTP port (a `PORT` in `env`, or one its start command serves), none otherwise |
//! | `expose: true` | an edge on `127.0.0.1:<automatic port>`; the app is expected on `$PORT` |
//! | `expose: 8081` | an edge on `127.0.0.1:8081` |
//! | `expose: "0.0.0.0:8081"`, `"[::1]:0"` | an edge on that address (port 0: automatic) |
//! | `expose: false` | no edge: the app is reachable only through the mesh |
//!
//! The edge reaches only the app (never the agent's ControlPlane API), and the pod admits it only
//! from the host: peers on the project network still need their certificate on the mesh port.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The identity the app sees in `x-forwarded-client-cert` for requests that came in through the
/// edge (no certificate was presented; iac never issues a certificate with this URI).
pub const INGRESS_URI: &str = "spiffe://iac/ingress";

/// Where an edge listener is published on the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct EdgeBind {
    /// Host address (`127.0.0.1` unless the operator chose another).
    pub host: IpAddr,
    /// Host port; `None`: an automatic (ephemeral) port picked by the engine.
    pub port: Option<u16>,
}

impl EdgeBind {
    /// `127.0.0.1`, automatic port.
    pub fn loopback() -> EdgeBind {
        EdgeBind {
            host: IpAddr::V4(Ipv4Addr::LOCALHOST),
            port: None,
        }
    }

    /// Whether only processes on this host can connect.
    pub fn is_loopback(&self) -> bool {
        self.host.is_loopback()
    }
}

impl std::fmt::Display for EdgeBind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.port {
            Some(p) => write!(f, "{}", SocketAddr::new(self.host, p)),
            None => write!(f, "{}", SocketAddr::new(self.host, 0)),
        }
    }
}

/// A service's `expose:` setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Expose {
    /// Not set: an edge on loopback when the service has an HTTP port.
    #[default]
    Auto,
    /// `false`: no edge.
    Off,
    /// `true`, a port, or an address: an edge there.
    On(EdgeBind),
}

impl Expose {
    /// The edge this setting asks for, given whether the service has an HTTP port.
    pub fn edge(&self, has_http_port: bool) -> Option<EdgeBind> {
        match self {
            Expose::Auto if has_http_port => Some(EdgeBind::loopback()),
            Expose::Auto | Expose::Off => None,
            Expose::On(bind) => Some(*bind),
        }
    }

    /// True when the repos file said nothing (an edge only if the service has an HTTP port).
    pub fn is_auto(&self) -> bool {
        matches!(self, Expose::Auto)
    }

    /// Reads an `expose:` value (JSON data model, as the repos file parser sees it). The error
    /// says what was expected.
    pub fn from_value(v: &serde_json::Value) -> Result<Expose, String> {
        use serde_json::Value;
        const EXPECTED: &str = "`expose` to be true, false, a host port (1-65535) or a host address \"IP:PORT\" (port 0: automatic)";
        match v {
            Value::Null => Ok(Expose::Auto),
            Value::Bool(false) => Ok(Expose::Off),
            Value::Bool(true) => Ok(Expose::On(EdgeBind::loopback())),
            Value::Number(n) => {
                // 8081.0 is an integer too (JSON Schema says so).
                let whole = n.as_u64().or_else(|| {
                    n.as_f64()
                        .filter(|f| f.fract() == 0.0 && *f >= 0.0 && *f <= 65535.0)
                        .map(|f| f as u64)
                });
                match whole {
                    Some(p @ 1..=65535) => Ok(Expose::On(EdgeBind {
                        port: Some(p as u16),
                        ..EdgeBind::loopback()
                    })),
                    Some(0) => Err(format!(
                        "{EXPECTED}; got 0 (write `expose: true` for an automatic port)"
                    )),
                    _ => Err(format!("{EXPECTED}; got {n}")),
                }
            }
            Value::String(s) => {
                // Written canonically (no sign, no leading zeros), so one value has one spelling.
                if let Ok(p) = s.parse::<u16>()
                    && p.to_string() == *s
                {
                    return Expose::from_value(&Value::from(p));
                }
                let addr: SocketAddr = s
                    .parse()
                    .ok()
                    .filter(|a: &SocketAddr| a.to_string() == *s)
                    .ok_or_else(|| {
                        format!("{EXPECTED}; got {s:?}, which is not an address like \"127.0.0.1:8081\" or \"[::1]:8081\"")
                    })?;
                if addr.ip().is_multicast() {
                    return Err(format!("{EXPECTED}; got multicast address {s:?}"));
                }
                Ok(Expose::On(EdgeBind {
                    host: addr.ip(),
                    port: (addr.port() != 0).then_some(addr.port()),
                }))
            }
            Value::Array(_) => Err(format!("{EXPECTED}; got a list")),
            Value::Object(_) => Err(format!("{EXPECTED}; got a map")),
        }
    }

    /// The value a repos file would hold for this setting (`None` for [`Expose::Auto`]).
    pub fn to_value(&self) -> Option<serde_json::Value> {
        use serde_json::Value;
        match self {
            Expose::Auto => None,
            Expose::Off => Some(Value::Bool(false)),
            Expose::On(b) if b.is_loopback() && b.host == IpAddr::V4(Ipv4Addr::LOCALHOST) => {
                Some(match b.port {
                    None => Value::Bool(true),
                    Some(p) => Value::from(p),
                })
            }
            Expose::On(b) => Some(Value::String(b.to_string())),
        }
    }
}

impl Serialize for Expose {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.to_value().serialize(s)
    }
}

impl<'de> Deserialize<'de> for Expose {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Expose, D::Error> {
        let v = serde_json::Value::deserialize(d)?;
        Expose::from_value(&v).map_err(serde::de::Error::custom)
    }
}

/// The URL a person opens for an edge published at `addr`: an unspecified address (`0.0.0.0`,
/// `::`) is reached through the host's loopback.
pub fn edge_url(addr: SocketAddr) -> String {
    format!("http://{}/", crate::addr::dialable(addr))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn every_form_reads_as_documented() {
        let lo = EdgeBind::loopback();
        let cases = [
            (json!(null), Expose::Auto),
            (json!(false), Expose::Off),
            (json!(true), Expose::On(lo)),
            (
                json!(8081),
                Expose::On(EdgeBind {
                    port: Some(8081),
                    ..lo
                }),
            ),
            (
                json!(8083.0),
                Expose::On(EdgeBind {
                    port: Some(8083),
                    ..lo
                }),
            ),
            (
                json!("8082"),
                Expose::On(EdgeBind {
                    port: Some(8082),
                    ..lo
                }),
            ),
            (
                json!("0.0.0.0:9000"),
                Expose::On(EdgeBind {
                    host: "0.0.0.0".parse().unwrap(),
                    port: Some(9000),
                }),
            ),
            (
                json!("[::1]:0"),
                Expose::On(EdgeBind {
                    host: "::1".parse().unwrap(),
                    port: None,
                }),
            ),
        ];
        for (value, want) in cases {
            assert_eq!(Expose::from_value(&value), Ok(want), "{value}");
            // What serializes reads back the same.
            let back = want.to_value().unwrap_or(json!(null));
            assert_eq!(Expose::from_value(&back), Ok(want), "{back}");
        }
    }

    #[test]
    fn bad_values_say_what_was_expected() {
        for (value, needle) in [
            (json!(0), "expose: true"),
            (json!(70000), "70000"),
            (json!(-1), "-1"),
            (json!("localhost:80"), "not an address"),
            (json!(" 8081"), "not an address"),
            (json!("+8081"), "not an address"),
            (json!("127.0.0.1:08081"), "not an address"),
            (json!(8081.5), "8081.5"),
            (json!("224.0.0.1:80"), "multicast"),
            (json!([8081]), "a list"),
            (json!({"port": 1}), "a map"),
        ] {
            let e = Expose::from_value(&value).unwrap_err();
            assert!(e.contains("`expose` to be"), "{e}");
            assert!(e.contains(needle), "{value}: {e}");
        }
    }

    #[test]
    fn auto_exposes_only_http_services() {
        assert_eq!(Expose::Auto.edge(true), Some(EdgeBind::loopback()));
        assert_eq!(Expose::Auto.edge(false), None);
        assert_eq!(Expose::Off.edge(true), None);
        let fixed = EdgeBind {
            port: Some(8081),
            ..EdgeBind::loopback()
        };
        assert_eq!(Expose::On(fixed).edge(false), Some(fixed));
    }

    #[test]
    fn urls_point_at_a_reachable_host() {
        assert_eq!(
            edge_url("127.0.0.1:49153".parse().unwrap()),
            "http://127.0.0.1:49153/"
        );
        assert_eq!(
            edge_url("0.0.0.0:8081".parse().unwrap()),
            "http://127.0.0.1:8081/"
        );
        assert_eq!(edge_url("[::]:8081".parse().unwrap()), "http://[::1]:8081/");
        assert_eq!(
            edge_url("192.0.2.7:80".parse().unwrap()),
            "http://192.0.2.7:80/"
        );
    }
}
