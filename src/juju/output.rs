//! What juju prints, parsed: `status`, `show-unit` relation data, `run` tasks, and mysql-k8s's
//! action results. Plain functions, tested against recorded real outputs.

use std::collections::BTreeMap;

use jsonpath_rust::JsonPath;
use serde::Deserialize;
use serde_json::Value;

use crate::secret::Secret;

/// `juju status --format=json`, the parts we use.
#[derive(Debug, Clone, Deserialize)]
pub struct Status {
    pub model: ModelInfo,
    #[serde(default)]
    pub applications: BTreeMap<String, Application>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ModelInfo {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub controller: String,
    #[serde(default)]
    pub version: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Application {
    pub charm: String,
    #[serde(default)]
    pub charm_name: Option<String>,
    #[serde(default)]
    pub charm_rev: Option<i64>,
    #[serde(default)]
    pub charm_channel: Option<String>,
    /// Kubernetes models only: the scale Juju was asked for.
    #[serde(default)]
    pub scale: Option<u32>,
    #[serde(default)]
    pub application_status: Option<StatusInfo>,
    #[serde(default)]
    pub units: BTreeMap<String, UnitStatus>,
}

impl Application {
    pub fn charm_name(&self) -> &str {
        self.charm_name.as_deref().unwrap_or(&self.charm)
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct UnitStatus {
    pub workload_status: StatusInfo,
    #[serde(default)]
    pub juju_status: Option<StatusInfo>,
    /// Juju prints `leader` only when true.
    #[serde(default)]
    pub leader: bool,
    #[serde(default)]
    pub address: Option<String>,
    #[serde(default)]
    pub provider_id: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct StatusInfo {
    pub current: String,
    #[serde(default)]
    pub message: String,
}

pub fn parse_status(json: &str) -> Result<Status, serde_json::Error> {
    serde_json::from_str(json)
}

/// Whether `app` has settled at `scale` units, all active and idle; otherwise what it still
/// waits for, for messages.
pub fn scale_settled(status: &Status, app: &str, scale: u32) -> Result<(), String> {
    let a = status
        .applications
        .get(app)
        .ok_or_else(|| format!("{app} is not in the model any more"))?;
    if a.units.len() as u32 != scale {
        return Err(format!(
            "{} of {scale} units (scale {})",
            a.units.len(),
            a.scale.map_or("?".into(), |s| s.to_string())
        ));
    }
    let busy: Vec<String> = a
        .units
        .iter()
        // Blocked is settled too: mysql-k8s stays blocked after a restore until it is moved
        // to another S3 repository, and its units are up.
        .filter(|(_, u)| {
            !matches!(u.workload_status.current.as_str(), "active" | "blocked")
                || u.juju_status.as_ref().is_some_and(|j| j.current != "idle")
        })
        .map(|(n, u)| format!("{n} {}", u.workload_status.current))
        .collect();
    if busy.is_empty() {
        Ok(())
    } else {
        Err(format!("units not ready: {}", busy.join(", ")))
    }
}

/// The remote application's databag on `endpoint`, from `juju show-unit UNIT --format=json`:
/// the JSONPath twin of the manual procedure's yq query.
pub fn relation_app_data(
    show_unit: &Value,
    unit: &str,
    endpoint: &str,
) -> Option<BTreeMap<String, String>> {
    let unit = unit.replace('\'', "\\'");
    let endpoint = endpoint.replace('\'', "\\'");
    let path =
        format!("$['{unit}']['relation-info'][?@.endpoint == '{endpoint}']['application-data']");
    let found = show_unit.query(&path).ok()?;
    let bag = found.first()?.as_object()?;
    Some(
        bag.iter()
            .map(|(k, v)| {
                let v = match v {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                (k.clone(), v)
            })
            .collect(),
    )
}

/// The application at the other end of `endpoint`, from `juju show-unit`: the first related
/// unit's application (`related-units` keys are unit names).
pub fn relation_remote_app(show_unit: &Value, unit: &str, endpoint: &str) -> Option<String> {
    let rels = show_unit.get(unit)?.get("relation-info")?.as_array()?;
    let rel = rels
        .iter()
        .find(|r| r.get("endpoint").and_then(Value::as_str) == Some(endpoint))?;
    let units = rel.get("related-units")?.as_object()?;
    let first = units.keys().next()?;
    Some(first.split('/').next().unwrap_or(first).to_string())
}

/// One action's parameters, from `juju actions APP --schema --format json`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ActionSchema {
    pub params: Vec<String>,
    pub required: Vec<String>,
}

/// Every action's schema, by name: `{ACTION: {description, properties, title, type,
/// [required], [additionalProperties]}}`, as `cmd/juju/action/list.go` prints it.
pub fn parse_action_schemas(
    json: &str,
) -> Result<BTreeMap<String, ActionSchema>, serde_json::Error> {
    let v: BTreeMap<String, Value> = serde_json::from_str(json)?;
    Ok(v.into_iter()
        .map(|(name, s)| {
            let names = |k: &str| -> Vec<String> {
                match s.get(k) {
                    Some(Value::Object(m)) => m.keys().cloned().collect(),
                    Some(Value::Array(a)) => a
                        .iter()
                        .filter_map(Value::as_str)
                        .map(String::from)
                        .collect(),
                    _ => vec![],
                }
            };
            let schema = ActionSchema {
                params: names("properties"),
                required: names("required"),
            };
            (name, schema)
        })
        .collect())
}

/// MinIO's connection data as the minio charm publishes it on `object-storage`.
#[derive(Debug, Clone, PartialEq)]
pub struct ObjectStorage {
    pub access_key: String,
    pub secret_key: Secret,
    pub service: String,
    pub namespace: String,
    pub port: u16,
    pub secure: bool,
}

impl ObjectStorage {
    /// Parses the databag's `data` key, a YAML string.
    pub fn from_relation_data(bag: &BTreeMap<String, String>) -> Result<Self, String> {
        let data = bag.get("data").ok_or(
            "the object-storage relation has no `data` key yet (is minio related and active?)",
        )?;
        let v: serde_yaml::Value = serde_yaml::from_str(data)
            .map_err(|e| format!("the object-storage relation's `data` is not valid YAML: {e}"))?;
        let text = |k: &str| -> Result<String, String> {
            match &v[k] {
                serde_yaml::Value::String(s) if !s.is_empty() => Ok(s.clone()),
                serde_yaml::Value::Number(n) => Ok(n.to_string()),
                _ => Err(format!("the object-storage relation data has no `{k}`")),
            }
        };
        let port = match &v["port"] {
            serde_yaml::Value::Null => 9000,
            p => text("port")?.parse().map_err(|_| {
                format!("the object-storage relation data has an invalid port: {p:?}")
            })?,
        };
        let secure = match &v["secure"] {
            serde_yaml::Value::Bool(b) => *b,
            serde_yaml::Value::String(s) => s == "true",
            _ => false,
        };
        Ok(ObjectStorage {
            access_key: text("access-key")?,
            secret_key: Secret::new(text("secret-key")?),
            service: text("service")?,
            namespace: text("namespace")?,
            port,
            secure,
        })
    }

    /// The in-cluster endpoint: `http://minio.kubeflow:9000`.
    pub fn endpoint(&self) -> String {
        let scheme = if self.secure { "https" } else { "http" };
        format!(
            "{scheme}://{}.{}:{}",
            self.service, self.namespace, self.port
        )
    }
}

/// One task of `juju run ... --format=json`, or of `juju show-task --format=json`.
#[derive(Debug, Clone, Deserialize)]
pub struct ActionTask {
    pub id: String,
    pub status: String,
    #[serde(default)]
    pub message: String,
    #[serde(default)]
    pub results: serde_json::Map<String, Value>,
}

impl ActionTask {
    pub fn result_str(&self, key: &str) -> Option<&str> {
        self.results.get(key).and_then(Value::as_str)
    }
}

/// The task of `unit` in `juju run`'s output (a map keyed by unit).
pub fn parse_run(json: &str, unit: &str) -> Result<ActionTask, String> {
    let v: Value = serde_json::from_str(json).map_err(|e| format!("not JSON: {e}"))?;
    let task = v
        .get(unit)
        .ok_or_else(|| format!("no result for unit {unit}"))?;
    serde_json::from_value(task.clone()).map_err(|e| format!("unexpected task shape: {e}"))
}

/// One row of mysql-k8s's `list-backups` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MysqlBackup {
    pub id: String,
    pub kind: String,
    pub status: String,
}

/// Parses mysql-k8s's `list-backups` table (`backup-id | backup-type | backup-status`).
pub fn parse_backups_table(text: &str) -> Result<Vec<MysqlBackup>, String> {
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let header = lines.next().ok_or("empty list-backups output")?;
    let cols: Vec<&str> = header.split('|').map(str::trim).collect();
    if cols != ["backup-id", "backup-type", "backup-status"] {
        return Err(format!("unexpected list-backups header: {header:?}"));
    }
    let mut out = vec![];
    for line in lines {
        if line.chars().all(|c| c == '-') {
            continue;
        }
        let f: Vec<&str> = line.split('|').map(str::trim).collect();
        match f[..] {
            [id, kind, status] => out.push(MysqlBackup {
                id: id.into(),
                kind: kind.into(),
                status: status.into(),
            }),
            _ => return Err(format!("unexpected list-backups row: {line:?}")),
        }
    }
    Ok(out)
}

/// The primary's unit name from mysql-k8s's `get-cluster-status` results. Member labels are
/// unit names with `/` replaced by `-` (`kfp-db-1` is `kfp-db/1`).
pub fn cluster_primary(results: &serde_json::Map<String, Value>) -> Option<String> {
    let topology = results
        .get("status")?
        .get("defaultreplicaset")?
        .get("topology")?
        .as_object()?;
    topology.iter().find_map(|(label, member)| {
        (member.get("memberrole")?.as_str()? == "primary").then(|| {
            let (app, num) = label.rsplit_once('-')?;
            Some(format!("{app}/{num}"))
        })?
    })
}
