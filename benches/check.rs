//! In-process cost of one Check on the example policy set, without the network:
//! `check_handler` is the whole tonic handler (protobuf in, decision, protobuf out, metrics);
//! `decide` is the decision pipeline alone (normalise, map, evaluate).
//!
//! Run: `cargo bench --bench check`
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::hint::black_box;
use std::sync::Arc;

use cedargate::app::load_policies;
use cedargate::config::{Limits, PolicySource};
use cedargate::server::envoy;
use cedargate::server::{CheckService, Shared, check::decide};
use cedargate::testutil::{CHECKOUT, Reply, check};
use criterion::{Criterion, criterion_group, criterion_main};
use envoy_types::pb::envoy::service::auth::v3::authorization_server::Authorization;

fn bench(c: &mut Criterion) {
    let snapshot = load_policies(&PolicySource::Embedded).unwrap();
    let limits = Limits::default();
    let request = check("POST", "/orders").peer(CHECKOUT).build();

    // The benchmark measures the allow path: make sure that is what it runs.
    let decision = decide(&snapshot, &limits, envoy::input(request.clone()));
    assert!(decision.is_allow(), "{decision:?}");

    c.bench_function("decide/allow", |b| {
        b.iter(|| decide(&snapshot, &limits, envoy::input(black_box(request.clone()))))
    });

    let shared = Arc::new(Shared::new(snapshot, limits));
    let service = CheckService::new(shared);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
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
