//! The action tools: `action-get`, `action-set`, `action-log`, `action-fail`.

use std::path::Path;

use serde_json::{json, Value};

use super::{parse, render, HookState, Outcome, FORMAT, R};
use crate::model::now_ms;

pub(super) fn not_in_action() -> Outcome {
    Outcome::error("not running an action")
}

pub(super) fn action_get(args: &[String], state: &Path) -> R {
    let p = parse_or_return!(parse(args, &[FORMAT], &[]));
    if let Some(o) = p.too_many(1) {
        return Ok(o);
    }
    let s = HookState::load(state)?;
    let Some(action) = &s.action else {
        return Ok(not_in_action());
    };
    let mut v = Value::Object(action.params.clone());
    if let Some(key) = p.pos.first() {
        for seg in key.split('.') {
            v = v.get(seg).cloned().unwrap_or(Value::Null);
        }
    }
    Ok(render(&v, p.format()))
}

/// Juju's rule for each dotted segment of an action result key.
fn valid_key(seg: &str) -> bool {
    let b = seg.as_bytes();
    let ok = |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    !b.is_empty() && ok(b[0]) && ok(b[b.len() - 1]) && b.iter().all(|&c| ok(c) || c == b'-')
}

const RESERVED: &[&str] = &["stdout", "stderr", "stdout-encoding", "stderr-encoding"];

pub(super) fn action_set(args: &[String], state: &Path) -> R {
    let p = parse_or_return!(parse(args, &[], &[]));
    let mut pairs = vec![];
    for arg in &p.pos {
        let Some((k, v)) = arg.split_once('=') else {
            return Ok(Outcome::error(format!(
                "argument \"{arg}\" must be of the form key...=value"
            )));
        };
        let segs: Vec<&str> = k.split('.').collect();
        if segs.iter().any(|s| !valid_key(s)) {
            return Ok(Outcome::error(format!("key \"{k}\" must start and end with lowercase alphanumeric, and contain only lowercase alphanumeric, hyphens and periods")));
        }
        if RESERVED.contains(&segs[0]) {
            return Ok(Outcome::error(format!(
                "cannot set reserved action key \"{}\"",
                segs[0]
            )));
        }
        pairs.push((
            segs.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
            v.to_string(),
        ));
    }
    HookState::update(state, |s| {
        if s.action.is_none() {
            return Ok(not_in_action());
        }
        for (segs, v) in pairs {
            let mut cur = &mut s.results;
            for seg in &segs[..segs.len() - 1] {
                let slot = cur.entry(seg.clone()).or_insert_with(|| json!({}));
                if !slot.is_object() {
                    *slot = json!({});
                }
                cur = slot.as_object_mut().unwrap();
            }
            cur.insert(segs[segs.len() - 1].clone(), Value::String(v));
        }
        Ok(Outcome::default())
    })
}

pub(super) fn action_log(args: &[String], state: &Path) -> R {
    let p = parse_or_return!(parse(args, &[], &[]));
    if p.pos.is_empty() {
        return Ok(Outcome::error("no message specified"));
    }
    let msg = p.pos.join(" ");
    HookState::update(state, |s| {
        if s.action.is_none() {
            return Ok(not_in_action());
        }
        s.action_log.push(msg);
        s.action_log_ms.push(now_ms());
        Ok(Outcome::default())
    })
}

pub(super) fn action_fail(args: &[String], state: &Path) -> R {
    let p = parse_or_return!(parse(args, &[], &[]));
    if let Some(o) = p.too_many(1) {
        return Ok(o);
    }
    let msg = p
        .pos
        .first()
        .cloned()
        .unwrap_or_else(|| "action failed without reason given".into());
    HookState::update(state, |s| {
        if s.action.is_none() {
            return Ok(not_in_action());
        }
        s.failed = Some(msg);
        Ok(Outcome::default())
    })
}
