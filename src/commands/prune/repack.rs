//! Repacking (format v2): packs that kept backups still reference, but mostly unused, are
//! rewritten so that their unused bytes can go.
//!
//! The order keeps every kept backup whole at every moment of a kill:
//! 1. the referenced blobs of those packs are copied into new packs (each checked against its
//!    hash on the way: a damaged blob is never carried over);
//! 2. each kept backup whose manifest points into them gets a new manifest under a new key,
//!    then its statefile is switched to it in one write, then its old manifest is deleted;
//! 3. only then are the old packs deleted.
//!
//! Killed during 1, the new packs are named by nothing and the next prune deletes them; during
//! 2, each statefile names either its old manifest (whose packs are all still there) or its new
//! one (whose packs were all written in 1). The next prune finds the old packs sparse again and
//! finishes the job.
//!
//! Memory stays flat: the references to move are on local disk in pack order (written by the
//! sweep), the moves go to a sorted table on disk, and manifests are rewritten as streams.

use std::collections::BTreeMap;
use std::io::{BufReader, BufWriter, Read, Write};

use futures::TryStreamExt;

use super::plan::scratch_err;
use super::PruneError;
use crate::components::mlpipeline::packed::{checked_bytes, read_ranges, Grouping};
use crate::context::Context;
use crate::repository::pack_refs::PackRef;
use crate::repository::packer::Packer;
use crate::repository::{self, layout, pack, ManifestWriter, Stored};
use crate::retry::retry;
use crate::sorted::{read_or_end, Record, Table, TableWriter};
use crate::storage::{Deleter, StoreError};

/// Bytes of one pack read at a time while its blobs are copied.
const READ_AT_ONCE: u64 = 4 << 20;

/// What a repack will do, found by the sweep.
#[derive(Debug)]
pub struct RepackPlan {
    /// The references into the packs to repack, in pack then offset order.
    refs: std::fs::File,
    /// The packs to repack, with their sizes.
    pub packs: BTreeMap<[u8; 32], u64>,
    /// Blobs and bytes to copy into new packs.
    pub blobs: u64,
    pub used_bytes: u64,
    /// Kept backups whose manifests point into those packs (filled in by the plan).
    pub backups: Vec<String>,
}

/// Collects, pack by pack, the references of the packs to repack.
pub struct RepackWriter {
    w: BufWriter<std::fs::File>,
    plan: RepackPlan,
}

impl RepackWriter {
    pub fn new(scratch: &std::path::Path) -> std::io::Result<RepackWriter> {
        std::fs::create_dir_all(scratch)?;
        let file = tempfile::tempfile_in(scratch)?;
        Ok(RepackWriter {
            w: BufWriter::new(file.try_clone()?),
            plan: RepackPlan {
                refs: file,
                packs: BTreeMap::new(),
                blobs: 0,
                used_bytes: 0,
                backups: vec![],
            },
        })
    }

    /// One pack to repack (its references in offset order), of `size` bytes.
    pub fn push(&mut self, pack: [u8; 32], refs: &[PackRef], size: u64) -> std::io::Result<()> {
        for r in refs {
            r.write_to(&mut self.w)?;
            self.plan.blobs += 1;
            self.plan.used_bytes += r.length;
        }
        self.plan.packs.insert(pack, size);
        Ok(())
    }

    /// The plan, or `None` when no pack is to be repacked.
    pub fn finish(mut self) -> std::io::Result<Option<RepackPlan>> {
        self.w.flush()?;
        Ok((!self.plan.packs.is_empty()).then_some(self.plan))
    }
}

impl RepackPlan {
    /// Bytes the old packs hold.
    pub fn pack_bytes(&self) -> u64 {
        self.packs.values().sum()
    }

    fn contains(&self, pack: &str) -> bool {
        let mut raw = [0u8; 32];
        hex::decode_to_slice(pack, &mut raw).is_ok() && self.packs.contains_key(&raw)
    }
}

/// Where a repack put one blob: its old place, its new place.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Move {
    old_pack: [u8; 32],
    old_offset: u64,
    new_pack: [u8; 32],
    new_offset: u64,
}

const MOVE_LEN: usize = 80;

impl Record for Move {
    fn write_to(&self, w: &mut impl Write) -> std::io::Result<()> {
        w.write_all(&self.old_pack)?;
        w.write_all(&self.old_offset.to_le_bytes())?;
        w.write_all(&self.new_pack)?;
        w.write_all(&self.new_offset.to_le_bytes())
    }

    fn read_from(r: &mut impl Read) -> std::io::Result<Option<Self>> {
        let mut b = [0u8; MOVE_LEN];
        if !read_or_end(r, &mut b)? {
            return Ok(None);
        }
        let word = |at: usize| u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"));
        Ok(Some(Move {
            old_pack: b[..32].try_into().expect("32 bytes"),
            old_offset: word(32),
            new_pack: b[40..72].try_into().expect("32 bytes"),
            new_offset: word(72),
        }))
    }

    fn footprint(&self) -> usize {
        MOVE_LEN
    }
}

/// What a repack did.
#[derive(Debug, Clone, Default)]
pub struct Repacked {
    pub packs_written: u64,
    pub packs_deleted: u64,
    pub manifests_rewritten: u64,
    pub bytes_freed: u64,
}

fn store_err(key: &str, detail: String) -> PruneError {
    PruneError::Store(StoreError::Fatal {
        op: "repack",
        key: key.to_string(),
        detail,
    })
}

/// Carries out the repack; `still_held` is checked before the old packs are deleted.
pub async fn run<F, Fut>(
    ctx: &Context,
    plan: &RepackPlan,
    still_held: F,
) -> Result<Repacked, PruneError>
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = Result<(), PruneError>>,
{
    let p = &ctx.progress;
    let scratch = ctx.tuning.scratch();
    p.step(
        "repack",
        format!(
            "copying {} blobs ({}) out of {} mostly unused packs",
            plan.blobs,
            crate::units::human_bytes(plan.used_bytes),
            plan.packs.len()
        ),
    );
    let (moves, packs_written) = copy_blobs(ctx, plan, &scratch).await?;
    let mut out = Repacked {
        packs_written,
        ..Repacked::default()
    };
    for id in &plan.backups {
        if let Some(reason) = ctx.interrupt.reason() {
            return Err(PruneError::Interrupted {
                what: "repacking".into(),
                reason,
            });
        }
        p.step("repack", format!("rewriting the manifest of backup {id}"));
        if rewrite(ctx, plan, &moves, id).await? {
            out.manifests_rewritten += 1;
        }
    }
    still_held().await?;
    p.step(
        "repack",
        format!(
            "deleting {} repacked packs ({})",
            plan.packs.len(),
            crate::units::human_bytes(plan.pack_bytes())
        ),
    );
    let mut deleter = Deleter::new(&ctx.dest, ctx.tuning.streaming.delete_batch);
    for id in plan.packs.keys() {
        deleter
            .push(layout::pack_key(&hex::encode(id)))
            .await
            .map_err(PruneError::Delete)?;
    }
    out.packs_deleted = deleter.finish().await.map_err(PruneError::Delete)?;
    out.bytes_freed = plan.pack_bytes().saturating_sub(plan.used_bytes);
    Ok(out)
}

/// Step 1: every referenced blob of the sparse packs into new packs, checked on the way.
async fn copy_blobs(
    ctx: &Context,
    plan: &RepackPlan,
    scratch: &std::path::Path,
) -> Result<(Table<Move>, u64), PruneError> {
    let packer = Packer::new(
        &ctx.dest,
        ctx.tuning.packing.packs,
        scratch,
        ctx.tuning.streaming.sort_memory,
    );
    let mut moves = TableWriter::<Move>::new(scratch, MOVE_LEN).map_err(scratch_err)?;
    let mut reader = BufReader::new(plan.refs.try_clone().map_err(scratch_err)?);
    std::io::Seek::rewind(&mut reader).map_err(scratch_err)?;
    let mut batch: Vec<PackRef> = vec![];
    let mut bytes = 0u64;
    loop {
        let next = PackRef::read_from(&mut reader).map_err(scratch_err)?;
        let flush = match &next {
            None => true,
            Some(r) => {
                batch.first().is_some_and(|f| f.pack != r.pack) || bytes + r.length > READ_AT_ONCE
            }
        };
        if flush && !batch.is_empty() {
            move_batch(ctx, &packer, &batch, &mut moves).await?;
            batch.clear();
            bytes = 0;
        }
        match next {
            Some(r) => {
                bytes += r.length;
                batch.push(r);
            }
            None => break,
        }
    }
    let packed = packer
        .finish(None)
        .await
        .map_err(|e| store_err(&layout::packs_prefix(), e.to_string()))?;
    let table = moves.finish().map_err(scratch_err)?;
    Ok((table, packed.packs.len() as u64))
}

/// Blobs of one pack: read by coalesced ranges, each checked, then packed anew.
async fn move_batch(
    ctx: &Context,
    packer: &Packer,
    batch: &[PackRef],
    moves: &mut TableWriter<Move>,
) -> Result<(), PruneError> {
    let id = hex::encode(batch[0].pack);
    let key = layout::pack_key(&id);
    let wants: Vec<(u64, u64)> = batch.iter().map(|r| (r.offset, r.length)).collect();
    let data = read_ranges(
        &ctx.dest,
        &id,
        &wants,
        Grouping::default().max_gap,
        crate::retry::ATTEMPTS,
    )
    .await?;
    for (r, bytes) in batch.iter().zip(&data) {
        checked_bytes(&r.sha256, r.length, bytes).map_err(|why| {
            store_err(
                &key,
                format!(
                    "bytes {}..{}: {why}: the pack is corrupted, so it is not repacked (run verify-backup --read-data)",
                    r.offset,
                    r.offset + r.length
                ),
            )
        })?;
        let placed = packer
            .put(r.sha256, bytes)
            .await
            .map_err(|e| store_err(&layout::packs_prefix(), e.to_string()))?;
        let mut new_pack = [0u8; 32];
        hex::decode_to_slice(&*placed.pack, &mut new_pack).expect("pack ids are hex");
        moves
            .push(&Move {
                old_pack: r.pack,
                old_offset: r.offset,
                new_pack,
                new_offset: placed.offset,
            })
            .map_err(scratch_err)?;
    }
    Ok(())
}

/// Step 2 for one backup: a new manifest with the moved locations, then the statefile
/// switched to it, then the old manifest deleted. `false` when nothing in it had moved.
async fn rewrite(
    ctx: &Context,
    plan: &RepackPlan,
    moves: &Table<Move>,
    id: &str,
) -> Result<bool, PruneError> {
    let store = &ctx.dest;
    let mut sf = repository::load(store, id).await?;
    let Some(cap) = sf.components.mlpipeline.clone() else {
        return Ok(false);
    };
    let new_key = layout::rewritten_manifest_key(id, &pack::new_pack_id()[..12]);
    let mut w = ManifestWriter::start(store, &new_key);
    let mut moved = 0u64;
    let mut entries =
        repository::manifest::read(store, &cap.manifest_key, Some(&cap.manifest_sha256));
    let copied: Result<(), PruneError> = async {
        while let Some(mut e) = entries
            .try_next()
            .await
            .map_err(|e| store_err(&cap.manifest_key, e.to_string()))?
        {
            if let Stored::Packed { pack, offset } = e.stored() {
                if plan.contains(pack) {
                    let mut old = [0u8; 32];
                    hex::decode_to_slice(pack, &mut old).expect("the reader checks packs");
                    let m = moves
                        .find(|m| (m.old_pack, m.old_offset).cmp(&(old, offset)))
                        .map_err(scratch_err)?
                        .ok_or_else(|| {
                            store_err(
                                &cap.manifest_key,
                                format!("{}: its blob was not repacked", e.key),
                            )
                        })?;
                    e.pack = Some(hex::encode(m.new_pack));
                    e.offset = Some(m.new_offset);
                    moved += 1;
                }
            }
            w.push(&e)
                .await
                .map_err(|e| store_err(&new_key, e.to_string()))?;
        }
        Ok(())
    }
    .await;
    if let Err(e) = copied {
        w.abort(&e.to_string()).await;
        return Err(e);
    }
    if moved == 0 {
        w.abort("nothing moved").await;
        return Ok(false);
    }
    let written = w
        .finish()
        .await
        .map_err(|e| store_err(&new_key, e.to_string()))?;
    let stored = sf.components.mlpipeline.as_mut().expect("checked above");
    stored.manifest_key = new_key;
    stored.manifest_sha256 = written.sha256;
    repository::save(store, &sf).await?;
    let old = cap.manifest_key;
    retry(crate::retry::ATTEMPTS, &old, || store.delete(&old)).await?;
    Ok(true)
}
