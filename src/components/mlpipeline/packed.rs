//! Reading objects back out of packs (format v2): neighbouring manifest entries whose bytes
//! share a pack travel as one group, and a group's bytes come in as few ranged GETs as
//! [`pack::coalesce`] allows. A capture fills packs in key order, so a restore walking the
//! manifest in key order finds most neighbours in the same pack.

use futures::stream::{self, Stream, StreamExt};

use crate::repository::{layout, pack, Entry, Stored};
use crate::retry::retry;
use crate::storage::{Store, StoreError};

/// How neighbouring entries are grouped and read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grouping {
    /// Entries in one group at most.
    pub items: usize,
    /// Object bytes in one group at most (a group is held in memory while it is written).
    pub bytes: u64,
    /// Unwanted bytes read rather than paying another request.
    pub max_gap: u64,
    /// Packs gathering a group at once.
    pub open: usize,
}

impl Default for Grouping {
    fn default() -> Self {
        Grouping {
            items: 256,
            bytes: 4 << 20,
            max_gap: 64 << 10,
            open: 16,
        }
    }
}

/// The entry itself, for streams of bare entries.
pub fn itself(e: &Entry) -> &Entry {
    e
}

/// Entries grouped by the pack that holds their bytes (within `g`'s bounds), up to `g.open`
/// packs gathering at once, so that the objects a later backup rewrote (in newer packs,
/// interleaved by key with the old ones) do not cut an old pack's run into small reads. A
/// group leaves when full, when a pack beyond `g.open` needs its place (the oldest leaves), or
/// at the end. An entry not in a pack is a group of one, at once. Groups do not come in
/// manifest order. An error ends the stream after the groups gathered before it.
pub fn by_pack<T, S, E>(
    entries: S,
    g: Grouping,
    entry: fn(&T) -> &Entry,
) -> impl Stream<Item = Result<Vec<T>, E>> + Send + Unpin
where
    S: Stream<Item = Result<T, E>> + Send + Unpin,
    T: Send,
    E: Send,
{
    use std::collections::VecDeque;
    struct Gathering<T> {
        pack: String,
        items: Vec<T>,
        bytes: u64,
    }
    struct State<S, T, E> {
        entries: S,
        open: VecDeque<Gathering<T>>,
        ready: VecDeque<Result<Vec<T>, E>>,
        done: bool,
    }
    let state = State {
        entries,
        open: VecDeque::new(),
        ready: VecDeque::new(),
        done: false,
    };
    let open_max = g.open.max(1);
    Box::pin(stream::unfold(state, move |mut st| async move {
        loop {
            if let Some(r) = st.ready.pop_front() {
                return Some((r, st));
            }
            if st.done {
                return None;
            }
            let item = match st.entries.next().await {
                Some(Ok(item)) => item,
                end => {
                    st.done = true;
                    st.ready.extend(st.open.drain(..).map(|o| Ok(o.items)));
                    if let Some(Err(e)) = end {
                        st.ready.push_back(Err(e));
                    }
                    continue;
                }
            };
            let (size, pack) = match entry(&item).stored() {
                Stored::Packed { pack, .. } => (entry(&item).size, pack.to_string()),
                _ => {
                    st.ready.push_back(Ok(vec![item]));
                    continue;
                }
            };
            let at = match st.open.iter().position(|o| o.pack == pack) {
                Some(i) if st.open[i].bytes + size > g.bytes => {
                    let full = std::mem::take(&mut st.open[i].items);
                    st.ready.push_back(Ok(full));
                    st.open[i].bytes = 0;
                    i
                }
                Some(i) => i,
                None => {
                    if st.open.len() >= open_max {
                        let oldest = st.open.pop_front().expect("open_max is at least 1");
                        st.ready.push_back(Ok(oldest.items));
                    }
                    st.open.push_back(Gathering {
                        pack,
                        items: vec![],
                        bytes: 0,
                    });
                    st.open.len() - 1
                }
            };
            let o = &mut st.open[at];
            o.items.push(item);
            o.bytes += size;
            if o.items.len() >= g.items || o.bytes >= g.bytes {
                let full = st.open.remove(at).expect("just found");
                st.ready.push_back(Ok(full.items));
            }
        }
    }))
}

/// Visits the bytes `(offset, length)` of `pack` (by index into `wants`), each range read
/// once, through coalesced ranged GETs of at most `max_span` bytes each (a longer range gets
/// one of its own), each retried on its own. One span is in memory at a time.
pub async fn visit_ranges(
    repo: &Store,
    pack_id: &str,
    wants: &[(u64, u64)],
    (max_gap, max_span): (u64, u64),
    attempts: u32,
    mut visit: impl FnMut(usize, &[u8]),
) -> Result<(), StoreError> {
    let key = layout::pack_key(pack_id);
    let mut order: Vec<usize> = (0..wants.len()).collect();
    order.sort_by_key(|&i| wants[i]);
    let sorted: Vec<(u64, u64)> = order.iter().map(|&i| wants[i]).collect();
    for span in pack::coalesce(&sorted, max_gap, max_span) {
        let bytes = retry(attempts, &key, || {
            repo.get_range(&key, span.start, span.end)
        })
        .await?;
        for m in span.members {
            let (offset, length) = sorted[m];
            let at = (offset - span.start) as usize;
            visit(order[m], &bytes[at..at + length as usize]);
        }
    }
    Ok(())
}

/// The bytes `(offset, length)` of `pack`, in the order asked: [`visit_ranges`] collected
/// (the caller bounds how much it asks for at once).
pub async fn read_ranges(
    repo: &Store,
    pack_id: &str,
    wants: &[(u64, u64)],
    max_gap: u64,
    attempts: u32,
) -> Result<Vec<Vec<u8>>, StoreError> {
    let mut out: Vec<Vec<u8>> = vec![Vec::new(); wants.len()];
    let spans = (max_gap, u64::MAX);
    visit_ranges(repo, pack_id, wants, spans, attempts, |i, b| {
        out[i] = b.to_vec()
    })
    .await?;
    Ok(out)
}

/// The stored bytes of one entry, wherever they are (unchecked): one GET, or none for an
/// empty object. For looking inside a backup; bulk readers group by pack instead.
pub async fn read_entry(repo: &Store, e: &Entry) -> Result<Vec<u8>, StoreError> {
    match e.stored() {
        Stored::Empty => Ok(vec![]),
        Stored::Blob(sha) => repo.get_bytes(&crate::repository::blob_key(sha)).await,
        Stored::Packed { pack, offset } => {
            repo.get_range(&layout::pack_key(pack), offset, offset + e.size)
                .await
        }
    }
}

/// Whether `bytes` are the `length` bytes hashing to `sha256`; what they are if not.
pub fn checked_bytes(sha256: &[u8; 32], length: u64, bytes: &[u8]) -> Result<(), String> {
    use sha2::{Digest, Sha256};
    let got: [u8; 32] = Sha256::digest(bytes).into();
    if got != *sha256 || bytes.len() as u64 != length {
        return Err(format!(
            "{} bytes hashing to {}",
            bytes.len(),
            hex::encode(got)
        ));
    }
    Ok(())
}

/// Whether `bytes` are what entry `e` holds; where they came from and what they are if not.
pub fn checked(e: &Entry, bytes: &[u8]) -> Result<(), String> {
    let mut sha = [0u8; 32];
    let shaped = hex::decode_to_slice(&e.sha256, &mut sha).is_ok();
    match checked_bytes(&sha, e.size, bytes) {
        Ok(()) if shaped => Ok(()),
        Ok(()) => Err(format!("the manifest's hash {:?} is not a hash", e.sha256)),
        Err(what) => Err(format!(
            "{} holds {what}",
            e.stored_key().unwrap_or_default()
        )),
    }
}

/// The content hash of bytes `offset..offset + length` of a pack, streamed (a large blob is
/// never held in memory), each attempt from its first byte.
pub async fn hash_range(
    repo: &Store,
    pack_id: &str,
    (offset, length): (u64, u64),
    attempts: u32,
) -> Result<[u8; 32], StoreError> {
    use sha2::{Digest, Sha256};
    let key = layout::pack_key(pack_id);
    retry(attempts, &key, || async {
        let mut h = Sha256::new();
        let mut sink = crate::storage::TapWriter::new(tokio::io::sink(), |b: &[u8]| h.update(b));
        repo.get_range_stream(&key, offset, offset + length, &mut sink)
            .await?;
        Ok(h.finalize().into())
    })
    .await
}

/// The bytes of a group of entries that share one pack, in the group's order.
pub async fn read_group<T>(
    repo: &Store,
    group: &[T],
    entry: fn(&T) -> &Entry,
    g: Grouping,
    attempts: u32,
) -> Result<Vec<Vec<u8>>, StoreError> {
    let Some(Stored::Packed { pack, .. }) = group.first().map(|t| entry(t).stored()) else {
        return Ok(vec![]);
    };
    let pack = pack.to_string();
    let wants: Vec<(u64, u64)> = group
        .iter()
        .map(entry)
        .map(|e| match e.stored() {
            Stored::Packed { offset, .. } => (offset, e.size),
            _ => unreachable!("a group shares one pack"),
        })
        .collect();
    read_ranges(repo, &pack, &wants, g.max_gap, attempts).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::TryStreamExt;

    fn e(key: &str, pack: Option<&str>, offset: u64, size: u64) -> Entry {
        Entry {
            key: key.into(),
            size,
            etag: None,
            sha256: "00".repeat(32),
            content_type: "x".into(),
            metadata: Default::default(),
            pack: pack.map(str::to_string),
            offset: pack.map(|_| offset),
        }
    }

    #[tokio::test]
    async fn entries_of_one_pack_travel_together_within_bounds_across_interleaving() {
        let (a, b, c) = ("aa".repeat(32), "bb".repeat(32), "cc".repeat(32));
        let entries = vec![
            e("1", Some(&a), 8, 10),
            e("2", Some(&a), 18, 10),
            e("3", Some(&a), 28, 10),
            e("4", Some(&b), 8, 10),
            e("5", None, 0, 10),
            e("6", None, 0, 0),
            e("7", Some(&a), 38, 10),
            e("8", Some(&c), 8, 10),
            e("9", Some(&a), 48, 95),
        ];
        let groups = |g: Grouping| {
            let entries = entries.clone();
            async move {
                by_pack(
                    stream::iter(entries.into_iter().map(Ok::<_, String>)),
                    g,
                    |e| e,
                )
                .map_ok(|g| g.into_iter().map(|e| e.key).collect::<Vec<_>>())
                .try_collect::<Vec<_>>()
                .await
                .unwrap()
            }
        };
        let g = Grouping {
            items: 2,
            bytes: 100,
            max_gap: 0,
            open: 2,
        };
        // Full at two items; 5 and 6 (no pack) at once; 7 joins 3 across 4, 5 and 6; 9 needs a
        // third place, so the oldest gathering (b) leaves; the end sends the rest.
        assert_eq!(
            groups(g).await,
            [
                vec!["1", "2"],
                vec!["5"],
                vec!["6"],
                vec!["3", "7"],
                vec!["4"],
                vec!["8"],
                vec!["9"],
            ]
        );
        // One pack gathering at a time: every interleaved entry cuts a's run.
        let one = groups(Grouping { open: 1, ..g }).await;
        assert_eq!(one.iter().filter(|g| g.len() == 1).count(), 7, "{one:?}");
        // Bytes bound a group: 9 beside 1, 2, 3 and 7 would pass 100 bytes.
        let bytes = groups(Grouping {
            items: 10,
            open: 3,
            ..g
        })
        .await;
        assert!(
            bytes.contains(&vec!["1".to_string(), "2".into(), "3".into(), "7".into()]),
            "{bytes:?}"
        );
        assert!(bytes.contains(&vec!["9".to_string()]), "{bytes:?}");
        // An error comes after the groups gathered before it, then the stream ends.
        let with_error = stream::iter(vec![
            Ok(entries[0].clone()),
            Ok(entries[3].clone()),
            Err("cut".to_string()),
            Ok(entries[2].clone()),
        ]);
        let got: Vec<Result<usize, String>> = by_pack(with_error, Grouping::default(), |e| e)
            .map(|r| r.map(|g| g.len()))
            .collect()
            .await;
        assert_eq!(got, [Ok(1), Ok(1), Err("cut".into())]);
    }

    #[tokio::test]
    async fn ranges_come_back_in_the_order_asked_from_few_requests() {
        let dir = tempfile::tempdir().unwrap();
        let repo = Store::local(dir.path());
        let id = "cd".repeat(32);
        let body: Vec<u8> = (0..1000u32).map(|i| (i % 251) as u8).collect();
        repo.put_bytes(&layout::pack_key(&id), &body, "x")
            .await
            .unwrap();
        let wants = [(500, 10), (10, 5), (20, 30), (990, 10)];
        let got = read_ranges(&repo, &id, &wants, 16, 1).await.unwrap();
        for (w, g) in wants.iter().zip(&got) {
            assert_eq!(g[..], body[w.0 as usize..(w.0 + w.1) as usize]);
        }
        let past = read_ranges(&repo, &id, &[(995, 10)], 0, 1).await;
        assert!(past.is_err(), "a range past the pack's end is an error");
    }
}
