//! The `log.decisions` section: how many allows are logged, and which request headers, token
//! claims and body fields a decision line may carry. Credentials are never logged, whatever
//! is listed; a request body never, but for the top-level fields listed.

use serde::Deserialize;

use super::Problem;

/// What the decision log writes.
#[derive(Debug, Clone, PartialEq)]
pub struct DecisionLogSettings {
    /// Fraction of allows logged, in (0, 1]; denies are always logged.
    pub sample_allow: f64,
    /// Request headers whose values a decision line carries (lowercase names).
    pub include_headers: Vec<String>,
    /// Token claims whose values a decision line carries.
    pub include_claims: Vec<String>,
    /// Top-level fields of a JSON request body whose values a decision line carries.
    pub include_body: Vec<String>,
    /// Included headers, claims or body fields logged as `[redacted]`: present, value hidden.
    pub redact: Vec<String>,
}

impl Default for DecisionLogSettings {
    fn default() -> Self {
        Self {
            sample_allow: 1.0,
            include_headers: Vec::new(),
            include_claims: Vec::new(),
            include_body: Vec::new(),
            redact: Vec::new(),
        }
    }
}

/// Headers that carry credentials: never logged, listed or not.
pub const NEVER_LOGGED: &[&str] = &[
    "authorization",
    "proxy-authorization",
    "cookie",
    "set-cookie",
    "x-api-key",
];

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDecisionLog {
    sample_allow: Option<f64>,
    #[serde(default)]
    include_headers: Vec<String>,
    #[serde(default)]
    include_claims: Vec<String>,
    #[serde(default)]
    include_body: Vec<String>,
    #[serde(default)]
    redact: Vec<String>,
}

pub(super) fn build(raw: RawDecisionLog, problems: &mut Vec<Problem>) -> DecisionLogSettings {
    let RawDecisionLog {
        sample_allow,
        include_headers,
        include_claims,
        include_body,
        redact,
    } = raw;
    let sample_allow = match sample_allow {
        None => 1.0,
        Some(rate) if (0.0..=1.0).contains(&rate) => rate,
        Some(rate) => {
            problems.push(Problem {
                field: "log.decisions.sample_allow".into(),
                value: rate.to_string(),
                fix: "a fraction of allows to log, from 0 (none) to 1 (all); denies are always logged",
            });
            1.0
        }
    };
    let lower = |names: Vec<String>| names.into_iter().map(|n| n.to_ascii_lowercase()).collect();
    DecisionLogSettings {
        sample_allow,
        include_headers: lower(include_headers),
        include_claims,
        include_body,
        redact: lower(redact),
    }
}
