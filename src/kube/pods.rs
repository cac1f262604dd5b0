//! A pod's state, and a restart that waits for it to come back ready.

use super::{Cluster, KubeError};

impl Cluster {
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
}
