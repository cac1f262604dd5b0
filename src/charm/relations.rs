//! The charm's relations: `s3-credentials` to s3-integrator (where backups go) and
//! `object-storage` to minio (MinIO's keys). Reading a databag is a plain function of its
//! contents, so both interface versions are tested on recorded shapes.

use std::collections::BTreeMap;

use crate::charm::hook_tools::{local_app, Bag, HookToolError, HookTools};
use crate::juju::discovery::MinioAccess;
use crate::juju::ObjectStorage;
use crate::secret::Secret;
use crate::storage::{S3Settings, Sse, UriStyle, SSE_HEADER, SSE_KMS_KEY_HEADER};

pub const S3_ENDPOINT: &str = "s3-credentials";
/// A second s3-integrator: where `copy-backup` (and `copy-after-backup`) put the off-site copy.
pub const S3_SECONDARY_ENDPOINT: &str = "s3-secondary";
pub const OBJECT_STORAGE_ENDPOINT: &str = "object-storage";

/// Where the destination stands, for status and for the actions.
#[derive(Debug)]
pub enum S3State {
    /// No relation: the operator has to integrate.
    NotRelated,
    /// Related, but s3-integrator has not published (or has not got its keys yet).
    Waiting {
        relation: String,
        app: String,
    },
    /// Published but unusable: what is wrong, in the provider's terms.
    Invalid {
        relation: String,
        problem: String,
    },
    Ready(Box<S3Destination>),
}

/// The s3-integrator's answer, read into settings.
#[derive(Debug, Clone)]
pub struct S3Destination {
    pub relation: String,
    pub settings: S3Settings,
    /// PEM certificates to trust for the endpoint (the `tls-ca-chain` key).
    pub tls_ca_chain: Vec<String>,
    /// `v0` (keys in the databag, s3-integrator 1/) or `v1` (keys in a Juju secret, 2/).
    pub version: &'static str,
}

/// Reads an s3-integrator application databag. `secret` is the content of the Juju secret
/// `secret-extra` names (v1); v0 carries the keys in the bag itself.
pub fn s3_destination(
    relation: &str,
    bag: &BTreeMap<String, String>,
    secret: Option<&BTreeMap<String, Secret>>,
) -> Result<S3Destination, String> {
    let get = |k: &str| bag.get(k).map(|v| v.trim()).filter(|v| !v.is_empty());
    let (access, secret_key, version) = match secret {
        Some(s) => {
            let key = |k: &str| {
                s.get(k)
                    .filter(|v| !v.is_empty())
                    .cloned()
                    .ok_or_else(|| format!("the secret s3-integrator shares has no `{k}`"))
            };
            (key("access-key")?, key("secret-key")?, "v1")
        }
        None => {
            let key = |k: &str| {
                get(k).map(Secret::new).ok_or_else(|| {
                    format!("s3-integrator sent no `{k}`: run its sync-s3-credentials action")
                })
            };
            (key("access-key")?, key("secret-key")?, "v0")
        }
    };
    let bucket = get("bucket")
        .ok_or(
            "s3-integrator sent no `bucket`: set it with `juju config s3-integrator bucket=...`",
        )?
        .to_string();
    let endpoint = get("endpoint")
        .unwrap_or("https://s3.amazonaws.com")
        .trim_end_matches('/')
        .to_string();
    if !endpoint.starts_with("http://") && !endpoint.starts_with("https://") {
        return Err(format!(
            "s3-integrator's endpoint {endpoint:?} is not an http(s) URL: `juju config s3-integrator endpoint=https://...`"
        ));
    }
    let uri_style = match get("s3-uri-style") {
        Some("path") => UriStyle::Path,
        Some("host") | Some("virtual") => UriStyle::Host,
        Some("auto") | None if endpoint.contains("amazonaws.com") => UriStyle::Host,
        Some("auto") | None => UriStyle::Path,
        Some(other) => {
            return Err(format!(
                "s3-integrator's s3-uri-style {other:?} is not path, host or auto"
            ))
        }
    };
    // PEM or base64 of PEM per element, depending on the s3-integrator version.
    let tls_ca_chain = match get("tls-ca-chain").filter(|c| !c.trim().is_empty()) {
        None => vec![],
        Some(chain) => crate::storage::tls::relation_chain(chain).map_err(|e| {
            format!("s3-integrator's tls-ca-chain: {e}: `juju config s3-integrator tls-ca-chain=\"$(base64 -w0 ca.pem)\"`")
        })?,
    };
    let sse = sse_from_attributes(get("attributes"))?;
    Ok(S3Destination {
        relation: relation.to_string(),
        settings: S3Settings {
            endpoint,
            bucket,
            path: get("path").unwrap_or("").trim_matches('/').to_string(),
            region: get("region").unwrap_or("us-east-1").to_string(),
            uri_style,
            access_key: access,
            secret_key,
            sse,
        },
        tls_ca_chain,
        version,
    })
}

/// Server-side encryption from s3-integrator's `attributes` (a JSON list of `header:value`, the
/// HTTP headers it wants on writes). The encryption headers are honoured; a malformed list is
/// an error; other headers are not sent (none of them changes what is stored).
fn sse_from_attributes(attributes: Option<&str>) -> Result<Option<Sse>, String> {
    let Some(raw) = attributes else {
        return Ok(None);
    };
    let bad = |why: String| {
        format!("s3-integrator's attributes {raw:?}: {why}: `juju config s3-integrator attributes=x-amz-server-side-encryption:aws:kms`")
    };
    let list: Vec<String> = serde_json::from_str(raw)
        .map_err(|e| bad(format!("not a JSON list of header:value strings ({e})")))?;
    let (mut mode, mut key) = (None, None);
    for item in &list {
        let (name, value) = item
            .split_once(':')
            .ok_or_else(|| bad(format!("{item:?} has no `:` between header and value")))?;
        match name.trim().to_ascii_lowercase().as_str() {
            SSE_HEADER => mode = Some(value.trim().to_string()),
            SSE_KMS_KEY_HEADER => key = Some(value.trim().to_string()),
            _ => {}
        }
    }
    match (mode, key) {
        (None, None) => Ok(None),
        (None, Some(_)) => Err(bad(format!("{SSE_KMS_KEY_HEADER} without {SSE_HEADER}"))),
        (Some(m), k) => Sse::parse(&m, k.as_deref()).map(Some).map_err(bad),
    }
}

/// The destination, as the relation has it now; `broken` is a relation on its way out (older
/// Juju still lists it during relation-broken).
pub fn s3_state(tools: &HookTools, broken: Option<&str>) -> Result<S3State, HookToolError> {
    s3_state_on(tools, S3_ENDPOINT, broken)
}

/// [`s3_state`] of the relation on `endpoint` (the destination's, or the secondary's).
pub fn s3_state_on(
    tools: &HookTools,
    endpoint: &str,
    broken: Option<&str>,
) -> Result<S3State, HookToolError> {
    let ids = tools.relation_ids(endpoint)?;
    let Some(id) = ids.into_iter().find(|id| Some(id.as_str()) != broken) else {
        return Ok(S3State::NotRelated);
    };
    let Some(app) = tools.relation_app(&id)? else {
        return Ok(S3State::Waiting {
            relation: id,
            app: "s3-integrator".into(),
        });
    };
    let bag = tools.relation_get(&id, Bag::App, &app)?;
    if bag.is_empty() {
        return Ok(S3State::Waiting { relation: id, app });
    }
    let secret = match bag.get("secret-extra").filter(|s| !s.is_empty()) {
        None => None,
        Some(uri) => match tools.secret_get(uri) {
            Ok(s) => Some(s),
            Err(e) => {
                return Ok(S3State::Invalid {
                    relation: id,
                    problem: format!("cannot read the credentials secret {app} shared: {e}"),
                })
            }
        },
    };
    Ok(match s3_destination(&id, &bag, secret.as_ref()) {
        Ok(d) => S3State::Ready(Box::new(d)),
        Err(problem) => S3State::Invalid {
            relation: id,
            problem,
        },
    })
}

/// What the requirer writes on its side of `s3`: the bucket it asks for (the data-platform
/// library's default name, as mysql-k8s uses) and, for v1 providers, the secrets it needs.
pub fn s3_request(relation: &str) -> BTreeMap<String, String> {
    let n = relation.rsplit(':').next().unwrap_or(relation);
    BTreeMap::from([
        ("bucket".to_string(), format!("relation-{n}")),
        (
            "requested-secrets".to_string(),
            r#"["access-key", "secret-key"]"#.to_string(),
        ),
    ])
}

/// What the requirer writes on object-storage: the serialized-data interface versions it
/// speaks. minio sends nothing to a related app that has not listed them.
pub fn object_storage_request() -> BTreeMap<String, String> {
    BTreeMap::from([("_supported_versions".to_string(), "- v1\n".to_string())])
}

/// Writes our side of every s3-credentials, s3-secondary and object-storage relation (leader only: it is
/// the app bag), except one being removed.
pub fn write_our_side(tools: &HookTools, broken: Option<&str>) -> Result<(), HookToolError> {
    type Request = fn(&str) -> BTreeMap<String, String>;
    let ours: [(&str, Request); 3] = [
        (S3_ENDPOINT, s3_request),
        (S3_SECONDARY_ENDPOINT, s3_request),
        (OBJECT_STORAGE_ENDPOINT, |_| object_storage_request()),
    ];
    for (endpoint, request) in ours {
        for id in tools.relation_ids(endpoint)? {
            if Some(id.as_str()) == broken {
                continue;
            }
            let want = request(&id);
            let have = tools
                .relation_get(&id, Bag::App, &local_app())
                .unwrap_or_default();
            if want.iter().any(|(k, v)| have.get(k) != Some(v)) {
                tools.relation_set(&id, Bag::App, &want)?;
            }
        }
    }
    Ok(())
}

pub const METRICS_ENDPOINT: &str = "metrics-endpoint";

/// What prometheus_scrape's provider side says: the job (leader, app bag) and where this
/// unit is (every unit, unit bag). Prometheus expands `*` to each unit's address.
pub fn write_metrics(
    tools: &HookTools,
    leader: bool,
    unit: &str,
    model: &str,
    port: u16,
    broken: Option<&str>,
) -> Result<(), HookToolError> {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "localhost".into());
    for id in tools.relation_ids(METRICS_ENDPOINT)? {
        if Some(id.as_str()) == broken {
            continue;
        }
        if leader {
            let jobs = serde_json::json!([{
                "metrics_path": "/metrics",
                "static_configs": [{"targets": [format!("*:{port}")]}],
            }]);
            let topology = super::cos::Topology {
                model: model.to_string(),
                model_uuid: std::env::var("JUJU_MODEL_UUID").unwrap_or_default(),
                application: local_app(),
            };
            let metadata = serde_json::json!({
                "model": model,
                "model_uuid": topology.model_uuid,
                "application": topology.application,
                "unit": unit,
                "charm_name": "backup-agent",
            });
            let mut bag = BTreeMap::from([
                ("scrape_jobs".to_string(), jobs.to_string()),
                ("scrape_metadata".to_string(), metadata.to_string()),
            ]);
            match super::cos::alert_rules(&topology) {
                Ok(rules) => {
                    bag.insert("alert_rules".to_string(), rules.to_string());
                }
                Err(e) => tools.log("WARNING", &e)?,
            }
            tools.relation_set(&id, Bag::App, &bag)?;
        }
        tools.relation_set(
            &id,
            Bag::Unit,
            &BTreeMap::from([
                ("prometheus_scrape_unit_address".to_string(), host.clone()),
                ("prometheus_scrape_unit_name".to_string(), unit.to_string()),
            ]),
        )?;
    }
    Ok(())
}

/// MinIO's keys from our own object-storage relation, if there is one with data; a malformed
/// bag is an error (not a reason to look elsewhere).
pub fn minio(tools: &HookTools) -> Result<Option<MinioAccess>, String> {
    let ids = tools
        .relation_ids(OBJECT_STORAGE_ENDPOINT)
        .map_err(|e| e.to_string())?;
    let Some(id) = ids.into_iter().next() else {
        return Ok(None);
    };
    let Some(app) = tools.relation_app(&id).map_err(|e| e.to_string())? else {
        return Ok(None);
    };
    let bag = tools
        .relation_get(&id, Bag::App, &app)
        .map_err(|e| e.to_string())?;
    if bag.is_empty() {
        return Ok(None);
    }
    let os = ObjectStorage::from_relation_data(&bag)?;
    Ok(Some(MinioAccess::from_object_storage(
        os,
        format!("the {OBJECT_STORAGE_ENDPOINT} relation to {app} ({id})"),
    )))
}
