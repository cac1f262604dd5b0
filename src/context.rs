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

/// Keys asked for in one listing request (S3 returns at most 1000).
pub const LIST_PAGE: u16 = 1000;
/// Objects a bucket copy may have started ahead of the oldest one not yet finished: the
/// window in which the manifest is put back in key order.
pub const QUEUE_DEPTH: u32 = 4096;
/// Bytes of records an external sort holds in memory before it writes a sorted run to disk
/// (about 200,000 content hashes, or 100,000 listed keys).
pub const SORT_MEMORY: u64 = 16 << 20;
/// Keys deleted in one request (S3's DeleteObjects takes at most 1000).
pub const DELETE_BATCH: u16 = 1000;

/// The sizes of the streamed engine's stages: what bounds memory whatever the bucket holds.
/// Tests set them small so that many pages, sorted runs and batches happen on little data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Streaming {
    pub page_size: usize,
    pub queue_depth: usize,
    pub sort_memory: usize,
    pub delete_batch: usize,
}

impl Default for Streaming {
    fn default() -> Self {
        Streaming {
            page_size: LIST_PAGE.into(),
            queue_depth: QUEUE_DEPTH as usize,
            sort_memory: SORT_MEMORY as usize,
            delete_batch: DELETE_BATCH.into(),
        }
    }
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
    pub streaming: Streaming,
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
        }
    }
}
