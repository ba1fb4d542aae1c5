//! Validated names: [`ServiceName`] (a DNS label) and [`ProjectName`], plus the deterministic
//! derivation of a service name from a repository name.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::NameError;

/// Longest DNS label.
pub const MAX_LABEL: usize = 63;

/// A service name: a DNS label (`[a-z0-9]([a-z0-9-]*[a-z0-9])?`, at most 63 bytes). It is the
/// container's network alias, the Envoy cluster name and the SAN of the service's certificate.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ServiceName(String);

impl ServiceName {
    /// Validates `s` as given (no normalisation).
    pub fn new(s: &str) -> Result<Self, NameError> {
        validate_label(s).map(|()| Self(s.to_string()))
    }

    /// Derives a DNS label from an arbitrary repository name: lower-cased, runs of characters
    /// outside `[a-z0-9]` become one `-`, a trailing `.git` is dropped, trimmed of `-`, cut to 63.
    /// Returns `None` when nothing usable is left.
    pub fn derive(raw: &str) -> Option<Self> {
        let raw = raw.strip_suffix(".git").unwrap_or(raw);
        let mut out = String::with_capacity(raw.len());
        for c in raw.chars().flat_map(char::to_lowercase) {
            if c.is_ascii_lowercase() || c.is_ascii_digit() {
                out.push(c);
            } else if !out.ends_with('-') {
                out.push('-');
            }
        }
        let mut s = out.trim_matches('-').to_string();
        if s.len() > MAX_LABEL {
            s.truncate(MAX_LABEL);
            s = s.trim_end_matches('-').to_string();
        }
        if s.is_empty() { None } else { Some(Self(s)) }
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ServiceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for ServiceName {
    type Error = NameError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::new(&s)
    }
}

impl From<ServiceName> for String {
    fn from(n: ServiceName) -> String {
        n.0
    }
}

impl AsRef<str> for ServiceName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

/// A project name: same rules as a DNS label (it prefixes container names and labels objects).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ProjectName(String);

impl ProjectName {
    /// Checks `s` is a DNS label (lowercase letters, digits, `-`, at most 63).
    pub fn new(s: &str) -> Result<Self, NameError> {
        validate_label(s).map(|()| Self(s.to_string()))
    }

    /// A project name from a directory name (normalised like [`ServiceName::derive`]), or `iac`.
    pub fn from_dir_name(raw: &str) -> Self {
        ServiceName::derive(raw).map_or_else(|| Self("iac".into()), |n| Self(n.0))
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ProjectName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for ProjectName {
    type Error = NameError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::new(&s)
    }
}

impl From<ProjectName> for String {
    fn from(n: ProjectName) -> String {
        n.0
    }
}

fn validate_label(s: &str) -> Result<(), NameError> {
    let bad = |why: &str| NameError {
        name: s.to_string(),
        why: why.to_string(),
    };
    if s.is_empty() {
        return Err(bad("is empty"));
    }
    if s.len() > MAX_LABEL {
        return Err(bad("is longer than 63 characters"));
    }
    if !s
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Err(bad("may only contain a-z, 0-9 and '-'"));
    }
    if s.starts_with('-') || s.ends_with('-') {
        return Err(bad("must start and end with a letter or digit"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derive_normalises() {
        assert_eq!(
            ServiceName::derive("My_Repo.git").unwrap().as_str(),
            "my-repo"
        );
        assert_eq!(ServiceName::derive("--a..b--").unwrap().as_str(), "a-b");
        assert_eq!(
            ServiceName::derive(&"x".repeat(80)).unwrap().as_str().len(),
            63
        );
        assert!(ServiceName::derive("___").is_none());
    }

    #[test]
    fn validation_names_the_problem() {
        let e = ServiceName::new("Bad_Name").unwrap_err();
        assert!(e.to_string().contains("Bad_Name"));
        assert!(e.to_string().contains("a-z"));
        assert!(ServiceName::new("-x").is_err());
        assert!(ServiceName::new("").is_err());
        assert!(ServiceName::new("ok-1").is_ok());
    }
}
