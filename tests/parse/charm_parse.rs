//! The charm's plain functions: action parameters against actions.yaml, config, the s3 and
//! object-storage databags (both interface versions), the controller secret, the status text.

use std::collections::BTreeMap;

use chrono::{TimeZone, Utc};
use serde_json::{json, Map, Value};

use backup_agent::charm::controller::ControllerAccess;
use backup_agent::charm::hook_tools::{parse_json, result_key, string_map};
use backup_agent::charm::params::{self, CreateBackup, Restore, VerifyBackup};
use backup_agent::charm::relations::{s3_destination, s3_request};
use backup_agent::charm::settings::Settings;
use backup_agent::components::Component;
use backup_agent::repository::Summary;
use backup_agent::secret::Secret;
use backup_agent::storage::UriStyle;

fn obj(v: Value) -> Map<String, Value> {
    v.as_object().cloned().unwrap()
}

fn bag(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn action_parameters_are_checked_against_actions_yaml() {
    let p: CreateBackup = params::parse(
        "create-backup",
        &obj(json!({"label": "nightly", "components": ["mlmd", "kfp-db"], "force": false, "dry-run": true})),
    )
    .unwrap();
    assert_eq!(p.components, Some(vec![Component::Mlmd, Component::KfpDb]));
    assert!(p.dry_run);
    let r: Restore = params::parse(
        "restore",
        &obj(json!({"backup-id": "20261123T080841Z-be2523"})),
    )
    .unwrap();
    assert_eq!(r.backup_id, "20261123T080841Z-be2523");
    assert!(!r.no_safety_backup);

    let refused =
        |action: &str, v: Value| params::parse::<Value>(action, &obj(v)).expect_err("refused");
    let e = refused("create-backup", json!({"lable": "x"}));
    assert!(e.contains("unknown parameter \"lable\""), "{e}");
    assert!(
        e.contains("Usage: juju run backup-agent/0 create-backup"),
        "{e}"
    );
    let e = refused("create-backup", json!({"force": "yes"}));
    assert!(e.contains("force must be a boolean, not \"yes\""), "{e}");
    let e = refused("create-backup", json!({"components": ["mlmd", "minio"]}));
    assert!(e.contains("components.1 must be one of"), "{e}");
    assert!(e.contains("\"minio\""), "{e}");
    let e = refused("restore", json!({"dry-run": true}));
    assert!(e.contains("backup-id is required"), "{e}");
    assert!(e.contains("backup-id=<string>"), "{e}");
    let e = refused("verify-backup", json!({"backup-id": 20261123}));
    assert!(
        e.contains("backup-id must be a string, not 20261123"),
        "{e}"
    );
    let e = refused("list-backups", json!({"all": true}));
    assert!(e.contains("unknown parameter \"all\""), "{e}");
    let v: VerifyBackup = params::parse(
        "verify-backup",
        &obj(json!({"backup-id": "x", "read-data": true})),
    )
    .unwrap();
    assert!(v.read_data);
    let e = refused("forget-everything", json!({}));
    assert!(e.contains("unknown action"), "{e}");
    let e = refused("prune", json!({"keep-daily": 7}));
    assert!(e.contains("unknown parameter \"keep-daily\""), "{e}");
    let e = refused("delete-backup", json!({}));
    assert!(e.contains("backup-id"), "{e}");
}

#[test]
fn every_action_in_actions_yaml_has_a_closed_schema() {
    let actions = params::actions();
    assert_eq!(
        actions,
        [
            "copy-backup",
            "create-backup",
            "delete-backup",
            "describe-backup",
            "list-backups",
            "prune",
            "restore",
            "restore-drill",
            "verify-backup"
        ]
    );
    for a in actions {
        let s = params::schema(&a).unwrap();
        assert_eq!(s["additionalProperties"], json!(false), "{a}");
    }
}

#[test]
fn config_is_read_with_defaults_and_bad_values_name_the_fix() {
    let s = Settings::from_config(
        "backup-agent",
        &obj(json!({
            "model": "kubeflow", "controller-secret": "secret:d0abc", "checkers": 16,
            "transfers": 4, "bwlimit": "50M", "mlmd-container": "", "kfp-db-app": "pipelines-db",
            "drill-schedule": "0 4 * * 0", "drill-sample": "2/10"
        })),
    )
    .unwrap();
    assert_eq!(
        s.drill_schedule.as_ref().map(|d| d.text.as_str()),
        Some("0 4 * * 0")
    );
    assert_eq!(
        s.drill_sample.map(|d| d.to_string()).as_deref(),
        Some("2/10")
    );
    assert_eq!(s.names.kfp_db, "pipelines-db");
    assert_eq!(s.names.katib_db, "katib-db");
    assert_eq!(s.bwlimit, Some(50 * 1024 * 1024));
    assert_eq!(s.mlmd_container, None);
    assert_eq!(s.controller_secret.as_deref(), Some("secret:d0abc"));
    assert_eq!(s.tuning().checkers, 16);

    let e = Settings::from_config("backup-agent", &obj(json!({"checkers": 0}))).unwrap_err();
    assert_eq!(
        e,
        "config checkers=0 is out of range 1-256: juju config backup-agent checkers=8"
    );
    let e = Settings::from_config("backup-agent", &obj(json!({"bwlimit": "fast"}))).unwrap_err();
    assert!(
        e.contains("config bwlimit=\"fast\"") && e.contains("bwlimit=50M"),
        "{e}"
    );
    let e = Settings::from_config(
        "backup-agent",
        &obj(json!({"controller-secret": "mysecret"})),
    )
    .unwrap_err();
    assert!(e.contains("not a secret URI"), "{e}");
}

/// s3-integrator's `tls-ca-chain`: a JSON list of PEM certificates (a real one, made for the
/// tests).
fn ca_chain() -> String {
    serde_json::to_string(&[include_str!("../fixtures/tls/ca.pem")]).unwrap()
}

/// An s3-integrator (track 1) databag as the provider publishes it (interface `s3`, v0).
fn v0_bag() -> BTreeMap<String, String> {
    bag(&[
        ("access-key", "AKIAPLANTED"),
        ("secret-key", "s3cr3tPLANTED"),
        ("bucket", "ckf-backups"),
        ("endpoint", "https://s3.example.internal/"),
        ("path", "/prod/"),
        ("region", "eu-central-1"),
        ("s3-uri-style", "path"),
        ("tls-ca-chain", ca_chain().as_str()),
        ("data", r#"{"bucket": "relation-4"}"#),
    ])
}

#[test]
fn s3_integrator_v0_databag() {
    let d = s3_destination("s3-credentials:4", &v0_bag(), None).unwrap();
    assert_eq!(d.version, "v0");
    assert_eq!(d.settings.endpoint, "https://s3.example.internal");
    assert_eq!(d.settings.bucket, "ckf-backups");
    assert_eq!(d.settings.path, "prod");
    assert_eq!(d.settings.region, "eu-central-1");
    assert_eq!(d.settings.uri_style, UriStyle::Path);
    assert_eq!(d.settings.access_key.expose(), "AKIAPLANTED");
    assert_eq!(d.tls_ca_chain.len(), 1);
    assert!(!format!("{d:?}").contains("s3cr3tPLANTED"));

    let mut b = v0_bag();
    b.remove("secret-key");
    let e = s3_destination("s3-credentials:4", &b, None).unwrap_err();
    assert!(
        e.contains("no `secret-key`") && e.contains("sync-s3-credentials"),
        "{e}"
    );
    let mut b = v0_bag();
    b.insert("tls-ca-chain".into(), "-----BEGIN".into());
    let e = s3_destination("s3-credentials:4", &b, None).unwrap_err();
    assert!(e.contains("tls-ca-chain: not a JSON list"), "{e}");
    // Newer s3-integrators send each element as base64 of the PEM.
    let mut b = v0_bag();
    let b64 = {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(include_str!("../fixtures/tls/ca.pem"))
    };
    b.insert(
        "tls-ca-chain".into(),
        serde_json::to_string(&[b64]).unwrap(),
    );
    let d = s3_destination("s3-credentials:4", &b, None).unwrap();
    assert!(d.tls_ca_chain[0].starts_with("-----BEGIN CERTIFICATE-----"));
    b.insert("tls-ca-chain".into(), r#"["bm90IGEgY2VydA=="]"#.into());
    let e = s3_destination("s3-credentials:4", &b, None).unwrap_err();
    assert!(e.contains("tls-ca-chain: element 1"), "{e}");
    let mut b = v0_bag();
    b.insert("endpoint".into(), "s3.example.internal".into());
    assert!(s3_destination("s3-credentials:4", &b, None)
        .unwrap_err()
        .contains("not an http(s) URL"));
    // AWS defaults: no endpoint, auto style → virtual hosts.
    let b = bag(&[("access-key", "a"), ("secret-key", "b"), ("bucket", "c")]);
    let d = s3_destination("s3-credentials:4", &b, None).unwrap();
    assert_eq!(d.settings.endpoint, "https://s3.amazonaws.com");
    assert_eq!(d.settings.uri_style, UriStyle::Host);
}

#[test]
fn s3_integrator_v1_keys_come_from_the_secret() {
    // Track 2: no keys in the bag, a secret reference instead.
    let b = bag(&[
        ("bucket", "ckf-backups"),
        ("endpoint", "http://10.1.2.3:8333"),
        ("secret-extra", "secret:cs9l2lvmp25c76ukfqp0"),
        ("s3-uri-style", "auto"),
    ]);
    let content = BTreeMap::from([
        ("access-key".to_string(), Secret::new("AKV1")),
        ("secret-key".to_string(), Secret::new("SKV1")),
    ]);
    let d = s3_destination("s3-credentials:9", &b, Some(&content)).unwrap();
    assert_eq!(d.version, "v1");
    assert_eq!(d.settings.secret_key.expose(), "SKV1");
    assert_eq!(d.settings.uri_style, UriStyle::Path);
    let e = s3_destination("s3-credentials:9", &b, Some(&BTreeMap::new())).unwrap_err();
    assert!(
        e.contains("secret s3-integrator shares has no `access-key`"),
        "{e}"
    );
}

#[test]
fn our_side_of_s3_asks_for_a_bucket_and_the_secrets() {
    let r = s3_request("s3-credentials:7");
    assert_eq!(r["bucket"], "relation-7");
    let asked: Vec<String> = serde_json::from_str(&r["requested-secrets"]).unwrap();
    assert_eq!(asked, ["access-key", "secret-key"]);
}

#[test]
fn controller_secret_content() {
    let content = |pairs: &[(&str, &str)]| -> BTreeMap<String, Secret> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), Secret::new(*v)))
            .collect()
    };
    let full = [
        ("controller-uuid", "373da4e5-7ff9-4c6d-8a2e-6a2e2f8c1d11"),
        ("controller-addresses", "10.0.0.1:17070, 10.0.0.2:17070"),
        (
            "ca-cert",
            "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----",
        ),
        ("username", "backup-agent"),
        ("password", "pw-PLANTED"),
    ];
    let a = ControllerAccess::from_secret("secret:x", &content(&full)).unwrap();
    assert_eq!(a.addresses, ["10.0.0.1:17070", "10.0.0.2:17070"]);
    let dir = a.write_juju_data().unwrap();
    use std::os::unix::fs::PermissionsExt;
    let accounts = dir.path().join("accounts.yaml");
    assert_eq!(
        std::fs::metadata(&accounts).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let v: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(&accounts).unwrap()).unwrap();
    assert_eq!(
        v["controllers"]["backup-agent-controller"]["password"],
        "pw-PLANTED"
    );
    let c: serde_yaml::Value = serde_yaml::from_str(
        &std::fs::read_to_string(dir.path().join("controllers.yaml")).unwrap(),
    )
    .unwrap();
    assert_eq!(c["current-controller"], "backup-agent-controller");
    assert_eq!(
        c["controllers"]["backup-agent-controller"]["uuid"],
        "373da4e5-7ff9-4c6d-8a2e-6a2e2f8c1d11"
    );
    assert_eq!(
        c["controllers"]["backup-agent-controller"]["api-endpoints"][1],
        "10.0.0.2:17070"
    );

    let e = ControllerAccess::from_secret("secret:x", &content(&full[..4])).unwrap_err();
    assert!(
        e.contains("has no `password`") && e.contains("Controller access"),
        "{e}"
    );
    let mut bad = full;
    bad[1] = ("controller-addresses", "10.0.0.1");
    let e = ControllerAccess::from_secret("secret:x", &content(&bad)).unwrap_err();
    assert!(e.contains("has no port"), "{e}");
}

#[test]
fn status_names_the_newest_backup_and_a_newer_failure() {
    use backup_agent::repository::Statefile;
    let sf = |id: &str, phase: &str, started: i64| -> Statefile {
        serde_json::from_value(json!({
            "schema-version": 1, "backup-id": id, "request": "manual", "phase": phase,
            "started-at": Utc.timestamp_opt(started, 0).unwrap(),
            "finished-at": Utc.timestamp_opt(started + 60, 0).unwrap(),
            "agent-version": "0.1.0", "model": "kubeflow", "requested": ["mlmd"],
        }))
        .unwrap()
    };
    let now = Utc.timestamp_opt(1_800_000_000, 0).unwrap();
    let s = Summary {
        count: 3,
        newest: Some(sf("20270115T080000Z-aaaaaa", "failed", 1_799_999_000)),
        newest_completed: Some(sf("20270115T060000Z-bbbbbb", "completed", 1_799_990_000)),
    };
    let m = backup_agent::charm::status::describe(&s, "s3://b/p", now);
    assert_eq!(
        m,
        "last backup 20270115T060000Z-bbbbbb 2h ago (3 backups); newer 20270115T080000Z-aaaaaa is failed (describe-backup backup-id=20270115T080000Z-aaaaaa)"
    );
    let empty = backup_agent::charm::status::describe(&Summary::default(), "s3://b/p", now);
    assert_eq!(empty, "ready; no backups yet in s3://b/p");
}

#[test]
fn hook_tool_output_parsing() {
    // `relation-get --format=json - s3-integrator` as Juju prints it.
    let v = parse_json(r#"{"bucket":"b","endpoint":"http://e","port":9000}"#).unwrap();
    let m = string_map(&v);
    assert_eq!(m["port"], "9000");
    assert_eq!(parse_json("\n").unwrap(), Value::Null);
    let e = parse_json("access-key: AKIAPLANTED").unwrap_err();
    assert!(e.contains("not JSON") && !e.contains("PLANTED"), "{e}");
    assert_eq!(result_key("kfp_db Backup ID"), "kfp-db-backup-id");
}
