//! The repository's own record of restore drills: the newest drill and the newest that passed,
//! whichever backups they drilled. A drill's full result lives in the drilled backup's
//! history, but retention may forget that backup long before the next drill is due; the
//! metrics (and the no-recent-drill alert) read this record, which outlives it.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::layout::drills_record_key;
use crate::storage::{Store, StoreError};

/// One drill, as the record keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct DrillSeen {
    pub backup_id: String,
    pub at: DateTime<Utc>,
    pub passed: bool,
    pub problems: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct DrillsRecord {
    pub newest: Option<DrillSeen>,
    pub newest_passed: Option<DrillSeen>,
}

impl DrillsRecord {
    /// The record with `d` taken in.
    pub fn with(mut self, d: DrillSeen) -> DrillsRecord {
        if d.passed {
            self.newest_passed = Some(d.clone());
        }
        self.newest = Some(d);
        self
    }
}

/// The record, or an empty one when no drill has written it yet. A record that does not
/// parse counts as empty: it is only a summary of the histories.
pub async fn load(store: &Store) -> Result<DrillsRecord, StoreError> {
    match store.get_bytes(&drills_record_key()).await {
        Ok(bytes) => Ok(serde_json::from_slice(&bytes).unwrap_or_default()),
        Err(StoreError::NotFound { .. }) => Ok(DrillsRecord::default()),
        Err(e) => Err(e),
    }
}

/// Takes drill `d` into the record (under the repository lock, so no other drill writes it).
pub async fn record(store: &Store, d: DrillSeen) -> Result<(), StoreError> {
    let next = load(store).await?.with(d);
    let body = serde_json::to_vec_pretty(&next).expect("serializes");
    let key = drills_record_key();
    crate::retry::retry(crate::retry::ATTEMPTS, &key, || {
        store.put_bytes(&key, &body, "application/json")
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_record_keeps_the_newest_drill_and_the_newest_that_passed() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::local(dir.path());
        assert_eq!(load(&store).await.unwrap(), DrillsRecord::default());
        let at = |s: i64| DateTime::from_timestamp(s, 0).unwrap();
        let seen = |s, passed| DrillSeen {
            backup_id: format!("b{s}"),
            at: at(s),
            passed,
            problems: u64::from(!passed),
        };
        record(&store, seen(1, true)).await.unwrap();
        record(&store, seen(2, false)).await.unwrap();
        let r = load(&store).await.unwrap();
        assert_eq!(r.newest, Some(seen(2, false)));
        assert_eq!(r.newest_passed, Some(seen(1, true)));
        store
            .put_bytes(&drills_record_key(), b"{not json", "application/json")
            .await
            .unwrap();
        assert_eq!(load(&store).await.unwrap(), DrillsRecord::default());
    }
}
