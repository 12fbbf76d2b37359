//! The decision core decides like the reference: `decide::evaluate` (policy slicing, the
//! reachable-entity store, parts built once per snapshot and per token, the `appliesTo` table)
//! against `decide::evaluate_reference` (the whole policy set, a copy of every static entity
//! validated with the per-request ones, and the request validated against the schema by Cedar).
//! A differential test over generated requests (users with random groups, some with static
//! entries, services with scopes, workloads of two trust domains, anonymous callers; every
//! route shape; tenant and block headers) against generated policy sets of 300 and 2,000
//! policies. Outcome, reason, principal, action, resource, determining policies and failing
//! policies must be identical (a refusal's message may word the same reason differently), and
//! both allows and denies must occur.
//!
//! Each case is then decided again in a variant with the same token (the same `Arc`, as the
//! token cache hands it out): the same request, or one input changed (a header no policy
//! reads, the tenant, the block header, the method, the item). The variant too must be
//! decided like the reference, whether its verdict is recalled from the token's decision cache
//! or evaluated; recalls must occur, and never for a variant a policy can tell apart.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::sync::{Arc, OnceLock};

use cedargate::config::Limits;
use cedargate::decide;
use cedargate::decision::{Evaluation, Recall};
use cedargate::identity::{Presented, VerifiedToken};
use cedargate::policy::{Snapshot, store};
use cedargate::server::check::prepare;
use cedargate::server::envoy;
use cedargate::testutil::check;
use cedargate::testutil::policygen;
use proptest::prelude::*;

fn generated(policies: usize) -> Snapshot {
    let dir = tempfile::tempdir().unwrap();
    policygen::write(dir.path(), policies).unwrap();
    store::load_dir(dir.path()).unwrap()
}

fn small() -> &'static Snapshot {
    static SET: OnceLock<Snapshot> = OnceLock::new();
    SET.get_or_init(|| generated(300))
}

fn large() -> &'static Snapshot {
    static SET: OnceLock<Snapshot> = OnceLock::new();
    SET.get_or_init(|| generated(2000))
}

#[derive(Debug, Clone)]
enum Caller {
    User { id: usize, groups: Vec<usize> },
    Service { id: usize, scopes: Vec<usize> },
    Workload { foreign: bool },
    Anonymous,
}

fn caller() -> impl Strategy<Value = Caller> {
    prop_oneof![
        4 => (0..110usize, prop::collection::vec(0..22usize, 0..3))
            .prop_map(|(id, groups)| Caller::User { id, groups }),
        1 => (0..5usize, prop::collection::vec(0..120usize, 0..3))
            .prop_map(|(id, scopes)| Caller::Service { id, scopes }),
        1 => any::<bool>().prop_map(|foreign| Caller::Workload { foreign }),
        1 => Just(Caller::Anonymous),
    ]
}

fn token(
    principal_type: &str,
    subject: String,
    groups: Vec<String>,
    scopes: Vec<String>,
) -> VerifiedToken {
    VerifiedToken {
        issuer: "https://idp.test".into(),
        subject,
        principal_type: principal_type.into(),
        group_type: "Group".into(),
        audience: vec!["orders".into()],
        scopes,
        groups,
        expires_at: i64::MAX,
        issued_at: None,
        claims: Default::default(),
        claims_json: Default::default(),
        cnf_x5t_s256: None,
        require_cert_binding: false,
        cedar: Default::default(),
        typed_claims: Default::default(),
    }
}

#[derive(Debug, Clone)]
struct Case {
    caller: Caller,
    method: &'static str,
    service: usize,
    item: Option<usize>,
    tenant: Option<usize>,
    block: bool,
    /// A header no policy reads.
    noise: u16,
    /// Aim the request at the `i`-th generated policy (its service, user, group, tenant and
    /// an item the user owns), so that allows are common enough to compare.
    aimed: Option<usize>,
}

fn case() -> impl Strategy<Value = Case> {
    (
        caller(),
        prop::sample::select(vec!["GET", "PUT", "DELETE", "POST"]),
        0..120usize,
        prop::option::of(0..210usize),
        prop::option::of(0..8usize),
        prop::bool::weighted(0.05),
        prop::option::weighted(0.6, 0..5000usize),
        any::<u16>(),
    )
        .prop_map(
            |(caller, method, service, item, tenant, block, aimed, noise)| {
                let mut case = Case {
                    caller,
                    method,
                    service,
                    item,
                    tenant,
                    block,
                    noise,
                    aimed,
                };
                if let Some(i) = aimed {
                    let user = i % policygen::USERS;
                    case.service = i;
                    case.item = Some(user);
                    case.tenant = Some(i % 7);
                    if matches!(case.caller, Caller::User { .. }) {
                        case.caller = Caller::User {
                            id: user,
                            groups: vec![i % policygen::GROUPS],
                        };
                    }
                }
                case
            },
        )
}

/// What must agree between the core and the reference for one case: the outcome's reason
/// code, the uids and the policy ids (a refusal's message may be worded differently).
#[derive(Debug, PartialEq, Eq)]
struct Said {
    reason: &'static str,
    principal: Option<String>,
    action: Option<String>,
    resource: Option<String>,
    policy_ids: Vec<String>,
}

fn said(evaluation: &Evaluation) -> Said {
    let text = |u: &Option<cedar_policy::EntityUid>| u.as_ref().map(ToString::to_string);
    Said {
        reason: match &evaluation.outcome {
            cedargate::decision::Outcome::Allow => "allow",
            cedargate::decision::Outcome::Deny(reason) => reason.code(),
        },
        principal: text(&evaluation.principal),
        action: text(&evaluation.action),
        resource: text(&evaluation.resource),
        policy_ids: evaluation.policy_ids.clone(),
    }
}

/// The token of a case's caller, if it has one.
fn caller_token(case: &Case) -> Option<Arc<VerifiedToken>> {
    match &case.caller {
        Caller::User { id, groups } => Some(token(
            "User",
            format!("u{id}"),
            groups.iter().map(|g| format!("g{g}")).collect(),
            Vec::new(),
        )),
        Caller::Service { id, scopes } => Some(token(
            "Service",
            format!("s{id}"),
            Vec::new(),
            scopes.iter().map(|k| format!("svc{k}.read")).collect(),
        )),
        Caller::Workload { .. } | Caller::Anonymous => None,
    }
    .map(Arc::new)
}

/// How a case's second request differs from the first (same caller, same token).
#[derive(Debug, Clone, Copy)]
enum Variant {
    Same,
    Noise,
    Tenant,
    Block,
    Method,
    Item,
}

fn variant() -> impl Strategy<Value = Variant> {
    prop::sample::select(vec![
        Variant::Same,
        Variant::Noise,
        Variant::Tenant,
        Variant::Block,
        Variant::Method,
        Variant::Item,
    ])
}

impl Variant {
    fn apply(self, case: &Case) -> Case {
        let mut case = case.clone();
        match self {
            Self::Same => {}
            Self::Noise => case.noise = case.noise.wrapping_add(1),
            Self::Tenant => case.tenant = Some(case.tenant.map_or(0, |t| (t + 1) % 8)),
            Self::Block => case.block = !case.block,
            Self::Method => case.method = if case.method == "GET" { "PUT" } else { "GET" },
            Self::Item => case.item = Some(case.item.map_or(0, |i| (i + 1) % 210)),
        }
        case
    }

    /// True when the variant changes nothing a policy of the generated sets can read.
    fn unreadable(self) -> bool {
        matches!(self, Self::Same | Self::Noise)
    }
}

/// The evaluations of the core and of the reference for one case, with `token` as the
/// caller's token.
fn both(
    snapshot: &Snapshot,
    case: &Case,
    token: Option<&Arc<VerifiedToken>>,
) -> (Evaluation, Evaluation) {
    let services = snapshot.routes.actions().count() / 4;
    let _ = case.aimed;
    let path = match case.item {
        Some(item) => format!("/svc{}/items/item{item}", case.service % services.max(1)),
        None => format!("/svc{}/items", case.service % services.max(1)),
    };
    let mut builder = check(case.method, &path);
    if let Some(t) = case.tenant {
        builder = builder.header("x-tenant", &format!("t{t}"));
    }
    if case.block {
        builder = builder.header("x-block", "1");
    }
    builder = builder.header("x-request-noise", &case.noise.to_string());
    let peer = match &case.caller {
        Caller::Workload { foreign } => Some(if *foreign {
            "spiffe://partner.example/ns/shop/sa/checkout"
        } else {
            "spiffe://shop.example/ns/shop/sa/checkout"
        }),
        _ => None,
    };
    if let Some(peer) = peer {
        builder = builder.peer(peer);
    }
    let now = 1_700_000_000;
    let prepared = prepare(
        &Limits::default(),
        &Default::default(),
        envoy::input(builder.build()),
        now,
    )
    .unwrap();
    let presented = Presented {
        peer: Arc::new(prepared.peer.clone()),
        peer_refused: prepared.peer_refused.clone(),
        token: Ok(token.cloned()),
        token_required_by_default: false,
    };
    (
        decide::evaluate(snapshot, &prepared.request, &presented, now),
        decide::evaluate_reference(snapshot, &prepared.request, &presented, now),
    )
}

fn differential(snapshot: &Snapshot, cases: u32) {
    let (slices, largest) = snapshot.slices.stats();
    let total = snapshot.policies.policies().count();
    assert!(
        slices > 0 && largest < total / 4,
        "{slices} slices, largest {largest} of {total}"
    );
    let allows = std::cell::Cell::new(0u32);
    let denies = std::cell::Cell::new(0u32);
    let recalled = std::cell::Cell::new(0u32);
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases,
        ..ProptestConfig::default()
    });
    runner
        .run(&(case(), variant()), |(case, variant)| {
            let token = caller_token(&case);
            let (core, reference) = both(snapshot, &case, token.as_ref());
            prop_assert_eq!(said(&core), said(&reference), "{:?}", case);
            let second = variant.apply(&case);
            let (again, reference) = both(snapshot, &second, token.as_ref());
            prop_assert_eq!(
                said(&again),
                said(&reference),
                "{:?} then {:?}",
                case,
                variant
            );
            if again.recall == Recall::Hit {
                recalled.set(recalled.get() + 1);
            }
            // A verdict the first request left behind is what the same readable inputs get.
            if core.recall == Recall::Miss && variant.unreadable() {
                prop_assert_eq!(again.recall, Recall::Hit, "{:?} then {:?}", case, variant);
            }
            if core.principal.is_some() {
                if core.is_allow() {
                    allows.set(allows.get() + 1);
                } else {
                    denies.set(denies.get() + 1);
                }
            }
            Ok(())
        })
        .unwrap();
    // The comparison means something only if both sides of the decision were exercised.
    let (allows, denies) = (allows.get(), denies.get());
    assert!(allows >= cases / 50, "{allows} allows of {cases}");
    assert!(denies >= cases / 50, "{denies} denies of {cases}");
    let recalled = recalled.get();
    assert!(recalled >= cases / 10, "{recalled} recalls of {cases}");
}

#[test]
fn slices_decide_like_the_whole_set_300_policies() {
    differential(small(), 2000);
}

#[test]
fn slices_decide_like_the_whole_set_2000_policies() {
    differential(large(), 1000);
}

#[test]
fn a_global_forbid_is_in_every_slice() {
    let snapshot = small();
    // p95 (x-block) names no action: every slice must carry it.
    let (slices, _) = snapshot.slices.stats();
    let mut with_block = 0;
    for action in snapshot.schema.actions() {
        for principal in snapshot.schema.principals_for_action(action).unwrap() {
            for resource in snapshot.schema.resources_for_action(action).unwrap() {
                let slice = snapshot.slices.get(action, principal, resource).unwrap();
                assert!(slice.policy(&cedar_policy::PolicyId::new("p95")).is_some());
                with_block += 1;
            }
        }
    }
    assert_eq!(with_block, slices);
}
