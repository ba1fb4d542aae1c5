//! [`Entry`]: how a service's main() is run, and which resolution rule decided it; plus the one
//! default app port ([`DEFAULT_APP_PORT`]) every part of iac agrees on.

use serde::{Deserialize, Serialize};

/// The port an app listens on when nothing says otherwise: handed to the app as `PORT` by the
/// planner, used by generated start commands (`${PORT:-8000}`) and assumed by entry rules whose
/// command reads `$PORT`. The only such constant in iac.
pub const DEFAULT_APP_PORT: u16 = 8000;

/// The runtime an entry needs (selects the base image and Dockerfile steps).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Language {
    /// A Python project.
    #[default]
    Python,
    /// A prebuilt executable (`/app/main`).
    Binary,
}

impl Language {
    /// Lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            Language::Python => "python",
            Language::Binary => "binary",
        }
    }
}

/// The decision of an [`crate::EntryResolver`].
///
/// `Default` exists only for struct-update syntax in tests (`..Default::default()`); a default
/// Entry has an empty argv and is not a valid decision.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub struct Entry {
    /// The language detected.
    pub language: Language,
    /// The rule that matched, e.g. `override:repos-file`, `platform:procfile`, `framework:asgi`,
    /// `main.py`, `project.scripts`.
    pub rule: String,
    /// The command, run inside the container from `/app/<workdir>` (`/app` when `workdir` is
    /// `None`).
    /// The command the agent starts.
    pub argv: Vec<String>,
    /// One sentence saying why this rule matched (file and line where it helps).
    pub why: String,
    /// The port the app itself listens on, when the command or framework says (a literal
    /// `--port 80`, or [`DEFAULT_APP_PORT`] for commands that read `$PORT`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// Where the decision came from, for people: file, line and platform, e.g.
    /// `Procfile line 1 (Heroku)`, `app/main.py line 7 (FastAPI app object)`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<String>,
    /// The directory the command runs in, relative to `/app`, `/`-separated, never absolute and
    /// never containing `..` (e.g. `app` for a Django project in `app/manage.py`). `None`: `/app`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workdir: Option<String>,
    /// Commands to run in the image build, in order, after the app's dependencies are installed
    /// (e.g. Django `collectstatic`, a render.yaml `buildCommand`). Never release/migrate steps.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub build_steps: Vec<BuildStep>,
    /// The Python version the repo asks for, chosen among those iac can provide; `None` when the
    /// repo does not say (the configured default image is used).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub python: Option<PythonVersion>,
    /// The runner-up start commands that lower-precedence sources would have chosen, in
    /// precedence order (for `iac inspect`); never run.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub candidates: Vec<Candidate>,
    /// The release step the repo declares (Procfile `release:`, fly.toml `[deploy]
    /// release_command`, render.yaml `preDeployCommand`, app.json `scripts.postdeploy`): run once
    /// per deploy in the new image, before the new pod takes traffic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub release: Option<ReleaseCommand>,
}

/// A release (pre-deploy) command of an [`Entry`]: database migrations and the like, run in a
/// one-off container of the new image before any pod of it is created or replaced.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub struct ReleaseCommand {
    /// The command (`["sh", "-c", "…"]` when it needs a shell).
    pub argv: Vec<String>,
    /// Directory relative to `/app` to run it in (same rules as [`Entry::workdir`]); `None`:
    /// `/app`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workdir: Option<String>,
    /// File, line and key it comes from, e.g. `Procfile line 1 (release)`.
    pub origin: String,
}

impl ReleaseCommand {
    /// The absolute directory it runs in: `/app` or `/app/<workdir>`.
    pub fn dir(&self) -> String {
        match self.workdir.as_deref() {
            Some(w) if !w.is_empty() => format!("/app/{w}"),
            _ => "/app".to_string(),
        }
    }

    /// The command as one line, for people: the script of an `sh -c SCRIPT`, else the words,
    /// quoted only where a shell would need it.
    pub fn line(&self) -> String {
        if let [sh, c, script] = self.argv.as_slice()
            && sh == "sh"
            && c == "-c"
        {
            return script.clone();
        }
        self.argv
            .iter()
            .map(|w| {
                let plain = !w.is_empty()
                    && w.chars()
                        .all(|c| c.is_ascii_alphanumeric() || "-_./:=,+@%".contains(c));
                if plain {
                    w.clone()
                } else {
                    crate::shell::sh_quote(w)
                }
            })
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// One build-time command of an [`Entry`].
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub struct BuildStep {
    /// The command (`["sh", "-c", "…"]` when it needs a shell).
    pub argv: Vec<String>,
    /// Directory relative to `/app` to run it in (same rules as [`Entry::workdir`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workdir: Option<String>,
    /// When true a non-zero exit does not fail the build: the builder reports a warning with the
    /// step's output and carries on (Django `collectstatic`, commands declared for another
    /// platform that may assume its network or tools).
    #[serde(default)]
    pub warn_on_failure: bool,
    /// Where the step comes from, e.g. `render.yaml line 8 (buildCommand)`.
    pub origin: String,
}

/// The Python version chosen for a repo.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub struct PythonVersion {
    /// `major.minor`, one of the versions iac can provide (e.g. `3.13`).
    pub version: String,
    /// What decided it, e.g. `.python-version line 1 pins 3.14` or
    /// `[project] requires-python ">=3.12" excludes the default Python 3.11; 3.13 is the nearest …`.
    pub source: String,
}

/// A start command that was found but not chosen.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub struct Candidate {
    /// The rule that would have produced it (same ids as [`Entry::rule`]).
    pub rule: String,
    /// The command it would have run.
    pub argv: Vec<String>,
    /// Where it came from and why it lost.
    pub why: String,
}
