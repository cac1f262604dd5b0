//! The databases' part of a restore drill. Without a scratch mysql cluster nothing can replay
//! a mysql-k8s backup, so this proves what can be proven from the bucket: every object the
//! statefile names is where mysql-k8s wrote it, with the size recorded when the backup
//! finished; the `.md5` marker (mysql-k8s's mark of a finished backup) is there; and the
//! backup stream read whole hashes to that marker. Not proven: that xtrabackup can prepare the
//! stream, or that the server starts on it (docs/RELIABILITY.md).

use std::collections::BTreeMap;

use serde::Serialize;

use super::verify::check_md5;
use crate::components::check::{problem, Findings};
use crate::components::mlpipeline::Limiter;
use crate::juju::JujuCli;
use crate::repository::MysqlCapture;
use crate::retry::retry;

/// What the drill found of one mysql-k8s backup.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct MysqlDrill {
    pub app: String,
    pub backup_id: String,
    pub location: String,
    /// Objects found with the recorded size, and their bytes.
    pub objects: u64,
    pub bytes: u64,
    /// Whether the statefile recorded the objects' sizes (older backups did not: only the
    /// marker and the stream are checked then).
    pub sizes_recorded: bool,
    /// The backup stream read whole and its md5 equal to the marker's.
    pub md5_matched: bool,
    /// The bucket could not be read from here; mysql-k8s's own list-backups said `finished`.
    pub listed_by_charm: bool,
}

/// Checks each captured mysql-k8s backup where it was written; what is wrong goes into
/// `found`, named `<location>/<object>`. Where the bucket cannot be read from here (keys that
/// only mysql-k8s holds), mysql-k8s's list-backups is asked instead, and the drill says so in
/// `warnings`: less is proven, nothing is damaged.
pub async fn drill(
    juju: &JujuCli,
    repo: &crate::storage::Store,
    caps: &[MysqlCapture],
    limiter: Option<&Limiter>,
    found: &mut Findings,
    warnings: &mut Vec<String>,
) -> Vec<MysqlDrill> {
    let mut out = vec![];
    for m in caps {
        let mut d = MysqlDrill {
            app: m.app.clone(),
            backup_id: m.backup_id.clone(),
            location: m.location.clone(),
            sizes_recorded: !m.objects.is_empty(),
            ..MysqlDrill::default()
        };
        let name = |key: &str| format!("{}/{key}", m.location);
        let Some(store) = reachable(juju, repo, m, &mut d, found, warnings).await else {
            out.push(d);
            continue;
        };
        let listed = match retry(crate::retry::ATTEMPTS, &m.backup_id, || {
            super::own_objects(&store, &m.backup_id)
        })
        .await
        {
            Ok(listed) => listed,
            Err(e) => {
                found.push(problem(
                    &m.app,
                    &name(&m.backup_id),
                    format!("listing: {e}"),
                ));
                out.push(d);
                continue;
            }
        };
        let marker = format!("{}.md5", m.backup_id);
        // The stream and its marker always; every other object with the size recorded.
        let mut wanted: BTreeMap<String, Option<u64>> = m
            .objects
            .iter()
            .map(|(k, n)| (k.clone(), Some(*n)))
            .collect();
        for key in [&m.backup_id, &marker] {
            wanted.entry(key.clone()).or_insert(None);
        }
        for (key, size) in &wanted {
            match (listed.get(key), size) {
                (None, _) => found.push(problem(
                    &m.app,
                    &name(key),
                    "missing: mysql-k8s wrote it for this backup, and it is gone",
                )),
                (Some(got), Some(want)) if got != want => found.push(problem(
                    &m.app,
                    &name(key),
                    format!("{got} bytes, the statefile records {want}"),
                )),
                (Some(got), _) => {
                    d.objects += 1;
                    d.bytes += got;
                }
            }
        }
        if let (Some(size), Some(_)) = (listed.get(&m.backup_id), listed.get(&marker)) {
            if let Some(l) = limiter {
                l.take(*size).await;
            }
            let checked =
                match retry(crate::retry::ATTEMPTS, &marker, || store.get_bytes(&marker)).await {
                    Ok(bytes) => check_md5(&store, &m.backup_id, &bytes).await,
                    Err(e) => Err(format!("reading its .md5 marker: {e}")),
                };
            match checked {
                Ok(()) => d.md5_matched = true,
                Err(e) => found.push(problem(&m.app, &name(&m.backup_id), e)),
            }
        }
        out.push(d);
    }
    out
}

/// The store holding backup `m`, or `None` with why: a problem when nothing vouches for the
/// backup, a warning when mysql-k8s's own list-backups still says it is finished.
async fn reachable(
    juju: &JujuCli,
    repo: &crate::storage::Store,
    m: &MysqlCapture,
    d: &mut MysqlDrill,
    found: &mut Findings,
    warnings: &mut Vec<String>,
) -> Option<crate::storage::Store> {
    let (cli, repo, m2) = (juju.clone(), repo.clone(), m.clone());
    let why =
        match tokio::task::spawn_blocking(move || super::capture_store(&cli, &repo, &m2)).await {
            Ok(Ok(store)) => return Some(store),
            Ok(Err(why)) => why,
            Err(e) => {
                found.push(problem(&m.app, &m.location, e.to_string()));
                return None;
            }
        };
    let (cli, m2) = (juju.clone(), m.clone());
    match tokio::task::spawn_blocking(move || charm_lists(&cli, &m2)).await {
        Ok(Ok(())) => {
            d.listed_by_charm = true;
            warnings.push(format!(
                "{}: mysql-k8s backup {} not read from {} ({why}); mysql-k8s's list-backups says it is finished",
                m.app, m.backup_id, m.location
            ));
        }
        Ok(Err(e)) => found.push(problem(
            &m.app,
            &m.location,
            format!("cannot be read from here ({why}), and {e}"),
        )),
        Err(e) => found.push(problem(&m.app, &m.location, e.to_string())),
    }
    None
}

/// Whether mysql-k8s itself lists backup `m` as finished (asked of an active unit). Runs
/// `juju`: call from blocking code.
fn charm_lists(cli: &JujuCli, m: &MysqlCapture) -> Result<(), String> {
    let status = cli.status().map_err(|e| e.to_string())?;
    let unit = super::active_units(&status, &m.app)
        .into_iter()
        .next()
        .ok_or_else(|| format!("{} has no active unit to ask", m.app))?;
    let rows = super::list_backups(cli, &m.app, &unit, "5m").map_err(|e| e.to_string())?;
    match rows.iter().find(|r| r.id == m.backup_id) {
        Some(r) if r.status == "finished" => Ok(()),
        Some(r) => Err(format!("mysql-k8s lists it as {}", r.status)),
        None => Err(format!(
            "mysql-k8s's list-backups (its current path) does not list {}",
            m.backup_id
        )),
    }
}
