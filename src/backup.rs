//! `create-backup`: one consistent backup of the whole control plane.
//!
//! Discovery and preflight change nothing and make the plan (`--dry-run` stops there). Then,
//! under the repository lock: the statefile is written with every application's original scale
//! before any scale changes; the databases get a replica and the metadata writer stops; the
//! four parts are captured concurrently; scales go back whatever happened (success, failure,
//! SIGINT/SIGTERM); the statefile is written last, `completed` only when every part was
//! captured and checked.

use std::path::PathBuf;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::catalog::{self, ErrorRecord, Listed, Phase, RequestType, ScaleRecord, Statefile};
use crate::control_plane::{self, AppNames, AppState};
use crate::interrupt::Interrupt;
use crate::juju::{JujuCli, Status};
use crate::kube::Cluster;
use crate::lease::LeaseTiming;
use crate::mlmd;
use crate::mlpipeline::{self, Manifest, SyncOptions, SyncPlan, SyncStats};
use crate::mysql::{self, Waits};
use crate::preflight::{self, app, blocking, PreflightError};
use crate::progress::Progress;
use crate::quiesce::{self, ScaleWait};
use crate::recovery;
use crate::retry::retry;
use crate::store::{Store, StoreError};

/// The parts of the control plane a backup holds.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "kebab-case")]
pub enum Component {
    KfpDb,
    KatibDb,
    Mlmd,
    Mlpipeline,
}

impl Component {
    pub const ALL: [Component; 4] = [
        Component::KfpDb,
        Component::KatibDb,
        Component::Mlmd,
        Component::Mlpipeline,
    ];

    pub fn as_str(&self) -> &'static str {
        match self {
            Component::KfpDb => "kfp-db",
            Component::KatibDb => "katib-db",
            Component::Mlmd => "mlmd",
            Component::Mlpipeline => "mlpipeline",
        }
    }
}

/// What the operator asks for.
#[derive(Debug, Clone)]
pub struct BackupRequest {
    pub label: String,
    pub components: Vec<Component>,
    /// Back up even while Argo Workflows or Katib Experiments run.
    pub force: bool,
    pub request: RequestType,
}

/// Knobs with defaults that suit a real cluster.
#[derive(Debug, Clone)]
pub struct Tuning {
    pub mlmd_container: Option<String>,
    /// MinIO's URL when the in-cluster name does not resolve here and no port-forward is wanted.
    pub minio_endpoint: Option<String>,
    pub minio_bucket: String,
    pub checkers: usize,
    pub transfers: usize,
    pub bwlimit: Option<u64>,
    /// Where large objects and the MLMD copy wait before upload; a temporary directory if unset.
    pub spool: Option<PathBuf>,
    pub scale_wait: ScaleWait,
    pub action_wait: Duration,
    pub lease: LeaseTiming,
    /// Take over the repository lock whoever holds it (`--break-lock`).
    pub break_lock: bool,
}

impl Default for Tuning {
    fn default() -> Self {
        Tuning {
            mlmd_container: None,
            minio_endpoint: None,
            minio_bucket: "mlpipeline".into(),
            checkers: 8,
            transfers: 16,
            bwlimit: None,
            spool: None,
            scale_wait: ScaleWait::default(),
            action_wait: Duration::from_secs(60 * 60),
            lease: LeaseTiming::default(),
            break_lock: false,
        }
    }
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
    #[arg(long, default_value = "mlpipeline")]
    pub minio_bucket: String,
    /// Concurrent HEAD lookups of large objects while copying the bucket.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub checkers: u16,
    /// Concurrent object copies. Memory stays bounded whatever the value: small objects within
    /// a 32 MiB budget, large ones through the spool in 5 MiB parts.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub transfers: u16,
    /// Upload bandwidth limit in bytes per second, with an optional K, M or G suffix (binary
    /// units, as rclone): 50M is 50 MiB/s.
    #[arg(long, value_name = "RATE", value_parser = parse_rate)]
    pub bwlimit: Option<u64>,
    /// Directory for the MLMD copy and large objects in flight [default: a new temporary directory].
    #[arg(long, value_name = "DIR")]
    pub spool: Option<PathBuf>,
    /// How long a scale change may take to settle.
    #[arg(long, default_value = "15m", value_parser = humantime::parse_duration)]
    pub scale_timeout: Duration,
    /// How long each mysql-k8s create-backup may take.
    #[arg(long, default_value = "60m", value_parser = humantime::parse_duration)]
    pub action_timeout: Duration,
    /// Take over the repository lock even though its holder's lease has not expired. Only
    /// when you know that run is gone (a lease of a dead run on this machine is taken over
    /// without it).
    #[arg(long)]
    pub break_lock: bool,
}

impl TuningArgs {
    /// The flags' own defaults, for callers without a command line (the charm, the daemon).
    pub fn defaults() -> Self {
        #[derive(clap::Parser)]
        struct Only {
            #[command(flatten)]
            tuning: TuningArgs,
        }
        <Only as clap::Parser>::parse_from(["backup-agent"]).tuning
    }

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
                timeout: self.scale_timeout,
                ..ScaleWait::default()
            },
            action_wait: self.action_timeout,
            lease: LeaseTiming::default(),
            break_lock: self.break_lock,
        }
    }
}

/// `50M` → 52428800: a byte rate with an optional binary suffix.
pub fn parse_rate(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a rate; give bytes per second like 50M or 1G"))?;
    let mult: u64 = match unit.to_ascii_uppercase().as_str() {
        "" | "B" => 1,
        "K" => 1 << 10,
        "M" => 1 << 20,
        "G" => 1 << 30,
        _ => {
            return Err(format!(
                "{s:?}: unknown unit {unit:?}; use K, M or G (e.g. 50M)"
            ))
        }
    };
    let rate = (n * mult as f64) as u64;
    if !n.is_finite() || rate == 0 {
        return Err(format!("{s:?}: the rate must be above zero"));
    }
    Ok(rate)
}

/// Clients and settings a run works with; nothing global.
pub struct Context {
    pub juju: JujuCli,
    pub names: AppNames,
    pub dest: Store,
    /// A kubeconfig file; `None` infers (KUBECONFIG, ~/.kube/config, in-cluster).
    pub kubeconfig: Option<PathBuf>,
    pub tuning: Tuning,
    /// MinIO's keys when the caller has them (the charm's object-storage relation); `None`
    /// discovers them from the model.
    pub minio: Option<control_plane::MinioAccess>,
    pub progress: Progress,
    pub interrupt: Interrupt,
}

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("{0}")]
    Discovery(#[from] control_plane::DiscoveryError),

    #[error("preflight: {0}")]
    Preflight(String),
    #[error("{0}")]
    Lock(Box<recovery::RecoveryError>),
    #[error("{0}")]
    Usage(String),
    #[error("backup {id} failed: {}{}", .causes.join("; "), .aftermath)]
    Failed {
        id: String,
        causes: Vec<String>,
        /// What was put back and where the record is.
        aftermath: String,
        statefile: Box<Statefile>,
    },
    #[error("backup {id} is complete, but {detail}")]
    NotRestored {
        id: String,
        detail: String,
        statefile: Box<Statefile>,
    },
}

/// What a run will do: printed by `--dry-run`, and the first thing a real run reports.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct Plan {
    pub model: String,
    pub destination: String,
    pub components: Vec<Component>,
    /// Every application whose scale is recorded, and what it will be while capturing.
    pub scales: Vec<ScaleRecord>,
    pub mysql: Vec<String>,
    pub mlmd_pod: Option<String>,
    pub mlmd_container: Option<String>,
    pub mlmd_size: Option<u64>,
    pub minio_endpoint: String,
    pub minio_reached_through: String,
    pub minio_credentials_from: String,
    pub mlpipeline_objects: u64,
    pub mlpipeline_bytes: u64,
    /// Objects and bytes to read: new or changed since the previous backup.
    pub mlpipeline_to_read: u64,
    pub mlpipeline_to_read_bytes: u64,
    pub previous_backup: Option<String>,
    pub running_workloads: Vec<String>,
    pub spool: String,
    pub spool_needed: u64,
    pub spool_free: u64,
}

/// A finished backup: its statefile and what the bucket copy did.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct Report {
    pub statefile: Statefile,
    pub mlpipeline: Option<SyncStats>,
    pub warnings: Vec<String>,
}

/// Everything preflight found, kept for the run.
struct Prepared {
    plan: Plan,
    status: Status,
    apps: Vec<AppState>,
    cluster: Option<Cluster>,
    /// MinIO, and the port-forward to it that must live as long as the run.
    minio: Option<preflight::Minio>,
    sync_plan: Option<SyncPlan>,
    spool: Spool,
    warnings: Vec<String>,
}

/// The spool directory; a temporary one goes when the run ends.
struct Spool {
    path: PathBuf,
    _temp: Option<tempfile::TempDir>,
}

/// Free bytes where `path` lives.
fn free_space(path: &std::path::Path) -> std::io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid NUL-terminated path and `st` a writable statvfs.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(st.f_bavail as u64 * st.f_frsize as u64)
}

/// Writes, reads back and deletes a probe object: the destination takes our writes.
async fn probe_destination(dest: &Store, id: &str) -> Result<(), String> {
    let key = format!("{}/probe-{id}", catalog::REPO);
    let body = format!("backup-agent write probe {id}\n");
    let ctx = |e: StoreError| format!("destination {}: {e}", dest.describe());
    retry(crate::retry::PREFLIGHT_ATTEMPTS, &key, || {
        dest.put_bytes(&key, body.as_bytes(), "text/plain")
    })
    .await
    .map_err(ctx)?;
    let back = retry(crate::retry::PREFLIGHT_ATTEMPTS, &key, || {
        dest.get_bytes(&key)
    })
    .await
    .map_err(ctx)?;
    retry(crate::retry::PREFLIGHT_ATTEMPTS, &key, || dest.delete(&key))
        .await
        .map_err(ctx)?;
    if back != body.as_bytes() {
        return Err(format!(
            "destination {}: the probe object {key} read back different from what was written",
            dest.describe()
        ));
    }
    Ok(())
}

/// The newest completed backup's manifest, if any; an unreadable one means a full copy.
async fn previous_manifest(
    dest: &Store,
    rows: &[Listed],
    warnings: &mut Vec<String>,
) -> Option<(String, Manifest)> {
    let newest = rows.iter().rev().find_map(|r| match r {
        Listed::Backup(s) if s.phase == Phase::Completed => s
            .components
            .mlpipeline
            .as_ref()
            .map(|m| (s.backup_id.clone(), m.clone())),
        _ => None,
    });
    let (id, cap) = newest?;
    let bytes = match retry(crate::retry::ATTEMPTS, &cap.manifest_key, || {
        dest.get_bytes(&cap.manifest_key)
    })
    .await
    {
        Ok(b) => b,
        Err(e) => {
            warnings.push(format!(
                "the manifest of the previous backup {id} cannot be read ({e}): every object is read again"
            ));
            return None;
        }
    };
    match Manifest::parse(&cap.manifest_key, &bytes) {
        Ok(m) => Some((id, m)),
        Err(e) => {
            warnings.push(format!(
                "the manifest of the previous backup {id} is unreadable ({e}): every object is read again"
            ));
            None
        }
    }
}

/// Discovery and preflight: reads everything, changes nothing.
async fn prepare(
    ctx: &Context,
    req: &BackupRequest,
    id: &str,
    dry_run: bool,
) -> Result<Prepared, BackupError> {
    let pre = |s: String| BackupError::Preflight(s);
    let wants = |c| req.components.contains(&c);
    let p = &ctx.progress;
    let (status, apps) = preflight::model(ctx).await?;
    let mut warnings = vec![];
    let cluster = if wants(Component::Mlmd) || wants(Component::Mlpipeline) {
        Some(preflight::cluster(ctx, &status.model.name).await?)
    } else {
        None
    };

    p.step("preflight", format!("destination {}", ctx.dest.describe()));
    // Read before writing: some servers create a missing bucket on the first write.
    let existing = catalog::list(&ctx.dest)
        .await
        .map_err(|e| pre(format!("destination {}: {e}", ctx.dest.describe())))?;
    if !dry_run {
        probe_destination(&ctx.dest, id).await.map_err(pre)?;
    }

    let mut running = vec![];
    if let Some(cluster) = &cluster {
        running = preflight::running_work(
            ctx,
            cluster,
            req.force,
            "A backup now would not be consistent",
        )
        .await?;
        if !running.is_empty() {
            warnings.push(format!(
                "backing up while these run (--force): {}",
                running.join(", ")
            ));
        }
    }

    let (mut mlmd_pod, mut mlmd_container, mut mlmd_size) = (None, None, None);
    if let (true, Some(cluster)) = (wants(Component::Mlmd), &cluster) {
        let (pod, container) = preflight::mlmd_pod(ctx, cluster).await?;
        let (size, _) = cluster
            .stat(&pod, &container, mlmd::DB_PATH)
            .await
            .map_err(|e| pre(format!("MLMD: {e}")))?;
        (mlmd_pod, mlmd_container, mlmd_size) = (Some(pod), Some(container), Some(size));
    }

    let (mut minio, mut sync_plan, mut previous) = (None, None, None);
    if wants(Component::Mlpipeline) {
        let m = preflight::minio(ctx, &apps, cluster.as_ref()).await?;
        let prev = previous_manifest(&ctx.dest, &existing, &mut warnings).await;
        sync_plan = Some(SyncPlan::new(
            m.listed.clone(),
            prev.as_ref().map(|(_, m)| m),
        ));
        previous = prev.map(|(id, _)| id);
        minio = Some(m);
    }

    let spool = match &ctx.tuning.spool {
        Some(dir) => {
            std::fs::create_dir_all(dir)
                .map_err(|e| pre(format!("spool directory {}: {e}", dir.display())))?;
            Spool {
                path: dir.clone(),
                _temp: None,
            }
        }
        None => {
            let t = tempfile::Builder::new()
                .prefix("backup-agent-spool-")
                .tempdir()
                .map_err(|e| {
                    pre(format!(
                        "cannot create a spool directory in {}: {e}; pass --spool DIR",
                        std::env::temp_dir().display()
                    ))
                })?;
            Spool {
                path: t.path().to_path_buf(),
                _temp: Some(t),
            }
        }
    };
    // MLMD: the raw copy (compressed straight into the upload); mlpipeline: up to
    // LARGE_IN_FLIGHT large objects on disk at once.
    let spool_needed = mlmd_size.unwrap_or(0)
        + sync_plan.as_ref().map_or(0, |s| {
            s.largest_spooled() * mlpipeline::LARGE_IN_FLIGHT.min(s.to_read.len()).max(1) as u64
        })
        + (16 << 20);
    let spool_free = free_space(&spool.path)
        .map_err(|e| pre(format!("spool directory {}: {e}", spool.path.display())))?;
    if spool_free < spool_needed {
        return Err(pre(format!(
            "spool directory {} has {} free; this backup needs about {} there (the MLMD copy twice, plus the largest objects in flight): free some space or pass --spool DIR on a larger disk",
            spool.path.display(),
            catalog::human_bytes(spool_free),
            catalog::human_bytes(spool_needed)
        )));
    }

    let mut scales = vec![];
    let mut mysql_apps = vec![];
    for (c, role) in [
        (Component::KfpDb, "kfp-db"),
        (Component::KatibDb, "katib-db"),
    ] {
        if wants(c) {
            let a = app(&apps, role);
            if a.status == "blocked" {
                let msg = status.applications[&a.name]
                    .application_status
                    .as_ref()
                    .map(|s| s.message.clone())
                    .unwrap_or_default();
                return Err(pre(format!(
                    "{} is blocked (\"{msg}\"): mysql-k8s takes no backup in that state. After a restore it must first be given another S3 repository (a new `path` on its s3-integrator, or another s3-integrator); or leave it out with --components",
                    a.name
                )));
            }
            scales.push(quiesce::record(&a.name, a.scale, a.scale.max(2)));
            mysql_apps.push(a.name.clone());
        }
    }
    if wants(Component::Mlmd) {
        let w = app(&apps, "metadata-writer");
        scales.push(quiesce::record(&w.name, w.scale, 0));
    }

    let plan = Plan {
        model: status.model.name.clone(),
        destination: ctx.dest.describe(),
        components: req.components.clone(),
        scales,
        mysql: mysql_apps,
        mlmd_pod,
        mlmd_container,
        mlmd_size,
        minio_endpoint: minio
            .as_ref()
            .map(|m| m.access.endpoint.clone())
            .unwrap_or_default(),
        minio_reached_through: minio.as_ref().map(|m| m.how.clone()).unwrap_or_default(),
        minio_credentials_from: minio
            .as_ref()
            .map(|m| m.access.from.clone())
            .unwrap_or_default(),
        mlpipeline_objects: sync_plan.as_ref().map_or(0, |s| s.listed.len() as u64),
        mlpipeline_bytes: sync_plan.as_ref().map_or(0, |s| s.bytes()),
        mlpipeline_to_read: sync_plan.as_ref().map_or(0, |s| s.to_read.len() as u64),
        mlpipeline_to_read_bytes: sync_plan.as_ref().map_or(0, |s| s.read_bytes()),
        previous_backup: previous,
        running_workloads: running,
        spool: spool.path.display().to_string(),
        spool_needed,
        spool_free,
    };
    Ok(Prepared {
        plan,
        status,
        apps,
        cluster,
        minio,
        sync_plan,
        spool,
        warnings,
    })
}

/// Discovery and preflight only: what a backup would do. Changes nothing (the destination is
/// listed, not written).
pub async fn plan(ctx: &Context, req: &BackupRequest) -> Result<Plan, BackupError> {
    check_request(req)?;
    let id = catalog::new_backup_id(Utc::now());
    Ok(prepare(ctx, req, &id, true).await?.plan)
}

fn check_request(req: &BackupRequest) -> Result<(), BackupError> {
    if req.components.is_empty() {
        return Err(BackupError::Usage(
            "no components to back up: name some of kfp-db, katib-db, mlmd, mlpipeline, or leave --components out for all".into(),
        ));
    }
    if req.label.len() > 128 || req.label.chars().any(|c| c.is_control()) {
        return Err(BackupError::Usage(
            "the label must be at most 128 printable characters".into(),
        ));
    }
    Ok(())
}

fn error(component: &str, message: impl Into<String>) -> ErrorRecord {
    ErrorRecord {
        component: component.into(),
        message: message.into(),
        at: Utc::now(),
    }
}

/// Runs a backup. On failure the error carries the failed statefile (already written, when the
/// destination allowed it).
pub async fn run(ctx: &Context, req: &BackupRequest) -> Result<Report, BackupError> {
    run_inner(ctx, req, true).await
}

/// A backup inside a run that already holds the repository lock (restore's safety backup).
pub(crate) async fn run_under_lock(
    ctx: &Context,
    req: &BackupRequest,
) -> Result<Report, BackupError> {
    run_inner(ctx, req, false).await
}

async fn run_inner(
    ctx: &Context,
    req: &BackupRequest,
    take_lock: bool,
) -> Result<Report, BackupError> {
    check_request(req)?;
    let started = Utc::now();
    let id = catalog::new_backup_id(started);
    // The lock, and the repair of what a dead run left, come before the scales are read: a
    // killed run's quiesced scales must not be taken for the ones to put back.
    let lock = if take_lock {
        Some(
            recovery::lock_and_recover(ctx, &format!("create-backup {id}"))
                .await
                .map_err(|e| BackupError::Lock(Box::new(e)))?
                .0,
        )
    } else {
        None
    };
    let result = run_locked(ctx, req, &id, started).await;
    if let Some(Err(e)) = match lock {
        Some(l) => Some(l.release().await),
        None => None,
    } {
        ctx.progress
            .warn(format!("releasing the repository lock: {e}"));
    }
    result
}

async fn run_locked(
    ctx: &Context,
    req: &BackupRequest,
    id: &str,
    started: DateTime<Utc>,
) -> Result<Report, BackupError> {
    let id = id.to_string();
    let mut prep = prepare(ctx, req, &id, false).await?;
    if let Some(reason) = ctx.interrupt.reason() {
        return Err(BackupError::Preflight(format!(
            "{reason} before anything changed"
        )));
    }
    let p = &ctx.progress;
    p.step(
        "plan",
        format!(
            "backup {id}: {}; mlpipeline {} objects, {} to read",
            req.components
                .iter()
                .map(|c| c.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            prep.plan.mlpipeline_objects,
            catalog::human_bytes(prep.plan.mlpipeline_to_read_bytes)
        ),
    );
    for w in &prep.warnings {
        p.warn(w.clone());
    }
    let mut sf = new_statefile(req, &id, started, &prep);
    let outcome = {
        let body = capture_all(ctx, &mut prep, &mut sf);
        tokio::pin!(body);
        tokio::select! {
            r = &mut body => r,
            _ = ctx.interrupt.triggered() => Err(vec![error("agent", ctx.interrupt.reason().unwrap_or_else(|| "interrupted".into()))]),
        }
    };

    // Whatever happened: scales back first, then the record.
    let (juju, mut journal, wait, p2) = (
        ctx.juju.clone(),
        std::mem::take(&mut sf.quiesce),
        ctx.tuning.scale_wait,
        p.clone(),
    );
    let (journal, restored) = blocking(move || {
        let r = quiesce::restore(&juju, &mut journal, wait, &p2);
        (journal, r)
    })
    .await;
    sf.quiesce = journal;
    sf.finished_at = Some(Utc::now());
    let result = match outcome {
        Ok(stats) => {
            if let Err(e) = &restored {
                sf.errors.push(error("quiesce", e.clone()));
            }
            sf.phase = Phase::Completed;
            match catalog::save(&ctx.dest, &sf).await {
                Ok(()) => match restored {
                    Ok(()) => {
                        let back = put_back(&sf.quiesce);
                        p.step(
                            "done",
                            if back.is_empty() {
                                format!("backup {id} completed")
                            } else {
                                format!("backup {id} completed; scales put back ({back})")
                            },
                        );
                        Ok(Report {
                            statefile: sf.clone(),
                            mlpipeline: stats,
                            warnings: prep.warnings.clone(),
                        })
                    }
                    Err(detail) => Err(BackupError::NotRestored {
                        id: id.clone(),
                        detail: format!("not every application is back at its scale: {detail}"),
                        statefile: Box::new(sf.clone()),
                    }),
                },
                Err(e) => {
                    sf.phase = Phase::Failed;
                    Err(failed(
                        &id,
                        vec![format!("writing the final statefile: {e}")],
                        restored,
                        &sf,
                        false,
                    ))
                }
            }
        }
        Err(errors) => {
            sf.errors.extend(errors.iter().cloned());
            if let Err(e) = &restored {
                sf.errors.push(error("quiesce", e.clone()));
            }
            sf.phase = Phase::Failed;
            let saved = catalog::save(&ctx.dest, &sf).await;
            let causes = errors.iter().map(|e| e.message.clone()).collect();
            Err(failed(&id, causes, restored, &sf, saved.is_ok()))
        }
    };
    result
}

/// `kfp-db 1, kfp-metadata-writer 1`: each changed application and the scale it went back to.
fn put_back(journal: &[ScaleRecord]) -> String {
    journal
        .iter()
        .filter(|r| r.changed_to != r.original)
        .map(|r| format!("{} {}", r.app, r.original))
        .collect::<Vec<_>>()
        .join(", ")
}

fn failed(
    id: &str,
    causes: Vec<String>,
    restored: Result<(), String>,
    sf: &Statefile,
    saved: bool,
) -> BackupError {
    let mut after = vec![];
    match restored {
        Ok(()) if sf.quiesce.iter().any(|r| r.changed_to != r.original) => {
            after.push(format!("scales put back ({})", put_back(&sf.quiesce)))
        }
        Ok(()) => {}
        Err(e) => after.push(format!("NOT every scale is back: {e}")),
    }
    after.push(if saved {
        format!("recorded as failed in {}", catalog::statefile_key(id))
    } else {
        "the failed statefile could not be written either".to_string()
    });
    BackupError::Failed {
        id: id.into(),
        causes,
        aftermath: format!(". {}", after.join("; ")),
        statefile: Box::new(sf.clone()),
    }
}

fn new_statefile(
    req: &BackupRequest,
    id: &str,
    started: DateTime<Utc>,
    prep: &Prepared,
) -> Statefile {
    Statefile {
        schema_version: catalog::SCHEMA_VERSION,
        backup_id: id.into(),
        label: req.label.clone(),
        request: req.request,
        phase: Phase::Quiescing,
        started_at: started,
        finished_at: None,
        agent_version: env!("CARGO_PKG_VERSION").into(),
        model: prep.plan.model.clone(),
        charms: prep
            .apps
            .iter()
            .map(|a| {
                let c = match a.charm_rev {
                    Some(r) => format!("{} r{r}", a.charm),
                    None => a.charm.clone(),
                };
                (a.name.clone(), c)
            })
            .collect(),
        requested: req
            .components
            .iter()
            .map(|c| c.as_str().to_string())
            .collect(),
        components: Default::default(),
        quiesce: prep.plan.scales.clone(),
        errors: vec![],
        history: vec![],
        checksum: None,
    }
}

/// Quiesce, capture every part concurrently, check what was written. Returns the errors of the
/// parts that failed; the first failure stops the others.
async fn capture_all(
    ctx: &Context,
    prep: &mut Prepared,
    sf: &mut Statefile,
) -> Result<Option<SyncStats>, Vec<ErrorRecord>> {
    let p = &ctx.progress;
    let dest = &ctx.dest;
    let store_err = |what: &str, e: StoreError| vec![error("destination", format!("{what}: {e}"))];
    // The journal is in the bucket before anything is scaled.
    catalog::save(dest, sf)
        .await
        .map_err(|e| store_err("writing the statefile", e))?;

    let targets: Vec<(String, u32)> = sf
        .quiesce
        .iter()
        .filter(|r| r.changed_to != r.original)
        .map(|r| (r.app.clone(), r.changed_to))
        .collect();
    let status = if targets.is_empty() {
        prep.status.clone()
    } else {
        let (juju, wait, p2, stop) = (
            ctx.juju.clone(),
            ctx.tuning.scale_wait,
            p.clone(),
            ctx.interrupt.clone(),
        );
        blocking(move || quiesce::scale_and_wait(&juju, &targets, wait, &p2, &stop))
            .await
            .map_err(|e| vec![error("quiesce", e.to_string())])?
    };
    sf.phase = Phase::Capturing;
    catalog::save(dest, sf)
        .await
        .map_err(|e| store_err("writing the statefile", e))?;
    p.step("capture", "quiesced; capturing");

    // The first part to fail stops the others: the backup is failed anyway.
    let halt = CancellationToken::new();
    let waits = Waits {
        status: "5m".into(),
        backup: format!("{}s", ctx.tuning.action_wait.as_secs().max(1)),
    };

    let mysql_apps: Vec<String> = prep.plan.mysql.clone();
    let mysql_fut = {
        let halt = halt.clone();
        let juju = ctx.juju.clone();
        let p = p.clone();
        async move {
            if mysql_apps.is_empty() {
                return Some(vec![]);
            }
            let all = blocking(move || {
                let on_start =
                    |a: &str| p.step("mysql", format!("{a}: create-backup on a replica"));
                mysql::capture_many(&juju, &status, &mysql_apps, &waits, &on_start)
            });
            tokio::select! {
                r = all => Some(r),
                _ = halt.cancelled() => None,
            }
        }
    };

    let mlmd_fut = {
        let halt = halt.clone();
        let cluster = prep.cluster.clone();
        let pod = prep.plan.mlmd_pod.clone();
        let container = prep.plan.mlmd_container.clone();
        let spool = prep.spool.path.clone();
        let id = sf.backup_id.clone();
        let p = p.clone();
        async move {
            let (Some(cluster), Some(pod)) = (cluster, pod) else {
                return Some(Ok(None));
            };
            p.step("mlmd", format!("streaming {} out of {pod}", mlmd::DB_PATH));
            let fut = mlmd::capture(&cluster, &pod, container.as_deref(), &spool, dest, &id);
            tokio::select! {
                r = fut => Some(r.map(Some)),
                _ = halt.cancelled() => None,
            }
        }
    };

    let sync_fut = {
        let halt = halt.clone();
        let plan = prep.sync_plan.take();
        let minio = prep.minio.as_ref().map(|m| m.store.clone());
        let mut opts = SyncOptions::new(prep.spool.path.join("mlpipeline"));
        opts.checkers = ctx.tuning.checkers;
        opts.transfers = ctx.tuning.transfers;
        opts.bwlimit = ctx.tuning.bwlimit;
        opts.progress = p.clone();
        async move {
            let (Some(plan), Some(minio)) = (plan, minio) else {
                return Some(Ok(None));
            };
            let fut = mlpipeline::capture_planned(&minio, dest, plan, &opts);
            tokio::select! {
                r = fut => Some(r.map(Some)),
                _ = halt.cancelled() => None,
            }
        }
    };

    let (mysql_r, mlmd_r, sync_r) = tokio::join!(
        async {
            let r = mysql_fut.await;
            if let Some(rs) = &r {
                if rs.iter().any(|(_, r)| r.is_err()) {
                    halt.cancel();
                }
            }
            r
        },
        async {
            let r = mlmd_fut.await;
            if matches!(r, Some(Err(_))) {
                halt.cancel();
            }
            r
        },
        async {
            let r = sync_fut.await;
            if matches!(r, Some(Err(_))) {
                halt.cancel();
            }
            r
        }
    );

    let mut errors = vec![];
    for (a, r) in mysql_r.unwrap_or_default() {
        match r {
            Ok(cap) => {
                p.done(
                    "mysql",
                    format!("{a}: backup {} on {}", cap.backup_id, cap.unit),
                );
                sf.components.mysql.push(cap);
            }
            Err(e) => errors.push(error(&a, e.to_string())),
        }
    }
    match mlmd_r {
        Some(Ok(Some(cap))) => {
            p.done(
                "mlmd",
                format!(
                    "{} ({} compressed), integrity ok",
                    catalog::human_bytes(cap.size),
                    catalog::human_bytes(cap.compressed_size)
                ),
            );
            sf.components.mlmd = Some(cap);
        }
        Some(Err(e)) => errors.push(error("mlmd", e.to_string())),
        _ => {}
    }
    let mut stats = None;
    match sync_r {
        Some(Ok(Some((manifest, s)))) => {
            let key = catalog::manifest_key(&sf.backup_id);
            let bytes = manifest.to_bytes();
            let sha = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&bytes));
            match retry(crate::retry::ATTEMPTS, &key, || {
                dest.put_bytes(&key, &bytes, "application/zstd")
            })
            .await
            {
                Ok(()) => {
                    p.done(
                        "mlpipeline",
                        format!(
                            "{} objects, {}; read {} objects, uploaded {} new",
                            s.objects,
                            catalog::human_bytes(s.bytes),
                            s.read_objects,
                            catalog::human_bytes(s.new_bytes)
                        ),
                    );
                    for k in &s.vanished {
                        p.warn(format!(
                            "mlpipeline: {k} was deleted while the backup ran; not in this backup"
                        ));
                    }
                    sf.components.mlpipeline = Some(catalog::MlpipelineCapture {
                        manifest_key: key,
                        manifest_sha256: sha,
                        objects: s.objects,
                        bytes: s.bytes,
                        new_bytes: s.new_bytes,
                        new_objects: s.new_objects,
                    });
                    stats = Some(s);
                }
                Err(e) => errors.push(error("mlpipeline", format!("writing the manifest: {e}"))),
            }
        }
        Some(Err(e)) => errors.push(error("mlpipeline", e.to_string())),
        _ => {}
    }
    if !errors.is_empty() {
        return Err(errors);
    }

    sf.phase = Phase::Verifying;
    ctx.progress
        .step("verify", "every part captured; checking what was written");
    catalog::save(dest, sf)
        .await
        .map_err(|e| store_err("writing the statefile", e))?;
    verify_written(dest, sf)
        .await
        .map_err(|m| vec![error("verify", m)])?;
    Ok(stats)
}

/// Every object this backup wrote is there with the size recorded.
async fn verify_written(dest: &Store, sf: &Statefile) -> Result<(), String> {
    let mut expect: Vec<(String, Option<u64>)> = vec![];
    if let Some(m) = &sf.components.mlmd {
        expect.push((m.key.clone(), Some(m.compressed_size)));
    }
    if let Some(m) = &sf.components.mlpipeline {
        expect.push((m.manifest_key.clone(), None));
    }
    for (key, size) in expect {
        let got = retry(crate::retry::ATTEMPTS, &key, || dest.head(&key))
            .await
            .map_err(|e| format!("checking {key}: {e}"))?;
        match (got, size) {
            (None, _) => return Err(format!("{key} is missing right after it was written")),
            (Some(o), Some(s)) if o.size != s => {
                return Err(format!("{key} has {} bytes, {s} were written", o.size))
            }
            _ => {}
        }
    }
    Ok(())
}

/// The plan as `--dry-run` prints it.
pub fn render_plan(p: &Plan) -> String {
    use std::fmt::Write;
    let hb = catalog::human_bytes;
    let mut o = String::new();
    let _ = writeln!(
        o,
        "Plan for a backup of model {} into {}",
        p.model, p.destination
    );
    let names: Vec<&str> = p.components.iter().map(|c| c.as_str()).collect();
    let _ = writeln!(o, "  components: {}", names.join(", "));
    let _ = writeln!(
        o,
        "  scales (recorded before any change, put back afterwards):"
    );
    for r in &p.scales {
        let what = if r.changed_to == r.original {
            format!("stays at {}", r.original)
        } else {
            format!("{} -> {} -> {}", r.original, r.changed_to, r.original)
        };
        let _ = writeln!(o, "    {:<22} {what}", r.app);
    }
    for app in &p.mysql {
        let _ = writeln!(
            o,
            "  {app}: mysql-k8s create-backup on a replica (not the primary)"
        );
    }
    if let (Some(pod), Some(c), Some(size)) = (&p.mlmd_pod, &p.mlmd_container, p.mlmd_size) {
        let _ = writeln!(o, "  mlmd: {} from {pod}/{c}, {}", mlmd::DB_PATH, hb(size));
    }
    if !p.minio_endpoint.is_empty() {
        let _ = writeln!(
            o,
            "  mlpipeline: {} objects, {}; to read {} objects, {} (the rest is unchanged since {})",
            p.mlpipeline_objects,
            hb(p.mlpipeline_bytes),
            p.mlpipeline_to_read,
            hb(p.mlpipeline_to_read_bytes),
            p.previous_backup.as_deref().unwrap_or("no earlier backup")
        );
        let _ = writeln!(
            o,
            "    MinIO {} through {}, credentials from {}",
            p.minio_endpoint, p.minio_reached_through, p.minio_credentials_from
        );
    }
    if !p.running_workloads.is_empty() {
        let _ = writeln!(o, "  running (--force): {}", p.running_workloads.join(", "));
    }
    let _ = writeln!(
        o,
        "  spool: {} ({} free, about {} needed)",
        p.spool,
        hb(p.spool_free),
        hb(p.spool_needed)
    );
    let _ = writeln!(o, "Nothing was changed (--dry-run).");
    o
}

/// The summary of a finished backup.
pub fn render_report(r: &Report) -> String {
    use std::fmt::Write;
    let hb = catalog::human_bytes;
    let s = &r.statefile;
    let mut o = String::new();
    let took = s
        .finished_at
        .map(|f| (f - s.started_at).num_milliseconds() as f64 / 1000.0)
        .unwrap_or_default();
    let _ = writeln!(
        o,
        "backup {} {} in {took:.1}s",
        s.backup_id,
        s.phase.as_str()
    );
    for m in &s.components.mysql {
        let _ = writeln!(
            o,
            "  {:<10} mysql-k8s backup {} on {} (in {})",
            m.app, m.backup_id, m.unit, m.location
        );
    }
    if let Some(m) = &s.components.mlmd {
        let _ = writeln!(
            o,
            "  {:<10} {} ({} compressed), integrity {}, {} tables",
            "mlmd",
            hb(m.size),
            hb(m.compressed_size),
            m.integrity_check,
            m.row_counts.len()
        );
    }
    if let Some(m) = &s.components.mlpipeline {
        let read = r.mlpipeline.as_ref().map_or(0, |x| x.read_objects);
        let _ = writeln!(
            o,
            "  {:<10} {} objects, {}; read {read}, uploaded {} new in {} blobs",
            "mlpipeline",
            m.objects,
            hb(m.bytes),
            hb(m.new_bytes),
            m.new_objects
        );
    }
    if s.quiesce.iter().any(|q| q.changed_to != q.original) {
        let _ = writeln!(o, "  scales put back: {}", put_back(&s.quiesce));
    }
    for w in &r.warnings {
        let _ = writeln!(o, "  warning: {w}");
    }
    o
}

impl From<PreflightError> for BackupError {
    fn from(e: PreflightError) -> Self {
        match e {
            PreflightError::Discovery(d) => BackupError::Discovery(d),
            PreflightError::Check(c) => BackupError::Preflight(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_take_binary_suffixes_and_refuse_nonsense() {
        assert_eq!(parse_rate("50M"), Ok(50 << 20));
        assert_eq!(parse_rate("1.5k"), Ok(1536));
        assert_eq!(parse_rate("4096"), Ok(4096));
        assert!(parse_rate("0").unwrap_err().contains("above zero"));
        assert!(parse_rate("10X").unwrap_err().contains("unknown unit"));
        assert!(parse_rate("fast").unwrap_err().contains("not a rate"));
    }
}
