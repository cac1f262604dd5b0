//! The Charmed Kubeflow model the sandbox starts with: the applications backup-agent touches,
//! their units, config and relation data, in the shapes `interfaces.md` describes.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde_json::json;

use crate::model::{now_ms, App, ConfigOption, Faults, K8sState, Model, MysqlCluster, Timing};

/// Everything about the sandbox's servers that the model needs to know.
#[derive(Debug, Clone)]
pub struct Wiring {
    pub data_dir: PathBuf,
    /// Port of the S3 server that plays the in-cluster MinIO.
    pub minio_port: u16,
    pub minio_access_key: String,
    pub minio_secret_key: String,
    /// Endpoint, bucket, path and keys of the destination S3 (what s3-integrator points to).
    pub dest_endpoint: String,
    pub dest_bucket: String,
    pub dest_path: String,
    pub dest_region: String,
    pub dest_access_key: String,
    pub dest_secret_key: String,
    /// Bearer token the Kubernetes API simulator accepts.
    pub k8s_token: String,
    /// CKF 1.8 names the MLMD container `mlmd`; 1.9 and later `mlmd-grpc-server`.
    pub mlmd_container: String,
    /// Units of kfp-db and katib-db at the start.
    pub db_units: u32,
    /// mysql-k8s with the newer backups library, which claims its S3 repository.
    pub mysql_claims: bool,
    /// The off-site S3 server's endpoint and bucket, when there is one: a second
    /// s3-integrator, `s3-offsite`, points there (related to nothing yet, no keys synced).
    pub secondary: Option<(String, String)>,
}

fn opt(kind: &str, description: &str, default: Option<serde_json::Value>) -> ConfigOption {
    ConfigOption {
        kind: kind.into(),
        description: description.into(),
        default,
        value: None,
    }
}

/// Builds the `kubeflow` model: scales, charms and relation data of a CKF 1.9 deployment.
pub fn kubeflow_model(w: &Wiring, timing: Timing) -> Model {
    let now = now_ms();
    let mut apps = BTreeMap::new();
    add_databases(&mut apps, now, w.mysql_claims);
    apps.insert("minio".into(), minio(w, now));
    add_pipelines(&mut apps, w, now);
    apps.insert(
        "s3-integrator".into(),
        s3_integrator(
            &w.dest_endpoint,
            &w.dest_bucket,
            &w.dest_path,
            &w.dest_region,
            now,
        ),
    );
    let mut scales = vec![];
    if let Some((endpoint, bucket)) = &w.secondary {
        apps.insert(
            "s3-offsite".into(),
            s3_integrator(endpoint, bucket, "kubeflow", &w.dest_region, now),
        );
        scales.push(("s3-offsite", 1));
    }

    for (name, scale) in [
        ("kfp-db", w.db_units),
        ("katib-db", w.db_units),
        ("minio", 1),
        ("mlmd", 1),
        ("kfp-metadata-writer", 1),
        ("kfp-ui", 1),
        ("s3-integrator", 1),
    ]
    .into_iter()
    .chain(scales)
    {
        let a = apps.get_mut(name).unwrap();
        a.scale = scale;
        // The model has been up for a while: units are settled and ready now.
        a.apply_scale(name, scale, now.saturating_sub(3_600_000), 0);
    }

    let mut model = Model {
        name: "kubeflow".into(),
        uuid: crate::model::new_uid(),
        controller: "sandbox".into(),
        cloud: "microk8s".into(),
        region: "localhost".into(),
        juju_version: "3.6.4".into(),
        created_ms: now,
        data_dir: w.data_dir.clone(),
        apps,
        relations: vec![],
        tasks: BTreeMap::new(),
        next_task: 1,
        next_relation: 1,
        faults: Faults::default(),
        timing,
        k8s: K8sState {
            token: w.k8s_token.clone(),
            resource_version: 1000,
            workflows: vec![],
            experiments: vec![],
        },
        secrets: BTreeMap::new(),
    };

    relate(&mut model, w);
    model
}

/// kfp-db and katib-db: mysql-k8s.
fn add_databases(apps: &mut BTreeMap<String, App>, now: u64, claims: bool) {
    for name in ["kfp-db", "katib-db"] {
        let mut a = App::new(
            "mysql-k8s",
            180,
            "8.0/stable",
            "8.0.37-0ubuntu0.22.04.3",
            now,
        );
        a.container = Some("mysql".into());
        a.ports.insert(3306, 0);
        a.mysql = Some(MysqlCluster {
            primary: None,
            group_id: crate::model::new_uid(),
            claims_repository: claims,
            binlogs_collecting: false,
        });
        a.config.insert(
            "cluster-name".into(),
            opt(
                "string",
                "Optional - Name of the MySQL InnoDB cluster",
                None,
            ),
        );
        a.config.insert(
            "profile".into(),
            opt(
                "string",
                "profile representing the scope of deployment",
                Some(json!("production")),
            ),
        );
        apps.insert(name.to_string(), a);
    }
}

/// MinIO, with the access key the sandbox's S3 server uses.
fn minio(w: &Wiring, now: u64) -> App {
    let mut minio = App::new("minio", 278, "ckf-1.9/stable", "", now);
    minio.container = Some("minio".into());
    minio.ports.insert(9000, w.minio_port);
    minio.config.insert(
        "access-key".into(),
        opt(
            "string",
            "The access key for the MinIO server",
            Some(json!("minio")),
        ),
    );
    // As on a real deployment the secret key is not in config: the charm generated it and only
    // the relation data carries it.
    minio.config.insert(
        "secret-key".into(),
        opt(
            "string",
            "The secret key for the MinIO server; generated when empty",
            Some(json!("")),
        ),
    );
    minio.config.insert(
        "port".into(),
        opt("int", "Port for the MinIO S3 API", Some(json!(9000))),
    );
    minio.config.insert(
        "console-port".into(),
        opt("int", "Port for the MinIO console", Some(json!(9001))),
    );
    if w.minio_access_key != "minio" {
        minio.config.get_mut("access-key").unwrap().value = Some(json!(w.minio_access_key));
    }
    minio
}

/// The pipelines applications backup-agent scales: mlmd, its metadata writer and the UI.
fn add_pipelines(apps: &mut BTreeMap<String, App>, w: &Wiring, now: u64) {
    let mut mlmd = App::new("mlmd", 160, "ckf-1.9/stable", "", now);
    mlmd.container = Some(w.mlmd_container.clone());
    mlmd.ports.insert(8080, 0);
    apps.insert("mlmd".into(), mlmd);

    let mut writer = App::new("kfp-metadata-writer", 534, "2.2/stable", "", now);
    writer.container = Some("kfp-metadata-writer".into());
    apps.insert("kfp-metadata-writer".into(), writer);

    let mut ui = App::new("kfp-ui", 1242, "2.2/stable", "", now);
    ui.container = Some("ml-pipeline-ui".into());
    ui.ports.insert(3000, 0);
    apps.insert("kfp-ui".into(), ui);
}

/// s3-integrator, configured for one S3 bucket.
fn s3_integrator(endpoint: &str, bucket: &str, path: &str, region: &str, now: u64) -> App {
    let mut s3 = App::new("s3-integrator", 77, "1/stable", "", now);
    for (k, d, v) in [
        (
            "endpoint",
            "The endpoint used to connect to the object storage",
            json!(endpoint),
        ),
        (
            "bucket",
            "The bucket/container name delivered by the provider",
            json!(bucket),
        ),
        (
            "path",
            "The path inside the bucket/container to store objects",
            json!(path),
        ),
        (
            "region",
            "The region used to connect to the object storage",
            json!(region),
        ),
        (
            "s3-uri-style",
            "The S3 protocol specific bucket path lookup type",
            json!("path"),
        ),
        (
            "s3-api-version",
            "S3 protocol specific API signature",
            json!(""),
        ),
        (
            "storage-class",
            "Storage Class for objects uploaded",
            json!(""),
        ),
        (
            "tls-ca-chain",
            "The complete CA chain, base64 encoded",
            json!(""),
        ),
        (
            "attributes",
            "The custom metadata (HTTP headers)",
            json!(""),
        ),
    ] {
        let mut o = opt("string", d, Some(json!("")));
        o.value = Some(v);
        s3.config.insert(k.into(), o);
    }
    s3
}

/// The relations and their application databags: kfp-ui–minio, metadata writer–mlmd, and each
/// database–s3-integrator.
fn relate(model: &mut Model, w: &Wiring) {
    let os = model.add_relation(
        ("kfp-ui", "object-storage"),
        ("minio", "object-storage"),
        "object-storage",
    );
    let os_data = format!(
        "access-key: {}\nnamespace: kubeflow\nport: 9000\nsecret-key: {}\nsecure: false\nservice: minio\n",
        w.minio_access_key, w.minio_secret_key
    );
    set_app_data(
        model,
        os,
        "minio",
        &[("_supported_versions", "- v1"), ("data", &os_data)],
    );
    let ui_os = model.add_relation(
        ("kfp-metadata-writer", "grpc"),
        ("mlmd", "grpc"),
        "k8s-service",
    );
    set_app_data(
        model,
        ui_os,
        "mlmd",
        &[
            ("_supported_versions", "- v1"),
            ("data", "name: mlmd\nport: '8080'\n"),
        ],
    );

    for db in ["kfp-db", "katib-db"] {
        let rel = model.add_relation(
            (db, "s3-parameters"),
            ("s3-integrator", "s3-credentials"),
            "s3",
        );
        set_app_data(model, rel, db, &[("bucket", &w.dest_bucket)]);
        let s3_data = s3_databag(w);
        let pairs: Vec<(&str, &str)> = s3_data.iter().map(|(k, v)| (*k, v.as_str())).collect();
        set_app_data(model, rel, "s3-integrator", &pairs);
    }
}

/// The s3-integrator application databag (interface `s3`, v0 keys).
pub fn s3_databag(w: &Wiring) -> Vec<(&'static str, String)> {
    vec![
        ("access-key", w.dest_access_key.clone()),
        ("secret-key", w.dest_secret_key.clone()),
        ("bucket", w.dest_bucket.clone()),
        ("endpoint", w.dest_endpoint.clone()),
        ("path", w.dest_path.clone()),
        ("region", w.dest_region.clone()),
        ("s3-uri-style", "path".into()),
        ("data", format!("{{\"bucket\": \"{}\"}}", w.dest_bucket)),
    ]
}

pub fn set_app_data(model: &mut Model, relation: u32, app: &str, pairs: &[(&str, &str)]) {
    if let Some(r) = model.relations.iter_mut().find(|r| r.id == relation) {
        let bag = r.app_data.entry(app.to_string()).or_default();
        for (k, v) in pairs {
            bag.insert(k.to_string(), v.to_string());
        }
    }
}
