//! A database's backups deleted with the backup that named them: the `.md5` marker first, so
//! mysql-k8s stops calling a half-deleted backup finished.

use crate::context::Context;
use crate::repository::MysqlCapture;
use crate::retry::retry;

/// Deletes a mysql-k8s backup's objects (`<id>`, `<id>.md5`, `<id>.metadata`, ...) from its
/// own bucket, found through the app's s3-integrator relation. The `.md5` marker goes first:
/// without it mysql-k8s no longer calls the backup finished.
async fn delete_mysql(ctx: &Context, m: &MysqlCapture) -> Result<usize, String> {
    let (store, objects) = super::capture_objects(&ctx.juju, &ctx.dest, m).await?;
    let mut keys: Vec<String> = objects.into_iter().map(|o| o.key).collect();
    // The marker first: without it mysql-k8s no longer calls the backup finished.
    keys.sort_by_key(|k| !k.ends_with(".md5"));
    for k in &keys {
        retry(crate::retry::ATTEMPTS, k, || store.delete(k))
            .await
            .map_err(|e| e.to_string())?;
    }
    Ok(keys.len())
}

/// Deletes a forgotten backup's mysql-k8s backups; a warning for each that could not go (the
/// tombstone stays, and the next prune tries again).
/// Deletes the mysql-k8s backups of backup `id`; whether every one is gone (the next prune
/// tries again otherwise).
pub async fn forget_many(
    ctx: &Context,
    id: &str,
    mysql: &[MysqlCapture],
    deleted: &mut Vec<String>,
    warnings: &mut Vec<String>,
) -> bool {
    let mut all = true;
    for m in mysql {
        ctx.progress.step(
            "forget",
            format!(
                "deleting mysql-k8s backup {} of {} ({id})",
                m.backup_id, m.app
            ),
        );
        match delete_mysql(ctx, m).await {
            Ok(0) => warnings.push(format!(
                "mysql-k8s backup {} of {} was not found at {} (already gone?)",
                m.backup_id, m.app, m.location
            )),
            Ok(_) => deleted.push(format!("{} {}", m.app, m.backup_id)),
            Err(e) => {
                warnings.push(format!(
                    "mysql-k8s backup {} of {} could not be deleted ({e}); the next prune tries again (if its bucket stays out of reach, remove {}* from {} with your S3 tools)",
                    m.backup_id, m.app, m.backup_id, m.location
                ));
                all = false;
            }
        }
    }
    all
}
