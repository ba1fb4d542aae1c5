//! Fuzz target: the repo files that decide what is installed besides requirements files — the
//! lock files (`iac_backends::build::lockfile::parse`: uv.lock, poetry.lock, pdm.lock,
//! Pipfile.lock) and apt.txt/Aptfile (`iac_backends::build::aptfile::parse`). Whatever the text,
//! parsing never panics, and what it accepts is safe to hand on: every pin is a plain
//! `name==version` that the requirements filter accepts as an index requirement (so nothing from a
//! lock can carry an option, a URL or a path to pip), every local project stays inside the tree,
//! and every apt package is a plain Debian package name (optionally `=version`), never an option
//! or a path for apt-get.
#![no_main]

use iac_backends::build::aptfile;
use iac_backends::build::lockfile::{LockKind, Selection, parse};
use iac_backends::build::requirements::{Line, classify};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    if selector % 5 == 4 {
        if let Ok(apt) = aptfile::parse("apt.txt", text) {
            for p in &apt.packages {
                let name = p.split('=').next().unwrap_or_default();
                assert!(!p.starts_with('-'), "an option {p:?} accepted");
                // apt-get reads an argument with a `/`, or a `.deb` file, as a path.
                assert!(!p.contains('/') && !name.ends_with(".deb"), "a path {p:?} accepted");
                assert!(
                    name.len() >= 2
                        && name
                            .chars()
                            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "+-.".contains(c)),
                    "{p:?} is not a Debian package name"
                );
                assert!(!p.chars().any(char::is_whitespace), "{p:?}");
            }
        }
        return;
    }
    let kind = LockKind::ALL[usize::from(selector % 4)];
    let selection = Selection {
        extras: vec!["extra".into()],
        groups: vec![],
    };
    // Poetry and PDM locks start from the project's own dependencies.
    let pyproject: toml::Table = toml::from_str(
        "[project]\nname = \"app\"\ndependencies = [\"a\", \"b>=1\"]\n\
         [tool.poetry.dependencies]\npython = \"^3.11\"\na = \"*\"\n",
    )
    .expect("the fixed pyproject parses");
    let Ok(locked) = parse(kind, text, Some(&pyproject), (3, 11), &selection) else {
        return;
    };
    for (pin, from) in &locked.pins {
        let (name, version) = pin
            .split_once("==")
            .unwrap_or_else(|| panic!("pin {pin:?} (from {from}) is not name==version"));
        assert!(!name.is_empty() && !version.is_empty(), "{pin:?}");
        match classify(pin, "") {
            Ok(Line::Index(req)) => {
                assert!(req.hashes.is_empty(), "{pin:?} carried hashes");
            }
            other => panic!("pin {pin:?} (from {from}) is not an index requirement: {other:?}"),
        }
    }
    for local in &locked.local {
        let path = local.trim_start_matches("./");
        assert!(!local.starts_with('/'), "absolute local project {local:?}");
        assert!(
            !path.split('/').any(|p| p == ".."),
            "local project {local:?} leaves the tree"
        );
    }
});
