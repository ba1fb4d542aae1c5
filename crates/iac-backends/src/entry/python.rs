//! The Python provider: the last-resort rules 1–5 of DESIGN.md §3 (after overrides, platform
//! declarations and framework detection, see [`super`]), first match wins.
//!
//! 0. an override (found by [`super::overrides`]): `module:function` is called, a command is argv;
//! 1. root `__main__.py` (`python /app`), else root `main.py` (`python /app/main.py`);
//! 2. the first console script in file order from `[project.scripts]`, else
//!    `[tool.poetry.scripts]`, else setup.cfg `[options.entry_points] console_scripts`, else
//!    `entry_points` in setup.py (read statically, never executed: a literal, or a name bound to a
//!    literal, in an `if`/`else` the non-Windows branch); the function is called;
//! 3. `{pkg}/__main__.py` or `src/{pkg}/__main__.py` of a top-level package (`python -m pkg`);
//!    several → the one named like the project, else [`EntryError::Ambiguous`];
//! 4. root `app.py`;
//! 5. exactly one root module with a real top-level `if __name__ == "__main__":` guard (several
//!    → [`EntryError::Ambiguous`]); else (`script`) exactly one root module whose top level calls
//!    something (guard-less script code such as `main()` or `bot.run(TOKEN)`).
//!
//! (The Procfile moved to [`super::platform`] and Django to [`super::django`]: a declared or
//! framework command ranks above these rules.)
//!
//! Container assumptions (what the argv relies on): the repo is at `/app` and is the working
//! directory, `python` is on PATH, and the image runs `pip install /app` when the repo is
//! installable (a build backend or setup.py, see `build::project`; a pyproject.toml without
//! `[build-system]` is a virtual project) or its entry is a console script, and installs its
//! requirements. So console scripts import from the installed package; a `src/`
//! package in a repo that is NOT installable gets `PYTHONPATH=/app/src` through `env`.

use std::path::Path;

use iac_core::{Entry, EntryError, Language};

use super::overrides::{Callable, Override};
use super::pylex;
use super::pymeta::{PyRepo, normalize_name};
use super::pyscan;
use super::{Provider, override_entry, read_optional};

/// Directories whose packages never count for rule 3 (and are never scanned).
const NOT_APP_DIRS: &[&str] = &[
    "tests", "test", "testing", "examples", "example", "docs", "doc",
];

/// Root modules that never count for the `__main__` guard rule (nor do `test_*.py`, `*_test.py`
/// and hidden files). Script-style names such as `run-server.py` do count: they run as scripts.
const NOT_APP_MODULES: &[&str] = &["setup.py", "conftest.py", "noxfile.py", "fabfile.py"];

/// Root Python files larger than this are not scanned for a guard.
const MAX_SCAN_BYTES: u64 = 2 * 1024 * 1024;

type RuleResult = Result<Result<Entry, String>, EntryError>;

/// Resolves Python repositories (rules 0–5).
#[derive(Debug, Clone, Copy, Default)]
pub struct PythonProvider;

/// Whether the tree looks like a Python project: packaging files, a root `*.py`, or a top-level
/// (or `src/`) package.
pub fn looks_like_python(dir: &Path) -> bool {
    let markers = [
        "pyproject.toml",
        "setup.py",
        "setup.cfg",
        "Pipfile",
        "requirements.txt",
        "manage.py",
    ];
    if markers.iter().any(|m| dir.join(m).is_file()) {
        return true;
    }
    if root_py_files(dir).is_ok_and(|f| !f.is_empty()) {
        return true;
    }
    [dir.to_path_buf(), dir.join("src")].iter().any(|d| {
        std::fs::read_dir(d).is_ok_and(|rd| {
            rd.filter_map(|e| e.ok()).any(|e| {
                e.path().join("__init__.py").is_file() || e.path().join("__main__.py").is_file()
            })
        })
    })
}

fn entry(rule: &str, argv: Vec<String>, why: String) -> Entry {
    Entry {
        language: Language::Python,
        rule: rule.to_string(),
        argv,
        why,
        ..Entry::default()
    }
}

fn strs(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

impl Provider for PythonProvider {
    fn name(&self) -> &'static str {
        "python"
    }

    fn detect(&self, dir: &Path) -> bool {
        looks_like_python(dir)
    }

    fn plan(&self, dir: &Path, over: Option<&Override>) -> Result<Entry, EntryError> {
        if let Some(o) = over {
            return Ok(override_entry(o, Language::Python));
        }
        let repo = PyRepo::load(dir)?;
        let rules: [fn(&PyRepo) -> RuleResult; 9] = [
            rule_main_module,
            rule_project_scripts,
            rule_poetry_scripts,
            rule_setup_cfg,
            rule_setup_py,
            rule_package_main,
            rule_app_py,
            rule_main_guard,
            rule_script,
        ];
        let mut tried = Vec::new();
        for rule in rules {
            match rule(&repo)? {
                Ok(e) => return Ok(e),
                Err(miss) => tried.push(miss),
            }
        }
        Err(EntryError::NotFound {
            dir: dir.to_path_buf(),
            tried,
        })
    }
}

fn rule_main_module(repo: &PyRepo) -> RuleResult {
    if repo.dir.join("__main__.py").is_file() {
        return Ok(Ok(entry(
            "main-module",
            strs(&["python", "/app"]),
            "__main__.py at the repo root runs the repo directory as a script (rule 1)."
                .to_string(),
        )));
    }
    if repo.dir.join("main.py").is_file() {
        return Ok(Ok(entry(
            "main.py",
            strs(&["python", "/app/main.py"]),
            "main.py at the repo root is run as a script (rule 1).".to_string(),
        )));
    }
    Ok(Err("rule 1 (main-module, main.py): looked for __main__.py and main.py at the repo root; neither exists".to_string()))
}

fn script_entry(
    rule: &str,
    what: &str,
    name: &str,
    target: &Callable,
    location: &str,
    installable: bool,
) -> Entry {
    let install = if installable {
        "; the image pip-installs the repo so it imports"
    } else {
        "; the image pip-installs the repo for it (a console script needs the installed project)"
    };
    entry(
        rule,
        target.argv(),
        format!(
            "the first console script in {what} is `{name}` = `{target}` ({location}); it is called directly (rule 2{install})."
        ),
    )
}

fn rule_project_scripts(repo: &PyRepo) -> RuleResult {
    let miss = |found: &str| {
        format!(
            "rule 2 (project.scripts): looked for the first entry of [project.scripts] in pyproject.toml; {found}"
        )
    };
    if repo.pyproject.is_none() {
        return Ok(Err(miss("there is no pyproject.toml")));
    }
    Ok(match repo.project_script()? {
        Some(s) => Ok(script_entry(
            "project.scripts",
            "[project.scripts]",
            &s.name,
            &s.target,
            &s.location,
            repo.installable(),
        )),
        None => Err(miss(
            "pyproject.toml has no (or an empty) [project.scripts] table",
        )),
    })
}

fn rule_poetry_scripts(repo: &PyRepo) -> RuleResult {
    let miss = |found: &str| {
        format!(
            "rule 2 (poetry.scripts): looked for the first console script of [tool.poetry.scripts] in pyproject.toml; {found}"
        )
    };
    if repo.pyproject.is_none() {
        return Ok(Err(miss("there is no pyproject.toml")));
    }
    Ok(match repo.poetry_script()? {
        Some(s) => Ok(script_entry(
            "poetry.scripts",
            "[tool.poetry.scripts]",
            &s.name,
            &s.target,
            &s.location,
            repo.installable(),
        )),
        None => Err(miss(
            "pyproject.toml has no console script in [tool.poetry.scripts]",
        )),
    })
}

fn rule_setup_cfg(repo: &PyRepo) -> RuleResult {
    let miss = |found: &str| {
        format!(
            "rule 2 (setup.cfg): looked for the first line of `console_scripts` in setup.cfg [options.entry_points]; {found}"
        )
    };
    if repo.setup_cfg.is_none() {
        return Ok(Err(miss("there is no setup.cfg")));
    }
    Ok(match repo.setup_cfg_script()? {
        Some(s) => Ok(script_entry(
            "setup.cfg",
            "setup.cfg [options.entry_points] console_scripts",
            &s.name,
            &s.target,
            &s.location,
            repo.installable(),
        )),
        None => Err(miss(
            "setup.cfg has no console_scripts in [options.entry_points]",
        )),
    })
}

fn rule_setup_py(repo: &PyRepo) -> RuleResult {
    Ok(match repo.setup_py_script()? {
        Ok(s) => Ok(script_entry(
            "setup.py",
            "setup.py `entry_points` console_scripts (read statically)",
            &s.name,
            &s.target,
            &s.location,
            repo.installable(),
        )),
        Err(found) => Err(format!(
            "rule 2 (setup.py): looked for a literal `entry_points` console_scripts in setup.py's setup(...) call, read without running it; {found}"
        )),
    })
}

/// A rule-3 candidate.
#[derive(Debug, Clone)]
struct PackageMain {
    name: String,
    /// Relative path of the `__main__.py`, e.g. `src/pkg/__main__.py`.
    rel: String,
    src: bool,
}

fn is_identifier(s: &str) -> bool {
    let mut c = s.chars();
    c.next().is_some_and(|f| f == '_' || f.is_alphabetic())
        && c.all(|x| x == '_' || x.is_alphanumeric())
}

fn package_mains(dir: &Path) -> Result<Vec<PackageMain>, EntryError> {
    let mut out = Vec::new();
    for (base, src) in [(dir.to_path_buf(), false), (dir.join("src"), true)] {
        let rd = match std::fs::read_dir(&base) {
            Ok(rd) => rd,
            Err(e)
                if e.kind() == std::io::ErrorKind::NotFound
                    || e.kind() == std::io::ErrorKind::NotADirectory =>
            {
                continue;
            }
            Err(source) => return Err(EntryError::Io { path: base, source }),
        };
        let mut names: Vec<String> = rd
            .filter_map(|e| e.ok())
            .filter(|e| e.path().is_dir())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| {
                is_identifier(n) && !NOT_APP_DIRS.contains(&n.as_str()) && !(src && n == "src")
            })
            .filter(|n| base.join(n).join("__main__.py").is_file())
            .collect();
        names.sort();
        let prefix = if src { "src/" } else { "" };
        out.extend(names.into_iter().map(|name| PackageMain {
            rel: format!("{prefix}{name}/__main__.py"),
            name,
            src,
        }));
    }
    Ok(out)
}

fn rule_package_main(repo: &PyRepo) -> RuleResult {
    let cands = package_mains(&repo.dir)?;
    let (chosen, note) = match cands.len() {
        0 => {
            return Ok(Err(
                "rule 3 (package-main): looked for {pkg}/__main__.py and src/{pkg}/__main__.py in top-level packages (tests/, test/, examples/, docs/ and nested packages never count); none found"
                    .to_string(),
            ));
        }
        1 => (cands[0].clone(), String::new()),
        _ => {
            let (project, from) = repo.project_name();
            let want = normalize_name(&project);
            let matching: Vec<&PackageMain> = cands
                .iter()
                .filter(|c| normalize_name(&c.name) == want)
                .collect();
            if matching.len() != 1 {
                return Err(EntryError::Ambiguous {
                    rule: "rule 3 (package-main)".to_string(),
                    candidates: cands.iter().map(|c| c.rel.clone()).collect(),
                    hint: format!(
                        "{} named like the project {project:?} (from {from}); pick one with an entrypoint override (repos-file `entrypoint`, `LABEL ENTRYPOINT=` in the Dockerfile, or `[tool.iac] entrypoint` in pyproject.toml)",
                        if matching.is_empty() {
                            "none is"
                        } else {
                            "more than one is"
                        }
                    ),
                });
            }
            let others: Vec<&str> = cands
                .iter()
                .filter(|c| c.rel != matching[0].rel)
                .map(|c| c.rel.as_str())
                .collect();
            (
                matching[0].clone(),
                format!(
                    ", chosen over {} because it is named like the project {project:?} (from {from})",
                    others.join(", ")
                ),
            )
        }
    };
    let (argv, how) = if chosen.src && !repo.installable() {
        (
            strs(&["env", "PYTHONPATH=/app/src", "python", "-m", &chosen.name]),
            "; the repo is not pip-installable, so PYTHONPATH=/app/src makes it importable",
        )
    } else if chosen.src {
        (
            strs(&["python", "-m", &chosen.name]),
            "; the image pip-installs the repo, so the src/ package imports",
        )
    } else {
        (strs(&["python", "-m", &chosen.name]), "")
    };
    Ok(Ok(entry(
        "package-main",
        argv,
        format!(
            "{} makes package `{}` runnable with `python -m {}`{note}{how} (rule 3).",
            chosen.rel, chosen.name, chosen.name
        ),
    )))
}

fn rule_app_py(repo: &PyRepo) -> RuleResult {
    if repo.dir.join("app.py").is_file() {
        return Ok(Ok(entry(
            "app.py",
            strs(&["python", "/app/app.py"]),
            "app.py at the repo root is run as a script (rule 4).".to_string(),
        )));
    }
    Ok(Err(
        "rule 4 (app.py): looked for app.py at the repo root; it does not exist".to_string(),
    ))
}

/// Root `*.py` files, sorted.
fn root_py_files(dir: &Path) -> Result<Vec<String>, EntryError> {
    let rd = std::fs::read_dir(dir).map_err(|source| EntryError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let mut names: Vec<String> = rd
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_file())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".py"))
        .collect();
    names.sort();
    Ok(names)
}

fn rule_main_guard(repo: &PyRepo) -> RuleResult {
    let mut guarded = Vec::new();
    let mut skipped = Vec::new();
    for name in root_py_files(&repo.dir)? {
        let stem = &name[..name.len() - 3];
        if NOT_APP_MODULES.contains(&name.as_str())
            || stem.starts_with("test_")
            || stem.ends_with("_test")
            || stem.starts_with('.')
        {
            continue;
        }
        let path = repo.dir.join(&name);
        let size = std::fs::metadata(&path)
            .map_err(|source| EntryError::Io {
                path: path.clone(),
                source,
            })?
            .len();
        if size > MAX_SCAN_BYTES {
            skipped.push(format!("{name} (larger than {MAX_SCAN_BYTES} bytes)"));
            continue;
        }
        let Some(text) = read_optional(&path)? else {
            continue;
        };
        match pylex::tokenize(&text) {
            Ok(toks) => {
                if let Some(line) = pylex::main_guard_line(&toks) {
                    guarded.push((name, line));
                }
            }
            Err(e) => skipped.push(format!("{name} (not valid Python: {e})")),
        }
    }
    let skipped_note = if skipped.is_empty() {
        String::new()
    } else {
        format!("; skipped {}", skipped.join(", "))
    };
    match guarded.len() {
        0 => Ok(Err(format!(
            "rule 5 (main-guard): looked for exactly one root module with a top-level `if __name__ == \"__main__\":` guard (setup.py, conftest.py, test_*.py and docs/ never count); none found{skipped_note}"
        ))),
        1 => {
            let (name, line) = &guarded[0];
            Ok(Ok(entry(
                "main-guard",
                vec!["python".to_string(), format!("/app/{name}")],
                format!("{name} line {line} has the only top-level `if __name__ == \"__main__\":` guard among the root modules (rule 5)."),
            )))
        }
        _ => Err(EntryError::Ambiguous {
            rule: "rule 5 (main-guard)".to_string(),
            candidates: guarded.iter().map(|(n, l)| format!("{n} (line {l})")).collect(),
            hint: "several root modules have a top-level `if __name__ == \"__main__\":` guard; pick one with an entrypoint override (repos-file `entrypoint`, `LABEL ENTRYPOINT=` in the Dockerfile, or `[tool.iac] entrypoint` in pyproject.toml)".to_string(),
        }),
    }
}

fn rule_script(repo: &PyRepo) -> RuleResult {
    let mut with_calls = Vec::new();
    for name in root_py_files(&repo.dir)? {
        let stem = &name[..name.len() - 3];
        if NOT_APP_MODULES.contains(&name.as_str())
            || stem.starts_with("test_")
            || stem.ends_with("_test")
            || stem.starts_with('.')
        {
            continue;
        }
        let path = repo.dir.join(&name);
        if std::fs::metadata(&path).is_ok_and(|m| m.len() > MAX_SCAN_BYTES) {
            continue;
        }
        let Some(text) = read_optional(&path)? else {
            continue;
        };
        if let Ok(f) = pyscan::analyze(&name, &text)
            && let Some(line) = f.top_calls.first()
        {
            with_calls.push((name, *line));
        }
    }
    match with_calls.as_slice() {
        [] => Ok(Err(
            "rule 5 (script): looked for exactly one root module whose top level calls something (guard-less script code); none found".to_string(),
        )),
        [(name, line)] => Ok(Ok(entry(
            "script",
            vec!["python".to_string(), format!("/app/{name}")],
            format!("{name} is the only root module with top-level code to run (a call on line {line}, no `__main__` guard), so it runs as a script (rule 5)."),
        ))),
        several => Ok(Err(format!(
            "rule 5 (script): several root modules have top-level calls ({}); none is chosen",
            several
                .iter()
                .map(|(n, l)| format!("{n} line {l}"))
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}
