//! `bench scale`: memory and time against the number of objects. For each object count, a
//! bucket of small objects (1–4 KiB) is made, then each command runs once as the product runs
//! it, alone in its own process: a full backup, a no-change backup, two backups with 1% of the
//! objects changed, verify, a restore into an empty bucket, and a prune that forgets half of
//! the backups. rclone sync (default, and --fast-list) copies the same bucket in the same run,
//! for reference. The synthetic planner case then takes tens of millions of manifest entries
//! through the merge-join and the prune mark with no S3 at all.

use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::{ensure, Result};
use backup_agent::commands::prune::{self, Selection};
use backup_agent::components::check::{CheckContext, Mode, Verification};
use backup_agent::components::mlpipeline;
use backup_agent::components::Part;
use backup_agent::context::{Context as RunContext, Tuning};
use backup_agent::repository::{
    self, retention::Policy, Components, MlpipelineCapture, Phase, RequestType, Statefile,
};
use backup_agent_sandbox::seed::BucketSpec;
use serde::{Deserialize, Serialize};

use backup_agent_sandbox::s3::fault_proxy::{tally, FaultProxy};

use crate::lab::{Lab, Sample};
use crate::{say, worker};

#[derive(Debug, clap::Args)]
pub struct ScaleArgs {
    /// Object counts of the real-S3 cases.
    #[arg(long, value_delimiter = ',', default_value = "100000,1000000")]
    objects: Vec<usize>,
    /// Manifest entries of the synthetic planner cases (no S3).
    #[arg(long, value_delimiter = ',', default_value = "100000,1000000,10000000")]
    synthetic: Vec<u64>,
    /// A smoke run: 2,000 objects and 50,000 synthetic entries.
    #[arg(long)]
    quick: bool,
    /// Above this many objects rclone is not run: on this 2-core machine each of its full
    /// copies of a million small objects takes about 45 minutes (2.7 ms an object at 100 k),
    /// longer than all of backup-agent's commands together.
    #[arg(long, default_value_t = 200_000)]
    rclone_max: usize,
    /// Only the real-S3 cases.
    #[arg(long)]
    no_synthetic: bool,
    /// Results of an earlier run to report with this one's (one table, one chart).
    #[arg(long)]
    merge: Option<PathBuf>,
    #[arg(long, default_value = "bench/results")]
    out: PathBuf,
}

/// One measured run of one command.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Row {
    pub case: String,
    pub objects: u64,
    pub tool: String,
    pub secs: f64,
    pub max_rss_mib: f64,
    /// Requests or bytes that matter for this case (object bytes read, keys deleted...).
    pub note: String,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct ScaleResults {
    pub rows: Vec<Row>,
    pub checks: Vec<(String, bool)>,
    pub machine: Vec<(String, String)>,
    /// Written after every row, so that a run stopped midway keeps what it measured.
    #[serde(skip)]
    pub save_to: Option<PathBuf>,
}

impl ScaleResults {
    fn add(&mut self, case: &str, objects: u64, tool: &str, s: &Sample, note: String) {
        let rss = s.max_rss_kib as f64 / 1024.0;
        say(format!(
            "  {case:<22} {objects:>9} {tool:<22} {:>9.2} s {rss:>8.1} MiB  {note}",
            s.secs
        ));
        self.rows.push(Row {
            case: case.into(),
            objects,
            tool: tool.into(),
            secs: s.secs,
            max_rss_mib: rss,
            note,
        });
        self.save();
    }

    fn save(&self) {
        if let Some(p) = &self.save_to {
            if let Err(e) = serde_json::to_vec_pretty(self).map(|b| std::fs::write(p, b)) {
                say(format!("writing {}: {e}", p.display()));
            }
        }
    }

    fn check(&mut self, what: String, ok: bool) {
        if !ok {
            say(format!("  CHECK FAILED: {what}"));
        }
        self.checks.push((what, ok));
    }

    fn get(&self, case: &str, objects: u64, tool: &str) -> Option<&Row> {
        self.rows
            .iter()
            .find(|r| r.case == case && r.objects == objects && r.tool == tool)
    }

    /// The markdown table, with the targets of the flat-memory issue.
    pub fn table(&self) -> String {
        let mut o = String::new();
        let _ = writeln!(
            o,
            "| case | objects | tool | time s | µs per object | peak RSS MiB | note |"
        );
        let _ = writeln!(o, "|---|---:|---|---:|---:|---:|---|");
        for r in &self.rows {
            let per = if r.objects > 0 {
                format!("{:.0}", r.secs * 1e6 / r.objects as f64)
            } else {
                "–".into()
            };
            let _ = writeln!(
                o,
                "| {} | {} | {} | {:.2} | {per} | {:.1} | {} |",
                r.case, r.objects, r.tool, r.secs, r.max_rss_mib, r.note
            );
        }
        o
    }

    /// The targets, as far as this run measured them.
    pub fn targets(&self) -> String {
        let mut o = String::new();
        let counts: Vec<u64> = {
            let mut c: Vec<u64> = self
                .rows
                .iter()
                .filter(|r| !r.case.starts_with("synthetic"))
                .map(|r| r.objects)
                .collect();
            c.sort();
            c.dedup();
            c
        };
        let ours: Vec<&Row> = self.rows.iter().filter(|r| r.tool == OURS).collect();
        if let Some(max) = counts.last() {
            let worst = ours
                .iter()
                .filter(|r| r.objects == *max && !r.case.starts_with("synthetic"))
                .map(|r| r.max_rss_mib)
                .fold(0.0, f64::max);
            let _ = writeln!(
                o,
                "- peak RSS of every command at {max} objects: {worst:.1} MiB (target ≤ 128)"
            );
        }
        if let [small, .., big] = counts[..] {
            for case in CASES {
                if let (Some(a), Some(b)) = (self.get(case, small, OURS), self.get(case, big, OURS))
                {
                    let _ = writeln!(
                        o,
                        "- {case}: RSS({big}) / RSS({small}) = {:.2} (target ≤ 1.3); time per object {:.2}× (target ≤ 1.2)",
                        b.max_rss_mib / a.max_rss_mib,
                        (b.secs / b.objects as f64) / (a.secs / a.objects as f64)
                    );
                }
            }
        }
        for n in &counts {
            if let (Some(a), Some(b)) = (
                self.get("no-change backup", *n, OURS),
                self.get("no-change backup", *n, "rclone sync"),
            ) {
                let _ = writeln!(
                    o,
                    "- no-change backup at {n}: {:.3}× rclone's no-change sync (target ≤ 0.1)",
                    a.secs / b.secs
                );
            }
        }
        if let Some(r) = self
            .rows
            .iter()
            .filter(|r| r.case == "synthetic plan")
            .max_by_key(|r| r.objects)
        {
            let _ = writeln!(
                o,
                "- synthetic plan of {} entries: {:.1} MiB (target ≤ 64)",
                r.objects, r.max_rss_mib
            );
        }
        o
    }
}

const OURS: &str = "backup-agent";
const CASES: [&str; 7] = [
    "full backup",
    "no-change backup",
    "verify",
    "verify --read-data, 1% sample",
    "restore",
    "prune",
    "1% changed backup",
];

/// The repository root, manifests and statefiles of one object count's backups.
struct Backups {
    /// The repository's URL, through the counting proxy.
    repo: String,
    ids: Vec<(String, String, String)>,
}

pub fn run(a: ScaleArgs) -> Result<()> {
    let (objects, synthetic) = if a.quick {
        (vec![2_000], vec![50_000])
    } else {
        (a.objects.clone(), a.synthetic.clone())
    };
    let src: Vec<String> = objects
        .iter()
        .flat_map(|n| {
            [
                format!("scale-{n}"),
                format!("restore-{n}"),
                format!("rclone-restore-{n}"),
            ]
        })
        .collect();
    let src_refs: Vec<&str> = src.iter().map(String::as_str).collect();
    let lab = Lab::start(&src_refs, &["repo", "rclone"])?;
    let mut res = ScaleResults {
        machine: crate::lab::machine(&crate::lab::rclone_binary()?),
        ..Default::default()
    };
    // An earlier run's rows, but for the counts this run measures again (its rows replace them).
    if let Some(earlier) = &a.merge {
        let e: ScaleResults = serde_json::from_slice(&std::fs::read(earlier)?)?;
        let again = |n: u64, is_synthetic: bool| {
            if is_synthetic {
                !a.no_synthetic && synthetic.contains(&n)
            } else {
                objects.contains(&(n as usize))
            }
        };
        res.rows = e
            .rows
            .into_iter()
            .filter(|r| !again(r.objects, r.case.starts_with("synthetic")))
            .collect();
        res.checks = e
            .checks
            .into_iter()
            .filter(|(what, _)| {
                let of = |n: u64| {
                    what.contains(&format!("of {n} ")) || what.contains(&format!("of {n}:"))
                };
                let counts = objects.iter().map(|&n| n as u64);
                let synthetic_run = synthetic.iter().copied().filter(|_| !a.no_synthetic);
                if what.starts_with("synthetic") {
                    !synthetic_run.into_iter().any(of)
                } else {
                    !counts.into_iter().any(of)
                }
            })
            .collect();
    }
    std::fs::create_dir_all(&a.out)?;
    let json = a.out.join(if a.quick {
        "scale-quick.json"
    } else {
        "scale.json"
    });
    res.save_to = Some(json.clone());
    // Synthetic first (minutes), then the buckets (hours at a million): the results are
    // written after each, so a long run that stops keeps what it measured.
    for n in synthetic.iter().filter(|_| !a.no_synthetic) {
        synthetic_case(&lab, *n, &mut res)?;
        std::fs::write(&json, serde_json::to_vec_pretty(&res)?)?;
    }
    for n in &objects {
        one_count(&lab, *n, *n <= a.rclone_max, &mut res)?;
        std::fs::write(&json, serde_json::to_vec_pretty(&res)?)?;
    }
    let table = res.table();
    let targets = res.targets();
    println!("{table}\n{targets}");
    say(format!("wrote {}", json.display()));
    chart(&json, &json.with_extension("png"));
    let failed: Vec<&String> = res.checks.iter().filter(|c| !c.1).map(|c| &c.0).collect();
    ensure!(failed.is_empty(), "correctness checks failed: {failed:?}");
    Ok(())
}

fn one_count(lab: &Lab, n: usize, with_rclone: bool, res: &mut ScaleResults) -> Result<()> {
    let bucket = format!("scale-{n}");
    say(format!("{n} objects of 1–4 KiB into {bucket}"));
    let t0 = std::time::Instant::now();
    let spec = BucketSpec {
        small: n,
        small_size: 1024,
        small_spread: 3 * 1024,
        large: 0,
        zero: 0,
        awkward: false,
        seed: 7,
        concurrency: 64,
        ..BucketSpec::default()
    };
    let made = lab.fill(&bucket, &spec)?;
    say(format!(
        "  made in {:.0} s ({:.0} objects/s)",
        t0.elapsed().as_secs_f64(),
        n as f64 / t0.elapsed().as_secs_f64()
    ));
    let count = n as u64;
    // The repository's requests, counted by kind through the sandbox's proxy.
    let proxy = FaultProxy::start(&format!("http://127.0.0.1:{}", lab.dst.s3_port))?;
    let mut b = Backups {
        repo: format!("{}/repo/scale-{n}", proxy.endpoint()),
        ids: vec![],
    };
    let mut since = 0;
    // The requests since the last call, by kind: "PUT 12, ranged GET 3".
    let mut sent = || {
        let seen = proxy.seen();
        let t = tally(&seen[since..]);
        since = seen.len();
        let parts: Vec<String> = t
            .iter()
            .filter(|(_, n)| **n > 0)
            .map(|(k, n)| format!("{k} {n}"))
            .collect();
        format!("requests: {}", parts.join(", "))
    };

    // A first backup SIGKILLed at a random moment, then the full backup run again: the blobs
    // the dead run left are found by the conditional PUT, not sent again.
    if n >= 10_000 {
        let killed = kill_a_capture(lab, &bucket, &b, n)?;
        let _ = sent();
        res.check(
            format!("a capture of {n} killed after {killed:.1} s"),
            killed > 0.0,
        );
    }
    // A full backup, and rclone's full syncs beside it.
    let s = capture(lab, &bucket, &mut b, None)?;
    let stats: serde_json::Value = serde_json::from_str(&s.stdout)?;
    res.check(
        format!(
            "full backup of {n}: {} objects in the manifest",
            stats["objects"]
        ),
        stats["objects"].as_u64() == Some(count),
    );
    res.add(
        "full backup",
        count,
        OURS,
        &s,
        format!("{} object bytes read; {}", stats["read-bytes"], sent()),
    );
    if with_rclone {
        rclone_syncs(lab, &bucket, n, "full backup", res)?;
    }
    // The backup after the killed one reads back right: a 1% sample of its blobs re-hashed.
    let s = verify_newest(lab, &b, count, "verify --read-data --sample 1%", Some("1%"))?;
    res.check(
        format!(
            "the full backup of {n} after the kill verifies with --read-data --sample 1%: {}",
            s.stdout.trim()
        ),
        passed_reading(&s.stdout),
    );
    res.add("verify --read-data, 1% sample", count, OURS, &s, sent());

    // Nothing changed: no object read; rclone's syncs again.
    let prev = b.ids.last().cloned();
    let s = capture(lab, &bucket, &mut b, prev)?;
    let stats: serde_json::Value = serde_json::from_str(&s.stdout)?;
    res.check(
        format!(
            "no-change backup of {n} read {} object bytes",
            stats["read-bytes"]
        ),
        stats["read-bytes"].as_u64() == Some(0),
    );
    res.add(
        "no-change backup",
        count,
        OURS,
        &s,
        format!(
            "0 object bytes read; counting pass {:.1} s, capture {:.1} s; {}",
            stats["plan-seconds"].as_f64().unwrap_or(0.0),
            stats["capture-seconds"].as_f64().unwrap_or(0.0),
            sent()
        ),
    );
    if with_rclone {
        rclone_syncs(lab, &bucket, n, "no-change backup", res)?;
    }

    // Two days with 1% of the objects rewritten: the backups a prune will forget half of.
    for day in 0..2u64 {
        let changed: Vec<_> = made
            .iter()
            .skip(day as usize)
            .step_by(100)
            .cloned()
            .collect();
        lab.rewrite(&bucket, &changed, 100 + day)?;
        let prev = b.ids.last().cloned();
        let s = capture(lab, &bucket, &mut b, prev)?;
        let requests = sent();
        let stats: serde_json::Value = serde_json::from_str(&s.stdout)?;
        res.check(
            format!(
                "1% changed backup of {n} read {} objects, {} changed",
                stats["read-objects"],
                changed.len()
            ),
            stats["read-objects"].as_u64() == Some(changed.len() as u64),
        );
        if day == 0 {
            res.add(
                "1% changed backup",
                count,
                OURS,
                &s,
                format!("{} objects read; {requests}", changed.len()),
            );
        }
    }

    // Verify the newest (light: every blob it names is there, from one listing of blobs/).
    let repo = b.repo.clone();
    let s = verify_newest(lab, &b, count, "verify", None)?;
    let (_, key, sha) = b.ids.last().cloned().expect("backups were made");
    res.check(
        format!("verify of {n}: {}", s.stdout.trim()),
        s.stdout.contains("\"passed\":true"),
    );
    res.add("verify", count, OURS, &s, sent());

    // Restore into an empty bucket; rclone syncs its copy back into another.
    let target = lab.url(&lab.src, &format!("restore-{n}"), "");
    let spool = lab.path("spool");
    std::fs::create_dir_all(&spool)?;
    let s = lab.measure(
        "restore",
        lab.worker(&[
            "restore".into(),
            "--repo".into(),
            repo.clone(),
            "--target".into(),
            target,
            "--manifest-key".into(),
            key,
            "--manifest-sha".into(),
            sha,
            "--spool".into(),
            spool.display().to_string(),
        ]),
    )?;
    let stats: serde_json::Value = serde_json::from_str(&s.stdout)?;
    res.check(
        format!("restore of {n}: {} copied", stats["copied"]),
        stats["copied"].as_u64() == Some(count),
    );
    res.add("restore", count, OURS, &s, sent());
    if with_rclone {
        let s = lab.measure(
            "rclone restore",
            lab.rclone(&[
                "sync",
                &format!("dst:rclone/{n}-default"),
                &format!("src:rclone-restore-{n}"),
            ]),
        )?;
        res.add("restore", count, "rclone sync", &s, String::new());
    }

    // Prune: keep the newest two of four; the blobs only the older two used go.
    let s = lab.measure(
        "prune",
        lab.worker(&[
            "prune".into(),
            "--repo".into(),
            repo,
            "--keep-last".into(),
            "2".into(),
        ]),
    )?;
    let stats: serde_json::Value = serde_json::from_str(&s.stdout)?;
    res.check(
        format!(
            "prune of {n}: forgot {} backups, deleted {} objects",
            stats["forgotten"], stats["objects-deleted"]
        ),
        stats["forgotten"].as_u64() == Some(2)
            && stats["objects-deleted"].as_u64().unwrap_or(0) > 0,
    );
    res.add(
        "prune",
        count,
        OURS,
        &s,
        format!("{} objects deleted; {}", stats["objects-deleted"], sent()),
    );
    // Nothing a kept backup names was deleted: both kept backups still verify, the newest
    // with a sample of its blobs read back.
    let kept = b.ids[b.ids.len() - 2].clone();
    let s = verify_one(lab, &b, kept, count, "verify after prune", None)?;
    res.check(
        format!(
            "the older kept backup of {n} verifies after the prune: {}",
            s.stdout.trim()
        ),
        s.stdout.contains("\"passed\":true"),
    );
    let s = verify_newest(lab, &b, count, "verify after prune", Some("1%"))?;
    res.check(
        format!(
            "the newest of {n} verifies after the prune (--read-data --sample 1%): {}",
            s.stdout.trim()
        ),
        passed_reading(&s.stdout),
    );
    Ok(())
}

/// The newest backup verified, as its own measured process: light, or `--read-data` on a
/// sample of its blobs.
fn verify_newest(
    lab: &Lab,
    b: &Backups,
    count: u64,
    what: &str,
    sample: Option<&str>,
) -> Result<Sample> {
    let (id, key, sha) = b.ids.last().cloned().expect("backups were made");
    verify_one(lab, b, (id, key, sha), count, what, sample)
}

/// A verify worker's answer: passed, having read at least one blob back.
fn passed_reading(stdout: &str) -> bool {
    let v: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap_or_default();
    v["passed"] == true && v["blobs-read"].as_u64().unwrap_or(0) > 0
}

fn verify_one(
    lab: &Lab,
    b: &Backups,
    (id, key, sha): (String, String, String),
    count: u64,
    what: &str,
    sample: Option<&str>,
) -> Result<Sample> {
    let mut args = vec![
        "verify".into(),
        "--repo".into(),
        b.repo.clone(),
        "--id".into(),
        id,
        "--manifest-key".into(),
        key,
        "--manifest-sha".into(),
        sha,
        "--objects".into(),
        count.to_string(),
    ];
    if let Some(s) = sample {
        args.extend(["--sample".into(), s.into()]);
    }
    lab.measure(what, lab.worker(&args))
}

/// Starts a full capture and SIGKILLs it at a random moment of its first half (a rough
/// expectation of its time from the object count); the seconds it ran.
fn kill_a_capture(lab: &Lab, bucket: &str, b: &Backups, n: usize) -> Result<f64> {
    use rand::Rng;
    let expected = n as f64 * 0.001;
    let after = rand::rng().random_range(0.1..0.5) * expected;
    let args = [
        "capture".to_string(),
        "--source".into(),
        lab.url(&lab.src, bucket, ""),
        "--dest".into(),
        b.repo.clone(),
        "--manifest-key".into(),
        "backup-agent/backups/killed/mlpipeline.manifest".into(),
        "--spool".into(),
        lab.path("spool").display().to_string(),
    ];
    std::fs::create_dir_all(lab.path("spool"))?;
    let t0 = std::time::Instant::now();
    let mut child = lab
        .worker(&args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    while t0.elapsed().as_secs_f64() < after {
        if child.try_wait()?.is_some() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    child.kill()?;
    child.wait()?;
    let ran = t0.elapsed().as_secs_f64();
    say(format!("  a capture of {n} SIGKILLed after {ran:.1} s"));
    Ok(ran)
}

/// rclone sync of the bucket to its own copy, by default and with --fast-list.
fn rclone_syncs(
    lab: &Lab,
    bucket: &str,
    n: usize,
    case: &str,
    res: &mut ScaleResults,
) -> Result<()> {
    let src = format!("src:{bucket}");
    for (tool, slug, extra) in [
        ("rclone sync", "default", None),
        ("rclone sync --fast-list", "fast", Some("--fast-list")),
    ] {
        let dest = format!("dst:rclone/{n}-{slug}");
        let mut args = vec!["sync", src.as_str(), dest.as_str()];
        args.extend(extra);
        let s = lab.measure(&format!("{tool} {n}"), lab.rclone(&args))?;
        res.add(case, n as u64, tool, &s, String::new());
    }
    Ok(())
}

/// A backup as create-backup makes it (format v1 counts first; then the capture, a completed statefile).
fn capture(
    lab: &Lab,
    bucket: &str,
    b: &mut Backups,
    previous: Option<(String, String, String)>,
) -> Result<Sample> {
    std::fs::create_dir_all(lab.path("spool"))?;
    let id = format!("2026120{}T000000Z-00000{}", b.ids.len() + 1, b.ids.len());
    let key = repository::manifest_key(&id);
    let mut args = vec![
        "capture".to_string(),
        "--source".into(),
        lab.url(&lab.src, bucket, ""),
        "--dest".into(),
        b.repo.clone(),
        "--manifest-key".into(),
        key.clone(),
        "--statefile".into(),
        id.clone(),
        "--spool".into(),
        lab.path("spool").display().to_string(),
    ];
    if let Some((_, k, sha)) = previous {
        args.extend(["--previous".into(), k, "--previous-sha".into(), sha]);
    }
    let s = lab.measure("backup-agent capture", lab.worker(&args))?;
    let sha = worker::manifest_sha(&s)?;
    b.ids.push((id, key, sha));
    Ok(s)
}

/// The three steps of the synthetic case, each its own measured process.
fn synthetic_case(lab: &Lab, n: u64, res: &mut ScaleResults) -> Result<()> {
    say(format!("synthetic: {n} manifest entries, no S3"));
    let dir = lab.path(&format!("synthetic-{n}"));
    std::fs::create_dir_all(&dir)?;
    for step in ["write", "plan", "mark"] {
        let s = lab.measure(
            &format!("synthetic {step}"),
            lab.worker(&[
                "synthetic".into(),
                step.into(),
                "--entries".into(),
                n.to_string(),
                "--dir".into(),
                dir.display().to_string(),
            ]),
        )?;
        let out: serde_json::Value = serde_json::from_str(&s.stdout)?;
        if step == "plan" {
            res.check(
                format!("synthetic plan of {n}: {out}"),
                out["objects"].as_u64() == Some(n)
                    && out["to-read"].as_u64() == Some(n.div_ceil(100)),
            );
        }
        res.add(&format!("synthetic {step}"), n, OURS, &s, out.to_string());
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// RSS against object count, ours and rclone's, by matplotlib (optional: skipped without it).
fn chart(json: &std::path::Path, png: &std::path::Path) {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scale_chart.py");
    let python = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python");
    let ok = std::process::Command::new(&python)
        .arg(&script)
        .arg(json)
        .arg(png)
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if ok {
        say(format!("wrote {}", png.display()));
    } else {
        say("no chart (matplotlib missing?)");
    }
}

// ---- workers ----

#[derive(Debug, clap::Args)]
pub struct VerifyArgs {
    #[arg(long)]
    repo: String,
    #[arg(long)]
    id: String,
    #[arg(long)]
    manifest_key: String,
    #[arg(long)]
    manifest_sha: String,
    #[arg(long)]
    objects: u64,
    /// `--read-data` on this sample of the blobs (5%, 2/10) instead of the light check.
    #[arg(long, value_parser = backup_agent::commands::verify::Sample::parse)]
    sample: Option<backup_agent::commands::verify::Sample>,
}

/// A completed backup's statefile with only its bucket part, as the bench's backups are.
pub fn statefile(id: &str, key: &str, sha: &str, objects: u64, bytes: u64) -> Statefile {
    let at = chrono::DateTime::parse_from_rfc3339(&format!(
        "{}-{}-{}T00:00:00Z",
        &id[..4],
        &id[4..6],
        &id[6..8]
    ))
    .map(|t| t.with_timezone(&chrono::Utc))
    .unwrap_or_else(|_| chrono::Utc::now());
    Statefile {
        schema_version: repository::SCHEMA_VERSION,
        backup_id: id.into(),
        label: "bench".into(),
        request: RequestType::Manual,
        phase: Phase::Completed,
        started_at: at,
        finished_at: Some(at),
        agent_version: env!("CARGO_PKG_VERSION").into(),
        model: "bench".into(),
        charms: Default::default(),
        requested: vec!["mlpipeline".into()],
        components: Components {
            mlpipeline: Some(MlpipelineCapture {
                manifest_key: key.into(),
                manifest_sha256: sha.into(),
                objects,
                bytes,
                new_bytes: 0,
                new_objects: 0,
            }),
            ..Default::default()
        },
        quiesce: vec![],
        errors: vec![],
        history: vec![],
        copied_from: None,
        checksum: None,
    }
}

/// verify-backup's bucket part (light, or read-data on a sample), as the product runs it.
pub fn verify(a: VerifyArgs) -> Result<()> {
    let repo = worker::store(&a.repo)?;
    let sf = statefile(&a.id, &a.manifest_key, &a.manifest_sha, a.objects, 0);
    let spool = tempfile::tempdir()?;
    let progress = backup_agent::progress::Progress::none();
    let mode = a.sample.map_or(Mode::Light, Mode::ReadData);
    let rt = tokio::runtime::Runtime::new()?;
    let v = rt.block_on(async {
        let cx = CheckContext {
            dest: &repo,
            juju: None,
            mode,
            spool: spool.path(),
            streaming: Default::default(),
            progress: &progress,
        };
        let mut v = Verification::new(&a.id, mode);
        mlpipeline::Mlpipeline.check(&cx, &sf, &mut v).await;
        v.passed = v.problems.is_empty();
        v
    });
    println!(
        "{}",
        serde_json::json!({
            "passed": v.passed,
            "checked": v.objects_checked,
            "problems": v.problems.len(),
            "blobs-read": v.blobs_read,
            "bytes-read": v.bytes_read,
        })
    );
    Ok(())
}

#[derive(Debug, clap::Args)]
pub struct PruneArgs {
    #[arg(long)]
    repo: String,
    #[arg(long)]
    keep_last: u32,
}

/// prune with a keep-last policy, as the product runs it.
pub fn prune(a: PruneArgs) -> Result<()> {
    let ctx = RunContext {
        juju: backup_agent::juju::JujuCli::with_binary("juju-is-not-needed-here", "bench"),
        names: Default::default(),
        dest: worker::store(&a.repo)?,
        kubeconfig: None,
        tuning: Tuning::default(),
        minio: None,
        progress: backup_agent::progress::Progress::none(),
        interrupt: backup_agent::interrupt::Interrupt::new(),
    };
    let policy = Policy {
        keep_last: Some(a.keep_last),
        ..Policy::default()
    };
    let rt = tokio::runtime::Runtime::new()?;
    let report = rt.block_on(prune::run(&ctx, &Selection::Policy(policy)))?;
    println!(
        "{}",
        serde_json::json!({
            "forgotten": report.forgotten.len(),
            "objects-deleted": report.objects_deleted,
            "bytes-freed": report.bytes_freed,
        })
    );
    Ok(())
}
