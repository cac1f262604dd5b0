//! Pebble's HTTP API on the daemon's unix socket: the routes a charm uses (system-info, files,
//! layers, plan, services, changes, logs), each answering in Pebble's JSON envelope —
//! `sync` with a result, `async` with a change id, or `error` with a message (and a kind where
//! Pebble gives one) — with Pebble's status codes and messages.

use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, Path as UrlPath, RawQuery, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

pub use super::error::ApiError;
use super::files;
use super::plan;
use super::services::Daemon;

/// The Pebble version the simulator answers as.
pub const VERSION: &str = "1.19.0";

#[derive(Serialize)]
struct Envelope {
    #[serde(rename = "type")]
    kind: &'static str,
    #[serde(rename = "status-code")]
    status_code: u16,
    status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    change: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    result: Option<Value>,
}

fn envelope(
    code: StatusCode,
    kind: &'static str,
    change: Option<String>,
    result: Option<Value>,
) -> Response {
    let body = Envelope {
        kind,
        status_code: code.as_u16(),
        status: code.canonical_reason().unwrap_or(""),
        change,
        result,
    };
    (
        code,
        [(header::CONTENT_TYPE, "application/json")],
        serde_json::to_string(&body).unwrap_or_default(),
    )
        .into_response()
}

/// `{"type":"sync","status-code":200,"status":"OK","result":...}`.
fn sync(result: Value) -> Response {
    envelope(StatusCode::OK, "sync", None, Some(result))
}

/// `{"type":"async","status-code":202,"status":"Accepted","change":"<id>"}` (Pebble leaves
/// out the empty result).
fn accepted(change: u64) -> Response {
    envelope(
        StatusCode::ACCEPTED,
        "async",
        Some(change.to_string()),
        None,
    )
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut result = json!({"message": self.message});
        if let Some(k) = self.kind {
            result["kind"] = json!(k);
        }
        envelope(self.status, "error", None, Some(result))
    }
}

type Reply = Result<Response, ApiError>;

/// Query pairs, a repeated key's values all kept in order.
fn query(q: &Option<String>) -> Vec<(String, String)> {
    crate::k8s::query_pairs(q)
}

fn first(q: &[(String, String)], key: &str) -> String {
    q.iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.clone())
        .unwrap_or_default()
}

/// Every value of `key`, each split at commas (`names=a,b&names=c`).
fn comma_list(q: &[(String, String)], key: &str) -> Vec<String> {
    q.iter()
        .filter(|(k, _)| k == key)
        .flat_map(|(_, v)| v.split(',').map(|s| s.trim().to_string()))
        .filter(|s| !s.is_empty())
        .collect()
}

fn decode<T: for<'de> Deserialize<'de>>(body: &Bytes, what: &str) -> Result<T, ApiError> {
    if body.iter().all(|b| b.is_ascii_whitespace()) {
        return Err(ApiError::bad_request(format!("cannot decode {what}: EOF")));
    }
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("cannot decode {what}: {e}")))
}

pub fn router(daemon: Arc<Daemon>) -> Router {
    Router::new()
        .route("/v1/system-info", get(system_info))
        .route("/v1/files", get(get_files).post(post_files))
        .route("/v1/layers", post(post_layers))
        .route("/v1/plan", get(get_plan))
        .route("/v1/services", get(get_services).post(post_services))
        .route("/v1/changes", get(get_changes))
        .route("/v1/changes/{id}", get(get_change))
        .route("/v1/changes/{id}/wait", get(wait_change))
        .route("/v1/logs", get(get_logs))
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "not found") })
        .method_not_allowed_fallback(|method: Method| async move {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                format!("method {:?} not allowed", method.as_str()),
            )
        })
        .layer(DefaultBodyLimit::disable())
        .with_state(daemon)
}

async fn system_info(State(d): State<Arc<Daemon>>) -> Response {
    sync(json!({"boot-id": d.boot_id, "http-address": "", "version": VERSION}))
}

// ---------------------------------------------------------------------------------------------
// Files.

async fn get_files(
    State(d): State<Arc<Daemon>>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> Reply {
    let q = query(&q);
    let action = first(&q, "action");
    let root = d.root.clone();
    match action.as_str() {
        "read" => {
            let paths: Vec<String> = q
                .iter()
                .filter(|(k, _)| k == "path")
                .map(|(_, v)| v.clone())
                .collect();
            if paths.is_empty() {
                return Err(ApiError::bad_request("must specify one or more paths"));
            }
            let accept = headers
                .get(header::ACCEPT)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            if accept != "multipart/form-data" {
                return Err(ApiError::bad_request("must accept multipart/form-data"));
            }
            let (boundary, body) =
                tokio::task::spawn_blocking(move || files::read_files(&root, &paths))
                    .await
                    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
            Ok((
                StatusCode::OK,
                [(
                    header::CONTENT_TYPE,
                    format!("multipart/form-data; boundary={boundary}"),
                )],
                body,
            )
                .into_response())
        }
        "list" => {
            let path = first(&q, "path");
            if path.is_empty() {
                return Err(ApiError::bad_request("must specify path"));
            }
            let pattern = first(&q, "pattern");
            let itself = first(&q, "itself");
            if !matches!(itself.as_str(), "" | "true" | "false") {
                return Err(ApiError::bad_request(
                    "itself parameter must be \"true\" or \"false\"",
                ));
            }
            let listed = tokio::task::spawn_blocking(move || {
                files::list_files(&root, &path, &pattern, itself == "true")
            })
            .await
            .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))??;
            Ok(sync(listed))
        }
        other => Err(ApiError::bad_request(format!("invalid action {other:?}"))),
    }
}

async fn post_files(State(d): State<Arc<Daemon>>, headers: HeaderMap, body: Bytes) -> Reply {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let Some((media, params)) = files::media_type(&content_type) else {
        return Err(ApiError::bad_request(format!(
            "invalid Content-Type {content_type:?}"
        )));
    };
    let root = d.root.clone();
    let blocking = |f: Box<dyn FnOnce() -> Result<Value, ApiError> + Send>| async move {
        tokio::task::spawn_blocking(f)
            .await
            .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
    };
    match media.as_str() {
        "multipart/form-data" => {
            let boundary = params.get("boundary").cloned().unwrap_or_default();
            let written = blocking(Box::new(move || {
                files::write_files(&root, &boundary, &body)
            }))
            .await?;
            Ok(sync(written))
        }
        "application/json" => {
            #[derive(Deserialize, Default)]
            #[serde(default)]
            struct Payload {
                action: String,
                dirs: Vec<files::MakeDirsItem>,
                paths: Vec<files::RemoveItem>,
            }
            let p: Payload = decode(&body, "request body")?;
            match p.action.as_str() {
                "make-dirs" => Ok(sync(
                    blocking(Box::new(move || Ok(files::make_dirs(&root, &p.dirs)))).await?,
                )),
                "remove" => Ok(sync(
                    blocking(Box::new(move || Ok(files::remove_paths(&root, &p.paths)))).await?,
                )),
                "write" => Err(ApiError::bad_request(
                    "must use multipart with \"write\" action",
                )),
                other => Err(ApiError::bad_request(format!("invalid action {other:?}"))),
            }
        }
        other => Err(ApiError::bad_request(format!(
            "invalid media type {other:?}"
        ))),
    }
}

// ---------------------------------------------------------------------------------------------
// Layers and the plan.

async fn post_layers(State(d): State<Arc<Daemon>>, body: Bytes) -> Reply {
    #[derive(Deserialize, Default)]
    #[serde(default)]
    struct Payload {
        action: String,
        combine: bool,
        #[allow(dead_code)]
        inner: bool,
        label: String,
        format: String,
        layer: String,
    }
    let p: Payload = decode(&body, "request body")?;
    if p.action != "add" {
        return Err(ApiError::bad_request(format!(
            "invalid action {:?}",
            p.action
        )));
    }
    if p.label.is_empty() {
        return Err(ApiError::bad_request("label must be set"));
    }
    if p.format != "yaml" {
        return Err(ApiError::bad_request(format!(
            "invalid format {:?}",
            p.format
        )));
    }
    let layer = plan::parse_layer(&p.label, &p.layer)
        .map_err(|e| ApiError::bad_request(format!("cannot parse layer YAML: {e}")))?;
    d.log(&format!("Adding layer {}", p.label));
    d.add_layer(layer, p.combine)
        .map_err(ApiError::bad_request)?;
    Ok(sync(json!(true)))
}

async fn get_plan(State(d): State<Arc<Daemon>>, RawQuery(q): RawQuery) -> Reply {
    let format = first(&query(&q), "format");
    if format != "yaml" {
        return Err(ApiError::bad_request(format!("invalid format {format:?}")));
    }
    Ok(sync(json!(d.plan().yaml())))
}

// ---------------------------------------------------------------------------------------------
// Services and changes.

async fn get_services(State(d): State<Arc<Daemon>>, RawQuery(q): RawQuery) -> Response {
    sync(json!(d.services(&comma_list(&query(&q), "names"))))
}

async fn post_services(State(d): State<Arc<Daemon>>, body: Bytes) -> Reply {
    #[derive(Deserialize, Default)]
    #[serde(default)]
    struct Payload {
        action: String,
        services: Vec<String>,
    }
    let p: Payload = decode(&body, "data from request body")?;
    let id = d.services_action(&p.action, p.services)?;
    Ok(accepted(id))
}

async fn get_changes(State(d): State<Arc<Daemon>>, RawQuery(q): RawQuery) -> Reply {
    let q = query(&q);
    let select = first(&q, "select");
    let select = if select.is_empty() {
        "in-progress".to_string()
    } else {
        select
    };
    if !matches!(select.as_str(), "all" | "in-progress" | "ready") {
        return Err(ApiError::bad_request(
            "select should be one of: all,in-progress,ready",
        ));
    }
    let service = first(&q, "for");
    let service = (!service.is_empty()).then_some(service.as_str());
    Ok(sync(json!(d.changes(&select, service))))
}

fn no_change(id: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!("cannot find change with id {id:?}"),
    )
}

async fn get_change(State(d): State<Arc<Daemon>>, UrlPath(id): UrlPath<String>) -> Reply {
    d.change(&id).map(sync).ok_or_else(|| no_change(&id))
}

async fn wait_change(
    State(d): State<Arc<Daemon>>,
    UrlPath(id): UrlPath<String>,
    RawQuery(q): RawQuery,
) -> Reply {
    if d.change(&id).is_none() {
        return Err(no_change(&id));
    }
    let raw = first(&query(&q), "timeout");
    let timeout = if raw.is_empty() {
        None
    } else {
        match crate::go_time::parse_go_duration(&raw) {
            Some(t) if t.is_zero() => None,
            Some(t) => Some(t),
            None => {
                return Err(ApiError::bad_request(format!(
                    "invalid timeout: time: invalid duration {raw:?}"
                )))
            }
        }
    };
    match d.wait_change(&id, timeout).await {
        None => Err(no_change(&id)),
        Some(Ok(v)) => Ok(sync(v)),
        Some(Err(())) => Err(ApiError::new(
            StatusCode::GATEWAY_TIMEOUT,
            format!(
                "timed out waiting for change after {}",
                plan::go_duration(timeout.unwrap_or(Duration::ZERO))
            ),
        )),
    }
}

// ---------------------------------------------------------------------------------------------
// Logs.

/// `GET /v1/logs?services=a,b&n=30&follow=false`: JSON Lines, oldest first; with `follow`,
/// the stream stays open and new output follows.
async fn get_logs(State(d): State<Arc<Daemon>>, RawQuery(q): RawQuery) -> Reply {
    let q = query(&q);
    let mut services = comma_list(&q, "services");
    let follow = match first(&q, "follow").as_str() {
        "" | "false" => false,
        "true" => true,
        _ => {
            return Err(ApiError::bad_request(
                "follow parameter must be \"true\" or \"false\"",
            ))
        }
    };
    let n_raw = first(&q, "n");
    let n: Option<usize> = if n_raw.is_empty() {
        Some(if follow { 0 } else { 30 })
    } else {
        match n_raw.parse::<i64>() {
            Ok(-1) => None,
            Ok(n) if n >= 0 => Some(n as usize),
            _ => {
                return Err(ApiError::bad_request(
                    "n must be -1, 0, or a positive integer",
                ))
            }
        }
    };
    let all_services = services.is_empty();
    if all_services {
        services = d.service_names();
    }
    let live = d.subscribe_logs();
    let (backlog, upto) = d.logs(&services, n);
    let head: String = backlog.iter().map(|e| e.json_line()).collect();
    let ndjson = [(header::CONTENT_TYPE, "application/x-ndjson")];
    if !follow {
        return Ok((StatusCode::OK, ndjson, head).into_response());
    }
    let first_chunk = futures::stream::iter([Ok::<_, std::convert::Infallible>(head)]);
    let more = futures::stream::unfold((live, services), move |(mut rx, services)| async move {
        loop {
            match rx.recv().await {
                Ok(e) if e.seq > upto && (all_services || services.contains(&e.service)) => {
                    return Some((Ok(e.json_line()), (rx, services)))
                }
                Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                Err(_) => return None,
            }
        }
    });
    let stream = futures::StreamExt::chain(first_chunk, more);
    Ok((StatusCode::OK, ndjson, Body::from_stream(stream)).into_response())
}
