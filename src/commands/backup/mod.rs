//! `create-backup`: one consistent backup of the whole control plane.
//!
//! Discovery and preflight change nothing and make the plan (`--dry-run` stops there). Then,
//! under the repository lock: the statefile is written with every application's original scale
//! before any scale changes; the databases get a replica and the metadata writer stops; the
//! four parts are captured concurrently; scales go back whatever happened (success, failure,
//! SIGINT/SIGTERM); the statefile is written last, `completed` only when every part was
//! captured and checked.

mod capture;
mod prepare;
mod render;

pub use render::{render_plan, render_report};

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::commands::preflight::{blocking, PreflightError};
use crate::commands::recover;
use crate::components::mlpipeline::SyncStats;
use crate::components::Component;
use crate::context::Context;
use crate::juju::discovery;
use crate::juju::scale;
use crate::repository::{self, ErrorRecord, Phase, RequestType, ScaleRecord, Statefile};
use capture::capture_all;
use prepare::{prepare, Prepared};

/// What the operator asks for.
#[derive(Debug, Clone)]
pub struct BackupRequest {
    pub label: String,
    pub components: Vec<Component>,
    /// Back up even while Argo Workflows or Katib Experiments run.
    pub force: bool,
    pub request: RequestType,
}

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("{0}")]
    Discovery(#[from] discovery::DiscoveryError),

    #[error("preflight: {0}")]
    Preflight(String),
    #[error("{0}")]
    Lock(Box<recover::RecoveryError>),
    #[error("{0}")]
    Usage(String),
    #[error("backup {id} failed: {}{}", .causes.join("; "), .aftermath)]
    Failed {
        id: String,
        causes: Vec<String>,
        /// What was put back and where the record is.
        aftermath: String,
        statefile: Box<Statefile>,
    },
    #[error("backup {id} is complete, but {detail}")]
    NotRestored {
        id: String,
        detail: String,
        statefile: Box<Statefile>,
    },
}

/// What a run will do: printed by `--dry-run`, and the first thing a real run reports.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct Plan {
    pub model: String,
    pub destination: String,
    pub components: Vec<Component>,
    /// Every application whose scale is recorded, and what it will be while capturing.
    pub scales: Vec<ScaleRecord>,
    pub mysql: Vec<String>,
    pub mlmd_pod: Option<String>,
    pub mlmd_container: Option<String>,
    pub mlmd_size: Option<u64>,
    pub minio_endpoint: String,
    pub minio_reached_through: String,
    pub minio_credentials_from: String,
    /// Whether the mlpipeline figures below were counted (a dry run, or format v1); a format
    /// v2 run does not count ahead and leaves them 0.
    pub mlpipeline_counted: bool,
    pub mlpipeline_objects: u64,
    pub mlpipeline_bytes: u64,
    /// Objects and bytes to read: new or changed since the previous backup.
    pub mlpipeline_to_read: u64,
    pub mlpipeline_to_read_bytes: u64,
    pub previous_backup: Option<String>,
    pub running_workloads: Vec<String>,
    pub spool: String,
    pub spool_needed: u64,
    pub spool_free: u64,
}

/// A finished backup: its statefile and what the bucket copy did.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct Report {
    pub statefile: Statefile,
    pub mlpipeline: Option<SyncStats>,
    pub warnings: Vec<String>,
}

/// Discovery and preflight only: what a backup would do. Changes nothing (the destination is
/// listed, not written).
pub async fn plan(ctx: &Context, req: &BackupRequest) -> Result<Plan, BackupError> {
    check_request(req)?;
    let id = repository::new_backup_id(Utc::now());
    Ok(prepare(ctx, req, &id, true).await?.plan)
}

fn check_request(req: &BackupRequest) -> Result<(), BackupError> {
    if req.components.is_empty() {
        return Err(BackupError::Usage(
            "no components to back up: name some of kfp-db, katib-db, mlmd, mlpipeline, or leave --components out for all".into(),
        ));
    }
    if req.label.len() > 128 || req.label.chars().any(|c| c.is_control()) {
        return Err(BackupError::Usage(
            "the label must be at most 128 printable characters".into(),
        ));
    }
    Ok(())
}

fn error(component: &str, message: impl Into<String>) -> ErrorRecord {
    ErrorRecord {
        component: component.into(),
        message: message.into(),
        at: Utc::now(),
    }
}

/// Runs a backup. On failure the error carries the failed statefile (already written, when the
/// destination allowed it).
pub async fn run(ctx: &Context, req: &BackupRequest) -> Result<Report, BackupError> {
    run_inner(ctx, req, true).await
}

/// A backup inside a run that already holds the repository lock (restore's safety backup).
pub(crate) async fn run_under_lock(
    ctx: &Context,
    req: &BackupRequest,
) -> Result<Report, BackupError> {
    run_inner(ctx, req, false).await
}

async fn run_inner(
    ctx: &Context,
    req: &BackupRequest,
    take_lock: bool,
) -> Result<Report, BackupError> {
    check_request(req)?;
    let started = Utc::now();
    let id = repository::new_backup_id(started);
    // The lock, and the repair of what a dead run left, come before the scales are read: a
    // killed run's quiesced scales must not be taken for the ones to put back.
    let lock = if take_lock {
        Some(
            recover::lock_and_recover(ctx, &format!("create-backup {id}"))
                .await
                .map_err(|e| BackupError::Lock(Box::new(e)))?
                .0,
        )
    } else {
        None
    };
    let result = run_locked(ctx, req, &id, started).await;
    if let Some(Err(e)) = match lock {
        Some(l) => Some(l.release().await),
        None => None,
    } {
        ctx.progress
            .warn(format!("releasing the repository lock: {e}"));
    }
    result
}

async fn run_locked(
    ctx: &Context,
    req: &BackupRequest,
    id: &str,
    started: DateTime<Utc>,
) -> Result<Report, BackupError> {
    let id = id.to_string();
    let mut prep = prepare(ctx, req, &id, false).await?;
    if let Some(reason) = ctx.interrupt.reason() {
        return Err(BackupError::Preflight(format!(
            "{reason} before anything changed"
        )));
    }
    let p = &ctx.progress;
    let mlpipeline = if !req.components.contains(&Component::Mlpipeline) {
        String::new()
    } else if prep.plan.mlpipeline_counted {
        format!(
            "; mlpipeline {} objects, {} to read",
            prep.plan.mlpipeline_objects,
            crate::units::human_bytes(prep.plan.mlpipeline_to_read_bytes)
        )
    } else {
        match &prep.plan.previous_backup {
            Some(b) => format!("; mlpipeline: what changed since {b} is read as it is found"),
            None => "; mlpipeline: every object is read (no earlier backup)".into(),
        }
    };
    p.step(
        "plan",
        format!(
            "backup {id}: {}{mlpipeline}",
            req.components
                .iter()
                .map(|c| c.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        ),
    );
    for w in &prep.warnings {
        p.warn(w.clone());
    }
    let mut sf = new_statefile(req, &id, started, &prep);
    let outcome = {
        let body = capture_all(ctx, &mut prep, &mut sf);
        tokio::pin!(body);
        tokio::select! {
            r = &mut body => r,
            _ = ctx.interrupt.triggered() => Err(vec![error("agent", ctx.interrupt.reason().unwrap_or_else(|| "interrupted".into()))]),
        }
    };

    // Whatever happened: scales back first, then the record.
    let (juju, mut journal, wait, p2) = (
        ctx.juju.clone(),
        std::mem::take(&mut sf.quiesce),
        ctx.tuning.scale_wait,
        p.clone(),
    );
    let (journal, restored) = blocking(move || {
        let r = scale::restore(&juju, &mut journal, wait, &p2);
        (journal, r)
    })
    .await;
    sf.quiesce = journal;
    sf.finished_at = Some(Utc::now());
    let result = match outcome {
        Ok(stats) => {
            if let Err(e) = &restored {
                sf.errors.push(error("quiesce", e.clone()));
            }
            sf.phase = Phase::Completed;
            match repository::save(&ctx.dest, &sf).await {
                Ok(()) => match restored {
                    Ok(()) => {
                        let back = put_back(&sf.quiesce);
                        p.step(
                            "done",
                            if back.is_empty() {
                                format!("backup {id} completed")
                            } else {
                                format!("backup {id} completed; scales put back ({back})")
                            },
                        );
                        Ok(Report {
                            statefile: sf.clone(),
                            mlpipeline: stats,
                            warnings: prep.warnings.clone(),
                        })
                    }
                    Err(detail) => Err(BackupError::NotRestored {
                        id: id.clone(),
                        detail: format!("not every application is back at its scale: {detail}"),
                        statefile: Box::new(sf.clone()),
                    }),
                },
                Err(e) => {
                    sf.phase = Phase::Failed;
                    Err(failed(
                        &id,
                        vec![format!("writing the final statefile: {e}")],
                        restored,
                        &sf,
                        false,
                    ))
                }
            }
        }
        Err(errors) => {
            sf.errors.extend(errors.iter().cloned());
            if let Err(e) = &restored {
                sf.errors.push(error("quiesce", e.clone()));
            }
            sf.phase = Phase::Failed;
            let saved = repository::save(&ctx.dest, &sf).await;
            let causes = errors.iter().map(|e| e.message.clone()).collect();
            Err(failed(&id, causes, restored, &sf, saved.is_ok()))
        }
    };
    result
}

/// `kfp-db 1, kfp-metadata-writer 1`: each changed application and the scale it went back to.
fn put_back(journal: &[ScaleRecord]) -> String {
    journal
        .iter()
        .filter(|r| r.changed_to != r.original)
        .map(|r| format!("{} {}", r.app, r.original))
        .collect::<Vec<_>>()
        .join(", ")
}

fn failed(
    id: &str,
    causes: Vec<String>,
    restored: Result<(), String>,
    sf: &Statefile,
    saved: bool,
) -> BackupError {
    let mut after = vec![];
    match restored {
        Ok(()) if sf.quiesce.iter().any(|r| r.changed_to != r.original) => {
            after.push(format!("scales put back ({})", put_back(&sf.quiesce)))
        }
        Ok(()) => {}
        Err(e) => after.push(format!("NOT every scale is back: {e}")),
    }
    after.push(if saved {
        format!("recorded as failed in {}", repository::statefile_key(id))
    } else {
        "the failed statefile could not be written either".to_string()
    });
    BackupError::Failed {
        id: id.into(),
        causes,
        aftermath: format!(". {}", after.join("; ")),
        statefile: Box::new(sf.clone()),
    }
}

fn new_statefile(
    req: &BackupRequest,
    id: &str,
    started: DateTime<Utc>,
    prep: &Prepared,
) -> Statefile {
    Statefile {
        schema_version: repository::SCHEMA_VERSION,
        backup_id: id.into(),
        label: req.label.clone(),
        request: req.request,
        phase: Phase::Quiescing,
        started_at: started,
        finished_at: None,
        agent_version: env!("CARGO_PKG_VERSION").into(),
        model: prep.plan.model.clone(),
        charms: prep
            .apps
            .iter()
            .map(|a| {
                let c = match a.charm_rev {
                    Some(r) => format!("{} r{r}", a.charm),
                    None => a.charm.clone(),
                };
                (a.name.clone(), c)
            })
            .collect(),
        requested: req
            .components
            .iter()
            .map(|c| c.as_str().to_string())
            .collect(),
        components: Default::default(),
        quiesce: prep.plan.scales.clone(),
        errors: vec![],
        history: vec![],
        copied_from: None,
        checksum: None,
    }
}

impl From<PreflightError> for BackupError {
    fn from(e: PreflightError) -> Self {
        match e {
            PreflightError::Discovery(d) => BackupError::Discovery(d),
            PreflightError::Check(c) => BackupError::Preflight(c),
        }
    }
}
