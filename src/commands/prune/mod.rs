//! Forgetting backups: `prune` (a retention policy) and `delete-backup` (one backup), with the
//! same rules for what else goes.
//!
//! Deletes are ordered so that a prune killed at any point leaves every kept backup whole: a
//! forgotten backup's mysql-k8s backups go first (its record still names them, so a re-run
//! finishes the job), then its statefile (from then on it is not listed), then its other
//! objects, then objects of backups that no longer have a statefile, then the blobs and packs
//! that no kept backup's manifest names, and last the repack of packs mostly unused
//! (`repack.rs`: new packs, then new manifests, then the old packs). Nothing a kept backup references is ever in a delete list,
//! and the plan is made under the repository lock, so no run can add references meanwhile.

mod apply;
mod plan;
mod render;
mod repack;

use serde::Serialize;

pub use apply::apply;
pub use plan::plan;
pub use render::{render_plan, render_report};

use crate::commands::recover::{self, RecoveryError};
use crate::context::Context;
use crate::repository::retention::{Decision, Policy};
use crate::repository::{self, CatalogError, MysqlCapture};
use crate::storage::StoreError;

/// What to forget.
#[derive(Debug, Clone)]
pub enum Selection {
    /// Whatever the policy does not keep.
    Policy(Policy),
    /// One backup, by id (`delete-backup`).
    One(String),
}

impl Selection {
    fn operation(&self) -> String {
        match self {
            Selection::Policy(_) => "prune".into(),
            Selection::One(id) => format!("delete-backup {id}"),
        }
    }
}

/// One backup to forget.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct Forget {
    pub id: String,
    pub phase: String,
    pub label: String,
    pub started_at: chrono::DateTime<chrono::Utc>,
    /// Its own objects (statefile, manifest, MLMD dump) and their bytes.
    pub objects: usize,
    pub bytes: u64,
    /// mysql-k8s backups only it names.
    pub mysql: Vec<MysqlCapture>,
    #[serde(skip)]
    pub(super) keys: Vec<String>,
}

/// Objects of a backup directory without a statefile, and the mysql-k8s backups its
/// tombstone says are still to delete.
#[derive(Debug, Clone)]
pub(super) struct Leftover {
    pub(super) id: String,
    pub(super) keys: Vec<(String, u64)>,
    pub(super) mysql: Vec<MysqlCapture>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct PrunePlan {
    /// `keep-daily=7,...` or `delete-backup ID`.
    pub selection: String,
    /// Every backup, newest first, with why it is kept.
    pub decisions: Vec<Decision>,
    pub forget: Vec<Forget>,
    /// Objects under `backups/<id>/` with no statefile beside them: what an interrupted
    /// forget or a run killed before its first record left.
    pub leftover_objects: usize,
    pub leftover_bytes: u64,
    /// Blobs no kept backup names.
    pub blobs: usize,
    pub blob_bytes: u64,
    /// Packs (format v2) in which no kept backup references any blob.
    pub packs: usize,
    pub pack_bytes: u64,
    /// Packs still referenced but mostly unused (past `--max-unused`), to repack: their
    /// bytes, and the referenced bytes copied into new packs before they go.
    pub repack_packs: usize,
    pub repack_pack_bytes: u64,
    pub repack_copy_bytes: u64,
    pub bytes_freed: u64,
    pub warnings: Vec<String>,
    #[serde(skip)]
    pub(super) leftovers: Vec<Leftover>,
    /// The unused blobs' keys, on disk.
    #[serde(skip)]
    pub(super) garbage: Option<std::sync::Arc<crate::sorted::KeyLog>>,
    #[serde(skip)]
    pub(super) repack: Option<std::sync::Arc<repack::RepackPlan>>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct PruneReport {
    pub plan: PrunePlan,
    /// The ids actually forgotten.
    pub forgotten: Vec<String>,
    pub objects_deleted: u64,
    pub bytes_freed: u64,
    pub mysql_deleted: Vec<String>,
    pub recovered: recover::Recovered,
    pub warnings: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum PruneError {
    #[error("no retention policy was given, so prune would forget nothing: give at least one of --keep-last, --keep-daily, --keep-weekly, --keep-monthly, --keep-within (or the charm's `retention` config)")]
    NoPolicy,
    #[error("{0}")]
    Catalog(#[from] CatalogError),
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("{0}. What was deleted is consistent: every kept backup is whole, and running prune again finishes the job")]
    Delete(crate::storage::DeleteFailure),
    #[error("{0}")]
    Lock(Box<RecoveryError>),
    #[error("backup {id} is {phase}: its run has not ended. If that run is gone, `backup-agent recover` marks it failed")]
    Running { id: String, phase: String },
    #[error("{what} stopped: {reason}. What was deleted is consistent: every kept backup is whole, and running it again finishes the job")]
    Interrupted { what: String, reason: String },
}

pub(super) fn dir_of(key: &str) -> Option<&str> {
    let rest = key.strip_prefix(&repository::backups_prefix())?;
    rest.split_once('/').map(|(id, _)| id)
}

/// Plans under the lock (after repairing what dead runs left) and deletes.
pub async fn run(ctx: &Context, selection: &Selection) -> Result<PruneReport, PruneError> {
    let (lock, recovered) = recover::lock_and_recover(ctx, &selection.operation())
        .await
        .map_err(|e| PruneError::Lock(Box::new(e)))?;
    let result = async {
        let plan = plan(ctx, selection).await?;
        apply(ctx, plan, recovered, &lock).await
    }
    .await;
    if let Err(e) = lock.release().await {
        ctx.progress
            .warn(format!("releasing the repository lock: {e}"));
    }
    result
}
