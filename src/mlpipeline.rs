//! The `mlpipeline` bucket, copied into content-addressed blobs plus a per-backup manifest.
//!
//! Point in time: each backup's manifest names the blobs it needs, so an old backup keeps its
//! artifacts after they change or go. Incremental: an object whose key, size and ETag match the
//! previous backup's manifest is not read again, and a blob already stored is not uploaded
//! again. A same-size change has a new ETag, so it is caught (the manual procedure's
//! `--size-only` misses it). Memory stays bounded: small objects in memory, large ones through
//! a spool file, a fixed number in flight.

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
use crate::store::{ObjectInfo, ObjectMeta, Store, StoreError, TapWriter};

/// Objects up to this size are read into memory; larger ones go through a spool file.
const IN_MEMORY_MAX: u64 = 8 << 20;

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
    /// Concurrent metadata lookups (HEADs).
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
            transfers: 4,
            bwlimit: None,
            attempts: 4,
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

enum Body {
    Memory(Vec<u8>),
    File(PathBuf),
}

/// Reads one object, hashing as it goes: into memory when small, else into a spool file.
async fn read_object(
    source: &Store,
    meta: &ObjectMeta,
    spool: &Path,
    n: u64,
) -> Result<(Body, u64, String), SyncError> {
    let key = &meta.info.key;
    if meta.info.size <= IN_MEMORY_MAX {
        let data = source.get_bytes(key).await.map_err(|e| SyncError::Object {
            key: key.clone(),
            source: e,
        })?;
        let sha = hex::encode(Sha256::digest(&data));
        let len = data.len() as u64;
        return Ok((Body::Memory(data), len, sha));
    }
    let path = spool.join(format!("object-{n}.part"));
    let spool_err = |e| SyncError::Spool {
        path: path.clone(),
        source: e,
    };
    let file = tokio::fs::File::create(&path).await.map_err(spool_err)?;
    let mut hasher = Sha256::new();
    let mut w = TapWriter::new(file, |b: &[u8]| hasher.update(b));
    let len = source
        .get_stream(key, &mut w)
        .await
        .map_err(|e| SyncError::Object {
            key: key.clone(),
            source: e,
        })?;
    w.inner.flush().await.map_err(spool_err)?;
    drop(w);
    Ok((Body::File(path), len, hex::encode(hasher.finalize())))
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
    let to_read: Vec<String> = to_read.into_iter().map(|o| o.key).collect();
    let ticker = Ticker::new(&opts.progress, total_objects, total_bytes);
    tokio::fs::create_dir_all(&opts.spool)
        .await
        .map_err(|e| SyncError::Spool {
            path: opts.spool.clone(),
            source: e,
        })?;
    let limiter = opts
        .bwlimit
        .map(|rate| Arc::new(Limiter::new(rate, Instant::now())));
    let counter = AtomicU64::new(0);
    let (read_bytes, new_objects, new_bytes) =
        (AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0));

    // Checkers: headers of each object to read (content type, metadata, current ETag).
    let metas = futures::stream::iter(to_read)
        .map(|key| async move {
            let meta = retry(opts.attempts, &key, || source.head_meta(&key)).await;
            (key, meta)
        })
        .buffer_unordered(opts.checkers.max(1));
    // Transfers: read, hash, upload the blob unless the repository has it.
    let results: Vec<Option<Entry>> = metas
        .map(|(key, meta)| {
            let limiter = limiter.clone();
            let (counter, read_bytes, new_objects, new_bytes, ticker) =
                (&counter, &read_bytes, &new_objects, &new_bytes, &ticker);
            async move {
                let meta = match meta {
                    Ok(Some(m)) => m,
                    Ok(None) | Err(StoreError::NotFound { .. }) => return Ok(None),
                    Err(e) => return Err(SyncError::Object { key, source: e }),
                };
                let read = retry(opts.attempts, &meta.info.key, || {
                    read_object(
                        source,
                        &meta,
                        &opts.spool,
                        counter.fetch_add(1, Ordering::Relaxed),
                    )
                })
                .await;
                let (body, len, sha) = match read {
                    Ok(r) => r,
                    Err(SyncError::Object {
                        source: StoreError::NotFound { .. },
                        ..
                    }) => return Ok(None),
                    Err(e) => return Err(e),
                };
                read_bytes.fetch_add(len, Ordering::Relaxed);
                ticker.add(len);
                let blob = catalog::blob_key(&sha);
                let have = retry(opts.attempts, &blob, || dest.head(&blob))
                    .await
                    .map_err(|e| SyncError::Object {
                        key: blob.clone(),
                        source: e,
                    })?;
                if have.is_none_or(|h| h.size != len) {
                    if let Some(l) = &limiter {
                        l.take(len).await;
                    }
                    let put = retry(opts.attempts, &blob, || async {
                        match &body {
                            Body::Memory(data) => {
                                dest.put_bytes(&blob, data, "application/octet-stream")
                                    .await
                            }
                            Body::File(path) => {
                                let mut f = tokio::fs::File::open(path).await.map_err(|e| {
                                    StoreError::Fatal {
                                        op: "spool",
                                        key: blob.clone(),
                                        detail: e.to_string(),
                                    }
                                })?;
                                dest.put_stream(&blob, &mut f, "application/octet-stream")
                                    .await
                            }
                        }
                    })
                    .await;
                    put.map_err(|e| SyncError::Object {
                        key: blob.clone(),
                        source: e,
                    })?;
                    new_objects.fetch_add(1, Ordering::Relaxed);
                    new_bytes.fetch_add(len, Ordering::Relaxed);
                }
                if let Body::File(p) = &body {
                    let _ = tokio::fs::remove_file(p).await;
                }
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
        })
        .buffer_unordered(opts.transfers.max(1))
        .try_collect()
        .await?;

    ticker.finish();
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
        read_bytes: read_bytes.into_inner(),
        new_objects: new_objects.into_inner(),
        new_bytes: new_bytes.into_inner(),
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
    let limiter = opts
        .bwlimit
        .map(|rate| Arc::new(Limiter::new(rate, Instant::now())));
    let total_bytes = to_copy.iter().map(|e| e.size).sum();
    let ticker = Ticker::new(&opts.progress, to_copy.len() as u64, total_bytes);
    let copied_bytes = AtomicU64::new(0);
    let copies: Vec<u64> = futures::stream::iter(to_copy)
        .map(|e| {
            let (limiter, ticker, copied_bytes) = (limiter.clone(), &ticker, &copied_bytes);
            async move {
                if let Some(l) = &limiter {
                    l.take(e.size).await;
                }
                retry(opts.attempts, &e.key, || copy_back(repo, target, e)).await?;
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

/// One object from its blob back to the bucket, streamed through a bounded pipe.
async fn copy_back(repo: &Store, target: &Store, e: &Entry) -> Result<(), SyncError> {
    let blob = catalog::blob_key(&e.sha256);
    let (w, r) = tokio::io::duplex(1 << 20);
    let get = async move {
        let mut h = Sha256::new();
        let mut w = TapWriter::new(w, |b: &[u8]| h.update(b));
        let n = repo.get_stream(&blob, &mut w).await;
        let _ = w.inner.shutdown().await;
        drop(w);
        (n, hex::encode(h.finalize()))
    };
    let put = async move {
        let mut r = r;
        target
            .put_object(&e.key, &mut r, &e.content_type, &e.metadata)
            .await
    };
    let ((got, sha), put) = tokio::join!(get, put);
    let blob = catalog::blob_key(&e.sha256);
    got.map_err(|source| SyncError::Object {
        key: blob.clone(),
        source,
    })?;
    put.map_err(|source| SyncError::Object {
        key: e.key.clone(),
        source,
    })?;
    if sha != e.sha256 {
        return Err(SyncError::Object {
            key: blob,
            source: StoreError::Fatal {
                op: "restore",
                key: e.key.clone(),
                detail: format!("the blob's content hash is {sha}: it is corrupted (run verify-backup --read-data)"),
            },
        });
    }
    Ok(())
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
