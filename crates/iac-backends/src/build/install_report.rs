//! The install plan for people: what `iac inspect` shows (text and `--json` under `"install"`)
//! — what is installed from which file, which lock pins it, whether the project itself is
//! installed and why, which source distributions will be built, and what was left out. Made from
//! [`AppDeps`] and [`DepPlan`], the same values the build acts on; reads files only.

use std::path::Path;

use iac_core::Entry;
use serde::Serialize;

use super::lockfile::Selection;
use super::wheels::{AppDeps, DepPlan};

/// One requirement and the file it was read from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Installed {
    /// The requirement, as pip gets it.
    pub requirement: String,
    /// The file (and line) it came from, or the lock file.
    pub from: String,
}

/// The install plan of one app.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct InstallReport {
    /// The CPython `X.Y` markers were evaluated for.
    pub python: String,
    /// The file the dependencies are read from (`uv.lock`, `requirements.txt`, …, or `nothing`).
    pub source: String,
    /// The lock that pins every version, if any.
    pub pinned_by: Option<String>,
    /// Dependency files present but not read, with why.
    pub not_read: Vec<String>,
    /// Whether the project itself is built and installed, and why (or why not).
    pub project_installed: bool,
    /// Why the project is (or is not) installed as a package.
    pub project_why: String,
    /// Requirements from the index, each with where it was read.
    pub requirements: Vec<Installed>,
    /// Constraints (from `-c` files).
    pub constraints: Vec<String>,
    /// Built and installed from the tree inside the image (`.` is the project itself).
    pub local: Vec<String>,
    /// Packages with no wheel for the image in the lock: built from source in the resolver.
    pub sdists: Vec<String>,
    /// Left out: dev groups, extras not asked for, markers false on this Python.
    pub skipped: Vec<String>,
    /// Debian packages from apt.txt / Aptfile, installed into a derived base image.
    pub apt: Vec<String>,
    /// Extras and groups asked for.
    pub extras: Vec<String>,
    /// Dependency groups asked for.
    pub groups: Vec<String>,
}

impl InstallReport {
    /// The plan for the tree at `dir` with the resolved `entry`, for CPython `python`.
    pub fn of(
        dir: &Path,
        entry: &Entry,
        selection: &Selection,
        python: (u32, u32),
    ) -> Result<InstallReport, String> {
        let deps = AppDeps::detect(dir, Some(entry), selection).map_err(|e| e.to_string())?;
        let plan = DepPlan::from_tree(dir, &deps, python)?;
        let apt = super::aptfile::read(dir)?;
        Ok(InstallReport {
            apt: apt
                .map(|a| {
                    a.packages
                        .into_iter()
                        .map(|p| format!("{p}  [{}]", a.file))
                        .collect()
                })
                .unwrap_or_default(),
            python: format!("{}.{}", python.0, python.1),
            source: deps.source.describe(),
            pinned_by: plan.pinned_by.clone(),
            not_read: deps.ignored.clone(),
            project_installed: deps.package,
            project_why: deps.package_why.clone(),
            requirements: plan
                .requirements
                .iter()
                .zip(&plan.sources)
                .map(|(r, from)| Installed {
                    requirement: r.requirement.clone(),
                    from: from.clone(),
                })
                .collect(),
            constraints: plan.install_constraints(),
            local: plan.local.clone(),
            sdists: plan.sdists.clone(),
            skipped: plan.skipped.clone(),
            extras: selection.extras.clone(),
            groups: selection.groups.clone(),
        })
    }

    /// `(label, value)` rows for a text report; an empty label continues the row above.
    pub fn rows(&self) -> Vec<(&'static str, String)> {
        let mut rows = vec![(
            "install",
            format!(
                "from {}{} (markers for CPython {})",
                self.source,
                self.pinned_by
                    .as_ref()
                    .filter(|l| **l != self.source)
                    .map(|l| format!(", pinned by {l}"))
                    .unwrap_or_default(),
                self.python
            ),
        )];
        let mut more = |label: &'static str, items: Vec<String>| {
            for (i, v) in items.into_iter().enumerate() {
                rows.push((if i == 0 { label } else { "" }, v));
            }
        };
        more(
            "project",
            vec![format!(
                "{}: {}",
                if self.project_installed {
                    "installed"
                } else {
                    "not installed"
                },
                self.project_why
            )],
        );
        more(
            "deps",
            self.requirements
                .iter()
                .map(|r| format!("{}  [{}]", r.requirement, r.from))
                .collect(),
        );
        more(
            "local",
            self.local
                .iter()
                .map(|l| format!("{l}  (built in the image)"))
                .collect(),
        );
        more(
            "sdists",
            self.sdists
                .iter()
                .map(|s| format!("{s}  (no wheel for the image: built in the resolver container)"))
                .collect(),
        );
        more("apt", self.apt.clone());
        more("skipped", self.skipped.clone());
        more("not read", self.not_read.clone());
        rows
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_report_says_where_each_requirement_comes_from_and_why_the_project_is_not_installed() {
        let d = tempfile::tempdir().unwrap();
        let from = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/locks/uv");
        for f in ["uv.lock", "pyproject.toml"] {
            std::fs::copy(from.join(f), d.path().join(f)).unwrap();
        }
        std::fs::write(d.path().join("requirements.txt"), "fastapi\n").unwrap();
        std::fs::write(d.path().join("apt.txt"), "libyaml-dev\n").unwrap();
        let entry = Entry {
            rule: "framework:asgi".into(),
            argv: vec!["uvicorn".into(), "main:app".into()],
            ..Entry::default()
        };
        let r = InstallReport::of(d.path(), &entry, &Selection::default(), (3, 11)).unwrap();
        assert_eq!(r.source, "uv.lock");
        assert!(!r.project_installed);
        let text: Vec<String> = r.rows().iter().map(|(k, v)| format!("{k:<9}{v}")).collect();
        let text = text.join("\n");
        for needle in [
            "install  from uv.lock (markers for CPython 3.11)",
            "project  not installed: pyproject.toml has no [build-system]: a virtual project",
            "deps     fastapi==0.115.12  [uv.lock (via the project)]",
            "sdists   uvloop 0.21.0  (no wheel for the image: built in the resolver container)",
            "skipped  uv.lock: dependency group dev left out (pytest, ruff)",
            "not read requirements.txt: not read, uv.lock comes first",
            "apt      libyaml-dev  [apt.txt]",
        ] {
            assert!(text.contains(needle), "{needle:?} in\n{text}");
        }
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["pinned_by"], "uv.lock");
        assert_eq!(json["project_installed"], false);
        assert!(
            json["requirements"][0]["from"]
                .as_str()
                .unwrap()
                .starts_with("uv.lock")
        );
    }
}
