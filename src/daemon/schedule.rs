//! When the daemon backs up: a cron expression in UTC.

use std::str::FromStr;

use chrono::{DateTime, Utc};

/// A cron schedule (five fields, or six with seconds first), in UTC.
#[derive(Debug, Clone)]
pub struct Schedule {
    cron: croner::Cron,
    pub text: String,
}

impl Schedule {
    pub fn parse(text: &str) -> Result<Schedule, String> {
        let t = text.trim();
        let cron = croner::parser::CronParser::builder()
            .seconds(croner::parser::Seconds::Optional)
            .build()
            .parse(t)
            .map_err(|e| {
                format!("schedule {t:?} is not a cron expression ({e}): write five fields, minute hour day-of-month month day-of-week, e.g. \"0 2 * * *\" for 02:00 UTC every day")
            })?;
        Ok(Schedule {
            cron,
            text: t.into(),
        })
    }

    pub fn next_after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.cron.find_next_occurrence(&t, false).ok()
    }

    /// The gap between the next two runs: how old the newest backup may be before the daemon
    /// counts a run as missed.
    pub fn period(&self, now: DateTime<Utc>) -> Option<chrono::Duration> {
        let a = self.next_after(now)?;
        let b = self.next_after(a)?;
        Some(b - a)
    }
}

impl FromStr for Schedule {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Schedule::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedules_parse_or_say_how() {
        let s = Schedule::parse("0 2 * * *").unwrap();
        let t = DateTime::parse_from_rfc3339("2026-11-23T10:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(
            s.next_after(t).unwrap().to_rfc3339(),
            "2026-11-24T02:00:00+00:00"
        );
        assert_eq!(s.period(t).unwrap(), chrono::Duration::days(1));
        let e = Schedule::parse("every day").unwrap_err();
        assert!(
            e.contains("is not a cron expression") && e.contains("\"0 2 * * *\""),
            "{e}"
        );
        assert!(Schedule::parse("61 * * * *").is_err());
    }
}
