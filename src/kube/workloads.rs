//! What runs that a backup or restore must not pull the state from under: Argo Workflows and
//! Katib Experiments.

use kube::api::{Api, DynamicObject, ListParams};
use kube::core::{ApiResource, GroupVersionKind};
use serde_json::Value;

use super::{Cluster, KubeError};

impl Cluster {
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
