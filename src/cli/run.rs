//! One function a subcommand: map the arguments, call the library, print the result.

use std::error::Error;

use backup_agent::commands::backup::{self, BackupError, BackupRequest};
use backup_agent::commands::list;
use backup_agent::commands::prune::{self as prune_cmd, Selection};
use backup_agent::commands::{
    copy as copy_cmd, download as download_cmd, drill as drill_cmd, recover as recover_cmd,
    restore as restore_cmd, verify,
};
use backup_agent::context::Context;
use backup_agent::daemon;
use backup_agent::interrupt::Interrupt;
use backup_agent::juju::{discovery, JujuCli};
use backup_agent::repository::{self, Listed, RequestType};
use backup_agent::secret::Secret;

use super::args::{
    AppNameArgs, CopyArgs, CreateBackupArgs, DeleteArgs, DownloadArgs, DrillArgs, PruneArgs,
    RecoverArgs, RequestCommand, RestoreArgs, ServeArgs,
};
use super::destination::{Repo, RepoArgs};
use super::output::{confirm_delete, context, interruptible, runtime, show, Output};
use super::{Cli, Command};

/// Runs one subcommand.
pub fn run(cli: Cli) -> Result<(), Box<dyn Error>> {
    let model = cli.model.as_str();
    match cli.command {
        Command::CreateBackup(args) => create_backup(model, *args),
        Command::Discover { apps, output } => discover(model, apps, output),
        Command::ListBackups { dest, output } => list_backups(dest, output),
        Command::Restore(args) => restore(model, *args),
        Command::Drill(args) => drill(model, *args),
        Command::VerifyBackup {
            backup_id,
            read_data,
            sample,
            dest,
            scale,
            output,
        } => {
            let mode = match (read_data, sample) {
                (false, _) => verify::Mode::Light,
                (true, s) => verify::Mode::ReadData(s.unwrap_or_default()),
            };
            verify_backup(model, backup_id, mode, dest, scale.streaming(), output)
        }
        Command::Prune(args) => prune(model, *args),
        Command::DeleteBackup(args) => delete_backup(model, *args),
        Command::Download(args) => download(model, *args),
        Command::Recover(args) => recover(model, *args),
        Command::Copy(args) => copy(model, *args),
        Command::Request { what } => request(what),
        Command::Serve(args) => serve(model, *args),
        Command::DescribeBackup {
            backup_id,
            dest,
            output,
        } => describe_backup(backup_id, dest, output),
        Command::Completion { shell } => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            let mut script = vec![];
            clap_complete::generate(shell, &mut cmd, "backup-agent", &mut script);
            let mut script = String::from_utf8(script)?;
            if shell == clap_complete::Shell::Bash {
                // clap_complete 4.6 escapes the `-` of a hyphenated name one way where it sets
                // the subcommand (`backup__agent__subcmd__...`) and another in the arms that
                // complete it (`backup__subcmd__agent__subcmd__...`), so no subcommand's flags
                // would ever complete; one spelling for both.
                script = script.replace("backup__subcmd__agent", "backup__agent");
            }
            print!("{script}");
            Ok(())
        }
        Command::Man => {
            let cmd = <Cli as clap::CommandFactory>::command();
            clap_mangen::Man::new(cmd).render(&mut std::io::stdout())?;
            Ok(())
        }
    }
}

fn create_backup(model: &str, args: CreateBackupArgs) -> Result<(), Box<dyn Error>> {
    let CreateBackupArgs {
        label,
        components,
        force,
        dry_run,
        apps,
        dest,
        tuning,
        output,
    } = args;
    let mut components = components;
    components.sort();
    components.dedup();
    let req = BackupRequest {
        label,
        components,
        force,
        request: RequestType::Manual,
    };
    let ctx = context(model, apps, dest.store()?, &tuning, output)?;
    if dry_run {
        let plan = runtime()?.block_on(backup::plan(&ctx, &req))?;
        return show(output, &plan, backup::render_plan);
    }
    let result = interruptible(&ctx, backup::run(&ctx, &req))?;
    match (result, output) {
        (Ok(report), _) => show(output, &report, backup::render_report)?,
        (Err(e), Output::Json) => {
            let sf = match &e {
                BackupError::Failed { statefile, .. }
                | BackupError::NotRestored { statefile, .. } => {
                    Some(serde_json::to_value(statefile)?)
                }
                _ => None,
            };
            println!(
                "{}",
                serde_json::to_string_pretty(
                    &serde_json::json!({"error": e.to_string(), "statefile": sf})
                )?
            );
            return Err(e.into());
        }
        (Err(e), Output::Text) => return Err(e.into()),
    }
    Ok(())
}

fn discover(model: &str, apps: AppNameArgs, output: Output) -> Result<(), Box<dyn Error>> {
    let juju = JujuCli::locate(model)?;
    let (plane, _minio) = discovery::discover(&juju, &apps.names())?;
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&plane)?),
        Output::Text => {
            println!("model {} (juju {})", plane.model, plane.juju_version);
            for a in &plane.apps {
                let charm = match a.charm_rev {
                    Some(r) => format!("{} r{r}", a.charm),
                    None => a.charm.clone(),
                };
                println!(
                    "  {:<16} {:<22} {:<26} scale {:<3} {:<12} {}",
                    a.role,
                    a.name,
                    charm,
                    a.scale,
                    a.status,
                    a.units.join(",")
                );
            }
            println!(
                "  MinIO endpoint {} (credentials from {})",
                plane.minio_endpoint, plane.minio_credentials_from
            );
        }
    }
    Ok(())
}

fn list_backups(dest: RepoArgs, output: Output) -> Result<(), Box<dyn Error>> {
    let store = dest.store()?;
    let secondary = match dest.from {
        Repo::Primary => dest.secondary()?,
        Repo::Secondary => None,
    };
    if let Some(secondary) = secondary {
        let (rows, warning) = runtime()?.block_on(list::list_both(&store, &secondary))?;
        if let Some(w) = warning {
            eprintln!("warning: {w}");
        }
        return match output {
            Output::Json => {
                let v: Vec<serde_json::Value> = rows
                    .iter()
                    .map(|(r, at)| {
                        let mut v = listed_json(r);
                        v["where"] = at.as_str().into();
                        v
                    })
                    .collect();
                println!("{}", serde_json::to_string_pretty(&v)?);
                Ok(())
            }
            Output::Text if rows.is_empty() => {
                println!(
                    "no backups in {} nor in {}",
                    store.describe(),
                    secondary.describe()
                );
                Ok(())
            }
            Output::Text => {
                print!("{}", list::render_located(&rows));
                warn_unreadable(rows.iter().map(|(r, _)| r));
                Ok(())
            }
        };
    }
    let rows = runtime()?.block_on(repository::list(&store))?;
    match output {
        Output::Json => {
            let v: Vec<serde_json::Value> = rows.iter().map(listed_json).collect();
            println!("{}", serde_json::to_string_pretty(&v)?);
        }
        Output::Text if rows.is_empty() => println!("no backups in {}", store.describe()),
        Output::Text => {
            print!("{}", list::render_table(&rows));
            warn_unreadable(rows.iter());
        }
    }
    Ok(())
}

fn listed_json(r: &Listed) -> serde_json::Value {
    match r {
        Listed::Backup(s) => serde_json::to_value(s).expect("statefile serializes"),
        Listed::Unreadable { id, error } => {
            serde_json::json!({"backup-id": id, "phase": "unreadable", "error": error.to_string()})
        }
    }
}

fn warn_unreadable<'a>(rows: impl Iterator<Item = &'a Listed>) {
    for r in rows {
        if let Listed::Unreadable { id, error } = r {
            eprintln!("warning: {id}: {error}");
        }
    }
}

fn request(what: RequestCommand) -> Result<(), Box<dyn Error>> {
    use backup_agent::commands::requests::{self, Request, REQUEST_SCHEMA};
    use serde_json::{json, Map, Value};
    let mut params = Map::new();
    let mut put = |k: &str, v: Value| {
        if !v.is_null() {
            params.insert(k.into(), v);
        }
    };
    let names = |c: &[backup_agent::components::Component]| -> Value {
        if c.is_empty() {
            Value::Null
        } else {
            c.iter().map(|c| c.as_str()).collect::<Vec<_>>().into()
        }
    };
    let (kind, common) = match what {
        RequestCommand::CreateBackup {
            label,
            components,
            common,
        } => {
            put("label", json!(label));
            put("components", names(&components));
            ("create-backup", common)
        }
        RequestCommand::Verify {
            backup_id,
            read_data,
            common,
        } => {
            put("backup-id", json!(backup_id));
            put("read-data", json!(read_data));
            ("verify", common)
        }
        RequestCommand::Drill {
            backup_id,
            sample,
            common,
        } => {
            put("backup-id", json!(backup_id));
            put("sample", json!(sample));
            ("drill", common)
        }
        RequestCommand::Copy { backup_id, common } => {
            put("backup-id", json!(backup_id));
            ("copy", common)
        }
        RequestCommand::Restore {
            backup_id,
            components,
            no_safety_backup,
            common,
        } => {
            put("backup-id", json!(backup_id));
            put("components", names(&components));
            put("no-safety-backup", json!(no_safety_backup));
            ("restore", common)
        }
    };
    let client_id = common
        .client_id
        .clone()
        .unwrap_or_else(|| format!("cli-{:08x}", rand::random::<u32>()));
    if !requests::name_ok(&client_id) {
        return Err(format!(
            "--client-id {client_id:?}: give 1 to 128 letters, digits, '-', '_' or '.'"
        )
        .into());
    }
    let store = common.dest.store()?;
    let req = Request {
        schema_version: REQUEST_SCHEMA,
        kind: kind.into(),
        params,
        requested_by: common.requested_by.clone(),
        client_id: client_id.clone(),
    };
    let rt = runtime()?;
    let since = chrono::Utc::now();
    let name = requests::new_name(&client_id, since);
    if !rt.block_on(requests::submit(&store, &name, &req))? {
        return Err(
            format!("a request named {name} is already there: give another --client-id").into(),
        );
    }
    let key = requests::request_key(&name);
    if !common.wait {
        match common.output {
            Output::Json => println!(
                "{}",
                serde_json::to_string_pretty(&json!({"request": name, "key": key}))?
            ),
            Output::Text => println!(
                "request {name} written to {key} in {}; its result will be at {}",
                store.describe(),
                requests::result_key(&name)
            ),
        }
        return Ok(());
    }
    eprintln!("request {name} written; waiting for a daemon (serve --requests) to answer");
    let got = rt.block_on(requests::wait(
        &store,
        &name,
        since,
        common.poll,
        common.timeout,
        |phase| eprintln!("request {name}: {phase}"),
    ))?;
    let Some(mut r) = got else {
        return Err(format!("no answer to request {name} within {}: is a daemon running with --requests on this bucket? The request stays; its result will be at {}", humantime::format_duration(common.timeout), requests::result_key(&name)).into());
    };
    // A retried request (the same client id): the first one's answer is the answer.
    if let Some(first) = r.duplicate_of.clone() {
        eprintln!("request {name} repeats client-id {client_id}: the answer is request {first}'s");
        let since = requests::written_at(&first)
            .unwrap_or_else(|| chrono::Utc::now() - chrono::Duration::days(31));
        match rt.block_on(requests::wait(
            &store,
            &first,
            since,
            common.poll,
            common.timeout,
            |phase| eprintln!("request {first}: {phase}"),
        ))? {
            Some(f) => r = f,
            None => {
                return Err(format!(
                    "no answer to request {first} (which request {name} repeats) within {}",
                    humantime::format_duration(common.timeout)
                )
                .into())
            }
        }
    }
    match common.output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&r)?),
        Output::Text => {
            println!(
                "request {} ({}): {}{}",
                r.request,
                r.kind,
                r.phase,
                r.backup_id
                    .as_ref()
                    .map(|id| format!(", backup {id}"))
                    .unwrap_or_default()
            );
            for e in &r.errors {
                println!("  {e}");
            }
        }
    }
    if !r.succeeded() {
        return Err(format!("request {} {}: {}", r.request, r.phase, r.errors.join("; ")).into());
    }
    Ok(())
}

fn copy(model: &str, args: CopyArgs) -> Result<(), Box<dyn Error>> {
    let CopyArgs {
        backup_id,
        dry_run,
        run,
    } = args;
    // From the repository --from names to the other one.
    let to = match run.dest.from {
        Repo::Primary => run.dest.secondary()?.ok_or(
            "copy: no secondary destination: set --secondary-s3-endpoint and --secondary-s3-bucket (or BACKUP_AGENT_SECONDARY_S3_*, the keys in BACKUP_AGENT_SECONDARY_S3_ACCESS_KEY and BACKUP_AGENT_SECONDARY_S3_SECRET_KEY), or --secondary-dir",
        )?,
        Repo::Secondary => run.dest.primary()?,
    };
    let req = copy_cmd::CopyRequest { backup_id };
    let (ctx, output) = run.context(model)?;
    if dry_run {
        let plan = runtime()?.block_on(copy_cmd::plan(&ctx, &to, &req))?;
        return show(output, &plan, copy_cmd::render_plan);
    }
    let report = interruptible(&ctx, copy_cmd::run(&ctx, &to, &req))??;
    show(output, &report, copy_cmd::render_report)?;
    if !report.failed.is_empty() {
        return Err(format!(
            "{} backup(s) not copied (named above, with why); the others were; run copy again once fixed",
            report.failed.len()
        )
        .into());
    }
    Ok(())
}

fn restore(model: &str, args: RestoreArgs) -> Result<(), Box<dyn Error>> {
    let RestoreArgs {
        backup_id,
        mut components,
        no_safety_backup,
        force,
        dry_run,
        pod_timeout,
        run,
    } = args;
    components.sort();
    components.dedup();
    let req = restore_cmd::RestoreRequest {
        backup_id,
        components,
        safety_backup: !no_safety_backup,
        force,
        pod_timeout: pod_timeout.0,
    };
    let (ctx, output) = run.context(model)?;
    if dry_run {
        let plan = runtime()?.block_on(restore_cmd::plan(&ctx, &req))?;
        return show(output, &plan, restore_cmd::render_plan);
    }
    let report = interruptible(&ctx, restore_cmd::run(&ctx, &req))??;
    show(output, &report, restore_cmd::render_report)?;
    Ok(())
}

fn drill(model: &str, args: DrillArgs) -> Result<(), Box<dyn Error>> {
    let DrillArgs {
        backup_id,
        sample,
        max_bytes,
        scratch_prefix,
        dry_run,
        run,
    } = args;
    let req = drill_cmd::DrillRequest {
        backup_id,
        pick: backup_agent::components::mlpipeline::Pick {
            sample: sample.unwrap_or_default(),
            max_bytes,
        },
        scratch_prefix,
    };
    let (ctx, output) = run.context(model)?;
    if dry_run {
        let plan = runtime()?.block_on(drill_cmd::plan(&ctx, &req))?;
        return show(output, &plan, drill_cmd::render_plan);
    }
    let report = interruptible(&ctx, drill_cmd::run(&ctx, &req))??;
    show(output, &report, drill_cmd::render_report)?;
    if !report.passed {
        return Err(format!(
            "the drill of backup {} FAILED: {} problem(s), named above",
            report.backup_id, report.problems.total
        )
        .into());
    }
    Ok(())
}

fn verify_backup(
    model: &str,
    backup_id: String,
    mode: verify::Mode,
    dest: RepoArgs,
    streaming: backup_agent::context::Streaming,
    output: Output,
) -> Result<(), Box<dyn Error>> {
    let store = dest.store()?;
    let juju = JujuCli::locate(model).ok();
    let spool = tempfile::tempdir()?;
    let progress = super::terminal::stderr_progress(matches!(output, Output::Json));
    let v = runtime()?.block_on(verify::verify(
        &store,
        juju.as_ref(),
        &backup_id,
        mode,
        spool.path(),
        streaming,
        &progress,
    ))?;
    show(output, &v, verify::render)?;
    if !v.passed {
        return Err(format!(
            "backup {backup_id} failed verification: {} problem(s)",
            v.problems.len()
        )
        .into());
    }
    Ok(())
}

fn prune(model: &str, args: PruneArgs) -> Result<(), Box<dyn Error>> {
    let PruneArgs {
        policy,
        dry_run,
        run,
    } = args;
    let selection = Selection::Policy(policy.policy());
    let (ctx, output) = run.context(model)?;
    if dry_run {
        let plan = runtime()?.block_on(prune_cmd::plan(&ctx, &selection))?;
        return show(output, &plan, prune_cmd::render_plan);
    }
    let report = interruptible(&ctx, prune_cmd::run(&ctx, &selection))??;
    show(output, &report, prune_cmd::render_report)?;
    Ok(())
}

fn delete_backup(model: &str, args: DeleteArgs) -> Result<(), Box<dyn Error>> {
    let DeleteArgs {
        backup_id,
        yes,
        dry_run,
        run,
    } = args;
    let selection = Selection::One(backup_id.clone());
    let (ctx, output) = run.context(model)?;
    let plan = runtime()?.block_on(prune_cmd::plan(&ctx, &selection))?;
    if dry_run {
        return show(output, &plan, prune_cmd::render_plan);
    }
    if !yes {
        confirm_delete(&backup_id, &plan)?;
    }
    let report = interruptible(&ctx, prune_cmd::run(&ctx, &selection))??;
    show(output, &report, prune_cmd::render_report)?;
    Ok(())
}

fn download(model: &str, args: DownloadArgs) -> Result<(), Box<dyn Error>> {
    let DownloadArgs {
        backup_id,
        into: dir,
        include,
        run,
    } = args;
    let include = match include.is_empty() {
        true => None,
        false => Some(download_cmd::Include::new(&include)?),
    };
    let (ctx, output) = run.context(model)?;
    let report = interruptible(
        &ctx,
        download_cmd::run(&ctx, &backup_id, &dir, include.as_ref()),
    )??;
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&report)?),
        Output::Text => {
            println!(
                "backup {} written to {}: {} files, {}",
                report.backup_id,
                report.dir.display(),
                report.files,
                backup_agent::units::human_bytes(report.bytes)
            );
            for r in &report.refused {
                println!("refused: {:?}: {}", r.key, r.why);
            }
            for w in &report.warnings {
                println!("warning: {w}");
            }
        }
    }
    if !report.refused.is_empty() {
        return Err(format!(
            "{} name(s) in the backup would have been written outside {} or are malformed: refused (listed above); everything else was written",
            report.refused.len(),
            report.dir.display()
        )
        .into());
    }
    Ok(())
}

fn recover(model: &str, args: RecoverArgs) -> Result<(), Box<dyn Error>> {
    let RecoverArgs { run } = args;
    let (ctx, output) = run.context(model)?;
    let recovered = interruptible(&ctx, async {
        let (lock, r) = recover_cmd::lock_and_recover(&ctx, "recover").await?;
        lock.release()
            .await
            .map_err(|e| recover_cmd::RecoveryError::Lock(Box::new(e)))?;
        Ok::<_, recover_cmd::RecoveryError>(r)
    })??;
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&recovered)?),
        Output::Text if recovered.is_empty() => {
            println!("nothing to recover: no run was left unfinished")
        }
        Output::Text => {
            for id in &recovered.backups {
                println!("backup {id}: its run had died; scales put back, marked failed");
            }
            for id in &recovered.restores {
                println!(
                    "restore of backup {id}: its run had died; scales put back, recorded as failed"
                );
            }
        }
    }
    Ok(())
}

fn serve(model: &str, args: ServeArgs) -> Result<(), Box<dyn Error>> {
    let ServeArgs {
        env_file: _,
        schedule,
        drill_schedule,
        drill_sample,
        policy,
        listen,
        token_file,
        copy_after_backup,
        secondary_retention,
        requests,
        allow_restore_requests,
        request_poll,
        request_archive_days,
        apps,
        dest,
        tuning,
    } = args;
    if dest.from == Repo::Secondary {
        return Err("serve works on the primary destination (--from secondary is for reading and pruning the copy); it copies to the secondary with --copy-after-backup".into());
    }
    let token = match token_file {
        None => None,
        Some(f) => {
            let t = std::fs::read_to_string(&f)
                .map_err(|e| format!("--token-file {}: {e}", f.display()))?;
            if t.trim().is_empty() {
                return Err(format!("--token-file {} is empty: put a long random token in it (e.g. `openssl rand -hex 32 > {}`)", f.display(), f.display()).into());
            }
            Some(Secret::new(t.trim().to_string()))
        }
    };
    if tuning.break_lock {
        return Err("--break-lock is not for the daemon: it would break every lock, each run. Run `backup-agent recover --break-lock` once instead".into());
    }
    let juju = JujuCli::locate(model)?;
    let store = dest.store()?;
    let settings = daemon::ServeSettings {
        schedule,
        drill_schedule,
        drill_sample: drill_sample.unwrap_or_default(),
        retention: policy.policy(),
        listen,
        token,
        secondary: dest.secondary()?,
        copy_after_backup,
        secondary_retention: secondary_retention.unwrap_or_default(),
        requests: requests.then(|| daemon::watcher::RequestSettings {
            poll: request_poll,
            allow_restore: allow_restore_requests,
            archive_days: request_archive_days,
            page_size: tuning.scale.list_page_size.into(),
            ..Default::default()
        }),
    };
    if copy_after_backup && settings.secondary.is_none() {
        return Err("--copy-after-backup: no secondary destination: set --secondary-s3-endpoint and --secondary-s3-bucket (or BACKUP_AGENT_SECONDARY_S3_*), or --secondary-dir".into());
    }
    let (store2, tuning, names) = (store.clone(), tuning.tuning(), apps.names());
    let make: daemon::MakeContext = std::sync::Arc::new(move |progress, interrupt| Context {
        juju: juju.clone(),
        names: names.clone(),
        dest: store2.clone(),
        kubeconfig: None,
        tuning: tuning.clone(),
        minio: None,
        progress,
        interrupt,
    });
    let shutdown = Interrupt::new();
    backup_agent::interrupt::block_on_interruptible(
        &shutdown,
        daemon::serve(settings, make, store, shutdown.clone()),
    )??;
    Ok(())
}

fn describe_backup(
    backup_id: String,
    dest: RepoArgs,
    output: Output,
) -> Result<(), Box<dyn Error>> {
    let store = dest.store()?;
    let s = runtime()?.block_on(repository::load(&store, &backup_id))?;
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&s)?),
        Output::Text => {
            // A YAML comment: the text stays YAML, and the drill's verdict is not buried.
            if let Some((at, passed)) = s.last_drill() {
                println!(
                    "# last drill: {} at {}",
                    if passed { "passed" } else { "FAILED" },
                    at.to_rfc3339()
                );
            }
            print!("{}", serde_yaml::to_string(&s)?)
        }
    }
    Ok(())
}
