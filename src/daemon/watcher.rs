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
use crate::repository::lock::LeaseInfo;
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
    /// How long a claim holds without renewal: a daemon renews it while the request runs, so
    /// one whose claim expired (or whose process is gone) has died holding it.
    pub claim_ttl: Duration,
    /// Keys asked for in one listing request.
    pub page_size: usize,
}

impl Default for RequestSettings {
    fn default() -> Self {
        RequestSettings {
            poll: Duration::from_secs(30),
            allow_restore: false,
            archive_days: 30,
            claim_ttl: Duration::from_secs(10 * 60),
            page_size: 1000,
        }
    }
}

/// What a claimed request has taken so far, to hand back if it cannot go on.
#[derive(Default)]
struct Taken {
    client_id: Option<String>,
    /// Its run started: from then on it is answered, never handed back.
    started: bool,
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
            // Answered without a claim: two daemons answering one stray write the same answer.
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
        let unwritten = self
            .unwritten_results
            .lock()
            .expect("daemon state")
            .remove(&p.name);
        if let Some(r) = unwritten {
            return self.finish(&r, p).await;
        }
        if p.result.is_some() || p.claim.is_some() || p.request.is_none() {
            return self.settle(p, rs).await;
        }
        // One run at a time: leave it unclaimed for the next poll, or for another daemon.
        if self.running.lock().expect("daemon state").is_some() {
            return Ok(());
        }
        let Some(claim) = requests::claim(store, &p.name, rs.claim_ttl).await? else {
            return Ok(());
        };
        let mut taken = Taken::default();
        let outcome = self.claimed(p, rs, &claim, &mut taken).await;
        if outcome.is_err() && !taken.started {
            // Nothing ran: hand the request back whole, for the next poll or another daemon.
            for key in [
                Some(requests::result_key(&p.name)),
                taken.client_id.as_deref().map(requests::client_id_key),
                Some(requests::claim_key(&p.name)),
            ]
            .into_iter()
            .flatten()
            {
                if let Err(e) = requests::remove(store, &key).await {
                    tracing::warn!("requests: {}: handing it back: {key}: {e}", p.name);
                }
            }
        }
        outcome
    }

    /// A request this daemon has claimed: checked, then run (or rejected), answered, archived.
    async fn claimed(
        self: &Arc<Self>,
        p: &Pending,
        rs: &RequestSettings,
        claim: &LeaseInfo,
        taken: &mut Taken,
    ) -> Result<(), StoreError> {
        let store = &self.dest;
        let size = p.request.unwrap_or_default();
        if size > MAX_REQUEST_BYTES {
            let why = format!(
                "too large: {size} bytes; a request is a small JSON object, at most {MAX_REQUEST_BYTES} bytes"
            );
            return self
                .answer_rejected(self.rejected(&p.name, "invalid", "", "", why), None)
                .await;
        }
        let Some(bytes) = requests::read_request(store, &p.name).await? else {
            // Gone since the listing (archived by another daemon): nothing to answer.
            return requests::remove(store, &requests::claim_key(&p.name)).await;
        };
        let (req, asked) = match requests::parse(&bytes, rs.allow_restore) {
            Ok(x) => x,
            Err(why) => {
                let kind = requests::kind_of(&bytes);
                return self
                    .answer_rejected(self.rejected(&p.name, &kind, "", "", why), Some(&bytes))
                    .await;
            }
        };
        let kind = asked.kind();
        let reject = |why: String, duplicate_of: Option<String>| {
            let mut r = self.rejected(&p.name, kind, &req.requested_by, &req.client_id, why);
            r.duplicate_of = duplicate_of;
            r
        };
        if matches!(asked, Asked::Copy { .. }) && self.settings.secondary.is_none() {
            let r = reject("copy: this daemon has no secondary destination (serve --secondary-s3-*, or the charm's s3-secondary relation)".into(), None);
            return self.answer_rejected(r, Some(&bytes)).await;
        }
        if let Some(first) = requests::take_client_id(store, &req.client_id, &p.name).await? {
            let why = format!(
                "duplicate: client-id {} was first used by request {first}, whose result is the answer; this one is not run again",
                req.client_id
            );
            return self
                .answer_rejected(reject(why, Some(first)), Some(&bytes))
                .await;
        }
        taken.client_id = Some(req.client_id.clone());
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
            duplicate_of: None,
            answered_by: answered_by(),
            received_at: Utc::now(),
            finished_at: None,
        };
        requests::write_result(store, &result).await?;
        let (tx, mut rx) = tokio::sync::oneshot::channel();
        if let Err(why) = self.start_watched("request", job(asked), Some(tx)) {
            // Another run took the slot first: handed back by the caller.
            return Err(StoreError::Fatal {
                op: "request",
                key: p.name.clone(),
                detail: format!("waits: {why}"),
            });
        }
        taken.started = true;
        tracing::info!(
            "requests: {} ({kind}, asked by {:?}) started",
            p.name,
            req.requested_by
        );
        // The claim is renewed while the run goes, so that no daemon takes it for abandoned.
        let every = rs.claim_ttl / 4;
        let outcome = loop {
            tokio::select! {
                o = &mut rx => break o.unwrap_or_else(|_| RunOutcome {
                    outcome: "failed".into(),
                    error: Some("the run ended without an outcome".into()),
                    ..RunOutcome::default()
                }),
                _ = tokio::time::sleep(every) => {
                    if let Err(e) = requests::renew(store, &p.name, claim, rs.claim_ttl).await {
                        tracing::warn!("requests: {}: renewing its claim: {e}", p.name);
                    }
                }
            }
        };
        result.phase = match outcome.outcome.as_str() {
            "completed" | "passed" => outcome.outcome.clone(),
            _ => "failed".into(),
        };
        result.backup_id = outcome.backup_id;
        result.errors = outcome.error.into_iter().collect();
        result.output = outcome.output;
        result.finished_at = Some(Utc::now());
        self.count(kind, &result.phase);
        self.finish(&result, p).await
    }

    /// Writes a final result and archives the request; kept in memory to try again at the next
    /// poll when the store does not take it (the outcome is never lost to a failed write).
    async fn finish(&self, r: &RequestResult, p: &Pending) -> Result<(), StoreError> {
        let store = &self.dest;
        let written = async {
            requests::write_result(store, r).await?;
            let request = match p.request {
                Some(_) => requests::read_request(store, &p.name).await?,
                None => None,
            };
            requests::archive(store, r, request.as_deref()).await
        }
        .await;
        if written.is_err() {
            self.unwritten_results
                .lock()
                .expect("daemon state")
                .insert(p.name.clone(), r.clone());
        }
        written
    }

    /// A request already claimed or answered: archive what is finished; answer for a daemon
    /// that died holding one (or whose claim expired); tidy what a killed archive left.
    async fn settle(&self, p: &Pending, _rs: &RequestSettings) -> Result<(), StoreError> {
        let store = &self.dest;
        let today = Utc::now().date_naive();
        let days = [today.pred_opt().unwrap_or(today), today];
        let request = match p.request {
            Some(n) if n <= MAX_REQUEST_BYTES => requests::read_request(store, &p.name).await?,
            _ => None,
        };
        let result = requests::result_of(store, &p.name, &days).await?;
        if let Some(r) = result.as_ref().filter(|r| r.finished()) {
            // Finished (perhaps archived already, by a daemon killed before it tidied up).
            return requests::archive(store, r, request.as_deref()).await;
        }
        let holder = match requests::claimed_by(store, &p.name).await? {
            requests::Claim::Held(c) => Some(c),
            requests::Claim::Junk => None,
            // Running with no claim, or nothing but a leftover: wait for a claim or a request.
            requests::Claim::None => return Ok(()),
        };
        if let Some(c) = &holder {
            if !c.holder_gone() && c.expires_at > Utc::now() {
                return Ok(());
            }
        }
        let mut r = result.unwrap_or_else(|| {
            let kind = request
                .as_deref()
                .map_or_else(|| "invalid".into(), requests::kind_of);
            self.rejected(&p.name, &kind, "", "", String::new())
        });
        r.phase = "failed".into();
        r.errors.push(match &holder {
            Some(c) => format!(
                "abandoned: the daemon that claimed it ({} pid {}, at {}) stopped before it finished; write a new request (with a new client-id) to ask again",
                c.host,
                c.pid,
                c.started_at.to_rfc3339()
            ),
            None => "abandoned: its claim is not one a daemon writes; write a new request (with a new client-id) to ask again".into(),
        });
        r.finished_at = Some(Utc::now());
        self.count(&r.kind, "failed");
        self.finish(&r, p).await
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
            duplicate_of: None,
            answered_by: answered_by(),
            received_at: Utc::now(),
            finished_at: Some(Utc::now()),
        }
    }

    /// Answers a bad request (claimed by us) and archives it; it is never run.
    async fn answer_rejected(
        &self,
        r: RequestResult,
        request: Option<&[u8]>,
    ) -> Result<(), StoreError> {
        tracing::warn!("requests: {} rejected: {}", r.request, r.errors.join("; "));
        requests::write_result(&self.dest, &r).await?;
        self.count(&r.kind, "rejected");
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
