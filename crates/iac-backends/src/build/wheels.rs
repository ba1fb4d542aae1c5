//! What an app's dependencies are, read from its tree without running it (pure apart from reading
//! files): the install plan the confined resolver ([`super::resolver`]) and the image build act on.
//!
//! - [`AppDeps::detect`]: does the tree need dependencies at all.
//! - [`DepPlan::from_tree`]: what to resolve and what to build, read statically from
//!   `requirements.txt` (through the parser in [`super::requirements`], which regenerates every
//!   requirement from its PEP 508 parse and refuses option lines, naming the file and line) and
//!   from `pyproject.toml` (`[project] dependencies` unless dynamic, `[build-system] requires`);
//!   plus `setuptools` and `wheel`, the default build backend, whenever something builds in the
//!   image. Requirements whose markers do not hold on the image's CPython are left out (and listed).
//! - [`pip_target`]: pip's flags for binary wheels of another interpreter, which bootstrap uses for
//!   the OpenTelemetry wheelhouse (a fixed, operator-chosen list; never a repo's input).
//!
//! No pip runs on the host for an app: repo-influenced input reaches pip only inside the resolver
//! container.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use iac_core::BuildError;

use super::requirements::{IndexReq, Line, classify_dependency, parse};

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

/// What the resolver fetches and what the image builds, read from the tree without running it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DepPlan {
    /// Global options, in iac's spelling (`--pre`, `--prefer-binary`, `--require-hashes`).
    pub options: Vec<String>,
    /// Requirements by name, for the resolver and the first image install.
    pub requirements: Vec<IndexReq>,
    /// Constraints by name.
    pub constraints: Vec<IndexReq>,
    /// Lines pip installs inside the image from `/app` (the app package is `.`).
    pub local: Vec<String>,
    /// Build requirements fetched for the in-image builds (empty when nothing builds).
    pub build: Vec<String>,
    /// Requirements left out because their markers do not hold on the image's Python, with
    /// where they were read (`requirements.txt:3: black==25.1 ; python_version < '3.10'`).
    pub skipped: Vec<String>,
}

impl DepPlan {
    /// Reads `deps` of the tree at `root` for the image's CPython `python`. Errors name the file
    /// (relative to the tree) and line.
    pub fn from_tree(root: &Path, deps: &AppDeps, python: (u32, u32)) -> Result<DepPlan, String> {
        let root = std::fs::canonicalize(root).map_err(|e| format!("{}: {e}", root.display()))?;
        let mut walk = Walk {
            root: &root,
            python,
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

    /// Whether the requirements name anything to fetch.
    pub fn downloads(&self) -> bool {
        !self.requirements.is_empty()
    }

    /// The requirements file the resolver reads: options, then each requirement with its hashes.
    pub fn resolver_requirements(&self) -> Vec<String> {
        self.options
            .iter()
            .cloned()
            .chain(self.requirements.iter().map(IndexReq::line))
            .collect()
    }

    /// The constraints file the resolver reads.
    pub fn resolver_constraints(&self) -> Vec<String> {
        self.constraints.iter().map(IndexReq::line).collect()
    }

    /// The requirements file of the offline image install ([`REQUIREMENTS_FILE`]): no hashes
    /// (a wheel the resolver built from an sdist has another hash than the sdist), and no
    /// `--require-hashes`.
    pub fn install_requirements(&self) -> Vec<String> {
        self.options
            .iter()
            .filter(|o| *o != "--require-hashes")
            .cloned()
            .chain(self.requirements.iter().map(|r| r.requirement.clone()))
            .collect()
    }

    /// The constraints file of the image installs ([`CONSTRAINTS_FILE`]), without hashes.
    pub fn install_constraints(&self) -> Vec<String> {
        self.constraints
            .iter()
            .map(|r| r.requirement.clone())
            .collect()
    }
}

struct Walk<'a> {
    root: &'a Path,
    python: (u32, u32),
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
                Line::Index(req) => self.add(req, constraint, &here),
                Line::Option(text) => {
                    if !self.plan.options.contains(&text) {
                        self.plan.options.push(text);
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

    /// A requirement (or constraint) read at `here`, unless its markers rule it out.
    fn add(&mut self, req: IndexReq, constraint: bool, here: &str) {
        if !req.applies(self.python) {
            self.plan
                .skipped
                .push(format!("{here}: {}", req.requirement));
            return;
        }
        if constraint {
            self.plan.constraints.push(req);
        } else {
            self.plan.requirements.push(req);
        }
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
                    let req = classify_dependency(&dep)
                        .map_err(|why| format!("{what}: [project] dependencies: {why}"))?;
                    self.add(req, false, &format!("{what} [project] dependencies"));
                }
            }
        }
        if let Some(bs) = doc.get("build-system").and_then(|b| b.as_table()) {
            for dep in strings(bs.get("requires"), "[build-system] requires")? {
                let req = classify_dependency(&dep)
                    .map_err(|why| format!("{what}: [build-system] requires: {why}"))?;
                if req.applies(self.python) {
                    self.build.insert(req.line());
                }
            }
        }
        Ok(())
    }
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
        let plan = DepPlan::from_tree(r, &deps, (3, 11)).unwrap();
        assert_eq!(
            plan.resolver_requirements(),
            [
                "--prefer-binary",
                "idna==3.7",
                "six",
                "packaging>=23",
                "attrs"
            ]
        );
        assert_eq!(plan.resolver_constraints(), ["six<2"]);
        assert_eq!(plan.local, ["-e ./libs/util", "."]);
        assert_eq!(plan.build, ["setuptools", "wheel", "hatchling>=1.20"]);
        // Nothing builds in the image → no build requirements.
        std::fs::remove_file(r.join("pyproject.toml")).unwrap();
        write(r, "requirements.txt", "idna\n");
        let plan = DepPlan::from_tree(r, &AppDeps::detect(r).unwrap(), (3, 11)).unwrap();
        assert_eq!(plan.resolver_requirements(), ["idna"]);
        assert!(plan.build.is_empty() && plan.local.is_empty());
    }

    #[test]
    fn markers_are_evaluated_for_the_image_python_and_hashes_stay_out_of_the_image_install() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        // An exported Poetry file: markers for other Pythons, hashes on every line.
        write(
            r,
            "requirements.txt",
            "--require-hashes\nblack==25.1.0 ; python_version < \"3.10\" --hash=sha256:aa\nidna==3.7 ; python_version >= \"3.8\" \\\n    --hash=sha256:BB\npywin32==306 ; sys_platform == \"win32\" --hash=sha256:cc\n",
        );
        let plan = DepPlan::from_tree(r, &AppDeps::detect(r).unwrap(), (3, 11)).unwrap();
        assert_eq!(
            plan.resolver_requirements(),
            [
                "--require-hashes",
                "idna==3.7 ; python_full_version >= '3.8' --hash=sha256:bb"
            ]
        );
        assert_eq!(
            plan.install_requirements(),
            ["idna==3.7 ; python_full_version >= '3.8'"],
            "the image installs wheels the resolver checked (or built): no hashes"
        );
        assert_eq!(plan.skipped.len(), 2, "{:?}", plan.skipped);
        assert!(plan.skipped[0].starts_with("requirements.txt:2: black==25.1.0"));
        // On 3.9 black applies.
        let old = DepPlan::from_tree(r, &AppDeps::detect(r).unwrap(), (3, 9)).unwrap();
        assert_eq!(old.requirements.len(), 2);
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
            let err = DepPlan::from_tree(r, &AppDeps::detect(r).unwrap(), (3, 11)).unwrap_err();
            assert!(err.contains(at) && err.contains(needle), "{text:?}: {err}");
        }
        // A symlinked requirements.txt pointing out of the tree.
        std::fs::remove_file(r.join("requirements.txt")).unwrap();
        std::os::unix::fs::symlink(outside.path().join("evil.txt"), r.join("requirements.txt"))
            .unwrap();
        let err = DepPlan::from_tree(r, &AppDeps::detect(r).unwrap(), (3, 11)).unwrap_err();
        assert!(err.contains("outside the repository"), "{err}");
        // pyproject dependencies go through the same filter.
        std::fs::remove_file(r.join("requirements.txt")).unwrap();
        write(
            r,
            "pyproject.toml",
            "[project]\nname='a'\nversion='1'\ndependencies=['x @ https://evil.example/x.whl']\n",
        );
        let err = DepPlan::from_tree(r, &AppDeps::detect(r).unwrap(), (3, 11)).unwrap_err();
        assert!(
            err.contains("pyproject.toml") && err.contains("direct URL"),
            "{err}"
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
