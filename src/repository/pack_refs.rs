//! What manifests point at inside packs (format v2), sorted by pack: the unit verify checks
//! and prune marks. A manifest is in key order; its pack references go through the external
//! sort into pack order, then are merged with the listing of `packs/`, so neither side is ever
//! held whole in memory.

use std::io::{Read, Write};

use futures::stream::{self, Stream, StreamExt, TryStreamExt};

use super::{layout, pack, Entry, Stored};
use crate::sorted::{read_or_end, Keyed, Record};
use crate::storage::{ObjectInfo, Store, StoreError};

/// One blob a manifest places in a pack. Sorted by pack, then offset.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct PackRef {
    pub pack: [u8; 32],
    pub offset: u64,
    pub length: u64,
    pub sha256: [u8; 32],
}

const LEN: usize = 80;

impl PackRef {
    /// The pack reference of an entry that has one (the manifest reader has checked its shape).
    pub fn of(e: &Entry) -> Option<PackRef> {
        let Stored::Packed { pack, offset } = e.stored() else {
            return None;
        };
        let mut r = PackRef {
            pack: [0; 32],
            offset,
            length: e.size,
            sha256: [0; 32],
        };
        hex::decode_to_slice(pack, &mut r.pack).ok()?;
        hex::decode_to_slice(&e.sha256, &mut r.sha256).ok()?;
        Some(r)
    }
}

impl Record for PackRef {
    fn write_to(&self, w: &mut impl Write) -> std::io::Result<()> {
        w.write_all(&self.pack)?;
        w.write_all(&self.offset.to_le_bytes())?;
        w.write_all(&self.length.to_le_bytes())?;
        w.write_all(&self.sha256)
    }

    fn read_from(r: &mut impl Read) -> std::io::Result<Option<Self>> {
        let mut b = [0u8; LEN];
        if !read_or_end(r, &mut b)? {
            return Ok(None);
        }
        let word = |at: usize| u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"));
        Ok(Some(PackRef {
            pack: b[..32].try_into().expect("32 bytes"),
            offset: word(32),
            length: word(40),
            sha256: b[48..].try_into().expect("32 bytes"),
        }))
    }

    fn footprint(&self) -> usize {
        LEN
    }
}

/// Everything the references say of one pack.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackUse {
    pub pack: [u8; 32],
    /// In offset order, each once.
    pub refs: Vec<PackRef>,
}

impl PackUse {
    pub fn id(&self) -> String {
        hex::encode(self.pack)
    }

    pub fn object_key(&self) -> String {
        layout::pack_key(&self.id())
    }

    /// The pack is at least this long (the end of its last referenced blob).
    pub fn end(&self) -> u64 {
        self.refs
            .iter()
            .map(|r| r.offset + r.length)
            .max()
            .unwrap_or(0)
    }

    /// Bytes of the pack that some reference needs.
    pub fn referenced(&self) -> u64 {
        // Sorted by offset: overlapping references (the same blob reached by two hashes
        // cannot happen, but a damaged manifest could claim it) count once.
        let (mut total, mut reached) = (0u64, 0u64);
        for r in &self.refs {
            let end = r.offset + r.length;
            if end > reached {
                total += end - r.offset.max(reached);
                reached = end;
            }
        }
        total
    }
}

impl PackUse {
    /// Bytes of a pack of `size` that no reference needs: blobs no kept backup names, and
    /// their trailer records. The header, the footer and the trailer records of referenced
    /// blobs are needed by any pack, so a pack whose every blob is referenced has none (a
    /// small pack is not taken for a sparse one).
    pub fn unused(&self, size: u64) -> u64 {
        // A zstd frame's own header and checksum: a trailer of one record is longer than it.
        const FRAME: u64 = 32;
        let needed = pack::HEADER_LEN
            + pack::FOOTER_LEN
            + FRAME
            + self.referenced()
            + pack::RECORD_LEN as u64 * self.refs.len() as u64;
        size.saturating_sub(needed)
    }
}

impl Keyed for PackUse {
    type Key = [u8; 32];
    fn key(&self) -> &[u8; 32] {
        &self.pack
    }
}

/// A pack as the listing of `packs/` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedPack {
    pub pack: [u8; 32],
    pub size: u64,
}

impl ListedPack {
    pub fn object_key(&self) -> String {
        layout::pack_key(&hex::encode(self.pack))
    }
}

impl Keyed for ListedPack {
    type Key = [u8; 32];
    fn key(&self) -> &[u8; 32] {
        &self.pack
    }
}

/// Every pack under `packs/`, in id order (the keys are `packs/<ab>/<id>`, so key order is id
/// order); anything else there is not a pack and is skipped.
pub fn listing(
    store: &Store,
    page_size: usize,
) -> impl Stream<Item = Result<ListedPack, StoreError>> + Send + Unpin + 'static {
    store
        .list_stream(&layout::packs_prefix(), page_size)
        .try_filter_map(|o: ObjectInfo| {
            let listed = layout::pack_of(&o.key).and_then(|id| {
                let mut pack = [0u8; 32];
                hex::decode_to_slice(id, &mut pack).ok()?;
                Some(ListedPack { pack, size: o.size })
            });
            futures::future::ready(Ok(listed))
        })
}

/// A stream of references sorted by pack, grouped into one [`PackUse`] per pack.
pub fn by_pack<S, E>(refs: S) -> impl Stream<Item = Result<PackUse, E>> + Send + Unpin
where
    S: Stream<Item = Result<PackRef, E>> + Send + Unpin,
    E: Send,
{
    struct State<S, E> {
        refs: futures::stream::Fuse<S>,
        held: Option<PackRef>,
        failed: Option<E>,
    }
    let state = State {
        refs: refs.fuse(),
        held: None,
        failed: None,
    };
    Box::pin(stream::unfold(state, |mut st| async move {
        if let Some(e) = st.failed.take() {
            return Some((Err(e), st));
        }
        let first = match st.held.take() {
            Some(r) => r,
            None => match st.refs.next().await? {
                Ok(r) => r,
                Err(e) => return Some((Err(e), st)),
            },
        };
        let mut used = PackUse {
            pack: first.pack,
            refs: vec![first],
        };
        loop {
            match st.refs.next().await {
                None => break,
                Some(Err(e)) => {
                    st.failed = Some(e);
                    break;
                }
                Some(Ok(r)) if r.pack == used.pack => used.refs.push(r),
                Some(Ok(r)) => {
                    st.held = Some(r);
                    break;
                }
            }
        }
        Some((Ok(used), st))
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(pack: u8, offset: u64, length: u64) -> PackRef {
        PackRef {
            pack: [pack; 32],
            offset,
            length,
            sha256: [offset as u8; 32],
        }
    }

    #[tokio::test]
    async fn references_group_by_pack_and_count_each_byte_once() {
        let refs = vec![
            r(1, 8, 10),
            r(1, 18, 5),
            r(1, 20, 10),
            r(2, 8, 4),
            r(3, 100, 1),
        ];
        let uses: Vec<PackUse> = by_pack(stream::iter(refs.into_iter().map(Ok::<_, String>)))
            .try_collect()
            .await
            .unwrap();
        assert_eq!(uses.len(), 3);
        assert_eq!((uses[0].end(), uses[0].referenced()), (30, 22));
        assert_eq!((uses[1].end(), uses[1].referenced()), (12, 4));
        assert_eq!(uses[2].refs.len(), 1);
        // Written and read back as a sorted run would be.
        let mut buf = vec![];
        uses[0].refs[1].write_to(&mut buf).unwrap();
        let back = PackRef::read_from(&mut &buf[..]).unwrap().unwrap();
        assert_eq!(back, uses[0].refs[1]);
    }

    #[test]
    fn a_pack_whose_every_blob_is_used_has_nothing_unused_however_small() {
        use sha2::{Digest, Sha256};
        for (n, len) in [(1usize, 5usize), (2, 30), (500, 200)] {
            let mut b = pack::PackBuilder::new(1 << 30);
            for i in 0..n {
                let bytes = vec![i as u8; len];
                b.push(Sha256::digest(&bytes).into(), &bytes);
            }
            let (bytes, located) = b.finish();
            let refs: Vec<PackRef> = located
                .iter()
                .map(|l| PackRef {
                    pack: [1; 32],
                    offset: l.offset,
                    length: l.length,
                    sha256: l.sha256,
                })
                .collect();
            let all = PackUse {
                pack: [1; 32],
                refs: refs.clone(),
            };
            assert_eq!(all.unused(bytes.len() as u64), 0, "{n} blobs of {len}");
            let half = PackUse {
                pack: [1; 32],
                refs: refs[..n / 2].to_vec(),
            };
            let gone = (n - n / 2) as u64 * len as u64;
            let unused = half.unused(bytes.len() as u64);
            assert!(
                // Conservative: the trailer records of used blobs are counted at their raw size.
                unused + 32 + gone / 10 >= gone && unused <= gone + 48 * (n - n / 2) as u64,
                "{n} blobs of {len}: {unused} unused, {gone} bytes of blobs gone"
            );
        }
    }
}
