//! Logs and metrics. Owns the process-wide Prometheus recorder (installed once, rendered by the
//! admin listener), the metric names, and the decision log line. Never logs a header value,
//! a token or a request body: only names, codes and Cedar uids.
//!
//! Metrics (README, "Operations", has the full table): `cedargate_decisions_total{decision,
//! reason,enforced}`, `cedargate_check_duration_seconds` (histogram),
//! `cedargate_rejected_total{reason}`, `cedargate_auth_failures_total{reason}`,
//! `cedargate_check_panics_total`, `cedargate_checks_in_flight`, `cedargate_policy_info{version}`,
//! `cedargate_policy_reloads_total{result}`, `cedargate_build_info{version}`,
//! `cedargate_log_lines_dropped_total`, the staleness gauges
//! `cedargate_policy_last_load_timestamp_seconds`, `cedargate_policy_age_seconds` and
//! `cedargate_jwks_last_success_timestamp_seconds{issuer}`, the key, token and TLS metrics
//! named below, and the standard `process_*` metrics. Each has `# HELP` text ([`HELP`]).

pub mod decision_log;
pub mod log_writer;
pub mod names;
pub mod otel;

use std::sync::OnceLock;
use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::config::LogFormat;
use crate::decision::{Decision, DenyReason, Outcome};

pub use names::*;
use names::{HELP, Kind};

fn describe() {
    for &(name, kind, help) in HELP {
        match kind {
            Kind::Counter => metrics::describe_counter!(name, help),
            Kind::Gauge => metrics::describe_gauge!(name, help),
            Kind::Histogram => {
                metrics::describe_histogram!(name, metrics::Unit::Seconds, help);
            }
        }
    }
    process().describe();
}

/// The `process_*` metrics (CPU seconds, resident memory, open and maximum file descriptors,
/// threads, start time), read from `/proc` when `/metrics` is rendered.
fn process() -> &'static metrics_process::Collector {
    static COLLECTOR: OnceLock<metrics_process::Collector> = OnceLock::new();
    COLLECTOR.get_or_init(metrics_process::Collector::default)
}

/// Unix time of the last successful policy load, for [`POLICY_AGE`] (0: none yet).
static POLICY_LOADED_SECS: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(0);

/// Seconds since the Unix epoch, now.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

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
        describe();
        build_info();
        handle
    })
}

/// Renders the metrics in Prometheus text format.
pub fn render() -> String {
    let handle = prometheus();
    metrics::counter!(LOG_DROPPED_TOTAL).absolute(log_writer::dropped_lines());
    let loaded = POLICY_LOADED_SECS.load(std::sync::atomic::Ordering::Acquire);
    if loaded > 0 {
        metrics::gauge!(POLICY_AGE).set(unix_now().saturating_sub(loaded) as f64);
    }
    process().collect();
    handle.run_upkeep();
    handle.render()
}

/// Installs the log subscriber (`RUST_LOG` filters; default `info`), with OpenTelemetry span
/// export when `tracing` is given. Safe to call twice (the first subscriber stays). Lines go
/// to stderr in batches ([`log_writer`]); keep the guard until shutdown, dropping it writes
/// out what is buffered.
pub fn init_logging(format: LogFormat, tracing: Option<&otel::Tracing>) -> log_writer::LogGuard {
    use tracing_subscriber::Layer;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let (writer, guard) = log_writer::BatchedStderr::new();
    let fmt = tracing_subscriber::fmt::layer().with_writer(writer.clone());
    let fmt = match format {
        LogFormat::Json => {
            decision_log::write_json_to(writer.clone());
            fmt.json().flatten_event(true).boxed()
        }
        // Colours only on a terminal: a file, a pipe or a container log gets plain text.
        LogFormat::Text => {
            use std::io::IsTerminal;
            fmt.with_ansi(std::io::stderr().is_terminal()).boxed()
        }
    };
    let installed = tracing_subscriber::registry()
        .with(fmt.with_filter(filter))
        .with(tracing.map(otel::Tracing::layer))
        .try_init();
    // Only the subscriber in use gets a flusher thread.
    if installed.is_ok() {
        writer.start_flusher();
    }
    guard
}

/// Counts and logs one decision. Denies are always logged, allows as sampled.
pub fn decided(decision: &Decision, elapsed: Duration, sampler: &Sampler) {
    let verdict = if decision.is_allow() { "allow" } else { "deny" };
    let reason = decision.reason_code();
    let enforced = if decision.envelope.enforced {
        "true"
    } else {
        "false"
    };
    metrics::counter!(DECISIONS_TOTAL, "decision" => verdict, "reason" => reason, "enforced" => enforced)
        .increment(1);
    metrics::histogram!(CHECK_DURATION).record(elapsed.as_secs_f64());
    if let Some(result) = decision.evaluation.recall.label() {
        metrics::counter!(DECISION_CACHE_TOTAL, "result" => result).increment(1);
    }
    if let Outcome::Deny(reason @ (DenyReason::Unauthenticated(_) | DenyReason::Peer(_))) =
        decision.outcome()
    {
        metrics::counter!(AUTH_FAILURES_TOTAL, "reason" => reason.code()).increment(1);
    }
    let detail = decision.deny_message();
    if decision.is_allow() && !sampler.sample() {
        return;
    }
    if decision_log::write(decision, detail.as_deref(), elapsed) {
        return;
    }
    let Decision {
        evaluation,
        envelope,
    } = decision;
    // Text logs: the attributes as one JSON object, so that a value cannot pose as another
    // attribute.
    let attributes = (!envelope.log_attributes.is_empty()).then(|| {
        serde_json::Value::Object(
            envelope
                .log_attributes
                .iter()
                .map(|(k, v)| (k.clone(), serde_json::Value::from(v.as_str())))
                .collect(),
        )
        .to_string()
    });
    let uid = |u: &Option<cedar_policy::EntityUid>| u.as_ref().map(ToString::to_string);
    tracing::info!(
        target: "cedargate::decision",
        service = "cedargate",
        request_id = %envelope.request_id,
        peer_addr = %envelope.peer_addr,
        decision = verdict,
        enforced = envelope.enforced,
        reason,
        principal = uid(&evaluation.principal).as_deref().unwrap_or(""),
        action = uid(&evaluation.action).as_deref().unwrap_or(""),
        resource = uid(&evaluation.resource).as_deref().unwrap_or(""),
        policy_ids = %evaluation.policy_ids.join(","),
        policy_version = evaluation.version.as_deref().unwrap_or(""),
        trace_id = envelope.trace_id.as_deref().unwrap_or(""),
        attributes = attributes.as_deref().unwrap_or(""),
        detail = detail.as_deref().unwrap_or(""),
        latency_us = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX),
    );
}

/// Logs one allow in every `n` (`log.decisions.sample_allow` = 1/n), or none at rate 0;
/// lock-free.
#[derive(Debug)]
pub struct Sampler {
    /// 0: never; 1: always; n: one in n.
    every: u64,
    seen: std::sync::atomic::AtomicU64,
}

impl Sampler {
    pub fn new(rate: f64) -> Self {
        let every = if rate > 0.0 && rate < 1.0 {
            // rate is in (0, 1): 1/rate is finite and at least 1.
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            let n = (1.0 / rate).round() as u64;
            n.max(1)
        } else if rate >= 1.0 {
            1
        } else {
            0
        };
        Self {
            every,
            seen: std::sync::atomic::AtomicU64::new(0),
        }
    }

    pub fn sample(&self) -> bool {
        match self.every {
            0 => false,
            1 => true,
            every => self
                .seen
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                .is_multiple_of(every),
        }
    }
}

/// Counts a check in flight while it lives (also when its task is cancelled or panics).
pub struct InFlight(());

impl InFlight {
    pub fn enter() -> Self {
        metrics::gauge!(IN_FLIGHT).increment(1.0);
        Self(())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        metrics::gauge!(IN_FLIGHT).decrement(1.0);
    }
}

/// Records the policy set in force: `cedargate_policy_info{version}` is 1 for it, 0 for the
/// one it replaced.
/// Logs what does not stop a policy set from loading but is probably a mistake.
pub fn policy_warnings(snapshot: &crate::policy::Snapshot) {
    for warning in &snapshot.warnings {
        tracing::warn!(version = %snapshot.version, warning = %warning, "policy set warning");
    }
}

pub fn policy_loaded(previous: Option<&str>, version: &str) {
    if let Some(previous) = previous.filter(|p| *p != version) {
        metrics::gauge!(POLICY_INFO, "version" => previous.to_owned()).set(0.0);
    }
    metrics::gauge!(POLICY_INFO, "version" => version.to_owned()).set(1.0);
    let now = unix_now();
    POLICY_LOADED_SECS.store(now, std::sync::atomic::Ordering::Release);
    metrics::gauge!(POLICY_LOADED_AT).set(now as f64);
}

/// `cedargate_candidate_policy_info{version}`: 1 for the candidate set in use, 0 for the one
/// it replaced.
pub fn candidate_loaded(previous: Option<&str>, version: &str) {
    if let Some(previous) = previous.filter(|p| *p != version) {
        metrics::gauge!(CANDIDATE_INFO, "version" => previous.to_owned()).set(0.0);
    }
    metrics::gauge!(CANDIDATE_INFO, "version" => version.to_owned()).set(1.0);
}

/// A policy bundle of `revision` was put in force.
pub fn bundle_activated(revision: u64) {
    metrics::gauge!(BUNDLE_REVISION).set(revision as f64);
    metrics::gauge!(BUNDLE_ACTIVATED_AT).set(unix_now() as f64);
}

/// The bundle server answered with a verified bundle or `304 Not Modified`.
pub fn bundle_fetched() {
    metrics::gauge!(BUNDLE_FETCHED_AT).set(unix_now() as f64);
}

/// A policy bundle was refused, for `reason` ([`crate::policy::bundle::BundleError::code`],
/// or `rollback`).
pub fn bundle_failed(reason: &'static str) {
    metrics::counter!(BUNDLE_FAILURES_TOTAL, "reason" => reason).increment(1);
}

/// Counts a policy reload: `success`, `unchanged` or `error`.
pub fn policy_reload(result: &'static str) {
    metrics::counter!(POLICY_RELOADS_TOTAL, "result" => result).increment(1);
}

/// `cedargate_build_info{version}` = 1.
pub fn build_info() {
    metrics::gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
}

/// Counts a Check refused before evaluation (overload, …).
pub fn rejected(reason: &'static str) {
    metrics::counter!(REJECTED_TOTAL, "reason" => reason).increment(1);
}

/// Counts a panic caught in a check (answered as a deny).
pub fn panicked() {
    metrics::counter!(PANICS_TOTAL).increment(1);
}

/// A W3C `traceparent` header (`00-<32 hex>-<16 hex>-<2 hex>`), parsed once per check: the
/// decision log line carries its trace id (so it joins the trace of the request it decided)
/// and the check span takes it as its remote parent. Malformed or all-zero ids are ignored
/// (W3C Trace Context §3.2).
///
/// Why not `opentelemetry_sdk`'s `TraceContextPropagator` (already in the tree): it reads the
/// ids with `from_str_radix`, so `00-abc-+def-01` passes as trace id `0…0abc`, where W3C says a
/// trace id is exactly 32 lowercase hex digits and a malformed header MUST be ignored. The
/// decision log would then carry a trace id the caller never sent, joining the wrong trace.
/// `opentelemetry_sdk_is_more_lenient_than_w3c` below pins the difference: if it ever fails,
/// the propagator has become strict and can replace this.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceParent {
    /// 32 lowercase hex digits.
    pub trace_id: String,
    /// The caller's span id: 16 lowercase hex digits.
    pub parent_id: String,
    /// Trace flags (bit 0: sampled).
    pub flags: u8,
}

impl TraceParent {
    pub fn parse(header: &str) -> Option<Self> {
        let mut parts = header.trim().split('-');
        let (Some(version), Some(trace), Some(parent), Some(flags)) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return None;
        };
        let hex = |s: &str, len: usize| {
            s.len() == len
                && s.bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        };
        let zero = |s: &str| s.bytes().all(|b| b == b'0');
        let valid = hex(version, 2)
            && version != "ff"
            && (version != "00" || parts.next().is_none())
            && hex(trace, 32)
            && !zero(trace)
            && hex(parent, 16)
            && !zero(parent)
            && hex(flags, 2);
        valid.then(|| Self {
            trace_id: trace.to_owned(),
            parent_id: parent.to_owned(),
            flags: u8::from_str_radix(flags, 16).unwrap_or(0),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sampler_rates() {
        let count = |rate: f64| {
            let sampler = Sampler::new(rate);
            (0..100).filter(|_| sampler.sample()).count()
        };
        assert_eq!(count(1.0), 100);
        assert_eq!(count(0.1), 10);
        assert_eq!(count(0.0), 0);
    }

    #[test]
    fn traceparent() {
        let id = "4bf92f3577b34da6a3ce929d0e0e4736";
        let parsed = TraceParent::parse(&format!("00-{id}-00f067aa0ba902b7-01")).unwrap();
        assert_eq!(parsed.trace_id, id);
        assert_eq!(parsed.parent_id, "00f067aa0ba902b7");
        assert_eq!(parsed.flags, 1);
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
        ] {
            assert_eq!(TraceParent::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn opentelemetry_sdk_is_more_lenient_than_w3c() {
        use opentelemetry::propagation::TextMapPropagator;
        use opentelemetry::trace::TraceContextExt;
        let header = "00-abc-+def-01";
        let carrier =
            std::collections::HashMap::from([("traceparent".to_owned(), header.to_owned())]);
        let context =
            opentelemetry_sdk::propagation::TraceContextPropagator::new().extract(&carrier);
        let span = context.span();
        let taken = span.span_context();
        assert!(taken.is_valid(), "the propagator takes {header}");
        assert_eq!(
            taken.trace_id().to_string(),
            "00000000000000000000000000000abc"
        );
        assert_eq!(TraceParent::parse(header), None, "W3C: ignore it");
    }
}
