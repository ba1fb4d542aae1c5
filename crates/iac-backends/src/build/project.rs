//! Whether the project itself is installed into the image, decided as its own tool would: a
//! pyproject.toml with `[project]` but no `[build-system]` is a *virtual* project (uv's term):
//! its dependencies are installed, the project is not. Shared by the build
//! ([`super::wheels::AppDeps`]) and entry resolution (`entry::pymeta::PyRepo::installable`), so
//! both agree on whether `src/` packages and console scripts import from an installed copy.

use iac_core::Entry;

/// Entry rules whose command is a console script of the project (rule 2 of DESIGN.md §3).
const CONSOLE_SCRIPT_RULES: &[&str] =
    &["project.scripts", "poetry.scripts", "setup.cfg", "setup.py"];

/// The decision and the sentence saying why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Install {
    /// Whether the project itself is built and installed as a package.
    pub package: bool,
    /// The sentence saying why (shown in `iac inspect` and build events).
    pub why: String,
}

fn get<'a>(doc: &'a toml::Table, path: &[&str]) -> Option<&'a toml::Value> {
    let mut v = doc.get(path[0])?;
    for p in &path[1..] {
        v = v.get(p)?;
    }
    Some(v)
}

/// The rule, from the parsed root pyproject.toml and whether a root setup.py exists:
/// explicit switches first (`[tool.uv] package`, Poetry `package-mode = false`, PDM
/// `distribution = false`), then a declared build backend or a setup.py install it, and a
/// `[project]`/`[tool.poetry]` table alone is a virtual project.
pub fn decide(pyproject: Option<&toml::Table>, setup_py: bool) -> Install {
    let yes = |why: String| Install { package: true, why };
    let no = |why: String| Install {
        package: false,
        why,
    };
    if let Some(doc) = pyproject {
        match get(doc, &["tool", "uv", "package"]).and_then(toml::Value::as_bool) {
            Some(true) => {
                return yes("pyproject.toml sets [tool.uv] package = true".into());
            }
            Some(false) => {
                return no(
                    "pyproject.toml sets [tool.uv] package = false: only its dependencies are installed"
                        .into(),
                );
            }
            None => {}
        }
        if get(doc, &["tool", "poetry", "package-mode"]).and_then(toml::Value::as_bool)
            == Some(false)
        {
            return no(
                "pyproject.toml sets [tool.poetry] package-mode = false: only its dependencies are installed"
                    .into(),
            );
        }
        if get(doc, &["tool", "pdm", "distribution"]).and_then(toml::Value::as_bool) == Some(false)
        {
            return no(
                "pyproject.toml sets [tool.pdm] distribution = false: only its dependencies are installed"
                    .into(),
            );
        }
        if let Some(bs) = doc.get("build-system") {
            let backend = bs
                .get("build-backend")
                .and_then(toml::Value::as_str)
                .unwrap_or("setuptools, the default");
            return yes(format!(
                "pyproject.toml declares a build backend ([build-system], {backend})"
            ));
        }
    }
    if setup_py {
        return yes("the repo has a setup.py".into());
    }
    match pyproject {
        Some(doc) if doc.contains_key("project") || get(doc, &["tool", "poetry"]).is_some() => no(
            "pyproject.toml has no [build-system]: a virtual project (as uv treats it); its dependencies are installed, not the project"
                .into(),
        ),
        _ => no("no build backend (pyproject.toml [build-system]) and no setup.py".into()),
    }
}

/// Why the start command needs the project installed even without a build backend: it runs one
/// of the project's console scripts (chosen by rule 2, or named by a declared command).
pub fn entry_needs_install(entry: &Entry, pyproject: Option<&toml::Table>) -> Option<String> {
    if CONSOLE_SCRIPT_RULES.contains(&entry.rule.as_str()) {
        return Some(format!(
            "the start command is a console script (rule {}), which imports the installed project",
            entry.rule
        ));
    }
    let program = entry.argv.first()?;
    let doc = pyproject?;
    for (table, path) in [
        ("[project.scripts]", &["project", "scripts"][..]),
        ("[tool.poetry.scripts]", &["tool", "poetry", "scripts"][..]),
    ] {
        if get(doc, path)
            .and_then(toml::Value::as_table)
            .is_some_and(|t| t.contains_key(program))
        {
            return Some(format!(
                "the start command runs `{program}`, a console script of {table}, which exists only once the project is installed"
            ));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(text: &str) -> toml::Table {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn a_project_without_build_system_is_virtual() {
        let cases: &[(&str, bool, bool, &str)] = &[
            ("[project]\nname='a'\n", false, false, "virtual project"),
            (
                "[project]\nname='a'\n[build-system]\nrequires=['hatchling']\nbuild-backend='hatchling.build'\n",
                false,
                true,
                "hatchling.build",
            ),
            (
                "[project]\nname='a'\n[tool.uv]\npackage=true\n",
                false,
                true,
                "package = true",
            ),
            (
                "[project]\nname='a'\n[tool.uv]\npackage=false\n[build-system]\nrequires=['x']\n",
                false,
                false,
                "package = false",
            ),
            (
                "[tool.poetry]\nname='a'\npackage-mode=false\n[build-system]\nrequires=['poetry-core']\n",
                false,
                false,
                "package-mode = false",
            ),
            ("[tool.poetry]\nname='a'\n", false, false, "virtual project"),
            (
                "[project]\nname='a'\n[tool.pdm]\ndistribution=false\n",
                true,
                false,
                "distribution = false",
            ),
            ("[tool.black]\nline-length=100\n", true, true, "setup.py"),
            (
                "[tool.black]\nline-length=100\n",
                false,
                false,
                "no build backend",
            ),
        ];
        for (text, setup_py, package, why) in cases {
            let got = decide(Some(&doc(text)), *setup_py);
            assert_eq!(got.package, *package, "{text}: {got:?}");
            assert!(got.why.contains(why), "{text}: {got:?}");
        }
        assert!(!decide(None, false).package);
        assert!(decide(None, true).package);
    }

    #[test]
    fn console_scripts_need_the_project_installed() {
        let entry = |rule: &str, argv: &[&str]| Entry {
            rule: rule.into(),
            argv: argv.iter().map(|s| s.to_string()).collect(),
            ..Entry::default()
        };
        let d = doc("[project]\nname='a'\n[project.scripts]\nserve='a.cli:main'\n");
        assert!(
            entry_needs_install(&entry("project.scripts", &["python", "-c", "x"]), None).is_some()
        );
        let why = entry_needs_install(
            &entry("platform:procfile", &["serve", "--port", "8000"]),
            Some(&d),
        )
        .unwrap();
        assert!(
            why.contains("`serve`") && why.contains("[project.scripts]"),
            "{why}"
        );
        assert!(
            entry_needs_install(
                &entry("platform:procfile", &["gunicorn", "a:app"]),
                Some(&d)
            )
            .is_none()
        );
        assert!(
            entry_needs_install(&entry("main.py", &["python", "/app/main.py"]), Some(&d)).is_none()
        );
    }
}
