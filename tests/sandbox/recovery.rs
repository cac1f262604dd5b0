//! Runs really killed (SIGKILL: no handler runs) at seeded points of a backup, a restore and a
//! prune. Whatever the point, the next run (`recover`, or any mutating command) puts the
//! recorded scales back, marks the run failed, takes the lock over at once (its holder is a
//! dead process on this machine), and every kept backup still verifies.

use std::process::Child;
use std::time::{Duration, Instant};

use crate::common::{agent, backup, lock_held, minio, repo, rt, scales, statefiles};
use backup_agent::repository::{self, Phase, Statefile};
use backup_agent_sandbox::Sandbox;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn spawn(sb: &Sandbox, args: &[&str]) -> Child {
    sb.command(env!("CARGO_BIN_EXE_backup-agent"))
        .args(args)
        .env_remove("RUST_LOG")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap()
}

/// Polls `reached` until it holds (or the run ended by itself), then waits a seeded extra
/// and sends `signal`, and waits for the process to end (promptly). Returns whether the
/// signal hit a running process.
fn signal_at(child: &mut Child, reached: impl Fn() -> bool, extra: Duration, signal: i32) -> bool {
    let deadline = Instant::now() + Duration::from_secs(120);
    while !reached() {
        if child.try_wait().unwrap().is_some() {
            return false;
        }
        assert!(Instant::now() < deadline, "the run never reached the point");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(extra);
    let alive = child.try_wait().unwrap().is_none();
    unsafe { libc::kill(child.id() as i32, signal) };
    let sent = Instant::now();
    child.wait().unwrap();
    assert!(
        sent.elapsed() < Duration::from_secs(60),
        "the run stops promptly on signal {signal}"
    );
    alive
}

fn kill_at(child: &mut Child, reached: impl Fn() -> bool, extra: Duration) -> bool {
    signal_at(child, reached, extra, libc::SIGKILL)
}

/// A restore of the parts that restore without mysql-k8s (which needs a new S3 path after).
fn spawn_restore(sb: &Sandbox, id: &str) -> Child {
    spawn(
        sb,
        &[
            "restore",
            id,
            "--no-safety-backup",
            "--components",
            "mlmd,mlpipeline",
        ],
    )
}

/// A restore has written its journal: it is under way.
fn restore_running(sb: &Sandbox) -> bool {
    statefiles(sb).iter().any(|s| {
        s.history
            .iter()
            .any(|h| h["event"] == "restore" && h["phase"] == "running")
    })
}

fn verifies(sb: &Sandbox, id: &str) {
    let (code, out, err) = agent(sb, &["verify-backup", id, "--read-data"], &[]);
    assert_eq!(code, 0, "{id}: {out}\n{err}");
}

fn recover(sb: &Sandbox) -> String {
    let (code, out, err) = agent(sb, &["recover"], &[]);
    assert_eq!(code, 0, "{out}\n{err}");
    out
}

#[test]
fn a_backup_killed_anywhere_is_repaired_by_the_next_run() {
    let sb = crate::common::sandbox(6);
    let before = scales(&sb);
    let kept = backup(&sb, "kept");
    let mut hit = 0;
    for seed in 0..4u64 {
        let mut rng = StdRng::seed_from_u64(seed);
        // The point: the lock taken, the journal written, the copy going, or the check.
        let phase = [
            Phase::Initialized,
            Phase::Quiescing,
            Phase::Capturing,
            Phase::Verifying,
        ][seed as usize % 4];
        let extra = Duration::from_millis(rng.random_range(0..400));
        let mut child = spawn(
            &sb,
            &["create-backup", "--label", &format!("killed-{seed}")],
        );
        let reached = || match phase {
            Phase::Initialized => lock_held(&sb),
            p => statefiles(&sb)
                .iter()
                .any(|s| s.label == format!("killed-{seed}") && s.phase == p),
        };
        if !kill_at(&mut child, reached, extra) {
            continue;
        }
        hit += 1;
        let out = recover(&sb);
        let mine: Vec<Statefile> = statefiles(&sb)
            .into_iter()
            .filter(|s| s.label == format!("killed-{seed}"))
            .collect();
        // Killed before the first record: nothing to mark; else it is failed, saying why.
        for s in &mine {
            assert!(
                matches!(s.phase, Phase::Failed | Phase::Completed),
                "seed {seed} ({phase:?}): {:?}\n{out}",
                s.phase
            );
            if s.phase == Phase::Failed {
                assert!(
                    s.errors.iter().any(|e| e.message.contains("interrupted")),
                    "{:?}",
                    s.errors
                );
                assert!(s.quiesce.iter().all(|r| r.restored), "{:?}", s.quiesce);
                assert!(out.contains(&s.backup_id), "{out}");
            }
        }
        assert_eq!(
            scales(&sb),
            before,
            "seed {seed} ({phase:?}): scales are back"
        );
        assert!(!lock_held(&sb), "seed {seed}: no lock left");
    }
    assert!(hit >= 3, "only {hit} kills hit a running backup");
    verifies(&sb, &kept);
    // And the next backup just works.
    let next = backup(&sb, "after");
    verifies(&sb, &next);
}

#[test]
fn a_restore_killed_anywhere_is_repaired_by_the_next_run() {
    let sb = crate::common::sandbox(6);
    let before = scales(&sb);
    let id = backup(&sb, "to-restore");
    let mut hit = 0;
    for seed in 0..3u64 {
        let mut rng = StdRng::seed_from_u64(100 + seed);
        let extra = Duration::from_millis(rng.random_range(0..2500));
        let mut child = spawn_restore(&sb, &id);
        let reached = || restore_running(&sb);
        if !kill_at(&mut child, reached, extra) {
            continue;
        }
        hit += 1;
        let out = recover(&sb);
        let sf = rt().block_on(repository::load(&repo(&sb), &id)).unwrap();
        let restores: Vec<&serde_json::Value> = sf
            .history
            .iter()
            .filter(|h| h["event"] == "restore")
            .collect();
        assert!(
            restores.iter().all(|h| h["phase"] == "finished"),
            "seed {seed}: {restores:?}\n{out}"
        );
        let last = restores.last().unwrap();
        assert_eq!(last["outcome"], "failed", "{last}");
        assert!(
            last["error"].as_str().unwrap().contains("interrupted"),
            "{last}"
        );
        assert_eq!(scales(&sb), before, "seed {seed}: scales are back");
        assert!(!lock_held(&sb));
    }
    assert!(hit >= 2, "only {hit} kills hit a running restore");
    // The backup itself is untouched and a full restore now completes.
    verifies(&sb, &id);
    let (code, out, err) = agent(
        &sb,
        &[
            "restore",
            &id,
            "--no-safety-backup",
            "--components",
            "mlmd,mlpipeline",
        ],
        &[],
    );
    assert_eq!(code, 0, "{out}\n{err}");
}

#[test]
fn a_prune_killed_anywhere_leaves_every_kept_backup_whole() {
    let sb = crate::common::sandbox(6);
    let m = minio(&sb);
    for seed in 0..3u64 {
        let mut rng = StdRng::seed_from_u64(200 + seed);
        // Two backups with different blobs, so the prune has objects and blobs to delete.
        let old = backup(&sb, &format!("old-{seed}"));
        let objects = rt().block_on(m.list("")).unwrap();
        for o in objects.iter().take(3) {
            let body = format!("seed {seed}: {}", o.key).repeat(200);
            rt().block_on(m.put_bytes(&o.key, body.as_bytes(), "application/octet-stream"))
                .unwrap();
        }
        let keep = backup(&sb, &format!("keep-{seed}"));
        let extra = Duration::from_millis(rng.random_range(0..250));
        let mut child = spawn(&sb, &["prune", "--keep-last", "1"]);
        kill_at(&mut child, || lock_held(&sb), extra);
        // The kept backup is whole whatever was deleted.
        verifies(&sb, &keep);
        // The next run takes the dead prune's lock over and finishes the job.
        let (code, out, err) = agent(&sb, &["prune", "--keep-last", "1"], &[]);
        assert_eq!(code, 0, "seed {seed}: {out}\n{err}");
        let ids: Vec<String> = statefiles(&sb).into_iter().map(|s| s.backup_id).collect();
        assert_eq!(ids, vec![keep.clone()], "seed {seed}: {old} is gone");
        verifies(&sb, &keep);
        // Nothing is left that the kept backup does not use.
        let (_, plan, _) = agent(
            &sb,
            &["prune", "--keep-last", "1", "--dry-run", "--output", "json"],
            &[],
        );
        let plan: serde_json::Value = serde_json::from_str(&plan).unwrap();
        assert_eq!(plan["bytes-freed"], 0, "seed {seed}: {plan}");
        assert!(!lock_held(&sb));
    }
}

/// SIGTERM (a pod stopping, a Ctrl-C) at seeded points: the run itself puts everything back —
/// no `recover` needed — records why, and the next runs work.
#[test]
fn sigterm_anywhere_is_cleaned_up_by_the_run_itself() {
    let sb = crate::common::sandbox(6);
    let before = scales(&sb);
    let id = backup(&sb, "to-restore");
    let mut hit = 0;
    for seed in 0..3u64 {
        let mut rng = StdRng::seed_from_u64(200 + seed);
        let phase = [Phase::Quiescing, Phase::Capturing][rng.random_range(0..2)];
        let label = format!("term-{seed}");
        let mut child = spawn(&sb, &["create-backup", "--label", &label]);
        let reached = || {
            statefiles(&sb)
                .iter()
                .any(|s| s.label == label && s.phase == phase)
        };
        let extra = Duration::from_millis(rng.random_range(0..800));
        if signal_at(&mut child, reached, extra, libc::SIGTERM) {
            hit += 1;
        }
        // A run that ended by itself before its first record (refused at its preflight while
        // the pod restarts after the previous restore, say) leaves only scales and the lock.
        if let Some(mine) = statefiles(&sb).into_iter().find(|s| s.label == label) {
            match mine.phase {
                Phase::Completed => {}
                Phase::Failed => assert!(
                    mine.errors.iter().any(|e| e.message.contains("SIGTERM")),
                    "seed {seed}: {:?}",
                    mine.errors
                ),
                p => panic!("seed {seed}: left {p:?}"),
            }
        }
        assert_eq!(scales(&sb), before, "seed {seed}: backup's scales are back");
        assert!(!lock_held(&sb), "seed {seed}: lock released");

        let mut child = spawn_restore(&sb, &id);
        let reached = || restore_running(&sb);
        let extra = Duration::from_millis(rng.random_range(0..1500));
        if signal_at(&mut child, reached, extra, libc::SIGTERM) {
            hit += 1;
        }
        let sf = rt().block_on(repository::load(&repo(&sb), &id)).unwrap();
        if let Some(last) = sf.history.iter().rfind(|h| h["event"] == "restore") {
            assert_eq!(last["phase"], "finished", "seed {seed}: {last}");
            if last["outcome"] == "failed" {
                assert!(last.to_string().contains("SIGTERM"), "{last}");
            }
        }
        assert_eq!(
            scales(&sb),
            before,
            "seed {seed}: restore's scales are back"
        );
        assert!(!lock_held(&sb), "seed {seed}: lock released");
    }
    assert!(hit >= 4, "only {hit} of 6 signals hit a running command");
    verifies(&sb, &id);
    let next = backup(&sb, "after");
    verifies(&sb, &next);
}
