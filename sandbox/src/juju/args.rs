//! The juju client's command line: flags are accepted before or after positionals, as Juju's
//! gnuflag-based parser allows.

use std::collections::BTreeMap;

/// Parsed command line: juju's flags are accepted before or after positionals.
#[derive(Debug, Default)]
pub struct Args {
    pub positional: Vec<String>,
    pub flags: BTreeMap<String, String>,
    /// Every value of repeatable flags (`--resource`, `--config`).
    pub multi: BTreeMap<String, Vec<String>>,
}

const VALUE_FLAGS: &[&str] = &[
    "format", "m", "model", "wait", "o", "output", "params", "resource", "config", "reset", "info",
];
const BOOL_FLAGS: &[&str] = &[
    "trust",
    "show-password",
    "background",
    "string-args",
    "all",
    "utc",
    "relations",
    "storage",
    "no-color",
    "color",
    "quiet",
    "q",
    "schema",
];

pub fn parse_args(raw: &[String]) -> Result<Args, String> {
    let mut a = Args::default();
    let mut it = raw.iter();
    while let Some(arg) = it.next() {
        if let Some(flag) = arg.strip_prefix("--").or_else(|| {
            arg.strip_prefix('-')
                .filter(|f| !f.is_empty() && !f.starts_with(|c: char| c.is_ascii_digit()))
        }) {
            let (name, inline) = match flag.split_once('=') {
                Some((n, v)) => (n.to_string(), Some(v.to_string())),
                None => (flag.to_string(), None),
            };
            if VALUE_FLAGS.contains(&name.as_str()) {
                let v = match inline {
                    Some(v) => v,
                    None => it
                        .next()
                        .cloned()
                        .ok_or_else(|| format!("option needs an argument: {arg}"))?,
                };
                a.multi.entry(name.clone()).or_default().push(v.clone());
                a.flags.insert(name, v);
            } else if BOOL_FLAGS.contains(&name.as_str()) {
                a.flags
                    .insert(name, inline.unwrap_or_else(|| "true".into()));
            } else {
                return Err(format!("option provided but not defined: {arg}"));
            }
        } else {
            a.positional.push(arg.clone());
        }
    }
    Ok(a)
}

impl Args {
    pub fn format(&self, default: &str) -> String {
        self.flags
            .get("format")
            .or(self.flags.get("o"))
            .cloned()
            .unwrap_or_else(|| default.into())
    }
    pub fn model(&self) -> Option<String> {
        self.flags
            .get("m")
            .or(self.flags.get("model"))
            .cloned()
            .or_else(|| std::env::var("JUJU_MODEL").ok())
    }
}
