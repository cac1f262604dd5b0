//! The backup-agent sandbox: a simulated Charmed Kubeflow model to build and test against.
//!
//! Juju and Kubernetes cannot run here, so the sandbox carries faithful simulators of the
//! parts backup-agent talks to — a `juju` CLI, a Kubernetes API server, the Pebble daemon of a
//! sidecar charm's workload container — over a model kept in a file, next to two real S3
//! servers (SeaweedFS) standing in for MinIO and the destination. It is test and demo support:
//! never shipped inside the charm.

pub mod actions;
pub mod charm;
pub mod ckf;
pub mod env;
pub mod fault_proxy;
pub mod hook_tools;
pub mod juju;
pub mod k8s;
pub mod model;
pub mod pebble;
pub mod process;
pub mod s3;
pub mod seed;

pub use env::{Info, Layout, S3Role, Sandbox, UpOptions};
