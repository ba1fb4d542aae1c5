//! The state and cache directory on a full filesystem: a deploy that cannot write fails with a
//! clear error naming what it could not write, leaves the cache and the state of the last good
//! deploy intact, and the next deploy, once there is room again, converges.
//!
//! The test mounts a small tmpfs of its own as the state directory (`.iac`: cache, rendered
//! configs, state files), which needs root; without it the test is skipped loudly (CI runs as
//! root). The mount and everything deployed are removed on drop, even on panic.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

mod e2e;
use e2e::{HELLO, Project, fixture, git, json_of};

/// The test's project, its state directory, and whether that is mounted (unmounted on drop).
struct FullDisk {
    p: Project,
    state: PathBuf,
    mounted: bool,
}

impl Drop for FullDisk {
    fn drop(&mut self) {
        // The containers first: they mount files from the tmpfs.
        e2e::remove_labelled(&format!("iac.project={}", self.p.name));
        if self.mounted {
            let _ = Command::new("umount").arg(&self.state).status();
        }
    }
}

impl FullDisk {
    fn iac(&self, args: &[&str]) -> Output {
        self.p
            .iac_env(args, &[("IAC_STATE_DIR", self.state.to_str().unwrap())])
    }
}

/// Fills the filesystem of `dir` with one file until a write fails for want of space.
fn fill(dir: &Path) -> PathBuf {
    use std::io::Write;
    let path = dir.join("filler");
    let mut f = std::fs::File::create(&path).unwrap();
    let chunk = vec![0u8; 64 * 1024];
    loop {
        if let Err(e) = f.write_all(&chunk) {
            assert_eq!(e.raw_os_error(), Some(libc::ENOSPC), "{e}");
            break;
        }
    }
    // Byte by byte, to the last one.
    while f.write_all(&[0]).is_ok() {}
    let _ = f.sync_all();
    path
}

#[test]
fn a_full_state_filesystem_is_a_clear_error_and_loses_nothing() {
    if e2e::skip_without_docker("a_full_state_filesystem_is_a_clear_error_and_loses_nothing") {
        return;
    }
    let project = Project::new();
    let state = project.workdir.path().join(".iac");
    std::fs::create_dir_all(&state).unwrap();
    let mut p = FullDisk {
        p: project,
        state: state.clone(),
        mounted: false,
    };
    let mounted = Command::new("mount")
        .args([
            "-t",
            "tmpfs",
            "-o",
            "size=16m,mode=0700",
            "iac-test-full",
            state.to_str().unwrap(),
        ])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !mounted {
        assert!(
            unsafe { libc::geteuid() } != 0,
            "running as root, but a tmpfs could not be mounted at {}",
            state.display()
        );
        eprintln!(
            "SKIPPED a_full_state_filesystem_is_a_clear_error_and_loses_nothing: mounting a tmpfs needs root"
        );
        return;
    }
    p.mounted = true;

    let repos = p.p.workdir.path().join("repos");
    let hello = fixture(&repos, "hello", &[("main.py", HELLO)]);
    let file = p.p.workdir.path().join("repos.yaml");
    std::fs::write(&file, format!("- git+file://{}#main\n", hello.display())).unwrap();
    let file = file.to_str().unwrap();

    let out = p.iac(&["deploy", "--file", file, "--json"]);
    assert_eq!(out.status.code(), Some(0), "the first deploy");
    let last = state
        .join("projects")
        .join(&p.p.name)
        .join("last-deploy.json");
    let before = std::fs::read(&last).unwrap();
    let trees: Vec<PathBuf> = std::fs::read_dir(state.join("cache/trees"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    assert_eq!(trees.len(), 1, "{trees:?}");
    let tree_main = std::fs::read(trees[0].join("main.py")).unwrap();

    // A new commit to fetch, and no room to keep it.
    std::fs::write(hello.join("main.py"), format!("{HELLO}\n# v2\n")).unwrap();
    git(&hello, &["commit", "-qam", "v2"]);
    let filler = fill(&state);
    let out = p.iac(&["deploy", "--file", file, "--json"]);
    assert_ne!(out.status.code(), Some(0), "a deploy with no room fails");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        text.contains("No space left on device") && text.contains(state.to_str().unwrap()),
        "the error says what and where: {}",
        e2e::tail(&text, 30)
    );
    assert!(!text.contains("panicked"), "{text}");
    // Nothing the last good deploy left was damaged.
    assert_eq!(
        std::fs::read(&last).unwrap(),
        before,
        "last-deploy.json intact"
    );
    serde_json::from_slice::<serde_json::Value>(&before).unwrap();
    assert_eq!(
        std::fs::read(trees[0].join("main.py")).unwrap(),
        tree_main,
        "the cached tree intact"
    );
    // The service from the last good deploy still runs.
    let (_, health) = {
        let out = p.iac(&["health", "--json"]);
        let v = json_of(&out);
        (out, v)
    };
    assert_eq!(
        health["services"][0]["health"]["state"], "SERVING",
        "{health:#}"
    );

    // Room again: the next deploy converges on v2.
    std::fs::remove_file(&filler).unwrap();
    let out = p.iac(&["deploy", "--file", file, "--json"]);
    let report = json_of(&out)["report"].clone();
    assert_eq!(out.status.code(), Some(0), "{report:#}");
    assert_eq!(report["services"][0]["action"], "replace", "{report:#}");
    let leftovers: Vec<PathBuf> = std::fs::read_dir(state.join("cache/tmp"))
        .map(|d| d.map(|e| e.unwrap().path()).collect())
        .unwrap_or_default();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    assert!(p.iac(&["destroy"]).status.success());
}
