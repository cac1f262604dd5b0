//! MLMD capture and the Kubernetes operations around it, against the sandbox: the database
//! streamed out of mlmd-0, checked, compressed and stored; running workloads found; MinIO
//! reached through a port-forward; failures named.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use backup_agent::components::mlmd::{self, MlmdError};
use backup_agent::kube::{Cluster, KubeError};
use backup_agent::secret::Secret;
use backup_agent::storage::{S3Settings, Store, UriStyle};
use backup_agent_sandbox::Sandbox;
use sha2::{Digest, Sha256};

fn sandbox() -> Sandbox {
    crate::common::sandbox(10)
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Runtime::new().unwrap()
}

#[test]
fn mlmd_is_captured_verified_and_restorable_from_the_store() {
    let sb = sandbox();
    let spool = tempfile::tempdir().unwrap();
    let repo = tempfile::tempdir().unwrap();
    let store = Store::local(repo.path());
    rt().block_on(async {
        let cluster = Cluster::from_kubeconfig(&sb.layout.kubeconfig(), "kubeflow")
            .await
            .unwrap();
        let cap = mlmd::capture(
            &cluster,
            "mlmd-0",
            None,
            spool.path(),
            &store,
            "20261123T060000Z-0a1b2c",
        )
        .await
        .unwrap();
        let pod_file = std::fs::read(sb.layout.mlmd_db()).unwrap();
        assert_eq!(cap.container, "mlmd-grpc-server");
        assert_eq!(cap.size, pod_file.len() as u64);
        assert_eq!(cap.sha256, hex::encode(Sha256::digest(&pod_file)));
        assert_eq!(cap.integrity_check, "ok");
        assert!(cap.compressed_size < cap.size, "zstd shrinks SQLite pages");
        let seeded = backup_agent_sandbox::seed::mlmd_counts(&sb.layout.mlmd_db()).unwrap();
        for (table, n) in seeded {
            assert_eq!(cap.row_counts[&table], n, "{table}");
        }
        assert_eq!(
            std::fs::read_dir(spool.path()).unwrap().count(),
            0,
            "the spool is cleaned up"
        );

        let out = spool.path().join("restored.db");
        let ins = mlmd::fetch_and_verify(&store, &cap, &out).await.unwrap();
        assert_eq!(ins.schema_version, Some(10));
        assert_eq!(std::fs::read(&out).unwrap(), pod_file);

        // A tampered object is caught by its hash.
        let zst = repo.path().join(&cap.key);
        let mut bytes = std::fs::read(&zst).unwrap();
        let data = zstd::decode_all(&bytes[..]).unwrap();
        let mut changed = data.clone();
        let last = changed.len() - 1;
        changed[last] ^= 0xff;
        bytes = zstd::encode_all(&changed[..], 3).unwrap();
        std::fs::write(&zst, bytes).unwrap();
        let err = mlmd::fetch_and_verify(&store, &cap, &out)
            .await
            .unwrap_err();
        assert!(err.contains("content hash"), "{err}");
    });
}

#[test]
fn cut_streams_missing_pods_and_bad_files_are_named() {
    let sb = sandbox();
    let spool = tempfile::tempdir().unwrap();
    let repo = tempfile::tempdir().unwrap();
    let store = Store::local(repo.path());
    let rt = rt();
    let cluster = rt
        .block_on(Cluster::from_kubeconfig(
            &sb.layout.kubeconfig(),
            "kubeflow",
        ))
        .unwrap();
    // A capture that must fail, under a fresh backup id each time.
    let fails = |container: Option<&str>, id: &str| {
        rt.block_on(mlmd::capture(
            &cluster,
            "mlmd-0",
            container,
            spool.path(),
            &store,
            id,
        ))
        .unwrap_err()
    };

    // Every attempt cut short: the size check catches it, retried, then reported.
    sb.model()
        .update(|m| {
            m.faults.exec_cut_after_bytes = Some(4096);
            Ok(())
        })
        .unwrap();
    let err = fails(None, "20261123T060000Z-000001");
    assert!(
        matches!(&err, MlmdError::Kube(k @ KubeError::StreamCut { .. }) if k.is_retryable()),
        "{err}"
    );
    assert!(err.to_string().contains("was cut after 4096 of"), "{err}");
    assert!(
        store_is_empty(&repo.path().to_path_buf()),
        "nothing stored for a failed capture"
    );
    sb.model()
        .update(|m| {
            m.faults.exec_cut_after_bytes = None;
            Ok(())
        })
        .unwrap();

    // Not an MLMD database.
    let db = sb.layout.mlmd_db();
    let original = std::fs::read(&db).unwrap();
    std::fs::write(
        &db,
        b"this is not sqlite at all, just text that happens to be here",
    )
    .unwrap();
    let err = fails(None, "20261123T060000Z-000002");
    assert!(
        matches!(err, MlmdError::NotMlmd(_) | MlmdError::Corrupt(_)),
        "{err}"
    );
    std::fs::write(&db, original).unwrap();

    // A container name the pod does not have.
    let err = fails(Some("mlmd"), "20261123T060000Z-000003");
    assert!(
        err.to_string()
            .contains("container mlmd is not valid for pod mlmd-0"),
        "{err}"
    );

    // No pod: mlmd scaled to 0.
    let r = sb.juju(&["scale-application", "mlmd", "0"]);
    assert!(r.status.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    while rt.block_on(cluster.containers("mlmd-0")).is_ok() {
        assert!(Instant::now() < deadline, "mlmd-0 did not go away");
        std::thread::sleep(Duration::from_millis(50));
    }
    let err = fails(None, "20261123T060000Z-000004");
    assert_eq!(err.to_string(), "MLMD: pod mlmd-0 in namespace kubeflow not found: is the application deployed and scaled up?");
}

fn store_is_empty(dir: &PathBuf) -> bool {
    std::fs::read_dir(dir)
        .map(|mut d| d.next().is_none())
        .unwrap_or(true)
}

#[test]
fn running_workloads_and_minio_through_a_port_forward() {
    let sb = sandbox();
    let rt = rt();
    rt.block_on(async {
        let cluster = Cluster::from_kubeconfig(&sb.layout.kubeconfig(), "kubeflow")
            .await
            .unwrap();
        assert!(cluster.running_workloads().await.unwrap().is_empty());
        sb.model()
            .update(|m| {
                m.k8s.workflows.push(backup_agent_sandbox::k8s::workflow(
                    "train-x1", "user-a", "Running",
                ));
                m.k8s.workflows.push(backup_agent_sandbox::k8s::workflow(
                    "old-run",
                    "user-a",
                    "Succeeded",
                ));
                m.k8s
                    .experiments
                    .push(backup_agent_sandbox::k8s::experiment(
                        "tune", "user-b", "Running",
                    ));
                m.k8s
                    .experiments
                    .push(backup_agent_sandbox::k8s::experiment(
                        "done",
                        "user-b",
                        "Succeeded",
                    ));
                Ok(())
            })
            .unwrap();
        let running = cluster.running_workloads().await.unwrap();
        assert_eq!(
            running,
            [
                "workflow user-a/train-x1 (Running)",
                "experiment user-b/tune (Running)"
            ]
        );

        // MinIO from outside the cluster: service minio:9000 through the API server.
        let fwd = cluster.forward_service("minio", 9000).await.unwrap();
        let minio = Store::s3(&S3Settings {
            endpoint: fwd.endpoint(),
            bucket: "mlpipeline".into(),
            path: String::new(),
            region: "us-east-1".into(),
            uri_style: UriStyle::Path,
            access_key: Secret::new(sb.info.minio.access_key.clone()),
            secret_key: Secret::new(sb.info.minio.secret_key.clone()),
            sse: None,
        })
        .unwrap();
        let objects = minio.list("").await.unwrap();
        let expected =
            backup_agent_sandbox::seed::bucket_objects(&backup_agent_sandbox::seed::BucketSpec {
                small: 10,
                large: 0,
                ..Default::default()
            });
        assert_eq!(objects.len(), expected.len());
    });
}
