//! The Check handler, a thin adapter around the decision core ([`crate::decide`]): admission
//! (in-flight cap), the deadline and the panic guard, protobuf in ([`envoy::input`], then
//! [`prepare`]: the request normalised and the peer resolved, once), authentication (the only
//! stage that may wait, and only on a bounded key-set fetch), [`crate::decide::evaluate`], the
//! [`Envelope`] around its evaluation, and protobuf out. Every failure is a deny; a panic
//! anywhere after admission is caught and answered as a deny, and so is running past the
//! deadline. The clock is read once per check and `traceparent` parsed once.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use tracing::Instrument;

use arc_swap::{ArcSwap, ArcSwapOption};
use envoy_types::pb::envoy::service::auth::v3::authorization_server::Authorization;
use envoy_types::pb::envoy::service::auth::v3::{CheckRequest, CheckResponse};
use tokio::sync::Semaphore;
use tonic::{Response, Status};

use super::envoy::{self, CheckInput};
use crate::config::{DecisionLogSettings, Limits, NEVER_LOGGED};
use crate::decision::{
    Decision, DenyReason, Envelope, Evaluation, HeaderNames, IDENTITY_HEADER_PREFIX,
};
use crate::identity::authn::Authenticator;
use crate::identity::peer::PeerError;
use crate::identity::{Peer, PeerSettings, Presented};
use crate::policy::Snapshot;
use crate::policy::decisions::Budget;
use crate::policy::engine::CedarCall;
use crate::request::{self, Request};
use crate::telemetry::{self, TraceParent};

/// A `context_extensions` key that makes a check panic inside the panic guard, so that tests
/// can prove a panic is answered as a deny. Compiled only with the `testutil` feature.
#[cfg(feature = "testutil")]
pub const PANIC_EXTENSION: &str = "cedargate.test.panic";

/// State shared by the Check service and the admin listener.
#[derive(Debug)]
pub struct Shared {
    /// The policy set in force; a reload swaps it whole, readers never wait.
    pub snapshot: ArcSwap<Snapshot>,
    /// The candidate set decided beside it, never enforced (`policies.candidate`).
    pub candidate: ArcSwapOption<Snapshot>,
    /// Where the candidate is decided, off the checks' path, with its bound.
    pub shadow: super::shadow::Shadow,
    /// The revision of the bundle in force, when the set came from one.
    bundle_revision: std::sync::Mutex<Option<u64>>,
    /// False while the set in force is only the placeholder of a bundle server that has not
    /// answered yet: checks are denied (503 `no_policy_set`) and `/readyz` says 503.
    policies_ready: AtomicBool,
    pub authn: Authenticator,
    pub limits: Limits,
    pub peer_settings: PeerSettings,
    /// False while starting and while draining.
    pub ready: AtomicBool,
    pub options: CheckOptions,
    inflight: Semaphore,
    /// Explain's own places: the API must not take Check's (an Explain flood would otherwise
    /// shed Envoy's checks).
    explain_inflight: Semaphore,
    sampler: telemetry::Sampler,
    /// The decision cache's bound, shared by every snapshot this server installs.
    decisions: Arc<Budget>,
    /// The identity header names (`identity_headers`), built once.
    header_names: Arc<HeaderNames>,
}

/// Explain calls evaluated at once (the API is an operator's tool, not a data path).
const EXPLAIN_INFLIGHT: usize = 4;

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
    /// The headers an allowed request carries upstream.
    pub identity_headers: crate::config::IdentityHeaders,
    /// Where the entities a check needs are fetched from (`entity_source`), when configured.
    pub entities: Option<crate::entities::cache::EntityCache>,
    /// Fraction of checks the candidate set also decides (`policies.candidate.sample`).
    pub candidate_sample: f64,
    /// Where decided checks are recorded (`records:`), when configured.
    pub recorder: Option<Arc<crate::record::writer::Recorder>>,
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

    /// A place among the Explain calls in flight, apart from Check's.
    pub fn admit_explain(&self) -> Option<tokio::sync::SemaphorePermit<'_>> {
        self.explain_inflight.try_acquire().ok()
    }

    pub fn new(
        snapshot: Snapshot,
        authn: Authenticator,
        limits: Limits,
        peer_settings: PeerSettings,
        options: CheckOptions,
    ) -> Self {
        let decisions = Arc::new(Budget::new(limits.decision_cache_bytes));
        let snapshot = Snapshot {
            decisions: Arc::clone(&decisions),
            ..snapshot
        };
        Self {
            snapshot: ArcSwap::from_pointee(snapshot),
            candidate: ArcSwapOption::empty(),
            shadow: Default::default(),
            bundle_revision: std::sync::Mutex::new(None),
            policies_ready: AtomicBool::new(true),
            decisions,
            header_names: Arc::new(HeaderNames::new(&options.identity_headers)),
            authn,
            limits,
            peer_settings,
            ready: AtomicBool::new(false),
            inflight: Semaphore::new(limits.max_inflight),
            explain_inflight: Semaphore::new(EXPLAIN_INFLIGHT),
            sampler: telemetry::Sampler::new(options.decision_log.sample_allow),
            options,
        }
    }

    /// Puts `snapshot` in force (a reload). It shares the server's decision cache budget, and
    /// the parts every cached token holds for the previous set are dropped at once, so that
    /// their memory (entity stores, remembered verdicts) does not wait for the token's next
    /// check.
    pub fn install(&self, snapshot: Snapshot) {
        let snapshot = Snapshot {
            decisions: Arc::clone(&self.decisions),
            ..snapshot
        };
        self.snapshot.store(Arc::new(snapshot));
        self.authn.forget_derived();
    }

    /// Puts a bundle's set in force ([`Self::install`]) and remembers its revision.
    pub fn install_bundle(&self, snapshot: Snapshot, revision: u64) {
        self.install(snapshot);
        self.bundle_in_force(revision);
        self.policies_ready.store(true, Ordering::Release);
    }

    /// The set in force is a placeholder until a bundle is installed: checks are denied and
    /// the server is not ready.
    pub fn await_first_bundle(&self) {
        self.policies_ready.store(false, Ordering::Release);
    }

    /// A policy set is in force (not the placeholder of a bundle not yet fetched).
    pub fn has_policy_set(&self) -> bool {
        self.policies_ready.load(Ordering::Acquire)
    }

    /// Remembers that the set in force is the bundle of `revision`.
    pub fn bundle_in_force(&self, revision: u64) {
        if let Ok(mut held) = self.bundle_revision.lock() {
            *held = Some(revision);
        }
        crate::telemetry::bundle_activated(revision);
    }

    /// The revision of the bundle in force, when the set came from one.
    pub fn bundle_revision(&self) -> Option<u64> {
        self.bundle_revision.lock().ok().and_then(|held| *held)
    }

    /// Puts `snapshot` beside the set in force as the candidate: decided on every check (or
    /// a sample), never enforced. Shares the decision cache budget.
    pub fn install_candidate(&self, snapshot: Snapshot) {
        let snapshot = Snapshot {
            decisions: Arc::clone(&self.decisions),
            ..snapshot
        };
        let previous = self.candidate_version();
        crate::telemetry::candidate_loaded(previous.as_deref(), &snapshot.version);
        self.candidate.store(Some(Arc::new(snapshot)));
    }

    /// The candidate set's version, when one is loaded.
    pub fn candidate_version(&self) -> Option<Arc<str>> {
        self.candidate
            .load()
            .as_ref()
            .map(|c| Arc::clone(&c.version))
    }

    /// The bytes the decision cache holds now.
    pub fn decision_cache_bytes(&self) -> usize {
        self.decisions.held()
    }

    /// Serving, not draining, and every issuer has keys.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire) && self.authn.is_ready() && self.has_policy_set()
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
        request: tonic::Request<CheckRequest>,
    ) -> Result<Response<CheckResponse>, Status> {
        // Shed load at once rather than queue, with a denied answer (503 `overloaded`): a gRPC
        // error would be an allow at an Envoy configured with `failure_mode_allow: true`.
        let request_id = envoy::request_id_hint(request.get_ref());
        let Some(_permit) = self.shared.admit() else {
            let decision = overloaded(&self.shared, request_id);
            return Ok(Response::new(envoy::response(decision.answer())));
        };
        let shared = &*self.shared;
        let budget = deadline(shared.limits.check_timeout, request.metadata());
        let input = request.into_inner();
        let decision = decide_counted(shared, || Ok(envoy::input(input)), request_id, budget).await;
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

/// The answer to a check refused at admission (the server is at `limits.max_inflight`):
/// 503 `overloaded`, counted as a rejection.
pub(crate) fn overloaded(shared: &Shared, request_id: String) -> Decision {
    telemetry::rejected("overload");
    finish(shared, Decision::early(request_id, DenyReason::Overloaded))
}

/// Decides one admitted check, read by `read` (from protobuf for gRPC, from an HTTP request
/// for the HTTP service), and counts and logs it: the one path both listeners take, so that
/// they decide alike. `request_id` is what an answer carries when the request is never read
/// (a panic, a timeout).
pub(crate) async fn decide_counted(
    shared: &Shared,
    read: impl FnOnce() -> Result<CheckInput, request::RequestError>,
    request_id: String,
    budget: Duration,
) -> Decision {
    let _in_flight = telemetry::InFlight::enter();
    let started = Instant::now();
    let (decision, _, span) = guarded(shared, read, request_id, budget, false).await;
    span.record(
        "decision",
        if decision.is_allow() { "allow" } else { "deny" },
    );
    span.record("reason", decision.reason_code());
    telemetry::decided(&decision, started.elapsed(), &shared.sampler);
    decision
}

/// A decision with the Cedar request it was made on, when one was built.
#[derive(Debug)]
pub struct Explained {
    pub decision: Decision,
    pub call: Option<CedarCall>,
}

/// Decides a CheckRequest exactly as Check does (same stages, same snapshot, same deadline and
/// panic guard) and keeps the Cedar request: for the Explain API and the policy CLI. Nothing is
/// counted or logged as a decision.
pub async fn explain(shared: &Shared, input: CheckRequest, budget: Duration) -> Explained {
    let request_id = envoy::request_id_hint(&input);
    let (decision, call, _) =
        guarded(shared, || Ok(envoy::input(input)), request_id, budget, true).await;
    Explained { decision, call }
}

/// Everything after admission, under one panic guard and one deadline, both of which end in
/// a denied answer, never in a gRPC error Envoy might be told to ignore. Returns the check's
/// span (a disabled one unless trace export is on).
async fn guarded(
    shared: &Shared,
    read: impl FnOnce() -> Result<CheckInput, request::RequestError>,
    // The id a panic or timeout answer carries (the normalised request may not exist then).
    request_id: String,
    budget: Duration,
    keep_call: bool,
) -> (Decision, Option<CedarCall>, tracing::Span) {
    let now = unix_now();
    let guard = |what: &str| {
        telemetry::panicked();
        Decision::early(
            request_id.clone(),
            DenyReason::Internal(format!("{what} panicked")),
        )
    };
    // Reading and normalising never waits: it runs before the span exists, under the guard.
    let prepared = std::panic::catch_unwind(AssertUnwindSafe(|| {
        let input = read().map_err(|err| {
            Box::new(Decision::early(
                request_id.clone(),
                DenyReason::BadRequest(err),
            ))
        })?;
        #[cfg(feature = "testutil")]
        #[allow(clippy::panic)]
        if input.extensions.contains_key(PANIC_EXTENSION) {
            panic!("fault injected by a test");
        }
        prepare(&shared.limits, &shared.peer_settings, input, now)
    }));
    let prepared = match prepared {
        Ok(Ok(prepared)) => prepared,
        Ok(Err(early)) => return (finish(shared, *early), None, tracing::Span::none()),
        Err(_panic) => {
            return (
                finish(shared, guard("a check")),
                None,
                tracing::Span::none(),
            );
        }
    };
    let span = if shared.options.trace_spans {
        telemetry::otel::check_span(prepared.trace.as_ref())
    } else {
        tracing::Span::none()
    };
    let deadline = Instant::now() + budget;
    let pipeline =
        AssertUnwindSafe(decide(shared, prepared, now, deadline, keep_call)).catch_unwind();
    let (decision, call) =
        match tokio::time::timeout(budget, pipeline.instrument(span.clone())).await {
            Ok(Ok(decided)) => decided,
            Ok(Err(_panic)) => (guard("a check"), None),
            Err(_elapsed) => (
                Decision::early(request_id.clone(), DenyReason::Timeout(budget)),
                None,
            ),
        };
    (finish(shared, decision), call, span)
}

/// The version in force on a decision reached before one was read; dry-run.
fn finish(shared: &Shared, mut decision: Decision) -> Decision {
    if decision.evaluation.version.is_none() {
        decision.evaluation.version = Some(shared.snapshot.load().version.clone());
    }
    if shared.options.dry_run {
        decision.envelope.enforced = false;
    }
    // A decision reached before the envelope was built removes this server's names too.
    decision.envelope.names = Arc::clone(&shared.header_names);
    // A pass that is not enforced (a request refused before it was even read, say) must not
    // carry a token `forward_token: false` keeps from the upstream.
    if !decision.envelope.enforced && decision.envelope.strip_headers.is_empty() {
        decision.envelope.strip_headers = shared.authn.token_headers_to_strip();
    }
    decision
}

/// Authenticates, evaluates on the snapshot in force, and wraps the evaluation.
async fn decide(
    shared: &Shared,
    prepared: Prepared,
    now: i64,
    deadline: Instant,
    keep_call: bool,
) -> (Decision, Option<CedarCall>) {
    let Prepared {
        mut request,
        peer,
        peer_refused,
        trace,
    } = prepared;
    if !shared.has_policy_set() {
        let decision = Decision::early(request.http.request_id.clone(), DenyReason::NoPolicySet);
        return (decision, None);
    }
    let presented = Presented {
        peer: Arc::new(peer),
        peer_refused,
        token: shared.authn.authenticate(&request.http, now).await,
        token_required_by_default: shared.authn.requires_token(),
    };
    let snapshot = shared.snapshot.load();
    // Entity data from the application, for a caller that passed authentication (a refused
    // token or peer gets its 401 or 403 without asking the source), within the deadline less
    // a tenth, so that an unavailable source is answered as such, not as a timeout.
    if let Some(cache) = &shared.options.entities {
        let wanted = crate::decide::wanted(&snapshot, &request, &presented);
        if wanted.iter().any(|uid| cache.fetches(uid)) {
            let left = deadline.saturating_duration_since(Instant::now());
            let schema = crate::entities::cache::SchemaOf {
                schema: &snapshot.schema,
                id: snapshot.id,
                statics: &snapshot.entities,
            };
            request.fetched = cache.get(&schema, &wanted, left - left / 10).await;
        }
    }
    // The candidate set shadows this check (a sample of checks, not Explain): the Cedar call
    // is kept for it, which it decides with its own policies when it would build the same.
    let candidate = shared.candidate.load_full().filter(|_| {
        let sample = shared.options.candidate_sample;
        !keep_call && (sample >= 1.0 || fastrand::f64() < sample)
    });
    let (evaluation, call) = if keep_call {
        crate::decide::explain(&snapshot, &request, &presented, now)
    } else if candidate.is_some() {
        crate::decide::evaluate_keeping_call(&snapshot, &request, &presented, now)
    } else {
        (
            crate::decide::evaluate(&snapshot, &request, &presented, now),
            None,
        )
    };
    let envelope = envelope(shared, &request, &presented, &evaluation, trace);
    // The candidate set and the record, after the answer is made and off the check's path:
    // for checks, not for Explain.
    let (call, live_call) = if keep_call {
        (call, None)
    } else {
        (None, call)
    };
    if !keep_call {
        let recorder = shared
            .options
            .recorder
            .as_ref()
            .filter(|r| r.sampled())
            .map(Arc::clone);
        if candidate.is_some() || recorder.is_some() {
            let decided = crate::record::Decided {
                body_read: snapshot.reads.body.is_some(),
                request,
                presented,
                now,
                evaluation: evaluation.clone(),
                candidate: None,
            };
            match (candidate, recorder) {
                (Some(candidate), recorder) => {
                    shared
                        .shadow
                        .decide(&snapshot, candidate, decided, live_call, recorder);
                }
                (None, Some(recorder)) => recorder.record(decided),
                (None, None) => {}
            }
        }
    }
    (
        Decision {
            evaluation,
            envelope,
        },
        call,
    )
}

/// What is answered and logged around an evaluation: the request id, identity headers the
/// client sent (removed on an OK answer), the token's headers (removed on an OK answer
/// unless forwarded),
/// the log attributes, the trace id, and whether the outcome is enforced.
fn envelope(
    shared: &Shared,
    request: &Request,
    presented: &Presented,
    evaluation: &Evaluation,
    trace: Option<TraceParent>,
) -> Envelope {
    let http = &request.http;
    let had_token = matches!(presented.token, Ok(Some(_)));
    Envelope {
        request_id: http.request_id.clone(),
        identity: identity_headers(&shared.options.identity_headers, presented),
        names: Arc::clone(&shared.header_names),
        client_identity_headers: http
            .headers
            .keys()
            // Many upstream frameworks (CGI, WSGI, Rack, PHP) read `_` as `-`: match both.
            .filter(|name| name.replace('_', "-").starts_with(IDENTITY_HEADER_PREFIX))
            .cloned()
            .collect(),
        // A verified token's headers; a pass that is not enforced gets them whatever the
        // token was ([`finish`]).
        strip_headers: if had_token {
            shared.authn.token_headers_to_strip()
        } else {
            Vec::new()
        },
        enforced: !evaluation.route_dry_run,
        peer_addr: presented.peer.address.clone(),
        log_attributes: log_attributes(&shared.options, request, presented),
        trace_id: trace.map(|t| t.trace_id),
    }
}

/// The identity headers of an OK answer besides the principal and the action (the answer
/// writes those from the uids): the peer's SPIFFE ID, and for a verified token its subject,
/// issuer and the mapped claims. A value that is not safe in a header (a control character)
/// is left out; the client's copy is removed anyway.
fn identity_headers(
    names: &crate::config::IdentityHeaders,
    presented: &Presented,
) -> Vec<(String, String)> {
    let mut headers = Vec::with_capacity(3 + names.claims.len());
    let mut set = |name: &str, value: String| {
        if value
            .bytes()
            .all(|b| b == b'\t' || (b >= 0x20 && b != 0x7f))
        {
            headers.push((name.to_owned(), value));
        }
    };
    if let Some(id) = &presented.peer.spiffe_id {
        set(&names.peer_spiffe_id, id.to_string());
    }
    if let Ok(Some(token)) = &presented.token {
        set(&names.subject, token.subject.clone());
        set(&names.issuer, token.issuer.clone());
        for (claim, header) in &names.claims {
            if let Some(value) = token.claims.get(claim) {
                set(header, value.clone());
            }
        }
    }
    headers
}

/// The request headers, token claims and body fields `log.decisions` asks for; credentials
/// never, values listed under `redact` as `[redacted]`.
fn log_attributes(
    options: &CheckOptions,
    request: &Request,
    presented: &Presented,
) -> Vec<(String, String)> {
    let settings = &options.decision_log;
    if settings.include_headers.is_empty()
        && settings.include_claims.is_empty()
        && settings.include_body.is_empty()
    {
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
        if let Some(value) = request.http.headers.get(name).filter(|_| !secret(name)) {
            attributes.push((format!("header.{name}"), shown(name, value)));
        }
    }
    if let Ok(Some(token)) = &presented.token {
        for name in &settings.include_claims {
            if let Some(value) = token.claims.get(name) {
                attributes.push((format!("claim.{name}"), shown(name, value)));
            }
        }
    }
    // Parsed again only when fields are listed and the body is within its limit; a body that
    // is not a JSON object shows none, and only scalar values are shown (a listed field
    // holding an object could carry a value `redact` names inside it).
    let body = &request.body.bytes;
    if !settings.include_body.is_empty()
        && !body.is_empty()
        && !request.body.partial
        && body.len() <= request.body.max_bytes
    {
        let parsed = serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(body);
        if let Ok(fields) = parsed {
            for name in &settings.include_body {
                let text = match fields.get(name) {
                    Some(serde_json::Value::String(s)) => s.clone(),
                    Some(value @ (serde_json::Value::Number(_) | serde_json::Value::Bool(_))) => {
                        value.to_string()
                    }
                    _ => continue,
                };
                attributes.push((format!("body.{name}"), shown(name, &text)));
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
        .map_or(bound, |caller| within(bound, caller))
}

/// `bound`, or the caller's own timeout less a margin (a tenth, between 1 and 50 ms) when that
/// is shorter.
pub(crate) fn within(bound: Duration, caller: Duration) -> Duration {
    let margin = (caller / 10).clamp(Duration::from_millis(1), Duration::from_millis(50));
    caller.saturating_sub(margin).min(bound)
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

/// A check read from protobuf and normalised: the typed request, the resolved peer and the
/// parsed `traceparent`; ready to authenticate and decide.
#[derive(Debug)]
pub struct Prepared {
    pub request: Request,
    /// The peer as resolved; only its address when it was refused.
    pub peer: Peer,
    /// Why the peer was refused: a deny, but after the token is looked at (401 before 403).
    pub peer_refused: Option<PeerError>,
    pub trace: Option<TraceParent>,
}

/// Normalises the request and checks the peer (certificate validity at `now`); a malformed
/// request is already a decision, a refused peer is decided by the core after the token.
pub fn prepare(
    limits: &Limits,
    peer_settings: &PeerSettings,
    input: CheckInput,
    now: i64,
) -> Result<Prepared, Box<Decision>> {
    let CheckInput {
        http,
        peer,
        destination,
        route_metadata,
        extensions,
    } = input;
    let Some(raw) = http else {
        return Err(Box::new(Decision::early(
            String::new(),
            DenyReason::BadRequest(request::RequestError::MissingHttp),
        )));
    };
    let fallback_id = raw.id.clone();
    let mut raw = raw;
    let body = std::mem::take(&mut raw.body);
    let body_cut = raw.body_cut;
    request::check_header_bounds(&raw, limits.max_headers, limits.max_header_bytes)
        .map_err(|err| Box::new(Decision::early(String::new(), DenyReason::BadRequest(err))))?;
    let http = request::normalise(raw, limits.max_path_bytes)
        .map_err(|err| Box::new(Decision::early(fallback_id, DenyReason::BadRequest(err))))?;
    let xfcc = http
        .headers
        .get("x-forwarded-client-cert")
        .map(String::as_str);
    let address = peer.address.clone();
    let (mut peer, peer_refused) = match Peer::resolve(peer, xfcc, peer_settings, now) {
        Ok(peer) => (peer, None),
        Err(err) => (Peer::from_envoy(String::new(), address), Some(err)),
    };
    peer.ip = crate::identity::client_ip(
        &peer.address,
        http.headers.get("x-forwarded-for").map(String::as_str),
        peer_settings.xff_trusted_hops,
    );
    let trace = http
        .headers
        .get("traceparent")
        .and_then(|t| TraceParent::parse(t));
    let body = request::RequestBody {
        bytes: body,
        partial: body_cut
            || http
                .headers
                .get("x-envoy-auth-partial-body")
                .is_some_and(|v| v.eq_ignore_ascii_case("true")),
        max_bytes: limits.max_body_bytes,
        max_depth: limits.max_body_depth,
    };
    Ok(Prepared {
        request: Request {
            http,
            destination,
            extensions,
            route_metadata,
            body,
            fetched: Default::default(),
        },
        peer,
        peer_refused,
        trace,
    })
}

/// Seconds since the Unix epoch: read once per check, passed to every stage that needs it.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
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
