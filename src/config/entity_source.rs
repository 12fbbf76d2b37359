//! The `entity_source` section: where cedargate asks for the entities a check needs that live
//! in the application's own data (README, "Entity data from the application"), which entity
//! types it asks for, and how long an answer is kept.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::Problem;

/// The entity source: an HTTP endpoint answering batches of uids with Cedar entity JSON.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntitySourceSettings {
    /// `POST` here with `{"uids": [{"type": "Order", "id": "1002"}, …]}`.
    pub url: String,
    /// CA bundle the source's certificate must chain to (default: the system's roots).
    pub ca_file: Option<PathBuf>,
    /// Client certificate and key (PEM) presented to the source (mTLS).
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
    /// A file whose contents (trimmed) are sent as `Authorization: Bearer …`, read at start-up.
    pub bearer_token_file: Option<PathBuf>,
    /// How long one fetch may take; a check also never waits beyond its own deadline.
    pub timeout: Duration,
    /// Largest answer read, in bytes; a larger one is a failed fetch.
    pub max_response_bytes: usize,
    /// The entity types fetched, by name, with how their answers are kept.
    pub types: BTreeMap<String, EntityTypeSettings>,
}

/// How the answers for one fetched entity type are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntityTypeSettings {
    /// How long a fetched entity is used without asking again.
    pub ttl: Duration,
    /// How long "no such entity" is remembered.
    pub negative_ttl: Duration,
    /// Entities of this type kept at most.
    pub max_entries: usize,
    /// How long past its `ttl` an entity is still used when the source cannot answer
    /// (keep-last-good); beyond it the check is denied, 503 `entity_unavailable`.
    pub max_stale: Duration,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawEntitySource {
    url: String,
    #[serde(default)]
    insecure_allow_http: bool,
    ca_file: Option<PathBuf>,
    client_cert: Option<PathBuf>,
    client_key: Option<PathBuf>,
    bearer_token_file: Option<PathBuf>,
    timeout: Option<String>,
    max_response_bytes: Option<usize>,
    #[serde(default)]
    types: BTreeMap<String, RawEntityType>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEntityType {
    ttl: Option<String>,
    negative_ttl: Option<String>,
    max_entries: Option<usize>,
    max_stale: Option<String>,
}

fn duration(
    value: Option<String>,
    field: String,
    default: Duration,
    problems: &mut Vec<Problem>,
) -> Duration {
    let Some(text) = value else { return default };
    match humantime::parse_duration(&text) {
        Ok(d) if !d.is_zero() && d <= Duration::from_secs(365 * 24 * 3600) => d,
        _ => {
            problems.push(Problem {
                field: field.into(),
                value: text,
                fix: "write a positive duration of at most a year, such as 250ms, 30s or 5m",
            });
            default
        }
    }
}

pub(super) fn build(
    raw: RawEntitySource,
    base: &std::path::Path,
    problems: &mut Vec<Problem>,
) -> EntitySourceSettings {
    let RawEntitySource {
        url,
        insecure_allow_http,
        ca_file,
        client_cert,
        client_key,
        bearer_token_file,
        timeout,
        max_response_bytes,
        types,
    } = raw;
    if !super::issuers::uri_allowed(&url, insecure_allow_http) {
        problems.push(Problem {
            field: "entity_source.url".into(),
            value: url.clone(),
            fix: "use https:// without user:password@; plain http is accepted only to a loopback address with `insecure_allow_http: true`",
        });
    }
    if client_cert.is_some() != client_key.is_some() {
        problems.push(Problem {
            field: "entity_source.client_cert".into(),
            value: String::new(),
            fix: "give client_cert and client_key together (PEM files), or neither",
        });
    }
    if types.is_empty() {
        problems.push(Problem {
            field: "entity_source.types".into(),
            value: String::new(),
            fix: "name the entity types to fetch, e.g. `types: { Order: { ttl: 30s } }`",
        });
    }
    let types = types
        .into_iter()
        .map(|(name, raw)| {
            let field = |what: &str| format!("entity_source.types.{name}.{what}");
            let settings = EntityTypeSettings {
                ttl: duration(raw.ttl, field("ttl"), Duration::from_secs(30), problems),
                negative_ttl: duration(
                    raw.negative_ttl,
                    field("negative_ttl"),
                    Duration::from_secs(5),
                    problems,
                ),
                max_entries: match raw.max_entries {
                    Some(0) => {
                        problems.push(Problem {
                            field: field("max_entries").into(),
                            value: "0".into(),
                            fix: "must be at least 1",
                        });
                        10_000
                    }
                    entries => entries.unwrap_or(10_000),
                },
                max_stale: duration(
                    raw.max_stale,
                    field("max_stale"),
                    Duration::from_secs(300),
                    problems,
                ),
            };
            (name, settings)
        })
        .collect();
    let path = |p: Option<PathBuf>| p.map(|p| base.join(p));
    EntitySourceSettings {
        url,
        ca_file: path(ca_file),
        client_cert: path(client_cert),
        client_key: path(client_key),
        bearer_token_file: path(bearer_token_file),
        timeout: duration(
            timeout,
            "entity_source.timeout".into(),
            Duration::from_millis(250),
            problems,
        ),
        max_response_bytes: match max_response_bytes {
            Some(0) => {
                problems.push(Problem {
                    field: "entity_source.max_response_bytes".into(),
                    value: "0".into(),
                    fix: "must be at least 1",
                });
                1024 * 1024
            }
            bytes => bytes.unwrap_or(1024 * 1024),
        },
        types,
    }
}
