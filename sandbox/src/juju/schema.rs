//! The one action-schema validator, for every charm the sandbox runs: each declares its actions
//! as actions.yaml does, Juju turns an entry into a JSON schema, and `juju run`'s parameters are
//! checked against it with gojsonschema's wording. Also how `juju run` reads parameters
//! (`key.key=value` as YAML, `--string-args`, `--params FILE`).

use std::path::Path;

use serde_json::{json, Map, Value};

use super::output::Outcome;
use crate::charms::local::read_yaml;

/// A JSON value's type as JSON schema names it.
pub fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
        Value::Null => "null",
    }
}

/// Checks `v` at `field` against a JSON-schema fragment (type, enum, items, properties).
fn check_value(schema: &Value, v: &Value, field: &str, errors: &mut Vec<String>) {
    if let Some(want) = schema.get("type") {
        let wants: Vec<&str> = match want {
            Value::String(s) => vec![s.as_str()],
            Value::Array(a) => a.iter().filter_map(Value::as_str).collect(),
            _ => vec![],
        };
        let got = json_type(v);
        if !wants.is_empty()
            && !wants
                .iter()
                .any(|w| *w == got || (*w == "number" && got == "integer"))
        {
            errors.push(format!(
                "{field} : must be of type {}, given {v}",
                wants.join(", ")
            ));
            return;
        }
    }
    if let Some(allowed) = schema.get("enum").and_then(Value::as_array) {
        if !allowed.contains(v) {
            let list: Vec<String> = allowed.iter().map(|a| a.to_string()).collect();
            errors.push(format!(
                "{field} : must be one of the following: {}, given {v}",
                list.join(", ")
            ));
        }
    }
    if let (Some(items), Value::Array(arr)) = (schema.get("items"), v) {
        for (i, item) in arr.iter().enumerate() {
            check_value(items, item, &format!("{field}.{i}"), errors);
        }
    }
    if let (Some(props), Value::Object(obj)) = (schema.get("properties"), v) {
        check_object(schema, props, obj, field, errors);
    }
}

fn check_object(
    schema: &Value,
    props: &Value,
    obj: &Map<String, Value>,
    field: &str,
    errors: &mut Vec<String>,
) {
    let given = Value::Object(obj.clone()).to_string();
    for req in schema["required"].as_array().into_iter().flatten() {
        let req = req.as_str().unwrap_or_default();
        if !obj.contains_key(req) {
            errors.push(format!(
                "{field} : \"{req}\" property is missing and required, given {given}"
            ));
        }
    }
    let closed = schema.get("additionalProperties") == Some(&Value::Bool(false));
    for (k, v) in obj {
        match props.get(k) {
            None if closed => errors.push(format!(
                "{field} : additional property \"{k}\" is not allowed, given {given}"
            )),
            None => {}
            Some(p) => check_value(p, v, &format!("{field}.{k}"), errors),
        }
    }
}

/// The JSON schema Juju 3 builds from an actions.yaml entry (juju/charm v12 `Actions`):
/// `required` and `additionalProperties` only when the charm sets them, so by default Juju 3
/// passes unknown parameters through to the charm (Juju 4 refuses them: juju/charm v13).
pub fn action_schema(spec: &Value) -> Value {
    let mut schema = json!({
        "type": "object",
        "properties": spec.get("params").cloned().filter(|p| p.is_object()).unwrap_or(json!({})),
    });
    for k in ["required", "additionalProperties"] {
        if let Some(v) = spec.get(k) {
            schema[k] = v.clone();
        }
    }
    schema
}

/// `juju actions APP [--schema] [--format F]`: the charm's actions; with `--schema`, each
/// one's JSON schema keyed by name (`cmd/juju/action/list.go`), YAML unless told otherwise.
pub fn list_actions(
    model: &crate::model::Model,
    args: &super::args::Args,
) -> anyhow::Result<Outcome> {
    let [app] = args.positional.as_slice() else {
        return Ok(Outcome::usage("no application name specified"));
    };
    let Some(a) = model.apps.get(app) else {
        return Ok(Outcome::error(format!("application \"{app}\" not found")));
    };
    let actions = match (&a.local, a.charm.as_str()) {
        (Some(local), _) => local.actions.clone(),
        (None, "mysql-k8s") => crate::charms::mysql_k8s::actions(),
        (None, "s3-integrator") => crate::charms::s3_integrator::actions(),
        _ => json!({}),
    };
    let mut all = Map::new();
    for (name, spec) in actions.as_object().into_iter().flatten() {
        let mut s = action_schema(spec);
        s["title"] = json!(name);
        s["description"] = spec.get("description").cloned().unwrap_or(json!(""));
        all.insert(name.clone(), s);
    }
    let schema = args.flags.contains_key("schema");
    let format = args.format(if schema { "yaml" } else { "tabular" });
    let out = match format.as_str() {
        "json" if schema => format!("{}\n", Value::Object(all)),
        "yaml" if schema => serde_yaml::to_string(&Value::Object(all))?,
        "json" => format!(
            "{}\n",
            Value::Object(
                all.iter()
                    .map(|(k, v)| (k.clone(), v["description"].clone()))
                    .collect()
            )
        ),
        "tabular" | "yaml" => {
            if all.is_empty() {
                return Ok(Outcome::ok(format!("No actions defined for {app}.\n")));
            }
            let width = all.keys().map(String::len).max().unwrap_or(6).max(6);
            let mut t = format!("{:<width$}  Description\n", "Action");
            for (k, v) in &all {
                t.push_str(&format!(
                    "{k:<width$}  {}\n",
                    v["description"].as_str().unwrap_or("")
                ));
            }
            t
        }
        other => {
            return Ok(Outcome::usage(format!(
                "invalid value \"{other}\" for option --format"
            )))
        }
    };
    Ok(Outcome::ok(out))
}

/// Validates like Juju (gojsonschema's wording) and inserts the schema's defaults.
pub fn validate_params(schema: &Value, params: &mut Map<String, Value>) -> Result<(), String> {
    let mut errors = vec![];
    check_object(schema, &schema["properties"], params, "(root)", &mut errors);
    if !errors.is_empty() {
        return Err(format!("validation failed: {}", errors.join("; ")));
    }
    for (k, p) in schema["properties"].as_object().into_iter().flatten() {
        if let Some(d) = p.get("default") {
            params.entry(k.clone()).or_insert_with(|| d.clone());
        }
    }
    Ok(())
}

fn yaml_value(s: &str) -> Value {
    if s.is_empty() {
        return json!("");
    }
    match serde_yaml::from_str::<Value>(s) {
        Ok(Value::Null) if s.trim() != "null" && s.trim() != "~" => json!(s),
        Ok(v) => v,
        Err(_) => json!(s),
    }
}

fn insert_dotted(params: &mut Map<String, Value>, key: &str, v: Value) {
    let segs: Vec<&str> = key.split('.').collect();
    let mut cur = params;
    for seg in &segs[..segs.len() - 1] {
        let slot = cur.entry(seg.to_string()).or_insert_with(|| json!({}));
        if !slot.is_object() {
            *slot = json!({});
        }
        cur = slot.as_object_mut().unwrap();
    }
    cur.insert(segs[segs.len() - 1].to_string(), v);
}

/// `juju run`'s parameters: the `--params` file's map, then each `key.key=value` argument
/// (YAML unless `string_args`) over it. A bad file is an error; a bad argument, a usage error.
pub fn parse_params(
    file: Option<&str>,
    args: &[String],
    string_args: bool,
) -> Result<Map<String, Value>, Outcome> {
    let mut params = Map::new();
    if let Some(f) = file {
        match read_yaml(Path::new(f)) {
            Ok(Some(Value::Object(m))) => params.extend(m),
            Ok(Some(Value::Null)) => {}
            Ok(None) => {
                return Err(Outcome::error(format!(
                    "open {f}: no such file or directory"
                )))
            }
            Ok(Some(_)) => {
                return Err(Outcome::error(format!(
                    "params file \"{f}\" must hold a YAML map"
                )))
            }
            Err(e) => return Err(Outcome::error(format!("{e:#}"))),
        }
    }
    for p in args {
        let Some((k, v)) = p.split_once('=') else {
            return Err(Outcome::usage(format!(
                "argument \"{p}\" must be of the form key.key.key...=value"
            )));
        };
        let v = if string_args { json!(v) } else { yaml_value(v) };
        insert_dotted(&mut params, k, v);
    }
    Ok(params)
}
