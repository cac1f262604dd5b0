//! The Kubernetes API simulator through the real `kube` client: pods, exec over WebSocket,
//! port-forward to MinIO, custom resources, pod restarts, auth and injected faults.

use std::time::Duration;

use crate::common::*;
use backup_agent_sandbox::Sandbox;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, AttachParams, DeleteParams, DynamicObject, ListParams};
use kube::core::{ApiResource, GroupVersionKind};
use kube::Client;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn client(sb: &Sandbox) -> Client {
    let kc = kube::config::Kubeconfig::read_from(sb.layout.kubeconfig()).unwrap();
    let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .unwrap();
    Client::try_from(cfg).unwrap()
}

/// Runs a command in a pod; returns stdout and the exit status object.
async fn exec(
    pods: &Api<Pod>,
    pod: &str,
    container: &str,
    cmd: &[&str],
    stdin: Option<Vec<u8>>,
) -> (
    Vec<u8>,
    k8s_openapi::apimachinery::pkg::apis::meta::v1::Status,
) {
    let ap = AttachParams::default()
        .container(container)
        .stdin(stdin.is_some())
        .stdout(true)
        .stderr(true);
    let mut p = pods.exec(pod, cmd.to_vec(), &ap).await.expect("exec");
    let mut out = p.stdout().unwrap();
    let status = p.take_status().unwrap();
    let writer = stdin.map(|data| {
        let mut w = p.stdin().unwrap();
        tokio::spawn(async move {
            for chunk in data.chunks(1 << 20) {
                w.write_all(chunk).await.unwrap();
            }
            w.shutdown().await.unwrap();
        })
    });
    let mut buf = vec![];
    out.read_to_end(&mut buf).await.unwrap();
    if let Some(w) = writer {
        w.await.unwrap();
    }
    let st = status.await.expect("a status on the error channel");
    p.join().await.unwrap();
    (buf, st)
}

fn pods_of(sb: &Sandbox) -> (tokio::runtime::Runtime, Api<Pod>, Client) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let c = rt.block_on(client(sb));
    (rt, Api::namespaced(c.clone(), "kubeflow"), c)
}

#[test]
fn list_pods_and_stream_the_mlmd_database_out_and_in() {
    let sb = sandbox();
    let (rt, pods, _) = pods_of(&sb);
    rt.block_on(async {
        let list = pods.list(&ListParams::default()).await.unwrap();
        let names: Vec<String> = list
            .items
            .iter()
            .filter_map(|p| p.metadata.name.clone())
            .collect();
        for n in [
            "mlmd-0",
            "minio-0",
            "kfp-db-0",
            "katib-db-0",
            "kfp-metadata-writer-0",
            "kfp-ui-0",
        ] {
            assert!(names.contains(&n.to_string()), "{n} in {names:?}");
        }
        let minio = pods
            .list(&ListParams::default().labels("app.kubernetes.io/name=minio"))
            .await
            .unwrap();
        assert_eq!(minio.items.len(), 1);
        let mlmd = pods.get("mlmd-0").await.unwrap();
        let containers: Vec<_> = mlmd
            .spec
            .unwrap()
            .containers
            .into_iter()
            .map(|c| c.name)
            .collect();
        assert_eq!(containers, ["charm", "mlmd-grpc-server"]);

        // `cat /data/mlmd.db` in the container: the bytes of the pod's file, unchanged.
        let (db, st) = exec(
            &pods,
            "mlmd-0",
            "mlmd-grpc-server",
            &["cat", "/data/mlmd.db"],
            None,
        )
        .await;
        assert_eq!(st.status.as_deref(), Some("Success"));
        assert_eq!(db, std::fs::read(sb.layout.mlmd_db()).unwrap());

        // 100 MiB in through stdin and back out through stdout.
        let data: Vec<u8> =
            backup_agent_sandbox::seed::ContentReader::new(7, "roundtrip", 100 << 20).to_vec();
        let (_, st) = exec(
            &pods,
            "mlmd-0",
            "mlmd-grpc-server",
            &["sh", "-c", "cat > /tmp/roundtrip"],
            Some(data.clone()),
        )
        .await;
        assert_eq!(st.status.as_deref(), Some("Success"), "{st:?}");
        let (back, st) = exec(
            &pods,
            "mlmd-0",
            "mlmd-grpc-server",
            &["cat", "/tmp/roundtrip"],
            None,
        )
        .await;
        assert_eq!(st.status.as_deref(), Some("Success"));
        assert_eq!(back.len(), data.len());
        assert_eq!(Sha256::digest(&back), Sha256::digest(&data));

        // The container sees its own filesystem: /data is the pod's, the host's /data is not.
        let (ls, _) = exec(&pods, "mlmd-0", "mlmd-grpc-server", &["ls", "/data"], None).await;
        assert_eq!(String::from_utf8_lossy(&ls), "mlmd.db\n");

        // A failing command: Failure with the exit code, as the API server reports it.
        let (_, st) = exec(
            &pods,
            "mlmd-0",
            "mlmd-grpc-server",
            &["sh", "-c", "exit 3"],
            None,
        )
        .await;
        assert_eq!(st.status.as_deref(), Some("Failure"));
        assert_eq!(st.reason.as_deref(), Some("NonZeroExitCode"));
        assert_eq!(
            st.details.unwrap().causes.unwrap()[0].message.as_deref(),
            Some("3")
        );

        // An API server that speaks only v4.channel.k8s.io: kube falls back to it.
        sb.model().update(|m| { m.faults.k8s_v4_only = true; Ok(()) }).unwrap();
        let (db, st) = exec(&pods, "mlmd-0", "mlmd-grpc-server", &["cat", "/data/mlmd.db"], None).await;
        assert_eq!(st.status.as_deref(), Some("Success"));
        assert_eq!(db, std::fs::read(sb.layout.mlmd_db()).unwrap());
        sb.model().update(|m| { m.faults.k8s_v4_only = false; Ok(()) }).unwrap();

        // A pod with two containers needs one named, as on a real API server.
        let err = pods.exec("mlmd-0", ["true"], &AttachParams::default()).await.err().expect("no container");
        assert!(err.to_string().contains("a container name must be specified for pod mlmd-0, choose one of: [charm mlmd-grpc-server]"), "{err}");

        // The CKF 1.8 container name does not exist on a 1.9 model.
        let err = pods
            .exec(
                "mlmd-0",
                ["true"],
                &AttachParams::default().container("mlmd"),
            )
            .await
            .err()
            .expect("bad container");
        assert!(
            err.to_string()
                .contains("container mlmd is not valid for pod mlmd-0"),
            "{err}"
        );
    });
}

#[test]
fn portforward_reaches_minio_and_custom_resources_are_listed() {
    let sb = sandbox();
    let (rt, pods, client) = pods_of(&sb);
    rt.block_on(async {
        // A local listener that forwards each connection through the API to minio-0:9000, the
        // way the agent reaches MinIO from outside the cluster.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let fwd_pods = pods.clone();
        let server = tokio::spawn(async move {
            loop {
                let (mut conn, _) = listener.accept().await.unwrap();
                let pods = fwd_pods.clone();
                tokio::spawn(async move {
                    let mut pf = pods.portforward("minio-0", &[9000]).await.unwrap();
                    let mut upstream = pf.take_stream(9000).unwrap();
                    let _ = tokio::io::copy_bidirectional(&mut conn, &mut upstream).await;
                });
            }
        });
        let mut target = sb.info.minio.target("mlpipeline");
        target.endpoint = format!("http://127.0.0.1:{port}");
        let bucket = target.open().unwrap();
        let listed = bucket.list("".into(), None).await.unwrap();
        let keys: Vec<String> = listed
            .iter()
            .flat_map(|r| r.contents.iter().map(|o| o.key.clone()))
            .collect();
        let expected = backup_agent_sandbox::seed::bucket_objects(&options().bucket);
        assert_eq!(keys.len(), expected.len());
        let big = expected.iter().find(|o| o.size > 8 << 20).unwrap();
        let body = bucket.get_object(&big.key).await.unwrap();
        let want = backup_agent_sandbox::seed::ContentReader::new(sb.info.seed, &big.key, big.size)
            .to_vec();
        assert_eq!(Sha256::digest(body.as_slice()), Sha256::digest(&want));
        server.abort();

        // A port nothing listens on: an error on the port's error channel.
        let mut pf = pods.portforward("mlmd-0", &[1234]).await.unwrap();
        let err = pf.take_error(1234).unwrap().await;
        assert!(err
            .unwrap_or_default()
            .contains("error forwarding port 1234"));

        // Argo Workflows and Katib Experiments in all namespaces.
        let wf = ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk("argoproj.io", "v1alpha1", "Workflow"),
            "workflows",
        );
        let ex = ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk("kubeflow.org", "v1beta1", "Experiment"),
            "experiments",
        );
        let workflows: Api<DynamicObject> = Api::all_with(client.clone(), &wf);
        assert!(workflows
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .is_empty());
        sb.model()
            .update(|m| {
                m.k8s.workflows.push(backup_agent_sandbox::k8s::workflow(
                    "train-abc12",
                    "kubeflow-user",
                    "Running",
                ));
                m.k8s
                    .experiments
                    .push(backup_agent_sandbox::k8s::experiment(
                        "tune-lr",
                        "kubeflow-user",
                        "Running",
                    ));
                Ok(())
            })
            .unwrap();
        let items = workflows.list(&ListParams::default()).await.unwrap().items;
        assert_eq!(items.len(), 1);
        assert_eq!(items[0].metadata.name.as_deref(), Some("train-abc12"));
        assert_eq!(items[0].data["status"]["phase"], "Running");
        let exps: Api<DynamicObject> = Api::namespaced_with(client.clone(), "kubeflow-user", &ex);
        let items = exps.list(&ListParams::default()).await.unwrap().items;
        assert_eq!(items[0].data["status"]["conditions"][1]["type"], "Running");
    });
}

#[test]
fn a_deleted_pod_comes_back_and_faults_and_auth_are_enforced() {
    let sb = sandbox();
    let (rt, pods, _) = pods_of(&sb);
    rt.block_on(async {
        let before = pods.get("mlmd-0").await.unwrap();
        let uid = before.metadata.uid.clone().unwrap();
        // Long enough a gap that a loaded machine still sees the pod absent.
        sb.model()
            .update(|m| {
                m.timing.pod_recreate_ms = 1500;
                Ok(())
            })
            .unwrap();
        pods.delete("mlmd-0", &DeleteParams::default()).await.unwrap();
        let ready = |p: &Pod| {
            p.status.as_ref().and_then(|s| s.conditions.as_ref()).is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
        };
        // Terminating, then gone, then back with a new uid, then ready: poll each step.
        let mut saw_gone = false;
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            match pods.get_opt("mlmd-0").await.unwrap() {
                None => saw_gone = true,
                Some(p) if p.metadata.uid.as_deref() != Some(uid.as_str()) && ready(&p) => break,
                Some(_) => {}
            }
            assert!(std::time::Instant::now() < deadline, "mlmd-0 did not come back");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(saw_gone, "the pod was never absent between deletion and re-creation");
        let again = pods.get("mlmd-0").await.unwrap();
        let reread = pods.get("mlmd-0").await.unwrap();
        assert_eq!(again.metadata.uid, reread.metadata.uid, "a pod's uid is stable between reads");
        assert_eq!(again.status.unwrap().container_statuses.unwrap()[0].restart_count, 1);
        // The database on the pod's volume survived the restart.
        let (db, _) = exec(&pods, "mlmd-0", "mlmd-grpc-server", &["cat", "/data/mlmd.db"], None).await;
        assert_eq!(db, std::fs::read(sb.layout.mlmd_db()).unwrap());

        // An exec stream cut mid-file: fewer bytes and no exit status.
        sb.model().update(|m| { m.faults.exec_cut_after_bytes = Some(10_000); Ok(()) }).unwrap();
        let ap = AttachParams::default().container("mlmd-grpc-server").stdout(true).stderr(false);
        let mut p = pods.exec("mlmd-0", ["cat", "/data/mlmd.db"], &ap).await.unwrap();
        let mut out = p.stdout().unwrap();
        let status = p.take_status().unwrap();
        // kube does not end stdout when a connection breaks without a close frame: read until
        // the process's message loop is over, whichever way it ended.
        let mut got = vec![];
        let mut buf = [0u8; 8192];
        let join = p.join();
        tokio::pin!(join);
        let joined = loop {
            tokio::select! {
                biased;
                n = out.read(&mut buf) => match n.unwrap() {
                    0 => break (&mut join).await,
                    n => got.extend_from_slice(&buf[..n]),
                },
                r = &mut join => break r,
            }
        };
        let _ = joined;
        assert!(got.len() <= 10_000 && (got.len() as u64) < std::fs::metadata(sb.layout.mlmd_db()).unwrap().len());
        assert!(status.await.is_none(), "a cut stream must not report success");

        // The API down: 503 with a Status body.
        sb.model().update(|m| { m.faults.exec_cut_after_bytes = None; m.faults.k8s_unavailable = true; Ok(()) }).unwrap();
        // kube retries 503s with a long backoff by default; look at the first answer.
        let mut cfg = kube::Config::from_custom_kubeconfig(kube::config::Kubeconfig::read_from(sb.layout.kubeconfig()).unwrap(), &Default::default()).await.unwrap();
        cfg.default_retry = false;
        let no_retry: Api<Pod> = Api::namespaced(Client::try_from(cfg).unwrap(), "kubeflow");
        let err = no_retry.get("mlmd-0").await.unwrap_err();
        assert!(matches!(&err, kube::Error::Api(s) if s.code == 503), "{err}");
        sb.model().update(|m| { m.faults.k8s_unavailable = false; Ok(()) }).unwrap();

        // A wrong token is refused.
        let mut cfg = kube::Config::from_custom_kubeconfig(kube::config::Kubeconfig::read_from(sb.layout.kubeconfig()).unwrap(), &Default::default()).await.unwrap();
        cfg.auth_info.token = Some("wrong".to_string().into());
        let bad: Api<Pod> = Api::namespaced(Client::try_from(cfg).unwrap(), "kubeflow");
        let err = bad.get("mlmd-0").await.unwrap_err();
        assert!(matches!(&err, kube::Error::Api(s) if s.code == 401), "{err}");
        let err = pods.get("no-such-pod").await.unwrap_err();
        assert!(matches!(&err, kube::Error::Api(s) if s.code == 404 && s.message == "pods \"no-such-pod\" not found"), "{err}");
    });
}
