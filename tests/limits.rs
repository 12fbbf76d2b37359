//! Limits and faults: the in-flight cap sheds load, the per-check deadline and a panic inside a
//! check end in a denied answer, an oversized message is refused; and after each, the server
//! still answers health checks and ordinary checks.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::time::{Duration, Instant};

use cedargate::config::{Config, PolicySource};
use cedargate::testutil::jwt::{JwksServer, TestKey, claims};
use cedargate::testutil::{
    PANIC_EXTENSION, TestServer, check, metric_value, test_config, test_issuer,
};
use jsonwebtoken::{Algorithm, Header};
use tonic::Code;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

const ISS: &str = "https://idp.test";

/// The server still answers: gRPC health says SERVING and a public check is allowed.
async fn still_serving(server: &mut TestServer) {
    let mut health = HealthClient::new(server.channel().await);
    let status = health
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("health answers")
        .into_inner()
        .status;
    assert_eq!(status, 1, "SERVING");
    let reply = server.check(check("GET", "/healthz").build()).await;
    assert_eq!(reply.code(), Code::Ok);
}

/// A server whose checks with an unknown `kid` wait (up to 30 s) for a key-set fetch.
fn waiting_config(jwks: &JwksServer) -> Config {
    let mut config = test_config(PolicySource::Embedded);
    config.issuers = vec![test_issuer(ISS, &jwks.uri())];
    config.auth.fetch_wait = Duration::from_secs(30);
    config
}

/// A token signed by a key the key server does not publish yet: its check waits for a fetch.
fn unknown_kid_token() -> String {
    let stranger = TestKey::generate(Algorithm::ES256, "not-yet-published");
    stranger.sign_with(
        Header {
            kid: Some("not-yet-published".into()),
            ..Header::new(Algorithm::ES256)
        },
        &claims(ISS, "orders", "alice"),
    )
}

/// Waits (bounded) until the key server has seen `count` fetches.
async fn fetches_reach(jwks: &JwksServer, count: usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while jwks.fetches() < count {
        assert!(Instant::now() < deadline, "no key-set fetch started");
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

type Answer = Result<
    tonic::Response<envoy_types::pb::envoy::service::auth::v3::CheckResponse>,
    tonic::Status,
>;

/// Holds the key server and starts a check naming an unknown kid; returns once that check is
/// in flight (its key-set fetch reached the held server).
async fn check_waiting_on_held_keys(
    server: &TestServer,
    jwks: &JwksServer,
) -> (
    tokio::sync::OwnedRwLockWriteGuard<()>,
    tokio::task::JoinHandle<Answer>,
) {
    let fetched = jwks.fetches();
    let held = jwks.hold().await;
    let mut client = server.client.clone();
    let request = check("GET", "/profiles/alice")
        .bearer(&unknown_kid_token())
        .build();
    let in_flight = tokio::spawn(async move { client.check(request).await });
    fetches_reach(jwks, fetched + 1).await;
    (held, in_flight)
}

#[tokio::test]
async fn over_the_in_flight_cap_is_shed_at_once() {
    let key = TestKey::generate(Algorithm::ES256, "k");
    let jwks = JwksServer::start(&[&key]).await;
    let mut config = waiting_config(&jwks);
    config.limits.max_inflight = 1;
    let mut server = TestServer::with_config(config).await;
    server.ready().await;
    // One check holds the only permit while it waits for a held key server.
    let (held, waiting) = check_waiting_on_held_keys(&server, &jwks).await;

    let started = Instant::now();
    // A denied answer, not a gRPC error, which an Envoy with `failure_mode_allow: true` would
    // turn into an allow (review round 2, finding 10); it carries the request id.
    let shed = server.check(check("GET", "/healthz").build()).await;
    assert_eq!(shed.code(), Code::Unavailable);
    assert_eq!(shed.http_status(), Some(503));
    assert_eq!(
        shed.body(),
        serde_json::json!({"error": "overloaded", "request_id": "5f0c1e52-9c0b-4b8e-8f7e-3d1f2a6b7c8d"})
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "shed, not queued"
    );
    let metrics = server.metrics().await;
    assert!(
        metrics.contains(r#"cedargate_rejected_total{reason="overload"}"#),
        "{metrics}"
    );

    drop(held);
    let first = waiting.await.unwrap().expect("answered").into_inner();
    assert_ne!(
        first.status.unwrap().code,
        0,
        "unknown kid is never an allow"
    );
    still_serving(&mut server).await;
    jwks.stop().await;
}

#[tokio::test]
async fn a_check_past_its_deadline_is_a_503_deny() {
    let key = TestKey::generate(Algorithm::ES256, "k");
    let jwks = JwksServer::start(&[&key]).await;
    let mut config = waiting_config(&jwks);
    config.limits.check_timeout = Duration::from_millis(200);
    let mut server = TestServer::with_config(config).await;
    server.ready().await;
    let held = jwks.hold().await;
    let reply = server
        .check(
            check("GET", "/profiles/alice")
                .bearer(&unknown_kid_token())
                .build(),
        )
        .await;
    assert_eq!(reply.code(), Code::Unavailable);
    assert_eq!(reply.http_status(), Some(503));
    assert_eq!(reply.body()["error"], "timeout");
    assert_eq!(
        reply.body()["request_id"],
        "5f0c1e52-9c0b-4b8e-8f7e-3d1f2a6b7c8d"
    );
    drop(held);
    still_serving(&mut server).await;
    jwks.stop().await;

    // The caller's gRPC deadline (`grpc-timeout`) shortens a far-off configured bound.
    let jwks = JwksServer::start(&[&key]).await;
    let mut config = waiting_config(&jwks);
    config.limits.check_timeout = Duration::from_secs(30);
    let mut server = TestServer::with_config(config).await;
    server.ready().await;
    let before = metric_value(
        &server.metrics().await,
        "cedargate_decisions_total",
        &[("reason", "timeout")],
    );
    let held = jwks.hold().await;
    let mut request = tonic::Request::new(
        check("GET", "/profiles/alice")
            .bearer(&unknown_kid_token())
            .build(),
    );
    // The client gives up at the same moment, so cedargate's 503 or the client's own
    // cancellation may arrive first; the server-side count below is what proves the point.
    request.set_timeout(Duration::from_millis(200));
    match server.client.check(request).await {
        Ok(reply) => {
            let reply = cedargate::testutil::Reply(reply.into_inner());
            assert_eq!(reply.http_status(), Some(503));
        }
        Err(status) => assert!(
            matches!(status.code(), Code::Cancelled | Code::DeadlineExceeded),
            "{status:?}"
        ),
    }
    // Still holding the key server: without the caller's deadline, the check would still be
    // waiting (for up to 30 s) and no timeout would be counted.
    let deadline = Instant::now() + Duration::from_secs(10);
    while metric_value(
        &server.metrics().await,
        "cedargate_decisions_total",
        &[("reason", "timeout")],
    ) <= before
    {
        assert!(
            Instant::now() < deadline,
            "the caller's deadline was not honoured"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    drop(held);
    still_serving(&mut server).await;
    jwks.stop().await;
}

#[tokio::test]
async fn a_panic_in_a_check_is_a_counted_deny() {
    let mut server = TestServer::start().await;
    let reply = server
        .check(
            check("GET", "/healthz")
                .extension(PANIC_EXTENSION, "1")
                .build(),
        )
        .await;
    assert_eq!(reply.code(), Code::Internal);
    assert_eq!(reply.http_status(), Some(500));
    assert_eq!(reply.body()["error"], "internal");
    assert_eq!(
        reply.body()["request_id"],
        "5f0c1e52-9c0b-4b8e-8f7e-3d1f2a6b7c8d"
    );
    assert!(
        server
            .metrics()
            .await
            .contains("cedargate_check_panics_total"),
        "the panic is counted"
    );
    still_serving(&mut server).await;
}

#[tokio::test]
async fn an_oversized_check_is_refused_and_the_server_goes_on() {
    let mut config = test_config(PolicySource::Embedded);
    config.limits.max_request_bytes = 16 * 1024;
    let mut server = TestServer::with_config(config).await;
    let big = "x".repeat(32 * 1024);
    let refused = server
        .client
        .check(check("GET", "/healthz").header("x-big", &big).build())
        .await
        .expect_err("over max_request_bytes");
    assert_eq!(refused.code(), Code::OutOfRange, "{refused:?}");
    // Just under the limit is served.
    let reply = server
        .check(
            check("GET", "/healthz")
                .header("x-big", &big[..8 * 1024])
                .build(),
        )
        .await;
    assert_eq!(reply.code(), Code::Ok);
    still_serving(&mut server).await;
}

#[tokio::test]
async fn too_many_or_too_large_headers_are_431() {
    let mut config = test_config(PolicySource::Embedded);
    config.limits.max_headers = 20;
    config.limits.max_header_bytes = 4096;
    let mut server = TestServer::with_config(config).await;
    let mut many = check("GET", "/healthz");
    for i in 0..30 {
        many = many.header(&format!("x-h{i}"), "v");
    }
    let reply = server.check(many.build()).await;
    assert_eq!(reply.http_status(), Some(431));
    assert_eq!(reply.body()["error"], "headers_too_large");
    let big = check("GET", "/healthz").header("x-big", &"v".repeat(5000));
    let reply = server.check(big.build()).await;
    assert_eq!(reply.http_status(), Some(431));
    // Within both bounds: decided as usual.
    let reply = server
        .check(
            check("GET", "/healthz")
                .header("x-ok", &"v".repeat(1000))
                .build(),
        )
        .await;
    assert_eq!(reply.code(), Code::Ok);
    still_serving(&mut server).await;
}

#[tokio::test]
async fn shutdown_turns_readiness_off_first_serves_through_the_delay_and_drains() {
    let key = TestKey::generate(Algorithm::ES256, "k");
    let jwks = JwksServer::start(&[&key]).await;
    let mut config = waiting_config(&jwks);
    config.auth.fetch_wait = Duration::from_secs(1);
    config.limits.shutdown_delay = Duration::from_millis(500);
    let server = TestServer::with_config(config).await;
    server.ready().await;
    let readyz = server.admin_url("/readyz");
    // A check in flight: it waits (up to 1 s) for a key-set fetch the held server stalls.
    let (held, in_flight) = check_waiting_on_held_keys(&server, &jwks).await;

    let TestServer { app, client } = server;
    let stopping = tokio::spawn(app.shutdown());
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let status = reqwest::get(&readyz)
            .await
            .map(|r| r.status().as_u16())
            .ok();
        if status == Some(503) {
            break;
        }
        assert!(Instant::now() < deadline, "/readyz still {status:?}");
        tokio::task::yield_now().await;
    }
    assert!(
        !in_flight.is_finished(),
        "readiness turned false while the check was in flight"
    );
    // During limits.shutdown_delay, not ready but still serving new checks.
    let mut late = client.clone();
    let reply = late
        .check(check("GET", "/healthz").build())
        .await
        .expect("still served");
    assert_eq!(reply.into_inner().status.unwrap().code, 0);

    // The in-flight check gets its answer (a deny: its key never arrived), not a reset.
    let answer = in_flight.await.unwrap().expect("answered during the drain");
    assert_eq!(
        cedargate::testutil::Reply(answer.into_inner()).http_status(),
        Some(401)
    );
    stopping
        .await
        .unwrap()
        .expect("clean shutdown within the drain timeout");
    drop((held, client));
    jwks.stop().await;
}
