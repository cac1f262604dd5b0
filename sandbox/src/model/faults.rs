//! What can go wrong, on purpose: injected faults, and how long simulated changes take.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

/// How long simulated changes take. Small by default so tests stay fast, but never zero:
/// callers must poll, as they would against a real controller.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Timing {
    /// From `scale-application` until units appear or go.
    pub scale_delay_ms: u64,
    /// From a unit's (or pod's) creation until it is active and ready.
    pub ready_delay_ms: u64,
    /// A deleted pod stays terminating for this long, then is absent until it comes back.
    pub pod_terminating_ms: u64,
    pub pod_recreate_ms: u64,
    /// The time every action takes, as seen by `juju run --wait` and `show-task`.
    pub action_ms: u64,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            scale_delay_ms: 400,
            ready_delay_ms: 600,
            pod_terminating_ms: 200,
            pod_recreate_ms: 400,
            action_ms: 50,
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Faults {
    /// One-shot failures of the next matching action.
    #[serde(default)]
    pub fail_next_action: Vec<ActionFault>,
    /// Applications whose `scale-application` never settles.
    #[serde(default)]
    pub hang_scale: BTreeSet<String>,
    /// The next N juju invocations exit 1 with a connection error before doing anything.
    #[serde(default)]
    pub juju_errors: u32,
    /// Extra time every action takes (a slow controller or a large database).
    #[serde(default)]
    pub action_delay_ms: u64,
    /// The Kubernetes API answers 503 to everything.
    #[serde(default)]
    pub k8s_unavailable: bool,
    /// Exec streams are cut after this many stdout bytes (a dropped connection).
    #[serde(default)]
    pub exec_cut_after_bytes: Option<u64>,
    /// Only the next exec stream is cut (a blip), not every one.
    #[serde(default)]
    pub exec_cut_once: bool,
    /// The next exec stream stops after this many stdout bytes and sets `exec_paused`; it goes
    /// on when `exec_paused` is cleared (a test changes a file mid-copy in between).
    #[serde(default)]
    pub exec_pause_after_bytes: Option<u64>,
    #[serde(default)]
    pub exec_paused: bool,
    /// Applications whose deleted pods never come back (an image that cannot be pulled).
    #[serde(default)]
    pub pods_stuck: BTreeSet<String>,
    /// The API server speaks only the older `v4.channel.k8s.io` stream protocol (no stdin close).
    #[serde(default)]
    pub k8s_v4_only: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct ActionFault {
    /// A unit (`kfp-db/1`), or an application name for any of its units.
    pub unit: String,
    #[serde(default)]
    pub action: Option<String>,
    pub message: String,
}
