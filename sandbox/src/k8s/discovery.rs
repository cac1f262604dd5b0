//! API discovery, which every kubectl command reads before anything else (`/api`, `/apis`, then
//! each group version), in the legacy JSON shapes: client-go picks its parser from the reply's
//! Content-Type, so plain `application/json` is accepted even when it asked for aggregated
//! discovery first (client-go `discovery/aggregated_discovery.go`).

use axum::extract::{Path as UrlPath, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use super::{guard, not_found_path, Ctx};

const RW: &[&str] = &[
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];

fn resource(name: &str, singular: &str, kind: &str, short: &[&str], verbs: &[&str]) -> Value {
    let mut r = json!({
        "name": name, "singularName": singular, "namespaced": name != "namespaces",
        "kind": kind, "verbs": verbs,
    });
    if !short.is_empty() {
        r["shortNames"] = json!(short);
    }
    if matches!(name, "pods" | "services" | "statefulsets" | "deployments") {
        r["categories"] = json!(["all"]);
    }
    r
}

/// A subresource; `scale` answers in autoscaling/v1, which kubectl needs to be told.
fn sub(name: &str, kind: &str, verbs: &[&str]) -> Value {
    let mut r =
        json!({"name": name, "singularName": "", "namespaced": true, "kind": kind, "verbs": verbs});
    if kind == "Scale" {
        r["group"] = json!("autoscaling");
        r["version"] = json!("v1");
    }
    r
}

/// The resources of each group version the simulator serves.
fn resources(group_version: &str) -> Option<Vec<Value>> {
    Some(match group_version {
        "v1" => vec![
            resource("events", "event", "Event", &["ev"], RW),
            resource(
                "namespaces",
                "namespace",
                "Namespace",
                &["ns"],
                &["get", "list"],
            ),
            resource("pods", "pod", "Pod", &["po"], RW),
            sub("pods/exec", "PodExecOptions", &["create", "get"]),
            sub("pods/log", "Pod", &["get"]),
            sub(
                "pods/portforward",
                "PodPortForwardOptions",
                &["create", "get"],
            ),
            resource("services", "service", "Service", &["svc"], RW),
        ],
        "apps/v1" => vec![
            resource("deployments", "deployment", "Deployment", &["deploy"], RW),
            sub("deployments/scale", "Scale", &["get", "patch", "update"]),
            resource("statefulsets", "statefulset", "StatefulSet", &["sts"], RW),
            sub("statefulsets/scale", "Scale", &["get", "patch", "update"]),
        ],
        "argoproj.io/v1alpha1" => {
            vec![resource("workflows", "workflow", "Workflow", &["wf"], RW)]
        }
        "kubeflow.org/v1beta1" => {
            vec![resource("experiments", "experiment", "Experiment", &[], RW)]
        }
        _ => return None,
    })
}

const GROUPS: &[(&str, &str)] = &[
    ("apps", "v1"),
    ("argoproj.io", "v1alpha1"),
    ("kubeflow.org", "v1beta1"),
];

pub(super) async fn api(State(ctx): State<Ctx>, headers: HeaderMap) -> Response {
    if let Err(r) = guard(&ctx, &headers).await {
        return r;
    }
    Json(json!({
        "kind": "APIVersions", "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1"}],
    }))
    .into_response()
}

pub(super) async fn apis(State(ctx): State<Ctx>, headers: HeaderMap) -> Response {
    if let Err(r) = guard(&ctx, &headers).await {
        return r;
    }
    let groups: Vec<Value> = GROUPS
        .iter()
        .map(|(g, v)| {
            let gv = json!({"groupVersion": format!("{g}/{v}"), "version": v});
            json!({"name": g, "versions": [gv.clone()], "preferredVersion": gv})
        })
        .collect();
    Json(json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})).into_response()
}

async fn resource_list(ctx: &Ctx, headers: &HeaderMap, gv: &str) -> Response {
    if let Err(r) = guard(ctx, headers).await {
        return r;
    }
    match resources(gv) {
        Some(rs) => Json(json!({
            "kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": rs,
        }))
        .into_response(),
        None => not_found_path(),
    }
}

pub(super) async fn core_v1(State(ctx): State<Ctx>, headers: HeaderMap) -> Response {
    resource_list(&ctx, &headers, "v1").await
}

pub(super) async fn group_version(
    State(ctx): State<Ctx>,
    headers: HeaderMap,
    UrlPath((group, version)): UrlPath<(String, String)>,
) -> Response {
    resource_list(&ctx, &headers, &format!("{group}/{version}")).await
}
