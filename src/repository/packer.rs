//! Small blobs packed as a capture reads them (format v2, docs/FORMAT.md). Each blob is
//! appended to the open pack in memory. A full pack is uploaded while the next one fills, and
//! every blob is recorded for the capture's index file.
//!
//! Memory is bounded by `(in_flight + 1) × target` (a blob larger than the target gets a pack
//! of its own, so that much more for it): a full pack is swapped out only by a task that holds
//! an upload slot, so while every slot is busy the tasks that would append wait.
//! The index records go through the external sort (on disk past its budget).

use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::Path;
use std::sync::{Arc, Mutex};

use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use super::layout;
use super::pack::{new_pack_id, PackBuilder};
use crate::retry::retry;
use crate::sorted::{read_or_end, Record, Sorter};
use crate::storage::{Store, StoreError};

/// Bytes of index records a packer holds before it spills them to a sorted run on disk.
const INDEX_MEMORY: usize = 4 << 20;

/// The first bytes of an index file's decompressed stream.
pub const INDEX_MAGIC: &[u8; 8] = b"BAIDX\x00\x00\x02";

/// How a packer packs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PackSettings {
    /// About how large a pack grows before it is uploaded.
    pub target: u64,
    /// Packs uploading at once while the next fills; each stays in memory until it is stored.
    pub in_flight: usize,
    /// Content hashes of this run remembered, so that the same bytes under many keys are
    /// packed once (past this many, the memory is cleared and starts again).
    pub remembered: usize,
}

impl Default for PackSettings {
    fn default() -> Self {
        // 8 MiB packs: a thousand 8 KiB objects a PUT. Memory is about three packs, each
        // uploading one held twice (the request copies its body).
        PackSettings {
            target: 8 << 20,
            in_flight: 2,
            remembered: 16_384,
        }
    }
}

/// Which objects a capture packs, and how.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Packing {
    /// Objects up to this many bytes are packed (format v2); larger ones are blobs of their
    /// own, uploaded in parts (format v1's way). 0 packs nothing: every backup is written in v1.
    pub threshold: u64,
    pub packs: PackSettings,
    /// Prune repacks a pack whose unreferenced share of bytes passes this percentage.
    pub max_unused: u8,
}

/// Prune repacks a pack once more than this share (percent) of its bytes is unused by default:
/// below it, rewriting the rest costs more than the space it frees.
pub const MAX_UNUSED: u8 = 50;

/// Objects up to this size are packed by default: below it a request costs more than its bytes.
pub const PACK_THRESHOLD: u64 = 1 << 20;

impl Default for Packing {
    fn default() -> Self {
        Packing {
            threshold: PACK_THRESHOLD,
            packs: PackSettings::default(),
            max_unused: MAX_UNUSED,
        }
    }
}

impl Packing {
    /// Nothing packed: every object a blob of its own (format v1).
    pub fn off() -> Packing {
        Packing {
            threshold: 0,
            ..Packing::default()
        }
    }

    /// Whether backups are written in format v2: small objects packed, and objects too large
    /// to read into memory streamed into packs of their own (v1 spools those, to name their
    /// blob by its hash).
    pub fn on(&self) -> bool {
        self.threshold > 0
    }

    /// Whether an object of `size` bytes goes into a pack.
    pub fn packs(&self, size: u64) -> bool {
        size > 0 && size <= self.threshold
    }
}

/// Where a blob's bytes are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placed {
    pub pack: Arc<str>,
    pub offset: u64,
    /// Stored by this call; `false` when this run had already packed the same bytes.
    pub new: bool,
}

/// One line of an index file: a blob, by content hash, and where it is.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct IndexRecord {
    pub sha256: [u8; 32],
    pub pack: [u8; 32],
    pub offset: u64,
    pub length: u64,
}

impl IndexRecord {
    const LEN: usize = 80;
}

impl Record for IndexRecord {
    fn write_to(&self, w: &mut impl Write) -> std::io::Result<()> {
        w.write_all(&self.sha256)?;
        w.write_all(&self.pack)?;
        w.write_all(&self.offset.to_le_bytes())?;
        w.write_all(&self.length.to_le_bytes())
    }

    fn read_from(r: &mut impl Read) -> std::io::Result<Option<Self>> {
        let mut b = [0u8; IndexRecord::LEN];
        if !read_or_end(r, &mut b)? {
            return Ok(None);
        }
        let word = |at: usize| u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"));
        Ok(Some(IndexRecord {
            sha256: b[..32].try_into().expect("32 bytes"),
            pack: b[32..64].try_into().expect("32 bytes"),
            offset: word(64),
            length: word(72),
        }))
    }

    fn footprint(&self) -> usize {
        IndexRecord::LEN
    }
}

/// Packs by id, with their sizes.
pub type PackTable = Vec<(String, u64)>;

/// What a packer stored.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Packed {
    /// Every pack written, with its size.
    pub packs: Vec<(String, u64)>,
    /// Blobs packed: each content once while this run remembers it (`remembered`).
    pub blobs: u64,
    pub blob_bytes: u64,
    /// The index file written, when any blob was packed.
    pub index_key: Option<String>,
}

struct Open {
    id: Arc<str>,
    builder: PackBuilder,
}

struct State {
    open: Open,
    seen: HashMap<[u8; 32], (Arc<str>, u64)>,
    blobs: u64,
    blob_bytes: u64,
}

struct Shared {
    dest: Store,
    settings: PackSettings,
    state: Mutex<State>,
    /// The first upload that failed for good: every later call returns it.
    failed: Mutex<Option<StoreError>>,
    written: Mutex<Vec<(String, u64)>>,
}

/// Packs the blobs of one capture into `dest`.
pub struct Packer {
    shared: Arc<Shared>,
    scratch: std::path::PathBuf,
    slots: Arc<Semaphore>,
    uploads: Mutex<JoinSet<()>>,
    index: tokio::sync::Mutex<Sorter<IndexRecord>>,
}

fn open_pack(target: u64) -> Open {
    Open {
        id: new_pack_id().into(),
        builder: PackBuilder::new(target),
    }
}

fn raw_id(id: &str) -> [u8; 32] {
    let mut b = [0u8; 32];
    hex::decode_to_slice(id, &mut b).expect("pack ids are 64 hex digits");
    b
}

impl Packer {
    /// A packer writing into `dest`; index records beyond `sort_memory` bytes spill under
    /// `scratch`.
    pub fn new(dest: &Store, settings: PackSettings, scratch: &Path, sort_memory: usize) -> Packer {
        let shared = Shared {
            dest: dest.clone(),
            settings,
            state: Mutex::new(State {
                open: open_pack(settings.target),
                seen: HashMap::new(),
                blobs: 0,
                blob_bytes: 0,
            }),
            failed: Mutex::new(None),
            written: Mutex::new(vec![]),
        };
        Packer {
            shared: Arc::new(shared),
            scratch: scratch.to_path_buf(),
            slots: Arc::new(Semaphore::new(settings.in_flight.max(1))),
            uploads: Mutex::new(JoinSet::new()),
            // The index records wait on disk: their memory is the packs'.
            index: tokio::sync::Mutex::new(Sorter::with(
                scratch,
                sort_memory.min(INDEX_MEMORY),
                false,
            )),
        }
    }

    /// Where this run already packed these bytes, if it still remembers them.
    pub fn find(&self, sha256: &[u8; 32]) -> Option<(Arc<str>, u64)> {
        let st = self.shared.state.lock().expect("not poisoned");
        st.seen.get(sha256).cloned()
    }

    /// Whether an upload has failed: every call after it says so.
    fn failure(&self) -> Result<(), StoreError> {
        match &*self.shared.failed.lock().expect("not poisoned") {
            Some(e) => Err(StoreError::Fatal {
                op: "pack",
                key: layout::packs_prefix(),
                detail: format!("an earlier pack upload failed: {e}"),
            }),
            None => Ok(()),
        }
    }

    /// Packs one blob whose content hash is `sha256`; where its bytes are. Empty objects are
    /// never packed (they need no bytes stored): the caller records them without a location.
    pub async fn put(&self, sha256: [u8; 32], bytes: &[u8]) -> Result<Placed, StoreError> {
        if bytes.is_empty() {
            return Err(StoreError::Fatal {
                op: "pack",
                key: hex::encode(sha256),
                detail: "an empty object has no bytes to pack".into(),
            });
        }
        loop {
            self.failure()?;
            let placed = {
                let mut st = self.shared.state.lock().expect("not poisoned");
                if let Some((pack, offset)) = st.seen.get(&sha256) {
                    return Ok(Placed {
                        pack: pack.clone(),
                        offset: *offset,
                        new: false,
                    });
                }
                if st.open.builder.fits(bytes.len() as u64) {
                    let at = st.open.builder.push(sha256, bytes);
                    let pack = st.open.id.clone();
                    if st.seen.len() >= self.shared.settings.remembered {
                        st.seen.clear();
                    }
                    st.seen.insert(sha256, (pack.clone(), at.offset));
                    st.blobs += 1;
                    st.blob_bytes += at.length;
                    Some((pack, at))
                } else {
                    None
                }
            };
            if let Some((pack, at)) = placed {
                let record = IndexRecord {
                    sha256,
                    pack: raw_id(&pack),
                    offset: at.offset,
                    length: at.length,
                };
                self.index(record).await?;
                return Ok(Placed {
                    pack,
                    offset: at.offset,
                    new: true,
                });
            }
            // The open pack is full: swap it out once an upload slot is free.
            let permit = self
                .slots
                .clone()
                .acquire_owned()
                .await
                .expect("never closed");
            let full = {
                let mut st = self.shared.state.lock().expect("not poisoned");
                if st.open.builder.fits(bytes.len() as u64) {
                    None // another task swapped it out meanwhile
                } else {
                    Some(std::mem::replace(
                        &mut st.open,
                        open_pack(self.shared.settings.target),
                    ))
                }
            };
            if let Some(full) = full {
                let shared = self.shared.clone();
                self.uploads
                    .lock()
                    .expect("not poisoned")
                    .spawn(async move {
                        let _permit = permit;
                        upload(&shared, full).await;
                    });
            }
        }
    }

    /// Takes in a pack of one blob uploaded whole by the caller (a large object, streamed
    /// through [`super::pack::SoloPack`]): remembered and indexed like the packs this packer
    /// fills, so the same content later in this run is found and the index lists it.
    pub async fn adopt(
        &self,
        pack: &str,
        at: super::pack::Located,
        pack_len: u64,
    ) -> Result<Arc<str>, StoreError> {
        let id: Arc<str> = pack.into();
        {
            let mut st = self.shared.state.lock().expect("not poisoned");
            if st.seen.len() >= self.shared.settings.remembered {
                st.seen.clear();
            }
            st.seen.insert(at.sha256, (id.clone(), at.offset));
            st.blobs += 1;
            st.blob_bytes += at.length;
        }
        self.shared
            .written
            .lock()
            .expect("not poisoned")
            .push((pack.to_string(), pack_len));
        let record = IndexRecord {
            sha256: at.sha256,
            pack: raw_id(pack),
            offset: at.offset,
            length: at.length,
        };
        self.index(record).await?;
        Ok(id)
    }

    /// One record for the index file (sorted by hash on disk).
    async fn index(&self, record: IndexRecord) -> Result<(), StoreError> {
        self.index
            .lock()
            .await
            .push(record)
            .await
            .map_err(|e| StoreError::Fatal {
                op: "sort",
                key: "index".into(),
                detail: e.to_string(),
            })
    }

    /// Uploads the last pack, waits for every upload, then writes the index file under
    /// `index_key` (when given). Packs already uploaded stay when this fails: no manifest names
    /// them, so the next prune deletes them.
    pub async fn finish(self, index_key: Option<&str>) -> Result<Packed, StoreError> {
        let last = {
            let mut st = self.shared.state.lock().expect("not poisoned");
            std::mem::replace(&mut st.open, open_pack(0))
        };
        if !last.builder.is_empty() {
            upload(&self.shared, last).await;
        }
        let mut uploads = std::mem::take(&mut *self.uploads.lock().expect("not poisoned"));
        while let Some(done) = uploads.join_next().await {
            done.map_err(|e| StoreError::Fatal {
                op: "pack",
                key: layout::packs_prefix(),
                detail: format!("a pack upload stopped: {e}"),
            })?;
        }
        if let Some(e) = self.shared.failed.lock().expect("not poisoned").take() {
            return Err(e);
        }
        let (blobs, blob_bytes) = {
            let st = self.shared.state.lock().expect("not poisoned");
            (st.blobs, st.blob_bytes)
        };
        let mut packs = std::mem::take(&mut *self.shared.written.lock().expect("not poisoned"));
        packs.sort();
        let mut out = Packed {
            packs,
            blobs,
            blob_bytes,
            index_key: None,
        };
        if let Some(index_key) = index_key.filter(|_| blobs > 0) {
            let sorter = self.index.into_inner();
            write_index(
                &self.shared.dest,
                index_key,
                sorter,
                &out.packs,
                &self.scratch,
            )
            .await?;
            out.index_key = Some(index_key.to_string());
        }
        Ok(out)
    }
}

/// Uploads one full pack; a failure is kept for the packer's next call.
async fn upload(shared: &Shared, open: Open) {
    let (bytes, _) = open.builder.finish();
    let key = layout::pack_key(&open.id);
    let r = retry(crate::retry::ATTEMPTS, &key, || {
        shared
            .dest
            .put_bytes(&key, &bytes, "application/octet-stream")
    })
    .await;
    match r {
        Ok(()) => shared
            .written
            .lock()
            .expect("not poisoned")
            .push((open.id.to_string(), bytes.len() as u64)),
        Err(e) => {
            let mut f = shared.failed.lock().expect("not poisoned");
            f.get_or_insert(e);
        }
    }
}

/// The index file: one zstd stream of the magic, the records sorted by hash, the pack table
/// (id, size) and a footer (record count, pack count). Written through a local temporary
/// file, so memory does not follow the number of blobs.
async fn write_index(
    dest: &Store,
    key: &str,
    sorter: Sorter<IndexRecord>,
    packs: &[(String, u64)],
    scratch: &Path,
) -> Result<(), StoreError> {
    use futures::TryStreamExt;
    let fatal = |detail: String| StoreError::Fatal {
        op: "index",
        key: key.to_string(),
        detail,
    };
    let file = tempfile::tempfile_in(scratch).map_err(|e| fatal(e.to_string()))?;
    let mut z = zstd::stream::write::Encoder::new(file, 3).map_err(|e| fatal(e.to_string()))?;
    z.write_all(INDEX_MAGIC).map_err(|e| fatal(e.to_string()))?;
    let mut records = sorter.finish().await.map_err(|e| fatal(e.to_string()))?;
    let mut count = 0u64;
    while let Some(r) = records.try_next().await.map_err(|e| fatal(e.to_string()))? {
        r.write_to(&mut z).map_err(|e| fatal(e.to_string()))?;
        count += 1;
    }
    for (id, size) in packs {
        z.write_all(&raw_id(id)).map_err(|e| fatal(e.to_string()))?;
        z.write_all(&size.to_le_bytes())
            .map_err(|e| fatal(e.to_string()))?;
    }
    z.write_all(&count.to_le_bytes())
        .map_err(|e| fatal(e.to_string()))?;
    z.write_all(&(packs.len() as u64).to_le_bytes())
        .map_err(|e| fatal(e.to_string()))?;
    let file = z.finish().map_err(|e| fatal(e.to_string()))?;
    // Each attempt rewinds the file and reads it from its first byte (the attempts run one
    // after another, so sharing the file's offset is safe).
    retry(crate::retry::ATTEMPTS, key, || {
        let handle = file.try_clone();
        async move {
            let mut f = tokio::fs::File::from_std(handle.map_err(|e| fatal(e.to_string()))?);
            tokio::io::AsyncSeekExt::rewind(&mut f)
                .await
                .map_err(|e| fatal(e.to_string()))?;
            dest.put_stream(key, &mut f, "application/octet-stream")
                .await
        }
    })
    .await
}

/// An index file read whole: its records and its pack table. For tests and small indexes; the
/// engine streams them.
pub fn decode_index(bytes: &[u8]) -> std::io::Result<(Vec<IndexRecord>, PackTable)> {
    let bad = |d: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, d.to_string());
    let raw = zstd::stream::decode_all(bytes)?;
    if raw.len() < 24 || &raw[..8] != INDEX_MAGIC {
        return Err(bad("not an index file"));
    }
    let n = raw.len();
    let count = u64::from_le_bytes(raw[n - 16..n - 8].try_into().expect("8 bytes")) as usize;
    let packs = u64::from_le_bytes(raw[n - 8..].try_into().expect("8 bytes")) as usize;
    let body = &raw[8..n - 16];
    if body.len() != count * IndexRecord::LEN + packs * 40 {
        return Err(bad("its counts do not match its length"));
    }
    let mut r = &body[..count * IndexRecord::LEN];
    let mut records = Vec::with_capacity(count);
    while let Some(rec) = IndexRecord::read_from(&mut r)? {
        records.push(rec);
    }
    let table = body[count * IndexRecord::LEN..]
        .chunks_exact(40)
        .map(|c| {
            let size = u64::from_le_bytes(c[32..].try_into().expect("8 bytes"));
            (hex::encode(&c[..32]), size)
        })
        .collect();
    Ok((records, table))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repository::pack;
    use sha2::{Digest, Sha256};

    fn sha(b: &[u8]) -> [u8; 32] {
        Sha256::digest(b).into()
    }

    /// Every pack in `dir`'s store read back by its trailer: (id, blobs).
    async fn packs_in(store: &Store) -> Vec<(String, Vec<pack::Located>)> {
        let mut out = vec![];
        for o in store.list(&layout::packs_prefix()).await.unwrap() {
            let id = layout::pack_of(&o.key).expect("only packs").to_string();
            let n = o.size;
            let foot = store
                .get_range(&o.key, n - pack::FOOTER_LEN, n)
                .await
                .unwrap();
            let (tl, count) = pack::parse_footer(&foot, n).unwrap();
            let start = pack::trailer_start(n, tl);
            let t = store.get_range(&o.key, start, start + tl).await.unwrap();
            out.push((id, pack::parse_trailer(&t, count, n).unwrap()));
        }
        out
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn blobs_from_many_tasks_land_once_each_in_bounded_packs_with_an_index() {
        let dir = tempfile::tempdir().unwrap();
        let scratch = tempfile::tempdir().unwrap();
        let store = Store::local(dir.path());
        let settings = PackSettings {
            target: 4_000,
            in_flight: 2,
            remembered: 1_000,
        };
        // A sort budget of a few records: the index goes through spilled runs.
        let packer = Arc::new(Packer::new(&store, settings, scratch.path(), 400));
        // 300 contents, each put by three tasks (the same bytes under three keys).
        let contents: Vec<Vec<u8>> = (0..300u32)
            .map(|i| {
                format!("object {i} ")
                    .repeat(1 + (i % 40) as usize)
                    .into_bytes()
            })
            .collect();
        let mut tasks = JoinSet::new();
        for copy in 0..3 {
            for (i, c) in contents.iter().enumerate() {
                let (p, c) = (packer.clone(), c.clone());
                tasks.spawn(async move { (i, copy, p.put(sha(&c), &c).await.unwrap()) });
            }
        }
        let mut placed: HashMap<usize, Vec<Placed>> = HashMap::new();
        while let Some(r) = tasks.join_next().await {
            let (i, _, p) = r.unwrap();
            placed.entry(i).or_default().push(p);
        }
        let packer = Arc::into_inner(packer).expect("every task is done");
        let packed = packer
            .finish(Some(&layout::index_key("20261206T000000Z-abcdef")))
            .await
            .unwrap();
        assert_eq!(packed.blobs, 300, "each content packed once");
        for (i, ps) in &placed {
            assert_eq!(ps.iter().filter(|p| p.new).count(), 1, "content {i}");
            assert!(ps
                .iter()
                .all(|p| p.pack == ps[0].pack && p.offset == ps[0].offset));
        }
        // Every pack is whole, no larger than the target allows, and holds what was placed.
        let on_disk = packs_in(&store).await;
        assert_eq!(on_disk.len(), packed.packs.len());
        assert!(on_disk.len() > 5, "{} packs", on_disk.len());
        let mut found = 0;
        for (id, blobs) in &on_disk {
            let bytes = std::fs::read(dir.path().join(layout::pack_key(id))).unwrap();
            let blob_area: u64 = blobs.iter().map(|b| b.length).sum();
            assert!(blob_area + pack::HEADER_LEN <= 4_000 || blobs.len() == 1);
            for b in blobs {
                let got = &bytes[b.offset as usize..(b.offset + b.length) as usize];
                assert_eq!(sha(got), b.sha256);
                let i = contents.iter().position(|c| sha(c) == b.sha256).unwrap();
                let p = &placed[&i][0];
                assert_eq!((&*p.pack, p.offset), (id.as_str(), b.offset));
                found += 1;
            }
        }
        assert_eq!(found, 300);
        // The index: every blob, sorted by hash, and the packs with their sizes.
        let key = packed.index_key.clone().unwrap();
        let (records, table) = decode_index(&std::fs::read(dir.path().join(key)).unwrap()).unwrap();
        assert_eq!(records.len(), 300);
        assert!(records.windows(2).all(|w| w[0].sha256 < w[1].sha256));
        assert_eq!(table, packed.packs);
        assert_eq!(
            std::fs::read_dir(scratch.path()).unwrap().count(),
            0,
            "no sorted runs left behind"
        );
    }

    #[tokio::test]
    async fn a_pack_that_cannot_be_stored_fails_the_packer() {
        let dir = tempfile::tempdir().unwrap();
        let scratch = tempfile::tempdir().unwrap();
        let store = Store::local(dir.path());
        // A file where the packs' directory should be: every upload fails.
        std::fs::create_dir_all(dir.path().join(layout::REPO)).unwrap();
        std::fs::write(
            dir.path()
                .join(layout::packs_prefix().trim_end_matches('/')),
            b"x",
        )
        .unwrap();
        let settings = PackSettings {
            target: 100,
            in_flight: 1,
            remembered: 10,
        };
        let packer = Packer::new(&store, settings, scratch.path(), 1 << 20);
        let mut err = None;
        for i in 0..50u32 {
            let b = vec![i as u8; 60];
            if let Err(e) = packer.put(sha(&b), &b).await {
                err = Some(e);
                break;
            }
        }
        let e = match err {
            Some(e) => e,
            None => packer.finish(None).await.unwrap_err(),
        };
        assert!(e.to_string().contains("packs"), "{e}");
    }
}
