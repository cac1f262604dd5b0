//! The statefile (schema v1): the record of one backup that makes S3 the only state. Written as
//! a backup progresses, last with its final phase; sealed with a checksum; never a credential.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::backup_id::is_backup_id;
use super::error::CatalogError;
use super::layout::{statefile_key, SCHEMA_VERSION};
use crate::storage::{Store, StoreError};

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
    /// Its objects there (`<id>`, `<id>.md5`, ...) and their sizes, as listed once it
    /// finished: what a restore drill finds again. Empty when the bucket could not be read
    /// from here (older backups, or keys only mysql-k8s holds).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub objects: BTreeMap<String, u64>,
    /// In a copy of the backup (`backup-agent copy`): the prefix of this repository that holds
    /// those objects, copied from `location`. Whatever reads them here, the copy's own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub copied_to: Option<String>,
}

/// Where a copied backup came from: the source repository as messages name it (no key or
/// secret: `s3://bucket/path at endpoint`), and when the copy finished.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct CopyOrigin {
    pub from: String,
    pub at: DateTime<Utc>,
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
#[serde(from = "ComponentsWire", into = "ComponentsWire")]
pub struct Components {
    /// Every mysql-k8s backup, live (in mysql-k8s's bucket) or copied (`copied_to`).
    pub mysql: Vec<MysqlCapture>,
    pub mlmd: Option<MlmdCapture>,
    pub mlpipeline: Option<MlpipelineCapture>,
}

/// How [`Components`] is written: a copy's mysql-k8s backups under `mysql-copies`, so that an
/// agent that predates copies, pruning a copy, never takes them for mysql-k8s's own backups
/// (and deletes those, in mysql-k8s's bucket, which the primary still needs).
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
struct ComponentsWire {
    #[serde(default)]
    mysql: Vec<MysqlCapture>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    mysql_copies: Vec<MysqlCapture>,
    #[serde(default)]
    mlmd: Option<MlmdCapture>,
    #[serde(default)]
    mlpipeline: Option<MlpipelineCapture>,
}

impl From<ComponentsWire> for Components {
    fn from(w: ComponentsWire) -> Self {
        let mut mysql = w.mysql;
        mysql.extend(w.mysql_copies.into_iter().filter(|m| m.copied_to.is_some()));
        Components {
            mysql,
            mlmd: w.mlmd,
            mlpipeline: w.mlpipeline,
        }
    }
}

impl From<Components> for ComponentsWire {
    fn from(c: Components) -> Self {
        let (mysql_copies, mysql) = c.mysql.into_iter().partition(|m| m.copied_to.is_some());
        ComponentsWire {
            mysql,
            mysql_copies,
            mlmd: c.mlmd,
            mlpipeline: c.mlpipeline,
        }
    }
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
    /// Set in a copy made by `backup-agent copy`: where it came from and when.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub copied_from: Option<CopyOrigin>,
    /// sha256 of this statefile written without this field: an edit or a corruption of the
    /// record shows (verify-backup checks it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checksum: Option<String>,
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

    /// Every check of kind `event` in the history (`verify`, `drill`): when it ran, and
    /// whether it passed.
    pub fn checks<'a>(
        &'a self,
        event: &'a str,
    ) -> impl Iterator<Item = (DateTime<Utc>, bool)> + 'a {
        self.history
            .iter()
            .filter(move |h| h["event"] == event)
            .filter_map(|h| {
                let at = h["at"].as_str()?.parse::<DateTime<Utc>>().ok()?;
                Some((at, h["outcome"] == "passed"))
            })
    }

    /// Every restore drill of this backup: when it ran, and whether it passed.
    pub fn drills(&self) -> impl Iterator<Item = (DateTime<Utc>, bool)> + '_ {
        self.checks("drill")
    }

    /// The newest restore drill of this backup.
    pub fn last_drill(&self) -> Option<(DateTime<Utc>, bool)> {
        self.drills().max_by_key(|(at, _)| *at)
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

pub async fn load(store: &Store, id: &str) -> Result<Statefile, CatalogError> {
    if !is_backup_id(id) {
        return Err(CatalogError::BadId { id: id.into() });
    }
    let key = statefile_key(id);
    match crate::retry::retry(crate::retry::ATTEMPTS, &key, || store.get_bytes(&key)).await {
        Ok(bytes) => Statefile::parse(&key, &bytes),
        Err(StoreError::NotFound { .. }) => Err(CatalogError::NoSuchBackup {
            id: id.into(),
            store: store.describe(),
        }),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::repository::layout::manifest_key;

    pub(crate) fn sample() -> Statefile {
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
                    objects: BTreeMap::new(),
                    copied_to: None,
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
            copied_from: None,
            checksum: None,
        }
    }

    #[test]
    fn a_copys_mysql_backups_are_written_where_older_agents_do_not_look() {
        let mut s = sample();
        s.components.mysql[0].copied_to = Some("backup-agent/mysql/ckf-backups/mysql".into());
        let bytes = s.to_json();
        let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(v["components"]["mysql"], serde_json::json!([]));
        assert_eq!(v["components"]["mysql-copies"][0]["app"], "kfp-db");
        let back = Statefile::parse("k", &bytes).unwrap();
        assert_eq!(back.components.mysql, s.components.mysql);
        assert_eq!(back.checksum_ok(), Some(true));
        // A live capture stays where every agent reads it.
        let v: serde_json::Value = serde_json::from_slice(&sample().to_json()).unwrap();
        assert_eq!(v["components"]["mysql"][0]["app"], "kfp-db");
        assert!(v["components"].get("mysql-copies").is_none());
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
}
