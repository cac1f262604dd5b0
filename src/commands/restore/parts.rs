//! The parts put back, concurrently, inside the quiesce window; the first to fail stops the
//! others.

use tokio_util::sync::CancellationToken;

use super::prepare::Prepared;
use super::{spool, MysqlRestored, RestoreRequest, RestoreStats};
use crate::commands::preflight::{blocking, until};
use crate::components::{mlmd, mlpipeline, mysql};
use crate::context::Context;
use crate::juju::scale;
use crate::repository::ScaleRecord;
use crate::retry::retry_blocking;
use mlpipeline::SyncOptions;

type Parts = (Vec<MysqlRestored>, bool, Option<RestoreStats>);

pub(super) async fn restore_parts(
    ctx: &Context,
    req: &RestoreRequest,
    prep: &Prepared,
    journal: &[ScaleRecord],
) -> Result<Parts, Vec<String>> {
    let status = quiesce(ctx, journal).await.map_err(|e| vec![e])?;
    let halt = CancellationToken::new();
    let stop_on_err = |failed: bool| {
        if failed {
            halt.cancel()
        }
    };
    let (m, l, s) = tokio::join!(
        async {
            let r = or_stopped(&halt, restore_mysql(ctx, prep, status)).await;
            stop_on_err(r.is_err());
            r
        },
        async {
            let r = or_stopped(&halt, restore_mlmd(ctx, req, prep)).await;
            stop_on_err(r.is_err());
            r
        },
        async {
            let r = or_stopped(&halt, restore_mlpipeline(ctx, prep)).await;
            stop_on_err(r.is_err());
            r
        }
    );
    let errors: Vec<String> = [m.as_ref().err(), l.as_ref().err(), s.as_ref().err()]
        .into_iter()
        .flatten()
        .filter(|e| *e != "stopped")
        .cloned()
        .collect();
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok((m.unwrap(), l.unwrap(), s.unwrap()))
}

/// A part that `halt` stopped is "stopped": the part that failed says why.
async fn or_stopped<T>(
    halt: &CancellationToken,
    work: impl std::future::Future<Output = Result<T, String>>,
) -> Result<T, String> {
    until(halt, work)
        .await
        .unwrap_or_else(|| Err("stopped".into()))
}

/// Scales what the journal changes and waits for it; the model's status afterwards.
async fn quiesce(ctx: &Context, journal: &[ScaleRecord]) -> Result<crate::juju::Status, String> {
    let targets = scale::targets(journal);
    let (juju, wait, p, stop) = (
        ctx.juju.clone(),
        ctx.tuning.scale_wait,
        ctx.progress.clone(),
        ctx.interrupt.clone(),
    );
    blocking(move || {
        if targets.is_empty() {
            retry_blocking(crate::retry::ATTEMPTS, "juju status", || juju.status())
                .map_err(|e| e.to_string())
        } else {
            scale::scale_and_wait(&juju, &targets, wait, &p, &stop).map_err(|e| e.to_string())
        }
    })
    .await
}

async fn restore_mysql(
    ctx: &Context,
    prep: &Prepared,
    status: crate::juju::Status,
) -> Result<Vec<MysqlRestored>, String> {
    let pairs = prep.plan.mysql.clone();
    if pairs.is_empty() {
        return Ok(vec![]);
    }
    let (juju, p) = (ctx.juju.clone(), ctx.progress.clone());
    let wait = ctx.tuning.action_wait_arg();
    blocking(move || mysql::restore_many(&juju, &status, &pairs, &wait, &p)).await
}

async fn restore_mlmd(
    ctx: &Context,
    req: &RestoreRequest,
    prep: &Prepared,
) -> Result<bool, String> {
    let p = &ctx.progress;
    let (Some(cluster), Some(pod), Some(container), Some(cap)) = (
        &prep.cluster,
        &prep.plan.mlmd_pod,
        &prep.mlmd_container,
        &prep.sf.components.mlmd,
    ) else {
        return Ok(false);
    };
    let tmp = spool(ctx).map_err(|e| format!("MLMD: {e}"))?;
    let local = tmp.path().join("mlmd.db");
    p.step("mlmd", format!("fetching and checking {}", cap.key));
    mlmd::fetch_and_verify(&ctx.dest, cap, &local)
        .await
        .map_err(|e| format!("MLMD: {e}"))?;
    p.step(
        "mlmd",
        format!("streaming it into {pod} and restarting the pod"),
    );
    mlmd::restore(
        cluster,
        pod,
        container,
        &local,
        &req.backup_id,
        req.pod_timeout,
    )
    .await
    .map_err(|e| e.to_string())?;
    p.done("mlmd", "restored; the pod is back and ready");
    Ok(true)
}

async fn restore_mlpipeline(
    ctx: &Context,
    prep: &Prepared,
) -> Result<Option<RestoreStats>, String> {
    let p = &ctx.progress;
    let (Some(minio), Some(cap)) = (
        prep.minio.as_ref().map(|m| &m.store),
        &prep.sf.components.mlpipeline,
    ) else {
        return Ok(None);
    };
    let opts = SyncOptions::for_run(ctx, std::env::temp_dir());
    p.step(
        "mlpipeline",
        format!(
            "making the bucket equal to the backup's {} objects",
            cap.objects
        ),
    );
    let totals = prep.plan.mlpipeline_changes.as_ref();
    let stats = mlpipeline::restore(&ctx.dest, minio, cap, totals, &opts)
        .await
        .map_err(|e| e.to_string())?;
    p.done(
        "mlpipeline",
        format!(
            "{} copied back ({}), {} unchanged, {} removed",
            stats.copied,
            crate::units::human_bytes(stats.copied_bytes),
            stats.unchanged,
            stats.deleted
        ),
    );
    Ok(Some(stats))
}
