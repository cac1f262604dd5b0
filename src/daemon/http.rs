//! The daemon's HTTP API: backups listed and described from their statefiles, a backup
//! started with the bearer token, health, and the metrics route.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use sha2::Digest;

use super::metrics::metrics;
use super::runs::Job;
use super::{error, Daemon};
use crate::commands::drill::DrillRequest;
use crate::components::check::Sample;
use crate::components::mlpipeline::Pick;
use crate::repository::{self, CatalogError, Listed};
use crate::secret::Secret;

pub(super) fn router(daemon: Arc<Daemon>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/v1/backups", get(list).post(create))
        .route("/v1/backups/{id}", get(describe))
        .route("/v1/drills", post(create_drill))
        .fallback(|| async { error(StatusCode::NOT_FOUND, "no such endpoint: the API has GET /v1/backups, GET /v1/backups/{id}, POST /v1/backups, POST /v1/drills, GET /healthz, GET /metrics") })
        .method_not_allowed_fallback(|| async {
            error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed on this endpoint")
        })
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
        .with_state(daemon)
}

async fn healthz(State(d): State<Arc<Daemon>>) -> Response {
    let running = d.running.lock().expect("daemon state").clone();
    let last = d.last.lock().expect("daemon state").clone();
    let next = *d.next.lock().expect("daemon state");
    let next_drill = *d.next_drill.lock().expect("daemon state");
    Json(json!({
        "status": "ok",
        "schedule": d.settings.schedule.as_ref().map(|s| s.text.clone()),
        "retention": d.settings.retention.to_string(),
        "next-run": next,
        "drill-schedule": d.settings.drill_schedule.as_ref().map(|s| s.text.clone()),
        "next-drill": next_drill,
        "running": running,
        "last-run": last,
    }))
    .into_response()
}

/// A row of `GET /v1/backups`: the statefile's summary (statefiles hold no secret).
fn row(l: &Listed) -> Value {
    match l {
        Listed::Backup(sf) => json!({
            "backup-id": sf.backup_id,
            "phase": sf.phase.as_str(),
            "label": sf.label,
            "request": sf.request,
            "started-at": sf.started_at,
            "finished-at": sf.finished_at,
            "components": sf.captured(),
            "size-bytes": sf.size(),
            "new-bytes": sf.new_bytes(),
            "last-drill": sf.last_drill().map(|(at, passed)| json!({
                "at": at,
                "outcome": if passed { "passed" } else { "failed" },
            })),
        }),
        Listed::Unreadable { id, error } => json!({
            "backup-id": id,
            "error": error.to_string(),
        }),
    }
}

async fn list(State(d): State<Arc<Daemon>>) -> Response {
    match repository::list(&d.dest).await {
        Ok(rows) => {
            let mut v: Vec<Value> = rows.iter().map(row).collect();
            v.reverse();
            Json(json!({ "backups": v, "count": rows.len() })).into_response()
        }
        Err(e) => error(
            StatusCode::BAD_GATEWAY,
            format!("reading the repository: {e}"),
        ),
    }
}

async fn describe(State(d): State<Arc<Daemon>>, Path(id): Path<String>) -> Response {
    match repository::load(&d.dest, &id).await {
        Ok(sf) => Json(serde_json::to_value(&sf).expect("statefile serializes")).into_response(),
        Err(e @ CatalogError::BadId { .. }) => error(StatusCode::BAD_REQUEST, e.to_string()),
        Err(e @ CatalogError::NoSuchBackup { .. }) => error(StatusCode::NOT_FOUND, e.to_string()),
        Err(e) => error(StatusCode::BAD_GATEWAY, e.to_string()),
    }
}

/// Compares digests byte by byte to the end, so the time taken says nothing about how much
/// of the token (or of its digest) matched.
fn token_matches(expected: &Secret, given: &str) -> bool {
    let (a, b) = (
        sha2::Sha256::digest(expected.expose().as_bytes()),
        sha2::Sha256::digest(given.as_bytes()),
    );
    a.iter()
        .zip(b.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y))
        == 0
}

/// The largest request body the API reads: `{"label": "..."}` fits many times over.
pub const MAX_BODY: usize = 16 * 1024;

fn authorize(d: &Daemon, headers: &HeaderMap) -> Result<(), Box<Response>> {
    let Some(token) = &d.settings.token else {
        return Err(Box::new(error(
            StatusCode::FORBIDDEN,
            "this daemon has no API token (--token-file): starting backups over HTTP is disabled",
        )));
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match given {
        None => Err(Box::new((
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer")],
            Json(json!({"error": "this endpoint needs `Authorization: Bearer <token>` (the token of the daemon's --token-file)"})),
        )
            .into_response())),
        Some(g) if token_matches(token, g.trim()) => Ok(()),
        Some(_) => Err(Box::new(error(
            StatusCode::FORBIDDEN,
            "the bearer token is not this daemon's",
        ))),
    }
}

/// A mutating request's body, once its token is checked (a caller without one gets nothing
/// read, however much it sends): empty, or a JSON object with only `allowed` keys, every value
/// a string.
async fn authorized_body(
    d: &Daemon,
    headers: &HeaderMap,
    body: axum::body::Body,
    allowed: &[&str],
    example: &str,
) -> Result<serde_json::Map<String, Value>, Response> {
    authorize(d, headers).map_err(|r| *r)?;
    let Ok(body) = axum::body::to_bytes(body, MAX_BODY).await else {
        let why = format!("the body is larger than {MAX_BODY} bytes: send {example}");
        return Err(error(StatusCode::PAYLOAD_TOO_LARGE, why));
    };
    let body = String::from_utf8_lossy(&body).into_owned();
    if body.trim().is_empty() {
        return Ok(Default::default());
    }
    let bad = |why: String| error(StatusCode::BAD_REQUEST, why);
    let Ok(Value::Object(m)) = serde_json::from_str::<Value>(&body) else {
        return Err(bad(format!(
            "the body must be a JSON object such as {example}, or empty"
        )));
    };
    if let Some(k) = m.keys().find(|k| !allowed.contains(&k.as_str())) {
        return Err(bad(format!(
            "unknown field {k:?}: the body may only hold {example}"
        )));
    }
    if let Some((k, _)) = m.iter().find(|(_, v)| !v.is_string()) {
        return Err(bad(format!("{k:?} must be a string")));
    }
    Ok(m)
}

async fn create(
    State(d): State<Arc<Daemon>>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Response {
    let example = "{\"label\": \"before-upgrade\"}";
    let m = match authorized_body(&d, &headers, body, &["label"], example).await {
        Ok(m) => m,
        Err(r) => return r,
    };
    let label = m
        .get("label")
        .and_then(Value::as_str)
        .unwrap_or("api")
        .to_string();
    accepted(
        &d,
        Job::Backup {
            label: label.clone(),
            components: crate::components::Component::ALL.to_vec(),
        },
        json!({ "label": label, "follow": "GET /v1/backups and GET /healthz" }),
    )
}

/// `POST /v1/drills`: a restore drill of a backup (the newest completed by default).
async fn create_drill(
    State(d): State<Arc<Daemon>>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Response {
    let example = "{\"backup-id\": \"20261123T080841Z-be2523\", \"sample\": \"5%\", \"max-bytes\": \"1G\"} (each optional)";
    let allowed = ["backup-id", "sample", "max-bytes"];
    let m = match authorized_body(&d, &headers, body, &allowed, example).await {
        Ok(m) => m,
        Err(r) => return r,
    };
    let req = match drill_request(&m, d.settings.drill_sample) {
        Ok(req) => req,
        Err(why) => return error(StatusCode::BAD_REQUEST, why),
    };
    let body = json!({
        "backup-id": req.backup_id,
        "sample": req.pick.sample.to_string(),
        "follow": "GET /healthz (last-run), then GET /v1/backups/{id} (history)",
    });
    accepted(&d, Job::Drill(req), body)
}

/// A drill request from the body's fields; the message names the field that is wrong.
fn drill_request(
    m: &serde_json::Map<String, Value>,
    default_sample: Sample,
) -> Result<DrillRequest, String> {
    let field = |k: &str| m.get(k).and_then(Value::as_str);
    let backup_id = field("backup-id")
        .map(repository::parse_backup_id)
        .transpose()?;
    let sample = field("sample")
        .map(Sample::parse)
        .transpose()?
        .unwrap_or(default_sample);
    let max_bytes = field("max-bytes")
        .map(|s| crate::units::parse_size(s).map_err(|e| format!("max-bytes {s:?}: {e}")))
        .transpose()?;
    Ok(DrillRequest {
        backup_id,
        pick: Pick { sample, max_bytes },
        scratch_prefix: None,
    })
}

/// 202 with what was started, or 409 naming the run in the way.
fn accepted(d: &Arc<Daemon>, job: Job, mut body: Value) -> Response {
    match d.start("api", job) {
        Ok(info) => {
            body["status"] = "started".into();
            body["kind"] = info.kind.into();
            body["trigger"] = info.trigger.clone().into();
            body["started-at"] = json!(info.started_at);
            (StatusCode::ACCEPTED, Json(body)).into_response()
        }
        Err(why) => error(
            StatusCode::CONFLICT,
            format!("{why}: try again when it has finished"),
        ),
    }
}
