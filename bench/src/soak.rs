//! `soak`: backup-agent's daemon on a short schedule for N backups against the sandbox, while
//! the data changes under it and faults hit it; then checks by independent means that nothing
//! was lost, and a table.
//!
//! During the run: objects are written, rewritten and deleted in MinIO between and during
//! backups, and rows are added to the MLMD database while kfp-metadata-writer is up (as the
//! real writer does; a backup scales it to 0). Faults come at random (seeded): 5xx answers,
//! connections reset mid-answer and slow answers from the destination (the sandbox's fault
//! proxy), a mysql-k8s create-backup that fails, and a SIGKILL of the daemon every few runs
//! (it is started again). Every few runs a prune, every few runs a restore drill over HTTP.
//!
//! At the end, with the daemon stopped: no lock left, every app at its first scale, no scale
//! journal entry left unrestored, no backup left running; after a last prune, no pack or
//! blob referenced but missing and none unreferenced; every completed backup restored in
//! turn and MinIO and MLMD compared with the soak's own journal of what it wrote and when
//! (any version written during the backup's window is accepted, otherwise exactly the last
//! one before it); every mysql-k8s object the statefiles name where it was written.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use backup_agent::repository::{self, Phase, Statefile};
use backup_agent::storage::Store;
use backup_agent_sandbox::s3::fault_proxy::FaultProxy;
use backup_agent_sandbox::{Sandbox, UpOptions};
use chrono::{DateTime, Utc};
use clap::Parser;
use futures::TryStreamExt;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use sha2::{Digest, Sha256};

#[derive(Debug, Parser)]
#[command(
    name = "soak",
    about = "Runs backup-agent's daemon against the sandbox for N scheduled backups while data changes and faults hit it, then checks by independent means that nothing was lost",
    after_help = "Examples:\n  scripts/soak --runs 10              (CI: a few minutes)\n  scripts/soak --runs 100 --out docs/soak   (the figures in docs/RELIABILITY.md)"
)]
struct Args {
    /// Scheduled backups to run.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(3..))]
    runs: u32,
    /// Seconds between scheduled backups (a divisor of 60).
    #[arg(long, default_value_t = 10)]
    period: u32,
    /// Seed of every random choice (data changes, faults): a run can be repeated.
    #[arg(long)]
    seed: Option<u64>,
    /// Small objects in the bucket at the start (one large object besides).
    #[arg(long, default_value_t = 40)]
    objects: usize,
    /// SIGKILL the daemon during every Nth run.
    #[arg(long, default_value_t = 5)]
    kill_every: u32,
    /// A restore drill (POST /v1/drills) after every Nth run.
    #[arg(long, default_value_t = 4)]
    drill_every: u32,
    /// A prune (the CLI, --keep-last) after every Nth run.
    #[arg(long, default_value_t = 5)]
    prune_every: u32,
    #[arg(long, default_value_t = 6)]
    keep_last: u32,
    /// Where to write report.json and report.md.
    #[arg(long)]
    out: Option<PathBuf>,
}

const TOKEN: &str = "soak-api-token-0d1e";
const WRITER: &str = "kfp-metadata-writer";
const CONTENT_TYPES: [&str; 3] = ["application/octet-stream", "text/plain", "application/json"];

/// An object's state as the soak wrote it: content hash, content type, user metadata.
type State = (String, String, BTreeMap<String, String>);

/// One write, and when it was under way.
#[derive(Debug, Clone)]
struct Version<T> {
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    state: T,
}

/// Everything the soak wrote, with when: the independent record the end checks use.
#[derive(Default)]
struct Journal {
    objects: BTreeMap<String, Vec<Version<Option<State>>>>,
    mlmd: Vec<Version<i64>>,
}

impl Journal {
    /// What a backup that ran from `start` to `end` may hold: any version written during that
    /// window, and the last one finished before it.
    fn acceptable<T: Clone>(
        versions: &[Version<T>],
        start: DateTime<Utc>,
        end: DateTime<Utc>,
    ) -> Vec<T> {
        let mut out = vec![];
        if let Some(before) = versions.iter().filter(|v| v.to < start).last() {
            out.push(before.state.clone());
        }
        out.extend(
            versions
                .iter()
                .filter(|v| v.to >= start && v.from <= end)
                .map(|v| v.state.clone()),
        );
        out
    }

    fn live_keys(&self) -> Vec<String> {
        self.objects
            .iter()
            .filter(|(_, v)| v.last().is_some_and(|v| v.state.is_some()))
            .map(|(k, _)| k.clone())
            .collect()
    }
}

#[derive(Debug, Default, Serialize)]
#[serde(rename_all = "kebab-case")]
struct Report {
    seed: u64,
    runs_asked: u32,
    period_seconds: u32,
    wall_seconds: u64,
    /// Backups the daemon started; those that left a statefile; completed; failed.
    runs_started: u64,
    runs: u64,
    completed: u64,
    failed: Vec<(String, String, String)>,
    skipped: Vec<String>,
    faults: BTreeMap<String, u64>,
    changes: BTreeMap<String, u64>,
    drills: BTreeMap<String, u64>,
    drill_failures: Vec<String>,
    prunes: u64,
    checks: Vec<(String, bool, String)>,
    backups_restored: u64,
    backups_exact: u64,
    backups_downloaded: u64,
    backups_downloaded_exact: u64,
    data_lost: u64,
}

struct Daemon {
    child: Child,
    url: String,
}

/// A soak that stops on an error does not leave its daemon running.
impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A scheduled backup as its statefile last said: phase, and why it failed.
type Outcome = (String, String);

struct Soak<'a> {
    /// Every scheduled backup seen, by id: prunes delete statefiles, this keeps them.
    outcomes: BTreeMap<String, Outcome>,
    /// Completed backups already downloaded and compared with the journal.
    downloaded: BTreeSet<String>,
    args: Args,
    sb: &'a Sandbox,
    agent: PathBuf,
    proxy: FaultProxy,
    minio: Store,
    repo: Store,
    dest: Store,
    http: reqwest::Client,
    rng: StdRng,
    journal: Journal,
    report: Report,
    tmp: tempfile::TempDir,
    port: u16,
    serial: u64,
}

fn main() -> Result<()> {
    let args = Args::parse();
    if args.period == 0 || 60 % args.period != 0 {
        bail!(
            "--period {} does not divide a minute: use 5, 10, 15, 20 or 30",
            args.period
        );
    }
    let mut opts = UpOptions::new(sibling("backup-agent-sandbox")?);
    opts.bucket.small = args.objects;
    opts.bucket.large = 1;
    opts.bucket.large_size = 9 << 20;
    // Outside the runtime: the sandbox starts (and stops) its servers with runtimes of its own.
    let sb = Sandbox::up(&opts)?;
    let rt = tokio::runtime::Runtime::new()?;
    let passed = rt.block_on(run(args, &sb))?;
    drop(rt);
    drop(sb);
    if !passed {
        std::process::exit(1);
    }
    Ok(())
}

/// The binaries built beside this one.
fn sibling(name: &str) -> Result<PathBuf> {
    let p = std::env::current_exe()?
        .parent()
        .context("the soak's directory")?
        .join(name);
    if !p.exists() {
        bail!("{} is missing: cargo build --workspace --bins", p.display());
    }
    Ok(p)
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn sha(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

async fn run(args: Args, sb: &Sandbox) -> Result<bool> {
    let seed = args.seed.unwrap_or_else(rand::random);
    let started = Instant::now();
    let store = |server: &backup_agent_sandbox::env::ServerInfo, bucket: &str, path: &str| {
        Store::s3(&backup_agent::storage::S3Settings {
            endpoint: server.endpoint(),
            bucket: bucket.into(),
            path: path.into(),
            region: "us-east-1".into(),
            access_key: backup_agent::secret::Secret::new(server.access_key.clone()),
            secret_key: backup_agent::secret::Secret::new(server.secret_key.clone()),
            ..Default::default()
        })
    };
    let minio = store(&sb.info.minio, "mlpipeline", "")?;
    let repo = store(&sb.info.dest, &sb.info.dest_bucket, &sb.info.agent_path)?;
    let dest = store(&sb.info.dest, &sb.info.dest_bucket, "")?;
    let proxy = FaultProxy::start(&sb.info.dest.endpoint())?;
    let mut soak = Soak {
        agent: sibling("backup-agent")?,
        proxy,
        minio,
        repo,
        dest,
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()?,
        rng: StdRng::seed_from_u64(seed),
        journal: Journal::default(),
        report: Report {
            seed,
            runs_asked: args.runs,
            period_seconds: args.period,
            ..Report::default()
        },
        tmp: tempfile::tempdir()?,
        port: free_port()?,
        serial: 0,
        outcomes: BTreeMap::new(),
        downloaded: BTreeSet::new(),
        args,
        sb,
    };
    println!(
        "soak: {} scheduled backups every {} s, seed {seed} (sandbox {})",
        soak.args.runs,
        soak.args.period,
        soak.sb.layout.dir.display()
    );
    soak.record_start().await?;
    let scales = soak.scales()?;
    let runs_started = soak.drive().await?;
    soak.check(&scales, runs_started).await?;
    soak.report.wall_seconds = started.elapsed().as_secs();
    let passed = soak.report.checks.iter().all(|c| c.1) && soak.report.data_lost == 0;
    let table = render(&soak.report);
    print!("{table}");
    if let Some(out) = &soak.args.out {
        std::fs::create_dir_all(out)?;
        std::fs::write(out.join("report.md"), &table)?;
        std::fs::write(
            out.join("report.json"),
            serde_json::to_vec_pretty(&soak.report)?,
        )?;
        println!("written: {}/report.md, report.json", out.display());
    }
    Ok(passed)
}

impl Soak<'_> {
    fn scales(&self) -> Result<BTreeMap<String, u32>> {
        self.sb
            .model()
            .update(|m| Ok(m.apps.iter().map(|(n, a)| (n.clone(), a.scale)).collect()))
    }

    fn count(&mut self, table: &str, what: &str) {
        let t = match table {
            "faults" => &mut self.report.faults,
            "drills" => &mut self.report.drills,
            _ => &mut self.report.changes,
        };
        *t.entry(what.to_string()).or_default() += 1;
    }

    /// The bucket and MLMD as they are before the daemon starts: the journal's first versions.
    async fn record_start(&mut self) -> Result<()> {
        let t0 = Utc::now() - chrono::Duration::seconds(1);
        for o in self.minio.list("").await? {
            let (bytes, meta) = self.minio.get_with_meta(&o.key).await?;
            self.journal.objects.insert(
                o.key,
                vec![Version {
                    from: t0,
                    to: t0,
                    state: Some((sha(&bytes), meta.content_type, meta.metadata)),
                }],
            );
        }
        let db = rusqlite::Connection::open(self.sb.layout.mlmd_db())?;
        db.execute_batch(
            "CREATE TABLE IF NOT EXISTS soak_marker (id INTEGER PRIMARY KEY, run INTEGER, at TEXT)",
        )?;
        let n: i64 = db.query_row("SELECT COUNT(*) FROM soak_marker", [], |r| r.get(0))?;
        self.journal.mlmd.push(Version {
            from: t0,
            to: t0,
            state: n,
        });
        Ok(())
    }

    fn start_daemon(&self) -> Result<Daemon> {
        let token = self.tmp.path().join("token");
        std::fs::write(&token, format!("{TOKEN}\n"))?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.tmp.path().join("serve.log"))?;
        let listen = format!("127.0.0.1:{}", self.port);
        let schedule = format!("*/{} * * * * *", self.args.period);
        let child = self
            .sb
            .command(&self.agent)
            .args(["serve", "-v", "--listen", &listen, "--schedule", &schedule])
            .arg("--token-file")
            .arg(&token)
            .env("BACKUP_AGENT_S3_ENDPOINT", self.proxy.endpoint())
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting the daemon")?;
        Ok(Daemon {
            child,
            url: format!("http://{listen}"),
        })
    }

    async fn health(&self, d: &Daemon) -> Option<serde_json::Value> {
        let r = self
            .http
            .get(format!("{}/healthz", d.url))
            .send()
            .await
            .ok()?;
        r.json().await.ok()
    }

    /// A CLI run of the agent against the sandbox (not through the proxy).
    fn agent(&self, args: &[&str]) -> Result<(bool, String)> {
        let out = self
            .sb
            .command(&self.agent)
            .args(args)
            .env_remove("RUST_LOG")
            .output()?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok((out.status.success(), text))
    }

    /// One data change in MinIO, journaled with when it was under way.
    async fn change_object(&mut self, run: u64) -> Result<()> {
        let live = self.journal.live_keys();
        let pick = self.rng.random_range(0..10);
        let from = Utc::now();
        if pick < 4 || live.len() < 5 {
            self.serial += 1;
            let key = format!("soak/run-{run:03}/object-{:05}.bin", self.serial);
            let state = self.put(&key, run).await?;
            self.journal.objects.entry(key).or_default().push(Version {
                from,
                to: Utc::now(),
                state: Some(state),
            });
            self.count("changes", "objects written");
        } else if pick < 8 {
            let key = live[self.rng.random_range(0..live.len())].clone();
            let state = self.put(&key, run).await?;
            self.journal.objects.entry(key).or_default().push(Version {
                from,
                to: Utc::now(),
                state: Some(state),
            });
            self.count("changes", "objects rewritten");
        } else {
            let key = live[self.rng.random_range(0..live.len())].clone();
            self.minio.delete(&key).await?;
            self.journal.objects.entry(key).or_default().push(Version {
                from,
                to: Utc::now(),
                state: None,
            });
            self.count("changes", "objects deleted");
        }
        Ok(())
    }

    async fn put(&mut self, key: &str, run: u64) -> Result<State> {
        let size = match self.rng.random_range(0..20) {
            0 => 0,
            1 => self.rng.random_range(1_000_000..3_000_000),
            _ => self.rng.random_range(1..48 * 1024),
        };
        let bytes: Vec<u8> = (0..size).map(|_| self.rng.random()).collect();
        let ct = CONTENT_TYPES[self.rng.random_range(0..CONTENT_TYPES.len())].to_string();
        let meta = BTreeMap::from([("soak-run".to_string(), run.to_string())]);
        let mut r = &bytes[..];
        self.minio.put_object(key, &mut r, &ct, &meta).await?;
        // What the server keeps: SeaweedFS, like MinIO, guesses a type from the key's extension
        // when told application/octet-stream.
        let kept = self
            .minio
            .head_meta(key)
            .await?
            .with_context(|| format!("{key} is not there after its PUT"))?;
        Ok((sha(&bytes), kept.content_type, kept.metadata))
    }

    /// A row in MLMD, as kfp-metadata-writer would add one: only while it is scaled up.
    fn write_mlmd(&mut self, run: u64) -> Result<()> {
        let up = self
            .sb
            .model()
            .update(|m| Ok(m.apps.get(WRITER).is_some_and(|a| a.scale > 0)))?;
        if !up {
            self.count("changes", "MLMD writes held (writer scaled down)");
            return Ok(());
        }
        let from = Utc::now();
        let db = rusqlite::Connection::open(self.sb.layout.mlmd_db())?;
        db.execute(
            "INSERT INTO soak_marker (run, at) VALUES (?1, ?2)",
            rusqlite::params![run as i64, from.to_rfc3339()],
        )?;
        let n: i64 = db.query_row("SELECT COUNT(*) FROM soak_marker", [], |r| r.get(0))?;
        drop(db);
        self.journal.mlmd.push(Version {
            from,
            to: Utc::now(),
            state: n,
        });
        self.count("changes", "MLMD rows added");
        Ok(())
    }

    /// Faults for the run that just started.
    fn faults_for(&mut self, run: u32) -> Option<Instant> {
        let p: f64 = self.rng.random();
        if p < 0.25 {
            let status = if self.rng.random_bool(0.5) { 500 } else { 503 };
            self.proxy.fail_next(self.rng.random_range(1..4), status);
            self.count("faults", &format!("S3 {status} answers"));
        } else if p < 0.45 {
            self.proxy.reset_next(self.rng.random_range(1..4));
            self.count("faults", "S3 connections reset mid-answer");
        } else if p < 0.6 {
            self.proxy
                .set_latency(Duration::from_millis(self.rng.random_range(30..150)));
            self.count("faults", "S3 slow answers");
        }
        // Never in the last runs: the daemon must get to repair after a kill before the end.
        let kill = run.is_multiple_of(self.args.kill_every) && run + 2 < self.args.runs;
        kill.then(|| Instant::now() + Duration::from_millis(self.rng.random_range(300..3_000)))
    }

    /// After a backup: the faults end, its outcome is noted, the data changes, and the next
    /// drill, prune or failing mysql-k8s action is set up.
    async fn between_runs(
        &mut self,
        run_no: u64,
        runs_seen: u32,
        drill_due: &mut bool,
        prune_due: &mut bool,
    ) -> Result<()> {
        self.proxy.clear();
        self.note_outcomes().await?;
        for _ in 0..self.rng.random_range(1..6) {
            self.change_object(run_no).await?;
        }
        self.write_mlmd(run_no)?;
        if runs_seen > 0 && runs_seen.is_multiple_of(self.args.drill_every) {
            *drill_due = true;
        }
        if runs_seen > 0 && runs_seen.is_multiple_of(self.args.prune_every) {
            *prune_due = true;
        }
        if self.rng.random_bool(0.15) && runs_seen + 2 < self.args.runs {
            fail_next_backup(self.sb, "kfp-db")?;
            self.count("faults", "mysql-k8s create-backup failed");
        }
        Ok(())
    }

    /// The daemon for `runs` scheduled backups, with changes and faults around it; the
    /// backups it saw start.
    async fn drive(&mut self) -> Result<u32> {
        let mut d = self.start_daemon()?;
        let mut runs_seen = 0u32;
        let mut prev: Option<(String, String)> = None;
        let mut kill_at: Option<Instant> = None;
        let mut changes_at: Vec<Instant> = vec![];
        let mut drill_due = false;
        let mut prune_due = false;
        let mut last_outcome = String::new();
        let deadline = Instant::now()
            + Duration::from_secs(
                u64::from(self.args.runs) * u64::from(self.args.period) * 4 + 300,
            );
        loop {
            if Instant::now() > deadline {
                bail!("the soak did not reach {} runs in time", self.args.runs);
            }
            if let Some(status) = d.child.try_wait()? {
                let log = std::fs::read_to_string(self.tmp.path().join("serve.log"))?;
                let tail: Vec<&str> = log.lines().rev().take(20).collect();
                bail!(
                    "the daemon exited by itself ({status}):\n{}",
                    tail.join("\n")
                );
            }
            let h = self.health(&d).await;
            let running = h.as_ref().and_then(|h| {
                let r = &h["running"];
                (!r.is_null()).then(|| {
                    (
                        r["kind"].as_str().unwrap_or("").to_string(),
                        r["started-at"].as_str().unwrap_or("").to_string(),
                    )
                })
            });
            if let Some(h) = &h {
                let last = &h["last-run"];
                let key = format!("{}", last["finished-at"]);
                if !last.is_null() && key != last_outcome {
                    last_outcome = key;
                    let outcome = last["outcome"].as_str().unwrap_or("").to_string();
                    if last["kind"] == "drill" {
                        self.count("drills", &outcome);
                        if outcome != "passed" {
                            self.report
                                .drill_failures
                                .push(last["error"].as_str().unwrap_or("").to_string());
                        }
                    } else if outcome != "completed" && last["backup-id"].is_null() {
                        self.report
                            .skipped
                            .push(last["error"].as_str().unwrap_or("").to_string());
                    }
                }
            }
            let run_no = u64::from(runs_seen);
            let kind = |r: &Option<(String, String)>| r.as_ref().map(|(k, _)| k.clone());
            // Two backups back to back between two looks are two runs: the start time tells.
            let new_backup = kind(&running).as_deref() == Some("backup") && prev != running;
            let backup_ended = kind(&prev).as_deref() == Some("backup") && prev != running;
            if backup_ended {
                self.between_runs(run_no, runs_seen, &mut drill_due, &mut prune_due)
                    .await?;
            }
            if new_backup {
                runs_seen += 1;
                kill_at = self.faults_for(runs_seen);
                eprintln!(
                    "soak: run {runs_seen}/{} started{}",
                    self.args.runs,
                    if kill_at.is_some() {
                        " (to be killed)"
                    } else {
                        ""
                    }
                );
                let n = self.rng.random_range(0..3);
                let period = u64::from(self.args.period) * 1000;
                changes_at = (0..n)
                    .map(|_| {
                        Instant::now() + Duration::from_millis(self.rng.random_range(0..period / 2))
                    })
                    .collect();
                if self.rng.random_bool(0.5) {
                    self.write_mlmd(run_no + 1)?;
                }
            } else if backup_ended {
                kill_at = None;
            }
            prev = running.clone();
            if running.is_none() && drill_due {
                let r = self
                    .http
                    .post(format!("{}/v1/drills", d.url))
                    .bearer_auth(TOKEN)
                    .body("{}")
                    .send()
                    .await;
                if r.is_ok_and(|r| r.status() == 202) {
                    drill_due = false;
                    self.count("drills", "asked");
                    // It runs now: look again before anything else.
                    continue;
                }
            }
            if running.is_none() && prune_due && !drill_due {
                self.check_downloads().await?;
                let keep = self.args.keep_last.to_string();
                let (ok, text) = self.agent(&["prune", "--keep-last", &keep])?;
                if ok {
                    self.report.prunes += 1;
                    prune_due = false;
                } else if !text.contains("lock") {
                    bail!("prune failed: {text}");
                }
            }
            if let Some(at) = kill_at {
                if Instant::now() >= at {
                    kill_at = None;
                    if running.as_ref().is_some_and(|(k, _)| k == "backup") {
                        d.child.kill()?;
                        d.child.wait()?;
                        self.count("faults", "daemon SIGKILLed mid-run");
                        prev = None;
                        d = self.start_daemon()?;
                        wait_api(&self.http, &d).await?;
                        self.between_runs(run_no, runs_seen, &mut drill_due, &mut prune_due)
                            .await?;
                    }
                }
            }
            let due: Vec<Instant> = changes_at
                .iter()
                .copied()
                .filter(|t| Instant::now() >= *t)
                .collect();
            if !due.is_empty() {
                changes_at.retain(|t| Instant::now() < *t);
                for _ in due {
                    self.change_object(run_no + 1).await?;
                    if self.rng.random_bool(0.3) {
                        self.write_mlmd(run_no + 1)?;
                    }
                }
            }
            if runs_seen >= self.args.runs && running.is_none() && !drill_due && !prune_due {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // Stopped while idle: it exits on its own.
        unsafe { libc::kill(d.child.id() as i32, libc::SIGTERM) };
        let status = d.child.wait()?;
        if !status.success() {
            bail!("the daemon did not stop cleanly on SIGTERM: {status}");
        }
        self.proxy.clear();
        Ok(runs_seen)
    }

    /// Notes the phase of every scheduled backup in the repository now.
    async fn note_outcomes(&mut self) -> Result<()> {
        for sf in self.statefiles().await? {
            if sf.request != repository::RequestType::Scheduled {
                continue;
            }
            let why = sf
                .errors
                .iter()
                .map(|e| format!("{}: {}", e.component, e.message))
                .collect::<Vec<_>>()
                .join("; ");
            self.outcomes
                .insert(sf.backup_id.clone(), (sf.phase.as_str().to_string(), why));
        }
        Ok(())
    }

    fn check_that(&mut self, what: &str, ok: bool, detail: impl Into<String>) {
        self.report
            .checks
            .push((what.to_string(), ok, detail.into()));
    }

    async fn statefiles(&self) -> Result<Vec<Statefile>> {
        let mut out = vec![];
        for l in repository::list(&self.repo).await? {
            match l {
                repository::Listed::Backup(sf) => out.push(*sf),
                repository::Listed::Unreadable { id, error } => bail!("{id}: {error}"),
            }
        }
        Ok(out)
    }

    /// Packs and blobs in the repository, and those the kept backups' manifests name.
    async fn references(&self) -> Result<(BTreeMap<String, u64>, BTreeSet<String>)> {
        let mut present = BTreeMap::new();
        for prefix in [
            repository::layout::packs_prefix(),
            repository::blobs_prefix(),
        ] {
            let mut l = self.repo.list_stream(&prefix, 1000);
            while let Some(o) = l.try_next().await? {
                present.insert(o.key, o.size);
            }
        }
        let mut referenced = BTreeSet::new();
        for sf in self.statefiles().await? {
            let Some(cap) = &sf.components.mlpipeline else {
                continue;
            };
            let mut entries = repository::manifest::read(
                &self.repo,
                &cap.manifest_key,
                Some(&cap.manifest_sha256),
            );
            while let Some(e) = entries.try_next().await? {
                if let Some(k) = e.stored_object() {
                    referenced.insert(k);
                }
            }
        }
        Ok((present, referenced))
    }

    async fn check(
        &mut self,
        first_scales: &BTreeMap<String, u32>,
        runs_started: u32,
    ) -> Result<()> {
        self.note_outcomes().await?;
        let sfs = self.statefiles().await?;
        self.report.runs_started = u64::from(runs_started);
        self.report.runs = self.outcomes.len() as u64;
        self.report.completed = self
            .outcomes
            .values()
            .filter(|(phase, _)| phase == "completed")
            .count() as u64;
        self.report.failed = self
            .outcomes
            .iter()
            .filter(|(_, (phase, _))| phase != "completed")
            .map(|(id, (phase, why))| (id.clone(), phase.clone(), why.clone()))
            .collect();
        let lock = self.repo.head(&repository::lock_key()).await?;
        self.check_that("no lock left", lock.is_none(), format!("{lock:?}"));
        let scales = self.scales()?;
        let changed: Vec<String> = first_scales
            .iter()
            .filter(|(a, n)| scales.get(*a) != Some(n))
            .map(|(a, n)| format!("{a}: {n} → {:?}", scales.get(a)))
            .collect();
        self.check_that(
            "every app at its first scale",
            changed.is_empty(),
            changed.join(", "),
        );
        let pending: Vec<String> = sfs
            .iter()
            .flat_map(|s| {
                s.quiesce
                    .iter()
                    .filter(|q| !q.restored)
                    .map(move |q| format!("{} {}", s.backup_id, q.app))
            })
            .collect();
        self.check_that(
            "scale journal empty",
            pending.is_empty(),
            pending.join(", "),
        );
        let running: Vec<String> = sfs
            .iter()
            .filter(|s| {
                !matches!(
                    s.phase,
                    Phase::Completed | Phase::Failed | Phase::PartiallyFailed
                )
            })
            .map(|s| format!("{} {}", s.backup_id, s.phase.as_str()))
            .collect();
        self.check_that(
            "no backup left running",
            running.is_empty(),
            running.join(", "),
        );

        let (present, referenced) = self.references().await?;
        let orphans = present.keys().filter(|k| !referenced.contains(*k)).count();
        let orphan_bytes: u64 = present
            .iter()
            .filter(|(k, _)| !referenced.contains(*k))
            .map(|(_, n)| n)
            .sum();
        self.check_downloads().await?;
        let (downloaded, exact) = (
            self.report.backups_downloaded,
            self.report.backups_downloaded_exact,
        );
        self.check_that(
            "every completed backup, downloaded before any prune, holds what was written at its time",
            downloaded > 0 && downloaded == exact,
            format!("{exact} of {downloaded} (bytes and MLMD rows)"),
        );
        let keep = self.args.keep_last.to_string();
        let (ok, text) = self.agent(&["prune", "--keep-last", &keep])?;
        self.check_that("final prune", ok, if ok { String::new() } else { text });
        let (present, referenced) = self.references().await?;
        let missing: Vec<&String> = referenced
            .iter()
            .filter(|k| !present.contains_key(*k))
            .collect();
        self.check_that(
            "no pack or blob referenced but missing",
            missing.is_empty(),
            format!("{} missing {missing:?}", missing.len()),
        );
        let left = present.keys().filter(|k| !referenced.contains(*k)).count();
        self.check_that(
            "no pack or blob unreferenced after the final prune",
            left == 0,
            format!("{orphans} unreferenced ({orphan_bytes} bytes) before it, {left} after"),
        );
        self.report.data_lost += missing.len() as u64;

        // Every completed backup left, restored in turn and compared with the journal.
        let completed: Vec<Statefile> = self
            .statefiles()
            .await?
            .into_iter()
            .filter(|s| s.phase == Phase::Completed)
            .collect();
        for sf in &completed {
            let (ok, text) = self.agent(&[
                "restore",
                &sf.backup_id,
                "--components",
                "mlmd,mlpipeline",
                "--no-safety-backup",
            ])?;
            self.report.backups_restored += 1;
            if !ok {
                self.report.data_lost += 1;
                self.check_that(&format!("restore {}", sf.backup_id), false, text);
                continue;
            }
            let diffs = self.compare(sf).await?;
            if diffs.is_empty() {
                self.report.backups_exact += 1;
            } else {
                self.report.data_lost += 1;
                self.check_that(
                    &format!("backup {} restored exactly", sf.backup_id),
                    false,
                    diffs.join("; "),
                );
            }
            let gone = self.mysql_missing(sf).await?;
            if !gone.is_empty() {
                self.report.data_lost += gone.len() as u64;
                self.check_that(
                    &format!("backup {}'s mysql-k8s objects", sf.backup_id),
                    false,
                    gone.join(", "),
                );
            }
        }
        let asked = self.report.drills.get("asked").copied().unwrap_or(0);
        let passed = self.report.drills.get("passed").copied().unwrap_or(0);
        let not_passed = self.report.drill_failures.len();
        self.check_that(
            "every drill passed",
            not_passed == 0 && (asked == 0 || passed > 0),
            format!(
                "{passed} passed of {asked} asked; {}",
                self.report.drill_failures.join("; ")
            ),
        );
        let restored = self.report.backups_restored;
        let exact = self.report.backups_exact;
        self.check_that(
            "every completed backup kept restores to what was written at its time",
            restored > 0 && restored == exact,
            format!("{exact} of {restored} (bytes, content types, metadata, MLMD rows)"),
        );
        Ok(())
    }

    /// What MinIO and MLMD hold after restoring `sf`, against what the journal allows.
    /// What MinIO and MLMD hold after restoring `sf`, against what the journal allows.
    async fn compare(&self, sf: &Statefile) -> Result<Vec<String>> {
        let mut actual = BTreeMap::new();
        for o in self.minio.list("").await? {
            let (bytes, meta) = self.minio.get_with_meta(&o.key).await?;
            actual.insert(o.key, (sha(&bytes), meta.content_type, meta.metadata));
        }
        let rows = mlmd_rows(&self.sb.layout.mlmd_db())?;
        Ok(self.judge(sf, &actual, rows, true))
    }

    /// A backup downloaded into `dir` (`mlpipeline/<key>`, `mlmd.db`), against what the journal
    /// allows: the bytes and the MLMD rows (a directory keeps no content type or metadata).
    fn compare_download(&self, sf: &Statefile, dir: &std::path::Path) -> Result<Vec<String>> {
        let root = dir.join("mlpipeline");
        let mut actual = BTreeMap::new();
        let mut todo = vec![root.clone()];
        while let Some(d) = todo.pop() {
            let Ok(entries) = std::fs::read_dir(&d) else {
                continue;
            };
            for e in entries {
                let path = e?.path();
                if path.is_dir() {
                    todo.push(path);
                    continue;
                }
                let key = path
                    .strip_prefix(&root)?
                    .components()
                    .map(|c| c.as_os_str().to_string_lossy().into_owned())
                    .collect::<Vec<_>>()
                    .join("/");
                let bytes = std::fs::read(&path)?;
                actual.insert(key, (sha(&bytes), String::new(), BTreeMap::new()));
            }
        }
        let rows = mlmd_rows(&dir.join("mlmd.db"))?;
        Ok(self.judge(sf, &actual, rows, false))
    }

    /// Each object and the MLMD rows against the versions written before and during the
    /// backup's window; `headers` compares content types and user metadata too.
    fn judge(
        &self,
        sf: &Statefile,
        actual: &BTreeMap<String, State>,
        rows: i64,
        headers: bool,
    ) -> Vec<String> {
        let (start, end) = (sf.started_at, sf.finished_at.unwrap_or_else(Utc::now));
        let seen = |st: &Option<State>| -> Option<State> {
            st.as_ref().map(|(sha, ct, meta)| match headers {
                true => (sha.clone(), ct.clone(), meta.clone()),
                false => (sha.clone(), String::new(), BTreeMap::new()),
            })
        };
        let show = |st: &Option<State>| {
            st.as_ref()
                .map_or("absent".to_string(), |g| format!("{} {}", &g.0[..12], g.1))
        };
        let mut diffs = vec![];
        let keys: BTreeSet<&String> = actual.keys().chain(self.journal.objects.keys()).collect();
        for key in keys {
            let got = actual.get(key).cloned();
            let versions = self
                .journal
                .objects
                .get(key)
                .map(Vec::as_slice)
                .unwrap_or(&[]);
            let mut allowed: Vec<Option<State>> = Journal::acceptable(versions, start, end)
                .iter()
                .map(seen)
                .collect();
            // Never written, or written first after the backup began: it may be absent.
            if versions.first().is_none_or(|v| v.to >= start) {
                allowed.push(None);
            }
            if allowed.contains(&got) {
                continue;
            }
            let written: Vec<String> = versions
                .iter()
                .map(|v| {
                    format!(
                        "{} at {}..{}",
                        show(&v.state),
                        v.from.format("%H:%M:%S%.3f"),
                        v.to.format("%H:%M:%S%.3f")
                    )
                })
                .collect();
            diffs.push(format!(
                "{key}: holds {}, backup ran {}..{}, written: {}",
                show(&got),
                start.format("%H:%M:%S%.3f"),
                end.format("%H:%M:%S%.3f"),
                written.join(", ")
            ));
        }
        let allowed = Journal::acceptable(&self.journal.mlmd, start, end);
        if !allowed.contains(&rows) {
            diffs.push(format!(
                "MLMD: {rows} soak rows, the journal allows {allowed:?}"
            ));
        }
        diffs.truncate(10);
        diffs
    }

    /// Every completed backup not checked yet, downloaded and compared with the journal: run
    /// before each prune, so that no completed backup goes unchecked before retention forgets
    /// it.
    async fn check_downloads(&mut self) -> Result<()> {
        self.note_outcomes().await?;
        let due: Vec<String> = self
            .outcomes
            .iter()
            .filter(|(id, (phase, _))| phase == "completed" && !self.downloaded.contains(*id))
            .map(|(id, _)| id.clone())
            .collect();
        for id in due {
            self.downloaded.insert(id.clone());
            let sf = repository::load(&self.repo, &id).await?;
            let dir = self.tmp.path().join(format!("download-{id}"));
            let (ok, text) = self.agent(&["download", &id, &dir.to_string_lossy()])?;
            let diffs = match ok {
                true => self.compare_download(&sf, &dir)?,
                false => vec![format!("download failed: {text}")],
            };
            let _ = std::fs::remove_dir_all(&dir);
            self.report.backups_downloaded += 1;
            if diffs.is_empty() {
                self.report.backups_downloaded_exact += 1;
            } else {
                self.report.data_lost += 1;
                self.check_that(
                    &format!("backup {id} downloaded exactly"),
                    false,
                    diffs.join("; "),
                );
            }
        }
        Ok(())
    }

    /// The mysql-k8s objects `sf` records, looked up where they were written.
    async fn mysql_missing(&self, sf: &Statefile) -> Result<Vec<String>> {
        let mut out = vec![];
        for m in &sf.components.mysql {
            let prefix = m.location.split_once('/').map_or("", |(_, p)| p);
            if m.objects.is_empty() {
                out.push(format!(
                    "{}: no objects recorded for {}",
                    m.app, m.backup_id
                ));
            }
            let marker = format!("{}.md5", m.backup_id);
            let mut wanted: BTreeMap<&String, Option<u64>> =
                m.objects.iter().map(|(k, n)| (k, Some(*n))).collect();
            for key in [&m.backup_id, &marker] {
                wanted.entry(key).or_insert(None);
            }
            for (key, size) in wanted {
                let full = format!("{prefix}/{key}");
                match (self.dest.head(&full).await?, size) {
                    (Some(o), Some(n)) if o.size == n => {}
                    (Some(_), None) => {}
                    (other, _) => out.push(format!("{full}: {other:?}")),
                }
            }
        }
        Ok(out)
    }
}

/// The rows the soak added to an MLMD database file.
fn mlmd_rows(db: &std::path::Path) -> Result<i64> {
    let db = rusqlite::Connection::open(db)?;
    Ok(db.query_row("SELECT COUNT(*) FROM soak_marker", [], |r| r.get(0))?)
}

/// The next mysql-k8s create-backup of `app` fails, as a broken xtrabackup would.
fn fail_next_backup(sb: &Sandbox, app: &str) -> Result<()> {
    sb.model().update(|m| {
        m.faults
            .fail_next_action
            .push(backup_agent_sandbox::model::ActionFault {
                unit: app.into(),
                action: Some("create-backup".into()),
                message: "soak: xtrabackup exited with status 1".into(),
            });
        Ok(())
    })
}

async fn wait_api(http: &reqwest::Client, d: &Daemon) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if http
            .get(format!("{}/healthz", d.url))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("the restarted daemon's API never answered")
}

fn render(r: &Report) -> String {
    let mut o = String::new();
    o.push_str(&format!(
        "\n## Soak: {} scheduled backups every {} s (seed {}), {} min {} s\n\n",
        r.runs_asked,
        r.period_seconds,
        r.seed,
        r.wall_seconds / 60,
        r.wall_seconds % 60
    ));
    o.push_str(
        "| runs | with a statefile | completed | failed | killed before their statefile | data lost |\n|---:|---:|---:|---:|---:|---:|\n",
    );
    o.push_str(&format!(
        "| {} | {} | {} | {} | {} | {} |\n\n",
        r.runs_started,
        r.runs,
        r.completed,
        r.failed.len(),
        r.runs_started.saturating_sub(r.runs),
        r.data_lost
    ));
    if !r.failed.is_empty() {
        o.push_str("Failed runs:\n\n| backup | phase | reason |\n|---|---|---|\n");
        for (id, phase, why) in &r.failed {
            o.push_str(&format!("| {id} | {phase} | {} |\n", why.replace('|', "/")));
        }
        o.push('\n');
    }
    if !r.skipped.is_empty() {
        o.push_str(&format!(
            "Runs that made no backup: {} ({})\n\n",
            r.skipped.len(),
            r.skipped.join("; ").replace('|', "/")
        ));
    }
    for (title, t) in [
        ("faults injected", &r.faults),
        ("data changes", &r.changes),
        ("drills", &r.drills),
    ] {
        o.push_str(&format!("| {title} | count |\n|---|---:|\n"));
        for (k, v) in t {
            o.push_str(&format!("| {k} | {v} |\n"));
        }
        o.push('\n');
    }
    for f in &r.drill_failures {
        o.push_str(&format!("Drill not passed: {}\n\n", f.replace('|', "/")));
    }
    o.push_str(&format!("Prunes during the run: {}\n\n", r.prunes));
    o.push_str("| end check | result | detail |\n|---|---|---|\n");
    for (what, ok, detail) in &r.checks {
        o.push_str(&format!(
            "| {what} | {} | {} |\n",
            if *ok { "ok" } else { "FAILED" },
            detail.replace('|', "/").replace('\n', " ")
        ));
    }
    o
}
