//! Bringing the sandbox up and down: the two S3 servers, the Kubernetes API simulator, the
//! model, the seed data, and the files a shell or a test uses (`env`, `kubeconfig`, `bin/juju`).

pub mod ckf;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::model::{ModelStore, Timing};
use crate::s3::{S3Target, WeedServer};
use crate::seed::{BucketSpec, MlmdSpec};
use ckf::{kubeflow_model, Wiring};

/// Where everything of one sandbox lives.
#[derive(Debug, Clone)]
pub struct Layout {
    pub dir: PathBuf,
}

impl Layout {
    pub fn new(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref();
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(Layout {
            dir: dir.canonicalize()?,
        })
    }
    pub fn info(&self) -> PathBuf {
        self.dir.join("sandbox.json")
    }
    pub fn model(&self) -> ModelStore {
        ModelStore::new(self.dir.join("model.json"))
    }
    pub fn env_file(&self) -> PathBuf {
        self.dir.join("env")
    }
    pub fn kubeconfig(&self) -> PathBuf {
        self.dir.join("kubeconfig")
    }
    pub fn bin(&self) -> PathBuf {
        self.dir.join("bin")
    }
    pub fn data(&self) -> PathBuf {
        self.dir.join("data")
    }
    pub fn logs(&self) -> PathBuf {
        self.dir.join("logs")
    }
    pub fn mlmd_db(&self) -> PathBuf {
        self.data().join("pods/mlmd-0/data/mlmd.db")
    }
}

/// One S3 server of the sandbox, with its keys (sandbox keys are fixed test values).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServerInfo {
    pub pid: u32,
    pub port: u16,
    pub grpc_ports: Vec<u16>,
    pub access_key: String,
    pub secret_key: String,
}

impl ServerInfo {
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
    pub fn target(&self, bucket: &str) -> S3Target {
        S3Target {
            endpoint: self.endpoint(),
            bucket: bucket.into(),
            region: "us-east-1".into(),
            access_key: self.access_key.clone(),
            secret_key: self.secret_key.clone(),
        }
    }
    fn weed(&self) -> WeedServer {
        WeedServer {
            pid: self.pid,
            s3_port: self.port,
            grpc_ports: self.grpc_ports.clone(),
        }
    }
}

/// `sandbox.json`: what `up` started, so `down` and `status` can find it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Info {
    pub dir: PathBuf,
    pub minio: ServerInfo,
    pub dest: ServerInfo,
    pub dest_bucket: String,
    /// The off-site S3 server (`up --secondary`): where `backup-agent copy` puts copies.
    #[serde(default)]
    pub secondary: Option<ServerInfo>,
    /// Where backup-agent keeps its repository inside the destination bucket.
    pub agent_path: String,
    /// Where mysql-k8s puts its backups (the s3-integrator `path`).
    pub mysql_path: String,
    pub k8s_pid: u32,
    pub k8s_port: u16,
    pub k8s_token: String,
    pub mlmd_container: String,
    pub seed: u64,
}

impl Info {
    pub fn load(layout: &Layout) -> Result<Info> {
        let text = std::fs::read_to_string(layout.info()).with_context(|| {
            format!(
                "no sandbox at {} (run `backup-agent-sandbox up` first)",
                layout.dir.display()
            )
        })?;
        Ok(serde_json::from_str(&text)?)
    }
    pub fn pids(&self) -> Vec<u32> {
        let mut v = vec![self.k8s_pid, self.minio.pid, self.dest.pid];
        v.extend(self.secondary.as_ref().map(|s| s.pid));
        v
    }

    /// The recorded processes that still run and are still ours (PIDs can be reused).
    pub fn running(&self) -> Vec<u32> {
        let mut out = vec![];
        if crate::process::is_ours(self.k8s_pid, "serve-k8s") {
            out.push(self.k8s_pid);
        }
        for s in [&self.minio, &self.dest].into_iter().chain(&self.secondary) {
            if crate::process::is_ours(s.pid, "weed") {
                out.push(s.pid);
            }
        }
        out
    }
    pub fn k8s_url(&self) -> String {
        format!("https://127.0.0.1:{}", self.k8s_port)
    }
}

/// What `up` builds.
#[derive(Debug, Clone)]
pub struct UpOptions {
    /// The sandbox binary: it is `bin/juju` (multi-call) and runs the Kubernetes simulator.
    pub exe: PathBuf,
    pub mlmd_container: String,
    pub bucket: BucketSpec,
    pub mlmd: MlmdSpec,
    pub mysql_rows: usize,
    /// Units of kfp-db and katib-db at the start (a replica to back up from: 2).
    pub db_units: u32,
    pub timing: Timing,
    pub minio_access_key: String,
    pub minio_secret_key: String,
    pub dest_access_key: String,
    pub dest_secret_key: String,
    /// Stop the servers when the thread that started them ends (for tests).
    pub die_with_parent: bool,
    /// The s3-integrator `path` the databases back up under; empty, as a deployment where
    /// nobody set it, makes mysql-k8s unable to list or restore its backups.
    pub mysql_path: String,
    /// mysql-k8s with the newer backups library, which claims its S3 repository.
    pub mysql_claims: bool,
    /// Also start an off-site S3 server (bucket [`SECONDARY_BUCKET`], keys of its own) and
    /// name it in the env file as the secondary destination.
    pub secondary: bool,
}

/// The off-site server's bucket.
pub const SECONDARY_BUCKET: &str = "ckf-offsite";

impl UpOptions {
    pub fn new(exe: impl Into<PathBuf>) -> Self {
        UpOptions {
            exe: exe.into(),
            mlmd_container: "mlmd-grpc-server".into(),
            bucket: BucketSpec::default(),
            mlmd: MlmdSpec::default(),
            mysql_rows: 200,
            db_units: 2,
            timing: Timing::default(),
            minio_access_key: "minio".into(),
            minio_secret_key: "sandbox-minio-secret-key".into(),
            dest_access_key: "sandbox-dest-access-key".into(),
            dest_secret_key: "sandbox-dest-secret-key".into(),
            die_with_parent: false,
            mysql_path: "mysql".into(),
            mysql_claims: false,
            secondary: false,
        }
    }
}

/// Stops whatever a partial `up` started when it fails.
struct Started(Vec<WeedServer>, Option<u32>);

impl Drop for Started {
    fn drop(&mut self) {
        for s in &self.0 {
            crate::s3::stop_weed(s);
        }
        if let Some(pid) = self.1 {
            crate::process::stop(pid, Duration::from_secs(5));
        }
    }
}

pub fn is_up(layout: &Layout) -> bool {
    Info::load(layout)
        .map(|i| !i.running().is_empty())
        .unwrap_or(false)
}

pub fn up(layout: &Layout, opts: &UpOptions) -> Result<Info> {
    if is_up(layout) {
        bail!(
            "a sandbox is already running in {}: run `backup-agent-sandbox down --dir {}` first",
            layout.dir.display(),
            layout.dir.display()
        );
    }
    for d in [layout.bin(), layout.data(), layout.logs()] {
        std::fs::create_dir_all(&d)?;
    }
    let mut started = Started(vec![], None);
    let minio = crate::s3::start_weed(
        &layout.dir.join("s3/minio"),
        &opts.minio_access_key,
        &opts.minio_secret_key,
        &["mlpipeline"],
        opts.die_with_parent,
    )
    .context("starting the S3 server that plays MinIO")?;
    started.0.push(minio.clone());
    let dest_bucket = "ckf-backups";
    let dest = crate::s3::start_weed(
        &layout.dir.join("s3/dest"),
        &opts.dest_access_key,
        &opts.dest_secret_key,
        &[dest_bucket],
        opts.die_with_parent,
    )
    .context("starting the destination S3 server")?;
    started.0.push(dest.clone());
    let secondary = if opts.secondary {
        let (access, secret) = ("sandbox-offsite-access-key", "sandbox-offsite-secret-key");
        let s = crate::s3::start_weed(
            &layout.dir.join("s3/secondary"),
            access,
            secret,
            &[SECONDARY_BUCKET],
            opts.die_with_parent,
        )
        .context("starting the off-site S3 server")?;
        started.0.push(s.clone());
        Some(ServerInfo {
            pid: s.pid,
            port: s.s3_port,
            grpc_ports: s.grpc_ports.clone(),
            access_key: access.into(),
            secret_key: secret.into(),
        })
    } else {
        None
    };

    let token = {
        use rand::Rng;
        let b: [u8; 24] = rand::rng().random();
        hex::encode(b)
    };
    let info_minio = ServerInfo {
        pid: minio.pid,
        port: minio.s3_port,
        grpc_ports: minio.grpc_ports.clone(),
        access_key: opts.minio_access_key.clone(),
        secret_key: opts.minio_secret_key.clone(),
    };
    let info_dest = ServerInfo {
        pid: dest.pid,
        port: dest.s3_port,
        grpc_ports: dest.grpc_ports.clone(),
        access_key: opts.dest_access_key.clone(),
        secret_key: opts.dest_secret_key.clone(),
    };
    let wiring = Wiring {
        data_dir: layout.data(),
        minio_port: minio.s3_port,
        minio_access_key: opts.minio_access_key.clone(),
        minio_secret_key: opts.minio_secret_key.clone(),
        dest_endpoint: info_dest.endpoint(),
        dest_bucket: dest_bucket.into(),
        dest_path: opts.mysql_path.clone(),
        dest_region: "us-east-1".into(),
        dest_access_key: opts.dest_access_key.clone(),
        dest_secret_key: opts.dest_secret_key.clone(),
        k8s_token: token.clone(),
        mlmd_container: opts.mlmd_container.clone(),
        db_units: opts.db_units,
        mysql_claims: opts.mysql_claims,
        secondary: secondary
            .as_ref()
            .map(|s| (s.endpoint(), SECONDARY_BUCKET.to_string())),
    };
    let model = kubeflow_model(&wiring, opts.timing.clone());
    layout.model().create(&model)?;
    // Each database saw its s3-parameters relation arrive: its S3 check runs (and, with the
    // newer library, claims the repository).
    for app in ["kfp-db", "katib-db"] {
        crate::charms::mysql_k8s::s3_credentials_changed(&layout.model(), app)
            .with_context(|| format!("{app}: the S3 check on its new relation"))?;
    }

    crate::seed::write_mlmd(&layout.mlmd_db(), &opts.mlmd)?;
    std::fs::create_dir_all(layout.data().join("pods/mlmd-0/tmp"))?;
    for app in ["kfp-db", "katib-db"] {
        crate::seed::write_mysql_data(
            &crate::charms::mysql_k8s::mysql_data_file(&model, app),
            app,
            opts.mysql_rows,
            opts.mlmd.seed,
        )?;
    }
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(crate::seed::fill_bucket(
            &info_minio.target("mlpipeline"),
            &opts.bucket,
        ))
        .context("seeding the mlpipeline bucket")?;

    crate::k8s::tls::CertFiles::in_dir(&layout.dir)
        .create()
        .context("making the Kubernetes API's CA and certificate")?;
    let (k8s_pid, k8s_port) = start_k8s(layout, opts)?;
    started.1 = Some(k8s_pid);

    let juju = layout.bin().join("juju");
    let _ = std::fs::remove_file(&juju);
    std::os::unix::fs::symlink(&opts.exe, &juju)?;

    let info = Info {
        dir: layout.dir.clone(),
        minio: info_minio,
        dest: info_dest,
        dest_bucket: dest_bucket.into(),
        secondary,
        agent_path: "ckf".into(),
        mysql_path: opts.mysql_path.clone(),
        k8s_pid,
        k8s_port,
        k8s_token: token,
        mlmd_container: opts.mlmd_container.clone(),
        seed: opts.bucket.seed,
    };
    std::fs::write(layout.kubeconfig(), kubeconfig(layout, &info)?)?;
    std::fs::write(layout.env_file(), env_file(layout, &info))?;
    std::fs::write(layout.info(), serde_json::to_vec_pretty(&info)?)?;
    std::mem::forget(started);
    Ok(info)
}

/// Starts the Kubernetes API simulator on a free port; a port taken between probing and
/// binding gets another try.
fn start_k8s(layout: &Layout, opts: &UpOptions) -> Result<(u32, u16)> {
    for _ in 0..3 {
        let port = crate::s3::free_port()?;
        let log = std::fs::File::create(layout.logs().join("k8s.log"))?;
        let mut cmd = Command::new(&opts.exe);
        cmd.args(["serve-k8s", "--dir"])
            .arg(&layout.dir)
            .args(["--port", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        crate::process::detach(&mut cmd, opts.die_with_parent);
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {} serve-k8s", opts.exe.display()))?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Ok((child.id(), port));
            }
            if !crate::process::alive(child.id()) || Instant::now() > deadline {
                crate::process::stop(child.id(), Duration::from_secs(2));
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    bail!(
        "the Kubernetes API simulator did not start; see {}",
        layout.logs().join("k8s.log").display()
    )
}

/// The kubeconfig of the sandbox's cluster: its HTTPS server, the CA that signed it (as
/// `certificate-authority-data`, the way a real cluster's admin config carries it) and the
/// service account token.
pub fn kubeconfig(layout: &Layout, info: &Info) -> Result<String> {
    use base64::Engine;
    let ca = std::fs::read(crate::k8s::tls::CertFiles::in_dir(&layout.dir).ca)
        .context("reading the Kubernetes API's CA")?;
    Ok(format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: sandbox\n  cluster:\n    server: {}\n    certificate-authority-data: {}\ncontexts:\n- name: sandbox\n  context:\n    cluster: sandbox\n    user: sandbox-admin\n    namespace: kubeflow\ncurrent-context: sandbox\nusers:\n- name: sandbox-admin\n  user:\n    token: {}\n",
        info.k8s_url(),
        base64::engine::general_purpose::STANDARD.encode(ca),
        info.k8s_token
    ))
}

/// The environment that points the agent (and `juju`, `kubectl`) at the sandbox; PATH is
/// not included: prepend [`Layout::bin`] to it.
pub fn env_vars(layout: &Layout, info: &Info) -> Vec<(&'static str, String)> {
    vec![
        ("BACKUP_AGENT_SANDBOX", layout.dir.display().to_string()),
        ("KUBECONFIG", layout.kubeconfig().display().to_string()),
        ("JUJU_MODEL", "kubeflow".into()),
        ("BACKUP_AGENT_S3_ENDPOINT", info.dest.endpoint()),
        ("BACKUP_AGENT_S3_BUCKET", info.dest_bucket.clone()),
        ("BACKUP_AGENT_S3_PATH", info.agent_path.clone()),
        ("BACKUP_AGENT_S3_REGION", "us-east-1".into()),
        ("BACKUP_AGENT_S3_URI_STYLE", "path".into()),
        ("BACKUP_AGENT_S3_ACCESS_KEY", info.dest.access_key.clone()),
        ("BACKUP_AGENT_S3_SECRET_KEY", info.dest.secret_key.clone()),
    ]
    .into_iter()
    .chain(info.secondary.iter().flat_map(|s| {
        [
            ("BACKUP_AGENT_SECONDARY_S3_ENDPOINT", s.endpoint()),
            (
                "BACKUP_AGENT_SECONDARY_S3_BUCKET",
                SECONDARY_BUCKET.to_string(),
            ),
            ("BACKUP_AGENT_SECONDARY_S3_PATH", info.agent_path.clone()),
            ("BACKUP_AGENT_SECONDARY_S3_ACCESS_KEY", s.access_key.clone()),
            ("BACKUP_AGENT_SECONDARY_S3_SECRET_KEY", s.secret_key.clone()),
        ]
    }))
    .collect()
}

fn env_file(layout: &Layout, info: &Info) -> String {
    let q = |s: &str| format!("'{}'", s.replace('\'', "'\\''"));
    let mut s = String::from(
        "# Generated by backup-agent-sandbox up: `source` this file to talk to the sandbox.\n",
    );
    for (k, v) in env_vars(layout, info) {
        s.push_str(&format!("export {k}={}\n", q(&v)));
    }
    s.push_str(&format!(
        "export PATH={}:\"$PATH\"\n",
        q(&layout.bin().display().to_string())
    ));
    s
}

/// Stops every process `up` started, by PID. Files stay in the directory unless `purge`.
pub fn down(layout: &Layout, purge: bool) -> Result<Vec<u32>> {
    let info = Info::load(layout)?;
    // Charm actions still running in their `run-task` processes.
    if let Ok(model) = layout.model().read() {
        let now = crate::model::now_ms();
        for t in model.tasks.values() {
            if let Some(pid) = t.runner_pid.filter(|_| t.status_at(now) == "running") {
                if crate::process::is_ours(pid, "run-task") {
                    crate::process::stop(pid, Duration::from_secs(2));
                }
            }
        }
    }
    // The Pebble of each workload container `juju deploy` started (and their services); a
    // failure is reported once the rest is stopped too.
    let pebbles = crate::pebble::stop_daemons(&layout.dir);
    let ours = info.running();
    if ours.contains(&info.k8s_pid) {
        crate::process::stop(info.k8s_pid, Duration::from_secs(5));
    }
    for server in [&info.minio, &info.dest].into_iter().chain(&info.secondary) {
        if ours.contains(&server.pid) {
            crate::s3::stop_weed(&server.weed());
        } else {
            crate::s3::remove_sockets(&server.weed());
        }
    }
    let still = info.running();
    if !still.is_empty() {
        bail!("processes {still:?} did not stop");
    }
    let pebbles = pebbles?;
    if purge {
        std::fs::remove_dir_all(&layout.dir)
            .with_context(|| format!("removing {}", layout.dir.display()))?;
    } else {
        std::fs::remove_file(layout.info())?;
    }
    let mut pids = info.pids();
    pids.extend(pebbles);
    Ok(pids)
}

/// A one-screen summary of a running sandbox.
pub fn status(layout: &Layout) -> Result<String> {
    let info = Info::load(layout)?;
    let model = layout.model().read()?;
    let state = |pid: u32| {
        if crate::process::alive(pid) {
            "running"
        } else {
            "STOPPED"
        }
    };
    let mut s = format!("sandbox {}\n", layout.dir.display());
    s.push_str(&format!(
        "  minio S3        {}  pid {} {}\n",
        info.minio.endpoint(),
        info.minio.pid,
        state(info.minio.pid)
    ));
    s.push_str(&format!(
        "  destination S3  {}  pid {} {}  bucket {}\n",
        info.dest.endpoint(),
        info.dest.pid,
        state(info.dest.pid),
        info.dest_bucket
    ));
    if let Some(sec) = &info.secondary {
        s.push_str(&format!(
            "  off-site S3     {}  pid {} {}  bucket {SECONDARY_BUCKET}
",
            sec.endpoint(),
            sec.pid,
            state(sec.pid),
        ));
    }
    s.push_str(&format!(
        "  kubernetes API  {}  pid {} {}\n  kubeconfig      {}  (`KUBECONFIG={} kubectl get pods`)\n",
        info.k8s_url(),
        info.k8s_pid,
        state(info.k8s_pid),
        layout.kubeconfig().display(),
        layout.kubeconfig().display(),
    ));
    for d in crate::pebble::daemons(&layout.dir) {
        let unit = d
            .dir
            .parent()
            .and_then(Path::parent)
            .and_then(Path::file_name)
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let container = d
            .dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        s.push_str(&format!(
            "  pebble {unit}/{container}  {}  pid {} {}\n",
            d.socket().display(),
            d.pid,
            if d.running() { "running" } else { "STOPPED" }
        ));
    }
    s.push_str(&format!(
        "  model {} (juju {}):\n",
        model.name, model.juju_version
    ));
    for (name, app) in &model.apps {
        s.push_str(&format!(
            "    {name:<22} scale {} units {}{}\n",
            app.scale,
            app.units.len(),
            app.blocked
                .as_ref()
                .map(|b| format!("  blocked: {b}"))
                .unwrap_or_default()
        ));
    }
    s.push_str(&format!(
        "  use it: source {}\n",
        layout.env_file().display()
    ));
    Ok(s)
}

/// A sandbox owned by a test: brought up in a temporary directory, stopped and removed on drop.
pub struct Sandbox {
    pub layout: Layout,
    pub info: Info,
    _tmp: Option<tempfile::TempDir>,
}

impl Sandbox {
    pub fn up(opts: &UpOptions) -> Result<Sandbox> {
        let tmp = tempfile::Builder::new().prefix("ba-sandbox-").tempdir()?;
        let layout = Layout::new(tmp.path())?;
        let opts = UpOptions {
            die_with_parent: true,
            ..opts.clone()
        };
        let info = up(&layout, &opts)?;
        Ok(Sandbox {
            layout,
            info,
            _tmp: Some(tmp),
        })
    }

    pub fn model(&self) -> ModelStore {
        self.layout.model()
    }

    /// A command with the sandbox's environment: its `bin/` first on PATH, KUBECONFIG, the
    /// destination settings.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new(program);
        let path = std::env::var_os("PATH").unwrap_or_default();
        let mut paths = vec![self.layout.bin()];
        paths.extend(std::env::split_paths(&path));
        cmd.env("PATH", std::env::join_paths(paths).expect("PATH joins"));
        cmd.envs(env_vars(&self.layout, &self.info));
        // Temporary files of what a test starts (and SIGKILLs) stay in the sandbox's directory,
        // removed with it, instead of in /tmp.
        let tmp = self.layout.dir.join("tmp");
        let _ = std::fs::create_dir_all(&tmp);
        cmd.env("TMPDIR", tmp);
        cmd
    }

    /// Runs the simulated `juju` as a real process, with the sandbox environment.
    pub fn juju(&self, args: &[&str]) -> std::process::Output {
        Command::new(self.layout.bin().join("juju"))
            .args(args)
            .env("BACKUP_AGENT_SANDBOX", &self.layout.dir)
            .env_remove("JUJU_MODEL")
            .output()
            .expect("running the juju simulator")
    }
}

/// One of the sandbox's two S3 servers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum S3Role {
    Minio,
    Dest,
}

impl Sandbox {
    fn server(&mut self, role: S3Role) -> (&mut ServerInfo, PathBuf) {
        match role {
            S3Role::Minio => (&mut self.info.minio, self.layout.dir.join("s3/minio")),
            S3Role::Dest => (&mut self.info.dest, self.layout.dir.join("s3/dest")),
        }
    }

    /// Kills an S3 server as a crash would (SIGKILL) and waits until it is gone.
    pub fn kill_s3(&mut self, role: S3Role) {
        let (info, _) = self.server(role);
        let pid = info.pid;
        if crate::process::is_ours(pid, "weed") {
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
        while crate::process::alive(pid) {
            std::thread::sleep(Duration::from_millis(20));
        }
        // A killed server cleans nothing up: its gRPC sockets in /tmp are ours to remove.
        crate::s3::remove_sockets(&info.weed());
    }

    /// Starts a killed S3 server again on its ports, over its data, and records its new PID
    /// (so `down` stops it).
    pub fn restart_s3(&mut self, role: S3Role) -> Result<()> {
        let layout = self.layout.clone();
        let (info, dir) = self.server(role);
        let server = crate::s3::restart_weed(&dir, true)?;
        info.pid = server.pid;
        info.grpc_ports = server.grpc_ports;
        std::fs::write(layout.info(), serde_json::to_vec_pretty(&self.info)?)?;
        Ok(())
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        let _ = down(&self.layout, false);
    }
}
