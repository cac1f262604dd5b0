//! What the unit's status says: the first thing missing, named with the command that fixes it
//! (`blocked`), s3-integrator not answered yet (`waiting`), or the newest backup (`active`).

use chrono::{DateTime, Utc};

use crate::charm::hook_tools::{HookTools, Status};
use crate::repository::{self, Summary};
use crate::storage::Store;

use super::controller;
use super::relations::{self, S3State};
use super::settings::Settings;

#[derive(Debug, Clone, PartialEq)]
pub struct Assessment {
    pub status: Status,
    pub message: String,
}

impl Assessment {
    pub fn blocked(message: impl Into<String>) -> Self {
        Self::new(Status::Blocked, message)
    }

    fn new(status: Status, message: impl Into<String>) -> Self {
        Assessment {
            status,
            message: message.into(),
        }
    }
}

/// Everything an action needs, or the assessment that says why the unit cannot act.
pub struct Ready {
    pub settings: Settings,
    pub destination: Box<relations::S3Destination>,
    /// The off-site copy's destination (the s3-secondary relation), once it is usable.
    pub secondary: Option<Box<relations::S3Destination>>,
}

/// Checks config and the destination relation (`broken`: a relation id on its way out).
pub fn ready(app: &str, tools: &HookTools, broken: Option<&str>) -> Result<Ready, Assessment> {
    let config = tools
        .config()
        .map_err(|e| Assessment::new(Status::Blocked, format!("cannot read config: {e}")))?;
    let settings =
        Settings::from_config(app, &config).map_err(|m| Assessment::new(Status::Blocked, m))?;
    let state = relations::s3_state(tools, broken).map_err(|e| {
        Assessment::new(
            Status::Blocked,
            format!("cannot read the s3-credentials relation: {e}"),
        )
    })?;
    let destination = match state {
        S3State::Ready(d) => d,
        S3State::NotRelated => {
            return Err(Assessment::new(
                Status::Blocked,
                format!("missing relation s3-credentials: juju integrate {app}:s3-credentials s3-integrator"),
            ))
        }
        S3State::Waiting { app: provider, .. } => {
            return Err(Assessment::new(
                Status::Waiting,
                format!("waiting for {provider} to send the bucket and keys"),
            ))
        }
        S3State::Invalid { problem, .. } => return Err(Assessment::new(Status::Blocked, problem)),
    };
    let secondary = secondary(app, tools, broken, &settings)?;
    Ok(Ready {
        settings,
        destination,
        secondary,
    })
}

/// The s3-secondary relation: optional, unless config copies after every backup.
fn secondary(
    app: &str,
    tools: &HookTools,
    broken: Option<&str>,
    settings: &Settings,
) -> Result<Option<Box<relations::S3Destination>>, Assessment> {
    let state =
        relations::s3_state_on(tools, relations::S3_SECONDARY_ENDPOINT, broken).map_err(|e| {
            Assessment::new(
                Status::Blocked,
                format!("cannot read the s3-secondary relation: {e}"),
            )
        })?;
    match state {
        S3State::Ready(d) => Ok(Some(d)),
        S3State::Invalid { problem, .. } if settings.copy_after_backup => Err(Assessment::new(
            Status::Blocked,
            format!("s3-secondary: {problem}"),
        )),
        // Only the off-site copy needs it: backups, restores and the rest go on.
        S3State::Invalid { problem, .. } => {
            let _ = tools.log("WARNING", &format!("s3-secondary: {problem}"));
            Ok(None)
        }
        S3State::NotRelated if settings.copy_after_backup => Err(Assessment::new(
            Status::Blocked,
            format!("copy-after-backup=true needs an off-site destination: juju integrate {app}:s3-secondary <a second s3-integrator>"),
        )),
        S3State::Waiting { app: provider, .. } if settings.copy_after_backup => {
            Err(Assessment::new(
                Status::Waiting,
                format!("waiting for {provider} (s3-secondary) to send the bucket and keys"),
            ))
        }
        S3State::NotRelated | S3State::Waiting { .. } => Ok(None),
    }
}

/// The status to set now.
pub fn assess(app: &str, tools: &HookTools, broken: Option<&str>) -> Assessment {
    let ready = match ready(app, tools, broken) {
        Ok(r) => r,
        Err(a) => return a,
    };
    // The controller login itself is proven by the first action; here, that it can be tried.
    let access = ready
        .settings
        .controller_secret
        .as_deref()
        .ok_or_else(|| {
            format!("set controller-secret: juju config {app} controller-secret=secret:... (README: Controller access)")
        })
        .and_then(|id| {
            let content = tools.secret_get(id).map_err(|e| {
                format!("cannot read controller-secret {id}: grant it with `juju grant-secret <name> {app}` ({e})")
            })?;
            controller::ControllerAccess::from_secret(id, &content)
        })
        .and_then(|_| controller::client_binary(tools, app));
    if let Err(m) = access {
        return Assessment::new(Status::Blocked, m);
    }
    let store = match destination_store(&ready.destination) {
        Ok(s) => s,
        Err(e) => return Assessment::new(Status::Blocked, e),
    };
    let summary = crate::interrupt::runtime()
        .map_err(|e| e.to_string())
        .and_then(|rt| {
            rt.block_on(repository::summary(&store))
                .map_err(|e| e.to_string())
        });
    match summary {
        Ok(s) => Assessment::new(Status::Active, describe(&s, &store.describe(), Utc::now())),
        Err(e) => Assessment::new(
            Status::Blocked,
            format!("destination {} unreachable: {e}", store.describe()),
        ),
    }
}

/// `last backup 20261123T080841Z-be2523 2h ago (3 backups)`, and a newer failure if any.
/// The destination's store, with s3-integrator's CA chain trusted first (the hook or action
/// has started no thread yet).
/// The secondary's store, or why there is none.
pub fn secondary_store(ready: &Ready, app: &str) -> Result<Store, String> {
    let d = ready.secondary.as_ref().ok_or_else(|| {
        format!("no off-site destination: relate a second s3-integrator with `juju integrate {app}:s3-secondary <its name>` and give it keys (its sync-s3-credentials action)")
    })?;
    destination_store(d)
}

pub fn destination_store(d: &relations::S3Destination) -> Result<Store, String> {
    if !d.tls_ca_chain.is_empty() {
        crate::storage::tls::trust_chain(&d.tls_ca_chain, "s3-integrator's tls-ca-chain")?;
    }
    Store::s3(&d.settings).map_err(|e| format!("destination: {e}"))
}

pub fn describe(s: &Summary, destination: &str, now: DateTime<Utc>) -> String {
    let ago = |t: DateTime<Utc>| {
        let secs = (now - t).num_seconds().max(0) as u64;
        let rounded = match secs {
            0..=59 => secs,
            60..=3599 => secs / 60 * 60,
            3600..=86399 => secs / 3600 * 3600,
            _ => secs / 86400 * 86400,
        };
        humantime::format_duration(std::time::Duration::from_secs(rounded)).to_string()
    };
    let count = match s.count {
        1 => "1 backup".to_string(),
        n => format!("{n} backups"),
    };
    let mut msg = match &s.newest_completed {
        Some(b) => format!(
            "last backup {} {} ago ({count})",
            b.backup_id,
            ago(b.finished_at.unwrap_or(b.started_at))
        ),
        None if s.count == 0 => format!("ready; no backups yet in {destination}"),
        None => format!("no completed backup ({count})"),
    };
    if let Some(n) = &s.newest {
        if s.newest_completed.as_ref().map(|c| &c.backup_id) != Some(&n.backup_id) {
            msg.push_str(&format!(
                "; newer {} is {} (describe-backup backup-id={})",
                n.backup_id,
                n.phase.as_str(),
                n.backup_id
            ));
        }
    }
    msg
}
