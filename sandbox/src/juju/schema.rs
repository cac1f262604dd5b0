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

/// The JSON schema Juju builds from an actions.yaml entry.
pub fn action_schema(spec: &Value) -> Value {
    json!({
        "type": "object",
        "properties": spec.get("params").cloned().filter(|p| p.is_object()).unwrap_or(json!({})),
        "required": spec.get("required").cloned().unwrap_or(json!([])),
        "additionalProperties": spec.get("additionalProperties").cloned().unwrap_or(json!(false)),
    })
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
