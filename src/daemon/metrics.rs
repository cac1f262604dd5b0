//! `GET /metrics`: Prometheus text format. Counts and the last backup come from the
//! statefiles; whether a run is going and when the next is due, from memory.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};

use super::Daemon;
use chrono::{DateTime, Utc};

use crate::repository::lock::LeaseInfo;
use crate::repository::{self, Listed, Phase, Statefile};

/// Prometheus text format: counts and the last backup from the statefiles; whether a run is
/// going, and the schedule, from memory; the lease from the repository. A repository that
/// cannot be read is `backup_agent_destination_up 0` in a normal answer, so the alert names
/// it (a failed scrape would only say the daemon is down).
pub(super) async fn metrics(State(d): State<Arc<Daemon>>) -> Response {
    let now = Utc::now();
    let live = Live {
        now,
        running: d.running.lock().expect("daemon state").is_some(),
        next: *d.next.lock().expect("daemon state"),
        period: d.period,
        lease_known: true,
        drills: Default::default(),
        requests: d.requests.lock().expect("daemon state").clone(),
    };
    let mut live = live;
    match repository::drills::load(&d.dest).await {
        Ok(r) => live.drills = r,
        Err(e) => tracing::warn!("metrics: reading the drills' record: {e}"),
    }
    let (rows, lease) = match repository::list(&d.dest).await {
        Ok(rows) => match repository::lock::read(&d.dest).await {
            Ok(lease) => (Some(rows), lease),
            Err(e) => {
                // Unknown is not free: the lease gauge is left out rather than 0.
                tracing::warn!("metrics: reading the repository lock: {e}");
                live.lease_known = false;
                (Some(rows), None)
            }
        },
        Err(e) => {
            tracing::warn!("metrics: reading the repository: {e}");
            live.lease_known = false;
            (None, None)
        }
    };
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        render(rows.as_deref(), lease.as_ref(), &live),
    )
        .into_response()
}

/// What the daemon knows of itself when it is scraped.
pub(crate) struct Live {
    pub now: DateTime<Utc>,
    pub running: bool,
    pub next: Option<DateTime<Utc>>,
    /// Seconds between two scheduled runs, when there is a schedule.
    pub period: Option<i64>,
    /// Whether the repository lock could be read (else its age is not reported).
    pub lease_known: bool,
    /// The repository's record of drills: it outlives the drilled backups' histories.
    pub drills: repository::drills::DrillsRecord,
    /// Bucket requests answered since the daemon started, by (kind, outcome).
    pub requests: BTreeMap<(String, String), u64>,
}

/// Backups by outcome, and verifications by outcome, over the whole repository.
type Tally<'a> = (BTreeMap<&'a str, u64>, BTreeMap<&'a str, u64>);

fn tally<'a>(backups: &[&'a Statefile]) -> Tally<'a> {
    let mut by_phase: BTreeMap<&str, u64> =
        [("completed", 0), ("failed", 0), ("partially-failed", 0)]
            .into_iter()
            .collect();
    let mut verify: BTreeMap<&str, u64> = [("passed", 0), ("failed", 0)].into_iter().collect();
    for b in backups {
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
    (by_phase, verify)
}

/// The metrics text: `rows` is the repository's listing, `None` when it could not be read.
pub(crate) fn render(rows: Option<&[Listed]>, lease: Option<&LeaseInfo>, live: &Live) -> String {
    let backups: Vec<&Statefile> = rows
        .unwrap_or_default()
        .iter()
        .filter_map(|l| match l {
            Listed::Backup(sf) => Some(sf.as_ref()),
            _ => None,
        })
        .collect();
    let (by_phase, verify) = tally(&backups);
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
        "backup_agent_destination_up",
        "gauge",
        "1 when the last scrape could list the backup repository, 0 when it could not.",
        vec![(String::new(), u8::from(rows.is_some()).to_string())],
    );
    if rows.is_none() {
        live_metrics(&mut metric, lease, live);
        return out;
    }
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
    if let Some(b) = last_ok {
        metric(
            "backup_agent_last_success_objects",
            "gauge",
            "mlpipeline objects the newest completed backup holds.",
            vec![(
                String::new(),
                b.components
                    .mlpipeline
                    .as_ref()
                    .map_or(0, |m| m.objects)
                    .to_string(),
            )],
        );
    }
    // Per component: a backup of only some parts leaves the others' age growing.
    let mut per_component: BTreeMap<String, i64> = BTreeMap::new();
    for b in backups.iter().filter(|b| b.phase == Phase::Completed) {
        let t = b.finished_at.unwrap_or(b.started_at).timestamp();
        let mut parts: Vec<String> = b.components.mysql.iter().map(|m| m.app.clone()).collect();
        if b.components.mlmd.is_some() {
            parts.push("mlmd".into());
        }
        if b.components.mlpipeline.is_some() {
            parts.push("mlpipeline".into());
        }
        for p in parts {
            let e = per_component.entry(p).or_insert(t);
            *e = (*e).max(t);
        }
    }
    metric(
        "backup_agent_component_last_success_timestamp_seconds",
        "gauge",
        "When the newest completed backup holding each component finished (Unix time).",
        per_component
            .iter()
            .map(|(c, t)| (format!("{{component=\"{c}\"}}"), t.to_string()))
            .collect(),
    );
    let last_done = backups
        .iter()
        .filter(|b| {
            matches!(
                b.phase,
                Phase::Completed | Phase::Failed | Phase::PartiallyFailed
            )
        })
        .max_by_key(|b| (b.started_at, b.backup_id.clone()));
    if let Some(b) = last_done {
        metric(
            "backup_agent_last_backup_failed",
            "gauge",
            "1 when the newest finished backup failed or partially failed, else 0.",
            vec![(
                String::new(),
                u8::from(b.phase != Phase::Completed).to_string(),
            )],
        );
        metric(
            "backup_agent_last_backup_timestamp_seconds",
            "gauge",
            "When the newest finished backup, completed or not, finished (Unix time).",
            vec![(
                String::new(),
                b.finished_at
                    .unwrap_or(b.started_at)
                    .timestamp()
                    .to_string(),
            )],
        );
    }
    let last_verify = backups
        .iter()
        .flat_map(|b| b.checks("verify"))
        .max_by_key(|(at, _)| *at);
    if let Some((at, passed)) = last_verify {
        metric(
            "backup_agent_last_verify_timestamp_seconds",
            "gauge",
            "When the newest verification ran (Unix time).",
            vec![(String::new(), at.timestamp().to_string())],
        );
        metric(
            "backup_agent_last_verify_passed",
            "gauge",
            "1 when the newest verification passed, 0 when it failed.",
            vec![(String::new(), u8::from(passed).to_string())],
        );
    }
    let recorded = [&live.drills.newest, &live.drills.newest_passed]
        .into_iter()
        .flatten()
        .map(|d| (d.at, d.passed));
    let drills: Vec<(DateTime<Utc>, bool)> = backups
        .iter()
        .flat_map(|b| b.drills())
        .chain(recorded)
        .collect();
    if let Some((at, passed)) = drills.iter().max_by_key(|(at, _)| *at) {
        metric(
            "backup_agent_last_drill_timestamp_seconds",
            "gauge",
            "When the newest restore drill ran (Unix time).",
            vec![(String::new(), at.timestamp().to_string())],
        );
        metric(
            "backup_agent_last_drill_passed",
            "gauge",
            "1 when the newest restore drill passed, 0 when it found the backup damaged.",
            vec![(String::new(), u8::from(*passed).to_string())],
        );
    }
    if let Some((at, _)) = drills.iter().filter(|(_, p)| *p).max_by_key(|(at, _)| *at) {
        metric(
            "backup_agent_last_drill_success_timestamp_seconds",
            "gauge",
            "When the newest restore drill that passed ran (Unix time).",
            vec![(String::new(), at.timestamp().to_string())],
        );
    }
    let restores: Vec<(DateTime<Utc>, DateTime<Utc>, bool)> = backups
        .iter()
        .flat_map(|b| b.history.iter())
        .filter(|h| h["event"] == "restore" && h["phase"] == "finished")
        .filter_map(|h| {
            let at = h["at"].as_str()?.parse::<DateTime<Utc>>().ok()?;
            // Entries written by older versions, or closed by `recover`, have no end time.
            let done = h["finished-at"]
                .as_str()
                .and_then(|t| t.parse::<DateTime<Utc>>().ok())
                .unwrap_or(at);
            Some((at, done, h["outcome"] == "completed"))
        })
        .collect();
    metric(
        "backup_agent_restores",
        "gauge",
        "Restores recorded in the backups' histories, by outcome.",
        ["completed", "failed"]
            .iter()
            .map(|o| {
                let n = restores
                    .iter()
                    .filter(|r| r.2 == (*o == "completed"))
                    .count();
                (format!("{{outcome=\"{o}\"}}"), n.to_string())
            })
            .collect(),
    );
    if let Some((at, done, _)) = restores.iter().max_by_key(|r| r.1) {
        metric(
            "backup_agent_last_restore_timestamp_seconds",
            "gauge",
            "When the newest restore finished (Unix time).",
            vec![(String::new(), done.timestamp().to_string())],
        );
        metric(
            "backup_agent_last_restore_duration_seconds",
            "gauge",
            "How long the newest restore took.",
            vec![(
                String::new(),
                format!("{:.3}", (*done - *at).num_milliseconds() as f64 / 1000.0),
            )],
        );
    }
    // Errors of failed backups, by the component that failed: what breaks, and how often.
    let mut errors: BTreeMap<&str, u64> = BTreeMap::new();
    for b in &backups {
        for e in &b.errors {
            *errors.entry(e.component.as_str()).or_default() += 1;
        }
    }
    metric(
        "backup_agent_backup_errors",
        "gauge",
        "Errors recorded in the backups' statefiles, by component.",
        errors
            .iter()
            .map(|(c, n)| (format!("{{component=\"{c}\"}}"), n.to_string()))
            .collect(),
    );
    // Scales a backup changed and has not put back (a run killed before its un-quiesce; the
    // next run or `backup-agent recover` repairs them).
    // A backup still running has its journal open on purpose: only finished ones count.
    let pending: usize = backups
        .iter()
        .filter(|b| {
            matches!(
                b.phase,
                Phase::Completed | Phase::Failed | Phase::PartiallyFailed
            )
        })
        .map(|b| {
            b.quiesce
                .iter()
                .filter(|r| !r.restored && r.changed_to != r.original)
                .count()
        })
        .sum();
    metric(
        "backup_agent_quiesce_pending_apps",
        "gauge",
        "Applications a backup scaled and has not scaled back yet.",
        vec![(String::new(), pending.to_string())],
    );
    live_metrics(&mut metric, lease, live);
    out
}

/// What holds whether or not the repository could be read: the run, the schedule, the lease.
fn live_metrics(
    metric: &mut impl FnMut(&str, &str, &str, Vec<(String, String)>),
    lease: Option<&LeaseInfo>,
    live: &Live,
) {
    metric(
        "backup_agent_running",
        "gauge",
        "1 while a backup or prune of this daemon runs.",
        vec![(String::new(), u8::from(live.running).to_string())],
    );
    if let Some(next) = live.next {
        metric(
            "backup_agent_next_run_timestamp_seconds",
            "gauge",
            "When the next scheduled backup is due (Unix time).",
            vec![(String::new(), next.timestamp().to_string())],
        );
    }
    if let Some(p) = live.period {
        metric(
            "backup_agent_schedule_period_seconds",
            "gauge",
            "Seconds between two scheduled backups.",
            vec![(String::new(), p.to_string())],
        );
    }
    if !live.requests.is_empty() {
        metric(
            "backup_agent_requests_total",
            "counter",
            "Requests through the bucket answered since the daemon started, by kind and outcome (rejected: never run).",
            live.requests
                .iter()
                .map(|((kind, outcome), n)| {
                    (
                        format!("{{kind=\"{kind}\",outcome=\"{outcome}\"}}"),
                        n.to_string(),
                    )
                })
                .collect(),
        );
    }
    if live.lease_known {
        metric(
            "backup_agent_lease_age_seconds",
            "gauge",
            "How long the repository lock has been held (0 when free).",
            vec![(
                String::new(),
                lease
                    .map_or(0, |l| (live.now - l.started_at).num_seconds().max(0))
                    .to_string(),
            )],
        );
    }
}
