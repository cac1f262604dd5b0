//! What a Juju model's namespace holds besides pods, as kubectl reads it: a StatefulSet per
//! application (Juju's sidecar charms), the `modeloperator` Deployment Juju makes in every
//! model, their `/scale` subresource, events (none kept) and pod logs.

use axum::body::Bytes;
use axum::extract::{Path as UrlPath, RawQuery, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use super::pods::{find_pod, pods};
use super::table::{self, Printed};
use super::{check_ns, guard, list, not_found, query_pairs, refused, rfc3339, status, Ctx};
use crate::model::{now_ms, stable_uid, Model, Scaling};

/// Containers of an application's pods: Juju's `charm` container and the workload's.
fn containers(model: &Model, app: &str) -> Vec<Value> {
    let a = &model.apps[app];
    let mut cs = vec![json!({"name": "charm", "image": "jujusolutions/charm-base:ubuntu-22.04"})];
    if let Some(c) = &a.container {
        cs.push(json!({"name": c, "image": format!("sandbox/{}:{c}", a.charm)}));
    }
    cs
}

/// When the model's first pods were made: Juju created the StatefulSets and its operator then.
fn model_created(model: &Model) -> u64 {
    model
        .apps
        .values()
        .flat_map(|a| a.units.values().map(|u| u.pod_created_ms))
        .min()
        .unwrap_or(model.created_ms)
        .min(model.created_ms)
}

fn statefulset(model: &Model, app: &str) -> Value {
    let a = &model.apps[app];
    let now = now_ms();
    let mine: Vec<_> = pods(model, now)
        .into_iter()
        .filter(|p| p.app == app)
        .collect();
    let ready = mine.iter().filter(|p| p.ready).count();
    let labels = json!({"app.kubernetes.io/name": app, "app.kubernetes.io/managed-by": "juju"});
    json!({
        "apiVersion": "apps/v1", "kind": "StatefulSet",
        "metadata": {
            "name": app, "namespace": model.namespace(), "uid": stable_uid(&format!("statefulset/{app}")),
            "resourceVersion": model.k8s.resource_version.to_string(), "generation": 1,
            "creationTimestamp": rfc3339(model_created(model)), "labels": labels,
            "annotations": {"juju.is/version": model.juju_version, "app.juju.is/uuid": stable_uid(&format!("app/{app}"))},
        },
        "spec": {
            "replicas": a.scale,
            "selector": {"matchLabels": {"app.kubernetes.io/name": app}},
            "serviceName": format!("{app}-endpoints"),
            "podManagementPolicy": "Parallel",
            "template": {"metadata": {"labels": {"app.kubernetes.io/name": app}}, "spec": {"containers": containers(model, app)}},
        },
        "status": {
            "replicas": mine.len(), "readyReplicas": ready, "currentReplicas": mine.len(),
            "updatedReplicas": mine.len(), "availableReplicas": ready, "observedGeneration": 1,
        },
    })
}

/// The Deployment Juju runs the model's operator in.
fn modeloperator(model: &Model) -> Value {
    let labels =
        json!({"operator.juju.is/name": "modeloperator", "operator.juju.is/target": "model"});
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {
            "name": "modeloperator", "namespace": model.namespace(), "uid": stable_uid("deployment/modeloperator"),
            "resourceVersion": model.k8s.resource_version.to_string(), "generation": 1,
            "creationTimestamp": rfc3339(model_created(model)), "labels": labels,
        },
        "spec": {
            "replicas": 1, "selector": {"matchLabels": labels},
            "template": {"metadata": {"labels": labels}, "spec": {"containers": [{"name": "juju-operator", "image": format!("jujusolutions/jujud-operator:{}", model.juju_version)}]}},
        },
        "status": {"replicas": 1, "readyReplicas": 1, "updatedReplicas": 1, "availableReplicas": 1, "observedGeneration": 1},
    })
}

/// The two kinds of workload object the namespace holds.
#[derive(Clone, Copy)]
enum Workload {
    StatefulSets,
    Deployments,
}

impl Workload {
    fn resource(self) -> &'static str {
        match self {
            Workload::StatefulSets => "statefulsets",
            Workload::Deployments => "deployments",
        }
    }

    /// Every object of the kind, or the one named.
    fn objects(self, model: &Model, name: Option<&str>) -> Vec<Value> {
        match self {
            Workload::StatefulSets => model
                .apps
                .keys()
                .filter(|a| name.is_none_or(|n| n == *a))
                .map(|a| statefulset(model, a))
                .collect(),
            Workload::Deployments => match name {
                Some(n) if n != "modeloperator" => vec![],
                _ => vec![modeloperator(model)],
            },
        }
    }
}

/// GET of a workload list (`name` none) or of one object, as JSON or a Table.
async fn workloads(
    ctx: &Ctx,
    headers: &HeaderMap,
    ns: &str,
    name: Option<&str>,
    kind: Workload,
) -> Response {
    let model = match guard(ctx, headers).await {
        Ok(m) => m,
        Err(r) => return r,
    };
    let verb = if name.is_some() { "get" } else { "list" };
    if let Some(r) = check_ns(&model, ns, verb, (kind.resource(), "apps"), name) {
        return r;
    }
    let items = kind.objects(&model, name);
    let rv = model.k8s.resource_version;
    if name.is_some() && items.is_empty() {
        return not_found(
            &format!("{}.apps", kind.resource()),
            name.unwrap_or_default(),
        );
    }
    if table::wanted(headers) {
        let printed = match kind {
            Workload::StatefulSets => Printed::StatefulSets,
            Workload::Deployments => Printed::Deployments,
        };
        return table::render(printed, &items, rv);
    }
    match (name, kind) {
        (Some(_), _) => Json(items.into_iter().next()).into_response(),
        (None, Workload::StatefulSets) => list("StatefulSetList", "apps/v1", rv, items),
        (None, Workload::Deployments) => list("DeploymentList", "apps/v1", rv, items),
    }
}

pub(super) async fn list_statefulsets(
    State(ctx): State<Ctx>,
    headers: HeaderMap,
    UrlPath(ns): UrlPath<String>,
) -> Response {
    workloads(&ctx, &headers, &ns, None, Workload::StatefulSets).await
}

pub(super) async fn list_deployments(
    State(ctx): State<Ctx>,
    headers: HeaderMap,
    UrlPath(ns): UrlPath<String>,
) -> Response {
    workloads(&ctx, &headers, &ns, None, Workload::Deployments).await
}

pub(super) async fn get_statefulset(
    State(ctx): State<Ctx>,
    headers: HeaderMap,
    UrlPath((ns, name)): UrlPath<(String, String)>,
) -> Response {
    workloads(&ctx, &headers, &ns, Some(&name), Workload::StatefulSets).await
}

pub(super) async fn get_deployment(
    State(ctx): State<Ctx>,
    headers: HeaderMap,
    UrlPath((ns, name)): UrlPath<(String, String)>,
) -> Response {
    workloads(&ctx, &headers, &ns, Some(&name), Workload::Deployments).await
}

fn scale_json(obj: &Value, replicas: u64, selector: &str) -> Value {
    let m = &obj["metadata"];
    json!({
        "kind": "Scale", "apiVersion": "autoscaling/v1",
        "metadata": {"name": m["name"], "namespace": m["namespace"], "uid": m["uid"], "resourceVersion": m["resourceVersion"], "creationTimestamp": m["creationTimestamp"]},
        "spec": {"replicas": obj["spec"]["replicas"]},
        "status": {"replicas": replicas, "selector": selector},
    })
}

/// `statefulsets/NAME/scale`: GET reads it; PATCH (merge patch) and PUT (a whole Scale) set the
/// replicas. Juju's own StatefulSet follows, as `juju scale-application` would make it: the
/// sandbox has one notion of an application's scale, and units come and go with the pods.
pub(super) async fn statefulset_scale(
    State(ctx): State<Ctx>,
    method: Method,
    headers: HeaderMap,
    UrlPath((ns, name)): UrlPath<(String, String)>,
    body: Bytes,
) -> Response {
    let model = match guard(&ctx, &headers).await {
        Ok(m) => m,
        Err(r) => return r,
    };
    let verb = match method {
        Method::GET => "get",
        Method::PUT => "update",
        _ => "patch",
    };
    if let Some(r) = check_ns(
        &model,
        &ns,
        verb,
        ("statefulsets/scale", "apps"),
        Some(&name),
    ) {
        return r;
    }
    if !model.apps.contains_key(&name) {
        return not_found("statefulsets.apps", &name);
    }
    let sts = statefulset(&model, &name);
    let selector = format!("app.kubernetes.io/name={name}");
    if method == Method::GET {
        let n = sts["status"]["replicas"].as_u64().unwrap_or(0);
        return Json(scale_json(&sts, n, &selector)).into_response();
    }
    let Ok(patch) = serde_json::from_slice::<Value>(&body) else {
        return status(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml",
        );
    };
    let Some(replicas) = patch["spec"]["replicas"].as_i64() else {
        return status(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Invalid",
            format!("Scale.autoscaling \"{name}\" is invalid: spec.replicas: Required value"),
        );
    };
    if replicas < 0 {
        return status(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Invalid",
            format!("Scale.autoscaling \"{name}\" is invalid: spec.replicas: Invalid value: {replicas}: must be greater than or equal to 0"),
        );
    }
    let app = name.clone();
    let updated = ctx.store.update(move |m| {
        let delay = m.timing.scale_delay_ms;
        if let Some(a) = m.apps.get_mut(&app) {
            a.scale = replicas as u32;
            a.scaling = Some(Scaling {
                target: replicas as u32,
                due_ms: now_ms() + delay,
            });
        }
        m.k8s.resource_version += 1;
        Ok(m.clone())
    });
    match updated {
        Ok(m) => {
            let sts = statefulset(&m, &name);
            let n = sts["status"]["replicas"].as_u64().unwrap_or(0);
            Json(scale_json(&sts, n, &selector)).into_response()
        }
        Err(e) => status(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalError",
            format!("{e:#}"),
        ),
    }
}

/// `deployments/NAME/scale`: readable; the token may not change Juju's own operator.
pub(super) async fn deployment_scale(
    State(ctx): State<Ctx>,
    method: Method,
    headers: HeaderMap,
    UrlPath((ns, name)): UrlPath<(String, String)>,
) -> Response {
    let model = match guard(&ctx, &headers).await {
        Ok(m) => m,
        Err(r) => return r,
    };
    if method != Method::GET {
        let verb = if method == Method::PUT {
            "update"
        } else {
            "patch"
        };
        let r = ("deployments/scale", "apps");
        return refused(&ns, verb, r, Some(&name));
    }
    if let Some(r) = check_ns(
        &model,
        &ns,
        "get",
        ("deployments/scale", "apps"),
        Some(&name),
    ) {
        return r;
    }
    if name != "modeloperator" {
        return not_found("deployments.apps", &name);
    }
    let d = modeloperator(&model);
    Json(scale_json(
        &d,
        1,
        "operator.juju.is/name=modeloperator,operator.juju.is/target=model",
    ))
    .into_response()
}

/// Events: the simulator keeps none, and says so in the list's shape (`kubectl describe` asks).
pub(super) async fn events(
    State(ctx): State<Ctx>,
    headers: HeaderMap,
    ns: Option<UrlPath<String>>,
) -> Response {
    let model = match guard(&ctx, &headers).await {
        Ok(m) => m,
        Err(r) => return r,
    };
    if let Some(UrlPath(ns)) = &ns {
        if let Some(r) = check_ns(&model, ns, "list", ("events", ""), None) {
            return r;
        }
    }
    list("EventList", "v1", model.k8s.resource_version, vec![])
}

/// A container's log: what Pebble prints as the container starts its services, since the
/// pod was created. `tailLines` keeps the last lines.
pub(super) async fn logs(
    State(ctx): State<Ctx>,
    headers: HeaderMap,
    UrlPath((ns, name)): UrlPath<(String, String)>,
    RawQuery(q): RawQuery,
) -> Response {
    let (model, view) = match find_pod(&ctx, &headers, &ns, &name).await {
        Ok(found) => found,
        Err(r) => return r,
    };
    let pairs = query_pairs(&q);
    let container = match pairs.iter().find(|(k, _)| k == "container") {
        Some((_, c)) => c.clone(),
        None if view.containers.len() == 1 => view.containers[0].clone(),
        None => {
            return super::bad_request(format!(
                "a container name must be specified for pod {name}, choose one of: [{}]",
                view.containers.join(" ")
            ))
        }
    };
    if !view.containers.contains(&container) {
        return super::bad_request(format!("container {container} is not valid for pod {name}"));
    }
    let started = view.json["status"]["startTime"]
        .as_str()
        .unwrap_or_default();
    let mut lines = vec![
        format!("{started} Started daemon."),
        format!("{started} POST /v1/layers 1ms 200"),
    ];
    if container == "charm" {
        lines.push(format!(
            "{started} Service \"container-agent\" starting: /charm/bin/containeragent unit --data-dir /var/lib/juju --append-env \"PATH=$PATH:/charm/bin\""
        ));
    } else {
        lines.push(format!("{started} Service \"{container}\" starting"));
    }
    let _ = model;
    if let Some(n) = pairs
        .iter()
        .find(|(k, _)| k == "tailLines")
        .and_then(|(_, v)| v.parse::<usize>().ok())
    {
        let skip = lines.len().saturating_sub(n);
        lines.drain(..skip);
    }
    let mut body = lines.join("\n");
    body.push('\n');
    ([("content-type", "text/plain")], body).into_response()
}
