//! One service's processes: starting it (and waiting out the okay delay), supervising it
//! (exits, `on-success`/`on-failure`, backoff), stopping it (SIGTERM, then SIGKILL after the
//! kill delay), and spawning its command inside the container.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::{mpsc, oneshot};

use super::{
    task_line, Counter, Daemon, Inner, Outcome, Running, State, StopRequest, Svc, FAIL_DELAY,
    LAST_LOG_LINES, OKAY_DELAY,
};
use crate::pebble::plan::{self, Service};

impl Daemon {
    pub(super) async fn start_service(self: &Arc<Self>, name: &str) -> Outcome {
        let (config, backing_off) = {
            let mut g = self.lock();
            let Some(config) = g.plan.services.get(name).cloned() else {
                return Outcome::failed(vec![], format!("cannot find service {name:?} in plan"));
            };
            match g.services.get_mut(name) {
                Some(s) if matches!(s.state, State::Starting | State::Running) => {
                    // Pebble refreshes the configuration of a running service it is asked to
                    // start, without restarting it.
                    s.config = config;
                    return Outcome::info(format!("Service {name:?} already started."));
                }
                Some(s) if matches!(s.state, State::Terminating | State::Killing) => {
                    return Outcome::failed(
                        vec![],
                        format!("cannot start service while {}", s.state.name()),
                    );
                }
                Some(s) if s.state == State::Backoff => (config, s.control.take()),
                _ => (config, None),
            }
        };
        if let Some(control) = backing_off {
            let (tx, rx) = oneshot::channel();
            if control.send(tx).is_ok() {
                let _ = rx.await;
            }
        }
        let generation = self.lock().next(Counter::Start);
        let spawned = self.spawn(name, &config);
        let started = {
            let mut g = self.lock();
            let since = g
                .services
                .get(name)
                .map(|s| s.since)
                .unwrap_or_else(Utc::now);
            let mut svc = Svc {
                config: config.clone(),
                state: State::Stopped,
                since,
                generation,
                pid: None,
                control: None,
            };
            match spawned {
                Err(e) => {
                    g.services.insert(name.to_string(), svc);
                    g.transition(name, generation, State::Stopped);
                    Err(e)
                }
                Ok(running) => {
                    let (control, stops) = mpsc::unbounded_channel();
                    svc.pid = Some((
                        running.pid,
                        crate::pebble::start_time(running.pid).unwrap_or(0),
                    ));
                    svc.control = Some(control);
                    g.services.insert(name.to_string(), svc);
                    g.transition(name, generation, State::Starting);
                    self.record_pids(&g);
                    Ok((running, stops))
                }
            }
        };
        let (running, stops) = match started {
            Ok(r) => r,
            Err(e) => return Outcome::failed(vec![], format!("cannot start service: {e}")),
        };
        let (started_tx, started_rx) = oneshot::channel();
        tokio::spawn(self.clone().supervise(
            name.to_string(),
            generation,
            config,
            running,
            Some(started_tx),
            stops,
        ));
        match started_rx.await {
            Ok(Ok(())) => Outcome::default(),
            Ok(Err(e)) => {
                let mut log = vec![];
                let last = self.last_lines(name, LAST_LOG_LINES);
                if !last.is_empty() {
                    log.push(task_line(
                        "INFO",
                        &format!("Most recent service output:\n{}", last.join("\n")),
                    ));
                }
                Outcome::failed(log, e)
            }
            Err(_) => Outcome::failed(
                vec![],
                "internal error: the service's supervisor ended".into(),
            ),
        }
    }

    pub(super) async fn stop_service(&self, name: &str) -> Outcome {
        let control = {
            let mut g = self.lock();
            let Some(s) = g.services.get_mut(name) else {
                return Outcome::info(format!("Service {name:?} has never been started."));
            };
            match s.state {
                State::Terminating | State::Killing => {
                    return Outcome::info(format!("Service {name:?} already stopping."))
                }
                State::Stopped => {
                    return Outcome::info(format!("Service {name:?} already stopped."))
                }
                State::Exited => {
                    let generation = s.generation;
                    g.transition(name, generation, State::Stopped);
                    return Outcome::info(format!("Service {name:?} had already exited."));
                }
                _ => s.control.clone(),
            }
        };
        let Some(control) = control else {
            return Outcome::default();
        };
        let (tx, rx) = oneshot::channel();
        if control.send(tx).is_err() {
            return Outcome::default();
        }
        match rx.await {
            Ok(Err(e)) => Outcome::failed(vec![], format!("cannot stop service: {e}")),
            _ => Outcome::default(),
        }
    }

    /// Stops every service (the daemon is going away).
    pub async fn stop_all(&self) {
        let names: Vec<String> = self.lock().services.keys().cloned().collect();
        futures::future::join_all(names.iter().map(|n| self.stop_service(n))).await;
    }

    /// Follows one start of a service: the okay delay, exits and what `on-success` or
    /// `on-failure` say to do about them (restarts after a backoff), and stop requests.
    pub(super) async fn supervise(
        self: Arc<Self>,
        name: String,
        generation: u64,
        config: Service,
        mut running: Running,
        mut started: Option<oneshot::Sender<Result<(), String>>>,
        mut stops: mpsc::UnboundedReceiver<StopRequest>,
    ) {
        let mut backoff = Duration::ZERO;
        loop {
            let t0 = Instant::now();
            let okay = tokio::time::sleep(OKAY_DELAY);
            tokio::pin!(okay);
            let status = loop {
                tokio::select! {
                    _ = &mut okay, if started.is_some() => {
                        if let Some(tx) = started.take() {
                            let _ = tx.send(Ok(()));
                        }
                        self.lock().transition(&name, generation, State::Running);
                    }
                    status = running.child.wait() => break status,
                    request = stops.recv() => {
                        if let Some(tx) = started.take() {
                            let _ = tx.send(Err(format!(
                                "stopped before the {} okay delay",
                                plan::go_duration(OKAY_DELAY)
                            )));
                        }
                        let result = self.terminate(&name, generation, &config, &mut running).await;
                        self.exited(&name, generation, State::Stopped);
                        if let Some(reply) = request {
                            let _ = reply.send(result);
                        }
                        return;
                    }
                }
            };
            // Go reports -1 for a process ended by a signal.
            let code = status.ok().and_then(|s| s.code()).unwrap_or(-1);
            let success = code == 0;
            let (action, on) = if success {
                (config.on_success.as_str(), "on-success")
            } else {
                (config.on_failure.as_str(), "on-failure")
            };
            let action = if action.is_empty() { "restart" } else { action };
            self.log(&format!(
                "Service {name:?} stopped unexpectedly with code {code}"
            ));
            // The service is in its next state before a start waiting on it hears it failed.
            let fail_start = |started: &mut Option<oneshot::Sender<Result<(), String>>>| {
                if let Some(tx) = started.take() {
                    let _ = tx.send(Err(format!(
                        "cannot start service: exited quickly with code {code}"
                    )));
                }
            };
            if let Some(shutdown) = self.final_exit(&name, generation, action, on, success) {
                fail_start(&mut started);
                if let Some(code) = shutdown {
                    let _ = self.shutdown.send(Some(code));
                }
                return;
            }
            if t0.elapsed() >= config.backoff_limit() {
                backoff = Duration::ZERO;
            }
            backoff = if backoff.is_zero() {
                config.backoff_delay()
            } else {
                backoff
                    .mul_f64(config.backoff_factor())
                    .min(config.backoff_limit())
            };
            let jitter = backoff.mul_f64(rand::random::<f64>() * 0.1);
            self.log(&format!(
                "Service {name:?} {on} action is \"restart\", waiting ~{} before restart",
                plan::go_duration(backoff)
            ));
            let current = self.exited(&name, generation, State::Backoff);
            fail_start(&mut started);
            if !current {
                return;
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff + jitter) => {}
                request = stops.recv() => {
                    self.log(&format!("Service {name:?} stopped while waiting for backoff"));
                    self.lock().transition(&name, generation, State::Stopped);
                    if let Some(reply) = request {
                        let _ = reply.send(Ok(()));
                    }
                    return;
                }
            }
            running = match self.respawn(&name, generation, &config) {
                Some(r) => r,
                None => return,
            };
        }
    }

    /// What an `ignore` or `shutdown` exit action does: `None` for `restart` (the caller backs
    /// off and restarts); else the end of the service, with the daemon's exit code for
    /// `shutdown`.
    fn final_exit(
        &self,
        name: &str,
        generation: u64,
        action: &str,
        on: &str,
        success: bool,
    ) -> Option<Option<i32>> {
        match action {
            "ignore" => {
                self.log(&format!(
                    "Service {name:?} {on} action is \"ignore\", not doing anything further"
                ));
                let state = if success {
                    State::Stopped
                } else {
                    State::Exited
                };
                self.exited(name, generation, state);
                Some(None)
            }
            "shutdown" => {
                self.log(&format!(
                    "Service {name:?} {on} action is \"shutdown\", triggering {} shutdown",
                    if success { "success" } else { "failure" }
                ));
                self.exited(name, generation, State::Exited);
                // Pebble exits 10 after a failure shutdown.
                Some(Some(if success { 0 } else { 10 }))
            }
            _ => None,
        }
    }

    /// Starts the service again after its backoff; `None` (and the service stopped) when it
    /// cannot.
    fn respawn(self: &Arc<Self>, name: &str, generation: u64, config: &Service) -> Option<Running> {
        let running = match self.spawn(name, config) {
            Ok(r) => r,
            Err(e) => {
                self.log(&format!("Cannot restart service {name:?}: {e}"));
                self.lock().transition(name, generation, State::Stopped);
                return None;
            }
        };
        let mut g = self.lock();
        if let Some(s) = g
            .services
            .get_mut(name)
            .filter(|s| s.generation == generation)
        {
            s.pid = Some((
                running.pid,
                crate::pebble::start_time(running.pid).unwrap_or(0),
            ));
        }
        g.transition(name, generation, State::Running);
        self.record_pids(&g);
        Some(running)
    }

    /// The process is gone: clears its PID and moves the service to `state`.
    pub(super) fn exited(&self, name: &str, generation: u64, state: State) -> bool {
        let mut g = self.lock();
        if let Some(s) = g
            .services
            .get_mut(name)
            .filter(|s| s.generation == generation)
        {
            s.pid = None;
        }
        let moved = g.transition(name, generation, state);
        self.record_pids(&g);
        moved
    }

    /// SIGTERM to the service's process group, SIGKILL after its kill delay.
    pub(super) async fn terminate(
        &self,
        name: &str,
        generation: u64,
        config: &Service,
        running: &mut Running,
    ) -> Result<(), String> {
        let group = -(running.pid as i32);
        unsafe { libc::kill(group, libc::SIGTERM) };
        self.lock().transition(name, generation, State::Terminating);
        if tokio::time::timeout(config.kill_delay(), running.child.wait())
            .await
            .is_ok()
        {
            return Ok(());
        }
        unsafe { libc::kill(group, libc::SIGKILL) };
        self.lock().transition(name, generation, State::Killing);
        match tokio::time::timeout(FAIL_DELAY, running.child.wait()).await {
            Ok(_) => Ok(()),
            Err(_) => Err("process still running after SIGTERM and SIGKILL".into()),
        }
    }

    /// Writes `services.json`: each running service's PID and start time.
    pub(super) fn record_pids(&self, g: &Inner) {
        let pids: BTreeMap<&String, Value> = g
            .services
            .iter()
            .filter_map(|(n, s)| {
                s.pid
                    .map(|(pid, start)| (n, json!({"pid": pid, "start-time": start})))
            })
            .collect();
        let path = self.dir.join(crate::pebble::SERVICES_FILE);
        let tmp = path.with_extension("json.tmp");
        if std::fs::write(&tmp, json!(pids).to_string()).is_ok() {
            let _ = std::fs::rename(&tmp, &path);
        }
    }

    /// Starts the service's command in the container: its own process group, the daemon's
    /// environment plus the service's, output to the log buffer and `services/<name>.log`.
    pub(super) fn spawn(self: &Arc<Self>, name: &str, config: &Service) -> Result<Running, String> {
        let args = config.command_args(name)?;
        let program = self.executable(&args[0])?;
        let mut cmd = tokio::process::Command::new(&program);
        for a in &args[1..] {
            cmd.arg(self.rerooted(a));
        }
        for (k, v) in &config.environment {
            cmd.env(k, self.rerooted(v));
        }
        if !config.working_dir.is_empty() {
            let wd = &config.working_dir;
            let inside = crate::pebble::host_path(&self.root, wd);
            let dir = if wd.starts_with('/') && inside.is_dir() {
                inside
            } else {
                PathBuf::from(wd)
            };
            if !dir.is_dir() {
                return Err(format!("chdir {wd}: no such file or directory"));
            }
            cmd.current_dir(dir);
        }
        cmd.stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .process_group(0);
        // The container's processes die with it (the daemon runs its runtime on one thread,
        // so the spawning thread lives as long as the daemon).
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let mut child = cmd.spawn().map_err(|e| {
            format!(
                "fork/exec {}: {}",
                if args[0].contains('/') {
                    args[0].as_str()
                } else {
                    program.to_str().unwrap_or_default()
                },
                crate::pebble::errno_text(&e)
            )
        })?;
        let pid = child.id().unwrap_or(0);
        self.log(&format!("Service {name:?} starting: {}", config.command));
        if let Some(out) = child.stdout.take() {
            tokio::spawn(self.clone().pump(name.to_string(), out));
        }
        if let Some(err) = child.stderr.take() {
            tokio::spawn(self.clone().pump(name.to_string(), err));
        }
        Ok(Running { child, pid })
    }

    /// Where the container's `path` is on the host when it exists there, else `value` as is.
    pub(super) fn rerooted(&self, value: &str) -> String {
        if value.starts_with('/') {
            let p = crate::pebble::host_path(&self.root, value);
            if p.symlink_metadata().is_ok() {
                return p.display().to_string();
            }
        }
        value.to_string()
    }

    /// The program to run: an absolute path in the container (or on the host when the
    /// container lacks it), or a bare name looked up in PATH, the container's directories
    /// first.
    pub(super) fn executable(&self, arg0: &str) -> Result<PathBuf, String> {
        if arg0.contains('/') {
            return Ok(PathBuf::from(self.rerooted(arg0)));
        }
        let path = std::env::var("PATH").unwrap_or_else(|_| "/usr/bin:/bin".into());
        let dirs: Vec<&str> = path.split(':').filter(|d| d.starts_with('/')).collect();
        let candidates = dirs
            .iter()
            .map(|d| crate::pebble::host_path(&self.root, &format!("{d}/{arg0}")))
            .chain(dirs.iter().map(|d| Path::new(d).join(arg0)));
        for c in candidates {
            use std::os::unix::fs::PermissionsExt;
            if c.metadata()
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            {
                return Ok(c);
            }
        }
        Err(format!(
            "exec: {arg0:?}: executable file not found in $PATH"
        ))
    }

    // -----------------------------------------------------------------------------------------
    // Service output.

    pub(super) async fn pump(
        self: Arc<Self>,
        name: String,
        out: impl tokio::io::AsyncRead + Unpin,
    ) {
        let mut r = BufReader::new(out);
        let mut buf = vec![];
        loop {
            buf.clear();
            match r.read_until(b'\n', &mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {
                    let line = String::from_utf8_lossy(&buf);
                    self.append_log(&name, line.trim_end_matches('\n').to_string());
                }
            }
        }
    }
}
