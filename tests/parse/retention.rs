//! Retention over generated backup histories: the kept set equals restic's rule, written here
//! a second way (group by period, take the newest of each of the N newest periods) rather than
//! restic's single walk that the library uses.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use backup_agent::repository::retention::{apply, Candidate, Policy};
use backup_agent::repository::Phase;
use chrono::{DateTime, Datelike, TimeZone, Utc};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn newest_per_period(
    completed: &[&Candidate],
    n: Option<u32>,
    period: impl Fn(&DateTime<Utc>) -> String,
) -> BTreeSet<String> {
    let Some(n) = n else {
        return BTreeSet::new();
    };
    let mut groups: BTreeMap<String, &Candidate> = BTreeMap::new();
    for c in completed {
        let e = groups.entry(period(&c.time)).or_insert(c);
        if (c.time, &c.id) > (e.time, &e.id) {
            *e = c;
        }
    }
    let mut newest: Vec<&Candidate> = groups.into_values().collect();
    newest.sort_by(|a, b| (b.time, &b.id).cmp(&(a.time, &a.id)));
    newest
        .into_iter()
        .take(n as usize)
        .map(|c| c.id.clone())
        .collect()
}

/// The kept ids, by the rules as documented.
fn reference(policy: &Policy, all: &[Candidate]) -> BTreeSet<String> {
    let mut completed: Vec<&Candidate> =
        all.iter().filter(|c| c.phase == Phase::Completed).collect();
    completed.sort_by(|a, b| (b.time, &b.id).cmp(&(a.time, &a.id)));
    let mut keep = BTreeSet::new();
    if let Some(newest) = completed.first() {
        keep.insert(newest.id.clone());
    }
    if let Some(n) = policy.keep_last {
        keep.extend(completed.iter().take(n as usize).map(|c| c.id.clone()));
    }
    keep.extend(newest_per_period(&completed, policy.keep_daily, |t| {
        format!("{}", t.date_naive())
    }));
    keep.extend(newest_per_period(&completed, policy.keep_weekly, |t| {
        let w = t.iso_week();
        format!("{}-{}", w.year(), w.week())
    }));
    keep.extend(newest_per_period(&completed, policy.keep_monthly, |t| {
        format!("{}-{}", t.year(), t.month())
    }));
    if let (Some(d), Some(newest)) = (policy.keep_within, completed.first()) {
        let limit = newest.time - chrono::Duration::from_std(d).unwrap();
        keep.extend(
            completed
                .iter()
                .filter(|c| c.time >= limit)
                .map(|c| c.id.clone()),
        );
    }
    let newest_completed = completed.first().map(|c| c.time);
    for c in all {
        let ended = matches!(
            c.phase,
            Phase::Completed | Phase::Failed | Phase::PartiallyFailed
        );
        let failed = matches!(c.phase, Phase::Failed | Phase::PartiallyFailed);
        if !ended || (failed && newest_completed.is_none_or(|t| c.time >= t)) {
            keep.insert(c.id.clone());
        }
    }
    keep
}

fn history(rng: &mut StdRng) -> Vec<Candidate> {
    let n = rng.random_range(0..40);
    let start = Utc.with_ymd_and_hms(2025, 12, 20, 0, 0, 0).unwrap();
    // Spans from hours to more than a year, so every rule meets both sparse and dense histories.
    let span_secs: i64 = [6 * 3600, 10 * 86400, 90 * 86400, 500 * 86400][rng.random_range(0..4)];
    (0..n)
        .map(|i| {
            let t = start + chrono::Duration::seconds(rng.random_range(0..span_secs));
            let phase = match rng.random_range(0..20) {
                0 | 1 => Phase::Failed,
                2 => Phase::PartiallyFailed,
                3 => Phase::Capturing,
                _ => Phase::Completed,
            };
            Candidate {
                id: format!("{}-{i:06x}", t.format("%Y%m%dT%H%M%SZ")),
                time: t,
                phase,
            }
        })
        .collect()
}

fn policy(rng: &mut StdRng) -> Policy {
    let mut count =
        |p: u32| -> Option<u32> { (rng.random_range(0..100) < p).then(|| rng.random_range(1..8)) };
    let mut p = Policy {
        keep_last: count(40),
        keep_daily: count(50),
        keep_weekly: count(40),
        keep_monthly: count(40),
        keep_within: None,
    };
    if rng.random_range(0..3) == 0 {
        p.keep_within = Some(Duration::from_secs(rng.random_range(1..30 * 86400)));
    }
    p
}

#[test]
fn kept_set_equals_restics_rule_over_generated_histories() {
    let mut checked = 0;
    for seed in 0..3000u64 {
        let mut rng = StdRng::seed_from_u64(seed);
        let all = history(&mut rng);
        let p = policy(&mut rng);
        let decisions = apply(&p, &all);
        assert_eq!(decisions.len(), all.len(), "seed {seed}");
        let kept: BTreeSet<String> = decisions
            .iter()
            .filter(|d| d.keep)
            .map(|d| d.id.clone())
            .collect();
        assert_eq!(kept, reference(&p, &all), "seed {seed}, policy {p}");
        for d in &decisions {
            assert_eq!(d.keep, !d.reasons.is_empty(), "seed {seed}: {d:?}");
        }
        checked += all.len();
    }
    assert!(checked > 30_000, "only {checked} backups generated");
}

#[test]
fn one_rule_by_hand() {
    // Three days, two backups on the middle one: keep-daily=2 keeps the newest of the two
    // newest days.
    let at = |d: u32, h: u32| Utc.with_ymd_and_hms(2026, 11, d, h, 0, 0).unwrap();
    let c = |id: &str, t| Candidate {
        id: id.into(),
        time: t,
        phase: Phase::Completed,
    };
    let all = vec![
        c("a", at(20, 2)),
        c("b", at(21, 2)),
        c("c", at(21, 14)),
        c("d", at(22, 2)),
    ];
    let p = Policy::parse("keep-daily=2").unwrap();
    let kept: Vec<(String, bool)> = apply(&p, &all)
        .into_iter()
        .map(|d| (d.id, d.keep))
        .collect();
    assert_eq!(
        kept,
        vec![
            ("d".into(), true),
            ("c".into(), true),
            ("b".into(), false),
            ("a".into(), false)
        ]
    );
}
