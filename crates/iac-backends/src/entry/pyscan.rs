//! Static facts about a repo's Python files, read with [`super::pylex`] (never executed): which
//! names a module imports (and under which local alias), its top-level `NAME = callee(...)`
//! assignments and `def`s, top-level call statements, `if __name__ == "__main__":` guards and
//! `.launch(...)` keyword literals. Also finds the files worth reading (the root and two levels
//! down, skipping tests, docs, virtualenvs and the like) and the import root of a file (how it is
//! imported when run from its first non-package ancestor).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use iac_core::EntryError;

use super::pylex::{self, TokKind, Token};
use super::read_optional;

/// Directories never scanned for app code.
pub const SKIP_DIRS: &[&str] = &[
    "tests",
    "test",
    "testing",
    "examples",
    "example",
    "docs",
    "doc",
    "venv",
    "env",
    "node_modules",
    "migrations",
    "site-packages",
    "build",
    "dist",
    "static",
    "staticfiles",
    "templates",
    "pages",
    "scripts",
    "__pycache__",
];

/// Files larger than this are not scanned.
const MAX_FILE_BYTES: u64 = 1024 * 1024;
/// At most this many files are scanned.
const MAX_FILES: usize = 400;

/// What a Python file says, statically.
#[derive(Debug, Clone, Default)]
pub struct PyFile {
    /// Repo-relative path with `/`.
    pub rel: String,
    /// Local name → fully qualified imported name (`FastAPI` → `fastapi.FastAPI`,
    /// `st` → `streamlit`).
    pub imports: BTreeMap<String, String>,
    /// Top-level `NAME = dotted.callee(` assignments: (name, qualified callee, line).
    pub assigns: Vec<(String, String, usize)>,
    /// Top-level `def NAME(` with their line.
    pub defs: Vec<(String, usize)>,
    /// Qualified callees called anywhere inside each top-level def (for factories).
    pub def_calls: BTreeMap<String, Vec<String>>,
    /// Lines of top-level call statements (`main()`, `bot.run(…)`, `print(…)`).
    pub top_calls: Vec<usize>,
    /// `if __name__ == "__main__":` guard line.
    pub guard: Option<usize>,
    /// `.launch(...)` calls: (line, literal `server_port`).
    pub launches: Vec<(usize, Option<u16>)>,
    /// Qualified names used anywhere (dotted attribute chains resolved through imports).
    pub uses: Vec<String>,
}

impl PyFile {
    /// Whether the module imports `module` (or something under it).
    pub fn imports_module(&self, module: &str) -> bool {
        self.imports
            .values()
            .any(|q| q == module || q.starts_with(&format!("{module}.")))
    }

    /// Whether a qualified name is used (called or referenced).
    pub fn uses_any(&self, names: &[&str]) -> bool {
        self.uses.iter().any(|u| names.contains(&u.as_str()))
    }
}

/// A dotted name starting at `i`: (text, next index).
fn dotted(t: &[Token], i: usize) -> Option<(String, usize)> {
    let first = t.get(i).filter(|x| x.kind == TokKind::Name)?;
    let mut s = first.text.clone();
    let mut j = i + 1;
    while t.get(j).is_some_and(|x| x.is_op("."))
        && let Some(n) = t.get(j + 1).filter(|x| x.kind == TokKind::Name)
    {
        s.push('.');
        s.push_str(&n.text);
        j += 2;
    }
    Some((s, j))
}

/// Resolves `a.b.c` through the import aliases (`gr.Blocks` → `gradio.Blocks`).
fn qualify(imports: &BTreeMap<String, String>, name: &str) -> String {
    let (head, rest) = match name.split_once('.') {
        Some((h, r)) => (h, Some(r)),
        None => (name, None),
    };
    match (imports.get(head), rest) {
        (Some(q), Some(r)) => format!("{q}.{r}"),
        (Some(q), None) => q.clone(),
        (None, _) => name.to_string(),
    }
}

fn read_imports(t: &[Token]) -> BTreeMap<String, String> {
    let mut imports = BTreeMap::new();
    let mut i = 0;
    while i < t.len() {
        if !t[i].line_start {
            i += 1;
            continue;
        }
        if t[i].is_name("import") {
            // import a.b [as c], d
            let mut j = i + 1;
            while let Some((name, next)) = dotted(t, j) {
                j = next;
                if t.get(j).is_some_and(|x| x.is_name("as"))
                    && let Some(alias) = t.get(j + 1)
                {
                    imports.insert(alias.text.clone(), name.clone());
                    j += 2;
                } else {
                    let head = name.split('.').next().unwrap_or(&name).to_string();
                    imports.insert(head.clone(), head);
                }
                if t.get(j).is_some_and(|x| x.is_op(",")) {
                    j += 1;
                } else {
                    break;
                }
            }
            i = j;
        } else if t[i].is_name("from")
            && let Some((module, mut j)) = dotted(t, i + 1)
            && t.get(j).is_some_and(|x| x.is_name("import"))
        {
            j += 1;
            while j < t.len() && t[j].kind != TokKind::Newline {
                let x = &t[j];
                if x.kind == TokKind::Name && x.text != "as" {
                    let alias = if t.get(j + 1).is_some_and(|y| y.is_name("as")) {
                        t.get(j + 2).map(|a| a.text.clone())
                    } else {
                        None
                    };
                    let q = format!("{module}.{}", x.text);
                    match alias {
                        Some(a) => {
                            imports.insert(a, q);
                            j += 3;
                            continue;
                        }
                        None => {
                            imports.insert(x.text.clone(), q);
                        }
                    }
                }
                j += 1;
            }
            i = j;
        } else {
            i += 1;
        }
    }
    imports
}

/// Reads one file's facts from source text.
pub fn analyze(rel: &str, src: &str) -> Result<PyFile, pylex::LexError> {
    let t = pylex::tokenize(src)?;
    let imports = read_imports(&t);
    let mut f = PyFile {
        rel: rel.to_string(),
        guard: pylex::main_guard_line(&t),
        ..PyFile::default()
    };
    let mut current_def: Option<String> = None;
    for i in 0..t.len() {
        let x = &t[i];
        if x.line_start && x.col == 0 {
            current_def = None;
        }
        if x.line_start && x.col == 0 && x.kind == TokKind::Name {
            if (x.text == "def" || x.text == "async")
                && let Some(n) = t[i + 1..]
                    .iter()
                    .find(|y| y.kind == TokKind::Name && y.text != "def")
            {
                f.defs.push((n.text.clone(), x.line));
                current_def = Some(n.text.clone());
                continue;
            }
            // NAME = callee(   or   NAME: T = callee(
            let mut j = i + 1;
            if t.get(j).is_some_and(|y| y.is_op(":")) {
                while j < t.len() && !t[j].is_op("=") && t[j].kind != TokKind::Newline {
                    j += 1;
                }
            }
            if t.get(j).is_some_and(|y| y.is_op("="))
                && let Some((callee, next)) = dotted(&t, j + 1)
                && t.get(next).is_some_and(|y| y.is_op("("))
            {
                f.assigns
                    .push((x.text.clone(), qualify(&imports, &callee), x.line));
            }
            // A top-level call statement: dotted name then `(` … up to the end of the line.
            if !matches!(
                x.text.as_str(),
                "if" | "for" | "while" | "with" | "class" | "import" | "from" | "try" | "def"
            ) && let Some((_, next)) = dotted(&t, i)
                && t.get(next).is_some_and(|y| y.is_op("("))
            {
                f.top_calls.push(x.line);
            }
        }
        if x.kind == TokKind::Name
            && (i == 0 || !(t[i - 1].is_op(".") || t[i - 1].is_name("def")))
            && let Some((name, next)) = dotted(&t, i)
        {
            let q = qualify(&imports, &name);
            if let Some(d) = &current_def
                && t.get(next).is_some_and(|y| y.is_op("("))
            {
                f.def_calls.entry(d.clone()).or_default().push(q.clone());
            }
            if name.ends_with(".launch") && t.get(next).is_some_and(|y| y.is_op("(")) {
                f.launches
                    .push((x.line, kwarg_port(&t, next + 1, "server_port")));
            }
            f.uses.push(q);
        }
    }
    f.imports = imports;
    Ok(f)
}

/// A literal integer keyword argument in the call whose arguments start at `i`.
fn kwarg_port(t: &[Token], mut i: usize, kw: &str) -> Option<u16> {
    let mut depth = 0usize;
    while i < t.len() {
        let x = &t[i];
        if x.kind == TokKind::Op {
            match x.text.as_str() {
                "(" | "[" | "{" => depth += 1,
                ")" | "]" | "}" if depth == 0 => return None,
                ")" | "]" | "}" => depth -= 1,
                _ => {}
            }
        }
        if depth == 0
            && x.is_name(kw)
            && t.get(i + 1).is_some_and(|y| y.is_op("="))
            && let Some(n) = t.get(i + 2).filter(|y| y.kind == TokKind::Number)
        {
            return n.text.parse().ok();
        }
        i += 1;
    }
    None
}

/// The repo's Python files worth reading: the root and two directory levels down, sorted by
/// depth then path, skipping [`SKIP_DIRS`], hidden directories and `test_*.py`/`conftest.py`.
pub fn python_files(dir: &Path) -> Result<Vec<String>, EntryError> {
    let mut out = Vec::new();
    let mut level: Vec<PathBuf> = vec![PathBuf::new()];
    for depth in 0..3 {
        let mut next = Vec::new();
        for rel in &level {
            let abs = dir.join(rel);
            let Ok(rd) = std::fs::read_dir(&abs) else {
                continue;
            };
            let mut entries: Vec<(String, bool)> = rd
                .filter_map(|e| e.ok())
                .filter_map(|e| {
                    let ft = e.file_type().ok()?;
                    (!ft.is_symlink())
                        .then(|| (e.file_name().to_string_lossy().into_owned(), ft.is_dir()))
                })
                .collect();
            entries.sort();
            for (name, is_dir) in entries {
                if name.starts_with('.') {
                    continue;
                }
                let child = rel.join(&name);
                if is_dir {
                    if depth < 2 && !SKIP_DIRS.contains(&name.to_ascii_lowercase().as_str()) {
                        next.push(child);
                    }
                } else if name.ends_with(".py")
                    && !name.starts_with("test_")
                    && !name.ends_with("_test.py")
                    && name != "conftest.py"
                    && name != "setup.py"
                {
                    out.push(child.to_string_lossy().replace('\\', "/"));
                    if out.len() >= MAX_FILES {
                        return Ok(out);
                    }
                }
            }
        }
        level = next;
    }
    Ok(out)
}

/// Reads and analyzes the given files; files that are too large or not valid Python are skipped.
pub fn analyze_files(dir: &Path, rels: &[String]) -> Result<Vec<PyFile>, EntryError> {
    let mut out = Vec::new();
    for rel in rels {
        let path = dir.join(rel);
        if std::fs::metadata(&path).is_ok_and(|m| m.len() > MAX_FILE_BYTES) {
            continue;
        }
        let Some(text) = read_optional(&path)? else {
            continue;
        };
        if let Ok(f) = analyze(rel, &text) {
            out.push(f);
        }
    }
    Ok(out)
}

/// How a file is imported: (import root relative to the repo, `None` = repo root; dotted
/// module). The import root is the nearest ancestor that is not a package (no `__init__.py`).
pub fn import_path(dir: &Path, rel: &str) -> (Option<String>, String) {
    let parts: Vec<&str> = rel.split('/').collect();
    let stem = parts[parts.len() - 1].trim_end_matches(".py");
    let mut root_len = parts.len() - 1;
    while root_len > 0
        && dir
            .join(parts[..root_len].join("/"))
            .join("__init__.py")
            .is_file()
    {
        root_len -= 1;
    }
    let mut module: Vec<&str> = parts[root_len..parts.len() - 1].to_vec();
    if stem != "__init__" {
        module.push(stem);
    }
    let root = (root_len > 0).then(|| parts[..root_len].join("/"));
    (root, module.join("."))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn facts() {
        let f = analyze(
            "app.py",
            "import streamlit as st\nfrom fastapi import FastAPI as F, Depends\nimport gradio as gr\n\napp: F = F(title='x')\n\ndef create_app():\n    return flask.Flask(__name__)\n\nst.title('hi')\nmain()\nwith gr.Blocks() as demo:\n    pass\ndemo.launch(server_name='0.0.0.0', server_port=7861)\nif __name__ == '__main__':\n    run()\n",
        )
        .unwrap();
        assert_eq!(f.imports.get("st").map(String::as_str), Some("streamlit"));
        assert_eq!(
            f.imports.get("F").map(String::as_str),
            Some("fastapi.FastAPI")
        );
        assert_eq!(
            f.assigns,
            [("app".to_string(), "fastapi.FastAPI".to_string(), 5)]
        );
        assert_eq!(f.defs, [("create_app".to_string(), 7)]);
        assert_eq!(f.def_calls["create_app"], ["flask.Flask"]);
        assert_eq!(f.top_calls, [10, 11, 14]);
        assert_eq!(f.guard, Some(15));
        assert_eq!(f.launches, [(14, Some(7861))]);
        assert!(f.uses_any(&["gradio.Blocks"]));
        assert!(f.imports_module("streamlit"));
    }

    #[test]
    fn import_roots() {
        let d = tempfile::tempdir().unwrap();
        for f in [
            "app/__init__.py",
            "app/main.py",
            "svc/main.py",
            "src/pkg/__init__.py",
            "src/pkg/api.py",
        ] {
            let p = d.path().join(f);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, "").unwrap();
        }
        assert_eq!(import_path(d.path(), "main.py"), (None, "main".into()));
        assert_eq!(
            import_path(d.path(), "app/main.py"),
            (None, "app.main".into())
        );
        assert_eq!(
            import_path(d.path(), "svc/main.py"),
            (Some("svc".into()), "main".into())
        );
        assert_eq!(
            import_path(d.path(), "src/pkg/api.py"),
            (Some("src".into()), "pkg.api".into())
        );
        assert_eq!(
            import_path(d.path(), "app/__init__.py"),
            (None, "app".into())
        );
    }
}
