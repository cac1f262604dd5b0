//! How the juju client prints: `--format` rendering, its timestamps, and tasks as `juju run`
//! and `juju show-task` show them.

use serde_json::{json, Value};

pub use crate::go_time::dt;
use crate::go_time::go_time;
use crate::model::Task;
pub use crate::outcome::Outcome;

/// `value` in `--format json|yaml`, or the client's refusal of another format.
pub fn render(value: &Value, format: &str) -> Result<String, String> {
    match format {
        "json" => Ok(format!("{}\n", serde_json::to_string(value).unwrap())),
        "yaml" => Ok(serde_yaml::to_string(value).unwrap()),
        other => Err(format!(
            "invalid value \"{other}\" for option --format: unknown format \"{other}\""
        )),
    }
}

/// [`render`] as an outcome: the text, or the usage error.
pub fn rendered(value: &Value, format: &str) -> Outcome {
    render(value, format)
        .map(Outcome::ok)
        .unwrap_or_else(Outcome::usage)
}

/// Juju's status timestamps: `23 Nov 2026 05:20:36Z`.
pub fn since(ms: u64) -> String {
    dt(ms).format("%d %b %Y %H:%M:%SZ").to_string()
}

/// A task as `show-task` and `run` print it (not keyed by unit).
pub fn task_json(task: &Task, now: u64) -> Value {
    let status = task.status_at(now);
    let mut v = json!({"id": task.id.to_string(), "status": status, "unit": task.unit});
    let mut timing =
        json!({"enqueued": go_time(task.enqueued_ms), "started": go_time(task.started_ms)});
    if status != "running" {
        timing["completed"] = json!(go_time(task.completed_ms));
        if !task.message.is_empty() {
            v["message"] = json!(task.message);
        }
        let mut results = task.results.clone();
        results.entry("return-code").or_insert(json!(0));
        v["results"] = Value::Object(results);
    }
    // A charm's action-log lines show while it runs; a simulated task's when it is over.
    if !task.log.is_empty() && (status != "running" || task.charm) {
        v["log"] = json!(task
            .log
            .iter()
            .enumerate()
            .map(|(i, l)| format!(
                "{} {l}",
                go_time(task.log_ms.get(i).copied().unwrap_or(task.started_ms))
            ))
            .collect::<Vec<_>>());
    }
    v["timing"] = timing;
    v
}

/// The default (plain) rendering of a finished task.
pub fn task_plain(task: &Task, now: u64) -> String {
    let v = task_json(task, now);
    let results = v.get("results").cloned().unwrap_or(json!({}));
    let mut results = results.as_object().cloned().unwrap_or_default();
    results.remove("return-code");
    let body = if results.is_empty() {
        String::new()
    } else {
        serde_yaml::to_string(&Value::Object(results)).unwrap()
    };
    match task.status_at(now) {
        "failed" => format!("Action id {} failed: {}\n{}", task.id, task.message, body),
        _ => body,
    }
}
