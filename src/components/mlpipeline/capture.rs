//! The bucket into the repository: the listing merged with the previous manifest, each object
//! kept, read or dropped as the merge decides, the new manifest written in key order as the
//! copies finish. Small objects go through memory within a byte budget; large ones stream
//! from their GET into a pack of their own (format v2), or through spool files a few at a time
//! (format v1, whose blob key is the hash, known only at the end); each content is kept once.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use futures::TryStreamExt;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use super::known::{Found, KnownContent};
use super::pace::{Limiter, Ticker};
use super::plan::{joined, unchanged};
use super::{
    kib_permits, PreviousManifest, SyncError, SyncOptions, SyncPlan, SyncStats, IN_MEMORY_MAX,
    LARGE_IN_FLIGHT, LARGE_READING, MEMORY_BUDGET, VANISHED_SHOWN,
};
use crate::repository::pack::{new_pack_id, Located, SoloPack};
use crate::repository::packer::Packer;
use crate::repository::{self, layout, Entry, ManifestWriter, Written};
use crate::retry::retry;
use crate::sorted::Joined;
use crate::storage::{ObjectMeta, Store, StoreError, TapWriter};

/// Hashes of blobs stored or found during this run, remembered to spare a request for content
/// seen again soon (the many empty `_SUCCESS` markers); forgotten all at once when full.
const RECENT: usize = 16_384;

/// A spool file, removed when dropped: after its upload, on an error, and when the capture is
/// cancelled mid-way (another part failed, a signal), which no `await` after it would see.
struct Spooled(PathBuf);

impl Drop for Spooled {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Streams one large object into a spool file, hashing as it goes.
async fn spool_object(
    source: &Store,
    key: &str,
    spool: &Path,
    n: u64,
) -> Result<(Spooled, u64, String), SyncError> {
    let path = spool.join(format!("object-{n}.part"));
    let spool_err = |e| SyncError::Spool {
        path: path.clone(),
        source: e,
    };
    // Created without an await, and guarded at once: a capture cancelled mid-create would
    // otherwise leave the file (the blocking create finishes after the future is gone).
    let file = std::fs::File::create(&path).map_err(spool_err)?;
    let spooled = Spooled(path.clone());
    let file = tokio::fs::File::from_std(file);
    let mut hasher = Sha256::new();
    let mut w = TapWriter::new(file, |b: &[u8]| hasher.update(b));
    let got = source.get_stream(key, &mut w).await;
    let flushed = w.inner.flush().await;
    drop(w);
    let len = match (got, flushed) {
        (Ok(len), Ok(())) => len,
        (Err(e), _) => {
            return Err(SyncError::Object {
                key: key.to_string(),
                source: e,
            })
        }
        (_, Err(e)) => return Err(spool_err(e)),
    };
    Ok((spooled, len, hex::encode(hasher.finalize())))
}

/// What the transfers of one capture share.
struct Shared<'a> {
    source: &'a Store,
    dest: &'a Store,
    opts: &'a SyncOptions,
    recent: std::sync::Mutex<HashSet<String>>,
    /// Blobs being uploaded now: one upload per content, the others wait for it (S3 servers
    /// may fail concurrent PUTs of one key; SeaweedFS answers one of them 404).
    uploading: std::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    transfers: tokio::sync::Semaphore,
    memory: tokio::sync::Semaphore,
    large: tokio::sync::Semaphore,
    reading: tokio::sync::Semaphore,
    heads: tokio::sync::Semaphore,
    limiter: Option<Limiter>,
    /// Format v2: where small objects go (none when packing is off).
    packer: Option<Packer>,
    /// What the previous backup already stores, by hash.
    known: KnownContent,
    ticker: Ticker<'a>,
    spooled: AtomicU64,
    read_bytes: AtomicU64,
    new_objects: AtomicU64,
    new_bytes: AtomicU64,
}

impl Shared<'_> {
    fn seen(&self, sha: &str) -> bool {
        self.recent.lock().expect("recent blobs").contains(sha)
    }

    fn remember(&self, sha: &str) {
        let mut r = self.recent.lock().expect("recent blobs");
        if r.len() >= RECENT {
            r.clear();
        }
        r.insert(sha.to_string());
    }

    /// Stores a blob through `put` (which says whether it wrote it, or found it there) unless
    /// this run stored it already. One upload per content at a time; the others wait for it
    /// (S3 servers may fail concurrent PUTs of one key; SeaweedFS answers one of them 404).
    async fn store_blob<F, Fut>(&self, sha: &str, len: u64, put: F) -> Result<(), SyncError>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<bool, SyncError>>,
    {
        if self.seen(sha) {
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
        if self.seen(sha) {
            return Ok(());
        }
        if let Some(l) = &self.limiter {
            l.take(len).await;
        }
        let written = put().await;
        self.uploading.lock().expect("uploading").remove(sha);
        if written? {
            self.new_objects.fetch_add(1, Ordering::Relaxed);
            self.new_bytes.fetch_add(len, Ordering::Relaxed);
        }
        self.remember(sha);
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
        let digest: [u8; 32] = Sha256::digest(&data).into();
        let (len, sha) = (data.len() as u64, hex::encode(digest));
        self.read_bytes.fetch_add(len, Ordering::Relaxed);
        self.ticker.add(len);
        let packer = self
            .packer
            .as_ref()
            .filter(|_| self.opts.packing.packs(len));
        let at = match packer {
            // An empty object needs no bytes stored: a restore writes it from nothing.
            _ if len == 0 => None,
            Some(packer) => self.place(packer, digest, &data).await?,
            None => {
                let blob = repository::blob_key(&sha);
                // A blob already there (an earlier backup's, or one a killed run left) is
                // refused by the conditional PUT: one request either way, no listing of what
                // the repository has.
                self.store_blob(&sha, len, || async {
                    retry(self.opts.attempts, &blob, || {
                        self.dest
                            .put_bytes_if_absent(&blob, &data, "application/octet-stream")
                    })
                    .await
                    .map_err(Self::object_err(&blob))
                })
                .await?;
                None
            }
        };
        Ok(Some(Entry {
            key,
            size: len,
            etag: meta.info.etag,
            sha256: sha,
            content_type: meta.content_type,
            metadata: meta.metadata,
            pack: at.as_ref().map(|(p, _)| p.clone()),
            offset: at.map(|(_, o)| o),
        }))
    }

    /// Where a small object's bytes are kept: content this run packed or the previous backup
    /// holds is not stored again; anything else goes into the open pack. `None`: a v1 blob the
    /// previous backup names.
    async fn place(
        &self,
        packer: &Packer,
        sha: [u8; 32],
        data: &[u8],
    ) -> Result<Option<(String, u64)>, SyncError> {
        if let Some(there) = self.stored_already(packer, &sha).await? {
            return Ok(there);
        }
        let len = data.len() as u64;
        if let Some(l) = &self.limiter {
            l.take(len).await;
        }
        let placed = packer
            .put(sha, data)
            .await
            .map_err(Self::object_err(&layout::packs_prefix()))?;
        if placed.new {
            self.new_objects.fetch_add(1, Ordering::Relaxed);
            self.new_bytes.fetch_add(len, Ordering::Relaxed);
        }
        Ok(Some((placed.pack.to_string(), placed.offset)))
    }

    /// Where this run or the previous backup already keeps content `sha`, if either does:
    /// `Some(None)` for a v1 blob, `Some(Some((pack, offset)))` for a packed one.
    async fn stored_already(
        &self,
        packer: &Packer,
        sha: &[u8; 32],
    ) -> Result<Option<Option<(String, u64)>>, SyncError> {
        if let Some((pack, offset)) = packer.find(sha) {
            return Ok(Some(Some((pack.to_string(), offset))));
        }
        Ok(match self.known.find(sha).await? {
            Some(Found::Blob) => Some(None),
            Some(Found::Packed { pack, offset }) => Some(Some((pack, offset))),
            None => None,
        })
    }

    /// A large object in format v2: streamed from its GET straight into a pack of its own (a
    /// multipart upload, no spool file), hashed on the way. Content this run or the previous
    /// backup already keeps is not kept twice: the new pack is deleted again.
    async fn large_packed(
        &self,
        packer: &Packer,
        meta: ObjectMeta,
    ) -> Result<Option<Entry>, SyncError> {
        let key = meta.info.key.clone();
        if let Some(l) = &self.limiter {
            l.take(meta.info.size).await;
        }
        let gone = std::sync::atomic::AtomicBool::new(false);
        let streamed = retry(self.opts.attempts, &key, || {
            self.stream_into_pack(&key, meta.info.size, &gone)
        })
        .await;
        let (pack, at, pack_len) = match streamed {
            Ok(s) => s,
            Err(_) if gone.load(Ordering::Relaxed) => return Ok(None),
            Err(e) => return Err(Self::object_err(&key)(e)),
        };
        self.read_bytes.fetch_add(at.length, Ordering::Relaxed);
        self.ticker.add(at.length);
        let place = match self.stored_already(packer, &at.sha256).await? {
            Some(there) => {
                // A pack left behind (this delete failing) is one no manifest names: the next
                // prune deletes it.
                let k = layout::pack_key(&pack);
                if let Err(e) = retry(self.opts.attempts, &k, || self.dest.delete(&k)).await {
                    tracing::warn!("{k}: a duplicate of stored content, not deleted: {e}");
                }
                there
            }
            None => {
                let id = packer
                    .adopt(&pack, at, pack_len)
                    .await
                    .map_err(Self::object_err(&layout::packs_prefix()))?;
                self.new_objects.fetch_add(1, Ordering::Relaxed);
                self.new_bytes.fetch_add(at.length, Ordering::Relaxed);
                Some((id.to_string(), at.offset))
            }
        };
        Ok(Some(large_entry(
            meta,
            at.length,
            hex::encode(at.sha256),
            place,
        )))
    }

    /// One attempt: the object's GET piped through a [`SoloPack`] into the pack's upload. The
    /// upload completes only if the GET ended well (a cut stream would otherwise look like a
    /// shorter object); `gone` says the object vanished.
    async fn stream_into_pack(
        &self,
        key: &str,
        size: u64,
        gone: &std::sync::atomic::AtomicBool,
    ) -> Result<(String, Located, u64), StoreError> {
        let pack = new_pack_id();
        let pack_key = layout::pack_key(&pack);
        let (w, r) = tokio::io::duplex(1 << 20);
        let (tx, rx) = tokio::sync::oneshot::channel::<Result<u64, StoreError>>();
        let get = async {
            let mut w = w;
            let got = self.source.get_stream(key, &mut w).await;
            let _ = w.shutdown().await;
            drop(w);
            if matches!(got, Err(StoreError::NotFound { .. })) {
                gone.store(true, Ordering::Relaxed);
            }
            let _ = tx.send(got);
        };
        let put = async {
            // Owned here, so a failed upload drops the pipe's reader and ends the GET too.
            let mut solo = SoloPack::new(r);
            let verdict = async {
                match rx.await {
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err(e)) => Err(e),
                    Err(_) => Err(StoreError::Fatal {
                        op: "get",
                        key: key.to_string(),
                        detail: "the read stopped".into(),
                    }),
                }
            };
            let none = Default::default();
            let sent = self
                .dest
                .put_object_verified(
                    &pack_key,
                    &mut solo,
                    Some(SoloPack::<()>::expected_len(size)),
                    "application/octet-stream",
                    &none,
                    verdict,
                )
                .await;
            sent.map(|()| (solo.located(), solo.pack_len()))
        };
        let ((), sent) = tokio::join!(get, put);
        match sent? {
            (Some(at), Some(len)) => Ok((pack, at, len)),
            _ => Err(StoreError::Fatal {
                op: "put",
                key: pack_key,
                detail: "the upload ended before the pack was whole".into(),
            }),
        }
    }

    /// A large object: HEAD for its headers, then (format v2) streamed into a pack of its own,
    /// or (v1) streamed to the spool while hashed and uploaded in parts unless the blob is there.
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
        if let Some(packer) = &self.packer {
            return self.large_packed(packer, meta).await;
        }
        let reading = self.reading.acquire().await.expect("never closed");
        let read = retry(self.opts.attempts, &key, || {
            let n = self.spooled.fetch_add(1, Ordering::Relaxed);
            spool_object(self.source, &key, &self.opts.spool, n)
        })
        .await;
        drop(reading);
        let (spooled, len, sha) = match read {
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
                // A large blob already there is found by a HEAD (cheap beside its upload).
                let there = retry(self.opts.attempts, &blob, || self.dest.head(&blob))
                    .await
                    .map_err(Self::object_err(&blob))?;
                if there.is_some_and(|o| o.size == len) {
                    return Ok(false);
                }
                retry(self.opts.attempts, &blob, || async {
                    let mut f =
                        tokio::fs::File::open(&spooled.0)
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
                .map(|()| true)
            })
            .await;
        drop(spooled);
        uploaded?;
        Ok(Some(large_entry(meta, len, sha, None)))
    }
}

/// The entry of a large object read whole: what was really read is what the manifest records,
/// and a size that moved under us means the ETag no longer describes these bytes.
fn large_entry(meta: ObjectMeta, len: u64, sha: String, place: Option<(String, u64)>) -> Entry {
    let etag = if len == meta.info.size {
        meta.info.etag
    } else {
        None
    };
    Entry {
        key: meta.info.key,
        size: len,
        etag,
        sha256: sha,
        content_type: meta.content_type,
        metadata: meta.metadata,
        pack: place.as_ref().map(|(p, _)| p.clone()),
        offset: place.map(|(_, o)| o),
    }
}

/// What one object of the merge becomes.
enum Outcome {
    /// Unchanged since the previous backup: its entry, not read.
    Kept(Entry),
    Read(Entry),
    /// Listed, then gone when read.
    Vanished(String),
}

/// What a capture wrote.
#[derive(Debug, Clone)]
pub struct Captured {
    pub manifest: Written,
    pub stats: SyncStats,
}

impl Captured {
    /// What a statefile records of this capture, whose manifest is at `manifest_key`.
    pub fn record(&self, manifest_key: &str) -> crate::repository::MlpipelineCapture {
        let s = &self.stats;
        crate::repository::MlpipelineCapture {
            manifest_key: manifest_key.to_string(),
            manifest_sha256: self.manifest.sha256.clone(),
            objects: s.objects,
            bytes: s.bytes,
            new_bytes: s.new_bytes,
            new_objects: s.new_objects,
        }
    }
}

/// Copies the bucket into the repository's blobs and writes the manifest under
/// `manifest_key`, merging the live listing with `previous` so unchanged objects are not read.
/// `totals` (from [`super::plan`]) feeds progress. Nothing is left under `manifest_key` when
/// this fails.
pub async fn capture(
    source: &Store,
    dest: &Store,
    previous: Option<&PreviousManifest>,
    manifest_key: &str,
    totals: Option<&SyncPlan>,
    opts: &SyncOptions,
) -> Result<Captured, SyncError> {
    tokio::fs::create_dir_all(&opts.spool)
        .await
        .map_err(|e| SyncError::Spool {
            path: opts.spool.clone(),
            source: e,
        })?;
    // Once the copy has begun it cannot start over: the listing's order is settled first.
    source.settle_order();
    let totals = totals.map(|t| (t.to_read, t.read_bytes));
    let shared = Shared {
        source,
        dest,
        opts,
        recent: Default::default(),
        uploading: Default::default(),
        transfers: tokio::sync::Semaphore::new(opts.transfers.max(1)),
        memory: tokio::sync::Semaphore::new((MEMORY_BUDGET >> 10) as usize),
        large: tokio::sync::Semaphore::new(LARGE_IN_FLIGHT),
        reading: tokio::sync::Semaphore::new(LARGE_READING),
        heads: tokio::sync::Semaphore::new(opts.checkers.max(1)),
        limiter: opts.bwlimit.map(|rate| Limiter::new(rate, Instant::now())),
        packer: opts.packing.on().then(|| {
            Packer::new(
                dest,
                opts.packing.packs,
                &opts.scratch,
                opts.streaming.sort_memory,
            )
        }),
        known: KnownContent::new(
            dest,
            previous,
            opts.scratch.clone(),
            opts.streaming.sort_memory,
        ),
        ticker: Ticker::new(&opts.progress, totals),
        spooled: AtomicU64::new(0),
        read_bytes: AtomicU64::new(0),
        new_objects: AtomicU64::new(0),
        new_bytes: AtomicU64::new(0),
    };
    let mut manifest = ManifestWriter::start(dest, manifest_key);
    let copied = copy_all(&shared, source, previous, &mut manifest).await;
    shared.ticker.finish();
    let (read_objects, vanished_objects, vanished) = match copied {
        Ok(c) => c,
        Err(e) => {
            manifest.abort(&e.to_string()).await;
            return Err(e);
        }
    };
    // Every pack the manifest names is stored before the manifest becomes visible.
    let mut packed = None;
    if let Some(packer) = shared.packer {
        let index = layout::index_beside(manifest_key);
        match packer.finish(Some(&index)).await {
            Ok(p) => packed = Some(p),
            Err(e) => {
                let e = SyncError::Object {
                    key: layout::packs_prefix(),
                    source: e,
                };
                manifest.abort(&e.to_string()).await;
                return Err(e);
            }
        }
    }
    let written = manifest.finish().await?;
    let stats = SyncStats {
        objects: written.entries,
        bytes: written.bytes,
        read_objects,
        read_bytes: shared.read_bytes.into_inner(),
        new_objects: shared.new_objects.into_inner(),
        new_bytes: shared.new_bytes.into_inner(),
        packs: packed.as_ref().map_or(0, |p| p.packs.len() as u64),
        pack_bytes: packed.map_or(0, |p| p.packs.iter().map(|(_, n)| n).sum()),
        vanished_objects,
        vanished,
    };
    Ok(Captured {
        manifest: written,
        stats,
    })
}

/// The merge, the copies (up to `queue_depth` objects started ahead of the oldest unfinished
/// one, `transfers` at once), and the manifest written in key order as results come back:
/// (objects read, vanished, the first vanished keys).
async fn copy_all(
    shared: &Shared<'_>,
    source: &Store,
    previous: Option<&PreviousManifest>,
    manifest: &mut ManifestWriter,
) -> Result<(u64, u64, Vec<String>), SyncError> {
    let opts = shared.opts;
    let results = joined(source, shared.dest, previous, opts)
        .try_filter_map(|j| async move {
            Ok(match j {
                Joined::Right(_) => None,
                Joined::Both(o, p) if unchanged(&o, &p) => Some((o, Some(p))),
                Joined::Both(o, _) | Joined::Left(o) => Some((o, None)),
            })
        })
        .map_ok(|(o, kept)| async move {
            if let Some(p) = kept {
                return Ok(Outcome::Kept(p));
            }
            let _turn = shared.transfers.acquire().await.expect("never closed");
            let key = o.key.clone();
            // Boxed once started: a future waiting in the window is a few hundred bytes, not
            // the size of a whole GET-and-PUT state machine (tens of KiB, times the window).
            let got = if o.size <= IN_MEMORY_MAX {
                Box::pin(shared.small(o.key, o.size)).await?
            } else {
                Box::pin(shared.large(o.key)).await?
            };
            Ok(got.map_or(Outcome::Vanished(key), Outcome::Read))
        })
        .try_buffered(opts.streaming.queue_depth.max(1));
    let mut results = std::pin::pin!(results);
    let (mut read, mut vanished_objects, mut vanished) = (0u64, 0u64, vec![]);
    while let Some(outcome) = results.try_next().await? {
        match outcome {
            Outcome::Kept(e) => manifest.push(&e).await?,
            Outcome::Read(e) => {
                read += 1;
                manifest.push(&e).await?;
            }
            Outcome::Vanished(key) => {
                vanished_objects += 1;
                if vanished.len() < VANISHED_SHOWN {
                    vanished.push(key);
                }
            }
        }
    }
    Ok((read, vanished_objects, vanished))
}
