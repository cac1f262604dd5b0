//! Server-side printing: `kubectl get` asks for a `meta.k8s.io/v1` Table (`Accept: ...;as=Table`)
//! and prints the server's columns; the cells are formatted here as kube-apiserver's printers
//! format them (`pkg/printers/internalversion/printers.go`). Priority-1 columns show only with
//! `-o wide`.

use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use crate::model::now_ms;

#[derive(Debug, Clone, Copy)]
pub enum Printed {
    Pods,
    StatefulSets,
    Deployments,
}

/// Whether the client asked for a Table.
pub fn wanted(headers: &HeaderMap) -> bool {
    headers
        .get_all("accept")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("as=Table"))
}

/// An age as kubectl prints it (apimachinery's `duration.HumanDuration`).
pub fn human_age(secs: u64) -> String {
    let (m, h, d) = (secs / 60, secs / 3600, secs / 86400);
    if secs < 120 {
        format!("{secs}s")
    } else if m < 10 {
        match secs % 60 {
            0 => format!("{m}m"),
            s => format!("{m}m{s}s"),
        }
    } else if h < 3 {
        format!("{m}m")
    } else if h < 8 {
        match m % 60 {
            0 => format!("{h}h"),
            mm => format!("{h}h{mm}m"),
        }
    } else if h < 48 {
        format!("{h}h")
    } else if d < 8 {
        match h % 24 {
            0 => format!("{d}d"),
            hh => format!("{d}d{hh}h"),
        }
    } else if d < 365 * 2 {
        format!("{d}d")
    } else {
        format!("{}y", d / 365)
    }
}

fn age_of(obj: &Value) -> String {
    let created = obj["metadata"]["creationTimestamp"]
        .as_str()
        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
        .map(|t| t.timestamp_millis().max(0) as u64)
        .unwrap_or_else(now_ms);
    human_age(now_ms().saturating_sub(created) / 1000)
}

fn col(name: &str, format: &str, priority: u8, description: &str) -> Value {
    json!({"name": name, "type": "string", "format": format, "description": description, "priority": priority})
}

fn names(list: &Value, key: &str) -> String {
    list.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|c| c[key].as_str())
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default()
}

fn pod_row(p: &Value) -> Vec<Value> {
    let statuses = p["status"]["containerStatuses"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let ready = statuses.iter().filter(|c| c["ready"] == true).count();
    let restarts: u64 = statuses
        .iter()
        .filter_map(|c| c["restartCount"].as_u64())
        .sum();
    let phase = if p["metadata"]["deletionTimestamp"].is_string() {
        "Terminating"
    } else {
        p["status"]["phase"].as_str().unwrap_or("Unknown")
    };
    vec![
        p["metadata"]["name"].clone(),
        json!(format!("{ready}/{}", statuses.len())),
        json!(phase),
        json!(restarts.to_string()),
        json!(age_of(p)),
        p["status"]["podIP"].clone(),
        p["spec"]["nodeName"].clone(),
        json!("<none>"),
        json!("<none>"),
    ]
}

fn workload_row(o: &Value, deployment: bool) -> Vec<Value> {
    let spec = o["spec"]["replicas"].as_u64().unwrap_or(0);
    let ready = o["status"]["readyReplicas"].as_u64().unwrap_or(0);
    let containers = &o["spec"]["template"]["spec"]["containers"];
    let mut row = vec![
        o["metadata"]["name"].clone(),
        json!(format!("{ready}/{spec}")),
    ];
    if deployment {
        row.push(json!(o["status"]["updatedReplicas"].as_u64().unwrap_or(0)));
        row.push(json!(o["status"]["availableReplicas"]
            .as_u64()
            .unwrap_or(0)));
    }
    row.push(json!(age_of(o)));
    row.push(json!(names(containers, "name")));
    row.push(json!(names(containers, "image")));
    if deployment {
        let sel = o["spec"]["selector"]["matchLabels"]
            .as_object()
            .map(|m| {
                m.iter()
                    .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .unwrap_or_default();
        row.push(json!(sel));
    }
    row
}

/// The Table of `items` with the columns kube-apiserver prints for their kind.
pub fn render(kind: Printed, items: &[Value], resource_version: u64) -> Response {
    let name = col("Name", "name", 0, "Name must be unique within a namespace.");
    let columns = match kind {
        Printed::Pods => vec![
            name,
            col("Ready", "", 0, "The aggregate readiness state of this pod for accepting traffic."),
            col("Status", "", 0, "The aggregate status of the containers in this pod."),
            col("Restarts", "", 0, "The number of times the containers in this pod have been restarted and when the last container in this pod has restarted."),
            col("Age", "", 0, "CreationTimestamp is a timestamp representing the server time when this object was created."),
            col("IP", "", 1, "IP address allocated to the pod."),
            col("Node", "", 1, "Name of the Node this pod is scheduled to."),
            col("Nominated Node", "", 1, "Name of the Node the scheduler nominated for this pod."),
            col("Readiness Gates", "", 1, "The readiness gates of this pod."),
        ],
        Printed::StatefulSets => vec![
            name,
            col("Ready", "", 0, "Number of the pod with ready state"),
            col("Age", "", 0, "CreationTimestamp is a timestamp representing the server time when this object was created."),
            col("Containers", "", 1, "Names of each container in the template."),
            col("Images", "", 1, "Images referenced by each container in the template."),
        ],
        Printed::Deployments => vec![
            name,
            col("Ready", "", 0, "Number of the pod with ready state"),
            col("Up-to-date", "", 0, "Total number of non-terminated pods targeted by this deployment that have the desired template spec."),
            col("Available", "", 0, "Total number of available pods (ready for at least minReadySeconds) targeted by this deployment."),
            col("Age", "", 0, "CreationTimestamp is a timestamp representing the server time when this object was created."),
            col("Containers", "", 1, "Names of each container in the template."),
            col("Images", "", 1, "Images referenced by each container in the template."),
            col("Selector", "", 1, "Label selector for pods. Existing ReplicaSets whose pods are selected by this will be the ones affected by this deployment."),
        ],
    };
    let rows: Vec<Value> = items
        .iter()
        .map(|o| {
            let cells = match kind {
                Printed::Pods => pod_row(o),
                Printed::StatefulSets => workload_row(o, false),
                Printed::Deployments => workload_row(o, true),
            };
            // kubectl reads the namespace (`-A`) and labels (`--show-labels`) from here.
            json!({
                "cells": cells,
                "object": {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": o["metadata"]},
            })
        })
        .collect();
    Json(json!({
        "kind": "Table", "apiVersion": "meta.k8s.io/v1",
        "metadata": {"resourceVersion": resource_version.to_string()},
        "columnDefinitions": columns, "rows": rows,
    }))
    .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_read_like_kubectl() {
        for (s, want) in [
            (5, "5s"),
            (119, "119s"),
            (125, "2m5s"),
            (600, "10m"),
            (3 * 3600 + 120, "3h2m"),
            (9 * 3600, "9h"),
            (3 * 86400 + 3600, "3d1h"),
            (20 * 86400, "20d"),
        ] {
            assert_eq!(human_age(s), want, "{s}");
        }
    }
}
