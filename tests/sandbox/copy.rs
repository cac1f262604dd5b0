//! `copy`, the real binary, between two real S3 servers of the sandbox (the destination and
//! an off-site one): a copy holds everything a restore needs, sends only what the secondary
//! lacks, is checked before its statefile goes last, survives a SIGKILL half-way (no half
//! backup; the rerun completes it), and restores the control plane with the primary bucket
//! gone. list-backups says where each backup is; each repository prunes by its own policy.

use std::collections::BTreeMap;

use crate::common::{agent, backup, finish, minio, repo, rt, s3_store, spawn_agent, wait_for};
use crate::restore::{bucket_state, mysql_file, rows};
use backup_agent::repository::{self, Listed};
use backup_agent::storage::Store;
use backup_agent_sandbox::env::SECONDARY_BUCKET;
use backup_agent_sandbox::s3::fault_proxy::FaultProxy;
use backup_agent_sandbox::{Sandbox, UpOptions};

fn sandbox() -> Sandbox {
    let mut opts = UpOptions::new(crate::common::sandbox_exe());
    opts.bucket.small = 40;
    opts.bucket.large = 1;
    opts.bucket.large_size = 9 << 20;
    opts.db_units = 1;
    opts.secondary = true;
    Sandbox::up(&opts).unwrap()
}

/// The off-site repository, as the sandbox's env file names it.
fn secondary(sb: &Sandbox) -> Store {
    s3_store(
        sb.info.secondary.as_ref().unwrap(),
        SECONDARY_BUCKET,
        &sb.info.agent_path,
    )
}

fn json(out: &str) -> serde_json::Value {
    serde_json::from_str(out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

/// Completed backups of a repository, by id.
fn completed(store: &Store) -> Vec<String> {
    rt().block_on(repository::list(store))
        .unwrap()
        .into_iter()
        .filter_map(|l| match l {
            Listed::Backup(s) if s.phase == repository::Phase::Completed => Some(s.backup_id),
            _ => None,
        })
        .collect()
}

/// `id → where` from `list-backups --output json`.
fn places(sb: &Sandbox) -> BTreeMap<String, String> {
    let (code, out, err) = agent(sb, &["list-backups", "--output", "json"], &[]);
    assert_eq!(code, 0, "{err}");
    json(&out)
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            (
                b["backup-id"].as_str().unwrap().to_string(),
                b["where"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[test]
fn a_copy_restores_the_control_plane_with_the_primary_bucket_gone() {
    let sb = sandbox();
    let first = backup(&sb, "first");

    let (code, out, err) = agent(&sb, &["copy", "--dry-run"], &[]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains(&first) && out.contains("dry run"), "{out}");
    assert!(
        completed(&secondary(&sb)).is_empty(),
        "a dry run copies nothing"
    );

    let (code, out, err) = agent(&sb, &["copy", "--output", "json"], &[]);
    assert_eq!(code, 0, "{out}{err}");
    let r = json(&out);
    assert_eq!(r["copied"][0]["backup-id"], first.as_str());
    let sent_first = r["copied"][0]["stored-sent"].as_u64().unwrap();
    assert!(sent_first > 0, "{r}");
    assert_eq!(r["copied"][0]["stored-present"], 0, "{r}");
    assert_eq!(
        places(&sb),
        BTreeMap::from([(first.clone(), "both".to_string())])
    );

    // The copy's statefile says where it came from and where its mysql-k8s objects are.
    let sec = secondary(&sb);
    let sf = rt().block_on(repository::load(&sec, &first)).unwrap();
    assert!(sf.copied_from.is_some());
    assert_eq!(sf.checksum_ok(), Some(true));
    for m in &sf.components.mysql {
        let prefix = m.copied_to.as_deref().unwrap();
        assert_eq!(prefix, "backup-agent/mysql/ckf-backups/mysql");
        let here = sec.under(prefix).unwrap();
        for (key, size) in &m.objects {
            let o = rt().block_on(here.head(key)).unwrap().unwrap();
            assert_eq!(o.size, *size, "{key}");
        }
    }

    // The control plane as a second backup holds it: a few objects changed.
    let src = minio(&sb);
    rt().block_on(src.put_bytes("v2/artifacts/later/run.txt", b"later", "text/plain"))
        .unwrap();
    let mlmd = rows(&sb.layout.mlmd_db());
    let kfp = rows(&mysql_file(&sb, "kfp-db"));
    let katib = rows(&mysql_file(&sb, "katib-db"));
    let bucket = bucket_state(&src);
    let second = backup(&sb, "second");

    // Only what the secondary lacks goes: most packs and blobs are there already.
    let (code, out, err) = agent(&sb, &["copy", "--output", "json"], &[]);
    assert_eq!(code, 0, "{out}{err}");
    let r = json(&out);
    assert_eq!(r["copied"].as_array().unwrap().len(), 1, "{r}");
    assert_eq!(r["copied"][0]["backup-id"], second.as_str());
    assert_eq!(r["already"][0], first.as_str());
    let present = r["copied"][0]["stored-present"].as_u64().unwrap();
    let sent = r["copied"][0]["stored-sent"].as_u64().unwrap();
    assert!(present > 0 && sent < sent_first, "dedup: {r}");
    let (code, out, _) = agent(&sb, &["copy"], &[]);
    assert_eq!(code, 0);
    assert!(out.contains("copied 0 backup(s)"), "{out}");

    let (code, out, err) = agent(
        &sb,
        &[
            "verify-backup",
            &second,
            "--from",
            "secondary",
            "--read-data",
        ],
        &[],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("PASSED"), "{out}");

    // The primary bucket goes, with every backup and mysql-k8s object in it.
    let primary = crate::common::dest_bucket(&sb);
    rt().block_on(async {
        let all = primary.list("").await.unwrap();
        for o in all {
            primary.delete(&o.key).await.unwrap();
        }
        let b = sb.info.dest.target(&sb.info.dest_bucket).open().unwrap();
        b.delete().await.unwrap();
    });
    let (code, _, err) = agent(&sb, &["list-backups"], &[]);
    assert_ne!(code, 0, "the primary is gone: {err}");

    // The drill proves the copy without juju pointing anywhere new.
    let (code, out, err) = agent(&sb, &["drill", &second, "--from", "secondary"], &[]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("PASSED"), "{out}");

    // Damage the live system, then restore from the secondary.
    rt().block_on(src.delete("v2/artifacts/later/run.txt"))
        .unwrap();
    let db = rusqlite::Connection::open(sb.layout.mlmd_db()).unwrap();
    db.execute_batch("DELETE FROM Artifact WHERE id % 2 = 0")
        .unwrap();
    drop(db);
    let db = rusqlite::Connection::open(mysql_file(&sb, "kfp-db")).unwrap();
    db.execute_batch("DELETE FROM sqlite_sequence").ok();
    let t: String = db
        .query_row(
            "SELECT name FROM sqlite_master WHERE type='table' ORDER BY name LIMIT 1",
            [],
            |r| r.get(0),
        )
        .unwrap();
    db.execute_batch(&format!("DELETE FROM \"{t}\"")).unwrap();
    drop(db);

    // mysql-k8s restores only from its s3-integrator's place: the error says where.
    let (code, out, err) = agent(
        &sb,
        &[
            "restore",
            &second,
            "--from",
            "secondary",
            "--no-safety-backup",
        ],
        &[],
    );
    assert_ne!(code, 0, "{out}");
    let want = format!(
        "bucket={SECONDARY_BUCKET} path={}/backup-agent/mysql/ckf-backups/mysql",
        sb.info.agent_path
    );
    assert!(err.contains(&want), "{err}");
    let off = sb.info.secondary.as_ref().unwrap();
    crate::common::juju_ok(
        &sb,
        &[
            "config",
            "s3-integrator",
            &format!("endpoint={}", off.endpoint()),
            &format!("bucket={SECONDARY_BUCKET}"),
            &format!(
                "path={}/backup-agent/mysql/ckf-backups/mysql",
                sb.info.agent_path
            ),
        ],
    );
    crate::common::juju_ok(
        &sb,
        &[
            "run",
            "s3-integrator/leader",
            "sync-s3-credentials",
            &format!("access-key={}", off.access_key),
            &format!("secret-key={}", off.secret_key),
        ],
    );
    let (code, out, err) = agent(&sb, &["restore", &second, "--from", "secondary"], &[]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains(&format!("backup {second} restored")), "{out}");
    assert_eq!(rows(&sb.layout.mlmd_db()), mlmd, "MLMD");
    assert_eq!(rows(&mysql_file(&sb, "kfp-db")), kfp, "kfp-db");
    assert_eq!(rows(&mysql_file(&sb, "katib-db")), katib, "katib-db");
    assert_eq!(bucket_state(&src), bucket, "mlpipeline");
    // The safety backup of the damaged state went where the restore came from.
    assert!(completed(&sec).len() >= 3, "{:?}", completed(&sec));
}

#[test]
fn a_copy_killed_half_way_leaves_no_backup_and_the_rerun_completes_it() {
    let sb = sandbox();
    let id = backup(&sb, "to-copy");
    let off = sb.info.secondary.as_ref().unwrap();
    let proxy = FaultProxy::start(&off.endpoint()).unwrap();
    let via = proxy.endpoint();
    let env = [("BACKUP_AGENT_SECONDARY_S3_ENDPOINT", via.as_str())];
    // Held at the first mysql-k8s object: the packs, MLMD and manifest are there by then.
    proxy.hold("/backup-agent/mysql/");
    let mut child = spawn_agent(&sb, &["copy"], &env);
    wait_for(
        "the copy reaching the mysql-k8s objects",
        std::time::Duration::from_secs(120),
        || proxy.held() > 0,
    );
    child.kill().unwrap();
    let _ = finish(child);
    proxy.release();

    let sec = secondary(&sb);
    let keys: Vec<String> = rt()
        .block_on(sec.list(""))
        .unwrap()
        .into_iter()
        .map(|o| o.key)
        .collect();
    assert!(keys.iter().any(|k| k.contains("/packs/")), "{keys:?}");
    assert!(
        !keys.iter().any(|k| k.ends_with("statefile.json")),
        "no statefile, so no half backup: {keys:?}"
    );
    assert!(completed(&sec).is_empty());
    assert_eq!(
        places(&sb),
        BTreeMap::from([(id.clone(), "primary".into())])
    );

    // The lock of the killed copy is taken over (its process is gone) and the rest is sent.
    let (code, out, err) = agent(&sb, &["copy", "--output", "json"], &env);
    assert_eq!(code, 0, "{out}{err}");
    let r = json(&out);
    assert_eq!(r["copied"][0]["backup-id"], id.as_str());
    assert!(
        r["copied"][0]["stored-present"].as_u64().unwrap() > 0,
        "{r}"
    );
    assert_eq!(places(&sb), BTreeMap::from([(id.clone(), "both".into())]));
    let (code, out, err) = agent(
        &sb,
        &["verify-backup", &id, "--from", "secondary", "--read-data"],
        &[],
    );
    assert_eq!(code, 0, "{out}{err}");
}

#[test]
fn each_repository_keeps_backups_by_its_own_policy_and_secrets_stay_out() {
    let sb = sandbox();
    let ids: Vec<String> = (0..3).map(|i| backup(&sb, &format!("b{i}"))).collect();
    let (code, out, err) = agent(&sb, &["copy"], &[]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("copied 3 backup(s)"), "{out}");

    // The secondary keeps one; the primary keeps all three.
    let (code, out, err) = agent(
        &sb,
        &["prune", "--from", "secondary", "--keep-last", "1"],
        &[],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(completed(&secondary(&sb)), vec![ids[2].clone()]);
    assert_eq!(completed(&repo(&sb)), ids);
    // The forgotten copies' mysql-k8s objects went from the secondary, not from mysql-k8s's
    // own bucket.
    let sec_mysql: Vec<String> = rt()
        .block_on(secondary(&sb).list("backup-agent/mysql/"))
        .unwrap()
        .into_iter()
        .map(|o| o.key)
        .collect();
    let sf = rt()
        .block_on(repository::load(&repo(&sb), &ids[0]))
        .unwrap();
    for m in &sf.components.mysql {
        assert!(
            !sec_mysql.iter().any(|k| k.contains(&m.backup_id)),
            "{} left on the secondary: {sec_mysql:?}",
            m.backup_id
        );
    }
    let (code, out, err) = agent(&sb, &["verify-backup", &ids[0]], &[]);
    assert_eq!(
        code, 0,
        "the primary's mysql-k8s backups are untouched: {out}{err}"
    );
    let p = places(&sb);
    assert_eq!(p[&ids[0]], "primary");
    assert_eq!(p[&ids[2]], "both");
    let (code, out, _) = agent(&sb, &["list-backups"], &[]);
    assert_eq!(code, 0);
    assert!(out.lines().next().unwrap().contains("WHERE"), "{out}");

    // Neither repository's keys are in any statefile, the copy's output or its log.
    let (code, out, err) = agent(&sb, &["copy", "-v", "--output", "json"], &[]);
    assert_eq!(code, 0, "{err}");
    let off = sb.info.secondary.as_ref().unwrap();
    let mut seen = out + &err;
    for store in [repo(&sb), secondary(&sb)] {
        for o in rt().block_on(store.list("backup-agent/backups/")).unwrap() {
            seen.push_str(&String::from_utf8_lossy(
                &rt().block_on(store.get_bytes(&o.key)).unwrap(),
            ));
        }
    }
    for secret in [
        &off.access_key,
        &off.secret_key,
        &sb.info.dest.access_key,
        &sb.info.dest.secret_key,
    ] {
        assert!(!seen.contains(secret.as_str()), "{secret} leaked");
    }

    // A backup that cannot be copied (its mysql-k8s objects gone) is named, and the newer one
    // still goes; the copies the secondary's retention forgot are not sent again.
    let broken = backup(&sb, "broken");
    let fine = backup(&sb, "fine");
    let sf = rt()
        .block_on(repository::load(&repo(&sb), &broken))
        .unwrap();
    let whole = crate::common::dest_bucket(&sb);
    let gone = &sf.components.mysql[0].backup_id;
    for o in rt().block_on(whole.list("mysql/")).unwrap() {
        if o.key.contains(gone.as_str()) {
            rt().block_on(whole.delete(&o.key)).unwrap();
        }
    }
    let (code, out, err) = agent(&sb, &["copy", "--output", "json"], &[]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(err.contains("1 backup(s) not copied"), "{err}");
    let r = json(&out);
    assert_eq!(r["failed"][0]["backup-id"], broken.as_str(), "{r}");
    assert!(
        r["failed"][0]["error"]
            .as_str()
            .unwrap()
            .contains(gone.as_str()),
        "{r}"
    );
    assert_eq!(r["copied"].as_array().unwrap().len(), 1, "{r}");
    assert_eq!(r["copied"][0]["backup-id"], fine.as_str());
    assert_eq!(
        r["forgotten-there"],
        serde_json::json!([ids[0], ids[1]]),
        "{r}"
    );
    assert_eq!(places(&sb)[&broken], "primary");
}

#[test]
fn the_daemon_copies_after_every_backup_and_prunes_the_copy_by_its_own_policy() {
    use crate::serve::{curl, json, start};
    let sb = sandbox();
    let tmp = tempfile::tempdir().unwrap();
    let d = start(
        &sb,
        tmp.path(),
        &[
            "--copy-after-backup",
            "--secondary-retention",
            "keep-last=1",
        ],
    );
    let auth = "Authorization: Bearer planted-api-token-3b7e51";
    let mut ids = vec![];
    for label in ["one", "two"] {
        let (code, body) = curl(&[
            "-X",
            "POST",
            "-H",
            auth,
            "-d",
            &format!("{{\"label\": \"{label}\"}}"),
            &format!("{}/v1/backups", d.url),
        ]);
        assert_eq!(code, 202, "{body}");
        let mut last = serde_json::Value::Null;
        wait_for(
            "the backup and its copy",
            std::time::Duration::from_secs(120),
            || {
                let h = json(&curl(&[&format!("{}/healthz", d.url)]).1);
                last = h["last-run"].clone();
                h["running"].is_null()
                    && last["trigger"] == "api"
                    && last["copied"].is_u64()
                    && completed(&repo(&sb)).len() == ids.len() + 1
            },
        );
        assert!(last["error"].is_null(), "{last}");
        ids = completed(&repo(&sb));
    }
    // Both on the primary, only the newest kept on the secondary.
    assert_eq!(ids.len(), 2);
    assert_eq!(completed(&secondary(&sb)), vec![ids[1].clone()]);
    let p = places(&sb);
    assert_eq!(p[&ids[0]], "primary");
    assert_eq!(p[&ids[1]], "both");
}
