//! backup-agent: backs up and restores the Charmed Kubeflow control plane — the kfp-db and
//! katib-db MySQL databases (through mysql-k8s's own backup actions), the ML Metadata SQLite
//! database, and the `mlpipeline` MinIO bucket — into S3, as one consistent backup.
//!
//! The library owns all logic; the CLI, the charm dispatch and the daemon are thin adapters.

pub mod allocator;
pub mod backup;
pub mod catalog;
pub mod charm;
pub mod control_plane;
pub mod destination;
pub mod download;
pub mod hook_tools;
pub mod interrupt;
pub mod juju;
pub mod kube;
pub mod lease;
pub mod mlmd;
pub mod mlpipeline;
pub mod mysql;
pub mod pebble;
pub mod preflight;
pub mod progress;
pub mod prune;
pub mod quiesce;
pub mod recovery;
pub mod restore;
pub mod retention;
pub mod retry;
pub mod secret;
pub mod serve;
pub mod store;
pub mod terminal;
pub mod tls;
pub mod verify;
