//! The daemon's runs: one at a time, started by the schedule or the API, each a backup then a
//! prune; a missed run happens at start.

use std::sync::Arc;

use chrono::Utc;

use super::{Daemon, RunInfo, RunOutcome, Schedule};
use crate::commands::backup::{self, BackupRequest};
use crate::commands::prune::{self, Selection};
use crate::components::Component;
use crate::interrupt::Interrupt;
use crate::progress::{Event, Progress};
use crate::repository::{self, RequestType};

impl Daemon {
    /// Starts a backup (then a prune) in the background, unless one is going or the daemon
    /// is stopping; the refusal says which.
    pub(super) fn start(self: &Arc<Self>, trigger: &str, label: &str) -> Result<RunInfo, String> {
        let mut running = self.running.lock().expect("daemon state");
        if self.stopping.load(std::sync::atomic::Ordering::SeqCst) {
            return Err("the daemon is stopping".into());
        }
        if let Some(r) = running.as_ref() {
            return Err(format!(
                "a backup is already running ({} run started {}, now at step {})",
                r.trigger,
                r.started_at.to_rfc3339(),
                r.step
            ));
        }
        let info = RunInfo {
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
        let (me, label, trigger) = (self.clone(), label.to_string(), trigger.to_string());
        let interrupt = info.interrupt.clone();
        let work = {
            let (me, trigger) = (me.clone(), trigger.clone());
            async move { me.run(&trigger, label, request, interrupt).await }
        };
        tokio::spawn(async move {
            let started_at = Utc::now();
            // A panic must not leave the daemon believing a run is going for ever.
            let outcome = tokio::spawn(work).await.unwrap_or_else(|e| RunOutcome {
                trigger: trigger.clone(),
                started_at,
                finished_at: Utc::now(),
                outcome: "failed".into(),
                backup_id: None,
                error: Some(format!("the run panicked: {e}")),
                pruned: None,
            });
            if let Some(e) = &outcome.error {
                tracing::error!("{} run: {e}", outcome.trigger);
            }
            *me.last.lock().expect("daemon state") = Some(outcome);
            *me.running.lock().expect("daemon state") = None;
            me.done.notify_waiters();
        });
        Ok(info)
    }

    async fn run(
        self: &Arc<Self>,
        trigger: &str,
        label: String,
        request: RequestType,
        interrupt: Interrupt,
    ) -> RunOutcome {
        let me = self.clone();
        let progress = Progress::to(move |e| {
            if let Event::Step { step, .. } = e {
                if let Some(r) = me.running.lock().expect("daemon state").as_mut() {
                    r.step = step.clone();
                    // The backup's own check of what it wrote: only its end is left.
                    if step == "verify" {
                        r.finishing = true;
                    }
                }
            }
        });
        let ctx = (self.make)(progress, interrupt);
        let started_at = Utc::now();
        let req = BackupRequest {
            label,
            components: Component::ALL.to_vec(),
            force: false,
            request,
        };
        let mut outcome = match backup::run(&ctx, &req).await {
            Ok(r) => RunOutcome {
                trigger: trigger.into(),
                started_at,
                finished_at: Utc::now(),
                outcome: "completed".into(),
                backup_id: Some(r.statefile.backup_id),
                error: None,
                pruned: None,
            },
            Err(e) => RunOutcome {
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
            let _ = self.start("schedule", "scheduled");
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
            if let Err(why) = self.start("schedule", "scheduled") {
                tracing::warn!("skipping the run due at {next}: {why}");
            }
        }
    }
}
