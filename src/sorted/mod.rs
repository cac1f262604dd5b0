//! Sorted streams, the engine under every command that walks a bucket: a merge-join of two
//! key-ordered streams (rclone's march), an external sort for what does not arrive in order
//! (content hashes), and a spill list for what must wait until a pass ends (deletes).
//! Memory holds a bounded number of records whatever the stream's length.

mod extsort;
mod join;
mod keylog;
mod table;

pub use extsort::{read_or_end, Hash, HashSorter, Record, Sorter};
pub use join::{join, Joined, Keyed};
pub use keylog::KeyLog;
pub use table::{Table, TableWriter};

/// Keys asked for in one listing request (S3 returns at most 1000).
pub const LIST_PAGE: u16 = 1000;
/// Objects a bucket copy may have started ahead of the oldest one not yet finished: the
/// window in which the manifest is put back in key order.
pub const QUEUE_DEPTH: u32 = 4096;
/// Bytes of records an external sort holds in memory before it writes a sorted run to disk
/// (about 200,000 content hashes, or 100,000 listed keys).
pub const SORT_MEMORY: u64 = 16 << 20;
/// Keys deleted in one request (S3's DeleteObjects takes at most 1000).
pub const DELETE_BATCH: u16 = 1000;

/// The sizes of the streamed engine's stages: what bounds memory whatever the bucket holds.
/// Tests set them small so that many pages, sorted runs and batches happen on little data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Streaming {
    pub page_size: usize,
    pub queue_depth: usize,
    pub sort_memory: usize,
    pub delete_batch: usize,
}

impl Default for Streaming {
    fn default() -> Self {
        Streaming {
            page_size: LIST_PAGE.into(),
            queue_depth: QUEUE_DEPTH as usize,
            sort_memory: SORT_MEMORY as usize,
            delete_batch: DELETE_BATCH.into(),
        }
    }
}
