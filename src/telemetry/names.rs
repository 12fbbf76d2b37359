//! Every cedargate metric name and its `# HELP` text. A leaf: any module records a metric by
//! name from here without importing the rest of telemetry (which knows decisions, and so the
//! identity and policy modules that record metrics themselves).

pub const DECISIONS_TOTAL: &str = "cedargate_decisions_total";
pub const CHECK_DURATION: &str = "cedargate_check_duration_seconds";
pub const REJECTED_TOTAL: &str = "cedargate_rejected_total";
pub const PANICS_TOTAL: &str = "cedargate_check_panics_total";
pub const AUTH_FAILURES_TOTAL: &str = "cedargate_auth_failures_total";
pub const IN_FLIGHT: &str = "cedargate_checks_in_flight";
pub const POLICY_INFO: &str = "cedargate_policy_info";
pub const POLICY_RELOADS_TOTAL: &str = "cedargate_policy_reloads_total";
pub const BUILD_INFO: &str = "cedargate_build_info";
pub const LOG_DROPPED_TOTAL: &str = "cedargate_log_lines_dropped_total";
pub const POLICY_LOADED_AT: &str = "cedargate_policy_last_load_timestamp_seconds";
pub const POLICY_AGE: &str = "cedargate_policy_age_seconds";
pub const JWKS_FETCHES_TOTAL: &str = "cedargate_jwks_fetches_total";
pub const JWKS_KEYS: &str = "cedargate_jwks_keys";
pub const JWKS_LOADED_AT: &str = "cedargate_jwks_last_success_timestamp_seconds";
pub const TOKEN_CACHE_TOTAL: &str = "cedargate_token_cache_total";
pub const TOKEN_VERIFICATIONS_TOTAL: &str = "cedargate_token_verifications_total";
pub const DECISION_CACHE_TOTAL: &str = "cedargate_decision_cache_total";
pub const DECISION_CACHE_BYTES: &str = "cedargate_decision_cache_bytes";
pub const TLS_RELOADS_TOTAL: &str = "cedargate_tls_reloads_total";
pub const TLS_HANDSHAKE_FAILURES_TOTAL: &str = "cedargate_tls_handshake_failures_total";
pub const ENTITY_CACHE_TOTAL: &str = "cedargate_entity_cache_total";
pub const ENTITY_FETCH_DURATION: &str = "cedargate_entity_fetch_duration_seconds";
pub const ENTITY_FETCH_FAILURES_TOTAL: &str = "cedargate_entity_fetch_failures_total";
pub const ENTITY_STALE_SECONDS: &str = "cedargate_entity_stale_seconds";
pub const RECORDS_TOTAL: &str = "cedargate_records_total";
pub const SHADOW_DECISIONS_TOTAL: &str = "cedargate_shadow_decisions_total";
pub const CANDIDATE_INFO: &str = "cedargate_candidate_policy_info";
pub const BUNDLE_REVISION: &str = "cedargate_bundle_revision";
pub const BUNDLE_ACTIVATED_AT: &str = "cedargate_bundle_last_activation_timestamp_seconds";
pub const BUNDLE_FAILURES_TOTAL: &str = "cedargate_bundle_failures_total";
pub const BUNDLE_FETCHED_AT: &str = "cedargate_bundle_last_fetch_timestamp_seconds";

/// The `# HELP` text of every cedargate metric (README, "Operations", has the same table).
pub(super) const HELP: &[(&str, Kind, &str)] = &[
    (
        BUNDLE_REVISION,
        Kind::Gauge,
        "The revision of the policy bundle in force.",
    ),
    (
        BUNDLE_ACTIVATED_AT,
        Kind::Gauge,
        "Unix time a policy bundle was last put in force.",
    ),
    (
        BUNDLE_FAILURES_TOTAL,
        Kind::Counter,
        "Policy bundles refused or not fetched, by reason: read, archive, manifest, hash, unsigned, signature, invalid, rollback; from a bundle server also status, timeout, unreachable, too_large.",
    ),
    (
        BUNDLE_FETCHED_AT,
        Kind::Gauge,
        "Unix time the bundle server last answered with a bundle that was verified (or 304 Not Modified): alert when it grows old.",
    ),
    (
        RECORDS_TOTAL,
        Kind::Counter,
        "Decision records by result: written, dropped (the writer fell behind), failed (the file could not be written).",
    ),
    (
        SHADOW_DECISIONS_TOTAL,
        Kind::Counter,
        "Checks the candidate policy set also decided, by the live and the candidate decision (allow, deny): where they differ, the candidate would change the answer.",
    ),
    (
        CANDIDATE_INFO,
        Kind::Gauge,
        "The candidate policy set evaluated beside the live one, by version (1 for the set in use).",
    ),
    (
        ENTITY_CACHE_TOTAL,
        Kind::Counter,
        "Entity lookups of fetched types by type and result: hit, negative_hit (known not to exist), miss (asked of the source), stale (a kept copy served while the source failed).",
    ),
    (
        ENTITY_FETCH_DURATION,
        Kind::Histogram,
        "Time of one fetch from the entity source, in seconds.",
    ),
    (
        ENTITY_FETCH_FAILURES_TOTAL,
        Kind::Counter,
        "Failed entity fetches by reason: timeout, status, too_large, invalid, unreachable, schema (an entity that does not fit the schema).",
    ),
    (
        ENTITY_STALE_SECONDS,
        Kind::Gauge,
        "Age in seconds of the last kept entity served while the source failed, by type.",
    ),
    (
        DECISIONS_TOTAL,
        Kind::Counter,
        "Check decisions by decision (allow, deny), reason code and whether the decision was enforced (false in dry-run).",
    ),
    (
        CHECK_DURATION,
        Kind::Histogram,
        "Time to answer a Check, from receipt to the response, in seconds.",
    ),
    (
        REJECTED_TOTAL,
        Kind::Counter,
        "Checks and connections refused before any decision, by reason (overload, peer_uid).",
    ),
    (
        PANICS_TOTAL,
        Kind::Counter,
        "Checks whose handler panicked; each was answered with a deny.",
    ),
    (
        AUTH_FAILURES_TOTAL,
        Kind::Counter,
        "Checks refused for their credentials, by reason: a token (token_expired, bad_signature, unknown_kid, ...) or the peer (invalid_peer_certificate, untrusted_trust_domain, ...).",
    ),
    (IN_FLIGHT, Kind::Gauge, "Checks being decided now."),
    (
        POLICY_INFO,
        Kind::Gauge,
        "1 for the policy set version in force, 0 for versions it replaced.",
    ),
    (
        POLICY_RELOADS_TOTAL,
        Kind::Counter,
        "Policy reloads by result (success, unchanged, error).",
    ),
    (
        POLICY_LOADED_AT,
        Kind::Gauge,
        "Unix time of the last successful policy load or reload (alert when it is old and a change was expected).",
    ),
    (
        POLICY_AGE,
        Kind::Gauge,
        "Seconds since the policy set in force was loaded.",
    ),
    (
        BUILD_INFO,
        Kind::Gauge,
        "1, labelled with the cedargate version.",
    ),
    (
        LOG_DROPPED_TOTAL,
        Kind::Counter,
        "Log lines dropped because stderr could not keep up.",
    ),
    (
        JWKS_FETCHES_TOTAL,
        Kind::Counter,
        "Key set fetches by issuer and result (ok, error).",
    ),
    (
        JWKS_KEYS,
        Kind::Gauge,
        "Keys in the key set in force, by issuer.",
    ),
    (
        JWKS_LOADED_AT,
        Kind::Gauge,
        "Unix time of the last successful key set load, by issuer (alert when older than a few refresh intervals).",
    ),
    (
        TOKEN_CACHE_TOTAL,
        Kind::Counter,
        "Verified-token cache lookups by result (hit, miss).",
    ),
    (
        TOKEN_VERIFICATIONS_TOTAL,
        Kind::Counter,
        "Token signature verifications (cache misses) by result.",
    ),
    (
        DECISION_CACHE_TOTAL,
        Kind::Counter,
        "Decision cache lookups of checks with a token by result (hit: Cedar not asked; miss: evaluated and remembered; full: evaluated, not remembered, the byte budget is spent).",
    ),
    (
        DECISION_CACHE_BYTES,
        Kind::Gauge,
        "Memory the decision cache holds, in bytes (estimated from above; bounded by limits.decision_cache_bytes).",
    ),
    (
        TLS_RELOADS_TOTAL,
        Kind::Counter,
        "Reloads of the Check listener's certificate and key by result (ok, error).",
    ),
    (
        TLS_HANDSHAKE_FAILURES_TOTAL,
        Kind::Counter,
        "TLS handshakes on the Check listener that failed, by reason (error, timeout, busy).",
    ),
];

#[derive(Clone, Copy)]
pub(super) enum Kind {
    Counter,
    Gauge,
    Histogram,
}
