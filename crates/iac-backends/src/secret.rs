//! [`Secret`]: a string that never shows itself. `Debug` and `Serialize` print `[redacted]`, so a
//! config struct holding one can be logged or dumped (`iac config show`) without leaking it; the
//! value is only reachable through [`Secret::expose`]. Deserializing the `[redacted]` placeholder
//! itself is refused, so a dumped config pasted back cannot silently set the key to that text.
//!
//! The one secret type of the backends: Supabase keys (`[supabase]`), forge tokens
//! (`[fetch.*] token`), Terraform's environment values (`[terraform.extra_env]`); [`REDACTED`]
//! is also the one marker printed for redacted values that are not a `Secret` (the prober's
//! identity).

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// What `Debug`/`Serialize` print instead of the value.
pub const REDACTED: &str = "[redacted]";

/// A secret string (API key, JWT secret, forge token).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps `value`.
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The secret itself. Callers must not log it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether the secret is the empty string.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(REDACTED)
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        if s == REDACTED {
            return Err(serde::de::Error::custom(
                "expected the secret value, found the \"[redacted]\" placeholder printed by `iac config show`",
            ));
        }
        Ok(Secret(s))
    }
}

impl From<String> for Secret {
    fn from(s: String) -> Self {
        Secret(s)
    }
}

impl From<&str> for Secret {
    fn from(s: &str) -> Self {
        Secret(s.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_and_serialize_redact() {
        let s = Secret::new("sb_secret_abc");
        assert_eq!(format!("{s:?}"), "[redacted]");
        assert_eq!(serde_json::to_string(&s).unwrap(), "\"[redacted]\"");
        assert_eq!(s.expose(), "sb_secret_abc");
    }

    #[test]
    fn placeholder_is_refused() {
        let err = serde_json::from_str::<Secret>("\"[redacted]\"").unwrap_err();
        assert!(err.to_string().contains("placeholder"), "{err}");
        let ok: Secret = serde_json::from_str("\"x\"").unwrap();
        assert_eq!(ok.expose(), "x");
    }
}
