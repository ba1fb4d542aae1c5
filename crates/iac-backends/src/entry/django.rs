//! Django projects: `manage.py` at the root or one or two directory levels down, beside the
//! settings module it names. Served by gunicorn on `WSGI_APPLICATION` when gunicorn is a
//! dependency (of the repo or of the Django folder), else by `manage.py runserver --noreload`
//! (the agent supervises the process); both bind `127.0.0.1:$PORT` and run from the manage.py
//! folder (the Entry's `workdir`). When the settings set `STATIC_ROOT`, the Entry gets the build
//! step `python manage.py collectstatic --noinput` in that folder, whose failure only warns (as
//! Heroku's Python buildpack does).

use std::path::{Path, PathBuf};

use iac_core::{BuildStep, DEFAULT_APP_PORT, EntryError};

use super::framework::Detected;
use super::pylex;
use super::pymeta::PyRepo;
use super::pyscan::SKIP_DIRS;
use super::read_optional;

/// A Django project: its settings module (and file) and, when found, its WSGI
/// `(module, attribute)`.
pub struct DjangoLayout {
    /// The settings module, e.g. `mysite.settings`.
    pub settings: String,
    /// The settings file, relative to the repo root.
    pub settings_file: PathBuf,
    /// The WSGI application as `(module, attribute)`, when a `wsgi.py` defines one.
    pub wsgi: Option<(String, String)>,
}

fn is_identifier(s: &str) -> bool {
    let mut c = s.chars();
    c.next().is_some_and(|f| f == '_' || f.is_alphabetic())
        && c.all(|x| x == '_' || x.is_alphanumeric())
}

/// The Django layout of the folder holding manage.py. `Ok(Err(why))` when it is not a Django
/// project.
pub fn layout(dir: &Path) -> Result<Result<DjangoLayout, String>, EntryError> {
    let Some(manage) = read_optional(&dir.join("manage.py"))? else {
        return Ok(Err("there is no manage.py".to_string()));
    };
    let module_path = |m: &str| -> Option<PathBuf> {
        let rel: PathBuf = m.split('.').collect();
        let file = dir.join(&rel).with_extension("py");
        let pkg = dir.join(&rel).join("__init__.py");
        if file.is_file() {
            Some(file)
        } else if pkg.is_file() {
            Some(pkg)
        } else {
            None
        }
    };
    // DJANGO_SETTINGS_MODULE named in manage.py, e.g. os.environ.setdefault("…", "site.settings").
    let named = pylex::tokenize(&manage).ok().and_then(|t| {
        t.windows(3).find_map(|w| {
            (w[0].str_value().as_deref() == Some("DJANGO_SETTINGS_MODULE") && w[1].is_op(","))
                .then(|| w[2].str_value())
                .flatten()
        })
    });
    let settings = match named {
        Some(m) if module_path(&m).is_some() => m,
        Some(m) => {
            return Ok(Err(format!(
                "manage.py names DJANGO_SETTINGS_MODULE {m:?} but no such module exists"
            )));
        }
        None => {
            let mut found: Vec<String> = std::fs::read_dir(dir)
                .map_err(|source| EntryError::Io {
                    path: dir.to_path_buf(),
                    source,
                })?
                .filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| is_identifier(n) && module_path(&format!("{n}.settings")).is_some())
                .map(|n| format!("{n}.settings"))
                .collect();
            found.sort();
            if found.is_empty() {
                return Ok(Err(
                    "manage.py exists but no settings module beside it ({pkg}/settings.py)"
                        .to_string(),
                ));
            }
            found.remove(0)
        }
    };
    let settings_file = module_path(&settings).expect("checked above");
    // WSGI module: WSGI_APPLICATION in settings, else a wsgi.py in the settings' package (or above).
    let from_setting = top_level_string(&settings_file, "WSGI_APPLICATION")?.map(|(v, _)| v);
    let wsgi = match from_setting.and_then(|v| {
        v.rsplit_once('.')
            .map(|(m, a)| (m.to_string(), a.to_string()))
    }) {
        Some((m, a)) if module_path(&m).is_some() => Some((m, a)),
        _ => {
            let parts: Vec<&str> = settings.split('.').collect();
            (1..parts.len())
                .rev()
                .map(|n| format!("{}.wsgi", parts[..n].join(".")))
                .find(|m| module_path(m).is_some())
                .map(|m| (m, "application".to_string()))
        }
    };
    Ok(Ok(DjangoLayout {
        settings,
        settings_file,
        wsgi,
    }))
}

/// A top-level `NAME = "string"` in a Python file: (value, line).
fn top_level_string(path: &Path, name: &str) -> Result<Option<(String, usize)>, EntryError> {
    let Some(text) = read_optional(path)? else {
        return Ok(None);
    };
    let Ok(toks) = pylex::tokenize(&text) else {
        return Ok(None);
    };
    Ok(toks.windows(3).find_map(|w| {
        (w[0].line_start && w[0].col == 0 && w[0].is_name(name) && w[1].is_op("="))
            .then(|| w[2].str_value().map(|v| (v, w[0].line)))
            .flatten()
    }))
}

/// The line of a top-level `NAME =` assignment (any value).
fn top_level_assignment(path: &Path, name: &str) -> Result<Option<usize>, EntryError> {
    let Some(text) = read_optional(path)? else {
        return Ok(None);
    };
    let Ok(toks) = pylex::tokenize(&text) else {
        return Ok(None);
    };
    Ok(toks.windows(2).find_map(|w| {
        (w[0].line_start && w[0].col == 0 && w[0].is_name(name) && w[1].is_op("="))
            .then_some(w[0].line)
    }))
}

/// Where `STATIC_ROOT` is set: the settings file, or any module of a `settings/` package.
fn static_root(layout: &DjangoLayout) -> Result<Option<(PathBuf, usize)>, EntryError> {
    let mut files = vec![layout.settings_file.clone()];
    let parent = layout.settings_file.parent().map(Path::to_path_buf);
    if let Some(p) = parent.filter(|p| p.file_name().is_some_and(|n| n == "settings"))
        && let Ok(rd) = std::fs::read_dir(&p)
    {
        let mut more: Vec<PathBuf> = rd
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "py"))
            .collect();
        more.sort();
        files.extend(more);
    }
    for f in files {
        if let Some(line) = top_level_assignment(&f, "STATIC_ROOT")? {
            return Ok(Some((f, line)));
        }
    }
    Ok(None)
}

/// manage.py folders, shallowest first: `""` (root), then one and two levels down.
fn manage_dirs(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut level = vec![String::new()];
    for depth in 0..3 {
        let mut next = Vec::new();
        for rel in &level {
            let abs = if rel.is_empty() {
                dir.to_path_buf()
            } else {
                dir.join(rel)
            };
            if abs.join("manage.py").is_file() {
                out.push(rel.clone());
            }
            if depth == 2 {
                continue;
            }
            let Ok(rd) = std::fs::read_dir(&abs) else {
                continue;
            };
            let mut names: Vec<String> = rd
                .filter_map(|e| e.ok())
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| !n.starts_with('.') && !SKIP_DIRS.contains(&n.as_str()))
                .collect();
            names.sort();
            next.extend(names.into_iter().map(|n| {
                if rel.is_empty() {
                    n
                } else {
                    format!("{rel}/{n}")
                }
            }));
        }
        level = next;
    }
    out
}

/// Detected Django projects (shallowest first) and the first one's build steps.
pub fn detect(dir: &Path, repo: &PyRepo) -> Result<(Vec<Detected>, Vec<BuildStep>), EntryError> {
    let mut found = Vec::new();
    let mut steps = Vec::new();
    for rel in manage_dirs(dir) {
        let sub = if rel.is_empty() {
            dir.to_path_buf()
        } else {
            dir.join(&rel)
        };
        let Ok(lay) = layout(&sub)? else {
            continue;
        };
        let workdir = (!rel.is_empty()).then(|| rel.clone());
        let shown = |p: &str| match &workdir {
            Some(w) => format!("{w}/{p}"),
            None => p.to_string(),
        };
        let gunicorn = match repo.dependency("gunicorn")? {
            Some(d) => Some(d),
            None if !rel.is_empty() => PyRepo::load(&sub)?
                .dependency("gunicorn")?
                .map(|d| shown(&d)),
            None => None,
        };
        let bind = format!("127.0.0.1:${{PORT:-{DEFAULT_APP_PORT}}}");
        let (argv, how) = match (&gunicorn, &lay.wsgi) {
            (Some(dep), Some((module, attr))) => (
                vec![
                    "sh".into(),
                    "-c".into(),
                    format!("exec python -m gunicorn --bind {bind} {module}:{attr}"),
                ],
                format!(
                    "gunicorn is a dependency ({dep}), so gunicorn serves WSGI app `{module}:{attr}`"
                ),
            ),
            _ => {
                let no = match (&gunicorn, &lay.wsgi) {
                    (Some(dep), None) => {
                        format!("gunicorn is a dependency ({dep}) but no WSGI module was found")
                    }
                    _ => "gunicorn is not a dependency".to_string(),
                };
                (
                    vec![
                        "sh".into(),
                        "-c".into(),
                        format!("exec python manage.py runserver --noreload {bind}"),
                    ],
                    format!(
                        "{no}, so Django's runserver serves it (--noreload: the agent supervises the process)"
                    ),
                )
            }
        };
        let where_ = match &workdir {
            Some(w) => format!(" (run from {w}/)"),
            None => String::new(),
        };
        if found.is_empty()
            && let Some((file, line)) = static_root(&lay)?
        {
            let file_rel = file
                .strip_prefix(dir)
                .map(|p| p.to_string_lossy().into_owned())
                .unwrap_or_else(|_| file.display().to_string());
            steps.push(BuildStep {
                argv: vec![
                    "python".into(),
                    "manage.py".into(),
                    "collectstatic".into(),
                    "--noinput".into(),
                ],
                workdir: workdir.clone(),
                warn_on_failure: true,
                origin: format!("Django STATIC_ROOT set in {file_rel} line {line}"),
            });
        }
        found.push(Detected {
            rule: "framework:django",
            argv,
            why: format!(
                "{} sits beside settings module `{}`; {how} on 127.0.0.1:$PORT{where_}.",
                shown("manage.py"),
                lay.settings
            ),
            origin: format!(
                "{} (Django, settings `{}`)",
                shown("manage.py"),
                lay.settings
            ),
            workdir,
            port: Some(DEFAULT_APP_PORT),
        });
    }
    Ok((found, steps))
}
