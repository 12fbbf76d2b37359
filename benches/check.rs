//! In-process cost of one Check on the example policy set, without the network:
//! `check_handler` is the whole tonic handler (protobuf in, decision, protobuf out, metrics);
//! `decide` is the decision pipeline alone (normalise, map, evaluate); `cedar_only` is the
//! baseline measured in the same run: Cedar's `is_authorized` on the already-built request.
//!
//! Run: `cargo bench --bench check`
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::hint::black_box;
use std::sync::Arc;

use cedargate::app::load_policies;
use cedargate::config::{Limits, PolicySource};
use cedargate::identity::Identity;
use cedargate::identity::authn::Authenticator;
use cedargate::policy::{engine, mapping};
use cedargate::server::check::{decide, prepare};
use cedargate::server::{CheckService, Shared, envoy};
use cedargate::testutil::{CHECKOUT, Reply, check};
use criterion::{Criterion, criterion_group, criterion_main};
use envoy_types::pb::envoy::service::auth::v3::authorization_server::Authorization;

fn bench(c: &mut Criterion) {
    let snapshot = load_policies(&PolicySource::Embedded).unwrap();
    let limits = Limits::default();
    let request = check("POST", "/orders").peer(CHECKOUT).build();

    // Baseline: Cedar alone on the request cedargate builds.
    let prepared = prepare(&limits, &Default::default(), envoy::input(request.clone())).unwrap();
    let route = snapshot
        .routes
        .find(&prepared.http.method, &prepared.http.path);
    let identity = Identity {
        peer: prepared.peer.clone(),
        token: None,
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
        engine::Verdict::Allow { .. }
    ));
    c.bench_function("cedar_only/allow", |b| {
        b.iter(|| engine::evaluate(&snapshot, black_box(&call)))
    });

    // The benchmarks measure the allow path: make sure that is what they run.
    let run = |request| {
        let prepared = prepare(&limits, &Default::default(), envoy::input(request)).unwrap();
        decide(&snapshot, prepared, Ok(None), false)
    };
    let decision = run(request.clone());
    assert!(decision.is_allow(), "{decision:?}");
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
