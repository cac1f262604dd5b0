//! The object store and the catalog against a real S3 server (SeaweedFS on loopback), and the
//! `list-backups` / `describe-backup` commands as an operator runs them.

use std::path::Path;
use std::process::Command;

use backup_agent::repository::{self, Phase, Statefile};
use backup_agent::secret::Secret;
use backup_agent::storage::{S3Settings, Store, StoreError, UriStyle};
use backup_agent_sandbox::s3::{start_weed, stop_weed, WeedServer};
use backup_agent_sandbox::seed::ContentReader;
use sha2::{Digest, Sha256};

const ACCESS: &str = "store-test-access";
const SECRET: &str = "planted-secret-7c1e9d";

/// A SeaweedFS server and the directory it keeps its data in (removed after the server stops).
struct Server(WeedServer, #[allow(dead_code)] tempfile::TempDir);

impl Drop for Server {
    fn drop(&mut self) {
        stop_weed(&self.0);
    }
}

fn server() -> Server {
    let dir = tempfile::tempdir().unwrap();
    let s = start_weed(dir.path(), ACCESS, SECRET, &["backups"], true).expect("weed");
    Server(s, dir)
}

fn settings(s: &Server, bucket: &str, secret: &str) -> S3Settings {
    S3Settings {
        endpoint: format!("http://127.0.0.1:{}", s.0.s3_port),
        bucket: bucket.into(),
        path: "ckf".into(),
        region: "us-east-1".into(),
        uri_style: UriStyle::Path,
        access_key: Secret::new(ACCESS),
        secret_key: Secret::new(secret),
        sse: None,
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Runtime::new().unwrap()
}

#[test]
fn s3_store_streams_lists_and_classifies_errors() {
    // The server starts (and stops) outside the runtime: its start-up check blocks.
    let srv = server();
    runtime().block_on(s3_store_checks(&srv));
}

async fn s3_store_checks(srv: &Server) {
    let store = Store::s3(&settings(srv, "backups", SECRET)).unwrap();

    // A failed verdict leaves the key as it was, for a one-part and for a multipart upload
    // (larger than a part, so parts went up before the verdict came).
    for (key, size) in [
        ("v/one-part.bin", 1000u64),
        ("v/multipart.bin", backup_agent::storage::PART_SIZE * 2 + 7),
    ] {
        let old = ContentReader::new(1, key, size).to_vec();
        store
            .put_bytes(key, &old, "application/octet-stream")
            .await
            .unwrap();
        let mut new = ContentReader::new(2, key, size);
        let refused = store
            .put_object_verified(
                key,
                &mut new,
                Some(size),
                "text/plain",
                &Default::default(),
                async {
                    Err(StoreError::Fatal {
                        op: "test",
                        key: key.into(),
                        detail: "bad hash".into(),
                    })
                },
            )
            .await;
        assert!(refused.unwrap_err().to_string().contains("bad hash"));
        assert_eq!(store.get_bytes(key).await.unwrap(), old, "{key}");
        // And with a good verdict the new bytes, headers and metadata land whole.
        let mut new = ContentReader::new(2, key, size);
        let meta =
            std::collections::BTreeMap::from([("framework".to_string(), "pytorch".to_string())]);
        store
            .put_object_verified(key, &mut new, Some(size), "text/plain", &meta, async {
                Ok(())
            })
            .await
            .unwrap();
        let (got, m) = store.get_with_meta(key).await.unwrap();
        assert_eq!(got, ContentReader::new(2, key, size).to_vec(), "{key}");
        assert_eq!(
            (m.content_type.as_str(), m.metadata),
            ("text/plain", meta),
            "{key}"
        );
    }

    store
        .put_bytes("a/small.json", b"{}", "application/json")
        .await
        .unwrap();
    let big = ContentReader::new(3, "big", 20 << 20).to_vec();
    let mut reader = &big[..];
    store
        .put_stream("a/big.bin", &mut reader, "application/octet-stream")
        .await
        .unwrap();
    let head = store.head("a/big.bin").await.unwrap().unwrap();
    assert_eq!(head.size, 20 << 20);
    assert!(head.etag.is_some());
    assert!(store.head("a/missing").await.unwrap().is_none());
    let listed: Vec<String> = store
        .list("a/")
        .await
        .unwrap()
        .into_iter()
        .map(|o| o.key)
        .collect();
    assert_eq!(
        listed,
        ["a/big.bin", "a/small.json"],
        "keys are relative to the store's path"
    );
    let mut back = vec![];
    assert_eq!(
        store.get_stream("a/big.bin", &mut back).await.unwrap(),
        20 << 20
    );
    assert_eq!(Sha256::digest(&back), Sha256::digest(&big));
    store.delete("a/small.json").await.unwrap();
    assert!(matches!(
        store.get_bytes("a/small.json").await,
        Err(StoreError::NotFound { .. })
    ));

    // The path is honoured: the object really is at ckf/a/big.bin in the bucket.
    let root = Store::s3(&S3Settings {
        path: String::new(),
        ..settings(srv, "backups", SECRET)
    })
    .unwrap();
    assert!(root.head("ckf/a/big.bin").await.unwrap().is_some());

    // Wrong secret: denied, retrying will not help, and the message holds no key.
    let wrong = Store::s3(&settings(srv, "backups", "not-the-secret")).unwrap();
    let err = wrong.put_bytes("x", b"x", "text/plain").await.unwrap_err();
    assert!(matches!(err, StoreError::Denied { .. }), "{err}");
    assert!(!err.is_retryable());
    let text = format!("{err} {err:?}");
    assert!(
        text.contains("check the access and secret keys")
            && !text.contains("not-the-secret")
            && !text.contains(SECRET),
        "{text}"
    );

    // A bucket that does not exist.
    let nob = Store::s3(&settings(srv, "no-such-bucket", SECRET)).unwrap();
    let err = nob.list("").await.unwrap_err();
    assert!(matches!(err, StoreError::NoBucket { .. }), "{err}");

    // Nothing listening: transient.
    let port = backup_agent_sandbox::s3::free_port().unwrap();
    let down = Store::s3(&S3Settings {
        endpoint: format!("http://127.0.0.1:{port}"),
        ..settings(srv, "backups", SECRET)
    })
    .unwrap();
    let err = down.get_bytes("x").await.unwrap_err();
    assert!(err.is_retryable(), "{err}");

    assert!(Store::s3(&S3Settings {
        endpoint: "s3.example.com".into(),
        ..settings(srv, "backups", SECRET)
    })
    .is_err());
}

fn statefile(id: &str, phase: Phase, label: &str) -> Statefile {
    let text = format!(
        r#"{{"schema-version": 1, "backup-id": "{id}", "label": "{label}", "request": "manual", "phase": "{}",
            "started-at": "2026-11-23T06:00:00Z", "finished-at": "2026-11-23T06:01:35Z", "agent-version": "0.1.0",
            "model": "kubeflow", "requested": ["kfp-db", "katib-db", "mlmd", "mlpipeline"],
            "components": {{"mysql": [{{"app": "kfp-db", "unit": "kfp-db/1", "backup-id": "2026-11-23T06:00:10Z", "location": "backups/mysql"}}]}}}}"#,
        phase.as_str()
    );
    Statefile::parse("fixture", text.as_bytes()).unwrap()
}

fn agent(args: &[&str], env: &[(&str, String)]) -> (i32, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_backup-agent"));
    cmd.args(args);
    for k in [
        "BACKUP_AGENT_S3_ENDPOINT",
        "BACKUP_AGENT_S3_BUCKET",
        "BACKUP_AGENT_S3_PATH",
        "BACKUP_AGENT_S3_ACCESS_KEY",
        "BACKUP_AGENT_S3_SECRET_KEY",
        "BACKUP_AGENT_DESTINATION_DIR",
    ] {
        cmd.env_remove(k);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn list_and_describe_backups_from_statefiles_alone() {
    let srv = server();
    runtime().block_on(list_and_describe_checks(&srv));
}

async fn list_and_describe_checks(srv: &Server) {
    let store = Store::s3(&settings(srv, "backups", SECRET)).unwrap();
    let a = statefile("20261123T060000Z-0a1b2c", Phase::Completed, "nightly");
    let b = statefile("20261124T060000Z-3d4e5f", Phase::Failed, "");
    for s in [&a, &b] {
        store
            .put_bytes(
                &repository::statefile_key(&s.backup_id),
                &s.to_json(),
                "application/json",
            )
            .await
            .unwrap();
    }
    store
        .put_bytes(
            &repository::statefile_key("20261125T060000Z-999999"),
            b"{\"schema-version\": 1, oops",
            "application/json",
        )
        .await
        .unwrap();

    let env = vec![
        (
            "BACKUP_AGENT_S3_ENDPOINT",
            format!("http://127.0.0.1:{}", srv.0.s3_port),
        ),
        ("BACKUP_AGENT_S3_BUCKET", "backups".to_string()),
        ("BACKUP_AGENT_S3_PATH", "ckf".to_string()),
        ("BACKUP_AGENT_S3_ACCESS_KEY", ACCESS.to_string()),
        ("BACKUP_AGENT_S3_SECRET_KEY", SECRET.to_string()),
    ];
    let (code, out, err) = agent(&["list-backups"], &env);
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 4, "{out}");
    assert!(
        lines[1].starts_with("20261123T060000Z-0a1b2c")
            && lines[1].contains("completed")
            && lines[1].contains("nightly")
    );
    assert!(lines[2].contains("failed"));
    assert!(lines[3].contains("unreadable"));
    assert!(
        err.contains("warning: 20261125T060000Z-999999") && err.contains("not a statefile"),
        "{err}"
    );

    let (code, out, _) = agent(&["list-backups", "--output", "json"], &env);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v[0]["backup-id"], "20261123T060000Z-0a1b2c");
    assert_eq!(v[2]["phase"], "unreadable");

    let (code, out, _) = agent(
        &[
            "describe-backup",
            "20261123T060000Z-0a1b2c",
            "--output",
            "json",
        ],
        &env,
    );
    assert_eq!(code, 0);
    let mut back: Statefile = serde_json::from_str(&out).unwrap();
    assert_eq!(back.checksum_ok(), Some(true));
    back.checksum = None;
    assert_eq!(back, a);
    let (code, out, _) = agent(&["describe-backup", "20261123T060000Z-0a1b2c"], &env);
    assert_eq!(code, 0);
    assert!(
        out.contains("phase: completed") && out.contains("unit: kfp-db/1"),
        "{out}"
    );

    // Bad input: a clear message, exit 1.
    let (code, _, err) = agent(&["describe-backup", "../../etc/passwd"], &env);
    assert_eq!(code, 2, "refused as a usage error, before anything runs");
    assert!(err.contains("is not a backup id"), "{err}");
    let (code, _, err) = agent(&["describe-backup", "20200101T000000Z-000000"], &env);
    assert_eq!(code, 1);
    assert!(
        err.contains("no backup 20200101T000000Z-000000") && err.contains("list-backups"),
        "{err}"
    );
    let (code, _, err) = agent(&["list-backups"], &[]);
    assert_eq!(code, 1);
    assert!(err.contains("no backup destination"), "{err}");
    let mut wrong = env.clone();
    wrong[4].1 = "wrong-secret-planted-4242".into();
    let (code, out, err) = agent(&["list-backups"], &wrong);
    assert_eq!(code, 1);
    assert!(err.contains("access denied"), "{err}");
    for text in [&out, &err] {
        assert!(!text.contains("wrong-secret-planted-4242") && !text.contains(SECRET));
    }

    // The same repository layout in a local directory.
    let dir = tempfile::tempdir().unwrap();
    let local = Store::local(dir.path());
    local
        .put_bytes(
            &repository::statefile_key(&a.backup_id),
            &a.to_json(),
            "application/json",
        )
        .await
        .unwrap();
    let (code, out, _) = agent(
        &[
            "list-backups",
            "--destination-dir",
            dir.path().to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(code, 0);
    assert!(out.contains("20261123T060000Z-0a1b2c"));
    assert!(Path::new(
        &dir.path()
            .join("backup-agent/backups/20261123T060000Z-0a1b2c/statefile.json")
    )
    .is_file());
}
