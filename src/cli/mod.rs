//! The command line: clap's arguments, one function a subcommand, and the terminal. The
//! library holds no clap and no terminal code: arguments are mapped here onto its plain
//! option structs.

mod args;
mod destination;
mod output;
mod run;
pub mod terminal;

use clap::{Parser, Subcommand};

use args::{
    AppNameArgs, CopyArgs, CreateBackupArgs, DeleteArgs, DownloadArgs, DrillArgs, PruneArgs,
    RecoverArgs, RestoreArgs, ServeArgs,
};
use backup_agent::commands::verify::Sample;
use backup_agent::repository;
use destination::RepoArgs;
pub use output::env_file_arg;
use output::Output;
pub use run::run;

#[derive(Parser)]
#[command(
    name = "backup-agent",
    version,
    about = "Back up and restore the Charmed Kubeflow control plane (kfp-db, katib-db, ML Metadata, the mlpipeline bucket) into S3",
    long_about = "Back up and restore the Charmed Kubeflow control plane (kfp-db, katib-db, ML Metadata, the mlpipeline bucket) into S3, as one consistent, verified, point-in-time backup.\n\nIt drives the operator's own `juju` client and kubeconfig. Try it against the bundled sandbox:\n  backup-agent-sandbox up && source .sandbox/env && backup-agent discover"
)]
pub struct Cli {
    /// Juju model that holds Charmed Kubeflow.
    #[arg(
        long,
        short = 'm',
        global = true,
        env = "JUJU_MODEL",
        default_value = "kubeflow"
    )]
    pub model: String,
    /// More log output (-v, -vv); RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Back up the control plane: kfp-db and katib-db (mysql-k8s create-backup on a replica),
    /// ML Metadata (/data/mlmd.db streamed out of mlmd-0) and the mlpipeline bucket
    /// (incremental, content-addressed), as one backup.
    ///
    /// It checks first (destination writable, MinIO reachable, no pipeline or Katib experiment
    /// running, spool space, no other run), records every scale it will change, scales kfp-db
    /// and katib-db to 2 and kfp-metadata-writer to 0, captures, and puts the scales back on
    /// success, failure, SIGINT and SIGTERM. The statefile is written last; only a backup whose
    /// every part was captured and checked is `completed`.
    #[command(
        after_help = "Examples:\n  backup-agent create-backup --dry-run\n  backup-agent create-backup --label before-upgrade\n  backup-agent create-backup --components mlmd,mlpipeline --bwlimit 50M --output json\n\nThe destination comes from --s3-* flags or BACKUP_AGENT_S3_* variables (the keys from the\nenvironment only), or --destination-dir. `source .sandbox/env` after `backup-agent-sandbox up`\nsets them all for the sandbox."
    )]
    CreateBackup(Box<CreateBackupArgs>),
    /// Find the control plane in the model: applications, scales, units, and where MinIO's
    /// credentials come from (never printed). Changes nothing.
    Discover {
        #[command(flatten)]
        apps: AppNameArgs,
        #[arg(long, value_enum, default_value = "text")]
        output: Output,
    },
    /// List the backups in the destination, from their statefiles alone (works from any
    /// machine that can read the bucket). With a secondary destination set (--secondary-*),
    /// both are listed and a WHERE column says where each backup is: primary, secondary or
    /// both.
    ListBackups {
        #[command(flatten)]
        dest: RepoArgs,
        #[arg(long, value_enum, default_value = "text")]
        output: Output,
    },
    /// Check that a backup can be restored. Light (default): the statefile is intact and
    /// completed, every object it names is there with its size, and the mysql-k8s backups it
    /// names have their .md5 marker and show finished. --read-data also reads everything back
    /// and checks every content hash, and opens the MLMD dump with SQLite. Exits 1 when a
    /// problem is found; the outcome is recorded in the backup's history.
    VerifyBackup {
        /// The backup id, as list-backups shows it.
        #[arg(value_parser = repository::parse_backup_id)]
        backup_id: String,
        /// Read every object back and check its content (slower: reads the whole backup).
        #[arg(long)]
        read_data: bool,
        /// With --read-data, re-hash only a sample of the mlpipeline blobs: a share drawn
        /// afresh each run (5%), or slice n of t by content hash (2/10; the slices 1/10 to
        /// 10/10 read every blob once between them). Presence and size are still checked for
        /// every blob, and MLMD and the mysql-k8s backups are still read whole.
        #[arg(long, requires = "read_data", value_parser = Sample::parse, value_name = "SHARE|N/T")]
        sample: Option<Sample>,
        #[command(flatten)]
        dest: RepoArgs,
        #[command(flatten)]
        scale: args::ScaleArgs,
        #[arg(long, value_enum, default_value = "text")]
        output: Output,
    },
    /// Put the control plane back from one backup: the mysql-k8s backups of kfp-db and
    /// katib-db, the MLMD database (swapped in, pod restarted) and the mlpipeline bucket (made
    /// equal to the backup's manifest).
    ///
    /// The backup must be completed and pass a light verification. A safety backup of the
    /// current state (label pre-restore) is taken first unless --no-safety-backup. Databases go
    /// to exactly 1 unit (mysql-k8s refuses more) and kfp-metadata-writer to 0 while restoring;
    /// scales are put back on success, failure, SIGINT and SIGTERM.
    #[command(
        after_help = "Examples:\n  backup-agent restore 20261123T080841Z-be2523 --dry-run\n  backup-agent restore 20261123T080841Z-be2523\n  backup-agent restore 20261123T080841Z-be2523 --components mlmd,mlpipeline"
    )]
    Restore(Box<RestoreArgs>),
    /// Prove that a backup restores, without touching the live system: restore it into
    /// scratch targets and check what lands there. MLMD goes into a scratch file that SQLite
    /// checks (integrity_check, the row count of every table against the statefile); the
    /// mlpipeline objects (all, a --sample, or up to --max-bytes) go into a scratch prefix of
    /// the backup bucket and are read back against the manifest (bytes, size, content type,
    /// user metadata); each mysql-k8s backup is found where it was written with the sizes
    /// recorded and an md5 equal to its marker.
    ///
    /// The scratch copy is removed at the end, also on failure and on SIGINT/SIGTERM (after a
    /// SIGKILL, by the next drill). The result is recorded in the backup's history:
    /// list-backups shows it in DRILLED, describe-backup in full. Takes the repository lock.
    /// Exits non-zero when anything is wrong, each problem named by component and key.
    #[command(after_help = "Examples:
  backup-agent drill --dry-run
  backup-agent drill
  backup-agent drill 20261123T080841Z-be2523 --sample 5% --max-bytes 10G --bwlimit 50M")]
    Drill(Box<DrillArgs>),
    /// Show one backup's statefile: what was captured, sizes, hashes, mysql backup ids, the
    /// scales it changed and put back, errors, and later verifications and restores.
    DescribeBackup {
        /// The backup id, as list-backups shows it.
        #[arg(value_parser = repository::parse_backup_id)]
        backup_id: String,
        #[command(flatten)]
        dest: RepoArgs,
        #[arg(long, value_enum, default_value = "text")]
        output: Output,
    },
    /// Forget backups a retention policy does not keep, and delete what only they used: their
    /// statefiles, manifests and MLMD dumps, the blobs no kept backup names, and their
    /// mysql-k8s backups. Never forgets the newest completed backup or one whose run has not
    /// ended; takes the repository lock.
    ///
    /// Rules as restic's `forget`: keep-daily 7 keeps the newest backup of each of the 7 newest
    /// days that have one (UTC); keep-within 2d keeps every backup up to 2 days older than
    /// the newest. A backup is kept if any rule keeps it. Failed backups go once a newer
    /// completed one exists.
    #[command(
        after_help = "Examples:\n  backup-agent prune --keep-daily 7 --keep-weekly 4 --dry-run\n  backup-agent prune --keep-last 3\n  backup-agent prune --retention keep-daily=7,keep-monthly=12"
    )]
    Prune(Box<PruneArgs>),
    /// Delete one backup and what only it used (blobs, its mysql-k8s backups). Asks first on
    /// a terminal; scripts pass --yes.
    DeleteBackup(Box<DeleteArgs>),
    /// Write a backup to a local directory: statefile.json, mlmd.db (decompressed, checked),
    /// mlpipeline/<key> for every object (hash-checked), mysql/<app>/ with the mysql-k8s
    /// backup objects. To move a backup to another site, or to look inside it.
    #[command(
        after_help = "Examples:\n  backup-agent download 20261123T080841Z-be2523 ./backup-20261123\n  backup-agent download 20261123T080841Z-be2523 ./one-run --include 'v2/artifacts/run-7f3a/**'"
    )]
    Download(Box<DownloadArgs>),
    /// Copy backups to the secondary destination (an off-site copy: another endpoint, another
    /// site), with everything needed to restore from it alone: the MLMD dump, the manifest,
    /// the blobs and packs it references, and the mysql-k8s backup objects (kept under
    /// backup-agent/mysql/<bucket>/<path>/ of the copy, the bucket and path mysql-k8s wrote to).
    ///
    /// Only what the secondary lacks is sent: blobs and packs already there are not sent again.
    /// Each copy is checked on the secondary before its statefile is written, last, so a copy
    /// killed half-way is no backup there and the next copy finishes it. Takes both
    /// repositories' locks. With --from secondary it copies the other way (to rebuild a lost
    /// primary). list-backups then shows where each backup is; restore, drill, verify-backup
    /// and prune take --from secondary to work on the copy.
    #[command(after_help = "Examples:
  export BACKUP_AGENT_SECONDARY_S3_ENDPOINT=https://s3.eu-west-1.amazonaws.com BACKUP_AGENT_SECONDARY_S3_BUCKET=ckf-offsite
  export BACKUP_AGENT_SECONDARY_S3_ACCESS_KEY=... BACKUP_AGENT_SECONDARY_S3_SECRET_KEY=...
  backup-agent copy --dry-run
  backup-agent copy                              # every completed backup the secondary lacks
  backup-agent copy 20261123T080841Z-be2523
  backup-agent prune --from secondary --keep-monthly 12
  backup-agent restore 20261123T080841Z-be2523 --from secondary")]
    Copy(Box<CopyArgs>),
    /// Repair what a killed run left: put back the scales its journal records, mark its
    /// backup (or restore) failed, take over its lock. Every mutating command does this
    /// first; this does only that.
    Recover(Box<RecoverArgs>),
    /// Run as a daemon: backups on a cron schedule (each followed by a prune when a retention
    /// policy is set), and an HTTP API on loopback: GET /v1/backups, GET /v1/backups/{id},
    /// POST /v1/backups (bearer token), GET /healthz, GET /metrics (Prometheus).
    ///
    /// A run missed while the daemon was down (the newest completed backup is older than the
    /// schedule's period) happens at start. SIGTERM stops it cleanly: a backup in its last
    /// step finishes, any other is interrupted with its scales put back.
    #[command(
        after_help = "Example:\n  backup-agent serve --schedule '0 2 * * *' --retention keep-daily=7,keep-weekly=4 --token-file /etc/backup-agent/token\n  curl -s 127.0.0.1:8940/v1/backups\n  curl -s -X POST -H \"Authorization: Bearer $(cat /etc/backup-agent/token)\" 127.0.0.1:8940/v1/backups"
    )]
    Serve(Box<ServeArgs>),
    /// Ask the daemon for a run through the backup bucket alone: the request is a small JSON
    /// object written under backup-agent/requests/ of the repository, which a daemon started
    /// with `serve --requests` claims, runs and answers next to it (then moves both to
    /// backup-agent/requests-archive/<day>/). Anyone with the bucket's keys can ask (a
    /// pipeline step, a CI job); no juju, no kubectl.
    ///
    /// Without --wait it prints the request's name and returns. With --wait it polls for the
    /// result, prints it (the same JSON as the command's own --output json, under `output`),
    /// and exits 0 only when the run completed (or passed).
    #[command(after_help = "Examples:
  backup-agent request create-backup --label before-upgrade --wait
  backup-agent request create-backup --client-id ci-run-4711 --requested-by 'ci: nightly' --wait --output json
  backup-agent request verify 20261123T080841Z-be2523 --read-data --wait
  backup-agent request drill --sample 5% --wait

The same with any S3 client: write backup-agent/requests/<name>.json containing
  {\"schema-version\": 1, \"kind\": \"create-backup\", \"params\": {\"label\": \"nightly\"},
   \"requested-by\": \"ci\", \"client-id\": \"ci-run-4711\"}
and read backup-agent/requests/<name>.result.json (or, once archived,
backup-agent/requests-archive/<day>/<name>.result.json).")]
    Request {
        #[command(subcommand)]
        what: args::RequestCommand,
    },
    /// Print a shell completion script, generated from these same definitions.
    #[command(
        after_help = "Install:\n  bash:  backup-agent completion bash > ~/.local/share/bash-completion/completions/backup-agent\n  zsh:   backup-agent completion zsh > \"${fpath[1]}/_backup-agent\"\n  fish:  backup-agent completion fish > ~/.config/fish/completions/backup-agent.fish\n  once:  source <(backup-agent completion bash)"
    )]
    Completion {
        /// bash, zsh, fish, elvish or powershell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff), generated from these same definitions.
    #[command(after_help = "Read it:  backup-agent man > backup-agent.1 && man -l backup-agent.1")]
    Man,
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    /// Clap checks a command's definition only when that command is parsed: check them all.
    #[test]
    fn every_command_is_well_formed() {
        super::Cli::command().debug_assert();
    }
}
