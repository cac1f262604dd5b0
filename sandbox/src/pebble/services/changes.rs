//! Changes and their tasks: a `POST /v1/services` request becomes a change of `start` and
//! `stop` tasks, run stops first, whose statuses, logs and errors read like Pebble's.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::{json, Value};

use super::{rfc3339, start_order, stop_order, Counter, Daemon, Inner, Outcome};
use crate::pebble::error::ApiError;

#[derive(Debug, Clone)]
pub(super) struct Task {
    id: u64,
    kind: &'static str,
    service: String,
    status: &'static str,
    log: Vec<String>,
    error: Option<String>,
    spawn: DateTime<Utc>,
    ready: Option<DateTime<Utc>>,
}

impl Task {
    fn summary(&self) -> String {
        let verb = if self.kind == "start" {
            "Start"
        } else {
            "Stop"
        };
        format!("{verb} service {:?}", self.service)
    }
}

#[derive(Debug, Clone)]
pub(super) struct Change {
    id: u64,
    kind: String,
    summary: String,
    status: &'static str,
    tasks: Vec<Task>,
    services: Vec<String>,
    spawn: DateTime<Utc>,
    ready: Option<DateTime<Utc>>,
}

impl Change {
    fn is_ready(&self) -> bool {
        matches!(self.status, "Done" | "Error" | "Hold" | "Undone")
    }
    /// Pebble's change error: one line per failed task.
    fn err(&self) -> Option<String> {
        let lines: Vec<String> = self
            .tasks
            .iter()
            .filter_map(|t| t.error.as_ref().map(|e| format!("- {} ({e})", t.summary())))
            .collect();
        (!lines.is_empty())
            .then(|| format!("cannot perform the following tasks:\n{}", lines.join("\n")))
    }
    fn json(&self) -> Value {
        let tasks: Vec<Value> = self
            .tasks
            .iter()
            .map(|t| {
                let done = i32::from(matches!(t.status, "Done" | "Error"));
                let mut v = json!({
                    "id": t.id.to_string(), "kind": t.kind, "summary": t.summary(),
                    "status": t.status, "progress": {"label": "", "done": done, "total": 1},
                    "spawn-time": rfc3339(t.spawn),
                });
                if !t.log.is_empty() {
                    v["log"] = json!(t.log);
                }
                if let Some(r) = t.ready {
                    v["ready-time"] = json!(rfc3339(r));
                }
                v
            })
            .collect();
        let mut v = json!({
            "id": self.id.to_string(), "kind": self.kind, "summary": self.summary,
            "status": self.status, "ready": self.is_ready(), "spawn-time": rfc3339(self.spawn),
        });
        if !tasks.is_empty() {
            v["tasks"] = json!(tasks);
        }
        if let Some(e) = self.err() {
            v["err"] = json!(e);
        }
        if let Some(r) = self.ready {
            v["ready-time"] = json!(rfc3339(r));
        }
        v
    }
}

impl Daemon {
    pub fn change(&self, id: &str) -> Option<Value> {
        let g = self.lock();
        id.parse::<u64>()
            .ok()
            .and_then(|n| g.changes.get(&n))
            .map(Change::json)
    }

    /// `GET /v1/changes`: `select` is `all`, `in-progress` or `ready`; `for` a service.
    pub fn changes(&self, select: &str, service: Option<&str>) -> Vec<Value> {
        let g = self.lock();
        g.changes
            .values()
            .filter(|c| match select {
                "all" => true,
                "ready" => c.is_ready(),
                _ => !c.is_ready(),
            })
            .filter(|c| service.is_none_or(|s| c.services.iter().any(|x| x == s)))
            .map(Change::json)
            .collect()
    }

    /// Waits until change `id` is ready; `None` if it does not exist, `Some(Err(()))` when
    /// `timeout` passes first.
    pub async fn wait_change(
        &self,
        id: &str,
        timeout: Option<Duration>,
    ) -> Option<Result<Value, ()>> {
        let n = id.parse::<u64>().ok()?;
        let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
        loop {
            let notified = self.ready.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let g = self.lock();
                let c = g.changes.get(&n)?;
                if c.is_ready() {
                    return Some(Ok(c.json()));
                }
            }
            match deadline {
                Some(d) => {
                    if tokio::time::timeout_at(d, notified).await.is_err() {
                        return Some(Err(()));
                    }
                }
                None => notified.await,
            }
        }
    }

    /// `POST /v1/services`: validates like Pebble, records the change and starts it; its id.
    pub fn services_action(
        self: &Arc<Self>,
        action: &str,
        names: Vec<String>,
    ) -> Result<u64, ApiError> {
        let bad = |m: String| ApiError::bad_request(m);
        let mut g = self.lock();
        let mut names = names;
        match action {
            "replan" | "autostart" if !names.is_empty() => {
                return Err(bad(format!("{action} accepts no service names")))
            }
            "autostart" => {
                names = g
                    .plan
                    .services
                    .iter()
                    .filter(|(_, s)| s.startup == "enabled")
                    .map(|(n, _)| n.clone())
                    .collect();
                if names.is_empty() {
                    return Err(ApiError::bad_request("no default services")
                        .with_kind("no-default-services"));
                }
            }
            "replan" => {}
            _ if names.is_empty() => {
                return Err(bad(format!("must specify services for {action} action")))
            }
            _ => {}
        }
        let cannot = |e: String| bad(format!("cannot {action} services: {e}"));
        let (stops, starts, counted): (Vec<String>, Vec<String>, Vec<String>) = match action {
            "start" | "autostart" => {
                let starts = start_order(&g.plan, &names).map_err(cannot)?;
                (vec![], starts.clone(), starts)
            }
            "stop" => {
                let stops = stop_order(&g.plan, &names).map_err(cannot)?;
                (stops.clone(), vec![], stops)
            }
            "restart" => {
                let stops: Vec<String> = stop_order(&g.plan, &names)
                    .map_err(cannot)?
                    .into_iter()
                    .filter(|n| names.contains(n))
                    .collect();
                let starts = start_order(&g.plan, &names).map_err(cannot)?;
                (stops, starts.clone(), starts)
            }
            "replan" => {
                let (stops, starts) = replan(&g).map_err(cannot)?;
                let all: BTreeSet<String> = stops.iter().chain(&starts).cloned().collect();
                names = all.iter().cloned().collect();
                (stops, starts, names.clone())
            }
            _ => return Err(bad(format!("invalid action {action:?}"))),
        };
        let title = {
            let mut c = action.chars();
            c.next()
                .map(|f| f.to_uppercase().collect::<String>() + c.as_str())
                .unwrap_or_default()
        };
        let now = Utc::now();
        let id = g.next(Counter::Change);
        let summary = match counted.len() {
            _ if stops.is_empty() && starts.is_empty() => format!("{title} - no services"),
            1 => format!("{title} service {:?}", names[0]),
            n => format!("{title} service {:?} and {} more", names[0], n - 1),
        };
        let mut tasks = vec![];
        for (kind, list) in [("stop", &stops), ("start", &starts)] {
            for s in list {
                tasks.push(Task {
                    id: g.next(Counter::Task),
                    kind,
                    service: s.clone(),
                    status: "Do",
                    log: vec![],
                    error: None,
                    spawn: now,
                    ready: None,
                });
            }
        }
        let empty = tasks.is_empty();
        g.changes.insert(
            id,
            Change {
                id,
                kind: action.to_string(),
                summary,
                status: if empty { "Done" } else { "Do" },
                tasks,
                services: names,
                spawn: now,
                ready: empty.then_some(now),
            },
        );
        drop(g);
        if empty {
            self.ready.notify_waiters();
        } else {
            tokio::spawn(self.clone().run_change(id));
        }
        Ok(id)
    }

    pub(super) fn set_task(
        &self,
        change: u64,
        task: u64,
        status: &'static str,
        out: Option<Outcome>,
    ) {
        let mut g = self.lock();
        let Some(t) = g
            .changes
            .get_mut(&change)
            .and_then(|c| c.tasks.iter_mut().find(|t| t.id == task))
        else {
            return;
        };
        t.status = status;
        if let Some(o) = out {
            t.log.extend(o.log);
            t.status = if o.error.is_some() { "Error" } else { "Done" };
            t.error = o.error;
            t.ready = Some(Utc::now());
        }
    }

    /// Runs a change's tasks: the stops one after the other, then the starts together (each
    /// service is its own lane); a failed stop holds the starts.
    pub(super) async fn run_change(self: Arc<Self>, id: u64) {
        let tasks: Vec<(u64, &'static str, String)> = {
            let mut g = self.lock();
            let Some(c) = g.changes.get_mut(&id) else {
                return;
            };
            c.status = "Doing";
            c.tasks
                .iter()
                .map(|t| (t.id, t.kind, t.service.clone()))
                .collect()
        };
        let mut failed = false;
        for (tid, _, name) in tasks.iter().filter(|t| t.1 == "stop") {
            self.set_task(id, *tid, "Doing", None);
            let out = self.stop_service(name).await;
            failed |= out.error.is_some();
            self.set_task(id, *tid, "Done", Some(out));
        }
        let starts = tasks.iter().filter(|t| t.1 == "start");
        if failed {
            for (tid, _, _) in starts {
                self.set_task(id, *tid, "Hold", None);
            }
        } else {
            futures::future::join_all(starts.map(|(tid, _, name)| {
                let d = self.clone();
                async move {
                    d.set_task(id, *tid, "Doing", None);
                    let out = d.start_service(name).await;
                    d.set_task(id, *tid, "Done", Some(out));
                }
            }))
            .await;
        }
        {
            let mut g = self.lock();
            if let Some(c) = g.changes.get_mut(&id) {
                c.status = if c.tasks.iter().any(|t| t.status == "Error") {
                    "Error"
                } else {
                    "Done"
                };
                c.ready = Some(Utc::now());
                let err = c.err();
                drop(g);
                if let Some(e) = err {
                    self.log(&format!("Change {id} failed: {}", e.replace('\n', " ")));
                }
            }
        }
        self.ready.notify_waiters();
    }
}

/// What a replan does: stops the services whose configuration changed, and starts them and
/// every `startup: enabled` service.
fn replan(g: &Inner) -> Result<(Vec<String>, Vec<String>), String> {
    let mut restart = BTreeSet::new();
    for (name, svc) in &g.services {
        if g.plan.services.get(name) == Some(&svc.config) {
            continue;
        }
        restart.insert(name.clone());
    }
    let starts: Vec<String> = g
        .plan
        .services
        .iter()
        .filter(|(n, s)| restart.contains(*n) || s.startup == "enabled")
        .map(|(n, _)| n.clone())
        .collect();
    let starts = start_order(&g.plan, &starts)?;
    Ok((restart.into_iter().collect(), starts))
}
