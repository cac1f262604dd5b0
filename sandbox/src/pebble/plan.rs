//! Pebble's layers and the plan they combine into, with Pebble's rules: unknown fields refused,
//! `override: merge|replace` required per service, later layers merging over earlier ones
//! field by field, and the combined plan validated (a command that parses, known
//! `on-success`/`on-failure` actions, a backoff factor of at least 1). The messages are
//! Pebble's, so a charm's error handling sees what it would see in a real container.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_yaml::Mapping;

/// Pebble's defaults for a service that does not set them.
pub const DEFAULT_BACKOFF_DELAY: Duration = Duration::from_millis(500);
pub const DEFAULT_BACKOFF_FACTOR: f64 = 2.0;
pub const DEFAULT_BACKOFF_LIMIT: Duration = Duration::from_secs(30);
pub const DEFAULT_KILL_DELAY: Duration = Duration::from_secs(5);

/// A duration written the Go way (`500ms`, `1m30s`), kept only when the layer sets it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GoDuration(pub Duration);

impl<'de> Deserialize<'de> for GoDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = serde_yaml::Value::deserialize(d)?;
        let s = match &v {
            serde_yaml::Value::String(s) => s.clone(),
            serde_yaml::Value::Number(n) => n.to_string(),
            _ => {
                return Err(serde::de::Error::custom(
                    "cannot unmarshal non-scalar value into duration",
                ))
            }
        };
        crate::go_time::parse_go_duration(&s)
            .map(GoDuration)
            .ok_or_else(|| serde::de::Error::custom(format!("invalid duration {s:?}")))
    }
}

impl Serialize for GoDuration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&go_duration(self.0))
    }
}

/// Go's `time.Duration.String()`: `0s`, `500ms`, `1.5s`, `1m30s`, `1h0m0s`.
pub fn go_duration(d: Duration) -> String {
    fn frac(v: u128, unit: u128) -> String {
        let (whole, rest) = (v / unit, v % unit);
        if rest == 0 {
            return whole.to_string();
        }
        let digits = unit.to_string().len() - 1;
        let rest = format!("{rest:0digits$}");
        format!("{whole}.{}", rest.trim_end_matches('0'))
    }
    let ns = d.as_nanos();
    const S: u128 = 1_000_000_000;
    match ns {
        0 => "0s".into(),
        n if n < 1_000 => format!("{n}ns"),
        n if n < 1_000_000 => format!("{}µs", frac(n, 1_000)),
        n if n < S => format!("{}ms", frac(n, 1_000_000)),
        n => {
            let (h, m) = (n / (3600 * S), n % (3600 * S) / (60 * S));
            let s = format!("{}s", frac(n % (60 * S), S));
            if h > 0 {
                format!("{h}h{m}m{s}")
            } else if m > 0 {
                format!("{m}m{s}")
            } else {
                s
            }
        }
    }
}

/// A string map whose values may be written as any YAML scalar (`PORT: 8080`), as Go's YAML
/// decoder accepts for `map[string]string`.
fn scalar_map<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<String, String>, D::Error> {
    let m = Option::<BTreeMap<String, serde_yaml::Value>>::deserialize(d)?.unwrap_or_default();
    m.into_iter()
        .map(|(k, v)| {
            let s = match v {
                serde_yaml::Value::String(s) => s,
                serde_yaml::Value::Number(n) => n.to_string(),
                serde_yaml::Value::Bool(b) => b.to_string(),
                serde_yaml::Value::Null => String::new(),
                _ => {
                    return Err(serde::de::Error::custom(format!(
                        "cannot unmarshal a non-scalar value into the string value of {k:?}"
                    )))
                }
            };
            Ok((k, s))
        })
        .collect()
}

fn string_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    Ok(Option::<Vec<String>>::deserialize(d)?.unwrap_or_default())
}

/// One service as a layer or the plan has it; fields in Pebble's order, empty ones omitted.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Service {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub summary: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    /// `enabled`, `disabled`, or empty (disabled).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub startup: String,
    #[serde(default, rename = "override", skip_serializing_if = "String::is_empty")]
    pub override_: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub command: String,
    #[serde(
        default,
        deserialize_with = "string_list",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub after: Vec<String>,
    #[serde(
        default,
        deserialize_with = "string_list",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub before: Vec<String>,
    #[serde(
        default,
        deserialize_with = "string_list",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub requires: Vec<String>,
    #[serde(
        default,
        deserialize_with = "scalar_map",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub environment: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<i64>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub user: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_id: Option<i64>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub group: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub working_dir: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub on_success: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub on_failure: String,
    #[serde(
        default,
        deserialize_with = "scalar_map",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub on_check_failure: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff_delay: Option<GoDuration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff_factor: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff_limit: Option<GoDuration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kill_delay: Option<GoDuration>,
}

impl Service {
    /// Pebble's merge: every field `other` sets replaces ours; lists append; maps merge.
    fn merge(&mut self, other: &Service) {
        let set = |mine: &mut String, theirs: &String| {
            if !theirs.is_empty() {
                *mine = theirs.clone();
            }
        };
        set(&mut self.summary, &other.summary);
        set(&mut self.description, &other.description);
        set(&mut self.startup, &other.startup);
        set(&mut self.command, &other.command);
        set(&mut self.user, &other.user);
        set(&mut self.group, &other.group);
        set(&mut self.working_dir, &other.working_dir);
        set(&mut self.on_success, &other.on_success);
        set(&mut self.on_failure, &other.on_failure);
        if other.kill_delay.is_some() {
            self.kill_delay = other.kill_delay;
        }
        if other.user_id.is_some() {
            self.user_id = other.user_id;
        }
        if other.group_id.is_some() {
            self.group_id = other.group_id;
        }
        self.after.extend(other.after.iter().cloned());
        self.before.extend(other.before.iter().cloned());
        self.requires.extend(other.requires.iter().cloned());
        self.environment.extend(other.environment.clone());
        self.on_check_failure.extend(other.on_check_failure.clone());
        if other.backoff_delay.is_some() {
            self.backoff_delay = other.backoff_delay;
        }
        if other.backoff_factor.is_some() {
            self.backoff_factor = other.backoff_factor;
        }
        if other.backoff_limit.is_some() {
            self.backoff_limit = other.backoff_limit;
        }
    }

    pub fn backoff_delay(&self) -> Duration {
        self.backoff_delay.map_or(DEFAULT_BACKOFF_DELAY, |d| d.0)
    }
    pub fn backoff_factor(&self) -> f64 {
        self.backoff_factor.unwrap_or(DEFAULT_BACKOFF_FACTOR)
    }
    pub fn backoff_limit(&self) -> Duration {
        self.backoff_limit.map_or(DEFAULT_BACKOFF_LIMIT, |d| d.0)
    }
    pub fn kill_delay(&self) -> Duration {
        self.kill_delay.map_or(DEFAULT_KILL_DELAY, |d| d.0)
    }
    /// `enabled` or `disabled`, as `GET /v1/services` shows it.
    pub fn startup(&self) -> &str {
        if self.startup == "enabled" {
            "enabled"
        } else {
            "disabled"
        }
    }

    /// The command's words: the base command, then the default arguments of a `[ ... ]` group.
    pub fn command_args(&self, name: &str) -> Result<Vec<String>, String> {
        let (mut base, extra) = parse_command(&self.command)
            .map_err(|e| format!("cannot parse service {name:?} command: {e}"))?;
        base.extend(extra);
        Ok(base)
    }
}

/// Splits a service command like Pebble does (shlex, then an optional trailing `[ ... ]`
/// group of default arguments).
pub fn parse_command(command: &str) -> Result<(Vec<String>, Vec<String>), String> {
    let args = shlex_split(command)?;
    let (mut base, mut extra) = (vec![], vec![]);
    let (mut in_brackets, mut got_brackets) = (false, false);
    for (i, arg) in args.into_iter().enumerate() {
        if in_brackets {
            match arg.as_str() {
                "[" => return Err("cannot nest [ ... ] groups".into()),
                "]" => in_brackets = false,
                _ => extra.push(arg),
            }
            continue;
        }
        if got_brackets {
            return Err("cannot have any arguments after [ ... ] group".into());
        }
        match arg.as_str() {
            "[" if i == 0 => return Err("cannot start command with [ ... ] group".into()),
            "[" => {
                in_brackets = true;
                got_brackets = true;
            }
            "]" => return Err("cannot have ] outside of [ ... ] group".into()),
            _ => base.push(arg),
        }
    }
    Ok((base, extra))
}

/// Shell-like word splitting without shell features: whitespace separates words, `'...'` is
/// literal, `"..."` and a bare `\` escape the next character, `#` at the start of a word
/// comments out the rest of the line.
pub fn shlex_split(s: &str) -> Result<Vec<String>, String> {
    let mut words = vec![];
    let mut chars = s.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        let Some(&first) = chars.peek() else {
            return Ok(words);
        };
        if first == '#' {
            while chars.next().is_some_and(|c| c != '\n') {}
            continue;
        }
        let mut word = String::new();
        while let Some(c) = chars.next() {
            match c {
                c if c.is_whitespace() => break,
                '\\' => match chars.next() {
                    Some(n) => word.push(n),
                    None => return Err("EOF found after escape character".into()),
                },
                '\'' => loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(n) => word.push(n),
                        None => return Err("EOF found when expecting closing quote".into()),
                    }
                },
                '"' => loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(n) => word.push(n),
                            None => return Err("EOF found when expecting closing quote".into()),
                        },
                        Some(n) => word.push(n),
                        None => return Err("EOF found when expecting closing quote".into()),
                    }
                },
                c => word.push(c),
            }
        }
        words.push(word);
    }
}

/// One layer as added through `POST /v1/layers`.
#[derive(Debug, Clone, Default)]
pub struct Layer {
    pub label: String,
    pub summary: String,
    pub description: String,
    pub services: BTreeMap<String, Service>,
    /// Checks and log targets are kept and combined, not run.
    pub checks: BTreeMap<String, Mapping>,
    pub log_targets: BTreeMap<String, Mapping>,
}

#[derive(Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
struct RawLayer {
    #[serde(default)]
    summary: Option<String>,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    services: Option<BTreeMap<String, Option<Service>>>,
    #[serde(default)]
    checks: Option<BTreeMap<String, Option<Mapping>>>,
    #[serde(default)]
    log_targets: Option<BTreeMap<String, Option<Mapping>>>,
}

/// Parses a layer's YAML (Pebble's `ParseLayer`); the error is the whole message Pebble
/// answers with after `cannot parse layer YAML: `.
pub fn parse_layer(label: &str, yaml: &str) -> Result<Layer, String> {
    let parse_err = |e: String| format!("cannot parse layer {label:?}: {e}");
    if yaml.trim().is_empty() {
        return Err(parse_err("EOF".into()));
    }
    let raw: RawLayer = serde_yaml::from_str(yaml).map_err(|e| parse_err(e.to_string()))?;
    let mut layer = Layer {
        label: label.to_string(),
        summary: raw.summary.unwrap_or_default(),
        description: raw.description.unwrap_or_default(),
        ..Default::default()
    };
    for (name, svc) in raw.services.unwrap_or_default() {
        if name.is_empty() {
            return Err("cannot use empty string as service name".into());
        }
        if name == "pebble" {
            return Err(format!("cannot use reserved service name {name:?}"));
        }
        if name.starts_with('-') {
            return Err(format!(
                "cannot use service name {name:?}: starting with \"-\" not allowed"
            ));
        }
        let Some(svc) = svc else {
            return Err(format!(
                "service object cannot be null for service {name:?}"
            ));
        };
        layer.services.insert(name, svc);
    }
    for (kind, raw, out) in [
        ("check", raw.checks, &mut layer.checks),
        ("log target", raw.log_targets, &mut layer.log_targets),
    ] {
        for (name, v) in raw.unwrap_or_default() {
            if name.is_empty() {
                return Err(format!("cannot use empty string as {kind} name"));
            }
            let Some(v) = v else {
                return Err(format!("{kind} object cannot be null for {kind} {name:?}"));
            };
            out.insert(name, v);
        }
    }
    check_requires(&layer.services)?;
    Ok(layer)
}

/// Every service a service `requires` must exist (Pebble checks this when it orders them).
fn check_requires(services: &BTreeMap<String, Service>) -> Result<(), String> {
    for svc in services.values() {
        for r in &svc.requires {
            if !services.contains_key(r) {
                return Err(format!("service {r:?} does not exist"));
            }
        }
    }
    Ok(())
}

/// The combined plan, as `GET /v1/plan?format=yaml` shows it.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Plan {
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub services: BTreeMap<String, Service>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub checks: BTreeMap<String, Mapping>,
    #[serde(rename = "log-targets", skip_serializing_if = "BTreeMap::is_empty")]
    pub log_targets: BTreeMap<String, Mapping>,
}

impl Plan {
    pub fn yaml(&self) -> String {
        serde_yaml::to_string(self).unwrap_or_else(|_| "{}\n".into())
    }
}

fn override_of(m: &Mapping) -> &str {
    m.get("override").and_then(|v| v.as_str()).unwrap_or("")
}

/// Pebble's `CombineLayers`: later layers over earlier ones by each entry's `override`, then
/// the result validated. Checks and log targets merge key by key.
pub fn combine(layers: &[Layer]) -> Result<Layer, String> {
    let mut out = Layer::default();
    if let Some(last) = layers.last() {
        out.summary = last.summary.clone();
        out.description = last.description.clone();
    }
    for layer in layers {
        for (name, svc) in &layer.services {
            match svc.override_.as_str() {
                "merge" if out.services.contains_key(name) => {
                    out.services.get_mut(name).unwrap().merge(svc);
                }
                "merge" | "replace" => {
                    out.services.insert(name.clone(), svc.clone());
                }
                "" => {
                    return Err(format!(
                        "layer {:?} must define \"override\" for service {name:?}",
                        layer.label
                    ))
                }
                _ => {
                    return Err(format!(
                        "layer {:?} has invalid \"override\" value for service {name:?}",
                        layer.label
                    ))
                }
            }
        }
        for (kind, theirs, mine) in [
            ("check", &layer.checks, &mut out.checks),
            ("log target", &layer.log_targets, &mut out.log_targets),
        ] {
            for (name, m) in theirs {
                match override_of(m) {
                    "merge" if mine.contains_key(name) => {
                        let old = mine.get_mut(name).unwrap();
                        for (k, v) in m {
                            old.insert(k.clone(), v.clone());
                        }
                    }
                    "merge" | "replace" => {
                        mine.insert(name.clone(), m.clone());
                    }
                    "" => {
                        return Err(format!(
                            "layer {:?} must define \"override\" for {kind} {name:?}",
                            layer.label
                        ))
                    }
                    _ => {
                        return Err(format!(
                            "layer {:?} has invalid \"override\" value for {kind} {name:?}",
                            layer.label
                        ))
                    }
                }
            }
        }
    }
    let valid_action = |a: &str| matches!(a, "" | "restart" | "shutdown" | "ignore");
    for (name, svc) in &out.services {
        if svc.command.is_empty() {
            return Err(format!("plan must define \"command\" for service {name:?}"));
        }
        if let Err(e) = svc.command_args(name) {
            return Err(format!("plan service {name:?} command invalid: {e}"));
        }
        if !valid_action(&svc.on_success) {
            return Err(format!(
                "plan service {name:?} on-success action {:?} invalid",
                svc.on_success
            ));
        }
        if !valid_action(&svc.on_failure) {
            return Err(format!(
                "plan service {name:?} on-failure action {:?} invalid",
                svc.on_failure
            ));
        }
        for a in svc.on_check_failure.values() {
            if !valid_action(a) {
                return Err(format!(
                    "plan service {name:?} on-check-failure action {a:?} invalid"
                ));
            }
        }
        if let Some(f) = svc.backoff_factor.filter(|f| *f < 1.0) {
            return Err(format!(
                "plan service {name:?} backoff-factor must be 1.0 or greater, not {f}"
            ));
        }
    }
    check_requires(&out.services)?;
    Ok(out)
}

/// The plan of a list of layers.
pub fn plan_of(layers: &[Layer]) -> Result<Plan, String> {
    let c = combine(layers)?;
    Ok(Plan {
        services: c.services,
        checks: c.checks,
        log_targets: c.log_targets,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations_print_like_go() {
        for (d, s) in [
            (Duration::ZERO, "0s"),
            (Duration::from_millis(500), "500ms"),
            (Duration::from_micros(1500), "1.5ms"),
            (Duration::from_millis(1500), "1.5s"),
            (Duration::from_secs(90), "1m30s"),
            (Duration::from_secs(3600), "1h0m0s"),
        ] {
            assert_eq!(go_duration(d), s);
        }
    }

    #[test]
    fn commands_split_like_shlex() {
        assert_eq!(
            shlex_split(r#"/bin/x serve --config "/a b" 'c d' e\ f # note"#).unwrap(),
            ["/bin/x", "serve", "--config", "/a b", "c d", "e f"]
        );
        assert_eq!(
            shlex_split("x 'open").unwrap_err(),
            "EOF found when expecting closing quote"
        );
        assert_eq!(
            parse_command("x a [ --b c ]").unwrap(),
            (
                vec!["x".to_string(), "a".to_string()],
                vec!["--b".to_string(), "c".to_string()]
            )
        );
        assert_eq!(
            parse_command("[ x ]").unwrap_err(),
            "cannot start command with [ ... ] group"
        );
    }

    #[test]
    fn layers_merge_and_replace() {
        let a = parse_layer(
            "base",
            "services:\n  svc:\n    override: replace\n    command: /bin/a\n    environment: {A: 1, B: x}\n",
        )
        .unwrap();
        let b = parse_layer(
            "more",
            "services:\n  svc:\n    override: merge\n    environment: {B: y}\n    startup: enabled\n",
        )
        .unwrap();
        let p = plan_of(&[a.clone(), b]).unwrap();
        let svc = &p.services["svc"];
        assert_eq!(svc.command, "/bin/a");
        assert_eq!(svc.startup, "enabled");
        assert_eq!(svc.environment["A"], "1");
        assert_eq!(svc.environment["B"], "y");
        let c = parse_layer("c", "services:\n  svc:\n    command: /bin/c\n").unwrap();
        assert_eq!(
            plan_of(&[a, c]).unwrap_err(),
            "layer \"c\" must define \"override\" for service \"svc\""
        );
        assert!(parse_layer("d", "services:\n  svc:\n    bogus: 1\n")
            .unwrap_err()
            .starts_with("cannot parse layer \"d\": "));
    }
}
