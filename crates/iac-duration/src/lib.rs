//! The one duration style of iac: humantime strings (`"3s"`, `"500ms"`, `"5m"`, `"90d"`), in the
//! configuration (`iac-core` re-exports this crate as `iac_core::duration`; use it as
//! `#[serde(with = "iac_core::duration")]` on a `std::time::Duration` field) and in the agent's
//! flags (`--grace`, `--restart-backoff`, …), which is why it is a crate of its own: the agent is
//! kept small and does not depend on `iac-core`.
//!
//! Serialization prints the largest unit that divides the value exactly (`90d`, not humantime's
//! `2months 29days 13h 30m`), so `iac config show` output reads well and parses back unchanged.
//! A bare number is refused with a message naming the expected form: a `*_secs` key holding `45`
//! was the old style, and guessing its unit is how `health_deadline = 45` would have meant 45 ms.

#![warn(missing_docs)]

use std::time::Duration;

use serde::{Deserializer, Serializer};

/// `d` as the shortest exact humantime string: `"3s"`, `"1500ms"`, `"5m"`, `"90d"`, `"0s"`.
pub fn format(d: Duration) -> String {
    if d.is_zero() {
        return "0s".into();
    }
    let nanos = d.as_nanos();
    const UNITS: &[(u128, &str)] = &[
        (86_400_000_000_000, "d"),
        (3_600_000_000_000, "h"),
        (60_000_000_000, "m"),
        (1_000_000_000, "s"),
        (1_000_000, "ms"),
        (1_000, "us"),
        (1, "ns"),
    ];
    for (unit, name) in UNITS {
        if nanos.is_multiple_of(*unit) {
            return format!("{}{name}", nanos / unit);
        }
    }
    unreachable!("every duration is a whole number of nanoseconds")
}

/// Parses a humantime string (`"3s"`, `"1m 30s"`, `"250ms"`); the error says what was expected.
pub fn parse(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim()).map_err(|e| {
        format!("invalid duration {s:?} ({e}): expected a number with a unit, e.g. \"3s\", \"500ms\", \"5m\", \"90d\"")
    })
}

/// Serde `serialize_with` half of `#[serde(with = "iac_core::duration")]`.
pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format(*d))
}

/// Serde `deserialize_with` half of `#[serde(with = "iac_core::duration")]`.
pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    struct V;
    impl serde::de::Visitor<'_> for V {
        type Value = Duration;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a duration string such as \"3s\", \"500ms\", \"5m\" or \"90d\"")
        }
        fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Duration, E> {
            parse(s).map_err(E::custom)
        }
        fn visit_u64<E: serde::de::Error>(self, n: u64) -> Result<Duration, E> {
            Err(E::custom(format!(
                "a bare number ({n}) is not a duration: write it with a unit, e.g. \"{n}s\" or \"{n}ms\""
            )))
        }
        fn visit_i64<E: serde::de::Error>(self, n: i64) -> Result<Duration, E> {
            Err(E::custom(format!(
                "a bare number ({n}) is not a duration: write it with a unit, e.g. \"{n}s\" or \"{n}ms\""
            )))
        }
        fn visit_f64<E: serde::de::Error>(self, n: f64) -> Result<Duration, E> {
            Err(E::custom(format!(
                "a bare number ({n}) is not a duration: write it with a unit, e.g. \"{n}s\""
            )))
        }
    }
    d.deserialize_any(V)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    struct T {
        #[serde(with = "crate")]
        d: Duration,
    }

    #[test]
    fn formats_exactly_and_round_trips() {
        for (d, s) in [
            (Duration::from_secs(3), "3s"),
            (Duration::from_millis(1500), "1500ms"),
            (Duration::from_secs(300), "5m"),
            (Duration::from_secs(90 * 86_400), "90d"),
            (Duration::ZERO, "0s"),
        ] {
            assert_eq!(format(d), s);
            assert_eq!(parse(s).unwrap(), d);
        }
        let t: T = serde_json::from_str(r#"{"d":"1m 30s"}"#).unwrap();
        assert_eq!(t.d, Duration::from_secs(90));
        assert_eq!(serde_json::to_string(&t).unwrap(), r#"{"d":"90s"}"#);
    }

    #[test]
    fn bare_numbers_and_garbage_are_refused_with_the_expected_form() {
        let e = serde_json::from_str::<T>(r#"{"d":45}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("\"45s\""), "{e}");
        let e = serde_json::from_str::<T>(r#"{"d":"soon"}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("\"soon\"") && e.contains("\"3s\""), "{e}");
    }
}
