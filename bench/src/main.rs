//! `bench`: backup-agent against rclone and the manual procedure, on the same data and servers,
//! in the same run. `bench run` prints one table (medians, min–max, ratios) and writes the
//! results as JSON (and a PNG chart when matplotlib is there); the other subcommands are the
//! measured processes it starts.

mod lab;
mod report;
mod scale;
mod synthetic;
mod worker;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};
use backup_agent_sandbox::seed::{self, BucketSpec, MlmdSpec, SeedObject};
use clap::Parser;
use futures::TryStreamExt;
use sha2::{Digest, Sha256};

use lab::{Lab, Sample};
use report::{Results, Tool};

#[derive(Debug, Parser)]
#[command(
    name = "bench",
    about = "Measures backup-agent's bucket copy, incremental capture, restore and MLMD capture against rclone and the manual procedure, on two local SeaweedFS servers, in one run",
    after_help = "Example: bench run --quick      (about a minute: smaller data, one repetition)\n         bench run             (the published figures: 3 repetitions, about 40 GB of disk)"
)]
enum Cmd {
    /// Runs every case and prints the table.
    Run(RunArgs),
    /// Memory and time against object count (100 k and 1 M objects; 10 M synthetic).
    Scale(scale::ScaleArgs),
    #[command(hide = true)]
    Capture(worker::CaptureArgs),
    #[command(hide = true)]
    Verify(scale::VerifyArgs),
    #[command(hide = true)]
    Prune(scale::PruneArgs),
    #[command(hide = true)]
    Synthetic(synthetic::SyntheticArgs),
    #[command(hide = true)]
    Restore(worker::RestoreArgs),
    #[command(hide = true)]
    Mlmd(worker::MlmdArgs),
    /// Writes a generated MLMD database of about MIB mebibytes (for profiling by hand).
    #[command(hide = true)]
    GenMlmd { path: PathBuf, mib: u64 },
    /// Runs a command and writes its peak RSS: a fresh small process forks it, so the figure is
    /// the command's own, not inherited from a large parent.
    #[command(hide = true)]
    Exec {
        #[arg(long)]
        rusage_out: PathBuf,
        #[arg(trailing_var_arg = true, required = true)]
        command: Vec<std::ffi::OsString>,
    },
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    /// Small data and one repetition, for a smoke run (CI).
    #[arg(long)]
    quick: bool,
    /// Repetitions of every case [default: 3, or 1 with --quick].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=20))]
    reps: Option<u32>,
    /// Where to write results.json (and chart.png).
    #[arg(long, default_value = "bench/results")]
    out: PathBuf,
    /// Skip the memory check at ten times the S dataset (100,000 objects).
    #[arg(long)]
    no_scale_check: bool,
    /// Run only these cases (for profiling); incremental and restore bring M's full copy along.
    #[arg(long, value_delimiter = ',', value_parser = ["s", "l", "m", "incremental", "restore", "mlmd", "requests"])]
    only: Vec<String>,
}

/// The datasets of the issue: S (many small), L (few large), M (both), and a 1 GiB MLMD file.
#[derive(Debug, Clone, Copy)]
struct Sizes {
    s: (usize, u64),
    l: (usize, u64),
    m_small: usize,
    m_large: usize,
    mlmd: u64,
    scale10: bool,
}

const KIB: u64 = 1024;
const MIB: u64 = 1024 * 1024;

impl Sizes {
    fn full() -> Self {
        Sizes {
            s: (10_000, 16 * KIB),
            l: (4, 256 * MIB),
            m_small: 2_000,
            m_large: 4,
            mlmd: 1024 * MIB,
            scale10: true,
        }
    }
    fn quick() -> Self {
        Sizes {
            s: (1_000, 16 * KIB),
            l: (2, 32 * MIB),
            m_small: 200,
            m_large: 2,
            mlmd: 64 * MIB,
            scale10: false,
        }
    }
    fn spec(&self, small: usize, large: usize, seed: u64) -> BucketSpec {
        BucketSpec {
            small,
            small_size: self.s.1 as usize,
            large,
            large_size: self.l.1,
            zero: 0,
            awkward: false,
            seed,
            concurrency: 16,
            small_spread: 0,
        }
    }
    fn bytes(&self) -> u64 {
        let (s, l) = (self.s.0 as u64 * self.s.1, self.l.0 as u64 * self.l.1);
        let m = self.m_small as u64 * self.s.1 + self.m_large as u64 * self.l.1;
        s + l + m
    }
}

fn main() {
    // As the product's binary does: the measured workers run under the same allocator settings.
    backup_agent::components::mlpipeline::allocator::return_large_buffers();
    let result = match Cmd::parse() {
        Cmd::Run(a) => run(a),
        Cmd::Scale(a) => scale::run(a),
        Cmd::Capture(a) => worker::capture(a),
        Cmd::Verify(a) => scale::verify(a),
        Cmd::Prune(a) => scale::prune(a),
        Cmd::Synthetic(a) => synthetic::run(a),
        Cmd::Restore(a) => worker::restore(a),
        Cmd::Mlmd(a) => worker::mlmd(a),
        Cmd::GenMlmd { path, mib } => seed::write_mlmd(&path, &MlmdSpec::sized(mib * MIB, 1)),
        Cmd::Exec {
            rusage_out,
            command,
        } => lab::exec_measured(&rusage_out, &command),
    };
    if let Err(e) = result {
        eprintln!("bench: {e:#}");
        std::process::exit(1);
    }
}

fn say(msg: impl AsRef<str>) {
    eprintln!("bench: {}", msg.as_ref());
}

const OURS: &str = "backup-agent";

/// A manifest read whole: the check of a benchmark copy only, never the product.
struct Manifest {
    entries: Vec<backup_agent::repository::Entry>,
}

struct Bench<'a> {
    lab: &'a Lab,
    results: Results,
    /// rclone's SHA-256 of each source bucket, recomputed after the bucket changes.
    source_sums: HashMap<String, BTreeMap<String, String>>,
    /// The newest manifest of each repository root: its key in the repository and its hash.
    manifests: HashMap<String, (String, String)>,
    captures: u32,
}

fn run(a: RunArgs) -> Result<()> {
    let sizes = if a.quick {
        Sizes::quick()
    } else {
        Sizes::full()
    };
    let reps = a.reps.unwrap_or(if a.quick { 1 } else { 3 });
    let mut made_buckets: Vec<String> = vec![];
    for set in ["s", "m"] {
        for r in 1..=reps {
            for side in ["ours", "rclone"] {
                made_buckets.push(format!("restore-{set}-{side}-{r}"));
            }
        }
        for format in ["v1", "v2", "rclone"] {
            made_buckets.push(format!("requests-{set}-{format}"));
        }
    }
    let mut src_buckets = vec!["set-s", "set-l", "set-m", "set-s10"];
    src_buckets.extend(made_buckets.iter().map(String::as_str));
    say("starting two SeaweedFS servers on 127.0.0.1");
    let lab = Lab::start(&src_buckets, &["repo", "rclone"])?;
    // Source once, then per repetition three copies of each dataset and two restores of M.
    let need = sizes.bytes() * (1 + reps as u64 * 3) + (sizes.bytes() / 2) * reps as u64 * 2;
    let free = lab.free_bytes();
    if free < need + need / 5 {
        bail!(
            "{} has {} GiB free; this run needs about {} GiB: free some space or use --quick / --reps 1",
            lab.dir.path().display(),
            free >> 30,
            (need + need / 5) >> 30
        );
    }
    let machine = lab::machine(&lab::rclone_binary()?);
    let mut bench = Bench {
        lab: &lab,
        results: Results::new(a.quick, reps, machine),
        source_sums: HashMap::new(),
        manifests: HashMap::new(),
        captures: 0,
    };

    say(format!(
        "generating S ({} x {} KiB), L ({} x {} MiB), M ({} x {} KiB + {} x {} MiB)",
        sizes.s.0,
        sizes.s.1 / KIB,
        sizes.l.0,
        sizes.l.1 / MIB,
        sizes.m_small,
        sizes.s.1 / KIB,
        sizes.m_large,
        sizes.l.1 / MIB
    ));
    lab.fill("set-s", &sizes.spec(sizes.s.0, 0, 1))?;
    lab.fill("set-l", &sizes.spec(0, sizes.l.0, 2))?;
    let m_objects = lab.fill("set-m", &sizes.spec(sizes.m_small, sizes.m_large, 3))?;
    // 1% of M's objects, all small: a typical day's new metrics and logs.
    let changed: Vec<SeedObject> = m_objects
        .iter()
        .filter(|o| o.size == sizes.s.1)
        .step_by(100)
        .take((m_objects.len() / 100).max(1))
        .cloned()
        .collect();
    let db = lab.path("mlmd.db");
    say(format!(
        "generating a {} MiB MLMD database",
        sizes.mlmd / MIB
    ));
    seed::write_mlmd(&db, &MlmdSpec::sized(sizes.mlmd, 1))?;

    let wanted = |case: &str| {
        a.only.is_empty()
            || a.only.iter().any(|o| o == case)
            || (case == "m" && a.only.iter().any(|o| o == "incremental" || o == "restore"))
            || (case == "s" && a.only.iter().any(|o| o == "requests" || o == "restore"))
    };
    for rep in 1..=reps {
        say(format!("repetition {rep} of {reps}"));
        for set in ["s", "l", "m"] {
            if wanted(set) {
                bench.full_copy(set, rep)?;
            }
        }
        if wanted("incremental") {
            bench.incremental(rep, &changed)?;
        }
        if wanted("restore") {
            bench.restore(rep, &["s", "m"])?;
        }
        if wanted("mlmd") {
            bench.mlmd(&db, rep)?;
        }
    }
    if sizes.scale10 && !a.no_scale_check && a.only.is_empty() {
        say(format!(
            "memory at 10 x S: generating {} objects",
            sizes.s.0 * 10
        ));
        lab.fill("set-s10", &sizes.spec(sizes.s.0 * 10, 0, 4))?;
        let s = bench.ours_capture("set-s10", "s10", None)?;
        bench.results.add("S x10 full copy", OURS, &s);
    }

    if a.only.is_empty() || a.only.iter().any(|o| o == "requests") {
        bench.requests(&sizes)?;
    }

    let mut results = bench.results;
    println!("{}", results.table());
    std::fs::create_dir_all(&a.out)?;
    let json = a.out.join(if a.quick {
        "results-quick.json"
    } else {
        "results.json"
    });
    std::fs::write(&json, serde_json::to_vec_pretty(&results)?)?;
    say(format!("wrote {}", json.display()));
    report::chart(&json, &json.with_extension("png"));
    let missed = results.failed_checks();
    ensure!(missed.is_empty(), "correctness checks failed: {missed:?}");
    Ok(())
}

impl Bench<'_> {
    fn tool_order(rep: u32) -> [Tool; 3] {
        let mut tools = [Tool::Ours, Tool::Rclone, Tool::Rclone16];
        tools.rotate_left((rep as usize - 1) % 3);
        tools
    }

    /// First full copy of a dataset by each tool into a fresh place.
    fn full_copy(&mut self, set: &str, rep: u32) -> Result<()> {
        let name = format!("{} full copy", set.to_uppercase());
        let bucket = format!("set-{set}");
        for tool in Self::tool_order(rep) {
            let sample = match tool {
                Tool::Ours => {
                    let s = self.ours_capture(&bucket, &format!("{set}-{rep}"), None)?;
                    self.check_capture(&bucket, &format!("{set}-{rep}"), &name)?;
                    s
                }
                Tool::Rclone | Tool::Rclone16 => {
                    let dest = format!("dst:rclone/{set}-{rep}-{}", tool.slug());
                    let s = self.rclone_sync(&format!("src:{bucket}"), &dest, tool)?;
                    self.check_rclone(&format!("src:{bucket}"), &dest, &name, false)?;
                    s
                }
            };
            self.results.add(&name, tool.label(), &sample);
        }
        Ok(())
    }

    /// Re-runs on M: nothing changed, then 1% of the objects rewritten (same sizes).
    fn incremental(&mut self, rep: u32, changed: &[SeedObject]) -> Result<()> {
        let root = format!("m-{rep}");
        let rclone_dest = format!("dst:rclone/m-{rep}-default");
        for (name, change) in [("M nothing changed", false), ("M 1% changed", true)] {
            if change {
                self.lab.rewrite("set-m", changed, 1000 + rep as u64)?;
                self.source_sums.remove("set-m");
            }
            let order = if rep % 2 == 1 {
                [Tool::Ours, Tool::Rclone]
            } else {
                [Tool::Rclone, Tool::Ours]
            };
            for tool in order {
                let sample = if tool == Tool::Ours {
                    let previous = self.manifests.get(&root).cloned();
                    let s = self.ours_capture("set-m", &root, previous)?;
                    let stats: serde_json::Value = serde_json::from_str(&s.stdout)?;
                    let read = stats["read-bytes"].as_u64().unwrap_or(u64::MAX);
                    let expected: u64 = if change {
                        changed.iter().map(|o| o.size).sum()
                    } else {
                        0
                    };
                    self.results.check(
                        name,
                        &format!("backup-agent read {read} object bytes, expected {expected}"),
                        read == expected,
                    );
                    self.check_capture("set-m", &root, name)?;
                    s
                } else {
                    let s = self.rclone_sync("src:set-m", &rclone_dest, Tool::Rclone)?;
                    self.check_rclone("src:set-m", &rclone_dest, name, false)?;
                    s
                };
                self.results.add(name, tool.label(), &sample);
            }
        }
        Ok(())
    }

    /// S and M back into an empty bucket: from backup-agent's repository, and from rclone's
    /// copy. M's last backup is its 1% changed one, which is what `set-m` now holds.
    fn restore(&mut self, rep: u32, sets: &[&str]) -> Result<()> {
        for set in sets {
            let name = format!("{} restore", set.to_uppercase());
            let root = format!("{set}-{rep}");
            for tool in if rep % 2 == 1 {
                [Tool::Ours, Tool::Rclone]
            } else {
                [Tool::Rclone, Tool::Ours]
            } {
                let target = format!("restore-{set}-{}-{rep}", tool.side());
                let sample = if tool == Tool::Ours {
                    let args = vec![
                        "restore".to_string(),
                        "--repo".into(),
                        self.lab.url(&self.lab.dst, "repo", &root),
                        "--target".into(),
                        self.lab.url(&self.lab.src, &target, ""),
                        "--manifest-key".into(),
                        self.manifests[&root].0.clone(),
                        "--manifest-sha".into(),
                        self.manifests[&root].1.clone(),
                        "--spool".into(),
                        self.lab.path("spool").display().to_string(),
                    ];
                    self.lab
                        .measure("backup-agent restore", self.lab.worker(&args))?
                } else {
                    self.rclone_sync(
                        &format!("dst:rclone/{set}-{rep}-default"),
                        &format!("src:{target}"),
                        Tool::Rclone,
                    )?
                };
                self.check_rclone(
                    &format!("src:set-{set}"),
                    &format!("src:{target}"),
                    &name,
                    true,
                )?;
                self.results.add(&name, tool.label(), &sample);
            }
        }
        Ok(())
    }

    /// The MLMD database: backup-agent's capture (check, compress, hash, store) against the
    /// manual procedure's `sqlite3 .dump | gzip` and a plain `cat | zstd`, all three ending in a
    /// local file; then backup-agent's capture into the S3 destination, upload included.
    fn mlmd(&mut self, db: &Path, rep: u32) -> Result<()> {
        let key = format!("mlmd-{rep}.db.zst");
        let local = self.lab.path("mlmd-local");
        std::fs::create_dir_all(&local)?;
        for (name, dest) in [
            ("MLMD capture", local.display().to_string()),
            (
                "MLMD capture to S3",
                self.lab.url(&self.lab.dst, "repo", "mlmd"),
            ),
        ] {
            let args = vec![
                "mlmd".to_string(),
                "--db".into(),
                db.display().to_string(),
                "--dest".into(),
                dest.clone(),
                "--key".into(),
                key.clone(),
            ];
            let ours = self
                .lab
                .measure("backup-agent MLMD capture", self.lab.worker(&args))?;
            self.results.add(name, OURS, &ours);
            // Independent check: the stored object read back by rclone or from disk, decoded
            // by the zstd crate, hashed here.
            let fetched = self.lab.path("mlmd-check.zst");
            let fetched_ok = if dest.starts_with('/') {
                std::fs::rename(local.join(&key), &fetched).is_ok()
            } else {
                let mut cat = self.lab.rclone(&["cat", &format!("dst:repo/mlmd/{key}")]);
                cat.stdout(std::fs::File::create(&fetched)?);
                cat.status()?.success()
            };
            let same = fetched_ok && {
                let mut h = Sha256::new();
                zstd::stream::copy_decode(std::fs::File::open(&fetched)?, &mut h)?;
                h.finalize()[..] == sha256_file(db)?[..]
            };
            self.results.check(
                name,
                "the stored object decompresses to the database's bytes",
                same,
            );
            let _ = std::fs::remove_file(&fetched);
        }
        for (label, script) in [
            (
                "sqlite3 .dump | gzip",
                r#"sqlite3 "$1" .dump | gzip > "$2.sql.gz""#,
            ),
            ("cat | zstd", r#"cat "$1" | zstd -q -f -o "$2.zst""#),
        ] {
            let mut sh = std::process::Command::new("sh");
            sh.args(["-ec", script, "sh"])
                .arg(db)
                .arg(self.lab.path("mlmd-baseline"));
            let s = self.lab.measure(label, sh)?;
            for case in ["MLMD capture", "MLMD capture to S3"] {
                self.results.add(case, label, &s);
            }
        }
        Ok(())
    }

    /// Requests the repository's server receives, counted by kind by the sandbox's proxy in
    /// front of it (one run each, not timed against a peer): a full backup of S and of M in
    /// format v2 (packs) and in format v1 (a blob per object), a restore of each into an empty
    /// bucket, and rclone's sync of the same sets there and back through the same proxy.
    fn requests(&mut self, sizes: &Sizes) -> Result<()> {
        use backup_agent_sandbox::s3::fault_proxy::{tally, FaultProxy};
        say("counting the repository's requests through a proxy (v2 packs, v1 blobs, rclone)");
        let proxy = FaultProxy::start(&format!("http://127.0.0.1:{}", self.lab.dst.s3_port))?;
        let via = proxy.endpoint();
        // The requests since `since`: the headline count of `methods`, and all of them by kind.
        let count = |since: usize, methods: &[&str]| {
            let seen = &proxy.seen()[since..];
            let by_kind = tally(seen)
                .into_iter()
                .map(|(k, n)| (k.to_string(), n))
                .collect();
            let n = seen
                .iter()
                .filter(|s| methods.contains(&s.method.as_str()))
                .count() as u64;
            (n, by_kind)
        };
        let sets = [
            ("s", sizes.s.0 as u64, Some(0.01)),
            ("m", (sizes.m_small + sizes.m_large) as u64, None),
        ];
        for (format, threshold) in [("v2", None), ("v1", Some(0u64))] {
            for (set, objects, target) in sets {
                let root = format!("requests-{set}-{format}");
                let key = format!("manifests/{root}");
                let mut args = vec![
                    "capture".to_string(),
                    "--source".into(),
                    self.lab.url(&self.lab.src, &format!("set-{set}"), ""),
                    "--dest".into(),
                    format!("{via}/repo/{root}"),
                    "--manifest-key".into(),
                    key.clone(),
                    "--spool".into(),
                    self.lab.path("spool").display().to_string(),
                ];
                if let Some(t) = threshold {
                    args.extend(["--pack-threshold".into(), t.to_string()]);
                }
                let since = proxy.seen().len();
                let s = self
                    .lab
                    .measure("backup-agent capture", self.lab.worker(&args))?;
                let (requests, by_kind) = count(since, &["PUT", "POST"]);
                self.results.requests.push(report::Requests {
                    case: format!("{} full copy, format {format}", set.to_uppercase()),
                    what: "PUT".into(),
                    requests,
                    objects,
                    secs: s.secs,
                    target: if format == "v2" { target } else { None },
                    by_kind,
                });
                let sha = worker::manifest_sha(&s)?;
                let bucket = format!("requests-{set}-{format}");
                let args = vec![
                    "restore".to_string(),
                    "--repo".into(),
                    format!("{via}/repo/{root}"),
                    "--target".into(),
                    self.lab.url(&self.lab.src, &bucket, ""),
                    "--manifest-key".into(),
                    key,
                    "--manifest-sha".into(),
                    sha,
                    "--spool".into(),
                    self.lab.path("spool").display().to_string(),
                ];
                let since = proxy.seen().len();
                let s = self
                    .lab
                    .measure("backup-agent restore", self.lab.worker(&args))?;
                let (requests, by_kind) = count(since, &["GET"]);
                let case = format!("{} restore, format {format}", set.to_uppercase());
                self.results.requests.push(report::Requests {
                    case: case.clone(),
                    what: "GET".into(),
                    requests,
                    objects,
                    secs: s.secs,
                    target: None,
                    by_kind,
                });
                self.check_rclone(
                    &format!("src:set-{set}"),
                    &format!("src:{bucket}"),
                    &case,
                    true,
                )?;
            }
        }
        // rclone, both ways, with the destination remote pointed at the proxy.
        for (set, objects, _) in sets {
            let copy = format!("dst:rclone/requests-{set}");
            let bucket = format!("requests-{set}-rclone");
            for (case, from, to, what, methods) in [
                (
                    "full copy",
                    format!("src:set-{set}"),
                    copy.clone(),
                    "PUT",
                    &["PUT", "POST"][..],
                ),
                (
                    "restore",
                    copy.clone(),
                    format!("src:{bucket}"),
                    "GET",
                    &["GET"][..],
                ),
            ] {
                let mut sync = self.lab.rclone(&["sync", &from, &to]);
                sync.env("RCLONE_CONFIG_DST_ENDPOINT", &via);
                let since = proxy.seen().len();
                let s = self
                    .lab
                    .measure(&format!("rclone sync {from} {to}"), sync)?;
                let (requests, by_kind) = count(since, methods);
                let case = format!("{} {case}, rclone", set.to_uppercase());
                self.results.requests.push(report::Requests {
                    case: case.clone(),
                    what: what.into(),
                    requests,
                    objects,
                    secs: s.secs,
                    target: None,
                    by_kind,
                });
                self.check_rclone(&format!("src:set-{set}"), &to, &case, false)?;
            }
        }
        Ok(())
    }

    /// A capture into `root`, after `previous` (its manifest's key and hash) if given; the new
    /// manifest's key and hash are kept for the next one.
    fn ours_capture(
        &mut self,
        set: &str,
        root: &str,
        previous: Option<(String, String)>,
    ) -> Result<Sample> {
        std::fs::create_dir_all(self.lab.path("spool"))?;
        self.captures += 1;
        let key = format!("manifests/{root}-{}", self.captures);
        let mut args = vec![
            "capture".to_string(),
            "--source".into(),
            self.lab.url(&self.lab.src, set, ""),
            "--dest".into(),
            self.lab.url(&self.lab.dst, "repo", root),
            "--manifest-key".into(),
            key.clone(),
            "--spool".into(),
            self.lab.path("spool").display().to_string(),
        ];
        if let Some((k, sha)) = previous {
            args.extend(["--previous".into(), k, "--previous-sha".into(), sha]);
        }
        let s = self
            .lab
            .measure("backup-agent capture", self.lab.worker(&args))?;
        let sha = worker::manifest_sha(&s)?;
        self.manifests.insert(root.to_string(), (key, sha));
        Ok(s)
    }

    fn rclone_sync(&self, from: &str, to: &str, tool: Tool) -> Result<Sample> {
        let mut args = vec!["sync", from, to];
        if tool == Tool::Rclone16 {
            args.extend(["--transfers", "16"]);
        }
        self.lab
            .measure(&format!("rclone sync {from} {to}"), self.lab.rclone(&args))
    }

    /// Every source object is in the manifest with rclone's SHA-256 of it, and every blob the
    /// manifest names holds bytes with that hash.
    fn check_capture(&mut self, set: &str, root: &str, case: &str) -> Result<()> {
        if !self.source_sums.contains_key(set) {
            let sums = self.lab.sha256s(&format!("src:{set}"))?;
            self.source_sums.insert(set.to_string(), sums);
        }
        let source = &self.source_sums[set];
        let (key, sha) = self.manifests[root].clone();
        let repo = self.lab.store(&self.lab.dst, "repo", root)?;
        let entries: Vec<backup_agent::repository::Entry> = tokio::runtime::Runtime::new()?
            .block_on(async {
                backup_agent::repository::manifest::read(&repo, &key, Some(&sha))
                    .try_collect()
                    .await
            })?;
        let manifest = Manifest { entries };
        let blobs = self
            .lab
            .sha256s(&format!("dst:repo/{root}/backup-agent/blobs"))?;
        let mut problems = vec![];
        if manifest.entries.len() != source.len() {
            problems.push(format!(
                "{} entries for {} objects",
                manifest.entries.len(),
                source.len()
            ));
        }
        // Packs (format v2): the last one read is kept (a capture packs neighbours by key
        // together), each entry's range hashed here; a large object's pack is hashed as it
        // streams.
        let mut last: Option<(String, Vec<u8>)> = None;
        let rt = tokio::runtime::Runtime::new()?;
        for e in &manifest.entries {
            if source.get(&e.key) != Some(&e.sha256) {
                problems.push(format!("{}: hash differs from the source's", e.key));
            }
            match (&e.pack, e.offset) {
                _ if e.size == 0 => {}
                (Some(pack), Some(offset))
                    if e.size > backup_agent::components::mlpipeline::IN_MEMORY_MAX =>
                {
                    let got =
                        rt.block_on(backup_agent::components::mlpipeline::packed::hash_range(
                            &repo,
                            pack,
                            (offset, e.size),
                            3,
                        ));
                    if got.ok().map(hex::encode).as_deref() != Some(e.sha256.as_str()) {
                        problems.push(format!("{}: pack {pack} missing or corrupt", e.key));
                    }
                }
                (Some(pack), Some(offset)) => {
                    if last.as_ref().is_none_or(|(id, _)| id != pack) {
                        let key = backup_agent::repository::layout::pack_key(pack);
                        let bytes = rt.block_on(repo.get_bytes(&key)).unwrap_or_default();
                        last = Some((pack.clone(), bytes));
                    }
                    let bytes = &last.as_ref().expect("just read").1;
                    let range = usize::try_from(offset).unwrap_or(usize::MAX)
                        ..usize::try_from(offset + e.size).unwrap_or(usize::MAX);
                    let got = bytes.get(range).map(|b| hex::encode(Sha256::digest(b)));
                    if got.as_deref() != Some(e.sha256.as_str()) {
                        problems.push(format!("{}: pack {pack} missing or corrupt", e.key));
                    }
                }
                _ => {
                    let blob = format!("{}/{}", &e.sha256[..2], e.sha256);
                    if blobs.get(&blob) != Some(&e.sha256) {
                        problems.push(format!("blob {blob} missing or corrupt"));
                    }
                }
            }
        }
        problems.truncate(5);
        self.results.check(
            case,
            &format!("backup-agent's copy of {set}: {problems:?}"),
            problems.is_empty(),
        );
        Ok(())
    }

    fn check_rclone(&mut self, a: &str, b: &str, case: &str, download: bool) -> Result<()> {
        let mut args = vec!["check", a, b, "--one-way", "-q"];
        if download {
            args.push("--download");
        }
        let ok = self
            .lab
            .rclone(&args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .context("rclone check")?
            .success();
        // --one-way ignores extras in b; a restore must not leave any, so count them too.
        let count = |r: &str| -> Result<usize> {
            Ok(self
                .lab
                .run(
                    "rclone lsf",
                    self.lab.rclone(&["lsf", "-R", "--files-only", r]),
                )?
                .lines()
                .count())
        };
        let same_count = count(a)? == count(b)?;
        self.results
            .check(case, &format!("rclone check {a} {b}"), ok && same_count);
        Ok(())
    }
}

fn sha256_file(p: &Path) -> Result<Vec<u8>> {
    let mut h = Sha256::new();
    std::io::copy(&mut std::fs::File::open(p)?, &mut h)?;
    Ok(h.finalize().to_vec())
}
