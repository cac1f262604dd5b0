//! The hook context: one JSON file per hook or action run, holding what the tools answer from
//! and what the charm did. It is changed under an exclusive lock, because a charm may call
//! tools concurrently.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use fs2::FileExt;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

pub use crate::model::{LogLine, StatusValue};

/// The environment variable naming the hook context file.
pub const STATE_ENV: &str = "BACKUP_AGENT_SANDBOX_HOOK_STATE";

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct StatusEntry {
    /// `unit` or `application`.
    pub target: String,
    pub status: String,
    #[serde(default)]
    pub message: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct HookAction {
    pub name: String,
    /// The action's uuid (`JUJU_ACTION_UUID`); in Juju 3 the task id.
    #[serde(default)]
    pub id: String,
    /// Parameters as the charm sees them: validated, schema defaults inserted.
    #[serde(default)]
    pub params: Map<String, Value>,
}

/// One relation of the unit, as its hook tools see it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct HookRelation {
    pub id: u32,
    pub endpoint: String,
    #[serde(default)]
    pub interface: String,
    pub remote_app: String,
    /// Units of the remote application in scope (empty during `relation-broken`).
    #[serde(default)]
    pub remote_units: Vec<String>,
    #[serde(default)]
    pub local_app_data: BTreeMap<String, String>,
    #[serde(default)]
    pub local_unit_data: BTreeMap<String, String>,
    #[serde(default)]
    pub remote_app_data: BTreeMap<String, String>,
    #[serde(default)]
    pub remote_unit_data: BTreeMap<String, BTreeMap<String, String>>,
    /// Being removed (`relation-broken`): reachable by id, not listed by `relation-ids`.
    #[serde(default)]
    pub broken: bool,
}

/// The hook context: what the tools answer from, and what the charm did.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct HookState {
    /// `backup-agent/0`.
    pub unit: String,
    #[serde(default)]
    pub leader: bool,
    #[serde(default = "default_model")]
    pub model_name: String,
    #[serde(default)]
    pub model_uuid: String,
    #[serde(default = "default_version")]
    pub juju_version: String,
    /// Effective config values (defaults applied; unset options absent).
    #[serde(default)]
    pub config: Map<String, Value>,
    #[serde(default)]
    pub relations: Vec<HookRelation>,
    /// Secret URI (`secret:<id>`) → content, for the secrets this unit may read.
    #[serde(default)]
    pub secrets: BTreeMap<String, BTreeMap<String, String>>,
    /// Resource name → file (absent: not attached).
    #[serde(default)]
    pub resources: BTreeMap<String, PathBuf>,
    #[serde(default)]
    pub action: Option<HookAction>,
    /// The relation of a relation hook (`JUJU_RELATION_ID`).
    #[serde(default)]
    pub hook_relation: Option<u32>,
    /// `JUJU_REMOTE_UNIT` of a relation hook.
    #[serde(default)]
    pub remote_unit: Option<String>,

    // What the charm did.
    /// `action-set` results, dotted keys nested.
    #[serde(default)]
    pub results: Map<String, Value>,
    #[serde(default)]
    pub action_log: Vec<String>,
    /// Milliseconds since the epoch of each `action_log` line.
    #[serde(default)]
    pub action_log_ms: Vec<u64>,
    #[serde(default)]
    pub failed: Option<String>,
    #[serde(default)]
    pub unit_status: Option<StatusValue>,
    #[serde(default)]
    pub app_status: Option<StatusValue>,
    #[serde(default)]
    pub status_history: Vec<StatusEntry>,
    #[serde(default)]
    pub juju_log: Vec<LogLine>,
    #[serde(default)]
    pub workload_version: Option<String>,
}

pub(super) fn default_model() -> String {
    "kubeflow".into()
}

pub(super) fn default_version() -> String {
    "3.6.4".into()
}

/// `value`, or `default` when it is empty (a `HookState::default()` built in code).
pub(super) fn or(value: &str, default: String) -> String {
    if value.is_empty() {
        default
    } else {
        value.to_string()
    }
}

impl HookState {
    pub fn app(&self) -> &str {
        self.unit.split('/').next().unwrap_or_default()
    }

    pub fn load(path: &Path) -> Result<HookState> {
        let text = fs::read_to_string(path)
            .with_context(|| format!("reading the hook context {}", path.display()))?;
        serde_json::from_str(&text)
            .with_context(|| format!("parsing the hook context {}", path.display()))
    }

    pub fn save(&self, path: &Path) -> Result<()> {
        let tmp = path.with_extension("json.tmp");
        let mut f = File::create(&tmp).with_context(|| format!("writing {}", tmp.display()))?;
        f.write_all(&serde_json::to_vec_pretty(self)?)?;
        f.sync_all()?;
        fs::rename(&tmp, path)?;
        Ok(())
    }

    /// Read-modify-write under the context's exclusive lock; nothing is written when `f` fails.
    pub fn update<T>(path: &Path, f: impl FnOnce(&mut HookState) -> Result<T>) -> Result<T> {
        let lock_path = path.with_extension("lock");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .with_context(|| format!("opening {}", lock_path.display()))?;
        lock.lock_exclusive()?;
        let mut s = HookState::load(path)?;
        let before = s.clone();
        let out = f(&mut s)?;
        if s != before {
            s.save(path)?;
        }
        Ok(out)
    }

    /// The relation named by `-r` (`endpoint:N` or `N`).
    pub(super) fn relation(&self, spec: &str) -> Option<&HookRelation> {
        let id = spec.rsplit(':').next()?.parse::<u32>().ok()?;
        let r = self.relations.iter().find(|r| r.id == id)?;
        match spec.split_once(':') {
            Some((ep, _)) if ep != r.endpoint => None,
            _ => Some(r),
        }
    }
}
