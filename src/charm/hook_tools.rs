//! Juju's hook tools: the only way a charm talks to Juju (action-get/set/log/fail, relation data,
//! config, status, secrets, resources, logs). Each call runs the tool found on PATH, or in a
//! given directory, and parses its JSON in a plain function.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use serde_json::{Map, Value};

use crate::secret::Secret;

#[derive(Debug, thiserror::Error)]
pub enum HookToolError {
    #[error("hook tool `{command}` exited with code {code}: {stderr}")]
    Failed {
        command: String,
        code: i32,
        stderr: String,
    },
    #[error("could not start hook tool `{tool}` (is this running under Juju, with the hook tools on PATH?): {source}")]
    Spawn {
        tool: String,
        source: std::io::Error,
    },
    #[error("could not read the output of `{command}`: {detail}")]
    Parse { command: String, detail: String },
}

/// A workload status, as `status-set` takes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Maintenance,
    Blocked,
    Waiting,
    Active,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Maintenance => "maintenance",
            Status::Blocked => "blocked",
            Status::Waiting => "waiting",
            Status::Active => "active",
        }
    }
}

/// Which databag of a relation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bag {
    App,
    Unit,
}

/// The hook tools of one hook or action context.
#[derive(Debug, Clone, Default)]
pub struct HookTools {
    /// Where the tools are; `None` takes them from PATH (as Juju sets it).
    dir: Option<PathBuf>,
}

impl HookTools {
    pub fn from_path() -> Self {
        HookTools { dir: None }
    }

    pub fn in_dir(dir: impl Into<PathBuf>) -> Self {
        HookTools {
            dir: Some(dir.into()),
        }
    }

    fn run(&self, tool: &str, args: &[&str], stdin: Option<&str>) -> Result<String, HookToolError> {
        let program = match &self.dir {
            Some(d) => d.join(tool),
            None => PathBuf::from(tool),
        };
        // Values may be secrets (relation-set of nothing secret today, but keep it that way):
        // messages name the tool and its flags, never the values.
        let command = format!(
            "{tool} {}",
            args.iter()
                .map(|a| if a.contains('=') { "<key=value>" } else { a })
                .collect::<Vec<_>>()
                .join(" ")
        );
        let mut cmd = Command::new(&program);
        cmd.args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            });
        let mut child = cmd.spawn().map_err(|source| HookToolError::Spawn {
            tool: tool.to_string(),
            source,
        })?;
        if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
            // A tool that exits early closes the pipe; its exit status says why.
            let _ = pipe.write_all(input.as_bytes());
        }
        let out = child
            .wait_with_output()
            .map_err(|source| HookToolError::Spawn {
                tool: tool.to_string(),
                source,
            })?;
        if !out.status.success() {
            return Err(HookToolError::Failed {
                command,
                code: out.status.code().unwrap_or(-1),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn json(&self, tool: &str, args: &[&str]) -> Result<Value, HookToolError> {
        let mut full = vec!["--format=json"];
        full.extend_from_slice(args);
        let out = self.run(tool, &full, None)?;
        parse_json(&out).map_err(|detail| HookToolError::Parse {
            command: format!("{tool} {}", full.join(" ")),
            detail,
        })
    }

    /// The action's parameters (Juju has already inserted the schema's defaults).
    pub fn action_params(&self) -> Result<Map<String, Value>, HookToolError> {
        match self.json("action-get", &[])? {
            Value::Object(m) => Ok(m),
            Value::Null => Ok(Map::new()),
            other => Err(HookToolError::Parse {
                command: "action-get --format=json".into(),
                detail: format!("expected an object, got {other}"),
            }),
        }
    }

    /// Sets flat results; keys must already be kebab-case (see `result_key`).
    pub fn action_set(&self, results: &BTreeMap<String, String>) -> Result<(), HookToolError> {
        if results.is_empty() {
            return Ok(());
        }
        let pairs: Vec<String> = results.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let args: Vec<&str> = pairs.iter().map(String::as_str).collect();
        self.run("action-set", &args, None).map(drop)
    }

    pub fn action_log(&self, message: &str) -> Result<(), HookToolError> {
        self.run("action-log", &[message], None).map(drop)
    }

    pub fn action_fail(&self, message: &str) -> Result<(), HookToolError> {
        self.run("action-fail", &[message], None).map(drop)
    }

    /// Relation ids of an endpoint, e.g. `["s3-credentials:3"]`.
    pub fn relation_ids(&self, endpoint: &str) -> Result<Vec<String>, HookToolError> {
        let v = self.json("relation-ids", &[endpoint])?;
        Ok(strings(&v))
    }

    /// The remote application of a relation.
    pub fn relation_app(&self, id: &str) -> Result<Option<String>, HookToolError> {
        let v = self.json("relation-list", &["-r", id, "--app"])?;
        Ok(v.as_str().filter(|s| !s.is_empty()).map(str::to_string))
    }

    /// A databag: `of` is the remote app (with `Bag::App`) or a unit.
    pub fn relation_get(
        &self,
        id: &str,
        bag: Bag,
        of: &str,
    ) -> Result<BTreeMap<String, String>, HookToolError> {
        let mut args = vec!["-r", id];
        if bag == Bag::App {
            args.push("--app");
        }
        args.extend(["-", of]);
        let v = self.json("relation-get", &args)?;
        Ok(string_map(&v))
    }

    /// Writes keys of our side's databag (the app bag: leader only); an empty value deletes.
    pub fn relation_set(
        &self,
        id: &str,
        bag: Bag,
        data: &BTreeMap<String, String>,
    ) -> Result<(), HookToolError> {
        let mut args = vec!["-r", id];
        if bag == Bag::App {
            args.push("--app");
        }
        args.extend(["--file", "-"]);
        let yaml = serde_yaml::to_string(data).expect("a string map serializes");
        self.run("relation-set", &args, Some(&yaml)).map(drop)
    }

    pub fn config(&self) -> Result<Map<String, Value>, HookToolError> {
        match self.json("config-get", &[])? {
            Value::Object(m) => Ok(m),
            _ => Ok(Map::new()),
        }
    }

    pub fn status_set(&self, status: Status, message: &str) -> Result<(), HookToolError> {
        self.run("status-set", &[status.as_str(), message], None)
            .map(drop)
    }

    pub fn is_leader(&self) -> Result<bool, HookToolError> {
        Ok(self.json("is-leader", &[])?.as_bool().unwrap_or(false))
    }

    /// A secret's latest content (`--refresh`: a consumer otherwise stays on the revision it
    /// first read, and would never see rotated keys); every value is kept as a `Secret`.
    pub fn secret_get(&self, id: &str) -> Result<BTreeMap<String, Secret>, HookToolError> {
        let v = self.json("secret-get", &[id, "--refresh"])?;
        Ok(string_map(&v)
            .into_iter()
            .map(|(k, v)| (k, Secret::new(v)))
            .collect())
    }

    /// Where Juju put a file resource (it fails when none was attached).
    pub fn resource_get(&self, name: &str) -> Result<PathBuf, HookToolError> {
        let out = self.run("resource-get", &[name], None)?;
        Ok(PathBuf::from(out.trim()))
    }

    /// A line in the unit's log (`juju debug-log`).
    pub fn log(&self, level: &str, message: &str) -> Result<(), HookToolError> {
        self.run("juju-log", &["-l", level, message], None)
            .map(drop)
    }
}

/// Tool output as JSON; Juju prints nothing for an empty value.
pub fn parse_json(out: &str) -> Result<Value, String> {
    if out.trim().is_empty() {
        return Ok(Value::Null);
    }
    // The text itself is not quoted: it may be a databag or a secret's content.
    serde_json::from_str(out).map_err(|e| format!("not JSON ({e}), {} bytes", out.len()))
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s.as_str().map(str::to_string))
        .collect()
}

/// A databag: every value is a string in Juju; anything else is shown as JSON text.
pub fn string_map(v: &Value) -> BTreeMap<String, String> {
    v.as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| {
            let s = match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            (k.clone(), s)
        })
        .collect()
}

/// A result key Juju accepts (`[a-z0-9]` and inner hyphens) made from any text.
pub fn result_key(s: &str) -> String {
    let mut k: String = s
        .to_ascii_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    while k.contains("--") {
        k = k.replace("--", "-");
    }
    k.trim_matches('-').to_string()
}

/// This unit's application, from the hook environment (`JUJU_UNIT_NAME`).
pub fn local_app() -> String {
    std::env::var("JUJU_UNIT_NAME")
        .ok()
        .and_then(|u| u.split('/').next().map(str::to_string))
        .unwrap_or_else(|| "backup-agent".into())
}
