//! A small program on the real `kube` client: lists the pods of the `kubeflow` namespace and
//! streams `/data/mlmd.db` out of `mlmd-0` through exec, printing its size and SHA-256.
//!
//!     source .sandbox/env && cargo run -p backup-agent-sandbox --example kube_exec [OUT_FILE]

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, AttachParams, ListParams};
use sha2::{Digest, Sha256};
use tokio::io::AsyncReadExt;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let client = kube::Client::try_default().await?;
    let pods: Api<Pod> = Api::namespaced(client, "kubeflow");
    for p in pods.list(&ListParams::default()).await? {
        let phase = p.status.and_then(|s| s.phase).unwrap_or_default();
        println!("pod {:<28} {phase}", p.metadata.name.unwrap_or_default());
    }
    let container = std::env::var("MLMD_CONTAINER").unwrap_or_else(|_| "mlmd-grpc-server".into());
    let ap = AttachParams::default()
        .container(container)
        .stdout(true)
        .stderr(true);
    let mut proc = pods.exec("mlmd-0", ["cat", "/data/mlmd.db"], &ap).await?;
    let mut out = proc.stdout().expect("stdout requested");
    let status = proc.take_status().expect("status channel");
    let mut bytes = vec![];
    out.read_to_end(&mut bytes).await?;
    let status = status.await;
    proc.join().await?;
    anyhow::ensure!(
        status.as_ref().and_then(|s| s.status.as_deref()) == Some("Success"),
        "cat /data/mlmd.db failed: {status:?}"
    );
    println!(
        "mlmd-0:/data/mlmd.db {} bytes sha256 {}",
        bytes.len(),
        hex::encode(Sha256::digest(&bytes))
    );
    if let Some(path) = std::env::args().nth(1) {
        std::fs::write(&path, &bytes)?;
        println!("written to {path}");
    }
    Ok(())
}
