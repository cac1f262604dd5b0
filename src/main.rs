//! The `backup-agent` CLI: parses arguments, calls the library, renders the result.

use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

use backup_agent::backup::{self, BackupError, BackupRequest, Component, Context, TuningArgs};
use backup_agent::catalog::{self, Listed, RequestType};
use backup_agent::control_plane::{self, AppNames};
use backup_agent::destination::DestinationArgs;
use backup_agent::interrupt::Interrupt;
use backup_agent::juju::JujuCli;
use backup_agent::restore;
use backup_agent::verify;

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
    /// Back up the control plane: kfp-db and katib-db (mysql-k8s create-backup on a replica),
    /// ML Metadata (/data/mlmd.db streamed out of mlmd-0) and the mlpipeline bucket
    /// (incremental, content-addressed), as one backup.
    ///
    /// It checks first (destination writable, MinIO reachable, no pipeline or Katib experiment
    /// running, spool space, no other run), records every scale it will change, scales kfp-db
    /// and katib-db to 2 and kfp-metadata-writer to 0, captures, and puts the scales back on
    /// success, failure, SIGINT and SIGTERM. The statefile is written last; only a backup whose
    /// every part was captured and checked is `completed`.
    #[command(
        after_help = "Examples:\n  backup-agent create-backup --dry-run\n  backup-agent create-backup --label before-upgrade\n  backup-agent create-backup --components mlmd,mlpipeline --bwlimit 50M --output json\n\nThe destination comes from --s3-* flags or BACKUP_AGENT_S3_* variables (the keys from the\nenvironment only), or --destination-dir. `source .sandbox/env` after `backup-agent-sandbox up`\nsets them all for the sandbox."
    )]
    CreateBackup(Box<CreateBackupArgs>),
    /// Find the control plane in the model: applications, scales, units, and where MinIO's
    /// credentials come from (never printed). Changes nothing.
    Discover {
        #[command(flatten)]
        apps: AppNames,
        #[arg(long, value_enum, default_value = "text")]
        output: Output,
    },
    /// List the backups in the destination, from their statefiles alone (works from any
    /// machine that can read the bucket).
    ListBackups {
        #[command(flatten)]
        dest: DestinationArgs,
        #[arg(long, value_enum, default_value = "text")]
        output: Output,
    },
    /// Check that a backup can be restored. Light (default): the statefile is intact and
    /// completed, every object it names is there with its size, and the mysql-k8s backups it
    /// names have their .md5 marker and show finished. --read-data also reads everything back
    /// and checks every content hash, and opens the MLMD dump with SQLite. Exits 1 when a
    /// problem is found; the outcome is recorded in the backup's history.
    VerifyBackup {
        /// The backup id, as list-backups shows it.
        backup_id: String,
        /// Read every object back and check its content (slower: reads the whole backup).
        #[arg(long)]
        read_data: bool,
        #[command(flatten)]
        dest: DestinationArgs,
        #[arg(long, value_enum, default_value = "text")]
        output: Output,
    },
    /// Put the control plane back from one backup: the mysql-k8s backups of kfp-db and
    /// katib-db, the MLMD database (swapped in, pod restarted) and the mlpipeline bucket (made
    /// equal to the backup's manifest).
    ///
    /// The backup must be completed and pass a light verification. A safety backup of the
    /// current state (label pre-restore) is taken first unless --no-safety-backup. Databases go
    /// to exactly 1 unit (mysql-k8s refuses more) and kfp-metadata-writer to 0 while restoring;
    /// scales are put back on success, failure, SIGINT and SIGTERM.
    #[command(
        after_help = "Examples:\n  backup-agent restore 20261123T080841Z-be2523 --dry-run\n  backup-agent restore 20261123T080841Z-be2523\n  backup-agent restore 20261123T080841Z-be2523 --components mlmd,mlpipeline"
    )]
    Restore(Box<RestoreArgs>),
    /// Show one backup's statefile: what was captured, sizes, hashes, mysql backup ids, the
    /// scales it changed and put back, errors, and later verifications and restores.
    DescribeBackup {
        /// The backup id, as list-backups shows it.
        backup_id: String,
        #[command(flatten)]
        dest: DestinationArgs,
        #[arg(long, value_enum, default_value = "text")]
        output: Output,
    },
}

#[derive(clap::Args)]
struct CreateBackupArgs {
    /// A note kept with the backup (list-backups shows it).
    #[arg(long, default_value = "")]
    label: String,
    /// What to back up, comma-separated.
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = Component::ALL)]
    components: Vec<Component>,
    /// Back up even while Argo Workflows or Katib Experiments run (the backup may then not
    /// be consistent).
    #[arg(long)]
    force: bool,
    /// Check everything and print the plan (what is scaled, backed up, how much data);
    /// change nothing.
    #[arg(long)]
    dry_run: bool,
    #[command(flatten)]
    apps: AppNames,
    #[command(flatten)]
    dest: DestinationArgs,
    #[command(flatten)]
    tuning: TuningArgs,
    #[arg(long, value_enum, default_value = "text")]
    output: Output,
}

#[derive(clap::Args)]
struct RestoreArgs {
    /// The backup id, as list-backups shows it (never "latest": say which).
    backup_id: String,
    /// What to restore, comma-separated [default: everything the backup holds].
    #[arg(long, value_enum, value_delimiter = ',')]
    components: Vec<Component>,
    /// Do not take a backup of the current state first (it is how a restore is undone).
    #[arg(long)]
    no_safety_backup: bool,
    /// Restore even while Argo Workflows or Katib Experiments run.
    #[arg(long)]
    force: bool,
    /// Check everything and print the plan; change nothing.
    #[arg(long)]
    dry_run: bool,
    /// How long the MLMD pod may take to come back after its restart.
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    pod_timeout: std::time::Duration,
    #[command(flatten)]
    apps: AppNames,
    #[command(flatten)]
    dest: DestinationArgs,
    #[command(flatten)]
    tuning: TuningArgs,
    #[arg(long, value_enum, default_value = "text")]
    output: Output,
}

fn main() -> ExitCode {
    // Run by the charm's `dispatch`: a hook or an action, no arguments.
    if std::env::args_os().len() == 1 {
        if let Some(env) = backup_agent::charm::DispatchEnv::from_env() {
            let filter = std::env::var("RUST_LOG").unwrap_or_else(|_| "backup_agent=warn".into());
            tracing_subscriber::fmt()
                .with_env_filter(filter)
                .with_writer(std::io::stderr)
                .init();
            let tools = backup_agent::hook_tools::HookTools::from_path();
            return ExitCode::from(backup_agent::charm::dispatch(&env, &tools) as u8);
        }
    }
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
        Command::CreateBackup(args) => {
            let CreateBackupArgs {
                label,
                components,
                force,
                dry_run,
                apps,
                dest,
                tuning,
                output,
            } = *args;
            let mut components = components;
            components.sort();
            components.dedup();
            let req = BackupRequest {
                label,
                components,
                force,
                request: RequestType::Manual,
            };
            let ctx = context(&cli.model, apps, &dest, &tuning, output)?;
            if dry_run {
                let plan = runtime()?.block_on(backup::plan(&ctx, &req))?;
                return show(output, &plan, backup::render_plan);
            }
            let result = interruptible(&ctx, backup::run(&ctx, &req))?;
            match (result, output) {
                (Ok(report), _) => show(output, &report, backup::render_report)?,
                (Err(e), Output::Json) => {
                    let sf = match &e {
                        BackupError::Failed { statefile, .. }
                        | BackupError::NotRestored { statefile, .. } => {
                            Some(serde_json::to_value(statefile)?)
                        }
                        _ => None,
                    };
                    println!(
                        "{}",
                        serde_json::to_string_pretty(
                            &serde_json::json!({"error": e.to_string(), "statefile": sf})
                        )?
                    );
                    return Err(e.into());
                }
                (Err(e), Output::Text) => return Err(e.into()),
            }
        }
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
        Command::ListBackups { dest, output } => {
            let store = dest.store()?;
            let rows = runtime()?.block_on(catalog::list(&store))?;
            match output {
                Output::Json => {
                    let v: Vec<serde_json::Value> = rows
                        .iter()
                        .map(|r| match r {
                            Listed::Backup(s) => serde_json::to_value(s).expect("statefile serializes"),
                            Listed::Unreadable { id, error } => serde_json::json!({"backup-id": id, "phase": "unreadable", "error": error.to_string()}),
                        })
                        .collect();
                    println!("{}", serde_json::to_string_pretty(&v)?);
                }
                Output::Text if rows.is_empty() => println!("no backups in {}", store.describe()),
                Output::Text => {
                    print!("{}", catalog::render_table(&rows));
                    for r in &rows {
                        if let Listed::Unreadable { id, error } = r {
                            eprintln!("warning: {id}: {error}");
                        }
                    }
                }
            }
        }
        Command::Restore(args) => {
            let RestoreArgs {
                backup_id,
                mut components,
                no_safety_backup,
                force,
                dry_run,
                pod_timeout,
                apps,
                dest,
                tuning,
                output,
            } = *args;
            components.sort();
            components.dedup();
            let req = restore::RestoreRequest {
                backup_id,
                components,
                safety_backup: !no_safety_backup,
                force,
                pod_timeout,
            };
            let ctx = context(&cli.model, apps, &dest, &tuning, output)?;
            if dry_run {
                let plan = runtime()?.block_on(restore::plan(&ctx, &req))?;
                return show(output, &plan, restore::render_plan);
            }
            let report = interruptible(&ctx, restore::run(&ctx, &req))??;
            show(output, &report, restore::render_report)?;
        }
        Command::VerifyBackup {
            backup_id,
            read_data,
            dest,
            output,
        } => {
            let store = dest.store()?;
            let juju = JujuCli::locate(&cli.model).ok();
            let mode = if read_data {
                verify::Mode::ReadData
            } else {
                verify::Mode::Light
            };
            let spool = tempfile::tempdir()?;
            let progress = backup_agent::terminal::stderr_progress(matches!(output, Output::Json));
            let v = runtime()?.block_on(verify::verify(
                &store,
                juju.as_ref(),
                &backup_id,
                mode,
                spool.path(),
                &progress,
            ))?;
            show(output, &v, verify::render)?;
            if !v.passed {
                return Err(format!(
                    "backup {backup_id} failed verification: {} problem(s)",
                    v.problems.len()
                )
                .into());
            }
        }
        Command::DescribeBackup {
            backup_id,
            dest,
            output,
        } => {
            let store = dest.store()?;
            let s = runtime()?.block_on(catalog::load(&store, &backup_id))?;
            match output {
                Output::Json => println!("{}", serde_json::to_string_pretty(&s)?),
                Output::Text => print!("{}", serde_yaml::to_string(&s)?),
            }
        }
    }
    Ok(())
}

/// The clients and settings of a mutating command.
fn context(
    model: &str,
    names: AppNames,
    dest: &DestinationArgs,
    tuning: &TuningArgs,
    output: Output,
) -> Result<Context, Box<dyn std::error::Error>> {
    Ok(Context {
        juju: JujuCli::locate(model)?,
        names,
        dest: dest.store()?,
        kubeconfig: None,
        tuning: tuning.tuning(),
        minio: None,
        progress: backup_agent::terminal::stderr_progress(matches!(output, Output::Json)),
        interrupt: Interrupt::new(),
    })
}

fn interruptible<T>(
    ctx: &Context,
    work: impl std::future::Future<Output = T>,
) -> std::io::Result<T> {
    backup_agent::interrupt::block_on_interruptible(&ctx.interrupt, work)
}

/// Prints a result as JSON, or as the text `render` makes of it.
fn show<T: serde::Serialize>(
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

fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    backup_agent::interrupt::runtime()
}
