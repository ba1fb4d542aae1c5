//! Fuzz target: the egress rule parser (`egress:` items of the repos file and the admin API)
//! never panics, and what it accepts is what the sidecar's listener and the pod filter can act
//! on exactly: a lowercase DNS name or IPv4 address of bounded length without wildcards inside,
//! a port 1-65535, a text form that parses back to the same rule, and matching that agrees with
//! the rule (its own host matches; for `*.suffix` only names under the suffix do).
#![no_main]

use iac_core::egress::{EgressRule, parse_rules};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let items: Vec<&str> = text.split('\n').collect();
    let _ = parse_rules(&items);
    for item in items {
        let Ok(rule) = item.parse::<EgressRule>() else {
            continue;
        };
        assert!(rule.port != 0, "{item:?}: port 0 accepted");
        assert!(
            rule.host.len() <= 253
                && !rule.host.is_empty()
                && rule
                    .host
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.'),
            "{item:?}: host {:?} is not a lowercase DNS name",
            rule.host
        );
        let printed = rule.to_string();
        let again: EgressRule = printed
            .parse()
            .unwrap_or_else(|e| panic!("{item:?} parsed, its display {printed:?} does not: {e}"));
        assert_eq!(again, rule, "round trip of {item:?}");
        if rule.wildcard {
            assert!(!rule.matches(&rule.host, rule.port), "{item:?}: *.x matches x");
            assert!(
                rule.matches(&format!("a.{}", rule.host), rule.port),
                "{item:?}: *.x does not match a.x"
            );
            assert!(
                !rule.matches(&format!("a{}", rule.host), rule.port),
                "{item:?}: *.x matches ax"
            );
        } else {
            assert!(rule.matches(&rule.host, rule.port), "{item:?}: no self match");
            assert!(
                rule.matches(&rule.host.to_ascii_uppercase(), rule.port),
                "{item:?}: case matters"
            );
        }
        assert!(
            !rule.matches(&rule.host, rule.port.wrapping_add(1).max(1)) || rule.port == u16::MAX,
            "{item:?}: another port matches"
        );
    }
});
