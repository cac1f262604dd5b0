//! The charm's config (`config-get`), checked: a bad value blocks the unit with the option named
//! and the command that fixes it, instead of failing later in the middle of a backup.

use serde_json::{Map, Value};

use crate::components::check::Sample;
use crate::context::{self, Tuning};
use crate::daemon::Schedule;
use crate::juju::discovery::AppNames;
use crate::repository::retention::Policy;
use crate::units::parse_rate;

#[derive(Debug, Clone)]
pub struct Settings {
    pub model: String,
    pub controller_secret: Option<String>,
    pub names: AppNames,
    pub mlmd_container: Option<String>,
    pub minio_bucket: String,
    pub checkers: u16,
    pub transfers: u16,
    pub bwlimit: Option<u64>,
    pub schedule: Option<Schedule>,
    pub drill_schedule: Option<Schedule>,
    /// What a scheduled drill restores of the bucket.
    pub drill_sample: Option<Sample>,
    pub retention: Policy,
    /// Copy every completed backup to the s3-secondary destination after each backup.
    pub copy_after_backup: bool,
    /// The secondary's own retention.
    pub secondary_retention: Policy,
    /// Answer requests written under backup-agent/requests/ of the bucket.
    pub bucket_requests: bool,
    pub allow_restore_requests: bool,
    /// Where the daemon's API listens in the workload container.
    pub listen: std::net::SocketAddr,
}

impl Settings {
    /// Reads `config-get --format=json` output; every error names the option and the fix.
    pub fn from_config(app: &str, config: &Map<String, Value>) -> Result<Self, String> {
        let text = |k: &str, default: &str| -> String {
            match config.get(k) {
                Some(Value::String(s)) if !s.trim().is_empty() => s.trim().to_string(),
                _ => default.to_string(),
            }
        };
        let optional = |k: &str| Some(text(k, "")).filter(|s| !s.is_empty());
        let count = |k: &str, default: u16| -> Result<u16, String> {
            match config.get(k) {
                None | Some(Value::Null) => Ok(default),
                Some(v) => v
                    .as_i64()
                    .filter(|n| (1..=256).contains(n))
                    .map(|n| n as u16)
                    .ok_or_else(|| {
                        format!(
                            "config {k}={v} is out of range 1-256: juju config {app} {k}={default}"
                        )
                    }),
            }
        };
        let bwlimit = match optional("bwlimit") {
            None => None,
            Some(s) => Some(parse_rate(&s).map_err(|e| {
                format!("config bwlimit={s:?}: {e}: juju config {app} bwlimit=50M (or bwlimit= for none)")
            })?),
        };
        let controller_secret = optional("controller-secret");
        if let Some(id) = &controller_secret {
            if !id.starts_with("secret:") {
                return Err(format!(
                    "config controller-secret={id:?} is not a secret URI (secret:...): use the id `juju add-secret` printed"
                ));
            }
        }
        let schedule = match optional("schedule") {
            None => None,
            Some(s) => Some(Schedule::parse(&s).map_err(|e| {
                format!(
                    "config {e}: juju config {app} schedule=\"0 2 * * *\" (or schedule= for none)"
                )
            })?),
        };
        let drill_schedule = match optional("drill-schedule") {
            None => None,
            Some(s) => Some(Schedule::parse(&s).map_err(|e| {
                format!(
                    "config drill-{e}: juju config {app} drill-schedule=\"0 4 * * 0\" (or drill-schedule= for none)"
                )
            })?),
        };
        let drill_sample = match optional("drill-sample") {
            None => None,
            Some(s) => Some(Sample::parse(&s).map_err(|e| {
                format!("config drill-{e}: juju config {app} drill-sample=5% (or drill-sample= for all)")
            })?),
        };
        let retention = Policy::parse(&text("retention", "")).map_err(|e| {
            format!("config {e}: juju config {app} retention=keep-daily=7,keep-weekly=4 (or retention= to keep all)")
        })?;
        let flag = |k: &str| -> Result<bool, String> {
            match config.get(k) {
                None | Some(Value::Null) => Ok(false),
                Some(Value::Bool(b)) => Ok(*b),
                Some(Value::String(s)) if s == "true" || s == "false" => Ok(s == "true"),
                Some(v) => Err(format!(
                    "config {k}={v} is not true or false: juju config {app} {k}=false"
                )),
            }
        };
        let secondary_retention = Policy::parse(&text("secondary-retention", "")).map_err(|e| {
            format!("config secondary-{e}: juju config {app} secondary-retention=keep-monthly=12 (or secondary-retention= to keep every copy)")
        })?;
        let listen_text = text("listen", "0.0.0.0:8940");
        let listen = listen_text.parse().map_err(|_| {
            format!("config listen={listen_text:?} is not an address:port: juju config {app} listen=0.0.0.0:8940")
        })?;
        let d = AppNames::default();
        Ok(Settings {
            model: text("model", "kubeflow"),
            controller_secret,
            names: AppNames {
                kfp_db: text("kfp-db-app", &d.kfp_db),
                katib_db: text("katib-db-app", &d.katib_db),
                metadata_writer: text("metadata-writer-app", &d.metadata_writer),
                mlmd: text("mlmd-app", &d.mlmd),
                minio: text("minio-app", &d.minio),
                kfp_ui: text("kfp-ui-app", &d.kfp_ui),
            },
            mlmd_container: optional("mlmd-container"),
            minio_bucket: text("minio-bucket", context::MINIO_BUCKET),
            checkers: count("checkers", context::CHECKERS)?,
            transfers: count("transfers", context::TRANSFERS)?,
            bwlimit,
            schedule,
            drill_schedule,
            drill_sample,
            retention,
            copy_after_backup: flag("copy-after-backup")?,
            secondary_retention,
            bucket_requests: flag("bucket-requests")?,
            allow_restore_requests: flag("allow-restore-requests")?,
            listen,
        })
    }

    /// The run settings: the library's defaults, with what config sets.
    pub fn tuning(&self) -> Tuning {
        Tuning {
            mlmd_container: self.mlmd_container.clone(),
            minio_bucket: self.minio_bucket.clone(),
            checkers: self.checkers.into(),
            transfers: self.transfers.into(),
            bwlimit: self.bwlimit,
            ..Tuning::default()
        }
    }
}
