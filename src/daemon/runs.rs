//! The daemon's runs: one at a time, started by a schedule or the API: a backup then a prune,
//! or a restore drill; a missed backup happens at start.

use std::sync::Arc;

use chrono::Utc;

use super::{Daemon, RunInfo, RunOutcome, Schedule};
use crate::commands::backup::{self, BackupRequest};
use crate::commands::drill::{self, DrillRequest};
use crate::commands::prune::{self, Selection};
use crate::components::Component;
use crate::interrupt::Interrupt;
use crate::progress::{Event, Progress};
use crate::repository::{self, RequestType};

/// What a run does.
#[derive(Debug, Clone)]
pub(super) enum Job {
    /// A backup with this label, then a prune when a retention policy is set.
    Backup {
        label: String,
    },
    Drill(DrillRequest),
}

impl Job {
    fn kind(&self) -> &'static str {
        match self {
            Job::Backup { .. } => "backup",
            Job::Drill(_) => "drill",
        }
    }
}

impl Daemon {
    /// Starts a run in the background, unless one is going or the daemon is stopping; the
    /// refusal says which.
    pub(super) fn start(self: &Arc<Self>, trigger: &str, job: Job) -> Result<RunInfo, String> {
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
                    Job::Backup { label } => me.run(&trigger, label, request, interrupt).await,
                    Job::Drill(req) => me.drill(&trigger, req, interrupt).await,
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
                backup_id: None,
                error: Some(format!("the run panicked: {e}")),
                pruned: None,
            });
            if let Some(e) = &outcome.error {
                tracing::error!("{} {} run: {e}", outcome.trigger, outcome.kind);
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
        // On a thread of its own: rustc cannot prove the drill's future Send (its streams
        // borrow across awaits, a higher-ranked lifetime), which a spawned task must be.
        let handle = tokio::runtime::Handle::current();
        let req2 = req.clone();
        let ran = tokio::task::spawn_blocking(move || handle.block_on(drill::run(&ctx, &req2)))
            .await
            .unwrap_or_else(|e| Err(drill::DrillError::Usage(format!("the drill panicked: {e}"))));
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
            pruned: None,
        }
    }

    async fn run(
        self: &Arc<Self>,
        trigger: &str,
        label: String,
        request: RequestType,
        interrupt: Interrupt,
    ) -> RunOutcome {
        let ctx = (self.make)(self.progress(), interrupt);
        let started_at = Utc::now();
        let req = BackupRequest {
            label,
            components: Component::ALL.to_vec(),
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
                backup_id: Some(r.statefile.backup_id),
                error: None,
                pruned: None,
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
                error: Some(e.to_string()),
                pruned: None,
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
        outcome.finished_at = Utc::now();
        outcome
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
    }
}
