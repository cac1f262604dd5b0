//! `juju config` (read, set, reset) and `juju scale-application`. Setting a local charm's
//! config runs its `config-changed` hook.

use anyhow::{anyhow, Result};
use serde_json::{json, Map, Value};

use super::args::Args;
use super::output::{rendered, Outcome};
use crate::charms::local::{run_hooks, HookCtx};
use crate::model::{now_ms, ConfigOption, Model, ModelStore, Scaling};

pub fn config(store: &ModelStore, model: &Model, args: &Args) -> Result<Outcome> {
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
        return set_config(store, model, app_name, &[], &resets(args));
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
            return set_config(store, model, app_name, &pairs, &resets(args));
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
        // A simulated charm's config-changed.
        if app.charm == "s3-integrator" {
            crate::charms::s3_integrator::config_changed(store, app_name)?;
        }
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
    Ok(rendered(&v, &args.format("yaml")))
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

pub fn scale(store: &ModelStore, args: &Args) -> Result<Outcome> {
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
        a.scaling = Some(Scaling {
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

/// config-changed.
fn set_config(
    store: &ModelStore,
    model: &Model,
    app_name: &str,
    pairs: &[(String, String)],
    resets: &[String],
) -> Result<Outcome> {
    let app = &model.apps[app_name];
    let mut values = vec![];
    for (k, v) in pairs {
        let Some(opt) = app.config.get(k) else {
            return Ok(Outcome::error(format!("unknown option \"{k}\"")));
        };
        match parse_config_value(k, opt, v) {
            Ok(val) => values.push((k.clone(), Some(val))),
            Err(e) => return Ok(Outcome::error(e)),
        }
    }
    for k in resets {
        if !app.config.contains_key(k) {
            return Ok(Outcome::error(format!("unknown option \"{k}\"")));
        }
        values.push((k.clone(), None));
    }
    let changed = store.update(|m| {
        let a = m.apps.get_mut(app_name).unwrap();
        let mut changed = false;
        for (k, v) in values {
            let opt = a.config.get_mut(&k).unwrap();
            if opt.value != v {
                opt.value = v;
                changed = true;
            }
        }
        Ok(changed)
    })?;
    if changed {
        run_hooks(
            store,
            app_name,
            &[("config-changed".into(), HookCtx::default())],
        )?;
    }
    Ok(Outcome::default())
}

/// A config value from the command line, typed by the option like Juju does.
pub fn parse_config_value(key: &str, opt: &ConfigOption, raw: &str) -> Result<Value, String> {
    match opt.kind.as_str() {
        "int" => raw
            .trim()
            .parse::<i64>()
            .map(|n| json!(n))
            .map_err(|_| format!("option \"{key}\" expected int, got \"{raw}\"")),
        "float" => raw
            .trim()
            .parse::<f64>()
            .map(|n| json!(n))
            .map_err(|_| format!("option \"{key}\" expected float, got \"{raw}\"")),
        "boolean" => match raw.trim() {
            "true" | "True" | "TRUE" | "yes" | "y" | "on" | "1" => Ok(json!(true)),
            "false" | "False" | "FALSE" | "no" | "n" | "off" | "0" => Ok(json!(false)),
            _ => Err(format!("option \"{key}\" expected boolean, got \"{raw}\"")),
        },
        _ => Ok(json!(raw)),
    }
}

// ---------------------------------------------------------------------------------------------
