#![allow(dead_code)]
//! Shared test support: a small sandbox per test, and juju output helpers.

use std::time::{Duration, Instant};

use backup_agent_sandbox::seed::{BucketSpec, MlmdSpec};
use backup_agent_sandbox::{Sandbox, UpOptions};
use serde_json::Value;

pub fn options() -> UpOptions {
    let mut o = UpOptions::new(env!("CARGO_BIN_EXE_backup-agent-sandbox"));
    o.bucket = BucketSpec {
        small: 12,
        large: 1,
        large_size: 9 * 1024 * 1024,
        ..BucketSpec::default()
    };
    o.mlmd = MlmdSpec {
        runs: 3,
        ..MlmdSpec::default()
    };
    o.mysql_rows = 50;
    // One unit, as CKF deploys them: the tests scale up themselves.
    o.db_units = 1;
    o
}

pub fn sandbox() -> Sandbox {
    Sandbox::up(&options()).expect("sandbox up")
}

pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}\nstderr: {}", self.stdout, self.stderr))
    }
}

pub fn juju(sb: &Sandbox, args: &[&str]) -> Run {
    let out = sb.juju(args);
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Runs an action with --wait and returns the unit's task object. A failed task must make
/// juju exit 1 with "task failed" on stderr; a completed one exit 0.
pub fn action(sb: &Sandbox, unit: &str, action: &str, params: &[&str]) -> Value {
    let mut args = vec!["run", unit, action];
    args.extend_from_slice(params);
    args.extend_from_slice(&["--format=json", "--wait=1m"]);
    let r = juju(sb, &args);
    let task = r.json()[unit].clone();
    match task["status"].as_str() {
        Some("completed") => assert_eq!(r.code, 0, "{}", r.stderr),
        Some("failed") => {
            assert_eq!(r.code, 1, "a failed task exits 1");
            let want = format!("ERROR the following task failed:\n - id \"{}\" with return code 0\n\nuse 'juju show-task' to inspect the failure\n", task["id"].as_str().unwrap());
            assert!(r.stderr.ends_with(&want), "{}", r.stderr);
        }
        other => panic!("unexpected task status {other:?}: {}", r.stdout),
    }
    task
}

/// Polls until `f` holds, failing after `timeout`.
pub fn until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub fn units(sb: &Sandbox, app: &str) -> Vec<String> {
    let st = juju(sb, &["status", "--format=json"]).json();
    st["applications"][app]["units"]
        .as_object()
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default()
}
