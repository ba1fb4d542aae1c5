//! What an app's dependencies are, read from its tree without running it (pure apart from reading
//! files): the install plan the confined resolver ([`super::resolver`]) and the image build act on,
//! made the way a person would make it.
//!
//! - [`AppDeps::detect`]: where the dependencies come from — the first that exists of a lock
//!   (`uv.lock`, `poetry.lock`, `pdm.lock`, `Pipfile.lock`, see [`super::lockfile`]), a
//!   requirements file ([`REQUIREMENT_FILES`]), pyproject.toml `[project] dependencies` or
//!   `[tool.poetry.dependencies]`, a Pipfile's `[packages]` ([`DepSource`]) — and whether the
//!   project itself is installed ([`super::project::decide`]: not for a virtual project, yes with
//!   a build backend or when the start command is one of its console scripts).
//! - [`DepPlan::from_tree`]: what to resolve and what to build: requirements (each with the file it
//!   came from), the lock that pins them, what was left out (markers false on the image's CPython,
//!   dev groups, extras not asked for), sdists to build; `requirements.txt` lines go through the
//!   parser in [`super::requirements`], which regenerates every requirement from its PEP 508 parse
//!   and refuses option lines, naming the file and line; plus `[build-system] requires` and
//!   `setuptools`/`wheel`, the default build backend, whenever something builds in the image.
//! - [`pip_target`]: pip's flags for binary wheels of another interpreter, which bootstrap uses for
//!   the OpenTelemetry wheelhouse (a fixed, operator-chosen list; never a repo's input).
//!
//! No pip runs on the host for an app: repo-influenced input reaches pip only inside the resolver
//! container.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use iac_core::BuildError;

use iac_core::Entry;

use super::declared::{Declared, normalize, pipfile_table, poetry_table};
use super::lockfile::{self, LockKind, Selection};
use super::requirements::{IndexReq, Line, classify, classify_dependency, parse};

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

/// Requirement files read when there is no lock, the first that exists (production sets first
/// when a repo splits them).
pub const REQUIREMENT_FILES: &[&str] = &[
    "requirements.txt",
    "requirements/production.txt",
    "requirements/prod.txt",
    "requirements/base.txt",
    "requirements-prod.txt",
    "requirements-production.txt",
];

/// Where an app's dependencies are read from: the first that exists, in this order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DepSource {
    /// Nothing to install besides the project (if it is a package).
    None,
    /// A lock file at the root: its pinned main dependency set.
    Lock(LockKind),
    /// A requirements file (tree-relative path, one of [`REQUIREMENT_FILES`]).
    Requirements(String),
    /// pyproject.toml `[project] dependencies`.
    Project,
    /// pyproject.toml `[tool.poetry.dependencies]`, constraints converted to PEP 440.
    Poetry,
    /// A Pipfile's `[packages]`.
    Pipfile,
}

impl DepSource {
    /// The file (and table) it names, for people.
    pub fn describe(&self) -> String {
        match self {
            DepSource::None => "nothing".into(),
            DepSource::Lock(k) => k.file_name().into(),
            DepSource::Requirements(f) => f.clone(),
            DepSource::Project => "pyproject.toml [project] dependencies".into(),
            DepSource::Poetry => "pyproject.toml [tool.poetry.dependencies]".into(),
            DepSource::Pipfile => "Pipfile [packages]".into(),
        }
    }
}

/// What an app needs installed besides its files, decided per repo the way a person would.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppDeps {
    /// Where the dependencies come from.
    pub source: DepSource,
    /// Dependency files present but not read, each with why (`requirements.txt: uv.lock comes
    /// first`).
    pub ignored: Vec<String>,
    /// The project itself is built and installed inside the image ([`super::project::decide`],
    /// or its start command is one of its console scripts).
    pub package: bool,
    /// Why (or why not) the project itself is installed.
    pub package_why: String,
    /// Extras and dependency groups the repos file asks for.
    pub selection: Selection,
}

impl AppDeps {
    /// Nothing to install (not a Python app).
    pub fn none() -> AppDeps {
        AppDeps {
            source: DepSource::None,
            ignored: Vec::new(),
            package: false,
            package_why: String::new(),
            selection: Selection::default(),
        }
    }

    /// Looks at the root of a source tree. `entry` is the resolved start command (a console
    /// script needs the project installed); `selection` what the repos file asks for.
    pub fn detect(
        dir: &Path,
        entry: Option<&Entry>,
        selection: &Selection,
    ) -> Result<AppDeps, BuildError> {
        let pyproject_path = dir.join("pyproject.toml");
        let doc = if pyproject_path.is_file() {
            Some(read_pyproject(&pyproject_path)?)
        } else {
            None
        };
        let mut found: Vec<DepSource> = Vec::new();
        for k in LockKind::ALL {
            if dir.join(k.file_name()).is_file() {
                found.push(DepSource::Lock(k));
            }
        }
        if let Some(f) = REQUIREMENT_FILES.iter().find(|f| dir.join(f).is_file()) {
            found.push(DepSource::Requirements(f.to_string()));
        }
        if let Some(d) = &doc {
            let project = d.get("project").and_then(|p| p.as_table());
            let dynamic = project
                .and_then(|p| p.get("dynamic"))
                .and_then(|v| v.as_array())
                .is_some_and(|a| a.iter().any(|x| x.as_str() == Some("dependencies")));
            if project.is_some_and(|p| p.contains_key("dependencies")) && !dynamic {
                found.push(DepSource::Project);
            } else if d
                .get("tool")
                .and_then(|t| t.get("poetry"))
                .and_then(|p| p.get("dependencies"))
                .is_some()
            {
                found.push(DepSource::Poetry);
            }
        }
        if dir.join("Pipfile").is_file() {
            found.push(DepSource::Pipfile);
        }
        let source = found.first().cloned().unwrap_or(DepSource::None);
        let ignored = found
            .iter()
            .skip(1)
            .map(|f| {
                format!(
                    "{}: not read, {} comes first",
                    f.describe(),
                    source.describe()
                )
            })
            .collect();
        let mut install = super::project::decide(doc.as_ref(), dir.join("setup.py").is_file());
        if !install.package
            && let Some(why) =
                entry.and_then(|e| super::project::entry_needs_install(e, doc.as_ref()))
        {
            install = super::project::Install {
                package: true,
                why: format!("{why} (although {})", install.why),
            };
        }
        Ok(AppDeps {
            source,
            ignored,
            package: install.package,
            package_why: install.why,
            selection: selection.clone(),
        })
    }

    /// Whether the context carries `wheels/app/`.
    pub fn needed(&self) -> bool {
        self.source != DepSource::None || self.package
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
    /// Where each of [`Self::requirements`] was read, same order (`requirements.txt:3`,
    /// `uv.lock (via fastapi)`, `pyproject.toml [project] dependencies`).
    pub sources: Vec<String>,
    /// Constraints by name.
    pub constraints: Vec<IndexReq>,
    /// Lines pip installs inside the image from `/app` (the app package is `.`).
    pub local: Vec<String>,
    /// Build requirements fetched for the in-image builds (empty when nothing builds).
    pub build: Vec<String>,
    /// Requirements left out, with where they were read and why: markers false on the image's
    /// Python (`requirements.txt:3: black==25.1 ; python_version < '3.10'`), dev groups, extras.
    pub skipped: Vec<String>,
    /// The lock file that pins the versions, if any.
    pub pinned_by: Option<String>,
    /// `name version` of locked packages with no wheel for the image: built from source in the
    /// resolver container.
    pub sdists: Vec<String>,
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
        let doc = match root.join("pyproject.toml").is_file() {
            true => Some(read_pyproject(&root.join("pyproject.toml")).map_err(|e| e.to_string())?),
            false => None,
        };
        let asked = deps
            .selection
            .extras
            .iter()
            .map(|e| format!("extra {e:?}"))
            .chain(deps.selection.groups.iter().map(|g| format!("group {g:?}")))
            .collect::<Vec<_>>();
        if matches!(deps.source, DepSource::None | DepSource::Requirements(_)) && !asked.is_empty()
        {
            return Err(format!(
                "the repos file asks for {}, but the dependencies come from {}, which has no extras or groups",
                asked.join(", "),
                deps.source.describe()
            ));
        }
        match &deps.source {
            DepSource::None => {}
            DepSource::Lock(kind) => {
                walk.inside(kind.file_name(), "lock file")?;
                let locked = lockfile::read(*kind, &root, doc.as_ref(), python, &deps.selection)?;
                for (pin, from) in locked.pins {
                    let req = classify_dependency(&pin)
                        .map_err(|why| format!("{}: {pin}: {why}", kind.file_name()))?;
                    walk.plan.requirements.push(req);
                    walk.plan.sources.push(from);
                }
                for local in locked.local {
                    walk.local_line(&local, kind.file_name())?;
                }
                walk.plan.skipped.extend(locked.skipped);
                walk.plan.sdists = locked.sdists;
                walk.plan.pinned_by = Some(kind.file_name().to_string());
            }
            DepSource::Requirements(file) => walk.file(file, false, 0, None)?,
            DepSource::Project => walk.project_deps(doc.as_ref(), &deps.selection)?,
            DepSource::Poetry => walk.poetry_deps(doc.as_ref(), &deps.selection)?,
            DepSource::Pipfile => walk.pipfile_deps(&deps.selection)?,
        }
        if deps.package {
            walk.plan.local.push(".".into());
            // pip installing the project needs its declared dependencies; a lock pins them.
            let declared = !matches!(
                &deps.source,
                DepSource::Lock(_) | DepSource::Project | DepSource::Poetry
            );
            walk.project(".", "the app's pyproject.toml", declared)?;
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
                        self.project(&path, &format!("{path}/pyproject.toml (from {here})"), true)?;
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
            self.plan.sources.push(here.to_string());
        }
    }

    /// A local project line (`./libs/x`, `-e ./libs/x`) read from `from`: checked to stay in the
    /// tree, then installed inside the image (its own build requirements fetched).
    fn local_line(&mut self, line: &str, from: &str) -> Result<(), String> {
        match classify(line, "").map_err(|why| format!("{from}: {line}: {why}"))? {
            Line::Local { text, path, .. } => {
                let on_disk = self
                    .inside(&path, "local requirement")
                    .map_err(|e| format!("{from}: {e}"))?;
                if !self.plan.local.contains(&text) {
                    self.plan.local.push(text);
                }
                if on_disk.is_dir() {
                    self.project(&path, &format!("{path}/pyproject.toml (from {from})"), true)?;
                }
                Ok(())
            }
            _ => Err(format!("{from}: {line}: expected a path in the repository")),
        }
    }

    /// One declared dependency read from `what`: a local path or a requirement from the index.
    fn declared(&mut self, d: &Declared, what: &str) -> Result<(), String> {
        if d.local {
            return self.local_line(&d.requirement, what);
        }
        let req = classify_dependency(&d.requirement).map_err(|why| format!("{what}: {why}"))?;
        self.add(req, false, what);
        Ok(())
    }

    /// `[project] dependencies`, plus the optional dependencies of the extras and the PEP 735
    /// `[dependency-groups]` the selection asks for.
    fn project_deps(&mut self, doc: Option<&toml::Table>, sel: &Selection) -> Result<(), String> {
        let Some(doc) = doc else { return Ok(()) };
        let project = doc.get("project").and_then(|p| p.as_table());
        let mut lists: Vec<(String, Option<&toml::Value>)> = vec![(
            "pyproject.toml [project] dependencies".into(),
            project.and_then(|p| p.get("dependencies")),
        )];
        let optional = project
            .and_then(|p| p.get("optional-dependencies"))
            .and_then(|o| o.as_table());
        let groups = doc.get("dependency-groups").and_then(|g| g.as_table());
        for (asked, table, kind, key) in [
            (
                &sel.extras,
                optional,
                "extra",
                "[project.optional-dependencies]",
            ),
            (
                &sel.groups,
                groups,
                "dependency group",
                "[dependency-groups]",
            ),
        ] {
            let mut have: Vec<(String, &toml::Value)> = table
                .map(|t| t.iter().map(|(k, v)| (normalize(k), v)).collect())
                .unwrap_or_default();
            for a in asked {
                let Some(i) = have.iter().position(|(k, _)| k == a) else {
                    return Err(format!(
                        "the repos file asks for {kind} {a:?}, which pyproject.toml {key} does not declare"
                    ));
                };
                let (k, v) = have.remove(i);
                lists.push((format!("pyproject.toml {key} {k}"), Some(v)));
            }
            for (k, _) in have {
                self.plan.skipped.push(format!(
                    "pyproject.toml {key} {k}: {kind} left out; the repos file can ask for it"
                ));
            }
        }
        for (what, list) in lists {
            let Some(list) = list else { continue };
            let items = list
                .as_array()
                .ok_or_else(|| format!("{what} must be a list of strings"))?;
            for item in items {
                let Some(dep) = item.as_str() else {
                    // PEP 735 `{include-group = ...}`: not followed.
                    continue;
                };
                let req = classify_dependency(dep).map_err(|why| format!("{what}: {why}"))?;
                self.add(req, false, &what);
            }
        }
        Ok(())
    }

    /// `[tool.poetry.dependencies]` (optional ones only through `[tool.poetry.extras]` the
    /// selection asks for) and the groups asked for.
    fn poetry_deps(&mut self, doc: Option<&toml::Table>, sel: &Selection) -> Result<(), String> {
        let Some(poetry) = doc
            .and_then(|d| d.get("tool"))
            .and_then(|t| t.get("poetry"))
            .and_then(|p| p.as_table())
        else {
            return Ok(());
        };
        let what = "pyproject.toml [tool.poetry.dependencies]";
        let table = poetry
            .get("dependencies")
            .and_then(|d| d.as_table())
            .ok_or_else(|| format!("{what} must be a table"))?;
        let extras = poetry.get("extras").and_then(|e| e.as_table());
        let mut wanted: BTreeSet<String> = BTreeSet::new();
        for a in &sel.extras {
            let names = extras
                .and_then(|e| e.iter().find(|(k, _)| normalize(k) == *a))
                .map(|(_, v)| v)
                .and_then(|v| v.as_array())
                .ok_or_else(|| {
                    format!("the repos file asks for extra {a:?}, which pyproject.toml [tool.poetry.extras] does not declare")
                })?;
            wanted.extend(names.iter().filter_map(|n| n.as_str()).map(normalize));
        }
        for d in poetry_table(table, what)? {
            let name = normalize(
                d.requirement
                    .split(|c: char| !(c.is_ascii_alphanumeric() || "-_.".contains(c)))
                    .next()
                    .unwrap_or(""),
            );
            if d.optional && !wanted.contains(&name) {
                self.plan.skipped.push(format!(
                    "{what}: {} is optional (an extra); the repos file can ask for its extra",
                    d.requirement
                ));
                continue;
            }
            self.declared(&d, what)?;
        }
        let groups = poetry.get("group").and_then(|g| g.as_table());
        let mut names: Vec<String> = groups
            .map(|g| g.keys().cloned().collect())
            .unwrap_or_default();
        if poetry.contains_key("dev-dependencies") {
            names.push("dev".into());
        }
        for g in &sel.groups {
            if !names.iter().any(|n| normalize(n) == *g) {
                return Err(format!(
                    "the repos file asks for dependency group {g:?}, which pyproject.toml [tool.poetry.group] does not declare"
                ));
            }
        }
        for n in names {
            let table = groups
                .and_then(|t| t.get(&n))
                .and_then(|t| t.get("dependencies"))
                .or_else(|| {
                    (n == "dev")
                        .then(|| poetry.get("dev-dependencies"))
                        .flatten()
                })
                .and_then(|t| t.as_table());
            let what = format!("pyproject.toml [tool.poetry.group.{n}.dependencies]");
            if !sel.groups.contains(&normalize(&n)) {
                self.plan.skipped.push(format!(
                    "{what}: dependency group {n} left out; the repos file can ask for it"
                ));
                continue;
            }
            if let Some(t) = table {
                for d in poetry_table(t, &what)? {
                    self.declared(&d, &what)?;
                }
            }
        }
        Ok(())
    }

    /// A Pipfile's `[packages]` (and `[dev-packages]` when the `dev` group is asked for).
    fn pipfile_deps(&mut self, sel: &Selection) -> Result<(), String> {
        let path = self.inside("Pipfile", "Pipfile")?;
        let meta = std::fs::metadata(&path).map_err(|e| format!("Pipfile: {e}"))?;
        if meta.len() > MAX_REQUIREMENT_FILE_BYTES {
            return Err(format!(
                "Pipfile: expected at most {MAX_REQUIREMENT_FILE_BYTES} bytes"
            ));
        }
        let text = std::fs::read_to_string(&path).map_err(|e| format!("Pipfile: {e}"))?;
        let doc: toml::Table =
            toml::from_str(&text).map_err(|e| format!("Pipfile: not valid TOML ({e})"))?;
        for g in &sel.groups {
            if g != "dev" {
                return Err(format!(
                    "the repos file asks for dependency group {g:?}; a Pipfile has only `dev` ([dev-packages])"
                ));
            }
        }
        let mut sections = vec![("packages", "Pipfile [packages]")];
        if sel.groups.iter().any(|g| g == "dev") {
            sections.push(("dev-packages", "Pipfile [dev-packages]"));
        } else if doc
            .get("dev-packages")
            .and_then(|d| d.as_table())
            .is_some_and(|d| !d.is_empty())
        {
            self.plan.skipped.push(
                "Pipfile [dev-packages]: left out; the repos file can ask for group dev".into(),
            );
        }
        for (key, what) in sections {
            let Some(table) = doc.get(key) else { continue };
            let table = table
                .as_table()
                .ok_or_else(|| format!("{what} must be a table"))?;
            for d in pipfile_table(table, what)? {
                self.declared(&d, what)?;
            }
        }
        Ok(())
    }

    /// Static dependencies and build requirements of the project at tree-relative `dir`.
    fn project(&mut self, dir: &str, what: &str, declared: bool) -> Result<(), String> {
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
        if let Some(project) = doc.get("project").and_then(|p| p.as_table())
            && declared
        {
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

    fn detect(dir: &Path) -> AppDeps {
        AppDeps::detect(dir, None, &Selection::default()).unwrap()
    }

    fn write(dir: &Path, rel: &str, text: &str) {
        let p = dir.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }

    #[test]
    fn detect_reads_requirements_and_package_markers() {
        let d = tempfile::tempdir().unwrap();
        assert!(!detect(d.path()).needed(), "bare main.py needs nothing");
        std::fs::write(
            d.path().join("pyproject.toml"),
            "[tool.black]\nline-length = 100\n",
        )
        .unwrap();
        assert!(
            !detect(d.path()).package,
            "tool config only is not a package"
        );
        std::fs::write(
            d.path().join("pyproject.toml"),
            "[project]\nname = \"x\"\n[build-system]\nrequires = [\"setuptools\"]\n",
        )
        .unwrap();
        assert!(detect(d.path()).package);
        std::fs::write(d.path().join("requirements.txt"), "six\n").unwrap();
        let deps = detect(d.path());
        assert_eq!(
            deps.source,
            DepSource::Requirements("requirements.txt".into())
        );
        std::fs::write(d.path().join("pyproject.toml"), "[project\n").unwrap();
        let err = AppDeps::detect(d.path(), None, &Selection::default())
            .unwrap_err()
            .to_string();
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
            "[project]\nname='app'\nversion='1'\ndynamic=['dependencies']\ndependencies=['never-read']\n[build-system]\nrequires=['setuptools']\n",
        );
        let deps = detect(r);
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
        let plan = DepPlan::from_tree(r, &detect(r), (3, 11)).unwrap();
        assert_eq!(plan.resolver_requirements(), ["idna"]);
        assert!(plan.build.is_empty() && plan.local.is_empty());
    }

    fn copy_fixture(tool: &str, to: &Path) {
        let from = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/locks")
            .join(tool);
        for e in std::fs::read_dir(from).unwrap() {
            let e = e.unwrap();
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }

    #[test]
    fn a_lock_comes_first_and_pins_every_requirement() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        copy_fixture("uv", r);
        write(r, "requirements.txt", "fastapi\n");
        write(r, "app.py", "");
        let deps = detect(r);
        assert_eq!(deps.source, DepSource::Lock(LockKind::Uv));
        assert_eq!(
            deps.ignored,
            [
                "requirements.txt: not read, uv.lock comes first",
                "pyproject.toml [project] dependencies: not read, uv.lock comes first"
            ]
        );
        assert!(
            !deps.package,
            "[project] without [build-system]: {}",
            deps.package_why
        );
        assert!(
            deps.package_why.contains("virtual project"),
            "{}",
            deps.package_why
        );
        let plan = DepPlan::from_tree(r, &deps, (3, 11)).unwrap();
        assert_eq!(plan.pinned_by.as_deref(), Some("uv.lock"));
        assert_eq!(plan.requirements.len(), plan.sources.len());
        assert!(
            plan.requirements
                .iter()
                .all(|q| q.requirement.contains("=="))
        );
        let i = plan
            .requirements
            .iter()
            .position(|q| q.requirement == "fastapi==0.115.12")
            .unwrap();
        assert_eq!(plan.sources[i], "uv.lock (via the project)");
        assert!(
            plan.local.is_empty() && plan.build.is_empty(),
            "a virtual project is not built"
        );
        assert_eq!(plan.sdists, ["uvloop 0.21.0"]);
        // The repos file asks for the dev group: pytest and ruff come in.
        let dev = AppDeps::detect(
            r,
            None,
            &Selection {
                extras: vec![],
                groups: vec!["dev".into()],
            },
        )
        .unwrap();
        let plan = DepPlan::from_tree(r, &dev, (3, 11)).unwrap();
        assert!(
            plan.requirements
                .iter()
                .any(|q| q.requirement == "pytest==8.3.5")
        );
    }

    #[test]
    fn a_virtual_project_installs_its_dependencies_and_a_console_script_installs_it() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        write(
            r,
            "pyproject.toml",
            "[project]\nname='site'\nversion='1'\ndependencies=['django>=5']\n[project.optional-dependencies]\nredis=['redis']\n[dependency-groups]\ndev=['pytest']\n[project.scripts]\nsite='site.cli:main'\n",
        );
        let deps = detect(r);
        assert_eq!(deps.source, DepSource::Project);
        assert!(!deps.package);
        let plan = DepPlan::from_tree(r, &deps, (3, 11)).unwrap();
        assert_eq!(plan.resolver_requirements(), ["django>=5"]);
        assert_eq!(plan.sources, ["pyproject.toml [project] dependencies"]);
        assert!(plan.local.is_empty());
        assert_eq!(
            plan.skipped,
            [
                "pyproject.toml [project.optional-dependencies] redis: extra left out; the repos file can ask for it",
                "pyproject.toml [dependency-groups] dev: dependency group left out; the repos file can ask for it",
            ]
        );
        // Its start command is the console script: the project is installed for it.
        let entry = Entry {
            rule: "project.scripts".into(),
            argv: vec!["python".into(), "-c".into(), "x".into()],
            ..Entry::default()
        };
        let deps = AppDeps::detect(r, Some(&entry), &Selection::default()).unwrap();
        assert!(deps.package, "{}", deps.package_why);
        assert!(
            deps.package_why.contains("console script"),
            "{}",
            deps.package_why
        );
        let plan = DepPlan::from_tree(r, &deps, (3, 11)).unwrap();
        assert_eq!(plan.local, ["."]);
        assert_eq!(
            plan.resolver_requirements(),
            ["django>=5"],
            "not read twice"
        );
        // Extras and groups the repos file asks for; one it names wrongly is an error.
        let sel = Selection {
            extras: vec!["redis".into()],
            groups: vec!["dev".into()],
        };
        let deps = AppDeps::detect(r, None, &sel).unwrap();
        let plan = DepPlan::from_tree(r, &deps, (3, 11)).unwrap();
        assert_eq!(
            plan.resolver_requirements(),
            ["django>=5", "redis", "pytest"]
        );
        let bad = Selection {
            extras: vec!["mysql".into()],
            groups: vec![],
        };
        let err =
            DepPlan::from_tree(r, &AppDeps::detect(r, None, &bad).unwrap(), (3, 11)).unwrap_err();
        assert!(
            err.contains("\"mysql\"") && err.contains("[project.optional-dependencies]"),
            "{err}"
        );
    }

    #[test]
    fn poetry_and_pipfile_declarations_without_a_lock() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        copy_fixture("poetry", r);
        std::fs::remove_file(r.join("poetry.lock")).unwrap();
        let deps = detect(r);
        assert_eq!(deps.source, DepSource::Poetry);
        assert!(!deps.package, "package-mode = false: {}", deps.package_why);
        let plan = DepPlan::from_tree(r, &deps, (3, 11)).unwrap();
        assert_eq!(
            plan.resolver_requirements(),
            [
                "flask>=3.0,<4.0",
                "flask-mail>=0.9.1,<0.10.0",
                "gunicorn>=22.0,<23.0 ; sys_platform != 'win32'",
            ]
        );
        let skipped = plan.skipped.join("\n");
        assert!(skipped.contains("tomli"), "python <3.11: {skipped}");
        assert!(
            skipped.contains("psycopg2-binary") && skipped.contains("optional"),
            "{skipped}"
        );
        assert!(
            skipped.contains("dependency group dev left out"),
            "{skipped}"
        );

        let p = tempfile::tempdir().unwrap();
        let r = p.path();
        copy_fixture("pipenv", r);
        std::fs::remove_file(r.join("Pipfile.lock")).unwrap();
        let deps = detect(r);
        assert_eq!(deps.source, DepSource::Pipfile);
        let plan = DepPlan::from_tree(r, &deps, (3, 11)).unwrap();
        assert_eq!(
            plan.resolver_requirements(),
            ["django~=5.0", "gunicorn", "whitenoise"],
            "pywin32 is Windows-only"
        );
        assert!(plan.skipped.iter().any(|s| s.contains("[dev-packages]")));
        // With its lock, the lock wins.
        copy_fixture("pipenv", r);
        let deps = detect(r);
        assert_eq!(deps.source, DepSource::Lock(LockKind::Pipenv));
        assert_eq!(
            deps.ignored,
            ["Pipfile [packages]: not read, Pipfile.lock comes first"]
        );
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
        let plan = DepPlan::from_tree(r, &detect(r), (3, 11)).unwrap();
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
        let old = DepPlan::from_tree(r, &detect(r), (3, 9)).unwrap();
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
            // Issue 22: the bypass two files down, spelled through a continuation, and
            // index/build options in constraint files.
            (
                "-r deep/a.txt\n",
                "deep/b.txt:2",
                "--only-binary is not allowed",
            ),
            ("-c cons-i.txt\n", "cons-i.txt:1", "-i is not allowed"),
            (
                "-c cons-cs.txt\n",
                "cons-cs.txt:1",
                "not allowed after a requirement",
            ),
        ];
        write(r, "deep/a.txt", "-r b.txt\n");
        write(r, "deep/b.txt", "six\n--only-\\\nbinary=:none:\nidna\n");
        write(r, "cons-i.txt", "-i https://evil.example/simple\n");
        write(r, "cons-cs.txt", "six<2 --config-settings=x=y\n");
        write(r, "nested.txt", "idna\n--trusted-host evil\n");
        write(r, "loop.txt", "-r loop.txt\n");
        write(r, "c2.txt", "./libs\n");
        std::fs::create_dir_all(r.join("libs")).unwrap();
        for (text, at, needle) in cases {
            write(r, "requirements.txt", text);
            let err = DepPlan::from_tree(r, &detect(r), (3, 11)).unwrap_err();
            assert!(err.contains(at) && err.contains(needle), "{text:?}: {err}");
        }
        // A symlinked requirements.txt pointing out of the tree.
        std::fs::remove_file(r.join("requirements.txt")).unwrap();
        std::os::unix::fs::symlink(outside.path().join("evil.txt"), r.join("requirements.txt"))
            .unwrap();
        let err = DepPlan::from_tree(r, &detect(r), (3, 11)).unwrap_err();
        assert!(err.contains("outside the repository"), "{err}");
        // pyproject dependencies go through the same filter.
        std::fs::remove_file(r.join("requirements.txt")).unwrap();
        write(
            r,
            "pyproject.toml",
            "[project]\nname='a'\nversion='1'\ndependencies=['x @ https://evil.example/x.whl']\n",
        );
        let err = DepPlan::from_tree(r, &detect(r), (3, 11)).unwrap_err();
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
