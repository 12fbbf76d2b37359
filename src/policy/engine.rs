//! Evaluates a Cedar request against the snapshot's policies with `cedar_policy::Authorizer`.
//!
//! Cedar skips a policy whose evaluation errors; a skipped `forbid` could turn a deny into an
//! allow. Rule (SECURITY.md, "an erroring `forbid` cannot allow"): any evaluation error is a deny, and
//! the erroring policies are named. This module never builds requests and never answers Envoy.

use cedar_policy::{Authorizer, Decision};

use super::Snapshot;

/// A Cedar request ready for the authorizer, with the entities it needs (built by
/// [`super::mapping`]).
#[derive(Debug)]
pub struct CedarCall {
    pub principal: cedar_policy::EntityUid,
    pub action: cedar_policy::EntityUid,
    pub resource: cedar_policy::EntityUid,
    pub request: cedar_policy::Request,
    /// Shared with the token's cache when the request adds no entity to its principal's side.
    pub entities: std::sync::Arc<cedar_policy::Entities>,
}

/// What Cedar said about one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// At least one permit and no forbid was satisfied, and no policy errored.
    Allow { determining: Vec<String> },
    /// A forbid was satisfied, or no permit was (then `determining` is empty).
    Deny { determining: Vec<String> },
    /// At least one policy errored at evaluation: fail closed.
    Error { failed: Vec<PolicyFailure> },
}

/// A policy that could not be evaluated, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyFailure {
    pub policy_id: String,
    pub message: String,
}

/// Decides one Cedar call with the slice of policies that can apply to it.
pub fn evaluate(snapshot: &Snapshot, call: &CedarCall) -> Verdict {
    let policies = snapshot
        .slices
        .get(
            &call.action,
            call.principal.type_name(),
            call.resource.type_name(),
        )
        .unwrap_or(&snapshot.policies);
    evaluate_with(policies, call)
}

/// Decides one Cedar call with the whole policy set (the reference the slices are tested
/// against).
pub fn evaluate_full(snapshot: &Snapshot, call: &CedarCall) -> Verdict {
    evaluate_with(&snapshot.policies, call)
}

fn evaluate_with(policies: &cedar_policy::PolicySet, call: &CedarCall) -> Verdict {
    let response = Authorizer::new().is_authorized(&call.request, policies, &call.entities);
    let diagnostics = response.diagnostics();
    let failed: Vec<PolicyFailure> = diagnostics
        .errors()
        .map(|err| {
            let cedar_policy::AuthorizationError::PolicyEvaluationError(err) = err;
            PolicyFailure {
                policy_id: err.policy_id().to_string(),
                message: err.inner().to_string(),
            }
        })
        .collect();
    if !failed.is_empty() {
        return Verdict::Error { failed };
    }
    let mut determining: Vec<String> = diagnostics.reason().map(ToString::to_string).collect();
    determining.sort_unstable();
    match response.decision() {
        Decision::Allow => Verdict::Allow { determining },
        Decision::Deny => Verdict::Deny { determining },
    }
}
