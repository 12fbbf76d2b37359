//! The token cache's eviction policy under a flood: a working set of tokens in use (checked
//! every round) beside a stream of tokens seen once (a scanner, a bot, a flood of fresh
//! logins), through the real Authenticator with a cache smaller than the flood. Counts how
//! often a token in use had to be verified again (a signature check, ~50 µs for ES256) because
//! the flood pushed it out: a count, not a time, so it is stable on a noisy machine.
//!
//! Run: `cargo bench --bench token_cache` (env `CEDARGATE_FLOOD_ROUNDS`, default 40).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::time::Instant;

use cedargate::config::{AuthSettings, JwksSource};
use cedargate::identity::authn::Authenticator;
use cedargate::request::HttpRequest;
use cedargate::testutil::jwt::{TestKey, claims, now};
use cedargate::testutil::test_issuer;
use jsonwebtoken::Algorithm;
use serde_json::json;

const ISS: &str = "https://idp.bench";
const CAPACITY: usize = 1_000;
const HOT: usize = 200;
const ONCE_PER_ROUND: usize = 500;

fn request(token: &str) -> HttpRequest {
    HttpRequest {
        method: "GET".into(),
        host: "shop.example".into(),
        path: "/profiles/alice".into(),
        scheme: "https".into(),
        protocol: "HTTP/1.1".into(),
        query: Default::default(),
        headers: [("authorization".to_owned(), format!("Bearer {token}"))].into(),
        request_id: "bench".into(),
    }
}

fn main() {
    let rounds: usize = std::env::var("CEDARGATE_FLOOD_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(40);
    let key = TestKey::generate(Algorithm::ES256, "k");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("jwks.json");
    std::fs::write(&file, json!({ "keys": [key.jwk] }).to_string()).unwrap();
    let mut issuer = test_issuer(ISS, "http://127.0.0.1:1/unused");
    issuer.jwks = JwksSource::File(file);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let settings = AuthSettings {
        token_cache_entries: CAPACITY,
        ..AuthSettings::default()
    };
    let authn = runtime
        .block_on(async { Authenticator::start(vec![issuer], settings) })
        .unwrap();
    let sign = |sub: String| request(&key.sign(&claims(ISS, "orders", &sub)));
    let hot: Vec<HttpRequest> = (0..HOT).map(|i| sign(format!("hot-{i}"))).collect();
    let once: Vec<HttpRequest> = (0..rounds * ONCE_PER_ROUND)
        .map(|i| sign(format!("once-{i}")))
        .collect();
    let check = |http: &HttpRequest| {
        assert!(
            runtime
                .block_on(authn.authenticate(http, now()))
                .unwrap()
                .is_some()
        );
    };
    // Warm: the working set is in the cache before the flood starts.
    for _ in 0..3 {
        hot.iter().for_each(check);
    }
    let before = authn.verifications();
    let started = Instant::now();
    let mut hot_checks = 0;
    for round in once.chunks(ONCE_PER_ROUND) {
        for (i, flood) in round.iter().enumerate() {
            check(flood);
            // The working set is checked as often as the flood arrives.
            if i % (ONCE_PER_ROUND / HOT).max(1) == 0 {
                let hot_one = &hot[(i / (ONCE_PER_ROUND / HOT).max(1)) % HOT];
                check(hot_one);
                hot_checks += 1;
            }
        }
    }
    let elapsed = started.elapsed();
    let verified = authn.verifications() - before;
    let hot_verified = verified - once.len() as u64;
    println!(
        "token cache {CAPACITY} entries, {HOT} tokens in use, {rounds} rounds of {ONCE_PER_ROUND} tokens seen once:"
    );
    println!(
        "  tokens in use verified again: {hot_verified} of {hot_checks} checks ({:.1} %)",
        100.0 * hot_verified as f64 / hot_checks as f64
    );
    println!(
        "  {} checks in {:.2} s ({:.1} µs per check, signatures included)",
        once.len() + hot_checks,
        elapsed.as_secs_f64(),
        elapsed.as_secs_f64() * 1e6 / (once.len() + hot_checks) as f64
    );
}
