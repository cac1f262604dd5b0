//! `backup-agent create-backup`, the real binary, against the sandbox: a whole backup, the
//! incremental ones after it, refusals, injected failures and SIGTERM, bad input.

use std::time::{Duration, Instant};

use crate::common::{agent, dest_bucket, listing, lock_held, minio, repo, rt, scales, statefiles};
use backup_agent::repository::{self, Phase, Statefile};
use backup_agent::storage::Store;
use backup_agent_sandbox::seed::{bucket_objects, mlmd_counts, BucketSpec};
use backup_agent_sandbox::{Sandbox, UpOptions};
use sha2::{Digest, Sha256};

/// Credentials no output or object may contain.
const PLANTED: [&str; 4] = [
    "planted-minio-access-7f3a9c",
    "planted-minio-secret-91be4d",
    "planted-dest-access-c0ffee",
    "planted-dest-secret-5eed42",
];

fn planted_sandbox(small: usize) -> Sandbox {
    let mut opts = UpOptions::new(crate::common::sandbox_exe());
    opts.bucket = BucketSpec {
        small,
        large: 1,
        large_size: 9 << 20,
        ..BucketSpec::default()
    };
    opts.db_units = 1;
    opts.minio_access_key = PLANTED[0].into();
    opts.minio_secret_key = PLANTED[1].into();
    opts.dest_access_key = PLANTED[2].into();
    opts.dest_secret_key = PLANTED[3].into();
    Sandbox::up(&opts).unwrap()
}

fn small_sandbox() -> Sandbox {
    let mut opts = UpOptions::new(crate::common::sandbox_exe());
    opts.bucket.small = 6;
    opts.bucket.large = 0;
    opts.db_units = 1;
    Sandbox::up(&opts).unwrap()
}

fn completed(sb: &Sandbox) -> usize {
    statefiles(sb)
        .iter()
        .filter(|s| s.phase == Phase::Completed)
        .count()
}

fn manifest(store: &Store, sf: &Statefile) -> Vec<backup_agent::repository::Entry> {
    crate::common::manifest_of(store, sf)
}

fn report(stdout: &str) -> serde_json::Value {
    serde_json::from_str(stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

#[test]
fn full_backup_then_incremental_then_only_what_changed() {
    let sb = planted_sandbox(24);
    let before = scales(&sb);
    let (code, out, err) = agent(&sb, &["create-backup", "-vv", "--label", "first"], &[]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains(" completed in "), "{out}");
    assert_eq!(scales(&sb), before, "every scale is back");
    assert!(!lock_held(&sb), "the lock is released");

    let all = statefiles(&sb);
    assert_eq!(all.len(), 1);
    let sf = &all[0];
    assert_eq!(sf.phase, Phase::Completed);
    assert_eq!(sf.label, "first");
    assert!(sf.errors.is_empty(), "{:?}", sf.errors);
    assert_eq!(
        sf.requested,
        ["kfp-db", "katib-db", "mlmd", "mlpipeline"].map(String::from)
    );
    // The journal names every scale touched, all put back.
    let journal: Vec<(&str, u32, u32, bool)> = sf
        .quiesce
        .iter()
        .map(|r| (r.app.as_str(), r.original, r.changed_to, r.restored))
        .collect();
    assert_eq!(
        journal,
        [
            ("kfp-db", 1, 2, true),
            ("katib-db", 1, 2, true),
            ("kfp-metadata-writer", 1, 0, true)
        ]
    );
    assert_eq!(sf.charms["kfp-db"], "mysql-k8s r180");

    // mysql: one backup per app, on a replica, distinct ids in the shared path, finished.
    let whole = dest_bucket(&sb);
    let apps: Vec<&str> = sf.components.mysql.iter().map(|m| m.app.as_str()).collect();
    assert_eq!(apps, ["kfp-db", "katib-db"]);
    assert_ne!(
        sf.components.mysql[0].backup_id,
        sf.components.mysql[1].backup_id
    );
    for m in &sf.components.mysql {
        assert_ne!(m.unit, format!("{}/0", m.app), "not the primary");
        let meta = rt()
            .block_on(whole.get_bytes(&format!("mysql/{}.metadata", m.backup_id)))
            .unwrap();
        assert!(
            String::from_utf8_lossy(&meta).contains(&format!("Application Name: {}\n", m.app)),
            "each app's backup is its own"
        );
        assert!(rt()
            .block_on(whole.head(&format!("mysql/{}.md5", m.backup_id)))
            .unwrap()
            .is_some());
    }

    // MLMD: checked, with the row counts of the pod's database.
    let mlmd = sf.components.mlmd.as_ref().unwrap();
    assert_eq!(mlmd.integrity_check, "ok");
    assert_eq!(mlmd.container, "mlmd-grpc-server");
    let want: std::collections::BTreeMap<String, i64> = mlmd_counts(&sb.layout.mlmd_db())
        .unwrap()
        .into_iter()
        .collect();
    assert_eq!(mlmd.row_counts, want);
    let store = repo(&sb);
    let spool = tempfile::tempdir().unwrap();
    rt().block_on(backup_agent::components::mlmd::fetch_and_verify(
        &store,
        mlmd,
        &spool.path().join("mlmd.db"),
    ))
    .unwrap();

    // mlpipeline: every seeded object, each blob there with its content hash.
    let spec = BucketSpec {
        small: 24,
        large: 1,
        large_size: 9 << 20,
        ..BucketSpec::default()
    };
    let seeded = bucket_objects(&spec);
    let m1 = manifest(&store, sf);
    assert_eq!(m1.len(), seeded.len());
    for e in &m1 {
        let blob = rt()
            .block_on(backup_agent::components::mlpipeline::packed::read_entry(
                &store, e,
            ))
            .unwrap();
        assert_eq!(hex::encode(Sha256::digest(&blob)), e.sha256, "{}", e.key);
    }

    // No planted credential anywhere: output, logs, any object in the destination bucket.
    let mut haystacks = vec![
        ("stdout".to_string(), out.into_bytes()),
        ("stderr".into(), err.into_bytes()),
    ];
    for (key, _) in listing(&whole) {
        let body = rt().block_on(whole.get_bytes(&key)).unwrap();
        let body = if key.ends_with(".zst") || key.ends_with(".manifest") {
            zstd::decode_all(&body[..]).unwrap()
        } else {
            body
        };
        haystacks.push((key, body));
    }
    for (name, hay) in &haystacks {
        let text = String::from_utf8_lossy(hay);
        for p in PLANTED {
            assert!(!text.contains(p), "{p} leaked into {name}");
        }
    }

    // Nothing changed: no object is read or uploaded again.
    let (code, out, err) = agent(&sb, &["create-backup", "--output", "json"], &[]);
    assert_eq!(code, 0, "{err}");
    let r = report(&out);
    assert_eq!(r["mlpipeline"]["read-objects"], 0, "{r}");
    assert_eq!(r["mlpipeline"]["read-bytes"], 0);
    assert_eq!(r["mlpipeline"]["new-bytes"], 0);
    assert_eq!(r["statefile"]["phase"], "completed");

    // One object rewritten with other bytes of the same size, one deleted.
    let src = minio(&sb);
    let changed = seeded
        .iter()
        .find(|o| o.size > 0 && o.size < 1 << 20)
        .unwrap();
    let gone = seeded.iter().rev().find(|o| o.key != changed.key).unwrap();
    let old = rt().block_on(src.get_bytes(&changed.key)).unwrap();
    let new: Vec<u8> = old.iter().map(|b| b ^ 0x5a).collect();
    assert_eq!(new.len(), old.len());
    rt().block_on(src.put_bytes(&changed.key, &new, changed.content_type))
        .unwrap();
    rt().block_on(src.delete(&gone.key)).unwrap();
    let (code, out, err) = agent(&sb, &["create-backup", "--output", "json"], &[]);
    assert_eq!(code, 0, "{err}");
    let r = report(&out);
    assert_eq!(r["mlpipeline"]["read-objects"], 1, "{r}");
    assert_eq!(r["mlpipeline"]["read-bytes"], old.len() as u64);
    assert_eq!(r["mlpipeline"]["new-objects"], 1);
    let third: Statefile = serde_json::from_value(r["statefile"].clone()).unwrap();
    let m3 = manifest(&store, &third);
    assert!(m3.iter().all(|e| e.key != gone.key));
    let e3 = m3.iter().find(|e| e.key == changed.key).unwrap();
    assert_eq!(e3.sha256, hex::encode(Sha256::digest(&new)));
    // The first backup still has both, byte for byte.
    for key in [&changed.key, &gone.key] {
        let e1 = m1.iter().find(|e| &e.key == key).unwrap();
        let blob = rt()
            .block_on(backup_agent::components::mlpipeline::packed::read_entry(
                &store, e1,
            ))
            .unwrap();
        assert_eq!(hex::encode(Sha256::digest(&blob)), e1.sha256);
    }
    let e1 = m1.iter().find(|e| e.key == changed.key).unwrap();
    assert_eq!(e1.sha256, hex::encode(Sha256::digest(&old)));

    let (code, out, _) = agent(&sb, &["list-backups"], &[]);
    assert_eq!(code, 0);
    assert_eq!(
        out.lines().filter(|l| l.contains(" completed ")).count(),
        3,
        "{out}"
    );
}

#[test]
fn a_running_workflow_stops_it_unless_forced() {
    let sb = small_sandbox();
    let before = scales(&sb);
    sb.model()
        .update(|m| {
            m.k8s.workflows.push(backup_agent_sandbox::k8s::workflow(
                "train-7xk2p",
                "kubeflow-user-example-com",
                "Running",
            ));
            Ok(())
        })
        .unwrap();
    let (code, _, err) = agent(&sb, &["create-backup"], &[]);
    assert_eq!(code, 1);
    assert!(
        err.contains("workflow kubeflow-user-example-com/train-7xk2p (Running)"),
        "{err}"
    );
    assert!(err.contains("--force"), "{err}");
    assert_eq!(scales(&sb), before);
    assert!(listing(&repo(&sb)).is_empty(), "nothing written");

    let (code, out, err) = agent(
        &sb,
        &["create-backup", "--force", "--components", "mlmd"],
        &[],
    );
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("warning: backing up while these run (--force): workflow"),
        "{err}"
    );
    assert!(out.contains("completed"), "{out}");
    assert_eq!(scales(&sb), before);

    // A local directory is a destination too (an NFS mount, an air-gapped site), same layout.
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let no_s3 = [
        ("BACKUP_AGENT_S3_ENDPOINT", ""),
        ("BACKUP_AGENT_S3_BUCKET", ""),
    ];
    let (code, _, err) = agent(
        &sb,
        &[
            "create-backup",
            "--force",
            "--components",
            "mlmd,mlpipeline",
            "--destination-dir",
            d,
        ],
        &no_s3,
    );
    assert_eq!(code, 0, "{err}");
    let local = Store::local(dir.path());
    let rows = rt().block_on(repository::list(&local)).unwrap();
    assert_eq!(rows.len(), 1);
    let (code, out, _) = agent(&sb, &["list-backups", "--destination-dir", d], &no_s3);
    assert_eq!(code, 0);
    assert!(
        out.contains(" completed ") && out.contains("mlmd,mlpipeline"),
        "{out}"
    );
    // Small objects are packed (format v2).
    assert!(dir.path().join("backup-agent/packs").is_dir());
}

/// Each step failing in turn: the cause named, scales back, no backup completed, lock free.
#[test]
fn injected_failures_leave_scales_restored_and_nothing_completed() {
    let sb = small_sandbox();
    let before = scales(&sb);
    let check = |what: &str, code: i32, err: &str, needles: &[&str]| {
        assert_eq!(code, 1, "{what}: {err}");
        for n in needles {
            assert!(err.contains(n), "{what}: {n:?} not in {err}");
        }
        assert_eq!(scales(&sb), before, "{what}: scales");
        assert_eq!(completed(&sb), 0, "{what}: a completed statefile");
        assert!(!lock_held(&sb), "{what}: lock left behind");
    };

    // The mysql-k8s action fails on katib-db's replica.
    crate::common::fail_next_action(
        &sb,
        "katib-db",
        "create-backup",
        "Error backing up the database",
    );
    let (code, _, err) = agent(&sb, &["create-backup"], &[]);
    check(
        "mysql",
        code,
        &err,
        &[
            "katib-db: action create-backup on katib-db/",
            "Error backing up the database",
            "scales put back (kfp-db 1, katib-db 1, kfp-metadata-writer 1)",
        ],
    );
    let failed = statefiles(&sb);
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0].phase, Phase::Failed);
    assert_eq!(failed[0].errors[0].component, "katib-db");
    assert!(failed[0].quiesce.iter().all(|r| r.restored));

    // The MLMD stream is cut on every attempt.
    sb.model()
        .update(|m| {
            m.faults.exec_cut_after_bytes = Some(4096);
            Ok(())
        })
        .unwrap();
    let (code, _, err) = agent(&sb, &["create-backup"], &[]);
    check("mlmd stream", code, &err, &["MLMD", "was cut after"]);
    sb.model()
        .update(|m| {
            m.faults.exec_cut_after_bytes = None;
            Ok(())
        })
        .unwrap();

    // The MLMD pod is gone: found in preflight, before anything changes.
    let n = statefiles(&sb).len();
    let scale_mlmd = |n: usize| {
        assert!(sb
            .juju(&["scale-application", "mlmd", &n.to_string()])
            .status
            .success());
        wait_for(|| {
            sb.model()
                .update(|m| Ok(m.apps["mlmd"].units.len() == n))
                .unwrap()
        });
    };
    scale_mlmd(0);
    let mlmd_gone = scales(&sb);
    let (code, _, err) = agent(&sb, &["create-backup"], &[]);
    assert_eq!(code, 1);
    assert!(
        err.contains("pod mlmd-0 in namespace kubeflow not found"),
        "{err}"
    );
    assert_eq!(statefiles(&sb).len(), n, "preflight writes no statefile");
    assert_eq!(scales(&sb), mlmd_gone);
    scale_mlmd(1);

    // The destination does not answer.
    let port = backup_agent_sandbox::s3::free_port().unwrap().to_string();
    let dead = format!("http://127.0.0.1:{port}");
    let (code, _, err) = agent(
        &sb,
        &["create-backup"],
        &[("BACKUP_AGENT_S3_ENDPOINT", &dead)],
    );
    check(
        "destination",
        code,
        &err,
        &["preflight: destination", &dead],
    );

    // MinIO refuses the keys in the relation data.
    let good = crate::common::set_minio_relation_secret(&sb, "wrong-secret");
    let (code, _, err) = agent(&sb, &["create-backup"], &[]);
    check(
        "minio keys",
        code,
        &err,
        &[
            "access denied",
            "credentials from kfp-ui/0 relation object-storage",
        ],
    );
    assert!(!err.contains("wrong-secret"), "{err}");
    crate::common::set_minio_relation_secret(&sb, &good);

    // Another run holds the lock; an expired lock is taken over.
    let store = repo(&sb);
    let lease = |expires: chrono::DateTime<chrono::Utc>| {
        let l = backup_agent::repository::lock::LeaseInfo {
            operation: "create-backup 20250101T000000Z-abcdef".into(),
            host: "other-host".into(),
            pid: 4242,
            started_at: chrono::Utc::now(),
            expires_at: expires,
            nonce: "0".into(),
            boot_id: None,
            pid_namespace: None,
            pid_start: None,
        };
        rt().block_on(store.put_bytes(
            &repository::lock_key(),
            &serde_json::to_vec(&l).unwrap(),
            "application/json",
        ))
        .unwrap();
    };
    lease(chrono::Utc::now() + chrono::Duration::minutes(5));
    let (code, _, err) = agent(&sb, &["create-backup", "--components", "mlmd"], &[]);
    assert_eq!(code, 1);
    assert!(
        err.contains("another run holds the repository lock"),
        "{err}"
    );
    assert!(err.contains("other-host (pid 4242)"), "{err}");
    assert!(err.contains("--break-lock"), "{err}");
    assert_eq!(scales(&sb), before);
    // The operator knows better: --break-lock takes it over.
    let (code, _, err) = agent(
        &sb,
        &["create-backup", "--components", "mlmd", "--break-lock"],
        &[],
    );
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("breaking the repository lock"), "{err}");
    assert!(!lock_held(&sb));
    lease(chrono::Utc::now() - chrono::Duration::minutes(1));
    let (code, _, err) = agent(&sb, &["create-backup", "--components", "mlmd"], &[]);
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("taking over the expired repository lock"),
        "{err}"
    );
    assert!(!lock_held(&sb));
}

fn wait_for(mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !f() {
        assert!(Instant::now() < deadline, "condition not reached in 20s");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn sigterm_mid_copy_puts_scales_back_and_records_a_failure() {
    let mut opts = UpOptions::new(crate::common::sandbox_exe());
    opts.bucket = BucketSpec {
        small: 4,
        large: 3,
        large_size: 12 << 20,
        ..BucketSpec::default()
    };
    opts.db_units = 1;
    let sb = Sandbox::up(&opts).unwrap();
    let before = scales(&sb);
    let store = repo(&sb);
    let child = sb
        .command(env!("CARGO_BIN_EXE_backup-agent"))
        .args(["create-backup", "--bwlimit", "4M", "--transfers", "1"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Mid-copy: the statefile says capturing and the first large object's pack has arrived.
    wait_for(|| {
        let capturing = rt()
            .block_on(repository::list(&store))
            .unwrap()
            .iter()
            .any(|l| matches!(l, repository::Listed::Backup(s) if s.phase == Phase::Capturing));
        let packs = rt()
            .block_on(store.list(&format!("{}/packs/", repository::REPO)))
            .unwrap();
        capturing && !packs.is_empty()
    });
    assert_ne!(scales(&sb), before, "quiesced while copying");
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let started = Instant::now();
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "stopped promptly"
    );
    assert!(err.contains("interrupted by SIGTERM"), "{err}");
    assert_eq!(scales(&sb), before);
    assert!(!lock_held(&sb));
    let all = statefiles(&sb);
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].phase, Phase::Failed);
    assert_eq!(all[0].errors[0].message, "interrupted by SIGTERM");
    assert!(all[0].components.mlpipeline.is_none());

    // And the next run works.
    let (code, _, err) = agent(
        &sb,
        &["create-backup", "--components", "mlmd,mlpipeline"],
        &[],
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(completed(&sb), 1);
}

#[test]
fn bad_input_is_named_and_changes_nothing() {
    let sb = small_sandbox();
    let before = scales(&sb);
    let dest_before = listing(&dest_bucket(&sb));
    type Case<'a> = (&'a str, Vec<&'a str>, Vec<(&'a str, &'a str)>, &'a str);
    let cases: Vec<Case> = vec![
        (
            "unknown model",
            vec!["create-backup", "-m", "nope"],
            vec![],
            "model sandbox:admin/nope not found",
        ),
        (
            "no destination",
            vec!["create-backup"],
            vec![("BACKUP_AGENT_S3_ENDPOINT", "")],
            "no backup destination: set --s3-endpoint and --s3-bucket",
        ),
        (
            "no bucket",
            vec!["create-backup"],
            vec![("BACKUP_AGENT_S3_BUCKET", "no-such-bucket")],
            "bucket \"no-such-bucket\" does not exist",
        ),
        (
            "unknown component",
            vec!["create-backup", "--components", "kfp-db,postgres"],
            vec![],
            "invalid value 'postgres' for '--components",
        ),
        (
            "bad rate",
            vec!["create-backup", "--bwlimit", "fast"],
            vec![],
            "\"fast\" is not a rate",
        ),
        (
            "renamed app",
            vec!["create-backup", "--kfp-db-app", "pipelines-db"],
            vec![],
            "application \"pipelines-db\" (kfp-db) is not in model \"kubeflow\"",
        ),
    ];
    for (what, args, env, needle) in cases {
        let (code, _, err) = agent(&sb, &args, &env);
        assert_ne!(code, 0, "{what}");
        assert!(err.contains(needle), "{what}: {needle:?} not in {err}");
    }

    // Relation data that is there but not YAML is an error, not a reason to look elsewhere.
    let good = crate::common::with_minio_data(&sb, |d| {
        std::mem::replace(d, "access-key: [unclosed".into())
    });
    let (code, _, err) = agent(&sb, &["create-backup"], &[]);
    assert_eq!(code, 1);
    assert!(
        err.contains("the object-storage relation's `data` is not valid YAML"),
        "{err}"
    );
    assert!(err.contains("juju show-unit kfp-ui/0"), "{err}");
    crate::common::with_minio_data(&sb, |d| *d = good);

    assert_eq!(scales(&sb), before);
    assert_eq!(listing(&dest_bucket(&sb)), dest_before, "nothing written");
}

/// Where MinIO's keys come from when kfp-ui has no object-storage relation, shown by
/// `--dry-run`, which changes nothing.
#[test]
fn minio_keys_fall_back_to_s3_credentials_then_juju_config() {
    let sb = small_sandbox();
    let dest_before = listing(&dest_bucket(&sb));
    let secret = sb
        .model()
        .update(|m| {
            let i = m
                .relations
                .iter()
                .position(|r| r.interface == "object-storage")
                .unwrap();
            let r = m.relations.remove(i);
            let data = r.app_data["minio"]["data"].clone();
            let get = |k: &str| {
                data.lines()
                    .find_map(|l| l.strip_prefix(&format!("{k}: ")))
                    .unwrap()
                    .to_string()
            };
            let id = m.add_relation(
                ("kfp-ui", "s3-credentials"),
                ("minio", "s3-credentials"),
                "s3",
            );
            backup_agent_sandbox::env::ckf::set_app_data(
                m,
                id,
                "minio",
                &[
                    ("access-key", &get("access-key")),
                    ("secret-key", &get("secret-key")),
                    ("endpoint", "http://minio.kubeflow.svc.cluster.local:9000"),
                    ("bucket", "mlpipeline"),
                ],
            );
            Ok(get("secret-key"))
        })
        .unwrap();
    let (code, out, err) = agent(&sb, &["create-backup", "--dry-run"], &[]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("credentials from kfp-ui/0 relation s3-credentials"),
        "{out}"
    );
    assert!(out.contains("port-forward to service minio:9000"), "{out}");
    assert!(out.contains("mlpipeline: 16 objects"), "{out}");
    assert!(out.contains("Nothing was changed (--dry-run)."), "{out}");

    // No relation at all: `juju config minio`; its secret-key empty is a clear error.
    sb.model()
        .update(|m| {
            m.relations.retain(|r| {
                !r.ends
                    .iter()
                    .any(|e| e.endpoint == "s3-credentials" && e.app == "kfp-ui")
            });
            Ok(())
        })
        .unwrap();
    let (code, _, err) = agent(&sb, &["create-backup", "--dry-run"], &[]);
    assert_eq!(code, 1);
    assert!(err.contains("no MinIO credentials: kfp-ui/0 has no object-storage or s3-credentials relation, and `juju config minio secret-key` is empty"), "{err}");
    sb.model()
        .update(|m| {
            m.apps
                .get_mut("minio")
                .unwrap()
                .config
                .get_mut("secret-key")
                .unwrap()
                .value = Some(serde_json::json!(secret));
            Ok(())
        })
        .unwrap();
    let (code, out, err) = agent(&sb, &["create-backup", "--dry-run"], &[]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("credentials from `juju config minio`"),
        "{out}"
    );
    assert!(!out.contains(&secret) && !err.contains(&secret));
    assert_eq!(
        listing(&dest_bucket(&sb)),
        dest_before,
        "dry runs write nothing"
    );
}
