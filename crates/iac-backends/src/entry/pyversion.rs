//! The Python version a repo asks for, chosen among the versions iac can provide
//! ([`AVAILABLE_PYTHONS`]: 3.11 from Debian bookworm, 3.13 from trixie, 3.14 from unstable).
//!
//! Sources, all read statically:
//! * pins (the first found wins): `.python-version` (pyenv/uv; first non-comment line, e.g.
//!   `3.14`, `3.12.4`, `python-3.12`), `runtime.txt` (`python-3.11.6`), Pipfile `[requires]
//!   python_version` / `python_full_version`, `.tool-versions` (`python 3.12.1`);
//! * ranges (all must hold): pyproject `[project] requires-python` (PEP 440 specifiers) and
//!   poetry's `[tool.poetry.dependencies] python` (`^3.10`, `~3.11`, `>=3.9,<4.0`, `3.11.*`, `||`).
//!
//! Choice: with a pin, exactly the pinned minor when available; otherwise the nearest higher
//! available minor that still satisfies every range (the repo's pin is honoured). Without a pin,
//! ranges only say what works, so the stable default ([`DEFAULT_PYTHON`], `images.default_python`)
//! when it satisfies every range; otherwise the satisfying minor nearest to the default, a higher
//! one first (`>=3.12` → 3.13, not the unstable 3.14). No source → `None` (the default). Nothing
//! satisfiable → [`EntryError::PythonVersion`] naming the file, the constraint and the
//! available versions.
//!
//! Specifiers are evaluated per minor version: `3.Y` satisfies a specifier set when some patch
//! release `3.Y.p` does (images track the latest patch of their minor). The small parser here
//! covers PEP 440 release specifiers (`== != < <= > >= ~= ===`, `.*` wildcards) and poetry's
//! caret/tilde/wildcard/`||` forms; pre-release and local segments are not needed for
//! interpreter versions and are rejected with a clear message.

use std::path::Path;

use iac_core::{EntryError, PythonVersion};

use super::read_optional;

/// The Python minors iac can provide offline, ascending.
pub const AVAILABLE_PYTHONS: &[(u32, u32)] = &[(3, 11), (3, 13), (3, 14)];

/// The Python of a repo that names none, and the preferred one when a range allows it.
pub const DEFAULT_PYTHON: (u32, u32) = (3, 11);

/// A release version (`3`, `3.11`, `3.11.4`) — missing parts are zero when compared.
type Release = Vec<u32>;

fn parse_release(s: &str) -> Result<Release, String> {
    let s = s.trim();
    if s.is_empty() {
        return Err("an empty version".to_string());
    }
    s.split('.')
        .map(|p| {
            p.parse::<u32>()
                .map_err(|_| format!("{s:?} is not a release version like 3.12 or 3.12.1"))
        })
        .collect()
}

fn cmp_release(a: &[u32], b: &[u32]) -> std::cmp::Ordering {
    let n = a.len().max(b.len());
    for i in 0..n {
        let (x, y) = (
            a.get(i).copied().unwrap_or(0),
            b.get(i).copied().unwrap_or(0),
        );
        if x != y {
            return x.cmp(&y);
        }
    }
    std::cmp::Ordering::Equal
}

/// One clause: operator and version (with `.*` wildcard flag).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Clause {
    op: &'static str,
    version: Release,
    wildcard: bool,
}

impl Clause {
    fn matches(&self, v: &[u32]) -> bool {
        use std::cmp::Ordering::*;
        let prefix_eq =
            |pre: &[u32]| v.iter().zip(pre).all(|(a, b)| a == b) && v.len() >= pre.len();
        match (self.op, self.wildcard) {
            ("==", true) => prefix_eq(&self.version),
            ("!=", true) => !prefix_eq(&self.version),
            ("==" | "===", false) => cmp_release(v, &self.version) == Equal,
            ("!=", false) => cmp_release(v, &self.version) != Equal,
            ("<", _) => cmp_release(v, &self.version) == Less,
            ("<=", _) => cmp_release(v, &self.version) != Greater,
            (">", _) => cmp_release(v, &self.version) == Greater,
            (">=", _) => cmp_release(v, &self.version) != Less,
            ("~=", _) => {
                let prefix = &self.version[..self.version.len() - 1];
                cmp_release(v, &self.version) != Less && prefix_eq(prefix)
            }
            _ => false,
        }
    }
}

/// A constraint: alternatives (`||`) of clause sets (all must hold).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Constraint {
    alternatives: Vec<Vec<Clause>>,
}

fn parse_clause(c: &str) -> Result<Vec<Clause>, String> {
    let c = c.trim();
    if c.is_empty() || c == "*" {
        return Ok(Vec::new());
    }
    for bad in ["a", "b", "rc", "dev", "post", "+"] {
        if c.trim_start_matches(|ch: char| !ch.is_ascii_digit())
            .contains(bad)
        {
            return Err(format!(
                "{c:?} uses a pre/post/dev/local version, which interpreter constraints do not need"
            ));
        }
    }
    // Poetry caret and tilde.
    if let Some(v) = c.strip_prefix('^') {
        let r = parse_release(v)?;
        let idx = r.iter().position(|x| *x != 0).unwrap_or(r.len() - 1);
        let mut upper = r[..=idx].to_vec();
        upper[idx] += 1;
        return Ok(vec![
            Clause {
                op: ">=",
                version: r,
                wildcard: false,
            },
            Clause {
                op: "<",
                version: upper,
                wildcard: false,
            },
        ]);
    }
    if let Some(v) = c.strip_prefix('~').filter(|v| !v.starts_with('=')) {
        let r = parse_release(v)?;
        let mut upper = if r.len() >= 2 {
            r[..2].to_vec()
        } else {
            r.clone()
        };
        let last = upper.len() - 1;
        upper[last] += 1;
        return Ok(vec![
            Clause {
                op: ">=",
                version: r,
                wildcard: false,
            },
            Clause {
                op: "<",
                version: upper,
                wildcard: false,
            },
        ]);
    }
    let ops = ["===", "~=", "==", "!=", "<=", ">=", "<", ">"];
    let (op, rest) = match ops.iter().find(|o| c.starts_with(**o)) {
        Some(o) => (*o, &c[o.len()..]),
        None => ("==", c),
    };
    let rest = rest.trim();
    let (v, wildcard) = match rest.strip_suffix(".*") {
        Some(v) => (v, true),
        None => (rest, false),
    };
    if wildcard && !matches!(op, "==" | "!=") {
        return Err(format!("{c:?}: `.*` is only allowed with == and !="));
    }
    let version = parse_release(v)?;
    if op == "~=" && version.len() < 2 {
        return Err(format!("{c:?}: ~= needs at least two version parts"));
    }
    Ok(vec![Clause {
        op,
        version,
        wildcard,
    }])
}

impl Constraint {
    /// Parses a PEP 440 specifier set or a poetry constraint.
    pub fn parse(s: &str) -> Result<Constraint, String> {
        let mut alternatives = Vec::new();
        for alt in s.split("||") {
            let mut clauses = Vec::new();
            // PEP 440 separates with commas; poetry also allows spaces (`>=3.8 <4`).
            for part in alt.split(',') {
                let part = part.trim();
                let mut tokens: Vec<String> = Vec::new();
                for w in part.split_whitespace() {
                    match tokens.last_mut() {
                        Some(last)
                            if ["==", "!=", "<=", ">=", "<", ">", "~=", "^", "~", "==="]
                                .contains(&last.as_str()) =>
                        {
                            last.push_str(w)
                        }
                        _ => tokens.push(w.to_string()),
                    }
                }
                for t in tokens {
                    clauses.extend(parse_clause(&t)?);
                }
            }
            alternatives.push(clauses);
        }
        Ok(Constraint { alternatives })
    }

    /// Whether some patch release of `major.minor` satisfies the constraint.
    pub fn allows_minor(&self, major: u32, minor: u32) -> bool {
        (0..100).any(|p| {
            let v = [major, minor, p];
            self.alternatives
                .iter()
                .any(|clauses| clauses.iter().all(|c| c.matches(&v)))
        })
    }
}

/// A range constraint and where it came from.
struct Range {
    file: &'static str,
    label: String,
    raw: String,
    constraint: Constraint,
}

/// A pinned minor and where it came from.
struct Pin {
    file: &'static str,
    label: String,
    minor: (u32, u32),
    raw: String,
}

fn available_list(available: &[(u32, u32)]) -> String {
    available
        .iter()
        .map(|(a, b)| format!("{a}.{b}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn pin_from(raw: &str, file: &'static str, label: String, dir: &Path) -> Result<Pin, EntryError> {
    let v = raw
        .trim()
        .trim_start_matches("python-")
        .trim_start_matches("python")
        .trim_start_matches("cpython-")
        .trim();
    let r =
        parse_release(v.split(['-', '+']).next().unwrap_or(v)).map_err(|e| EntryError::Parse {
            file: dir.join(file),
            message: format!("{label}: {e} (expected a CPython version such as 3.12)"),
        })?;
    if r.len() < 2 {
        return Err(EntryError::Parse {
            file: dir.join(file),
            message: format!("{label}: {raw:?} names no minor version (expected e.g. 3.12)"),
        });
    }
    Ok(Pin {
        file,
        label,
        minor: (r[0], r[1]),
        raw: raw.trim().to_string(),
    })
}

fn first_line(text: &str) -> Option<(usize, &str)> {
    text.lines()
        .enumerate()
        .map(|(i, l)| (i + 1, l.trim()))
        .find(|(_, l)| !l.is_empty() && !l.starts_with('#'))
}

fn toml_file(dir: &Path, name: &str) -> Result<Option<toml::Table>, EntryError> {
    let path = dir.join(name);
    match read_optional(&path)? {
        None => Ok(None),
        Some(text) => text
            .parse()
            .map(Some)
            .map_err(|e: toml::de::Error| EntryError::Parse {
                file: path,
                message: e.to_string(),
            }),
    }
}

/// The Python version for the repo at `dir`, chosen among `available` (ascending minors) with
/// `default` preferred for ranges.
pub fn choose(
    dir: &Path,
    available: &[(u32, u32)],
    default: (u32, u32),
) -> Result<Option<PythonVersion>, EntryError> {
    let mut pin: Option<Pin> = None;
    if let Some(text) = read_optional(&dir.join(".python-version"))?
        && let Some((n, l)) = first_line(&text)
    {
        pin = Some(pin_from(
            l,
            ".python-version",
            format!(".python-version line {n}"),
            dir,
        )?);
    }
    if pin.is_none()
        && let Some(text) = read_optional(&dir.join("runtime.txt"))?
        && let Some((n, l)) = first_line(&text)
    {
        pin = Some(pin_from(
            l,
            "runtime.txt",
            format!("runtime.txt line {n}"),
            dir,
        )?);
    }
    let pipfile = toml_file(dir, "Pipfile")?;
    if pin.is_none()
        && let Some(req) = pipfile.as_ref().and_then(|p| p.get("requires"))
        && let Some((key, v)) = ["python_full_version", "python_version"]
            .iter()
            .find_map(|k| req.get(*k).and_then(|v| v.as_str()).map(|v| (*k, v)))
    {
        pin = Some(pin_from(
            v,
            "Pipfile",
            format!("Pipfile [requires] {key}"),
            dir,
        )?);
    }
    if pin.is_none()
        && let Some(text) = read_optional(&dir.join(".tool-versions"))?
        && let Some((n, l)) = text
            .lines()
            .enumerate()
            .find(|(_, l)| l.trim_start().starts_with("python "))
    {
        let v = l.split_whitespace().nth(1).unwrap_or("");
        pin = Some(pin_from(
            v,
            ".tool-versions",
            format!(".tool-versions line {}", n + 1),
            dir,
        )?);
    }
    let mut ranges: Vec<Range> = Vec::new();
    if let Some(py) = toml_file(dir, "pyproject.toml")? {
        let mut add = |raw: &str, label: &str| -> Result<(), EntryError> {
            let constraint = Constraint::parse(raw).map_err(|e| EntryError::Parse {
                file: dir.join("pyproject.toml"),
                message: format!("{label} {raw:?}: {e}"),
            })?;
            ranges.push(Range {
                file: "pyproject.toml",
                label: label.to_string(),
                raw: raw.to_string(),
                constraint,
            });
            Ok(())
        };
        if let Some(r) = py
            .get("project")
            .and_then(|p| p.get("requires-python"))
            .and_then(|v| v.as_str())
        {
            add(r, "[project] requires-python")?;
        }
        if let Some(r) = py
            .get("tool")
            .and_then(|t| t.get("poetry"))
            .and_then(|p| p.get("dependencies"))
            .and_then(|d| d.get("python"))
            .and_then(|v| v.as_str())
        {
            add(r, "[tool.poetry.dependencies] python")?;
        }
    }
    if pin.is_none() && ranges.is_empty() {
        return Ok(None);
    }
    let satisfies_ranges =
        |(a, b): (u32, u32)| ranges.iter().all(|r| r.constraint.allows_minor(a, b));
    let range_text = ranges
        .iter()
        .map(|r| format!("{} {:?}", r.label, r.raw))
        .collect::<Vec<_>>()
        .join(" and ");
    if let Some(p) = pin {
        let choice = available
            .iter()
            .copied()
            .filter(|m| *m >= p.minor && satisfies_ranges(*m))
            .min();
        return match choice {
            Some(m) if m == p.minor => Ok(Some(PythonVersion {
                version: format!("{}.{}", m.0, m.1),
                source: format!("{} pins {}", p.label, p.raw),
            })),
            Some(m) => Ok(Some(PythonVersion {
                version: format!("{}.{}", m.0, m.1),
                source: format!(
                    "{} pins {}, which iac cannot provide; {}.{} is the nearest higher available{}",
                    p.label,
                    p.raw,
                    m.0,
                    m.1,
                    if ranges.is_empty() {
                        String::new()
                    } else {
                        format!(" that satisfies {range_text}")
                    }
                ),
            })),
            None => Err(EntryError::PythonVersion {
                file: dir.join(p.file),
                constraint: if ranges.is_empty() {
                    format!(
                        "{} ({}: {} or a higher minor)",
                        p.raw,
                        p.label,
                        format_args!("{}.{}", p.minor.0, p.minor.1)
                    )
                } else {
                    format!("{} ({}) together with {range_text}", p.raw, p.label)
                },
                available: available_list(available),
            }),
        };
    }
    let satisfying: Vec<(u32, u32)> = available
        .iter()
        .copied()
        .filter(|m| satisfies_ranges(*m))
        .collect();
    let choice = if satisfying.contains(&default) {
        Some(default)
    } else {
        satisfying
            .iter()
            .copied()
            .filter(|m| *m > default)
            .min()
            .or_else(|| satisfying.iter().copied().filter(|m| *m < default).max())
    };
    match choice {
        Some(m) if m == default => Ok(Some(PythonVersion {
            version: format!("{}.{}", m.0, m.1),
            source: format!("{range_text} allows {}.{}, the default Python", m.0, m.1),
        })),
        Some(m) => Ok(Some(PythonVersion {
            version: format!("{}.{}", m.0, m.1),
            source: format!(
                "{range_text} excludes the default Python {}.{}; {}.{} is the nearest available version that satisfies it",
                default.0, default.1, m.0, m.1
            ),
        })),
        None => Err(EntryError::PythonVersion {
            file: dir.join(ranges[0].file),
            constraint: range_text,
            available: available_list(available),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constraints_per_minor() {
        let cases: &[(&str, &[(u32, u32)])] = &[
            (">=3.8", &[(3, 11), (3, 13), (3, 14)]),
            (">=3.12", &[(3, 13), (3, 14)]),
            (">=3.9,<3.13", &[(3, 11)]),
            ("<3.13, >=3.9", &[(3, 11)]),
            ("~=3.11", &[(3, 11), (3, 13), (3, 14)]),
            ("~=3.11.2", &[(3, 11)]),
            ("==3.13.*", &[(3, 13)]),
            ("!=3.13.*,>=3.10", &[(3, 11), (3, 14)]),
            ("==3.11", &[(3, 11)]),
            (">3.11", &[(3, 11), (3, 13), (3, 14)]),
            (">3.11.99", &[(3, 13), (3, 14)]),
            ("^3.10", &[(3, 11), (3, 13), (3, 14)]),
            ("^3.12", &[(3, 13), (3, 14)]),
            ("~3.11", &[(3, 11)]),
            (">=3.8 <3.12", &[(3, 11)]),
            ("3.13.*", &[(3, 13)]),
            ("~3.11 || ^3.14", &[(3, 11), (3, 14)]),
            ("*", &[(3, 11), (3, 13), (3, 14)]),
            (">=4", &[]),
        ];
        for (spec, want) in cases {
            let c = Constraint::parse(spec).unwrap();
            let got: Vec<(u32, u32)> = AVAILABLE_PYTHONS
                .iter()
                .copied()
                .filter(|(a, b)| c.allows_minor(*a, *b))
                .collect();
            assert_eq!(got, *want, "{spec}");
        }
        for bad in [">=3.12a1", "==3.*.1", ">=three", "~=3", ">=3.1.*"] {
            assert!(Constraint::parse(bad).is_err(), "{bad}");
        }
    }

    fn run(files: &[(&str, &str)]) -> Result<Option<PythonVersion>, EntryError> {
        let d = tempfile::tempdir().unwrap();
        for (f, c) in files {
            std::fs::write(d.path().join(f), c).unwrap();
        }
        choose(d.path(), AVAILABLE_PYTHONS, DEFAULT_PYTHON)
    }

    #[test]
    fn choices() {
        let v = |files: &[(&str, &str)]| run(files).unwrap().map(|p| (p.version, p.source));
        assert_eq!(v(&[]), None);
        let (ver, src) = v(&[(".python-version", "# pyenv\n3.14\n")]).unwrap();
        assert_eq!(ver, "3.14");
        assert!(src.contains(".python-version line 2 pins 3.14"), "{src}");
        let (ver, src) = v(&[(".python-version", "3.12.4\n")]).unwrap();
        assert_eq!(ver, "3.13");
        assert!(src.contains("nearest higher"), "{src}");
        assert_eq!(v(&[("runtime.txt", "python-3.11.6\n")]).unwrap().0, "3.11");
        assert_eq!(
            v(&[(
                "Pipfile",
                "[packages]\n[requires]\npython_version = \"3.13\"\n"
            )])
            .unwrap()
            .0,
            "3.13"
        );
        let (ver, src) = v(&[(
            "pyproject.toml",
            "[project]\nname='x'\nrequires-python = \">=3.10,<3.14\"\n",
        )])
        .unwrap();
        assert_eq!(ver, "3.11", "a range that allows the default gets it");
        assert!(src.contains("allows 3.11, the default Python"), "{src}");
        assert_eq!(
            v(&[(
                "pyproject.toml",
                "[tool.poetry.dependencies]\npython = \"^3.11\"\n"
            )])
            .unwrap()
            .0,
            "3.11"
        );
        // A range that excludes the default: the nearest higher, not the newest (unstable) one.
        let (ver, src) = v(&[(
            "pyproject.toml",
            "[project]\nname='x'\nrequires-python = \">=3.12\"\n",
        )])
        .unwrap();
        assert_eq!(ver, "3.13");
        assert!(
            src.contains("excludes the default Python 3.11") && src.contains(">=3.12"),
            "{src}"
        );
        assert_eq!(
            v(&[(
                "pyproject.toml",
                "[project]\nrequires-python = \">=3.14\"\n"
            )])
            .unwrap()
            .0,
            "3.14"
        );
        // Another default: preferred when allowed, else the nearest (higher first, then lower).
        let d = tempfile::tempdir().unwrap();
        std::fs::write(
            d.path().join("pyproject.toml"),
            "[project]\nrequires-python = \"<3.14\"\n",
        )
        .unwrap();
        let got = |default| {
            choose(d.path(), AVAILABLE_PYTHONS, default)
                .unwrap()
                .unwrap()
                .version
        };
        assert_eq!(got((3, 13)), "3.13");
        assert_eq!(got((3, 14)), "3.13");
        // The pin is taken, then checked against requires-python.
        assert_eq!(
            v(&[
                (".python-version", "3.11\n"),
                (
                    "pyproject.toml",
                    "[project]\nrequires-python = \">=3.12\"\n"
                )
            ])
            .unwrap()
            .0,
            "3.13"
        );
        assert_eq!(
            v(&[(".tool-versions", "nodejs 20\npython 3.13.1\n")])
                .unwrap()
                .0,
            "3.13"
        );
    }

    #[test]
    fn unsatisfiable_names_file_constraint_and_versions() {
        let e = run(&[(
            "pyproject.toml",
            "[project]\nrequires-python = \">=3.15\"\n",
        )])
        .unwrap_err();
        let s = e.to_string();
        assert!(
            s.contains("pyproject.toml") && s.contains(">=3.15") && s.contains("3.11, 3.13, 3.14"),
            "{s}"
        );
        let e = run(&[(".python-version", "3.15\n")])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(".python-version") && e.contains("3.15") && e.contains("3.11, 3.13, 3.14"),
            "{e}"
        );
        let e = run(&[(".python-version", "pypy3\n")])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(".python-version") && e.contains("CPython"),
            "{e}"
        );
        let e = run(&[(
            "pyproject.toml",
            "[project]\nrequires-python = \">=3.12rc1\"\n",
        )])
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("requires-python") && e.contains("pre/post"),
            "{e}"
        );
    }
}
