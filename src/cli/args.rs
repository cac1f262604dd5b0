//! The arguments the subcommands share and each one's own, mapped onto the library's option
//! structs. Defaults come from the library (`Tuning::default()`, `AppNames::default()`): they
//! are written once.

use std::path::PathBuf;
use std::time::Duration;

use backup_agent::commands::{download, restore};
use backup_agent::components::Component;
use backup_agent::context::{self, Context, Tuning};
use backup_agent::daemon::Schedule;
use backup_agent::juju::discovery::AppNames;
use backup_agent::juju::scale::ScaleWait;
use backup_agent::repository::{self, lock::LeaseTiming, retention::Policy};
use backup_agent::units::{parse_rate, parse_size};

use super::destination::{DestinationArgs, RepoArgs};
use super::output::{context, Output};

#[derive(clap::Args)]
pub struct PolicyArgs {
    /// Keep the N newest backups.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub keep_last: Option<u32>,
    /// Keep the newest backup of each of the N newest days that have one.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub keep_daily: Option<u32>,
    /// Keep the newest backup of each of the N newest ISO weeks that have one.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub keep_weekly: Option<u32>,
    /// Keep the newest backup of each of the N newest months that have one.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub keep_monthly: Option<u32>,
    /// Keep every backup taken within this long of the newest (e.g. 36h, 14days).
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub keep_within: Option<Duration>,
    /// The whole policy in the charm's format: keep-daily=7,keep-weekly=4 (combines with the
    /// flags).
    #[arg(long, value_name = "POLICY", value_parser = Policy::parse)]
    pub retention: Option<Policy>,
}

impl PolicyArgs {
    pub fn policy(&self) -> Policy {
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
pub struct RunArgs {
    #[command(flatten)]
    pub apps: AppNameArgs,
    #[command(flatten)]
    pub dest: RepoArgs,
    #[command(flatten)]
    pub tuning: TuningArgs,
    #[arg(long, value_enum, default_value = "text")]
    pub output: Output,
}

impl RunArgs {
    pub fn context(self, model: &str) -> Result<(Context, Output), Box<dyn std::error::Error>> {
        let ctx = context(
            model,
            self.apps,
            self.dest.store()?,
            &self.tuning,
            self.output,
        )?;
        Ok((ctx, self.output))
    }
}

#[derive(clap::Args)]
pub struct PruneArgs {
    #[command(flatten)]
    pub policy: PolicyArgs,
    /// List what would be forgotten and how many bytes it frees; delete nothing.
    #[arg(long)]
    pub dry_run: bool,
    #[command(flatten)]
    pub run: RunArgs,
}

#[derive(clap::Args)]
pub struct DeleteArgs {
    /// The backup id, as list-backups shows it.
    #[arg(value_parser = repository::parse_backup_id)]
    pub backup_id: String,
    /// Do not ask (needed when not on a terminal).
    #[arg(long, short = 'y')]
    pub yes: bool,
    /// Show what would be deleted; delete nothing.
    #[arg(long)]
    pub dry_run: bool,
    #[command(flatten)]
    pub run: RunArgs,
}

#[derive(clap::Args)]
pub struct DownloadArgs {
    /// The backup id, as list-backups shows it.
    #[arg(value_parser = repository::parse_backup_id)]
    pub backup_id: String,
    /// A new or empty directory to write it into.
    #[arg(value_name = "DIR")]
    pub into: PathBuf,
    /// Only the mlpipeline objects whose keys match (repeatable): a key, a prefix ending in
    /// `/`, or a glob (`*` within one segment, `**` across). Packed objects are read by ranged
    /// GETs of their own bytes; mlmd and mysql are left out.
    #[arg(long, value_name = "PATTERN", value_parser = download::Include::parse)]
    pub include: Vec<String>,
    #[command(flatten)]
    pub run: RunArgs,
}

#[derive(clap::Args)]
pub struct CopyArgs {
    /// The backup to copy, as list-backups shows it [default: every completed backup the
    /// secondary lacks].
    #[arg(value_parser = repository::parse_backup_id)]
    pub backup_id: Option<String>,
    /// Print which backups would be copied; copy nothing, take no lock.
    #[arg(long)]
    pub dry_run: bool,
    #[command(flatten)]
    pub run: RunArgs,
}

/// What every `request` subcommand shares: where the bucket is, whether to wait, who asks.
#[derive(clap::Args)]
pub struct RequestCommon {
    /// Wait for the daemon's answer, print it, and exit 0 only when it completed (or passed).
    #[arg(long)]
    pub wait: bool,
    /// With --wait, how long to wait before giving up (the request stays; its result will
    /// still be written).
    #[arg(long, value_name = "DURATION", default_value = "2h", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    /// With --wait, how often to look for the result, give or take a fifth.
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = humantime::parse_duration)]
    pub poll: Duration,
    /// Your id for this request: a request written again with the same id (a retried CI
    /// step) is not run twice; with --wait it answers with the first request's result
    /// [default: a new random id].
    #[arg(long, value_name = "ID")]
    pub client_id: Option<String>,
    /// Who asks, free text kept with the request and its result.
    #[arg(long, value_name = "TEXT", default_value = "")]
    pub requested_by: String,
    #[command(flatten)]
    pub dest: DestinationArgs,
    #[arg(long, value_enum, default_value = "text")]
    pub output: Output,
}

#[derive(clap::Subcommand)]
pub enum RequestCommand {
    /// Ask for a backup.
    CreateBackup {
        /// A note kept with the backup.
        #[arg(long)]
        label: Option<String>,
        /// What to back up, comma-separated [default: everything].
        #[arg(long, value_delimiter = ',', value_parser = component())]
        components: Vec<Component>,
        #[command(flatten)]
        common: RequestCommon,
    },
    /// Ask for a verification of a backup.
    Verify {
        #[arg(value_parser = repository::parse_backup_id)]
        backup_id: String,
        #[arg(long)]
        read_data: bool,
        #[command(flatten)]
        common: RequestCommon,
    },
    /// Ask for a restore drill [default: of the newest completed backup].
    Drill {
        #[arg(value_parser = repository::parse_backup_id)]
        backup_id: Option<String>,
        #[arg(long, value_name = "SHARE|N/T")]
        sample: Option<String>,
        #[command(flatten)]
        common: RequestCommon,
    },
    /// Ask for a copy to the daemon's secondary [default: every backup it lacks].
    Copy {
        #[arg(value_parser = repository::parse_backup_id)]
        backup_id: Option<String>,
        #[command(flatten)]
        common: RequestCommon,
    },
    /// Ask for a restore (run only by a daemon started with --allow-restore-requests).
    Restore {
        #[arg(value_parser = repository::parse_backup_id)]
        backup_id: String,
        #[arg(long, value_delimiter = ',', value_parser = component())]
        components: Vec<Component>,
        #[arg(long)]
        no_safety_backup: bool,
        #[command(flatten)]
        common: RequestCommon,
    },
}

#[derive(clap::Args)]
pub struct RecoverArgs {
    #[command(flatten)]
    pub run: RunArgs,
}

#[derive(clap::Args)]
pub struct ServeArgs {
    /// When to back up: a cron expression in UTC (minute hour day-of-month month
    /// day-of-week; a sixth leading field is seconds). Without it the daemon only serves
    /// the API.
    #[arg(long, env = "BACKUP_AGENT_SCHEDULE", value_parser = Schedule::parse)]
    pub schedule: Option<Schedule>,
    /// When to drill: a cron expression in UTC, as --schedule. Each drill restores the newest
    /// completed backup into scratch targets and checks it (see `backup-agent drill --help`),
    /// after any backup in progress.
    #[arg(long, env = "BACKUP_AGENT_DRILL_SCHEDULE", value_parser = Schedule::parse)]
    pub drill_schedule: Option<Schedule>,
    /// Share of the mlpipeline objects a scheduled drill restores: 5% (drawn afresh each
    /// drill) or 2/10 [default: all].
    #[arg(long, value_parser = backup_agent::commands::verify::Sample::parse, value_name = "SHARE|N/T")]
    pub drill_sample: Option<backup_agent::commands::verify::Sample>,
    #[command(flatten)]
    pub policy: PolicyArgs,
    /// After every completed backup, copy every completed backup the secondary lacks to it
    /// (see `backup-agent copy --help`; the secondary from --secondary-*), then apply
    /// --secondary-retention there.
    #[arg(long, env = "BACKUP_AGENT_COPY_AFTER_BACKUP")]
    pub copy_after_backup: bool,
    /// The secondary's own retention, in the format of --retention (e.g. keep-monthly=12),
    /// applied after each copy [default: keep every copy].
    #[arg(long, env = "BACKUP_AGENT_SECONDARY_RETENTION", value_name = "POLICY", value_parser = Policy::parse)]
    pub secondary_retention: Option<Policy>,
    /// Answer requests written to the repository's bucket under backup-agent/requests/
    /// (see `backup-agent request --help`): anyone with the bucket's keys can then ask for a
    /// backup, a verification, a drill or a copy, and read the result there.
    #[arg(long, env = "BACKUP_AGENT_REQUESTS")]
    pub requests: bool,
    /// Also run `restore` requests from the bucket (off by default: a restore replaces the
    /// live control plane, so whoever can write to the bucket could roll it back).
    #[arg(
        long,
        requires = "requests",
        env = "BACKUP_AGENT_ALLOW_RESTORE_REQUESTS"
    )]
    pub allow_restore_requests: bool,
    /// How often to look for requests, give or take a fifth.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = humantime::parse_duration)]
    pub request_poll: Duration,
    /// Days the archive (backup-agent/requests-archive/) keeps answered requests.
    #[arg(long, value_name = "DAYS", default_value_t = 30, value_parser = clap::value_parser!(u32).range(1..))]
    pub request_archive_days: u32,
    /// Address of the HTTP API (loopback unless you mean otherwise).
    #[arg(long, env = "BACKUP_AGENT_LISTEN", default_value = "127.0.0.1:8940")]
    pub listen: std::net::SocketAddr,
    /// KEY=VALUE lines read into the environment first, e.g. BACKUP_AGENT_S3_ACCESS_KEY=...:
    /// how the keys reach the daemon without its command line or a service definition.
    #[arg(long, value_name = "FILE")]
    pub env_file: Option<PathBuf>,
    /// File holding the bearer token that POST /v1/backups needs; without it that endpoint
    /// is refused.
    #[arg(long, env = "BACKUP_AGENT_TOKEN_FILE", value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    #[command(flatten)]
    pub apps: AppNameArgs,
    #[command(flatten)]
    pub dest: RepoArgs,
    #[command(flatten)]
    pub tuning: TuningArgs,
}

#[derive(clap::Args)]
pub struct CreateBackupArgs {
    /// A note kept with the backup (list-backups shows it).
    #[arg(long, default_value = "")]
    pub label: String,
    /// What to back up, comma-separated.
    #[arg(long, value_delimiter = ',', value_parser = component(), default_values_t = Component::ALL)]
    pub components: Vec<Component>,
    /// Back up even while Argo Workflows or Katib Experiments run (the backup may then not
    /// be consistent).
    #[arg(long)]
    pub force: bool,
    /// Check everything and print the plan (what is scaled, backed up, how much data);
    /// change nothing.
    #[arg(long)]
    pub dry_run: bool,
    #[command(flatten)]
    pub apps: AppNameArgs,
    #[command(flatten)]
    pub dest: DestinationArgs,
    #[command(flatten)]
    pub tuning: TuningArgs,
    #[arg(long, value_enum, default_value = "text")]
    pub output: Output,
}

#[derive(clap::Args)]
pub struct RestoreArgs {
    /// The backup id, as list-backups shows it (never "latest": say which).
    #[arg(value_parser = repository::parse_backup_id)]
    pub backup_id: String,
    /// What to restore, comma-separated [default: everything the backup holds].
    #[arg(long, value_delimiter = ',', value_parser = component())]
    pub components: Vec<Component>,
    /// Do not take a backup of the current state first (it is how a restore is undone).
    #[arg(long)]
    pub no_safety_backup: bool,
    /// Restore even while Argo Workflows or Katib Experiments run.
    #[arg(long)]
    pub force: bool,
    /// Check everything and print the plan; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// How long the MLMD pod may take to come back after its restart.
    #[arg(long, default_value_t = Minutes(restore::POD_TIMEOUT))]
    pub pod_timeout: Minutes,
    #[command(flatten)]
    pub run: RunArgs,
}
#[derive(clap::Args)]
pub struct DrillArgs {
    /// The backup to drill, as list-backups shows it [default: the newest completed backup].
    #[arg(value_parser = repository::parse_backup_id)]
    pub backup_id: Option<String>,
    /// Restore only a sample of the mlpipeline objects: a share drawn afresh each run (5%),
    /// or slice n of t by content hash (2/10). MLMD and the mysql-k8s backups are always
    /// checked whole.
    #[arg(long, value_parser = backup_agent::commands::verify::Sample::parse, value_name = "SHARE|N/T")]
    pub sample: Option<backup_agent::commands::verify::Sample>,
    /// Restore mlpipeline objects (in key order, those the sample picks) only while their
    /// bytes fit under this cap. K, M or G suffixes.
    #[arg(long, value_name = "BYTES", value_parser = parse_size)]
    pub max_bytes: Option<u64>,
    /// Where in the backup bucket the scratch copy of mlpipeline goes, one folder a drill,
    /// removed when it ends [default: backup-agent/drills/scratch].
    #[arg(long, value_name = "PREFIX")]
    pub scratch_prefix: Option<String>,
    /// Print what the drill would restore and check; write nothing, take no lock.
    #[arg(long)]
    pub dry_run: bool,
    #[command(flatten)]
    pub run: RunArgs,
}

/// A component name as the library spells it; clap lists the possible values in --help and
/// in its error.
fn component() -> impl clap::builder::TypedValueParser<Value = Component> {
    use clap::builder::TypedValueParser;
    clap::builder::PossibleValuesParser::new(Component::ALL.map(|c| c.as_str())).map(|s| {
        s.parse::<Component>()
            .expect("only possible values reach here")
    })
}

/// The tuning knobs as command-line flags.
#[derive(Debug, Clone, clap::Args)]
pub struct TuningArgs {
    /// MLMD container in pod <mlmd-app>-0 [default: mlmd-grpc-server (CKF 1.9+), else mlmd (CKF 1.8)].
    #[arg(long)]
    pub mlmd_container: Option<String>,
    /// MinIO S3 URL to use instead of the in-cluster one from the relation data [default: direct
    /// when it resolves, else a port-forward the agent opens to the minio service].
    #[arg(long, value_name = "URL")]
    pub minio_endpoint: Option<String>,
    /// Bucket of Kubeflow Pipelines' artifacts in MinIO.
    #[arg(long, default_value = context::MINIO_BUCKET)]
    pub minio_bucket: String,
    /// Concurrent HEAD lookups of large objects while copying the bucket.
    #[arg(long, default_value_t = context::CHECKERS, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub checkers: u16,
    /// Concurrent object copies. Memory stays bounded whatever the value: small objects within
    /// a 32 MiB budget, large ones piped from their GET into their upload in 5 MiB parts.
    #[arg(long, default_value_t = context::TRANSFERS, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub transfers: u16,
    /// Upload bandwidth limit in bytes per second, with an optional K, M or G suffix (binary
    /// units, as rclone): 50M is 50 MiB/s.
    #[arg(long, value_name = "RATE", value_parser = parse_rate)]
    pub bwlimit: Option<u64>,
    /// Directory for the MLMD copy, sort runs, and (format v1 only) large objects in flight
    /// [default: a new temporary directory].
    #[arg(long, value_name = "DIR")]
    pub spool: Option<PathBuf>,
    /// How long a scale change may take to settle.
    #[arg(long, default_value_t = Minutes(ScaleWait::default().timeout))]
    pub scale_timeout: Minutes,
    /// How long each mysql-k8s create-backup may take.
    #[arg(long, default_value_t = Minutes(context::ACTION_TIMEOUT))]
    pub action_timeout: Minutes,
    /// Take over the repository lock even though its holder's lease has not expired. Only
    /// when you know that run is gone (a lease of a dead run on this machine is taken over
    /// without it).
    #[arg(long)]
    pub break_lock: bool,
    #[command(flatten)]
    pub scale: ScaleArgs,
}

impl TuningArgs {
    pub fn tuning(&self) -> Tuning {
        Tuning {
            mlmd_container: self.mlmd_container.clone(),
            minio_endpoint: self.minio_endpoint.clone(),
            minio_bucket: self.minio_bucket.clone(),
            checkers: self.checkers.into(),
            transfers: self.transfers.into(),
            bwlimit: self.bwlimit,
            spool: self.spool.clone(),
            scale_wait: ScaleWait {
                timeout: self.scale_timeout.0,
                ..ScaleWait::default()
            },
            action_wait: self.action_timeout.0,
            lease: LeaseTiming::default(),
            break_lock: self.break_lock,
            streaming: self.scale.streaming(),
            packing: self.scale.packing(),
        }
    }
}

/// The streamed engine's stage sizes: memory stays flat in the bucket's size whatever they are;
/// tests set them small so that many pages, runs and batches happen on little data.
#[derive(Debug, Clone, clap::Args)]
pub struct ScaleArgs {
    /// Keys asked for in one listing request (1 to 1000).
    #[arg(long, help_heading = "Scale", env = "BACKUP_AGENT_LIST_PAGE_SIZE", default_value_t = context::LIST_PAGE, value_parser = clap::value_parser!(u16).range(1..=1000))]
    pub list_page_size: u16,
    /// Objects a copy may start ahead of the oldest unfinished one (the manifest is written in
    /// key order, so this window bounds what waits in memory).
    #[arg(long, help_heading = "Scale", env = "BACKUP_AGENT_QUEUE_DEPTH", default_value_t = context::QUEUE_DEPTH, value_parser = clap::value_parser!(u32).range(1..))]
    pub queue_depth: u32,
    /// Memory an external sort may hold before it writes a sorted run to disk (in --spool,
    /// else the temporary directory): content hashes in verify-backup and prune, and the
    /// listing of a server that does not list in byte order. K, M or G suffixes.
    #[arg(long, help_heading = "Scale", env = "BACKUP_AGENT_SORT_MEMORY", value_name = "BYTES", default_value = "16M", value_parser = parse_size)]
    pub sort_memory: u64,
    /// Keys deleted in one request (1 to 1000; S3's DeleteObjects).
    #[arg(long, help_heading = "Scale", env = "BACKUP_AGENT_DELETE_BATCH", default_value_t = context::DELETE_BATCH, value_parser = clap::value_parser!(u16).range(1..=1000))]
    pub delete_batch: u16,
    /// Objects up to this size are packed together into pack files (repository format v2:
    /// one PUT per pack, not per object; docs/FORMAT.md); larger ones are stored one blob
    /// each. 0 packs nothing (format v1). K, M or G suffixes.
    #[arg(long, help_heading = "Scale", env = "BACKUP_AGENT_PACK_THRESHOLD", value_name = "BYTES", default_value = "1M", value_parser = parse_threshold)]
    pub pack_threshold: u64,
    /// About how large a pack file grows before it is uploaded (the pack being filled and two
    /// uploading are held in memory). K, M or G suffixes.
    #[arg(long, help_heading = "Scale", env = "BACKUP_AGENT_PACK_SIZE", value_name = "BYTES", default_value = "8M", value_parser = parse_pack_size)]
    pub pack_size: u64,
    /// prune and delete-backup repack a pack once more than this percentage of its bytes is
    /// no longer used by any kept backup: the used blobs are copied into new packs, the kept
    /// manifests switched to them, then the old pack is deleted. 100 never repacks.
    #[arg(long, help_heading = "Scale", env = "BACKUP_AGENT_MAX_UNUSED", value_name = "PERCENT", default_value_t = context::MAX_UNUSED, value_parser = clap::value_parser!(u8).range(0..=100))]
    pub max_unused: u8,
}

/// A size, or 0 (nothing packed).
fn parse_threshold(s: &str) -> Result<u64, String> {
    if s.trim() == "0" {
        return Ok(0);
    }
    parse_size(s)
}

/// A pack size from 1 KiB to 256 MiB: a pack is held in memory while it fills and uploads.
fn parse_pack_size(s: &str) -> Result<u64, String> {
    let n = parse_size(s)?;
    if !(1024..=256 << 20).contains(&n) {
        return Err(format!("{n} bytes: a pack size is between 1K and 256M"));
    }
    Ok(n)
}

impl ScaleArgs {
    pub fn packing(&self) -> context::Packing {
        let d = context::Packing::default();
        context::Packing {
            threshold: self.pack_threshold,
            max_unused: self.max_unused,
            packs: backup_agent::repository::packer::PackSettings {
                target: self.pack_size,
                ..d.packs
            },
        }
    }

    pub fn streaming(&self) -> context::Streaming {
        context::Streaming {
            page_size: self.list_page_size.into(),
            queue_depth: self.queue_depth as usize,
            sort_memory: self.sort_memory as usize,
            delete_batch: self.delete_batch.into(),
        }
    }
}

/// Application names, CKF's by default; configurable for renamed deployments.
#[derive(Debug, Clone, clap::Args)]
pub struct AppNameArgs {
    /// mysql-k8s application of Kubeflow Pipelines.
    #[arg(long = "kfp-db-app", default_value_t = AppNames::default().kfp_db)]
    pub kfp_db: String,
    /// mysql-k8s application of Katib.
    #[arg(long = "katib-db-app", default_value_t = AppNames::default().katib_db)]
    pub katib_db: String,
    /// Application that writes ML Metadata (scaled to 0 while MLMD is copied).
    #[arg(long = "metadata-writer-app", default_value_t = AppNames::default().metadata_writer)]
    pub metadata_writer: String,
    #[arg(long = "mlmd-app", default_value_t = AppNames::default().mlmd)]
    pub mlmd: String,
    #[arg(long = "minio-app", default_value_t = AppNames::default().minio)]
    pub minio: String,
    /// Application whose object-storage relation carries MinIO's keys.
    #[arg(long = "kfp-ui-app", default_value_t = AppNames::default().kfp_ui)]
    pub kfp_ui: String,
}

impl AppNameArgs {
    pub fn names(&self) -> AppNames {
        AppNames {
            kfp_db: self.kfp_db.clone(),
            katib_db: self.katib_db.clone(),
            metadata_writer: self.metadata_writer.clone(),
            mlmd: self.mlmd.clone(),
            minio: self.minio.clone(),
            kfp_ui: self.kfp_ui.clone(),
        }
    }
}

/// A duration given as people write them (`90s`, `15m`, `2h`), shown in --help in minutes
/// when whole (`60m`, as the flags have always read).
#[derive(Debug, Clone, Copy)]
pub struct Minutes(pub Duration);

impl std::fmt::Display for Minutes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let secs = self.0.as_secs();
        if secs > 0 && secs.is_multiple_of(60) && self.0.subsec_nanos() == 0 {
            write!(f, "{}m", secs / 60)
        } else {
            write!(f, "{}", humantime::format_duration(self.0))
        }
    }
}

impl std::str::FromStr for Minutes {
    type Err = humantime::DurationError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        humantime::parse_duration(s).map(Minutes)
    }
}
