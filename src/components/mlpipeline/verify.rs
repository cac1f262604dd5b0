//! The bucket's part of a check: the manifest matches the statefile's hash, every blob it names
//! is there with its size; read back, every blob hashes to its name.
//!
//! Streamed: the manifest's hashes are sorted (on disk past the sort buffer) into the order of
//! the repository's `blobs/` listing, and the two are merged. Memory does not grow with the
//! number of objects or blobs.

use std::collections::BTreeMap;

use futures::TryStreamExt;
use sha2::{Digest, Sha256};

use crate::components::check::{problem, CheckContext, Mode, Problem, Verification};
use crate::repository::{self, Statefile};
use crate::retry::retry;
use crate::sorted::{join, Hash, HashSorter, Joined};
use crate::storage::{Store, StoreError, TapWriter};

/// Problems named one by one; past that they are counted.
const PROBLEMS_SHOWN: usize = 100;
/// Blobs read back at once by `--read-data`.
const READERS: usize = 8;

/// Problems of one check, bounded: the first ones named, the rest counted.
struct Findings<'a> {
    v: &'a mut Verification,
    more: u64,
}

impl Findings<'_> {
    fn push(&mut self, p: Problem) {
        if self.v.problems.len() < PROBLEMS_SHOWN {
            self.v.problems.push(p);
        } else {
            self.more += 1;
        }
    }

    fn close(self) {
        if self.more > 0 {
            self.v.problems.push(problem(
                "mlpipeline",
                &repository::blobs_prefix(),
                format!("and {} more problems like these", self.more),
            ));
        }
    }
}

/// A blob as listed: its hash (from its key) and size.
fn listed_blob(o: crate::storage::ObjectInfo) -> Option<Hash> {
    Hash::parse(repository::blob_of(&o.key)?, o.size)
}

pub(crate) async fn check(cx: &CheckContext<'_>, sf: &Statefile, v: &mut Verification) {
    let Some(p) = &sf.components.mlpipeline else {
        return;
    };
    let mut f = Findings { v, more: 0 };
    if let Err(p) = check_blobs(cx, p, &mut f).await {
        f.push(p);
    }
    f.close();
}

/// The whole check; an `Err` is a problem that stops it (the manifest or a listing failed).
async fn check_blobs(
    cx: &CheckContext<'_>,
    p: &repository::MlpipelineCapture,
    f: &mut Findings<'_>,
) -> Result<(), Problem> {
    let dest = cx.dest;
    let key = &p.manifest_key;
    let stop = |key: &str| {
        let key = key.to_string();
        move |e: String| problem("mlpipeline", &key, e)
    };
    f.v.objects_checked += 1;
    // The manifest's hashes, sorted and unique.
    let mut sorter = HashSorter::new(cx.spool, cx.streaming.sort_memory);
    let mut entries = repository::manifest::read(dest, key, Some(&p.manifest_sha256));
    while let Some(e) = entries
        .try_next()
        .await
        .map_err(|e| stop(key)(e.to_string()))?
    {
        let h = Hash::parse(&e.sha256, e.size).expect("the manifest reader checks hashes");
        sorter
            .push(h)
            .await
            .map_err(|e| stop(key)(format!("sorting hashes: {e}")))?;
    }
    let marks = sorter
        .finish()
        .await
        .map_err(|e| stop(key)(format!("sorting hashes: {e}")))?
        .map_err(|e| StoreError::Fatal {
            op: "sort",
            key: "hashes".into(),
            detail: e.to_string(),
        });
    let prefix = repository::blobs_prefix();
    let blobs = dest
        .list_stream(&prefix, cx.streaming.page_size)
        .try_filter_map(|o| futures::future::ready(Ok(listed_blob(o))));
    let sample = match cx.mode {
        Mode::ReadData(sample) => {
            if sample.is_all() {
                cx.progress.step("verify", "reading every blob back");
            } else {
                cx.progress.step(
                    "verify",
                    format!("reading a sample of the blobs back ({sample})"),
                );
                f.v.sample = Some(sample.to_string());
            }
            Some(sample)
        }
        Mode::Light => None,
    };
    let read_data = sample.is_some();
    let found = join(marks, blobs)
        .try_filter_map(|j| {
            futures::future::ready(Ok(match j {
                Joined::Left(want) => Some(Found::Missing(want)),
                Joined::Both(want, got) if want.size != got.size => {
                    Some(Found::SizeDiffers(want, got.size))
                }
                Joined::Both(want, _) => Some(Found::Present(want)),
                Joined::Right(_) => None,
            }))
        })
        .map_ok(|found| async move {
            match found {
                Found::Present(h) if sample.is_some_and(|s| s.picks(&h.sha256)) => {
                    let blob = repository::blob_key(&h.hex());
                    let r = retry(crate::retry::ATTEMPTS, &blob, || async {
                        // Each attempt hashes from the first byte.
                        let mut hasher = Sha256::new();
                        let n = {
                            let mut sink =
                                TapWriter::new(tokio::io::sink(), |b: &[u8]| hasher.update(b));
                            dest.get_stream(&blob, &mut sink).await?
                        };
                        Ok::<_, StoreError>((n, hex::encode(hasher.finalize())))
                    })
                    .await;
                    Ok(Found::Read(h, r))
                }
                other => Ok::<_, StoreError>(other),
            }
        })
        .try_buffer_unordered(if read_data { READERS } else { 1 });
    let mut found = std::pin::pin!(found);
    let mut missing: BTreeMap<[u8; 32], u64> = BTreeMap::new();
    while let Some(found) = found
        .try_next()
        .await
        .map_err(|e| stop(&prefix)(e.to_string()))?
    {
        f.v.objects_checked += 1;
        match found {
            Found::Missing(h) => {
                if missing.len() < PROBLEMS_SHOWN {
                    missing.insert(h.sha256, h.size);
                } else {
                    f.more += 1;
                }
            }
            Found::SizeDiffers(want, got) => f.push(problem(
                "mlpipeline",
                &repository::blob_key(&want.hex()),
                format!("{got} bytes, the manifest says {}", want.size),
            )),
            Found::Present(_) => {}
            Found::Read(h, Ok((n, got))) => {
                f.v.bytes_read += n;
                f.v.blobs_read += 1;
                if got != h.hex() {
                    f.push(problem(
                        "mlpipeline",
                        &repository::blob_key(&h.hex()),
                        format!("content hash is {got}: the blob is corrupted"),
                    ));
                }
            }
            Found::Read(h, Err(e)) => f.push(problem(
                "mlpipeline",
                &repository::blob_key(&h.hex()),
                e.to_string(),
            )),
        }
    }
    if !missing.is_empty() {
        name_missing(dest, p, &missing, f).await;
    }
    Ok(())
}

/// What the merge of the wanted hashes with the listed blobs found for one blob.
enum Found {
    Missing(Hash),
    SizeDiffers(Hash, u64),
    Present(Hash),
    /// Read back: its length and content hash, or why it could not be read.
    Read(Hash, Result<(u64, String), StoreError>),
}

/// Names an object for each missing blob (a second pass over the manifest, only when blobs are
/// missing: what an operator needs to know is which artifacts are lost).
async fn name_missing(
    dest: &Store,
    p: &repository::MlpipelineCapture,
    missing: &BTreeMap<[u8; 32], u64>,
    f: &mut Findings<'_>,
) {
    let mut named: BTreeMap<[u8; 32], String> = BTreeMap::new();
    let mut entries = repository::manifest::read(dest, &p.manifest_key, None);
    while let Ok(Some(e)) = entries.try_next().await {
        if let Some(h) = Hash::parse(&e.sha256, e.size) {
            if missing.contains_key(&h.sha256) {
                named.entry(h.sha256).or_insert(e.key);
            }
        }
    }
    for sha in missing.keys() {
        let obj = named.get(sha).map_or("?", String::as_str);
        f.push(problem(
            "mlpipeline",
            &repository::blob_key(&hex::encode(sha)),
            format!("missing (object {obj})"),
        ));
    }
}
