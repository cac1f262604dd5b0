//! The prune plan: every statefile read, what the selection forgets, what the kept backups
//! still reference (blobs through their manifests, mysql-k8s backups), what dead runs left.
//!
//! Blobs and packs by mark and sweep over sorted streams: the mark is every v1 hash and every
//! v2 pack reference the kept manifests name, each sorted and made unique with bounded memory
//! (sorted runs spill to disk); the sweep merges them with the listings of `blobs/` and
//! `packs/`, and what no mark matches goes to a key list on disk that `apply` deletes in
//! batches. A pack is deleted only when no kept backup references any blob in it.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use futures::TryStreamExt;

use super::repack::{RepackPlan, RepackWriter};
use super::{dir_of, Forget, Leftover, PruneError, PrunePlan, Selection};
use crate::context::Context;
use crate::repository::pack_refs::{self, PackRef};
use crate::repository::retention::{self, Candidate, Decision};
use crate::repository::{self, CatalogError, MysqlCapture, Phase, Statefile, Stored};
use crate::retry::retry;
use crate::sorted::{join, Hash, HashSorter, Joined, KeyLog, Sorter};
use crate::storage::{ObjectInfo, StoreError};

/// Makes the plan: reads every statefile and the manifests of what stays.
pub async fn plan(ctx: &Context, selection: &Selection) -> Result<PrunePlan, PruneError> {
    let store = &ctx.dest;
    // Backup directories only (a few objects each): blobs are swept as a stream below.
    let objects = store.list(&repository::backups_prefix()).await?;
    let mut by_dir: BTreeMap<String, Vec<&ObjectInfo>> = BTreeMap::new();
    for o in &objects {
        if let Some(id) = dir_of(&o.key) {
            by_dir.entry(id.to_string()).or_default().push(o);
        }
    }
    let mut warnings = vec![];
    let (backups, unreadable) = read_statefiles(ctx, &by_dir, &mut warnings).await?;
    let decisions = decide(ctx, selection, &backups, &mut warnings)?;
    let forgotten: BTreeSet<&str> = decisions
        .iter()
        .filter(|d| !d.keep)
        .map(|d| d.id.as_str())
        .collect();
    let kept = references(ctx, &backups, &forgotten, &unreadable, &objects).await?;
    let forget = forgets(&backups, &forgotten, &by_dir, &kept.mysql);
    let leftovers = leftovers(ctx, &by_dir, &mut warnings).await?;

    let (garbage, mut swept) = match (&kept.gc_blocked, kept.marks, kept.pack_marks) {
        (Some(why), _, _) => {
            warnings.push(format!("no blob or pack is deleted this time: {why}"));
            (None, Swept::default())
        }
        (None, marks, pack_marks) => {
            let (g, s) = sweep(ctx, marks, pack_marks, &kept.pinned, &mut warnings).await?;
            (Some(g), s)
        }
    };
    let (blobs, blob_bytes) = (swept.blobs as usize, swept.blob_bytes);
    let (packs, pack_bytes) = (swept.packs as usize, swept.pack_bytes);
    if let Some(r) = swept.repack.as_mut() {
        r.backups = kept
            .packs_of
            .iter()
            .filter(|(_, used)| used.iter().any(|p| r.packs.contains_key(p)))
            .map(|(id, _)| id.clone())
            .collect();
    }
    let (repack_packs, repack_pack_bytes, repack_copy_bytes) = swept
        .repack
        .as_ref()
        .map_or((0, 0, 0), |r| (r.packs.len(), r.pack_bytes(), r.used_bytes));
    let leftover_bytes = leftovers
        .iter()
        .flat_map(|l| l.keys.iter().map(|k| k.1))
        .sum();
    let bytes_freed = forget.iter().map(|f| f.bytes).sum::<u64>()
        + leftover_bytes
        + blob_bytes
        + pack_bytes
        + repack_pack_bytes.saturating_sub(repack_copy_bytes);
    Ok(PrunePlan {
        selection: match selection {
            Selection::Policy(p) => p.to_string(),
            Selection::One(id) => format!("delete-backup {id}"),
        },
        decisions,
        forget,
        leftover_objects: leftovers.iter().map(|l| l.keys.len()).sum(),
        leftover_bytes,
        blobs,
        blob_bytes,
        packs,
        pack_bytes,
        repack_packs,
        repack_pack_bytes,
        repack_copy_bytes,
        repack: swept.repack.map(Arc::new),
        bytes_freed,
        warnings,
        leftovers,
        garbage: garbage.map(Arc::new),
    })
}

pub(super) fn scratch_err(e: std::io::Error) -> PruneError {
    PruneError::Store(StoreError::Fatal {
        op: "prune",
        key: "scratch".into(),
        detail: format!("sorting on local disk: {e} (pass --spool DIR on a disk with room)"),
    })
}

/// What the sweep found to delete, and the packs to repack.
#[derive(Debug, Default)]
struct Swept {
    blobs: u64,
    blob_bytes: u64,
    packs: u64,
    pack_bytes: u64,
    repack: Option<RepackPlan>,
}

/// The blobs and packs no kept backup names: the listings of `blobs/` and `packs/` merged
/// with the sorted marks, what no mark matches written to one key list on disk.
async fn sweep(
    ctx: &Context,
    marks: HashSorter,
    pack_marks: Sorter<PackRef>,
    pinned: &BTreeSet<[u8; 32]>,
    warnings: &mut Vec<String>,
) -> Result<(KeyLog, Swept), PruneError> {
    ctx.progress.step(
        "plan",
        format!(
            "sorting the kept backups' hashes ({} runs on disk)",
            marks.runs()
        ),
    );
    let marks = marks
        .finish()
        .await
        .map_err(scratch_err)?
        .map_err(scratch_err);
    let blobs = ctx
        .dest
        .list_stream(&repository::blobs_prefix(), ctx.tuning.streaming.page_size)
        .map_err(PruneError::from)
        .try_filter_map(|o| {
            futures::future::ready(Ok(
                repository::blob_of(&o.key).and_then(|sha| Hash::parse(sha, o.size))
            ))
        });
    let mut garbage = KeyLog::new(&ctx.tuning.scratch()).map_err(scratch_err)?;
    let mut swept = Swept::default();
    let mut merged = join(marks, blobs);
    let mut lost = 0u64;
    ctx.progress.step("plan", "listing blobs/ against them");
    while let Some(j) = merged.try_next().await? {
        match j {
            Joined::Right(unused) => {
                garbage
                    .push(&repository::blob_key(&unused.hex()), unused.size)
                    .map_err(scratch_err)?;
                swept.blobs += 1;
                swept.blob_bytes += unused.size;
            }
            Joined::Left(_) => lost += 1,
            Joined::Both(..) => {}
        }
    }
    ctx.progress.step(
        "plan",
        "listing packs/ against the kept backups' references",
    );
    let used =
        pack_refs::by_pack(pack_marks.finish().await.map_err(scratch_err)?).map_err(scratch_err);
    let listed =
        pack_refs::listing(&ctx.dest, ctx.tuning.streaming.page_size).map_err(PruneError::from);
    let mut merged = join(used, listed);
    let mut lost_packs = 0u64;
    let mut repack = RepackWriter::new(&ctx.tuning.scratch()).map_err(scratch_err)?;
    let max_unused = u64::from(ctx.tuning.packing.max_unused.min(100));
    while let Some(j) = merged.try_next().await? {
        match j {
            Joined::Right(unused) => {
                garbage
                    .push(&unused.object_key(), unused.size)
                    .map_err(scratch_err)?;
                swept.packs += 1;
                swept.pack_bytes += unused.size;
            }
            Joined::Left(_) => lost_packs += 1,
            Joined::Both(used, listed) => {
                let unused = used.unused(listed.size);
                if unused * 100 > max_unused * listed.size && !pinned.contains(&used.pack) {
                    repack
                        .push(used.pack, &used.refs, listed.size)
                        .map_err(scratch_err)?;
                }
            }
        }
    }
    swept.repack = repack.finish().map_err(scratch_err)?;
    garbage.seal().map_err(scratch_err)?;
    if lost > 0 {
        warnings.push(format!(
            "{lost} blob(s) that kept backups name are missing: run verify-backup on them"
        ));
    }
    if lost_packs > 0 {
        warnings.push(format!(
            "{lost_packs} pack(s) that kept backups name are missing: run verify-backup on them"
        ));
    }
    Ok((garbage, swept))
}

/// Every readable statefile, and the ids of those that cannot be read (kept, with a warning).
async fn read_statefiles(
    ctx: &Context,
    by_dir: &BTreeMap<String, Vec<&ObjectInfo>>,
    warnings: &mut Vec<String>,
) -> Result<(Vec<Statefile>, Vec<String>), PruneError> {
    let store = &ctx.dest;
    let mut backups: Vec<Statefile> = vec![];
    let mut unreadable: Vec<String> = vec![];
    for (id, objs) in by_dir {
        let key = repository::statefile_key(id);
        if !objs.iter().any(|o| o.key == key) {
            continue;
        }
        let bytes = retry(crate::retry::ATTEMPTS, &key, || store.get_bytes(&key)).await?;
        match Statefile::parse(&key, &bytes) {
            Ok(sf) => backups.push(sf),
            Err(e) => {
                warnings.push(format!(
                    "backup {id} is kept: its statefile cannot be read ({e})"
                ));
                unreadable.push(id.clone());
            }
        }
    }
    Ok((backups, unreadable))
}

/// Keep or forget, for every backup, newest first.
fn decide(
    ctx: &Context,
    selection: &Selection,
    backups: &[Statefile],
    warnings: &mut Vec<String>,
) -> Result<Vec<Decision>, PruneError> {
    Ok(match selection {
        Selection::Policy(p) => {
            if p.is_empty() {
                return Err(PruneError::NoPolicy);
            }
            let candidates: Vec<Candidate> = backups
                .iter()
                .map(|b| Candidate {
                    id: b.backup_id.clone(),
                    time: b.started_at,
                    phase: b.phase,
                })
                .collect();
            retention::apply(p, &candidates)
        }
        Selection::One(id) => {
            if !repository::is_backup_id(id) {
                return Err(CatalogError::BadId { id: id.clone() }.into());
            }
            // Read above with every other statefile (an unreadable one is kept, not deleted).
            let sf = backups.iter().find(|b| b.backup_id == *id).ok_or_else(|| {
                CatalogError::NoSuchBackup {
                    id: id.clone(),
                    store: ctx.dest.describe(),
                }
            })?;
            if !matches!(
                sf.phase,
                Phase::Completed | Phase::Failed | Phase::PartiallyFailed
            ) {
                return Err(PruneError::Running {
                    id: id.clone(),
                    phase: sf.phase.as_str().into(),
                });
            }
            let newest_completed = backups
                .iter()
                .filter(|b| b.phase == Phase::Completed)
                .max_by_key(|b| (b.started_at, b.backup_id.clone()))
                .map(|b| b.backup_id.clone());
            if newest_completed.as_deref() == Some(id.as_str()) {
                warnings.push(format!(
                    "{id} is the newest completed backup: after this, the newest one to restore is older"
                ));
            }
            let mut sorted: Vec<&Statefile> = backups.iter().collect();
            sorted.sort_by(|a, b| (b.started_at, &b.backup_id).cmp(&(a.started_at, &a.backup_id)));
            sorted
                .iter()
                .map(|b| Decision {
                    id: b.backup_id.clone(),
                    keep: b.backup_id != *id,
                    reasons: if b.backup_id == *id {
                        vec![]
                    } else {
                        vec!["not selected".into()]
                    },
                })
                .collect()
        }
    })
}

/// What the backups that stay still reference.
struct Kept {
    /// The v1 blobs their manifests name, by hash, being sorted.
    marks: HashSorter,
    /// The v2 pack references of their manifests, being sorted by pack.
    pack_marks: Sorter<PackRef>,
    /// The packs each kept backup (by id) points into: whose manifests a repack rewrites.
    packs_of: BTreeMap<String, BTreeSet<[u8; 32]>>,
    /// Packs a backup points into whose statefile cannot be read (so cannot be rewritten):
    /// never repacked.
    pinned: BTreeSet<[u8; 32]>,
    /// (application, mysql-k8s backup id) they name.
    mysql: BTreeSet<(String, String)>,
    /// Why no blob may be deleted this time, if one may not.
    gc_blocked: Option<String>,
}

/// Marks every blob and pack reference of one manifest; an error means it could not be read
/// whole.
async fn mark(
    ctx: &Context,
    key: &str,
    sha: Option<&str>,
    marks: &mut HashSorter,
    pack_marks: &mut Sorter<PackRef>,
    packs: &mut BTreeSet<[u8; 32]>,
) -> Result<(), String> {
    let mut entries = repository::manifest::read(&ctx.dest, key, sha);
    let sorting = |e: std::io::Error| format!("sorting hashes: {e}");
    while let Some(e) = entries.try_next().await.map_err(|e| e.to_string())? {
        match e.stored() {
            Stored::Empty => {}
            Stored::Blob(sha) => {
                let h = Hash::parse(sha, e.size).expect("the manifest reader checks hashes");
                marks.push(h).await.map_err(sorting)?;
            }
            Stored::Packed { .. } => {
                let r = PackRef::of(&e).expect("the manifest reader checks packs");
                packs.insert(r.pack);
                pack_marks.push(r).await.map_err(sorting)?;
            }
        }
    }
    Ok(())
}

/// Reads the manifest of every backup that stays (and of unreadable ones: they stay too).
async fn references(
    ctx: &Context,
    backups: &[Statefile],
    forgotten: &BTreeSet<&str>,
    unreadable: &[String],
    objects: &[ObjectInfo],
) -> Result<Kept, PruneError> {
    let mut marks = HashSorter::new(&ctx.tuning.scratch(), ctx.tuning.streaming.sort_memory);
    let mut pack_marks = Sorter::<PackRef>::with(
        &ctx.tuning.scratch(),
        ctx.tuning.streaming.sort_memory,
        true,
    );
    let mut packs_of: BTreeMap<String, BTreeSet<[u8; 32]>> = BTreeMap::new();
    let mut pinned: BTreeSet<[u8; 32]> = BTreeSet::new();
    let mut kept_mysql: BTreeSet<(String, String)> = BTreeSet::new();
    let mut gc_blocked: Option<String> = None;
    for b in backups
        .iter()
        .filter(|b| !forgotten.contains(b.backup_id.as_str()))
    {
        if !matches!(
            b.phase,
            Phase::Completed | Phase::Failed | Phase::PartiallyFailed
        ) {
            gc_blocked = Some(format!(
                "backup {} is {}: its blobs may not be in a manifest yet",
                b.backup_id,
                b.phase.as_str()
            ));
        }
        for m in &b.components.mysql {
            kept_mysql.insert((m.app.clone(), m.backup_id.clone()));
        }
        // A manifest a kept backup's statefile names must be read, listed or not: missing or
        // unreadable, no blob is deleted this time.
        if let Some(cap) = &b.components.mlpipeline {
            ctx.progress
                .step("plan", format!("marking what backup {} uses", b.backup_id));
            let packs = packs_of.entry(b.backup_id.clone()).or_default();
            if let Err(e) = mark(
                ctx,
                &cap.manifest_key,
                Some(&cap.manifest_sha256),
                &mut marks,
                &mut pack_marks,
                packs,
            )
            .await
            {
                gc_blocked = Some(format!("the manifest of kept backup {}: {e}", b.backup_id))
            }
        }
    }
    for id in unreadable {
        let key = repository::manifest_key(id);
        if objects.iter().any(|o| o.key == key) {
            if let Err(e) = mark(ctx, &key, None, &mut marks, &mut pack_marks, &mut pinned).await {
                gc_blocked = Some(format!("the manifest of backup {id}: {e}"));
            }
        }
    }
    Ok(Kept {
        marks,
        pack_marks,
        packs_of,
        pinned,
        mysql: kept_mysql,
        gc_blocked,
    })
}

/// The backups to forget, each with its own objects (statefile first) and the mysql-k8s
/// backups no kept backup names.
fn forgets(
    backups: &[Statefile],
    forgotten: &BTreeSet<&str>,
    by_dir: &BTreeMap<String, Vec<&ObjectInfo>>,
    kept_mysql: &BTreeSet<(String, String)>,
) -> Vec<Forget> {
    let mut forget = vec![];
    for b in backups
        .iter()
        .filter(|b| forgotten.contains(b.backup_id.as_str()))
    {
        let objs = by_dir.get(&b.backup_id).cloned().unwrap_or_default();
        // The statefile first: once it is gone the backup is forgotten.
        let statefile = repository::statefile_key(&b.backup_id);
        let mut keys: Vec<String> = vec![statefile.clone()];
        keys.extend(
            objs.iter()
                .map(|o| o.key.clone())
                .filter(|k| *k != statefile),
        );
        forget.push(Forget {
            id: b.backup_id.clone(),
            phase: b.phase.as_str().into(),
            label: b.label.clone(),
            started_at: b.started_at,
            objects: objs.len(),
            bytes: objs.iter().map(|o| o.size).sum(),
            mysql: b
                .components
                .mysql
                .iter()
                .filter(|m| !kept_mysql.contains(&(m.app.clone(), m.backup_id.clone())))
                .cloned()
                .collect(),
            keys,
        });
    }
    forget.sort_by(|a, b| a.id.cmp(&b.id));
    forget
}

/// Backup directories without a statefile: what an interrupted forget (its tombstone names
/// the mysql-k8s backups still to go) or a run killed before its first record left.
async fn leftovers(
    ctx: &Context,
    by_dir: &BTreeMap<String, Vec<&ObjectInfo>>,
    warnings: &mut Vec<String>,
) -> Result<Vec<Leftover>, PruneError> {
    let store = &ctx.dest;
    let with_statefile: BTreeSet<&str> = by_dir
        .iter()
        .filter(|(id, objs)| {
            let key = repository::statefile_key(id);
            objs.iter().any(|o| o.key == key)
        })
        .map(|(id, _)| id.as_str())
        .collect();
    let mut leftovers: Vec<Leftover> = vec![];
    for (id, objs) in by_dir
        .iter()
        .filter(|(id, _)| !with_statefile.contains(id.as_str()))
    {
        let tomb = repository::tombstone_key(id);
        let mysql = if objs.iter().any(|o| o.key == tomb) {
            let bytes = retry(crate::retry::ATTEMPTS, &tomb, || store.get_bytes(&tomb)).await?;
            match serde_json::from_slice::<serde_json::Value>(&bytes)
                .ok()
                .and_then(|v| serde_json::from_value::<Vec<MysqlCapture>>(v["mysql"].clone()).ok())
            {
                Some(m) => m,
                None => {
                    warnings.push(format!(
                        "{tomb} cannot be read: its directory is left as it is"
                    ));
                    continue;
                }
            }
        } else {
            vec![]
        };
        // The tombstone last.
        let mut keys: Vec<(String, u64)> = objs
            .iter()
            .filter(|o| o.key != tomb)
            .map(|o| (o.key.clone(), o.size))
            .collect();
        keys.extend(
            objs.iter()
                .filter(|o| o.key == tomb)
                .map(|o| (o.key.clone(), o.size)),
        );
        leftovers.push(Leftover {
            id: id.clone(),
            keys,
            mysql,
        });
    }
    Ok(leftovers)
}
