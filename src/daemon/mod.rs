//! The daemon, `backup-agent serve`: backups on a cron schedule followed by a prune, and an
//! HTTP API on loopback (backups, health, Prometheus metrics).
//!
//! The repository stays the only state: the API and the metrics read the statefiles, so a
//! restarted daemon (or another machine) tells the same story. In memory there is only what
//! a statefile cannot say: whether a run is going, and when the next one is due.

mod http;
pub(crate) mod metrics;
pub(crate) mod runs;
mod schedule;
pub mod watcher;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use serde::Serialize;

pub use http::MAX_BODY;
pub use schedule::Schedule;

use crate::context::Context;
use crate::interrupt::Interrupt;
use crate::progress::Progress;
use crate::repository::retention::Policy;
use crate::secret::Secret;
use crate::storage::Store;

/// `KEY=VALUE` lines (blank lines and `#` comments allowed); the message names the line.
pub fn read_env_file(path: &std::path::Path) -> Result<Vec<(String, String)>, String> {
    let text =
        std::fs::read_to_string(path).map_err(|e| format!("--env-file {}: {e}", path.display()))?;
    let mut out = vec![];
    for (i, line) in text.lines().enumerate() {
        let l = line.trim();
        if l.is_empty() || l.starts_with('#') {
            continue;
        }
        match l.split_once('=') {
            Some((k, v))
                if !k.is_empty() && k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') =>
            {
                out.push((k.to_string(), v.to_string()))
            }
            // The line may hold a key: say where, not what.
            _ => {
                return Err(format!(
                    "--env-file {} line {}: not KEY=VALUE",
                    path.display(),
                    i + 1
                ))
            }
        }
    }
    Ok(out)
}

/// What the daemon was told.
#[derive(Debug, Clone)]
pub struct ServeSettings {
    pub schedule: Option<Schedule>,
    /// When to drill the newest completed backup, and how much of the bucket.
    pub drill_schedule: Option<Schedule>,
    pub drill_sample: crate::components::check::Sample,
    pub retention: Policy,
    pub listen: SocketAddr,
    /// Bearer token of the mutating endpoints; without one they are refused.
    pub token: Option<Secret>,
    /// The off-site copy's repository, and whether every completed backup is copied there.
    pub secondary: Option<Store>,
    pub copy_after_backup: bool,
    /// The secondary's own retention, applied after each copy.
    pub secondary_retention: Policy,
    /// Watch the repository's `requests/` prefix (`None`: requests through the bucket are off).
    pub requests: Option<watcher::RequestSettings>,
}

/// A context for one run: the daemon's clients with this run's progress and interrupt.
pub type MakeContext = Arc<dyn Fn(Progress, Interrupt) -> Context + Send + Sync>;

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct RunInfo {
    /// `backup` (then a prune) or `drill`.
    pub kind: &'static str,
    pub trigger: String,
    pub started_at: DateTime<Utc>,
    pub step: String,
    /// Everything is captured and being checked: a shutdown lets it end.
    pub finishing: bool,
    #[serde(skip)]
    interrupt: Interrupt,
}

#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct RunOutcome {
    pub kind: &'static str,
    pub trigger: String,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    pub outcome: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backup_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pruned: Option<usize>,
    /// Backups copied to the secondary after the backup, and forgotten there by its retention.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub copied: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secondary_pruned: Option<usize>,
    /// The run's result as the CLI's `--output json` prints it (for bucket requests).
    #[serde(skip)]
    pub output: Option<serde_json::Value>,
}

pub(crate) struct Daemon {
    settings: ServeSettings,
    make: MakeContext,
    dest: Store,
    running: Mutex<Option<RunInfo>>,
    last: Mutex<Option<RunOutcome>>,
    next: Mutex<Option<DateTime<Utc>>>,
    next_drill: Mutex<Option<DateTime<Utc>>>,
    done: tokio::sync::Notify,
    /// Set at shutdown (under `running`'s lock): no run starts after it.
    stopping: std::sync::atomic::AtomicBool,
    /// The schedule's longest gap, in seconds: walked once here, not at every scrape.
    period: Option<i64>,
    /// Bucket requests answered, by (kind, outcome): the requests metric.
    requests: Mutex<std::collections::BTreeMap<(String, String), u64>>,
    /// Final answers to requests the store did not take: written at the next poll.
    unwritten_results:
        Mutex<std::collections::BTreeMap<String, crate::commands::requests::RequestResult>>,
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot listen on {addr}: {detail}. Choose another address with --listen (another process may be using this port)")]
    Bind { addr: SocketAddr, detail: String },
    #[error("HTTP server: {0}")]
    Http(String),
}

/// Runs the daemon until `shutdown`: binds first (so a port in use fails before anything
/// happens), then schedules and serves. On shutdown a backup in its last step finishes; any
/// other is interrupted (scales put back, statefile `failed: interrupted`).
pub async fn serve(
    settings: ServeSettings,
    make: MakeContext,
    dest: Store,
    shutdown: Interrupt,
) -> Result<(), ServeError> {
    let listener = tokio::net::TcpListener::bind(settings.listen)
        .await
        .map_err(|e| ServeError::Bind {
            addr: settings.listen,
            detail: e.to_string(),
        })?;
    let addr = listener
        .local_addr()
        .map_err(|e| ServeError::Http(e.to_string()))?;
    let daemon = Arc::new(Daemon {
        settings: settings.clone(),
        make,
        dest,
        running: Mutex::new(None),
        last: Mutex::new(None),
        next: Mutex::new(None),
        next_drill: Mutex::new(None),
        done: tokio::sync::Notify::new(),
        stopping: std::sync::atomic::AtomicBool::new(false),
        requests: Default::default(),
        unwritten_results: Default::default(),
        period: settings
            .schedule
            .as_ref()
            .and_then(|s| s.period(Utc::now()))
            .map(|p| p.num_seconds()),
    });
    let text = |s: &Option<Schedule>| s.as_ref().map_or("(none)", |s| s.text.as_str()).to_string();
    tracing::info!(
        "serving on http://{addr}; schedule {}; drills {}; retention {}",
        text(&settings.schedule),
        text(&settings.drill_schedule),
        settings.retention
    );
    if let Some(s) = settings.schedule.clone() {
        tokio::spawn(daemon.clone().scheduler(s, shutdown.clone()));
    }
    if let Some(s) = settings.drill_schedule.clone() {
        tokio::spawn(daemon.clone().drill_scheduler(s, shutdown.clone()));
    }
    if let Some(r) = settings.requests.clone() {
        tracing::info!(
            "answering requests under {} every {:?} or so{}",
            crate::commands::requests::requests_prefix(),
            r.poll,
            if r.allow_restore {
                "; restore requests allowed"
            } else {
                ""
            }
        );
        tokio::spawn(daemon.clone().watcher(r, shutdown.clone()));
    }
    let app = http::router(daemon.clone());
    let stop = shutdown.clone();
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { stop.triggered().await })
        .await
        .map_err(|e| ServeError::Http(e.to_string()))?;
    let running = {
        let guard = daemon.running.lock().expect("daemon state");
        daemon
            .stopping
            .store(true, std::sync::atomic::Ordering::SeqCst);
        guard.clone()
    };
    if let Some(r) = running {
        if r.finishing {
            tracing::info!(
                "shutting down: letting the {} in its last step ({}) finish",
                r.kind,
                r.step
            );
        } else {
            tracing::info!(
                "shutting down: interrupting the running {} (step {})",
                r.kind,
                r.step
            );
            r.interrupt.trigger(
                shutdown
                    .reason()
                    .unwrap_or_else(|| "the daemon is stopping".into()),
            );
        }
        daemon.wait_idle().await;
    }
    Ok(())
}

/// An API error: its status and `{"error": message}`.
fn error(status: axum::http::StatusCode, message: impl Into<String>) -> axum::response::Response {
    let body = axum::Json(serde_json::json!({ "error": message.into() }));
    axum::response::IntoResponse::into_response((status, body))
}
