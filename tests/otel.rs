//! OpenTelemetry export: with `tracing.otlp_endpoint` set, each check is exported over OTLP/gRPC
//! as a `cedargate.check` span inside the caller's trace (its `traceparent`). The collector is a
//! real OTLP gRPC server on 127.0.0.1 (opentelemetry-proto's service), recording what arrives.
//! Alone in its binary: the tracing subscriber is process-wide.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cedargate::config::{LogFormat, OtelSettings, PolicySource};
use cedargate::telemetry::otel::Tracing;
use cedargate::testutil::{TestServer, check, test_config};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::trace::v1::Span;

#[derive(Clone, Default)]
struct Collector {
    spans: Arc<Mutex<Vec<Span>>>,
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.spans.lock().unwrap();
        for resource in request.into_inner().resource_spans {
            for scope in resource.scope_spans {
                spans.extend(scope.spans);
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checks_are_exported_as_spans_of_the_callers_trace() {
    let collector = Collector::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let serving = collector.clone();
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(serving))
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener))
            .await
            .unwrap();
    });

    let settings = OtelSettings {
        otlp_endpoint: endpoint,
        service_name: "cedargate-test".into(),
        sample_ratio: 1.0,
    };
    let tracing = Tracing::start(&settings).unwrap();
    let _log = cedargate::telemetry::init_logging(LogFormat::Json, Some(&tracing));
    let mut config = test_config(PolicySource::Embedded);
    config.otel = Some(settings);
    let mut server = TestServer::with_config(config).await;

    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let parent = "00f067aa0ba902b7";
    let reply = server
        .check(
            check("GET", "/healthz")
                .header("traceparent", &format!("00-{trace}-{parent}-01"))
                .build(),
        )
        .await;
    assert_eq!(reply.code(), tonic::Code::Ok);
    // A check without traceparent starts a trace of its own.
    server.check(check("GET", "/orders").build()).await;

    let deadline = Instant::now() + Duration::from_secs(15);
    let span = loop {
        let flushing = tracing.clone();
        tokio::task::spawn_blocking(move || flushing.flush())
            .await
            .unwrap();
        let found = collector
            .spans
            .lock()
            .unwrap()
            .iter()
            .find(|s| hex(&s.trace_id) == trace)
            .cloned();
        if let Some(span) = found {
            break span;
        }
        assert!(
            Instant::now() < deadline,
            "no span of the caller's trace was exported"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(span.name, "cedargate.check");
    assert_eq!(
        hex(&span.parent_span_id),
        parent,
        "a child of the caller's span"
    );
    let decision = span
        .attributes
        .iter()
        .find(|kv| kv.key == "decision")
        .and_then(|kv| kv.value.as_ref())
        .map(|v| format!("{:?}", v.value));
    assert!(
        decision.is_some_and(|d| d.contains("allow")),
        "{:?}",
        span.attributes
    );
    let spans = collector.spans.lock().unwrap().clone();
    assert!(
        spans
            .iter()
            .any(|s| hex(&s.trace_id) != trace && s.parent_span_id.is_empty()),
        "the check without traceparent is a root span of a new trace"
    );
    let flushing = tracing.clone();
    tokio::task::spawn_blocking(move || flushing.shutdown())
        .await
        .unwrap();
}
