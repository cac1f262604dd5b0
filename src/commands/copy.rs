//! `copy`: a second, off-site copy of backups (3-2-1), made and checked by us. Each backup is
//! copied with everything needed to restore from the copy alone: its MLMD dump, its manifest
//! and pack index, the blobs and packs the manifest references, and the mysql-k8s backup
//! objects its statefile names (under `backup-agent/mysql/<bucket>/<path>/` of the copy, where
//! `<bucket>/<path>` is where mysql-k8s wrote them: the copy's bucket is not mysql-k8s's). The
//! statefile goes last, after a check of the copy, so a copy killed half-way is no backup at
//! all on the secondary, and the next copy finishes it. Backups that cannot be copied are named
//! and the others still go.
//!
//! Dedup-aware and streamed: the manifest's stored objects are sorted (on disk past the sort
//! budget) and merged with the secondary's listing of `blobs/` and `packs/`; only what the
//! secondary lacks is sent, each object a GET piped into a PUT with its size (and a blob's
//! hash) checked before it becomes visible. Memory does not grow with the number of objects.

use std::collections::BTreeMap;
use std::time::Instant;

use chrono::Utc;
use futures::{StreamExt, TryStreamExt};
use serde::Serialize;

use crate::commands::recover::{self, RecoveryError};
use crate::components::check::{CheckContext, Mode, Problem, Verification};
use crate::components::mlpipeline::Ticker;
use crate::components::{mysql, PARTS};
use crate::context::Context;
use crate::repository::lock::{self, LeaseError};
use crate::repository::{self, layout, CatalogError, CopyOrigin, Listed, Phase, Statefile};
use crate::retry::{retry, ATTEMPTS};
use crate::sorted::{join, Joined, Sorter};
use crate::storage::{copy_object, Expect, ObjectInfo, Store, StoreError};
use crate::units::human_bytes;

/// Which backups to copy.
#[derive(Debug, Clone, Default)]
pub struct CopyRequest {
    /// `None`: every completed backup of the primary that was never copied to the secondary
    /// (one copied and since forgotten there by its retention is not sent again).
    pub backup_id: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    #[error("{0}")]
    Usage(String),
    #[error("{0}")]
    Catalog(#[from] CatalogError),
    #[error("backup {id} is {phase}, not completed: only a completed backup is copied (list-backups shows which are)")]
    NotCompleted { id: String, phase: String },
    #[error("{0}")]
    Lock(Box<RecoveryError>),
    #[error("the secondary's lock: {0}")]
    SecondaryLock(Box<LeaseError>),
    #[error("copying backup {id}: {detail}. Nothing of it counts on the secondary yet (its statefile is written last): run copy again, which sends only what is missing")]
    Failed { id: String, detail: String },
    #[error("the copy of backup {id} does not check out on the secondary ({} problems, first: {}); its statefile was not written, so it is no backup there: run copy again", .problems.len(), .problems.first().map(|p| p.to_string()).unwrap_or_default())]
    Unverified { id: String, problems: Vec<Problem> },
    #[error("the copy was interrupted ({reason}) during backup {id}; its statefile was not written on the secondary: run copy again to finish")]
    Interrupted { id: String, reason: String },
}

/// What a copy will do (`--dry-run`): nothing is written, no lock taken.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct CopyPlan {
    pub from: String,
    pub to: String,
    pub backups: Vec<PlannedCopy>,
    /// Asked for (or completed on the primary) and already on the secondary.
    pub already: Vec<String>,
    /// Copied there before and since forgotten by the secondary's retention: not sent again
    /// unless named.
    pub forgotten_there: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct PlannedCopy {
    pub backup_id: String,
    pub label: String,
    /// mlpipeline objects and bytes the backup holds (less is sent where the secondary has
    /// blobs and packs already).
    pub objects: u64,
    pub bytes: u64,
    pub mlmd_bytes: u64,
    /// `app backup-id` of each mysql-k8s backup copied with it.
    pub mysql: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct CopyReport {
    pub from: String,
    pub to: String,
    pub copied: Vec<CopiedBackup>,
    pub already: Vec<String>,
    pub forgotten_there: Vec<String>,
    /// Backups whose copy failed (each named with why); the others were still copied.
    pub failed: Vec<FailedCopy>,
    pub duration_seconds: f64,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct FailedCopy {
    pub backup_id: String,
    pub error: String,
}

#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct CopiedBackup {
    pub backup_id: String,
    /// Blobs and packs sent, and those the secondary had already.
    pub stored_sent: u64,
    pub stored_present: u64,
    /// Everything else sent or found there: MLMD, manifest, pack index, mysql-k8s objects.
    pub files_sent: u64,
    pub files_present: u64,
    pub bytes_sent: u64,
    /// Objects the check of the copy looked at.
    pub verified_objects: u64,
    pub seconds: f64,
}

impl CopyReport {
    pub fn bytes_sent(&self) -> u64 {
        self.copied.iter().map(|c| c.bytes_sent).sum()
    }
}

/// The two repositories must be two: a copy onto itself would read what it writes.
fn check_stores(from: &Store, to: &Store) -> Result<(), CopyError> {
    if from.describe() == to.describe() {
        return Err(CopyError::Usage(format!(
            "the secondary is the primary ({}): give the secondary its own bucket or endpoint",
            to.describe()
        )));
    }
    Ok(())
}

/// What `req` selects: the completed backups to copy, those the secondary holds already, and
/// those copied before and forgotten there since.
struct Selected {
    todo: Vec<Statefile>,
    already: Vec<String>,
    forgotten_there: Vec<String>,
}

/// Whether the primary's record of `sf` says it was copied to `to` (the copy event the copy
/// appends to its history).
fn copied_before(sf: &Statefile, to: &Store) -> bool {
    let to = to.describe();
    sf.history
        .iter()
        .any(|h| h["event"] == "copy" && h["outcome"] == "completed" && h["to"] == to.as_str())
}

async fn select(from: &Store, to: &Store, req: &CopyRequest) -> Result<Selected, CopyError> {
    let there: std::collections::BTreeSet<String> = repository::list(to)
        .await?
        .into_iter()
        .filter_map(|l| match l {
            Listed::Backup(sf) if sf.phase == Phase::Completed => Some(sf.backup_id),
            _ => None,
        })
        .collect();
    let mut out = Selected {
        todo: vec![],
        already: vec![],
        forgotten_there: vec![],
    };
    let wanted: Vec<Statefile> = match &req.backup_id {
        Some(id) => {
            let sf = repository::load(from, id).await?;
            if sf.phase != Phase::Completed {
                return Err(CopyError::NotCompleted {
                    id: id.clone(),
                    phase: sf.phase.as_str().into(),
                });
            }
            vec![sf]
        }
        None => repository::list(from)
            .await?
            .into_iter()
            .filter_map(|l| match l {
                Listed::Backup(sf) if sf.phase == Phase::Completed => Some(*sf),
                _ => None,
            })
            .collect(),
    };
    for sf in wanted {
        if there.contains(&sf.backup_id) {
            out.already.push(sf.backup_id);
        } else if req.backup_id.is_none() && copied_before(&sf, to) {
            out.forgotten_there.push(sf.backup_id);
        } else {
            out.todo.push(sf);
        }
    }
    Ok(out)
}

fn planned(sf: &Statefile) -> PlannedCopy {
    let c = &sf.components;
    PlannedCopy {
        backup_id: sf.backup_id.clone(),
        label: sf.label.clone(),
        objects: c.mlpipeline.as_ref().map_or(0, |m| m.objects),
        bytes: c.mlpipeline.as_ref().map_or(0, |m| m.bytes),
        mlmd_bytes: c.mlmd.as_ref().map_or(0, |m| m.compressed_size),
        mysql: c
            .mysql
            .iter()
            .map(|m| format!("{} {}", m.app, m.backup_id))
            .collect(),
    }
}

/// The plan: which backups go, which are there already. Reads statefiles only.
pub async fn plan(ctx: &Context, to: &Store, req: &CopyRequest) -> Result<CopyPlan, CopyError> {
    check_stores(&ctx.dest, to)?;
    let sel = select(&ctx.dest, to, req).await?;
    Ok(CopyPlan {
        from: ctx.dest.describe(),
        to: to.describe(),
        backups: sel.todo.iter().map(planned).collect(),
        already: sel.already,
        forgotten_there: sel.forgotten_there,
    })
}

/// Copies what `req` asks for from the context's repository to `to`, under both locks.
pub async fn run(ctx: &Context, to: &Store, req: &CopyRequest) -> Result<CopyReport, CopyError> {
    check_stores(&ctx.dest, to)?;
    let started = Instant::now();
    // Nothing to send: no lock taken (the common case after every backup but the first).
    let sel = select(&ctx.dest, to, req).await?;
    if sel.todo.is_empty() {
        ctx.progress.step(
            "copy",
            "nothing to copy: the secondary has every backup asked for",
        );
        return Ok(CopyReport {
            from: ctx.dest.describe(),
            to: to.describe(),
            copied: vec![],
            already: sel.already,
            forgotten_there: sel.forgotten_there,
            failed: vec![],
            duration_seconds: started.elapsed().as_secs_f64(),
        });
    }
    // The primary's lock keeps a prune from deleting a pack this copy is reading; the
    // secondary's keeps a prune there from sweeping blobs not yet referenced by a statefile.
    // Both at once: each waits out its settle pause.
    let (primary, secondary) = tokio::join!(
        recover::lock_and_recover(ctx, "copy"),
        lock::acquire(
            to,
            "copy",
            ctx.tuning.lease,
            ctx.tuning.break_lock,
            ctx.interrupt.clone(),
        )
    );
    let (primary, secondary) = match (primary, secondary) {
        (Ok((p, _)), Ok(s)) => (p, s),
        (p, s) => {
            let mut first = None;
            if let Ok(s) = s {
                let _ = s.release().await;
            } else if let Err(e) = s {
                first = Some(CopyError::SecondaryLock(Box::new(e)));
            }
            match p {
                Ok((p, _)) => {
                    let _ = p.release().await;
                }
                Err(e) => first = Some(CopyError::Lock(Box::new(e))),
            }
            return Err(first.expect("one lock failed"));
        }
    };
    let result = locked(ctx, to, &secondary, req, started).await;
    for (which, l) in [("secondary", secondary), ("primary", primary)] {
        if let Err(e) = l.release().await {
            ctx.progress
                .warn(format!("releasing the {which}'s repository lock: {e}"));
        }
    }
    result
}

async fn locked(
    ctx: &Context,
    to: &Store,
    lease: &lock::Lease,
    req: &CopyRequest,
    started: Instant,
) -> Result<CopyReport, CopyError> {
    let Selected {
        todo,
        already,
        forgotten_there,
    } = select(&ctx.dest, to, req).await?;
    let mut report = CopyReport {
        from: ctx.dest.describe(),
        to: to.describe(),
        copied: vec![],
        already,
        forgotten_there,
        failed: vec![],
        duration_seconds: 0.0,
    };
    if todo.is_empty() {
        ctx.progress.step(
            "copy",
            "nothing to copy: the secondary has every backup asked for",
        );
    }
    for (n, sf) in todo.iter().enumerate() {
        ctx.progress.step(
            "copy",
            format!(
                "backup {} ({} of {}) to {}",
                sf.backup_id,
                n + 1,
                todo.len(),
                to.describe()
            ),
        );
        // One backup that cannot be copied (its mysql-k8s objects gone, a blob lost) must not
        // keep every newer one from the secondary: it is named, and the next one goes.
        let copied = match one(ctx, to, lease, sf).await {
            Ok(c) => c,
            Err(e @ (CopyError::Interrupted { .. } | CopyError::SecondaryLock(_))) => {
                return Err(e)
            }
            Err(e) => {
                ctx.progress
                    .warn(format!("backup {}: not copied: {e}", sf.backup_id));
                report.failed.push(FailedCopy {
                    backup_id: sf.backup_id.clone(),
                    error: e.to_string(),
                });
                continue;
            }
        };
        ctx.progress.done(
            "copy",
            format!(
                "backup {}: {} sent ({} blobs or packs sent, {} already there), checked",
                sf.backup_id,
                human_bytes(copied.bytes_sent),
                copied.stored_sent,
                copied.stored_present
            ),
        );
        let entry = serde_json::json!({
            "event": "copy",
            "at": Utc::now(),
            "to": to.describe(),
            "outcome": "completed",
            "bytes-sent": copied.bytes_sent,
        });
        if let Err(e) = repository::append_history(&ctx.dest, &sf.backup_id, entry).await {
            ctx.progress.warn(format!(
                "recording the copy in the primary's statefile: {e}"
            ));
        }
        report.copied.push(copied);
    }
    report.duration_seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

/// Copies one backup: stored objects, then its own files, then mysql-k8s's, then a check of
/// the copy, then its statefile.
async fn one(
    ctx: &Context,
    to: &Store,
    lease: &lock::Lease,
    sf: &Statefile,
) -> Result<CopiedBackup, CopyError> {
    let started = Instant::now();
    let id = sf.backup_id.clone();
    let failed = |detail: String| CopyError::Failed {
        id: id.clone(),
        detail,
    };
    let mut out = CopiedBackup {
        backup_id: id.clone(),
        ..CopiedBackup::default()
    };
    if let Some(cap) = &sf.components.mlpipeline {
        stored_objects(ctx, to, &id, cap, &mut out).await?;
    }
    // The backup's own files; the pack index only where the capture wrote one (format v2).
    let mut files: Vec<(String, bool)> = vec![];
    if let Some(m) = &sf.components.mlmd {
        files.push((m.key.clone(), true));
    }
    if let Some(m) = &sf.components.mlpipeline {
        files.push((m.manifest_key.clone(), true));
        files.push((layout::index_beside(&m.manifest_key), false));
    }
    for (key, required) in files {
        interrupted(ctx, &id)?;
        file(ctx, &ctx.dest, &key, to, &key, required, &mut out)
            .await
            .map_err(|e| failed(e.to_string()))?;
    }
    let mut copy = sf.clone();
    for m in copy.components.mysql.iter_mut() {
        interrupted(ctx, &id)?;
        ctx.progress.step(
            "copy",
            format!("mysql-k8s backup {} of {}", m.backup_id, m.app),
        );
        let (store, objects) = mysql::capture_objects(&ctx.juju, &ctx.dest, m)
            .await
            .map_err(|e| {
                failed(format!(
                    "mysql-k8s backup {} of {} cannot be read from {} ({e}), and a copy without it would not restore",
                    m.backup_id, m.app, m.location
                ))
            })?;
        if objects.is_empty() {
            return Err(failed(format!(
                "mysql-k8s backup {} of {} is not at {} any more",
                m.backup_id, m.app, m.location
            )));
        }
        let prefix = layout::copied_mysql_prefix(&m.location);
        // The marker last: mysql-k8s calls a backup finished once its `.md5` is there.
        let mut keys: Vec<&ObjectInfo> = objects.iter().collect();
        keys.sort_by_key(|o| o.key.ends_with(".md5"));
        for o in keys {
            let dest_key = format!("{prefix}/{}", o.key);
            file(ctx, &store, &o.key, to, &dest_key, true, &mut out)
                .await
                .map_err(|e| failed(e.to_string()))?;
        }
        m.objects = objects.iter().map(|o| (o.key.clone(), o.size)).collect();
        m.copied_to = Some(prefix);
    }
    copy.copied_from = Some(CopyOrigin {
        from: ctx.dest.describe(),
        at: Utc::now(),
    });
    copy.checksum = None;
    interrupted(ctx, &id)?;
    out.verified_objects = check_copy(ctx, to, &copy).await?;
    // A prune of the secondary after a lost lease could have swept what the check just saw.
    lease
        .still_held()
        .await
        .map_err(|e| CopyError::SecondaryLock(Box::new(e)))?;
    repository::save(to, &copy)
        .await
        .map_err(|e| failed(format!("writing its statefile: {e}")))?;
    out.seconds = started.elapsed().as_secs_f64();
    Ok(out)
}

fn interrupted(ctx: &Context, id: &str) -> Result<(), CopyError> {
    match ctx.interrupt.reason() {
        Some(reason) => Err(CopyError::Interrupted {
            id: id.into(),
            reason,
        }),
        None => Ok(()),
    }
}

/// One small or large object of the backup copied unless the secondary has it with its size.
/// A missing object that is not `required` (an index older backups lack) is no error.
async fn file(
    ctx: &Context,
    from: &Store,
    key: &str,
    to: &Store,
    to_key: &str,
    required: bool,
    out: &mut CopiedBackup,
) -> Result<(), StoreError> {
    let Some(meta) = retry(ATTEMPTS, key, || from.head_meta(key)).await? else {
        if required {
            return Err(StoreError::NotFound { key: key.into() });
        }
        return Ok(());
    };
    if let Some(there) = retry(ATTEMPTS, to_key, || to.head(to_key)).await? {
        if there.size == meta.info.size {
            out.files_present += 1;
            return Ok(());
        }
    }
    let expect = Expect {
        size: Some(meta.info.size),
        sha256: None,
    };
    ctx.progress.step(
        "copy",
        format!("{to_key} ({})", human_bytes(meta.info.size)),
    );
    let n = retry(ATTEMPTS, key, || {
        copy_object(
            from,
            key,
            to,
            to_key,
            &meta.content_type,
            &meta.metadata,
            &expect,
        )
    })
    .await?;
    out.files_sent += 1;
    out.bytes_sent += n;
    Ok(())
}

/// The blobs and packs the manifest references that the secondary lacks, sent; each named
/// once however many entries share it. Sorted on disk past the sort budget, merged with the
/// secondary's listings.
async fn stored_objects(
    ctx: &Context,
    to: &Store,
    id: &str,
    cap: &repository::MlpipelineCapture,
    out: &mut CopiedBackup,
) -> Result<(), CopyError> {
    let failed = |detail: String| CopyError::Failed {
        id: id.into(),
        detail,
    };
    let scratch = ctx.tuning.scratch();
    let streaming = ctx.tuning.streaming;
    let sort_err = |e: std::io::Error| {
        failed(format!(
            "sorting on local disk: {e} (pass --spool DIR on a disk with room)"
        ))
    };
    ctx.progress.step(
        "copy",
        format!("reading the manifest of {id} ({} objects)", cap.objects),
    );
    let mut needed: Sorter<ObjectInfo> = Sorter::with(&scratch, streaming.sort_memory, true);
    let mut entries =
        repository::manifest::read(&ctx.dest, &cap.manifest_key, Some(&cap.manifest_sha256));
    while let Some(e) = entries.next().await {
        let e = e.map_err(|e| failed(e.to_string()))?;
        let Some(key) = e.stored_object() else {
            continue;
        };
        // A blob is its object whole, so its size is known; a pack's is not from here.
        let size = match e.stored() {
            repository::Stored::Blob(_) => e.size,
            _ => 0,
        };
        needed
            .push(ObjectInfo {
                key,
                size,
                etag: None,
            })
            .await
            .map_err(sort_err)?;
    }
    let needed = needed
        .finish()
        .await
        .map_err(sort_err)?
        .map_err(|e| StoreError::Fatal {
            op: "sort",
            key: "copy".into(),
            detail: e.to_string(),
        });
    // `blobs/` sorts before `packs/`: the two listings one after the other are in key order.
    to.settle_order();
    let have = to
        .sorted_listing(&layout::blobs_prefix(), &streaming, &scratch)
        .chain(to.sorted_listing(&layout::packs_prefix(), &streaming, &scratch));
    let ticker = Ticker::new(&ctx.progress, None);
    let present = std::sync::atomic::AtomicU64::new(0);
    let sent = std::sync::atomic::AtomicU64::new(0);
    let bytes = std::sync::atomic::AtomicU64::new(0);
    let from = &ctx.dest;
    join(Box::pin(needed), Box::pin(have))
        .try_filter_map(|j| {
            let missing = match j {
                Joined::Left(n) => Some(n),
                // A blob's size is its name's promise: one that differs is damage, sent again.
                Joined::Both(n, h) if n.size != 0 && n.size != h.size => Some(n),
                Joined::Both(..) => {
                    present.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    None
                }
                Joined::Right(_) => None,
            };
            futures::future::ready(Ok(missing))
        })
        .map(|n| async {
            let n = n?;
            if let Some(reason) = ctx.interrupt.reason() {
                return Err(StoreError::Fatal {
                    op: "copy",
                    key: n.key,
                    detail: format!("interrupted ({reason})"),
                });
            }
            let expect = Expect {
                size: (n.size != 0).then_some(n.size),
                sha256: repository::blob_of(&n.key).map(str::to_string),
            };
            let none = BTreeMap::new();
            let got = retry(ATTEMPTS, &n.key, || {
                copy_object(
                    from,
                    &n.key,
                    to,
                    &n.key,
                    "application/octet-stream",
                    &none,
                    &expect,
                )
            })
            .await?;
            sent.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            bytes.fetch_add(got, std::sync::atomic::Ordering::Relaxed);
            ticker.add(got);
            Ok(())
        })
        .buffer_unordered(ctx.tuning.transfers.max(1))
        .try_collect::<()>()
        .await
        .map_err(|e: StoreError| match ctx.interrupt.reason() {
            Some(reason) => CopyError::Interrupted {
                id: id.into(),
                reason,
            },
            None => failed(e.to_string()),
        })?;
    ticker.finish();
    out.stored_present = present.into_inner();
    out.stored_sent = sent.into_inner();
    out.bytes_sent += bytes.into_inner();
    Ok(())
}

/// The copy checked on the secondary before its statefile is written: every part as a light
/// verification sees it (every blob and pack there with its size, the manifest's hash, MLMD,
/// the mysql-k8s objects with their sizes). The objects looked at.
async fn check_copy(ctx: &Context, to: &Store, copy: &Statefile) -> Result<u64, CopyError> {
    ctx.progress.step(
        "copy",
        format!("checking the copy of {} on the secondary", copy.backup_id),
    );
    let spool = ctx.tuning.scratch();
    let cx = CheckContext {
        dest: to,
        juju: Some(&ctx.juju),
        mode: Mode::Light,
        spool: &spool,
        streaming: ctx.tuning.streaming,
        progress: &ctx.progress,
    };
    let mut v = Verification::new(&copy.backup_id, Mode::Light);
    for part in PARTS {
        if part.held(copy) {
            part.check(&cx, copy, &mut v).await;
        }
    }
    if !v.problems.is_empty() {
        return Err(CopyError::Unverified {
            id: copy.backup_id.clone(),
            problems: v.problems,
        });
    }
    Ok(v.objects_checked)
}

/// The plan as text.
pub fn render_plan(p: &CopyPlan) -> String {
    let mut o = format!("copy plan: from {} to {}\n", p.from, p.to);
    if p.backups.is_empty() {
        o.push_str("  nothing to copy\n");
    }
    for b in &p.backups {
        o.push_str(&format!(
            "  {}{}: {} mlpipeline objects ({}), mlmd {}, mysql-k8s: {}\n",
            b.backup_id,
            if b.label.is_empty() {
                String::new()
            } else {
                format!(" ({})", b.label)
            },
            b.objects,
            human_bytes(b.bytes),
            human_bytes(b.mlmd_bytes),
            if b.mysql.is_empty() {
                "none".to_string()
            } else {
                b.mysql.join(", ")
            }
        ));
    }
    for id in &p.already {
        o.push_str(&format!("  {id}: already on the secondary\n"));
    }
    for id in &p.forgotten_there {
        o.push_str(&format!(
            "  {id}: copied before and forgotten there by its retention (name it to copy it again)\n"
        ));
    }
    o.push_str(
        "(dry run: nothing was copied; blobs and packs the secondary has are not sent again)\n",
    );
    o
}

/// The report as text.
pub fn render_report(r: &CopyReport) -> String {
    let mut o = format!(
        "copied {} backup(s) from {} to {}: {} sent in {:.1}s\n",
        r.copied.len(),
        r.from,
        r.to,
        human_bytes(r.bytes_sent()),
        r.duration_seconds
    );
    for c in &r.copied {
        o.push_str(&format!(
            "  {}: {} blobs/packs sent, {} already there; {} other objects sent, {} already there; {} objects checked on the secondary\n",
            c.backup_id, c.stored_sent, c.stored_present, c.files_sent, c.files_present, c.verified_objects
        ));
    }
    for id in &r.already {
        o.push_str(&format!("  {id}: already on the secondary\n"));
    }
    for id in &r.forgotten_there {
        o.push_str(&format!(
            "  {id}: copied before and forgotten there by its retention\n"
        ));
    }
    for f in &r.failed {
        o.push_str(&format!("  {}: NOT COPIED: {}\n", f.backup_id, f.error));
    }
    o
}
