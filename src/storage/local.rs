//! A local directory with the repository's layout (an NFS mount, an air-gapped site): objects
//! are files, written through a temporary name and a rename so a reader never sees half of one.

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use super::{check_key, ObjectInfo, ObjectMeta, ObjectStore, StoreError, Verdict};

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

    fn walk(&self, prefix: &str) -> Result<Vec<ObjectInfo>, StoreError> {
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

#[async_trait::async_trait]
impl ObjectStore for LocalStore {
    fn describe(&self) -> String {
        self.root.display().to_string()
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

    async fn get_into(
        &self,
        key: &str,
        writer: &mut (dyn AsyncWrite + Unpin + Send),
    ) -> Result<u64, StoreError> {
        let mut f = tokio::fs::File::open(self.path(key)?)
            .await
            .map_err(|e| self.io_error("get", key, e))?;
        let n = tokio::io::copy(&mut f, writer)
            .await
            .map_err(|e| self.io_error("get", key, e))?;
        writer
            .flush()
            .await
            .map_err(|e| self.io_error("get", key, e))?;
        Ok(n)
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

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, StoreError> {
        self.walk(prefix)
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
