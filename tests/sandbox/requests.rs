//! Requests through the bucket, the real daemon (`serve --requests`) and the real CLI
//! (`request ... --wait`) against the sandbox's destination S3: a backup asked for and
//! answered with the CLI's own JSON; a table of bad requests each answered with the problem
//! named and never run, the watcher going on; duplicates by client id; two daemons that never
//! run one request twice; the archive and its retention; the metrics; no secret anywhere.

use std::time::Duration;

use crate::common::{agent, repo, rt, statefiles};
use crate::serve::{curl, json, metric, start};
use backup_agent::commands::requests::{self, RequestResult};
use backup_agent_sandbox::Sandbox;

fn sandbox() -> Sandbox {
    crate::common::sandbox_with(12, |o| o.db_units = 1)
}

const POLL: [&str; 2] = ["--request-poll", "200ms"];

/// A daemon that answers requests, polling often.
fn watching(sb: &Sandbox, tmp: &std::path::Path, more: &[&str]) -> crate::serve::Daemon {
    let mut args = vec!["--requests"];
    args.extend(POLL);
    args.extend(more);
    start(sb, tmp, &args)
}

/// The answer to request `name`, from `requests/` or the archive, once it is final.
fn answer(sb: &Sandbox, name: &str) -> RequestResult {
    let store = repo(sb);
    let today = chrono::Utc::now().date_naive();
    let mut got = None;
    crate::common::wait_for(
        &format!("the answer to {name}"),
        Duration::from_secs(120),
        || {
            got = rt()
                .block_on(requests::result_of(&store, name, &[today]))
                .unwrap()
                .filter(|r| r.finished());
            got.is_some()
        },
    );
    got.unwrap()
}

/// Keys under `requests/`: empty once everything is answered and archived.
fn pending_keys(sb: &Sandbox) -> Vec<String> {
    rt().block_on(repo(sb).list(&requests::requests_prefix()))
        .unwrap()
        .into_iter()
        .map(|o| o.key)
        .collect()
}

#[test]
fn a_backup_asked_through_the_bucket_is_run_once_and_answered() {
    let sb = sandbox();
    let tmp = tempfile::tempdir().unwrap();
    let d = watching(&sb, tmp.path(), &[]);

    let (code, out, err) = agent(
        &sb,
        &[
            "request",
            "create-backup",
            "--label",
            "via-bucket",
            "--client-id",
            "ci-run-4711",
            "--requested-by",
            "ci: nightly",
            "--wait",
            "--poll",
            "300ms",
            "--output",
            "json",
        ],
        &[],
    );
    assert_eq!(code, 0, "{out}{err}");
    let r: RequestResult = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (r.kind.as_str(), r.phase.as_str()),
        ("create-backup", "completed")
    );
    assert_eq!(r.client_id, "ci-run-4711");
    assert_eq!(r.requested_by, "ci: nightly");
    let id = r.backup_id.clone().unwrap();
    // The same JSON as `create-backup --output json`.
    assert_eq!(
        r.output.as_ref().unwrap()["statefile"]["backup-id"],
        id.as_str()
    );
    assert_eq!(
        r.output.as_ref().unwrap()["statefile"]["label"],
        "via-bucket"
    );
    assert!(
        err.contains("waiting for a daemon") || err.contains("running"),
        "{err}"
    );
    let sf = statefiles(&sb);
    assert_eq!(sf.len(), 1);
    assert_eq!(sf[0].label, "via-bucket");
    // Answered and archived: nothing left under requests/, both in the archive.
    crate::common::wait_for("the archive", Duration::from_secs(30), || {
        pending_keys(&sb).is_empty()
    });
    let day = chrono::Utc::now().date_naive();
    let archived = rt()
        .block_on(repo(&sb).list(&requests::archive_prefix()))
        .unwrap();
    let name = &r.request;
    for key in [
        requests::archived_key(day, name, false),
        requests::archived_key(day, name, true),
        requests::client_id_key("ci-run-4711"),
    ] {
        assert!(
            archived.iter().any(|o| o.key == key),
            "{key} not in {archived:?}"
        );
    }

    // The same client id again (a retried CI step): not run again; the first one's answer.
    let (code, out, err) = agent(
        &sb,
        &[
            "request",
            "create-backup",
            "--client-id",
            "ci-run-4711",
            "--wait",
            "--poll",
            "300ms",
            "--output",
            "json",
        ],
        &[],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(err.contains("repeats client-id ci-run-4711"), "{err}");
    let again: RequestResult = serde_json::from_str(&out).unwrap();
    assert_eq!(again.request, r.request);
    assert_eq!(again.backup_id.as_deref(), Some(id.as_str()));
    assert_eq!(statefiles(&sb).len(), 1, "a duplicate is never run");

    // A verification through the bucket, and one that fails (its backup is not there).
    let (code, out, err) = agent(
        &sb,
        &["request", "verify", &id, "--wait", "--poll", "300ms"],
        &[],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("verify): passed"), "{out}");
    let (code, out, _) = agent(
        &sb,
        &[
            "request",
            "verify",
            "20200101T000000Z-000000",
            "--wait",
            "--poll",
            "300ms",
        ],
        &[],
    );
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("failed"), "{out}");

    // Without --wait: the name, and the result where it says.
    let (code, out, _) = agent(&sb, &["request", "drill", "--output", "json"], &[]);
    assert_eq!(code, 0);
    let name = json(&out)["request"].as_str().unwrap().to_string();
    let r = answer(&sb, &name);
    assert_eq!(
        (r.kind.as_str(), r.phase.as_str()),
        ("drill", "passed"),
        "{r:?}"
    );

    let (_, text) = curl(&[&format!("{}/metrics", d.url)]);
    let count = |kind: &str, outcome: &str| {
        metric(
            &text,
            &format!("backup_agent_requests_total{{kind=\"{kind}\",outcome=\"{outcome}\"}}"),
        )
    };
    assert_eq!(count("create-backup", "completed"), 1.0);
    assert_eq!(count("create-backup", "rejected"), 1.0);
    assert_eq!(count("verify", "passed"), 1.0);
    assert_eq!(count("verify", "failed"), 1.0);
    assert_eq!(count("drill", "passed"), 1.0);

    // No key of the destination or of MinIO in any request, result, or the log.
    let mut seen = std::fs::read_to_string(&d.log).unwrap();
    let store = repo(&sb);
    for o in rt().block_on(store.list("backup-agent/requests")).unwrap() {
        seen.push_str(&String::from_utf8_lossy(
            &rt().block_on(store.get_bytes(&o.key)).unwrap(),
        ));
    }
    assert!(seen.contains("via-bucket"), "the archive was read");
    for secret in [
        &sb.info.dest.access_key,
        &sb.info.dest.secret_key,
        &sb.info.minio.secret_key,
    ] {
        assert!(!seen.contains(secret.as_str()), "{secret} leaked");
    }
}

#[test]
fn bad_requests_are_answered_never_run_and_the_watch_goes_on() {
    let sb = sandbox();
    let store = repo(&sb);
    let put = |name: &str, body: &[u8]| {
        let key = format!("{}{name}", requests::requests_prefix());
        rt().block_on(store.put_bytes(&key, body, "application/json"))
            .unwrap();
    };
    let good = |kind: &str, params: serde_json::Value, client: &str| {
        serde_json::json!({
            "schema-version": 1, "kind": kind, "params": params,
            "requested-by": "table", "client-id": client,
        })
        .to_string()
    };
    // An archived request older than the archive keeps: forgotten at the first poll.
    let old = requests::archived_key(
        chrono::NaiveDate::from_ymd_opt(2020, 1, 1).unwrap(),
        "old-one",
        true,
    );
    let old_result = serde_json::json!({
        "schema-version": 1, "request": "old-one", "kind": "create-backup", "phase": "completed",
        "client-id": "old-client", "received-at": "2020-01-01T00:00:00Z",
    });
    rt().block_on(store.put_bytes(&old, old_result.to_string().as_bytes(), "application/json"))
        .unwrap();
    rt().block_on(store.put_bytes(
        &requests::client_id_key("old-client"),
        b"old-one",
        "text/plain",
    ))
    .unwrap();

    // (name, body, what the answer must say)
    let table: Vec<(&str, Vec<u8>, &str)> = vec![
        ("malformed", b"{not json".to_vec(), "not a request"),
        ("empty", vec![], "not a request"),
        (
            "unknown-kind",
            good("explode", serde_json::json!({}), "c1").into_bytes(),
            "unknown kind \"explode\"",
        ),
        (
            "restore-off",
            good(
                "restore",
                serde_json::json!({"backup-id": "20261123T080841Z-be2523"}),
                "c2",
            )
            .into_bytes(),
            "restore requests are disabled",
        ),
        (
            "too-large",
            vec![b' '; (requests::MAX_REQUEST_BYTES + 1) as usize],
            "too large",
        ),
        (
            "no-backup-id",
            good("verify", serde_json::json!({}), "c3").into_bytes(),
            "verify needs params.backup-id",
        ),
        (
            "bad-param",
            good("create-backup", serde_json::json!({"lable": "x"}), "c4").into_bytes(),
            "params \"lable\" are not parameters of create-backup",
        ),
        (
            "old-schema",
            br#"{"schema-version": 9, "kind": "create-backup", "client-id": "c5"}"#.to_vec(),
            "schema-version 9",
        ),
        (
            "no-secondary",
            good("copy", serde_json::json!({}), "c6").into_bytes(),
            "no secondary destination",
        ),
    ];
    for (name, body, _) in &table {
        put(&format!("{name}.json"), body);
    }
    // Not a request name at all: answered under a name of its own, the object removed.
    put("nested/deeper.json", b"{}");
    // Claimed by a daemon on this machine that has since died: answered as abandoned.
    put(
        "abandoned.json",
        good("create-backup", serde_json::json!({}), "c8").as_bytes(),
    );
    let dead = {
        let mut c = std::process::Command::new("true").spawn().unwrap();
        c.wait().unwrap();
        c.id()
    };
    let mut claim = backup_agent::repository::lock::LeaseInfo::mine(
        "request abandoned",
        chrono::Utc::now(),
        Duration::ZERO,
    );
    claim.pid = dead;
    put(
        "abandoned.claim",
        serde_json::to_string(&claim).unwrap().as_bytes(),
    );

    let tmp = tempfile::tempdir().unwrap();
    let d = watching(&sb, tmp.path(), &["--request-archive-days", "7"]);
    for (name, _, want) in &table {
        let r = answer(&sb, name);
        assert_eq!(r.phase, "rejected", "{name}: {r:?}");
        assert!(
            r.errors.iter().any(|e| e.contains(want)),
            "{name}: {want:?} not in {:?}",
            r.errors
        );
    }
    let r = answer(&sb, "abandoned");
    assert_eq!(r.phase, "failed", "{r:?}");
    assert!(r.errors[0].contains("abandoned"), "{r:?}");
    crate::common::wait_for("every request answered", Duration::from_secs(30), || {
        pending_keys(&sb).is_empty()
    });
    let archived: Vec<String> = rt()
        .block_on(store.list(&requests::archive_prefix()))
        .unwrap()
        .into_iter()
        .map(|o| o.key)
        .collect();
    assert!(
        archived.iter().any(|k| k.contains("/invalid~nested")),
        "{archived:?}"
    );
    assert!(
        !archived.contains(&old),
        "the old archive went: {archived:?}"
    );
    assert!(!archived.contains(&requests::client_id_key("old-client")));
    assert!(statefiles(&sb).is_empty(), "no bad request ran");

    // The watch goes on: a good request after them all is run.
    put(
        "after-the-bad-ones.json",
        good(
            "create-backup",
            serde_json::json!({"label": "still-watching"}),
            "c7",
        )
        .as_bytes(),
    );
    let r = answer(&sb, "after-the-bad-ones");
    assert_eq!(r.phase, "completed", "{r:?}");
    let (_, text) = curl(&[&format!("{}/metrics", d.url)]);
    assert_eq!(
        metric(
            &text,
            "backup_agent_requests_total{kind=\"invalid\",outcome=\"rejected\"}"
        ),
        5.0,
        "malformed, empty, unknown kind, too large, misnamed"
    );
}

#[test]
fn two_daemons_never_run_one_request_twice() {
    let sb = sandbox();
    let tmp = tempfile::tempdir().unwrap();
    let a = watching(&sb, tmp.path(), &[]);
    let b = watching(&sb, tmp.path(), &[]);
    let (code, out, err) = agent(
        &sb,
        &[
            "request",
            "create-backup",
            "--label",
            "once",
            "--wait",
            "--poll",
            "300ms",
        ],
        &[],
    );
    assert_eq!(code, 0, "{out}{err}");
    // Both watched; one claimed it: one backup, one "started" between the two logs.
    assert_eq!(statefiles(&sb).len(), 1);
    let started: usize = [&a.log, &b.log]
        .iter()
        .map(|l| {
            std::fs::read_to_string(l)
                .unwrap()
                .matches(") started")
                .count()
        })
        .sum();
    assert_eq!(started, 1);
}
