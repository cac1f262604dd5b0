//! The bucket's part of a check: the manifest matches the statefile's hash; every v1 blob it
//! names is there with its size, and every v2 pack it points into is there and long enough;
//! read back, every blob (alone or inside its pack) hashes to its name.
//!
//! Streamed: the manifest's v1 hashes and v2 pack references are sorted (on disk past the sort
//! buffer) into the order of the `blobs/` and `packs/` listings, and each is merged with its
//! listing. Memory does not grow with the number of objects, blobs or packs.

use std::collections::BTreeMap;

use futures::TryStreamExt;
use sha2::{Digest, Sha256};

use super::packed::{hash_range, visit_ranges, Grouping};
use super::IN_MEMORY_MAX;
use crate::components::check::{problem, CheckContext, Mode, Problem, Sample, Verification};
use crate::repository::pack_refs::{self, PackRef, PackUse};
use crate::repository::{self, layout, pack, Statefile, Stored};
use crate::retry::retry;
use crate::sorted::{join, Hash, HashSorter, Joined, Sorter};
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
    f.v.objects_checked += 1;
    // The manifest's v1 blobs by hash and its v2 pack references by pack, each sorted and
    // made unique. Empty objects need no stored bytes.
    let mut hashes = HashSorter::new(cx.spool, cx.streaming.sort_memory);
    let mut refs = Sorter::<PackRef>::with(cx.spool, cx.streaming.sort_memory, true);
    let (mut blobs_named, mut packed_named) = (0u64, 0u64);
    let mut entries = repository::manifest::read(dest, key, Some(&p.manifest_sha256));
    let sorting = |e: std::io::Error| stop(key)(format!("sorting hashes: {e}"));
    while let Some(e) = entries
        .try_next()
        .await
        .map_err(|e| stop(key)(e.to_string()))?
    {
        match e.stored() {
            Stored::Empty => {}
            Stored::Blob(sha) => {
                let h = Hash::parse(sha, e.size).expect("the manifest reader checks hashes");
                hashes.push(h).await.map_err(sorting)?;
                blobs_named += 1;
            }
            Stored::Packed { .. } => {
                let r = PackRef::of(&e).expect("the manifest reader checks packs");
                refs.push(r).await.map_err(sorting)?;
                packed_named += 1;
            }
        }
    }
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
    let mut missing: Missing = BTreeMap::new();
    if blobs_named > 0 {
        check_v1(cx, hashes, sample, &mut missing, f).await?;
    }
    let mut corrupt = Corrupt::new();
    if packed_named > 0 {
        check_packs(cx, refs, sample, &mut missing, &mut corrupt, f).await?;
    }
    if !missing.is_empty() {
        name_missing(dest, p, &missing, f).await;
    }
    if !corrupt.is_empty() {
        name_corrupt(dest, p, corrupt, f).await;
    }
    Ok(())
}

/// Blobs inside packs whose bytes do not hash to their name, by (pack, offset): what they hash
/// to, and (after a pass over the manifest) the objects whose bytes they are.
type Corrupt = BTreeMap<([u8; 32], u64), (PackRef, String, Vec<String>)>;

/// Objects named per corrupted blob (the same bytes may stand for many keys).
const KEYS_NAMED: usize = 3;

/// Names the objects whose bytes are corrupted inside a pack (a second pass over the manifest,
/// only when some are): what an operator needs to know is which artifacts are damaged.
async fn name_corrupt(
    dest: &Store,
    p: &repository::MlpipelineCapture,
    mut corrupt: Corrupt,
    f: &mut Findings<'_>,
) {
    let mut entries = repository::manifest::read(dest, &p.manifest_key, None);
    while let Ok(Some(e)) = entries.try_next().await {
        if let Some(r) = PackRef::of(&e) {
            if let Some((_, _, keys)) = corrupt.get_mut(&(r.pack, r.offset)) {
                if keys.len() < KEYS_NAMED {
                    keys.push(e.key);
                }
            }
        }
    }
    for (r, got, keys) in corrupt.into_values() {
        f.push(problem(
            "mlpipeline",
            &layout::pack_key(&hex::encode(r.pack)),
            format!(
                "bytes {}..{} hash to {got}, the manifest says {}: the pack is corrupted; objects affected: {}",
                r.offset,
                r.offset + r.length,
                hex::encode(r.sha256),
                if keys.is_empty() { "?".to_string() } else { keys.join(", ") }
            ),
        ));
    }
}

fn stop(key: &str) -> impl Fn(String) -> Problem + '_ {
    move |e: String| problem("mlpipeline", key, e)
}

fn sort_failed(e: std::io::Error) -> StoreError {
    StoreError::Fatal {
        op: "sort",
        key: "hashes".into(),
        detail: e.to_string(),
    }
}

/// Stored bytes that are gone, by what held them (a blob's hash or a pack's id): named with an
/// object of the manifest after the passes.
type Missing = BTreeMap<Holder, ()>;

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Holder {
    Blob([u8; 32]),
    Pack([u8; 32]),
}

impl Holder {
    fn key(&self) -> String {
        match self {
            Holder::Blob(sha) => repository::blob_key(&hex::encode(sha)),
            Holder::Pack(id) => layout::pack_key(&hex::encode(id)),
        }
    }

    /// What holds `e`'s bytes (nothing for an empty object).
    fn of(e: &repository::Entry) -> Option<Holder> {
        let raw = |h: &str| {
            let mut b = [0u8; 32];
            hex::decode_to_slice(h, &mut b).ok().map(|()| b)
        };
        match e.stored() {
            Stored::Empty => None,
            Stored::Blob(sha) => raw(sha).map(Holder::Blob),
            Stored::Packed { pack, .. } => raw(pack).map(Holder::Pack),
        }
    }
}

fn note_missing(missing: &mut Missing, h: Holder, f: &mut Findings<'_>) {
    if missing.len() < PROBLEMS_SHOWN {
        missing.insert(h, ());
    } else {
        f.more += 1;
    }
}

/// Format v1: the wanted hashes merged with the listing of `blobs/`, read back as sampled.
async fn check_v1(
    cx: &CheckContext<'_>,
    hashes: HashSorter,
    sample: Option<Sample>,
    missing: &mut Missing,
    f: &mut Findings<'_>,
) -> Result<(), Problem> {
    let dest = cx.dest;
    let prefix = repository::blobs_prefix();
    let marks = hashes
        .finish()
        .await
        .map_err(|e| stop(&prefix)(format!("sorting hashes: {e}")))?
        .map_err(sort_failed);
    let blobs = dest
        .list_stream(&prefix, cx.streaming.page_size)
        .try_filter_map(|o| futures::future::ready(Ok(listed_blob(o))));
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
        .try_buffer_unordered(if sample.is_some() { READERS } else { 1 });
    let mut found = std::pin::pin!(found);
    while let Some(found) = found
        .try_next()
        .await
        .map_err(|e| stop(&prefix)(e.to_string()))?
    {
        f.v.objects_checked += 1;
        match found {
            Found::Missing(h) => note_missing(missing, Holder::Blob(h.sha256), f),
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
    Ok(())
}

/// What the merge of the referenced packs with the listing of `packs/` found for one pack.
enum PackFound {
    Missing(PackUse),
    /// Shorter than its references reach, with its listed size.
    Short(PackUse, u64),
    /// There and long enough; read back when `--read-data` samples it.
    Present(PackUse),
    Read(PackUse, Result<PackRead, StoreError>),
}

/// One pack read back: blobs and bytes read, and the blobs whose bytes do not hash to their
/// name (with what they hash to).
#[derive(Default)]
struct PackRead {
    blobs: u64,
    bytes: u64,
    bad: Vec<(PackRef, String)>,
}

/// A span of one pack read back by `--read-data` at a time: [`READERS`] of them in memory.
const READ_SPAN: u64 = 4 << 20;

/// Format v2: the referenced packs merged with the listing of `packs/`; each must be there and
/// long enough for every reference (plus its footer); read back, every sampled blob inside
/// must hash to its name.
async fn check_packs(
    cx: &CheckContext<'_>,
    refs: Sorter<PackRef>,
    sample: Option<Sample>,
    missing: &mut Missing,
    corrupt: &mut Corrupt,
    f: &mut Findings<'_>,
) -> Result<(), Problem> {
    let dest = cx.dest;
    let prefix = layout::packs_prefix();
    let refs = refs
        .finish()
        .await
        .map_err(|e| stop(&prefix)(format!("sorting pack references: {e}")))?
        .map_err(sort_failed);
    let listed = pack_refs::listing(dest, cx.streaming.page_size);
    let found = join(pack_refs::by_pack(refs), listed)
        .try_filter_map(|j| {
            futures::future::ready(Ok(match j {
                Joined::Left(used) => Some(PackFound::Missing(used)),
                Joined::Both(used, got) if got.size < used.end() + pack::FOOTER_LEN => {
                    Some(PackFound::Short(used, got.size))
                }
                Joined::Both(used, _) => Some(PackFound::Present(used)),
                Joined::Right(_) => None,
            }))
        })
        .map_ok(|found| async move {
            let (used, sample) = match (found, sample) {
                (PackFound::Present(used), Some(sample)) => (used, sample),
                (other, _) => return Ok(other),
            };
            // A large blob (a pack of its own) is hashed as it streams, never held whole.
            let (large, picked): (Vec<&PackRef>, Vec<&PackRef>) = used
                .refs
                .iter()
                .filter(|r| sample.picks(&r.sha256))
                .partition(|r| r.length > IN_MEMORY_MAX);
            let wants: Vec<(u64, u64)> = picked.iter().map(|r| (r.offset, r.length)).collect();
            let mut got = PackRead::default();
            let read = visit_ranges(
                dest,
                &used.id(),
                &wants,
                (Grouping::default().max_gap, READ_SPAN),
                crate::retry::ATTEMPTS,
                |i, b| {
                    got.blobs += 1;
                    got.bytes += b.len() as u64;
                    let sha: [u8; 32] = Sha256::digest(b).into();
                    if sha != picked[i].sha256 {
                        got.bad.push((picked[i].clone(), hex::encode(sha)));
                    }
                },
            )
            .await;
            let mut read = read;
            for r in large {
                if read.is_err() {
                    break;
                }
                let span = (r.offset, r.length);
                read = hash_range(dest, &used.id(), span, crate::retry::ATTEMPTS)
                    .await
                    .map(|sha| {
                        got.blobs += 1;
                        got.bytes += r.length;
                        if sha != r.sha256 {
                            got.bad.push((r.clone(), hex::encode(sha)));
                        }
                    });
            }
            let r = read.map(|()| got);
            Ok::<_, StoreError>(PackFound::Read(used, r))
        })
        .try_buffer_unordered(if sample.is_some() { READERS } else { 1 });
    let mut found = std::pin::pin!(found);
    while let Some(found) = found
        .try_next()
        .await
        .map_err(|e| stop(&prefix)(e.to_string()))?
    {
        f.v.objects_checked += 1;
        match found {
            PackFound::Missing(used) => note_missing(missing, Holder::Pack(used.pack), f),
            PackFound::Short(used, size) => f.push(problem(
                "mlpipeline",
                &used.object_key(),
                format!(
                    "{size} bytes, but the manifest places bytes up to {} in it: the pack is damaged",
                    used.end()
                ),
            )),
            PackFound::Present(_) => {}
            PackFound::Read(_, Ok(read)) => {
                f.v.blobs_read += read.blobs;
                f.v.bytes_read += read.bytes;
                for (r, got) in read.bad {
                    if corrupt.len() < PROBLEMS_SHOWN {
                        corrupt.insert((r.pack, r.offset), (r, got, vec![]));
                    } else {
                        f.more += 1;
                    }
                }
            }
            PackFound::Read(used, Err(e)) => {
                f.push(problem("mlpipeline", &used.object_key(), e.to_string()))
            }
        }
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

/// Names an object for each missing blob or pack (a second pass over the manifest, only when
/// something is missing: what an operator needs to know is which artifacts are lost).
async fn name_missing(
    dest: &Store,
    p: &repository::MlpipelineCapture,
    missing: &Missing,
    f: &mut Findings<'_>,
) {
    let mut named: BTreeMap<Holder, String> = BTreeMap::new();
    let mut entries = repository::manifest::read(dest, &p.manifest_key, None);
    while let Ok(Some(e)) = entries.try_next().await {
        if let Some(h) = Holder::of(&e).filter(|h| missing.contains_key(h)) {
            named.entry(h).or_insert(e.key);
        }
    }
    for h in missing.keys() {
        let obj = named.get(h).map_or("?", String::as_str);
        let what = match h {
            Holder::Blob(_) => format!("missing (object {obj})"),
            Holder::Pack(_) => format!("missing: the bytes of object {obj} and others were in it"),
        };
        f.push(problem("mlpipeline", &h.key(), what));
    }
}
