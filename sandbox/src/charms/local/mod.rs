//! Local charms (`juju deploy ./x.charm`): each hook and action runs through the charm's real
//! `dispatch` with the sandbox's hook tools ([`crate::hook_tools`]), one at a time per unit, in
//! a hook context built from the model; what the charm did goes back into the model. Their
//! workload containers run the Pebble simulator.

mod files;
mod tasks;

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use fs2::FileExt;
use serde_json::Map;

pub use files::{read_charm, read_yaml, unpack, CharmFiles};
pub use tasks::{enqueue, run_task};

use crate::hook_tools::{
    run_dispatch_with, DispatchOptions, DispatchOutcome, HookRelation, HookState, StatusValue,
};
use crate::model::{now_ms, pod_ip, split_unit, Model, ModelStore};

/// The sandbox directory that holds the model file.
pub fn sandbox_dir(store: &ModelStore) -> PathBuf {
    store
        .path()
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

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
pub fn start_workloads(store: &ModelStore, app: &str, containers: &[String]) -> Result<()> {
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
pub fn run_hooks(store: &ModelStore, app: &str, hooks: &[(String, HookCtx)]) -> Result<()> {
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
