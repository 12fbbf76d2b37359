//! In-process cost of one Check on the example policy set, without the network:
//! `check_handler` is the whole tonic handler (protobuf in, decision, protobuf out, metrics);
//! `decide` is protobuf → typed request plus the decision core (`decide::evaluate`: route,
//! identity rules, Cedar request, evaluation); `evaluate` is the decision core alone on an
//! already-normalised request; `cedar_only` is the baseline measured in the same run: Cedar's
//! `is_authorized` on the already-built request.
//!
//! Run: `cargo bench --bench check`
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::hint::black_box;
use std::sync::Arc;

use cedargate::app::load_policies;
use cedargate::config::{Limits, PolicySource};
use cedargate::decide;
use cedargate::identity::Presented;
use cedargate::identity::authn::Authenticator;
use cedargate::policy::engine;
use cedargate::server::check::prepare;
use cedargate::server::{CheckService, Shared, envoy};
use cedargate::testutil::{CHECKOUT, Reply, check};
use criterion::{Criterion, criterion_group, criterion_main};
use envoy_types::pb::envoy::service::auth::v3::authorization_server::Authorization;

fn bench(c: &mut Criterion) {
    let snapshot = load_policies(&PolicySource::Embedded).unwrap();
    let limits = Limits::default();
    let request = check("POST", "/orders").peer(CHECKOUT).build();

    let now = 1_700_000_000;
    let prepared = prepare(
        &limits,
        &Default::default(),
        envoy::input(request.clone()),
        now,
    )
    .unwrap();
    let presented = Presented::peer_only(prepared.peer.clone());

    // Baseline: Cedar alone on the request cedargate builds.
    let (evaluation, call) = decide::explain(&snapshot, &prepared.request, &presented, now);
    assert!(evaluation.is_allow(), "{evaluation:?}");
    let call = call.unwrap();
    assert!(matches!(
        engine::evaluate(&snapshot, &call),
        engine::Verdict::Allow { .. }
    ));
    c.bench_function("cedar_only/allow", |b| {
        b.iter(|| engine::evaluate(&snapshot, black_box(&call)))
    });

    c.bench_function("evaluate/allow", |b| {
        b.iter(|| decide::evaluate(&snapshot, black_box(&prepared.request), &presented, now))
    });

    // The benchmarks measure the allow path: make sure that is what they run.
    let run = |request| {
        let prepared = prepare(&limits, &Default::default(), envoy::input(request), now).unwrap();
        let presented = Presented::peer_only(prepared.peer);
        decide::evaluate(&snapshot, &prepared.request, &presented, now)
    };
    assert!(run(request.clone()).is_allow());
    c.bench_function("decide/allow", |b| {
        b.iter(|| run(black_box(request.clone())))
    });

    // Timers on: the handler bounds every check with a deadline.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let authn = runtime
        .block_on(async { Authenticator::start(Vec::new(), Default::default()) })
        .unwrap();
    let shared = Arc::new(Shared::new(
        snapshot,
        authn,
        limits,
        Default::default(),
        Default::default(),
    ));
    let service = CheckService::new(shared);
    let reply = runtime
        .block_on(service.check(tonic::Request::new(request.clone())))
        .unwrap()
        .into_inner();
    assert_eq!(Reply(reply).code(), tonic::Code::Ok);
    c.bench_function("check_handler/allow", |b| {
        b.to_async(&runtime).iter(|| async {
            service
                .check(tonic::Request::new(black_box(request.clone())))
                .await
                .unwrap()
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
