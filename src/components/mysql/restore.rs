//! A database put back: mysql-k8s's own `restore` action on the one unit it allows.

use serde::Serialize;

use crate::juju::{JujuCli, Status};
use crate::progress::Progress;
use crate::retry::retry_blocking;

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct MysqlRestored {
    pub app: String,
    pub backup_id: String,
    pub status: String,
    pub message: String,
    /// What the operator does next.
    pub next: String,
}

/// What a restore checks of a database before anything changes: the charm's `restore` takes
/// `backup-id`, and the app still reads its backups where this one was written (mysql-k8s
/// restores only from its relation's current `path`, and asks for a new path after every
/// restore, so an older backup is often somewhere else).
///
/// A copy's part (`copied_to`) lives in this repository: the app must read its backups from
/// there, and the error gives the `juju config` that points it there.
pub fn restore_preflight(
    juju: &JujuCli,
    status: &Status,
    repo: &crate::storage::Store,
    m: &crate::repository::MysqlCapture,
) -> Result<(), String> {
    juju.check_action(&m.app, "restore", &["backup-id"])
        .map_err(|e| e.to_string())?;
    let (now, provider) =
        super::current_location(juju, status, &m.app).map_err(|e| e.to_string())?;
    if let Some(prefix) = &m.copied_to {
        let here = repo.under(prefix).map_err(|e| e.to_string())?;
        let Some(want) = here.location() else {
            return Err(format!(
                "{app}'s part of this backup (mysql-k8s backup {id}) was copied to {dest}, which mysql-k8s cannot read (it restores only from S3): copy the repository to an S3 bucket and restore from there",
                app = m.app,
                id = m.backup_id,
                dest = here.describe(),
            ));
        };
        if now != want {
            let (bucket, path) = want.split_once('/').unwrap_or((&want, ""));
            return Err(format!(
                "{app}'s part of this backup (mysql-k8s backup {id}) is in the copy at {want} ({dest}), but {app} reads its backups from {now}, and mysql-k8s restores only from there. Point its s3-integrator at the copy: `juju config {provider} endpoint=<the copy's endpoint> bucket={bucket} path={path}` (and `juju run {provider}/leader sync-s3-credentials` with the copy's keys), run this restore again, then give {app} a new path, as mysql-k8s asks after every restore",
                app = m.app,
                id = m.backup_id,
                dest = here.describe(),
            ));
        }
        return Ok(());
    }
    let (_, old_path) = m.location.split_once('/').unwrap_or((&m.location, ""));
    if old_path.is_empty() {
        return Err(format!(
            "{app}'s part of this backup (mysql-k8s backup {id}) is at the root of bucket {was}, from which mysql-k8s cannot restore (its restore reads the last character of the path). Copy {id}* under a path with your S3 tools, `juju config <its s3-integrator> path=<that path>`, and run this restore again",
            app = m.app,
            id = m.backup_id,
            was = m.location,
        ));
    }
    if now != m.location {
        return Err(format!(
            "{app}'s part of this backup (mysql-k8s backup {id}) is at {was}, but {app} now reads its backups from {now}, and mysql-k8s restores only from there. To restore it: `juju config {provider} path={old_path}` (every database related to {provider} follows), run this restore again, then give {app} a new path with `juju config {provider} path=...`, as mysql-k8s asks after every restore",
            app = m.app,
            id = m.backup_id,
            was = m.location,
        ));
    }
    Ok(())
}

/// Restores each (application, mysql-k8s backup id), one after the other: mysql-k8s `restore`
/// on each app's one unit, then what the app says about it.
pub fn restore_many(
    juju: &JujuCli,
    status: &Status,
    pairs: &[(String, String)],
    wait: &str,
    p: &Progress,
) -> Result<Vec<MysqlRestored>, String> {
    let mut out = vec![];
    for (app, backup_id) in pairs {
        let unit = status
            .applications
            .get(app)
            .and_then(|a| a.units.keys().next().cloned())
            .ok_or_else(|| format!("{app} has no unit to restore into"))?;
        p.step(
            "mysql",
            format!("{app}: restore backup-id={backup_id} on {unit}"),
        );
        // Not retried: a second restore after a lost answer would run it twice.
        juju.run_action(&unit, "restore", &[("backup-id", backup_id)], wait)
            .map_err(|e| format!("{app}: {e}"))?;
        let after = retry_blocking(crate::retry::ATTEMPTS, "juju status", || juju.status())
            .map_err(|e| e.to_string())?;
        let st = after
            .applications
            .get(app)
            .and_then(|a| a.application_status.clone());
        let (status, message) = st.map(|s| (s.current, s.message)).unwrap_or_default();
        let next = if status == "blocked" {
            format!("{app} is blocked (\"{message}\"): mysql-k8s does this after every restore so the restored cluster cannot write over the backups it came from. Give {app} a new backup location (another s3-integrator, or a new `path` on it) and its status clears; backups work again from then on")
        } else {
            String::new()
        };
        p.done(
            "mysql",
            format!("{app}: restored {backup_id}; now {status}"),
        );
        out.push(MysqlRestored {
            app: app.clone(),
            backup_id: backup_id.clone(),
            status,
            message,
            next,
        });
    }
    Ok(out)
}
