//! The bucket's part of a check: the manifest matches the statefile's hash, every blob it names
//! is there with its size; read back, every blob hashes to its name.

use std::collections::HashMap;

use futures::StreamExt;
use sha2::{Digest, Sha256};

use crate::components::check::{problem, Mode, Verification};
use crate::progress::Progress;
use crate::repository::{self, Manifest, Statefile};
use crate::retry::retry;
use crate::storage::{Store, TapWriter};

/// A blob's hash and what reading it gave: (bytes, content hash) or the error.
type BlobRead = (String, Result<(u64, String), String>);

pub(crate) async fn check(
    dest: &Store,
    sf: &Statefile,
    mode: Mode,
    progress: &Progress,
    v: &mut Verification,
) {
    let Some(p) = &sf.components.mlpipeline else {
        return;
    };
    let key = &p.manifest_key;
    v.objects_checked += 1;
    let bytes = match retry(crate::retry::ATTEMPTS, key, || dest.get_bytes(key)).await {
        Ok(b) => b,
        Err(e) => {
            v.problems.push(problem("mlpipeline", key, e.to_string()));
            return;
        }
    };
    if hex::encode(Sha256::digest(&bytes)) != p.manifest_sha256 {
        v.problems.push(problem(
            "mlpipeline",
            key,
            "the manifest's content hash differs from the statefile's",
        ));
        return;
    }
    let manifest = match Manifest::parse(key, &bytes) {
        Ok(m) => m,
        Err(e) => {
            v.problems.push(problem("mlpipeline", key, e));
            return;
        }
    };
    // One listing of the blobs instead of a HEAD per object.
    let prefix = repository::blobs_prefix();
    let blobs: HashMap<String, u64> =
        match retry(crate::retry::ATTEMPTS, &prefix, || dest.list(&prefix)).await {
            Ok(l) => l.into_iter().map(|o| (o.key, o.size)).collect(),
            Err(e) => {
                v.problems
                    .push(problem("mlpipeline", &prefix, e.to_string()));
                return;
            }
        };
    let mut unique: HashMap<&str, (u64, &str)> = HashMap::new();
    for e in &manifest.entries {
        unique
            .entry(e.sha256.as_str())
            .or_insert((e.size, e.key.as_str()));
    }
    for (sha, (size, obj)) in &unique {
        v.objects_checked += 1;
        let blob = repository::blob_key(sha);
        match blobs.get(&blob) {
            None => v.problems.push(problem(
                "mlpipeline",
                &blob,
                format!("missing (object {obj})"),
            )),
            Some(s) if s != size => v.problems.push(problem(
                "mlpipeline",
                &blob,
                format!("{s} bytes, object {obj} has {size}"),
            )),
            _ => {}
        }
    }
    if mode == Mode::ReadData {
        progress.step("verify", format!("reading {} blobs back", unique.len()));
        let results: Vec<BlobRead> =
            futures::stream::iter(unique.keys().map(|sha| sha.to_string()))
                .map(|sha| async move {
                    let blob = repository::blob_key(&sha);
                    let mut h = Sha256::new();
                    let mut sink = TapWriter::new(tokio::io::sink(), |b: &[u8]| h.update(b));
                    let r = dest.get_stream(&blob, &mut sink).await;
                    (
                        sha,
                        r.map(|n| (n, hex::encode(h.finalize())))
                            .map_err(|e| e.to_string()),
                    )
                })
                .buffer_unordered(8)
                .collect()
                .await;
        for (sha, r) in results {
            let blob = repository::blob_key(&sha);
            match r {
                Ok((n, got)) => {
                    v.bytes_read += n;
                    if got != sha {
                        v.problems.push(problem(
                            "mlpipeline",
                            &blob,
                            format!("content hash is {got}: the blob is corrupted"),
                        ));
                    }
                }
                // A missing blob was reported by the listing already.
                Err(e) if blobs.contains_key(&blob) => {
                    v.problems.push(problem("mlpipeline", &blob, e))
                }
                Err(_) => {}
            }
        }
    }
}
