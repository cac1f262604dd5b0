#![allow(dead_code)]
//! Test support shared by the library's integration tests.

use backup_agent_sandbox::{Sandbox, UpOptions};

/// The sandbox binary cargo built next to this test (`cargo test --workspace` builds it).
pub fn sandbox_exe() -> std::path::PathBuf {
    let exe = std::env::current_exe().unwrap();
    let p = exe
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("backup-agent-sandbox");
    assert!(
        p.exists(),
        "{} is missing: build it with `cargo build -p backup-agent-sandbox`",
        p.display()
    );
    p
}

/// A sandbox with `small` small objects in mlpipeline and no large ones.
pub fn sandbox(small: usize) -> Sandbox {
    sandbox_with(small, |_| {})
}

/// Runs the `backup-agent` CLI against the sandbox, with `env` on top of the sandbox's (an
/// empty value unsets); returns (exit code, stdout, stderr).
pub fn agent(sb: &Sandbox, args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let mut cmd = sb.command(env!("CARGO_BIN_EXE_backup-agent"));
    cmd.args(args).env_remove("RUST_LOG");
    for (k, v) in env {
        if v.is_empty() {
            cmd.env_remove(k);
        } else {
            cmd.env(k, v);
        }
    }
    let out = cmd.output().expect("running backup-agent");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Scale and unit count of every application, as the model holds them.
pub fn scales(sb: &Sandbox) -> std::collections::BTreeMap<String, (u32, usize)> {
    sb.model()
        .update(|m| {
            Ok(m.apps
                .iter()
                .map(|(n, a)| (n.clone(), (a.scale, a.units.len())))
                .collect())
        })
        .unwrap()
}

/// The whole destination bucket (not only the agent's path), for checks across everything.
pub fn dest_bucket(sb: &Sandbox) -> backup_agent::storage::Store {
    s3_store(&sb.info.dest, &sb.info.dest_bucket, "")
}

/// The agent's repository in the destination, as the sandbox's env file names it.
pub fn repo(sb: &Sandbox) -> backup_agent::storage::Store {
    s3_store(&sb.info.dest, &sb.info.dest_bucket, &sb.info.agent_path)
}

pub fn minio(sb: &Sandbox) -> backup_agent::storage::Store {
    s3_store(&sb.info.minio, "mlpipeline", "")
}

pub fn s3_store(
    server: &backup_agent_sandbox::env::ServerInfo,
    bucket: &str,
    path: &str,
) -> backup_agent::storage::Store {
    use backup_agent::secret::Secret;
    use backup_agent::storage::{S3Settings, Store, UriStyle};
    Store::s3(&S3Settings {
        endpoint: server.endpoint(),
        bucket: bucket.into(),
        path: path.into(),
        region: "us-east-1".into(),
        uri_style: UriStyle::Path,
        access_key: Secret::new(server.access_key.clone()),
        secret_key: Secret::new(server.secret_key.clone()),
        sse: None,
    })
    .unwrap()
}

/// Keys and ETags of every object in a store.
pub fn listing(store: &backup_agent::storage::Store) -> Vec<(String, Option<String>)> {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(store.list(""))
        .unwrap()
        .into_iter()
        .map(|o| (o.key, o.etag))
        .collect()
}

/// Makes the next `action` on `unit` (or on any unit of an application) fail with `message`.
pub fn fail_next_action(sb: &Sandbox, unit: &str, action: &str, message: &str) {
    sb.model()
        .update(|m| {
            m.faults
                .fail_next_action
                .push(backup_agent_sandbox::model::ActionFault {
                    unit: unit.into(),
                    action: Some(action.into()),
                    message: message.into(),
                });
            Ok(())
        })
        .unwrap();
}

pub fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Runtime::new().unwrap()
}

/// Every readable statefile in the sandbox's repository, oldest first. A backup whose
/// directory is listed but whose statefile is not there (yet, or any more: a run writing its
/// first objects, a prune forgetting it, while a daemon works) is left out; any other
/// unreadable statefile fails the test.
pub fn statefiles(sb: &Sandbox) -> Vec<backup_agent::repository::Statefile> {
    use backup_agent::repository::{self, CatalogError, Listed};
    use backup_agent::storage::StoreError;
    rt().block_on(repository::list(&repo(sb)))
        .unwrap()
        .into_iter()
        .filter_map(|l| match l {
            Listed::Backup(s) => Some(*s),
            Listed::Unreadable {
                error: CatalogError::Store(StoreError::NotFound { .. }),
                ..
            } => None,
            Listed::Unreadable { id, error } => panic!("{id}: {error}"),
        })
        .collect()
}

pub fn lock_held(sb: &Sandbox) -> bool {
    rt().block_on(repo(sb).head(&backup_agent::repository::lock_key()))
        .unwrap()
        .is_some()
}

/// A backup through the CLI, which must complete; its id.
pub fn backup(sb: &Sandbox, label: &str) -> String {
    let (code, out, err) = agent(
        sb,
        &["create-backup", "--label", label, "--output", "json"],
        &[],
    );
    assert_eq!(code, 0, "{out}\n{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v["statefile"]["backup-id"].as_str().unwrap().to_string()
}

/// Polls `ok` every 20 ms until it holds; fails the test naming `what` after `limit`.
pub fn wait_for(what: &str, limit: std::time::Duration, mut ok: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + limit;
    while !ok() {
        assert!(
            std::time::Instant::now() < deadline,
            "{what}: not reached in {limit:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Starts the `backup-agent` CLI in the background (stdout and stderr piped), with `env` on
/// top of the sandbox's.
pub fn spawn_agent(sb: &Sandbox, args: &[&str], env: &[(&str, &str)]) -> std::process::Child {
    use std::process::Stdio;
    let mut cmd = sb.command(env!("CARGO_BIN_EXE_backup-agent"));
    cmd.args(args)
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.spawn().expect("starting backup-agent")
}

/// Waits for a background run: (exit code, stdout, stderr).
pub fn finish(child: std::process::Child) -> (i32, String, String) {
    let out = child.wait_with_output().expect("waiting for backup-agent");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Ids of the completed backups, oldest first.
pub fn completed_ids(sb: &Sandbox) -> Vec<String> {
    statefiles(sb)
        .into_iter()
        .filter(|s| s.phase == backup_agent::repository::Phase::Completed)
        .map(|s| s.backup_id)
        .collect()
}

/// Every object of a store: key → (sha256 of the bytes, content type).
pub fn contents(
    store: &backup_agent::storage::Store,
) -> std::collections::BTreeMap<String, (String, String)> {
    use sha2::Digest;
    let rt = rt();
    let keys = rt.block_on(store.list("")).unwrap();
    keys.into_iter()
        .map(|o| {
            let (bytes, meta) = rt.block_on(store.get_with_meta(&o.key)).unwrap();
            (
                o.key,
                (hex::encode(sha2::Sha256::digest(&bytes)), meta.content_type),
            )
        })
        .collect()
}

/// Edits the `data` YAML string of minio's object-storage databag.
pub fn with_minio_data<T>(sb: &Sandbox, f: impl FnOnce(&mut String) -> T) -> T {
    let mut f = Some(f);
    sb.model()
        .update(|m| {
            let r = m
                .relations
                .iter_mut()
                .find(|r| r.interface == "object-storage")
                .unwrap();
            let data = r
                .app_data
                .get_mut("minio")
                .unwrap()
                .get_mut("data")
                .unwrap();
            Ok((f.take().unwrap())(data))
        })
        .unwrap()
}

/// Replaces the secret key in minio's object-storage relation data; returns the old one.
pub fn set_minio_relation_secret(sb: &Sandbox, secret: &str) -> String {
    with_minio_data(sb, |data| {
        let old = data
            .lines()
            .find_map(|l| l.strip_prefix("secret-key: "))
            .unwrap()
            .to_string();
        *data = data.replace(
            &format!("secret-key: {old}"),
            &format!("secret-key: {secret}"),
        );
        old
    })
}

/// Runs the `backup-agent` CLI outside any sandbox: no `BACKUP_AGENT_*`, `SSL_CERT_FILE` or
/// `RUST_LOG` from the test's environment, only `env`; (exit code, stdout, stderr).
pub fn cli(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_backup-agent"));
    cmd.args(args)
        .env_remove("RUST_LOG")
        .env_remove("SSL_CERT_FILE");
    for (k, _) in std::env::vars() {
        if k.starts_with("BACKUP_AGENT_") {
            cmd.env_remove(k);
        }
    }
    cmd.envs(env.iter().copied());
    let out = cmd.output().expect("running backup-agent");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A manifest's entries, read whole (tests only: the product reads it as a stream).
pub async fn read_manifest(
    store: &backup_agent::storage::Store,
    key: &str,
) -> Result<Vec<backup_agent::repository::Entry>, backup_agent::repository::ManifestError> {
    use futures::TryStreamExt;
    backup_agent::repository::manifest::read(store, key, None)
        .try_collect()
        .await
}

/// The entries of the manifest a backup's statefile names.
pub fn manifest_of(
    store: &backup_agent::storage::Store,
    sf: &backup_agent::repository::Statefile,
) -> Vec<backup_agent::repository::Entry> {
    let key = &sf.components.mlpipeline.as_ref().unwrap().manifest_key;
    rt().block_on(read_manifest(store, key)).unwrap()
}

/// Entries in the manifest format (zstd JSON lines), as a test forges a manifest.
pub fn manifest_bytes(entries: &[backup_agent::repository::Entry]) -> Vec<u8> {
    let mut text = Vec::new();
    for e in entries {
        serde_json::to_writer(&mut text, e).unwrap();
        text.push(b'\n');
    }
    zstd::encode_all(&text[..], 3).unwrap()
}

/// The sandbox's `juju` client: (exit code, stdout, stderr).
pub fn juju(sb: &Sandbox, args: &[&str]) -> (i32, String, String) {
    let o = sb
        .command(sb.layout.bin().join("juju"))
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// The sandbox's `juju`, which must succeed: its stdout.
pub fn juju_ok(sb: &Sandbox, args: &[&str]) -> String {
    let (code, out, err) = juju(sb, args);
    assert_eq!(code, 0, "juju {args:?}: {out}\n{err}");
    out
}

/// A sandbox built from `opts` on top of the small-bucket defaults.
pub fn sandbox_with(small: usize, tweak: impl FnOnce(&mut UpOptions)) -> Sandbox {
    let mut opts = UpOptions::new(sandbox_exe());
    opts.bucket.small = small;
    opts.bucket.large = 0;
    tweak(&mut opts);
    Sandbox::up(&opts).unwrap()
}
