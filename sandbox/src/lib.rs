//! The backup-agent sandbox: a simulated Charmed Kubeflow model to build and test against.
//!
//! Juju and Kubernetes cannot run here, so the sandbox carries faithful simulators of the
//! parts backup-agent talks to — a `juju` CLI, a Kubernetes API server, the Pebble daemon of a
//! sidecar charm's workload container — over a model kept in a file, next to two real S3
//! servers (SeaweedFS) standing in for MinIO and the destination. It is test and demo support:
//! never shipped inside the charm.
//!
//! The modules, from the top (uses what is below) to the bottom (uses nothing of ours):
//!
//! ```text
//! env          up/down/status of the whole sandbox; ckf: the Kubeflow model it starts with
//! juju         the `juju` CLI: one `juju run`, one action-schema validator, status, deploy...
//! charms       what each charm does: mysql-k8s and s3-integrator simulated, local ones run
//! hook_tools   the unit agent's side: the hook context, the hook tools, running `dispatch`
//! k8s pebble   the Kubernetes API server; a workload container's Pebble
//! s3 seed      SeaweedFS servers and the fault proxy; deterministic test data
//! model        the model file: state, faults, ids, its store
//! outcome go_time process   what a command prints; Go's time formats; detached processes
//! ```

pub mod charms;
pub mod env;
pub mod go_time;
pub mod hook_tools;
pub mod juju;
pub mod k8s;
pub mod model;
pub mod outcome;
pub mod pebble;
pub mod process;
pub mod s3;
pub mod seed;

pub use env::{Info, Layout, S3Role, Sandbox, UpOptions};
