//! The `backup-agent` CLI: parses arguments, calls the library, renders the result.

use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

use backup_agent::backup::{self, BackupError, BackupRequest, Component, Context, TuningArgs};
use backup_agent::catalog::{self, Listed, RequestType};
use backup_agent::control_plane::{self, AppNames};
use backup_agent::destination::DestinationArgs;
use backup_agent::download;
use backup_agent::interrupt::Interrupt;
use backup_agent::juju::JujuCli;
use backup_agent::prune::{self, Selection};
use backup_agent::recovery;
use backup_agent::restore;
use backup_agent::retention::Policy;
use backup_agent::secret::Secret;
use backup_agent::serve::{self, Schedule};
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
        #[arg(value_parser = catalog::parse_backup_id)]
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
        #[arg(value_parser = catalog::parse_backup_id)]
        backup_id: String,
        #[command(flatten)]
        dest: DestinationArgs,
        #[arg(long, value_enum, default_value = "text")]
        output: Output,
    },
    /// Forget backups a retention policy does not keep, and delete what only they used: their
    /// statefiles, manifests and MLMD dumps, the blobs no kept backup names, and their
    /// mysql-k8s backups. Never forgets the newest completed backup or one whose run has not
    /// ended; takes the repository lock.
    ///
    /// Rules as restic's `forget`: keep-daily 7 keeps the newest backup of each of the 7 newest
    /// days that have one (UTC); keep-within 2d keeps every backup up to 2 days older than
    /// the newest. A backup is kept if any rule keeps it. Failed backups go once a newer
    /// completed one exists.
    #[command(
        after_help = "Examples:\n  backup-agent prune --keep-daily 7 --keep-weekly 4 --dry-run\n  backup-agent prune --keep-last 3\n  backup-agent prune --retention keep-daily=7,keep-monthly=12"
    )]
    Prune(Box<PruneArgs>),
    /// Delete one backup and what only it used (blobs, its mysql-k8s backups). Asks first on
    /// a terminal; scripts pass --yes.
    DeleteBackup(Box<DeleteArgs>),
    /// Write a backup to a local directory: statefile.json, mlmd.db (decompressed, checked),
    /// mlpipeline/<key> for every object (hash-checked), mysql/<app>/ with the mysql-k8s
    /// backup objects. To move a backup to another site, or to look inside it.
    #[command(
        after_help = "Example:\n  backup-agent download 20261123T080841Z-be2523 ./backup-20261123"
    )]
    Download(Box<DownloadArgs>),
    /// Repair what a killed run left: put back the scales its journal records, mark its
    /// backup (or restore) failed, take over its lock. Every mutating command does this
    /// first; this does only that.
    Recover(Box<RecoverArgs>),
    /// Run as a daemon: backups on a cron schedule (each followed by a prune when a retention
    /// policy is set), and an HTTP API on loopback: GET /v1/backups, GET /v1/backups/{id},
    /// POST /v1/backups (bearer token), GET /healthz, GET /metrics (Prometheus).
    ///
    /// A run missed while the daemon was down (the newest completed backup is older than the
    /// schedule's period) happens at start. SIGTERM stops it cleanly: a backup in its last
    /// step finishes, any other is interrupted with its scales put back.
    #[command(
        after_help = "Example:\n  backup-agent serve --schedule '0 2 * * *' --retention keep-daily=7,keep-weekly=4 --token-file /etc/backup-agent/token\n  curl -s 127.0.0.1:8940/v1/backups\n  curl -s -X POST -H \"Authorization: Bearer $(cat /etc/backup-agent/token)\" 127.0.0.1:8940/v1/backups"
    )]
    Serve(Box<ServeArgs>),
}

#[derive(clap::Args)]
struct PolicyArgs {
    /// Keep the N newest backups.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    keep_last: Option<u32>,
    /// Keep the newest backup of each of the N newest days that have one.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    keep_daily: Option<u32>,
    /// Keep the newest backup of each of the N newest ISO weeks that have one.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    keep_weekly: Option<u32>,
    /// Keep the newest backup of each of the N newest months that have one.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    keep_monthly: Option<u32>,
    /// Keep every backup taken within this long of the newest (e.g. 36h, 14days).
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    keep_within: Option<std::time::Duration>,
    /// The whole policy in the charm's format: keep-daily=7,keep-weekly=4 (combines with the
    /// flags).
    #[arg(long, value_name = "POLICY", value_parser = Policy::parse)]
    retention: Option<Policy>,
}

impl PolicyArgs {
    fn policy(&self) -> Policy {
        let mut p = self.retention.clone().unwrap_or_default();
        p.keep_last = self.keep_last.or(p.keep_last);
        p.keep_daily = self.keep_daily.or(p.keep_daily);
        p.keep_weekly = self.keep_weekly.or(p.keep_weekly);
        p.keep_monthly = self.keep_monthly.or(p.keep_monthly);
        p.keep_within = self.keep_within.or(p.keep_within);
        p
    }
}

/// What every repository command runs with: the model's application names, the destination,
/// the knobs, how to print.
#[derive(clap::Args)]
struct RunArgs {
    #[command(flatten)]
    apps: AppNames,
    #[command(flatten)]
    dest: DestinationArgs,
    #[command(flatten)]
    tuning: TuningArgs,
    #[arg(long, value_enum, default_value = "text")]
    output: Output,
}

impl RunArgs {
    fn context(self, model: &str) -> Result<(Context, Output), Box<dyn std::error::Error>> {
        let ctx = context(model, self.apps, &self.dest, &self.tuning, self.output)?;
        Ok((ctx, self.output))
    }
}

#[derive(clap::Args)]
struct PruneArgs {
    #[command(flatten)]
    policy: PolicyArgs,
    /// List what would be forgotten and how many bytes it frees; delete nothing.
    #[arg(long)]
    dry_run: bool,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(clap::Args)]
struct DeleteArgs {
    /// The backup id, as list-backups shows it.
    #[arg(value_parser = catalog::parse_backup_id)]
    backup_id: String,
    /// Do not ask (needed when not on a terminal).
    #[arg(long, short = 'y')]
    yes: bool,
    /// Show what would be deleted; delete nothing.
    #[arg(long)]
    dry_run: bool,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(clap::Args)]
struct DownloadArgs {
    /// The backup id, as list-backups shows it.
    #[arg(value_parser = catalog::parse_backup_id)]
    backup_id: String,
    /// A new or empty directory to write it into.
    #[arg(value_name = "DIR")]
    into: std::path::PathBuf,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(clap::Args)]
struct RecoverArgs {
    #[command(flatten)]
    run: RunArgs,
}

#[derive(clap::Args)]
struct ServeArgs {
    /// When to back up: a cron expression in UTC (minute hour day-of-month month
    /// day-of-week; a sixth leading field is seconds). Without it the daemon only serves
    /// the API.
    #[arg(long, env = "BACKUP_AGENT_SCHEDULE", value_parser = Schedule::parse)]
    schedule: Option<Schedule>,
    #[command(flatten)]
    policy: PolicyArgs,
    /// Address of the HTTP API (loopback unless you mean otherwise).
    #[arg(long, env = "BACKUP_AGENT_LISTEN", default_value = "127.0.0.1:8940")]
    listen: std::net::SocketAddr,
    /// KEY=VALUE lines read into the environment first, e.g. BACKUP_AGENT_S3_ACCESS_KEY=...:
    /// how the keys reach the daemon without its command line or a service definition.
    #[arg(long, value_name = "FILE")]
    env_file: Option<std::path::PathBuf>,
    /// File holding the bearer token that POST /v1/backups needs; without it that endpoint
    /// is refused.
    #[arg(long, env = "BACKUP_AGENT_TOKEN_FILE", value_name = "FILE")]
    token_file: Option<std::path::PathBuf>,
    #[command(flatten)]
    apps: AppNames,
    #[command(flatten)]
    dest: DestinationArgs,
    #[command(flatten)]
    tuning: TuningArgs,
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
    #[arg(value_parser = catalog::parse_backup_id)]
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
    backup_agent::allocator::return_large_buffers();
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
    // `serve --env-file F`: the variables come before the parse, so that they reach the
    // options as any environment does (how the charm gives the daemon its keys).
    if let Some(file) = env_file_arg() {
        match backup_agent::serve::read_env_file(&file) {
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
        Command::Prune(args) => {
            let PruneArgs {
                policy,
                dry_run,
                run,
            } = *args;
            let selection = Selection::Policy(policy.policy());
            let (ctx, output) = run.context(&cli.model)?;
            if dry_run {
                let plan = runtime()?.block_on(prune::plan(&ctx, &selection))?;
                return show(output, &plan, prune::render_plan);
            }
            let report = interruptible(&ctx, prune::run(&ctx, &selection))??;
            show(output, &report, prune::render_report)?;
        }
        Command::DeleteBackup(args) => {
            let DeleteArgs {
                backup_id,
                yes,
                dry_run,
                run,
            } = *args;
            let selection = Selection::One(backup_id.clone());
            let (ctx, output) = run.context(&cli.model)?;
            let plan = runtime()?.block_on(prune::plan(&ctx, &selection))?;
            if dry_run {
                return show(output, &plan, prune::render_plan);
            }
            if !yes {
                confirm_delete(&backup_id, &plan)?;
            }
            let report = interruptible(&ctx, prune::run(&ctx, &selection))??;
            show(output, &report, prune::render_report)?;
        }
        Command::Download(args) => {
            let DownloadArgs {
                backup_id,
                into: dir,
                run,
            } = *args;
            let (ctx, output) = run.context(&cli.model)?;
            let report = interruptible(&ctx, download::run(&ctx, &backup_id, &dir))??;
            match output {
                Output::Json => println!("{}", serde_json::to_string_pretty(&report)?),
                Output::Text => {
                    println!(
                        "backup {} written to {}: {} files, {}",
                        report.backup_id,
                        report.dir.display(),
                        report.files,
                        catalog::human_bytes(report.bytes)
                    );
                    for r in &report.refused {
                        println!("refused: {:?}: {}", r.key, r.why);
                    }
                    for w in &report.warnings {
                        println!("warning: {w}");
                    }
                }
            }
            if !report.refused.is_empty() {
                return Err(format!(
                    "{} name(s) in the backup would have been written outside {} or are malformed: refused (listed above); everything else was written",
                    report.refused.len(),
                    report.dir.display()
                )
                .into());
            }
        }
        Command::Recover(args) => {
            let RecoverArgs { run } = *args;
            let (ctx, output) = run.context(&cli.model)?;
            let recovered = interruptible(&ctx, async {
                let (lock, r) = recovery::lock_and_recover(&ctx, "recover").await?;
                lock.release()
                    .await
                    .map_err(|e| recovery::RecoveryError::Lock(Box::new(e)))?;
                Ok::<_, recovery::RecoveryError>(r)
            })??;
            match output {
                Output::Json => println!("{}", serde_json::to_string_pretty(&recovered)?),
                Output::Text if recovered.is_empty() => {
                    println!("nothing to recover: no run was left unfinished")
                }
                Output::Text => {
                    for id in &recovered.backups {
                        println!("backup {id}: its run had died; scales put back, marked failed");
                    }
                    for id in &recovered.restores {
                        println!("restore of backup {id}: its run had died; scales put back, recorded as failed");
                    }
                }
            }
        }
        Command::Serve(args) => {
            let ServeArgs {
                env_file: _,
                schedule,
                policy,
                listen,
                token_file,
                apps,
                dest,
                tuning,
            } = *args;
            let token = match token_file {
                None => None,
                Some(f) => {
                    let t = std::fs::read_to_string(&f)
                        .map_err(|e| format!("--token-file {}: {e}", f.display()))?;
                    if t.trim().is_empty() {
                        return Err(format!("--token-file {} is empty: put a long random token in it (e.g. `openssl rand -hex 32 > {}`)", f.display(), f.display()).into());
                    }
                    Some(Secret::new(t.trim().to_string()))
                }
            };
            if tuning.break_lock {
                return Err("--break-lock is not for the daemon: it would break every lock, each run. Run `backup-agent recover --break-lock` once instead".into());
            }
            let juju = JujuCli::locate(&cli.model)?;
            let store = dest.store()?;
            let settings = serve::ServeSettings {
                schedule,
                retention: policy.policy(),
                listen,
                token,
            };
            let (store2, tuning) = (store.clone(), tuning.tuning());
            let make: serve::MakeContext =
                std::sync::Arc::new(move |progress, interrupt| Context {
                    juju: juju.clone(),
                    names: apps.clone(),
                    dest: store2.clone(),
                    kubeconfig: None,
                    tuning: tuning.clone(),
                    minio: None,
                    progress,
                    interrupt,
                });
            let shutdown = Interrupt::new();
            backup_agent::interrupt::block_on_interruptible(
                &shutdown,
                serve::serve(settings, make, store, shutdown.clone()),
            )??;
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

fn env_file_arg() -> Option<std::path::PathBuf> {
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
fn confirm_delete(id: &str, plan: &prune::PrunePlan) -> Result<(), Box<dyn std::error::Error>> {
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

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    /// Clap checks a command's definition only when that command is parsed: check them all.
    #[test]
    fn every_command_is_well_formed() {
        super::Cli::command().debug_assert();
    }
}
