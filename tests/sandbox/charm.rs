//! The charm through its real `dispatch`: packed with `charm/pack`, checked by `charmcraft
//! analyse`, deployed into the sandbox's juju, related, configured with a controller secret,
//! and driven with `juju run`; and hook by hook against the hook-tool simulator's state file.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{json, Value};

use crate::common::{juju, juju_ok, listing, sandbox, scales};
use backup_agent_sandbox::env::Sandbox;
use backup_agent_sandbox::hook_tools::{run_dispatch, HookAction, HookRelation, HookState};

/// Packs the charm around the test build of the binary; returns the .charm path.
fn pack(out: &Path) -> PathBuf {
    let root = env!("CARGO_MANIFEST_DIR");
    let o = Command::new(format!("{root}/charm/pack"))
        .args(["--binary", env!("CARGO_BIN_EXE_backup-agent"), "--out"])
        .arg(out)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    PathBuf::from(String::from_utf8(o.stdout).unwrap().trim())
}

/// `juju run backup-agent/0 ACTION ...` → (exit code, the unit's task JSON, stderr).
fn run_action(sb: &Sandbox, action: &str, params: &[&str]) -> (i32, Value, String) {
    let mut args = vec!["run", "backup-agent/0", action];
    args.extend_from_slice(params);
    args.extend(["--format=json", "--wait=10m"]);
    let (code, out, err) = juju(sb, &args);
    let v: Value = serde_json::from_str(&out).unwrap_or(Value::Null);
    (code, v["backup-agent/0"].clone(), err)
}

fn unit_status(sb: &Sandbox) -> (String, String) {
    let v: Value = serde_json::from_str(&juju_ok(sb, &["status", "--format=json"])).unwrap();
    let ws = &v["applications"]["backup-agent"]["units"]["backup-agent/0"]["workload-status"];
    (
        ws["current"].as_str().unwrap_or_default().to_string(),
        ws["message"].as_str().unwrap_or_default().to_string(),
    )
}

#[test]
fn charmcraft_analyse_finds_nothing_to_fix() {
    let tmp = tempfile::tempdir().unwrap();
    let charm = pack(tmp.path());
    let names: Vec<String> = {
        let z = Command::new("python3")
            .args(["-c", "import sys,zipfile\nfor i in zipfile.ZipFile(sys.argv[1]).infolist(): print(oct(i.external_attr>>16), i.filename)"])
            .arg(&charm)
            .output()
            .unwrap();
        String::from_utf8(z.stdout)
            .unwrap()
            .lines()
            .map(str::to_string)
            .collect()
    };
    for want in [
        "0o100755 dispatch",
        "0o100755 bin/backup-agent",
        "0o100644 actions.yaml",
        "0o100644 metadata.yaml",
        "0o100644 config.yaml",
        "0o100644 manifest.yaml",
    ] {
        assert!(names.iter().any(|n| n == want), "{want} not in {names:?}");
    }
    // What charmcraft.yaml says, split into the files a charm carries: the actions the binary
    // checks parameters against, the config, the metadata.
    let read = |name: &str| -> Value {
        let o = Command::new("python3")
            .args(["-c", "import sys,zipfile\nsys.stdout.write(zipfile.ZipFile(sys.argv[1]).read(sys.argv[2]).decode())"])
            .arg(&charm)
            .arg(name)
            .output()
            .unwrap();
        serde_yaml::from_slice(&o.stdout).unwrap()
    };
    let spec: Value = serde_yaml::from_str(backup_agent::charm::params::CHARMCRAFT_YAML).unwrap();
    assert_eq!(
        read("actions.yaml"),
        backup_agent::charm::params::actions_yaml()
    );
    assert_eq!(read("config.yaml"), spec["config"]);
    let meta = read("metadata.yaml");
    assert_eq!(meta["name"], "backup-agent");
    assert_eq!(meta["display-name"], spec["title"]);
    assert_eq!(meta["provides"], spec["provides"]);
    assert!(meta.get("actions").is_none() && meta.get("parts").is_none());
    // COS's files, and a binary with no debug sections, in a charm well under 25 MB.
    for want in [
        "0o100644 src/prometheus_alert_rules/backup-agent.rules",
        "0o100644 src/grafana_dashboards/backup-agent.json",
    ] {
        assert!(names.iter().any(|n| n == want), "{want} not in {names:?}");
    }
    let size = std::fs::metadata(&charm).unwrap().len();
    assert!(size < 25 << 20, "the .charm is {size} bytes");
    let unpacked = tmp.path().join("unpacked");
    let o = Command::new("python3")
        .args(["-c", "import sys,zipfile\nzipfile.ZipFile(sys.argv[1]).extract('bin/backup-agent', sys.argv[2])"])
        .arg(&charm)
        .arg(&unpacked)
        .output()
        .unwrap();
    assert!(o.status.success());
    let sections = Command::new("readelf")
        .args(["-S", "-W"])
        .arg(unpacked.join("bin/backup-agent"))
        .output()
        .expect("readelf (binutils)");
    let sections = String::from_utf8_lossy(&sections.stdout);
    assert!(sections.contains(".text"), "{sections}");
    // DWARF (`.debug_info`, `.debug_line`, ...); `.debug_gdb_scripts` is 34 bytes of a loaded
    // section, not debug information.
    for dwarf in [".debug_info", ".debug_line", ".debug_str", ".debug_abbrev"] {
        assert!(!sections.contains(dwarf), "{dwarf} left: {sections}");
    }

    let charmcraft = which::which("charmcraft")
        .expect("charmcraft not on PATH: run scripts/bootstrap and put .venv/bin on PATH (scripts/test does)");
    let o = Command::new(charmcraft)
        .args(["analyse", "--format=json"])
        .arg(&charm)
        .env("XDG_RUNTIME_DIR", tmp.path())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let checks: Vec<Value> = serde_json::from_slice(&o.stdout).unwrap();
    let lints: Vec<&Value> = checks
        .iter()
        .filter(|c| c["check_type"] == "lint")
        .collect();
    assert!(lints.len() >= 6, "{checks:?}");
    for c in &lints {
        assert!(
            c["result"] == "ok" || c["result"] == "nonapplicable",
            "charmcraft analyse: {c}"
        );
    }
    for name in [
        "entrypoint",
        "metadata",
        "juju-actions",
        "juju-config",
        "naming-conventions",
    ] {
        assert!(
            lints
                .iter()
                .any(|c| c["name"] == name && c["result"] == "ok"),
            "{name} not ok: {checks:?}"
        );
    }
}

/// The operator's path, end to end: deploy, integrate, controller secret, actions.
#[test]
fn deployed_charm_backs_up_lists_verifies_and_restores_through_juju_run() {
    let sb = crate::common::sandbox_with(12, |o| o.secondary = true);
    let tmp = tempfile::tempdir().unwrap();
    let charm = pack(tmp.path());
    let juju_bin = sb.layout.bin().join("juju");
    let resource = format!("juju-client={}", juju_bin.display());
    // The daemon's API on loopback (the charm's default is every interface, for Prometheus).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let listen = format!("listen=127.0.0.1:{port}");
    juju_ok(
        &sb,
        &[
            "deploy",
            charm.to_str().unwrap(),
            "--resource",
            &resource,
            "--config",
            &listen,
        ],
    );
    assert_eq!(
        unit_status(&sb),
        (
            "blocked".into(),
            "missing relation s3-credentials: juju integrate backup-agent:s3-credentials s3-integrator".into()
        )
    );

    juju_ok(
        &sb,
        &["integrate", "backup-agent:s3-credentials", "s3-integrator"],
    );
    let (st, msg) = unit_status(&sb);
    assert_eq!(st, "blocked");
    assert!(
        msg.starts_with("set controller-secret: juju config backup-agent controller-secret="),
        "{msg}"
    );

    // An action before the controller access is set up fails, naming what to do.
    let before = scales(&sb);
    let (code, task, _) = run_action(&sb, "create-backup", &[]);
    assert_eq!(code, 1);
    assert_eq!(task["status"], "failed");
    let m = task["message"].as_str().unwrap();
    assert!(
        m.contains("controller-secret is not set") && m.contains("Controller access"),
        "{m}"
    );

    // Bad parameters never reach the charm: Juju refuses them against actions.yaml.
    let (code, _, err) = juju(
        &sb,
        &[
            "run",
            "backup-agent/0",
            "restore",
            "--format=json",
            "--wait=1m",
        ],
    );
    assert_eq!(code, 1);
    assert!(
        err.contains("\"backup-id\" property is missing and required"),
        "{err}"
    );
    let (code, _, err) = juju(
        &sb,
        &[
            "run",
            "backup-agent/0",
            "create-backup",
            "lable=x",
            "--wait=1m",
        ],
    );
    assert_eq!(code, 1);
    assert!(
        err.contains("additional property \"lable\" is not allowed"),
        "{err}"
    );

    // The README's controller-access setup.
    let ctl: Value = serde_json::from_str(&juju_ok(
        &sb,
        &["show-controller", "--show-password", "--format=json"],
    ))
    .unwrap();
    let (_, c) = ctl.as_object().unwrap().iter().next().unwrap();
    let ca = tmp.path().join("ca.pem");
    std::fs::write(&ca, c["details"]["ca-cert"].as_str().unwrap()).unwrap();
    let addresses = c["details"]["api-endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect::<Vec<_>>()
        .join(",");
    let password = c["account"]["password"].as_str().unwrap().to_string();
    let uri = juju_ok(
        &sb,
        &[
            "add-secret",
            "backup-agent-controller",
            &format!("controller-uuid={}", c["details"]["uuid"].as_str().unwrap()),
            &format!("controller-addresses={addresses}"),
            &format!("ca-cert#file={}", ca.display()),
            &format!("username={}", c["account"]["user"].as_str().unwrap()),
            &format!("password={password}"),
        ],
    );
    let uri = uri.trim().to_string();
    assert!(uri.starts_with("secret:"), "{uri}");
    juju_ok(
        &sb,
        &[
            "config",
            "backup-agent",
            &format!("controller-secret={uri}"),
        ],
    );
    let (st, msg) = unit_status(&sb);
    assert_eq!(st, "blocked", "not granted yet: {msg}");
    assert!(msg.contains("grant it with `juju grant-secret"), "{msg}");
    juju_ok(
        &sb,
        &["grant-secret", "backup-agent-controller", "backup-agent"],
    );
    juju_ok(&sb, &["integrate", "backup-agent", "minio"]);
    let (st, msg) = unit_status(&sb);
    assert_eq!(st, "active", "{msg}");
    assert!(msg.starts_with("ready; no backups yet in s3://"), "{msg}");
    assert!(
        msg.ends_with(&format!("; daemon on 127.0.0.1:{port}")),
        "{msg}"
    );

    let mut seen_extra = String::new();
    // The daemon: `backup-agent serve` as a Pebble service in the workload container, its
    // keys in files only it can read, none in the plan.
    let container = sb
        .layout
        .dir
        .join("units/backup-agent-0/containers/backup-agent");
    let pebble = |path: &str| -> Value {
        let out = std::process::Command::new("curl")
            .args(["-s", "--unix-socket"])
            .arg(container.join("pebble.socket"))
            .arg(format!("http://localhost{path}"))
            .output()
            .unwrap();
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let services = pebble("/v1/services?names=backup-agent");
    assert_eq!(services["result"][0]["current"], "active", "{services}");
    let plan = pebble("/v1/plan?format=yaml")["result"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        plan.contains(
            "/opt/backup-agent/bin/backup-agent serve --env-file /opt/backup-agent/serve.env"
        ),
        "{plan}"
    );
    assert!(!plan.contains(sb.info.dest.secret_key.as_str()) && !plan.contains(password.as_str()));
    {
        use std::os::unix::fs::PermissionsExt;
        for f in ["serve.env", "token", "juju-data/accounts.yaml"] {
            let p = container.join("root/opt/backup-agent").join(f);
            let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{}", p.display());
        }
    }
    let api = |path: &str| -> String {
        let out = std::process::Command::new("curl")
            .args(["-s", &format!("http://127.0.0.1:{port}{path}")])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !api("/healthz").contains("\"status\":\"ok\"") {
        assert!(
            std::time::Instant::now() < deadline,
            "the daemon's API never answered"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }

    // create-backup through the packed charm's dispatch.
    let (code, task, err) = run_action(&sb, "create-backup", &["label=from-juju-run"]);
    assert_eq!(code, 0, "{task}\n{err}");
    assert_eq!(task["status"], "completed", "{task}");
    let r = &task["results"];
    let id = r["backup-id"].as_str().unwrap().to_string();
    let task_id = task["id"].as_str().unwrap().to_string();
    assert_eq!(r["phase"], "completed");
    assert_eq!(r["label"], "from-juju-run");
    assert_eq!(r["components"], "kfp-db,katib-db,mlmd,mlpipeline");
    assert_eq!(r["return-code"], json!(0));
    assert!(
        r["kfp-db-backup-id"].as_str().is_some() && r["katib-db-backup-id"].as_str().is_some(),
        "{r}"
    );
    assert!(r["summary"].as_str().unwrap().contains(&id));
    let log: Vec<&str> = task["log"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l.as_str().unwrap())
        .collect();
    assert!(log.iter().any(|l| l.contains("preflight:")), "{log:?}");
    assert!(
        log.iter()
            .any(|l| l.contains("MinIO") && l.contains("object-storage relation")),
        "{log:?}"
    );
    assert_eq!(scales(&sb), before, "scales put back");
    let (st, msg) = unit_status(&sb);
    assert_eq!(st, "active");
    assert!(
        msg.starts_with(&format!("last backup {id} ")) && msg.ends_with("(1 backup)"),
        "{msg}"
    );
    // The daemon reads the same repository.
    let listed: Value = serde_json::from_str(&api("/v1/backups")).unwrap();
    assert_eq!(listed["count"], 1);
    assert_eq!(listed["backups"][0]["backup-id"], id.as_str());
    assert!(api("/metrics").contains("backup_agent_backups{outcome=\"completed\"} 1"));
    // The statefile is where the relation says: <path>/backup-agent/ of s3-integrator's bucket.
    let mysql_path = sb.info.mysql_path.trim_matches('/').to_string();
    let sf_key = format!("backup-agent/backups/{id}/statefile.json");
    let keys = listing(&crate::common::s3_store(
        &sb.info.dest,
        &sb.info.dest_bucket,
        &mysql_path,
    ));
    assert!(
        keys.iter().any(|(k, _)| k == &sf_key),
        "{sf_key} not in {keys:?}"
    );

    let (code, task, _) = run_action(&sb, "list-backups", &[]);
    assert_eq!(code, 0);
    assert_eq!(task["results"]["count"], "1");
    assert_eq!(task["results"]["latest-completed"], id.as_str());
    assert!(task["results"]["backups"]
        .as_str()
        .unwrap()
        .contains("from-juju-run"));

    let (code, task, _) = run_action(&sb, "describe-backup", &[&format!("backup-id={id}")]);
    assert_eq!(code, 0);
    assert!(task["results"]["statefile"]
        .as_str()
        .unwrap()
        .contains("kfp-metadata-writer"));

    let (code, task, _) = run_action(
        &sb,
        "verify-backup",
        &[&format!("backup-id={id}"), "read-data=true"],
    );
    assert_eq!(code, 0, "{task}");
    assert_eq!(task["results"]["passed"], "true");
    assert_eq!(task["results"]["mode"], "read-data");

    // A restore drill of the newest completed backup: planned, run, recorded.
    let (code, task, _) = run_action(&sb, "restore-drill", &["dry-run=true"]);
    assert_eq!(code, 0, "{task}");
    assert!(
        task["results"]["plan"].as_str().unwrap().contains(&id),
        "{task}"
    );
    let (code, task, _) = run_action(&sb, "restore-drill", &["sample=50%"]);
    assert_eq!(code, 0, "{task}");
    assert_eq!(task["results"]["passed"], "true", "{task}");
    assert_eq!(task["results"]["backup-id"], id.as_str());
    assert!(task["results"]["report"]
        .as_str()
        .unwrap()
        .contains("read back equal"));
    let (code, task, _) = run_action(&sb, "restore-drill", &["sample=half"]);
    assert_eq!(code, 1, "{task}");
    assert!(
        task["message"]
            .as_str()
            .unwrap()
            .contains("parameter sample"),
        "{task}"
    );
    // Scheduled drills: the config reaches the daemon, which reports it.
    crate::common::juju_ok(
        &sb,
        &[
            "config",
            "backup-agent",
            "drill-schedule=0 4 * * 0",
            "drill-sample=5%",
        ],
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !api("/healthz").contains("\"drill-schedule\":\"0 4 * * 0\"") {
        assert!(
            std::time::Instant::now() < deadline,
            "the daemon never took the drill schedule: {}",
            api("/healthz")
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let (_, task, _) = run_action(&sb, "describe-backup", &[&format!("backup-id={id}")]);
    assert!(
        task["results"]["last-drill"]
            .as_str()
            .unwrap()
            .starts_with("passed "),
        "{task}"
    );

    let (code, task, _) = run_action(
        &sb,
        "describe-backup",
        &["backup-id=20200101T000000Z-abcdef"],
    );
    assert_eq!(code, 1);
    assert!(
        task["message"]
            .as_str()
            .unwrap()
            .contains("20200101T000000Z-abcdef"),
        "{task}"
    );

    // The off-site copy: a second s3-integrator on s3-secondary, keys synced, copy-backup.
    let (code, task, _) = run_action(&sb, "copy-backup", &[]);
    assert_eq!(code, 1, "{task}");
    assert!(
        task["message"]
            .as_str()
            .unwrap()
            .contains("juju integrate backup-agent:s3-secondary"),
        "{task}"
    );
    juju_ok(
        &sb,
        &["integrate", "backup-agent:s3-secondary", "s3-offsite"],
    );
    let off = sb.info.secondary.as_ref().unwrap();
    juju_ok(
        &sb,
        &[
            "run",
            "s3-offsite/leader",
            "sync-s3-credentials",
            &format!("access-key={}", off.access_key),
            &format!("secret-key={}", off.secret_key),
        ],
    );
    let (code, task, _) = run_action(&sb, "copy-backup", &["dry-run=true"]);
    assert_eq!(code, 0, "{task}");
    assert_eq!(task["results"]["count"], "1", "{task}");
    let (code, task, _) = run_action(&sb, "copy-backup", &[]);
    assert_eq!(code, 0, "{task}");
    assert_eq!(task["results"]["copied"], "1", "{task}");
    assert_eq!(task["results"]["backup-ids"], id.as_str());
    let (_, task, _) = run_action(&sb, "list-backups", &[]);
    let table = task["results"]["backups"].as_str().unwrap();
    assert!(
        table.contains("WHERE") && table.contains(" both "),
        "{table}"
    );
    let (code, task, _) = run_action(&sb, "restore-drill", &["from=secondary"]);
    assert_eq!(code, 0, "{task}");
    assert_eq!(task["results"]["passed"], "true", "{task}");
    // Copies after every backup once configured: the daemon is told, the keys stay in files.
    juju_ok(
        &sb,
        &[
            "config",
            "backup-agent",
            "copy-after-backup=true",
            "secondary-retention=keep-last=3",
            "bucket-requests=true",
        ],
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let plan = pebble("/v1/plan?format=yaml")["result"]
            .as_str()
            .unwrap()
            .to_string();
        if plan.contains("--copy-after-backup --secondary-retention keep-last=3 --requests") {
            assert!(!plan.contains(off.secret_key.as_str()), "{plan}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{plan}");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let env = std::fs::read_to_string(container.join("root/opt/backup-agent/serve.env")).unwrap();
    assert!(
        env.contains(&format!(
            "BACKUP_AGENT_SECONDARY_S3_SECRET_KEY={}",
            off.secret_key
        )),
        "the secondary's keys reach the daemon through its env file"
    );

    // A plan first, then the restore itself (MLMD and the bucket; no safety backup).
    let (code, task, _) = run_action(
        &sb,
        "restore",
        &[
            &format!("backup-id={id}"),
            "components=[mlmd, mlpipeline]",
            "dry-run=true",
        ],
    );
    assert_eq!(code, 0, "{task}");
    assert_eq!(task["results"]["dry-run"], "true");
    let (code, task, _) = run_action(
        &sb,
        "restore",
        &[
            &format!("backup-id={id}"),
            "components=[mlmd, mlpipeline]",
            "no-safety-backup=true",
        ],
    );
    assert_eq!(code, 0, "{task}");
    assert_eq!(task["results"]["backup-id"], id.as_str());
    assert!(
        task["results"]["summary"]
            .as_str()
            .unwrap()
            .contains("mlmd"),
        "{task}"
    );
    assert_eq!(scales(&sb), before, "scales put back after the restore");

    // A backup started through the daemon's API, with the token the charm gave it.
    let token = std::fs::read_to_string(container.join("root/opt/backup-agent/token")).unwrap();
    let out = std::process::Command::new("curl")
        .args([
            "-s",
            "-X",
            "POST",
            "-H",
            &format!("Authorization: Bearer {token}"),
        ])
        .arg(format!("http://127.0.0.1:{port}/v1/backups"))
        .output()
        .unwrap();
    let started = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(started.contains("\"status\":\"started\""), "{started}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    loop {
        let h: Value = serde_json::from_str(&api("/healthz")).unwrap();
        if h["running"].is_null() && !h["last-run"].is_null() {
            assert_eq!(h["last-run"]["outcome"], "completed", "{h}");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the API backup never finished: {h}"
        );
        std::thread::sleep(std::time::Duration::from_millis(300));
    }

    // prune: a dry run lists, a real one forgets; then delete-backup of what is left.
    let (code, task, _) = run_action(&sb, "prune", &["retention=keep-last=1", "dry-run=true"]);
    assert_eq!(code, 0, "{task}");
    let n: usize = task["results"]["count"].as_str().unwrap().parse().unwrap();
    assert!(n >= 1, "{task}");
    let (code, task, _) = run_action(&sb, "prune", &["retention=keep-last=1"]);
    assert_eq!(code, 0, "{task}");
    assert_eq!(
        task["results"]["count"].as_str().unwrap(),
        n.to_string(),
        "{task}"
    );
    // One backup left on the primary; the one pruned there lives on in the off-site copy.
    let (_, listed, _) = run_action(&sb, "list-backups", &[]);
    assert_eq!(listed["results"]["count"], "2", "{listed}");
    let table = listed["results"]["backups"].as_str().unwrap();
    assert!(
        table.contains("secondary  from-juju-run") && table.contains(" both "),
        "{table}"
    );
    let (code, task, _) = run_action(&sb, "prune", &["retention=keep-dayly=1"]);
    assert_eq!(code, 1);
    assert!(
        task["message"]
            .as_str()
            .unwrap()
            .contains("unknown retention rule"),
        "{task}"
    );
    let (code, task, _) = run_action(&sb, "delete-backup", &["backup-id=20250101T000000Z-abcdef"]);
    assert_eq!(code, 1);
    assert!(
        task["message"]
            .as_str()
            .unwrap()
            .contains("no backup 20250101T000000Z-abcdef"),
        "{task}"
    );
    seen_extra.push_str(&api("/v1/backups"));
    seen_extra.push_str(&api("/metrics"));
    seen_extra.push_str(&plan);
    seen_extra.push_str(
        &std::fs::read_to_string(container.join("services/backup-agent.log")).unwrap_or_default(),
    );

    // Secrets planted by the sandbox (destination and MinIO keys, controller password) appear
    // in no action output, status, unit log or object.
    let mut seen = std::mem::take(&mut seen_extra);
    seen.push_str(&run_action(&sb, "list-backups", &[]).1.to_string());
    seen.push_str(&juju_ok(&sb, &["status", "--format=json"]));
    seen.push_str(&juju_ok(&sb, &["show-task", &task_id, "--format=json"]));
    for f in std::fs::read_dir(sb.layout.logs()).unwrap() {
        let p = f.unwrap().path();
        let name = p.file_name().unwrap().to_string_lossy().to_string();
        if name.starts_with("unit-backup-agent") || name.starts_with("task-") {
            seen.push_str(&std::fs::read_to_string(&p).unwrap_or_default());
        }
    }
    let model = std::fs::read_to_string(sb.layout.dir.join("model.json")).unwrap();
    let tasks: Value = serde_json::from_str::<Value>(&model).unwrap()["tasks"].clone();
    seen.push_str(&tasks.to_string());
    for planted in [
        sb.info.dest.secret_key.as_str(),
        sb.info.minio.secret_key.as_str(),
        password.as_str(),
    ] {
        assert!(planted.len() >= 8);
        assert!(
            !seen.contains(planted),
            "a secret leaked into juju output or logs"
        );
    }
    // ...nor in the records the charm wrote (statefile, manifest, lock).
    let store = crate::common::s3_store(&sb.info.dest, &sb.info.dest_bucket, &mysql_path);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let records: Vec<String> = listing(&store)
        .into_iter()
        .map(|(k, _)| k)
        .filter(|k| {
            k.starts_with("backup-agent/") && !k.contains("/blobs/") && !k.ends_with(".zst")
        })
        .collect();
    assert!(records.len() >= 2, "{records:?}");
    for k in &records {
        let body = String::from_utf8_lossy(&rt.block_on(store.get_bytes(k)).unwrap()).into_owned();
        for planted in [
            sb.info.dest.secret_key.as_str(),
            sb.info.minio.secret_key.as_str(),
            password.as_str(),
        ] {
            assert!(!body.contains(planted), "a secret leaked into {k}");
        }
    }

    // Removing the destination blocks the unit again, naming the fix.
    juju_ok(&sb, &["remove-relation", "backup-agent", "s3-integrator"]);
    assert_eq!(
        unit_status(&sb),
        (
            "blocked".into(),
            "missing relation s3-credentials: juju integrate backup-agent:s3-credentials s3-integrator".into()
        )
    );
}

/// A charm directory around the test binary (what the .charm unpacks to).
fn charm_dir(at: &Path) -> PathBuf {
    let dir = at.join("charm");
    std::fs::create_dir_all(dir.join("bin")).unwrap();
    std::fs::copy(
        concat!(env!("CARGO_MANIFEST_DIR"), "/charm/dispatch"),
        dir.join("dispatch"),
    )
    .unwrap();
    std::os::unix::fs::symlink(
        env!("CARGO_BIN_EXE_backup-agent"),
        dir.join("bin/backup-agent"),
    )
    .unwrap();
    dir
}

struct Unit {
    dir: PathBuf,
    state: PathBuf,
    extra: Vec<(String, String)>,
}

impl Unit {
    fn new(sb: &Sandbox, at: &Path, state: HookState) -> Unit {
        let state_file = at.join("state.json");
        state.save(&state_file).unwrap();
        Unit {
            dir: charm_dir(at),
            state: state_file,
            extra: vec![(
                "KUBECONFIG".into(),
                sb.layout.kubeconfig().display().to_string(),
            )],
        }
    }

    fn set(&self, f: impl FnOnce(&mut HookState)) {
        HookState::update(&self.state, |s| {
            f(s);
            Ok(())
        })
        .unwrap();
    }

    /// Runs dispatch for `path`; returns (exit code, state after).
    fn dispatch(&self, path: &str) -> (i32, HookState) {
        let out = run_dispatch(&self.dir, path, &self.state, &self.extra).unwrap();
        (out.code, out.state)
    }

    fn action(&self, name: &str, params: Value) -> HookState {
        self.set(|s| {
            s.action = Some(HookAction {
                name: name.into(),
                id: "1".into(),
                params: params.as_object().cloned().unwrap(),
            });
            s.results.clear();
            s.failed = None;
            s.action_log.clear();
        });
        let (code, st) = self.dispatch(&format!("actions/{name}"));
        assert_eq!(
            code, 0,
            "an action that fails still exits 0 after action-fail"
        );
        st
    }

    fn status(&self, hook: &str) -> (String, String) {
        let (code, st) = self.dispatch(&format!("hooks/{hook}"));
        assert_eq!(code, 0, "{hook}");
        let s = st.unit_status.expect("status set");
        (s.status, s.message)
    }
}

fn s3_relation(sb: &Sandbox, v1: bool) -> HookRelation {
    let mut bag: std::collections::BTreeMap<String, String> = [
        ("bucket", sb.info.dest_bucket.clone()),
        ("endpoint", sb.info.dest.endpoint()),
        ("path", "charm-hooks".to_string()),
        ("region", "us-east-1".to_string()),
        ("s3-uri-style", "path".to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    if v1 {
        bag.insert("secret-extra".into(), "secret:s3keysv1xxxxxxxxxxx".into());
    } else {
        bag.insert("access-key".into(), sb.info.dest.access_key.clone());
        bag.insert("secret-key".into(), sb.info.dest.secret_key.clone());
    }
    HookRelation {
        id: 4,
        endpoint: "s3-credentials".into(),
        interface: "s3".into(),
        remote_app: "s3-integrator".into(),
        remote_units: vec!["s3-integrator/0".into()],
        remote_app_data: bag,
        ..Default::default()
    }
}

/// Every hook and action through dispatch, against a state file: statuses, our side of the
/// relation, parameter refusals by the binary itself, results and failures.
#[test]
fn every_hook_and_action_through_dispatch_and_the_hook_tools() {
    let sb = sandbox(4);
    let tmp = tempfile::tempdir().unwrap();
    let controller_uri = "secret:ctlxxxxxxxxxxxxxxxxx";
    let ctl: Value = serde_json::from_str(&juju_ok(
        &sb,
        &["show-controller", "--show-password", "--format=json"],
    ))
    .unwrap();
    let (_, c) = ctl.as_object().unwrap().iter().next().unwrap();
    let controller: std::collections::BTreeMap<String, String> = [
        ("controller-uuid", c["details"]["uuid"].as_str().unwrap()),
        (
            "controller-addresses",
            c["details"]["api-endpoints"][0].as_str().unwrap(),
        ),
        ("ca-cert", c["details"]["ca-cert"].as_str().unwrap()),
        ("username", c["account"]["user"].as_str().unwrap()),
        ("password", c["account"]["password"].as_str().unwrap()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let unit = Unit::new(
        &sb,
        tmp.path(),
        HookState {
            unit: "backup-agent/0".into(),
            leader: true,
            model_name: "kubeflow".into(),
            config: json!({"model": "kubeflow", "checkers": 8, "transfers": 4})
                .as_object()
                .cloned()
                .unwrap(),
            ..Default::default()
        },
    );
    for hook in [
        "install",
        "leader-elected",
        "config-changed",
        "start",
        "upgrade-charm",
    ] {
        assert_eq!(
            unit.status(hook),
            (
                "blocked".into(),
                "missing relation s3-credentials: juju integrate backup-agent:s3-credentials s3-integrator".into()
            ),
            "{hook}"
        );
    }
    // Why the unit is blocked also goes to the unit's log (juju debug-log).
    let (_, state) = unit.dispatch("hooks/update-status");
    assert!(
        state.juju_log.iter().any(|l| l.level == "INFO"
            && l.message == "update-status: blocked: missing relation s3-credentials: juju integrate backup-agent:s3-credentials s3-integrator"),
        "{:?}",
        state.juju_log
    );
    // The relation arrives: the leader asks for a bucket and the secrets (both tracks).
    unit.set(|s| s.relations.push(s3_relation(&sb, false)));
    let (st, msg) = unit.status("s3-credentials-relation-changed");
    assert_eq!(st, "blocked");
    assert!(msg.contains("controller-secret"), "{msg}");
    let (_, state) = unit.dispatch("hooks/update-status");
    let ours = &state.relations[0].local_app_data;
    assert_eq!(ours.get("bucket").map(String::as_str), Some("relation-4"));
    assert!(ours["requested-secrets"].contains("secret-key"));

    // Config and secret in place: active; a bad config value blocks, naming the option.
    unit.set(|s| {
        s.config
            .insert("controller-secret".into(), json!(controller_uri));
        s.secrets.insert(controller_uri.into(), controller.clone());
        s.resources
            .insert("juju-client".into(), sb.layout.bin().join("juju"));
    });
    let (st, msg) = unit.status("config-changed");
    assert_eq!(st, "active", "{msg}");
    let want = format!(
        "ready; no backups yet in s3://{}/charm-hooks at ",
        sb.info.dest_bucket
    );
    assert!(msg.starts_with(&want), "{msg}");
    unit.set(|s| {
        s.config.insert("checkers".into(), json!(0));
    });
    assert_eq!(
        unit.status("config-changed"),
        (
            "blocked".into(),
            "config checkers=0 is out of range 1-256: juju config backup-agent checkers=8".into()
        )
    );
    unit.set(|s| {
        s.config.insert("checkers".into(), json!(8));
        s.resources.clear();
    });
    let (st, msg) = unit.status("update-status");
    assert_eq!(st, "blocked");
    assert!(
        msg.contains("juju attach-resource backup-agent juju-client="),
        "{msg}"
    );
    unit.set(|s| {
        s.resources
            .insert("juju-client".into(), sb.layout.bin().join("juju"));
    });

    // Track 2 of s3-integrator: keys from the secret it shares.
    unit.set(|s| {
        s.relations[0] = s3_relation(&sb, true);
        s.secrets.insert(
            "secret:s3keysv1xxxxxxxxxxx".into(),
            [
                ("access-key", sb.info.dest.access_key.clone()),
                ("secret-key", sb.info.dest.secret_key.clone()),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
        );
    });
    assert_eq!(unit.status("s3-credentials-relation-changed").0, "active");

    // minio on object-storage: we list the interface versions we speak (minio sends nothing
    // to an app that does not), and its keys are what the backup then uses.
    let data = format!(
        "access-key: {}\nnamespace: kubeflow\nport: 9000\nsecret-key: {}\nsecure: false\nservice: minio\n",
        sb.info.minio.access_key, sb.info.minio.secret_key
    );
    unit.set(|s| {
        s.relations.push(HookRelation {
            id: 5,
            endpoint: "object-storage".into(),
            interface: "object-storage".into(),
            remote_app: "minio".into(),
            remote_units: vec!["minio/0".into()],
            remote_app_data: [("_supported_versions", "- v1\n"), ("data", data.as_str())]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Default::default()
        })
    });
    let (_, state) = unit.dispatch("hooks/object-storage-relation-changed");
    assert_eq!(
        state.relations[1]
            .local_app_data
            .get("_supported_versions")
            .map(String::as_str),
        Some("- v1\n")
    );

    // metrics-endpoint (prometheus_scrape): the leader publishes the job, every unit itself.
    unit.set(|s| {
        s.relations.push(HookRelation {
            id: 6,
            endpoint: "metrics-endpoint".into(),
            interface: "prometheus_scrape".into(),
            remote_app: "prometheus".into(),
            remote_units: vec!["prometheus/0".into()],
            ..Default::default()
        })
    });
    let (_, state) = unit.dispatch("hooks/metrics-endpoint-relation-joined");
    let jobs: Value =
        serde_json::from_str(&state.relations[2].local_app_data["scrape_jobs"]).unwrap();
    assert_eq!(jobs[0]["metrics_path"], "/metrics");
    assert_eq!(jobs[0]["static_configs"][0]["targets"][0], "*:8940");
    assert_eq!(
        state.relations[2].local_unit_data["prometheus_scrape_unit_name"],
        "backup-agent/0"
    );
    // The alert rules go with the job, limited to this deployment.
    let rules: Value =
        serde_json::from_str(&state.relations[2].local_app_data["alert_rules"]).unwrap();
    let first = &rules["groups"][0]["rules"][0];
    assert_eq!(first["labels"]["juju_application"], "backup-agent");
    assert!(
        first["expr"]
            .as_str()
            .unwrap()
            .contains("juju_application=\"backup-agent\""),
        "{first}"
    );

    // grafana-dashboard: the leader publishes the dashboard, compressed as COS reads it.
    unit.set(|s| {
        s.relations.push(HookRelation {
            id: 7,
            endpoint: "grafana-dashboard".into(),
            interface: "grafana_dashboard".into(),
            remote_app: "grafana".into(),
            remote_units: vec!["grafana/0".into()],
            ..Default::default()
        })
    });
    let (_, state) = unit.dispatch("hooks/grafana-dashboard-relation-joined");
    let dashboards: Value =
        serde_json::from_str(&state.relations[3].local_app_data["dashboards"]).unwrap();
    assert!(dashboards["templates"]["file:backup-agent"]["content"]
        .as_str()
        .unwrap()
        .starts_with("/Td6WFoAAA"));

    // Bad daemon settings block the unit, naming the fix.
    for (key, value, want) in [
        (
            "schedule",
            "every night",
            "config schedule \"every night\" is not a cron expression",
        ),
        (
            "retention",
            "keep-nightly=3",
            "unknown retention rule \"keep-nightly\"",
        ),
        (
            "listen",
            "everywhere",
            "config listen=\"everywhere\" is not an address:port",
        ),
        (
            "drill-schedule",
            "weekly",
            "config drill-schedule \"weekly\" is not a cron expression",
        ),
        ("drill-sample", "half", "config drill-sample \"half\""),
    ] {
        unit.set(|s| {
            s.config.insert(key.into(), json!(value));
        });
        let (st, msg) = unit.status("config-changed");
        assert_eq!(st, "blocked", "{key}");
        assert!(
            msg.contains(want) && msg.contains("juju config backup-agent"),
            "{msg}"
        );
        unit.set(|s| {
            s.config.remove(key);
        });
    }

    // A non-leader does not write the app bag (but does its own unit bag).
    unit.set(|s| {
        s.leader = false;
        s.relations[0].local_app_data.clear();
        s.relations[1].local_app_data.clear();
        s.relations[2].local_app_data.clear();
    });
    let (_, state) = unit.dispatch("hooks/s3-credentials-relation-changed");
    assert!(state.relations[0].local_app_data.is_empty());
    assert!(state.relations[1].local_app_data.is_empty());
    assert!(state.relations[2].local_app_data.is_empty());
    assert!(state.relations[2]
        .local_unit_data
        .contains_key("prometheus_scrape_unit_address"));
    unit.set(|s| s.leader = true);

    // The binary checks parameters itself too (a hand-run dispatch, a future Juju).
    let objects_before = listing(&crate::common::s3_store(
        &sb.info.dest,
        &sb.info.dest_bucket,
        "",
    ));
    for (action, params, want) in [
        (
            "create-backup",
            json!({"lable": "x"}),
            "unknown parameter \"lable\"",
        ),
        (
            "create-backup",
            json!({"force": "yes"}),
            "force must be a boolean, not \"yes\"",
        ),
        ("restore", json!({}), "backup-id is required"),
        (
            "verify-backup",
            json!({"backup-id": 7}),
            "backup-id must be a string, not 7",
        ),
        (
            "create-backup",
            json!({"components": ["minio"]}),
            "components.0 must be one of",
        ),
    ] {
        let st = unit.action(action, params);
        let failed = st.failed.unwrap_or_default();
        assert!(failed.contains(want), "{action}: {failed}");
        assert!(
            failed.contains(&format!("Usage: juju run backup-agent/0 {action}")),
            "{failed}"
        );
        assert!(st.results.is_empty());
    }
    assert_eq!(
        listing(&crate::common::s3_store(
            &sb.info.dest,
            &sb.info.dest_bucket,
            ""
        )),
        objects_before,
        "refusals change nothing"
    );

    let st = unit.action("list-backups", json!({}));
    assert_eq!(st.failed, None);
    assert_eq!(st.results["count"], "0");
    let st = unit.action(
        "create-backup",
        json!({"dry-run": true, "components": ["mlmd"]}),
    );
    assert_eq!(st.failed, None, "{:?}", st.results);
    assert_eq!(st.results["dry-run"], "true");
    assert!(st.results["plan"].as_str().unwrap().contains("mlmd"));
    let st = unit.action(
        "create-backup",
        json!({"components": ["mlmd", "mlpipeline"], "label": "hooks"}),
    );
    assert_eq!(st.failed, None, "{:?} {:?}", st.results, st.action_log);
    assert_eq!(st.results["phase"], "completed");
    assert!(
        st.action_log.iter().any(
            |l| l.contains("keys from the object-storage relation to minio (object-storage:5)")
        ),
        "{:?}",
        st.action_log
    );
    assert!(
        st.status_history
            .iter()
            .any(|h| h.status == "maintenance" && h.message == "creating a backup"),
        "{:?}",
        st.status_history
    );
    assert_eq!(st.unit_status.as_ref().unwrap().status, "active");
    let id = st.results["backup-id"].as_str().unwrap().to_string();
    let st = unit.action("describe-backup", json!({"backup-id": id}));
    assert_eq!(st.results["label"], "hooks");
    let st = unit.action(
        "verify-backup",
        json!({"backup-id": "20200101T000000Z-abcdef"}),
    );
    assert!(st.failed.unwrap().contains("20200101T000000Z-abcdef"));
    // A sample re-hashes a share of the bucket's blobs; without read-data it is refused.
    let st = unit.action("verify-backup", json!({"backup-id": id, "sample": "5%"}));
    let failed = st.failed.expect("a sample without read-data is refused");
    assert!(
        failed.contains("sample only applies to read-data"),
        "{failed}"
    );
    let st = unit.action(
        "verify-backup",
        json!({"backup-id": id, "read-data": true, "sample": "101%"}),
    );
    assert!(st.failed.expect("refused").contains("out of range"));
    let st = unit.action(
        "verify-backup",
        json!({"backup-id": id, "read-data": true, "sample": "1/1"}),
    );
    assert_eq!(st.failed, None, "{:?}", st.results);
    assert_eq!(st.results["sample"], "1/1");
    assert_ne!(st.results["blobs-read"], "0", "{:?}", st.results);

    // A failing backup: action-fail with the cause, the failed backup's id in the results.
    unit.set(|s| {
        s.config.insert("mlmd-app".into(), json!("no-such-mlmd"));
    });
    let st = unit.action("create-backup", json!({}));
    let failed = st.failed.expect("failed");
    // In the charm's terms: config, not the CLI's flags.
    assert!(
        failed.contains("no-such-mlmd")
            && failed.contains("`juju config backup-agent mlmd-app=...`")
            && !failed.contains("--"),
        "{failed}"
    );
    unit.set(|s| {
        s.config.remove("mlmd-app");
    });

    // relation-broken: the relation on its way out no longer counts.
    unit.set(|s| s.relations[0].broken = true);
    let (code, st) = {
        let out = run_dispatch(
            &unit.dir,
            "hooks/s3-credentials-relation-broken",
            &unit.state,
            &[(
                "JUJU_RELATION_ID".to_string(),
                "s3-credentials:4".to_string(),
            )],
        )
        .unwrap();
        (out.code, out.state)
    };
    assert_eq!(code, 0);
    assert_eq!(st.unit_status.unwrap().status, "blocked");

    let (code, _) = unit.dispatch("bogus/path");
    assert_eq!(code, 1);
    let st = unit.action("forget-everything", json!({}));
    assert!(st
        .failed
        .unwrap()
        .contains("unknown action \"forget-everything\""));
}
