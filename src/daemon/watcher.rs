//! The daemon's watch of `backup-agent/requests/` (requests through the bucket): every poll
//! lists that prefix only, answers what is new one request at a time (claimed first, so that
//! two daemons never run the same one), and archives what is answered. A bad request gets a
//! result that names the problem and is never run; nothing a client writes can stop the
//! watch.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;

use super::runs::Job;
use super::{Daemon, RunOutcome};
use crate::commands::copy::CopyRequest;
use crate::commands::drill::DrillRequest;
use crate::commands::requests::{
    self, Asked, Pending, RequestResult, MAX_REQUEST_BYTES, REQUEST_SCHEMA,
};
use crate::commands::restore::{RestoreRequest, POD_TIMEOUT};
use crate::components::check::Mode;
use crate::components::mlpipeline::Pick;
use crate::interrupt::Interrupt;
use crate::storage::StoreError;

/// How the daemon answers requests through the bucket.
#[derive(Debug, Clone)]
pub struct RequestSettings {
    /// Between two polls, give or take a fifth (so that daemons sharing a bucket drift apart).
    pub poll: Duration,
    /// Whether `restore` requests run (off by default: a restore replaces the live system).
    pub allow_restore: bool,
    /// Days the archive keeps answered requests.
    pub archive_days: u32,
    /// A claim older than this with no final result is abandoned (its daemon died elsewhere).
    pub stale_after: Duration,
    /// Keys asked for in one listing request.
    pub page_size: usize,
}

impl Default for RequestSettings {
    fn default() -> Self {
        RequestSettings {
            poll: Duration::from_secs(30),
            allow_restore: false,
            archive_days: 30,
            stale_after: Duration::from_secs(24 * 3600),
            page_size: 1000,
        }
    }
}

/// Names handled in one poll; the rest wait for the next.
const PER_POLL: usize = 1000;

fn jittered(base: Duration) -> Duration {
    let f = 0.8 + rand::random::<f64>() * 0.4;
    base.mul_f64(f)
}

impl Daemon {
    pub(super) async fn watcher(self: Arc<Self>, rs: RequestSettings, shutdown: Interrupt) {
        let mut pruned_on = None;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(jittered(rs.poll)) => {}
                _ = shutdown.triggered() => return,
            }
            if self.stopping.load(std::sync::atomic::Ordering::SeqCst) {
                return;
            }
            let today = Utc::now().date_naive();
            if pruned_on != Some(today) {
                let keep_from = today - chrono::Days::new(rs.archive_days.into());
                match requests::prune_archive(&self.dest, keep_from, rs.page_size).await {
                    Ok(0) => pruned_on = Some(today),
                    Ok(n) => {
                        tracing::info!("requests: {n} archived before {keep_from} forgotten");
                        pruned_on = Some(today);
                    }
                    Err(e) => tracing::warn!("requests: pruning the archive: {e}"),
                }
            }
            if let Err(e) = self.poll_requests(&rs, &shutdown).await {
                tracing::warn!("requests: {e}; trying again at the next poll");
            }
        }
    }

    async fn poll_requests(
        self: &Arc<Self>,
        rs: &RequestSettings,
        shutdown: &Interrupt,
    ) -> Result<(), StoreError> {
        for p in requests::pending(&self.dest, rs.page_size, PER_POLL).await? {
            if shutdown.is_triggered() {
                break;
            }
            if let Err(e) = self.answer(&p, rs).await {
                tracing::warn!("requests: {}: {e}", p.name);
            }
        }
        Ok(())
    }

    /// Whatever state request `p` is in, the next step: answer it, archive it, or wait.
    async fn answer(self: &Arc<Self>, p: &Pending, rs: &RequestSettings) -> Result<(), StoreError> {
        let store = &self.dest;
        if let Some(stray) = &p.stray {
            if !requests::claim(store, &p.name).await? {
                return Ok(());
            }
            let why = format!(
                "{stray} is not a request: a request is backup-agent/requests/<name>.json, <name> 1 to 128 letters, digits, '-', '_' or '.'"
            );
            tracing::warn!("requests: {stray} rejected: {why}");
            let r = self.rejected(&p.name, "invalid", "", "", why);
            requests::write_result(store, &r).await?;
            self.count("invalid", "rejected");
            requests::archive(store, &r, None).await?;
            return requests::remove(store, stray).await;
        }
        if p.answered || p.claimed || p.request.is_none() {
            return self.settle(p, rs).await;
        }
        // One run at a time: leave it unclaimed for the next poll, or for another daemon.
        if self.running.lock().expect("daemon state").is_some() {
            return Ok(());
        }
        if !requests::claim(store, &p.name).await? {
            return Ok(());
        }
        let size = p.request.unwrap_or_default();
        if size > MAX_REQUEST_BYTES {
            let why = format!(
                "too large: {size} bytes; a request is a small JSON object, at most {MAX_REQUEST_BYTES} bytes"
            );
            return self.reject(&p.name, "invalid", "", "", why, None).await;
        }
        let bytes = requests::read_request(store, &p.name).await?;
        let (req, asked) = match requests::parse(&bytes, rs.allow_restore) {
            Ok(x) => x,
            Err(why) => {
                let kind = serde_json::from_slice::<serde_json::Value>(&bytes)
                    .ok()
                    .and_then(|v| v["kind"].as_str().map(str::to_string))
                    .filter(|k| requests::KINDS.contains(&k.as_str()))
                    .unwrap_or_else(|| "invalid".into());
                return self.reject(&p.name, &kind, "", "", why, Some(&bytes)).await;
            }
        };
        let kind = asked.kind();
        let refused = if matches!(asked, Asked::Copy { .. }) && self.settings.secondary.is_none() {
            Some("copy: this daemon has no secondary destination (serve --secondary-s3-*, or the charm's s3-secondary relation)".to_string())
        } else {
            requests::take_client_id(store, &req.client_id, &p.name)
                .await?
                .map(|first| {
                    format!(
                        "duplicate: client-id {} was first used by request {first}, which is answered in its own result; this one is not run again",
                        req.client_id
                    )
                })
        };
        if let Some(why) = refused {
            return self
                .reject(
                    &p.name,
                    kind,
                    &req.requested_by,
                    &req.client_id,
                    why,
                    Some(&bytes),
                )
                .await;
        }
        let mut result = RequestResult {
            schema_version: REQUEST_SCHEMA,
            request: p.name.clone(),
            kind: kind.into(),
            phase: "running".into(),
            backup_id: None,
            errors: vec![],
            output: None,
            requested_by: req.requested_by.clone(),
            client_id: req.client_id.clone(),
            answered_by: answered_by(),
            received_at: Utc::now(),
            finished_at: None,
        };
        requests::write_result(store, &result).await?;
        let (tx, rx) = tokio::sync::oneshot::channel();
        if let Err(why) = self.start_watched("request", job(asked), Some(tx)) {
            // Another run took the slot first: hand the request back for the next poll.
            tracing::info!("requests: {} waits: {why}", p.name);
            for key in [
                requests::result_key(&p.name),
                requests::client_id_key(&req.client_id),
                requests::claim_key(&p.name),
            ] {
                requests::remove(store, &key).await?;
            }
            return Ok(());
        }
        tracing::info!(
            "requests: {} ({kind}, asked by {:?}) started",
            p.name,
            req.requested_by
        );
        let outcome = rx.await.unwrap_or_else(|_| RunOutcome {
            outcome: "failed".into(),
            error: Some("the run ended without an outcome".into()),
            ..RunOutcome::default()
        });
        result.phase = match outcome.outcome.as_str() {
            "completed" | "passed" => outcome.outcome.clone(),
            _ => "failed".into(),
        };
        result.backup_id = outcome.backup_id;
        result.errors = outcome.error.into_iter().collect();
        result.output = outcome.output;
        result.finished_at = Some(Utc::now());
        requests::write_result(store, &result).await?;
        self.count(kind, &result.phase);
        requests::archive(store, &result, Some(&bytes)).await
    }

    /// A request already claimed or answered: archive what is finished; answer for a daemon
    /// that died holding one; tidy what a killed archive left.
    async fn settle(&self, p: &Pending, rs: &RequestSettings) -> Result<(), StoreError> {
        let store = &self.dest;
        let result = if p.answered {
            requests::result_of(store, &p.name, &[]).await?
        } else {
            None
        };
        let request = match p.request {
            Some(_) => Some(requests::read_request(store, &p.name).await?),
            None => None,
        };
        if let Some(r) = result.as_ref().filter(|r| r.finished()) {
            return requests::archive(store, r, request.as_deref()).await;
        }
        let Some(claim) = requests::claimed_by(store, &p.name).await? else {
            // Answered as running with no claim, or nothing but a leftover: nothing to do
            // until a claim or a request shows up.
            return Ok(());
        };
        let age = (Utc::now() - claim.started_at).to_std().unwrap_or_default();
        if !claim.holder_gone() && age < rs.stale_after {
            return Ok(());
        }
        let mut r =
            result.unwrap_or_else(|| self.rejected(&p.name, "unknown", "", "", String::new()));
        r.phase = "failed".into();
        r.errors.push(format!(
            "abandoned: the daemon that claimed it ({} pid {}, at {}) stopped before it finished; write a new request (with a new client-id) to ask again",
            claim.host,
            claim.pid,
            claim.started_at.to_rfc3339()
        ));
        r.finished_at = Some(Utc::now());
        requests::write_result(store, &r).await?;
        self.count(&r.kind, "failed");
        requests::archive(store, &r, request.as_deref()).await
    }

    fn rejected(
        &self,
        name: &str,
        kind: &str,
        requested_by: &str,
        client_id: &str,
        why: String,
    ) -> RequestResult {
        RequestResult {
            schema_version: REQUEST_SCHEMA,
            request: name.into(),
            kind: kind.into(),
            phase: "rejected".into(),
            backup_id: None,
            errors: if why.is_empty() { vec![] } else { vec![why] },
            output: None,
            requested_by: requested_by.into(),
            client_id: client_id.into(),
            answered_by: answered_by(),
            received_at: Utc::now(),
            finished_at: Some(Utc::now()),
        }
    }

    /// Answers a bad request (claimed by us) and archives it; it is never run.
    async fn reject(
        &self,
        name: &str,
        kind: &str,
        requested_by: &str,
        client_id: &str,
        why: String,
        request: Option<&[u8]>,
    ) -> Result<(), StoreError> {
        tracing::warn!("requests: {name} rejected: {why}");
        let r = self.rejected(name, kind, requested_by, client_id, why);
        requests::write_result(&self.dest, &r).await?;
        self.count(kind, "rejected");
        requests::archive(&self.dest, &r, request).await
    }

    fn count(&self, kind: &str, outcome: &str) {
        *self
            .requests
            .lock()
            .expect("daemon state")
            .entry((kind.to_string(), outcome.to_string()))
            .or_default() += 1;
    }
}

fn answered_by() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default();
    format!("{host} pid {}", std::process::id())
}

/// The run a request asks for.
fn job(asked: Asked) -> Job {
    match asked {
        Asked::CreateBackup { label, components } => Job::Backup { label, components },
        Asked::Verify {
            backup_id,
            read_data,
            sample,
        } => Job::Verify {
            backup_id,
            mode: if read_data {
                Mode::ReadData(sample.unwrap_or_default())
            } else {
                Mode::Light
            },
        },
        Asked::Drill {
            backup_id,
            sample,
            max_bytes,
        } => Job::Drill(DrillRequest {
            backup_id,
            pick: Pick {
                sample: sample.unwrap_or_default(),
                max_bytes,
            },
            scratch_prefix: None,
        }),
        Asked::Copy { backup_id } => Job::Copy(CopyRequest { backup_id }),
        Asked::Restore {
            backup_id,
            components,
            safety_backup,
        } => Job::Restore(RestoreRequest {
            backup_id,
            components,
            safety_backup,
            force: false,
            pod_timeout: POD_TIMEOUT,
        }),
    }
}
