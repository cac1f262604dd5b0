//! Parsers of what Juju, mysql-k8s and the charm's hook tools print, against recorded real
//! outputs, and retention's rules.
//!
//! One test binary (ripgrep's way): one link for all of them.

#[path = "../common/mod.rs"]
mod common;

mod charm_parse;
mod cli_habits;
mod juju_parse;
mod retention;
