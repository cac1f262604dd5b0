//! A real (tiny, shell) charm deployed into the sandbox: hooks in Juju's order through its
//! `dispatch`, relations to s3-integrator, config, secrets, the controller login of a charm
//! that brings its own JUJU_DATA, and `juju run` with Juju's schema checks and waiting rules.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::common::*;
use backup_agent_sandbox::model::{now_ms, LocalCharm};
use backup_agent_sandbox::process::alive;
use serde_json::{json, Value};

const METADATA: &str = r#"name: test-charm
summary: A charm for the sandbox's tests.
containers:
  workload:
    resource: workload-image
resources:
  workload-image:
    type: oci-image
  juju-client:
    type: file
    filename: juju
requires:
  s3-credentials:
    interface: s3
    limit: 1
  object-storage:
    interface: object-storage
"#;

const CONFIG: &str = r#"options:
  mode:
    type: string
    default: normal
    description: How to behave.
  checkers:
    type: int
    default: 8
    description: A number.
  verbose:
    type: boolean
    default: false
    description: A switch.
  controller-secret:
    type: string
    default: ""
    description: Secret with the controller's credentials.
"#;

const ACTIONS: &str = r#"echo:
  description: Echo the parameters back.
  params:
    msg: {type: string}
    count: {type: integer, default: 3}
    tags:
      type: array
      items: {type: string, enum: [a, b, c]}
  required: [msg]
  additionalProperties: false
fail:
  description: Fails with a message.
crash:
  description: Exits 3.
slow:
  description: Waits for $HOME/go.
call-juju:
  description: Logs in to the controller with the credentials in controller-secret.
"#;

const DISPATCH: &str = r#"#!/bin/bash
set -e
juju-log -l DEBUG "dispatch $JUJU_DISPATCH_PATH"
case "$JUJU_DISPATCH_PATH" in
hooks/install)
  status-set maintenance "installing"
  application-version-set 1.2.3 ;;
hooks/config-changed)
  mode=$(config-get mode)
  if [ "$mode" = broken ]; then status-set blocked "mode is broken"; else status-set active "mode $mode checkers $(config-get checkers)"; fi
  sid=$(config-get controller-secret)
  if [ -n "$sid" ]; then
    if out=$(secret-get "$sid" username 2>&1); then juju-log "secret user $out"; else juju-log "secret refused: $out"; fi
  fi ;;
hooks/s3-credentials-relation-created)
  juju-log "created $JUJU_RELATION_ID remote-app $JUJU_REMOTE_APP ids $(relation-ids s3-credentials --format=json)" ;;
hooks/s3-credentials-relation-joined)
  juju-log "joined $JUJU_REMOTE_UNIT" ;;
hooks/s3-credentials-relation-changed)
  juju-log "changed units $(relation-list --format=json) endpoint $(relation-get --app endpoint)"
  relation-set --app bucket="$(relation-get --app bucket "$JUJU_REMOTE_APP")"
  echo "requested: yes" | relation-set --file - ;;
hooks/s3-credentials-relation-departed)
  juju-log "departed $JUJU_DEPARTING_UNIT units $(relation-list --format=json)" ;;
hooks/s3-credentials-relation-broken)
  juju-log "broken $JUJU_RELATION_ID units $(relation-list --format=json) ids $(relation-ids s3-credentials --format=json)"
  status-set blocked "needs s3" ;;
actions/echo)
  action-log "echoing"
  action-set echo.msg="$(action-get msg)" echo.count="$(action-get count)" tags="$(action-get tags --format=json)"
  echo "to stdout"
  echo "to stderr" >&2 ;;
actions/fail)
  action-fail "it broke" ;;
actions/crash)
  action-set partial=yes
  exit 3 ;;
actions/slow)
  status-set maintenance "slow action"
  action-log "waiting for go"
  while [ ! -e "$HOME/go" ]; do sleep 0.05; done
  action-set done=yes
  status-set active "ready" ;;
actions/call-juju)
  sid=$(config-get controller-secret)
  export JUJU_DATA="$HOME/juju-data"
  mkdir -p "$JUJU_DATA"
  {
    echo "current-controller: ctl"
    echo "controllers:"
    echo "  ctl:"
    echo "    api-endpoints: [$(secret-get "$sid" controller-addresses)]"
    echo "    ca-cert: |"
    secret-get "$sid" ca-cert | sed 's/^/      /'
  } > "$JUJU_DATA/controllers.yaml"
  printf 'controllers:\n  ctl:\n    user: %s\n    password: %s\n' "$(secret-get "$sid" username)" "$(secret-get "$sid" password)" > "$JUJU_DATA/accounts.yaml"
  juju=$(resource-get juju-client)
  if out=$("$juju" status -m ctl:admin/kubeflow --format=json 2>&1); then
    action-set login=ok model="$(echo "$out" | grep -o '"name":"kubeflow"' | head -1)"
  else
    action-set login=refused error="$out"
  fi ;;
esac
"#;

fn write_charm(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    for (name, text) in [
        ("metadata.yaml", METADATA),
        ("config.yaml", CONFIG),
        ("actions.yaml", ACTIONS),
        ("dispatch", DISPATCH),
    ] {
        std::fs::write(dir.join(name), text).unwrap();
    }
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.join("dispatch"), std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// Packs the charm directory into a `.charm` zip, with unix modes.
fn pack(dir: &Path, out: &Path) {
    use std::io::Write;
    let mut zip = zip::ZipWriter::new(std::fs::File::create(out).unwrap());
    for name in ["metadata.yaml", "config.yaml", "actions.yaml", "dispatch"] {
        let mode = if name == "dispatch" { 0o755 } else { 0o644 };
        let opts = zip::write::SimpleFileOptions::default().unix_permissions(mode);
        zip.start_file(name, opts).unwrap();
        zip.write_all(&std::fs::read(dir.join(name)).unwrap())
            .unwrap();
    }
    zip.finish().unwrap();
}

fn local(sb: &backup_agent_sandbox::Sandbox) -> LocalCharm {
    sb.model().read().unwrap().apps["test-charm"]
        .local
        .clone()
        .expect("a local charm")
}

/// The `dispatch ...` debug lines: the hooks and actions that ran, in order.
fn dispatched(sb: &backup_agent_sandbox::Sandbox) -> Vec<String> {
    local(sb)
        .log
        .iter()
        .filter_map(|l| l.message.strip_prefix("dispatch ").map(str::to_string))
        .collect()
}

fn logged(sb: &backup_agent_sandbox::Sandbox, prefix: &str) -> Vec<String> {
    local(sb)
        .log
        .iter()
        .filter(|l| l.message.starts_with(prefix))
        .map(|l| l.message.clone())
        .collect()
}

fn deploy(sb: &backup_agent_sandbox::Sandbox, tmp: &Path) -> PathBuf {
    let src = tmp.join("src");
    write_charm(&src);
    let file = tmp.join("test-charm.charm");
    pack(&src, &file);
    let juju_bin = sb.layout.bin().join("juju");
    let r = juju(
        sb,
        &[
            "deploy",
            file.to_str().unwrap(),
            "--resource",
            &format!("juju-client={}", juju_bin.display()),
            "--resource",
            "workload-image=ubuntu:22.04",
            "--config",
            "checkers=4",
            "--trust",
        ],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(
        r.stderr,
        "Located local charm \"test-charm\", revision 0\nDeploying \"test-charm\" from local charm \"test-charm\", revision 0 on ubuntu@22.04/stable\n"
    );
    file
}

fn unit_status(sb: &backup_agent_sandbox::Sandbox) -> (Value, Value) {
    let st = juju(sb, &["status", "--format=json"]).json();
    let u = st["applications"]["test-charm"]["units"]["test-charm/0"].clone();
    (
        u["workload-status"].clone(),
        u["juju-status"]["current"].clone(),
    )
}

#[test]
fn deploy_integrate_config_and_remove_relation_run_the_hooks() {
    let sb = sandbox();
    let tmp = tempfile::tempdir().unwrap();
    deploy(&sb, tmp.path());
    assert_eq!(
        dispatched(&sb),
        [
            "hooks/install",
            "hooks/leader-elected",
            "hooks/config-changed",
            "hooks/start",
            "hooks/workload-pebble-ready",
            "hooks/update-status"
        ]
    );
    let st = juju(&sb, &["status", "--format=json"]).json();
    let app = &st["applications"]["test-charm"];
    assert_eq!(app["charm"], "local:test-charm-0");
    assert_eq!(app["charm-name"], "test-charm");
    assert_eq!(app["charm-rev"], 0);
    assert_eq!(app["version"], "1.2.3");
    assert_eq!(app["application-status"]["current"], "active");
    let (ws, agent) = unit_status(&sb);
    assert_eq!(ws["current"], "active");
    assert_eq!(ws["message"], "mode normal checkers 4");
    assert_eq!(agent, "idle");
    assert_eq!(app["units"]["test-charm/0"]["leader"], true);
    // The unpacked charm kept dispatch executable; resources are attached.
    let l = local(&sb);
    assert!(l.dir.ends_with("charms/test-charm"));
    assert!(l.trust);
    assert_eq!(
        l.resources["juju-client"],
        sb.layout.dir.join("resources/test-charm/juju-client/juju")
    );
    let again = juju(&sb, &["deploy", tmp.path().join("src").to_str().unwrap()]);
    assert_eq!(
        (again.code, again.stderr.as_str()),
        (
            1,
            "ERROR cannot add application \"test-charm\": application already exists\n"
        )
    );

    // Config: typed like Juju, then config-changed.
    for (kv, want) in [
        (
            "checkers=many",
            "ERROR option \"checkers\" expected int, got \"many\"\n",
        ),
        (
            "verbose=perhaps",
            "ERROR option \"verbose\" expected boolean, got \"perhaps\"\n",
        ),
        ("nope=1", "ERROR unknown option \"nope\"\n"),
    ] {
        let r = juju(&sb, &["config", "test-charm", kv]);
        assert_eq!((r.code, r.stderr.as_str()), (1, want));
    }
    let r = juju(
        &sb,
        &["config", "test-charm", "mode=broken", "verbose=true"],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(dispatched(&sb).last().unwrap(), "hooks/config-changed");
    assert_eq!(unit_status(&sb).0["message"], "mode is broken");
    assert_eq!(
        juju(&sb, &["config", "test-charm", "verbose"]).stdout,
        "true\n"
    );
    juju(&sb, &["config", "test-charm", "--reset", "mode"]);
    assert_eq!(unit_status(&sb).0["current"], "active");

    // Integrate: refusals first.
    for (args, want) in [
        (
            vec!["integrate", "test-charm", "nosuch"],
            "ERROR application \"nosuch\" not found\n",
        ),
        (
            vec!["integrate", "test-charm", "kfp-ui"],
            "ERROR cannot add relation \"test-charm kfp-ui\": no relations found\n",
        ),
    ] {
        let r = juju(&sb, &args);
        assert_eq!((r.code, r.stderr.as_str()), (1, want));
    }
    let r = juju(&sb, &["integrate", "test-charm", "s3-integrator"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let n = dispatched(&sb);
    assert_eq!(
        n[n.len() - 3..],
        [
            "hooks/s3-credentials-relation-created",
            "hooks/s3-credentials-relation-joined",
            "hooks/s3-credentials-relation-changed"
        ]
    );
    let created = logged(&sb, "created ");
    let rel_id = created[0].split_whitespace().nth(1).unwrap().to_string();
    assert!(rel_id.starts_with("s3-credentials:"), "{created:?}");
    assert_eq!(
        created[0],
        format!("created {rel_id} remote-app s3-integrator ids [\"{rel_id}\"]")
    );
    assert_eq!(logged(&sb, "joined "), ["joined s3-integrator/0"]);
    assert_eq!(
        logged(&sb, "changed "),
        [format!(
            "changed units [\"s3-integrator/0\"] endpoint {}",
            sb.info.dest.endpoint()
        )]
    );
    // The provider's bag is s3-integrator's, the charm wrote `bucket` on its side.
    let su = juju(&sb, &["show-unit", "s3-integrator/0", "--format=json"]).json();
    let info = su["s3-integrator/0"]["relation-info"].as_array().unwrap();
    let mine = info
        .iter()
        .find(|r| r["related-endpoint"] == "s3-credentials" && r["endpoint"] == "s3-credentials")
        .expect("the new relation");
    assert_eq!(mine["application-data"], json!({"bucket": "ckf-backups"}));
    let su = juju(&sb, &["show-unit", "test-charm/0", "--format=json"]).json();
    let rel = &su["test-charm/0"]["relation-info"][0];
    assert_eq!(rel["endpoint"], "s3-credentials");
    let bag = &rel["application-data"];
    assert_eq!(bag["bucket"], "ckf-backups");
    assert_eq!(bag["access-key"], sb.info.dest.access_key);
    assert_eq!(bag["secret-key"], sb.info.dest.secret_key);
    assert_eq!(bag["path"], "mysql");
    assert_eq!(bag["s3-uri-style"], "path");
    assert_eq!(rel["local-unit"]["data"]["requested"], "yes");
    assert!(rel["local-unit"]["data"]["ingress-address"].is_string());

    let r = juju(
        &sb,
        &["integrate", "test-charm:s3-credentials", "s3-integrator"],
    );
    assert_eq!(r.code, 1);
    assert_eq!(r.stderr, "ERROR cannot add relation \"test-charm:s3-credentials s3-integrator:s3-credentials\": relation test-charm:s3-credentials s3-integrator:s3-credentials already exists\n");

    // remove-relation: departed, then broken with no remote units and the id not listed.
    let r = juju(&sb, &["remove-relation", "test-charm", "s3-integrator"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let n = dispatched(&sb);
    assert_eq!(
        n[n.len() - 2..],
        [
            "hooks/s3-credentials-relation-departed",
            "hooks/s3-credentials-relation-broken"
        ]
    );
    assert_eq!(
        logged(&sb, "departed "),
        ["departed s3-integrator/0 units []"]
    );
    assert_eq!(
        logged(&sb, "broken "),
        [format!("broken {rel_id} units [] ids []")]
    );
    assert_eq!(unit_status(&sb).0["message"], "needs s3");
    let su = juju(&sb, &["show-unit", "test-charm/0", "--format=json"]).json();
    assert_eq!(su["test-charm/0"]["relation-info"], json!([]));
    let r = juju(&sb, &["remove-relation", "test-charm", "s3-integrator"]);
    assert_eq!(
        (r.code, r.stderr.as_str()),
        (1, "ERROR relation \"test-charm s3-integrator\" not found\n")
    );

    // A charm directory deploys too, under another name; the existing model is untouched.
    let r = juju(
        &sb,
        &["deploy", tmp.path().join("src").to_str().unwrap(), "second"],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let st = juju(&sb, &["status", "--format=json"]).json();
    assert_eq!(
        st["applications"]["second"]["units"]["second/0"]["workload-status"]["current"],
        "active"
    );
    assert_eq!(st["applications"]["kfp-db"]["charm-name"], "mysql-k8s");
}

fn juju_with_data(sb: &backup_agent_sandbox::Sandbox, data: &Path, args: &[&str]) -> Run {
    let out = Command::new(sb.layout.bin().join("juju"))
        .args(args)
        .env("JUJU_DATA", data)
        .env_remove("BACKUP_AGENT_SANDBOX")
        .env_remove("JUJU_MODEL")
        .output()
        .unwrap();
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn write_juju_data(dir: &Path, endpoint: &str, ca: &str, user: &str, password: &str) {
    std::fs::create_dir_all(dir).unwrap();
    let ca_yaml: String = ca.lines().map(|l| format!("      {l}\n")).collect();
    std::fs::write(
        dir.join("controllers.yaml"),
        format!("current-controller: mine\ncontrollers:\n  mine:\n    api-endpoints: ['{endpoint}']\n    ca-cert: |\n{ca_yaml}"),
    )
    .unwrap();
    std::fs::write(
        dir.join("accounts.yaml"),
        format!("controllers:\n  mine:\n    user: {user}\n    password: {password}\n"),
    )
    .unwrap();
}

#[test]
fn secrets_controller_login_and_actions() {
    let sb = sandbox();
    let tmp = tempfile::tempdir().unwrap();
    deploy(&sb, tmp.path());

    // show-controller, with and without the password.
    let c = juju(
        &sb,
        &["show-controller", "--show-password", "--format=json"],
    );
    assert_eq!(c.code, 0, "{}", c.stderr);
    let c = c.json();
    let ctl = &c["sandbox"];
    assert_eq!(ctl["details"]["api-endpoints"], json!(["127.0.0.1:17070"]));
    assert_eq!(ctl["account"]["user"], "admin");
    assert_eq!(ctl["account"]["access"], "superuser");
    let ca = ctl["details"]["ca-cert"].as_str().unwrap().to_string();
    assert!(
        ca.starts_with("-----BEGIN CERTIFICATE-----\n")
            && ca.ends_with("-----END CERTIFICATE-----\n")
    );
    assert!(ctl["details"]["controller-uuid"].is_string());
    let password = ctl["account"]["password"].as_str().unwrap().to_string();
    let plain = juju(&sb, &["show-controller", "--format=json"]).json();
    assert!(plain["sandbox"]["account"].get("password").is_none());
    assert_eq!(plain["sandbox"]["details"]["ca-cert"], json!(ca), "stable");

    // Logins with a JUJU_DATA: each refusal as Juju words it, then success.
    let data = tmp.path().join("data");
    let r = juju_with_data(&sb, &data, &["status", "--format=json"]);
    assert_eq!(r.code, 1);
    assert!(
        r.stderr.starts_with("ERROR No controllers registered."),
        "{}",
        r.stderr
    );
    for (endpoint, ca_, user, pw, want) in [
        (
            "10.0.0.9:17070",
            ca.as_str(),
            "admin",
            password.as_str(),
            "ERROR cannot connect to API: dial tcp 10.0.0.9:17070: connect: connection refused\n",
        ),
        (
            "127.0.0.1:17070",
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
            "admin",
            password.as_str(),
            "ERROR cannot connect to API: x509: certificate signed by unknown authority\n",
        ),
        (
            "127.0.0.1:17070",
            ca.as_str(),
            "admin",
            "wrong",
            "ERROR cannot log in: invalid entity name or password (unauthorized access)\n",
        ),
        (
            "127.0.0.1:17070",
            ca.as_str(),
            "bob",
            password.as_str(),
            "ERROR cannot log in: invalid entity name or password (unauthorized access)\n",
        ),
    ] {
        write_juju_data(&data, endpoint, ca_, user, pw);
        let r = juju_with_data(&sb, &data, &["status", "--format=json"]);
        assert_eq!((r.code, r.stderr.as_str()), (1, want));
    }
    write_juju_data(&data, "127.0.0.1:17070", &ca, "admin", &password);
    for m in ["kubeflow", "mine:admin/kubeflow"] {
        let r = juju_with_data(&sb, &data, &["status", "-m", m, "--format=json"]);
        assert_eq!(r.code, 0, "{}", r.stderr);
        assert_eq!(r.json()["model"]["name"], "kubeflow");
    }

    // Secrets: key rules, grants; only a granted secret reaches the charm.
    let r = juju(&sb, &["add-secret", "bad", "Password=x"]);
    assert_eq!(
        (r.code, r.stderr.as_str()),
        (1, "ERROR key \"Password\" not valid\n")
    );
    let r = juju(&sb, &["add-secret", "bad", "pw=x"]);
    assert_eq!(
        (r.code, r.stderr.as_str()),
        (1, "ERROR key \"pw\" not valid\n")
    );
    let ca_file = tmp.path().join("ca.pem");
    std::fs::write(&ca_file, &ca).unwrap();
    let r = juju(
        &sb,
        &[
            "add-secret",
            "controller",
            "controller-addresses=127.0.0.1:17070",
            &format!("ca-cert#file={}", ca_file.display()),
            "username=admin",
            &format!("password={password}"),
        ],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let uri = r.stdout.trim().to_string();
    let id = uri.strip_prefix("secret:").expect("secret:<id>");
    assert_eq!(id.len(), 20);
    assert!(id
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit()));
    let r = juju(&sb, &["add-secret", "controller", "abc=1"]);
    assert_eq!(
        (r.code, r.stderr.as_str()),
        (1, "ERROR secret with name \"controller\" already exists\n")
    );

    juju(
        &sb,
        &["config", "test-charm", &format!("controller-secret={uri}")],
    );
    assert_eq!(
        logged(&sb, "secret "),
        [format!("secret refused: ERROR secret \"{uri}\" not found")]
    );
    let r = juju(&sb, &["grant-secret", "nosuch", "test-charm"]);
    assert_eq!(
        (r.code, r.stderr.as_str()),
        (1, "ERROR secret \"nosuch\" not found\n")
    );
    let r = juju(&sb, &["grant-secret", "controller", "test-charm"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    juju(&sb, &["config", "test-charm", "mode=again"]);
    assert_eq!(logged(&sb, "secret ").last().unwrap(), "secret user admin");

    // The charm logs in with the secret's credentials through its juju-client resource.
    let t = action(&sb, "test-charm/0", "call-juju", &[]);
    assert_eq!(t["results"]["login"], "ok", "{t}");
    assert_eq!(t["results"]["model"], "\"name\":\"kubeflow\"");

    // juju run: Juju's schema refusals.
    for (params, want) in [
        (vec!["msg=hi", "colour=red"], "ERROR validation failed: (root) : additional property \"colour\" is not allowed, given {\"colour\":\"red\",\"msg\":\"hi\"}\n"),
        (vec!["msg=hi", "count=many"], "ERROR validation failed: (root).count : must be of type integer, given \"many\"\n"),
        (vec!["count=2"], "ERROR validation failed: (root) : \"msg\" property is missing and required, given {\"count\":2}\n"),
        (vec!["msg=hi", "tags=[a, z]"], "ERROR validation failed: (root).tags.1 : must be one of the following: \"a\", \"b\", \"c\", given \"z\"\n"),
    ] {
        let mut args = vec!["run", "test-charm/0", "echo"];
        args.extend(params);
        args.push("--wait=1m");
        let r = juju(&sb, &args);
        assert_eq!((r.code, r.stderr.as_str()), (1, want));
    }
    let r = juju(&sb, &["run", "test-charm/0", "nope", "--wait=1m"]);
    assert_eq!(
        (r.code, r.stderr.as_str()),
        (
            1,
            "ERROR action \"nope\" not defined on unit \"test-charm/0\"\n"
        )
    );

    // Results, defaults inserted, YAML values, log, stdout and stderr.
    let t = action(&sb, "test-charm/0", "echo", &["msg=hello", "tags=[a, b]"]);
    assert_eq!(t["status"], "completed");
    assert_eq!(
        t["results"],
        json!({"echo": {"msg": "hello", "count": "3"}, "tags": "[\"a\",\"b\"]", "return-code": 0, "stdout": "to stdout\n", "stderr": "to stderr\n"})
    );
    let log = t["log"].as_array().unwrap();
    assert_eq!(log.len(), 1);
    assert!(
        log[0].as_str().unwrap().ends_with(" +0000 UTC echoing"),
        "{log:?}"
    );
    assert!(t["timing"]["completed"].is_string() && t["id"].is_string());
    // --string-args keeps strings: count=5 is then a string and refused.
    let r = juju(
        &sb,
        &[
            "run",
            "test-charm/0",
            "echo",
            "msg=1",
            "count=5",
            "--string-args",
            "--wait=1m",
        ],
    );
    assert_eq!(r.code, 1);
    assert!(
        r.stderr
            .contains("(root).count : must be of type integer, given \"5\""),
        "{}",
        r.stderr
    );
    // --params file, overridden by the command line.
    let pf = tmp.path().join("params.yaml");
    std::fs::write(&pf, "msg: from-file\ncount: 9\n").unwrap();
    let t = action(
        &sb,
        "test-charm/0",
        "echo",
        &["count=1", "--params", pf.to_str().unwrap()],
    );
    assert_eq!(
        t["results"]["echo"],
        json!({"msg": "from-file", "count": "1"})
    );

    // Failures: action-fail, and a non-zero exit without it.
    let t = action(&sb, "test-charm/0", "fail", &[]);
    assert_eq!(
        (t["status"].as_str(), t["message"].as_str()),
        (Some("failed"), Some("it broke"))
    );
    assert_eq!(t["results"]["return-code"], 0);
    let r = juju(
        &sb,
        &["run", "test-charm/0", "crash", "--format=json", "--wait=1m"],
    );
    assert_eq!(r.code, 1);
    let t = r.json()["test-charm/0"].clone();
    assert_eq!(
        (t["status"].as_str(), t["message"].as_str()),
        (Some("failed"), Some("exit status 3"))
    );
    assert_eq!(t["results"]["return-code"], 3);
    assert_eq!(t["results"]["partial"], "yes");
    assert!(
        r.stderr.contains(&format!(
            " - id \"{}\" with return code 3\n",
            t["id"].as_str().unwrap()
        )),
        "{}",
        r.stderr
    );

    // --wait runs out while the task goes on; the unit shows the charm's status meanwhile.
    let r = juju(
        &sb,
        &["run", "test-charm/0", "slow", "--format=json", "--wait=1s"],
    );
    assert_eq!(r.code, 1);
    assert!(
        r.stderr
            .ends_with("ERROR timed out waiting for results from: unit test-charm/0\n"),
        "{}",
        r.stderr
    );
    let id = r
        .stderr
        .lines()
        .find_map(|l| l.trim().strip_prefix("- task "))
        .and_then(|l| l.split_whitespace().next())
        .unwrap()
        .to_string();
    let st = juju(&sb, &["show-task", &id, "--format=json"]);
    assert_eq!(st.code, 0, "{}", st.stderr);
    let st = st.json();
    assert_eq!(st["status"], "running");
    assert!(
        st["log"][0].as_str().unwrap().ends_with("waiting for go"),
        "{st}"
    );
    let (ws, agent) = unit_status(&sb);
    assert_eq!(
        (ws["current"].as_str(), ws["message"].as_str()),
        (Some("maintenance"), Some("slow action"))
    );
    assert_eq!(agent, "executing");
    let r = juju(&sb, &["show-task", &id, "--wait=200ms"]);
    assert_eq!(
        (r.code, r.stderr.clone()),
        (
            1,
            format!("ERROR timed out waiting for results from: task {id}\n")
        )
    );
    std::fs::write(sb.layout.dir.join("charm-home/go"), "").unwrap();
    let r = juju(&sb, &["show-task", &id, "--wait=1m", "--format=json"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let t = r.json();
    assert_eq!(t["status"], "completed");
    assert_eq!(t["results"]["done"], "yes");
    until("the unit idle again", Duration::from_secs(10), || {
        unit_status(&sb).1 == "idle"
    });
    assert_eq!(unit_status(&sb).0["message"], "ready");

    // --background, then show-task --wait.
    let r = juju(
        &sb,
        &["run", "test-charm/0", "echo", "msg=bg", "--background"],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let id = r
        .stderr
        .lines()
        .find_map(|l| l.strip_prefix("Check task status with 'juju show-task "))
        .unwrap()
        .trim_end_matches('\'')
        .to_string();
    let r = juju(&sb, &["show-task", &id, "--wait=1m", "--format=json"]);
    assert_eq!(r.json()["results"]["echo"]["msg"], "bg");

    // mysql-k8s actions are unchanged.
    let t = action(&sb, "kfp-db/0", "get-cluster-status", &[]);
    assert_eq!(t["status"], "completed");

    // `down` stops a charm action that is still running.
    std::fs::remove_file(sb.layout.dir.join("charm-home/go")).unwrap();
    let r = juju(&sb, &["run", "test-charm/0", "slow", "--background"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let mut pid = None;
    until("the task runner to start", Duration::from_secs(10), || {
        pid = sb
            .model()
            .read()
            .unwrap()
            .tasks
            .values()
            .filter(|t| t.action == "slow" && t.status_at(now_ms()) == "running")
            .find_map(|t| t.runner_pid);
        pid.is_some()
    });
    let pid = pid.unwrap();
    assert!(alive(pid));
    drop(sb);
    assert!(
        !alive(pid),
        "the run-task process {pid} outlived the sandbox"
    );
}
