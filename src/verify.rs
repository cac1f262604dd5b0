//! `verify-backup`: proves a backup can restore, before anyone needs it.
//!
//! Light: the statefile is intact and `completed`; every object it names is there with its
//! size; the mysql-k8s backups it names have their `.md5` marker and are `finished` in the
//! charm's own list. `--read-data` also reads everything back: every blob against its content
//! hash, the MLMD dump decompressed and opened by SQLite with the recorded row counts, each
//! mysql backup against its `.md5`. Each problem is named by component and object key.

use std::collections::HashMap;
use std::path::Path;

use chrono::{DateTime, Utc};
use futures::StreamExt;
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::catalog::{self, CatalogError, Phase, Statefile};
use crate::juju::JujuCli;
use crate::mlmd;
use crate::mlpipeline::Manifest;
use crate::mysql;
use crate::progress::Progress;
use crate::retry::{retry, retry_blocking};
use crate::store::{Store, TapWriter};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    Light,
    ReadData,
}

impl Mode {
    pub fn as_str(&self) -> &'static str {
        match self {
            Mode::Light => "light",
            Mode::ReadData => "read-data",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct Problem {
    pub component: String,
    pub key: String,
    pub detail: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}: {}", self.component, self.key, self.detail)
    }
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct Verification {
    pub backup_id: String,
    pub mode: Mode,
    pub at: DateTime<Utc>,
    pub passed: bool,
    pub problems: Vec<Problem>,
    pub objects_checked: u64,
    pub bytes_read: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("{0}")]
    Catalog(#[from] CatalogError),
}

fn problem(component: &str, key: &str, detail: impl Into<String>) -> Problem {
    Problem {
        component: component.into(),
        key: key.into(),
        detail: detail.into(),
    }
}

/// Verifies backup `id` and records the outcome in its history. A statefile that cannot be
/// read is a failed verification (with nothing to record it in), an unknown id an error.
pub async fn verify(
    dest: &Store,
    juju: Option<&JujuCli>,
    id: &str,
    mode: Mode,
    spool: &Path,
    progress: &Progress,
) -> Result<Verification, VerifyError> {
    let (v, recordable) = check(dest, juju, id, mode, spool, progress).await?;
    if recordable {
        let entry = serde_json::json!({
            "event": "verify",
            "at": v.at,
            "mode": v.mode,
            "outcome": if v.passed { "passed" } else { "failed" },
            "problems": v.problems.len(),
        });
        if let Err(e) = catalog::append_history(dest, id, entry).await {
            progress.warn(format!("recording the verification in the statefile: {e}"));
        }
    }
    Ok(v)
}

/// The verification, and whether the statefile is sound enough to record it in.
async fn check(
    dest: &Store,
    juju: Option<&JujuCli>,
    id: &str,
    mode: Mode,
    spool: &Path,
    progress: &Progress,
) -> Result<(Verification, bool), VerifyError> {
    if !catalog::is_backup_id(id) {
        return Err(CatalogError::BadId { id: id.into() }.into());
    }
    let mut v = Verification {
        backup_id: id.into(),
        mode,
        at: Utc::now(),
        passed: false,
        problems: vec![],
        objects_checked: 0,
        bytes_read: 0,
    };
    let sf = match catalog::load(dest, id).await {
        Ok(sf) => sf,
        Err(e @ CatalogError::NoSuchBackup { .. }) => return Err(e.into()),
        Err(e @ CatalogError::Store(_)) => return Err(e.into()),
        Err(e) => {
            v.problems.push(problem(
                "statefile",
                &catalog::statefile_key(id),
                e.to_string(),
            ));
            return Ok((v, false));
        }
    };
    progress.step("verify", format!("backup {id} ({})", mode.as_str()));
    let sf_key = catalog::statefile_key(id);
    if sf.checksum_ok() == Some(false) {
        v.problems.push(problem(
            "statefile",
            &sf_key,
            "its checksum does not match its content: it was edited or corrupted after it was written",
        ));
    }
    if sf.phase != Phase::Completed {
        v.problems.push(problem(
            "statefile",
            &sf_key,
            format!(
                "the backup is {}, not completed: it cannot be restored",
                sf.phase.as_str()
            ),
        ));
    }
    check_mlmd(dest, &sf, mode, spool, &mut v).await;
    check_mlpipeline(dest, &sf, mode, progress, &mut v).await;
    if !sf.components.mysql.is_empty() {
        check_mysql(juju, &sf, mode, &mut v).await;
    }
    v.passed = v.problems.is_empty();
    Ok((v, true))
}

async fn check_mlmd(dest: &Store, sf: &Statefile, mode: Mode, spool: &Path, v: &mut Verification) {
    let Some(m) = &sf.components.mlmd else {
        return;
    };
    v.objects_checked += 1;
    match retry(crate::retry::ATTEMPTS, &m.key, || dest.head(&m.key)).await {
        Ok(Some(o)) if o.size == m.compressed_size => {}
        Ok(Some(o)) => {
            v.problems.push(problem(
                "mlmd",
                &m.key,
                format!(
                    "{} bytes, the statefile records {}",
                    o.size, m.compressed_size
                ),
            ));
            return;
        }
        Ok(None) => {
            v.problems.push(problem("mlmd", &m.key, "missing"));
            return;
        }
        Err(e) => {
            v.problems.push(problem("mlmd", &m.key, e.to_string()));
            return;
        }
    }
    if mode == Mode::ReadData {
        let tmp = match tempfile::Builder::new()
            .prefix("verify-mlmd-")
            .tempdir_in(spool)
        {
            Ok(t) => t,
            Err(e) => {
                v.problems
                    .push(problem("mlmd", &m.key, format!("spool: {e}")));
                return;
            }
        };
        v.bytes_read += m.compressed_size;
        if let Err(e) = mlmd::fetch_and_verify(dest, m, &tmp.path().join("mlmd.db")).await {
            v.problems.push(problem("mlmd", &m.key, e));
        }
    }
}

/// A blob's hash and what reading it gave: (bytes, content hash) or the error.
type BlobRead = (String, Result<(u64, String), String>);

async fn check_mlpipeline(
    dest: &Store,
    sf: &Statefile,
    mode: Mode,
    progress: &Progress,
    v: &mut Verification,
) {
    let Some(p) = &sf.components.mlpipeline else {
        return;
    };
    let key = &p.manifest_key;
    v.objects_checked += 1;
    let bytes = match retry(crate::retry::ATTEMPTS, key, || dest.get_bytes(key)).await {
        Ok(b) => b,
        Err(e) => {
            v.problems.push(problem("mlpipeline", key, e.to_string()));
            return;
        }
    };
    if hex::encode(Sha256::digest(&bytes)) != p.manifest_sha256 {
        v.problems.push(problem(
            "mlpipeline",
            key,
            "the manifest's content hash differs from the statefile's",
        ));
        return;
    }
    let manifest = match Manifest::parse(key, &bytes) {
        Ok(m) => m,
        Err(e) => {
            v.problems.push(problem("mlpipeline", key, e));
            return;
        }
    };
    // One listing of the blobs instead of a HEAD per object.
    let prefix = format!("{}/blobs/", catalog::REPO);
    let blobs: HashMap<String, u64> =
        match retry(crate::retry::ATTEMPTS, &prefix, || dest.list(&prefix)).await {
            Ok(l) => l.into_iter().map(|o| (o.key, o.size)).collect(),
            Err(e) => {
                v.problems
                    .push(problem("mlpipeline", &prefix, e.to_string()));
                return;
            }
        };
    let mut unique: HashMap<&str, (u64, &str)> = HashMap::new();
    for e in &manifest.entries {
        unique
            .entry(e.sha256.as_str())
            .or_insert((e.size, e.key.as_str()));
    }
    for (sha, (size, obj)) in &unique {
        v.objects_checked += 1;
        let blob = catalog::blob_key(sha);
        match blobs.get(&blob) {
            None => v.problems.push(problem(
                "mlpipeline",
                &blob,
                format!("missing (object {obj})"),
            )),
            Some(s) if s != size => v.problems.push(problem(
                "mlpipeline",
                &blob,
                format!("{s} bytes, object {obj} has {size}"),
            )),
            _ => {}
        }
    }
    if mode == Mode::ReadData {
        progress.step("verify", format!("reading {} blobs back", unique.len()));
        let results: Vec<BlobRead> =
            futures::stream::iter(unique.keys().map(|sha| sha.to_string()))
                .map(|sha| async move {
                    let blob = catalog::blob_key(&sha);
                    let mut h = Sha256::new();
                    let mut sink = TapWriter::new(tokio::io::sink(), |b: &[u8]| h.update(b));
                    let r = dest.get_stream(&blob, &mut sink).await;
                    (
                        sha,
                        r.map(|n| (n, hex::encode(h.finalize())))
                            .map_err(|e| e.to_string()),
                    )
                })
                .buffer_unordered(8)
                .collect()
                .await;
        for (sha, r) in results {
            let blob = catalog::blob_key(&sha);
            match r {
                Ok((n, got)) => {
                    v.bytes_read += n;
                    if got != sha {
                        v.problems.push(problem(
                            "mlpipeline",
                            &blob,
                            format!("content hash is {got}: the blob is corrupted"),
                        ));
                    }
                }
                // A missing blob was reported by the listing already.
                Err(e) if blobs.contains_key(&blob) => {
                    v.problems.push(problem("mlpipeline", &blob, e))
                }
                Err(_) => {}
            }
        }
    }
}

async fn check_mysql(juju: Option<&JujuCli>, sf: &Statefile, mode: Mode, v: &mut Verification) {
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
            match mysql::backup_store(&cli, &m.app, &unit) {
                Ok(store) => {
                    let rt = tokio::runtime::Handle::current();
                    match rt.block_on(store.get_bytes(&md5_key)) {
                        Ok(marker) if mode == Mode::ReadData => {
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
            match mysql::list_backups(&cli, &m.app, &unit, "5m") {
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

/// The verification as text: the verdict, then each problem.
pub fn render(v: &Verification) -> String {
    let mut o = format!(
        "backup {} {} verification: {} ({} objects checked, {} read)\n",
        v.backup_id,
        v.mode.as_str(),
        if v.passed { "PASSED" } else { "FAILED" },
        v.objects_checked,
        catalog::human_bytes(v.bytes_read)
    );
    for p in &v.problems {
        o.push_str(&format!("  {p}\n"));
    }
    o
}
