//! `drill`: proves that a backup restores, without touching the live system. The backup (a
//! given one, or the newest completed) is restored into scratch targets and checked there:
//! MLMD into a scratch file that SQLite opens and checks table by table; the bucket, all of
//! it or a sample, into a scratch prefix of the repository, read back and compared with the
//! manifest; each mysql-k8s backup found where it was written, complete, with its recorded
//! sizes. The scratch copy is removed at the end, on failure and on a signal too (a killed
//! drill's is removed by the next one). The result goes into the backup's history, where
//! list-backups, describe-backup and the metrics read it.

use std::sync::Mutex;
use std::time::Instant;

use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use serde::Serialize;

use crate::commands::recover::{self, RecoveryError};
use crate::components::check::Findings;
use crate::components::mlmd::{self, MlmdDrill};
use crate::components::mlpipeline::{self, BucketDrill, Limiter, Pick, SyncOptions};
use crate::components::mysql::{self, MysqlDrill};
use crate::context::Context;
use crate::repository::{self, CatalogError, Phase, Statefile};
use crate::storage::{Deleter, Store, StoreError};
use crate::units::human_bytes;

#[derive(Debug, Clone, Default)]
pub struct DrillRequest {
    /// `None`: the newest completed backup.
    pub backup_id: Option<String>,
    pub pick: Pick,
    /// Where in the repository's bucket the scratch copy goes [default:
    /// `backup-agent/drills/scratch`].
    pub scratch_prefix: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum DrillError {
    #[error("{0}")]
    Usage(String),
    #[error("{0}")]
    Catalog(#[from] CatalogError),
    #[error(
        "the repository at {store} holds no completed backup to drill: run create-backup first"
    )]
    NothingToDrill { store: String },
    #[error("backup {id} is {phase}, not completed: only a completed backup can restore. Drill another (list-backups), or leave the id out to drill the newest completed one")]
    NotCompleted { id: String, phase: String },
    #[error("{0}")]
    Lock(Box<RecoveryError>),
    #[error("the drill of backup {id} was interrupted ({reason}); its scratch copy {}; nothing is recorded", if *.scratch_removed { "was removed" } else { "is left for the next drill to remove" })]
    Interrupted {
        id: String,
        reason: String,
        scratch_removed: bool,
    },
}

/// What a drill will do (`--dry-run`): nothing is written, no lock is taken.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct DrillPlan {
    pub backup_id: String,
    pub scratch: String,
    pub sample: String,
    pub max_bytes: Option<u64>,
    /// The MLMD dump's compressed bytes and the tables whose rows are counted.
    pub mlmd_bytes: Option<u64>,
    pub mlmd_tables: Option<u64>,
    /// Objects and bytes the bucket's part restores, of the backup's.
    pub mlpipeline: Option<(u64, u64)>,
    pub mlpipeline_of: Option<(u64, u64)>,
    /// `(app, mysql-k8s backup id, location, objects recorded)`.
    pub mysql: Vec<(String, String, String, usize)>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct DrillReport {
    pub backup_id: String,
    pub at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    pub passed: bool,
    pub duration_seconds: f64,
    pub bytes_read: u64,
    pub bytes_written: u64,
    pub sample: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mlmd: Option<MlmdDrill>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mlpipeline: Option<BucketDrill>,
    pub mysql: Vec<MysqlDrill>,
    pub problems: Findings,
    pub scratch: String,
    pub scratch_removed: bool,
    pub warnings: Vec<String>,
}

/// The backup a drill is about: the one named (completed), or the newest completed.
async fn chosen(dest: &Store, req: &DrillRequest) -> Result<Statefile, DrillError> {
    let sf = match &req.backup_id {
        Some(id) => repository::load(dest, id).await?,
        None => repository::summary(dest)
            .await?
            .newest_completed
            .ok_or_else(|| DrillError::NothingToDrill {
                store: dest.describe(),
            })?,
    };
    if sf.phase != Phase::Completed {
        return Err(DrillError::NotCompleted {
            id: sf.backup_id,
            phase: sf.phase.as_str().into(),
        });
    }
    Ok(sf)
}

fn scratch_root(req: &DrillRequest) -> Result<String, DrillError> {
    let p = match &req.scratch_prefix {
        None => repository::drill_scratch_prefix(),
        Some(p) => p.trim_matches('/').to_string(),
    };
    if !repository::scratch_prefix_ok(&p) {
        return Err(DrillError::Usage(format!(
            "scratch prefix {p:?} is not usable: give a relative prefix outside backup-agent/ (or under backup-agent/drills/), such as drill-scratch; the default is {}",
            repository::drill_scratch_prefix()
        )));
    }
    Ok(p)
}

/// What a drill of the request would restore and check; reads the statefile and the manifest.
pub async fn plan(ctx: &Context, req: &DrillRequest) -> Result<DrillPlan, DrillError> {
    let root = scratch_root(req)?;
    let sf = chosen(&ctx.dest, req).await?;
    let (mlpipeline, mlpipeline_of) = match &sf.components.mlpipeline {
        Some(cap) => {
            let picked = mlpipeline::drill_plan(&ctx.dest, cap, req.pick)
                .await
                .map_err(|e| DrillError::Usage(format!("reading the manifest: {e}")))?;
            (Some(picked), Some((cap.objects, cap.bytes)))
        }
        None => (None, None),
    };
    Ok(DrillPlan {
        scratch: format!("{root}/<drill-id>/"),
        sample: req.pick.sample.to_string(),
        max_bytes: req.pick.max_bytes,
        mlmd_bytes: sf.components.mlmd.as_ref().map(|m| m.compressed_size),
        mlmd_tables: sf
            .components
            .mlmd
            .as_ref()
            .map(|m| m.row_counts.len() as u64),
        mlpipeline,
        mlpipeline_of,
        mysql: sf
            .components
            .mysql
            .iter()
            .map(|m| {
                (
                    m.app.clone(),
                    m.backup_id.clone(),
                    m.location.clone(),
                    m.objects.len(),
                )
            })
            .collect(),
        backup_id: sf.backup_id,
    })
}

/// Runs a drill under the repository lock and records its result in the backup's history.
/// A drill that finds damage is `Ok` with `passed: false`; an interrupted one records nothing.
pub async fn run(ctx: &Context, req: &DrillRequest) -> Result<DrillReport, DrillError> {
    let root = scratch_root(req)?;
    let sf = chosen(&ctx.dest, req).await?;
    let id = sf.backup_id.clone();
    let req = &DrillRequest {
        pick: Pick {
            sample: req.pick.sample.fresh(),
            ..req.pick
        },
        ..req.clone()
    };
    let (lock, _) = recover::lock_and_recover(ctx, &format!("drill {id}"))
        .await
        .map_err(|e| DrillError::Lock(Box::new(e)))?;
    // Read again under the lock: a prune may have forgotten it meanwhile.
    let result = match chosen(
        &ctx.dest,
        &DrillRequest {
            backup_id: Some(id),
            ..req.clone()
        },
    )
    .await
    {
        Ok(sf) => locked(ctx, req, &sf, &root).await,
        Err(e) => Err(e),
    };
    if let Err(e) = lock.release().await {
        ctx.progress
            .warn(format!("releasing the repository lock: {e}"));
    }
    result
}

async fn locked(
    ctx: &Context,
    req: &DrillRequest,
    sf: &Statefile,
    root: &str,
) -> Result<DrillReport, DrillError> {
    let p = &ctx.progress;
    let started = Instant::now();
    let drill_id = repository::new_backup_id(Utc::now());
    let scratch_prefix = format!("{root}/{drill_id}");
    let mut report = DrillReport {
        backup_id: sf.backup_id.clone(),
        at: Utc::now(),
        finished_at: Utc::now(),
        passed: false,
        duration_seconds: 0.0,
        bytes_read: 0,
        bytes_written: 0,
        sample: req.pick.sample.to_string(),
        max_bytes: req.pick.max_bytes,
        mlmd: None,
        mlpipeline: None,
        mysql: vec![],
        problems: Findings::default(),
        scratch: format!("{scratch_prefix}/"),
        scratch_removed: false,
        warnings: vec![],
    };
    // A killed drill's copy goes first: the lock says no other drill is writing one.
    match remove_scratch(&ctx.dest, root, None, &ctx.tuning.streaming).await {
        Ok(0) => {}
        Ok(n) => p.step(
            "drill",
            format!("removed {n} objects a killed drill left under {root}/"),
        ),
        Err(e) => report.warnings.push(format!(
            "removing what earlier drills left under {root}/: {e}"
        )),
    }
    let spool = tempfile::Builder::new()
        .prefix("backup-agent-drill-")
        .tempdir_in(ctx.tuning.scratch())
        .map_err(|e| {
            DrillError::Usage(format!(
                "cannot make a scratch directory in {}: {e}; pass --spool DIR",
                ctx.tuning.scratch().display()
            ))
        })?;
    let scratch = ctx
        .dest
        .under(&scratch_prefix)
        .map_err(|e| DrillError::Usage(e.to_string()))?;
    let work = parts(ctx, req, sf, &scratch, spool.path(), &mut report);
    let interrupted = tokio::select! {
        () = work => None,
        () = ctx.interrupt.triggered() => Some(ctx.interrupt.reason().unwrap_or_else(|| "a signal".into())),
    };
    p.step(
        "drill",
        format!("removing the scratch copy {scratch_prefix}/"),
    );
    match remove_scratch(&ctx.dest, root, Some(&drill_id), &ctx.tuning.streaming).await {
        Ok(_) => report.scratch_removed = true,
        Err(e) => report.warnings.push(format!(
            "removing the scratch copy {scratch_prefix}/: {e} (the next drill removes it)"
        )),
    }
    if let Some(reason) = interrupted {
        return Err(DrillError::Interrupted {
            id: sf.backup_id.clone(),
            reason,
            scratch_removed: report.scratch_removed,
        });
    }
    report.finished_at = Utc::now();
    report.duration_seconds = started.elapsed().as_secs_f64();
    report.passed = report.problems.is_empty();
    let entry = history_entry(&report);
    if let Err(e) = repository::append_history(&ctx.dest, &sf.backup_id, entry).await {
        report
            .warnings
            .push(format!("recording the drill in the statefile: {e}"));
    }
    let seen = repository::drills::DrillSeen {
        backup_id: report.backup_id.clone(),
        at: report.at,
        passed: report.passed,
        problems: report.problems.total,
    };
    if let Err(e) = repository::drills::record(&ctx.dest, seen).await {
        report.warnings.push(format!(
            "recording the drill in the repository's record: {e}"
        ));
    }
    for w in &report.warnings {
        p.warn(w.clone());
    }
    Ok(report)
}

/// Every part the backup holds, one after another (one bandwidth limit at a time).
async fn parts(
    ctx: &Context,
    req: &DrillRequest,
    sf: &Statefile,
    scratch: &Store,
    spool: &std::path::Path,
    report: &mut DrillReport,
) {
    let p = &ctx.progress;
    if let Some(m) = &sf.components.mlmd {
        p.step(
            "drill",
            format!("MLMD: restoring {} into a scratch file", m.key),
        );
        let d = mlmd::drill(&ctx.dest, m, spool, &mut report.problems).await;
        report.bytes_read += m.compressed_size;
        report.bytes_written += d.bytes;
        report.mlmd = Some(d);
        let _ = std::fs::remove_file(spool.join("mlmd.db"));
    }
    if let Some(cap) = &sf.components.mlpipeline {
        p.step(
            "drill",
            format!(
                "mlpipeline: restoring {} of {} objects into {}",
                req.pick.sample,
                cap.objects,
                scratch.describe()
            ),
        );
        let opts = SyncOptions::for_run(ctx, spool);
        let found = Mutex::new(std::mem::take(&mut report.problems));
        let d = mlpipeline::drill(&ctx.dest, scratch, cap, req.pick, &opts, &found).await;
        report.problems = found.into_inner().expect("findings");
        if d.objects == 0 && cap.objects > 0 {
            report.warnings.push(format!(
                "no mlpipeline object was restored: the sample ({}) and cap picked none of {}; the bucket's part proves nothing this time",
                req.pick.sample, cap.objects
            ));
        }
        report.bytes_read += d.bytes + d.read_back_bytes;
        report.bytes_written += d.bytes;
        report.mlpipeline = Some(d);
    }
    if !sf.components.mysql.is_empty() {
        p.step(
            "drill",
            "mysql-k8s backups: objects, sizes and md5 where they were written",
        );
        let limiter = ctx.tuning.bwlimit.map(|r| Limiter::new(r, Instant::now()));
        let d = mysql::drill(
            &ctx.juju,
            &ctx.dest,
            &sf.components.mysql,
            limiter.as_ref(),
            &mut report.problems,
            &mut report.warnings,
        )
        .await;
        report.bytes_read += d
            .iter()
            .filter(|m| m.md5_matched)
            .map(|m| m.bytes)
            .sum::<u64>();
        report.mysql = d;
    }
}

/// Deletes drill scratch copies under `root`: drill `only`'s, or every one (folders named
/// like backup ids; anything else under `root` is left alone). The objects deleted.
async fn remove_scratch(
    dest: &Store,
    root: &str,
    only: Option<&str>,
    streaming: &crate::context::Streaming,
) -> Result<u64, StoreError> {
    let prefix = match only {
        Some(id) => format!("{root}/{id}/"),
        None => format!("{root}/"),
    };
    let failed = |e: crate::storage::DeleteFailure| StoreError::Fatal {
        op: "delete",
        key: prefix.clone(),
        detail: e.to_string(),
    };
    let mut deleter = Deleter::new(dest, streaming.delete_batch);
    let mut listing = dest.list_unordered(&prefix, streaming.page_size);
    while let Some(o) = listing.try_next().await? {
        let folder = o.key[root.len() + 1..].split('/').next().unwrap_or("");
        if repository::is_backup_id(folder) {
            deleter.push(o.key).await.map_err(failed)?;
        }
    }
    deleter.finish().await.map_err(failed)
}

/// What the statefile keeps of a drill: enough for list-backups, describe-backup and the
/// metrics, and the first problems by name.
fn history_entry(r: &DrillReport) -> serde_json::Value {
    let mut checked = serde_json::Map::new();
    if let Some(m) = &r.mlmd {
        checked.insert("mlmd".into(), serde_json::to_value(m).expect("serializes"));
    }
    if let Some(b) = &r.mlpipeline {
        checked.insert(
            "mlpipeline".into(),
            serde_json::to_value(b).expect("serializes"),
        );
    }
    for m in &r.mysql {
        checked.insert(m.app.clone(), serde_json::to_value(m).expect("serializes"));
    }
    serde_json::json!({
        "event": "drill",
        "at": r.at,
        "finished-at": r.finished_at,
        "outcome": if r.passed { "passed" } else { "failed" },
        "duration-seconds": (r.duration_seconds * 10.0).round() / 10.0,
        "bytes-read": r.bytes_read,
        "bytes-written": r.bytes_written,
        "sample": r.sample,
        "checked": checked,
        "problems": r.problems.total,
        "first-problems": r.problems.named.iter().take(5).map(|p| p.to_string()).collect::<Vec<_>>(),
    })
}

/// The plan as text.
pub fn render_plan(p: &DrillPlan) -> String {
    let mut o = format!(
        "drill of backup {} (dry run: nothing is written, no lock is taken)\n",
        p.backup_id
    );
    if let (Some(b), Some(t)) = (p.mlmd_bytes, p.mlmd_tables) {
        o.push_str(&format!(
            "  mlmd: restore the dump ({}) into a scratch file; integrity_check and the row counts of {t} tables\n",
            human_bytes(b)
        ));
    }
    if let (Some((n, b)), Some((of_n, of_b))) = (p.mlpipeline, p.mlpipeline_of) {
        let cap = p
            .max_bytes
            .map(|c| format!(", at most {}", human_bytes(c)))
            .unwrap_or_default();
        o.push_str(&format!(
            "  mlpipeline: restore {n} of {of_n} objects ({} of {}; sample {}{cap}) into {}, read each back\n",
            human_bytes(b),
            human_bytes(of_b),
            p.sample,
            p.scratch
        ));
    }
    for (app, id, location, recorded) in &p.mysql {
        let sizes = match recorded {
            0 => "its object and .md5 marker (sizes not recorded)".to_string(),
            n => format!("{n} objects with their recorded sizes"),
        };
        o.push_str(&format!(
            "  {app}: mysql-k8s backup {id} at {location}: {sizes}; md5 of the stream against its marker\n"
        ));
    }
    o
}

/// The result as text: the verdict, what each part proved, then each problem.
pub fn render_report(r: &DrillReport) -> String {
    let mut o = format!(
        "drill of backup {}: {} in {:.1}s (read {}, wrote {})\n",
        r.backup_id,
        if r.passed { "PASSED" } else { "FAILED" },
        r.duration_seconds,
        human_bytes(r.bytes_read),
        human_bytes(r.bytes_written)
    );
    if let Some(m) = &r.mlmd {
        o.push_str(&format!(
            "  mlmd: restored {} into a scratch file; integrity_check {}; {} tables, {} rows\n",
            human_bytes(m.bytes),
            if m.integrity_check.is_empty() {
                "not reached"
            } else {
                &m.integrity_check
            },
            m.tables,
            m.rows
        ));
    }
    if let Some(b) = &r.mlpipeline {
        let what = if b.metadata_checked {
            "bytes, size, content type, user metadata"
        } else {
            "bytes and size; the scratch store keeps no metadata"
        };
        o.push_str(&format!(
            "  mlpipeline: {} of {} objects restored ({} of {}, sample {}), {} read back equal ({what})\n",
            b.restored,
            b.of_objects,
            human_bytes(b.bytes),
            human_bytes(b.of_bytes),
            r.sample,
            b.read_back
        ));
    }
    for m in &r.mysql {
        o.push_str(&format!(
            "  {}: mysql-k8s backup {} at {}: {} objects ({}){}{}\n",
            m.app,
            m.backup_id,
            m.location,
            m.objects,
            human_bytes(m.bytes),
            if m.sizes_recorded {
                ", sizes as recorded"
            } else {
                ", sizes not recorded"
            },
            if m.md5_matched {
                "; md5 matches its marker"
            } else {
                ""
            }
        ));
    }
    o.push_str(&format!(
        "  scratch copy {} {}\n",
        r.scratch,
        if r.scratch_removed {
            "removed"
        } else {
            "NOT removed (the next drill removes it)"
        }
    ));
    if r.problems.total > 0 {
        o.push_str(&format!("problems ({}):\n", r.problems.total));
        for p in &r.problems.named {
            o.push_str(&format!("  {p}\n"));
        }
        let more = r.problems.total - r.problems.named.len() as u64;
        if more > 0 {
            o.push_str(&format!("  ... and {more} more\n"));
        }
    }
    for w in &r.warnings {
        o.push_str(&format!("warning: {w}\n"));
    }
    o
}
