//! Content the repository already holds, found by hash without a map of the repository in
//! memory: the previous backup's manifest, sorted by content hash into a file on local disk
//! the first time a capture reads an object, then searched by binary search with positioned
//! reads. A no-change backup reads nothing, so it never builds the file.
//!
//! Only the previous backup is searched: content that only older backups hold is stored again
//! (docs/FORMAT.md, "Dedup within flat memory").

use std::io::{Read, Write};
use std::path::PathBuf;

use futures::TryStreamExt;
use tokio::sync::OnceCell;

use super::{PreviousManifest, SyncError};
use crate::repository::{self, Stored};
use crate::sorted::{read_or_end, Record, Sorter, Table, TableWriter};
use crate::storage::{Store, StoreError};

/// Where stored content is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Found {
    /// A v1 blob of its own.
    Blob,
    Packed {
        pack: String,
        offset: u64,
    },
}

/// One stored content: its hash and where it is (a pack id of zeros: a v1 blob).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Known {
    sha256: [u8; 32],
    pack: [u8; 32],
    offset: u64,
}

const LEN: usize = 72;

impl Known {
    fn decode(b: &[u8; LEN]) -> Known {
        Known {
            sha256: b[..32].try_into().expect("32 bytes"),
            pack: b[32..64].try_into().expect("32 bytes"),
            offset: u64::from_le_bytes(b[64..].try_into().expect("8 bytes")),
        }
    }

    fn found(&self) -> Found {
        if self.pack == [0; 32] {
            Found::Blob
        } else {
            Found::Packed {
                pack: hex::encode(self.pack),
                offset: self.offset,
            }
        }
    }
}

impl Record for Known {
    fn write_to(&self, w: &mut impl Write) -> std::io::Result<()> {
        w.write_all(&self.sha256)?;
        w.write_all(&self.pack)?;
        w.write_all(&self.offset.to_le_bytes())
    }

    fn read_from(r: &mut impl Read) -> std::io::Result<Option<Self>> {
        let mut b = [0u8; LEN];
        Ok(read_or_end(r, &mut b)?.then(|| Known::decode(&b)))
    }

    fn footprint(&self) -> usize {
        LEN
    }

    /// One place per content is enough.
    fn same(&self, other: &Self) -> bool {
        self.sha256 == other.sha256
    }
}

/// The previous backup's contents by hash, built on first use.
pub(super) struct KnownContent {
    repo: Store,
    previous: Option<PreviousManifest>,
    scratch: PathBuf,
    sort_memory: usize,
    table: OnceCell<Result<Table<Known>, String>>,
}

impl KnownContent {
    pub(super) fn new(
        repo: &Store,
        previous: Option<&PreviousManifest>,
        scratch: PathBuf,
        sort_memory: usize,
    ) -> KnownContent {
        KnownContent {
            repo: repo.clone(),
            previous: previous.cloned(),
            scratch,
            sort_memory,
            table: OnceCell::new(),
        }
    }

    /// Where the previous backup keeps content `sha256`, if it holds it.
    pub(super) async fn find(&self, sha256: &[u8; 32]) -> Result<Option<Found>, SyncError> {
        let Some(prev) = &self.previous else {
            return Ok(None);
        };
        let table = self.table.get_or_init(|| self.build(prev)).await;
        let fail = |detail: String| SyncError::Object {
            key: prev.key.clone(),
            source: StoreError::Fatal {
                op: "dedup",
                key: prev.key.clone(),
                detail,
            },
        };
        match table {
            Ok(t) => Ok(t
                .find(|k| k.sha256.cmp(sha256))
                .map_err(|e| fail(format!("searching its hashes on local disk: {e}")))?
                .map(|k| k.found())),
            Err(why) => Err(fail(why.clone())),
        }
    }

    async fn build(&self, prev: &PreviousManifest) -> Result<Table<Known>, String> {
        let mut sorter = Sorter::<Known>::with(&self.scratch, self.sort_memory, true);
        let mut entries = repository::manifest::read(&self.repo, &prev.key, Some(&prev.sha256));
        let disk = |e: std::io::Error| {
            format!(
                "sorting its hashes on local disk under {}: {e}",
                self.scratch.display()
            )
        };
        while let Some(e) = entries.try_next().await.map_err(|e| e.to_string())? {
            let mut sha256 = [0u8; 32];
            hex::decode_to_slice(&e.sha256, &mut sha256).expect("the reader checks hashes");
            let (pack, offset) = match e.stored() {
                Stored::Empty => continue,
                Stored::Blob(_) => ([0u8; 32], 0),
                Stored::Packed { pack, offset } => {
                    let mut raw = [0u8; 32];
                    hex::decode_to_slice(pack, &mut raw).expect("the reader checks packs");
                    (raw, offset)
                }
            };
            sorter
                .push(Known {
                    sha256,
                    pack,
                    offset,
                })
                .await
                .map_err(disk)?;
        }
        let mut sorted = sorter.finish().await.map_err(disk)?;
        let mut table = TableWriter::new(&self.scratch, LEN).map_err(disk)?;
        while let Some(k) = sorted.try_next().await.map_err(disk)? {
            table.push(&k).map_err(disk)?;
        }
        table.finish().map_err(disk)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repository::{Entry, ManifestWriter};

    fn entry(i: u32, pack: Option<&str>) -> Entry {
        use sha2::{Digest, Sha256};
        Entry {
            key: format!("k{i:06}"),
            size: 10,
            etag: Some("e".into()),
            sha256: hex::encode(Sha256::digest(i.to_le_bytes())),
            content_type: "x".into(),
            metadata: Default::default(),
            pack: pack.map(str::to_string),
            offset: pack.map(|_| u64::from(i) * 10),
        }
    }

    #[tokio::test]
    async fn contents_of_the_previous_backup_are_found_by_hash_through_spilled_runs() {
        let dir = tempfile::tempdir().unwrap();
        let scratch = tempfile::tempdir().unwrap();
        let repo = Store::local(dir.path());
        let pack = "ab".repeat(32);
        let mut w = ManifestWriter::start(&repo, "m");
        let all: Vec<Entry> = (0..3000)
            .map(|i| entry(i, (i % 3 != 0).then_some(pack.as_str())))
            .collect();
        for e in &all {
            w.push(e).await.unwrap();
        }
        let written = w.finish().await.unwrap();
        let prev = PreviousManifest {
            backup_id: "p".into(),
            key: "m".into(),
            sha256: written.sha256,
        };
        // A sort budget of a few records: the table is merged from many runs.
        let known = KnownContent::new(&repo, Some(&prev), scratch.path().into(), 2000);
        for e in all.iter().step_by(7) {
            let mut sha = [0u8; 32];
            hex::decode_to_slice(&e.sha256, &mut sha).unwrap();
            let want = match &e.pack {
                None => Found::Blob,
                Some(p) => Found::Packed {
                    pack: p.clone(),
                    offset: e.offset.unwrap(),
                },
            };
            assert_eq!(known.find(&sha).await.unwrap(), Some(want), "{}", e.key);
        }
        assert_eq!(known.find(&[7; 32]).await.unwrap(), None);
        let none = KnownContent::new(&repo, None, scratch.path().into(), 2000);
        assert_eq!(none.find(&[7; 32]).await.unwrap(), None);
        let gone = PreviousManifest {
            key: "missing".into(),
            ..prev
        };
        let broken = KnownContent::new(&repo, Some(&gone), scratch.path().into(), 2000);
        assert!(broken.find(&[7; 32]).await.is_err());
    }
}
