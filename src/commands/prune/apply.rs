//! Carrying out a prune plan in the order that keeps every kept backup whole at every moment.

use futures::TryStreamExt;

use super::plan::scratch_err;
use super::{PruneError, PrunePlan, PruneReport};
use crate::commands::recover::{self, RecoveryError};
use crate::components::mysql;
use crate::context::Context;
use crate::repository::tombstone_key;
use crate::retry::retry;
use crate::sorted::KeyLog;
use crate::storage::Deleter;

/// Deletes the keys of `log` in batches, with progress; stops between batches when asked.
async fn delete_all(ctx: &Context, log: &KeyLog, what: &str) -> Result<(u64, u64), PruneError> {
    let total = log.len();
    let mut deleter = Deleter::new(&ctx.dest, ctx.tuning.streaming.delete_batch);
    let mut keys = log.read().map_err(scratch_err)?;
    let (mut queued, mut bytes) = (0u64, 0u64);
    while let Some((key, size)) = keys.try_next().await.map_err(scratch_err)? {
        if let Some(reason) = ctx.interrupt.reason() {
            return Err(PruneError::Interrupted {
                what: format!("deleting {what}"),
                reason,
            });
        }
        deleter.push(key).await.map_err(PruneError::Delete)?;
        queued += 1;
        bytes += size;
        if queued % 1000 == 0 || queued == total {
            ctx.progress.emit(crate::progress::Event::Transfer {
                component: what.to_string(),
                done_bytes: bytes,
                total_bytes: None,
                done_objects: deleter.deleted(),
                total_objects: Some(total),
            });
        }
    }
    let n = deleter.finish().await.map_err(PruneError::Delete)?;
    Ok((n, bytes))
}

/// Deletes what the plan names, in the safe order; `lock` is checked before the blobs.
pub async fn apply(
    ctx: &Context,
    mut plan: PrunePlan,
    recovered: recover::Recovered,
    lock: &crate::repository::lock::Lease,
) -> Result<PruneReport, PruneError> {
    let p = &ctx.progress;
    let mut warnings = vec![];
    let mut mysql_deleted = vec![];
    let mut objects_deleted = 0;
    let mut bytes_freed = 0;
    let mut forgotten = vec![];
    let stopped = |what: &str| {
        ctx.interrupt
            .reason()
            .map(|reason| PruneError::Interrupted {
                what: what.into(),
                reason,
            })
    };
    for f in &plan.forget {
        if let Some(e) = stopped("forgetting backups") {
            return Err(e);
        }
        p.step("forget", format!("forgetting backup {}", f.id));
        let tomb = tombstone_key(&f.id);
        let body = serde_json::to_vec_pretty(&serde_json::json!({
            "backup-id": f.id,
            "mysql": f.mysql,
        }))
        .expect("tombstone serializes");
        retry(crate::retry::ATTEMPTS, &tomb, || {
            ctx.dest.put_bytes(&tomb, &body, "application/json")
        })
        .await?;
        // Statefile first (f.keys starts with it): from here on the backup is forgotten.
        for key in &f.keys {
            retry(crate::retry::ATTEMPTS, key, || ctx.dest.delete(key)).await?;
            objects_deleted += 1;
        }
        bytes_freed += f.bytes;
        if mysql::forget_many(ctx, &f.id, &f.mysql, &mut mysql_deleted, &mut warnings).await {
            retry(crate::retry::ATTEMPTS, &tomb, || ctx.dest.delete(&tomb)).await?;
        }
        forgotten.push(f.id.clone());
    }
    for l in std::mem::take(&mut plan.leftovers) {
        if let Some(e) = stopped("deleting leftovers") {
            return Err(e);
        }
        p.step(
            "forget",
            format!(
                "finishing the forgetting of {} ({} objects left)",
                l.id,
                l.keys.len()
            ),
        );
        if !mysql::forget_many(ctx, &l.id, &l.mysql, &mut mysql_deleted, &mut warnings).await {
            continue;
        }
        for (key, size) in &l.keys {
            retry(crate::retry::ATTEMPTS, key, || ctx.dest.delete(key)).await?;
            objects_deleted += 1;
            bytes_freed += size;
        }
    }
    if let Some(garbage) = plan.garbage.clone().filter(|g| !g.is_empty()) {
        // Never beside another holder: a backup running under a lock we lost could be relying
        // on a blob we are about to delete.
        lock.still_held()
            .await
            .map_err(|e| PruneError::Lock(Box::new(RecoveryError::Lock(Box::new(e)))))?;
        let what = if plan.packs > 0 {
            "blobs and packs"
        } else {
            "blobs"
        };
        p.step(
            "forget",
            format!(
                "deleting {} {what} ({}) that no kept backup uses",
                garbage.len(),
                crate::units::human_bytes(garbage.bytes())
            ),
        );
        let (n, b) = delete_all(ctx, &garbage, what).await?;
        objects_deleted += n;
        bytes_freed += b;
    }
    if let Some(r) = plan.repack.clone() {
        if let Some(e) = stopped("repacking") {
            return Err(e);
        }
        let held = || async {
            lock.still_held()
                .await
                .map_err(|e| PruneError::Lock(Box::new(RecoveryError::Lock(Box::new(e)))))
        };
        let done = super::repack::run(ctx, &r, held).await?;
        objects_deleted += done.packs_deleted;
        bytes_freed += done.bytes_freed;
        p.done(
            "repack",
            format!(
                "{} packs rewritten into {}, {} manifests switched",
                done.packs_deleted, done.packs_written, done.manifests_rewritten
            ),
        );
    }
    p.step(
        "done",
        format!(
            "forgot {} backup(s), deleted {objects_deleted} objects, freed {}",
            forgotten.len(),
            crate::units::human_bytes(bytes_freed)
        ),
    );
    let mut all_warnings = plan.warnings.clone();
    all_warnings.extend(warnings);
    Ok(PruneReport {
        plan,
        forgotten,
        objects_deleted,
        bytes_freed,
        mysql_deleted,
        recovered,
        warnings: all_warnings,
    })
}
