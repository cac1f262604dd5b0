//! The juju CLI: running it (always `--format=json`, always on an explicit model) and plain
//! parse functions for what it prints, tested against recorded real outputs.

use std::collections::BTreeMap;
use std::path::PathBuf;

use jsonpath_rust::JsonPath;
use serde::Deserialize;
use serde_json::Value;

use crate::secret::Secret;

#[derive(Debug, thiserror::Error)]
pub enum JujuError {
    #[error("the juju CLI was not found on PATH: install it (`sudo snap install juju`) and log in to the controller, or put the sandbox's bin/ first on PATH")]
    Missing,
    #[error("`{command}` exited with code {code}: {stderr}")]
    Failed {
        command: String,
        code: i32,
        stderr: String,
    },
    #[error("could not start `{command}`: {source}")]
    Spawn {
        command: String,
        source: std::io::Error,
    },
    #[error("`{command}` did not finish within {wait}; the task goes on in the model: follow it with `juju show-task {task}`")]
    Timeout {
        command: String,
        wait: String,
        task: String,
    },
    #[error("action {action} on {unit} failed: {message} (task {task}; `juju show-task {task}` has its log)")]
    ActionFailed {
        unit: String,
        action: String,
        task: String,
        message: String,
    },
    #[error("could not read the output of `{command}` ({what}): {detail}")]
    Parse {
        command: String,
        what: String,
        detail: String,
    },
}

impl crate::retry::Retryable for JujuError {
    /// Errors worth retrying: the controller connection dropped or timed out. Everything else
    /// (unknown application, bad argument, missing model) fails the same way again.
    fn is_retryable(&self) -> bool {
        match self {
            JujuError::Failed { stderr, .. } => {
                let s = stderr.to_ascii_lowercase();
                [
                    "cannot connect to api",
                    "connection is shut down",
                    "connection refused",
                    "i/o timeout",
                    "context deadline exceeded",
                    "try again",
                ]
                .iter()
                .any(|p| s.contains(p))
            }
            JujuError::Spawn { .. } => true,
            _ => false,
        }
    }
}

impl JujuError {
    pub fn is_retryable(&self) -> bool {
        crate::retry::Retryable::is_retryable(self)
    }
}

/// The juju client of the operator (or of the charm's container), bound to one model.
#[derive(Debug, Clone)]
pub struct JujuCli {
    bin: PathBuf,
    model: String,
    /// JUJU_DATA for the client (the charm's own controller login); `None` inherits.
    data_dir: Option<PathBuf>,
}

impl JujuCli {
    /// Finds `juju` on PATH.
    /// `BACKUP_AGENT_JUJU` when set (the charm's workload container, where the client is not
    /// on PATH), else `juju` on PATH.
    pub fn locate(model: impl Into<String>) -> Result<Self, JujuError> {
        let bin = match std::env::var_os("BACKUP_AGENT_JUJU").filter(|v| !v.is_empty()) {
            Some(p) => PathBuf::from(p),
            None => which::which("juju").map_err(|_| JujuError::Missing)?,
        };
        Ok(JujuCli {
            bin,
            model: model.into(),
            data_dir: None,
        })
    }

    /// A given `juju` binary (the sandbox's simulator, a snap path).
    pub fn with_binary(bin: impl Into<PathBuf>, model: impl Into<String>) -> Self {
        JujuCli {
            bin: bin.into(),
            model: model.into(),
            data_dir: None,
        }
    }

    /// Uses the controllers and accounts in `dir` (JUJU_DATA) instead of the caller's.
    pub fn with_data_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.data_dir = Some(dir.into());
        self
    }

    pub fn model(&self) -> &str {
        &self.model
    }

    /// Runs `juju ARGS -m MODEL` (exit status not checked): the command line, for messages, and
    /// its output.
    fn exec(&self, args: &[String]) -> Result<(String, std::process::Output), JujuError> {
        let mut full = args.to_vec();
        full.extend(["-m".to_string(), self.model.clone()]);
        let command = format!("juju {}", display_args(&full));
        tracing::debug!(%command, "running");
        let mut cmd = duct::cmd(&self.bin, &full);
        if let Some(d) = &self.data_dir {
            cmd = cmd.env("JUJU_DATA", d);
        }
        let out = cmd
            .stdout_capture()
            .stderr_capture()
            .unchecked()
            .run()
            .map_err(|source| JujuError::Spawn {
                command: command.clone(),
                source,
            })?;
        Ok((command, out))
    }

    /// Runs `juju <args> -m <model>` and returns stdout.
    pub fn run(&self, args: &[&str]) -> Result<String, JujuError> {
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        let (command, out) = self.exec(&args)?;
        if !out.status.success() {
            return Err(JujuError::Failed {
                command,
                code: out.status.code().unwrap_or(-1),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Runs an action and waits for it (`--wait`): the task when it completed; its message
    /// when it failed (juju then exits 1 but still prints the task); a timeout naming the task.
    pub fn run_action(
        &self,
        unit: &str,
        action: &str,
        params: &[(&str, &str)],
        wait: &str,
    ) -> Result<ActionTask, JujuError> {
        let mut args: Vec<String> = vec!["run".into(), unit.into(), action.into()];
        args.extend(params.iter().map(|(k, v)| format!("{k}={v}")));
        args.extend(["--format=json".into(), format!("--wait={wait}")]);
        let (command, out) = self.exec(&args)?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
        if stdout.trim().is_empty() {
            if stderr.contains("timed out waiting for results") {
                let task = stderr
                    .lines()
                    .find_map(|l| l.trim().strip_prefix("Waiting for task "))
                    .map(|t| t.trim_end_matches("...").to_string())
                    .unwrap_or_default();
                return Err(JujuError::Timeout {
                    command,
                    wait: wait.into(),
                    task,
                });
            }
            return Err(JujuError::Failed {
                command,
                code: out.status.code().unwrap_or(-1),
                stderr,
            });
        }
        let task = parse_run(&stdout, unit).map_err(|detail| JujuError::Parse {
            command: command.clone(),
            what: "action result".into(),
            detail,
        })?;
        match task.status.as_str() {
            "completed" => Ok(task),
            _ => Err(JujuError::ActionFailed {
                unit: unit.into(),
                action: action.into(),
                task: task.id.clone(),
                message: if task.message.is_empty() {
                    format!("status {}", task.status)
                } else {
                    task.message.clone()
                },
            }),
        }
    }

    pub fn status(&self) -> Result<Status, JujuError> {
        let out = self.run(&["status", "--format=json"])?;
        parse_status(&out).map_err(|e| JujuError::Parse {
            command: "juju status --format=json".into(),
            what: "status JSON".into(),
            detail: e.to_string(),
        })
    }

    pub fn show_unit(&self, unit: &str) -> Result<Value, JujuError> {
        let out = self.run(&["show-unit", unit, "--format=json"])?;
        serde_json::from_str(&out).map_err(|e| JujuError::Parse {
            command: format!("juju show-unit {unit} --format=json"),
            what: "unit JSON".into(),
            detail: e.to_string(),
        })
    }

    /// `juju scale-application APP N`: asynchronous; poll [`scale_settled`] on `status`.
    pub fn scale_application(&self, app: &str, scale: u32) -> Result<(), JujuError> {
        self.run(&["scale-application", app, &scale.to_string()])
            .map(|_| ())
    }

    /// `juju config APP KEY`: the value as printed, without the trailing newline.
    pub fn config_value(&self, app: &str, key: &str) -> Result<String, JujuError> {
        Ok(self
            .run(&["config", app, key])?
            .trim_end_matches('\n')
            .to_string())
    }
}

/// The command line as logs and errors show it: values of credential-like parameters
/// (`secret-key=...`, `password=...`) are replaced, so no message can carry them.
pub fn display_args(args: &[String]) -> String {
    args.iter()
        .map(|a| match a.split_once('=') {
            Some((k, _))
                if ["key", "secret", "password", "token"]
                    .iter()
                    .any(|w| k.to_ascii_lowercase().contains(w)) =>
            {
                format!("{k}=<redacted>")
            }
            _ => a.clone(),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// `juju status --format=json`, the parts we use.
#[derive(Debug, Clone, Deserialize)]
pub struct Status {
    pub model: ModelInfo,
    #[serde(default)]
    pub applications: BTreeMap<String, Application>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ModelInfo {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub controller: String,
    #[serde(default)]
    pub version: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Application {
    pub charm: String,
    #[serde(default)]
    pub charm_name: Option<String>,
    #[serde(default)]
    pub charm_rev: Option<i64>,
    #[serde(default)]
    pub charm_channel: Option<String>,
    /// Kubernetes models only: the scale Juju was asked for.
    #[serde(default)]
    pub scale: Option<u32>,
    #[serde(default)]
    pub application_status: Option<StatusInfo>,
    #[serde(default)]
    pub units: BTreeMap<String, UnitStatus>,
}

impl Application {
    pub fn charm_name(&self) -> &str {
        self.charm_name.as_deref().unwrap_or(&self.charm)
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct UnitStatus {
    pub workload_status: StatusInfo,
    #[serde(default)]
    pub juju_status: Option<StatusInfo>,
    /// Juju prints `leader` only when true.
    #[serde(default)]
    pub leader: bool,
    #[serde(default)]
    pub address: Option<String>,
    #[serde(default)]
    pub provider_id: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct StatusInfo {
    pub current: String,
    #[serde(default)]
    pub message: String,
}

pub fn parse_status(json: &str) -> Result<Status, serde_json::Error> {
    serde_json::from_str(json)
}

/// Whether `app` has settled at `scale` units, all active and idle; otherwise what it still
/// waits for, for messages.
pub fn scale_settled(status: &Status, app: &str, scale: u32) -> Result<(), String> {
    let a = status
        .applications
        .get(app)
        .ok_or_else(|| format!("{app} is not in the model any more"))?;
    if a.units.len() as u32 != scale {
        return Err(format!(
            "{} of {scale} units (scale {})",
            a.units.len(),
            a.scale.map_or("?".into(), |s| s.to_string())
        ));
    }
    let busy: Vec<String> = a
        .units
        .iter()
        // Blocked is settled too: mysql-k8s stays blocked after a restore until it is moved
        // to another S3 repository, and its units are up.
        .filter(|(_, u)| {
            !matches!(u.workload_status.current.as_str(), "active" | "blocked")
                || u.juju_status.as_ref().is_some_and(|j| j.current != "idle")
        })
        .map(|(n, u)| format!("{n} {}", u.workload_status.current))
        .collect();
    if busy.is_empty() {
        Ok(())
    } else {
        Err(format!("units not ready: {}", busy.join(", ")))
    }
}

/// The remote application's databag on `endpoint`, from `juju show-unit UNIT --format=json`:
/// the JSONPath twin of the manual procedure's yq query.
pub fn relation_app_data(
    show_unit: &Value,
    unit: &str,
    endpoint: &str,
) -> Option<BTreeMap<String, String>> {
    let unit = unit.replace('\'', "\\'");
    let endpoint = endpoint.replace('\'', "\\'");
    let path =
        format!("$['{unit}']['relation-info'][?@.endpoint == '{endpoint}']['application-data']");
    let found = show_unit.query(&path).ok()?;
    let bag = found.first()?.as_object()?;
    Some(
        bag.iter()
            .map(|(k, v)| {
                let v = match v {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                (k.clone(), v)
            })
            .collect(),
    )
}

/// MinIO's connection data as the minio charm publishes it on `object-storage`.
#[derive(Debug, Clone, PartialEq)]
pub struct ObjectStorage {
    pub access_key: String,
    pub secret_key: Secret,
    pub service: String,
    pub namespace: String,
    pub port: u16,
    pub secure: bool,
}

impl ObjectStorage {
    /// Parses the databag's `data` key, a YAML string.
    pub fn from_relation_data(bag: &BTreeMap<String, String>) -> Result<Self, String> {
        let data = bag.get("data").ok_or(
            "the object-storage relation has no `data` key yet (is minio related and active?)",
        )?;
        let v: serde_yaml::Value = serde_yaml::from_str(data)
            .map_err(|e| format!("the object-storage relation's `data` is not valid YAML: {e}"))?;
        let text = |k: &str| -> Result<String, String> {
            match &v[k] {
                serde_yaml::Value::String(s) if !s.is_empty() => Ok(s.clone()),
                serde_yaml::Value::Number(n) => Ok(n.to_string()),
                _ => Err(format!("the object-storage relation data has no `{k}`")),
            }
        };
        let port = match &v["port"] {
            serde_yaml::Value::Null => 9000,
            p => text("port")?.parse().map_err(|_| {
                format!("the object-storage relation data has an invalid port: {p:?}")
            })?,
        };
        let secure = match &v["secure"] {
            serde_yaml::Value::Bool(b) => *b,
            serde_yaml::Value::String(s) => s == "true",
            _ => false,
        };
        Ok(ObjectStorage {
            access_key: text("access-key")?,
            secret_key: Secret::new(text("secret-key")?),
            service: text("service")?,
            namespace: text("namespace")?,
            port,
            secure,
        })
    }

    /// The in-cluster endpoint: `http://minio.kubeflow:9000`.
    pub fn endpoint(&self) -> String {
        let scheme = if self.secure { "https" } else { "http" };
        format!(
            "{scheme}://{}.{}:{}",
            self.service, self.namespace, self.port
        )
    }
}

/// One task of `juju run ... --format=json`, or of `juju show-task --format=json`.
#[derive(Debug, Clone, Deserialize)]
pub struct ActionTask {
    pub id: String,
    pub status: String,
    #[serde(default)]
    pub message: String,
    #[serde(default)]
    pub results: serde_json::Map<String, Value>,
}

impl ActionTask {
    pub fn result_str(&self, key: &str) -> Option<&str> {
        self.results.get(key).and_then(Value::as_str)
    }
}

/// The task of `unit` in `juju run`'s output (a map keyed by unit).
pub fn parse_run(json: &str, unit: &str) -> Result<ActionTask, String> {
    let v: Value = serde_json::from_str(json).map_err(|e| format!("not JSON: {e}"))?;
    let task = v
        .get(unit)
        .ok_or_else(|| format!("no result for unit {unit}"))?;
    serde_json::from_value(task.clone()).map_err(|e| format!("unexpected task shape: {e}"))
}

/// One row of mysql-k8s's `list-backups` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MysqlBackup {
    pub id: String,
    pub kind: String,
    pub status: String,
}

/// Parses mysql-k8s's `list-backups` table (`backup-id | backup-type | backup-status`).
pub fn parse_backups_table(text: &str) -> Result<Vec<MysqlBackup>, String> {
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let header = lines.next().ok_or("empty list-backups output")?;
    let cols: Vec<&str> = header.split('|').map(str::trim).collect();
    if cols != ["backup-id", "backup-type", "backup-status"] {
        return Err(format!("unexpected list-backups header: {header:?}"));
    }
    let mut out = vec![];
    for line in lines {
        if line.chars().all(|c| c == '-') {
            continue;
        }
        let f: Vec<&str> = line.split('|').map(str::trim).collect();
        match f[..] {
            [id, kind, status] => out.push(MysqlBackup {
                id: id.into(),
                kind: kind.into(),
                status: status.into(),
            }),
            _ => return Err(format!("unexpected list-backups row: {line:?}")),
        }
    }
    Ok(out)
}

/// The primary's unit name from mysql-k8s's `get-cluster-status` results. Member labels are
/// unit names with `/` replaced by `-` (`kfp-db-1` is `kfp-db/1`).
pub fn cluster_primary(results: &serde_json::Map<String, Value>) -> Option<String> {
    let topology = results
        .get("status")?
        .get("defaultreplicaset")?
        .get("topology")?
        .as_object()?;
    topology.iter().find_map(|(label, member)| {
        (member.get("memberrole")?.as_str()? == "primary").then(|| {
            let (app, num) = label.rsplit_once('-')?;
            Some(format!("{app}/{num}"))
        })?
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credential_parameters_never_reach_the_command_line_shown() {
        let args: Vec<String> = [
            "run",
            "s3-integrator/0",
            "sync-s3-credentials",
            "access-key=AKIAPLANTED",
            "secret-key=planted-secret",
            "backup-id=2024-05-01T10:00:00Z",
            "--wait=5m",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let shown = display_args(&args);
        assert_eq!(shown, "run s3-integrator/0 sync-s3-credentials access-key=<redacted> secret-key=<redacted> backup-id=2024-05-01T10:00:00Z --wait=5m");
    }
}
