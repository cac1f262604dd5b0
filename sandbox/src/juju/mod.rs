//! The `juju` CLI simulator: the Juju 3.6 client commands backup-agent uses, answering from the
//! sandbox model with the real output shapes, messages and exit codes.
//!
//! [`run()`] is the entry point; each command lives with what it owns: the command line (`args`),
//! printing ([`output`]), status, config and scaling, `run` and its schemas, deploy, relations,
//! secrets and the controller. What a charm does when asked lives in [`crate::charms`].

mod args;
mod config;
mod controller;
mod deploy;
pub mod output;
mod relations;
pub mod run;
pub mod schema;
mod secrets;
mod status;

use serde_json::json;

use anyhow::Result;

use crate::model::{Model, ModelStore};
use args::{parse_args, Args};
pub use controller::{check_login, NO_CONTROLLERS};
pub use output::{task_json, task_plain, Outcome};
pub use run::{wait_task, RunOpts};
pub use status::{show_unit_json, status_json};

/// Entry point: `juju <command> ...`.
pub fn run(store: &ModelStore, raw: &[String]) -> Outcome {
    let Some(cmd) = raw.first() else {
        return Outcome::ok("Juju provides easy, intelligent application orchestration on top of Kubernetes,\ncloud infrastructure providers such as Amazon, Google, Microsoft, Openstack,\nMAAS (and more!), or even your local machine via LXD.\n\nSee https://juju.is for getting started tutorials and additional documentation.\n");
    };
    let args = match parse_args(&raw[1..]) {
        Ok(a) => a,
        Err(e) => return Outcome::usage(e),
    };
    if cmd == "version" {
        return controller::version(&args);
    }
    if !matches!(
        cmd.as_str(),
        "status"
            | "show-unit"
            | "config"
            | "scale-application"
            | "run"
            | "show-task"
            | "models"
            | "show-model"
            | "deploy"
            | "integrate"
            | "relate"
            | "remove-relation"
            | "add-secret"
            | "grant-secret"
            | "secrets"
            | "show-controller"
            | "actions"
    ) {
        return Outcome::usage(format!("unrecognized command: juju {cmd}"));
    }
    let model = match store.read() {
        Ok(m) => m,
        Err(e) => return Outcome::error(format!("{e:#}")),
    };
    if let Some(refused) = admit(store, &model, &args) {
        return refused;
    }
    command(cmd.as_str(), store, &model, &args).unwrap_or_else(|e| Outcome::error(format!("{e:#}")))
}

/// The controller's refusal of this client, if it refuses: a login with the client's own
/// `JUJU_DATA` that fails, an injected connection error, a model that is not this one.
fn admit(store: &ModelStore, model: &Model, args: &Args) -> Option<Outcome> {
    // A client with its own JUJU_DATA (the charm's) logs in with what it holds there.
    if let Some(data) = std::env::var_os("JUJU_DATA").filter(|d| !d.is_empty()) {
        let controller = args
            .model()
            .and_then(|m| m.split_once(':').map(|(c, _)| c.to_string()));
        if let Some(refused) =
            check_login(model, std::path::Path::new(&data), controller.as_deref())
        {
            return Some(refused);
        }
    }
    // Transient controller trouble, injected: the command does nothing and fails. Only a
    // pending fault makes this a write; plain commands leave the model file alone.
    if model.faults.juju_errors > 0 {
        // Consume the fault under the lock: concurrent clients each take one.
        let hit = store.update(|m| {
            let hit = m.faults.juju_errors > 0;
            m.faults.juju_errors = m.faults.juju_errors.saturating_sub(1);
            Ok(hit)
        });
        match hit {
            Ok(true) => {
                return Some(Outcome::error(
                    "cannot connect to API: dial tcp 127.0.0.1:17070: connect: connection refused",
                ))
            }
            Ok(false) => {}
            Err(e) => return Some(Outcome::error(format!("{e:#}"))),
        }
    }
    if let Some(wanted) = args.model() {
        let bare = wanted.rsplit(':').next().unwrap_or(&wanted);
        let bare = bare.rsplit('/').next().unwrap_or(bare);
        if bare != model.name {
            return Some(Outcome::error(format!(
                "model {}:admin/{} not found",
                model.controller, bare
            )));
        }
    }
    None
}

/// Runs one (known) command.
fn command(cmd: &str, store: &ModelStore, model: &Model, args: &Args) -> Result<Outcome> {
    match cmd {
        "status" => status::status(model, args),
        "show-unit" => status::show_unit(model, args),
        "config" => config::config(store, model, args),
        "scale-application" => config::scale(store, args),
        "run" => run::run(store, model, &args.positional, &RunOpts::from_args(args)),
        "deploy" => deploy::deploy(
            store,
            model,
            &args.positional,
            args.multi.get("resource").map(Vec::as_slice).unwrap_or(&[]),
            args.multi.get("config").map(Vec::as_slice).unwrap_or(&[]),
            args.flags.contains_key("trust"),
        ),
        "integrate" | "relate" => relations::integrate(store, model, &args.positional),
        "remove-relation" => relations::remove_relation(store, model, &args.positional),
        "add-secret" => secrets::add_secret(
            store,
            &args.positional,
            args.flags.get("info").map(String::as_str),
        ),
        "grant-secret" => secrets::grant_secret(store, model, &args.positional),
        "secrets" => secrets::list_secrets(model, &args.format("yaml")),
        "show-controller" => controller::show_controller(
            model,
            args.flags.contains_key("show-password"),
            &args.format("yaml"),
        ),
        "show-task" => run::show_task(store, args),
        "actions" => schema::list_actions(model, args),
        "models" | "show-model" => Ok(Outcome::ok(format!(
            "{}\n",
            json!({"models": [{"name": format!("admin/{}", model.name), "short-name": model.name, "model-uuid": model.uuid, "type": "caas"}]})
        ))),
        _ => unreachable!(),
    }
}
