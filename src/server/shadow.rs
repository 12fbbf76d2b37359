//! The candidate (shadow) policy set: decided beside the set in force on every check, or a
//! sample (`policies.candidate`), with the same [`crate::decide::evaluate`] and the same
//! inputs (the fetched entities too), never enforced.
//!
//! What the candidate may not do, and how it is kept from it:
//! - change the answer: it is decided after the live decision is made, off the check's path
//!   (on the blocking pool), and only counted, logged and recorded;
//! - fail or slow the check: the check hands its inputs over and answers at once; a panic in
//!   the candidate is caught and counted (`candidate="error"`);
//! - cost what it need not: when the candidate's schema, entities and routes are the live
//!   set's, its policies read the same request data, and the policies that can apply to this
//!   request (its slice: action, principal type, resource type) are the live set's, word for
//!   word, the candidate decides as the live set did, and is not evaluated ([`Comparison`];
//!   `tests/decide.rs` proves the shortcut equal to evaluating). Most checks of most changes
//!   are in slices the change does not touch. In a slice a change touches, when the
//!   candidate's policies also look up the same entities, it would build the very Cedar call
//!   the live set evaluated: only its policies are evaluated on that call
//!   ([`crate::decide::evaluate_call`]), not the request mapped again;
//! - take the CPU without bound: at most [`Shadow::IN_FLIGHT_PER_CORE`] candidate
//!   evaluations per core run at once; a check that finds them all busy is not shadowed and
//!   is counted (`candidate="skipped"`), so a slow candidate costs shadow coverage, never
//!   check latency beyond the CPU those evaluations use.
//!
//! Every check it decides is counted in `cedargate_shadow_decisions_total{live, candidate}`
//! (allow, deny; `error` for a policy error or a panic); a disagreement is logged with the
//! request id and both outcomes and determining policies. The record of the check (when
//! `records` is on) is written once the candidate has decided, with its outcome.

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};

use cedar_policy::{EntityTypeName, EntityUid};

use tokio::sync::Semaphore;

use crate::decision::{DenyReason, Evaluation, Outcome};
use crate::policy::Snapshot;
use crate::policy::engine::CedarCall;
use crate::record::Decided;
use crate::record::writer::Recorder;
use crate::telemetry::SHADOW_DECISIONS_TOTAL;

/// Places for candidate evaluations in flight.
#[derive(Debug)]
pub struct Shadow {
    places: Arc<Semaphore>,
    total: u32,
    /// The comparison of the live and candidate sets in use, made once per pair.
    comparison: Mutex<Option<Arc<Comparison>>>,
}

/// What is known of a live set and a candidate without evaluating the candidate.
#[derive(Debug)]
pub struct Comparison {
    live: u64,
    candidate: u64,
    /// Same schema, entities and routes, and policies that read the same request data (so
    /// the same route, identity, body and near-miss rules, and the same Cedar request).
    same_frame: bool,
    /// The same frame, and policies that look up the same entities: the candidate's Cedar
    /// call for a check is the live one, and only its policies need evaluating.
    same_call: bool,
    /// Per slice: the same policies, word for word.
    slices: Mutex<HashMap<(EntityUid, EntityTypeName, EntityTypeName), bool>>,
}

impl Comparison {
    pub fn new(live: &Snapshot, candidate: &Snapshot) -> Self {
        let same_frame = live.frame == candidate.frame
            && live.reads == candidate.reads
            && live.path_literals == candidate.path_literals;
        Self {
            live: live.id,
            candidate: candidate.id,
            same_frame,
            same_call: same_frame && live.graph.same_core(&candidate.graph),
            slices: Mutex::new(HashMap::new()),
        }
    }

    /// Whether the candidate would build the live set's Cedar call for every check.
    pub fn same_call(&self) -> bool {
        self.same_call
    }

    /// Whether `candidate` decides the check `live` decided as `evaluation` exactly as `live`
    /// did (then it need not be evaluated). `false` when that is not known.
    pub fn decides_alike(
        &self,
        live: &Snapshot,
        candidate: &Snapshot,
        evaluation: &Evaluation,
    ) -> bool {
        if !self.same_frame || live.id != self.live || candidate.id != self.candidate {
            return false;
        }
        match (
            &evaluation.principal,
            &evaluation.action,
            &evaluation.resource,
        ) {
            // Decided before any policy: by the frame alone.
            (None, None, None) => true,
            (Some(principal), Some(action), Some(resource)) => {
                let key = (
                    action.clone(),
                    principal.type_name().clone(),
                    resource.type_name().clone(),
                );
                let Ok(mut slices) = self.slices.lock() else {
                    return false;
                };
                *slices
                    .entry(key)
                    .or_insert_with_key(|(a, p, r)| live.slices.same_as(&candidate.slices, a, p, r))
            }
            _ => false,
        }
    }
}

impl Default for Shadow {
    fn default() -> Self {
        let cores = std::thread::available_parallelism().map_or(2, std::num::NonZero::get);
        let total = u32::try_from(cores * Self::IN_FLIGHT_PER_CORE).unwrap_or(64);
        Self {
            places: Arc::new(Semaphore::new(total as usize)),
            total,
            comparison: Mutex::new(None),
        }
    }
}

/// The `live`/`candidate` label of an evaluation.
fn label(evaluation: &Evaluation) -> &'static str {
    match &evaluation.outcome {
        Outcome::Allow => "allow",
        Outcome::Deny(DenyReason::PolicyError(_)) => "error",
        Outcome::Deny(_) => "deny",
    }
}

impl Shadow {
    /// Candidate evaluations in flight per core, at most.
    pub const IN_FLIGHT_PER_CORE: usize = 2;

    /// Decides `decided` with `candidate` off the check's path, then records it (with the
    /// candidate's outcome) when `recorder` is given. With no place free, the check is not
    /// shadowed (counted) and is recorded at once.
    /// `call` is the Cedar call the live set evaluated for the check, when it asked Cedar:
    /// when the candidate would build the same, only its policies are evaluated on it.
    pub fn decide(
        &self,
        live: &Snapshot,
        candidate: Arc<Snapshot>,
        mut decided: Decided,
        call: Option<CedarCall>,
        recorder: Option<Arc<Recorder>>,
    ) {
        let comparison = self.comparison(live, &candidate);
        if comparison.decides_alike(live, &candidate, &decided.evaluation) {
            let mut same = decided.evaluation.clone();
            same.version = Some(Arc::clone(&candidate.version));
            let label = label(&same);
            metrics::counter!(SHADOW_DECISIONS_TOTAL, "live" => label, "candidate" => label)
                .increment(1);
            decided.candidate = Some(same);
            if let Some(recorder) = recorder {
                recorder.record(decided);
            }
            return;
        }
        let Ok(place) = Arc::clone(&self.places).try_acquire_owned() else {
            metrics::counter!(SHADOW_DECISIONS_TOTAL, "live" => label(&decided.evaluation), "candidate" => "skipped")
                .increment(1);
            if let Some(recorder) = recorder {
                recorder.record(decided);
            }
            return;
        };
        let call = call.filter(|_| comparison.same_call && comparison.live == live.id);
        tokio::task::spawn_blocking(move || {
            let mut decided = decided;
            decided.candidate = evaluate(&candidate, &decided, call.as_ref());
            if let Some(recorder) = recorder {
                recorder.record(decided);
            }
            drop(place);
        });
    }

    /// The comparison of `live` and `candidate`, made once per pair.
    fn comparison(&self, live: &Snapshot, candidate: &Snapshot) -> Arc<Comparison> {
        let Ok(mut held) = self.comparison.lock() else {
            return Arc::new(Comparison::new(live, candidate));
        };
        match held.as_ref() {
            Some(c) if c.live == live.id && c.candidate == candidate.id => Arc::clone(c),
            _ => {
                let fresh = Arc::new(Comparison::new(live, candidate));
                *held = Some(Arc::clone(&fresh));
                fresh
            }
        }
    }

    /// Waits (at most `within`) until no candidate evaluation is in flight (shutdown: their
    /// records are queued before the records file is flushed).
    pub async fn drain(&self, within: std::time::Duration) {
        let _ = tokio::time::timeout(within, self.places.acquire_many(self.total)).await;
    }
}

/// The candidate's evaluation of a decided check, counted and, on a disagreement, logged.
fn evaluate(
    candidate: &Snapshot,
    decided: &Decided,
    call: Option<&CedarCall>,
) -> Option<Evaluation> {
    let live = &decided.evaluation;
    let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| match call {
        Some(call) => crate::decide::evaluate_call(candidate, live, call),
        None => {
            crate::decide::evaluate(candidate, &decided.request, &decided.presented, decided.now)
        }
    }));
    let Ok(shadow) = outcome else {
        crate::telemetry::panicked();
        metrics::counter!(SHADOW_DECISIONS_TOTAL, "live" => label(live), "candidate" => "error")
            .increment(1);
        return None;
    };
    metrics::counter!(SHADOW_DECISIONS_TOTAL, "live" => label(live), "candidate" => label(&shadow))
        .increment(1);
    if shadow.is_allow() != live.is_allow() {
        let reason = |e: &Evaluation| match &e.outcome {
            Outcome::Allow => "allow",
            Outcome::Deny(reason) => reason.code(),
        };
        tracing::info!(
            target: "cedargate::shadow",
            request_id = %decided.request.http.request_id,
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
    for live in ["allow", "deny", "error"] {
        for candidate in ["allow", "deny", "error", "skipped"] {
            metrics::counter!(SHADOW_DECISIONS_TOTAL, "live" => live, "candidate" => candidate)
                .increment(0);
        }
    }
}
