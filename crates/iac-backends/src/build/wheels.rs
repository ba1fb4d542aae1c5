//! Offline dependency installs: the host (which reaches PyPI or a configured index) downloads an
//! app's dependency wheels for CPython 3.11 manylinux x86_64, so the image build itself needs no
//! network. [`AppDeps::detect`] decides from the source tree alone (pure apart from reading files);
//! [`HostPip::prepare`] runs pip and caches the result by everything that determines it.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use sha2::{Digest, Sha256};

use iac_core::{BuildError, Events, Stage};

/// pip's target-platform flags: wheels for the image's interpreter, not the host's. Every
/// manylinux tag a glibc 2.36 x86_64 system runs (bookworm; python:3.11-slim is newer). Keep in
/// sync with `PIP_TARGET` in scripts/bootstrap-images.sh.
pub const PIP_TARGET: &[&str] = &[
    "--only-binary=:all:",
    "--implementation",
    "cp",
    "--python-version",
    "3.11",
    "--abi",
    "cp311",
    "--platform",
    "manylinux_2_36_x86_64",
    "--platform",
    "manylinux_2_35_x86_64",
    "--platform",
    "manylinux_2_34_x86_64",
    "--platform",
    "manylinux_2_31_x86_64",
    "--platform",
    "manylinux_2_28_x86_64",
    "--platform",
    "manylinux_2_27_x86_64",
    "--platform",
    "manylinux_2_24_x86_64",
    "--platform",
    "manylinux_2_17_x86_64",
    "--platform",
    "manylinux2014_x86_64",
    "--platform",
    "manylinux2010_x86_64",
    "--platform",
    "manylinux1_x86_64",
    "--platform",
    "linux_x86_64",
];

/// What an app needs installed besides its files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppDeps {
    /// `requirements.txt` at the root.
    pub requirements: Option<PathBuf>,
    /// The tree is a package pip can build (pyproject.toml with `[project]`/`[build-system]`, or
    /// setup.py): it is built into a wheel on the host and installed with its dependencies.
    pub package: bool,
}

impl AppDeps {
    /// Looks at the root of a source tree.
    pub fn detect(dir: &Path) -> Result<AppDeps, BuildError> {
        let req = dir.join("requirements.txt");
        let requirements = req.is_file().then_some(req);
        let pyproject = dir.join("pyproject.toml");
        let mut package = dir.join("setup.py").is_file();
        if !package && pyproject.is_file() {
            let text = std::fs::read_to_string(&pyproject).map_err(|source| BuildError::Io {
                path: pyproject.clone(),
                source,
            })?;
            let doc: toml::Table = toml::from_str(&text).map_err(|e| {
                BuildError::Context(format!(
                    "{}: not valid TOML ({e}); expected a pyproject.toml pip can read",
                    pyproject.display()
                ))
            })?;
            package = doc.contains_key("project") || doc.contains_key("build-system");
        }
        Ok(AppDeps {
            requirements,
            package,
        })
    }

    /// Whether the context carries `wheels/app/`.
    pub fn needed(&self) -> bool {
        self.requirements.is_some() || self.package
    }
}

/// pip on the host.
#[derive(Debug, Clone)]
pub struct HostPip {
    /// Program and leading arguments, e.g. `python3 -m pip`.
    pub command: Vec<String>,
    /// Extra arguments for every call (index URL, find-links, …).
    pub args: Vec<String>,
    /// Also offered as `--find-links` (the bootstrap wheelhouse holds setuptools and wheel, so
    /// packages build without an index).
    pub find_links: Vec<PathBuf>,
    /// Finished downloads, one directory per key.
    pub cache_dir: PathBuf,
}

impl HostPip {
    /// Makes a directory of wheels for `deps` of the tree at `source_dir` (content `source_digest`)
    /// and returns it. Reuses an earlier download with the same inputs.
    pub async fn prepare(
        &self,
        service: &str,
        source_dir: &Path,
        source_digest: &str,
        deps: &AppDeps,
        events: &Events,
    ) -> Result<PathBuf, BuildError> {
        let fail = |message: String| BuildError::Build {
            service: service.to_string(),
            message,
        };
        let requirements = match &deps.requirements {
            Some(p) => Some(std::fs::read(p).map_err(|source| BuildError::Io {
                path: p.clone(),
                source,
            })?),
            None => None,
        };
        // Requirements that point into the tree (`-r other.txt`, `./lib`, `-e .`) depend on more
        // than their own text: key those by the whole tree.
        let tree_dependent = deps.package || requirements.as_deref().is_some_and(refers_to_tree);
        let key = self.cache_key(
            requirements.as_deref(),
            tree_dependent.then_some(source_digest),
        );
        let done = self.cache_dir.join(&key);
        if done.join(COMPLETE).is_file() {
            events.info(
                Stage::Build,
                format!("app dependencies: cached wheels {}", done.display()),
            );
            return Ok(done);
        }
        std::fs::create_dir_all(&self.cache_dir).map_err(|source| BuildError::Io {
            path: self.cache_dir.clone(),
            source,
        })?;
        let work = tempfile::Builder::new()
            .prefix(&format!(".{key}.tmp-"))
            .tempdir_in(&self.cache_dir)
            .map_err(|source| BuildError::Io {
                path: self.cache_dir.clone(),
                source,
            })?;
        let staging = work.path().join("wheels");
        std::fs::create_dir(&staging).map_err(|source| BuildError::Io {
            path: staging.clone(),
            source,
        })?;

        let mut wanted: Vec<String> = Vec::new();
        if let Some(req) = &deps.requirements {
            wanted.push("-r".into());
            wanted.push(req.display().to_string());
        }
        if deps.package {
            // pip builds in the tree (build/, *.egg-info): build from a copy, never the fetch cache.
            let copy = work.path().join("src");
            copy_tree(source_dir, &copy)?;
            let built = work.path().join("project");
            let t = std::time::Instant::now();
            events.info(
                Stage::Build,
                "app dependencies: building the app's wheel on the host (pip wheel --no-deps)",
            );
            let mut argv = vec![
                "wheel".to_string(),
                "--no-deps".into(),
                "--wheel-dir".into(),
                path_arg(&built),
            ];
            argv.extend(self.common_args());
            argv.push(path_arg(&copy));
            self.run(&argv, source_dir, events).await.map_err(|out| {
                fail(format!(
                    "building the app as a wheel on the host (pip wheel) failed:\n{out}"
                ))
            })?;
            let wheel = std::fs::read_dir(&built)
                .ok()
                .and_then(|rd| {
                    rd.filter_map(Result::ok)
                        .map(|e| e.path())
                        .find(|p| p.extension().is_some_and(|e| e == "whl"))
                })
                .ok_or_else(|| {
                    fail(format!(
                        "pip wheel produced no wheel in {}",
                        built.display()
                    ))
                })?;
            events.info(
                Stage::Build,
                format!(
                    "app dependencies: built {} ({:.1?})",
                    file_name(&wheel),
                    t.elapsed()
                ),
            );
            wanted.push(path_arg(&wheel));
        }

        let t = std::time::Instant::now();
        let mut argv = vec!["download".to_string(), "--dest".into(), path_arg(&staging)];
        argv.extend(PIP_TARGET.iter().map(|s| s.to_string()));
        argv.extend(self.common_args());
        argv.extend(wanted.iter().cloned());
        if let Err(binary_only) = self.run(&argv, source_dir, events).await {
            // Some dependency has no wheel for the target. Build wheels with the host's
            // interpreter, which is only right when it is the image's CPython 3.11.
            if !self.host_is_cp311().await {
                return Err(fail(format!(
                    "pip download of the app's dependencies on the host failed, and the host's Python is not 3.11 (so it cannot build wheels for the image):\n{binary_only}"
                )));
            }
            events.warn(Stage::Build, "app dependencies: no binary wheel for some requirement; building wheels with the host's Python 3.11");
            let mut argv = vec![
                "wheel".to_string(),
                "--wheel-dir".into(),
                path_arg(&staging),
            ];
            argv.extend(self.common_args());
            argv.extend(wanted.iter().cloned());
            self.run(&argv, source_dir, events).await.map_err(|native| {
                fail(format!(
                    "the app's dependencies cannot be downloaded on the host.\npip download (binary wheels for CPython 3.11 manylinux x86_64):\n{binary_only}\npip wheel (host build):\n{native}"
                ))
            })?;
        }
        let count = std::fs::read_dir(&staging)
            .map(|rd| rd.count())
            .unwrap_or(0);
        events.info(
            Stage::Build,
            format!(
                "app dependencies: {count} wheels downloaded on the host ({:.1?})",
                t.elapsed()
            ),
        );
        std::fs::write(staging.join(COMPLETE), b"").map_err(|source| BuildError::Io {
            path: staging.clone(),
            source,
        })?;
        match std::fs::rename(&staging, &done) {
            Ok(()) => Ok(done),
            // A concurrent build of the same inputs finished first: use its result.
            Err(_) if done.join(COMPLETE).is_file() => Ok(done),
            Err(source) => Err(BuildError::Io { path: done, source }),
        }
    }

    fn common_args(&self) -> Vec<String> {
        let mut out = vec![
            "--disable-pip-version-check".to_string(),
            "--no-input".into(),
            "--progress-bar".into(),
            "off".into(),
        ];
        for d in &self.find_links {
            if d.is_dir() {
                out.push("--find-links".into());
                out.push(path_arg(d));
            }
        }
        out.extend(self.args.iter().cloned());
        out
    }

    fn cache_key(&self, requirements: Option<&[u8]>, package_digest: Option<&str>) -> String {
        let mut h = Sha256::new();
        for part in self
            .command
            .iter()
            .chain(&self.args)
            .map(String::as_str)
            .chain(PIP_TARGET.iter().copied())
        {
            h.update(part.as_bytes());
            h.update([0]);
        }
        h.update(b"requirements\0");
        h.update(requirements.unwrap_or(b"(none)"));
        h.update(b"\0package\0");
        h.update(package_digest.unwrap_or("(none)").as_bytes());
        hex::encode(h.finalize())[..24].to_string()
    }

    async fn host_is_cp311(&self) -> bool {
        let Some((prog, lead)) = self.command.split_first() else {
            return false;
        };
        // `python3 -m pip` → ask that interpreter; a bare `pip` → ask pip itself.
        let mut cmd = tokio::process::Command::new(prog);
        if lead.first().is_some_and(|a| a == "-m") {
            cmd.args(["-c", "import sys; print('%d.%d' % sys.version_info[:2])"]);
        } else {
            cmd.args(lead).arg("--version");
        }
        match cmd.stdin(Stdio::null()).output().await {
            Ok(out) => {
                let s = String::from_utf8_lossy(&out.stdout);
                s.trim() == "3.11" || s.contains("(python 3.11)")
            }
            Err(_) => false,
        }
    }

    /// Runs pip with `argv`; on failure returns the tail of its output.
    async fn run(&self, argv: &[String], cwd: &Path, events: &Events) -> Result<(), String> {
        let (prog, lead) = self.command.split_first().ok_or_else(|| {
            "the pip command is empty; set images.pip, e.g. [\"python3\", \"-m\", \"pip\"]"
                .to_string()
        })?;
        let shown = format!(
            "{} {}",
            self.command.join(" "),
            argv.iter()
                .map(|a| super::config::redact_url_credentials(a))
                .collect::<Vec<_>>()
                .join(" ")
        );
        events.debug(Stage::Build, format!("$ {shown}"));
        let out = tokio::process::Command::new(prog)
            .args(lead)
            .args(argv)
            .current_dir(cwd)
            .env("PIP_DISABLE_PIP_VERSION_CHECK", "1")
            .env("PIP_NO_INPUT", "1")
            .envs(iac_core::trace_context::env())
            .stdin(Stdio::null())
            .output()
            .await
            .map_err(|e| format!("cannot run {prog:?}: {e}; set images.pip to a working pip (e.g. [\"python3\", \"-m\", \"pip\"])"))?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            events.debug(Stage::Build, format!("pip: {line}"));
        }
        if out.status.success() {
            Ok(())
        } else {
            Err(format!("$ {shown}\n{}", tail(&text, 25)))
        }
    }
}

const COMPLETE: &str = ".iac-complete";

/// Whether a requirements file includes other files or local paths.
fn refers_to_tree(requirements: &[u8]) -> bool {
    String::from_utf8_lossy(requirements)
        .lines()
        .map(str::trim)
        .any(|l| {
            [
                "-r",
                "-c",
                "--requirement",
                "--constraint",
                "-e",
                "--editable",
                ".",
                "/",
                "file:",
            ]
            .iter()
            .any(|p| l.starts_with(p))
        })
}

fn path_arg(p: &Path) -> String {
    p.display().to_string()
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// The last `n` non-empty lines of `text`.
pub(crate) fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Copies a source tree (regular files, directories and symlinks; no `.git`).
fn copy_tree(from: &Path, to: &Path) -> Result<(), BuildError> {
    std::fs::create_dir_all(to).map_err(|source| BuildError::Io {
        path: to.to_path_buf(),
        source,
    })?;
    let rd = std::fs::read_dir(from).map_err(|source| BuildError::Io {
        path: from.to_path_buf(),
        source,
    })?;
    for e in rd {
        let e = e.map_err(|source| BuildError::Io {
            path: from.to_path_buf(),
            source,
        })?;
        if e.file_name() == ".git" {
            continue;
        }
        let (src, dst) = (e.path(), to.join(e.file_name()));
        let ft = e.file_type().map_err(|source| BuildError::Io {
            path: src.clone(),
            source,
        })?;
        if ft.is_symlink() {
            let target = std::fs::read_link(&src).map_err(|source| BuildError::Io {
                path: src.clone(),
                source,
            })?;
            std::os::unix::fs::symlink(target, &dst).map_err(|source| BuildError::Io {
                path: dst.clone(),
                source,
            })?;
        } else if ft.is_dir() {
            copy_tree(&src, &dst)?;
        } else if ft.is_file() {
            std::fs::copy(&src, &dst).map_err(|source| BuildError::Io {
                path: src.clone(),
                source,
            })?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detect_reads_requirements_and_package_markers() {
        let d = tempfile::tempdir().unwrap();
        assert!(
            !AppDeps::detect(d.path()).unwrap().needed(),
            "bare main.py needs nothing"
        );
        std::fs::write(
            d.path().join("pyproject.toml"),
            "[tool.black]\nline-length = 100\n",
        )
        .unwrap();
        assert!(
            !AppDeps::detect(d.path()).unwrap().package,
            "tool config only is not a package"
        );
        std::fs::write(d.path().join("pyproject.toml"), "[project]\nname = \"x\"\n").unwrap();
        assert!(AppDeps::detect(d.path()).unwrap().package);
        std::fs::write(d.path().join("requirements.txt"), "six\n").unwrap();
        let deps = AppDeps::detect(d.path()).unwrap();
        assert_eq!(deps.requirements, Some(d.path().join("requirements.txt")));
        std::fs::write(d.path().join("pyproject.toml"), "[project\n").unwrap();
        let err = AppDeps::detect(d.path()).unwrap_err().to_string();
        assert!(
            err.contains("pyproject.toml") && err.contains("TOML"),
            "{err}"
        );
    }

    #[test]
    fn requirements_pointing_into_the_tree_are_recognised() {
        assert!(!refers_to_tree(
            b"six==1.16\n# comment\nrequests[socks]>=2\n"
        ));
        for r in [
            "-r base.txt",
            "-c constraints.txt",
            "./libs/x",
            "-e .",
            "file:///abs/pkg",
        ] {
            assert!(refers_to_tree(format!("six\n  {r}\n").as_bytes()), "{r}");
        }
    }

    #[test]
    fn cache_key_depends_on_requirements_index_and_package_source() {
        let pip = HostPip {
            command: vec!["python3".into(), "-m".into(), "pip".into()],
            args: vec![],
            find_links: vec![],
            cache_dir: PathBuf::from("/nonexistent"),
        };
        let a = pip.cache_key(Some(b"six\n"), None);
        assert_eq!(a, pip.cache_key(Some(b"six\n"), None));
        assert_ne!(a, pip.cache_key(Some(b"six==1.16\n"), None));
        assert_ne!(a, pip.cache_key(Some(b"six\n"), Some("sha256:x")));
        let other_index = HostPip {
            args: vec!["--index-url".into(), "http://mirror/simple".into()],
            ..pip.clone()
        };
        assert_ne!(a, other_index.cache_key(Some(b"six\n"), None));
    }
}
