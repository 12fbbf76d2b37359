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

    let http = cedargate::request::normalise(
        envoy::input(request.clone()).http.unwrap(),
        limits.max_path_bytes,
    )
    .unwrap();
    let identity = cedargate::identity::Identity {
        peer: envoy::input(request.clone()).peer,
    };
    let call =
        cedargate::policy::mapping::map(&snapshot, &http, &identity, &Default::default()).unwrap();
    assert!(matches!(
        cedargate::policy::engine::evaluate(&snapshot, &call),
        cedargate::policy::engine::Verdict::Allow { .. }
    ));
    c.bench_function("cedar_only/allow", |b| {
        b.iter(|| cedargate::policy::engine::evaluate(&snapshot, black_box(&call)))
    });

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
