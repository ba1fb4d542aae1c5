//! The realistic set: fixture trees under `tests/fixtures/real-repos/`, each reduced from a public
//! repository (see the README there for the source and why each answer is what a person would
//! run), resolved by the default resolver. One table: the chosen rule, command, working
//! directory, port, Python version, build steps, and one runner-up candidate where it matters.

use std::path::PathBuf;

use iac_backends::entry::DefaultResolver;
use iac_core::Entry;

struct Case {
    fixture: &'static str,
    rule: &'static str,
    argv: &'static [&'static str],
    workdir: Option<&'static str>,
    port: Option<u16>,
    python: Option<&'static str>,
    /// (argv, workdir, warn_on_failure)
    steps: &'static [(&'static [&'static str], Option<&'static str>, bool)],
    /// A rule id that must be among the runner-up candidates.
    runner_up: Option<&'static str>,
}

const COLLECTSTATIC: &[&str] = &["python", "manage.py", "collectstatic", "--noinput"];

fn cases() -> Vec<Case> {
    vec![
        Case {
            fixture: "flask-quickstart",
            rule: "framework:wsgi",
            argv: &[
                "sh",
                "-c",
                "exec python -m flask --app 'app:app' run --host 127.0.0.1 --port ${PORT:-8000}",
            ],
            workdir: None,
            port: Some(8000),
            python: None,
            steps: &[],
            runner_up: Some("app.py"),
        },
        Case {
            fixture: "django-subfolder-procfile",
            rule: "platform:procfile",
            argv: &["gunicorn", "mysite.wsgi"],
            workdir: Some("app"),
            port: Some(8000),
            python: Some("3.14"),
            steps: &[(COLLECTSTATIC, Some("app"), true)],
            runner_up: Some("framework:django"),
        },
        Case {
            fixture: "fastapi-render",
            rule: "platform:render",
            argv: &[
                "sh",
                "-c",
                "exec uvicorn main:app --host 0.0.0.0 --port $PORT",
            ],
            workdir: None,
            port: Some(8000),
            python: None,
            steps: &[],
            runner_up: Some("framework:asgi"),
        },
        Case {
            fixture: "django-render-build-sh",
            rule: "platform:render",
            argv: &["gunicorn", "mysite.wsgi:application"],
            workdir: None,
            port: Some(8000),
            python: None,
            steps: &[(&["./build.sh"], None, true), (COLLECTSTATIC, None, true)],
            runner_up: Some("framework:django"),
        },
        Case {
            fixture: "streamlit-example",
            rule: "framework:streamlit",
            argv: &[
                "sh",
                "-c",
                "exec python -m streamlit run streamlit_app.py --server.address 127.0.0.1 --server.port ${PORT:-8000} --server.headless true",
            ],
            workdir: None,
            port: Some(8000),
            python: None,
            steps: &[],
            runner_up: None,
        },
        Case {
            fixture: "gradio-space",
            rule: "framework:gradio",
            argv: &[
                "sh",
                "-c",
                "GRADIO_SERVER_NAME=127.0.0.1 GRADIO_SERVER_PORT=${PORT:-8000} exec python app.py",
            ],
            workdir: None,
            port: Some(8000),
            python: None,
            steps: &[],
            runner_up: Some("app.py"),
        },
        Case {
            fixture: "gradio-fixed-port",
            rule: "framework:gradio",
            argv: &[
                "sh",
                "-c",
                "GRADIO_SERVER_NAME=127.0.0.1 GRADIO_SERVER_PORT=${PORT:-8000} exec python app.py",
            ],
            workdir: None,
            port: Some(7860),
            python: None,
            steps: &[],
            runner_up: None,
        },
        Case {
            fixture: "dockerfile-multistage",
            rule: "platform:dockerfile",
            argv: &["python3", "app.py"],
            workdir: None,
            port: None,
            python: None,
            steps: &[],
            runner_up: Some("framework:wsgi"),
        },
        Case {
            fixture: "compose-command",
            rule: "platform:compose",
            argv: &[
                "uvicorn",
                "app.main:app",
                "--reload",
                "--workers",
                "1",
                "--host",
                "0.0.0.0",
                "--port",
                "8000",
            ],
            workdir: Some("project"),
            port: Some(8000),
            python: None,
            steps: &[],
            runner_up: Some("framework:asgi"),
        },
        Case {
            fixture: "fly-processes",
            rule: "platform:fly",
            argv: &["gunicorn", "--bind", "0.0.0.0:8080", "hellofly:app"],
            workdir: None,
            port: Some(8080),
            python: None,
            steps: &[],
            runner_up: Some("framework:wsgi"),
        },
        Case {
            fixture: "fly-dockerfile",
            rule: "platform:dockerfile",
            argv: &["fastapi", "run", "app/main.py", "--port", "8080"],
            workdir: None,
            port: Some(8080),
            python: None,
            steps: &[],
            runner_up: Some("framework:asgi"),
        },
        Case {
            fixture: "app-json-heroku-button",
            rule: "platform:procfile",
            argv: &[
                "gunicorn",
                "--config",
                "gunicorn.conf.py",
                "gettingstarted.wsgi",
            ],
            workdir: None,
            port: Some(8000),
            python: Some("3.13"),
            steps: &[(COLLECTSTATIC, None, true)],
            runner_up: Some("framework:django"),
        },
        Case {
            fixture: "railway-hypercorn",
            rule: "platform:railway",
            argv: &["sh", "-c", "exec hypercorn main:app --bind \"[::]:$PORT\""],
            workdir: None,
            port: Some(8000),
            python: None,
            steps: &[],
            runner_up: Some("framework:asgi"),
        },
        Case {
            fixture: "nixpacks-toml",
            rule: "platform:nixpacks",
            argv: &["bash", "deploy/railway_start.sh"],
            workdir: None,
            port: None,
            python: None,
            steps: &[(&["bash", "build.sh"], None, true)],
            runner_up: None,
        },
        Case {
            fixture: "railpack-uv-run",
            rule: "platform:railpack",
            argv: &["osm-mcp-server"],
            workdir: None,
            port: None,
            python: Some("3.13"),
            steps: &[(&["uv", "build"], None, true)],
            runner_up: Some("project.scripts"),
        },
        Case {
            fixture: "procfile-chained",
            rule: "platform:procfile",
            argv: &[
                "sh",
                "-c",
                "python manage.py migrate && gunicorn project.wsgi --log-file -",
            ],
            workdir: None,
            port: Some(8000),
            python: Some("3.11"),
            steps: &[],
            runner_up: Some("framework:django"),
        },
        Case {
            fixture: "setup-py-entry-points-variable",
            rule: "setup.py",
            argv: &[
                "python",
                "-c",
                "import sys, importlib; sys.exit(importlib.import_module('mytool.cli').main())",
            ],
            workdir: None,
            port: None,
            python: None,
            steps: &[],
            runner_up: None,
        },
        Case {
            fixture: "poetry-scripts",
            rule: "poetry.scripts",
            argv: &[
                "python",
                "-c",
                "import sys, importlib; sys.exit(importlib.import_module('weather_cli.main').run())",
            ],
            workdir: None,
            port: None,
            python: Some("3.11"),
            steps: &[],
            runner_up: None,
        },
        Case {
            fixture: "guardless-script",
            rule: "script",
            argv: &["python", "/app/bot.py"],
            workdir: None,
            port: None,
            python: None,
            steps: &[],
            runner_up: None,
        },
        Case {
            fixture: "main-package",
            rule: "package-main",
            argv: &["python", "-m", "pkgtool"],
            workdir: None,
            port: None,
            python: None,
            steps: &[],
            runner_up: None,
        },
        Case {
            fixture: "src-layout",
            rule: "package-main",
            argv: &["python", "-m", "srcsvc"],
            workdir: None,
            port: None,
            python: Some("3.13"),
            steps: &[],
            runner_up: None,
        },
        Case {
            fixture: "uv-project",
            rule: "main.py",
            argv: &["python", "/app/main.py"],
            workdir: None,
            port: None,
            python: Some("3.13"),
            steps: &[],
            runner_up: None,
        },
        Case {
            fixture: "pipfile-flask-gunicorn",
            rule: "framework:wsgi",
            argv: &[
                "sh",
                "-c",
                "exec python -m gunicorn --bind 127.0.0.1:${PORT:-8000} 'app:app'",
            ],
            workdir: None,
            port: Some(8000),
            python: Some("3.11"),
            steps: &[],
            runner_up: Some("app.py"),
        },
        Case {
            fixture: "fastapi-no-cmd-dockerfile",
            rule: "framework:asgi",
            argv: &[
                "sh",
                "-c",
                "exec python -m uvicorn app.main:app --host 127.0.0.1 --port ${PORT:-8000}",
            ],
            workdir: None,
            port: Some(8000),
            python: None,
            steps: &[],
            runner_up: None,
        },
        Case {
            fixture: "flask-app-factory",
            rule: "framework:wsgi",
            argv: &[
                "sh",
                "-c",
                "exec python -m flask --app 'flaskr:create_app()' run --host 127.0.0.1 --port ${PORT:-8000}",
            ],
            workdir: None,
            port: Some(8000),
            python: None,
            steps: &[],
            runner_up: None,
        },
    ]
}

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/real-repos")
}

fn check(c: &Case, e: &Entry) -> Result<(), String> {
    let mut errs = Vec::new();
    if e.rule != c.rule {
        errs.push(format!("rule {:?}, want {:?}", e.rule, c.rule));
    }
    if e.argv != c.argv {
        errs.push(format!("argv {:?}, want {:?}", e.argv, c.argv));
    }
    if e.workdir.as_deref() != c.workdir {
        errs.push(format!("workdir {:?}, want {:?}", e.workdir, c.workdir));
    }
    if e.port != c.port {
        errs.push(format!("port {:?}, want {:?}", e.port, c.port));
    }
    if e.python.as_ref().map(|p| p.version.as_str()) != c.python {
        errs.push(format!("python {:?}, want {:?}", e.python, c.python));
    }
    let steps: Vec<(Vec<&str>, Option<&str>, bool)> = e
        .build_steps
        .iter()
        .map(|s| {
            (
                s.argv.iter().map(String::as_str).collect(),
                s.workdir.as_deref(),
                s.warn_on_failure,
            )
        })
        .collect();
    let want: Vec<(Vec<&str>, Option<&str>, bool)> = c
        .steps
        .iter()
        .map(|(a, w, f)| (a.to_vec(), *w, *f))
        .collect();
    if steps != want {
        errs.push(format!("build steps {steps:?}, want {want:?}"));
    }
    if let Some(r) = c.runner_up
        && !e.candidates.iter().any(|x| x.rule == r)
    {
        errs.push(format!("no runner-up {r:?} in {:?}", e.candidates));
    }
    if e.origin.is_none() || !e.why.ends_with('.') || e.why.lines().count() != 1 {
        errs.push(format!("origin {:?} / why {:?}", e.origin, e.why));
    }
    if errs.is_empty() {
        Ok(())
    } else {
        Err(errs.join("; "))
    }
}

#[test]
fn real_repos_resolve_to_what_a_person_would_run() {
    let cases = cases();
    assert!(cases.len() >= 20);
    let resolver = DefaultResolver::new();
    let mut failures = Vec::new();
    for c in &cases {
        let dir = fixtures().join(c.fixture);
        assert!(dir.is_dir(), "missing fixture {}", dir.display());
        match resolver.resolve_dir(&dir, None) {
            Ok(e) => {
                if let Err(why) = check(c, &e) {
                    failures.push(format!("[{}] {why}\n  why: {}", c.fixture, e.why));
                }
            }
            Err(e) => failures.push(format!("[{}] error: {e}", c.fixture)),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} fixtures failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

#[test]
fn every_fixture_is_in_the_table_and_the_readme() {
    let readme = std::fs::read_to_string(fixtures().join("README.md")).unwrap();
    let cases = cases();
    for entry in std::fs::read_dir(fixtures()).unwrap() {
        let entry = entry.unwrap();
        if !entry.file_type().unwrap().is_dir() {
            continue;
        }
        let name = entry.file_name().to_string_lossy().into_owned();
        assert!(
            cases.iter().any(|c| c.fixture == name),
            "fixture {name} has no row in the table"
        );
        assert!(
            readme.contains(&format!("`{name}`")),
            "fixture {name} is not described in the README"
        );
    }
}

#[test]
fn an_unsatisfiable_python_is_a_clear_error() {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("main.py"), "print(1)\n").unwrap();
    std::fs::write(
        d.path().join("pyproject.toml"),
        "[project]\nname = \"x\"\nrequires-python = \">=3.12,<3.13\"\n",
    )
    .unwrap();
    let e = DefaultResolver::new()
        .resolve_dir(d.path(), None)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("pyproject.toml")
            && e.contains(">=3.12,<3.13")
            && e.contains("3.11, 3.13, 3.14"),
        "{e}"
    );
    // Below every version iac provides (an old app pinned to the 3.9 era).
    std::fs::write(
        d.path().join("pyproject.toml"),
        "[project]\nname = \"x\"\nrequires-python = \"<3.10\"\n",
    )
    .unwrap();
    let e = DefaultResolver::new()
        .resolve_dir(d.path(), None)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("pyproject.toml") && e.contains("<3.10") && e.contains("3.11, 3.13, 3.14"),
        "{e}"
    );
}
