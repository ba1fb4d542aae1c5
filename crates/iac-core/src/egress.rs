//! Egress allowlists: where an app may connect outside the mesh. Owns the rule syntax
//! (`host:port`, `*.suffix:port`), its validation (errors name the item), matching, the
//! project-wide switch ([`EgressMode`], `[mesh] egress`) and the per-service policy the plan
//! carries ([`EgressPolicy`]). Pure data: the Envoy renderer turns a policy into the sidecar's
//! egress listener, the planner into the pod filter's outbound chain and the app's proxy
//! variables.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The most rules one service may carry (project rules included).
pub const MAX_EGRESS_RULES: usize = 256;

/// The group id Envoy runs as in a pod whose egress is controlled: the pod's packet filter lets
/// only sockets of this group (and of Envoy's user) leave the pod (Istio's proxy uses 1337 too).
pub const ENVOY_EGRESS_GID: u32 = 1337;

/// One allowed destination: a host name (or IPv4 address) or every name under a suffix, on one
/// port.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EgressRule {
    /// The host (lowercase, no trailing dot), or the suffix after `*.` when `wildcard`.
    pub host: String,
    /// `*.host`: every name ending in `.host` (at any depth), not `host` itself.
    pub wildcard: bool,
    /// The destination port.
    pub port: u16,
}

impl EgressRule {
    /// Whether a connection to `host:port` is allowed by this rule (host compared without case
    /// and without a trailing dot).
    pub fn matches(&self, host: &str, port: u16) -> bool {
        if port != self.port {
            return false;
        }
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        if self.wildcard {
            host.len() > self.host.len() + 1
                && host.ends_with(&self.host)
                && host.as_bytes()[host.len() - self.host.len() - 1] == b'.'
        } else {
            host == self.host
        }
    }

    /// The `host:port` (or `*.suffix:port`) text of the rule.
    pub fn pattern(&self) -> String {
        self.to_string()
    }

    /// The host part as written (`api.example.com` or `*.example.com`).
    pub fn host_pattern(&self) -> String {
        if self.wildcard {
            format!("*.{}", self.host)
        } else {
            self.host.clone()
        }
    }
}

impl fmt::Display for EgressRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.host_pattern(), self.port)
    }
}

/// Why an egress item is refused: the item and what was expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("egress item {item:?}: expected {expected}")]
pub struct EgressRuleError {
    /// The item as given.
    pub item: String,
    /// What was expected instead.
    pub expected: String,
}

impl FromStr for EgressRule {
    type Err = EgressRuleError;

    fn from_str(item: &str) -> Result<Self, Self::Err> {
        let fail = |expected: &str| EgressRuleError {
            item: item.to_string(),
            expected: expected.to_string(),
        };
        let text = item.trim();
        if text.is_empty() {
            return Err(fail("host:port or *.suffix:port, got an empty item"));
        }
        if text.contains("://") || text.contains('/') {
            return Err(fail(
                "host:port or *.suffix:port without a scheme or path (e.g. api.example.com:443)",
            ));
        }
        let (host, port) = text.rsplit_once(':').ok_or_else(|| {
            fail("host:port or *.suffix:port with a port (e.g. api.example.com:443)")
        })?;
        let port: u16 = port
            .parse()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| fail("a port number 1-65535 after the last ':'"))?;
        if host.starts_with('[') || host.contains(':') {
            return Err(fail(
                "a host name or IPv4 address (IPv6 literals are not supported in egress rules)",
            ));
        }
        let (wildcard, name) = match host.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, host),
        };
        if name.contains('*') {
            return Err(fail(
                "'*' only as a whole first label ('*.example.com:443'); '*' alone would allow everything",
            ));
        }
        let name = name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase();
        if !valid_dns_name(&name) {
            return Err(fail(
                "a DNS name (labels of letters, digits and '-', 1-63 characters each, 253 in all) or an IPv4 address",
            ));
        }
        if wildcard && name.parse::<std::net::Ipv4Addr>().is_ok() {
            return Err(fail("a DNS suffix after '*.', not an IP address"));
        }
        Ok(EgressRule {
            host: name,
            wildcard,
            port,
        })
    }
}

fn valid_dns_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            let b = label.as_bytes();
            !b.is_empty()
                && b.len() <= 63
                && b[0] != b'-'
                && b[b.len() - 1] != b'-'
                && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-')
        })
}

impl Serialize for EgressRule {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for EgressRule {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// Parses a list of items, sorted and de-duplicated; the first bad item fails the list.
pub fn parse_rules<S: AsRef<str>>(items: &[S]) -> Result<Vec<EgressRule>, EgressRuleError> {
    let mut rules = items
        .iter()
        .map(|i| i.as_ref().parse())
        .collect::<Result<Vec<EgressRule>, _>>()?;
    rules.sort();
    rules.dedup();
    if rules.len() > MAX_EGRESS_RULES {
        return Err(EgressRuleError {
            item: items
                .last()
                .map(|i| i.as_ref().to_string())
                .unwrap_or_default(),
            expected: format!("at most {MAX_EGRESS_RULES} egress rules per service"),
        });
    }
    Ok(rules)
}

/// Project rules and a service's own rules, as one sorted, de-duplicated list.
pub fn merge_rules(project: &[EgressRule], service: &[EgressRule]) -> Vec<EgressRule> {
    let mut all: Vec<EgressRule> = project.iter().chain(service).cloned().collect();
    all.sort();
    all.dedup();
    all
}

/// The rule an endpoint URL (`http://collector:4318`, `https://otel.example.com`) needs: its
/// host and port (80/443 by scheme when it names none). `None` when the URL has no such host
/// (an IPv6 literal, no scheme).
pub fn rule_for_endpoint(url: &str) -> Option<EgressRule> {
    let (scheme, rest) = url.trim().split_once("://")?;
    let default_port = match scheme.to_ascii_lowercase().as_str() {
        "http" => 80,
        "https" => 443,
        _ => return None,
    };
    let authority = rest.split(['/', '?', '#']).next()?;
    let authority = authority.rsplit('@').next()?;
    let item = if authority.contains(':') {
        authority.to_string()
    } else {
        format!("{authority}:{default_port}")
    };
    item.parse().ok()
}

/// `[mesh] egress`: whether the allowlists are enforced.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EgressMode {
    /// Enforced: an app reaches only its allowlist, through its sidecar (the default).
    #[default]
    Closed,
    /// Today's open behaviour, kept for one release: apps reach anything directly, the lists are
    /// not enforced, and every deploy warns.
    Open,
}

/// What the warning of [`EgressMode::Open`] says on every deploy.
pub const OPEN_EGRESS_WARNING: &str = "[mesh] egress = \"open\": apps reach any host directly and egress lists are not enforced; this switch goes away in the next release (remove it to enforce the lists)";

/// The egress of one pod, as the plan carries it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", tag = "mode", content = "allow")]
pub enum EgressPolicy {
    /// Nothing filtered outbound (`[mesh] egress = "open"`; also what a plan built without an
    /// egress decision means). No egress listener, no proxy variables.
    #[default]
    Open,
    /// Only these destinations, through the sidecar's egress listener; everything else leaving
    /// the pod is refused (an empty list: nothing at all).
    Allow(Vec<EgressRule>),
}

impl EgressPolicy {
    /// The policy for `rules` under `mode`.
    pub fn new(mode: EgressMode, rules: Vec<EgressRule>) -> EgressPolicy {
        match mode {
            EgressMode::Open => EgressPolicy::Open,
            EgressMode::Closed => EgressPolicy::Allow(rules),
        }
    }

    /// Whether the pod's outbound traffic is controlled.
    pub fn is_controlled(&self) -> bool {
        matches!(self, EgressPolicy::Allow(_))
    }

    /// The allowed rules (none when open).
    pub fn rules(&self) -> &[EgressRule] {
        match self {
            EgressPolicy::Open => &[],
            EgressPolicy::Allow(r) => r,
        }
    }

    /// Whether `host:port` may be reached: always when open, else when a rule matches.
    pub fn allows(&self, host: &str, port: u16) -> bool {
        match self {
            EgressPolicy::Open => true,
            EgressPolicy::Allow(_) => self.matching_rule(host, port).is_some(),
        }
    }

    /// The first rule that admits `host:port` (none when open or when nothing does).
    pub fn matching_rule(&self, host: &str, port: u16) -> Option<&EgressRule> {
        self.rules().iter().find(|r| r.matches(host, port))
    }

    /// One line for `iac plan`: `open (not enforced)`, `nothing allowed`, or the rules.
    pub fn summary(&self) -> String {
        match self {
            EgressPolicy::Open => "open (not enforced)".into(),
            EgressPolicy::Allow(r) if r.is_empty() => "nothing allowed".into(),
            EgressPolicy::Allow(r) => r
                .iter()
                .map(EgressRule::to_string)
                .collect::<Vec<_>>()
                .join(", "),
        }
    }
}

/// The proxy variables an app gets when its egress is controlled: `HTTPS_PROXY`, `HTTP_PROXY`
/// (and lowercase) pointing at the sidecar's egress listener, and `NO_PROXY` (and lowercase)
/// for loopback — where the mesh's outbound listener is — and the project's service names.
pub fn proxy_env(egress_port: u16, services: &[String]) -> Vec<(String, String)> {
    let proxy = format!("http://127.0.0.1:{egress_port}");
    let mut no_proxy = vec!["localhost".to_string(), "127.0.0.1".into(), "::1".into()];
    no_proxy.extend(services.iter().cloned());
    let no_proxy = no_proxy.join(",");
    let mut env = Vec::new();
    for k in ["HTTPS_PROXY", "HTTP_PROXY"] {
        env.push((k.to_string(), proxy.clone()));
        env.push((k.to_ascii_lowercase(), proxy.clone()));
    }
    env.push(("NO_PROXY".into(), no_proxy.clone()));
    env.push(("no_proxy".into(), no_proxy));
    env
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(s: &str) -> EgressRule {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn items_parse_to_host_suffix_and_port() {
        assert_eq!(
            rule("API.Example.com.:443"),
            EgressRule {
                host: "api.example.com".into(),
                wildcard: false,
                port: 443
            }
        );
        let w = rule("*.pypi.org:443");
        assert!(w.wildcard);
        assert_eq!(w.host, "pypi.org");
        assert_eq!(w.to_string(), "*.pypi.org:443");
        assert_eq!(rule("10.1.2.3:8080").to_string(), "10.1.2.3:8080");
        assert_eq!(rule(" world-a:8000 ").to_string(), "world-a:8000");
    }

    #[test]
    fn bad_items_are_refused_naming_the_item_and_what_was_expected() {
        for (item, says) in [
            ("", "empty item"),
            ("example.com", "with a port"),
            ("example.com:0", "port number 1-65535"),
            ("example.com:65536", "port number 1-65535"),
            ("example.com:https", "port number 1-65535"),
            ("https://example.com:443", "without a scheme or path"),
            ("example.com:443/path", "without a scheme or path"),
            ("*:443", "'*' alone would allow everything"),
            ("*.:443", "a DNS name"),
            ("a.*.example.com:443", "'*' only as a whole first label"),
            ("*example.com:443", "'*' only as a whole first label"),
            ("-bad.example.com:443", "a DNS name"),
            ("exa_mple.com:443", "a DNS name"),
            ("[::1]:443", "IPv6 literals are not supported"),
            ("*.10.0.0.1:80", "not an IP address"),
        ] {
            let err = item.parse::<EgressRule>().unwrap_err().to_string();
            assert!(
                err.contains(&format!("{item:?}")) && err.contains(says),
                "{item:?} → {err}"
            );
        }
        let long = format!("{}.com:443", "a".repeat(64));
        assert!(long.parse::<EgressRule>().is_err());
    }

    #[test]
    fn exact_rules_match_only_their_host_and_port() {
        let r = rule("api.example.com:443");
        assert!(r.matches("api.example.com", 443));
        assert!(r.matches("API.example.com.", 443));
        assert!(!r.matches("api.example.com", 80));
        assert!(!r.matches("x.api.example.com", 443));
        assert!(!r.matches("api.example.com.evil.net", 443));
        assert!(!r.matches("evilapi.example.com", 443));
    }

    #[test]
    fn suffix_rules_match_names_under_the_suffix_never_the_apex_or_a_lookalike() {
        let r = rule("*.example.com:443");
        assert!(r.matches("a.example.com", 443));
        assert!(r.matches("a.b.example.com", 443));
        assert!(!r.matches("example.com", 443));
        assert!(!r.matches("badexample.com", 443));
        assert!(!r.matches(".example.com", 443));
        assert!(!r.matches("a.example.com", 80));
        assert!(!r.matches("a.example.com.evil.net", 443));
    }

    #[test]
    fn lists_are_sorted_deduplicated_and_merged() {
        let p = parse_rules(&["b.example:443", "a.example:443", "a.example:443"]).unwrap();
        assert_eq!(p.len(), 2);
        assert_eq!(p[0].to_string(), "a.example:443");
        let s = parse_rules(&["a.example:443", "c.example:80"]).unwrap();
        let all = merge_rules(&p, &s);
        assert_eq!(
            all.iter().map(|r| r.to_string()).collect::<Vec<_>>(),
            ["a.example:443", "b.example:443", "c.example:80"]
        );
        let err = parse_rules(&["ok.example:443", "nope"]).unwrap_err();
        assert_eq!(err.item, "nope");
        let many: Vec<String> = (0..=MAX_EGRESS_RULES)
            .map(|i| format!("h{i}.example:443"))
            .collect();
        assert!(
            parse_rules(&many)
                .unwrap_err()
                .to_string()
                .contains("at most")
        );
    }

    #[test]
    fn policies_allow_by_rule_and_open_allows_everything() {
        let p = EgressPolicy::new(EgressMode::Closed, vec![rule("*.pypi.org:443")]);
        assert!(p.is_controlled());
        assert_eq!(
            p.matching_rule("files.pypi.org", 443).unwrap().to_string(),
            "*.pypi.org:443"
        );
        assert!(p.allows("files.pypi.org", 443));
        assert!(!p.allows("pypi.org", 443));
        let none = EgressPolicy::new(EgressMode::Closed, vec![]);
        assert!(!none.allows("example.com", 443));
        assert_eq!(none.summary(), "nothing allowed");
        let open = EgressPolicy::new(EgressMode::Open, vec![rule("a.example:443")]);
        assert!(!open.is_controlled());
        assert!(open.allows("anything", 1));
        assert!(open.matching_rule("a.example", 443).is_none());
        assert_eq!(open.summary(), "open (not enforced)");
        let json = serde_json::to_string(&p).unwrap();
        assert_eq!(json, r#"{"mode":"allow","allow":["*.pypi.org:443"]}"#);
        assert_eq!(serde_json::from_str::<EgressPolicy>(&json).unwrap(), p);
        assert!(serde_json::from_str::<EgressRule>("\"nope\"").is_err());
    }

    #[test]
    fn an_endpoint_url_gives_its_host_and_port() {
        let r = |u: &str| rule_for_endpoint(u).map(|r| r.to_string());
        assert_eq!(
            r("http://172.17.0.1:4318").as_deref(),
            Some("172.17.0.1:4318")
        );
        assert_eq!(
            r("https://otel.example.com/v1").as_deref(),
            Some("otel.example.com:443")
        );
        assert_eq!(r("http://collector").as_deref(), Some("collector:80"));
        assert_eq!(r("collector:4317"), None);
        assert_eq!(r("http://[::1]:4318"), None);
    }

    #[test]
    fn apps_get_proxy_variables_in_both_cases_and_loopback_is_not_proxied() {
        let env: std::collections::BTreeMap<_, _> = proxy_env(15002, &["web".into(), "api".into()])
            .into_iter()
            .collect();
        for k in ["HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy"] {
            assert_eq!(env[k], "http://127.0.0.1:15002", "{k}");
        }
        assert_eq!(env["NO_PROXY"], "localhost,127.0.0.1,::1,web,api");
        assert_eq!(env["no_proxy"], env["NO_PROXY"]);
    }

    proptest::proptest! {
        /// The properties `fuzz/fuzz_targets/egress_rules.rs` checks, on generated items: an
        /// accepted rule is a lowercase DNS name or IPv4 address, prints back to itself, and
        /// matches exactly its host (or, for `*.suffix`, names under the suffix) on its port.
        #[test]
        fn accepted_rules_round_trip_and_match_only_themselves(
            item in "(\\*\\.)?[a-zA-Z0-9.*:/\\[\\]-]{0,30}(:[0-9]{0,6})?"
        ) {
            if let Ok(rule) = item.parse::<EgressRule>() {
                proptest::prop_assert!(rule.port != 0);
                proptest::prop_assert!(rule.host.bytes().all(|b| b.is_ascii_lowercase()
                    || b.is_ascii_digit() || b == b'-' || b == b'.'), "{:?}", rule);
                let again: EgressRule = rule.to_string().parse().unwrap();
                proptest::prop_assert_eq!(&again, &rule);
                let other_port = if rule.port == 1 { 2 } else { rule.port - 1 };
                if rule.wildcard {
                    proptest::prop_assert!(!rule.matches(&rule.host, rule.port));
                    let under = format!("a.{}", rule.host);
                    let glued = format!("a{}", rule.host);
                    proptest::prop_assert!(rule.matches(&under, rule.port));
                    proptest::prop_assert!(!rule.matches(&glued, rule.port));
                    proptest::prop_assert!(!rule.matches(&under, other_port));
                } else {
                    proptest::prop_assert!(rule.matches(&rule.host.to_ascii_uppercase(), rule.port));
                    proptest::prop_assert!(!rule.matches(&rule.host, other_port));
                }
            }
        }
    }
}
