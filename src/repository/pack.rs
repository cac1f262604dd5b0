//! Pack files, the unit of storage of repository format v2 (docs/FORMAT.md): many small blobs
//! in one object, so that a backup of a million small objects costs hundreds of PUTs and a
//! restore hundreds of ranged GETs, not a million of each.
//!
//! A pack, all integers little-endian:
//!
//! ```text
//! header   8 bytes   "BAPACK" 0x00 0x02          magic, format version
//! blobs    each blob's bytes, back to back, as the object held them
//! trailer  one zstd frame of 48-byte records, in the order the blobs were appended:
//!          content sha256 (32) | offset in the pack (8) | length (8)
//! footer   24 bytes  trailer length (8) | blob count (8) | "BAPKEND2"
//! ```
//!
//! The trailer makes every pack self-describing: the repository's index files say the same
//! thing, and can be rebuilt from the packs alone. Reading a pack's trailer takes two ranged
//! GETs (the footer, then the trailer), never the whole pack.

use rand::RngCore;

/// The first bytes of every pack.
pub const MAGIC: &[u8; 8] = b"BAPACK\x00\x02";
/// The last bytes of every pack.
pub const FOOTER_MAGIC: &[u8; 8] = b"BAPKEND2";
pub const HEADER_LEN: u64 = MAGIC.len() as u64;
pub const FOOTER_LEN: u64 = 24;
pub const RECORD_LEN: usize = 48;
/// zstd level of the trailer: content hashes do not compress; offsets and lengths do.
const TRAILER_LEVEL: i32 = 3;

/// Where one blob sits in a pack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Located {
    pub sha256: [u8; 32],
    pub offset: u64,
    pub length: u64,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PackError {
    #[error("not a pack: {0}")]
    NotAPack(String),
    #[error("the pack's trailer is damaged: {0}")]
    Trailer(String),
}

/// A new pack id: random, so that a pack can be named before its content is known (the plan
/// for large objects is to stream each into a pack of its own while it is hashed). Blobs are
/// found by content hash through the manifests and index files, never by the pack's name.
pub fn new_pack_id() -> String {
    let mut b = [0u8; 32];
    rand::rng().fill_bytes(&mut b);
    hex::encode(b)
}

/// A pack being filled in memory, up to about `target` bytes.
#[derive(Debug)]
pub struct PackBuilder {
    buf: Vec<u8>,
    blobs: Vec<Located>,
    target: u64,
}

impl PackBuilder {
    pub fn new(target: u64) -> PackBuilder {
        // Room for the trailer too: growing a full pack's buffer would copy it, holding it
        // twice for a moment (a 16-record trailer is under 1 KiB; a record is 48 bytes).
        let room = target.min(64 << 20) + target.min(64 << 20) / 16 + 4096;
        let mut buf = Vec::with_capacity(room as usize);
        buf.extend_from_slice(MAGIC);
        PackBuilder {
            buf,
            blobs: vec![],
            target,
        }
    }

    /// Appends one blob (never empty: an empty object needs no bytes stored); where it now sits.
    pub fn push(&mut self, sha256: [u8; 32], bytes: &[u8]) -> Located {
        assert!(!bytes.is_empty(), "empty blobs are not packed");
        let at = Located {
            sha256,
            offset: self.buf.len() as u64,
            length: bytes.len() as u64,
        };
        self.buf.extend_from_slice(bytes);
        self.blobs.push(at);
        at
    }

    /// Whether a blob of `length` bytes still fits below the target. An empty pack takes any
    /// blob, so a blob larger than the target gets a pack of its own.
    pub fn fits(&self, length: u64) -> bool {
        self.blobs.is_empty() || self.buf.len() as u64 + length <= self.target
    }

    pub fn is_empty(&self) -> bool {
        self.blobs.is_empty()
    }

    /// Blob bytes held so far.
    pub fn blob_bytes(&self) -> u64 {
        self.buf.len() as u64 - HEADER_LEN
    }

    pub fn blobs(&self) -> &[Located] {
        &self.blobs
    }

    /// The whole pack, trailer and footer included, and its blobs.
    pub fn finish(self) -> (Vec<u8>, Vec<Located>) {
        let mut buf = self.buf;
        let trailer = encode_trailer(&self.blobs);
        buf.reserve_exact(trailer.len() + FOOTER_LEN as usize);
        buf.extend_from_slice(&trailer);
        buf.extend_from_slice(&footer(trailer.len() as u64, self.blobs.len() as u64));
        (buf, self.blobs)
    }
}

/// A pack of one blob, made while the blob streams through: the header, the blob's bytes as
/// `inner` yields them (hashed and counted on the way), then the trailer and footer once
/// `inner` ends. A large object goes up this way, straight from the source GET into a
/// multipart upload, with no spool file: the pack is named (randomly) before its content is
/// known, which a content-addressed blob cannot be.
pub struct SoloPack<R> {
    inner: R,
    /// Header bytes not yet given out; then the tail's.
    head: usize,
    hasher: sha2::Sha256,
    length: u64,
    tail: Option<Vec<u8>>,
    tail_at: usize,
    located: Option<Located>,
}

impl<R> SoloPack<R> {
    pub fn new(inner: R) -> SoloPack<R> {
        SoloPack {
            inner,
            head: 0,
            hasher: sha2::Digest::new(),
            length: 0,
            tail: None,
            tail_at: 0,
            located: None,
        }
    }

    /// Where the blob sits, once the whole pack has been read.
    pub fn located(&self) -> Option<Located> {
        self.located
    }

    /// The pack's size: header, blob, trailer, footer (known once the blob has ended).
    pub fn pack_len(&self) -> Option<u64> {
        self.tail
            .as_ref()
            .map(|t| HEADER_LEN + self.length + t.len() as u64)
    }

    /// The pack's size for a blob of `length` bytes, before it is made: for the part size.
    pub fn expected_len(length: u64) -> u64 {
        HEADER_LEN + length + 128 + FOOTER_LEN
    }
}

impl<R: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for SoloPack<R> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        use sha2::Digest;
        use std::task::Poll;
        let this = &mut *self;
        if this.head < MAGIC.len() {
            let n = (MAGIC.len() - this.head).min(buf.remaining());
            buf.put_slice(&MAGIC[this.head..this.head + n]);
            this.head += n;
            return Poll::Ready(Ok(()));
        }
        if this.tail.is_none() {
            let before = buf.filled().len();
            match std::pin::Pin::new(&mut this.inner).poll_read(cx, buf) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(())) => {}
            }
            let got = &buf.filled()[before..];
            if !got.is_empty() {
                this.hasher.update(got);
                this.length += got.len() as u64;
                return Poll::Ready(Ok(()));
            }
            if this.length == 0 {
                return Poll::Ready(Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "an empty blob is never packed",
                )));
            }
            let at = Located {
                sha256: std::mem::take(&mut this.hasher).finalize().into(),
                offset: HEADER_LEN,
                length: this.length,
            };
            let trailer = encode_trailer(&[at]);
            let mut tail = trailer.clone();
            tail.extend_from_slice(&footer(trailer.len() as u64, 1));
            this.tail = Some(tail);
            this.located = Some(at);
        }
        let tail = this.tail.as_ref().expect("set above");
        let n = (tail.len() - this.tail_at).min(buf.remaining());
        buf.put_slice(&tail[this.tail_at..this.tail_at + n]);
        this.tail_at += n;
        Poll::Ready(Ok(()))
    }
}

/// The trailer of a pack holding `blobs`.
pub fn encode_trailer(blobs: &[Located]) -> Vec<u8> {
    let mut raw = Vec::with_capacity(blobs.len() * RECORD_LEN);
    for b in blobs {
        raw.extend_from_slice(&b.sha256);
        raw.extend_from_slice(&b.offset.to_le_bytes());
        raw.extend_from_slice(&b.length.to_le_bytes());
    }
    zstd::bulk::compress(&raw, TRAILER_LEVEL).expect("compressing into memory does not fail")
}

/// The footer closing a pack whose trailer is `trailer_len` bytes and holds `count` blobs.
pub fn footer(trailer_len: u64, count: u64) -> [u8; FOOTER_LEN as usize] {
    let mut f = [0u8; FOOTER_LEN as usize];
    f[..8].copy_from_slice(&trailer_len.to_le_bytes());
    f[8..16].copy_from_slice(&count.to_le_bytes());
    f[16..].copy_from_slice(FOOTER_MAGIC);
    f
}

/// The trailer's length and the blob count, from the last [`FOOTER_LEN`] bytes of a pack of
/// `pack_len` bytes.
pub fn parse_footer(footer: &[u8], pack_len: u64) -> Result<(u64, u64), PackError> {
    if footer.len() as u64 != FOOTER_LEN || &footer[16..] != FOOTER_MAGIC {
        return Err(PackError::NotAPack(
            "its last bytes are not a pack footer".into(),
        ));
    }
    let trailer_len = u64::from_le_bytes(footer[..8].try_into().expect("8 bytes"));
    let count = u64::from_le_bytes(footer[8..16].try_into().expect("8 bytes"));
    if trailer_len > pack_len.saturating_sub(HEADER_LEN + FOOTER_LEN) {
        return Err(PackError::Trailer(format!(
            "a trailer of {trailer_len} bytes does not fit a pack of {pack_len}"
        )));
    }
    Ok((trailer_len, count))
}

/// Where the trailer of a pack of `pack_len` bytes starts, given its length.
pub fn trailer_start(pack_len: u64, trailer_len: u64) -> u64 {
    pack_len - FOOTER_LEN - trailer_len
}

/// The blobs a trailer names, checked against the pack: `count` records, each inside the
/// blob area, in order and not overlapping.
pub fn parse_trailer(trailer: &[u8], count: u64, pack_len: u64) -> Result<Vec<Located>, PackError> {
    use std::io::Read;
    let bad = PackError::Trailer;
    let end = pack_len
        .checked_sub(FOOTER_LEN + trailer.len() as u64)
        .filter(|&e| e >= HEADER_LEN)
        .ok_or_else(|| {
            bad(format!(
                "a trailer of {} bytes does not fit a pack of {pack_len}",
                trailer.len()
            ))
        })?;
    // Blobs are never empty (an empty object needs no bytes stored), so the blob area holds at
    // most one blob a byte: a bound on a damaged count before anything is decompressed.
    if count > end - HEADER_LEN {
        return Err(bad(format!("{count} blobs cannot fit {pack_len} bytes")));
    }
    let want = count * RECORD_LEN as u64;
    // Read through a decoder with a limit: memory follows the bytes really there, not the count.
    let mut raw = Vec::new();
    zstd::stream::read::Decoder::new(trailer)
        .map_err(|e| bad(e.to_string()))?
        .take(want + 1)
        .read_to_end(&mut raw)
        .map_err(|e| bad(e.to_string()))?;
    if raw.len() as u64 != want {
        return Err(bad(format!(
            "{} bytes of records for {count} blobs",
            raw.len()
        )));
    }
    let mut at = HEADER_LEN;
    let mut out = Vec::with_capacity(count as usize);
    for r in raw.chunks_exact(RECORD_LEN) {
        let b = Located {
            sha256: r[..32].try_into().expect("32 bytes"),
            offset: u64::from_le_bytes(r[32..40].try_into().expect("8 bytes")),
            length: u64::from_le_bytes(r[40..48].try_into().expect("8 bytes")),
        };
        let past = b.offset.checked_add(b.length);
        if b.length == 0 || b.offset < at || past.is_none_or(|p| p > end) {
            return Err(bad(format!(
                "blob {} at {}+{} is out of order or outside the blobs ({at}..{end})",
                hex::encode(b.sha256),
                b.offset,
                b.length
            )));
        }
        at = b.offset + b.length;
        out.push(b);
    }
    Ok(out)
}

/// One ranged GET: bytes `start..end` of a pack, covering the blobs `members` (indexes into
/// the ranges it was planned from).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Span {
    pub start: u64,
    pub end: u64,
    pub members: Vec<usize>,
}

/// Plans the GETs for `ranges` (offset, length) of one pack, sorted by offset: neighbours with
/// at most `max_gap` unwanted bytes between them share a request, up to `max_span` bytes a
/// request (a single range longer than that still gets one of its own). Reading a few bytes
/// too many costs less than a request.
pub fn coalesce(ranges: &[(u64, u64)], max_gap: u64, max_span: u64) -> Vec<Span> {
    let mut out: Vec<Span> = vec![];
    for (i, &(offset, length)) in ranges.iter().enumerate() {
        let end = offset + length;
        let joins = out.last().is_some_and(|s| {
            offset >= s.start
                && offset <= s.end.saturating_add(max_gap)
                && end.max(s.end) - s.start <= max_span
        });
        match out.last_mut() {
            Some(s) if joins => {
                s.end = s.end.max(end);
                s.members.push(i);
            }
            _ => {
                let span = Span {
                    start: offset,
                    end,
                    members: vec![i],
                };
                out.push(span);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::{Digest, Sha256};

    fn sha(b: &[u8]) -> [u8; 32] {
        Sha256::digest(b).into()
    }

    fn pack_of(blobs: &[&[u8]], target: u64) -> (Vec<u8>, Vec<Located>) {
        let mut p = PackBuilder::new(target);
        for b in blobs {
            assert!(p.fits(b.len() as u64));
            p.push(sha(b), b);
        }
        p.finish()
    }

    /// The trailer read back the way a reader does: footer, then trailer, by range.
    fn read_back(pack: &[u8]) -> Result<Vec<Located>, PackError> {
        let n = pack.len() as u64;
        let (tl, count) = parse_footer(&pack[(n - FOOTER_LEN) as usize..], n)?;
        let start = trailer_start(n, tl) as usize;
        parse_trailer(&pack[start..start + tl as usize], count, n)
    }

    #[test]
    fn a_pack_names_its_blobs_and_each_reads_back_by_range() {
        let blobs: Vec<Vec<u8>> = (1..50u8).map(|i| vec![i; i as usize * 37]).collect();
        let refs: Vec<&[u8]> = blobs.iter().map(Vec::as_slice).collect();
        let (pack, located) = pack_of(&refs, 1 << 20);
        assert_eq!(&pack[..8], MAGIC);
        assert_eq!(&pack[pack.len() - 8..], FOOTER_MAGIC);
        let back = read_back(&pack).unwrap();
        assert_eq!(back, located);
        for (b, l) in blobs.iter().zip(&back) {
            let got = &pack[l.offset as usize..(l.offset + l.length) as usize];
            assert_eq!(got, b.as_slice());
            assert_eq!(sha(got), l.sha256);
        }
    }

    #[test]
    fn a_full_pack_takes_no_more_but_an_empty_one_takes_anything() {
        let mut p = PackBuilder::new(100);
        assert!(p.fits(1_000), "an empty pack takes a blob past the target");
        p.push(sha(b"a"), &[1; 60]);
        assert!(p.fits(32), "8 header bytes + 60 + 32 = the target");
        assert!(!p.fits(33));
        assert_eq!(p.blob_bytes(), 60);
    }

    #[test]
    fn damaged_footers_and_trailers_are_named_not_trusted() {
        let (pack, _) = pack_of(&[b"one", b"two", b"three"], 1 << 20);
        let n = pack.len();
        let mut bad = pack.clone();
        bad[n - 1] ^= 1;
        assert!(matches!(read_back(&bad), Err(PackError::NotAPack(_))));
        // A count that disagrees with the records.
        let mut bad = pack.clone();
        bad[n - 16] += 1;
        assert!(matches!(read_back(&bad), Err(PackError::Trailer(_))));
        // A trailer length past the pack.
        let mut bad = pack.clone();
        bad[n - 24..n - 16].copy_from_slice(&(n as u64).to_le_bytes());
        assert!(matches!(read_back(&bad), Err(PackError::Trailer(_))));
        // A trailer length near the end of u64 neither wraps nor passes.
        let mut bad = pack.clone();
        bad[n - 24..n - 16].copy_from_slice(&(u64::MAX - 3).to_le_bytes());
        assert!(matches!(read_back(&bad), Err(PackError::Trailer(_))));
        assert!(
            parse_trailer(&[0; 40], 0, 30).is_err(),
            "a trailer longer than its pack"
        );
        // A record pointing outside the blobs.
        let l = Located {
            sha256: [7; 32],
            offset: 4,
            length: 3,
        };
        let t = encode_trailer(&[l]);
        let mut p = MAGIC.to_vec();
        p.extend_from_slice(b"xyz");
        p.extend_from_slice(&t);
        p.extend_from_slice(&footer(t.len() as u64, 1));
        let e = read_back(&p).unwrap_err();
        assert!(e.to_string().contains("out of order or outside"), "{e}");
        // A huge count is refused before anything is decompressed.
        let e = parse_trailer(&t, u64::MAX, p.len() as u64).unwrap_err();
        assert!(e.to_string().contains("cannot fit"), "{e}");
        // An empty blob is never packed, so a record of one is damage.
        let t = encode_trailer(&[Located {
            sha256: [7; 32],
            offset: 8,
            length: 0,
        }]);
        assert!(parse_trailer(&t, 1, 100).is_err());
    }

    #[test]
    fn neighbours_share_a_request_and_gaps_or_size_split_them() {
        let r = [(8, 10), (18, 5), (30, 2), (100, 50), (150, 400)];
        let s = coalesce(&r, 8, 1 << 20);
        assert_eq!(
            s,
            vec![
                Span {
                    start: 8,
                    end: 32,
                    members: vec![0, 1, 2]
                },
                Span {
                    start: 100,
                    end: 550,
                    members: vec![3, 4]
                },
            ]
        );
        // No gap allowed: only touching ranges merge.
        assert_eq!(coalesce(&r, 0, 1 << 20).len(), 3);
        // A span limit splits a run of neighbours; a range past the limit still gets its own.
        let s = coalesce(&r, 8, 100);
        assert_eq!(s.len(), 3);
        assert_eq!(s[2].members, vec![4]);
        assert!(coalesce(&[], 8, 8).is_empty());
    }

    #[test]
    fn pack_ids_are_random_hex_of_a_hash_length() {
        let (a, b) = (new_pack_id(), new_pack_id());
        assert_ne!(a, b);
        assert!(crate::repository::is_sha256(&a), "{a}");
    }

    #[tokio::test]
    async fn a_solo_pack_streams_one_blob_that_reads_back_like_any_pack() {
        use tokio::io::AsyncReadExt;
        let blob: Vec<u8> = (0..300_000u32).map(|i| (i % 253) as u8).collect();
        // A reader that yields a few bytes at a time, as a network stream does.
        let slow = tokio_util::io::StreamReader::new(futures::stream::iter(
            blob.chunks(7_001)
                .map(|c| Ok::<_, std::io::Error>(bytes::Bytes::copy_from_slice(c)))
                .collect::<Vec<_>>(),
        ));
        let mut solo = SoloPack::new(slow);
        let mut pack = vec![];
        solo.read_to_end(&mut pack).await.unwrap();
        let at = solo.located().unwrap();
        assert_eq!(solo.pack_len(), Some(pack.len() as u64));
        assert!(pack.len() as u64 <= SoloPack::<()>::expected_len(blob.len() as u64));
        assert_eq!(at.offset, HEADER_LEN);
        assert_eq!(at.length, blob.len() as u64);
        let sha: [u8; 32] = <sha2::Sha256 as sha2::Digest>::digest(&blob).into();
        assert_eq!(at.sha256, sha);
        let len = pack.len() as u64;
        let (trailer_len, count) =
            parse_footer(&pack[pack.len() - FOOTER_LEN as usize..], len).unwrap();
        let start = trailer_start(len, trailer_len) as usize;
        let records =
            parse_trailer(&pack[start..pack.len() - FOOTER_LEN as usize], count, len).unwrap();
        assert_eq!(records, [at]);
        // Within what prune allows a referenced blob's trailer record (a zstd frame's own 32
        // bytes and the record): a pack of one blob is never taken for a sparse one.
        assert!(trailer_len <= 32 + RECORD_LEN as u64, "{trailer_len}");
        assert_eq!(&pack[HEADER_LEN as usize..][..blob.len()], &blob[..]);
        // Nothing to pack is an error, not an empty pack.
        let mut empty = SoloPack::new(&b""[..]);
        assert!(empty.read_to_end(&mut vec![]).await.is_err());
    }
}
