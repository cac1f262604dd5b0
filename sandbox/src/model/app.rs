//! Applications and their units, as Juju and the StatefulSets behind them hold them; and what
//! a charm deployed from a local path brought and did.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::pod_uid;

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
    /// `group_replication_group_name`: MySQL Shell makes a new one whenever a cluster is created,
    /// so a restore (which re-creates the cluster) changes it.
    #[serde(default)]
    pub group_id: String,
    /// The newer backups library (LIBPATCH 19): claims its S3 repository with
    /// `group_replication_id.txt` and refuses one another cluster claimed.
    #[serde(default)]
    pub claims_repository: bool,
    /// The app peer data key `binlogs-collecting`: the leader's binlog collector uploads to
    /// `<path>/binlogs/`.
    #[serde(default)]
    pub binlogs_collecting: bool,
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
    pub unit_status: BTreeMap<u32, StatusValue>,
    #[serde(default)]
    pub app_status: Option<StatusValue>,
    /// Relation id → the unit's own databag (unit 0, the leader).
    #[serde(default)]
    pub unit_data: BTreeMap<u32, BTreeMap<String, String>>,
    /// Unit number → hooks or actions running now.
    #[serde(default)]
    pub executing: BTreeMap<u32, u32>,
    /// `juju-log` lines, oldest first.
    #[serde(default)]
    pub log: Vec<LogLine>,
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

/// A status a charm set (`status-set`), as the model keeps it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct StatusValue {
    pub status: String,
    #[serde(default)]
    pub message: String,
}

/// One `juju-log` line.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct LogLine {
    pub level: String,
    pub message: String,
}
