//! `restore`: puts the whole control plane back from one backup.
//!
//! Only an explicit, completed backup that passes a light verification is restored. Before
//! anything is overwritten a safety backup (`pre-restore`) is taken, so a restore can itself be
//! undone. The journal of scales goes into the restored backup's history before any scale
//! changes; scales go back on success, failure and signals.

mod parts;
mod prepare;
mod render;
mod run;

use std::time::Duration;

use serde::Serialize;

pub use crate::components::mysql::MysqlRestored;
pub use render::{render_plan, render_report};

use crate::commands::backup::BackupError;
use crate::commands::preflight::PreflightError;
use crate::commands::recover;
use crate::components::mlpipeline::{self, RestoreStats};
use crate::components::Component;
use crate::context::Context;
use crate::juju::discovery;
use crate::repository::{CatalogError, ScaleRecord};
use prepare::prepare;

/// How long the MLMD pod may take to come back after its restart, unless told otherwise.
pub const POD_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10 * 60);

#[derive(Debug, Clone)]
pub struct RestoreRequest {
    pub backup_id: String,
    /// Empty: every part the backup holds.
    pub components: Vec<Component>,
    pub safety_backup: bool,
    /// Restore even while Argo Workflows or Katib Experiments run.
    pub force: bool,
    /// How long the MLMD pod may take to come back after its restart.
    pub pod_timeout: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error("{0}")]
    Usage(String),
    #[error("{0}")]
    Catalog(#[from] CatalogError),
    #[error("{0}")]
    Discovery(#[from] discovery::DiscoveryError),
    #[error("preflight: {0}")]
    Preflight(String),
    #[error("{0}")]
    Lock(Box<recover::RecoveryError>),
    #[error("the safety backup failed, so nothing was restored: {0}")]
    SafetyBackup(Box<BackupError>),
    #[error("restore of backup {id} failed: {}. {}", .causes.join("; "), .aftermath)]
    Failed {
        id: String,
        causes: Vec<String>,
        aftermath: String,
    },
}

impl From<PreflightError> for RestoreError {
    fn from(e: PreflightError) -> Self {
        match e {
            PreflightError::Discovery(d) => RestoreError::Discovery(d),
            PreflightError::Check(c) => RestoreError::Preflight(c),
        }
    }
}

/// What a restore will do (`--dry-run` prints it).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct RestorePlan {
    pub backup_id: String,
    pub model: String,
    pub components: Vec<Component>,
    pub scales: Vec<ScaleRecord>,
    pub mysql: Vec<(String, String)>,
    /// Per database: the bytes of the mysql-k8s backup stream that replaces it.
    pub mysql_bytes: Vec<(String, u64)>,
    pub mlmd_pod: Option<String>,
    /// The MLMD database the restore writes, and the live one it replaces (kept beside it).
    pub mlmd_bytes: Option<u64>,
    pub mlmd_replaced_bytes: Option<u64>,
    pub mlpipeline_objects: u64,
    pub mlpipeline_bytes: u64,
    /// What the bucket restore will copy and delete, counted against the bucket as it is now.
    pub mlpipeline_changes: Option<mlpipeline::RestorePlan>,
    pub safety_backup: bool,
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct RestoreReport {
    pub backup_id: String,
    pub safety_backup: Option<String>,
    pub mysql: Vec<MysqlRestored>,
    pub mlmd: bool,
    pub mlpipeline: Option<RestoreStats>,
    pub scales: Vec<ScaleRecord>,
    pub warnings: Vec<String>,
}

/// Checks and plans a restore; changes nothing (besides recording the light verification).
pub async fn plan(ctx: &Context, req: &RestoreRequest) -> Result<RestorePlan, RestoreError> {
    Ok(prepare(ctx, req).await?.plan)
}

/// Restores a backup. The error of a failed restore names the safety backup to go back to.
pub async fn run(ctx: &Context, req: &RestoreRequest) -> Result<RestoreReport, RestoreError> {
    let p = &ctx.progress;
    let id = req.backup_id.clone();
    // Recovery first: the scales a dead run left changed are not the ones to restore to.
    let (lock, _) = recover::lock_and_recover(ctx, &format!("restore {id}"))
        .await
        .map_err(|e| RestoreError::Lock(Box::new(e)))?;
    let result = async {
        let mut prep = prepare(ctx, req).await?;
        for w in &prep.plan.warnings {
            p.warn(w.clone());
        }
        run::run_locked(ctx, req, &mut prep).await
    }
    .await;
    if let Err(e) = lock.release().await {
        p.warn(format!("releasing the repository lock: {e}"));
    }
    result
}

/// A private directory for what a restore downloads first (the MLMD database): under
/// `--spool` when given, else the system's temporary directory. Removed when dropped.
fn spool(ctx: &Context) -> Result<tempfile::TempDir, String> {
    let mut b = tempfile::Builder::new();
    b.prefix("backup-agent-restore-");
    match &ctx.tuning.spool {
        Some(dir) => b
            .tempdir_in(dir)
            .map_err(|e| format!("spool directory {}: {e}", dir.display())),
        None => b.tempdir().map_err(|e| {
            format!(
                "cannot create a spool directory in {}: {e}; pass --spool DIR",
                std::env::temp_dir().display()
            )
        }),
    }
}
