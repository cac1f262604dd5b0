//! The bucket back from the repository: made equal to a manifest, every blob checked against
//! its hash before it replaces anything, deletes last.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use futures::{StreamExt, TryStreamExt};
use serde::Serialize;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use super::pace::{Limiter, Ticker};
use super::{kib_permits, SyncError, SyncOptions, IN_MEMORY_MAX, LARGE_IN_FLIGHT, MEMORY_BUDGET};
use crate::repository::{self, Entry, Manifest};
use crate::retry::retry;
use crate::storage::{ObjectInfo, Store, StoreError, TapWriter};

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

/// Makes `target` equal to `manifest`: copies back from the repository's blobs what is missing
/// or different (bytes, content type, user metadata), checking each blob's content hash on the
/// way, then removes what the backup did not have. Deletes come last, so a restore that fails
/// midway has removed nothing.
pub async fn restore(
    repo: &Store,
    target: &Store,
    manifest: &Manifest,
    opts: &SyncOptions,
) -> Result<RestoreStats, SyncError> {
    let current: HashMap<String, ObjectInfo> = target
        .list("")
        .await
        .map_err(SyncError::List)?
        .into_iter()
        .map(|o| (o.key.clone(), o))
        .collect();
    let (mut unchanged, mut to_copy) = (0u64, vec![]);
    for e in &manifest.entries {
        match current.get(&e.key) {
            Some(o) if o.size == e.size && e.etag.is_some() && o.etag == e.etag => unchanged += 1,
            _ => to_copy.push(e),
        }
    }
    let wanted: std::collections::HashSet<&str> =
        manifest.entries.iter().map(|e| e.key.as_str()).collect();
    let mut extra: Vec<&String> = current
        .keys()
        .filter(|k| !wanted.contains(k.as_str()))
        .collect();
    extra.sort();
    let limiter = opts.bwlimit.map(|rate| Limiter::new(rate, Instant::now()));
    let total_bytes = to_copy.iter().map(|e| e.size).sum();
    let ticker = Ticker::new(&opts.progress, to_copy.len() as u64, total_bytes);
    let copied_bytes = AtomicU64::new(0);
    let memory = tokio::sync::Semaphore::new((MEMORY_BUDGET >> 10) as usize);
    let large = tokio::sync::Semaphore::new(LARGE_IN_FLIGHT);
    let copies: Vec<u64> = futures::stream::iter(to_copy)
        .map(|e| {
            let (limiter, ticker, copied_bytes) = (&limiter, &ticker, &copied_bytes);
            let (memory, large) = (&memory, &large);
            async move {
                if e.size <= IN_MEMORY_MAX {
                    let _room = memory
                        .acquire_many(kib_permits(e.size))
                        .await
                        .expect("never closed");
                    if let Some(l) = limiter {
                        l.take(e.size).await;
                    }
                    retry(opts.attempts, &e.key, || copy_small(repo, target, e)).await?;
                } else {
                    let _slot = large.acquire().await.expect("never closed");
                    if let Some(l) = limiter {
                        l.take(e.size).await;
                    }
                    retry(opts.attempts, &e.key, || copy_back(repo, target, e)).await?;
                }
                copied_bytes.fetch_add(e.size, Ordering::Relaxed);
                ticker.add(e.size);
                Ok::<u64, SyncError>(1)
            }
        })
        .buffer_unordered(opts.transfers.max(1))
        .try_collect()
        .await?;
    ticker.finish();
    for key in &extra {
        retry(opts.attempts, key, || target.delete(key))
            .await
            .map_err(|source| SyncError::Object {
                key: key.to_string(),
                source,
            })?;
    }
    Ok(RestoreStats {
        unchanged,
        copied: copies.len() as u64,
        copied_bytes: copied_bytes.into_inner(),
        deleted: extra.len() as u64,
    })
}

/// A blob whose bytes do not hash to its name (or have the wrong length): never written back.
fn corrupt(e: &Entry, detail: String) -> SyncError {
    SyncError::Object {
        key: repository::blob_key(&e.sha256),
        source: StoreError::Fatal {
            op: "restore",
            key: e.key.clone(),
            detail: format!("{detail}: it is corrupted (run verify-backup --read-data)"),
        },
    }
}

/// A small object: its blob into memory, checked, then one PUT.
async fn copy_small(repo: &Store, target: &Store, e: &Entry) -> Result<(), SyncError> {
    let blob = repository::blob_key(&e.sha256);
    let data = repo
        .get_bytes(&blob)
        .await
        .map_err(|source| SyncError::Object {
            key: blob.clone(),
            source,
        })?;
    let sha = hex::encode(Sha256::digest(&data));
    if sha != e.sha256 || data.len() as u64 != e.size {
        return Err(corrupt(
            e,
            format!("the blob holds {} bytes hashing to {sha}", data.len()),
        ));
    }
    let mut r = &data[..];
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

/// A large object from its blob back to the bucket, streamed through a bounded pipe; the
/// upload completes only once the whole blob has hashed to its name, so a corrupted blob never
/// replaces the object.
async fn copy_back(repo: &Store, target: &Store, e: &Entry) -> Result<(), SyncError> {
    let blob = repository::blob_key(&e.sha256);
    let (w, r) = tokio::io::duplex(1 << 20);
    let (tx, rx) = tokio::sync::oneshot::channel::<Result<(), String>>();
    let get = async {
        let mut h = Sha256::new();
        let mut w = TapWriter::new(w, |b: &[u8]| h.update(b));
        let n = repo.get_stream(&blob, &mut w).await;
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
