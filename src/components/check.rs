//! Checking a backup's parts: the vocabulary every component's check shares, and the trait
//! each component implements so that `verify-backup` (and restore's preflight) can walk them
//! all without knowing what they are.

use std::path::Path;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::juju::JujuCli;
use crate::progress::Progress;
use crate::storage::Store;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Light,
    /// Everything read back; of the bucket's blobs, those the sample picks.
    ReadData(Sample),
}

impl Mode {
    pub fn as_str(&self) -> &'static str {
        match self {
            Mode::Light => "light",
            Mode::ReadData(_) => "read-data",
        }
    }

    pub fn reads_data(&self) -> bool {
        matches!(self, Mode::ReadData(_))
    }
}

impl Serialize for Mode {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct Problem {
    pub component: String,
    pub key: String,
    pub detail: String,
}

impl Verification {
    /// A check of backup `backup_id` about to run now: nothing found, nothing checked yet.
    pub fn new(backup_id: &str, mode: Mode) -> Verification {
        Verification {
            backup_id: backup_id.into(),
            mode,
            at: Utc::now(),
            passed: false,
            problems: vec![],
            objects_checked: 0,
            bytes_read: 0,
            sample: None,
            blobs_read: 0,
        }
    }
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}: {}", self.component, self.key, self.detail)
    }
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct Verification {
    pub backup_id: String,
    pub mode: Mode,
    pub at: DateTime<Utc>,
    pub passed: bool,
    pub problems: Vec<Problem>,
    pub objects_checked: u64,
    pub bytes_read: u64,
    /// The share of the bucket's blobs `--read-data` read back, when not all of them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sample: Option<String>,
    /// Blobs of the bucket read back and re-hashed.
    pub blobs_read: u64,
}

/// A finding of a check, named by component and object key.
pub fn problem(component: &str, key: &str, detail: impl Into<String>) -> Problem {
    Problem {
        component: component.into(),
        key: key.into(),
        detail: detail.into(),
    }
}

/// Problems named up to a bound and all of them counted: one lost pack can take thousands of
/// objects with it, and a report must stay readable (and fit an action's results).
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct Findings {
    pub named: Vec<Problem>,
    pub total: u64,
}

impl Findings {
    /// Problems named in full; the rest are counted.
    pub const NAMED: usize = 100;

    pub fn push(&mut self, p: Problem) {
        self.total += 1;
        if self.named.len() < Self::NAMED {
            self.named.push(p);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.total == 0
    }
}

/// What a check works with.
pub struct CheckContext<'a> {
    pub dest: &'a Store,
    /// mysql-k8s is asked through juju; without a client its parts are reported unchecked.
    pub juju: Option<&'a JujuCli>,
    pub mode: Mode,
    /// Where a part may be read back to (MLMD is opened by SQLite from a file), and where
    /// sorted runs spill.
    pub spool: &'a Path,
    pub streaming: crate::context::Streaming,
    pub progress: &'a Progress,
}

/// Which blobs `--read-data` reads back. Every other check (the statefile, the manifest, each
/// blob's presence and size, MLMD, the mysql-k8s markers) runs in full whatever the sample.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Sample {
    #[default]
    All,
    /// About this many millionths of the blobs, drawn afresh on each run (`5%`): repeated
    /// runs cover different blobs.
    Share { per_million: u32, seed: u64 },
    /// Slice `n` of `t`, by content hash (`2/10`): the runs 1/t to t/t read every blob once
    /// between them, the same blobs each time for the same slice.
    Slice { n: u32, t: u32 },
}

impl Sample {
    /// Parses `5%`, `0.5%` or `2/10`; the message names what was wrong and what is accepted.
    pub fn parse(s: &str) -> Result<Sample, String> {
        let s = s.trim();
        let hint = "give a share such as 5% (0.0001% to 100%) or a slice such as 2/10";
        if let Some(pct) = s.strip_suffix('%') {
            let p: f64 = pct
                .trim()
                .parse()
                .map_err(|_| format!("sample {s:?} is not a percentage: {hint}"))?;
            let per_million = (p * 10_000.0).round();
            if !(1.0..=1_000_000.0).contains(&per_million) || !p.is_finite() {
                return Err(format!("sample {s:?} is out of range: {hint}"));
            }
            return Ok(Sample::Share {
                per_million: per_million as u32,
                seed: rand::random(),
            });
        }
        if let Some((n, t)) = s.split_once('/') {
            let (n, t) = match (n.trim().parse::<u32>(), t.trim().parse::<u32>()) {
                (Ok(n), Ok(t)) => (n, t),
                _ => return Err(format!("sample {s:?} is not a slice n/t: {hint}")),
            };
            if t == 0 || n == 0 || n > t {
                return Err(format!(
                    "sample {s:?}: a slice n/t needs 1 ≤ n ≤ t (1/{t} to {t}/{t} cover every blob once): {hint}"
                ));
            }
            return Ok(Sample::Slice { n, t });
        }
        Err(format!(
            "sample {s:?} is neither a share nor a slice: {hint}"
        ))
    }

    /// Whether the blob with this content hash is read back. Content hashes are uniform, so
    /// the first eight bytes are a fair draw; the seed makes each run's share a different one.
    pub fn picks(&self, sha256: &[u8; 32]) -> bool {
        let h = u64::from_be_bytes(sha256[..8].try_into().expect("eight bytes"));
        match *self {
            Sample::All => true,
            Sample::Share { per_million, seed } => {
                mix(h ^ seed) % 1_000_000 < u64::from(per_million)
            }
            Sample::Slice { n, t } => h % u64::from(t) == u64::from(n - 1),
        }
    }

    /// The same share with a new draw: a schedule parsed once still reads other blobs each run.
    pub fn fresh(&self) -> Sample {
        match *self {
            Sample::Share { per_million, .. } => Sample::Share {
                per_million,
                seed: rand::random(),
            },
            other => other,
        }
    }

    pub fn is_all(&self) -> bool {
        *self == Sample::All
    }
}

impl std::fmt::Display for Sample {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            Sample::All => f.write_str("all"),
            Sample::Share { per_million, .. } => {
                write!(f, "{}%", f64::from(per_million) / 10_000.0)
            }
            Sample::Slice { n, t } => write!(f, "{n}/{t}"),
        }
    }
}

/// splitmix64's finaliser: a seed xor-ed into a hash must still spread evenly.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hash(i: u64) -> [u8; 32] {
        use sha2::Digest;
        sha2::Sha256::digest(i.to_le_bytes()).into()
    }

    #[test]
    fn parses_shares_and_slices_and_names_what_is_wrong() {
        assert!(matches!(
            Sample::parse("5%"),
            Ok(Sample::Share {
                per_million: 50_000,
                ..
            })
        ));
        assert!(matches!(
            Sample::parse(" 0.5 %"),
            Ok(Sample::Share {
                per_million: 5_000,
                ..
            })
        ));
        assert_eq!(Sample::parse("2/10"), Ok(Sample::Slice { n: 2, t: 10 }));
        assert_eq!(Sample::parse("2/10").unwrap().to_string(), "2/10");
        assert_eq!(Sample::parse("12.5%").unwrap().to_string(), "12.5%");
        for bad in [
            "0%", "101%", "-1%", "nan%", "x%", "0/10", "11/10", "1/0", "a/b", "5", "",
        ] {
            let e = Sample::parse(bad).unwrap_err();
            assert!(e.contains("give a share such as 5%"), "{bad}: {e}");
        }
    }

    #[test]
    fn slices_cover_every_blob_once_and_shares_come_near_their_size() {
        let t = 7;
        for i in 0..2_000 {
            let h = hash(i);
            let hits = (1..=t)
                .filter(|&n| Sample::Slice { n, t }.picks(&h))
                .count();
            assert_eq!(hits, 1, "blob {i} is in {hits} slices");
        }
        let share = Sample::Share {
            per_million: 100_000,
            seed: 42,
        };
        let other = Sample::Share {
            per_million: 100_000,
            seed: 43,
        };
        let picked: Vec<bool> = (0..20_000).map(|i| share.picks(&hash(i))).collect();
        let n = picked.iter().filter(|&&p| p).count();
        assert!((1_800..=2_200).contains(&n), "10% of 20,000 picked {n}");
        let differ = (0..20_000)
            .filter(|&i| other.picks(&hash(i)) != picked[i as usize])
            .count();
        assert!(
            differ > 2_000,
            "another seed picks other blobs: {differ} differ"
        );
        assert!((0..100).all(|i| Sample::All.picks(&hash(i))));
    }
}
