//! Sorted streams, the engine under every command that walks a bucket: a merge-join of two
//! key-ordered streams (rclone's march), an external sort for what does not arrive in order
//! (content hashes), and a spill list for what must wait until a pass ends (deletes).
//! Memory holds a bounded number of records whatever the stream's length.

mod extsort;
mod join;
mod keylog;

pub use extsort::{Hash, HashSorter, Record, Sorter};
pub use join::{join, Joined, Keyed};
pub use keylog::KeyLog;
