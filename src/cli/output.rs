//! How the CLI prints results, asks, and builds the run context from its arguments.

use backup_agent::commands::prune;
use backup_agent::context::Context;
use backup_agent::interrupt::Interrupt;
use backup_agent::juju::JujuCli;

use super::args::{AppNameArgs, TuningArgs};

/// How results are printed.
#[derive(Clone, Copy, clap::ValueEnum)]
pub enum Output {
    Text,
    Json,
}

/// The clients and settings of a mutating command.
pub fn context(
    model: &str,
    names: AppNameArgs,
    dest: backup_agent::storage::Store,
    tuning: &TuningArgs,
    output: Output,
) -> Result<Context, Box<dyn std::error::Error>> {
    Ok(Context {
        juju: JujuCli::locate(model)?,
        names: names.names(),
        dest,
        kubeconfig: None,
        tuning: tuning.tuning(),
        minio: None,
        progress: super::terminal::stderr_progress(matches!(output, Output::Json)),
        interrupt: Interrupt::new(),
    })
}

pub fn interruptible<T>(
    ctx: &Context,
    work: impl std::future::Future<Output = T>,
) -> std::io::Result<T> {
    backup_agent::interrupt::block_on_interruptible(&ctx.interrupt, work)
}

pub fn env_file_arg() -> Option<std::path::PathBuf> {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if args.get(1).is_none_or(|a| a != "serve") {
        return None;
    }
    args.iter().enumerate().find_map(|(i, a)| {
        let a = a.to_str()?;
        if a == "--env-file" {
            args.get(i + 1).map(std::path::PathBuf::from)
        } else {
            a.strip_prefix("--env-file=").map(std::path::PathBuf::from)
        }
    })
}

/// Asks on a terminal before deleting; refuses without one (scripts say --yes).
pub fn confirm_delete(id: &str, plan: &prune::PrunePlan) -> Result<(), Box<dyn std::error::Error>> {
    use std::io::{BufRead, IsTerminal, Write};
    if !std::io::stdin().is_terminal() {
        return Err(format!(
            "delete-backup {id} needs --yes when not run from a terminal (see what it deletes with --dry-run)"
        )
        .into());
    }
    eprint!("{}Delete backup {id}? [y/N] ", prune::render_plan(plan));
    std::io::stderr().flush()?;
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer)?;
    if matches!(answer.trim(), "y" | "Y" | "yes") {
        Ok(())
    } else {
        Err("not deleted".into())
    }
}

/// Prints a result as JSON, or as the text `render` makes of it.
pub fn show<T: serde::Serialize>(
    output: Output,
    value: &T,
    render: fn(&T) -> String,
) -> Result<(), Box<dyn std::error::Error>> {
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(value)?),
        Output::Text => print!("{}", render(value)),
    }
    Ok(())
}

pub fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    backup_agent::interrupt::runtime()
}
