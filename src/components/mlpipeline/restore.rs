//! The bucket back from the repository: made equal to a manifest, every blob checked against
//! its hash before it replaces anything, deletes last.
//!
//! The manifest and the target bucket's listing are merged by key: an object equal to the
//! backup's is left alone, one missing or different is copied back, one the backup did not
//! have is set aside in a key list on disk and deleted (in batches) once every copy is done.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use futures::{StreamExt, TryStreamExt};
use serde::Serialize;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use super::pace::{Limiter, Ticker};
use super::packed::{by_pack, checked, itself, read_group, Grouping};
use super::{kib_permits, SyncError, SyncOptions, IN_MEMORY_MAX, LARGE_IN_FLIGHT, MEMORY_BUDGET};
use crate::repository::{self, Entry, MlpipelineCapture, Stored};
use crate::retry::retry;
use crate::sorted::{join, Joined, KeyLog};
use crate::storage::{Deleter, ObjectInfo, Store, StoreError, TapWriter};

/// What a restore of the bucket did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct RestoreStats {
    /// Objects already equal to the backup's (same key, size and ETag): left alone.
    pub unchanged: u64,
    pub copied: u64,
    pub copied_bytes: u64,
    /// Objects the backup did not have, removed after everything else was copied.
    pub deleted: u64,
}

/// What a restore of the bucket will do, counted by the same merge without changing anything.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct RestorePlan {
    pub unchanged: u64,
    pub to_copy: u64,
    pub to_copy_bytes: u64,
    pub to_delete: u64,
    pub to_delete_bytes: u64,
}

/// Left alone by a restore: same size and the ETag recorded when it was read.
fn same(e: &Entry, o: &ObjectInfo) -> bool {
    o.size == e.size && e.etag.is_some() && o.etag == e.etag
}

/// The manifest merged with the target's listing.
fn merged(
    repo: &Store,
    target: &Store,
    cap: &MlpipelineCapture,
    opts: &SyncOptions,
) -> impl futures::Stream<Item = Result<Joined<Entry, ObjectInfo>, SyncError>> + Unpin {
    let manifest = repository::manifest::read(repo, &cap.manifest_key, Some(&cap.manifest_sha256))
        .map_err(SyncError::from);
    let listing = target
        .sorted_listing("", &opts.streaming, &opts.scratch)
        .map_err(SyncError::List);
    join(manifest, listing)
}

/// Counts what [`restore`] would copy and delete (a second pass when the target's listing
/// turns out not to be in byte order).
pub async fn restore_plan(
    repo: &Store,
    target: &Store,
    cap: &MlpipelineCapture,
    opts: &SyncOptions,
) -> Result<RestorePlan, SyncError> {
    match count(repo, target, cap, opts).await {
        Err(e) if super::plan::unsorted(&e) => count(repo, target, cap, opts).await,
        other => other,
    }
}

async fn count(
    repo: &Store,
    target: &Store,
    cap: &MlpipelineCapture,
    opts: &SyncOptions,
) -> Result<RestorePlan, SyncError> {
    let mut plan = RestorePlan::default();
    let mut all = merged(repo, target, cap, opts);
    while let Some(j) = all.try_next().await? {
        match j {
            Joined::Both(e, o) if same(&e, &o) => plan.unchanged += 1,
            Joined::Both(e, _) | Joined::Left(e) => {
                plan.to_copy += 1;
                plan.to_copy_bytes += e.size;
            }
            Joined::Right(o) => {
                plan.to_delete += 1;
                plan.to_delete_bytes += o.size;
            }
        }
    }
    Ok(plan)
}

fn scratch_err(opts: &SyncOptions) -> impl Fn(std::io::Error) -> SyncError + '_ {
    move |source| SyncError::Spool {
        path: opts.scratch.clone(),
        source,
    }
}

/// Makes `target` equal to the backup's manifest: copies back from the repository's blobs
/// what is missing or different (bytes, content type, user metadata), checking each blob's
/// content hash on the way, then removes what the backup did not have. Deletes come last, so
/// a restore that fails midway has removed nothing. `totals` (from [`restore_plan`]) feeds
/// progress.
pub async fn restore(
    repo: &Store,
    target: &Store,
    cap: &MlpipelineCapture,
    totals: Option<&RestorePlan>,
    opts: &SyncOptions,
) -> Result<RestoreStats, SyncError> {
    // Copies cannot be taken back: the listing's order is settled before the first one.
    target.settle_order();
    let mut extras = KeyLog::new(&opts.scratch).map_err(scratch_err(opts))?;
    let unchanged = AtomicU64::new(0);
    let ticker = Ticker::new(&opts.progress, totals.map(|t| (t.to_copy, t.to_copy_bytes)));
    let copier = Copier::new(repo, target, opts);
    let to_copy = merged(repo, target, cap, opts).try_filter_map(|j| {
        let r = match j {
            Joined::Both(e, o) if same(&e, &o) => {
                unchanged.fetch_add(1, Ordering::Relaxed);
                Ok(None)
            }
            Joined::Both(e, _) | Joined::Left(e) => Ok(Some(e)),
            Joined::Right(o) => extras
                .push(&o.key, o.size)
                .map(|()| None)
                .map_err(scratch_err(opts)),
        };
        futures::future::ready(r)
    });
    let copied_bytes = AtomicU64::new(0);
    let copied: u64 = by_pack(to_copy, copier.grouping, itself)
        .map_ok(|group| {
            let (copier, ticker, copied_bytes) = (&copier, &ticker, &copied_bytes);
            async move {
                let n = group.len() as u64;
                let bytes = copier.copy(&group).await?;
                copied_bytes.fetch_add(bytes, Ordering::Relaxed);
                ticker.add_objects(n, bytes);
                Ok::<u64, SyncError>(n)
            }
        })
        .try_buffer_unordered(opts.transfers.max(1))
        .try_fold(0u64, |n, done| futures::future::ready(Ok(n + done)))
        .await?;
    ticker.finish();
    extras.seal().map_err(scratch_err(opts))?;
    let mut deleter = Deleter::new(target, opts.streaming.delete_batch);
    let mut keys = extras.read().map_err(scratch_err(opts))?;
    while let Some((key, _)) = keys.try_next().await.map_err(scratch_err(opts))? {
        deleter.push(key).await?;
    }
    let deleted = deleter.finish().await?;
    Ok(RestoreStats {
        unchanged: unchanged.into_inner(),
        copied,
        copied_bytes: copied_bytes.into_inner(),
        deleted,
    })
}

/// Copies groups of manifest entries (as [`by_pack`] makes them) from the repository into a
/// bucket, every blob checked against its hash before it is written: shared by the restore
/// and the restore drill, with one bandwidth limit and one memory budget for all groups.
pub(super) struct Copier<'a> {
    repo: &'a Store,
    target: &'a Store,
    opts: &'a SyncOptions,
    pub(super) grouping: Grouping,
    limiter: Option<Limiter>,
    memory: tokio::sync::Semaphore,
    large: tokio::sync::Semaphore,
    puts: tokio::sync::Semaphore,
}

impl<'a> Copier<'a> {
    pub(super) fn new(repo: &'a Store, target: &'a Store, opts: &'a SyncOptions) -> Self {
        Copier {
            repo,
            target,
            opts,
            grouping: Grouping::default(),
            limiter: opts.bwlimit.map(|rate| Limiter::new(rate, Instant::now())),
            memory: tokio::sync::Semaphore::new((MEMORY_BUDGET >> 10) as usize),
            large: tokio::sync::Semaphore::new(LARGE_IN_FLIGHT),
            puts: tokio::sync::Semaphore::new(opts.transfers.max(1)),
        }
    }

    /// Waits its turn under the bandwidth limit for `bytes`.
    pub(super) async fn pace(&self, bytes: u64) {
        if let Some(l) = &self.limiter {
            l.take(bytes).await;
        }
    }

    /// Copies one group; the bytes written.
    pub(super) async fn copy(&self, group: &[Entry]) -> Result<u64, SyncError> {
        let (repo, target, opts) = (self.repo, self.target, self.opts);
        let bytes: u64 = group.iter().map(|e| e.size).sum();
        match group {
            [e] if e.size > IN_MEMORY_MAX => {
                let _slot = self.large.acquire().await.expect("never closed");
                self.pace(e.size).await;
                retry(opts.attempts, &e.key, || copy_back(repo, target, e)).await?;
            }
            [e] if !matches!(e.stored(), Stored::Packed { .. }) => {
                let _room = self
                    .memory
                    .acquire_many(kib_permits(e.size))
                    .await
                    .expect("never closed");
                self.pace(e.size).await;
                retry(opts.attempts, &e.key, || copy_small(repo, target, e)).await?;
            }
            _ => {
                let _room = self
                    .memory
                    .acquire_many(kib_permits(bytes))
                    .await
                    .expect("never closed");
                self.pace(bytes).await;
                copy_group(repo, target, group, self.grouping, &self.puts, opts).await?;
            }
        }
        Ok(bytes)
    }
}

/// Stored bytes that do not hash to the entry's content hash (or have the wrong length): never
/// written back.
fn corrupt(e: &Entry, detail: String) -> SyncError {
    SyncError::Object {
        key: e.stored_key().unwrap_or_else(|| e.key.clone()),
        source: StoreError::Fatal {
            op: "restore",
            key: e.key.clone(),
            detail: format!("{detail}: it is corrupted (run verify-backup --read-data)"),
        },
    }
}

/// Writes one object from bytes already checked against its hash.
async fn put_small(target: &Store, e: &Entry, data: &[u8]) -> Result<(), SyncError> {
    let mut r = data;
    target
        .put_object_verified(
            &e.key,
            &mut r,
            Some(e.size),
            &e.content_type,
            &e.metadata,
            async { Ok(()) },
        )
        .await
        .map_err(|source| SyncError::Object {
            key: e.key.clone(),
            source,
        })
}

/// A small object: its blob into memory, checked, then one PUT (an empty object is written
/// from nothing).
async fn copy_small(repo: &Store, target: &Store, e: &Entry) -> Result<(), SyncError> {
    let Stored::Blob(sha) = e.stored() else {
        return put_small(target, e, &[]).await;
    };
    let blob = repository::blob_key(sha);
    let data = repo
        .get_bytes(&blob)
        .await
        .map_err(|source| SyncError::Object {
            key: blob.clone(),
            source,
        })?;
    checked(e, &data).map_err(|why| corrupt(e, why))?;
    put_small(target, e, &data).await
}

/// Objects whose bytes share a pack: the pack's ranges in a few GETs, each object checked
/// against its hash, then written (`puts` bounds the writes across all groups). Each write is
/// retried on its own; the reads are retried inside [`read_group`].
async fn copy_group(
    repo: &Store,
    target: &Store,
    group: &[Entry],
    g: Grouping,
    puts: &tokio::sync::Semaphore,
    opts: &SyncOptions,
) -> Result<(), SyncError> {
    let pack_key = group[0].stored_key().unwrap_or_default();
    let data = read_group(repo, group, itself, g, opts.attempts)
        .await
        .map_err(|source| SyncError::Object {
            key: pack_key,
            source,
        })?;
    for (e, bytes) in group.iter().zip(&data) {
        checked(e, bytes).map_err(|why| corrupt(e, why))?;
    }
    futures::stream::iter(group.iter().zip(&data))
        .map(|(e, bytes)| async move {
            let _put = puts.acquire().await.expect("never closed");
            retry(opts.attempts, &e.key, || put_small(target, e, bytes)).await
        })
        .buffer_unordered(group.len().max(1))
        .try_collect::<Vec<()>>()
        .await
        .map(|_| ())
}

/// A large object from its blob (or its range of a pack) back to the bucket, streamed through
/// a bounded pipe; the upload completes only once the whole blob has hashed to its name, so a
/// corrupted blob never replaces the object.
async fn copy_back(repo: &Store, target: &Store, e: &Entry) -> Result<(), SyncError> {
    let blob = e.stored_object().unwrap_or_default();
    let range = match e.stored() {
        Stored::Packed { offset, .. } => Some((offset, offset + e.size)),
        _ => None,
    };
    let (w, r) = tokio::io::duplex(1 << 20);
    let (tx, rx) = tokio::sync::oneshot::channel::<Result<(), String>>();
    let get = async {
        let mut h = Sha256::new();
        let mut w = TapWriter::new(w, |b: &[u8]| h.update(b));
        let n = match range {
            Some((start, end)) => repo.get_range_stream(&blob, start, end, &mut w).await,
            None => repo.get_stream(&blob, &mut w).await,
        };
        let _ = w.inner.shutdown().await;
        drop(w);
        let sha = hex::encode(h.finalize());
        let verdict = match &n {
            Ok(len) if *len == e.size && sha == e.sha256 => Ok(()),
            Ok(len) => Err(format!("the blob holds {len} bytes hashing to {sha}")),
            Err(err) => Err(format!("reading it failed: {err}")),
        };
        let _ = tx.send(verdict.clone());
        (n, verdict)
    };
    let put = async {
        let mut r = r;
        let verdict = async {
            match rx.await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(why)) => Err(StoreError::Fatal {
                    op: "restore",
                    key: e.key.clone(),
                    detail: format!("not written: {blob}: {why}"),
                }),
                Err(_) => Err(StoreError::Fatal {
                    op: "restore",
                    key: e.key.clone(),
                    detail: "the blob reader stopped".into(),
                }),
            }
        };
        target
            .put_object_verified(
                &e.key,
                &mut r,
                Some(e.size),
                &e.content_type,
                &e.metadata,
                verdict,
            )
            .await
    };
    let ((got, verdict), put) = tokio::join!(get, put);
    got.map_err(|source| SyncError::Object {
        key: blob.clone(),
        source,
    })?;
    if let Err(why) = verdict {
        return Err(corrupt(e, why));
    }
    put.map_err(|source| SyncError::Object {
        key: e.key.clone(),
        source,
    })
}
