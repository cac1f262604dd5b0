//! The `mlpipeline` bucket, copied into content-addressed blobs plus a per-backup manifest.
//!
//! Point in time: each backup's manifest names the blobs it needs, so an old backup keeps its
//! artifacts after they change or go. Incremental: an object whose key, size and ETag match the
//! previous backup's manifest is not read again, and a blob already stored is not uploaded
//! again. A same-size change has a new ETag, so it is caught (the manual procedure's
//! `--size-only` misses it).
//!
//! Fast where the time goes: a small object costs one GET (bytes and headers together) and one
//! conditional PUT (`If-None-Match: *`: a blob the repository already has is refused, not
//! written twice), with no HEAD and no listing of the repository's blobs.
//!
//! Memory stays flat in the number of objects: the listing and the previous manifest are
//! streams merged by key ([`crate::sorted::join`]), the new manifest is written as the copy
//! proceeds, and the bytes in flight are bounded: small objects in memory within a byte budget,
//! large ones streamed through a spool file a few at a time, uploaded in parts from a fixed
//! budget.

pub mod allocator;
mod capture;
mod drill;
mod known;
mod pace;
pub mod packed;
mod plan;
mod restore;
mod verify;

use std::path::PathBuf;

use serde::Serialize;

pub use capture::{capture, Captured};
pub use drill::{drill, drill_plan, BucketDrill, Pick};
pub use pace::{Limiter, Ticker};
pub use plan::{plan, SyncPlan};
pub use restore::{restore, restore_plan, RestorePlan, RestoreStats};

use crate::context::{Packing, Streaming};
use crate::progress::Progress;
use crate::retry::Retryable;
use crate::storage::StoreError;

/// Objects up to this size are read into memory; larger ones go through a spool file.
pub const IN_MEMORY_MAX: u64 = 8 << 20;
/// Bytes of small objects in memory at once, across all transfers.
const MEMORY_BUDGET: u64 = 32 << 20;
/// Large objects spooled at once (each needs spool space the size of the object), of which
/// [`LARGE_READING`] are being read while the others upload: reading the next while uploading
/// the last keeps both the source and the destination busy.
pub const LARGE_IN_FLIGHT: usize = 4;
const LARGE_READING: usize = 2;

/// Room in the memory budget for one object, in KiB permits.
fn kib_permits(size: u64) -> u32 {
    size.div_ceil(1024).clamp(1, MEMORY_BUDGET >> 10) as u32
}

#[derive(Debug, Clone)]
pub struct SyncOptions {
    /// Concurrent metadata lookups (HEADs of large objects before they stream).
    pub checkers: usize,
    /// Concurrent object reads and uploads.
    pub transfers: usize,
    /// Upload bandwidth limit, bytes per second.
    pub bwlimit: Option<u64>,
    /// Attempts per object on transient errors.
    pub attempts: u32,
    pub spool: PathBuf,
    /// Where sorted runs and key lists go.
    pub scratch: PathBuf,
    pub streaming: Streaming,
    /// Which objects go into packs (format v2); [`Packing::off`] writes format v1.
    pub packing: Packing,
    pub progress: Progress,
}

/// The previous backup's manifest, which a capture merges with the listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreviousManifest {
    pub backup_id: String,
    pub key: String,
    pub sha256: String,
}

impl SyncOptions {
    pub fn new(spool: impl Into<PathBuf>) -> Self {
        SyncOptions {
            checkers: crate::context::CHECKERS.into(),
            transfers: crate::context::TRANSFERS.into(),
            bwlimit: None,
            attempts: crate::retry::ATTEMPTS,
            spool: spool.into(),
            scratch: std::env::temp_dir(),
            streaming: Streaming::default(),
            packing: Packing::default(),
            progress: Progress::none(),
        }
    }

    /// A run's copy settings: its knobs and its progress.
    pub fn for_run(ctx: &crate::context::Context, spool: impl Into<PathBuf>) -> Self {
        SyncOptions {
            checkers: ctx.tuning.checkers,
            transfers: ctx.tuning.transfers,
            bwlimit: ctx.tuning.bwlimit,
            progress: ctx.progress.clone(),
            scratch: ctx.tuning.scratch(),
            streaming: ctx.tuning.streaming,
            packing: ctx.tuning.packing,
            ..SyncOptions::new(spool)
        }
    }
}

/// What a capture did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct SyncStats {
    pub objects: u64,
    pub bytes: u64,
    /// Objects read from the source (new or changed since the previous backup).
    pub read_objects: u64,
    pub read_bytes: u64,
    /// Blobs uploaded (content the repository did not have).
    pub new_objects: u64,
    pub new_bytes: u64,
    /// Pack files written (format v2), and their bytes.
    pub packs: u64,
    pub pack_bytes: u64,
    /// Objects listed but gone when read (deleted meanwhile): not in the manifest.
    pub vanished_objects: u64,
    /// The first [`VANISHED_SHOWN`] of them, to name in warnings.
    pub vanished: Vec<String>,
}

/// Vanished keys named in a capture's result; the rest are counted.
pub const VANISHED_SHOWN: usize = 100;

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("mlpipeline: listing the source bucket: {0}")]
    List(StoreError),
    #[error("mlpipeline: the manifest: {0}")]
    Manifest(#[from] crate::repository::ManifestError),
    #[error("mlpipeline: deleting: {0}")]
    Delete(#[from] crate::storage::DeleteFailure),
    #[error("mlpipeline: {key}: {source}")]
    Object { key: String, source: StoreError },
    #[error("mlpipeline: local spool {path}: {source}")]
    Spool {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl Retryable for SyncError {
    fn is_retryable(&self) -> bool {
        matches!(self, SyncError::Object { source, .. } if source.is_retryable())
    }
}

/// The mlpipeline bucket as a [`Part`](crate::components::Part).
pub struct Mlpipeline;

#[async_trait::async_trait(?Send)]
impl crate::components::Part for Mlpipeline {
    fn held(&self, sf: &crate::repository::Statefile) -> bool {
        sf.components.mlpipeline.is_some()
    }

    async fn check(
        &self,
        cx: &crate::components::check::CheckContext<'_>,
        sf: &crate::repository::Statefile,
        v: &mut crate::components::check::Verification,
    ) {
        verify::check(cx, sf, v).await
    }
}
