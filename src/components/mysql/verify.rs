//! The databases' part of a check: each mysql-k8s backup has its `.md5` marker and is
//! `finished` in the charm's own list; read back, its bytes match the marker.

use crate::components::check::{problem, Mode, Problem, Verification};
use crate::juju::JujuCli;
use crate::repository::Statefile;
use crate::retry::retry_blocking;
use crate::storage::{Store, TapWriter};

pub(crate) async fn check(
    juju: Option<&JujuCli>,
    sf: &Statefile,
    mode: Mode,
    v: &mut Verification,
) {
    let Some(juju) = juju else {
        for m in &sf.components.mysql {
            v.problems.push(problem(
                &m.app,
                &m.backup_id,
                "not checked: no juju client to ask mysql-k8s (install juju and select the model)",
            ));
        }
        return;
    };
    let (cli, caps) = (juju.clone(), sf.components.mysql.clone());
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
            let Some(unit) = status
                .applications
                .get(&m.app)
                .and_then(|a| a.units.keys().next().cloned())
            else {
                out.push(problem(
                    &m.app,
                    &m.backup_id,
                    "the application has no unit to ask",
                ));
                continue;
            };
            let md5_key = format!("{}.md5", m.backup_id);
            match super::backup_store(&cli, &m.app, &unit) {
                Ok(store) => {
                    let rt = tokio::runtime::Handle::current();
                    match rt.block_on(store.get_bytes(&md5_key)) {
                        Ok(marker) if mode.reads_data() => {
                            let want = String::from_utf8_lossy(&marker)
                                .split_whitespace()
                                .next()
                                .unwrap_or_default()
                                .to_string();
                            match rt.block_on(md5_of(&store, &m.backup_id)) {
                                Ok(got) if got == want => {}
                                Ok(got) => out.push(problem(
                                    &m.app,
                                    &m.backup_id,
                                    format!("md5 {got} differs from its .md5 marker {want}"),
                                )),
                                Err(e) => out.push(problem(&m.app, &m.backup_id, e)),
                            }
                        }
                        Ok(_) => {}
                        Err(e) => out.push(problem(
                            &m.app,
                            &format!("{}/{md5_key}", m.location),
                            format!("the .md5 marker: {e}"),
                        )),
                    }
                }
                Err(e) => out.push(problem(&m.app, &m.backup_id, e.to_string())),
            }
            match super::list_backups(&cli, &m.app, &unit, "5m") {
                Ok(rows) => match rows.iter().find(|r| r.id == m.backup_id) {
                    Some(r) if r.status == "finished" => {}
                    Some(r) => out.push(problem(
                        &m.app,
                        &m.backup_id,
                        format!("mysql-k8s lists it as {:?}, not finished", r.status),
                    )),
                    None => out.push(problem(
                        &m.app,
                        &m.backup_id,
                        "mysql-k8s's list-backups does not show it",
                    )),
                },
                Err(e) => out.push(problem(&m.app, &m.backup_id, e.to_string())),
            }
        }
        out
    })
    .await
    .expect("mysql checks");
    v.objects_checked += sf.components.mysql.len() as u64;
    v.problems.extend(found);
}

async fn md5_of(store: &Store, key: &str) -> Result<String, String> {
    let mut ctx = md5::Context::new();
    let mut sink = TapWriter::new(tokio::io::sink(), |b: &[u8]| ctx.consume(b));
    store
        .get_stream(key, &mut sink)
        .await
        .map_err(|e| format!("reading the backup: {e}"))?;
    Ok(format!("{:x}", ctx.compute()))
}
