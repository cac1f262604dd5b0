//! The parts of the control plane a backup holds, one folder each: how a part is captured,
//! put back, checked and forgotten.
//!
//! [`Part`] is what every part answers from the statefile alone, and [`PARTS`] lists them:
//! the commands that need no more than that (verify-backup, restore's check first) walk the
//! list and never name a part. Capture and restore run inside the quiesce window and need
//! each part's own clients (mysql-k8s through juju, MLMD through the pod, the bucket through
//! MinIO), so the commands call them by name.

pub mod check;
pub mod mlmd;
pub mod mlpipeline;
pub mod mysql;

use serde::{Deserialize, Serialize};

use crate::repository::Statefile;
use check::{CheckContext, Verification};

/// What every part of a backup does with what a statefile records of it.
///
/// Not `Send`: the bucket's check borrows the store across a buffered stream, which rustc
/// cannot prove `Send` (a higher-ranked closure lifetime); no caller moves a check to another
/// thread.
#[async_trait::async_trait(?Send)]
pub trait Part: Sync {
    /// Whether backup `sf` holds this part.
    fn held(&self, sf: &Statefile) -> bool;

    /// Checks what `sf` records of this part (light, or reading it back), adding what is
    /// wrong to `v`.
    async fn check(&self, cx: &CheckContext<'_>, sf: &Statefile, v: &mut Verification);
}

/// Every part, in the order the commands walk them. A new component is a folder below and a
/// line here.
pub static PARTS: &[&dyn Part] = &[&mlmd::Mlmd, &mlpipeline::Mlpipeline, &mysql::Mysql];

/// The parts of the control plane a backup holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Component {
    KfpDb,
    KatibDb,
    Mlmd,
    Mlpipeline,
}

impl Component {
    pub const ALL: [Component; 4] = [
        Component::KfpDb,
        Component::KatibDb,
        Component::Mlmd,
        Component::Mlpipeline,
    ];

    pub fn as_str(&self) -> &'static str {
        match self {
            Component::KfpDb => "kfp-db",
            Component::KatibDb => "katib-db",
            Component::Mlmd => "mlmd",
            Component::Mlpipeline => "mlpipeline",
        }
    }
}

impl std::fmt::Display for Component {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Component {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Component::ALL
            .into_iter()
            .find(|c| c.as_str() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = Component::ALL.iter().map(|c| c.as_str()).collect();
                format!("unknown component {s:?}; use one of {}", names.join(", "))
            })
    }
}
