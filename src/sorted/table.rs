//! Fixed-size records in order in a file on local disk, searched by binary search with
//! positioned reads: a lookup costs a few reads of the page cache and no memory, whatever the
//! number of records (the previous backup's contents by hash; a repack's moves).

use std::cmp::Ordering;
use std::io::{BufWriter, Write};
use std::marker::PhantomData;
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::Record;

/// Records written in order, to be searched once [`TableWriter::finish`]ed.
pub struct TableWriter<R: Record> {
    w: BufWriter<std::fs::File>,
    count: u64,
    len: usize,
    _r: PhantomData<fn() -> R>,
}

impl<R: Record> TableWriter<R> {
    /// An anonymous file under `dir` (gone when the table is dropped) for records of exactly
    /// `len` bytes each.
    pub fn new(dir: &Path, len: usize) -> std::io::Result<TableWriter<R>> {
        std::fs::create_dir_all(dir)?;
        Ok(TableWriter {
            w: BufWriter::new(tempfile::tempfile_in(dir)?),
            count: 0,
            len,
            _r: PhantomData,
        })
    }

    /// The next record: in the order the table will be searched by.
    pub fn push(&mut self, r: &R) -> std::io::Result<()> {
        r.write_to(&mut self.w)?;
        self.count += 1;
        Ok(())
    }

    pub fn finish(mut self) -> std::io::Result<Table<R>> {
        self.w.flush()?;
        let file = self.w.into_inner().map_err(|e| e.into_error())?;
        let expect = self.count * self.len as u64;
        if file.metadata()?.len() != expect {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("records are not {} bytes each", self.len),
            ));
        }
        Ok(Table {
            file,
            count: self.count,
            len: self.len,
            _r: PhantomData,
        })
    }
}

/// Sorted records on disk.
pub struct Table<R: Record> {
    file: std::fs::File,
    count: u64,
    len: usize,
    _r: PhantomData<fn() -> R>,
}

impl<R: Record> Table<R> {
    pub fn len(&self) -> u64 {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The record `probe` says is the one (`Equal`); `probe` says whether a record sorts before
    /// (`Less`) or after (`Greater`) the one sought.
    pub fn find(&self, probe: impl Fn(&R) -> Ordering) -> std::io::Result<Option<R>> {
        let (mut lo, mut hi) = (0u64, self.count);
        let mut b = vec![0u8; self.len];
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            self.file.read_exact_at(&mut b, mid * self.len as u64)?;
            let r = R::read_from(&mut &b[..])?.expect("a whole record was read");
            match probe(&r) {
                Ordering::Equal => return Ok(Some(r)),
                Ordering::Less => lo = mid + 1,
                Ordering::Greater => hi = mid,
            }
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sorted::Hash;

    #[test]
    fn every_record_is_found_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = TableWriter::<Hash>::new(dir.path(), 40).unwrap();
        let all: Vec<Hash> = (0..1000u64)
            .map(|i| Hash {
                sha256: [(i * 2 / 256) as u8, (i * 2 % 256) as u8]
                    .into_iter()
                    .chain([0; 30])
                    .collect::<Vec<u8>>()
                    .try_into()
                    .unwrap(),
                size: i,
            })
            .collect();
        for h in &all {
            w.push(h).unwrap();
        }
        let t = w.finish().unwrap();
        assert_eq!(t.len(), 1000);
        for h in all.iter().step_by(13) {
            let got = t.find(|r| r.sha256.cmp(&h.sha256)).unwrap();
            assert_eq!(got, Some(*h));
        }
        let mut odd = all[5].sha256;
        odd[1] += 1;
        assert_eq!(t.find(|r| r.sha256.cmp(&odd)).unwrap(), None);
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            0,
            "anonymous"
        );
    }
}
