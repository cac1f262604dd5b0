//! The mlpipeline manifest: one line per object of the bucket (key, size, ETag, content hash,
//! content type, user metadata), sorted by key, zstd-compressed JSON lines.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

/// One object of the bucket as a backup holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Entry {
    pub key: String,
    pub size: u64,
    /// The source's ETag when the object was read; `None` when it changed while being read, so
    /// the next backup reads it again.
    pub etag: Option<String>,
    pub sha256: String,
    pub content_type: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
}

/// The objects of one backup, sorted by key.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Manifest {
    pub entries: Vec<Entry>,
}

impl Manifest {
    /// zstd-compressed JSON lines: streams well and diffs well.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut text = Vec::new();
        for e in &self.entries {
            serde_json::to_writer(&mut text, e).expect("entry serializes");
            text.push(b'\n');
        }
        zstd::encode_all(&text[..], 3).expect("in-memory zstd")
    }

    pub fn parse(key: &str, bytes: &[u8]) -> Result<Manifest, String> {
        let text = zstd::decode_all(bytes).map_err(|e| format!("{key}: not a zstd stream: {e}"))?;
        let mut entries = vec![];
        for (i, line) in text
            .split(|b| *b == b'\n')
            .enumerate()
            .filter(|(_, l)| !l.is_empty())
        {
            let e: Entry =
                serde_json::from_slice(line).map_err(|e| format!("{key}: line {}: {e}", i + 1))?;
            catalog_key_check(&e.key).map_err(|why| format!("{key}: line {}: {why}", i + 1))?;
            if !is_sha256(&e.sha256) {
                return Err(format!(
                    "{key}: line {}: sha256 {:?} is not 64 lowercase hex digits",
                    i + 1,
                    e.sha256
                ));
            }
            entries.push(e);
        }
        Ok(Manifest { entries })
    }

    pub fn bytes(&self) -> u64 {
        self.entries.iter().map(|e| e.size).sum()
    }

    pub(crate) fn by_key(&self) -> HashMap<&str, &Entry> {
        self.entries.iter().map(|e| (e.key.as_str(), e)).collect()
    }
}

/// Hashes become object keys (`blobs/ab/ab...`): only the exact shape may pass.
pub fn is_sha256(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn catalog_key_check(key: &str) -> Result<(), String> {
    crate::storage::check_key(key).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifest_round_trips_and_refuses_escaping_keys() {
        let m = Manifest {
            entries: vec![Entry {
                key: "v2/artifacts/p/r/c/model.bin".into(),
                size: 3,
                etag: Some("abc".into()),
                sha256: "00".repeat(32),
                content_type: "application/octet-stream".into(),
                metadata: BTreeMap::from([("framework".into(), "pytorch".into())]),
            }],
        };
        assert_eq!(Manifest::parse("m", &m.to_bytes()).unwrap(), m);
        let bad = zstd::encode_all(
            &br#"{"key":"../../etc/passwd","size":1,"etag":null,"sha256":"00","content-type":"x"}"#
                [..],
            3,
        )
        .unwrap();
        assert!(Manifest::parse("m", &bad).unwrap_err().contains("line 1"));
        assert!(Manifest::parse("m", b"plain").is_err());
    }
}
