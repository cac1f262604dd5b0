//! The charm's actions: parameters checked against actions.yaml, the library called with a
//! context built from relations and config, progress as `action-log` lines, results as flat
//! kebab-case keys, failures through `action-fail` with the next step named.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::{Map, Value};

use crate::charm::hook_tools::{HookTools, Status};
use crate::commands::backup::{self, BackupError, BackupRequest};
use crate::commands::list;
use crate::commands::prune::{self, Selection};
use crate::commands::{copy, restore};
use crate::commands::{drill, verify};
use crate::components::Component;
use crate::context::Context;
use crate::interrupt::{block_on_interruptible, runtime, Interrupt};
use crate::progress::{Event, Progress};
use crate::repository::retention::Policy;
use crate::repository::{self, Listed, Phase, RequestType};
use crate::storage::Store;
use crate::units::human_bytes;

use super::params;
use super::status::{self, Ready};
use super::{controller, relations, DispatchEnv};

/// Results to `action-set`.
pub type Results = BTreeMap<String, String>;

/// How often a running copy reports its bytes: live enough to watch, few enough to read.
const TRANSFER_EVERY: Duration = Duration::from_secs(5);

/// Runs one action: its results, or the message `action-fail` gets (with results that still
/// matter, such as the id of a failed backup).
pub fn run(
    env: &DispatchEnv,
    tools: &HookTools,
    action: &str,
    raw: &Map<String, Value>,
) -> Result<Results, (String, Results)> {
    let plain = |e: String| (e, Results::new());
    match action {
        "create-backup" => create_backup(env, tools, params::parse(action, raw).map_err(plain)?),
        "restore" => restore(env, tools, params::parse(action, raw).map_err(plain)?),
        "verify-backup" => {
            verify_backup(env, tools, params::parse(action, raw).map_err(plain)?).map_err(plain)
        }
        "list-backups" => {
            params::parse::<params::Nothing>(action, raw).map_err(plain)?;
            list_backups(env, tools).map_err(plain)
        }
        "describe-backup" => {
            let p: params::BackupId = params::parse(action, raw).map_err(plain)?;
            describe_backup(env, tools, &p.backup_id).map_err(plain)
        }
        "restore-drill" => restore_drill(env, tools, params::parse(action, raw).map_err(plain)?),
        "copy-backup" => {
            copy_backup(env, tools, params::parse(action, raw).map_err(plain)?).map_err(plain)
        }
        "prune" => {
            let p: params::Prune = params::parse(action, raw).map_err(plain)?;
            let policy = match &p.retention {
                Some(text) => Policy::parse(text).map_err(|e| plain(format!("parameter {e}")))?,
                None => ready(env, tools).map_err(plain)?.settings.retention,
            };
            forget(
                env,
                tools,
                Selection::Policy(policy),
                p.max_unused,
                p.dry_run,
                p.break_lock,
            )
            .map_err(plain)
        }
        "delete-backup" => {
            let p: params::DeleteBackup = params::parse(action, raw).map_err(plain)?;
            forget(
                env,
                tools,
                Selection::One(p.backup_id),
                None,
                p.dry_run,
                p.break_lock,
            )
            .map_err(plain)
        }
        other => Err(plain(format!(
            "unknown action {other:?}: this charm has {}",
            params::actions().join(", ")
        ))),
    }
}

fn ready(env: &DispatchEnv, tools: &HookTools) -> Result<Ready, String> {
    status::ready(&env.app, tools, None).map_err(|a| format!("cannot run: {}", a.message))
}

fn destination(ready: &Ready) -> Result<Store, String> {
    status::destination_store(&ready.destination)
}

/// Points the context at the repository `from` names.
fn repository_from(
    env: &DispatchEnv,
    tools: &HookTools,
    ctx: &mut Context,
    from: params::From,
) -> Result<(), String> {
    if from == params::From::Secondary {
        ctx.dest = status::secondary_store(&ready(env, tools)?, &env.app)?;
    }
    Ok(())
}

fn copy_backup(
    env: &DispatchEnv,
    tools: &HookTools,
    p: params::CopyBackup,
) -> Result<Results, String> {
    if let Some(id) = &p.backup_id {
        repository::parse_backup_id(id)?;
    }
    let (mut ctx, _client) = context(env, tools)?;
    ctx.tuning.break_lock = p.break_lock;
    let to = status::secondary_store(&ready(env, tools)?, &env.app)?;
    let req = copy::CopyRequest {
        backup_id: p.backup_id,
    };
    if p.dry_run {
        let plan = block(copy::plan(&ctx, &to, &req))?;
        return Ok(Results::from([
            ("dry-run".into(), "true".into()),
            ("count".into(), plan.backups.len().to_string()),
            ("plan".into(), copy::render_plan(&plan)),
        ]));
    }
    let report = busy(env, tools, "copying backups off-site", || {
        block_on_interruptible(&ctx.interrupt, copy::run(&ctx, &to, &req))
    })
    .map_err(|e| e.to_string())?
    .map_err(|e| e.to_string())?;
    if !report.failed.is_empty() {
        return Err(format!(
            "{} backup(s) not copied:\n{}",
            report.failed.len(),
            copy::render_report(&report)
        ));
    }
    Ok(Results::from([
        ("copied".into(), report.copied.len().to_string()),
        (
            "backup-ids".into(),
            report
                .copied
                .iter()
                .map(|c| c.backup_id.as_str())
                .collect::<Vec<_>>()
                .join(","),
        ),
        ("bytes-sent".into(), report.bytes_sent().to_string()),
        ("already-there".into(), report.already.len().to_string()),
        ("summary".into(), copy::render_report(&report)),
    ]))
}

/// `action-log` lines from progress events; byte counts at most every few seconds.
fn action_log(tools: &HookTools) -> Progress {
    let tools = tools.clone();
    let last: Mutex<BTreeMap<String, Instant>> = Mutex::new(BTreeMap::new());
    Progress::to(move |e: &Event| {
        if let Event::Transfer { component, .. } = e {
            let mut last = last.lock().expect("not poisoned");
            let now = Instant::now();
            if last
                .get(component)
                .is_some_and(|t| now.duration_since(*t) < TRANSFER_EVERY)
            {
                return;
            }
            last.insert(component.clone(), now);
        }
        // A lost progress line must not stop the backup.
        let _ = tools.action_log(&e.line());
    })
}

/// A full context: the unit ready, controller login, destination, MinIO's keys from our own
/// relation.
fn context(env: &DispatchEnv, tools: &HookTools) -> Result<(Context, controller::Client), String> {
    let ready = &ready(env, tools)?;
    let client = controller::connect(
        tools,
        &env.app,
        ready.settings.controller_secret.as_deref(),
        &ready.settings.model,
    )?;
    let minio = relations::minio(tools).map_err(|e| format!("object-storage relation: {e}"))?;
    let ctx = Context {
        juju: client.juju.clone(),
        names: ready.settings.names.clone(),
        dest: destination(ready)?,
        kubeconfig: None,
        tuning: ready.settings.tuning(),
        minio,
        progress: action_log(tools),
        interrupt: Interrupt::new(),
    };
    Ok((ctx, client))
}

/// The library speaks the CLI's language (`--mlmd-app`, `--force`); an operator of the charm
/// sets config and action parameters instead.
pub fn charm_terms(message: &str, app: &str) -> String {
    let mut m = message.to_string();
    for option in [
        "kfp-db-app",
        "katib-db-app",
        "metadata-writer-app",
        "mlmd-app",
        "minio-app",
        "kfp-ui-app",
        "mlmd-container",
        "minio-bucket",
        "model",
    ] {
        m = m.replace(
            &format!("--{option}"),
            &format!("`juju config {app} {option}=...`"),
        );
    }
    m.replace("--components", "components=[...]")
        .replace("--force", "force=true")
        .replace("--no-safety-backup", "no-safety-backup=true")
        .replace("--dry-run", "dry-run=true")
        .replace("--break-lock", "break-lock=true")
        .replace(
            "`backup-agent recover`",
            "a new create-backup (it recovers first)",
        )
        .replace(
            "`backup-agent list-backups`",
            &format!("`juju run {app}/0 list-backups`"),
        )
}

/// Runs short work (no quiesce, nothing to put back on a signal) to its message.
fn block<T, E: std::fmt::Display>(
    work: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, String> {
    runtime()
        .map_err(|e| e.to_string())?
        .block_on(work)
        .map_err(|e| e.to_string())
}

fn components(given: Option<Vec<Component>>, default: &[Component]) -> Vec<Component> {
    let mut c = given.unwrap_or_else(|| default.to_vec());
    c.sort();
    c.dedup();
    c
}

fn names(c: &[Component]) -> String {
    c.iter().map(|c| c.as_str()).collect::<Vec<_>>().join(",")
}

/// Sets `maintenance` for the work, and the assessed status again after it.
fn busy<T>(env: &DispatchEnv, tools: &HookTools, message: &str, work: impl FnOnce() -> T) -> T {
    let _ = tools.status_set(Status::Maintenance, message);
    let out = work();
    let a = status::assess(&env.app, tools, None);
    let _ = tools.status_set(a.status, &a.message);
    out
}

fn create_backup(
    env: &DispatchEnv,
    tools: &HookTools,
    p: params::CreateBackup,
) -> Result<Results, (String, Results)> {
    let plain = |e: String| (e, Results::new());
    let (mut ctx, _client) = context(env, tools).map_err(plain)?;
    ctx.tuning.break_lock = p.break_lock;
    let req = BackupRequest {
        label: p.label,
        components: components(p.components, &Component::ALL),
        force: p.force,
        request: RequestType::Manual,
    };
    if p.dry_run {
        let plan = block(backup::plan(&ctx, &req)).map_err(plain)?;
        return Ok(Results::from([
            ("dry-run".into(), "true".into()),
            ("components".into(), names(&req.components)),
            ("plan".into(), backup::render_plan(&plan)),
        ]));
    }
    let outcome = busy(env, tools, "creating a backup", || {
        block_on_interruptible(&ctx.interrupt, backup::run(&ctx, &req))
    })
    .map_err(|e| plain(e.to_string()))?;
    match outcome {
        Ok(report) => {
            let sf = &report.statefile;
            let mut r = statefile_results(sf);
            r.insert("summary".into(), backup::render_report(&report));
            if !report.warnings.is_empty() {
                r.insert("warnings".into(), report.warnings.join("\n"));
            }
            Ok(r)
        }
        Err(e) => {
            let r = match &e {
                BackupError::Failed { statefile, .. }
                | BackupError::NotRestored { statefile, .. } => statefile_results(statefile),
                _ => Results::new(),
            };
            Err((e.to_string(), r))
        }
    }
}

/// `prune` and `delete-backup`: the plan, or the deletes under the lock.
fn forget(
    env: &DispatchEnv,
    tools: &HookTools,
    selection: Selection,
    max_unused: Option<u8>,
    dry_run: bool,
    break_lock: bool,
) -> Result<Results, String> {
    let (mut ctx, _client) = context(env, tools)?;
    ctx.tuning.break_lock = break_lock;
    if let Some(m) = max_unused {
        ctx.tuning.packing.max_unused = m;
    }
    let plan = block(prune::plan(&ctx, &selection))?;
    let mut r = Results::from([
        ("plan".into(), prune::render_plan(&plan)),
        ("bytes-freed".into(), plan.bytes_freed.to_string()),
        ("freed".into(), human_bytes(plan.bytes_freed)),
    ]);
    if dry_run {
        r.insert("dry-run".into(), "true".into());
        r.insert(
            "forget".into(),
            plan.forget
                .iter()
                .map(|f| f.id.as_str())
                .collect::<Vec<_>>()
                .join(","),
        );
        r.insert("count".into(), plan.forget.len().to_string());
        r.insert("packs-deleted".into(), plan.packs.to_string());
        r.insert("packs-repacked".into(), plan.repack_packs.to_string());
        return Ok(r);
    }
    let what = match &selection {
        Selection::Policy(_) => "pruning backups".to_string(),
        Selection::One(id) => format!("deleting backup {id}"),
    };
    let report = busy(env, tools, &what, || {
        block_on_interruptible(&ctx.interrupt, prune::run(&ctx, &selection))
    })
    .map_err(|e| e.to_string())?
    .map_err(|e| e.to_string())?;
    r.insert("forgotten".into(), report.forgotten.join(","));
    r.insert("count".into(), report.forgotten.len().to_string());
    r.insert("bytes-freed".into(), report.bytes_freed.to_string());
    r.insert("freed".into(), human_bytes(report.bytes_freed));
    r.insert("objects-deleted".into(), report.objects_deleted.to_string());
    r.insert("summary".into(), prune::render_report(&report));
    if !report.mysql_deleted.is_empty() {
        r.insert("mysql-deleted".into(), report.mysql_deleted.join(","));
    }
    if !report.warnings.is_empty() {
        r.insert("warnings".into(), report.warnings.join("\n"));
    }
    Ok(r)
}

fn statefile_results(sf: &repository::Statefile) -> Results {
    let mut r = Results::from([
        ("backup-id".into(), sf.backup_id.clone()),
        ("phase".into(), sf.phase.as_str().into()),
        ("started".into(), sf.started_at.to_rfc3339()),
        ("components".into(), sf.requested.join(",")),
        ("size".into(), human_bytes(sf.size())),
        ("size-bytes".into(), sf.size().to_string()),
    ]);
    if !sf.label.is_empty() {
        r.insert("label".into(), sf.label.clone());
    }
    if let Some(f) = sf.finished_at {
        r.insert("finished".into(), f.to_rfc3339());
    }
    for m in &sf.components.mysql {
        r.insert(
            format!("{}-backup-id", crate::charm::hook_tools::result_key(&m.app)),
            m.backup_id.clone(),
        );
    }
    r
}

fn restore(
    env: &DispatchEnv,
    tools: &HookTools,
    p: params::Restore,
) -> Result<Results, (String, Results)> {
    let plain = |e: String| (e, Results::new());
    let (mut ctx, _client) = context(env, tools).map_err(plain)?;
    ctx.tuning.break_lock = p.break_lock;
    repository_from(env, tools, &mut ctx, p.from).map_err(plain)?;
    let req = restore::RestoreRequest {
        backup_id: p.backup_id.clone(),
        components: components(p.components, &[]),
        safety_backup: !p.no_safety_backup,
        force: p.force,
        pod_timeout: restore::POD_TIMEOUT,
    };
    if p.dry_run {
        let plan = block(restore::plan(&ctx, &req)).map_err(plain)?;
        return Ok(Results::from([
            ("dry-run".into(), "true".into()),
            ("backup-id".into(), p.backup_id),
            ("plan".into(), restore::render_plan(&plan)),
        ]));
    }
    let message = format!("restoring backup {}", p.backup_id);
    let report = busy(env, tools, &message, || {
        block_on_interruptible(&ctx.interrupt, restore::run(&ctx, &req))
    })
    .map_err(|e| plain(e.to_string()))?
    .map_err(|e| {
        (
            e.to_string(),
            Results::from([("backup-id".into(), p.backup_id.clone())]),
        )
    })?;
    let mut r = Results::from([
        ("backup-id".into(), report.backup_id.clone()),
        ("summary".into(), restore::render_report(&report)),
    ]);
    if let Some(s) = &report.safety_backup {
        r.insert("safety-backup-id".into(), s.clone());
    }
    let next: Vec<&str> = report
        .mysql
        .iter()
        .map(|m| m.next.as_str())
        .filter(|n| !n.is_empty())
        .collect();
    if !next.is_empty() {
        r.insert("next-steps".into(), next.join("\n"));
    }
    Ok(r)
}

/// The check's depth from the action's parameters; a sample without read-data is refused
/// rather than silently ignored.
fn verify_mode(p: &params::VerifyBackup) -> Result<verify::Mode, String> {
    let sample = match p.sample.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(s) => Some(verify::Sample::parse(s)?),
    };
    match (p.read_data, sample) {
        (false, None) => Ok(verify::Mode::Light),
        (false, Some(_)) => Err(
            "sample only applies to read-data: run verify-backup read-data=true sample=5% (or drop sample)"
                .into(),
        ),
        (true, s) => Ok(verify::Mode::ReadData(s.unwrap_or_default())),
    }
}

fn verify_backup(
    env: &DispatchEnv,
    tools: &HookTools,
    p: params::VerifyBackup,
) -> Result<Results, String> {
    let mode = verify_mode(&p)?;
    let ready = ready(env, tools)?;
    let store = destination(&ready)?;
    // mysql-k8s's list-backups needs the controller; without it the .md5 markers still count.
    let client = controller::connect(
        tools,
        &env.app,
        ready.settings.controller_secret.as_deref(),
        &ready.settings.model,
    );
    if let Err(e) = &client {
        let _ = tools.action_log(&format!(
            "mysql backups checked in the bucket only (not with mysql-k8s list-backups): {e}"
        ));
    }
    let spool = tempfile::tempdir().map_err(|e| format!("spool: {e}"))?;
    let v = block(verify::verify(
        &store,
        client.as_ref().ok().map(|c| &c.juju),
        &p.backup_id,
        mode,
        spool.path(),
        Default::default(),
        &action_log(tools),
    ))?;
    let report = verify::render(&v);
    if !v.passed {
        return Err(format!(
            "backup {} failed verification ({} problem(s)); restore another backup (list-backups):\n{report}",
            p.backup_id,
            v.problems.len()
        ));
    }
    let mut r = Results::from([
        ("backup-id".into(), v.backup_id.clone()),
        ("mode".into(), v.mode.as_str().into()),
        ("passed".into(), "true".into()),
        ("objects-checked".into(), v.objects_checked.to_string()),
        ("bytes-read".into(), v.bytes_read.to_string()),
        ("report".into(), report),
    ]);
    if let Some(s) = &v.sample {
        r.insert("sample".into(), s.clone());
        r.insert("blobs-read".into(), v.blobs_read.to_string());
    }
    Ok(r)
}

fn restore_drill(
    env: &DispatchEnv,
    tools: &HookTools,
    p: params::RestoreDrill,
) -> Result<Results, (String, Results)> {
    let plain = |e: String| (e, Results::new());
    let sample = match &p.sample {
        Some(s) => verify::Sample::parse(s).map_err(|e| plain(format!("parameter {e}")))?,
        None => verify::Sample::All,
    };
    let max_bytes = match &p.max_bytes {
        Some(s) => Some(
            crate::units::parse_size(s)
                .map_err(|e| plain(format!("parameter max-bytes={s:?}: {e}")))?,
        ),
        None => None,
    };
    if let Some(id) = &p.backup_id {
        repository::parse_backup_id(id).map_err(plain)?;
    }
    let (mut ctx, _client) = context(env, tools).map_err(plain)?;
    ctx.tuning.break_lock = p.break_lock;
    repository_from(env, tools, &mut ctx, p.from).map_err(plain)?;
    let req = drill::DrillRequest {
        backup_id: p.backup_id,
        pick: crate::components::mlpipeline::Pick { sample, max_bytes },
        scratch_prefix: None,
    };
    if p.dry_run {
        let plan = block(drill::plan(&ctx, &req)).map_err(plain)?;
        return Ok(Results::from([
            ("dry-run".into(), "true".into()),
            ("backup-id".into(), plan.backup_id.clone()),
            ("plan".into(), drill::render_plan(&plan)),
        ]));
    }
    let report = busy(env, tools, "drilling a restore", || {
        block_on_interruptible(&ctx.interrupt, drill::run(&ctx, &req))
    })
    .map_err(|e| plain(e.to_string()))?
    .map_err(|e| plain(e.to_string()))?;
    let text = drill::render_report(&report);
    let r = Results::from([
        ("backup-id".into(), report.backup_id.clone()),
        ("passed".into(), report.passed.to_string()),
        ("problems".into(), report.problems.total.to_string()),
        (
            "duration-seconds".into(),
            format!("{:.1}", report.duration_seconds),
        ),
        ("bytes-read".into(), report.bytes_read.to_string()),
        ("report".into(), text.clone()),
    ]);
    if !report.passed {
        return Err((
            format!(
                "the drill of backup {} FAILED ({} problem(s)): it may not restore; drill the backup before it, and run verify-backup read-data=true on both:\n{text}",
                report.backup_id, report.problems.total
            ),
            r,
        ));
    }
    Ok(r)
}

fn list_backups(env: &DispatchEnv, tools: &HookTools) -> Result<Results, String> {
    let ready = ready(env, tools)?;
    let store = destination(&ready)?;
    // With an off-site destination, both repositories and where each backup is.
    let (rows, table, warning) = match &ready.secondary {
        Some(d) => {
            let (located, warning) =
                block(list::list_both(&store, &status::destination_store(d)?))?;
            let table = list::render_located(&located);
            let rows = located.into_iter().map(|(l, _)| l).collect::<Vec<_>>();
            (rows, table, warning)
        }
        None => {
            let rows = block(repository::list(&store))?;
            let table = list::render_table(&rows);
            (rows, table, None)
        }
    };
    let latest = rows.iter().rev().find_map(|r| match r {
        Listed::Backup(s) if s.phase == Phase::Completed => Some(s.backup_id.clone()),
        _ => None,
    });
    let mut r = Results::from([
        ("count".into(), rows.len().to_string()),
        (
            "backups".into(),
            if rows.is_empty() {
                format!("no backups in {}", store.describe())
            } else {
                table
            },
        ),
    ]);
    if let Some(id) = latest {
        r.insert("latest-completed".into(), id);
    }
    if let Some(w) = warning {
        r.insert("warning".into(), w);
    }
    Ok(r)
}

fn describe_backup(env: &DispatchEnv, tools: &HookTools, id: &str) -> Result<Results, String> {
    let ready = ready(env, tools)?;
    let store = destination(&ready)?;
    let sf = block(repository::load(&store, id))?;
    let mut r = statefile_results(&sf);
    r.insert("last-drill".into(), list::drilled(&sf));
    r.insert(
        "statefile".into(),
        serde_yaml::to_string(&sf).map_err(|e| e.to_string())?,
    );
    Ok(r)
}
