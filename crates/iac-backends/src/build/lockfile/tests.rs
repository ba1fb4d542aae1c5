//! Unit tests of the lock readers, on fixtures modelled on real lock files
//! (`tests/fixtures/locks/<tool>/`).

use super::*;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/locks");

fn fixture(tool: &str, file: &str) -> String {
    std::fs::read_to_string(format!("{FIXTURES}/{tool}/{file}")).unwrap()
}

fn pyproject(tool: &str) -> toml::Table {
    toml::from_str(&fixture(tool, "pyproject.toml")).unwrap()
}

fn pins(l: &Locked) -> Vec<&str> {
    l.pins.iter().map(|(p, _)| p.as_str()).collect()
}

fn sel(extras: &[&str], groups: &[&str]) -> Selection {
    Selection {
        extras: extras.iter().map(|s| s.to_string()).collect(),
        groups: groups.iter().map(|s| s.to_string()).collect(),
    }
}

#[test]
fn uv_lock_pins_the_main_set_walked_from_the_virtual_root() {
    let doc = pyproject("uv");
    let l = parse(
        LockKind::Uv,
        &fixture("uv", "uv.lock"),
        Some(&doc),
        (3, 11),
        &Selection::default(),
    )
    .unwrap();
    let mut got = pins(&l);
    got.sort();
    assert_eq!(
        got,
        [
            "annotated-types==0.7.0",
            "anyio==4.9.0",
            "click==8.1.8",
            "fastapi==0.115.12",
            "h11==0.16.0",
            "httptools==0.6.4",
            "idna==3.10",
            "pydantic==2.11.3",
            "sniffio==1.3.1",
            "starlette==0.46.2",
            "typing-extensions==4.13.2",
            "uvicorn==0.34.2",
            "uvloop==0.21.0",
        ],
        "uvicorn[standard] brings httptools and uvloop; colorama is Windows-only; pytest, ruff (dev) and redis (extra) stay out"
    );
    let fastapi = l
        .pins
        .iter()
        .find(|(p, _)| p.starts_with("fastapi"))
        .unwrap();
    assert_eq!(fastapi.1, "uv.lock (via the project)");
    let uvloop = l
        .pins
        .iter()
        .find(|(p, _)| p.starts_with("uvloop"))
        .unwrap();
    assert_eq!(uvloop.1, "uv.lock (via uvicorn[standard])");
    // The fixture's uvloop lists only its sdist; httptools has a manylinux wheel for cp311.
    assert_eq!(l.sdists, ["uvloop 0.21.0"]);
    let skipped = l.skipped.join("\n");
    assert!(
        skipped.contains("dependency group dev left out (pytest, ruff)"),
        "{skipped}"
    );
    assert!(
        skipped.contains("extra redis left out (redis)"),
        "{skipped}"
    );
    assert!(
        skipped.contains("colorama (required by the project): markers false on CPython 3.11"),
        "{skipped}"
    );
    // typing-extensions is also reached through anyio with a marker that is true on 3.11 but
    // false on 3.13; fastapi needs it anyway.
    let on_313 = parse(
        LockKind::Uv,
        &fixture("uv", "uv.lock"),
        Some(&doc),
        (3, 13),
        &Selection::default(),
    )
    .unwrap();
    assert!(pins(&on_313).contains(&"typing-extensions==4.13.2"));
    assert!(
        on_313
            .skipped
            .iter()
            .any(|s| s.contains("typing-extensions (required by anyio)")),
        "{:?}",
        on_313.skipped
    );
}

#[test]
fn uv_lock_groups_and_extras_only_when_asked() {
    let doc = pyproject("uv");
    let l = parse(
        LockKind::Uv,
        &fixture("uv", "uv.lock"),
        Some(&doc),
        (3, 11),
        &sel(&["redis"], &["dev"]),
    )
    .unwrap();
    let got = pins(&l);
    for p in ["pytest==8.3.5", "ruff==0.11.6", "redis==5.2.1"] {
        assert!(got.contains(&p), "{p} in {got:?}");
    }
    assert!(
        !l.skipped.iter().any(|s| s.contains("left out (")),
        "{:?}",
        l.skipped
    );
    let err = parse(
        LockKind::Uv,
        &fixture("uv", "uv.lock"),
        Some(&doc),
        (3, 11),
        &sel(&[], &["docs"]),
    )
    .unwrap_err();
    assert!(
        err.contains("uv.lock") && err.contains("\"docs\"") && err.contains("it has: dev"),
        "{err}"
    );
}

#[test]
fn poetry_lock_starts_from_tool_poetry_dependencies() {
    let doc = pyproject("poetry");
    let l = parse(
        LockKind::Poetry,
        &fixture("poetry", "poetry.lock"),
        Some(&doc),
        (3, 11),
        &Selection::default(),
    )
    .unwrap();
    let mut got = pins(&l);
    got.sort();
    assert_eq!(
        got,
        [
            "blinker==1.8.2",
            "click==8.1.7",
            "flask-mail==0.9.1",
            "flask==3.0.3",
            "gunicorn==22.0.0",
            "itsdangerous==2.2.0",
            "jinja2==3.1.4",
            "markupsafe==2.1.5",
            "packaging==24.1",
            "werkzeug==3.0.3",
        ],
        "black and pytest (dev group), tomli (python <3.11), psycopg2-binary (extra) and colorama (Windows) stay out"
    );
    assert_eq!(
        l.sdists,
        ["flask-mail 0.9.1"],
        "Flask-Mail is published as an sdist only"
    );
    let skipped = l.skipped.join("\n");
    assert!(
        skipped.contains("dependency group dev left out (black, pytest)"),
        "{skipped}"
    );
    assert!(
        skipped.contains("extra postgres left out (psycopg2-binary)"),
        "{skipped}"
    );
    assert!(
        skipped.contains("tomli (required by the project): markers false"),
        "{skipped}"
    );
    // The extra, asked for.
    let with = parse(
        LockKind::Poetry,
        &fixture("poetry", "poetry.lock"),
        Some(&doc),
        (3, 11),
        &sel(&["postgres"], &[]),
    )
    .unwrap();
    assert!(pins(&with).contains(&"psycopg2-binary==2.9.9"));
    // On 3.10, tomli's marker holds.
    let old = parse(
        LockKind::Poetry,
        &fixture("poetry", "poetry.lock"),
        Some(&doc),
        (3, 10),
        &Selection::default(),
    )
    .unwrap();
    assert!(pins(&old).contains(&"tomli==2.0.1"));
}

#[test]
fn poetry_2_lock_with_project_table_and_group_markers() {
    let doc: toml::Table = toml::from_str(
        "[project]\nname='x'\nversion='1'\ndependencies=['requests (>=2.32,<3.0)']\n",
    )
    .unwrap();
    let lock = r#"
[[package]]
name = "requests"
version = "2.32.3"
optional = false
python-versions = ">=3.8"
groups = ["main"]
files = [{file = "requests-2.32.3-py3-none-any.whl", hash = "sha256:00"}]

[package.dependencies]
idna = ">=2.5,<4"
win-inet-pton = {version = "*", markers = "sys_platform == \"win32\" and python_version == \"2.7\""}

[[package]]
name = "idna"
version = "3.7"
optional = false
python-versions = ">=3.5"
groups = ["main"]
markers = {main = "python_version >= \"3.8\""}
files = []

[metadata]
lock-version = "2.1"
python-versions = ">=3.11"
content-hash = "00"
"#;
    let l = parse(
        LockKind::Poetry,
        lock,
        Some(&doc),
        (3, 11),
        &Selection::default(),
    )
    .unwrap();
    assert_eq!(pins(&l), ["requests==2.32.3", "idna==3.7"]);
    assert!(
        l.sdists.is_empty(),
        "a lock that lists no files says nothing about sdists"
    );
}

#[test]
fn pdm_lock_leaves_the_test_group_out() {
    let doc = pyproject("pdm");
    let l = parse(
        LockKind::Pdm,
        &fixture("pdm", "pdm.lock"),
        Some(&doc),
        (3, 11),
        &Selection::default(),
    )
    .unwrap();
    let mut got = pins(&l);
    got.sort();
    assert_eq!(
        got,
        [
            "certifi==2024.7.4",
            "charset-normalizer==3.3.2",
            "idna==3.7",
            "python-dotenv==1.0.1",
            "requests==2.32.3",
            "urllib3==2.2.2",
        ]
    );
    assert!(
        l.skipped
            .iter()
            .any(|s| s.contains("dependency group test left out (pytest)"))
    );
    let test = parse(
        LockKind::Pdm,
        &fixture("pdm", "pdm.lock"),
        Some(&doc),
        (3, 11),
        &sel(&[], &["test"]),
    )
    .unwrap();
    let got = pins(&test);
    for p in [
        "pytest==8.3.2",
        "iniconfig==2.0.0",
        "pluggy==1.5.0",
        "packaging==24.1",
    ] {
        assert!(got.contains(&p), "{p} in {got:?}");
    }
    assert!(
        !got.iter().any(|p| p.starts_with("colorama")),
        "Windows-only"
    );
}

#[test]
fn pdm_extras_entries_carry_the_extras_dependencies() {
    let doc: toml::Table = toml::from_str(
        "[project]\nname='x'\nversion='1'\ndependencies=['uvicorn[standard]>=0.30']\n",
    )
    .unwrap();
    let lock = r#"
[[package]]
name = "uvicorn"
version = "0.30.1"
groups = ["default"]
dependencies = ["h11>=0.8"]

[[package]]
name = "uvicorn"
version = "0.30.1"
extras = ["standard"]
groups = ["default"]
dependencies = ["httptools>=0.5.0", "uvicorn==0.30.1"]

[[package]]
name = "h11"
version = "0.14.0"
groups = ["default"]

[[package]]
name = "httptools"
version = "0.6.1"
groups = ["default"]
"#;
    let l = parse(
        LockKind::Pdm,
        lock,
        Some(&doc),
        (3, 11),
        &Selection::default(),
    )
    .unwrap();
    assert_eq!(
        pins(&l),
        ["uvicorn==0.30.1", "h11==0.14.0", "httptools==0.6.1"]
    );
}

#[test]
fn pipfile_lock_reads_default_only() {
    let l = parse(
        LockKind::Pipenv,
        &fixture("pipenv", "Pipfile.lock"),
        None,
        (3, 11),
        &Selection::default(),
    )
    .unwrap();
    assert_eq!(
        pins(&l),
        [
            "asgiref==3.8.1",
            "django==5.0.7",
            "gunicorn==22.0.0",
            "packaging==24.1",
            "sqlparse==0.5.1",
            "whitenoise==6.7.0",
        ]
    );
    let skipped = l.skipped.join("\n");
    assert!(
        skipped.contains("develop (pytest, pytest-django) left out"),
        "{skipped}"
    );
    assert!(skipped.contains("pywin32: markers false"), "{skipped}");
    let dev = parse(
        LockKind::Pipenv,
        &fixture("pipenv", "Pipfile.lock"),
        None,
        (3, 11),
        &sel(&[], &["dev"]),
    )
    .unwrap();
    assert!(pins(&dev).contains(&"pytest-django==4.8.0"));
}

#[test]
fn foreign_sources_and_stale_locks_are_refused_naming_the_package() {
    let doc = pyproject("uv");
    let lock = fixture("uv", "uv.lock").replace(
        "name = \"sniffio\"\nversion = \"1.3.1\"\nsource = { registry = \"https://pypi.org/simple\" }",
        "name = \"sniffio\"\nversion = \"1.3.1\"\nsource = { git = \"https://github.com/python-trio/sniffio?rev=v1.3.1#abc\" }",
    );
    let err = parse(
        LockKind::Uv,
        &lock,
        Some(&doc),
        (3, 11),
        &Selection::default(),
    )
    .unwrap_err();
    assert!(
        err.contains("uv.lock: sniffio (required by anyio) is locked from git"),
        "{err}"
    );
    let stale = fixture("uv", "uv.lock")
        .replace("name = \"h11\"\nversion", "name = \"h11-renamed\"\nversion");
    let err = parse(
        LockKind::Uv,
        &stale,
        Some(&doc),
        (3, 11),
        &Selection::default(),
    )
    .unwrap_err();
    assert!(
        err.contains("uvicorn requires h11") && err.contains("out of date"),
        "{err}"
    );
    let err = parse(
        LockKind::Uv,
        "version = 1\n[[package]\n",
        None,
        (3, 11),
        &Selection::default(),
    )
    .unwrap_err();
    assert!(err.starts_with("uv.lock: not valid TOML"), "{err}");
    let err = parse(
        LockKind::Pipenv,
        "{\"default\": {\"x\": {\"git\": \"https://h/x\"}}}",
        None,
        (3, 11),
        &Selection::default(),
    )
    .unwrap_err();
    assert!(
        err.contains("Pipfile.lock: default x") && err.contains("git"),
        "{err}"
    );
    let err = parse(LockKind::Poetry, "", None, (3, 11), &Selection::default()).unwrap_err();
    assert!(err.contains("no pyproject.toml"), "{err}");
}

#[test]
fn wheel_tags_are_matched_against_the_image() {
    let yes = [
        "six-1.16.0-py2.py3-none-any.whl",
        "MarkupSafe-2.1.5-cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64.whl",
        "cryptography-42.0.8-cp39-abi3-manylinux_2_28_x86_64.whl",
        "x-1-py311-none-any.whl",
    ];
    let no = [
        "x-1.tar.gz",
        "MarkupSafe-2.1.5-cp311-cp311-win_amd64.whl",
        "MarkupSafe-2.1.5-cp312-cp312-manylinux_2_17_x86_64.whl",
        "x-1-cp311-cp311-manylinux_2_39_x86_64.whl",
        "x-1-cp311-cp311-musllinux_1_1_x86_64.whl",
        "x-1-py2-none-any.whl",
    ];
    for f in yes {
        assert!(wheel_fits(f, (3, 11)), "{f}");
    }
    for f in no {
        assert!(!wheel_fits(f, (3, 11)), "{f}");
    }
    assert!(
        wheel_fits("x-1-cp313-cp313-manylinux_2_39_x86_64.whl", (3, 13)),
        "trixie's glibc"
    );
}
