//! The controller: `juju show-controller`, `juju version`, the model list, and the login check
//! of a client that brings its own `JUJU_DATA` (a charm's juju client).

use std::fs;
use std::path::Path;

use anyhow::Result;
use serde_json::{json, Value};

use super::args::Args;
use super::output::Outcome;
use crate::model::{Model, API_ENDPOINT};

/// `juju show-controller [--show-password] [--format yaml|json]`.
pub fn show_controller(model: &Model, show_password: bool, format: &str) -> Result<Outcome> {
    let mut account = json!({"user": "admin", "access": "superuser"});
    if show_password {
        account["password"] = json!(model.admin_password());
    }
    let v = json!({
        model.controller.clone(): {
            "details": {
                "uuid": model.controller_uuid(),
                "controller-uuid": model.controller_uuid(),
                "api-endpoints": [API_ENDPOINT],
                "ca-cert": model.ca_cert(),
                "cloud": model.cloud,
                "region": model.region,
                "agent-version": model.juju_version,
                "agent-git-commit": "0000000000000000000000000000000000000000",
                "controller-model-version": model.juju_version,
                "mongo-version": "",
            },
            "models": {
                model.name.clone(): {"uuid": model.uuid, "model-uuid": model.uuid, "unit-count": model.apps.values().map(|a| a.units.len()).sum::<usize>()},
            },
            "current-model": format!("admin/{}", model.name),
            "account": account,
        }
    });
    Ok(match format {
        "json" => Outcome::ok(format!("{}\n", v)),
        "yaml" => Outcome::ok(serde_yaml::to_string(&v)?),
        other => Outcome::usage(format!(
            "invalid value \"{other}\" for option --format: unknown format \"{other}\""
        )),
    })
}

pub const NO_CONTROLLERS: &str = "No controllers registered.\n\nPlease either create a new controller using \"juju bootstrap\" or connect to\nanother controller that you have been given access to using \"juju register\".";

/// The login of a client with its own `JUJU_DATA` (controllers.yaml, accounts.yaml), refused
/// the way Juju refuses it. `controller` is the one named by `-m CONTROLLER:MODEL`.
pub fn check_login(model: &Model, juju_data: &Path, controller: Option<&str>) -> Option<Outcome> {
    let load = |f: &str| -> Value {
        fs::read_to_string(juju_data.join(f))
            .ok()
            .and_then(|t| serde_yaml::from_str::<Value>(&t).ok())
            .unwrap_or(Value::Null)
    };
    let controllers = load("controllers.yaml");
    let name = match controller {
        Some(c) => c.to_string(),
        None => match controllers["current-controller"].as_str() {
            Some(c) if !c.is_empty() => c.to_string(),
            _ => return Some(Outcome::error(NO_CONTROLLERS)),
        },
    };
    let Some(details) = controllers["controllers"]
        .get(&name)
        .filter(|d| d.is_object())
    else {
        if controllers["controllers"]
            .as_object()
            .is_none_or(|m| m.is_empty())
        {
            return Some(Outcome::error(NO_CONTROLLERS));
        }
        return Some(Outcome::error(format!("controller {name} not found")));
    };
    let endpoints: Vec<String> = details["api-endpoints"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e.as_str().map(str::to_string))
        .collect();
    if !endpoints.iter().any(|e| e == API_ENDPOINT) {
        let addr = endpoints.first().cloned().unwrap_or_default();
        return Some(Outcome::error(format!(
            "cannot connect to API: dial tcp {addr}: connect: connection refused"
        )));
    }
    let ca = details["ca-cert"].as_str().unwrap_or_default();
    if ca.trim() != model.ca_cert().trim() {
        return Some(Outcome::error(
            "cannot connect to API: x509: certificate signed by unknown authority",
        ));
    }
    let accounts = load("accounts.yaml");
    let acct = &accounts["controllers"][&name];
    let user = acct["user"].as_str().unwrap_or_default();
    let password = acct["password"].as_str().unwrap_or_default();
    if !(user == "admin" || user == "admin@local") || password != model.admin_password() {
        return Some(Outcome::error(
            "cannot log in: invalid entity name or password (unauthorized access)",
        ));
    }
    None
}

pub fn version(args: &Args) -> Outcome {
    let v = "3.6.4-genericlinux-amd64";
    if args.format("plain") == "json" {
        Outcome::ok(format!(
            "{}\n",
            json!({"version": v, "git-commit": "0000000000000000000000000000000000000000"})
        ))
    } else {
        Outcome::ok(format!("{v}\n"))
    }
}
