//! The `backup-agent` CLI: parses arguments, calls the library, renders the result.

use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

use backup_agent::control_plane::{self, AppNames};
use backup_agent::juju::JujuCli;

#[derive(Parser)]
#[command(
    name = "backup-agent",
    version,
    about = "Back up and restore the Charmed Kubeflow control plane (kfp-db, katib-db, ML Metadata, the mlpipeline bucket) into S3",
    long_about = "Back up and restore the Charmed Kubeflow control plane (kfp-db, katib-db, ML Metadata, the mlpipeline bucket) into S3, as one consistent, verified, point-in-time backup.\n\nIt drives the operator's own `juju` client and kubeconfig. Try it against the bundled sandbox:\n  backup-agent-sandbox up && source .sandbox/env && backup-agent discover"
)]
struct Cli {
    /// Juju model that holds Charmed Kubeflow.
    #[arg(
        long,
        short = 'm',
        global = true,
        env = "JUJU_MODEL",
        default_value = "kubeflow"
    )]
    model: String,
    /// More log output (-v, -vv); RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum Output {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Find the control plane in the model: applications, scales, units, and where MinIO's
    /// credentials come from (never printed). Changes nothing.
    Discover {
        #[command(flatten)]
        apps: AppNames,
        #[arg(long, value_enum, default_value = "text")]
        output: Output,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
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
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<(), Box<dyn std::error::Error>> {
    match cli.command {
        Command::Discover { apps, output } => {
            let juju = JujuCli::locate(&cli.model)?;
            let (plane, _minio) = control_plane::discover(&juju, &apps)?;
            match output {
                Output::Json => println!("{}", serde_json::to_string_pretty(&plane)?),
                Output::Text => {
                    println!("model {} (juju {})", plane.model, plane.juju_version);
                    for a in &plane.apps {
                        let charm = match a.charm_rev {
                            Some(r) => format!("{} r{r}", a.charm),
                            None => a.charm.clone(),
                        };
                        println!(
                            "  {:<16} {:<22} {:<26} scale {:<3} {:<12} {}",
                            a.role,
                            a.name,
                            charm,
                            a.scale,
                            a.status,
                            a.units.join(",")
                        );
                    }
                    println!(
                        "  MinIO endpoint {} (credentials from {})",
                        plane.minio_endpoint, plane.minio_credentials_from
                    );
                }
            }
        }
    }
    Ok(())
}
