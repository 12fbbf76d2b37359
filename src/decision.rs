//! A decision and the one place that turns it into an answer for Envoy: gRPC code, HTTP status,
//! headers, body and dynamic metadata ([`Decision::answer`], one exhaustive match).
//!
//! Rules quoted from the brief:
//! - allow → OK with identity headers that always replace a client-sent header of the same name,
//!   and client-sent `x-cedargate-*` headers removed, so a client can never forge its identity;
//! - policy deny → PERMISSION_DENIED, HTTP 403, JSON body `{"error","request_id"}`;
//! - anything unexpected → deny; never allow because something broke.
//!
//! Internal failures are answered as a denied response, not Envoy's `error_response`: Envoy
//! would honour `failure_mode_allow` for an error response, and a misconfigured filter must not
//! turn cedargate's failure into an allow. No protobuf types here; the server translates.

use cedar_policy::EntityUid;
use serde_json::{Map, Value, json};
use tonic::Code;

use crate::identity::peer::PeerError;
use crate::identity::token::TokenError;
use crate::policy::engine::PolicyFailure;
use crate::policy::mapping::MappingError;
use crate::request::RequestError;

/// Prefix reserved for the identity headers cedargate sends upstream: a client's header under
/// it is removed on an OK answer, whatever the configured names.
pub const IDENTITY_HEADER_PREFIX: &str = "x-cedargate-";
/// The Cedar principal of an allowed request, e.g. `Workload::"spiffe://…"` (default name;
/// `identity_headers.principal`).
pub const PRINCIPAL_HEADER: &str = "x-cedargate-principal";
/// The Cedar action of an allowed request (default name).
pub const ACTION_HEADER: &str = "x-cedargate-action";
/// The SPIFFE ID of the peer, when it presented one (default name).
pub const PEER_HEADER: &str = "x-cedargate-peer-spiffe-id";
/// Set to `deny` on a request that passes only because its decision is not enforced
/// (dry-run): the upstream can tell it from an allow.
pub use crate::config::DRY_RUN_HEADER;

/// A server's identity header names, built once from `identity_headers`: the two an answer
/// fills from the evaluation's uids, and every name removed from clients' requests.
#[derive(Debug)]
pub struct HeaderNames {
    pub principal: String,
    pub action: String,
    /// Every identity header name and its `_` spelling.
    pub reserved: Vec<String>,
}

impl HeaderNames {
    pub fn new(headers: &crate::config::IdentityHeaders) -> Self {
        Self {
            principal: headers.principal.clone(),
            action: headers.action.clone(),
            reserved: headers.reserved(),
        }
    }

    /// The default names, for envelopes made before a server's configuration is at hand
    /// (the server replaces them with its own).
    fn default_shared() -> std::sync::Arc<Self> {
        static NAMES: std::sync::OnceLock<std::sync::Arc<HeaderNames>> = std::sync::OnceLock::new();
        NAMES
            .get_or_init(|| std::sync::Arc::new(Self::new(&Default::default())))
            .clone()
    }
}

/// The outcome of one Check: what the policy snapshot said ([`Evaluation`], the decision
/// core's result) inside what is answered and logged around it ([`Envelope`]).
#[derive(Debug, Clone)]
pub struct Decision {
    pub evaluation: Evaluation,
    pub envelope: Envelope,
}

/// What one policy snapshot said about one request. Uids stay typed until the answer or the
/// log line is written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Evaluation {
    pub outcome: Outcome,
    pub principal: Option<EntityUid>,
    pub action: Option<EntityUid>,
    pub resource: Option<EntityUid>,
    /// Determining policies (allow or deny), or the policies that failed (policy error).
    pub policy_ids: Vec<String>,
    /// The policy set version the evaluation was made with (`None` before one was read).
    pub version: Option<std::sync::Arc<str>>,
    /// The request matched a route with `dry_run: true`.
    pub route_dry_run: bool,
    /// Whether the verdict came from the token's decision cache.
    pub recall: Recall,
    /// The entities fetched from the entity source that the decision was made with.
    pub fetched: Vec<EntityUid>,
}

/// The decision cache's part in an evaluation ([`crate::policy::decisions`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Recall {
    /// Cedar was not asked: the token got this verdict on the same inputs before.
    Hit,
    /// Cedar was asked, and its verdict is remembered for the next such request.
    Miss,
    /// Cedar was asked; its verdict is not remembered: the cache's budget is spent.
    Full,
    /// Nothing is remembered for this request (no token, the policies read the time or the
    /// request id, the cache is off, Explain, the reference) or it did not reach Cedar.
    #[default]
    Uncached,
}

impl Recall {
    /// The `result` label of `cedargate_decision_cache_total`.
    pub fn label(self) -> Option<&'static str> {
        match self {
            Self::Hit => Some("hit"),
            Self::Miss => Some("miss"),
            Self::Full => Some("full"),
            Self::Uncached => None,
        }
    }
}

/// Everything about a decision that is not the policy's say: the request id, the headers to
/// set and remove, what the log line carries, and whether the outcome is enforced.
#[derive(Debug, Clone)]
pub struct Envelope {
    pub request_id: String,
    /// The identity headers an OK answer sets besides the principal and the action (the
    /// peer, the token's subject, issuer and claims), values already checked to be
    /// header-safe.
    pub identity: Vec<(String, String)>,
    /// The identity header names: the principal's and the action's, and every name removed
    /// from the client's request on an OK answer unless cedargate sets it, whether or not the
    /// Check showed it (Envoy's `allowed_headers` may hide it from cedargate).
    pub names: std::sync::Arc<HeaderNames>,
    /// Names of headers the client sent under [`IDENTITY_HEADER_PREFIX`].
    pub client_identity_headers: Vec<String>,
    /// Further request headers to remove on allow (the token's, when it is not forwarded).
    pub strip_headers: Vec<String>,
    /// False in dry-run: the decision is recorded, and the request is allowed whatever it is.
    pub enforced: bool,
    /// The downstream peer's address, for the decision log.
    pub peer_addr: String,
    /// Request headers and token claims the decision log was configured to carry.
    pub log_attributes: Vec<(String, String)>,
    /// The W3C trace id of the checked request (`traceparent`), for the decision log.
    pub trace_id: Option<String>,
}

impl Evaluation {
    /// A deny reached before any principal, action or resource was known.
    pub fn denied(reason: DenyReason) -> Self {
        Self {
            outcome: Outcome::Deny(reason),
            principal: None,
            action: None,
            resource: None,
            policy_ids: Vec::new(),
            version: None,
            route_dry_run: false,
            recall: Recall::Uncached,
            fetched: Vec::new(),
        }
    }

    pub fn is_allow(&self) -> bool {
        matches!(self.outcome, Outcome::Allow)
    }
}

impl Envelope {
    /// An envelope that carries only a request id (enforced, nothing to set or log).
    pub fn bare(request_id: String) -> Self {
        Self {
            request_id,
            identity: Vec::new(),
            names: HeaderNames::default_shared(),
            client_identity_headers: Vec::new(),
            strip_headers: Vec::new(),
            enforced: true,
            peer_addr: String::new(),
            log_attributes: Vec::new(),
            trace_id: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Allow,
    Deny(DenyReason),
}

/// Why a request was denied, classified by source (client, policy, cedargate itself).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DenyReason {
    #[error("no policy permits this request")]
    PolicyDenied,
    // Cedar's messages can quote request values (a header passed to `ip()`, say), so only the
    // policy ids are shown; the messages stay in `PolicyFailure` for explain tooling.
    #[error("policy evaluation failed in {}", .0.iter().map(|f| format!("`{}`", f.policy_id)).collect::<Vec<_>>().join(", "))]
    PolicyError(Vec<PolicyFailure>),
    #[error("authentication failed: {0}")]
    Unauthenticated(#[source] TokenError),
    #[error("peer identity refused: {0}")]
    Peer(#[source] PeerError),
    #[error("no route or action for this request: {0}")]
    NoRoute(#[source] MappingError),
    #[error("malformed request: {0}")]
    BadRequest(#[source] RequestError),
    #[error("request body refused: {0}")]
    Body(#[source] crate::policy::body::BodyError),
    #[error("cannot map the request to Cedar: {0}")]
    Mapping(#[source] MappingError),
    #[error("internal error: {0}")]
    Internal(String),
    #[error("the check took longer than its deadline of {0:?}")]
    Timeout(std::time::Duration),
    #[error("cedargate is over its in-flight limit")]
    Overloaded,
    #[error("no policy set is in force yet (the bundle server has not answered)")]
    NoPolicySet,
    #[error("the entity source could not answer for {}", .0.iter().map(|u| crate::text::clip(&u.to_string())).collect::<Vec<_>>().join(", "))]
    EntityUnavailable(Vec<EntityUid>),
}

impl DenyReason {
    /// The stable reason code used in bodies, metrics and logs.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Unauthenticated(e) => e.code(),
            Self::Peer(PeerError::TrustDomain(_)) => "untrusted_trust_domain",
            Self::Peer(PeerError::PrincipalMismatch) => "peer_mismatch",
            Self::Peer(_) => "invalid_peer_certificate",
            Self::PolicyDenied => "policy_denied",
            Self::PolicyError(_) => "policy_error",
            Self::NoRoute(_) => "no_route",
            Self::BadRequest(e) if e.is_too_long() => "path_too_long",
            Self::BadRequest(e) if e.is_headers_too_large() => "headers_too_large",
            Self::BadRequest(_) => "malformed_request",
            Self::Body(e) => e.code(),
            Self::EntityUnavailable(_) => "entity_unavailable",
            Self::Mapping(_) => "mapping_error",
            Self::Internal(_) => "internal",
            Self::Timeout(_) => "timeout",
            Self::Overloaded => "overloaded",
            Self::NoPolicySet => "no_policy_set",
        }
    }

    /// The HTTP status of the deny.
    pub fn http_status(&self) -> u16 {
        self.status().1
    }

    fn status(&self) -> (Code, u16) {
        match self {
            Self::Unauthenticated(_) => (Code::Unauthenticated, 401),
            Self::Peer(_) => (Code::PermissionDenied, 403),
            Self::PolicyDenied | Self::PolicyError(_) | Self::NoRoute(_) => {
                (Code::PermissionDenied, 403)
            }
            Self::BadRequest(e) if e.is_too_long() => (Code::InvalidArgument, 414),
            Self::BadRequest(e) if e.is_headers_too_large() => (Code::InvalidArgument, 431),
            Self::BadRequest(_) => (Code::InvalidArgument, 400),
            Self::Body(e) => (Code::InvalidArgument, e.status()),
            Self::Mapping(_) | Self::Internal(_) => (Code::Internal, 500),
            Self::Timeout(_)
            | Self::Overloaded
            | Self::NoPolicySet
            | Self::EntityUnavailable(_) => (Code::Unavailable, 503),
        }
    }
}

/// What Envoy is told, before it becomes protobuf.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    pub code: Code,
    /// HTTP status for a deny; `None` on allow.
    pub http_status: Option<u16>,
    /// Headers to set (allow: upstream request, overwriting; deny: the response to the client).
    pub headers: Vec<(String, String)>,
    /// Upstream request headers to remove (allow only).
    pub headers_to_remove: Vec<String>,
    pub body: String,
    /// Emitted as Envoy dynamic metadata under the ext_authz filter's namespace.
    pub metadata: Map<String, Value>,
}

impl Decision {
    /// A decision reached before any principal, action or resource was known.
    pub fn early(request_id: String, reason: DenyReason) -> Self {
        Self {
            evaluation: Evaluation::denied(reason),
            envelope: Envelope::bare(request_id),
        }
    }

    pub fn is_allow(&self) -> bool {
        self.evaluation.is_allow()
    }

    pub fn outcome(&self) -> &Outcome {
        &self.evaluation.outcome
    }

    /// Why the request was denied, in words (`None` for an allow). A policy deny says which
    /// `forbid` decided it, or that no `permit` matched: two different things to fix.
    pub fn deny_message(&self) -> Option<String> {
        match &self.evaluation.outcome {
            Outcome::Allow => None,
            Outcome::Deny(DenyReason::PolicyDenied) if !self.evaluation.policy_ids.is_empty() => {
                let ids: Vec<String> = self
                    .evaluation
                    .policy_ids
                    .iter()
                    .map(|id| format!("`{id}`"))
                    .collect();
                Some(format!("forbidden by policy {}", ids.join(", ")))
            }
            Outcome::Deny(reason) => Some(reason.to_string()),
        }
    }

    /// `allow`, or the deny reason code.
    pub fn reason_code(&self) -> &'static str {
        match &self.evaluation.outcome {
            Outcome::Allow => "allow",
            Outcome::Deny(reason) => reason.code(),
        }
    }

    /// The one translation from decision to answer.
    pub fn answer(&self) -> Answer {
        let Self {
            evaluation,
            envelope,
        } = self;
        let mut metadata = Map::new();
        metadata.insert(
            "decision".into(),
            json!(if self.is_allow() { "allow" } else { "deny" }),
        );
        metadata.insert("reason".into(), json!(self.reason_code()));
        metadata.insert("request_id".into(), json!(envelope.request_id));
        let principal = evaluation.principal.as_ref().map(ToString::to_string);
        let action = evaluation.action.as_ref().map(ToString::to_string);
        for (key, value) in [
            ("principal", &principal),
            ("action", &action),
            (
                "resource",
                &evaluation.resource.as_ref().map(ToString::to_string),
            ),
        ] {
            if let Some(value) = value {
                metadata.insert(key.into(), json!(value));
            }
        }
        metadata.insert("policy_ids".into(), json!(evaluation.policy_ids));
        if let Some(version) = &evaluation.version {
            metadata.insert("policy_version".into(), json!(version.as_ref()));
        }
        metadata.insert("enforced".into(), json!(envelope.enforced));

        match (&evaluation.outcome, envelope.enforced) {
            // Dry-run: the would-be deny is in the metadata and the logs; the request passes,
            // still with forged identity headers removed.
            (Outcome::Allow, _) | (Outcome::Deny(_), false) => {
                // The uids' text is the metadata's too: made once.
                let mut headers = Vec::with_capacity(3 + envelope.identity.len());
                let names = &envelope.names;
                for (name, value) in [(&names.principal, &principal), (&names.action, &action)] {
                    if let Some(value) = value {
                        headers.push((name.clone(), value.clone()));
                    }
                }
                headers.extend(envelope.identity.iter().cloned());
                if matches!(evaluation.outcome, Outcome::Deny(_)) {
                    headers.push((DRY_RUN_HEADER.to_owned(), "deny".to_owned()));
                }
                // Every identity header cedargate did not set is removed, whether or not the
                // Check showed it (Envoy's allowed_headers may hide it from cedargate).
                let mut headers_to_remove: Vec<String> = names
                    .reserved
                    .iter()
                    .cloned()
                    .chain(envelope.client_identity_headers.iter().cloned())
                    .chain(envelope.strip_headers.iter().cloned())
                    .filter(|name| !headers.iter().any(|(set, _)| set == name))
                    .collect();
                headers_to_remove.sort_unstable();
                headers_to_remove.dedup();
                Answer {
                    code: Code::Ok,
                    http_status: None,
                    headers,
                    headers_to_remove,
                    body: String::new(),
                    metadata,
                }
            }
            (Outcome::Deny(reason), true) => {
                let (code, status) = reason.status();
                let mut body = json!({ "error": reason.code(), "request_id": envelope.request_id });
                // The claim's name (from the schema), never its value.
                if let (
                    DenyReason::Unauthenticated(TokenError::InvalidClaim { claim, .. }),
                    Value::Object(fields),
                ) = (reason, &mut body)
                {
                    fields.insert("claim".into(), crate::text::clip(claim).into());
                }
                let body = body.to_string();
                let mut headers = vec![("content-type".into(), "application/json".into())];
                // RFC 6750 §3: no error code when the request had no token at all.
                match reason {
                    DenyReason::Unauthenticated(TokenError::Missing) => {
                        headers.push(("www-authenticate".into(), r#"Bearer realm="cedargate""#.into()));
                    }
                    DenyReason::Unauthenticated(err) => headers.push((
                        "www-authenticate".into(),
                        format!(
                            r#"Bearer realm="cedargate", error="invalid_token", error_description="{}""#,
                            err.code()
                        ),
                    )),
                    _ => {}
                }
                Answer {
                    code,
                    http_status: Some(status),
                    headers,
                    headers_to_remove: Vec::new(),
                    body,
                    metadata,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allowed() -> Decision {
        let uid = |text: &str| text.parse::<EntityUid>().unwrap();
        Decision {
            evaluation: Evaluation {
                outcome: Outcome::Allow,
                principal: Some(uid(r#"Workload::"spiffe://td/a""#)),
                action: Some(uid(r#"Action::"orders:create""#)),
                resource: Some(uid(r#"Collection::"orders""#)),
                policy_ids: vec!["p1".into()],
                version: None,
                route_dry_run: false,
                recall: Recall::Uncached,
                fetched: Vec::new(),
            },
            envelope: Envelope {
                client_identity_headers: vec![
                    PRINCIPAL_HEADER.into(),
                    PEER_HEADER.into(),
                    "x-cedargate-x".into(),
                ],
                ..Envelope::bare("r1".into())
            },
        }
    }

    #[test]
    fn allow_sets_identity_and_removes_forgeries() {
        let answer = allowed().answer();
        assert_eq!(answer.code, Code::Ok);
        assert_eq!(answer.http_status, None);
        assert_eq!(
            answer.headers,
            [
                (
                    PRINCIPAL_HEADER.to_owned(),
                    r#"Workload::"spiffe://td/a""#.to_owned()
                ),
                (
                    ACTION_HEADER.to_owned(),
                    r#"Action::"orders:create""#.to_owned()
                )
            ]
        );
        // The principal and action headers are overwritten, not removed; every other identity
        // header name (and its `_` spelling) is removed, and so is any `x-cedargate-*` the
        // client sent.
        let mut expected: Vec<String> = crate::config::IdentityHeaders::default()
            .reserved()
            .into_iter()
            .chain(["x-cedargate-x".to_owned()])
            .filter(|name| name != PRINCIPAL_HEADER && name != ACTION_HEADER)
            .collect();
        expected.sort_unstable();
        assert_eq!(answer.headers_to_remove, expected);
        for name in [
            PEER_HEADER,
            "x_cedargate_principal",
            DRY_RUN_HEADER,
            "x-cedargate-subject",
        ] {
            assert!(
                answer.headers_to_remove.contains(&name.to_owned()),
                "{name}"
            );
        }
        assert_eq!(answer.metadata["policy_ids"], json!(["p1"]));
    }

    #[test]
    fn denies_map_to_status_and_body() {
        let cases = [
            (
                DenyReason::PolicyDenied,
                Code::PermissionDenied,
                403,
                "policy_denied",
            ),
            (
                DenyReason::PolicyError(vec![]),
                Code::PermissionDenied,
                403,
                "policy_error",
            ),
            (
                DenyReason::BadRequest(RequestError::DotSegment),
                Code::InvalidArgument,
                400,
                "malformed_request",
            ),
            (
                DenyReason::BadRequest(RequestError::PathTooLong { len: 9, max: 8 }),
                Code::InvalidArgument,
                414,
                "path_too_long",
            ),
            (
                DenyReason::Internal("x".into()),
                Code::Internal,
                500,
                "internal",
            ),
        ];
        for (reason, code, status, text) in cases {
            let answer = Decision::early("rid".into(), reason).answer();
            assert_eq!(
                (answer.code, answer.http_status),
                (code, Some(status)),
                "{text}"
            );
            let body: Value = serde_json::from_str(&answer.body).unwrap();
            assert_eq!(body, json!({ "error": text, "request_id": "rid" }));
            assert!(answer.headers_to_remove.is_empty());
        }
    }
}
