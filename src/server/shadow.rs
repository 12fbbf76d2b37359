//! The candidate (shadow) policy set: decided beside the set in force on every check, or a
//! sample (`policies.candidate`), with the same [`crate::decide::evaluate`] and the same
//! inputs (the fetched entities too), never enforced.
//!
//! What the candidate may not do, and how it is kept from it: change the answer (its
//! evaluation is only counted, logged and recorded: it never reaches [`super::check`]'s
//! answer); fail the check (a panic in it is caught and counted as a candidate `error`, the
//! live answer stands); slow a check without bound (it is one more pure evaluation, no I/O,
//! and it is skipped when the check's deadline has passed). Every check it decides is counted
//! in `cedargate_shadow_decisions_total{live, candidate}`; a disagreement is also logged, with
//! the request id and both outcomes and determining policies.

use std::panic::AssertUnwindSafe;
use std::time::Instant;

use crate::decision::Evaluation;
use crate::identity::Presented;
use crate::policy::Snapshot;
use crate::request::Request;
use crate::telemetry::SHADOW_DECISIONS_TOTAL;

/// Decides `request` with the candidate set, counts the pair, logs a disagreement.
pub fn decide(
    candidate: &Snapshot,
    request: &Request,
    presented: &Presented,
    now: i64,
    live: &Evaluation,
    deadline: Instant,
) -> Option<Evaluation> {
    if Instant::now() >= deadline {
        return None;
    }
    let decided = std::panic::catch_unwind(AssertUnwindSafe(|| {
        crate::decide::evaluate(candidate, request, presented, now)
    }));
    let label = |e: &Evaluation| if e.is_allow() { "allow" } else { "deny" };
    let Ok(shadow) = decided else {
        crate::telemetry::panicked();
        metrics::counter!(SHADOW_DECISIONS_TOTAL, "live" => label(live), "candidate" => "error")
            .increment(1);
        return None;
    };
    metrics::counter!(SHADOW_DECISIONS_TOTAL, "live" => label(live), "candidate" => label(&shadow))
        .increment(1);
    if shadow.is_allow() != live.is_allow() {
        let reason = |e: &Evaluation| match &e.outcome {
            crate::decision::Outcome::Allow => "allow",
            crate::decision::Outcome::Deny(reason) => reason.code(),
        };
        tracing::info!(
            target: "cedargate::shadow",
            request_id = %request.http.request_id,
            live = label(live),
            live_reason = reason(live),
            live_policies = ?live.policy_ids,
            candidate = label(&shadow),
            candidate_reason = reason(&shadow),
            candidate_policies = ?shadow.policy_ids,
            candidate_version = shadow.version.as_deref().unwrap_or(""),
            "the candidate policy set decides this check otherwise"
        );
    }
    Some(shadow)
}

/// Pre-registers the shadow counters, so that a dashboard sees zeros before the first check.
pub fn register() {
    for live in ["allow", "deny"] {
        for candidate in ["allow", "deny", "error"] {
            metrics::counter!(SHADOW_DECISIONS_TOTAL, "live" => live, "candidate" => candidate)
                .increment(0);
        }
    }
}
