//! Overload soak: for five seconds, 64 concurrent callers push a server capped at 8 checks in
//! flight, while its key server hangs so that checks naming an unknown key pile up. Load above the cap is shed with UNAVAILABLE at once, health checks keep answering
//! within a second throughout, RSS grows by less than 64 MiB, and no request is allowed unless
//! it carries a valid token for a permitted path. Alone in its binary (RSS is per process).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use cedargate::config::PolicySource;
use cedargate::testutil::jwt::{JwksServer, TestKey, claims};
use cedargate::testutil::{Reply, TestServer, check, rss_kib, test_config, test_issuer};
use jsonwebtoken::Algorithm;
use tonic::Code;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

const ISS: &str = "https://idp.test";
const CALLERS: usize = 64;
const CAP: usize = 8;
const SOAK: Duration = Duration::from_secs(5);
const RSS_GROWTH_BOUND_KIB: u64 = 64 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overload_is_shed_while_health_and_decisions_hold() {
    let key = TestKey::generate(Algorithm::ES256, "k");
    let jwks = JwksServer::start(&[&key]).await;
    let mut config = test_config(PolicySource::Embedded);
    config.issuers = vec![test_issuer(ISS, &jwks.uri())];
    config.limits.max_inflight = CAP;
    config.auth.fetch_wait = Duration::from_millis(300);
    config.auth.unknown_kid_refetch = Duration::from_millis(1);
    let server = TestServer::with_config(config).await;
    server.ready().await;
    let valid = Arc::new(key.sign(&claims(ISS, "orders", "alice")));
    // A key server that hangs: checks naming an unknown kid wait for it (up to fetch_wait),
    // so they pile up in flight like checks behind a slow dependency.
    let held = jwks.hold().await;
    let stranger = Arc::new(key.sign_with(
        jsonwebtoken::Header {
            kid: Some("unpublished".into()),
            ..jsonwebtoken::Header::new(Algorithm::ES256)
        },
        &claims(ISS, "orders", "alice"),
    ));
    let before = rss_kib();

    let stop = Arc::new(AtomicBool::new(false));
    let (allowed, shed, denied) = (
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicUsize::new(0)),
    );
    let mut callers = Vec::new();
    for n in 0..CALLERS {
        let channel = server.channel().await;
        let (stop, allowed, shed, denied, valid, stranger) = (
            stop.clone(),
            allowed.clone(),
            shed.clone(),
            denied.clone(),
            valid.clone(),
            stranger.clone(),
        );
        callers.push(tokio::spawn(async move {
            let mut client = envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient::new(channel);
            let mut i = 0usize;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                // Valid for a permitted path, forged, anonymous, or waiting on the key server.
                let (request, may_allow) = match (n + i) % 4 {
                    3 => (check("GET", "/profiles/alice").bearer(&stranger).build(), false),
                    0 => (check("GET", "/profiles/alice").bearer(&valid).build(), true),
                    1 => (
                        check("GET", "/profiles/alice")
                            .bearer(&format!("{}x", &valid[..valid.len() - 1]))
                            .build(),
                        false,
                    ),
                    _ => (check("GET", "/orders").build(), false),
                };
                match client.check(request).await {
                    Ok(reply) => {
                        let reply = Reply(reply.into_inner());
                        if reply.code() == Code::Ok {
                            assert!(may_allow, "allowed without a valid decision");
                            allowed.fetch_add(1, Ordering::Relaxed);
                        } else if reply.body()["error"] == "overloaded" {
                            // Shed with a denied answer, never a gRPC error.
                            assert_eq!(reply.http_status(), Some(503));
                            shed.fetch_add(1, Ordering::Relaxed);
                        } else {
                            denied.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Err(status) => panic!("a check failed instead of being answered: {status:?}"),
                }
            }
        }));
    }

    // Health, sampled through the soak on connections of its own.
    let mut health = HealthClient::new(server.channel().await);
    let started = Instant::now();
    let mut probes = 0;
    while started.elapsed() < SOAK {
        let probe = Instant::now();
        let status = tokio::time::timeout(
            Duration::from_secs(2),
            health.check(HealthCheckRequest {
                service: String::new(),
            }),
        )
        .await
        .expect("gRPC health answers within 2 s under overload")
        .expect("health answers")
        .into_inner()
        .status;
        assert_eq!(status, 1, "SERVING");
        let admin = tokio::time::timeout(
            Duration::from_secs(2),
            reqwest::get(server.admin_url("/healthz")),
        )
        .await
        .expect("/healthz answers within 2 s under overload")
        .unwrap();
        assert_eq!(admin.status(), 200);
        probes += 1;
        tokio::time::sleep(Duration::from_millis(100).saturating_sub(probe.elapsed())).await;
    }
    stop.store(true, Ordering::Relaxed);
    for caller in callers {
        caller.await.unwrap();
    }
    drop(held);
    let after = rss_kib();
    let (allowed, shed, denied) = (
        allowed.load(Ordering::Relaxed),
        shed.load(Ordering::Relaxed),
        denied.load(Ordering::Relaxed),
    );
    eprintln!(
        "soak: {probes} health probes; {allowed} allowed, {denied} denied, {shed} shed; RSS {before} -> {after} KiB"
    );
    assert!(shed > 0, "the load exceeded the in-flight cap");
    assert!(
        allowed > 0 && denied > 0,
        "checks were still decided under overload"
    );
    assert!(probes >= 10, "{probes} health probes");
    assert!(
        after.saturating_sub(before) < RSS_GROWTH_BOUND_KIB,
        "RSS grew from {before} KiB to {after} KiB"
    );
    jwks.stop().await;
}
