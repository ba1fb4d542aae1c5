//! `path:` slugs: a local working tree used in place (nothing is copied). The digest covers
//! exactly the file set the image gets — the same walk and filter as the build context
//! ([`crate::build::tree::list_tree`]: fixed exclusions like `.git`, `.iac`, `__pycache__`,
//! `.venv`, `.env*`, then the tree's `.dockerignore`) — so a change the image would carry always
//! changes the digest (and the build key), and a change it would not carry never does.
//! `Source.commit` is `None`: a working tree may differ from any commit.
//!
//! A directory that contains one of the protected directories (iac's state dir, the secrets dir,
//! [`super::FetchConfig::protected_dirs`]) or lies inside one is refused: its image would carry
//! the CA key or state.

use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use iac_core::{FetchError, Source};
use sha2::{Digest, Sha256};

use crate::build::tree::{EntryKind, TreeError, TreeListing, list_tree};

pub use crate::build::tree::EXCLUDED_DIRS as IGNORED_DIRS;

/// The directory `dir` as a [`Source`]. Relative paths are taken against the working directory.
/// `protected` are absolute directories the tree must neither contain nor lie inside.
pub fn fetch_local(dir: &Path, protected: &[PathBuf]) -> Result<Source, FetchError> {
    let slug = || format!("path:{}", dir.display());
    let abs = std::fs::canonicalize(dir).map_err(FetchError::io(dir))?;
    if !abs.is_dir() {
        return Err(FetchError::Unsupported {
            slug: slug(),
            why: format!(
                "{} is not a directory; expected a source tree",
                abs.display()
            ),
        });
    }
    for p in protected {
        let p = resolve(p);
        if abs.starts_with(&p) {
            return Err(FetchError::Unsupported {
                slug: slug(),
                why: format!(
                    "{} is or lies inside {}, which holds iac's state or secrets (configured as a protected directory); refusing to build an image from it",
                    abs.display(),
                    p.display()
                ),
            });
        }
        if p.starts_with(&abs) {
            return Err(FetchError::Unsupported {
                slug: slug(),
                why: format!(
                    "{} contains {}, which holds iac's state or secrets (configured as a protected directory); refusing to build an image from it. Point path: at the app's own directory",
                    abs.display(),
                    p.display()
                ),
            });
        }
    }
    let listing = list_tree(&abs).map_err(|e| match e {
        TreeError::Io { path, source } => FetchError::Io { path, source },
        other => FetchError::Unsupported {
            slug: slug(),
            why: other.to_string(),
        },
    })?;
    let digest = listing_digest(&listing)?;
    Ok(Source {
        origin: format!("local directory {} (used in place)", abs.display()),
        dir: abs,
        commit: None,
        digest,
    })
}

/// `sha256:<hex>` over a listing: every entry's kind and path, file contents and executable bit,
/// link targets, in listing order (sorted). Directories count, as the context carries them.
pub fn listing_digest(listing: &TreeListing) -> Result<String, FetchError> {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    for e in &listing.entries {
        match &e.kind {
            EntryKind::Dir => {
                h.update(b"D ");
                h.update(e.rel.as_bytes());
                h.update(b"\n");
            }
            EntryKind::Symlink { target } => {
                h.update(b"L ");
                h.update(e.rel.as_bytes());
                h.update(b"\0");
                h.update(target.as_os_str().as_bytes());
                h.update(b"\n");
            }
            EntryKind::File { executable, .. } => {
                let mut fh = Sha256::new();
                let mut f = std::fs::File::open(&e.path).map_err(FetchError::io(&e.path))?;
                loop {
                    let n = f.read(&mut buf).map_err(FetchError::io(&e.path))?;
                    if n == 0 {
                        break;
                    }
                    fh.update(&buf[..n]);
                }
                h.update(if *executable { b"X " } else { b"F " });
                h.update(e.rel.as_bytes());
                h.update(b"\0");
                h.update(hex::encode(fh.finalize()).as_bytes());
                h.update(b"\n");
            }
        }
    }
    Ok(format!("sha256:{}", hex::encode(h.finalize())))
}

/// The canonical form of `p` when it exists; else its longest existing ancestor canonicalized
/// with the rest appended (a protected dir that does not exist yet is still protected).
fn resolve(p: &Path) -> PathBuf {
    if let Ok(c) = std::fs::canonicalize(p) {
        return c;
    }
    let mut rest: Vec<&std::ffi::OsStr> = Vec::new();
    let mut cur = p;
    while let Some(parent) = cur.parent() {
        if let Some(name) = cur.file_name() {
            rest.push(name);
        }
        if let Ok(c) = std::fs::canonicalize(parent) {
            let mut out = c;
            for n in rest.iter().rev() {
                out.push(n);
            }
            return out;
        }
        cur = parent;
    }
    // Lexically normalized as a last resort.
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::context::{ContextInputs, build_context};

    /// The `app/` entries of a context tar, as (path, content).
    fn context_files(src: &Path) -> Vec<(String, Vec<u8>)> {
        let d = tempfile::tempdir().unwrap();
        let agent = d.path().join("agent");
        std::fs::write(&agent, "agent").unwrap();
        let ctx = build_context(&ContextInputs {
            dockerfile: "FROM scratch\n",
            source_dir: src,
            source_name: "test tree",
            agent_binary: &agent,
            otel_wheels: None,
            app_wheels: None,
            max_bytes: u64::MAX,
        })
        .unwrap();
        let mut f = ctx.file;
        let mut bytes = Vec::new();
        std::io::Seek::rewind(&mut f).unwrap();
        f.read_to_end(&mut bytes).unwrap();
        let mut a = tar::Archive::new(&bytes[..]);
        a.entries()
            .unwrap()
            .map(|e| {
                let mut e = e.unwrap();
                let p = e.path().unwrap().to_string_lossy().into_owned();
                let mut c = Vec::new();
                e.read_to_end(&mut c).unwrap();
                (p, c)
            })
            .filter(|(p, _)| p.starts_with("app/"))
            .collect()
    }

    #[test]
    fn digest_changes_iff_the_context_changes() {
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("src");
        // Every directory the old digest skipped (and more), plus ordinary ones.
        let dirs = [
            ".iac",
            "target",
            "node_modules",
            ".venv",
            "venv",
            ".git",
            "__pycache__",
            ".tox",
            "pkg",
            "ignored",
        ];
        for dir in dirs {
            std::fs::create_dir_all(src.join(dir)).unwrap();
            std::fs::write(src.join(dir).join("f.txt"), "v1").unwrap();
        }
        std::fs::write(src.join(".env"), "SECRET=1").unwrap();
        std::fs::write(src.join(".dockerignore"), "ignored\n").unwrap();
        std::fs::write(src.join("main.py"), "print(1)\n").unwrap();
        for dir in dirs.iter().copied().chain([".env"]) {
            let before_digest = fetch_local(&src, &[]).unwrap().digest;
            let before_ctx = context_files(&src);
            let changed = if dir == ".env" {
                src.join(".env")
            } else {
                src.join(dir).join("f.txt")
            };
            std::fs::write(&changed, format!("changed {dir}")).unwrap();
            let after_digest = fetch_local(&src, &[]).unwrap().digest;
            let after_ctx = context_files(&src);
            assert_eq!(
                before_ctx != after_ctx,
                before_digest != after_digest,
                "{dir}: the context changed: {}, the digest changed: {}",
                before_ctx != after_ctx,
                before_digest != after_digest
            );
            let in_context = !matches!(
                dir,
                ".iac" | ".venv" | "venv" | ".git" | "__pycache__" | ".tox" | "ignored" | ".env"
            );
            assert_eq!(before_ctx != after_ctx, in_context, "{dir}");
        }
        // A new empty directory is in the context, so it counts too.
        let before = fetch_local(&src, &[]).unwrap().digest;
        std::fs::create_dir(src.join("empty")).unwrap();
        assert_ne!(before, fetch_local(&src, &[]).unwrap().digest);
        assert!(context_files(&src).iter().any(|(p, _)| p == "app/empty/"));
    }

    #[test]
    fn trees_holding_or_inside_protected_dirs_are_refused() {
        let d = tempfile::tempdir().unwrap();
        let project = d.path().join("project");
        std::fs::create_dir_all(project.join("secrets")).unwrap();
        std::fs::write(project.join("secrets/ca.key"), "KEY").unwrap();
        std::fs::create_dir_all(project.join("app")).unwrap();
        std::fs::write(project.join("app/main.py"), "print(1)\n").unwrap();
        let protected = [project.join("secrets"), project.join(".iac")];
        let err = fetch_local(&project, &protected).unwrap_err().to_string();
        assert!(
            err.contains("path:") && err.contains("contains") && err.contains("secrets"),
            "{err}"
        );
        // Not-yet-created state dir: still protected.
        let err = fetch_local(&project, &[project.join(".iac")])
            .unwrap_err()
            .to_string();
        assert!(err.contains(".iac"), "{err}");
        let err = fetch_local(&project.join("secrets"), &protected)
            .unwrap_err()
            .to_string();
        assert!(err.contains("lies inside"), "{err}");
        // Through a symlink to the project: still refused.
        let link = d.path().join("link");
        std::os::unix::fs::symlink(&project, &link).unwrap();
        assert!(fetch_local(&link, &protected).is_err());
        // The app's own directory is fine.
        let ok = fetch_local(&project.join("app"), &protected).unwrap();
        assert!(ok.digest.starts_with("sha256:"));
    }
}
