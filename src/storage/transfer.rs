//! One object copied from one store to another as a stream: the GET piped into the PUT, the
//! bytes hashed on the way, and the upload completed only when the GET ended well and what
//! arrived is what was expected (a cut stream would otherwise look like a shorter object).

use std::collections::BTreeMap;

use sha2::Digest;
use tokio::io::AsyncWriteExt;

use super::{Store, StoreError, TapWriter};

/// What the copied bytes must be, checked before the copy becomes visible.
#[derive(Debug, Clone, Default)]
pub struct Expect {
    pub size: Option<u64>,
    /// Hex sha256 of the whole object (a blob's name).
    pub sha256: Option<String>,
}

/// Copies `key` of `from` to `to_key` of `to` with the given headers; the bytes copied. An
/// object that does not match `expect` is never made visible at `to_key`.
pub async fn copy_object(
    from: &Store,
    key: &str,
    to: &Store,
    to_key: &str,
    content_type: &str,
    metadata: &BTreeMap<String, String>,
    expect: &Expect,
) -> Result<u64, StoreError> {
    let (w, r) = tokio::io::duplex(1 << 20);
    let (tx, rx) = tokio::sync::oneshot::channel::<Result<(u64, String), StoreError>>();
    let get = async {
        let mut hash = sha2::Sha256::new();
        let got = {
            let mut tap = TapWriter::new(w, |b: &[u8]| hash.update(b));
            let got = from.get_into(key, None, &mut tap).await;
            let _ = tap.inner.shutdown().await;
            got
        };
        let _ = tx.send(got.map(|n| (n, hex::encode(hash.finalize()))));
    };
    let copied = std::sync::atomic::AtomicU64::new(0);
    let put = async {
        // Owned here, so a failed upload drops the pipe's reader and ends the GET too.
        let mut r = r;
        let verdict = async {
            let (n, sha) = rx.await.map_err(|_| StoreError::Fatal {
                op: "get",
                key: key.to_string(),
                detail: "the read stopped".into(),
            })??;
            let wrong = |detail: String| StoreError::Fatal {
                op: "copy",
                key: key.to_string(),
                detail,
            };
            if let Some(want) = expect.size.filter(|w| *w != n) {
                return Err(wrong(format!("read {n} bytes, expected {want}")));
            }
            if let Some(want) = expect.sha256.as_ref().filter(|w| **w != sha) {
                return Err(wrong(format!(
                    "its content hashes to {sha}, not {want}: the source copy is damaged"
                )));
            }
            copied.store(n, std::sync::atomic::Ordering::Relaxed);
            Ok(())
        };
        to.put_object_verified(to_key, &mut r, expect.size, content_type, metadata, verdict)
            .await
    };
    let ((), sent) = tokio::join!(get, put);
    sent.map(|()| copied.load(std::sync::atomic::Ordering::Relaxed))
}
