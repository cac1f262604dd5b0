//! MLMD's part of a restore drill: the dump restored into a scratch file as a restore would
//! write it, then opened by SQLite: its content hash, `PRAGMA integrity_check`, and the row
//! count of every table against the statefile. Each difference is named (the table, the
//! counts), and the checks go on after the first one fails, so a report shows them all.

use std::path::Path;

use serde::Serialize;

use super::{fetch, inspect, Check};
use crate::components::check::{problem, Findings};
use crate::repository::MlmdCapture;

/// What the MLMD drill restored and found.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct MlmdDrill {
    /// Bytes of the restored database file.
    pub bytes: u64,
    pub integrity_check: String,
    pub tables: u64,
    pub rows: i64,
}

/// Restores `cap` into `scratch/mlmd.db` and checks it; what is wrong goes into `found`.
pub async fn drill(
    repo: &crate::storage::Store,
    cap: &MlmdCapture,
    scratch: &Path,
    found: &mut Findings,
) -> MlmdDrill {
    let mut out = MlmdDrill::default();
    let db = scratch.join("mlmd.db");
    let sha = match fetch(repo, cap, &db).await {
        Ok(sha) => sha,
        Err(e) => {
            found.push(problem("mlmd", &cap.key, format!("not restored: {e}")));
            return out;
        }
    };
    out.bytes = std::fs::metadata(&db).map(|m| m.len()).unwrap_or(0);
    if sha != cap.sha256 {
        found.push(problem(
            "mlmd",
            &cap.key,
            format!(
                "the restored database hashes to {sha}, the statefile records {}",
                cap.sha256
            ),
        ));
    }
    let db2 = db.clone();
    let inspected = tokio::task::spawn_blocking(move || inspect(&db2, Check::Full))
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r.map_err(|e| e.to_string()));
    let ins = match inspected {
        Ok(ins) => ins,
        Err(e) => {
            found.push(problem("mlmd", &cap.key, e));
            return out;
        }
    };
    out.integrity_check = ins.integrity.clone();
    out.tables = ins.row_counts.len() as u64;
    out.rows = ins.row_counts.values().sum();
    let tables: std::collections::BTreeSet<&String> =
        ins.row_counts.keys().chain(cap.row_counts.keys()).collect();
    for t in tables {
        match (ins.row_counts.get(t), cap.row_counts.get(t)) {
            (Some(got), Some(want)) if got == want => {}
            (Some(got), Some(want)) => found.push(problem(
                "mlmd",
                &cap.key,
                format!("table {t}: {got} rows restored, the statefile records {want}"),
            )),
            (None, Some(want)) => found.push(problem(
                "mlmd",
                &cap.key,
                format!("table {t} ({want} rows recorded) is missing from the restored database"),
            )),
            (Some(got), None) => found.push(problem(
                "mlmd",
                &cap.key,
                format!(
                    "table {t} ({got} rows) is in the restored database but not in the statefile"
                ),
            )),
            (None, None) => {}
        }
    }
    out
}
