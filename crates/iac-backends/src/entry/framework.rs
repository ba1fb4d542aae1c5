//! Framework detection: what a person runs for a Python web app, found from its code (read with
//! [`super::pyscan`], never executed) and its declared dependencies. Tried in this order, the
//! first match is the start command and the rest become runner-up candidates:
//!
//! | rule id | found by | command (all bind the pod's loopback `127.0.0.1` on `$PORT`) |
//! |---|---|---|
//! | `framework:django` | `manage.py` (root, or one/two levels down) beside its settings | gunicorn on `WSGI_APPLICATION` when gunicorn is a dependency, else `manage.py runserver --noreload`; run from the manage.py folder |
//! | `framework:asgi` | a top-level `app = FastAPI()` / `Starlette()` / `Quart()` / `Litestar()` / `Sanic()` (or a `create_app()` factory building one) | `python -m uvicorn module:app` (hypercorn when only it is a dependency) |
//! | `framework:wsgi` | a top-level `app = Flask()` / `Bottle()` / `falcon.App()` (or a factory) | gunicorn when a dependency, else waitress when a dependency, else Flask's own `flask run` |
//! | `framework:streamlit` | a module importing `streamlit` (the repo's `streamlit_app.py`, `app.py`, `main.py`, `Home.py` first) | `python -m streamlit run FILE --server.address 127.0.0.1 --server.port $PORT --server.headless true` |
//! | `framework:gradio` | a module building `gr.Blocks`/`gr.Interface`/`gr.ChatInterface` and calling `.launch(` | `python FILE` with `GRADIO_SERVER_NAME`/`GRADIO_SERVER_PORT` (a literal `server_port=` in `.launch` wins) |
//!
//! The module path of an app object is how it imports from its import root (the nearest ancestor
//! that is not a package); when that is not the repo root, it becomes the Entry's `workdir`.
//! Django also yields a build step: `python manage.py collectstatic --noinput` when the settings
//! set `STATIC_ROOT` (failure only warns).

use std::path::Path;

use iac_core::{BuildStep, DEFAULT_APP_PORT, EntryError};

use super::django;
use super::pymeta::PyRepo;
use super::pyscan::{self, PyFile};

/// A framework's start command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Detected {
    /// Stable rule id of the framework rule that matched, e.g. `framework:django`.
    pub rule: &'static str,
    /// The start command.
    pub argv: Vec<String>,
    /// The sentence saying what was found (shown by `iac inspect`).
    pub why: String,
    /// The file (and line) the detection rests on.
    pub origin: String,
    /// Directory to run it from, relative to the repo root; `None`: the root.
    pub workdir: Option<String>,
    /// The port the command listens on, when the framework fixes it.
    pub port: Option<u16>,
}

/// All detections in order, plus build steps (Django collectstatic).
#[derive(Debug, Clone, Default)]
pub struct Detection {
    /// Every framework found, in rule order (more than one is ambiguous).
    pub found: Vec<Detected>,
    /// Steps run at build time (Django's collectstatic).
    pub build_steps: Vec<BuildStep>,
    /// What was looked for, when nothing was found.
    pub looked: String,
}

const ASGI: &[&str] = &[
    "fastapi.FastAPI",
    "fastapi.applications.FastAPI",
    "starlette.applications.Starlette",
    "quart.Quart",
    "litestar.Litestar",
    "sanic.Sanic",
];
const WSGI: &[&str] = &["flask.Flask", "bottle.Bottle", "falcon.App", "falcon.API"];
const FACTORIES: &[&str] = &["create_app", "make_app", "app_factory", "get_app"];
const GRADIO_APPS: &[&str] = &[
    "gradio.Blocks",
    "gradio.Interface",
    "gradio.ChatInterface",
    "gradio.TabbedInterface",
];

fn sh(script: String) -> Vec<String> {
    vec!["sh".into(), "-c".into(), script]
}

fn port_var() -> String {
    format!("${{PORT:-{DEFAULT_APP_PORT}}}")
}

/// Preference among files defining an app: shallow first, then by conventional name.
fn file_rank(rel: &str) -> (usize, usize, String) {
    const NAMES: &[&str] = &[
        "main.py",
        "app.py",
        "streamlit_app.py",
        "server.py",
        "api.py",
        "asgi.py",
        "wsgi.py",
        "application.py",
        "run.py",
        "__init__.py",
        "home.py",
    ];
    let depth = rel.matches('/').count();
    let name = rel.rsplit('/').next().unwrap_or(rel).to_ascii_lowercase();
    let rank = NAMES.iter().position(|n| *n == name).unwrap_or(NAMES.len());
    (depth, rank, rel.to_string())
}

/// An app object (or factory) of one of `ctors` in a file: (attribute, is_factory, line, ctor).
fn app_object(f: &PyFile, ctors: &[&str]) -> Option<(String, bool, usize, String)> {
    let assigned = f
        .assigns
        .iter()
        .filter(|(_, callee, _)| ctors.contains(&callee.as_str()))
        .min_by_key(|(name, _, line)| (name != "app", *line));
    if let Some((name, callee, line)) = assigned {
        return Some((name.clone(), false, *line, callee.clone()));
    }
    f.defs.iter().find_map(|(name, line)| {
        if !FACTORIES.contains(&name.as_str()) {
            return None;
        }
        let calls = f.def_calls.get(name)?;
        let ctor = calls.iter().find(|c| ctors.contains(&c.as_str()))?;
        Some((name.clone(), true, *line, ctor.clone()))
    })
}

fn short(ctor: &str) -> &str {
    ctor.rsplit('.').next().unwrap_or(ctor)
}

fn asgi(dir: &Path, repo: &PyRepo, f: &PyFile) -> Result<Option<Detected>, EntryError> {
    let Some((attr, factory, line, ctor)) = app_object(f, ASGI) else {
        return Ok(None);
    };
    let (workdir, module) = pyscan::import_path(dir, &f.rel);
    let target = format!("{module}:{attr}");
    let uvicorn = repo
        .dependency("uvicorn")?
        .or(repo.dependency_with_extra("fastapi", "standard")?);
    let hypercorn = repo.dependency("hypercorn")?;
    let what = if factory {
        format!("factory `{attr}()` building a {} app", short(&ctor))
    } else {
        format!("{} app object `{attr}`", short(&ctor))
    };
    let (argv, server) = match (&uvicorn, &hypercorn) {
        (None, Some(dep)) => (
            sh(format!(
                "exec python -m hypercorn {target}{} --bind 127.0.0.1:{}",
                if factory { "()" } else { "" },
                port_var()
            )),
            format!("hypercorn (a dependency, {dep}) serves it"),
        ),
        _ => (
            sh(format!(
                "exec python -m uvicorn {}{target} --host 127.0.0.1 --port {}",
                if factory { "--factory " } else { "" },
                port_var()
            )),
            match &uvicorn {
                Some(dep) => format!("uvicorn ({dep}) serves it"),
                None => "uvicorn serves it (declare uvicorn as a dependency: it is not listed)"
                    .to_string(),
            },
        ),
    };
    let origin = format!("{} line {line} ({what})", f.rel);
    Ok(Some(Detected {
        rule: "framework:asgi",
        why: format!(
            "{} defines the ASGI {what}, which only defines the app (running the module would exit at once), so {server} on 127.0.0.1:$PORT{}.",
            f.rel,
            workdir
                .as_deref()
                .map(|w| format!(" from {w}/, its import root"))
                .unwrap_or_default()
        ),
        argv,
        origin,
        workdir,
        port: Some(DEFAULT_APP_PORT),
    }))
}

fn wsgi(dir: &Path, repo: &PyRepo, f: &PyFile) -> Result<Option<Detected>, EntryError> {
    let Some((attr, factory, line, ctor)) = app_object(f, WSGI) else {
        return Ok(None);
    };
    let (workdir, module) = pyscan::import_path(dir, &f.rel);
    let what = if factory {
        format!("factory `{attr}()` building a {} app", short(&ctor))
    } else {
        format!("{} app object `{attr}`", short(&ctor))
    };
    let call = if factory { "()" } else { "" };
    let (argv, server) = if let Some(dep) = repo.dependency("gunicorn")? {
        (
            sh(format!(
                "exec python -m gunicorn --bind 127.0.0.1:{} '{module}:{attr}{call}'",
                port_var()
            )),
            format!("gunicorn is a dependency ({dep}), so gunicorn serves it"),
        )
    } else if let Some(dep) = repo.dependency("waitress")? {
        (
            sh(format!(
                "exec python -m waitress --listen=127.0.0.1:{} {}{module}:{attr}",
                port_var(),
                if factory { "--call " } else { "" }
            )),
            format!("waitress is a dependency ({dep}), so waitress serves it"),
        )
    } else if ctor == "flask.Flask" {
        (
            sh(format!(
                "exec python -m flask --app '{module}:{attr}{call}' run --host 127.0.0.1 --port {}",
                port_var()
            )),
            "neither gunicorn nor waitress is a dependency, so Flask's own server (`flask run`) serves it".to_string(),
        )
    } else {
        return Ok(None);
    };
    let origin = format!("{} line {line} ({what})", f.rel);
    Ok(Some(Detected {
        rule: "framework:wsgi",
        why: format!(
            "{} defines the WSGI {what}; {server} on 127.0.0.1:$PORT{}.",
            f.rel,
            workdir
                .as_deref()
                .map(|w| format!(" from {w}/, its import root"))
                .unwrap_or_default()
        ),
        argv,
        origin,
        workdir,
        port: Some(DEFAULT_APP_PORT),
    }))
}

fn streamlit(files: &[&PyFile]) -> Option<Detected> {
    let mut apps: Vec<&&PyFile> = files
        .iter()
        .filter(|f| f.imports_module("streamlit") && !f.rel.contains('/'))
        .collect();
    apps.sort_by_key(|f| {
        let name = f.rel.to_ascii_lowercase();
        let rank = ["streamlit_app.py", "app.py", "main.py", "home.py"]
            .iter()
            .position(|n| *n == name)
            .unwrap_or(9);
        (rank, f.rel.clone())
    });
    let f = apps.first()?;
    Some(Detected {
        rule: "framework:streamlit",
        argv: sh(format!(
            "exec python -m streamlit run {} --server.address 127.0.0.1 --server.port {} --server.headless true",
            f.rel,
            port_var()
        )),
        why: format!(
            "{} imports streamlit, so `streamlit run` serves it on 127.0.0.1:$PORT (headless).",
            f.rel
        ),
        origin: format!("{} (imports streamlit)", f.rel),
        workdir: None,
        port: Some(DEFAULT_APP_PORT),
    })
}

fn gradio(files: &[&PyFile]) -> Option<Detected> {
    let f = files
        .iter()
        .filter(|f| f.uses_any(GRADIO_APPS) && !f.launches.is_empty())
        .min_by_key(|f| file_rank(&f.rel))?;
    let (line, literal_port) = f.launches[0];
    let port = literal_port.unwrap_or(DEFAULT_APP_PORT);
    let port_note = match literal_port {
        Some(p) => format!(" (its `.launch(server_port={p})` fixes the port)"),
        None => String::new(),
    };
    Some(Detected {
        rule: "framework:gradio",
        argv: sh(format!(
            "GRADIO_SERVER_NAME=127.0.0.1 GRADIO_SERVER_PORT={} exec python {}",
            port_var(),
            f.rel
        )),
        why: format!(
            "{} builds a Gradio app and calls `.launch()` (line {line}), so it runs as a script with GRADIO_SERVER_NAME=127.0.0.1 and GRADIO_SERVER_PORT=$PORT{port_note}.",
            f.rel
        ),
        origin: format!("{} line {line} (Gradio .launch)", f.rel),
        workdir: None,
        port: Some(port),
    })
}

/// Runs every detector.
pub fn detect(dir: &Path, repo: &PyRepo) -> Result<Detection, EntryError> {
    let mut out = Detection::default();
    let (djangos, steps) = django::detect(dir, repo)?;
    out.found.extend(djangos);
    out.build_steps.extend(steps);
    let rels = pyscan::python_files(dir)?;
    let files = pyscan::analyze_files(dir, &rels)?;
    let mut ranked: Vec<&PyFile> = files.iter().collect();
    ranked.sort_by_key(|f| file_rank(&f.rel));
    for f in &ranked {
        if let Some(d) = asgi(dir, repo, f)? {
            out.found.push(d);
        }
    }
    for f in &ranked {
        if let Some(d) = wsgi(dir, repo, f)? {
            out.found.push(d);
        }
    }
    out.found.extend(streamlit(&ranked));
    out.found.extend(gradio(&ranked));
    out.looked = "framework detection: looked for Django (manage.py up to two levels down), an ASGI app object (FastAPI/Starlette/Quart/Litestar/Sanic), a WSGI app object (Flask/Bottle/Falcon), a Streamlit script and a Gradio app with .launch(); none found".to_string();
    Ok(out)
}
