//! Quiescing the control plane through `juju scale-application`, with a journal: the scale of
//! every application a run may touch is recorded (in the statefile) before any is changed, so
//! the run itself, or a later one, can always put them back.

use std::time::{Duration, Instant};

use crate::interrupt::Interrupt;
use crate::juju::{self, JujuCli, JujuError, Status};
use crate::progress::Progress;
use crate::repository::ScaleRecord;
use crate::retry::retry_blocking;

#[derive(Debug, thiserror::Error)]
pub enum QuiesceError {
    #[error("scaling {app} to {scale}: {source}")]
    Juju {
        app: String,
        scale: u32,
        #[source]
        source: JujuError,
    },
    #[error("{app} did not settle at {scale} units within {}s ({state}): check `juju status {app}`", .waited.as_secs())]
    NotSettled {
        app: String,
        scale: u32,
        waited: Duration,
        state: String,
    },
    #[error("reading juju status while scaling: {0}")]
    Status(JujuError),
    #[error("{0}")]
    Interrupted(String),
}

/// How long to wait for scale changes, and how often to look.
#[derive(Debug, Clone, Copy)]
pub struct ScaleWait {
    pub timeout: Duration,
    pub first_poll: Duration,
    pub max_poll: Duration,
}

impl Default for ScaleWait {
    fn default() -> Self {
        ScaleWait {
            timeout: Duration::from_secs(15 * 60),
            first_poll: Duration::from_millis(250),
            max_poll: Duration::from_secs(5),
        }
    }
}

/// A journal entry per application: `changed_to == original` means it is recorded but left as
/// it is.
pub fn record(app: &str, original: u32, wanted: u32) -> ScaleRecord {
    ScaleRecord {
        app: app.into(),
        original,
        changed_to: wanted,
        restored: wanted == original,
    }
}

/// The applications a journal changes, and the scale each goes to while the run works.
pub fn targets(journal: &[ScaleRecord]) -> Vec<(String, u32)> {
    journal
        .iter()
        .filter(|r| r.changed_to != r.original)
        .map(|r| (r.app.clone(), r.changed_to))
        .collect()
}

fn status(cli: &JujuCli) -> Result<Status, QuiesceError> {
    retry_blocking(crate::retry::ATTEMPTS, "juju status", || cli.status())
        .map_err(QuiesceError::Status)
}

fn scale(cli: &JujuCli, app: &str, n: u32) -> Result<(), QuiesceError> {
    retry_blocking(crate::retry::ATTEMPTS, "juju scale-application", || {
        cli.scale_application(app, n)
    })
    .map_err(|source| QuiesceError::Juju {
        app: app.into(),
        scale: n,
        source,
    })
}

/// Scales each `(app, n)` and waits until all of them settled; returns the last status seen.
/// Blocking: run it off the async threads.
/// Stops waiting once `interrupt` triggers: the caller then puts the scales back, and a poller
/// left behind would wait for a scale that is no longer wanted.
pub fn scale_and_wait(
    cli: &JujuCli,
    targets: &[(String, u32)],
    wait: ScaleWait,
    progress: &Progress,
    interrupt: &Interrupt,
) -> Result<Status, QuiesceError> {
    for (app, n) in targets {
        progress.step("quiesce", format!("scaling {app} to {n}"));
        scale(cli, app, *n)?;
    }
    wait_settled(cli, targets, wait, Some(interrupt))
}

/// Polls `juju status`, backing off, until every target settled or the wait is over.
pub fn wait_settled(
    cli: &JujuCli,
    targets: &[(String, u32)],
    wait: ScaleWait,
    interrupt: Option<&Interrupt>,
) -> Result<Status, QuiesceError> {
    let start = Instant::now();
    let mut poll = wait.first_poll;
    loop {
        if let Some(reason) = interrupt.and_then(|i| i.reason()) {
            return Err(QuiesceError::Interrupted(reason));
        }
        let st = status(cli)?;
        let pending = targets.iter().find_map(|(app, n)| {
            juju::scale_settled(&st, app, *n)
                .err()
                .map(|why| (app, *n, why))
        });
        let Some((app, n, why)) = pending else {
            return Ok(st);
        };
        let waited = start.elapsed();
        if waited >= wait.timeout {
            return Err(QuiesceError::NotSettled {
                app: app.clone(),
                scale: n,
                waited,
                state: why,
            });
        }
        std::thread::sleep(poll.min(wait.timeout - waited));
        poll = (poll * 2).min(wait.max_poll);
    }
}

/// Puts every changed application back to its recorded scale and marks it restored. Tries all
/// of them even when one fails; the error names each that is not back and how to fix it.
pub fn restore(
    cli: &JujuCli,
    journal: &mut [ScaleRecord],
    wait: ScaleWait,
    progress: &Progress,
) -> Result<(), String> {
    let mut failed = vec![];
    let mut scaled = vec![];
    for r in journal.iter().filter(|r| !r.restored) {
        progress.step(
            "unquiesce",
            format!("scaling {} back to {}", r.app, r.original),
        );
        match scale(cli, &r.app, r.original) {
            Ok(()) => scaled.push((r.app.clone(), r.original)),
            Err(e) => failed.push(e.to_string()),
        }
    }
    if let Err(e) = wait_settled(cli, &scaled, wait, None) {
        failed.push(e.to_string());
    }
    let st = status(cli).ok();
    for r in journal.iter_mut().filter(|r| !r.restored) {
        r.restored = st
            .as_ref()
            .is_some_and(|s| juju::scale_settled(s, &r.app, r.original).is_ok());
    }
    let fix: Vec<String> = journal
        .iter()
        .filter(|r| !r.restored)
        .map(|r| format!("`juju scale-application {} {}`", r.app, r.original))
        .collect();
    if fix.is_empty() {
        return Ok(());
    }
    if failed.is_empty() {
        failed.push("juju status does not show them settled".into());
    }
    Err(format!(
        "{}; put them back with {}",
        failed.join("; "),
        fix.join(" and ")
    ))
}
