//! The bad-input table (docs/RELIABILITY.md): one test per row. Each gives backup-agent one
//! wrong thing and checks that it is refused with a message naming what was wrong (and, for
//! the CLI, a non-zero exit and a repository left byte for byte as it was).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use crate::common::{cli, rt};
use backup_agent::repository::{self, Statefile};
use backup_agent::storage::{self, Store};

const ID: &str = "20261123T060000Z-0a1b2c";

/// A local repository holding one completed backup (statefile, manifest, MLMD dump).
fn repo() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let manifest = crate::common::manifest_bytes(&[]);
    let text = format!(
        r#"{{"schema-version": 1, "backup-id": "{ID}", "label": "fixture", "request": "manual", "phase": "completed",
            "started-at": "2026-11-23T06:00:00Z", "finished-at": "2026-11-23T06:01:35Z", "agent-version": "0.1.0",
            "model": "kubeflow", "requested": ["mlpipeline"],
            "components": {{"mlpipeline": {{"manifest-key": "{mk}", "manifest-sha256": "{sha}", "objects": 0, "bytes": 0,
                "new-bytes": 0, "new-objects": 0}}}}}}"#,
        mk = repository::manifest_key(ID),
        sha = sha(&manifest),
    );
    let sf = Statefile::parse("fixture", text.as_bytes()).unwrap();
    let store = Store::local(dir.path());
    rt().block_on(async {
        store
            .put_bytes(&repository::manifest_key(ID), &manifest, "application/zstd")
            .await
            .unwrap();
        repository::save(&store, &sf).await.unwrap();
    });
    dir
}

fn sha(b: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(b))
}

/// Every file under `dir` with its bytes: "nothing changed" is this map staying equal.
fn tree(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                todo.push(p);
            } else {
                out.insert(p.clone(), std::fs::read(&p).unwrap());
            }
        }
    }
    out
}

/// `args` against the fixture repository is refused naming `needle`, and the repository is
/// left as it was (but for the outcome a verification records in the statefile's history).
fn refused_in(repo: &Path, args: &[&str], env: &[(&str, &str)], needle: &str) {
    let records = args.first() == Some(&"verify-backup");
    let tree = |d: &Path| {
        let mut t = tree(d);
        if records {
            t.retain(|p, _| !p.ends_with("statefile.json"));
        }
        t
    };
    let before = tree(repo);
    let (code, out, err) = cli(args, env);
    assert_ne!(code, 0, "refused: {args:?}\n{out}\n{err}");
    // A verification's problems are its report (stdout); other refusals are on stderr.
    assert!(
        err.contains(needle) || out.contains(needle),
        "the message names {needle:?}: {args:?}\n{out}\n{err}"
    );
    assert!(tree(repo) == before, "nothing changed: {args:?}");
}

fn refused(args: &[&str], needle: &str) {
    let r = repo();
    let d = r.path().to_str().unwrap();
    let mut all: Vec<&str> = args.to_vec();
    all.extend(["--destination-dir", d]);
    refused_in(r.path(), &all, &[], needle);
}

/// The fixture's statefile, edited by `f` and written back as raw bytes.
fn with_statefile(f: impl FnOnce(&mut serde_json::Value)) -> tempfile::TempDir {
    let r = repo();
    let p = r.path().join(repository::statefile_key(ID));
    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
    f(&mut v);
    std::fs::write(&p, serde_json::to_vec(&v).unwrap()).unwrap();
    r
}

const S3_KEYS: [(&str, &str); 2] = [
    ("BACKUP_AGENT_S3_ACCESS_KEY", "a"),
    ("BACKUP_AGENT_S3_SECRET_KEY", "b"),
];

fn s3_refused(args: &[&str], needle: &str) {
    let r = repo();
    refused_in(r.path(), args, &S3_KEYS, needle);
}

fn s3_bag(extra: &[(&str, &str)]) -> BTreeMap<String, String> {
    let mut bag: BTreeMap<String, String> = [
        ("bucket", "backups"),
        ("endpoint", "https://s3.example.com"),
        ("access-key", "AK"),
        ("secret-key", "SK"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    for (k, v) in extra {
        if v.is_empty() {
            bag.remove(*k);
        } else {
            bag.insert(k.to_string(), v.to_string());
        }
    }
    bag
}

fn s3_relation_refused(extra: &[(&str, &str)], needle: &str) {
    let e =
        backup_agent::charm::relations::s3_destination("s3-credentials:4", &s3_bag(extra), None)
            .expect_err("refused");
    assert!(e.contains(needle), "names {needle:?}: {e}");
    assert!(!e.contains("SK"), "no key in the message: {e}");
}

// ---- Statefiles and manifests ----

#[test]
fn statefile_not_json() {
    let r = repo();
    let p = r.path().join(repository::statefile_key(ID));
    std::fs::write(&p, b"{\"schema-version\": 1, \"backup-id\": ").unwrap();
    let d = r.path().to_str().unwrap();
    refused_in(
        r.path(),
        &["describe-backup", ID, "--destination-dir", d],
        &[],
        "statefile.json",
    );
    refused_in(
        r.path(),
        &["verify-backup", ID, "--destination-dir", d],
        &[],
        "statefile.json",
    );
}

#[test]
fn statefile_of_an_unknown_schema_version() {
    let r = with_statefile(|v| v["schema-version"] = 9.into());
    let d = r.path().to_str().unwrap();
    refused_in(
        r.path(),
        &["describe-backup", ID, "--destination-dir", d],
        &[],
        "schema version 9 is newer than this backup-agent understands",
    );
}

#[test]
fn statefile_edited_by_hand() {
    let r = with_statefile(|v| v["label"] = "edited".into());
    let d = r.path().to_str().unwrap();
    refused_in(
        r.path(),
        &["verify-backup", ID, "--destination-dir", d],
        &[],
        "checksum",
    );
}

#[test]
fn manifest_tampered() {
    let r = repo();
    let p = r.path().join(repository::manifest_key(ID));
    let mut bytes = std::fs::read(&p).unwrap();
    bytes.push(0);
    std::fs::write(&p, bytes).unwrap();
    let d = r.path().to_str().unwrap();
    refused_in(
        r.path(),
        &["verify-backup", ID, "--destination-dir", d],
        &[],
        &repository::manifest_key(ID),
    );
}

#[test]
fn manifest_naming_keys_that_escape() {
    for key in ["../../etc/passwd", "/etc/passwd", "a/./b", "nul\0byte"] {
        let line = serde_json::json!({"key": key, "size": 1, "etag": null,
            "sha256": "00".repeat(32), "content-type": "text/plain"});
        let bytes = zstd::encode_all(format!("{line}\n").as_bytes(), 3).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let store = Store::local(dir.path());
        let e = rt()
            .block_on(async {
                store
                    .put_bytes("m", &bytes, "application/zstd")
                    .await
                    .unwrap();
                crate::common::read_manifest(&store, "m").await
            })
            .expect_err(key)
            .to_string();
        assert!(
            e.contains(&format!("{key:?}")) || e.contains(key),
            "{key:?}: {e}"
        );
    }
}

// ---- Backup ids ----

#[test]
fn backup_ids_with_path_characters() {
    for id in [
        "../../etc/passwd",
        "20261123T060000Z-0a1b2c/../x",
        "/abs",
        "a\\b",
    ] {
        refused(&["describe-backup", id], "backup id");
        refused(&["verify-backup", id], "backup id");
        refused(&["delete-backup", id, "--yes"], "backup id");
    }
    let out = tempfile::tempdir().unwrap();
    let target = out.path().join("d");
    refused(
        &["download", "../../etc", target.to_str().unwrap()],
        "backup id",
    );
    assert!(!target.exists(), "no directory made");
}

#[test]
fn verify_samples_that_make_no_sense() {
    refused(&["verify-backup", ID, "--sample", "5%"], "--read-data");
    for (sample, needle) in [
        ("0%", "out of range"),
        ("150%", "out of range"),
        ("0/10", "1 ≤ n ≤ t"),
        ("11/10", "1 ≤ n ≤ t"),
        ("half", "neither a share nor a slice"),
    ] {
        refused(
            &["verify-backup", ID, "--read-data", "--sample", sample],
            needle,
        );
    }
}

#[test]
fn download_paths_that_would_escape() {
    for key in ["../x", "/etc/passwd", "a/../../b", "nul\0x"] {
        let e = backup_agent::commands::download::local_path(Path::new("/tmp/out"), key)
            .expect_err(key);
        assert!(!e.is_empty());
    }
    assert_eq!(
        backup_agent::commands::download::local_path(Path::new("/tmp/out"), "a/b.txt").unwrap(),
        Path::new("/tmp/out/a/b.txt")
    );
}

// ---- Destination settings ----

#[test]
fn no_destination_at_all() {
    let r = repo();
    refused_in(r.path(), &["list-backups"], &[], "no backup destination");
}

#[test]
fn destination_dir_that_is_not_a_directory() {
    let r = repo();
    refused_in(
        r.path(),
        &["list-backups", "--destination-dir", "/nonexistent/backups"],
        &[],
        "/nonexistent/backups: not a directory",
    );
}

#[test]
fn endpoint_without_a_scheme() {
    s3_refused(
        &[
            "list-backups",
            "--s3-endpoint",
            "s3.example.com",
            "--s3-bucket",
            "b",
        ],
        "must start with http:// or https://",
    );
}

#[test]
fn uri_style_unknown() {
    s3_refused(
        &[
            "list-backups",
            "--s3-endpoint",
            "http://127.0.0.1:9",
            "--s3-bucket",
            "b",
            "--s3-uri-style",
            "sideways",
        ],
        "invalid value 'sideways'",
    );
    s3_relation_refused(&[("s3-uri-style", "sideways")], "is not path, host or auto");
}

#[test]
fn server_side_encryption_unknown() {
    s3_refused(
        &[
            "list-backups",
            "--s3-endpoint",
            "http://127.0.0.1:9",
            "--s3-bucket",
            "b",
            "--s3-sse",
            "rot13",
        ],
        "is not AES256 (SSE-S3) or aws:kms (SSE-KMS)",
    );
    s3_relation_refused(&[("attributes", "[\"no colon here\"]")], "has no `:`");
    s3_relation_refused(&[("attributes", "not json")], "not a JSON list");
}

#[test]
fn ca_chain_that_is_not_a_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("ca.pem");
    std::fs::write(&garbage, "this is not a certificate\n").unwrap();
    let g = garbage.to_str().unwrap();
    let args = |file: &str| -> Vec<String> {
        [
            "list-backups",
            "--s3-endpoint",
            "https://127.0.0.1:9",
            "--s3-bucket",
            "b",
            "--s3-tls-ca-chain",
            file,
        ]
        .map(String::from)
        .to_vec()
    };
    let a = args(g);
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    s3_refused(&a, "no `-----BEGIN CERTIFICATE-----`");
    let a = args("/nonexistent/ca.pem");
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    s3_refused(&a, "/nonexistent/ca.pem");
    s3_relation_refused(&[("tls-ca-chain", "[\"garbage\"]")], "tls-ca-chain");
    s3_relation_refused(&[("tls-ca-chain", "-----BEGIN")], "not a JSON list");
}

// ---- Relation data ----

#[test]
fn relation_data_yaml_malformed() {
    let bag: BTreeMap<String, String> =
        [("data".to_string(), "access-key: [unclosed".to_string())].into();
    let e = backup_agent::juju::ObjectStorage::from_relation_data(&bag).unwrap_err();
    assert!(e.contains("is not valid YAML"), "{e}");
}

#[test]
fn relation_data_missing_keys() {
    let bag: BTreeMap<String, String> = [(
        "data".to_string(),
        "access-key: minio\nport: 9000\nnamespace: kubeflow\nservice: minio\n".to_string(),
    )]
    .into();
    let e = backup_agent::juju::ObjectStorage::from_relation_data(&bag).unwrap_err();
    assert!(e.contains("no `secret-key`"), "{e}");
    s3_relation_refused(&[("secret-key", "")], "no `secret-key`");
    s3_relation_refused(&[("bucket", "")], "no `bucket`");
    s3_relation_refused(&[("endpoint", "ftp://x")], "is not an http(s) URL");
}

// ---- Schedules, retention, components, parameters ----

#[test]
fn cron_invalid() {
    for bad in ["61 * * * *", "every night", "* * *"] {
        refused(
            &["serve", "--schedule", bad, "--listen", "127.0.0.1:0"],
            "schedule",
        );
    }
}

#[test]
fn retention_invalid() {
    refused(
        &["prune", "--retention", "keep-dayly=7"],
        "unknown retention rule \"keep-dayly\"",
    );
    refused(&["prune", "--keep-daily", "0"], "--keep-daily");
    refused(&["prune", "--keep-within", "soon"], "keep-within");
}

#[test]
fn components_unknown() {
    refused(&["create-backup", "--components", "postgres"], "postgres");
    refused(&["restore", ID, "--components", "redis"], "redis");
}

#[test]
fn tuning_out_of_range() {
    refused(&["create-backup", "--transfers", "0"], "--transfers");
    refused(&["create-backup", "--checkers", "100000"], "--checkers");
    refused(&["create-backup", "--bwlimit", "fast"], "--bwlimit");
    refused(
        &["create-backup", "--scale-timeout", "forever"],
        "--scale-timeout",
    );
}

#[test]
fn action_parameters_invalid() {
    use backup_agent::charm::params;
    let cases: [(&str, serde_json::Value, &str); 4] = [
        ("restore", serde_json::json!({}), "backup-id is required"),
        ("restore", serde_json::json!({"backup-id": 7}), "backup-id"),
        (
            "create-backup",
            serde_json::json!({"components": ["minio"]}),
            "minio",
        ),
        (
            "create-backup",
            serde_json::json!({"colour": "red"}),
            "colour",
        ),
    ];
    for (action, v, needle) in cases {
        let map = v.as_object().unwrap().clone();
        let e = match action {
            "restore" => params::parse::<params::Restore>(action, &map).map(|_| ()),
            _ => params::parse::<params::CreateBackup>(action, &map).map(|_| ()),
        }
        .expect_err(needle);
        assert!(e.contains(needle), "{action} {v}: {e}");
    }
}

// ---- Object keys and sizes ----

#[test]
fn object_keys_that_no_store_may_take() {
    let long = "k".repeat(1025);
    for key in [
        "",
        "/abs",
        "a/../b",
        "..",
        "./a",
        "nul\0byte",
        long.as_str(),
    ] {
        let e = storage::check_key(key).expect_err(key);
        assert!(!e.to_string().is_empty());
        let local = Store::local("/nonexistent");
        let got = rt().block_on(local.get_bytes(key));
        assert!(got.is_err(), "{key:?} refused before any I/O");
    }
    // What S3 allows stays allowed: spaces, unicode, `+`, `%`, `=`, 1024 bytes.
    for key in ["a b/ü+%=.txt", &"k".repeat(1024)] {
        storage::check_key(key).unwrap();
    }
}

#[test]
fn objects_over_the_single_request_limit_go_multipart() {
    const GIB: u64 = 1 << 30;
    for size in [5 * GIB + 1, 6 * GIB, 50 * GIB, 5 * 1024 * GIB] {
        let part = storage::part_size(Some(size));
        assert!(part < size, "{size}: multipart, not one PUT");
        assert!(
            size.div_ceil(part) <= 10_000,
            "{size}: within S3's 10,000 parts"
        );
        assert!(part <= 5 * GIB, "{size}: parts within S3's 5 GiB");
    }
    assert_eq!(
        storage::part_size(Some(0)),
        storage::PART_SIZE,
        "zero bytes: one small PUT"
    );
}

#[test]
fn zero_byte_object_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::local(dir.path());
    rt().block_on(async {
        s.put_bytes("empty", b"", "text/plain").await.unwrap();
        assert_eq!(s.get_bytes("empty").await.unwrap(), b"");
        let listed: HashMap<String, u64> = s
            .list("")
            .await
            .unwrap()
            .into_iter()
            .map(|o| (o.key, o.size))
            .collect();
        assert_eq!(listed["empty"], 0);
    });
}
