//! In-process Check latency against policy-set size: the whole tonic handler
//! (`CheckService::check`: protobuf request in, token cache hit, normalisation, route, mapping,
//! sliced Cedar evaluation, CheckResponse out, metrics) timed call by call on generated sets
//! of 10, 100, 1,000 and 10,000 policies. Baseline, measured in the same rounds: a no-op
//! `Authorization` handler called the same way (what the timing and the request clone cost).
//!
//! The token is valid and cached (verified once in the warm-up; the issuer's keys are given
//! inline, so no network). No log subscriber is installed unless `CEDARGATE_LATENCY_LOG=1`:
//! without it the decision log costs nothing here (see `benches/load.rs` for the served cost).
//!
//! Run: `cargo bench --bench latency`
//! The Prometheus recorder is installed, as in the server.
//!
//! (`CEDARGATE_LATENCY_CALLS` per measurement, default 50000; `CEDARGATE_LATENCY_ROUNDS`,
//! default 3; `CEDARGATE_BENCH_SIZES`, default `10,100,1000,10000`.)
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

    let services: Vec<(usize, CheckService)> = sizes
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
            let shared = Shared::new(
                snapshot,
                authn,
                Limits::default(),
                Default::default(),
                Default::default(),
            );
            (size, CheckService::new(Arc::new(shared)))
        })
        .collect();

    let mut rows = Vec::new();
    for round in 0..rounds {
        for (size, service) in &services {
            let baseline = measure(&runtime, &support::Noop, &request, calls);
            let ours = measure(&runtime, service, &request, calls);
            eprintln!(
                "round {round} {size:>6} policies: p50 {:>6.2} µs  p99 {:>6.2} µs  p99.9 {:>6.2} µs   (no-op: {:.2} / {:.2} / {:.2})",
                ours[0], ours[1], ours[2], baseline[0], baseline[1], baseline[2]
            );
            rows.push((round, *size, "baseline", baseline));
            rows.push((round, *size, "cedargate", ours));
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
    println!("| policies | p50 µs | p99 µs | p99.9 µs | no-op p50 µs | no-op p99 µs |");
    println!("|---|---|---|---|---|---|");
    for &size in &sizes {
        println!(
            "| {size} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} |",
            med(size, "cedargate", 0),
            med(size, "cedargate", 1),
            med(size, "cedargate", 2),
            med(size, "baseline", 0),
            med(size, "baseline", 1),
        );
    }
    if let (Some(&small), Some(&large)) = (sizes.first(), sizes.last()) {
        println!(
            "p99 at {large} / p99 at {small}: {:.2}×",
            med(large, "cedargate", 1) / med(small, "cedargate", 1)
        );
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

/// p50, p99, p99.9 in µs of `calls` handler calls (after a warm-up that also proves the
/// answer is an allow).
fn measure(
    runtime: &tokio::runtime::Runtime,
    service: &impl Authorization,
    request: &CheckRequest,
    calls: usize,
) -> [f64; 3] {
    let call = || {
        runtime
            .block_on(service.check(tonic::Request::new(request.clone())))
            .unwrap()
            .into_inner()
    };
    for _ in 0..(calls / 10).max(100) {
        assert_eq!(
            Reply(call()).code(),
            tonic::Code::Ok,
            "the request must be allowed"
        );
    }
    let mut nanos = Vec::with_capacity(calls);
    for _ in 0..calls {
        let start = Instant::now();
        std::hint::black_box(call());
        nanos.push(start.elapsed().as_nanos() as u64);
    }
    support::percentiles(&mut nanos)
}
