//! What the policy-data inputs cost a check, against the same check without them, in the same
//! run (BENCHMARKS.md, "Typed claims, request bodies and fetched entities"):
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
//! - `entities/static` and `entities/cached`: `GET /orders/{id}` by the order's owner, the
//!   order in `entities.json`, or fetched from an entity source and answered from the entity
//!   cache (`EntityCache::get` on a hit, polled once as the handler's `await` polls it, then
//!   the decision core); `*_uncached` the same under a
//!   policy that also reads the time (nothing recalled from the decision cache).
//!
//! Run: `cargo bench --bench policy_data`
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::future::Future;
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
        .header("content-type", "application/json")
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

/// An entity source answering from memory: the cache in front of it is what is measured.
struct Fixed(Vec<serde_json::Value>);

impl cedargate::entities::EntitySource for Fixed {
    fn fetch<'a>(
        &'a self,
        _uids: &'a [cedar_policy::EntityUid],
    ) -> futures_util::future::BoxFuture<
        'a,
        Result<Vec<serde_json::Value>, cedargate::entities::SourceError>,
    > {
        let answer = self.0.clone();
        Box::pin(async move { Ok(answer) })
    }
}

fn entities(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let limits = Limits::default();
    let token = token();
    let settings = cedargate::config::EntitySourceSettings {
        url: "http://127.0.0.1:1/unused".into(),
        ca_file: None,
        client_cert: None,
        client_key: None,
        bearer_token_file: None,
        timeout: std::time::Duration::from_secs(1),
        max_response_bytes: 1 << 20,
        types: [(
            "Order".to_owned(),
            cedargate::config::EntityTypeSettings {
                ttl: std::time::Duration::from_secs(3600),
                negative_ttl: std::time::Duration::from_secs(3600),
                max_entries: 1000,
                max_stale: std::time::Duration::from_secs(3600),
            },
        )]
        .into(),
    };
    let order = |id: &str| {
        serde_json::json!({ "uid": { "type": "Order", "id": id },
            "attrs": { "owner": { "__entity": { "type": "User", "id": "alice" } } }, "parents": [] })
    };
    let mut group = c.benchmark_group("entities");
    for (suffix, extra) in [("", ""), ("_uncached", " && context.time > 0")] {
        let policies = format!(
            r#"permit (principal is User, action == Action::"orders:read", resource is Order)
               when {{ resource has owner && resource.owner == principal{extra} }};"#
        );
        let dir = tempfile::tempdir().unwrap();
        let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
        std::fs::copy(examples.join("routes.yaml"), dir.path().join("routes.yaml")).unwrap();
        std::fs::write(dir.path().join("schema.cedarschema"), schema(false)).unwrap();
        std::fs::write(dir.path().join("policies.cedar"), &policies).unwrap();
        std::fs::write(
            dir.path().join("entities.json"),
            serde_json::Value::Array(vec![order("1002")]).to_string(),
        )
        .unwrap();
        let snapshot = store::load_dir(dir.path()).unwrap();
        let cache = cedargate::entities::cache::EntityCache::new(
            Arc::new(Fixed(vec![order("2001")])),
            &settings,
        );
        let prepared = |path: &str| {
            let request = check("GET", path).build();
            let prepared =
                prepare(&limits, &Default::default(), envoy::input(request), NOW).unwrap();
            let presented = Presented {
                peer: Arc::new(prepared.peer),
                peer_refused: None,
                token: Ok(Some(Arc::clone(&token))),
                token_required_by_default: true,
            };
            (prepared.request, presented)
        };
        let (static_request, presented) = prepared("/orders/1002");
        assert!(decide::evaluate(&snapshot, &static_request, &presented, NOW).is_allow());
        // Both sides clone the request, as the handler owns one per check.
        group.bench_function(format!("static{suffix}"), |b| {
            b.iter(|| {
                let request = black_box(&static_request).clone();
                decide::evaluate(&snapshot, &request, &presented, NOW)
            })
        });
        let (fetched_request, presented) = prepared("/orders/2001");
        let wanted = decide::wanted(&snapshot, &fetched_request, &presented);
        let run = |request: &cedargate::request::Request| {
            let mut request = request.clone();
            let schema = cedargate::entities::cache::SchemaOf {
                schema: &snapshot.schema,
                id: snapshot.id,
                statics: &snapshot.entities,
            };
            let budget = std::time::Duration::from_secs(1);
            // The handler awaits the cache inside its task: a hit is ready at the first poll
            // and costs nothing more there. Polled once, as the handler's await does; a miss
            // (pending) is driven by the runtime.
            let _inside = runtime.enter();
            let mut lookup = std::pin::pin!(cache.get(&schema, &wanted, budget));
            let mut context = std::task::Context::from_waker(std::task::Waker::noop());
            request.fetched = match lookup.as_mut().poll(&mut context) {
                std::task::Poll::Ready(fetched) => fetched,
                std::task::Poll::Pending => runtime.block_on(lookup),
            };
            decide::evaluate(&snapshot, &request, &presented, NOW)
        };
        assert!(run(&fetched_request).is_allow(), "the first check fetches");
        group.bench_function(format!("cached{suffix}"), |b| {
            b.iter(|| run(black_box(&fetched_request)))
        });
    }
    group.finish();
}

criterion_group!(benches, bench, entities);
criterion_main!(benches);
