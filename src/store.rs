//! Object storage: the backup destination (any S3: AWS, Ceph RGW, MinIO) or a local directory
//! with the same layout (an NFS mount, an air-gapped site). Keys are relative to the store's
//! root (`<bucket>/<path>/`); large objects move as streams, never whole in memory.

use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use s3::creds::Credentials;
use s3::{Bucket, Region};
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use crate::secret::Secret;

/// An object as listed or looked up.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ObjectInfo {
    /// Relative to the store's root.
    pub key: String,
    pub size: u64,
    pub etag: Option<String>,
}

/// An object's headers: what a copy must carry besides its bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectMeta {
    pub info: ObjectInfo,
    pub content_type: String,
    /// User metadata (`x-amz-meta-*`), names without the prefix.
    pub metadata: std::collections::BTreeMap<String, String>,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{key}: no such object")]
    NotFound { key: String },
    #[error("bucket {bucket:?} does not exist at {endpoint}: create it, or fix the bucket name")]
    NoBucket { bucket: String, endpoint: String },
    #[error("{op} {key}: access denied by {endpoint} ({detail}): check the access and secret keys and the bucket policy")]
    Denied {
        op: &'static str,
        key: String,
        endpoint: String,
        detail: String,
    },
    #[error("{op} {key} at {endpoint}: {detail}")]
    Transient {
        op: &'static str,
        key: String,
        endpoint: String,
        detail: String,
    },
    #[error("{op} {key}: {detail}")]
    Fatal {
        op: &'static str,
        key: String,
        detail: String,
    },
    #[error("invalid object key {key:?}: {why}")]
    BadKey { key: String, why: &'static str },
}

impl StoreError {
    /// Worth retrying with backoff: the server or the network failed, not the request.
    pub fn is_retryable(&self) -> bool {
        matches!(self, StoreError::Transient { .. })
    }
}

impl crate::retry::Retryable for StoreError {
    fn is_retryable(&self) -> bool {
        StoreError::is_retryable(self)
    }
}

/// How to address buckets: `path` (`https://host/bucket/key`), `host` (`https://bucket.host/key`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum UriStyle {
    #[default]
    Path,
    Host,
}

/// An S3 destination, with the fields s3-integrator gives.
#[derive(Debug, Clone, Default)]
pub struct S3Settings {
    pub endpoint: String,
    pub bucket: String,
    pub path: String,
    pub region: String,
    pub uri_style: UriStyle,
    pub access_key: Secret,
    pub secret_key: Secret,
    /// Server-side encryption asked for on every object written.
    pub sse: Option<Sse>,
}

/// Server-side encryption of what is written: SSE-S3 (the store's keys) or SSE-KMS (a KMS key,
/// the account's default when none is named).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Sse {
    S3,
    Kms { key_id: Option<String> },
}

pub const SSE_HEADER: &str = "x-amz-server-side-encryption";
pub const SSE_KMS_KEY_HEADER: &str = "x-amz-server-side-encryption-aws-kms-key-id";

impl Sse {
    /// From the header values S3 uses: `AES256` or `aws:kms` (with an optional key id).
    pub fn parse(mode: &str, key_id: Option<&str>) -> Result<Sse, String> {
        let key_id = key_id.map(str::trim).filter(|k| !k.is_empty());
        match (mode.trim(), key_id) {
            ("AES256" | "aes256", None) => Ok(Sse::S3),
            ("AES256" | "aes256", Some(_)) => Err(
                "a KMS key id goes with server-side encryption aws:kms, not AES256".into(),
            ),
            ("aws:kms" | "kms", None) => Ok(Sse::Kms { key_id: None }),
            // rust-s3 0.38 sorts the signed headers as `name:value` lines, which puts this
            // header before x-amz-server-side-encryption: S3 then refuses the signature.
            ("aws:kms" | "kms", Some(_)) => Err(
                "a KMS key id cannot be sent yet (its header breaks the request signature): leave it out and make the key the bucket's default encryption key (`aws s3api put-bucket-encryption`)".into(),
            ),
            (other, _) => Err(format!(
                "server-side encryption {other:?} is not AES256 (SSE-S3) or aws:kms (SSE-KMS)"
            )),
        }
    }

    /// The headers a PUT or a CreateMultipartUpload carries (never an UploadPart: S3 refuses
    /// them there).
    pub fn headers(&self) -> Vec<(&'static str, String)> {
        match self {
            Sse::S3 => vec![(SSE_HEADER, "AES256".into())],
            Sse::Kms { key_id } => {
                let mut h = vec![(SSE_HEADER, "aws:kms".to_string())];
                if let Some(k) = key_id {
                    h.push((SSE_KMS_KEY_HEADER, k.clone()));
                }
                h
            }
        }
    }
}

/// Where backups go.
#[derive(Debug, Clone)]
pub enum Store {
    S3(S3Store),
    Local(LocalStore),
}

#[derive(Debug, Clone)]
pub struct S3Store {
    bucket: Box<Bucket>,
    endpoint: String,
    root: String,
    /// Multipart parts in memory at once across every upload through this store (each also
    /// copied once into its request), so memory stays bounded whatever the objects' sizes and
    /// however many move at once.
    parts: std::sync::Arc<tokio::sync::Semaphore>,
    /// Headers every new object is created with (server-side encryption).
    write_headers: http::HeaderMap,
}

/// Part size of multipart uploads: S3's minimum, grown only for objects that would exceed
/// S3's 10,000 parts.
pub const PART_SIZE: u64 = 5 << 20;
/// Parts of [`PART_SIZE`] in flight per store.
pub const PARTS_IN_FLIGHT: usize = 4;

/// The part size for an upload of `size_hint` bytes: S3 allows at most 10,000 parts of at most
/// 5 GiB, and a single PUT of at most 5 GiB (anything over a part goes multipart here).
pub fn part_size(size_hint: Option<u64>) -> u64 {
    size_hint
        .map(|s| s.div_ceil(9_000))
        .unwrap_or(0)
        .max(PART_SIZE)
}

/// Reads until `buf` holds `limit` bytes or the stream ends.
async fn read_part<R: AsyncRead + Unpin + ?Sized>(
    reader: &mut R,
    limit: u64,
) -> std::io::Result<Vec<u8>> {
    use tokio::io::AsyncReadExt;
    let mut buf = Vec::with_capacity(limit.min(PART_SIZE) as usize);
    reader.take(limit).read_to_end(&mut buf).await?;
    Ok(buf)
}

#[derive(Debug, Clone)]
pub struct LocalStore {
    root: PathBuf,
}

/// Refuses keys that could leave the store's root or name nothing.
pub fn check_key(key: &str) -> Result<(), StoreError> {
    let bad = |why| {
        Err(StoreError::BadKey {
            key: key.to_string(),
            why,
        })
    };
    if key.is_empty() {
        return bad("empty");
    }
    if key.starts_with('/') {
        return bad("absolute");
    }
    if key.contains('\0') {
        return bad("contains NUL");
    }
    if key.split('/').any(|p| p == ".." || p == ".") {
        return bad("contains a `.` or `..` segment");
    }
    if key.len() > 1024 {
        return bad("longer than 1024 bytes");
    }
    Ok(())
}

fn join_root(root: &str, key: &str) -> String {
    if root.is_empty() {
        key.to_string()
    } else {
        format!("{root}/{key}")
    }
}

impl Store {
    pub fn s3(s: &S3Settings) -> Result<Store, StoreError> {
        let fatal = |detail: String| StoreError::Fatal {
            op: "configure",
            key: s.bucket.clone(),
            detail,
        };
        let endpoint = s.endpoint.trim_end_matches('/').to_string();
        if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
            return Err(fatal(format!(
                "endpoint {endpoint:?} must start with http:// or https://"
            )));
        }
        if s.bucket.is_empty() {
            return Err(fatal("no bucket given".into()));
        }
        let region = Region::Custom {
            region: if s.region.is_empty() {
                "us-east-1".into()
            } else {
                s.region.clone()
            },
            endpoint: endpoint.clone(),
        };
        let creds = Credentials::new(
            Some(s.access_key.expose()),
            Some(s.secret_key.expose()),
            None,
            None,
            None,
        )
        .map_err(|e| fatal(format!("credentials: {e}")))?;
        let mut bucket = Bucket::new(&s.bucket, region, creds).map_err(|e| fatal(e.to_string()))?;
        if s.uri_style == UriStyle::Path {
            bucket = bucket.with_path_style();
        }
        bucket.set_request_timeout(Some(Duration::from_secs(300)));
        let mut write_headers = http::HeaderMap::new();
        for (k, v) in s.sse.iter().flat_map(Sse::headers) {
            let value = v.parse().map_err(|_| {
                fatal(format!(
                    "server-side encryption: {k}: {v:?} is not a valid header value"
                ))
            })?;
            write_headers.insert(k, value);
        }
        Ok(Store::S3(S3Store {
            bucket,
            endpoint,
            root: s.path.trim_matches('/').to_string(),
            parts: std::sync::Arc::new(tokio::sync::Semaphore::new(PARTS_IN_FLIGHT)),
            write_headers,
        }))
    }

    pub fn local(root: impl Into<PathBuf>) -> Store {
        Store::Local(LocalStore { root: root.into() })
    }

    /// Where this store is, for messages: `s3://bucket/path at endpoint` or a directory.
    pub fn describe(&self) -> String {
        match self {
            Store::S3(s) => format!("s3://{}/{} at {}", s.bucket.name(), s.root, s.endpoint),
            Store::Local(l) => l.root.display().to_string(),
        }
    }

    fn s3_error(s: &S3Store, op: &'static str, key: &str, e: s3::error::S3Error) -> StoreError {
        use s3::error::S3Error as E;
        let endpoint = s.endpoint.clone();
        let key = key.to_string();
        match e {
            E::HttpFailWithBody(404, body) if body.contains("NoSuchBucket") => {
                StoreError::NoBucket {
                    bucket: s.bucket.name(),
                    endpoint,
                }
            }
            E::HttpFailWithBody(404, _) => StoreError::NotFound { key },
            E::HttpFailWithBody(code @ (401 | 403), body) => StoreError::Denied {
                op,
                key,
                endpoint,
                detail: format!("HTTP {code}: {}", s3_code(&body)),
            },
            // MinIO's answer when its drives are full: waiting does not free space.
            E::HttpFailWithBody(507, body) => StoreError::Fatal {
                op,
                key,
                detail: format!(
                    "HTTP 507: {}: {endpoint} is out of space: free some (prune old backups) or grow it",
                    s3_code(&body)
                ),
            },
            E::HttpFailWithBody(code, body) if code >= 500 || code == 429 => {
                StoreError::Transient {
                    op,
                    key,
                    endpoint,
                    detail: format!("HTTP {code}: {}", s3_code(&body)),
                }
            }
            E::HttpFailWithBody(code, body) => StoreError::Fatal {
                op,
                key,
                detail: format!("HTTP {code}: {}", s3_code(&body)),
            },
            E::Reqwest(e) => {
                // reqwest's own text says only "error sending request"; the cause is below.
                let mut detail = e.to_string();
                let mut source = std::error::Error::source(&e);
                while let Some(s) = source {
                    detail.push_str(&format!(": {s}"));
                    source = s.source();
                }
                if detail.contains("certificate") {
                    // Trying again cannot make an untrusted certificate trusted.
                    StoreError::Fatal {
                        op,
                        key,
                        detail: format!(
                            "TLS with {endpoint}: {detail}: if its certificate is signed by a private CA, give the CA chain with --s3-tls-ca-chain FILE (the charm: s3-integrator's tls-ca-chain)"
                        ),
                    }
                } else {
                    StoreError::Transient {
                        op,
                        key,
                        endpoint,
                        detail,
                    }
                }
            }
            E::Io(e) => StoreError::Transient {
                op,
                key,
                endpoint,
                detail: e.to_string(),
            },
            other => StoreError::Fatal {
                op,
                key,
                detail: other.to_string(),
            },
        }
    }

    /// Writes a small object from memory.
    pub async fn put_bytes(
        &self,
        key: &str,
        data: &[u8],
        content_type: &str,
    ) -> Result<(), StoreError> {
        check_key(key)?;
        match self {
            Store::S3(s) => {
                let full = join_root(&s.root, key);
                s.small_put(&full, data, content_type)
                    .execute()
                    .await
                    .map_err(|e| Self::s3_error(s, "put", key, e))?;
                Ok(())
            }
            Store::Local(l) => {
                let mut r = data;
                l.put_stream(key, &mut r, async { Ok(()) }).await
            }
        }
    }

    /// Writes a small object only if no object has the key (S3's `If-None-Match: *`); whether
    /// it was written. Two writers racing for one key: exactly one gets `true`.
    pub async fn put_bytes_if_absent(
        &self,
        key: &str,
        data: &[u8],
        content_type: &str,
    ) -> Result<bool, StoreError> {
        check_key(key)?;
        match self {
            Store::S3(s) => {
                let full = join_root(&s.root, key);
                let sent = s
                    .small_put(&full, data, content_type)
                    .with_header("If-None-Match", "*")
                    .map_err(|e| Self::s3_error(s, "put", key, e))?
                    .execute()
                    .await;
                match sent {
                    Ok(_) => Ok(true),
                    Err(s3::error::S3Error::HttpFailWithBody(412, _)) => Ok(false),
                    Err(e) => Err(Self::s3_error(s, "put", key, e)),
                }
            }
            Store::Local(l) => {
                let path = l.path(key)?;
                let tmp = path.with_file_name(format!(".{}.new", rand::random::<u64>()));
                if let Some(dir) = path.parent() {
                    tokio::fs::create_dir_all(dir)
                        .await
                        .map_err(|e| l.io_error("put", key, e))?;
                }
                tokio::fs::write(&tmp, data)
                    .await
                    .map_err(|e| l.io_error("put", key, e))?;
                // A hard link fails if the name exists: the create-if-absent the kernel keeps.
                let linked = tokio::fs::hard_link(&tmp, &path).await;
                let _ = tokio::fs::remove_file(&tmp).await;
                match linked {
                    Ok(()) => Ok(true),
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
                    Err(e) => Err(l.io_error("put", key, e)),
                }
            }
        }
    }

    /// Writes an object from a stream (multipart on S3), with bounded memory.
    pub async fn put_stream<R: AsyncRead + Unpin + Send>(
        &self,
        key: &str,
        reader: &mut R,
        content_type: &str,
    ) -> Result<(), StoreError> {
        self.put_object(key, reader, content_type, &Default::default())
            .await
    }

    /// Writes an object with its headers: content type and user metadata (`x-amz-meta-*`; a
    /// local directory keeps only the bytes).
    pub async fn put_object<R: AsyncRead + Unpin + Send>(
        &self,
        key: &str,
        reader: &mut R,
        content_type: &str,
        metadata: &std::collections::BTreeMap<String, String>,
    ) -> Result<(), StoreError> {
        self.put_object_verified(key, reader, None, content_type, metadata, async { Ok(()) })
            .await
    }

    /// Writes an object from a stream, awaiting `verdict` after the last byte is read and before
    /// the object becomes visible: an error there (a hash that does not match, say) abandons the
    /// upload and leaves whatever the key held before. `size_hint` picks the part size of
    /// objects so large that S3's 10,000 parts would not do with [`PART_SIZE`].
    pub async fn put_object_verified<R, V>(
        &self,
        key: &str,
        reader: &mut R,
        size_hint: Option<u64>,
        content_type: &str,
        metadata: &std::collections::BTreeMap<String, String>,
        verdict: V,
    ) -> Result<(), StoreError>
    where
        R: AsyncRead + Unpin + Send,
        V: std::future::Future<Output = Result<(), StoreError>>,
    {
        check_key(key)?;
        match self {
            Store::S3(s) => {
                s.put(key, reader, size_hint, content_type, metadata, verdict)
                    .await
            }
            Store::Local(l) => l.put_stream(key, reader, verdict).await,
        }
    }

    /// Reads a whole object with its headers, in one request (no HEAD first).
    pub async fn get_with_meta(&self, key: &str) -> Result<(Vec<u8>, ObjectMeta), StoreError> {
        check_key(key)?;
        match self {
            Store::S3(s) => {
                let full = join_root(&s.root, key);
                let r = s
                    .bucket
                    .get_object(&full)
                    .await
                    .map_err(|e| Self::s3_error(s, "get", key, e))?;
                let headers = r.headers();
                let data = r.to_vec();
                let meta = meta_from_headers(key, data.len() as u64, &headers);
                Ok((data, meta))
            }
            Store::Local(_) => {
                let data = self.get_bytes(key).await?;
                let meta = ObjectMeta {
                    info: ObjectInfo {
                        key: key.to_string(),
                        size: data.len() as u64,
                        etag: None,
                    },
                    content_type: "application/octet-stream".into(),
                    metadata: Default::default(),
                };
                Ok((data, meta))
            }
        }
    }

    /// Reads a small object (a statefile, a manifest) into memory.
    pub async fn get_bytes(&self, key: &str) -> Result<Vec<u8>, StoreError> {
        check_key(key)?;
        match self {
            Store::S3(s) => {
                let full = join_root(&s.root, key);
                let r = s
                    .bucket
                    .get_object(&full)
                    .await
                    .map_err(|e| Self::s3_error(s, "get", key, e))?;
                Ok(r.to_vec())
            }
            Store::Local(l) => tokio::fs::read(l.path(key)?)
                .await
                .map_err(|e| l.io_error("get", key, e)),
        }
    }

    /// Streams an object into `writer`.
    pub async fn get_stream<W: AsyncWrite + Unpin + Send>(
        &self,
        key: &str,
        writer: &mut W,
    ) -> Result<u64, StoreError> {
        check_key(key)?;
        match self {
            Store::S3(s) => {
                let full = join_root(&s.root, key);
                let mut n = 0u64;
                let mut counted = TapWriter::new(&mut *writer, |b: &[u8]| n += b.len() as u64);
                s.bucket
                    .get_object_to_writer(&full, &mut counted)
                    .await
                    .map_err(|e| Self::s3_error(s, "get", key, e))?;
                // A tokio file writes from a background thread: the last chunk is only in it
                // once flushed, and callers read what they fetched right after.
                counted.flush().await.map_err(|e| StoreError::Transient {
                    op: "get",
                    key: key.to_string(),
                    endpoint: s.endpoint.clone(),
                    detail: format!("writing what was read: {e}"),
                })?;
                Ok(n)
            }
            Store::Local(l) => {
                let mut f = tokio::fs::File::open(l.path(key)?)
                    .await
                    .map_err(|e| l.io_error("get", key, e))?;
                let n = tokio::io::copy(&mut f, writer)
                    .await
                    .map_err(|e| l.io_error("get", key, e))?;
                writer
                    .flush()
                    .await
                    .map_err(|e| l.io_error("get", key, e))?;
                Ok(n)
            }
        }
    }

    /// Size and ETag of one object, or `None` when it does not exist.
    pub async fn head(&self, key: &str) -> Result<Option<ObjectInfo>, StoreError> {
        match self {
            Store::S3(_) => Ok(self.head_meta(key).await?.map(|m| m.info)),
            Store::Local(l) => l.head(key).await,
        }
    }

    /// Headers of one object (content type, user metadata), or `None` when it does not exist.
    pub async fn head_meta(&self, key: &str) -> Result<Option<ObjectMeta>, StoreError> {
        check_key(key)?;
        match self {
            Store::S3(s) => {
                let full = join_root(&s.root, key);
                let h = match s.bucket.head_object(&full).await {
                    Ok((h, 200)) => h,
                    Ok((_, 404)) => return Ok(None),
                    Ok((_, code)) => {
                        return Err(Self::s3_error(
                            s,
                            "head",
                            key,
                            s3::error::S3Error::HttpFailWithBody(code, String::new()),
                        ))
                    }
                    Err(e) => {
                        return match Self::s3_error(s, "head", key, e) {
                            StoreError::NotFound { .. } => Ok(None),
                            other => Err(other),
                        }
                    }
                };
                Ok(Some(ObjectMeta {
                    info: ObjectInfo {
                        key: key.to_string(),
                        size: h.content_length.unwrap_or(0).max(0) as u64,
                        etag: h.e_tag.map(|e| e.trim_matches('"').to_string()),
                    },
                    content_type: h
                        .content_type
                        .unwrap_or_else(|| "application/octet-stream".into()),
                    metadata: h.metadata.unwrap_or_default().into_iter().collect(),
                }))
            }
            Store::Local(l) => Ok(l.head(key).await?.map(|info| ObjectMeta {
                info,
                content_type: "application/octet-stream".into(),
                metadata: Default::default(),
            })),
        }
    }

    /// Every object under `prefix`, in key order.
    pub async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, StoreError> {
        match self {
            Store::S3(s) => {
                let full = join_root(&s.root, prefix);
                let strip = join_root(&s.root, "");
                let pages = s
                    .bucket
                    .list(full, None)
                    .await
                    .map_err(|e| Self::s3_error(s, "list", prefix, e))?;
                let mut out: Vec<ObjectInfo> = pages
                    .into_iter()
                    .flat_map(|p| p.contents)
                    .map(|o| ObjectInfo {
                        key: o.key.strip_prefix(&strip).unwrap_or(&o.key).to_string(),
                        size: o.size,
                        etag: o.e_tag.map(|e| e.trim_matches('"').to_string()),
                    })
                    .collect();
                out.sort_by(|a, b| a.key.cmp(&b.key));
                Ok(out)
            }
            Store::Local(l) => l.list(prefix),
        }
    }

    pub async fn delete(&self, key: &str) -> Result<(), StoreError> {
        check_key(key)?;
        match self {
            Store::S3(s) => {
                let full = join_root(&s.root, key);
                s.bucket
                    .delete_object(&full)
                    .await
                    .map_err(|e| Self::s3_error(s, "delete", key, e))?;
                Ok(())
            }
            Store::Local(l) => match tokio::fs::remove_file(l.path(key)?).await {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    Err(l.io_error("delete", key, e))
                }
                _ => Ok(()),
            },
        }
    }
}

/// An object's headers from a response's (lower-case) header map.
fn meta_from_headers(
    key: &str,
    size: u64,
    headers: &std::collections::HashMap<String, String>,
) -> ObjectMeta {
    ObjectMeta {
        info: ObjectInfo {
            key: key.to_string(),
            size,
            etag: headers.get("etag").map(|e| e.trim_matches('"').to_string()),
        },
        content_type: headers
            .get("content-type")
            .cloned()
            .unwrap_or_else(|| "application/octet-stream".into()),
        metadata: headers
            .iter()
            .filter_map(|(k, v)| Some((k.strip_prefix("x-amz-meta-")?.to_string(), v.clone())))
            .collect(),
    }
}

impl S3Store {
    /// One PutObject of `data`, with the headers every new object carries (encryption).
    fn small_put<'a>(
        &'a self,
        full: &'a str,
        data: &'a [u8],
        content_type: &str,
    ) -> s3::PutObjectRequest<'a> {
        self.bucket
            .put_object_builder(full, data)
            .with_content_type(content_type)
            .with_headers(self.write_headers.clone())
    }

    fn err(&self, op: &'static str, key: &str, e: s3::error::S3Error) -> StoreError {
        Store::s3_error(self, op, key, e)
    }

    /// One PUT when the object fits a part, else a multipart upload whose parts wait for room
    /// in the store's budget before they are read.
    async fn put<R, V>(
        &self,
        key: &str,
        reader: &mut R,
        size_hint: Option<u64>,
        content_type: &str,
        metadata: &std::collections::BTreeMap<String, String>,
        verdict: V,
    ) -> Result<(), StoreError>
    where
        R: AsyncRead + Unpin + Send,
        V: std::future::Future<Output = Result<(), StoreError>>,
    {
        let full = join_root(&self.root, key);
        let part = part_size(size_hint);
        let io = |e: std::io::Error| StoreError::Transient {
            op: "put",
            key: key.to_string(),
            endpoint: self.endpoint.clone(),
            detail: format!("reading the data to upload: {e}"),
        };
        // Small objects (the size is known) skip the budget: they are in memory already.
        let small = size_hint.is_some_and(|s| s < part);
        let permit = if small {
            None
        } else {
            Some(
                self.parts
                    .clone()
                    .acquire_owned()
                    .await
                    .expect("never closed"),
            )
        };
        let first = read_part(reader, part).await.map_err(io)?;
        if (first.len() as u64) < part {
            verdict.await?;
            let mut req = self.small_put(&full, &first, content_type);
            for (k, v) in metadata {
                req = req
                    .with_metadata(k, v)
                    .map_err(|e| self.err("put", key, e))?;
            }
            req.execute().await.map_err(|e| self.err("put", key, e))?;
            drop(permit);
            return Ok(());
        }
        let mut headers = self.write_headers.clone();
        for (k, v) in metadata {
            let name = format!("x-amz-meta-{k}");
            let bad = |what: &str| StoreError::Fatal {
                op: "put",
                key: key.to_string(),
                detail: format!("metadata {k:?}: invalid header {what}"),
            };
            headers.insert(
                http::header::HeaderName::from_bytes(name.as_bytes()).map_err(|_| bad("name"))?,
                v.parse().map_err(|_| bad("value"))?,
            );
        }
        let init = self
            .bucket
            .with_extra_headers(headers)
            .map_err(|e| self.err("put", key, e))?
            .initiate_multipart_upload(&full, content_type)
            .await
            .map_err(|e| self.err("put", key, e))?;
        let upload_id = init.upload_id;
        let uploaded = async {
            let mut parts = vec![];
            let (mut chunk, mut permit, mut number) = (first, permit, 1u32);
            loop {
                let last = (chunk.len() as u64) < part;
                let (bucket, path, id, ct) = (
                    self.bucket.clone(),
                    full.clone(),
                    upload_id.clone(),
                    content_type.to_string(),
                );
                let held = permit.take();
                parts.push(tokio::spawn(async move {
                    let r = bucket
                        .put_multipart_chunk(chunk, &path, number, &id, &ct)
                        .await;
                    drop(held);
                    r
                }));
                if last {
                    break;
                }
                permit = Some(
                    self.parts
                        .clone()
                        .acquire_owned()
                        .await
                        .expect("never closed"),
                );
                chunk = read_part(reader, part).await.map_err(io)?;
                if chunk.is_empty() {
                    break;
                }
                number += 1;
            }
            let mut done = vec![];
            for p in parts {
                let r = p.await.map_err(|e| StoreError::Fatal {
                    op: "put",
                    key: key.to_string(),
                    detail: format!("a part upload panicked: {e}"),
                })?;
                done.push(r.map_err(|e| self.err("put", key, e))?);
            }
            verdict.await?;
            done.sort_by_key(|p| p.part_number);
            self.bucket
                .complete_multipart_upload(&full, &upload_id, done)
                .await
                .map_err(|e| self.err("put", key, e))?;
            Ok(())
        }
        .await;
        if uploaded.is_err() {
            // Parts of an abandoned upload would stay billed and invisible.
            let _ = self.bucket.abort_upload(&full, &upload_id).await;
        }
        uploaded
    }
}

/// The `Code` of an S3 XML error body, or the start of the body.
fn s3_code(body: &str) -> String {
    let tag = |t: &str| {
        let open = format!("<{t}>");
        let start = body.find(&open)? + open.len();
        let end = body[start..].find(&format!("</{t}>"))? + start;
        Some(body[start..end].to_string())
    };
    match (tag("Code"), tag("Message")) {
        (Some(c), Some(m)) => format!("{c}: {m}"),
        (Some(c), None) => c,
        _ => body.chars().take(200).collect(),
    }
}

/// Passes writes through to `inner` and shows each written chunk to `seen` (to count or hash
/// a stream on its way).
pub struct TapWriter<W, F> {
    pub inner: W,
    seen: F,
}

impl<W, F: FnMut(&[u8])> TapWriter<W, F> {
    pub fn new(inner: W, seen: F) -> Self {
        TapWriter { inner, seen }
    }
}

impl<W: AsyncWrite + Unpin, F: FnMut(&[u8]) + Unpin> AsyncWrite for TapWriter<W, F> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let this = &mut *self;
        let r = std::pin::Pin::new(&mut this.inner).poll_write(cx, buf);
        if let std::task::Poll::Ready(Ok(n)) = &r {
            (this.seen)(&buf[..*n]);
        }
        r
    }
    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl LocalStore {
    async fn head(&self, key: &str) -> Result<Option<ObjectInfo>, StoreError> {
        match tokio::fs::metadata(self.path(key)?).await {
            Ok(m) if m.is_file() => Ok(Some(ObjectInfo {
                key: key.to_string(),
                size: m.len(),
                etag: None,
            })),
            Ok(_) => Ok(None),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(self.io_error("head", key, e)),
        }
    }

    fn path(&self, key: &str) -> Result<PathBuf, StoreError> {
        check_key(key)?;
        let rel = Path::new(key);
        if rel.components().any(|c| !matches!(c, Component::Normal(_))) {
            return Err(StoreError::BadKey {
                key: key.to_string(),
                why: "not a plain relative path",
            });
        }
        Ok(self.root.join(rel))
    }

    fn io_error(&self, op: &'static str, key: &str, e: std::io::Error) -> StoreError {
        if e.kind() == std::io::ErrorKind::NotFound {
            StoreError::NotFound {
                key: key.to_string(),
            }
        } else {
            StoreError::Fatal {
                op,
                key: key.to_string(),
                detail: format!("{} ({})", e, self.root.display()),
            }
        }
    }

    /// Writes through a temporary file and a rename: a reader never sees half an object, nor
    /// one whose `verdict` failed.
    async fn put_stream<R: AsyncRead + Unpin + ?Sized>(
        &self,
        key: &str,
        reader: &mut R,
        verdict: impl std::future::Future<Output = Result<(), StoreError>>,
    ) -> Result<(), StoreError> {
        let path = self.path(key)?;
        if let Some(dir) = path.parent() {
            tokio::fs::create_dir_all(dir)
                .await
                .map_err(|e| self.io_error("put", key, e))?;
        }
        let tmp = path.with_file_name(format!(
            ".{}.partial",
            path.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        ));
        let mut f = tokio::fs::File::create(&tmp)
            .await
            .map_err(|e| self.io_error("put", key, e))?;
        tokio::io::copy(reader, &mut f)
            .await
            .map_err(|e| self.io_error("put", key, e))?;
        f.sync_all()
            .await
            .map_err(|e| self.io_error("put", key, e))?;
        drop(f);
        if let Err(e) = verdict.await {
            let _ = tokio::fs::remove_file(&tmp).await;
            return Err(e);
        }
        tokio::fs::rename(&tmp, &path)
            .await
            .map_err(|e| self.io_error("put", key, e))
    }

    fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, StoreError> {
        let mut out = vec![];
        let mut stack = vec![self.root.clone()];
        while let Some(dir) = stack.pop() {
            let rd = match std::fs::read_dir(&dir) {
                Ok(rd) => rd,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(self.io_error("list", prefix, e)),
            };
            for entry in rd {
                let entry = entry.map_err(|e| self.io_error("list", prefix, e))?;
                let p = entry.path();
                let ft = entry
                    .file_type()
                    .map_err(|e| self.io_error("list", prefix, e))?;
                if ft.is_dir() {
                    stack.push(p);
                } else if ft.is_file() {
                    let name = entry.file_name().to_string_lossy().into_owned();
                    if name.starts_with('.') && name.ends_with(".partial") {
                        continue;
                    }
                    let key = p
                        .strip_prefix(&self.root)
                        .unwrap_or(&p)
                        .to_string_lossy()
                        .into_owned();
                    if key.starts_with(prefix) {
                        let size = entry.metadata().map(|m| m.len()).unwrap_or(0);
                        out.push(ObjectInfo {
                            key,
                            size,
                            etag: None,
                        });
                    }
                }
            }
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Settings end up in errors, logs and panics by `{:?}`: the keys must not come along.
    #[test]
    fn settings_never_print_their_keys_even_in_a_panic() {
        let s = S3Settings {
            endpoint: "https://s3.example.com".into(),
            bucket: "b".into(),
            access_key: Secret::new("planted-access-7d1e"),
            secret_key: Secret::new("planted-secret-9c2f"),
            ..Default::default()
        };
        let shown = format!("{s:?} {:?}", Store::s3(&s).unwrap());
        assert!(!shown.contains("planted-"), "{shown}");
        let quiet = std::panic::take_hook();
        std::panic::set_hook(Box::new(|_| {}));
        let payload = std::panic::catch_unwind(|| panic!("bad settings: {s:?}")).unwrap_err();
        std::panic::set_hook(quiet);
        let text = payload.downcast_ref::<String>().unwrap();
        assert!(
            text.contains("<redacted>") && !text.contains("planted-"),
            "{text}"
        );
    }

    #[test]
    fn keys_that_could_escape_are_refused() {
        for k in ["", "/etc/passwd", "a/../../b", "./x", "a/./b", "nul\0byte"] {
            assert!(check_key(k).is_err(), "{k:?}");
        }
        for k in [
            "a",
            "v2/artifacts/my pipeline/x.csv",
            "ünï/数据",
            "a+b=c&d",
            "100%/x",
            "trailing.dot.",
        ] {
            assert!(check_key(k).is_ok(), "{k:?}");
        }
        assert!(check_key(&"x".repeat(1025)).is_err());
    }

    #[test]
    fn s3_error_bodies_name_the_code() {
        let body = "<?xml version=\"1.0\"?><Error><Code>SignatureDoesNotMatch</Code><Message>The request signature we calculated does not match</Message></Error>";
        assert_eq!(
            s3_code(body),
            "SignatureDoesNotMatch: The request signature we calculated does not match"
        );
    }

    #[tokio::test]
    async fn local_store_round_trip_list_and_delete() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::local(dir.path());
        store
            .put_bytes("a/b/c.txt", b"hello", "text/plain")
            .await
            .unwrap();
        let mut big = &vec![7u8; 3 << 20][..];
        store
            .put_stream("a/big.bin", &mut big, "application/octet-stream")
            .await
            .unwrap();
        assert_eq!(store.get_bytes("a/b/c.txt").await.unwrap(), b"hello");
        assert_eq!(
            store.head("a/big.bin").await.unwrap().unwrap().size,
            3 << 20
        );
        assert!(store.head("a/none").await.unwrap().is_none());
        let keys: Vec<String> = store
            .list("a/")
            .await
            .unwrap()
            .into_iter()
            .map(|o| o.key)
            .collect();
        assert_eq!(keys, ["a/b/c.txt", "a/big.bin"]);
        let mut out = vec![];
        assert_eq!(
            store.get_stream("a/big.bin", &mut out).await.unwrap(),
            3 << 20
        );
        store.delete("a/b/c.txt").await.unwrap();
        store.delete("a/b/c.txt").await.unwrap();
        assert!(matches!(
            store.get_bytes("a/b/c.txt").await,
            Err(StoreError::NotFound { .. })
        ));
        assert!(matches!(
            store.put_bytes("../escape", b"x", "text/plain").await,
            Err(StoreError::BadKey { .. })
        ));
    }
}
