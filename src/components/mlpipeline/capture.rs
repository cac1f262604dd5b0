//! The bucket into the repository: small objects through memory within a byte budget, large
//! ones through spool files a few at a time, each content uploaded once.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use futures::{StreamExt, TryStreamExt};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use super::pace::{Limiter, Ticker};
use super::{
    kib_permits, SyncError, SyncOptions, SyncPlan, SyncStats, IN_MEMORY_MAX, LARGE_IN_FLIGHT,
    LARGE_READING, MEMORY_BUDGET,
};
use crate::repository::{self, is_sha256, Entry, Manifest};
use crate::retry::retry;
use crate::storage::{ObjectInfo, Store, StoreError, TapWriter};

/// Streams one large object into a spool file, hashing as it goes.
async fn spool_object(
    source: &Store,
    key: &str,
    spool: &Path,
    n: u64,
) -> Result<(PathBuf, u64, String), SyncError> {
    let path = spool.join(format!("object-{n}.part"));
    let spool_err = |e| SyncError::Spool {
        path: path.clone(),
        source: e,
    };
    let file = tokio::fs::File::create(&path).await.map_err(spool_err)?;
    let mut hasher = Sha256::new();
    let mut w = TapWriter::new(file, |b: &[u8]| hasher.update(b));
    let got = source.get_stream(key, &mut w).await;
    let flushed = w.inner.flush().await;
    drop(w);
    let len = match (got, flushed) {
        (Ok(len), Ok(())) => len,
        (Err(e), _) => {
            let _ = tokio::fs::remove_file(&path).await;
            return Err(SyncError::Object {
                key: key.to_string(),
                source: e,
            });
        }
        (_, Err(e)) => {
            let _ = tokio::fs::remove_file(&path).await;
            return Err(spool_err(e));
        }
    };
    Ok((path, len, hex::encode(hasher.finalize())))
}

/// Copies the bucket into the repository's blobs and returns the new manifest.
pub async fn capture(
    source: &Store,
    dest: &Store,
    previous: Option<&Manifest>,
    opts: &SyncOptions,
) -> Result<(Manifest, SyncStats), SyncError> {
    let listed: Vec<ObjectInfo> = source.list("").await.map_err(SyncError::List)?;
    capture_planned(source, dest, SyncPlan::new(listed, previous), opts).await
}

/// The repository's blobs (hash -> size), listed once so that no upload needs a HEAD first.
async fn known_blobs(dest: &Store) -> Result<HashMap<String, u64>, SyncError> {
    let prefix = repository::blobs_prefix();
    let listed = dest.list(&prefix).await.map_err(SyncError::List)?;
    Ok(listed
        .into_iter()
        .filter_map(|o| {
            let sha = o.key.rsplit('/').next()?;
            is_sha256(sha).then(|| (sha.to_string(), o.size))
        })
        .collect())
}

/// What the transfers of one capture share.
struct Shared<'a> {
    source: &'a Store,
    dest: &'a Store,
    opts: &'a SyncOptions,
    known: std::sync::Mutex<HashMap<String, u64>>,
    /// Blobs being uploaded now: one upload per content, the others wait for it (S3 servers
    /// may fail concurrent PUTs of one key; SeaweedFS answers one of them 404).
    uploading: std::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    memory: tokio::sync::Semaphore,
    large: tokio::sync::Semaphore,
    reading: tokio::sync::Semaphore,
    heads: tokio::sync::Semaphore,
    limiter: Option<Limiter>,
    ticker: Ticker<'a>,
    spooled: AtomicU64,
    read_bytes: AtomicU64,
    new_objects: AtomicU64,
    new_bytes: AtomicU64,
}

impl Shared<'_> {
    fn have(&self, sha: &str, len: u64) -> bool {
        self.known.lock().expect("known blobs").get(sha) == Some(&len)
    }

    /// Uploads a blob through `put` unless the repository has it or gets it meanwhile.
    async fn store_blob<F, Fut>(&self, sha: &str, len: u64, put: F) -> Result<(), SyncError>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<(), SyncError>>,
    {
        if self.have(sha, len) {
            return Ok(());
        }
        let turn = self
            .uploading
            .lock()
            .expect("uploading")
            .entry(sha.to_string())
            .or_default()
            .clone();
        let _turn = turn.lock().await;
        if self.have(sha, len) {
            return Ok(());
        }
        if let Some(l) = &self.limiter {
            l.take(len).await;
        }
        put().await?;
        self.known
            .lock()
            .expect("known blobs")
            .insert(sha.to_string(), len);
        self.uploading.lock().expect("uploading").remove(sha);
        self.new_objects.fetch_add(1, Ordering::Relaxed);
        self.new_bytes.fetch_add(len, Ordering::Relaxed);
        Ok(())
    }

    fn object_err(key: &str) -> impl FnOnce(StoreError) -> SyncError + '_ {
        move |source| SyncError::Object {
            key: key.to_string(),
            source,
        }
    }

    /// A small object: one GET for bytes and headers, one PUT unless the blob is there.
    async fn small(&self, key: String, size: u64) -> Result<Option<Entry>, SyncError> {
        let _room = self
            .memory
            .acquire_many(kib_permits(size))
            .await
            .expect("never closed");
        let got = retry(self.opts.attempts, &key, || self.source.get_with_meta(&key)).await;
        let (data, meta) = match got {
            Ok(got) => got,
            Err(StoreError::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(Self::object_err(&key)(e)),
        };
        let (len, sha) = (data.len() as u64, hex::encode(Sha256::digest(&data)));
        self.read_bytes.fetch_add(len, Ordering::Relaxed);
        self.ticker.add(len);
        let blob = repository::blob_key(&sha);
        self.store_blob(&sha, len, || async {
            retry(self.opts.attempts, &blob, || {
                self.dest
                    .put_bytes(&blob, &data, "application/octet-stream")
            })
            .await
            .map_err(Self::object_err(&blob))
        })
        .await?;
        Ok(Some(Entry {
            key,
            size: len,
            etag: meta.info.etag,
            sha256: sha,
            content_type: meta.content_type,
            metadata: meta.metadata,
        }))
    }

    /// A large object: HEAD for its headers, streamed to the spool while hashed, uploaded in
    /// parts unless the blob is there.
    async fn large(&self, key: String) -> Result<Option<Entry>, SyncError> {
        let _slot = self.large.acquire().await.expect("never closed");
        let meta = {
            let _head = self.heads.acquire().await.expect("never closed");
            retry(self.opts.attempts, &key, || self.source.head_meta(&key)).await
        };
        let meta = match meta {
            Ok(Some(m)) => m,
            Ok(None) | Err(StoreError::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(Self::object_err(&key)(e)),
        };
        let reading = self.reading.acquire().await.expect("never closed");
        let read = retry(self.opts.attempts, &key, || {
            let n = self.spooled.fetch_add(1, Ordering::Relaxed);
            spool_object(self.source, &key, &self.opts.spool, n)
        })
        .await;
        drop(reading);
        let (path, len, sha) = match read {
            Ok(r) => r,
            Err(SyncError::Object {
                source: StoreError::NotFound { .. },
                ..
            }) => return Ok(None),
            Err(e) => return Err(e),
        };
        self.read_bytes.fetch_add(len, Ordering::Relaxed);
        self.ticker.add(len);
        let blob = repository::blob_key(&sha);
        let uploaded = self
            .store_blob(&sha, len, || async {
                retry(self.opts.attempts, &blob, || async {
                    let mut f =
                        tokio::fs::File::open(&path)
                            .await
                            .map_err(|e| StoreError::Fatal {
                                op: "spool",
                                key: blob.clone(),
                                detail: e.to_string(),
                            })?;
                    let ct = "application/octet-stream";
                    let none = Default::default();
                    let ok = async { Ok(()) };
                    self.dest
                        .put_object_verified(&blob, &mut f, Some(len), ct, &none, ok)
                        .await
                })
                .await
                .map_err(Self::object_err(&blob))
            })
            .await;
        let _ = tokio::fs::remove_file(&path).await;
        uploaded?;
        // What was really read is what the manifest records; a size that moved under us
        // means the ETag no longer describes these bytes.
        let etag = if len == meta.info.size {
            meta.info.etag.clone()
        } else {
            None
        };
        Ok(Some(Entry {
            key: meta.info.key,
            size: len,
            etag,
            sha256: sha,
            content_type: meta.content_type,
            metadata: meta.metadata,
        }))
    }
}

/// Carries out a plan made from an earlier listing (the point in time of the backup).
pub async fn capture_planned(
    source: &Store,
    dest: &Store,
    plan: SyncPlan,
    opts: &SyncOptions,
) -> Result<(Manifest, SyncStats), SyncError> {
    let (total_objects, total_bytes) = (plan.to_read.len() as u64, plan.read_bytes());
    let SyncPlan {
        listed,
        unchanged: mut entries,
        to_read,
    } = plan;
    tokio::fs::create_dir_all(&opts.spool)
        .await
        .map_err(|e| SyncError::Spool {
            path: opts.spool.clone(),
            source: e,
        })?;
    let known = if to_read.is_empty() {
        HashMap::new()
    } else {
        known_blobs(dest).await?
    };
    let shared = Shared {
        source,
        dest,
        opts,
        known: std::sync::Mutex::new(known),
        uploading: Default::default(),
        memory: tokio::sync::Semaphore::new((MEMORY_BUDGET >> 10) as usize),
        large: tokio::sync::Semaphore::new(LARGE_IN_FLIGHT),
        reading: tokio::sync::Semaphore::new(LARGE_READING),
        heads: tokio::sync::Semaphore::new(opts.checkers.max(1)),
        limiter: opts.bwlimit.map(|rate| Limiter::new(rate, Instant::now())),
        ticker: Ticker::new(&opts.progress, total_objects, total_bytes),
        spooled: AtomicU64::new(0),
        read_bytes: AtomicU64::new(0),
        new_objects: AtomicU64::new(0),
        new_bytes: AtomicU64::new(0),
    };
    let results: Vec<Option<Entry>> = futures::stream::iter(to_read)
        .map(|o| {
            let shared = &shared;
            async move {
                if o.size <= IN_MEMORY_MAX {
                    shared.small(o.key, o.size).await
                } else {
                    shared.large(o.key).await
                }
            }
        })
        .buffer_unordered(opts.transfers.max(1))
        .try_collect()
        .await?;

    shared.ticker.finish();
    let read: Vec<Entry> = results.into_iter().flatten().collect();
    let read_objects = read.len() as u64;
    entries.extend(read);
    let kept: std::collections::HashSet<&str> = entries.iter().map(|e| e.key.as_str()).collect();
    let vanished: Vec<String> = listed
        .iter()
        .filter(|o| !kept.contains(o.key.as_str()))
        .map(|o| o.key.clone())
        .collect();
    entries.sort_by(|a, b| a.key.cmp(&b.key));
    let manifest = Manifest { entries };
    let stats = SyncStats {
        objects: manifest.entries.len() as u64,
        bytes: manifest.bytes(),
        read_objects,
        read_bytes: shared.read_bytes.into_inner(),
        new_objects: shared.new_objects.into_inner(),
        new_bytes: shared.new_bytes.into_inner(),
        vanished,
    };
    Ok((manifest, stats))
}
