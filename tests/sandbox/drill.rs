//! `drill`, the real binary against the sandbox: a good backup restores whole into scratch
//! targets and the result is recorded; each kind of damage (a lost pack, an MLMD dump whose
//! tables lost rows, a missing mysql-k8s object) fails the drill and is named; the live
//! system is never touched; the scratch copy is gone after a pass, a failure, SIGTERM, and
//! (through the next drill) SIGKILL.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::common::{
    agent, backup, contents, dest_bucket, finish, lock_held, minio, repo, rt, spawn_agent,
    statefiles, wait_for,
};
use backup_agent::repository;
use backup_agent::storage::Store;
use backup_agent_sandbox::{Sandbox, UpOptions};

fn sandbox() -> Sandbox {
    let mut opts = UpOptions::new(crate::common::sandbox_exe());
    opts.bucket.small = 30;
    opts.bucket.large = 1;
    opts.bucket.large_size = 9 << 20;
    Sandbox::up(&opts).unwrap()
}

/// Keys under the drills' scratch prefix, anywhere in the destination bucket.
fn scratch_keys(sb: &Sandbox) -> Vec<String> {
    rt().block_on(dest_bucket(sb).list(""))
        .unwrap()
        .into_iter()
        .map(|o| o.key)
        .filter(|k| k.contains("/drills/scratch/"))
        .collect()
}

/// The drills recorded in a backup's history: (outcome, problems).
fn drills(sb: &Sandbox, id: &str) -> Vec<(String, u64)> {
    statefiles(sb)
        .into_iter()
        .find(|s| s.backup_id == id)
        .unwrap()
        .history
        .iter()
        .filter(|h| h["event"] == "drill")
        .map(|h| {
            (
                h["outcome"].as_str().unwrap().to_string(),
                h["problems"].as_u64().unwrap(),
            )
        })
        .collect()
}

/// Runs `damage` on the object at `key`, a drill that must fail naming every `words`, then
/// puts the object back.
fn drill_fails_on(
    sb: &Sandbox,
    store: &Store,
    key: &str,
    damage: impl FnOnce(Vec<u8>) -> Option<Vec<u8>>,
    words: &[&str],
) {
    let rt = rt();
    let original = rt.block_on(store.get_bytes(key)).unwrap();
    match damage(original.clone()) {
        Some(bytes) => rt
            .block_on(store.put_bytes(key, &bytes, "application/octet-stream"))
            .unwrap(),
        None => rt.block_on(store.delete(key)).unwrap(),
    }
    let (code, out, err) = agent(sb, &["drill"], &[]);
    assert_ne!(code, 0, "{key}: the drill passed on damage:\n{out}{err}");
    assert!(out.contains("FAILED"), "{out}");
    for w in words {
        assert!(out.contains(w), "{key}: {w:?} not named in:\n{out}");
    }
    assert!(err.contains("problem(s), named above"), "{err}");
    assert!(scratch_keys(sb).is_empty(), "scratch left after a failure");
    rt.block_on(store.put_bytes(key, &original, "application/octet-stream"))
        .unwrap();
}

#[test]
fn a_drill_restores_into_scratch_records_its_result_and_names_each_damage() {
    let sb = sandbox();
    let id = backup(&sb, "drilled");
    let store = repo(&sb);
    let live_before = contents(&minio(&sb));
    let rt = rt();
    let sf = rt.block_on(repository::load(&store, &id)).unwrap();
    let n = sf.components.mlpipeline.as_ref().unwrap().objects;
    let all = format!("{n} of {n} objects");

    // The plan: nothing written, no lock.
    let before = rt.block_on(dest_bucket(&sb).list("")).unwrap();
    let (code, out, err) = agent(&sb, &["drill", "--dry-run"], &[]);
    assert_eq!(code, 0, "{out}{err}");
    for w in [
        &id as &str,
        &all,
        "integrity_check and the row counts",
        "kfp-db: mysql-k8s backup",
        "objects with their recorded sizes",
    ] {
        assert!(out.contains(w), "{w:?} in {out}");
    }
    assert_eq!(rt.block_on(dest_bucket(&sb).list("")).unwrap(), before);

    // The newest completed backup, whole: it passes, and says what it proved.
    let (code, out, err) = agent(&sb, &["drill"], &[]);
    assert_eq!(code, 0, "{out}{err}");
    for w in [
        &format!("drill of backup {id}: PASSED") as &str,
        "integrity_check ok",
        &format!("{all} restored"),
        &format!("{n} read back equal (bytes, size, content type, user metadata)"),
        "sizes as recorded; md5 matches its marker",
        "katib-db: mysql-k8s backup",
        "removed",
    ] {
        assert!(out.contains(w), "{w:?} in {out}");
    }
    assert!(err.contains("mlpipeline: restoring"), "progress: {err}");
    // Progress counts objects, not the groups read from one pack.
    assert!(err.contains(&format!(" in {n} objects")), "progress: {err}");
    assert!(scratch_keys(&sb).is_empty());
    assert!(!lock_held(&sb));
    assert_eq!(drills(&sb, &id), [("passed".to_string(), 0)]);
    let (_, table, _) = agent(&sb, &["list-backups"], &[]);
    assert!(
        table.contains("DRILLED") && table.contains("passed 20"),
        "{table}"
    );
    let (_, described, _) = agent(&sb, &["describe-backup", &id], &[]);
    assert!(
        described.starts_with("# last drill: passed at "),
        "{described}"
    );

    // A sample under a byte cap: fewer objects, chosen the same way for restore and check.
    let (code, out, err) = agent(
        &sb,
        &[
            "drill",
            &id,
            "--sample",
            "50%",
            "--max-bytes",
            "64K",
            "--output",
            "json",
        ],
        &[],
    );
    assert_eq!(code, 0, "{out}{err}");
    let r: serde_json::Value = serde_json::from_str(&out).unwrap();
    let b = &r["mlpipeline"];
    assert!(b["objects"].as_u64().unwrap() < n, "{r}");
    assert!(b["bytes"].as_u64().unwrap() <= 64 << 10, "{r}");
    assert_eq!(b["read-back"], b["objects"], "{r}");
    assert_eq!(r["sample"], "50%");

    // The live system was never touched.
    assert_eq!(contents(&minio(&sb)), live_before);

    // Damage, one kind at a time, each named.
    let manifest = crate::common::manifest_of(&store, &sf);
    let packed = manifest
        .iter()
        .find(|e| e.size > 0 && e.pack.is_some())
        .unwrap();
    let pack = packed.stored_object().unwrap();
    drill_fails_on(
        &sb,
        &store,
        &pack,
        |_| None,
        &[&packed.key, &pack, "not restored"],
    );

    // An MLMD dump that still decompresses and opens, but whose biggest table lost rows.
    let mlmd = sf.components.mlmd.clone().unwrap();
    let (table, rows) = mlmd
        .row_counts
        .iter()
        .max_by_key(|(_, n)| **n)
        .map(|(t, n)| (t.clone(), *n))
        .unwrap();
    assert!(rows > 1, "{:?}", mlmd.row_counts);
    let edit_table = table.clone();
    let lose_rows = move |zst: Vec<u8>| {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("mlmd.db");
        std::fs::write(&db, zstd::decode_all(&zst[..]).unwrap()).unwrap();
        let c = rusqlite::Connection::open(&db).unwrap();
        c.execute(
            &format!("DELETE FROM \"{edit_table}\" WHERE rowid IN (SELECT rowid FROM \"{edit_table}\" LIMIT 1)"),
            [],
        )
        .unwrap();
        drop(c);
        Some(zstd::encode_all(&std::fs::read(&db).unwrap()[..], 1).unwrap())
    };
    drill_fails_on(
        &sb,
        &store,
        &mlmd.key,
        lose_rows,
        &[
            &mlmd.key,
            &format!(
                "table {table}: {} rows restored, the statefile records {rows}",
                rows - 1
            ),
            "hashes to",
        ],
    );

    // A mysql-k8s backup object gone from where mysql-k8s wrote it.
    let m = &sf.components.mysql[0];
    assert!(m.objects.contains_key(&m.backup_id), "{:?}", m.objects);
    let whole = dest_bucket(&sb);
    let key = format!("mysql/{}", m.backup_id);
    drill_fails_on(
        &sb,
        &whole,
        &key,
        |_| None,
        &[&format!("{}/{}", m.location, m.backup_id), "missing"],
    );

    // Each failure is in the history; the backup, put back, passes again.
    let recorded = drills(&sb, &id);
    let failed: Vec<u64> = recorded
        .iter()
        .filter(|(o, _)| o == "failed")
        .map(|(_, n)| *n)
        .collect();
    assert_eq!(failed.len(), 3, "{recorded:?}");
    assert!(failed.iter().all(|n| *n > 0), "{recorded:?}");
    let (code, out, err) = agent(&sb, &["drill", &id], &[]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(contents(&minio(&sb)), live_before);
}

#[test]
fn a_drill_stopped_by_a_signal_leaves_no_scratch_and_records_nothing() {
    let sb = sandbox();
    let id = backup(&sb, "drilled");
    let history = |sb: &Sandbox| {
        statefiles(sb)
            .into_iter()
            .find(|s| s.backup_id == id)
            .unwrap()
            .history
            .len()
    };
    let recorded = history(&sb);
    // Slow enough to be caught with its scratch copy half written.
    let slow = ["drill", "--bwlimit", "1M", "--transfers", "1"];

    // SIGTERM: the drill stops, removes its copy, releases the lock, records nothing.
    let child = spawn_agent(&sb, &slow, &[]);
    wait_for("a scratch copy", Duration::from_secs(60), || {
        !scratch_keys(&sb).is_empty()
    });
    let pid = child.id().to_string();
    assert!(std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let (code, out, err) = finish(child);
    assert_ne!(code, 0, "{out}{err}");
    assert!(
        err.contains("interrupted") && err.contains("was removed"),
        "{err}"
    );
    assert!(scratch_keys(&sb).is_empty(), "{:?}", scratch_keys(&sb));
    assert!(!lock_held(&sb));
    assert_eq!(history(&sb), recorded);

    // SIGKILL leaves the copy (and the lock); the next drill takes the dead run's lock over,
    // removes the copy first, and passes.
    let mut child = spawn_agent(&sb, &slow, &[]);
    wait_for("a scratch copy", Duration::from_secs(60), || {
        !scratch_keys(&sb).is_empty()
    });
    child.kill().unwrap();
    let _ = child.wait();
    let left = scratch_keys(&sb).len();
    assert!(left > 0);
    let (code, out, err) = agent(&sb, &["drill"], &[]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        err.contains("objects a killed drill left"),
        "the leftover copy is named: {err}"
    );
    assert!(scratch_keys(&sb).is_empty());
    let by_outcome: BTreeMap<String, usize> =
        drills(&sb, &id)
            .into_iter()
            .fold(BTreeMap::new(), |mut m, (o, _)| {
                *m.entry(o).or_default() += 1;
                m
            });
    assert_eq!(by_outcome, BTreeMap::from([("passed".to_string(), 1)]));
}
