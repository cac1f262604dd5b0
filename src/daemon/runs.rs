//! The daemon's runs: one at a time, started by a schedule or the API: a backup then a prune,
//! or a restore drill; a missed backup happens at start.

use std::sync::Arc;

use chrono::Utc;

use super::{Daemon, RunInfo, RunOutcome, Schedule};
use crate::commands::backup::{self, BackupRequest};
use crate::commands::copy::{self, CopyRequest};
use crate::commands::drill::{self, DrillRequest};
use crate::commands::prune::{self, Selection};
use crate::commands::restore::{self, RestoreRequest};
use crate::commands::verify;
use crate::components::check::Mode;
use crate::components::Component;
use crate::context::Context;
use crate::interrupt::Interrupt;
use crate::progress::{Event, Progress};
use crate::repository::{self, RequestType};

/// What a run does.
#[derive(Debug, Clone)]
pub(crate) enum Job {
    /// A backup with this label, then a prune when a retention policy is set, then a copy to
    /// the secondary (and its prune) when the daemon copies after every backup.
    Backup {
        label: String,
        components: Vec<Component>,
    },
    Drill(DrillRequest),
    Copy(CopyRequest),
    Verify {
        backup_id: String,
        mode: Mode,
    },
    Restore(RestoreRequest),
}

impl Job {
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Job::Backup { .. } => "backup",
            Job::Drill(_) => "drill",
            Job::Copy(_) => "copy",
            Job::Verify { .. } => "verify",
            Job::Restore(_) => "restore",
        }
    }
}

/// Runs `work` on a thread of its own, on the daemon's runtime: rustc cannot prove some
/// commands' futures `Send` (their streams borrow across awaits, a higher-ranked lifetime),
/// which a spawned task must be.
async fn off_thread<T: Send + 'static>(
    work: impl FnOnce(&tokio::runtime::Handle) -> T + Send + 'static,
) -> Result<T, String> {
    let handle = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || work(&handle))
        .await
        .map_err(|e| format!("the run panicked: {e}"))
}

impl Daemon {
    /// Starts a run in the background, unless one is going or the daemon is stopping; the
    /// refusal says which.
    pub(super) fn start(self: &Arc<Self>, trigger: &str, job: Job) -> Result<RunInfo, String> {
        self.start_watched(trigger, job, None)
    }

    /// [`Daemon::start`], the run's outcome sent to `watch` when it ends.
    pub(super) fn start_watched(
        self: &Arc<Self>,
        trigger: &str,
        job: Job,
        watch: Option<tokio::sync::oneshot::Sender<RunOutcome>>,
    ) -> Result<RunInfo, String> {
        let mut running = self.running.lock().expect("daemon state");
        if self.stopping.load(std::sync::atomic::Ordering::SeqCst) {
            return Err("the daemon is stopping".into());
        }
        if let Some(r) = running.as_ref() {
            return Err(format!(
                "a {} is already running ({} run started {}, now at step {})",
                r.kind,
                r.trigger,
                r.started_at.to_rfc3339(),
                r.step
            ));
        }
        let kind = job.kind();
        let info = RunInfo {
            kind,
            trigger: trigger.into(),
            started_at: Utc::now(),
            step: "starting".into(),
            finishing: false,
            interrupt: Interrupt::new(),
        };
        *running = Some(info.clone());
        drop(running);
        let request = if trigger == "schedule" {
            RequestType::Scheduled
        } else {
            RequestType::Manual
        };
        let (me, trigger) = (self.clone(), trigger.to_string());
        let interrupt = info.interrupt.clone();
        let work = {
            let (me, trigger) = (me.clone(), trigger.clone());
            async move {
                match job {
                    Job::Backup { label, components } => {
                        me.run(&trigger, label, components, request, interrupt)
                            .await
                    }
                    Job::Drill(req) => me.drill(&trigger, req, interrupt).await,
                    other => me.other(&trigger, other, interrupt).await,
                }
            }
        };
        tokio::spawn(async move {
            let started_at = Utc::now();
            // A panic must not leave the daemon believing a run is going for ever.
            let outcome = tokio::spawn(work).await.unwrap_or_else(|e| RunOutcome {
                kind,
                trigger: trigger.clone(),
                started_at,
                finished_at: Utc::now(),
                outcome: "failed".into(),
                error: Some(format!("the run panicked: {e}")),
                ..RunOutcome::default()
            });
            if let Some(e) = &outcome.error {
                tracing::error!("{} {} run: {e}", outcome.trigger, outcome.kind);
            }
            if let Some(w) = watch {
                let _ = w.send(outcome.clone());
            }
            *me.last.lock().expect("daemon state") = Some(outcome);
            *me.running.lock().expect("daemon state") = None;
            me.done.notify_waiters();
        });
        Ok(info)
    }

    /// Progress that keeps the running step up to date for /healthz and shutdown.
    fn progress(self: &Arc<Self>) -> Progress {
        let me = self.clone();
        Progress::to(move |e| {
            if let Event::Step { step, .. } = e {
                if let Some(r) = me.running.lock().expect("daemon state").as_mut() {
                    r.step = step.clone();
                    // The backup's own check of what it wrote: only its end is left.
                    if step == "verify" {
                        r.finishing = true;
                    }
                }
            }
        })
    }

    async fn drill(
        self: &Arc<Self>,
        trigger: &str,
        req: DrillRequest,
        interrupt: Interrupt,
    ) -> RunOutcome {
        let ctx = (self.make)(self.progress(), interrupt);
        let started_at = Utc::now();
        let req2 = req.clone();
        let ran = off_thread(move |h| h.block_on(drill::run(&ctx, &req2)))
            .await
            .unwrap_or_else(|e| Err(drill::DrillError::Usage(e)));
        let output = ran.as_ref().ok().map(json);
        let (outcome, backup_id, error) = match ran {
            Ok(r) if r.passed => ("passed", Some(r.backup_id), None),
            Ok(r) => {
                let first = r
                    .problems
                    .named
                    .first()
                    .map(|p| format!(", first: {p}"))
                    .unwrap_or_default();
                let e = format!(
                    "the drill of backup {} found {} problem(s){first}",
                    r.backup_id, r.problems.total
                );
                ("failed", Some(r.backup_id), Some(e))
            }
            Err(e) => ("error", req.backup_id.clone(), Some(e.to_string())),
        };
        RunOutcome {
            kind: "drill",
            trigger: trigger.into(),
            started_at,
            finished_at: Utc::now(),
            outcome: outcome.into(),
            backup_id,
            error,
            output,
            ..RunOutcome::default()
        }
    }

    /// A copy, a verification or a restore (asked through the bucket, or the API).
    async fn other(self: &Arc<Self>, trigger: &str, job: Job, interrupt: Interrupt) -> RunOutcome {
        let ctx = (self.make)(self.progress(), interrupt);
        let started_at = Utc::now();
        let kind = job.kind();
        let secondary = self.settings.secondary.clone();
        let ran: Result<(String, Option<String>, serde_json::Value, Option<String>), String> =
            off_thread(move |h| match job {
                Job::Copy(req) => {
                    let Some(to) = secondary else {
                        return Err("no secondary destination is configured (the daemon's --secondary-s3-*, the charm's s3-secondary relation)".to_string());
                    };
                    let r = h
                        .block_on(copy::run(&ctx, &to, &req))
                        .map_err(|e| e.to_string())?;
                    let id = r.copied.last().map(|c| c.backup_id.clone());
                    match not_copied(&r) {
                        None => Ok(("completed".into(), id, json(&r), None)),
                        Some(e) => Ok(("failed".into(), id, json(&r), Some(e))),
                    }
                }
                Job::Verify { backup_id, mode } => {
                    let spool = ctx.tuning.scratch();
                    let v = h
                        .block_on(verify::verify(
                            &ctx.dest,
                            Some(&ctx.juju),
                            &backup_id,
                            mode,
                            &spool,
                            ctx.tuning.streaming,
                            &ctx.progress,
                        ))
                        .map_err(|e| e.to_string())?;
                    let (outcome, error) = if v.passed {
                        ("passed", None)
                    } else {
                        (
                            "failed",
                            Some(format!(
                                "backup {backup_id} failed verification: {} problem(s)",
                                v.problems.len()
                            )),
                        )
                    };
                    Ok((outcome.into(), Some(backup_id), json(&v), error))
                }
                Job::Restore(req) => {
                    let r = h
                        .block_on(restore::run(&ctx, &req))
                        .map_err(|e| e.to_string())?;
                    Ok(("completed".into(), Some(r.backup_id.clone()), json(&r), None))
                }
                Job::Backup { .. } | Job::Drill(_) => Err("not run here".into()),
            })
            .await
            .and_then(|r| r);
        let mut out = RunOutcome {
            kind,
            trigger: trigger.into(),
            started_at,
            finished_at: Utc::now(),
            ..RunOutcome::default()
        };
        match ran {
            Ok((outcome, backup_id, output, error)) => {
                out.outcome = outcome;
                out.backup_id = backup_id;
                out.output = Some(output);
                out.error = error;
            }
            Err(e) => {
                out.outcome = "failed".into();
                out.error = Some(e);
            }
        }
        out
    }

    async fn run(
        self: &Arc<Self>,
        trigger: &str,
        label: String,
        components: Vec<Component>,
        request: RequestType,
        interrupt: Interrupt,
    ) -> RunOutcome {
        let ctx = (self.make)(self.progress(), interrupt);
        let started_at = Utc::now();
        let req = BackupRequest {
            label,
            components,
            force: false,
            request,
        };
        let mut outcome = match backup::run(&ctx, &req).await {
            Ok(r) => RunOutcome {
                kind: "backup",
                trigger: trigger.into(),
                started_at,
                finished_at: Utc::now(),
                outcome: "completed".into(),
                backup_id: Some(r.statefile.backup_id.clone()),
                output: Some(json(&r)),
                ..RunOutcome::default()
            },
            Err(e) => RunOutcome {
                kind: "backup",
                trigger: trigger.into(),
                started_at,
                finished_at: Utc::now(),
                outcome: "failed".into(),
                backup_id: match &e {
                    backup::BackupError::Failed { id, .. }
                    | backup::BackupError::NotRestored { id, .. } => Some(id.clone()),
                    _ => None,
                },
                output: Some(match &e {
                    backup::BackupError::Failed { statefile, .. }
                    | backup::BackupError::NotRestored { statefile, .. } => {
                        serde_json::json!({"error": e.to_string(), "statefile": json(statefile)})
                    }
                    _ => serde_json::json!({"error": e.to_string(), "statefile": null}),
                }),
                error: Some(e.to_string()),
                ..RunOutcome::default()
            },
        };
        let stopping = self.stopping.load(std::sync::atomic::Ordering::SeqCst);
        if outcome.outcome == "completed"
            && !self.settings.retention.is_empty()
            && !ctx.interrupt.is_triggered()
            && !stopping
        {
            match prune::run(&ctx, &Selection::Policy(self.settings.retention.clone())).await {
                Ok(r) => outcome.pruned = Some(r.forgotten.len()),
                Err(e) => outcome.error = Some(format!("prune after the backup: {e}")),
            }
        }
        if outcome.outcome == "completed" && !ctx.interrupt.is_triggered() && !stopping {
            self.copy_after(ctx, &mut outcome).await;
        }
        outcome.finished_at = Utc::now();
        outcome
    }

    /// After a completed backup, when the daemon copies after every backup: every completed
    /// backup the secondary lacks (this one, and any an earlier failed copy missed), then the
    /// secondary's own retention.
    async fn copy_after(self: &Arc<Self>, ctx: Context, outcome: &mut RunOutcome) {
        let (Some(to), true) = (
            self.settings.secondary.clone(),
            self.settings.copy_after_backup,
        ) else {
            return;
        };
        let policy = self.settings.secondary_retention.clone();
        let done: Result<(usize, Option<usize>), String> = off_thread(move |h| {
            let r = h
                .block_on(copy::run(&ctx, &to, &CopyRequest::default()))
                .map_err(|e| format!("copy to the secondary after the backup: {e}"))?;
            if let Some(e) = not_copied(&r) {
                return Err(format!("copy to the secondary after the backup: {e}"));
            }
            let mut pruned = None;
            if !policy.is_empty() && !ctx.interrupt.is_triggered() {
                let on_secondary = Context { dest: to, ..ctx };
                let p = h
                    .block_on(prune::run(&on_secondary, &Selection::Policy(policy)))
                    .map_err(|e| format!("prune of the secondary after the copy: {e}"))?;
                pruned = Some(p.forgotten.len());
            }
            Ok((r.copied.len(), pruned))
        })
        .await
        .and_then(|r| r);
        match done {
            Ok((copied, pruned)) => {
                outcome.copied = Some(copied);
                outcome.secondary_pruned = pruned;
            }
            Err(e) => {
                outcome.error = Some(match outcome.error.take() {
                    Some(before) => format!("{before}; {e}"),
                    None => e,
                })
            }
        }
    }

    pub(super) async fn wait_idle(&self) {
        loop {
            let notified = self.done.notified();
            if self.running.lock().expect("daemon state").is_none() {
                return;
            }
            notified.await;
        }
    }

    pub(super) async fn scheduler(self: Arc<Self>, schedule: Schedule, shutdown: Interrupt) {
        // A run missed while the daemon was down happens now, once.
        let now = Utc::now();
        let newest = repository::summary(&self.dest)
            .await
            .ok()
            .and_then(|s| s.newest_completed)
            .map(|s| s.started_at);
        let missed = match (newest, schedule.period(now)) {
            (None, _) => true,
            (Some(t), Some(period)) => now - t > period,
            _ => false,
        };
        if missed {
            tracing::info!(
                "the newest completed backup is older than the schedule's period: backing up now"
            );
            let _ = self.start("schedule", backup_job());
        }
        loop {
            let Some(next) = schedule.next_after(Utc::now()) else {
                tracing::warn!("schedule {} has no next run", schedule.text);
                return;
            };
            *self.next.lock().expect("daemon state") = Some(next);
            let wait = (next - Utc::now()).to_std().unwrap_or_default();
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = shutdown.triggered() => return,
            }
            match self.start("schedule", backup_job()) {
                Ok(_) => {}
                // A drill can take hours: the backup waits for it rather than being skipped.
                Err(why) if self.running_kind() == Some("drill") => {
                    tracing::info!("the backup due at {next} waits: {why}");
                    tokio::select! {
                        _ = self.wait_idle() => {}
                        _ = shutdown.triggered() => return,
                    }
                    if let Err(why) = self.start("schedule", backup_job()) {
                        tracing::warn!("skipping the run due at {next}: {why}");
                    }
                }
                Err(why) => tracing::warn!("skipping the run due at {next}: {why}"),
            }
        }
    }

    fn running_kind(&self) -> Option<&'static str> {
        self.running
            .lock()
            .expect("daemon state")
            .as_ref()
            .map(|r| r.kind)
    }

    /// Drills the newest completed backup when `schedule` says, after any run in progress (a
    /// drill due during a backup drills that backup once it has finished).
    pub(super) async fn drill_scheduler(self: Arc<Self>, schedule: Schedule, shutdown: Interrupt) {
        loop {
            let Some(next) = schedule.next_after(Utc::now()) else {
                tracing::warn!("drill schedule {} has no next run", schedule.text);
                return;
            };
            *self.next_drill.lock().expect("daemon state") = Some(next);
            let wait = (next - Utc::now()).to_std().unwrap_or_default();
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = shutdown.triggered() => return,
            }
            loop {
                tokio::select! {
                    _ = self.wait_idle() => {}
                    _ = shutdown.triggered() => return,
                }
                let req = DrillRequest {
                    pick: crate::components::mlpipeline::Pick {
                        sample: self.settings.drill_sample,
                        max_bytes: None,
                    },
                    ..DrillRequest::default()
                };
                match self.start("schedule", Job::Drill(req)) {
                    Ok(_) => break,
                    // Another run took the slot between idle and start: wait for it too.
                    Err(why) if !self.stopping.load(std::sync::atomic::Ordering::SeqCst) => {
                        tracing::info!("the drill due at {next} waits: {why}");
                    }
                    Err(_) => return,
                }
            }
        }
    }
}

fn backup_job() -> Job {
    Job::Backup {
        label: "scheduled".into(),
        components: Component::ALL.to_vec(),
    }
}

/// The backups a copy could not send, as one error.
fn not_copied(r: &copy::CopyReport) -> Option<String> {
    (!r.failed.is_empty()).then(|| {
        r.failed
            .iter()
            .map(|f| format!("backup {} not copied: {}", f.backup_id, f.error))
            .collect::<Vec<_>>()
            .join("; ")
    })
}

/// What the CLI's `--output json` prints for the same result.
fn json<T: serde::Serialize>(v: &T) -> serde_json::Value {
    serde_json::to_value(v).unwrap_or_else(|e| serde_json::json!({"error": e.to_string()}))
}
