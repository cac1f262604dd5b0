//! `juju status` and `juju show-unit`: applications, units and relations as the client shows
//! them, with the statuses each kind of charm reports.

use std::fmt::Write as _;

use anyhow::Result;
use serde_json::{json, Map, Value};

use super::args::Args;
use super::output::{dt, rendered, since, Outcome};
use crate::charms::mysql_k8s::running_message;
use crate::model::{now_ms, pod_ip, split_unit, stable_uid, App, LocalCharm, Model};

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
        return local_unit_status(local, num);
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
    if let Some(msg) = running_message(model, &format!("{app_name}/{num}"), now) {
        return ("maintenance".into(), msg, "executing".into());
    }
    let msg = match &app.mysql {
        Some(m) if m.primary == Some(num) => "Primary".to_string(),
        _ => String::new(),
    };
    ("active".into(), msg, "idle".into())
}

fn app_status(model: &Model, name: &str, app: &App, now: u64) -> (String, String) {
    if let Some(local) = &app.local {
        return local_app_status(app, local);
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
    stable_uid(&format!("app/{name}"))
}

pub fn status(model: &Model, args: &Args) -> Result<Outcome> {
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
    Ok(rendered(&v, &format))
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
        split_unit(unit).ok_or_else(|| format!("invalid unit name \"{unit}\""))?;
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

pub fn show_unit(model: &Model, args: &Args) -> Result<Outcome> {
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
    Ok(rendered(&Value::Object(all), &args.format("yaml")))
}

/// Workload and agent status of a local charm's unit: what its charm set, `executing` while a
/// hook or action runs.
fn local_unit_status(local: &LocalCharm, num: u32) -> (String, String, String) {
    let (wl, msg) = match local.unit_status.get(&num) {
        Some(s) => (s.status.clone(), s.message.clone()),
        None => ("unknown".into(), String::new()),
    };
    let agent = if local.executing.get(&num).copied().unwrap_or(0) > 0 {
        "executing"
    } else {
        "idle"
    };
    (wl, msg, agent.into())
}

/// Application status of a local charm: what the leader set, else the leader unit's.
fn local_app_status(app: &App, local: &LocalCharm) -> (String, String) {
    if let Some(s) = &local.app_status {
        return (s.status.clone(), s.message.clone());
    }
    let leader = app.units.iter().find(|(_, u)| u.leader).map(|(n, _)| *n);
    match leader.and_then(|n| local.unit_status.get(&n)) {
        Some(s) => (s.status.clone(), s.message.clone()),
        None => ("unknown".into(), String::new()),
    }
}
