//! Keys set aside on disk during one pass and acted on after it (the extras a restore deletes
//! once every copy is done; the blobs a prune's plan found unused), so that a pass over ten
//! million keys never holds its findings in memory.

use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::Path;

use futures::stream::{self, Stream, StreamExt};

/// An append-only list of (key, size) in a temporary file, removed when dropped.
#[derive(Debug)]
pub struct KeyLog {
    file: tempfile::NamedTempFile,
    writer: Option<BufWriter<std::fs::File>>,
    count: u64,
    bytes: u64,
}

impl KeyLog {
    pub fn new(parent: &Path) -> std::io::Result<KeyLog> {
        std::fs::create_dir_all(parent)?;
        let file = tempfile::Builder::new()
            .prefix("backup-agent-keys-")
            .tempfile_in(parent)?;
        let writer = Some(BufWriter::with_capacity(64 << 10, file.reopen()?));
        Ok(KeyLog {
            file,
            writer,
            count: 0,
            bytes: 0,
        })
    }

    /// A key may hold any character (newlines too): each record is a JSON line.
    pub fn push(&mut self, key: &str, size: u64) -> std::io::Result<()> {
        let w = self.writer.as_mut().expect("pushed after reading");
        serde_json::to_writer(&mut *w, &(key, size))?;
        w.write_all(b"\n")?;
        self.count += 1;
        self.bytes += size;
        Ok(())
    }

    pub fn len(&self) -> u64 {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Ends the writing: what was pushed can be read from now on.
    pub fn seal(&mut self) -> std::io::Result<()> {
        if let Some(mut w) = self.writer.take() {
            w.flush()?;
        }
        Ok(())
    }

    /// The keys in the order they were pushed, read a block at a time.
    pub fn read(
        &self,
    ) -> std::io::Result<impl Stream<Item = std::io::Result<(String, u64)>> + Send + Unpin + 'static>
    {
        assert!(self.writer.is_none(), "read before seal");
        let reader = BufReader::with_capacity(64 << 10, self.file.reopen()?);
        let lines = reader.lines();
        Ok(stream::iter(lines.map(|line| {
            let line = line?;
            serde_json::from_str::<(String, u64)>(&line).map_err(std::io::Error::other)
        }))
        .boxed())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::TryStreamExt;

    #[tokio::test]
    async fn keeps_any_key_in_order_and_goes_when_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = KeyLog::new(dir.path()).unwrap();
        let keys = ["a", "line\nbreak", "quote\"d", "ünï/数据"];
        for (i, k) in keys.iter().enumerate() {
            log.push(k, i as u64).unwrap();
        }
        log.seal().unwrap();
        assert_eq!((log.len(), log.bytes()), (4, 6));
        let back: Vec<(String, u64)> = log.read().unwrap().try_collect().await.unwrap();
        assert_eq!(back.iter().map(|b| b.0.as_str()).collect::<Vec<_>>(), keys);
        drop(log);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
