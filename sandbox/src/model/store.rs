//! The model file and its lock: every change is a read-settle-change-write under one
//! exclusive lock, so concurrent simulator processes never lose each other's writes.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use fs2::FileExt;

use super::{now_ms, Model};

/// The model file and its lock.
#[derive(Debug, Clone)]
pub struct ModelStore {
    path: PathBuf,
}

impl ModelStore {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        ModelStore { path: path.into() }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn lock(&self) -> Result<File> {
        let lock_path = self.path.with_extension("lock");
        let f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .with_context(|| format!("opening {}", lock_path.display()))?;
        f.lock_exclusive()
            .with_context(|| format!("locking {}", lock_path.display()))?;
        Ok(f)
    }

    fn load(&self) -> Result<Model> {
        let text = fs::read_to_string(&self.path).with_context(|| {
            format!(
                "reading the sandbox model {} (is the sandbox up?)",
                self.path.display()
            )
        })?;
        serde_json::from_str(&text)
            .with_context(|| format!("parsing the sandbox model {}", self.path.display()))
    }

    fn save(&self, model: &Model) -> Result<()> {
        let tmp = self.path.with_extension("json.tmp");
        let mut f = File::create(&tmp)?;
        f.write_all(&serde_json::to_vec_pretty(model)?)?;
        f.sync_all()?;
        fs::rename(&tmp, &self.path)?;
        Ok(())
    }

    /// The model as it is now.
    pub fn read(&self) -> Result<Model> {
        let _guard = self.lock()?;
        let mut m = self.load()?;
        m.settle(now_ms());
        Ok(m)
    }

    /// Changes the model under the lock; nothing is written when `f` fails.
    pub fn update<T>(&self, f: impl FnOnce(&mut Model) -> Result<T>) -> Result<T> {
        let _guard = self.lock()?;
        let mut m = self.load()?;
        m.settle(now_ms());
        let out = f(&mut m)?;
        self.save(&m)?;
        Ok(out)
    }

    pub fn create(&self, model: &Model) -> Result<()> {
        let _guard = self.lock()?;
        self.save(model)
    }
}
