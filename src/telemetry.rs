//! Logs and metrics. Owns the process-wide Prometheus recorder (installed once, rendered by the
//! admin listener), the metric names, and the decision log line. Never logs a header value,
//! a token or a request body: only names, codes and Cedar uids.
//!
//! Metrics: `cedargate_decisions_total{decision,reason}`, `cedargate_check_duration_seconds`
//! (histogram), `cedargate_rejected_total{reason}`, `cedargate_check_panics_total`.

use std::sync::OnceLock;
use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::config::LogFormat;
use crate::decision::{Decision, Outcome};

pub const DECISIONS_TOTAL: &str = "cedargate_decisions_total";
pub const CHECK_DURATION: &str = "cedargate_check_duration_seconds";
pub const REJECTED_TOTAL: &str = "cedargate_rejected_total";
pub const PANICS_TOTAL: &str = "cedargate_check_panics_total";

const LATENCY_BUCKETS: &[f64] = &[
    0.000_005, 0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005,
    0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
];

/// The process-wide Prometheus recorder, installed on first use.
pub fn prometheus() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let builder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Full(CHECK_DURATION.into()), LATENCY_BUCKETS)
            .unwrap_or_else(|_| PrometheusBuilder::new());
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        // Fails only when another recorder is installed (an embedding program's): then that
        // one receives the metrics and this handle renders nothing, which is not worth a panic.
        if metrics::set_global_recorder(recorder).is_err() {
            tracing::warn!("a metrics recorder was already installed; /metrics will be empty");
        }
        handle
    })
}

/// Renders the metrics in Prometheus text format.
pub fn render() -> String {
    let handle = prometheus();
    handle.run_upkeep();
    handle.render()
}

/// Installs the log subscriber (`RUST_LOG` filters; default `info`). Safe to call twice.
pub fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

/// Counts and logs one decision.
pub fn decided(decision: &Decision, elapsed: Duration) {
    let verdict = if decision.is_allow() { "allow" } else { "deny" };
    let reason = decision.reason_code();
    metrics::counter!(DECISIONS_TOTAL, "decision" => verdict, "reason" => reason).increment(1);
    metrics::histogram!(CHECK_DURATION).record(elapsed.as_secs_f64());
    let detail = match &decision.outcome {
        Outcome::Allow => None,
        Outcome::Deny(reason) => Some(reason.to_string()),
    };
    tracing::info!(
        target: "cedargate::decision",
        request_id = %decision.request_id,
        decision = verdict,
        reason,
        principal = decision.principal.as_deref().unwrap_or(""),
        action = decision.action.as_deref().unwrap_or(""),
        resource = decision.resource.as_deref().unwrap_or(""),
        policy_ids = ?decision.policy_ids,
        detail = detail.as_deref().unwrap_or(""),
        latency_us = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX),
    );
}

/// Counts a Check refused before evaluation (overload, …).
pub fn rejected(reason: &'static str) {
    metrics::counter!(REJECTED_TOTAL, "reason" => reason).increment(1);
}

/// Counts a panic caught in a check (answered as a deny).
pub fn panicked() {
    metrics::counter!(PANICS_TOTAL).increment(1);
}
