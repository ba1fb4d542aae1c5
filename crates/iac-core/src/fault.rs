//! Test-only fault points: `IAC_TEST_FAULT_POINT=<name>` makes the process abort — no
//! destructor, no cleanup, as a SIGKILL or a crash would — the moment it reaches the point of
//! that name. The killed-deploy tests (`crates/iac-bin/tests/killed_deploy.rs`) use them to stop a
//! deploy at each step deterministically, then check that the next deploy converges. Without the
//! variable a point is one environment lookup.
//!
//! The points, in the order a deploy reaches them ([`POINTS`]): `fetched`, `built`, `certs`
//! (per service, in `deployer/prepare.rs`), `locked` (the project lock taken), `sidecar-started`,
//! `app-created` (the docker provisioner creating a pair), `replace-started`, `replace-swapped`,
//! `replace-old-removed` (a replacement: new pair up, alias moved, old pair gone), `proved`
//! (every service probed, before the report is written).

/// The environment variable naming the point to abort at.
pub const FAULT_ENV: &str = "IAC_TEST_FAULT_POINT";

/// Every fault point, in the order a deploy reaches them.
pub const POINTS: &[&str] = &[
    "fetched",
    "built",
    "certs",
    "locked",
    "sidecar-started",
    "app-created",
    "replace-started",
    "replace-swapped",
    "replace-old-removed",
    "proved",
];

/// Aborts the process when [`FAULT_ENV`] names `name`.
pub fn point(name: &str) {
    debug_assert!(POINTS.contains(&name), "unknown fault point {name}");
    if std::env::var_os(FAULT_ENV).is_some_and(|want| want == name) {
        eprintln!("iac: fault point {name} reached ({FAULT_ENV}): aborting");
        std::process::abort();
    }
}
