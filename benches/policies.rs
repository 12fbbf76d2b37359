//! Cost against policy-set size: generated sets of 10, 100, 1,000 and 10,000 policies
//! (`testutil::policygen`: users in nested groups, services, owned and classified items,
//! conditions on headers, owners and scopes, forbids, three global guardrails).
//!
//! - `cedar_full/N`: Cedar's `is_authorized` over the whole set (the baseline, same run);
//! - `cedar_sliced/N`: the same request on the slice cedargate evaluates;
//! - `evaluate/N`: the decision core (`decide::evaluate`) on a normalised request: route,
//!   identity rules, Cedar request and entity store, sliced evaluation;
//! - `decide/N`: protobuf → typed request, normalisation, then the decision core.
//!
//! The request: user u0 (token, group g0) reads `/svc0/items/item0`, allowed by `p0`.
//! Run: `cargo bench --bench policies`
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::hint::black_box;
use std::sync::Arc;

use cedargate::config::Limits;
use cedargate::decide;
use cedargate::identity::Presented;
use cedargate::policy::engine::{self, Verdict};
use cedargate::policy::{Snapshot, store};
use cedargate::server::check::prepare;
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
        let now = 1_700_000_000;
        let prepared = prepare(
            &limits,
            &Default::default(),
            envoy::input(request.clone()),
            now,
        )
        .unwrap();
        let presented = Presented {
            peer: Arc::new(prepared.peer.clone()),
            peer_refused: prepared.peer_refused.clone(),
            token: Ok(Some(policygen::token(0))),
            token_required_by_default: true,
        };
        let (evaluation, call) = decide::explain(&snapshot, &prepared.request, &presented, now);
        assert!(evaluation.is_allow(), "{evaluation:?}");
        let call = call.unwrap();
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
        group.bench_function(BenchmarkId::new("evaluate", size), |b| {
            b.iter(|| decide::evaluate(&snapshot, black_box(&prepared.request), &presented, now))
        });
        // One token, as the token cache hands it out: the same `Arc` every time.
        let token = policygen::token(0);
        let run = |request| {
            let prepared =
                prepare(&limits, &Default::default(), envoy::input(request), now).unwrap();
            let presented = Presented {
                peer: Arc::new(prepared.peer),
                peer_refused: prepared.peer_refused.clone(),
                token: Ok(Some(token.clone())),
                token_required_by_default: true,
            };
            decide::evaluate(&snapshot, &prepared.request, &presented, now)
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
