//! `--otel-auto-instrument VENV`: loads OpenTelemetry's Python auto-instrumentation into the
//! entry the way `opentelemetry-instrument` does, without starting a Python process to do it.
//!
//! `opentelemetry-instrument CMD ARGS…` is itself a Python program: it starts an interpreter,
//! scans entry points, then sets `PYTHONPATH` to `<auto_instrumentation dir>:<cwd>:<PYTHONPATH>`
//! and execs CMD, whose interpreter then imports the `sitecustomize` in that directory (which
//! configures the SDK). The agent sets the same `PYTHONPATH` on the entry itself ([`python_path`])
//! and execs CMD directly: one interpreter start less per app start (about 0.15 s of CPU here),
//! the same instrumentation.

use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};

/// Where `sitecustomize.py` of `opentelemetry-instrumentation` lives inside a site-packages dir.
const AUTO_DIR: &str = "opentelemetry/instrumentation/auto_instrumentation";

/// The auto-instrumentation directory of the virtualenv `venv`:
/// `<venv>/lib/python*/site-packages/opentelemetry/instrumentation/auto_instrumentation`, the one
/// holding `sitecustomize.py`. Exactly one Python of the venv must have it.
pub fn find_auto_instrumentation(venv: &Path) -> Result<PathBuf, String> {
    let lib = venv.join("lib");
    let entries = std::fs::read_dir(&lib).map_err(|e| {
        format!(
            "--otel-auto-instrument {}: cannot read {}: {e} (expected a Python virtualenv)",
            venv.display(),
            lib.display()
        )
    })?;
    let mut found: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with("python"))
        .map(|e| lib.join(e.file_name()).join("site-packages").join(AUTO_DIR))
        .filter(|dir| dir.join("sitecustomize.py").is_file())
        .collect();
    found.sort();
    match found.len() {
        1 => Ok(found.remove(0)),
        0 => Err(format!(
            "--otel-auto-instrument {}: no {AUTO_DIR}/sitecustomize.py under {}/python*/site-packages \
             (expected opentelemetry-instrumentation installed in that virtualenv)",
            venv.display(),
            lib.display()
        )),
        _ => Err(format!(
            "--otel-auto-instrument {}: several Pythons have OpenTelemetry's auto-instrumentation ({}); expected one",
            venv.display(),
            found
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}

/// The entry's `PYTHONPATH`, as `opentelemetry-instrument` computes it: `auto_dir` first, then the
/// working directory `cwd` unless already listed (so `gunicorn app:app` finds `app` the same
/// way), then `existing` (the container's `PYTHONPATH`) without `auto_dir`.
pub fn python_path(auto_dir: &Path, cwd: &Path, existing: Option<&OsStr>) -> OsString {
    let mut parts: Vec<PathBuf> = match existing {
        Some(v) if !v.is_empty() => std::env::split_paths(v).collect(),
        _ => Vec::new(),
    };
    if !parts.iter().any(|p| p == cwd) {
        parts.insert(0, cwd.to_path_buf());
    }
    parts.retain(|p| p != auto_dir);
    parts.insert(0, auto_dir.to_path_buf());
    std::env::join_paths(parts).unwrap_or_else(|_| auto_dir.as_os_str().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_path_is_what_opentelemetry_instrument_sets() {
        let auto = Path::new(
            "/v/lib/python3.11/site-packages/opentelemetry/instrumentation/auto_instrumentation",
        );
        let p = |existing: Option<&str>| {
            python_path(auto, Path::new("/app"), existing.map(OsStr::new))
                .to_string_lossy()
                .into_owned()
        };
        let a = auto.display();
        assert_eq!(p(None), format!("{a}:/app"));
        assert_eq!(p(Some("")), format!("{a}:/app"));
        assert_eq!(p(Some("/lib/x")), format!("{a}:/app:/lib/x"));
        // The working directory is not added twice, the auto dir is moved to the front.
        assert_eq!(p(Some("/lib/x:/app")), format!("{a}:/lib/x:/app"));
        assert_eq!(p(Some(&format!("/lib/x:{a}"))), format!("{a}:/app:/lib/x"));
    }

    #[test]
    fn the_auto_instrumentation_dir_is_found_in_the_venv_or_named_missing() {
        let venv = tempfile::tempdir().unwrap();
        let err = find_auto_instrumentation(venv.path()).unwrap_err();
        assert!(
            err.contains("cannot read") && err.contains("virtualenv"),
            "{err}"
        );
        let site = venv.path().join("lib/python3.11/site-packages");
        std::fs::create_dir_all(&site).unwrap();
        let err = find_auto_instrumentation(venv.path()).unwrap_err();
        assert!(
            err.contains("sitecustomize.py") && err.contains("opentelemetry-instrumentation"),
            "{err}"
        );
        let dir = site.join(AUTO_DIR);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("sitecustomize.py"), "").unwrap();
        assert_eq!(find_auto_instrumentation(venv.path()).unwrap(), dir);
        let other = venv
            .path()
            .join("lib/python3.12/site-packages")
            .join(AUTO_DIR);
        std::fs::create_dir_all(&other).unwrap();
        std::fs::write(other.join("sitecustomize.py"), "").unwrap();
        let err = find_auto_instrumentation(venv.path()).unwrap_err();
        assert!(
            err.contains("several") && err.contains("python3.12"),
            "{err}"
        );
    }
}
