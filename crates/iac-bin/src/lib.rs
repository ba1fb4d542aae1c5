//! `iac-bin` as a library: everything the `iac` binary does, importable by its integration tests.
//! `main.rs` only calls [`run`].
//!
//! | module | owns |
//! |---|---|
//! | [`cli`] | the clap command line |
//! | [`config`] | figment layers → [`config::IacConfig`] |
//! | [`wiring`] | config → concrete backends → `Deployer` ([`wiring::App`]) |
//! | [`commands`] | one function per command (`ca`, `serve`, [`commands::bootstrap`] in files of their own) |
//! | [`output`] | progress display and reports |
//! | [`recipe`] | the embedded image recipe (`iac bootstrap`, and a deploy's missing base image) |
//! | [`api`] | the admin API (`iac serve`) |
//! | [`telemetry`] | tracing + OTLP |

#![warn(missing_docs)]

pub mod api;
pub mod cli;
pub mod commands;
pub mod config;
pub mod output;
pub mod recipe;
pub mod telemetry;
pub mod wiring;

use std::process::ExitCode;

use clap::{CommandFactory, Parser};

use crate::cli::{Cli, Command, ConfigAction};
use crate::config::{CliOverrides, IacConfig};

/// Entry point of the `iac` binary.
pub fn run() -> ExitCode {
    // One process-wide rustls crypto provider before any TLS client or server is built (reqwest in
    // the fetcher, tonic in the prober and the admin API): with more than one provider compiled
    // in, rustls refuses to guess.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let cli = Cli::parse();
    let overrides = CliOverrides {
        project: cli.project.clone(),
        provisioner: cli.provisioner,
        parallelism: match &cli.command {
            Command::Deploy { parallel, .. } => *parallel,
            _ => None,
        },
    };
    let cfg = match IacConfig::load(cli.config.as_deref(), &overrides) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::from(2);
        }
    };
    let default_filter = match cli.command {
        Command::Serve { .. } => "info",
        _ => "warn,iac_core::event=off",
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    // Inside the runtime: the gRPC exporter's channel spawns onto it.
    let telemetry = {
        let _rt = rt.enter();
        telemetry::init(cfg.otel_endpoint.as_deref(), cli.json, default_filter)
    };
    let code = match rt.block_on(dispatch(cli, cfg)) {
        Ok(code) => code,
        Err(e) => {
            // It may quote a repository (a requirements line, a Procfile, an archive's names).
            eprintln!("error: {}", output::safe(&format!("{e:#}")));
            ExitCode::from(2)
        }
    };
    // Flush the last spans while the runtime still drives the exporter's connections.
    drop(telemetry);
    drop(rt);
    code
}

async fn dispatch(cli: Cli, cfg: IacConfig) -> anyhow::Result<ExitCode> {
    let json = cli.json;
    let project_flag = cli.project.clone();
    match cli.command {
        Command::Deploy {
            file, sandbox, ttl, ..
        } => commands::deploy(cfg, &file.file, sandbox, ttl, json).await,
        Command::Plan { file, sandbox } => commands::plan(cfg, &file.file, sandbox, json).await,
        Command::Destroy { file, sandbox } => {
            commands::destroy(cfg, file.as_ref(), sandbox, json).await
        }
        Command::Gc { file } => commands::gc(cfg, file.as_ref(), json).await,
        Command::Health {
            file,
            sandbox,
            timeout,
            wait,
        } => commands::health(cfg, file.as_ref(), sandbox, timeout, wait, json).await,
        Command::Logs {
            file,
            service,
            follow,
            tail,
            raw,
        } => {
            let opts = commands::LogsOptions {
                follow,
                tail,
                raw,
                json,
            };
            commands::logs(cfg, file.as_ref(), service.as_deref(), opts).await
        }
        Command::Inspect {
            target,
            extras,
            groups,
        } => {
            let selection = iac_backends::build::lockfile::Selection {
                extras: iac_core::normalize_names("--extras", &extras)
                    .map_err(|e| anyhow::anyhow!("expected {e}"))?,
                groups: iac_core::normalize_names("--groups", &groups)
                    .map_err(|e| anyhow::anyhow!("expected {e}"))?,
            };
            commands::inspect(cfg, &target, &selection, json).await
        }
        Command::Refs { slug } => commands::refs(cfg, &slug, json).await,
        Command::Render {
            file,
            out,
            target: cli::RenderTarget::Files,
        } => commands::render(cfg, &file.file, &out, json).await,
        Command::Render {
            file,
            out,
            target: cli::RenderTarget::Kubernetes,
        } => commands::render_kubernetes(cfg, &file.file, &out, json).await,
        Command::Render {
            file,
            out,
            target: cli::RenderTarget::Compose,
        } => commands::render_compose(cfg, &file.file, &out, json).await,
        Command::Ca { action } => commands::ca_command(&cfg, action, json),
        Command::Config {
            action: ConfigAction::Show,
        } => {
            print!("{}", cfg.to_redacted_toml()?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Bootstrap {
            check,
            no_pull,
            rebuild,
            pythons,
            swarm_node,
        } => {
            commands::bootstrap::run(
                &cfg,
                commands::bootstrap::Options {
                    check,
                    no_pull,
                    rebuild,
                    pythons,
                    swarm_node,
                },
            )
            .await
        }
        Command::Serve { http, uds } => commands::serve(cfg, http, uds).await,
        Command::History {
            action: None,
            limit,
        } => commands::history_list(cfg, project_flag.as_deref(), limit, json).await,
        Command::History {
            action: Some(cli::HistoryAction::Show { id }),
            ..
        } => commands::history_show(cfg, &id, json).await,
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "iac", &mut std::io::stdout());
            Ok(ExitCode::SUCCESS)
        }
    }
}
