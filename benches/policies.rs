//! Cost against policy-set size: generated sets of 10, 100, 1,000 and 10,000 policies
//! (`testutil::policygen`: users in nested groups, services, owned and classified items,
//! conditions on headers, owners and scopes, forbids, three global guardrails).
//!
//! - `cedar_full/N`: Cedar's `is_authorized` over the whole set (the baseline, same run);
//! - `cedar_sliced/N`: the same request on the slice cedargate evaluates;
//! - `normalise_map/N`: protobuf → typed input, normalisation, route, Cedar request and
//!   entity store (no evaluation);
//! - `decide/N`: cedargate's whole decision pipeline (normalise, route, map, evaluate).
//!
//! The request: user u0 (token, group g0) reads `/svc0/items/item0`, allowed by `p0`.
//! Run: `cargo bench --bench policies`
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::hint::black_box;
use std::sync::Arc;

use cedargate::config::Limits;
use cedargate::identity::{Identity, VerifiedToken};
use cedargate::policy::engine::{self, Verdict};
use cedargate::policy::{Snapshot, mapping, store};
use cedargate::server::check::{decide, prepare};
use cedargate::server::envoy;
use cedargate::testutil::{check, policygen};
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};

pub const SIZES: [usize; 4] = [10, 100, 1_000, 10_000];

/// The set sizes to run: `CEDARGATE_BENCH_SIZES=100,1000` narrows them (profiling).
fn sizes() -> Vec<usize> {
    std::env::var("CEDARGATE_BENCH_SIZES").map_or_else(
        |_| SIZES.to_vec(),
        |list| {
            list.split(',')
                .filter_map(|s| s.trim().parse().ok())
                .collect()
        },
    )
}

fn token() -> Arc<VerifiedToken> {
    Arc::new(VerifiedToken {
        issuer: "https://idp.test".into(),
        subject: "u0".into(),
        principal_type: "User".into(),
        audience: vec!["orders".into()],
        scopes: Vec::new(),
        groups: vec!["g0".into()],
        expires_at: i64::MAX,
        issued_at: None,
        claims: Default::default(),
        cnf_x5t_s256: None,
        require_cert_binding: false,
    })
}

fn snapshot(policies: usize) -> Snapshot {
    let dir = tempfile::tempdir().unwrap();
    policygen::write(dir.path(), policies).unwrap();
    store::load_dir(dir.path()).unwrap()
}

fn bench(c: &mut Criterion) {
    let request = check("GET", "/svc0/items/item0")
        .header("x-tenant", "t0")
        .build();
    let limits = Limits::default();
    let mut group = c.benchmark_group("policies");
    for size in sizes() {
        let snapshot = snapshot(size);
        let prepared =
            prepare(&limits, &Default::default(), envoy::input(request.clone())).unwrap();
        let route = snapshot
            .routes
            .find(&prepared.http.method, &prepared.http.path);
        let identity = Identity {
            peer: prepared.peer.clone(),
            token: Some(token()),
        };
        let call = mapping::map(
            &snapshot,
            &prepared.http,
            route,
            &identity,
            &prepared.extensions,
        )
        .unwrap();
        assert!(matches!(
            engine::evaluate(&snapshot, &call),
            Verdict::Allow { .. }
        ));
        assert_eq!(
            engine::evaluate(&snapshot, &call),
            engine::evaluate_full(&snapshot, &call)
        );
        group.bench_with_input(BenchmarkId::new("cedar_full", size), &call, |b, call| {
            b.iter(|| engine::evaluate_full(&snapshot, black_box(call)))
        });
        group.bench_with_input(BenchmarkId::new("cedar_sliced", size), &call, |b, call| {
            b.iter(|| engine::evaluate(&snapshot, black_box(call)))
        });
        // Normalisation + Cedar mapping alone (what `decide` adds to the evaluation).
        let map = |request| {
            let prepared = prepare(&limits, &Default::default(), envoy::input(request)).unwrap();
            let route = snapshot
                .routes
                .find(&prepared.http.method, &prepared.http.path);
            mapping::map(
                &snapshot,
                &prepared.http,
                route,
                &identity,
                &prepared.extensions,
            )
            .unwrap()
        };
        group.bench_function(BenchmarkId::new("normalise_map", size), |b| {
            b.iter(|| map(black_box(request.clone())))
        });
        let run = |request| {
            let prepared = prepare(&limits, &Default::default(), envoy::input(request)).unwrap();
            decide(&snapshot, prepared, Ok(Some(token())), true)
        };
        assert!(run(request.clone()).is_allow());
        group.bench_function(BenchmarkId::new("decide", size), |b| {
            b.iter(|| run(black_box(request.clone())))
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
