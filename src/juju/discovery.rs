//! The Charmed Kubeflow control plane as found in a Juju model: which applications hold the
//! databases, MLMD and MinIO, their scales, and where MinIO's credentials come from.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::juju::{relation_app_data, JujuCli, JujuError, ObjectStorage, Status};
use crate::secret::Secret;

/// Application names, CKF's by default; configurable for renamed deployments.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct AppNames {
    /// mysql-k8s application of Kubeflow Pipelines.
    pub kfp_db: String,
    /// mysql-k8s application of Katib.
    pub katib_db: String,
    /// Application that writes ML Metadata (scaled to 0 while MLMD is copied).
    pub metadata_writer: String,
    pub mlmd: String,
    pub minio: String,
    /// Application whose object-storage relation carries MinIO's keys.
    pub kfp_ui: String,
}

impl Default for AppNames {
    fn default() -> Self {
        AppNames {
            kfp_db: "kfp-db".into(),
            katib_db: "katib-db".into(),
            metadata_writer: "kfp-metadata-writer".into(),
            mlmd: "mlmd".into(),
            minio: "minio".into(),
            kfp_ui: "kfp-ui".into(),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct AppState {
    pub role: &'static str,
    pub name: String,
    pub charm: String,
    pub charm_rev: Option<i64>,
    pub scale: u32,
    pub units: Vec<String>,
    pub status: String,
}

/// What discovery found. Holds no secret: MinIO's keys stay in [`ObjectStorage`].
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct ControlPlane {
    pub model: String,
    pub juju_version: String,
    pub apps: Vec<AppState>,
    pub minio_endpoint: String,
    pub minio_credentials_from: String,
}

#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    #[error(transparent)]
    Juju(#[from] JujuError),
    #[error("application {name:?} ({role}) is not in model {model:?}: deploy Charmed Kubeflow there, pick the right model with --model, or name the application with {flag}")]
    MissingApp {
        name: String,
        role: &'static str,
        model: String,
        flag: &'static str,
    },
    #[error(
        "{app} has no unit to read relation data from (scale it up, or check `juju status {app}`)"
    )]
    NoUnit { app: String },
    #[error("MinIO credentials: {0}. Check `juju show-unit {1} --format=json` (relations object-storage, s3-credentials)")]
    Minio(String, String),
    #[error("no MinIO credentials: {unit} has no object-storage or s3-credentials relation, and `juju config {minio} secret-key` is empty (the charm generated the key and keeps it in the relation). Relate kfp-ui and {minio} (`juju integrate kfp-ui {minio}`), or set the key with `juju config {minio} secret-key=...`")]
    NoMinioKeys { unit: String, minio: String },
}

pub fn find_apps(status: &Status, names: &AppNames) -> Result<Vec<AppState>, DiscoveryError> {
    let wanted: [(&'static str, &String, &'static str); 6] = [
        ("kfp-db", &names.kfp_db, "--kfp-db-app"),
        ("katib-db", &names.katib_db, "--katib-db-app"),
        (
            "metadata-writer",
            &names.metadata_writer,
            "--metadata-writer-app",
        ),
        ("mlmd", &names.mlmd, "--mlmd-app"),
        ("minio", &names.minio, "--minio-app"),
        ("kfp-ui", &names.kfp_ui, "--kfp-ui-app"),
    ];
    wanted
        .iter()
        .map(|(role, name, flag)| {
            let app = status.applications.get(name.as_str()).ok_or_else(|| {
                DiscoveryError::MissingApp {
                    name: name.to_string(),
                    role,
                    model: status.model.name.clone(),
                    flag,
                }
            })?;
            Ok(AppState {
                role,
                name: name.to_string(),
                charm: app.charm_name().to_string(),
                charm_rev: app.charm_rev,
                scale: app.scale.unwrap_or(app.units.len() as u32),
                units: app.units.keys().cloned().collect(),
                status: app
                    .application_status
                    .as_ref()
                    .map(|s| s.current.clone())
                    .unwrap_or_default(),
            })
        })
        .collect()
}

/// How to reach MinIO and with which keys, and where those came from (for messages).
#[derive(Debug, Clone, PartialEq)]
pub struct MinioAccess {
    pub access_key: Secret,
    pub secret_key: Secret,
    /// The in-cluster URL, e.g. `http://minio.kubeflow:9000`.
    pub endpoint: String,
    /// The Kubernetes service and port behind `endpoint`, to port-forward to from outside.
    pub service: Option<(String, u16)>,
    pub from: String,
}

impl MinioAccess {
    pub fn from_object_storage(os: ObjectStorage, from: String) -> Self {
        MinioAccess {
            access_key: Secret::new(os.access_key.clone()),
            endpoint: os.endpoint(),
            service: Some((os.service.clone(), os.port)),
            secret_key: os.secret_key,
            from,
        }
    }

    /// From an `s3` interface databag (kfp-ui's newer `s3-credentials` relation).
    fn from_s3_databag(
        bag: &BTreeMap<String, String>,
        namespace: &str,
        from: String,
    ) -> Result<Self, String> {
        let get = |k: &str| {
            bag.get(k)
                .filter(|v| !v.is_empty())
                .cloned()
                .ok_or_else(|| format!("the s3-credentials relation data has no `{k}`"))
        };
        let endpoint = get("endpoint")?.trim_end_matches('/').to_string();
        let service = service_of(&endpoint, namespace);
        Ok(MinioAccess {
            access_key: Secret::new(get("access-key")?),
            secret_key: Secret::new(get("secret-key")?),
            endpoint,
            service,
            from,
        })
    }
}

/// `minio` and 9000 from `http://minio.kubeflow[.svc.cluster.local]:9000`.
fn service_of(endpoint: &str, namespace: &str) -> Option<(String, u16)> {
    let rest = endpoint.split_once("://")?.1;
    let hostport = rest.split('/').next()?;
    let (host, port) = match hostport.rsplit_once(':') {
        Some((h, p)) => (h, p.parse().ok()?),
        None if endpoint.starts_with("https") => (hostport, 443),
        None => (hostport, 80),
    };
    let mut labels = host.split('.');
    let service = labels.next()?;
    (labels.next() == Some(namespace)).then(|| (service.to_string(), port))
}

/// MinIO's keys: from the kfp-ui unit's `object-storage` relation (the `data` YAML string),
/// else its `s3-credentials` relation, else `juju config` of the minio application. Relation
/// data that is there but malformed is an error, not a reason to look elsewhere.
pub fn minio_access(
    juju: &JujuCli,
    apps: &[AppState],
    names: &AppNames,
) -> Result<MinioAccess, DiscoveryError> {
    let ui = apps
        .iter()
        .find(|a| a.role == "kfp-ui")
        .expect("found by find_apps");
    let unit = ui.units.first().ok_or_else(|| DiscoveryError::NoUnit {
        app: ui.name.clone(),
    })?;
    let shown = juju.show_unit(unit)?;
    if let Some(bag) = relation_app_data(&shown, unit, "object-storage") {
        let os = ObjectStorage::from_relation_data(&bag)
            .map_err(|e| DiscoveryError::Minio(e, unit.clone()))?;
        return Ok(MinioAccess::from_object_storage(
            os,
            format!("{unit} relation object-storage"),
        ));
    }
    if let Some(bag) = relation_app_data(&shown, unit, "s3-credentials") {
        return MinioAccess::from_s3_databag(
            &bag,
            juju.model(),
            format!("{unit} relation s3-credentials"),
        )
        .map_err(|e| DiscoveryError::Minio(e, unit.clone()));
    }
    let config = |key: &str| juju.config_value(&names.minio, key);
    let secret = config("secret-key")?;
    if secret.is_empty() {
        return Err(DiscoveryError::NoMinioKeys {
            unit: unit.clone(),
            minio: names.minio.clone(),
        });
    }
    let port = config("port")?.parse().unwrap_or(9000);
    Ok(MinioAccess {
        access_key: Secret::new(config("access-key")?),
        secret_key: Secret::new(secret),
        endpoint: format!("http://{}.{}:{port}", names.minio, juju.model()),
        service: Some((names.minio.clone(), port)),
        from: format!("`juju config {}`", names.minio),
    })
}

pub fn discover(
    juju: &JujuCli,
    names: &AppNames,
) -> Result<(ControlPlane, MinioAccess), DiscoveryError> {
    let status = juju.status()?;
    let apps = find_apps(&status, names)?;
    let minio = minio_access(juju, &apps, names)?;
    Ok((
        ControlPlane {
            model: status.model.name.clone(),
            juju_version: status.model.version.clone(),
            apps,
            minio_endpoint: minio.endpoint.clone(),
            minio_credentials_from: minio.from.clone(),
        },
        minio,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_behind_an_in_cluster_url() {
        let svc = |u: &str| service_of(u, "kubeflow");
        assert_eq!(
            svc("http://minio.kubeflow:9000"),
            Some(("minio".into(), 9000))
        );
        assert_eq!(
            svc("https://minio.kubeflow.svc.cluster.local"),
            Some(("minio".into(), 443))
        );
        assert_eq!(svc("http://s3.amazonaws.com"), None);
        assert_eq!(svc("http://minio.other:9000"), None);
    }
}
