//! The Juju hook tools a charm calls (`action-get`, `relation-set`, `status-set`, ...), and
//! [`run_dispatch`], which runs a charm's `dispatch` the way the unit agent does.
//!
//! The sandbox binary is multi-call: invoked as one of [`TOOLS`] it acts as that tool (Juju 3.x
//! flags, output formats, error texts and exit codes). What the tools read and what the charm
//! did live in one JSON "hook context" file named by `BACKUP_AGENT_SANDBOX_HOOK_STATE`, changed
//! under an exclusive lock, because a charm may call tools concurrently.

mod context;
mod dispatch;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::Path;

use anyhow::Result;
use serde_json::{json, Value};

pub use crate::outcome::Outcome;
pub use context::{
    HookAction, HookRelation, HookState, LogLine, StatusEntry, StatusValue, STATE_ENV,
};
pub use dispatch::{
    install_tools, run_dispatch, run_dispatch_with, sandbox_exe, DispatchOptions, DispatchOutcome,
};
pub use unit::secret_id;

/// The names the sandbox binary answers to as a hook tool.
pub const TOOLS: &[&str] = &[
    "action-get",
    "action-set",
    "action-log",
    "action-fail",
    "relation-ids",
    "relation-list",
    "relation-get",
    "relation-set",
    "config-get",
    "status-set",
    "secret-get",
    "is-leader",
    "juju-log",
    "resource-get",
    "application-version-set",
];

// ---------------------------------------------------------------------------------------------
// Command lines, the way Juju's gnuflag reads them.

struct Parsed {
    pos: Vec<String>,
    vals: BTreeMap<String, String>,
    bools: BTreeMap<String, bool>,
}

/// `value`/`boolean` flags as (names..., canonical name).
fn parse(
    raw: &[String],
    value: &[(&str, &str)],
    boolean: &[(&str, &str)],
) -> Result<Parsed, Outcome> {
    let mut p = Parsed {
        pos: vec![],
        vals: BTreeMap::new(),
        bools: BTreeMap::new(),
    };
    let mut it = raw.iter();
    let mut only_pos = false;
    while let Some(arg) = it.next() {
        if only_pos || arg == "-" || !arg.starts_with('-') {
            p.pos.push(arg.clone());
            continue;
        }
        if arg == "--" {
            only_pos = true;
            continue;
        }
        let body = arg.trim_start_matches('-');
        let (name, inline) = match body.split_once('=') {
            Some((n, v)) => (n, Some(v.to_string())),
            None => (body, None),
        };
        if let Some((_, canon)) = value.iter().find(|(n, _)| *n == name) {
            let v = match inline {
                Some(v) => v,
                None => match it.next() {
                    Some(v) => v.clone(),
                    None => return Err(Outcome::usage(format!("option needs an argument: {arg}"))),
                },
            };
            p.vals.insert(canon.to_string(), v);
        } else if let Some((_, canon)) = boolean.iter().find(|(n, _)| *n == name) {
            let v = match inline.as_deref() {
                None | Some("true") => true,
                Some("false") => false,
                Some(other) => {
                    return Err(Outcome::usage(format!(
                        "invalid boolean value \"{other}\" for flag {arg}"
                    )))
                }
            };
            p.bools.insert(canon.to_string(), v);
        } else {
            return Err(Outcome::usage(format!(
                "option provided but not defined: {}",
                arg.split('=').next().unwrap_or(arg)
            )));
        }
    }
    Ok(p)
}

impl Parsed {
    fn flag(&self, name: &str) -> bool {
        self.bools.get(name).copied().unwrap_or(false)
    }
    fn format(&self) -> &str {
        self.vals
            .get("format")
            .map(String::as_str)
            .unwrap_or("smart")
    }
    fn too_many(&self, allowed: usize) -> Option<Outcome> {
        (self.pos.len() > allowed).then(|| {
            Outcome::usage(format!(
                "unrecognized args: [{}]",
                self.pos[allowed..]
                    .iter()
                    .map(|a| format!("\"{a}\""))
                    .collect::<Vec<_>>()
                    .join(" ")
            ))
        })
    }
}

const FORMAT: (&str, &str) = ("format", "format");

/// Juju's output formatters: `smart` (the default), `json`, `yaml`.
fn render(v: &Value, format: &str) -> Outcome {
    let text = match format {
        "json" => format!("{}\n", serde_json::to_string(v).unwrap()),
        "yaml" => match v {
            Value::Null => String::new(),
            _ => serde_yaml::to_string(v).unwrap(),
        },
        "smart" => match v {
            Value::Null => String::new(),
            Value::String(s) => format!("{s}\n"),
            Value::Bool(b) => format!("{}\n", if *b { "True" } else { "False" }),
            Value::Number(n) => format!("{n}\n"),
            Value::Array(a) if a.iter().all(Value::is_string) => a
                .iter()
                .map(|s| format!("{}\n", s.as_str().unwrap()))
                .collect(),
            other => serde_yaml::to_string(other).unwrap(),
        },
        other => {
            return Outcome::usage(format!(
                "invalid value \"{other}\" for option --format: unknown format \"{other}\""
            ))
        }
    };
    Outcome {
        stdout: text,
        ..Default::default()
    }
}

fn bag_json(bag: &BTreeMap<String, String>) -> Value {
    Value::Object(bag.iter().map(|(k, v)| (k.clone(), json!(v))).collect())
}

// ---------------------------------------------------------------------------------------------
// The tools.

/// Runs hook tool `tool` with `args` against the context at `state`; `stdin` feeds
/// `relation-set --file -`.
pub fn run_tool(
    tool: &str,
    args: &[String],
    state: &Path,
    env: &dyn Fn(&str) -> Option<String>,
    stdin: &mut dyn Read,
) -> Outcome {
    let r = match tool {
        "action-get" => action_get(args, state),
        "action-set" => action_set(args, state),
        "action-log" => action_log(args, state),
        "action-fail" => action_fail(args, state),
        "relation-ids" => relation_ids(args, state, env),
        "relation-list" => relation_list(args, state, env),
        "relation-get" => relation_get(args, state, env),
        "relation-set" => relation_set(args, state, env, stdin),
        "config-get" => config_get(args, state),
        "status-set" => status_set(args, state),
        "secret-get" => secret_get(args, state),
        "is-leader" => is_leader(args, state),
        "juju-log" => juju_log(args, state),
        "resource-get" => resource_get(args, state),
        "application-version-set" => version_set(args, state),
        other => return Outcome::usage(format!("unknown hook tool {other}")),
    };
    r.unwrap_or_else(|e| Outcome::error(format!("{e:#}")))
}

/// Entry point of the multi-call binary for a hook tool; returns the exit code.
pub fn tool_main(tool: &str) -> i32 {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let out = match std::env::var_os(STATE_ENV) {
        None => Outcome::error(format!(
            "{tool}: not running in a hook context ({STATE_ENV} is not set)"
        )),
        Some(p) => run_tool(
            tool,
            &args,
            Path::new(&p),
            &|k| std::env::var(k).ok(),
            &mut std::io::stdin(),
        ),
    };
    let _ = std::io::stdout().write_all(out.stdout.as_bytes());
    let _ = std::io::stderr().write_all(out.stderr.as_bytes());
    out.code
}

type R = Result<Outcome>;

macro_rules! parse_or_return {
    ($e:expr) => {
        match $e {
            Ok(p) => p,
            Err(o) => return Ok(o),
        }
    };
}

// The tools, by what they touch; declared after the macro above, which they use.
mod actions;
mod relations;
mod unit;

use actions::{action_fail, action_get, action_log, action_set};
use relations::{relation_get, relation_ids, relation_list, relation_set};
use unit::{config_get, is_leader, juju_log, resource_get, secret_get, status_set, version_set};
