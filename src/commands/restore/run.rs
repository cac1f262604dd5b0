//! A restore under the lock: the safety backup, the journal in the restored backup's history,
//! the parts, the scales back, and the outcome recorded.

use chrono::Utc;

use super::parts::restore_parts;
use super::prepare::Prepared;
use super::{RestoreError, RestoreReport, RestoreRequest};
use crate::commands::backup::{self, BackupRequest};
use crate::commands::preflight::blocking;
use crate::context::Context;
use crate::juju::scale;
use crate::repository::{self, CatalogError, RequestType, ScaleRecord};

pub(super) async fn run_locked(
    ctx: &Context,
    req: &RestoreRequest,
    prep: &mut Prepared,
) -> Result<RestoreReport, RestoreError> {
    let p = &ctx.progress;
    let id = req.backup_id.clone();
    let safety = safety_backup(ctx, req, prep).await?;
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
    repository::append_history(&ctx.dest, &id, entry)
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
        let r = scale::restore(&juju, &mut journal, wait, &p2);
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
    final_entry["finished-at"] = serde_json::json!(Utc::now());
    if let Err(e) = replace_entry(ctx, &id, started, final_entry).await {
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

/// The pre-restore backup of the current state, unless it was declined: its id.
async fn safety_backup(
    ctx: &Context,
    req: &RestoreRequest,
    prep: &Prepared,
) -> Result<Option<String>, RestoreError> {
    if !req.safety_backup {
        return Ok(None);
    }
    let (p, id) = (&ctx.progress, req.backup_id.clone());
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
    Ok(Some(r.statefile.backup_id))
}

/// Replaces the restore's `running` entry in the backup's history with its outcome.
async fn replace_entry(
    ctx: &Context,
    id: &str,
    started: chrono::DateTime<Utc>,
    entry: serde_json::Value,
) -> Result<(), CatalogError> {
    let mut sf = repository::load(&ctx.dest, id).await?;
    if let Some(last) = sf
        .history
        .iter_mut()
        .rev()
        .find(|h| h["event"] == "restore" && h["at"] == serde_json::json!(started))
    {
        *last = entry;
    }
    repository::save(&ctx.dest, &sf).await?;
    Ok(())
}
