//! docs/architecture.md stays true: every file or directory it names in backticks exists (found
//! from the repository root, `crates/`, a crate, or a crate's `src/` and its first-level
//! modules, as the map writes them; `./x` means a repo's file and is skipped), and every config
//! key it names as `` `[section] key` `` of one of iac's sections is a key of the effective
//! configuration (`iac config show`). Catches the commonest drift: a file
//! renamed or removed, a config key renamed.

use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

/// The text between each pair of backticks.
fn backticked(text: &str) -> Vec<String> {
    text.split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect()
}

/// Where the map's relative paths may start: the root, `crates/`, each crate, each crate's
/// `src/` and each directory right under it.
fn bases(root: &Path) -> Vec<PathBuf> {
    let mut out = vec![root.to_path_buf(), root.join("crates")];
    let crates = std::fs::read_dir(root.join("crates")).unwrap();
    for c in crates.flatten().map(|e| e.path()).filter(|p| p.is_dir()) {
        out.push(c.clone());
        let src = c.join("src");
        if let Ok(dirs) = std::fs::read_dir(&src) {
            out.extend(dirs.flatten().map(|e| e.path()).filter(|p| p.is_dir()));
        }
        out.push(src);
    }
    out
}

/// A backticked token that is a repository path: relative, with a `/`, only path characters.
fn is_path(token: &str) -> bool {
    token.contains('/')
        && !token.starts_with('/')
        && !token.starts_with("./") // a repo's file (`./Dockerfile`), not one of ours
        && !token.contains("://")
        && token
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-/".contains(c))
        && !token.starts_with("iac/") // image names (`iac/envoy:…`) have a colon; bare repos too
}

#[test]
fn every_path_the_architecture_map_names_exists() {
    let root = root();
    let text = std::fs::read_to_string(root.join("docs/architecture.md")).unwrap();
    let bases = bases(&root);
    let missing: Vec<String> = backticked(&text)
        .into_iter()
        .filter(|t| is_path(t))
        .filter(|t| !bases.iter().any(|b| b.join(t).exists()))
        .collect();
    assert!(
        missing.is_empty(),
        "docs/architecture.md names paths that do not exist: {missing:?}"
    );
}

#[test]
fn every_config_key_the_architecture_map_names_exists() {
    let root = root();
    let text = std::fs::read_to_string(root.join("docs/architecture.md")).unwrap();
    let config = serde_json::to_value(iac_bin::config::IacConfig::default()).unwrap();
    let mut checked = 0;
    let mut missing = Vec::new();
    for token in backticked(&text) {
        let Some(rest) = token.strip_prefix('[') else {
            continue;
        };
        let Some((section, key)) = rest.split_once("] ") else {
            continue;
        };
        let key = key.split([' ', '=']).next().unwrap_or_default();
        if key.is_empty() || !key.chars().all(|c| c.is_ascii_lowercase() || c == '_') {
            continue;
        }
        // A section iac does not have is another tool's file (fly.toml's `[deploy]`, …).
        if config
            .get(section.split('.').next().unwrap_or_default())
            .is_none()
        {
            continue;
        }
        let mut at = &config;
        for part in section.split('.') {
            at = &at[part];
        }
        checked += 1;
        if at.get(key).is_none() {
            missing.push(format!("[{section}] {key}"));
        }
    }
    assert!(
        checked > 0,
        "the map names no config key; the pattern is off"
    );
    assert!(
        missing.is_empty(),
        "docs/architecture.md names config keys that do not exist: {missing:?}"
    );
}
