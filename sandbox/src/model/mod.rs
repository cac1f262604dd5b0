//! The simulated Juju model and the Kubernetes objects derived from it, kept in one JSON file.
//!
//! Every simulator process (the `juju` CLI, the Kubernetes API server, the sandbox commands)
//! loads this file under an exclusive lock, lets simulated time catch up (`settle`), changes it
//! and writes it back atomically. Asynchrony is modelled with due times rather than background
//! threads, so the state is the same whichever process looks first.

mod app;
mod faults;
mod ids;
mod store;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

pub use app::{
    App, CharmEndpoint, ConfigOption, LocalCharm, LogLine, MysqlCluster, ResourceMeta, Scaling,
    StatusValue, Unit,
};
pub use faults::{ActionFault, Faults, Timing};
pub use ids::{new_uid, now_ms, pod_ip, pod_uid, split_unit, stable_uid, uuid_from};
pub use store::ModelStore;

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
