//! The unit's own tools: config, status, secrets, leadership, logging, resources, version.

use std::path::Path;

use serde_json::{json, Value};

use super::{
    bag_json, parse, render, HookState, LogLine, Outcome, StatusEntry, StatusValue, FORMAT, R,
};

pub(super) fn config_get(args: &[String], state: &Path) -> R {
    let p = parse_or_return!(parse(args, &[FORMAT], &[("all", "all"), ("a", "all")]));
    if let Some(o) = p.too_many(1) {
        return Ok(o);
    }
    let s = HookState::load(state)?;
    if let Some(key) = p.pos.first() {
        if p.flag("all") {
            return Ok(Outcome::usage(
                "cannot use argument --all together with key",
            ));
        }
        let v = s.config.get(key).cloned().unwrap_or(Value::Null);
        return Ok(render(&v, p.format()));
    }
    Ok(render(&Value::Object(s.config.clone()), p.format()))
}

pub(super) fn status_set(args: &[String], state: &Path) -> R {
    let p = parse_or_return!(parse(args, &[], &[("application", "application")]));
    let Some(st) = p.pos.first() else {
        return Ok(Outcome::usage("invalid args, require <status> [message]"));
    };
    if let Some(o) = p.too_many(2) {
        return Ok(o);
    }
    if !matches!(
        st.as_str(),
        "maintenance" | "blocked" | "waiting" | "active"
    ) {
        return Ok(Outcome::usage(format!(
            "invalid status \"{st}\", expected one of [maintenance blocked waiting active]"
        )));
    }
    let value = StatusValue {
        status: st.clone(),
        message: p.pos.get(1).cloned().unwrap_or_default(),
    };
    let application = p.flag("application");
    HookState::update(state, |s| {
        if application {
            if !s.leader {
                return Ok(Outcome::error(
                    "setting application status: this unit is not the leader",
                ));
            }
            s.app_status = Some(value.clone());
        } else {
            s.unit_status = Some(value.clone());
        }
        s.status_history.push(StatusEntry {
            target: if application { "application" } else { "unit" }.into(),
            status: value.status,
            message: value.message,
        });
        Ok(Outcome::default())
    })
}

/// The id part of a secret URI: `secret:ID`, `secret://MODEL/ID` or a bare `ID`.
pub fn secret_id(uri: &str) -> &str {
    let rest = uri.strip_prefix("secret:").unwrap_or(uri);
    rest.rsplit('/').next().unwrap_or(rest)
}

pub(super) fn secret_get(args: &[String], state: &Path) -> R {
    let p = parse_or_return!(parse(
        args,
        &[FORMAT, ("label", "label")],
        &[("peek", "peek"), ("refresh", "refresh")]
    ));
    if let Some(o) = p.too_many(2) {
        return Ok(o);
    }
    let Some(uri) = p.pos.first() else {
        return Ok(Outcome::usage("require either a secret URI or label"));
    };
    let s = HookState::load(state)?;
    let id = secret_id(uri);
    let Some(content) = s
        .secrets
        .iter()
        .find(|(k, _)| secret_id(k) == id)
        .map(|(_, v)| v)
    else {
        return Ok(Outcome::error(format!("secret \"{uri}\" not found")));
    };
    if let Some(key) = p.pos.get(1) {
        return Ok(match content.get(key) {
            Some(v) => render(&json!(v), p.format()),
            None => Outcome::error(format!("secret key \"{key}\" not found")),
        });
    }
    Ok(render(&bag_json(content), p.format()))
}

pub(super) fn is_leader(args: &[String], state: &Path) -> R {
    let p = parse_or_return!(parse(args, &[FORMAT], &[]));
    if let Some(o) = p.too_many(0) {
        return Ok(o);
    }
    let s = HookState::load(state)?;
    Ok(render(&json!(s.leader), p.format()))
}

pub(super) fn juju_log(args: &[String], state: &Path) -> R {
    let p = parse_or_return!(parse(
        args,
        &[("l", "level"), ("log-level", "level"), FORMAT],
        &[("debug", "debug")]
    ));
    if p.pos.is_empty() {
        return Ok(Outcome::error("no message specified"));
    }
    let level = if p.flag("debug") {
        "DEBUG".to_string()
    } else {
        p.vals
            .get("level")
            .map(|l| l.to_uppercase())
            .unwrap_or_else(|| "INFO".into())
    };
    if !matches!(
        level.as_str(),
        "TRACE" | "DEBUG" | "INFO" | "WARNING" | "ERROR" | "CRITICAL"
    ) {
        return Ok(Outcome::usage(format!(
            "invalid value \"{level}\" for option -l: unknown severity level \"{level}\""
        )));
    }
    let message = p.pos.join(" ");
    HookState::update(state, |s| {
        s.juju_log.push(LogLine { level, message });
        Ok(Outcome::default())
    })
}

pub(super) fn resource_get(args: &[String], state: &Path) -> R {
    let p = parse_or_return!(parse(args, &[], &[]));
    let Some(name) = p.pos.first() else {
        return Ok(Outcome::usage("missing required resource name"));
    };
    if let Some(o) = p.too_many(1) {
        return Ok(o);
    }
    let s = HookState::load(state)?;
    Ok(match s.resources.get(name) {
        Some(path) => Outcome {
            stdout: format!("{}\n", path.display()),
            ..Default::default()
        },
        None => Outcome::error(format!(
            "could not download resource: HTTP request failed: Get https://{}/model/{}/units/unit-{}/resources/{name}: resource#{}/{name} not found",
            crate::model::API_ENDPOINT,
            s.model_uuid,
            s.unit.replace('/', "-"),
            s.app()
        )),
    })
}

pub(super) fn version_set(args: &[String], state: &Path) -> R {
    let p = parse_or_return!(parse(args, &[], &[]));
    let Some(v) = p.pos.first().cloned() else {
        return Ok(Outcome::usage("no version specified"));
    };
    if let Some(o) = p.too_many(1) {
        return Ok(o);
    }
    HookState::update(state, |s| {
        s.workload_version = Some(v);
        Ok(Outcome::default())
    })
}
