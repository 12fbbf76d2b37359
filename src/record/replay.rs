//! Re-deciding records: each record's inputs go through [`crate::decide::evaluate`] against a
//! policy set, with the record's own time, and the outcome is compared with a baseline: the
//! outcome the record carries, or the same record decided against a baseline set. The
//! [`Report`] counts what changed (allow → deny, deny → allow, another deny reason, other
//! determining policies) by action and by determining policy, with example request ids.
//!
//! Records of one token share one token value ([`super::Tokens`]), as the live checks shared
//! the cached token: its principal's parts are built once and its decision cache is used,
//! which `tests/decide.rs` proves gives the verdicts Cedar gives.

use std::collections::BTreeMap;

use serde::Serialize;

use super::{Record, RecordError, RecordedOutcome, Tokens};
use crate::policy::Snapshot;

/// Request ids kept as examples of each kind of change, per action and per policy.
const EXAMPLES: usize = 3;

/// How one record's outcome changed, if it did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Change {
    AllowToDeny,
    DenyToAllow,
    /// Still a deny, for another reason (a 403 that is now a 401, say).
    DenyReason,
    /// The same decision and reason, made by other policies.
    Policies,
}

impl Change {
    /// How `after` differs from `before`, or `None` when it does not.
    pub fn between(before: &RecordedOutcome, after: &RecordedOutcome) -> Option<Self> {
        match (before.is_allow(), after.is_allow()) {
            (true, false) => Some(Self::AllowToDeny),
            (false, true) => Some(Self::DenyToAllow),
            _ if before.reason != after.reason => Some(Self::DenyReason),
            _ if before.policies != after.policies => Some(Self::Policies),
            _ => None,
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Self::AllowToDeny => "allow → deny",
            Self::DenyToAllow => "deny → allow",
            Self::DenyReason => "another deny reason",
            Self::Policies => "other determining policies",
        }
    }
}

/// Counts of each change, with example request ids.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Changes {
    pub allow_to_deny: u64,
    pub deny_to_allow: u64,
    pub deny_reason: u64,
    pub policies: u64,
    /// A few request ids of each change.
    pub examples: BTreeMap<Change, Vec<String>>,
}

impl Changes {
    fn add(&mut self, change: Change, request_id: &str) {
        *match change {
            Change::AllowToDeny => &mut self.allow_to_deny,
            Change::DenyToAllow => &mut self.deny_to_allow,
            Change::DenyReason => &mut self.deny_reason,
            Change::Policies => &mut self.policies,
        } += 1;
        let examples = self.examples.entry(change).or_default();
        if examples.len() < EXAMPLES {
            examples.push(request_id.to_owned());
        }
    }

    pub fn total(&self) -> u64 {
        self.allow_to_deny + self.deny_to_allow + self.deny_reason + self.policies
    }
}

/// What a replay found.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Report {
    /// Records decided.
    pub records: u64,
    /// Records whose outcome is the baseline's.
    pub unchanged: u64,
    /// Records that cannot be decided exactly with the set: its policies could read a value
    /// the record left out (a credential, a redacted name, a body it did not keep). Counted
    /// apart from the changes, and a replay with any fails like a change.
    pub inexact: u64,
    /// A few of their request ids, with what was left out.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub inexact_examples: Vec<(String, String)>,
    /// Every change.
    pub changed: Changes,
    /// Changes by action (`Action::"GET"`, or `(none)` for a check refused before one).
    pub by_action: BTreeMap<String, Changes>,
    /// Changes by the policies that determine the new outcome (`(none)`: no policy did, such
    /// as a deny because no `permit` applies any more).
    pub by_policy: BTreeMap<String, Changes>,
    /// The policy set the records were decided against, and the baseline's, when one was.
    pub version: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub baseline_version: Option<String>,
}

impl Report {
    /// Something changed: what a CI gate fails on.
    pub fn any_change(&self) -> bool {
        self.changed.total() > 0 || self.inexact > 0
    }
}

/// Decides records against a policy set (and a baseline set, when given) and sums up.
#[derive(Debug)]
pub struct Replay<'s> {
    policies: &'s Snapshot,
    baseline: Option<&'s Snapshot>,
    tokens: Tokens,
    baseline_tokens: Tokens,
    pub report: Report,
}

impl<'s> Replay<'s> {
    /// Against `policies`, compared with the recorded outcomes, or with `baseline`'s.
    pub fn new(policies: &'s Snapshot, baseline: Option<&'s Snapshot>) -> Self {
        Self {
            policies,
            baseline,
            tokens: Tokens::default(),
            baseline_tokens: Tokens::default(),
            report: Report {
                version: policies.version.to_string(),
                baseline_version: baseline.map(|b| b.version.to_string()),
                ..Report::default()
            },
        }
    }

    /// Decides one record again; returns the outcome before and after.
    pub fn decide(
        &mut self,
        record: &Record,
    ) -> Result<(RecordedOutcome, RecordedOutcome), RecordError> {
        let left_out = record
            .unreadable(self.policies)
            .or_else(|| self.baseline.and_then(|b| record.unreadable(b)));
        if let Some(left_out) = left_out {
            self.report.inexact += 1;
            if self.report.inexact_examples.len() < EXAMPLES {
                self.report
                    .inexact_examples
                    .push((record.request_id.clone(), left_out.to_owned()));
            }
        }
        let after = decide_with(self.policies, record, &mut self.tokens)?;
        let before = match self.baseline {
            Some(baseline) => decide_with(baseline, record, &mut self.baseline_tokens)?,
            None => record.outcome.clone(),
        };
        let report = &mut self.report;
        report.records += 1;
        match Change::between(&before, &after) {
            None => report.unchanged += 1,
            Some(change) => {
                let id = &record.request_id;
                report.changed.add(change, id);
                let action = after
                    .action
                    .clone()
                    .or_else(|| before.action.clone())
                    .unwrap_or_else(|| "(none)".to_owned());
                report.by_action.entry(action).or_default().add(change, id);
                let policies: &[String] = &after.policies;
                if policies.is_empty() {
                    report
                        .by_policy
                        .entry("(none)".to_owned())
                        .or_default()
                        .add(change, id);
                }
                for policy in policies {
                    report
                        .by_policy
                        .entry(policy.clone())
                        .or_default()
                        .add(change, id);
                }
            }
        }
        Ok((before, after))
    }
}

/// One record decided against one set.
pub fn decide_with(
    snapshot: &Snapshot,
    record: &Record,
    tokens: &mut Tokens,
) -> Result<RecordedOutcome, RecordError> {
    let (request, presented, now) = record.inputs(&snapshot.schema, tokens)?;
    let evaluation = crate::decide::evaluate(snapshot, &request, &presented, now);
    Ok(RecordedOutcome::of(&evaluation))
}
