//! The ML Metadata database: `/data/mlmd.db` in pod `mlmd-0`. Captured by streaming the file
//! out through exec (the manual procedure installs sqlite3 inside the container and needs the
//! internet; we need neither), checking it locally with SQLite, compressing it with zstd and
//! uploading it with its content hash.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use rusqlite::{Connection, OpenFlags};
use sha2::{Digest, Sha256};

use crate::catalog::{self, MlmdCapture};
use crate::kube::{Cluster, KubeError};
use crate::retry::retry;
use crate::store::{Store, StoreError};

pub const DB_PATH: &str = "/data/mlmd.db";
/// CKF 1.9+ first, then CKF 1.8's name.
pub const CONTAINERS: &[&str] = &["mlmd-grpc-server", "mlmd"];
/// zstd level: fast, and SQLite pages compress well even at low levels.
const ZSTD_LEVEL: i32 = 3;

#[derive(Debug, thiserror::Error)]
pub enum MlmdError {
    #[error("MLMD: {0}")]
    Kube(#[from] KubeError),
    #[error("MLMD: uploading the database: {0}")]
    Store(#[from] StoreError),
    #[error("MLMD: the copied database fails SQLite's integrity check: {0}")]
    Corrupt(String),
    #[error("MLMD: the copied file is not an ML Metadata database ({0})")]
    NotMlmd(String),
    #[error("MLMD: local spool {path}: {source}")]
    Spool {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// What SQLite says about a database file: `PRAGMA integrity_check` and row counts per table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inspection {
    pub integrity: String,
    pub row_counts: BTreeMap<String, i64>,
    pub schema_version: Option<i64>,
}

pub fn inspect(path: &Path) -> Result<Inspection, MlmdError> {
    let db = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| MlmdError::NotMlmd(e.to_string()))?;
    let integrity: String = db
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .map_err(|e| MlmdError::Corrupt(e.to_string()))?;
    if integrity != "ok" {
        return Err(MlmdError::Corrupt(integrity));
    }
    let tables: Vec<String> = db
        .prepare("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name")
        .and_then(|mut st| st.query_map([], |r| r.get(0))?.collect())
        .map_err(|e| MlmdError::NotMlmd(e.to_string()))?;
    if !tables.iter().any(|t| t == "Artifact") || !tables.iter().any(|t| t == "Execution") {
        return Err(MlmdError::NotMlmd(format!(
            "tables {tables:?} lack Artifact and Execution"
        )));
    }
    let mut row_counts = BTreeMap::new();
    for t in &tables {
        let n: i64 = db
            .query_row(
                &format!("SELECT COUNT(*) FROM \"{}\"", t.replace('"', "\"\"")),
                [],
                |r| r.get(0),
            )
            .map_err(|e| MlmdError::Corrupt(e.to_string()))?;
        row_counts.insert(t.clone(), n);
    }
    let schema_version = db
        .query_row("SELECT schema_version FROM MLMDEnv", [], |r| r.get(0))
        .ok();
    Ok(Inspection {
        integrity,
        row_counts,
        schema_version,
    })
}

fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h)?;
    Ok(hex::encode(h.finalize()))
}

/// Copies the database out of the pod into `spool`, checks it, compresses it and uploads it as
/// the backup's `mlmd.db.zst`.
pub async fn capture(
    cluster: &Cluster,
    pod: &str,
    container: Option<&str>,
    spool: &Path,
    store: &Store,
    backup_id: &str,
) -> Result<MlmdCapture, MlmdError> {
    let container = match container {
        Some(c) => c.to_string(),
        None => cluster.pick_container(pod, CONTAINERS).await?,
    };
    let spool_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| MlmdError::Spool {
            path: path.clone(),
            source,
        }
    };
    let raw = spool.join(format!("{backup_id}-mlmd.db"));
    let size = retry(3, DB_PATH, || async {
        let mut f = tokio::fs::File::create(&raw)
            .await
            .map_err(KubeError::Local)?;
        cluster.copy_out(pod, &container, DB_PATH, &mut f).await
    })
    .await?;
    tracing::info!(pod, container = %container, size, "copied {DB_PATH}");

    let (raw2, zst) = (raw.clone(), spool.join(format!("{backup_id}-mlmd.db.zst")));
    let zst2 = zst.clone();
    let (inspection, sha256, compressed_size) =
        tokio::task::spawn_blocking(move || -> Result<_, MlmdError> {
            let inspection = inspect(&raw2)?;
            let sha = sha256_file(&raw2).map_err(spool_err(&raw2))?;
            let input = std::fs::File::open(&raw2).map_err(spool_err(&raw2))?;
            let output = std::fs::File::create(&zst2).map_err(spool_err(&zst2))?;
            zstd::stream::copy_encode(input, output, ZSTD_LEVEL).map_err(spool_err(&zst2))?;
            let compressed = std::fs::metadata(&zst2).map_err(spool_err(&zst2))?.len();
            Ok((inspection, sha, compressed))
        })
        .await
        .expect("inspection task")?;

    let key = catalog::mlmd_key(backup_id);
    let mut f = tokio::fs::File::open(&zst).await.map_err(spool_err(&zst))?;
    store.put_stream(&key, &mut f, "application/zstd").await?;
    let _ = tokio::fs::remove_file(&raw).await;
    let _ = tokio::fs::remove_file(&zst).await;
    Ok(MlmdCapture {
        key,
        size,
        compressed_size,
        sha256,
        integrity_check: inspection.integrity,
        row_counts: inspection.row_counts,
        container,
    })
}

/// Downloads a captured database, decompresses it into `dest` and checks it against what the
/// capture recorded: content hash, integrity, row counts.
pub async fn fetch_and_verify(
    store: &Store,
    capture: &MlmdCapture,
    dest: &Path,
) -> Result<Inspection, String> {
    let zst = dest.with_extension("zst.download");
    let mut f = tokio::fs::File::create(&zst)
        .await
        .map_err(|e| format!("{}: {e}", zst.display()))?;
    store
        .get_stream(&capture.key, &mut f)
        .await
        .map_err(|e| e.to_string())?;
    drop(f);
    let (zst2, dest2) = (zst.clone(), dest.to_path_buf());
    let expected = capture.clone();
    tokio::task::spawn_blocking(move || {
        let input = std::fs::File::open(&zst2).map_err(|e| e.to_string())?;
        let output = std::fs::File::create(&dest2).map_err(|e| e.to_string())?;
        zstd::stream::copy_decode(input, output)
            .map_err(|e| format!("{}: not a valid zstd stream: {e}", expected.key))?;
        let _ = std::fs::remove_file(&zst2);
        let sha = sha256_file(&dest2).map_err(|e| e.to_string())?;
        if sha != expected.sha256 {
            return Err(format!(
                "{}: content hash {sha} differs from the recorded {}",
                expected.key, expected.sha256
            ));
        }
        let ins = inspect(&dest2).map_err(|e| e.to_string())?;
        if ins.row_counts != expected.row_counts {
            return Err(format!(
                "{}: row counts {:?} differ from the recorded {:?}",
                expected.key, ins.row_counts, expected.row_counts
            ));
        }
        Ok(ins)
    })
    .await
    .map_err(|e| e.to_string())?
}

/// Puts a checked database file back into the pod: streamed to a temporary path beside the live
/// one, size-checked, then swapped in by a rename (atomic), the previous file and any WAL or
/// journal kept as `*.before-<tag>` (a stale WAL next to a restored database would corrupt it),
/// and the pod restarted so MLMD opens the restored file.
pub async fn restore(
    cluster: &Cluster,
    pod: &str,
    container: &str,
    local: &Path,
    tag: &str,
    pod_timeout: std::time::Duration,
) -> Result<(), MlmdError> {
    let size = tokio::fs::metadata(local)
        .await
        .map_err(|source| MlmdError::Spool {
            path: local.to_path_buf(),
            source,
        })?
        .len();
    let tmp = format!("{DB_PATH}.restoring-{tag}");
    let mut f = tokio::fs::File::open(local)
        .await
        .map_err(|source| MlmdError::Spool {
            path: local.to_path_buf(),
            source,
        })?;
    cluster.copy_in(pod, container, &tmp, &mut f, size).await?;
    let swap = format!(
        "set -e; cd /data; \
         if [ -e mlmd.db ]; then ln -f mlmd.db mlmd.db.before-{tag} 2>/dev/null || cp -p mlmd.db mlmd.db.before-{tag}; fi; \
         for s in -wal -shm -journal; do if [ -e mlmd.db$s ]; then mv -f mlmd.db$s mlmd.db$s.before-{tag}; fi; done; \
         mv -f mlmd.db.restoring-{tag} mlmd.db"
    );
    cluster.run(pod, container, &["sh", "-c", &swap]).await?;
    cluster.restart_pod(pod, pod_timeout).await?;
    Ok(())
}
