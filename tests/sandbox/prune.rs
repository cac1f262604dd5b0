//! `prune`, `delete-backup` and `download`, the real binary against the sandbox: what goes is
//! exactly what no kept backup uses, what stays still verifies, bad input changes nothing.

use std::collections::BTreeSet;

use crate::common::{agent, backup, dest_bucket, listing, minio, repo, rt, statefiles};
use backup_agent::repository::{self, Statefile};
use backup_agent::storage::Store;
use backup_agent_sandbox::Sandbox;

/// The objects holding a backup's bytes: v1 blobs and v2 packs.
fn blobs_of(store: &Store, sf: &Statefile) -> BTreeSet<String> {
    crate::common::manifest_of(store, sf)
        .iter()
        .filter_map(|e| e.stored_object())
        .collect()
}

fn keys(store: &Store) -> BTreeSet<String> {
    listing(store).into_iter().map(|(k, _)| k).collect()
}

/// Rewrites the first `n` objects of mlpipeline with new content, so the next backup has
/// blobs the previous one does not.
fn change_objects(sb: &Sandbox, n: usize, tag: &str) {
    let m = minio(sb);
    let objects = rt().block_on(m.list("")).unwrap();
    for o in objects.iter().take(n) {
        let body = format!("{tag}: new content of {}", o.key).repeat(50);
        rt().block_on(m.put_bytes(&o.key, body.as_bytes(), "application/octet-stream"))
            .unwrap();
    }
}

#[test]
fn prune_frees_exactly_the_unreferenced_and_kept_backups_still_verify() {
    let sb = crate::common::sandbox(8);
    let a = backup(&sb, "a");
    change_objects(&sb, 3, "second");
    let b = backup(&sb, "b");
    // The same three again: B's pack (format v2) is left to B alone.
    change_objects(&sb, 3, "third");
    let c = backup(&sb, "c");
    let store = repo(&sb);
    let all = statefiles(&sb);
    let (sa, sb_, sc) = (&all[0], &all[1], &all[2]);
    assert_eq!([&sa.backup_id, &sb_.backup_id, &sc.backup_id], [&a, &b, &c]);

    // Bad input first: each refused, nothing changed.
    let before = listing(&dest_bucket(&sb));
    for (args, want) in [
        (vec!["prune"], "no retention policy was given"),
        (vec!["prune", "--keep-daily", "0"], "--keep-daily"),
        (
            vec!["prune", "--retention", "keep-dayly=3"],
            "unknown retention rule \"keep-dayly\"",
        ),
        (vec!["prune", "--keep-within", "soon"], "--keep-within"),
        (
            vec!["delete-backup", "20250101T000000Z-abcdef", "--yes"],
            "no backup 20250101T000000Z-abcdef",
        ),
        (
            vec!["delete-backup", "../etc", "--yes"],
            "is not a backup id",
        ),
        // Not on a terminal: a delete needs --yes.
        (
            vec!["delete-backup", c.as_str()],
            "needs --yes when not run from a terminal",
        ),
    ] {
        let (code, out, err) = agent(&sb, &args, &[]);
        assert_ne!(code, 0, "{args:?}: {out}");
        assert!(err.contains(want), "{args:?}: {err}");
    }
    assert_eq!(
        listing(&dest_bucket(&sb)),
        before,
        "bad input changed nothing"
    );

    // Expected: A and B forgotten, and every blob C does not name.
    let kept_blobs = blobs_of(&store, sc);
    let all_blobs: BTreeSet<String> = keys(&store)
        .into_iter()
        .filter(|k| k.starts_with("backup-agent/blobs/") || k.starts_with("backup-agent/packs/"))
        .collect();
    let unreferenced: BTreeSet<String> = all_blobs.difference(&kept_blobs).cloned().collect();
    assert!(
        !unreferenced.is_empty(),
        "the changes made blobs or packs only A or B use"
    );

    let (code, out, err) = agent(
        &sb,
        &["prune", "--keep-last", "1", "--dry-run", "--output", "json"],
        &[],
    );
    assert_eq!(code, 0, "{err}");
    let plan: serde_json::Value = serde_json::from_str(&out).unwrap();
    let forget: Vec<&str> = plan["forget"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["id"].as_str().unwrap())
        .collect();
    assert_eq!(forget, [a.as_str(), b.as_str()]);
    assert_eq!(
        plan["blobs"].as_u64().unwrap() + plan["packs"].as_u64().unwrap(),
        unreferenced.len() as u64
    );
    assert_eq!(plan["repack-packs"], 0, "no pack is mostly unused");
    let sizes: std::collections::BTreeMap<String, u64> = rt()
        .block_on(store.list(""))
        .unwrap()
        .into_iter()
        .map(|o| (o.key, o.size))
        .collect();
    let own = |id: &str| -> u64 {
        sizes
            .iter()
            .filter(|(k, _)| k.starts_with(&format!("backup-agent/backups/{id}/")))
            .map(|(_, s)| s)
            .sum()
    };
    let blob_bytes: u64 = unreferenced.iter().map(|k| sizes[k]).sum();
    assert_eq!(
        plan["blob-bytes"].as_u64().unwrap() + plan["pack-bytes"].as_u64().unwrap(),
        blob_bytes
    );
    assert_eq!(plan["bytes-freed"], own(&a) + own(&b) + blob_bytes);
    assert_eq!(
        listing(&dest_bucket(&sb)),
        before,
        "a dry run deletes nothing"
    );
    let (_, text, _) = agent(&sb, &["prune", "--keep-last", "1", "--dry-run"], &[]);
    assert!(
        text.contains(&format!("forget {a}")) && text.contains(&format!("keep   {c}")),
        "{text}"
    );

    let mysql_keys = |sf: &Statefile| -> Vec<String> {
        sf.components
            .mysql
            .iter()
            .flat_map(|m| {
                [
                    format!("mysql/{}", m.backup_id),
                    format!("mysql/{}.md5", m.backup_id),
                ]
            })
            .collect()
    };
    let whole_before = keys(&dest_bucket(&sb));
    let repo_before = keys(&store);
    for k in mysql_keys(sa).iter().chain(&mysql_keys(sc)) {
        assert!(whole_before.contains(k), "{k} exists before");
    }

    let (code, out, err) = agent(&sb, &["prune", "--keep-last", "1"], &[]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("forgot 2 backup(s)"), "{out}");
    let after = keys(&store);
    let gone: BTreeSet<String> = repo_before.difference(&after).cloned().collect();
    assert!(
        after.is_subset(&repo_before),
        "prune wrote nothing new but the lock, now gone"
    );
    let expected_gone: BTreeSet<String> = sizes
        .keys()
        .filter(|k| {
            unreferenced.contains(*k)
                || k.starts_with(&format!("backup-agent/backups/{a}/"))
                || k.starts_with(&format!("backup-agent/backups/{b}/"))
        })
        .cloned()
        .collect();
    assert_eq!(
        gone, expected_gone,
        "exactly A's and B's objects and the unreferenced blobs"
    );
    assert!(kept_blobs.is_subset(&after));
    let whole_after = keys(&dest_bucket(&sb));
    for k in mysql_keys(sa).iter().chain(&mysql_keys(sb_)) {
        assert!(
            !whole_after.contains(k),
            "{k}: the forgotten backups' mysql-k8s backups go"
        );
    }
    for k in mysql_keys(sc) {
        assert!(whole_after.contains(&k), "{k}: the kept backup's stays");
    }
    let (code, out, err) = agent(&sb, &["verify-backup", &c, "--read-data"], &[]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(rt()
        .block_on(store.head(&repository::lock_key()))
        .unwrap()
        .is_none());

    // A second prune with the same policy has nothing to do.
    let (code, out, _) = agent(&sb, &["prune", "--keep-last", "1"], &[]);
    assert_eq!(code, 0);
    assert!(out.contains("forgot 0 backup(s)"), "{out}");

    // A's pack is still C's, with the three changed objects' bytes unused: past
    // --max-unused 0 it is repacked. The dry run says so and changes nothing; the run moves
    // C's manifest to a new key over a new pack, and C still reads back whole.
    let before = listing(&dest_bucket(&sb));
    let repack = ["prune", "--keep-last", "1", "--max-unused", "0"];
    let (code, out, err) = agent(&sb, &[&repack[..], &["--dry-run"]].concat(), &[]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("repacks 1 mostly unused pack(s)"), "{out}");
    assert_eq!(
        listing(&dest_bucket(&sb)),
        before,
        "a dry run repacks nothing"
    );
    let (code, out, err) = agent(&sb, &repack, &[]);
    assert_eq!(code, 0, "{out}\n{err}");
    let c_now = rt().block_on(repository::load(&store, &c)).unwrap();
    let moved = blobs_of(&store, &c_now);
    assert!(moved.is_subset(&keys(&store)));
    assert_ne!(moved, kept_blobs, "C's bytes moved to a new pack");
    let (code, out, err) = agent(&sb, &["verify-backup", &c, "--read-data"], &[]);
    assert_eq!(code, 0, "{out}\n{err}");

    // delete-backup with --yes: the newest completed backup may go when the operator says so,
    // with a warning; its blobs go with it.
    let (code, out, err) = agent(&sb, &["delete-backup", &c, "--yes"], &[]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("is the newest completed backup"), "{out}");
    let left: Vec<String> = keys(&store).into_iter().collect();
    assert!(
        left.iter().all(|k| !k.starts_with("backup-agent/blobs/")
            && !k.starts_with("backup-agent/packs/")
            && !k.starts_with("backup-agent/backups/")),
        "{left:?}"
    );
}

#[test]
fn download_writes_every_part_checked_and_refuses_escaping_keys() {
    let sb = crate::common::sandbox(6);
    let id = backup(&sb, "to-download");
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("out");
    let (code, out, err) = agent(&sb, &["download", &id, dir.to_str().unwrap()], &[]);
    assert_eq!(code, 0, "{out}\n{err}");
    // Every mlpipeline object, byte for byte.
    let m = minio(&sb);
    let objects = rt().block_on(m.list("")).unwrap();
    assert!(!objects.is_empty());
    for o in &objects {
        let want = rt().block_on(m.get_bytes(&o.key)).unwrap();
        let got = std::fs::read(dir.join("mlpipeline").join(&o.key)).unwrap();
        assert!(got == want, "{}", o.key);
    }
    // MLMD opens and holds the pod's rows; the statefile is the bucket's.
    let conn = rusqlite::Connection::open(dir.join("mlmd.db")).unwrap();
    let n: i64 = conn
        .query_row("SELECT count(*) FROM Artifact", [], |r| r.get(0))
        .unwrap();
    assert!(n > 0);
    let sf = Statefile::parse("x", &std::fs::read(dir.join("statefile.json")).unwrap()).unwrap();
    assert_eq!(sf.backup_id, id);
    for mc in &sf.components.mysql {
        let md5 = dir
            .join("mysql")
            .join(&mc.app)
            .join(format!("{}.md5", mc.backup_id));
        assert!(md5.exists(), "{}", md5.display());
    }
    // Not into a directory with something in it.
    let (code, _, err) = agent(&sb, &["download", &id, dir.to_str().unwrap()], &[]);
    assert_eq!(code, 1);
    assert!(err.contains("is not empty"), "{err}");

    // A repository whose manifest (hash and statefile consistent, as an attacker with write
    // access could make them) names keys that climb out: refused and reported, never written.
    let store = repo(&sb);
    let mut sf = rt().block_on(repository::load(&store, &id)).unwrap();
    let cap = sf.components.mlpipeline.clone().unwrap();
    let mut entries = crate::common::manifest_of(&store, &sf);
    let mut evil = entries[0].clone();
    evil.key = "../../escaped".into();
    entries.push(evil);
    let bytes = crate::common::manifest_bytes(&entries);
    rt().block_on(store.put_bytes(&cap.manifest_key, &bytes, "application/zstd"))
        .unwrap();
    use sha2::Digest;
    sf.components.mlpipeline.as_mut().unwrap().manifest_sha256 =
        hex::encode(sha2::Sha256::digest(&bytes));
    rt().block_on(repository::save(&store, &sf)).unwrap();
    let dir2 = tmp.path().join("a").join("b").join("out2");
    let (code, out, err) = agent(&sb, &["download", &id, dir2.to_str().unwrap()], &[]);
    assert_eq!(code, 1, "{out}\n{err}");
    assert!(
        out.contains("refused: \"../../escaped\": contains `..`"),
        "{out}"
    );
    assert!(
        err.contains("1 name(s) in the backup would have been written outside"),
        "{err}"
    );
    assert!(!tmp.path().join("a").join("escaped").exists());
    assert!(!tmp.path().join("a").join("b").join("escaped").exists());
    assert!(std::fs::read_dir(dir2.join("mlpipeline")).unwrap().count() > 0);
}
