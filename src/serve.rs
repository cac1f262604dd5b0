//! The daemon, `backup-agent serve`: backups on a cron schedule followed by a prune, and an
//! HTTP API on loopback (backups, health, Prometheus metrics).
//!
//! The repository stays the only state: the API and the metrics read the statefiles, so a
//! restarted daemon (or another machine) tells the same story. In memory there is only what
//! a statefile cannot say: whether a run is going, and when the next one is due.

use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::{Arc, Mutex};

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::{json, Value};
use sha2::Digest;

use crate::backup::{self, BackupRequest, Component, Context};
use crate::catalog::{self, CatalogError, Listed, Phase, RequestType};
use crate::interrupt::Interrupt;
use crate::progress::{Event, Progress};
use crate::prune::{self, Selection};
use crate::retention::Policy;
use crate::secret::Secret;
use crate::store::Store;

/// A cron schedule (five fields, or six with seconds first), in UTC.
#[derive(Debug, Clone)]
pub struct Schedule {
    cron: croner::Cron,
    pub text: String,
}

impl Schedule {
    pub fn parse(text: &str) -> Result<Schedule, String> {
        let t = text.trim();
        let cron = croner::parser::CronParser::builder()
            .seconds(croner::parser::Seconds::Optional)
            .build()
            .parse(t)
            .map_err(|e| {
                format!("schedule {t:?} is not a cron expression ({e}): write five fields, minute hour day-of-month month day-of-week, e.g. \"0 2 * * *\" for 02:00 UTC every day")
            })?;
        Ok(Schedule {
            cron,
            text: t.into(),
        })
    }

    pub fn next_after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.cron.find_next_occurrence(&t, false).ok()
    }

    /// The gap between the next two runs: how old the newest backup may be before the daemon
    /// counts a run as missed.
    pub fn period(&self, now: DateTime<Utc>) -> Option<chrono::Duration> {
        let a = self.next_after(now)?;
        let b = self.next_after(a)?;
        Some(b - a)
    }
}

impl FromStr for Schedule {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Schedule::parse(s)
    }
}

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
    pub retention: Policy,
    pub listen: SocketAddr,
    /// Bearer token of the mutating endpoints; without one they are refused.
    pub token: Option<Secret>,
}

/// A context for one run: the daemon's clients with this run's progress and interrupt.
pub type MakeContext = Arc<dyn Fn(Progress, Interrupt) -> Context + Send + Sync>;

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct RunInfo {
    pub trigger: String,
    pub started_at: DateTime<Utc>,
    pub step: String,
    /// Everything is captured and being checked: a shutdown lets it end.
    pub finishing: bool,
    #[serde(skip)]
    interrupt: Interrupt,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct RunOutcome {
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
}

struct Daemon {
    settings: ServeSettings,
    make: MakeContext,
    dest: Store,
    running: Mutex<Option<RunInfo>>,
    last: Mutex<Option<RunOutcome>>,
    next: Mutex<Option<DateTime<Utc>>>,
    done: tokio::sync::Notify,
    /// Set at shutdown (under `running`'s lock): no run starts after it.
    stopping: std::sync::atomic::AtomicBool,
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot listen on {addr}: {detail}. Choose another address with --listen (another process may be using this port)")]
    Bind { addr: SocketAddr, detail: String },
    #[error("HTTP server: {0}")]
    Http(String),
}

impl Daemon {
    /// Starts a backup (then a prune) in the background, unless one is going or the daemon
    /// is stopping; the refusal says which.
    fn start(self: &Arc<Self>, trigger: &str, label: &str) -> Result<RunInfo, String> {
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

    async fn wait_idle(&self) {
        loop {
            let notified = self.done.notified();
            if self.running.lock().expect("daemon state").is_none() {
                return;
            }
            notified.await;
        }
    }

    async fn scheduler(self: Arc<Self>, schedule: Schedule, shutdown: Interrupt) {
        // A run missed while the daemon was down happens now, once.
        let now = Utc::now();
        let newest = catalog::summary(&self.dest)
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
        done: tokio::sync::Notify::new(),
        stopping: std::sync::atomic::AtomicBool::new(false),
    });
    tracing::info!(
        "serving on http://{addr}; schedule {}; retention {}",
        settings
            .schedule
            .as_ref()
            .map(|s| s.text.as_str())
            .unwrap_or("(none)"),
        settings.retention
    );
    if let Some(s) = settings.schedule.clone() {
        tokio::spawn(daemon.clone().scheduler(s, shutdown.clone()));
    }
    let app = router(daemon.clone());
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
                "shutting down: letting the backup in its last step ({}) finish",
                r.step
            );
        } else {
            tracing::info!(
                "shutting down: interrupting the running backup (step {})",
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

fn router(daemon: Arc<Daemon>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/v1/backups", get(list).post(create))
        .route("/v1/backups/{id}", get(describe))
        .fallback(|| async { error(StatusCode::NOT_FOUND, "no such endpoint: the API has GET /v1/backups, GET /v1/backups/{id}, POST /v1/backups, GET /healthz, GET /metrics") })
        .method_not_allowed_fallback(|| async {
            error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed on this endpoint")
        })
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
        .with_state(daemon)
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({ "error": message.into() }))).into_response()
}

async fn healthz(State(d): State<Arc<Daemon>>) -> Response {
    let running = d.running.lock().expect("daemon state").clone();
    let last = d.last.lock().expect("daemon state").clone();
    let next = *d.next.lock().expect("daemon state");
    Json(json!({
        "status": "ok",
        "schedule": d.settings.schedule.as_ref().map(|s| s.text.clone()),
        "retention": d.settings.retention.to_string(),
        "next-run": next,
        "running": running,
        "last-run": last,
    }))
    .into_response()
}

/// A row of `GET /v1/backups`: the statefile's summary (statefiles hold no secret).
fn row(l: &Listed) -> Value {
    match l {
        Listed::Backup(sf) => json!({
            "backup-id": sf.backup_id,
            "phase": sf.phase.as_str(),
            "label": sf.label,
            "request": sf.request,
            "started-at": sf.started_at,
            "finished-at": sf.finished_at,
            "components": sf.captured(),
            "size-bytes": sf.size(),
            "new-bytes": sf.new_bytes(),
        }),
        Listed::Unreadable { id, error } => json!({
            "backup-id": id,
            "error": error.to_string(),
        }),
    }
}

async fn list(State(d): State<Arc<Daemon>>) -> Response {
    match catalog::list(&d.dest).await {
        Ok(rows) => {
            let mut v: Vec<Value> = rows.iter().map(row).collect();
            v.reverse();
            Json(json!({ "backups": v, "count": rows.len() })).into_response()
        }
        Err(e) => error(
            StatusCode::BAD_GATEWAY,
            format!("reading the repository: {e}"),
        ),
    }
}

async fn describe(State(d): State<Arc<Daemon>>, Path(id): Path<String>) -> Response {
    match catalog::load(&d.dest, &id).await {
        Ok(sf) => Json(serde_json::to_value(&sf).expect("statefile serializes")).into_response(),
        Err(e @ CatalogError::BadId { .. }) => error(StatusCode::BAD_REQUEST, e.to_string()),
        Err(e @ CatalogError::NoSuchBackup { .. }) => error(StatusCode::NOT_FOUND, e.to_string()),
        Err(e) => error(StatusCode::BAD_GATEWAY, e.to_string()),
    }
}

/// Compares digests byte by byte to the end, so the time taken says nothing about how much
/// of the token (or of its digest) matched.
fn token_matches(expected: &Secret, given: &str) -> bool {
    let (a, b) = (
        sha2::Sha256::digest(expected.expose().as_bytes()),
        sha2::Sha256::digest(given.as_bytes()),
    );
    a.iter()
        .zip(b.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y))
        == 0
}

/// The largest request body the API reads: `{"label": "..."}` fits many times over.
pub const MAX_BODY: usize = 16 * 1024;

fn authorize(d: &Daemon, headers: &HeaderMap) -> Result<(), Box<Response>> {
    let Some(token) = &d.settings.token else {
        return Err(Box::new(error(
            StatusCode::FORBIDDEN,
            "this daemon has no API token (--token-file): starting backups over HTTP is disabled",
        )));
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match given {
        None => Err(Box::new((
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer")],
            Json(json!({"error": "this endpoint needs `Authorization: Bearer <token>` (the token of the daemon's --token-file)"})),
        )
            .into_response())),
        Some(g) if token_matches(token, g.trim()) => Ok(()),
        Some(_) => Err(Box::new(error(
            StatusCode::FORBIDDEN,
            "the bearer token is not this daemon's",
        ))),
    }
}

async fn create(
    State(d): State<Arc<Daemon>>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Response {
    // The token first: a caller without one gets nothing read, however much it sends.
    if let Err(r) = authorize(&d, &headers) {
        return *r;
    }
    let Ok(body) = axum::body::to_bytes(body, MAX_BODY).await else {
        let why = format!("the body is larger than {MAX_BODY} bytes: send {{\"label\": \"...\"}}");
        return error(StatusCode::PAYLOAD_TOO_LARGE, why);
    };
    let body = String::from_utf8_lossy(&body).into_owned();
    let label = if body.trim().is_empty() {
        "api".to_string()
    } else {
        match serde_json::from_str::<Value>(&body) {
            Ok(Value::Object(m)) => {
                if let Some(k) = m.keys().find(|k| *k != "label") {
                    return error(
                        StatusCode::BAD_REQUEST,
                        format!(
                            "unknown field {k:?}: the body may only hold {{\"label\": \"...\"}}"
                        ),
                    );
                }
                match m.get("label") {
                    None => "api".into(),
                    Some(Value::String(s)) => s.clone(),
                    Some(_) => return error(StatusCode::BAD_REQUEST, "\"label\" must be a string"),
                }
            }
            _ => return error(
                StatusCode::BAD_REQUEST,
                "the body must be a JSON object such as {\"label\": \"before-upgrade\"}, or empty",
            ),
        }
    };
    match d.start("api", &label) {
        Ok(info) => (
            StatusCode::ACCEPTED,
            Json(json!({
                "status": "started",
                "trigger": info.trigger,
                "label": label,
                "started-at": info.started_at,
                "follow": "GET /v1/backups and GET /healthz",
            })),
        )
            .into_response(),
        Err(why) => error(
            StatusCode::CONFLICT,
            format!("{why}: try again when it has finished"),
        ),
    }
}

/// Prometheus text format: counts and the last backup from the statefiles; whether a run is
/// going from memory.
async fn metrics(State(d): State<Arc<Daemon>>) -> Response {
    let rows = match catalog::list(&d.dest).await {
        Ok(r) => r,
        Err(e) => {
            return error(
                StatusCode::BAD_GATEWAY,
                format!("reading the repository: {e}"),
            )
        }
    };
    let backups: Vec<&catalog::Statefile> = rows
        .iter()
        .filter_map(|l| match l {
            Listed::Backup(sf) => Some(sf.as_ref()),
            _ => None,
        })
        .collect();
    let mut by_phase: std::collections::BTreeMap<&str, u64> =
        [("completed", 0), ("failed", 0), ("partially-failed", 0)]
            .into_iter()
            .collect();
    let mut verify: std::collections::BTreeMap<&str, u64> =
        [("passed", 0), ("failed", 0)].into_iter().collect();
    for b in &backups {
        if matches!(
            b.phase,
            Phase::Completed | Phase::Failed | Phase::PartiallyFailed
        ) {
            *by_phase.entry(b.phase.as_str()).or_default() += 1;
        }
        for h in &b.history {
            if h["event"] == "verify" {
                let k = if h["outcome"] == "passed" {
                    "passed"
                } else {
                    "failed"
                };
                *verify.entry(k).or_default() += 1;
            }
        }
    }
    let last_ok = backups
        .iter()
        .filter(|b| b.phase == Phase::Completed)
        .max_by_key(|b| (b.started_at, b.backup_id.clone()));
    let mut out = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, samples: Vec<(String, String)>| {
        out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"));
        for (labels, v) in samples {
            out.push_str(&format!("{name}{labels} {v}\n"));
        }
    };
    metric(
        "backup_agent_backups",
        "gauge",
        "Backups in the repository by outcome (from their statefiles).",
        by_phase
            .iter()
            .map(|(k, v)| (format!("{{outcome=\"{k}\"}}"), v.to_string()))
            .collect(),
    );
    metric(
        "backup_agent_verifications",
        "gauge",
        "Verifications recorded in the backups' histories, by outcome.",
        verify
            .iter()
            .map(|(k, v)| (format!("{{outcome=\"{k}\"}}"), v.to_string()))
            .collect(),
    );
    if let Some(b) = last_ok {
        let finished = b.finished_at.unwrap_or(b.started_at);
        metric(
            "backup_agent_last_success_timestamp_seconds",
            "gauge",
            "When the newest completed backup finished (Unix time).",
            vec![(String::new(), finished.timestamp().to_string())],
        );
        metric(
            "backup_agent_last_success_duration_seconds",
            "gauge",
            "How long the newest completed backup took.",
            vec![(
                String::new(),
                format!(
                    "{:.3}",
                    (finished - b.started_at).num_milliseconds() as f64 / 1000.0
                ),
            )],
        );
        metric(
            "backup_agent_last_success_size_bytes",
            "gauge",
            "Bytes the newest completed backup holds (MLMD compressed, mlpipeline objects).",
            vec![(String::new(), b.size().to_string())],
        );
        metric(
            "backup_agent_last_success_new_bytes",
            "gauge",
            "Bytes the newest completed backup uploaded (the rest was already in the repository).",
            vec![(String::new(), b.new_bytes().to_string())],
        );
    }
    let running = d.running.lock().expect("daemon state").is_some();
    metric(
        "backup_agent_running",
        "gauge",
        "1 while a backup or prune of this daemon runs.",
        vec![(String::new(), u8::from(running).to_string())],
    );
    if let Some(next) = *d.next.lock().expect("daemon state") {
        metric(
            "backup_agent_next_run_timestamp_seconds",
            "gauge",
            "When the next scheduled backup is due (Unix time).",
            vec![(String::new(), next.timestamp().to_string())],
        );
    }
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        out,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedules_parse_or_say_how() {
        let s = Schedule::parse("0 2 * * *").unwrap();
        let t = DateTime::parse_from_rfc3339("2026-11-23T10:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(
            s.next_after(t).unwrap().to_rfc3339(),
            "2026-11-24T02:00:00+00:00"
        );
        assert_eq!(s.period(t).unwrap(), chrono::Duration::days(1));
        let e = Schedule::parse("every day").unwrap_err();
        assert!(
            e.contains("is not a cron expression") && e.contains("\"0 2 * * *\""),
            "{e}"
        );
        assert!(Schedule::parse("61 * * * *").is_err());
    }
}
