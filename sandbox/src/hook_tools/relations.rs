//! The relation tools: `relation-ids`, `relation-list`, `relation-get`, `relation-set`.

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::path::Path;

use anyhow::Result;
use serde_json::{json, Value};

use super::{bag_json, parse, render, HookRelation, HookState, Outcome, Parsed, FORMAT, R};

pub(super) fn relation_ids(
    args: &[String],
    state: &Path,
    env: &dyn Fn(&str) -> Option<String>,
) -> R {
    let p = parse_or_return!(parse(args, &[FORMAT], &[]));
    if let Some(o) = p.too_many(1) {
        return Ok(o);
    }
    let Some(endpoint) = p.pos.first().cloned().or_else(|| env("JUJU_RELATION")) else {
        return Ok(Outcome::usage("no endpoint name specified"));
    };
    let s = HookState::load(state)?;
    let ids: Vec<Value> = s
        .relations
        .iter()
        .filter(|r| r.endpoint == endpoint && !r.broken)
        .map(|r| json!(format!("{}:{}", r.endpoint, r.id)))
        .collect();
    Ok(render(&Value::Array(ids), p.format()))
}

/// The relation of `-r`, else of the hook (`JUJU_RELATION_ID`).
fn pick_relation<'a>(
    s: &'a HookState,
    p: &Parsed,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<&'a HookRelation, Outcome> {
    match p.vals.get("relation") {
        Some(spec) => s.relation(spec).ok_or_else(|| {
            Outcome::usage(format!(
                "invalid value \"{spec}\" for option -r: relation not found"
            ))
        }),
        None => match env("JUJU_RELATION_ID") {
            Some(spec) if !spec.is_empty() => s.relation(&spec).ok_or_else(|| {
                Outcome::usage(format!(
                    "invalid value \"{spec}\" for option -r: relation not found"
                ))
            }),
            _ => Err(Outcome::usage("no relation id specified")),
        },
    }
}

const REL: [(&str, &str); 2] = [("r", "relation"), ("relation", "relation")];
const APP: (&str, &str) = ("app", "app");

pub(super) fn relation_list(
    args: &[String],
    state: &Path,
    env: &dyn Fn(&str) -> Option<String>,
) -> R {
    let p = parse_or_return!(parse(args, &[REL[0], REL[1], FORMAT], &[APP]));
    if let Some(o) = p.too_many(0) {
        return Ok(o);
    }
    let s = HookState::load(state)?;
    let rel = parse_or_return!(pick_relation(&s, &p, env));
    if p.flag("app") {
        return Ok(render(&json!(rel.remote_app), p.format()));
    }
    let units: Vec<Value> = rel.remote_units.iter().map(|u| json!(u)).collect();
    Ok(render(&Value::Array(units), p.format()))
}

pub(super) fn relation_get(
    args: &[String],
    state: &Path,
    env: &dyn Fn(&str) -> Option<String>,
) -> R {
    let p = parse_or_return!(parse(args, &[REL[0], REL[1], FORMAT], &[APP]));
    if let Some(o) = p.too_many(2) {
        return Ok(o);
    }
    let s = HookState::load(state)?;
    let rel = parse_or_return!(pick_relation(&s, &p, env));
    let key = p.pos.first().cloned().unwrap_or_else(|| "-".into());
    let app = p.flag("app");
    let target = match p.pos.get(1).cloned() {
        Some(t) => t,
        None => match env("JUJU_REMOTE_UNIT").filter(|u| !u.is_empty()) {
            Some(u) => u,
            None if app => match env("JUJU_REMOTE_APP").filter(|a| !a.is_empty()) {
                Some(a) => a,
                None => return Ok(Outcome::usage("no unit or application specified")),
            },
            None => return Ok(Outcome::usage("no unit id specified")),
        },
    };
    let label = format!("{}:{}", rel.endpoint, rel.id);
    let bag = if app {
        let target_app = target.split('/').next().unwrap_or_default();
        if target_app == s.app() {
            if !s.leader {
                return Ok(Outcome::error("permission denied"));
            }
            rel.local_app_data.clone()
        } else if target_app == rel.remote_app {
            rel.remote_app_data.clone()
        } else {
            return Ok(Outcome::error(format!(
                "cannot read settings for application \"{target_app}\" in relation \"{label}\": application \"{target_app}\": settings not found"
            )));
        }
    } else if target == s.unit {
        rel.local_unit_data.clone()
    } else if let Some(b) = rel.remote_unit_data.get(&target) {
        b.clone()
    } else {
        return Ok(Outcome::error(format!(
            "cannot read settings for unit \"{target}\" in relation \"{label}\": unit \"{target}\": settings not found"
        )));
    };
    if key == "-" {
        return Ok(render(&bag_json(&bag), p.format()));
    }
    let v = bag.get(&key).map(|v| json!(v)).unwrap_or(Value::Null);
    Ok(render(&v, p.format()))
}

fn yaml_scalar(v: &serde_yaml::Value) -> Option<String> {
    match v {
        serde_yaml::Value::String(s) => Some(s.clone()),
        serde_yaml::Value::Bool(b) => Some(b.to_string()),
        serde_yaml::Value::Number(n) => Some(n.to_string()),
        serde_yaml::Value::Null => Some(String::new()),
        _ => None,
    }
}

pub(super) fn relation_set(
    args: &[String],
    state: &Path,
    env: &dyn Fn(&str) -> Option<String>,
    stdin: &mut dyn Read,
) -> R {
    let p = parse_or_return!(parse(
        args,
        &[REL[0], REL[1], FORMAT, ("file", "file")],
        &[APP]
    ));
    let mut settings: BTreeMap<String, String> = BTreeMap::new();
    if let Some(file) = p.vals.get("file") {
        let text = if file == "-" {
            let mut t = String::new();
            stdin.read_to_string(&mut t)?;
            t
        } else {
            match fs::read_to_string(file) {
                Ok(t) => t,
                Err(e) => return Ok(Outcome::error(format!("open {file}: {e}"))),
            }
        };
        let parsed: serde_yaml::Value = match serde_yaml::from_str(&text) {
            Ok(v) => v,
            Err(e) => return Ok(Outcome::error(format!("yaml: {e}"))),
        };
        match parsed {
            serde_yaml::Value::Null => {}
            serde_yaml::Value::Mapping(m) => {
                for (k, v) in m {
                    let (Some(k), Some(v)) = (yaml_scalar(&k), yaml_scalar(&v)) else {
                        return Ok(Outcome::error(
                            "expected a map of string keys to string values",
                        ));
                    };
                    settings.insert(k, v);
                }
            }
            _ => {
                return Ok(Outcome::error(
                    "expected a map of string keys to string values",
                ))
            }
        }
    }
    for kv in &p.pos {
        let Some((k, v)) = kv.split_once('=') else {
            return Ok(Outcome::usage(format!(
                "expected \"key=value\", got \"{kv}\""
            )));
        };
        if k.is_empty() {
            return Ok(Outcome::usage(format!(
                "expected \"key=value\", got \"{kv}\""
            )));
        }
        settings.insert(k.to_string(), v.to_string());
    }
    let mut out = Outcome::default();
    if p.vals.contains_key("format") {
        out.stderr = "--format flag deprecated for command \"relation-set\"\n".into();
    }
    let app = p.flag("app");
    HookState::update(state, |s| {
        let leader = s.leader;
        let id = match pick_relation(s, &p, env) {
            Ok(r) => r.id,
            Err(o) => return Ok(o),
        };
        if app && !leader {
            return Ok(Outcome::error("cannot write relation settings"));
        }
        let rel = s.relations.iter_mut().find(|r| r.id == id).unwrap();
        let bag = if app {
            &mut rel.local_app_data
        } else {
            &mut rel.local_unit_data
        };
        for (k, v) in settings {
            if v.is_empty() {
                bag.remove(&k);
            } else {
                bag.insert(k, v);
            }
        }
        Ok(out)
    })
}
