//! Fault behaviour, all fail closed: a key server that answers 500, garbage or a 50 MB body, or
//! hangs; clock skew around the leeway. Each time cedargate keeps its last good keys, refuses
//! what it cannot verify with a 401, counts the failed fetch, and still answers health checks;
//! when the key server recovers, so does cedargate.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::time::Duration;

use cedargate::config::PolicySource;
use cedargate::testutil::jwt::{JwksServer, TestKey, claims, now};
use cedargate::testutil::{TestServer, check, metric_value, test_config, test_issuer};
use jsonwebtoken::{Algorithm, Header};
use serde_json::json;
use tonic::Code;

async fn server_for(iss: &str, jwks: &JwksServer) -> TestServer {
    let mut config = test_config(PolicySource::Embedded);
    config.issuers = vec![test_issuer(iss, &jwks.uri())];
    // Every unknown kid may trigger a fetch: each fault below is fetched at once.
    config.auth.unknown_kid_refetch = Duration::from_millis(1);
    config.auth.fetch_wait = Duration::from_millis(500);
    config.auth.max_jwks_bytes = 1024 * 1024;
    let server = TestServer::with_config(config).await;
    server.ready().await;
    server
}

/// The answer to a token signed by `key` but naming a `kid` the server has not seen.
async fn with_new_kid(
    server: &mut TestServer,
    key: &TestKey,
    iss: &str,
    kid: &str,
) -> (Code, String) {
    let header = Header {
        kid: Some(kid.into()),
        ..Header::new(key.alg)
    };
    let token = key.sign_with(header, &claims(iss, "orders", "alice"));
    let reply = server
        .check(check("GET", "/profiles/alice").bearer(&token).build())
        .await;
    let error = reply.body()["error"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    (reply.code(), error)
}

async fn health_answers(server: &TestServer) {
    let health = reqwest::get(server.admin_url("/healthz")).await.unwrap();
    assert_eq!(health.status(), 200);
}

/// An issuer, what its key server answers instead of keys, and how much padding it adds.
type Fault<'a> = (&'a str, Option<(u16, &'a str)>, usize);

#[tokio::test]
async fn a_broken_key_server_keeps_the_last_good_keys() {
    let huge = "x".repeat(50 * 1024 * 1024);
    let faults: [Fault<'_>; 4] = [
        ("https://idp-500.test", Some((500, "internal error")), 0),
        (
            "https://idp-garbage.test",
            Some((200, "<html>not a key set")),
            0,
        ),
        (
            "https://idp-nokeys.test",
            Some((200, r#"{"keys": "none"}"#)),
            0,
        ),
        ("https://idp-50mb.test", None, huge.len()),
    ];
    for (iss, failure, padding) in faults {
        let key = TestKey::generate(Algorithm::ES256, "good");
        let jwks = JwksServer::start(&[&key]).await;
        let mut server = server_for(iss, &jwks).await;
        let known = key.sign(&claims(iss, "orders", "alice"));

        jwks.fail_with(failure);
        jwks.pad(padding);
        let before = metric_value(
            &server.metrics().await,
            "cedargate_jwks_fetches_total",
            &[("issuer", iss), ("result", "error")],
        );
        let (code, error) = with_new_kid(&mut server, &key, iss, "rotated").await;
        assert_eq!(
            (code, error.as_str()),
            (Code::Unauthenticated, "unknown_kid"),
            "{iss}"
        );
        // At least this fetch failed (the background refresh may have retried meanwhile).
        assert!(
            metric_value(
                &server.metrics().await,
                "cedargate_jwks_fetches_total",
                &[("issuer", iss), ("result", "error")]
            ) >= before + 1.0,
            "{iss}"
        );
        // The last good keys still verify.
        let reply = server
            .check(check("GET", "/profiles/alice").bearer(&known).build())
            .await;
        assert_eq!(reply.code(), Code::Ok, "{iss}");
        health_answers(&server).await;

        // The key server recovers and publishes a new key: it is found on first use.
        jwks.fail_with(None);
        jwks.pad(0);
        let next = TestKey::generate(Algorithm::ES256, "next");
        jwks.set_keys(&[&key, &next]);
        let token = next.sign(&claims(iss, "orders", "alice"));
        let reply = server
            .check(check("GET", "/profiles/alice").bearer(&token).build())
            .await;
        assert_eq!(reply.code(), Code::Ok, "{iss} after recovery");
        jwks.stop().await;
    }
}

#[tokio::test]
async fn a_hanging_key_server_delays_no_check_beyond_fetch_wait() {
    const ISS: &str = "https://idp-hang.test";
    let key = TestKey::generate(Algorithm::ES256, "good");
    let jwks = JwksServer::start(&[&key]).await;
    let mut server = server_for(ISS, &jwks).await;
    let held = jwks.hold().await;
    let started = std::time::Instant::now();
    let (code, error) = with_new_kid(&mut server, &key, ISS, "rotated").await;
    assert_eq!(
        (code, error.as_str()),
        (Code::Unauthenticated, "unknown_kid")
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    let known = key.sign(&claims(ISS, "orders", "alice"));
    let reply = server
        .check(check("GET", "/profiles/alice").bearer(&known).build())
        .await;
    assert_eq!(reply.code(), Code::Ok);
    health_answers(&server).await;
    drop(held);
    jwks.stop().await;
}

#[tokio::test]
async fn clock_skew_is_tolerated_within_the_leeway_only() {
    const ISS: &str = "https://idp-skew.test";
    let key = TestKey::generate(Algorithm::ES256, "k");
    let jwks = JwksServer::start(&[&key]).await;
    let mut server = server_for(ISS, &jwks).await;
    let t = now();
    // The default leeway is 5 s; `expected` is None for an allow, else the 401 reason.
    let cases = [
        ("exp 2 s ago", json!({"iat": t - 60, "exp": t - 2}), None),
        (
            "exp 60 s ago",
            json!({"iat": t - 120, "exp": t - 60}),
            Some("token_expired"),
        ),
        ("iat 2 s ahead", json!({"iat": t + 2, "exp": t + 300}), None),
        (
            "iat 60 s ahead",
            json!({"iat": t + 60, "exp": t + 300}),
            Some("token_issued_in_future"),
        ),
        (
            "nbf 2 s ahead",
            json!({"iat": t, "nbf": t + 2, "exp": t + 300}),
            None,
        ),
        (
            "nbf 60 s ahead",
            json!({"iat": t, "nbf": t + 60, "exp": t + 300}),
            Some("token_not_yet_valid"),
        ),
    ];
    for (what, times, expected) in cases {
        let mut c = claims(ISS, "orders", "alice");
        for (k, v) in times.as_object().unwrap() {
            c[k] = v.clone();
        }
        let reply = server
            .check(
                check("GET", "/profiles/alice")
                    .bearer(&key.sign(&c))
                    .build(),
            )
            .await;
        match expected {
            None => assert_eq!(reply.code(), Code::Ok, "{what}: {:?}", reply.body()),
            Some(reason) => {
                assert_eq!(reply.http_status(), Some(401), "{what}");
                assert_eq!(reply.body()["error"], reason, "{what}");
            }
        }
    }
    jwks.stop().await;
}
