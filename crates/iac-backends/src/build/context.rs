//! The build context: a tar holding `Dockerfile`, `app/` (the source tree's file set from
//! [`super::tree::list_tree`]: no `.git`, `.iac`, `.env*`, caches or what `.dockerignore`
//! excludes), `iac-agent`, `wheels/otel/` and `wheels/app/`. It is written to an anonymous temp
//! file, never held in memory, and capped at `max_bytes` while it is written (an error names the
//! source and the cap). Entries are sorted and carry fixed owners and mtimes, so the same inputs
//! give the same bytes. Also: a check that the agent is statically linked (it must run on any
//! base image).

use std::fs::File;
use std::io::{Seek, Write};
use std::path::{Path, PathBuf};

use iac_core::BuildError;

use super::tree::{EntryKind, TreeError, list_tree};

/// Fixed mtime of every entry (2020-01-01T00:00:00Z): a fetched tree's mtimes mean nothing.
const MTIME: u64 = 1_577_836_800;

/// Files of `wheels/app/` besides `*.whl` (written by [`super::resolver::Resolver`]).
pub const APP_WHEEL_LISTS: &[&str] = &[
    super::wheels::REQUIREMENTS_FILE,
    super::wheels::CONSTRAINTS_FILE,
    super::wheels::LOCAL_FILE,
];

/// What goes into a build context.
#[derive(Debug, Clone)]
pub struct ContextInputs<'a> {
    /// The rendered Dockerfile, written as `Dockerfile` at the context's root.
    pub dockerfile: &'a str,
    /// The fetched source tree, copied to `src/` (minus `.dockerignore`d paths).
    pub source_dir: &'a Path,
    /// Names the source in errors (its origin or slug).
    pub source_name: &'a str,
    /// The `iac-agent` executable copied into the image.
    pub agent_binary: &'a Path,
    /// Copied to `wheels/otel/` (only `*.whl`).
    pub otel_wheels: Option<&'a Path>,
    /// Copied to `wheels/app/` (`*.whl` and [`APP_WHEEL_LISTS`]).
    pub app_wheels: Option<&'a Path>,
    /// Cap on the context tar's size in bytes.
    pub max_bytes: u64,
}

/// A built context and what it holds, for events.
#[derive(Debug)]
pub struct BuiltContext {
    /// The tar, in an unlinked temp file, positioned at its start.
    pub file: File,
    /// Size of the tar.
    pub bytes: u64,
    /// Regular files in the tar.
    pub files: usize,
    /// Special files (sockets, fifos, devices) that were left out.
    pub skipped: Vec<PathBuf>,
}

/// A writer that refuses to grow past a cap.
struct Capped<W> {
    inner: W,
    written: u64,
    cap: u64,
}

impl<W: Write> Write for Capped<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.written.saturating_add(buf.len() as u64) > self.cap {
            return Err(std::io::Error::new(
                std::io::ErrorKind::FileTooLarge,
                CapExceeded,
            ));
        }
        let n = self.inner.write(buf)?;
        self.written += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

#[derive(Debug)]
struct CapExceeded;

impl std::fmt::Display for CapExceeded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("build context cap exceeded")
    }
}

impl std::error::Error for CapExceeded {}

type Tar = tar::Builder<Capped<File>>;

/// Reads exactly `len` bytes of a file (the size its tar header announced): a file that grew is
/// cut there, one that shrank is an error — either way the tar stays well-formed.
struct Exact {
    inner: std::io::Take<File>,
    left: u64,
}

impl Exact {
    fn new(f: File, len: u64) -> Self {
        Exact {
            inner: std::io::Read::take(f, len),
            left: len,
        }
    }
}

impl std::io::Read for Exact {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.left -= n as u64;
        if n == 0 && self.left > 0 && !buf.is_empty() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the file shrank while it was being added",
            ));
        }
        Ok(n)
    }
}

/// Builds the context tar into a temp file. Blocking (file I/O): run it on a blocking thread.
pub fn build_context(inputs: &ContextInputs<'_>) -> Result<BuiltContext, BuildError> {
    let cap_error = || {
        BuildError::Context(format!(
            "the build context of {} exceeds the cap of {} bytes ({:.1} MiB; images.max_context_bytes); add a .dockerignore to the source or raise the cap",
            inputs.source_name,
            inputs.max_bytes,
            inputs.max_bytes as f64 / (1024.0 * 1024.0)
        ))
    };
    let listing = list_tree(inputs.source_dir).map_err(|e| match e {
        TreeError::Io { path, source } => BuildError::Io { path, source },
        other => BuildError::Context(format!("{}: {other}", inputs.source_name)),
    })?;
    if listing.file_bytes() > inputs.max_bytes {
        return Err(cap_error());
    }
    let tmp = tempfile::tempfile().map_err(|source| BuildError::Io {
        path: std::env::temp_dir(),
        source,
    })?;
    let mut b = tar::Builder::new(Capped {
        inner: tmp,
        written: 0,
        cap: inputs.max_bytes,
    });
    b.follow_symlinks(false);
    let mut ctx_files = 0usize;
    let result = (|| -> Result<(), BuildError> {
        append_bytes(&mut b, "Dockerfile", inputs.dockerfile.as_bytes(), 0o644)?;
        let agent = std::fs::File::open(inputs.agent_binary)
            .and_then(|f| f.metadata().map(|m| (f, m.len())))
            .map_err(|e| agent_error(inputs.agent_binary, e))?;
        let mut h = header(tar::EntryType::Regular, 0o755, agent.1);
        b.append_data(&mut h, "iac-agent", Exact::new(agent.0, agent.1))
            .map_err(|e| tar_error("iac-agent", e))?;

        append_dir(&mut b, "app")?;
        for e in &listing.entries {
            let in_tar = format!("app/{}", e.rel);
            match &e.kind {
                EntryKind::Dir => append_dir(&mut b, &in_tar)?,
                EntryKind::Symlink { target } => {
                    let mut h = header(tar::EntryType::Symlink, 0o777, 0);
                    b.append_link(&mut h, &in_tar, target)
                        .map_err(|err| tar_error(&in_tar, err))?;
                    ctx_files += 1;
                }
                EntryKind::File { executable, .. } => {
                    let f = std::fs::File::open(&e.path).map_err(|source| BuildError::Io {
                        path: e.path.clone(),
                        source,
                    })?;
                    // The size now, not at listing time; a file that changes while it is being
                    // added fails loudly instead of corrupting the tar (see `Exact`).
                    let len = f
                        .metadata()
                        .map_err(|source| BuildError::Io {
                            path: e.path.clone(),
                            source,
                        })?
                        .len();
                    let mode = if *executable { 0o755 } else { 0o644 };
                    let mut h = header(tar::EntryType::Regular, mode, len);
                    b.append_data(&mut h, &in_tar, Exact::new(f, len))
                        .map_err(|err| tar_error(&in_tar, err))?;
                    ctx_files += 1;
                }
            }
        }
        append_dir(&mut b, "wheels")?;
        for (dir, name, lists) in [
            (inputs.otel_wheels, "wheels/otel", &[][..]),
            (inputs.app_wheels, "wheels/app", APP_WHEEL_LISTS),
        ] {
            append_dir(&mut b, name)?;
            if let Some(dir) = dir {
                for path in sorted_entries(dir)? {
                    let file_name = path
                        .file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_default();
                    let wanted = file_name.ends_with(".whl") || lists.contains(&file_name.as_str());
                    if !wanted || !path.is_file() {
                        continue;
                    }
                    let f = std::fs::File::open(&path).map_err(|source| BuildError::Io {
                        path: path.clone(),
                        source,
                    })?;
                    let len = f
                        .metadata()
                        .map_err(|source| BuildError::Io {
                            path: path.clone(),
                            source,
                        })?
                        .len();
                    let in_tar = format!("{name}/{file_name}");
                    let mut h = header(tar::EntryType::Regular, 0o644, len);
                    b.append_data(&mut h, &in_tar, Exact::new(f, len))
                        .map_err(|e| tar_error(&in_tar, e))?;
                }
            }
        }
        b.finish()
            .map_err(|e| tar_error("the end of the context tar", e))?;
        Ok(())
    })();
    if let Err(e) = result {
        let capped =
            matches!(&e, BuildError::Context(m) if m.contains("build context cap exceeded"));
        return Err(if capped { cap_error() } else { e });
    }
    let capped = b
        .into_inner()
        .map_err(|e| BuildError::Context(format!("finishing the context tar: {e}")))?;
    let bytes = capped.written;
    let mut file = capped.inner;
    file.flush()
        .and_then(|()| file.rewind())
        .map_err(|source| BuildError::Io {
            path: std::env::temp_dir(),
            source,
        })?;
    Ok(BuiltContext {
        file,
        bytes,
        files: ctx_files,
        skipped: listing.skipped,
    })
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

fn append_dir(b: &mut Tar, path: &str) -> Result<(), BuildError> {
    let mut h = header(tar::EntryType::Directory, 0o755, 0);
    b.append_data(&mut h, format!("{path}/"), std::io::empty())
        .map_err(|e| tar_error(path, e))
}

fn append_bytes(b: &mut Tar, path: &str, bytes: &[u8], mode: u32) -> Result<(), BuildError> {
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

    fn bytes(ctx: BuiltContext) -> Vec<u8> {
        let mut f = ctx.file;
        let mut out = Vec::new();
        std::io::Read::read_to_end(&mut f, &mut out).unwrap();
        assert_eq!(out.len() as u64, ctx.bytes);
        out
    }

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
            source_name: "test tree",
            agent_binary: &agent,
            otel_wheels: Some(&wh),
            app_wheels: None,
            max_bytes: 1 << 20,
        };
        let one = build_context(&inputs).unwrap();
        assert_eq!(one.files, 3);
        let one = bytes(one);
        let two = bytes(build_context(&inputs).unwrap());
        assert_eq!(one, two, "same inputs, same bytes");
        let names = list(&one);
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
            source_name: "test tree",
            agent_binary: &d.path().join("no-agent"),
            otel_wheels: None,
            app_wheels: None,
            max_bytes: 1 << 20,
        };
        let err = build_context(&inputs).unwrap_err().to_string();
        assert!(
            err.contains("no-agent") && err.contains("build-agent.sh"),
            "{err}"
        );
    }

    #[test]
    fn context_holds_no_secrets_state_or_ignored_files() {
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("src");
        for dir in [".iac/projects/p", "secrets", "pkg", "build"] {
            std::fs::create_dir_all(src.join(dir)).unwrap();
        }
        for f in [
            ".env",
            ".env.local",
            "pkg/.env",
            ".iac/projects/p/state.json",
            "secrets/ca.key",
            "build/out.bin",
            "pkg/m.py",
        ] {
            std::fs::write(src.join(f), "SECRET").unwrap();
        }
        std::fs::write(src.join(".dockerignore"), "secrets\nbuild/**\n").unwrap();
        let agent = d.path().join("agent");
        std::fs::write(&agent, "x").unwrap();
        let ctx = build_context(&ContextInputs {
            dockerfile: "FROM scratch\n",
            source_dir: &src,
            source_name: "test tree",
            agent_binary: &agent,
            otel_wheels: None,
            app_wheels: None,
            max_bytes: 1 << 20,
        })
        .unwrap();
        let paths: Vec<String> = list(&bytes(ctx)).into_iter().map(|(p, _)| p).collect();
        let app: Vec<&str> = paths
            .iter()
            .map(String::as_str)
            .filter(|p| p.starts_with("app/"))
            .collect();
        // `build/**` leaves out what is under build/, not build/ itself (Docker's semantics).
        assert_eq!(
            app,
            [
                "app/",
                "app/.dockerignore",
                "app/build/",
                "app/pkg/",
                "app/pkg/m.py"
            ]
        );
    }

    #[test]
    fn a_context_over_the_cap_names_the_source_and_the_cap() {
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("src");
        std::fs::create_dir_all(&src).unwrap();
        std::fs::write(src.join("big.bin"), vec![7u8; 64 * 1024]).unwrap();
        let agent = d.path().join("agent");
        std::fs::write(&agent, "x").unwrap();
        let mut inputs = ContextInputs {
            dockerfile: "FROM scratch\n",
            source_dir: &src,
            source_name: "path:/srv/huge",
            agent_binary: &agent,
            otel_wheels: None,
            app_wheels: None,
            max_bytes: 32 * 1024,
        };
        // Over the cap before writing (file sizes alone), and while writing (tar overhead).
        for cap in [32 * 1024, 64 * 1024 + 100] {
            inputs.max_bytes = cap;
            let err = build_context(&inputs).unwrap_err().to_string();
            assert!(
                err.contains("path:/srv/huge") && err.contains(&cap.to_string()),
                "{err}"
            );
        }
        inputs.max_bytes = 1 << 20;
        let ok = build_context(&inputs).unwrap();
        assert!(ok.bytes > 64 * 1024 && ok.bytes < 1 << 20);
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
