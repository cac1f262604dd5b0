//! Go's `time` package text formats, which Juju and Pebble (both written in Go) parse and
//! print: durations (`--wait=1m30s`, a layer's `backoff-delay`) and `time.Time.String()`.

use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};

/// Go's `time.Duration` syntax (`30s`, `5m`, `1h30m`, `250ms`).
pub fn parse_go_duration(s: &str) -> Option<Duration> {
    if s == "0" {
        return Some(Duration::ZERO);
    }
    let mut total = 0f64;
    let mut rest = s;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let num_len = rest.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
        if num_len == 0 {
            return None;
        }
        let n: f64 = rest[..num_len].parse().ok()?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let mult = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        total += n * mult;
        rest = &rest[unit_len..];
    }
    Some(Duration::from_secs_f64(total))
}

/// Go's `time.Time.String()` in UTC, used in task timings and logs.
pub fn go_time(ms: u64) -> String {
    dt(ms).format("%Y-%m-%d %H:%M:%S +0000 UTC").to_string()
}

/// A model timestamp (milliseconds since the epoch) as a UTC date-time.
pub fn dt(ms: u64) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(ms as i64)
        .single()
        .unwrap_or_default()
}
