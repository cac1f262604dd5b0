//! `juju run`: action scheduling, parameter validation and the charms' actions — mysql-k8s
//! (`get-cluster-status`, `create-backup`, `list-backups`, `restore`) with the rules and messages
//! of its backups library, and s3-integrator's credential actions.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use chrono::{TimeZone, Utc};
use serde_json::{json, Map, Value};

use crate::charm::wait_task;
use crate::juju::{parse_go_duration, task_json, task_plain, Outcome};
use crate::model::{now_ms, split_unit, App, Model, ModelStore, Task};
use crate::s3::S3Target;

/// The action schemas of the charms in the model (as in their actions.yaml).
fn action_schema(charm: &str, action: &str) -> Option<Value> {
    let props = match (charm, action) {
        ("mysql-k8s", "get-cluster-status") => json!({"cluster-set": {"type": "boolean"}}),
        ("mysql-k8s", "get-primary") => json!({}),
        ("mysql-k8s", "create-backup") => json!({"force": {"type": "boolean"}}),
        ("mysql-k8s", "list-backups") => json!({}),
        ("mysql-k8s", "restore") => {
            json!({"backup-id": {"type": "string"}, "restore-to-time": {"type": "string"}})
        }
        ("s3-integrator", "sync-s3-credentials") => {
            return Some(json!({
                "properties": {"access-key": {"type": "string"}, "secret-key": {"type": "string"}},
                "required": ["access-key", "secret-key"],
            }))
        }
        ("s3-integrator", "get-s3-connection-info") => json!({}),
        _ => return None,
    };
    Some(json!({ "properties": props, "required": [] }))
}

/// A JSON value's type as JSON schema names it.
pub(crate) fn json_type(v: &Value) -> &'static str {
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

/// Validates like Juju's JSON-schema check, with gojsonschema's wording.
fn validate(schema: &Value, params: &Map<String, Value>) -> Result<(), String> {
    let given = serde_json::to_string(params).unwrap();
    let mut errors = vec![];
    for req in schema["required"].as_array().into_iter().flatten() {
        let req = req.as_str().unwrap_or_default();
        if !params.contains_key(req) {
            errors.push(format!(
                "(root) : \"{req}\" property is missing and required, given {given}"
            ));
        }
    }
    for (k, v) in params {
        match schema["properties"].get(k) {
            None => errors.push(format!(
                "(root) : additional property \"{k}\" is not allowed, given {given}"
            )),
            Some(p) => {
                let want = p["type"].as_str().unwrap_or("string");
                let got = json_type(v);
                if want != got && !(want == "number" && got == "integer") {
                    errors.push(format!("(root).{k} : must be of type {want}, given {v}"));
                }
            }
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(format!("validation failed: {}", errors.join("; ")))
    }
}

/// `key=value` as juju parses it: the value is YAML unless `--string-args`.
fn parse_param(s: &str) -> Result<(String, Value), String> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| format!("argument \"{s}\" must be of the form key.key.key...=value"))?;
    let value = match serde_yaml::from_str::<Value>(v) {
        Ok(Value::Bool(b)) => Value::Bool(b),
        Ok(Value::Number(n)) => Value::Number(n),
        _ => Value::String(v.to_string()),
    };
    Ok((k.to_string(), value))
}

/// Whether an action is running on the unit now.
pub fn running_on(model: &Model, unit: &str, now: u64) -> bool {
    model
        .tasks
        .values()
        .any(|t| t.unit == unit && t.status_at(now) == "running")
}

/// The maintenance message a charm shows while its action runs.
pub fn running_message(model: &Model, unit: &str, now: u64) -> Option<String> {
    let t = model
        .tasks
        .values()
        .rev()
        .find(|t| t.unit == unit && t.status_at(now) == "running")?;
    match t.action.as_str() {
        "create-backup" => Some("Running backup...".into()),
        "restore" => Some("Restoring backup...".into()),
        _ => None,
    }
}

/// What an action did: results, or the message it failed with; and the changes to the model.
struct Effect {
    results: Map<String, Value>,
    failure: Option<String>,
    log: Vec<String>,
    apply: Box<dyn FnOnce(&mut Model)>,
}

impl Effect {
    fn ok(results: Map<String, Value>) -> Self {
        Effect {
            results,
            failure: None,
            log: vec![],
            apply: Box::new(|_| {}),
        }
    }
    fn fail(msg: impl Into<String>) -> Self {
        Effect {
            results: Map::new(),
            failure: Some(msg.into()),
            log: vec![],
            apply: Box::new(|_| {}),
        }
    }
}

pub fn run_cli(
    store: &ModelStore,
    model: &Model,
    positional: &[String],
    format: &str,
    wait: Option<&str>,
    background: bool,
) -> Result<Outcome> {
    let usage = |m: String| Ok(Outcome::usage(m));
    let units: Vec<&String> = positional
        .iter()
        .take_while(|p| p.contains('/') && !p.contains('='))
        .collect();
    if units.is_empty() {
        return usage("no unit specified".into());
    }
    let Some(action) = positional.get(units.len()) else {
        return usage("no action specified".into());
    };
    if action.contains('=') || action.is_empty() {
        return usage(format!("invalid unit or action name \"{action}\""));
    }
    if background && wait.is_some() {
        return usage("cannot specify both --wait and --background".into());
    }
    let wait = match wait {
        None => Duration::from_secs(60),
        Some(w) => match parse_go_duration(w) {
            Some(d) => d,
            None => {
                return usage(format!(
                    "invalid value \"{w}\" for option --wait: time: invalid duration \"{w}\""
                ))
            }
        },
    };
    let mut params = Map::new();
    for p in &positional[units.len() + 1..] {
        match parse_param(p) {
            Ok((k, v)) => {
                params.insert(k, v);
            }
            Err(e) => return usage(e),
        }
    }
    let first_app = split_unit(units[0]).map(|(a, _)| a.to_string());
    for u in &units {
        let Some((app, _)) = split_unit(u) else {
            return usage(format!("invalid unit or action name \"{u}\""));
        };
        if Some(app.to_string()) != first_app {
            return usage("all units must be of the same application".into());
        }
        if model.unit(u).is_none() {
            return Ok(Outcome::error(format!("unit \"{u}\" not found")));
        }
    }
    let app_name = first_app.unwrap();
    let charm = model.apps[&app_name].charm.clone();
    let Some(schema) = action_schema(&charm, action) else {
        return Ok(Outcome::error(format!(
            "action \"{action}\" not defined on unit \"{}\"",
            units[0]
        )));
    };
    if let Err(e) = validate(&schema, &params) {
        return Ok(Outcome::error(e));
    }

    let mut tasks = vec![];
    for unit in &units {
        let task = enqueue(store, unit, action, &params)?;
        tasks.push(task);
    }
    client_outcome(store, &tasks, wait, background, format)
}

/// The juju client's side of `juju run` once its tasks are queued: the scheduled message with
/// `--background`; otherwise "Running operation", a wait for each task (polling the model, so a
/// charm's task and a simulated one, which shows `running` until its `completed_ms`, alike), the
/// results in `format`, and for failed tasks the error and exit code 1.
pub(crate) fn client_outcome(
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

/// Runs the action's effect now and records the task, which Juju reports as running for the
/// action's simulated duration.
fn enqueue(
    store: &ModelStore,
    unit: &str,
    action: &str,
    params: &Map<String, Value>,
) -> Result<Task> {
    // Take a one-shot fault under the lock, so two clients never both get it; the model as it
    // was then is what the action sees.
    let (fault, snapshot) = store.update(|m| {
        let hit = m.faults.fail_next_action.iter().position(|f| {
            (f.unit == unit || unit.split('/').next() == Some(f.unit.as_str()))
                && f.action.as_deref().is_none_or(|a| a == action)
        });
        let fault = hit.map(|i| m.faults.fail_next_action.remove(i).message);
        Ok((fault, m.clone()))
    })?;
    let started = now_ms();
    let effect = match fault {
        Some(message) => Effect::fail(message),
        None => perform(&snapshot, unit, action, params, started),
    };
    let Effect {
        results,
        failure,
        log,
        apply,
    } = effect;
    store.update(move |m| {
        apply(m);
        let id = m.next_task + 1;
        m.next_task += 2;
        let duration = m.timing.action_ms + m.faults.action_delay_ms;
        let task = Task {
            id,
            unit: unit.to_string(),
            action: action.to_string(),
            params: params.clone(),
            outcome: if failure.is_some() {
                "failed".into()
            } else {
                "completed".into()
            },
            message: failure.unwrap_or_default(),
            results,
            log,
            enqueued_ms: started,
            started_ms: started,
            completed_ms: started + duration,
            charm: false,
            log_ms: vec![],
            runner_pid: None,
        };
        m.tasks.insert(id, task.clone());
        Ok(task)
    })
}

fn perform(
    model: &Model,
    unit: &str,
    action: &str,
    params: &Map<String, Value>,
    now: u64,
) -> Effect {
    let (app_name, num) = split_unit(unit).expect("validated unit");
    let app = &model.apps[app_name];
    let r = match (app.charm.as_str(), action) {
        ("mysql-k8s", "get-cluster-status") => Ok(cluster_status(model, app_name, app, now)),
        ("mysql-k8s", "get-primary") => Ok(match app.mysql.as_ref().and_then(|m| m.primary) {
            Some(p) => Effect::ok(obj(json!({"primary": format!("{app_name}-{p}")}))),
            None => Effect::fail("Failed to get primary"),
        }),
        ("mysql-k8s", "create-backup") => create_backup(model, app_name, app, num, params, now),
        ("mysql-k8s", "list-backups") => list_backups(model, app_name),
        ("mysql-k8s", "restore") => restore(model, app_name, app, params),
        ("s3-integrator", "sync-s3-credentials") => Ok(sync_s3_credentials(app_name, params)),
        ("s3-integrator", "get-s3-connection-info") => Ok(Effect::ok(obj(json!({
            "bucket": app.config_str("bucket"), "endpoint": app.config_str("endpoint"),
            "path": app.config_str("path"), "region": app.config_str("region"),
            "access-key": "************", "secret-key": "************",
        })))),
        _ => Ok(Effect::fail(format!("action {action} is not implemented"))),
    };
    r.unwrap_or_else(|e| Effect::fail(format!("{e:#}")))
}

fn obj(v: Value) -> Map<String, Value> {
    v.as_object().cloned().unwrap_or_default()
}

fn member_label(app: &str, num: u32) -> String {
    format!("{app}-{num}")
}

fn cluster_status(model: &Model, app_name: &str, app: &App, now: u64) -> Effect {
    let primary = app.mysql.as_ref().and_then(|m| m.primary);
    let ns = model.namespace();
    let mut topology = Map::new();
    let mut online = 0;
    let mut primary_addr = String::new();
    for (num, u) in &app.units {
        let addr = format!(
            "{app_name}-{}.{app_name}-endpoints.{ns}.svc.cluster.local.:3306",
            u.ordinal
        );
        let ready = App::is_ready(u, now);
        if ready {
            online += 1;
        }
        let is_primary = primary == Some(*num);
        if is_primary {
            primary_addr = addr.clone();
        }
        topology.insert(
            member_label(app_name, *num),
            json!({
                "address": addr,
                "memberrole": if is_primary { "primary" } else { "secondary" },
                "mode": if !ready { "n/a" } else if is_primary { "r/w" } else { "r/o" },
                "role": "ha",
                "status": if ready { "online" } else { "recovering" },
                "version": "8.0.37",
            }),
        );
    }
    let (status, text) = if online == app.units.len() && online >= 3 {
        (
            "ok",
            "cluster is online and can tolerate up to one failure.",
        )
    } else if online == app.units.len() {
        (
            "ok_no_tolerance",
            "cluster is not tolerant to any failures.",
        )
    } else {
        (
            "ok_partial",
            "cluster is online and can tolerate up to one failure. 1 member is not active.",
        )
    };
    let id = &model.uuid[..8];
    Effect::ok(obj(json!({
        "success": "True",
        "status": {
            "clustername": format!("cluster-{id}"),
            "clusterrole": "primary",
            "defaultreplicaset": {
                "name": "default",
                "primary": primary_addr,
                "ssl": "required",
                "status": status,
                "statustext": text,
                "topology": topology,
                "topologymode": "single-primary",
            },
            "domainname": format!("cluster-set-{id}"),
            "groupinformationsourcemember": primary_addr,
        }
    })))
}

/// The S3 settings the mysql app received from s3-integrator, or the charm's failure message.
fn s3_params(model: &Model, app_name: &str) -> Result<(S3Target, String), String> {
    let Some((rel, other)) = model.relation_on(app_name, "s3-parameters") else {
        return Err("Missing relation with S3 integrator charm".into());
    };
    let bag = rel.app_data.get(&other.app).cloned().unwrap_or_default();
    let missing: Vec<String> = ["bucket", "access-key", "secret-key"]
        .iter()
        .filter(|k| bag.get(**k).is_none_or(|v| v.is_empty()))
        .map(|k| format!("'{k}'"))
        .collect();
    if !missing.is_empty() {
        return Err(format!("Missing S3 parameters: [{}]", missing.join(", ")));
    }
    let get = |k: &str| bag.get(k).cloned().unwrap_or_default();
    let endpoint = match get("endpoint") {
        e if e.is_empty() => "https://s3.amazonaws.com".to_string(),
        e => e,
    };
    Ok((
        S3Target {
            endpoint,
            bucket: get("bucket"),
            region: get("region"),
            access_key: get("access-key"),
            secret_key: get("secret-key"),
        },
        get("path").trim_matches('/').to_string(),
    ))
}

fn key(path: &str, name: &str) -> String {
    if path.is_empty() {
        name.to_string()
    } else {
        format!("{path}/{name}")
    }
}

pub fn mysql_data_file(model: &Model, app: &str) -> PathBuf {
    model.data_dir.join("mysql").join(app).join("data.db")
}

fn block_on<T>(f: impl std::future::Future<Output = Result<T>>) -> Result<T> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(f)
}

fn create_backup(
    model: &Model,
    app_name: &str,
    app: &App,
    num: u32,
    params: &Map<String, Value>,
    now: u64,
) -> Result<Effect> {
    let (target, path) = match s3_params(model, app_name) {
        Ok(p) => p,
        Err(e) => return Ok(Effect::fail(e)),
    };
    let force = params
        .get("force")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let unit = &app.units[&num];
    if !force && app.units.values().any(|u| !App::is_ready(u, now)) {
        return Ok(Effect::fail("Cluster is not in a healthy state"));
    }
    if !App::is_ready(unit, now) {
        return Ok(Effect::fail("Unit is waiting to start or restart"));
    }
    let primary = app.mysql.as_ref().and_then(|m| m.primary) == Some(num);
    if primary && app.scale > 1 && !force {
        return Ok(Effect::fail(
            "Unit cannot perform backups as it is the cluster primary",
        ));
    }
    let id = Utc
        .timestamp_millis_opt(now as i64)
        .unwrap()
        .format("%Y-%m-%dT%H:%M:%SZ")
        .to_string();
    let data = std::fs::read(mysql_data_file(model, app_name))
        .with_context(|| format!("reading the data of {app_name}"))?;
    let metadata = format!(
        "Date Backup Requested: {id}\nModel Name: {}\nApplication Name: {app_name}\nUnit Name: {app_name}/{num}\nJuju Version: {}\n",
        model.name, model.juju_version
    );
    let digest = format!("{:x}", md5::compute(&data));
    let bucket = target.open()?;
    let uploaded = block_on(async {
        bucket
            .put_object(key(&path, &format!("{id}.metadata")), metadata.as_bytes())
            .await?;
        bucket.put_object(key(&path, &id), &data).await?;
        let log = format!("Stdout:\nxtrabackup: Transaction log of lsn ({}) to ({}) was copied.\ncompleted OK!\n\nStderr:\n", data.len(), data.len());
        bucket
            .put_object(key(&path, &format!("{id}.backup.log")), log.as_bytes())
            .await?;
        bucket
            .put_object(
                key(&path, &format!("{id}.md5")),
                format!("{digest}  {id}\n").as_bytes(),
            )
            .await?;
        Ok(())
    });
    if let Err(e) = uploaded {
        tracing::warn!("create-backup upload failed: {e:#}");
        return Ok(Effect::fail("Failed to upload metadata to provided S3"));
    }
    Ok(Effect::ok(obj(json!({"backup-id": id}))))
}

/// The ids and statuses of the backups under the path, by the charm's rules.
fn compile_backups(target: &S3Target, path: &str) -> Result<Vec<(String, &'static str)>> {
    let bucket = target.open()?;
    let prefix = key(path, "");
    let listed = block_on(async { Ok(bucket.list(prefix.clone(), Some("/".into())).await?) })?;
    let names: std::collections::BTreeSet<String> = listed
        .iter()
        .flat_map(|r| r.contents.iter())
        .map(|o| o.key.strip_prefix(&prefix).unwrap_or(&o.key).to_string())
        .collect();
    let mut out = vec![];
    for n in &names {
        let Some(id) = n.strip_suffix(".metadata") else {
            continue;
        };
        if chrono::NaiveDateTime::parse_from_str(id, "%Y-%m-%dT%H:%M:%SZ").is_err() {
            continue;
        }
        let status = if names.contains(&format!("{id}.md5")) {
            "finished"
        } else if names.contains(&format!("{id}.backup.log")) {
            "failed"
        } else {
            "in progress"
        };
        out.push((id.to_string(), status));
    }
    Ok(out)
}

/// mysql-k8s's table: fixed-width columns, a dash rule as long as the header.
pub fn format_backups_table(rows: &[(String, &str)]) -> String {
    let header = format!(
        "{:<21} | {:<12} | backup-status",
        "backup-id", "backup-type"
    );
    let mut lines = vec![header.clone(), "-".repeat(header.len())];
    for (id, status) in rows {
        lines.push(format!("{id:<21} | {:<12} | {status}", "physical"));
    }
    lines.join("\n")
}

fn list_backups(model: &Model, app_name: &str) -> Result<Effect> {
    let (target, path) = match s3_params(model, app_name) {
        Ok(p) => p,
        Err(e) => return Ok(Effect::fail(e)),
    };
    match compile_backups(&target, &path) {
        Ok(rows) => Ok(Effect::ok(obj(
            json!({"backups": format_backups_table(&rows)}),
        ))),
        Err(e) => {
            let text = format!("{e:#}");
            if text.contains("NoSuchBucket") {
                Ok(Effect::fail(format!(
                    "Bucket {} does not exist",
                    target.bucket
                )))
            } else {
                Ok(Effect::fail("Failed to retrieve backup ids from S3"))
            }
        }
    }
}

pub const RESTORED_BLOCK: &str = "Move restored cluster to another S3 repository";

fn restore(
    model: &Model,
    app_name: &str,
    app: &App,
    params: &Map<String, Value>,
) -> Result<Effect> {
    if model.relation_on(app_name, "s3-parameters").is_none() {
        return Ok(Effect::fail("Missing relation with S3 integrator charm"));
    }
    let Some(id) = params
        .get("backup-id")
        .and_then(Value::as_str)
        .map(str::to_string)
    else {
        return Ok(Effect::fail("Missing backup-id to restore"));
    };
    if let Some(t) = params.get("restore-to-time").and_then(Value::as_str) {
        if t != "latest" && chrono::NaiveDateTime::parse_from_str(t, "%Y-%m-%d %H:%M:%S").is_err() {
            return Ok(Effect::fail("Bad restore-to-time format"));
        }
    }
    // mysql-k8s counts planned units: a unit still going away does not count.
    if app.scale > 1 {
        return Ok(Effect::fail(
            "Unit cannot restore backup as there are more than one units in the cluster",
        ));
    }
    let (target, path) = match s3_params(model, app_name) {
        Ok(p) => p,
        Err(e) => return Ok(Effect::fail(e)),
    };
    let bucket = target.open()?;
    let md5_key = key(&path, &format!("{id}.md5"));
    let data_key = key(&path, &id);
    let fetched = block_on(async {
        let marker = bucket.get_object(&md5_key).await;
        if marker.is_err() {
            return Ok(None);
        }
        Ok(Some(bucket.get_object(&data_key).await?.to_vec()))
    });
    let data = match fetched {
        Ok(Some(d)) => d,
        Ok(None) => return Ok(Effect::fail(format!("Invalid backup-id: {id}"))),
        Err(_) => return Ok(Effect::fail(format!("Failed to retrieve backup {id}"))),
    };
    let file = mysql_data_file(model, app_name);
    let tmp = file.with_extension("restoring");
    std::fs::write(&tmp, &data)?;
    std::fs::rename(&tmp, &file)?;
    let name = app_name.to_string();
    let mut eff = Effect::ok(obj(json!({"completed": "ok"})));
    eff.log = vec![
        "Running pre-restore operations".into(),
        "Downloading backup...".into(),
        "Restoring backup...".into(),
        "Running post-restore operations".into(),
    ];
    eff.apply = Box::new(move |m| {
        if let Some(a) = m.apps.get_mut(&name) {
            a.blocked = Some(RESTORED_BLOCK.into());
        }
    });
    Ok(eff)
}

fn sync_s3_credentials(app_name: &str, params: &Map<String, Value>) -> Effect {
    let access = params["access-key"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let secret = params["secret-key"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let name = app_name.to_string();
    let mut eff = Effect::ok(obj(json!({"ok": "Credentials successfully updated."})));
    eff.apply = Box::new(move |m| {
        for r in m
            .relations
            .iter_mut()
            .filter(|r| r.ends.iter().any(|e| e.app == name))
        {
            let bag = r.app_data.entry(name.clone()).or_default();
            bag.insert("access-key".into(), access.clone());
            bag.insert("secret-key".into(), secret.clone());
        }
    });
    eff
}
