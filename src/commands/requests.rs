//! Requests through the bucket (the capsule's "S3 watcher"): whoever can write to the
//! repository's bucket (a pipeline step, a CI job, an operator with bucket keys only) asks for
//! a backup by writing a small JSON object under `backup-agent/requests/`, and reads the
//! answer from the same place. The daemon (`serve --requests`) claims each request with a
//! conditional PUT, so two daemons never run the same one, runs it, writes its result next to
//! it, and moves both to `backup-agent/requests-archive/<date>/`. Bad requests are answered,
//! never run. The format is docs/FORMAT.md's "Requests".

use std::collections::BTreeMap;

use chrono::{DateTime, NaiveDate, Utc};
use futures::TryStreamExt;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::components::check::Sample;
use crate::components::Component;
use crate::repository::layout::REPO;
use crate::repository::lock::LeaseInfo;
use crate::retry::{retry, ATTEMPTS};
use crate::storage::{Store, StoreError};

/// The request and result schema this agent reads and writes.
pub const REQUEST_SCHEMA: u32 = 1;
/// A request is a few hundred bytes; anything past this is refused unread.
pub const MAX_REQUEST_BYTES: u64 = 16 << 10;
/// Request names: what a key under `requests/` may be called (`<name>.json`).
const NAME_MAX: usize = 128;

pub fn requests_prefix() -> String {
    format!("{REPO}/requests/")
}

pub fn request_key(name: &str) -> String {
    format!("{REPO}/requests/{name}.json")
}

pub fn claim_key(name: &str) -> String {
    format!("{REPO}/requests/{name}.claim")
}

pub fn result_key(name: &str) -> String {
    format!("{REPO}/requests/{name}.result.json")
}

pub fn archive_prefix() -> String {
    format!("{REPO}/requests-archive/")
}

/// Where a finished request and its result go: under the day it finished (UTC), so that the
/// archive's retention walks it oldest first and stops at the first day it keeps.
pub fn archived_key(day: NaiveDate, name: &str, result: bool) -> String {
    let ext = if result { "result.json" } else { "json" };
    format!("{REPO}/requests-archive/{day}/{name}.{ext}")
}

/// The marker of a client id: the first request that used it. Client ids make requests
/// idempotent: a retried write of the same request is answered as a duplicate, not run twice.
pub fn client_id_key(client_id: &str) -> String {
    format!("{REPO}/requests-archive/client-ids/{client_id}")
}

/// What a client writes: `backup-agent/requests/<name>.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Request {
    pub schema_version: u32,
    /// create-backup, verify, drill, copy, or restore (when the daemon allows it).
    pub kind: String,
    #[serde(default)]
    pub params: Map<String, Value>,
    /// Who asked, free text (shown in the result and the daemon's log).
    #[serde(default)]
    pub requested_by: String,
    /// The client's own id for this request: a second request with the same id is a
    /// duplicate, answered and not run.
    pub client_id: String,
}

/// A request understood: what to run.
#[derive(Debug, Clone, PartialEq)]
pub enum Asked {
    CreateBackup {
        label: String,
        components: Vec<Component>,
    },
    Verify {
        backup_id: String,
        read_data: bool,
        sample: Option<Sample>,
    },
    Drill {
        backup_id: Option<String>,
        sample: Option<Sample>,
        max_bytes: Option<u64>,
    },
    Copy {
        backup_id: Option<String>,
    },
    Restore {
        backup_id: String,
        components: Vec<Component>,
        safety_backup: bool,
    },
}

impl Asked {
    pub fn kind(&self) -> &'static str {
        match self {
            Asked::CreateBackup { .. } => "create-backup",
            Asked::Verify { .. } => "verify",
            Asked::Drill { .. } => "drill",
            Asked::Copy { .. } => "copy",
            Asked::Restore { .. } => "restore",
        }
    }
}

/// The kinds a request may ask for.
pub const KINDS: [&str; 5] = ["create-backup", "verify", "drill", "copy", "restore"];

/// The kind a request's bytes name, when it is one of [`KINDS`]; `invalid` otherwise (for a
/// bad request's answer and its metric).
pub fn kind_of(bytes: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(bytes)
        .ok()
        .and_then(|v| v["kind"].as_str().map(str::to_string))
        .filter(|k| KINDS.contains(&k.as_str()))
        .unwrap_or_else(|| "invalid".into())
}

/// Whether a name (`<name>.json` under `requests/`) is one a request may have. Names that
/// would read as another object's (`x.result`, `x.claim`) are not.
pub fn name_ok(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= NAME_MAX
        && !name.starts_with('.')
        && !name.ends_with(".result")
        && !name.ends_with(".claim")
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

/// Reads a request's bytes; the error says what is wrong and how to write it right.
pub fn parse(bytes: &[u8], allow_restore: bool) -> Result<(Request, Asked), String> {
    let r: Request = serde_json::from_slice(bytes).map_err(|e| {
        format!("not a request: {e}. Write JSON like {{\"schema-version\": 1, \"kind\": \"create-backup\", \"params\": {{\"label\": \"nightly\"}}, \"requested-by\": \"ci\", \"client-id\": \"ci-run-42\"}}")
    })?;
    if r.schema_version != REQUEST_SCHEMA {
        return Err(format!(
            "schema-version {} is not one this agent reads (it reads {REQUEST_SCHEMA})",
            r.schema_version
        ));
    }
    if !name_ok(&r.client_id) {
        return Err(format!(
            "client-id {:?}: give 1 to {NAME_MAX} letters, digits, '-', '_' or '.'",
            r.client_id
        ));
    }
    let p = Params::new(&r.params);
    let asked = match r.kind.as_str() {
        "create-backup" => Asked::CreateBackup {
            label: p.text("label")?.unwrap_or_else(|| "request".into()),
            components: p.components()?.unwrap_or_else(|| Component::ALL.to_vec()),
        },
        "verify" => Asked::Verify {
            backup_id: p.backup_id()?.ok_or("verify needs params.backup-id")?,
            read_data: p.flag("read-data")?.unwrap_or(false),
            sample: p.sample()?,
        },
        "drill" => Asked::Drill {
            backup_id: p.backup_id()?,
            sample: p.sample()?,
            max_bytes: p
                .text("max-bytes")?
                .map(|s| crate::units::parse_size(&s).map_err(|e| format!("params.max-bytes: {e}")))
                .transpose()?,
        },
        "copy" => Asked::Copy {
            backup_id: p.backup_id()?,
        },
        "restore" if !allow_restore => {
            return Err("restore requests are disabled on this daemon: a restore replaces the live control plane, so it must be allowed explicitly (serve --allow-restore-requests, charm config allow-restore-requests=true), or run it with `juju run backup-agent/0 restore`".into())
        }
        "restore" => Asked::Restore {
            backup_id: p.backup_id()?.ok_or("restore needs params.backup-id")?,
            components: p.components()?.unwrap_or_default(),
            safety_backup: !p.flag("no-safety-backup")?.unwrap_or(false),
        },
        other => {
            return Err(format!(
                "unknown kind {other:?}: one of {}",
                KINDS.join(", ")
            ))
        }
    };
    p.no_others(asked.kind())?;
    Ok((r, asked))
}

/// A request's params, each read once; what is left over is an error.
struct Params<'a> {
    all: &'a Map<String, Value>,
    read: std::cell::RefCell<Vec<&'static str>>,
}

impl<'a> Params<'a> {
    fn new(all: &'a Map<String, Value>) -> Self {
        Params {
            all,
            read: Default::default(),
        }
    }

    fn get(&self, k: &'static str) -> Option<&'a Value> {
        self.read.borrow_mut().push(k);
        self.all.get(k).filter(|v| !v.is_null())
    }

    fn text(&self, k: &'static str) -> Result<Option<String>, String> {
        match self.get(k) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(Value::Number(n)) => Ok(Some(n.to_string())),
            Some(v) => Err(format!("params.{k}: {v} is not a string")),
        }
    }

    fn flag(&self, k: &'static str) -> Result<Option<bool>, String> {
        match self.get(k) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(v) => Err(format!("params.{k}: {v} is not true or false")),
        }
    }

    fn backup_id(&self) -> Result<Option<String>, String> {
        self.text("backup-id")?
            .map(|id| {
                crate::repository::parse_backup_id(&id)
                    .map_err(|e| format!("params.backup-id: {e}"))
            })
            .transpose()
    }

    fn sample(&self) -> Result<Option<Sample>, String> {
        self.text("sample")?
            .map(|s| Sample::parse(&s).map_err(|e| format!("params.sample: {e}")))
            .transpose()
    }

    fn components(&self) -> Result<Option<Vec<Component>>, String> {
        let Some(v) = self.get("components") else {
            return Ok(None);
        };
        let names: Vec<String> = match v {
            Value::String(s) => s.split(',').map(|c| c.trim().to_string()).collect(),
            Value::Array(a) => a
                .iter()
                .map(|c| c.as_str().map(str::to_string))
                .collect::<Option<_>>()
                .ok_or("params.components: a list of names")?,
            other => return Err(format!("params.components: {other} is not a list")),
        };
        let mut out = names
            .iter()
            .map(|n| {
                n.parse::<Component>().map_err(|_| {
                    format!("params.components: unknown component {n:?} (kfp-db, katib-db, mlmd, mlpipeline)")
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        out.sort();
        out.dedup();
        Ok(Some(out))
    }

    fn no_others(&self, kind: &str) -> Result<(), String> {
        let read = self.read.borrow();
        let extra: Vec<&String> = self
            .all
            .keys()
            .filter(|k| !read.contains(&k.as_str()))
            .collect();
        if extra.is_empty() {
            return Ok(());
        }
        Err(format!(
            "params {} are not parameters of {kind} (it takes: {})",
            extra
                .iter()
                .map(|k| format!("{k:?}"))
                .collect::<Vec<_>>()
                .join(", "),
            read.join(", ")
        ))
    }
}

/// What the daemon answers: `backup-agent/requests/<name>.result.json`, then in the archive.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct RequestResult {
    pub schema_version: u32,
    /// The request's name (its key without `.json`).
    pub request: String,
    pub kind: String,
    /// `running`, then `completed`, `passed`, `failed` or `rejected` (never run).
    pub phase: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup_id: Option<String>,
    #[serde(default)]
    pub errors: Vec<String>,
    /// What `backup-agent <command> --output json` prints for the same run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<Value>,
    #[serde(default)]
    pub requested_by: String,
    #[serde(default)]
    pub client_id: String,
    /// A duplicate: the request that first used its client id (whose result is the answer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duplicate_of: Option<String>,
    /// The daemon that answered: `host pid`.
    #[serde(default)]
    pub answered_by: String,
    pub received_at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<DateTime<Utc>>,
}

impl RequestResult {
    pub fn finished(&self) -> bool {
        self.phase != "running"
    }

    /// Whether the outcome is a success (the CLI's exit code).
    pub fn succeeded(&self) -> bool {
        matches!(self.phase.as_str(), "completed" | "passed")
    }
}

/// One request name under `requests/` and which of its objects are there, with their sizes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pending {
    pub name: String,
    pub request: Option<u64>,
    pub claim: Option<u64>,
    pub result: Option<u64>,
    /// A key under `requests/` that is no request, claim or result (a name not allowed, a
    /// folder, no `.json`): answered as a bad request under a name of its own (`invalid~...`),
    /// which no request's name can take.
    pub stray: Option<String>,
}

/// What is under `requests/`, by name, at most `max` names (the rest next time).
pub async fn pending(store: &Store, page: usize, max: usize) -> Result<Vec<Pending>, StoreError> {
    let prefix = requests_prefix();
    let mut by: BTreeMap<String, Pending> = BTreeMap::new();
    let mut listing = store.list_unordered(&prefix, page);
    while let Some(o) = listing.try_next().await? {
        let rest = &o.key[prefix.len()..];
        let (name, what) = if let Some(n) = rest.strip_suffix(".result.json") {
            (n, 'r')
        } else if let Some(n) = rest.strip_suffix(".claim") {
            (n, 'c')
        } else if let Some(n) = rest.strip_suffix(".json") {
            (n, 'q')
        } else {
            (rest, 's')
        };
        let valid = what != 's' && name_ok(name);
        let name = if valid {
            name.to_string()
        } else {
            stray_name(rest)
        };
        if !by.contains_key(&name) && by.len() >= max {
            continue;
        }
        let p = by.entry(name.clone()).or_insert_with(|| Pending {
            name,
            ..Pending::default()
        });
        match what {
            _ if !valid => p.stray = Some(o.key.clone()),
            'r' => p.result = Some(o.size),
            'c' => p.claim = Some(o.size),
            _ => p.request = Some(o.size),
        }
    }
    Ok(by.into_values().collect())
}

/// A name to answer a misnamed key under: its allowed characters, and a hash of it all.
fn stray_name(key: &str) -> String {
    use sha2::Digest;
    let keep: String = key
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || "-_".contains(*c))
        .take(64)
        .collect();
    let h = hex::encode(&sha2::Sha256::digest(key.as_bytes())[..4]);
    // `~` is in no request's name.
    format!("invalid~{keep}-{h}")
}

/// Writes a new request under `name`; `false` when that name is taken.
pub async fn submit(store: &Store, name: &str, r: &Request) -> Result<bool, StoreError> {
    let body = serde_json::to_vec_pretty(r).expect("request serializes");
    let key = request_key(name);
    retry(ATTEMPTS, &key, || {
        store.put_bytes_if_absent(&key, &body, "application/json")
    })
    .await
}

/// Claims request `name` for this process for `ttl` (renewed with [`renew`] while it runs):
/// the claim written, or `None` when another daemon has it. A retried write whose first try
/// had landed is recognised by its nonce.
pub async fn claim(
    store: &Store,
    name: &str,
    ttl: std::time::Duration,
) -> Result<Option<LeaseInfo>, StoreError> {
    let info = LeaseInfo::mine(&format!("request {name}"), Utc::now(), ttl);
    let body = serde_json::to_vec_pretty(&info).expect("claim serializes");
    let key = claim_key(name);
    let created = retry(ATTEMPTS, &key, || {
        store.put_bytes_if_absent(&key, &body, "application/json")
    })
    .await?;
    if created {
        return Ok(Some(info));
    }
    Ok(match claimed_by(store, name).await? {
        Claim::Held(c) if c.nonce == info.nonce => Some(info),
        _ => None,
    })
}

/// Extends a claim this process holds by its time to live.
pub async fn renew(
    store: &Store,
    name: &str,
    claim: &LeaseInfo,
    ttl: std::time::Duration,
) -> Result<(), StoreError> {
    let mut c = claim.clone();
    c.expires_at = Utc::now() + ttl;
    let body = serde_json::to_vec_pretty(&c).expect("claim serializes");
    let key = claim_key(name);
    retry(ATTEMPTS, &key, || {
        store.put_bytes(&key, &body, "application/json")
    })
    .await
}

/// What a request's claim says.
#[derive(Debug)]
pub enum Claim {
    None,
    /// There, but no claim a daemon writes (too large, not a lease): nobody holds it.
    Junk,
    Held(LeaseInfo),
}

/// Who claimed `name`.
pub async fn claimed_by(store: &Store, name: &str) -> Result<Claim, StoreError> {
    let key = claim_key(name);
    match read_small(store, &key).await? {
        None => Ok(Claim::None),
        Some(b) => Ok(serde_json::from_slice(&b).map_or(Claim::Junk, Claim::Held)),
    }
}

/// An object that is a few hundred bytes when we wrote it: read only when it is small (a
/// client can write anything under `requests/`); `Some(empty)` when it is too large.
async fn read_small(store: &Store, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
    match retry(ATTEMPTS, key, || store.head(key)).await? {
        None => Ok(None),
        Some(o) if o.size > MAX_REQUEST_BYTES => Ok(Some(vec![])),
        Some(_) => match retry(ATTEMPTS, key, || store.get_bytes(key)).await {
            Ok(b) => Ok(Some(b)),
            Err(StoreError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        },
    }
}

/// Takes client id `client_id` for request `name`: `None` when it is this request's, or the
/// request that used it first.
pub async fn take_client_id(
    store: &Store,
    client_id: &str,
    name: &str,
) -> Result<Option<String>, StoreError> {
    let key = client_id_key(client_id);
    let created = retry(ATTEMPTS, &key, || {
        store.put_bytes_if_absent(&key, name.as_bytes(), "text/plain")
    })
    .await?;
    if created {
        return Ok(None);
    }
    let first = retry(ATTEMPTS, &key, || store.get_bytes(&key)).await?;
    let first = String::from_utf8_lossy(&first).trim().to_string();
    Ok((first != name).then_some(first))
}

/// The request's bytes: `None` when it is gone; empty when it is too large to read.
pub async fn read_request(store: &Store, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
    read_small(store, &request_key(name)).await
}

pub async fn write_result(store: &Store, r: &RequestResult) -> Result<(), StoreError> {
    let key = result_key(&r.request);
    let mut body = serde_json::to_vec_pretty(r).expect("result serializes");
    body.push(b'\n');
    retry(ATTEMPTS, &key, || {
        store.put_bytes(&key, &body, "application/json")
    })
    .await
}

/// Moves a finished request and its result into the archive, under the day it finished: the
/// archive copies first, then the originals go (the claim last, so that no other daemon takes
/// the request up again in between).
pub async fn archive(
    store: &Store,
    r: &RequestResult,
    request: Option<&[u8]>,
) -> Result<(), StoreError> {
    let day = r.finished_at.unwrap_or_else(Utc::now).date_naive();
    let mut body = serde_json::to_vec_pretty(r).expect("result serializes");
    body.push(b'\n');
    let put = |key: String, bytes: Vec<u8>| async move {
        retry(ATTEMPTS, &key, || {
            store.put_bytes(&key, &bytes, "application/json")
        })
        .await
    };
    if let Some(req) = request {
        put(archived_key(day, &r.request, false), req.to_vec()).await?;
    }
    put(archived_key(day, &r.request, true), body).await?;
    for key in [
        request_key(&r.request),
        result_key(&r.request),
        claim_key(&r.request),
    ] {
        retry(ATTEMPTS, &key, || store.delete(&key)).await?;
    }
    Ok(())
}

/// Deletes a stray key under `requests/` once it is answered in the archive.
pub async fn remove(store: &Store, key: &str) -> Result<(), StoreError> {
    retry(ATTEMPTS, key, || store.delete(key)).await
}

/// The result of request `name`: under `requests/` while it is there, else in the archive
/// under one of `days` (the days it may have finished on).
pub async fn result_of(
    store: &Store,
    name: &str,
    days: &[NaiveDate],
) -> Result<Option<RequestResult>, StoreError> {
    let mut keys = vec![result_key(name)];
    keys.extend(days.iter().map(|d| archived_key(*d, name, true)));
    for key in keys {
        // What does not read as a result (a client's junk under the name) is no answer.
        if let Some(r) = read_small(store, &key)
            .await?
            .and_then(|b| serde_json::from_slice(&b).ok())
        {
            return Ok(Some(r));
        }
    }
    Ok(None)
}

/// Deletes archived requests of days before `keep_from`, oldest first, with the client ids
/// their results name; the number of requests forgotten. The archive lists in day order, so
/// the walk stops at the first day kept.
pub async fn prune_archive(
    store: &Store,
    keep_from: NaiveDate,
    page: usize,
) -> Result<usize, StoreError> {
    let prefix = archive_prefix();
    let mut listing = store.list_stream(&prefix, page);
    let mut forgotten = 0;
    while let Some(o) = listing.try_next().await? {
        let rest = &o.key[prefix.len()..];
        let Some((day, file)) = rest.split_once('/') else {
            continue;
        };
        let Ok(day) = day.parse::<NaiveDate>() else {
            // `client-ids/` sorts after every day.
            break;
        };
        if day >= keep_from {
            break;
        }
        if file.ends_with(".result.json") {
            let client = retry(ATTEMPTS, &o.key, || store.get_bytes(&o.key))
                .await
                .ok()
                .and_then(|b| serde_json::from_slice::<RequestResult>(&b).ok())
                .map(|r| r.client_id)
                .filter(|c| name_ok(c));
            if let Some(c) = client {
                let key = client_id_key(&c);
                retry(ATTEMPTS, &key, || store.delete(&key)).await?;
            }
            forgotten += 1;
        }
        retry(ATTEMPTS, &o.key, || store.delete(&o.key)).await?;
    }
    Ok(forgotten)
}

/// A new request's name: when it was written, then the client id (so the folder lists in
/// the order requests came).
pub fn new_name(client_id: &str, now: DateTime<Utc>) -> String {
    format!("{}-{client_id}", now.format("%Y%m%dT%H%M%SZ"))
}

/// When a request named by [`new_name`] was written (`None` for other names).
pub fn written_at(name: &str) -> Option<DateTime<Utc>> {
    let stamp = name.get(..16)?;
    chrono::NaiveDateTime::parse_from_str(stamp, "%Y%m%dT%H%M%SZ")
        .ok()
        .map(|t| t.and_utc())
}

/// Polls for the final result of request `name`, written at `since`, every `poll` (give or
/// take a fifth), up to `timeout`; `seen` hears each phase as it changes. `None` when the
/// timeout passed first.
pub async fn wait(
    store: &Store,
    name: &str,
    since: DateTime<Utc>,
    poll: std::time::Duration,
    timeout: std::time::Duration,
    mut seen: impl FnMut(&str),
) -> Result<Option<RequestResult>, StoreError> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut last = String::new();
    loop {
        let mut days = vec![];
        let mut d = since.date_naive();
        while d <= Utc::now().date_naive() {
            days.push(d);
            d = d.succ_opt().expect("a day after");
        }
        let phase = match result_of(store, name, &days).await? {
            Some(r) if r.finished() => return Ok(Some(r)),
            Some(r) => r.phase,
            None => "waiting for a daemon to take it".into(),
        };
        if phase != last {
            seen(&phase);
            last = phase;
        }
        let now = tokio::time::Instant::now();
        if now >= deadline {
            return Ok(None);
        }
        let nap = poll.mul_f64(0.8 + rand::random::<f64>() * 0.4);
        tokio::time::sleep(nap.min(deadline - now)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(v: serde_json::Value) -> Result<Asked, String> {
        parse(v.to_string().as_bytes(), false).map(|(_, a)| a)
    }

    #[test]
    fn a_good_request_is_understood() {
        let a = req(serde_json::json!({
            "schema-version": 1, "kind": "create-backup", "client-id": "ci-1",
            "params": {"label": "nightly", "components": ["mlmd", "mlpipeline"]},
        }))
        .unwrap();
        assert_eq!(
            a,
            Asked::CreateBackup {
                label: "nightly".into(),
                components: vec![Component::Mlmd, Component::Mlpipeline]
            }
        );
    }

    #[test]
    fn bad_requests_are_named() {
        let cases = [
            (
                serde_json::json!({"kind": "create-backup", "client-id": "a"}),
                "schema-version",
            ),
            (
                serde_json::json!({"schema-version": 2, "kind": "create-backup", "client-id": "a"}),
                "schema-version 2",
            ),
            (
                serde_json::json!({"schema-version": 1, "kind": "explode", "client-id": "a"}),
                "unknown kind \"explode\"",
            ),
            (
                serde_json::json!({"schema-version": 1, "kind": "restore", "client-id": "a", "params": {"backup-id": "20261123T080841Z-be2523"}}),
                "restore requests are disabled",
            ),
            (
                serde_json::json!({"schema-version": 1, "kind": "verify", "client-id": "a"}),
                "verify needs params.backup-id",
            ),
            (
                serde_json::json!({"schema-version": 1, "kind": "verify", "client-id": "a", "params": {"backup-id": "../x"}}),
                "params.backup-id",
            ),
            (
                serde_json::json!({"schema-version": 1, "kind": "create-backup", "client-id": "a b"}),
                "client-id \"a b\"",
            ),
            (
                serde_json::json!({"schema-version": 1, "kind": "create-backup", "client-id": "a", "params": {"lable": "x"}}),
                "params \"lable\" are not parameters of create-backup",
            ),
            (
                serde_json::json!({"schema-version": 1, "kind": "create-backup", "client-id": "a", "extra": 1}),
                "unknown field `extra`",
            ),
        ];
        for (v, want) in cases {
            let e = req(v.clone()).unwrap_err();
            assert!(e.contains(want), "{v}: {e}");
        }
        let e = parse(b"{not json", false).unwrap_err();
        assert!(e.starts_with("not a request"), "{e}");
    }

    #[test]
    fn restore_runs_only_when_allowed() {
        let body = serde_json::json!({"schema-version": 1, "kind": "restore", "client-id": "a",
            "params": {"backup-id": "20261123T080841Z-be2523", "no-safety-backup": true}});
        let (_, a) = parse(body.to_string().as_bytes(), true).unwrap();
        assert_eq!(
            a,
            Asked::Restore {
                backup_id: "20261123T080841Z-be2523".into(),
                components: vec![],
                safety_backup: false
            }
        );
    }

    #[test]
    fn a_new_name_says_when_it_was_written() {
        let t = chrono::DateTime::parse_from_rfc3339("2026-12-07T10:11:12Z")
            .unwrap()
            .with_timezone(&Utc);
        let n = new_name("ci-1", t);
        assert_eq!(n, "20261207T101112Z-ci-1");
        assert_eq!(written_at(&n), Some(t));
        assert_eq!(written_at("nightly"), None);
    }

    #[test]
    fn names_are_plain() {
        assert!(name_ok("20261207T101010Z-ci-42"));
        for bad in [
            "",
            ".hidden",
            "a/b",
            "a b",
            "x.result",
            "x.claim",
            &"x".repeat(129),
        ] {
            assert!(!name_ok(bad), "{bad:?}");
        }
    }
}
