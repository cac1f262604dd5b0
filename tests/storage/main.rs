//! Object storage and the repository against real S3 servers (SeaweedFS on loopback): stores,
//! statefiles, the round-trip property, TLS and server-side encryption.
//!
//! One test binary (ripgrep's way): one link for all of them.

#[path = "../common/mod.rs"]
mod common;

mod packs;
mod round_trip;
mod store_catalog;
mod streaming;
mod tls_sse;
