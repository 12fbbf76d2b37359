//! In-process Check latency against policy-set size: the whole tonic handler
//! (`CheckService::check`: protobuf request in, token cache hit, normalisation, route, mapping,
//! sliced Cedar evaluation, CheckResponse out, metrics) timed call by call on generated sets
//! of 10, 100, 1,000 and 10,000 policies. Baseline, measured in the same rounds: a no-op
//! `Authorization` handler called the same way (what the timing and the request clone cost).
//!
//! The token is valid and cached (verified once in the warm-up; the issuer's keys are given
//! inline, so no network). Two request streams: **repeated** (the same request every call:
//! after the first, the token's decision cache answers) and **distinct** (the token reads
//! every item of `svc0` it may read, round-robin, more items than a token's decision cache
//! holds: every call is evaluated by Cedar; the hit count is printed to prove it). No log subscriber is installed unless `CEDARGATE_LATENCY_LOG=1`:
//! without it the decision log costs nothing here (see `benches/load.rs` for the served cost).
//!
//! Run: `cargo bench --bench latency`
//! The Prometheus recorder is installed, as in the server.
//!
//! (`CEDARGATE_LATENCY_CALLS` per measurement, default 50000; `CEDARGATE_LATENCY_ROUNDS`,
//! default 3; `CEDARGATE_BENCH_SIZES`, default `10,100,1000,10000`;
//! `CEDARGATE_BENCH_DECISION_CACHE=0` turns the decision cache off, so that the repeated
//! stream is evaluated every time too.)
//! Prints p50/p99/p99.9 (medians over rounds) and writes every round to
//! `target/bench/latency.csv` (read by `scripts/bench-chart.py`).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use std::io::Write;
use std::sync::Arc;
use std::time::Instant;

use cedargate::config::{JwksSource, Limits};
use cedargate::identity::authn::Authenticator;
use cedargate::policy::store;
use cedargate::server::{CheckService, Shared};
use cedargate::testutil::jwt::TestKey;
use cedargate::testutil::{Reply, policygen, test_issuer};
use envoy_types::pb::envoy::service::auth::v3::CheckRequest;
use envoy_types::pb::envoy::service::auth::v3::authorization_server::Authorization;
use jsonwebtoken::Algorithm;
use serde_json::json;

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let calls: usize = support::setting("CEDARGATE_LATENCY_CALLS", "50000");
    let rounds: usize = support::setting("CEDARGATE_LATENCY_ROUNDS", "3");
    let sizes: Vec<usize> = support::list_setting("CEDARGATE_BENCH_SIZES", "10,100,1000,10000");
    // As in the server: the Prometheus recorder counts every check.
    cedargate::telemetry::prometheus();
    // `CEDARGATE_LATENCY_LOG=1`: also the JSON log subscriber, every allow logged (redirect
    // stderr), to see what the decision log costs.
    let _log = (std::env::var("CEDARGATE_LATENCY_LOG").as_deref() == Ok("1"))
        .then(|| cedargate::telemetry::init_logging(cedargate::config::LogFormat::Json, None));

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let key = TestKey::generate(Algorithm::ES256, "bench");
    let mut issuer = test_issuer(support::ISSUER, "");
    issuer.jwks = JwksSource::Inline(json!({ "keys": [key.jwk] }).to_string());
    let token = key.sign(&support::bench_claims());
    let request = support::bench_request(&token);
    let items: Vec<CheckRequest> = (0..policygen::ITEMS)
        .map(|i| support::bench_request_at(&token, &format!("/svc0/items/item{i}")))
        .collect();

    let services: Vec<(usize, CheckService, Vec<CheckRequest>)> = sizes
        .iter()
        .map(|&size| {
            let dir = tempfile::tempdir().unwrap();
            policygen::write(dir.path(), size).unwrap();
            let rss_before = support::resident_kib();
            let started = Instant::now();
            let snapshot = store::load_dir(dir.path()).unwrap();
            eprintln!(
                "{size:>6} policies: loaded and validated in {:.2} s, resident memory +{} MiB",
                started.elapsed().as_secs_f64(),
                support::resident_kib().saturating_sub(rss_before) / 1024
            );
            let authn = runtime
                .block_on(async { Authenticator::start(vec![issuer.clone()], Default::default()) })
                .unwrap();
            let limits = Limits {
                decision_cache_bytes: support::setting(
                    "CEDARGATE_BENCH_DECISION_CACHE",
                    &Limits::default().decision_cache_bytes.to_string(),
                ),
                ..Limits::default()
            };
            let shared = Shared::new(
                snapshot,
                authn,
                limits,
                Default::default(),
                Default::default(),
            );
            let service = CheckService::new(Arc::new(shared));
            // The items this token may read under this set: the distinct stream.
            let distinct: Vec<CheckRequest> = items
                .iter()
                .filter(|r| {
                    let reply = runtime.block_on(service.check(tonic::Request::new((*r).clone())));
                    Reply(reply.unwrap().into_inner()).code() == tonic::Code::Ok
                })
                .cloned()
                .collect();
            // More than two of a token's fills (64): an item is gone before it comes again.
            assert!(distinct.len() > 128, "{} readable items", distinct.len());
            (size, service, distinct)
        })
        .collect();

    let mut rows = Vec::new();
    let repeated = std::slice::from_ref(&request);
    for round in 0..rounds {
        for (size, service, distinct) in &services {
            let baseline = measure(&runtime, &support::Noop, repeated, calls);
            let ours = measure(&runtime, service, repeated, calls);
            let hits_before = decision_cache_hits();
            let evaluated = measure(&runtime, service, distinct, calls);
            let hits = decision_cache_hits() - hits_before;
            eprintln!(
                "round {round} {size:>6} policies: repeated p50 {:>6.2} µs  p99 {:>6.2} µs  p99.9 {:>6.2} µs | distinct p50 {:>6.2} µs  p99 {:>6.2} µs  p99.9 {:>6.2} µs ({hits} recalled) | no-op: {:.2} / {:.2} / {:.2}",
                ours[0],
                ours[1],
                ours[2],
                evaluated[0],
                evaluated[1],
                evaluated[2],
                baseline[0],
                baseline[1],
                baseline[2]
            );
            rows.push((round, *size, "baseline", baseline));
            rows.push((round, *size, "cedargate", ours));
            rows.push((round, *size, "cedargate_distinct", evaluated));
        }
    }

    let med = |size: usize, server: &str, i: usize| {
        support::median(
            rows.iter()
                .filter(|r| r.1 == size && r.2 == server)
                .map(|r| r.3[i])
                .collect(),
        )
    };
    println!(
        "\nlatency: in-process handler, {calls} calls per measurement, {rounds} rounds, medians"
    );
    println!("| policies | requests | p50 µs | p99 µs | p99.9 µs | no-op p50 µs | no-op p99 µs |");
    println!("|---|---|---|---|---|---|---|");
    for &size in &sizes {
        for (server, label) in [
            ("cedargate", "repeated"),
            ("cedargate_distinct", "distinct"),
        ] {
            println!(
                "| {size} | {label} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} |",
                med(size, server, 0),
                med(size, server, 1),
                med(size, server, 2),
                med(size, "baseline", 0),
                med(size, "baseline", 1),
            );
        }
    }
    if let (Some(&small), Some(&large)) = (sizes.first(), sizes.last()) {
        for (server, label) in [
            ("cedargate", "repeated"),
            ("cedargate_distinct", "distinct"),
        ] {
            println!(
                "{label}: p99 at {large} / p99 at {small}: {:.2}×",
                med(large, server, 1) / med(small, server, 1)
            );
        }
    }

    let path = support::results_dir().join("latency.csv");
    let mut file = std::fs::File::create(&path).unwrap();
    writeln!(file, "round,policies,server,p50_us,p99_us,p999_us").unwrap();
    for (round, size, server, f) in &rows {
        writeln!(
            file,
            "{round},{size},{server},{:.3},{:.3},{:.3}",
            f[0], f[1], f[2]
        )
        .unwrap();
    }
    eprintln!("rounds written to {}", path.display());
}

/// p50, p99, p99.9 in µs of `calls` handler calls, `requests` taken in turn (after a
/// warm-up that also proves every answer is an allow).
fn measure(
    runtime: &tokio::runtime::Runtime,
    service: &impl Authorization,
    requests: &[CheckRequest],
    calls: usize,
) -> [f64; 3] {
    let call = |i: usize| {
        let request = requests[i % requests.len()].clone();
        runtime
            .block_on(service.check(tonic::Request::new(request)))
            .unwrap()
            .into_inner()
    };
    for i in 0..(calls / 10).max(100).max(requests.len()) {
        assert_eq!(
            Reply(call(i)).code(),
            tonic::Code::Ok,
            "the request must be allowed"
        );
    }
    let mut nanos = Vec::with_capacity(calls);
    for i in 0..calls {
        let start = Instant::now();
        std::hint::black_box(call(i));
        nanos.push(start.elapsed().as_nanos() as u64);
    }
    support::percentiles(&mut nanos)
}

/// `cedargate_decision_cache_total{result="hit"}` so far, from the Prometheus recorder.
fn decision_cache_hits() -> u64 {
    let text = cedargate::telemetry::prometheus().render();
    text.lines()
        .filter(|l| l.starts_with("cedargate_decision_cache_total") && l.contains("\"hit\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}
