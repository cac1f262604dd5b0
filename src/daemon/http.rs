//! The daemon's HTTP API: backups listed and described from their statefiles, a backup
//! started with the bearer token, health, and the metrics route.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};
use sha2::Digest;

use super::metrics::metrics;
use super::{error, Daemon};
use crate::repository::{self, CatalogError, Listed};
use crate::secret::Secret;

pub(super) fn router(daemon: Arc<Daemon>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/v1/backups", get(list).post(create))
        .route("/v1/backups/{id}", get(describe))
        .fallback(|| async { error(StatusCode::NOT_FOUND, "no such endpoint: the API has GET /v1/backups, GET /v1/backups/{id}, POST /v1/backups, GET /healthz, GET /metrics") })
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
    Json(json!({
        "status": "ok",
        "schedule": d.settings.schedule.as_ref().map(|s| s.text.clone()),
        "retention": d.settings.retention.to_string(),
        "next-run": next,
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

async fn create(
    State(d): State<Arc<Daemon>>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Response {
    // The token first: a caller without one gets nothing read, however much it sends.
    if let Err(r) = authorize(&d, &headers) {
        return *r;
    }
    let Ok(body) = axum::body::to_bytes(body, MAX_BODY).await else {
        let why = format!("the body is larger than {MAX_BODY} bytes: send {{\"label\": \"...\"}}");
        return error(StatusCode::PAYLOAD_TOO_LARGE, why);
    };
    let body = String::from_utf8_lossy(&body).into_owned();
    let label = if body.trim().is_empty() {
        "api".to_string()
    } else {
        match serde_json::from_str::<Value>(&body) {
            Ok(Value::Object(m)) => {
                if let Some(k) = m.keys().find(|k| *k != "label") {
                    return error(
                        StatusCode::BAD_REQUEST,
                        format!(
                            "unknown field {k:?}: the body may only hold {{\"label\": \"...\"}}"
                        ),
                    );
                }
                match m.get("label") {
                    None => "api".into(),
                    Some(Value::String(s)) => s.clone(),
                    Some(_) => return error(StatusCode::BAD_REQUEST, "\"label\" must be a string"),
                }
            }
            _ => return error(
                StatusCode::BAD_REQUEST,
                "the body must be a JSON object such as {\"label\": \"before-upgrade\"}, or empty",
            ),
        }
    };
    match d.start("api", &label) {
        Ok(info) => (
            StatusCode::ACCEPTED,
            Json(json!({
                "status": "started",
                "trigger": info.trigger,
                "label": label,
                "started-at": info.started_at,
                "follow": "GET /v1/backups and GET /healthz",
            })),
        )
            .into_response(),
        Err(why) => error(
            StatusCode::CONFLICT,
            format!("{why}: try again when it has finished"),
        ),
    }
}
