//! The Check handler: admission (in-flight cap), then the stages — read the protobuf and
//! normalise ([`prepare`]), authenticate the bearer token (the only stage that may wait, and
//! only on a bounded key-set fetch), map to Cedar and evaluate ([`decide`]), answer. Every
//! failure is a deny; a panic anywhere after admission is caught and answered as a deny, and
//! so is running past the deadline.

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use tracing::Instrument;

use arc_swap::ArcSwap;
use envoy_types::pb::envoy::service::auth::v3::authorization_server::Authorization;
use envoy_types::pb::envoy::service::auth::v3::{CheckRequest, CheckResponse};
use tokio::sync::Semaphore;
use tonic::{Request, Response, Status};

use super::envoy::{self, CheckInput};
use crate::config::{DecisionLogSettings, Limits, NEVER_LOGGED};
use crate::decision::{Decision, DenyReason, IDENTITY_HEADER_PREFIX, Outcome};
use crate::identity::authn::Authenticator;
use crate::identity::token::TokenError;
use crate::identity::{Identity, Peer, PeerSettings, VerifiedToken};
use crate::policy::engine::{self, Verdict};
use crate::policy::routes::TokenRequirement;
use crate::policy::{Snapshot, mapping};
use crate::request::{self, HttpRequest};
use crate::telemetry;

/// State shared by the Check service and the admin listener.
#[derive(Debug)]
pub struct Shared {
    /// The policy set in force; a reload swaps it whole, readers never wait.
    pub snapshot: ArcSwap<Snapshot>,
    pub authn: Authenticator,
    pub limits: Limits,
    pub peer_settings: PeerSettings,
    /// False while starting and while draining.
    pub ready: AtomicBool,
    pub options: CheckOptions,
    inflight: Semaphore,
    sampler: telemetry::Sampler,
}

/// How decisions are enforced and logged.
#[derive(Debug, Clone, Default)]
pub struct CheckOptions {
    /// Record decisions but allow every request.
    pub dry_run: bool,
    pub decision_log: DecisionLogSettings,
    /// Header names never logged (credentials), besides [`crate::config::NEVER_LOGGED`].
    pub secret_headers: Vec<String>,
    /// Query parameters that carry credentials (`access_token`, a configured token query):
    /// never shown in an explanation.
    pub secret_query: Vec<String>,
    /// Build a `cedargate.check` span per check (OpenTelemetry export is on).
    pub trace_spans: bool,
}

impl CheckOptions {
    /// No dry-run, default logging, and the credential names of a token configuration.
    pub fn with_secrets(tokens: &crate::config::TokenSource) -> Self {
        Self {
            secret_headers: tokens.header.iter().cloned().collect(),
            secret_query: std::iter::once("access_token".to_owned())
                .chain(tokens.query.iter().cloned())
                .collect(),
            ..Self::default()
        }
    }
}

impl Shared {
    /// A place among the checks in flight, or `None` when the server is at its limit.
    pub fn admit(&self) -> Option<tokio::sync::SemaphorePermit<'_>> {
        self.inflight.try_acquire().ok()
    }

    pub fn new(
        snapshot: Snapshot,
        authn: Authenticator,
        limits: Limits,
        peer_settings: PeerSettings,
        options: CheckOptions,
    ) -> Self {
        Self {
            snapshot: ArcSwap::from_pointee(snapshot),
            authn,
            limits,
            peer_settings,
            ready: AtomicBool::new(false),
            inflight: Semaphore::new(limits.max_inflight),
            sampler: telemetry::Sampler::new(options.decision_log.sample_allow),
            options,
        }
    }

    /// Serving, not draining, and every issuer has keys.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire) && self.authn.is_ready()
    }
}

/// `envoy.service.auth.v3.Authorization`.
#[derive(Debug, Clone)]
pub struct CheckService {
    shared: Arc<Shared>,
}

impl CheckService {
    pub fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }
}

#[tonic::async_trait]
impl Authorization for CheckService {
    async fn check(
        &self,
        request: Request<CheckRequest>,
    ) -> Result<Response<CheckResponse>, Status> {
        // Shed load at once rather than queue. UNAVAILABLE (not a deny) lets Envoy retry
        // another replica; with `failure_mode_allow: false` it is a deny at Envoy.
        let Some(_permit) = self.shared.admit() else {
            telemetry::rejected("overload");
            return Err(Status::unavailable("cedargate is over its in-flight limit"));
        };
        let _in_flight = telemetry::InFlight::enter();
        let started = Instant::now();
        let budget = deadline(self.shared.limits.check_timeout, request.metadata());
        // Everything after admission runs under one panic guard and one deadline, and both
        // end in a denied answer, never in a gRPC error Envoy might be told to ignore.
        let span = if self.shared.options.trace_spans {
            telemetry::otel::check_span(envoy::traceparent(request.get_ref()).as_deref())
        } else {
            tracing::Span::none()
        };
        let pipeline =
            AssertUnwindSafe(run(&self.shared, request.into_inner(), false)).catch_unwind();
        let decision = match tokio::time::timeout(budget, pipeline.instrument(span.clone())).await {
            Ok(Ok((decision, _))) => decision,
            Ok(Err(_panic)) => {
                telemetry::panicked();
                Decision::early(
                    String::new(),
                    DenyReason::Internal("a check panicked".into()),
                )
            }
            Err(_elapsed) => Decision::early(String::new(), DenyReason::Timeout(budget)),
        };
        let mut decision = decision;
        if decision.policy_version.is_none() {
            decision.policy_version = Some(self.shared.snapshot.load().version.clone());
        }
        if self.shared.options.dry_run {
            decision.enforced = false;
        }
        span.record(
            "decision",
            if decision.is_allow() { "allow" } else { "deny" },
        );
        span.record("reason", decision.reason_code());
        telemetry::decided(&decision, started.elapsed(), &self.shared.sampler);
        let response =
            std::panic::catch_unwind(AssertUnwindSafe(|| envoy::response(decision.answer())))
                .unwrap_or_else(|_| {
                    telemetry::panicked();
                    let fallback =
                        Decision::early(String::new(), DenyReason::Internal(String::new()));
                    envoy::response(fallback.answer())
                });
        Ok(Response::new(response))
    }
}

/// A decision with the Cedar request it was made on, when one was built.
#[derive(Debug)]
pub struct Explained {
    pub decision: Decision,
    pub call: Option<mapping::CedarCall>,
}

/// Decides a CheckRequest exactly as Check does (same stages, same snapshot, same deadline and
/// panic guard) and keeps the Cedar request: for the Explain API and the policy CLI. Nothing is
/// counted or logged as a decision.
pub async fn explain(shared: &Shared, input: CheckRequest, budget: Duration) -> Explained {
    let pipeline = AssertUnwindSafe(run(shared, input, true)).catch_unwind();
    let (mut decision, call) = match tokio::time::timeout(budget, pipeline).await {
        Ok(Ok(explained)) => explained,
        Ok(Err(_panic)) => (
            Decision::early(
                String::new(),
                DenyReason::Internal("a check panicked".into()),
            ),
            None,
        ),
        Err(_elapsed) => (
            Decision::early(String::new(), DenyReason::Timeout(budget)),
            None,
        ),
    };
    if decision.policy_version.is_none() {
        decision.policy_version = Some(shared.snapshot.load().version.clone());
    }
    if shared.options.dry_run {
        decision.enforced = false;
    }
    Explained { decision, call }
}

/// The stages of one admitted check; `keep_call` keeps the Cedar request (explain).
async fn run(
    shared: &Shared,
    input: CheckRequest,
    keep_call: bool,
) -> (Decision, Option<mapping::CedarCall>) {
    #[cfg(feature = "testutil")]
    crate::testutil::inject_fault(&input);
    let prepared = match prepare(&shared.limits, &shared.peer_settings, envoy::input(input)) {
        Ok(prepared) => prepared,
        Err(decision) => return (*decision, None),
    };
    let token = shared.authn.authenticate(&prepared.http).await;
    let had_token = matches!(token, Ok(Some(_)));
    let log_attributes = log_attributes(&shared.options, &prepared.http, &token);
    let peer_addr = prepared.peer.address.clone();
    let trace_id = prepared
        .http
        .headers
        .get("traceparent")
        .and_then(|t| telemetry::trace_id(t));
    let snapshot = shared.snapshot.load();
    let (mut decision, call) = decide_keeping(
        &snapshot,
        prepared,
        token,
        shared.authn.requires_token(),
        keep_call,
    );
    if had_token && decision.is_allow() {
        decision.strip_headers = shared.authn.token_headers_to_strip();
    }
    decision.policy_version = Some(snapshot.version.clone());
    decision.peer_addr = peer_addr;
    decision.log_attributes = log_attributes;
    decision.trace_id = trace_id;
    (decision, call)
}

/// The request headers and token claims `log.decisions` asks for; credentials never, values
/// listed under `redact` as `[redacted]`.
fn log_attributes(
    options: &CheckOptions,
    http: &HttpRequest,
    token: &Result<Option<Arc<VerifiedToken>>, TokenError>,
) -> Vec<(String, String)> {
    let settings = &options.decision_log;
    if settings.include_headers.is_empty() && settings.include_claims.is_empty() {
        return Vec::new();
    }
    let secret = |name: &str| {
        NEVER_LOGGED.contains(&name) || options.secret_headers.iter().any(|s| s == name)
    };
    let shown = |name: &str, value: &str| {
        if settings.redact.iter().any(|r| r.eq_ignore_ascii_case(name)) {
            "[redacted]".to_owned()
        } else {
            value.chars().take(256).collect()
        }
    };
    let mut attributes = Vec::new();
    for name in &settings.include_headers {
        if let Some(value) = http.headers.get(name).filter(|_| !secret(name)) {
            attributes.push((format!("header.{name}"), shown(name, value)));
        }
    }
    if let Ok(Some(token)) = token {
        for name in &settings.include_claims {
            if let Some(value) = token.claims.get(name) {
                attributes.push((format!("claim.{name}"), shown(name, value)));
            }
        }
    }
    attributes
}

/// The time a check may take: the configured bound, shortened by the caller's gRPC deadline
/// (`grpc-timeout`, which Envoy sets from the ext_authz filter's `timeout`) less a margin
/// (a tenth, between 1 and 50 ms), so that cedargate's 503 deny reaches the caller before
/// the caller (and tonic's own timeout layer, which reads the same header) gives up.
pub fn deadline(bound: Duration, metadata: &tonic::metadata::MetadataMap) -> Duration {
    metadata
        .get("grpc-timeout")
        .and_then(|v| v.to_str().ok())
        .and_then(parse_grpc_timeout)
        .map_or(bound, |caller| {
            let margin = (caller / 10).clamp(Duration::from_millis(1), Duration::from_millis(50));
            caller.saturating_sub(margin).min(bound)
        })
}

/// `grpc-timeout` per the gRPC HTTP/2 spec: at most 8 ASCII digits and a unit (H M S m u n).
fn parse_grpc_timeout(value: &str) -> Option<Duration> {
    let (digits, unit) = value.split_at_checked(value.len().checked_sub(1)?)?;
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.checked_mul(3600)?),
        "M" => Duration::from_secs(n.checked_mul(60)?),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// A check whose request is normalised, ready to authenticate and decide.
#[derive(Debug)]
pub struct Prepared {
    pub http: HttpRequest,
    pub peer: Peer,
    pub extensions: HashMap<String, String>,
}

/// Normalises the request and checks the peer; a malformed one is already a decision.
pub fn prepare(
    limits: &Limits,
    peer_settings: &PeerSettings,
    input: CheckInput,
) -> Result<Prepared, Box<Decision>> {
    let CheckInput {
        http,
        peer,
        extensions,
    } = input;
    let Some(raw) = http else {
        return Err(Box::new(Decision::early(
            String::new(),
            DenyReason::BadRequest(request::RequestError::MissingHttp),
        )));
    };
    let fallback_id = raw.id.clone();
    request::check_header_bounds(&raw, limits.max_headers, limits.max_header_bytes)
        .map_err(|err| Box::new(Decision::early(String::new(), DenyReason::BadRequest(err))))?;
    let http = request::normalise(raw, limits.max_path_bytes)
        .map_err(|err| Box::new(Decision::early(fallback_id, DenyReason::BadRequest(err))))?;
    let xfcc = http
        .headers
        .get("x-forwarded-client-cert")
        .map(String::as_str);
    let peer = Peer::resolve(peer, xfcc, peer_settings, unix_now()).map_err(|err| {
        Box::new(Decision::early(
            http.request_id.clone(),
            DenyReason::Peer(err),
        ))
    })?;
    Ok(Prepared {
        http,
        peer,
        extensions,
    })
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// Decides one prepared check against one snapshot, given the outcome of authentication.
pub fn decide(
    snapshot: &Snapshot,
    prepared: Prepared,
    token: Result<Option<Arc<VerifiedToken>>, TokenError>,
    requires_token: bool,
) -> Decision {
    decide_keeping(snapshot, prepared, token, requires_token, false).0
}

/// [`decide`], also returning the Cedar request when `keep_call` and one was built.
fn decide_keeping(
    snapshot: &Snapshot,
    prepared: Prepared,
    token: Result<Option<Arc<VerifiedToken>>, TokenError>,
    requires_token: bool,
    keep_call: bool,
) -> (Decision, Option<mapping::CedarCall>) {
    let Prepared {
        http,
        peer,
        extensions,
    } = prepared;
    let mut decision = Decision::early(http.request_id.clone(), DenyReason::PolicyDenied);
    decision.peer_spiffe_id = peer.spiffe_id.as_ref().map(ToString::to_string);
    decision.client_identity_headers = http
        .headers
        .keys()
        // Many upstream frameworks (CGI, WSGI, Rack, PHP) read `_` as `-`: match both.
        .filter(|name| name.replace('_', "-").starts_with(IDENTITY_HEADER_PREFIX))
        .cloned()
        .collect();

    let route = snapshot.routes.find(&http.method, &http.path);
    decision.enforced = !route.as_ref().is_some_and(|r| r.dry_run);
    if route.is_none() && snapshot.routes.near_miss(&http.method, &http.path) {
        let err = mapping::MappingError::NearMiss(http.path.clone());
        return (deny(decision, DenyReason::NoRoute(err)), None);
    }
    // A token that is present must be valid, on every route; a missing one is refused where
    // the route (or, without a route setting, `authentication.require_token`) requires one.
    let token = match token.and_then(|token| {
        match &token {
            Some(t) => t.check_binding(peer.cert_sha256.as_ref()),
            None => Ok(()),
        }
        .map(|()| token)
    }) {
        Ok(token) => token,
        Err(err) => return (deny(decision, DenyReason::Unauthenticated(err)), None),
    };
    let required = route
        .as_ref()
        .and_then(|r| r.token)
        .map_or(requires_token, |t| t == TokenRequirement::Required);
    if token.is_none() && required {
        return (
            deny(decision, DenyReason::Unauthenticated(TokenError::Missing)),
            None,
        );
    }
    let identity = Identity { peer, token };

    let call = match mapping::map(snapshot, &http, route, &identity, &extensions) {
        Ok(call) => call,
        Err(err) if err.is_unknown_action() => {
            return (deny(decision, DenyReason::NoRoute(err)), None);
        }
        Err(err) => return (deny(decision, DenyReason::Mapping(err)), None),
    };
    decision.principal = Some(call.principal.to_string());
    decision.action = Some(call.action.to_string());
    decision.resource = Some(call.resource.to_string());
    match engine::evaluate(snapshot, &call) {
        Verdict::Allow { determining } => {
            decision.policy_ids = determining;
            decision.outcome = Outcome::Allow;
        }
        Verdict::Deny { determining } => {
            decision.policy_ids = determining;
        }
        Verdict::Error { failed } => {
            decision.policy_ids = failed.iter().map(|f| f.policy_id.clone()).collect();
            decision.outcome = Outcome::Deny(DenyReason::PolicyError(failed));
        }
    }
    (decision, keep_call.then_some(call))
}

fn deny(mut decision: Decision, reason: DenyReason) -> Decision {
    decision.outcome = Outcome::Deny(reason);
    decision
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeout_values() {
        assert_eq!(parse_grpc_timeout("250m"), Some(Duration::from_millis(250)));
        assert_eq!(parse_grpc_timeout("2S"), Some(Duration::from_secs(2)));
        assert_eq!(parse_grpc_timeout("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(
            parse_grpc_timeout("99999999n"),
            Some(Duration::from_nanos(99_999_999))
        );
        for bad in ["", "m", "123456789m", "+5S", "5s", "5 S", "-1S", "é"] {
            assert_eq!(parse_grpc_timeout(bad), None, "{bad}");
        }
        let mut md = tonic::metadata::MetadataMap::new();
        let bound = Duration::from_secs(5);
        assert_eq!(deadline(bound, &md), bound);
        md.insert("grpc-timeout", "100m".parse().unwrap());
        assert_eq!(deadline(bound, &md), Duration::from_millis(90));
        md.insert("grpc-timeout", "2S".parse().unwrap());
        assert_eq!(deadline(bound, &md), Duration::from_millis(1950));
        md.insert("grpc-timeout", "60S".parse().unwrap());
        assert_eq!(deadline(bound, &md), bound);
    }
}
