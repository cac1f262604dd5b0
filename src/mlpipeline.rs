//! The `mlpipeline` bucket, copied into content-addressed blobs plus a per-backup manifest.
//!
//! Point in time: each backup's manifest names the blobs it needs, so an old backup keeps its
//! artifacts after they change or go. Incremental: an object whose key, size and ETag match the
//! previous backup's manifest is not read again, and a blob already stored is not uploaded
//! again. A same-size change has a new ETag, so it is caught (the manual procedure's
//! `--size-only` misses it).
//!
//! Fast where the time goes: a small object costs one GET (bytes and headers together) and one
//! PUT, with no HEAD on either side, because the repository's blobs are listed once up front.
//! Memory stays bounded whatever the data: small objects in memory within a byte budget, large
//! ones streamed through a spool file a few at a time, uploaded in parts from a fixed budget.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use crate::catalog;
use crate::progress::{Event, Progress};
use crate::retry::{retry, Retryable};
use crate::store::{ObjectInfo, Store, StoreError, TapWriter};

/// Objects up to this size are read into memory; larger ones go through a spool file.
const IN_MEMORY_MAX: u64 = 8 << 20;
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

/// One object of the bucket as a backup holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Entry {
    pub key: String,
    pub size: u64,
    /// The source's ETag when the object was read; `None` when it changed while being read, so
    /// the next backup reads it again.
    pub etag: Option<String>,
    pub sha256: String,
    pub content_type: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
}

/// The objects of one backup, sorted by key.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Manifest {
    pub entries: Vec<Entry>,
}

impl Manifest {
    /// zstd-compressed JSON lines: streams well and diffs well.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut text = Vec::new();
        for e in &self.entries {
            serde_json::to_writer(&mut text, e).expect("entry serializes");
            text.push(b'\n');
        }
        zstd::encode_all(&text[..], 3).expect("in-memory zstd")
    }

    pub fn parse(key: &str, bytes: &[u8]) -> Result<Manifest, String> {
        let text = zstd::decode_all(bytes).map_err(|e| format!("{key}: not a zstd stream: {e}"))?;
        let mut entries = vec![];
        for (i, line) in text
            .split(|b| *b == b'\n')
            .enumerate()
            .filter(|(_, l)| !l.is_empty())
        {
            let e: Entry =
                serde_json::from_slice(line).map_err(|e| format!("{key}: line {}: {e}", i + 1))?;
            catalog_key_check(&e.key).map_err(|why| format!("{key}: line {}: {why}", i + 1))?;
            if !is_sha256(&e.sha256) {
                return Err(format!(
                    "{key}: line {}: sha256 {:?} is not 64 lowercase hex digits",
                    i + 1,
                    e.sha256
                ));
            }
            entries.push(e);
        }
        Ok(Manifest { entries })
    }

    pub fn bytes(&self) -> u64 {
        self.entries.iter().map(|e| e.size).sum()
    }

    fn by_key(&self) -> HashMap<&str, &Entry> {
        self.entries.iter().map(|e| (e.key.as_str(), e)).collect()
    }
}

/// Hashes become object keys (`blobs/ab/ab...`): only the exact shape may pass.
pub fn is_sha256(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn catalog_key_check(key: &str) -> Result<(), String> {
    crate::store::check_key(key).map_err(|e| e.to_string())
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
    pub progress: Progress,
}

impl SyncOptions {
    pub fn new(spool: impl Into<PathBuf>) -> Self {
        SyncOptions {
            checkers: 8,
            transfers: 16,
            bwlimit: None,
            attempts: crate::retry::ATTEMPTS,
            spool: spool.into(),
            progress: Progress::none(),
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
    /// Objects listed but gone when read (deleted meanwhile): not in the manifest.
    pub vanished: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("mlpipeline: listing the source bucket: {0}")]
    List(StoreError),
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

/// A shared token bucket: uploads wait so the average stays under the rate.
struct Limiter {
    rate: f64,
    next_free: tokio::sync::Mutex<Instant>,
}

impl Limiter {
    fn new(rate: u64, now: Instant) -> Self {
        Limiter {
            rate: rate.max(1) as f64,
            next_free: tokio::sync::Mutex::new(now),
        }
    }

    /// When a transfer of `bytes` may start, booking the line after it.
    fn reserve(next_free: &mut Instant, rate: f64, bytes: u64, now: Instant) -> Instant {
        let start = (*next_free).max(now);
        *next_free = start + Duration::from_secs_f64(bytes as f64 / rate);
        start
    }

    async fn take(&self, bytes: u64) {
        let start = {
            let mut next = self.next_free.lock().await;
            Self::reserve(&mut next, self.rate, bytes, Instant::now())
        };
        tokio::time::sleep_until(start.into()).await;
    }
}

/// Transfer events, at most a few a second however many objects move.
struct Ticker<'a> {
    progress: &'a Progress,
    total_objects: u64,
    total_bytes: u64,
    done: std::sync::Mutex<(u64, u64, Instant)>,
}

impl<'a> Ticker<'a> {
    const EVERY: Duration = Duration::from_millis(500);

    fn new(progress: &'a Progress, total_objects: u64, total_bytes: u64) -> Self {
        Ticker {
            progress,
            total_objects,
            total_bytes,
            done: std::sync::Mutex::new((0, 0, Instant::now())),
        }
    }

    fn add(&self, bytes: u64) {
        let due = {
            let mut d = self.done.lock().expect("ticker");
            d.0 += 1;
            d.1 += bytes;
            let due = d.2.elapsed() >= Self::EVERY;
            if due {
                d.2 = Instant::now();
            }
            due.then_some((d.0, d.1))
        };
        if let Some((objects, bytes)) = due {
            self.emit(objects, bytes);
        }
    }

    fn emit(&self, objects: u64, bytes: u64) {
        self.progress.emit(Event::Transfer {
            component: "mlpipeline".into(),
            done_bytes: bytes,
            total_bytes: Some(self.total_bytes),
            done_objects: objects,
            total_objects: Some(self.total_objects),
        });
    }

    fn finish(&self) {
        let (objects, bytes, _) = *self.done.lock().expect("ticker");
        if self.total_objects > 0 {
            self.emit(objects, bytes);
        }
    }
}

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

/// What a capture will do: the objects it keeps from the previous backup without reading
/// them (same key, size and ETag), and those it reads.
#[derive(Debug, Clone, Default)]
pub struct SyncPlan {
    pub listed: Vec<ObjectInfo>,
    pub unchanged: Vec<Entry>,
    pub to_read: Vec<ObjectInfo>,
}

impl SyncPlan {
    pub fn new(listed: Vec<ObjectInfo>, previous: Option<&Manifest>) -> SyncPlan {
        let prev = previous.map(Manifest::by_key).unwrap_or_default();
        let (mut unchanged, mut to_read) = (vec![], vec![]);
        for o in &listed {
            match (prev.get(o.key.as_str()), &o.etag) {
                (Some(p), Some(etag))
                    if p.size == o.size && p.etag.as_deref() == Some(etag.as_str()) =>
                {
                    unchanged.push((*p).clone())
                }
                _ => to_read.push(o.clone()),
            }
        }
        SyncPlan {
            listed,
            unchanged,
            to_read,
        }
    }

    pub fn bytes(&self) -> u64 {
        self.listed.iter().map(|o| o.size).sum()
    }

    pub fn read_bytes(&self) -> u64 {
        self.to_read.iter().map(|o| o.size).sum()
    }

    /// The largest object that goes through the spool, for the free-space check.
    pub fn largest_spooled(&self) -> u64 {
        self.to_read
            .iter()
            .map(|o| o.size)
            .filter(|s| *s > IN_MEMORY_MAX)
            .max()
            .unwrap_or(0)
    }
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
    let prefix = format!("{}/blobs/", catalog::REPO);
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
        let blob = catalog::blob_key(&sha);
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
        let blob = catalog::blob_key(&sha);
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
        key: catalog::blob_key(&e.sha256),
        source: StoreError::Fatal {
            op: "restore",
            key: e.key.clone(),
            detail: format!("{detail}: it is corrupted (run verify-backup --read-data)"),
        },
    }
}

/// A small object: its blob into memory, checked, then one PUT.
async fn copy_small(repo: &Store, target: &Store, e: &Entry) -> Result<(), SyncError> {
    let blob = catalog::blob_key(&e.sha256);
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
    let blob = catalog::blob_key(&e.sha256);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_limiter_spaces_transfers_at_the_rate() {
        let t0 = Instant::now();
        let mut next = t0;
        let starts: Vec<Duration> = [1000u64, 1000, 500, 0]
            .iter()
            .map(|b| Limiter::reserve(&mut next, 1000.0, *b, t0) - t0)
            .collect();
        assert_eq!(
            starts,
            [
                Duration::ZERO,
                Duration::from_secs(1),
                Duration::from_secs(2),
                Duration::from_millis(2500)
            ]
        );
        // Idle time is not saved up: a late transfer starts when it comes.
        let late = t0 + Duration::from_secs(10);
        assert_eq!(Limiter::reserve(&mut next, 1000.0, 1000, late), late);
    }

    #[test]
    fn manifest_round_trips_and_refuses_escaping_keys() {
        let m = Manifest {
            entries: vec![Entry {
                key: "v2/artifacts/p/r/c/model.bin".into(),
                size: 3,
                etag: Some("abc".into()),
                sha256: "00".repeat(32),
                content_type: "application/octet-stream".into(),
                metadata: BTreeMap::from([("framework".into(), "pytorch".into())]),
            }],
        };
        assert_eq!(Manifest::parse("m", &m.to_bytes()).unwrap(), m);
        let bad = zstd::encode_all(
            &br#"{"key":"../../etc/passwd","size":1,"etag":null,"sha256":"00","content-type":"x"}"#
                [..],
            3,
        )
        .unwrap();
        assert!(Manifest::parse("m", &bad).unwrap_err().contains("line 1"));
        assert!(Manifest::parse("m", b"plain").is_err());
    }
}
