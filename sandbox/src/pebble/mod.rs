//! A Pebble simulator: the daemon of a Kubernetes sidecar charm's workload container.
//!
//! A sidecar charm manages its workload only through Pebble's HTTP API on a unix socket (in
//! Juju, `/charm/containers/<container>/pebble.socket`): it pushes files, adds a layer, replans
//! and watches the services. No Kubernetes runs here, so `backup-agent-sandbox pebble` serves
//! that API faithfully — Pebble's envelopes, status codes, messages, change and service state
//! machines — over a directory that stands in for the container's filesystem, and runs the
//! plan's services as real processes. The sandbox's `juju deploy` starts one per unit and
//! container, as Juju's pod would; `down` stops them by their recorded PIDs.
//!
//! Layout of one container (`<sandbox>/units/<app>-<n>/containers/<container>/`):
//! `pebble.socket`, `pebble.pid` (the daemon), `services.json` (its children's PIDs),
//! `pebble.log` (the daemon's output), `services/<name>.log` (each service's output), and
//! `root/` (the container's `/`).
//!
//! Deviations from real Pebble: the container is a directory, not a mount namespace (absolute
//! paths that exist under `root/` are used from there, others from the host); `user`/`group`
//! of services are ignored (files do get their owner); checks and log targets are kept in the
//! plan but not run; `before`/`after` do not order starts (independent starts run together);
//! the plan's YAML is indented by 2, not 4; layer parse errors carry serde's wording.

pub mod api;
mod error;
mod files;
pub mod plan;
mod services;

use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

pub use services::Daemon;

pub const SOCKET: &str = "pebble.socket";
pub const PID_FILE: &str = "pebble.pid";
pub const SERVICES_FILE: &str = "services.json";
pub const LOG_FILE: &str = "pebble.log";
pub const ROOT: &str = "root";

/// `<sandbox>/units/<app>-<n>/containers`: what a charm's hooks get as
/// `BACKUP_AGENT_CONTAINERS_DIR` (Juju's `/charm/containers`).
pub fn containers_dir(sandbox: &Path, app: &str, num: u32) -> PathBuf {
    sandbox
        .join("units")
        .join(format!("{app}-{num}"))
        .join("containers")
}

/// Go's `path.Clean` of an absolute path: `.`, `..` and repeated slashes resolved, never
/// above `/`.
pub fn clean(path: &str) -> String {
    let mut out: Vec<&str> = vec![];
    for seg in path.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            s => out.push(s),
        }
    }
    format!("/{}", out.join("/"))
}

/// Where the container's `path` lives on the host.
pub fn host_path(root: &Path, path: &str) -> PathBuf {
    let c = clean(path);
    let rel = c.trim_start_matches('/');
    if rel.is_empty() {
        root.to_path_buf()
    } else {
        root.join(rel)
    }
}

/// An OS error in Go's words (`no such file or directory`).
pub fn errno_text(e: &io::Error) -> String {
    let s = match e.raw_os_error() {
        Some(n) => io::Error::from_raw_os_error(n).to_string(),
        None => e.to_string(),
    };
    let s = s.split(" (os error").next().unwrap_or_default();
    let mut c = s.chars();
    c.next()
        .map(|f| f.to_lowercase().collect::<String>() + c.as_str())
        .unwrap_or_default()
}

/// A process's start time (clock ticks since boot), which tells a reused PID apart.
pub fn start_time(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().nth(19)?.parse().ok()
}

// ---------------------------------------------------------------------------------------------
// The daemon.

/// `backup-agent-sandbox pebble --socket S --root R --container C`.
#[derive(Debug, Clone)]
pub struct DaemonOptions {
    pub socket: PathBuf,
    pub root: PathBuf,
    pub container: String,
}

fn read_pid(file: &Path) -> Option<u32> {
    fs::read_to_string(file).ok()?.trim().parse().ok()
}

fn is_daemon(pid: u32, socket: &Path) -> bool {
    crate::process::is_ours(pid, &socket.display().to_string())
}

/// Runs the daemon until SIGTERM or SIGINT (or a service's `shutdown` action, or its socket
/// being removed), then stops its services. The exit code Pebble would exit with.
pub fn run(opts: &DaemonOptions) -> Result<i32> {
    let dir = opts
        .socket
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    fs::create_dir_all(&opts.root).with_context(|| format!("creating {}", opts.root.display()))?;
    let dir = dir.canonicalize()?;
    let root = opts.root.canonicalize()?;
    let socket = dir.join(opts.socket.file_name().unwrap_or(SOCKET.as_ref()));
    // sun_path holds 108 bytes with its terminating NUL.
    if socket.as_os_str().len() > 107 {
        bail!(
            "the socket path {} is longer than a unix socket allows (107 bytes)",
            socket.display()
        );
    }
    let pid_file = dir.join(PID_FILE);
    if let Some(pid) = read_pid(&pid_file) {
        if pid != std::process::id() && is_daemon(pid, &socket) {
            bail!(
                "a Pebble simulator already serves {} (pid {pid})",
                socket.display()
            );
        }
    }
    fs::write(&pid_file, format!("{}\n", std::process::id()))
        .with_context(|| format!("writing {}", pid_file.display()))?;
    std::env::set_current_dir(&root)?;
    // One thread: the services die with the daemon (PR_SET_PDEATHSIG follows the thread that
    // spawned them).
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let code = rt.block_on(serve(root, dir, socket.clone(), &opts.container));
    let _ = fs::remove_file(&socket);
    let _ = fs::remove_file(&pid_file);
    code
}

async fn serve(root: PathBuf, dir: PathBuf, socket: PathBuf, container: &str) -> Result<i32> {
    use std::future::IntoFuture;
    use tokio::signal::unix::{signal, SignalKind};
    let _ = fs::remove_file(&socket);
    let listener = tokio::net::UnixListener::bind(&socket)
        .with_context(|| format!("binding {}", socket.display()))?;
    let daemon = Daemon::new(root, dir);
    daemon.log(&format!(
        "Started daemon (container {container}, socket {}).",
        socket.display()
    ));
    let app = api::router(daemon.clone());
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut shutdown = daemon.shutdown_requested();
    let requested = async {
        loop {
            if shutdown.changed().await.is_err() {
                return 0;
            }
            if let Some(code) = *shutdown.borrow() {
                return code;
            }
        }
    };
    let gone = async {
        while socket.exists() {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    };
    let code = tokio::select! {
        r = axum::serve(listener, app).into_future() => {
            r.context("serving the Pebble API")?;
            0
        }
        _ = term.recv() => 0,
        _ = int.recv() => 0,
        code = requested => code,
        _ = gone => 0,
    };
    daemon.log("Stopping services and exiting");
    daemon.stop_all().await;
    Ok(code)
}

// ---------------------------------------------------------------------------------------------
// The sandbox's side: starting daemons, stopping them, talking to them.

/// Starts the simulator of `container` in `container_dir` (detached, like a pod outliving the
/// `juju` client that deployed it) and returns once it answers `GET /v1/system-info`; its PID.
/// `env` is the whole environment it (and so its services) gets.
pub fn start_daemon(
    exe: &Path,
    container_dir: &Path,
    container: &str,
    env: &[(String, String)],
) -> Result<u32> {
    fs::create_dir_all(container_dir.join(ROOT))
        .with_context(|| format!("creating {}", container_dir.display()))?;
    let dir = container_dir.canonicalize()?;
    let socket = dir.join(SOCKET);
    if let Some(pid) = read_pid(&dir.join(PID_FILE)) {
        if is_daemon(pid, &socket) && ping(&socket) {
            return Ok(pid);
        }
    }
    let log_path = dir.join(LOG_FILE);
    let log = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .with_context(|| format!("opening {}", log_path.display()))?;
    let mut cmd = std::process::Command::new(exe);
    cmd.arg("pebble")
        .arg("--socket")
        .arg(&socket)
        .arg("--root")
        .arg(dir.join(ROOT))
        .arg("--container")
        .arg(container)
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k, v)))
        .current_dir(dir.join(ROOT))
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    crate::process::detach(&mut cmd, false);
    let mut child = cmd
        .spawn()
        .with_context(|| format!("starting {} pebble", exe.display()))?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if ping(&socket) {
            return Ok(child.id());
        }
        if let Some(status) = child.try_wait()? {
            bail!(
                "the Pebble simulator of container {container} exited ({status}); see {}",
                log_path.display()
            );
        }
        if Instant::now() > deadline {
            crate::process::stop(child.id(), Duration::from_secs(2));
            bail!(
                "the Pebble simulator of container {container} did not answer on {} within 30s; see {}",
                socket.display(),
                log_path.display()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn ping(socket: &Path) -> bool {
    matches!(
        request(socket, "GET", "/v1/system-info", None),
        Ok((200, _))
    )
}

/// A container directory of the sandbox with a recorded daemon.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// `<sandbox>/units/<app>-<n>/containers/<container>`.
    pub dir: PathBuf,
    pub pid: u32,
}

impl Recorded {
    pub fn socket(&self) -> PathBuf {
        self.dir.join(SOCKET)
    }
    /// Whether the recorded daemon still runs (and is still a Pebble simulator).
    pub fn running(&self) -> bool {
        is_daemon(self.pid, &self.socket())
    }
}

/// The daemons the sandbox in `sandbox` started, from their PID files.
pub fn daemons(sandbox: &Path) -> Vec<Recorded> {
    let mut out = vec![];
    let Ok(units) = fs::read_dir(sandbox.join("units")) else {
        return out;
    };
    let mut units: Vec<PathBuf> = units.flatten().map(|e| e.path()).collect();
    units.sort();
    for unit in units {
        let Ok(containers) = fs::read_dir(unit.join("containers")) else {
            continue;
        };
        let mut containers: Vec<PathBuf> = containers.flatten().map(|e| e.path()).collect();
        containers.sort();
        for dir in containers {
            if let Some(pid) = read_pid(&dir.join(PID_FILE)) {
                out.push(Recorded { dir, pid });
            }
        }
    }
    out
}

/// SIGKILL to service processes a daemon recorded and left behind (a daemon that was killed),
/// each only if its start time still matches (PIDs get reused).
fn stop_leftover_services(dir: &Path) -> Vec<u32> {
    let Ok(text) = fs::read_to_string(dir.join(SERVICES_FILE)) else {
        return vec![];
    };
    let recorded: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
    let mut killed = vec![];
    for v in recorded.as_object().into_iter().flat_map(|m| m.values()) {
        let (Some(pid), Some(start)) = (v["pid"].as_u64(), v["start-time"].as_u64()) else {
            continue;
        };
        let pid = pid as u32;
        if crate::process::alive(pid) && start_time(pid) == Some(start) {
            unsafe {
                libc::kill(-(pid as i32), libc::SIGKILL);
                libc::kill(pid as i32, libc::SIGKILL);
            }
            killed.push(pid);
        }
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while killed.iter().any(|p| crate::process::alive(*p)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    killed
}

/// Stops every daemon of the sandbox by its recorded PID (SIGTERM: it stops its services,
/// each with its kill delay), then any service process a dead daemon left behind. The PIDs
/// stopped; an error if one is still running.
pub fn stop_daemons(sandbox: &Path) -> Result<Vec<u32>> {
    let mut stopped = vec![];
    let mut still = vec![];
    for d in daemons(sandbox) {
        if d.running() {
            crate::process::stop(d.pid, Duration::from_secs(20));
            stopped.push(d.pid);
        }
        if d.running() {
            still.push(d.pid);
            continue;
        }
        stopped.extend(stop_leftover_services(&d.dir));
        let _ = fs::remove_file(d.dir.join(PID_FILE));
        let _ = fs::remove_file(d.socket());
    }
    if !still.is_empty() {
        bail!("Pebble simulators {still:?} did not stop");
    }
    Ok(stopped)
}

/// One HTTP/1.1 request to a daemon's socket (the sandbox's own client: readiness checks);
/// the status and the body.
pub fn request(
    socket: &Path,
    method: &str,
    path: &str,
    body: Option<(&str, &[u8])>,
) -> Result<(u16, Vec<u8>)> {
    let mut s = std::os::unix::net::UnixStream::connect(socket)
        .with_context(|| format!("connecting to {}", socket.display()))?;
    s.set_read_timeout(Some(Duration::from_secs(120)))?;
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n");
    if let Some((ct, b)) = body {
        head.push_str(&format!(
            "Content-Type: {ct}\r\nContent-Length: {}\r\n",
            b.len()
        ));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes())?;
    if let Some((_, b)) = body {
        s.write_all(b)?;
    }
    let mut resp = vec![];
    s.read_to_end(&mut resp)?;
    let end = resp
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .context("no HTTP header in the answer")?;
    let head = String::from_utf8_lossy(&resp[..end]).into_owned();
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("no HTTP status in the answer")?;
    let mut body = resp[end + 4..].to_vec();
    let chunked = head.lines().any(|l| {
        l.split_once(':').is_some_and(|(k, v)| {
            k.trim().eq_ignore_ascii_case("transfer-encoding") && v.trim() == "chunked"
        })
    });
    if chunked {
        body = dechunk(&body).context("a malformed chunked answer")?;
    }
    Ok((status, body))
}

fn dechunk(mut b: &[u8]) -> Option<Vec<u8>> {
    let mut out = vec![];
    loop {
        let eol = b.windows(2).position(|w| w == b"\r\n")?;
        let size = usize::from_str_radix(
            String::from_utf8_lossy(&b[..eol]).split(';').next()?.trim(),
            16,
        )
        .ok()?;
        b = &b[eol + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(b.get(..size)?);
        b = b.get(size + 2..)?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn container_paths_stay_inside_the_root() {
        assert_eq!(clean("/a/./b//c/../d"), "/a/b/d");
        assert_eq!(clean("/../../etc/passwd"), "/etc/passwd");
        assert_eq!(host_path(Path::new("/r"), "/../x/.."), PathBuf::from("/r"));
        assert_eq!(
            host_path(Path::new("/r"), "/opt/../opt/bin"),
            PathBuf::from("/r/opt/bin")
        );
    }

    #[test]
    fn errors_read_like_go() {
        let e = io::Error::from_raw_os_error(libc::ENOENT);
        assert_eq!(errno_text(&e), "no such file or directory");
    }
}
