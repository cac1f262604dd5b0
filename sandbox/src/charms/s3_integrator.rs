//! The s3-integrator charm, simulated: its credential actions, and its config published to
//! every relation when it changes. What it publishes on a new relation is in
//! [`super::provider_data`].

use serde_json::{json, Map, Value};

use super::{obj, Effect};
use crate::model::{App, ModelStore};

/// Its actions.yaml.
pub fn actions() -> Value {
    json!({
        "sync-s3-credentials": {
            "params": {"access-key": {"type": "string"}, "secret-key": {"type": "string"}},
            "required": ["access-key", "secret-key"],
        },
        "get-s3-connection-info": {},
    })
}

/// Performs `action`; `None` for an action it does not have.
pub fn perform(
    app_name: &str,
    app: &App,
    action: &str,
    params: &Map<String, Value>,
) -> Option<Effect> {
    match action {
        "sync-s3-credentials" => Some(sync_s3_credentials(app_name, params)),
        "get-s3-connection-info" => Some(Effect::ok(obj(json!({
            "bucket": app.config_str("bucket"), "endpoint": app.config_str("endpoint"),
            "path": app.config_str("path"), "region": app.config_str("region"),
            "access-key": "************", "secret-key": "************",
        })))),
        _ => None,
    }
}

fn sync_s3_credentials(app_name: &str, params: &Map<String, Value>) -> Effect {
    let access = params["access-key"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let secret = params["secret-key"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let name = app_name.to_string();
    let mut eff = Effect::ok(obj(json!({"ok": "Credentials successfully updated."})));
    eff.apply = Box::new(move |m| {
        for r in m
            .relations
            .iter_mut()
            .filter(|r| r.ends.iter().any(|e| e.app == name))
        {
            let bag = r.app_data.entry(name.clone()).or_default();
            bag.insert("access-key".into(), access.clone());
            bag.insert("secret-key".into(), secret.clone());
        }
    });
    eff
}

/// The config keys s3-integrator publishes in its application databag (interface `s3`, v0).
const PUBLISHED: [&str; 8] = [
    "bucket",
    "endpoint",
    "path",
    "region",
    "s3-uri-style",
    "storage-class",
    "tls-ca-chain",
    "attributes",
];

/// The value of `key` as the charm publishes it: `tls-ca-chain` and `attributes` are config
/// strings (base64 PEM; comma-separated) published as JSON lists, as the charm's
/// `update_connection_info` does.
fn published(app: &App, key: &str) -> String {
    let v = app.config_str(key);
    match key {
        "tls-ca-chain" if !v.is_empty() => serde_json::to_string(&[v.trim()]).unwrap_or_default(),
        "attributes" if !v.is_empty() => {
            let items: Vec<&str> = v.split(',').map(str::trim).collect();
            serde_json::to_string(&items).unwrap_or_default()
        }
        _ => v,
    }
}

/// config-changed: the charm rewrites its databag on every relation, so each requirer sees
/// relation-changed; a mysql-k8s requirer then runs its S3 check
/// ([`super::mysql_k8s::s3_credentials_changed`]).
pub fn config_changed(store: &ModelStore, app_name: &str) -> anyhow::Result<()> {
    let name = app_name.to_string();
    let requirers = store.update(move |m| {
        let values: Vec<(String, String)> = PUBLISHED
            .iter()
            .map(|k| (k.to_string(), published(&m.apps[&name], k)))
            .collect();
        let mut requirers = vec![];
        for r in m
            .relations
            .iter_mut()
            .filter(|r| r.interface == "s3" && r.ends.iter().any(|e| e.app == name))
        {
            let bag = r.app_data.entry(name.clone()).or_default();
            for (k, v) in &values {
                if v.is_empty() {
                    bag.remove(k);
                } else {
                    bag.insert(k.clone(), v.clone());
                }
            }
            requirers.extend(
                r.ends
                    .iter()
                    .filter(|e| e.app != name)
                    .map(|e| e.app.clone()),
            );
        }
        Ok(requirers)
    })?;
    credentials_changed(store, &requirers)
}

/// Tells each mysql-k8s requirer its S3 settings changed.
pub fn credentials_changed(store: &ModelStore, requirers: &[String]) -> anyhow::Result<()> {
    for app in requirers {
        super::mysql_k8s::s3_credentials_changed(store, app)?;
    }
    Ok(())
}

/// The applications related to s3-integrator `app_name` through interface `s3`.
pub fn requirers(model: &crate::model::Model, app_name: &str) -> Vec<String> {
    model
        .relations_of(app_name)
        .filter(|r| r.interface == "s3")
        .flat_map(|r| {
            r.ends
                .iter()
                .filter(|e| e.app != app_name)
                .map(|e| e.app.clone())
        })
        .collect()
}
