//! The `juju` CLI simulator: the Juju 3.6 client commands backup-agent uses, answering from the
//! sandbox model with the real output shapes, messages and exit codes.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use anyhow::{anyhow, Result};
use chrono::{DateTime, TimeZone, Utc};
use serde_json::{json, Map, Value};

use crate::model::{now_ms, pod_ip, App, Model, ModelStore, Task};

/// What one invocation prints and returns.
#[derive(Debug, Default)]
pub struct Outcome {
    pub stdout: String,
    pub stderr: String,
    pub code: i32,
}

impl Outcome {
    fn ok(stdout: String) -> Self {
        Outcome {
            stdout,
            ..Default::default()
        }
    }
    pub(crate) fn error(msg: impl std::fmt::Display) -> Self {
        Outcome {
            stderr: format!("ERROR {msg}\n"),
            code: 1,
            ..Default::default()
        }
    }
    pub(crate) fn usage(msg: impl std::fmt::Display) -> Self {
        Outcome {
            stderr: format!("ERROR {msg}\n"),
            code: 2,
            ..Default::default()
        }
    }
}

/// Parsed command line: juju's flags are accepted before or after positionals.
#[derive(Debug, Default)]
struct Args {
    positional: Vec<String>,
    flags: BTreeMap<String, String>,
    /// Every value of repeatable flags (`--resource`, `--config`).
    multi: BTreeMap<String, Vec<String>>,
}

const VALUE_FLAGS: &[&str] = &[
    "format", "m", "model", "wait", "o", "output", "params", "resource", "config", "reset", "info",
];
const BOOL_FLAGS: &[&str] = &[
    "trust",
    "show-password",
    "background",
    "string-args",
    "all",
    "utc",
    "relations",
    "storage",
    "no-color",
    "color",
    "quiet",
    "q",
];

fn parse_args(raw: &[String]) -> Result<Args, String> {
    let mut a = Args::default();
    let mut it = raw.iter();
    while let Some(arg) = it.next() {
        if let Some(flag) = arg.strip_prefix("--").or_else(|| {
            arg.strip_prefix('-')
                .filter(|f| !f.is_empty() && !f.starts_with(|c: char| c.is_ascii_digit()))
        }) {
            let (name, inline) = match flag.split_once('=') {
                Some((n, v)) => (n.to_string(), Some(v.to_string())),
                None => (flag.to_string(), None),
            };
            if VALUE_FLAGS.contains(&name.as_str()) {
                let v = match inline {
                    Some(v) => v,
                    None => it
                        .next()
                        .cloned()
                        .ok_or_else(|| format!("option needs an argument: {arg}"))?,
                };
                a.multi.entry(name.clone()).or_default().push(v.clone());
                a.flags.insert(name, v);
            } else if BOOL_FLAGS.contains(&name.as_str()) {
                a.flags
                    .insert(name, inline.unwrap_or_else(|| "true".into()));
            } else {
                return Err(format!("option provided but not defined: {arg}"));
            }
        } else {
            a.positional.push(arg.clone());
        }
    }
    Ok(a)
}

impl Args {
    fn format(&self, default: &str) -> String {
        self.flags
            .get("format")
            .or(self.flags.get("o"))
            .cloned()
            .unwrap_or_else(|| default.into())
    }
    fn model(&self) -> Option<String> {
        self.flags
            .get("m")
            .or(self.flags.get("model"))
            .cloned()
            .or_else(|| std::env::var("JUJU_MODEL").ok())
    }
}

/// Go's `time.Duration` syntax (`30s`, `5m`, `1h30m`, `250ms`).
pub fn parse_go_duration(s: &str) -> Option<Duration> {
    if s == "0" {
        return Some(Duration::ZERO);
    }
    let mut total = 0f64;
    let mut rest = s;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let num_len = rest.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
        if num_len == 0 {
            return None;
        }
        let n: f64 = rest[..num_len].parse().ok()?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let mult = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        total += n * mult;
        rest = &rest[unit_len..];
    }
    Some(Duration::from_secs_f64(total))
}

fn render(value: &Value, format: &str) -> Result<String, String> {
    match format {
        "json" => Ok(format!("{}\n", serde_json::to_string(value).unwrap())),
        "yaml" => Ok(serde_yaml::to_string(value).unwrap()),
        other => Err(format!(
            "invalid value \"{other}\" for option --format: unknown format \"{other}\""
        )),
    }
}

/// Juju's status timestamps: `23 Nov 2026 05:20:36Z`.
pub(crate) fn since(ms: u64) -> String {
    dt(ms).format("%d %b %Y %H:%M:%SZ").to_string()
}

/// Go's `time.Time.String()` in UTC, used in task timings and logs.
fn go_time(ms: u64) -> String {
    dt(ms).format("%Y-%m-%d %H:%M:%S +0000 UTC").to_string()
}

fn dt(ms: u64) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(ms as i64)
        .single()
        .unwrap_or_default()
}

/// Entry point: `juju <command> ...`.
pub fn run(store: &ModelStore, raw: &[String]) -> Outcome {
    let Some(cmd) = raw.first() else {
        return Outcome::ok("Juju provides easy, intelligent application orchestration on top of Kubernetes,\ncloud infrastructure providers such as Amazon, Google, Microsoft, Openstack,\nMAAS (and more!), or even your local machine via LXD.\n\nSee https://juju.is for getting started tutorials and additional documentation.\n".into());
    };
    let args = match parse_args(&raw[1..]) {
        Ok(a) => a,
        Err(e) => return Outcome::usage(e),
    };
    if cmd == "version" {
        return version(&args);
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
    ) {
        return Outcome::usage(format!("unrecognized command: juju {cmd}"));
    }
    // Transient controller trouble, injected: the command does nothing and fails. Only a
    // pending fault makes this a write; plain commands leave the model file alone.
    let model = match store.read() {
        Ok(m) => m,
        Err(e) => return Outcome::error(format!("{e:#}")),
    };
    // A client with its own JUJU_DATA (the charm's) logs in with what it holds there.
    if let Some(data) = std::env::var_os("JUJU_DATA").filter(|d| !d.is_empty()) {
        let controller = args
            .model()
            .and_then(|m| m.split_once(':').map(|(c, _)| c.to_string()));
        if let Some(refused) =
            crate::charm::check_login(&model, std::path::Path::new(&data), controller.as_deref())
        {
            return refused;
        }
    }
    if model.faults.juju_errors > 0 {
        // Consume the fault under the lock: concurrent clients each take one.
        let hit = store.update(|m| {
            let hit = m.faults.juju_errors > 0;
            m.faults.juju_errors = m.faults.juju_errors.saturating_sub(1);
            Ok(hit)
        });
        match hit {
            Ok(true) => {
                return Outcome::error(
                    "cannot connect to API: dial tcp 127.0.0.1:17070: connect: connection refused",
                )
            }
            Ok(false) => {}
            Err(e) => return Outcome::error(format!("{e:#}")),
        }
    }
    if let Some(wanted) = args.model() {
        let bare = wanted.rsplit(':').next().unwrap_or(&wanted);
        let bare = bare.rsplit('/').next().unwrap_or(bare);
        if bare != model.name {
            return Outcome::error(format!(
                "model {}:admin/{} not found",
                model.controller, bare
            ));
        }
    }
    let out = match cmd.as_str() {
        "status" => status(&model, &args),
        "show-unit" => show_unit(&model, &args),
        "config" => config(store, &model, &args),
        "scale-application" => scale(store, &args),
        "run" if is_local_unit(&model, args.positional.first()) => crate::charm::run_cli(
            store,
            &model,
            &args.positional,
            &crate::charm::RunOpts {
                format: args.format("plain"),
                wait: args.flags.get("wait").cloned(),
                background: args.flags.contains_key("background"),
                string_args: args.flags.contains_key("string-args"),
                params_file: args.flags.get("params").cloned(),
            },
        ),
        "deploy" => crate::charm::deploy(
            store,
            &model,
            &args.positional,
            args.multi.get("resource").map(Vec::as_slice).unwrap_or(&[]),
            args.multi.get("config").map(Vec::as_slice).unwrap_or(&[]),
            args.flags.contains_key("trust"),
        ),
        "integrate" | "relate" => crate::charm::integrate(store, &model, &args.positional),
        "remove-relation" => crate::charm::remove_relation(store, &model, &args.positional),
        "add-secret" => crate::charm::add_secret(
            store,
            &args.positional,
            args.flags.get("info").map(String::as_str),
        ),
        "grant-secret" => crate::charm::grant_secret(store, &model, &args.positional),
        "secrets" => crate::charm::list_secrets(&model, &args.format("yaml")),
        "show-controller" => crate::charm::show_controller(
            &model,
            args.flags.contains_key("show-password"),
            &args.format("yaml"),
        ),
        "run" => crate::actions::run_cli(
            store,
            &model,
            &args.positional,
            &args.format("plain"),
            args.flags.get("wait").map(|s| s.as_str()),
            args.flags.contains_key("background"),
        ),
        "show-task" => show_task(store, &args),
        "models" | "show-model" => Ok(Outcome::ok(format!(
            "{}\n",
            json!({"models": [{"name": format!("admin/{}", model.name), "short-name": model.name, "model-uuid": model.uuid, "type": "caas"}]})
        ))),
        _ => unreachable!(),
    };
    out.unwrap_or_else(|e| Outcome::error(format!("{e:#}")))
}

fn is_local_unit(model: &Model, unit: Option<&String>) -> bool {
    unit.and_then(|u| crate::model::split_unit(u))
        .and_then(|(a, _)| model.apps.get(a))
        .is_some_and(|a| a.local.is_some())
}

fn version(args: &Args) -> Outcome {
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

/// Status of one unit as Juju shows it: (workload current, message, agent current).
fn unit_status(
    model: &Model,
    app_name: &str,
    app: &App,
    num: u32,
    now: u64,
) -> (String, String, String) {
    let unit = &app.units[&num];
    if let Some(local) = &app.local {
        return crate::charm::unit_status(local, num);
    }
    if !App::is_ready(unit, now) {
        return (
            "maintenance".into(),
            "installing charm software".into(),
            "executing".into(),
        );
    }
    if let Some(msg) = &app.blocked {
        return ("blocked".into(), msg.clone(), "idle".into());
    }
    if crate::actions::running_on(model, &format!("{app_name}/{num}"), now) {
        if let Some(msg) = crate::actions::running_message(model, &format!("{app_name}/{num}"), now)
        {
            return ("maintenance".into(), msg, "executing".into());
        }
    }
    let msg = match &app.mysql {
        Some(m) if m.primary == Some(num) => "Primary".to_string(),
        _ => String::new(),
    };
    ("active".into(), msg, "idle".into())
}

fn app_status(model: &Model, name: &str, app: &App, now: u64) -> (String, String) {
    if let Some(local) = &app.local {
        return crate::charm::app_status(app, local);
    }
    if let Some(msg) = &app.blocked {
        return ("blocked".into(), msg.clone());
    }
    if app.scaling.is_some() || app.units.values().any(|u| !App::is_ready(u, now)) {
        return ("waiting".into(), "waiting for units to settle down".into());
    }
    if app.units.is_empty() {
        return ("active".into(), String::new());
    }
    let _ = (model, name);
    ("active".into(), String::new())
}

fn service_ip(app: &str) -> String {
    let h = app
        .bytes()
        .fold(3u32, |a, b| a.wrapping_mul(17).wrapping_add(b as u32));
    format!("10.152.183.{}", 10 + h % 240)
}

pub fn status_json(model: &Model, now: u64) -> Value {
    let mut apps = Map::new();
    for (name, app) in &model.apps {
        let mut units = Map::new();
        for (num, unit) in &app.units {
            let (wl, msg, agent) = unit_status(model, name, app, *num, now);
            let mut ws = json!({"current": wl, "since": since(unit.pod_created_ms)});
            if !msg.is_empty() {
                ws["message"] = json!(msg);
            }
            let mut u = json!({
                "workload-status": ws,
                "juju-status": {"current": agent, "since": since(unit.pod_created_ms), "version": model.juju_version},
                "address": pod_ip(name, unit.ordinal),
                "provider-id": format!("{name}-{}", unit.ordinal),
            });
            if unit.leader {
                u["leader"] = json!(true);
            }
            units.insert(format!("{name}/{num}"), u);
        }
        let (cur, msg) = app_status(model, name, app, now);
        let mut st = json!({"current": cur, "since": since(app.since_ms)});
        if !msg.is_empty() {
            st["message"] = json!(msg);
        }
        let mut relations = Map::new();
        for r in model.relations_of(name) {
            let (mine, other) = if r.ends[0].app == *name {
                (&r.ends[0], &r.ends[1])
            } else {
                (&r.ends[1], &r.ends[0])
            };
            relations
                .entry(mine.endpoint.clone())
                .or_insert_with(|| json!([]))
                .as_array_mut()
                .unwrap()
                .push(json!({"related-application": other.app, "interface": r.interface, "scope": "global"}));
        }
        let mut a = json!({
            "charm": app.charm,
            "base": {"name": "ubuntu", "channel": "22.04"},
            "charm-origin": "charmhub",
            "charm-name": app.charm,
            "charm-rev": app.charm_rev,
            "charm-channel": app.channel,
            "scale": app.scale,
            "provider-id": format!("{}", uuid_for(name)),
            "address": service_ip(name),
            "exposed": false,
            "application-status": st,
            "endpoint-bindings": {"": "alpha"},
        });
        // Juju omits empty maps: an application scaled to 0 has no `units` key at all.
        if !relations.is_empty() {
            a["relations"] = Value::Object(relations);
        }
        if !units.is_empty() {
            a["units"] = Value::Object(units);
        }
        if !app.workload_version.is_empty() {
            a["version"] = json!(app.workload_version);
        }
        if let Some(local) = &app.local {
            a["charm"] = json!(format!("local:{}-{}", local.name, app.charm_rev));
            a["charm-origin"] = json!("local");
            a["charm-name"] = json!(local.name);
            if let Some(o) = a.as_object_mut() {
                o.remove("charm-channel");
            }
        }
        apps.insert(name.clone(), a);
    }
    json!({
        "model": {
            "name": model.name,
            "type": "caas",
            "controller": model.controller,
            "cloud": model.cloud,
            "region": model.region,
            "version": model.juju_version,
            "model-status": {"current": "available", "since": since(model.created_ms)},
            "sla": "unsupported",
        },
        "machines": {},
        "applications": apps,
        "storage": {},
        "controller": {"timestamp": dt(now).format("%H:%M:%SZ").to_string()},
    })
}

fn uuid_for(name: &str) -> String {
    crate::model::stable_uid(&format!("app/{name}"))
}

fn status(model: &Model, args: &Args) -> Result<Outcome> {
    let now = now_ms();
    let format = args.format("tabular");
    if format == "tabular" {
        return Ok(Outcome::ok(status_table(model, now)));
    }
    let mut v = status_json(model, now);
    // `juju status APP...` filters applications.
    if !args.positional.is_empty() {
        if let Some(apps) = v["applications"].as_object_mut() {
            apps.retain(|k, _| {
                args.positional
                    .iter()
                    .any(|p| p == k || p.split('/').next() == Some(k))
            });
        }
    }
    render(&v, &format)
        .map(Outcome::ok)
        .or_else(|e| Ok(Outcome::usage(e)))
}

fn status_table(model: &Model, now: u64) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "Model     Controller  Cloud/Region        Version  SLA          Timestamp"
    );
    let _ = writeln!(
        s,
        "{:<9} {:<11} {:<18} {:<8} unsupported  {}\n",
        model.name,
        model.controller,
        format!("{}/{}", model.cloud, model.region),
        model.juju_version,
        dt(now).format("%H:%M:%SZ")
    );
    let _ = writeln!(
        s,
        "{:<20} {:<24} {:<8} {:>5}  {:<20} {:<16} {:>5}  Message",
        "App", "Version", "Status", "Scale", "Charm", "Channel", "Rev"
    );
    for (name, app) in &model.apps {
        let (cur, msg) = app_status(model, name, app, now);
        let _ = writeln!(
            s,
            "{:<20} {:<24} {:<8} {:>5}  {:<20} {:<16} {:>5}  {}",
            name, app.workload_version, cur, app.scale, app.charm, app.channel, app.charm_rev, msg
        );
    }
    let _ = writeln!(
        s,
        "\n{:<24} {:<12} {:<10} {:<12} Message",
        "Unit", "Workload", "Agent", "Address"
    );
    for (name, app) in &model.apps {
        for (num, unit) in &app.units {
            let (wl, msg, agent) = unit_status(model, name, app, *num, now);
            let star = if unit.leader { "*" } else { "" };
            let _ = writeln!(
                s,
                "{:<24} {:<12} {:<10} {:<12} {}",
                format!("{name}/{num}{star}"),
                wl,
                agent,
                pod_ip(name, unit.ordinal),
                msg
            );
        }
    }
    s
}

/// A unit's own databag in a relation: Juju's address keys, plus what a local charm wrote.
fn local_bag(app: &App, relation: u32, name: &str, ordinal: u32) -> Value {
    let mut bag = unit_bag(name, ordinal);
    if let Some(d) = app.local.as_ref().and_then(|l| l.unit_data.get(&relation)) {
        for (k, v) in d {
            bag[k] = json!(v);
        }
    }
    bag
}

fn unit_bag(app: &str, ordinal: u32) -> Value {
    let ip = pod_ip(app, ordinal);
    json!({"egress-subnets": format!("{ip}/32"), "ingress-address": ip, "private-address": ip})
}

pub fn show_unit_json(model: &Model, unit: &str) -> Result<Value, String> {
    let (app_name, num) =
        crate::model::split_unit(unit).ok_or_else(|| format!("invalid unit name \"{unit}\""))?;
    let (_, _, u) = model
        .unit(unit)
        .ok_or_else(|| format!("unit \"{unit}\" not found"))?;
    let app = &model.apps[app_name];
    let mut infos = vec![];
    for r in model.relations_of(app_name) {
        let (mine, other) = if r.ends[0].app == app_name {
            (&r.ends[0], &r.ends[1])
        } else {
            (&r.ends[1], &r.ends[0])
        };
        let remote = model.apps.get(&other.app);
        let mut related = Map::new();
        if let Some(ra) = remote {
            for (n, ru) in &ra.units {
                related.insert(
                    format!("{}/{}", other.app, n),
                    json!({"in-scope": true, "data": unit_bag(&other.app, ru.ordinal)}),
                );
            }
        }
        let app_data: Map<String, Value> = r
            .app_data
            .get(&other.app)
            .map(|m| m.iter().map(|(k, v)| (k.clone(), json!(v))).collect())
            .unwrap_or_default();
        infos.push(json!({
            "relation-id": r.id,
            "endpoint": mine.endpoint,
            "related-endpoint": other.endpoint,
            "application-data": app_data,
            "local-unit": {"in-scope": true, "data": local_bag(app, r.id, app_name, u.ordinal)},
            "related-units": related,
        }));
    }
    let mut v = json!({
        "opened-ports": [],
        "charm": format!("ch:amd64/{}-{}", app.charm, app.charm_rev),
        "leader": u.leader,
        "life": "alive",
        "relation-info": infos,
        "provider-id": format!("{app_name}-{}", u.ordinal),
        "address": pod_ip(app_name, u.ordinal),
    });
    if !app.workload_version.is_empty() {
        v["workload-version"] = json!(app.workload_version);
    }
    let _ = num;
    Ok(json!({ unit: v }))
}

fn show_unit(model: &Model, args: &Args) -> Result<Outcome> {
    if args.positional.is_empty() {
        return Ok(Outcome::usage("an unit name must be supplied"));
    }
    let mut all = Map::new();
    for unit in &args.positional {
        match show_unit_json(model, unit) {
            Ok(Value::Object(m)) => all.extend(m),
            Ok(_) => {}
            Err(e) => return Ok(Outcome::error(e)),
        }
    }
    render(&Value::Object(all), &args.format("yaml"))
        .map(Outcome::ok)
        .or_else(|e| Ok(Outcome::usage(e)))
}

fn config(store: &ModelStore, model: &Model, args: &Args) -> Result<Outcome> {
    let Some(app_name) = args.positional.first() else {
        return Ok(Outcome::usage("no application name specified"));
    };
    let Some(app) = model.app(app_name) else {
        return Ok(Outcome::error(format!(
            "application \"{app_name}\" not found"
        )));
    };
    let rest = &args.positional[1..];
    if app.local.is_some() && rest.is_empty() && args.flags.contains_key("reset") {
        return crate::charm::set_config(store, model, app_name, &[], &resets(args));
    }
    if rest.iter().any(|a| a.contains('=')) {
        let mut pairs = vec![];
        for kv in rest {
            let Some((k, v)) = kv.split_once('=') else {
                return Ok(Outcome::usage(
                    "can only retrieve a single value, or all values",
                ));
            };
            if !app.config.contains_key(k) {
                return Ok(Outcome::error(format!("unknown option \"{k}\"")));
            }
            pairs.push((k.to_string(), v.to_string()));
        }
        if app.local.is_some() {
            return crate::charm::set_config(store, model, app_name, &pairs, &resets(args));
        }
        let name = app_name.clone();
        store.update(move |m| {
            let a = m
                .apps
                .get_mut(&name)
                .ok_or_else(|| anyhow!("application \"{name}\" not found"))?;
            for (k, v) in pairs {
                let opt = a.config.get_mut(&k).unwrap();
                opt.value = Some(if opt.kind == "int" {
                    v.parse::<i64>().map(|n| json!(n)).unwrap_or(json!(v))
                } else {
                    json!(v)
                });
            }
            Ok(())
        })?;
        return Ok(Outcome::default());
    }
    if let Some(key) = rest.first() {
        if rest.len() > 1 {
            return Ok(Outcome::usage(
                "can only retrieve a single value, or all values",
            ));
        }
        return Ok(match app.config.get(key) {
            None => Outcome::error(format!(
                "key \"{key}\" not found in \"{app_name}\" application config or charm settings."
            )),
            Some(_) => {
                let v = app.config_value(key).cloned().unwrap_or(Value::Null);
                let text = match v {
                    Value::String(s) => s,
                    Value::Null => String::new(),
                    other => other.to_string(),
                };
                Outcome::ok(format!("{text}\n"))
            }
        });
    }
    let mut settings = Map::new();
    for (k, o) in &app.config {
        let mut s = json!({"description": o.description, "type": o.kind});
        match (&o.value, &o.default) {
            (Some(v), _) => {
                s["source"] = json!("user");
                s["value"] = v.clone();
            }
            (None, Some(d)) => {
                s["source"] = json!("default");
                s["default"] = d.clone();
                s["value"] = d.clone();
            }
            (None, None) => {
                s["source"] = json!("unset");
            }
        }
        settings.insert(k.clone(), s);
    }
    let v = json!({
        "application": app_name,
        "application-config": {"trust": {"default": false, "description": "Does this application have access to trusted credentials", "source": "default", "type": "bool", "value": true}},
        "charm": app.charm,
        "settings": settings,
    });
    render(&v, &args.format("yaml"))
        .map(Outcome::ok)
        .or_else(|e| Ok(Outcome::usage(e)))
}

fn resets(args: &Args) -> Vec<String> {
    args.multi
        .get("reset")
        .into_iter()
        .flatten()
        .flat_map(|r| r.split(','))
        .filter(|r| !r.is_empty())
        .map(str::to_string)
        .collect()
}

fn scale(store: &ModelStore, args: &Args) -> Result<Outcome> {
    let p = &args.positional;
    let Some(app) = p.first() else {
        return Ok(Outcome::usage("no application specified"));
    };
    if !app
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        || app.is_empty()
    {
        return Ok(Outcome::usage(format!(
            "invalid application name \"{app}\""
        )));
    }
    let Some(n) = p.get(1) else {
        return Ok(Outcome::usage("no scale specified"));
    };
    if p.len() > 2 {
        return Ok(Outcome::usage(format!(
            "unrecognized args: [\"{}\"]",
            p[2..].join("\" \"")
        )));
    }
    let n: i64 = match n.parse() {
        Ok(n) => n,
        Err(_) => {
            return Ok(Outcome::usage(format!(
                "invalid scale \"{n}\": strconv.Atoi: parsing \"{n}\": invalid syntax"
            )))
        }
    };
    if n < 0 {
        return Ok(Outcome::usage("scale must be a positive integer"));
    }
    let name = app.clone();
    let res = store.update(move |m| {
        let delay = m.timing.scale_delay_ms;
        let Some(a) = m.apps.get_mut(&name) else {
            return Ok(Err(format!(
                "could not scale application \"{name}\": application \"{name}\" not found"
            )));
        };
        a.scale = n as u32;
        a.scaling = Some(crate::model::Scaling {
            target: n as u32,
            due_ms: now_ms() + delay,
        });
        Ok(Ok(()))
    })?;
    Ok(match res {
        Ok(()) => Outcome {
            stderr: format!("{app} scaled to {n} units\n"),
            ..Default::default()
        },
        Err(e) => Outcome::error(e),
    })
}

/// A task as `show-task` and `run` print it (not keyed by unit).
pub fn task_json(task: &Task, now: u64) -> Value {
    let status = task.status_at(now);
    let mut v = json!({"id": task.id.to_string(), "status": status, "unit": task.unit});
    let mut timing =
        json!({"enqueued": go_time(task.enqueued_ms), "started": go_time(task.started_ms)});
    if status != "running" {
        timing["completed"] = json!(go_time(task.completed_ms));
        if !task.message.is_empty() {
            v["message"] = json!(task.message);
        }
        let mut results = task.results.clone();
        results.entry("return-code").or_insert(json!(0));
        v["results"] = Value::Object(results);
    }
    // A charm's action-log lines show while it runs; a simulated task's when it is over.
    if !task.log.is_empty() && (status != "running" || task.charm) {
        v["log"] = json!(task
            .log
            .iter()
            .enumerate()
            .map(|(i, l)| format!(
                "{} {l}",
                go_time(task.log_ms.get(i).copied().unwrap_or(task.started_ms))
            ))
            .collect::<Vec<_>>());
    }
    v["timing"] = timing;
    v
}

/// The default (plain) rendering of a finished task.
pub fn task_plain(task: &Task, now: u64) -> String {
    let v = task_json(task, now);
    let results = v.get("results").cloned().unwrap_or(json!({}));
    let mut results = results.as_object().cloned().unwrap_or_default();
    results.remove("return-code");
    let body = if results.is_empty() {
        String::new()
    } else {
        serde_yaml::to_string(&Value::Object(results)).unwrap()
    };
    match task.status_at(now) {
        "failed" => format!("Action id {} failed: {}\n{}", task.id, task.message, body),
        _ => body,
    }
}

fn show_task(store: &ModelStore, args: &Args) -> Result<Outcome> {
    let Some(id) = args.positional.first() else {
        return Ok(Outcome::usage("no task ID specified"));
    };
    let Ok(id) = id.parse::<u64>() else {
        return Ok(Outcome::usage(format!("task ID \"{id}\" not valid")));
    };
    let wait = match args.flags.get("wait") {
        None => None,
        Some(w) => match parse_go_duration(w) {
            Some(d) => Some(d),
            None => {
                return Ok(Outcome::usage(format!(
                    "invalid value \"{w}\" for option --wait: time: invalid duration \"{w}\""
                )))
            }
        },
    };
    let model = store.read()?;
    if !model.tasks.contains_key(&id) {
        return Ok(Outcome::error(format!("task {id} not found")));
    }
    let (task, now) = crate::charm::wait_task(store, id, wait)?;
    if task.status_at(now) == "running" && wait.is_some() {
        return Ok(Outcome::error(format!(
            "timed out waiting for results from: task {id}"
        )));
    }
    let format = args.format("plain");
    if format == "plain" {
        return Ok(Outcome::ok(task_plain(&task, now)));
    }
    render(&task_json(&task, now), &format)
        .map(Outcome::ok)
        .or_else(|e| Ok(Outcome::usage(e)))
}
