//! The measured processes: each runs one library operation exactly as the product does it
//! (same functions, same defaults), alone in its own process so its wall time and peak RSS are
//! its own.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use backup_agent::components::mlpipeline::{self, PreviousManifest, SyncOptions};
use backup_agent::context;
use backup_agent::repository::MlpipelineCapture;
use backup_agent::secret::Secret;
use backup_agent::storage::{S3Settings, Store, UriStyle};

/// Keys of both SeaweedFS servers, from the environment so they never sit on a command line.
pub const ACCESS_ENV: &str = "BENCH_ACCESS_KEY";
pub const SECRET_ENV: &str = "BENCH_SECRET_KEY";

/// `http://127.0.0.1:PORT/BUCKET[/ROOT]` as an S3 store, or an absolute path as a local
/// directory store.
pub fn store(url: &str) -> Result<Store> {
    if url.starts_with('/') {
        return Ok(Store::local(url));
    }
    let Some(rest) = url.strip_prefix("http://") else {
        bail!("{url}: expected http://HOST:PORT/BUCKET[/ROOT] or /a/directory");
    };
    let mut parts = rest.splitn(3, '/');
    let (host, bucket, root) = (
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
    );
    if host.is_empty() || bucket.is_empty() {
        bail!("{url}: expected http://HOST:PORT/BUCKET[/ROOT]");
    }
    let key = |name: &str| std::env::var(name).with_context(|| format!("{name} is not set"));
    Ok(Store::s3(&S3Settings {
        endpoint: format!("http://{host}"),
        bucket: bucket.into(),
        path: root.into(),
        region: "us-east-1".into(),
        uri_style: UriStyle::Path,
        access_key: Secret::new(key(ACCESS_ENV)?),
        secret_key: Secret::new(key(SECRET_ENV)?),
        sse: None,
    })?)
}

/// The product's copy settings: the CLI's defaults unless the benchmark overrides them.
fn sync_options(spool: PathBuf, transfers: Option<u16>, checkers: Option<u16>) -> SyncOptions {
    let mut opts = SyncOptions::new(spool);
    opts.transfers = transfers.unwrap_or(context::TRANSFERS).into();
    opts.checkers = checkers.unwrap_or(context::CHECKERS).into();
    opts
}

#[derive(Debug, clap::Args)]
pub struct CaptureArgs {
    #[arg(long)]
    source: String,
    #[arg(long)]
    dest: String,
    /// The previous capture's manifest in `dest` (an incremental capture), and its hash.
    #[arg(long, requires = "previous_sha")]
    previous: Option<String>,
    #[arg(long)]
    previous_sha: Option<String>,
    /// Where in `dest` the new manifest goes.
    #[arg(long)]
    manifest_key: String,
    /// Also record the capture as a completed backup with this id (for prune).
    #[arg(long)]
    statefile: Option<String>,
    #[arg(long)]
    spool: PathBuf,
    #[arg(long)]
    transfers: Option<u16>,
    #[arg(long)]
    checkers: Option<u16>,
    /// Objects up to this many bytes are packed (format v2); 0 writes format v1.
    #[arg(long)]
    pack_threshold: Option<u64>,
}

/// Copies a bucket into a repository's blobs, as create-backup does (the counting pass, then
/// the capture); prints the capture's statistics and the manifest's hash as JSON.
pub fn capture(a: CaptureArgs) -> Result<()> {
    let (source, dest) = (store(&a.source)?, store(&a.dest)?);
    let previous = a.previous.map(|key| PreviousManifest {
        backup_id: "previous".into(),
        key,
        sha256: a.previous_sha.unwrap_or_default(),
    });
    let mut opts = sync_options(a.spool, a.transfers, a.checkers);
    if let Some(t) = a.pack_threshold {
        opts.packing.threshold = t;
    }
    let rt = tokio::runtime::Runtime::new()?;
    let mut seconds = (0.0, 0.0);
    let captured = rt.block_on(async {
        let t0 = std::time::Instant::now();
        // As create-backup does: format v1 counts first (to size its spool), v2 does not.
        let plan = match opts.packing.on() {
            true => None,
            false => Some(mlpipeline::plan(&source, &dest, previous.as_ref(), &opts).await?),
        };
        seconds.0 = t0.elapsed().as_secs_f64();
        let t1 = std::time::Instant::now();
        let captured = mlpipeline::capture(
            &source,
            &dest,
            previous.as_ref(),
            &a.manifest_key,
            plan.as_ref(),
            &opts,
        )
        .await?;
        seconds.1 = t1.elapsed().as_secs_f64();
        if let Some(id) = &a.statefile {
            let (m, st) = (&captured.manifest, &captured.stats);
            let sf = crate::scale::statefile(id, &a.manifest_key, &m.sha256, st.objects, st.bytes);
            backup_agent::repository::save(&dest, &sf).await?;
        }
        Ok::<_, anyhow::Error>(captured)
    })?;
    let mut out = serde_json::to_value(&captured.stats)?;
    out["manifest-sha256"] = captured.manifest.sha256.into();
    // The preflight's counting pass (format v1 only) and the capture after quiesce, apart: each
    // lists the bucket.
    out["plan-seconds"] = seconds.0.into();
    out["capture-seconds"] = seconds.1.into();
    println!("{out}");
    Ok(())
}

#[derive(Debug, clap::Args)]
pub struct RestoreArgs {
    #[arg(long)]
    repo: String,
    #[arg(long)]
    target: String,
    /// The manifest in `repo`, and its hash.
    #[arg(long)]
    manifest_key: String,
    #[arg(long)]
    manifest_sha: String,
    #[arg(long)]
    spool: PathBuf,
    #[arg(long)]
    transfers: Option<u16>,
}

/// Makes a bucket equal to a captured manifest; prints the restore's statistics as JSON.
pub fn restore(a: RestoreArgs) -> Result<()> {
    let (repo, target) = (store(&a.repo)?, store(&a.target)?);
    let cap = MlpipelineCapture {
        manifest_key: a.manifest_key,
        manifest_sha256: a.manifest_sha,
        objects: 0,
        bytes: 0,
        new_bytes: 0,
        new_objects: 0,
    };
    let opts = sync_options(a.spool, a.transfers, None);
    let rt = tokio::runtime::Runtime::new()?;
    // As restore does: the counting pass (its dry-run plan), then the restore.
    let stats = rt.block_on(async {
        let plan = mlpipeline::restore_plan(&repo, &target, &cap, &opts).await?;
        mlpipeline::restore(&repo, &target, &cap, Some(&plan), &opts).await
    })?;
    println!("{}", serde_json::to_string(&stats)?);
    Ok(())
}

#[derive(Debug, clap::Args)]
pub struct MlmdArgs {
    /// The MLMD database file, as copied out of the pod.
    #[arg(long)]
    db: PathBuf,
    #[arg(long)]
    dest: String,
    #[arg(long)]
    key: String,
}

/// Checks, compresses and uploads an MLMD database; prints its hash and sizes as JSON.
pub fn mlmd(a: MlmdArgs) -> Result<()> {
    let dest = store(&a.dest)?;
    let rt = tokio::runtime::Runtime::new()?;
    let packed = rt.block_on(backup_agent::components::mlmd::pack_and_upload(
        &a.db, &dest, &a.key,
    ))?;
    println!(
        "{}",
        serde_json::json!({
            "sha256": packed.sha256,
            "compressed-size": packed.compressed_size,
            "integrity": packed.inspection.integrity,
        })
    );
    Ok(())
}

/// The manifest hash a capture worker printed.
pub fn manifest_sha(s: &crate::lab::Sample) -> Result<String> {
    let out: serde_json::Value = serde_json::from_str(&s.stdout)
        .with_context(|| format!("capture printed {:?}", s.stdout))?;
    Ok(out["manifest-sha256"]
        .as_str()
        .unwrap_or_default()
        .to_string())
}
