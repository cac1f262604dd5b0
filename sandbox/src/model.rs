//! The simulated Juju model and the Kubernetes objects derived from it, kept in one JSON file.
//!
//! Every simulator process (the `juju` CLI, the Kubernetes API server, the sandbox commands)
//! loads this file under an exclusive lock, lets simulated time catch up (`settle`), changes it
//! and writes it back atomically. Asynchrony is modelled with due times rather than background
//! threads, so the state is the same whichever process looks first.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use fs2::FileExt;
use serde::{Deserialize, Serialize};

/// Milliseconds since the Unix epoch: the model's clock.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Model {
    pub name: String,
    pub uuid: String,
    pub controller: String,
    pub cloud: String,
    pub region: String,
    pub juju_version: String,
    pub created_ms: u64,
    /// Where the simulated workloads keep their files (pod filesystems, mysql data).
    pub data_dir: PathBuf,
    pub apps: BTreeMap<String, App>,
    pub relations: Vec<Relation>,
    pub tasks: BTreeMap<u64, Task>,
    pub next_task: u64,
    pub next_relation: u32,
    pub faults: Faults,
    pub timing: Timing,
    pub k8s: K8sState,
    /// User secrets (`juju add-secret`), by id.
    #[serde(default)]
    pub secrets: BTreeMap<String, Secret>,
}

/// The controller's API address as the sandbox's `juju show-controller` gives it.
pub const API_ENDPOINT: &str = "127.0.0.1:17070";

/// A user secret: `juju add-secret NAME ...`, readable by the applications it is granted to.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Secret {
    pub id: String,
    pub name: String,
    #[serde(default)]
    pub description: String,
    pub content: BTreeMap<String, String>,
    #[serde(default)]
    pub grants: BTreeSet<String>,
    pub created_ms: u64,
}

/// A charm deployed from a local file or directory (`juju deploy ./x.charm`): what the sandbox
/// read from it and what its hooks did.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct LocalCharm {
    /// The unpacked charm (holds `dispatch`).
    pub dir: PathBuf,
    pub name: String,
    /// Endpoint name → role (`requires`, `provides`, `peers`) and interface.
    #[serde(default)]
    pub endpoints: BTreeMap<String, CharmEndpoint>,
    /// Resource name → type and file name, from metadata.yaml.
    #[serde(default)]
    pub resource_meta: BTreeMap<String, ResourceMeta>,
    /// Attached resources: name → file.
    #[serde(default)]
    pub resources: BTreeMap<String, PathBuf>,
    /// actions.yaml as JSON.
    #[serde(default)]
    pub actions: serde_json::Value,
    #[serde(default)]
    pub trust: bool,
    /// Unit number → the status its charm set.
    #[serde(default)]
    pub unit_status: BTreeMap<u32, crate::hook_tools::StatusValue>,
    #[serde(default)]
    pub app_status: Option<crate::hook_tools::StatusValue>,
    /// Relation id → the unit's own databag (unit 0, the leader).
    #[serde(default)]
    pub unit_data: BTreeMap<u32, BTreeMap<String, String>>,
    /// Unit number → hooks or actions running now.
    #[serde(default)]
    pub executing: BTreeMap<u32, u32>,
    /// `juju-log` lines, oldest first.
    #[serde(default)]
    pub log: Vec<crate::hook_tools::LogLine>,
    /// Every hook run, in order, with its exit code (`install:0`).
    #[serde(default)]
    pub hooks: Vec<String>,
    #[serde(default)]
    pub next_context: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct CharmEndpoint {
    pub role: String,
    pub interface: String,
    #[serde(default)]
    pub limit: Option<u32>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct ResourceMeta {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub filename: Option<String>,
}

/// How long simulated changes take. Small by default so tests stay fast, but never zero:
/// callers must poll, as they would against a real controller.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Timing {
    /// From `scale-application` until units appear or go.
    pub scale_delay_ms: u64,
    /// From a unit's (or pod's) creation until it is active and ready.
    pub ready_delay_ms: u64,
    /// A deleted pod stays terminating for this long, then is absent until it comes back.
    pub pod_terminating_ms: u64,
    pub pod_recreate_ms: u64,
    /// The time every action takes, as seen by `juju run --wait` and `show-task`.
    pub action_ms: u64,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            scale_delay_ms: 400,
            ready_delay_ms: 600,
            pod_terminating_ms: 200,
            pod_recreate_ms: 400,
            action_ms: 50,
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Faults {
    /// One-shot failures of the next matching action.
    #[serde(default)]
    pub fail_next_action: Vec<ActionFault>,
    /// Applications whose `scale-application` never settles.
    #[serde(default)]
    pub hang_scale: BTreeSet<String>,
    /// The next N juju invocations exit 1 with a connection error before doing anything.
    #[serde(default)]
    pub juju_errors: u32,
    /// Extra time every action takes (a slow controller or a large database).
    #[serde(default)]
    pub action_delay_ms: u64,
    /// The Kubernetes API answers 503 to everything.
    #[serde(default)]
    pub k8s_unavailable: bool,
    /// Exec streams are cut after this many stdout bytes (a dropped connection).
    #[serde(default)]
    pub exec_cut_after_bytes: Option<u64>,
    /// Only the next exec stream is cut (a blip), not every one.
    #[serde(default)]
    pub exec_cut_once: bool,
    /// The next exec stream stops after this many stdout bytes and sets `exec_paused`; it goes
    /// on when `exec_paused` is cleared (a test changes a file mid-copy in between).
    #[serde(default)]
    pub exec_pause_after_bytes: Option<u64>,
    #[serde(default)]
    pub exec_paused: bool,
    /// Applications whose deleted pods never come back (an image that cannot be pulled).
    #[serde(default)]
    pub pods_stuck: BTreeSet<String>,
    /// The API server speaks only the older `v4.channel.k8s.io` stream protocol (no stdin close).
    #[serde(default)]
    pub k8s_v4_only: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct ActionFault {
    /// A unit (`kfp-db/1`), or an application name for any of its units.
    pub unit: String,
    #[serde(default)]
    pub action: Option<String>,
    pub message: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct App {
    pub charm: String,
    pub charm_rev: u32,
    pub channel: String,
    pub workload_version: String,
    /// The scale Juju was asked for; `units` catches up after `timing.scale_delay_ms`.
    pub scale: u32,
    pub units: BTreeMap<u32, Unit>,
    pub next_unit: u32,
    pub scaling: Option<Scaling>,
    /// Set by charms that block themselves (mysql-k8s after a restore).
    pub blocked: Option<String>,
    pub config: BTreeMap<String, ConfigOption>,
    /// The workload container of the app's pods (Kubernetes sidecar charms); `None` when the
    /// charm has only its `charm` container.
    pub container: Option<String>,
    /// Ports the workload listens on, for services and port-forwarding: pod port → host port.
    pub ports: BTreeMap<u16, u16>,
    pub mysql: Option<MysqlCluster>,
    pub since_ms: u64,
    /// Set for a charm deployed from a local path: its files, metadata and hook results.
    #[serde(default)]
    pub local: Option<LocalCharm>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Scaling {
    pub target: u32,
    pub due_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct MysqlCluster {
    /// Unit number of the primary.
    pub primary: Option<u32>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Unit {
    /// StatefulSet ordinal of the unit's pod (`<app>-<ordinal>`); reused after scale-down,
    /// while unit numbers only grow, as on a real Kubernetes model.
    pub ordinal: u32,
    pub leader: bool,
    pub ready_at_ms: u64,
    pub pod_uid: String,
    pub pod_created_ms: u64,
    pub restarts: u32,
    /// Set while the pod is being deleted and recreated.
    pub pod_deleted_ms: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct ConfigOption {
    #[serde(rename = "type")]
    pub kind: String,
    pub description: String,
    pub default: Option<serde_json::Value>,
    pub value: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct RelationEnd {
    pub app: String,
    pub endpoint: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Relation {
    pub id: u32,
    pub interface: String,
    pub ends: [RelationEnd; 2],
    /// Application databags by application name.
    pub app_data: BTreeMap<String, BTreeMap<String, String>>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Task {
    pub id: u64,
    pub unit: String,
    pub action: String,
    pub params: serde_json::Map<String, serde_json::Value>,
    /// `completed` or `failed` once the task is over.
    pub outcome: String,
    pub message: String,
    pub results: serde_json::Map<String, serde_json::Value>,
    pub log: Vec<String>,
    pub enqueued_ms: u64,
    pub started_ms: u64,
    pub completed_ms: u64,
    /// Run by a local charm's `dispatch` (in a background process), not simulated.
    #[serde(default)]
    pub charm: bool,
    /// When each `log` line was written (charm tasks).
    #[serde(default)]
    pub log_ms: Vec<u64>,
    /// The `run-task` process running a charm task (stopped by `down`).
    #[serde(default)]
    pub runner_pid: Option<u32>,
}

impl Task {
    /// What Juju reports now: a task whose simulated run time has not elapsed is `running`.
    pub fn status_at(&self, now: u64) -> &str {
        if now < self.completed_ms {
            "running"
        } else {
            &self.outcome
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct K8sState {
    pub token: String,
    pub resource_version: u64,
    /// Argo Workflows and Katib Experiments, as the API returns them.
    pub workflows: Vec<serde_json::Value>,
    pub experiments: Vec<serde_json::Value>,
}

impl Model {
    pub fn namespace(&self) -> &str {
        &self.name
    }

    /// The controller's uuid, stable for the model.
    pub fn controller_uuid(&self) -> String {
        stable_uid(&format!("controller/{}", self.uuid))
    }

    /// The admin password of the simulated controller, stable for the model.
    pub fn admin_password(&self) -> String {
        use sha2::Digest;
        hex::encode(&sha2::Sha256::digest(format!("admin-password/{}", self.uuid).as_bytes())[..16])
    }

    /// A PEM-looking (not parseable) CA certificate, stable for the model.
    pub fn ca_cert(&self) -> String {
        use sha2::Digest;
        const B64: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut body = String::from("MIIEEzCCAnugAwIBAgIVAN");
        let mut n = 0u32;
        while body.len() < 1024 {
            let d = sha2::Sha256::digest(format!("ca/{}/{n}", self.uuid).as_bytes());
            body.extend(d.iter().map(|b| B64[(*b & 63) as usize] as char));
            n += 1;
        }
        body.truncate(1024);
        let lines: Vec<&str> = body
            .as_bytes()
            .chunks(64)
            .map(|c| std::str::from_utf8(c).unwrap())
            .collect();
        format!(
            "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
            lines.join("\n")
        )
    }

    pub fn app(&self, name: &str) -> Option<&App> {
        self.apps.get(name)
    }

    /// Finds a unit by its Juju name (`app/N`).
    pub fn unit(&self, unit: &str) -> Option<(&str, u32, &Unit)> {
        let (app, num) = split_unit(unit)?;
        let (name, a) = self.apps.get_key_value(app)?;
        a.units.get(&num).map(|u| (name.as_str(), num, u))
    }

    /// Lets simulated time catch up: pending scalings land, deleted pods come back.
    pub fn settle(&mut self, now: u64) {
        let ready_delay = self.timing.ready_delay_ms;
        let recreate = self.timing.pod_terminating_ms + self.timing.pod_recreate_ms;
        for (name, app) in self.apps.iter_mut() {
            if let Some(s) = app.scaling.clone() {
                if now >= s.due_ms && !self.faults.hang_scale.contains(name) {
                    app.apply_scale(name, s.target, s.due_ms, ready_delay);
                    app.scaling = None;
                }
            }
            let stuck = self.faults.pods_stuck.contains(name);
            for unit in app.units.values_mut() {
                if let Some(deleted) = unit.pod_deleted_ms.filter(|_| !stuck) {
                    if now >= deleted + recreate {
                        unit.pod_deleted_ms = None;
                        unit.pod_uid = pod_uid(name, unit.ordinal, deleted + recreate);
                        unit.pod_created_ms = deleted + recreate;
                        unit.ready_at_ms = deleted + recreate + ready_delay;
                        unit.restarts += 1;
                    }
                }
            }
        }
    }

    pub fn relations_of<'a>(&'a self, app: &'a str) -> impl Iterator<Item = &'a Relation> + 'a {
        self.relations
            .iter()
            .filter(move |r| r.ends.iter().any(|e| e.app == app))
    }

    /// The relation between `app`'s `endpoint` and anything, with the other side's name.
    pub fn relation_on(&self, app: &str, endpoint: &str) -> Option<(&Relation, &RelationEnd)> {
        self.relations.iter().find_map(|r| {
            let (mine, other) = if r.ends[0].app == app {
                (&r.ends[0], &r.ends[1])
            } else if r.ends[1].app == app {
                (&r.ends[1], &r.ends[0])
            } else {
                return None;
            };
            (mine.endpoint == endpoint).then_some((r, other))
        })
    }

    pub fn add_relation(&mut self, a: (&str, &str), b: (&str, &str), interface: &str) -> u32 {
        let id = self.next_relation;
        self.next_relation += 1;
        self.relations.push(Relation {
            id,
            interface: interface.into(),
            ends: [
                RelationEnd {
                    app: a.0.into(),
                    endpoint: a.1.into(),
                },
                RelationEnd {
                    app: b.0.into(),
                    endpoint: b.1.into(),
                },
            ],
            app_data: BTreeMap::new(),
        });
        id
    }
}

impl App {
    pub fn new(charm: &str, rev: u32, channel: &str, version: &str, now: u64) -> App {
        App {
            charm: charm.into(),
            charm_rev: rev,
            channel: channel.into(),
            workload_version: version.into(),
            scale: 0,
            units: BTreeMap::new(),
            next_unit: 0,
            scaling: None,
            blocked: None,
            config: BTreeMap::new(),
            container: None,
            ports: BTreeMap::new(),
            mysql: None,
            since_ms: now,
            local: None,
        }
    }

    pub fn is_ready(unit: &Unit, now: u64) -> bool {
        unit.pod_deleted_ms.is_none() && now >= unit.ready_at_ms
    }

    /// Adds or removes units until there are `target`, the highest pod ordinals going first
    /// (a StatefulSet scales down from the end).
    pub fn apply_scale(&mut self, name: &str, target: u32, at: u64, ready_delay: u64) {
        while (self.units.len() as u32) > target {
            let victim = self
                .units
                .iter()
                .max_by_key(|(_, u)| u.ordinal)
                .map(|(n, _)| *n)
                .expect("non-empty");
            self.units.remove(&victim);
        }
        while (self.units.len() as u32) < target {
            let used: BTreeSet<u32> = self.units.values().map(|u| u.ordinal).collect();
            let ordinal = (0..).find(|o| !used.contains(o)).expect("free ordinal");
            let num = self.next_unit;
            self.next_unit += 1;
            self.units.insert(
                num,
                Unit {
                    ordinal,
                    leader: false,
                    ready_at_ms: at + ready_delay,
                    pod_uid: pod_uid(name, ordinal, at),
                    pod_created_ms: at,
                    restarts: 0,
                    pod_deleted_ms: None,
                },
            );
        }
        if !self.units.values().any(|u| u.leader) {
            if let Some(u) = self.units.values_mut().next() {
                u.leader = true;
            }
        }
        if let Some(m) = self.mysql.as_mut() {
            if !m.primary.is_some_and(|p| self.units.contains_key(&p)) {
                m.primary = self.units.keys().next().copied();
            }
        }
    }

    pub fn config_value(&self, key: &str) -> Option<&serde_json::Value> {
        let opt = self.config.get(key)?;
        opt.value.as_ref().or(opt.default.as_ref())
    }

    pub fn config_str(&self, key: &str) -> String {
        match self.config_value(key) {
            Some(serde_json::Value::String(s)) => s.clone(),
            Some(v) => v.to_string(),
            None => String::new(),
        }
    }
}

pub fn split_unit(unit: &str) -> Option<(&str, u32)> {
    let (app, num) = unit.rsplit_once('/')?;
    Some((app, num.parse().ok()?))
}

/// A pod's uid follows from what created it, so every process that settles the model at any
/// time computes the same one.
pub fn pod_uid(app: &str, ordinal: u32, created_ms: u64) -> String {
    stable_uid(&format!("pod/{app}/{ordinal}/{created_ms}"))
}

pub fn stable_uid(seed: &str) -> String {
    use sha2::Digest;
    uuid_from(&sha2::Sha256::digest(seed.as_bytes()))
}

/// Pod IP of `<app>-<ordinal>`, the same in juju's status and the Kubernetes API.
pub fn pod_ip(app: &str, ordinal: u32) -> String {
    let h = app
        .bytes()
        .fold(7u32, |a, b| a.wrapping_mul(31).wrapping_add(b as u32));
    format!("10.1.{}.{}", 10 + h % 200, 10 + ordinal)
}

pub fn new_uid() -> String {
    use rand::Rng;
    let b: [u8; 16] = rand::rng().random();
    uuid_from(&b)
}

/// A UUID-shaped string from the first 16 bytes of `bytes` (random or a digest, for stable ids).
pub fn uuid_from(bytes: &[u8]) -> String {
    let h = hex::encode(&bytes[..16]);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// The model file and its lock.
#[derive(Debug, Clone)]
pub struct ModelStore {
    path: PathBuf,
}

impl ModelStore {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        ModelStore { path: path.into() }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn lock(&self) -> Result<File> {
        let lock_path = self.path.with_extension("lock");
        let f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .with_context(|| format!("opening {}", lock_path.display()))?;
        f.lock_exclusive()
            .with_context(|| format!("locking {}", lock_path.display()))?;
        Ok(f)
    }

    fn load(&self) -> Result<Model> {
        let text = fs::read_to_string(&self.path).with_context(|| {
            format!(
                "reading the sandbox model {} (is the sandbox up?)",
                self.path.display()
            )
        })?;
        serde_json::from_str(&text)
            .with_context(|| format!("parsing the sandbox model {}", self.path.display()))
    }

    fn save(&self, model: &Model) -> Result<()> {
        let tmp = self.path.with_extension("json.tmp");
        let mut f = File::create(&tmp)?;
        f.write_all(&serde_json::to_vec_pretty(model)?)?;
        f.sync_all()?;
        fs::rename(&tmp, &self.path)?;
        Ok(())
    }

    /// The model as it is now.
    pub fn read(&self) -> Result<Model> {
        let _guard = self.lock()?;
        let mut m = self.load()?;
        m.settle(now_ms());
        Ok(m)
    }

    /// Changes the model under the lock; nothing is written when `f` fails.
    pub fn update<T>(&self, f: impl FnOnce(&mut Model) -> Result<T>) -> Result<T> {
        let _guard = self.lock()?;
        let mut m = self.load()?;
        m.settle(now_ms());
        let out = f(&mut m)?;
        self.save(&m)?;
        Ok(out)
    }

    pub fn create(&self, model: &Model) -> Result<()> {
        let _guard = self.lock()?;
        self.save(model)
    }
}
