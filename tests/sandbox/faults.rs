//! The fault matrix (docs/RELIABILITY.md): each test breaks one thing for real in the sandbox
//! — an S3 server killed, a proxy that slows or fails requests, the juju CLI gone or failing,
//! the Kubernetes API down, an exec stream cut, a full or read-only disk — during a backup and
//! a restore, and checks the same four things: the scales are the original ones, no backup is
//! `completed` that should not be, the message names the cause, and the next run works.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::common::{
    agent, completed_ids, contents, finish, lock_held, minio, repo, rt, scales, spawn_agent,
    statefiles, wait_for,
};
use backup_agent::repository::{self, Phase};
use backup_agent::storage::Store;
use backup_agent_sandbox::s3::fault_proxy::FaultProxy;
use backup_agent_sandbox::seed::BucketSpec;
use backup_agent_sandbox::{S3Role, Sandbox, UpOptions};

/// A sandbox with a few small objects (and `large` objects of 12 MiB, which are spooled).
fn sandbox(small: usize, large: usize) -> Sandbox {
    let mut opts = UpOptions::new(crate::common::sandbox_exe());
    opts.bucket = BucketSpec {
        small,
        large,
        large_size: 12 << 20,
        awkward: false,
        ..BucketSpec::default()
    };
    Sandbox::up(&opts).unwrap()
}

/// What must hold again after a fault: scales and the completed backups.
struct Before {
    scales: BTreeMap<String, (u32, usize)>,
    completed: Vec<String>,
}

fn before(sb: &Sandbox) -> Before {
    Before {
        scales: scales(sb),
        completed: completed_ids(sb),
    }
}

/// A run that failed as it should: non-zero exit, every `cause` in its message, the scales
/// and completed backups as they were, the lock free.
fn failed_cleanly(sb: &Sandbox, b: &Before, run: &(i32, String, String), causes: &[&str]) {
    let (code, out, err) = run;
    assert_ne!(*code, 0, "the run should have failed:\n{out}\n{err}");
    for c in causes {
        assert!(err.contains(c), "the message should name {c:?}:\n{err}");
    }
    assert_eq!(scales(sb), b.scales, "scales put back\n{err}");
    assert_eq!(
        completed_ids(sb),
        b.completed,
        "no backup falsely completed"
    );
    assert!(!lock_held(sb), "the lock is released");
}

/// The newest statefile is `failed` (a backup that ran and stopped).
fn newest_failed(sb: &Sandbox) -> repository::Statefile {
    let sf = statefiles(sb).pop().expect("a statefile");
    assert_eq!(sf.phase, Phase::Failed, "{:?}", sf.errors);
    sf
}

/// A backup that must complete; its id.
fn backs_up(sb: &Sandbox, args: &[&str], env: &[(&str, &str)]) -> String {
    let mut all = vec!["create-backup", "--output", "json"];
    all.extend_from_slice(args);
    let (code, out, err) = agent(sb, &all, env);
    assert_eq!(code, 0, "{out}\n{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["statefile"]["phase"], "completed", "{out}");
    v["statefile"]["backup-id"].as_str().unwrap().to_string()
}

/// A restore that must complete, and leave MinIO's bucket as `expected`.
fn restores(
    sb: &Sandbox,
    id: &str,
    args: &[&str],
    env: &[(&str, &str)],
    expected: &BTreeMap<String, (String, String)>,
) -> String {
    let mut all = vec!["restore", id, "--no-safety-backup"];
    all.extend_from_slice(args);
    let (code, out, err) = agent(sb, &all, env);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains(&format!("backup {id} restored")), "{out}");
    assert_eq!(&contents(&minio(sb)), expected, "MinIO as backed up");
    err
}

/// The restore record of `id` says failed.
fn restore_recorded_failed(sb: &Sandbox, id: &str) {
    let sf = rt().block_on(repository::load(&repo(sb), id)).unwrap();
    let last = sf.history.last().expect("a restore in the history");
    assert_eq!(last["event"], "restore");
    assert_eq!(last["outcome"], "failed", "{last}");
}

/// Damage MinIO's bucket a little, so that a restore has work to do.
fn damage_minio(sb: &Sandbox) {
    let src = minio(sb);
    let keys: Vec<String> = contents(&src).into_keys().collect();
    rt().block_on(async {
        src.delete(&keys[0]).await.unwrap();
        src.put_bytes(&keys[1], b"damaged", "text/plain")
            .await
            .unwrap();
    });
}

const MID: Duration = Duration::from_secs(60);

/// Changes the sandbox's injected faults.
fn set_faults(sb: &Sandbox, f: impl FnOnce(&mut backup_agent_sandbox::model::Faults)) {
    sb.model()
        .update(|m| {
            f(&mut m.faults);
            Ok(())
        })
        .unwrap();
}

/// After a restore, mysql-k8s takes no backup until it is given a new S3 path (it says
/// "Move restored cluster to another S3 repository"): the next backup is of the other parts.
const AFTER_RESTORE: [&str; 2] = ["--components", "mlmd,mlpipeline"];

// ---- Destination S3 ----

#[test]
fn destination_down_at_start() {
    let mut sb = sandbox(6, 0);
    let id = backs_up(&sb, &[], &[]);
    let expected = contents(&minio(&sb));
    damage_minio(&sb);
    let b = before(&sb);
    sb.kill_s3(S3Role::Dest);
    let endpoint = format!("127.0.0.1:{}", sb.info.dest.port);

    let run = agent(&sb, &["create-backup"], &[]);
    assert_ne!(run.0, 0, "{}", run.2);
    assert!(run.2.contains(&endpoint), "names the endpoint: {}", run.2);
    assert_eq!(scales(&sb), b.scales);
    let run = agent(&sb, &["restore", &id, "--no-safety-backup"], &[]);
    assert_ne!(run.0, 0, "{}", run.2);
    assert!(run.2.contains(&endpoint), "names the endpoint: {}", run.2);
    assert_eq!(scales(&sb), b.scales);

    sb.restart_s3(S3Role::Dest).unwrap();
    assert_eq!(
        completed_ids(&sb),
        b.completed,
        "nothing completed while it was down"
    );
    restores(&sb, &id, &[], &[], &expected);
    backs_up(&sb, &AFTER_RESTORE, &[]);
}

#[test]
fn destination_killed_mid_upload_and_restarted_the_run_retries_and_completes() {
    let mut sb = sandbox(8, 0);
    let proxy = FaultProxy::start(&sb.info.dest.endpoint()).unwrap();
    let via = proxy.endpoint();
    let env = [("BACKUP_AGENT_S3_ENDPOINT", via.as_str())];
    let parts = ["--components", "mlmd,mlpipeline"];
    let expected = contents(&minio(&sb));

    // Backup: the server dies while the packs are on their way, and comes back.
    proxy.hold("/packs/");
    let mut args = vec!["create-backup", "--output", "json"];
    args.extend_from_slice(&parts);
    let child = spawn_agent(&sb, &args, &env);
    wait_for("a pack upload", MID, || proxy.held() > 0);
    sb.kill_s3(S3Role::Dest);
    proxy.release();
    sb.restart_s3(S3Role::Dest).unwrap();
    let (code, out, err) = finish(child);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(err.contains("retry"), "the outage was retried: {err}");
    let id = completed_ids(&sb).pop().expect("completed");
    let (code, _, err) = agent(&sb, &["verify-backup", &id, "--read-data"], &[]);
    assert_eq!(code, 0, "{err}");

    // Restore: it dies while the packs are read back.
    damage_minio(&sb);
    proxy.hold("/packs/");
    let mut args = vec!["restore", &id, "--no-safety-backup"];
    args.extend_from_slice(&parts);
    let child = spawn_agent(&sb, &args, &env);
    wait_for("a pack download", MID, || proxy.held() > 0);
    sb.kill_s3(S3Role::Dest);
    proxy.release();
    sb.restart_s3(S3Role::Dest).unwrap();
    let (code, out, err) = finish(child);
    assert_eq!(code, 0, "{out}\n{err}");
    // The request that met the dead server was sent again.
    let mut sent: BTreeMap<String, usize> = BTreeMap::new();
    for r in proxy.seen().iter().filter(|r| r.target.contains("/packs/")) {
        *sent
            .entry(format!("{} {}", r.method, r.target))
            .or_default() += 1;
    }
    assert!(sent.values().any(|n| *n > 1), "retried: {sent:#?}\n{err}");
    assert_eq!(contents(&minio(&sb)), expected);
}

/// Verifies `id` with every blob read back.
fn reads_back(sb: &Sandbox, id: &str) {
    let (code, out, err) = agent(sb, &["verify-backup", id, "--read-data"], &[]);
    assert_eq!(code, 0, "{id}: {out}\n{err}");
}

/// Rewrites `n` mlpipeline objects (after the first `skip`) with new bytes, tagged so each call
/// differs.
fn rewrite(sb: &Sandbox, skip: usize, n: usize, tag: &str) {
    let m = minio(sb);
    let keys: Vec<String> = contents(&m).into_keys().skip(skip).take(n).collect();
    for k in keys {
        let body = format!("{tag}: {k}").repeat(40);
        rt().block_on(m.put_bytes(&k, body.as_bytes(), "text/plain"))
            .unwrap();
    }
}

/// SIGKILL while a pack is on its way (backup), and while a repack uploads its new pack or
/// writes the kept backup's new manifest (prune): every kept backup still reads back whole,
/// and the same command run again completes.
#[test]
fn killed_during_a_pack_upload_or_a_repack_nothing_kept_is_lost() {
    let sb = sandbox(12, 0);
    let proxy = FaultProxy::start(&sb.info.dest.endpoint()).unwrap();
    let via = proxy.endpoint();
    let env = [("BACKUP_AGENT_S3_ENDPOINT", via.as_str())];
    let parts = ["--components", "mlmd,mlpipeline"];
    let first = backs_up(&sb, &parts, &env);

    // A backup killed with its pack upload in flight.
    rewrite(&sb, 0, 4, "day 2");
    proxy.hold("/packs/");
    let mut args = vec!["create-backup", "--output", "json"];
    args.extend_from_slice(&parts);
    let mut child = spawn_agent(&sb, &args, &env);
    wait_for("a pack upload", MID, || proxy.held() > 0);
    child.kill().unwrap();
    child.wait().unwrap();
    proxy.release();
    let (code, out, err) = agent(&sb, &["recover"], &[]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert_eq!(newest_failed(&sb).phase, Phase::Failed);
    reads_back(&sb, &first);
    let second = backs_up(&sb, &parts, &env);
    reads_back(&sb, &second);
    assert_eq!(completed_ids(&sb), [first.clone(), second.clone()]);

    // Repacks killed at two points: writing the kept backup's new manifest (its new pack is
    // up), and uploading the new pack. Each time the next prune finishes the job. Each round
    // rewrites other objects, so the pack the last round wrote is sparse in its turn.
    let repack = ["prune", "--keep-last", "1", "--max-unused", "0"];
    for (round, point) in [(3, "PUT /mlpipeline."), (4, "PUT /packs/")] {
        rewrite(&sb, 3 * (round - 3), 3, &format!("day {round}"));
        let kept = backs_up(&sb, &parts, &env);
        proxy.hold(point);
        let mut child = spawn_agent(&sb, &repack, &env);
        wait_for(&format!("the repack at {point}"), MID, || proxy.held() > 0);
        child.kill().unwrap();
        child.wait().unwrap();
        proxy.release();
        reads_back(&sb, &kept);
        let (code, out, err) = agent(&sb, &repack, &env);
        assert_eq!(code, 0, "round {round}: {out}\n{err}");
        assert_eq!(completed_ids(&sb), [kept.as_str()], "round {round}");
        reads_back(&sb, &kept);
        let (code, plan, err) = agent(
            &sb,
            &[&repack[..], &["--dry-run", "--output", "json"]].concat(),
            &env,
        );
        assert_eq!(code, 0, "{err}");
        let plan: serde_json::Value = serde_json::from_str(&plan).unwrap();
        assert_eq!(plan["bytes-freed"], 0, "round {round}: {plan}");
        assert_eq!(plan["repack-packs"], 0, "round {round}: {plan}");
        assert!(!lock_held(&sb));
    }
    let expected = contents(&minio(&sb));
    damage_minio(&sb);
    let newest = completed_ids(&sb).pop().unwrap();
    restores(&sb, &newest, &parts, &env, &expected);
}

#[test]
fn destination_slow() {
    let sb = sandbox(8, 0);
    let proxy = FaultProxy::start(&sb.info.dest.endpoint()).unwrap();
    proxy.set_latency(Duration::from_millis(150));
    let via = proxy.endpoint();
    let env = [("BACKUP_AGENT_S3_ENDPOINT", via.as_str())];
    let expected = contents(&minio(&sb));
    let b = before(&sb);
    let id = backs_up(&sb, &[], &env);
    assert_eq!(scales(&sb), b.scales);
    damage_minio(&sb);
    restores(&sb, &id, &[], &env, &expected);
    assert_eq!(scales(&sb), b.scales);
    assert!(
        proxy.seen().len() > 20,
        "the requests went through the slow proxy"
    );
}

/// Runs the agent with `args` through the proxy, holds its first request whose path matches
/// `pattern` (`what` it is, for a timeout's message), sets `fault` on the proxy meanwhile, then
/// lets everything through: the run's exit code, stdout and stderr.
fn run_with_fault_at(
    sb: &Sandbox,
    proxy: &FaultProxy,
    pattern: &str,
    what: &str,
    args: &[&str],
    env: &[(&str, &str)],
    fault: impl FnOnce(&FaultProxy),
) -> (i32, String, String) {
    proxy.hold(pattern);
    let child = spawn_agent(sb, args, env);
    wait_for(what, MID, || proxy.held() > 0);
    fault(proxy);
    proxy.release();
    finish(child)
}

#[test]
fn destination_returns_500s_for_a_while() {
    let sb = sandbox(8, 0);
    let proxy = FaultProxy::start(&sb.info.dest.endpoint()).unwrap();
    let via = proxy.endpoint();
    let env = [("BACKUP_AGENT_S3_ENDPOINT", via.as_str())];
    let parts = ["--components", "mlmd,mlpipeline"];
    let expected = contents(&minio(&sb));

    let mut args = vec!["create-backup", "--output", "json"];
    args.extend_from_slice(&parts);
    let (code, out, err) =
        run_with_fault_at(&sb, &proxy, "/packs/", "a pack upload", &args, &env, |p| {
            p.fail_next(6, 500)
        });
    assert_eq!(code, 0, "{out}\n{err}");
    assert_eq!(proxy.failures_left(), 0, "every 500 was met");
    assert!(err.contains("HTTP 500"), "{err}");
    let id = completed_ids(&sb).pop().unwrap();

    damage_minio(&sb);
    let mut args = vec!["restore", &id, "--no-safety-backup"];
    args.extend_from_slice(&parts);
    let (code, out, err) = run_with_fault_at(
        &sb,
        &proxy,
        "/packs/",
        "a pack download",
        &args,
        &env,
        |p| p.fail_next(6, 503),
    );
    assert_eq!(code, 0, "{out}\n{err}");
    assert_eq!(proxy.failures_left(), 0);
    assert!(err.contains("HTTP 503"), "{err}");
    assert_eq!(contents(&minio(&sb)), expected);

    // A full store (MinIO answers 507 then): not retried, named, nothing completed.
    rt().block_on(minio(&sb).put_bytes("new/after-restore.txt", b"more", "text/plain"))
        .unwrap();
    let b = before(&sb);
    let mut args = vec!["create-backup"];
    args.extend_from_slice(&parts);
    // One 507 only: had it been retried, the retry would have gone through.
    let run = run_with_fault_at(&sb, &proxy, "/packs/", "a pack upload", &args, &env, |p| {
        p.fail_next(1, 507)
    });
    failed_cleanly(&sb, &b, &run, &["HTTP 507", "out of space"]);
    assert_eq!(proxy.failures_left(), 0);
    newest_failed(&sb);
}

#[test]
fn destination_disk_full() {
    // A destination directory (an NFS mount, say) on a disk too small for the bucket.
    let sb = sandbox(4, 1);
    let disk = Mount::new("size=6m");
    let dir = disk.path().to_str().unwrap().to_string();
    let env = [
        ("BACKUP_AGENT_S3_ENDPOINT", ""),
        ("BACKUP_AGENT_DESTINATION_DIR", dir.as_str()),
    ];
    let local = Store::local(disk.path());
    let completed_here = || {
        rt().block_on(repository::list(&local))
            .unwrap()
            .into_iter()
            .filter(|l| matches!(l, repository::Listed::Backup(s) if s.phase == Phase::Completed))
            .count()
    };
    let b = before(&sb);
    let run = agent(&sb, &["create-backup"], &env);
    failed_cleanly(&sb, &b, &run, &["No space left on device"]);
    assert_eq!(completed_here(), 0, "nothing completed on the full disk");
    disk.remount("size=64m");
    backs_up(&sb, &[], &env);
    assert_eq!(completed_here(), 1);
}

// ---- MinIO ----

#[test]
fn minio_wrong_credentials() {
    let sb = sandbox(6, 0);
    let id = backs_up(&sb, &[], &[]);
    let expected = contents(&minio(&sb));
    damage_minio(&sb);
    let b = before(&sb);
    let good = crate::common::set_minio_relation_secret(&sb, "wrong-minio-secret-4471");

    let run = agent(&sb, &["create-backup"], &[]);
    failed_cleanly(&sb, &b, &run, &["MinIO", "access denied"]);
    assert!(!run.2.contains("wrong-minio-secret-4471"));
    let run = agent(&sb, &["restore", &id, "--no-safety-backup"], &[]);
    failed_cleanly(&sb, &b, &run, &["MinIO", "access denied"]);
    assert!(!run.2.contains("wrong-minio-secret-4471"));

    crate::common::set_minio_relation_secret(&sb, &good);
    restores(&sb, &id, &[], &[], &expected);
    backs_up(&sb, &AFTER_RESTORE, &[]);
}

/// The first key of MinIO's bucket, and a pattern that matches its requests only.
fn first_key(sb: &Sandbox) -> (String, String) {
    let key = contents(&minio(sb)).into_keys().next().unwrap();
    let pattern = format!("/mlpipeline/{key}");
    (key, pattern)
}

#[test]
fn minio_killed_mid_read_and_mid_write() {
    let mut sb = sandbox(6, 0);
    let proxy = FaultProxy::start(&sb.info.minio.endpoint()).unwrap();
    let via = proxy.endpoint();
    let through = ["--minio-endpoint", via.as_str()];
    let id = backs_up(&sb, &[], &[]);
    let expected = contents(&minio(&sb));
    let (key, pattern) = first_key(&sb);
    let b = before(&sb);

    // Backup: MinIO dies while an object is being read (changed, so that it is read again).
    rt().block_on(minio(&sb).put_bytes(&key, b"changed since the last backup", "text/plain"))
        .unwrap();
    proxy.hold(&pattern);
    let mut args = vec!["create-backup"];
    args.extend_from_slice(&through);
    let child = spawn_agent(&sb, &args, &[]);
    wait_for("the object read", MID, || proxy.held() > 0);
    sb.kill_s3(S3Role::Minio);
    proxy.release();
    let run = finish(child);
    failed_cleanly(&sb, &b, &run, &["mlpipeline", &key]);
    let sf = newest_failed(&sb);
    assert!(!sf.errors.is_empty());
    sb.restart_s3(S3Role::Minio).unwrap();

    // Restore: MinIO dies while an object is being written back.
    rt().block_on(minio(&sb).delete(&key)).unwrap();
    let b = before(&sb);
    proxy.hold(&pattern);
    let mut args = vec!["restore", &id, "--no-safety-backup"];
    args.extend_from_slice(&through);
    let child = spawn_agent(&sb, &args, &[]);
    wait_for("the object write", MID, || proxy.held() > 0);
    sb.kill_s3(S3Role::Minio);
    proxy.release();
    let run = finish(child);
    failed_cleanly(&sb, &b, &run, &["mlpipeline", &key]);
    restore_recorded_failed(&sb, &id);
    sb.restart_s3(S3Role::Minio).unwrap();

    restores(&sb, &id, &through, &[], &expected);
    let mut next = through.to_vec();
    next.extend(AFTER_RESTORE);
    backs_up(&sb, &next, &[]);
}

/// A backup during which `change` is done to one object after the listing and before the
/// object is read (its GET held at a proxy meanwhile): the sandbox, the key, the run.
fn back_up_changing_an_object(
    change: impl FnOnce(&Store, &str),
) -> (Sandbox, String, (i32, String, String)) {
    let sb = sandbox(6, 0);
    let proxy = FaultProxy::start(&sb.info.minio.endpoint()).unwrap();
    let via = proxy.endpoint();
    let (key, pattern) = first_key(&sb);
    let args = [
        "create-backup",
        "--minio-endpoint",
        &via,
        "--output",
        "json",
    ];
    let run = run_with_fault_at(&sb, &proxy, &pattern, "the object read", &args, &[], |_| {
        change(&minio(&sb), &key)
    });
    (sb, key, run)
}

#[test]
fn an_object_deleted_between_listing_and_reading_is_left_out_and_said() {
    let (sb, key, (code, out, err)) = back_up_changing_an_object(|store, key| {
        rt().block_on(store.delete(key)).unwrap();
    });
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(
        err.contains(&format!("{key} was deleted while the backup ran")),
        "{err}"
    );
    let id = completed_ids(&sb).pop().unwrap();
    let manifest = manifest_of(&sb, &id);
    assert!(!manifest.contains_key(&key), "not in the manifest");
    // What was backed up is exactly what is there now, and restores so.
    let expected = contents(&minio(&sb));
    assert_eq!(manifest.len(), expected.len());
    damage_minio(&sb);
    restores(&sb, &id, &[], &[], &expected);
}

#[test]
fn an_object_changed_between_listing_and_reading_is_recorded_as_read() {
    use sha2::Digest;
    let new = b"written after the listing, before the read: a different size".to_vec();
    let (sb, key, (code, out, err)) = back_up_changing_an_object(|store, key| {
        rt().block_on(store.put_bytes(key, &new, "text/plain"))
            .unwrap();
    });
    assert_eq!(code, 0, "{out}\n{err}");
    let id = completed_ids(&sb).pop().unwrap();
    let entry = &manifest_of(&sb, &id)[&key];
    assert_eq!(
        entry.size,
        new.len() as u64,
        "the size read, not the size listed"
    );
    assert_eq!(entry.sha256, hex::encode(sha2::Sha256::digest(&new)));
    let expected = contents(&minio(&sb));
    damage_minio(&sb);
    restores(&sb, &id, &[], &[], &expected);
}

fn manifest_of(sb: &Sandbox, id: &str) -> BTreeMap<String, backup_agent::repository::Entry> {
    let store = repo(sb);
    let sf = rt().block_on(repository::load(&store, id)).unwrap();
    assert!(sf.components.mlpipeline.is_some(), "an mlpipeline capture");
    crate::common::manifest_of(&store, &sf)
        .into_iter()
        .map(|e| (e.key.clone(), e))
        .collect()
}

// ---- juju ----

#[test]
fn juju_cli_missing() {
    let sb = sandbox(4, 0);
    let id = backs_up(&sb, &[], &[]);
    let b = before(&sb);
    let no_juju = [("PATH", "/usr/bin:/bin")];
    let run = agent(&sb, &["create-backup"], &no_juju);
    failed_cleanly(&sb, &b, &run, &["juju", "PATH"]);
    let run = agent(&sb, &["restore", &id, "--no-safety-backup"], &no_juju);
    failed_cleanly(&sb, &b, &run, &["juju", "PATH"]);
    assert_eq!(statefiles(&sb).len(), 1, "nothing was started");
    backs_up(&sb, &[], &[]);
}

fn set_juju_errors(sb: &Sandbox, n: u32) {
    set_faults(sb, |f| f.juju_errors = n);
}

#[test]
fn juju_failing_for_a_moment_is_retried() {
    let sb = sandbox(4, 0);
    let expected = contents(&minio(&sb));
    let b = before(&sb);
    set_juju_errors(&sb, 2);
    let id = backs_up(&sb, &[], &[]);
    assert_eq!(sb.model().read().unwrap().faults.juju_errors, 0);
    assert_eq!(scales(&sb), b.scales);
    damage_minio(&sb);
    set_juju_errors(&sb, 2);
    let err = restores(&sb, &id, &[], &[], &expected);
    assert!(err.contains("cannot connect to API"), "retried: {err}");
    assert_eq!(sb.model().read().unwrap().faults.juju_errors, 0);
    assert_eq!(scales(&sb), b.scales);
}

#[test]
fn juju_failing_for_good_mid_run_is_named_and_repaired_by_the_next_run() {
    let sb = sandbox(4, 0);
    let b = before(&sb);
    let child = spawn_agent(&sb, &["create-backup"], &[]);
    wait_for("capturing", MID, || {
        statefiles(&sb)
            .last()
            .is_some_and(|s| s.phase == Phase::Capturing)
    });
    set_juju_errors(&sb, 1_000_000);
    let (code, _, err) = finish(child);
    assert_ne!(code, 0);
    assert!(err.contains("cannot connect to API"), "{err}");
    assert!(
        err.contains("juju scale-application"),
        "says how to put scales back: {err}"
    );
    newest_failed(&sb);
    assert_eq!(completed_ids(&sb), b.completed);
    set_juju_errors(&sb, 0);
    let (code, out, err) = agent(&sb, &["recover"], &[]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert_eq!(scales(&sb), b.scales, "the next run put the scales back");
    backs_up(&sb, &[], &[]);
}

#[test]
fn an_action_that_times_out() {
    let sb = sandbox(4, 0);
    let id = backs_up(&sb, &[], &[]);
    let b = before(&sb);
    set_faults(&sb, |f| {
        f.action_delay_ms = 5000;
    });
    let run = agent(&sb, &["create-backup", "--action-timeout", "1s"], &[]);
    failed_cleanly(&sb, &b, &run, &["1s", "juju show-task"]);
    newest_failed(&sb);
    let run = agent(
        &sb,
        &[
            "restore",
            &id,
            "--no-safety-backup",
            "--action-timeout",
            "1s",
        ],
        &[],
    );
    failed_cleanly(&sb, &b, &run, &["1s", "juju show-task"]);
    restore_recorded_failed(&sb, &id);
    set_faults(&sb, |f| {
        f.action_delay_ms = 0;
    });
    // The timed-out restore action finished in the background: kfp-db now waits for a new S3
    // path, as mysql-k8s does after any restore.
    backs_up(&sb, &AFTER_RESTORE, &[]);
}

#[test]
fn a_scale_that_never_settles_is_a_bounded_wait() {
    let sb = sandbox(4, 0);
    let id = backs_up(&sb, &[], &[]);
    let b = before(&sb);
    let hang = |on: bool| {
        set_faults(&sb, |f| {
            if on {
                f.hang_scale.insert("kfp-metadata-writer".into());
            } else {
                f.hang_scale.clear();
            }
        })
    };
    hang(true);
    let started = std::time::Instant::now();
    let run = agent(&sb, &["create-backup", "--scale-timeout", "2s"], &[]);
    assert!(started.elapsed() < Duration::from_secs(60), "bounded");
    assert_ne!(run.0, 0);
    assert!(run.2.contains("kfp-metadata-writer"), "{}", run.2);
    assert!(run.2.contains("2s"), "{}", run.2);
    newest_failed(&sb);
    let run = agent(
        &sb,
        &[
            "restore",
            &id,
            "--no-safety-backup",
            "--scale-timeout",
            "2s",
        ],
        &[],
    );
    assert_ne!(run.0, 0);
    assert!(run.2.contains("kfp-metadata-writer"), "{}", run.2);
    restore_recorded_failed(&sb, &id);
    hang(false);
    // Once the application can move again, the next run puts every scale back.
    let (code, out, err) = agent(&sb, &["recover"], &[]);
    assert_eq!(code, 0, "{out}\n{err}");
    wait_for("scales back", MID, || scales(&sb) == b.scales);
    assert_eq!(completed_ids(&sb), b.completed);
    backs_up(&sb, &[], &[]);
}

// ---- Kubernetes ----

fn set_k8s_down(sb: &Sandbox, down: bool) {
    set_faults(sb, |f| f.k8s_unavailable = down);
}

#[test]
fn kubernetes_api_down() {
    let sb = sandbox(4, 0);
    let id = backs_up(&sb, &[], &[]);
    let b = before(&sb);
    set_k8s_down(&sb, true);
    let run = agent(&sb, &["create-backup"], &[]);
    failed_cleanly(&sb, &b, &run, &["Kubernetes API", "503"]);
    let run = agent(&sb, &["restore", &id, "--no-safety-backup"], &[]);
    failed_cleanly(&sb, &b, &run, &["Kubernetes API", "503"]);
    set_k8s_down(&sb, false);
    backs_up(&sb, &[], &[]);
}

#[test]
fn an_exec_stream_cut_once_is_detected_and_retried() {
    let sb = sandbox(4, 0);
    set_faults(&sb, |f| {
        f.exec_cut_after_bytes = Some(4096);
        f.exec_cut_once = true;
    });
    let b = before(&sb);
    let (code, out, err) = agent(
        &sb,
        &["create-backup", "--components", "mlmd", "--output", "json"],
        &[],
    );
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(err.contains("was cut after"), "detected and retried: {err}");
    assert!(sb
        .model()
        .read()
        .unwrap()
        .faults
        .exec_cut_after_bytes
        .is_none());
    let id = completed_ids(&sb).pop().unwrap();
    let (code, _, err) = agent(&sb, &["verify-backup", &id, "--read-data"], &[]);
    assert_eq!(code, 0, "the copy is whole: {err}");
    assert_eq!(scales(&sb), b.scales);
}

#[test]
fn the_mlmd_file_changing_during_the_copy_is_detected() {
    let sb = sandbox(4, 0);
    set_faults(&sb, |f| {
        f.exec_pause_after_bytes = Some(8192);
    });
    let child = spawn_agent(
        &sb,
        &["create-backup", "--components", "mlmd", "--output", "json"],
        &[],
    );
    wait_for("the copy paused", MID, || {
        sb.model().read().unwrap().faults.exec_paused
    });
    // A writer the quiesce did not stop changes the file mid-copy.
    let db = rusqlite::Connection::open(sb.layout.mlmd_db()).unwrap();
    db.execute_batch("CREATE TABLE written_mid_copy(x); INSERT INTO written_mid_copy VALUES (1);")
        .unwrap();
    drop(db);
    set_faults(&sb, |f| {
        f.exec_paused = false;
    });
    let (code, out, err) = finish(child);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(err.contains("changed"), "detected: {err}");
    // What was kept is the file after the change, whole.
    let id = completed_ids(&sb).pop().unwrap();
    let sf = rt().block_on(repository::load(&repo(&sb), &id)).unwrap();
    let counts = &sf.components.mlmd.expect("mlmd captured").row_counts;
    assert_eq!(counts.get("written_mid_copy"), Some(&1), "{counts:?}");
}

// ---- The agent itself ----

#[test]
fn two_agents_started_at_once() {
    let sb = sandbox(4, 0);
    let b = before(&sb);
    let one = spawn_agent(&sb, &["create-backup"], &[]);
    let two = spawn_agent(&sb, &["create-backup"], &[]);
    let (r1, r2) = (finish(one), finish(two));
    let ok = [&r1, &r2].iter().filter(|r| r.0 == 0).count();
    assert_eq!(ok, 1, "exactly one runs:\n{}\n{}", r1.2, r2.2);
    let loser = if r1.0 == 0 { &r2 } else { &r1 };
    assert!(
        loser.2.contains("lock"),
        "the other names the lock: {}",
        loser.2
    );
    assert_eq!(scales(&sb), b.scales);
    assert_eq!(completed_ids(&sb).len(), b.completed.len() + 1);
    assert!(!lock_held(&sb));
    backs_up(&sb, &[], &[]);
}

// ---- Local disk ----

/// A tmpfs of `size` mounted on a new directory (removed and unmounted on drop).
struct Mount(tempfile::TempDir);

impl Mount {
    fn new(options: &str) -> Mount {
        let dir = tempfile::tempdir().unwrap();
        let st = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", options, "tmpfs"])
            .arg(dir.path())
            .status()
            .unwrap();
        assert!(
            st.success(),
            "mount -t tmpfs -o {options} (the tests run as root)"
        );
        Mount(dir)
    }
    fn path(&self) -> &std::path::Path {
        self.0.path()
    }
    fn remount(&self, options: &str) {
        let st = std::process::Command::new("mount")
            .args(["-o", &format!("remount,{options}")])
            .arg(self.0.path())
            .status()
            .unwrap();
        assert!(st.success());
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg(self.0.path())
            .status();
    }
}

fn files_under(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = vec![];
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(files_under(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[test]
fn spool_disk_full_mid_run() {
    let sb = sandbox(2, 2);
    let id = backs_up(&sb, &[], &[]);
    let expected = contents(&minio(&sb));
    let spool = Mount::new("size=64m");
    let dir = spool.path().to_str().unwrap().to_string();
    let proxy = FaultProxy::start(&sb.info.minio.endpoint()).unwrap();
    let via = proxy.endpoint();
    let b = before(&sb);

    // Room at the preflight; then something else fills the disk while the copy runs. Format
    // v2 streams a large object straight into a pack of its own, so only a v1 run (nothing
    // packed) spools it; v2's other spool writes (the MLMD dump, sort spills) may or may not
    // have finished by then, which would make the failure a race.
    let large = rt()
        .block_on(minio(&sb).list(""))
        .unwrap()
        .into_iter()
        .max_by_key(|o| o.size)
        .unwrap()
        .key;
    rt().block_on(minio(&sb).put_bytes(&large, &vec![7u8; 13 << 20], "application/octet-stream"))
        .unwrap();
    proxy.hold(&format!("/mlpipeline/{large}"));
    let child = spawn_agent(
        &sb,
        &[
            "create-backup",
            "--spool",
            &dir,
            "--minio-endpoint",
            &via,
            "--pack-threshold",
            "0",
        ],
        &[],
    );
    wait_for("the large object read", MID, || proxy.held() > 0);
    let filler = spool.path().join("filler");
    let _ = std::fs::write(&filler, vec![0u8; 64 << 20]);
    proxy.release();
    let run = finish(child);
    failed_cleanly(&sb, &b, &run, &["No space left on device"]);
    newest_failed(&sb);
    std::fs::remove_file(&filler).unwrap();
    let left = files_under(spool.path());
    assert!(left.is_empty(), "the spool is cleaned up: {left:?}");

    // A restore with no room at all says so before it changes anything.
    let _ = std::fs::write(&filler, vec![0u8; 64 << 20]);
    let run = agent(
        &sb,
        &["restore", &id, "--no-safety-backup", "--spool", &dir],
        &[],
    );
    failed_cleanly(&sb, &b, &run, &[&dir]);
    std::fs::remove_file(&filler).unwrap();
    drop(proxy);
    damage_minio(&sb);
    restores(&sb, &id, &["--spool", &dir], &[], &expected);
    let mut next = vec!["--spool", dir.as_str()];
    next.extend(AFTER_RESTORE);
    backs_up(&sb, &next, &[]);
}

#[test]
fn temp_dir_not_writable() {
    let sb = sandbox(4, 0);
    let id = backs_up(&sb, &[], &[]);
    let b = before(&sb);
    let ro = Mount::new("ro,size=1m");
    let dir = ro.path().to_str().unwrap().to_string();
    let run = agent(&sb, &["create-backup", "--spool", &dir], &[]);
    failed_cleanly(&sb, &b, &run, &[&dir]);
    let run = agent(&sb, &["create-backup"], &[("TMPDIR", &dir)]);
    failed_cleanly(&sb, &b, &run, &[&dir]);
    let run = agent(
        &sb,
        &["restore", &id, "--no-safety-backup"],
        &[("TMPDIR", &dir)],
    );
    failed_cleanly(&sb, &b, &run, &[&dir]);
    assert_eq!(statefiles(&sb).len(), 1, "nothing was started");
    backs_up(&sb, &[], &[]);
}

/// Connections dropped mid-answer (after the server acted on the request) during a pack
/// upload and during a restore's reads: retried, nothing lost, the bucket restored exactly.
#[test]
fn connections_reset_mid_answer_are_retried() {
    let sb = sandbox(8, 0);
    let proxy = FaultProxy::start(&sb.info.dest.endpoint()).unwrap();
    let via = proxy.endpoint();
    let env = [("BACKUP_AGENT_S3_ENDPOINT", via.as_str())];
    let parts = ["--components", "mlmd,mlpipeline"];
    let expected = contents(&minio(&sb));

    let mut args = vec!["create-backup", "--output", "json"];
    args.extend_from_slice(&parts);
    let (code, out, err) =
        run_with_fault_at(&sb, &proxy, "/packs/", "a pack upload", &args, &env, |p| {
            p.reset_next(4)
        });
    assert_eq!(code, 0, "{out}\n{err}");
    assert_eq!(proxy.resets_left(), 0, "every reset was met");
    let id = completed_ids(&sb).pop().unwrap();

    damage_minio(&sb);
    let mut args = vec!["restore", &id, "--no-safety-backup"];
    args.extend_from_slice(&parts);
    let (code, out, err) = run_with_fault_at(
        &sb,
        &proxy,
        "/packs/",
        "a pack download",
        &args,
        &env,
        |p| p.reset_next(4),
    );
    assert_eq!(code, 0, "{out}\n{err}");
    assert_eq!(proxy.resets_left(), 0);
    assert!(err.contains("reset") || err.contains("retry"), "{err}");
    assert_eq!(contents(&minio(&sb)), expected);
    let (code, out, err) = agent(&sb, &["verify-backup", &id, "--read-data"], &env);
    assert_eq!(code, 0, "{out}\n{err}");
}

/// A statefile read answered 500 (found by the soak: a run's recovery stopped on one) is
/// retried: listing, recovering and drilling go on.
#[test]
fn statefile_reads_answered_500_are_retried() {
    let sb = sandbox(4, 0);
    let id = crate::common::backup(&sb, "first");
    let proxy = FaultProxy::start(&sb.info.dest.endpoint()).unwrap();
    let via = proxy.endpoint();
    let env = [("BACKUP_AGENT_S3_ENDPOINT", via.as_str())];
    for args in [
        vec!["list-backups"],
        vec!["recover"],
        vec!["drill", "--dry-run"],
    ] {
        let (code, out, err) = run_with_fault_at(
            &sb,
            &proxy,
            "GET statefile.json",
            "a statefile read",
            &args,
            &env,
            |p| p.fail_next(2, 500),
        );
        assert_eq!(code, 0, "{args:?}: {out}\n{err}");
        assert_eq!(proxy.failures_left(), 0, "{args:?}: every 500 was met");
        if args[0] != "recover" {
            assert!(out.contains(&id), "{args:?}: {out}");
        }
    }
}
