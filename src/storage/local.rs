//! A local directory with the repository's layout (an NFS mount, an air-gapped site): objects
//! are files, written through a temporary name and a rename so a reader never sees half of one.

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use super::{check_key, ListPage, ObjectInfo, ObjectMeta, ObjectStore, StoreError, Verdict};

#[derive(Debug, Clone)]
pub struct LocalStore {
    root: PathBuf,
}

impl LocalStore {
    pub fn new(root: impl Into<PathBuf>) -> LocalStore {
        LocalStore { root: root.into() }
    }

    async fn stat(&self, key: &str) -> Result<Option<ObjectInfo>, StoreError> {
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

    /// Up to `max` files under `prefix` after `after`, in byte order of their keys: each
    /// directory is read sorted, and one whose keys all sort at or before `after` is skipped
    /// unread, so a page costs the directories on its path, not the whole tree.
    fn page(
        &self,
        prefix: &str,
        after: Option<&str>,
        max: usize,
    ) -> Result<Vec<ObjectInfo>, StoreError> {
        let mut out = vec![];
        self.visit(&self.root.clone(), "", prefix, after, max, &mut out)?;
        Ok(out)
    }

    /// Whether the page filled up.
    fn visit(
        &self,
        dir: &Path,
        rel: &str,
        prefix: &str,
        after: Option<&str>,
        max: usize,
        out: &mut Vec<ObjectInfo>,
    ) -> Result<bool, StoreError> {
        let rd = match std::fs::read_dir(dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(self.io_error("list", prefix, e)),
        };
        let mut entries = vec![];
        for entry in rd {
            let entry = entry.map_err(|e| self.io_error("list", prefix, e))?;
            let ft = entry
                .file_type()
                .map_err(|e| self.io_error("list", prefix, e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            // A directory sorts as its name and a slash: where its keys sort among the files.
            if ft.is_dir() {
                entries.push((format!("{rel}{name}/"), true, entry.path()));
            } else if ft.is_file() && !(name.starts_with('.') && name.ends_with(".partial")) {
                entries.push((format!("{rel}{name}"), false, entry.path()));
            }
        }
        entries.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
        for (key, is_dir, path) in entries {
            if is_dir {
                if !(key.starts_with(prefix) || prefix.starts_with(&key)) {
                    continue;
                }
                if after.is_some_and(|a| a > key.as_str() && !a.starts_with(&key)) {
                    continue;
                }
                if self.visit(&path, &key, prefix, after, max, out)? {
                    return Ok(true);
                }
            } else {
                if !key.starts_with(prefix) || after.is_some_and(|a| key.as_str() <= a) {
                    continue;
                }
                let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
                out.push(ObjectInfo {
                    key,
                    size,
                    etag: None,
                });
                if out.len() >= max {
                    return Ok(true);
                }
            }
        }
        Ok(false)
    }
}

#[async_trait::async_trait]
impl ObjectStore for LocalStore {
    fn describe(&self) -> String {
        self.root.display().to_string()
    }

    fn keeps_metadata(&self) -> bool {
        false
    }

    async fn put_bytes(
        &self,
        key: &str,
        data: &[u8],
        content_type: &str,
    ) -> Result<(), StoreError> {
        let mut r = data;
        let ok = Box::pin(async { Ok(()) });
        self.put_verified(key, &mut r, None, content_type, &BTreeMap::new(), ok)
            .await
    }

    async fn put_bytes_if_absent(
        &self,
        key: &str,
        data: &[u8],
        _content_type: &str,
    ) -> Result<bool, StoreError> {
        let path = self.path(key)?;
        let tmp = path.with_file_name(format!(".{}.new", rand::random::<u64>()));
        if let Some(dir) = path.parent() {
            tokio::fs::create_dir_all(dir)
                .await
                .map_err(|e| self.io_error("put", key, e))?;
        }
        tokio::fs::write(&tmp, data)
            .await
            .map_err(|e| self.io_error("put", key, e))?;
        // A hard link fails if the name exists: the create-if-absent the kernel keeps.
        let linked = tokio::fs::hard_link(&tmp, &path).await;
        let _ = tokio::fs::remove_file(&tmp).await;
        match linked {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(self.io_error("put", key, e)),
        }
    }

    /// Writes through a temporary file and a rename: a reader never sees half an object, nor
    /// one whose `verdict` failed.
    async fn put_verified(
        &self,
        key: &str,
        reader: &mut (dyn AsyncRead + Unpin + Send),
        _size_hint: Option<u64>,
        _content_type: &str,
        _metadata: &BTreeMap<String, String>,
        verdict: Verdict<'_>,
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

    async fn get_with_meta(&self, key: &str) -> Result<(Vec<u8>, ObjectMeta), StoreError> {
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

    async fn get_bytes(&self, key: &str) -> Result<Vec<u8>, StoreError> {
        tokio::fs::read(self.path(key)?)
            .await
            .map_err(|e| self.io_error("get", key, e))
    }

    async fn get_range(&self, key: &str, start: u64, end: u64) -> Result<Vec<u8>, StoreError> {
        use tokio::io::{AsyncReadExt, AsyncSeekExt};
        let path = self.path(key)?;
        if end <= start {
            return Ok(vec![]);
        }
        let io = |e| self.io_error("get", key, e);
        let mut f = tokio::fs::File::open(&path).await.map_err(io)?;
        f.seek(std::io::SeekFrom::Start(start)).await.map_err(io)?;
        // Capacity from the range only up to a bound: a damaged range is an error, not an abort.
        let mut buf = Vec::with_capacity((end - start).min(8 << 20) as usize);
        f.take(end - start)
            .read_to_end(&mut buf)
            .await
            .map_err(io)?;
        super::whole_range(key, start, end, buf)
    }

    async fn get_into(
        &self,
        key: &str,
        range: Option<(u64, u64)>,
        writer: &mut (dyn AsyncWrite + Unpin + Send),
    ) -> Result<u64, StoreError> {
        use tokio::io::{AsyncReadExt, AsyncSeekExt};
        let mut f = tokio::fs::File::open(self.path(key)?)
            .await
            .map_err(|e| self.io_error("get", key, e))?;
        let n = match range {
            None => tokio::io::copy(&mut f, writer).await,
            Some((start, end)) => match f.seek(std::io::SeekFrom::Start(start)).await {
                Ok(_) => tokio::io::copy(&mut f.take(end.saturating_sub(start)), writer).await,
                Err(e) => Err(e),
            },
        }
        .map_err(|e| self.io_error("get", key, e))?;
        writer
            .flush()
            .await
            .map_err(|e| self.io_error("get", key, e))?;
        super::whole_stream(key, range, n)
    }

    async fn head_meta(&self, key: &str) -> Result<Option<ObjectMeta>, StoreError> {
        Ok(self.stat(key).await?.map(|info| ObjectMeta {
            info,
            content_type: "application/octet-stream".into(),
            metadata: Default::default(),
        }))
    }

    async fn head(&self, key: &str) -> Result<Option<ObjectInfo>, StoreError> {
        self.stat(key).await
    }

    async fn list_page(
        &self,
        prefix: &str,
        token: Option<String>,
        max: usize,
    ) -> Result<ListPage, StoreError> {
        let (me, prefix) = (self.clone(), prefix.to_string());
        let objects =
            tokio::task::spawn_blocking(move || me.page(&prefix, token.as_deref(), max.max(1)))
                .await
                .expect("listing task")?;
        let next = (objects.len() >= max.max(1))
            .then(|| objects.last().map(|o| o.key.clone()))
            .flatten();
        Ok(ListPage { objects, next })
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        match tokio::fs::remove_file(self.path(key)?).await {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(self.io_error("delete", key, e))
            }
            _ => Ok(()),
        }
    }
}
