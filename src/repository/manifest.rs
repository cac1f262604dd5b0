//! The mlpipeline manifest: one line per object of the bucket (key, size, ETag, content hash,
//! content type, user metadata), sorted by key, zstd-compressed JSON lines.
//!
//! It is only ever a stream: written record by record while a backup runs (uploaded as it is
//! compressed, multipart once it is large) and read back record by record, so neither side
//! holds more than a few blocks of it whatever the bucket holds. The format is the one every
//! earlier version wrote, so their backups read the same way.

use std::collections::BTreeMap;
use std::io::BufRead;

use futures::stream::{self, Stream};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use crate::storage::{Store, StoreError, TapWriter};

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
    /// Format v2: the pack holding the bytes (docs/FORMAT.md). Absent: a v1 blob at
    /// `blobs/<ab>/<sha256>`, or no bytes at all for an empty object.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pack: Option<String>,
    /// Where in `pack` the bytes start; their length is `size`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset: Option<u64>,
}

/// Where an entry's bytes are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stored<'a> {
    /// An empty object: nothing is stored, a restore writes it from nothing.
    Empty,
    /// Format v1: one object at `blobs/<ab>/<sha256>`.
    Blob(&'a str),
    /// Format v2: `size` bytes at `offset` in the pack.
    Packed { pack: &'a str, offset: u64 },
}

impl Entry {
    pub fn stored(&self) -> Stored<'_> {
        match (&self.pack, self.offset) {
            _ if self.size == 0 => Stored::Empty,
            (Some(pack), Some(offset)) => Stored::Packed { pack, offset },
            _ => Stored::Blob(&self.sha256),
        }
    }

    /// The object that holds this entry's bytes: its blob or its pack (none when empty).
    pub fn stored_object(&self) -> Option<String> {
        match self.stored() {
            Stored::Empty => None,
            Stored::Blob(sha) => Some(super::blob_key(sha)),
            Stored::Packed { pack, .. } => Some(super::layout::pack_key(pack)),
        }
    }

    /// Where this entry's bytes are (none for an empty one), for messages.
    pub fn stored_key(&self) -> Option<String> {
        match self.stored() {
            Stored::Empty => None,
            Stored::Blob(sha) => Some(super::blob_key(sha)),
            Stored::Packed { pack, offset } => Some(format!(
                "{} (bytes {offset}..{})",
                super::layout::pack_key(pack),
                offset + self.size
            )),
        }
    }
}

impl crate::sorted::Keyed for Entry {
    type Key = [u8];
    fn key(&self) -> &[u8] {
        self.key.as_bytes()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("{key}: {detail}")]
    Corrupt { key: String, detail: String },
}

impl crate::retry::Retryable for ManifestError {
    fn is_retryable(&self) -> bool {
        matches!(self, ManifestError::Store(e) if e.is_retryable())
    }
}

/// Hashes become object keys (`blobs/ab/ab...`): only the exact shape may pass.
pub fn is_sha256(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Entries decoded per message from the decoding thread.
const BATCH: usize = 256;
/// Compressed bytes gathered before they go to the upload.
const CHUNK: usize = 64 << 10;

/// Checks one line: a well-formed entry whose key sorts after the one before (or, not
/// `strict`, any well-formed entry).
fn parse_line(
    key: &str,
    n: usize,
    line: &[u8],
    last: &Option<String>,
    strict: bool,
) -> Result<Entry, String> {
    let e: Entry = serde_json::from_slice(line).map_err(|e| format!("line {n}: {e}"))?;
    if !strict {
        return Ok(e);
    }
    crate::storage::check_key(&e.key).map_err(|why| format!("line {n}: {why}"))?;
    if !is_sha256(&e.sha256) {
        return Err(format!(
            "line {n}: sha256 {:?} is not 64 lowercase hex digits",
            e.sha256
        ));
    }
    match (&e.pack, e.offset) {
        (None, None) => {}
        (Some(p), Some(_)) if !is_sha256(p) => {
            return Err(format!(
                "line {n}: pack {p:?} is not 64 lowercase hex digits"
            ));
        }
        (Some(_), Some(_)) if e.size == 0 => {
            return Err(format!("line {n}: an empty object has no pack"));
        }
        (Some(_), Some(o)) if o.checked_add(e.size).is_none() => {
            return Err(format!("line {n}: offset {o} is past any pack"));
        }
        (Some(_), Some(_)) => {}
        _ => return Err(format!("line {n}: a location needs both pack and offset")),
    }
    if let Some(prev) = last {
        if e.key.as_bytes() <= prev.as_bytes() {
            return Err(format!(
                "line {n}: key {:?} after {prev:?}: a manifest is sorted by key ({key})",
                e.key
            ));
        }
    }
    Ok(e)
}

/// Reads a manifest as a stream of entries. `expect_sha256` (the statefile's) is checked once
/// the last byte is in: a mismatch is the stream's last item, an error.
pub fn read(
    store: &Store,
    key: &str,
    expect_sha256: Option<&str>,
) -> impl Stream<Item = Result<Entry, ManifestError>> + Send + Unpin + 'static {
    read_entries(store, key, expect_sha256, true)
}

/// [`read`] without the checks of each entry's key, hash and order: for `download`, which
/// refuses unsafe entries one by one (and names them) rather than the whole backup.
pub fn read_unchecked(
    store: &Store,
    key: &str,
    expect_sha256: Option<&str>,
) -> impl Stream<Item = Result<Entry, ManifestError>> + Send + Unpin + 'static {
    read_entries(store, key, expect_sha256, false)
}

/// Bytes of a manifest fetched by one request. A reader may take hours over a large manifest (a
/// restore copies while it reads), far longer than one request may stay open: a single GET
/// held that long is cut by the request timeout (seen at a million objects). A range is held
/// in memory about twice while it drains (8 MiB ranges cost 16 MiB of peak RSS at 400 k
/// objects), and a 10 M-entry manifest is still only a few hundred requests at 2 MiB.
const FETCH_RANGE: u64 = 2 << 20;

/// Copies the object `key` into `w` a range of `range` bytes at a time, each range its own
/// request (retried), so that however slowly `w` drains no request stays open long.
async fn fetch_in_ranges<W: tokio::io::AsyncWrite + Unpin>(
    store: &Store,
    key: &str,
    w: &mut W,
    range: u64,
) -> Result<u64, StoreError> {
    use crate::retry::{retry, ATTEMPTS};
    let io = |e: std::io::Error| StoreError::Fatal {
        op: "get",
        key: key.to_string(),
        detail: e.to_string(),
    };
    let size = retry(ATTEMPTS, key, || store.head(key))
        .await?
        .ok_or_else(|| StoreError::NotFound {
            key: key.to_string(),
        })?
        .size;
    let mut at = 0;
    while at < size {
        let end = at.saturating_add(range.max(1)).min(size);
        let chunk = retry(ATTEMPTS, key, || store.get_range(key, at, end)).await?;
        w.write_all(&chunk).await.map_err(io)?;
        at = end;
    }
    w.flush().await.map_err(io)?;
    Ok(size)
}

fn read_entries(
    store: &Store,
    key: &str,
    expect_sha256: Option<&str>,
    strict: bool,
) -> impl Stream<Item = Result<Entry, ManifestError>> + Send + Unpin + 'static {
    let (w, r) = tokio::io::duplex(256 << 10);
    let (store, key, expect) = (
        store.clone(),
        key.to_string(),
        expect_sha256.map(str::to_string),
    );
    let k = key.clone();
    let get = tokio::spawn(async move {
        let mut h = Sha256::new();
        let mut tap = TapWriter::new(w, |b: &[u8]| h.update(b));
        let got = fetch_in_ranges(&store, &k, &mut tap, FETCH_RANGE).await;
        let _ = tap.inner.shutdown().await;
        drop(tap);
        got.map(|_| hex::encode(h.finalize()))
    });
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Vec<Entry>, String>>(4);
    let bridge = tokio_util::io::SyncIoBridge::new(r);
    let k = key.clone();
    tokio::task::spawn_blocking(move || {
        let decoded = (|| {
            let dec = zstd::stream::read::Decoder::new(bridge)
                .map_err(|e| format!("not a zstd stream: {e}"))?;
            let lines = std::io::BufReader::with_capacity(64 << 10, dec).split(b'\n');
            let (mut n, mut last, mut batch) = (0, None::<String>, Vec::with_capacity(BATCH));
            for line in lines {
                n += 1;
                let line = line.map_err(|e| format!("not a zstd stream: {e}"))?;
                if line.is_empty() {
                    continue;
                }
                let e = parse_line(&k, n, &line, &last, strict)?;
                last = Some(e.key.clone());
                batch.push(e);
                if batch.len() == BATCH
                    && tx
                        .blocking_send(Ok(std::mem::replace(&mut batch, Vec::with_capacity(BATCH))))
                        .is_err()
                {
                    return Ok(());
                }
            }
            if !batch.is_empty() {
                let _ = tx.blocking_send(Ok(batch));
            }
            Ok(())
        })();
        if let Err(detail) = decoded {
            let _ = tx.blocking_send(Err(detail));
        }
    });
    struct State {
        rx: tokio::sync::mpsc::Receiver<Result<Vec<Entry>, String>>,
        get: Option<tokio::task::JoinHandle<Result<String, StoreError>>>,
        key: String,
        expect: Option<String>,
    }
    let state = State {
        rx,
        get: Some(get),
        key,
        expect,
    };
    let batches = stream::unfold(state, |mut s| async move {
        // The download's result was taken at the end: the stream is over.
        s.get.as_ref()?;
        let corrupt = |key: &str, detail: String| ManifestError::Corrupt {
            key: key.to_string(),
            detail,
        };
        match s.rx.recv().await {
            Some(Ok(batch)) => Some((Ok(batch), s)),
            // The end, or a line that would not decode: what the download said decides which
            // error it was (a cut download reads as a truncated stream).
            other => {
                let get = s.get.take().expect("checked above");
                let fetched = get.await.expect("manifest download task");
                let err = match (fetched, other) {
                    (Err(e), _) => Some(ManifestError::Store(e)),
                    (Ok(_), Some(Err(detail))) => Some(corrupt(&s.key, detail)),
                    (Ok(sha), _) => match &s.expect {
                        Some(want) if *want != sha => Some(corrupt(
                            &s.key,
                            format!("content hash {sha} differs from the statefile's {want}"),
                        )),
                        _ => None,
                    },
                };
                err.map(|e| (Err(e), s))
            }
        }
    });
    Box::pin(futures::StreamExt::flat_map(batches, |b| match b {
        Ok(v) => stream::iter(v.into_iter().map(Ok).collect::<Vec<_>>()),
        Err(e) => stream::iter(vec![Err(e)]),
    }))
}

/// What a finished manifest holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    pub sha256: String,
    pub entries: u64,
    /// The objects' bytes.
    pub bytes: u64,
    /// The manifest's own (compressed) bytes.
    pub size: u64,
}

/// Writes a manifest entry by entry, uploading as it compresses. Until [`ManifestWriter::finish`]
/// succeeds nothing is visible under its key: an aborted or failed one leaves no half manifest.
pub struct ManifestWriter {
    key: String,
    enc: zstd::stream::write::Encoder<'static, Vec<u8>>,
    pipe: tokio::io::DuplexStream,
    hasher: Sha256,
    written: Written,
    last: Option<String>,
    verdict: Option<tokio::sync::oneshot::Sender<Result<(), String>>>,
    upload: tokio::task::JoinHandle<Result<(), StoreError>>,
}

impl ManifestWriter {
    pub fn start(store: &Store, key: &str) -> ManifestWriter {
        let (pipe, mut r) = tokio::io::duplex(256 << 10);
        let (verdict, rx) = tokio::sync::oneshot::channel::<Result<(), String>>();
        let (store, k) = (store.clone(), key.to_string());
        let upload = tokio::spawn(async move {
            let none = BTreeMap::new();
            let decided = async {
                match rx.await {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(why)) => Err(why),
                    Err(_) => Err("the writer went away".to_string()),
                }
            };
            let key = k.clone();
            store
                .put_object_verified(&k, &mut r, None, "application/zstd", &none, async move {
                    decided.await.map_err(|detail| StoreError::Fatal {
                        op: "put",
                        key,
                        detail: format!("manifest abandoned: {detail}"),
                    })
                })
                .await
        });
        ManifestWriter {
            key: key.to_string(),
            enc: zstd::stream::write::Encoder::new(Vec::with_capacity(CHUNK * 2), 3)
                .expect("zstd level 3"),
            pipe,
            hasher: Sha256::new(),
            written: Written {
                sha256: String::new(),
                entries: 0,
                bytes: 0,
                size: 0,
            },
            last: None,
            verdict: Some(verdict),
            upload,
        }
    }

    pub fn key(&self) -> &str {
        &self.key
    }

    /// Entries must come in key order, each key once.
    pub async fn push(&mut self, e: &Entry) -> Result<(), ManifestError> {
        use std::io::Write;
        if let Some(prev) = &self.last {
            if e.key.as_bytes() <= prev.as_bytes() {
                return Err(ManifestError::Corrupt {
                    key: self.key.clone(),
                    detail: format!("entry {:?} written after {prev:?}: out of order", e.key),
                });
            }
        }
        let mut line = serde_json::to_vec(e).expect("entry serializes");
        line.push(b'\n');
        self.enc.write_all(&line).expect("in-memory zstd");
        self.last = Some(e.key.clone());
        self.written.entries += 1;
        self.written.bytes += e.size;
        if self.enc.get_ref().len() >= CHUNK {
            let chunk = std::mem::replace(self.enc.get_mut(), Vec::with_capacity(CHUNK * 2));
            self.send(&chunk).await?;
        }
        Ok(())
    }

    async fn send(&mut self, chunk: &[u8]) -> Result<(), ManifestError> {
        self.hasher.update(chunk);
        self.written.size += chunk.len() as u64;
        if self.pipe.write_all(chunk).await.is_err() {
            // The upload stopped: its error says why.
            return Err(self.upload_error().await);
        }
        Ok(())
    }

    async fn upload_error(&mut self) -> ManifestError {
        self.verdict.take();
        match (&mut self.upload).await.expect("manifest upload task") {
            Err(e) => ManifestError::Store(e),
            Ok(()) => ManifestError::Corrupt {
                key: self.key.clone(),
                detail: "the upload ended before the manifest did".into(),
            },
        }
    }

    /// Completes the manifest: the last block goes up, then the object becomes visible.
    pub async fn finish(mut self) -> Result<Written, ManifestError> {
        let rest = std::mem::take(self.enc.get_mut());
        let enc = std::mem::replace(
            &mut self.enc,
            zstd::stream::write::Encoder::new(Vec::new(), 1).expect("zstd"),
        );
        let tail = enc.finish().expect("in-memory zstd");
        let mut last = rest;
        last.extend_from_slice(&tail);
        self.send(&last).await?;
        if self.pipe.shutdown().await.is_err() {
            return Err(self.upload_error().await);
        }
        if let Some(v) = self.verdict.take() {
            let _ = v.send(Ok(()));
        }
        (&mut self.upload)
            .await
            .expect("manifest upload task")
            .map_err(ManifestError::Store)?;
        self.written.sha256 = hex::encode(self.hasher.clone().finalize());
        Ok(self.written.clone())
    }

    /// Gives up: nothing is left under the key (a multipart upload is abandoned).
    pub async fn abort(mut self, why: &str) {
        if let Some(v) = self.verdict.take() {
            let _ = v.send(Err(why.to_string()));
        }
        let _ = self.pipe.shutdown().await;
        let _ = (&mut self.upload).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::TryStreamExt;

    fn entry(key: &str) -> Entry {
        Entry {
            key: key.into(),
            size: 3,
            etag: Some("abc".into()),
            sha256: "00".repeat(32),
            content_type: "application/octet-stream".into(),
            metadata: BTreeMap::from([("framework".into(), "pytorch".into())]),
            pack: None,
            offset: None,
        }
    }

    #[tokio::test]
    async fn a_manifest_is_fetched_a_range_at_a_time_whatever_the_range() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::local(dir.path());
        let body: Vec<u8> = (0..30_000u32).map(|i| (i % 251) as u8).collect();
        store.put_bytes("m", &body, "x").await.unwrap();
        for range in [3, 4096, 29_999, 1 << 30] {
            let mut out = vec![];
            let n = fetch_in_ranges(&store, "m", &mut out, range).await.unwrap();
            assert_eq!((n, &out), (30_000, &body), "ranges of {range}");
        }
        let e = fetch_in_ranges(&store, "gone", &mut vec![], 10).await;
        assert!(matches!(e, Err(StoreError::NotFound { .. })), "{e:?}");
    }

    #[tokio::test]
    async fn written_then_read_back_as_streams_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::local(dir.path());
        let keys: Vec<String> = (0..5000)
            .map(|i| format!("v2/artifacts/{i:06}/model.bin"))
            .collect();
        let mut w = ManifestWriter::start(&store, "m");
        for k in &keys {
            w.push(&entry(k)).await.unwrap();
        }
        assert!(
            w.push(&entry("a")).await.is_err(),
            "out of order is refused"
        );
        let written = w.finish().await.unwrap();
        assert_eq!((written.entries, written.bytes), (5000, 15000));
        let back: Vec<Entry> = read(&store, "m", Some(&written.sha256))
            .try_collect()
            .await
            .unwrap();
        assert_eq!(back.len(), 5000);
        assert_eq!(back[4999], entry(&keys[4999]));
        let wrong = read(&store, "m", Some(&"11".repeat(32)))
            .try_collect::<Vec<_>>()
            .await;
        assert!(wrong
            .unwrap_err()
            .to_string()
            .contains("differs from the statefile"));
    }

    #[tokio::test]
    async fn an_aborted_manifest_leaves_nothing_and_bad_lines_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::local(dir.path());
        let mut w = ManifestWriter::start(&store, "m");
        w.push(&entry("a")).await.unwrap();
        w.abort("capture failed").await;
        assert!(store.head("m").await.unwrap().is_none());

        for (body, says) in [
            (
                &br#"{"key":"../../etc/passwd","size":1,"etag":null,"sha256":"00","content-type":"x"}"#[..],
                "line 1",
            ),
            (b"{\"key\":\"b\",\"size\":1,\"etag\":null,\"sha256\":\"0000000000000000000000000000000000000000000000000000000000000000\",\"content-type\":\"x\"}\n{\"key\":\"a\",\"size\":1,\"etag\":null,\"sha256\":\"0000000000000000000000000000000000000000000000000000000000000000\",\"content-type\":\"x\"}", "line 2"),
        ] {
            let bad = zstd::encode_all(body, 3).unwrap();
            store.put_bytes("bad", &bad, "x").await.unwrap();
            let got = read(&store, "bad", None).try_collect::<Vec<_>>().await;
            assert!(got.unwrap_err().to_string().contains(says), "{says}");
        }
        store.put_bytes("plain", b"plain", "x").await.unwrap();
        assert!(read(&store, "plain", None)
            .try_collect::<Vec<_>>()
            .await
            .is_err());
        assert!(matches!(
            read(&store, "missing", None).try_collect::<Vec<_>>().await,
            Err(ManifestError::Store(StoreError::NotFound { .. }))
        ));
    }
}
