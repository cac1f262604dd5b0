//! The run context: the clients and settings every command works with, built by the CLI,
//! the charm and the daemon and passed down. Nothing global.

use std::path::PathBuf;
use std::time::Duration;

use crate::interrupt::Interrupt;
use crate::juju::discovery::{AppNames, MinioAccess};
use crate::juju::scale::ScaleWait;
use crate::juju::JujuCli;
use crate::progress::Progress;
use crate::repository::lock::LeaseTiming;
use crate::storage::Store;

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
    pub minio: Option<MinioAccess>,
    pub progress: Progress,
    pub interrupt: Interrupt,
}

/// MinIO's bucket of Kubeflow Pipelines' artifacts.
pub const MINIO_BUCKET: &str = "mlpipeline";
/// Concurrent lookups while copying the bucket.
pub const CHECKERS: u16 = 8;
/// Concurrent object copies.
pub const TRANSFERS: u16 = 16;
/// How long each mysql-k8s create-backup may take.
pub const ACTION_TIMEOUT: Duration = Duration::from_secs(60 * 60);

pub use crate::repository::packer::{Packing, MAX_UNUSED};
pub use crate::sorted::{Streaming, DELETE_BATCH, LIST_PAGE, QUEUE_DEPTH, SORT_MEMORY};

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
    pub streaming: Streaming,
    /// Which objects a backup packs (repository format v2), and how large packs grow.
    pub packing: Packing,
}

impl Tuning {
    /// `--wait` of each mysql-k8s action, as juju reads it.
    pub fn action_wait_arg(&self) -> String {
        format!("{}s", self.action_wait.as_secs().max(1))
    }

    /// Where sorted runs and key lists go: the spool when one is given, else the system's
    /// temporary directory (each in a directory of its own, removed when done).
    pub fn scratch(&self) -> PathBuf {
        self.spool.clone().unwrap_or_else(std::env::temp_dir)
    }
}

impl Default for Tuning {
    fn default() -> Self {
        Tuning {
            mlmd_container: None,
            minio_endpoint: None,
            minio_bucket: MINIO_BUCKET.into(),
            checkers: CHECKERS.into(),
            transfers: TRANSFERS.into(),
            bwlimit: None,
            spool: None,
            scale_wait: ScaleWait::default(),
            action_wait: ACTION_TIMEOUT,
            lease: LeaseTiming::default(),
            break_lock: false,
            streaming: Streaming::default(),
            packing: Packing::default(),
        }
    }
}
