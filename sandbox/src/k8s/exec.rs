//! Exec and port-forward: real commands run against the pod's files in a private mount
//! namespace, and connections to the host port that stands in for the pod's port, both over
//! the Kubernetes stream protocols, with the stream faults a test injects.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use anyhow::{Context, Result};
use axum::body::Bytes;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path as UrlPath, RawQuery, State};
use axum::http::HeaderMap;
use axum::response::Response;
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

use super::pods::{find_pod, pod_dir};
use super::{bad_request, query_pairs, Ctx};
use crate::model::{Model, ModelStore};

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

pub(super) async fn exec(
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

fn normal_close() -> Message {
    Message::Close(Some(axum::extract::ws::CloseFrame {
        code: axum::extract::ws::close_code::NORMAL,
        reason: "".into(),
    }))
}

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
    let out_task = tokio::spawn(pump_output(
        Box::new(out),
        STDOUT,
        stdout,
        tx.clone(),
        faults.clone(),
    ));
    let err_task = tokio::spawn(pump_output(
        Box::new(err),
        STDERR,
        stderr,
        tx.clone(),
        faults,
    ));
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
    let st = exit_status(code, &command);
    sink.send(frame(ERROR, st.to_string().as_bytes())).await?;
    // A normal closure (1000): client-go's WebSocket reader reports any other close, even
    // one without a code, as an error on the stream it was reading.
    let _ = sink.send(normal_close()).await;
    reader.abort();
    Ok(())
}

/// Copies one output pipe of the process to channel `ch` of the stream (or drops it when the
/// client did not ask for it), with the injected cut and pause; `false` when the stream was
/// cut or the client went away.
async fn pump_output(
    mut r: Box<dyn tokio::io::AsyncRead + Unpin + Send>,
    ch: u8,
    forward: bool,
    tx: mpsc::Sender<Message>,
    faults: StreamFaults,
) -> std::io::Result<bool> {
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
            return Ok(true);
        }
        if let (Some(limit), STDOUT) = (faults.cut, ch) {
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
}

/// The exec stream's closing status, as the API server reports a command's exit.
fn exit_status(code: i32, command: &[String]) -> Value {
    if code == 0 {
        json!({"metadata": {}, "status": "Success"})
    } else {
        json!({
            "metadata": {}, "status": "Failure",
            "message": format!("command terminated with non-zero exit code: error executing command [{}], exit code {code}", command.join(" ")),
            "reason": "NonZeroExitCode",
            "details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]},
        })
    }
}

pub(super) async fn portforward(
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
                    let _ = tx.send(normal_close()).await;
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
