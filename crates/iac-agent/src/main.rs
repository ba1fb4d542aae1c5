//! The `iac-agent` executable: parses the command line, runs the supervisor on a current-thread
//! Tokio runtime and exits with its code. See the library docs for the behaviour.

use clap::Parser;
use iac_agent::supervisor::{EXIT_SETUP_FAILED, log};
use iac_agent::{Cli, Options};

fn main() {
    let cli = Cli::parse();
    if cli.probe {
        std::process::exit(iac_agent::probe::run(cli.listen));
    }
    let opts = match Options::from_cli(cli) {
        Ok(o) => o,
        Err(e) => {
            log(e);
            std::process::exit(EXIT_SETUP_FAILED);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            log(format!("cannot start the async runtime: {e}"));
            std::process::exit(EXIT_SETUP_FAILED);
        }
    };
    let code = runtime.block_on(iac_agent::run(opts));
    // Exit without dropping the runtime: a blocking write to a stuck stdout must not hold PID 1.
    std::process::exit(code);
}
