//! `iac-bin` as a library: everything the `iac` binary does, importable by its integration tests.
//! `main.rs` only calls [`run`].

pub mod api;

/// Entry point of the `iac` binary.
pub fn run() -> std::process::ExitCode {
    std::process::ExitCode::SUCCESS
}
