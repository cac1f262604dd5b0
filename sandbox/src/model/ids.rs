//! Names and ids: the model's clock, unit names, and the uids and addresses that follow from
//! what created an object, so every process computes the same ones.

/// Milliseconds since the Unix epoch: the model's clock.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

pub fn split_unit(unit: &str) -> Option<(&str, u32)> {
    let (app, num) = unit.rsplit_once('/')?;
    Some((app, num.parse().ok()?))
}

/// A pod's uid follows from what created it, so every process that settles the model at any
/// time computes the same one.
pub fn pod_uid(app: &str, ordinal: u32, created_ms: u64) -> String {
    stable_uid(&format!("pod/{app}/{ordinal}/{created_ms}"))
}

pub fn stable_uid(seed: &str) -> String {
    use sha2::Digest;
    uuid_from(&sha2::Sha256::digest(seed.as_bytes()))
}

/// Pod IP of `<app>-<ordinal>`, the same in juju's status and the Kubernetes API.
pub fn pod_ip(app: &str, ordinal: u32) -> String {
    let h = app
        .bytes()
        .fold(7u32, |a, b| a.wrapping_mul(31).wrapping_add(b as u32));
    format!("10.1.{}.{}", 10 + h % 200, 10 + ordinal)
}

pub fn new_uid() -> String {
    use rand::Rng;
    let b: [u8; 16] = rand::rng().random();
    uuid_from(&b)
}

/// A UUID-shaped string from the first 16 bytes of `bytes` (random or a digest, for stable ids).
pub fn uuid_from(bytes: &[u8]) -> String {
    let h = hex::encode(&bytes[..16]);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}
