//! Seed data: an ML Metadata database with the real MLMD (schema v10) SQLite schema, the
//! "MySQL" datasets of kfp-db and katib-db, and a KFP-like `mlpipeline` bucket. Sizes are
//! parameters so the same generator feeds tests (small) and benchmarks (GBs). Content is
//! deterministic from a seed so a restore can be compared byte for byte.

use std::path::Path;
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll};

use anyhow::{Context, Result};
use futures::StreamExt;
use rusqlite::{params, Connection};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, ReadBuf};

use crate::s3::S3Target;

/// The MLMD schema, version 10, as the ML Metadata library creates it on SQLite.
pub const MLMD_SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS `Type` (
  `id` INTEGER PRIMARY KEY AUTOINCREMENT, `name` VARCHAR(255) NOT NULL, `version` VARCHAR(255),
  `type_kind` TINYINT(1) NOT NULL, `description` TEXT, `input_type` TEXT, `output_type` TEXT,
  `external_id` VARCHAR(255) UNIQUE);
CREATE TABLE IF NOT EXISTS `TypeProperty` (
  `type_id` INT NOT NULL, `name` VARCHAR(255) NOT NULL, `data_type` INT NULL,
  PRIMARY KEY (`type_id`, `name`));
CREATE TABLE IF NOT EXISTS `ParentType` (
  `type_id` INT NOT NULL, `parent_type_id` INT NOT NULL, PRIMARY KEY (`type_id`, `parent_type_id`));
CREATE TABLE IF NOT EXISTS `Artifact` (
  `id` INTEGER PRIMARY KEY AUTOINCREMENT, `type_id` INT NOT NULL, `uri` TEXT, `state` INT,
  `name` VARCHAR(255), `external_id` VARCHAR(255) UNIQUE,
  `create_time_since_epoch` INT NOT NULL DEFAULT 0, `last_update_time_since_epoch` INT NOT NULL DEFAULT 0,
  UNIQUE(`type_id`, `name`));
CREATE TABLE IF NOT EXISTS `ArtifactProperty` (
  `artifact_id` INT NOT NULL, `name` VARCHAR(255) NOT NULL, `is_custom_property` TINYINT(1) NOT NULL,
  `int_value` INT, `double_value` DOUBLE, `string_value` TEXT, `byte_value` BLOB, `proto_value` BLOB,
  `bool_value` BOOLEAN, PRIMARY KEY (`artifact_id`, `name`, `is_custom_property`));
CREATE TABLE IF NOT EXISTS `Execution` (
  `id` INTEGER PRIMARY KEY AUTOINCREMENT, `type_id` INT NOT NULL, `last_known_state` INT,
  `name` VARCHAR(255), `external_id` VARCHAR(255) UNIQUE,
  `create_time_since_epoch` INT NOT NULL DEFAULT 0, `last_update_time_since_epoch` INT NOT NULL DEFAULT 0,
  UNIQUE(`type_id`, `name`));
CREATE TABLE IF NOT EXISTS `ExecutionProperty` (
  `execution_id` INT NOT NULL, `name` VARCHAR(255) NOT NULL, `is_custom_property` TINYINT(1) NOT NULL,
  `int_value` INT, `double_value` DOUBLE, `string_value` TEXT, `byte_value` BLOB, `proto_value` BLOB,
  `bool_value` BOOLEAN, PRIMARY KEY (`execution_id`, `name`, `is_custom_property`));
CREATE TABLE IF NOT EXISTS `Event` (
  `id` INTEGER PRIMARY KEY AUTOINCREMENT, `artifact_id` INT NOT NULL, `execution_id` INT NOT NULL,
  `type` INT NOT NULL, `milliseconds_since_epoch` INT, UNIQUE(`artifact_id`, `execution_id`, `type`));
CREATE TABLE IF NOT EXISTS `EventPath` (
  `event_id` INT NOT NULL, `is_index_step` TINYINT(1) NOT NULL, `step_index` INT, `step_key` TEXT);
CREATE TABLE IF NOT EXISTS `MLMDEnv` (`schema_version` INTEGER PRIMARY KEY);
CREATE TABLE IF NOT EXISTS `Context` (
  `id` INTEGER PRIMARY KEY AUTOINCREMENT, `type_id` INT NOT NULL, `name` VARCHAR(255) NOT NULL,
  `external_id` VARCHAR(255) UNIQUE,
  `create_time_since_epoch` INT NOT NULL DEFAULT 0, `last_update_time_since_epoch` INT NOT NULL DEFAULT 0,
  UNIQUE(`type_id`, `name`));
CREATE TABLE IF NOT EXISTS `ContextProperty` (
  `context_id` INT NOT NULL, `name` VARCHAR(255) NOT NULL, `is_custom_property` TINYINT(1) NOT NULL,
  `int_value` INT, `double_value` DOUBLE, `string_value` TEXT, `byte_value` BLOB, `proto_value` BLOB,
  `bool_value` BOOLEAN, PRIMARY KEY (`context_id`, `name`, `is_custom_property`));
CREATE TABLE IF NOT EXISTS `ParentContext` (
  `context_id` INT NOT NULL, `parent_context_id` INT NOT NULL, PRIMARY KEY (`context_id`, `parent_context_id`));
CREATE TABLE IF NOT EXISTS `Association` (
  `id` INTEGER PRIMARY KEY AUTOINCREMENT, `context_id` INT NOT NULL, `execution_id` INT NOT NULL,
  UNIQUE(`context_id`, `execution_id`));
CREATE TABLE IF NOT EXISTS `Attribution` (
  `id` INTEGER PRIMARY KEY AUTOINCREMENT, `context_id` INT NOT NULL, `artifact_id` INT NOT NULL,
  UNIQUE(`context_id`, `artifact_id`));
CREATE INDEX IF NOT EXISTS `idx_artifact_uri` ON `Artifact`(`uri`);
CREATE INDEX IF NOT EXISTS `idx_artifact_create_time_since_epoch` ON `Artifact`(`create_time_since_epoch`);
CREATE INDEX IF NOT EXISTS `idx_artifact_last_update_time_since_epoch` ON `Artifact`(`last_update_time_since_epoch`);
CREATE INDEX IF NOT EXISTS `idx_event_execution_id` ON `Event`(`execution_id`);
CREATE INDEX IF NOT EXISTS `idx_parentcontext_parent_context_id` ON `ParentContext`(`parent_context_id`);
CREATE INDEX IF NOT EXISTS `idx_type_name` ON `Type`(`name`);
CREATE INDEX IF NOT EXISTS `idx_execution_create_time_since_epoch` ON `Execution`(`create_time_since_epoch`);
CREATE INDEX IF NOT EXISTS `idx_execution_last_update_time_since_epoch` ON `Execution`(`last_update_time_since_epoch`);
CREATE INDEX IF NOT EXISTS `idx_context_create_time_since_epoch` ON `Context`(`create_time_since_epoch`);
CREATE INDEX IF NOT EXISTS `idx_context_last_update_time_since_epoch` ON `Context`(`last_update_time_since_epoch`);
CREATE INDEX IF NOT EXISTS `idx_eventpath_event_id` ON `EventPath`(`event_id`);
"#;

/// The MLMD tables, in the order their row counts are reported.
pub const MLMD_TABLES: &[&str] = &[
    "Type",
    "TypeProperty",
    "ParentType",
    "Artifact",
    "ArtifactProperty",
    "Execution",
    "ExecutionProperty",
    "Event",
    "EventPath",
    "MLMDEnv",
    "Context",
    "ContextProperty",
    "ParentContext",
    "Association",
    "Attribution",
];

/// How much ML metadata to generate: KFP v2 pipeline runs with their executions and artifacts.
#[derive(Debug, Clone, Copy)]
pub struct MlmdSpec {
    pub runs: usize,
    pub executions_per_run: usize,
    pub artifacts_per_execution: usize,
    /// Bytes of the `display_name`-like custom property on each artifact: scales the file size.
    pub property_bytes: usize,
    pub seed: u64,
}

impl Default for MlmdSpec {
    fn default() -> Self {
        MlmdSpec {
            runs: 10,
            executions_per_run: 4,
            artifacts_per_execution: 2,
            property_bytes: 64,
            seed: 1,
        }
    }
}

impl MlmdSpec {
    /// A spec whose database is roughly `bytes` large.
    pub fn sized(bytes: u64, seed: u64) -> Self {
        let per_artifact = 4096u64;
        let artifacts = (bytes / per_artifact).max(1) as usize;
        let runs = (artifacts / 8).max(1);
        MlmdSpec {
            runs,
            executions_per_run: 4,
            artifacts_per_execution: 2,
            property_bytes: 3800,
            seed,
        }
    }
}

fn det_text(seed: u64, tag: &str, len: usize) -> String {
    const ALPHA: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::with_capacity(len);
    let mut ctr = 0u64;
    while out.len() < len {
        let h = Sha256::digest(format!("{seed}:{tag}:{ctr}").as_bytes());
        for b in h {
            if out.len() == len {
                break;
            }
            out.push(ALPHA[(b as usize) % ALPHA.len()] as char);
        }
        ctr += 1;
    }
    out
}

/// Creates (or replaces) an MLMD database at `path` filled per `spec`.
pub fn write_mlmd(path: &Path, spec: &MlmdSpec) -> Result<()> {
    if path.exists() {
        std::fs::remove_file(path)?;
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut db = Connection::open(path).with_context(|| format!("creating {}", path.display()))?;
    db.execute_batch(MLMD_SCHEMA)?;
    db.execute("INSERT INTO MLMDEnv(schema_version) VALUES (10)", [])?;
    let tx = db.transaction()?;
    let type_id = |name: &str, kind: i64| -> Result<i64> {
        tx.execute(
            "INSERT INTO Type(name, version, type_kind, description) VALUES (?1, NULL, ?2, NULL)",
            params![name, kind],
        )?;
        Ok(tx.last_insert_rowid())
    };
    let container_exec = type_id("system.ContainerExecution", 0)?;
    let dag_exec = type_id("system.DAGExecution", 0)?;
    let artifact_types = [
        type_id("system.Artifact", 1)?,
        type_id("system.Dataset", 1)?,
        type_id("system.Model", 1)?,
        type_id("system.Metrics", 1)?,
    ];
    let pipeline_ctx = type_id("system.Pipeline", 2)?;
    let run_ctx = type_id("system.PipelineRun", 2)?;
    let base_ms: i64 = 1_735_689_600_000;
    tx.execute("INSERT INTO Context(type_id, name, create_time_since_epoch, last_update_time_since_epoch) VALUES (?1, 'training-pipeline', ?2, ?2)", params![pipeline_ctx, base_ms])?;
    let pipeline_id = tx.last_insert_rowid();
    let mut event_n = 0i64;
    for run in 0..spec.runs {
        let t = base_ms + run as i64 * 60_000;
        let run_name = format!("run-{}", det_text(spec.seed, &format!("run{run}"), 12));
        tx.execute("INSERT INTO Context(type_id, name, external_id, create_time_since_epoch, last_update_time_since_epoch) VALUES (?1, ?2, ?3, ?4, ?4)", params![run_ctx, run_name, format!("{run_name}-ext"), t])?;
        let ctx = tx.last_insert_rowid();
        tx.execute(
            "INSERT INTO ParentContext(context_id, parent_context_id) VALUES (?1, ?2)",
            params![ctx, pipeline_id],
        )?;
        tx.execute("INSERT INTO ContextProperty(context_id, name, is_custom_property, string_value) VALUES (?1, 'namespace', 1, 'kubeflow-user')", params![ctx])?;
        tx.execute("INSERT INTO ContextProperty(context_id, name, is_custom_property, string_value) VALUES (?1, 'pipeline_root', 1, ?2)", params![ctx, format!("minio://mlpipeline/v2/artifacts/training-pipeline/{run_name}")])?;
        tx.execute("INSERT INTO Execution(type_id, last_known_state, name, create_time_since_epoch, last_update_time_since_epoch) VALUES (?1, 3, ?2, ?3, ?3)", params![dag_exec, format!("{run_name}-root"), t])?;
        let root = tx.last_insert_rowid();
        tx.execute(
            "INSERT INTO Association(context_id, execution_id) VALUES (?1, ?2)",
            params![ctx, root],
        )?;
        for e in 0..spec.executions_per_run {
            tx.execute("INSERT INTO Execution(type_id, last_known_state, name, create_time_since_epoch, last_update_time_since_epoch) VALUES (?1, 3, ?2, ?3, ?3)", params![container_exec, format!("{run_name}-step-{e}"), t + e as i64])?;
            let ex = tx.last_insert_rowid();
            tx.execute(
                "INSERT INTO Association(context_id, execution_id) VALUES (?1, ?2)",
                params![ctx, ex],
            )?;
            tx.execute("INSERT INTO ExecutionProperty(execution_id, name, is_custom_property, string_value) VALUES (?1, 'task_name', 1, ?2)", params![ex, format!("step-{e}")])?;
            tx.execute("INSERT INTO ExecutionProperty(execution_id, name, is_custom_property, int_value) VALUES (?1, 'parent_dag_id', 1, ?2)", params![ex, root])?;
            for a in 0..spec.artifacts_per_execution {
                let ty = artifact_types[(e + a) % artifact_types.len()];
                let uri = format!("minio://mlpipeline/v2/artifacts/training-pipeline/{run_name}/step-{e}/output-{a}");
                tx.execute("INSERT INTO Artifact(type_id, uri, state, name, create_time_since_epoch, last_update_time_since_epoch) VALUES (?1, ?2, 2, ?3, ?4, ?4)", params![ty, uri, format!("{run_name}-{e}-{a}"), t + e as i64])?;
                let art = tx.last_insert_rowid();
                tx.execute("INSERT INTO ArtifactProperty(artifact_id, name, is_custom_property, string_value) VALUES (?1, 'display_name', 1, ?2)", params![art, det_text(spec.seed, &format!("a{art}"), spec.property_bytes)])?;
                tx.execute("INSERT INTO ArtifactProperty(artifact_id, name, is_custom_property, double_value) VALUES (?1, 'accuracy', 1, ?2)", params![art, (art % 100) as f64 / 100.0])?;
                tx.execute(
                    "INSERT INTO Attribution(context_id, artifact_id) VALUES (?1, ?2)",
                    params![ctx, art],
                )?;
                tx.execute("INSERT INTO Event(artifact_id, execution_id, type, milliseconds_since_epoch) VALUES (?1, ?2, 4, ?3)", params![art, ex, t + e as i64])?;
                let ev = tx.last_insert_rowid();
                tx.execute(
                    "INSERT INTO EventPath(event_id, is_index_step, step_key) VALUES (?1, 0, ?2)",
                    params![ev, format!("output-{a}")],
                )?;
                event_n += 1;
            }
        }
    }
    let _ = event_n;
    tx.commit()?;
    Ok(())
}

/// Row counts per MLMD table.
pub fn mlmd_counts(path: &Path) -> Result<Vec<(String, i64)>> {
    let db = Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    MLMD_TABLES
        .iter()
        .map(|t| {
            Ok((
                t.to_string(),
                db.query_row(&format!("SELECT COUNT(*) FROM `{t}`"), [], |r| r.get(0))?,
            ))
        })
        .collect()
}

/// The dataset of a mysql-k8s application, kept as an SQLite file: enough tables and rows for
/// a restore to be checked.
pub fn write_mysql_data(path: &Path, app: &str, rows: usize, seed: u64) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    if path.exists() {
        std::fs::remove_file(path)?;
    }
    let mut db = Connection::open(path)?;
    let tx = db.transaction()?;
    if app.contains("katib") {
        tx.execute_batch("CREATE TABLE observation_logs (trial_name VARCHAR(255) NOT NULL, id INTEGER PRIMARY KEY, time DATETIME(6), metric_name VARCHAR(255) NOT NULL, value TEXT NOT NULL);")?;
        for i in 0..rows {
            tx.execute("INSERT INTO observation_logs(trial_name, time, metric_name, value) VALUES (?1, '2025-01-01 00:00:00', 'accuracy', ?2)", params![format!("trial-{}", det_text(seed, &format!("t{i}"), 8)), format!("{:.4}", (i % 97) as f64 / 97.0)])?;
        }
    } else {
        tx.execute_batch("CREATE TABLE pipelines (UUID VARCHAR(64) PRIMARY KEY, CreatedAtInSec BIGINT NOT NULL, Name VARCHAR(128) NOT NULL, Description LONGTEXT, Namespace VARCHAR(63));
                          CREATE TABLE run_details (UUID VARCHAR(64) PRIMARY KEY, DisplayName VARCHAR(255) NOT NULL, ExperimentUUID VARCHAR(64), CreatedAtInSec BIGINT, Conditions VARCHAR(125));")?;
        for i in 0..rows {
            tx.execute(
                "INSERT INTO pipelines VALUES (?1, ?2, ?3, 'sandbox pipeline', 'kubeflow-user')",
                params![
                    det_text(seed, &format!("p{i}"), 36),
                    1_735_689_600 + i as i64,
                    format!("pipeline-{i}")
                ],
            )?;
            tx.execute(
                "INSERT INTO run_details VALUES (?1, ?2, NULL, ?3, 'Succeeded')",
                params![
                    det_text(seed, &format!("r{i}"), 36),
                    format!("run-{i}"),
                    1_735_689_600 + i as i64
                ],
            )?;
        }
    }
    tx.commit()?;
    Ok(())
}

/// What to put in the `mlpipeline` bucket.
#[derive(Debug, Clone, Copy)]
pub struct BucketSpec {
    pub small: usize,
    pub small_size: usize,
    pub large: usize,
    pub large_size: u64,
    pub zero: usize,
    /// Keys with spaces, unicode, `+`, `%`, `=` and deep paths.
    pub awkward: bool,
    pub seed: u64,
    pub concurrency: usize,
    /// Small objects are `small_size` plus up to this many more bytes (a hash of the key
    /// picks how many), so sizes vary like real artifacts'.
    pub small_spread: usize,
}

impl Default for BucketSpec {
    fn default() -> Self {
        BucketSpec {
            small: 40,
            small_size: 16 * 1024,
            large: 2,
            large_size: 3 * 1024 * 1024,
            zero: 3,
            awkward: true,
            seed: 1,
            concurrency: 16,
            small_spread: 0,
        }
    }
}

/// One object the generator makes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeedObject {
    pub key: String,
    pub size: u64,
    pub content_type: &'static str,
    pub metadata: Vec<(String, String)>,
}

/// The objects of a spec, KFP-like keys, deterministic.
pub fn bucket_objects(spec: &BucketSpec) -> Vec<SeedObject> {
    let mut out = vec![];
    let uuid = |tag: &str| {
        crate::model::uuid_from(&Sha256::digest(format!("{}:{tag}", spec.seed).as_bytes()))
    };
    let components = ["preprocess", "train", "evaluate", "deploy"];
    for i in 0..spec.small {
        let run = uuid(&format!("run{}", i / 8));
        let key = match i % 4 {
            0 => format!("pipelines/{}", uuid(&format!("pipe{i}"))),
            1 => format!(
                "v2/artifacts/training-pipeline/{run}/{}/metrics-{i}.json",
                components[(i / 4) % components.len()]
            ),
            2 => format!(
                "artifacts/training-pipeline-{}/2025/01/{:02}/training-pipeline-{}-{i}/main.log",
                &run[..8],
                1 + i % 28,
                &run[..5]
            ),
            _ => format!(
                "v2/artifacts/training-pipeline/{run}/{}/dataset-{i}.csv",
                components[i % components.len()]
            ),
        };
        let (ct, md) = match i % 4 {
            0 => ("application/x-yaml", vec![]),
            1 => (
                "application/json",
                vec![("kfp-artifact".to_string(), "metrics".to_string())],
            ),
            2 => ("text/plain", vec![]),
            _ => ("text/csv", vec![]),
        };
        let extra = match spec.small_spread {
            0 => 0,
            n => {
                u64::from_le_bytes(Sha256::digest(key.as_bytes())[..8].try_into().unwrap())
                    % (n as u64 + 1)
            }
        };
        out.push(SeedObject {
            key,
            size: spec.small_size as u64 + extra,
            content_type: ct,
            metadata: md,
        });
    }
    for i in 0..spec.large {
        out.push(SeedObject {
            key: format!(
                "v2/artifacts/training-pipeline/{}/train/model-{i}.bin",
                uuid("large")
            ),
            size: spec.large_size,
            content_type: "application/octet-stream",
            metadata: vec![("framework".into(), "pytorch".into())],
        });
    }
    for i in 0..spec.zero {
        out.push(SeedObject {
            key: format!(
                "v2/artifacts/training-pipeline/{}/evaluate/_SUCCESS-{i}",
                uuid("zero")
            ),
            size: 0,
            content_type: "application/octet-stream",
            metadata: vec![],
        });
    }
    if spec.awkward {
        let deep = (0..20)
            .map(|d| format!("d{d}"))
            .collect::<Vec<_>>()
            .join("/");
        for key in [
            "v2/artifacts/my pipeline/run one/data set (copy).csv".to_string(),
            "v2/artifacts/ünïcødé/数据/résumé.txt".to_string(),
            "artifacts/a+b=c&d.txt".to_string(),
            "artifacts/100%/done%20.json".to_string(),
            format!("artifacts/deep/{deep}/leaf.txt"),
            "artifacts/trailing.dot.".to_string(),
            "artifacts/semi;colon,comma'quote.txt".to_string(),
        ] {
            out.push(SeedObject {
                key,
                size: 1000,
                content_type: "text/plain",
                metadata: vec![],
            });
        }
    }
    out
}

/// Deterministic bytes of an object: a keyed stream, so any object can be regenerated to check.
pub struct ContentReader {
    seed: [u8; 32],
    remaining: u64,
    block: u64,
    buf: Vec<u8>,
    pos: usize,
}

impl ContentReader {
    pub fn new(seed: u64, key: &str, size: u64) -> Self {
        let s: [u8; 32] = Sha256::digest(format!("{seed}:{key}").as_bytes()).into();
        ContentReader {
            seed: s,
            remaining: size,
            block: 0,
            buf: vec![],
            pos: 0,
        }
    }

    fn refill(&mut self) {
        // 32 bytes of SHA-256 expand into 8 KiB of xorshift output: fast and keyed.
        let h: [u8; 32] = Sha256::new()
            .chain_update(self.seed)
            .chain_update(self.block.to_le_bytes())
            .finalize()
            .into();
        self.block += 1;
        let mut x = u64::from_le_bytes(h[0..8].try_into().unwrap()) | 1;
        self.buf.clear();
        for _ in 0..1024 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            self.buf.extend_from_slice(&x.to_le_bytes());
        }
        self.pos = 0;
    }

    pub fn read_into(&mut self, out: &mut [u8]) -> usize {
        let mut n = 0;
        while n < out.len() && self.remaining > 0 {
            if self.pos == self.buf.len() {
                self.refill();
            }
            let take = (out.len() - n)
                .min(self.buf.len() - self.pos)
                .min(self.remaining as usize);
            out[n..n + take].copy_from_slice(&self.buf[self.pos..self.pos + take]);
            self.pos += take;
            n += take;
            self.remaining -= take as u64;
        }
        n
    }

    pub fn to_vec(mut self) -> Vec<u8> {
        let mut v = vec![0u8; self.remaining as usize];
        let n = self.read_into(&mut v);
        v.truncate(n);
        v
    }
}

impl AsyncRead for ContentReader {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let n = self.read_into(buf.initialize_unfilled());
        buf.advance(n);
        Poll::Ready(Ok(()))
    }
}

/// Uploads the spec's objects into the bucket; returns them.
pub async fn fill_bucket(target: &S3Target, spec: &BucketSpec) -> Result<Vec<SeedObject>> {
    let bucket = target.open()?;
    let objects = bucket_objects(spec);
    let results: Vec<Result<()>> = futures::stream::iter(objects.clone())
        .map(|o| {
            let bucket = bucket.clone();
            async move {
                if o.size > 8 * 1024 * 1024 {
                    let mut r = ContentReader::new(spec.seed, &o.key, o.size);
                    let mut req = bucket
                        .put_object_stream_builder(&o.key)
                        .with_content_type(o.content_type);
                    for (k, v) in &o.metadata {
                        req = req.with_metadata(k, v)?;
                    }
                    req.execute_stream(&mut r)
                        .await
                        .with_context(|| format!("uploading {}", o.key))?;
                } else {
                    let data = ContentReader::new(spec.seed, &o.key, o.size).to_vec();
                    let mut req = bucket
                        .put_object_builder(&o.key, &data)
                        .with_content_type(o.content_type);
                    for (k, v) in &o.metadata {
                        req = req.with_metadata(k, v)?;
                    }
                    req.execute()
                        .await
                        .with_context(|| format!("uploading {}", o.key))?;
                }
                Ok(())
            }
        })
        .buffer_unordered(spec.concurrency.max(1))
        .collect()
        .await;
    for r in results {
        r?;
    }
    Ok(objects)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_are_unique_and_sizes_follow_the_spec() {
        let spec = BucketSpec {
            small: 500,
            large: 3,
            zero: 4,
            ..BucketSpec::default()
        };
        let objs = bucket_objects(&spec);
        let keys: std::collections::BTreeSet<_> = objs.iter().map(|o| o.key.clone()).collect();
        assert_eq!(keys.len(), objs.len());
        assert_eq!(objs.len(), 500 + 3 + 4 + 7);
        assert_eq!(objs.iter().filter(|o| o.size == 0).count(), 4);
        assert_eq!(objs.iter().filter(|o| o.size == spec.large_size).count(), 3);
    }

    #[test]
    fn content_is_deterministic_per_seed_and_key() {
        let a = ContentReader::new(1, "k", 100_000).to_vec();
        assert_eq!(a.len(), 100_000);
        assert_eq!(a, ContentReader::new(1, "k", 100_000).to_vec());
        assert_ne!(a, ContentReader::new(2, "k", 100_000).to_vec());
        assert_ne!(a, ContentReader::new(1, "k2", 100_000).to_vec());
        // A prefix of a longer object is the same bytes: sizes do not change content.
        assert_eq!(
            &ContentReader::new(1, "k", 200_000).to_vec()[..100_000],
            &a[..]
        );
    }

    #[test]
    fn mlmd_database_has_the_v10_schema_and_the_requested_rows() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mlmd.db");
        let spec = MlmdSpec {
            runs: 5,
            executions_per_run: 3,
            artifacts_per_execution: 2,
            ..MlmdSpec::default()
        };
        write_mlmd(&path, &spec).unwrap();
        let counts: std::collections::BTreeMap<_, _> =
            mlmd_counts(&path).unwrap().into_iter().collect();
        assert_eq!(counts["MLMDEnv"], 1);
        assert_eq!(counts["Execution"], 5 * (3 + 1));
        assert_eq!(counts["Artifact"], 5 * 3 * 2);
        assert_eq!(counts["Event"], 5 * 3 * 2);
        assert_eq!(counts["Context"], 5 + 1);
        assert_eq!(counts.len(), 15);
        let db = Connection::open(&path).unwrap();
        let v: i64 = db
            .query_row("SELECT schema_version FROM MLMDEnv", [], |r| r.get(0))
            .unwrap();
        assert_eq!(v, 10);
        let ok: String = db
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .unwrap();
        assert_eq!(ok, "ok");
        let kinds: Vec<(String, i64)> = db
            .prepare("SELECT name, type_kind FROM Type ORDER BY id")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert!(kinds.contains(&("system.ContainerExecution".into(), 0)));
        assert!(kinds.contains(&("system.Dataset".into(), 1)));
        assert!(kinds.contains(&("system.PipelineRun".into(), 2)));
    }
}
