//! The `backup-agent` CLI: parses arguments, calls the library, renders the result.

mod cli;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    backup_agent::components::mlpipeline::allocator::return_large_buffers();
    // Run by the charm's `dispatch`: a hook or an action, no arguments.
    if std::env::args_os().len() == 1 {
        if let Some(env) = backup_agent::charm::DispatchEnv::from_env() {
            let filter = std::env::var("RUST_LOG").unwrap_or_else(|_| "backup_agent=warn".into());
            tracing_subscriber::fmt()
                .with_env_filter(filter)
                .with_writer(std::io::stderr)
                .init();
            let tools = backup_agent::charm::hook_tools::HookTools::from_path();
            return ExitCode::from(backup_agent::charm::dispatch(&env, &tools) as u8);
        }
    }
    // `serve --env-file F`: the variables come before the parse, so that they reach the
    // options as any environment does (how the charm gives the daemon its keys).
    if let Some(file) = cli::env_file_arg() {
        match backup_agent::daemon::read_env_file(&file) {
            Ok(vars) => {
                for (k, v) in vars {
                    std::env::set_var(k, v);
                }
            }
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    let cli = cli::Cli::parse();
    let level = match cli.verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let filter = std::env::var("RUST_LOG").unwrap_or_else(|_| format!("backup_agent={level}"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    match cli::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
