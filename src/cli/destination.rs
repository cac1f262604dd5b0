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

impl DestinationArgs {
    /// The store these settings name, or what is missing and how to give it.
    pub fn store(&self) -> Result<Store, String> {
        if let Some(dir) = &self.dir {
            if !dir.is_dir() {
                return Err(format!(
                    "--destination-dir {}: not a directory (create it first)",
                    dir.display()
                ));
            }
            return Ok(Store::local(dir.clone()));
        }
        // An empty variable (`BACKUP_AGENT_S3_ENDPOINT=`) means unset, as in a shell.
        let set = |v: &Option<String>| v.clone().filter(|s| !s.trim().is_empty());
        let (Some(endpoint), Some(bucket)) = (set(&self.endpoint), set(&self.bucket)) else {
            return Err("no backup destination: set --s3-endpoint and --s3-bucket (or BACKUP_AGENT_S3_ENDPOINT and BACKUP_AGENT_S3_BUCKET), or --destination-dir for a local directory".into());
        };
        let (Some(access), Some(secret)) = (set(&self.access_key), set(&self.secret_key)) else {
            return Err("no S3 credentials: set BACKUP_AGENT_S3_ACCESS_KEY and BACKUP_AGENT_S3_SECRET_KEY in the environment".into());
        };
        let sse = match (set(&self.sse), set(&self.sse_kms_key_id)) {
            (None, None) => None,
            (None, Some(key)) => Some(Sse::parse("aws:kms", Some(&key))),
            (Some(mode), key) => Some(Sse::parse(&mode, key.as_deref())),
        }
        .transpose()
        .map_err(|e| format!("--s3-sse: {e}"))?;
        if let Some(file) = &self.tls_ca_chain {
            backup_agent::storage::tls::trust_file(file, "--s3-tls-ca-chain")?;
        }
        Store::s3(&S3Settings {
            endpoint,
            bucket,
            path: self.path.clone(),
            region: self.region.clone(),
            uri_style: self.uri_style,
            access_key: Secret::new(access),
            secret_key: Secret::new(secret),
            sse,
        })
        .map_err(|e| e.to_string())
    }
}

/// `path` or `host`, as s3-integrator spells them.
fn uri_style() -> impl clap::builder::TypedValueParser<Value = UriStyle> {
    use clap::builder::TypedValueParser;
    clap::builder::PossibleValuesParser::new(["path", "host"]).map(|s| match s.as_str() {
        "host" => UriStyle::Host,
        _ => UriStyle::Path,
    })
}
