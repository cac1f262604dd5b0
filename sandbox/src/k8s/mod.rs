//! A Kubernetes API server simulator on loopback that the real `kube` client and an unmodified
//! `kubectl` talk to, over HTTPS with a CA the sandbox makes.
//!
//! Discovery (`/api`, `/apis`, each group version) as kubectl reads it; pods are the Juju
//! units' pods (`<app>-<ordinal>`, StatefulSet style, so a deleted pod comes back with a new
//! uid); each application is a StatefulSet with a `/scale` subresource, and Juju's
//! `modeloperator` a Deployment; `kubectl get` gets server-side Tables; exec runs real
//! commands against the pod's files (so `kubectl cp` runs a real `tar`); port-forward reaches
//! the host port that stands in for the pod's port; logs and (empty) events answer
//! `kubectl logs` and `describe`; Argo Workflows and Katib Experiments are listed from the
//! model. Every request needs the kubeconfig's bearer token (401 without it); the token is a
//! service account whose Role covers the model's namespace only (403 elsewhere), plus a
//! ClusterRole to list pods.

mod apps;
mod discovery;
mod exec;
mod pods;
mod resources;
mod table;
pub mod tls;

use std::net::SocketAddr;

use anyhow::{Context, Result};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use chrono::{TimeZone, Utc};
use serde_json::{json, Value};

use crate::model::{Model, ModelStore};
pub use exec::container_command;
use exec::{exec, portforward};
use pods::{list_pods, pod};
pub use pods::{pod_dir, pods, PodView};
use resources::{custom, service, services};
pub use resources::{experiment, workflow};

#[derive(Clone)]
struct Ctx {
    store: ModelStore,
}

fn status(code: StatusCode, reason: &str, message: impl Into<String>) -> Response {
    let body = json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {},
        "status": "Failure", "message": message.into(), "reason": reason, "code": code.as_u16(),
    });
    (code, Json(body)).into_response()
}

fn bad_request(message: impl Into<String>) -> Response {
    status(StatusCode::BAD_REQUEST, "BadRequest", message)
}

fn not_found(kind: &str, name: &str) -> Response {
    status(
        StatusCode::NOT_FOUND,
        "NotFound",
        format!("{kind} \"{name}\" not found"),
    )
}

fn rfc3339(ms: u64) -> String {
    Utc.timestamp_millis_opt(ms as i64)
        .single()
        .unwrap_or_default()
        .format("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

/// Query string pairs, repeated keys kept (exec's `command=` repeats).
pub(crate) fn query_pairs(q: &Option<String>) -> Vec<(String, String)> {
    let Some(q) = q else { return vec![] };
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            let dec = |s: &str| {
                percent_encoding::percent_decode_str(&s.replace('+', " "))
                    .decode_utf8_lossy()
                    .into_owned()
            };
            (dec(k), dec(v))
        })
        .collect()
}

fn list(kind: &str, api_version: &str, rv: u64, items: Vec<Value>) -> Response {
    Json(json!({"apiVersion": api_version, "kind": kind, "metadata": {"resourceVersion": rv.to_string()}, "items": items})).into_response()
}

async fn guard(ctx: &Ctx, headers: &HeaderMap) -> Result<Model, Response> {
    // The model file is read under a blocking lock: keep it off the async workers.
    let store = ctx.store.clone();
    let model = tokio::task::spawn_blocking(move || store.read())
        .await
        .map_err(|e| {
            status(
                StatusCode::INTERNAL_SERVER_ERROR,
                "InternalError",
                e.to_string(),
            )
        })?
        .map_err(|e| {
            status(
                StatusCode::INTERNAL_SERVER_ERROR,
                "InternalError",
                format!("{e:#}"),
            )
        })?;
    if model.faults.k8s_unavailable {
        return Err(status(
            StatusCode::SERVICE_UNAVAILABLE,
            "ServiceUnavailable",
            "the server is currently unable to handle the request",
        ));
    }
    let expected = format!("Bearer {}", model.k8s.token);
    if headers.get("authorization").and_then(|h| h.to_str().ok()) != Some(expected.as_str()) {
        return Err(status(
            StatusCode::UNAUTHORIZED,
            "Unauthorized",
            "Unauthorized",
        ));
    }
    Ok(model)
}

/// Who the sandbox's token is, as RBAC messages name it.
pub(crate) const SUBJECT: &str = "system:serviceaccount:kubeflow:backup-agent";

/// 403, as the API server refuses what RBAC does not allow.
fn forbidden(message: String, kind: &str, name: Option<&str>) -> Response {
    let mut details = json!({"kind": kind});
    if let Some(n) = name {
        details["name"] = json!(n);
    }
    let body = json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {},
        "status": "Failure", "message": message, "reason": "Forbidden", "details": details, "code": 403,
    });
    (StatusCode::FORBIDDEN, Json(body)).into_response()
}

/// A request in a namespace the token's Role does not cover: the sandbox's token is a service
/// account bound by a Role in the model's namespace only (and a ClusterRole that lists pods).
/// `res` may name a subresource (`statefulsets/scale`) of API `group` ("" for the core API);
/// the message names the object as the API server does.
pub(crate) fn check_ns(
    model: &Model,
    ns: &str,
    verb: &str,
    (res, group): (&str, &str),
    name: Option<&str>,
) -> Option<Response> {
    (ns != model.namespace()).then(|| refused(ns, verb, (res, group), name))
}

/// RBAC's refusal of `verb` on `res` (of API `group`) in namespace `ns`.
pub(crate) fn refused(
    ns: &str,
    verb: &str,
    (res, group): (&str, &str),
    name: Option<&str>,
) -> Response {
    let base = res.split('/').next().unwrap_or(res);
    let kind = if group.is_empty() {
        base.to_string()
    } else {
        format!("{base}.{group}")
    };
    let what = match name {
        Some(n) => format!("{kind} \"{n}\""),
        None => kind,
    };
    forbidden(
        format!("{what} is forbidden: User \"{SUBJECT}\" cannot {verb} resource \"{res}\" in API group \"{group}\" in the namespace \"{ns}\""),
        base,
        name,
    )
}

fn not_found_path() -> Response {
    status(
        StatusCode::NOT_FOUND,
        "NotFound",
        "the server could not find the requested resource",
    )
}

async fn version() -> Json<Value> {
    Json(
        json!({"major": "1", "minor": "31", "gitVersion": "v1.31.4-sandbox", "platform": "linux/amd64"}),
    )
}

async fn fallback() -> Response {
    not_found_path()
}

pub fn router(store: ModelStore) -> Router {
    let ctx = Ctx { store };
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/version", get(version))
        .route("/api", get(discovery::api))
        .route("/apis", get(discovery::apis))
        .route("/api/v1", get(discovery::core_v1))
        .route("/apis/{group}/{version}", get(discovery::group_version))
        .route("/api/v1/events", get(apps::events))
        .route("/api/v1/namespaces/{ns}/events", get(apps::events))
        .route("/api/v1/namespaces/{ns}/pods/{name}/log", get(apps::logs))
        .route(
            "/apis/apps/v1/namespaces/{ns}/statefulsets",
            get(apps::list_statefulsets),
        )
        .route(
            "/apis/apps/v1/namespaces/{ns}/statefulsets/{name}",
            get(apps::get_statefulset),
        )
        .route(
            "/apis/apps/v1/namespaces/{ns}/statefulsets/{name}/scale",
            get(apps::statefulset_scale)
                .patch(apps::statefulset_scale)
                .put(apps::statefulset_scale),
        )
        .route(
            "/apis/apps/v1/namespaces/{ns}/deployments",
            get(apps::list_deployments),
        )
        .route(
            "/apis/apps/v1/namespaces/{ns}/deployments/{name}",
            get(apps::get_deployment),
        )
        .route(
            "/apis/apps/v1/namespaces/{ns}/deployments/{name}/scale",
            get(apps::deployment_scale)
                .patch(apps::deployment_scale)
                .put(apps::deployment_scale),
        )
        .route("/api/v1/pods", get(list_pods))
        .route("/api/v1/namespaces/{ns}/pods", get(list_pods))
        .route("/api/v1/namespaces/{ns}/pods/{name}", get(pod).delete(pod))
        .route(
            "/api/v1/namespaces/{ns}/pods/{name}/exec",
            get(exec).post(exec),
        )
        .route(
            "/api/v1/namespaces/{ns}/pods/{name}/portforward",
            get(portforward).post(portforward),
        )
        .route("/api/v1/namespaces/{ns}/services", get(services))
        .route("/api/v1/namespaces/{ns}/services/{name}", get(service))
        .route("/apis/{group}/{version}/{plural}", get(custom))
        .route(
            "/apis/{group}/{version}/namespaces/{ns}/{plural}",
            get(custom),
        )
        .fallback(fallback)
        .with_state(ctx)
}

/// Serves the API over HTTPS on 127.0.0.1:`port` until the process is stopped.
pub async fn serve(store: ModelStore, port: u16, certs: &tls::CertFiles) -> Result<()> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding {addr}"))?;
    let tls = tls::TlsListener::new(listener, certs.acceptor()?)?;
    axum::serve(tls, router(store)).await?;
    Ok(())
}
