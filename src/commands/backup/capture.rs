//! The capture itself: quiesce, every part at once, and a check of what was written.

use tokio_util::sync::CancellationToken;

use super::{error, Prepared};
use crate::commands::preflight::{blocking, until};
use crate::components::mlmd::{self, MlmdError};
use crate::components::mlpipeline::{self, Captured, SyncError, SyncOptions, SyncPlan, SyncStats};
use crate::components::mysql::{self, MysqlError, Waits};
use crate::context::Context;
use crate::juju::scale;
use crate::juju::Status;
use crate::repository::{self, ErrorRecord, MlmdCapture, MysqlCapture, Phase, Statefile};
use crate::retry::retry;
use crate::storage::{Store, StoreError};
use crate::units::human_bytes;

type MysqlResults = Vec<(String, Result<MysqlCapture, MysqlError>)>;

/// Quiesce, capture every part concurrently, check what was written. Returns the errors of the
/// parts that failed; the first failure stops the others.
pub(super) async fn capture_all(
    ctx: &Context,
    prep: &mut Prepared,
    sf: &mut Statefile,
) -> Result<Option<SyncStats>, Vec<ErrorRecord>> {
    let dest = &ctx.dest;
    // The journal is in the bucket before anything is scaled.
    save(dest, sf).await?;
    let status = quiesce(ctx, prep, sf).await?;
    sf.phase = Phase::Capturing;
    save(dest, sf).await?;
    ctx.progress.step("capture", "quiesced; capturing");

    // The first part to fail stops the others: the backup is failed anyway.
    let halt = CancellationToken::new();
    let sync_plan = prep.sync_plan.take();
    let prep = &*prep;
    let stop_on = |failed: bool| {
        if failed {
            halt.cancel();
        }
    };
    let (mysql_r, mlmd_r, sync_r) = tokio::join!(
        async {
            let r = until(&halt, capture_mysql(ctx, prep.plan.mysql.clone(), status)).await;
            stop_on(matches!(&r, Some(rs) if rs.iter().any(|(_, r)| r.is_err())));
            r
        },
        async {
            let r = until(&halt, capture_mlmd(ctx, prep, &sf.backup_id)).await;
            stop_on(matches!(r, Some(Err(_))));
            r
        },
        async {
            let r = until(
                &halt,
                capture_mlpipeline(ctx, prep, sync_plan, &sf.backup_id),
            )
            .await;
            stop_on(matches!(r, Some(Err(_))));
            r
        }
    );

    let mut errors = vec![];
    record_mysql(ctx, sf, mysql_r.unwrap_or_default(), &mut errors);
    match mlmd_r {
        Some(Ok(Some(cap))) => {
            ctx.progress.done(
                "mlmd",
                format!(
                    "{} ({} compressed), integrity ok",
                    human_bytes(cap.size),
                    human_bytes(cap.compressed_size)
                ),
            );
            sf.components.mlmd = Some(cap);
        }
        Some(Err(e)) => errors.push(error("mlmd", e.to_string())),
        _ => {}
    }
    let stats = match sync_r {
        Some(Ok(Some(captured))) => {
            record_mlpipeline(ctx, sf, &captured);
            Some(captured.stats)
        }
        Some(Err(e)) => {
            errors.push(error("mlpipeline", e.to_string()));
            None
        }
        _ => None,
    };
    if !errors.is_empty() {
        return Err(errors);
    }

    sf.phase = Phase::Verifying;
    ctx.progress
        .step("verify", "every part captured; checking what was written");
    save(dest, sf).await?;
    verify_written(dest, sf)
        .await
        .map_err(|m| vec![error("verify", m)])?;
    Ok(stats)
}

async fn save(dest: &Store, sf: &Statefile) -> Result<(), Vec<ErrorRecord>> {
    repository::save(dest, sf)
        .await
        .map_err(|e: StoreError| vec![error("destination", format!("writing the statefile: {e}"))])
}

/// Scales what the journal changes and waits until it settles; the status afterwards.
async fn quiesce(
    ctx: &Context,
    prep: &Prepared,
    sf: &Statefile,
) -> Result<Status, Vec<ErrorRecord>> {
    let targets = scale::targets(&sf.quiesce);
    if targets.is_empty() {
        return Ok(prep.status.clone());
    }
    let (juju, wait, p, stop) = (
        ctx.juju.clone(),
        ctx.tuning.scale_wait,
        ctx.progress.clone(),
        ctx.interrupt.clone(),
    );
    blocking(move || scale::scale_and_wait(&juju, &targets, wait, &p, &stop))
        .await
        .map_err(|e| vec![error("quiesce", e.to_string())])
}

async fn capture_mysql(ctx: &Context, apps: Vec<String>, status: Status) -> MysqlResults {
    if apps.is_empty() {
        return vec![];
    }
    let waits = Waits {
        status: "5m".into(),
        backup: ctx.tuning.action_wait_arg(),
    };
    let (juju, p) = (ctx.juju.clone(), ctx.progress.clone());
    blocking(move || {
        let on_start = |a: &str| p.step("mysql", format!("{a}: create-backup on a replica"));
        mysql::capture_many(&juju, &status, &apps, &waits, &on_start)
    })
    .await
}

async fn capture_mlmd(
    ctx: &Context,
    prep: &Prepared,
    id: &str,
) -> Result<Option<MlmdCapture>, MlmdError> {
    let (Some(cluster), Some(pod)) = (&prep.cluster, &prep.plan.mlmd_pod) else {
        return Ok(None);
    };
    ctx.progress
        .step("mlmd", format!("streaming {} out of {pod}", mlmd::DB_PATH));
    let container = prep.plan.mlmd_container.as_deref();
    mlmd::capture(cluster, pod, container, &prep.spool.path, &ctx.dest, id)
        .await
        .map(Some)
}

async fn capture_mlpipeline(
    ctx: &Context,
    prep: &Prepared,
    plan: Option<SyncPlan>,
    id: &str,
) -> Result<Option<Captured>, SyncError> {
    let Some(minio) = &prep.minio else {
        return Ok(None);
    };
    let opts = SyncOptions::for_run(ctx, prep.spool.path.join("mlpipeline"));
    let key = repository::manifest_key(id);
    let previous = prep.previous.as_ref();
    mlpipeline::capture(
        &minio.store,
        &ctx.dest,
        previous,
        &key,
        plan.as_ref(),
        &opts,
    )
    .await
    .map(Some)
}

fn record_mysql(
    ctx: &Context,
    sf: &mut Statefile,
    results: MysqlResults,
    errors: &mut Vec<ErrorRecord>,
) {
    for (a, r) in results {
        match r {
            Ok(cap) => {
                ctx.progress.done(
                    "mysql",
                    format!("{a}: backup {} on {}", cap.backup_id, cap.unit),
                );
                sf.components.mysql.push(cap);
            }
            Err(e) => errors.push(error(&a, e.to_string())),
        }
    }
}

/// Records the bucket's part (its manifest is written already) in the statefile.
fn record_mlpipeline(ctx: &Context, sf: &mut Statefile, captured: &Captured) {
    let s = &captured.stats;
    ctx.progress.done(
        "mlpipeline",
        format!(
            "{} objects, {}; read {} objects, uploaded {} new",
            s.objects,
            human_bytes(s.bytes),
            s.read_objects,
            human_bytes(s.new_bytes)
        ),
    );
    for k in &s.vanished {
        ctx.progress.warn(format!(
            "mlpipeline: {k} was deleted while the backup ran; not in this backup"
        ));
    }
    if s.vanished_objects > s.vanished.len() as u64 {
        ctx.progress.warn(format!(
            "mlpipeline: {} more objects were deleted while the backup ran",
            s.vanished_objects - s.vanished.len() as u64
        ));
    }
    sf.components.mlpipeline = Some(captured.record(&repository::manifest_key(&sf.backup_id)));
}

/// Every object this backup wrote is there with the size recorded.
async fn verify_written(dest: &Store, sf: &Statefile) -> Result<(), String> {
    let mut expect: Vec<(String, Option<u64>)> = vec![];
    if let Some(m) = &sf.components.mlmd {
        expect.push((m.key.clone(), Some(m.compressed_size)));
    }
    if let Some(m) = &sf.components.mlpipeline {
        expect.push((m.manifest_key.clone(), None));
    }
    for (key, size) in expect {
        let got = retry(crate::retry::ATTEMPTS, &key, || dest.head(&key))
            .await
            .map_err(|e| format!("checking {key}: {e}"))?;
        match (got, size) {
            (None, _) => return Err(format!("{key} is missing right after it was written")),
            (Some(o), Some(s)) if o.size != s => {
                return Err(format!("{key} has {} bytes, {s} were written", o.size))
            }
            _ => {}
        }
    }
    Ok(())
}
