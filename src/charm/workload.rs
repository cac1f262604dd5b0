//! The daemon in the workload container: the charm pushes its own binary, the juju client, the
//! controller login and the destination's keys through Pebble, and a layer that runs
//! `backup-agent serve` as a service. Secrets travel in files (mode 0600) the service reads,
//! never in the layer: Pebble's plan is readable by anyone who can reach its socket.

use std::path::{Path, PathBuf};
use std::time::Duration;

use sha2::Digest;

use crate::charm::hook_tools::HookTools;
use crate::charm::pebble::{Pebble, Push};

use super::controller::{self, ControllerAccess};
use super::status::Ready;
use super::DispatchEnv;

pub const CONTAINER: &str = "backup-agent";
pub const SERVICE: &str = "backup-agent";
const HOME: &str = "/opt/backup-agent";

/// Where Juju puts the workload containers' Pebble sockets (the sandbox points elsewhere).
pub fn containers_dir() -> PathBuf {
    std::env::var_os("BACKUP_AGENT_CONTAINERS_DIR")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/charm/containers"))
}

/// The API token: made once per unit and kept in the charm's directory, which Juju keeps
/// across hooks and upgrades.
fn api_token(env: &DispatchEnv) -> Result<String, String> {
    use std::os::unix::fs::PermissionsExt;
    let path = env.charm_dir.join(".backup-agent-api-token");
    if let Ok(t) = std::fs::read_to_string(&path) {
        if !t.trim().is_empty() {
            return Ok(t.trim().to_string());
        }
    }
    let token = format!(
        "{:016x}{:016x}",
        rand::random::<u64>(),
        rand::random::<u64>()
    );
    std::fs::write(&path, &token).map_err(|e| format!("{}: {e}", path.display()))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(token)
}

fn shell_word(s: &str) -> String {
    if !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./:,=*".contains(&b))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

/// A change of size or time of a file we push, to push binaries only when they changed.
fn stamp(p: &Path) -> String {
    std::fs::metadata(p)
        .map(|m| format!("{}:{}:{:?}", p.display(), m.len(), m.modified().ok()))
        .unwrap_or_default()
}

/// What the service runs and with what, from the charm's settings and relation data.
pub struct Plan {
    pub command: String,
    /// KEY=VALUE lines with the secrets (mode 0600 in the container).
    pub env_file: String,
    pub juju_data: Vec<(&'static str, String)>,
    pub token: String,
    /// s3-integrator's tls-ca-chain as one PEM file (empty: none).
    pub ca_chain: String,
    /// The s3-secondary relation's, likewise.
    pub secondary_ca_chain: String,
}

pub fn plan(ready: &Ready, access: &ControllerAccess, token: String) -> Plan {
    let s = &ready.settings;
    let d = &ready.destination.settings;
    let mut args: Vec<String> = vec![
        format!("{HOME}/bin/backup-agent"),
        "serve".into(),
        "--env-file".into(),
        format!("{HOME}/serve.env"),
        "--model".into(),
        s.model.clone(),
        "--listen".into(),
        s.listen.to_string(),
        "--token-file".into(),
        format!("{HOME}/token"),
        "--kfp-db-app".into(),
        s.names.kfp_db.clone(),
        "--katib-db-app".into(),
        s.names.katib_db.clone(),
        "--metadata-writer-app".into(),
        s.names.metadata_writer.clone(),
        "--mlmd-app".into(),
        s.names.mlmd.clone(),
        "--minio-app".into(),
        s.names.minio.clone(),
        "--kfp-ui-app".into(),
        s.names.kfp_ui.clone(),
        "--minio-bucket".into(),
        s.minio_bucket.clone(),
        "--checkers".into(),
        s.checkers.to_string(),
        "--transfers".into(),
        s.transfers.to_string(),
    ];
    if let Some(c) = &s.mlmd_container {
        args.extend(["--mlmd-container".into(), c.clone()]);
    }
    if let Some(b) = s.bwlimit {
        args.extend(["--bwlimit".into(), b.to_string()]);
    }
    if let Some(sch) = &s.schedule {
        args.extend(["--schedule".into(), sch.text.clone()]);
    }
    if let Some(sch) = &s.drill_schedule {
        args.extend(["--drill-schedule".into(), sch.text.clone()]);
    }
    if let Some(sample) = &s.drill_sample {
        args.extend(["--drill-sample".into(), sample.to_string()]);
    }
    if !s.retention.is_empty() {
        args.extend(["--retention".into(), s.retention.to_string()]);
    }
    // Without the relation, `ready` has already blocked a unit that copies after backups.
    if s.copy_after_backup && ready.secondary.is_some() {
        args.push("--copy-after-backup".into());
        if !s.secondary_retention.is_empty() {
            args.extend([
                "--secondary-retention".into(),
                s.secondary_retention.to_string(),
            ]);
        }
    }
    if s.bucket_requests {
        args.push("--requests".into());
        if s.allow_restore_requests {
            args.push("--allow-restore-requests".into());
        }
    }
    // Everything about the destination in the file: the keys are secret, the rest belongs
    // with them.
    let ca_chain: String = ready
        .destination
        .tls_ca_chain
        .iter()
        .map(|p| format!("{}\n", p.trim()))
        .collect();
    let mut vars = destination_env("BACKUP_AGENT_S3_", d);
    if !ca_chain.is_empty() {
        vars.push((
            "BACKUP_AGENT_S3_TLS_CA_CHAIN".into(),
            format!("{HOME}/ca.pem"),
        ));
    }
    let mut secondary_ca_chain = String::new();
    if let Some(sec) = &ready.secondary {
        vars.extend(destination_env("BACKUP_AGENT_SECONDARY_S3_", &sec.settings));
        secondary_ca_chain = sec
            .tls_ca_chain
            .iter()
            .map(|p| format!("{}\n", p.trim()))
            .collect();
        if !secondary_ca_chain.is_empty() {
            vars.push((
                "BACKUP_AGENT_SECONDARY_S3_TLS_CA_CHAIN".into(),
                format!("{HOME}/ca-secondary.pem"),
            ));
        }
    }
    let env_file: String = vars.iter().map(|(k, v)| format!("{k}={v}\n")).collect();
    Plan {
        command: args
            .iter()
            .map(|a| shell_word(a))
            .collect::<Vec<_>>()
            .join(" "),
        env_file,
        juju_data: access.juju_data_files(),
        token,
        ca_chain,
        secondary_ca_chain,
    }
}

/// One destination's settings as the daemon's variables (`prefix` + ENDPOINT, ...), keys
/// included: they go in the 0600 env file, never in the layer.
fn destination_env(prefix: &str, d: &crate::storage::S3Settings) -> Vec<(String, String)> {
    let uri = match d.uri_style {
        crate::storage::UriStyle::Host => "host",
        _ => "path",
    };
    let mut v = vec![
        ("ENDPOINT", d.endpoint.clone()),
        ("BUCKET", d.bucket.clone()),
        ("PATH", d.path.clone()),
        ("REGION", d.region.clone()),
        ("URI_STYLE", uri.to_string()),
        ("ACCESS_KEY", d.access_key.expose().to_string()),
        ("SECRET_KEY", d.secret_key.expose().to_string()),
    ];
    match &d.sse {
        Some(crate::storage::Sse::S3) => v.push(("SSE", "AES256".into())),
        Some(crate::storage::Sse::Kms { key_id }) => {
            v.push(("SSE", "aws:kms".into()));
            if let Some(k) = key_id {
                v.push(("SSE_KMS_KEY_ID", k.clone()));
            }
        }
        None => {}
    }
    v.into_iter()
        .map(|(k, val)| (format!("{prefix}{k}"), val))
        .collect()
}

/// The layer: no secret in it. `config-hash` changes when the pushed configuration does, so
/// a replan restarts the service on new keys or settings.
pub fn layer(command: &str, config_hash: &str) -> String {
    let v = serde_json::json!({
        "summary": "backup-agent daemon",
        "description": "Scheduled backups of the Charmed Kubeflow control plane, its HTTP API and metrics",
        "services": {SERVICE: {
            "override": "replace",
            "summary": "backup-agent serve",
            "command": command,
            "startup": "enabled",
            "on-failure": "restart",
            "environment": {
                "JUJU_DATA": format!("{HOME}/juju-data"),
                "BACKUP_AGENT_JUJU": format!("{HOME}/bin/juju"),
                "BACKUP_AGENT_CONFIG_HASH": config_hash,
            },
        }},
    });
    serde_yaml::to_string(&v).expect("layer YAML")
}

/// Pushes what the daemon needs and replans. `fresh`: the container (re)started or the charm
/// was upgraded, so the binaries go again whatever the stamps say.
pub fn configure(
    env: &DispatchEnv,
    tools: &HookTools,
    ready: &Ready,
    fresh: bool,
) -> Result<String, String> {
    let pebble = Pebble::for_container(&containers_dir(), CONTAINER);
    if !pebble.socket().exists() {
        return Err(format!(
            "waiting for Pebble in container {CONTAINER} ({} is not there yet)",
            pebble.socket().display()
        ));
    }
    let secret = ready
        .settings
        .controller_secret
        .as_deref()
        .ok_or("controller-secret is not set")?;
    let content = tools
        .secret_get(secret)
        .map_err(|e| format!("cannot read controller-secret {secret}: {e}"))?;
    let access = ControllerAccess::from_secret(secret, &content)?;
    let juju = controller::client_binary(tools, &env.app)?;
    let me = std::env::current_exe().map_err(|e| format!("this binary: {e}"))?;
    let plan = plan(ready, &access, api_token(env)?);

    let mut config = sha2::Sha256::new();
    config.update(plan.command.as_bytes());
    config.update(plan.env_file.as_bytes());
    for (_, body) in &plan.juju_data {
        config.update(body.as_bytes());
    }
    config.update(plan.token.as_bytes());
    config.update(plan.ca_chain.as_bytes());
    config.update(plan.secondary_ca_chain.as_bytes());
    let binaries = format!("{}\n{}", stamp(&me), stamp(&juju));
    config.update(binaries.as_bytes());
    let config_hash = hex::encode(config.finalize())[..16].to_string();

    let marker = env.charm_dir.join(".backup-agent-workload");
    let pushed = std::fs::read_to_string(&marker).unwrap_or_default();
    let rt = crate::interrupt::runtime().map_err(|e| e.to_string())?;
    rt.block_on(async {
        pebble
            .system_info()
            .await
            .map_err(|e| format!("Pebble is not answering: {e}"))?;
        if fresh || pushed.trim() != binaries {
            let own = std::fs::read(&me).map_err(|e| format!("{}: {e}", me.display()))?;
            let client = std::fs::read(&juju).map_err(|e| format!("{}: {e}", juju.display()))?;
            pebble
                .push(&[
                    Push {
                        path: &format!("{HOME}/bin/backup-agent"),
                        content: &own,
                        permissions: "755",
                    },
                    Push {
                        path: &format!("{HOME}/bin/juju"),
                        content: &client,
                        permissions: "755",
                    },
                ])
                .await
                .map_err(|e| e.to_string())?;
        }
        let mut files = vec![
            (
                format!("{HOME}/serve.env"),
                plan.env_file.as_bytes().to_vec(),
            ),
            (format!("{HOME}/token"), plan.token.as_bytes().to_vec()),
        ];
        if !plan.ca_chain.is_empty() {
            files.push((format!("{HOME}/ca.pem"), plan.ca_chain.as_bytes().to_vec()));
        }
        if !plan.secondary_ca_chain.is_empty() {
            files.push((
                format!("{HOME}/ca-secondary.pem"),
                plan.secondary_ca_chain.as_bytes().to_vec(),
            ));
        }
        for (name, body) in &plan.juju_data {
            files.push((format!("{HOME}/juju-data/{name}"), body.as_bytes().to_vec()));
        }
        let pushes: Vec<Push> = files
            .iter()
            .map(|(p, c)| Push {
                path: p,
                content: c,
                permissions: "600",
            })
            .collect();
        pebble.push(&pushes).await.map_err(|e| e.to_string())?;
        pebble
            .add_layer(SERVICE, &layer(&plan.command, &config_hash))
            .await
            .map_err(|e| e.to_string())?;
        let change = pebble
            .replan(Duration::from_secs(60))
            .await
            .map_err(|e| e.to_string())?;
        if change.status != "Done" {
            return Err(format!(
                "starting the daemon: change {} is {}: {}",
                change.id,
                change.status,
                change.err.unwrap_or_default()
            ));
        }
        Ok::<(), String>(())
    })?;
    let _ = std::fs::write(&marker, &binaries);
    Ok(format!(
        "daemon on {}{}",
        ready.settings.listen,
        ready
            .settings
            .schedule
            .as_ref()
            .map(|s| format!(", schedule {}", s.text))
            .unwrap_or_default()
    ))
}
