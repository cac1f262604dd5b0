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

/// A backup's manifest once a repack has moved some of its blobs: a new key each time
/// (`generation` is random), so that the statefile switches from the old manifest to the new
/// one in a single write.
pub fn rewritten_manifest_key(id: &str, generation: &str) -> String {
    format!("{REPO}/backups/{id}/mlpipeline.{generation}.manifest")
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

/// Format v2: what the capture of backup `backup_id` packed (docs/FORMAT.md). It lives with
/// the backup, so it goes when the backup is forgotten, and a killed run's is a leftover.
pub fn index_key(backup_id: &str) -> String {
    index_beside(&manifest_key(backup_id))
}

/// The index file of the capture that writes `manifest_key`: in the same directory.
pub fn index_beside(manifest_key: &str) -> String {
    match manifest_key.rsplit_once('/') {
        Some((dir, _)) => format!("{dir}/packs.idx"),
        None => "packs.idx".into(),
    }
}

/// Where restore drills put their scratch copies of the bucket by default: one folder a drill,
/// named like a backup id, removed when the drill ends (and by the next drill after a kill).
pub fn drill_scratch_prefix() -> String {
    format!("{REPO}/drills/scratch")
}

/// The newest drill and the newest that passed, whatever backup they drilled.
pub fn drills_record_key() -> String {
    format!("{REPO}/drills/record.json")
}

/// Whether a scratch prefix keeps clear of the repository's own keys: anywhere outside
/// `backup-agent/`, or under `backup-agent/drills/`.
pub fn scratch_prefix_ok(prefix: &str) -> bool {
    let p = prefix.trim_matches('/');
    let within = |dir: &str| p == dir || p.starts_with(&format!("{dir}/"));
    !p.is_empty()
        && crate::storage::check_key(p).is_ok()
        && (!within(REPO) || within(&format!("{REPO}/drills")))
}

/// In a copy made by `backup-agent copy`: where the mysql-k8s backup objects written at
/// `location` (`<bucket>/<path>` of mysql-k8s's s3-integrator) are kept, since mysql-k8s's own
/// bucket is not the copy's. Databases that shared a location share it here too, so one
/// s3-integrator pointed at this prefix restores either.
pub fn copied_mysql_prefix(location: &str) -> String {
    let l = location.trim_matches('/');
    if l.is_empty() {
        format!("{REPO}/mysql/root")
    } else {
        format!("{REPO}/mysql/{l}")
    }
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
