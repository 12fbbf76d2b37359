//! The admin listener and the gRPC health service, over real sockets.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::time::Duration;

use cedargate::config::PolicySource;
use cedargate::testutil::jwt::{JwksServer, TestKey};
use cedargate::testutil::{CHECKOUT, TestServer, check, test_config, test_issuer};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

#[tokio::test]
async fn healthz_readyz_and_metrics() {
    let mut server = TestServer::start().await;
    let health = reqwest::get(server.admin_url("/healthz")).await.unwrap();
    assert_eq!(health.status(), 200);
    let ready = reqwest::get(server.admin_url("/readyz")).await.unwrap();
    assert_eq!(ready.status(), 200);

    server
        .check(check("POST", "/orders").peer(CHECKOUT).build())
        .await;
    let metrics = server.metrics().await;
    let line = metrics
        .lines()
        .find(|l| l.starts_with("cedargate_decisions_total{") && l.contains(r#"decision="allow""#))
        .unwrap_or_else(|| panic!("no allow counter in:\n{metrics}"));
    let count: f64 = line.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(count >= 1.0, "{line}");
    assert!(
        metrics.contains("cedargate_check_duration_seconds_bucket{le="),
        "{metrics}"
    );
}

#[tokio::test]
async fn readyz_turns_false_on_shutdown_and_listeners_close() {
    let server = TestServer::start().await;
    let shared = server.app.shared.clone();
    let admin = server.admin_url("/readyz");
    assert!(shared.is_ready());
    server.app.shutdown().await.unwrap();
    assert!(!shared.is_ready());
    assert!(
        reqwest::get(admin).await.is_err(),
        "admin listener still answers"
    );
}

#[tokio::test]
async fn grpc_health_reports_serving() {
    let server = TestServer::start().await;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", server.grpc_addr()))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = HealthClient::new(channel);
    let status = health
        .check(HealthCheckRequest {
            service: "envoy.service.auth.v3.Authorization".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .status;
    assert_eq!(status, ServingStatus::Serving as i32);
}

#[tokio::test]
async fn reflection_lists_check_and_health() {
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

    let server = TestServer::start().await;
    let mut client = ServerReflectionClient::new(server.channel().await);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut answers = client
        .server_reflection_info(tokio_stream::once(request))
        .await
        .unwrap()
        .into_inner();
    let answer = answers.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = answer.message_response else {
        panic!("unexpected answer {answer:?}");
    };
    let mut names: Vec<_> = list.service.into_iter().map(|s| s.name).collect();
    names.sort();
    assert_eq!(
        names,
        [
            "envoy.service.auth.v3.Authorization",
            "grpc.health.v1.Health",
            "grpc.reflection.v1.ServerReflection"
        ]
    );
}

const AUTHORIZATION: &str = "envoy.service.auth.v3.Authorization";

async fn status(health: &mut HealthClient<tonic::transport::Channel>, service: &str) -> i32 {
    health
        .check(HealthCheckRequest {
            service: service.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .status
}

/// The next status a health watch reports (bounded, so a bug fails instead of hanging).
async fn next(watch: &mut tonic::Streaming<tonic_health::pb::HealthCheckResponse>) -> i32 {
    tokio::time::timeout(Duration::from_secs(30), watch.message())
        .await
        .expect("a status change within 30 s")
        .unwrap()
        .expect("the watch stream stays open")
        .status
}

#[tokio::test]
async fn grpc_health_follows_readiness() {
    // An issuer whose key set cannot be fetched yet: `/readyz` is 503, and gRPC health (what
    // Envoy's `grpc_health_check` and Kubernetes `grpc:` probes read) must say the same.
    let key = TestKey::generate(jsonwebtoken::Algorithm::ES256, "k");
    let jwks = JwksServer::start(&[&key]).await;
    jwks.fail_with(Some((500, "down")));
    let mut config = test_config(PolicySource::Embedded);
    config.issuers = vec![test_issuer(&jwks.issuer(), &jwks.uri())];
    config.limits.shutdown_delay = Duration::from_secs(1);
    let server = TestServer::with_config(config).await;
    let readyz = server.admin_url("/readyz");
    assert_eq!(reqwest::get(&readyz).await.unwrap().status(), 503);
    let mut health = HealthClient::new(server.channel().await);
    for service in ["", AUTHORIZATION] {
        assert_eq!(
            status(&mut health, service).await,
            ServingStatus::NotServing as i32,
            "{service:?}"
        );
    }
    let mut watch = health
        .watch(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(next(&mut watch).await, ServingStatus::NotServing as i32);

    // The key set comes back: the fetcher's retry loads it and health turns SERVING.
    jwks.fail_with(None);
    assert_eq!(next(&mut watch).await, ServingStatus::Serving as i32);
    assert_eq!(reqwest::get(&readyz).await.unwrap().status(), 200);
    assert_eq!(
        status(&mut health, AUTHORIZATION).await,
        ServingStatus::Serving as i32
    );
    // The staleness gauge an operator alerts on records when this issuer's keys came in.
    let loaded = cedargate::testutil::metric_value(
        &server.metrics().await,
        "cedargate_jwks_last_success_timestamp_seconds",
        &[("issuer", &jwks.issuer())],
    );
    assert!(loaded > 1.7e9, "{loaded}");

    // Draining: NOT_SERVING while the listener still answers (`shutdown_delay`).
    let shared = server.app.shared.clone();
    let stopping = tokio::spawn(server.app.shutdown());
    assert_eq!(next(&mut watch).await, ServingStatus::NotServing as i32);
    assert!(!shared.is_ready());
    assert_eq!(
        status(&mut health, AUTHORIZATION).await,
        ServingStatus::NotServing as i32
    );
    stopping.await.unwrap().unwrap();
}

#[tokio::test]
async fn reflection_v1alpha_answers_older_clients() {
    // Older grpcurl and Postman ask `grpc.reflection.v1alpha` only.
    use tonic_reflection::pb::v1alpha::ServerReflectionRequest;
    use tonic_reflection::pb::v1alpha::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1alpha::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1alpha::server_reflection_response::MessageResponse;

    let server = TestServer::start().await;
    let mut client = ServerReflectionClient::new(server.channel().await);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut answers = client
        .server_reflection_info(tokio_stream::once(request))
        .await
        .unwrap()
        .into_inner();
    let answer = answers.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = answer.message_response else {
        panic!("unexpected answer {answer:?}");
    };
    let names: Vec<_> = list.service.into_iter().map(|s| s.name).collect();
    assert!(
        names
            .iter()
            .any(|n| n == "envoy.service.auth.v3.Authorization"),
        "{names:?}"
    );
    assert!(
        names.iter().any(|n| n == "grpc.health.v1.Health"),
        "{names:?}"
    );
}
