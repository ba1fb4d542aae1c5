//! The `iac` binary: see the `iac_bin` library for everything it does.
fn main() -> std::process::ExitCode {
    iac_bin::run()
}
