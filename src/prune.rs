//! Forgetting backups: `prune` (a retention policy) and `delete-backup` (one backup), with the
//! same rules for what else goes.
//!
//! Deletes are ordered so that a prune killed at any point leaves every kept backup whole: a
//! forgotten backup's mysql-k8s backups go first (its record still names them, so a re-run
//! finishes the job), then its statefile (from then on it is not listed), then its other
//! objects, then objects of backups that no longer have a statefile, and last the blobs that
//! no kept backup's manifest names. Nothing a kept backup references is ever in a delete list,
//! and the plan is made under the repository lock, so no run can add references meanwhile.

use std::collections::{BTreeMap, BTreeSet};

use futures::{StreamExt, TryStreamExt};
use serde::Serialize;

use crate::backup::Context;
use crate::catalog::{self, CatalogError, MysqlCapture, Phase, Statefile};
use crate::mlpipeline::Manifest;
use crate::mysql;
use crate::recovery::{self, RecoveryError};
use crate::retention::{self, Candidate, Decision, Policy};
use crate::retry::retry;
use crate::store::{ObjectInfo, StoreError};

/// What to forget.
#[derive(Debug, Clone)]
pub enum Selection {
    /// Whatever the policy does not keep.
    Policy(Policy),
    /// One backup, by id (`delete-backup`).
    One(String),
}

impl Selection {
    fn operation(&self) -> String {
        match self {
            Selection::Policy(_) => "prune".into(),
            Selection::One(id) => format!("delete-backup {id}"),
        }
    }
}

/// One backup to forget.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct Forget {
    pub id: String,
    pub phase: String,
    pub label: String,
    pub started_at: chrono::DateTime<chrono::Utc>,
    /// Its own objects (statefile, manifest, MLMD dump) and their bytes.
    pub objects: usize,
    pub bytes: u64,
    /// mysql-k8s backups only it names.
    pub mysql: Vec<MysqlCapture>,
    #[serde(skip)]
    keys: Vec<String>,
}

/// Objects of a backup directory without a statefile, and the mysql-k8s backups its
/// tombstone says are still to delete.
#[derive(Debug, Clone)]
struct Leftover {
    id: String,
    keys: Vec<(String, u64)>,
    mysql: Vec<MysqlCapture>,
}

/// Written before a backup's statefile is deleted, deleted last: names what is still to go
/// (its mysql-k8s backups live in another bucket), so an interrupted forget is finished by
/// the next prune rather than leaked.
pub fn tombstone_key(id: &str) -> String {
    format!("{}{id}/forgetting.json", catalog::backups_prefix())
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct PrunePlan {
    /// `keep-daily=7,...` or `delete-backup ID`.
    pub selection: String,
    /// Every backup, newest first, with why it is kept.
    pub decisions: Vec<Decision>,
    pub forget: Vec<Forget>,
    /// Objects under `backups/<id>/` with no statefile beside them: what an interrupted
    /// forget or a run killed before its first record left.
    pub leftover_objects: usize,
    pub leftover_bytes: u64,
    /// Blobs no kept backup names.
    pub blobs: usize,
    pub blob_bytes: u64,
    pub bytes_freed: u64,
    pub warnings: Vec<String>,
    #[serde(skip)]
    leftovers: Vec<Leftover>,
    #[serde(skip)]
    blob_keys: Vec<(String, u64)>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct PruneReport {
    pub plan: PrunePlan,
    /// The ids actually forgotten.
    pub forgotten: Vec<String>,
    pub objects_deleted: u64,
    pub bytes_freed: u64,
    pub mysql_deleted: Vec<String>,
    pub recovered: recovery::Recovered,
    pub warnings: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum PruneError {
    #[error("no retention policy was given, so prune would forget nothing: give at least one of --keep-last, --keep-daily, --keep-weekly, --keep-monthly, --keep-within (or the charm's `retention` config)")]
    NoPolicy,
    #[error("{0}")]
    Catalog(#[from] CatalogError),
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("{0}")]
    Lock(Box<RecoveryError>),
    #[error("backup {id} is {phase}: its run has not ended. If that run is gone, `backup-agent recover` marks it failed")]
    Running { id: String, phase: String },
    #[error("{what} stopped: {reason}. What was deleted is consistent: every kept backup is whole, and running it again finishes the job")]
    Interrupted { what: String, reason: String },
}

fn dir_of(key: &str) -> Option<&str> {
    let rest = key.strip_prefix(&catalog::backups_prefix())?;
    rest.split_once('/').map(|(id, _)| id)
}

/// Makes the plan: reads every statefile and the manifests of what stays.
pub async fn plan(ctx: &Context, selection: &Selection) -> Result<PrunePlan, PruneError> {
    let store = &ctx.dest;
    let objects = store.list(&format!("{}/", catalog::REPO)).await?;
    let mut by_dir: BTreeMap<String, Vec<&ObjectInfo>> = BTreeMap::new();
    for o in &objects {
        if let Some(id) = dir_of(&o.key) {
            by_dir.entry(id.to_string()).or_default().push(o);
        }
    }
    let mut warnings = vec![];
    let mut backups: Vec<Statefile> = vec![];
    let mut unreadable: Vec<String> = vec![];
    for (id, objs) in &by_dir {
        let key = catalog::statefile_key(id);
        if !objs.iter().any(|o| o.key == key) {
            continue;
        }
        let bytes = retry(crate::retry::ATTEMPTS, &key, || store.get_bytes(&key)).await?;
        match Statefile::parse(&key, &bytes) {
            Ok(sf) => backups.push(sf),
            Err(e) => {
                warnings.push(format!(
                    "backup {id} is kept: its statefile cannot be read ({e})"
                ));
                unreadable.push(id.clone());
            }
        }
    }

    let decisions = match selection {
        Selection::Policy(p) => {
            if p.is_empty() {
                return Err(PruneError::NoPolicy);
            }
            let candidates: Vec<Candidate> = backups
                .iter()
                .map(|b| Candidate {
                    id: b.backup_id.clone(),
                    time: b.started_at,
                    phase: b.phase,
                })
                .collect();
            retention::apply(p, &candidates)
        }
        Selection::One(id) => {
            if !catalog::is_backup_id(id) {
                return Err(CatalogError::BadId { id: id.clone() }.into());
            }
            // Read above with every other statefile (an unreadable one is kept, not deleted).
            let sf = backups.iter().find(|b| b.backup_id == *id).ok_or_else(|| {
                CatalogError::NoSuchBackup {
                    id: id.clone(),
                    store: store.describe(),
                }
            })?;
            if !matches!(
                sf.phase,
                Phase::Completed | Phase::Failed | Phase::PartiallyFailed
            ) {
                return Err(PruneError::Running {
                    id: id.clone(),
                    phase: sf.phase.as_str().into(),
                });
            }
            let newest_completed = backups
                .iter()
                .filter(|b| b.phase == Phase::Completed)
                .max_by_key(|b| (b.started_at, b.backup_id.clone()))
                .map(|b| b.backup_id.clone());
            if newest_completed.as_deref() == Some(id.as_str()) {
                warnings.push(format!(
                    "{id} is the newest completed backup: after this, the newest one to restore is older"
                ));
            }
            let mut sorted: Vec<&Statefile> = backups.iter().collect();
            sorted.sort_by(|a, b| (b.started_at, &b.backup_id).cmp(&(a.started_at, &a.backup_id)));
            sorted
                .iter()
                .map(|b| Decision {
                    id: b.backup_id.clone(),
                    keep: b.backup_id != *id,
                    reasons: if b.backup_id == *id {
                        vec![]
                    } else {
                        vec!["not selected".into()]
                    },
                })
                .collect()
        }
    };
    let forgotten: BTreeSet<&str> = decisions
        .iter()
        .filter(|d| !d.keep)
        .map(|d| d.id.as_str())
        .collect();

    // What stays references blobs and mysql backups; every manifest of what stays is read.
    let mut referenced: BTreeSet<String> = BTreeSet::new();
    let mut kept_mysql: BTreeSet<(String, String)> = BTreeSet::new();
    let mut gc_blocked: Option<String> = None;
    // A manifest a kept backup's statefile names must be read, listed or not: missing or
    // unreadable, no blob is deleted this time.
    let manifest_blobs = |key: String| async move {
        let bytes = retry(crate::retry::ATTEMPTS, &key, || store.get_bytes(&key)).await?;
        Manifest::parse(&key, &bytes)
            .map(|m| {
                m.entries
                    .iter()
                    .map(|e| catalog::blob_key(&e.sha256))
                    .collect::<BTreeSet<_>>()
            })
            .map_err(|detail| StoreError::Fatal {
                op: "read",
                key: key.clone(),
                detail,
            })
    };
    for b in backups
        .iter()
        .filter(|b| !forgotten.contains(b.backup_id.as_str()))
    {
        if !matches!(
            b.phase,
            Phase::Completed | Phase::Failed | Phase::PartiallyFailed
        ) {
            gc_blocked = Some(format!(
                "backup {} is {}: its blobs may not be in a manifest yet",
                b.backup_id,
                b.phase.as_str()
            ));
        }
        for m in &b.components.mysql {
            kept_mysql.insert((m.app.clone(), m.backup_id.clone()));
        }
        if let Some(cap) = &b.components.mlpipeline {
            match manifest_blobs(cap.manifest_key.clone()).await {
                Ok(set) => referenced.extend(set),
                Err(e) => {
                    gc_blocked = Some(format!("the manifest of kept backup {}: {e}", b.backup_id))
                }
            }
        }
    }
    for id in &unreadable {
        let key = catalog::manifest_key(id);
        if objects.iter().any(|o| o.key == key) {
            match manifest_blobs(key).await {
                Ok(set) => referenced.extend(set),
                Err(e) => gc_blocked = Some(format!("the manifest of backup {id}: {e}")),
            }
        }
    }

    let mut forget = vec![];
    for b in backups
        .iter()
        .filter(|b| forgotten.contains(b.backup_id.as_str()))
    {
        let objs = by_dir.get(&b.backup_id).cloned().unwrap_or_default();
        // The statefile first: once it is gone the backup is forgotten.
        let statefile = catalog::statefile_key(&b.backup_id);
        let mut keys: Vec<String> = vec![statefile.clone()];
        keys.extend(
            objs.iter()
                .map(|o| o.key.clone())
                .filter(|k| *k != statefile),
        );
        forget.push(Forget {
            id: b.backup_id.clone(),
            phase: b.phase.as_str().into(),
            label: b.label.clone(),
            started_at: b.started_at,
            objects: objs.len(),
            bytes: objs.iter().map(|o| o.size).sum(),
            mysql: b
                .components
                .mysql
                .iter()
                .filter(|m| !kept_mysql.contains(&(m.app.clone(), m.backup_id.clone())))
                .cloned()
                .collect(),
            keys,
        });
    }
    forget.sort_by(|a, b| a.id.cmp(&b.id));

    let with_statefile: BTreeSet<&str> = by_dir
        .iter()
        .filter(|(id, objs)| {
            let key = catalog::statefile_key(id);
            objs.iter().any(|o| o.key == key)
        })
        .map(|(id, _)| id.as_str())
        .collect();
    let mut leftovers: Vec<Leftover> = vec![];
    for (id, objs) in by_dir
        .iter()
        .filter(|(id, _)| !with_statefile.contains(id.as_str()))
    {
        let tomb = tombstone_key(id);
        let mysql = if objs.iter().any(|o| o.key == tomb) {
            let bytes = retry(crate::retry::ATTEMPTS, &tomb, || store.get_bytes(&tomb)).await?;
            match serde_json::from_slice::<serde_json::Value>(&bytes)
                .ok()
                .and_then(|v| serde_json::from_value::<Vec<MysqlCapture>>(v["mysql"].clone()).ok())
            {
                Some(m) => m,
                None => {
                    warnings.push(format!(
                        "{tomb} cannot be read: its directory is left as it is"
                    ));
                    continue;
                }
            }
        } else {
            vec![]
        };
        // The tombstone last.
        let mut keys: Vec<(String, u64)> = objs
            .iter()
            .filter(|o| o.key != tomb)
            .map(|o| (o.key.clone(), o.size))
            .collect();
        keys.extend(
            objs.iter()
                .filter(|o| o.key == tomb)
                .map(|o| (o.key.clone(), o.size)),
        );
        leftovers.push(Leftover {
            id: id.clone(),
            keys,
            mysql,
        });
    }

    let blob_prefix = format!("{}/blobs/", catalog::REPO);
    let blob_keys: Vec<(String, u64)> = if let Some(why) = &gc_blocked {
        warnings.push(format!("no blob is deleted this time: {why}"));
        vec![]
    } else {
        objects
            .iter()
            .filter(|o| o.key.starts_with(&blob_prefix) && !referenced.contains(&o.key))
            .map(|o| (o.key.clone(), o.size))
            .collect()
    };
    let blob_bytes = blob_keys.iter().map(|b| b.1).sum();
    let leftover_bytes = leftovers
        .iter()
        .flat_map(|l| l.keys.iter().map(|k| k.1))
        .sum();
    let bytes_freed = forget.iter().map(|f| f.bytes).sum::<u64>() + leftover_bytes + blob_bytes;
    Ok(PrunePlan {
        selection: match selection {
            Selection::Policy(p) => p.to_string(),
            Selection::One(id) => format!("delete-backup {id}"),
        },
        decisions,
        forget,
        leftover_objects: leftovers.iter().map(|l| l.keys.len()).sum(),
        leftover_bytes,
        blobs: blob_keys.len(),
        blob_bytes,
        bytes_freed,
        warnings,
        leftovers,
        blob_keys,
    })
}

/// Plans under the lock (after repairing what dead runs left) and deletes.
pub async fn run(ctx: &Context, selection: &Selection) -> Result<PruneReport, PruneError> {
    let (lock, recovered) = recovery::lock_and_recover(ctx, &selection.operation())
        .await
        .map_err(|e| PruneError::Lock(Box::new(e)))?;
    let result = async {
        let plan = plan(ctx, selection).await?;
        apply(ctx, plan, recovered, &lock).await
    }
    .await;
    if let Err(e) = lock.release().await {
        ctx.progress
            .warn(format!("releasing the repository lock: {e}"));
    }
    result
}

async fn delete_all(
    ctx: &Context,
    keys: Vec<(String, u64)>,
    what: &str,
) -> Result<(u64, u64), PruneError> {
    let store = &ctx.dest;
    let total = keys.len() as u64;
    let done = std::sync::atomic::AtomicU64::new(0);
    let bytes = std::sync::atomic::AtomicU64::new(0);
    let stop = ctx.interrupt.clone();
    futures::stream::iter(keys)
        .map(|(key, size)| {
            let (done, bytes, stop) = (&done, &bytes, &stop);
            async move {
                if let Some(reason) = stop.reason() {
                    return Err(PruneError::Interrupted {
                        what: format!("deleting {what}"),
                        reason,
                    });
                }
                retry(crate::retry::ATTEMPTS, &key, || store.delete(&key)).await?;
                bytes.fetch_add(size, std::sync::atomic::Ordering::Relaxed);
                let n = done.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
                if n % 100 == 0 || n == total {
                    ctx.progress.emit(crate::progress::Event::Transfer {
                        component: what.to_string(),
                        done_bytes: bytes.load(std::sync::atomic::Ordering::Relaxed),
                        total_bytes: None,
                        done_objects: n,
                        total_objects: Some(total),
                    });
                }
                Ok::<(), PruneError>(())
            }
        })
        .buffer_unordered(ctx.tuning.transfers.max(1))
        .try_collect::<Vec<()>>()
        .await?;
    Ok((done.into_inner(), bytes.into_inner()))
}

/// Deletes a mysql-k8s backup's objects (`<id>`, `<id>.md5`, `<id>.metadata`, ...) from its
/// own bucket, found through the app's s3-integrator relation. The `.md5` marker goes first:
/// without it mysql-k8s no longer calls the backup finished.
async fn delete_mysql(ctx: &Context, m: &MysqlCapture) -> Result<usize, String> {
    let (store, objects) = mysql::capture_objects(&ctx.juju, m).await?;
    let mut keys: Vec<String> = objects.into_iter().map(|o| o.key).collect();
    // The marker first: without it mysql-k8s no longer calls the backup finished.
    keys.sort_by_key(|k| !k.ends_with(".md5"));
    for k in &keys {
        retry(crate::retry::ATTEMPTS, k, || store.delete(k))
            .await
            .map_err(|e| e.to_string())?;
    }
    Ok(keys.len())
}

/// Deletes a forgotten backup's mysql-k8s backups; a warning for each that could not go (the
/// tombstone stays, and the next prune tries again).
async fn forget_mysql(
    ctx: &Context,
    id: &str,
    mysql: &[MysqlCapture],
    deleted: &mut Vec<String>,
    warnings: &mut Vec<String>,
) -> bool {
    let mut all = true;
    for m in mysql {
        ctx.progress.step(
            "forget",
            format!(
                "deleting mysql-k8s backup {} of {} ({id})",
                m.backup_id, m.app
            ),
        );
        match delete_mysql(ctx, m).await {
            Ok(0) => warnings.push(format!(
                "mysql-k8s backup {} of {} was not found at {} (already gone?)",
                m.backup_id, m.app, m.location
            )),
            Ok(_) => deleted.push(format!("{} {}", m.app, m.backup_id)),
            Err(e) => {
                warnings.push(format!(
                    "mysql-k8s backup {} of {} could not be deleted ({e}); the next prune tries again",
                    m.backup_id, m.app
                ));
                all = false;
            }
        }
    }
    all
}

/// Deletes what the plan names, in the safe order; `lock` is checked before the blobs.
pub async fn apply(
    ctx: &Context,
    mut plan: PrunePlan,
    recovered: recovery::Recovered,
    lock: &crate::lease::Lease,
) -> Result<PruneReport, PruneError> {
    let p = &ctx.progress;
    let mut warnings = vec![];
    let mut mysql_deleted = vec![];
    let mut objects_deleted = 0;
    let mut bytes_freed = 0;
    let mut forgotten = vec![];
    let stopped = |what: &str| {
        ctx.interrupt
            .reason()
            .map(|reason| PruneError::Interrupted {
                what: what.into(),
                reason,
            })
    };
    for f in &plan.forget {
        if let Some(e) = stopped("forgetting backups") {
            return Err(e);
        }
        p.step("forget", format!("forgetting backup {}", f.id));
        let tomb = tombstone_key(&f.id);
        let body = serde_json::to_vec_pretty(&serde_json::json!({
            "backup-id": f.id,
            "mysql": f.mysql,
        }))
        .expect("tombstone serializes");
        retry(crate::retry::ATTEMPTS, &tomb, || {
            ctx.dest.put_bytes(&tomb, &body, "application/json")
        })
        .await?;
        // Statefile first (f.keys starts with it): from here on the backup is forgotten.
        for key in &f.keys {
            retry(crate::retry::ATTEMPTS, key, || ctx.dest.delete(key)).await?;
            objects_deleted += 1;
        }
        bytes_freed += f.bytes;
        if forget_mysql(ctx, &f.id, &f.mysql, &mut mysql_deleted, &mut warnings).await {
            retry(crate::retry::ATTEMPTS, &tomb, || ctx.dest.delete(&tomb)).await?;
        }
        forgotten.push(f.id.clone());
    }
    for l in std::mem::take(&mut plan.leftovers) {
        if let Some(e) = stopped("deleting leftovers") {
            return Err(e);
        }
        p.step(
            "forget",
            format!(
                "finishing the forgetting of {} ({} objects left)",
                l.id,
                l.keys.len()
            ),
        );
        if !forget_mysql(ctx, &l.id, &l.mysql, &mut mysql_deleted, &mut warnings).await {
            continue;
        }
        for (key, size) in &l.keys {
            retry(crate::retry::ATTEMPTS, key, || ctx.dest.delete(key)).await?;
            objects_deleted += 1;
            bytes_freed += size;
        }
    }
    if !plan.blob_keys.is_empty() {
        // Never beside another holder: a backup running under a lock we lost could be relying
        // on a blob we are about to delete.
        lock.still_held()
            .await
            .map_err(|e| PruneError::Lock(Box::new(RecoveryError::Lock(Box::new(e)))))?;
        p.step(
            "forget",
            format!(
                "deleting {} blobs ({}) that no kept backup uses",
                plan.blob_keys.len(),
                catalog::human_bytes(plan.blob_keys.iter().map(|b| b.1).sum())
            ),
        );
        let (n, b) = delete_all(ctx, plan.blob_keys.clone(), "blobs").await?;
        objects_deleted += n;
        bytes_freed += b;
    }
    p.step(
        "done",
        format!(
            "forgot {} backup(s), deleted {objects_deleted} objects, freed {}",
            forgotten.len(),
            catalog::human_bytes(bytes_freed)
        ),
    );
    let mut all_warnings = plan.warnings.clone();
    all_warnings.extend(warnings);
    Ok(PruneReport {
        plan,
        forgotten,
        objects_deleted,
        bytes_freed,
        mysql_deleted,
        recovered,
        warnings: all_warnings,
    })
}

pub fn render_plan(p: &PrunePlan) -> String {
    let mut out = format!("{}\n", p.selection);
    let forgotten: BTreeMap<&str, &Forget> = p.forget.iter().map(|f| (f.id.as_str(), f)).collect();
    for d in &p.decisions {
        match forgotten.get(d.id.as_str()) {
            Some(f) => out.push_str(&format!(
                "  forget {}  {:<16} {:>10}  {}\n",
                d.id,
                f.phase,
                catalog::human_bytes(f.bytes),
                f.label
            )),
            None => out.push_str(&format!("  keep   {}  {}\n", d.id, d.reasons.join("; "))),
        }
    }
    let mysql: usize = p.forget.iter().map(|f| f.mysql.len()).sum();
    out.push_str(&format!(
        "frees {}: {} backup(s) ({} objects), {} blobs no kept backup uses ({}), {} leftover objects; {} mysql-k8s backup(s) in their own bucket\n",
        catalog::human_bytes(p.bytes_freed),
        p.forget.len(),
        p.forget.iter().map(|f| f.objects).sum::<usize>(),
        p.blobs,
        catalog::human_bytes(p.blob_bytes),
        p.leftover_objects,
        mysql
    ));
    for w in &p.warnings {
        out.push_str(&format!("warning: {w}\n"));
    }
    out
}

pub fn render_report(r: &PruneReport) -> String {
    let mut out = String::new();
    for id in &r.recovered.backups {
        out.push_str(&format!(
            "recovered: backup {id} (its run had died) marked failed\n"
        ));
    }
    out.push_str(&format!(
        "forgot {} backup(s){}; deleted {} objects, freed {}",
        r.forgotten.len(),
        if r.forgotten.is_empty() {
            String::new()
        } else {
            format!(" ({})", r.forgotten.join(", "))
        },
        r.objects_deleted,
        catalog::human_bytes(r.bytes_freed)
    ));
    if !r.mysql_deleted.is_empty() {
        out.push_str(&format!(
            "; mysql-k8s backups deleted: {}",
            r.mysql_deleted.join(", ")
        ));
    }
    out.push('\n');
    for w in &r.warnings {
        out.push_str(&format!("warning: {w}\n"));
    }
    out
}
