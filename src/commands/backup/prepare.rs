//! Discovery and preflight for a backup: reads everything, changes nothing, and makes the plan.

use std::path::PathBuf;

use super::{BackupError, BackupRequest, Plan};
use crate::commands::preflight::{self, app};
use crate::components::mlpipeline::{self, PreviousManifest, SyncError, SyncOptions, SyncPlan};
use crate::components::{mlmd, Component};
use crate::context::Context;
use crate::juju::scale;
use crate::juju::{discovery::AppState, Status};
use crate::kube::Cluster;
use crate::repository::{self, Listed, Phase};
use crate::retry::retry;
use crate::storage::{Store, StoreError};

/// Everything preflight found, kept for the run.
pub(super) struct Prepared {
    pub(super) plan: Plan,
    pub(super) status: Status,
    pub(super) apps: Vec<AppState>,
    pub(super) cluster: Option<Cluster>,
    /// MinIO, and the port-forward to it that must live as long as the run.
    pub(super) minio: Option<preflight::Minio>,
    pub(super) sync_plan: Option<SyncPlan>,
    /// The manifest the capture merges with the listing.
    pub(super) previous: Option<PreviousManifest>,
    pub(super) spool: Spool,
    pub(super) warnings: Vec<String>,
}

/// The spool directory; a temporary one goes when the run ends.
pub(super) struct Spool {
    pub(super) path: PathBuf,
    pub(super) _temp: Option<tempfile::TempDir>,
}

/// Free bytes where `path` lives.
fn free_space(path: &std::path::Path) -> std::io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid NUL-terminated path and `st` a writable statvfs.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(st.f_bavail as u64 * st.f_frsize as u64)
}

/// Writes, reads back and deletes a probe object: the destination takes our writes.
async fn probe_destination(dest: &Store, id: &str) -> Result<(), String> {
    let key = repository::probe_key(id);
    let body = format!("backup-agent write probe {id}\n");
    let ctx = |e: StoreError| format!("destination {}: {e}", dest.describe());
    retry(crate::retry::PREFLIGHT_ATTEMPTS, &key, || {
        dest.put_bytes(&key, body.as_bytes(), "text/plain")
    })
    .await
    .map_err(ctx)?;
    let back = retry(crate::retry::PREFLIGHT_ATTEMPTS, &key, || {
        dest.get_bytes(&key)
    })
    .await
    .map_err(ctx)?;
    retry(crate::retry::PREFLIGHT_ATTEMPTS, &key, || dest.delete(&key))
        .await
        .map_err(ctx)?;
    if back != body.as_bytes() {
        return Err(format!(
            "destination {}: the probe object {key} read back different from what was written",
            dest.describe()
        ));
    }
    Ok(())
}

/// The newest completed backup's manifest, if any, to merge with the listing.
fn previous_manifest(rows: &[Listed]) -> Option<PreviousManifest> {
    rows.iter().rev().find_map(|r| match r {
        Listed::Backup(s) if s.phase == Phase::Completed => {
            s.components.mlpipeline.as_ref().map(|m| PreviousManifest {
                backup_id: s.backup_id.clone(),
                key: m.manifest_key.clone(),
                sha256: m.manifest_sha256.clone(),
            })
        }
        _ => None,
    })
}

/// The capture's plan, counted by one pass over the listing merged with the previous manifest;
/// a previous manifest that cannot be read means a full copy, said in a warning.
async fn plan_capture(
    ctx: &Context,
    source: &Store,
    previous: Option<PreviousManifest>,
    warnings: &mut Vec<String>,
) -> Result<(SyncPlan, Option<PreviousManifest>), String> {
    let opts = SyncOptions::for_run(ctx, ctx.tuning.scratch());
    match mlpipeline::plan(source, &ctx.dest, previous.as_ref(), &opts).await {
        Ok(plan) => Ok((plan, previous)),
        Err(SyncError::Manifest(e)) => {
            let id = previous.map(|p| p.backup_id).unwrap_or_default();
            warnings.push(format!(
                "the manifest of the previous backup {id} cannot be read ({e}): every object is read again"
            ));
            let plan = mlpipeline::plan(source, &ctx.dest, None, &opts)
                .await
                .map_err(|e| e.to_string())?;
            Ok((plan, None))
        }
        Err(e) => Err(e.to_string()),
    }
}

/// What a run checks of mlpipeline instead of counting it: one page of the bucket's listing,
/// and the previous manifest's presence (missing: a full copy, said in a warning).
async fn uncounted(
    ctx: &Context,
    source: &Store,
    previous: Option<PreviousManifest>,
    warnings: &mut Vec<String>,
) -> Result<Option<PreviousManifest>, String> {
    source
        .list_page("", None, 1)
        .await
        .map_err(|e| format!("MinIO: {e}"))?;
    let Some(p) = previous else {
        return Ok(None);
    };
    match ctx.dest.head(&p.key).await {
        Ok(Some(_)) => Ok(Some(p)),
        Ok(None) => {
            warnings.push(format!(
                "the manifest of the previous backup {} is missing ({}): every object is read again",
                p.backup_id, p.key
            ));
            Ok(None)
        }
        Err(e) => Err(format!("destination {}: {e}", ctx.dest.describe())),
    }
}

/// Discovery and preflight: reads everything, changes nothing.
pub(super) async fn prepare(
    ctx: &Context,
    req: &BackupRequest,
    id: &str,
    dry_run: bool,
) -> Result<Prepared, BackupError> {
    let pre = |s: String| BackupError::Preflight(s);
    let wants = |c| req.components.contains(&c);
    let p = &ctx.progress;
    let (status, apps) = preflight::model(ctx).await?;
    let mut warnings = vec![];
    let cluster = if wants(Component::Mlmd) || wants(Component::Mlpipeline) {
        Some(preflight::cluster(ctx, &status.model.name).await?)
    } else {
        None
    };

    p.step("preflight", format!("destination {}", ctx.dest.describe()));
    // Read before writing: some servers create a missing bucket on the first write.
    let existing = repository::list(&ctx.dest)
        .await
        .map_err(|e| pre(format!("destination {}: {e}", ctx.dest.describe())))?;
    if !dry_run {
        probe_destination(&ctx.dest, id).await.map_err(pre)?;
    }

    let mut running = vec![];
    if let Some(cluster) = &cluster {
        running = preflight::running_work(
            ctx,
            cluster,
            req.force,
            "A backup now would not be consistent",
        )
        .await?;
        if !running.is_empty() {
            warnings.push(format!(
                "backing up while these run (--force): {}",
                running.join(", ")
            ));
        }
    }

    let (mut mlmd_pod, mut mlmd_container, mut mlmd_size) = (None, None, None);
    if let (true, Some(cluster)) = (wants(Component::Mlmd), &cluster) {
        let (pod, container) = preflight::mlmd_pod(ctx, cluster).await?;
        let (size, _) = cluster
            .stat(&pod, &container, mlmd::DB_PATH)
            .await
            .map_err(|e| pre(format!("MLMD: {e}")))?;
        (mlmd_pod, mlmd_container, mlmd_size) = (Some(pod), Some(container), Some(size));
    }

    let (mut minio, mut sync_plan, mut previous) = (None, None, None);
    if wants(Component::Mlpipeline) {
        let m = preflight::minio(ctx, &apps, cluster.as_ref()).await?;
        // The count is what --dry-run shows, and what format v1 needs to size the spool for
        // large objects. v2 streams those, so a run skips it: a listing merged with the
        // previous manifest is half the time of a backup where nothing changed. A run checks
        // instead that the bucket lists and that the previous manifest is there.
        if dry_run || !ctx.tuning.packing.on() {
            ctx.progress.step(
                "preflight",
                "counting what changed in mlpipeline since the last backup",
            );
            let (plan, prev) =
                plan_capture(ctx, &m.store, previous_manifest(&existing), &mut warnings)
                    .await
                    .map_err(|e| pre(format!("MinIO: {e}")))?;
            sync_plan = Some(plan);
            previous = prev;
        } else {
            ctx.progress.step(
                "preflight",
                "mlpipeline lists; the previous manifest is there",
            );
            previous = uncounted(ctx, &m.store, previous_manifest(&existing), &mut warnings)
                .await
                .map_err(pre)?;
        }
        minio = Some(m);
    }

    let spool = Spool::new(ctx.tuning.spool.as_ref()).map_err(pre)?;
    let (spool_needed, spool_free) = spool
        .check(mlmd_size.unwrap_or(0), sync_plan.as_ref())
        .map_err(pre)?;
    let (scales, mysql_apps) = scales(req, &status, &apps).map_err(pre)?;
    for app in &mysql_apps {
        p.step("preflight", format!("{app}: where mysql-k8s backs up"));
        let (juju, st, a) = (ctx.juju.clone(), status.clone(), app.clone());
        preflight::blocking(move || crate::components::mysql::preflight(&juju, &st, &a))
            .await
            .map_err(|e| pre(e.to_string()))?;
    }

    let plan = Plan {
        model: status.model.name.clone(),
        destination: ctx.dest.describe(),
        components: req.components.clone(),
        scales,
        mysql: mysql_apps,
        mlmd_pod,
        mlmd_container,
        mlmd_size,
        minio_endpoint: minio
            .as_ref()
            .map(|m| m.access.endpoint.clone())
            .unwrap_or_default(),
        minio_reached_through: minio.as_ref().map(|m| m.how.clone()).unwrap_or_default(),
        minio_credentials_from: minio
            .as_ref()
            .map(|m| m.access.from.clone())
            .unwrap_or_default(),
        mlpipeline_counted: sync_plan.is_some(),
        mlpipeline_objects: sync_plan.as_ref().map_or(0, |s| s.objects),
        mlpipeline_bytes: sync_plan.as_ref().map_or(0, |s| s.bytes),
        mlpipeline_to_read: sync_plan.as_ref().map_or(0, |s| s.to_read),
        mlpipeline_to_read_bytes: sync_plan.as_ref().map_or(0, |s| s.read_bytes),
        previous_backup: previous.as_ref().map(|p| p.backup_id.clone()),
        running_workloads: running,
        spool: spool.path.display().to_string(),
        spool_needed,
        spool_free,
    };
    Ok(Prepared {
        plan,
        status,
        apps,
        cluster,
        minio,
        sync_plan,
        previous,
        spool,
        warnings,
    })
}

impl Spool {
    /// `dir`, or a new temporary directory that goes with the run.
    fn new(dir: Option<&PathBuf>) -> Result<Spool, String> {
        Ok(match dir {
            Some(dir) => {
                std::fs::create_dir_all(dir)
                    .map_err(|e| format!("spool directory {}: {e}", dir.display()))?;
                Spool {
                    path: dir.clone(),
                    _temp: None,
                }
            }
            None => {
                let t = tempfile::Builder::new()
                    .prefix("backup-agent-spool-")
                    .tempdir()
                    .map_err(|e| {
                        format!(
                            "cannot create a spool directory in {}: {e}; pass --spool DIR",
                            std::env::temp_dir().display()
                        )
                    })?;
                Spool {
                    path: t.path().to_path_buf(),
                    _temp: Some(t),
                }
            }
        })
    }

    /// Whether the spool has room for this backup: (bytes needed, bytes free).
    fn check(&self, mlmd_size: u64, sync_plan: Option<&SyncPlan>) -> Result<(u64, u64), String> {
        // MLMD: the raw copy (compressed straight into the upload); mlpipeline: up to
        // LARGE_IN_FLIGHT large objects on disk at once.
        let spool_needed = mlmd_size
            + sync_plan.map_or(0, |s| {
                s.largest_spooled * (mlpipeline::LARGE_IN_FLIGHT as u64).min(s.to_read).max(1)
            })
            + (16 << 20);
        let spool_free = free_space(&self.path)
            .map_err(|e| format!("spool directory {}: {e}", self.path.display()))?;
        if spool_free < spool_needed {
            return Err(format!(
            "spool directory {} has {} free; this backup needs about {} there (the MLMD copy twice, plus the largest objects in flight): free some space or pass --spool DIR on a larger disk",
            self.path.display(),
            crate::units::human_bytes(spool_free),
            crate::units::human_bytes(spool_needed)
        ));
        }

        Ok((spool_needed, spool_free))
    }
}

/// The scale journal to record before any change (the databases get a replica to back up
/// from, the metadata writer stops), and the mysql-k8s applications to back up.
fn scales(
    req: &BackupRequest,
    status: &Status,
    apps: &[AppState],
) -> Result<(Vec<repository::ScaleRecord>, Vec<String>), String> {
    let wants = |c| req.components.contains(&c);
    let mut scales = vec![];
    let mut mysql_apps = vec![];
    for (c, role) in [
        (Component::KfpDb, "kfp-db"),
        (Component::KatibDb, "katib-db"),
    ] {
        if wants(c) {
            let a = app(apps, role);
            if a.status == "blocked" {
                let msg = status.applications[&a.name]
                    .application_status
                    .as_ref()
                    .map(|s| s.message.clone())
                    .unwrap_or_default();
                let why = if msg.contains("claimed by another cluster") {
                    "Another cluster's backups are where it would write (its group_replication_id.txt names another cluster): kfp-db and katib-db cannot share one s3-integrator path, and a restored cluster counts as a new one. Give it a path of its own (a new `path` on its s3-integrator, or an s3-integrator of its own)"
                } else {
                    "After a restore it must first be given another S3 repository (a new `path` on its s3-integrator, or another s3-integrator)"
                };
                return Err(format!(
                    "{} is blocked (\"{msg}\"): mysql-k8s takes no backup in that state. {why}; or leave it out with --components",
                    a.name
                ));
            }
            scales.push(scale::record(&a.name, a.scale, a.scale.max(2)));
            mysql_apps.push(a.name.clone());
        }
    }
    if wants(Component::Mlmd) {
        let w = app(apps, "metadata-writer");
        scales.push(scale::record(&w.name, w.scale, 0));
    }

    Ok((scales, mysql_apps))
}
