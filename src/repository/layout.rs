//! Where everything lives in the repository: every key backup-agent reads or writes is made
//! here, so the layout has one definition.

/// Everything backup-agent writes lives under this prefix of the store's root.
pub const REPO: &str = "backup-agent";

/// The statefile schema this agent writes and reads.
pub const SCHEMA_VERSION: u32 = 1;

pub fn backups_prefix() -> String {
    format!("{REPO}/backups/")
}

pub fn statefile_key(id: &str) -> String {
    format!("{REPO}/backups/{id}/statefile.json")
}

pub fn mlmd_key(id: &str) -> String {
    format!("{REPO}/backups/{id}/mlmd.db.zst")
}

pub fn manifest_key(id: &str) -> String {
    format!("{REPO}/backups/{id}/mlpipeline.manifest")
}

/// Everything backup-agent keeps: what prune walks.
pub fn repo_prefix() -> String {
    format!("{REPO}/")
}

/// Where every blob lives.
pub fn blobs_prefix() -> String {
    format!("{REPO}/blobs/")
}

/// Content-addressed blobs, shared by every backup: `blobs/ab/abcdef...`.
pub fn blob_key(sha256_hex: &str) -> String {
    format!("{REPO}/blobs/{}/{sha256_hex}", &sha256_hex[..2])
}

/// The content hash a blob key names, if `key` is exactly where that blob lives (anything
/// else under `blobs/` is not a blob: never taken for one, never deleted as one).
pub fn blob_of(key: &str) -> Option<&str> {
    let sha = key.rsplit('/').next()?;
    (super::is_sha256(sha) && key == blob_key(sha)).then_some(sha)
}

/// Pack files of repository format v2 (docs/FORMAT.md): `packs/ab/<64 hex>`, random ids.
pub fn packs_prefix() -> String {
    format!("{REPO}/packs/")
}

pub fn pack_key(id: &str) -> String {
    format!("{REPO}/packs/{}/{id}", &id[..2])
}

/// The pack id a key names, if `key` is exactly where that pack lives.
pub fn pack_of(key: &str) -> Option<&str> {
    let id = key.rsplit('/').next()?;
    (super::is_sha256(id) && key == pack_key(id)).then_some(id)
}

/// Index files of format v2: what the capture of one backup packed (docs/FORMAT.md).
pub fn index_prefix() -> String {
    format!("{REPO}/index/")
}

pub fn index_key(backup_id: &str) -> String {
    format!("{REPO}/index/{backup_id}.idx")
}

pub fn lock_key() -> String {
    format!("{REPO}/lock.json")
}

/// Written before a backup's statefile is deleted, deleted last: names what is still to go
/// (its mysql-k8s backups live in another bucket), so an interrupted forget is finished by
/// the next prune rather than leaked.
pub fn tombstone_key(id: &str) -> String {
    format!("{REPO}/backups/{id}/forgetting.json")
}

/// The object a backup writes, reads back and deletes to prove the destination takes writes.
pub fn probe_key(id: &str) -> String {
    format!("{REPO}/probe-{id}")
}
