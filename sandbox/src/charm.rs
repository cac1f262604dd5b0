//! Local charms in the sandbox model: `juju deploy ./x.charm`, `integrate`, `remove-relation`,
//! `config` and `run` on them, each hook and action run through the charm's real `dispatch`
//! with the sandbox's hook tools ([`crate::hook_tools`]). Also the controller's side of things a
//! charm needs: user secrets (`add-secret`, `grant-secret`), `show-controller` and the login
//! check of a client that brings its own `JUJU_DATA`.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use fs2::FileExt;
use serde_json::{json, Map, Value};

use crate::actions::json_type;
use crate::hook_tools::{
    run_dispatch_with, DispatchOptions, DispatchOutcome, HookAction, HookRelation, HookState,
    StatusValue,
};
use crate::juju::Outcome;
use crate::model::{
    now_ms, pod_ip, split_unit, App, CharmEndpoint, ConfigOption, LocalCharm, Model, ModelStore,
    ResourceMeta, Secret, Task, API_ENDPOINT,
};

/// The sandbox directory that holds the model file.
pub fn sandbox_dir(store: &ModelStore) -> PathBuf {
    store
        .path()
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

fn ok(stdout: impl Into<String>) -> Outcome {
    Outcome {
        stdout: stdout.into(),
        ..Default::default()
    }
}

// ---------------------------------------------------------------------------------------------
// Reading a charm.

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

fn read_yaml(path: &Path) -> Result<Option<Value>> {
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
// Hook contexts.

/// The hook context of unit `num` of `app` as the model has it now.
pub fn hook_state(model: &Model, app_name: &str, num: u32) -> HookState {
    let app = &model.apps[app_name];
    let local = app.local.clone().unwrap_or_default();
    let unit = app.units.get(&num);
    let mut config = Map::new();
    for k in app.config.keys() {
        if let Some(v) = app.config_value(k).filter(|v| !v.is_null()) {
            config.insert(k.clone(), v.clone());
        }
    }
    let mut relations = vec![];
    for r in model.relations_of(app_name) {
        let (mine, other) = if r.ends[0].app == app_name {
            (&r.ends[0], &r.ends[1])
        } else {
            (&r.ends[1], &r.ends[0])
        };
        let mut remote_units = vec![];
        let mut remote_unit_data = BTreeMap::new();
        if let Some(ra) = model.apps.get(&other.app) {
            for (n, ru) in &ra.units {
                let name = format!("{}/{n}", other.app);
                let ip = pod_ip(&other.app, ru.ordinal);
                let mut bag = BTreeMap::new();
                bag.insert("egress-subnets".into(), format!("{ip}/32"));
                bag.insert("ingress-address".into(), ip.clone());
                bag.insert("private-address".into(), ip);
                if let Some(d) = ra.local.as_ref().and_then(|l| l.unit_data.get(&r.id)) {
                    bag.extend(d.clone());
                }
                remote_units.push(name.clone());
                remote_unit_data.insert(name, bag);
            }
        }
        relations.push(HookRelation {
            id: r.id,
            endpoint: mine.endpoint.clone(),
            interface: r.interface.clone(),
            remote_app: other.app.clone(),
            remote_units,
            local_app_data: r.app_data.get(app_name).cloned().unwrap_or_default(),
            local_unit_data: local.unit_data.get(&r.id).cloned().unwrap_or_default(),
            remote_app_data: r.app_data.get(&other.app).cloned().unwrap_or_default(),
            remote_unit_data,
            broken: false,
        });
    }
    let secrets = model
        .secrets
        .values()
        .filter(|s| s.grants.contains(app_name))
        .map(|s| (format!("secret:{}", s.id), s.content.clone()))
        .collect();
    HookState {
        unit: format!("{app_name}/{num}"),
        leader: unit.is_some_and(|u| u.leader),
        model_name: model.name.clone(),
        model_uuid: model.uuid.clone(),
        juju_version: model.juju_version.clone(),
        config,
        relations,
        secrets,
        resources: local.resources.clone(),
        unit_status: local.unit_status.get(&num).cloned(),
        app_status: local.app_status.clone(),
        ..Default::default()
    }
}

/// Takes what a hook or action did back into the model.
fn merge(model: &mut Model, app_name: &str, num: u32, st: &HookState) {
    let leader = model.apps[app_name]
        .units
        .get(&num)
        .is_some_and(|u| u.leader);
    for rel in &st.relations {
        if let Some(r) = model.relations.iter_mut().find(|r| r.id == rel.id) {
            if leader {
                if rel.local_app_data.is_empty() {
                    r.app_data.remove(app_name);
                } else {
                    r.app_data
                        .insert(app_name.to_string(), rel.local_app_data.clone());
                }
            }
        }
    }
    let live: Vec<u32> = model.relations.iter().map(|r| r.id).collect();
    let app = model.apps.get_mut(app_name).expect("app");
    if let Some(v) = &st.workload_version {
        app.workload_version = v.clone();
    }
    let Some(local) = app.local.as_mut() else {
        return;
    };
    for rel in &st.relations {
        if live.contains(&rel.id) {
            local.unit_data.insert(rel.id, rel.local_unit_data.clone());
        }
    }
    if let Some(s) = &st.unit_status {
        local.unit_status.insert(num, s.clone());
    }
    if let Some(s) = &st.app_status {
        local.app_status = Some(s.clone());
    }
    local.log.extend(st.juju_log.iter().cloned());
}

/// Held while a hook or action runs on a unit: Juju runs one at a time per unit.
struct UnitLock(#[allow(dead_code)] File);

fn unit_lock(dir: &Path, unit: &str) -> Result<UnitLock> {
    let d = dir.join("hook-contexts");
    fs::create_dir_all(&d)?;
    let p = d.join(format!("{}.lock", unit.replace('/', "-")));
    let f = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&p)?;
    f.lock_exclusive()?;
    Ok(UnitLock(f))
}

/// What the sandbox gives every process of a charm (its hooks and actions, and its workload's
/// services): its kubeconfig, and the caller's `RUST_LOG`.
fn sandbox_env(dir: &Path) -> Vec<(String, String)> {
    let mut env = vec![];
    let kc = dir.join("kubeconfig");
    if kc.exists() {
        env.push(("KUBECONFIG".into(), kc.display().to_string()));
    }
    if let Ok(l) = std::env::var("RUST_LOG") {
        env.push(("RUST_LOG".into(), l));
    }
    env
}

/// The environment the sandbox gives a charm besides Juju's: [`sandbox_env`], and where the
/// Pebble sockets of its unit's workload containers are (`BACKUP_AGENT_CONTAINERS_DIR`; in
/// Juju, `/charm/containers`).
fn charm_env(dir: &Path, unit: &str) -> Vec<(String, String)> {
    let mut env = sandbox_env(dir);
    if let Some((app, num)) = split_unit(unit) {
        env.push((
            "BACKUP_AGENT_CONTAINERS_DIR".into(),
            crate::pebble::containers_dir(dir, app, num)
                .display()
                .to_string(),
        ));
    }
    env
}

/// The whole environment of a workload container's Pebble, and so of its services: a plain
/// container's (PATH, HOME, LANG) and [`sandbox_env`].
fn workload_env(dir: &Path, container_dir: &Path) -> Vec<(String, String)> {
    let home = container_dir.join(crate::pebble::ROOT).join("root");
    let _ = fs::create_dir_all(&home);
    let mut env = vec![
        (
            "PATH".to_string(),
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_string(),
        ),
        ("HOME".into(), home.display().to_string()),
        ("LANG".into(), "C.UTF-8".into()),
    ];
    env.extend(sandbox_env(dir));
    env
}

/// Starts the Pebble of each workload container of each unit of `app` (as Juju's pod would),
/// waiting until each answers.
fn start_workloads(store: &ModelStore, app: &str, containers: &[String]) -> Result<()> {
    if containers.is_empty() {
        return Ok(());
    }
    let dir = sandbox_dir(store);
    let exe = crate::hook_tools::sandbox_exe()?;
    let units: Vec<u32> = store.read()?.apps[app].units.keys().copied().collect();
    for num in units {
        for c in containers {
            let cdir = crate::pebble::containers_dir(&dir, app, num).join(c);
            crate::pebble::start_daemon(&exe, &cdir, c, &workload_env(&dir, &cdir))
                .with_context(|| format!("starting Pebble in container {c} of {app}/{num}"))?;
        }
    }
    Ok(())
}

fn dispatch_options(dir: &Path, ctx: &str) -> Result<DispatchOptions> {
    Ok(DispatchOptions {
        exe: crate::hook_tools::sandbox_exe()?,
        tools_dir: dir.join("hook-tools"),
        home: dir.join("charm-home"),
        context_id: ctx.to_string(),
    })
}

/// Appends a dispatch's output to `logs/unit-<app>-<n>.log`, as the unit agent logs it.
fn log_dispatch(dir: &Path, unit: &str, what: &str, out: &Result<DispatchOutcome>) {
    let _ = fs::create_dir_all(dir.join("logs"));
    let path = dir
        .join("logs")
        .join(format!("unit-{}.log", unit.replace('/', "-")));
    let text = match out {
        Ok(o) => format!(
            "== {what}: exit {}\n{}{}",
            o.code,
            o.stdout,
            if o.stderr.is_empty() {
                String::new()
            } else {
                format!("stderr:\n{}", o.stderr)
            }
        ),
        Err(e) => format!("== {what}: could not run: {e:#}\n"),
    };
    if let Ok(mut f) = OpenOptions::new().create(true).append(true).open(path) {
        let _ = std::io::Write::write_all(&mut f, text.as_bytes());
    }
}

/// Runs `f` while a watcher copies what the charm does live into the model: its statuses, and
/// the action's log lines (which the operator sees while the task runs).
fn watching<T>(
    store: &ModelStore,
    state_file: &Path,
    app: &str,
    num: u32,
    task: Option<u64>,
    f: impl FnOnce() -> T,
) -> T {
    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|scope| {
        scope.spawn(|| {
            let mut seen: Option<(usize, Option<StatusValue>, Option<StatusValue>)> = None;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(100));
                // The context file is replaced by a rename: a plain read sees a whole version.
                let Ok(st) = HookState::load(state_file) else {
                    continue;
                };
                let now = (
                    st.action_log.len(),
                    st.unit_status.clone(),
                    st.app_status.clone(),
                );
                if seen.as_ref() == Some(&now) {
                    continue;
                }
                let _ = store.update(|m| {
                    if let Some(l) = m.apps.get_mut(app).and_then(|a| a.local.as_mut()) {
                        if let Some(s) = &st.unit_status {
                            l.unit_status.insert(num, s.clone());
                        }
                        if let Some(s) = &st.app_status {
                            l.app_status = Some(s.clone());
                        }
                    }
                    if let Some(t) = task.and_then(|id| m.tasks.get_mut(&id)) {
                        if t.status_at(now_ms()) == "running" {
                            t.log = st.action_log.clone();
                            t.log_ms = st.action_log_ms.clone();
                        }
                    }
                    Ok(())
                });
                seen = Some(now);
            }
        });
        let out = f();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        out
    })
}

/// What a relation hook is about.
#[derive(Debug, Clone, Default)]
pub struct HookCtx {
    pub relation: Option<u32>,
    pub remote_unit: Option<String>,
    /// `relation-departed`: the remote unit has left the relation's unit list.
    pub departing: bool,
    /// `relation-broken`: the relation has no remote units and is not listed.
    pub broken: bool,
    /// The container of a `<container>-pebble-ready` hook (`JUJU_WORKLOAD_NAME`).
    pub workload: Option<String>,
}

/// Runs hook `hook` on unit `num` of the local charm `app`, through its dispatch, and takes its
/// results into the model. A hook that exits non-zero leaves the unit in `error`.
pub fn run_hook(
    store: &ModelStore,
    app: &str,
    num: u32,
    hook: &str,
    ctx: &HookCtx,
) -> Result<DispatchOutcome> {
    let dir = sandbox_dir(store);
    let unit = format!("{app}/{num}");
    let _lock = unit_lock(&dir, &unit)?;
    let (state, charm_dir, n) = store.update(|m| {
        let mut st = hook_state(m, app, num);
        st.hook_relation = ctx.relation;
        st.remote_unit = ctx.remote_unit.clone();
        if let Some(rel) = st.relations.iter_mut().find(|r| Some(r.id) == ctx.relation) {
            if ctx.broken {
                rel.broken = true;
                rel.remote_units.clear();
            } else if ctx.departing {
                rel.remote_units
                    .retain(|u| Some(u) != ctx.remote_unit.as_ref());
            }
        }
        let local = m
            .apps
            .get_mut(app)
            .and_then(|a| a.local.as_mut())
            .ok_or_else(|| anyhow!("application \"{app}\" is not a local charm"))?;
        *local.executing.entry(num).or_default() += 1;
        local.next_context += 1;
        Ok((st, local.dir.clone(), local.next_context))
    })?;
    let ctx_id = format!("{unit}-{hook}-{n}");
    let state_file = dir
        .join("hook-contexts")
        .join(format!("{}-{n}.json", unit.replace('/', "-")));
    let mut env = charm_env(&dir, &unit);
    if let Some(w) = &ctx.workload {
        env.push(("JUJU_WORKLOAD_NAME".into(), w.clone()));
    }
    let out = state.save(&state_file).and_then(|_| {
        let opts = dispatch_options(&dir, &ctx_id)?;
        watching(store, &state_file, app, num, None, || {
            run_dispatch_with(
                &charm_dir,
                &format!("hooks/{hook}"),
                &state_file,
                &env,
                &opts,
            )
        })
    });
    log_dispatch(&dir, &unit, &format!("hooks/{hook}"), &out);
    let _ = fs::remove_file(&state_file);
    let _ = fs::remove_file(state_file.with_extension("lock"));
    store.update(|m| {
        if let Ok(o) = &out {
            merge(m, app, num, &o.state);
        }
        if let Some(local) = m.apps.get_mut(app).and_then(|a| a.local.as_mut()) {
            let e = local.executing.entry(num).or_default();
            *e = e.saturating_sub(1);
            let code = out.as_ref().map(|o| o.code).unwrap_or(-1);
            local.hooks.push(format!("{hook}:{code}"));
            if code != 0 {
                local.unit_status.insert(
                    num,
                    StatusValue {
                        status: "error".into(),
                        message: format!("hook failed: \"{hook}\""),
                    },
                );
            }
        }
        Ok(())
    })?;
    out
}

/// Runs `hooks` in order on every unit of `app`, stopping at the first that fails (Juju would
/// retry it; the unit shows `error` meanwhile).
fn run_hooks(store: &ModelStore, app: &str, hooks: &[(String, HookCtx)]) -> Result<()> {
    let units: Vec<u32> = store.read()?.apps[app].units.keys().copied().collect();
    for num in units {
        for (hook, ctx) in hooks {
            let out = run_hook(store, app, num, hook, ctx)?;
            if out.code != 0 {
                break;
            }
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// juju deploy.

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
    let (charm_dir, files, unpacked) = if src.is_dir() {
        let files = read_charm(&src)?;
        (src.clone(), files, None)
    } else {
        let tmp = charms.join(format!(".unpack-{}", std::process::id()));
        let _ = fs::remove_dir_all(&tmp);
        if let Err(e) = unpack(&src, &tmp) {
            let _ = fs::remove_dir_all(&tmp);
            return Ok(Outcome::error(format!("invalid charm \"{path}\": {e:#}")));
        }
        let files = match read_charm(&tmp) {
            Ok(f) => f,
            Err(e) => {
                let _ = fs::remove_dir_all(&tmp);
                return Ok(Outcome::error(format!("invalid charm \"{path}\": {e:#}")));
            }
        };
        (tmp.clone(), files, Some(tmp))
    };
    let cleanup = |o: Outcome| {
        if let Some(t) = &unpacked {
            let _ = fs::remove_dir_all(t);
        }
        Ok(o)
    };
    let app_name = positional.get(1).cloned().unwrap_or(files.name.clone());
    if app_name.is_empty()
        || !app_name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        || !app_name.starts_with(|c: char| c.is_ascii_lowercase())
    {
        return cleanup(Outcome::error(format!(
            "invalid application name \"{app_name}\""
        )));
    }
    if model.apps.contains_key(&app_name) {
        return cleanup(Outcome::error(format!(
            "cannot add application \"{app_name}\": application already exists"
        )));
    }
    // Config: KEY=VALUE pairs or YAML files of `APP: {key: value}`.
    let mut config = files.config.clone();
    let mut pairs: Vec<(String, String)> = vec![];
    for c in configs {
        if let Some((k, v)) = c.split_once('=') {
            pairs.push((k.into(), v.into()));
        } else {
            let doc = match read_yaml(Path::new(c)) {
                Ok(Some(d)) => d,
                Ok(None) => {
                    return cleanup(Outcome::error(format!(
                        "open {c}: no such file or directory"
                    )))
                }
                Err(e) => return cleanup(Outcome::error(format!("{e:#}"))),
            };
            for (k, v) in doc[&app_name].as_object().into_iter().flatten() {
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
            return cleanup(Outcome::error(format!("unknown option \"{k}\"")));
        };
        match parse_config_value(&k, opt, &v) {
            Ok(val) => opt.value = Some(val),
            Err(e) => return cleanup(Outcome::error(e)),
        }
    }
    // Resources: files are kept under <sandbox>/resources/<app>/<name>/<filename>.
    let mut attached = BTreeMap::new();
    for r in resources {
        let Some((name, value)) = r.split_once('=') else {
            return cleanup(Outcome::usage(format!(
                "invalid --resource: expected name=path, got \"{r}\""
            )));
        };
        let Some(meta) = files.resources.get(name) else {
            return cleanup(Outcome::error(format!(
                "invalid --resource: unrecognized resource \"{name}\""
            )));
        };
        if meta.kind == "file" {
            let p = std::path::absolute(value)?;
            if !p.is_file() {
                return cleanup(Outcome::error(format!(
                    "open {value}: no such file or directory"
                )));
            }
            let rdir = dir.join("resources").join(&app_name).join(name);
            fs::create_dir_all(&rdir)?;
            let target = rdir.join(meta.filename.clone().unwrap_or_else(|| name.to_string()));
            let _ = fs::remove_file(&target);
            std::os::unix::fs::symlink(&p, &target)?;
            attached.insert(name.to_string(), target);
        } else {
            attached.insert(name.to_string(), PathBuf::from(value));
        }
    }
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
    let plain = |h: &str| (h.to_string(), HookCtx::default());
    let mut hooks: Vec<(String, HookCtx)> =
        ["install", "leader-elected", "config-changed", "start"]
            .into_iter()
            .map(plain)
            .collect();
    // Each container's Pebble is up: Juju says so once the charm has started.
    for c in &containers {
        hooks.push((
            format!("{c}-pebble-ready"),
            HookCtx {
                workload: Some(c.clone()),
                ..Default::default()
            },
        ));
    }
    hooks.push(plain("update-status"));
    run_hooks(store, &app_name, &hooks)?;
    Ok(Outcome {
        stderr,
        ..Default::default()
    })
}

// ---------------------------------------------------------------------------------------------
// Relations.

/// The endpoints an application offers: a local charm's from its metadata; the sandbox's own
/// charms' as their charms define them.
fn endpoints_of(model: &Model, app: &str) -> BTreeMap<String, CharmEndpoint> {
    let a = &model.apps[app];
    if let Some(l) = &a.local {
        return l.endpoints.clone();
    }
    let mut eps = BTreeMap::new();
    let provides = |iface: &str| CharmEndpoint {
        role: "provides".into(),
        interface: iface.into(),
        limit: None,
    };
    match a.charm.as_str() {
        "s3-integrator" => {
            eps.insert("s3-credentials".into(), provides("s3"));
        }
        "minio" => {
            eps.insert("object-storage".into(), provides("object-storage"));
        }
        _ => {}
    }
    for r in model.relations_of(app) {
        for e in r.ends.iter().filter(|e| e.app == app) {
            eps.entry(e.endpoint.clone()).or_insert(CharmEndpoint {
                role: if matches!(a.charm.as_str(), "s3-integrator" | "minio" | "mlmd") {
                    "provides".into()
                } else {
                    "requires".into()
                },
                interface: r.interface.clone(),
                limit: None,
            });
        }
    }
    eps
}

fn split_ep(s: &str) -> (&str, Option<&str>) {
    match s.split_once(':') {
        Some((a, e)) => (a, Some(e)),
        None => (s, None),
    }
}

/// An `app[:endpoint]` argument, split.
type End<'a> = (&'a str, Option<&'a str>);

/// The two `app[:endpoint]` arguments of `integrate` and `remove-relation`, each application in
/// the model; or juju's refusal.
fn relation_ends<'a>(
    model: &Model,
    positional: &'a [String],
) -> std::result::Result<(End<'a>, End<'a>), Outcome> {
    let [a, b] = positional else {
        return Err(Outcome::usage("a relation must involve two applications"));
    };
    let ends = (split_ep(a), split_ep(b));
    for app in [ends.0 .0, ends.1 .0] {
        if !model.apps.contains_key(app) {
            return Err(Outcome::error(format!("application \"{app}\" not found")));
        }
    }
    Ok(ends)
}

/// The provider's application databag on a new relation, as the sandbox's charms publish it.
fn provider_data(model: &Model, provider: &str, interface: &str) -> BTreeMap<String, String> {
    let app = &model.apps[provider];
    let existing = || {
        model
            .relations_of(provider)
            .filter(|r| r.interface == interface)
            .find_map(|r| r.app_data.get(provider).cloned())
            .unwrap_or_default()
    };
    match (app.charm.as_str(), interface) {
        ("s3-integrator", "s3") => {
            let old = existing();
            let mut bag = BTreeMap::new();
            for k in ["access-key", "secret-key"] {
                bag.insert(k.to_string(), old.get(k).cloned().unwrap_or_default());
            }
            for k in ["bucket", "endpoint", "path", "region", "s3-uri-style"] {
                bag.insert(k.to_string(), app.config_str(k));
            }
            bag.insert(
                "data".into(),
                format!("{{\"bucket\": \"{}\"}}", app.config_str("bucket")),
            );
            bag.retain(|_, v| !v.is_empty());
            bag
        }
        ("minio", "object-storage") => existing(),
        _ => BTreeMap::new(),
    }
}

/// `juju integrate A[:ep] B[:ep]`.
pub fn integrate(store: &ModelStore, model: &Model, positional: &[String]) -> Result<Outcome> {
    let ((a, a_ep), (b, b_ep)) = match relation_ends(model, positional) {
        Ok(ends) => ends,
        Err(refusal) => return Ok(refusal),
    };
    let key = format!("{} {}", positional[0], positional[1]);
    let (ea, eb) = (endpoints_of(model, a), endpoints_of(model, b));
    let mut found = vec![];
    for (na, pa) in &ea {
        for (nb, pb) in &eb {
            let roles_fit = matches!(
                (pa.role.as_str(), pb.role.as_str()),
                ("requires", "provides") | ("provides", "requires")
            );
            if roles_fit
                && pa.interface == pb.interface
                && a_ep.is_none_or(|e| e == na)
                && b_ep.is_none_or(|e| e == nb)
            {
                found.push((na.clone(), pa.clone(), nb.clone(), pb.clone()));
            }
        }
    }
    let (na, pa, nb, pb) = match found.len() {
        0 => {
            return Ok(Outcome::error(format!(
                "cannot add relation \"{key}\": no relations found"
            )))
        }
        1 => found.remove(0),
        _ => {
            let list: Vec<String> = found
                .iter()
                .map(|(na, _, nb, _)| format!("\"{a}:{na} {b}:{nb}\""))
                .collect();
            return Ok(Outcome::error(format!(
                "ambiguous relation: \"{key}\" could refer to {}",
                list.join("; ")
            )));
        }
    };
    let full = format!("{a}:{na} {b}:{nb}");
    let exists = model.relations.iter().any(|r| {
        r.ends.iter().any(|e| e.app == a && e.endpoint == na)
            && r.ends.iter().any(|e| e.app == b && e.endpoint == nb)
    });
    if exists {
        return Ok(Outcome::error(format!(
            "cannot add relation \"{full}\": relation {full} already exists"
        )));
    }
    for (app, ep, spec) in [(a, &na, &pa), (b, &nb, &pb)] {
        if let Some(limit) = spec.limit {
            let n = model
                .relations_of(app)
                .filter(|r| r.ends.iter().any(|e| e.app == app && &e.endpoint == ep))
                .count() as u32;
            if n >= limit {
                return Ok(Outcome::error(format!(
                    "cannot add relation \"{full}\": establishing a new relation for {app}:{ep} would exceed its maximum relation limit of {limit}"
                )));
            }
        }
    }
    let interface = pa.interface.clone();
    let (provider, requirer) = if pa.role == "provides" {
        (a, b)
    } else {
        (b, a)
    };
    let data = provider_data(model, provider, &interface);
    let (pa_ep, pb_ep) = (na.clone(), nb.clone());
    let id = store.update(|m| {
        let id = m.add_relation((a, &pa_ep), (b, &pb_ep), &interface);
        if !data.is_empty() {
            let r = m.relations.iter_mut().find(|r| r.id == id).unwrap();
            r.app_data.insert(provider.to_string(), data.clone());
        }
        Ok(id)
    })?;
    let _ = requirer;
    // The relation hooks, on each side that is a local charm.
    for (app, ep, other) in [(a, &na, b), (b, &nb, a)] {
        if model.apps[app].local.is_none() {
            continue;
        }
        let remote: Vec<String> = model.apps[other]
            .units
            .keys()
            .map(|n| format!("{other}/{n}"))
            .collect();
        let mut hooks = vec![(
            format!("{ep}-relation-created"),
            HookCtx {
                relation: Some(id),
                ..Default::default()
            },
        )];
        for u in &remote {
            for h in ["joined", "changed"] {
                hooks.push((
                    format!("{ep}-relation-{h}"),
                    HookCtx {
                        relation: Some(id),
                        remote_unit: Some(u.clone()),
                        ..Default::default()
                    },
                ));
            }
        }
        run_hooks(store, app, &hooks)?;
    }
    Ok(Outcome::default())
}

/// `juju remove-relation A[:ep] B[:ep]`: departed and broken hooks on local charms, then gone.
pub fn remove_relation(
    store: &ModelStore,
    model: &Model,
    positional: &[String],
) -> Result<Outcome> {
    let ((a, a_ep), (b, b_ep)) = match relation_ends(model, positional) {
        Ok(ends) => ends,
        Err(refusal) => return Ok(refusal),
    };
    let end_fits = |r: &crate::model::Relation, app: &str, ep: Option<&str>| {
        r.ends
            .iter()
            .any(|e| e.app == app && ep.is_none_or(|x| x == e.endpoint))
    };
    let Some(rel) = model
        .relations
        .iter()
        .find(|r| end_fits(r, a, a_ep) && end_fits(r, b, b_ep))
        .cloned()
    else {
        return Ok(Outcome::error(format!(
            "relation \"{} {}\" not found",
            positional[0], positional[1]
        )));
    };
    for (i, end) in rel.ends.iter().enumerate() {
        let other = &rel.ends[1 - i];
        if model.apps[&end.app].local.is_none() {
            continue;
        }
        let mut hooks = vec![];
        for n in model.apps[&other.app].units.keys() {
            hooks.push((
                format!("{}-relation-departed", end.endpoint),
                HookCtx {
                    relation: Some(rel.id),
                    remote_unit: Some(format!("{}/{n}", other.app)),
                    departing: true,
                    ..Default::default()
                },
            ));
        }
        hooks.push((
            format!("{}-relation-broken", end.endpoint),
            HookCtx {
                relation: Some(rel.id),
                broken: true,
                ..Default::default()
            },
        ));
        run_hooks(store, &end.app, &hooks)?;
    }
    store.update(|m| {
        m.relations.retain(|r| r.id != rel.id);
        for app in m.apps.values_mut() {
            if let Some(l) = app.local.as_mut() {
                l.unit_data.remove(&rel.id);
            }
        }
        Ok(())
    })?;
    Ok(Outcome::default())
}

/// `juju config APP k=v... [--reset k,...]` on a local charm: typed like Juju, then
/// config-changed.
pub fn set_config(
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

// ---------------------------------------------------------------------------------------------
// Secrets.

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
        Ok(id) => ok(format!("secret:{id}\n")),
        Err(e) => Outcome::error(e),
    })
}

fn find_secret<'a>(model: &'a Model, name_or_uri: &str) -> Option<&'a Secret> {
    let id = crate::hook_tools::secret_id(name_or_uri);
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
                   "created": crate::juju::since(s.created_ms), "updated": crate::juju::since(s.created_ms)}),
        );
    }
    Ok(match format {
        "json" => ok(format!("{}\n", Value::Object(m))),
        _ => ok(serde_yaml::to_string(&Value::Object(m))?),
    })
}

// ---------------------------------------------------------------------------------------------
// The controller.

/// `juju show-controller [--show-password] [--format yaml|json]`.
pub fn show_controller(model: &Model, show_password: bool, format: &str) -> Result<Outcome> {
    let mut account = json!({"user": "admin", "access": "superuser"});
    if show_password {
        account["password"] = json!(model.admin_password());
    }
    let v = json!({
        model.controller.clone(): {
            "details": {
                "uuid": model.controller_uuid(),
                "controller-uuid": model.controller_uuid(),
                "api-endpoints": [API_ENDPOINT],
                "ca-cert": model.ca_cert(),
                "cloud": model.cloud,
                "region": model.region,
                "agent-version": model.juju_version,
                "agent-git-commit": "0000000000000000000000000000000000000000",
                "controller-model-version": model.juju_version,
                "mongo-version": "",
            },
            "models": {
                model.name.clone(): {"uuid": model.uuid, "model-uuid": model.uuid, "unit-count": model.apps.values().map(|a| a.units.len()).sum::<usize>()},
            },
            "current-model": format!("admin/{}", model.name),
            "account": account,
        }
    });
    Ok(match format {
        "json" => ok(format!("{}\n", v)),
        "yaml" => ok(serde_yaml::to_string(&v)?),
        other => Outcome::usage(format!(
            "invalid value \"{other}\" for option --format: unknown format \"{other}\""
        )),
    })
}

pub const NO_CONTROLLERS: &str = "No controllers registered.\n\nPlease either create a new controller using \"juju bootstrap\" or connect to\nanother controller that you have been given access to using \"juju register\".";

/// The login of a client with its own `JUJU_DATA` (controllers.yaml, accounts.yaml), refused
/// the way Juju refuses it. `controller` is the one named by `-m CONTROLLER:MODEL`.
pub fn check_login(model: &Model, juju_data: &Path, controller: Option<&str>) -> Option<Outcome> {
    let load = |f: &str| -> Value {
        fs::read_to_string(juju_data.join(f))
            .ok()
            .and_then(|t| serde_yaml::from_str::<Value>(&t).ok())
            .unwrap_or(Value::Null)
    };
    let controllers = load("controllers.yaml");
    let name = match controller {
        Some(c) => c.to_string(),
        None => match controllers["current-controller"].as_str() {
            Some(c) if !c.is_empty() => c.to_string(),
            _ => return Some(Outcome::error(NO_CONTROLLERS)),
        },
    };
    let Some(details) = controllers["controllers"]
        .get(&name)
        .filter(|d| d.is_object())
    else {
        if controllers["controllers"]
            .as_object()
            .is_none_or(|m| m.is_empty())
        {
            return Some(Outcome::error(NO_CONTROLLERS));
        }
        return Some(Outcome::error(format!("controller {name} not found")));
    };
    let endpoints: Vec<String> = details["api-endpoints"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e.as_str().map(str::to_string))
        .collect();
    if !endpoints.iter().any(|e| e == API_ENDPOINT) {
        let addr = endpoints.first().cloned().unwrap_or_default();
        return Some(Outcome::error(format!(
            "cannot connect to API: dial tcp {addr}: connect: connection refused"
        )));
    }
    let ca = details["ca-cert"].as_str().unwrap_or_default();
    if ca.trim() != model.ca_cert().trim() {
        return Some(Outcome::error(
            "cannot connect to API: x509: certificate signed by unknown authority",
        ));
    }
    let accounts = load("accounts.yaml");
    let acct = &accounts["controllers"][&name];
    let user = acct["user"].as_str().unwrap_or_default();
    let password = acct["password"].as_str().unwrap_or_default();
    if !(user == "admin" || user == "admin@local") || password != model.admin_password() {
        return Some(Outcome::error(
            "cannot log in: invalid entity name or password (unauthorized access)",
        ));
    }
    None
}

// ---------------------------------------------------------------------------------------------
// Actions on local charms.

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

/// The options of `juju run` the sandbox reads.
#[derive(Debug, Default, Clone)]
pub struct RunOpts {
    pub format: String,
    pub wait: Option<String>,
    pub background: bool,
    pub string_args: bool,
    pub params_file: Option<String>,
}

/// `juju run UNIT... ACTION k=v...` on a local charm: validated against its actions.yaml, run
/// by `dispatch` in a background process, waited for like Juju waits.
pub fn run_cli(
    store: &ModelStore,
    model: &Model,
    positional: &[String],
    opts: &RunOpts,
) -> Result<Outcome> {
    let usage = |m: String| Ok(Outcome::usage(m));
    let units: Vec<&String> = positional
        .iter()
        .take_while(|p| p.contains('/') && !p.contains('='))
        .collect();
    let Some(action) = positional.get(units.len()) else {
        return usage("no action specified".into());
    };
    if opts.background && opts.wait.is_some() {
        return usage("cannot specify both --wait and --background".into());
    }
    let wait = match opts.wait.as_deref() {
        None => Duration::from_secs(60),
        Some(w) => match crate::juju::parse_go_duration(w) {
            Some(d) => d,
            None => {
                return usage(format!(
                    "invalid value \"{w}\" for option --wait: time: invalid duration \"{w}\""
                ))
            }
        },
    };
    let mut params = Map::new();
    if let Some(f) = &opts.params_file {
        match read_yaml(Path::new(f)) {
            Ok(Some(Value::Object(m))) => params.extend(m),
            Ok(Some(Value::Null)) => {}
            Ok(None) => {
                return Ok(Outcome::error(format!(
                    "open {f}: no such file or directory"
                )))
            }
            Ok(Some(_)) => {
                return Ok(Outcome::error(format!(
                    "params file \"{f}\" must hold a YAML map"
                )))
            }
            Err(e) => return Ok(Outcome::error(format!("{e:#}"))),
        }
    }
    for p in &positional[units.len() + 1..] {
        let Some((k, v)) = p.split_once('=') else {
            return usage(format!(
                "argument \"{p}\" must be of the form key.key.key...=value"
            ));
        };
        let v = if opts.string_args {
            json!(v)
        } else {
            yaml_value(v)
        };
        insert_dotted(&mut params, k, v);
    }
    for u in &units {
        if model.unit(u).is_none() {
            return Ok(Outcome::error(format!("unit \"{u}\" not found")));
        }
        if split_unit(u).map(|(a, _)| a) != split_unit(units[0]).map(|(a, _)| a) {
            return usage("all units must be of the same application".into());
        }
    }
    let (app_name, _) = split_unit(units[0]).unwrap();
    let local = model.apps[app_name].local.as_ref().expect("local charm");
    let Some(spec) = local.actions.get(action.as_str()) else {
        return Ok(Outcome::error(format!(
            "action \"{action}\" not defined on unit \"{}\"",
            units[0]
        )));
    };
    let schema = action_schema(spec);
    if let Err(e) = validate_params(&schema, &mut params) {
        return Ok(Outcome::error(e));
    }
    let dir = sandbox_dir(store);
    let mut tasks = vec![];
    for u in &units {
        let now = now_ms();
        let task = store.update(|m| {
            let id = m.next_task + 1;
            m.next_task += 2;
            let t = Task {
                id,
                unit: u.to_string(),
                action: action.clone(),
                params: params.clone(),
                outcome: "running".into(),
                message: String::new(),
                results: Map::new(),
                log: vec![],
                enqueued_ms: now,
                started_ms: now,
                completed_ms: u64::MAX,
                charm: true,
                log_ms: vec![],
                runner_pid: None,
            };
            m.tasks.insert(id, t.clone());
            Ok(t)
        })?;
        spawn_task(&dir, task.id)?;
        tasks.push(task);
    }
    crate::actions::client_outcome(store, &tasks, wait, opts.background, &opts.format)
}

/// Polls the model until task `id` is over or `wait` has passed (`Some(0)`: no limit; `None`:
/// do not wait). Returns the task and the time it was last read.
pub fn wait_task(store: &ModelStore, id: u64, wait: Option<Duration>) -> Result<(Task, u64)> {
    let start = now_ms();
    let deadline = match wait {
        None => start,
        Some(w) if w.is_zero() => u64::MAX,
        Some(w) => start + w.as_millis() as u64,
    };
    loop {
        let m = store.read()?;
        let now = now_ms();
        let task = m
            .tasks
            .get(&id)
            .cloned()
            .ok_or_else(|| anyhow!("task {id} not found"))?;
        if task.status_at(now) != "running" || now >= deadline {
            return Ok((task, now));
        }
        let pause = if task.charm {
            100
        } else {
            task.completed_ms.saturating_sub(now).clamp(1, 200)
        };
        std::thread::sleep(Duration::from_millis(
            pause.min(deadline.saturating_sub(now)).max(1),
        ));
    }
}

/// Starts `backup-agent-sandbox run-task` for task `id`, detached in its own session so it
/// outlives the client (as a Juju task outlives `juju run --wait`).
fn spawn_task(dir: &Path, id: u64) -> Result<()> {
    use std::os::unix::process::CommandExt;
    let exe = crate::hook_tools::sandbox_exe()?;
    fs::create_dir_all(dir.join("logs"))?;
    let log = File::create(dir.join("logs").join(format!("task-{id}.log")))?;
    let mut cmd = std::process::Command::new(exe);
    cmd.args(["run-task", "--dir"])
        .arg(dir)
        .arg(id.to_string())
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    cmd.spawn().context("starting the task runner")?;
    Ok(())
}

/// Runs task `id` of a local charm: the action's dispatch, then its results into the model.
pub fn run_task(store: &ModelStore, id: u64) -> Result<()> {
    let dir = sandbox_dir(store);
    let task = store
        .read()?
        .tasks
        .get(&id)
        .cloned()
        .ok_or_else(|| anyhow!("task {id} not found"))?;
    let (app, num) = split_unit(&task.unit).ok_or_else(|| anyhow!("bad unit {}", task.unit))?;
    let app = app.to_string();
    let _lock = unit_lock(&dir, &task.unit)?;
    let prepared = store.update(|m| {
        let mut st = hook_state(m, &app, num);
        st.action = Some(HookAction {
            name: task.action.clone(),
            id: id.to_string(),
            params: task.params.clone(),
        });
        if let Some(t) = m.tasks.get_mut(&id) {
            t.started_ms = now_ms();
            t.runner_pid = Some(std::process::id());
        }
        let local = m
            .apps
            .get_mut(&app)
            .and_then(|a| a.local.as_mut())
            .ok_or_else(|| anyhow!("application \"{app}\" is not a local charm"))?;
        *local.executing.entry(num).or_default() += 1;
        local.next_context += 1;
        Ok((st, local.dir.clone(), local.next_context))
    });
    let out = prepared.and_then(|(st, charm_dir, n)| {
        let state_file = dir
            .join("hook-contexts")
            .join(format!("{}-{n}.json", task.unit.replace('/', "-")));
        let out = st.save(&state_file).and_then(|_| {
            let opts = dispatch_options(&dir, &format!("{}-{}-{id}", task.unit, task.action))?;
            watching(store, &state_file, &app, num, Some(id), || {
                run_dispatch_with(
                    &charm_dir,
                    &format!("actions/{}", task.action),
                    &state_file,
                    &charm_env(&dir, &task.unit),
                    &opts,
                )
            })
        });
        let _ = fs::remove_file(&state_file);
        let _ = fs::remove_file(state_file.with_extension("lock"));
        out
    });
    log_dispatch(
        &dir,
        &task.unit,
        &format!("actions/{} (task {id})", task.action),
        &out,
    );
    store.update(|m| {
        if let Ok(o) = &out {
            merge(m, &app, num, &o.state);
        }
        if let Some(local) = m.apps.get_mut(&app).and_then(|a| a.local.as_mut()) {
            let e = local.executing.entry(num).or_default();
            *e = e.saturating_sub(1);
        }
        let Some(t) = m.tasks.get_mut(&id) else {
            return Ok(());
        };
        t.completed_ms = now_ms();
        match &out {
            Ok(o) => {
                let mut results = o.state.results.clone();
                results.insert("return-code".into(), json!(o.code));
                if !o.stdout.is_empty() {
                    results.insert("stdout".into(), json!(o.stdout));
                }
                if !o.stderr.is_empty() {
                    results.insert("stderr".into(), json!(o.stderr));
                }
                t.results = results;
                t.log = o.state.action_log.clone();
                t.log_ms = o.state.action_log_ms.clone();
                match (&o.state.failed, o.code) {
                    (Some(msg), _) => {
                        t.outcome = "failed".into();
                        t.message = msg.clone();
                    }
                    (None, 0) => t.outcome = "completed".into(),
                    (None, code) => {
                        t.outcome = "failed".into();
                        t.message = format!("exit status {code}");
                    }
                }
            }
            Err(e) => {
                t.outcome = "failed".into();
                t.message = format!("{e:#}");
            }
        }
        Ok(())
    })?;
    out.map(|_| ())
}

/// Workload and agent status of a local charm's unit: what its charm set, `executing` while a
/// hook or action runs.
pub fn unit_status(local: &LocalCharm, num: u32) -> (String, String, String) {
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
pub fn app_status(app: &App, local: &LocalCharm) -> (String, String) {
    if let Some(s) = &local.app_status {
        return (s.status.clone(), s.message.clone());
    }
    let leader = app.units.iter().find(|(_, u)| u.leader).map(|(n, _)| *n);
    match leader.and_then(|n| local.unit_status.get(&n)) {
        Some(s) => (s.status.clone(), s.message.clone()),
        None => ("unknown".into(), String::new()),
    }
}
