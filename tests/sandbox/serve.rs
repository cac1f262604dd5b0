//! `backup-agent serve`, the real daemon against the sandbox, driven with curl: a schedule of
//! every minute makes backups and prunes after each, the API and metrics tell what the
//! statefiles say, the token guards POST, no secret leaks, SIGTERM stops a backup cleanly.

use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use crate::common::{agent, repo, rt, scales, statefiles};
use backup_agent::repository::{self, Phase};
use backup_agent_sandbox::Sandbox;

const TOKEN: &str = "planted-api-token-3b7e51";

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// (HTTP status, body) of a curl call.
pub(crate) fn curl(args: &[&str]) -> (u16, String) {
    let out = std::process::Command::new("curl")
        .args(["-s", "-w", "\n%{http_code}"])
        .args(args)
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

pub(crate) fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

fn wait_for(what: &str, limit: Duration, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub(crate) struct Daemon {
    pub(crate) child: Child,
    pub(crate) log: std::path::PathBuf,
    pub(crate) url: String,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(crate) fn start(sb: &Sandbox, tmp: &std::path::Path, args: &[&str]) -> Daemon {
    let port = free_port();
    let token = tmp.join("token");
    std::fs::write(&token, format!("{TOKEN}\n")).unwrap();
    let log = tmp.join(format!("serve-{port}.log"));
    let listen = format!("127.0.0.1:{port}");
    let child = sb
        .command(env!("CARGO_BIN_EXE_backup-agent"))
        .args(["serve", "-v", "--listen", &listen, "--token-file"])
        .arg(&token)
        .args(args)
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let d = Daemon {
        child,
        log,
        url: format!("http://{listen}"),
    };
    wait_for("the API", Duration::from_secs(30), || {
        curl(&[&format!("{}/healthz", d.url)]).0 == 200
    });
    d
}

pub(crate) fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(' ')))
        .unwrap_or_else(|| panic!("no {name} in\n{text}"))
        .parse()
        .unwrap()
}

#[test]
fn the_daemon_backs_up_on_schedule_prunes_and_serves_what_the_statefiles_say() {
    let sb = crate::common::sandbox(6);
    let tmp = tempfile::tempdir().unwrap();
    let before = scales(&sb);
    let d = start(
        &sb,
        tmp.path(),
        &["--schedule", "* * * * *", "--retention", "keep-last=2"],
    );
    let u = |p: &str| format!("{}{p}", d.url);
    let mut bodies = vec![];

    // Nothing in the repository: the missed run happens at start, the next on the minute.
    let completed = |sb: &Sandbox| {
        statefiles(sb)
            .iter()
            .filter(|s| s.phase == Phase::Completed)
            .count()
    };
    wait_for("the catch-up backup", Duration::from_secs(60), || {
        completed(&sb) >= 1
    });
    let first = statefiles(&sb)[0].backup_id.clone();
    wait_for("the scheduled backup", Duration::from_secs(90), || {
        statefiles(&sb)
            .iter()
            .any(|s| s.backup_id != first && s.phase == Phase::Completed)
    });
    wait_for("the daemon to be idle", Duration::from_secs(60), || {
        json(&curl(&[&u("/healthz")]).1)["running"].is_null()
    });
    let sfs = statefiles(&sb);
    assert!(sfs
        .iter()
        .all(|s| s.request == repository::RequestType::Scheduled && s.label == "scheduled"));
    let (_, text) = curl(&[&u("/metrics")]);
    let next = metric(&text, "backup_agent_next_run_timestamp_seconds");
    let now = chrono::Utc::now().timestamp() as f64;
    assert!(
        next > now - 1.0 && next <= now + 61.0,
        "next run {next}, now {now}"
    );
    // Stopped while idle, it just exits; the log says where the next run was due.
    let mut d = d;
    unsafe { libc::kill(d.child.id() as i32, libc::SIGTERM) };
    assert!(d.child.wait().unwrap().success());
    bodies.push(std::fs::read_to_string(&d.log).unwrap());

    // The rest against a daemon with no schedule, so that nothing runs unasked meanwhile.
    let d = start(&sb, tmp.path(), &["--retention", "keep-last=2"]);
    let u = |p: &str| format!("{}{p}", d.url);

    // The token guards POST.
    let (code, body) = curl(&["-X", "POST", &u("/v1/backups")]);
    assert_eq!(code, 401, "{body}");
    assert!(json(&body)["error"]
        .as_str()
        .unwrap()
        .contains("Authorization: Bearer"));
    let (code, body) = curl(&[
        "-X",
        "POST",
        "-H",
        "Authorization: Bearer wrong",
        &u("/v1/backups"),
    ]);
    assert_eq!(code, 403, "{body}");
    let auth = format!("Authorization: Bearer {TOKEN}");
    // Bodies are bounded: a huge one is refused, unread without a token, 413 with one.
    let huge = tmp.path().join("huge.json");
    std::fs::write(&huge, format!("{{\"label\": \"{}\"}}", "x".repeat(1 << 20))).unwrap();
    let at_huge = format!("@{}", huge.display());
    let (code, body) = curl(&["-X", "POST", "--data-binary", &at_huge, &u("/v1/backups")]);
    assert_eq!(code, 401, "{body}");
    let (code, body) = curl(&[
        "-X",
        "POST",
        "-H",
        &auth,
        "--data-binary",
        &at_huge,
        &u("/v1/backups"),
    ]);
    assert_eq!(code, 413, "{body}");
    assert!(
        json(&body)["error"]
            .as_str()
            .unwrap()
            .contains("larger than"),
        "{body}"
    );
    let (code, body) = curl(&[
        "-X",
        "POST",
        "-H",
        &auth,
        "-d",
        "{\"lable\": 1}",
        &u("/v1/backups"),
    ]);
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("unknown field \\\"lable\\\""), "{body}");
    let (code, body) = curl(&[
        "-X",
        "POST",
        "-H",
        &auth,
        "-d",
        "{\"label\": \"from-api\"}",
        &u("/v1/backups"),
    ]);
    assert_eq!(code, 202, "{body}");
    bodies.push(body);
    // One at a time.
    let (code, body) = curl(&["-X", "POST", "-H", &auth, &u("/v1/backups")]);
    assert_eq!(code, 409, "{body}");
    assert!(body.contains("already running"), "{body}");
    wait_for("the API backup", Duration::from_secs(60), || {
        statefiles(&sb)
            .iter()
            .any(|s| s.label == "from-api" && s.phase == Phase::Completed)
            && json(&curl(&[&u("/healthz")]).1)["running"].is_null()
    });

    // keep-last=2 pruned after each backup: two stay, the API one newest.
    let sfs = statefiles(&sb);
    assert_eq!(
        sfs.len(),
        2,
        "{:?}",
        sfs.iter().map(|s| &s.backup_id).collect::<Vec<_>>()
    );
    assert_eq!(sfs[1].label, "from-api");
    assert_eq!(sfs[1].request, repository::RequestType::Manual);

    // GET /v1/backups and /v1/backups/{id} are the statefiles.
    let (code, body) = curl(&[&u("/v1/backups")]);
    assert_eq!(code, 200);
    let listed = json(&body);
    assert_eq!(listed["count"], 2);
    assert_eq!(listed["backups"][0]["backup-id"], sfs[1].backup_id.as_str());
    assert_eq!(listed["backups"][0]["size-bytes"], sfs[1].size());
    bodies.push(body);
    let (code, body) = curl(&[&u(&format!("/v1/backups/{}", sfs[1].backup_id))]);
    assert_eq!(code, 200);
    assert_eq!(json(&body), serde_json::to_value(&sfs[1]).unwrap());
    bodies.push(body);
    for (path, want) in [
        ("/v1/backups/20250101T000000Z-abcdef", 404),
        ("/v1/backups/..%2Fetc", 400),
        ("/v2/nothing", 404),
    ] {
        let (code, body) = curl(&[&u(path)]);
        assert_eq!(code, want, "{path}: {body}");
        assert!(json(&body)["error"].is_string(), "{body}");
    }
    let (code, _) = curl(&["-X", "DELETE", &u("/v1/backups")]);
    assert_eq!(code, 405);

    // A verification shows in the metrics.
    let (code, out, err) = agent(&sb, &["verify-backup", &sfs[1].backup_id], &[]);
    assert_eq!(code, 0, "{out}{err}");
    let (code, text) = curl(&[&u("/metrics")]);
    assert_eq!(code, 200);
    let newest = &statefiles(&sb)[1];
    assert_eq!(
        metric(&text, "backup_agent_backups{outcome=\"completed\"}"),
        2.0
    );
    assert_eq!(
        metric(&text, "backup_agent_backups{outcome=\"failed\"}"),
        0.0
    );
    assert_eq!(
        metric(&text, "backup_agent_verifications{outcome=\"passed\"}"),
        1.0
    );
    assert_eq!(
        metric(&text, "backup_agent_last_success_timestamp_seconds"),
        newest.finished_at.unwrap().timestamp() as f64
    );
    assert_eq!(
        metric(&text, "backup_agent_last_success_size_bytes"),
        newest.size() as f64
    );
    assert_eq!(
        metric(&text, "backup_agent_last_success_new_bytes"),
        newest.new_bytes() as f64
    );
    let took = (newest.finished_at.unwrap() - newest.started_at).num_milliseconds() as f64 / 1000.0;
    assert!((metric(&text, "backup_agent_last_success_duration_seconds") - took).abs() < 0.01);
    assert_eq!(metric(&text, "backup_agent_running"), 0.0);
    assert!(
        !text.contains("backup_agent_next_run_timestamp_seconds"),
        "no schedule, no next run"
    );
    bodies.push(text);
    let (_, health) = curl(&[&u("/healthz")]);
    assert!(json(&health)["schedule"].is_null(), "{health}");
    bodies.push(health);

    // SIGTERM while a backup copies: it stops, the scales come back, the record says so.
    let (code, _) = curl(&[
        "-X",
        "POST",
        "-H",
        &auth,
        "-d",
        "{\"label\": \"interrupted\"}",
        &u("/v1/backups"),
    ]);
    assert_eq!(code, 202);
    wait_for(
        "the backup to be capturing",
        Duration::from_secs(60),
        || {
            statefiles(&sb)
                .iter()
                .any(|s| s.label == "interrupted" && s.phase == Phase::Capturing)
        },
    );
    let mut d = d;
    unsafe { libc::kill(d.child.id() as i32, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(s) = d.child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "the daemon did not stop");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(status.success(), "{status:?}");
    let stopped = statefiles(&sb)
        .into_iter()
        .find(|s| s.label == "interrupted")
        .unwrap();
    assert_eq!(stopped.phase, Phase::Failed);
    assert!(
        stopped.errors.iter().any(|e| e.message.contains("SIGTERM")),
        "{:?}",
        stopped.errors
    );
    assert_eq!(scales(&sb), before);
    assert!(rt()
        .block_on(repo(&sb).head(&repository::lock_key()))
        .unwrap()
        .is_none());

    // No secret anywhere: responses, the daemon's log.
    let log = std::fs::read_to_string(&d.log).unwrap();
    bodies.push(log);
    for secret in [
        TOKEN,
        sb.info.dest.secret_key.as_str(),
        sb.info.dest.access_key.as_str(),
        sb.info.minio.secret_key.as_str(),
    ] {
        for b in &bodies {
            assert!(!b.contains(secret), "a secret in {b}");
        }
    }
}

#[test]
fn bad_daemon_input_is_refused_before_anything_happens() {
    let sb = crate::common::sandbox(2);
    let tmp = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy = taken.local_addr().unwrap().to_string();
    let empty = tmp.path().join("empty-token");
    std::fs::write(&empty, "\n").unwrap();
    let token = tmp.path().join("token");
    std::fs::write(&token, TOKEN).unwrap();
    for (args, want) in [
        (
            vec!["--schedule", "every night"],
            "is not a cron expression",
        ),
        (vec!["--schedule", "61 * * * *"], "is not a cron expression"),
        (
            vec!["--retention", "keep-nightly=3"],
            "unknown retention rule",
        ),
        (
            vec!["--retention", "keep-daily=0"],
            "a count must be at least 1",
        ),
        (vec!["--listen", "localhost"], "--listen"),
        (vec!["--token-file", empty.to_str().unwrap()], "is empty"),
        (
            vec!["--token-file", "/nonexistent/token"],
            "--token-file /nonexistent/token",
        ),
        (
            vec![
                "--listen",
                &busy,
                "--token-file",
                token.to_str().unwrap(),
                "--schedule",
                "* * * * *",
            ],
            "cannot listen on",
        ),
    ] {
        let mut all = vec!["serve"];
        all.extend(args.iter().copied());
        let (code, out, err) = agent(&sb, &all, &[]);
        assert_ne!(code, 0, "{args:?}: {out}");
        assert!(err.contains(want), "{args:?}: {err}");
    }
    assert!(statefiles(&sb).is_empty(), "nothing was backed up");
    drop(taken);
}

/// Drills on the daemon's own schedule and over HTTP: recorded in the backup's history,
/// shown by the API and the metrics, and a damaged backup turns the metric to 0.
#[test]
fn the_daemon_drills_on_schedule_and_on_request() {
    let sb = crate::common::sandbox(6);
    let tmp = tempfile::tempdir().unwrap();
    let id = crate::common::backup(&sb, "drilled");
    let drills = |sb: &Sandbox| -> Vec<String> {
        statefiles(sb)
            .into_iter()
            .filter(|s| s.backup_id == id)
            .flat_map(|s| s.history)
            .filter(|h| h["event"] == "drill")
            .map(|h| h["outcome"].as_str().unwrap().to_string())
            .collect()
    };
    let d = start(
        &sb,
        tmp.path(),
        &["--drill-schedule", "*/2 * * * * *", "--drill-sample", "50%"],
    );
    let u = |p: &str| format!("{}{p}", d.url);
    wait_for("a scheduled drill", Duration::from_secs(60), || {
        drills(&sb).iter().any(|o| o == "passed")
    });
    let (_, text) = curl(&[&u("/metrics")]);
    assert_eq!(metric(&text, "backup_agent_last_drill_passed"), 1.0);
    let at = metric(&text, "backup_agent_last_drill_success_timestamp_seconds");
    assert!(at > chrono::Utc::now().timestamp() as f64 - 120.0, "{at}");
    let health = json(&curl(&[&u("/healthz")]).1);
    assert_eq!(health["drill-schedule"], "*/2 * * * * *");
    assert!(health["next-drill"].is_string(), "{health}");
    let list = json(&curl(&[&u("/v1/backups")]).1);
    assert_eq!(
        list["backups"][0]["last-drill"]["outcome"], "passed",
        "{list}"
    );
    let sf = statefiles(&sb)
        .into_iter()
        .find(|s| s.backup_id == id)
        .unwrap();
    let entry = sf
        .history
        .iter()
        .rev()
        .find(|h| h["event"] == "drill")
        .unwrap();
    assert_eq!(entry["sample"], "50%", "the schedule's sample: {entry}");

    // Over HTTP: the token first, then every field checked, then 202 (or 409 while the
    // schedule's drill runs: it is asked again).
    let post = |auth: bool, body: &str| {
        let auth_header = format!("Authorization: Bearer {TOKEN}");
        let mut args = vec!["-X", "POST", "-d", body];
        if auth {
            args.extend(["-H", &auth_header]);
        }
        let url = u("/v1/drills");
        args.push(&url);
        curl(&args)
    };
    assert_eq!(post(false, "{}").0, 401);
    for (body, words) in [
        ("{\"sample\": \"200%\"}", "out of range"),
        ("{\"backup-id\": \"latest\"}", "latest"),
        ("{\"max-bytes\": \"lots\"}", "max-bytes"),
        ("{\"sample\": 5}", "must be a string"),
        ("{\"scratch\": \"x\"}", "unknown field \\\"scratch\\\""),
        ("[1]", "JSON object"),
    ] {
        let (code, text) = post(true, body);
        assert_eq!(code, 400, "{body}: {text}");
        assert!(text.contains(words), "{body}: {words} in {text}");
    }
    let before = drills(&sb).len();
    let mut accepted = None;
    wait_for("POST /v1/drills accepted", Duration::from_secs(60), || {
        let (code, text) = post(
            true,
            &format!("{{\"backup-id\": \"{id}\", \"max-bytes\": \"1M\"}}"),
        );
        assert!(code == 202 || code == 409, "{code} {text}");
        accepted = (code == 202).then(|| json(&text));
        accepted.is_some()
    });
    let accepted = accepted.unwrap();
    assert_eq!(accepted["kind"], "drill");
    assert_eq!(accepted["backup-id"], id.as_str());
    wait_for("the requested drill", Duration::from_secs(60), || {
        drills(&sb).len() > before
    });

    // A damaged backup: the next scheduled drill fails, the metric and the last run say so.
    let store = repo(&sb);
    let manifest = crate::common::manifest_of(&store, &sf);
    let pack = manifest
        .iter()
        .find_map(|e| e.pack.as_ref().map(|_| e.stored_object().unwrap()))
        .unwrap();
    rt().block_on(store.delete(&pack)).unwrap();
    wait_for("a failed drill", Duration::from_secs(60), || {
        drills(&sb).iter().any(|o| o == "failed")
    });
    wait_for(
        "the failed drill in /metrics",
        Duration::from_secs(30),
        || metric(&curl(&[&u("/metrics")]).1, "backup_agent_last_drill_passed") == 0.0,
    );
    let health = json(&curl(&[&u("/healthz")]).1);
    let last = &health["last-run"];
    if last["kind"] == "drill" && last["outcome"] == "failed" {
        assert!(
            last["error"].as_str().unwrap().contains("problem(s)"),
            "{health}"
        );
    }
    let log = std::fs::read_to_string(&d.log).unwrap();
    assert!(!log.contains(TOKEN), "the token is never logged");
}
