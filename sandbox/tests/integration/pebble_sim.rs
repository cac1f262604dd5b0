//! The Pebble simulator through its socket, with a real HTTP client (curl): Pebble's
//! envelopes and errors, files pushed into the container and read back, layers and the plan,
//! services that really run (their output in /v1/logs and their log file), fail and back off,
//! stop by PID, and die with the daemon; and a deployed sidecar charm getting its Pebble and
//! `down` stopping it.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::common::until;
use backup_agent_sandbox::process::alive;
use serde_json::{json, Value};

const EXE: &str = env!("CARGO_BIN_EXE_backup-agent-sandbox");

/// A daemon started through the binary, as the sandbox starts it, in a temporary directory.
struct Pebble {
    _tmp: tempfile::TempDir,
    /// The container directory: socket, logs, `services.json`.
    dir: PathBuf,
    root: PathBuf,
    socket: PathBuf,
    child: Child,
}

impl Pebble {
    fn start() -> Pebble {
        let tmp = tempfile::Builder::new()
            .prefix("pebble-")
            .tempdir()
            .unwrap();
        let dir = tmp.path().join("backup-agent");
        let root = dir.join("root");
        let socket = dir.join("pebble.socket");
        let child = Command::new(EXE)
            .args(["pebble", "--container", "backup-agent", "--socket"])
            .arg(&socket)
            .arg("--root")
            .arg(&root)
            .env("PEBBLE_SIM_TEST", "inherited")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let p = Pebble {
            _tmp: tmp,
            dir,
            root,
            socket,
            child,
        };
        until("the daemon to answer", Duration::from_secs(20), || {
            p.curl(&["http://localhost/v1/system-info"]).0 == 200
        });
        p
    }

    /// curl against the socket: the status and the body.
    fn curl(&self, args: &[&str]) -> (u16, String) {
        let out = Command::new("curl")
            .args(["-sS", "--unix-socket"])
            .arg(&self.socket)
            .args(["-w", "\n%{http_code}"])
            .args(args)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
        (code.trim().parse().unwrap_or(0), body.to_string())
    }

    fn get(&self, path: &str) -> (u16, Value) {
        let (code, body) = self.curl(&[&format!("http://localhost{path}")]);
        (code, serde_json::from_str(&body).unwrap_or(json!(body)))
    }

    fn post(&self, path: &str, body: Value) -> (u16, Value) {
        let (code, body) = self.curl(&[
            "-X",
            "POST",
            "-H",
            "Content-Type: application/json",
            "--data-binary",
            &body.to_string(),
            &format!("http://localhost{path}"),
        ]);
        (code, serde_json::from_str(&body).unwrap_or(json!(body)))
    }

    /// Pushes local `file` to the container's `path` with `meta` (`make-dirs`, `permissions`).
    fn push(&self, file: &Path, path: &str, meta: Value) -> (u16, Value) {
        let mut item = json!({"path": path});
        for (k, v) in meta.as_object().unwrap() {
            item[k] = v.clone();
        }
        let request = json!({"action": "write", "files": [item]});
        let (code, body) = self.curl(&[
            "--form-string",
            &format!("request={request}"),
            "-F",
            &format!("files=@{};filename={path}", file.display()),
            "http://localhost/v1/files",
        ]);
        (code, serde_json::from_str(&body).unwrap_or(json!(body)))
    }

    fn add_layer(&self, label: &str, combine: bool, yaml: &str) -> (u16, Value) {
        self.post(
            "/v1/layers",
            json!({"action": "add", "combine": combine, "label": label, "format": "yaml", "layer": yaml}),
        )
    }

    /// Posts a services action and waits for its change; the change.
    fn services(&self, action: &str, services: &[&str]) -> Value {
        let (code, v) = self.post(
            "/v1/services",
            json!({"action": action, "services": services}),
        );
        assert_eq!(code, 202, "{v}");
        assert_eq!(v["type"], "async");
        assert_eq!(v["status"], "Accepted");
        assert_eq!(v["status-code"], 202);
        let id = v["change"].as_str().unwrap().to_string();
        let (code, w) = self.get(&format!("/v1/changes/{id}/wait?timeout=30s"));
        assert_eq!(code, 200, "{w}");
        assert_eq!(w["result"]["ready"], true);
        w["result"].clone()
    }

    fn current(&self, service: &str) -> String {
        let (_, v) = self.get(&format!("/v1/services?names={service}"));
        v["result"][0]["current"].as_str().unwrap_or("").to_string()
    }

    /// The recorded PID of a running service.
    fn pid(&self, service: &str) -> Option<u32> {
        let text = std::fs::read_to_string(self.dir.join("services.json")).ok()?;
        let v: Value = serde_json::from_str(&text).ok()?;
        v[service]["pid"].as_u64().map(|p| p as u32)
    }

    fn logs(&self, query: &str) -> Vec<Value> {
        let (code, body) = self.curl(&[&format!("http://localhost/v1/logs?{query}")]);
        assert_eq!(code, 200, "{body}");
        body.lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    fn write_local(&self, name: &str, content: &str) -> PathBuf {
        let p = self._tmp.path().join(name);
        std::fs::write(&p, content).unwrap();
        p
    }
}

impl Drop for Pebble {
    fn drop(&mut self) {
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

/// An error answer: Pebble's envelope with its status code and message.
fn assert_error(got: &(u16, Value), code: u16, message: &str) {
    let (c, v) = got;
    assert_eq!(*c, code, "{v}");
    assert_eq!(v["type"], "error", "{v}");
    assert_eq!(v["status-code"], code, "{v}");
    assert_eq!(v["result"]["message"], message, "{v}");
}

const SCRIPT: &str = "#!/bin/sh\necho \"hello from $GREETING with $CONFIG and $PEBBLE_SIM_TEST\"\necho to-stderr >&2\nexec sleep 300\n";

#[test]
fn files_are_pushed_read_listed_and_refused_like_pebble() {
    let p = Pebble::start();
    let (code, info) = p.get("/v1/system-info");
    assert_eq!(code, 200);
    assert_eq!(info["type"], "sync");
    assert_eq!(info["status"], "OK");
    assert_eq!(info["status-code"], 200);
    assert_eq!(info["result"]["version"], "1.19.0");
    assert_eq!(info["result"]["http-address"], "");
    assert!(!info["result"]["boot-id"].as_str().unwrap().is_empty());

    // Push a script with 755 and a file with the default mode, creating directories.
    let local = p.write_local("hello.sh", SCRIPT);
    let (code, v) = p.push(
        &local,
        "/opt/app/bin/hello.sh",
        json!({"make-dirs": true, "permissions": "755"}),
    );
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["type"], "sync");
    assert_eq!(v["result"], json!([{"path": "/opt/app/bin/hello.sh"}]));
    let host = p.root.join("opt/app/bin/hello.sh");
    assert_eq!(std::fs::read_to_string(&host).unwrap(), SCRIPT);
    let mode = |f: &Path| std::fs::metadata(f).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&host), 0o755);
    let conf = p.write_local("conf.yaml", "a: 1\n");
    let (code, v) = p.push(&conf, "/opt/app/conf.yaml", json!({}));
    assert_eq!(
        (code, &v["result"]),
        (200, &json!([{"path": "/opt/app/conf.yaml"}]))
    );
    assert_eq!(mode(&p.root.join("opt/app/conf.yaml")), 0o644);

    // Without make-dirs, a missing directory is the file's error, in a 200 answer.
    let (code, v) = p.push(&conf, "/etc/nope/x.yaml", json!({}));
    assert_eq!(code, 200);
    let err = &v["result"][0]["error"];
    assert_eq!(err["kind"], "not-found", "{v}");
    assert!(
        err["message"]
            .as_str()
            .unwrap()
            .starts_with("open /etc/nope/x.yaml.")
            && err["message"]
                .as_str()
                .unwrap()
                .ends_with("~: no such file or directory"),
        "{v}"
    );
    // A relative path is refused per file, as Pebble does.
    let (code, v) = p.push(&conf, "opt/relative.yaml", json!({}));
    assert_eq!(code, 200);
    assert_eq!(
        v["result"],
        json!([{"path": "opt/relative.yaml", "error": {"kind": "generic-file-error", "message": "paths must be absolute, got \"opt/relative.yaml\""}}])
    );
    // `..` resolves inside the container, as it would in one: nothing lands outside the root.
    let (code, v) = p.push(&conf, "/../../escaped.yaml", json!({}));
    assert_eq!((code, &v["result"][0]["error"]), (200, &Value::Null), "{v}");
    assert!(p.root.join("escaped.yaml").is_file());
    assert!(
        !p.dir.join("escaped.yaml").exists()
            && !p
                .root
                .parent()
                .unwrap()
                .parent()
                .unwrap()
                .join("escaped.yaml")
                .exists()
    );
    // Bad permissions.
    let (_, v) = p.push(&conf, "/opt/app/x", json!({"permissions": "7777"}));
    assert_eq!(
        v["result"][0]["error"]["message"],
        "permissions must be a 3-digit octal string, got \"7777\""
    );

    // Read back: Pebble answers multipart, the file then a `response` part.
    let (code, body) = p.curl(&[
        "-H",
        "Accept: multipart/form-data",
        "http://localhost/v1/files?action=read&path=/opt/app/bin/hello.sh",
    ]);
    assert_eq!(code, 200, "{body}");
    assert!(
        body.contains("name=\"files\"; filename=\"/opt/app/bin/hello.sh\""),
        "{body}"
    );
    assert!(body.contains(SCRIPT), "{body}");
    assert!(body.contains("name=\"response\""), "{body}");
    assert!(
        body.contains(r#""result":[{"path":"/opt/app/bin/hello.sh"}]"#),
        "{body}"
    );
    assert_error(
        &p.get("/v1/files?action=read&path=/opt/app/bin/hello.sh"),
        400,
        "must accept multipart/form-data",
    );

    // List.
    let (code, v) = p.get("/v1/files?action=list&path=/opt/app/bin");
    assert_eq!(code, 200, "{v}");
    let e = &v["result"][0];
    assert_eq!(e["path"], "/opt/app/bin/hello.sh");
    assert_eq!(e["name"], "hello.sh");
    assert_eq!(e["type"], "file");
    assert_eq!(e["size"], SCRIPT.len());
    assert_eq!(e["permissions"], "755");
    let (_, v) = p.get("/v1/files?action=list&path=/opt/app&pattern=*.yaml");
    let names: Vec<&str> = v["result"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["conf.yaml"]);
    let (_, v) = p.get("/v1/files?action=list&path=/opt/app");
    assert_eq!(v["result"][0]["type"], "directory");
    let missing = p.get("/v1/files?action=list&path=/nope");
    assert_error(&missing, 404, "stat /nope: no such file or directory");
    assert_eq!(missing.1["result"]["kind"], "not-found");
    assert_error(
        &p.get("/v1/files?action=list&path=opt"),
        400,
        "path must be absolute, got \"opt\"",
    );
    assert_error(&p.get("/v1/nothing"), 404, "not found");
}

#[test]
fn layers_combine_into_the_plan_with_pebbles_errors() {
    let p = Pebble::start();
    let base = "summary: base\nservices:\n  agent:\n    override: replace\n    summary: the agent\n    command: /opt/app/bin/hello.sh\n    startup: enabled\n    environment:\n      GREETING: world\n";
    let (code, v) = p.add_layer("base", false, base);
    assert_eq!((code, &v["result"]), (200, &json!(true)), "{v}");
    let (code, v) = p.get("/v1/plan?format=yaml");
    assert_eq!(code, 200);
    let plan: serde_yaml::Value = serde_yaml::from_str(v["result"].as_str().unwrap()).unwrap();
    assert_eq!(
        plan["services"]["agent"]["command"],
        "/opt/app/bin/hello.sh"
    );
    assert_eq!(plan["services"]["agent"]["startup"], "enabled");
    assert_eq!(plan["services"]["agent"]["override"], "replace");
    assert_eq!(
        plan["services"]["agent"]["environment"]["GREETING"],
        "world"
    );

    assert_error(
        &p.add_layer("base", false, base),
        400,
        "layer \"base\" already exists",
    );
    assert_error(
        &p.add_layer(
            "bad",
            false,
            "services:\n  agent:\n    command: /bin/true\n",
        ),
        400,
        "layer \"bad\" must define \"override\" for service \"agent\"",
    );
    assert_error(
        &p.add_layer(
            "bad2",
            false,
            "services:\n  other:\n    override: replace\n",
        ),
        400,
        "plan must define \"command\" for service \"other\"",
    );
    let unknown = p.add_layer(
        "bad3",
        false,
        "services:\n  x:\n    override: replace\n    comand: y\n",
    );
    assert_eq!(unknown.0, 400);
    assert!(unknown.1["result"]["message"]
        .as_str()
        .unwrap()
        .starts_with("cannot parse layer YAML: cannot parse layer \"bad3\": "));
    assert_error(
        &p.get("/v1/plan?format=json"),
        400,
        "invalid format \"json\"",
    );
    assert_error(
        &p.post(
            "/v1/layers",
            json!({"action": "add", "label": "x", "format": "yaml", "layer": ""}),
        ),
        400,
        "cannot parse layer YAML: cannot parse layer \"x\": EOF",
    );

    // combine=true merges into the layer of that label.
    let (code, _) = p.add_layer(
        "base",
        true,
        "services:\n  agent:\n    override: merge\n    environment:\n      EXTRA: 'yes'\n",
    );
    assert_eq!(code, 200);
    let (_, v) = p.get("/v1/plan?format=yaml");
    let plan: serde_yaml::Value = serde_yaml::from_str(v["result"].as_str().unwrap()).unwrap();
    assert_eq!(
        plan["services"]["agent"]["environment"]["GREETING"],
        "world"
    );
    assert_eq!(plan["services"]["agent"]["environment"]["EXTRA"], "yes");
    let (_, v) = p.get("/v1/services");
    assert_eq!(
        v["result"],
        json!([{"name": "agent", "startup": "enabled", "current": "inactive"}])
    );
}

#[test]
fn replan_runs_the_service_with_its_output_and_stop_ends_it() {
    let p = Pebble::start();
    p.push(
        &p.write_local("hello.sh", SCRIPT),
        "/opt/app/bin/hello.sh",
        json!({"make-dirs": true, "permissions": "755"}),
    );
    p.push(
        &p.write_local("c.yaml", "x: 1\n"),
        "/opt/app/conf.yaml",
        json!({}),
    );
    let (code, _) = p.add_layer(
        "agent",
        false,
        "services:\n  hello:\n    override: replace\n    command: /opt/app/bin/hello.sh --flag\n    startup: enabled\n    environment:\n      GREETING: world\n      CONFIG: /opt/app/conf.yaml\n",
    );
    assert_eq!(code, 200);

    let change = p.services("replan", &[]);
    assert_eq!(change["status"], "Done", "{change}");
    assert_eq!(change["kind"], "replan");
    assert_eq!(change["summary"], "Replan service \"hello\"");
    assert!(change.get("err").is_none());
    assert!(change["spawn-time"].is_string() && change["ready-time"].is_string());
    assert_eq!(p.current("hello"), "active");
    let (_, v) = p.get("/v1/services?names=hello");
    assert_eq!(v["result"][0]["startup"], "enabled");
    assert!(v["result"][0]["current-since"].is_string());

    // The pushed script runs, with the container's paths re-rooted and the daemon's env.
    let pid = p.pid("hello").expect("a recorded PID");
    assert!(alive(pid));
    let conf = p.root.join("opt/app/conf.yaml");
    let want = format!("hello from world with {} and inherited", conf.display());
    let logs = p.logs("services=hello");
    let messages: Vec<&str> = logs
        .iter()
        .map(|l| l["message"].as_str().unwrap())
        .collect();
    assert!(messages.contains(&want.as_str()), "{logs:?}");
    assert!(messages.contains(&"to-stderr"), "{logs:?}");
    assert!(logs
        .iter()
        .all(|l| l["service"] == "hello" && l["time"].is_string()));
    assert_eq!(p.logs("services=hello&n=1").len(), 1);
    let file = std::fs::read_to_string(p.dir.join("services/hello.log")).unwrap();
    assert!(file.contains(&format!("[hello] {want}")), "{file}");

    // A second replan with nothing changed leaves it running.
    let again = p.services("replan", &[]);
    assert_eq!(again["status"], "Done");
    assert_eq!(p.pid("hello"), Some(pid));

    // A changed layer restarts it on replan.
    p.add_layer(
        "agent",
        true,
        "services:\n  hello:\n    override: merge\n    environment:\n      GREETING: again\n",
    );
    let change = p.services("replan", &[]);
    assert_eq!(change["status"], "Done", "{change}");
    let kinds: Vec<&str> = change["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["stop", "start"]);
    let restarted = p.pid("hello").unwrap();
    assert_ne!(restarted, pid);
    until("the old process to go", Duration::from_secs(10), || {
        !alive(pid)
    });

    // Stop: SIGTERM to its group, inactive, the process gone.
    let change = p.services("stop", &["hello"]);
    assert_eq!(change["status"], "Done", "{change}");
    assert_eq!(change["summary"], "Stop service \"hello\"");
    assert_eq!(p.current("hello"), "inactive");
    until(
        "the service's process to go",
        Duration::from_secs(10),
        || !alive(restarted),
    );
    assert_eq!(p.pid("hello"), None);

    // Errors of /v1/services and /v1/changes.
    assert_error(
        &p.post(
            "/v1/services",
            json!({"action": "start", "services": ["nope"]}),
        ),
        400,
        "cannot start services: service \"nope\" does not exist",
    );
    assert_error(
        &p.post("/v1/services", json!({"action": "start"})),
        400,
        "must specify services for start action",
    );
    assert_error(
        &p.post(
            "/v1/services",
            json!({"action": "replan", "services": ["hello"]}),
        ),
        400,
        "replan accepts no service names",
    );
    assert_error(
        &p.get("/v1/changes/999"),
        404,
        "cannot find change with id \"999\"",
    );
}

#[test]
fn a_service_that_exits_fails_its_change_and_backs_off() {
    let p = Pebble::start();
    p.add_layer(
        "fail",
        false,
        "services:\n  crash:\n    override: replace\n    command: /bin/sh -c 'echo boom; exit 3'\n  quiet:\n    override: replace\n    command: /bin/sh -c 'exit 2'\n    on-failure: ignore\n  missing:\n    override: replace\n    command: /opt/nope --x\n",
    );
    let change = p.services("start", &["crash"]);
    assert_eq!(change["status"], "Error", "{change}");
    assert_eq!(
        change["err"],
        "cannot perform the following tasks:\n- Start service \"crash\" (cannot start service: exited quickly with code 3)"
    );
    let log = change["tasks"][0]["log"].to_string();
    assert!(
        log.contains("Most recent service output:") && log.contains("boom"),
        "{log}"
    );
    // on-failure defaults to restart: Pebble backs off (0.5 s, 1 s, 2 s, ...) and retries.
    until("backoff", Duration::from_secs(10), || {
        p.current("crash") == "backoff"
    });
    until("three runs", Duration::from_secs(20), || {
        p.logs("services=crash&n=-1").len() >= 3
    });
    let change = p.services("stop", &["crash"]);
    assert_eq!(change["status"], "Done", "{change}");
    assert_eq!(p.current("crash"), "inactive");

    // on-failure: ignore leaves it in error.
    let change = p.services("start", &["quiet"]);
    assert_eq!(change["status"], "Error");
    assert_eq!(p.current("quiet"), "error");

    // A command that does not exist in the container.
    let change = p.services("start", &["missing"]);
    assert_eq!(
        change["err"],
        "cannot perform the following tasks:\n- Start service \"missing\" (cannot start service: fork/exec /opt/nope: no such file or directory)"
    );
    assert_eq!(p.current("missing"), "inactive");
}

#[test]
fn sigterm_to_the_daemon_stops_its_services() {
    let mut p = Pebble::start();
    p.add_layer(
        "svc",
        false,
        "services:\n  sleeper:\n    override: replace\n    command: sleep 300\n    startup: enabled\n  stubborn:\n    override: replace\n    command: /bin/sh -c 'trap \"\" TERM; while true; do sleep 0.1; done'\n    startup: enabled\n    kill-delay: 1s\n",
    );
    let change = p.services("autostart", &[]);
    assert_eq!(change["status"], "Done", "{change}");
    assert_eq!(
        change["summary"],
        "Autostart service \"sleeper\" and 1 more"
    );
    let pids = [p.pid("sleeper").unwrap(), p.pid("stubborn").unwrap()];
    assert!(pids.iter().all(|p| alive(*p)));
    unsafe { libc::kill(p.child.id() as i32, libc::SIGTERM) };
    let status = p.child.wait().unwrap();
    assert!(status.success(), "{status}");
    for pid in pids {
        until("the service to go", Duration::from_secs(10), || !alive(pid));
    }
    assert!(!p.socket.exists());
    assert!(!p.dir.join("pebble.pid").exists());
}

fn write_sidecar_charm(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(
        dir.join("metadata.yaml"),
        "name: sidecar\nsummary: A sidecar charm.\ncontainers:\n  workload:\n    resource: workload-image\nresources:\n  workload-image:\n    type: oci-image\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("dispatch"),
        "#!/bin/bash\njuju-log \"dispatch $JUJU_DISPATCH_PATH\"\nif [ \"$JUJU_DISPATCH_PATH\" = hooks/workload-pebble-ready ]; then\n  juju-log \"ready $JUJU_WORKLOAD_NAME $(curl -sS --unix-socket \"$BACKUP_AGENT_CONTAINERS_DIR/$JUJU_WORKLOAD_NAME/pebble.socket\" http://localhost/v1/system-info)\"\nfi\n",
    )
    .unwrap();
    std::fs::set_permissions(dir.join("dispatch"), std::fs::Permissions::from_mode(0o755)).unwrap();
}

#[test]
fn deploy_starts_the_charms_pebble_and_down_stops_it() {
    let sb = crate::common::sandbox();
    let tmp = tempfile::tempdir().unwrap();
    write_sidecar_charm(&tmp.path().join("charm"));
    let r = crate::common::juju(&sb, &["deploy", tmp.path().join("charm").to_str().unwrap()]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let local = sb.model().read().unwrap().apps["sidecar"]
        .local
        .clone()
        .unwrap();
    let hooks: Vec<&str> = local.hooks.iter().map(String::as_str).collect();
    assert_eq!(
        hooks,
        [
            "install:0",
            "leader-elected:0",
            "config-changed:0",
            "start:0",
            "workload-pebble-ready:0",
            "update-status:0"
        ]
    );
    let ready = local
        .log
        .iter()
        .find(|l| l.message.starts_with("ready "))
        .expect("the pebble-ready hook reached Pebble")
        .message
        .clone();
    assert!(
        ready.starts_with("ready workload {") && ready.contains("\"version\":\"1.19.0\""),
        "{ready}"
    );

    let daemons = backup_agent_sandbox::pebble::daemons(&sb.layout.dir);
    assert_eq!(daemons.len(), 1);
    let d = daemons[0].clone();
    assert_eq!(
        d.dir,
        sb.layout.dir.join("units/sidecar-0/containers/workload")
    );
    assert!(d.running());
    // A service in it, started through the socket.
    let curl = |args: &[&str]| {
        let out = Command::new("curl")
            .args(["-sS", "--unix-socket"])
            .arg(d.socket())
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let layer = json!({"action": "add", "label": "w", "format": "yaml", "combine": true,
        "layer": "services:\n  w:\n    override: replace\n    command: sleep 300\n    startup: enabled\n"});
    curl(&[
        "-XPOST",
        "--data-binary",
        &layer.to_string(),
        "http://localhost/v1/layers",
    ]);
    let accepted: Value = serde_json::from_str(&curl(&[
        "-XPOST",
        "--data-binary",
        r#"{"action":"replan"}"#,
        "http://localhost/v1/services",
    ]))
    .unwrap();
    let id = accepted["change"].as_str().unwrap();
    let done: Value = serde_json::from_str(&curl(&[&format!(
        "http://localhost/v1/changes/{id}/wait?timeout=30s"
    )]))
    .unwrap();
    assert_eq!(done["result"]["status"], "Done", "{done}");
    let services: Value =
        serde_json::from_str(&std::fs::read_to_string(d.dir.join("services.json")).unwrap())
            .unwrap();
    let service_pid = services["w"]["pid"].as_u64().unwrap() as u32;
    assert!(alive(service_pid));
    let status = backup_agent_sandbox::env::status(&sb.layout).unwrap();
    assert!(status.contains("pebble sidecar-0/workload"), "{status}");

    let stopped = backup_agent_sandbox::env::down(&sb.layout, false).unwrap();
    assert!(stopped.contains(&d.pid), "{stopped:?}");
    assert!(!alive(d.pid));
    assert!(!alive(service_pid));
    assert!(!d.socket().exists());
}
