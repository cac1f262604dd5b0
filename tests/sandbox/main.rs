//! The agent against the simulated Charmed Kubeflow model (juju, Kubernetes, Pebble and
//! hook-tool simulators, SeaweedFS for MinIO and the destination): every command, the charm,
//! the daemon, faults and bad input.
//!
//! One test binary (ripgrep's way): one link for all of them.

#[path = "../common/mod.rs"]
mod common;

mod bad_input;
mod charm;
mod copy;
mod create_backup;
mod drill;
mod faults;
mod kubectl;
mod mlmd_capture;
mod mlpipeline_capture;
mod mysql_capture;
mod mysql_flow;
mod prune;
mod recovery;
mod requests;
mod restore;
mod scale;
mod serve;
