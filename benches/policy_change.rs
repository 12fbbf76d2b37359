//! Safe policy change: what a candidate (shadow) set costs a check, and how fast recorded
//! checks are decided again. Every figure has its baseline in the same run.
//!
//! - `shadow_handler/{off,on}`: the in-process Check handler (protobuf in, decision, protobuf
//!   out, metrics) on the example set, a workload's `POST /orders` (no token: every check
//!   runs Cedar), without and with a candidate set (the example set plus one forbid) decided
//!   beside it on every check (`sample: 1.0`): `on_other_slice`, a change to another slice
//!   (the candidate is known to decide alike and is not evaluated), and `on_same_slice`, a
//!   change to this check's slice (the candidate's policies are evaluated on the live set's
//!   Cedar call, which it would build the same, off the check's path, on the blocking pool;
//!   the bench waits for it after each check, so that every check is
//!   shadowed and the time includes the hand-over). Their CPU is best read in instructions
//!   (callgrind: the handler's plus the candidate evaluation's, per check).
//! - `shadow_token/{off,on}`: protobuf → normalised request → `decide::evaluate` on the
//!   100-policy generated set with a token (its decision cache answers after the first
//!   check), without and with the candidate's evaluation (the same set plus one forbid).
//! - `replay/records`: 1,000 records of checks on the 100-policy generated set (100 users
//!   with tokens, 5 services, 200 items; allows and denies), each parsed from its JSON line
//!   and decided again ([`cedargate::record::replay::Replay`]); throughput in records/s.
//!
//! Run: `cargo bench --bench policy_change`
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::hint::black_box;
use std::sync::Arc;

use cedargate::app::load_policies;
use cedargate::config::{Limits, PolicySource};
use cedargate::decide;
use cedargate::identity::Presented;
use cedargate::identity::authn::Authenticator;
use cedargate::policy::{Snapshot, store};
use cedargate::record::replay::Replay;
use cedargate::record::{Decided, Record, Redaction};
use cedargate::server::check::{CheckOptions, prepare};
use cedargate::server::{CheckService, Shared, envoy};
use cedargate::testutil::{CHECKOUT, Reply, check, policygen};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use envoy_types::pb::envoy::service::auth::v3::authorization_server::Authorization;

const NOW: i64 = 1_700_000_000;
const EXTRA: &str =
    r#"@id("candidate-extra") forbid (principal, action, resource == Path::"/nowhere");"#;

/// A change in another slice than the benchmarked check's (a user's profile update): the
/// candidate's shortcut applies, it is not evaluated.
const OTHER_SLICE: &str = r#"@id("no-profile-update") forbid (principal is User, action == Action::"profile:update", resource);"#;
/// A change in the benchmarked check's own slice (a workload creating an order), which
/// never applies: the candidate is evaluated, and still allows.
const SAME_SLICE: &str = r#"@id("never") forbid (principal is Workload, action == Action::"orders:create", resource) when { false };"#;

/// The example set's files plus `extra.cedar` holding `extra`.
fn example_plus(extra: &str) -> Snapshot {
    let dir = tempfile::tempdir().unwrap();
    let examples = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
    for entry in std::fs::read_dir(&examples).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            std::fs::copy(&path, dir.path().join(path.file_name().unwrap())).unwrap();
        }
    }
    std::fs::write(dir.path().join("extra.cedar"), extra).unwrap();
    store::load_dir(dir.path()).unwrap()
}

/// The generated set of `policies` policies, with `extra` added when given.
fn generated(policies: usize, extra: Option<&str>) -> Snapshot {
    let dir = tempfile::tempdir().unwrap();
    policygen::write(dir.path(), policies).unwrap();
    if let Some(extra) = extra {
        std::fs::write(dir.path().join("extra.cedar"), extra).unwrap();
    }
    store::load_dir(dir.path()).unwrap()
}

fn handler(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let request = check("POST", "/orders").peer(CHECKOUT).build();
    let service = |candidate: Option<&str>| -> (CheckService, Arc<Shared>) {
        let authn = runtime
            .block_on(async { Authenticator::start(Vec::new(), Default::default()) })
            .unwrap();
        let options = CheckOptions {
            candidate_sample: 1.0,
            ..CheckOptions::default()
        };
        let shared = Arc::new(Shared::new(
            load_policies(&PolicySource::Embedded).unwrap(),
            authn,
            Limits::default(),
            Default::default(),
            options,
        ));
        if let Some(extra) = candidate {
            shared.install_candidate(example_plus(extra));
        }
        let service = CheckService::new(Arc::clone(&shared));
        let reply = runtime
            .block_on(service.check(tonic::Request::new(request.clone())))
            .unwrap()
            .into_inner();
        assert_eq!(Reply(reply).code(), tonic::Code::Ok);
        (service, shared)
    };
    let mut group = c.benchmark_group("shadow_handler");
    for (name, candidate) in [
        ("off", None),
        ("on_other_slice", Some(OTHER_SLICE)),
        ("on_same_slice", Some(SAME_SLICE)),
    ] {
        let (service, shared) = service(candidate);
        group.bench_function(name, |b| {
            b.to_async(&runtime).iter(|| async {
                let reply = service
                    .check(tonic::Request::new(black_box(request.clone())))
                    .await
                    .unwrap();
                if candidate.is_some() {
                    shared
                        .shadow
                        .drain(std::time::Duration::from_secs(10))
                        .await;
                }
                reply
            })
        });
    }
    group.finish();
}

fn with_token(c: &mut Criterion) {
    let live = generated(100, None);
    let candidate = generated(100, Some(EXTRA));
    let limits = Limits::default();
    let request = check("GET", "/svc0/items/item0")
        .header("x-tenant", "t0")
        .build();
    let token = policygen::token(0);
    let run = |request, shadow: bool| {
        let prepared = prepare(&limits, &Default::default(), envoy::input(request), NOW).unwrap();
        let presented = Presented {
            peer: Arc::new(prepared.peer),
            peer_refused: prepared.peer_refused.clone(),
            token: Ok(Some(token.clone())),
            token_required_by_default: true,
        };
        let live = decide::evaluate(&live, &prepared.request, &presented, NOW);
        let shadow =
            shadow.then(|| decide::evaluate(&candidate, &prepared.request, &presented, NOW));
        (live, shadow)
    };
    let (allowed, shadowed) = run(request.clone(), true);
    assert!(allowed.is_allow() && shadowed.unwrap().is_allow());
    let mut group = c.benchmark_group("shadow_token");
    for (name, shadow) in [("off", false), ("on", true)] {
        group.bench_function(name, |b| b.iter(|| run(black_box(request.clone()), shadow)));
    }
    group.finish();
}

/// 1,000 records of varied checks on the 100-policy generated set, as JSON lines.
fn records(snapshot: &Snapshot) -> Vec<String> {
    let limits = Limits::default();
    let services = policygen::services(100);
    let tokens: Vec<_> = (0..policygen::USERS).map(policygen::token).collect();
    let mut allowed = 0;
    let lines: Vec<String> = (0..1000)
        .map(|n| {
            let user = n % policygen::USERS;
            let path = format!(
                "/svc{}/items/item{}",
                n % services,
                (n * 7) % policygen::ITEMS
            );
            let method = if n % 5 == 0 { "PUT" } else { "GET" };
            let request = check(method, &path)
                .header("x-tenant", &format!("t{}", n % 3))
                .without_header("x-request-id")
                .header("x-request-id", &format!("r{n}"))
                .build();
            let prepared =
                prepare(&limits, &Default::default(), envoy::input(request), NOW).unwrap();
            let presented = Presented {
                peer: Arc::new(prepared.peer),
                peer_refused: None,
                token: Ok(Some(Arc::clone(&tokens[user]))),
                token_required_by_default: true,
            };
            let evaluation = decide::evaluate(snapshot, &prepared.request, &presented, NOW);
            allowed += usize::from(evaluation.is_allow());
            let decided = Decided {
                request: prepared.request,
                presented,
                now: NOW,
                evaluation,
                candidate: None,
                body_read: false,
            };
            serde_json::to_string(&Record::capture(&decided, &Redaction::default())).unwrap()
        })
        .collect();
    assert!(
        allowed > 50 && allowed < 950,
        "a mix of allows and denies: {allowed}"
    );
    lines
}

fn replay(c: &mut Criterion) {
    let snapshot = generated(100, None);
    let lines = records(&snapshot);
    // Against the set that produced them: nothing changes.
    let mut check = Replay::new(&snapshot, None);
    for line in &lines {
        check.decide(&Record::parse(line).unwrap()).unwrap();
    }
    assert_eq!(check.report.unchanged, 1000, "{:?}", check.report);
    let mut group = c.benchmark_group("replay");
    group.throughput(Throughput::Elements(lines.len() as u64));
    group.bench_function("records", |b| {
        b.iter(|| {
            let mut replay = Replay::new(&snapshot, None);
            for line in &lines {
                let record = Record::parse(black_box(line)).unwrap();
                replay.decide(&record).unwrap();
            }
            replay.report.unchanged
        })
    });
    group.finish();
}

criterion_group!(benches, handler, with_token, replay);
criterion_main!(benches);
