//! Carrying out a prune plan in the order that keeps every kept backup whole at every moment.

use futures::{StreamExt, TryStreamExt};

use super::{PruneError, PrunePlan, PruneReport};
use crate::commands::recover::{self, RecoveryError};
use crate::components::mysql;
use crate::context::Context;
use crate::repository::tombstone_key;
use crate::retry::retry;

async fn delete_all(
    ctx: &Context,
    keys: Vec<(String, u64)>,
    what: &str,
) -> Result<(u64, u64), PruneError> {
    let store = &ctx.dest;
    let total = keys.len() as u64;
    let done = std::sync::atomic::AtomicU64::new(0);
    let bytes = std::sync::atomic::AtomicU64::new(0);
    let stop = ctx.interrupt.clone();
    futures::stream::iter(keys)
        .map(|(key, size)| {
            let (done, bytes, stop) = (&done, &bytes, &stop);
            async move {
                if let Some(reason) = stop.reason() {
                    return Err(PruneError::Interrupted {
                        what: format!("deleting {what}"),
                        reason,
                    });
                }
                retry(crate::retry::ATTEMPTS, &key, || store.delete(&key)).await?;
                bytes.fetch_add(size, std::sync::atomic::Ordering::Relaxed);
                let n = done.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
                if n % 100 == 0 || n == total {
                    ctx.progress.emit(crate::progress::Event::Transfer {
                        component: what.to_string(),
                        done_bytes: bytes.load(std::sync::atomic::Ordering::Relaxed),
                        total_bytes: None,
                        done_objects: n,
                        total_objects: Some(total),
                    });
                }
                Ok::<(), PruneError>(())
            }
        })
        .buffer_unordered(ctx.tuning.transfers.max(1))
        .try_collect::<Vec<()>>()
        .await?;
    Ok((done.into_inner(), bytes.into_inner()))
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
    if !plan.blob_keys.is_empty() {
        // Never beside another holder: a backup running under a lock we lost could be relying
        // on a blob we are about to delete.
        lock.still_held()
            .await
            .map_err(|e| PruneError::Lock(Box::new(RecoveryError::Lock(Box::new(e)))))?;
        p.step(
            "forget",
            format!(
                "deleting {} blobs ({}) that no kept backup uses",
                plan.blob_keys.len(),
                crate::units::human_bytes(plan.blob_keys.iter().map(|b| b.1).sum())
            ),
        );
        let (n, b) = delete_all(ctx, plan.blob_keys.clone(), "blobs").await?;
        objects_deleted += n;
        bytes_freed += b;
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
