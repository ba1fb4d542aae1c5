//! The tree digest reported as `Source.digest` by every backend: `sha256:<hex>` over the sorted
//! list of regular files (path, executable bit, content hash) and symlinks (path, target).
//! Directories themselves do not count (git does not record empty ones), so the same commit
//! fetched as a tarball or as a git clone gets the same digest, and so the same image key.

use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use iac_core::FetchError;
use sha2::{Digest, Sha256};

/// `sha256:<hex>` of the tree under `root`. Directories named in `ignore` are skipped at any
/// depth.
pub fn tree_digest(root: &Path, ignore: &[&str]) -> Result<String, FetchError> {
    let mut entries: Vec<(Vec<u8>, PathBuf)> = Vec::new();
    walk(root, Path::new(""), ignore, &mut entries)?;
    entries.sort();
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    for (rel, path) in entries {
        let meta = std::fs::symlink_metadata(&path).map_err(FetchError::io(&path))?;
        if meta.file_type().is_symlink() {
            let target = std::fs::read_link(&path).map_err(FetchError::io(&path))?;
            h.update(b"L ");
            h.update(&rel);
            h.update(b"\0");
            h.update(target.as_os_str().as_bytes());
            h.update(b"\n");
        } else {
            let exec = meta.permissions().mode() & 0o111 != 0;
            let mut fh = Sha256::new();
            let mut f = std::fs::File::open(&path).map_err(FetchError::io(&path))?;
            loop {
                let n = f.read(&mut buf).map_err(FetchError::io(&path))?;
                if n == 0 {
                    break;
                }
                fh.update(&buf[..n]);
            }
            h.update(if exec { b"X " } else { b"F " });
            h.update(&rel);
            h.update(b"\0");
            h.update(hex::encode(fh.finalize()).as_bytes());
            h.update(b"\n");
        }
    }
    Ok(format!("sha256:{}", hex::encode(h.finalize())))
}

fn walk(
    root: &Path,
    rel: &Path,
    ignore: &[&str],
    out: &mut Vec<(Vec<u8>, PathBuf)>,
) -> Result<(), FetchError> {
    let dir = root.join(rel);
    for entry in std::fs::read_dir(&dir).map_err(FetchError::io(&dir))? {
        let entry = entry.map_err(FetchError::io(&dir))?;
        let name = entry.file_name();
        let path = entry.path();
        let ft = entry.file_type().map_err(FetchError::io(&path))?;
        let child = rel.join(&name);
        if ft.is_dir() {
            if ignore.iter().any(|i| name.as_bytes() == i.as_bytes()) {
                continue;
            }
            walk(root, &child, ignore, out)?;
        } else if ft.is_file() || ft.is_symlink() {
            out.push((child.as_os_str().as_bytes().to_vec(), path));
        }
        // Sockets, fifos and devices in a local working tree carry no source: skipped.
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_depends_on_content_names_modes_and_links_only() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        for d in [a.path(), b.path()] {
            std::fs::create_dir_all(d.join("pkg")).unwrap();
            std::fs::write(d.join("pkg/m.py"), "x = 1\n").unwrap();
            std::os::unix::fs::symlink("pkg/m.py", d.join("l")).unwrap();
        }
        std::fs::create_dir_all(b.path().join("empty/dir")).unwrap();
        std::fs::create_dir_all(b.path().join("pkg/.git")).unwrap();
        std::fs::write(b.path().join("pkg/.git/HEAD"), "noise").unwrap();
        let da = tree_digest(a.path(), &[".git"]).unwrap();
        assert_eq!(
            da,
            tree_digest(b.path(), &[".git"]).unwrap(),
            "empty dirs and ignored dirs do not count"
        );
        assert_ne!(da, tree_digest(b.path(), &[]).unwrap());
        assert!(da.starts_with("sha256:") && da.len() == 7 + 64);

        std::fs::set_permissions(
            a.path().join("pkg/m.py"),
            std::fs::Permissions::from_mode(0o755),
        )
        .unwrap();
        let exec = tree_digest(a.path(), &[]).unwrap();
        assert_ne!(da, exec, "the executable bit counts");
        std::fs::write(a.path().join("pkg/m.py"), "x = 2\n").unwrap();
        assert_ne!(exec, tree_digest(a.path(), &[]).unwrap(), "content counts");
    }
}
