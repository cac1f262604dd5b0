//! backup-agent: backs up and restores the Charmed Kubeflow control plane — the kfp-db and
//! katib-db MySQL databases (through mysql-k8s's own backup actions), the ML Metadata SQLite
//! database, and the `mlpipeline` MinIO bucket — into S3, as one consistent backup.
//!
//! The library owns all logic; the CLI, the charm dispatch and the daemon are thin adapters.
//! Read docs/ARCHITECTURE.md for the folders and how a backup flows through them.

pub mod charm;
pub mod commands;
pub mod components;
pub mod context;
pub mod daemon;
pub mod interrupt;
pub mod juju;
pub mod kube;
pub mod progress;
pub mod repository;
pub mod retry;
pub mod secret;
pub mod sorted;
pub mod storage;
pub mod units;
