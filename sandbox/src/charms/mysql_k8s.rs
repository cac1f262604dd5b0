//! The mysql-k8s charm, simulated: its actions (`get-cluster-status`, `get-primary`,
//! `create-backup`, `list-backups`, `restore`) with the rules and messages of its backups
//! library, writing and reading real objects in the S3 bucket its s3-integrator names; and its
//! answer to new S3 settings (`_on_s3_credentials_changed`), which clears the block a restore
//! leaves and, in the newer library, claims the repository.
//!
//! Source of each behaviour: canonical/mysql-k8s-operator, `lib/charms/mysql/v0/backups.py`
//! (LIBPATCH 19) and `s3_helpers.py` (LIBPATCH 13), as `interfaces.md` section 2 records them.
//! Where that file and the charm's main branch differ (main's actions.yaml still has a `force`
//! parameter on create-backup and a "Cluster is not in a healthy state" check), the sandbox
//! follows `interfaces.md`: the product must work with either, and never sends `force`.

use std::path::PathBuf;

use anyhow::{Context, Result};
use chrono::{TimeZone, Utc};
use serde_json::{json, Map, Value};

use super::{obj, Effect};
use crate::model::{App, Model};
use crate::s3::S3Target;

/// Its actions.yaml.
pub fn actions() -> Value {
    json!({
        "get-cluster-status": {"params": {"cluster-set": {"type": "boolean"}}},
        "get-primary": {},
        // No parameters (interfaces.md); no `additionalProperties` either, as in the charm's
        // actions.yaml, so Juju 3 lets unknown keys through to the charm.
        "create-backup": {},
        "list-backups": {},
        "restore": {
            "params": {"backup-id": {"type": "string"}, "restore-to-time": {"type": "string"}},
        },
    })
}

/// Performs `action` on unit `num`; `None` for an action it does not have.
pub fn perform(
    model: &Model,
    app_name: &str,
    num: u32,
    action: &str,
    params: &Map<String, Value>,
    now: u64,
) -> Result<Option<Effect>> {
    let app = &model.apps[app_name];
    Ok(Some(match action {
        "get-cluster-status" => cluster_status(model, app_name, app, now),
        "get-primary" => match app.mysql.as_ref().and_then(|m| m.primary) {
            Some(p) => Effect::ok(obj(json!({"primary": format!("{app_name}-{p}")}))),
            None => Effect::fail("Failed to get primary"),
        },
        "create-backup" => create_backup(model, app_name, app, num, params, now)?,
        "list-backups" => list_backups(model, app_name)?,
        "restore" => restore(model, app_name, app, params)?,
        _ => return Ok(None),
    }))
}

/// The maintenance message the charm shows while its action runs (the sandbox shows it for any
/// simulated charm's `create-backup` or `restore`).
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
    // `_pre_create_backup_checks`, then `_can_unit_perform_backup`, in the charm's order.
    if model.relation_on(app_name, "s3-parameters").is_none() {
        return Ok(Effect::fail("Missing relation with S3 integrator charm"));
    }
    if app.blocked.is_some() {
        // The app peer data's `s3-block-message` (a restore, or another cluster's claim).
        return Ok(Effect::fail("S3 relation is blocked for write"));
    }
    let (target, path) = match s3_params(model, app_name) {
        Ok(p) => p,
        Err(e) => return Ok(Effect::fail(e)),
    };
    let unit = &app.units[&num];
    if !App::is_ready(unit, now) {
        return Ok(Effect::fail("Unit is waiting to start or restart"));
    }
    let busy = model.tasks.values().any(|t| {
        t.action == "create-backup"
            && t.status_at(now) == "running"
            && t.unit != format!("{app_name}/{num}")
            && t.unit.split('/').next() == Some(app_name)
    });
    if busy {
        return Ok(Effect::fail("Backup already in progress on another unit"));
    }
    let primary = app.mysql.as_ref().and_then(|m| m.primary) == Some(num);
    // `planned_units() > 1`: the app's scale, not the units up now.
    if primary && app.scale > 1 {
        return Ok(Effect::fail(
            "Unit cannot perform backups as it is the cluster primary",
        ));
    }
    let _ = params;
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
    let (collecting, group_id) = app
        .mysql
        .as_ref()
        .map(|m| (m.binlogs_collecting, m.group_id.clone()))
        .unwrap_or_default();
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
        if collecting {
            // The leader's mysql-pitr-helper collector uploads binlogs as they rotate
            // (collector/collector.go): a backup's flush rotates one.
            let name = format!("binlog_{}_1_{digest}", now / 1000);
            bucket
                .put_object(key(&path, &format!("binlogs/{name}")), &data)
                .await?;
            bucket
                .put_object(
                    key(&path, &format!("binlogs/{name}-gtid-set")),
                    format!("{}:1-{}", group_id, data.len()).as_bytes(),
                )
                .await?;
        }
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
    if path.is_empty() {
        // `list_backups_in_s3_path` reads `path[-1]`: an IndexError on an empty path, which
        // the action reports like any S3 failure.
        return Ok(Effect::fail("Failed to retrieve backup ids from S3"));
    }
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
    if path.is_empty() {
        // The same `path[-1]` (interfaces.md section 2): a restore from the bucket's root
        // cannot work.
        return Ok(Effect::fail("Failed to retrieve backup ids from S3"));
    }
    let id = id.trim().trim_matches('/').to_string();
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
            if let Some(c) = a.mysql.as_mut() {
                // `_post_restore` re-creates the cluster: MySQL Shell names a new group.
                c.group_id = crate::model::new_uid();
                c.binlogs_collecting = false;
            }
        }
    });
    Ok(eff)
}

pub const CLAIMED_BLOCK: &str = "S3 repository claimed by another cluster";
const CLAIM_FILE: &str = "group_replication_id.txt";

/// `_on_s3_credentials_changed`: new S3 settings (any relation-changed that carries both
/// keys). The older library clears the block a restore left. The newer one checks the claim
/// file (`ensure_s3_compatible_group_replication_id`): a repository that another cluster's id
/// claims blocks the app; otherwise the app writes its own id there and the block clears.
pub fn s3_credentials_changed(store: &crate::model::ModelStore, app_name: &str) -> Result<()> {
    let model = store.read()?;
    let Some(cluster) = model.apps.get(app_name).and_then(|a| a.mysql.clone()) else {
        return Ok(());
    };
    let Ok((target, path)) = s3_params(&model, app_name) else {
        return Ok(());
    };
    let mut block = None;
    if cluster.claims_repository {
        let bucket = target.open()?;
        let claim = key(&path, CLAIM_FILE);
        // A missing file, or one that cannot be read, counts as unclaimed.
        let found = block_on(async {
            Ok(match bucket.get_object(&claim).await {
                Ok(r) if r.status_code() == 200 => {
                    Some(String::from_utf8_lossy(r.as_slice()).trim().to_string())
                }
                _ => None,
            })
        })?;
        match found {
            Some(other) if other != cluster.group_id => block = Some(CLAIMED_BLOCK.to_string()),
            _ => {
                block_on(async {
                    bucket
                        .put_object(&claim, cluster.group_id.as_bytes())
                        .await?;
                    Ok(())
                })
                .with_context(|| format!("{app_name}: writing {claim}"))?;
            }
        }
    }
    let name = app_name.to_string();
    store.update(move |m| {
        if let Some(a) = m.apps.get_mut(&name) {
            a.blocked = block.clone();
            if let Some(c) = a.mysql.as_mut() {
                c.binlogs_collecting = block.is_none();
            }
        }
        Ok(())
    })
}
