//! What a capture of the bucket will do, decided from the listing and the previous manifest.

use super::IN_MEMORY_MAX;
use crate::repository::{Entry, Manifest};
use crate::storage::ObjectInfo;

/// What a capture will do: the objects it keeps from the previous backup without reading
/// them (same key, size and ETag), and those it reads.
#[derive(Debug, Clone, Default)]
pub struct SyncPlan {
    pub listed: Vec<ObjectInfo>,
    pub unchanged: Vec<Entry>,
    pub to_read: Vec<ObjectInfo>,
}

impl SyncPlan {
    pub fn new(listed: Vec<ObjectInfo>, previous: Option<&Manifest>) -> SyncPlan {
        let prev = previous.map(Manifest::by_key).unwrap_or_default();
        let (mut unchanged, mut to_read) = (vec![], vec![]);
        for o in &listed {
            match (prev.get(o.key.as_str()), &o.etag) {
                (Some(p), Some(etag))
                    if p.size == o.size && p.etag.as_deref() == Some(etag.as_str()) =>
                {
                    unchanged.push((*p).clone())
                }
                _ => to_read.push(o.clone()),
            }
        }
        SyncPlan {
            listed,
            unchanged,
            to_read,
        }
    }

    pub fn bytes(&self) -> u64 {
        self.listed.iter().map(|o| o.size).sum()
    }

    pub fn read_bytes(&self) -> u64 {
        self.to_read.iter().map(|o| o.size).sum()
    }

    /// The largest object that goes through the spool, for the free-space check.
    pub fn largest_spooled(&self) -> u64 {
        self.to_read
            .iter()
            .map(|o| o.size)
            .filter(|s| *s > IN_MEMORY_MAX)
            .max()
            .unwrap_or(0)
    }
}
