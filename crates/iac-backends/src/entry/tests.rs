//! Table-driven tests of [`super::DefaultResolver`]: each case builds a repo layout in a temp
//! dir and checks the decision (rule id, language, argv, why, port) or the error, covering every
//! rule 0–6 and every ambiguity/error case.

use std::os::unix::fs::PermissionsExt;

use iac_core::{EntryError, EntryResolver, Language, Source};

use super::DefaultResolver;

#[derive(Debug)]
enum Expect {
    Entry {
        rule: &'static str,
        language: Language,
        argv: &'static [&'static str],
        why: &'static [&'static str],
        port: Option<u16>,
    },
    NotFound(&'static [&'static str]),
    Ambiguous(&'static [&'static str]),
    Invalid(&'static [&'static str]),
}

struct Case {
    name: &'static str,
    /// Name of the repo directory (the project-name fallback).
    dir: &'static str,
    files: &'static [(&'static str, &'static str)],
    /// Files to chmod 0755.
    exec: &'static [&'static str],
    entrypoint: Option<&'static str>,
    expect: Expect,
}

const fn py(
    rule: &'static str,
    argv: &'static [&'static str],
    why: &'static [&'static str],
) -> Expect {
    Expect::Entry {
        rule,
        language: Language::Python,
        argv,
        why,
        port: None,
    }
}

const GUARD: &str = "def main():\n    print('hi')\n\nif __name__ == \"__main__\":\n    main()\n";

const CALL_SVC_CLI_MAIN: &str =
    "import sys, importlib; sys.exit(importlib.import_module('svc.cli').main())";

fn cases() -> Vec<Case> {
    use Expect::*;
    vec![
        // ---- rule 0: overrides -------------------------------------------------------------
        Case {
            name: "repos-file override module:function with extras beats everything",
            dir: "repo",
            files: &[
                ("main.py", GUARD),
                ("Dockerfile", "FROM x\nLABEL ENTRYPOINT=other:thing\n"),
            ],
            exec: &[],
            entrypoint: Some("svc.cli:main [fast]"),
            expect: py(
                "override:repos-file",
                &["python", "-c", CALL_SVC_CLI_MAIN],
                &[
                    "`svc.cli:main [fast]`",
                    "repos file",
                    "calls `svc.cli:main`",
                ],
            ),
        },
        Case {
            name: "repos-file override command with $PORT runs through sh -c exec",
            dir: "repo",
            files: &[("main.py", GUARD)],
            exec: &[],
            entrypoint: Some("gunicorn -b 0.0.0.0:$PORT 'svc.wsgi:app'"),
            expect: Entry {
                rule: "override:repos-file",
                language: Language::Python,
                argv: &["sh", "-c", "exec gunicorn -b 0.0.0.0:$PORT 'svc.wsgi:app'"],
                why: &["rule 0"],
                port: Some(8000),
            },
        },
        Case {
            name: "Dockerfile LABEL ENTRYPOINT (quoted, several pairs, continuation) beats [tool.iac] and rule 1",
            dir: "repo",
            files: &[
                ("main.py", GUARD),
                (
                    "Dockerfile",
                    "FROM python:3.11\n# label below\nLABEL maintainer=\"me\" \\\n      ENTRYPOINT=\"python -m svc --fast\"\nCMD [\"x\"]\n",
                ),
                (
                    "pyproject.toml",
                    "[tool.iac]\nentrypoint = \"other.mod:main\"\n",
                ),
            ],
            exec: &[],
            entrypoint: None,
            expect: py(
                "override:dockerfile-label",
                &["python", "-m", "svc", "--fast"],
                &["Dockerfile line 3", "LABEL ENTRYPOINT"],
            ),
        },
        Case {
            name: "Dockerfile lowercase label with module:function in single quotes",
            dir: "repo",
            files: &[("Dockerfile", "FROM x\nlabel entrypoint='svc.cli:main'\n")],
            exec: &[],
            entrypoint: None,
            expect: py(
                "override:dockerfile-label",
                &["python", "-c", CALL_SVC_CLI_MAIN],
                &["Dockerfile line 2 (LABEL entrypoint)"],
            ),
        },
        Case {
            name: "[tool.iac] entrypoint beats [project.scripts]",
            dir: "repo",
            files: &[(
                "pyproject.toml",
                "[project]\nname = \"svc\"\n[project.scripts]\nsvc = \"svc.other:main\"\n\n[tool.iac]\nentrypoint = \"svc.cli:main\"\n",
            )],
            exec: &[],
            entrypoint: None,
            expect: py(
                "override:pyproject",
                &["python", "-c", CALL_SVC_CLI_MAIN],
                &["pyproject.toml line 7", "[tool.iac]"],
            ),
        },
        Case {
            name: "[tool.iac] entrypoint as an argv array",
            dir: "repo",
            files: &[
                (
                    "pyproject.toml",
                    "[tool.iac]\nentrypoint = [\"python\", \"serve.py\", \"--port\", \"9000\"]\n",
                ),
                ("serve.py", ""),
            ],
            exec: &[],
            entrypoint: None,
            expect: Entry {
                rule: "override:pyproject",
                language: Language::Python,
                argv: &["python", "serve.py", "--port", "9000"],
                why: &["pyproject.toml line 2"],
                port: Some(9000),
            },
        },
        Case {
            name: "invalid Dockerfile override names the value and its origin",
            dir: "repo",
            files: &[
                ("main.py", GUARD),
                ("Dockerfile", "FROM x\n\nLABEL ENTRYPOINT=my-pkg:main\n"),
            ],
            exec: &[],
            entrypoint: None,
            expect: Invalid(&[
                "\"my-pkg:main\"",
                "Dockerfile line 3",
                "dotted Python module",
            ]),
        },
        Case {
            name: "invalid repos-file override (unterminated quote)",
            dir: "repo",
            files: &[("main.py", GUARD)],
            exec: &[],
            entrypoint: Some("python -c 'print(1)"),
            expect: Invalid(&["repos file", "unterminated single quote"]),
        },
        Case {
            name: "invalid [tool.iac] entrypoint type",
            dir: "repo",
            files: &[("pyproject.toml", "[tool.iac]\nentrypoint = 42\n")],
            exec: &[],
            entrypoint: None,
            expect: Invalid(&["\"42\"", "pyproject.toml line 2", "array of strings"]),
        },
        Case {
            name: "argv override in a non-Python repo is a binary entry",
            dir: "repo",
            files: &[("bin/server", "#!/bin/sh\n")],
            exec: &["bin/server"],
            entrypoint: Some("./bin/server --listen :8080"),
            expect: Entry {
                rule: "override:repos-file",
                language: Language::Binary,
                argv: &["./bin/server", "--listen", ":8080"],
                why: &["rule 0"],
                port: Some(8080),
            },
        },
        // ---- rule 1 -------------------------------------------------------------------------
        Case {
            name: "root __main__.py beats main.py",
            dir: "repo",
            files: &[("__main__.py", "print(1)\n"), ("main.py", GUARD)],
            exec: &[],
            entrypoint: None,
            expect: py(
                "main-module",
                &["python", "/app"],
                &["__main__.py", "rule 1"],
            ),
        },
        Case {
            name: "root main.py beats console scripts",
            dir: "repo",
            files: &[
                ("main.py", "print(1)\n"),
                (
                    "pyproject.toml",
                    "[project]\nname='x'\n[project.scripts]\nx = 'x:main'\n",
                ),
            ],
            exec: &[],
            entrypoint: None,
            expect: py(
                "main.py",
                &["python", "/app/main.py"],
                &["main.py", "rule 1"],
            ),
        },
        // ---- rule 2 -------------------------------------------------------------------------
        Case {
            name: "[project.scripts] takes the first entry in FILE order, not alphabetical",
            dir: "repo",
            files: &[(
                "pyproject.toml",
                "[project]\nname = \"svc\"\n\n[project.scripts]\nzeta-serve = \"svc.cli:main\"\nalpha = \"svc.alpha:run\"\n\n[tool.poetry.scripts]\np = \"svc.p:main\"\n",
            )],
            exec: &[],
            entrypoint: None,
            expect: py(
                "project.scripts",
                &["python", "-c", CALL_SVC_CLI_MAIN],
                &["`zeta-serve`", "pyproject.toml line 5", "pip-installs"],
            ),
        },
        Case {
            name: "[tool.poetry.scripts] first console script (file-type scripts skipped, extras stripped)",
            dir: "repo",
            files: &[(
                "pyproject.toml",
                "[tool.poetry]\nname = \"svc\"\n\n[tool.poetry.scripts]\nsetup-db = { reference = \"scripts/setup.sh\", type = \"file\" }\nserve = { callable = \"svc.cli:main\", extras = [\"web\"] }\nb = \"svc.b:main\"\n",
            )],
            exec: &[],
            entrypoint: None,
            expect: py(
                "poetry.scripts",
                &["python", "-c", CALL_SVC_CLI_MAIN],
                &["`serve`", "pyproject.toml line 6"],
            ),
        },
        Case {
            name: "setup.cfg console_scripts multi-line value, first line wins",
            dir: "repo",
            files: &[
                (
                    "setup.cfg",
                    "[metadata]\nname = svc\n\n[options.entry_points]\nconsole_scripts =\n    svc-serve = svc.cli:main [web]\n    svc-admin = svc.admin:main\n",
                ),
                ("setup.py", "from setuptools import setup\nsetup()\n"),
            ],
            exec: &[],
            entrypoint: None,
            expect: py(
                "setup.cfg",
                &["python", "-c", CALL_SVC_CLI_MAIN],
                &["`svc-serve`", "setup.cfg line 5"],
            ),
        },
        Case {
            name: "setup.py literal entry_points dict, read statically",
            dir: "repo",
            files: &[(
                "setup.py",
                "import sys\nfrom setuptools import setup, find_packages\n\n# setup(entry_points={'console_scripts': ['no = not.this:one']})\nsetup(\n    name=\"svc\",\n    packages=find_packages(),\n    entry_points={\n        \"console_scripts\": [\n            \"svc = svc.cli:main\",\n            \"other = svc.other:main\",\n        ],\n    },\n)\n",
            )],
            exec: &[],
            entrypoint: None,
            expect: py(
                "setup.py",
                &["python", "-c", CALL_SVC_CLI_MAIN],
                &["`svc`", "setup.py line 8"],
            ),
        },
        Case {
            name: "setup.py entry_points as an INI string via a top-level name",
            dir: "repo",
            files: &[(
                "setup.py",
                "from setuptools import setup\nEP = '''\n[console_scripts]\nsvc = svc.cli:main\n'''\nsetup(name='svc', entry_points=EP)\n",
            )],
            exec: &[],
            entrypoint: None,
            expect: py(
                "setup.py",
                &["python", "-c", CALL_SVC_CLI_MAIN],
                &["setup.py line 6 via `EP` assigned on line 2"],
            ),
        },
        Case {
            name: "setup.py non-literal entry_points is skipped (never executed), next rule wins",
            dir: "repo",
            files: &[
                (
                    "setup.py",
                    "from setuptools import setup\nsetup(name='svc', entry_points=load_entry_points())\n",
                ),
                ("svc/__init__.py", ""),
                ("svc/__main__.py", "print('svc')\n"),
            ],
            exec: &[],
            entrypoint: None,
            expect: py(
                "package-main",
                &["python", "-m", "svc"],
                &["svc/__main__.py", "rule 3"],
            ),
        },
        Case {
            name: "setup.py non-literal entry_points and nothing else: the error says why",
            dir: "repo",
            files: &[(
                "setup.py",
                "from setuptools import setup\nsetup(name='svc', entry_points=load_entry_points())\n",
            )],
            exec: &[],
            entrypoint: None,
            expect: NotFound(&[
                "setup.py line 2: `entry_points` is not a literal",
                "the name `load_entry_points`",
                "never executed",
            ]),
        },
        // ---- rule 3 -------------------------------------------------------------------------
        Case {
            name: "src layout, installable: python -m pkg",
            dir: "repo",
            files: &[
                (
                    "pyproject.toml",
                    "[project]\nname = \"svc\"\n[build-system]\nrequires = [\"setuptools\"]\n",
                ),
                ("src/svc/__init__.py", ""),
                ("src/svc/__main__.py", "print(1)\n"),
            ],
            exec: &[],
            entrypoint: None,
            expect: py(
                "package-main",
                &["python", "-m", "svc"],
                &["src/svc/__main__.py", "pip-installs the repo"],
            ),
        },
        Case {
            name: "src layout, not installable: PYTHONPATH=/app/src",
            dir: "repo",
            files: &[
                ("requirements.txt", "flask\n"),
                ("src/svc/__main__.py", "print(1)\n"),
            ],
            exec: &[],
            entrypoint: None,
            expect: py(
                "package-main",
                &["env", "PYTHONPATH=/app/src", "python", "-m", "svc"],
                &["not pip-installable"],
            ),
        },
        Case {
            name: "several packages: the one named like the project (pyproject name, - normalised)",
            dir: "repo",
            files: &[
                ("pyproject.toml", "[project]\nname = \"My-Svc\"\n"),
                ("my_svc/__main__.py", ""),
                ("tools/__main__.py", ""),
                ("src/other/__main__.py", ""),
            ],
            exec: &[],
            entrypoint: None,
            expect: py(
                "package-main",
                &["python", "-m", "my_svc"],
                &[
                    "named like the project \"My-Svc\"",
                    "tools/__main__.py, src/other/__main__.py",
                ],
            ),
        },
        Case {
            name: "several packages: the repo directory name decides when there is no metadata",
            dir: "beta",
            files: &[("alpha/__main__.py", ""), ("beta/__main__.py", "")],
            exec: &[],
            entrypoint: None,
            expect: py(
                "package-main",
                &["python", "-m", "beta"],
                &["the repo directory name"],
            ),
        },
        Case {
            name: "several packages, none named like the project: ambiguous",
            dir: "repo",
            files: &[
                ("pyproject.toml", "[project]\nname = \"svc\"\n"),
                ("alpha/__main__.py", ""),
                ("src/beta/__main__.py", ""),
            ],
            exec: &[],
            entrypoint: None,
            expect: Ambiguous(&[
                "rule 3",
                "alpha/__main__.py, src/beta/__main__.py",
                "none is named like the project \"svc\"",
                "[tool.iac] entrypoint",
            ]),
        },
        Case {
            name: "nested packages, tests/, examples/, docs/ never count",
            dir: "repo",
            files: &[
                ("tests/__main__.py", ""),
                ("examples/__main__.py", ""),
                ("docs/__main__.py", ""),
                ("svc/__init__.py", ""),
                ("svc/sub/__main__.py", ""),
                ("examples/demo/__main__.py", ""),
                ("app.py", "print(1)\n"),
            ],
            exec: &[],
            entrypoint: None,
            expect: py("app.py", &["python", "/app/app.py"], &["rule 4"]),
        },
        // ---- rule 4 -------------------------------------------------------------------------
        Case {
            name: "a Procfile the repo declares beats app.py (platform declaration > rules)",
            dir: "repo",
            files: &[
                ("app.py", "x = 1\n"),
                ("Procfile", "web: gunicorn app:app\n"),
            ],
            exec: &[],
            entrypoint: None,
            expect: Entry {
                rule: "platform:procfile",
                language: Language::Python,
                argv: &["gunicorn", "app:app"],
                why: &["Procfile line 1", "Heroku"],
                port: Some(8000),
            },
        },
        Case {
            name: "Procfile: web wins even when it is not first; $PORT → sh -c exec; port 8000",
            dir: "repo",
            files: &[
                ("requirements.txt", "gunicorn\n"),
                (
                    "Procfile",
                    "release: python migrate.py\nworker: celery -A svc worker\nweb: gunicorn svc.wsgi --bind 0.0.0.0:$PORT\n",
                ),
            ],
            exec: &[],
            entrypoint: None,
            expect: Entry {
                rule: "platform:procfile",
                language: Language::Python,
                argv: &["sh", "-c", "exec gunicorn svc.wsgi --bind 0.0.0.0:$PORT"],
                why: &["Procfile line 3", "`web`"],
                port: Some(8000),
            },
        },
        Case {
            name: "Procfile: worker when there is no web",
            dir: "repo",
            files: &[
                ("requirements.txt", "celery\n"),
                (
                    "Procfile",
                    "release: python migrate.py\nworker: celery -A svc worker --loglevel info\n",
                ),
            ],
            exec: &[],
            entrypoint: None,
            expect: py(
                "platform:procfile",
                &["celery", "-A", "svc", "worker", "--loglevel", "info"],
                &["Procfile line 2", "`worker`"],
            ),
        },
        Case {
            name: "Procfile: the first process in file order when neither web nor worker",
            dir: "repo",
            files: &[
                ("requirements.txt", "x\n"),
                (
                    "Procfile",
                    "# processes\nzz: python zz.py\naa: python aa.py\n",
                ),
            ],
            exec: &[],
            entrypoint: None,
            expect: py(
                "platform:procfile",
                &["python", "zz.py"],
                &["Procfile line 2", "first process"],
            ),
        },
        Case {
            name: "Procfile in a non-Python repo is a binary entry",
            dir: "repo",
            files: &[("Procfile", "web: ./server\n"), ("server", "#!/bin/sh\n")],
            exec: &["server"],
            entrypoint: None,
            expect: Entry {
                rule: "platform:procfile",
                language: Language::Binary,
                argv: &["./server"],
                why: &["`web`"],
                port: Some(8000),
            },
        },
        // ---- rule 5 -------------------------------------------------------------------------
        Case {
            name: "Django without gunicorn: runserver on $PORT",
            dir: "repo",
            files: &[
                (
                    "manage.py",
                    "import os, sys\nif __name__ == '__main__':\n    os.environ.setdefault('DJANGO_SETTINGS_MODULE', 'site_cfg.settings')\n",
                ),
                ("site_cfg/__init__.py", ""),
                ("site_cfg/settings.py", "DEBUG = True\n"),
                ("site_cfg/wsgi.py", "application = None\n"),
                ("requirements.txt", "django>=5\n"),
            ],
            exec: &[],
            entrypoint: None,
            expect: Entry {
                rule: "framework:django",
                language: Language::Python,
                argv: &[
                    "sh",
                    "-c",
                    "exec python manage.py runserver --noreload 127.0.0.1:${PORT:-8000}",
                ],
                why: &["site_cfg.settings", "gunicorn is not a dependency"],
                port: Some(8000),
            },
        },
        Case {
            name: "Django with gunicorn in requirements: gunicorn on the WSGI module",
            dir: "repo",
            files: &[
                (
                    "manage.py",
                    "import os\nos.environ.setdefault(\"DJANGO_SETTINGS_MODULE\", \"mysite.settings\")\n",
                ),
                ("mysite/__init__.py", ""),
                ("mysite/settings.py", "DEBUG = False\n"),
                ("mysite/wsgi.py", "application = None\n"),
                (
                    "requirements.txt",
                    "# deps\nDjango==5.0\nGunicorn[gevent]>=21.2 ; python_version >= '3.8'\n",
                ),
                ("worker.py", GUARD),
            ],
            exec: &[],
            entrypoint: None,
            expect: Entry {
                rule: "framework:django",
                language: Language::Python,
                argv: &[
                    "sh",
                    "-c",
                    "exec python -m gunicorn --bind 127.0.0.1:${PORT:-8000} mysite.wsgi:application",
                ],
                why: &["requirements.txt line 3", "mysite.wsgi:application"],
                port: Some(8000),
            },
        },
        Case {
            name: "Django with gunicorn in pyproject deps, settings package and WSGI_APPLICATION",
            dir: "repo",
            files: &[
                (
                    "pyproject.toml",
                    "[project]\nname = \"shop\"\ndependencies = [\"django\", \"gunicorn>=22\"]\n",
                ),
                (
                    "manage.py",
                    "import os\nos.environ.setdefault('DJANGO_SETTINGS_MODULE', 'conf.settings.prod')\n",
                ),
                ("conf/__init__.py", ""),
                ("conf/settings/__init__.py", ""),
                (
                    "conf/settings/prod.py",
                    "WSGI_APPLICATION = 'conf.serve.app'\n",
                ),
                ("conf/serve.py", "app = None\n"),
            ],
            exec: &[],
            entrypoint: None,
            expect: Entry {
                rule: "framework:django",
                language: Language::Python,
                argv: &[
                    "sh",
                    "-c",
                    "exec python -m gunicorn --bind 127.0.0.1:${PORT:-8000} conf.serve:app",
                ],
                why: &["[project].dependencies", "conf.settings.prod"],
                port: Some(8000),
            },
        },
        Case {
            name: "exactly one real __main__ guard; setup.py, conftest.py, test_*.py and docs/ do not count",
            dir: "repo",
            files: &[
                (
                    "server.py",
                    "import sys\n\n\nif (__name__ == '__main__'):\n    sys.exit(0)\n",
                ),
                (
                    "util.py",
                    "def helper():\n    if __name__ == '__main__':\n        pass\n",
                ),
                (
                    "setup.py",
                    "from setuptools import setup\nif __name__ == '__main__':\n    setup()\n",
                ),
                ("conftest.py", GUARD),
                ("test_server.py", GUARD),
                ("docs/conf.py", GUARD),
            ],
            exec: &[],
            entrypoint: None,
            expect: py(
                "main-guard",
                &["python", "/app/server.py"],
                &["server.py line 4"],
            ),
        },
        Case {
            name: "several guarded modules: ambiguous, listing them with lines",
            dir: "repo",
            files: &[
                ("alpha.py", GUARD),
                (
                    "run-beta.py",
                    "x = 1\nif '__main__' == __name__: print(x)\n",
                ),
                ("gamma.py", "x = 1\n"),
            ],
            exec: &[],
            entrypoint: None,
            expect: Ambiguous(&[
                "rule 5 (main-guard)",
                "alpha.py (line 4), run-beta.py (line 2)",
            ]),
        },
        Case {
            name: "a guard only inside strings and comments does not count",
            dir: "repo",
            files: &[(
                "tool.py",
                "\"\"\"Usage:\n\nif __name__ == \"__main__\":\n    main()\n\"\"\"\nEXAMPLE = r'''\nif __name__ == '__main__':\n'''\n# if __name__ == '__main__':\nx = f\"{'if __name__ == \"__main__\":'}\"\n",
            )],
            exec: &[],
            entrypoint: None,
            expect: NotFound(&["rule 5 (main-guard)", "none found"]),
        },
        Case {
            name: "guard-less script: the only root module with top-level calls",
            dir: "repo",
            files: &[
                (
                    "bot.py",
                    "import os\nclient = make()\n\nclient.run(os.environ['TOKEN'])\n",
                ),
                ("helpers.py", "def make():\n    return 1\n"),
            ],
            exec: &[],
            entrypoint: None,
            expect: py(
                "script",
                &["python", "/app/bot.py"],
                &["bot.py", "line 4", "no `__main__` guard"],
            ),
        },
        Case {
            name: "guard-less scripts: several with top-level calls is not a guess",
            dir: "repo",
            files: &[("a.py", "print(1)\n"), ("b.py", "print(2)\n")],
            exec: &[],
            entrypoint: None,
            expect: NotFound(&["rule 5 (script)", "a.py line 1, b.py line 1"]),
        },
        // ---- framework detection beats rules 1-5 ------------------------------------------
        Case {
            name: "a FastAPI main.py that only defines the app gets uvicorn, not `python main.py`",
            dir: "repo",
            files: &[
                (
                    "main.py",
                    "from fastapi import FastAPI\n\napp = FastAPI()\n\n@app.get('/')\ndef root():\n    return {}\n",
                ),
                ("requirements.txt", "fastapi\nuvicorn[standard]\n"),
            ],
            exec: &[],
            entrypoint: None,
            expect: Entry {
                rule: "framework:asgi",
                language: Language::Python,
                argv: &[
                    "sh",
                    "-c",
                    "exec python -m uvicorn main:app --host 127.0.0.1 --port ${PORT:-8000}",
                ],
                why: &[
                    "main.py",
                    "FastAPI app object `app`",
                    "requirements.txt line 2",
                ],
                port: Some(8000),
            },
        },
        Case {
            name: "Django two levels down, no gunicorn: runserver on loopback from that folder",
            dir: "repo",
            files: &[
                (
                    "src/site/manage.py",
                    "import os\nos.environ.setdefault('DJANGO_SETTINGS_MODULE', 'cfg.settings')\n",
                ),
                ("src/site/cfg/__init__.py", ""),
                ("src/site/cfg/settings.py", "DEBUG = True\n"),
                ("requirements.txt", "django\n"),
            ],
            exec: &[],
            entrypoint: None,
            expect: Entry {
                rule: "framework:django",
                language: Language::Python,
                argv: &[
                    "sh",
                    "-c",
                    "exec python manage.py runserver --noreload 127.0.0.1:${PORT:-8000}",
                ],
                why: &["src/site/manage.py", "run from src/site/"],
                port: Some(8000),
            },
        },
        // ---- rule 6 -------------------------------------------------------------------------
        Case {
            name: "executable main at the root",
            dir: "repo",
            files: &[("main", "\u{7f}ELF"), ("README.md", "hi\n")],
            exec: &["main"],
            entrypoint: None,
            expect: Entry {
                rule: "binary-main",
                language: Language::Binary,
                argv: &["/app/main"],
                why: &["mode 755", "rule 6"],
                port: None,
            },
        },
        Case {
            name: "executable main with a python shebang needs a Python image",
            dir: "repo",
            files: &[("main", "#!/usr/bin/env python3\nprint('hi')\n")],
            exec: &["main"],
            entrypoint: None,
            expect: Entry {
                rule: "binary-main",
                language: Language::Python,
                argv: &["/app/main"],
                why: &["Python shebang `#!/usr/bin/env python3`"],
                port: None,
            },
        },
        Case {
            name: "non-executable main is not run, and the error says so",
            dir: "repo",
            files: &[("main", "\u{7f}ELF")],
            exec: &[],
            entrypoint: None,
            expect: NotFound(&[
                "`main` exists but is not executable (mode 644",
                "chmod +x main",
            ]),
        },
        // ---- compose command vs the Dockerfile's CMD; placeholders ---------------------------
        Case {
            name: "a compose command for the repo's own build beats its placeholder CMD [\"bash\"]",
            dir: "repo",
            files: &[
                (
                    "Dockerfile",
                    "FROM python:3.12-slim\nWORKDIR /app\nCOPY . .\nCMD [\"bash\"]\n",
                ),
                (
                    "docker-compose.yml",
                    "services:\n  web:\n    build: .\n    command: python source/manage.py runserver 0.0.0.0:8000\n    ports:\n      - \"8000:8000\"\n",
                ),
                ("source/manage.py", GUARD),
            ],
            exec: &[],
            entrypoint: None,
            expect: Entry {
                rule: "platform:compose",
                language: Language::Python,
                argv: &["python", "source/manage.py", "runserver", "0.0.0.0:8000"],
                why: &["docker-compose.yml line 4", "replaces the Dockerfile's CMD"],
                port: Some(8000),
            },
        },
        Case {
            name: "a compose command for the repo's own build beats a real Dockerfile CMD too",
            dir: "repo",
            files: &[
                (
                    "Dockerfile",
                    "FROM python:3.12-slim\nCOPY . /app\nWORKDIR /app\nCMD [\"gunicorn\", \"app:app\"]\n",
                ),
                (
                    "compose.yaml",
                    "services:\n  api:\n    build:\n      context: .\n    command: [\"gunicorn\", \"-b\", \"0.0.0.0:5000\", \"wsgi:app\"]\n",
                ),
                ("wsgi.py", "app = None\n"),
            ],
            exec: &[],
            entrypoint: None,
            expect: Entry {
                rule: "platform:compose",
                language: Language::Python,
                argv: &["gunicorn", "-b", "0.0.0.0:5000", "wsgi:app"],
                why: &["service `api` command"],
                port: Some(5000),
            },
        },
        Case {
            name: "a placeholder CMD (a REPL) is never chosen over a real command found elsewhere",
            dir: "repo",
            files: &[
                (
                    "Dockerfile",
                    "FROM python:3.12-slim\nCOPY . /app\nCMD [\"python3\"]\n",
                ),
                ("main.py", GUARD),
            ],
            exec: &[],
            entrypoint: None,
            expect: py("main.py", &["python", "/app/main.py"], &["rule 1"]),
        },
        Case {
            name: "a placeholder alone is not a start command, and the error says why",
            dir: "repo",
            files: &[
                ("Dockerfile", "FROM debian\nCMD [\"sleep\", \"infinity\"]\n"),
                ("README.md", "# tools\n"),
            ],
            exec: &[],
            entrypoint: None,
            expect: NotFound(&["`sleep infinity` is only a placeholder (sleeps forever)"]),
        },
        // ---- nothing ------------------------------------------------------------------------
        Case {
            name: "nothing found: the error lists every rule tried, in order",
            dir: "repo",
            files: &[
                ("README.md", "# nothing to run\n"),
                ("lib/helpers.py", "x = 1\n"),
            ],
            exec: &[],
            entrypoint: None,
            expect: NotFound(&[
                "rule 0 (override): looked for a repos-file `entrypoint`, `LABEL ENTRYPOINT=` in ./Dockerfile and `[tool.iac] entrypoint` in ./pyproject.toml; found no `entrypoint` in the repos file, no Dockerfile, no pyproject.toml",
                "platform declarations: Procfile: there is no Procfile; render.yaml: there is no render.yaml",
                "compose: there is no compose.yaml",
                "rule 1 (main-module, main.py): looked for __main__.py and main.py",
                "rule 2 (project.scripts)",
                "rule 2 (poetry.scripts)",
                "rule 2 (setup.cfg): looked for the first line of `console_scripts`",
                "rule 2 (setup.py): looked for a literal `entry_points`",
                "rule 3 (package-main): looked for {pkg}/__main__.py and src/{pkg}/__main__.py",
                "rule 4 (app.py)",
                "rule 5 (main-guard)",
                "rule 5 (script)",
                "rule 6 (binary-main): looked for an executable file `main` at the repo root; it does not exist",
            ]),
        },
    ]
}

fn build(root: &std::path::Path, case: &Case) -> std::path::PathBuf {
    let dir = root.join(case.dir);
    std::fs::create_dir_all(&dir).unwrap();
    for (path, content) in case.files {
        let p = dir.join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, content).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    for path in case.exec {
        std::fs::set_permissions(dir.join(path), std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    dir
}

fn check(case: &Case, got: Result<iac_core::Entry, EntryError>) -> Result<(), String> {
    let contains_all = |text: &str, needles: &[&str]| -> Result<(), String> {
        match needles.iter().find(|n| !text.contains(**n)) {
            Some(n) => Err(format!("expected {n:?} in:\n{text}")),
            None => Ok(()),
        }
    };
    match (&case.expect, got) {
        (
            Expect::Entry {
                rule,
                language,
                argv,
                why,
                port,
            },
            Ok(e),
        ) => {
            if e.rule != *rule || e.language != *language || e.argv != *argv || e.port != *port {
                return Err(format!(
                    "expected rule {rule} {language:?} {argv:?} port {port:?}, got {e:?}"
                ));
            }
            if e.why.lines().count() != 1 || !e.why.ends_with('.') {
                return Err(format!("why must be one sentence: {:?}", e.why));
            }
            contains_all(&e.why, why)
        }
        (Expect::NotFound(needles), Err(e @ EntryError::NotFound { .. })) => {
            let text = e.to_string();
            // Rules are listed in order.
            let mut last = 0;
            for n in *needles {
                match text[last..].find(n) {
                    Some(i) => last += i,
                    None => return Err(format!("expected {n:?} (in order) in:\n{text}")),
                }
            }
            Ok(())
        }
        (Expect::Ambiguous(needles), Err(e @ EntryError::Ambiguous { .. })) => {
            contains_all(&e.to_string(), needles)
        }
        (Expect::Invalid(needles), Err(e @ EntryError::InvalidOverride { .. })) => {
            contains_all(&e.to_string(), needles)
        }
        (want, got) => Err(format!("expected {want:?}, got {got:?}")),
    }
}

#[test]
fn resolution_table() {
    let cases = cases();
    assert!(cases.len() >= 12);
    let resolver = DefaultResolver::new();
    let mut failures = Vec::new();
    for case in &cases {
        let root = tempfile::tempdir().unwrap();
        let dir = build(root.path(), case);
        let source = Source {
            dir,
            commit: None,
            digest: "sha256:test".into(),
            origin: "test".into(),
        };
        let got = resolver.resolve(&source, case.entrypoint.map(str::to_string));
        if let Err(why) = check(case, got) {
            failures.push(format!("[{}] {why}", case.name));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n\n")
    );
}

#[test]
fn every_rule_id_is_covered_by_the_table() {
    let ids = [
        "override:repos-file",
        "override:dockerfile-label",
        "override:pyproject",
        "main-module",
        "main.py",
        "project.scripts",
        "poetry.scripts",
        "setup.cfg",
        "setup.py",
        "package-main",
        "app.py",
        "platform:procfile",
        "framework:django",
        "main-guard",
        "script",
        "binary-main",
    ];
    let cases = cases();
    for id in ids {
        assert!(
            cases
                .iter()
                .any(|c| matches!(c.expect, Expect::Entry { rule, .. } if rule == id)),
            "no case for rule {id}"
        );
    }
}

#[test]
fn missing_source_dir_is_an_io_error_naming_it() {
    let root = tempfile::tempdir().unwrap();
    let missing = root.path().join("nope");
    let e = DefaultResolver::new()
        .resolve_dir(&missing, None)
        .unwrap_err();
    assert!(matches!(e, EntryError::Io { .. }));
    assert!(e.to_string().contains("nope"), "{e}");
}

#[test]
fn broken_pyproject_is_a_parse_error_naming_the_file() {
    let root = tempfile::tempdir().unwrap();
    std::fs::write(root.path().join("pyproject.toml"), "[project\nname = 1\n").unwrap();
    let e = DefaultResolver::new()
        .resolve_dir(root.path(), None)
        .unwrap_err();
    assert!(matches!(e, EntryError::Parse { .. }), "{e:?}");
    assert!(e.to_string().contains("pyproject.toml"), "{e}");
}

#[test]
fn invalid_console_script_is_a_parse_error() {
    let root = tempfile::tempdir().unwrap();
    std::fs::write(
        root.path().join("pyproject.toml"),
        "[project.scripts]\nsvc = \"not a target\"\n",
    )
    .unwrap();
    let e = DefaultResolver::new()
        .resolve_dir(root.path(), None)
        .unwrap_err();
    assert!(
        e.to_string().contains("svc = \"not a target\"")
            && e.to_string().contains("module:function"),
        "{e}"
    );
}
