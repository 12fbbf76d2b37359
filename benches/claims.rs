//! What typed claims and request bodies cost a check, against the same check without them, in
//! the same run (BENCHMARKS.md, "Typed claims and request bodies"):
//!
//! - `claims/tags` and `claims/typed`: the decision core (`decide::evaluate`) for one token
//!   (the same `Arc` every time, as on a token-cache hit) whose policy compares a claim, in
//!   the tag form (`getTag("tenant")`) and the typed form (`claims.tenant`). The policy also
//!   reads `context.time`, so that every check builds its context and asks Cedar (nothing is
//!   recalled): the worst case for both;
//! - `body/none`, `body/declared` and `body/json`: `POST /orders` with a small JSON body by the
//!   same token under a policy reading the time: the schema without `body`, with it (the body
//!   is parsed and checked, no policy reads it), and with a policy reading a field of it.
//!
//! Run: `cargo bench --bench claims`
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::hint::black_box;
use std::path::Path;
use std::sync::Arc;

use cedargate::config::Limits;
use cedargate::decide;
use cedargate::identity::{Presented, VerifiedToken};
use cedargate::policy::{Snapshot, store};
use cedargate::server::check::prepare;
use cedargate::server::envoy;
use cedargate::testutil::check;
use criterion::{Criterion, criterion_group, criterion_main};

const NOW: i64 = 1_700_000_000;

/// The example schema (typed claims, a declared body), or its tag form.
fn schema(tags: bool) -> String {
    let typed = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("policies/schema.cedarschema"),
    )
    .unwrap();
    if tags {
        let tagged = typed.replacen("claims: Claims,", "claims: TokenClaims,", 1);
        assert_ne!(tagged, typed);
        format!("{tagged}\nentity TokenClaims tags String;\n")
    } else {
        typed
    }
}

fn snapshot(schema: &str, policies: &str) -> Snapshot {
    let dir = tempfile::tempdir().unwrap();
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
    std::fs::copy(examples.join("routes.yaml"), dir.path().join("routes.yaml")).unwrap();
    std::fs::write(dir.path().join("schema.cedarschema"), schema).unwrap();
    std::fs::write(dir.path().join("policies.cedar"), policies).unwrap();
    store::load_dir(dir.path()).unwrap_or_else(|err| panic!("{err}"))
}

/// A token with a dozen claims of the kinds identity providers send.
fn token() -> Arc<VerifiedToken> {
    let claims = serde_json::json!({
        "iss": "https://idp.test", "sub": "alice", "aud": "orders", "exp": 4_000_000_000_i64,
        "iat": 1_700_000_000, "tenant": "blue", "roles": ["reader", "support"],
        "email": "alice@example.org", "email_verified": true, "name": "Alice Example",
        "groups": ["staff"], "realm_access": { "roles": ["offline_access"] }
    });
    let map = claims.as_object().unwrap().clone();
    Arc::new(VerifiedToken {
        issuer: "https://idp.test".into(),
        subject: "alice".into(),
        principal_type: "User".into(),
        group_type: "Group".into(),
        audience: vec!["orders".into()],
        scopes: Vec::new(),
        groups: Vec::new(),
        expires_at: i64::MAX,
        issued_at: None,
        claims: map
            .iter()
            .map(|(k, v)| {
                let text = v.as_str().map_or_else(|| v.to_string(), str::to_owned);
                (k.clone(), text)
            })
            .collect(),
        claims_json: Arc::new(map),
        cnf_x5t_s256: None,
        require_cert_binding: false,
        cedar: Default::default(),
        typed_claims: Default::default(),
    })
}

fn bench(c: &mut Criterion) {
    let limits = Limits::default();
    let token = token();
    let run = |request: &envoy_types::pb::envoy::service::auth::v3::CheckRequest| {
        let prepared = prepare(
            &limits,
            &Default::default(),
            envoy::input(request.clone()),
            NOW,
        )
        .unwrap();
        let presented = Presented {
            peer: Arc::new(prepared.peer),
            peer_refused: None,
            token: Ok(Some(Arc::clone(&token))),
            token_required_by_default: true,
        };
        (prepared.request, presented)
    };
    let mut group = c.benchmark_group("claims");
    let list = check("GET", "/orders").build();
    for (name, tags, condition) in [
        (
            "tags",
            true,
            r#"context.token.claims.hasTag("tenant") && context.token.claims.getTag("tenant") == "blue""#,
        ),
        (
            "typed",
            false,
            r#"context.token.claims has tenant && context.token.claims.tenant == "blue""#,
        ),
    ] {
        let policies = format!(
            r#"permit (principal, action == Action::"orders:list", resource)
               when {{ context has token && {condition} && context.time > 0 }};"#
        );
        let snapshot = snapshot(&schema(tags), &policies);
        let (request, presented) = run(&list);
        assert!(decide::evaluate(&snapshot, &request, &presented, NOW).is_allow());
        group.bench_function(name, |b| {
            b.iter(|| decide::evaluate(&snapshot, black_box(&request), &presented, NOW))
        });
    }
    group.finish();

    let mut group = c.benchmark_group("body");
    let create = check("POST", "/orders")
        .body(r#"{"total": 2500, "currency": "EUR", "items": [{"sku": "a-1", "qty": 2}]}"#)
        .build();
    let undeclared = schema(false).replacen("  body?: RequestBody,\n", "", 1);
    assert_ne!(undeclared, schema(false));
    for (name, declared, condition) in [
        ("none", false, "true"),
        ("declared", true, "true"),
        (
            "json",
            true,
            r#"context.request has body && context.request.body has currency && context.request.body.currency == "EUR""#,
        ),
    ] {
        let policies = format!(
            r#"permit (principal, action == Action::"orders:create", resource)
               when {{ {condition} && context.time > 0 }};"#
        );
        let schema = if declared {
            schema(false)
        } else {
            undeclared.clone()
        };
        let snapshot = snapshot(&schema, &policies);
        let (request, presented) = run(&create);
        assert!(decide::evaluate(&snapshot, &request, &presented, NOW).is_allow());
        group.bench_function(name, |b| {
            b.iter(|| decide::evaluate(&snapshot, black_box(&request), &presented, NOW))
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
