//! Pods: the Juju units' pods as the API shows them (`<app>-<ordinal>`, StatefulSet style, so
//! a deleted pod comes back with a new uid), listed, read and deleted.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::Context;
use axum::extract::{Path as UrlPath, RawQuery, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use super::{check_ns, guard, list, not_found, query_pairs, rfc3339, status, Ctx};
use crate::model::{now_ms, App, Model};

/// A pod as the API shows it now, or `None` while it does not exist.
#[derive(Debug, Clone)]
pub struct PodView {
    pub name: String,
    pub app: String,
    pub containers: Vec<String>,
    pub ready: bool,
    pub terminating: bool,
    pub json: Value,
    /// Pod port → host port serving it.
    pub ports: BTreeMap<u16, u16>,
}

pub fn pods(model: &Model, now: u64) -> Vec<PodView> {
    let mut out = vec![];
    let t = &model.timing;
    for (app_name, app) in &model.apps {
        for (num, u) in &app.units {
            let terminating = u
                .pod_deleted_ms
                .is_some_and(|d| now < d + t.pod_terminating_ms);
            if u.pod_deleted_ms.is_some() && !terminating {
                continue;
            }
            let name = format!("{app_name}-{}", u.ordinal);
            let ready = App::is_ready(u, now);
            let mut containers = vec!["charm".to_string()];
            containers.extend(app.container.clone());
            let cstatus: Vec<Value> = containers
                .iter()
                .map(|c| {
                    json!({
                        "name": c, "ready": ready, "started": true, "restartCount": u.restarts,
                        "image": format!("sandbox/{}:{}", app.charm, c),
                        "state": {"running": {"startedAt": rfc3339(u.pod_created_ms)}},
                    })
                })
                .collect();
            let specs: Vec<Value> = containers
                .iter()
                .map(|c| {
                    let mut s = json!({"name": c, "image": format!("sandbox/{}:{}", app.charm, c)});
                    if Some(c) == app.container.as_ref() && !app.ports.is_empty() {
                        s["ports"] = json!(app
                            .ports
                            .keys()
                            .map(|p| json!({"containerPort": p, "protocol": "TCP"}))
                            .collect::<Vec<_>>());
                    }
                    s
                })
                .collect();
            let cond = |ty: &str, ok: bool| json!({"type": ty, "status": if ok { "True" } else { "False" }, "lastTransitionTime": rfc3339(u.ready_at_ms.min(now))});
            let mut meta = json!({
                "name": name,
                "namespace": model.namespace(),
                "uid": u.pod_uid,
                "resourceVersion": (model.k8s.resource_version + u.pod_created_ms % 100_000).to_string(),
                "creationTimestamp": rfc3339(u.pod_created_ms),
                "labels": {
                    "app.kubernetes.io/name": app_name,
                    "statefulset.kubernetes.io/pod-name": name,
                    "controller-revision-hash": format!("{app_name}-7d9c8b6f5"),
                },
                "annotations": {"juju.is/version": model.juju_version, "unit.juju.is/id": format!("{app_name}/{num}")},
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "StatefulSet", "name": app_name, "uid": crate::model::stable_uid(&format!("statefulset/{app_name}")), "controller": true, "blockOwnerDeletion": true}],
            });
            if let Some(d) = u.pod_deleted_ms {
                meta["deletionTimestamp"] = json!(rfc3339(d + t.pod_terminating_ms));
                meta["deletionGracePeriodSeconds"] = json!(30);
            }
            let json = json!({
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": meta,
                "spec": {
                    "containers": specs,
                    "serviceAccountName": app_name,
                    "hostname": name,
                    "subdomain": format!("{app_name}-endpoints"),
                    "nodeName": "sandbox-node",
                },
                "status": {
                    "phase": "Running",
                    "podIP": crate::model::pod_ip(app_name, u.ordinal),
                    "hostIP": "127.0.0.1",
                    "startTime": rfc3339(u.pod_created_ms),
                    "conditions": [cond("Initialized", true), cond("Ready", ready && !terminating), cond("ContainersReady", ready && !terminating), cond("PodScheduled", true)],
                    "containerStatuses": cstatus,
                },
            });
            out.push(PodView {
                name,
                app: app_name.clone(),
                containers,
                ready: ready && !terminating,
                terminating,
                json,
                ports: app.ports.clone(),
            });
        }
    }
    out
}

/// Equality-based label selectors: `k=v`, `k==v`, `k!=v`, `k` (exists) and `!k` (absent).
fn matches_selector(pod: &Value, selector: &str) -> bool {
    let labels = &pod["metadata"]["labels"];
    selector
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .all(|term| {
            if let Some((k, v)) = term.split_once("!=") {
                labels[k.trim()].as_str() != Some(v.trim())
            } else if let Some((k, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
                labels[k.trim()].as_str() == Some(v.trim())
            } else if let Some(k) = term.strip_prefix('!') {
                labels.get(k.trim()).is_none()
            } else {
                labels.get(term).is_some()
            }
        })
}

pub fn pod_dir(model: &Model, pod: &str) -> PathBuf {
    model.data_dir.join("pods").join(pod)
}

/// The authenticated request's model and the pod it names, or the API's error response.
pub(super) async fn find_pod(
    ctx: &Ctx,
    headers: &HeaderMap,
    ns: &str,
    name: &str,
) -> Result<(Model, PodView), Response> {
    let model = guard(ctx, headers).await?;
    if let Some(r) = check_ns(&model, ns, "get", ("pods", ""), Some(name)) {
        return Err(r);
    }
    match pods(&model, now_ms()).into_iter().find(|p| p.name == name) {
        Some(view) => Ok((model, view)),
        None => Err(not_found("pods", name)),
    }
}

pub(super) async fn list_pods(
    State(ctx): State<Ctx>,
    headers: HeaderMap,
    ns: Option<UrlPath<String>>,
    RawQuery(q): RawQuery,
) -> Response {
    let model = match guard(&ctx, &headers).await {
        Ok(m) => m,
        Err(r) => return r,
    };
    // The token's ClusterRole lists pods everywhere; only the model's namespace has any.
    let items = if ns
        .as_ref()
        .is_some_and(|UrlPath(ns)| ns != model.namespace())
    {
        vec![]
    } else {
        pods_matching(&model, &q)
    };
    if super::table::wanted(&headers) {
        return super::table::render(
            super::table::Printed::Pods,
            &items,
            model.k8s.resource_version,
        );
    }
    list("PodList", "v1", model.k8s.resource_version, items)
}

fn pods_matching(model: &Model, q: &Option<String>) -> Vec<Value> {
    let selector = query_pairs(q)
        .into_iter()
        .find(|(k, _)| k == "labelSelector")
        .map(|(_, v)| v);
    pods(model, now_ms())
        .into_iter()
        .map(|p| p.json)
        .filter(|p| selector.as_deref().is_none_or(|s| matches_selector(p, s)))
        .collect()
}

pub(super) async fn pod(
    State(ctx): State<Ctx>,
    method: Method,
    headers: HeaderMap,
    UrlPath((ns, name)): UrlPath<(String, String)>,
) -> Response {
    let model = match guard(&ctx, &headers).await {
        Ok(m) => m,
        Err(r) => return r,
    };
    let verb = if method == Method::DELETE {
        "delete"
    } else {
        "get"
    };
    if let Some(r) = check_ns(&model, &ns, verb, ("pods", ""), Some(&name)) {
        return r;
    }
    let now = now_ms();
    let Some(view) = pods(&model, now).into_iter().find(|p| p.name == name) else {
        return not_found("pods", &name);
    };
    if method == Method::DELETE {
        let deleted = ctx.store.update(|m| {
            let app = m.apps.get_mut(&view.app).context("app vanished")?;
            if let Some(u) = app
                .units
                .values_mut()
                .find(|u| format!("{}-{}", view.app, u.ordinal) == view.name)
            {
                if u.pod_deleted_ms.is_none() {
                    u.pod_deleted_ms = Some(now);
                }
            }
            Ok(())
        });
        if let Err(e) = deleted {
            return status(
                StatusCode::INTERNAL_SERVER_ERROR,
                "InternalError",
                format!("{e:#}"),
            );
        }
        let mut j = view.json.clone();
        j["metadata"]["deletionTimestamp"] = json!(rfc3339(now + model.timing.pod_terminating_ms));
        j["metadata"]["deletionGracePeriodSeconds"] = json!(30);
        // Everything the pod kept outside its volumes is gone with it.
        let _ = std::fs::remove_dir_all(pod_dir(&model, &view.name).join("tmp"));
        return Json(j).into_response();
    }
    if super::table::wanted(&headers) {
        return super::table::render(
            super::table::Printed::Pods,
            &[view.json],
            model.k8s.resource_version,
        );
    }
    Json(view.json).into_response()
}
