//! The databases' part of a check: each mysql-k8s backup has its `.md5` marker where it was
//! written (the charm's own mark of a finished backup, which its list-backups reports as
//! `finished`); read back, its bytes match the marker. list-backups itself is not asked: it
//! lists only the app's current path, and fails on an empty one.

use crate::components::check::{problem, Mode, Problem, Verification};
use crate::juju::JujuCli;
use crate::repository::Statefile;
use crate::retry::{retry, retry_blocking};
use crate::storage::{Store, TapWriter};

pub(crate) async fn check(
    juju: Option<&JujuCli>,
    repo: &Store,
    sf: &Statefile,
    mode: Mode,
    v: &mut Verification,
) {
    // A copy's mysql-k8s backups are in this repository: no juju needed to reach them.
    let (copied, live): (Vec<_>, Vec<_>) = sf
        .components
        .mysql
        .iter()
        .cloned()
        .partition(|m| m.copied_to.is_some());
    for m in &copied {
        v.objects_checked += 1;
        let at = |key: &str| format!("{}/{key}", m.copied_to.as_deref().unwrap_or_default());
        let store = match m.copied_to.as_deref().map(|p| repo.under(p)) {
            Some(Ok(s)) => s,
            Some(Err(e)) => {
                v.problems
                    .push(problem(&m.app, &m.backup_id, e.to_string()));
                continue;
            }
            None => continue,
        };
        let marker = format!("{}.md5", m.backup_id);
        for (key, size) in &m.objects {
            match retry(crate::retry::ATTEMPTS, key, || store.head(key)).await {
                Ok(Some(o)) if o.size == *size => {}
                Ok(Some(o)) => v.problems.push(problem(
                    &m.app,
                    &at(key),
                    format!("{} bytes, the statefile records {size}", o.size),
                )),
                Ok(None) => v.problems.push(problem(&m.app, &at(key), "missing")),
                Err(e) => v.problems.push(problem(&m.app, &at(key), e.to_string())),
            }
        }
        match retry(crate::retry::ATTEMPTS, &marker, || store.get_bytes(&marker)).await {
            Ok(bytes) if mode.reads_data() => {
                if let Err(e) = check_md5(&store, &m.backup_id, &bytes).await {
                    v.problems.push(problem(&m.app, &at(&m.backup_id), e));
                }
            }
            Ok(_) => {}
            Err(e) => v
                .problems
                .push(problem(&m.app, &at(&marker), e.to_string())),
        }
    }
    if live.is_empty() {
        return;
    }
    let Some(juju) = juju else {
        for m in &live {
            v.problems.push(problem(
                &m.app,
                &m.backup_id,
                "not checked: no juju client to ask mysql-k8s (install juju and select the model)",
            ));
        }
        return;
    };
    let (cli, repo, caps) = (juju.clone(), repo.clone(), live.clone());
    let found = tokio::task::spawn_blocking(move || -> Vec<Problem> {
        let mut out = vec![];
        let status = match retry_blocking(crate::retry::ATTEMPTS, "juju status", || cli.status()) {
            Ok(s) => s,
            Err(e) => {
                return caps
                    .iter()
                    .map(|m| problem(&m.app, &m.backup_id, format!("cannot check: {e}")))
                    .collect()
            }
        };
        for m in &caps {
            if !status.applications.contains_key(&m.app) {
                out.push(problem(
                    &m.app,
                    &m.backup_id,
                    "the application is not in the model",
                ));
                continue;
            }
            // At the place the backup was written, which may no longer be the app's path.
            let md5_key = format!("{}.md5", m.backup_id);
            let store = match super::capture_store(&cli, &repo, m) {
                Ok(store) => store,
                Err(e) => {
                    out.push(problem(&m.app, &m.backup_id, e));
                    continue;
                }
            };
            let rt = tokio::runtime::Handle::current();
            match rt.block_on(store.get_bytes(&md5_key)) {
                Ok(marker) if mode.reads_data() => {
                    if let Err(e) = rt.block_on(check_md5(&store, &m.backup_id, &marker)) {
                        out.push(problem(&m.app, &m.backup_id, e));
                    }
                }
                Ok(_) => {}
                Err(e) => out.push(problem(
                    &m.app,
                    &format!("{}/{md5_key}", m.location),
                    format!("the .md5 marker (mysql-k8s writes it when a backup finishes): {e}"),
                )),
            }
        }
        out
    })
    .await
    .expect("mysql checks");
    v.objects_checked += live.len() as u64;
    v.problems.extend(found);
}

/// Backup `id`'s stream read whole (retried on transient errors) and its md5 compared with
/// the `.md5` marker's content; the error says which differs, or what could not be read.
pub(super) async fn check_md5(store: &Store, id: &str, marker: &[u8]) -> Result<(), String> {
    let want = String::from_utf8_lossy(marker)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string();
    let got = crate::retry::retry(crate::retry::ATTEMPTS, id, || md5_of(store, id))
        .await
        .map_err(|e| format!("reading the backup: {e}"))?;
    if got != want {
        return Err(format!(
            "md5 {got} differs from its .md5 marker {want}: the stream is damaged"
        ));
    }
    Ok(())
}

async fn md5_of(store: &Store, key: &str) -> Result<String, crate::storage::StoreError> {
    let mut ctx = md5::Context::new();
    {
        let mut sink = TapWriter::new(tokio::io::sink(), |b: &[u8]| ctx.consume(b));
        store.get_stream(key, &mut sink).await?;
    }
    Ok(format!("{:x}", ctx.compute()))
}
