//! User secrets from the client's side: `juju add-secret`, `grant-secret` and `secrets`.
//! Charms read them through `secret-get` (the hook tools).

use std::collections::BTreeMap;
use std::fs;

use anyhow::{anyhow, Result};
use serde_json::{json, Map, Value};

use super::output::{since, Outcome};
use crate::hook_tools::secret_id;
use crate::model::{now_ms, Model, ModelStore, Secret};

fn valid_secret_key(k: &str) -> bool {
    let b = k.as_bytes();
    if b.is_empty() || !b[0].is_ascii_lowercase() {
        return false;
    }
    // `^([a-z](?:-?[a-z0-9]){2,})$`
    let mut groups = 0;
    let mut i = 1;
    while i < b.len() {
        if b[i] == b'-' {
            i += 1;
        }
        match b.get(i) {
            Some(c) if c.is_ascii_lowercase() || c.is_ascii_digit() => {
                groups += 1;
                i += 1;
            }
            _ => return false,
        }
    }
    groups >= 2
}

fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let val = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' | b'-' => 62,
            b'/' | b'_' => 63,
            _ => return None,
        } as u32)
    };
    let clean: Vec<u8> = s
        .bytes()
        .filter(|c| !c.is_ascii_whitespace() && *c != b'=')
        .collect();
    let mut out = vec![];
    for chunk in clean.chunks(4) {
        let mut n = 0u32;
        for (i, c) in chunk.iter().enumerate() {
            n |= val(*c)? << (18 - 6 * i);
        }
        let bytes = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        match chunk.len() {
            4 => out.extend_from_slice(&bytes),
            3 => out.extend_from_slice(&bytes[..2]),
            2 => out.push(bytes[0]),
            _ => return None,
        }
    }
    Some(out)
}

/// A new secret id: 20 characters of `[0-9a-v]`, like Juju's xids.
fn new_secret_id() -> String {
    use rand::Rng;
    const CHARS: &[u8] = b"0123456789abcdefghijklmnopqrstuv";
    let mut rng = rand::rng();
    (0..20)
        .map(|_| CHARS[rng.random_range(0..CHARS.len())] as char)
        .collect()
}

/// `juju add-secret NAME key=value... [key#file=PATH] [key#base64=V] [--info TEXT]`.
pub fn add_secret(
    store: &ModelStore,
    positional: &[String],
    info: Option<&str>,
) -> Result<Outcome> {
    let Some(name) = positional.first() else {
        return Ok(Outcome::usage("missing secret name"));
    };
    if positional.len() < 2 {
        return Ok(Outcome::usage("missing secret value or filename"));
    }
    let mut content = BTreeMap::new();
    for kv in &positional[1..] {
        let Some((k, v)) = kv.split_once('=') else {
            return Ok(Outcome::error(format!("key value \"{kv}\" not valid")));
        };
        let (key, value) = if let Some(key) = k.strip_suffix("#file") {
            match fs::read_to_string(v) {
                Ok(t) => (key, t),
                Err(e) => return Ok(Outcome::error(format!("open {v}: {e}"))),
            }
        } else if let Some(key) = k.strip_suffix("#base64") {
            match base64_decode(v).and_then(|b| String::from_utf8(b).ok()) {
                Some(t) => (key, t),
                None => {
                    return Ok(Outcome::error(format!(
                        "base64 decoding secret value for key \"{key}\""
                    )))
                }
            }
        } else {
            (k, v.to_string())
        };
        if !valid_secret_key(key) {
            return Ok(Outcome::error(format!("key \"{key}\" not valid")));
        }
        content.insert(key.to_string(), value);
    }
    let name = name.clone();
    let info = info.unwrap_or_default().to_string();
    let r = store.update(|m| {
        if m.secrets.values().any(|s| s.name == name) {
            return Ok(Err(format!("secret with name \"{name}\" already exists")));
        }
        let id = new_secret_id();
        m.secrets.insert(
            id.clone(),
            Secret {
                id: id.clone(),
                name,
                description: info,
                content,
                grants: Default::default(),
                created_ms: now_ms(),
            },
        );
        Ok(Ok(id))
    })?;
    Ok(match r {
        Ok(id) => Outcome::ok(format!("secret:{id}\n")),
        Err(e) => Outcome::error(e),
    })
}

fn find_secret<'a>(model: &'a Model, name_or_uri: &str) -> Option<&'a Secret> {
    let id = secret_id(name_or_uri);
    model
        .secrets
        .values()
        .find(|s| s.name == name_or_uri || s.id == id)
}

/// `juju grant-secret NAME|URI APP[,APP...]`.
pub fn grant_secret(store: &ModelStore, model: &Model, positional: &[String]) -> Result<Outcome> {
    let (Some(which), Some(apps)) = (positional.first(), positional.get(1)) else {
        return Ok(Outcome::usage(
            "missing secret URI or name and application names",
        ));
    };
    let Some(secret) = find_secret(model, which) else {
        return Ok(Outcome::error(format!("secret \"{which}\" not found")));
    };
    let apps: Vec<String> = apps.split(',').map(str::to_string).collect();
    for a in &apps {
        if !model.apps.contains_key(a) {
            return Ok(Outcome::error(format!("application \"{a}\" not found")));
        }
    }
    let id = secret.id.clone();
    store.update(|m| {
        let s = m
            .secrets
            .get_mut(&id)
            .ok_or_else(|| anyhow!("secret gone"))?;
        s.grants.extend(apps);
        Ok(())
    })?;
    Ok(Outcome::default())
}

/// `juju secrets [--format json|yaml]`.
pub fn list_secrets(model: &Model, format: &str) -> Result<Outcome> {
    let mut m = Map::new();
    for s in model.secrets.values() {
        m.insert(
            s.id.clone(),
            json!({"revision": 1, "owner": "<model>", "name": s.name, "description": s.description,
                   "created": since(s.created_ms), "updated": since(s.created_ms)}),
        );
    }
    Ok(match format {
        "json" => Outcome::ok(format!("{}\n", Value::Object(m))),
        _ => Outcome::ok(serde_yaml::to_string(&Value::Object(m))?),
    })
}
