//! Which backups a retention policy keeps: restic's `forget` rules (keep-last, keep-daily,
//! keep-weekly, keep-monthly: the newest backup of each of the N newest periods that have one;
//! keep-within: every backup within a duration of the newest), applied to completed backups.
//!
//! A policy never forgets the newest completed backup, nor a backup whose run has not ended.
//! Failed backups cannot be restored, so they go once a newer completed backup exists; until
//! then they are kept as the record of what went wrong.

use std::fmt;
use std::time::Duration;

use chrono::{DateTime, Datelike, Utc};
use serde::Serialize;

use crate::repository::Phase;

/// A retention policy; `None` is "no such rule".
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policy {
    pub keep_last: Option<u32>,
    pub keep_daily: Option<u32>,
    pub keep_weekly: Option<u32>,
    pub keep_monthly: Option<u32>,
    pub keep_within: Option<Duration>,
}

pub const KEYS: &str = "keep-last, keep-daily, keep-weekly, keep-monthly, keep-within";

impl Policy {
    pub fn is_empty(&self) -> bool {
        *self == Policy::default()
    }

    /// Parses `keep-daily=7,keep-weekly=4,keep-within=2d` (the charm's `retention` config and
    /// the daemon's `--retention`). Empty means no policy.
    pub fn parse(text: &str) -> Result<Policy, String> {
        let mut p = Policy::default();
        for part in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let Some((k, v)) = part.split_once('=') else {
                return Err(format!(
                    "retention {part:?} is not key=value: write e.g. keep-daily=7,keep-weekly=4 (keys: {KEYS})"
                ));
            };
            p.set(k.trim(), v.trim())?;
        }
        Ok(p)
    }

    /// Sets one rule from its name and textual value, checking it.
    pub fn set(&mut self, key: &str, value: &str) -> Result<(), String> {
        let count = || -> Result<Option<u32>, String> {
            match value.parse::<u32>() {
                Ok(0) => Err(format!(
                    "retention {key}=0: a count must be at least 1 (leave {key} out to not keep by it)"
                )),
                Ok(n) => Ok(Some(n)),
                Err(_) => Err(format!(
                    "retention {key}={value:?} is not a whole number: write e.g. {key}=7"
                )),
            }
        };
        match key {
            "keep-last" => self.keep_last = count()?,
            "keep-daily" => self.keep_daily = count()?,
            "keep-weekly" => self.keep_weekly = count()?,
            "keep-monthly" => self.keep_monthly = count()?,
            "keep-within" => {
                let d = humantime::parse_duration(value).map_err(|e| {
                    format!("retention keep-within={value:?} is not a duration ({e}): write e.g. keep-within=36h or keep-within=14days")
                })?;
                if d.is_zero() {
                    return Err("retention keep-within must be longer than 0".into());
                }
                if d > Duration::from_secs(100 * 366 * 86400) {
                    return Err(format!("retention keep-within={value} is longer than 100 years: leave keep-within out to keep by the other rules, or give a shorter time"));
                }
                self.keep_within = Some(d);
            }
            other => {
                return Err(format!(
                    "unknown retention rule {other:?}: the rules are {KEYS}"
                ))
            }
        }
        Ok(())
    }
}

impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = vec![];
        for (k, v) in [
            ("keep-last", self.keep_last),
            ("keep-daily", self.keep_daily),
            ("keep-weekly", self.keep_weekly),
            ("keep-monthly", self.keep_monthly),
        ] {
            if let Some(n) = v {
                parts.push(format!("{k}={n}"));
            }
        }
        if let Some(d) = self.keep_within {
            parts.push(format!("keep-within={}", humantime::format_duration(d)));
        }
        if parts.is_empty() {
            f.write_str("(none)")
        } else {
            f.write_str(&parts.join(","))
        }
    }
}

/// What the policy looks at of one backup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub id: String,
    pub time: DateTime<Utc>,
    pub phase: Phase,
}

/// The fate of one backup and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct Decision {
    pub id: String,
    pub keep: bool,
    pub reasons: Vec<String>,
}

fn ended(phase: Phase) -> bool {
    matches!(
        phase,
        Phase::Completed | Phase::Failed | Phase::PartiallyFailed
    )
}

/// Decides every candidate, newest first. Rules apply as restic applies them: walking the
/// completed backups from the newest, a rule keeps a backup when its period differs from the
/// last period that rule kept, until the rule's count is used up.
pub fn apply(policy: &Policy, candidates: &[Candidate]) -> Vec<Decision> {
    let mut sorted: Vec<&Candidate> = candidates.iter().collect();
    sorted.sort_by(|a, b| (b.time, &b.id).cmp(&(a.time, &a.id)));
    let newest_completed = sorted
        .iter()
        .find(|c| c.phase == Phase::Completed)
        .map(|c| (c.time, c.id.clone()));
    type Bucket = fn(&DateTime<Utc>, usize) -> String;
    let mut rules: Vec<(&str, Option<u32>, Bucket, Option<String>)> = vec![
        ("last", policy.keep_last, |_, i| i.to_string(), None),
        (
            "daily",
            policy.keep_daily,
            |t, _| t.format("%Y-%m-%d").to_string(),
            None,
        ),
        (
            "weekly",
            policy.keep_weekly,
            |t, _| {
                let w = t.iso_week();
                format!("{}-W{:02}", w.year(), w.week())
            },
            None,
        ),
        (
            "monthly",
            policy.keep_monthly,
            |t, _| t.format("%Y-%m").to_string(),
            None,
        ),
    ];
    let mut left: Vec<u32> = rules.iter().map(|r| r.1.unwrap_or(0)).collect();
    let mut out = vec![];
    for (i, c) in sorted.iter().enumerate() {
        let mut reasons = vec![];
        if !ended(c.phase) {
            reasons.push(format!("its run has not ended ({})", c.phase.as_str()));
        } else if c.phase != Phase::Completed {
            match &newest_completed {
                Some((t, _)) if c.time < *t => {}
                _ => reasons.push("failed, and no completed backup is newer".into()),
            }
        } else {
            if newest_completed.as_ref().map(|n| &n.1) == Some(&c.id) {
                reasons.push("the newest completed backup".into());
            }
            for (r, rule) in rules.iter_mut().enumerate() {
                if left[r] == 0 {
                    continue;
                }
                let bucket = (rule.2)(&c.time, i);
                if rule.3.as_ref() != Some(&bucket) {
                    left[r] -= 1;
                    reasons.push(if rule.0 == "last" {
                        format!(
                            "keep-last ({} of {})",
                            rule.1.unwrap() - left[r],
                            rule.1.unwrap()
                        )
                    } else {
                        format!("keep-{} {bucket}", rule.0)
                    });
                    rule.3 = Some(bucket);
                }
            }
            // Relative to the newest completed backup, as restic measures from the newest
            // snapshot: a daemon that stopped backing up does not age everything out.
            if let (Some(d), Some((newest, _))) = (policy.keep_within, &newest_completed) {
                // Out of range means "further back than any time": keep.
                let limit = chrono::Duration::from_std(d)
                    .ok()
                    .and_then(|d| newest.checked_sub_signed(d));
                if limit.is_none_or(|l| c.time >= l) {
                    reasons.push(format!("keep-within {}", humantime::format_duration(d)));
                }
            }
        }
        out.push(Decision {
            id: c.id.clone(),
            keep: !reasons.is_empty(),
            reasons,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_the_charm_format() {
        let p = Policy::parse("keep-daily=7, keep-weekly=4,keep-within=36h").unwrap();
        assert_eq!(p.keep_daily, Some(7));
        assert_eq!(p.keep_weekly, Some(4));
        assert_eq!(p.keep_within, Some(Duration::from_secs(36 * 3600)));
        assert_eq!(
            p.to_string(),
            "keep-daily=7,keep-weekly=4,keep-within=1day 12h"
        );
        assert!(Policy::parse("").unwrap().is_empty());
    }

    #[test]
    fn refuses_bad_rules_naming_them() {
        for (text, want) in [
            ("keep-dayly=7", "unknown retention rule \"keep-dayly\""),
            ("keep-daily=0", "keep-daily=0: a count must be at least 1"),
            ("keep-daily=x", "keep-daily=\"x\" is not a whole number"),
            ("keep-within=soon", "keep-within=\"soon\" is not a duration"),
            ("keep-daily", "is not key=value"),
        ] {
            let e = Policy::parse(text).unwrap_err();
            assert!(e.contains(want), "{text}: {e}");
        }
    }
}
