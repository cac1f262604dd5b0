//! What can go wrong reading the repository, with the next step for the operator.

use super::layout::SCHEMA_VERSION;
use crate::storage::StoreError;

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
