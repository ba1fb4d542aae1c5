//! Lock files, read the way the tool that wrote them installs: `uv.lock`, `poetry.lock`,
//! `pdm.lock` (TOML) and `Pipfile.lock` (JSON, its `default` section). Pure apart from reading
//! the lock (and being handed the parsed pyproject.toml).
//!
//! The result ([`Locked`]) is the main dependency set, every package pinned to its locked version
//! (`name==version`), walked from the project's own dependencies through the lock's dependency
//! graph with markers evaluated for the image's CPython on Linux x86_64 — what `uv export
//! --no-dev`, `poetry export` or `pdm export --prod` would hand pip. Dev and test groups and extras
//! are left out (and listed) unless the repos file asks for them ([`Selection`]). Packages a lock
//! takes from git or a URL are refused: iac installs from the operator's index only. Packages
//! whose locked files hold no wheel the image can use are listed as source builds (they are
//! built in the resolver container).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::Path;

use super::declared::{self, Edge, normalize};
use super::requirements::marker_applies;
use super::wheels::glibc_minor;

/// Largest lock file read.
const MAX_LOCK_BYTES: u64 = 32 * 1024 * 1024;

/// The lock formats, in the order they are looked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LockKind {
    /// `uv.lock`.
    Uv,
    /// `poetry.lock`.
    Poetry,
    /// `pdm.lock`.
    Pdm,
    /// `Pipfile.lock`.
    Pipenv,
}

impl LockKind {
    /// Every kind, in precedence order.
    pub const ALL: [LockKind; 4] = [
        LockKind::Uv,
        LockKind::Poetry,
        LockKind::Pdm,
        LockKind::Pipenv,
    ];

    /// The file name at the repo root.
    pub fn file_name(self) -> &'static str {
        match self {
            LockKind::Uv => "uv.lock",
            LockKind::Poetry => "poetry.lock",
            LockKind::Pdm => "pdm.lock",
            LockKind::Pipenv => "Pipfile.lock",
        }
    }
}

/// Extras and dependency groups the repos file asks for (normalized names).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selection {
    /// Extras of the project to install (`extras:` in the repos file).
    pub extras: Vec<String>,
    /// Dependency groups to install (`groups:` in the repos file).
    pub groups: Vec<String>,
}

/// The main dependency set of a lock, pinned.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Locked {
    /// `name==version` requirements with where each was reached from, e.g.
    /// (`anyio==4.9.0`, `uv.lock (via fastapi)`).
    pub pins: Vec<(String, String)>,
    /// Local projects the lock installs (tree-relative requirement lines, `./libs/x`).
    pub local: Vec<String>,
    /// What was left out and why.
    pub skipped: Vec<String>,
    /// `name version` of pinned packages whose locked files hold no wheel for the image: built
    /// from their source distribution in the resolver container.
    pub sdists: Vec<String>,
}

/// Where a locked package comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Src {
    Index,
    /// The project itself (`.`).
    Root,
    /// Another directory of the tree.
    Path(String),
    /// git, a URL, …: refused if it is part of the main set.
    Foreign(&'static str),
}

#[derive(Debug, Clone)]
struct Pkg {
    name: String,
    version: String,
    /// pdm writes one entry per extras combination of a package.
    extras: Vec<String>,
    marker: Option<String>,
    src: Src,
    deps: Vec<Edge>,
    optional: BTreeMap<String, Vec<Edge>>,
    /// uv.lock's `[package.dev-dependencies]` (dependency groups) of the package.
    groups: BTreeMap<String, Vec<Edge>>,
    /// File names the lock lists (wheels and sdists); empty when it does not say.
    files: Vec<String>,
}

/// Where the walk starts.
struct Roots {
    main: Vec<Edge>,
    optional: BTreeMap<String, Vec<Edge>>,
    groups: BTreeMap<String, Vec<Edge>>,
}

/// Reads the lock of `kind` at the root of `root`. `pyproject` is the parsed root pyproject.toml
/// (poetry and pdm locks start from its dependencies).
pub fn read(
    kind: LockKind,
    root: &Path,
    pyproject: Option<&toml::Table>,
    python: (u32, u32),
    sel: &Selection,
) -> Result<Locked, String> {
    let file = kind.file_name();
    let path = root.join(file);
    let meta = std::fs::metadata(&path).map_err(|e| format!("{file}: {e}"))?;
    if !meta.is_file() || meta.len() > MAX_LOCK_BYTES {
        return Err(format!(
            "{file}: expected a lock file of at most {MAX_LOCK_BYTES} bytes"
        ));
    }
    let text = std::fs::read_to_string(&path)
        .map_err(|e| format!("{file}: {e} (expected a UTF-8 lock file)"))?;
    parse(kind, &text, pyproject, python, sel)
}

/// [`read`] on the text of the lock.
pub fn parse(
    kind: LockKind,
    text: &str,
    pyproject: Option<&toml::Table>,
    python: (u32, u32),
    sel: &Selection,
) -> Result<Locked, String> {
    let file = kind.file_name();
    if kind == LockKind::Pipenv {
        return pipfile_lock(text, python, sel);
    }
    let doc: toml::Table =
        toml::from_str(text).map_err(|e| format!("{file}: not valid TOML ({e})"))?;
    let packages = doc
        .get("package")
        .map(|p| {
            p.as_array()
                .ok_or_else(|| format!("{file}: [[package]] must be an array of tables"))
        })
        .transpose()?
        .map(|a| a.as_slice())
        .unwrap_or(&[]);
    let mut pkgs = Vec::with_capacity(packages.len());
    for (i, p) in packages.iter().enumerate() {
        let t = p
            .as_table()
            .ok_or_else(|| format!("{file}: [[package]] #{} is not a table", i + 1))?;
        let name = str_field(t, "name").map(normalize);
        let err = |why: String| {
            format!(
                "{file}: [[package]] #{} ({}): {why}",
                i + 1,
                name.as_deref().unwrap_or("?")
            )
        };
        let pkg = match kind {
            LockKind::Uv => uv_package(t),
            LockKind::Poetry => poetry_package(t),
            LockKind::Pdm => pdm_package(t),
            LockKind::Pipenv => unreachable!("Pipfile.lock is JSON, read above"),
        }
        .map_err(err)?;
        pkgs.push(pkg);
    }
    let roots = match kind {
        LockKind::Uv => uv_roots(&pkgs)?,
        LockKind::Poetry => poetry_roots(pyproject)?,
        _ => pdm_roots(pyproject)?,
    };
    walk(file, &pkgs, roots, python, sel)
}

fn str_field<'a>(t: &'a toml::Table, key: &str) -> Option<&'a str> {
    t.get(key).and_then(toml::Value::as_str)
}

fn required<'a>(t: &'a toml::Table, key: &str) -> Result<&'a str, String> {
    str_field(t, key).ok_or_else(|| format!("`{key}` must be a string"))
}

/// A uv dependency entry: `{ name, extra?, marker?, version? }`.
fn uv_edge(v: &toml::Value) -> Result<Edge, String> {
    let t = v
        .as_table()
        .ok_or("a dependency must be a table { name = ... }")?;
    let extras = match t.get("extra") {
        None => Vec::new(),
        Some(toml::Value::Array(a)) => a
            .iter()
            .map(|x| x.as_str().map(normalize).ok_or("`extra` must list names"))
            .collect::<Result<_, _>>()?,
        Some(_) => return Err("`extra` must list names".into()),
    };
    Ok(Edge {
        name: normalize(required(t, "name")?),
        extras,
        marker: str_field(t, "marker").map(str::to_string),
        version: str_field(t, "version").map(str::to_string),
    })
}

fn uv_edges(v: Option<&toml::Value>) -> Result<Vec<Edge>, String> {
    match v {
        None => Ok(Vec::new()),
        Some(toml::Value::Array(a)) => a.iter().map(uv_edge).collect(),
        Some(_) => Err("dependencies must be an array".into()),
    }
}

fn uv_edge_groups(v: Option<&toml::Value>) -> Result<BTreeMap<String, Vec<Edge>>, String> {
    let mut out = BTreeMap::new();
    if let Some(v) = v {
        let t = v.as_table().ok_or("expected a table of lists")?;
        for (k, list) in t {
            out.insert(normalize(k), uv_edges(Some(list))?);
        }
    }
    Ok(out)
}

fn file_name_of(url_or_name: &str) -> String {
    url_or_name
        .rsplit('/')
        .next()
        .unwrap_or(url_or_name)
        .to_string()
}

fn uv_package(t: &toml::Table) -> Result<Pkg, String> {
    let src = match t.get("source").and_then(toml::Value::as_table) {
        None => Src::Index,
        Some(s) if s.contains_key("registry") => Src::Index,
        Some(s) => {
            let local = ["virtual", "editable", "directory", "path"]
                .iter()
                .find_map(|k| str_field(s, k));
            match local {
                Some(".") | Some("") => Src::Root,
                Some(p) => Src::Path(p.to_string()),
                None if s.contains_key("git") => Src::Foreign("git"),
                None => Src::Foreign("a URL"),
            }
        }
    };
    let mut files = Vec::new();
    if let Some(w) = t.get("wheels").and_then(toml::Value::as_array) {
        for x in w {
            if let Some(u) = x.get("url").or_else(|| x.get("filename")) {
                files.extend(u.as_str().map(file_name_of));
            }
        }
    }
    if let Some(s) = t
        .get("sdist")
        .and_then(|s| s.get("url").or_else(|| s.get("filename")))
    {
        files.extend(s.as_str().map(file_name_of));
    }
    Ok(Pkg {
        name: normalize(required(t, "name")?),
        version: str_field(t, "version").unwrap_or("").to_string(),
        extras: Vec::new(),
        marker: None,
        src,
        deps: uv_edges(t.get("dependencies"))?,
        optional: uv_edge_groups(t.get("optional-dependencies"))?,
        groups: uv_edge_groups(t.get("dev-dependencies"))?,
        files,
    })
}

fn uv_roots(pkgs: &[Pkg]) -> Result<Roots, String> {
    let root = pkgs.iter().find(|p| p.src == Src::Root).ok_or(
        "uv.lock: no package is the project itself (source virtual/editable \".\"); expected the lock of the project at the repository root",
    )?;
    Ok(Roots {
        main: root.deps.clone(),
        optional: root.optional.clone(),
        groups: root.groups.clone(),
    })
}

/// poetry.lock: `[package.dependencies]` values are a constraint string, a table
/// (`version`, `markers`, `optional`, `extras`) or a list of tables.
fn poetry_package(t: &toml::Table) -> Result<Pkg, String> {
    let name = normalize(required(t, "name")?);
    let mut deps = Vec::new();
    let mut optional_names = BTreeMap::new();
    if let Some(d) = t.get("dependencies") {
        let d = d
            .as_table()
            .ok_or("[package.dependencies] must be a table")?;
        for (dep, v) in d {
            let specs: Vec<&toml::Value> = match v {
                toml::Value::Array(a) => a.iter().collect(),
                v => vec![v],
            };
            for spec in specs {
                let (marker, optional, extras) = match spec {
                    toml::Value::Table(st) => (
                        str_field(st, "markers").map(str::to_string),
                        st.get("optional")
                            .and_then(toml::Value::as_bool)
                            .unwrap_or(false),
                        st.get("extras")
                            .and_then(toml::Value::as_array)
                            .map(|a| a.iter().filter_map(|x| x.as_str().map(normalize)).collect())
                            .unwrap_or_default(),
                    ),
                    _ => (None, false, Vec::new()),
                };
                let e = Edge {
                    name: normalize(dep),
                    extras,
                    marker,
                    version: None,
                };
                if optional {
                    optional_names
                        .entry(e.name.clone())
                        .or_insert_with(Vec::new)
                        .push(e);
                } else {
                    deps.push(e);
                }
            }
        }
    }
    // [package.extras]: extra → ["dep (>=1)", "other[x] (>=2) ; marker"]: names of optional deps.
    let mut optional = BTreeMap::new();
    if let Some(x) = t.get("extras").and_then(toml::Value::as_table) {
        for (extra, list) in x {
            let mut edges = Vec::new();
            for item in list.as_array().into_iter().flatten() {
                let Some(s) = item.as_str() else { continue };
                let dep = normalize(s.split([' ', '[', '(', ';']).next().unwrap_or(""));
                edges.extend(optional_names.get(&dep).cloned().unwrap_or_default());
            }
            optional.insert(normalize(extra), edges);
        }
    }
    let marker = match t.get("markers") {
        Some(toml::Value::String(m)) => Some(m.clone()),
        // Poetry 2: markers per group; the main group's applies to the main set.
        Some(toml::Value::Table(m)) => str_field(m, "main").map(str::to_string),
        _ => None,
    };
    let src = match t
        .get("source")
        .and_then(toml::Value::as_table)
        .and_then(|s| str_field(s, "type"))
    {
        None | Some("legacy") => Src::Index,
        Some("directory") | Some("file") => {
            let url = t
                .get("source")
                .and_then(|s| s.get("url"))
                .and_then(toml::Value::as_str)
                .unwrap_or("");
            if url == "." || url.is_empty() {
                Src::Root
            } else {
                Src::Path(url.to_string())
            }
        }
        Some("git") => Src::Foreign("git"),
        Some(_) => Src::Foreign("a URL"),
    };
    let files = t
        .get("files")
        .and_then(toml::Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|f| f.get("file").and_then(toml::Value::as_str))
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    Ok(Pkg {
        name,
        version: required(t, "version")?.to_string(),
        extras: Vec::new(),
        marker,
        src,
        deps,
        optional,
        groups: BTreeMap::new(),
        files,
    })
}

/// The project's dependencies as a Poetry project declares them: `[project] dependencies` (Poetry
/// 2), else `[tool.poetry.dependencies]`; groups from `[tool.poetry.group.<g>.dependencies]` and
/// the legacy `[tool.poetry.dev-dependencies]`.
fn poetry_roots(pyproject: Option<&toml::Table>) -> Result<Roots, String> {
    let doc = pyproject.ok_or(
        "poetry.lock: there is no pyproject.toml beside it; expected the Poetry project the lock belongs to",
    )?;
    let tool = doc
        .get("tool")
        .and_then(|t| t.get("poetry"))
        .and_then(toml::Value::as_table);
    let mut roots = pep621_roots(doc)?;
    if doc
        .get("project")
        .and_then(|p| p.get("dependencies"))
        .is_none()
    {
        let deps = tool
            .and_then(|t| t.get("dependencies"))
            .and_then(toml::Value::as_table)
            .ok_or("poetry.lock: pyproject.toml has neither [project] dependencies nor [tool.poetry.dependencies]")?;
        let declared = declared::poetry_table(deps, "pyproject.toml [tool.poetry.dependencies]")?;
        let mut optional = BTreeMap::new();
        for d in &declared {
            if d.local {
                continue;
            }
            let e = declared::edge(&d.requirement)?;
            if d.optional {
                optional.insert(e.name.clone(), e);
            } else {
                roots.main.push(e);
            }
        }
        if let Some(extras) = tool
            .and_then(|t| t.get("extras"))
            .and_then(toml::Value::as_table)
        {
            for (extra, names) in extras {
                let edges = names
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|n| n.as_str())
                    .filter_map(|n| optional.get(&normalize(n)).cloned())
                    .collect();
                roots.optional.insert(normalize(extra), edges);
            }
        }
    }
    let mut group_tables: Vec<(String, &toml::Table)> = Vec::new();
    if let Some(groups) = tool
        .and_then(|t| t.get("group"))
        .and_then(toml::Value::as_table)
    {
        for (g, v) in groups {
            if let Some(d) = v.get("dependencies").and_then(toml::Value::as_table) {
                group_tables.push((g.clone(), d));
            }
        }
    }
    if let Some(d) = tool
        .and_then(|t| t.get("dev-dependencies"))
        .and_then(toml::Value::as_table)
    {
        group_tables.push(("dev".into(), d));
    }
    for (g, table) in group_tables {
        let what = format!("pyproject.toml [tool.poetry.group.{g}.dependencies]");
        let mut edges = Vec::new();
        for d in declared::poetry_table(table, &what)? {
            if !d.local {
                edges.push(declared::edge(&d.requirement)?);
            }
        }
        roots
            .groups
            .entry(normalize(&g))
            .or_insert_with(Vec::new)
            .extend(edges);
    }
    Ok(roots)
}

/// `[project] dependencies`, `[project.optional-dependencies]` and PEP 735 `[dependency-groups]`.
fn pep621_roots(doc: &toml::Table) -> Result<Roots, String> {
    let list = |v: Option<&toml::Value>, what: &str| -> Result<Vec<Edge>, String> {
        let mut out = Vec::new();
        for item in v.and_then(toml::Value::as_array).into_iter().flatten() {
            // PEP 735 `{include-group = "x"}` entries are resolved by the walk's caller below.
            let Some(s) = item.as_str() else { continue };
            // pdm's local dev entries (`-e file:///${PROJECT_ROOT}/…`) are not index packages.
            if s.starts_with('-') {
                continue;
            }
            out.push(declared::edge(s).map_err(|why| format!("pyproject.toml {what}: {why}"))?);
        }
        Ok(out)
    };
    let project = doc.get("project").and_then(toml::Value::as_table);
    let main = list(
        project.and_then(|p| p.get("dependencies")),
        "[project] dependencies",
    )?;
    let mut optional = BTreeMap::new();
    if let Some(o) = project
        .and_then(|p| p.get("optional-dependencies"))
        .and_then(toml::Value::as_table)
    {
        for (k, v) in o {
            optional.insert(
                normalize(k),
                list(Some(v), &format!("[project.optional-dependencies] {k}"))?,
            );
        }
    }
    let mut groups = BTreeMap::new();
    for table in [
        doc.get("dependency-groups"),
        doc.get("tool")
            .and_then(|t| t.get("pdm"))
            .and_then(|t| t.get("dev-dependencies")),
    ]
    .into_iter()
    .flatten()
    .filter_map(toml::Value::as_table)
    {
        for (k, v) in table {
            groups
                .entry(normalize(k))
                .or_insert_with(Vec::new)
                .extend(list(Some(v), &format!("dependency group {k}"))?);
        }
    }
    Ok(Roots {
        main,
        optional,
        groups,
    })
}

/// pdm.lock: `dependencies` are PEP 508 strings; one entry per extras combination.
fn pdm_package(t: &toml::Table) -> Result<Pkg, String> {
    let mut deps = Vec::new();
    for d in t
        .get("dependencies")
        .and_then(toml::Value::as_array)
        .into_iter()
        .flatten()
    {
        let s = d.as_str().ok_or("dependencies must be strings")?;
        if s.starts_with('-') || s.contains(" @ ") {
            // Local or URL requirement of a package: followed through its own entry's source.
            let name = s
                .split([' ', '@', '['])
                .find(|x| !x.is_empty() && *x != "-e");
            if let Some(n) = name {
                deps.push(Edge {
                    name: normalize(n),
                    extras: Vec::new(),
                    marker: None,
                    version: None,
                });
            }
            continue;
        }
        deps.push(declared::edge(s)?);
    }
    let src = if t.contains_key("git") {
        Src::Foreign("git")
    } else if let Some(p) = str_field(t, "path") {
        if p == "." {
            Src::Root
        } else {
            Src::Path(p.into())
        }
    } else if t.contains_key("url") {
        Src::Foreign("a URL")
    } else {
        Src::Index
    };
    Ok(Pkg {
        name: normalize(required(t, "name")?),
        version: str_field(t, "version").unwrap_or("").to_string(),
        extras: t
            .get("extras")
            .and_then(toml::Value::as_array)
            .map(|a| a.iter().filter_map(|x| x.as_str().map(normalize)).collect())
            .unwrap_or_default(),
        marker: str_field(t, "marker").map(str::to_string),
        src,
        deps,
        optional: BTreeMap::new(),
        groups: BTreeMap::new(),
        files: t
            .get("files")
            .and_then(toml::Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|f| {
                        f.get("file")
                            .or_else(|| f.get("url"))
                            .and_then(toml::Value::as_str)
                            .map(file_name_of)
                    })
                    .collect()
            })
            .unwrap_or_default(),
    })
}

fn pdm_roots(pyproject: Option<&toml::Table>) -> Result<Roots, String> {
    let doc = pyproject.ok_or(
        "pdm.lock: there is no pyproject.toml beside it; expected the PDM project the lock belongs to",
    )?;
    pep621_roots(doc)
}

/// Whether the marker text holds on the image.
fn holds(marker: Option<&str>, python: (u32, u32)) -> bool {
    match marker {
        None => true,
        Some(m) => marker_applies(&format!("x ; {m}"), python),
    }
}

/// The roots the selection asks for, or an error naming an unknown extra or group.
fn selected(file: &str, roots: &Roots, sel: &Selection) -> Result<Vec<(Edge, String)>, String> {
    let mut out: Vec<(Edge, String)> = roots
        .main
        .iter()
        .map(|e| (e.clone(), "the project".to_string()))
        .collect();
    for (asked, table, kind) in [
        (&sel.extras, &roots.optional, "extra"),
        (&sel.groups, &roots.groups, "dependency group"),
    ] {
        for a in asked {
            let edges = table.get(a).ok_or_else(|| {
                format!(
                    "{file}: the repos file asks for {kind} {a:?}, which the project does not declare (it has: {})",
                    if table.is_empty() {
                        "none".to_string()
                    } else {
                        table.keys().cloned().collect::<Vec<_>>().join(", ")
                    }
                )
            })?;
            out.extend(edges.iter().map(|e| (e.clone(), format!("{kind} {a}"))));
        }
    }
    Ok(out)
}

fn skipped_groups(file: &str, roots: &Roots, sel: &Selection) -> Vec<String> {
    let mut out = Vec::new();
    for (table, asked, kind) in [
        (&roots.groups, &sel.groups, "dependency group"),
        (&roots.optional, &sel.extras, "extra"),
    ] {
        for (name, edges) in table {
            if !asked.contains(name) {
                let names: BTreeSet<&str> = edges.iter().map(|e| e.name.as_str()).collect();
                out.push(format!(
                    "{file}: {kind} {name} left out ({}); the repos file can ask for it",
                    names.into_iter().collect::<Vec<_>>().join(", ")
                ));
            }
        }
    }
    out
}

fn walk(
    file: &str,
    pkgs: &[Pkg],
    roots: Roots,
    python: (u32, u32),
    sel: &Selection,
) -> Result<Locked, String> {
    let mut out = Locked {
        skipped: skipped_groups(file, &roots, sel),
        ..Locked::default()
    };
    let mut queue: VecDeque<(Edge, String)> = selected(file, &roots, sel)?.into();
    let mut seen: BTreeSet<(String, Vec<String>)> = BTreeSet::new();
    let mut pinned: BTreeSet<(String, String)> = BTreeSet::new();
    while let Some((edge, via)) = queue.pop_front() {
        if !holds(edge.marker.as_deref(), python) {
            out.skipped.push(format!(
                "{file}: {} (required by {via}): markers false on CPython {}.{} ({})",
                edge.name,
                python.0,
                python.1,
                edge.marker.as_deref().unwrap_or("")
            ));
            continue;
        }
        let mut extras = edge.extras.clone();
        extras.sort();
        if !seen.insert((edge.name.clone(), extras.clone())) {
            continue;
        }
        let named: Vec<&Pkg> = pkgs
            .iter()
            .filter(|p| p.name == edge.name)
            .filter(|p| edge.version.as_ref().is_none_or(|v| *v == p.version))
            .collect();
        // A package locked more than once (per-Python forks): the entries whose markers hold.
        let fitting: Vec<&Pkg> = named
            .iter()
            .copied()
            .filter(|p| holds(p.marker.as_deref(), python))
            .collect();
        if named.is_empty() {
            return Err(format!(
                "{file}: {via} requires {}, which the lock does not list; the lock is out of date (regenerate it)",
                edge.name
            ));
        }
        if fitting.is_empty() {
            out.skipped.push(format!(
                "{file}: {} (required by {via}): its locked markers are false on CPython {}.{}",
                edge.name, python.0, python.1
            ));
            continue;
        }
        let base = fitting.iter().find(|p| p.extras.is_empty()).copied();
        // pdm: the entries for the extras asked for carry those extras' dependencies.
        let variants = fitting
            .iter()
            .copied()
            .filter(|p| !p.extras.is_empty() && p.extras.iter().all(|x| extras.contains(x)));
        let base = base.or(if variants_only(&fitting) {
            None
        } else {
            Some(fitting[0])
        });
        for p in base.into_iter().chain(variants) {
            match &p.src {
                Src::Index => {
                    if pinned.insert((p.name.clone(), p.version.clone())) {
                        if p.version.is_empty() {
                            return Err(format!(
                                "{file}: {} has no locked version; regenerate the lock",
                                p.name
                            ));
                        }
                        out.pins.push((
                            format!("{}=={}", p.name, p.version),
                            format!("{file} (via {via})"),
                        ));
                        if !p.files.is_empty() && !p.files.iter().any(|f| wheel_fits(f, python)) {
                            out.sdists.push(format!("{} {}", p.name, p.version));
                        }
                    }
                }
                Src::Root => {}
                Src::Path(path) => {
                    let line = format!("./{}", path.trim_start_matches("./"));
                    if !out.local.contains(&line) {
                        out.local.push(line);
                    }
                }
                Src::Foreign(what) => {
                    return Err(format!(
                        "{file}: {} (required by {via}) is locked from {what}; iac installs dependencies from the operator's index only (or paths in the repository)",
                        p.name
                    ));
                }
            }
            let via = p.name.clone();
            for d in &p.deps {
                queue.push_back((d.clone(), via.clone()));
            }
            for x in &extras {
                if let Some(edges) = p.optional.get(x) {
                    for d in edges {
                        queue.push_back((d.clone(), format!("{via}[{x}]")));
                    }
                }
            }
        }
    }
    Ok(out)
}

/// Whether every entry is an extras variant (pdm without a base entry: impossible in a lock pdm
/// wrote, but then the variants alone are installed).
fn variants_only(pkgs: &[&Pkg]) -> bool {
    pkgs.iter().all(|p| !p.extras.is_empty())
}

/// Pipfile.lock (JSON): the `default` section, each `{version: "==x", markers?, git?, path?,
/// editable?}`; `develop` is left out unless the `dev` group is asked for.
fn pipfile_lock(text: &str, python: (u32, u32), sel: &Selection) -> Result<Locked, String> {
    let file = "Pipfile.lock";
    let doc: serde_json::Value =
        serde_json::from_str(text).map_err(|e| format!("{file}: not valid JSON ({e})"))?;
    let mut out = Locked::default();
    let mut sections = vec!["default"];
    for g in &sel.groups {
        match g.as_str() {
            "dev" | "develop" => sections.push("develop"),
            other => {
                return Err(format!(
                    "{file}: the repos file asks for dependency group {other:?}; a Pipfile has only `dev` (its [dev-packages])"
                ));
            }
        }
    }
    if let Some(extra) = sel.extras.first() {
        return Err(format!(
            "{file}: the repos file asks for extra {extra:?}; Pipfile.lock has no extras (it lists every package already)"
        ));
    }
    if !sections.contains(&"develop")
        && let Some(dev) = doc.get("develop").and_then(|d| d.as_object())
        && !dev.is_empty()
    {
        out.skipped.push(format!(
            "{file}: develop ({}) left out; the repos file can ask for group dev",
            dev.keys().cloned().collect::<Vec<_>>().join(", ")
        ));
    }
    for section in sections {
        let entries = match doc.get(section) {
            None => continue,
            Some(serde_json::Value::Object(m)) => m,
            Some(_) => return Err(format!("{file}: `{section}` must be an object")),
        };
        for (name, e) in entries {
            let err = |why: &str| format!("{file}: {section} {name}: {why}");
            if !super::requirements::is_name(name) {
                return Err(err("not a package name"));
            }
            let obj = e.as_object().ok_or_else(|| err("expected an object"))?;
            let marker = obj.get("markers").and_then(|m| m.as_str());
            if !holds(marker, python) {
                out.skipped.push(format!(
                    "{file}: {name}: markers false on CPython {}.{} ({})",
                    python.0,
                    python.1,
                    marker.unwrap_or("")
                ));
                continue;
            }
            if obj.contains_key("git") || obj.contains_key("file") {
                return Err(err(
                    "locked from git or a URL; iac installs dependencies from the operator's index only (or paths in the repository)",
                ));
            }
            if let Some(path) = obj.get("path").and_then(|p| p.as_str()) {
                let p = path.trim_start_matches("./");
                if !(p.is_empty() || p == ".") {
                    let line = format!("./{p}");
                    if !out.local.contains(&line) {
                        out.local.push(line);
                    }
                }
                continue;
            }
            let version = obj
                .get("version")
                .and_then(|v| v.as_str())
                .and_then(|v| v.strip_prefix("=="))
                .ok_or_else(|| err("expected `version: \"==x.y\"`"))?;
            out.pins.push((
                format!("{}=={version}", normalize(name)),
                format!("{file} ({section})"),
            ));
        }
    }
    Ok(out)
}

/// Whether the wheel file `name` installs on the image: CPython `python` on Linux x86_64 with the
/// base image's glibc ([`glibc_minor`]). Anything that is not a wheel does not fit.
pub fn wheel_fits(name: &str, python: (u32, u32)) -> bool {
    let Some(stem) = name.strip_suffix(".whl") else {
        return false;
    };
    let parts: Vec<&str> = stem.split('-').collect();
    if parts.len() < 5 {
        return false;
    }
    let (py, abi, plat) = (
        parts[parts.len() - 3],
        parts[parts.len() - 2],
        parts[parts.len() - 1],
    );
    let minor_ok = |tag: &str, prefix: &str| {
        tag.strip_prefix(prefix)
            .and_then(|rest| rest.strip_prefix('3'))
            .and_then(|m| {
                if m.is_empty() {
                    Some(0)
                } else {
                    m.parse::<u32>().ok()
                }
            })
            .is_some_and(|m| python.0 == 3 && m <= python.1)
    };
    let py_ok = py
        .split('.')
        .any(|t| t == "py3" || minor_ok(t, "py") || minor_ok(t, "cp"));
    let own_abi = format!("cp{}{}", python.0, python.1);
    let abi_ok = abi
        .split('.')
        .any(|t| t == "none" || t == "abi3" || t == own_abi);
    let glibc = glibc_minor(python);
    let plat_ok = plat.split('.').any(|t| {
        t == "any"
            || t == "linux_x86_64"
            || matches!(
                t,
                "manylinux1_x86_64" | "manylinux2010_x86_64" | "manylinux2014_x86_64"
            )
            || t.strip_prefix("manylinux_2_")
                .and_then(|r| r.strip_suffix("_x86_64"))
                .and_then(|n| n.parse::<u32>().ok())
                .is_some_and(|n| n <= glibc)
    });
    py_ok && abi_ok && plat_ok
}

#[cfg(test)]
mod tests;
