//! The Juju hook tools a charm calls (`action-get`, `relation-set`, `status-set`, ...), and
//! [`run_dispatch`], which runs a charm's `dispatch` the way the unit agent does.
//!
//! The sandbox binary is multi-call: invoked as one of [`TOOLS`] it acts as that tool (Juju 3.x
//! flags, output formats, error texts and exit codes). What the tools read and what the charm
//! did live in one JSON "hook context" file named by `BACKUP_AGENT_SANDBOX_HOOK_STATE`, changed
//! under an exclusive lock, because a charm may call tools concurrently.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result};
use fs2::FileExt;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use crate::juju::Outcome;

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

/// The environment variable naming the hook context file.
pub const STATE_ENV: &str = "BACKUP_AGENT_SANDBOX_HOOK_STATE";

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct StatusValue {
    pub status: String,
    #[serde(default)]
    pub message: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct StatusEntry {
    /// `unit` or `application`.
    pub target: String,
    pub status: String,
    #[serde(default)]
    pub message: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct LogLine {
    pub level: String,
    pub message: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct HookAction {
    pub name: String,
    /// The action's uuid (`JUJU_ACTION_UUID`); in Juju 3 the task id.
    #[serde(default)]
    pub id: String,
    /// Parameters as the charm sees them: validated, schema defaults inserted.
    #[serde(default)]
    pub params: Map<String, Value>,
}

/// One relation of the unit, as its hook tools see it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct HookRelation {
    pub id: u32,
    pub endpoint: String,
    #[serde(default)]
    pub interface: String,
    pub remote_app: String,
    /// Units of the remote application in scope (empty during `relation-broken`).
    #[serde(default)]
    pub remote_units: Vec<String>,
    #[serde(default)]
    pub local_app_data: BTreeMap<String, String>,
    #[serde(default)]
    pub local_unit_data: BTreeMap<String, String>,
    #[serde(default)]
    pub remote_app_data: BTreeMap<String, String>,
    #[serde(default)]
    pub remote_unit_data: BTreeMap<String, BTreeMap<String, String>>,
    /// Being removed (`relation-broken`): reachable by id, not listed by `relation-ids`.
    #[serde(default)]
    pub broken: bool,
}

/// The hook context: what the tools answer from, and what the charm did.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct HookState {
    /// `backup-agent/0`.
    pub unit: String,
    #[serde(default)]
    pub leader: bool,
    #[serde(default = "default_model")]
    pub model_name: String,
    #[serde(default)]
    pub model_uuid: String,
    #[serde(default = "default_version")]
    pub juju_version: String,
    /// Effective config values (defaults applied; unset options absent).
    #[serde(default)]
    pub config: Map<String, Value>,
    #[serde(default)]
    pub relations: Vec<HookRelation>,
    /// Secret URI (`secret:<id>`) → content, for the secrets this unit may read.
    #[serde(default)]
    pub secrets: BTreeMap<String, BTreeMap<String, String>>,
    /// Resource name → file (absent: not attached).
    #[serde(default)]
    pub resources: BTreeMap<String, PathBuf>,
    #[serde(default)]
    pub action: Option<HookAction>,
    /// The relation of a relation hook (`JUJU_RELATION_ID`).
    #[serde(default)]
    pub hook_relation: Option<u32>,
    /// `JUJU_REMOTE_UNIT` of a relation hook.
    #[serde(default)]
    pub remote_unit: Option<String>,

    // What the charm did.
    /// `action-set` results, dotted keys nested.
    #[serde(default)]
    pub results: Map<String, Value>,
    #[serde(default)]
    pub action_log: Vec<String>,
    /// Milliseconds since the epoch of each `action_log` line.
    #[serde(default)]
    pub action_log_ms: Vec<u64>,
    #[serde(default)]
    pub failed: Option<String>,
    #[serde(default)]
    pub unit_status: Option<StatusValue>,
    #[serde(default)]
    pub app_status: Option<StatusValue>,
    #[serde(default)]
    pub status_history: Vec<StatusEntry>,
    #[serde(default)]
    pub juju_log: Vec<LogLine>,
    #[serde(default)]
    pub workload_version: Option<String>,
}

fn default_model() -> String {
    "kubeflow".into()
}

fn default_version() -> String {
    "3.6.4".into()
}

/// `value`, or `default` when it is empty (a `HookState::default()` built in code).
fn or(value: &str, default: String) -> String {
    if value.is_empty() {
        default
    } else {
        value.to_string()
    }
}

impl HookState {
    pub fn app(&self) -> &str {
        self.unit.split('/').next().unwrap_or_default()
    }

    pub fn load(path: &Path) -> Result<HookState> {
        let text = fs::read_to_string(path)
            .with_context(|| format!("reading the hook context {}", path.display()))?;
        serde_json::from_str(&text)
            .with_context(|| format!("parsing the hook context {}", path.display()))
    }

    pub fn save(&self, path: &Path) -> Result<()> {
        let tmp = path.with_extension("json.tmp");
        let mut f = File::create(&tmp).with_context(|| format!("writing {}", tmp.display()))?;
        f.write_all(&serde_json::to_vec_pretty(self)?)?;
        f.sync_all()?;
        fs::rename(&tmp, path)?;
        Ok(())
    }

    /// Read-modify-write under the context's exclusive lock; nothing is written when `f` fails.
    pub fn update<T>(path: &Path, f: impl FnOnce(&mut HookState) -> Result<T>) -> Result<T> {
        let lock_path = path.with_extension("lock");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .with_context(|| format!("opening {}", lock_path.display()))?;
        lock.lock_exclusive()?;
        let mut s = HookState::load(path)?;
        let before = s.clone();
        let out = f(&mut s)?;
        if s != before {
            s.save(path)?;
        }
        Ok(out)
    }

    /// The relation named by `-r` (`endpoint:N` or `N`).
    fn relation(&self, spec: &str) -> Option<&HookRelation> {
        let id = spec.rsplit(':').next()?.parse::<u32>().ok()?;
        let r = self.relations.iter().find(|r| r.id == id)?;
        match spec.split_once(':') {
            Some((ep, _)) if ep != r.endpoint => None,
            _ => Some(r),
        }
    }
}

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

fn now_ms() -> u64 {
    crate::model::now_ms()
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

fn not_in_action() -> Outcome {
    Outcome::error("not running an action")
}

fn action_get(args: &[String], state: &Path) -> R {
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

fn action_set(args: &[String], state: &Path) -> R {
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

fn action_log(args: &[String], state: &Path) -> R {
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

fn action_fail(args: &[String], state: &Path) -> R {
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

fn relation_ids(args: &[String], state: &Path, env: &dyn Fn(&str) -> Option<String>) -> R {
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

fn relation_list(args: &[String], state: &Path, env: &dyn Fn(&str) -> Option<String>) -> R {
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

fn relation_get(args: &[String], state: &Path, env: &dyn Fn(&str) -> Option<String>) -> R {
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

fn relation_set(
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

fn config_get(args: &[String], state: &Path) -> R {
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

fn status_set(args: &[String], state: &Path) -> R {
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

fn secret_get(args: &[String], state: &Path) -> R {
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

fn is_leader(args: &[String], state: &Path) -> R {
    let p = parse_or_return!(parse(args, &[FORMAT], &[]));
    if let Some(o) = p.too_many(0) {
        return Ok(o);
    }
    let s = HookState::load(state)?;
    Ok(render(&json!(s.leader), p.format()))
}

fn juju_log(args: &[String], state: &Path) -> R {
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

fn resource_get(args: &[String], state: &Path) -> R {
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

fn version_set(args: &[String], state: &Path) -> R {
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

// ---------------------------------------------------------------------------------------------
// Running a charm.

#[derive(Debug, Clone)]
pub struct DispatchOutcome {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
    /// The hook context after the run: what the charm did.
    pub state: HookState,
}

/// Where the hook-tool links and HOME of a dispatch are.
#[derive(Debug, Clone)]
pub struct DispatchOptions {
    /// The sandbox binary the hook-tool links point to.
    pub exe: PathBuf,
    /// Directory of the hook-tool links (created, idempotently).
    pub tools_dir: PathBuf,
    /// `HOME` of the charm (created).
    pub home: PathBuf,
    /// `JUJU_CONTEXT_ID`.
    pub context_id: String,
}

impl DispatchOptions {
    /// Defaults beside the context file: `<dir>/hook-tools`, `<dir>/home`.
    pub fn beside(state_file: &Path) -> Result<DispatchOptions> {
        let dir = state_file
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."))
            .to_path_buf();
        Ok(DispatchOptions {
            exe: sandbox_exe()?,
            tools_dir: dir.join("hook-tools"),
            home: dir.join("home"),
            context_id: format!("{}-{}", "ctx", now_ms()),
        })
    }
}

/// The sandbox binary: `$BACKUP_AGENT_SANDBOX_EXE`, else this process when it is the sandbox
/// binary, else `backup-agent-sandbox` in the cargo target directory above a test binary.
pub fn sandbox_exe() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("BACKUP_AGENT_SANDBOX_EXE") {
        return Ok(PathBuf::from(p));
    }
    let me = std::env::current_exe()?;
    if me
        .file_name()
        .is_some_and(|n| n.to_string_lossy().starts_with("backup-agent-sandbox"))
        && !me.parent().is_some_and(|d| d.ends_with("deps"))
    {
        return Ok(me);
    }
    for dir in me.ancestors().skip(1).take(3) {
        let cand = dir.join("backup-agent-sandbox");
        if cand.is_file() {
            return Ok(cand);
        }
    }
    anyhow::bail!(
        "cannot find the backup-agent-sandbox binary (set BACKUP_AGENT_SANDBOX_EXE); this process is {}",
        me.display()
    )
}

/// Creates (or refreshes) the directory of hook-tool links to `exe`.
pub fn install_tools(dir: &Path, exe: &Path) -> Result<()> {
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    for tool in TOOLS {
        let link = dir.join(tool);
        if fs::read_link(&link).is_ok_and(|t| t == exe) {
            continue;
        }
        let tmp = dir.join(format!(".{tool}.{}", std::process::id()));
        let _ = fs::remove_file(&tmp);
        std::os::unix::fs::symlink(exe, &tmp)?;
        fs::rename(&tmp, &link)?;
    }
    Ok(())
}

/// Runs `<charm_dir>/dispatch` for `dispatch_path` (`hooks/install`, `actions/create-backup`)
/// with a cleared environment plus Juju's variables, the hook tools first on PATH, and
/// `extra_env`. The context file must exist; it holds what the charm did afterwards.
pub fn run_dispatch(
    charm_dir: &Path,
    dispatch_path: &str,
    state_file: &Path,
    extra_env: &[(String, String)],
) -> Result<DispatchOutcome> {
    run_dispatch_with(
        charm_dir,
        dispatch_path,
        state_file,
        extra_env,
        &DispatchOptions::beside(state_file)?,
    )
}

pub fn run_dispatch_with(
    charm_dir: &Path,
    dispatch_path: &str,
    state_file: &Path,
    extra_env: &[(String, String)],
    opts: &DispatchOptions,
) -> Result<DispatchOutcome> {
    let state_file = std::path::absolute(state_file)?;
    let charm_dir = std::path::absolute(charm_dir)?;
    install_tools(&opts.tools_dir, &opts.exe)?;
    fs::create_dir_all(&opts.home)?;
    let s = HookState::load(&state_file)?;
    let path = format!("{}:/usr/local/bin:/usr/bin:/bin", opts.tools_dir.display());
    let mut cmd = Command::new(charm_dir.join("dispatch"));
    cmd.current_dir(&charm_dir)
        .env_clear()
        .env("PATH", path)
        .env("HOME", &opts.home)
        .env("LANG", "C.UTF-8")
        .env("JUJU_DISPATCH_PATH", dispatch_path)
        .env("JUJU_UNIT_NAME", &s.unit)
        .env("JUJU_MODEL_NAME", or(&s.model_name, default_model()))
        .env("JUJU_MODEL_UUID", &s.model_uuid)
        .env("JUJU_CHARM_DIR", &charm_dir)
        .env("JUJU_VERSION", or(&s.juju_version, default_version()))
        .env("JUJU_CONTEXT_ID", &opts.context_id)
        .env("JUJU_AGENT_SOCKET_NETWORK", "unix")
        .env(STATE_ENV, &state_file)
        .stdin(Stdio::null());
    if let Some(a) = &s.action {
        cmd.env("JUJU_ACTION_NAME", &a.name)
            .env("JUJU_ACTION_UUID", &a.id);
    }
    if let Some(rel) = s
        .hook_relation
        .and_then(|id| s.relations.iter().find(|r| r.id == id))
    {
        cmd.env("JUJU_RELATION", &rel.endpoint)
            .env("JUJU_RELATION_ID", format!("{}:{}", rel.endpoint, rel.id))
            .env("JUJU_REMOTE_APP", &rel.remote_app);
        if let Some(u) = &s.remote_unit {
            cmd.env("JUJU_REMOTE_UNIT", u);
        }
        if dispatch_path.ends_with("-relation-departed") {
            if let Some(u) = &s.remote_unit {
                cmd.env("JUJU_DEPARTING_UNIT", u);
            }
        }
    }
    for (k, v) in extra_env {
        cmd.env(k, v);
    }
    let out = cmd
        .output()
        .with_context(|| format!("running {}/dispatch", charm_dir.display()))?;
    let code = out.status.code().unwrap_or_else(|| {
        use std::os::unix::process::ExitStatusExt;
        128 + out.status.signal().unwrap_or(0)
    });
    Ok(DispatchOutcome {
        code,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        state: HookState::load(&state_file)?,
    })
}
