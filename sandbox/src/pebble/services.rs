//! The service manager behind the simulated Pebble: the plan's services run as real child
//! processes in their own process groups, with Pebble's state machine and timings — a start
//! succeeds once the process has stayed up for the 1 s okay delay; a process that exits is
//! restarted, ignored or shuts the daemon down as `on-success`/`on-failure` say, restarts
//! backing off from `backoff-delay` by `backoff-factor` up to `backoff-limit`; a stop is
//! SIGTERM to the group, then SIGKILL after `kill-delay`. Requests become changes of tasks
//! (`start`, `stop`) whose statuses and errors read like Pebble's.
//!
//! The container is a directory (`root`): absolute paths in the command, the working directory
//! and environment values that exist under it are used from there, so a charm that pushed its
//! binary runs that binary. Each child's PID (with its start time, so a reused PID is never
//! signalled) is recorded in `services.json` next to the socket, for `down` to stop what a
//! killed daemon left behind.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::{broadcast, mpsc, oneshot, watch, Notify};

use super::api::ApiError;
use super::plan::{self, Layer, Plan, Service};

/// How long a started process must stay up for the start to count as successful.
pub const OKAY_DELAY: Duration = Duration::from_secs(1);
/// How long after SIGKILL a stop gives up.
const FAIL_DELAY: Duration = Duration::from_secs(5);
/// The output kept per service for `/v1/logs` (Pebble's ring buffer size).
const MAX_LOG_BYTES: usize = 100 * 1024;
/// Lines of output a failed start adds to its task's log.
const LAST_LOG_LINES: usize = 20;

pub fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

/// Where a service is in Pebble's state machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Starting,
    Running,
    Terminating,
    Killing,
    Stopped,
    Backoff,
    Exited,
}

impl State {
    /// The `current` status `GET /v1/services` shows.
    fn status(self) -> &'static str {
        match self {
            State::Starting | State::Running | State::Terminating | State::Killing => "active",
            State::Backoff => "backoff",
            State::Exited => "error",
            State::Stopped => "inactive",
        }
    }
    fn name(self) -> &'static str {
        match self {
            State::Starting => "starting",
            State::Running => "running",
            State::Terminating => "terminating",
            State::Killing => "killing",
            State::Stopped => "stopped",
            State::Backoff => "backoff",
            State::Exited => "exited",
        }
    }
}

/// A stop request to a service's supervisor, answered when the service has stopped.
type StopRequest = oneshot::Sender<Result<(), String>>;

struct Svc {
    /// The configuration it was started with (a replan restarts it when the plan differs).
    config: Service,
    state: State,
    since: DateTime<Utc>,
    /// Which start this is: a supervisor of an older start changes nothing.
    generation: u64,
    pid: Option<(u32, u64)>,
    control: Option<mpsc::UnboundedSender<StopRequest>>,
}

/// One line of a service's output.
#[derive(Debug, Clone)]
pub struct LogEntry {
    pub seq: u64,
    pub time: DateTime<Utc>,
    pub service: String,
    pub message: String,
}

impl LogEntry {
    /// The JSON line `/v1/logs` answers with.
    pub fn json_line(&self) -> String {
        format!(
            "{}\n",
            json!({"time": rfc3339(self.time), "service": self.service, "message": self.message})
        )
    }
}

#[derive(Debug, Clone)]
struct Task {
    id: u64,
    kind: &'static str,
    service: String,
    status: &'static str,
    log: Vec<String>,
    error: Option<String>,
    spawn: DateTime<Utc>,
    ready: Option<DateTime<Utc>>,
}

impl Task {
    fn summary(&self) -> String {
        let verb = if self.kind == "start" {
            "Start"
        } else {
            "Stop"
        };
        format!("{verb} service {:?}", self.service)
    }
}

#[derive(Debug, Clone)]
struct Change {
    id: u64,
    kind: String,
    summary: String,
    status: &'static str,
    tasks: Vec<Task>,
    services: Vec<String>,
    spawn: DateTime<Utc>,
    ready: Option<DateTime<Utc>>,
}

impl Change {
    fn is_ready(&self) -> bool {
        matches!(self.status, "Done" | "Error" | "Hold" | "Undone")
    }
    /// Pebble's change error: one line per failed task.
    fn err(&self) -> Option<String> {
        let lines: Vec<String> = self
            .tasks
            .iter()
            .filter_map(|t| t.error.as_ref().map(|e| format!("- {} ({e})", t.summary())))
            .collect();
        (!lines.is_empty())
            .then(|| format!("cannot perform the following tasks:\n{}", lines.join("\n")))
    }
    fn json(&self) -> Value {
        let tasks: Vec<Value> = self
            .tasks
            .iter()
            .map(|t| {
                let done = i32::from(matches!(t.status, "Done" | "Error"));
                let mut v = json!({
                    "id": t.id.to_string(), "kind": t.kind, "summary": t.summary(),
                    "status": t.status, "progress": {"label": "", "done": done, "total": 1},
                    "spawn-time": rfc3339(t.spawn),
                });
                if !t.log.is_empty() {
                    v["log"] = json!(t.log);
                }
                if let Some(r) = t.ready {
                    v["ready-time"] = json!(rfc3339(r));
                }
                v
            })
            .collect();
        let mut v = json!({
            "id": self.id.to_string(), "kind": self.kind, "summary": self.summary,
            "status": self.status, "ready": self.is_ready(), "spawn-time": rfc3339(self.spawn),
        });
        if !tasks.is_empty() {
            v["tasks"] = json!(tasks);
        }
        if let Some(e) = self.err() {
            v["err"] = json!(e);
        }
        if let Some(r) = self.ready {
            v["ready-time"] = json!(rfc3339(r));
        }
        v
    }
}

#[derive(Clone, Copy)]
enum Counter {
    Change,
    Task,
    Start,
}

#[derive(Default)]
struct Inner {
    layers: Vec<Layer>,
    plan: Plan,
    services: BTreeMap<String, Svc>,
    changes: BTreeMap<u64, Change>,
    /// Counters of change ids, task ids and service starts (each its own, as in Pebble).
    counters: [u64; 3],
    log_seq: u64,
    logs: BTreeMap<String, (VecDeque<LogEntry>, usize)>,
}

impl Inner {
    fn next(&mut self, counter: Counter) -> u64 {
        let c = &mut self.counters[counter as usize];
        *c += 1;
        *c
    }

    /// Moves service `name` (of start `generation`) to `state`; `false` when a newer start
    /// owns it now.
    fn transition(&mut self, name: &str, generation: u64, state: State) -> bool {
        match self.services.get_mut(name) {
            Some(s) if s.generation == generation => {
                if s.state.status() != state.status() {
                    s.since = Utc::now();
                }
                s.state = state;
                true
            }
            _ => false,
        }
    }
}

/// What a task did: lines for its log, and its error.
#[derive(Default)]
struct Outcome {
    log: Vec<String>,
    error: Option<String>,
}

impl Outcome {
    fn info(msg: impl Into<String>) -> Self {
        Outcome {
            log: vec![task_line("INFO", &msg.into())],
            error: None,
        }
    }
    fn failed(log: Vec<String>, err: String) -> Self {
        let mut log = log;
        log.push(task_line("ERROR", &err));
        Outcome {
            log,
            error: Some(err),
        }
    }
}

fn task_line(level: &str, msg: &str) -> String {
    format!(
        "{} {level} {msg}",
        Utc::now().to_rfc3339_opts(SecondsFormat::Secs, true)
    )
}

/// A started child process, and where its output goes.
struct Running {
    child: tokio::process::Child,
    pid: u32,
}

/// The simulated Pebble daemon of one container.
pub struct Daemon {
    /// The container's filesystem.
    pub root: PathBuf,
    /// The container's directory: the socket, `services/<name>.log`, `services.json`.
    pub dir: PathBuf,
    pub boot_id: String,
    inner: Mutex<Inner>,
    ready: Notify,
    logs_tx: broadcast::Sender<LogEntry>,
    shutdown: watch::Sender<Option<i32>>,
}

impl Daemon {
    pub fn new(root: PathBuf, dir: PathBuf) -> Arc<Daemon> {
        let boot_id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|_| crate::model::new_uid());
        Arc::new(Daemon {
            root,
            dir,
            boot_id,
            inner: Mutex::default(),
            ready: Notify::new(),
            logs_tx: broadcast::channel(1024).0,
            shutdown: watch::channel(None).0,
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A line in the daemon's own log (its stderr).
    pub fn log(&self, msg: &str) {
        let line = format!("{} [pebble] {msg}\n", rfc3339(Utc::now()));
        let _ = std::io::stderr().write_all(line.as_bytes());
    }

    /// Changes to `Some(exit code)` when a service's `shutdown` action stops the daemon.
    pub fn shutdown_requested(&self) -> watch::Receiver<Option<i32>> {
        self.shutdown.subscribe()
    }

    // -----------------------------------------------------------------------------------------
    // Layers and the plan.

    /// Adds (or with `combine`, combines into the layer of the same label) a layer.
    pub fn add_layer(&self, layer: Layer, combine: bool) -> Result<(), String> {
        let mut g = self.lock();
        let mut layers = g.layers.clone();
        match layers.iter().position(|l| l.label == layer.label) {
            Some(_) if !combine => return Err(format!("layer {:?} already exists", layer.label)),
            Some(i) => {
                let mut merged = plan::combine(&[layers[i].clone(), layer])?;
                merged.label = layers[i].label.clone();
                layers[i] = merged;
            }
            None => layers.push(layer),
        }
        let plan = plan::plan_of(&layers)?;
        g.layers = layers;
        g.plan = plan;
        Ok(())
    }

    pub fn plan(&self) -> Plan {
        self.lock().plan.clone()
    }

    // -----------------------------------------------------------------------------------------
    // Service status.

    /// `GET /v1/services`: the plan's services (all, or those named), by name.
    pub fn services(&self, names: &[String]) -> Vec<Value> {
        let g = self.lock();
        g.plan
            .services
            .iter()
            .filter(|(n, _)| names.is_empty() || names.contains(n))
            .map(|(name, cfg)| {
                let mut v = json!({"name": name, "startup": cfg.startup(), "current": "inactive"});
                if let Some(s) = g.services.get(name) {
                    v["current"] = json!(s.state.status());
                    v["current-since"] = json!(rfc3339(s.since));
                }
                v
            })
            .collect()
    }

    // -----------------------------------------------------------------------------------------
    // Changes.

    pub fn change(&self, id: &str) -> Option<Value> {
        let g = self.lock();
        id.parse::<u64>()
            .ok()
            .and_then(|n| g.changes.get(&n))
            .map(Change::json)
    }

    /// `GET /v1/changes`: `select` is `all`, `in-progress` or `ready`; `for` a service.
    pub fn changes(&self, select: &str, service: Option<&str>) -> Vec<Value> {
        let g = self.lock();
        g.changes
            .values()
            .filter(|c| match select {
                "all" => true,
                "ready" => c.is_ready(),
                _ => !c.is_ready(),
            })
            .filter(|c| service.is_none_or(|s| c.services.iter().any(|x| x == s)))
            .map(Change::json)
            .collect()
    }

    /// Waits until change `id` is ready; `None` if it does not exist, `Some(Err(()))` when
    /// `timeout` passes first.
    pub async fn wait_change(
        &self,
        id: &str,
        timeout: Option<Duration>,
    ) -> Option<Result<Value, ()>> {
        let n = id.parse::<u64>().ok()?;
        let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
        loop {
            let notified = self.ready.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let g = self.lock();
                let c = g.changes.get(&n)?;
                if c.is_ready() {
                    return Some(Ok(c.json()));
                }
            }
            match deadline {
                Some(d) => {
                    if tokio::time::timeout_at(d, notified).await.is_err() {
                        return Some(Err(()));
                    }
                }
                None => notified.await,
            }
        }
    }

    /// `POST /v1/services`: validates like Pebble, records the change and starts it; its id.
    pub fn services_action(
        self: &Arc<Self>,
        action: &str,
        names: Vec<String>,
    ) -> Result<u64, ApiError> {
        let bad = |m: String| ApiError::bad_request(m);
        let mut g = self.lock();
        let mut names = names;
        match action {
            "replan" | "autostart" if !names.is_empty() => {
                return Err(bad(format!("{action} accepts no service names")))
            }
            "autostart" => {
                names = g
                    .plan
                    .services
                    .iter()
                    .filter(|(_, s)| s.startup == "enabled")
                    .map(|(n, _)| n.clone())
                    .collect();
                if names.is_empty() {
                    return Err(ApiError::bad_request("no default services")
                        .with_kind("no-default-services"));
                }
            }
            "replan" => {}
            _ if names.is_empty() => {
                return Err(bad(format!("must specify services for {action} action")))
            }
            _ => {}
        }
        let cannot = |e: String| bad(format!("cannot {action} services: {e}"));
        let (stops, starts, counted): (Vec<String>, Vec<String>, Vec<String>) = match action {
            "start" | "autostart" => {
                let starts = start_order(&g.plan, &names).map_err(cannot)?;
                (vec![], starts.clone(), starts)
            }
            "stop" => {
                let stops = stop_order(&g.plan, &names).map_err(cannot)?;
                (stops.clone(), vec![], stops)
            }
            "restart" => {
                let stops: Vec<String> = stop_order(&g.plan, &names)
                    .map_err(cannot)?
                    .into_iter()
                    .filter(|n| names.contains(n))
                    .collect();
                let starts = start_order(&g.plan, &names).map_err(cannot)?;
                (stops, starts.clone(), starts)
            }
            "replan" => {
                let mut restart = BTreeSet::new();
                for (name, svc) in &g.services {
                    if g.plan.services.get(name) == Some(&svc.config) {
                        continue;
                    }
                    restart.insert(name.clone());
                }
                let starts: Vec<String> = g
                    .plan
                    .services
                    .iter()
                    .filter(|(n, s)| restart.contains(*n) || s.startup == "enabled")
                    .map(|(n, _)| n.clone())
                    .collect();
                let starts = start_order(&g.plan, &starts).map_err(cannot)?;
                let stops: Vec<String> = restart.into_iter().collect();
                let all: BTreeSet<String> = stops.iter().chain(&starts).cloned().collect();
                names = all.iter().cloned().collect();
                (stops, starts, names.clone())
            }
            _ => return Err(bad(format!("invalid action {action:?}"))),
        };
        let title = {
            let mut c = action.chars();
            c.next()
                .map(|f| f.to_uppercase().collect::<String>() + c.as_str())
                .unwrap_or_default()
        };
        let now = Utc::now();
        let id = g.next(Counter::Change);
        let summary = match counted.len() {
            _ if stops.is_empty() && starts.is_empty() => format!("{title} - no services"),
            1 => format!("{title} service {:?}", names[0]),
            n => format!("{title} service {:?} and {} more", names[0], n - 1),
        };
        let mut tasks = vec![];
        for (kind, list) in [("stop", &stops), ("start", &starts)] {
            for s in list {
                tasks.push(Task {
                    id: g.next(Counter::Task),
                    kind,
                    service: s.clone(),
                    status: "Do",
                    log: vec![],
                    error: None,
                    spawn: now,
                    ready: None,
                });
            }
        }
        let empty = tasks.is_empty();
        g.changes.insert(
            id,
            Change {
                id,
                kind: action.to_string(),
                summary,
                status: if empty { "Done" } else { "Do" },
                tasks,
                services: names,
                spawn: now,
                ready: empty.then_some(now),
            },
        );
        drop(g);
        if empty {
            self.ready.notify_waiters();
        } else {
            tokio::spawn(self.clone().run_change(id));
        }
        Ok(id)
    }

    fn set_task(&self, change: u64, task: u64, status: &'static str, out: Option<Outcome>) {
        let mut g = self.lock();
        let Some(t) = g
            .changes
            .get_mut(&change)
            .and_then(|c| c.tasks.iter_mut().find(|t| t.id == task))
        else {
            return;
        };
        t.status = status;
        if let Some(o) = out {
            t.log.extend(o.log);
            t.status = if o.error.is_some() { "Error" } else { "Done" };
            t.error = o.error;
            t.ready = Some(Utc::now());
        }
    }

    /// Runs a change's tasks: the stops one after the other, then the starts together (each
    /// service is its own lane); a failed stop holds the starts.
    async fn run_change(self: Arc<Self>, id: u64) {
        let tasks: Vec<(u64, &'static str, String)> = {
            let mut g = self.lock();
            let Some(c) = g.changes.get_mut(&id) else {
                return;
            };
            c.status = "Doing";
            c.tasks
                .iter()
                .map(|t| (t.id, t.kind, t.service.clone()))
                .collect()
        };
        let mut failed = false;
        for (tid, _, name) in tasks.iter().filter(|t| t.1 == "stop") {
            self.set_task(id, *tid, "Doing", None);
            let out = self.stop_service(name).await;
            failed |= out.error.is_some();
            self.set_task(id, *tid, "Done", Some(out));
        }
        let starts = tasks.iter().filter(|t| t.1 == "start");
        if failed {
            for (tid, _, _) in starts {
                self.set_task(id, *tid, "Hold", None);
            }
        } else {
            futures::future::join_all(starts.map(|(tid, _, name)| {
                let d = self.clone();
                async move {
                    d.set_task(id, *tid, "Doing", None);
                    let out = d.start_service(name).await;
                    d.set_task(id, *tid, "Done", Some(out));
                }
            }))
            .await;
        }
        {
            let mut g = self.lock();
            if let Some(c) = g.changes.get_mut(&id) {
                c.status = if c.tasks.iter().any(|t| t.status == "Error") {
                    "Error"
                } else {
                    "Done"
                };
                c.ready = Some(Utc::now());
                let err = c.err();
                drop(g);
                if let Some(e) = err {
                    self.log(&format!("Change {id} failed: {}", e.replace('\n', " ")));
                }
            }
        }
        self.ready.notify_waiters();
    }

    // -----------------------------------------------------------------------------------------
    // Starting and stopping one service.

    async fn start_service(self: &Arc<Self>, name: &str) -> Outcome {
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
                    svc.pid = Some((running.pid, super::start_time(running.pid).unwrap_or(0)));
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

    async fn stop_service(&self, name: &str) -> Outcome {
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
    async fn supervise(
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
                    self.exited(&name, generation, state);
                    fail_start(&mut started);
                    return;
                }
                "shutdown" => {
                    self.log(&format!(
                        "Service {name:?} {on} action is \"shutdown\", triggering {} shutdown",
                        if success { "success" } else { "failure" }
                    ));
                    self.exited(&name, generation, State::Exited);
                    fail_start(&mut started);
                    // Pebble exits 10 after a failure shutdown.
                    let _ = self.shutdown.send(Some(if success { 0 } else { 10 }));
                    return;
                }
                _ => {}
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
            running = match self.spawn(&name, &config) {
                Ok(r) => r,
                Err(e) => {
                    self.log(&format!("Cannot restart service {name:?}: {e}"));
                    self.lock().transition(&name, generation, State::Stopped);
                    return;
                }
            };
            let mut g = self.lock();
            if let Some(s) = g
                .services
                .get_mut(&name)
                .filter(|s| s.generation == generation)
            {
                s.pid = Some((running.pid, super::start_time(running.pid).unwrap_or(0)));
            }
            g.transition(&name, generation, State::Running);
            self.record_pids(&g);
        }
    }

    /// The process is gone: clears its PID and moves the service to `state`.
    fn exited(&self, name: &str, generation: u64, state: State) -> bool {
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
    async fn terminate(
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
    fn record_pids(&self, g: &Inner) {
        let pids: BTreeMap<&String, Value> = g
            .services
            .iter()
            .filter_map(|(n, s)| {
                s.pid
                    .map(|(pid, start)| (n, json!({"pid": pid, "start-time": start})))
            })
            .collect();
        let path = self.dir.join(super::SERVICES_FILE);
        let tmp = path.with_extension("json.tmp");
        if std::fs::write(&tmp, json!(pids).to_string()).is_ok() {
            let _ = std::fs::rename(&tmp, &path);
        }
    }

    /// Starts the service's command in the container: its own process group, the daemon's
    /// environment plus the service's, output to the log buffer and `services/<name>.log`.
    fn spawn(self: &Arc<Self>, name: &str, config: &Service) -> Result<Running, String> {
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
            let inside = super::host_path(&self.root, wd);
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
                super::errno_text(&e)
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
    fn rerooted(&self, value: &str) -> String {
        if value.starts_with('/') {
            let p = super::host_path(&self.root, value);
            if p.symlink_metadata().is_ok() {
                return p.display().to_string();
            }
        }
        value.to_string()
    }

    /// The program to run: an absolute path in the container (or on the host when the
    /// container lacks it), or a bare name looked up in PATH, the container's directories
    /// first.
    fn executable(&self, arg0: &str) -> Result<PathBuf, String> {
        if arg0.contains('/') {
            return Ok(PathBuf::from(self.rerooted(arg0)));
        }
        let path = std::env::var("PATH").unwrap_or_else(|_| "/usr/bin:/bin".into());
        let dirs: Vec<&str> = path.split(':').filter(|d| d.starts_with('/')).collect();
        let candidates = dirs
            .iter()
            .map(|d| super::host_path(&self.root, &format!("{d}/{arg0}")))
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

    async fn pump(self: Arc<Self>, name: String, out: impl tokio::io::AsyncRead + Unpin) {
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

    fn append_log(&self, name: &str, message: String) {
        let entry = {
            let mut g = self.lock();
            g.log_seq += 1;
            let entry = LogEntry {
                seq: g.log_seq,
                time: Utc::now(),
                service: name.to_string(),
                message,
            };
            let (q, bytes) = g.logs.entry(name.to_string()).or_default();
            *bytes += entry.message.len();
            q.push_back(entry.clone());
            while *bytes > MAX_LOG_BYTES && q.len() > 1 {
                let old = q.pop_front().unwrap();
                *bytes -= old.message.len();
            }
            entry
        };
        let line = format!("{} [{name}] {}\n", rfc3339(entry.time), entry.message);
        let dir = self.dir.join("services");
        let _ = std::fs::create_dir_all(&dir);
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join(format!("{name}.log")))
        {
            let _ = f.write_all(line.as_bytes());
        }
        // Pebble copies its services' output to its own stdout too (`kubectl logs`).
        let _ = std::io::stdout().write_all(line.as_bytes());
        let _ = self.logs_tx.send(entry);
    }

    fn last_lines(&self, name: &str, n: usize) -> Vec<String> {
        let g = self.lock();
        g.logs
            .get(name)
            .map(|(q, _)| {
                q.iter()
                    .skip(q.len().saturating_sub(n))
                    .map(|e| format!("    {}", e.message))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The last `n` lines (`None`: all) of the services' output, oldest first, and the
    /// sequence number they run up to.
    pub fn logs(&self, services: &[String], n: Option<usize>) -> (Vec<LogEntry>, u64) {
        let g = self.lock();
        let mut all: Vec<LogEntry> = g
            .logs
            .iter()
            .filter(|(s, _)| services.is_empty() || services.contains(s))
            .flat_map(|(_, (q, _))| q.iter().cloned())
            .collect();
        all.sort_by_key(|e| e.seq);
        if let Some(n) = n {
            all.drain(..all.len().saturating_sub(n));
        }
        (all, g.log_seq)
    }

    /// Output from now on, for `follow=true`.
    pub fn subscribe_logs(&self) -> broadcast::Receiver<LogEntry> {
        self.logs_tx.subscribe()
    }

    /// The plan's service names (what `/v1/logs` shows without `services=`).
    pub fn service_names(&self) -> Vec<String> {
        self.lock().plan.services.keys().cloned().collect()
    }
}

/// The services to start for `names`: them and what they require, or Pebble's error for a
/// name the plan lacks. (Without before/after ordering: independent starts run together.)
fn start_order(plan: &Plan, names: &[String]) -> Result<Vec<String>, String> {
    let mut out: Vec<String> = vec![];
    let mut pending: VecDeque<String> = names.iter().cloned().collect();
    while let Some(n) = pending.pop_front() {
        if out.contains(&n) {
            continue;
        }
        let svc = plan
            .services
            .get(&n)
            .ok_or_else(|| format!("service {n:?} does not exist"))?;
        pending.extend(svc.requires.iter().cloned());
        out.push(n);
    }
    Ok(out)
}

/// The services to stop for `names`: them and what requires them.
fn stop_order(plan: &Plan, names: &[String]) -> Result<Vec<String>, String> {
    let mut out: Vec<String> = vec![];
    let mut pending: VecDeque<String> = names.iter().cloned().collect();
    while let Some(n) = pending.pop_front() {
        if out.contains(&n) {
            continue;
        }
        if !plan.services.contains_key(&n) {
            return Err(format!("service {n:?} does not exist"));
        }
        pending.extend(
            plan.services
                .iter()
                .filter(|(_, s)| s.requires.contains(&n))
                .map(|(k, _)| k.clone()),
        );
        out.push(n);
    }
    Ok(out)
}
