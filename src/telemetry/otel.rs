//! OpenTelemetry trace export (OTLP over gRPC), on when `tracing.otlp_endpoint` is set. Each
//! check becomes a `cedargate.check` span whose parent is the checked request's W3C
//! `traceparent`, so it appears inside the caller's trace; spans are exported in batches off
//! the request path. With the section absent nothing here runs and no span is built.

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::trace::{SamplingDecision, SamplingResult, SdkTracerProvider, ShouldSample};

use crate::config::OtelSettings;

/// Why the exporter could not be built.
#[derive(Debug, thiserror::Error)]
#[error("tracing.otlp_endpoint `{endpoint}`: {message}")]
pub struct OtelError {
    endpoint: String,
    message: String,
}

/// The tracer provider; flushes and stops the exporter when shut down.
#[derive(Debug, Clone)]
pub struct Tracing {
    provider: SdkTracerProvider,
}

impl Tracing {
    /// Builds the OTLP exporter and provider. Must run inside the tokio runtime.
    pub fn start(settings: &OtelSettings) -> Result<Self, OtelError> {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(settings.otlp_endpoint.clone())
            .build()
            .map_err(|err| OtelError {
                endpoint: settings.otlp_endpoint.clone(),
                message: err.to_string(),
            })?;
        let resource = opentelemetry_sdk::Resource::builder()
            .with_service_name(settings.service_name.clone())
            .build();
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(resource)
            .with_sampler(OwnDice {
                ratio: settings.sample_ratio,
            })
            .build();
        Ok(Self { provider })
    }

    /// The `tracing` layer that turns spans into OpenTelemetry spans.
    pub fn layer<S>(&self) -> impl tracing_subscriber::Layer<S> + use<S>
    where
        S: tracing::Subscriber + for<'span> tracing_subscriber::registry::LookupSpan<'span>,
    {
        tracing_opentelemetry::layer().with_tracer(self.provider.tracer("cedargate"))
    }

    /// Exports what is buffered now (tests, shutdown).
    pub fn flush(&self) {
        let _ = self.provider.force_flush();
    }

    pub fn shutdown(&self) {
        let _ = self.provider.shutdown();
    }
}

/// Samples `ratio` of the checks with cedargate's own randomness. Neither the caller's
/// `sampled` flag nor its trace id decides (a parent-based or trace-id-ratio sampler would let
/// a client that sends `traceparent` choose to have every one of its checks exported); the span
/// still joins the caller's trace when sampled.
#[derive(Debug, Clone)]
struct OwnDice {
    ratio: f64,
}

impl ShouldSample for OwnDice {
    fn should_sample(
        &self,
        parent_context: Option<&opentelemetry::Context>,
        _trace_id: opentelemetry::trace::TraceId,
        _name: &str,
        _span_kind: &opentelemetry::trace::SpanKind,
        _attributes: &[opentelemetry::KeyValue],
        _links: &[opentelemetry::trace::Link],
    ) -> SamplingResult {
        use opentelemetry::trace::TraceContextExt;
        let decision = if self.ratio >= 1.0 || fastrand::f64() < self.ratio {
            SamplingDecision::RecordAndSample
        } else {
            SamplingDecision::Drop
        };
        SamplingResult {
            decision,
            attributes: Vec::new(),
            trace_state: parent_context
                .map(|ctx| ctx.span().span_context().trace_state().clone())
                .unwrap_or_default(),
        }
    }
}

/// The span of one check, a child of the request's `traceparent` when it has a valid one.
pub fn check_span(parent: Option<&super::TraceParent>) -> tracing::Span {
    use opentelemetry::trace::{
        SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState,
    };
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    let span = tracing::info_span!(
        "cedargate.check",
        otel.name = "cedargate.check",
        otel.kind = "server",
        decision = tracing::field::Empty,
        reason = tracing::field::Empty,
    );
    let remote = parent.and_then(|p| {
        Some(SpanContext::new(
            TraceId::from_hex(&p.trace_id).ok()?,
            SpanId::from_hex(&p.parent_id).ok()?,
            TraceFlags::new(p.flags),
            true,
            TraceState::default(),
        ))
    });
    if let Some(remote) = remote {
        let _ = span.set_parent(opentelemetry::Context::new().with_remote_span_context(remote));
    }
    span
}

#[cfg(test)]
mod tests {
    use opentelemetry::trace::{
        SpanContext, SpanId, SpanKind, TraceContextExt, TraceFlags, TraceId, TraceState,
    };
    use opentelemetry_sdk::trace::{SamplingDecision, ShouldSample};

    use super::OwnDice;

    #[test]
    fn a_sampled_parent_does_not_force_sampling() {
        let parent = opentelemetry::Context::new().with_remote_span_context(SpanContext::new(
            TraceId::from(1),
            SpanId::from(1),
            TraceFlags::SAMPLED,
            true,
            TraceState::default(),
        ));
        let decide = |ratio: f64| {
            OwnDice { ratio }
                .should_sample(
                    Some(&parent),
                    TraceId::from(1),
                    "x",
                    &SpanKind::Server,
                    &[],
                    &[],
                )
                .decision
        };
        for _ in 0..100 {
            assert_eq!(decide(0.0), SamplingDecision::Drop);
            assert_eq!(decide(1.0), SamplingDecision::RecordAndSample);
        }
    }
}
