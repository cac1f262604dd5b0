//! The repository in the bucket: where each backup's files live, the statefile (schema v1) that
//! makes S3 the only state, backup ids, and listing backups from their statefiles alone.

use std::collections::BTreeMap;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};

use crate::store::{Store, StoreError};

/// Everything backup-agent writes lives under this prefix of the store's root.
pub const REPO: &str = "backup-agent";
pub const SCHEMA_VERSION: u32 = 1;

pub fn backups_prefix() -> String {
    format!("{REPO}/backups/")
}

pub fn statefile_key(id: &str) -> String {
    format!("{REPO}/backups/{id}/statefile.json")
}

pub fn mlmd_key(id: &str) -> String {
    format!("{REPO}/backups/{id}/mlmd.db.zst")
}

pub fn manifest_key(id: &str) -> String {
    format!("{REPO}/backups/{id}/mlpipeline.manifest")
}

/// Content-addressed blobs, shared by every backup: `blobs/ab/abcdef...`.
pub fn blob_key(sha256_hex: &str) -> String {
    format!("{REPO}/blobs/{}/{sha256_hex}", &sha256_hex[..2])
}

pub fn lock_key() -> String {
    format!("{REPO}/lock.json")
}

/// A backup id: UTC time to the second (sortable) and a short random suffix (unique).
pub fn new_backup_id(now: DateTime<Utc>) -> String {
    use rand::Rng;
    let suffix: u32 = rand::rng().random();
    format!(
        "{}-{:06x}",
        now.format("%Y%m%dT%H%M%SZ"),
        suffix & 0xff_ffff
    )
}

/// Whether `id` has the shape of a backup id: it becomes part of object keys, so nothing else
/// (no `/`, no `..`) may pass.
/// A backup id given on a command line, checked before anything runs.
pub fn parse_backup_id(id: &str) -> Result<String, String> {
    if is_backup_id(id) {
        Ok(id.to_string())
    } else {
        Err(CatalogError::BadId { id: id.into() }.to_string())
    }
}

pub fn is_backup_id(id: &str) -> bool {
    let Some((time, suffix)) = id.split_once('-') else {
        return false;
    };
    chrono::NaiveDateTime::parse_from_str(time, "%Y%m%dT%H%M%SZ").is_ok()
        && suffix.len() == 6
        && suffix
            .chars()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    Initialized,
    Quiescing,
    Capturing,
    Verifying,
    Completed,
    PartiallyFailed,
    Failed,
}

impl Phase {
    pub fn as_str(&self) -> &'static str {
        match self {
            Phase::Initialized => "initialized",
            Phase::Quiescing => "quiescing",
            Phase::Capturing => "capturing",
            Phase::Verifying => "verifying",
            Phase::Completed => "completed",
            Phase::PartiallyFailed => "partially-failed",
            Phase::Failed => "failed",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RequestType {
    Manual,
    Scheduled,
}

/// One app whose scale a run changed, with the scale to put back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct ScaleRecord {
    pub app: String,
    pub original: u32,
    pub changed_to: u32,
    pub restored: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct MysqlCapture {
    pub app: String,
    pub unit: String,
    pub backup_id: String,
    /// Where mysql-k8s put it: `<bucket>/<path>` of its s3-integrator relation.
    pub location: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct MlmdCapture {
    pub key: String,
    pub size: u64,
    pub compressed_size: u64,
    pub sha256: String,
    pub integrity_check: String,
    pub row_counts: BTreeMap<String, i64>,
    pub container: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct MlpipelineCapture {
    pub manifest_key: String,
    pub manifest_sha256: String,
    pub objects: u64,
    pub bytes: u64,
    /// Bytes uploaded by this backup (new blobs); the rest was already in the repository.
    pub new_bytes: u64,
    pub new_objects: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Components {
    #[serde(default)]
    pub mysql: Vec<MysqlCapture>,
    #[serde(default)]
    pub mlmd: Option<MlmdCapture>,
    #[serde(default)]
    pub mlpipeline: Option<MlpipelineCapture>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct ErrorRecord {
    pub component: String,
    pub message: String,
    pub at: DateTime<Utc>,
}

/// The statefile: written as a backup progresses, last with its final phase. Never holds a
/// credential.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Statefile {
    pub schema_version: u32,
    pub backup_id: String,
    #[serde(default)]
    pub label: String,
    pub request: RequestType,
    pub phase: Phase,
    pub started_at: DateTime<Utc>,
    #[serde(default)]
    pub finished_at: Option<DateTime<Utc>>,
    pub agent_version: String,
    pub model: String,
    /// Charm and revision of every application seen, `app → "charm rREV"`.
    #[serde(default)]
    pub charms: BTreeMap<String, String>,
    /// Which parts this backup was asked to hold.
    pub requested: Vec<String>,
    #[serde(default)]
    pub components: Components,
    #[serde(default)]
    pub quiesce: Vec<ScaleRecord>,
    #[serde(default)]
    pub errors: Vec<ErrorRecord>,
    /// Verifications and restores performed later, appended by those commands.
    #[serde(default)]
    pub history: Vec<serde_json::Value>,
    /// sha256 of this statefile written without this field: an edit or a corruption of the
    /// record shows (verify-backup checks it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checksum: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{key}: not a statefile ({detail})")]
    Malformed { key: String, detail: String },
    #[error("{key}: statefile schema version {found} is newer than this backup-agent understands ({SCHEMA_VERSION}): upgrade backup-agent")]
    UnknownSchema { key: String, found: u32 },
    #[error("{id:?} is not a backup id (they look like 20250101T000000Z-1a2b3c): see `backup-agent list-backups`")]
    BadId { id: String },
    #[error("no backup {id} in {store}: see `backup-agent list-backups`")]
    NoSuchBackup { id: String, store: String },
}

impl Statefile {
    pub fn parse(key: &str, bytes: &[u8]) -> Result<Statefile, CatalogError> {
        let v: serde_json::Value =
            serde_json::from_slice(bytes).map_err(|e| CatalogError::Malformed {
                key: key.into(),
                detail: e.to_string(),
            })?;
        let found = v
            .get("schema-version")
            .and_then(|s| s.as_u64())
            .ok_or_else(|| CatalogError::Malformed {
                key: key.into(),
                detail: "no schema-version".into(),
            })?;
        if found as u32 != SCHEMA_VERSION {
            return Err(CatalogError::UnknownSchema {
                key: key.into(),
                found: found as u32,
            });
        }
        serde_json::from_value(v).map_err(|e| CatalogError::Malformed {
            key: key.into(),
            detail: e.to_string(),
        })
    }

    /// The JSON written to the bucket, sealed with its checksum.
    pub fn to_json(&self) -> Vec<u8> {
        let mut sealed = self.clone();
        sealed.checksum = Some(self.computed_checksum());
        let mut v = serde_json::to_vec_pretty(&sealed).expect("statefile serializes");
        v.push(b'\n');
        v
    }

    fn computed_checksum(&self) -> String {
        use sha2::Digest;
        let mut bare = self.clone();
        bare.checksum = None;
        hex::encode(sha2::Sha256::digest(
            serde_json::to_vec(&bare).expect("statefile serializes"),
        ))
    }

    /// Whether the record is as it was written: `None` when it carries no checksum.
    pub fn checksum_ok(&self) -> Option<bool> {
        self.checksum
            .as_ref()
            .map(|c| *c == self.computed_checksum())
    }

    /// Total bytes the backup holds (MLMD compressed, mlpipeline objects).
    pub fn size(&self) -> u64 {
        self.components
            .mlmd
            .as_ref()
            .map_or(0, |m| m.compressed_size)
            + self.components.mlpipeline.as_ref().map_or(0, |p| p.bytes)
    }

    pub fn new_bytes(&self) -> u64 {
        self.components
            .mlmd
            .as_ref()
            .map_or(0, |m| m.compressed_size)
            + self
                .components
                .mlpipeline
                .as_ref()
                .map_or(0, |p| p.new_bytes)
    }

    pub fn captured(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .components
            .mysql
            .iter()
            .map(|m| m.app.clone())
            .collect();
        if self.components.mlmd.is_some() {
            out.push("mlmd".into());
        }
        if self.components.mlpipeline.is_some() {
            out.push("mlpipeline".into());
        }
        out
    }
}

/// Writes a statefile (sealed), retrying transient failures.
pub async fn save(store: &Store, sf: &Statefile) -> Result<(), StoreError> {
    let key = statefile_key(&sf.backup_id);
    let body = sf.to_json();
    crate::retry::retry(crate::retry::ATTEMPTS, &key, || {
        store.put_bytes(&key, &body, "application/json")
    })
    .await
}

/// Appends a verification or restore record to a backup's history.
pub async fn append_history(
    store: &Store,
    id: &str,
    entry: serde_json::Value,
) -> Result<(), CatalogError> {
    let mut sf = load(store, id).await?;
    sf.history.push(entry);
    save(store, &sf).await?;
    Ok(())
}

/// One row of `list-backups`, or the reason a statefile could not be read.
#[derive(Debug)]
pub enum Listed {
    Backup(Box<Statefile>),
    Unreadable { id: String, error: CatalogError },
}

/// Every backup in the store, oldest first, from the statefiles alone.
pub async fn list(store: &Store) -> Result<Vec<Listed>, CatalogError> {
    let objects = store.list(&backups_prefix()).await?;
    let mut out = vec![];
    for o in objects
        .iter()
        .filter(|o| o.key.ends_with("/statefile.json"))
    {
        let id = o
            .key
            .trim_start_matches(&backups_prefix())
            .trim_end_matches("/statefile.json")
            .to_string();
        let parsed = match store.get_bytes(&o.key).await {
            Ok(bytes) => Statefile::parse(&o.key, &bytes),
            Err(e) => Err(e.into()),
        };
        out.push(match parsed {
            Ok(s) => Listed::Backup(Box::new(s)),
            Err(error) => Listed::Unreadable { id, error },
        });
    }
    Ok(out)
}

/// How many backups there are, the newest, and the newest completed one.
#[derive(Debug, Default)]
pub struct Summary {
    pub count: usize,
    pub newest: Option<Statefile>,
    pub newest_completed: Option<Statefile>,
}

/// Reads statefiles newest first (ids sort by time) and stops at the first completed one:
/// cheap enough for a status check every few minutes, however many backups there are.
pub async fn summary(store: &Store) -> Result<Summary, CatalogError> {
    let mut keys: Vec<String> = store
        .list(&backups_prefix())
        .await?
        .into_iter()
        .map(|o| o.key)
        .filter(|k| k.ends_with("/statefile.json"))
        .collect();
    keys.sort();
    let mut out = Summary {
        count: keys.len(),
        ..Summary::default()
    };
    for key in keys.iter().rev() {
        let Ok(sf) = Statefile::parse(key, &store.get_bytes(key).await?) else {
            continue;
        };
        let completed = sf.phase == Phase::Completed;
        if out.newest.is_none() {
            out.newest = Some(sf.clone());
        }
        if completed {
            out.newest_completed = Some(sf);
            break;
        }
    }
    Ok(out)
}

pub async fn load(store: &Store, id: &str) -> Result<Statefile, CatalogError> {
    if !is_backup_id(id) {
        return Err(CatalogError::BadId { id: id.into() });
    }
    let key = statefile_key(id);
    match store.get_bytes(&key).await {
        Ok(bytes) => Statefile::parse(&key, &bytes),
        Err(StoreError::NotFound { .. }) => Err(CatalogError::NoSuchBackup {
            id: id.into(),
            store: store.describe(),
        }),
        Err(e) => Err(e.into()),
    }
}

/// `1.5 GiB`, `12.0 KiB`, `0 B`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1024.0;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    format!("{v:.1} {}", UNITS[u])
}

fn human_duration(secs: i64) -> String {
    match secs {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m{:02}s", s / 60, s % 60),
        s => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}

/// The `list-backups` table.
pub fn render_table(rows: &[Listed]) -> String {
    let mut lines = vec![[
        "ID".to_string(),
        "STARTED".into(),
        "DURATION".into(),
        "PHASE".into(),
        "SIZE".into(),
        "NEW".into(),
        "COMPONENTS".into(),
        "LABEL".into(),
    ]];
    for r in rows {
        lines.push(match r {
            Listed::Backup(s) => [
                s.backup_id.clone(),
                s.started_at.to_rfc3339_opts(SecondsFormat::Secs, true),
                s.finished_at
                    .map(|f| human_duration((f - s.started_at).num_seconds()))
                    .unwrap_or_else(|| "-".into()),
                s.phase.as_str().into(),
                human_bytes(s.size()),
                human_bytes(s.new_bytes()),
                s.captured().join(","),
                s.label.clone(),
            ],
            Listed::Unreadable { id, .. } => [
                id.clone(),
                "-".into(),
                "-".into(),
                "unreadable".into(),
                "-".into(),
                "-".into(),
                "-".into(),
                "-".into(),
            ],
        });
    }
    let widths: Vec<usize> = (0..8)
        .map(|c| {
            lines
                .iter()
                .map(|l| l[c].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for l in &lines {
        let cells: Vec<String> = l
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Statefile {
        let t0 = DateTime::parse_from_rfc3339("2026-11-23T06:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        Statefile {
            schema_version: SCHEMA_VERSION,
            backup_id: "20261123T060000Z-0a1b2c".into(),
            label: "before-upgrade".into(),
            request: RequestType::Manual,
            phase: Phase::Completed,
            started_at: t0,
            finished_at: Some(t0 + chrono::Duration::seconds(95)),
            agent_version: "0.1.0".into(),
            model: "kubeflow".into(),
            charms: BTreeMap::from([("kfp-db".into(), "mysql-k8s r180".into())]),
            requested: vec![
                "kfp-db".into(),
                "katib-db".into(),
                "mlmd".into(),
                "mlpipeline".into(),
            ],
            components: Components {
                mysql: vec![MysqlCapture {
                    app: "kfp-db".into(),
                    unit: "kfp-db/1".into(),
                    backup_id: "2026-11-23T06:00:10Z".into(),
                    location: "ckf-backups/mysql".into(),
                }],
                mlmd: None,
                mlpipeline: Some(MlpipelineCapture {
                    manifest_key: manifest_key("20261123T060000Z-0a1b2c"),
                    manifest_sha256: "00".into(),
                    objects: 3,
                    bytes: 3 << 20,
                    new_bytes: 1 << 20,
                    new_objects: 1,
                }),
            },
            quiesce: vec![],
            errors: vec![],
            history: vec![],
            checksum: None,
        }
    }

    #[test]
    fn ids_sort_by_time_and_refuse_path_characters() {
        let t = DateTime::parse_from_rfc3339("2026-11-23T06:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let id = new_backup_id(t);
        assert!(id.starts_with("20261123T060000Z-"), "{id}");
        assert!(is_backup_id(&id));
        for bad in [
            "",
            "../x",
            "20261123T060000Z-0a1b2c/../../",
            "20261123T060000Z",
            "latest",
            "20261123T060000Z-0A1B2C",
        ] {
            assert!(!is_backup_id(bad), "{bad:?}");
        }
    }

    #[test]
    fn statefile_round_trips_and_rejects_what_it_cannot_read() {
        let s = sample();
        let bytes = s.to_json();
        let mut back = Statefile::parse("k", &bytes).unwrap();
        assert_eq!(back.checksum_ok(), Some(true), "sealed when written");
        back.label = "edited".into();
        assert_eq!(back.checksum_ok(), Some(false), "an edit shows");
        back.label = s.label.clone();
        back.checksum = None;
        assert_eq!(back, s);
        let text = String::from_utf8(bytes).unwrap();
        assert!(
            text.contains("\"phase\": \"completed\"") && text.contains("\"schema-version\": 1")
        );
        assert!(matches!(
            Statefile::parse("k", b"{not json"),
            Err(CatalogError::Malformed { .. })
        ));
        let future = text.replace("\"schema-version\": 1", "\"schema-version\": 2");
        let err = Statefile::parse("k", future.as_bytes()).unwrap_err();
        assert!(err.to_string().contains("upgrade backup-agent"), "{err}");
    }

    #[test]
    fn the_table_shows_one_line_per_backup() {
        let rows = vec![
            Listed::Backup(Box::new(sample())),
            Listed::Unreadable {
                id: "20261124T000000Z-ffffff".into(),
                error: CatalogError::BadId { id: "x".into() },
            },
        ];
        let table = render_table(&rows);
        let lines: Vec<&str> = table.lines().collect();
        assert!(lines[0].starts_with("ID"));
        for cell in [
            "20261123T060000Z-0a1b2c",
            "2026-11-23T06:00:00Z",
            "1m35s",
            "completed",
            "3.0 MiB",
            "1.0 MiB",
            "kfp-db,mlpipeline",
            "before-upgrade",
        ] {
            assert!(lines[1].contains(cell), "{cell} in {table}");
        }
        // Columns line up under their headers.
        let col = lines[0].find("PHASE").unwrap();
        assert_eq!(lines[1].find("completed"), Some(col));
        assert_eq!(lines[2].find("unreadable"), Some(col));
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
    }
}
