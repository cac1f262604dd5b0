//! The prune plan: every statefile read, what the selection forgets, what the kept backups
//! still reference (blobs through their manifests, mysql-k8s backups), what dead runs left.
//!
//! Blobs by mark and sweep over sorted streams: the mark is every hash the kept manifests
//! name, sorted and made unique with bounded memory (sorted runs spill to disk); the sweep
//! merges it with the listing of `blobs/`, and what no mark matches goes to a key list on
//! disk that `apply` deletes in batches.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use futures::TryStreamExt;

use super::{dir_of, Forget, Leftover, PruneError, PrunePlan, Selection};
use crate::context::Context;
use crate::repository::retention::{self, Candidate, Decision};
use crate::repository::{self, CatalogError, MysqlCapture, Phase, Statefile};
use crate::retry::retry;
use crate::sorted::{join, Hash, HashSorter, Joined, KeyLog};
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

    let garbage = match (&kept.gc_blocked, kept.marks) {
        (Some(why), _) => {
            warnings.push(format!("no blob is deleted this time: {why}"));
            None
        }
        (None, marks) => Some(sweep(ctx, marks, &mut warnings).await?),
    };
    let (blobs, blob_bytes) = garbage
        .as_ref()
        .map_or((0, 0), |g| (g.len() as usize, g.bytes()));
    let leftover_bytes = leftovers
        .iter()
        .flat_map(|l| l.keys.iter().map(|k| k.1))
        .sum();
    let bytes_freed = forget.iter().map(|f| f.bytes).sum::<u64>() + leftover_bytes + blob_bytes;
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

/// The blobs no kept backup names: the listing of `blobs/` merged with the sorted marks.
async fn sweep(
    ctx: &Context,
    marks: HashSorter,
    warnings: &mut Vec<String>,
) -> Result<KeyLog, PruneError> {
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
    let mut merged = join(marks, blobs);
    let mut lost = 0u64;
    ctx.progress.step("plan", "listing blobs/ against them");
    while let Some(j) = merged.try_next().await? {
        match j {
            Joined::Right(unused) => garbage
                .push(&repository::blob_key(&unused.hex()), unused.size)
                .map_err(scratch_err)?,
            Joined::Left(_) => lost += 1,
            Joined::Both(..) => {}
        }
    }
    garbage.seal().map_err(scratch_err)?;
    if lost > 0 {
        warnings.push(format!(
            "{lost} blob(s) that kept backups name are missing: run verify-backup on them"
        ));
    }
    Ok(garbage)
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
    /// The hashes their manifests name, being sorted.
    marks: HashSorter,
    /// (application, mysql-k8s backup id) they name.
    mysql: BTreeSet<(String, String)>,
    /// Why no blob may be deleted this time, if one may not.
    gc_blocked: Option<String>,
}

/// Marks every hash of one manifest; an error means it could not be read whole.
async fn mark(
    ctx: &Context,
    key: &str,
    sha: Option<&str>,
    marks: &mut HashSorter,
) -> Result<(), String> {
    let mut entries = repository::manifest::read(&ctx.dest, key, sha);
    while let Some(e) = entries.try_next().await.map_err(|e| e.to_string())? {
        let h = Hash::parse(&e.sha256, e.size).expect("the manifest reader checks hashes");
        marks
            .push(h)
            .await
            .map_err(|e| format!("sorting hashes: {e}"))?;
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
            if let Err(e) = mark(
                ctx,
                &cap.manifest_key,
                Some(&cap.manifest_sha256),
                &mut marks,
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
            if let Err(e) = mark(ctx, &key, None, &mut marks).await {
                gc_blocked = Some(format!("the manifest of backup {id}: {e}"));
            }
        }
    }
    Ok(Kept {
        marks,
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
