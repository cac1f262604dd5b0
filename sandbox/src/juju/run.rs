//! The one `juju run`, for every charm the sandbox runs (the simulated ones and local charms
//! alike): the command line read and checked as the juju client does, the parameters validated
//! against the charm's action schema, the tasks queued by the charm, and the client's wait for
//! them. Also `juju show-task`, which waits the same way.

use std::time::Duration;

use anyhow::{anyhow, Result};
use serde_json::{Map, Value};

use super::args::Args;
use super::output::{rendered, task_json, task_plain, Outcome};
use super::schema::{action_schema, parse_params, validate_params};
use crate::charms;
use crate::go_time::parse_go_duration;
use crate::model::{now_ms, split_unit, Model, ModelStore, Task};

/// The options of `juju run` the sandbox reads.
#[derive(Debug, Default, Clone)]
pub struct RunOpts {
    pub format: String,
    pub wait: Option<String>,
    pub background: bool,
    pub string_args: bool,
    pub params_file: Option<String>,
}

impl RunOpts {
    pub fn from_args(args: &Args) -> RunOpts {
        RunOpts {
            format: args.format("plain"),
            wait: args.flags.get("wait").cloned(),
            background: args.flags.contains_key("background"),
            string_args: args.flags.contains_key("string-args"),
            params_file: args.flags.get("params").cloned(),
        }
    }
}

/// `--wait` as Go reads it, or the client's usage error.
fn parse_wait(w: &str) -> Result<Duration, Outcome> {
    parse_go_duration(w).ok_or_else(|| {
        Outcome::usage(format!(
            "invalid value \"{w}\" for option --wait: time: invalid duration \"{w}\""
        ))
    })
}

/// `juju run UNIT... ACTION [key=value...]`: checked, validated against the action's schema,
/// queued by the unit's charm, and waited for like Juju waits.
pub fn run(
    store: &ModelStore,
    model: &Model,
    positional: &[String],
    opts: &RunOpts,
) -> Result<Outcome> {
    let usage = |m: String| Ok(Outcome::usage(m));
    // `<app>/leader` names the application's leader unit, as Juju 3 resolves it.
    let resolved: Vec<String> = positional
        .iter()
        .take_while(|p| p.contains('/') && !p.contains('='))
        .map(|u| match u.strip_suffix("/leader") {
            Some(app) => model
                .apps
                .get(app)
                .and_then(|a| a.units.iter().find(|(_, u)| u.leader))
                .map(|(n, _)| format!("{app}/{n}"))
                .unwrap_or_else(|| u.clone()),
            None => u.clone(),
        })
        .collect();
    let units: Vec<&String> = resolved.iter().collect();
    if units.is_empty() {
        return usage("no unit specified".into());
    }
    let Some(action) = positional.get(units.len()) else {
        return usage("no action specified".into());
    };
    if action.contains('=') || action.is_empty() {
        return usage(format!("invalid unit or action name \"{action}\""));
    }
    if opts.background && opts.wait.is_some() {
        return usage("cannot specify both --wait and --background".into());
    }
    let wait = match opts.wait.as_deref().map(parse_wait) {
        None => Duration::from_secs(60),
        Some(Ok(d)) => d,
        Some(Err(refusal)) => return Ok(refusal),
    };
    let args = &positional[units.len() + 1..];
    let mut params = match parse_params(opts.params_file.as_deref(), args, opts.string_args) {
        Ok(p) => p,
        Err(refusal) => return Ok(refusal),
    };
    let app_name = match one_application(model, &units) {
        Ok(app) => app,
        Err(refusal) => return Ok(refusal),
    };
    let Some(spec) = charms::action_spec(model, app_name, action) else {
        return Ok(Outcome::error(format!(
            "action \"{action}\" not defined on unit \"{}\"",
            units[0]
        )));
    };
    if let Err(e) = validate_params(&action_schema(&spec), &mut params) {
        return Ok(Outcome::error(e));
    }
    let mut tasks = vec![];
    for unit in &units {
        tasks.push(charms::start_action(store, model, unit, action, &params)?);
    }
    client_outcome(store, &tasks, wait, opts.background, &opts.format)
}

/// The application of the units named, all of one application and each in the model; or the
/// client's refusal.
fn one_application<'a>(model: &Model, units: &[&'a String]) -> Result<&'a str, Outcome> {
    let first = split_unit(units[0]).map(|(a, _)| a);
    for u in units {
        let Some((app, _)) = split_unit(u) else {
            return Err(Outcome::usage(format!(
                "invalid unit or action name \"{u}\""
            )));
        };
        if Some(app) != first {
            return Err(Outcome::usage("all units must be of the same application"));
        }
        if model.unit(u).is_none() {
            return Err(Outcome::error(format!("unit \"{u}\" not found")));
        }
    }
    // The loop refused a first unit that is not `app/N`.
    Ok(first.expect("a valid first unit"))
}

/// The juju client's side of `juju run` once its tasks are queued: the scheduled message with
/// `--background`; otherwise "Running operation", a wait for each task (polling the model, so a
/// charm's task and a simulated one, which shows `running` until its `completed_ms`, alike), the
/// results in `format`, and for failed tasks the error and exit code 1.
fn client_outcome(
    store: &ModelStore,
    tasks: &[Task],
    wait: Duration,
    background: bool,
    format: &str,
) -> Result<Outcome> {
    let op = tasks[0].id - 1;
    let mut stderr = String::new();
    if background {
        stderr.push_str(&format!(
            "Scheduled operation {op} with task {}\nCheck operation status with 'juju show-operation {op}'\nCheck task status with 'juju show-task {}'\n",
            tasks[0].id, tasks[0].id
        ));
        return Ok(Outcome {
            stderr,
            ..Default::default()
        });
    }
    stderr.push_str(&format!(
        "Running operation {op} with {} task{}\n",
        tasks.len(),
        if tasks.len() == 1 { "" } else { "s" }
    ));
    for t in tasks {
        stderr.push_str(&format!(
            "  - task {} on unit-{}\n",
            t.id,
            t.unit.replace('/', "-")
        ));
    }
    stderr.push('\n');
    let mut done = vec![];
    let mut now = now_ms();
    for t in tasks {
        stderr.push_str(&format!("Waiting for task {}...\n", t.id));
        let (task, at) = wait_task(store, t.id, Some(wait))?;
        now = at;
        if task.status_at(now) == "running" {
            stderr.push_str(&format!(
                "ERROR timed out waiting for results from: unit {}\n",
                t.unit
            ));
            return Ok(Outcome {
                stderr,
                code: 1,
                ..Default::default()
            });
        }
        done.push(task);
    }
    let stdout = match format {
        "plain" => done.iter().map(|t| task_plain(t, now)).collect::<String>(),
        "json" | "yaml" => {
            let mut m = Map::new();
            for t in &done {
                m.insert(t.unit.clone(), task_json(t, now));
            }
            if format == "json" {
                format!("{}\n", Value::Object(m))
            } else {
                serde_yaml::to_string(&Value::Object(m))?
            }
        }
        other => {
            return Ok(Outcome::usage(format!(
                "invalid value \"{other}\" for option --format: unknown format \"{other}\""
            )))
        }
    };
    // A failed task makes the client exit non-zero, with "task failed" on stderr.
    let failed: Vec<&Task> = done
        .iter()
        .filter(|t| t.status_at(now) == "failed")
        .collect();
    let code = if failed.is_empty() {
        0
    } else {
        let plural = failed.len() > 1;
        stderr.push_str(&format!(
            "ERROR the following task{} failed:\n",
            if plural { "s" } else { "" }
        ));
        for t in &failed {
            // A charm's action reports its exit code; a simulated one has none (0).
            stderr.push_str(&format!(
                " - id \"{}\" with return code {}\n",
                t.id,
                t.results
                    .get("return-code")
                    .and_then(Value::as_i64)
                    .unwrap_or(0)
            ));
        }
        stderr.push_str(&format!(
            "\nuse 'juju show-task' to inspect the failure{}\n",
            if plural { "s" } else { "" }
        ));
        1
    };
    Ok(Outcome {
        stdout,
        stderr,
        code,
    })
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

pub fn show_task(store: &ModelStore, args: &Args) -> Result<Outcome> {
    let Some(id) = args.positional.first() else {
        return Ok(Outcome::usage("no task ID specified"));
    };
    let Ok(id) = id.parse::<u64>() else {
        return Ok(Outcome::usage(format!("task ID \"{id}\" not valid")));
    };
    let wait = match args.flags.get("wait").map(|w| parse_wait(w)) {
        None => None,
        Some(Ok(d)) => Some(d),
        Some(Err(refusal)) => return Ok(refusal),
    };
    let model = store.read()?;
    if !model.tasks.contains_key(&id) {
        return Ok(Outcome::error(format!("task {id} not found")));
    }
    let (task, now) = wait_task(store, id, wait)?;
    if task.status_at(now) == "running" && wait.is_some() {
        return Ok(Outcome::error(format!(
            "timed out waiting for results from: task {id}"
        )));
    }
    let format = args.format("plain");
    if format == "plain" {
        return Ok(Outcome::ok(task_plain(&task, now)));
    }
    Ok(rendered(&task_json(&task, now), &format))
}
