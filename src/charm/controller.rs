//! How the unit reaches the Juju controller. No hook tool scales another application or runs
//! its action, so the charm drives a `juju` client (the `juju-client` resource) with
//! credentials from a Juju secret the operator grants it (config `controller-secret`). The
//! credentials are written to a private JUJU_DATA directory that lives only as long as the run.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use serde_json::json;

use crate::charm::hook_tools::HookTools;
use crate::juju::JujuCli;
use crate::secret::Secret;

pub const RESOURCE: &str = "juju-client";
/// The name the written client configuration gives the controller.
const CONTROLLER: &str = "backup-agent-controller";

/// What the operator stores in the secret.
#[derive(Debug, Clone)]
pub struct ControllerAccess {
    pub uuid: String,
    pub addresses: Vec<String>,
    pub ca_cert: String,
    pub username: String,
    pub password: Secret,
}

impl ControllerAccess {
    /// Reads the secret's content; the message names the missing key.
    pub fn from_secret(id: &str, content: &BTreeMap<String, Secret>) -> Result<Self, String> {
        let get = |k: &str| {
            content
                .get(k)
                .map(|v| v.expose().trim().to_string())
                .filter(|v| !v.is_empty())
                .ok_or_else(|| {
                    format!(
                        "the controller secret {id} has no `{k}`: it needs controller-uuid, controller-addresses, ca-cert, username and password (README: Controller access)"
                    )
                })
        };
        let addresses: Vec<String> = get("controller-addresses")?
            .split(',')
            .map(|a| a.trim().to_string())
            .filter(|a| !a.is_empty())
            .collect();
        if let Some(bad) = addresses.iter().find(|a| !a.contains(':')) {
            return Err(format!(
                "the controller secret {id}: address {bad:?} has no port (host:17070)"
            ));
        }
        Ok(ControllerAccess {
            uuid: get("controller-uuid")?,
            addresses,
            ca_cert: get("ca-cert")?,
            username: get("username")?,
            password: Secret::new(get("password")?),
        })
    }

    /// controllers.yaml and accounts.yaml of a JUJU_DATA that logs in to the controller.
    pub fn juju_data_files(&self) -> Vec<(&'static str, String)> {
        let controllers = json!({
            "controllers": {CONTROLLER: {
                "uuid": self.uuid,
                "api-endpoints": self.addresses,
                "ca-cert": self.ca_cert,
            }},
            "current-controller": CONTROLLER,
        });
        let accounts = json!({
            "controllers": {CONTROLLER: {
                "user": self.username,
                "password": self.password.expose(),
            }},
        });
        vec![
            (
                "controllers.yaml",
                serde_yaml::to_string(&controllers).expect("YAML"),
            ),
            (
                "accounts.yaml",
                serde_yaml::to_string(&accounts).expect("YAML"),
            ),
        ]
    }

    /// Writes controllers.yaml and accounts.yaml (mode 0600) into a new private directory.
    pub fn write_juju_data(&self) -> std::io::Result<tempfile::TempDir> {
        let dir = tempfile::Builder::new()
            .prefix("backup-agent-juju-")
            .tempdir()?;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700))?;
        for (name, body) in self.juju_data_files() {
            let path = dir.path().join(name);
            std::fs::write(&path, body)?;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
        }
        Ok(dir)
    }
}

/// A juju client logged in to the controller, and the directory that must outlive it.
pub struct Client {
    pub juju: JujuCli,
    pub _data: tempfile::TempDir,
}

/// The `juju` binary: the attached resource, else one on PATH (an image that ships it).
pub fn client_binary(tools: &HookTools, app: &str) -> Result<PathBuf, String> {
    match tools.resource_get(RESOURCE) {
        Ok(p) if p.is_file() => {
            make_executable(&p)?;
            Ok(p)
        }
        resource => which::which("juju").map_err(|_| {
            let why = match resource {
                Ok(p) => format!("{} is not a file", p.display()),
                Err(e) => e.to_string(),
            };
            format!("no juju client: attach one with `juju attach-resource {app} {RESOURCE}=/snap/juju/current/bin/juju` ({why})")
        }),
    }
}

/// Juju stores file resources without the execute bit.
fn make_executable(p: &Path) -> Result<(), String> {
    let meta = std::fs::metadata(p).map_err(|e| format!("{}: {e}", p.display()))?;
    if meta.permissions().mode() & 0o111 == 0o111 {
        return Ok(());
    }
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).map_err(|e| {
        format!(
            "cannot make the juju client {} executable: {e}",
            p.display()
        )
    })
}

/// Reads the secret and sets up a client bound to `model`. Errors say what to do.
pub fn connect(
    tools: &HookTools,
    app: &str,
    secret_id: Option<&str>,
    model: &str,
) -> Result<Client, String> {
    let id = secret_id.ok_or_else(|| {
        format!("controller-secret is not set: create a secret with the controller's uuid, addresses, CA, user and password, grant it, then `juju config {app} controller-secret=secret:...` (README: Controller access)")
    })?;
    let content = tools.secret_get(id).map_err(|e| {
        format!("cannot read controller-secret {id}: {e}; grant it with `juju grant-secret <name> {app}`")
    })?;
    let access = ControllerAccess::from_secret(id, &content)?;
    let bin = client_binary(tools, app)?;
    let data = access
        .write_juju_data()
        .map_err(|e| format!("cannot write the juju client configuration: {e}"))?;
    Ok(Client {
        juju: JujuCli::with_binary(bin, model).with_data_dir(data.path()),
        _data: data,
    })
}
