//! The juju parse functions against recorded real outputs, and against the sandbox's live
//! outputs (so the simulator and the parsers agree on the same contract).

use std::path::PathBuf;

use backup_agent::juju::discovery::{self, AppNames};
use backup_agent::juju::{self, JujuCli, ObjectStorage};
use backup_agent_sandbox::{Sandbox, UpOptions};

fn fixture(name: &str) -> String {
    std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/juju")
            .join(name),
    )
    .unwrap()
}

#[test]
fn status_of_a_kubernetes_model() {
    let st = juju::parse_status(&fixture("status-k8s.json")).unwrap();
    assert_eq!(
        (st.model.name.as_str(), st.model.kind.as_str()),
        ("kubeflow", "caas")
    );
    let db = &st.applications["kfp-db"];
    assert_eq!(
        (db.charm_name(), db.charm_rev, db.scale),
        ("mysql-k8s", Some(180), Some(2))
    );
    assert!(db.units["kfp-db/0"].leader);
    assert!(!db.units["kfp-db/1"].leader, "leader is omitted when false");
    assert_eq!(db.units["kfp-db/1"].workload_status.current, "maintenance");
    assert_eq!(
        db.units["kfp-db/0"].provider_id.as_deref(),
        Some("kfp-db-0")
    );
    // An app scaled to zero has no `units` key at all.
    assert!(st.applications["kfp-metadata-writer"].units.is_empty());
    assert_eq!(st.applications["local-app"].charm_name(), "database");
}

#[test]
fn minio_credentials_from_the_object_storage_relation() {
    let v: serde_json::Value = serde_json::from_str(&fixture("show-unit-kfp-ui.json")).unwrap();
    let bag = juju::relation_app_data(&v, "kfp-ui/0", "object-storage").unwrap();
    assert_eq!(bag["_supported_versions"], "- v1");
    let os = ObjectStorage::from_relation_data(&bag).unwrap();
    assert_eq!(os.access_key, "minio");
    assert_eq!(os.secret_key.expose(), "8D2TWCR3AHFVO7CLKQRXQ7KEB1NGJ1");
    assert_eq!(os.endpoint(), "http://minio.kubeflow:9000");
    assert!(
        !format!("{os:?}").contains("8D2TWCR3"),
        "Debug must not show the secret key"
    );
    assert!(juju::relation_app_data(&v, "kfp-ui/0", "no-such-endpoint").is_none());

    // Malformed or incomplete relation data: an error that names what is wrong.
    let mut bad = bag.clone();
    bad.insert("data".into(), "access-key: [unclosed".into());
    assert!(ObjectStorage::from_relation_data(&bad)
        .unwrap_err()
        .contains("not valid YAML"));
    bad.insert(
        "data".into(),
        "access-key: minio\nnamespace: kubeflow\nservice: minio\n".into(),
    );
    assert_eq!(
        ObjectStorage::from_relation_data(&bad).unwrap_err(),
        "the object-storage relation data has no `secret-key`"
    );
    bad.remove("data");
    assert!(ObjectStorage::from_relation_data(&bad)
        .unwrap_err()
        .contains("no `data` key"));
}

#[test]
fn action_results_tables_and_cluster_status() {
    let ok = juju::parse_run(&fixture("run-create-backup.json"), "kfp-db/1").unwrap();
    assert_eq!(
        (ok.status.as_str(), ok.result_str("backup-id")),
        ("completed", Some("2024-05-01T10:00:00Z"))
    );
    let failed = juju::parse_run(&fixture("run-create-backup-primary.json"), "kfp-db/0").unwrap();
    assert_eq!(failed.status, "failed");
    assert_eq!(
        failed.message,
        "Unit cannot perform backups as it is the cluster primary"
    );
    assert!(juju::parse_run(&fixture("run-create-backup.json"), "kfp-db/0").is_err());

    let rows = juju::parse_backups_table(&fixture("list-backups.txt")).unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(
        (rows[0].id.as_str(), rows[0].status.as_str()),
        ("2024-05-01T10:00:00Z", "finished")
    );
    assert_eq!(rows[1].status, "in progress");
    assert!(juju::parse_backups_table("id | status\n").is_err());

    let cs = juju::parse_run(&fixture("run-get-cluster-status.json"), "mysql/2").unwrap();
    assert_eq!(
        juju::cluster_primary(&cs.results).as_deref(),
        Some("mysql/0")
    );
}

#[test]
fn the_sandbox_outputs_parse_back() {
    let mut opts = UpOptions::new(crate::common::sandbox_exe());
    opts.bucket.small = 4;
    opts.bucket.large = 0;
    let sb = Sandbox::up(&opts).unwrap();
    let cli = JujuCli::with_binary(sb.layout.bin().join("juju"), "kubeflow");

    let (plane, minio) = discovery::discover(&cli, &AppNames::default()).unwrap();
    assert_eq!(plane.model, "kubeflow");
    assert_eq!(plane.apps.len(), 6);
    assert_eq!(minio.secret_key.expose(), sb.info.minio.secret_key);
    assert_eq!(minio.endpoint, "http://minio.kubeflow:9000");
    assert_eq!(minio.service, Some(("minio".into(), 9000)));
    assert!(!serde_json::to_string(&plane)
        .unwrap()
        .contains(&sb.info.minio.secret_key));
    assert_eq!(cli.config_value("minio", "access-key").unwrap(), "minio");

    // The sandbox starts with a replica, kfp-db/1, to back up from.
    let out = cli
        .run(&[
            "run",
            "kfp-db/1",
            "create-backup",
            "--format=json",
            "--wait=1m",
        ])
        .unwrap();
    let task = juju::parse_run(&out, "kfp-db/1").unwrap();
    let id = task.result_str("backup-id").unwrap().to_string();
    let out = cli
        .run(&[
            "run",
            "kfp-db/0",
            "list-backups",
            "--format=json",
            "--wait=1m",
        ])
        .unwrap();
    let rows = juju::parse_backups_table(
        juju::parse_run(&out, "kfp-db/0")
            .unwrap()
            .result_str("backups")
            .unwrap(),
    )
    .unwrap();
    assert!(rows.iter().any(|r| r.id == id && r.status == "finished"));
    let out = cli
        .run(&[
            "run",
            "kfp-db/0",
            "get-cluster-status",
            "--format=json",
            "--wait=1m",
        ])
        .unwrap();
    assert_eq!(
        juju::cluster_primary(&juju::parse_run(&out, "kfp-db/0").unwrap().results).as_deref(),
        Some("kfp-db/0")
    );

    // Errors carry the command, the exit code and juju's message; a bad name is not retryable.
    let err = discovery::discover(
        &cli,
        &AppNames {
            kfp_db: "kfp-database".into(),
            ..AppNames::default()
        },
    )
    .unwrap_err();
    assert!(
        err.to_string()
            .contains("\"kfp-database\" (kfp-db) is not in model \"kubeflow\""),
        "{err}"
    );
    let err = cli.run(&["scale-application", "nope", "1"]).unwrap_err();
    assert_eq!(err.to_string(), "`juju scale-application nope 1 -m kubeflow` exited with code 1: ERROR could not scale application \"nope\": application \"nope\" not found");
    assert!(!err.is_retryable());
    sb.model()
        .update(|m| {
            m.faults.juju_errors = 1;
            Ok(())
        })
        .unwrap();
    let err = cli.status().unwrap_err();
    assert!(err.is_retryable(), "{err}");
    let other = JujuCli::with_binary(sb.layout.bin().join("juju"), "elsewhere");
    assert!(other
        .status()
        .unwrap_err()
        .to_string()
        .contains("model sandbox:admin/elsewhere not found"));
}
