//! The `iac-agent` executable: parses the command line, runs the supervisor on a current-thread
//! Tokio runtime and exits with its code. See the library docs for the behaviour.

use clap::Parser;
use iac_agent::log::log;
use iac_agent::supervisor::EXIT_SETUP_FAILED;
use iac_agent::{Cli, Options};

fn main() {
    let cli = Cli::parse();
    if cli.probe {
        std::process::exit(iac_agent::probe::run(cli.listen));
    }
    if let Some(project) = cli.keeper.clone() {
        let opts = iac_agent::keeper::Options {
            project,
            engine: iac_agent::keeper::engine::Engine::new(cli.engine_socket.clone()),
            recheck: cli.keeper_recheck,
            backoff_max: cli
                .keeper_backoff_max
                .max(std::time::Duration::from_secs(1)),
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
        std::process::exit(runtime.block_on(iac_agent::keeper::run(opts)));
    }
    if cli.once {
        let user = match cli
            .user
            .as_deref()
            .map(iac_agent::user::resolve_from_system)
        {
            None => None,
            Some(Ok(u)) => Some(u),
            Some(Err(e)) => {
                log(e);
                std::process::exit(EXIT_SETUP_FAILED);
            }
        };
        std::process::exit(iac_agent::once::run(iac_agent::once::Job {
            argv: cli.argv,
            user,
            chdir: cli.chdir,
            grace: cli.grace,
            wait_tcp: cli.wait_tcp,
            wait_limit: iac_agent::once::WAIT_TCP_LIMIT,
        }));
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
        // Idle blocking threads (the tee's writes) are kept, not re-spawned: under a pids limit
        // an app may leave no room for a new thread (see supervisor::warm_blocking_pool).
        .thread_keep_alive(std::time::Duration::from_secs(365 * 24 * 3600))
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
