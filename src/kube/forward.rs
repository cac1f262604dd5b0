//! A port-forward to a service, for an agent outside the cluster (MinIO's in-cluster name does
//! not resolve there).

use k8s_openapi::api::core::v1::Service;
use kube::api::{Api, ListParams};

use super::{Cluster, KubeError};

impl Cluster {
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
