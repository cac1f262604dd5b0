//! backup-agent as a Juju charm. Juju runs `dispatch` at the charm root for every hook and
//! action; `dispatch` runs this binary, which reads `JUJU_DISPATCH_PATH` and talks to Juju only
//! through hook tools. Hooks keep our side of the relations written and the status true;
//! actions call the library.

pub mod hook_tools;
pub mod pebble;

pub mod actions;
pub mod controller;
pub mod cos;
pub mod params;
pub mod relations;
pub mod settings;
pub mod status;
pub mod workload;

use std::path::PathBuf;

use crate::charm::hook_tools::{HookTools, Status};

/// What Juju tells the charm in the environment.
#[derive(Debug, Clone)]
pub struct DispatchEnv {
    /// `hooks/install`, `actions/create-backup`, ...
    pub path: String,
    pub unit: String,
    pub app: String,
    pub model: String,
    pub charm_dir: PathBuf,
    /// Set in relation hooks: `s3-credentials:3`.
    pub relation_id: Option<String>,
}

impl DispatchEnv {
    /// `None` outside Juju (no JUJU_DISPATCH_PATH).
    pub fn from_env() -> Option<Self> {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let path = var("JUJU_DISPATCH_PATH")?;
        let unit = var("JUJU_UNIT_NAME").unwrap_or_else(|| "backup-agent/0".into());
        Some(DispatchEnv {
            path,
            app: unit.split('/').next().unwrap_or("backup-agent").to_string(),
            unit,
            model: var("JUJU_MODEL_NAME").unwrap_or_default(),
            charm_dir: var("JUJU_CHARM_DIR").map(PathBuf::from).unwrap_or_default(),
            relation_id: var("JUJU_RELATION_ID"),
        })
    }
}

/// Runs the hook or action; the process exit code. An action that fails is reported with
/// `action-fail` and still exits 0, as Juju expects; 1 means the hook tools themselves failed.
pub fn dispatch(env: &DispatchEnv, tools: &HookTools) -> i32 {
    let outcome = match env.path.split_once('/') {
        Some(("actions", name)) => action(env, tools, name),
        Some(("hooks", name)) => hook(env, tools, name),
        _ => Err(format!(
            "JUJU_DISPATCH_PATH={:?} is neither hooks/<name> nor actions/<name>",
            env.path
        )),
    };
    match outcome {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("{}: {e}", env.path);
            let _ = tools.log("ERROR", &format!("{}: {e}", env.path));
            1
        }
    }
}

fn action(env: &DispatchEnv, tools: &HookTools, name: &str) -> Result<(), String> {
    let raw = tools.action_params().map_err(|e| e.to_string())?;
    let (results, failure) = match actions::run(env, tools, name, &raw) {
        Ok(r) => (r, None),
        Err((message, r)) => (r, Some(actions::charm_terms(&message, &env.app))),
    };
    // Results that cannot be set must not hide the failure (or the success) they describe.
    let set = tools.action_set(&results);
    let failure = match (failure, &set) {
        (Some(m), _) => Some(m),
        (None, Err(e)) => Some(format!(
            "the action finished but its results could not be set: {e}"
        )),
        (None, Ok(())) => None,
    };
    if let Some(m) = failure {
        tools.action_fail(&m).map_err(|e| e.to_string())?;
    }
    set.map_err(|e| e.to_string())
}

/// Every hook does the same: write our side of the relations (leader), then set the status.
/// Juju may run any hook at any time, so no hook depends on another having run.
fn hook(env: &DispatchEnv, tools: &HookTools, name: &str) -> Result<(), String> {
    let broken = name
        .ends_with("-relation-broken")
        .then(|| env.relation_id.clone())
        .flatten();
    let leader = tools.is_leader().map_err(|e| e.to_string())?;
    if leader {
        relations::write_our_side(tools, broken.as_deref()).map_err(|e| e.to_string())?;
        // The dashboard needs nothing but the relation: published whatever the status.
        if let Err(e) =
            cos::write_dashboards(tools, leader, &env.unit, &env.model, broken.as_deref())
        {
            let _ = tools.log("WARNING", &format!("grafana-dashboard: {e}"));
        }
    }
    let mut a = status::assess(&env.app, tools, broken.as_deref());
    if a.status == Status::Active {
        // Ready: the daemon in the workload container runs with what the unit has now.
        if let Ok(ready) = status::ready(&env.app, tools, broken.as_deref()) {
            let port = ready.settings.listen.port();
            if let Err(e) = relations::write_metrics(
                tools,
                leader,
                &env.unit,
                &env.model,
                port,
                broken.as_deref(),
            ) {
                let _ = tools.log("WARNING", &format!("metrics-endpoint: {e}"));
            }
            let fresh = name.ends_with("-pebble-ready") || name == "upgrade-charm";
            match workload::configure(env, tools, &ready, fresh) {
                Ok(note) => a.message = format!("{}; {note}", a.message),
                // The actions work without the daemon: say it, stay active.
                Err(e) if e.starts_with("waiting for Pebble") => {
                    a.message = format!("{}; daemon {e}", a.message);
                }
                Err(e) => a = status::Assessment::blocked(format!("the daemon cannot start: {e}")),
            }
        }
    }
    if a.status != Status::Active {
        let _ = tools.log(
            "INFO",
            &format!("{name}: {}: {}", a.status.as_str(), a.message),
        );
    }
    tools
        .status_set(a.status, &a.message)
        .map_err(|e| e.to_string())
}
