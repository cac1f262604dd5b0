//! Kubernetes, through the `kube` client: streaming a file out of a pod, finding running Argo
//! Workflows and Katib Experiments, and port-forwarding to a service when the agent runs
//! outside the cluster.

mod exec;
mod forward;
mod pods;
mod workloads;

pub use forward::Forward;
pub use workloads::experiment_running;

use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;

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
}
