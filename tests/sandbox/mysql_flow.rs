//! The mysql-k8s behaviours that break a naive agent, against the simulator that now has them
//! (interfaces.md section 2): a deployment whose s3-integrator has no `path`, the block a
//! restore leaves until the S3 settings change, the repository claim of the newer backups
//! library, and an older backup whose mysql part lives under a path the app no longer uses.

use crate::common::{agent, completed_ids, juju, juju_ok, rt, s3_store, sandbox_with, scales};
use backup_agent_sandbox::Sandbox;

/// A backup through the CLI that must complete: its JSON output.
fn backs_up(sb: &Sandbox, extra: &[&str]) -> serde_json::Value {
    let mut args = vec!["create-backup", "--output", "json"];
    args.extend_from_slice(extra);
    let (code, out, err) = agent(sb, &args, &[]);
    assert_eq!(code, 0, "{out}\n{err}");
    serde_json::from_str(&out).unwrap()
}

/// `juju run UNIT ACTION ... --format=json`: (exit code, the task's message or results).
fn run_action(sb: &Sandbox, unit: &str, action: &str, params: &[&str]) -> (i32, serde_json::Value) {
    let mut args = vec!["run", unit, action];
    args.extend_from_slice(params);
    args.extend(["--format=json", "--wait=2m"]);
    let (code, out, err) = juju(sb, &args);
    let v: serde_json::Value =
        serde_json::from_str(&out).unwrap_or_else(|_| panic!("{out}\n{err}"));
    (code, v[unit].clone())
}

fn app_status(sb: &Sandbox, app: &str) -> (String, String) {
    let v: serde_json::Value =
        serde_json::from_str(&juju_ok(sb, &["status", "--format=json"])).unwrap();
    let st = &v["applications"][app]["application-status"];
    (
        st["current"].as_str().unwrap_or_default().to_string(),
        st["message"].as_str().unwrap_or_default().to_string(),
    )
}

/// The keys under `prefix` in the destination bucket that mysql-k8s wrote (not the agent's,
/// under its own path).
fn mysql_keys(sb: &Sandbox, prefix: &str) -> Vec<String> {
    let store = s3_store(&sb.info.dest, &sb.info.dest_bucket, "");
    let agent = format!("{}/", sb.info.agent_path);
    rt().block_on(store.list(prefix))
        .unwrap()
        .into_iter()
        .map(|o| o.key)
        .filter(|k| !k.starts_with(&agent))
        .collect()
}

#[test]
fn an_empty_s3_path_is_refused_before_anything_changes() {
    let sb = sandbox_with(4, |o| o.mysql_path = String::new());

    // The charm, the old way: create-backup writes at the bucket's root, but list-backups
    // (which the agent used to confirm a backup) cannot read it back.
    let (code, task) = run_action(&sb, "kfp-db/1", "create-backup", &[]);
    assert_eq!(code, 0, "{task}");
    let id = task["results"]["backup-id"].as_str().unwrap().to_string();
    assert!(mysql_keys(&sb, "").contains(&format!("{id}.md5")));
    let (code, task) = run_action(&sb, "kfp-db/1", "list-backups", &[]);
    assert_ne!(code, 0);
    assert_eq!(
        task["message"], "Failed to retrieve backup ids from S3",
        "{task}"
    );

    // The agent says so before it changes anything, --force or not.
    let before_scales = scales(&sb);
    let before_keys = mysql_keys(&sb, "");
    for extra in [vec![], vec!["--force"]] {
        let mut args = vec!["create-backup"];
        args.extend(extra);
        let (code, out, err) = agent(&sb, &args, &[]);
        assert_ne!(code, 0, "{out}\n{err}");
        assert!(
            err.contains("kfp-db's s3-integrator (s3-integrator) has no `path`")
                && err.contains("`juju config s3-integrator path=kubeflow/kfp-db`")
                && err.contains("Failed to retrieve backup ids from S3"),
            "{err}"
        );
        assert_eq!(scales(&sb), before_scales, "nothing scaled");
        assert_eq!(mysql_keys(&sb, ""), before_keys, "no backup made");
        assert!(completed_ids(&sb).is_empty());
    }

    // The fix the message names works.
    juju_ok(&sb, &["config", "s3-integrator", "path=kubeflow/dbs"]);
    let v = backs_up(&sb, &[]);
    let mysql = v["statefile"]["components"]["mysql"].as_array().unwrap();
    assert!(mysql
        .iter()
        .all(|m| m["location"] == "ckf-backups/kubeflow/dbs"));
}

#[test]
fn after_a_restore_the_block_the_new_path_and_an_older_backup_under_the_old_one() {
    // The newer backups library: each cluster claims its repository.
    let sb = sandbox_with(6, |o| o.mysql_claims = true);
    let dbs = ["--components", "kfp-db,mlmd,mlpipeline"];

    // kfp-db claimed `mysql` first; katib-db, sharing the path, is refused it, and the agent
    // says why and what to do.
    assert_eq!(
        app_status(&sb, "katib-db"),
        (
            "blocked".into(),
            "S3 repository claimed by another cluster".into()
        )
    );
    let claim = s3_store(&sb.info.dest, &sb.info.dest_bucket, "mysql");
    let claimed = rt()
        .block_on(claim.get_bytes("group_replication_id.txt"))
        .unwrap();
    assert!(!claimed.is_empty());
    let (code, _, err) = agent(&sb, &["create-backup"], &[]);
    assert_ne!(code, 0);
    assert!(
        err.contains("katib-db is blocked (\"S3 repository claimed by another cluster\")")
            && err.contains("cannot share one s3-integrator path"),
        "{err}"
    );
    let (code, task) = run_action(&sb, "katib-db/1", "create-backup", &[]);
    assert_ne!(code, 0);
    assert_eq!(task["message"], "S3 relation is blocked for write");

    // A backup, confirmed by its .md5 even when list-backups fails.
    crate::common::fail_next_action(
        &sb,
        "kfp-db",
        "list-backups",
        "Failed to retrieve backup ids from S3",
    );
    let v = backs_up(&sb, &dbs);
    let first = v["statefile"]["backup-id"].as_str().unwrap().to_string();
    assert_eq!(
        v["statefile"]["components"]["mysql"][0]["location"],
        "ckf-backups/mysql"
    );
    // The binlog collector's objects share the prefix; nothing of the agent's trips on them.
    assert!(mysql_keys(&sb, "mysql/binlogs/").len() >= 2);

    // Restore: kfp-db is blocked afterwards, and the next backup of it is refused.
    let (code, out, err) = agent(
        &sb,
        &["restore", &first, "--no-safety-backup", "--output", "json"],
        &[],
    );
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("a new `path` on it"), "{out}");
    assert_eq!(
        app_status(&sb, "kfp-db"),
        (
            "blocked".into(),
            "Move restored cluster to another S3 repository".into()
        )
    );
    let (code, _, err) = agent(&sb, &["create-backup", dbs[0], dbs[1]], &[]);
    assert_ne!(code, 0);
    assert!(
        err.contains("After a restore it must first be given another S3 repository"),
        "{err}"
    );

    // The same path again only swaps the block: the restored cluster is a new one.
    juju_ok(&sb, &["config", "s3-integrator", "storage-class=STANDARD"]);
    assert_eq!(
        app_status(&sb, "kfp-db"),
        (
            "blocked".into(),
            "S3 repository claimed by another cluster".into()
        )
    );
    // A new path: the block clears, and the next backup goes there.
    juju_ok(&sb, &["config", "s3-integrator", "path=mysql-2"]);
    assert_eq!(app_status(&sb, "kfp-db").0, "active");
    let v = backs_up(&sb, &dbs);
    assert_eq!(
        v["statefile"]["components"]["mysql"][0]["location"],
        "ckf-backups/mysql-2"
    );

    // The older backup's mysql part is under `mysql`, where kfp-db no longer reads: the
    // restore is refused, with the steps, before anything changes.
    let before = scales(&sb);
    let (code, _, err) = agent(&sb, &["restore", &first, "--no-safety-backup"], &[]);
    assert_ne!(code, 0);
    assert!(
        err.contains(
            "is at ckf-backups/mysql, but kfp-db now reads its backups from ckf-backups/mysql-2"
        ) && err.contains("`juju config s3-integrator path=mysql`")
            && err.contains("run this restore again"),
        "{err}"
    );
    assert_eq!(scales(&sb), before);

    // The steps, as written: the old path back (the claim there is the old cluster's, so the
    // app is blocked, which a restore does not mind), the restore, then a new path.
    juju_ok(&sb, &["config", "s3-integrator", "path=mysql"]);
    assert_eq!(
        app_status(&sb, "kfp-db"),
        (
            "blocked".into(),
            "S3 repository claimed by another cluster".into()
        )
    );
    let (code, out, err) = agent(&sb, &["restore", &first, "--no-safety-backup"], &[]);
    assert_eq!(code, 0, "{out}\n{err}");
    juju_ok(&sb, &["config", "s3-integrator", "path=mysql-3"]);
    assert_eq!(app_status(&sb, "kfp-db").0, "active");
    let (code, out, err) = agent(&sb, &["create-backup", dbs[0], dbs[1]], &[]);
    assert_eq!(code, 0, "{out}\n{err}");
}

#[test]
fn juju_actions_prints_the_schemas_and_juju_3_passes_unknown_parameters() {
    let sb = sandbox_with(1, |_| {});
    let out = juju_ok(&sb, &["actions", "kfp-db", "--schema", "--format", "json"]);
    let schemas = backup_agent::juju::parse_action_schemas(&out).unwrap();
    assert_eq!(schemas["restore"].params, ["backup-id", "restore-to-time"]);
    assert!(schemas["create-backup"].params.is_empty());
    let raw: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(raw["restore"]["title"], "restore");
    assert_eq!(raw["restore"]["type"], "object");
    assert!(raw["create-backup"].get("additionalProperties").is_none());
    // Juju 3 lets a key the schema lacks through to the charm (Juju 4 refuses it).
    let (code, task) = run_action(&sb, "kfp-db/1", "create-backup", &["colour=red"]);
    assert_eq!(code, 0, "{task}");
    // The agent checks before it sends.
    let cli = backup_agent::juju::JujuCli::with_binary(sb.layout.bin().join("juju"), "kubeflow");
    cli.check_action("kfp-db", "restore", &["backup-id"])
        .unwrap();
    let e = cli
        .check_action("kfp-db", "restore", &["backup-id", "force"])
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("its schema has no parameter \"force\" (it takes: backup-id, restore-to-time)"),
        "{e}"
    );
    let e = cli
        .check_action("kfp-db", "rewind", &[])
        .unwrap_err()
        .to_string();
    assert!(e.contains("the charm has no such action"), "{e}");
}
