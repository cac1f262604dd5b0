//! Materialising a backup on local disk: to carry it to another site, or to look inside.
//!
//! `DIR/statefile.json`, `DIR/mlmd.db` (decompressed and checked as a restore checks it),
//! `DIR/mlpipeline/<key>` for every object of the manifest (content hash checked), and
//! `DIR/mysql/<app>/<files>` with the mysql-k8s backup objects. A manifest key that would land
//! outside `DIR/mlpipeline` is refused and reported, never written.
//!
//! With `--include` patterns only the mlpipeline objects whose keys match are written (and the
//! statefile): one object of a pack costs one ranged GET of its own bytes, not the pack.

use std::path::{Component as PathPart, Path, PathBuf};
use std::sync::atomic::Ordering;

use futures::TryStreamExt;
use serde::Serialize;
use sha2::Digest;
use tokio::io::AsyncWriteExt;

use crate::components::mlpipeline::packed::{by_pack, checked, read_group, Grouping};
use crate::components::mlpipeline::IN_MEMORY_MAX;
use crate::components::{mlmd, mysql};
use crate::context::Context;
use crate::progress::Event;
use crate::repository::{self, CatalogError, Entry, Phase, Stored};
use crate::storage::StoreError;

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct Refused {
    pub key: String,
    pub why: String,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct DownloadReport {
    pub backup_id: String,
    pub dir: PathBuf,
    pub files: u64,
    pub bytes: u64,
    pub mlmd: Option<PathBuf>,
    pub mlpipeline_objects: u64,
    pub mysql: Vec<String>,
    pub refused: Vec<Refused>,
    pub warnings: Vec<String>,
    /// The `--include` patterns, when the download was limited to them.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub included: Vec<String>,
}

/// Which mlpipeline objects a download writes: those whose keys match one of the patterns.
/// Globs as rclone's filters read them: `*` and `?` stay within one `/`-separated segment,
/// `**` crosses segments, `[...]` is a class, and a pattern ending in `/` takes everything
/// below it. A key with none of these matches only itself.
#[derive(Debug, Clone)]
pub struct Include {
    set: globset::GlobSet,
    patterns: Vec<String>,
}

impl Include {
    pub fn new(patterns: &[String]) -> Result<Include, String> {
        let mut set = globset::GlobSetBuilder::new();
        for p in patterns {
            set.add(Self::glob(p)?);
        }
        Ok(Include {
            set: set.build().map_err(|e| e.to_string())?,
            patterns: patterns.to_vec(),
        })
    }

    /// One pattern, checked (for clap's value parser): the pattern back, or what is wrong with it.
    pub fn parse(pattern: &str) -> Result<String, String> {
        Self::glob(pattern).map(|_| pattern.to_string())
    }

    fn glob(pattern: &str) -> Result<globset::Glob, String> {
        if pattern.is_empty() {
            return Err("an empty pattern matches no key; give a key, a prefix ending in `/`, or a glob such as `v2/artifacts/**/metrics.json`".into());
        }
        let full = if pattern.ends_with('/') {
            format!("{pattern}**")
        } else {
            pattern.to_string()
        };
        globset::GlobBuilder::new(&full)
            .literal_separator(true)
            .backslash_escape(true)
            .build()
            .map_err(|e| format!("{pattern:?} is not a valid pattern: {}", e.kind()))
    }

    pub fn matches(&self, key: &str) -> bool {
        self.set.is_match(key)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DownloadError {
    #[error("{0}")]
    Catalog(#[from] CatalogError),
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("{path}: {detail}")]
    Local { path: PathBuf, detail: String },
    #[error("{dir} is not empty: download into a new or empty directory, so that nothing of yours is overwritten")]
    NotEmpty { dir: PathBuf },
    #[error("backup {id} is {phase}, not completed: only a completed backup holds every part; see `backup-agent describe-backup {id}`")]
    NotCompleted { id: String, phase: String },
    #[error("{what}: {detail}")]
    Corrupt { what: String, detail: String },
    #[error("download interrupted: {0}. The directory holds what was written so far")]
    Interrupted(String),
    #[error("no mlpipeline object of backup {id} matches --include {patterns}: patterns match whole keys as the bucket names them (`*` stays within one `/` segment, `**` crosses them, `dir/` takes everything below dir); nothing was written")]
    NothingMatched { id: String, patterns: String },
}

fn local(path: &Path) -> impl Fn(std::io::Error) -> DownloadError + '_ {
    move |e| DownloadError::Local {
        path: path.to_path_buf(),
        detail: e.to_string(),
    }
}

/// Where a bucket key may be written under `root`, or why it may not: only plain relative
/// segments, so nothing escapes the directory whatever the key says.
pub fn local_path(root: &Path, key: &str) -> Result<PathBuf, String> {
    if key.is_empty() {
        return Err("empty key".into());
    }
    if key.starts_with('/') {
        return Err("absolute path".into());
    }
    if key.contains('\0') {
        return Err("contains NUL".into());
    }
    let rel = Path::new(key);
    let mut out = root.to_path_buf();
    for part in rel.components() {
        match part {
            PathPart::Normal(p) => out.push(p),
            PathPart::ParentDir => return Err("contains `..`".into()),
            PathPart::CurDir => return Err("contains `.`".into()),
            _ => return Err("absolute path".into()),
        }
    }
    if key.ends_with('/') {
        return Err("ends with `/` (a directory, not an object)".into());
    }
    Ok(out)
}

/// Whether the directory was made here (it did not exist).
async fn empty_dir(dir: &Path) -> Result<bool, DownloadError> {
    match tokio::fs::read_dir(dir).await {
        Ok(mut rd) => {
            if rd.next_entry().await.map_err(local(dir))?.is_some() {
                return Err(DownloadError::NotEmpty { dir: dir.into() });
            }
            Ok(false)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            tokio::fs::create_dir_all(dir).await.map_err(local(dir))?;
            Ok(true)
        }
        Err(e) => Err(local(dir)(e)),
    }
}

/// The whole backup into `dir`, or with `include` only the mlpipeline objects it matches.
pub async fn run(
    ctx: &Context,
    id: &str,
    dir: &Path,
    include: Option<&Include>,
) -> Result<DownloadReport, DownloadError> {
    let p = &ctx.progress;
    let sf = repository::load(&ctx.dest, id).await?;
    if sf.phase != Phase::Completed {
        return Err(DownloadError::NotCompleted {
            id: id.into(),
            phase: sf.phase.as_str().into(),
        });
    }
    let created = empty_dir(dir).await?;
    let mut report = DownloadReport {
        backup_id: id.into(),
        dir: dir.into(),
        files: 0,
        bytes: 0,
        mlmd: None,
        mlpipeline_objects: 0,
        mysql: vec![],
        refused: vec![],
        warnings: vec![],
        included: include.map(|i| i.patterns.clone()).unwrap_or_default(),
    };
    let statefile = dir.join("statefile.json");
    tokio::fs::write(&statefile, sf.to_json())
        .await
        .map_err(local(&statefile))?;
    report.files += 1;

    if let Some(inc) = include {
        p.step(
            "download",
            format!(
                "only mlpipeline objects matching {}: mlmd and mysql are left out",
                inc.patterns.join(" ")
            ),
        );
    }
    if let (Some(m), None) = (&sf.components.mlmd, include) {
        download_mlmd(ctx, m, dir, &mut report).await?;
    }
    if let Some(cap) = &sf.components.mlpipeline {
        download_mlpipeline(ctx, cap, dir, include, &mut report).await?;
    }
    if let Some(inc) = include.filter(|_| report.mlpipeline_objects == 0) {
        // Leave the directory as it was found.
        let _ = tokio::fs::remove_file(&statefile).await;
        if created {
            let _ = tokio::fs::remove_dir(dir).await;
        }
        return Err(DownloadError::NothingMatched {
            id: id.into(),
            patterns: inc.patterns.join(" "),
        });
    }
    for m in sf.components.mysql.iter().filter(|_| include.is_none()) {
        download_mysql(ctx, m, dir, &mut report).await;
    }
    p.step(
        "done",
        format!(
            "backup {id} downloaded to {}: {} files, {}",
            dir.display(),
            report.files,
            crate::units::human_bytes(report.bytes)
        ),
    );
    Ok(report)
}

/// The MLMD database, decompressed and checked.
async fn download_mlmd(
    ctx: &Context,
    m: &repository::MlmdCapture,
    dir: &Path,
    report: &mut DownloadReport,
) -> Result<(), DownloadError> {
    let p = &ctx.progress;
    p.step(
        "download",
        format!("mlmd: {}", crate::units::human_bytes(m.size)),
    );
    let path = dir.join("mlmd.db");
    mlmd::fetch_and_verify(&ctx.dest, m, &path)
        .await
        .map_err(|detail| DownloadError::Corrupt {
            what: "mlmd".into(),
            detail,
        })?;
    report.files += 1;
    report.bytes += m.size;
    report.mlmd = Some(path);
    p.done(
        "mlmd",
        "mlmd.db written, hash, integrity and row counts match",
    );
    Ok(())
}

/// Every object of the manifest, each checked against its hash; keys that would land outside
/// the directory are refused and listed.
async fn download_mlpipeline(
    ctx: &Context,
    cap: &repository::MlpipelineCapture,
    dir: &Path,
    include: Option<&Include>,
    report: &mut DownloadReport,
) -> Result<(), DownloadError> {
    let p = &ctx.progress;
    let root = dir.join("mlpipeline");
    // Limited by patterns, the totals are not known until the manifest has been read.
    let (total, total_bytes) = match include {
        None => (Some(cap.objects), Some(cap.bytes)),
        Some(_) => (None, None),
    };
    p.step(
        "download",
        match include {
            None => format!(
                "mlpipeline: {} objects, {}",
                cap.objects,
                crate::units::human_bytes(cap.bytes)
            ),
            Some(_) => format!("mlpipeline: the objects matching, of {}", cap.objects),
        },
    );
    let done = std::sync::atomic::AtomicU64::new(0);
    let done_bytes = std::sync::atomic::AtomicU64::new(0);
    let mut refused = vec![];
    // The manifest as a stream (its hash checked at its end); unsafe keys set aside, the rest
    // fetched `transfers` at a time.
    let entries = repository::manifest::read_unchecked(
        &ctx.dest,
        &cap.manifest_key,
        Some(&cap.manifest_sha256),
    )
    .map_err(|e| match e {
        repository::ManifestError::Store(e) => DownloadError::from(e),
        repository::ManifestError::Corrupt { key, detail } => {
            DownloadError::Corrupt { what: key, detail }
        }
    })
    .try_filter_map(|e| {
        if include.is_some_and(|i| !i.matches(&e.key)) {
            return futures::future::ready(Ok(None));
        }
        let checked = if !repository::is_sha256(&e.sha256) {
            Err(format!("its sha256 {:?} is not a content hash", e.sha256))
        } else if e.pack.as_deref().is_some_and(|p| !repository::is_sha256(p)) {
            Err(format!("its pack {:?} is not a pack id", e.pack))
        } else {
            local_path(&root, &e.key)
        };
        let r = match checked {
            Ok(path) => Some((e, path)),
            Err(why) => {
                p.warn(format!("mlpipeline key {:?} refused: {why}", e.key));
                refused.push(Refused { key: e.key, why });
                None
            }
        };
        futures::future::ready(Ok(r))
    });
    let g = Grouping::default();
    let written = by_pack(entries, g, |(e, _): &(Entry, PathBuf)| e)
        .map_ok(|group| {
            let (done, done_bytes) = (&done, &done_bytes);
            async move {
                if let Some(r) = ctx.interrupt.reason() {
                    return Err(DownloadError::Interrupted(r));
                }
                match &group[..] {
                    [(e, path)]
                        if e.size > IN_MEMORY_MAX
                            || !matches!(e.stored(), Stored::Packed { .. }) =>
                    {
                        fetch_blob(ctx, e, path).await?
                    }
                    _ => fetch_group(ctx, &group, g).await?,
                }
                let bytes: u64 = group.iter().map(|(e, _)| e.size).sum();
                let n = done.fetch_add(group.len() as u64, Ordering::Relaxed) + group.len() as u64;
                let b = done_bytes.fetch_add(bytes, Ordering::Relaxed) + bytes;
                p.emit(Event::Transfer {
                    component: "mlpipeline".into(),
                    done_bytes: b,
                    total_bytes,
                    done_objects: n,
                    total_objects: total,
                });
                Ok(())
            }
        })
        .try_buffer_unordered(ctx.tuning.transfers.max(1))
        .try_fold((), |(), ()| futures::future::ready(Ok(())))
        .await;
    report.refused.extend(refused);
    written?;
    let (total, total_bytes) = (done.into_inner(), done_bytes.into_inner());
    report.mlpipeline_objects = total;
    report.files += total;
    report.bytes += total_bytes;
    p.done(
        "mlpipeline",
        format!("{total} objects written, every hash matches"),
    );
    Ok(())
}

/// One database's mysql-k8s backup objects; a failure is a warning (they live in another
/// bucket, which may be gone).
async fn download_mysql(
    ctx: &Context,
    m: &repository::MysqlCapture,
    dir: &Path,
    report: &mut DownloadReport,
) {
    let p = &ctx.progress;
    let app_dir = match local_path(&dir.join("mysql"), &m.app) {
        Ok(d) if !m.app.contains('/') => d,
        _ => {
            p.warn(format!(
                "mysql app name {:?} refused: not a plain name",
                m.app
            ));
            report.refused.push(Refused {
                key: format!("mysql/{}", m.app),
                why: "the application name is not a plain name".into(),
            });
            return;
        }
    };
    match mysql_objects(ctx, m, &app_dir).await {
        Ok((n, b)) => {
            report.files += n;
            report.bytes += b;
            report.mysql.push(format!("{} {}", m.app, m.backup_id));
            p.done(
                &m.app,
                format!("mysql-k8s backup {}: {n} files", m.backup_id),
            );
        }
        Err(e) => {
            let w = format!(
                "mysql-k8s backup {} of {} not downloaded: {e}",
                m.backup_id, m.app
            );
            p.warn(w.clone());
            report.warnings.push(w);
        }
    }
}

/// A file written beside its final name, renamed into place once whole and checked.
fn partial_of(path: &Path) -> PathBuf {
    // Unique per entry: keys `x` and `x.json` must not share a temporary file.
    path.with_file_name(format!(
        ".{}.{:016x}.partial",
        path.file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default(),
        rand::random::<u64>()
    ))
}

async fn make_parent(path: &Path) -> Result<(), DownloadError> {
    match path.parent() {
        Some(parent) => tokio::fs::create_dir_all(parent)
            .await
            .map_err(local(parent)),
        None => Ok(()),
    }
}

/// One object streamed to its file: from its v1 blob, from its range of a pack (a large
/// object), or, empty, from nothing.
async fn fetch_blob(ctx: &Context, e: &Entry, path: &Path) -> Result<(), DownloadError> {
    make_parent(path).await?;
    let partial = partial_of(path);
    let mut f = tokio::fs::File::create(&partial)
        .await
        .map_err(local(&partial))?;
    let mut hasher = sha2::Sha256::new();
    let key = e.stored_key().unwrap_or_else(|| "no stored bytes".into());
    let mut tap = crate::storage::TapWriter::new(&mut f, |b: &[u8]| hasher.update(b));
    match e.stored() {
        Stored::Empty => {}
        Stored::Blob(sha) => {
            ctx.dest
                .get_stream(&repository::blob_key(sha), &mut tap)
                .await?;
        }
        Stored::Packed { pack, offset } => {
            let k = repository::layout::pack_key(pack);
            ctx.dest
                .get_range_stream(&k, offset, offset + e.size, &mut tap)
                .await?;
        }
    }
    f.flush().await.map_err(local(&partial))?;
    drop(f);
    let got = hex::encode(hasher.finalize());
    if got != e.sha256 {
        let _ = tokio::fs::remove_file(&partial).await;
        return Err(DownloadError::Corrupt {
            what: format!("mlpipeline {} ({key})", e.key),
            detail: format!("content hash {got}, the manifest says {}", e.sha256),
        });
    }
    tokio::fs::rename(&partial, path).await.map_err(local(path))
}

/// Objects whose bytes share a pack: its ranges in a few GETs, each object checked against its
/// hash before its file is written.
async fn fetch_group(
    ctx: &Context,
    group: &[(Entry, PathBuf)],
    g: Grouping,
) -> Result<(), DownloadError> {
    let data = read_group(&ctx.dest, group, |(e, _)| e, g, crate::retry::ATTEMPTS).await?;
    for ((e, path), bytes) in group.iter().zip(&data) {
        checked(e, bytes).map_err(|detail| DownloadError::Corrupt {
            what: format!("mlpipeline {}", e.key),
            detail,
        })?;
        make_parent(path).await?;
        let partial = partial_of(path);
        tokio::fs::write(&partial, bytes)
            .await
            .map_err(local(&partial))?;
        tokio::fs::rename(&partial, path)
            .await
            .map_err(local(path))?;
    }
    Ok(())
}

async fn mysql_objects(
    ctx: &Context,
    m: &repository::MysqlCapture,
    dir: &Path,
) -> Result<(u64, u64), String> {
    let (store, objects) = mysql::capture_objects(&ctx.juju, &ctx.dest, m).await?;
    tokio::fs::create_dir_all(dir)
        .await
        .map_err(|e| format!("{}: {e}", dir.display()))?;
    let (mut n, mut b) = (0, 0);
    for o in objects {
        let path = local_path(dir, &o.key).map_err(|why| format!("{}: {why}", o.key))?;
        let mut f = tokio::fs::File::create(&path)
            .await
            .map_err(|e| format!("{}: {e}", path.display()))?;
        store
            .get_stream(&o.key, &mut f)
            .await
            .map_err(|e| e.to_string())?;
        n += 1;
        b += o.size;
    }
    if n == 0 {
        return Err(format!("no object named {} in its bucket", m.backup_id));
    }
    Ok((n, b))
}
