//! Object storage: the backup destination (any S3: AWS, Ceph RGW, MinIO) or a local directory
//! with the same layout (an NFS mount, an air-gapped site). Keys are relative to the store's
//! root (`<bucket>/<path>/`); large objects move as streams, never whole in memory.
//!
//! [`ObjectStore`] is what a backend implements ([`s3`], [`local`]); [`Store`] is the handle
//! every command holds, cheap to clone, with the generic conveniences on top.

mod error;
mod listing;
pub mod local;
mod prefixed;
pub mod s3;
mod settings;
mod tap;
pub mod tls;
mod transfer;

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;

use serde::Serialize;
use tokio::io::{AsyncRead, AsyncWrite};

pub use error::StoreError;
pub use listing::{DeleteFailure, Deleter, ListingOrder};
pub use s3::{part_size, PARTS_IN_FLIGHT, PART_SIZE};
pub use settings::{S3Settings, Sse, UriStyle, SSE_HEADER, SSE_KMS_KEY_HEADER};
pub use tap::TapWriter;
pub use transfer::{copy_object, Expect};

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

/// Awaited after the last byte of an upload is read and before the object becomes visible.
pub type Verdict<'a> = Pin<Box<dyn Future<Output = Result<(), StoreError>> + Send + 'a>>;

/// What a storage backend does. Every method checks its key ([`check_key`]) first.
#[async_trait::async_trait]
pub trait ObjectStore: std::fmt::Debug + Send + Sync {
    /// Where this store is, for messages: `s3://bucket/path at endpoint` or a directory.
    fn describe(&self) -> String;

    /// Whether content types and user metadata are kept with the bytes (a local directory
    /// keeps only the bytes).
    fn keeps_metadata(&self) -> bool {
        true
    }

    /// `<bucket>/<path>` of the store's root on S3, as s3-integrator's `bucket` and `path`
    /// name it (what another S3 client, mysql-k8s, is pointed at); `None` elsewhere.
    fn location(&self) -> Option<String> {
        None
    }

    /// Writes a small object from memory.
    async fn put_bytes(&self, key: &str, data: &[u8], content_type: &str)
        -> Result<(), StoreError>;

    /// Writes a small object only if no object has the key (S3's `If-None-Match: *`); whether
    /// it was written. Two writers racing for one key: exactly one gets `true`.
    async fn put_bytes_if_absent(
        &self,
        key: &str,
        data: &[u8],
        content_type: &str,
    ) -> Result<bool, StoreError>;

    /// Writes an object from a stream, awaiting `verdict` after the last byte is read and before
    /// the object becomes visible: an error there (a hash that does not match, say) abandons the
    /// upload and leaves whatever the key held before. `size_hint` picks the part size of
    /// objects so large that S3's 10,000 parts would not do with [`PART_SIZE`]. User metadata
    /// (`x-amz-meta-*`) is kept where the backend can (a local directory keeps only the bytes).
    async fn put_verified(
        &self,
        key: &str,
        reader: &mut (dyn AsyncRead + Unpin + Send),
        size_hint: Option<u64>,
        content_type: &str,
        metadata: &BTreeMap<String, String>,
        verdict: Verdict<'_>,
    ) -> Result<(), StoreError>;

    /// Reads a whole object with its headers, in one request (no HEAD first).
    async fn get_with_meta(&self, key: &str) -> Result<(Vec<u8>, ObjectMeta), StoreError>;

    /// Reads a small object (a statefile, a manifest) into memory.
    async fn get_bytes(&self, key: &str) -> Result<Vec<u8>, StoreError>;

    /// Streams an object, or bytes `start..end` of it, into `writer` and flushes it; the bytes
    /// written. A range comes from one ranged GET, and fewer or more bytes than it asked for
    /// (a server that ignores `Range`) is an error.
    async fn get_into(
        &self,
        key: &str,
        range: Option<(u64, u64)>,
        writer: &mut (dyn AsyncWrite + Unpin + Send),
    ) -> Result<u64, StoreError>;

    /// Bytes `start..end` of an object, in one ranged GET: a blob inside a pack, or a pack's
    /// footer and trailer. An empty range asks nothing of the server.
    async fn get_range(&self, key: &str, start: u64, end: u64) -> Result<Vec<u8>, StoreError>;

    /// Headers of one object (content type, user metadata), or `None` when it does not exist.
    async fn head_meta(&self, key: &str) -> Result<Option<ObjectMeta>, StoreError>;

    /// Size and ETag of one object, or `None` when it does not exist.
    async fn head(&self, key: &str) -> Result<Option<ObjectInfo>, StoreError> {
        Ok(self.head_meta(key).await?.map(|m| m.info))
    }

    /// One page of at most `max` objects under `prefix`, in byte order of their keys, starting
    /// after the page that `token` (the previous page's [`ListPage::next`]) ended.
    async fn list_page(
        &self,
        prefix: &str,
        token: Option<String>,
        max: usize,
    ) -> Result<ListPage, StoreError>;

    /// Deletes an object; one that is not there is no error.
    async fn delete(&self, key: &str) -> Result<(), StoreError>;

    /// Deletes up to [`DELETE_BATCH_MAX`] objects, in one request where the backend has one
    /// (S3's DeleteObjects). `Err` when the request as a whole failed; otherwise the keys that
    /// were not deleted, each with why (the others are gone, or were never there).
    async fn delete_batch(&self, keys: &[String]) -> Result<Vec<(String, StoreError)>, StoreError> {
        let mut failed = vec![];
        for k in keys {
            if let Err(e) = self.delete(k).await {
                failed.push((k.clone(), e));
            }
        }
        Ok(failed)
    }
}

/// S3 deletes at most this many keys in one DeleteObjects request.
pub const DELETE_BATCH_MAX: usize = 1000;

/// One page of a listing.
#[derive(Debug, Clone, Default)]
pub struct ListPage {
    pub objects: Vec<ObjectInfo>,
    /// Where the next page starts; `None` after the last page.
    pub next: Option<String>,
}

/// Where backups go: a handle on one backend, shared by every task of a run.
#[derive(Debug, Clone)]
pub struct Store {
    backend: Arc<dyn ObjectStore>,
    /// Whether the server lists in byte order, once a listing has shown it.
    order: Arc<std::sync::atomic::AtomicU8>,
}

impl std::ops::Deref for Store {
    type Target = dyn ObjectStore;

    fn deref(&self) -> &Self::Target {
        &*self.backend
    }
}

impl Store {
    pub fn new(backend: impl ObjectStore + 'static) -> Store {
        Store {
            backend: Arc::new(backend),
            order: Default::default(),
        }
    }

    pub fn s3(s: &S3Settings) -> Result<Store, StoreError> {
        Ok(Store::new(s3::S3Store::new(s)?))
    }

    /// A local directory lists in byte order (each directory is read sorted).
    pub fn local(root: impl Into<PathBuf>) -> Store {
        let s = Store::new(local::LocalStore::new(root));
        s.set_order(ListingOrder::Bytes);
        s
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

    /// Writes an object with its headers: content type and user metadata.
    pub async fn put_object<R: AsyncRead + Unpin + Send>(
        &self,
        key: &str,
        reader: &mut R,
        content_type: &str,
        metadata: &BTreeMap<String, String>,
    ) -> Result<(), StoreError> {
        self.put_object_verified(key, reader, None, content_type, metadata, async { Ok(()) })
            .await
    }

    /// [`ObjectStore::put_verified`] for any reader and verdict.
    pub async fn put_object_verified<R, V>(
        &self,
        key: &str,
        reader: &mut R,
        size_hint: Option<u64>,
        content_type: &str,
        metadata: &BTreeMap<String, String>,
        verdict: V,
    ) -> Result<(), StoreError>
    where
        R: AsyncRead + Unpin + Send,
        V: Future<Output = Result<(), StoreError>> + Send,
    {
        self.backend
            .put_verified(
                key,
                reader,
                size_hint,
                content_type,
                metadata,
                Box::pin(verdict),
            )
            .await
    }

    /// Every object under a prefix known to be small (one backup's directory, a mysql-k8s
    /// backup): collected. A bucket or `blobs/` goes through [`Store::list_stream`] instead.
    pub async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, StoreError> {
        use futures::TryStreamExt;
        // Small by contract, so sorted here whatever order the server lists in.
        let mut all: Vec<ObjectInfo> = self.pages(prefix, DELETE_BATCH_MAX).try_collect().await?;
        all.sort_by(|a, b| a.key.as_bytes().cmp(b.key.as_bytes()));
        Ok(all)
    }

    /// Streams an object into `writer` (flushed when this returns); the bytes written.
    pub async fn get_stream<W: AsyncWrite + Unpin + Send>(
        &self,
        key: &str,
        writer: &mut W,
    ) -> Result<u64, StoreError> {
        self.backend.get_into(key, None, writer).await
    }

    /// Streams bytes `start..end` of an object into `writer` (flushed when this returns): a
    /// large blob inside its pack, without holding it in memory.
    pub async fn get_range_stream<W: AsyncWrite + Unpin + Send>(
        &self,
        key: &str,
        start: u64,
        end: u64,
        writer: &mut W,
    ) -> Result<u64, StoreError> {
        self.backend.get_into(key, Some((start, end)), writer).await
    }
}

/// `n` bytes streamed for `range`: exactly its length, or an error as [`whole_range`] says.
pub(crate) fn whole_stream(
    key: &str,
    range: Option<(u64, u64)>,
    n: u64,
) -> Result<u64, StoreError> {
    match range {
        Some((start, end)) if n != end.saturating_sub(start) => Err(StoreError::Fatal {
            op: "get",
            key: key.to_string(),
            detail: format!(
                "asked for bytes {start}..{end}, got {n}: the object is shorter, or the server ignored the range"
            ),
        }),
        _ => Ok(n),
    }
}

/// `got` if it is exactly bytes `start..end`: a range past the end of the object, or a server
/// that ignores `Range` and sends the whole object, is never taken for the range.
pub(crate) fn whole_range(
    key: &str,
    start: u64,
    end: u64,
    got: Vec<u8>,
) -> Result<Vec<u8>, StoreError> {
    if got.len() as u64 == end - start {
        return Ok(got);
    }
    Err(StoreError::Fatal {
        op: "get",
        key: key.to_string(),
        detail: format!("asked for bytes {start}..{end}, got {} bytes", got.len()),
    })
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

#[cfg(test)]
mod tests {
    use super::s3::s3_code;
    use super::*;
    use crate::secret::Secret;

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
