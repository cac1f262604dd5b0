//! Running a charm the way the unit agent does: `dispatch` with Juju's environment and the
//! hook tools first on PATH.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result};

use super::context::{default_model, default_version, or};
use super::{HookState, STATE_ENV, TOOLS};
use crate::model::now_ms;

#[derive(Debug, Clone)]
pub struct DispatchOutcome {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
    /// The hook context after the run: what the charm did.
    pub state: HookState,
}

/// Where the hook-tool links and HOME of a dispatch are.
#[derive(Debug, Clone)]
pub struct DispatchOptions {
    /// The sandbox binary the hook-tool links point to.
    pub exe: PathBuf,
    /// Directory of the hook-tool links (created, idempotently).
    pub tools_dir: PathBuf,
    /// `HOME` of the charm (created).
    pub home: PathBuf,
    /// `JUJU_CONTEXT_ID`.
    pub context_id: String,
}

impl DispatchOptions {
    /// Defaults beside the context file: `<dir>/hook-tools`, `<dir>/home`.
    pub fn beside(state_file: &Path) -> Result<DispatchOptions> {
        let dir = state_file
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."))
            .to_path_buf();
        Ok(DispatchOptions {
            exe: sandbox_exe()?,
            tools_dir: dir.join("hook-tools"),
            home: dir.join("home"),
            context_id: format!("{}-{}", "ctx", now_ms()),
        })
    }
}

/// The sandbox binary: `$BACKUP_AGENT_SANDBOX_EXE`, else this process when it is the sandbox
/// binary, else `backup-agent-sandbox` in the cargo target directory above a test binary.
pub fn sandbox_exe() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("BACKUP_AGENT_SANDBOX_EXE") {
        return Ok(PathBuf::from(p));
    }
    let me = std::env::current_exe()?;
    if me
        .file_name()
        .is_some_and(|n| n.to_string_lossy().starts_with("backup-agent-sandbox"))
        && !me.parent().is_some_and(|d| d.ends_with("deps"))
    {
        return Ok(me);
    }
    for dir in me.ancestors().skip(1).take(3) {
        let cand = dir.join("backup-agent-sandbox");
        if cand.is_file() {
            return Ok(cand);
        }
    }
    anyhow::bail!(
        "cannot find the backup-agent-sandbox binary (set BACKUP_AGENT_SANDBOX_EXE); this process is {}",
        me.display()
    )
}

/// Creates (or refreshes) the directory of hook-tool links to `exe`.
pub fn install_tools(dir: &Path, exe: &Path) -> Result<()> {
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    for tool in TOOLS {
        let link = dir.join(tool);
        if fs::read_link(&link).is_ok_and(|t| t == exe) {
            continue;
        }
        let tmp = dir.join(format!(".{tool}.{}", std::process::id()));
        let _ = fs::remove_file(&tmp);
        std::os::unix::fs::symlink(exe, &tmp)?;
        fs::rename(&tmp, &link)?;
    }
    Ok(())
}

/// Runs `<charm_dir>/dispatch` for `dispatch_path` (`hooks/install`, `actions/create-backup`)
/// with a cleared environment plus Juju's variables, the hook tools first on PATH, and
/// `extra_env`. The context file must exist; it holds what the charm did afterwards.
pub fn run_dispatch(
    charm_dir: &Path,
    dispatch_path: &str,
    state_file: &Path,
    extra_env: &[(String, String)],
) -> Result<DispatchOutcome> {
    run_dispatch_with(
        charm_dir,
        dispatch_path,
        state_file,
        extra_env,
        &DispatchOptions::beside(state_file)?,
    )
}

pub fn run_dispatch_with(
    charm_dir: &Path,
    dispatch_path: &str,
    state_file: &Path,
    extra_env: &[(String, String)],
    opts: &DispatchOptions,
) -> Result<DispatchOutcome> {
    let state_file = std::path::absolute(state_file)?;
    let charm_dir = std::path::absolute(charm_dir)?;
    install_tools(&opts.tools_dir, &opts.exe)?;
    fs::create_dir_all(&opts.home)?;
    let s = HookState::load(&state_file)?;
    let path = format!("{}:/usr/local/bin:/usr/bin:/bin", opts.tools_dir.display());
    let mut cmd = Command::new(charm_dir.join("dispatch"));
    cmd.current_dir(&charm_dir)
        .env_clear()
        .env("PATH", path)
        .env("HOME", &opts.home)
        .env("LANG", "C.UTF-8")
        .env("JUJU_DISPATCH_PATH", dispatch_path)
        .env("JUJU_UNIT_NAME", &s.unit)
        .env("JUJU_MODEL_NAME", or(&s.model_name, default_model()))
        .env("JUJU_MODEL_UUID", &s.model_uuid)
        .env("JUJU_CHARM_DIR", &charm_dir)
        .env("JUJU_VERSION", or(&s.juju_version, default_version()))
        .env("JUJU_CONTEXT_ID", &opts.context_id)
        .env("JUJU_AGENT_SOCKET_NETWORK", "unix")
        .env(STATE_ENV, &state_file)
        .stdin(Stdio::null());
    if let Some(a) = &s.action {
        cmd.env("JUJU_ACTION_NAME", &a.name)
            .env("JUJU_ACTION_UUID", &a.id);
    }
    if let Some(rel) = s
        .hook_relation
        .and_then(|id| s.relations.iter().find(|r| r.id == id))
    {
        cmd.env("JUJU_RELATION", &rel.endpoint)
            .env("JUJU_RELATION_ID", format!("{}:{}", rel.endpoint, rel.id))
            .env("JUJU_REMOTE_APP", &rel.remote_app);
        if let Some(u) = &s.remote_unit {
            cmd.env("JUJU_REMOTE_UNIT", u);
        }
        if dispatch_path.ends_with("-relation-departed") {
            if let Some(u) = &s.remote_unit {
                cmd.env("JUJU_DEPARTING_UNIT", u);
            }
        }
    }
    for (k, v) in extra_env {
        cmd.env(k, v);
    }
    let out = cmd
        .output()
        .with_context(|| format!("running {}/dispatch", charm_dir.display()))?;
    let code = out.status.code().unwrap_or_else(|| {
        use std::os::unix::process::ExitStatusExt;
        128 + out.status.signal().unwrap_or(0)
    });
    Ok(DispatchOutcome {
        code,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        state: HookState::load(&state_file)?,
    })
}
