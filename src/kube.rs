//! Kubernetes, through the `kube` client: streaming a file out of a pod, finding running Argo
//! Workflows and Katib Experiments, and port-forwarding to a service when the agent runs
//! outside the cluster.

use k8s_openapi::api::core::v1::{Pod, Service};
use kube::api::{Api, AttachParams, DynamicObject, ListParams};
use kube::core::{ApiResource, GroupVersionKind};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};

#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    #[error("no Kubernetes access: {0}. Set KUBECONFIG (the sandbox writes one) or run inside the cluster")]
    Config(String),
    #[error("{what}: {source}")]
    Api {
        what: String,
        #[source]
        source: kube::Error,
    },
    #[error(
        "pod {pod} in namespace {namespace} not found: is the application deployed and scaled up?"
    )]
    NoPod { pod: String, namespace: String },
    #[error("pod {pod} has no container {wanted:?} (it has {found:?}); pass the right one with --mlmd-container")]
    NoContainer {
        pod: String,
        wanted: String,
        found: Vec<String>,
    },
    #[error("`{command}` in {pod}/{container} failed: {message}")]
    Command {
        pod: String,
        container: String,
        command: String,
        message: String,
    },
    #[error("the stream of {path} from {pod} was cut after {got} of {expected} bytes")]
    StreamCut {
        pod: String,
        path: String,
        got: u64,
        expected: u64,
    },
    #[error("{path} in {pod} changed while it was copied ({before} -> {after}): is something still writing to it?")]
    Changed {
        pod: String,
        path: String,
        before: String,
        after: String,
    },
    #[error("pod {pod} did not come back Ready within {waited} after its restart: check `kubectl -n {namespace} describe pod {pod}`")]
    NotBack {
        pod: String,
        namespace: String,
        waited: String,
    },
    #[error("service {service} has no ready pod to forward to")]
    NoEndpoint { service: String },
    #[error("writing the local copy: {0}")]
    Local(std::io::Error),
}

impl KubeError {
    /// A dropped stream, a changing file or an unavailable API server may work on a retry.
    pub fn is_retryable(&self) -> bool {
        crate::retry::Retryable::is_retryable(self)
    }
}

impl crate::retry::Retryable for KubeError {
    fn is_retryable(&self) -> bool {
        match self {
            KubeError::StreamCut { .. } | KubeError::Changed { .. } => true,
            KubeError::Api { source, .. } => match source {
                kube::Error::Api(s) => s.code >= 500 || s.code == 429,
                _ => true,
            },
            _ => false,
        }
    }
}

/// The cluster, namespaced to the Juju model.
#[derive(Clone)]
pub struct Cluster {
    client: kube::Client,
    namespace: String,
}

impl Cluster {
    /// From KUBECONFIG (or the default kubeconfig, or the in-cluster service account). The
    /// client's own retries are off: kube retries 503s for many minutes, and the agent bounds
    /// its waits itself.
    pub async fn connect(namespace: &str) -> Result<Cluster, KubeError> {
        let config = kube::Config::infer()
            .await
            .map_err(|e| KubeError::Config(e.to_string()))?;
        Self::with_config(config, namespace)
    }

    /// From a given kubeconfig file, its current context.
    pub async fn from_kubeconfig(
        path: &std::path::Path,
        namespace: &str,
    ) -> Result<Cluster, KubeError> {
        let kc = kube::config::Kubeconfig::read_from(path)
            .map_err(|e| KubeError::Config(format!("{}: {e}", path.display())))?;
        let config = kube::Config::from_custom_kubeconfig(kc, &Default::default())
            .await
            .map_err(|e| KubeError::Config(format!("{}: {e}", path.display())))?;
        Self::with_config(config, namespace)
    }

    fn with_config(mut config: kube::Config, namespace: &str) -> Result<Cluster, KubeError> {
        config.default_retry = false;
        let client =
            kube::Client::try_from(config).map_err(|e| KubeError::Config(e.to_string()))?;
        Ok(Cluster {
            client,
            namespace: namespace.to_string(),
        })
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    fn pods(&self) -> Api<Pod> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    /// The pod's container names; a missing pod is a clear error.
    pub async fn containers(&self, pod: &str) -> Result<Vec<String>, KubeError> {
        let p = self
            .pods()
            .get_opt(pod)
            .await
            .map_err(|source| KubeError::Api {
                what: format!("reading pod {pod}"),
                source,
            })?;
        let p = p.ok_or_else(|| KubeError::NoPod {
            pod: pod.into(),
            namespace: self.namespace.clone(),
        })?;
        Ok(p.spec
            .map(|s| s.containers.into_iter().map(|c| c.name).collect())
            .unwrap_or_default())
    }

    /// The first of `candidates` the pod has (CKF 1.9's `mlmd-grpc-server`, 1.8's `mlmd`).
    pub async fn pick_container(
        &self,
        pod: &str,
        candidates: &[&str],
    ) -> Result<String, KubeError> {
        let found = self.containers(pod).await?;
        candidates
            .iter()
            .find(|c| found.iter().any(|f| f == *c))
            .map(|c| c.to_string())
            .ok_or_else(|| KubeError::NoContainer {
                pod: pod.into(),
                wanted: candidates.join(" or "),
                found,
            })
    }

    /// Runs a command in the pod and returns its stdout; a non-zero exit is an error with the
    /// command's own message.
    pub async fn run(
        &self,
        pod: &str,
        container: &str,
        command: &[&str],
    ) -> Result<Vec<u8>, KubeError> {
        let mut out = vec![];
        self.exec_into(pod, container, command, &mut out).await?;
        Ok(out)
    }

    /// Starts `command` in the container: stderr always, and stdin or stdout.
    async fn start(
        &self,
        pod: &str,
        container: &str,
        command: &[&str],
        stdin: bool,
    ) -> Result<kube::api::AttachedProcess, KubeError> {
        let ap = AttachParams::default()
            .container(container)
            .stdin(stdin)
            .stdout(!stdin)
            .stderr(true);
        self.pods()
            .exec(pod, command.to_vec(), &ap)
            .await
            .map_err(|source| KubeError::Api {
                what: format!("exec `{}` in {pod}/{container}", command.join(" ")),
                source,
            })
    }

    /// Runs a command, streaming its stdout into `sink`. Ends with an error when the exit
    /// status is not Success or never arrives (a cut stream).
    async fn exec_into<W: AsyncWrite + Unpin>(
        &self,
        pod: &str,
        container: &str,
        command: &[&str],
        sink: &mut W,
    ) -> Result<u64, KubeError> {
        let joined = command.join(" ");
        let fail = |message: String| KubeError::Command {
            pod: pod.into(),
            container: container.into(),
            command: joined.clone(),
            message,
        };
        let mut proc = self.start(pod, container, command, false).await?;
        let mut stdout = proc.stdout().expect("stdout requested");
        let mut stderr = proc.stderr().expect("stderr requested");
        let status = proc.take_status().expect("status requested");
        let err_task = tokio::spawn(async move {
            let mut e = vec![];
            let _ = stderr.read_to_end(&mut e).await;
            e
        });
        // kube does not end stdout when the connection drops without a close frame, so read
        // until the process's message loop is over, whichever way it ended.
        let mut buf = vec![0u8; 256 * 1024];
        let mut n_total = 0u64;
        let join = proc.join();
        tokio::pin!(join);
        let ended = loop {
            tokio::select! {
                biased;
                n = stdout.read(&mut buf) => match n.map_err(KubeError::Local)? {
                    0 => break (&mut join).await,
                    n => {
                        sink.write_all(&buf[..n]).await.map_err(KubeError::Local)?;
                        n_total += n as u64;
                    }
                },
                r = &mut join => break r,
            }
        };
        sink.flush().await.map_err(KubeError::Local)?;
        let status = status.await;
        let cut = || KubeError::StreamCut {
            pod: pod.into(),
            path: joined.clone(),
            got: n_total,
            expected: 0,
        };
        if ended.is_err() {
            err_task.abort();
            return Err(cut());
        }
        match status {
            Some(s) if s.status.as_deref() == Some("Success") => {
                err_task.abort();
                Ok(n_total)
            }
            Some(s) => {
                let stderr = err_task.await.unwrap_or_default();
                let stderr = String::from_utf8_lossy(&stderr).trim().to_string();
                let message = s.message.unwrap_or_else(|| "failed".into());
                Err(fail(if stderr.is_empty() {
                    message
                } else {
                    format!("{message}: {stderr}")
                }))
            }
            None => {
                err_task.abort();
                Err(cut())
            }
        }
    }

    /// `stat` of a file in the pod: (size, mtime) as text.
    pub async fn stat(
        &self,
        pod: &str,
        container: &str,
        path: &str,
    ) -> Result<(u64, String), KubeError> {
        let out = self
            .run(pod, container, &["stat", "-c", "%s %Y", path])
            .await?;
        let text = String::from_utf8_lossy(&out).trim().to_string();
        let size = text
            .split(' ')
            .next()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| KubeError::Command {
                pod: pod.into(),
                container: container.into(),
                command: format!("stat {path}"),
                message: format!("unexpected output {text:?}"),
            })?;
        Ok((size, text))
    }

    /// Streams a file out of the pod (no tools needed in the container but `cat` and `stat`),
    /// checking that every byte arrived and that the file did not change meanwhile.
    pub async fn copy_out<W: AsyncWrite + Unpin>(
        &self,
        pod: &str,
        container: &str,
        path: &str,
        sink: &mut W,
    ) -> Result<u64, KubeError> {
        let (size, before) = self.stat(pod, container, path).await?;
        let got = match self.exec_into(pod, container, &["cat", path], sink).await {
            Ok(n) => n,
            Err(KubeError::StreamCut { got, .. }) => {
                return Err(KubeError::StreamCut {
                    pod: pod.into(),
                    path: path.into(),
                    got,
                    expected: size,
                });
            }
            Err(e) => return Err(e),
        };
        if got != size {
            // More than the size read before: the file grew while it streamed.
            if got > size {
                let (_, after) = self.stat(pod, container, path).await?;
                return Err(KubeError::Changed {
                    pod: pod.into(),
                    path: path.into(),
                    before,
                    after,
                });
            }
            return Err(KubeError::StreamCut {
                pod: pod.into(),
                path: path.into(),
                got,
                expected: size,
            });
        }
        let (_, after) = self.stat(pod, container, path).await?;
        if after != before {
            return Err(KubeError::Changed {
                pod: pod.into(),
                path: path.into(),
                before,
                after,
            });
        }
        Ok(got)
    }

    /// Streams `size` bytes from `source` into `path` in the pod. `head -c` bounds the read, so
    /// it ends even where the stream protocol cannot close stdin (v4); the size is checked after.
    pub async fn copy_in<R: tokio::io::AsyncRead + Unpin>(
        &self,
        pod: &str,
        container: &str,
        path: &str,
        source: &mut R,
        size: u64,
    ) -> Result<(), KubeError> {
        let script = format!("head -c {size} > '{}'", path.replace('\'', ""));
        let command = ["sh", "-c", script.as_str()];
        let fail = |message: String| KubeError::Command {
            pod: pod.into(),
            container: container.into(),
            command: script.clone(),
            message,
        };
        let mut proc = self.start(pod, container, &command, true).await?;
        let mut stdin = proc.stdin().expect("stdin requested");
        let mut stderr = proc.stderr().expect("stderr requested");
        let status = proc.take_status().expect("status requested");
        let sent = tokio::io::copy(&mut source.take(size), &mut stdin)
            .await
            .map_err(|e| fail(format!("sending the file: {e}")))?;
        stdin.shutdown().await.ok();
        drop(stdin);
        let mut err = vec![];
        let _ = stderr.read_to_end(&mut err).await;
        let status = status.await;
        let _ = proc.join().await;
        match status {
            Some(s) if s.status.as_deref() == Some("Success") => {}
            Some(s) => {
                return Err(fail(format!(
                    "{}: {}",
                    s.message.unwrap_or_else(|| "failed".into()),
                    String::from_utf8_lossy(&err).trim()
                )))
            }
            None => return Err(fail("the stream ended without an exit status".into())),
        }
        let (got, _) = self.stat(pod, container, path).await?;
        if sent != size || got != size {
            return Err(KubeError::StreamCut {
                pod: pod.into(),
                path: path.into(),
                got,
                expected: size,
            });
        }
        Ok(())
    }

    /// The pod's uid, and whether it is Ready; `None` when there is no such pod.
    pub async fn pod_state(&self, pod: &str) -> Result<Option<(String, bool)>, KubeError> {
        match self.pods().get_opt(pod).await {
            Ok(Some(p)) => {
                let ready = p
                    .status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
                let terminating = p.metadata.deletion_timestamp.is_some();
                Ok(Some((
                    p.metadata.uid.unwrap_or_default(),
                    ready && !terminating,
                )))
            }
            Ok(None) => Ok(None),
            Err(source) => Err(KubeError::Api {
                what: format!("reading pod {pod}"),
                source,
            }),
        }
    }

    /// Restarts a StatefulSet pod: deletes it and waits until a new one (another uid) is Ready.
    pub async fn restart_pod(
        &self,
        pod: &str,
        timeout: std::time::Duration,
    ) -> Result<(), KubeError> {
        let before = self
            .pod_state(pod)
            .await?
            .ok_or_else(|| KubeError::NoPod {
                pod: pod.into(),
                namespace: self.namespace.clone(),
            })?
            .0;
        self.pods()
            .delete(pod, &Default::default())
            .await
            .map_err(|source| KubeError::Api {
                what: format!("deleting pod {pod}"),
                source,
            })?;
        let start = std::time::Instant::now();
        let mut poll = std::time::Duration::from_millis(100);
        loop {
            match self.pod_state(pod).await {
                Ok(Some((uid, true))) if uid != before => return Ok(()),
                Ok(_) => {}
                Err(e) if crate::retry::Retryable::is_retryable(&e) => {}
                Err(e) => return Err(e),
            }
            if start.elapsed() >= timeout {
                return Err(KubeError::NotBack {
                    pod: pod.into(),
                    namespace: self.namespace.clone(),
                    waited: humantime::format_duration(timeout).to_string(),
                });
            }
            tokio::time::sleep(poll).await;
            poll = (poll * 2).min(std::time::Duration::from_secs(3));
        }
    }

    /// Argo Workflows and Katib Experiments that are running, in all namespaces, as
    /// `workflow ns/name (Running)` lines. Absent CRDs count as none.
    pub async fn running_workloads(&self) -> Result<Vec<String>, KubeError> {
        let mut out = vec![];
        let wf = ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk("argoproj.io", "v1alpha1", "Workflow"),
            "workflows",
        );
        for w in self.list_all(&wf).await? {
            let phase = w.data["status"]["phase"].as_str().unwrap_or("Pending");
            if matches!(phase, "Running" | "Pending" | "") {
                out.push(format!(
                    "workflow {}/{} ({phase})",
                    w.metadata.namespace.unwrap_or_default(),
                    w.metadata.name.unwrap_or_default()
                ));
            }
        }
        let ex = ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk("kubeflow.org", "v1beta1", "Experiment"),
            "experiments",
        );
        for e in self.list_all(&ex).await? {
            if experiment_running(&e.data) {
                out.push(format!(
                    "experiment {}/{} (Running)",
                    e.metadata.namespace.unwrap_or_default(),
                    e.metadata.name.unwrap_or_default()
                ));
            }
        }
        Ok(out)
    }

    async fn list_all(&self, res: &ApiResource) -> Result<Vec<DynamicObject>, KubeError> {
        let api: Api<DynamicObject> = Api::all_with(self.client.clone(), res);
        match api.list(&ListParams::default()).await {
            Ok(l) => Ok(l.items),
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(vec![]),
            Err(source) => Err(KubeError::Api {
                what: format!("listing {}", res.plural),
                source,
            }),
        }
    }

    /// Forwards 127.0.0.1:<free port> to `service`'s `port` through the API server, for as long
    /// as the returned guard lives. Each local connection gets its own stream.
    pub async fn forward_service(&self, service: &str, port: u16) -> Result<Forward, KubeError> {
        let svcs: Api<Service> = Api::namespaced(self.client.clone(), &self.namespace);
        let svc = svcs.get(service).await.map_err(|source| KubeError::Api {
            what: format!("reading service {service}"),
            source,
        })?;
        let selector = svc
            .spec
            .and_then(|s| s.selector)
            .map(|m| {
                m.into_iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .unwrap_or_default();
        let pods = self
            .pods()
            .list(&ListParams::default().labels(&selector))
            .await
            .map_err(|source| KubeError::Api {
                what: format!("pods of service {service}"),
                source,
            })?;
        let pod = pods
            .items
            .into_iter()
            .find(|p| {
                p.status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
            })
            .and_then(|p| p.metadata.name)
            .ok_or_else(|| KubeError::NoEndpoint {
                service: service.into(),
            })?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(KubeError::Local)?;
        let local = listener.local_addr().map_err(KubeError::Local)?.port();
        let api = self.pods();
        let task = tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                let api = api.clone();
                let pod = pod.clone();
                tokio::spawn(async move {
                    match api.portforward(&pod, &[port]).await {
                        Ok(mut pf) => {
                            if let Some(mut upstream) = pf.take_stream(port) {
                                let _ =
                                    tokio::io::copy_bidirectional(&mut conn, &mut upstream).await;
                            }
                        }
                        Err(e) => tracing::warn!("port-forward to {pod}:{port}: {e}"),
                    }
                });
            }
        });
        Ok(Forward { port: local, task })
    }
}

/// A local port forwarded into the cluster; closed when dropped.
pub struct Forward {
    pub port: u16,
    task: tokio::task::JoinHandle<()>,
}

impl Forward {
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for Forward {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A Katib Experiment runs while its `Running` condition is True and it has not finished.
pub fn experiment_running(data: &Value) -> bool {
    let conds = data["status"]["conditions"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let is = |t: &str| {
        conds
            .iter()
            .any(|c| c["type"] == t && c["status"] == "True")
    };
    is("Running") && !is("Succeeded") && !is("Failed")
}
