//! The checks create-backup and restore share: the model and its applications, the cluster,
//! running Kubeflow work, the MLMD pod, MinIO. They read; none changes anything.

use std::time::Duration;

use crate::components::mlmd;
use crate::context::Context;
use crate::juju::discovery::{self, AppState, DiscoveryError, MinioAccess};
use crate::juju::Status;
use crate::kube::{Cluster, Forward};
use crate::retry::{retry, retry_blocking};
use crate::secret::Secret;
use crate::storage::{S3Settings, Store, UriStyle};

/// A failed check: what discovery could not find, or what a check found wrong.
#[derive(Debug, thiserror::Error)]
pub enum PreflightError {
    #[error("{0}")]
    Discovery(#[from] DiscoveryError),
    #[error("{0}")]
    Check(String),
}

pub(crate) async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f)
        .await
        .expect("blocking task panicked")
}

/// Runs `work` unless `halt` fires first (`None`: halted), so the first part of a run to fail
/// stops the others.
pub(crate) async fn until<T>(
    halt: &tokio_util::sync::CancellationToken,
    work: impl std::future::Future<Output = T>,
) -> Option<T> {
    tokio::select! {
        r = work => Some(r),
        _ = halt.cancelled() => None,
    }
}

pub(crate) fn app<'a>(apps: &'a [AppState], role: &str) -> &'a AppState {
    apps.iter()
        .find(|a| a.role == role)
        .expect("find_apps returns every role")
}

/// `juju status` of the model and the control plane's applications in it.
pub(crate) async fn model(ctx: &Context) -> Result<(Status, Vec<AppState>), PreflightError> {
    ctx.progress.step(
        "discover",
        format!("juju status of model {}", ctx.juju.model()),
    );
    let juju = ctx.juju.clone();
    let status = blocking(move || {
        retry_blocking(crate::retry::PREFLIGHT_ATTEMPTS, "juju status", || {
            juju.status()
        })
    })
    .await
    .map_err(DiscoveryError::from)?;
    let apps = discovery::find_apps(&status, &ctx.names)?;
    Ok((status, apps))
}

/// The cluster, namespaced to the model.
pub(crate) async fn cluster(ctx: &Context, namespace: &str) -> Result<Cluster, PreflightError> {
    match &ctx.kubeconfig {
        Some(path) => Cluster::from_kubeconfig(path, namespace).await,
        None => Cluster::connect(namespace).await,
    }
    .map_err(|e| PreflightError::Check(e.to_string()))
}

/// Running Argo Workflows and Katib Experiments: refused unless `force`, when they come back
/// as a warning to report. `doing` completes "... now would ...".
pub(crate) async fn running_work(
    ctx: &Context,
    cluster: &Cluster,
    force: bool,
    doing: &str,
) -> Result<Vec<String>, PreflightError> {
    ctx.progress.step(
        "preflight",
        "looking for running Argo Workflows and Katib Experiments",
    );
    let running = cluster.running_workloads().await.map_err(|e| {
        PreflightError::Check(format!(
            "cannot ask the Kubernetes API whether pipelines run: {e}"
        ))
    })?;
    if !running.is_empty() && !force {
        return Err(PreflightError::Check(format!(
            "Kubeflow work is running: {}. {doing}: wait for it to finish, or pass --force",
            running.join(", ")
        )));
    }
    Ok(running)
}

/// The MLMD pod and its container (named, or CKF 1.9's, else 1.8's).
pub(crate) async fn mlmd_pod(
    ctx: &Context,
    cluster: &Cluster,
) -> Result<(String, String), PreflightError> {
    let pod = format!("{}-0", ctx.names.mlmd);
    ctx.progress
        .step("preflight", format!("MLMD database in pod {pod}"));
    let container = match &ctx.tuning.mlmd_container {
        Some(c) => c.clone(),
        None => cluster
            .pick_container(&pod, mlmd::CONTAINERS)
            .await
            .map_err(|e| PreflightError::Check(format!("MLMD: {e}")))?,
    };
    Ok((pod, container))
}

/// MinIO, reached and listed.
pub(crate) struct Minio {
    pub access: MinioAccess,
    pub store: Store,
    /// Kept only to live as long as the run: dropping it closes the port-forward.
    pub _forward: Option<Forward>,
    /// How it is reached, for the plan.
    pub how: String,
}

/// MinIO's keys from the model, a route to it, and one key of its bucket listed (which proves
/// both; the whole bucket is walked later, as a stream).
pub(crate) async fn minio(
    ctx: &Context,
    apps: &[AppState],
    cluster: Option<&Cluster>,
) -> Result<Minio, PreflightError> {
    let access = match &ctx.minio {
        Some(given) => given.clone(),
        None => {
            let (juju, apps2, names) = (ctx.juju.clone(), apps.to_vec(), ctx.names.clone());
            blocking(move || discovery::minio_access(&juju, &apps2, &names)).await?
        }
    };
    ctx.progress.step(
        "preflight",
        format!(
            "MinIO bucket {} ({}, keys from {})",
            ctx.tuning.minio_bucket, access.endpoint, access.from
        ),
    );
    let (store, forward, how) = open_minio(
        &access,
        &ctx.tuning.minio_bucket,
        ctx.tuning.minio_endpoint.as_deref(),
        cluster,
    )
    .await
    .map_err(PreflightError::Check)?;
    retry(
        crate::retry::PREFLIGHT_ATTEMPTS,
        "listing mlpipeline",
        || store.list_page("", None, 1),
    )
    .await
    .map_err(|e| {
        PreflightError::Check(format!(
            "MinIO {} (credentials from {}): {e}",
            access.endpoint, access.from
        ))
    })?;
    Ok(Minio {
        access,
        store,
        _forward: forward,
        how,
    })
}

/// Whether the host of `url` resolves here (inside the cluster it does; outside it does not).
async fn resolves(url: &str) -> bool {
    let Some(rest) = url.split_once("://").map(|(_, r)| r) else {
        return false;
    };
    let hostport = rest.split('/').next().unwrap_or_default();
    let with_port = if hostport.contains(':') {
        hostport.to_string()
    } else {
        format!("{hostport}:80")
    };
    match tokio::time::timeout(Duration::from_secs(3), tokio::net::lookup_host(with_port)).await {
        Ok(Ok(mut addrs)) => addrs.next().is_some(),
        _ => false,
    }
}

/// MinIO as a store: directly when its in-cluster name resolves (the agent runs in the
/// cluster), else through a port-forward the agent opens, unless an endpoint is given.
async fn open_minio(
    access: &MinioAccess,
    bucket: &str,
    endpoint: Option<&str>,
    cluster: Option<&Cluster>,
) -> Result<(Store, Option<Forward>, String), String> {
    let (url, forward, how) = match endpoint {
        Some(e) => (e.to_string(), None, format!("{e} (given)")),
        None if resolves(&access.endpoint).await => {
            (access.endpoint.clone(), None, "directly".to_string())
        }
        None => {
            let (Some(cluster), Some((svc, port))) = (cluster, &access.service) else {
                return Err(format!(
                    "MinIO at {} is not reachable from here (the name does not resolve) and there is no service to port-forward to: pass --minio-endpoint",
                    access.endpoint
                ));
            };
            let fwd = cluster
                .forward_service(svc, *port)
                .await
                .map_err(|e| format!("MinIO: port-forward to service {svc}:{port}: {e}"))?;
            let how = format!(
                "a port-forward to service {svc}:{port} ({})",
                fwd.endpoint()
            );
            (fwd.endpoint(), Some(fwd), how)
        }
    };
    let store = Store::s3(&S3Settings {
        endpoint: url,
        bucket: bucket.into(),
        path: String::new(),
        region: "us-east-1".into(),
        uri_style: UriStyle::Path,
        access_key: Secret::new(access.access_key.expose()),
        secret_key: access.secret_key.clone(),
        sse: None,
    })
    .map_err(|e| format!("MinIO: {e}"))?;
    Ok((store, forward, how))
}
