//! Checking a backup's parts: the vocabulary every component's check shares, and the trait
//! each component implements so that `verify-backup` (and restore's preflight) can walk them
//! all without knowing what they are.

use std::path::Path;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::juju::JujuCli;
use crate::progress::Progress;
use crate::storage::Store;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    Light,
    ReadData,
}

impl Mode {
    pub fn as_str(&self) -> &'static str {
        match self {
            Mode::Light => "light",
            Mode::ReadData => "read-data",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct Problem {
    pub component: String,
    pub key: String,
    pub detail: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}: {}", self.component, self.key, self.detail)
    }
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct Verification {
    pub backup_id: String,
    pub mode: Mode,
    pub at: DateTime<Utc>,
    pub passed: bool,
    pub problems: Vec<Problem>,
    pub objects_checked: u64,
    pub bytes_read: u64,
}

/// A finding of a check, named by component and object key.
pub fn problem(component: &str, key: &str, detail: impl Into<String>) -> Problem {
    Problem {
        component: component.into(),
        key: key.into(),
        detail: detail.into(),
    }
}

/// What a check works with.
pub struct CheckContext<'a> {
    pub dest: &'a Store,
    /// mysql-k8s is asked through juju; without a client its parts are reported unchecked.
    pub juju: Option<&'a JujuCli>,
    pub mode: Mode,
    /// Where a part may be read back to (MLMD is opened by SQLite from a file), and where
    /// sorted runs spill.
    pub spool: &'a Path,
    pub streaming: crate::context::Streaming,
    pub progress: &'a Progress,
}
