//! Offline dependency installs without running repo code on the host.
//!
//! The host (which reaches the operator's index when the build container may not) only
//! DOWNLOADS binary wheels (`--only-binary=:all:` for the image's CPython — 3.11, 3.13 or 3.14,
//! [`pip_target`] — manylinux x86_64): no `setup.py`, build backend or sdist ever runs on the host. Everything that
//! builds — the app's own package, local projects listed in requirements, their build backends —
//! runs inside the image build, offline, from what the host downloaded (see
//! `infra/templates/app.Dockerfile.tmpl`).
//!
//! - [`AppDeps::detect`]: does the tree need dependencies at all (pure apart from reading files).
//! - [`DepPlan::from_tree`]: what to download and what to build, read statically from
//!   `requirements.txt` (through the filter in [`super::requirements`], which refuses lines that
//!   point pip elsewhere, naming the file and line) and from `pyproject.toml`
//!   (`[project] dependencies` unless dynamic, `[build-system] requires`); plus `setuptools` and
//!   `wheel`, the default build backend, whenever something builds in the image.
//! - [`HostPip::prepare`]: runs pip on the host in a scrubbed environment (`env_clear`, then only
//!   `PATH`, a temp `HOME`, proxy and CA-bundle variables, `PIP_INDEX_URL`/`PIP_EXTRA_INDEX_URL`
//!   from the operator's config and the variables the operator lists in `images.pip_pass_env`),
//!   from an empty working directory (so `python -m pip` cannot import a repo's `pip/`), with
//!   requirement files iac wrote itself. Results are cached by everything that determines them.
//!
//! A dependency that exists only as an sdist cannot be fetched safely: `pip download` of an sdist
//! runs its metadata hooks (repo code). It is refused with an error naming the package.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use sha2::{Digest, Sha256};

use iac_core::{BuildError, Events, Stage};

use super::config::redact_url_credentials;
use super::requirements::{Line, classify_dependency, parse};

/// glibc minor of the oldest base image a Python minor runs on here: 3.11 → 36 (Debian
/// bookworm; `python:3.11-slim` is newer), 3.13 and 3.14 → 41 (Debian trixie, which
/// `python:3.13-slim`/`python:3.14-slim` use; Debian unstable is newer). Any other minor → 36, the
/// oldest, which every later glibc runs.
pub fn glibc_minor(python: (u32, u32)) -> u32 {
    match python {
        (3, 13) | (3, 14) => 41,
        _ => 36,
    }
}

/// Manylinux tags below glibc 2.36 that wheels are published with, newest first.
const OLDER_PLATFORMS: &[&str] = &[
    "manylinux_2_35_x86_64",
    "manylinux_2_34_x86_64",
    "manylinux_2_31_x86_64",
    "manylinux_2_28_x86_64",
    "manylinux_2_27_x86_64",
    "manylinux_2_24_x86_64",
    "manylinux_2_17_x86_64",
    "manylinux2014_x86_64",
    "manylinux2010_x86_64",
    "manylinux1_x86_64",
    "linux_x86_64",
];

/// pip's target flags: binary wheels for the image's interpreter (CPython `python`), not the
/// host's — every manylinux tag that interpreter's base image runs ([`glibc_minor`]). For 3.11 this
/// is exactly `PIP_TARGET` of scripts/bootstrap-images.sh (keep them in sync).
pub fn pip_target(python: (u32, u32)) -> Vec<String> {
    let (major, minor) = python;
    let mut argv: Vec<String> = vec![
        "--only-binary=:all:".into(),
        "--implementation".into(),
        "cp".into(),
        "--python-version".into(),
        format!("{major}.{minor}"),
        "--abi".into(),
        format!("cp{major}{minor}"),
    ];
    for g in (36..=glibc_minor(python).max(36)).rev() {
        argv.push("--platform".into());
        argv.push(format!("manylinux_2_{g}_x86_64"));
    }
    for p in OLDER_PLATFORMS {
        argv.push("--platform".into());
        argv.push(p.to_string());
    }
    argv
}

/// In `wheels/app/`: the requirements installed from the wheels before the app is copied in.
pub const REQUIREMENTS_FILE: &str = "iac-requirements.txt";
/// In `wheels/app/`: constraints for both image installs.
pub const CONSTRAINTS_FILE: &str = "iac-constraints.txt";
/// In `wheels/app/`: what is built and installed from `/app` inside the image (the app package,
/// local projects and archives from requirements), one pip requirement line each.
pub const LOCAL_FILE: &str = "iac-local.txt";

/// Environment variables host pip gets from iac's environment: how to reach the index (proxies,
/// CA bundles) and where programs are. Nothing else of iac's environment (secrets) reaches it.
pub const PIP_ENV_PASSTHROUGH: &[&str] = &[
    "PATH",
    "http_proxy",
    "https_proxy",
    "no_proxy",
    "all_proxy",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "NO_PROXY",
    "ALL_PROXY",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "REQUESTS_CA_BUNDLE",
    "CURL_CA_BUNDLE",
    "PIP_CERT",
];

/// Build requirements every in-image build gets (the default PEP 517 backend and its wheel
/// builder), besides what `[build-system] requires` lists.
const DEFAULT_BUILD_REQUIRES: &[&str] = &["setuptools", "wheel"];

/// Caps on what the requirements walk reads.
const MAX_REQUIREMENT_FILE_BYTES: u64 = 1024 * 1024;
const MAX_REQUIREMENT_FILES: usize = 64;
const MAX_INCLUDE_DEPTH: usize = 10;

/// What an app needs installed besides its files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppDeps {
    /// `requirements.txt` at the root.
    pub requirements: Option<PathBuf>,
    /// The tree is a package pip can build (pyproject.toml with `[project]`/`[build-system]`, or
    /// setup.py): it is built inside the image and installed with its dependencies.
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
            let doc = read_pyproject(&pyproject)?;
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

fn read_pyproject(path: &Path) -> Result<toml::Table, BuildError> {
    let text = std::fs::read_to_string(path).map_err(|source| BuildError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    toml::from_str(&text).map_err(|e| {
        BuildError::Context(format!(
            "{}: not valid TOML ({e}); expected a pyproject.toml pip can read",
            path.display()
        ))
    })
}

/// What the host downloads and what the image builds, read from the tree without running it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DepPlan {
    /// Requirement lines (by name) and global options for the host download and the first image
    /// install.
    pub requirements: Vec<String>,
    /// Constraint lines (by name).
    pub constraints: Vec<String>,
    /// Lines pip installs inside the image from `/app` (the app package is `.`).
    pub local: Vec<String>,
    /// Build requirements downloaded for the in-image builds (empty when nothing builds).
    pub build: Vec<String>,
}

impl DepPlan {
    /// Reads `deps` of the tree at `root`. Errors name the file (relative to the tree) and line.
    pub fn from_tree(root: &Path, deps: &AppDeps) -> Result<DepPlan, String> {
        let root = std::fs::canonicalize(root).map_err(|e| format!("{}: {e}", root.display()))?;
        let mut walk = Walk {
            root: &root,
            plan: DepPlan::default(),
            build: BTreeSet::new(),
            files: Vec::new(),
        };
        if deps.requirements.is_some() {
            walk.file("requirements.txt", false, 0, None)?;
        }
        if deps.package {
            walk.plan.local.push(".".into());
            walk.project(".", "the app's pyproject.toml")?;
        }
        if !walk.plan.local.is_empty() {
            let mut build: Vec<String> = DEFAULT_BUILD_REQUIRES
                .iter()
                .map(|s| s.to_string())
                .collect();
            for b in walk.build {
                if !build.contains(&b) {
                    build.push(b);
                }
            }
            walk.plan.build = build;
        }
        Ok(walk.plan)
    }

    /// Whether the requirements name anything to download (not only options).
    fn downloads(&self) -> bool {
        self.requirements.iter().any(|l| !l.starts_with('-'))
    }
}

struct Walk<'a> {
    root: &'a Path,
    plan: DepPlan,
    build: BTreeSet<String>,
    /// Requirement files read so far (canonical), for cycles and the file cap.
    files: Vec<PathBuf>,
}

impl Walk<'_> {
    /// The tree-relative `rel` on disk, refused when it does not exist or a symlink takes it out
    /// of the tree.
    fn inside(&self, rel: &str, what: &str) -> Result<PathBuf, String> {
        let p = self.root.join(rel);
        let canon = std::fs::canonicalize(&p).map_err(|e| format!("{what} {rel}: {e}"))?;
        if !canon.starts_with(self.root) {
            return Err(format!(
                "{what} {rel} resolves outside the repository (through a symlink); it must stay inside it"
            ));
        }
        Ok(canon)
    }

    fn file(
        &mut self,
        rel: &str,
        constraint: bool,
        depth: usize,
        from: Option<(&str, usize)>,
    ) -> Result<(), String> {
        let at = |from: Option<(&str, usize)>| match from {
            Some((f, l)) => format!("{f}:{l}: "),
            None => String::new(),
        };
        let path = self
            .inside(rel, "requirements file")
            .map_err(|e| format!("{}{e}", at(from)))?;
        if self.files.contains(&path) {
            return Err(format!(
                "{}{rel} is included more than once (or includes itself)",
                at(from)
            ));
        }
        if depth > MAX_INCLUDE_DEPTH || self.files.len() >= MAX_REQUIREMENT_FILES {
            return Err(format!(
                "{}too many nested requirement files (more than {MAX_INCLUDE_DEPTH} levels or {MAX_REQUIREMENT_FILES} files)",
                at(from)
            ));
        }
        self.files.push(path.clone());
        let meta = std::fs::metadata(&path).map_err(|e| format!("{rel}: {e}"))?;
        if !meta.is_file() || meta.len() > MAX_REQUIREMENT_FILE_BYTES {
            return Err(format!(
                "{rel}: expected a requirements file of at most {MAX_REQUIREMENT_FILE_BYTES} bytes"
            ));
        }
        let bytes = std::fs::read(&path).map_err(|e| format!("{rel}: {e}"))?;
        let text = String::from_utf8(bytes)
            .map_err(|_| format!("{rel}: not UTF-8; expected a text requirements file"))?;
        let base = match rel.rfind('/') {
            Some(i) => &rel[..i],
            None => "",
        };
        for (line, verdict) in parse(&text, base) {
            let here = format!("{rel}:{line}");
            match verdict.map_err(|why| format!("{here}: {why}"))? {
                Line::Index(text) => {
                    let list = if constraint {
                        &mut self.plan.constraints
                    } else {
                        &mut self.plan.requirements
                    };
                    list.push(text);
                }
                Line::Option(text) => {
                    if !self.plan.requirements.contains(&text) {
                        self.plan.requirements.insert(0, text);
                    }
                }
                Line::Local { text, path, .. } => {
                    if constraint {
                        return Err(format!(
                            "{here}: local paths are not allowed in a constraints file"
                        ));
                    }
                    let on_disk = self
                        .inside(&path, "local requirement")
                        .map_err(|e| format!("{here}: {e}"))?;
                    self.plan.local.push(text);
                    if on_disk.is_dir() {
                        self.project(&path, &format!("{path}/pyproject.toml (from {here})"))?;
                    }
                }
                Line::Include {
                    path,
                    constraint: c,
                } => self.file(&path, constraint || c, depth + 1, Some((rel, line)))?,
            }
        }
        Ok(())
    }

    /// Static dependencies and build requirements of the project at tree-relative `dir`.
    fn project(&mut self, dir: &str, what: &str) -> Result<(), String> {
        let rel = if dir == "." {
            "pyproject.toml".to_string()
        } else {
            format!("{dir}/pyproject.toml")
        };
        let path = self.root.join(&rel);
        if !path.is_file() {
            return Ok(());
        }
        self.inside(&rel, "pyproject.toml")?;
        let doc = read_pyproject(&path).map_err(|e| e.to_string())?;
        let strings = |v: Option<&toml::Value>, key: &str| -> Result<Vec<String>, String> {
            match v {
                None => Ok(Vec::new()),
                Some(toml::Value::Array(a)) => a
                    .iter()
                    .map(|x| {
                        x.as_str()
                            .map(str::to_string)
                            .ok_or_else(|| format!("{what}: {key} must be a list of strings"))
                    })
                    .collect(),
                Some(_) => Err(format!("{what}: {key} must be a list of strings")),
            }
        };
        if let Some(project) = doc.get("project").and_then(|p| p.as_table()) {
            let dynamic = strings(project.get("dynamic"), "[project] dynamic")?;
            if !dynamic.iter().any(|d| d == "dependencies") {
                for dep in strings(project.get("dependencies"), "[project] dependencies")? {
                    let line = classify_dependency(&dep)
                        .map_err(|why| format!("{what}: [project] dependencies: {why}"))?;
                    self.plan.requirements.push(line);
                }
            }
        }
        if let Some(bs) = doc.get("build-system").and_then(|b| b.as_table()) {
            for dep in strings(bs.get("requires"), "[build-system] requires")? {
                let line = classify_dependency(&dep)
                    .map_err(|why| format!("{what}: [build-system] requires: {why}"))?;
                self.build.insert(line);
            }
        }
        Ok(())
    }
}

/// pip on the host.
#[derive(Debug, Clone)]
pub struct HostPip {
    /// Program and leading arguments, e.g. `python3 -m pip`.
    pub command: Vec<String>,
    /// Extra arguments for every call (index URL, find-links, …), from the operator's config.
    pub args: Vec<String>,
    /// `PIP_INDEX_URL` for every call (operator config).
    pub index_url: Option<String>,
    /// `PIP_EXTRA_INDEX_URL` for every call (operator config).
    pub extra_index_urls: Vec<String>,
    /// Further variables of iac's environment the operator lets through (`images.pip_pass_env`).
    pub pass_env: Vec<String>,
    /// Also offered as `--find-links` (the bootstrap wheelhouse holds setuptools and wheel).
    pub find_links: Vec<PathBuf>,
    /// Finished downloads, one directory per key.
    pub cache_dir: PathBuf,
    /// The image's CPython `(major, minor)`: wheels are downloaded for it ([`pip_target`]).
    pub python: (u32, u32),
}

impl HostPip {
    /// Makes a directory of wheels (and the [`REQUIREMENTS_FILE`], [`CONSTRAINTS_FILE`] and
    /// [`LOCAL_FILE`] lists) for `deps` of the tree at `source_dir` and returns it. Reuses an
    /// earlier download with the same inputs.
    pub async fn prepare(
        &self,
        service: &str,
        source_dir: &Path,
        deps: &AppDeps,
        events: &Events,
    ) -> Result<PathBuf, BuildError> {
        let fail = |message: String| BuildError::Build {
            service: service.to_string(),
            message,
        };
        let plan = {
            let dir = source_dir.to_path_buf();
            let deps = deps.clone();
            tokio::task::spawn_blocking(move || DepPlan::from_tree(&dir, &deps))
                .await
                .map_err(|e| fail(format!("reading the app's requirements: {e}")))?
                .map_err(|why| fail(format!("app dependencies refused: {why}")))?
        };
        let key = self.cache_key(&plan);
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
        // A killed build's work directory (its owner's lock no longer held) goes first.
        iac_core::fsutil::sweep_orphans(&self.cache_dir, std::time::Duration::MAX);
        let work = iac_core::fsutil::OwnedTempDir::new_in(&self.cache_dir, &format!(".{key}.tmp-"))
            .map_err(|source| BuildError::Io {
                path: self.cache_dir.clone(),
                source,
            })?;
        let staging = work.path().join("wheels");
        let home = work.path().join("home");
        let cwd = work.path().join("cwd");
        for d in [&staging, &home, &cwd] {
            std::fs::create_dir(d).map_err(|source| BuildError::Io {
                path: d.clone(),
                source,
            })?;
        }
        let write = |path: &Path, lines: &[String]| {
            let mut text = lines.join("\n");
            if !text.is_empty() {
                text.push('\n');
            }
            std::fs::write(path, text).map_err(|source| BuildError::Io {
                path: path.to_path_buf(),
                source,
            })
        };
        // pip reads only files iac wrote, in iac's temp dir, never the repo's.
        let req_file = work.path().join("requirements.txt");
        let cons_file = work.path().join("constraints.txt");
        write(&req_file, &plan.requirements)?;
        write(&cons_file, &plan.constraints)?;

        let t = std::time::Instant::now();
        if plan.downloads() {
            events.info(
                Stage::Build,
                "app dependencies: downloading binary wheels on the host (no code of the app or its dependencies runs here)",
            );
            let mut argv = self.download_args(&staging);
            argv.push("-r".into());
            argv.push(path_arg(&req_file));
            if !plan.constraints.is_empty() {
                argv.push("-c".into());
                argv.push(path_arg(&cons_file));
            }
            self.run(&argv, &home, &cwd, events)
                .await
                .map_err(|out| fail(download_error("the app's dependencies", self.python, &out)))?;
        }
        if !plan.build.is_empty() {
            events.info(
                Stage::Build,
                format!(
                    "app dependencies: downloading build requirements ({}) for the in-image build of {}",
                    plan.build.join(", "),
                    plan.local.join(", ")
                ),
            );
            let mut argv = self.download_args(&staging);
            argv.extend(plan.build.iter().cloned());
            self.run(&argv, &home, &cwd, events)
                .await
                .map_err(|out| fail(download_error("the build requirements", self.python, &out)))?;
        }
        write(&staging.join(REQUIREMENTS_FILE), &plan.requirements)?;
        write(&staging.join(CONSTRAINTS_FILE), &plan.constraints)?;
        write(&staging.join(LOCAL_FILE), &plan.local)?;
        let count = std::fs::read_dir(&staging)
            .map(|rd| {
                rd.filter_map(Result::ok)
                    .filter(|e| e.file_name().to_string_lossy().ends_with(".whl"))
                    .count()
            })
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

    fn download_args(&self, dest: &Path) -> Vec<String> {
        let mut argv = vec!["download".to_string(), "--dest".into(), path_arg(dest)];
        argv.extend(pip_target(self.python));
        argv.extend([
            "--disable-pip-version-check".to_string(),
            "--no-input".into(),
            "--progress-bar".into(),
            "off".into(),
        ]);
        for d in &self.find_links {
            if d.is_dir() {
                argv.push("--find-links".into());
                argv.push(path_arg(d));
            }
        }
        argv.extend(self.args.iter().cloned());
        argv
    }

    fn cache_key(&self, plan: &DepPlan) -> String {
        let mut h = Sha256::new();
        let mut part = |s: &str| {
            h.update((s.len() as u64).to_le_bytes());
            h.update(s.as_bytes());
        };
        part("iac-app-wheels/v2");
        for s in self.command.iter().chain(&self.args) {
            part(s);
        }
        part(self.index_url.as_deref().unwrap_or("(default index)"));
        for s in &self.extra_index_urls {
            part(s);
        }
        for s in pip_target(self.python) {
            part(&s);
        }
        for (name, list) in [
            ("requirements", &plan.requirements),
            ("constraints", &plan.constraints),
            ("local", &plan.local),
            ("build", &plan.build),
        ] {
            part(name);
            part(&list.len().to_string());
            for s in list {
                part(s);
            }
        }
        hex::encode(h.finalize())[..24].to_string()
    }

    /// The host pip command: a scrubbed environment, a temp `HOME`, an empty working directory.
    fn command(
        &self,
        argv: &[String],
        home: &Path,
        cwd: &Path,
    ) -> Result<tokio::process::Command, String> {
        let (prog, lead) = self.command.split_first().ok_or_else(|| {
            "the pip command is empty; set images.pip, e.g. [\"python3\", \"-m\", \"pip\"]"
                .to_string()
        })?;
        let mut cmd = tokio::process::Command::new(prog);
        cmd.args(lead).args(argv).env_clear().current_dir(cwd);
        for name in PIP_ENV_PASSTHROUGH
            .iter()
            .copied()
            .chain(self.pass_env.iter().map(String::as_str))
        {
            if let Some(v) = std::env::var_os(name) {
                cmd.env(name, v);
            }
        }
        cmd.env("HOME", home)
            .env("PIP_DISABLE_PIP_VERSION_CHECK", "1")
            .env("PIP_NO_INPUT", "1")
            .env("PYTHONNOUSERSITE", "1")
            .env("PYTHONSAFEPATH", "1")
            .env("LC_ALL", "C.UTF-8");
        if let Some(u) = &self.index_url {
            cmd.env("PIP_INDEX_URL", u);
        }
        if !self.extra_index_urls.is_empty() {
            cmd.env("PIP_EXTRA_INDEX_URL", self.extra_index_urls.join(" "));
        }
        cmd.stdin(Stdio::null());
        Ok(cmd)
    }

    /// Runs pip with `argv`; on failure returns its output, credentials redacted.
    async fn run(
        &self,
        argv: &[String],
        home: &Path,
        cwd: &Path,
        events: &Events,
    ) -> Result<(), String> {
        let shown = format!(
            "{} {}",
            self.command.join(" "),
            argv.iter()
                .map(|a| redact_url_credentials(a))
                .collect::<Vec<_>>()
                .join(" ")
        );
        events.debug(Stage::Build, format!("$ {shown}"));
        let out = self
            .command(argv, home, cwd)?
            .output()
            .await
            .map_err(|e| format!("cannot run {:?}: {e}; set images.pip to a working pip (e.g. [\"python3\", \"-m\", \"pip\"])", self.command[0]))?;
        let text = redact_text(&format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            events.debug(Stage::Build, format!("pip: {line}"));
        }
        if out.status.success() {
            Ok(())
        } else {
            Err(text)
        }
    }
}

const COMPLETE: &str = ".iac-complete";

/// Every `scheme://user:pass@` in `text` with the userinfo replaced by `***`.
fn redact_text(text: &str) -> String {
    text.split_inclusive(char::is_whitespace)
        .map(|w| {
            let trimmed = w.trim_end();
            let tail = &w[trimmed.len()..];
            // Quotes and brackets around URLs in pip's messages.
            let start = trimmed
                .find(|c: char| c.is_ascii_alphanumeric())
                .unwrap_or(0);
            format!(
                "{}{}{tail}",
                &trimmed[..start],
                redact_url_credentials(&trimmed[start..])
            )
        })
        .collect()
}

/// A download failure for the deploy report: what is missing and what to do, from pip's
/// `ERROR:` lines only (never its whole output).
fn download_error(what: &str, python: (u32, u32), output: &str) -> String {
    let py = format!("CPython {}.{}", python.0, python.1);
    let missing: Vec<String> = output
        .lines()
        .filter_map(|l| {
            l.split_once("No matching distribution found for ")
                .map(|(_, rest)| rest.trim().to_string())
        })
        .collect();
    let errors: Vec<&str> = output
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("ERROR:"))
        .take(5)
        .collect();
    let mut msg = if missing.is_empty() {
        format!("downloading {what} on the host (binary wheels for {py} manylinux x86_64) failed")
    } else {
        format!(
            "{what}: no binary wheel of {} for {py} manylinux x86_64 on the configured index. iac downloads only wheels on the host (fetching an sdist runs its code); use a version that ships wheels, give the operator's index or a --find-links wheelhouse one (images.pip_args), or vendor the package in the repository",
            missing.join(", ")
        )
    };
    if !errors.is_empty() {
        msg.push_str("\npip said:\n");
        msg.push_str(&errors.join("\n"));
    }
    msg
}

fn path_arg(p: &Path) -> String {
    p.display().to_string()
}

/// The last `n` non-empty lines of `text`.
pub(crate) fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, rel: &str, text: &str) {
        let p = dir.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }

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
    fn plan_reads_requirements_includes_and_static_pyproject() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        write(
            r,
            "requirements.txt",
            "--prefer-binary\nidna==3.7\n-r req/base.txt\n-c req/cons.txt\n-e ./libs/util\n",
        );
        write(r, "req/base.txt", "six\n-r ../req/extra.txt\n");
        write(r, "req/extra.txt", "packaging>=23\n");
        write(r, "req/cons.txt", "six<2\n");
        write(
            r,
            "libs/util/pyproject.toml",
            "[project]\nname='util'\nversion='1'\ndependencies=['attrs']\n[build-system]\nrequires=['hatchling>=1.20']\nbuild-backend='hatchling.build'\n",
        );
        write(
            r,
            "pyproject.toml",
            "[project]\nname='app'\nversion='1'\ndynamic=['dependencies']\ndependencies=['never-read']\n",
        );
        let deps = AppDeps::detect(r).unwrap();
        let plan = DepPlan::from_tree(r, &deps).unwrap();
        assert_eq!(
            plan.requirements,
            [
                "--prefer-binary",
                "idna==3.7",
                "six",
                "packaging>=23",
                "attrs"
            ]
        );
        assert_eq!(plan.constraints, ["six<2"]);
        assert_eq!(plan.local, ["-e ./libs/util", "."]);
        assert_eq!(plan.build, ["setuptools", "wheel", "hatchling>=1.20"]);
        // Nothing builds in the image → no build requirements.
        std::fs::remove_file(r.join("pyproject.toml")).unwrap();
        write(r, "requirements.txt", "idna\n");
        let plan = DepPlan::from_tree(r, &AppDeps::detect(r).unwrap()).unwrap();
        assert_eq!(plan.requirements, ["idna"]);
        assert!(plan.build.is_empty() && plan.local.is_empty());
    }

    #[test]
    fn plan_refuses_with_file_and_line() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        let outside = tempfile::tempdir().unwrap();
        write(outside.path(), "evil.txt", "six\n");
        std::os::unix::fs::symlink(outside.path(), r.join("escape")).unwrap();
        let cases: Vec<(&str, &str, &str)> = vec![
            (
                "six\n--extra-index-url https://x/simple\n",
                "requirements.txt:2",
                "--extra-index-url",
            ),
            ("-r /etc/passwd\n", "requirements.txt:1", "absolute"),
            (
                "-r escape/evil.txt\n",
                "requirements.txt:1",
                "outside the repository",
            ),
            (
                "-e escape\n",
                "requirements.txt:1",
                "outside the repository",
            ),
            ("-r nested.txt\n", "nested.txt:2", "--trusted-host"),
            ("-r loop.txt\n", "loop.txt:1", "more than once"),
            ("-c c2.txt\n", "c2.txt:1", "constraints file"),
            ("./missing\n", "requirements.txt:1", "missing"),
        ];
        write(r, "nested.txt", "idna\n--trusted-host evil\n");
        write(r, "loop.txt", "-r loop.txt\n");
        write(r, "c2.txt", "./libs\n");
        std::fs::create_dir_all(r.join("libs")).unwrap();
        for (text, at, needle) in cases {
            write(r, "requirements.txt", text);
            let err = DepPlan::from_tree(r, &AppDeps::detect(r).unwrap()).unwrap_err();
            assert!(err.contains(at) && err.contains(needle), "{text:?}: {err}");
        }
        // A symlinked requirements.txt pointing out of the tree.
        std::fs::remove_file(r.join("requirements.txt")).unwrap();
        std::os::unix::fs::symlink(outside.path().join("evil.txt"), r.join("requirements.txt"))
            .unwrap();
        let err = DepPlan::from_tree(r, &AppDeps::detect(r).unwrap()).unwrap_err();
        assert!(err.contains("outside the repository"), "{err}");
        // pyproject dependencies go through the same filter.
        std::fs::remove_file(r.join("requirements.txt")).unwrap();
        write(
            r,
            "pyproject.toml",
            "[project]\nname='a'\nversion='1'\ndependencies=['x @ https://evil.example/x.whl']\n",
        );
        let err = DepPlan::from_tree(r, &AppDeps::detect(r).unwrap()).unwrap_err();
        assert!(
            err.contains("pyproject.toml") && err.contains("direct URL"),
            "{err}"
        );
    }

    /// The attack: host pip inherits iac's environment (SUPABASE_SERVICE_ROLE_KEY…) and runs in
    /// the repo, where `python -m pip` imports a repo's `pip/` package. Here "pip" is a shell
    /// that records its environment and working directory.
    #[tokio::test]
    async fn host_pip_gets_a_scrubbed_environment_and_an_empty_cwd() {
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("src");
        write(&src, "requirements.txt", "idna\n");
        write(&src, "pip/__main__.py", "open('/tmp/pwned','w')\n");
        let record = d.path().join("record");
        let pip = HostPip {
            command: vec![
                "/bin/sh".into(),
                "-c".into(),
                format!(
                    "env > {0}/env.txt; pwd > {0}/cwd.txt; ls -A > {0}/ls.txt; exit 1",
                    record.display()
                ),
                "sh".into(),
            ],
            args: vec![],
            index_url: Some("https://op:s3cret@mirror.example/simple".into()),
            extra_index_urls: vec!["https://extra.example/simple".into()],
            pass_env: vec![],
            find_links: vec![],
            cache_dir: d.path().join("cache"),
            python: (3, 11),
        };
        std::fs::create_dir_all(&record).unwrap();
        let err = pip
            .prepare(
                "svc",
                &src,
                &AppDeps::detect(&src).unwrap(),
                &Events::discard(),
            )
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("svc"), "{err}");
        let env = std::fs::read_to_string(record.join("env.txt")).unwrap();
        let names: BTreeSet<&str> = env
            .lines()
            .filter_map(|l| l.split_once('=').map(|(k, _)| k))
            .collect();
        let allowed: BTreeSet<&str> = PIP_ENV_PASSTHROUGH
            .iter()
            .copied()
            .chain([
                "HOME",
                "PIP_DISABLE_PIP_VERSION_CHECK",
                "PIP_NO_INPUT",
                "PYTHONNOUSERSITE",
                "PYTHONSAFEPATH",
                "LC_ALL",
                "PIP_INDEX_URL",
                "PIP_EXTRA_INDEX_URL",
                // Set by the shell itself.
                "PWD",
                "SHLVL",
                "_",
                "OLDPWD",
            ])
            .collect();
        let extra: Vec<&&str> = names.difference(&allowed).collect();
        assert!(extra.is_empty(), "variables leaked to host pip: {extra:?}");
        // The test process has CARGO_* variables and a real HOME; none of it reaches pip.
        assert!(std::env::vars().any(|(k, _)| k.starts_with("CARGO")));
        let home = env.lines().find_map(|l| l.strip_prefix("HOME=")).unwrap();
        assert!(
            home.starts_with(&d.path().join("cache").display().to_string()),
            "{home}"
        );
        assert!(env.contains("PIP_INDEX_URL=https://op:s3cret@mirror.example/simple"));
        assert!(env.contains("PIP_EXTRA_INDEX_URL=https://extra.example/simple"));
        let cwd = std::fs::read_to_string(record.join("cwd.txt")).unwrap();
        assert!(!cwd.trim().starts_with(&src.display().to_string()), "{cwd}");
        assert_eq!(
            std::fs::read_to_string(record.join("ls.txt")).unwrap(),
            "",
            "an empty working directory"
        );
    }

    #[test]
    fn download_errors_name_the_package_and_redact_credentials() {
        let out = redact_text(
            "Looking in indexes: https://op:s3cret@mirror.example/simple\nERROR: Could not find a version that satisfies the requirement sdistonly==1.0 (from versions: none)\nERROR: No matching distribution found for sdistonly==1.0\n",
        );
        assert!(!out.contains("s3cret"), "{out}");
        let msg = download_error("the app's dependencies", (3, 11), &out);
        assert!(
            msg.contains("sdistonly==1.0") && msg.contains("no binary wheel"),
            "{msg}"
        );
        assert!(
            !msg.contains("Looking in indexes"),
            "only pip's ERROR lines: {msg}"
        );
        assert_eq!(
            redact_text("x 'https://a:b@h/p' y\n"),
            "x 'https://***@h/p' y\n"
        );
    }

    #[test]
    fn cache_key_depends_on_the_plan_and_the_index() {
        let pip = HostPip {
            command: vec!["python3".into(), "-m".into(), "pip".into()],
            args: vec![],
            index_url: None,
            extra_index_urls: vec![],
            pass_env: vec![],
            find_links: vec![],
            cache_dir: PathBuf::from("/nonexistent"),
            python: (3, 11),
        };
        let plan = DepPlan {
            requirements: vec!["six".into()],
            ..DepPlan::default()
        };
        let a = pip.cache_key(&plan);
        assert_eq!(a, pip.cache_key(&plan.clone()));
        let mut other = plan.clone();
        other.requirements = vec!["six==1.16".into()];
        assert_ne!(a, pip.cache_key(&other));
        let mut moved = plan.clone();
        moved.local = vec!["six".into()];
        moved.requirements.clear();
        assert_ne!(a, pip.cache_key(&moved), "the list a line is in counts");
        let other_index = HostPip {
            index_url: Some("http://mirror/simple".into()),
            ..pip.clone()
        };
        assert_ne!(a, other_index.cache_key(&plan));
        let other_python = HostPip {
            python: (3, 14),
            ..pip.clone()
        };
        assert_ne!(
            a,
            other_python.cache_key(&plan),
            "wheels for another interpreter are another download"
        );
    }

    #[test]
    fn pip_target_names_the_interpreter_and_the_platforms_its_base_runs() {
        let t311 = pip_target((3, 11));
        // Exactly PIP_TARGET of scripts/bootstrap-images.sh (its wheelhouse stamp hashes it).
        let script = include_str!("../../../../scripts/bootstrap-images.sh");
        let line = script
            .lines()
            .skip_while(|l| !l.starts_with("PIP_TARGET_311=("))
            .take_while(|l| !l.trim_end().ends_with(')'))
            .chain(
                script
                    .lines()
                    .skip_while(|l| !l.starts_with("PIP_TARGET_311=("))
                    .find(|l| l.trim_end().ends_with(')')),
            )
            .collect::<Vec<_>>()
            .join(" ");
        let words: Vec<&str> = line
            .trim_start_matches("PIP_TARGET_311=(")
            .trim_end()
            .trim_end_matches(')')
            .split_whitespace()
            .collect();
        assert_eq!(
            words, t311,
            "keep wheels.rs and bootstrap-images.sh in sync"
        );
        let w = |v: &[String], flag: &str| {
            v.windows(2)
                .filter(|p| p[0] == flag)
                .map(|p| p[1].clone())
                .collect::<Vec<_>>()
        };
        assert_eq!(w(&t311, "--python-version"), ["3.11"]);
        assert_eq!(w(&t311, "--abi"), ["cp311"]);
        assert_eq!(w(&t311, "--platform")[0], "manylinux_2_36_x86_64");
        let t314 = pip_target((3, 14));
        assert_eq!(w(&t314, "--python-version"), ["3.14"]);
        assert_eq!(w(&t314, "--abi"), ["cp314"]);
        let plats = w(&t314, "--platform");
        assert_eq!(plats[0], "manylinux_2_41_x86_64");
        assert!(plats.contains(&"manylinux_2_36_x86_64".to_string()));
        assert_eq!(plats.last().unwrap(), "linux_x86_64");
        assert!(t314.contains(&"--only-binary=:all:".to_string()));
    }
}
