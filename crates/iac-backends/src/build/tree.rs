//! The file set of a source tree as it goes into an image: ONE walk and filter, used both by the
//! build context (`app/` in [`super::context`]) and by the `path:` source digest
//! ([`crate::fetch::local`]), so the digest changes exactly when the image content would.
//!
//! Left out, always (a `.dockerignore` exception cannot bring them back):
//! - [`EXCLUDED_DIRS`] at any depth: VCS metadata, iac's state dir `.iac`, bytecode and tool
//!   caches, and local virtualenvs (host-built interpreters that do not run in the image);
//! - `.env` and every `.env*` file or directory at any depth (operator secrets by convention);
//! - special files (sockets, fifos, devices), reported in [`TreeListing::skipped`].
//!
//! Then whatever the tree's own root `.dockerignore` excludes ([`super::ignore`]). Symlinks are
//! listed as links (never followed), so a link to `../secrets` carries no secret content.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use super::ignore::IgnoreRules;

/// Directory names never listed, at any depth.
pub const EXCLUDED_DIRS: &[&str] = &[
    ".git",
    ".hg",
    ".svn",
    ".iac",
    "__pycache__",
    ".venv",
    "venv",
    ".mypy_cache",
    ".pytest_cache",
    ".ruff_cache",
    ".tox",
];

/// The ignore file read from the tree's root.
pub const DOCKERIGNORE: &str = ".dockerignore";

/// What one listed path is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryKind {
    /// A directory.
    Dir,
    /// A regular file.
    File {
        /// Any execute bit is set.
        executable: bool,
        /// Size in bytes.
        len: u64,
    },
    /// A symbolic link, kept as a link.
    Symlink {
        /// The link's target as stored (not resolved).
        target: PathBuf,
    },
}

/// One listed path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TreeEntry {
    /// Relative to the root, `/`-separated, valid UTF-8.
    pub rel: String,
    /// On disk.
    pub path: PathBuf,
    /// What the path is.
    pub kind: EntryKind,
}

/// A tree's file set, sorted by `rel` (directories before their contents).
#[derive(Debug, Clone, Default)]
pub struct TreeListing {
    /// The paths kept, parents before children.
    pub entries: Vec<TreeEntry>,
    /// Special files left out.
    pub skipped: Vec<PathBuf>,
}

impl TreeListing {
    /// Sum of regular file sizes.
    pub fn file_bytes(&self) -> u64 {
        self.entries
            .iter()
            .map(|e| match e.kind {
                EntryKind::File { len, .. } => len,
                _ => 0,
            })
            .sum()
    }
}

/// Why a tree cannot be listed.
#[derive(Debug, thiserror::Error)]
pub enum TreeError {
    /// Reading the tree failed at `path`.
    #[error("{path}: {source}")]
    Io {
        /// The path that could not be read.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    #[error("{path}: file name is not valid UTF-8; rename it (image paths must be UTF-8)")]
    /// A file name that is not UTF-8.
    NotUtf8 {
        /// The path with the non-UTF-8 name.
        path: PathBuf,
    },
    /// A `.dockerignore` line Docker would refuse.
    #[error("{path}: {error}; expected Docker's .dockerignore syntax")]
    Ignore {
        /// The `.dockerignore` file.
        path: PathBuf,
        /// The offending line and why.
        error: super::ignore::IgnoreError,
    },
}

/// Whether a name is left out regardless of `.dockerignore`.
pub fn always_excluded(name: &str, is_dir: bool) -> bool {
    name.starts_with(".env") || (is_dir && EXCLUDED_DIRS.contains(&name))
}

/// Lists the tree under `root` (see the module doc for what is left out). Blocking.
pub fn list_tree(root: &Path) -> Result<TreeListing, TreeError> {
    let ignore_path = root.join(DOCKERIGNORE);
    let rules = match std::fs::symlink_metadata(&ignore_path) {
        Ok(m) if m.is_file() => {
            let bytes = std::fs::read(&ignore_path).map_err(|source| TreeError::Io {
                path: ignore_path.clone(),
                source,
            })?;
            IgnoreRules::parse(&String::from_utf8_lossy(&bytes)).map_err(|error| {
                TreeError::Ignore {
                    path: ignore_path.clone(),
                    error,
                }
            })?
        }
        // A symlinked or missing .dockerignore: no rules (a link may point out of the tree).
        _ => IgnoreRules::default(),
    };
    let mut out = TreeListing::default();
    walk(root, "", &rules, &mut out)?;
    Ok(out)
}

fn walk(
    dir: &Path,
    prefix: &str,
    rules: &IgnoreRules,
    out: &mut TreeListing,
) -> Result<(), TreeError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| TreeError::Io { path, source }
    };
    let mut children = Vec::new();
    for e in std::fs::read_dir(dir).map_err(io(dir))? {
        let e = e.map_err(io(dir))?;
        children.push(e);
    }
    children.sort_by_key(|e| e.file_name());
    for e in children {
        let path = e.path();
        let name = e.file_name();
        let name = name
            .to_str()
            .ok_or_else(|| TreeError::NotUtf8 { path: path.clone() })?;
        let meta = std::fs::symlink_metadata(&path).map_err(io(&path))?;
        let ft = meta.file_type();
        if always_excluded(name, ft.is_dir()) {
            continue;
        }
        let rel = if prefix.is_empty() {
            name.to_string()
        } else {
            format!("{prefix}/{name}")
        };
        let excluded = rules.excludes(&rel);
        if ft.is_dir() {
            if excluded && !rules.has_exceptions() {
                continue;
            }
            let at = out.entries.len();
            walk(&path, &rel, rules, out)?;
            // An excluded directory still holds what an exception re-included; it is listed
            // then (Docker creates it too), else not at all.
            if !excluded || out.entries.len() > at {
                out.entries.insert(
                    at,
                    TreeEntry {
                        rel,
                        path,
                        kind: EntryKind::Dir,
                    },
                );
            }
        } else if excluded {
            continue;
        } else if ft.is_symlink() {
            let target = std::fs::read_link(&path).map_err(io(&path))?;
            out.entries.push(TreeEntry {
                rel,
                path,
                kind: EntryKind::Symlink { target },
            });
        } else if ft.is_file() {
            out.entries.push(TreeEntry {
                rel,
                path,
                kind: EntryKind::File {
                    executable: meta.permissions().mode() & 0o111 != 0,
                    len: meta.len(),
                },
            });
        } else {
            out.skipped.push(path);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rels(l: &TreeListing) -> Vec<&str> {
        l.entries.iter().map(|e| e.rel.as_str()).collect()
    }

    #[test]
    fn fixed_exclusions_and_dockerignore_apply_at_every_depth() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        for dir in [
            ".git/objects",
            ".iac/projects",
            "pkg/__pycache__",
            "pkg/.git",
            "sub/.iac",
            ".venv/bin",
            "logs",
            "data/raw",
        ] {
            std::fs::create_dir_all(r.join(dir)).unwrap();
        }
        for f in [
            ".git/HEAD",
            ".iac/projects/state.json",
            "pkg/__pycache__/m.pyc",
            "pkg/.git/HEAD",
            "sub/.iac/x",
            ".venv/bin/python",
            ".env",
            ".env.local",
            "pkg/.env.production",
            "pkg/m.py",
            "main.py",
            "logs/a.log",
            "logs/keep.log",
            "data/raw/big.bin",
            "notes.tmp",
            "pkg/notes.tmp",
        ] {
            std::fs::write(r.join(f), f).unwrap();
        }
        std::fs::write(
            r.join(".dockerignore"),
            "# build noise\nlogs\n!logs/keep.log\ndata/\n*.tmp\n",
        )
        .unwrap();
        std::os::unix::fs::symlink("../../etc/passwd", r.join("link")).unwrap();
        let l = list_tree(r).unwrap();
        assert_eq!(
            rels(&l),
            [
                ".dockerignore",
                "link",
                "logs",
                "logs/keep.log",
                "main.py",
                "pkg",
                "pkg/m.py",
                "pkg/notes.tmp",
                "sub",
            ]
        );
        assert_eq!(
            l.entries[1].kind,
            EntryKind::Symlink {
                target: "../../etc/passwd".into()
            }
        );
    }

    #[test]
    fn a_bad_dockerignore_is_an_error_naming_file_and_line() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join(".dockerignore"), "ok\n[z-a]\n").unwrap();
        let err = list_tree(d.path()).unwrap_err().to_string();
        assert!(
            err.contains(".dockerignore") && err.contains("line 2") && err.contains("backwards"),
            "{err}"
        );
    }

    #[test]
    fn special_files_are_skipped_and_reported() {
        let d = tempfile::tempdir().unwrap();
        let sock = d.path().join("s.sock");
        let _l = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        std::fs::write(d.path().join("a"), "x").unwrap();
        let l = list_tree(d.path()).unwrap();
        assert_eq!(rels(&l), ["a"]);
        assert_eq!(l.skipped, [sock]);
        assert_eq!(l.file_bytes(), 1);
    }
}
