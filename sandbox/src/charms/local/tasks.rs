//! A local charm's actions: each task runs in a detached `run-task` process (as a Juju task
//! outlives the client that queued it), through the charm's dispatch, its results taken back
//! into the model.

use std::fs::{self, File};
use std::path::Path;

use anyhow::{anyhow, Context, Result};
use serde_json::{json, Map, Value};

use super::{
    charm_env, dispatch_options, hook_state, log_dispatch, merge, sandbox_dir, unit_lock, watching,
};
use crate::hook_tools::{run_dispatch_with, HookAction};
use crate::model::{now_ms, split_unit, ModelStore, Task};

/// Records task `action` on `unit` as running and starts its runner.
pub fn enqueue(
    store: &ModelStore,
    unit: &str,
    action: &str,
    params: &Map<String, Value>,
) -> Result<Task> {
    let now = now_ms();
    let task = store.update(|m| {
        let id = m.next_task + 1;
        m.next_task += 2;
        let t = Task {
            id,
            unit: unit.to_string(),
            action: action.to_string(),
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
    spawn_task(&sandbox_dir(store), task.id)?;
    Ok(task)
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
