//! The charms the sandbox runs, and what each does when Juju asks: the actions it declares
//! (as actions.yaml would), how an action runs, the endpoints it offers and the databag it
//! publishes on a new relation.
//!
//! Two kinds: simulated charms (mysql-k8s, s3-integrator), whose actions the sandbox performs
//! itself in the client, at once; and local charms (`juju deploy ./x.charm`), whose real
//! `dispatch` runs each hook and action ([`local`]).

pub mod local;
pub mod mysql_k8s;
pub mod s3_integrator;

use std::collections::BTreeMap;

use anyhow::Result;
use serde_json::{Map, Value};

use crate::model::{now_ms, split_unit, CharmEndpoint, Model, ModelStore, Task};

/// The actions.yaml entry of `action` of the charm `app` runs, if it has that action.
pub fn action_spec(model: &Model, app: &str, action: &str) -> Option<Value> {
    let app = model.apps.get(app)?;
    let actions = match (&app.local, app.charm.as_str()) {
        (Some(local), _) => local.actions.clone(),
        (None, "mysql-k8s") => mysql_k8s::actions(),
        (None, "s3-integrator") => s3_integrator::actions(),
        _ => return None,
    };
    actions.get(action).cloned()
}

/// Queues a validated action on `unit` and returns its task: a local charm's runs in the
/// background through its dispatch; a simulated charm's is performed now.
pub fn start_action(
    store: &ModelStore,
    model: &Model,
    unit: &str,
    action: &str,
    params: &Map<String, Value>,
) -> Result<Task> {
    let local = split_unit(unit)
        .and_then(|(app, _)| model.apps.get(app))
        .is_some_and(|a| a.local.is_some());
    if local {
        local::enqueue(store, unit, action, params)
    } else {
        enqueue(store, unit, action, params)
    }
}

/// What a simulated action did: results, or the message it failed with; and the changes to the
/// model.
pub struct Effect {
    results: Map<String, Value>,
    failure: Option<String>,
    log: Vec<String>,
    apply: Box<dyn FnOnce(&mut Model)>,
}

impl Effect {
    fn ok(results: Map<String, Value>) -> Self {
        Effect {
            results,
            failure: None,
            log: vec![],
            apply: Box::new(|_| {}),
        }
    }
    fn fail(msg: impl Into<String>) -> Self {
        Effect {
            results: Map::new(),
            failure: Some(msg.into()),
            log: vec![],
            apply: Box::new(|_| {}),
        }
    }
}

/// Runs the action's effect now and records the task, which Juju reports as running for the
/// action's simulated duration.
fn enqueue(
    store: &ModelStore,
    unit: &str,
    action: &str,
    params: &Map<String, Value>,
) -> Result<Task> {
    // Take a one-shot fault under the lock, so two clients never both get it; the model as it
    // was then is what the action sees.
    let (fault, snapshot) = store.update(|m| {
        let hit = m.faults.fail_next_action.iter().position(|f| {
            (f.unit == unit || unit.split('/').next() == Some(f.unit.as_str()))
                && f.action.as_deref().is_none_or(|a| a == action)
        });
        let fault = hit.map(|i| m.faults.fail_next_action.remove(i).message);
        Ok((fault, m.clone()))
    })?;
    let started = now_ms();
    let effect = match fault {
        Some(message) => Effect::fail(message),
        None => perform(&snapshot, unit, action, params, started),
    };
    let Effect {
        results,
        failure,
        log,
        apply,
    } = effect;
    let synced = failure.is_none() && action == "sync-s3-credentials";
    let task = store.update(move |m| {
        apply(m);
        let id = m.next_task + 1;
        m.next_task += 2;
        let duration = m.timing.action_ms + m.faults.action_delay_ms;
        let task = Task {
            id,
            unit: unit.to_string(),
            action: action.to_string(),
            params: params.clone(),
            outcome: if failure.is_some() {
                "failed".into()
            } else {
                "completed".into()
            },
            message: failure.unwrap_or_default(),
            results,
            log,
            enqueued_ms: started,
            started_ms: started,
            completed_ms: started + duration,
            charm: false,
            log_ms: vec![],
            runner_pid: None,
        };
        m.tasks.insert(id, task.clone());
        Ok(task)
    })?;
    if synced {
        // New keys on every relation: each requirer sees relation-changed.
        let (app, _) = split_unit(unit).expect("validated unit");
        let requirers = s3_integrator::requirers(&store.read()?, app);
        s3_integrator::credentials_changed(store, &requirers)?;
    }
    Ok(task)
}

/// Performs a simulated charm's action against the model as it was when the task started.
fn perform(
    model: &Model,
    unit: &str,
    action: &str,
    params: &Map<String, Value>,
    now: u64,
) -> Effect {
    let (app_name, num) = split_unit(unit).expect("validated unit");
    let app = &model.apps[app_name];
    let r = match app.charm.as_str() {
        "mysql-k8s" => mysql_k8s::perform(model, app_name, num, action, params, now),
        "s3-integrator" => Ok(s3_integrator::perform(app_name, app, action, params)),
        _ => Ok(None),
    };
    match r {
        Ok(Some(effect)) => effect,
        Ok(None) => Effect::fail(format!("action {action} is not implemented")),
        Err(e) => Effect::fail(format!("{e:#}")),
    }
}

/// A JSON object's map (results are written as `json!` objects).
fn obj(v: Value) -> Map<String, Value> {
    v.as_object().cloned().unwrap_or_default()
}

/// The endpoints an application offers: a local charm's from its metadata; the sandbox's own
/// charms' as their charms define them.
pub fn endpoints_of(model: &Model, app: &str) -> BTreeMap<String, CharmEndpoint> {
    let a = &model.apps[app];
    if let Some(l) = &a.local {
        return l.endpoints.clone();
    }
    let mut eps = BTreeMap::new();
    let provides = |iface: &str| CharmEndpoint {
        role: "provides".into(),
        interface: iface.into(),
        limit: None,
    };
    match a.charm.as_str() {
        "s3-integrator" => {
            eps.insert("s3-credentials".into(), provides("s3"));
        }
        "minio" => {
            eps.insert("object-storage".into(), provides("object-storage"));
        }
        _ => {}
    }
    for r in model.relations_of(app) {
        for e in r.ends.iter().filter(|e| e.app == app) {
            eps.entry(e.endpoint.clone()).or_insert(CharmEndpoint {
                role: if matches!(a.charm.as_str(), "s3-integrator" | "minio" | "mlmd") {
                    "provides".into()
                } else {
                    "requires".into()
                },
                interface: r.interface.clone(),
                limit: None,
            });
        }
    }
    eps
}

/// The provider's application databag on a new relation, as the sandbox's charms publish it.
pub fn provider_data(model: &Model, provider: &str, interface: &str) -> BTreeMap<String, String> {
    let app = &model.apps[provider];
    let existing = || {
        model
            .relations_of(provider)
            .filter(|r| r.interface == interface)
            .find_map(|r| r.app_data.get(provider).cloned())
            .unwrap_or_default()
    };
    match (app.charm.as_str(), interface) {
        ("s3-integrator", "s3") => {
            let old = existing();
            let mut bag = BTreeMap::new();
            for k in ["access-key", "secret-key"] {
                bag.insert(k.to_string(), old.get(k).cloned().unwrap_or_default());
            }
            for k in ["bucket", "endpoint", "path", "region", "s3-uri-style"] {
                bag.insert(k.to_string(), app.config_str(k));
            }
            bag.insert(
                "data".into(),
                format!("{{\"bucket\": \"{}\"}}", app.config_str("bucket")),
            );
            bag.retain(|_, v| !v.is_empty());
            bag
        }
        ("minio", "object-storage") => existing(),
        _ => BTreeMap::new(),
    }
}
