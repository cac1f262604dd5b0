//! `verify-backup`: proves a backup can restore, before anyone needs it.
//!
//! Light: the statefile is intact and `completed`; every object it names is there with its
//! size; the mysql-k8s backups it names have their `.md5` marker and are `finished` in the
//! charm's own list. `--read-data` also reads everything back: every blob against its content
//! hash, the MLMD dump decompressed and opened by SQLite with the recorded row counts, each
//! mysql backup against its `.md5`. Each problem is named by component and object key.

use std::path::Path;

use crate::components::check::{problem, CheckContext};
pub use crate::components::check::{Mode, Problem, Sample, Verification};
use crate::components::PARTS;
use crate::context::Streaming;
use crate::juju::JujuCli;
use crate::progress::Progress;
use crate::repository::{self, CatalogError, Phase};
use crate::storage::Store;

#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("{0}")]
    Catalog(#[from] CatalogError),
}

/// Verifies backup `id` and records the outcome in its history. A statefile that cannot be
/// read is a failed verification (with nothing to record it in), an unknown id an error.
pub async fn verify(
    dest: &Store,
    juju: Option<&JujuCli>,
    id: &str,
    mode: Mode,
    spool: &Path,
    streaming: Streaming,
    progress: &Progress,
) -> Result<Verification, VerifyError> {
    let (v, recordable) = check(dest, juju, id, mode, spool, streaming, progress).await?;
    if recordable {
        let mut entry = serde_json::json!({
            "event": "verify",
            "at": v.at,
            "mode": v.mode,
            "outcome": if v.passed { "passed" } else { "failed" },
            "problems": v.problems.len(),
        });
        if let Some(s) = &v.sample {
            entry["sample"] = s.as_str().into();
        }
        if let Err(e) = repository::append_history(dest, id, entry).await {
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
    streaming: Streaming,
    progress: &Progress,
) -> Result<(Verification, bool), VerifyError> {
    if !repository::is_backup_id(id) {
        return Err(CatalogError::BadId { id: id.into() }.into());
    }
    let mut v = Verification::new(id, mode);
    let sf = match repository::load(dest, id).await {
        Ok(sf) => sf,
        Err(e @ CatalogError::NoSuchBackup { .. }) => return Err(e.into()),
        Err(e @ CatalogError::Store(_)) => return Err(e.into()),
        Err(e) => {
            v.problems.push(problem(
                "statefile",
                &repository::statefile_key(id),
                e.to_string(),
            ));
            return Ok((v, false));
        }
    };
    progress.step("verify", format!("backup {id} ({})", mode.as_str()));
    let sf_key = repository::statefile_key(id);
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
    let cx = CheckContext {
        dest,
        juju,
        mode,
        spool,
        streaming,
        progress,
    };
    for part in PARTS {
        if part.held(&sf) {
            part.check(&cx, &sf, &mut v).await;
        }
    }
    v.passed = v.problems.is_empty();
    Ok((v, true))
}

/// The verification as text: the verdict, then each problem.
pub fn render(v: &Verification) -> String {
    let sampled = match &v.sample {
        Some(s) => format!(
            "; a {s} sample of the bucket: {} blobs re-hashed",
            v.blobs_read
        ),
        None => String::new(),
    };
    let mut o = format!(
        "backup {} {} verification: {} ({} objects checked, {} read{sampled})\n",
        v.backup_id,
        v.mode.as_str(),
        if v.passed { "PASSED" } else { "FAILED" },
        v.objects_checked,
        crate::units::human_bytes(v.bytes_read)
    );
    for p in &v.problems {
        o.push_str(&format!("  {p}\n"));
    }
    o
}
