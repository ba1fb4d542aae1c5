//! The `iac` binary: parses the CLI, loads configuration, wires backends into a Deployer, and runs
//! the command (or the admin API with `iac serve`).

mod api;

fn main() {}
