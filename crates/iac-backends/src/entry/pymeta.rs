//! [`PyRepo`]: a Python project's metadata read statically, for the Python provider —
//! pyproject.toml (`[project.scripts]` in file order, `[tool.poetry.scripts]`, names,
//! dependencies), setup.cfg (read by [`super::setup_cfg`]), setup.py (read by [`super::setup_py`],
//! never executed) and requirements files.

use std::path::{Path, PathBuf};

use iac_core::EntryError;

use super::overrides::Callable;
use super::pylex::PyValue;
use super::setup_cfg::Ini;
use super::setup_py::{SetupArg, SetupPy};
use super::{read_optional, toml_key_line};

/// A console script: its name, target and where it was declared.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Script {
    /// The script's name (the command it installs).
    pub name: String,
    /// The `module:function` it calls.
    pub target: Callable,
    /// e.g. "pyproject.toml line 12".
    pub location: String,
}

/// Normalises a project or package name for comparison: lowercase, `-` and `.` → `_`.
pub fn normalize_name(name: &str) -> String {
    name.trim().to_ascii_lowercase().replace(['-', '.'], "_")
}

/// Normalises a distribution name per PEP 503 (`[-_.]+` → `-`, lowercase).
fn normalize_dist(name: &str) -> String {
    let mut out = String::new();
    for c in name.trim().chars() {
        if matches!(c, '-' | '_' | '.') {
            if !out.ends_with('-') {
                out.push('-');
            }
        } else {
            out.push(c.to_ascii_lowercase());
        }
    }
    out
}

/// The distribution name at the start of a PEP 508 requirement (`gunicorn[gevent]>=21 ; …`).
fn requirement_name(req: &str) -> Option<String> {
    let r = req.trim();
    let end = r
        .find(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
        .unwrap_or(r.len());
    (end > 0).then(|| normalize_dist(&r[..end]))
}

/// Everything the Python rules read from a repo, loaded once.
pub struct PyRepo {
    /// The repo root.
    pub dir: PathBuf,
    /// pyproject.toml's text and parsed table, when present.
    pub pyproject: Option<(String, toml::Table)>,
    /// setup.cfg, when present.
    pub setup_cfg: Option<Ini>,
    /// setup.py as tokens, or why it could not be tokenized.
    pub setup_py: Option<Result<SetupPy, String>>,
}

impl PyRepo {
    /// Reads pyproject.toml, setup.cfg and setup.py from `dir`; a pyproject.toml that is not TOML is an error.
    pub fn load(dir: &Path) -> Result<PyRepo, EntryError> {
        let pyproject_path = dir.join("pyproject.toml");
        let pyproject = match read_optional(&pyproject_path)? {
            Some(text) => {
                let table: toml::Table =
                    text.parse()
                        .map_err(|e: toml::de::Error| EntryError::Parse {
                            file: pyproject_path.clone(),
                            message: e.to_string(),
                        })?;
                Some((text, table))
            }
            None => None,
        };
        let setup_cfg = read_optional(&dir.join("setup.cfg"))?.map(|t| Ini::parse(&t));
        let setup_py = read_optional(&dir.join("setup.py"))?
            .map(|t| SetupPy::parse(&t).map_err(|e| e.to_string()));
        Ok(PyRepo {
            dir: dir.to_path_buf(),
            pyproject,
            setup_cfg,
            setup_py,
        })
    }

    fn toml_get(&self, path: &[&str]) -> Option<&toml::Value> {
        let (_, table) = self.pyproject.as_ref()?;
        let mut v = table.get(path[0])?;
        for p in &path[1..] {
            v = v.get(p)?;
        }
        Some(v)
    }

    fn pyproject_line(&self, section: &str, key: &str) -> String {
        let text = self
            .pyproject
            .as_ref()
            .map(|(t, _)| t.as_str())
            .unwrap_or("");
        match toml_key_line(text, section, key) {
            Some(n) => format!("pyproject.toml line {n}"),
            None => "pyproject.toml".to_string(),
        }
    }

    /// Whether the image installs the repo as a package (so `src/` layouts import), by the rule
    /// the build follows ([`crate::build::project::decide`]): a build backend or a setup.py,
    /// unless `[tool.uv] package = false` / Poetry `package-mode = false` / PDM
    /// `distribution = false`; a pyproject.toml without `[build-system]` is a virtual project.
    /// (Console-script entries are installed whatever this says: the build sees the entry.)
    pub fn installable(&self) -> bool {
        crate::build::project::decide(
            self.pyproject.as_ref().map(|(_, t)| t),
            self.setup_py.is_some(),
        )
        .package
    }

    /// `[project.scripts]`: the first entry in FILE order. `Ok(None)` when there is no such table.
    pub fn project_script(&self) -> Result<Option<Script>, EntryError> {
        let Some(v) = self.toml_get(&["project", "scripts"]) else {
            return Ok(None);
        };
        let table = v
            .as_table()
            .ok_or_else(|| self.pyproject_err("[project.scripts] must be a table"))?;
        let Some((name, value)) = table.iter().next() else {
            return Ok(None);
        };
        let target = value.as_str().and_then(Callable::parse).ok_or_else(|| {
            self.pyproject_err(&format!(
                "[project.scripts] {name} = {value}: expected \"module:function\""
            ))
        })?;
        Ok(Some(Script {
            name: name.clone(),
            target,
            location: self.pyproject_line("project.scripts", name),
        }))
    }

    /// `[tool.poetry.scripts]`: the first console script in file order (string, or a table with
    /// `callable` / `reference` + `type = "console"`; `type = "file"` scripts are skipped).
    pub fn poetry_script(&self) -> Result<Option<Script>, EntryError> {
        let Some(v) = self.toml_get(&["tool", "poetry", "scripts"]) else {
            return Ok(None);
        };
        let table = v
            .as_table()
            .ok_or_else(|| self.pyproject_err("[tool.poetry.scripts] must be a table"))?;
        for (name, value) in table {
            let spec = match value {
                toml::Value::String(s) => Some(s.as_str()),
                toml::Value::Table(t) => {
                    let kind = t.get("type").and_then(|v| v.as_str()).unwrap_or("console");
                    if kind != "console" {
                        continue;
                    }
                    t.get("callable")
                        .or_else(|| t.get("reference"))
                        .and_then(|v| v.as_str())
                }
                _ => None,
            };
            let target = spec.and_then(Callable::parse).ok_or_else(|| {
                self.pyproject_err(&format!(
                    "[tool.poetry.scripts] {name} = {value}: expected \"module:function\""
                ))
            })?;
            return Ok(Some(Script {
                name: name.clone(),
                target,
                location: self.pyproject_line("tool.poetry.scripts", name),
            }));
        }
        Ok(None)
    }

    fn pyproject_err(&self, message: &str) -> EntryError {
        EntryError::Parse {
            file: self.dir.join("pyproject.toml"),
            message: message.to_string(),
        }
    }

    /// setup.cfg `[options.entry_points] console_scripts`: the first line.
    pub fn setup_cfg_script(&self) -> Result<Option<Script>, EntryError> {
        let Some(ini) = &self.setup_cfg else {
            return Ok(None);
        };
        let Some((value, line)) = ini.get("options.entry_points", "console_scripts") else {
            return Ok(None);
        };
        let file = self.dir.join("setup.cfg");
        first_script_line(value, line, "setup.cfg", &file)
    }

    /// setup.py `setup(entry_points=...)` read statically. `Ok(Err(why))` when setup.py exists
    /// but no console script can be read from it without running it.
    pub fn setup_py_script(&self) -> Result<Result<Script, String>, EntryError> {
        let file = self.dir.join("setup.py");
        let setup = match &self.setup_py {
            None => return Ok(Err("no setup.py".to_string())),
            Some(Err(e)) => return Ok(Err(format!("setup.py could not be tokenized ({e})"))),
            Some(Ok(s)) => s,
        };
        let (value, line, via) = match setup.arg("entry_points") {
            SetupArg::Absent => {
                return Ok(Err("setup.py has no `setup(entry_points=...)`".to_string()));
            }
            SetupArg::NotLiteral { line, why } => {
                return Ok(Err(format!(
                    "setup.py line {line}: `entry_points` is not a literal ({why}); it is never executed"
                )));
            }
            SetupArg::Literal { value, line, via } => (value, line, via),
        };
        let via = via.map(|v| format!(" via {v}")).unwrap_or_default();
        let lines: Vec<String> = match &value {
            PyValue::Dict(_) => match value.get("console_scripts") {
                None => {
                    return Ok(Err(format!(
                        "setup.py line {line}: `entry_points`{via} has no \"console_scripts\" group"
                    )));
                }
                Some(PyValue::Str(s)) => s.lines().map(str::to_string).collect(),
                Some(PyValue::List(items) | PyValue::Tuple(items)) => {
                    let mut out = Vec::new();
                    for it in items {
                        match it {
                            PyValue::Str(s) => out.push(s.clone()),
                            other => {
                                return Err(EntryError::Parse {
                                    file,
                                    message: format!(
                                        "line {line}: console_scripts item is {}, expected a \"name = module:function\" string",
                                        other.kind()
                                    ),
                                });
                            }
                        }
                    }
                    out
                }
                Some(other) => {
                    return Err(EntryError::Parse {
                        file,
                        message: format!(
                            "line {line}: console_scripts is {}, expected a list of \"name = module:function\" strings",
                            other.kind()
                        ),
                    });
                }
            },
            PyValue::Str(s) => {
                // INI text: `[console_scripts]` then `name = module:function` lines.
                let mut out = Vec::new();
                let mut in_group = false;
                for l in s.lines().map(str::trim) {
                    if l.starts_with('[') {
                        in_group = l == "[console_scripts]";
                    } else if in_group && !l.is_empty() && !l.starts_with(['#', ';']) {
                        out.push(l.to_string());
                    }
                }
                out
            }
            other => {
                return Ok(Err(format!(
                    "setup.py line {line}: `entry_points`{via} is {}, expected a dict or an INI string",
                    other.kind()
                )));
            }
        };
        let text = lines.join("\n");
        match first_script_line(&text, line, "setup.py", &file)? {
            Some(mut s) => {
                s.location = format!("setup.py line {line}{via}");
                Ok(Ok(s))
            }
            None => Ok(Err(format!(
                "setup.py line {line}: `entry_points`{via} has no console_scripts entries"
            ))),
        }
    }

    /// The project's name and where it came from: pyproject `[project].name`,
    /// `[tool.poetry].name`, setup.cfg `[metadata] name`, setup.py `name=` literal, else the repo
    /// directory name.
    pub fn project_name(&self) -> (String, String) {
        if let Some(n) = self.toml_get(&["project", "name"]).and_then(|v| v.as_str()) {
            return (n.to_string(), "pyproject.toml [project].name".to_string());
        }
        if let Some(n) = self
            .toml_get(&["tool", "poetry", "name"])
            .and_then(|v| v.as_str())
        {
            return (
                n.to_string(),
                "pyproject.toml [tool.poetry].name".to_string(),
            );
        }
        if let Some((n, _)) = self
            .setup_cfg
            .as_ref()
            .and_then(|i| i.get("metadata", "name"))
        {
            return (n.to_string(), "setup.cfg [metadata] name".to_string());
        }
        if let Some(Ok(s)) = &self.setup_py
            && let SetupArg::Literal {
                value: PyValue::Str(n),
                ..
            } = s.arg("name")
        {
            return (n, "setup.py name=".to_string());
        }
        let dir_name = self
            .dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        (dir_name, "the repo directory name".to_string())
    }

    /// Where `dist` is declared as a dependency: requirements*.txt (root and `requirements/`),
    /// pyproject `[project].dependencies` and `optional-dependencies`, PEP 735
    /// `[dependency-groups]`, `[tool.uv] dev-dependencies`, `[tool.pdm.dev-dependencies]`,
    /// `[tool.poetry.dependencies]` / `dev-dependencies` / `group.*.dependencies`, setup.cfg
    /// `install_requires`, setup.py `install_requires` literal, Pipfile `[packages]` /
    /// `[dev-packages]`.
    pub fn dependency(&self, dist: &str) -> Result<Option<String>, EntryError> {
        self.find_dependency(dist, None)
    }

    /// Like [`PyRepo::dependency`], but only a declaration with the extra `extra`
    /// (`fastapi[standard]`, poetry `{ extras = ["standard"] }`).
    pub fn dependency_with_extra(
        &self,
        dist: &str,
        extra: &str,
    ) -> Result<Option<String>, EntryError> {
        self.find_dependency(dist, Some(extra))
    }

    fn find_dependency(
        &self,
        dist: &str,
        extra: Option<&str>,
    ) -> Result<Option<String>, EntryError> {
        let want = normalize_dist(dist);
        let matches = |req: &str| {
            requirement_name(req).as_deref() == Some(want.as_str())
                && extra.is_none_or(|x| requirement_extras(req).iter().any(|e| e == x))
        };
        let poetry_matches = |k: &str, v: &toml::Value| {
            normalize_dist(k) == want
                && extra.is_none_or(|x| {
                    v.get("extras")
                        .and_then(|e| e.as_array())
                        .is_some_and(|e| e.iter().any(|e| e.as_str() == Some(x)))
                })
        };
        let mut req_files: Vec<(PathBuf, String)> = Vec::new();
        for (sub, label) in [
            (self.dir.clone(), ""),
            (self.dir.join("requirements"), "requirements/"),
        ] {
            let Ok(rd) = std::fs::read_dir(&sub) else {
                continue;
            };
            let mut names: Vec<String> = rd
                .filter_map(|e| e.ok())
                .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| {
                    n.ends_with(".txt") && (!label.is_empty() || n.starts_with("requirements"))
                })
                .collect();
            names.sort();
            req_files.extend(
                names
                    .into_iter()
                    .map(|n| (sub.join(&n), format!("{label}{n}"))),
            );
        }
        for (path, label) in req_files {
            let Some(text) = read_optional(&path)? else {
                continue;
            };
            for (i, line) in text.lines().enumerate() {
                let l = line.split(" #").next().unwrap_or("").trim();
                if l.starts_with(['#', '-']) || l.is_empty() {
                    continue;
                }
                if matches(l) {
                    return Ok(Some(format!("{label} line {}", i + 1)));
                }
            }
        }
        // PEP 508 lists in pyproject.toml: (table path, key for the line lookup, label).
        let mut lists: Vec<(Vec<String>, String, String)> = vec![(
            vec!["project".into(), "dependencies".into()],
            "project".into(),
            "[project].dependencies".into(),
        )];
        for (base, label) in [
            (
                vec!["project", "optional-dependencies"],
                "[project.optional-dependencies]",
            ),
            (vec!["dependency-groups"], "[dependency-groups]"),
            (
                vec!["tool", "pdm", "dev-dependencies"],
                "[tool.pdm.dev-dependencies]",
            ),
        ] {
            if let Some(t) = self.toml_get(&base).and_then(|v| v.as_table()) {
                for k in t.keys() {
                    let mut path: Vec<String> = base.iter().map(|s| s.to_string()).collect();
                    path.push(k.clone());
                    lists.push((path, base.join("."), format!("{label} {k}")));
                }
            }
        }
        lists.push((
            vec!["tool".into(), "uv".into(), "dev-dependencies".into()],
            "tool.uv".into(),
            "[tool.uv] dev-dependencies".into(),
        ));
        for (path, section, label) in &lists {
            let refs: Vec<&str> = path.iter().map(String::as_str).collect();
            if let Some(deps) = self.toml_get(&refs).and_then(|v| v.as_array())
                && deps.iter().filter_map(|d| d.as_str()).any(matches)
            {
                let key = path.last().map(String::as_str).unwrap_or("");
                return Ok(Some(format!(
                    "{} ({label})",
                    self.pyproject_line(section, key)
                )));
            }
        }
        // Poetry tables: dependencies, dev-dependencies, group.<g>.dependencies.
        let mut poetry: Vec<(Vec<String>, String)> = vec![
            (
                vec!["tool".into(), "poetry".into(), "dependencies".into()],
                "tool.poetry.dependencies".into(),
            ),
            (
                vec!["tool".into(), "poetry".into(), "dev-dependencies".into()],
                "tool.poetry.dev-dependencies".into(),
            ),
        ];
        if let Some(groups) = self
            .toml_get(&["tool", "poetry", "group"])
            .and_then(|g| g.as_table())
        {
            for g in groups.keys() {
                poetry.push((
                    vec![
                        "tool".into(),
                        "poetry".into(),
                        "group".into(),
                        g.clone(),
                        "dependencies".into(),
                    ],
                    format!("tool.poetry.group.{g}.dependencies"),
                ));
            }
        }
        for (path, section) in &poetry {
            let refs: Vec<&str> = path.iter().map(String::as_str).collect();
            if let Some(deps) = self.toml_get(&refs).and_then(|v| v.as_table())
                && let Some((k, _)) = deps.iter().find(|(k, v)| poetry_matches(k, v))
            {
                return Ok(Some(format!(
                    "{} ([{section}])",
                    self.pyproject_line(section, k)
                )));
            }
        }
        if let Some((v, line)) = self
            .setup_cfg
            .as_ref()
            .and_then(|i| i.get("options", "install_requires"))
            && v.lines().any(matches)
        {
            return Ok(Some(format!("setup.cfg line {line} (install_requires)")));
        }
        if let Some(Ok(s)) = &self.setup_py
            && let SetupArg::Literal {
                value: PyValue::List(items) | PyValue::Tuple(items),
                line,
                ..
            } = s.arg("install_requires")
            && items
                .iter()
                .any(|i| matches!(i, PyValue::Str(d) if matches(d)))
        {
            return Ok(Some(format!("setup.py line {line} (install_requires)")));
        }
        let pipfile = self.dir.join("Pipfile");
        if let Some(text) = read_optional(&pipfile)? {
            let table: toml::Table =
                text.parse()
                    .map_err(|e: toml::de::Error| EntryError::Parse {
                        file: pipfile.clone(),
                        message: e.to_string(),
                    })?;
            for section in ["packages", "dev-packages"] {
                if let Some(pk) = table.get(section).and_then(|p| p.as_table())
                    && pk.iter().any(|(k, v)| poetry_matches(k, v))
                {
                    return Ok(Some(format!("Pipfile [{section}]")));
                }
            }
        }
        Ok(None)
    }
}

/// The extras of a PEP 508 requirement (`uvicorn[standard, x]>=1` → `["standard", "x"]`).
fn requirement_extras(req: &str) -> Vec<String> {
    let r = req.split(';').next().unwrap_or("");
    match (r.find('['), r.find(']')) {
        (Some(a), Some(b)) if a < b => r[a + 1..b]
            .split(',')
            .map(|e| e.trim().to_ascii_lowercase())
            .filter(|e| !e.is_empty())
            .collect(),
        _ => Vec::new(),
    }
}

/// The first `name = module:function` line of an entry-point group value.
fn first_script_line(
    value: &str,
    line: usize,
    label: &str,
    file: &Path,
) -> Result<Option<Script>, EntryError> {
    let Some(first) = value
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with(['#', ';']))
    else {
        return Ok(None);
    };
    let parse_err = || EntryError::Parse {
        file: file.to_path_buf(),
        message: format!(
            "console_scripts entry {first:?} (near line {line}): expected `name = module:function`"
        ),
    };
    let (name, target) = first.split_once('=').ok_or_else(parse_err)?;
    let target = Callable::parse(target).ok_or_else(parse_err)?;
    Ok(Some(Script {
        name: name.trim().to_string(),
        target,
        location: format!("{label} line {line}"),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requirement_names() {
        assert_eq!(
            requirement_name("Gunicorn[gevent]>=21; python_version>'3'").as_deref(),
            Some("gunicorn")
        );
        assert_eq!(
            requirement_name("zope.interface==5").as_deref(),
            Some("zope-interface")
        );
        assert_eq!(
            requirement_name("gunicorn-extras").as_deref(),
            Some("gunicorn-extras")
        );
        assert_eq!(normalize_name("My-Project.x"), "my_project_x");
    }
}
