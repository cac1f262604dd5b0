//! The results: samples per case and tool, the correctness checks, the table with ratios against
//! the targets, and the chart.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::Path;

use serde::Serialize;

use crate::lab::Sample;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tool {
    Ours,
    Rclone,
    Rclone16,
}

impl Tool {
    pub fn label(self) -> &'static str {
        match self {
            Tool::Ours => "backup-agent",
            Tool::Rclone => "rclone",
            Tool::Rclone16 => "rclone --transfers 16",
        }
    }
    pub fn slug(self) -> &'static str {
        match self {
            Tool::Ours => "ours",
            Tool::Rclone => "default",
            Tool::Rclone16 => "t16",
        }
    }
    pub fn side(self) -> &'static str {
        match self {
            Tool::Ours => "ours",
            _ => "rclone",
        }
    }
}

#[derive(Debug, Default, Serialize)]
pub struct Measured {
    pub secs: Vec<f64>,
    pub max_rss_mib: Vec<f64>,
}

#[derive(Debug, Serialize)]
pub struct Check {
    pub case: String,
    pub what: String,
    pub passed: bool,
}

/// One line of the table: backup-agent against a peer, with the target for the ratio.
#[derive(Debug, Clone, Serialize)]
pub struct Comparison {
    pub case: &'static str,
    pub peer: &'static str,
    /// `ours / peer` must be at most this (a speed-up target of 5x is a ratio of 0.2).
    pub target: Option<f64>,
    pub ratio: Option<f64>,
}

#[derive(Debug, Serialize)]
pub struct Results {
    pub quick: bool,
    pub reps: u32,
    pub machine: Vec<(String, String)>,
    /// case -> tool -> samples
    pub cases: BTreeMap<String, BTreeMap<String, Measured>>,
    pub checks: Vec<Check>,
    pub comparisons: Vec<Comparison>,
    /// case -> (backup-agent's median peak RSS in MiB, target)
    pub memory: Vec<(String, Option<f64>, Option<f64>)>,
    /// Requests to the repository, counted by a proxy in front of it.
    pub requests: Vec<Requests>,
}

/// Requests one run sent to the repository's server, against the objects it moved.
#[derive(Debug, Serialize)]
pub struct Requests {
    pub case: String,
    /// Which requests: `PUT` (uploads, parts and completions), `GET`.
    pub what: String,
    pub requests: u64,
    pub objects: u64,
    pub secs: f64,
    pub target: Option<f64>,
    /// Every request of the run, by kind (the proxy's `KINDS`).
    pub by_kind: std::collections::BTreeMap<String, u64>,
}

impl Requests {
    pub fn per_object(&self) -> f64 {
        self.requests as f64 / self.objects.max(1) as f64
    }
}

/// The targets: wall time ratios, then memory ceilings.
const COMPARISONS: &[(&str, &str, Option<f64>)] = &[
    ("S full copy", "rclone", Some(0.5)),
    ("S full copy", "rclone --transfers 16", None),
    ("L full copy", "rclone", Some(1.0)),
    ("L full copy", "rclone --transfers 16", None),
    ("M full copy", "rclone", Some(0.8)),
    ("M full copy", "rclone --transfers 16", None),
    ("M nothing changed", "rclone", Some(1.0)),
    ("M 1% changed", "rclone", None),
    ("M restore", "rclone", Some(0.8)),
    ("S restore", "rclone", Some(0.8)),
    ("MLMD capture", "sqlite3 .dump | gzip", Some(0.2)),
    ("MLMD capture", "cat | zstd", Some(1.3)),
    ("MLMD capture to S3", "cat | zstd", None),
];
const MEMORY: &[(&str, Option<f64>)] = &[
    ("S full copy", Some(128.0)),
    ("S x10 full copy", Some(128.0)),
    ("L full copy", Some(64.0)),
    ("M full copy", None),
    ("M nothing changed", None),
    ("M 1% changed", None),
    ("M restore", None),
    ("MLMD capture", None),
    ("MLMD capture to S3", None),
];

pub fn median(v: &[f64]) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let n = s.len();
    Some(if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    })
}

fn spread(v: &[f64]) -> String {
    match (
        median(v),
        v.iter().cloned().reduce(f64::min),
        v.iter().cloned().reduce(f64::max),
    ) {
        (Some(m), Some(lo), Some(hi)) if v.len() > 1 => format!("{m:.2} ({lo:.2}–{hi:.2})"),
        (Some(m), _, _) => format!("{m:.2}"),
        _ => "–".into(),
    }
}

impl Results {
    pub fn new(quick: bool, reps: u32, machine: Vec<(String, String)>) -> Self {
        Results {
            quick,
            reps,
            machine,
            cases: BTreeMap::new(),
            checks: vec![],
            comparisons: vec![],
            memory: vec![],
            requests: vec![],
        }
    }

    pub fn add(&mut self, case: &str, tool: &str, s: &Sample) {
        eprintln!(
            "bench:   {case:<20} {tool:<24} {:>8.2} s {:>8.1} MiB",
            s.secs,
            s.max_rss_kib as f64 / 1024.0
        );
        let m = self
            .cases
            .entry(case.into())
            .or_default()
            .entry(tool.into())
            .or_default();
        m.secs.push(s.secs);
        m.max_rss_mib.push(s.max_rss_kib as f64 / 1024.0);
    }

    pub fn check(&mut self, case: &str, what: &str, passed: bool) {
        if !passed {
            eprintln!("bench:   CHECK FAILED {case}: {what}");
        }
        self.checks.push(Check {
            case: case.into(),
            what: what.into(),
            passed,
        });
    }

    pub fn failed_checks(&self) -> Vec<String> {
        self.checks
            .iter()
            .filter(|c| !c.passed)
            .map(|c| format!("{}: {}", c.case, c.what))
            .collect()
    }

    fn secs(&self, case: &str, tool: &str) -> Option<&Measured> {
        self.cases.get(case)?.get(tool)
    }

    /// The markdown table; also fills the comparisons and memory lines for the JSON.
    pub fn table(&mut self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "| case | backup-agent s, median (min–max) | peer | peer s | ratio | target | met |"
        );
        let _ = writeln!(out, "|---|---|---|---|---|---|---|");
        self.comparisons.clear();
        for (case, peer, target) in COMPARISONS {
            let (Some(ours), Some(theirs)) =
                (self.secs(case, "backup-agent"), self.secs(case, peer))
            else {
                continue;
            };
            let ratio = median(&ours.secs)
                .zip(median(&theirs.secs))
                .map(|(a, b)| a / b);
            let met = match (ratio, target) {
                (Some(r), Some(t)) if r <= *t => "yes",
                (Some(_), Some(_)) => "**no**",
                _ => "",
            };
            let _ = writeln!(
                out,
                "| {case} | {} | {} | {} | {} | {} | {met} |",
                spread(&ours.secs),
                peer.replace('|', "\\|"),
                spread(&theirs.secs),
                ratio.map(|r| format!("{r:.2}")).unwrap_or_default(),
                target.map(|t| format!("≤ {t}")).unwrap_or_default(),
            );
            self.comparisons.push(Comparison {
                case,
                peer,
                target: *target,
                ratio,
            });
        }
        let _ = writeln!(out);
        let _ = writeln!(out, "| case | backup-agent peak RSS MiB, median (min–max) | rclone peak RSS MiB | target | met |");
        let _ = writeln!(out, "|---|---|---|---|---|");
        self.memory.clear();
        for (case, target) in MEMORY {
            let Some(ours) = self.secs(case, "backup-agent") else {
                continue;
            };
            let rss = median(&ours.max_rss_mib);
            let theirs = self
                .secs(case, "rclone")
                .map(|m| spread(&m.max_rss_mib))
                .unwrap_or_default();
            let met = match (rss, target) {
                (Some(r), Some(t)) if r <= *t => "yes",
                (Some(_), Some(_)) => "**no**",
                _ => "",
            };
            let _ = writeln!(
                out,
                "| {case} | {} | {theirs} | {} | {met} |",
                spread(&ours.max_rss_mib),
                target.map(|t| format!("≤ {t}")).unwrap_or_default()
            );
            self.memory.push((case.to_string(), rss, *target));
        }
        if !self.requests.is_empty() {
            let _ = writeln!(out);
            let _ = writeln!(
                out,
                "| case (one run, through a counting proxy) | requests | objects | per object | target | met | s | all requests, by kind |"
            );
            let _ = writeln!(out, "|---|---|---|---|---|---|---|---|");
            for r in &self.requests {
                let met = match r.target {
                    Some(t) if r.per_object() <= t => "yes",
                    Some(_) => "**no**",
                    None => "",
                };
                let _ = writeln!(
                    out,
                    "| {} | {} {} | {} | {:.4} | {} | {met} | {:.2} | {} |",
                    r.case,
                    r.requests,
                    r.what,
                    r.objects,
                    r.per_object(),
                    r.target.map(|t| format!("≤ {t}")).unwrap_or_default(),
                    r.secs,
                    r.by_kind
                        .iter()
                        .filter(|(_, n)| **n > 0)
                        .map(|(k, n)| format!("{k} {n}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            }
        }
        let passed = self.checks.iter().filter(|c| c.passed).count();
        let _ = writeln!(
            out,
            "\nCorrectness: {passed} of {} checks passed (rclone check / rclone's SHA-256 of every object against the copy).",
            self.checks.len()
        );
        out
    }
}

/// Draws the ratios with the repository's .venv matplotlib; says so and goes on when it cannot.
pub fn chart(json: &Path, png: &Path) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("chart.py");
    let python = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python");
    let python = if python.is_file() {
        python
    } else {
        "python3".into()
    };
    match std::process::Command::new(&python)
        .arg(&script)
        .arg(json)
        .arg(png)
        .status()
    {
        Ok(s) if s.success() => eprintln!("bench: wrote {}", png.display()),
        _ => eprintln!(
            "bench: no chart: {} {} failed (is matplotlib installed? scripts/bootstrap installs it)",
            python.display(),
            script.display()
        ),
    }
}
