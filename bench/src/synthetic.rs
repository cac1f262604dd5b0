//! The synthetic planner case: millions of manifest entries with no S3 server, through the
//! product's own merge-join (`mlpipeline::plan`: a bucket's listing against the previous
//! manifest) and the prune mark (the manifest's hashes through the external sort). A bucket of
//! this size cannot be made on one machine in a benchmark's time; the planner's memory is
//! what must not grow with it, and this measures exactly that.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::Result;
use async_trait::async_trait;
use backup_agent::components::mlpipeline::{self, PreviousManifest, SyncOptions};
use backup_agent::context::Streaming;
use backup_agent::repository::{Entry, ManifestWriter};
use backup_agent::sorted::{Hash, HashSorter};
use backup_agent::storage::{
    ListPage, ObjectInfo, ObjectMeta, ObjectStore, Store, StoreError, Verdict,
};
use futures::TryStreamExt;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncWrite};

/// Object `i` of the synthetic bucket: keys in byte order, as Kubeflow names them.
fn key(i: u64) -> String {
    format!(
        "v2/artifacts/training-pipeline/run-{:07}/train/metrics-{:03}.json",
        i / 100,
        i % 100
    )
}

fn sha(i: u64) -> String {
    hex::encode(Sha256::digest(i.to_le_bytes()))
}

/// One object in a hundred changed since the manifest was written.
fn etag(i: u64, changed: bool) -> String {
    if changed && i % 100 == 7 {
        format!("changed-{i:x}")
    } else {
        format!("{:032x}", i)
    }
}

/// A bucket that is only a listing: `entries` objects, made up page by page.
#[derive(Debug)]
struct Listing {
    entries: u64,
}

#[async_trait]
impl ObjectStore for Listing {
    fn describe(&self) -> String {
        format!("a synthetic listing of {} objects", self.entries)
    }
    async fn put_bytes(&self, k: &str, _: &[u8], _: &str) -> Result<(), StoreError> {
        Err(unsupported(k))
    }
    async fn put_bytes_if_absent(&self, k: &str, _: &[u8], _: &str) -> Result<bool, StoreError> {
        Err(unsupported(k))
    }
    async fn put_verified(
        &self,
        k: &str,
        _: &mut (dyn AsyncRead + Unpin + Send),
        _: Option<u64>,
        _: &str,
        _: &BTreeMap<String, String>,
        _: Verdict<'_>,
    ) -> Result<(), StoreError> {
        Err(unsupported(k))
    }
    async fn get_with_meta(&self, k: &str) -> Result<(Vec<u8>, ObjectMeta), StoreError> {
        Err(unsupported(k))
    }
    async fn get_bytes(&self, k: &str) -> Result<Vec<u8>, StoreError> {
        Err(unsupported(k))
    }
    async fn get_range(&self, k: &str, _: u64, _: u64) -> Result<Vec<u8>, StoreError> {
        Err(unsupported(k))
    }
    async fn get_into(
        &self,
        k: &str,
        _: Option<(u64, u64)>,
        _: &mut (dyn AsyncWrite + Unpin + Send),
    ) -> Result<u64, StoreError> {
        Err(unsupported(k))
    }
    async fn head_meta(&self, k: &str) -> Result<Option<ObjectMeta>, StoreError> {
        Err(unsupported(k))
    }
    async fn list_page(
        &self,
        _: &str,
        token: Option<String>,
        max: usize,
    ) -> Result<ListPage, StoreError> {
        let from: u64 = token.map_or(0, |t| t.parse().unwrap_or(0));
        let to = (from + max as u64).min(self.entries);
        let objects = (from..to)
            .map(|i| ObjectInfo {
                key: key(i),
                size: 2048 + i % 2048,
                etag: Some(etag(i, true)),
            })
            .collect();
        Ok(ListPage {
            objects,
            next: (to < self.entries).then(|| to.to_string()),
        })
    }
    async fn delete(&self, k: &str) -> Result<(), StoreError> {
        Err(unsupported(k))
    }
}

fn unsupported(key: &str) -> StoreError {
    StoreError::Fatal {
        op: "synthetic",
        key: key.into(),
        detail: "a synthetic listing has no objects to read or write".into(),
    }
}

#[derive(Debug, clap::Args)]
pub struct SyntheticArgs {
    /// write (the manifest), plan (listing merged with it) or mark (its hashes sorted).
    #[arg(value_parser = ["write", "plan", "mark"])]
    step: String,
    #[arg(long)]
    entries: u64,
    /// A directory: the manifest lives there, sorted runs spill there.
    #[arg(long)]
    dir: PathBuf,
}

const MANIFEST: &str = "synthetic.manifest";

/// One step of the synthetic case; prints what it counted as JSON.
pub fn run(a: SyntheticArgs) -> Result<()> {
    let repo = Store::local(&a.dir);
    let rt = tokio::runtime::Runtime::new()?;
    let out = rt.block_on(async {
        match a.step.as_str() {
            "write" => {
                let mut w = ManifestWriter::start(&repo, MANIFEST);
                for i in 0..a.entries {
                    w.push(&Entry {
                        key: key(i),
                        size: 2048 + i % 2048,
                        etag: Some(etag(i, false)),
                        sha256: sha(i % (a.entries / 2).max(1)),
                        content_type: "application/json".into(),
                        metadata: BTreeMap::new(),
                        // Format v2 lines: a few thousand objects to a pack.
                        pack: Some(sha(u64::MAX - i / 5000)),
                        offset: Some(8 + (i % 5000) * 4096),
                    })
                    .await?;
                }
                let written = w.finish().await?;
                std::fs::write(a.dir.join("sha"), &written.sha256)?;
                Ok::<_, anyhow::Error>(serde_json::json!({
                    "entries": written.entries, "manifest-bytes": written.size
                }))
            }
            "plan" => {
                let previous = PreviousManifest {
                    backup_id: "synthetic".into(),
                    key: MANIFEST.into(),
                    sha256: std::fs::read_to_string(a.dir.join("sha"))?,
                };
                let source = Store::new(Listing { entries: a.entries });
                let opts = SyncOptions {
                    scratch: a.dir.clone(),
                    ..SyncOptions::new(a.dir.join("spool"))
                };
                let plan = mlpipeline::plan(&source, &repo, Some(&previous), &opts).await?;
                Ok(serde_json::json!({
                    "objects": plan.objects, "to-read": plan.to_read, "gone": plan.gone
                }))
            }
            _ => {
                let mut marks = HashSorter::new(&a.dir, Streaming::default().sort_memory);
                let mut entries = backup_agent::repository::manifest::read(&repo, MANIFEST, None);
                while let Some(e) = entries.try_next().await? {
                    marks
                        .push(Hash::parse(&e.sha256, e.size).expect("hash"))
                        .await?;
                }
                let runs = marks.runs();
                let mut unique = 0u64;
                let mut sorted = marks.finish().await?;
                while sorted.try_next().await?.is_some() {
                    unique += 1;
                }
                Ok(serde_json::json!({ "unique-hashes": unique, "runs": runs }))
            }
        }
    })?;
    println!("{out}");
    Ok(())
}
