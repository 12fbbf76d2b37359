//! Decision records: the input of one decided check, written as one JSON line, from which
//! [`crate::decide::evaluate`] decides the check again (README, "Changing policies safely").
//!
//! A record holds what the decision core was given: the normalised request (method, host,
//! path, query, headers, destination, route facts, the body when the set in force reads it),
//! the peer as resolved, the verified token's facts and claims (never the token itself), the
//! entities fetched for it, the time, and the outcome with the policy version that produced
//! it. [`Record::inputs`] turns a record back into the core's inputs, so a replay decides
//! with the same `evaluate()` as a live check and the record's own time.
//!
//! What is never written: the credential headers ([`crate::config::NEVER_LOGGED`] and the
//! configured token header), the token's query parameter (`access_token` and the configured
//! one), under any spelling a lenient upstream reads as the same name (`x_api_key`,
//! `Access.Token`); values whose names `log.decisions.redact` lists are written as
//! `[redacted]`, in headers, query parameters, claims and a JSON body, at any depth. The
//! record lists what it left out (`left_out`: names, never values), and `cedargate replay`
//! reports a record as inexact when the set it decides with could read one of them.
//!
//! - [`writer`]: the rotated, size-bounded files, written off the check path.
//! - [`replay`]: re-deciding records against a policy set and summing up what changed.

pub mod replay;
pub mod writer;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::decision::{Evaluation, Outcome};
use crate::identity::peer::PeerError;
use crate::identity::{Peer, Presented, SpiffeId, TokenError, VerifiedToken};
use crate::request::{Destination, HttpRequest, Request, RequestBody};

/// The record format; a reader refuses another.
pub const FORMAT: u32 = 1;

/// Written in place of a value whose name `redact` lists.
pub const REDACTED: &str = "[redacted]";

/// One decided check, as written to a records file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Record {
    /// [`FORMAT`].
    pub format: u32,
    /// The check's time (seconds since the Unix epoch): what the policies saw as now.
    pub time: i64,
    pub request_id: String,
    pub request: RecordedRequest,
    pub peer: RecordedPeer,
    pub token: RecordedToken,
    /// `authentication.require_token` with an issuer: a route without `token:` requires one.
    pub token_required_by_default: bool,
    #[serde(default, skip_serializing_if = "RecordedFetched::is_empty")]
    pub fetched: RecordedFetched,
    /// What was left out or redacted (`header:<name>`, `query:<name>`, `claim:<name>`,
    /// `body`): names only.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub left_out: Vec<String>,
    /// What the policy set in force decided.
    pub outcome: RecordedOutcome,
    /// What the candidate set decided, when one was evaluated beside it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub candidate: Option<RecordedOutcome>,
}

/// The normalised request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecordedRequest {
    pub method: String,
    pub host: String,
    pub path: String,
    pub scheme: String,
    pub protocol: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub query: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub destination_address: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub destination_principal: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub extensions: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub route_metadata: BTreeMap<String, String>,
    /// The body, when the policy set in force reads one and it is JSON (with `redact`
    /// applied at any depth); a body that is not JSON is not written, only its size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    /// The body's size in bytes as Envoy sent it.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub body_bytes: usize,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub body_partial: bool,
    pub max_body_bytes: usize,
    pub max_body_depth: usize,
}

/// The peer as resolved, and why it was refused if it was.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecordedPeer {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub principal: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub address: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dns_sans: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// Hex SHA-256 of the certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_sha256: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<std::net::IpAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refused: Option<PeerError>,
}

/// The bearer token: none, refused (and why), or what verification established.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecordedToken {
    None,
    Refused(TokenError),
    Verified(Box<TokenFacts>),
}

/// A verified token's facts and claims; never its signature or text.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenFacts {
    pub issuer: String,
    pub subject: String,
    pub principal_type: String,
    pub group_type: String,
    #[serde(default)]
    pub audience: Vec<String>,
    #[serde(default)]
    pub scopes: Vec<String>,
    #[serde(default)]
    pub groups: Vec<String>,
    pub expires_at: i64,
    #[serde(default)]
    pub issued_at: Option<i64>,
    pub claims: serde_json::Map<String, serde_json::Value>,
    #[serde(default)]
    pub cnf_x5t_s256: Option<String>,
    #[serde(default)]
    pub require_cert_binding: bool,
}

/// The entity data the check was decided with.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecordedFetched {
    /// Cedar entity JSON, as the source gave it (validated then).
    #[serde(default)]
    pub entities: Vec<serde_json::Value>,
    #[serde(default)]
    pub unavailable: Vec<String>,
    /// Uids looked up, with the generation of the answer used.
    #[serde(default)]
    pub consulted: Vec<(String, u64)>,
}

impl RecordedFetched {
    fn is_empty(&self) -> bool {
        self.entities.is_empty() && self.unavailable.is_empty() && self.consulted.is_empty()
    }
}

/// What a policy set decided.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecordedOutcome {
    /// `allow` or `deny`.
    pub decision: String,
    /// The reason code (`allow`, `policy_denied`, `missing_token`, …).
    pub reason: String,
    /// The HTTP status of a deny.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// Determining policies (or those that failed).
    #[serde(default)]
    pub policies: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy_version: Option<String>,
}

impl RecordedOutcome {
    /// The outcome of an evaluation.
    pub fn of(evaluation: &Evaluation) -> Self {
        let (decision, reason, status) = match &evaluation.outcome {
            Outcome::Allow => ("allow", "allow", None),
            Outcome::Deny(reason) => ("deny", reason.code(), Some(reason.http_status())),
        };
        Self {
            decision: decision.to_owned(),
            reason: reason.to_owned(),
            status,
            policies: evaluation.policy_ids.clone(),
            action: evaluation.action.as_ref().map(ToString::to_string),
            policy_version: evaluation.version.as_deref().map(str::to_owned),
        }
    }

    /// Same decision, reason and determining policies (the version aside).
    pub fn same_as(&self, other: &Self) -> bool {
        self.decision == other.decision
            && self.reason == other.reason
            && self.policies == other.policies
    }

    pub fn is_allow(&self) -> bool {
        self.decision == "allow"
    }
}

/// What is never written, and what is written as [`REDACTED`].
#[derive(Debug, Clone, Default)]
pub struct Redaction {
    /// Header names never written (lowercase), besides [`crate::config::NEVER_LOGGED`].
    pub secret_headers: Vec<String>,
    /// Query parameters never written.
    pub secret_query: Vec<String>,
    /// Header, query and claim names whose values are written as [`REDACTED`].
    pub redact: Vec<String>,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// A header or query name as the most lenient upstreams read it: case folded, `_`, `.` and
/// ` ` all as `-`, a trailing `[]` dropped (`X_Api.Key[]` is `x-api-key`).
fn name_key(name: &str) -> String {
    crate::request::query_name_key(name).replace('_', "-")
}

impl Redaction {
    fn is_secret_header(&self, name: &str) -> bool {
        let key = name_key(name);
        crate::config::NEVER_LOGGED.contains(&key.as_str())
            || self.secret_headers.iter().any(|s| name_key(s) == key)
    }

    fn is_secret_query(&self, name: &str) -> bool {
        let key = name_key(name);
        key == "access-token" || self.secret_query.iter().any(|s| name_key(s) == key)
    }

    /// `redact` lists `name`, under any spelling a lenient reader takes for it.
    fn redacts(&self, name: &str) -> bool {
        let key = name_key(name);
        self.redact.iter().any(|r| name_key(r) == key)
    }

    /// `value` with every object member `redact` names replaced by [`REDACTED`], at any
    /// depth; whether anything was.
    fn json(&self, value: &mut serde_json::Value) -> bool {
        let mut redacted = false;
        let mut stack = vec![value];
        while let Some(value) = stack.pop() {
            match value {
                serde_json::Value::Object(map) => {
                    for (name, member) in map.iter_mut() {
                        if self.redacts(name) {
                            *member = serde_json::Value::String(REDACTED.to_owned());
                            redacted = true;
                        } else {
                            stack.push(member);
                        }
                    }
                }
                serde_json::Value::Array(items) => stack.extend(items.iter_mut()),
                _ => {}
            }
        }
        redacted
    }
}

/// One decided check, as the check path hands it to the writer: everything a [`Record`] is
/// made of, owned, so that the record is built and written off the check path.
#[derive(Debug)]
pub struct Decided {
    pub request: Request,
    pub presented: Presented,
    pub now: i64,
    pub evaluation: Evaluation,
    pub candidate: Option<Evaluation>,
    /// The set in force reads the body: it is written.
    pub body_read: bool,
}

impl Record {
    /// The record of a decided check, credentials left out and `redact` honoured.
    pub fn capture(decided: &Decided, redaction: &Redaction) -> Self {
        let Decided {
            request,
            presented,
            now,
            evaluation,
            candidate,
            body_read,
        } = decided;
        let http = &request.http;
        let mut left_out = Vec::new();
        let mut headers = BTreeMap::new();
        for (name, value) in &http.headers {
            if redaction.is_secret_header(name) {
                left_out.push(format!("header:{name}"));
            } else if redaction.redacts(name) {
                left_out.push(format!("header:{name}"));
                headers.insert(name.clone(), REDACTED.to_owned());
            } else {
                headers.insert(name.clone(), value.clone());
            }
        }
        let mut query = BTreeMap::new();
        for (name, value) in &http.query {
            if redaction.is_secret_query(name) {
                left_out.push(format!("query:{name}"));
            } else if redaction.redacts(name) {
                left_out.push(format!("query:{name}"));
                query.insert(name.clone(), REDACTED.to_owned());
            } else {
                query.insert(name.clone(), value.clone());
            }
        }
        // A JSON body is written with `redact` applied; any other body only by its size (the
        // policies refuse it whatever it holds: not JSON is 400, too large 413).
        let bytes = &request.body.bytes;
        let body = if *body_read && !bytes.is_empty() {
            match serde_json::from_slice::<serde_json::Value>(bytes) {
                Ok(mut json) if bytes.len() <= request.body.max_bytes => {
                    if redaction.json(&mut json) {
                        left_out.push("body".to_owned());
                        Some(json.to_string())
                    } else {
                        Some(String::from_utf8_lossy(bytes).into_owned())
                    }
                }
                _ => {
                    left_out.push("body".to_owned());
                    None
                }
            }
        } else {
            if !bytes.is_empty() {
                left_out.push("body".to_owned());
            }
            None
        };
        let peer = &presented.peer;
        let token = match &presented.token {
            Ok(None) => RecordedToken::None,
            Err(err) => RecordedToken::Refused(err.clone()),
            Ok(Some(token)) => RecordedToken::Verified(Box::new(TokenFacts {
                issuer: token.issuer.clone(),
                subject: token.subject.clone(),
                principal_type: token.principal_type.clone(),
                group_type: token.group_type.clone(),
                audience: token.audience.clone(),
                scopes: token.scopes.clone(),
                groups: token.groups.clone(),
                expires_at: token.expires_at,
                issued_at: token.issued_at,
                claims: token
                    .claims_json
                    .iter()
                    .map(|(name, value)| {
                        let mut value = value.clone();
                        if redaction.redacts(name) {
                            value = serde_json::Value::String(REDACTED.to_owned());
                            left_out.push(format!("claim:{name}"));
                        } else if redaction.json(&mut value) {
                            left_out.push(format!("claim:{name}"));
                        }
                        (name.clone(), value)
                    })
                    .collect(),
                cnf_x5t_s256: token.cnf_x5t_s256.clone(),
                require_cert_binding: token.require_cert_binding,
            })),
        };
        let fetched = &request.fetched;
        Self {
            format: FORMAT,
            time: *now,
            request_id: http.request_id.clone(),
            request: RecordedRequest {
                method: http.method.clone(),
                host: http.host.clone(),
                path: http.path.clone(),
                scheme: http.scheme.clone(),
                protocol: http.protocol.clone(),
                query,
                headers,
                destination_address: request.destination.address.clone(),
                destination_principal: request.destination.principal.clone(),
                extensions: sorted(&request.extensions),
                route_metadata: sorted(&request.route_metadata),
                body,
                body_bytes: bytes.len(),
                body_partial: request.body.partial,
                max_body_bytes: request.body.max_bytes,
                max_body_depth: request.body.max_depth,
            },
            peer: RecordedPeer {
                principal: peer.principal.clone(),
                address: peer.address.clone(),
                dns_sans: peer.dns_sans.clone(),
                subject: peer.subject.clone(),
                cert_sha256: peer.cert_sha256.map(hex::encode),
                ip: peer.ip,
                refused: presented.peer_refused.clone(),
            },
            token,
            token_required_by_default: presented.token_required_by_default,
            fetched: RecordedFetched {
                entities: fetched
                    .entities
                    .iter()
                    .filter_map(|f| f.entity.clone().to_json_value().ok())
                    .collect(),
                unavailable: fetched
                    .unavailable
                    .iter()
                    .map(ToString::to_string)
                    .collect(),
                consulted: fetched
                    .consulted
                    .iter()
                    .map(|(uid, generation)| (uid.to_string(), *generation))
                    .collect(),
            },
            left_out,
            outcome: RecordedOutcome::of(evaluation),
            candidate: candidate.as_ref().map(RecordedOutcome::of),
        }
    }

    /// What this record left out that `snapshot`'s policies could read: the record cannot
    /// be decided exactly with that set.
    pub fn unreadable(&self, snapshot: &crate::policy::Snapshot) -> Option<&str> {
        let reads = &snapshot.reads;
        self.left_out
            .iter()
            .find(|item| match item.split_once(':') {
                Some(("header" | "query", name)) => {
                    let key = name_key(name);
                    reads.tag(name) || reads.tag(&key) || reads.tag(&key.replace('-', "_"))
                }
                Some(("claim", name)) => {
                    reads.tag(name)
                        || reads
                            .claims
                            .as_ref()
                            .is_some_and(|c| c.fields.contains_key(name))
                }
                _ => reads.body.is_some(),
            })
            .map(String::as_str)
    }

    /// The decision core's inputs again: the request, what the caller presented, and the
    /// time. Tokens come from `tokens`, so that the records of one token share its parts
    /// (and its decision cache) as the checks did. Fetched entities are read with `schema`
    /// (of the set the record is decided against); one that does not fit it is unavailable,
    /// as an answer that does not fit is at a live check.
    pub fn inputs(
        &self,
        schema: &cedar_policy::Schema,
        tokens: &mut Tokens,
    ) -> Result<(Request, Presented, i64), RecordError> {
        let r = &self.request;
        let http = HttpRequest {
            method: r.method.clone(),
            host: r.host.clone(),
            path: r.path.clone(),
            scheme: r.scheme.clone(),
            protocol: r.protocol.clone(),
            query: r.query.clone(),
            headers: r.headers.clone(),
            request_id: self.request_id.clone(),
        };
        let mut request = Request {
            http,
            destination: Destination {
                address: r.destination_address.clone(),
                principal: r.destination_principal.clone(),
            },
            extensions: r.extensions.clone().into_iter().collect(),
            route_metadata: r.route_metadata.clone().into_iter().collect(),
            body: RequestBody {
                bytes: r.body.clone().map(String::into_bytes).unwrap_or_default(),
                partial: r.body_partial,
                max_bytes: r.max_body_bytes,
                max_depth: r.max_body_depth,
            },
            fetched: self.fetched.inputs(schema)?,
        };
        let p = &self.peer;
        // A body not written: any bytes the policies refuse the same way (not JSON, or one
        // byte over the limit when it was too large).
        if r.body.is_none() && r.body_bytes > 0 {
            request.body.bytes = if r.body_bytes > r.max_body_bytes {
                vec![b' '; r.max_body_bytes.saturating_add(1)]
            } else {
                vec![0x01]
            };
        }
        let cert_sha256 = p
            .cert_sha256
            .as_deref()
            .map(|text| {
                hex::decode(text)
                    .ok()
                    .and_then(|bytes| <[u8; 32]>::try_from(bytes).ok())
                    .ok_or(RecordError::Field("peer.cert_sha256"))
            })
            .transpose()?;
        let peer = Peer {
            principal: p.principal.clone(),
            spiffe_id: SpiffeId::parse(&p.principal).ok(),
            address: p.address.clone(),
            dns_sans: p.dns_sans.clone(),
            subject: p.subject.clone(),
            cert_sha256,
            ip: p.ip,
        };
        let token = match &self.token {
            RecordedToken::None => Ok(None),
            RecordedToken::Refused(err) => Err(err.clone()),
            RecordedToken::Verified(facts) => Ok(Some(tokens.get(facts))),
        };
        let presented = Presented {
            peer: Arc::new(peer),
            peer_refused: p.refused.clone(),
            token,
            token_required_by_default: self.token_required_by_default,
        };
        Ok((request, presented, self.time))
    }
}

impl RecordedFetched {
    fn inputs(
        &self,
        schema: &cedar_policy::Schema,
    ) -> Result<crate::entities::Fetched, RecordError> {
        let uid = |text: &str| {
            text.parse::<cedar_policy::EntityUid>()
                .map_err(|_| RecordError::Field("fetched: an entity uid"))
        };
        let mut fetched = crate::entities::Fetched {
            unavailable: self
                .unavailable
                .iter()
                .map(|u| uid(u))
                .collect::<Result<_, _>>()?,
            consulted: self
                .consulted
                .iter()
                .map(|(u, generation)| Ok((uid(u)?, *generation)))
                .collect::<Result<_, RecordError>>()?,
            entities: Vec::with_capacity(self.entities.len()),
        };
        for json in &self.entities {
            let names = crate::entities::named_uids(json);
            match cedar_policy::Entity::from_json_value(json.clone(), Some(schema)) {
                Ok(entity) => fetched
                    .entities
                    .push(Arc::new(crate::entities::FetchedEntity { entity, names })),
                Err(_) => {
                    let uid = json
                        .get("uid")
                        .and_then(|u| {
                            Some(cedar_policy::EntityUid::from_type_name_and_id(
                                u.get("type")?.as_str()?.parse().ok()?,
                                cedar_policy::EntityId::new(u.get("id")?.as_str()?),
                            ))
                        })
                        .ok_or(RecordError::Field("fetched: an entity without a uid"))?;
                    fetched.unavailable.push(uid);
                }
            }
        }
        Ok(fetched)
    }
}

fn sorted(map: &HashMap<String, String>) -> BTreeMap<String, String> {
    map.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

/// Why a record cannot be decided again.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    #[error("not a decision record: {0}")]
    Json(String),
    #[error("record format {0} is not one this cedargate reads ({FORMAT})")]
    Format(u32),
    #[error("the record's `{0}` is not valid")]
    Field(&'static str),
}

impl Record {
    /// One line of a records file.
    pub fn parse(line: &str) -> Result<Self, RecordError> {
        let record: Self =
            serde_json::from_str(line).map_err(|err| RecordError::Json(err.to_string()))?;
        if record.format != FORMAT {
            return Err(RecordError::Format(record.format));
        }
        Ok(record)
    }
}

/// The tokens of the records read so far: records of one token share one
/// [`VerifiedToken`], as the checks shared the cached one, so that its parts are built once.
#[derive(Debug, Default)]
pub struct Tokens {
    /// By issuer, subject and expiry: the tokens with those, and their facts.
    by_subject: HashMap<(String, String, i64), Vec<Pooled>>,
    kept: usize,
}

/// A token of the pool, with the facts it was built from.
type Pooled = (TokenFacts, Arc<VerifiedToken>);

/// Distinct tokens of one subject, issuer and expiry kept at most; more are built each time.
const TOKENS_PER_SUBJECT: usize = 8;
/// Distinct tokens kept at most; then the pool starts over (memory stays bounded on any
/// number of records).
const TOKENS: usize = 1 << 16;

impl Tokens {
    fn get(&mut self, facts: &TokenFacts) -> Arc<VerifiedToken> {
        let key = (
            facts.issuer.clone(),
            facts.subject.clone(),
            facts.expires_at,
        );
        if self.kept >= TOKENS {
            self.by_subject.clear();
            self.kept = 0;
        }
        let same = self.by_subject.entry(key).or_default();
        if let Some((_, token)) = same.iter().find(|(f, _)| f == facts) {
            return Arc::clone(token);
        }
        let token = Arc::new(VerifiedToken {
            issuer: facts.issuer.clone(),
            subject: facts.subject.clone(),
            principal_type: facts.principal_type.clone(),
            group_type: facts.group_type.clone(),
            audience: facts.audience.clone(),
            scopes: facts.scopes.clone(),
            groups: facts.groups.clone(),
            expires_at: facts.expires_at,
            issued_at: facts.issued_at,
            claims: crate::identity::token::tag_claims(&facts.claims),
            claims_json: Arc::new(facts.claims.clone()),
            cnf_x5t_s256: facts.cnf_x5t_s256.clone(),
            require_cert_binding: facts.require_cert_binding,
            cedar: Default::default(),
            typed_claims: Default::default(),
        });
        if same.len() < TOKENS_PER_SUBJECT {
            same.push((facts.clone(), Arc::clone(&token)));
            self.kept += 1;
        }
        token
    }
}
