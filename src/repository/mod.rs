//! The backup repository in the destination bucket: where every key lives, backup ids, the
//! statefile, the mlpipeline manifest, the lock, and which backups retention keeps. The format is defined here and
//! nowhere else; commands and components name keys only through these functions.

pub mod backup_id;
pub mod catalog;
pub mod drills;
mod error;
pub mod layout;
pub mod lock;
pub mod manifest;
pub mod pack;
pub mod pack_refs;
pub mod packer;
pub mod retention;
pub mod statefile;

pub use backup_id::{is_backup_id, new_backup_id, parse_backup_id};
pub use catalog::{list, summary, Listed, Summary};
pub use error::CatalogError;
pub use layout::{
    backups_prefix, blob_key, blob_of, blobs_prefix, drill_scratch_prefix, lock_key, manifest_key,
    mlmd_key, probe_key, repo_prefix, scratch_prefix_ok, statefile_key, tombstone_key, REPO,
    SCHEMA_VERSION,
};
pub use manifest::{is_sha256, Entry, ManifestError, ManifestWriter, Stored, Written};
pub use statefile::{
    append_history, load, save, Components, CopyOrigin, ErrorRecord, MlmdCapture,
    MlpipelineCapture, MysqlCapture, Phase, RequestType, ScaleRecord, Statefile,
};
