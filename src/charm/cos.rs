//! What the charm gives COS (Canonical Observability Stack): alert rules on `metrics-endpoint`
//! (prometheus_scrape's `alert_rules`) and a Grafana dashboard on `grafana-dashboard`, both
//! from files in `charm/` compiled in, with this deployment's Juju topology.

use std::collections::BTreeMap;

use super::hook_tools::{local_app, Bag, HookTools};

/// The alert rules the charm ships, with `%%juju_topology%%` where each rule's selectors go.
pub const ALERT_RULES: &str = include_str!("../../charm/prometheus_alert_rules/backup-agent.rules");

/// The Grafana dashboard the charm ships over `grafana-dashboard`.
pub const DASHBOARD: &str = include_str!("../../charm/grafana_dashboards/backup-agent.json");

/// Where the series come from, as COS labels them (`juju_model`, `juju_model_uuid`,
/// `juju_application`).
#[derive(Debug, Clone, PartialEq)]
pub struct Topology {
    pub model: String,
    pub model_uuid: String,
    pub application: String,
}

impl Topology {
    fn labels(&self) -> Vec<(&'static str, &str)> {
        vec![
            ("juju_model", &self.model),
            ("juju_model_uuid", &self.model_uuid),
            ("juju_application", &self.application),
        ]
    }

    /// The label matchers that replace `%%juju_topology%%`.
    pub fn matchers(&self) -> String {
        self.labels()
            .iter()
            .map(|(k, v)| format!("{k}=\"{v}\""))
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// The rules as prometheus_scrape's `alert_rules` carries them: `{"groups": [...]}`, each
/// expression limited to this deployment and each rule labelled with it, as the charm library
/// does for Python charms.
pub fn alert_rules(topology: &Topology) -> Result<serde_json::Value, String> {
    let text = ALERT_RULES.replace("%%juju_topology%%", &topology.matchers());
    let mut rules: serde_json::Value =
        serde_yaml::from_str(&text).map_err(|e| format!("alert rules: {e}"))?;
    let groups = rules["groups"]
        .as_array_mut()
        .ok_or("alert rules: no groups")?;
    for g in groups {
        // Group names must be unique across everything Prometheus loads.
        let name = format!(
            "{}_{}_{}_{}",
            topology.model,
            &topology.model_uuid[..topology.model_uuid.len().min(8)],
            topology.application,
            g["name"].as_str().unwrap_or("rules")
        );
        // cos-lib's form: `<model>_<uuid8>_<app>_<group>_rules`, only [a-zA-Z0-9_:].
        let name: String = format!("{name}_rules")
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '_' || c == ':' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        g["name"] = name.into();
        for r in g["rules"].as_array_mut().into_iter().flatten() {
            if !r["labels"].is_object() {
                r["labels"] = serde_json::json!({});
            }
            for (k, v) in topology.labels() {
                r["labels"][k] = v.into();
            }
            r["labels"]["juju_charm"] = "backup-agent".into();
        }
    }
    Ok(rules)
}

pub const GRAFANA_DASHBOARD: &str = "grafana-dashboard";

/// grafana_dashboard's provider side (grafana-k8s `grafana_dashboard.py`, LIBPATCH 48): the
/// app bag's `dashboards`, the dashboard XZ-compressed and base64-encoded as the library's
/// `LZMABase64` does; Grafana adds the topology dropdowns and selectors (`inject_dropdowns`).
pub fn dashboards_bag(topology: &Topology, unit: &str) -> Result<String, String> {
    use base64::Engine;
    let mut xz = vec![];
    lzma_rs::xz_compress(&mut DASHBOARD.as_bytes(), &mut xz)
        .map_err(|e| format!("compressing the dashboard: {e}"))?;
    let content = base64::engine::general_purpose::STANDARD.encode(xz);
    Ok(serde_json::json!({
        "templates": {
            "file:backup-agent": {
                "charm": "backup-agent",
                "content": content,
                "juju_topology": {
                    "model": topology.model, "model_uuid": topology.model_uuid,
                    "application": topology.application, "unit": unit,
                },
                "inject_dropdowns": true,
                // shake_256("backup-agent-file:backup-agent").hexdigest(8), as the library
                // computes it; the dashboard's own uid is the 40-hex form, so this is a spare.
                "dashboard_alt_uid": "01bdbdefcbacc831",
            }
        },
        // The content hash: a new dashboard changes the bag, an unchanged one does not.
        "uuid": hex::encode(&<sha2::Sha256 as sha2::Digest>::digest(DASHBOARD.as_bytes())[..16]),
    })
    .to_string())
}

/// Publishes the dashboard on every grafana-dashboard relation (the leader only).
pub fn write_dashboards(
    tools: &HookTools,
    leader: bool,
    unit: &str,
    model: &str,
    broken: Option<&str>,
) -> Result<(), String> {
    if !leader {
        return Ok(());
    }
    let ids: Vec<String> = tools
        .relation_ids(GRAFANA_DASHBOARD)
        .map_err(|e| e.to_string())?
        .into_iter()
        .filter(|id| Some(id.as_str()) != broken)
        .collect();
    // Every hook runs this: compress only when a Grafana is related.
    if ids.is_empty() {
        return Ok(());
    }
    let topology = Topology {
        model: model.to_string(),
        model_uuid: std::env::var("JUJU_MODEL_UUID").unwrap_or_default(),
        application: local_app(),
    };
    let bag = dashboards_bag(&topology, unit)?;
    for id in ids {
        tools
            .relation_set(
                &id,
                Bag::App,
                &BTreeMap::from([("dashboards".to_string(), bag.clone())]),
            )
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// The shipped alert rules against this renderer's own output, with Prometheus's `promtool`:
/// each rule must parse (`check rules`, annotations' templates included) and fire exactly in the
/// situation it names (`test rules`, with series made from `render`'s text).
#[cfg(test)]
mod tests {
    use super::*;
    use crate::daemon::metrics::{render, Live};
    use crate::repository::lock::LeaseInfo;
    use crate::repository::Listed;
    use chrono::{TimeZone, Utc};
    use serde_json::json;

    const ALERTS: [&str; 11] = [
        "BackupAgentBackupStale",
        "BackupAgentNeverCompleted",
        "BackupAgentLastBackupFailed",
        "BackupAgentVerifyFailed",
        "BackupAgentNotVerified",
        "BackupAgentDrillFailed",
        "BackupAgentNoRecentDrill",
        "BackupAgentLeaseHeldTooLong",
        "BackupAgentAppsLeftScaledDown",
        "BackupAgentDestinationUnreachable",
        "BackupAgentDaemonDown",
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

    /// Backup `b1`, completed at `finished`, with `history`.
    fn completed(finished: i64, history: Vec<serde_json::Value>) -> Listed {
        statefile("b1", "completed", finished, history)
    }

    fn verify(at_s: i64, outcome: &str) -> serde_json::Value {
        json!({"event": "verify", "at": at(at_s), "mode": "light", "outcome": outcome, "problems": 0})
    }

    fn drill(at_s: i64, outcome: &str) -> serde_json::Value {
        json!({"event": "drill", "at": at(at_s), "outcome": outcome, "problems": 0})
    }

    fn live(now: i64, period: Option<i64>) -> Live {
        Live {
            now: Utc.timestamp_opt(now, 0).unwrap(),
            running: false,
            next: None,
            period,
            lease_known: true,
            drills: Default::default(),
            requests: Default::default(),
        }
    }

    /// A scenario: the metrics text, when it is evaluated, and the alerts that must fire then.
    struct Case {
        name: &'static str,
        text: String,
        eval: &'static str,
        firing: Vec<&'static str>,
    }

    /// Prometheus's own `up` for the scrape: 1, or 0 for the case where the daemon is down.
    fn up(c: &Case) -> u8 {
        u8::from(c.name != "daemon down")
    }

    fn cases() -> Vec<Case> {
        let ok = |t| completed(t, vec![verify(t + 100, "passed"), drill(t + 200, "passed")]);
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
                Some(&[completed(10_000, vec![verify(10_100, "failed")])]),
                None,
                &live(10_800, Some(3600)),
            ),
            eval: "3h",
            firing: vec!["BackupAgentVerifyFailed"],
        });
        cases.push(Case {
            name: "never verified",
            text: render(
                Some(&[completed(90_000, vec![drill(90_100, "passed")])]),
                None,
                &live(90_000, Some(3600)),
            ),
            eval: "25h",
            firing: vec!["BackupAgentNotVerified"],
        });
        cases.push(Case {
            name: "drill failed",
            text: render(
                Some(&[completed(
                    10_000,
                    vec![
                        verify(10_100, "passed"),
                        drill(10_150, "passed"),
                        drill(10_200, "failed"),
                    ],
                )]),
                None,
                &live(10_800, Some(3600)),
            ),
            eval: "3h",
            firing: vec!["BackupAgentDrillFailed"],
        });
        cases.push(Case {
            name: "never drilled",
            text: render(
                Some(&[completed(90_000, vec![verify(90_100, "passed")])]),
                None,
                &live(90_000, Some(3600)),
            ),
            eval: "25h",
            firing: vec!["BackupAgentNoRecentDrill"],
        });
        // The drilled backup was pruned since: the repository's record still says it passed.
        let mut l = live(90_000, Some(3600));
        l.drills = serde_json::from_value(json!({
            "newest": {"backup-id": "b0", "at": at(89_000), "passed": true, "problems": 0},
            "newest-passed": {"backup-id": "b0", "at": at(89_000), "passed": true, "problems": 0},
        }))
        .unwrap();
        cases.push(Case {
            name: "drilled backup pruned",
            text: render(
                Some(&[completed(90_000, vec![verify(90_100, "passed")])]),
                None,
                &l,
            ),
            eval: "25h",
            firing: vec![],
        });
        // A backup verified now whose only passed drill ran eight days and a minute ago (the
        // series start at promtool's time 0, so the past is negative).
        let old = -(8 * 86_400 + 60);
        cases.push(Case {
            name: "drill too old",
            text: render(
                Some(&[completed(
                    old - 100,
                    vec![drill(old, "passed"), verify(0, "passed")],
                )]),
                None,
                &live(0, None),
            ),
            eval: "25h",
            firing: vec!["BackupAgentNoRecentDrill"],
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
            name: "daemon down",
            text: render(Some(&[ok(10_000)]), None, &live(10_800, Some(3600))),
            eval: "3h",
            firing: vec!["BackupAgentDaemonDown"],
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
        let d: serde_json::Value = serde_json::from_str(DASHBOARD).unwrap();
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
        let mut ok = completed(
            10_000,
            vec![verify(10_100, "passed"), drill(10_150, "passed")],
        );
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
        promtool(&["test", "rules"], &test_file);
    }

    /// What COS reads of the charm's relations: the rules' group name in cos-lib's form, and
    /// the dashboard decoded with Python's `lzma`, as the Grafana charm decodes it.
    #[test]
    fn the_charm_publishes_rules_and_dashboard_as_cos_reads_them() {
        let t = topology();
        let rules = alert_rules(&t).unwrap();
        let name = rules["groups"][0]["name"].as_str().unwrap();
        assert_eq!(name, "kubeflow_0b4f6a2e_backup_agent_backup_agent_rules");
        assert!(name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'));
        for r in rules["groups"][0]["rules"].as_array().unwrap() {
            assert_eq!(r["labels"]["juju_application"], "backup-agent");
            assert_eq!(r["labels"]["juju_charm"], "backup-agent");
            assert!(!r["expr"].as_str().unwrap().contains("%%"), "{r}");
        }
        let bag: serde_json::Value =
            serde_json::from_str(&dashboards_bag(&t, "backup-agent/0").unwrap()).unwrap();
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
        assert_eq!(String::from_utf8(out.stdout).unwrap(), DASHBOARD);
        let d: serde_json::Value = serde_json::from_str(DASHBOARD).unwrap();
        let uid = d["uid"].as_str().unwrap();
        assert!(
            uid.len() == 40 && hex::decode(uid).is_ok(),
            "a Path40 uid: {uid}"
        );
        assert!(d["version"].is_i64());
    }

    /// Runs `promtool ARGS FILE` in FILE's directory (a test file names its rule files
    /// relative to it) and fails the test with promtool's output unless it succeeds.
    fn promtool(args: &[&str], file: &std::path::Path) {
        let bin = which::which("promtool").expect(
            "promtool is not installed: scripts/bootstrap installs it (Debian's prometheus package)",
        );
        let out = std::process::Command::new(bin)
            .args(args)
            .arg(file)
            .current_dir(file.parent().unwrap())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "promtool {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
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
        let dir = tempfile::tempdir().unwrap();
        let t = topology();
        let rules = ALERT_RULES.replace("%%juju_topology%%", &t.matchers());
        let full = dir.path().join("full.rules.yaml");
        std::fs::write(&full, &rules).unwrap();
        promtool(&["check", "rules"], &full);
        let published = alert_rules(&t).unwrap();
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
                            let mut labels = json!({
                                "severity": severity(a), "juju_model": t.model,
                                "juju_model_uuid": t.model_uuid, "juju_application": t.application,
                            });
                            // Staleness is per component; these backups hold MLMD only.
                            if *a == "BackupAgentBackupStale" {
                                labels["component"] = json!("mlmd");
                            }
                            vec![json!({"exp_labels": labels})]
                        } else {
                            vec![]
                        };
                        json!({"eval_time": c.eval, "alertname": a, "exp_alerts": exp})
                    })
                    .collect();
                let text = format!("{}up {}\n", c.text, up(c));
                json!({
                    "name": c.name, "interval": "1m",
                    "input_series": input_series(&text, &t),
                    "alert_rule_test": checks,
                })
            })
            .collect();
        let file =
            json!({"rule_files": ["rules.yaml"], "evaluation_interval": "1m", "tests": tests});
        let test_file = dir.path().join("tests.yaml");
        std::fs::write(&test_file, serde_yaml::to_string(&file).unwrap()).unwrap();
        promtool(&["test", "rules"], &test_file);
    }
}
