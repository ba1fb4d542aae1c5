//! `--otel-auto-instrument VENV` against the real `iac-agent` binary and a real Python: the entry
//! starts with PYTHONPATH as `opentelemetry-instrument` would set it, so the interpreter imports
//! the auto-instrumentation's `sitecustomize` (a stand-in here that announces itself), and a venv
//! without it stops the agent before anything runs.

mod common;

use std::path::Path;

use common::Agent;

const AUTO: &str = "opentelemetry/instrumentation/auto_instrumentation";

/// A virtualenv layout whose auto-instrumentation `sitecustomize` prints a marker.
fn fake_venv(root: &Path) -> std::path::PathBuf {
    let dir = root.join("lib/python3.11/site-packages").join(AUTO);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("sitecustomize.py"),
        "print('sitecustomize of the auto-instrumentation loaded', flush=True)\n",
    )
    .unwrap();
    dir
}

#[tokio::test]
async fn the_entry_imports_the_auto_instrumentation_and_finds_its_working_directory() {
    let venv = tempfile::tempdir().unwrap();
    let auto = fake_venv(venv.path());
    let venv_arg = venv.path().to_str().unwrap();
    let agent = Agent::start(
        &["--otel-auto-instrument", venv_arg],
        &[
            "python3",
            "-c",
            "import os, time; print('PYTHONPATH=' + os.environ['PYTHONPATH'], flush=True); time.sleep(30)",
        ],
    );
    agent
        .stdout
        .wait_for("sitecustomize of the auto-instrumentation loaded");
    let line = agent.stdout.wait_for("PYTHONPATH=");
    let cwd = std::env::current_dir().unwrap();
    let expected = format!("PYTHONPATH={}:{}", auto.display(), cwd.display());
    assert!(line.starts_with(&expected), "{line:?} vs {expected:?}");
}

#[tokio::test]
async fn a_venv_without_the_auto_instrumentation_fails_before_running_anything() {
    let venv = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(venv.path().join("lib/python3.11/site-packages")).unwrap();
    let mut agent = Agent::spawn(
        &["--otel-auto-instrument", venv.path().to_str().unwrap()],
        &["sh", "-c", "echo should-not-run"],
    );
    assert_eq!(agent.wait_exit().code(), Some(2));
    agent.stderr.wait_for("sitecustomize.py");
    assert!(!agent.stdout.contains("should-not-run"));
}
