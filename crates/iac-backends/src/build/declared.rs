//! Dependencies a project declares without a lock, turned into PEP 508 requirement strings:
//! `[tool.poetry.dependencies]` (and its groups) with Poetry's `^`/`~` constraints converted to
//! PEP 440, a Pipfile's `[packages]`, and the name/extras/marker split of a PEP 508 string that
//! the lock walk ([`super::lockfile`]) follows. Pure: tables in, strings out; every refusal names
//! the table and the dependency.

use std::str::FromStr;

/// One declared dependency.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Declared {
    /// PEP 508 text (`name[extras]specifiers ; markers`) for an index dependency, or the
    /// tree-relative path (`./libs/x`, `-e ./libs/x`) of a local one.
    pub requirement: String,
    /// Only installed when an extra that names it is asked for (Poetry `optional = true`).
    pub optional: bool,
    /// A path in the tree rather than a name from the index.
    pub local: bool,
}

/// The parts of a PEP 508 requirement the lock walk follows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Edge {
    /// Normalized (PEP 503) name.
    pub name: String,
    /// Normalized extras asked for.
    pub extras: Vec<String>,
    /// The marker text after `;`, if any.
    pub marker: Option<String>,
    /// An exact version the edge names (uv.lock's disambiguation of forked packages).
    pub version: Option<String>,
}

/// PEP 503 normalization: lowercase, runs of `-`, `_`, `.` become `-`.
pub fn normalize(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut sep = false;
    for c in name.trim().chars() {
        if matches!(c, '-' | '_' | '.') {
            sep = true;
            continue;
        }
        if sep && !out.is_empty() {
            out.push('-');
        }
        sep = false;
        out.push(c.to_ascii_lowercase());
    }
    out
}

/// Splits a PEP 508 requirement (parsed by `pep508_rs`, so the name and extras are valid).
pub fn edge(req: &str) -> Result<Edge, String> {
    let parsed = pep508_rs::Requirement::<pep508_rs::VerbatimUrl>::from_str(req)
        .map_err(|e| format!("{req:?} is not a PEP 508 requirement ({e})"))?;
    let marker = req
        .split_once(';')
        .map(|(_, m)| m.trim().to_string())
        .filter(|m| !m.is_empty());
    Ok(Edge {
        name: parsed.name.to_string(),
        extras: parsed.extras.iter().map(|e| e.to_string()).collect(),
        marker,
        version: None,
    })
}

/// Poetry's version constraint as PEP 440 specifiers (`""` for any version): `^1.2.3` →
/// `>=1.2.3,<2.0.0`, `^0.2` → `>=0.2,<0.3`, `~1.2` → `>=1.2,<1.3`, `1.2.3` → `==1.2.3`,
/// `1.2.*` → `==1.2.*`; PEP 440 operators pass through; `,` or spaces join. `||` (a union)
/// has no PEP 440 spelling and is refused.
pub fn poetry_constraint(c: &str) -> Result<String, String> {
    let c = c.trim();
    if c.is_empty() || c == "*" {
        return Ok(String::new());
    }
    if c.contains("||") || c.contains('|') {
        return Err(format!(
            "version constraint {c:?} is a union (||), which PEP 440 cannot express; use one range"
        ));
    }
    // Join operators to their versions (`>= 1.2` → `>=1.2`), then split on commas and spaces.
    let mut joined = String::new();
    let mut pending_op = false;
    for tok in c.split([',', ' ']).filter(|t| !t.is_empty()) {
        if pending_op {
            joined.push_str(tok);
            pending_op = false;
            continue;
        }
        if !joined.is_empty() {
            joined.push(' ');
        }
        joined.push_str(tok);
        pending_op = tok.chars().all(|ch| "<>=!~^".contains(ch));
    }
    let mut out = Vec::new();
    for tok in joined.split(' ') {
        out.extend(poetry_one(tok).map_err(|why| format!("version constraint {c:?}: {why}"))?);
    }
    Ok(out.join(","))
}

fn poetry_one(tok: &str) -> Result<Vec<String>, String> {
    let version_parts = |v: &str| -> Result<Vec<u64>, String> {
        v.split('.')
            .map(|p| {
                p.parse::<u64>()
                    .map_err(|_| format!("{v:?} is not a release version like 1.2.3"))
            })
            .collect()
    };
    let bump = |parts: &[u64], at: usize| -> String {
        let mut upper: Vec<u64> = parts.iter().take(at + 1).copied().collect();
        upper[at] += 1;
        while upper.len() < parts.len() {
            upper.push(0);
        }
        upper
            .iter()
            .map(u64::to_string)
            .collect::<Vec<_>>()
            .join(".")
    };
    if let Some(v) = tok.strip_prefix('^') {
        let parts = version_parts(v)?;
        // The leftmost non-zero part may not change; `^0.0` and `^0` bump their last part.
        let at = parts
            .iter()
            .position(|p| *p != 0)
            .unwrap_or(parts.len() - 1);
        return Ok(vec![format!(">={v}"), format!("<{}", bump(&parts, at))]);
    }
    if let Some(v) = tok.strip_prefix('~').filter(|v| !v.starts_with('=')) {
        let parts = version_parts(v)?;
        let at = if parts.len() == 1 { 0 } else { 1 };
        return Ok(vec![format!(">={v}"), format!("<{}", bump(&parts, at))]);
    }
    let spec = if tok.starts_with(|c: char| c.is_ascii_digit()) {
        format!("=={tok}")
    } else {
        tok.to_string()
    };
    pep508_rs::pep440_rs::VersionSpecifiers::from_str(&spec)
        .map_err(|e| format!("{tok:?} is not a version constraint ({e})"))?;
    Ok(vec![spec])
}

/// A Poetry `python = "^3.8"` restriction as a marker on `python_full_version`.
fn python_marker(constraint: &str) -> Result<Option<String>, String> {
    let specs = poetry_constraint(constraint)?;
    if specs.is_empty() {
        return Ok(None);
    }
    let parts: Vec<String> = specs
        .split(',')
        .map(|s| {
            let op_len = s
                .find(|c: char| c.is_ascii_digit())
                .ok_or_else(|| format!("python {constraint:?}: {s:?} names no version"))?;
            let (op, v) = s.split_at(op_len);
            Ok(format!("python_full_version {op} '{v}'"))
        })
        .collect::<Result<_, String>>()?;
    Ok(Some(parts.join(" and ")))
}

/// `[tool.poetry.dependencies]` (or a group's `dependencies`), in file order; `python` is the
/// interpreter, not a dependency. `what` names the table in errors.
pub fn poetry_table(table: &toml::Table, what: &str) -> Result<Vec<Declared>, String> {
    let mut out = Vec::new();
    for (name, value) in table {
        if name == "python" {
            continue;
        }
        let err = |why: String| format!("{what}: {name}: {why}");
        if !super::requirements::is_name(name) {
            return Err(err("not a package name".into()));
        }
        let specs: Vec<&toml::Value> = match value {
            toml::Value::Array(a) => a.iter().collect(),
            v => vec![v],
        };
        for spec in specs {
            out.push(declared_entry(name, spec, Flavor::Poetry).map_err(err)?);
        }
    }
    Ok(out)
}

/// A Pipfile's `[packages]` (versions are PEP 440 already; `"*"` is any).
pub fn pipfile_table(table: &toml::Table, what: &str) -> Result<Vec<Declared>, String> {
    let mut out = Vec::new();
    for (name, value) in table {
        let err = |why: String| format!("{what}: {name}: {why}");
        if !super::requirements::is_name(name) {
            return Err(err("not a package name".into()));
        }
        out.push(declared_entry(name, value, Flavor::Pipfile).map_err(err)?);
    }
    Ok(out)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Flavor {
    Poetry,
    Pipfile,
}

fn declared_entry(name: &str, value: &toml::Value, flavor: Flavor) -> Result<Declared, String> {
    let version = |v: &str| -> Result<String, String> {
        match flavor {
            Flavor::Poetry => poetry_constraint(v),
            Flavor::Pipfile if v.trim() == "*" || v.trim().is_empty() => Ok(String::new()),
            Flavor::Pipfile => {
                let v = v.trim();
                let spec = if v.starts_with(|c: char| c.is_ascii_digit()) {
                    format!("=={v}")
                } else {
                    v.to_string()
                };
                pep508_rs::pep440_rs::VersionSpecifiers::from_str(&spec)
                    .map_err(|e| format!("{v:?} is not a PEP 440 version specifier ({e})"))?;
                Ok(spec)
            }
        }
    };
    let (spec, table) = match value {
        toml::Value::String(s) => (version(s)?, None),
        toml::Value::Table(t) => (
            match t.get("version") {
                Some(toml::Value::String(s)) => version(s)?,
                Some(_) => return Err("`version` must be a string".into()),
                None => String::new(),
            },
            Some(t),
        ),
        _ => return Err("expected a version string or a table".into()),
    };
    let Some(t) = table else {
        return Ok(Declared {
            requirement: format!("{name}{spec}"),
            optional: false,
            local: false,
        });
    };
    for key in ["git", "url", "hg", "svn", "file"] {
        if t.contains_key(key) {
            return Err(format!(
                "comes from `{key}`; iac installs dependencies from the operator's index only (or a path in the repository)"
            ));
        }
    }
    if let Some(path) = t.get("path") {
        let path = path.as_str().ok_or("`path` must be a string")?;
        let editable = t
            .get("editable")
            .or_else(|| t.get("develop"))
            .and_then(toml::Value::as_bool)
            .unwrap_or(false);
        let text = format!(
            "{}./{}",
            if editable { "-e " } else { "" },
            path.trim_start_matches("./")
        );
        return Ok(Declared {
            requirement: text,
            optional: false,
            local: true,
        });
    }
    let mut extras = Vec::new();
    if let Some(e) = t.get("extras") {
        let list = e.as_array().ok_or("`extras` must be a list of names")?;
        for x in list {
            let x = x
                .as_str()
                .filter(|x| super::requirements::is_name(x))
                .ok_or("`extras` must be a list of names")?;
            extras.push(x.to_string());
        }
    }
    let mut markers = Vec::new();
    if let Some(m) = t.get("markers") {
        markers.push(format!(
            "({})",
            m.as_str().ok_or("`markers` must be a string")?
        ));
    }
    if let Some(p) = t.get("python") {
        let p = p.as_str().ok_or("`python` must be a string")?;
        if let Some(m) = python_marker(p)? {
            markers.push(format!("({m})"));
        }
    }
    if flavor == Flavor::Pipfile {
        for key in [
            "sys_platform",
            "platform_machine",
            "os_name",
            "python_version",
        ] {
            if let Some(v) = t.get(key) {
                let v = v.as_str().ok_or(format!("`{key}` must be a string"))?;
                // Pipenv writes the operator and the quoted value: `sys_platform = "== 'win32'"`.
                markers.push(format!("{key} {}", v.trim()));
            }
        }
    }
    let mut req = name.to_string();
    if !extras.is_empty() {
        req.push_str(&format!("[{}]", extras.join(",")));
    }
    req.push_str(&spec);
    if !markers.is_empty() {
        req.push_str(" ; ");
        req.push_str(&markers.join(" and "));
    }
    // Checked here so the error names the table entry, not the regenerated string.
    pep508_rs::Requirement::<pep508_rs::VerbatimUrl>::from_str(&req)
        .map_err(|e| format!("makes {req:?}, which is not a PEP 508 requirement ({e})"))?;
    Ok(Declared {
        requirement: req,
        optional: t
            .get("optional")
            .and_then(toml::Value::as_bool)
            .unwrap_or(false),
        local: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn poetry_constraints_become_pep440() {
        let table = [
            ("^1.2.3", ">=1.2.3,<2.0.0"),
            ("^1.2", ">=1.2,<2.0"),
            ("^0.2.3", ">=0.2.3,<0.3.0"),
            ("^0.0.3", ">=0.0.3,<0.0.4"),
            ("^0", ">=0,<1"),
            ("~1.2.3", ">=1.2.3,<1.3.0"),
            ("~1.2", ">=1.2,<1.3"),
            ("~1", ">=1,<2"),
            ("~=1.4", "~=1.4"),
            ("1.2.3", "==1.2.3"),
            ("1.2.*", "==1.2.*"),
            (">=2.0,<3.0", ">=2.0,<3.0"),
            (">= 2.0 < 3.0", ">=2.0,<3.0"),
            ("*", ""),
            ("!=1.5", "!=1.5"),
        ];
        for (poetry, pep440) in table {
            assert_eq!(poetry_constraint(poetry).unwrap(), pep440, "{poetry}");
        }
        for bad in ["^1.2 || ^2.0", "^x.y", ">=banana"] {
            let err = poetry_constraint(bad).unwrap_err();
            assert!(err.contains(bad), "{err}");
        }
    }

    #[test]
    fn poetry_tables_read_in_file_order_with_extras_markers_and_python() {
        let doc: toml::Table = toml::from_str(
            r#"
python = "^3.11"
Django = "^5.0"
uvicorn = { version = "^0.30", extras = ["standard"] }
tomli = { version = ">=2", python = "<3.11" }
pywin32 = { version = "306", markers = "sys_platform == 'win32'" }
redis = { version = "^5", optional = true }
mylib = { path = "libs/mylib", develop = true }
numpy = [
  { version = "^1.26", python = ">=3.9,<3.13" },
  { version = "^2.1", python = ">=3.13" },
]
"#,
        )
        .unwrap();
        let got = poetry_table(&doc, "[tool.poetry.dependencies]").unwrap();
        let reqs: Vec<&str> = got.iter().map(|d| d.requirement.as_str()).collect();
        assert_eq!(
            reqs,
            [
                "Django>=5.0,<6.0",
                "uvicorn[standard]>=0.30,<0.31",
                "tomli>=2 ; (python_full_version < '3.11')",
                "pywin32==306 ; (sys_platform == 'win32')",
                "redis>=5,<6",
                "-e ./libs/mylib",
                "numpy>=1.26,<2.0 ; (python_full_version >= '3.9' and python_full_version < '3.13')",
                "numpy>=2.1,<3.0 ; (python_full_version >= '3.13')",
            ]
        );
        assert!(got[4].optional && !got[0].optional);
        assert!(got[5].local);
        let bad: toml::Table = toml::from_str("x = { git = 'https://github.com/a/b' }").unwrap();
        let err = poetry_table(&bad, "[tool.poetry.dependencies]").unwrap_err();
        assert!(
            err.contains("[tool.poetry.dependencies]: x") && err.contains("git"),
            "{err}"
        );
    }

    #[test]
    fn pipfile_packages_are_pep440_already() {
        let doc: toml::Table = toml::from_str(
            r#"
flask = "*"
gunicorn = "==22.0.0"
requests = { version = ">=2.31", extras = ["socks"] }
pywin32 = { version = "*", sys_platform = "== 'win32'" }
"#,
        )
        .unwrap();
        let got: Vec<String> = pipfile_table(&doc, "Pipfile [packages]")
            .unwrap()
            .into_iter()
            .map(|d| d.requirement)
            .collect();
        assert_eq!(
            got,
            [
                "flask",
                "gunicorn==22.0.0",
                "requests[socks]>=2.31",
                "pywin32 ; sys_platform == 'win32'"
            ]
        );
    }

    #[test]
    fn edges_split_name_extras_and_marker() {
        let e = edge("Uvicorn[Standard]>=0.30 ; python_version >= '3.8'").unwrap();
        assert_eq!(e.name, "uvicorn");
        assert_eq!(e.extras, ["standard"]);
        assert_eq!(e.marker.as_deref(), Some("python_version >= '3.8'"));
        assert_eq!(normalize("Typing_Extensions"), "typing-extensions");
        assert_eq!(normalize("zope.interface"), "zope-interface");
        assert!(edge("not a req!").is_err());
    }
}
