//! The decision core: one pure function from a policy snapshot, a normalised request, what the
//! caller presented and the time to an [`Evaluation`]. No I/O, no clock (the caller passes
//! `now`), no protobuf, no tonic: the Check and Explain handlers, `cedargate test` and `check`,
//! the benchmarks and the tests all decide through [`evaluate`] (or [`explain`], the same
//! stages keeping the Cedar request), so a shadow policy set or a replayed record is one more
//! call, not another pipeline.
//!
//! Stages, each owned by its module: identity rules ([`crate::identity::Presented::establish`]:
//! a present token must be valid, certificate binding, a token the route requires, then the
//! peer: every 401 before any 403) → route semantics ([`crate::policy::routes`]: the route,
//! or a refusal for a near miss) → the Cedar request
//! ([`crate::policy::mapping`], from parts built once per snapshot and per token) → Cedar on
//! the slice of policies that can apply ([`crate::policy::engine`]; an evaluation error is a
//! deny), unless the token already got a verdict on exactly the same inputs under the same
//! snapshot ([`crate::policy::decisions`]; only [`evaluate`] recalls, [`explain`] and the
//! reference always ask Cedar).
//!
//! [`evaluate_reference`] is the straightforward reference the core is proven equal to
//! (`tests/decide.rs`): the whole entity store built for the request, the whole policy set, and
//! the request validated against the schema by Cedar.

use std::sync::Arc;

use crate::decision::{DenyReason, Evaluation, Outcome, Recall};
use crate::identity::{Presented, Refused};
use crate::policy::Snapshot;
use crate::policy::decisions::Kept;
use crate::policy::engine::{self, CedarCall, Verdict};
use crate::policy::mapping::{self, Build, Mapped, MappingError};
use crate::request::Request;

/// Decides one request against one snapshot.
pub fn evaluate(
    snapshot: &Snapshot,
    request: &Request,
    presented: &Presented,
    now: i64,
) -> Evaluation {
    run(snapshot, request, presented, now, Mode::Fast).0
}

/// [`evaluate`], also returning the Cedar call it evaluated, when it asked Cedar (not when it
/// refused before the policies or recalled a verdict): a candidate set with the same frame
/// decides the same call with its own policies ([`evaluate_call`]).
pub fn evaluate_keeping_call(
    snapshot: &Snapshot,
    request: &Request,
    presented: &Presented,
    now: i64,
) -> (Evaluation, Option<CedarCall>) {
    run(snapshot, request, presented, now, Mode::Fast)
}

/// The evaluation of `call`, the Cedar call another snapshot's [`evaluate_keeping_call`]
/// built for a check it decided as `decided`, by `snapshot`'s policies. Equal to
/// [`evaluate`] with `snapshot` when the two snapshots would build the same call: the same
/// schema, entities and routes, policies that read the same request data and look up the
/// same entities (the shadow set's `Comparison` checks that; `tests/decide.rs` proves it).
pub fn evaluate_call(snapshot: &Snapshot, decided: &Evaluation, call: &CedarCall) -> Evaluation {
    let mut evaluation = Evaluation::denied(DenyReason::PolicyDenied);
    evaluation.version = Some(Arc::clone(&snapshot.version));
    evaluation.route_dry_run = decided.route_dry_run;
    evaluation.fetched = decided.fetched.clone();
    evaluation.principal = Some(call.principal.clone());
    evaluation.action = Some(call.action.clone());
    evaluation.resource = Some(call.resource.clone());
    conclude(&mut evaluation, engine::evaluate(snapshot, call));
    evaluation
}

/// [`evaluate`], also returning the Cedar request when one was built (Explain, the CLI).
pub fn explain(
    snapshot: &Snapshot,
    request: &Request,
    presented: &Presented,
    now: i64,
) -> (Evaluation, Option<CedarCall>) {
    run(snapshot, request, presented, now, Mode::Explain)
}

/// The reference [`evaluate`] must equal: whole entity store, whole policy set, full schema
/// validation of the request. Slower; for the differential tests and benchmarks.
pub fn evaluate_reference(
    snapshot: &Snapshot,
    request: &Request,
    presented: &Presented,
    now: i64,
) -> Evaluation {
    run(snapshot, request, presented, now, Mode::Reference).0
}

/// The entities a check of `request` may need from the entity source: its resource (as the
/// route, a context extension or the path fallback names it) and its principal (the caller
/// asks the source only for the types it fetches), and nothing when [`evaluate`] would refuse
/// the request before the policies (a misspelt name, a refused token or peer, a near miss of
/// a route, a bad body, an action that is not declared or does not apply to this principal
/// and resource): a caller that is refused never makes cedargate ask the source. Pure; the caller fetches them and puts them in [`Request::fetched`].
pub fn wanted(
    snapshot: &Snapshot,
    request: &Request,
    presented: &Presented,
) -> Vec<cedar_policy::EntityUid> {
    let http = &request.http;
    let Ok(route) = snapshot.routes.resolve(&http.method, &http.path) else {
        return Vec::new();
    };
    let requirement = route.as_ref().and_then(|r| r.token);
    if snapshot.lenient_names.near_miss(http).is_some() {
        return Vec::new();
    }
    let Ok(identity) = establish(snapshot, presented, requirement) else {
        return Vec::new();
    };
    if crate::policy::body::parse(snapshot, request).is_err() {
        return Vec::new();
    }
    mapping::entities_wanted(snapshot, request, route.as_ref(), &identity)
}

/// The identity rules, with the token's claims judged against the typed claims the snapshot
/// declares.
fn establish(
    snapshot: &Snapshot,
    presented: &Presented,
    requirement: Option<crate::identity::TokenRequirement>,
) -> Result<crate::identity::Identity, Refused> {
    presented.establish(requirement, |token| {
        crate::policy::claims::typed(snapshot, token).map(drop)
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Fast,
    Explain,
    Reference,
}

fn run(
    snapshot: &Snapshot,
    request: &Request,
    presented: &Presented,
    now: i64,
    mode: Mode,
) -> (Evaluation, Option<CedarCall>) {
    let http = &request.http;
    let mut evaluation = Evaluation::denied(DenyReason::PolicyDenied);
    evaluation.version = Some(Arc::clone(&snapshot.version));
    let deny = |mut evaluation: Evaluation, reason| {
        evaluation.outcome = Outcome::Deny(reason);
        (evaluation, None)
    };

    // Authentication before authorization: the token (401) and the peer are judged before a
    // near miss of a route (403); the route is looked up first only for its token requirement.
    let route = snapshot.routes.resolve(&http.method, &http.path);
    let requirement = route
        .as_ref()
        .ok()
        .and_then(|r| r.as_ref())
        .and_then(|r| r.token);
    evaluation.route_dry_run = route
        .as_ref()
        .is_ok_and(|r| r.as_ref().is_some_and(|r| r.dry_run));
    // A parameter or header the policies read under another spelling (`?Debug=`, `x_env`).
    if let Some((kind, name)) = snapshot.lenient_names.near_miss(http) {
        return deny(
            evaluation,
            DenyReason::BadRequest(crate::request::RequestError::LenientName {
                kind,
                name: crate::text::clip(name),
            }),
        );
    }
    let identity = match establish(snapshot, presented, requirement) {
        Ok(identity) => identity,
        Err(Refused::Token(err)) => return deny(evaluation, DenyReason::Unauthenticated(err)),
        Err(Refused::Peer(err)) => return deny(evaluation, DenyReason::Peer(err)),
    };
    let route = match route {
        Ok(route) => route,
        Err(near) => {
            return deny(
                evaluation,
                DenyReason::NoRoute(MappingError::NearMiss(crate::text::clip(&near.0))),
            );
        }
    };
    // A body the schema declares must be whole JSON of the declared shape (400, 413), judged
    // after who is asking (401, 403) and before any policy reads it.
    let body = match crate::policy::body::parse(snapshot, request) {
        Ok(body) => body,
        Err(err) => return deny(evaluation, DenyReason::Body(err)),
    };
    let body = body.as_ref();
    // Entity data the policies may need and the source could not give: never decided
    // without it.
    let fetched = &request.fetched;
    if !fetched.unavailable.is_empty() {
        return deny(
            evaluation,
            DenyReason::EntityUnavailable(fetched.unavailable.clone()),
        );
    }
    evaluation.fetched = fetched.entities.iter().map(|f| f.entity.uid()).collect();
    let mapped = match mode {
        Mode::Fast => mapping::map(snapshot, request, body, route, &identity, now, Build::Read),
        // Explain shows the whole context; what the fast path leaves out no policy can read.
        Mode::Explain => mapping::map(
            snapshot,
            request,
            body,
            route,
            &identity,
            now,
            Build::Everything,
        ),
        Mode::Reference => mapping::map_with_whole_store(
            snapshot, request, body, route, &identity, now,
        )
        .map(|call| Mapped::Call {
            call,
            remember: None,
        }),
    };
    let (verdict, call) = match mapped {
        Ok(Mapped::Recalled {
            principal,
            action,
            resource,
            verdict,
        }) => {
            evaluation.principal = Some(principal);
            evaluation.action = Some(action);
            evaluation.resource = Some(resource);
            evaluation.recall = Recall::Hit;
            (verdict, None)
        }
        Ok(Mapped::Call { call, remember }) => {
            let verdict = match mode {
                Mode::Fast | Mode::Explain => engine::evaluate(snapshot, &call),
                Mode::Reference => engine::evaluate_full(snapshot, &call),
            };
            if let Some(remember) = remember {
                evaluation.recall = match remember.keep(&verdict) {
                    Kept::Yes => Recall::Miss,
                    Kept::Full => Recall::Full,
                    Kept::Off => Recall::Uncached,
                };
            }
            evaluation.principal = Some(call.principal.clone());
            evaluation.action = Some(call.action.clone());
            evaluation.resource = Some(call.resource.clone());
            (verdict, Some(call))
        }
        Err(err) if err.is_unknown_action() => return deny(evaluation, DenyReason::NoRoute(err)),
        Err(err) => return deny(evaluation, DenyReason::Mapping(err)),
    };
    conclude(&mut evaluation, verdict);
    (evaluation, call)
}

/// The outcome and the policies of Cedar's verdict.
fn conclude(evaluation: &mut Evaluation, verdict: Verdict) {
    match verdict {
        Verdict::Allow { determining } => {
            evaluation.policy_ids = determining;
            evaluation.outcome = Outcome::Allow;
        }
        Verdict::Deny { determining } => evaluation.policy_ids = determining,
        Verdict::Error { failed } => {
            evaluation.policy_ids = failed.iter().map(|f| f.policy_id.clone()).collect();
            evaluation.outcome = Outcome::Deny(DenyReason::PolicyError(failed));
        }
    }
}
