//! The real, unmodified `kubectl` against the sandbox's Kubernetes API: an administrator's
//! first commands, and the manual procedure's MLMD steps (`kubectl exec`, `kubectl cp`)
//! replayed and checked against what the agent captures.

use std::path::Path;

use crate::common::{agent, juju, sandbox};
use backup_agent_sandbox::Sandbox;

/// `kubectl ARGS` with the sandbox's kubeconfig and a discovery cache of its own (kubectl
/// caches discovery by host and port for hours; a test must not read another's).
fn kubectl_with(
    sb: &Sandbox,
    cache: &Path,
    kubeconfig: &Path,
    args: &[&str],
) -> (i32, String, String) {
    let bin = which::which("kubectl").expect(
        "kubectl is not installed: scripts/bootstrap installs it (this test runs the real client)",
    );
    let out = sb
        .command(bin)
        .arg("--cache-dir")
        .arg(cache)
        .args(args)
        .env("KUBECONFIG", kubeconfig)
        .env_remove("KUBECTL_REMOTE_COMMAND_WEBSOCKETS")
        .output()
        .expect("running kubectl");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn ok(r: (i32, String, String), what: &str) -> String {
    assert_eq!(r.0, 0, "kubectl {what}: {}\n{}", r.1, r.2);
    r.1
}

#[test]
fn kubectl_reads_execs_copies_scales_and_is_refused_like_a_real_api_server() {
    let sb = sandbox(3);
    let cache = tempfile::tempdir().unwrap();
    let kc = sb.layout.kubeconfig();
    let k = |args: &[&str]| kubectl_with(&sb, cache.path(), &kc, args);
    let c = sb.info.mlmd_container.clone();

    let pods = ok(k(&["get", "pods", "-n", "kubeflow"]), "get pods");
    let header: Vec<&str> = pods.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        ["NAME", "READY", "STATUS", "RESTARTS", "AGE"],
        "{pods}"
    );
    let mlmd = pods
        .lines()
        .find(|l| l.starts_with("mlmd-0 "))
        .expect(&pods);
    assert!(mlmd.contains("2/2") && mlmd.contains("Running"), "{mlmd}");

    let all = ok(k(&["get", "pods", "-A"]), "get pods -A");
    assert!(all.starts_with("NAMESPACE"), "{all}");
    assert!(
        all.lines()
            .any(|l| l.starts_with("kubeflow ") && l.contains("kfp-db-0")),
        "{all}"
    );

    let json: serde_json::Value =
        serde_json::from_str(&ok(k(&["get", "pods", "-o", "json"]), "get pods -o json")).unwrap();
    let names: Vec<&str> = json["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["metadata"]["name"].as_str().unwrap())
        .collect();
    assert!(
        names.contains(&"mlmd-0") && names.contains(&"minio-0"),
        "{names:?}"
    );
    assert_eq!(
        names.len(),
        pods.lines().count() - 1,
        "the same pods as the table"
    );

    let described = ok(k(&["describe", "pod", "mlmd-0"]), "describe pod");
    for want in [
        "Name:",
        "mlmd-0",
        "Namespace:",
        "kubeflow",
        "Status:",
        "Running",
        "Events:",
    ] {
        assert!(described.contains(want), "{want}: {described}");
    }

    let workloads = ok(
        k(&["get", "statefulsets,deployments"]),
        "get statefulsets,deployments",
    );
    assert!(workloads.contains("statefulset.apps/kfp-db"), "{workloads}");
    assert!(
        workloads.contains("deployment.apps/modeloperator"),
        "{workloads}"
    );

    let ls = ok(
        k(&["exec", "mlmd-0", "-c", &c, "--", "ls", "/"]),
        "exec ls /",
    );
    assert!(ls.lines().any(|l| l == "data"), "{ls}");
    let failed = k(&["exec", "mlmd-0", "-c", &c, "--", "ls", "/no-such-dir"]);
    assert_eq!(failed.0, 2, "ls's exit code comes back: {failed:?}");
    assert!(
        failed.2.contains("command terminated with exit code 2"),
        "{}",
        failed.2
    );

    let logs = ok(k(&["logs", "mlmd-0", "-c", &c]), "logs");
    assert!(logs.contains("Started daemon."), "{logs}");

    let resources = ok(k(&["api-resources"]), "api-resources");
    for want in ["pods", "statefulsets", "deployments", "apps/v1", "sts"] {
        assert!(resources.contains(want), "{want}: {resources}");
    }

    // Scaling the metadata writer's StatefulSet scales the application.
    let scaled = ok(
        k(&[
            "scale",
            "statefulset",
            "kfp-metadata-writer",
            "--replicas=0",
        ]),
        "scale",
    );
    assert!(
        scaled.contains("statefulset.apps/kfp-metadata-writer scaled"),
        "{scaled}"
    );
    let (_, status, _) = juju(&sb, &["status", "--format=json"]);
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(status["applications"]["kfp-metadata-writer"]["scale"], 0);
    ok(
        k(&[
            "scale",
            "statefulset",
            "kfp-metadata-writer",
            "--replicas=1",
        ]),
        "scale back",
    );

    // RBAC: the token's Role covers the model's namespace only.
    let (code, _, err) = k(&["get", "statefulsets", "-n", "default"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("Error from server (Forbidden): statefulsets.apps is forbidden: User \"system:serviceaccount:kubeflow:backup-agent\" cannot list resource \"statefulsets\" in API group \"apps\" in the namespace \"default\""),
        "{err}"
    );
    // A token the server does not know: 401, as kubectl words it. (With no token at all
    // kubectl would ask for a user name on the terminal.)
    let text = std::fs::read_to_string(&kc).unwrap();
    let wrong: String = text
        .lines()
        .map(|l| {
            if l.trim_start().starts_with("token:") {
                "    token: not-the-sandbox-token\n".to_string()
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    let bare = cache.path().join("wrong-token.kubeconfig");
    std::fs::write(&bare, wrong).unwrap();
    let (code, _, err) = kubectl_with(&sb, cache.path(), &bare, &["get", "pods"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("error: You must be logged in to the server"),
        "{err}"
    );
}

#[test]
fn the_manual_mlmd_steps_replayed_with_kubectl_give_the_bytes_the_agent_captures() {
    let sb = sandbox(2);
    let cache = tempfile::tempdir().unwrap();
    let kc = sb.layout.kubeconfig();
    let k = |args: &[&str]| kubectl_with(&sb, cache.path(), &kc, args);
    let c = sb.info.mlmd_container.clone();

    // The seed's steps: the metadata writer stopped, a copy made in the pod, copied out.
    juju(&sb, &["scale-application", "kfp-metadata-writer", "0"]);
    ok(
        k(&[
            "exec",
            "mlmd-0",
            "-c",
            &c,
            "--",
            "cp",
            "/data/mlmd.db",
            "/tmp/mlmd-backup.db",
        ]),
        "exec cp",
    );
    let out = cache.path().join("mlmd-backup.db");
    ok(
        k(&[
            "cp",
            "kubeflow/mlmd-0:/tmp/mlmd-backup.db",
            out.to_str().unwrap(),
            "-c",
            &c,
        ]),
        "cp",
    );
    let manual = std::fs::read(&out).unwrap();
    assert_eq!(manual, std::fs::read(sb.layout.mlmd_db()).unwrap());
    juju(&sb, &["scale-application", "kfp-metadata-writer", "1"]);

    // The agent's capture of the same file, downloaded and checked.
    let (code, out_json, err) = agent(
        &sb,
        &["create-backup", "--components", "mlmd", "--output", "json"],
        &[],
    );
    assert_eq!(code, 0, "{out_json}\n{err}");
    let v: serde_json::Value = serde_json::from_str(&out_json).unwrap();
    let id = v["statefile"]["backup-id"].as_str().unwrap();
    let dir = cache.path().join("download");
    let (code, o, err) = agent(&sb, &["download", id, dir.to_str().unwrap()], &[]);
    assert_eq!(code, 0, "{o}\n{err}");
    assert_eq!(std::fs::read(dir.join("mlmd.db")).unwrap(), manual);
}
