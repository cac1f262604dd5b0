//! An external sort with bounded memory, for what must be in order but does not arrive so: a
//! manifest's content hashes (sorted by object key, needed in the order of the `blobs/`
//! listing), and the listing of a server that does not list in byte order. Records are sorted
//! in memory up to a byte budget; past that each full buffer is written to disk as a sorted
//! run, and the runs are merged (k-way, groups first when there are many) at the end.

use std::collections::BinaryHeap;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use futures::stream::{self, Stream, StreamExt};

/// What an external sort can sort: ordered, written to and read back from a run file.
pub trait Record: Ord + Clone + Send + Sized + 'static {
    fn write_to(&self, w: &mut impl Write) -> std::io::Result<()>;
    /// The next record, or `None` at the end of the run.
    fn read_from(r: &mut impl Read) -> std::io::Result<Option<Self>>;
    /// Bytes it takes in memory, for the budget.
    fn footprint(&self) -> usize;
    /// Records that are the same thing (kept once when the sort dedups).
    fn same(&self, other: &Self) -> bool {
        self == other
    }
}

/// A content hash and the size of its content: one blob of the repository.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Hash {
    pub sha256: [u8; 32],
    pub size: u64,
}

impl Hash {
    const LEN: usize = 40;

    /// From 64 lowercase hex digits (nothing else: hashes become object keys).
    pub fn parse(hex_sha: &str, size: u64) -> Option<Hash> {
        let lower_hex = |b: u8| b.is_ascii_digit() || (b'a'..=b'f').contains(&b);
        if hex_sha.len() != 64 || !hex_sha.bytes().all(lower_hex) {
            return None;
        }
        let mut sha256 = [0u8; 32];
        hex::decode_to_slice(hex_sha, &mut sha256).ok()?;
        Some(Hash { sha256, size })
    }

    pub fn hex(&self) -> String {
        hex::encode(self.sha256)
    }
}

impl Record for Hash {
    fn write_to(&self, w: &mut impl Write) -> std::io::Result<()> {
        w.write_all(&self.sha256)?;
        w.write_all(&self.size.to_le_bytes())
    }

    fn read_from(r: &mut impl Read) -> std::io::Result<Option<Self>> {
        let mut b = [0u8; Hash::LEN];
        if !read_or_end(r, &mut b)? {
            return Ok(None);
        }
        let mut sha256 = [0u8; 32];
        sha256.copy_from_slice(&b[..32]);
        Ok(Some(Hash {
            sha256,
            size: u64::from_le_bytes(b[32..].try_into().expect("8 bytes")),
        }))
    }

    fn footprint(&self) -> usize {
        Hash::LEN
    }

    /// One content is one blob, whatever size a record claims.
    fn same(&self, other: &Self) -> bool {
        self.sha256 == other.sha256
    }
}

/// Fills `buf`, or says the run ended cleanly before its first byte.
pub fn read_or_end(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<bool> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..])? {
            0 if got == 0 => return Ok(false),
            0 => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "a sorted run ends inside a record",
                ))
            }
            n => got += n,
        }
    }
    Ok(true)
}

impl super::Keyed for Hash {
    type Key = [u8; 32];
    fn key(&self) -> &[u8; 32] {
        &self.sha256
    }
}

/// Runs merged at once; more are first merged in groups (file handles stay few).
const FAN_IN: usize = 64;
/// Records sent from the merging thread to the stream at a time.
const BATCH: usize = 1024;

/// Content hashes sorted and made unique.
pub type HashSorter = Sorter<Hash>;

/// Collects records; [`Sorter::finish`] gives them back sorted (each once, if it dedups).
pub struct Sorter<R: Record> {
    buffer: Vec<R>,
    held: usize,
    budget: usize,
    dedup: bool,
    parent: PathBuf,
    dir: Option<tempfile::TempDir>,
    runs: Vec<PathBuf>,
}

impl Sorter<Hash> {
    /// Hashes, each once.
    pub fn new(parent: &Path, budget: usize) -> Sorter<Hash> {
        Sorter::with(parent, budget, true)
    }
}

impl<R: Record> Sorter<R> {
    /// Sorts in memory up to `budget` bytes of records at a time; runs go to a new temporary
    /// directory under `parent`, removed when the sorted stream ends or is dropped (or this
    /// sorter is).
    pub fn with(parent: &Path, budget: usize, dedup: bool) -> Sorter<R> {
        Sorter {
            buffer: Vec::new(),
            held: 0,
            budget: budget.max(1),
            dedup,
            parent: parent.to_path_buf(),
            dir: None,
            runs: vec![],
        }
    }

    pub async fn push(&mut self, r: R) -> std::io::Result<()> {
        self.held += r.footprint() + std::mem::size_of::<R>();
        self.buffer.push(r);
        if self.held >= self.budget && self.buffer.len() >= 2 {
            self.spill().await?;
        }
        Ok(())
    }

    /// Sorted runs written to disk so far.
    pub fn runs(&self) -> usize {
        self.runs.len()
    }

    async fn spill(&mut self) -> std::io::Result<()> {
        if self.dir.is_none() {
            std::fs::create_dir_all(&self.parent)?;
            self.dir = Some(
                tempfile::Builder::new()
                    .prefix("backup-agent-sort-")
                    .tempdir_in(&self.parent)?,
            );
        }
        let path = self
            .dir
            .as_ref()
            .expect("made above")
            .path()
            .join(format!("run-{}", self.runs.len()));
        let mut run = std::mem::take(&mut self.buffer);
        self.held = 0;
        let (p, dedup) = (path.clone(), self.dedup);
        tokio::task::spawn_blocking(move || {
            run.sort_unstable();
            if dedup {
                run.dedup_by(|a, b| a.same(b));
            }
            write_run(&p, run.into_iter().map(Ok))
        })
        .await
        .expect("sort task")?;
        self.runs.push(path);
        Ok(())
    }

    /// Every record pushed, sorted (each once if this sorter dedups).
    pub async fn finish(
        mut self,
    ) -> std::io::Result<impl Stream<Item = std::io::Result<R>> + Send + Unpin + 'static> {
        let dedup = self.dedup;
        if self.runs.is_empty() {
            let mut all = std::mem::take(&mut self.buffer);
            all.sort_unstable();
            if dedup {
                all.dedup_by(|a, b| a.same(b));
            }
            return Ok(stream::iter(all.into_iter().map(Ok)).left_stream());
        }
        if !self.buffer.is_empty() {
            self.spill().await?;
        }
        let (dir, runs) = (
            self.dir.take().expect("runs were spilled"),
            std::mem::take(&mut self.runs),
        );
        let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<Vec<R>>>(2);
        tokio::task::spawn_blocking(move || {
            // The directory lives until the merge has read every run.
            let _dir = dir;
            let merged = (|| {
                let runs = reduce::<R>(_dir.path(), runs, dedup)?;
                let mut batch = Vec::with_capacity(BATCH);
                for h in merge::<R>(&runs, dedup)? {
                    batch.push(h?);
                    if batch.len() == BATCH
                        && tx
                            .blocking_send(Ok(std::mem::replace(
                                &mut batch,
                                Vec::with_capacity(BATCH),
                            )))
                            .is_err()
                    {
                        return Ok(());
                    }
                }
                if !batch.is_empty() {
                    let _ = tx.blocking_send(Ok(batch));
                }
                Ok(())
            })();
            if let Err(e) = merged {
                let _ = tx.blocking_send(Err(e));
            }
        });
        let batches = stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|b| (b, rx)) });
        Ok(batches
            .flat_map(|b| match b {
                Ok(v) => stream::iter(v.into_iter().map(Ok).collect::<Vec<_>>()),
                Err(e) => stream::iter(vec![Err(e)]),
            })
            .boxed()
            .right_stream())
    }
}

fn write_run<R: Record>(
    path: &Path,
    items: impl Iterator<Item = std::io::Result<R>>,
) -> std::io::Result<()> {
    let mut w = BufWriter::with_capacity(64 << 10, std::fs::File::create(path)?);
    for r in items {
        r?.write_to(&mut w)?;
    }
    w.flush()
}

/// Merges groups of runs until at most [`FAN_IN`] are left.
fn reduce<R: Record>(
    dir: &Path,
    mut runs: Vec<PathBuf>,
    dedup: bool,
) -> std::io::Result<Vec<PathBuf>> {
    let mut n = 0;
    while runs.len() > FAN_IN {
        let mut next = vec![];
        for group in runs.chunks(FAN_IN) {
            let path = dir.join(format!("merged-{n}"));
            n += 1;
            write_run(&path, merge::<R>(group, dedup)?)?;
            for r in group {
                std::fs::remove_file(r)?;
            }
            next.push(path);
        }
        runs = next;
    }
    Ok(runs)
}

/// The k-way merge of sorted runs (each record once if `dedup`).
fn merge<R: Record>(
    paths: &[PathBuf],
    dedup: bool,
) -> std::io::Result<impl Iterator<Item = std::io::Result<R>>> {
    let mut runs = vec![];
    let mut heap = BinaryHeap::new();
    for (i, p) in paths.iter().enumerate() {
        let mut r = BufReader::with_capacity(64 << 10, std::fs::File::open(p)?);
        if let Some(first) = R::read_from(&mut r)? {
            heap.push(std::cmp::Reverse((first, i)));
        }
        runs.push(r);
    }
    let mut last: Option<R> = None;
    Ok(std::iter::from_fn(move || loop {
        let std::cmp::Reverse((rec, i)) = heap.pop()?;
        match R::read_from(&mut runs[i]) {
            Ok(Some(n)) => heap.push(std::cmp::Reverse((n, i))),
            Ok(None) => {}
            Err(e) => return Some(Err(e)),
        }
        if !dedup {
            return Some(Ok(rec));
        }
        if last.as_ref().is_some_and(|l| l.same(&rec)) {
            continue;
        }
        last = Some(rec.clone());
        return Some(Ok(rec));
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::TryStreamExt;
    use rand::{Rng, SeedableRng};

    fn h(n: u32) -> Hash {
        let mut sha256 = [0u8; 32];
        sha256[..4].copy_from_slice(&n.to_be_bytes());
        sha256[31] = (n % 7) as u8;
        Hash {
            sha256,
            size: n as u64,
        }
    }

    async fn sorted(limit: usize, input: &[u32]) -> (Vec<Hash>, usize) {
        let parent = tempfile::tempdir().unwrap();
        let mut s = HashSorter::new(parent.path(), limit);
        for n in input {
            s.push(h(*n)).await.unwrap();
        }
        let runs = s.runs();
        let out: Vec<Hash> = s.finish().await.unwrap().try_collect().await.unwrap();
        // Every run is gone once the stream is read to the end.
        let left: Vec<_> = std::fs::read_dir(parent.path()).unwrap().collect();
        assert!(left.is_empty(), "{left:?}");
        (out, runs)
    }

    #[tokio::test]
    async fn sorts_and_dedups_in_memory_on_disk_and_through_merged_groups() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let input: Vec<u32> = (0..20_000).map(|_| rng.random_range(0..6_000)).collect();
        let mut want: Vec<Hash> = input.iter().map(|n| h(*n)).collect();
        want.sort();
        want.dedup_by_key(|h| h.sha256);
        // In memory; a few runs; more runs than one merge takes (groups merged first).
        for (limit, min_runs) in [(16 << 20, 0), (5_000 * 80, 3), (100 * 80, 200)] {
            let (got, runs) = sorted(limit, &input).await;
            assert!(runs >= min_runs, "limit {limit}: {runs} runs");
            assert_eq!(got, want, "limit {limit}");
        }
        assert!(sorted(3, &[]).await.0.is_empty());
    }

    #[test]
    fn parses_only_real_hashes() {
        let hex = "ab".repeat(32);
        assert_eq!(Hash::parse(&hex, 3).unwrap().hex(), hex);
        assert!(Hash::parse("AB", 1).is_none());
        assert!(Hash::parse(&"AB".repeat(32), 1).is_none());
    }
}
