//! Repairing what a killed run left. A backup journals every scale it changes in its statefile
//! before changing it, and a restore journals them in the restored backup's history, so a run
//! that died (SIGKILL, OOM, a node lost) leaves enough behind: the next run that takes the
//! repository lock — or `backup-agent recover` — puts those scales back, marks the backup
//! `failed` (or the restore entry `failed`) with the reason, and the lock is its own.
//!
//! Only runs under the lock: while we hold it no other run can be writing, so every record
//! still in a running phase belongs to a run that is gone.

use chrono::Utc;
use serde::Serialize;

use crate::context::Context;
use crate::juju::scale;
use crate::repository::lock::{self, Lease, LeaseError};
use crate::repository::{self, ErrorRecord, Listed, Phase, ScaleRecord, Statefile};

#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct Recovered {
    /// Backups whose run died, now marked failed.
    pub backups: Vec<String>,
    /// Backups whose restore died, now recorded as failed in their history.
    pub restores: Vec<String>,
    /// Scales put back.
    pub scales: Vec<ScaleRecord>,
}

impl Recovered {
    pub fn is_empty(&self) -> bool {
        self.backups.is_empty() && self.restores.is_empty()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RecoveryError {
    #[error("{0}")]
    Lock(Box<LeaseError>),
    #[error("preflight: destination {store} cannot be reached to take the repository lock ({detail}): check the endpoint, the network and that the S3 server is up")]
    Unreachable { store: String, detail: String },
    #[error("recovering after an interrupted run: {0}")]
    Catalog(#[from] repository::CatalogError),
    #[error(
        "recovering {what}: {detail}. The record is left as it is so that the next run tries again"
    )]
    Scales { what: String, detail: String },
}

fn running(phase: Phase) -> bool {
    !matches!(
        phase,
        Phase::Completed | Phase::Failed | Phase::PartiallyFailed
    )
}

/// Puts back what a dead run changed, but only where that is still its doing: the same
/// model, the app still there, and still at the scale the run set. A record from another
/// model (the bucket used from a new cluster), or an app someone has scaled since, is left
/// alone and said so; the record is marked failed either way, so it never blocks later runs.
async fn put_back(
    ctx: &Context,
    model: &str,
    journal: Vec<ScaleRecord>,
) -> (Vec<ScaleRecord>, Result<(), String>, Vec<String>) {
    if journal.iter().all(|r| r.restored) {
        return (journal, Ok(()), vec![]);
    }
    let mut notes = vec![];
    if !model.is_empty() && model != ctx.juju.model() {
        notes.push(format!(
            "scales not touched: the run was in model {model}, this is {}",
            ctx.juju.model()
        ));
        return (journal, Ok(()), notes);
    }
    let (juju, wait, p) = (
        ctx.juju.clone(),
        ctx.tuning.scale_wait,
        ctx.progress.clone(),
    );
    tokio::task::spawn_blocking(move || {
        let status = match juju.status() {
            Ok(s) => s,
            Err(e) => return (journal, Err(format!("cannot read the model to put scales back: {e}")), notes),
        };
        let mut ours = vec![];
        for (i, r) in journal.iter().enumerate().filter(|(_, r)| !r.restored) {
            match status.applications.get(&r.app).map(|a| a.scale.unwrap_or(a.units.len() as u32)) {
                None => notes.push(format!("{} is not in the model any more: not scaled", r.app)),
                // At its original scale already (never changed, or the dead run's put-back was
                // under way): scaling to it again is a no-op that lets the wait below see the
                // units actually there.
                Some(now) if now == r.original => ours.push(i),
                Some(now) if now != r.changed_to => notes.push(format!(
                    "{} is at scale {now}, not the {} the dead run set: left as it is (it was {} before that run)",
                    r.app, r.changed_to, r.original
                )),
                Some(_) => ours.push(i),
            }
        }
        let mut sub: Vec<ScaleRecord> = ours.iter().map(|i| journal[*i].clone()).collect();
        let r = scale::restore(&juju, &mut sub, wait, &p);
        let mut journal = journal;
        for (i, rec) in ours.into_iter().zip(sub) {
            journal[i] = rec;
        }
        (journal, r, notes)
    })
    .await
    .expect("scale restore task")
}

/// Puts one dead run's scales back; the journal as it is now and the reason to record.
async fn repair(
    ctx: &Context,
    model: &str,
    journal: Vec<ScaleRecord>,
    what: &str,
    reason: &str,
    out: &mut Recovered,
) -> Result<(Vec<ScaleRecord>, String), RecoveryError> {
    let (journal, r, notes) = put_back(ctx, model, journal).await;
    for n in &notes {
        ctx.progress.warn(format!("{what}: {n}"));
    }
    if let Err(detail) = r {
        return Err(RecoveryError::Scales {
            what: what.into(),
            detail,
        });
    }
    out.scales.extend(
        journal
            .iter()
            .filter(|r| r.changed_to != r.original)
            .cloned(),
    );
    let why = if notes.is_empty() {
        reason.to_string()
    } else {
        format!("{reason}; {}", notes.join("; "))
    };
    Ok((journal, why))
}

/// Repairs every record a dead run left. Call with the lock held.
pub async fn recover(ctx: &Context, by: &str) -> Result<Recovered, RecoveryError> {
    let p = &ctx.progress;
    let mut out = Recovered::default();
    for listed in repository::list(&ctx.dest).await? {
        let sf = match listed {
            Listed::Backup(sf) => sf,
            // A statefile we could not fetch may be the dead run's: do not go on without it.
            Listed::Unreadable {
                id,
                error: repository::CatalogError::Store(e),
            } => {
                return Err(RecoveryError::Catalog(
                    repository::CatalogError::Malformed {
                        key: repository::statefile_key(&id),
                        detail: format!("cannot be read to check for an interrupted run: {e}"),
                    },
                ))
            }
            Listed::Unreadable { id, error } => {
                p.warn(format!("backup {id}: {error} (skipped)"));
                continue;
            }
        };
        let mut sf: Statefile = *sf;
        let mut changed = false;
        let reason = format!(
            "interrupted: its run ended without finishing (killed?); found by {by} at {}",
            Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        );
        if running(sf.phase) {
            p.warn(format!(
                "backup {} was left {} by a run that is gone: putting its scales back and marking it failed",
                sf.backup_id,
                sf.phase.as_str()
            ));
            let what = format!("backup {}", sf.backup_id);
            let journal = std::mem::take(&mut sf.quiesce);
            let (journal, why) = repair(ctx, &sf.model, journal, &what, &reason, &mut out).await?;
            sf.quiesce = journal;
            sf.phase = Phase::Failed;
            sf.finished_at = Some(Utc::now());
            sf.errors.push(ErrorRecord {
                component: "agent".into(),
                message: why,
                at: Utc::now(),
            });
            out.backups.push(sf.backup_id.clone());
            changed = true;
        } else if sf.quiesce.iter().any(|r| !r.restored) {
            // A run that ended but could not put a scale back (juju down at the time): its
            // record says failed already; the scales are still ours to put back.
            p.warn(format!(
                "backup {} ended without putting every scale back: putting them back now",
                sf.backup_id
            ));
            let what = format!("backup {}", sf.backup_id);
            let journal = std::mem::take(&mut sf.quiesce);
            let note = "scales put back by a later run";
            let (journal, _) = repair(ctx, &sf.model, journal, &what, note, &mut out).await?;
            sf.quiesce = journal;
            out.backups.push(sf.backup_id.clone());
            changed = true;
        }
        for entry in sf.history.iter_mut() {
            if entry["event"] != "restore" || entry["phase"] != "running" {
                continue;
            }
            p.warn(format!(
                "a restore of backup {} was left running by a run that is gone: putting its scales back",
                sf.backup_id
            ));
            let journal: Vec<ScaleRecord> =
                serde_json::from_value(entry["quiesce"].clone()).unwrap_or_default();
            // The restore ran in whatever model it was pointed at; the scale check suffices.
            let what = format!("the restore of backup {}", sf.backup_id);
            let (journal, why) = repair(ctx, "", journal, &what, &reason, &mut out).await?;
            entry["quiesce"] = serde_json::json!(journal);
            entry["phase"] = "finished".into();
            entry["outcome"] = "failed".into();
            entry["error"] = why.into();
            out.restores.push(sf.backup_id.clone());
            changed = true;
        }
        if changed {
            repository::save(&ctx.dest, &sf)
                .await
                .map_err(repository::CatalogError::from)?;
        }
    }
    if !out.is_empty() {
        p.step(
            "recover",
            format!(
                "recovered {} interrupted backup(s) and {} interrupted restore(s)",
                out.backups.len(),
                out.restores.len()
            ),
        );
    }
    Ok(out)
}

/// Takes the repository lock for `operation`, then repairs what dead runs left: what every
/// mutating command does first.
pub async fn lock_and_recover(
    ctx: &Context,
    operation: &str,
) -> Result<(Lease, Recovered), RecoveryError> {
    let lock = lock::acquire(
        &ctx.dest,
        operation,
        ctx.tuning.lease,
        ctx.tuning.break_lock,
        ctx.interrupt.clone(),
    )
    .await
    .map_err(|e| match e {
        LeaseError::Store(e) => RecoveryError::Unreachable {
            store: ctx.dest.describe(),
            detail: e.to_string(),
        },
        e => RecoveryError::Lock(Box::new(e)),
    })?;
    let name = operation.split(' ').next().unwrap_or(operation);
    match recover(ctx, name).await {
        Ok(r) => Ok((lock, r)),
        Err(e) => {
            let _ = lock.release().await;
            Err(e)
        }
    }
}
