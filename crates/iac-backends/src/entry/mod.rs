//! Entry resolution (the `EntryResolver` stage): works out how a source tree's main() is run,
//! following DESIGN.md §3 rules 0–6 in order, first match wins. Shaped like nixpacks' providers:
//! one [`Provider`] per language, tried in order by [`DefaultResolver`].
//!
//! | rule | id(s) | where |
//! |---|---|---|
//! | 0 override | `override:repos-file`, `override:dockerfile-label`, `override:pyproject` | [`overrides`] (found), provider `plan(dir, Some(..))` (built) |
//! | 1 | `main-module`, `main.py` | [`python`] |
//! | 2 | `project.scripts`, `poetry.scripts`, `setup.cfg`, `setup.py` | [`python`] + [`pymeta`] |
//! | 3 | `package-main` | [`python`] |
//! | 4 | `app.py`, `procfile` | [`python`] |
//! | 5 | `django`, `main-guard` | [`python`] + [`pylex`] |
//! | 6 | `binary-main` | [`binary`] |
//!
//! When nothing matches, [`EntryError::NotFound`] lists every rule tried with what it looked for
//! and what it found. Argv is what runs inside the container, with the repo at `/app` as the
//! working directory and `python` on PATH (see [`python`] for the image assumptions). Rules that
//! imply a listening port set `Entry::port = Some(`[`DEFAULT_APP_PORT`]`)` and read `$PORT` at run
//! time.

pub mod binary;
pub mod overrides;
pub mod pylex;
pub mod pymeta;
pub mod python;

#[cfg(test)]
mod tests;

use std::path::Path;

use iac_core::{Entry, EntryError, EntryResolver, Language, Source};

pub use binary::BinaryProvider;
pub use overrides::{Callable, Override, OverrideValue};
pub use python::PythonProvider;

/// The port an app is assumed to listen on when its rule implies one and `$PORT` is unset.
pub const DEFAULT_APP_PORT: u16 = 8000;

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

/// The default [`EntryResolver`]: the override (rule 0), then the Python provider (rules 1–5),
/// then the binary provider (rule 6).
pub struct DefaultResolver {
    providers: Vec<Box<dyn Provider>>,
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
            .finish()
    }
}

impl DefaultResolver {
    /// Python then binary.
    pub fn new() -> Self {
        Self::with_providers(vec![Box::new(PythonProvider), Box::new(BinaryProvider)])
    }

    /// Custom providers, tried in the given order.
    pub fn with_providers(providers: Vec<Box<dyn Provider>>) -> Self {
        DefaultResolver { providers }
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
        let looked = match overrides::find_override(dir, entrypoint)? {
            Ok(o) => {
                let provider = self.override_provider(dir, &o);
                let entry = provider.plan(dir, Some(&o))?;
                tracing::debug!(dir = %dir.display(), rule = %entry.rule, argv = ?entry.argv, "entry resolved from override");
                return Ok(entry);
            }
            Err(looked) => looked,
        };
        let mut tried = vec![looked];
        for p in &self.providers {
            match p.plan(dir, None) {
                Ok(entry) => {
                    tracing::debug!(dir = %dir.display(), provider = p.name(), rule = %entry.rule, argv = ?entry.argv, "entry resolved");
                    return Ok(entry);
                }
                Err(EntryError::NotFound { tried: t, .. }) => tried.extend(t),
                Err(e) => return Err(e),
            }
        }
        Err(EntryError::NotFound {
            dir: dir.to_path_buf(),
            tried,
        })
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
        port: None,
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
