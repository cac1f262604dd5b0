//! The s3-integrator charm, simulated: its credential actions. What it publishes on a relation
//! is in [`super::provider_data`].

use serde_json::{json, Map, Value};

use super::{obj, Effect};
use crate::model::App;

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
