//! A Kubernetes API server simulator on loopback that the real `kube` client talks to.
//!
//! Pods are the Juju units' pods (`<app>-<ordinal>`, StatefulSet style, so a deleted pod comes
//! back with a new uid); exec runs real commands against the pod's files; port-forward reaches
//! the host port that stands in for the pod's port; Argo Workflows and Katib Experiments are
//! listed from the model. Every request needs the bearer token of the kubeconfig.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use anyhow::{Context, Result};
use axum::body::Bytes;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path as UrlPath, RawQuery, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use chrono::{TimeZone, Utc};
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

use crate::model::{now_ms, App, Model, ModelStore};

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

fn list(kind: &str, api_version: &str, rv: u64, items: Vec<Value>) -> Response {
    Json(json!({"apiVersion": api_version, "kind": kind, "metadata": {"resourceVersion": rv.to_string()}, "items": items})).into_response()
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

fn check_ns(model: &Model, ns: &str) -> Option<Response> {
    (ns != model.namespace()).then(|| not_found("namespaces", ns))
}

/// The authenticated request's model and the pod it names, or the API's error response.
async fn find_pod(
    ctx: &Ctx,
    headers: &HeaderMap,
    ns: &str,
    name: &str,
) -> Result<(Model, PodView), Response> {
    let model = guard(ctx, headers).await?;
    if let Some(r) = check_ns(&model, ns) {
        return Err(r);
    }
    match pods(&model, now_ms()).into_iter().find(|p| p.name == name) {
        Some(view) => Ok((model, view)),
        None => Err(not_found("pods", name)),
    }
}

async fn list_pods(
    State(ctx): State<Ctx>,
    headers: HeaderMap,
    ns: Option<UrlPath<String>>,
    RawQuery(q): RawQuery,
) -> Response {
    let model = match guard(&ctx, &headers).await {
        Ok(m) => m,
        Err(r) => return r,
    };
    if let Some(UrlPath(ns)) = &ns {
        if ns != model.namespace() {
            return list("PodList", "v1", model.k8s.resource_version, vec![]);
        }
    }
    let selector = query_pairs(&q)
        .into_iter()
        .find(|(k, _)| k == "labelSelector")
        .map(|(_, v)| v);
    let items = pods(&model, now_ms())
        .into_iter()
        .map(|p| p.json)
        .filter(|p| selector.as_deref().is_none_or(|s| matches_selector(p, s)))
        .collect();
    list("PodList", "v1", model.k8s.resource_version, items)
}

async fn pod(
    State(ctx): State<Ctx>,
    method: Method,
    headers: HeaderMap,
    UrlPath((ns, name)): UrlPath<(String, String)>,
) -> Response {
    let model = match guard(&ctx, &headers).await {
        Ok(m) => m,
        Err(r) => return r,
    };
    if let Some(r) = check_ns(&model, &ns) {
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
    Json(view.json).into_response()
}

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

async fn services(
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

async fn service(
    State(ctx): State<Ctx>,
    headers: HeaderMap,
    UrlPath((ns, name)): UrlPath<(String, String)>,
) -> Response {
    let model = match guard(&ctx, &headers).await {
        Ok(m) => m,
        Err(r) => return r,
    };
    if let Some(r) = check_ns(&model, &ns) {
        return r;
    }
    match model.apps.get(&name).filter(|a| !a.ports.is_empty()) {
        Some(a) => Json(service_json(&model, &name, a)).into_response(),
        None => not_found("services", &name),
    }
}

async fn custom(
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

pub fn pod_dir(model: &Model, pod: &str) -> PathBuf {
    model.data_dir.join("pods").join(pod)
}

/// Builds the container's view in a private mount namespace: a tmpfs root with the host's
/// system directories bound read-only-in-spirit, and the pod's own `/data` and `/tmp`.
const CONTAINER_SCRIPT: &str = r#"set -e
p=$1; shift
r=$p/.rootfs
mkdir -p "$r" "$p/data" "$p/tmp"
mount -t tmpfs rootfs "$r"
for d in usr etc dev proc sys; do
  if [ -d "/$d" ]; then mkdir -p "$r/$d"; mount --rbind "/$d" "$r/$d" 2>/dev/null || true; fi
done
for l in bin sbin lib lib32 lib64 libx32; do
  if [ -L "/$l" ]; then ln -s "$(readlink "/$l")" "$r/$l"
  elif [ -d "/$l" ]; then mkdir -p "$r/$l"; mount --rbind "/$l" "$r/$l"; fi
done
for d in data tmp; do mkdir -p "$r/$d"; mount --bind "$p/$d" "$r/$d"; done
exec chroot "$r" "$@"
"#;

pub fn container_command(pod_dir: &Path, command: &[String]) -> tokio::process::Command {
    let mut c = tokio::process::Command::new("unshare");
    // Root makes the mount namespace directly; anyone else through a user namespace.
    if unsafe { libc::geteuid() } != 0 {
        c.arg("-r");
    }
    c.args([
        "-m",
        "--propagation",
        "private",
        "sh",
        "-c",
        CONTAINER_SCRIPT,
        "sh",
    ])
    .arg(pod_dir)
    .args(command)
    .env_clear()
    .env(
        "PATH",
        "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    )
    .env("HOME", "/root");
    c
}

async fn exec(
    State(ctx): State<Ctx>,
    headers: HeaderMap,
    UrlPath((ns, name)): UrlPath<(String, String)>,
    RawQuery(q): RawQuery,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let (model, view) = match find_pod(&ctx, &headers, &ns, &name).await {
        Ok(found) => found,
        Err(r) => return r,
    };
    let pairs = query_pairs(&q);
    let command: Vec<String> = pairs
        .iter()
        .filter(|(k, _)| k == "command")
        .map(|(_, v)| v.clone())
        .collect();
    let flag = |k: &str| {
        pairs
            .iter()
            .any(|(key, v)| key == k && (v == "true" || v == "1"))
    };
    let container = match pairs.iter().find(|(k, _)| k == "container") {
        Some((_, c)) => c.clone(),
        None if view.containers.len() == 1 => view.containers[0].clone(),
        None => {
            return bad_request(format!(
                "a container name must be specified for pod {name}, choose one of: [{}]",
                view.containers.join(" ")
            ))
        }
    };
    if !view.containers.contains(&container) {
        return bad_request(format!("container {container} is not valid for pod {name}"));
    }
    if view.terminating || !view.ready {
        return bad_request(format!(
            "unable to upgrade connection: container not found (\"{container}\")"
        ));
    }
    if command.is_empty() {
        return bad_request("you must specify at least 1 command");
    }
    let ws = match ws {
        Ok(ws) => ws,
        Err(_) => return bad_request("Upgrade request required"),
    };
    let dir = pod_dir(&model, &name);
    let faults = StreamFaults {
        cut: model.faults.exec_cut_after_bytes,
        pause: model.faults.exec_pause_after_bytes,
        store: ctx.store.clone(),
    };
    let (stdin, stdout, stderr) = (flag("stdin"), flag("stdout"), flag("stderr"));
    ws.protocols(stream_protocols(&model))
        .max_message_size(64 << 20)
        .on_upgrade(move |socket| async move {
            if let Err(e) = run_exec(socket, dir, command, stdin, stdout, stderr, faults).await {
                tracing::warn!("exec in {name}: {e:#}");
            }
        })
}

/// The WebSocket stream protocols offered, newest first (the client picks from its own list).
fn stream_protocols(model: &Model) -> Vec<&'static str> {
    if model.faults.k8s_v4_only {
        vec!["v4.channel.k8s.io"]
    } else {
        vec!["v5.channel.k8s.io", "v4.channel.k8s.io"]
    }
}

const STDIN: u8 = 0;
const STDOUT: u8 = 1;
const STDERR: u8 = 2;
const ERROR: u8 = 3;
const CLOSE: u8 = 255;

fn frame(channel: u8, data: &[u8]) -> Message {
    let mut v = Vec::with_capacity(data.len() + 1);
    v.push(channel);
    v.extend_from_slice(data);
    Message::Binary(Bytes::from(v))
}

/// What an exec stream's stdout suffers: a cut, or a pause a test ends.
#[derive(Clone)]
struct StreamFaults {
    cut: Option<u64>,
    pause: Option<u64>,
    store: ModelStore,
}

impl StreamFaults {
    /// Whether the cut still applies, now that this stream reached it: a one-shot cut is taken
    /// here, under the lock, so only one stream gets it (and a short exec never uses it up).
    fn take_cut(&self) -> bool {
        self.store
            .update(|m| {
                let f = &mut m.faults;
                if f.exec_cut_after_bytes.is_none() {
                    return Ok(false);
                }
                if f.exec_cut_once {
                    f.exec_cut_after_bytes = None;
                    f.exec_cut_once = false;
                }
                Ok(true)
            })
            .unwrap_or(true)
    }

    /// Takes the pause if no other stream has, says so, then waits until a test clears
    /// `exec_paused`.
    async fn paused(&self) {
        let taken = self.store.update(|m| {
            let f = &mut m.faults;
            if f.exec_pause_after_bytes.take().is_none() {
                return Ok(false);
            }
            f.exec_paused = true;
            Ok(true)
        });
        if !matches!(taken, Ok(true)) {
            return;
        }
        loop {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            match self.store.read() {
                Ok(m) if m.faults.exec_paused => continue,
                _ => return,
            }
        }
    }
}

async fn run_exec(
    socket: WebSocket,
    dir: PathBuf,
    command: Vec<String>,
    stdin: bool,
    stdout: bool,
    stderr: bool,
    faults: StreamFaults,
) -> Result<()> {
    let cut = faults.cut;
    let (mut sink, mut stream) = socket.split();
    let mut cmd = container_command(&dir, &command);
    cmd.stdin(if stdin { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd.spawn().context("starting the container process")?;
    let mut child_stdin = child.stdin.take();
    let out = child.stdout.take().expect("piped stdout");
    let err = child.stderr.take().expect("piped stderr");

    let (tx, mut rx) = mpsc::channel::<Message>(8);
    let pump = |mut r: Box<dyn tokio::io::AsyncRead + Unpin + Send>,
                ch: u8,
                forward: bool,
                tx: mpsc::Sender<Message>,
                faults: StreamFaults| async move {
        let mut buf = vec![0u8; 64 * 1024];
        let mut sent = 0u64;
        let mut pause = faults.pause.filter(|_| ch == STDOUT);
        loop {
            if pause.is_some_and(|at| sent >= at) {
                pause = None;
                faults.paused().await;
            }
            let want = match pause {
                Some(at) => ((at - sent) as usize).clamp(1, buf.len()),
                None => buf.len(),
            };
            let n = r.read(&mut buf[..want]).await?;
            if n == 0 {
                return Ok::<bool, std::io::Error>(true);
            }
            if let (Some(limit), STDOUT) = (cut, ch) {
                if sent + n as u64 > limit && faults.take_cut() {
                    let keep = (limit - sent) as usize;
                    if keep > 0 {
                        let _ = tx.send(frame(ch, &buf[..keep])).await;
                    }
                    return Ok(false);
                }
            }
            sent += n as u64;
            if forward && tx.send(frame(ch, &buf[..n])).await.is_err() {
                return Ok(false);
            }
        }
    };
    let out_task = tokio::spawn(pump(
        Box::new(out),
        STDOUT,
        stdout,
        tx.clone(),
        faults.clone(),
    ));
    let err_task = tokio::spawn(pump(Box::new(err), STDERR, stderr, tx.clone(), faults));
    drop(tx);

    let writer = tokio::spawn(async move {
        while let Some(m) = rx.recv().await {
            sink.send(m).await?;
        }
        Ok::<_, axum::Error>(sink)
    });

    let reader = tokio::spawn(async move {
        while let Some(msg) = stream.next().await {
            match msg {
                Ok(Message::Binary(b)) if !b.is_empty() => match b[0] {
                    STDIN => {
                        if let Some(si) = child_stdin.as_mut() {
                            if si.write_all(&b[1..]).await.is_err() {
                                child_stdin = None;
                            }
                        }
                    }
                    CLOSE if b.get(1) == Some(&STDIN) => child_stdin = None,
                    _ => {}
                },
                Ok(Message::Close(_)) | Err(_) => break,
                _ => {}
            }
        }
        drop(child_stdin);
    });

    let out_complete = out_task.await??;
    if !out_complete {
        // Nobody reads the pipe any more: stop the process so stderr closes too.
        let _ = child.start_kill();
    }
    let err_complete = err_task.await??;
    let mut sink = writer.await??;
    if !(out_complete && err_complete) {
        // The stream was cut (injected): the output ends early and no exit status follows.
        let _ = child.kill().await;
        let _ = sink.send(Message::Close(None)).await;
        reader.abort();
        return Ok(());
    }
    let code = child.wait().await?.code().unwrap_or(137);
    let st = if code == 0 {
        json!({"metadata": {}, "status": "Success"})
    } else {
        json!({
            "metadata": {}, "status": "Failure",
            "message": format!("command terminated with non-zero exit code: error executing command [{}], exit code {code}", command.join(" ")),
            "reason": "NonZeroExitCode",
            "details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]},
        })
    };
    sink.send(frame(ERROR, st.to_string().as_bytes())).await?;
    let _ = sink.send(Message::Close(None)).await;
    reader.abort();
    Ok(())
}

async fn portforward(
    State(ctx): State<Ctx>,
    headers: HeaderMap,
    UrlPath((ns, name)): UrlPath<(String, String)>,
    RawQuery(q): RawQuery,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let (model, view) = match find_pod(&ctx, &headers, &ns, &name).await {
        Ok(found) => found,
        Err(r) => return r,
    };
    let mut ports = vec![];
    for (k, v) in query_pairs(&q) {
        if k == "ports" {
            for p in v.split(',') {
                match p.trim().parse::<u16>() {
                    Ok(p) => ports.push(p),
                    Err(_) => return bad_request(format!("invalid port \"{p}\"")),
                }
            }
        }
    }
    if ports.is_empty() {
        return bad_request("at least one port must be specified");
    }
    if !view.ready {
        return bad_request(format!("pod {name} is not running"));
    }
    let Ok(ws) = ws else {
        return bad_request("Upgrade request required");
    };
    let targets: Vec<(u16, Option<u16>)> = ports
        .iter()
        .map(|p| (*p, view.ports.get(p).copied().filter(|h| *h != 0)))
        .collect();
    ws.protocols(stream_protocols(&model))
        .on_upgrade(move |socket| async move {
            if let Err(e) = run_portforward(socket, name.clone(), targets).await {
                tracing::warn!("portforward to {name}: {e:#}");
            }
        })
}

async fn run_portforward(
    socket: WebSocket,
    pod: String,
    targets: Vec<(u16, Option<u16>)>,
) -> Result<()> {
    let (mut sink, mut stream) = socket.split();
    let (tx, mut rx) = mpsc::channel::<Message>(16);
    let mut writers = vec![];
    for (i, (port, host)) in targets.iter().enumerate() {
        let data_ch = (2 * i) as u8;
        let lo_hi = port.to_le_bytes();
        sink.send(frame(data_ch, &lo_hi)).await?;
        sink.send(frame(data_ch + 1, &lo_hi)).await?;
        let conn = match host {
            Some(h) => tokio::net::TcpStream::connect(("127.0.0.1", *h)).await.ok(),
            None => None,
        };
        match conn {
            Some(c) => {
                let (mut r, w) = c.into_split();
                writers.push(Some(w));
                let tx = tx.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 64 * 1024];
                    loop {
                        match r.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => {
                                if tx.send(frame(data_ch, &buf[..n])).await.is_err() {
                                    break;
                                }
                            }
                        }
                    }
                    let _ = tx.send(Message::Close(None)).await;
                });
            }
            None => {
                writers.push(None);
                let msg = format!("error forwarding port {port} to pod {pod}, uid : failed to connect to localhost:{port} inside namespace: connection refused");
                sink.send(frame(data_ch + 1, msg.as_bytes())).await?;
            }
        }
    }
    drop(tx);
    let writer = tokio::spawn(async move {
        while let Some(m) = rx.recv().await {
            let closing = matches!(m, Message::Close(_));
            if sink.send(m).await.is_err() || closing {
                break;
            }
        }
    });
    while let Some(Ok(msg)) = stream.next().await {
        match msg {
            Message::Binary(b) if !b.is_empty() => {
                let idx = (b[0] / 2) as usize;
                if b[0] % 2 == 0 {
                    if let Some(Some(w)) = writers.get_mut(idx) {
                        if w.write_all(&b[1..]).await.is_err() {
                            writers[idx] = None;
                        }
                    }
                }
            }
            Message::Close(_) => break,
            _ => {}
        }
    }
    writer.abort();
    Ok(())
}

async fn version() -> Json<Value> {
    Json(
        json!({"major": "1", "minor": "31", "gitVersion": "v1.31.4-sandbox", "platform": "linux/amd64"}),
    )
}

async fn fallback() -> Response {
    status(
        StatusCode::NOT_FOUND,
        "NotFound",
        "the server could not find the requested resource",
    )
}

pub fn router(store: ModelStore) -> Router {
    let ctx = Ctx { store };
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/version", get(version))
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

/// Serves the API on 127.0.0.1:`port` until the process is stopped.
pub async fn serve(store: ModelStore, port: u16) -> Result<()> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding {addr}"))?;
    axum::serve(listener, router(store)).await?;
    Ok(())
}

/// An Argo Workflow as KFP creates them, in the given phase (`Running`, `Succeeded`, ...).
pub fn workflow(name: &str, namespace: &str, phase: &str) -> Value {
    let now = rfc3339(now_ms());
    json!({
        "apiVersion": "argoproj.io/v1alpha1", "kind": "Workflow",
        "metadata": {
            "name": name, "namespace": namespace, "uid": crate::model::new_uid(), "creationTimestamp": now,
            "labels": {"pipeline/runid": crate::model::new_uid(), "workflows.argoproj.io/phase": phase},
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
        "metadata": {"name": name, "namespace": namespace, "uid": crate::model::new_uid(), "creationTimestamp": now},
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
