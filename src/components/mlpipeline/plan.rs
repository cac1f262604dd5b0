//! The merge-join a capture is made of, and the plan counted from it before anything moves.

use futures::{Stream, StreamExt, TryStreamExt};

use super::{PreviousManifest, SyncError, SyncOptions, IN_MEMORY_MAX};
use crate::repository::{self, Entry};
use crate::sorted::{join, Joined};
use crate::storage::{ObjectInfo, Store};

/// What a capture will do, counted from the listing merged with the previous manifest.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SyncPlan {
    pub objects: u64,
    pub bytes: u64,
    /// Objects to read: new, or changed since the previous backup.
    pub to_read: u64,
    pub read_bytes: u64,
    /// The largest object that goes through the spool, for the free-space check.
    pub largest_spooled: u64,
    /// Objects in the previous backup that are gone from the bucket.
    pub gone: u64,
}

/// The same object as the previous backup's: same key, size and ETag (a same-size change has
/// a new ETag). An entry without an ETag changed while it was read: read it again.
pub(super) fn unchanged(o: &ObjectInfo, p: &Entry) -> bool {
    matches!((&o.etag, &p.etag), (Some(a), Some(b)) if a == b && o.size == p.size)
}

/// The bucket's listing merged by key with the previous manifest (if any) from `repo`.
pub(super) fn joined(
    source: &Store,
    repo: &Store,
    previous: Option<&PreviousManifest>,
    opts: &SyncOptions,
) -> impl Stream<Item = Result<Joined<ObjectInfo, Entry>, SyncError>> + Unpin {
    let listing = source
        .sorted_listing("", &opts.streaming, &opts.scratch)
        .map_err(SyncError::List);
    let prev = match previous {
        Some(p) => repository::manifest::read(repo, &p.key, Some(&p.sha256))
            .map_err(SyncError::from)
            .left_stream(),
        None => futures::stream::empty().right_stream(),
    };
    join(listing, prev)
}

/// Whether a pass failed only because the listing turned out not to be in byte order: the
/// store now knows, and the pass is run again on a sorted listing.
pub(super) fn unsorted(e: &SyncError) -> bool {
    matches!(
        e,
        SyncError::List(crate::storage::StoreError::Unsorted { .. })
    )
}

/// Counts what a capture will do: one pass over the listing and the previous manifest (two
/// when the listing turns out not to be in byte order; the second sorts it).
pub async fn plan(
    source: &Store,
    repo: &Store,
    previous: Option<&PreviousManifest>,
    opts: &SyncOptions,
) -> Result<SyncPlan, SyncError> {
    match count(source, repo, previous, opts).await {
        Err(e) if unsorted(&e) => count(source, repo, previous, opts).await,
        other => other,
    }
}

async fn count(
    source: &Store,
    repo: &Store,
    previous: Option<&PreviousManifest>,
    opts: &SyncOptions,
) -> Result<SyncPlan, SyncError> {
    let mut plan = SyncPlan::default();
    let mut all = joined(source, repo, previous, opts);
    while let Some(j) = all.try_next().await? {
        let o = match j {
            Joined::Right(_) => {
                plan.gone += 1;
                continue;
            }
            Joined::Both(o, p) if unchanged(&o, &p) => {
                plan.objects += 1;
                plan.bytes += o.size;
                continue;
            }
            Joined::Both(o, _) | Joined::Left(o) => o,
        };
        plan.objects += 1;
        plan.bytes += o.size;
        plan.to_read += 1;
        plan.read_bytes += o.size;
        // Format v2 streams large objects into packs of their own: no spool.
        if o.size > IN_MEMORY_MAX && !opts.packing.on() {
            plan.largest_spooled = plan.largest_spooled.max(o.size);
        }
    }
    Ok(plan)
}
