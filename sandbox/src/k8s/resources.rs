//! Services and custom resources (Argo Workflows, Katib Experiments): what the API lists
//! besides pods, and how the sandbox makes the workloads a test starts.

use std::collections::BTreeMap;

use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use super::{check_ns, guard, list, not_found, rfc3339, status, Ctx};
use crate::model::{new_uid, now_ms, App, Model};

fn service_json(model: &Model, name: &str, app: &App) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": model.namespace(), "labels": {"app.kubernetes.io/name": name}},
        "spec": {
            "selector": {"app.kubernetes.io/name": name},
            "ports": app.ports.keys().map(|p| json!({"name": format!("{name}-{p}"), "port": p, "targetPort": p, "protocol": "TCP"})).collect::<Vec<_>>(),
            "type": "ClusterIP",
        }
    })
}

pub(super) async fn services(
    State(ctx): State<Ctx>,
    headers: HeaderMap,
    UrlPath(ns): UrlPath<String>,
) -> Response {
    let model = match guard(&ctx, &headers).await {
        Ok(m) => m,
        Err(r) => return r,
    };
    let items = if ns == model.namespace() {
        model
            .apps
            .iter()
            .filter(|(_, a)| !a.ports.is_empty())
            .map(|(n, a)| service_json(&model, n, a))
            .collect()
    } else {
        vec![]
    };
    list("ServiceList", "v1", model.k8s.resource_version, items)
}

pub(super) async fn service(
    State(ctx): State<Ctx>,
    headers: HeaderMap,
    UrlPath((ns, name)): UrlPath<(String, String)>,
) -> Response {
    let model = match guard(&ctx, &headers).await {
        Ok(m) => m,
        Err(r) => return r,
    };
    if let Some(r) = check_ns(&model, &ns, "get", ("services", ""), Some(&name)) {
        return r;
    }
    match model.apps.get(&name).filter(|a| !a.ports.is_empty()) {
        Some(a) => Json(service_json(&model, &name, a)).into_response(),
        None => not_found("services", &name),
    }
}

pub(super) async fn custom(
    State(ctx): State<Ctx>,
    headers: HeaderMap,
    UrlPath(params): UrlPath<BTreeMap<String, String>>,
) -> Response {
    let model = match guard(&ctx, &headers).await {
        Ok(m) => m,
        Err(r) => return r,
    };
    let (group, version, plural) = (
        params["group"].as_str(),
        params["version"].as_str(),
        params["plural"].as_str(),
    );
    let (items, kind) = match (group, version, plural) {
        ("argoproj.io", "v1alpha1", "workflows") => (&model.k8s.workflows, "WorkflowList"),
        ("kubeflow.org", "v1beta1", "experiments") => (&model.k8s.experiments, "ExperimentList"),
        _ => {
            return status(
                StatusCode::NOT_FOUND,
                "NotFound",
                "the server could not find the requested resource",
            )
        }
    };
    let ns = params.get("ns");
    let items = items
        .iter()
        .filter(|i| ns.is_none_or(|ns| i["metadata"]["namespace"].as_str() == Some(ns)))
        .cloned()
        .collect();
    list(
        kind,
        &format!("{group}/{version}"),
        model.k8s.resource_version,
        items,
    )
}

/// An Argo Workflow as KFP creates them, in the given phase (`Running`, `Succeeded`, ...).
pub fn workflow(name: &str, namespace: &str, phase: &str) -> Value {
    let now = rfc3339(now_ms());
    json!({
        "apiVersion": "argoproj.io/v1alpha1", "kind": "Workflow",
        "metadata": {
            "name": name, "namespace": namespace, "uid": new_uid(), "creationTimestamp": now,
            "labels": {"pipeline/runid": new_uid(), "workflows.argoproj.io/phase": phase},
        },
        "spec": {"entrypoint": "entrypoint", "serviceAccountName": "default-editor"},
        "status": {"phase": phase, "startedAt": now, "progress": "1/4"},
    })
}

/// A Katib Experiment whose last condition is `condition` (`Running`, `Succeeded`, ...).
pub fn experiment(name: &str, namespace: &str, condition: &str) -> Value {
    let now = rfc3339(now_ms());
    json!({
        "apiVersion": "kubeflow.org/v1beta1", "kind": "Experiment",
        "metadata": {"name": name, "namespace": namespace, "uid": new_uid(), "creationTimestamp": now},
        "spec": {"objective": {"type": "maximize", "objectiveMetricName": "accuracy"}, "maxTrialCount": 12, "parallelTrialCount": 3},
        "status": {
            "startTime": now,
            "conditions": [
                {"type": "Created", "status": "True", "reason": "ExperimentCreated", "message": "Experiment is created", "lastTransitionTime": now},
                {"type": condition, "status": "True", "reason": format!("Experiment{condition}"), "message": format!("Experiment is {}", condition.to_lowercase()), "lastTransitionTime": now},
            ],
        },
    })
}
