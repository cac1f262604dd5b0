//! Backup ids: UTC time to the second (so they sort by time) and a short random suffix.

use chrono::{DateTime, Utc};

use super::error::CatalogError;

/// A backup id: UTC time to the second (sortable) and a short random suffix (unique).
pub fn new_backup_id(now: DateTime<Utc>) -> String {
    use rand::Rng;
    let suffix: u32 = rand::rng().random();
    format!(
        "{}-{:06x}",
        now.format("%Y%m%dT%H%M%SZ"),
        suffix & 0xff_ffff
    )
}

/// Whether `id` has the shape of a backup id: it becomes part of object keys, so nothing else
/// (no `/`, no `..`) may pass.
/// A backup id given on a command line, checked before anything runs.
pub fn parse_backup_id(id: &str) -> Result<String, String> {
    if is_backup_id(id) {
        Ok(id.to_string())
    } else {
        Err(CatalogError::BadId { id: id.into() }.to_string())
    }
}

pub fn is_backup_id(id: &str) -> bool {
    let Some((time, suffix)) = id.split_once('-') else {
        return false;
    };
    chrono::NaiveDateTime::parse_from_str(time, "%Y%m%dT%H%M%SZ").is_ok()
        && suffix.len() == 6
        && suffix
            .chars()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_sort_by_time_and_refuse_path_characters() {
        let t = DateTime::parse_from_rfc3339("2026-11-23T06:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let id = new_backup_id(t);
        assert!(id.starts_with("20261123T060000Z-"), "{id}");
        assert!(is_backup_id(&id));
        for bad in [
            "",
            "../x",
            "20261123T060000Z-0a1b2c/../../",
            "20261123T060000Z",
            "latest",
            "20261123T060000Z-0A1B2C",
        ] {
            assert!(!is_backup_id(bad), "{bad:?}");
        }
    }
}
