//! `restore` and `verify-backup`, the real binary, against the sandbox: a damaged control plane
//! put back exactly, and each kind of corruption caught.

use std::collections::BTreeMap;
use std::path::Path;

use crate::common::{agent, minio, repo, rt, scales};
use backup_agent::repository;
use backup_agent::storage::Store;
use backup_agent_sandbox::{Sandbox, UpOptions};
use sha2::{Digest, Sha256};

fn sandbox() -> Sandbox {
    let mut opts = UpOptions::new(crate::common::sandbox_exe());
    opts.bucket.small = 10;
    opts.bucket.large = 1;
    opts.bucket.large_size = 9 << 20;
    opts.db_units = 1;
    Sandbox::up(&opts).unwrap()
}

fn tables(db: &rusqlite::Connection) -> Vec<String> {
    db.prepare("SELECT name FROM sqlite_master WHERE type='table' ORDER BY name")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

/// Every row of every table, in order: two databases are equal when these are.
pub(crate) fn rows(path: &Path) -> BTreeMap<String, Vec<String>> {
    let db = rusqlite::Connection::open(path).unwrap();
    tables(&db)
        .into_iter()
        .map(|t| {
            let mut st = db
                .prepare(&format!("SELECT * FROM \"{t}\" ORDER BY rowid"))
                .unwrap();
            let n = st.column_count();
            let all: Vec<String> = st
                .query_map([], |r| {
                    Ok((0..n)
                        .map(|i| format!("{:?}", r.get_ref(i).unwrap()))
                        .collect::<Vec<_>>()
                        .join("|"))
                })
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap();
            (t, all)
        })
        .collect()
}

/// Every object: content hash, content type, user metadata.
pub(crate) fn bucket_state(
    store: &Store,
) -> BTreeMap<String, (String, String, BTreeMap<String, String>)> {
    let rt = rt();
    rt.block_on(async {
        let mut out = BTreeMap::new();
        for o in store.list("").await.unwrap() {
            let meta = store.head_meta(&o.key).await.unwrap().unwrap();
            let body = store.get_bytes(&o.key).await.unwrap();
            out.insert(
                o.key,
                (
                    hex::encode(Sha256::digest(&body)),
                    meta.content_type,
                    meta.metadata,
                ),
            );
        }
        out
    })
}

pub(crate) fn mysql_file(sb: &Sandbox, app: &str) -> std::path::PathBuf {
    sb.layout.data().join("mysql").join(app).join("data.db")
}

fn newest_id(sb: &Sandbox) -> String {
    let (code, out, _) = agent(sb, &["list-backups", "--output", "json"], &[]);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v.as_array().unwrap().last().unwrap()["backup-id"]
        .as_str()
        .unwrap()
        .to_string()
}

#[test]
fn a_damaged_control_plane_is_put_back_exactly() {
    let sb = sandbox();
    let before = scales(&sb);
    let mlmd0 = rows(&sb.layout.mlmd_db());
    let kfp0 = rows(&mysql_file(&sb, "kfp-db"));
    let katib0 = rows(&mysql_file(&sb, "katib-db"));
    let src = minio(&sb);
    let bucket0 = bucket_state(&src);

    let (code, _, err) = agent(&sb, &["create-backup", "--label", "good"], &[]);
    assert_eq!(code, 0, "{err}");
    let id = newest_id(&sb);

    // Damage everything.
    let keys: Vec<&String> = bucket0.keys().collect();
    rt().block_on(async {
        src.delete(keys[0]).await.unwrap();
        src.delete(keys[1]).await.unwrap();
        src.put_bytes(keys[2], b"overwritten", "text/plain")
            .await
            .unwrap();
        src.put_bytes(
            "v2/artifacts/new/run/after-the-backup.txt",
            b"new",
            "text/plain",
        )
        .await
        .unwrap();
    });
    let db = rusqlite::Connection::open(sb.layout.mlmd_db()).unwrap();
    db.execute_batch(
        "DELETE FROM Artifact WHERE id % 3 = 0; UPDATE Execution SET last_known_state = 99;",
    )
    .unwrap();
    drop(db);
    let db = rusqlite::Connection::open(mysql_file(&sb, "kfp-db")).unwrap();
    let tables = tables(&db);
    db.execute_batch(&format!(
        "DELETE FROM \"{}\" WHERE rowid % 2 = 0",
        tables[0]
    ))
    .unwrap();
    drop(db);
    assert_ne!(rows(&sb.layout.mlmd_db()), mlmd0);
    assert_ne!(rows(&mysql_file(&sb, "kfp-db")), kfp0);

    let (code, out, err) = agent(&sb, &["restore", &id], &[]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains(&format!("backup {id} restored")), "{out}");
    assert!(
        out.contains("blocked Move restored cluster to another S3 repository"),
        "{out}"
    );
    assert!(out.contains("Give kfp-db a new backup location"), "{out}");

    assert_eq!(
        rows(&sb.layout.mlmd_db()),
        mlmd0,
        "MLMD, table by table, row by row"
    );
    assert_eq!(rows(&mysql_file(&sb, "kfp-db")), kfp0);
    assert_eq!(rows(&mysql_file(&sb, "katib-db")), katib0);
    assert_eq!(
        bucket_state(&src),
        bucket0,
        "every object: bytes, type, metadata"
    );
    assert_eq!(scales(&sb), before);
    // The damaged state was saved first, and the restore is in the backup's history.
    let (_, list, _) = agent(&sb, &["list-backups"], &[]);
    assert!(list.contains(&format!("pre-restore {id}")), "{list}");
    let sf = rt().block_on(repository::load(&repo(&sb), &id)).unwrap();
    let last = sf.history.last().unwrap();
    assert_eq!(last["event"], "restore");
    assert_eq!(last["outcome"], "completed");
    let pod_dir = sb.layout.data().join("pods/mlmd-0/data");
    assert!(
        std::fs::read_dir(&pod_dir).unwrap().any(|e| e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .starts_with("mlmd.db.before-")),
        "the previous MLMD file is kept beside the restored one"
    );
}

#[test]
fn verify_catches_each_corruption_and_passes_a_good_backup() {
    let sb = sandbox();
    let (code, _, err) = agent(&sb, &["create-backup"], &[]);
    assert_eq!(code, 0, "{err}");
    let id = newest_id(&sb);
    let store = repo(&sb);
    let whole = crate::common::dest_bucket(&sb);
    let rt = rt();
    let (code, out, err) = agent(&sb, &["verify-backup", &id, "--read-data"], &[]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("PASSED"), "{out}");

    let sf = rt.block_on(repository::load(&store, &id)).unwrap();
    let manifest = crate::common::manifest_of(&store, &sf);
    let big = manifest.iter().max_by_key(|e| e.size).unwrap();
    let blob = big.stored_object().unwrap();
    // A small object's bytes are in a pack (format v2): the pack goes missing.
    let small = manifest
        .iter()
        .find(|e| e.size > 0 && e.pack.is_some())
        .unwrap();
    let blob2 = small.stored_object().unwrap();
    let mlmd_key = repository::mlmd_key(&id);
    let sf_key = repository::statefile_key(&id);
    let md5_key = format!("mysql/{}.md5", sf.components.mysql[0].backup_id);

    // (what, the object, how it is damaged, read-data needed, words the report must have)
    type Damage = fn(&[u8]) -> Option<Vec<u8>>;
    let flip: Damage = |b| {
        let mut b = b.to_vec();
        let i = b.len() / 2;
        b[i] ^= 1;
        Some(b)
    };
    let gone: Damage = |_| None;
    let truncate: Damage = |b| Some(b[..b.len() / 2].to_vec());
    let tamper: Damage = |b| {
        Some(
            String::from_utf8_lossy(b)
                .replace(
                    "\"integrity-check\": \"ok\"",
                    "\"integrity-check\": \"fine\"",
                )
                .into_bytes(),
        )
    };
    let cases: Vec<(&str, &Store, &str, Damage, bool, &str)> = vec![
        (
            "flipped byte",
            &store,
            blob.as_str(),
            flip,
            true,
            "corrupted",
        ),
        (
            "missing pack",
            &store,
            blob2.as_str(),
            gone,
            false,
            "missing",
        ),
        (
            "truncated MLMD",
            &store,
            mlmd_key.as_str(),
            truncate,
            false,
            "bytes, the statefile records",
        ),
        (
            "tampered statefile",
            &store,
            sf_key.as_str(),
            tamper,
            false,
            "checksum does not match",
        ),
        (
            "missing .md5",
            &whole,
            md5_key.as_str(),
            gone,
            false,
            "the .md5 marker",
        ),
    ];
    for (what, st, key, damage, read_data, needle) in cases {
        let original = rt.block_on(st.get_bytes(key)).unwrap();
        match damage(&original) {
            Some(b) => rt
                .block_on(st.put_bytes(key, &b, "application/octet-stream"))
                .unwrap(),
            None => rt.block_on(st.delete(key)).unwrap(),
        }
        let mut args = vec!["verify-backup", id.as_str()];
        if read_data {
            args.push("--read-data");
        }
        let (code, out, err) = agent(&sb, &args, &[]);
        assert_eq!(code, 1, "{what}: {out}{err}");
        assert!(out.contains("FAILED"), "{what}: {out}");
        assert!(
            out.contains(key.rsplit('/').next().unwrap()),
            "{what}: names the object: {out}"
        );
        assert!(out.contains(needle), "{what}: {needle:?} not in {out}");
        rt.block_on(st.put_bytes(key, &original, "application/octet-stream"))
            .unwrap();
    }
    let (code, out, _) = agent(&sb, &["verify-backup", &id, "--read-data"], &[]);
    assert_eq!(code, 0, "repaired: {out}");
    // Every verification is in the history.
    let sf = rt.block_on(repository::load(&store, &id)).unwrap();
    let outcomes: Vec<&str> = sf
        .history
        .iter()
        .filter(|h| h["event"] == "verify")
        .map(|h| h["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(outcomes.first(), Some(&"passed"));
    assert!(outcomes.contains(&"failed"));
}

#[test]
fn verify_samples_slices_that_cover_every_blob_once_and_find_damage_in_theirs() {
    let sb = sandbox();
    let (code, _, err) = agent(&sb, &["create-backup", "--components", "mlpipeline"], &[]);
    assert_eq!(code, 0, "{err}");
    let id = newest_id(&sb);
    let store = repo(&sb);
    let rt = rt();
    let verify = |extra: &[&str]| -> (i32, serde_json::Value) {
        let mut args = vec!["verify-backup", id.as_str(), "--output", "json"];
        args.extend(extra);
        let (code, out, err) = agent(&sb, &args, &[]);
        let v = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}{err}"));
        (code, v)
    };
    let (code, all) = verify(&["--read-data"]);
    assert_eq!(code, 0, "{all}");
    let every = all["blobs-read"].as_u64().unwrap();
    assert!(every >= 10, "{all}");
    assert!(
        all.get("sample").is_none(),
        "a whole read is no sample: {all}"
    );

    // The four slices read every blob once between them, each fewer than all.
    let t = 4;
    let mut sum = 0;
    for n in 1..=t {
        let (code, v) = verify(&["--read-data", "--sample", &format!("{n}/{t}")]);
        assert_eq!(code, 0, "{v}");
        assert_eq!(v["sample"], format!("{n}/{t}"));
        assert_eq!(
            v["objects-checked"], all["objects-checked"],
            "presence is checked in full"
        );
        let read = v["blobs-read"].as_u64().unwrap();
        assert!(read < every, "slice {n}/{t} read {read} of {every}");
        sum += read;
    }
    assert_eq!(sum, every, "the slices cover every blob once");

    // A flipped byte (same size, so only reading finds it) is found by its slice only.
    let sf = rt.block_on(repository::load(&store, &id)).unwrap();
    let manifest = crate::common::manifest_of(&store, &sf);
    let e = manifest.iter().max_by_key(|e| e.size).unwrap();
    // Its bytes: a blob of its own (v1), or its range of a pack (v2).
    let blob = e.stored_object().unwrap();
    let first: [u8; 8] = hex::decode(&e.sha256).unwrap()[..8].try_into().unwrap();
    let slice = u64::from_be_bytes(first) % t + 1;
    let original = rt.block_on(store.get_bytes(&blob)).unwrap();
    let mut bad = original.to_vec();
    let mid = (e.offset.unwrap_or(0) + e.size / 2) as usize;
    bad[mid] ^= 1;
    rt.block_on(store.put_bytes(&blob, &bad, "application/octet-stream"))
        .unwrap();
    let (code, v) = verify(&["--read-data", "--sample", &format!("{slice}/{t}")]);
    assert_eq!(code, 1, "{v}");
    let problems = v["problems"].to_string();
    assert!(problems.contains(&blob) && problems.contains(&e.key), "{v}");
    let other = slice % t + 1;
    let (code, v) = verify(&["--read-data", "--sample", &format!("{other}/{t}")]);
    assert_eq!(code, 0, "slice {other} does not hold the damaged blob: {v}");
    // A share of 100% is every blob; the text report says what was sampled.
    let (code, out, _) = agent(
        &sb,
        &["verify-backup", &id, "--read-data", "--sample", "100%"],
        &[],
    );
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("a 100% sample of the bucket"), "{out}");
    rt.block_on(store.put_bytes(&blob, &original, "application/octet-stream"))
        .unwrap();
    let sf = rt.block_on(repository::load(&store, &id)).unwrap();
    let samples: Vec<&str> = sf
        .history
        .iter()
        .filter_map(|h| h["sample"].as_str())
        .collect();
    assert!(
        samples.contains(&"2/4") && samples.contains(&"100%"),
        "{samples:?}"
    );
}

#[test]
fn restore_refuses_what_it_cannot_restore() {
    let sb = sandbox();
    let before = scales(&sb);
    let (code, _, err) = agent(&sb, &["create-backup", "--components", "mlmd"], &[]);
    assert_eq!(code, 0, "{err}");
    let id = newest_id(&sb);
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["restore", "20250101T000000Z-abcdef"],
            "no backup 20250101T000000Z-abcdef",
        ),
        (vec!["restore", "../../etc"], "is not a backup id"),
        (
            vec!["restore", &id, "--components", "kfp-db"],
            "holds no kfp-db (it holds mlmd)",
        ),
        (
            vec!["restore", &id, "--components", "redis"],
            "invalid value 'redis'",
        ),
    ];
    for (args, needle) in cases {
        let (code, _, err) = agent(&sb, &args, &[]);
        assert_ne!(code, 0, "{args:?}");
        assert!(err.contains(needle), "{args:?}: {needle:?} not in {err}");
    }
    // A failed backup, one left being written by a run that is gone (recovered first, so it
    // is failed by the time it is checked), and a statefile of a schema from the future.
    let store = repo(&sb);
    let rt = rt();
    let mut sf = rt.block_on(repository::load(&store, &id)).unwrap();
    let good = sf.clone();
    for phase in [repository::Phase::Failed, repository::Phase::Capturing] {
        sf.phase = phase;
        rt.block_on(repository::save(&store, &sf)).unwrap();
        let (code, _, err) = agent(&sb, &["restore", &id], &[]);
        assert_eq!(code, 1);
        assert!(
            err.contains("is failed, not completed: it cannot be restored"),
            "{err}"
        );
        if phase == repository::Phase::Capturing {
            assert!(
                err.contains("was left capturing by a run that is gone"),
                "{err}"
            );
        }
    }
    sf = good;
    let mut v: serde_json::Value = serde_json::from_slice(&sf.to_json()).unwrap();
    v["schema-version"] = serde_json::json!(9);
    rt.block_on(store.put_bytes(
        &repository::statefile_key(&id),
        v.to_string().as_bytes(),
        "application/json",
    ))
    .unwrap();
    let (code, _, err) = agent(&sb, &["restore", &id], &[]);
    assert_eq!(code, 1);
    assert!(
        err.contains("schema version 9 is newer than this backup-agent understands"),
        "{err}"
    );
    assert_eq!(scales(&sb), before);
    assert!(
        !agent(&sb, &["list-backups"], &[]).1.contains("pre-restore"),
        "no safety backup taken"
    );
}

fn wait_for(mut f: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !f() {
        assert!(
            std::time::Instant::now() < deadline,
            "condition not reached in 30s"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// The restore of `id` is under way: its journal is in the history and a scale is changed.
fn restoring(sb: &Sandbox, id: &str, before: &BTreeMap<String, (u32, usize)>) -> bool {
    let Ok(sf) = rt().block_on(repository::load(&repo(sb), id)) else {
        return false;
    };
    sf.history
        .last()
        .is_some_and(|h| h["event"] == "restore" && h["phase"] == "running")
        && scales(sb) != *before
}

fn last_restore(sb: &Sandbox, id: &str) -> serde_json::Value {
    let sf = rt().block_on(repository::load(&repo(sb), id)).unwrap();
    sf.history
        .iter()
        .rev()
        .find(|h| h["event"] == "restore")
        .unwrap()
        .clone()
}

fn safety_of(err: &str) -> String {
    let at = err
        .find("The state before the restore is backup ")
        .unwrap_or_else(|| panic!("no safety backup named in {err}"));
    err[at..]
        .split_whitespace()
        .nth(7)
        .unwrap()
        .trim_end_matches(':')
        .to_string()
}

#[test]
fn faults_mid_restore_put_scales_back_and_name_the_safety_backup() {
    let sb = sandbox();
    let before = scales(&sb);
    let (code, _, err) = agent(&sb, &["create-backup"], &[]);
    assert_eq!(code, 0, "{err}");
    let id = newest_id(&sb);
    let check = |what: &str, code: i32, err: &str, needles: &[&str]| {
        assert_eq!(code, 1, "{what}: {err}");
        for n in needles {
            assert!(err.contains(n), "{what}: {n:?} not in {err}");
        }
        assert_eq!(scales(&sb), before, "{what}: scales");
        let safety = safety_of(err);
        let (_, list, _) = agent(&sb, &["list-backups"], &[]);
        assert!(
            list.lines()
                .any(|l| l.starts_with(&safety) && l.contains(" completed ")),
            "{what}: the safety backup {safety} is listed: {list}"
        );
        assert_eq!(last_restore(&sb, &id)["outcome"], "failed", "{what}");
    };

    // mysql-k8s refuses the restore.
    crate::common::fail_next_action(&sb, "katib-db", "restore", "Failed to restore backup");
    let (code, _, err) = agent(&sb, &["restore", &id], &[]);
    check(
        "mysql",
        code,
        &err,
        &[
            "katib-db: action restore on katib-db/",
            "Failed to restore backup",
            "scales put back",
        ],
    );

    // The MLMD pod does not come back after its restart.
    let fault = |args: &[&str]| {
        let out = sb
            .command(crate::common::sandbox_exe())
            .args(["fault"])
            .args(args)
            .arg("--dir")
            .arg(&sb.layout.dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    // kfp-db's restore went through, so it is blocked now, as mysql-k8s leaves it: a backup of
    // it (the safety backup) is refused, naming why. The other parts go on.
    let (code, _, err) = agent(&sb, &["restore", &id], &[]);
    assert_eq!(code, 1);
    assert!(
        err.contains("the safety backup failed, so nothing was restored"),
        "{err}"
    );
    assert!(
        err.contains("kfp-db is blocked (\"Move restored cluster to another S3 repository\")"),
        "{err}"
    );
    let parts = ["--components", "mlmd,mlpipeline"];
    fault(&["pod-stuck", "mlmd"]);
    let (code, _, err) = agent(
        &sb,
        &["restore", &id, "--pod-timeout", "2s", parts[0], parts[1]],
        &[],
    );
    check(
        "pod",
        code,
        &err,
        &["pod mlmd-0 did not come back Ready within 2s"],
    );
    fault(&["clear"]);
    wait_for(|| {
        sb.model()
            .update(|m| {
                m.settle(backup_agent_sandbox::model::now_ms());
                Ok(m.apps["mlmd"]
                    .units
                    .values()
                    .all(|u| u.pod_deleted_ms.is_none()))
            })
            .unwrap()
    });

    // SIGTERM while the bucket is copied back (slowly: the large object went missing).
    let src = minio(&sb);
    let large = rt()
        .block_on(src.list(""))
        .unwrap()
        .into_iter()
        .max_by_key(|o| o.size)
        .unwrap();
    rt().block_on(src.delete(&large.key)).unwrap();
    let child = sb
        .command(env!("CARGO_BIN_EXE_backup-agent"))
        .args(["restore", &id, "--bwlimit", "1M"])
        .args(parts)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    wait_for(|| restoring(&sb, &id, &before));
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    check(
        "SIGTERM",
        out.status.code().unwrap_or(-1),
        &err,
        &["interrupted by SIGTERM"],
    );
    assert!(rt()
        .block_on(repo(&sb).head(&repository::lock_key()))
        .unwrap()
        .is_none());

    // The destination dies while the bucket is copied back.
    let child = sb
        .command(env!("CARGO_BIN_EXE_backup-agent"))
        .args(["restore", &id, "--bwlimit", "1M", "--no-safety-backup"])
        .args(parts)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    wait_for(|| restoring(&sb, &id, &before));
    backup_agent_sandbox::process::stop(sb.info.dest.pid, std::time::Duration::from_secs(5));
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!("127.0.0.1:{}", sb.info.dest.port)),
        "names the destination: {err}"
    );
    assert!(
        err.contains("No safety backup was taken (--no-safety-backup)"),
        "{err}"
    );
    assert_eq!(scales(&sb), before);
}

#[test]
fn an_older_backup_restores_exactly_after_newer_ones() {
    let sb = sandbox();
    let src = minio(&sb);
    let state = |sb: &Sandbox| {
        (
            rows(&sb.layout.mlmd_db()),
            rows(&mysql_file(sb, "kfp-db")),
            bucket_state(&src),
        )
    };
    let a = state(&sb);
    assert_eq!(agent(&sb, &["create-backup"], &[]).0, 0);
    let id_a = newest_id(&sb);
    // Newer states: objects changed and added, MLMD rows added, mysql rows removed.
    let change = |n: u32| {
        rt().block_on(src.put_bytes(
            &format!("v2/artifacts/later/run-{n}/out.txt"),
            b"later",
            "text/plain",
        ))
        .unwrap();
        let key = bucket_state(&src).keys().next().unwrap().clone();
        rt().block_on(src.put_bytes(&key, format!("rewritten {n}").as_bytes(), "text/plain"))
            .unwrap();
        let db = rusqlite::Connection::open(sb.layout.mlmd_db()).unwrap();
        db.execute_batch("DELETE FROM Event WHERE rowid % 4 = 0")
            .unwrap();
        let db = rusqlite::Connection::open(mysql_file(&sb, "kfp-db")).unwrap();
        let t: String = db
            .query_row(
                "SELECT name FROM sqlite_master WHERE type='table' LIMIT 1",
                [],
                |r| r.get(0),
            )
            .unwrap();
        db.execute_batch(&format!("DELETE FROM \"{t}\" WHERE rowid % 3 = {}", n % 3))
            .unwrap();
    };
    change(1);
    assert_eq!(agent(&sb, &["create-backup"], &[]).0, 0);
    change(2);
    assert_eq!(agent(&sb, &["create-backup"], &[]).0, 0);
    change(3);
    let (code, out, err) = agent(&sb, &["restore", &id_a, "--no-safety-backup"], &[]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(state(&sb) == a, "the state of backup A, not of a newer one");
}

#[test]
fn a_new_cluster_with_only_the_bucket_restores() {
    let old = sandbox();
    let (code, _, err) = agent(&old, &["create-backup"], &[]);
    assert_eq!(code, 0, "{err}");
    let id = newest_id(&old);
    let want = (
        rows(&old.layout.mlmd_db()),
        rows(&mysql_file(&old, "kfp-db")),
        bucket_state(&minio(&old)),
    );

    // Another cluster, other data; the backups' bucket is all it gets from the first.
    let mut opts = UpOptions::new(crate::common::sandbox_exe());
    opts.bucket.small = 7;
    opts.bucket.large = 0;
    opts.bucket.seed = 99;
    opts.mlmd.seed = 99;
    opts.mysql_rows = 40;
    opts.db_units = 1;
    let new = Sandbox::up(&opts).unwrap();
    let (from, to) = (
        crate::common::dest_bucket(&old),
        crate::common::dest_bucket(&new),
    );
    rt().block_on(async {
        for o in from.list("").await.unwrap() {
            let body = from.get_bytes(&o.key).await.unwrap();
            to.put_bytes(&o.key, &body, "application/octet-stream")
                .await
                .unwrap();
        }
    });
    drop(old);
    assert_ne!(rows(&new.layout.mlmd_db()), want.0);

    let (code, out, err) = agent(&new, &["restore", &id], &[]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(rows(&new.layout.mlmd_db()), want.0);
    assert_eq!(rows(&mysql_file(&new, "kfp-db")), want.1);
    assert_eq!(bucket_state(&minio(&new)), want.2);
}

/// `restore --dry-run` says, per component, what it would write, delete and leave alone,
/// counted against the cluster as it is now, in text and JSON, and changes nothing.
#[test]
fn a_dry_run_counts_per_component_what_a_restore_would_write_and_delete() {
    let sb = crate::common::sandbox(6);
    let id = crate::common::backup(&sb, "base");
    // Two objects to put back (one gone, one changed) and one the backup lacks.
    let src = minio(&sb);
    let keys: Vec<String> = rt()
        .block_on(src.list(""))
        .unwrap()
        .into_iter()
        .map(|o| o.key)
        .collect();
    rt().block_on(async {
        src.delete(&keys[0]).await.unwrap();
        src.put_bytes(&keys[1], b"changed", "text/plain")
            .await
            .unwrap();
        src.put_bytes("extra/not-in-the-backup", b"12345", "text/plain")
            .await
            .unwrap();
    });
    let before = crate::common::contents(&minio(&sb));
    let before_scales = scales(&sb);
    let mlmd_before = std::fs::read(sb.layout.mlmd_db()).unwrap();

    let (code, out, err) = agent(&sb, &["restore", &id, "--dry-run"], &[]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(
        out.contains("against the bucket now: 2 to copy back") && out.contains("1 to delete"),
        "{out}"
    );
    assert!(
        out.contains(&format!("{} unchanged", keys.len() - 2)),
        "{out}"
    );
    assert!(
        out.contains("mlmd: /data/mlmd.db swapped in mlmd-0: writes "),
        "{out}"
    );
    assert!(out.contains("over the live "), "{out}");
    assert!(
        out.lines()
            .any(|l| l.contains("kfp-db: mysql-k8s restore backup-id=")
                && l.contains("backup stream")),
        "{out}"
    );

    let (code, out, err) = agent(&sb, &["restore", &id, "--dry-run", "--output", "json"], &[]);
    assert_eq!(code, 0, "{out}\n{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let plan = if v.get("plan").is_some() {
        &v["plan"]
    } else {
        &v
    };
    let changes = &plan["mlpipeline-changes"];
    assert_eq!(changes["to-copy"], 2, "{plan}");
    assert_eq!(changes["to-delete"], 1, "{plan}");
    assert_eq!(changes["to-delete-bytes"], 5, "{plan}");
    assert_eq!(changes["unchanged"], (keys.len() - 2) as u64, "{plan}");
    assert_eq!(plan["mlmd-bytes"], mlmd_before.len() as u64, "{plan}");
    assert_eq!(
        plan["mlmd-replaced-bytes"],
        mlmd_before.len() as u64,
        "{plan}"
    );
    for (app, bytes) in plan["mysql-bytes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (&p[0], &p[1]))
    {
        assert!(app.is_string() && bytes.as_u64().unwrap() > 0, "{plan}");
    }
    assert_eq!(plan["mysql-bytes"].as_array().unwrap().len(), 2, "{plan}");

    // Nothing changed.
    assert_eq!(crate::common::contents(&minio(&sb)), before);
    assert_eq!(scales(&sb), before_scales);
    assert_eq!(std::fs::read(sb.layout.mlmd_db()).unwrap(), mlmd_before);
}
