//! The Charmed Kubeflow control plane as found in a Juju model: which applications hold the
//! databases, MLMD and MinIO, their scales, and where MinIO's credentials come from.

use serde::Serialize;

use crate::juju::{relation_app_data, JujuCli, JujuError, ObjectStorage, Status};

/// Application names, CKF's by default; configurable for renamed deployments.
#[derive(Debug, Clone, Serialize, clap::Args)]
#[serde(rename_all = "kebab-case")]
pub struct AppNames {
    /// mysql-k8s application of Kubeflow Pipelines.
    #[arg(long = "kfp-db-app", default_value = "kfp-db")]
    pub kfp_db: String,
    /// mysql-k8s application of Katib.
    #[arg(long = "katib-db-app", default_value = "katib-db")]
    pub katib_db: String,
    /// Application that writes ML Metadata (scaled to 0 while MLMD is copied).
    #[arg(long = "metadata-writer-app", default_value = "kfp-metadata-writer")]
    pub metadata_writer: String,
    #[arg(long = "mlmd-app", default_value = "mlmd")]
    pub mlmd: String,
    #[arg(long = "minio-app", default_value = "minio")]
    pub minio: String,
    /// Application whose object-storage relation carries MinIO's keys.
    #[arg(long = "kfp-ui-app", default_value = "kfp-ui")]
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
    #[error("MinIO credentials: {0}. Check `juju show-unit {1} --format=json` (relation object-storage)")]
    Minio(String, String),
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

/// MinIO's connection data from the kfp-ui unit's object-storage relation.
pub fn minio_credentials(
    juju: &JujuCli,
    apps: &[AppState],
    names: &AppNames,
) -> Result<(ObjectStorage, String), DiscoveryError> {
    let ui = apps
        .iter()
        .find(|a| a.role == "kfp-ui")
        .expect("found by find_apps");
    let unit = ui.units.first().ok_or_else(|| DiscoveryError::NoUnit {
        app: ui.name.clone(),
    })?;
    let shown = juju.show_unit(unit)?;
    let bag = relation_app_data(&shown, unit, "object-storage").ok_or_else(|| {
        DiscoveryError::Minio(
            format!("{unit} has no object-storage relation to {}", names.minio),
            unit.clone(),
        )
    })?;
    let os = ObjectStorage::from_relation_data(&bag)
        .map_err(|e| DiscoveryError::Minio(e, unit.clone()))?;
    Ok((os, format!("{unit} relation object-storage")))
}

pub fn discover(
    juju: &JujuCli,
    names: &AppNames,
) -> Result<(ControlPlane, ObjectStorage), DiscoveryError> {
    let status = juju.status()?;
    let apps = find_apps(&status, names)?;
    let (minio, from) = minio_credentials(juju, &apps, names)?;
    Ok((
        ControlPlane {
            model: status.model.name.clone(),
            juju_version: status.model.version.clone(),
            apps,
            minio_endpoint: minio.endpoint(),
            minio_credentials_from: from,
        },
        minio,
    ))
}
