//! A local charm's files: its metadata, config and actions (from metadata.yaml, config.yaml and
//! actions.yaml, or charmcraft.yaml), and unpacking a `.charm`.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value};

use crate::model::{CharmEndpoint, ConfigOption, ResourceMeta};

/// What the sandbox reads from a charm's files.
#[derive(Debug, Clone, Default)]
pub struct CharmFiles {
    pub name: String,
    pub endpoints: BTreeMap<String, CharmEndpoint>,
    pub resources: BTreeMap<String, ResourceMeta>,
    pub containers: Vec<String>,
    pub config: BTreeMap<String, ConfigOption>,
    pub actions: Value,
    /// The first base manifest.yaml names (`ubuntu@24.04`), as juju prints it.
    pub base: String,
}

pub fn read_yaml(path: &Path) -> Result<Option<Value>> {
    match fs::read_to_string(path) {
        Ok(t) => Ok(Some(
            serde_yaml::from_str::<Value>(&t)
                .with_context(|| format!("parsing {}", path.display()))?,
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// Reads metadata.yaml, config.yaml and actions.yaml (or the same keys from charmcraft.yaml).
pub fn read_charm(dir: &Path) -> Result<CharmFiles> {
    let craft = read_yaml(&dir.join("charmcraft.yaml"))?.unwrap_or(Value::Null);
    let meta = match read_yaml(&dir.join("metadata.yaml"))? {
        Some(m) => m,
        None if craft.get("name").is_some() => craft.clone(),
        None => bail!("no charm metadata.yaml found in {}", dir.display()),
    };
    let name = meta["name"]
        .as_str()
        .ok_or_else(|| anyhow!("metadata.yaml has no name"))?
        .to_string();
    let mut endpoints = BTreeMap::new();
    for role in ["requires", "provides", "peers"] {
        for (ep, spec) in meta[role].as_object().into_iter().flatten() {
            endpoints.insert(
                ep.clone(),
                CharmEndpoint {
                    role: role.into(),
                    interface: spec["interface"].as_str().unwrap_or_default().into(),
                    limit: spec["limit"].as_u64().map(|l| l as u32),
                },
            );
        }
    }
    let mut resources = BTreeMap::new();
    for (r, spec) in meta["resources"].as_object().into_iter().flatten() {
        resources.insert(
            r.clone(),
            ResourceMeta {
                kind: spec["type"].as_str().unwrap_or("file").into(),
                filename: spec["filename"].as_str().map(str::to_string),
            },
        );
    }
    let containers = meta["containers"]
        .as_object()
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default();
    let config_doc = read_yaml(&dir.join("config.yaml"))?
        .or_else(|| craft.get("config").cloned())
        .unwrap_or(Value::Null);
    let mut config = BTreeMap::new();
    for (k, o) in config_doc["options"].as_object().into_iter().flatten() {
        config.insert(
            k.clone(),
            ConfigOption {
                kind: o["type"].as_str().unwrap_or("string").into(),
                description: o["description"].as_str().unwrap_or_default().into(),
                default: o.get("default").cloned().filter(|d| !d.is_null()),
                value: None,
            },
        );
    }
    let actions = read_yaml(&dir.join("actions.yaml"))?
        .or_else(|| craft.get("actions").cloned())
        .unwrap_or(json!({}));
    let manifest = read_yaml(&dir.join("manifest.yaml"))?.unwrap_or(Value::Null);
    let base = &manifest["bases"][0];
    let base = format!(
        "{}@{}",
        base["name"].as_str().unwrap_or("ubuntu"),
        base["channel"].as_str().unwrap_or("22.04")
    );
    Ok(CharmFiles {
        base,
        name,
        endpoints,
        resources,
        containers,
        config,
        actions: if actions.is_null() {
            json!({})
        } else {
            actions
        },
    })
}

/// Unpacks a `.charm` (zip) into `dest`, keeping unix modes so `dispatch` stays executable.
pub fn unpack(charm: &Path, dest: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let f = File::open(charm).with_context(|| format!("opening {}", charm.display()))?;
    let mut zip =
        zip::ZipArchive::new(f).with_context(|| format!("reading {}", charm.display()))?;
    fs::create_dir_all(dest)?;
    for i in 0..zip.len() {
        let mut entry = zip.by_index(i)?;
        let Some(rel) = entry.enclosed_name() else {
            bail!(
                "{}: unsafe path {:?} in the archive",
                charm.display(),
                entry.name()
            );
        };
        let out = dest.join(rel);
        if entry.is_dir() {
            fs::create_dir_all(&out)?;
            continue;
        }
        if let Some(p) = out.parent() {
            fs::create_dir_all(p)?;
        }
        let mode = entry.unix_mode();
        if mode.is_some_and(|m| m & 0o170000 == 0o120000) {
            let mut target = String::new();
            std::io::Read::read_to_string(&mut entry, &mut target)?;
            let _ = fs::remove_file(&out);
            std::os::unix::fs::symlink(target, &out)?;
            continue;
        }
        let mut w = File::create(&out)?;
        std::io::copy(&mut entry, &mut w)?;
        if let Some(m) = mode {
            fs::set_permissions(&out, fs::Permissions::from_mode(m & 0o7777))?;
        }
    }
    Ok(())
}
