//! The ML Metadata database: `/data/mlmd.db` in pod `mlmd-0`. Captured by streaming the file
//! out through exec (the manual procedure installs sqlite3 inside the container and needs the
//! internet; we need neither), checking it locally with SQLite, compressing it with zstd and
//! uploading it with its content hash.

mod drill;
mod verify;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use rusqlite::{Connection, OpenFlags};
use sha2::{Digest, Sha256};

pub use drill::{drill, MlmdDrill};

use crate::kube::{Cluster, KubeError};
use crate::repository::{self, MlmdCapture};
use crate::retry::retry;
use crate::storage::{Store, StoreError};

pub const DB_PATH: &str = "/data/mlmd.db";
/// CKF 1.9+ first, then CKF 1.8's name.
pub const CONTAINERS: &[&str] = &["mlmd-grpc-server", "mlmd"];
/// zstd level 1: compression is most of a capture's CPU, and on MLMD pages level 1 is about 40%
/// faster than the default 3 for about 3% more bytes (BENCHMARKS.md).
const ZSTD_LEVEL: i32 = 1;

/// How hard SQLite looks at a database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// `PRAGMA quick_check`: every page, b-tree and record, in linear time; at capture, where
    /// it runs beside the upload and the bytes are hashed anyway.
    Quick,
    /// `PRAGMA integrity_check`: also that every index matches its table (N log N); for
    /// verify-backup --read-data and downloads.
    Full,
}

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

impl crate::retry::Retryable for MlmdError {
    /// The upload of a checked copy can be tried again from the copy; a corrupt database cannot.
    fn is_retryable(&self) -> bool {
        match self {
            MlmdError::Store(e) => e.is_retryable(),
            MlmdError::Kube(e) => crate::retry::Retryable::is_retryable(e),
            _ => false,
        }
    }
}

/// What SQLite says about a database file: `PRAGMA integrity_check` and row counts per table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inspection {
    pub integrity: String,
    pub row_counts: BTreeMap<String, i64>,
    pub schema_version: Option<i64>,
}

pub fn inspect(path: &Path, check: Check) -> Result<Inspection, MlmdError> {
    let db = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| MlmdError::NotMlmd(e.to_string()))?;
    let integrity: String = db
        .query_row(
            match check {
                Check::Quick => "PRAGMA quick_check",
                Check::Full => "PRAGMA integrity_check",
            },
            [],
            |r| r.get(0),
        )
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

/// What [`pack_and_upload`] made of a database file.
#[derive(Debug, Clone)]
pub struct Packed {
    pub inspection: Inspection,
    /// Of the database file as copied (uncompressed).
    pub sha256: String,
    pub compressed_size: u64,
}

/// Checks a copied database file with SQLite, compresses it with zstd and uploads it as `key`,
/// all at once: one thread reads the file once, hashing and compressing it into the upload,
/// while another has SQLite check it. The upload completes only if the check passes, so a
/// database that fails it is never stored.
pub async fn pack_and_upload(raw: &Path, store: &Store, key: &str) -> Result<Packed, MlmdError> {
    let spool_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| MlmdError::Spool {
            path: path.clone(),
            source,
        }
    };
    let raw2 = raw.to_path_buf();
    let checked = tokio::task::spawn_blocking(move || inspect(&raw2, Check::Quick));
    let (pipe_w, mut pipe_r) = tokio::io::duplex(1 << 20);
    let raw3 = raw.to_path_buf();
    let packer = tokio::task::spawn_blocking(move || -> std::io::Result<(String, u64)> {
        use std::io::{Read, Write};
        let mut input = std::fs::File::open(&raw3)?;
        let counted = CountingWriter {
            inner: tokio_util::io::SyncIoBridge::new(pipe_w),
            count: 0,
        };
        let mut z = zstd::stream::Encoder::new(counted, ZSTD_LEVEL)?;
        let mut h = Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = input.read(&mut buf)?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
            z.write_all(&buf[..n])?;
        }
        let mut counted = z.finish()?;
        counted.flush()?;
        counted.inner.shutdown()?;
        Ok((hex::encode(h.finalize()), counted.count))
    });
    let outcome = std::sync::Mutex::new(None);
    let verdict = async {
        let result = checked.await.expect("inspection task");
        let passed = result.as_ref().map(|_| ()).map_err(|e| StoreError::Fatal {
            op: "put",
            key: key.to_string(),
            detail: format!("not stored: {e}"),
        });
        *outcome.lock().expect("outcome") = Some(result);
        passed
    };
    let put = store
        .put_object_verified(
            key,
            &mut pipe_r,
            None,
            "application/zstd",
            &Default::default(),
            verdict,
        )
        .await;
    drop(pipe_r);
    let packed = packer.await.expect("packing task");
    let inspection = outcome.lock().expect("outcome").take();
    // The check's own error says more than the refused upload.
    let inspection = match inspection {
        Some(r) => r?,
        None => {
            put?;
            unreachable!("a finished upload has its verdict")
        }
    };
    let (sha256, compressed_size) = packed.map_err(spool_err(raw))?;
    put?;
    Ok(Packed {
        inspection,
        sha256,
        compressed_size,
    })
}

/// Counts what passes through, for the compressed size.
struct CountingWriter<W> {
    inner: W,
    count: u64,
}

impl<W: std::io::Write> std::io::Write for CountingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.count += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
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
    // Removed when this ends however it ends: an error, or another part's failure cancelling
    // this one, must not leave a database copy in the operator's --spool.
    let path = spool.join(format!("{backup_id}-mlmd.db"));
    let raw = tempfile::TempPath::try_from_path(&path)
        .map_err(|source| MlmdError::Spool { path, source })?;
    let size = retry(crate::retry::ATTEMPTS, DB_PATH, || async {
        let mut f = tokio::fs::File::create(&raw)
            .await
            .map_err(KubeError::Local)?;
        let size = cluster.copy_out(pod, &container, DB_PATH, &mut f).await?;
        use tokio::io::AsyncWriteExt;
        f.flush().await.map_err(KubeError::Local)?;
        Ok::<_, KubeError>(size)
    })
    .await?;
    tracing::info!(pod, container = %container, size, "copied {DB_PATH}");

    let key = repository::mlmd_key(backup_id);
    let packed = retry(crate::retry::ATTEMPTS, &key, || {
        pack_and_upload(&raw, store, &key)
    })
    .await;
    drop(raw);
    let Packed {
        inspection,
        sha256,
        compressed_size,
    } = packed?;
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

/// Downloads a captured database and decompresses it into `dest`; the content hash of what it
/// decompressed to.
pub async fn fetch(store: &Store, capture: &MlmdCapture, dest: &Path) -> Result<String, String> {
    let zst = dest.with_extension("zst.download");
    let mut f = tokio::fs::File::create(&zst)
        .await
        .map_err(|e| format!("{}: {e}", zst.display()))?;
    store
        .get_stream(&capture.key, &mut f)
        .await
        .map_err(|e| format!("downloading into {}: {e}", zst.display()))?;
    drop(f);
    let (zst2, dest2, key) = (zst.clone(), dest.to_path_buf(), capture.key.clone());
    tokio::task::spawn_blocking(move || {
        let input = std::fs::File::open(&zst2).map_err(|e| e.to_string())?;
        let output = std::fs::File::create(&dest2).map_err(|e| e.to_string())?;
        let decoded = zstd::stream::copy_decode(input, output)
            .map_err(|e| format!("{key}: not a valid zstd stream: {e}"));
        let _ = std::fs::remove_file(&zst2);
        decoded?;
        sha256_file(&dest2).map_err(|e| e.to_string())
    })
    .await
    .map_err(|e| e.to_string())?
}

/// Downloads a captured database, decompresses it into `dest` and checks it against what the
/// capture recorded: content hash, integrity, row counts.
pub async fn fetch_and_verify(
    store: &Store,
    capture: &MlmdCapture,
    dest: &Path,
) -> Result<Inspection, String> {
    let sha = fetch(store, capture, dest).await?;
    if sha != capture.sha256 {
        return Err(format!(
            "{}: content hash {sha} differs from the recorded {}",
            capture.key, capture.sha256
        ));
    }
    let (dest2, expected) = (dest.to_path_buf(), capture.clone());
    tokio::task::spawn_blocking(move || {
        let ins = inspect(&dest2, Check::Full).map_err(|e| e.to_string())?;
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

/// The ML Metadata database as a [`Part`](crate::components::Part).
pub struct Mlmd;

#[async_trait::async_trait(?Send)]
impl crate::components::Part for Mlmd {
    fn held(&self, sf: &crate::repository::Statefile) -> bool {
        sf.components.mlmd.is_some()
    }

    async fn check(
        &self,
        cx: &crate::components::check::CheckContext<'_>,
        sf: &crate::repository::Statefile,
        v: &mut crate::components::check::Verification,
    ) {
        verify::check(cx.dest, sf, cx.mode, cx.spool, v).await
    }
}
