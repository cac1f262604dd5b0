//! Where backups go, as the operator says it: S3 settings (the fields s3-integrator gives) from
//! flags or the environment, or a local directory, never chosen silently.

use std::path::PathBuf;

use backup_agent::secret::Secret;
use backup_agent::storage::{S3Settings, Sse, Store, UriStyle};

#[derive(Debug, Clone, clap::Args)]
pub struct DestinationArgs {
    /// S3 endpoint of the backup destination, e.g. https://s3.eu-central-1.amazonaws.com.
    #[arg(
        long = "s3-endpoint",
        env = "BACKUP_AGENT_S3_ENDPOINT",
        value_name = "URL"
    )]
    pub endpoint: Option<String>,
    /// Bucket of the backup destination.
    #[arg(long = "s3-bucket", env = "BACKUP_AGENT_S3_BUCKET")]
    pub bucket: Option<String>,
    /// Path inside the bucket; backups go under <path>/backup-agent/.
    #[arg(long = "s3-path", env = "BACKUP_AGENT_S3_PATH", default_value = "")]
    pub path: String,
    #[arg(
        long = "s3-region",
        env = "BACKUP_AGENT_S3_REGION",
        default_value = "us-east-1"
    )]
    pub region: String,
    #[arg(
        long = "s3-uri-style",
        env = "BACKUP_AGENT_S3_URI_STYLE",
        default_value = "path",
        value_parser = uri_style()
    )]
    pub uri_style: UriStyle,
    /// Access key (environment only: a flag would show in the process list).
    #[arg(
        long = "s3-access-key",
        env = "BACKUP_AGENT_S3_ACCESS_KEY",
        hide = true,
        hide_env_values = true
    )]
    pub access_key: Option<String>,
    /// Secret key (environment only).
    #[arg(
        long = "s3-secret-key",
        env = "BACKUP_AGENT_S3_SECRET_KEY",
        hide = true,
        hide_env_values = true
    )]
    pub secret_key: Option<String>,
    /// Server-side encryption of every object written: AES256 (SSE-S3) or aws:kms (SSE-KMS).
    #[arg(
        long = "s3-sse",
        env = "BACKUP_AGENT_S3_SSE",
        value_name = "AES256|aws:kms"
    )]
    pub sse: Option<String>,
    /// The KMS key for --s3-sse aws:kms (the account's default key without it).
    #[arg(
        long = "s3-sse-kms-key-id",
        env = "BACKUP_AGENT_S3_SSE_KMS_KEY_ID",
        value_name = "KEY"
    )]
    pub sse_kms_key_id: Option<String>,
    /// PEM file of the CA chain that signed the endpoint's certificate, trusted besides the
    /// public roots (s3-integrator's tls-ca-chain). Certificates are always verified.
    #[arg(
        long = "s3-tls-ca-chain",
        env = "BACKUP_AGENT_S3_TLS_CA_CHAIN",
        value_name = "FILE"
    )]
    pub tls_ca_chain: Option<PathBuf>,
    /// A local directory instead of S3 (an NFS mount, an air-gapped site); same layout.
    #[arg(
        long = "destination-dir",
        env = "BACKUP_AGENT_DESTINATION_DIR",
        value_name = "DIR",
        conflicts_with = "endpoint"
    )]
    pub dir: Option<PathBuf>,
}

/// Both repositories, for the commands that read, check or prune either: the primary
/// destination, the secondary (the off-site copy), and which one the command works on.
#[derive(Debug, Clone, clap::Args)]
pub struct RepoArgs {
    #[command(flatten)]
    pub primary: DestinationArgs,
    /// Which repository the command works on: the primary destination, or the secondary (the
    /// off-site copy made by `backup-agent copy`, set with --secondary-*).
    #[arg(long, value_enum, default_value = "primary", env = "BACKUP_AGENT_FROM")]
    pub from: Repo,
    #[command(flatten)]
    pub secondary: SecondaryArgs,
}

/// One of the two repositories.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Repo {
    Primary,
    Secondary,
}

/// The secondary destination: where `copy` puts the off-site copy of backups (another
/// endpoint, another site). Set like the primary, each flag and variable with `secondary`.
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Secondary destination (off-site copy)")]
pub struct SecondaryArgs {
    /// S3 endpoint of the secondary destination.
    #[arg(
        long = "secondary-s3-endpoint",
        id = "secondary-s3-endpoint",
        env = "BACKUP_AGENT_SECONDARY_S3_ENDPOINT",
        value_name = "URL"
    )]
    pub endpoint: Option<String>,
    /// Bucket of the secondary destination.
    #[arg(
        long = "secondary-s3-bucket",
        id = "secondary-s3-bucket",
        env = "BACKUP_AGENT_SECONDARY_S3_BUCKET"
    )]
    pub bucket: Option<String>,
    /// Path inside the secondary bucket.
    #[arg(
        long = "secondary-s3-path",
        id = "secondary-s3-path",
        env = "BACKUP_AGENT_SECONDARY_S3_PATH",
        default_value = ""
    )]
    pub path: String,
    #[arg(
        long = "secondary-s3-region",
        id = "secondary-s3-region",
        env = "BACKUP_AGENT_SECONDARY_S3_REGION",
        default_value = "us-east-1"
    )]
    pub region: String,
    #[arg(
        long = "secondary-s3-uri-style",
        id = "secondary-s3-uri-style",
        env = "BACKUP_AGENT_SECONDARY_S3_URI_STYLE",
        default_value = "path",
        value_parser = uri_style()
    )]
    pub uri_style: UriStyle,
    /// Access key of the secondary (environment only).
    #[arg(
        long = "secondary-s3-access-key",
        id = "secondary-s3-access-key",
        env = "BACKUP_AGENT_SECONDARY_S3_ACCESS_KEY",
        hide = true,
        hide_env_values = true
    )]
    pub access_key: Option<String>,
    /// Secret key of the secondary (environment only).
    #[arg(
        long = "secondary-s3-secret-key",
        id = "secondary-s3-secret-key",
        env = "BACKUP_AGENT_SECONDARY_S3_SECRET_KEY",
        hide = true,
        hide_env_values = true
    )]
    pub secret_key: Option<String>,
    /// Server-side encryption on the secondary: AES256 or aws:kms.
    #[arg(
        long = "secondary-s3-sse",
        id = "secondary-s3-sse",
        env = "BACKUP_AGENT_SECONDARY_S3_SSE",
        value_name = "AES256|aws:kms"
    )]
    pub sse: Option<String>,
    #[arg(
        long = "secondary-s3-sse-kms-key-id",
        id = "secondary-s3-sse-kms-key-id",
        env = "BACKUP_AGENT_SECONDARY_S3_SSE_KMS_KEY_ID",
        value_name = "KEY"
    )]
    pub sse_kms_key_id: Option<String>,
    /// PEM file of the CA chain of the secondary's endpoint.
    #[arg(
        long = "secondary-s3-tls-ca-chain",
        id = "secondary-s3-tls-ca-chain",
        env = "BACKUP_AGENT_SECONDARY_S3_TLS_CA_CHAIN",
        value_name = "FILE"
    )]
    pub tls_ca_chain: Option<PathBuf>,
    /// A local directory as the secondary (a mount of another site); same layout.
    #[arg(
        long = "secondary-dir",
        id = "secondary-dir",
        env = "BACKUP_AGENT_SECONDARY_DIR",
        value_name = "DIR",
        conflicts_with = "secondary-s3-endpoint"
    )]
    pub dir: Option<PathBuf>,
}

/// How one destination's settings are named, for messages.
struct Names {
    flag: &'static str,
    env: &'static str,
    dir: &'static str,
    what: &'static str,
}

const PRIMARY: Names = Names {
    flag: "--s3-",
    env: "BACKUP_AGENT_S3_",
    dir: "--destination-dir",
    what: "backup destination",
};

const SECONDARY: Names = Names {
    flag: "--secondary-s3-",
    env: "BACKUP_AGENT_SECONDARY_S3_",
    dir: "--secondary-dir",
    what: "secondary destination",
};

/// The settings of one destination, whichever flags gave them.
struct Fields<'a> {
    endpoint: &'a Option<String>,
    bucket: &'a Option<String>,
    path: &'a str,
    region: &'a str,
    uri_style: UriStyle,
    access_key: &'a Option<String>,
    secret_key: &'a Option<String>,
    sse: &'a Option<String>,
    sse_kms_key_id: &'a Option<String>,
    tls_ca_chain: &'a Option<PathBuf>,
    dir: &'a Option<PathBuf>,
}

impl RepoArgs {
    /// The store of the repository `--from` names, or what is missing and how to give it.
    pub fn store(&self) -> Result<Store, String> {
        match self.from {
            Repo::Primary => self.primary.store(),
            Repo::Secondary => self.secondary()?.ok_or_else(|| {
                "--from secondary: no secondary destination: set --secondary-s3-endpoint and --secondary-s3-bucket (or BACKUP_AGENT_SECONDARY_S3_*), or --secondary-dir".to_string()
            }),
        }
    }

    /// The primary destination, whatever `--from` says.
    pub fn primary(&self) -> Result<Store, String> {
        self.primary.store()
    }

    /// The secondary destination, or `None` when none is set.
    pub fn secondary(&self) -> Result<Option<Store>, String> {
        let s = &self.secondary;
        build(
            &Fields {
                endpoint: &s.endpoint,
                bucket: &s.bucket,
                path: &s.path,
                region: &s.region,
                uri_style: s.uri_style,
                access_key: &s.access_key,
                secret_key: &s.secret_key,
                sse: &s.sse,
                sse_kms_key_id: &s.sse_kms_key_id,
                tls_ca_chain: &s.tls_ca_chain,
                dir: &s.dir,
            },
            &SECONDARY,
        )
    }
}

impl DestinationArgs {
    /// The store these settings name, or what is missing and how to give it.
    pub fn store(&self) -> Result<Store, String> {
        build(
            &Fields {
                endpoint: &self.endpoint,
                bucket: &self.bucket,
                path: &self.path,
                region: &self.region,
                uri_style: self.uri_style,
                access_key: &self.access_key,
                secret_key: &self.secret_key,
                sse: &self.sse,
                sse_kms_key_id: &self.sse_kms_key_id,
                tls_ca_chain: &self.tls_ca_chain,
                dir: &self.dir,
            },
            &PRIMARY,
        )?
        .ok_or_else(|| format!("no {w}: set --s3-endpoint and --s3-bucket (or BACKUP_AGENT_S3_ENDPOINT and BACKUP_AGENT_S3_BUCKET), or --destination-dir for a local directory", w = PRIMARY.what))
    }
}

/// The store the fields name; `None` when neither an endpoint nor a directory is given.
fn build(f: &Fields, n: &Names) -> Result<Option<Store>, String> {
    if let Some(dir) = f.dir {
        if !dir.is_dir() {
            return Err(format!(
                "{} {}: not a directory (create it first)",
                n.dir,
                dir.display()
            ));
        }
        return Ok(Some(Store::local(dir.clone())));
    }
    // An empty variable (`BACKUP_AGENT_S3_ENDPOINT=`) means unset, as in a shell.
    let set = |v: &Option<String>| v.clone().filter(|s| !s.trim().is_empty());
    let (endpoint, bucket) = match (set(f.endpoint), set(f.bucket)) {
        (None, None) => return Ok(None),
        (Some(e), Some(b)) => (e, b),
        _ => {
            return Err(format!(
                "no {w}: set {p}endpoint and {p}bucket (or {e}ENDPOINT and {e}BUCKET), or {d} for a local directory",
                w = n.what,
                p = n.flag,
                e = n.env,
                d = n.dir
            ))
        }
    };
    let (Some(access), Some(secret)) = (set(f.access_key), set(f.secret_key)) else {
        return Err(format!(
            "no S3 credentials for the {}: set {e}ACCESS_KEY and {e}SECRET_KEY in the environment",
            n.what,
            e = n.env
        ));
    };
    let sse = match (set(f.sse), set(f.sse_kms_key_id)) {
        (None, None) => None,
        (None, Some(key)) => Some(Sse::parse("aws:kms", Some(&key))),
        (Some(mode), key) => Some(Sse::parse(&mode, key.as_deref())),
    }
    .transpose()
    .map_err(|e| format!("{}sse: {e}", n.flag))?;
    if let Some(file) = f.tls_ca_chain {
        backup_agent::storage::tls::trust_file(file, &format!("{}tls-ca-chain", n.flag))?;
    }
    Store::s3(&S3Settings {
        endpoint,
        bucket,
        path: f.path.to_string(),
        region: f.region.to_string(),
        uri_style: f.uri_style,
        access_key: Secret::new(access),
        secret_key: Secret::new(secret),
        sse,
    })
    .map(Some)
    .map_err(|e| e.to_string())
}

/// `path` or `host`, as s3-integrator spells them.
fn uri_style() -> impl clap::builder::TypedValueParser<Value = UriStyle> {
    use clap::builder::TypedValueParser;
    clap::builder::PossibleValuesParser::new(["path", "host"]).map(|s| match s.as_str() {
        "host" => UriStyle::Host,
        _ => UriStyle::Path,
    })
}
