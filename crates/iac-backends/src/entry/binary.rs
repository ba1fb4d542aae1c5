//! The binary provider: DESIGN.md §3 rule 6. A non-Python repo runs an executable regular file
//! named `main` at its root as `/app/main` (the image copies the repo to `/app`); a `main` with a
//! `#!…python…` shebang gets `Language::Python` so its image has an interpreter. Also builds the
//! Entry for an argv override in a repo that is not Python.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use iac_core::{Entry, EntryError, Language};

use super::overrides::Override;
use super::{Provider, override_entry};

/// Resolves repos that ship an executable `main` (rule 6).
#[derive(Debug, Clone, Copy, Default)]
pub struct BinaryProvider;

/// The mode of `./main` when it is a regular file (symlinks followed), else `None`.
fn main_mode(dir: &Path) -> Result<Option<u32>, EntryError> {
    let path = dir.join("main");
    match std::fs::metadata(&path) {
        Ok(m) if m.is_file() => Ok(Some(m.permissions().mode())),
        Ok(_) => Ok(None),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(EntryError::Io { path, source }),
    }
}

/// The `#!` line of a file, if it has one (first 256 bytes only).
fn shebang(path: &Path) -> Result<Option<String>, EntryError> {
    use std::io::Read;
    let io = |source| EntryError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut head = [0u8; 256];
    let n = std::fs::File::open(path)
        .and_then(|mut f| f.read(&mut head))
        .map_err(io)?;
    let text = String::from_utf8_lossy(&head[..n]);
    Ok(text
        .strip_prefix("#!")
        .map(|rest| format!("#!{}", rest.lines().next().unwrap_or("").trim())))
}

impl Provider for BinaryProvider {
    fn name(&self) -> &'static str {
        "binary"
    }

    fn detect(&self, dir: &Path) -> bool {
        main_mode(dir)
            .ok()
            .flatten()
            .is_some_and(|m| m & 0o111 != 0)
    }

    fn plan(&self, dir: &Path, over: Option<&Override>) -> Result<Entry, EntryError> {
        if let Some(o) = over {
            return Ok(override_entry(o, Language::Binary));
        }
        let miss = |found: String| EntryError::NotFound {
            dir: dir.to_path_buf(),
            tried: vec![format!(
                "rule 6 (binary-main): looked for an executable file `main` at the repo root; {found}"
            )],
        };
        match main_mode(dir)? {
            Some(mode) if mode & 0o111 != 0 => {
                // A `#!…python…` script needs a Python image even though it is run directly.
                let shebang = shebang(&dir.join("main"))?;
                let python = shebang.as_deref().is_some_and(|s| s.contains("python"));
                let note = match &shebang {
                    Some(s) if python => format!(" with a Python shebang `{s}`"),
                    Some(s) => format!(" with shebang `{s}`"),
                    None => String::new(),
                };
                Ok(Entry {
                    language: if python {
                        Language::Python
                    } else {
                        Language::Binary
                    },
                    rule: "binary-main".to_string(),
                    argv: vec!["/app/main".to_string()],
                    why: format!(
                        "`main` at the repo root is an executable file (mode {:o}){note}, run as /app/main (rule 6).",
                        mode & 0o7777
                    ),
                    origin: Some("main (executable at the repo root)".to_string()),
                    ..Entry::default()
                })
            }
            Some(mode) => Err(miss(format!(
                "`main` exists but is not executable (mode {:o}; run `chmod +x main`)",
                mode & 0o7777
            ))),
            None if dir.join("main").exists() => {
                Err(miss("`main` exists but is not a regular file".to_string()))
            }
            None => Err(miss("it does not exist".to_string())),
        }
    }
}
