//! S3 through `rust-s3`: AWS, Ceph RGW, MinIO, SeaweedFS, any S3. Errors are classified
//! (transient or fatal) from the HTTP status and S3's error code; uploads are multipart in
//! parts drawn from a per-store budget, so memory stays bounded whatever the sizes.

use std::collections::BTreeMap;
use std::time::Duration;

use s3::creds::Credentials;
use s3::error::S3Error;
use s3::{Bucket, Region};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use super::{
    check_key, ListPage, ObjectInfo, ObjectMeta, ObjectStore, S3Settings, Sse, StoreError,
    TapWriter, UriStyle, Verdict,
};

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

fn join_root(root: &str, key: &str) -> String {
    if root.is_empty() {
        key.to_string()
    } else {
        format!("{root}/{key}")
    }
}

impl S3Store {
    pub fn new(s: &S3Settings) -> Result<S3Store, StoreError> {
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
        Ok(S3Store {
            bucket,
            endpoint,
            root: s.path.trim_matches('/').to_string(),
            parts: std::sync::Arc::new(tokio::sync::Semaphore::new(PARTS_IN_FLIGHT)),
            write_headers,
        })
    }

    fn err(&self, op: &'static str, key: &str, e: S3Error) -> StoreError {
        use S3Error as E;
        let s = self;
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

    /// The full key in the bucket, once the key is checked.
    fn full(&self, key: &str) -> Result<String, StoreError> {
        check_key(key)?;
        Ok(join_root(&self.root, key))
    }

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

    /// The headers of a new object: encryption, and user metadata as `x-amz-meta-*`.
    fn headers_with(
        &self,
        key: &str,
        metadata: &BTreeMap<String, String>,
    ) -> Result<http::HeaderMap, StoreError> {
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
        Ok(headers)
    }
}

#[async_trait::async_trait]
impl ObjectStore for S3Store {
    fn location(&self) -> Option<String> {
        Some(
            join_root(self.bucket.name().as_str(), &self.root)
                .trim_end_matches('/')
                .to_string(),
        )
    }

    fn describe(&self) -> String {
        format!(
            "s3://{}/{} at {}",
            self.bucket.name(),
            self.root,
            self.endpoint
        )
    }

    async fn put_bytes(
        &self,
        key: &str,
        data: &[u8],
        content_type: &str,
    ) -> Result<(), StoreError> {
        let full = self.full(key)?;
        self.small_put(&full, data, content_type)
            .execute()
            .await
            .map_err(|e| self.err("put", key, e))?;
        Ok(())
    }

    async fn put_bytes_if_absent(
        &self,
        key: &str,
        data: &[u8],
        content_type: &str,
    ) -> Result<bool, StoreError> {
        let full = self.full(key)?;
        let sent = self
            .small_put(&full, data, content_type)
            .with_header("If-None-Match", "*")
            .map_err(|e| self.err("put", key, e))?
            .execute()
            .await;
        match sent {
            Ok(_) => Ok(true),
            Err(S3Error::HttpFailWithBody(412, _)) => Ok(false),
            Err(e) => Err(self.err("put", key, e)),
        }
    }

    /// One PUT when the object fits a part, else a multipart upload whose parts wait for room
    /// in the store's budget before they are read.
    async fn put_verified(
        &self,
        key: &str,
        reader: &mut (dyn AsyncRead + Unpin + Send),
        size_hint: Option<u64>,
        content_type: &str,
        metadata: &BTreeMap<String, String>,
        verdict: Verdict<'_>,
    ) -> Result<(), StoreError> {
        let full = self.full(key)?;
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
        let headers = self.headers_with(key, metadata)?;
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

    async fn get_with_meta(&self, key: &str) -> Result<(Vec<u8>, ObjectMeta), StoreError> {
        let full = self.full(key)?;
        let r = self
            .bucket
            .get_object(&full)
            .await
            .map_err(|e| self.err("get", key, e))?;
        let headers = r.headers();
        let data = r.to_vec();
        let meta = meta_from_headers(key, data.len() as u64, &headers);
        Ok((data, meta))
    }

    async fn get_bytes(&self, key: &str) -> Result<Vec<u8>, StoreError> {
        let full = self.full(key)?;
        let r = self
            .bucket
            .get_object(&full)
            .await
            .map_err(|e| self.err("get", key, e))?;
        Ok(r.to_vec())
    }

    async fn get_range(&self, key: &str, start: u64, end: u64) -> Result<Vec<u8>, StoreError> {
        let full = self.full(key)?;
        if end <= start {
            return Ok(vec![]);
        }
        let r = self
            .bucket
            .get_object_range(&full, start, Some(end - 1))
            .await
            .map_err(|e| self.err("get", key, e))?;
        super::whole_range(key, start, end, r.to_vec())
    }

    async fn get_into(
        &self,
        key: &str,
        range: Option<(u64, u64)>,
        writer: &mut (dyn AsyncWrite + Unpin + Send),
    ) -> Result<u64, StoreError> {
        let full = self.full(key)?;
        let mut n = 0u64;
        let mut counted = TapWriter::new(&mut *writer, |b: &[u8]| n += b.len() as u64);
        let got = match range {
            None => self.bucket.get_object_to_writer(&full, &mut counted).await,
            Some((start, end)) if end <= start => Ok(200),
            Some((start, end)) => {
                self.bucket
                    .get_object_range_to_writer(&full, start, Some(end - 1), &mut counted)
                    .await
            }
        };
        got.map_err(|e| self.err("get", key, e))?;
        // A tokio file writes from a background thread: the last chunk is only in it
        // once flushed, and callers read what they fetched right after.
        counted.flush().await.map_err(|e| StoreError::Transient {
            op: "get",
            key: key.to_string(),
            endpoint: self.endpoint.clone(),
            detail: format!("writing what was read: {e}"),
        })?;
        super::whole_stream(key, range, n)
    }

    async fn head_meta(&self, key: &str) -> Result<Option<ObjectMeta>, StoreError> {
        let full = self.full(key)?;
        let h = match self.bucket.head_object(&full).await {
            Ok((h, 200)) => h,
            Ok((_, 404)) => return Ok(None),
            Ok((_, code)) => {
                return Err(self.err("head", key, S3Error::HttpFailWithBody(code, String::new())))
            }
            Err(e) => {
                return match self.err("head", key, e) {
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

    async fn list_page(
        &self,
        prefix: &str,
        token: Option<String>,
        max: usize,
    ) -> Result<ListPage, StoreError> {
        let full = join_root(&self.root, prefix);
        let strip = join_root(&self.root, "");
        let (page, _) = self
            .bucket
            .list_page(full, None, token, None, Some(max))
            .await
            .map_err(|e| self.err("list", prefix, e))?;
        let objects = page
            .contents
            .into_iter()
            .map(|o| ObjectInfo {
                key: o.key.strip_prefix(&strip).unwrap_or(&o.key).to_string(),
                size: o.size,
                etag: o.e_tag.map(|e| e.trim_matches('"').to_string()),
            })
            .collect();
        let next = page.next_continuation_token.filter(|_| page.is_truncated);
        Ok(ListPage { objects, next })
    }

    async fn delete_batch(&self, keys: &[String]) -> Result<Vec<(String, StoreError)>, StoreError> {
        if keys.is_empty() {
            return Ok(vec![]);
        }
        let mut ids = Vec::with_capacity(keys.len());
        for k in keys {
            ids.push(s3::serde_types::ObjectIdentifier::new(self.full(k)?));
        }
        let strip = join_root(&self.root, "");
        let result = match self.bucket.delete_objects(ids).await {
            Ok(r) => r,
            // A server without DeleteObjects: one request a key.
            Err(S3Error::HttpFailWithBody(501, _)) => {
                let mut failed = vec![];
                for k in keys {
                    if let Err(e) = self.delete(k).await {
                        failed.push((k.clone(), e));
                    }
                }
                return Ok(failed);
            }
            Err(e) => return Err(self.err("delete", &keys[0], e)),
        };
        Ok(result
            .errors
            .into_iter()
            .map(|e| {
                let key = e.key.strip_prefix(&strip).unwrap_or(&e.key).to_string();
                let detail = format!("{}: {}", e.code, e.message);
                let err = match e.code.as_str() {
                    "InternalError" | "SlowDown" | "ServiceUnavailable" | "RequestTimeout" => {
                        StoreError::Transient {
                            op: "delete",
                            key: key.clone(),
                            endpoint: self.endpoint.clone(),
                            detail,
                        }
                    }
                    "AccessDenied" => StoreError::Denied {
                        op: "delete",
                        key: key.clone(),
                        endpoint: self.endpoint.clone(),
                        detail,
                    },
                    _ => StoreError::Fatal {
                        op: "delete",
                        key: key.clone(),
                        detail,
                    },
                };
                (key, err)
            })
            .collect())
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        let full = self.full(key)?;
        self.bucket
            .delete_object(&full)
            .await
            .map_err(|e| self.err("delete", key, e))?;
        Ok(())
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

/// The `Code` of an S3 XML error body, or the start of the body.
pub(super) fn s3_code(body: &str) -> String {
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
