//! `backup-agent-sandbox`: brings the simulated Charmed Kubeflow model up and down, seeds it,
//! injects faults. Invoked as `juju` (the `bin/juju` link `up` writes) it is the juju CLI
//! simulator.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use serde_json::json;

use backup_agent_sandbox::env::{self, Info, Layout, UpOptions};
use backup_agent_sandbox::model::{ActionFault, ModelStore};
use backup_agent_sandbox::seed::{BucketSpec, MlmdSpec};
use backup_agent_sandbox::{charms, hook_tools, juju, k8s, pebble, seed};

#[derive(Parser)]
#[command(
    name = "backup-agent-sandbox",
    version,
    about = "A simulated Charmed Kubeflow model on loopback: a juju CLI, a Kubernetes API server, and two S3 servers (MinIO and the backup destination)",
    after_help = "Typical use:\n  backup-agent-sandbox up\n  source .sandbox/env\n  juju status --format=json\n  backup-agent-sandbox down"
)]
struct Cli {
    /// The sandbox's directory (everything it writes stays inside it).
    #[arg(
        long,
        global = true,
        env = "BACKUP_AGENT_SANDBOX",
        default_value = ".sandbox"
    )]
    dir: PathBuf,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Start the servers, create the `kubeflow` model and seed its data.
    Up(UpArgs),
    /// Stop every process `up` started.
    Down {
        /// Also delete the sandbox directory.
        #[arg(long)]
        purge: bool,
    },
    /// Show the servers and the model.
    Status,
    /// Add more data: replace the MLMD database and add objects to `mlpipeline`.
    Seed(SizeArgs),
    /// Inject a fault into the running sandbox.
    Fault {
        #[command(subcommand)]
        fault: FaultCmd,
    },
    /// Run the Kubernetes API simulator (started by `up`).
    #[command(hide = true)]
    ServeK8s {
        #[arg(long)]
        port: u16,
    },
    /// Run a local charm's action task (started by `juju run`, detached).
    #[command(hide = true)]
    RunTask { id: u64 },
    /// Run the Pebble simulator of a workload container (started by `juju deploy`, detached).
    #[command(hide = true)]
    Pebble {
        /// The unix socket to serve Pebble's API on.
        #[arg(long)]
        socket: PathBuf,
        /// The directory that is the container's filesystem.
        #[arg(long)]
        root: PathBuf,
        /// The container's name.
        #[arg(long)]
        container: String,
    },
}

#[derive(Args)]
struct UpArgs {
    /// MLMD container name: `mlmd-grpc-server` (CKF 1.9+) or `mlmd` (CKF 1.8).
    #[arg(long, default_value = "mlmd-grpc-server")]
    mlmd_container: String,
    /// Units of kfp-db and katib-db to start with.
    #[arg(long, default_value_t = 2)]
    db_units: u32,
    /// s3-integrator's `path` for the databases; `--mysql-path ''` reproduces a deployment
    /// where nobody set it (mysql-k8s can then neither list nor restore its backups).
    #[arg(long, default_value = "mysql")]
    mysql_path: String,
    /// mysql-k8s with the newer backups library: each cluster claims its S3 repository
    /// (`group_replication_id.txt`), so kfp-db and katib-db can no longer share one path.
    #[arg(long)]
    mysql_claims: bool,
    /// Also start an off-site S3 server, named in the env file as the secondary destination
    /// (BACKUP_AGENT_SECONDARY_S3_*): where `backup-agent copy` puts copies.
    #[arg(long)]
    secondary: bool,
    #[command(flatten)]
    sizes: SizeArgs,
}

#[derive(Args, Clone)]
struct SizeArgs {
    /// Small objects in mlpipeline.
    #[arg(long, default_value_t = 40)]
    objects: usize,
    /// Size of each small object, bytes.
    #[arg(long, default_value_t = 16384)]
    object_size: usize,
    /// Large objects in mlpipeline.
    #[arg(long, default_value_t = 2)]
    large: usize,
    /// Size of each large object, bytes.
    #[arg(long, default_value_t = 3 * 1024 * 1024)]
    large_size: u64,
    /// Pipeline runs recorded in MLMD.
    #[arg(long, default_value_t = 10)]
    mlmd_runs: usize,
    /// Seed of the generated content.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

impl SizeArgs {
    fn bucket(&self) -> BucketSpec {
        BucketSpec {
            small: self.objects,
            small_size: self.object_size,
            large: self.large,
            large_size: self.large_size,
            seed: self.seed,
            ..BucketSpec::default()
        }
    }
    fn mlmd(&self) -> MlmdSpec {
        MlmdSpec {
            runs: self.mlmd_runs,
            seed: self.seed,
            ..MlmdSpec::default()
        }
    }
}

#[derive(Subcommand)]
enum FaultCmd {
    /// Make the next action on UNIT fail with MESSAGE (as the charm's event.fail would).
    FailAction {
        unit: String,
        #[arg(long)]
        action: Option<String>,
        #[arg(long, default_value = "Error backing up the database")]
        message: String,
    },
    /// `scale-application APP` never settles.
    HangScale { app: String },
    /// The next N juju commands fail with a connection error.
    JujuErrors { count: u32 },
    /// Every action takes this much longer (milliseconds).
    SlowActions { ms: u64 },
    /// The Kubernetes API answers 503.
    K8sDown,
    /// Cut exec streams after BYTES of stdout.
    ExecCut { bytes: u64 },
    /// Deleted pods of APP never come back (as with an image that cannot be pulled).
    PodStuck { app: String },
    /// Start an Argo Workflow in NAMESPACE (phase Running).
    Workflow {
        name: String,
        #[arg(long, default_value = "kubeflow-user")]
        namespace: String,
        #[arg(long, default_value = "Running")]
        phase: String,
    },
    /// Start a Katib Experiment in NAMESPACE (condition Running).
    Experiment {
        name: String,
        #[arg(long, default_value = "kubeflow-user")]
        namespace: String,
    },
    /// Remove every injected fault and running workload.
    Clear,
}

fn main() {
    let argv0 = std::env::args().next().unwrap_or_default();
    let name = Path::new(&argv0)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    if name == "juju" {
        std::process::exit(juju_main(&argv0));
    }
    if hook_tools::TOOLS.contains(&name.as_str()) {
        std::process::exit(hook_tools::tool_main(&name));
    }
    let filter = std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    if let Err(e) = run(Cli::parse()) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

/// Finds the model: `$BACKUP_AGENT_SANDBOX`, else the nearest directory above this `juju`
/// (`bin/juju`, or a charm's `resources/<app>/juju-client/juju`) that holds `model.json`.
fn juju_main(argv0: &str) -> i32 {
    let dir = match std::env::var_os("BACKUP_AGENT_SANDBOX") {
        Some(d) => Some(PathBuf::from(d)),
        None => {
            let p = Path::new(argv0);
            let p = if p.components().count() > 1 {
                Some(p.to_path_buf())
            } else {
                which_self(argv0)
            };
            p.and_then(|p| {
                std::path::absolute(&p)
                    .ok()?
                    .ancestors()
                    .skip(1)
                    .find(|d| d.join("model.json").exists())
                    .map(Path::to_path_buf)
            })
        }
    };
    let Some(dir) = dir.filter(|d| d.join("model.json").exists()) else {
        eprintln!("ERROR {}", juju::NO_CONTROLLERS);
        return 1;
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let out = juju::run(&ModelStore::new(dir.join("model.json")), &args);
    let _ = std::io::stdout().write_all(out.stdout.as_bytes());
    let _ = std::io::stderr().write_all(out.stderr.as_bytes());
    out.code
}

fn which_self(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join(name))
        .find(|p| p.exists())
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Cmd::Up(a) => {
            let layout = Layout::new(&cli.dir)?;
            let mut opts = UpOptions::new(std::env::current_exe()?);
            opts.mlmd_container = a.mlmd_container;
            opts.db_units = a.db_units;
            opts.mysql_path = a.mysql_path;
            opts.mysql_claims = a.mysql_claims;
            opts.secondary = a.secondary;
            opts.bucket = a.sizes.bucket();
            opts.mlmd = a.sizes.mlmd();
            let info = env::up(&layout, &opts)?;
            println!("sandbox up in {}", info.dir.display());
            print!("{}", env::status(&layout)?);
        }
        Cmd::Down { purge } => {
            let layout = Layout::new(&cli.dir)?;
            let pids = env::down(&layout, purge)?;
            println!(
                "stopped processes {pids:?}{}",
                if purge { "; removed the directory" } else { "" }
            );
        }
        Cmd::Status => print!("{}", env::status(&Layout::new(&cli.dir)?)?),
        Cmd::Seed(sizes) => {
            let layout = Layout::new(&cli.dir)?;
            let info = Info::load(&layout)?;
            seed::write_mlmd(&layout.mlmd_db(), &sizes.mlmd())?;
            let objects = tokio::runtime::Runtime::new()?.block_on(seed::fill_bucket(
                &info.minio.target("mlpipeline"),
                &sizes.bucket(),
            ))?;
            let bytes: u64 = objects.iter().map(|o| o.size).sum();
            println!(
                "seeded {} objects ({bytes} bytes) into mlpipeline and a new MLMD database",
                objects.len()
            );
        }
        Cmd::Fault { fault } => inject(&Layout::new(&cli.dir)?, fault)?,
        Cmd::RunTask { id } => {
            let layout = Layout::new(&cli.dir)?;
            charms::local::run_task(&layout.model(), id)?;
        }
        Cmd::Pebble {
            socket,
            root,
            container,
        } => {
            let code = pebble::run(&pebble::DaemonOptions {
                socket,
                root,
                container,
            })?;
            if code != 0 {
                std::process::exit(code);
            }
        }
        Cmd::ServeK8s { port } => {
            let layout = Layout::new(&cli.dir)?;
            let certs = k8s::tls::CertFiles::in_dir(&layout.dir);
            tokio::runtime::Runtime::new()?.block_on(k8s::serve(layout.model(), port, &certs))?;
        }
    }
    Ok(())
}

/// `fault ...`: changes the model's faults (or its running workloads) and prints them.
fn inject(layout: &Layout, fault: FaultCmd) -> Result<()> {
    layout
        .model()
        .update(|m| {
            match fault {
                FaultCmd::FailAction {
                    unit,
                    action,
                    message,
                } => {
                    if m.unit(&unit).is_none() {
                        bail!("unit \"{unit}\" not found");
                    }
                    m.faults.fail_next_action.push(ActionFault {
                        unit,
                        action,
                        message,
                    });
                }
                FaultCmd::HangScale { app } => {
                    if !m.apps.contains_key(&app) {
                        bail!("application \"{app}\" not found");
                    }
                    m.faults.hang_scale.insert(app);
                }
                FaultCmd::JujuErrors { count } => m.faults.juju_errors = count,
                FaultCmd::SlowActions { ms } => m.faults.action_delay_ms = ms,
                FaultCmd::K8sDown => m.faults.k8s_unavailable = true,
                FaultCmd::ExecCut { bytes } => m.faults.exec_cut_after_bytes = Some(bytes),
                FaultCmd::PodStuck { app } => {
                    m.faults.pods_stuck.insert(app);
                }
                FaultCmd::Workflow {
                    name,
                    namespace,
                    phase,
                } => m
                    .k8s
                    .workflows
                    .push(k8s::workflow(&name, &namespace, &phase)),
                FaultCmd::Experiment { name, namespace } => m
                    .k8s
                    .experiments
                    .push(k8s::experiment(&name, &namespace, "Running")),
                FaultCmd::Clear => {
                    m.faults = Default::default();
                    m.k8s.workflows.clear();
                    m.k8s.experiments.clear();
                }
            }
            Ok(())
        })
        .context("changing the sandbox model")?;
    println!(
        "{}",
        json!({"faults": layout.model().read()?.faults.clone()})
            .to_string()
            .replace("\"faults\":", "faults: ")
    );
    Ok(())
}
