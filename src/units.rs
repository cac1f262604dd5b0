//! Sizes, rates and durations as people write and read them.

/// `1536` → `1.5 KiB`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1024.0;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    format!("{v:.1} {}", UNITS[u])
}
/// `45s`, `3m07s`, `2h05m`.
pub fn human_duration(secs: i64) -> String {
    match secs {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m{:02}s", s / 60, s % 60),
        s => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}

/// `50M` → 52428800: a byte rate with an optional binary suffix.
pub fn parse_rate(s: &str) -> Result<u64, String> {
    parse_bytes(s, "rate", "bytes per second like 50M or 1G")
}

/// A size in bytes with an optional K, M or G suffix (binary units): 16M is 16 MiB.
pub fn parse_size(s: &str) -> Result<u64, String> {
    parse_bytes(s, "size", "bytes like 16M or 512K")
}

fn parse_bytes(s: &str, what: &str, like: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a {what}; give {like}"))?;
    let mult: u64 = match unit.to_ascii_uppercase().as_str() {
        "" | "B" => 1,
        "K" => 1 << 10,
        "M" => 1 << 20,
        "G" => 1 << 30,
        _ => {
            return Err(format!(
                "{s:?}: unknown unit {unit:?}; use K, M or G (e.g. 50M)"
            ))
        }
    };
    let rate = (n * mult as f64) as u64;
    if !n.is_finite() || rate == 0 {
        return Err(format!("{s:?}: the {what} must be above zero"));
    }
    Ok(rate)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_take_binary_suffixes_and_refuse_nonsense() {
        assert_eq!(parse_rate("50M"), Ok(50 << 20));
        assert_eq!(parse_rate("1.5k"), Ok(1536));
        assert_eq!(parse_rate("4096"), Ok(4096));
        assert!(parse_rate("0").unwrap_err().contains("above zero"));
        assert!(parse_rate("10X").unwrap_err().contains("unknown unit"));
        assert!(parse_rate("fast").unwrap_err().contains("not a rate"));
    }

    #[test]
    fn sizes_read_in_binary_units() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
    }
}
