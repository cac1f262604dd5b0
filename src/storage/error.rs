//! What can go wrong with object storage, classified: retry only what waiting can fix.

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
    /// The server listed `key` after `after`, which sorts later in byte order (SeaweedFS
    /// lists a folder's keys before its siblings like `a.txt`): the listing must be sorted.
    #[error("list {key}: listed after {after:?}, not in byte order")]
    Unsorted { key: String, after: String },
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
