//! kfp-db / katib-db capture through mysql-k8s's actions, against the sandbox's juju.

use std::time::{Duration, Instant};

use backup_agent::components::mysql::{self, MysqlError, Waits};
use backup_agent::juju::{JujuCli, JujuError};
use backup_agent_sandbox::Sandbox;

fn sandbox() -> Sandbox {
    crate::common::sandbox(2)
}

#[test]
fn backs_up_on_a_replica_and_names_every_failure() {
    let sb = sandbox();
    let cli = JujuCli::with_binary(sb.layout.bin().join("juju"), "kubeflow");
    let waits = Waits::default();

    // A transient controller error on the first call is retried.
    sb.model()
        .update(|m| {
            m.faults.juju_errors = 1;
            Ok(())
        })
        .unwrap();
    let status = loop {
        match cli.status() {
            Ok(s) => break s,
            Err(e) => assert!(e.is_retryable(), "{e}"),
        }
    };
    sb.model()
        .update(|m| {
            m.faults.juju_errors = 1;
            Ok(())
        })
        .unwrap();
    let cap = mysql::capture(&cli, &status, "kfp-db", &waits).unwrap();
    assert_eq!(cap.unit, "kfp-db/1", "never the primary");
    assert_eq!(cap.location, "ckf-backups/mysql");
    assert!(chrono::NaiveDateTime::parse_from_str(&cap.backup_id, "%Y-%m-%dT%H:%M:%SZ").is_ok());
    let dest = sb.info.dest.target(&sb.info.dest_bucket).open().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(dest.head_object(format!("mysql/{}.md5", cap.backup_id)))
        .expect("the .md5 marker is there");

    // The charm refuses: its message and the task id reach the operator.
    crate::common::fail_next_action(
        &sb,
        "katib-db/1",
        "create-backup",
        "Error backing up the database",
    );
    let err = mysql::capture(&cli, &status, "katib-db", &waits).unwrap_err();
    let text = err.to_string();
    assert!(text.starts_with("katib-db: action create-backup on katib-db/1 failed: Error backing up the database (task "), "{text}");
    assert!(text.contains("juju show-task"), "{text}");

    // Too slow for the wait: a timeout that says how to follow the task.
    sb.model()
        .update(|m| {
            m.faults.action_delay_ms = 3000;
            Ok(())
        })
        .unwrap();
    let short = Waits {
        status: "1m".into(),
        backup: "200ms".into(),
    };
    let err = mysql::capture(&cli, &status, "katib-db", &short).unwrap_err();
    assert!(
        matches!(
            &err,
            MysqlError::Juju {
                source: JujuError::Timeout { .. },
                ..
            }
        ),
        "{err}"
    );
    assert!(
        err.to_string().contains("follow it with `juju show-task"),
        "{err}"
    );
    sb.model()
        .update(|m| {
            m.faults.action_delay_ms = 0;
            Ok(())
        })
        .unwrap();

    // One unit: no replica to back up from.
    assert!(sb
        .juju(&["scale-application", "katib-db", "1"])
        .status
        .success());
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        let s = cli.status().unwrap();
        if s.applications["katib-db"].units.len() == 1 {
            break s;
        }
        assert!(Instant::now() < deadline, "katib-db did not scale down");
        std::thread::sleep(Duration::from_millis(50));
    };
    let err = mysql::capture(&cli, &status, "katib-db", &waits).unwrap_err();
    assert_eq!(err.to_string(), "katib-db has no replica to back up from (only the primary katib-db/0): scale it to 2 units first, as create-backup does");
}
