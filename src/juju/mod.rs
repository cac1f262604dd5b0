//! The juju CLI: running it (always `--format=json`, always on an explicit model) and plain
//! parse functions for what it prints, tested against recorded real outputs.

pub mod discovery;
mod output;
pub mod scale;

pub use output::*;

use std::path::PathBuf;

use serde_json::Value;

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
    #[error("{app}'s charm cannot run {action} the way backup-agent calls it: {detail}. Check the charm's revision against the supported ones (`juju actions {app} --schema`)")]
    Unsupported {
        app: String,
        action: String,
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

    /// The actions of `app` and their parameters (`juju actions APP --schema --format json`).
    pub fn action_schemas(
        &self,
        app: &str,
    ) -> Result<std::collections::BTreeMap<String, ActionSchema>, JujuError> {
        let out = self.run(&["actions", app, "--schema", "--format", "json"])?;
        parse_action_schemas(&out).map_err(|e| JujuError::Parse {
            command: format!("juju actions {app} --schema --format json"),
            what: "action schemas".into(),
            detail: e.to_string(),
        })
    }

    /// Checks, before anything runs, that `app`'s charm has `action` with every one of
    /// `params`: a charm revision that renamed one would otherwise get a parameter it does
    /// not know (Juju 3 passes unknown ones through unchecked).
    pub fn check_action(&self, app: &str, action: &str, params: &[&str]) -> Result<(), JujuError> {
        let schemas = self.action_schemas(app)?;
        let fail = |detail: String| JujuError::Unsupported {
            app: app.into(),
            action: action.into(),
            detail,
        };
        let Some(schema) = schemas.get(action) else {
            return Err(fail(format!(
                "the charm has no such action (it has: {})",
                schemas.keys().cloned().collect::<Vec<_>>().join(", ")
            )));
        };
        for p in params {
            if !schema.params.iter().any(|have| have == p) {
                return Err(fail(format!(
                    "its schema has no parameter {p:?} (it takes: {})",
                    if schema.params.is_empty() {
                        "none".to_string()
                    } else {
                        schema.params.join(", ")
                    }
                )));
            }
        }
        Ok(())
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
