//! `[history]`: where deployment history is kept and for how long. `url` is `sqlite:PATH`
//! (relative to the state directory; the default) or `postgres://USER@HOST/DB`; `keep` and
//! `max_age` are the retention ([`iac_core::history::Retention`]).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use iac_core::history::{HistoryStore, Retention, redact_url};
use serde::{Deserialize, Serialize};

/// The default store: an SQLite file under the state directory.
pub const DEFAULT_URL: &str = "sqlite:history/history.db";

/// `[history]` settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HistorySection {
    /// `sqlite:PATH` (relative to `state_dir`) or `postgres://USER[:PASSWORD]@HOST[:PORT]/DB`
    /// (shown with its password `[redacted]`).
    #[serde(serialize_with = "serialize_redacted")]
    pub url: String,
    /// Finished deployments kept (the newest).
    pub keep: usize,
    /// Finished deployments older than this are removed.
    #[serde(with = "iac_core::duration")]
    pub max_age: Duration,
}

impl Default for HistorySection {
    fn default() -> Self {
        HistorySection {
            url: DEFAULT_URL.to_string(),
            keep: 500,
            max_age: Duration::from_secs(90 * 24 * 3600),
        }
    }
}

fn serialize_redacted<S: serde::Serializer>(url: &str, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&redact_url(url))
}

impl HistorySection {
    /// Every problem, each naming its key and what was expected.
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        let url = self.url.trim();
        let sqlite = url.strip_prefix("sqlite:");
        let postgres = url.starts_with("postgres://") || url.starts_with("postgresql://");
        match sqlite {
            Some(p) if p.trim_start_matches("//").is_empty() => out.push(format!(
                "[history] url = {:?}: expected a file after sqlite:, e.g. {DEFAULT_URL:?}",
                self.url
            )),
            Some(_) => {}
            None if postgres => {}
            None => out.push(format!(
                "[history] url = {:?}: expected sqlite:PATH (e.g. {DEFAULT_URL:?}) or postgres://USER@HOST/DB",
                redact_url(&self.url)
            )),
        }
        if url.contains("[redacted]") {
            out.push(
                "[history] url holds the [redacted] marker of `iac config show`, not a password: write the real password (or use a .pgpass / trust setup)"
                    .to_string(),
            );
        }
        if self.keep == 0 {
            out.push(
                "[history] keep = 0: expected the number of finished deployments to keep, at least 1 (e.g. 500)"
                    .to_string(),
            );
        }
        if self.max_age.is_zero() {
            out.push(
                "[history] max_age = \"0s\": expected how long finished deployments are kept, e.g. \"90d\""
                    .to_string(),
            );
        }
        out
    }

    /// The retention.
    pub fn retention(&self) -> Retention {
        Retention {
            keep: self.keep,
            max_age: self.max_age,
        }
    }

    /// Opens the store (relative SQLite paths under `state_dir`).
    pub async fn open(&self, state_dir: &Path) -> anyhow::Result<Arc<dyn HistoryStore>> {
        Ok(iac_backends::history::open(self.url.trim(), state_dir).await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_bad_values_are_named() {
        assert!(HistorySection::default().problems().is_empty());
        let ok = HistorySection {
            url: "postgres://iac:pw@db/iac".into(),
            ..Default::default()
        };
        assert!(ok.problems().is_empty());
        let bad = HistorySection {
            url: "mysql://iac:pw@db/iac".into(),
            keep: 0,
            max_age: Duration::ZERO,
        };
        let p = bad.problems().join("\n");
        assert!(
            p.contains("[history] url") && p.contains("postgres://"),
            "{p}"
        );
        assert!(!p.contains("pw@"), "the password is not shown: {p}");
        assert!(p.contains("[history] keep = 0"), "{p}");
        assert!(p.contains("[history] max_age"), "{p}");
        // `iac config show` never prints the password, and pasting its output back is refused.
        let shown = serde_json::to_value(&ok).unwrap();
        assert_eq!(shown["url"], "postgres://iac:[redacted]@db/iac");
        let pasted = HistorySection {
            url: shown["url"].as_str().unwrap().into(),
            ..Default::default()
        };
        assert!(
            pasted.problems()[0].contains("[redacted] marker"),
            "{:?}",
            pasted.problems()
        );
        let empty = HistorySection {
            url: "sqlite:".into(),
            ..Default::default()
        };
        assert!(empty.problems()[0].contains("expected a file"));
    }
}
