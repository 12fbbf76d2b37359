//! The `tracing` section: OpenTelemetry span export over OTLP/gRPC, off unless an endpoint is
//! given.

use serde::Deserialize;

use super::Problem;

/// Where and how check spans are exported.
#[derive(Debug, Clone, PartialEq)]
pub struct OtelSettings {
    /// The collector's OTLP gRPC endpoint, e.g. `http://127.0.0.1:4317`.
    pub otlp_endpoint: String,
    /// `service.name` of the exported spans.
    pub service_name: String,
    /// Fraction of new traces sampled; a request whose `traceparent` is sampled is always
    /// followed (parent-based).
    pub sample_ratio: f64,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawOtel {
    otlp_endpoint: Option<String>,
    service_name: Option<String>,
    sample_ratio: Option<f64>,
}

pub(super) fn build(raw: RawOtel, problems: &mut Vec<Problem>) -> Option<OtelSettings> {
    let RawOtel {
        otlp_endpoint,
        service_name,
        sample_ratio,
    } = raw;
    let endpoint = otlp_endpoint?;
    if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
        problems.push(Problem {
            field: "tracing.otlp_endpoint".into(),
            value: endpoint,
            fix: "write the collector's OTLP gRPC URL, such as http://127.0.0.1:4317",
        });
        return None;
    }
    let sample_ratio = match sample_ratio {
        None => 1.0,
        Some(r) if (0.0..=1.0).contains(&r) => r,
        Some(r) => {
            problems.push(Problem {
                field: "tracing.sample_ratio".into(),
                value: r.to_string(),
                fix: "a fraction between 0 and 1",
            });
            1.0
        }
    };
    Some(OtelSettings {
        otlp_endpoint: endpoint,
        service_name: service_name.unwrap_or_else(|| "cedargate".into()),
        sample_ratio,
    })
}
