//! [`Entry`]: how a service's main() is run, and which resolution rule decided it.

use serde::{Deserialize, Serialize};

/// The runtime an entry needs (selects the base image and Dockerfile steps).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Language {
    Python,
    Binary,
}

impl Language {
    pub fn as_str(self) -> &'static str {
        match self {
            Language::Python => "python",
            Language::Binary => "binary",
        }
    }
}

/// The decision of an [`crate::EntryResolver`].
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Entry {
    pub language: Language,
    /// The rule that matched, e.g. `override:repos-file`, `main.py`, `project.scripts`.
    pub rule: String,
    /// The command, as run inside the container from `/app`.
    pub argv: Vec<String>,
    /// One sentence saying why this rule matched (file and line where it helps).
    pub why: String,
    /// The port the app itself listens on, when the rule implies one (Django/gunicorn: $PORT).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
}
