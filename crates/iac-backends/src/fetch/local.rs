//! `path:` slugs: a local working tree used in place (nothing is copied). The digest covers its
//! files but skips the noise directories in [`IGNORED_DIRS`] at any depth (VCS metadata, build
//! output, virtualenvs, caches), so rebuilding or running tests locally does not change it.
//! `Source.commit` is `None`: a working tree may differ from any commit.

use std::path::Path;

use iac_core::{FetchError, Source};

use super::digest::tree_digest;

/// Directory names the `path:` digest ignores, at any depth.
pub const IGNORED_DIRS: &[&str] = &[
    ".git",
    ".hg",
    ".svn",
    ".iac",
    "target",
    "node_modules",
    "__pycache__",
    ".venv",
    "venv",
    ".mypy_cache",
    ".pytest_cache",
    ".ruff_cache",
    ".tox",
];

/// The directory `dir` as a [`Source`]. Relative paths are taken against the working directory.
pub fn fetch_local(dir: &Path) -> Result<Source, FetchError> {
    let abs = std::fs::canonicalize(dir).map_err(FetchError::io(dir))?;
    if !abs.is_dir() {
        return Err(FetchError::Unsupported {
            slug: format!("path:{}", dir.display()),
            why: format!(
                "{} is not a directory; expected a source tree",
                abs.display()
            ),
        });
    }
    let digest = tree_digest(&abs, IGNORED_DIRS)?;
    Ok(Source {
        origin: format!("local directory {} (used in place)", abs.display()),
        dir: abs,
        commit: None,
        digest,
    })
}
