//! `GET /metrics`: Prometheus text format. Counts and the last backup come from the
//! statefiles; whether a run is going and when the next is due, from memory.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};

use super::{error, Daemon};
use chrono::{DateTime, Utc};

use crate::repository::{self, Listed, Phase, Statefile};

/// Prometheus text format: counts and the last backup from the statefiles; whether a run is
/// going from memory.
pub(super) async fn metrics(State(d): State<Arc<Daemon>>) -> Response {
    let rows = match repository::list(&d.dest).await {
        Ok(r) => r,
        Err(e) => {
            return error(
                StatusCode::BAD_GATEWAY,
                format!("reading the repository: {e}"),
            )
        }
    };
    let running = d.running.lock().expect("daemon state").is_some();
    let next = *d.next.lock().expect("daemon state");
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        render(&rows, running, next),
    )
        .into_response()
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

/// The metrics text.
fn render(rows: &[Listed], running: bool, next: Option<DateTime<Utc>>) -> String {
    let backups: Vec<&Statefile> = rows
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
    metric(
        "backup_agent_running",
        "gauge",
        "1 while a backup or prune of this daemon runs.",
        vec![(String::new(), u8::from(running).to_string())],
    );
    if let Some(next) = next {
        metric(
            "backup_agent_next_run_timestamp_seconds",
            "gauge",
            "When the next scheduled backup is due (Unix time).",
            vec![(String::new(), next.timestamp().to_string())],
        );
    }
    out
}
