//! The hook-tool simulator (interfaces.md §6) called as a charm calls it, and `run_dispatch`:
//! a cleared environment with Juju's variables and the tools first on PATH.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use backup_agent_sandbox::hook_tools::{
    install_tools, run_dispatch, HookAction, HookRelation, HookState, StatusValue, STATE_ENV,
};
use serde_json::{json, Value};

const EXE: &str = env!("CARGO_BIN_EXE_backup-agent-sandbox");

struct Ctx {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    state: PathBuf,
    tools: PathBuf,
}

fn bag(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn base_state(leader: bool, action: bool) -> HookState {
    let mut config = serde_json::Map::new();
    config.insert("model".into(), json!("kubeflow"));
    config.insert("checkers".into(), json!(8));
    config.insert("dry".into(), json!(false));
    let mut remote_unit_data = BTreeMap::new();
    remote_unit_data.insert(
        "s3-integrator/0".to_string(),
        bag(&[("ingress-address", "10.1.2.3")]),
    );
    let mut secrets = BTreeMap::new();
    secrets.insert(
        "secret:d0abcdefghijklmnopqr".to_string(),
        bag(&[("username", "admin"), ("password", "pw")]),
    );
    let mut resources = BTreeMap::new();
    resources.insert("juju-client".to_string(), PathBuf::from("/opt/juju"));
    HookState {
        unit: "backup-agent/0".into(),
        leader,
        config,
        relations: vec![HookRelation {
            id: 3,
            endpoint: "s3-credentials".into(),
            interface: "s3".into(),
            remote_app: "s3-integrator".into(),
            remote_units: vec!["s3-integrator/0".into()],
            local_app_data: bag(&[("bucket", "old")]),
            local_unit_data: BTreeMap::new(),
            remote_app_data: bag(&[("bucket", "ckf-backups"), ("access-key", "AK")]),
            remote_unit_data,
            broken: false,
        }],
        secrets,
        resources,
        action: action.then(|| HookAction {
            name: "create-backup".into(),
            id: "7".into(),
            params: json!({"label": "x", "opts": {"deep": "1"}, "force": false})
                .as_object()
                .cloned()
                .unwrap(),
        }),
        ..Default::default()
    }
}

fn ctx(state: HookState) -> Ctx {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let tools = dir.join("tools");
    install_tools(&tools, Path::new(EXE)).unwrap();
    let path = dir.join("state.json");
    state.save(&path).unwrap();
    Ctx {
        _tmp: tmp,
        dir,
        state: path,
        tools,
    }
}

struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Ctx {
    fn run_env(&self, tool: &str, args: &[&str], env: &[(&str, &str)], stdin: &str) -> Out {
        let mut child = Command::new(self.tools.join(tool))
            .args(args)
            .env_clear()
            .env(STATE_ENV, &self.state)
            .envs(env.iter().copied())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(stdin.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        Out {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
    fn run(&self, tool: &str, args: &[&str]) -> Out {
        self.run_env(tool, args, &[], "")
    }
    fn ok(&self, tool: &str, args: &[&str]) -> String {
        let o = self.run(tool, args);
        assert_eq!(o.code, 0, "{tool} {args:?}: {}", o.stderr);
        o.stdout
    }
    fn json(&self, tool: &str, args: &[&str]) -> Value {
        let text = self.ok(tool, args);
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{tool}: {e}: {text}"))
    }
    fn err(&self, tool: &str, args: &[&str], code: i32, want: &str) {
        let o = self.run(tool, args);
        assert_eq!(o.code, code, "{tool} {args:?}: {}", o.stderr);
        assert_eq!(o.stderr, format!("ERROR {want}\n"), "{tool} {args:?}");
    }
    fn state(&self) -> HookState {
        HookState::load(&self.state).unwrap()
    }
}

#[test]
fn action_tools_follow_juju_rules() {
    let c = ctx(base_state(true, true));
    assert_eq!(
        c.json("action-get", &["--format=json"]),
        json!({"label": "x", "opts": {"deep": "1"}, "force": false})
    );
    assert_eq!(c.ok("action-get", &["label"]), "x\n");
    assert_eq!(
        c.json("action-get", &["opts.deep", "--format", "json"]),
        json!("1")
    );
    assert_eq!(c.ok("action-get", &["force"]), "False\n");

    c.ok(
        "action-set",
        &[
            "backup-id=20261123T060000Z-0a1b2c",
            "sizes.mlmd=12",
            "sizes.total=40",
            "a1-b=x=y",
        ],
    );
    for (args, want) in [
        (vec!["Bad=1"], "key \"Bad\" must start and end with lowercase alphanumeric, and contain only lowercase alphanumeric, hyphens and periods"),
        (vec!["a.-b=1"], "key \"a.-b\" must start and end with lowercase alphanumeric, and contain only lowercase alphanumeric, hyphens and periods"),
        (vec!["a_b=1"], "key \"a_b\" must start and end with lowercase alphanumeric, and contain only lowercase alphanumeric, hyphens and periods"),
        (vec!["stdout=1"], "cannot set reserved action key \"stdout\""),
        (vec!["stderr-encoding.x=1"], "cannot set reserved action key \"stderr-encoding\""),
        (vec!["novalue"], "argument \"novalue\" must be of the form key...=value"),
    ] {
        c.err("action-set", &args, 1, want);
    }
    c.ok("action-log", &["step", "one"]);
    c.err("action-log", &[], 1, "no message specified");
    let s = c.state();
    assert_eq!(
        Value::Object(s.results.clone()),
        json!({"backup-id": "20261123T060000Z-0a1b2c", "sizes": {"mlmd": "12", "total": "40"}, "a1-b": "x=y"})
    );
    assert_eq!(s.action_log, vec!["step one"]);
    assert_eq!(s.failed, None);
    c.ok("action-fail", &[]);
    assert_eq!(
        c.state().failed.as_deref(),
        Some("action failed without reason given")
    );
    c.ok("action-fail", &["disk full"]);
    assert_eq!(c.state().failed.as_deref(), Some("disk full"));

    // Outside an action.
    let h = ctx(base_state(true, false));
    for tool in ["action-get", "action-fail"] {
        h.err(tool, &[], 1, "not running an action");
    }
    h.err("action-set", &["a=b"], 1, "not running an action");
    h.err("action-log", &["m"], 1, "not running an action");
}

#[test]
fn relation_tools_read_and_write_the_right_bags() {
    let c = ctx(base_state(true, false));
    assert_eq!(
        c.json("relation-ids", &["s3-credentials", "--format=json"]),
        json!(["s3-credentials:3"])
    );
    assert_eq!(
        c.json("relation-ids", &["object-storage", "--format=json"]),
        json!([])
    );
    assert_eq!(
        c.ok("relation-ids", &["s3-credentials"]),
        "s3-credentials:3\n"
    );
    assert_eq!(
        c.json(
            "relation-list",
            &["-r", "s3-credentials:3", "--format=json"]
        ),
        json!(["s3-integrator/0"])
    );
    assert_eq!(
        c.json("relation-list", &["-r", "3", "--app", "--format=json"]),
        json!("s3-integrator")
    );
    // -r defaults to JUJU_RELATION_ID.
    let o = c.run_env(
        "relation-list",
        &["--format=json"],
        &[("JUJU_RELATION_ID", "s3-credentials:3")],
        "",
    );
    assert_eq!((o.code, o.stdout.as_str()), (0, "[\"s3-integrator/0\"]\n"));
    c.err(
        "relation-list",
        &["-r", "9"],
        2,
        "invalid value \"9\" for option -r: relation not found",
    );
    c.err(
        "relation-list",
        &["-r", "object-storage:3"],
        2,
        "invalid value \"object-storage:3\" for option -r: relation not found",
    );
    c.err(
        "relation-list",
        &["--bogus"],
        2,
        "option provided but not defined: --bogus",
    );

    assert_eq!(
        c.json(
            "relation-get",
            &["-r", "3", "--app", "--format=json", "-", "s3-integrator"]
        ),
        json!({"bucket": "ckf-backups", "access-key": "AK"})
    );
    assert_eq!(
        c.ok(
            "relation-get",
            &["-r", "3", "--app", "bucket", "s3-integrator/0"]
        ),
        "ckf-backups\n"
    );
    assert_eq!(
        c.json(
            "relation-get",
            &["-r", "3", "--format=json", "-", "s3-integrator/0"]
        ),
        json!({"ingress-address": "10.1.2.3"})
    );
    assert_eq!(
        c.json(
            "relation-get",
            &["-r", "3", "--app", "--format=json", "-", "backup-agent"]
        ),
        json!({"bucket": "old"})
    );
    c.err(
        "relation-get",
        &["-r", "3", "-", "kfp-db/0"],
        1,
        "cannot read settings for unit \"kfp-db/0\" in relation \"s3-credentials:3\": unit \"kfp-db/0\": settings not found",
    );

    // Writing: args, --file -, an empty value deletes.
    c.ok(
        "relation-set",
        &["-r", "3", "--app", "bucket=ckf-backups", "path=ckf"],
    );
    let o = c.run_env(
        "relation-set",
        &["-r", "s3-credentials:3", "--file", "-"],
        &[],
        "requested: \"true\"\nport: 9000\n",
    );
    assert_eq!(o.code, 0, "{}", o.stderr);
    c.ok("relation-set", &["-r", "3", "--app", "path="]);
    c.err(
        "relation-set",
        &["-r", "3", "x"],
        2,
        "expected \"key=value\", got \"x\"",
    );
    let r = &c.state().relations[0];
    assert_eq!(r.local_app_data, bag(&[("bucket", "ckf-backups")]));
    assert_eq!(
        r.local_unit_data,
        bag(&[("requested", "true"), ("port", "9000")])
    );

    // A non-leader cannot read or write its own application bag.
    let n = ctx(base_state(false, false));
    n.err(
        "relation-set",
        &["-r", "3", "--app", "a=b"],
        1,
        "cannot write relation settings",
    );
    n.err(
        "relation-get",
        &["-r", "3", "--app", "-", "backup-agent"],
        1,
        "permission denied",
    );
    n.ok("relation-set", &["-r", "3", "a=b"]);
    assert_eq!(
        n.state().relations[0].local_app_data,
        bag(&[("bucket", "old")])
    );
}

#[test]
fn config_status_leader_secret_log_resource_version() {
    let c = ctx(base_state(true, false));
    assert_eq!(
        c.json("config-get", &["--format=json"]),
        json!({"model": "kubeflow", "checkers": 8, "dry": false})
    );
    assert_eq!(
        c.json("config-get", &["checkers", "--format=json"]),
        json!(8)
    );
    assert_eq!(c.ok("config-get", &["model"]), "kubeflow\n");
    assert_eq!(c.ok("config-get", &["missing"]), "");

    c.ok("status-set", &["maintenance", "backing up"]);
    c.ok("status-set", &["--application", "active"]);
    c.err(
        "status-set",
        &["running", "x"],
        2,
        "invalid status \"running\", expected one of [maintenance blocked waiting active]",
    );
    let s = c.state();
    assert_eq!(
        s.unit_status,
        Some(StatusValue {
            status: "maintenance".into(),
            message: "backing up".into()
        })
    );
    assert_eq!(s.app_status.as_ref().unwrap().status, "active");
    assert_eq!(s.status_history.len(), 2);

    assert_eq!(c.ok("is-leader", &["--format=json"]), "true\n");
    assert_eq!(c.ok("is-leader", &[]), "True\n");
    let n = ctx(base_state(false, false));
    assert_eq!(n.ok("is-leader", &["--format=json"]), "false\n");
    n.err(
        "status-set",
        &["--application", "active"],
        1,
        "setting application status: this unit is not the leader",
    );

    assert_eq!(
        c.json(
            "secret-get",
            &["secret:d0abcdefghijklmnopqr", "--format=json"]
        ),
        json!({"username": "admin", "password": "pw"})
    );
    assert_eq!(
        c.ok(
            "secret-get",
            &["secret://some-model-uuid/d0abcdefghijklmnopqr", "password"]
        ),
        "pw\n"
    );
    c.err(
        "secret-get",
        &["secret:d0zzzzzzzzzzzzzzzzzz"],
        1,
        "secret \"secret:d0zzzzzzzzzzzzzzzzzz\" not found",
    );

    c.ok("juju-log", &["hello", "world"]);
    c.ok("juju-log", &["-l", "WARNING", "careful"]);
    c.err("juju-log", &[], 1, "no message specified");
    let log = c.state().juju_log;
    assert_eq!(
        log.iter()
            .map(|l| (l.level.as_str(), l.message.as_str()))
            .collect::<Vec<_>>(),
        vec![("INFO", "hello world"), ("WARNING", "careful")]
    );

    assert_eq!(c.ok("resource-get", &["juju-client"]), "/opt/juju\n");
    let o = c.run("resource-get", &["backup-agent-image"]);
    assert_eq!(o.code, 1);
    assert!(
        o.stderr.starts_with("ERROR could not download resource")
            && o.stderr
                .contains("resource#backup-agent/backup-agent-image not found"),
        "{}",
        o.stderr
    );
    c.ok("application-version-set", &["0.1.0"]);
    assert_eq!(c.state().workload_version.as_deref(), Some("0.1.0"));
}

#[test]
fn concurrent_tool_calls_lose_nothing() {
    let c = ctx(base_state(true, true));
    let children: Vec<_> = (0..12)
        .map(|i| {
            Command::new(c.tools.join("action-log"))
                .arg(format!("line {i}"))
                .env_clear()
                .env(STATE_ENV, &c.state)
                .spawn()
                .unwrap()
        })
        .collect();
    for mut ch in children {
        assert!(ch.wait().unwrap().success());
    }
    let mut lines = c.state().action_log;
    lines.sort();
    assert_eq!(lines.len(), 12);
}

#[test]
fn run_dispatch_gives_a_cleared_juju_environment() {
    let c = ctx(base_state(true, true));
    let charm = c.dir.join("charm");
    std::fs::create_dir_all(&charm).unwrap();
    let script = r#"#!/bin/sh
env | sort > "$JUJU_CHARM_DIR/env.txt"
pwd > "$JUJU_CHARM_DIR/pwd.txt"
if command -v juju >/dev/null; then echo "juju on PATH"; fi
action-set where="$JUJU_DISPATCH_PATH" action="$JUJU_ACTION_NAME"
action-log "logged"
echo out; echo err >&2
exit 4
"#;
    let dispatch = charm.join("dispatch");
    std::fs::write(&dispatch, script).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&dispatch, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = run_dispatch(
        &charm,
        "actions/create-backup",
        &c.state,
        &[("KUBECONFIG".into(), "/k".into())],
    )
    .unwrap();
    assert_eq!(out.code, 4);
    assert_eq!(out.stdout, "out\n", "the sandbox juju must not be on PATH");
    assert_eq!(out.stderr, "err\n");
    assert_eq!(
        Value::Object(out.state.results.clone()),
        json!({"where": "actions/create-backup", "action": "create-backup"})
    );
    assert_eq!(out.state.action_log, vec!["logged"]);
    let env = std::fs::read_to_string(charm.join("env.txt")).unwrap();
    let vars: BTreeMap<&str, &str> = env.lines().filter_map(|l| l.split_once('=')).collect();
    for (k, v) in [
        ("JUJU_DISPATCH_PATH", "actions/create-backup"),
        ("JUJU_UNIT_NAME", "backup-agent/0"),
        ("JUJU_MODEL_NAME", "kubeflow"),
        ("JUJU_ACTION_NAME", "create-backup"),
        ("JUJU_ACTION_UUID", "7"),
        ("JUJU_VERSION", "3.6.4"),
        ("KUBECONFIG", "/k"),
    ] {
        assert_eq!(vars.get(k).copied(), Some(v), "{k}");
    }
    assert_eq!(vars["JUJU_CHARM_DIR"], charm.to_str().unwrap());
    assert!(vars["PATH"].starts_with(c.dir.join("hook-tools").to_str().unwrap()));
    assert!(vars.contains_key("JUJU_CONTEXT_ID") && vars.contains_key("HOME"));
    assert!(!vars.contains_key("CARGO") && !vars.contains_key("BACKUP_AGENT_SANDBOX"));
    assert_eq!(
        std::fs::read_to_string(charm.join("pwd.txt"))
            .unwrap()
            .trim(),
        charm.to_str().unwrap()
    );
}
