//! The build context: an in-memory tar holding `Dockerfile`, `app/` (the source tree without
//! `.git` and `__pycache__`), `iac-agent`, `wheels/otel/` and `wheels/app/`. Entries are sorted and
//! carry fixed owners and mtimes, so the same inputs give the same bytes. Also: a check that the
//! agent is statically linked (it must run on any base image).

use std::path::{Path, PathBuf};

use iac_core::BuildError;

/// Fixed mtime of every entry (2020-01-01T00:00:00Z): a fetched tree's mtimes mean nothing.
const MTIME: u64 = 1_577_836_800;

/// What goes into a build context.
#[derive(Debug, Clone)]
pub struct ContextInputs<'a> {
    pub dockerfile: &'a str,
    pub source_dir: &'a Path,
    pub agent_binary: &'a Path,
    /// Copied to `wheels/otel/` (only `*.whl`).
    pub otel_wheels: Option<&'a Path>,
    /// Copied to `wheels/app/` (only `*.whl`).
    pub app_wheels: Option<&'a Path>,
}

/// A built context and what it holds, for events.
#[derive(Debug)]
pub struct BuiltContext {
    pub tar: Vec<u8>,
    pub files: usize,
    /// Special files (sockets, fifos, devices) that were left out.
    pub skipped: Vec<PathBuf>,
}

/// Builds the context tar in memory. Blocking (file I/O): run it on a blocking thread.
pub fn build_context(inputs: &ContextInputs<'_>) -> Result<BuiltContext, BuildError> {
    let mut b = tar::Builder::new(Vec::new());
    b.follow_symlinks(false);
    let mut ctx = BuiltContext {
        tar: Vec::new(),
        files: 0,
        skipped: Vec::new(),
    };

    append_bytes(&mut b, "Dockerfile", inputs.dockerfile.as_bytes(), 0o644)?;
    let agent =
        std::fs::read(inputs.agent_binary).map_err(|e| agent_error(inputs.agent_binary, e))?;
    append_bytes(&mut b, "iac-agent", &agent, 0o755)?;

    append_dir(&mut b, "app")?;
    walk(
        &mut b,
        inputs.source_dir,
        inputs.source_dir,
        "app",
        &mut ctx,
    )?;
    append_dir(&mut b, "wheels")?;
    for (dir, name) in [
        (inputs.otel_wheels, "wheels/otel"),
        (inputs.app_wheels, "wheels/app"),
    ] {
        append_dir(&mut b, name)?;
        if let Some(dir) = dir {
            for path in sorted_entries(dir)? {
                let file_name = path
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                if !file_name.ends_with(".whl") || !path.is_file() {
                    continue;
                }
                let bytes = std::fs::read(&path).map_err(|source| BuildError::Io {
                    path: path.clone(),
                    source,
                })?;
                append_bytes(&mut b, &format!("{name}/{file_name}"), &bytes, 0o644)?;
            }
        }
    }
    ctx.tar = b
        .into_inner()
        .map_err(|e| BuildError::Context(format!("finishing the context tar: {e}")))?;
    Ok(ctx)
}

/// The error for an unreadable agent binary, saying how to get one.
pub fn agent_error(path: &Path, e: std::io::Error) -> BuildError {
    BuildError::Context(format!(
        "agent binary {}: {e}; build it with scripts/build-agent.sh (`make agent`) or set images.agent_binary",
        path.display()
    ))
}

/// The ELF interpreter (dynamic loader) a binary asks for, if any. `None` for static binaries
/// (including static-pie) and for files that are not 64-bit little-endian ELF.
pub fn elf_interpreter(bytes: &[u8]) -> Option<String> {
    const PT_INTERP: u32 = 3;
    if bytes.len() < 64 || &bytes[..4] != b"\x7fELF" || bytes[4] != 2 || bytes[5] != 1 {
        return None;
    }
    let u16_at = |o: usize| {
        bytes
            .get(o..o + 2)
            .map(|s| u16::from_le_bytes([s[0], s[1]]))
    };
    let u32_at = |o: usize| {
        bytes
            .get(o..o + 4)
            .map(|s| u32::from_le_bytes(s.try_into().expect("4 bytes")))
    };
    let u64_at = |o: usize| {
        bytes
            .get(o..o + 8)
            .map(|s| u64::from_le_bytes(s.try_into().expect("8 bytes")))
    };
    let phoff = usize::try_from(u64_at(0x20)?).ok()?;
    let phentsize = usize::from(u16_at(0x36)?);
    let phnum = usize::from(u16_at(0x38)?);
    for i in 0..phnum {
        let ph = phoff.checked_add(i.checked_mul(phentsize)?)?;
        if u32_at(ph)? == PT_INTERP {
            let off = usize::try_from(u64_at(ph + 8)?).ok()?;
            let size = usize::try_from(u64_at(ph + 32)?).ok()?;
            let raw = bytes.get(off..off.checked_add(size)?)?;
            return Some(
                String::from_utf8_lossy(raw)
                    .trim_end_matches('\0')
                    .to_string(),
            );
        }
    }
    None
}

fn walk(
    b: &mut tar::Builder<Vec<u8>>,
    root: &Path,
    dir: &Path,
    prefix: &str,
    ctx: &mut BuiltContext,
) -> Result<(), BuildError> {
    for path in sorted_entries(dir)? {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if name == ".git" || name == "__pycache__" {
            continue;
        }
        let rel = path.strip_prefix(root).expect("walk stays under root");
        let rel = rel.to_str().ok_or_else(|| {
            BuildError::Context(format!("{}: file name is not valid UTF-8", path.display()))
        })?;
        let in_tar = format!("{prefix}/{rel}");
        let meta = std::fs::symlink_metadata(&path).map_err(|source| BuildError::Io {
            path: path.clone(),
            source,
        })?;
        let ft = meta.file_type();
        if ft.is_symlink() {
            let target = std::fs::read_link(&path).map_err(|source| BuildError::Io {
                path: path.clone(),
                source,
            })?;
            let mut h = header(tar::EntryType::Symlink, 0o777, 0);
            b.append_link(&mut h, &in_tar, &target)
                .map_err(|e| tar_error(&in_tar, e))?;
            ctx.files += 1;
        } else if ft.is_dir() {
            append_dir(b, &in_tar)?;
            walk(b, root, &path, prefix, ctx)?;
        } else if ft.is_file() {
            use std::os::unix::fs::PermissionsExt;
            let mode = if meta.permissions().mode() & 0o111 != 0 {
                0o755
            } else {
                0o644
            };
            let f = std::fs::File::open(&path).map_err(|source| BuildError::Io {
                path: path.clone(),
                source,
            })?;
            let mut h = header(tar::EntryType::Regular, mode, meta.len());
            b.append_data(&mut h, &in_tar, f)
                .map_err(|e| tar_error(&in_tar, e))?;
            ctx.files += 1;
        } else {
            ctx.skipped.push(path);
        }
    }
    Ok(())
}

fn sorted_entries(dir: &Path) -> Result<Vec<PathBuf>, BuildError> {
    let rd = std::fs::read_dir(dir).map_err(|source| BuildError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let mut out = Vec::new();
    for e in rd {
        out.push(
            e.map_err(|source| BuildError::Io {
                path: dir.to_path_buf(),
                source,
            })?
            .path(),
        );
    }
    out.sort();
    Ok(out)
}

fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_size(size);
    h.set_mtime(MTIME);
    h.set_uid(0);
    h.set_gid(0);
    h
}

fn append_dir(b: &mut tar::Builder<Vec<u8>>, path: &str) -> Result<(), BuildError> {
    let mut h = header(tar::EntryType::Directory, 0o755, 0);
    b.append_data(&mut h, format!("{path}/"), std::io::empty())
        .map_err(|e| tar_error(path, e))
}

fn append_bytes(
    b: &mut tar::Builder<Vec<u8>>,
    path: &str,
    bytes: &[u8],
    mode: u32,
) -> Result<(), BuildError> {
    let mut h = header(tar::EntryType::Regular, mode, bytes.len() as u64);
    b.append_data(&mut h, path, bytes)
        .map_err(|e| tar_error(path, e))
}

fn tar_error(path: &str, e: std::io::Error) -> BuildError {
    BuildError::Context(format!("adding {path} to the build context: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(tar: &[u8]) -> Vec<(String, u32)> {
        let mut a = tar::Archive::new(tar);
        a.entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (
                    e.path().unwrap().to_string_lossy().into_owned(),
                    e.header().mode().unwrap(),
                )
            })
            .collect()
    }

    #[test]
    fn context_holds_tree_agent_wheels_and_is_deterministic() {
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("src");
        std::fs::create_dir_all(src.join(".git/objects")).unwrap();
        std::fs::write(src.join(".git/HEAD"), "ref").unwrap();
        std::fs::create_dir_all(src.join("pkg/__pycache__")).unwrap();
        std::fs::write(src.join("pkg/__pycache__/x.pyc"), "junk").unwrap();
        std::fs::write(src.join("pkg/__init__.py"), "").unwrap();
        std::fs::write(src.join("main.py"), "print('hi')\n").unwrap();
        std::os::unix::fs::symlink("main.py", src.join("alias.py")).unwrap();
        let agent = d.path().join("agent");
        std::fs::write(&agent, "#!/bin/sh\n").unwrap();
        let wh = d.path().join("wh");
        std::fs::create_dir(&wh).unwrap();
        std::fs::write(wh.join("x-1-py3-none-any.whl"), "w").unwrap();
        std::fs::write(wh.join(".iac-wheelhouse"), "stamp").unwrap();
        let inputs = ContextInputs {
            dockerfile: "FROM scratch\n",
            source_dir: &src,
            agent_binary: &agent,
            otel_wheels: Some(&wh),
            app_wheels: None,
        };
        let one = build_context(&inputs).unwrap();
        let two = build_context(&inputs).unwrap();
        assert_eq!(one.tar, two.tar, "same inputs, same bytes");
        assert_eq!(one.files, 3);
        let names = list(&one.tar);
        let paths: Vec<&str> = names.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(
            paths,
            [
                "Dockerfile",
                "iac-agent",
                "app/",
                "app/alias.py",
                "app/main.py",
                "app/pkg/",
                "app/pkg/__init__.py",
                "wheels/",
                "wheels/otel/",
                "wheels/otel/x-1-py3-none-any.whl",
                "wheels/app/",
            ]
        );
        assert_eq!(names[1].1, 0o755, "agent is executable");
    }

    #[test]
    fn missing_agent_says_how_to_build_it() {
        let d = tempfile::tempdir().unwrap();
        let inputs = ContextInputs {
            dockerfile: "FROM scratch\n",
            source_dir: d.path(),
            agent_binary: &d.path().join("no-agent"),
            otel_wheels: None,
            app_wheels: None,
        };
        let err = build_context(&inputs).unwrap_err().to_string();
        assert!(
            err.contains("no-agent") && err.contains("build-agent.sh"),
            "{err}"
        );
    }

    #[test]
    fn elf_interpreter_tells_dynamic_from_static() {
        let sh = std::fs::read("/bin/sh").unwrap();
        let interp = elf_interpreter(&sh).expect("/bin/sh is dynamically linked");
        assert!(interp.contains("ld-linux"), "{interp}");
        assert_eq!(elf_interpreter(b"#!/bin/sh\necho hi\n"), None);
        assert_eq!(
            elf_interpreter(&[0x7f, b'E', b'L', b'F', 2, 1, 0, 0]),
            None,
            "truncated header"
        );
    }
}
