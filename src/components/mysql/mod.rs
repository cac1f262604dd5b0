//! The kfp-db and katib-db databases, captured by the mysql-k8s charm's own `create-backup`
//! action on a replica, into the S3 bucket of its s3-integrator relation. We record which unit
//! made which backup, and where, and confirm it finished by its `<id>.md5` marker in that
//! bucket: the charm's own test of a finished backup. Its `list-backups` fails on a deployment
//! whose s3-integrator has no `path`, so it is only a fallback, used where the relation gives
//! no keys to read the bucket with.

mod drill;
mod forget;
mod restore;
mod verify;

pub use drill::{drill, MysqlDrill};
pub use forget::forget_many;
pub use restore::{restore_many, restore_preflight, MysqlRestored};

use std::collections::BTreeMap;

use crate::juju::{self, JujuCli, JujuError, Status};
use crate::repository::MysqlCapture;
use crate::retry::retry_blocking;
use crate::secret::Secret;
use crate::storage::{S3Settings, Store, StoreError, UriStyle};

#[derive(Debug, thiserror::Error)]
pub enum MysqlError {
    #[error("{app}: {source}")]
    Juju {
        app: String,
        #[source]
        source: JujuError,
    },
    #[error("{app} has no unit that is active")]
    NoUnit { app: String },
    #[error("{app}: get-cluster-status names no primary")]
    NoPrimary { app: String },
    #[error("{app} has no replica to back up from (only the primary {primary}): scale it to 2 units first, as create-backup does")]
    NoReplica { app: String, primary: String },
    #[error(
        "{app}: mysql-k8s backup {id} is {status:?}, not finished (no {id}.md5 where it writes)"
    )]
    NotFinished {
        app: String,
        id: String,
        status: String,
    },
    #[error("{app} has no s3-parameters relation to s3-integrator: its backups would have nowhere to go (`juju integrate {app} s3-integrator`)")]
    NoS3 { app: String },
    #[error("{app}'s s3-integrator ({provider}) has no `path`, so mysql-k8s writes its backups at the root of bucket {bucket}, where it can neither list nor restore them (its list-backups and restore fail with \"Failed to retrieve backup ids from S3\"). Give it a path, then back up: `juju config {provider} path=kubeflow/{app}`")]
    EmptyPath {
        app: String,
        provider: String,
        bucket: String,
    },
    #[error("{app}: s3-integrator's tls-ca-chain: {detail}")]
    BadChain { app: String, detail: String },
    #[error("{app}: its s3-parameters relation carries no S3 keys (s3-integrator 2 keeps them in a Juju secret), so its backups cannot be checked from here")]
    NoS3Keys { app: String },
    #[error("{app}: the backups' bucket: {source}")]
    Store {
        app: String,
        #[source]
        source: StoreError,
    },
    #[error("{app}: its backup {id} has the same id as {other}'s in the same place ({location}), so one overwrote the other; give each database its own s3-integrator path")]
    Collided {
        app: String,
        other: String,
        id: String,
        location: String,
    },
}

/// How long each action may take before we stop waiting (the task goes on in Juju).
#[derive(Debug, Clone)]
pub struct Waits {
    pub status: String,
    pub backup: String,
}

impl Default for Waits {
    fn default() -> Self {
        Waits {
            status: "5m".into(),
            backup: "60m".into(),
        }
    }
}

pub fn active_units(status: &Status, app: &str) -> Vec<String> {
    status
        .applications
        .get(app)
        .map(|a| {
            a.units
                .iter()
                .filter(|(_, u)| u.workload_status.current == "active")
                .map(|(n, _)| n.clone())
                .collect()
        })
        .unwrap_or_default()
}

/// The s3-integrator databag of the app's s3-parameters relation, read from a unit.
fn s3_parameters(
    cli: &JujuCli,
    app: &str,
    unit: &str,
) -> Result<std::collections::BTreeMap<String, String>, MysqlError> {
    s3_relation(cli, app, unit).map(|(bag, _)| bag)
}

/// The databag and the name of the s3-integrator application that sends it.
fn s3_relation(
    cli: &JujuCli,
    app: &str,
    unit: &str,
) -> Result<(std::collections::BTreeMap<String, String>, String), MysqlError> {
    let shown = cli.show_unit(unit).map_err(|source| MysqlError::Juju {
        app: app.into(),
        source,
    })?;
    let bag = juju::relation_app_data(&shown, unit, "s3-parameters")
        .ok_or_else(|| MysqlError::NoS3 { app: app.into() })?;
    let provider = juju::relation_remote_app(&shown, unit, "s3-parameters")
        .unwrap_or_else(|| "s3-integrator".into());
    Ok((bag, provider))
}

/// What a backup checks of each database before it changes anything: a unit to ask, a
/// relation to s3-integrator, and a `path` on it. The charm strips `/` from the path and then
/// reads its last character in list-backups and restore (`interfaces.md` section 2), so a
/// backup at the bucket's root could never come back. `--force` does not skip this.
pub fn preflight(cli: &JujuCli, status: &Status, app: &str) -> Result<String, MysqlError> {
    let (bag, provider) = first_unit_relation(cli, status, app)?;
    if trimmed_path(&bag).is_empty() {
        return Err(MysqlError::EmptyPath {
            app: app.into(),
            provider,
            bucket: bag.get("bucket").cloned().unwrap_or_default(),
        });
    }
    chain_of(&bag).map_err(|detail| MysqlError::BadChain {
        app: app.into(),
        detail,
    })?;
    Ok(location_of(&bag))
}

/// `<bucket>/<path>` (or the bucket alone) of a relation's databag.
fn location_of(bag: &std::collections::BTreeMap<String, String>) -> String {
    let bucket = bag.get("bucket").cloned().unwrap_or_default();
    let path = trimmed_path(bag);
    if path.is_empty() {
        bucket
    } else {
        format!("{bucket}/{path}")
    }
}

/// The relation's `tls-ca-chain`: a JSON list whose elements are PEM text or, from newer
/// s3-integrators, base64 of PEM (mysql-k8s's `s3_helpers` base64-decodes each one).
pub fn chain_of(bag: &std::collections::BTreeMap<String, String>) -> Result<Vec<String>, String> {
    match bag.get("tls-ca-chain").filter(|c| !c.trim().is_empty()) {
        None => Ok(vec![]),
        Some(chain) => crate::storage::tls::relation_chain(chain),
    }
}

fn trimmed_path(bag: &std::collections::BTreeMap<String, String>) -> String {
    bag.get("path")
        .map(|p| p.trim_matches('/').to_string())
        .unwrap_or_default()
}

/// `<bucket>/<path>` of the app's s3-parameters relation, read from a unit's relation data.
/// Only those two keys are taken for the record: the databag also holds the S3 keys.
pub fn backup_location(cli: &JujuCli, app: &str, unit: &str) -> Result<String, MysqlError> {
    Ok(location_of(&s3_parameters(cli, app, unit)?))
}

/// A store with the relation's endpoint, keys and CA chain (trusted from then on), rooted at
/// `path` of its bucket.
pub fn relation_store(
    bag: &std::collections::BTreeMap<String, String>,
    app: &str,
    path: &str,
) -> Result<Store, MysqlError> {
    let get = |k: &str| bag.get(k).filter(|v| !v.is_empty()).cloned();
    let (Some(access), Some(secret)) = (get("access-key"), get("secret-key")) else {
        return Err(MysqlError::NoS3Keys { app: app.into() });
    };
    let chain = chain_of(bag).map_err(|detail| MysqlError::BadChain {
        app: app.into(),
        detail,
    })?;
    if !chain.is_empty() {
        crate::storage::tls::trust_more(&chain, "s3-integrator's tls-ca-chain").map_err(
            |detail| MysqlError::BadChain {
                app: app.into(),
                detail,
            },
        )?;
    }
    Store::s3(&S3Settings {
        endpoint: get("endpoint").unwrap_or_else(|| "https://s3.amazonaws.com".into()),
        bucket: get("bucket").unwrap_or_default(),
        path: path.to_string(),
        region: get("region").unwrap_or_else(|| "us-east-1".into()),
        uri_style: match get("s3-uri-style").as_deref() {
            Some("host") => UriStyle::Host,
            _ => UriStyle::Path,
        },
        access_key: Secret::new(access),
        secret_key: Secret::new(secret),
        sse: None,
    })
    .map_err(|e| MysqlError::Store {
        app: app.into(),
        source: e,
    })
}

/// The store holding a captured mysql-k8s backup. In a copy (`copied_to`) that is the
/// repository `repo` itself; otherwise mysql-k8s's bucket, asked of the unit that made it, else
/// of any active unit (the one that made it may be gone since). Runs `juju`: call from
/// blocking code.
pub fn capture_store(cli: &JujuCli, repo: &Store, m: &MysqlCapture) -> Result<Store, String> {
    if let Some(prefix) = &m.copied_to {
        return repo.under(prefix).map_err(|e| e.to_string());
    }
    let mut units = vec![m.unit.clone()];
    // Any unit carries the relation data, whatever its status (after a restore mysql-k8s is
    // blocked until it gets a new location).
    if let Ok(status) = cli.status() {
        if let Some(a) = status.applications.get(&m.app) {
            units.extend(a.units.keys().filter(|u| **u != m.unit).cloned());
        }
    }
    let mut last = String::from("no unit of it to ask");
    for unit in units {
        let bag = match s3_parameters(cli, &m.app, &unit) {
            Ok(bag) => bag,
            Err(e) => {
                last = e.to_string();
                continue;
            }
        };
        // The relation may point elsewhere since (a new path after a restore, as mysql-k8s
        // asks). In the same bucket the relation's keys still reach the recorded place.
        let bucket = bag.get("bucket").cloned().unwrap_or_default();
        let (was_bucket, was_path) = m.location.split_once('/').unwrap_or((&m.location, ""));
        if was_bucket != bucket {
            return Err(format!(
                "it was written to bucket {was_bucket} ({}), but {} now backs up to bucket {bucket}, whose keys may not reach it",
                m.location, m.app
            ));
        }
        return relation_store(&bag, &m.app, was_path).map_err(|e| e.to_string());
    }
    Err(last)
}

/// Where the app backs up now (`<bucket>/<path>`) and the s3-integrator that says so, asked
/// of its first unit.
pub fn current_location(
    cli: &JujuCli,
    status: &Status,
    app: &str,
) -> Result<(String, String), MysqlError> {
    let (bag, provider) = first_unit_relation(cli, status, app)?;
    Ok((location_of(&bag), provider))
}

/// [`s3_relation`] as the app's first unit (whatever its status) sees it.
fn first_unit_relation(
    cli: &JujuCli,
    status: &Status,
    app: &str,
) -> Result<(std::collections::BTreeMap<String, String>, String), MysqlError> {
    let unit = status
        .applications
        .get(app)
        .and_then(|a| a.units.keys().next().cloned())
        .ok_or_else(|| MysqlError::NoUnit { app: app.into() })?;
    s3_relation(cli, app, &unit)
}

/// A captured mysql-k8s backup's store and its objects (`<id>`, `<id>.md5`,
/// `<id>.metadata`, ...), looked up through juju off the async threads.
pub async fn capture_objects(
    cli: &JujuCli,
    repo: &Store,
    m: &MysqlCapture,
) -> Result<(Store, Vec<crate::storage::ObjectInfo>), String> {
    let (cli, repo, m2) = (cli.clone(), repo.clone(), m.clone());
    let store = tokio::task::spawn_blocking(move || capture_store(&cli, &repo, &m2))
        .await
        .map_err(|e| e.to_string())??;
    let own = own_listing(&store, &m.backup_id)
        .await
        .map_err(|e| e.to_string())?;
    Ok((store, own))
}

/// The objects of mysql-k8s backup `id` (`<id>`, `<id>.md5`, `<id>.metadata`, ...) and their
/// sizes: its prefix listed, keeping only the backup's own names (`<id>0` would be another).
pub async fn own_objects(store: &Store, id: &str) -> Result<BTreeMap<String, u64>, StoreError> {
    Ok(own_listing(store, id)
        .await?
        .into_iter()
        .map(|o| (o.key, o.size))
        .collect())
}

async fn own_listing(
    store: &Store,
    id: &str,
) -> Result<Vec<crate::storage::ObjectInfo>, StoreError> {
    let dot = format!("{id}.");
    Ok(store
        .list(id)
        .await?
        .into_iter()
        .filter(|o| o.key == id || o.key.starts_with(&dot))
        .collect())
}

/// mysql-k8s's `list-backups` on `unit`, parsed.
pub fn list_backups(
    cli: &JujuCli,
    app: &str,
    unit: &str,
    wait: &str,
) -> Result<Vec<juju::MysqlBackup>, MysqlError> {
    let err = |source| MysqlError::Juju {
        app: app.into(),
        source,
    };
    let listed = retry_blocking(crate::retry::ATTEMPTS, "list-backups", || {
        cli.run_action(unit, "list-backups", &[], wait)
    })
    .map_err(err)?;
    let table = listed.result_str("backups").unwrap_or_default();
    juju::parse_backups_table(table).map_err(|detail| {
        err(JujuError::Parse {
            command: format!("juju run {unit} list-backups"),
            what: "backups table".into(),
            detail,
        })
    })
}

/// Asks the cluster which unit is primary, backs up on another one, and checks the charm
/// lists the backup as finished.
pub fn capture(
    cli: &JujuCli,
    status: &Status,
    app: &str,
    waits: &Waits,
) -> Result<MysqlCapture, MysqlError> {
    let err = |source| MysqlError::Juju {
        app: app.into(),
        source,
    };
    let units = active_units(status, app);
    let first = units
        .first()
        .ok_or_else(|| MysqlError::NoUnit { app: app.into() })?;
    let cs = retry_blocking(crate::retry::ATTEMPTS, "get-cluster-status", || {
        cli.run_action(first, "get-cluster-status", &[], &waits.status)
    })
    .map_err(err)?;
    let primary = juju::cluster_primary(&cs.results)
        .ok_or_else(|| MysqlError::NoPrimary { app: app.into() })?;
    let replica = units
        .iter()
        .find(|u| **u != primary)
        .ok_or_else(|| MysqlError::NoReplica {
            app: app.into(),
            primary: primary.clone(),
        })?;
    // Read once: where the backup goes, and the keys that confirm it got there.
    let bag = s3_parameters(cli, app, replica)?;
    let location = location_of(&bag);
    tracing::info!(app, unit = %replica, "mysql-k8s create-backup");
    // Not retried: a retry after a lost answer could make a second backup.
    let task = cli
        .run_action(replica, "create-backup", &[], &waits.backup)
        .map_err(err)?;
    let id = task
        .result_str("backup-id")
        .ok_or_else(|| {
            err(JujuError::Parse {
                command: format!("juju run {replica} create-backup"),
                what: "backup-id".into(),
                detail: "no backup-id in the results".into(),
            })
        })?
        .to_string();
    let (status, objects) = finished_status(cli, app, replica, &bag, &id, waits)?;
    if status != "finished" {
        return Err(MysqlError::NotFinished {
            app: app.into(),
            id,
            status,
        });
    }
    Ok(MysqlCapture {
        app: app.into(),
        unit: replica.clone(),
        backup_id: id,
        location,
        objects,
        copied_to: None,
    })
}

/// A backup's status as mysql-k8s defines it (`list_backups_in_s3_path`): `finished` once its
/// `<id>.md5` is there, `failed` if only its `<id>.backup.log` is, else `in progress`. Read
/// from the bucket; through the charm's list-backups when the bucket cannot be read from here.
/// With the status, the backup's objects and their sizes as the bucket lists them (empty when
/// only list-backups could be asked), which a restore drill checks later.
fn finished_status(
    cli: &JujuCli,
    app: &str,
    unit: &str,
    bag: &std::collections::BTreeMap<String, String>,
    id: &str,
    waits: &Waits,
) -> Result<(String, BTreeMap<String, u64>), MysqlError> {
    // Through the charm's list-backups when the bucket cannot be read from here (keys in a
    // secret, a CA or endpoint only the charm reaches): preflight made sure the path is set.
    let listed = || -> Result<(String, BTreeMap<String, u64>), MysqlError> {
        let rows = list_backups(cli, app, unit, &waits.status)?;
        let status = rows
            .iter()
            .find(|r| r.id == id)
            .map(|r| r.status.clone())
            .unwrap_or_else(|| "missing".into());
        Ok((status, BTreeMap::new()))
    };
    let store = match relation_store(bag, app, &trimmed_path(bag)) {
        Ok(store) => store,
        Err(
            MysqlError::NoS3Keys { .. } | MysqlError::Store { .. } | MysqlError::BadChain { .. },
        ) => return listed(),
        Err(e) => return Err(e),
    };
    let store_err = |source| MysqlError::Store {
        app: app.into(),
        source,
    };
    // Called from plain threads: a runtime of its own for the two requests.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            store_err(StoreError::Fatal {
                op: "head",
                key: format!("{id}.md5"),
                detail: e.to_string(),
            })
        })?;
    let read = rt.block_on(async {
        let marker = format!("{id}.md5");
        let found = crate::retry::retry(crate::retry::ATTEMPTS, &marker, || store.head(&marker))
            .await
            .map_err(store_err)?;
        if found.is_some() {
            let listed =
                crate::retry::retry(crate::retry::ATTEMPTS, id, || own_objects(&store, id))
                    .await
                    .map_err(store_err)?;
            return Ok(("finished".to_string(), listed));
        }
        let log = format!("{id}.backup.log");
        let found = crate::retry::retry(crate::retry::ATTEMPTS, &log, || store.head(&log))
            .await
            .map_err(store_err)?;
        let status = if found.is_some() {
            "failed"
        } else {
            "in progress"
        };
        Ok((status.to_string(), BTreeMap::new()))
    });
    match read {
        Err(MysqlError::Store { source, .. }) => {
            tracing::warn!(
                app,
                "reading the .md5 marker: {source}; asking list-backups"
            );
            listed()
        }
        other => other,
    }
}

/// mysql-k8s names a backup by the second it started and puts it at `<path>/<id>`: two apps
/// that share an s3-integrator path and back up in the same second overwrite each other. So
/// apps sharing a location go one after another, the next starting two seconds (a margin for
/// clock skew) after the previous backup's id; apps with their own locations go in parallel.
pub fn capture_many(
    cli: &JujuCli,
    status: &Status,
    apps: &[String],
    waits: &Waits,
    on_start: &(dyn Fn(&str) + Sync),
) -> Vec<(String, Result<MysqlCapture, MysqlError>)> {
    let mut groups: Vec<(Option<String>, Vec<String>)> = vec![];
    for app in apps {
        let location = active_units(status, app)
            .first()
            .and_then(|u| backup_location(cli, app, u).ok());
        match groups
            .iter_mut()
            .find(|(l, _)| l.is_some() && *l == location)
        {
            Some((_, g)) => g.push(app.clone()),
            None => groups.push((location, vec![app.clone()])),
        }
    }
    let mut out: Vec<(String, Result<MysqlCapture, MysqlError>)> = std::thread::scope(|scope| {
        let handles: Vec<_> = groups
            .iter()
            .map(|(_, group)| {
                scope.spawn(move || {
                    let mut done: Vec<(String, Result<MysqlCapture, MysqlError>)> = vec![];
                    for app in group {
                        let last = done.iter().rev().find_map(|(_, r)| r.as_ref().ok());
                        if let Some(prev) = last {
                            wait_past(&prev.backup_id);
                        }
                        on_start(app);
                        let mut r = capture(cli, status, app, waits);
                        if let (Ok(cap), Some(prev)) = (&r, last) {
                            if cap.backup_id == prev.backup_id && cap.location == prev.location {
                                r = Err(MysqlError::Collided {
                                    app: app.clone(),
                                    other: prev.app.clone(),
                                    id: cap.backup_id.clone(),
                                    location: cap.location.clone(),
                                });
                            }
                        }
                        done.push((app.clone(), r));
                    }
                    done
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("mysql capture thread"))
            .collect()
    });
    out.sort_by_key(|(a, _)| apps.iter().position(|x| x == a));
    out
}

/// Sleeps until the UTC clock is two seconds past a mysql-k8s backup id.
fn wait_past(backup_id: &str) {
    let Ok(t) = chrono::NaiveDateTime::parse_from_str(backup_id, "%Y-%m-%dT%H:%M:%SZ") else {
        return;
    };
    let until = t.and_utc() + chrono::Duration::seconds(2);
    if let Ok(d) = (until - chrono::Utc::now()).to_std() {
        std::thread::sleep(d);
    }
}

/// The kfp-db and katib-db databases as a [`Part`](crate::components::Part).
pub struct Mysql;

#[async_trait::async_trait(?Send)]
impl crate::components::Part for Mysql {
    fn held(&self, sf: &crate::repository::Statefile) -> bool {
        !sf.components.mysql.is_empty()
    }

    async fn check(
        &self,
        cx: &crate::components::check::CheckContext<'_>,
        sf: &crate::repository::Statefile,
        v: &mut crate::components::check::Verification,
    ) {
        verify::check(cx.juju, cx.dest, sf, cx.mode, v).await
    }
}
