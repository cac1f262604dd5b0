//! `backup-agent-sandbox up | status | fault | down` as a user runs them: the env file works
//! from a shell, `down` stops every process `up` started and leaves nothing outside the directory.

use std::path::{Path, PathBuf};
use std::process::Command;

use backup_agent_sandbox::process::alive;
use backup_agent_sandbox::Info;

/// Runs a command without the caller's sandbox in its environment; (exit code, stdout, stderr).
fn run(cmd: &mut Command) -> (i32, String, String) {
    let out = cmd.env_remove("BACKUP_AGENT_SANDBOX").output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn sandbox_cmd(dir: &Path, args: &[&str]) -> (i32, String, String) {
    run(Command::new(env!("CARGO_BIN_EXE_backup-agent-sandbox"))
        .args(args)
        .arg("--dir")
        .arg(dir))
}

fn shell(script: &str) -> (i32, String, String) {
    run(Command::new("bash").arg("-c").arg(script))
}

/// Names in a directory, to see what a run leaves behind.
fn entries(dir: &Path) -> std::collections::BTreeSet<String> {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn up_env_status_fault_down() {
    let home = PathBuf::from(std::env::var("HOME").unwrap_or_else(|_| "/root".into()));
    let (tmp_before, home_before) = (entries(Path::new("/tmp")), entries(&home));
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("sb");

    let (code, _, err) = sandbox_cmd(&dir, &["down"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("no sandbox at") && err.contains("backup-agent-sandbox up"),
        "{err}"
    );

    let (code, out, err) = sandbox_cmd(
        &dir,
        &[
            "up",
            "--objects",
            "4",
            "--large",
            "0",
            "--mlmd-runs",
            "2",
            "--mlmd-container",
            "mlmd",
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("use it: source"), "{out}");
    let info: Info =
        serde_json::from_slice(&std::fs::read(dir.join("sandbox.json")).unwrap()).unwrap();
    for pid in info.pids() {
        assert!(alive(pid), "pid {pid} should run");
    }

    // A second `up` on the same directory refuses.
    let (code, _, err) = sandbox_cmd(&dir, &["up"]);
    assert_eq!(code, 1);
    assert!(err.contains("already running"), "{err}");

    // The env file puts the simulated juju first on PATH and points KUBECONFIG at the sandbox.
    let env = dir.join("env");
    let (code, out, err) = shell(&format!(
        "source '{}' && juju status --format=json && echo \"$KUBECONFIG\"",
        env.display()
    ));
    assert_eq!(code, 0, "{err}");
    let mut lines = out.lines();
    let st: serde_json::Value = serde_json::from_str(lines.next().unwrap()).unwrap();
    assert_eq!(st["model"]["name"], "kubeflow");
    assert_eq!(
        lines.next().unwrap(),
        dir.canonicalize()
            .unwrap()
            .join("kubeconfig")
            .display()
            .to_string()
    );
    let (_, out, _) = shell(&format!(
        "source '{}' && juju run kfp-db/1 create-backup --format=json --wait=5m",
        env.display()
    ));
    let run: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(run["kfp-db/1"]["status"], "completed", "{out}");

    // CKF 1.8 names the MLMD container `mlmd`: exec through kube with that name.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let db = rt.block_on(async {
        use tokio::io::AsyncReadExt;
        let kc = kube::config::Kubeconfig::read_from(dir.join("kubeconfig")).unwrap();
        let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default())
            .await
            .unwrap();
        let pods: kube::Api<k8s_openapi::api::core::v1::Pod> =
            kube::Api::namespaced(kube::Client::try_from(cfg).unwrap(), "kubeflow");
        let ap = kube::api::AttachParams::default()
            .container("mlmd")
            .stderr(false);
        let mut p = pods
            .exec("mlmd-0", ["cat", "/data/mlmd.db"], &ap)
            .await
            .unwrap();
        let mut out = p.stdout().unwrap();
        let mut buf = vec![];
        out.read_to_end(&mut buf).await.unwrap();
        p.join().await.unwrap();
        buf
    });
    assert_eq!(
        db,
        std::fs::read(dir.join("data/pods/mlmd-0/data/mlmd.db")).unwrap()
    );

    let (code, out, _) = sandbox_cmd(&dir, &["status"]);
    assert_eq!(code, 0);
    assert!(
        out.contains("kubernetes API") && out.contains("running"),
        "{out}"
    );

    // Faults through the CLI, with juju's wording for unknown names.
    let (code, _, err) = sandbox_cmd(&dir, &["fault", "fail-action", "nope/0"]);
    assert_eq!(
        (code, err.trim()),
        (
            1,
            "error: changing the sandbox model: unit \"nope/0\" not found"
        )
    );
    let (code, _, _) = sandbox_cmd(&dir, &["fault", "workflow", "train-1"]);
    assert_eq!(code, 0);
    let model: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("model.json")).unwrap()).unwrap();
    assert_eq!(model["k8s"]["workflows"][0]["metadata"]["name"], "train-1");

    let (code, out, err) = sandbox_cmd(&dir, &["down"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("stopped processes"), "{out}");
    for pid in info.pids() {
        assert!(!alive(pid), "pid {pid} still runs after down");
    }
    // SeaweedFS's gRPC sockets are the only files it puts outside the directory: gone.
    for port in info.minio.grpc_ports.iter().chain(&info.dest.grpc_ports) {
        for kind in ["master", "volume", "filer", "s3", "admin"] {
            let sock = format!("/tmp/seaweedfs-{kind}-grpc-{port}.sock");
            assert!(!Path::new(&sock).exists(), "{sock} left behind");
        }
    }
    let (code, _, _) = sandbox_cmd(&dir, &["down", "--purge"]);
    assert_eq!(code, 1, "down twice: nothing to stop");
    drop(rt);
    tmp.close().unwrap();
    // Nothing new outside the sandbox's directory: not in /tmp, not in $HOME. Other tests run
    // beside this one (cargo-nextest) and make their own temporary directories in /tmp: those
    // names are theirs (this sandbox's own SeaweedFS sockets are checked above), anything else
    // new is this sandbox's.
    let others = |n: &String| {
        [
            ".tmp",
            "ba-",
            "backup-agent-",
            "nextest",
            "seaweedfs-",
            "pebble-",
        ]
        .iter()
        .any(|p| n.starts_with(p))
    };
    let new: Vec<String> = entries(Path::new("/tmp"))
        .difference(&tmp_before)
        .filter(|n| !others(n))
        .cloned()
        .collect();
    assert!(new.is_empty(), "left in /tmp: {new:?}");
    assert_eq!(entries(&home), home_before);
}
