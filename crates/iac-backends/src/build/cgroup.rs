//! [`BuildCgroup`]: the process limit of one image build.
//!
//! The engine's build API has no pids limit, but the classic builder runs every `RUN` step in a
//! container under the build's `cgroupparent`. So iac creates a cgroup of its own in the pids
//! hierarchy, writes `pids.max` into it, names it as the build's parent, and removes it when the
//! build is over: a fork bomb in a repo's build step stops at the limit (forks fail with
//! `EAGAIN`), whatever its memory use. This needs the engine's `cgroupfs` driver (a `systemd`
//! driver takes only slices, which iac does not create) and iac on the engine's host, in its
//! cgroup namespace, allowed to write there (root). Otherwise [`BuildCgroup::create`] says why
//! and the build runs without it (the builder warns). After a build, [`BuildCgroup::peak`]
//! shows whether the engine really placed the steps there.
//!
//! Names are `iac-build-<pid>-<n>`: a directory left by a killed iac (its pid gone) is swept by
//! the next [`BuildCgroup::create`]; one of a live process is never touched. On cgroup v1 the
//! runtime creates the parent in every controller hierarchy (`blkio`, `cpu`, `memory`,
//! `systemd`, `unified`, …), not only in `pids`: removal and the sweep cover every
//! hierarchy under `/sys/fs/cgroup` ([`Layout::hierarchies`]). The engine asks
//! for `cgroupparent` through a request modifier on a clone of the bollard client
//! ([`with_cgroup_parent`]), since bollard's build options have no such field.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bollard::Docker;
use bollard::models::{SystemInfoCgroupDriverEnum, SystemInfoCgroupVersionEnum};

/// Prefix of every build cgroup's name.
pub const PREFIX: &str = "iac-build-";

/// Where the pids controller of each cgroup version is mounted on a standard host.
const V1_PIDS_ROOT: &str = "/sys/fs/cgroup/pids";
const V2_ROOT: &str = "/sys/fs/cgroup";
/// Where the v1 hierarchies (one directory each) are mounted.
const V1_HIERARCHIES: &str = "/sys/fs/cgroup";
/// How long the other v1 hierarchies' copies of a build cgroup are waited for once its pids
/// cgroup is gone (the runtime removes a step's cgroups in every hierarchy together).
const SIBLING_PATIENCE: Duration = Duration::from_secs(5);

/// Numbers builds of this process apart.
static NEXT: AtomicU64 = AtomicU64::new(0);

/// How the engine manages cgroups, from its `/info`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// `cgroupfs` driver on cgroup v1: the pids hierarchy is its own mount.
    V1,
    /// `cgroupfs` driver on cgroup v2: one unified hierarchy.
    V2,
}

impl Layout {
    /// The layout of an engine reporting `driver` and `version`, or why a build cgroup cannot
    /// be used with it.
    pub fn of(
        driver: Option<SystemInfoCgroupDriverEnum>,
        version: Option<SystemInfoCgroupVersionEnum>,
    ) -> Result<Layout, String> {
        match driver {
            Some(SystemInfoCgroupDriverEnum::CGROUPFS) => {}
            Some(SystemInfoCgroupDriverEnum::SYSTEMD) => {
                return Err("the engine's cgroup driver is systemd, whose build parent must be a systemd slice; iac creates plain cgroups (cgroupfs driver only)".into());
            }
            other => {
                return Err(format!(
                    "the engine reports no usable cgroup driver ({other:?}); expected cgroupfs"
                ));
            }
        }
        match version {
            Some(SystemInfoCgroupVersionEnum::_2) => Ok(Layout::V2),
            // Engines before cgroup v2 support report no version: v1.
            Some(SystemInfoCgroupVersionEnum::_1)
            | None
            | Some(SystemInfoCgroupVersionEnum::EMPTY) => Ok(Layout::V1),
        }
    }

    /// The directory new cgroups with a `pids.max` are made in.
    pub fn root(self) -> PathBuf {
        PathBuf::from(match self {
            Layout::V1 => V1_PIDS_ROOT,
            Layout::V2 => V2_ROOT,
        })
    }

    /// On v1, the directory holding every controller hierarchy (the runtime makes a build's
    /// parent cgroup in each); `None` on v2 (one hierarchy, [`Layout::root`]).
    pub fn hierarchies(self) -> Option<PathBuf> {
        match self {
            Layout::V1 => Some(PathBuf::from(V1_HIERARCHIES)),
            Layout::V2 => None,
        }
    }
}

/// One build's cgroup: created with its `pids.max`, removed by [`BuildCgroup::remove`] (or,
/// as a last resort, when dropped).
#[derive(Debug)]
pub struct BuildCgroup {
    dir: PathBuf,
    name: String,
    /// v1: the directory of every hierarchy, where the runtime makes copies of this cgroup.
    hierarchies: Option<PathBuf>,
    removed: bool,
}

impl BuildCgroup {
    /// Creates `<root>/iac-build-<pid>-<n>` holding `pids.max = max` (after sweeping the
    /// directories of dead iac processes, in `root` and, on v1, in every hierarchy under
    /// `hierarchies`). The error says why, naming the path.
    pub fn create(
        root: &Path,
        hierarchies: Option<&Path>,
        max: u32,
    ) -> Result<BuildCgroup, String> {
        if !root.is_dir() {
            return Err(format!(
                "{} does not exist; expected the pids cgroup hierarchy there",
                root.display()
            ));
        }
        sweep(root);
        for h in hierarchies.map(hierarchy_dirs).unwrap_or_default() {
            sweep(&h);
        }
        let name = format!(
            "{PREFIX}{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst)
        );
        let dir = root.join(&name);
        std::fs::create_dir(&dir)
            .map_err(|e| format!("creating the build cgroup {}: {e}", dir.display()))?;
        let cgroup = BuildCgroup {
            dir,
            name,
            hierarchies: hierarchies.map(Path::to_path_buf),
            removed: false,
        };
        let limit = cgroup.dir.join("pids.max");
        std::fs::write(&limit, max.to_string()).map_err(|e| {
            format!(
                "writing {max} to {}: {e} (is the pids controller enabled there?)",
                limit.display()
            )
        })?;
        Ok(cgroup)
    }

    /// The `cgroupparent` the engine is given: the path from the hierarchy's root.
    pub fn parent(&self) -> String {
        format!("/{}", self.name)
    }

    /// The directory on the host.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The most processes that were ever in it at once (`pids.peak`), when the kernel reports
    /// it. Zero after a build that ran steps means the engine did not put them here.
    pub fn peak(&self) -> Option<u64> {
        read_number(&self.dir.join("pids.peak"))
    }

    /// Removes the cgroup once the engine has removed the build's step containers under it
    /// (it is busy until then; tried for up to 30 s), and on v1 its copies in the other
    /// hierarchies.
    pub async fn remove(mut self) -> Result<(), String> {
        self.removed = true;
        let (dir, copies) = (self.dir.clone(), self.copies());
        tokio::task::spawn_blocking(move || {
            remove_everywhere(&dir, &copies, Duration::from_secs(30))
        })
        .await
        .map_err(|e| format!("removing the build cgroup: {e}"))?
    }

    /// On v1, where the runtime may have made copies of this cgroup: `<hierarchy>/<name>` for
    /// every hierarchy but the one holding [`BuildCgroup::dir`].
    fn copies(&self) -> Vec<PathBuf> {
        let Some(h) = &self.hierarchies else {
            return Vec::new();
        };
        hierarchy_dirs(h)
            .into_iter()
            .map(|d| d.join(&self.name))
            .filter(|d| d != &self.dir)
            .collect()
    }
}

impl Drop for BuildCgroup {
    /// A build dropped before its explicit removal (a deadline, a panic): the engine stops its
    /// step containers soon after, so the cgroup is removed from a thread once it is empty.
    fn drop(&mut self) {
        if self.removed {
            return;
        }
        let (dir, copies) = (self.dir.clone(), self.copies());
        let _ = std::thread::Builder::new()
            .name("iac-build-cgroup".into())
            .spawn(move || {
                if let Err(e) = remove_everywhere(&dir, &copies, Duration::from_secs(120)) {
                    tracing::warn!("{e}");
                }
            });
    }
}

/// Removes `dir` (waiting up to `patience` for it to empty), then each of its `copies` in the
/// other v1 hierarchies (a few seconds each: the runtime empties them with `dir`). A copy that
/// stays busy is logged and left to the next build's sweep; only `dir` fails the call.
fn remove_everywhere(dir: &Path, copies: &[PathBuf], patience: Duration) -> Result<(), String> {
    let result = remove_when_empty(dir, patience);
    for c in copies {
        if let Err(e) = remove_when_empty(c, SIBLING_PATIENCE) {
            tracing::warn!("{e}");
        }
    }
    result
}

/// The directories under `root` (v1: one per controller hierarchy; `cpu` and `cpuacct` may be
/// links to one `cpu,cpuacct`, which is then listed more than once and harmless).
fn hierarchy_dirs(root: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(root) else {
        return Vec::new();
    };
    let mut dirs: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    dirs
}

/// `rmdir` of a cgroup, retried while it still holds processes or child cgroups.
fn remove_when_empty(dir: &Path, patience: Duration) -> Result<(), String> {
    let started = std::time::Instant::now();
    loop {
        match std::fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) if started.elapsed() >= patience => {
                return Err(format!(
                    "removing the build cgroup {}: {e} (still in use after {patience:?})",
                    dir.display()
                ));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

/// Removes `iac-build-<pid>-<n>` directories under `root` whose process is gone and that
/// are empty (an `rmdir` of a cgroup in use fails, and that is left alone).
fn sweep(root: &Path) {
    let Ok(entries) = std::fs::read_dir(root) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix(PREFIX))
            .and_then(|rest| rest.split('-').next())
            .and_then(|p| p.parse::<i32>().ok())
        else {
            continue;
        };
        if !process_alive(pid) {
            let _ = std::fs::remove_dir(e.path());
        }
    }
}

fn process_alive(pid: i32) -> bool {
    // Signal 0 checks existence; EPERM means it exists under another uid.
    let r = unsafe { libc::kill(pid, 0) };
    r == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

fn read_number(path: &Path) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// A clone of `docker` whose image builds (`POST …/build`) ask the engine for
/// `cgroupparent=parent`; every other request is unchanged.
pub fn with_cgroup_parent(docker: &Docker, parent: &str) -> Docker {
    let query = format!("cgroupparent={}", urlencode(parent));
    docker
        .clone()
        .with_request_modifier(move |req| add_to_build(req, &query))
}

/// `req` with `query` appended to its query string when it is an image build.
fn add_to_build<B>(mut req: http::Request<B>, query: &str) -> http::Request<B> {
    let uri = req.uri().clone();
    if req.method() != http::Method::POST || !uri.path().ends_with("/build") {
        return req;
    }
    let pq = match uri.query() {
        Some(q) if !q.is_empty() => format!("{}?{q}&{query}", uri.path()),
        _ => format!("{}?{query}", uri.path()),
    };
    let mut parts = uri.into_parts();
    if let Ok(pq) = pq.parse() {
        parts.path_and_query = Some(pq);
        if let Ok(new) = http::Uri::from_parts(parts) {
            *req.uri_mut() = new;
        }
    }
    req
}

/// What [`urlencode`] leaves as it is: unreserved characters and `/`.
const KEEP: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~')
    .remove(b'/');

/// Percent-encodes everything but unreserved characters and `/` (names here are
/// `/iac-build-<pid>-<n>`; anything else is encoded).
fn urlencode(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, KEEP).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_cgroupfs_driver_is_used() {
        use SystemInfoCgroupDriverEnum as D;
        use SystemInfoCgroupVersionEnum as V;
        assert_eq!(Layout::of(Some(D::CGROUPFS), Some(V::_1)), Ok(Layout::V1));
        assert_eq!(Layout::of(Some(D::CGROUPFS), None), Ok(Layout::V1));
        assert_eq!(Layout::of(Some(D::CGROUPFS), Some(V::_2)), Ok(Layout::V2));
        let e = Layout::of(Some(D::SYSTEMD), Some(V::_2)).unwrap_err();
        assert!(e.contains("systemd") && e.contains("cgroupfs"), "{e}");
        assert!(Layout::of(None, Some(V::_1)).is_err());
        assert_eq!(Layout::V1.root(), PathBuf::from("/sys/fs/cgroup/pids"));
        assert_eq!(
            Layout::V1.hierarchies(),
            Some(PathBuf::from("/sys/fs/cgroup"))
        );
        assert_eq!(Layout::V2.hierarchies(), None);
    }

    /// In a plain directory (not a cgroup): the limit file is written, the name carries the
    /// pid, the parent is the path from the root, and removal leaves nothing.
    #[tokio::test]
    async fn a_build_cgroup_is_created_with_its_limit_and_removed() {
        let root = tempfile::tempdir().unwrap();
        let cg = BuildCgroup::create(root.path(), None, 64).unwrap();
        assert_eq!(
            std::fs::read_to_string(cg.dir().join("pids.max")).unwrap(),
            "64"
        );
        let parent = cg.parent();
        assert!(
            parent.starts_with(&format!("/{PREFIX}{}-", std::process::id())),
            "{parent}"
        );
        assert_eq!(root.path().join(&parent[1..]), cg.dir());
        assert_eq!(cg.peak(), None, "no pids.peak outside a cgroup");
        // A plain dir holding a file is not empty: rmdir fails, so put it back to a dir only.
        std::fs::remove_file(cg.dir().join("pids.max")).unwrap();
        let dir = cg.dir().to_path_buf();
        cg.remove().await.unwrap();
        assert!(!dir.exists());
        let e = BuildCgroup::create(&root.path().join("absent"), None, 64).unwrap_err();
        assert!(e.contains("absent") && e.contains("pids cgroup"), "{e}");
    }

    #[test]
    fn a_dead_processes_cgroup_is_swept_and_a_live_ones_is_not() {
        let root = tempfile::tempdir().unwrap();
        // pid_max is at most 2^22: this pid cannot exist.
        let dead = root.path().join(format!("{PREFIX}99999999-0"));
        let live = root
            .path()
            .join(format!("{PREFIX}{}-77", std::process::id()));
        let other = root.path().join("docker");
        for d in [&dead, &live, &other] {
            std::fs::create_dir(d).unwrap();
        }
        sweep(root.path());
        assert!(!dead.exists() && live.exists() && other.exists());
    }

    /// A fake v1 tree: `<root>/{pids,cpu,memory,unified}`. The runtime's copies of the build
    /// cgroup in the other hierarchies (made here by hand) are removed with it, and a copy that
    /// holds something is left alone without failing the removal.
    #[tokio::test]
    async fn on_v1_the_copies_in_every_hierarchy_are_removed() {
        let root = tempfile::tempdir().unwrap();
        let hier = ["pids", "cpu", "memory", "unified"].map(|h| root.path().join(h));
        for h in &hier {
            std::fs::create_dir(h).unwrap();
        }
        let cg = BuildCgroup::create(&hier[0], Some(root.path()), 64).unwrap();
        let name = cg.parent()[1..].to_string();
        for h in &hier[1..] {
            std::fs::create_dir(h.join(&name)).unwrap();
        }
        std::fs::remove_file(cg.dir().join("pids.max")).unwrap();
        cg.remove().await.unwrap();
        for h in &hier {
            assert!(!h.join(&name).exists(), "{} left", h.join(&name).display());
        }
        // A copy still in use (here: not empty) is logged and left; the removal succeeds.
        let cg = BuildCgroup::create(&hier[0], Some(root.path()), 64).unwrap();
        let name = cg.parent()[1..].to_string();
        let busy = hier[2].join(&name);
        std::fs::create_dir_all(busy.join("step")).unwrap();
        std::fs::create_dir(hier[1].join(&name)).unwrap();
        std::fs::remove_file(cg.dir().join("pids.max")).unwrap();
        cg.remove().await.unwrap();
        assert!(busy.exists() && !hier[1].join(&name).exists());
        assert!(!hier[0].join(&name).exists());
    }

    /// On v1 the sweep before a build covers every hierarchy: a dead process's leftovers go
    /// everywhere, a live one's stay.
    #[test]
    fn on_v1_a_dead_processes_cgroups_are_swept_in_every_hierarchy() {
        let root = tempfile::tempdir().unwrap();
        let hier = ["pids", "blkio", "systemd"].map(|h| root.path().join(h));
        let dead = format!("{PREFIX}99999999-3");
        let live = format!("{PREFIX}{}-78", std::process::id());
        for h in &hier {
            std::fs::create_dir_all(h.join(&dead)).unwrap();
            std::fs::create_dir_all(h.join(&live)).unwrap();
        }
        let cg = BuildCgroup::create(&hier[0], Some(root.path()), 64).unwrap();
        for h in &hier {
            assert!(!h.join(&dead).exists(), "{} left", h.join(&dead).display());
            assert!(h.join(&live).exists());
        }
        std::fs::remove_file(cg.dir().join("pids.max")).unwrap();
        let dir = cg.dir().to_path_buf();
        drop(cg);
        // Dropped unremoved: removed from a thread.
        for _ in 0..100 {
            if !dir.exists() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(!dir.exists());
    }

    #[test]
    fn only_build_requests_get_the_parent() {
        let q = format!("cgroupparent={}", urlencode("/iac-build-1-0"));
        let req = |m: http::Method, uri: &str| {
            http::Request::builder()
                .method(m)
                .uri(uri)
                .body(())
                .unwrap()
        };
        let b = add_to_build(
            req(
                http::Method::POST,
                "http://docker/v1.41/build?t=x&networkmode=none",
            ),
            &q,
        );
        assert_eq!(
            b.uri().to_string(),
            "http://docker/v1.41/build?t=x&networkmode=none&cgroupparent=/iac-build-1-0"
        );
        let bare = add_to_build(req(http::Method::POST, "/build"), &q);
        assert_eq!(bare.uri().to_string(), "/build?cgroupparent=/iac-build-1-0");
        for (m, u) in [
            (http::Method::POST, "http://docker/v1.41/containers/create"),
            (http::Method::GET, "http://docker/v1.41/build"),
            (http::Method::POST, "http://docker/v1.41/builder/prune"),
        ] {
            let r = add_to_build(req(m, u), &q);
            assert_eq!(r.uri().to_string(), u, "left alone");
        }
        assert_eq!(urlencode("/a b&c"), "/a%20b%26c");
    }
}
