//! Entry resolution (the `EntryResolver` stage): works out how a source tree's main() is run,
//! as a person would pick it. One precedence, first match wins, and every lower match is kept as
//! a runner-up [`iac_core::Candidate`] for `iac inspect`:
//!
//! 1. **override** — repos-file `entrypoint`, `LABEL ENTRYPOINT=` in the Dockerfile,
//!    `[tool.iac] entrypoint` in pyproject.toml ([`overrides`]);
//! 2. **a start command the repo declares for a platform** — Procfile, render.yaml, railway,
//!    app.json, fly.toml, nixpacks.toml, railpack.json, Dockerfile CMD/ENTRYPOINT, compose
//!    `command`, in that order ([`platform`]);
//! 3. **framework detection** — Django, ASGI, WSGI, Streamlit, Gradio ([`framework`],
//!    [`django`]); generated commands bind `127.0.0.1:$PORT`;
//! 4. **rules 1–6** — `__main__.py`/`main.py`, console scripts, `python -m pkg`, `app.py`, the
//!    `__main__` guard, a guard-less script ([`python`]), an executable `main` ([`binary`]).
//!
//! Independently of which command wins, the Entry carries: build steps (declared build commands,
//! Django `collectstatic`), the release step the repo declares ([`platform::release`]), the Python version ([`pyversion`]) for Python entries, the working
//! directory and the port when known. When nothing matches, [`EntryError::NotFound`] lists every
//! source tried with what it looked for and what it found. Argv runs inside the container from
//! `/app/<workdir>` with `python` on PATH (see [`python`] for the image assumptions).

pub mod binary;
pub mod command;
pub mod django;
pub mod framework;
pub mod overrides;
pub mod platform;
pub mod pylex;
pub mod pymeta;
pub mod pyscan;
pub mod python;
pub mod pyversion;
pub mod setup_cfg;
pub mod setup_py;

#[cfg(test)]
mod tests;

use std::path::Path;

use iac_core::{Candidate, Entry, EntryError, EntryResolver, Language, Source};

pub use binary::BinaryProvider;
pub use iac_core::DEFAULT_APP_PORT;
pub use overrides::{Callable, Override, OverrideValue};
pub use python::PythonProvider;
pub use pyversion::{AVAILABLE_PYTHONS, DEFAULT_PYTHON};

/// At most this many runner-up candidates are kept on an Entry.
const MAX_CANDIDATES: usize = 8;

/// Config files larger than this are refused rather than read.
const MAX_READ_BYTES: u64 = 4 * 1024 * 1024;

/// One language's entry rules.
pub trait Provider: Send + Sync {
    /// Short name, e.g. `python`.
    fn name(&self) -> &'static str;
    /// Whether the tree looks like this provider's language (used to pick the language of an
    /// override; the rules themselves are always tried).
    fn detect(&self, dir: &Path) -> bool;
    /// With an override: the Entry for it. Without: this provider's rules in order; when none
    /// matches, [`EntryError::NotFound`] whose `tried` lists each rule and what it looked for.
    fn plan(&self, dir: &Path, over: Option<&Override>) -> Result<Entry, EntryError>;
}

/// The default [`EntryResolver`]: override > platform declarations > framework detection >
/// the providers' rules (Python rules 1–5, then the binary rule 6).
pub struct DefaultResolver {
    providers: Vec<Box<dyn Provider>>,
    pythons: Vec<(u32, u32)>,
    default_python: (u32, u32),
}

impl Default for DefaultResolver {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for DefaultResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DefaultResolver")
            .field(
                "providers",
                &self.providers.iter().map(|p| p.name()).collect::<Vec<_>>(),
            )
            .field("pythons", &self.pythons)
            .field("default_python", &self.default_python)
            .finish()
    }
}

/// One source's verdict, in precedence order.
enum Verdict {
    Found(Vec<Entry>),
    Looked(Vec<String>),
    Failed(EntryError),
}

impl DefaultResolver {
    /// Python then binary; Python versions [`AVAILABLE_PYTHONS`].
    pub fn new() -> Self {
        Self::with_providers(vec![Box::new(PythonProvider), Box::new(BinaryProvider)])
    }

    /// Custom providers, tried in the given order.
    pub fn with_providers(providers: Vec<Box<dyn Provider>>) -> Self {
        DefaultResolver {
            providers,
            pythons: AVAILABLE_PYTHONS.to_vec(),
            default_python: pyversion::DEFAULT_PYTHON,
        }
    }

    /// The Python minors the builder can provide (ascending), e.g. `[(3, 11), (3, 13)]`.
    pub fn with_pythons(mut self, pythons: Vec<(u32, u32)>) -> Self {
        self.pythons = pythons;
        self
    }

    /// The Python of repos that name none, preferred when a range allows it (default 3.11).
    pub fn with_default_python(mut self, default: (u32, u32)) -> Self {
        self.default_python = default;
        self
    }

    /// Resolves a directory directly (what `resolve` does with `source.dir`).
    pub fn resolve_dir(&self, dir: &Path, entrypoint: Option<&str>) -> Result<Entry, EntryError> {
        let meta = std::fs::metadata(dir).map_err(|source| EntryError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        if !meta.is_dir() {
            return Err(EntryError::Io {
                path: dir.to_path_buf(),
                source: std::io::Error::new(
                    std::io::ErrorKind::NotADirectory,
                    "expected a source directory",
                ),
            });
        }
        // Python when the root looks like a project, or when Python code sits a level or two
        // down (a compose build context, a Django folder).
        let python_like = python::looks_like_python(dir)
            || pyscan::python_files(dir).is_ok_and(|f| !f.is_empty());
        let language = if python_like {
            Language::Python
        } else {
            Language::Binary
        };
        let mut build_steps = Vec::new();
        let mut verdicts: Vec<Verdict> = Vec::new();

        // 1. override (its errors are always the user's to fix).
        match overrides::find_override(dir, entrypoint)? {
            Ok(o) => {
                let provider = self.override_provider(dir, &o);
                let mut e = provider.plan(dir, Some(&o))?;
                e.origin = Some(o.origin.clone());
                e.port = command::port_of(&e.argv);
                verdicts.push(Verdict::Found(vec![e]));
            }
            Err(looked) => verdicts.push(Verdict::Looked(vec![looked])),
        }

        // 2. platform declarations.
        match platform::scan(dir) {
            Ok(scan) => {
                build_steps.extend(scan.build_steps);
                if scan.starts.is_empty() {
                    verdicts.push(Verdict::Looked(vec![format!(
                        "platform declarations: {}",
                        scan.looked.join("; ")
                    )]));
                } else {
                    verdicts.push(Verdict::Found(
                        scan.starts
                            .into_iter()
                            .map(|d| declared_entry(d, language))
                            .collect(),
                    ));
                }
            }
            Err(e) => verdicts.push(Verdict::Failed(e)),
        }

        // 3. framework detection (Python trees only).
        if python_like {
            match pymeta::PyRepo::load(dir).and_then(|repo| framework::detect(dir, &repo)) {
                Ok(det) => {
                    build_steps.extend(det.build_steps);
                    if det.found.is_empty() {
                        verdicts.push(Verdict::Looked(vec![det.looked]));
                    } else {
                        verdicts.push(Verdict::Found(
                            det.found
                                .into_iter()
                                .map(|d| Entry {
                                    language: Language::Python,
                                    rule: d.rule.to_string(),
                                    argv: d.argv,
                                    why: d.why,
                                    port: d.port,
                                    origin: Some(d.origin),
                                    workdir: d.workdir,
                                    ..Entry::default()
                                })
                                .collect(),
                        ));
                    }
                }
                Err(e) => verdicts.push(Verdict::Failed(e)),
            }
        }

        // 4. the providers' rules.
        for p in &self.providers {
            match p.plan(dir, None) {
                Ok(mut e) => {
                    if e.port.is_none() {
                        e.port = command::port_of(&e.argv);
                    }
                    if e.origin.is_none() {
                        e.origin = Some(format!("rule `{}` of the {} provider", e.rule, p.name()));
                    }
                    verdicts.push(Verdict::Found(vec![e]));
                    break;
                }
                Err(EntryError::NotFound { tried, .. }) => verdicts.push(Verdict::Looked(tried)),
                Err(e) => {
                    verdicts.push(Verdict::Failed(e));
                    break;
                }
            }
        }

        // The first Found wins; a failure before any Found is the answer.
        let mut chosen: Option<Entry> = None;
        let mut runners: Vec<Entry> = Vec::new();
        let mut tried: Vec<String> = Vec::new();
        for v in verdicts {
            match v {
                Verdict::Found(entries) => {
                    let mut it = entries.into_iter();
                    if chosen.is_none() {
                        chosen = it.next();
                    }
                    runners.extend(it);
                }
                Verdict::Looked(t) => {
                    if chosen.is_none() {
                        tried.extend(t);
                    }
                }
                Verdict::Failed(e) => {
                    if chosen.is_none() {
                        return Err(e);
                    }
                    tracing::debug!(dir = %dir.display(), error = %e, "lower-precedence entry source failed; ignored");
                }
            }
        }
        let Some(mut entry) = chosen else {
            return Err(EntryError::NotFound {
                dir: dir.to_path_buf(),
                tried,
            });
        };
        entry.candidates = runners
            .into_iter()
            .filter(|r| r.argv != entry.argv || r.workdir != entry.workdir)
            .take(MAX_CANDIDATES)
            .map(|r| Candidate {
                why: format!(
                    "{} (ranks below {})",
                    r.origin.clone().unwrap_or_else(|| r.why.clone()),
                    entry.rule
                ),
                rule: r.rule,
                argv: r.argv,
            })
            .collect();
        entry.build_steps = build_steps;
        entry.release = platform::release::scan(dir)?;
        if entry.language == Language::Python {
            entry.python = pyversion::choose(dir, &self.pythons, self.default_python)?;
        }
        tracing::debug!(dir = %dir.display(), rule = %entry.rule, argv = ?entry.argv, "entry resolved");
        Ok(entry)
    }

    /// Which provider builds an override's Entry: Python for `module:function` and for commands
    /// starting with `python…`; otherwise the first provider that detects the tree, else the
    /// binary provider.
    fn override_provider(&self, dir: &Path, o: &Override) -> &dyn Provider {
        let by_name = |n: &str| {
            self.providers
                .iter()
                .find(|p| p.name() == n)
                .map(|p| p.as_ref())
        };
        let pythonish = match &o.value {
            OverrideValue::Callable(_) => true,
            OverrideValue::Argv(argv) => argv
                .first()
                .and_then(|a| Path::new(a).file_name())
                .is_some_and(|n| n.to_string_lossy().starts_with("python")),
        };
        if pythonish && let Some(p) = by_name("python") {
            return p;
        }
        self.providers
            .iter()
            .find(|p| p.detect(dir))
            .map(|p| p.as_ref())
            .or_else(|| by_name("binary"))
            .unwrap_or_else(|| self.providers[0].as_ref())
    }
}

impl EntryResolver for DefaultResolver {
    fn resolve(&self, source: &Source, entrypoint: Option<String>) -> Result<Entry, EntryError> {
        self.resolve_dir(&source.dir, entrypoint.as_deref())
    }
}

/// The Entry for a rule-0 override.
pub fn override_entry(o: &Override, language: Language) -> Entry {
    let (argv, what) = match &o.value {
        OverrideValue::Callable(c) => (c.argv(), format!("calls `{c}`")),
        OverrideValue::Argv(argv) => (argv.clone(), "runs it as a command".to_string()),
    };
    Entry {
        language,
        rule: o.rule.to_string(),
        argv,
        why: format!(
            "entrypoint override `{}` from {} (rule 0) {what}.",
            o.raw.trim(),
            o.origin
        ),
        origin: Some(o.origin.clone()),
        ..Entry::default()
    }
}

/// The Entry for a platform declaration.
fn declared_entry(d: platform::Declared, language: Language) -> Entry {
    let wd = d
        .workdir
        .as_deref()
        .map(|w| format!(", run from {w}/"))
        .unwrap_or_default();
    Entry {
        language,
        rule: d.rule.to_string(),
        why: format!(
            "{} declares the start command for {}{}{wd}; a command the repo declares for a platform ranks above framework detection and rules 1-6.",
            d.origin, d.platform, d.note
        ),
        argv: d.argv,
        port: d.port,
        origin: Some(format!("{} ({})", d.origin, d.platform)),
        workdir: d.workdir,
        ..Entry::default()
    }
}

/// Reads a file that may be absent: `Ok(None)` when it does not exist or is not a regular file.
/// Invalid UTF-8 is replaced, not fatal. Files over 4 MiB are refused.
pub(crate) fn read_optional(path: &Path) -> Result<Option<String>, EntryError> {
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory
            ) =>
        {
            return Ok(None);
        }
        Err(source) => {
            return Err(EntryError::Io {
                path: path.to_path_buf(),
                source,
            });
        }
    };
    if !meta.is_file() {
        return Ok(None);
    }
    if meta.len() > MAX_READ_BYTES {
        return Err(EntryError::Parse {
            file: path.to_path_buf(),
            message: format!(
                "file is {} bytes, larger than the {MAX_READ_BYTES}-byte limit for files read during entry resolution",
                meta.len()
            ),
        });
    }
    let bytes = std::fs::read(path).map_err(|source| EntryError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(Some(String::from_utf8_lossy(&bytes).into_owned()))
}

/// The 1-based line of `key = …` inside TOML table `[section]` (dotted, e.g. `tool.iac`).
pub(crate) fn toml_key_line(text: &str, section: &str, key: &str) -> Option<usize> {
    let unquote = |s: &str| s.trim().trim_matches('"').trim_matches('\'').to_string();
    let mut current = String::new();
    for (i, line) in text.lines().enumerate() {
        let t = line.trim();
        if t.starts_with('[') {
            let inner = t.trim_start_matches('[').split(']').next().unwrap_or("");
            current = inner.split('.').map(unquote).collect::<Vec<_>>().join(".");
            continue;
        }
        if current == section
            && let Some((k, _)) = t.split_once('=')
            && unquote(k) == key
        {
            return Some(i + 1);
        }
    }
    None
}
