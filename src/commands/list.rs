//! `list-backups`: the table of every backup in a repository, as people read it (the CLI
//! prints it; the charm's action returns the same rows).

use chrono::SecondsFormat;

use crate::repository::{self, CatalogError, Listed, Phase};
use crate::storage::Store;
use crate::units::{human_bytes, human_duration};

/// Where a backup exists when a secondary (off-site copy) is configured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Where {
    Primary,
    Secondary,
    Both,
}

impl Where {
    pub fn as_str(&self) -> &'static str {
        match self {
            Where::Primary => "primary",
            Where::Secondary => "secondary",
            Where::Both => "both",
        }
    }
}

/// Every backup of the primary and of the secondary, by id, with where each is: a backup
/// counts as on the secondary once its copy is completed there (a copy in progress has no
/// statefile yet). The primary's record is shown where both have one. A secondary that cannot
/// be read leaves the primary's list, with a warning saying why.
pub async fn list_both(
    primary: &Store,
    secondary: &Store,
) -> Result<(Vec<(Listed, Where)>, Option<String>), CatalogError> {
    use std::collections::BTreeMap;
    let id_of = |l: &Listed| match l {
        Listed::Backup(s) => s.backup_id.clone(),
        Listed::Unreadable { id, .. } => id.clone(),
    };
    let mut rows: BTreeMap<String, (Listed, Where)> = BTreeMap::new();
    for l in repository::list(primary).await? {
        rows.insert(id_of(&l), (l, Where::Primary));
    }
    let copies = match repository::list(secondary).await {
        Ok(c) => c,
        Err(e) => {
            let warning = format!(
                "the secondary {} cannot be listed ({e}): only the primary's backups are shown",
                secondary.describe()
            );
            return Ok((rows.into_values().collect(), Some(warning)));
        }
    };
    for l in copies {
        let copied = matches!(&l, Listed::Backup(s) if s.phase == Phase::Completed);
        match rows.get_mut(&id_of(&l)) {
            Some(row) if copied => row.1 = Where::Both,
            Some(_) => {}
            None => {
                rows.insert(id_of(&l), (l, Where::Secondary));
            }
        }
    }
    Ok((rows.into_values().collect(), None))
}

/// The `list-backups` table.
pub fn render_table(rows: &[Listed]) -> String {
    render(rows, None)
}

/// The `list-backups` table with where each backup is (primary, secondary, both).
pub fn render_located(rows: &[(Listed, Where)]) -> String {
    let (listed, at): (Vec<&Listed>, Vec<Where>) = rows.iter().map(|(l, w)| (l, *w)).unzip();
    render(&listed, Some(&at))
}

fn render<L: std::borrow::Borrow<Listed>>(rows: &[L], at: Option<&[Where]>) -> String {
    let mut lines = vec![[
        "ID".to_string(),
        "STARTED".into(),
        "DURATION".into(),
        "PHASE".into(),
        "SIZE".into(),
        "NEW".into(),
        "DRILLED".into(),
        "COMPONENTS".into(),
        "LABEL".into(),
    ]];
    for r in rows {
        lines.push(match r.borrow() {
            Listed::Backup(s) => [
                s.backup_id.clone(),
                s.started_at.to_rfc3339_opts(SecondsFormat::Secs, true),
                s.finished_at
                    .map(|f| human_duration((f - s.started_at).num_seconds()))
                    .unwrap_or_else(|| "-".into()),
                s.phase.as_str().into(),
                human_bytes(s.size()),
                human_bytes(s.new_bytes()),
                drilled(s),
                s.captured().join(","),
                s.label.clone(),
            ],
            Listed::Unreadable { id, .. } => [
                id.clone(),
                "-".into(),
                "-".into(),
                "unreadable".into(),
                "-".into(),
                "-".into(),
                "-".into(),
                "-".into(),
                "-".into(),
            ],
        });
    }
    if let Some(at) = at {
        // Before LABEL, the one column of free text.
        lines[0][8] = format!("{:<9}  {}", "WHERE", lines[0][8]);
        for (l, w) in lines.iter_mut().skip(1).zip(at) {
            l[8] = format!("{:<9}  {}", w.as_str(), l[8]);
        }
    }
    let widths: Vec<usize> = (0..9)
        .map(|c| {
            lines
                .iter()
                .map(|l| l[c].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for l in &lines {
        let cells: Vec<String> = l
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// The newest drill: `passed 2026-12-07T01:02Z`, or `-` when never drilled.
pub fn drilled(s: &crate::repository::Statefile) -> String {
    match s.last_drill() {
        Some((at, passed)) => format!(
            "{} {}",
            if passed { "passed" } else { "FAILED" },
            at.format("%Y-%m-%dT%H:%MZ")
        ),
        None => "-".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repository::statefile::tests::sample;
    use crate::repository::CatalogError;

    #[test]
    fn the_table_shows_one_line_per_backup() {
        let mut drilled = sample();
        drilled.history.push(serde_json::json!({
            "event": "drill", "at": "2026-11-24T03:04:05Z", "outcome": "passed"
        }));
        drilled.history.push(serde_json::json!({
            "event": "drill", "at": "2026-11-23T03:04:05Z", "outcome": "failed"
        }));
        let rows = vec![
            Listed::Backup(Box::new(drilled)),
            Listed::Unreadable {
                id: "20261124T000000Z-ffffff".into(),
                error: CatalogError::BadId { id: "x".into() },
            },
        ];
        let table = render_table(&rows);
        let lines: Vec<&str> = table.lines().collect();
        assert!(lines[0].starts_with("ID"));
        for cell in [
            "20261123T060000Z-0a1b2c",
            "2026-11-23T06:00:00Z",
            "1m35s",
            "completed",
            "3.0 MiB",
            "1.0 MiB",
            "kfp-db,mlpipeline",
            "before-upgrade",
            "passed 2026-11-24T03:04Z",
        ] {
            assert!(lines[1].contains(cell), "{cell} in {table}");
        }
        // Columns line up under their headers.
        let col = lines[0].find("PHASE").unwrap();
        assert_eq!(lines[1].find("completed"), Some(col));
        assert_eq!(lines[2].find("unreadable"), Some(col));
    }
}
