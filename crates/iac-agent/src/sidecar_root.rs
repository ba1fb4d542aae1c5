//! `--sidecar-root`: the separate root filesystem the sidecar (Envoy) runs in on Docker Swarm,
//! where it shares one container with the app.
//!
//! The pod image carries Envoy's own root (its binary, its glibc and loader, an `/etc` of its own)
//! under one directory, copied there in the last layer, after every build step of the app. The
//! agent `chroot`s the sidecar into it, so Envoy never loads the app image's libraries, never reads
//! its `/etc/ld.so.preload`, and finds its config and keys only where iac mounted them.
//!
//! What is checked before the sidecar starts ([`check`]): the root and every directory above it
//! is a real directory (not a symlink), owned by root and writable by nobody else, and the sidecar
//! program inside is such a file. A root the app's user could change (an app image whose build
//! made `/` writable, or planted a symlink where the root goes) is refused with an error naming the
//! path, rather than run. [`prepare`] then copies the container's `/etc/resolv.conf` and
//! `/etc/hosts` (written by the engine at start, so not in the image) into the root's `/etc`.

use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

/// The files the engine writes into a container at start that Envoy needs for DNS.
const RUNTIME_FILES: [&str; 2] = ["etc/resolv.conf", "etc/hosts"];

/// Whether `meta` is owned by root and writable by nobody else.
fn root_only(meta: &std::fs::Metadata) -> bool {
    meta.uid() == 0 && meta.permissions().mode() & 0o022 == 0
}

/// Checks one path component by component from `/`: every entry a real directory (the last one,
/// when `file` is true, a regular file) that only root may change.
fn check_path(path: &Path, file: bool) -> Result<(), String> {
    if !path.is_absolute() {
        return Err(format!("{}: expected an absolute path", path.display()));
    }
    let parts: Vec<Component<'_>> = path.components().collect();
    if let Some(other) = parts
        .iter()
        .find(|p| !matches!(p, Component::RootDir | Component::Normal(_)))
    {
        return Err(format!(
            "{}: expected a plain path (no {:?} component)",
            path.display(),
            other.as_os_str()
        ));
    }
    let mut at = PathBuf::from("/");
    let last = parts.len().saturating_sub(1);
    for (i, part) in parts.iter().enumerate() {
        if let Component::Normal(p) = part {
            at.push(p);
        }
        let meta = std::fs::symlink_metadata(&at).map_err(|e| format!("{}: {e}", at.display()))?;
        let want_file = file && i == last;
        let kind_ok = if want_file {
            meta.file_type().is_file()
        } else {
            meta.file_type().is_dir()
        };
        if !kind_ok {
            return Err(format!(
                "{}: expected a {} (not a symlink), found {}",
                at.display(),
                if want_file {
                    "regular file"
                } else {
                    "directory"
                },
                describe(&meta)
            ));
        }
        if !root_only(&meta) {
            return Err(format!(
                "{}: owned by uid {} with mode {:o}; expected owned by root and writable by no one \
                 else, so the app's user cannot change what the sidecar runs",
                at.display(),
                meta.uid(),
                meta.permissions().mode() & 0o7777
            ));
        }
    }
    Ok(())
}

fn describe(meta: &std::fs::Metadata) -> &'static str {
    let t = meta.file_type();
    if t.is_symlink() {
        "a symlink"
    } else if t.is_dir() {
        "a directory"
    } else if t.is_file() {
        "a regular file"
    } else {
        "a special file"
    }
}

/// Checks the sidecar root `root` and the program `program` (an absolute path inside it).
pub fn check(root: &Path, program: &str) -> Result<(), String> {
    let prefix = |e: String| format!("--sidecar-root: {e}");
    check_path(root, false).map_err(prefix)?;
    if !program.starts_with('/') {
        return Err(format!(
            "--sidecar-root: the sidecar program {program:?} must be an absolute path inside the root"
        ));
    }
    check_path(&root.join(program.trim_start_matches('/')), true).map_err(prefix)
}

/// Copies the engine-written runtime files (`/etc/resolv.conf`, `/etc/hosts`) into the root,
/// each through a temp file and a rename, 0644. A file the container lacks is skipped.
pub fn prepare(root: &Path) -> io::Result<()> {
    for rel in RUNTIME_FILES {
        let src = Path::new("/").join(rel);
        let bytes = match std::fs::read(&src) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io::Error::new(e.kind(), format!("{}: {e}", src.display()))),
        };
        let dst = root.join(rel);
        let dir = dst.parent().unwrap_or(root);
        std::fs::create_dir_all(dir)?;
        let tmp = dir.join(format!(
            ".{}.iac-tmp",
            rel.rsplit('/').next().unwrap_or("f")
        ));
        std::fs::write(&tmp, &bytes)?;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o644))?;
        std::fs::rename(&tmp, &dst)
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", dst.display())))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn is_root() -> bool {
        // SAFETY: geteuid has no preconditions.
        unsafe { libc::geteuid() == 0 }
    }

    /// A tree `r/usr/local/bin/envoy` in a fresh 0755 temp dir under the crate's own directory
    /// (not /tmp, which is world-writable and so refused as every ancestor is checked).
    fn tree() -> tempfile::TempDir {
        let t = tempfile::Builder::new()
            .prefix(".sidecar-root-test")
            .tempdir_in(env!("CARGO_MANIFEST_DIR"))
            .unwrap();
        std::fs::set_permissions(t.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::create_dir_all(t.path().join("r/usr/local/bin")).unwrap();
        std::fs::write(t.path().join("r/usr/local/bin/envoy"), b"#!").unwrap();
        std::fs::set_permissions(
            t.path().join("r/usr/local/bin/envoy"),
            std::fs::Permissions::from_mode(0o755),
        )
        .unwrap();
        t
    }

    #[test]
    fn relative_and_dotted_paths_are_refused() {
        let e = check(Path::new("iac-envoy"), "/bin/x").unwrap_err();
        assert!(e.contains("absolute"), "{e}");
        let e = check(Path::new("/tmp/../iac-envoy"), "/bin/x").unwrap_err();
        assert!(e.contains("plain path"), "{e}");
        let e = check(Path::new("/"), "envoy").unwrap_err();
        assert!(e.contains("absolute path inside the root"), "{e}");
    }

    #[test]
    fn a_root_owned_tree_passes_and_a_writable_or_linked_one_fails() {
        if !is_root() {
            eprintln!("skipped: needs root to own the tree");
            return;
        }
        let t = tree();
        let base = t.path().to_path_buf();
        let ancestors_ok = base.ancestors().all(|a| {
            let m = std::fs::symlink_metadata(a).unwrap();
            root_only(&m) && !m.file_type().is_symlink()
        });
        if !ancestors_ok {
            eprintln!("skipped: the crate directory's ancestors are not root-only");
            return;
        }
        let root = base.join("r");
        check(&root, "/usr/local/bin/envoy").unwrap();

        // The program must exist, be a file, and be root-only.
        let e = check(&root, "/usr/local/bin/missing").unwrap_err();
        assert!(e.contains("missing"), "{e}");
        std::fs::set_permissions(
            root.join("usr/local/bin/envoy"),
            std::fs::Permissions::from_mode(0o666),
        )
        .unwrap();
        let e = check(&root, "/usr/local/bin/envoy").unwrap_err();
        assert!(e.contains("writable by no one else"), "{e}");
        std::fs::set_permissions(
            root.join("usr/local/bin/envoy"),
            std::fs::Permissions::from_mode(0o755),
        )
        .unwrap();

        // A group-writable directory on the way.
        std::fs::set_permissions(root.join("usr"), std::fs::Permissions::from_mode(0o775)).unwrap();
        let e = check(&root, "/usr/local/bin/envoy").unwrap_err();
        assert!(e.contains("/usr") && e.contains("775"), "{e}");
        std::fs::set_permissions(root.join("usr"), std::fs::Permissions::from_mode(0o755)).unwrap();

        // A directory owned by someone else.
        std::os::unix::fs::chown(root.join("usr/local"), Some(1000), None).unwrap();
        let e = check(&root, "/usr/local/bin/envoy").unwrap_err();
        assert!(e.contains("uid 1000"), "{e}");
        std::os::unix::fs::chown(root.join("usr/local"), Some(0), None).unwrap();

        // A symlink standing where the root goes.
        let link = base.join("link");
        symlink(&root, &link).unwrap();
        let e = check(&link, "/usr/local/bin/envoy").unwrap_err();
        assert!(e.contains("symlink"), "{e}");
    }

    #[test]
    fn a_tree_under_a_world_writable_dir_is_refused() {
        let t = tree();
        std::fs::set_permissions(t.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        let e = check(&t.path().join("r"), "/usr/local/bin/envoy").unwrap_err();
        assert!(
            e.contains("writable by no one else") || e.contains("uid"),
            "{e}"
        );
    }

    #[test]
    fn prepare_copies_the_runtime_files_it_finds() {
        let t = tree();
        prepare(&t.path().join("r")).unwrap();
        for rel in RUNTIME_FILES {
            let src = Path::new("/").join(rel);
            if let Ok(want) = std::fs::read(&src) {
                let dst = t.path().join("r").join(rel);
                assert_eq!(std::fs::read(&dst).unwrap(), want, "{rel}");
                let mode = std::fs::metadata(&dst).unwrap().permissions().mode() & 0o777;
                assert_eq!(mode, 0o644, "{rel}");
            }
        }
        // Again: replaced in place, no temp file left.
        prepare(&t.path().join("r")).unwrap();
        let names: Vec<_> = std::fs::read_dir(t.path().join("r/etc"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert!(
            names
                .iter()
                .all(|n| !n.to_string_lossy().contains("iac-tmp")),
            "{names:?}"
        );
    }
}
