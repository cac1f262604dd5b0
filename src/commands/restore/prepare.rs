//! Before a restore changes anything: the backup is completed and passes a light check, the
//! parts asked for are in it, nothing runs that the restore would pull the state from under,
//! and the plan.

use super::{spool, RestoreError, RestorePlan, RestoreRequest};
use crate::commands::preflight::{self, app};
use crate::commands::verify;
use crate::components::mlpipeline::{self, SyncOptions};
use crate::components::{mysql, Component};
use crate::context::Context;
use crate::juju::discovery::{AppNames, AppState};
use crate::juju::scale;
use crate::kube::Cluster;
use crate::repository::{self, Phase, ScaleRecord, Statefile};

pub(super) struct Prepared {
    pub(super) plan: RestorePlan,
    pub(super) sf: Statefile,
    pub(super) cluster: Option<Cluster>,
    /// MinIO, and the port-forward to it that must live as long as the run.
    pub(super) minio: Option<preflight::Minio>,
    pub(super) mlmd_container: Option<String>,
}

/// The parts a backup holds, by the role of each mysql app (its name may be configured).
fn components_of(sf: &Statefile, names: &AppNames) -> Vec<Component> {
    let mut out = vec![];
    for m in &sf.components.mysql {
        if m.app == names.kfp_db {
            out.push(Component::KfpDb)
        } else if m.app == names.katib_db {
            out.push(Component::KatibDb)
        }
    }
    if sf.components.mlmd.is_some() {
        out.push(Component::Mlmd);
    }
    if sf.components.mlpipeline.is_some() {
        out.push(Component::Mlpipeline);
    }
    out
}

pub(super) async fn prepare(ctx: &Context, req: &RestoreRequest) -> Result<Prepared, RestoreError> {
    let pre = RestoreError::Preflight;
    let id = &req.backup_id;
    let sf = repository::load(&ctx.dest, id).await?;
    if sf.phase != Phase::Completed {
        return Err(RestoreError::Usage(format!(
            "backup {id} is {}, not completed: it cannot be restored. Pick a completed one from `backup-agent list-backups`",
            sf.phase.as_str()
        )));
    }
    let (components, warnings) = select(&sf, req, &ctx.names)?;
    let wants = |c| components.contains(&c);
    let p = &ctx.progress;
    let (status, apps) = preflight::model(ctx).await?;

    p.step("preflight", format!("verifying backup {id}"));
    let spool = spool(ctx).map_err(pre)?;
    let v = verify::verify(
        &ctx.dest,
        Some(&ctx.juju),
        id,
        verify::Mode::Light,
        spool.path(),
        ctx.tuning.streaming,
        p,
    )
    .await
    .map_err(|e| pre(e.to_string()))?;
    if !v.passed {
        let list: Vec<String> = v.problems.iter().map(|p| p.to_string()).collect();
        return Err(pre(format!(
            "backup {id} fails verification, so it is not restored: {}",
            list.join("; ")
        )));
    }

    let cluster = if wants(Component::Mlmd) || wants(Component::Mlpipeline) {
        Some(preflight::cluster(ctx, &status.model.name).await?)
    } else {
        None
    };
    if let Some(cluster) = &cluster {
        preflight::running_work(
            ctx,
            cluster,
            req.force,
            "Restoring now would pull the state from under it",
        )
        .await?;
    }
    let (mut mlmd_pod, mut mlmd_container, mut mlmd_replaced_bytes) = (None, None, None);
    if let (true, Some(cluster)) = (wants(Component::Mlmd), &cluster) {
        let (pod, container) = preflight::mlmd_pod(ctx, cluster).await?;
        // The live file's size, for the plan; a pod without one yet gets the backup's.
        mlmd_replaced_bytes = cluster
            .stat(&pod, &container, crate::components::mlmd::DB_PATH)
            .await
            .ok()
            .map(|(size, _)| size);
        (mlmd_pod, mlmd_container) = (Some(pod), Some(container));
    }
    let minio = if wants(Component::Mlpipeline) {
        Some(preflight::minio(ctx, &apps, cluster.as_ref()).await?)
    } else {
        None
    };

    let (scales, mysql_pairs) = scales(&sf, &components, &apps)?;
    for (app, _) in &mysql_pairs {
        let Some(cap) = sf.components.mysql.iter().find(|m| &m.app == app).cloned() else {
            continue;
        };
        let (juju, st, repo) = (ctx.juju.clone(), status.clone(), ctx.dest.clone());
        preflight::blocking(move || mysql::restore_preflight(&juju, &st, &repo, &cap))
            .await
            .map_err(pre)?;
    }
    let mlpipeline_changes = match (&minio, &sf.components.mlpipeline) {
        (Some(m), Some(cap)) => {
            ctx.progress.step(
                "preflight",
                "comparing mlpipeline with the backup's manifest",
            );
            let opts = SyncOptions::for_run(ctx, ctx.tuning.scratch());
            Some(
                mlpipeline::restore_plan(&ctx.dest, &m.store, cap, &opts)
                    .await
                    .map_err(|e| RestoreError::Preflight(e.to_string()))?,
            )
        }
        _ => None,
    };
    let mut mysql_bytes = vec![];
    for (app, _) in &mysql_pairs {
        let Some(cap) = sf.components.mysql.iter().find(|m| &m.app == app) else {
            continue;
        };
        // A figure for the plan, not a condition: mysql-k8s itself reads the backup.
        match mysql::capture_objects(&ctx.juju, &ctx.dest, cap).await {
            Ok((_, objects)) => {
                if let Some(o) = objects.iter().find(|o| o.key == cap.backup_id) {
                    mysql_bytes.push((app.clone(), o.size));
                }
            }
            Err(e) => tracing::warn!("{app}: sizing mysql-k8s backup {}: {e}", cap.backup_id),
        }
    }
    let mlmd_bytes = wants(Component::Mlmd)
        .then(|| sf.components.mlmd.as_ref().map(|m| m.size))
        .flatten();
    let plan = RestorePlan {
        backup_id: id.clone(),
        model: status.model.name.clone(),
        components,
        scales,
        mysql: mysql_pairs,
        mysql_bytes,
        mlmd_bytes,
        mlmd_replaced_bytes,
        mlmd_pod,
        mlpipeline_objects: sf.components.mlpipeline.as_ref().map_or(0, |m| m.objects),
        mlpipeline_bytes: sf.components.mlpipeline.as_ref().map_or(0, |m| m.bytes),
        mlpipeline_changes,
        safety_backup: req.safety_backup,
        warnings,
    };
    Ok(Prepared {
        plan,
        sf,
        cluster,
        minio,
        mlmd_container,
    })
}

/// The parts to restore (those asked for, or all the backup holds), and a warning when that
/// is not all of them.
fn select(
    sf: &Statefile,
    req: &RestoreRequest,
    names: &AppNames,
) -> Result<(Vec<Component>, Vec<String>), RestoreError> {
    let id = &req.backup_id;
    let held = components_of(sf, names);
    let components = if req.components.is_empty() {
        held.clone()
    } else {
        req.components.clone()
    };
    if let Some(c) = components.iter().find(|c| !held.contains(c)) {
        return Err(RestoreError::Usage(format!(
            "backup {id} holds no {} (it holds {}): leave it out of --components",
            c.as_str(),
            held.iter()
                .map(|c| c.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    let mut warnings = vec![];
    if components.len() < held.len() {
        warnings.push(format!(
            "restoring only {}: the pipelines UI needs the databases, MLMD and mlpipeline from the same backup, or runs show as broken",
            components.iter().map(|c| c.as_str()).collect::<Vec<_>>().join(", ")
        ));
    }
    Ok((components, warnings))
}

/// The scale journal (databases to the one unit mysql-k8s restores into, the metadata writer
/// stopped), and each database with the mysql-k8s backup to restore.
#[allow(clippy::type_complexity)]
fn scales(
    sf: &Statefile,
    components: &[Component],
    apps: &[AppState],
) -> Result<(Vec<ScaleRecord>, Vec<(String, String)>), RestoreError> {
    let id = &sf.backup_id;
    let wants = |c| components.contains(&c);
    let mut scales = vec![];
    let mut mysql_pairs = vec![];
    for (c, role) in [
        (Component::KfpDb, "kfp-db"),
        (Component::KatibDb, "katib-db"),
    ] {
        if wants(c) {
            let a = app(apps, role);
            // mysql-k8s refuses to restore into more than one unit.
            scales.push(scale::record(&a.name, a.scale, 1));
            let cap = sf
                .components
                .mysql
                .iter()
                .find(|m| m.app == a.name)
                .ok_or_else(|| {
                    RestoreError::Usage(format!(
                        "backup {id} has no mysql backup of {} (it has {:?})",
                        a.name,
                        sf.components
                            .mysql
                            .iter()
                            .map(|m| &m.app)
                            .collect::<Vec<_>>()
                    ))
                })?;
            mysql_pairs.push((a.name.clone(), cap.backup_id.clone()));
        }
    }
    if wants(Component::Mlmd) {
        let w = app(apps, "metadata-writer");
        scales.push(scale::record(&w.name, w.scale, 0));
    }
    Ok((scales, mysql_pairs))
}
