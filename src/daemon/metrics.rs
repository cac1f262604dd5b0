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
        period: d
            .settings
            .schedule
            .as_ref()
            .and_then(|s| s.period(now))
            .map(|p| p.num_seconds()),
    };
    let (rows, lease) = match repository::list(&d.dest).await {
        Ok(rows) => (
            Some(rows),
            repository::lock::read(&d.dest).await.ok().flatten(),
        ),
        Err(e) => {
            tracing::warn!("metrics: reading the repository: {e}");
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
        .flat_map(|b| b.history.iter())
        .filter(|h| h["event"] == "verify")
        .filter_map(|h| {
            let at = h["at"].as_str()?.parse::<DateTime<Utc>>().ok()?;
            Some((at, h["outcome"] == "passed"))
        })
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
    let restores: Vec<(DateTime<Utc>, DateTime<Utc>, bool)> = backups
        .iter()
        .flat_map(|b| b.history.iter())
        .filter(|h| h["event"] == "restore" && h["phase"] == "finished")
        .filter_map(|h| {
            let at = h["at"].as_str()?.parse::<DateTime<Utc>>().ok()?;
            let done = h["finished-at"].as_str()?.parse::<DateTime<Utc>>().ok()?;
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
    let pending: usize = backups
        .iter()
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

/// The shipped alert rules against this renderer's own output, with Prometheus's `promtool`:
/// each rule must parse (`check rules`, annotations' templates included) and fire exactly in the
/// situation it names (`test rules`, with series made from `render`'s text).
#[cfg(test)]
mod alert_tests {
    use super::*;
    use crate::charm::relations::{Topology, ALERT_RULES};
    use chrono::TimeZone;
    use serde_json::json;

    const ALERTS: [&str; 8] = [
        "BackupAgentBackupStale",
        "BackupAgentNeverCompleted",
        "BackupAgentLastBackupFailed",
        "BackupAgentVerifyFailed",
        "BackupAgentNotVerified",
        "BackupAgentLeaseHeldTooLong",
        "BackupAgentAppsLeftScaledDown",
        "BackupAgentDestinationUnreachable",
    ];

    fn topology() -> Topology {
        Topology {
            model: "kubeflow".into(),
            model_uuid: "0b4f6a2e-8f4c-4e38-9d5a-3c1f5c0e9a11".into(),
            application: "backup-agent".into(),
        }
    }

    /// Seconds after the epoch: promtool's `time()` starts at 0.
    fn at(s: i64) -> String {
        Utc.timestamp_opt(s, 0).unwrap().to_rfc3339()
    }

    fn statefile(id: &str, phase: &str, finished: i64, history: Vec<serde_json::Value>) -> Listed {
        let v = json!({
            "schema-version": 1, "backup-id": id, "request": "scheduled", "phase": phase,
            "started-at": at(finished - 60), "finished-at": at(finished),
            "agent-version": "0", "model": "kubeflow", "requested": ["mlmd"],
            "components": {"mlmd": {"key": "k", "size": 10, "compressed-size": 5,
                "integrity-check": "ok", "row-counts": {}, "container": "c", "sha256": "00"}},
            "history": history,
        });
        Listed::Backup(Box::new(serde_json::from_value(v).unwrap()))
    }

    fn verify(at_s: i64, outcome: &str) -> serde_json::Value {
        json!({"event": "verify", "at": at(at_s), "mode": "light", "outcome": outcome, "problems": 0})
    }

    fn live(now: i64, period: Option<i64>) -> Live {
        Live {
            now: Utc.timestamp_opt(now, 0).unwrap(),
            running: false,
            next: None,
            period,
        }
    }

    /// A scenario: the metrics text, when it is evaluated, and the alerts that must fire then.
    struct Case {
        name: &'static str,
        text: String,
        eval: &'static str,
        firing: Vec<&'static str>,
    }

    fn cases() -> Vec<Case> {
        let ok = |t| statefile("b1", "completed", t, vec![verify(t + 100, "passed")]);
        let mut cases = vec![Case {
            name: "healthy",
            text: render(Some(&[ok(10_000)]), None, &live(10_800, Some(3600))),
            eval: "3h",
            firing: vec![],
        }];
        cases.push(Case {
            name: "stale",
            text: render(Some(&[ok(100)]), None, &live(10_800, Some(3600))),
            eval: "3h",
            firing: vec!["BackupAgentBackupStale"],
        });
        cases.push(Case {
            name: "never completed",
            text: render(Some(&[]), None, &live(0, Some(3600))),
            eval: "25h",
            firing: vec!["BackupAgentNeverCompleted"],
        });
        cases.push(Case {
            name: "last failed",
            text: render(
                Some(&[ok(10_000), statefile("b2", "failed", 10_500, vec![])]),
                None,
                &live(10_800, Some(3600)),
            ),
            eval: "3h",
            firing: vec!["BackupAgentLastBackupFailed"],
        });
        cases.push(Case {
            name: "verify failed",
            text: render(
                Some(&[statefile(
                    "b1",
                    "completed",
                    10_000,
                    vec![verify(10_100, "failed")],
                )]),
                None,
                &live(10_800, Some(3600)),
            ),
            eval: "3h",
            firing: vec!["BackupAgentVerifyFailed"],
        });
        cases.push(Case {
            name: "never verified",
            text: render(
                Some(&[statefile("b1", "completed", 90_000, vec![])]),
                None,
                &live(90_000, Some(3600)),
            ),
            eval: "25h",
            firing: vec!["BackupAgentNotVerified"],
        });
        let lease: LeaseInfo = serde_json::from_value(json!({
            "operation": "backup", "host": "h", "pid": 1, "started-at": at(0),
            "expires-at": at(600), "nonce": "n",
        }))
        .unwrap();
        cases.push(Case {
            name: "lease",
            text: render(Some(&[ok(10_000)]), Some(&lease), &live(28_800, Some(3600))),
            eval: "3h",
            firing: vec!["BackupAgentLeaseHeldTooLong"],
        });
        let Listed::Backup(mut pending) = ok(10_000) else {
            unreachable!()
        };
        pending.quiesce = serde_json::from_value(json!([
            {"app": "kfp-metadata-writer", "original": 1, "changed-to": 0, "restored": false}
        ]))
        .unwrap();
        cases.push(Case {
            name: "left scaled down",
            text: render(
                Some(&[Listed::Backup(pending)]),
                None,
                &live(10_800, Some(3600)),
            ),
            eval: "3h",
            firing: vec!["BackupAgentAppsLeftScaledDown"],
        });
        cases.push(Case {
            name: "destination down",
            text: render(None, None, &live(10_800, Some(3600))),
            eval: "3h",
            firing: vec!["BackupAgentDestinationUnreachable"],
        });
        cases
    }

    /// The dashboard as COS requires it, and each of its expressions evaluated by promtool
    /// on series from `render`: every one parses and returns data.
    #[test]
    fn the_dashboard_is_well_formed_and_every_expression_returns_data() {
        let Ok(promtool) = which::which("promtool") else {
            panic!("promtool is not installed: scripts/bootstrap installs it (Debian's prometheus package)");
        };
        let d: serde_json::Value =
            serde_json::from_str(crate::charm::relations::DASHBOARD).unwrap();
        assert!(d["uid"].is_string() && d["title"].is_string());
        assert_eq!(
            d["templating"]["list"],
            json!([]),
            "COS adds the topology dropdowns"
        );
        let mut exprs = vec![];
        for p in d["panels"].as_array().unwrap() {
            assert_eq!(p["datasource"], "${prometheusds}", "{}", p["title"]);
            let targets = p["targets"].as_array().unwrap();
            assert!(!targets.is_empty(), "{}", p["title"]);
            for t in targets {
                assert_eq!(t["datasource"], "${prometheusds}");
                exprs.push(t["expr"].as_str().unwrap().to_string());
            }
        }
        // A backup history with every kind of record the panels show.
        let mut failed = statefile("b2", "failed", 10_500, vec![]);
        if let Listed::Backup(b) = &mut failed {
            b.errors = serde_json::from_value(json!([
                {"component": "mlmd", "message": "m", "at": at(10_500)}
            ]))
            .unwrap();
        }
        let mut ok = statefile("b1", "completed", 10_000, vec![verify(10_100, "passed")]);
        if let Listed::Backup(b) = &mut ok {
            b.history.push(
                json!({"event": "restore", "phase": "finished", "outcome": "completed",
                "at": at(10_200), "finished-at": at(10_300)}),
            );
            b.components.mlpipeline = serde_json::from_value(json!({
                "manifest-key": "m", "manifest-sha256": "00", "objects": 10, "bytes": 100,
                "new-bytes": 40, "new-objects": 4,
            }))
            .ok();
        }
        let mut l = live(10_800, Some(3600));
        l.next = Some(Utc.timestamp_opt(14_400, 0).unwrap());
        let text = render(Some(&[ok, failed]), None, &l);
        let t = topology();
        let tests: Vec<serde_json::Value> = exprs
            .iter()
            .map(|e| {
                let e = e
                    .replace("$juju_model_uuid", ".*")
                    .replace("$juju_model", ".*")
                    .replace("$juju_application", ".*");
                json!({"expr": format!("clamp_max(count({e}), 1)"), "eval_time": "3h",
                       "exp_samples": [{"labels": "{}", "value": 1}]})
            })
            .collect();
        let file = json!({"rule_files": [], "evaluation_interval": "1m", "tests": [{
            "interval": "1m", "input_series": input_series(&text, &t), "promql_expr_test": tests,
        }]});
        let dir = tempfile::tempdir().unwrap();
        let test_file = dir.path().join("dashboard.yaml");
        std::fs::write(&test_file, serde_yaml::to_string(&file).unwrap()).unwrap();
        let run = std::process::Command::new(&promtool)
            .args(["test", "rules"])
            .arg(&test_file)
            .output()
            .unwrap();
        assert!(
            run.status.success(),
            "{}{}",
            String::from_utf8_lossy(&run.stdout),
            String::from_utf8_lossy(&run.stderr)
        );
    }

    /// What COS reads of the charm's relations: the rules' group name in cos-lib's form, and
    /// the dashboard decoded with Python's `lzma`, as the Grafana charm decodes it.
    #[test]
    fn the_charm_publishes_rules_and_dashboard_as_cos_reads_them() {
        let t = topology();
        let rules = crate::charm::relations::alert_rules(&t).unwrap();
        let name = rules["groups"][0]["name"].as_str().unwrap();
        assert_eq!(name, "kubeflow_0b4f6a2e_backup_agent_backup_agent_rules");
        assert!(name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'));
        for r in rules["groups"][0]["rules"].as_array().unwrap() {
            assert_eq!(r["labels"]["juju_application"], "backup-agent");
            assert_eq!(r["labels"]["juju_charm"], "backup-agent");
            assert!(!r["expr"].as_str().unwrap().contains("%%"), "{r}");
        }
        let bag: serde_json::Value = serde_json::from_str(
            &crate::charm::relations::dashboards_bag(&t, "backup-agent/0").unwrap(),
        )
        .unwrap();
        let tpl = &bag["templates"]["file:backup-agent"];
        assert_eq!(tpl["juju_topology"]["unit"], "backup-agent/0");
        assert_eq!(tpl["inject_dropdowns"], true);
        let mut py = std::process::Command::new("python3")
            .args([
                "-c",
                "import base64, lzma, sys; sys.stdout.write(lzma.decompress(base64.b64decode(sys.stdin.read())).decode())",
            ])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("python3");
        use std::io::Write;
        py.stdin
            .take()
            .unwrap()
            .write_all(tpl["content"].as_str().unwrap().as_bytes())
            .unwrap();
        let out = py.wait_with_output().unwrap();
        assert!(out.status.success());
        assert_eq!(
            String::from_utf8(out.stdout).unwrap(),
            crate::charm::relations::DASHBOARD
        );
        let d: serde_json::Value =
            serde_json::from_str(crate::charm::relations::DASHBOARD).unwrap();
        let uid = d["uid"].as_str().unwrap();
        assert!(
            uid.len() == 40 && hex::decode(uid).is_ok(),
            "a Path40 uid: {uid}"
        );
        assert!(d["version"].is_i64());
    }

    /// Each sample of the text as a promtool input series, with the topology labels COS adds.
    fn input_series(text: &str, t: &Topology) -> Vec<serde_json::Value> {
        text.lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .map(|l| {
                let (series, value) = l.rsplit_once(' ').unwrap();
                let (name, labels) = match series.split_once('{') {
                    Some((n, rest)) => (n, rest.trim_end_matches('}').to_string()),
                    None => (series, String::new()),
                };
                let mut all = t.matchers();
                if !labels.is_empty() {
                    all = format!("{labels},{all}");
                }
                json!({"series": format!("{name}{{{all}}}"), "values": format!("{value}+0x1600")})
            })
            .collect()
    }

    #[test]
    fn every_alert_parses_and_fires_exactly_when_it_should() {
        let Ok(promtool) = which::which("promtool") else {
            panic!("promtool is not installed: scripts/bootstrap installs it (Debian's prometheus package)");
        };
        let dir = tempfile::tempdir().unwrap();
        let t = topology();
        let rules = ALERT_RULES.replace("%%juju_topology%%", &t.matchers());
        let full = dir.path().join("full.rules.yaml");
        std::fs::write(&full, &rules).unwrap();
        let check = std::process::Command::new(&promtool)
            .args(["check", "rules"])
            .arg(&full)
            .output()
            .unwrap();
        assert!(
            check.status.success(),
            "{}{}",
            String::from_utf8_lossy(&check.stdout),
            String::from_utf8_lossy(&check.stderr)
        );
        let published = crate::charm::relations::alert_rules(&t).unwrap();
        let names: Vec<&str> = published["groups"][0]["rules"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["alert"].as_str().unwrap())
            .collect();
        assert_eq!(names, ALERTS, "every shipped rule is tested here");

        // The test compares labels; annotations (checked above) are left out of its copy.
        let mut bare: serde_json::Value = serde_yaml::from_str(&rules).unwrap();
        for r in bare["groups"][0]["rules"].as_array_mut().unwrap() {
            r.as_object_mut().unwrap().remove("annotations");
            for (k, v) in [
                ("juju_model", &t.model),
                ("juju_model_uuid", &t.model_uuid),
                ("juju_application", &t.application),
            ] {
                r["labels"][k] = json!(v);
            }
        }
        std::fs::write(
            dir.path().join("rules.yaml"),
            serde_yaml::to_string(&bare).unwrap(),
        )
        .unwrap();
        let severity = |a: &str| -> String {
            bare["groups"][0]["rules"]
                .as_array()
                .unwrap()
                .iter()
                .find(|r| r["alert"] == a)
                .unwrap()["labels"]["severity"]
                .as_str()
                .unwrap()
                .to_string()
        };
        let tests: Vec<serde_json::Value> = cases()
            .iter()
            .map(|c| {
                let checks: Vec<serde_json::Value> = ALERTS
                    .iter()
                    .map(|a| {
                        let exp: Vec<serde_json::Value> = if c.firing.contains(a) {
                            vec![json!({"exp_labels": {
                                "severity": severity(a), "juju_model": t.model,
                                "juju_model_uuid": t.model_uuid, "juju_application": t.application,
                            }})]
                        } else {
                            vec![]
                        };
                        json!({"eval_time": c.eval, "alertname": a, "exp_alerts": exp})
                    })
                    .collect();
                json!({
                    "name": c.name, "interval": "1m",
                    "input_series": input_series(&c.text, &t),
                    "alert_rule_test": checks,
                })
            })
            .collect();
        let file =
            json!({"rule_files": ["rules.yaml"], "evaluation_interval": "1m", "tests": tests});
        let test_file = dir.path().join("tests.yaml");
        std::fs::write(&test_file, serde_yaml::to_string(&file).unwrap()).unwrap();
        let run = std::process::Command::new(&promtool)
            .args(["test", "rules"])
            .arg(&test_file)
            .current_dir(dir.path())
            .output()
            .unwrap();
        assert!(
            run.status.success(),
            "{}{}",
            String::from_utf8_lossy(&run.stdout),
            String::from_utf8_lossy(&run.stderr)
        );
    }
}
