//! A flood of distinct tokens cannot grow cedargate's memory without bound: 200,000 distinct
//! tokens (180,000 random forgeries, 20,000 validly signed) through the real gRPC server, with
//! the token cache set to 5,000 entries. Both caches stay at their bound, the process RSS grows
//! by less than 96 MiB, nothing is allowed that should not be, and health checks still answer.
//! Alone in its binary, so no other test's memory is counted.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use cedargate::config::PolicySource;
use cedargate::testutil::jwt::{JwksServer, TestKey, b64, claims};
use cedargate::testutil::{Reply, TestServer, check, rss_kib, test_config, test_issuer};
use jsonwebtoken::Algorithm;
use tonic::Code;

const ISS: &str = "https://idp.test";
const CACHE: usize = 5_000;
const FORGED: usize = 180_000;
const SIGNED: usize = 20_000;
const CONCURRENCY: usize = 32;
const RSS_GROWTH_BOUND_KIB: u64 = 96 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_distinct_tokens_keeps_memory_bounded() {
    let key = Arc::new(TestKey::generate(Algorithm::ES256, "k"));
    let jwks = JwksServer::start(&[&key]).await;
    let mut config = test_config(PolicySource::Embedded);
    config.issuers = vec![test_issuer(ISS, &jwks.uri())];
    config.auth.token_cache_entries = CACHE;
    config.limits.max_inflight = 4 * CONCURRENCY;
    let server = TestServer::with_config(config).await;
    server.ready().await;

    // Warm up allocator and connection, then take the baseline.
    let mut client = server.client.clone();
    for _ in 0..100 {
        client
            .check(check("GET", "/healthz").build())
            .await
            .unwrap();
    }
    let before = rss_kib();

    let next = Arc::new(AtomicUsize::new(0));
    let allowed = Arc::new(AtomicUsize::new(0));
    let header = b64(br#"{"alg":"ES256","typ":"JWT","kid":"k"}"#);
    let mut tasks = Vec::new();
    for _ in 0..CONCURRENCY {
        let (mut client, next, allowed, key, header) = (
            server.client.clone(),
            next.clone(),
            allowed.clone(),
            key.clone(),
            header.clone(),
        );
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= FORGED + SIGNED {
                    return;
                }
                let (token, path) = if i < SIGNED {
                    // Distinct valid tokens for alice, each cached after one verification.
                    let mut c = claims(ISS, "orders", "alice");
                    c["jti"] = i.to_string().into();
                    (key.sign(&c), "/profiles/alice")
                } else {
                    // Distinct forgeries: a real header, random claims and signature.
                    let claims = format!(r#"{{"iss":"{ISS}","sub":"admin","n":{i}}}"#);
                    let sig = uuid::Uuid::new_v4();
                    let token = format!(
                        "{header}.{}.{}",
                        b64(claims.as_bytes()),
                        b64(sig.as_bytes())
                    );
                    (token, "/profiles/bob")
                };
                let reply = client
                    .check(check("GET", path).bearer(&token).build())
                    .await
                    .expect("answered");
                let reply = Reply(reply.into_inner());
                if reply.code() == Code::Ok {
                    allowed.fetch_add(1, Ordering::Relaxed);
                } else {
                    assert!(i >= SIGNED, "a valid token was refused: {:?}", reply.body());
                    assert_eq!(reply.http_status(), Some(401), "{:?}", reply.body());
                }
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let after = rss_kib();

    assert_eq!(
        allowed.load(Ordering::Relaxed),
        SIGNED,
        "only the signed tokens are allowed"
    );
    let authn = &server.app.shared.authn;
    // make_room runs before each insert; concurrent inserts may pass the check together.
    let slack = CONCURRENCY;
    assert!(
        authn.cached_tokens() <= CACHE + slack,
        "{}",
        authn.cached_tokens()
    );
    assert!(
        authn.cached_failures() <= CACHE + slack,
        "{}",
        authn.cached_failures()
    );
    assert!(
        after.saturating_sub(before) < RSS_GROWTH_BOUND_KIB,
        "RSS grew from {before} KiB to {after} KiB"
    );
    eprintln!(
        "flood: RSS {before} KiB -> {after} KiB; cached {} tokens, {} failures",
        authn.cached_tokens(),
        authn.cached_failures()
    );
    let health = reqwest::get(server.admin_url("/healthz")).await.unwrap();
    assert_eq!(health.status(), 200);
    jwks.stop().await;
}
