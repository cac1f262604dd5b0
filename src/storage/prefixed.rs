//! A store seen through a key prefix: a restore drill writes its scratch copy of the bucket
//! under one prefix of the repository, and the restore code must see there a bucket of its
//! own (keys without the prefix, listings of only what is under it).

use std::collections::BTreeMap;

use async_trait::async_trait;
use tokio::io::{AsyncRead, AsyncWrite};

use super::{check_key, ListPage, ObjectMeta, ObjectStore, Store, StoreError, Verdict};

#[derive(Debug)]
struct Prefixed {
    inner: Store,
    /// Ends with `/`.
    prefix: String,
}

impl Prefixed {
    fn full(&self, key: &str) -> Result<String, StoreError> {
        check_key(key)?;
        Ok(format!("{}{key}", self.prefix))
    }

    fn strip(&self, mut e: StoreError) -> StoreError {
        // Messages name the key the caller knows, followed by where the store is.
        if let StoreError::NotFound { key }
        | StoreError::Fatal { key, .. }
        | StoreError::Denied { key, .. }
        | StoreError::Transient { key, .. }
        | StoreError::Unsorted { key, .. } = &mut e
        {
            if let Some(k) = key.strip_prefix(&self.prefix) {
                *key = k.to_string();
            }
        }
        e
    }
}

impl Store {
    /// This store's objects under `prefix` (a `/` is added when missing), as a store of their
    /// own: keys relative to the prefix, listings of only what it holds.
    pub fn under(&self, prefix: &str) -> Result<Store, StoreError> {
        let p = prefix.trim_matches('/');
        check_key(p)?;
        let s = Store::new(Prefixed {
            inner: self.clone(),
            prefix: format!("{p}/"),
        });
        s.set_order(self.listing_order());
        Ok(s)
    }
}

#[async_trait]
impl ObjectStore for Prefixed {
    fn describe(&self) -> String {
        format!("{} under {}", self.inner.describe(), self.prefix)
    }

    fn keeps_metadata(&self) -> bool {
        self.inner.keeps_metadata()
    }

    fn location(&self) -> Option<String> {
        let p = self.prefix.trim_end_matches('/');
        self.inner.location().map(|l| {
            if l.is_empty() {
                p.to_string()
            } else {
                format!("{}/{p}", l.trim_end_matches('/'))
            }
        })
    }

    async fn put_bytes(
        &self,
        key: &str,
        data: &[u8],
        content_type: &str,
    ) -> Result<(), StoreError> {
        let k = self.full(key)?;
        self.inner
            .put_bytes(&k, data, content_type)
            .await
            .map_err(|e| self.strip(e))
    }

    async fn put_bytes_if_absent(
        &self,
        key: &str,
        data: &[u8],
        content_type: &str,
    ) -> Result<bool, StoreError> {
        let k = self.full(key)?;
        self.inner
            .put_bytes_if_absent(&k, data, content_type)
            .await
            .map_err(|e| self.strip(e))
    }

    async fn put_verified(
        &self,
        key: &str,
        reader: &mut (dyn AsyncRead + Unpin + Send),
        size_hint: Option<u64>,
        content_type: &str,
        metadata: &BTreeMap<String, String>,
        verdict: Verdict<'_>,
    ) -> Result<(), StoreError> {
        let k = self.full(key)?;
        self.inner
            .backend
            .put_verified(&k, reader, size_hint, content_type, metadata, verdict)
            .await
            .map_err(|e| self.strip(e))
    }

    async fn get_with_meta(&self, key: &str) -> Result<(Vec<u8>, ObjectMeta), StoreError> {
        let k = self.full(key)?;
        let (bytes, mut meta) = self
            .inner
            .get_with_meta(&k)
            .await
            .map_err(|e| self.strip(e))?;
        meta.info.key = key.to_string();
        Ok((bytes, meta))
    }

    async fn get_bytes(&self, key: &str) -> Result<Vec<u8>, StoreError> {
        let k = self.full(key)?;
        self.inner.get_bytes(&k).await.map_err(|e| self.strip(e))
    }

    async fn get_into(
        &self,
        key: &str,
        range: Option<(u64, u64)>,
        writer: &mut (dyn AsyncWrite + Unpin + Send),
    ) -> Result<u64, StoreError> {
        let k = self.full(key)?;
        self.inner
            .get_into(&k, range, writer)
            .await
            .map_err(|e| self.strip(e))
    }

    async fn get_range(&self, key: &str, start: u64, end: u64) -> Result<Vec<u8>, StoreError> {
        let k = self.full(key)?;
        self.inner
            .get_range(&k, start, end)
            .await
            .map_err(|e| self.strip(e))
    }

    async fn head_meta(&self, key: &str) -> Result<Option<ObjectMeta>, StoreError> {
        let k = self.full(key)?;
        let meta = self.inner.head_meta(&k).await.map_err(|e| self.strip(e))?;
        Ok(meta.map(|mut m| {
            m.info.key = key.to_string();
            m
        }))
    }

    async fn list_page(
        &self,
        prefix: &str,
        token: Option<String>,
        max: usize,
    ) -> Result<ListPage, StoreError> {
        let mut page = self
            .inner
            .list_page(&format!("{}{prefix}", self.prefix), token, max)
            .await
            .map_err(|e| self.strip(e))?;
        for o in &mut page.objects {
            if let Some(k) = o.key.strip_prefix(&self.prefix) {
                o.key = k.to_string();
            }
        }
        Ok(page)
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        let k = self.full(key)?;
        self.inner.delete(&k).await.map_err(|e| self.strip(e))
    }

    async fn delete_batch(&self, keys: &[String]) -> Result<Vec<(String, StoreError)>, StoreError> {
        let full: Vec<String> = keys
            .iter()
            .map(|k| self.full(k))
            .collect::<Result<_, _>>()?;
        let failed = self.inner.delete_batch(&full).await?;
        Ok(failed
            .into_iter()
            .map(|(k, e)| {
                let k = k.strip_prefix(&self.prefix).unwrap_or(&k).to_string();
                (k, self.strip(e))
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_prefixed_store_sees_only_its_prefix_and_names_its_own_keys() {
        let dir = tempfile::tempdir().unwrap();
        let root = Store::local(dir.path());
        root.put_bytes("outside", b"x", "text/plain").await.unwrap();
        root.put_bytes("drills/a/kept", b"y", "text/plain")
            .await
            .unwrap();
        let s = root.under("drills/a").unwrap();
        s.put_bytes("p/q", b"zz", "text/plain").await.unwrap();
        assert_eq!(root.get_bytes("drills/a/p/q").await.unwrap(), b"zz");
        let keys: Vec<String> = s
            .list("")
            .await
            .unwrap()
            .into_iter()
            .map(|o| o.key)
            .collect();
        assert_eq!(keys, ["kept", "p/q"]);
        assert_eq!(s.head("p/q").await.unwrap().unwrap().key, "p/q");
        let e = s.get_bytes("missing").await.unwrap_err().to_string();
        assert!(
            e.contains("missing") && !e.contains("drills/a/missing"),
            "{e}"
        );
        assert!(s.get_bytes("../outside").await.is_err(), "no way out");
        assert!(root.under("../x").is_err());
        let failed = s
            .delete_batch(&["kept".into(), "p/q".into()])
            .await
            .unwrap();
        assert!(failed.is_empty());
        assert!(s.list("").await.unwrap().is_empty());
        assert_eq!(root.get_bytes("outside").await.unwrap(), b"x");
    }
}
