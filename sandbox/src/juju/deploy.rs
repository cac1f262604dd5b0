//! `juju deploy PATH`: a local charm (a `.charm` file or a directory) read, its config and
//! resources checked like Juju checks them, its workload containers started, and its install
//! sequence of hooks run through its `dispatch`.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use serde_json::Value;

use super::config::parse_config_value;
use super::output::Outcome;
use crate::charms::local::{
    read_charm, read_yaml, run_hooks, sandbox_dir, start_workloads, unpack, CharmFiles, HookCtx,
};
use crate::model::{now_ms, App, ConfigOption, LocalCharm, Model, ModelStore};

/// A charm's files where `deploy` found them: a directory read in place, or a `.charm` unpacked
/// into a temporary directory (`unpacked`), which is moved into place or removed.
struct Opened {
    dir: PathBuf,
    files: CharmFiles,
    unpacked: Option<PathBuf>,
}

impl Opened {
    /// Juju's refusal, after removing what was unpacked.
    fn refuse(&self, o: Outcome) -> Result<Outcome> {
        if let Some(t) = &self.unpacked {
            let _ = fs::remove_dir_all(t);
        }
        Ok(o)
    }
}

/// `juju deploy PATH [APP] [--resource N=P]... [--config K=V|FILE]... [--trust]`.
pub fn deploy(
    store: &ModelStore,
    model: &Model,
    positional: &[String],
    resources: &[String],
    configs: &[String],
    trust: bool,
) -> Result<Outcome> {
    let Some(path) = positional.first() else {
        return Ok(Outcome::usage("no charm name specified"));
    };
    if positional.len() > 2 {
        return Ok(Outcome::usage(format!(
            "unrecognized args: [\"{}\"]",
            positional[2..].join("\" \"")
        )));
    }
    let src = PathBuf::from(path);
    if !src.exists() {
        if path.starts_with('.') || path.starts_with('/') {
            return Ok(Outcome::error(format!("no charm was found at \"{path}\"")));
        }
        return Ok(Outcome::error(format!(
            "cannot resolve charm or bundle \"{path}\": the sandbox deploys local charms only"
        )));
    }
    let src = std::path::absolute(&src)?;
    let dir = sandbox_dir(store);
    let charms = dir.join("charms");
    fs::create_dir_all(&charms)?;
    let opened = match open_charm(&src, &charms, path)? {
        Ok(o) => o,
        Err(refusal) => return Ok(refusal),
    };
    let app_name = positional
        .get(1)
        .cloned()
        .unwrap_or(opened.files.name.clone());
    if app_name.is_empty()
        || !app_name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        || !app_name.starts_with(|c: char| c.is_ascii_lowercase())
    {
        return opened.refuse(Outcome::error(format!(
            "invalid application name \"{app_name}\""
        )));
    }
    if model.apps.contains_key(&app_name) {
        return opened.refuse(Outcome::error(format!(
            "cannot add application \"{app_name}\": application already exists"
        )));
    }
    let config = match app_config(&opened.files, &app_name, configs) {
        Ok(c) => c,
        Err(refusal) => return opened.refuse(refusal),
    };
    let attached = match attach_resources(&dir, &opened.files, &app_name, resources)? {
        Ok(a) => a,
        Err(refusal) => return opened.refuse(refusal),
    };
    let Opened {
        dir: charm_dir,
        files,
        unpacked,
    } = opened;
    let charm_dir = match unpacked {
        Some(tmp) => {
            let dest = charms.join(&app_name);
            let _ = fs::remove_dir_all(&dest);
            fs::rename(&tmp, &dest)?;
            dest
        }
        None => charm_dir,
    };
    let name = app_name.clone();
    let charm_name = files.name.clone();
    let containers = files.containers.clone();
    store.update(move |m| {
        if m.apps.contains_key(&name) {
            bail!("cannot add application \"{name}\": application already exists");
        }
        let now = now_ms();
        let mut app = App::new(&charm_name, 0, "", "", now);
        app.config = config;
        app.container = files.containers.first().cloned();
        app.scale = 1;
        app.apply_scale(&name, 1, now, 0);
        app.local = Some(LocalCharm {
            dir: charm_dir,
            name: charm_name.clone(),
            endpoints: files.endpoints,
            resource_meta: files.resources,
            resources: attached,
            actions: files.actions,
            trust,
            ..Default::default()
        });
        m.apps.insert(name, app);
        Ok(())
    })?;
    let stderr = format!(
        "Located local charm \"{0}\", revision 0\nDeploying \"{1}\" from local charm \"{0}\", revision 0 on {2}/stable\n",
        files.name, app_name, files.base
    );
    start_workloads(store, &app_name, &containers)?;
    run_hooks(store, &app_name, &install_hooks(&containers))?;
    Ok(Outcome {
        stderr,
        ..Default::default()
    })
}

/// The charm at `src` (`path` as given): a directory, or a `.charm` unpacked under `charms`.
fn open_charm(src: &Path, charms: &Path, path: &str) -> Result<Result<Opened, Outcome>> {
    if src.is_dir() {
        return Ok(Ok(Opened {
            dir: src.to_path_buf(),
            files: read_charm(src)?,
            unpacked: None,
        }));
    }
    let tmp = charms.join(format!(".unpack-{}", std::process::id()));
    let _ = fs::remove_dir_all(&tmp);
    if let Err(e) = unpack(src, &tmp) {
        let _ = fs::remove_dir_all(&tmp);
        return Ok(Err(Outcome::error(format!(
            "invalid charm \"{path}\": {e:#}"
        ))));
    }
    match read_charm(&tmp) {
        Ok(files) => Ok(Ok(Opened {
            dir: tmp.clone(),
            files,
            unpacked: Some(tmp),
        })),
        Err(e) => {
            let _ = fs::remove_dir_all(&tmp);
            Ok(Err(Outcome::error(format!(
                "invalid charm \"{path}\": {e:#}"
            ))))
        }
    }
}

/// The application's config: the charm's options with the `--config` values set, each
/// `KEY=VALUE` or a YAML file of `APP: {key: value}`.
fn app_config(
    files: &CharmFiles,
    app_name: &str,
    configs: &[String],
) -> Result<BTreeMap<String, ConfigOption>, Outcome> {
    let mut config = files.config.clone();
    let mut pairs: Vec<(String, String)> = vec![];
    for c in configs {
        if let Some((k, v)) = c.split_once('=') {
            pairs.push((k.into(), v.into()));
        } else {
            let doc = match read_yaml(Path::new(c)) {
                Ok(Some(d)) => d,
                Ok(None) => {
                    return Err(Outcome::error(format!(
                        "open {c}: no such file or directory"
                    )))
                }
                Err(e) => return Err(Outcome::error(format!("{e:#}"))),
            };
            for (k, v) in doc[app_name].as_object().into_iter().flatten() {
                let s = match v {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                pairs.push((k.clone(), s));
            }
        }
    }
    for (k, v) in pairs {
        let Some(opt) = config.get_mut(&k) else {
            return Err(Outcome::error(format!("unknown option \"{k}\"")));
        };
        opt.value = Some(parse_config_value(&k, opt, &v).map_err(Outcome::error)?);
    }
    Ok(config)
}

/// The `--resource NAME=PATH` files, kept under `<sandbox>/resources/<app>/<name>/<filename>`
/// (an OCI image resource is kept as given).
fn attach_resources(
    dir: &Path,
    files: &CharmFiles,
    app_name: &str,
    resources: &[String],
) -> Result<Result<BTreeMap<String, PathBuf>, Outcome>> {
    let mut attached = BTreeMap::new();
    for r in resources {
        let Some((name, value)) = r.split_once('=') else {
            return Ok(Err(Outcome::usage(format!(
                "invalid --resource: expected name=path, got \"{r}\""
            ))));
        };
        let Some(meta) = files.resources.get(name) else {
            return Ok(Err(Outcome::error(format!(
                "invalid --resource: unrecognized resource \"{name}\""
            ))));
        };
        if meta.kind == "file" {
            let p = std::path::absolute(value)?;
            if !p.is_file() {
                return Ok(Err(Outcome::error(format!(
                    "open {value}: no such file or directory"
                ))));
            }
            let rdir = dir.join("resources").join(app_name).join(name);
            fs::create_dir_all(&rdir)?;
            let target = rdir.join(meta.filename.clone().unwrap_or_else(|| name.to_string()));
            let _ = fs::remove_file(&target);
            std::os::unix::fs::symlink(&p, &target)?;
            attached.insert(name.to_string(), target);
        } else {
            attached.insert(name.to_string(), PathBuf::from(value));
        }
    }
    Ok(Ok(attached))
}

/// The hooks a new unit runs, in order: install to start, each container's pebble-ready (its
/// Pebble is up: Juju says so once the charm has started), then update-status.
fn install_hooks(containers: &[String]) -> Vec<(String, HookCtx)> {
    let plain = |h: &str| (h.to_string(), HookCtx::default());
    let mut hooks: Vec<(String, HookCtx)> =
        ["install", "leader-elected", "config-changed", "start"]
            .into_iter()
            .map(plain)
            .collect();
    for c in containers {
        hooks.push((
            format!("{c}-pebble-ready"),
            HookCtx {
                workload: Some(c.clone()),
                ..Default::default()
            },
        ));
    }
    hooks.push(plain("update-status"));
    hooks
}
