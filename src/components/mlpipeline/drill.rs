//! The bucket's part of a restore drill: the backup's objects (all, a sample, or as many as a
//! byte cap allows) restored into a scratch store by the restore's own copier, then read back
//! from there and compared with the manifest: bytes, size, content type, user metadata. The
//! read-back is what the restore alone cannot prove: that what landed is what was captured.

use std::collections::BTreeSet;
use std::sync::Mutex;

use futures::{StreamExt, TryStreamExt};
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::pace::Ticker;
use super::packed::{by_pack, itself};
use super::restore::Copier;
use super::{SyncError, SyncOptions, IN_MEMORY_MAX};
use crate::components::check::{problem, Findings, Sample};
use crate::repository::{self, Entry, MlpipelineCapture};
use crate::sorted::{join, Joined};
use crate::storage::{ObjectInfo, ObjectMeta, Store, StoreError, TapWriter};

/// Which of a backup's objects a drill restores.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pick {
    pub sample: Sample,
    /// Restore objects (in key order, those the sample picks) while their bytes fit.
    pub max_bytes: Option<u64>,
}

/// What the bucket's drill restored and read back.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct BucketDrill {
    /// Objects and bytes the pick chose, of the backup's.
    pub objects: u64,
    pub bytes: u64,
    pub of_objects: u64,
    pub of_bytes: u64,
    /// Restored into the scratch store, then read back equal to the manifest.
    pub restored: u64,
    pub read_back: u64,
    pub read_back_bytes: u64,
    /// Whether content types and user metadata were compared (a local directory keeps only
    /// bytes).
    pub metadata_checked: bool,
}

/// Keys whose copy failed (already reported), up to a bound: past it, objects missing from
/// the scratch copy are not reported a second time.
const FAILED_REMEMBERED: usize = 10_000;

/// The entries the drill restores, in manifest order; the same on every call.
fn picked(
    repo: &Store,
    cap: &MlpipelineCapture,
    pick: Pick,
) -> impl futures::Stream<Item = Result<Entry, SyncError>> + Send + Unpin {
    let mut room = pick.max_bytes;
    repository::manifest::read(repo, &cap.manifest_key, Some(&cap.manifest_sha256))
        .map_err(SyncError::from)
        .try_filter(move |e| {
            let sampled = pick.sample.is_all()
                || hex::decode(&e.sha256)
                    .ok()
                    .and_then(|h| <[u8; 32]>::try_from(h).ok())
                    .is_some_and(|h| pick.sample.picks(&h));
            let fits = match &mut room {
                None => true,
                Some(left) if e.size <= *left => {
                    *left -= e.size;
                    true
                }
                Some(_) => false,
            };
            futures::future::ready(sampled && fits)
        })
}

/// Counts what [`drill`] would restore, reading only the manifest.
pub async fn drill_plan(
    repo: &Store,
    cap: &MlpipelineCapture,
    pick: Pick,
) -> Result<(u64, u64), SyncError> {
    picked(repo, cap, pick)
        .try_fold(
            (0u64, 0u64),
            |(n, b), e| async move { Ok((n + 1, b + e.size)) },
        )
        .await
}

/// Restores the picked objects into `scratch` and reads each back; what is wrong goes into
/// `found`, named by object key (and the pack or blob it came from).
pub async fn drill(
    repo: &Store,
    scratch: &Store,
    cap: &MlpipelineCapture,
    pick: Pick,
    opts: &SyncOptions,
    found: &Mutex<Findings>,
) -> BucketDrill {
    let mut out = BucketDrill {
        of_objects: cap.objects,
        of_bytes: cap.bytes,
        metadata_checked: scratch.keeps_metadata(),
        ..BucketDrill::default()
    };
    let failed: Mutex<(BTreeSet<String>, bool)> = Mutex::new((BTreeSet::new(), false));
    let note = |key: &str, detail: String| {
        found
            .lock()
            .expect("findings")
            .push(problem("mlpipeline", key, detail));
    };
    // Restore: every group on its own, so that one damaged pack does not hide the others.
    let copier = Copier::new(repo, scratch, opts);
    let ticker = Ticker::new(&opts.progress, None);
    let copied: Result<_, SyncError> = by_pack(picked(repo, cap, pick), copier.grouping, itself)
        .map(|group| {
            let (copier, ticker, failed, note) = (&copier, &ticker, &failed, &note);
            async move {
                let group = group?;
                let n = group.len() as u64;
                let bytes: u64 = group.iter().map(|e| e.size).sum();
                match copier.copy(&group).await {
                    Ok(b) => {
                        ticker.add_objects(n, b);
                        Ok((n, bytes, n))
                    }
                    Err(e) => {
                        let mut f = failed.lock().expect("failed keys");
                        for entry in &group {
                            note(&entry.key, format!("not restored: {e}"));
                            if f.0.len() < FAILED_REMEMBERED {
                                f.0.insert(entry.key.clone());
                            } else {
                                f.1 = true;
                            }
                        }
                        Ok((n, bytes, 0))
                    }
                }
            }
        })
        .buffer_unordered(opts.transfers.max(1))
        .try_fold((0u64, 0u64, 0u64), |t, (n, b, ok)| async move {
            Ok((t.0 + n, t.1 + b, t.2 + ok))
        })
        .await;
    ticker.finish();
    match copied {
        Ok((n, b, ok)) => (out.objects, out.bytes, out.restored) = (n, b, ok),
        Err(e) => {
            note(&cap.manifest_key, e.to_string());
            return out;
        }
    }
    // Read back: the picked entries merged by key with the scratch copy's listing. The
    // manifest is read a second time rather than kept: memory stays flat in its size.
    scratch.settle_order();
    let listing = scratch
        .sorted_listing("", &opts.streaming, &opts.scratch)
        .map_err(SyncError::List);
    let (failed, overflow) = failed.into_inner().expect("failed keys");
    let keeps_metadata = out.metadata_checked;
    let checked = join(picked(repo, cap, pick), listing)
        .map(|j| {
            let (copier, failed) = (&copier, &failed);
            async move {
                match j? {
                    Joined::Both(e, o) => {
                        copier.pace(e.size).await;
                        Ok(read_back(scratch, &e, &o, keeps_metadata)
                            .await
                            .map(Some)
                            .map_err(|why| (e.key.clone(), why)))
                    }
                    Joined::Left(e) if overflow || failed.contains(&e.key) => Ok(Ok(None)),
                    Joined::Left(e) => Ok(Err((
                        e.key,
                        "restored, but not found in the scratch copy".to_string(),
                    ))),
                    Joined::Right(o) => Ok(Err((
                        o.key,
                        "in the scratch copy, but not in the backup's manifest".to_string(),
                    ))),
                }
            }
        })
        .buffered(opts.checkers.max(1))
        .try_for_each(|r| {
            match r {
                Ok(Some(bytes)) => {
                    out.read_back += 1;
                    out.read_back_bytes += bytes;
                }
                Ok(None) => {}
                Err((key, why)) => note(&key, why),
            }
            futures::future::ready(Ok::<(), SyncError>(()))
        })
        .await;
    if let Err(e) = checked {
        note("(scratch copy)", format!("reading the copy back: {e}"));
    }
    out
}

/// An object's content hash and headers, read whole: in one request when small, else its
/// headers and then its bytes as a stream.
async fn fetch(scratch: &Store, e: &Entry) -> Result<(String, ObjectMeta), StoreError> {
    if e.size <= IN_MEMORY_MAX {
        let (bytes, meta) = scratch.get_with_meta(&e.key).await?;
        return Ok((hex::encode(Sha256::digest(&bytes)), meta));
    }
    let meta = scratch
        .head_meta(&e.key)
        .await?
        .ok_or_else(|| StoreError::NotFound { key: e.key.clone() })?;
    let mut h = Sha256::new();
    {
        let mut sink = TapWriter::new(tokio::io::sink(), |b: &[u8]| h.update(b));
        scratch.get_stream(&e.key, &mut sink).await?;
    }
    Ok((hex::encode(h.finalize()), meta))
}

/// One restored object read back from the scratch store and compared with its entry; the
/// bytes read.
async fn read_back(
    scratch: &Store,
    e: &Entry,
    listed: &ObjectInfo,
    keeps_metadata: bool,
) -> Result<u64, String> {
    if listed.size != e.size {
        return Err(format!(
            "{} bytes in the scratch copy, the manifest records {}",
            listed.size, e.size
        ));
    }
    let (sha, meta) = crate::retry::retry(crate::retry::ATTEMPTS, &e.key, || fetch(scratch, e))
        .await
        .map_err(|err| format!("reading it back: {err}"))?;
    if sha != e.sha256 {
        return Err(format!(
            "restored bytes hash to {sha}, the manifest records {}",
            e.sha256
        ));
    }
    if keeps_metadata {
        if meta.content_type != e.content_type {
            return Err(format!(
                "content type {:?} restored, the manifest records {:?}",
                meta.content_type, e.content_type
            ));
        }
        if meta.metadata != e.metadata {
            return Err(format!(
                "user metadata {:?} restored, the manifest records {:?}",
                meta.metadata, e.metadata
            ));
        }
    }
    Ok(e.size)
}
