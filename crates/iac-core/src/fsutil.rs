//! Small filesystem helpers shared by every crate: atomic writes (temp file + fsync + rename),
//! private directories ([`create_private_dir`]: the state dir and the caches, 0700) and the one
//! lock-file helper ([`FileLock`]: the per-project deploy lock, the terraform run lock, the PKI
//! lock).

use std::io::Write;
use std::path::{Path, PathBuf};

/// Mode of the directories [`create_private_dir`] makes and tightens.
pub const PRIVATE_DIR_MODE: u32 = 0o700;
/// Mode of files written into a private directory (with [`write_atomic`]).
pub const PRIVATE_FILE_MODE: u32 = 0o600;

/// Creates `path` and its missing parents, makes every directory it created and the leaf 0700
/// (an existing leaf is tightened; existing parents are left as they are), so other local users
/// can neither list nor read what is kept there. An existing leaf must be a real directory owned
/// by this process's effective uid: a symlink (which could point at someone else's directory)
/// or a directory owned by another uid is refused with an error naming the path and what was
/// expected.
pub fn create_private_dir(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
    // The missing tail of `path`, outermost first.
    let mut missing = Vec::new();
    let mut at = path;
    loop {
        match std::fs::symlink_metadata(at) {
            Ok(_) => break,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                missing.push(at.to_path_buf());
                match at.parent().filter(|p| !p.as_os_str().is_empty()) {
                    Some(p) => at = p,
                    None => break,
                }
            }
            Err(e) => return Err(e),
        }
    }
    for dir in missing.iter().rev() {
        match std::fs::DirBuilder::new()
            .mode(PRIVATE_DIR_MODE)
            .create(dir)
        {
            // The umask may have narrowed the mode further, never widened it: set it exactly.
            Ok(()) => {
                std::fs::set_permissions(dir, std::fs::Permissions::from_mode(PRIVATE_DIR_MODE))?
            }
            // Created concurrently by someone else: checked below if it is the leaf.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
    }
    let meta = std::fs::symlink_metadata(path)?;
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    let refuse = |why: String| {
        std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            format!(
                "{}: {why}; expected a directory owned by uid {me} to keep private data in (remove it or point the setting elsewhere)",
                path.display()
            ),
        )
    };
    if meta.file_type().is_symlink() {
        return Err(refuse(
            "is a symlink, refused as a private directory".into(),
        ));
    }
    if !meta.is_dir() {
        return Err(refuse("exists and is not a directory".into()));
    }
    if meta.uid() != me {
        return Err(refuse(format!("is owned by uid {}", meta.uid())));
    }
    if meta.permissions().mode() & 0o7777 != PRIVATE_DIR_MODE {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(PRIVATE_DIR_MODE))?;
    }
    Ok(())
}

/// Writes `bytes` to `path` atomically: a temp file in the same directory, fsync, then rename.
/// `mode` (unix permissions) is applied to the temp file before any byte is written.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: Option<u32>) -> std::io::Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    // What a writer killed between its temp file and the rename left here goes now.
    sweep_dead_temps(dir);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp-{}-{}", std::process::id(), unique()));
    let result = (|| {
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(mode.unwrap_or(0o644));
        }
        let mut f = opts.open(&tmp)?;
        #[cfg(unix)]
        if let Some(m) = mode {
            use std::os::unix::fs::PermissionsExt;
            f.set_permissions(std::fs::Permissions::from_mode(m))?;
        }
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// [`write_atomic`], unless `path` already holds exactly `bytes` (and, with `mode`, has that
/// mode): then nothing is written, no fsync is paid, and the file keeps its inode. Returns
/// whether it wrote. A redeploy that changes nothing rewrites nothing this way.
pub fn write_atomic_if_changed(
    path: &Path,
    bytes: &[u8],
    mode: Option<u32>,
) -> std::io::Result<bool> {
    if let Ok(existing) = std::fs::read(path)
        && existing == bytes
        && mode_matches(path, mode)
    {
        return Ok(false);
    }
    write_atomic(path, bytes, mode).map(|()| true)
}

fn mode_matches(path: &Path, mode: Option<u32>) -> bool {
    let Some(want) = mode else { return true };
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(path).is_ok_and(|m| m.permissions().mode() & 0o7777 == want)
    }
    #[cfg(not(unix))]
    {
        let _ = (path, want);
        true
    }
}

/// The pid in a [`write_atomic`] temp file's name (`.<name>.tmp-<pid>-<n>`), if it is one.
fn atomic_temp_writer(file_name: &str) -> Option<u32> {
    if !file_name.starts_with('.') {
        return None;
    }
    let (_, rest) = file_name.rsplit_once(".tmp-")?;
    let (pid, n) = rest.split_once('-')?;
    n.parse::<u64>().ok()?;
    pid.parse().ok()
}

/// Removes the [`write_atomic`] temp files in `dir` whose writer no longer runs on this host
/// (no `/proc/<pid>`): a process SIGKILLed between writing its temp file and the rename. A
/// temp file of a live pid is left (it may be being written). Returns how many it removed.
/// Writers in another pid namespace sharing the directory are not told apart; iac's state and
/// cache directories have one host's processes as writers.
pub fn sweep_dead_temps(dir: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let mut removed = 0;
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(pid) = name.to_str().and_then(atomic_temp_writer) else {
            continue;
        };
        if pid == std::process::id() || Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        if e.file_type().is_ok_and(|t| t.is_file()) && std::fs::remove_file(e.path()).is_ok() {
            removed += 1;
        }
    }
    removed
}

fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

/// `sha256:<hex>` of some bytes.
pub fn sha256_tagged(bytes: &[u8]) -> String {
    use sha2::Digest;
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(bytes)))
}

/// An exclusive advisory lock (`flock`) on a lock file, held until dropped. Other processes
/// (and other handles in this one) taking the same lock wait. The holder writes who it is into
/// the file ([`holder_line`]: pid, program, since when), so a waiter can say whom it waits for;
/// the lock itself is the `flock`, which the kernel drops with its holder (a killed deploy leaves
/// no stale lock, only a stale line nobody reads while the lock is free).
#[derive(Debug)]
pub struct FileLock {
    _file: std::fs::File,
    path: PathBuf,
}

impl FileLock {
    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Creates `path` (and its directory) if missing and waits for the lock, blocking the thread.
    pub fn acquire_blocking(path: &Path) -> std::io::Result<FileLock> {
        let file = open_lock_file(path)?;
        file.lock()?;
        Ok(FileLock::held(file, path))
    }

    /// Like [`FileLock::acquire_blocking`] without blocking the runtime: when the lock is held
    /// elsewhere, `on_wait` runs once with what the holder wrote about itself ([`holder_line`];
    /// empty when it wrote nothing), to say who waits for whom, and the wait happens on a
    /// blocking thread.
    pub async fn acquire(path: &Path, on_wait: impl FnOnce(&str)) -> std::io::Result<FileLock> {
        let file = open_lock_file(path)?;
        let file = match file.try_lock() {
            Ok(()) => file,
            Err(std::fs::TryLockError::WouldBlock) => {
                let holder = std::fs::read(path)
                    .map(|b| holder_text(&b))
                    .unwrap_or_default();
                on_wait(&holder);
                tokio::task::spawn_blocking(move || file.lock().map(|()| file))
                    .await
                    .map_err(std::io::Error::other)??
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(e),
        };
        Ok(FileLock::held(file, path))
    }

    /// Who holds the lock at `path` right now, without waiting: `Some(what the holder wrote
    /// about itself)` ([`holder_line`]; `"another process"` when it wrote nothing yet) while
    /// another handle holds it, `None` when it is free or the file does not exist. Probing takes
    /// a shared lock for an instant and lets go at once.
    pub fn holder_if_held(path: &Path) -> std::io::Result<Option<String>> {
        let file = match std::fs::File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        match file.try_lock_shared() {
            Ok(()) => Ok(None),
            Err(std::fs::TryLockError::WouldBlock) => Ok(Some(read_holder(path))),
            Err(std::fs::TryLockError::Error(e)) => Err(e),
        }
    }

    /// The lock is ours: say so in the file (best effort: the `flock` is what counts).
    fn held(file: std::fs::File, path: &Path) -> FileLock {
        use std::io::{Seek, Write};
        let mut f = &file;
        let _ = f
            .set_len(0)
            .and_then(|()| f.rewind())
            .and_then(|()| f.write_all(holder_line().as_bytes()));
        FileLock {
            _file: file,
            path: path.to_path_buf(),
        }
    }
}

/// At most 512 bytes of a lock file's text, trimmed.
fn holder_text(b: &[u8]) -> String {
    String::from_utf8_lossy(&b[..b.len().min(512)])
        .trim()
        .to_string()
}

/// What a held lock's file says about its holder (`"another process"` when nothing yet).
fn read_holder(path: &Path) -> String {
    let text = std::fs::read(path)
        .map(|b| holder_text(&b))
        .unwrap_or_default();
    if text.is_empty() {
        "another process".to_string()
    } else {
        text
    }
}

/// Who holds a lock, as its file says: `pid 1234 (iac deploy --file repos.yaml) since
/// 2026-12-07T04:10:00Z` (the program and its first five arguments).
pub fn holder_line() -> String {
    let args: Vec<String> = std::env::args()
        .enumerate()
        .map(|(i, a)| {
            if i == 0 {
                Path::new(&a)
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or(a)
            } else {
                a
            }
        })
        .take(6)
        .collect();
    format!(
        "pid {} ({}) since {}\n",
        std::process::id(),
        args.join(" "),
        humantime::format_rfc3339_seconds(std::time::SystemTime::now())
    )
}

/// A temporary directory `<parent>/<prefix><random>` that a crash cannot orphan for good: its
/// owner holds a `flock` on `<dir>.lock` beside it for as long as it lives, so
/// [`sweep_orphans`] can tell a directory in use (lock held) from one whose owner died (a killed
/// deploy: no destructor ran). Removed with its lock file when dropped.
#[derive(Debug)]
pub struct OwnedTempDir {
    dir: PathBuf,
    lock: PathBuf,
    _held: std::fs::File,
}

/// The suffix of an [`OwnedTempDir`]'s lock file.
const OWNER_LOCK: &str = ".lock";

impl OwnedTempDir {
    /// Creates the lock file (held) first, then the directory: a directory without a lock file
    /// beside it is never one being created.
    pub fn new_in(parent: &Path, prefix: &str) -> std::io::Result<OwnedTempDir> {
        std::fs::create_dir_all(parent)?;
        let (file, lock) = tempfile::Builder::new()
            .prefix(prefix)
            .suffix(OWNER_LOCK)
            .tempfile_in(parent)?
            .keep()
            .map_err(|e| e.error)?;
        file.lock()?;
        let name = lock
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(OWNER_LOCK))
            .ok_or_else(|| std::io::Error::other("a lock file name without its suffix"))?
            .to_string();
        let dir = parent.join(name);
        if let Err(e) = std::fs::create_dir(&dir) {
            let _ = std::fs::remove_file(&lock);
            return Err(e);
        }
        Ok(OwnedTempDir {
            dir,
            lock,
            _held: file,
        })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.dir
    }
}

impl Drop for OwnedTempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
        let _ = std::fs::remove_file(&self.lock);
    }
}

/// Removes what dead owners left in `parent` ([`OwnedTempDir`]s whose lock nobody holds, with
/// their lock files; entries with no lock file beside them once they are older than `stale`):
/// a killed process's staging and work directories. Entries in use are left alone. Returns how
/// many it removed; entries it cannot read or remove are skipped.
pub fn sweep_orphans(parent: &Path, stale: std::time::Duration) -> usize {
    let Ok(entries) = std::fs::read_dir(parent) else {
        return 0;
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        let path = entry.path();
        let Some(name) = path
            .file_name()
            .and_then(|n| n.to_str())
            .map(str::to_string)
        else {
            continue;
        };
        if let Some(stem) = name.strip_suffix(OWNER_LOCK) {
            let Ok(file) = std::fs::OpenOptions::new().write(true).open(&path) else {
                continue;
            };
            if file.try_lock().is_ok() {
                let dir = parent.join(stem);
                if !dir.exists() || std::fs::remove_dir_all(&dir).is_ok() {
                    let _ = std::fs::remove_file(&path);
                    removed += 1;
                }
            }
        } else if !parent.join(format!("{name}{OWNER_LOCK}")).exists() {
            let old = entry
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age >= stale);
            if old {
                let gone = if path.is_dir() {
                    std::fs::remove_dir_all(&path)
                } else {
                    std::fs::remove_file(&path)
                };
                if gone.is_ok() {
                    removed += 1;
                }
            }
        }
    }
    removed
}

fn open_lock_file(path: &Path) -> std::io::Result<std::fs::File> {
    if let Some(dir) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A writer SIGKILLed between its temp file and the rename leaves `.<name>.tmp-<pid>-<n>`;
    /// the next sweep (every `write_atomic` in that directory does one) removes it when that
    /// pid is gone, and leaves a live writer's temp file and every other file alone.
    #[test]
    fn a_dead_writers_temp_file_is_swept_and_a_live_ones_is_not() {
        let d = tempfile::tempdir().unwrap();
        // A pid that is not running: one above the kernel's pid_max (4194304 at most).
        let dead = d.path().join(".meta.json.tmp-4194305-4");
        let live = d
            .path()
            .join(format!(".meta.json.tmp-{}-9", std::process::id()));
        let other = d.path().join(".hidden.tmp-notapid-1");
        let plain = d.path().join("meta.json");
        for f in [&dead, &live, &other, &plain] {
            std::fs::write(f, "x").unwrap();
        }
        assert_eq!(sweep_dead_temps(d.path()), 1);
        assert!(!dead.exists());
        assert!(live.exists() && other.exists() && plain.exists());
        std::fs::write(&dead, "x").unwrap();
        write_atomic(&plain, b"y", None).unwrap();
        assert!(!dead.exists(), "write_atomic sweeps its directory");
        assert_eq!(atomic_temp_writer(".a.tmp-12-3"), Some(12));
        assert_eq!(atomic_temp_writer("a.tmp-12-3"), None);
        assert_eq!(atomic_temp_writer(".a.tmp-12"), None);
    }

    #[test]
    fn private_dirs_are_created_0700_tightened_and_refused_when_linked() {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777;
        let d = tempfile::tempdir().unwrap();
        std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let leaf = d.path().join("a/b/c");
        create_private_dir(&leaf).unwrap();
        for p in [d.path().join("a"), d.path().join("a/b"), leaf.clone()] {
            assert_eq!(mode(&p), 0o700, "{}", p.display());
        }
        assert_eq!(mode(d.path()), 0o755, "an existing parent is left alone");
        create_private_dir(&leaf).unwrap();

        let open = d.path().join("open");
        std::fs::create_dir(&open).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o755)).unwrap();
        create_private_dir(&open).unwrap();
        assert_eq!(mode(&open), 0o700, "an existing 0755 leaf is tightened");

        let link = d.path().join("link");
        std::os::unix::fs::symlink(&open, &link).unwrap();
        let e = create_private_dir(&link).unwrap_err().to_string();
        assert!(
            e.contains(&link.display().to_string())
                && e.contains("is a symlink")
                && e.contains("expected a directory owned by uid"),
            "{e}"
        );
        let file = d.path().join("file");
        std::fs::write(&file, b"x").unwrap();
        let e = create_private_dir(&file).unwrap_err().to_string();
        assert!(e.contains("is not a directory"), "{e}");
        // Somebody else's directory is refused, not chmodded.
        let (theirs, uid) = if unsafe { libc::geteuid() } == 0 {
            let theirs = d.path().join("theirs");
            std::fs::create_dir(&theirs).unwrap();
            std::os::unix::fs::chown(&theirs, Some(65534), None).unwrap();
            (theirs, 65534)
        } else {
            (std::path::PathBuf::from("/"), 0)
        };
        let before = mode(&theirs);
        let e = create_private_dir(&theirs).unwrap_err().to_string();
        assert!(e.contains(&format!("is owned by uid {uid}")), "{e}");
        assert_eq!(mode(&theirs), before);
    }

    #[test]
    fn atomic_write_replaces_and_sets_mode() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("sub/f.txt");
        write_atomic(&p, b"one", Some(0o600)).unwrap();
        write_atomic(&p, b"two", Some(0o600)).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let leftovers: Vec<_> = std::fs::read_dir(p.parent().unwrap()).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "no temp files left behind");
    }

    #[test]
    fn an_unchanged_file_is_not_rewritten() {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("envoy.yaml");
        assert!(
            write_atomic_if_changed(&p, b"a", Some(0o644)).unwrap(),
            "new file"
        );
        let ino = std::fs::metadata(&p).unwrap().ino();
        assert!(!write_atomic_if_changed(&p, b"a", Some(0o644)).unwrap());
        assert_eq!(
            std::fs::metadata(&p).unwrap().ino(),
            ino,
            "same inode: untouched"
        );
        assert!(
            write_atomic_if_changed(&p, b"b", Some(0o644)).unwrap(),
            "content changed"
        );
        assert_eq!(std::fs::read(&p).unwrap(), b"b");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(
            write_atomic_if_changed(&p, b"b", Some(0o644)).unwrap(),
            "mode changed"
        );
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o644
        );
        assert!(
            !write_atomic_if_changed(&p, b"b", None).unwrap(),
            "no mode asked"
        );
    }

    #[test]
    fn owned_temp_dirs_are_swept_only_once_their_owner_is_gone() {
        let d = tempfile::tempdir().unwrap();
        let tmp = d.path().join("tmp");
        let live = OwnedTempDir::new_in(&tmp, "git-").unwrap();
        std::fs::write(live.path().join("f"), b"x").unwrap();
        assert!(live.path().starts_with(&tmp));
        assert!(
            live.path()
                .file_name()
                .unwrap()
                .to_str()
                .unwrap()
                .starts_with("git-")
        );
        // A dead owner: its lock file and directory are there, nobody holds the lock.
        let dead = tmp.join("tarball-dead");
        std::fs::create_dir_all(dead.join("tree")).unwrap();
        std::fs::write(tmp.join("tarball-dead.lock"), b"").unwrap();
        // Something with no lock file, fresh: left alone until it is stale.
        std::fs::create_dir(tmp.join("unknown")).unwrap();
        assert_eq!(sweep_orphans(&tmp, std::time::Duration::from_secs(600)), 1);
        assert!(!dead.exists() && !tmp.join("tarball-dead.lock").exists());
        assert!(live.path().join("f").exists(), "in use: kept");
        assert!(tmp.join("unknown").exists(), "fresh: kept");
        assert_eq!(
            sweep_orphans(&tmp, std::time::Duration::ZERO),
            1,
            "stale: gone"
        );
        assert!(!tmp.join("unknown").exists());
        let (dir, lock) = (live.path().to_path_buf(), live.lock.clone());
        drop(live);
        assert!(!dir.exists() && !lock.exists(), "dropped: both gone");
        assert!(std::fs::read_dir(&tmp).unwrap().next().is_none());
        assert_eq!(
            sweep_orphans(&d.path().join("missing"), std::time::Duration::ZERO),
            0
        );
    }

    #[tokio::test]
    async fn a_held_lock_names_its_holder_without_waiting_and_a_free_one_is_none() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("state/deploy.lock");
        assert_eq!(FileLock::holder_if_held(&p).unwrap(), None, "no file");
        let held = FileLock::acquire(&p, |_| panic!("free")).await.unwrap();
        let holder = FileLock::holder_if_held(&p).unwrap().expect("held");
        assert!(
            holder.starts_with(&format!("pid {} (", std::process::id())),
            "{holder}"
        );
        drop(held);
        assert_eq!(FileLock::holder_if_held(&p).unwrap(), None, "released");
        // The probe let go: the lock can be taken at once.
        let again = FileLock::acquire(&p, |_| panic!("the probe holds nothing"))
            .await
            .unwrap();
        drop(again);
    }

    #[tokio::test]
    async fn a_second_lock_waits_says_so_once_and_gets_it_after_the_first_is_dropped() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("state/deploy.lock");
        let first = FileLock::acquire(&p, |_| panic!("the first lock never waits"))
            .await
            .unwrap();
        assert_eq!(first.path(), p);
        let waited = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let w = waited.clone();
        let p2 = p.clone();
        let second = tokio::spawn(async move {
            FileLock::acquire(&p2, move |holder| {
                w.lock().unwrap().push(holder.to_string());
            })
            .await
        });
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        assert!(
            !second.is_finished(),
            "the second lock must wait for the first"
        );
        let said = waited.lock().unwrap().clone();
        assert_eq!(said.len(), 1, "says it waits once");
        assert!(
            said[0].starts_with(&format!("pid {} (", std::process::id())),
            "and whom it waits for: {said:?}"
        );
        drop(first);
        let second = tokio::time::timeout(std::time::Duration::from_secs(10), second)
            .await
            .expect("the second lock is taken once the first is dropped")
            .unwrap()
            .unwrap();
        drop(second);
        // Blocking flavour, same file: free again.
        FileLock::acquire_blocking(&p).unwrap();
    }
}
