//! Action parameters, checked against the `actions` block of `charm/charmcraft.yaml`
//! (compiled in: the one source of truth, the same definitions `charm/pack` ships as
//! actions.yaml) before anything runs. Juju checks them too; checking again here keeps a
//! hand-run `dispatch` or a future Juju from slipping a bad value through.

use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::components::Component;

/// The charm's charmcraft.yaml.
pub const CHARMCRAFT_YAML: &str = include_str!("../../charm/charmcraft.yaml");

/// The `actions` block: what the packed charm's actions.yaml holds.
pub fn actions_yaml() -> Value {
    let all: Value = serde_yaml::from_str(CHARMCRAFT_YAML).expect("charmcraft.yaml is valid YAML");
    all["actions"].clone()
}

/// The JSON schema Juju builds for an action from actions.yaml.
pub fn schema(action: &str) -> Option<Value> {
    let all = actions_yaml();
    let def = all.get(action)?;
    Some(json!({
        "type": "object",
        "properties": def.get("params").cloned().unwrap_or(json!({})),
        "required": def.get("required").cloned().unwrap_or(json!([])),
        "additionalProperties": def.get("additionalProperties").cloned().unwrap_or(json!(true)),
    }))
}

/// The action names actions.yaml defines.
pub fn actions() -> Vec<String> {
    actions_yaml()
        .as_object()
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default()
}

/// Checks `params` against the action's schema and reads them into `T`. The message names
/// every offending parameter and shows how the action is called.
pub fn parse<T: DeserializeOwned>(action: &str, params: &Map<String, Value>) -> Result<T, String> {
    let schema = schema(action).ok_or_else(|| format!("unknown action {action:?}"))?;
    let validator = jsonschema::validator_for(&schema).expect("actions.yaml schemas compile");
    let instance = Value::Object(params.clone());
    let mut problems: Vec<String> = validator
        .iter_errors(&instance)
        .map(|e| describe(&e, &schema))
        .collect();
    problems.sort();
    problems.dedup();
    if !problems.is_empty() {
        return Err(format!(
            "invalid parameters for {action}: {}. {}",
            problems.join("; "),
            usage(action, &schema)
        ));
    }
    serde_json::from_value(instance).map_err(|e| format!("invalid parameters for {action}: {e}"))
}

fn describe(e: &jsonschema::ValidationError, schema: &Value) -> String {
    use jsonschema::error::ValidationErrorKind as K;
    let at = e.instance_path().to_string();
    let name = at.trim_start_matches('/').replace('/', ".");
    match e.kind() {
        K::AdditionalProperties { unexpected } => format!(
            "unknown parameter{} {}",
            if unexpected.len() == 1 { "" } else { "s" },
            unexpected
                .iter()
                .map(|u| format!("{u:?}"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        K::Required { property } => {
            format!("{} is required", property.as_str().unwrap_or_default())
        }
        K::Type { .. } => {
            let key = name.split('.').next().unwrap_or_default();
            let want = schema["properties"][key]["type"]
                .as_str()
                .unwrap_or("another type");
            let want = if name.contains('.') {
                schema["properties"][key]["items"]["type"]
                    .as_str()
                    .unwrap_or(want)
            } else {
                want
            };
            format!("{name} must be a {want}, not {}", e.instance())
        }
        K::Enum { options } => format!("{name} must be one of {options}, not {}", e.instance()),
        _ => format!(
            "{}: {e}",
            if name.is_empty() { "parameters" } else { &name }
        ),
    }
}

/// `juju run backup-agent/0 restore backup-id=<string> [components=...]`, from the schema.
fn usage(action: &str, schema: &Value) -> String {
    let required: Vec<&str> = schema["required"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    let mut parts = vec![format!("Usage: juju run backup-agent/0 {action}")];
    for (k, p) in schema["properties"].as_object().into_iter().flatten() {
        let ty = match p["type"].as_str() {
            Some("array") => "[a, b]",
            Some("boolean") => "true|false",
            Some(t) => t,
            None => "value",
        };
        if required.contains(&k.as_str()) {
            parts.push(format!("{k}=<{ty}>"));
        } else {
            parts.push(format!("[{k}=<{ty}>]"));
        }
    }
    parts.join(" ")
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct CreateBackup {
    #[serde(default)]
    pub break_lock: bool,
    #[serde(default)]
    pub label: String,
    #[serde(default)]
    pub components: Option<Vec<Component>>,
    #[serde(default)]
    pub force: bool,
    #[serde(default)]
    pub dry_run: bool,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct BackupId {
    pub backup_id: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct VerifyBackup {
    pub backup_id: String,
    #[serde(default)]
    pub read_data: bool,
    /// With read-data: the share (`5%`) or slice (`2/10`) of the bucket's blobs to re-hash.
    #[serde(default)]
    pub sample: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Restore {
    #[serde(default)]
    pub break_lock: bool,
    pub backup_id: String,
    #[serde(default)]
    pub components: Option<Vec<Component>>,
    #[serde(default)]
    pub dry_run: bool,
    #[serde(default)]
    pub no_safety_backup: bool,
    #[serde(default)]
    pub force: bool,
    #[serde(default)]
    pub from: From,
}

/// Which repository an action works on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum From {
    #[default]
    Primary,
    Secondary,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct CopyBackup {
    #[serde(default)]
    pub backup_id: Option<String>,
    #[serde(default)]
    pub dry_run: bool,
    #[serde(default)]
    pub break_lock: bool,
}

#[derive(Debug, Deserialize)]
pub struct Nothing {}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct RestoreDrill {
    #[serde(default)]
    pub backup_id: Option<String>,
    #[serde(default)]
    pub sample: Option<String>,
    #[serde(default)]
    pub max_bytes: Option<String>,
    #[serde(default)]
    pub dry_run: bool,
    #[serde(default)]
    pub break_lock: bool,
    #[serde(default)]
    pub from: From,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Prune {
    #[serde(default)]
    pub retention: Option<String>,
    #[serde(default)]
    pub max_unused: Option<u8>,
    #[serde(default)]
    pub dry_run: bool,
    #[serde(default)]
    pub break_lock: bool,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct DeleteBackup {
    pub backup_id: String,
    #[serde(default)]
    pub dry_run: bool,
    #[serde(default)]
    pub break_lock: bool,
}
