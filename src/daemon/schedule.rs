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

    /// The longest gap between two runs over the coming week: how old the newest backup may
    /// be before a run counts as missed. The longest, so `0 2 * * 1-5` gives the weekend's
    /// three days, not a weekday's one.
    pub fn period(&self, now: DateTime<Utc>) -> Option<chrono::Duration> {
        let horizon = now + chrono::Duration::days(8);
        let mut a = self.next_after(now)?;
        let mut longest = None::<chrono::Duration>;
        // Bounded: a schedule every minute has 11,520 runs in eight days.
        for _ in 0..20_000 {
            let b = self.next_after(a)?;
            longest = Some(longest.map_or(b - a, |l| l.max(b - a)));
            if b > horizon {
                break;
            }
            a = b;
        }
        longest
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
        // Weekdays only: the weekend's gap is the period, whichever day it is asked on.
        let weekdays = Schedule::parse("0 2 * * 1-5").unwrap();
        assert_eq!(weekdays.period(t).unwrap(), chrono::Duration::days(3));
        let e = Schedule::parse("every day").unwrap_err();
        assert!(
            e.contains("is not a cron expression") && e.contains("\"0 2 * * *\""),
            "{e}"
        );
        assert!(Schedule::parse("61 * * * *").is_err());
    }
}
