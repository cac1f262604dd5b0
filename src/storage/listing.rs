//! A bucket as a stream and deletes in batches: what lets every command walk millions of keys
//! with memory that does not grow with them.
//!
//! A listing is fetched a page at a time (S3's ListObjectsV2, at most 1000 keys a page), one
//! page ahead of its reader, so at most three pages are in memory whatever the bucket holds.
//!
//! Every merge-join downstream needs keys in byte order. AWS S3, MinIO and Ceph list that way;
//! SeaweedFS lists a folder's keys where the folder's name sorts (`a/b/c` before `a/b.d`,
//! `a-c/z` before `a.txt`). The first listing of a store tells which kind it is (an inversion
//! anywhere shows as one between neighbours); a store that does not list in byte order has its
//! listings sorted on the way, by an external sort that spills to disk past its memory budget.

use std::io::{Read, Write};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use futures::stream::{self, Stream, StreamExt, TryStreamExt};

use super::{ObjectInfo, Store, StoreError, DELETE_BATCH_MAX};
use crate::retry::{retry, ATTEMPTS};
use crate::sorted::Sorter;
use crate::sorted::Streaming;

/// How a store's server orders its listings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListingOrder {
    /// No listing has shown it yet.
    Unknown = 0,
    Bytes = 1,
    /// Anything else: listings are sorted on the way.
    Other = 2,
}

impl Store {
    pub fn listing_order(&self) -> ListingOrder {
        match self.order.load(Ordering::Relaxed) {
            1 => ListingOrder::Bytes,
            2 => ListingOrder::Other,
            _ => ListingOrder::Unknown,
        }
    }

    pub(super) fn set_order(&self, o: ListingOrder) {
        self.order.store(o as u8, Ordering::Relaxed);
    }

    /// Settles the store's listing order before a run that cannot start over once it has
    /// begun (a capture, a restore): an order not known yet is taken as unsorted, so the
    /// run's listing goes through the external sort. Sorting one listing on local disk costs
    /// far less than a second pass over the network to find out (at a million keys, 155 s of
    /// listing on SeaweedFS). A run that can start over calls [`Store::sorted_listing`] and
    /// starts over on [`StoreError::Unsorted`].
    pub fn settle_order(&self) -> ListingOrder {
        if self.listing_order() == ListingOrder::Unknown {
            self.set_order(ListingOrder::Other);
        }
        self.listing_order()
    }

    /// Every object under `prefix` in byte order of their keys, whatever the server's order.
    /// While the order is unknown the listing streams as it comes and an inversion ends it with
    /// [`StoreError::Unsorted`] (after which the store is known to need sorting: call again).
    pub fn sorted_listing(
        &self,
        prefix: &str,
        streaming: &Streaming,
        scratch: &Path,
    ) -> impl Stream<Item = Result<ObjectInfo, StoreError>> + Send + Unpin + 'static {
        if self.listing_order() != ListingOrder::Other {
            return self.list_stream(prefix, streaming.page_size).left_stream();
        }
        let (store, prefix, scratch, budget) = (
            self.clone(),
            prefix.to_string(),
            scratch.to_path_buf(),
            streaming.sort_memory,
        );
        let page_size = streaming.page_size;
        let sorted = async move {
            let mut sorter: Sorter<ObjectInfo> = Sorter::with(&scratch, budget, false);
            let mut raw = store.pages(&prefix, page_size);
            while let Some(o) = raw.next().await {
                sorter.push(o?).await.map_err(|e| sort_error(&prefix, e))?;
            }
            let out = sorter.finish().await.map_err(|e| sort_error(&prefix, e))?;
            let p = prefix.clone();
            Ok::<_, StoreError>(out.map_err(move |e| sort_error(&p, e)))
        };
        Box::pin(stream::once(sorted).try_flatten()).right_stream()
    }

    /// Every object under `prefix`, in byte order of their keys, `page_size` keys a request.
    /// A key out of order ends the listing with [`StoreError::Unsorted`], and marks the store
    /// as one whose listings must be sorted; a listing that ends in order marks it as one that
    /// lists in byte order.
    pub fn list_stream(
        &self,
        prefix: &str,
        page_size: usize,
    ) -> impl Stream<Item = Result<ObjectInfo, StoreError>> + Send + Unpin + 'static {
        let store = self.clone();
        let mut last: Option<String> = None;
        let mut failed = false;
        // An empty or one-key listing is in order whatever the server: it proves nothing.
        let seen = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let counted = seen.clone();
        let checked = self.pages(prefix, page_size).map(move |item| {
            let o = item?;
            counted.fetch_add(1, Ordering::Relaxed);
            if let Some(prev) = &last {
                if o.key.as_bytes() <= prev.as_bytes() {
                    store.set_order(ListingOrder::Other);
                    return Err(StoreError::Unsorted {
                        key: o.key.clone(),
                        after: prev.clone(),
                    });
                }
            }
            last = Some(o.key.clone());
            Ok(o)
        });
        let store = self.clone();
        // A listing that ends after an error proves nothing about the order.
        let ended_well = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        let seen_error = ended_well.clone();
        Box::pin(
            checked
                // Nothing after the first error: a merge must not go on past a gap.
                .take_while(move |r| {
                    let go = !failed;
                    failed |= r.is_err();
                    futures::future::ready(go)
                })
                .inspect(move |r| {
                    if r.is_err() {
                        seen_error.store(false, Ordering::Relaxed);
                    }
                })
                // Reached only once the listing ended: an unbroken one proves the order.
                .chain(
                    stream::once(async move {
                        if ended_well.load(Ordering::Relaxed)
                            && seen.load(Ordering::Relaxed) > 1
                            && store.listing_order() == ListingOrder::Unknown
                        {
                            store.set_order(ListingOrder::Bytes);
                        }
                    })
                    .filter_map(|()| futures::future::ready(None)),
                ),
        )
    }

    /// Every object under `prefix` in whatever order the server lists them, `page_size` keys a
    /// request: for work that needs no order (deleting everything under a prefix).
    pub fn list_unordered(
        &self,
        prefix: &str,
        page_size: usize,
    ) -> impl Stream<Item = Result<ObjectInfo, StoreError>> + Send + Unpin + 'static {
        self.pages(prefix, page_size)
    }

    /// The raw listing, pages fetched one ahead of the reader, in the server's order.
    pub(super) fn pages(
        &self,
        prefix: &str,
        page_size: usize,
    ) -> impl Stream<Item = Result<ObjectInfo, StoreError>> + Send + Unpin + 'static {
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Vec<ObjectInfo>, StoreError>>(1);
        let (store, prefix) = (self.clone(), prefix.to_string());
        let page_size = page_size.clamp(1, DELETE_BATCH_MAX);
        tokio::spawn(async move {
            let mut token: Option<String> = None;
            loop {
                let got = retry(ATTEMPTS, &format!("listing {prefix}"), || {
                    store.list_page(&prefix, token.clone(), page_size)
                })
                .await;
                let (page, next) = match got {
                    Ok(p) => (Ok(p.objects), p.next),
                    Err(e) => (Err(e), None),
                };
                let last = page.is_err() || next.is_none();
                // The reader went away: stop listing.
                if tx.send(page).await.is_err() || last {
                    return;
                }
                token = next;
            }
        });
        let pages = stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|p| (p, rx)) });
        Box::pin(pages.flat_map(|page| match page {
            Ok(objects) => stream::iter(objects.into_iter().map(Ok).collect::<Vec<_>>()),
            Err(e) => stream::iter(vec![Err(e)]),
        }))
    }
}

/// Listed objects, sorted by key: `len key | size | len etag` (a length of `u32::MAX` for no
/// ETag).
impl crate::sorted::Record for ObjectInfo {
    fn write_to(&self, w: &mut impl Write) -> std::io::Result<()> {
        w.write_all(&(self.key.len() as u32).to_le_bytes())?;
        w.write_all(self.key.as_bytes())?;
        w.write_all(&self.size.to_le_bytes())?;
        match &self.etag {
            Some(e) => {
                w.write_all(&(e.len() as u32).to_le_bytes())?;
                w.write_all(e.as_bytes())
            }
            None => w.write_all(&u32::MAX.to_le_bytes()),
        }
    }

    fn read_from(r: &mut impl Read) -> std::io::Result<Option<Self>> {
        let mut n = [0u8; 4];
        if !crate::sorted::read_or_end(r, &mut n)? {
            return Ok(None);
        }
        let text = |r: &mut dyn Read, len: u32| -> std::io::Result<String> {
            let mut b = vec![0u8; len as usize];
            r.read_exact(&mut b)?;
            String::from_utf8(b).map_err(std::io::Error::other)
        };
        let key = text(r, u32::from_le_bytes(n))?;
        let mut size = [0u8; 8];
        r.read_exact(&mut size)?;
        r.read_exact(&mut n)?;
        let etag = match u32::from_le_bytes(n) {
            u32::MAX => None,
            len => Some(text(r, len)?),
        };
        Ok(Some(ObjectInfo {
            key,
            size: u64::from_le_bytes(size),
            etag,
        }))
    }

    fn footprint(&self) -> usize {
        std::mem::size_of::<ObjectInfo>()
            + self.key.len()
            + self.etag.as_ref().map_or(0, String::len)
    }
}

impl PartialOrd for ObjectInfo {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

/// By key, in byte order: how S3 lists, and how manifests are sorted.
impl Ord for ObjectInfo {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.key
            .as_bytes()
            .cmp(other.key.as_bytes())
            .then(self.size.cmp(&other.size))
            .then(self.etag.cmp(&other.etag))
    }
}

impl crate::sorted::Keyed for ObjectInfo {
    type Key = [u8];
    fn key(&self) -> &[u8] {
        self.key.as_bytes()
    }
}

fn sort_error(prefix: &str, e: std::io::Error) -> StoreError {
    StoreError::Fatal {
        op: "sort",
        key: prefix.to_string(),
        detail: format!(
            "sorting the listing on local disk: {e} (pass --spool DIR on a disk with room)"
        ),
    }
}

/// Keys that could not be deleted after every attempt.
#[derive(Debug, thiserror::Error)]
#[error("{count} object(s) could not be deleted, for example {key}: {why}")]
pub struct DeleteFailure {
    pub count: usize,
    pub key: String,
    pub why: String,
}

/// Deletes keys in batches of up to 1000 (one DeleteObjects request each on S3), retrying the
/// keys a batch reports as failed; memory holds one batch.
pub struct Deleter {
    store: Store,
    batch: usize,
    attempts: u32,
    pending: Vec<String>,
    deleted: AtomicU64,
}

impl Deleter {
    pub fn new(store: &Store, batch: usize) -> Deleter {
        let batch = batch.clamp(1, DELETE_BATCH_MAX);
        Deleter {
            store: store.clone(),
            batch,
            attempts: ATTEMPTS,
            pending: Vec::with_capacity(batch),
            deleted: AtomicU64::new(0),
        }
    }

    /// Tries of each batch (the keys a batch reports failed are tried again in the next).
    pub fn attempts(mut self, n: u32) -> Deleter {
        self.attempts = n.max(1);
        self
    }

    /// Queues a key; a full batch is deleted before this returns.
    pub async fn push(&mut self, key: String) -> Result<(), DeleteFailure> {
        self.pending.push(key);
        if self.pending.len() >= self.batch {
            self.flush().await?;
        }
        Ok(())
    }

    /// Deletes what is queued; the keys deleted in all.
    pub async fn finish(mut self) -> Result<u64, DeleteFailure> {
        self.flush().await?;
        Ok(self.deleted.into_inner())
    }

    /// Keys deleted so far.
    pub fn deleted(&self) -> u64 {
        self.deleted.load(Ordering::Relaxed)
    }

    async fn flush(&mut self) -> Result<(), DeleteFailure> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let remaining = std::sync::Mutex::new(std::mem::take(&mut self.pending));
        let what = "deleting a batch".to_string();
        let done = retry(self.attempts, &what, || async {
            let keys = remaining.lock().expect("remaining").clone();
            let failed = self.store.delete_batch(&keys).await?;
            self.deleted
                .fetch_add((keys.len() - failed.len()) as u64, Ordering::Relaxed);
            let Some(first) = failed.iter().position(|(_, e)| !e.is_retryable()).or(
                // Every failure is worth another try: keep the first as the reason.
                (!failed.is_empty()).then_some(0),
            ) else {
                return Ok(());
            };
            let count = failed.len();
            let keys: Vec<String> = failed.iter().map(|(k, _)| k.clone()).collect();
            let (key, e) = failed.into_iter().nth(first).expect("index in range");
            *remaining.lock().expect("remaining") = keys;
            Err(match e {
                StoreError::Transient {
                    op,
                    endpoint,
                    detail,
                    ..
                } => StoreError::Transient {
                    op,
                    key,
                    endpoint,
                    detail: format!("{detail} ({count} key(s) of the batch failed)"),
                },
                other => other,
            })
        })
        .await;
        done.map_err(|e| {
            let left = remaining.into_inner().expect("remaining");
            DeleteFailure {
                count: left.len().max(1),
                key: left.first().cloned().unwrap_or_default(),
                why: e.to_string(),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::TryStreamExt;

    #[tokio::test]
    async fn sorts_listed_objects_by_key_bytes_through_runs() {
        let parent = tempfile::tempdir().unwrap();
        let mut s: Sorter<ObjectInfo> = Sorter::with(parent.path(), 300, false);
        // SeaweedFS's order: a folder's keys before its siblings that sort before a slash.
        let keys = [
            "A", "a", "a/b", "a/b/c", "a/b.d", "a b", "a-c", "a-c/z", "a.txt", "a0", "ü",
        ];
        for (i, k) in keys.iter().enumerate() {
            let etag = (i % 2 == 0).then(|| format!("etag-{i}"));
            s.push(ObjectInfo {
                key: k.to_string(),
                size: i as u64,
                etag,
            })
            .await
            .unwrap();
        }
        assert!(s.runs() >= 2, "{} runs", s.runs());
        let out: Vec<ObjectInfo> = s.finish().await.unwrap().try_collect().await.unwrap();
        let mut want: Vec<&str> = keys.to_vec();
        want.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
        assert_eq!(out.iter().map(|o| o.key.as_str()).collect::<Vec<_>>(), want);
        let a_txt = out.iter().find(|o| o.key == "a.txt").unwrap();
        assert_eq!((a_txt.size, a_txt.etag.as_deref()), (8, Some("etag-8")));
        assert_eq!(std::fs::read_dir(parent.path()).unwrap().count(), 0);
    }
}
