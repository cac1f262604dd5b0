//! Pebble, the daemon of a sidecar charm's workload container, through its HTTP API on a unix
//! socket (`/charm/containers/<name>/pebble.socket` in the charm container): push files, add a
//! layer, replan, wait for the change, read the services. The same calls `ops` makes; only
//! what the charm needs.

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use serde_json::{json, Value};

#[derive(Debug, thiserror::Error)]
pub enum PebbleError {
    #[error("Pebble at {socket}: {detail}")]
    Connect { socket: String, detail: String },
    #[error("Pebble {method} {path}: {status} {message}")]
    Api {
        method: String,
        path: String,
        status: u16,
        message: String,
    },
    #[error("Pebble {what}: {detail}")]
    Protocol { what: String, detail: String },
}

#[derive(Debug, Clone)]
pub struct Pebble {
    socket: PathBuf,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Change {
    pub id: String,
    pub status: String,
    pub ready: bool,
    #[serde(default)]
    pub err: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ServiceInfo {
    pub name: String,
    pub startup: String,
    pub current: String,
}

/// One file to push.
pub struct Push<'a> {
    pub path: &'a str,
    pub content: &'a [u8],
    /// Octal, as Pebble takes it: "755", "600".
    pub permissions: &'a str,
}

impl Pebble {
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        Pebble {
            socket: socket.into(),
        }
    }

    /// The socket of `container` under the charm's containers directory.
    pub fn for_container(containers_dir: &Path, container: &str) -> Self {
        Pebble::new(containers_dir.join(container).join("pebble.socket"))
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// One request; the envelope's `result` (or `change` id for async ones).
    async fn call(
        &self,
        method: Method,
        path: &str,
        content_type: &str,
        body: Vec<u8>,
    ) -> Result<Value, PebbleError> {
        let socket = self.socket.display().to_string();
        let connect = |detail: String| PebbleError::Connect {
            socket: socket.clone(),
            detail,
        };
        let stream = tokio::net::UnixStream::connect(&self.socket)
            .await
            .map_err(|e| connect(e.to_string()))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| connect(e.to_string()))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let req = Request::builder()
            .method(method.clone())
            .uri(path)
            .header("host", "localhost")
            .header("content-type", content_type)
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| connect(e.to_string()))?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| connect(e.to_string()))?;
        let status = resp.status().as_u16();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| connect(e.to_string()))?
            .to_bytes();
        let v: Value = serde_json::from_slice(&bytes).map_err(|e| PebbleError::Protocol {
            what: format!("{method} {path}"),
            detail: format!("not a JSON envelope ({e})"),
        })?;
        if v["type"] == "error" || status >= 400 {
            return Err(PebbleError::Api {
                method: method.to_string(),
                path: path.into(),
                status,
                message: v["result"]["message"]
                    .as_str()
                    .unwrap_or("(no message)")
                    .to_string(),
            });
        }
        if v["type"] == "async" {
            return Ok(v["change"].clone());
        }
        Ok(v["result"].clone())
    }

    pub async fn system_info(&self) -> Result<Value, PebbleError> {
        self.call(Method::GET, "/v1/system-info", "application/json", vec![])
            .await
    }

    /// Writes files (parents made), with their permissions. Pebble answers per file.
    pub async fn push(&self, files: &[Push<'_>]) -> Result<(), PebbleError> {
        // Random, and long as Pebble wants (32+), so no file's bytes can hold it.
        let boundary = format!(
            "backup-agent-{:016x}{:016x}",
            rand::random::<u64>(),
            rand::random::<u64>()
        );
        let meta = json!({
            "action": "write",
            "files": files.iter().map(|f| json!({
                "path": f.path,
                "make-dirs": true,
                "permissions": f.permissions,
            })).collect::<Vec<_>>(),
        });
        let mut body = format!(
            "--{boundary}\r\nContent-Type: application/json\r\nContent-Disposition: form-data; name=\"request\"\r\n\r\n{meta}\r\n"
        )
        .into_bytes();
        for f in files {
            body.extend_from_slice(
                format!(
                    "--{boundary}\r\nContent-Type: application/octet-stream\r\nContent-Disposition: form-data; name=\"files\"; filename=\"{}\"\r\n\r\n",
                    f.path
                )
                .as_bytes(),
            );
            body.extend_from_slice(f.content);
            body.extend_from_slice(b"\r\n");
        }
        body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
        let result = self
            .call(
                Method::POST,
                "/v1/files",
                &format!("multipart/form-data; boundary={boundary}"),
                body,
            )
            .await?;
        for r in result.as_array().into_iter().flatten() {
            if let Some(e) = r.get("error").filter(|e| !e.is_null()) {
                return Err(PebbleError::Api {
                    method: "POST".into(),
                    path: format!("/v1/files ({})", r["path"].as_str().unwrap_or("?")),
                    status: 200,
                    message: e["message"].as_str().unwrap_or("(no message)").into(),
                });
            }
        }
        Ok(())
    }

    /// Adds (or, with `combine`, merges into) the layer `label`.
    pub async fn add_layer(&self, label: &str, yaml: &str) -> Result<(), PebbleError> {
        let body = json!({
            "action": "add",
            "combine": true,
            "label": label,
            "format": "yaml",
            "layer": yaml,
        });
        self.call(
            Method::POST,
            "/v1/layers",
            "application/json",
            body.to_string().into_bytes(),
        )
        .await
        .map(|_| ())
    }

    /// Starts what the plan enables and restarts what changed; the change when it is ready.
    pub async fn replan(&self, timeout: Duration) -> Result<Change, PebbleError> {
        let body = json!({"action": "replan", "services": []});
        let id = self
            .call(
                Method::POST,
                "/v1/services",
                "application/json",
                body.to_string().into_bytes(),
            )
            .await?;
        let id = id.as_str().ok_or_else(|| PebbleError::Protocol {
            what: "replan".into(),
            detail: "no change id".into(),
        })?;
        let v = self
            .call(
                Method::GET,
                &format!(
                    "/v1/changes/{id}/wait?timeout={}s",
                    timeout.as_secs().max(1)
                ),
                "application/json",
                vec![],
            )
            .await?;
        serde_json::from_value(v).map_err(|e| PebbleError::Protocol {
            what: format!("change {id}"),
            detail: e.to_string(),
        })
    }

    pub async fn services(&self, names: &[&str]) -> Result<Vec<ServiceInfo>, PebbleError> {
        let v = self
            .call(
                Method::GET,
                &format!("/v1/services?names={}", names.join(",")),
                "application/json",
                vec![],
            )
            .await?;
        serde_json::from_value(v).map_err(|e| PebbleError::Protocol {
            what: "services".into(),
            detail: e.to_string(),
        })
    }
}
