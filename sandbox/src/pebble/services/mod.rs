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

use std::collections::{BTreeMap, VecDeque};
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{json, Value};
use tokio::sync::{broadcast, mpsc, oneshot, watch, Notify};

mod changes;
mod logs;
mod processes;

use super::plan::{self, Layer, Plan, Service};
use changes::Change;
pub use logs::LogEntry;
use logs::LAST_LOG_LINES;

/// How long a started process must stay up for the start to count as successful.
pub const OKAY_DELAY: Duration = Duration::from_secs(1);
/// How long after SIGKILL a stop gives up.
const FAIL_DELAY: Duration = Duration::from_secs(5);

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
