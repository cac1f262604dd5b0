//! `restore`: puts the whole control plane back from one backup.
//!
//! Only an explicit, completed backup that passes a light verification is restored. Before
//! anything is overwritten a safety backup (`pre-restore`) is taken, so a restore can itself be
//! undone. The journal of scales goes into the restored backup's history before any scale
//! changes; scales go back on success, failure and signals.

use std::time::Duration;

use chrono::Utc;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::backup::{self, BackupError, BackupRequest, Component, Context};
use crate::catalog::{self, CatalogError, Phase, RequestType, ScaleRecord, Statefile};
use crate::control_plane;
use crate::kube::Cluster;
use crate::mlmd;
use crate::mlpipeline::{self, Manifest, RestoreStats, SyncOptions};
use crate::preflight::{self, app, blocking, PreflightError};
use crate::quiesce;
use crate::recovery;
use crate::retry::{retry, retry_blocking};
use crate::verify;

#[derive(Debug, Clone)]
pub struct RestoreRequest {
    pub backup_id: String,
    /// Empty: every part the backup holds.
    pub components: Vec<Component>,
    pub safety_backup: bool,
    /// Restore even while Argo Workflows or Katib Experiments run.
    pub force: bool,
    /// How long the MLMD pod may take to come back after its restart.
    pub pod_timeout: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error("{0}")]
    Usage(String),
    #[error("{0}")]
    Catalog(#[from] CatalogError),
    #[error("{0}")]
    Discovery(#[from] control_plane::DiscoveryError),
    #[error("preflight: {0}")]
    Preflight(String),
    #[error("{0}")]
    Lock(Box<recovery::RecoveryError>),
    #[error("the safety backup failed, so nothing was restored: {0}")]
    SafetyBackup(Box<BackupError>),
    #[error("restore of backup {id} failed: {}. {}", .causes.join("; "), .aftermath)]
    Failed {
        id: String,
        causes: Vec<String>,
        aftermath: String,
    },
}

impl From<PreflightError> for RestoreError {
    fn from(e: PreflightError) -> Self {
        match e {
            PreflightError::Discovery(d) => RestoreError::Discovery(d),
            PreflightError::Check(c) => RestoreError::Preflight(c),
        }
    }
}

/// What a restore will do (`--dry-run` prints it).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct RestorePlan {
    pub backup_id: String,
    pub model: String,
    pub components: Vec<Component>,
    pub scales: Vec<ScaleRecord>,
    pub mysql: Vec<(String, String)>,
    pub mlmd_pod: Option<String>,
    pub mlpipeline_objects: u64,
    pub mlpipeline_bytes: u64,
    pub safety_backup: bool,
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct MysqlRestored {
    pub app: String,
    pub backup_id: String,
    pub status: String,
    pub message: String,
    /// What the operator does next.
    pub next: String,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct RestoreReport {
    pub backup_id: String,
    pub safety_backup: Option<String>,
    pub mysql: Vec<MysqlRestored>,
    pub mlmd: bool,
    pub mlpipeline: Option<RestoreStats>,
    pub scales: Vec<ScaleRecord>,
    pub warnings: Vec<String>,
}

struct Prepared {
    plan: RestorePlan,
    sf: Statefile,
    cluster: Option<Cluster>,
    /// MinIO, and the port-forward to it that must live as long as the run.
    minio: Option<preflight::Minio>,
    mlmd_container: Option<String>,
}

/// The parts a backup holds, by the role of each mysql app (its name may be configured).
fn components_of(sf: &Statefile, names: &crate::control_plane::AppNames) -> Vec<Component> {
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

async fn prepare(ctx: &Context, req: &RestoreRequest) -> Result<Prepared, RestoreError> {
    let pre = RestoreError::Preflight;
    let id = &req.backup_id;
    let sf = catalog::load(&ctx.dest, id).await?;
    if sf.phase != Phase::Completed {
        return Err(RestoreError::Usage(format!(
            "backup {id} is {}, not completed: it cannot be restored. Pick a completed one from `backup-agent list-backups`",
            sf.phase.as_str()
        )));
    }
    let held = components_of(&sf, &ctx.names);
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
    let (mut mlmd_pod, mut mlmd_container) = (None, None);
    if let (true, Some(cluster)) = (wants(Component::Mlmd), &cluster) {
        let (pod, container) = preflight::mlmd_pod(ctx, cluster).await?;
        (mlmd_pod, mlmd_container) = (Some(pod), Some(container));
    }
    let minio = if wants(Component::Mlpipeline) {
        Some(preflight::minio(ctx, &apps, cluster.as_ref()).await?)
    } else {
        None
    };

    let mut scales = vec![];
    let mut mysql_pairs = vec![];
    for (c, role) in [
        (Component::KfpDb, "kfp-db"),
        (Component::KatibDb, "katib-db"),
    ] {
        if wants(c) {
            let a = app(&apps, role);
            // mysql-k8s refuses to restore into more than one unit.
            scales.push(quiesce::record(&a.name, a.scale, 1));
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
        let w = app(&apps, "metadata-writer");
        scales.push(quiesce::record(&w.name, w.scale, 0));
    }
    let plan = RestorePlan {
        backup_id: id.clone(),
        model: status.model.name.clone(),
        components,
        scales,
        mysql: mysql_pairs,
        mlmd_pod,
        mlpipeline_objects: sf.components.mlpipeline.as_ref().map_or(0, |m| m.objects),
        mlpipeline_bytes: sf.components.mlpipeline.as_ref().map_or(0, |m| m.bytes),
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

/// Checks and plans a restore; changes nothing (besides recording the light verification).
pub async fn plan(ctx: &Context, req: &RestoreRequest) -> Result<RestorePlan, RestoreError> {
    Ok(prepare(ctx, req).await?.plan)
}

/// Restores a backup. The error of a failed restore names the safety backup to go back to.
pub async fn run(ctx: &Context, req: &RestoreRequest) -> Result<RestoreReport, RestoreError> {
    let p = &ctx.progress;
    let id = req.backup_id.clone();
    // Recovery first: the scales a dead run left changed are not the ones to restore to.
    let (lock, _) = recovery::lock_and_recover(ctx, &format!("restore {id}"))
        .await
        .map_err(|e| RestoreError::Lock(Box::new(e)))?;
    let result = async {
        let mut prep = prepare(ctx, req).await?;
        for w in &prep.plan.warnings {
            p.warn(w.clone());
        }
        run_locked(ctx, req, &mut prep).await
    }
    .await;
    if let Err(e) = lock.release().await {
        p.warn(format!("releasing the repository lock: {e}"));
    }
    result
}

async fn run_locked(
    ctx: &Context,
    req: &RestoreRequest,
    prep: &mut Prepared,
) -> Result<RestoreReport, RestoreError> {
    let p = &ctx.progress;
    let id = req.backup_id.clone();
    let mut safety = None;
    if req.safety_backup {
        p.step("safety", "taking a pre-restore backup of the current state");
        let breq = BackupRequest {
            label: format!("pre-restore {id}"),
            components: prep.plan.components.clone(),
            force: req.force,
            request: RequestType::Manual,
        };
        let r = tokio::select! {
            r = backup::run_under_lock(ctx, &breq) => r,
            _ = ctx.interrupt.triggered() => return Err(RestoreError::Failed {
                id, causes: vec![ctx.interrupt.reason().unwrap_or_default()],
                aftermath: "nothing was restored".into(),
            }),
        };
        let r = r.map_err(|e| RestoreError::SafetyBackup(Box::new(e)))?;
        p.done("safety", format!("backup {}", r.statefile.backup_id));
        safety = Some(r.statefile.backup_id);
    }
    let safety_note = match &safety {
        Some(s) => format!("The state before the restore is backup {s}: `backup-agent restore {s}` goes back to it"),
        None => "No safety backup was taken (--no-safety-backup)".into(),
    };

    // The journal, in the restored backup's history, before any scale changes.
    let mut journal = prep.plan.scales.clone();
    let started = Utc::now();
    let record = |phase: &str, journal: &[ScaleRecord], outcome: Option<&str>| {
        serde_json::json!({
            "event": "restore",
            "at": started,
            "phase": phase,
            "outcome": outcome,
            "components": prep.plan.components,
            "safety-backup": safety,
            "quiesce": journal,
        })
    };
    let entry = record("running", &journal, None);
    catalog::append_history(&ctx.dest, &id, entry)
        .await
        .map_err(|e| RestoreError::Failed {
            id: id.clone(),
            causes: vec![format!("writing the restore journal: {e}")],
            aftermath: format!("nothing was restored. {safety_note}"),
        })?;

    let outcome = {
        let body = restore_parts(ctx, req, prep, &journal);
        tokio::pin!(body);
        tokio::select! {
            r = &mut body => r,
            _ = ctx.interrupt.triggered() => Err(vec![ctx.interrupt.reason().unwrap_or_else(|| "interrupted".into())]),
        }
    };
    let (juju, wait, p2) = (ctx.juju.clone(), ctx.tuning.scale_wait, p.clone());
    let (j, restored) = blocking(move || {
        let r = quiesce::restore(&juju, &mut journal, wait, &p2);
        (journal, r)
    })
    .await;
    journal = j;
    let ok = outcome.is_ok() && restored.is_ok();
    // Replace the running entry with the outcome, and the reason when it failed.
    let mut final_entry = record(
        "finished",
        &journal,
        Some(if ok { "completed" } else { "failed" }),
    );
    let mut causes: Vec<String> = outcome.as_ref().err().cloned().unwrap_or_default();
    if let Err(e) = &restored {
        causes.push(e.to_string());
    }
    if !causes.is_empty() {
        final_entry["error"] = causes.join("; ").into();
    }
    let history = async {
        let mut sf = catalog::load(&ctx.dest, &id).await?;
        if let Some(last) = sf
            .history
            .iter_mut()
            .rev()
            .find(|h| h["event"] == "restore" && h["at"] == serde_json::json!(started))
        {
            *last = final_entry;
        }
        catalog::save(&ctx.dest, &sf).await?;
        Ok::<(), CatalogError>(())
    }
    .await;
    if let Err(e) = &history {
        p.warn(format!(
            "recording the restore in backup {id}'s history: {e}"
        ));
    }
    match (outcome, restored) {
        (Ok((mysql, mlmd, mlpipeline)), Ok(())) => {
            p.step("done", format!("backup {id} restored"));
            Ok(RestoreReport {
                backup_id: id,
                safety_backup: safety,
                mysql,
                mlmd,
                mlpipeline,
                scales: journal,
                warnings: prep.plan.warnings.clone(),
            })
        }
        (outcome, restored) => {
            let mut causes = outcome.err().unwrap_or_default();
            let scales = match restored {
                Ok(()) => "scales put back".to_string(),
                Err(e) => {
                    causes.push(format!("scales: {e}"));
                    "NOT every scale is back".to_string()
                }
            };
            Err(RestoreError::Failed {
                id,
                causes,
                aftermath: format!("{scales}. {safety_note}"),
            })
        }
    }
}

type Parts = (Vec<MysqlRestored>, bool, Option<RestoreStats>);

async fn restore_parts(
    ctx: &Context,
    req: &RestoreRequest,
    prep: &Prepared,
    journal: &[ScaleRecord],
) -> Result<Parts, Vec<String>> {
    let p = &ctx.progress;
    let targets: Vec<(String, u32)> = journal
        .iter()
        .filter(|r| r.changed_to != r.original)
        .map(|r| (r.app.clone(), r.changed_to))
        .collect();
    let (juju, wait, p2, stop) = (
        ctx.juju.clone(),
        ctx.tuning.scale_wait,
        p.clone(),
        ctx.interrupt.clone(),
    );
    let status = blocking(move || {
        if targets.is_empty() {
            retry_blocking(crate::retry::ATTEMPTS, "juju status", || juju.status())
                .map_err(|e| e.to_string())
        } else {
            quiesce::scale_and_wait(&juju, &targets, wait, &p2, &stop).map_err(|e| e.to_string())
        }
    })
    .await
    .map_err(|e| vec![e])?;

    let halt = CancellationToken::new();
    let mysql_fut = {
        let (juju, pairs, wait) = (
            ctx.juju.clone(),
            prep.plan.mysql.clone(),
            format!("{}s", ctx.tuning.action_wait.as_secs().max(1)),
        );
        let p = p.clone();
        let halt = halt.clone();
        async move {
            if pairs.is_empty() {
                return Ok(vec![]);
            }
            let work = blocking(move || restore_mysql(&juju, &status, &pairs, &wait, &p));
            tokio::select! {
                r = work => r,
                _ = halt.cancelled() => Err("stopped".into()),
            }
        }
    };
    let mlmd_fut = {
        async {
            let (Some(cluster), Some(pod), Some(container), Some(cap)) = (
                &prep.cluster,
                &prep.plan.mlmd_pod,
                &prep.mlmd_container,
                &prep.sf.components.mlmd,
            ) else {
                return Ok(false);
            };
            let work = async {
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
                Ok::<bool, String>(true)
            };
            tokio::select! {
                r = work => r,
                _ = halt.cancelled() => Err("stopped".into()),
            }
        }
    };
    let sync_fut = {
        async {
            let (Some(minio), Some(cap)) = (
                prep.minio.as_ref().map(|m| &m.store),
                &prep.sf.components.mlpipeline,
            ) else {
                return Ok(None);
            };
            let work = async {
                let bytes = retry(crate::retry::ATTEMPTS, &cap.manifest_key, || {
                    ctx.dest.get_bytes(&cap.manifest_key)
                })
                .await
                .map_err(|e| format!("mlpipeline: {e}"))?;
                let manifest = Manifest::parse(&cap.manifest_key, &bytes)?;
                let mut opts = SyncOptions::new(std::env::temp_dir());
                opts.checkers = ctx.tuning.checkers;
                opts.transfers = ctx.tuning.transfers;
                opts.bwlimit = ctx.tuning.bwlimit;
                opts.progress = p.clone();
                p.step(
                    "mlpipeline",
                    format!(
                        "making the bucket equal to the backup's {} objects",
                        manifest.entries.len()
                    ),
                );
                let stats = mlpipeline::restore(&ctx.dest, minio, &manifest, &opts)
                    .await
                    .map_err(|e| e.to_string())?;
                p.done(
                    "mlpipeline",
                    format!(
                        "{} copied back ({}), {} unchanged, {} removed",
                        stats.copied,
                        catalog::human_bytes(stats.copied_bytes),
                        stats.unchanged,
                        stats.deleted
                    ),
                );
                Ok::<_, String>(Some(stats))
            };
            tokio::select! {
                r = work => r,
                _ = halt.cancelled() => Err("stopped".into()),
            }
        }
    };
    let stop_on_err = |failed: bool| {
        if failed {
            halt.cancel()
        }
    };
    let (m, l, s) = tokio::join!(
        async {
            let r = mysql_fut.await;
            stop_on_err(r.is_err());
            r
        },
        async {
            let r = mlmd_fut.await;
            stop_on_err(r.is_err());
            r
        },
        async {
            let r = sync_fut.await;
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

/// mysql-k8s `restore` on each app's one unit, then what the app says about it.
fn restore_mysql(
    juju: &crate::juju::JujuCli,
    status: &crate::juju::Status,
    pairs: &[(String, String)],
    wait: &str,
    p: &crate::progress::Progress,
) -> Result<Vec<MysqlRestored>, String> {
    let mut out = vec![];
    for (app, backup_id) in pairs {
        let unit = status
            .applications
            .get(app)
            .and_then(|a| a.units.keys().next().cloned())
            .ok_or_else(|| format!("{app} has no unit to restore into"))?;
        p.step(
            "mysql",
            format!("{app}: restore backup-id={backup_id} on {unit}"),
        );
        // Not retried: a second restore after a lost answer would run it twice.
        juju.run_action(&unit, "restore", &[("backup-id", backup_id)], wait)
            .map_err(|e| format!("{app}: {e}"))?;
        let after = retry_blocking(crate::retry::ATTEMPTS, "juju status", || juju.status())
            .map_err(|e| e.to_string())?;
        let st = after
            .applications
            .get(app)
            .and_then(|a| a.application_status.clone());
        let (status, message) = st.map(|s| (s.current, s.message)).unwrap_or_default();
        let next = if status == "blocked" {
            format!("{app} is blocked (\"{message}\"): mysql-k8s does this after every restore so the restored cluster cannot write over the backups it came from. Give {app} a new backup location (another s3-integrator, or a new `path` on it) and its status clears; backups work again from then on")
        } else {
            String::new()
        };
        p.done(
            "mysql",
            format!("{app}: restored {backup_id}; now {status}"),
        );
        out.push(MysqlRestored {
            app: app.clone(),
            backup_id: backup_id.clone(),
            status,
            message,
            next,
        });
    }
    Ok(out)
}

/// The restore plan as `--dry-run` prints it.
pub fn render_plan(p: &RestorePlan) -> String {
    use std::fmt::Write;
    let mut o = String::new();
    let _ = writeln!(
        o,
        "Plan to restore backup {} into model {}",
        p.backup_id, p.model
    );
    let names: Vec<&str> = p.components.iter().map(|c| c.as_str()).collect();
    let _ = writeln!(o, "  components: {}", names.join(", "));
    let _ = writeln!(
        o,
        "  safety backup first: {}",
        if p.safety_backup {
            "yes (label pre-restore)"
        } else {
            "NO (--no-safety-backup)"
        }
    );
    let _ = writeln!(o, "  scales (recorded first, put back afterwards):");
    for r in &p.scales {
        let _ = writeln!(
            o,
            "    {:<22} {} -> {} -> {}",
            r.app, r.original, r.changed_to, r.original
        );
    }
    for (app, id) in &p.mysql {
        let _ = writeln!(o, "  {app}: mysql-k8s restore backup-id={id} (the app is blocked afterwards, as mysql-k8s always leaves it)");
    }
    if let Some(pod) = &p.mlmd_pod {
        let _ = writeln!(
            o,
            "  mlmd: {} swapped in {pod} (previous file kept beside it), pod restarted",
            mlmd::DB_PATH
        );
    }
    if p.components.contains(&Component::Mlpipeline) {
        let _ = writeln!(
            o,
            "  mlpipeline: the bucket made equal to {} objects ({}); objects the backup lacks are removed",
            p.mlpipeline_objects,
            catalog::human_bytes(p.mlpipeline_bytes)
        );
    }
    for w in &p.warnings {
        let _ = writeln!(o, "  warning: {w}");
    }
    let _ = writeln!(o, "Nothing was changed (--dry-run).");
    o
}

/// The summary of a finished restore.
pub fn render_report(r: &RestoreReport) -> String {
    use std::fmt::Write;
    let mut o = String::new();
    let _ = writeln!(o, "backup {} restored", r.backup_id);
    if let Some(s) = &r.safety_backup {
        let _ = writeln!(o, "  safety backup of the state before: {s}");
    }
    for m in &r.mysql {
        let _ = writeln!(
            o,
            "  {:<10} mysql-k8s restore of {}: {} {}",
            m.app, m.backup_id, m.status, m.message
        );
        if !m.next.is_empty() {
            let _ = writeln!(o, "             next: {}", m.next);
        }
    }
    if r.mlmd {
        let _ = writeln!(
            o,
            "  {:<10} database swapped in, pod restarted and ready",
            "mlmd"
        );
    }
    if let Some(s) = &r.mlpipeline {
        let _ = writeln!(
            o,
            "  {:<10} {} copied back ({}), {} unchanged, {} removed",
            "mlpipeline",
            s.copied,
            catalog::human_bytes(s.copied_bytes),
            s.unchanged,
            s.deleted
        );
    }
    for w in &r.warnings {
        let _ = writeln!(o, "  warning: {w}");
    }
    o
}

/// A private directory for what a restore downloads first (the MLMD database): under
/// `--spool` when given, else the system's temporary directory. Removed when dropped.
fn spool(ctx: &Context) -> Result<tempfile::TempDir, String> {
    let mut b = tempfile::Builder::new();
    b.prefix("backup-agent-restore-");
    match &ctx.tuning.spool {
        Some(dir) => b
            .tempdir_in(dir)
            .map_err(|e| format!("spool directory {}: {e}", dir.display())),
        None => b.tempdir().map_err(|e| {
            format!(
                "cannot create a spool directory in {}: {e}; pass --spool DIR",
                std::env::temp_dir().display()
            )
        }),
    }
}
