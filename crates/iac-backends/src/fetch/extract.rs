//! Safe extraction of untrusted trees: a streamed `.tar.gz` (or plain tar) unpacked into a staging
//! directory, and the `TreeWriter` that the git backend uses too.
//!
//! Rules, enforced per entry with an error naming the entry ([`FetchError::Unsafe`] /
//! [`FetchError::TooLarge`]):
//! - no absolute paths and no `..` components (in entry paths and in hardlink targets);
//! - no device files, fifos or unknown entry types;
//! - no write, mkdir or link creation ever traverses a symlink: directories are created one
//!   component at a time from the staging root (which must already exist and is never
//!   re-created), and every existing component is checked with `lstat` — a symlink or a
//!   non-directory on the way is an error, never followed;
//! - symlinks are created only after every other entry is written (so no file lands behind a
//!   link), in archive order; each target is resolved component by component inside the final
//!   root *before* the link is created (following the links created so far) and every link is
//!   resolved again once all exist; a target that would leave the tree (absolute, `..` above the
//!   root, through an absolute link, a loop) is an error;
//! - hardlinks must point at a regular file already extracted from the same archive;
//! - the sum of regular file sizes stays under `max_bytes`, the number of entries under
//!   `max_files`, and the decompressed stream under a bound derived from both;
//! - tar metadata the `tar` crate buffers whole (GNU long names/links, pax headers) is capped
//!   per entry by [`TarGuard`] before it is read (4 KiB / 64 KiB);
//! - permissions are normalised to 0644/0755 (no setuid, no world-writable files).
//!
//! Because nothing is created through a link, a failed extraction has written nothing outside
//! the staging directory. Archives made by forges wrap everything in one top-level directory
//! (`owner-repo-sha/`): when the staging dir ends up holding exactly one directory, that
//! directory is the tree. The staging dir is the caller's (a `tempfile::TempDir` under the
//! cache), so a failure leaves nothing behind once it is dropped.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::io::{self, Read};
use std::path::{Component, Path, PathBuf};

use iac_core::FetchError;
use sha2::{Digest, Sha256};

use super::tar_guard::{HeaderTooLarge, TarGuard};

/// Caps applied to one extracted tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Sum of regular file sizes, in bytes.
    pub max_bytes: u64,
    /// Number of entries (files, directories, links).
    pub max_files: u64,
}

impl Limits {
    /// Bound on the decompressed tar stream: contents + generous per-entry header overhead.
    /// Also the bound on one git tree or commit object (metadata, not file contents).
    pub(crate) fn max_stream(&self) -> u64 {
        self.max_bytes
            .saturating_add(self.max_files.saturating_mul(4096))
            .saturating_add(1 << 20)
    }
}

/// What an extraction produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Extracted {
    /// The tree root: the staging dir, or its single top-level directory.
    pub root: PathBuf,
    /// Commit id from the archive's pax global header (`git archive` writes `comment=<sha>`).
    pub commit: Option<String>,
    /// `sha256:<hex>` over the archive bytes as received (compressed).
    pub archive_digest: String,
    /// Archive bytes read (compressed).
    pub archive_bytes: u64,
    /// Regular files written.
    pub files: u64,
    /// Bytes of regular file contents written (unpacked).
    pub bytes: u64,
}

/// Unpacks a gzip-compressed tar stream into `staging` (an existing, empty directory).
/// `label` names the archive (its URL) in format errors.
pub fn extract_tar_gz<R: Read>(
    reader: R,
    staging: &Path,
    limits: Limits,
    label: &str,
) -> Result<Extracted, FetchError> {
    let hashing = HashingReader::new(reader);
    let gz = flate2::read::GzDecoder::new(hashing);
    let capped = CappedReader {
        inner: gz,
        left: limits.max_stream(),
        limit: limits.max_stream(),
    };
    let (extracted, capped) = extract_inner(capped, staging, limits, label)?;
    let mut hashing = capped.inner.into_inner();
    drain(&mut hashing, label)?;
    Ok(hashing.finish(extracted))
}

/// Unpacks an uncompressed tar stream into `staging` (an existing, empty directory).
pub fn extract_tar<R: Read>(
    reader: R,
    staging: &Path,
    limits: Limits,
    label: &str,
) -> Result<Extracted, FetchError> {
    let hashing = HashingReader::new(reader);
    let capped = CappedReader {
        inner: hashing,
        left: limits.max_stream(),
        limit: limits.max_stream(),
    };
    let (extracted, capped) = extract_inner(capped, staging, limits, label)?;
    let mut hashing = capped.inner;
    drain(&mut hashing, label)?;
    Ok(hashing.finish(extracted))
}

fn drain<R: Read>(r: &mut HashingReader<R>, label: &str) -> Result<(), FetchError> {
    io::copy(r, &mut io::sink())
        .map(|_| ())
        .map_err(|e| invalid_archive(label, e))
}

fn invalid_archive(label: &str, e: io::Error) -> FetchError {
    if let Some(too) = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<HeaderTooLarge>())
    {
        return FetchError::Unsafe {
            entry: too.entry.clone(),
            why: format!(
                "{} entry of {} bytes; the cap is {} bytes, refused before reading it",
                too.kind, too.size, too.cap
            ),
        };
    }
    if let Some(too) = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<StreamTooLarge>())
    {
        return FetchError::TooLarge {
            what: "decompressed archive stream".into(),
            limit: too.0,
        };
    }
    FetchError::Http {
        url: label.to_string(),
        status: None,
        message: format!("not a valid tar.gz archive (or the download broke off): {e}"),
    }
}

struct Partial {
    commit: Option<String>,
    files: u64,
    bytes: u64,
    root: PathBuf,
}

fn extract_inner<R: Read>(
    reader: R,
    staging: &Path,
    limits: Limits,
    label: &str,
) -> Result<(Partial, R), FetchError> {
    // The guard refuses oversized long-name and pax entries before the tar crate buffers them.
    let mut archive = tar::Archive::new(TarGuard::new(reader));
    let mut writer = TreeWriter::new(staging, limits);
    let mut commit = None;
    let entries = archive.entries().map_err(|e| invalid_archive(label, e))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| invalid_archive(label, e))?;
        let kind = entry.header().entry_type();
        let name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        use tar::EntryType as T;
        match kind {
            T::XGlobalHeader => {
                if let Some(exts) = entry
                    .pax_extensions()
                    .map_err(|e| invalid_archive(label, e))?
                {
                    for ext in exts.flatten() {
                        if ext.key() == Ok("comment")
                            && let Ok(v) = ext.value()
                            && is_full_sha(v.trim())
                        {
                            commit = Some(v.trim().to_ascii_lowercase());
                        }
                    }
                }
            }
            T::Directory => writer.dir(&name)?,
            T::Regular | T::Continuous | T::GNUSparse => {
                let mode = entry.header().mode().unwrap_or(0o644);
                let size = entry.size();
                writer
                    .file(&name, size, &mut entry, mode & 0o111 != 0)
                    .map_err(|e| match e {
                        WriteError::Fetch(f) => f,
                        WriteError::Read(e) => invalid_archive(label, e),
                    })?;
            }
            T::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .map(|b| String::from_utf8_lossy(&b).into_owned())
                    .unwrap_or_default();
                writer.symlink(&name, &target)?;
            }
            T::Link => {
                let target = entry
                    .link_name_bytes()
                    .map(|b| String::from_utf8_lossy(&b).into_owned())
                    .unwrap_or_default();
                writer.hardlink(&name, &target)?;
            }
            T::Char | T::Block => return Err(unsafe_entry(&name, "device files are not allowed")),
            T::Fifo => return Err(unsafe_entry(&name, "fifos are not allowed")),
            other => {
                return Err(unsafe_entry(
                    &name,
                    &format!(
                        "unsupported entry type {:?}; expected files, directories and links",
                        other.as_byte() as char
                    ),
                ));
            }
        }
    }
    let (root, files, bytes) = writer.finish(true)?;
    Ok((
        Partial {
            commit,
            files,
            bytes,
            root,
        },
        archive.into_inner().into_inner(),
    ))
}

/// A 40- (sha1) or 64- (sha256) hex digit commit id.
pub fn is_full_sha(s: &str) -> bool {
    (s.len() == 40 || s.len() == 64) && s.bytes().all(|b| b.is_ascii_hexdigit())
}

fn unsafe_entry(entry: &str, why: &str) -> FetchError {
    FetchError::Unsafe {
        entry: entry.to_string(),
        why: why.to_string(),
    }
}

/// Error of one file write: the tree rules (a [`FetchError`]) or the source stream.
pub(crate) enum WriteError {
    Fetch(FetchError),
    Read(io::Error),
}

impl From<FetchError> for WriteError {
    fn from(e: FetchError) -> Self {
        WriteError::Fetch(e)
    }
}

/// Writes an untrusted tree under a root, enforcing the module's rules.
pub(crate) struct TreeWriter {
    root: PathBuf,
    limits: Limits,
    files: u64,
    bytes: u64,
    /// Deferred symlinks: (relative path, target, entry name).
    symlinks: Vec<(PathBuf, String, String)>,
}

impl TreeWriter {
    pub(crate) fn new(root: &Path, limits: Limits) -> Self {
        TreeWriter {
            root: root.to_path_buf(),
            limits,
            files: 0,
            bytes: 0,
            symlinks: Vec::new(),
        }
    }

    /// Checks an entry path: relative, no `..`; `.` components dropped. `None` for the root itself.
    fn rel(name: &str) -> Result<Option<PathBuf>, FetchError> {
        let mut out = PathBuf::new();
        for c in Path::new(name).components() {
            match c {
                Component::Prefix(_) | Component::RootDir => {
                    return Err(unsafe_entry(name, "absolute paths are not allowed"));
                }
                Component::ParentDir => {
                    return Err(unsafe_entry(name, "'..' path components are not allowed"));
                }
                Component::CurDir => {}
                Component::Normal(n) => out.push(n),
            }
        }
        Ok(if out.as_os_str().is_empty() {
            None
        } else {
            Some(out)
        })
    }

    fn count(&mut self, name: &str) -> Result<(), FetchError> {
        self.files += 1;
        if self.files > self.limits.max_files {
            return Err(FetchError::TooLarge {
                what: format!("entry count (exceeded at entry {name:?})"),
                limit: self.limits.max_files,
            });
        }
        Ok(())
    }

    fn io(path: &Path) -> impl FnOnce(io::Error) -> FetchError + '_ {
        move |source| FetchError::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    /// Walks `rel` below the root one component at a time with `lstat`, creating missing
    /// directories with a single `mkdir` each (`create`) and refusing any component that is a
    /// symlink or not a directory. The root itself must exist: it is never created, so a staging
    /// dir removed under a running extraction stays removed. Returns the directory's path.
    fn walk_dirs(&self, name: &str, rel: &Path, create: bool) -> Result<PathBuf, FetchError> {
        let mut at = self.root.clone();
        let mut shown = PathBuf::new();
        for c in rel.components() {
            at.push(c);
            shown.push(c);
            match std::fs::symlink_metadata(&at) {
                Ok(m) if m.file_type().is_symlink() => {
                    return Err(unsafe_entry(
                        name,
                        &format!(
                            "its path goes through the symlink {:?}; nothing is ever written through a link",
                            shown.display().to_string()
                        ),
                    ));
                }
                Ok(m) if m.is_dir() => {}
                Ok(_) => {
                    return Err(unsafe_entry(
                        name,
                        &format!(
                            "its parent {:?} is a file, expected a directory",
                            shown.display().to_string()
                        ),
                    ));
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound && create => {
                    let mut b = std::fs::DirBuilder::new();
                    {
                        use std::os::unix::fs::DirBuilderExt;
                        b.mode(0o755);
                    }
                    b.create(&at).map_err(Self::io(&at))?;
                }
                Err(e) => return Err(Self::io(&at)(e)),
            }
        }
        Ok(at)
    }

    /// Makes room for a non-directory entry at `rel`: creates its parents (never through a
    /// link), removes an earlier file or link entry of the same name (tar semantics: the later
    /// entry wins; `unlink` removes a link itself, never its target).
    fn prepare(&self, name: &str, rel: &Path) -> Result<PathBuf, FetchError> {
        let parent = self.walk_dirs(name, rel.parent().unwrap_or(Path::new("")), true)?;
        let path = parent.join(rel.file_name().expect("checked entry paths end in a name"));
        match std::fs::symlink_metadata(&path) {
            Ok(m) if m.is_dir() => Err(unsafe_entry(
                name,
                "a file entry replaces a directory of the same name",
            )),
            Ok(_) => std::fs::remove_file(&path)
                .map(|_| path.clone())
                .map_err(Self::io(&path)),
            Err(_) => Ok(path),
        }
    }

    pub(crate) fn dir(&mut self, name: &str) -> Result<(), FetchError> {
        let Some(rel) = Self::rel(name)? else {
            return Ok(());
        };
        self.count(name)?;
        self.walk_dirs(name, &rel, true).map(|_| ())
    }

    /// Refuses an entry of `size` bytes that would take the tree over `max_bytes`. Called by
    /// [`TreeWriter::file`], and by the git backend with the size from an object header before
    /// the object is inflated.
    pub(crate) fn reserve(&self, name: &str, size: u64) -> Result<(), FetchError> {
        if self.bytes.saturating_add(size) > self.limits.max_bytes {
            return Err(FetchError::TooLarge {
                what: format!("unpacked size (exceeded at entry {name:?}, {size} bytes)"),
                limit: self.limits.max_bytes,
            });
        }
        Ok(())
    }

    pub(crate) fn file(
        &mut self,
        name: &str,
        size: u64,
        data: &mut dyn Read,
        executable: bool,
    ) -> Result<(), WriteError> {
        let rel =
            Self::rel(name)?.ok_or_else(|| unsafe_entry(name, "a file entry needs a name"))?;
        self.count(name)?;
        self.reserve(name, size)?;
        let path = self.prepare(name, &rel)?;
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create_new(true);
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(if executable { 0o755 } else { 0o644 });
        }
        let mut f = opts.open(&path).map_err(Self::io(&path))?;
        let mut limited = data.take(size);
        let mut buf = vec![0u8; 64 * 1024];
        let mut written = 0u64;
        loop {
            let n = match limited.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(WriteError::Read(e)),
            };
            io::Write::write_all(&mut f, &buf[..n]).map_err(Self::io(&path))?;
            written += n as u64;
        }
        if written != size {
            return Err(WriteError::Read(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("entry {name:?} is truncated ({written} of {size} bytes)"),
            )));
        }
        self.bytes += size;
        Ok(())
    }

    pub(crate) fn symlink(&mut self, name: &str, target: &str) -> Result<(), FetchError> {
        let rel =
            Self::rel(name)?.ok_or_else(|| unsafe_entry(name, "a symlink entry needs a name"))?;
        self.count(name)?;
        if target.is_empty() {
            return Err(unsafe_entry(name, "symlink with an empty target"));
        }
        if Path::new(target).has_root() {
            return Err(unsafe_entry(
                name,
                &format!("symlink to absolute path {target:?} points outside the tree"),
            ));
        }
        self.symlinks
            .push((rel, target.to_string(), name.to_string()));
        Ok(())
    }

    pub(crate) fn hardlink(&mut self, name: &str, target: &str) -> Result<(), FetchError> {
        let rel =
            Self::rel(name)?.ok_or_else(|| unsafe_entry(name, "a hardlink entry needs a name"))?;
        let target_rel = match Self::rel(target) {
            Ok(Some(t)) => t,
            Ok(None) | Err(_) => {
                return Err(unsafe_entry(
                    name,
                    &format!("hardlink to {target:?} points outside the tree"),
                ));
            }
        };
        self.count(name)?;
        // The target's directories are checked link by link too (never created).
        let src = self
            .walk_dirs(name, target_rel.parent().unwrap_or(Path::new("")), false)
            .map(|p| {
                p.join(
                    target_rel
                        .file_name()
                        .expect("checked entry paths end in a name"),
                )
            });
        match src.as_ref().map(std::fs::symlink_metadata) {
            Ok(Ok(m)) if m.is_file() => {}
            _ => {
                return Err(unsafe_entry(
                    name,
                    &format!(
                        "hardlink target {target:?} is not a regular file extracted earlier from this archive"
                    ),
                ));
            }
        }
        let src = src.expect("checked just above");
        let path = self.prepare(name, &rel)?;
        std::fs::hard_link(&src, &path).map_err(Self::io(&path))
    }

    /// Creates the deferred symlinks and checks each one resolves inside the tree. Returns the
    /// tree root (the single top-level directory when `strip_single_top` and there is exactly
    /// one), the entry count and the byte count.
    pub(crate) fn finish(self, strip_single_top: bool) -> Result<(PathBuf, u64, u64), FetchError> {
        let mut tops: Vec<OsString> = std::fs::read_dir(&self.root)
            .map_err(Self::io(&self.root))?
            .filter_map(|e| e.ok().map(|e| e.file_name()))
            .collect();
        for (rel, _, _) in &self.symlinks {
            if let Some(Component::Normal(first)) = rel.components().next()
                && !tops.iter().any(|t| t == first)
            {
                tops.push(first.to_os_string());
            }
        }
        let mut root = self.root.clone();
        let mut strip = None;
        if strip_single_top && tops.len() == 1 {
            let only = self.root.join(&tops[0]);
            let is_dir = std::fs::symlink_metadata(&only)
                .map(|m| m.is_dir())
                .unwrap_or(false);
            if is_dir
                && !self
                    .symlinks
                    .iter()
                    .any(|(rel, _, _)| rel.as_os_str() == tops[0])
            {
                root = only;
                strip = Some(PathBuf::from(&tops[0]));
            }
        }
        let check = |rel: &Path, target: &str, name: &str| {
            let in_root = match &strip {
                Some(top) => rel.strip_prefix(top).unwrap_or(rel).to_path_buf(),
                None => rel.to_path_buf(),
            };
            let start = in_root.parent().unwrap_or(Path::new(""));
            let mut walk: VecDeque<OsString> = start
                .components()
                .map(|c| c.as_os_str().to_os_string())
                .collect();
            walk.extend(
                Path::new(target)
                    .components()
                    .map(|c| c.as_os_str().to_os_string()),
            );
            resolve_inside(&root, walk)
                .map_err(|why| unsafe_entry(name, &format!("symlink to {target:?} {why}")))
        };
        for (rel, target, name) in &self.symlinks {
            // The parent is created (or checked) without following any link, so a link entry
            // below an earlier link (`top/esc -> ..`, then `top/esc/x`) is refused here.
            let parent = self.walk_dirs(name, rel.parent().unwrap_or(Path::new("")), true)?;
            let path = parent.join(rel.file_name().expect("checked entry paths end in a name"));
            if std::fs::symlink_metadata(&path).is_ok() {
                return Err(unsafe_entry(
                    name,
                    "symlink entry collides with another entry of the same name",
                ));
            }
            // Checked before it exists, against the links created so far…
            check(rel, target, name)?;
            std::os::unix::fs::symlink(target, &path).map_err(Self::io(&path))?;
        }
        // …and again once every link exists (a later link can change where an earlier one leads).
        for (rel, target, name) in &self.symlinks {
            check(rel, target, name)?;
        }
        Ok((root, self.files, self.bytes))
    }
}

/// Walks `components` from `root` like the kernel would, following symlinks, without ever
/// leaving `root`. Errors say how the walk escaped.
fn resolve_inside(root: &Path, mut queue: VecDeque<OsString>) -> Result<(), String> {
    let mut at: Vec<OsString> = Vec::new();
    let mut hops = 0;
    while let Some(c) = queue.pop_front() {
        if c == "." || c.is_empty() {
            continue;
        }
        if c == ".." {
            if at.pop().is_none() {
                return Err("points outside the tree".into());
            }
            continue;
        }
        if c == "/" {
            return Err("points outside the tree (absolute)".into());
        }
        let mut here = root.to_path_buf();
        here.extend(&at);
        here.push(&c);
        match std::fs::symlink_metadata(&here) {
            Ok(m) if m.file_type().is_symlink() => {
                hops += 1;
                if hops > 40 {
                    return Err("loops (more than 40 links followed)".into());
                }
                let t = std::fs::read_link(&here).map_err(|e| e.to_string())?;
                if t.has_root() {
                    return Err(format!(
                        "goes through link {c:?} to absolute path {t:?}, outside the tree"
                    ));
                }
                for part in t.components().rev() {
                    queue.push_front(part.as_os_str().to_os_string());
                }
            }
            _ => at.push(c),
        }
    }
    Ok(())
}

#[derive(Debug)]
struct StreamTooLarge(u64);

impl std::fmt::Display for StreamTooLarge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "decompressed archive stream exceeds {} bytes", self.0)
    }
}

impl std::error::Error for StreamTooLarge {}

/// Fails reads once more than `limit` bytes went through.
struct CappedReader<R> {
    inner: R,
    left: u64,
    limit: u64,
}

impl<R: Read> Read for CappedReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.left == 0 {
            // One probe byte tells a stream that ends exactly at the limit from one that goes on.
            let mut probe = [0u8; 1];
            return match self.inner.read(&mut probe)? {
                0 => Ok(0),
                _ => Err(io::Error::other(StreamTooLarge(self.limit))),
            };
        }
        let max = buf.len().min(self.left.min(usize::MAX as u64) as usize);
        let n = self.inner.read(&mut buf[..max])?;
        self.left -= n as u64;
        Ok(n)
    }
}

/// Hashes and counts every byte read through it.
struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
    count: u64,
}

impl<R: Read> HashingReader<R> {
    fn new(inner: R) -> Self {
        HashingReader {
            inner,
            hasher: Sha256::new(),
            count: 0,
        }
    }

    fn finish(self, p: Partial) -> Extracted {
        Extracted {
            root: p.root,
            commit: p.commit,
            archive_digest: format!("sha256:{}", hex::encode(self.hasher.finalize())),
            archive_bytes: self.count,
            files: p.files,
            bytes: p.bytes,
        }
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Builds tar archives entry by entry, including hostile ones the `tar` builder refuses.
    pub(crate) struct TarBuilder {
        out: Vec<u8>,
    }

    impl TarBuilder {
        pub(crate) fn new() -> Self {
            TarBuilder { out: Vec::new() }
        }

        pub(crate) fn raw(
            &mut self,
            name: &str,
            kind: tar::EntryType,
            link: &str,
            data: &[u8],
            mode: u32,
        ) {
            let mut h = tar::Header::new_gnu();
            // Bypass the tar crate's path validation: hostile archives are the point here.
            let bytes = name.as_bytes();
            h.as_old_mut().name[..bytes.len()].copy_from_slice(bytes);
            let lb = link.as_bytes();
            h.as_old_mut().linkname[..lb.len()].copy_from_slice(lb);
            h.set_entry_type(kind);
            h.set_size(data.len() as u64);
            h.set_mode(mode);
            h.set_mtime(0);
            h.set_cksum();
            self.out.extend_from_slice(h.as_bytes());
            self.out.extend_from_slice(data);
            let pad = (512 - data.len() % 512) % 512;
            self.out.extend(std::iter::repeat_n(0u8, pad));
        }

        pub(crate) fn file(mut self, name: &str, data: &[u8]) -> Self {
            self.raw(name, tar::EntryType::Regular, "", data, 0o644);
            self
        }
        pub(crate) fn exe(mut self, name: &str, data: &[u8]) -> Self {
            self.raw(name, tar::EntryType::Regular, "", data, 0o4777);
            self
        }
        pub(crate) fn dir(mut self, name: &str) -> Self {
            self.raw(name, tar::EntryType::Directory, "", b"", 0o755);
            self
        }
        pub(crate) fn symlink(mut self, name: &str, target: &str) -> Self {
            self.raw(name, tar::EntryType::Symlink, target, b"", 0o777);
            self
        }
        pub(crate) fn hardlink(mut self, name: &str, target: &str) -> Self {
            self.raw(name, tar::EntryType::Link, target, b"", 0o644);
            self
        }
        pub(crate) fn kind(mut self, name: &str, kind: tar::EntryType) -> Self {
            self.raw(name, kind, "", b"", 0o644);
            self
        }
        /// A pax global header as `git archive` writes it.
        pub(crate) fn commit(mut self, sha: &str) -> Self {
            let rec = format!("comment={sha}\n");
            let len = rec.len() + 3;
            let len = len + (format!("{len}").len() - 2);
            let body = format!("{len} {rec}");
            self.raw(
                "pax_global_header",
                tar::EntryType::XGlobalHeader,
                "",
                body.as_bytes(),
                0o666,
            );
            self
        }
        pub(crate) fn tar(mut self) -> Vec<u8> {
            self.out.extend(std::iter::repeat_n(0u8, 1024));
            self.out
        }
        pub(crate) fn gz(self) -> Vec<u8> {
            let tar = self.tar();
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            io::Write::write_all(&mut e, &tar).unwrap();
            e.finish().unwrap()
        }
    }

    const LIMITS: Limits = Limits {
        max_bytes: 1 << 20,
        max_files: 100,
    };

    /// Extracts `gz` into a staging dir inside a fresh parent and asserts, whatever the result,
    /// that nothing appeared in the parent outside the staging dir.
    fn run(gz: &[u8], limits: Limits) -> (tempfile::TempDir, Result<Extracted, FetchError>) {
        let parent = tempfile::tempdir().unwrap();
        let staging = parent.path().join("staging");
        std::fs::create_dir(&staging).unwrap();
        let r = extract_tar_gz(gz, &staging, limits, "test.tar.gz");
        let outside: Vec<_> = std::fs::read_dir(parent.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .filter(|n| n != "staging")
            .collect();
        assert!(
            outside.is_empty(),
            "written outside the staging dir: {outside:?}"
        );
        (parent, r)
    }

    fn rejected(gz: &[u8], limits: Limits) -> String {
        let (_d, r) = run(gz, limits);
        r.expect_err("archive must be rejected").to_string()
    }

    #[test]
    fn extracts_strips_top_dir_and_reads_commit() {
        let sha = "0123456789abcdef0123456789abcdef01234567";
        let gz = TarBuilder::new()
            .commit(sha)
            .dir("octo-hello-0123456/")
            .file("octo-hello-0123456/main.py", b"print('hi')\n")
            .exe("octo-hello-0123456/bin/run", b"#!/bin/sh\n")
            .symlink("octo-hello-0123456/link.py", "main.py")
            .symlink("octo-hello-0123456/bin/up", "../main.py")
            .hardlink("octo-hello-0123456/copy.py", "octo-hello-0123456/main.py")
            .gz();
        let (_d, r) = run(&gz, LIMITS);
        let x = r.unwrap();
        assert!(
            x.root.ends_with("staging/octo-hello-0123456"),
            "{:?}",
            x.root
        );
        assert_eq!(x.commit.as_deref(), Some(sha));
        assert_eq!(
            std::fs::read_to_string(x.root.join("link.py")).unwrap(),
            "print('hi')\n"
        );
        assert_eq!(
            std::fs::read_to_string(x.root.join("bin/up")).unwrap(),
            "print('hi')\n"
        );
        assert_eq!(
            std::fs::read_to_string(x.root.join("copy.py")).unwrap(),
            "print('hi')\n"
        );
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(x.root.join("bin/run"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(
            mode & 0o7777,
            0o755,
            "setuid and world-write dropped, exec kept"
        );
        assert_eq!(x.archive_digest, iac_core::fsutil::sha256_tagged(&gz));
        assert_eq!(x.archive_bytes, gz.len() as u64);
        assert_eq!(x.bytes, 12 + 10);
    }

    #[test]
    fn no_strip_when_several_top_level_entries() {
        let gz = TarBuilder::new().file("a/x", b"1").file("b", b"2").gz();
        let (_d, r) = run(&gz, LIMITS);
        let x = r.unwrap();
        assert!(x.root.ends_with("staging"));
        assert!(x.root.join("a/x").is_file() && x.root.join("b").is_file());
    }

    #[test]
    fn hostile_archives_are_rejected_naming_the_entry() {
        let cases: Vec<(&str, Vec<u8>, &str, &str)> = vec![
            (
                "absolute path",
                TarBuilder::new().file("/tmp/iac-evil", b"x").gz(),
                "/tmp/iac-evil",
                "absolute",
            ),
            (
                "dot-dot",
                TarBuilder::new().file("top/../../evil", b"x").gz(),
                "top/../../evil",
                "'..'",
            ),
            (
                "symlink escaping",
                TarBuilder::new()
                    .dir("top/")
                    .symlink("top/esc", "../../outside")
                    .gz(),
                "top/esc",
                "outside the tree",
            ),
            (
                "symlink escaping the stripped top dir",
                TarBuilder::new().dir("top/").symlink("top/up", "..").gz(),
                "top/up",
                "outside the tree",
            ),
            (
                "absolute symlink",
                TarBuilder::new()
                    .dir("top/")
                    .symlink("top/etc", "/etc")
                    .gz(),
                "top/etc",
                "absolute",
            ),
            (
                "symlink chain escaping",
                TarBuilder::new()
                    .dir("top/sub/")
                    .symlink("top/sub/a", "..")
                    .symlink("top/sub/b", "a/..")
                    .gz(),
                "top/sub/b",
                "outside the tree",
            ),
            (
                "write through a symlink",
                TarBuilder::new()
                    .dir("top/")
                    .symlink("top/d", "/tmp")
                    .file("top/d/evil", b"x")
                    .gz(),
                "top/d",
                "absolute",
            ),
            (
                "symlink loop",
                TarBuilder::new()
                    .dir("top/")
                    .symlink("top/l1", "l2")
                    .symlink("top/l2", "l1/x")
                    .gz(),
                "top/l1",
                "loops",
            ),
            (
                "hardlink escaping",
                TarBuilder::new()
                    .dir("top/")
                    .hardlink("top/pw", "../../etc/passwd")
                    .gz(),
                "top/pw",
                "outside the tree",
            ),
            (
                "absolute hardlink",
                TarBuilder::new()
                    .dir("top/")
                    .hardlink("top/pw", "/etc/passwd")
                    .gz(),
                "top/pw",
                "outside the tree",
            ),
            (
                "hardlink to nothing extracted",
                TarBuilder::new()
                    .dir("top/")
                    .hardlink("top/pw", "top/missing")
                    .gz(),
                "top/pw",
                "not a regular file",
            ),
            (
                "char device",
                TarBuilder::new()
                    .kind("top/null", tar::EntryType::Char)
                    .gz(),
                "top/null",
                "device",
            ),
            (
                "block device",
                TarBuilder::new()
                    .kind("top/sda", tar::EntryType::Block)
                    .gz(),
                "top/sda",
                "device",
            ),
            (
                "fifo",
                TarBuilder::new().kind("top/p", tar::EntryType::Fifo).gz(),
                "top/p",
                "fifo",
            ),
        ];
        for (what, gz, entry, needle) in cases {
            let e = rejected(&gz, LIMITS);
            assert!(
                e.contains(&format!("{entry:?}")),
                "{what}: error should name {entry:?}: {e}"
            );
            assert!(
                e.contains(needle),
                "{what}: error should mention {needle:?}: {e}"
            );
        }
        assert!(!Path::new("/tmp/iac-evil").exists());
    }

    /// Extracts `gz` into `<parent>/staging` beside an empty `<parent>/victim` directory that the
    /// archive aims at; returns the error and whatever appeared in the victim directory.
    fn against_victim(gz: &[u8]) -> (String, Vec<OsString>) {
        let parent = tempfile::tempdir().unwrap();
        let victim = parent.path().join("victim");
        std::fs::create_dir(&victim).unwrap();
        let staging = parent.path().join("staging");
        std::fs::create_dir(&staging).unwrap();
        let r = extract_tar_gz(gz, &staging, LIMITS, "hostile.tar.gz");
        let landed: Vec<OsString> = std::fs::read_dir(&victim)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        let outside: Vec<_> = std::fs::read_dir(parent.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .filter(|n| n != "staging" && n != "victim")
            .collect();
        assert!(outside.is_empty(), "written beside staging: {outside:?}");
        (r.expect_err("archive must be rejected").to_string(), landed)
    }

    /// The archive of issue 9: a link to a directory outside (`staging/top/esc` →
    /// `<parent>/victim`), then a link *below* that link. The old writer created the second
    /// link with `create_dir_all` through the first one, i.e. inside the victim directory.
    #[test]
    fn issue9_link_below_an_escaping_link_lands_nowhere() {
        let gz = TarBuilder::new()
            .dir("top/")
            .symlink("top/esc", "../../victim")
            .symlink("top/esc/x", "../etc/passwd")
            .gz();
        let (e, landed) = against_victim(&gz);
        assert!(landed.is_empty(), "created outside the tree: {landed:?}");
        assert!(
            e.contains("\"top/esc\"") && e.contains("outside the tree"),
            "{e}"
        );
    }

    /// An escape that takes several hops, each link harmless on its own when it is created:
    /// `top/x/a -> ../b/c/../..` (b and c do not exist yet), then `top/b -> .` and `top/c -> .`,
    /// which make `a` resolve to `<parent>`; a last link below `a` aims into `<parent>/victim`.
    #[test]
    fn multi_hop_link_chain_lands_nowhere() {
        let gz = TarBuilder::new()
            .dir("top/")
            .dir("top/x/")
            .file("top/x/keep.py", b"1")
            .symlink("top/x/a", "../b/c/../..")
            .symlink("top/b", ".")
            .symlink("top/c", ".")
            .symlink("top/x/a/victim/pwned", "keep.py")
            .gz();
        let (e, landed) = against_victim(&gz);
        assert!(landed.is_empty(), "created outside the tree: {landed:?}");
        assert!(
            e.contains("\"top/x/a/victim/pwned\"") && e.contains("goes through the symlink"),
            "{e}"
        );

        // Without the last entry nothing is written below a link, and the chain itself is
        // caught once every link exists.
        let gz = TarBuilder::new()
            .dir("top/")
            .dir("top/x/")
            .symlink("top/x/a", "../b/c/../..")
            .symlink("top/b", ".")
            .symlink("top/c", ".")
            .gz();
        let (e, landed) = against_victim(&gz);
        assert!(landed.is_empty(), "{landed:?}");
        assert!(
            e.contains("\"top/x/a\"") && e.contains("outside the tree"),
            "{e}"
        );
    }

    /// Even a link that stays inside the tree is never written through.
    #[test]
    fn nothing_is_created_below_a_link_even_inside_the_tree() {
        let e = rejected(
            &TarBuilder::new()
                .dir("top/sub/")
                .symlink("top/a", "sub")
                .symlink("top/a/x", "../ok")
                .gz(),
            LIMITS,
        );
        assert!(
            e.contains("\"top/a/x\"") && e.contains("goes through the symlink \"top/a\""),
            "{e}"
        );
    }

    #[test]
    fn caps_on_entries_size_and_stream() {
        let mut many = TarBuilder::new().dir("top/");
        for i in 0..20 {
            many = many.file(&format!("top/f{i}"), b"x");
        }
        let e = rejected(
            &many.gz(),
            Limits {
                max_bytes: 1 << 20,
                max_files: 10,
            },
        );
        assert!(
            e.contains("entry count") && e.contains("limit of 10") && e.contains("top/f9"),
            "{e}"
        );

        let big = TarBuilder::new()
            .file("top/small", b"ok")
            .file("top/big", &vec![7u8; 4096])
            .gz();
        let e = rejected(
            &big,
            Limits {
                max_bytes: 1000,
                max_files: 10,
            },
        );
        assert!(
            e.contains("unpacked size") && e.contains("top/big") && e.contains("limit of 1000"),
            "{e}"
        );

        // Tar metadata counts against the decompressed stream bound: 40 pax global headers of
        // 60 KiB each (under the per-entry cap, not counted as entries) exceed ~1 MiB.
        let mut b = TarBuilder::new();
        for _ in 0..40 {
            b.raw(
                "pax_global_header",
                tar::EntryType::XGlobalHeader,
                "",
                &vec![b'a'; 60 << 10],
                0o644,
            );
        }
        let e = rejected(
            &b.file("top/x", b"x").gz(),
            Limits {
                max_bytes: 100,
                max_files: 2,
            },
        );
        assert!(
            e.contains("decompressed archive stream") && e.contains("limit"),
            "{e}"
        );

        // A 2 MiB GNU long name is refused by its header, naming a cut of the name and the cap.
        let mut b = TarBuilder::new();
        b.raw(
            "././@LongLink",
            tar::EntryType::GNULongName,
            "",
            &vec![b'a'; 2 << 20],
            0o644,
        );
        let e = rejected(&b.file("top/x", b"x").gz(), LIMITS);
        assert!(
            e.contains("GNU long-name entry of 2097152 bytes")
                && e.contains("the cap is 4096 bytes")
                && e.contains(&format!("\"{}…(cut)\"", "a".repeat(200))),
            "{e}"
        );
    }

    #[test]
    fn garbage_is_an_invalid_archive_error() {
        let e = rejected(b"definitely not gzip", LIMITS);
        assert!(
            e.contains("test.tar.gz") && e.contains("not a valid tar.gz"),
            "{e}"
        );
        let mut gz = TarBuilder::new().file("top/a", &vec![1u8; 10_000]).gz();
        gz.truncate(gz.len() / 2);
        let e = rejected(&gz, LIMITS);
        assert!(e.contains("not a valid tar.gz"), "{e}");
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]
        /// Fuzz-style: corrupting bytes of a valid archive (headers, names, link targets, sizes)
        /// never panics, never writes outside the staging dir and never exceeds the caps.
        #[test]
        fn corrupted_archives_never_escape(edits in proptest::collection::vec((0usize..4096, proptest::prelude::any::<u8>()), 1..24)) {
            let mut tar = TarBuilder::new()
                .dir("top/")
                .file("top/a.py", b"print(1)")
                .symlink("top/l", "a.py")
                .hardlink("top/h", "top/a.py")
                .dir("top/sub/")
                .file("top/sub/b", &[9u8; 700])
                .symlink("top/sub/up", "../a.py")
                .tar();
            for (i, b) in edits {
                let at = i % tar.len();
                tar[at] = b;
            }
            let parent = tempfile::tempdir().unwrap();
            let staging = parent.path().join("staging");
            std::fs::create_dir(&staging).unwrap();
            let limits = Limits { max_bytes: 4096, max_files: 16 };
            let r = extract_tar(&tar[..], &staging, limits, "mutated.tar");
            let outside: Vec<_> = std::fs::read_dir(parent.path()).unwrap()
                .map(|e| e.unwrap().file_name()).filter(|n| n != "staging").collect();
            proptest::prop_assert!(outside.is_empty(), "wrote outside: {:?}", outside);
            if let Ok(x) = r {
                proptest::prop_assert!(x.root.starts_with(&staging));
                proptest::prop_assert!(x.files <= 16 && x.bytes <= 4096);
            }
        }
    }
}
