//! One backup or restore at a time per repository: a lease object (`lock.json`) with its
//! holder and an expiry, renewed while the run lasts. A lease that expired (its holder died
//! without releasing it) is taken over with a warning.
//!
//! S3 has no compare-and-swap that every server implements, so acquiring writes the lease and
//! reads it back after a pause: of two agents that raced, the one whose write landed last wins
//! and the other sees a foreign nonce and backs off.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::repository;
use crate::retry::retry;
use crate::storage::{Store, StoreError};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct LeaseInfo {
    /// What holds it: `create-backup 20250101T000000Z-1a2b3c`.
    pub operation: String,
    pub host: String,
    pub pid: u32,
    pub started_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub nonce: String,
    /// Identify the holder's process beyond its pid, so a later run on the same machine can
    /// tell that it died (pids are reused; containers of one pod share a hostname but not a
    /// pid namespace).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid_namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid_start: Option<u64>,
}

/// This process as a lease names it.
struct Me {
    host: String,
    boot_id: Option<String>,
    pid_namespace: Option<String>,
}

fn me() -> Me {
    Me {
        host: hostname(),
        boot_id: std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
            .ok()
            .map(|s| s.trim().to_string()),
        pid_namespace: std::fs::read_link("/proc/self/ns/pid")
            .ok()
            .map(|p| p.display().to_string()),
    }
}

/// When process `pid` started, in clock ticks since boot (field 22 of /proc/PID/stat).
fn process_start(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: count from the last `)`.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

impl LeaseInfo {
    /// This process holding `operation` from `now` for `ttl`, with a fresh nonce.
    pub fn mine(operation: &str, now: DateTime<Utc>, ttl: Duration) -> LeaseInfo {
        let m = me();
        LeaseInfo {
            operation: operation.into(),
            host: m.host,
            pid: std::process::id(),
            started_at: now,
            expires_at: now + ttl,
            nonce: format!("{:016x}", rand::random::<u64>()),
            boot_id: m.boot_id,
            pid_namespace: m.pid_namespace,
            pid_start: process_start(std::process::id()),
        }
    }

    /// Whether the holder is known to be gone: it ran on this machine, since this boot, in
    /// this pid namespace, and its process no longer exists (or is another process now).
    /// A holder elsewhere can only be known gone by its lease expiring.
    pub fn holder_gone(&self) -> bool {
        let m = me();
        if self.host != m.host
            || self.boot_id.is_none()
            || self.boot_id != m.boot_id
            || self.pid_namespace.is_none()
            || self.pid_namespace != m.pid_namespace
        {
            return false;
        }
        // Only "no such process" proves it gone (an unreadable /proc entry does not).
        let exists = unsafe { libc::kill(self.pid as libc::pid_t, 0) } == 0
            || std::io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH);
        if !exists {
            return true;
        }
        match (process_start(self.pid), self.pid_start) {
            (Some(now), Some(then)) => now != then,
            _ => false,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    #[error("another run holds the repository lock {key}: {} on host {} (pid {}), started {}, lease valid until {}. Wait for it to finish; if it died on another machine, its lease expires by itself, or take it over with --break-lock once you are sure it is not running", .held.operation, .held.host, .held.pid, .held.started_at.to_rfc3339(), .held.expires_at.to_rfc3339())]
    Held { key: String, held: LeaseInfo },
    #[error("repository lock: {0}")]
    Store(#[from] StoreError),
    #[error("repository lock {key} is not a lease ({detail}); if no run is going on, delete it")]
    Malformed { key: String, detail: String },
}

/// Timing of leases: long enough that a slow renewal does not lose it, short enough that a
/// dead holder does not block the next scheduled run for long.
#[derive(Debug, Clone, Copy)]
pub struct LeaseTiming {
    pub ttl: Duration,
    pub renew_every: Duration,
    /// Pause between writing the lease and reading it back.
    pub settle: Duration,
}

impl Default for LeaseTiming {
    fn default() -> Self {
        LeaseTiming {
            ttl: Duration::from_secs(300),
            renew_every: Duration::from_secs(60),
            settle: Duration::from_millis(300),
        }
    }
}

/// A held lease; renewed in the background until [`Lease::release`] or drop.
pub struct Lease {
    store: Store,
    info: Arc<std::sync::Mutex<LeaseInfo>>,
    renewer: tokio::task::JoinHandle<()>,
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

/// The current lease, if any.
pub async fn read(store: &Store) -> Result<Option<LeaseInfo>, LeaseError> {
    read_trying(store, crate::retry::ATTEMPTS).await
}

async fn read_trying(store: &Store, attempts: u32) -> Result<Option<LeaseInfo>, LeaseError> {
    let key = repository::lock_key();
    match retry(attempts, &key, || store.get_bytes(&key)).await {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| LeaseError::Malformed {
                key,
                detail: e.to_string(),
            }),
        Err(StoreError::NotFound { .. }) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

async fn write(store: &Store, info: &LeaseInfo) -> Result<(), StoreError> {
    let key = repository::lock_key();
    let body = serde_json::to_vec_pretty(info).expect("lease serializes");
    retry(crate::retry::ATTEMPTS, &key, || {
        store.put_bytes(&key, &body, "application/json")
    })
    .await
}

/// Takes the repository lock for `operation`, or says who holds it.
///
/// A lease whose holder is known to be gone ([`LeaseInfo::holder_gone`]) is taken over at once;
/// `break_lock` takes over any lease (the operator says its holder is gone).
///
/// Renewal reads the lease back first: if another run took it over (an expiry judged by a
/// skewed clock, `--break-lock`), `lost` is triggered so this run stops instead of carrying on
/// beside the new holder.
pub async fn acquire(
    store: &Store,
    operation: &str,
    timing: LeaseTiming,
    break_lock: bool,
    lost: crate::interrupt::Interrupt,
) -> Result<Lease, LeaseError> {
    let key = repository::lock_key();
    let now = Utc::now();
    // Nothing is changed yet: a store that does not answer is said at once.
    let current = read_trying(store, crate::retry::PREFLIGHT_ATTEMPTS).await;
    let vacant = matches!(current, Ok(None));
    match current {
        Ok(Some(held)) if break_lock => tracing::warn!(
            "breaking the repository lock of {} on host {} (pid {}), started {} (--break-lock)",
            held.operation,
            held.host,
            held.pid,
            held.started_at.to_rfc3339()
        ),
        Ok(Some(dead)) if dead.expires_at > now && dead.holder_gone() => tracing::warn!(
            "taking over the repository lock of {} (pid {} on this host): that process is gone",
            dead.operation,
            dead.pid
        ),
        Ok(Some(held)) if held.expires_at > now => return Err(LeaseError::Held { key, held }),
        Ok(Some(stale)) => tracing::warn!(
            "taking over the expired repository lock of {} on host {} (pid {}), which expired at {}",
            stale.operation,
            stale.host,
            stale.pid,
            stale.expires_at.to_rfc3339()
        ),
        Ok(None) => {}
        Err(LeaseError::Malformed { .. }) if break_lock => {
            tracing::warn!("replacing the unreadable repository lock (--break-lock)")
        }
        // A lock file we cannot parse is not ours to delete: the operator decides.
        Err(e) => return Err(e),
    }
    let info = LeaseInfo::mine(operation, now, timing.ttl);
    let nonce = info.nonce.clone();
    if vacant {
        // Two runs that both saw no lock: the store lets one create it, the other backs off.
        let body = serde_json::to_vec_pretty(&info).expect("lease serializes");
        let created = retry(crate::retry::ATTEMPTS, &key, || {
            store.put_bytes_if_absent(&key, &body, "application/json")
        })
        .await?;
        if !created {
            match read(store).await? {
                // A retried create whose first try had landed.
                Some(mine) if mine.nonce == nonce => {}
                Some(held) => return Err(LeaseError::Held { key, held }),
                None => {
                    return Err(LeaseError::Malformed {
                        key,
                        detail: "another run created it and it vanished at once".into(),
                    })
                }
            }
        }
    } else {
        write(store, &info).await?;
    }
    // Read back after a moment too: a store that ignores If-None-Match, or a takeover that
    // raced another, shows here as a foreign nonce.
    tokio::time::sleep(timing.settle).await;
    match read(store).await? {
        Some(got) if got.nonce == nonce => {}
        Some(held) => return Err(LeaseError::Held { key, held }),
        None => {
            return Err(LeaseError::Malformed {
                key,
                detail: "it vanished right after being written".into(),
            })
        }
    }
    let info = Arc::new(std::sync::Mutex::new(info));
    let renewer = tokio::spawn(renew(store.clone(), info.clone(), timing, lost));
    Ok(Lease {
        store: store.clone(),
        info,
        renewer,
    })
}

/// Renews the lease until dropped, reading it back first: a lease someone else took over (or
/// deleted) triggers `lost` instead of being written over.
async fn renew(
    store: Store,
    info: Arc<std::sync::Mutex<LeaseInfo>>,
    timing: LeaseTiming,
    lost: crate::interrupt::Interrupt,
) {
    loop {
        tokio::time::sleep(timing.renew_every).await;
        let mine = info.lock().expect("lease info").nonce.clone();
        match read(&store).await {
            Ok(Some(l)) if l.nonce != mine => {
                let why = format!(
                    "lost the repository lock: {} on host {} (pid {}) took it over",
                    l.operation, l.host, l.pid
                );
                tracing::error!("{why}");
                lost.trigger(why);
                return;
            }
            Ok(None) => {
                let why = "lost the repository lock: someone deleted it".to_string();
                tracing::error!("{why}");
                lost.trigger(why);
                return;
            }
            Ok(Some(_)) => {}
            Err(e) => tracing::warn!("reading the repository lock back: {e}"),
        }
        let next = {
            let mut i = info.lock().expect("lease info");
            i.expires_at = Utc::now() + timing.ttl;
            i.clone()
        };
        if let Err(e) = write(&store, &next).await {
            tracing::warn!("renewing the repository lock: {e}");
        }
    }
}

impl Lease {
    pub fn info(&self) -> LeaseInfo {
        self.info.lock().expect("lease info").clone()
    }

    /// Checks the lease is still ours: before a step that must not run beside another holder.
    pub async fn still_held(&self) -> Result<(), LeaseError> {
        let key = repository::lock_key();
        match read(&self.store).await? {
            Some(l) if l.nonce == self.info().nonce => Ok(()),
            Some(held) => Err(LeaseError::Held { key, held }),
            None => Err(LeaseError::Malformed {
                key,
                detail: "our lease is gone (deleted by someone)".into(),
            }),
        }
    }

    /// Deletes the lease, if it is still ours.
    pub async fn release(self) -> Result<(), LeaseError> {
        self.renewer.abort();
        let mine = self.info().nonce;
        match read(&self.store).await? {
            Some(l) if l.nonce == mine => {
                let key = repository::lock_key();
                retry(crate::retry::ATTEMPTS, &key, || self.store.delete(&key)).await?;
            }
            Some(l) => tracing::warn!(
                "the repository lock is now held by {} on {}: not releasing it",
                l.operation,
                l.host
            ),
            None => {}
        }
        Ok(())
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.renewer.abort();
    }
}
