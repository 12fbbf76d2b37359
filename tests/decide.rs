//! The decision core (`decide::evaluate`) against its reference (`decide::evaluate_reference`:
//! everything built, whole store, whole policy set, request validated against the schema) on
//! hand-written policy sets that reach the corners the generated sets of `tests/slicing.rs`
//! do not: a tag read with a computed key and the context used whole (the read analysis must
//! fall back to building everything), `context.time` and the peer record, Cedar evaluation
//! errors (a deny naming the failing policy) and principal types outside an action's
//! `appliesTo` (a deny before evaluation). Every case of a fixed grid of callers, methods,
//! paths and headers is compared, and each kind of outcome must occur.
//!
//! Then: parts cached with a token die with their source. The same token (the same `Arc`, as
//! the token cache hands it out) decided against a reloaded policy set with different
//! entities, groups or read claims must be decided on the new set.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::collections::BTreeMap;
use std::sync::Arc;

use cedargate::config::Limits;
use cedargate::decide;
use cedargate::decision::{Evaluation, Outcome, Recall};
use cedargate::identity::{Presented, VerifiedToken};
use cedargate::policy::{Snapshot, store};
use cedargate::server::check::prepare;
use cedargate::server::envoy;
use cedargate::testutil::{CHECKOUT, check};

/// The example schema: typed claims (`claims: Claims`, a record).
const TYPED_SCHEMA: &str = include_str!("../policies/schema.cedarschema");
const ROUTES: &str = include_str!("../policies/routes.yaml");
const NOW: i64 = 1_700_000_000;

/// An action only users may take, routed at `DELETE /orders`.
const USERS_ONLY: &str = r#"
action "orders:purge" appliesTo {
  principal: [User],
  resource: Collection,
  context: CheckContext,
};
"#;

/// The example schema with the claims in the tag form (`TokenClaims`, string tags), which
/// most sets here read.
fn tag_schema() -> String {
    let tags = TYPED_SCHEMA.replacen("claims: Claims,", "claims: TokenClaims,", 1);
    assert_ne!(
        tags, TYPED_SCHEMA,
        "the example schema declares `claims: Claims,`"
    );
    format!("{tags}\nentity TokenClaims tags String;\n")
}

fn load(policies: &str, entities: &str) -> Snapshot {
    load_with("", "", policies, entities)
}

/// [`load`] with more schema declarations and routes.
fn load_with(schema: &str, routes: &str, policies: &str, entities: &str) -> Snapshot {
    load_on(&tag_schema(), schema, routes, policies, entities)
}

/// [`load_with`] on the `base` schema.
fn load_on(base: &str, schema: &str, routes: &str, policies: &str, entities: &str) -> Snapshot {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("schema.cedarschema"),
        format!("{base}{USERS_ONLY}{schema}"),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("routes.yaml"),
        format!(
            "{ROUTES}  - {{ method: DELETE, path: \"/orders\", action: \"orders:purge\", resource: 'Collection::\"orders\"', token: optional }}\n{routes}"
        ),
    )
    .unwrap();
    std::fs::write(dir.path().join("policies.cedar"), policies).unwrap();
    std::fs::write(dir.path().join("entities.json"), entities).unwrap();
    store::load_dir(dir.path()).unwrap_or_else(|err| panic!("{err}"))
}

fn token(subject: &str, groups: &[&str], claims: &[(&str, &str)]) -> Arc<VerifiedToken> {
    Arc::new(VerifiedToken {
        issuer: "https://idp.test".into(),
        subject: subject.into(),
        principal_type: "User".into(),
        group_type: "Group".into(),
        audience: vec!["orders".into()],
        scopes: vec!["orders.read".into()],
        groups: groups.iter().map(|g| (*g).to_owned()).collect(),
        expires_at: i64::MAX,
        issued_at: None,
        claims: claims
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect::<BTreeMap<_, _>>(),
        claims_json: Arc::new(
            claims
                .iter()
                .map(|(k, v)| ((*k).to_owned(), serde_json::Value::from(*v)))
                .collect(),
        ),
        cnf_x5t_s256: None,
        require_cert_binding: false,
        cedar: Default::default(),
        typed_claims: Default::default(),
    })
}

/// A token whose claims are `claims` (JSON), as the verifier makes it.
fn token_json(subject: &str, claims: serde_json::Value) -> Arc<VerifiedToken> {
    let map = claims.as_object().unwrap().clone();
    let texts: BTreeMap<String, String> = map
        .iter()
        .map(|(k, v)| {
            let text = v.as_str().map_or_else(|| v.to_string(), str::to_owned);
            (k.clone(), text)
        })
        .collect();
    let base = token(subject, &[], &[]);
    Arc::new(VerifiedToken {
        claims: texts,
        claims_json: Arc::new(map),
        cedar: Default::default(),
        typed_claims: Default::default(),
        ..VerifiedToken::clone(&base)
    })
}

#[derive(Debug, Clone)]
enum Caller {
    Token(Arc<VerifiedToken>),
    Workload,
    Anonymous,
}

/// What must agree: reason code, uids, determining or failing policies.
fn said(e: &Evaluation) -> (String, Option<String>, Option<String>, Vec<String>) {
    let reason = match &e.outcome {
        Outcome::Allow => "allow".to_owned(),
        Outcome::Deny(reason) => reason.code().to_owned(),
    };
    let text = |u: &Option<cedar_policy::EntityUid>| u.as_ref().map(ToString::to_string);
    (
        reason,
        text(&e.principal),
        text(&e.resource),
        e.policy_ids.clone(),
    )
}

/// A check's normalised request and what its caller presents.
fn inputs(
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    caller: &Caller,
) -> (cedargate::request::Request, Presented) {
    let mut builder = check(method, path);
    for (name, value) in headers {
        builder = builder.header(name, value);
    }
    if matches!(caller, Caller::Workload) {
        builder = builder.peer(CHECKOUT);
    }
    let prepared = prepare(
        &Limits::default(),
        &Default::default(),
        envoy::input(builder.build()),
        NOW,
    )
    .unwrap();
    let presented = Presented {
        peer: Arc::new(prepared.peer.clone()),
        peer_refused: prepared.peer_refused.clone(),
        token: Ok(match caller {
            Caller::Token(token) => Some(Arc::clone(token)),
            _ => None,
        }),
        token_required_by_default: false,
    };
    (prepared.request, presented)
}

fn decide_both(
    snapshot: &Snapshot,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    caller: &Caller,
) -> (Evaluation, Evaluation) {
    let (request, presented) = inputs(method, path, headers, caller);
    (
        decide::evaluate(snapshot, &request, &presented, NOW),
        decide::evaluate_reference(snapshot, &request, &presented, NOW),
    )
}

/// Every case of the grid decided both ways, twice (the same token `Arc`s throughout, so the
/// second pass and any case whose readable inputs equal an earlier one's may be recalled from
/// the decision cache); returns how often each reason occurred, with `"recalled"` counting
/// the decisions taken from the cache.
fn compare(snapshot: &Snapshot) -> BTreeMap<String, usize> {
    let callers = [
        Caller::Token(token("alice", &["admins"], &[("tenant", "blue")])),
        Caller::Token(token("bob", &[], &[("tenant", "red"), ("dept", "ops")])),
        Caller::Workload,
        Caller::Anonymous,
    ];
    compare_callers(snapshot, &callers)
}

/// [`compare`] for these callers.
fn compare_callers(snapshot: &Snapshot, callers: &[Caller]) -> BTreeMap<String, usize> {
    let targets = [
        ("GET", "/orders"),
        ("POST", "/orders"),
        ("DELETE", "/orders"),
        ("GET", "/orders/1001"),
        ("GET", "/orders/1002"),
        ("GET", "/profiles/alice"),
        ("GET", "/healthz"),
        ("GET", "/unrouted"),
    ];
    let header_sets: [&[(&str, &str)]; 4] = [
        &[],
        &[("x-key", "get"), ("get", "yes"), ("x-tenant", "blue")],
        &[("post", "yes"), ("x-overflow", "1")],
        &[("x-tenant", "red"), ("x-block", "1")],
    ];
    let mut seen = BTreeMap::new();
    for pass in 0..2 {
        for caller in callers {
            for (method, path) in targets {
                for headers in header_sets {
                    let (core, reference) = decide_both(snapshot, method, path, headers, caller);
                    assert_eq!(
                        said(&core),
                        said(&reference),
                        "pass {pass}: {method} {path} {headers:?} {caller:?} ({:?})",
                        core.recall
                    );
                    assert_eq!(core.is_allow(), reference.is_allow());
                    *seen.entry(said(&core).0).or_insert(0) += 1;
                    if core.recall == Recall::Hit {
                        *seen.entry("recalled".to_owned()).or_insert(0) += 1;
                    }
                }
            }
        }
    }
    seen
}

/// [`compare`], then each of `reasons` must have occurred: the comparison exercised them.
fn compare_and_expect(snapshot: &Snapshot, reasons: &[&str]) {
    let seen = compare(snapshot);
    for reason in reasons {
        assert!(
            seen.get(*reason).copied().unwrap_or(0) > 0,
            "{reason}: {seen:?}"
        );
    }
}

const ENTITIES: &str = r#"[
  { "uid": { "type": "Group", "id": "admins" }, "attrs": {}, "parents": [] },
  { "uid": { "type": "User", "id": "bob" }, "attrs": {}, "parents": [{ "type": "Group", "id": "ops" }] },
  { "uid": { "type": "Group", "id": "ops" }, "attrs": {}, "parents": [] },
  { "uid": { "type": "Order", "id": "1001" }, "attrs": { "owner": { "__entity": { "type": "User", "id": "bob" } } }, "parents": [] },
  { "uid": { "type": "Order", "id": "1002" }, "attrs": { "owner": { "__entity": { "type": "User", "id": "alice" } } }, "parents": [] }
]"#;

#[test]
fn the_core_decides_like_the_reference_with_literal_reads() {
    let snapshot = load(
        r#"
@id("owner")
permit (principal, action == Action::"orders:read", resource)
when { resource has owner && resource.owner == principal };
@id("tenant")
permit (principal in Group::"admins", action, resource)
when { context.request.headers.hasTag("x-tenant") && context.request.headers.getTag("x-tenant") == "blue" };
@id("ops")
permit (principal in Group::"ops", action == Action::"orders:list", resource);
@id("purge")
permit (principal, action == Action::"orders:purge", resource);
@id("workload")
permit (principal is Workload, action == Action::"orders:create", resource)
when { principal.trust_domain == "shop.example" && context.peer.present };
@id("public")
permit (principal, action == Action::"GET", resource == Path::"/healthz");
@id("claims")
permit (principal, action == Action::"GET", resource)
when { context has token && context.token.claims.hasTag("dept") && context.token.claims.getTag("dept") == "ops" };
@id("overflow")
forbid (principal, action, resource)
when { context.request.headers.hasTag("x-overflow") && context.time * 9223372036854775 > 0 };
@id("block")
forbid (principal, action, resource)
when { context.request.headers.hasTag("x-block") };
"#,
        ENTITIES,
    );
    compare_and_expect(
        &snapshot,
        &["allow", "policy_denied", "policy_error", "no_route"],
    );
}

#[test]
fn the_core_decides_like_the_reference_with_computed_and_whole_reads() {
    let snapshot = load(
        r#"
@id("computed-tag")
permit (principal, action, resource)
when {
  context.request.headers.hasTag("x-key") &&
  context.request.headers.hasTag(context.request.headers.getTag("x-key")) &&
  context.request.headers.getTag(context.request.headers.getTag("x-key")) == "yes"
};
@id("whole-peer")
permit (principal is Workload, action == Action::"orders:create", resource)
when { context.peer == context.peer && context.peer has spiffe_id && context.peer.spiffe_id == "spiffe://shop.example/ns/shop/sa/checkout" };
@id("whole-context")
forbid (principal, action, resource)
when { context == context && context.time < 0 };
@id("overflow")
forbid (principal, action, resource)
when { context.request.headers.hasTag("x-overflow") && context.time * 9223372036854775 > 0 };
"#,
        ENTITIES,
    );
    compare_and_expect(
        &snapshot,
        &["allow", "policy_denied", "policy_error", "no_route"],
    );
}

#[test]
fn the_core_decides_like_the_reference_when_a_tokens_context_is_built_once() {
    // Nothing here reads the peer, the time or a request field other than the tag maps: the
    // context of a token is built once and reused for all its requests, with other headers.
    let snapshot = load(
        r#"
@id("tenant")
permit (principal, action, resource)
when {
  context has token && context.token.claims.hasTag("tenant") &&
  context.request.headers.hasTag("x-tenant") &&
  context.token.claims.getTag("tenant") == context.request.headers.getTag("x-tenant")
};
@id("scope")
permit (principal, action == Action::"orders:list", resource)
when { context has token && context.token.scope.contains("orders.read") && context.request.headers.hasTag("get") };
@id("block")
forbid (principal, action, resource)
when { context.request.headers.hasTag("x-block") };
"#,
        ENTITIES,
    );
    assert!(!snapshot.reads.context_varies());
    compare_and_expect(
        &snapshot,
        &["allow", "policy_denied", "no_route", "recalled"],
    );
}

fn evaluate(snapshot: &Snapshot, path: &str, token: &Arc<VerifiedToken>) -> Evaluation {
    let prepared = prepare(
        &Limits::default(),
        &Default::default(),
        envoy::input(check("GET", path).build()),
        NOW,
    )
    .unwrap();
    let presented = Presented {
        peer: Arc::new(prepared.peer),
        peer_refused: prepared.peer_refused.clone(),
        token: Ok(Some(Arc::clone(token))),
        token_required_by_default: true,
    };
    decide::evaluate(snapshot, &prepared.request, &presented, NOW)
}

#[test]
fn a_reload_with_changed_entities_or_groups_is_seen_by_the_next_check() {
    let policies = r#"
@id("admins")
permit (principal in Group::"admins", action == Action::"orders:list", resource);
"#;
    let alice_admin = r#"[
  { "uid": { "type": "Group", "id": "admins" }, "attrs": {}, "parents": [] },
  { "uid": { "type": "User", "id": "alice" }, "attrs": {}, "parents": [{ "type": "Group", "id": "admins" }] }
]"#;
    let alice_not_admin = r#"[
  { "uid": { "type": "Group", "id": "admins" }, "attrs": {}, "parents": [] },
  { "uid": { "type": "User", "id": "alice" }, "attrs": {}, "parents": [] }
]"#;
    // One token for every check, as the token cache hands it out.
    let alice = token("alice", &[], &[]);
    let before = load(policies, alice_admin);
    let first = evaluate(&before, "/orders", &alice);
    assert!(first.is_allow());
    assert_eq!(first.recall, Recall::Miss);
    let again = evaluate(&before, "/orders", &alice);
    assert!(again.is_allow());
    assert_eq!(again.recall, Recall::Hit, "from the decision cache");
    let after = load(policies, alice_not_admin);
    let denied = evaluate(&after, "/orders", &alice);
    assert!(!denied.is_allow(), "{denied:?}");
    assert_eq!(
        denied.recall,
        Recall::Miss,
        "a reload is never served a verdict of the last set"
    );
    assert!(evaluate(&load(policies, alice_admin), "/orders", &alice).is_allow());

    // A token that names a group, whose user the static entities put in another group: the
    // cached principal merges both, for the set in force.
    let carol = token("carol", &["staff"], &[]);
    let carol_admin = r#"[
  { "uid": { "type": "Group", "id": "admins" }, "attrs": {}, "parents": [] },
  { "uid": { "type": "Group", "id": "staff" }, "attrs": {}, "parents": [] },
  { "uid": { "type": "User", "id": "carol" }, "attrs": {}, "parents": [{ "type": "Group", "id": "admins" }] }
]"#;
    let both = r#"
@id("both")
permit (principal in Group::"admins", action == Action::"orders:list", resource)
when { principal in Group::"staff" };
"#;
    assert!(evaluate(&load(both, carol_admin), "/orders", &carol).is_allow());
    assert!(!evaluate(&load(both, alice_admin), "/orders", &carol).is_allow());
    assert!(evaluate(&load(both, carol_admin), "/orders", &carol).is_allow());
}

#[test]
fn a_reload_that_reads_other_claims_is_seen_by_the_next_check() {
    let reads = |claim: &str| {
        format!(
            r#"
@id("claim")
permit (principal, action == Action::"orders:list", resource)
when {{ context has token && context.token.claims.hasTag("{claim}") && context.token.claims.getTag("{claim}") == "yes" }};
"#
        )
    };
    // The claims entity cached with the token holds only the claims the set in force reads.
    let user = token("dave", &[], &[("tenant", "no"), ("dept", "yes")]);
    let tenant = load(&reads("tenant"), "[]");
    assert!(!evaluate(&tenant, "/orders", &user).is_allow());
    let dept = load(&reads("dept"), "[]");
    assert!(evaluate(&dept, "/orders", &user).is_allow());
    assert!(
        !evaluate(&tenant, "/orders", &user).is_allow(),
        "back again"
    );
}

/// Attacks on the reads analysis found in review: each must decide like the reference.
/// A record field named `Value` (which the analysis once skipped as a literal), and helper
/// entities named directly instead of through the context (which were then not built).
#[test]
fn reads_cannot_be_hidden_from_the_analysis() {
    let base = r#"
@id("tenant")
permit (principal, action, resource);
"#;
    let attacks = [
        r#"forbid (principal, action, resource) when { {Value: context has token}.Value };"#,
        r#"forbid (principal, action, resource) when { {Value: context.request.headers.hasTag("x-block")}.Value };"#,
        r#"forbid (principal, action, resource) when { {Value: context.request.method}.Value == "DELETE" };"#,
        r#"forbid (principal, action, resource) when { HttpHeaders::"request".hasTag("x-block") };"#,
        r#"forbid (principal, action, resource) when { TokenClaims::"request".hasTag("dept") };"#,
        r#"forbid (principal, action, resource) when { PathParams::"request".hasTag("id") };"#,
    ];
    for attack in attacks {
        let snapshot = load(&format!("{base}@id(\"attack\")\n{attack}\n"), ENTITIES);
        let seen = compare(&snapshot);
        assert!(
            seen.get("policy_denied").copied().unwrap_or(0) > 0,
            "{attack}: the forbid never applied: {seen:?}"
        );
    }
}

/// A second review: helpers handed to a policy without it naming them. A route whose resource
/// is a helper entity (`resource.hasTag(…)`), and a static entity whose attribute holds one
/// under a JSON-escaped type name.
#[test]
fn helpers_reached_other_than_by_name_are_built() {
    let via_route = load_with(
        r#"action "hdr:inspect" appliesTo { principal: [User, Service, Workload, Anonymous], resource: [HttpHeaders], context: CheckContext };"#,
        "  - { method: GET, path: \"/unrouted\", action: \"hdr:inspect\", resource: 'HttpHeaders::\"request\"', token: optional }\n",
        r#"
@id("all")
permit (principal, action, resource);
@id("inspect")
forbid (principal, action == Action::"hdr:inspect", resource) when { resource.hasTag("x-block") };
"#,
        ENTITIES,
    );
    let seen = compare(&via_route);
    assert!(
        seen.get("policy_denied").copied().unwrap_or(0) > 0,
        "{seen:?}"
    );

    let via_attribute = load_with(
        "entity Tenant { h: HttpHeaders, c: TokenClaims };",
        "",
        r#"
@id("all")
permit (principal, action, resource);
@id("headers")
forbid (principal, action, resource) when { Tenant::"t".h.hasTag("x-block") };
@id("claims")
forbid (principal, action, resource) when { Tenant::"t".c.hasTag("dept") };
"#,
        r#"[{ "uid": { "type": "Tenant", "id": "t" }, "attrs": {
              "h": { "__entity": { "type": "Http\u0048eaders", "id": "request" } },
              "c": { "__entity": { "type": "Token\u0043laims", "id": "request" } } }, "parents": [] }]"#,
    );
    let seen = compare(&via_attribute);
    assert!(
        seen.get("policy_denied").copied().unwrap_or(0) > 0,
        "{seen:?}"
    );
}

#[test]
fn a_tokens_cached_store_meets_the_resources_side() {
    // A token's side is cached as one Cedar store with its closure computed; each check adds
    // the resource's static entities to it. Here the resource side reaches owners through an
    // attribute, an owner who is the caller (already in the cached store, merged with the
    // token's groups), and the caller itself as the resource (`/profiles/alice`).
    let snapshot = load(
        r#"
@id("owner-in-ops")
permit (principal, action == Action::"orders:read", resource)
when { resource has owner && resource.owner in Group::"ops" };
@id("staff-reads-staff")
permit (principal in Group::"staff", action, resource)
when { resource has owner && resource.owner in Group::"staff" };
@id("self")
permit (principal in Group::"staff", action == Action::"profile:read", resource)
when { resource == principal && resource in Group::"admins" };
"#,
        r#"[
  { "uid": { "type": "Group", "id": "ops" }, "attrs": {}, "parents": [] },
  { "uid": { "type": "Group", "id": "staff" }, "attrs": {}, "parents": [] },
  { "uid": { "type": "User", "id": "bob" }, "attrs": {}, "parents": [{ "type": "Group", "id": "ops" }] },
  { "uid": { "type": "User", "id": "alice" }, "attrs": {}, "parents": [{ "type": "Group", "id": "staff" }] },
  { "uid": { "type": "Order", "id": "1001" }, "attrs": { "owner": { "__entity": { "type": "User", "id": "bob" } } }, "parents": [] },
  { "uid": { "type": "Order", "id": "1002" }, "attrs": { "owner": { "__entity": { "type": "User", "id": "alice" } } }, "parents": [] }
]"#,
    );
    compare_and_expect(&snapshot, &["allow", "policy_denied", "no_route"]);
    // The caller reading their own profile is allowed only through the merged entity.
    let alice = token("alice", &["admins"], &[]);
    assert!(evaluate(&snapshot, "/profiles/alice", &alice).is_allow());
    assert!(!evaluate(&snapshot, "/profiles/bob", &alice).is_allow());
}

#[test]
fn a_resource_that_reaches_the_tokens_own_entities_sees_the_tokens() {
    // A static entity reached only from the resource's side names `TokenClaims::"request"`,
    // which `entities.json` also defines and the token's cached store already holds (built
    // from the token's claims). The check must see the token's claims, as the reference does,
    // not the static copy and not a duplicate-entity failure.
    let snapshot = load_with(
        r#"
entity Ticket { claims?: TokenClaims };
action "tickets:read" appliesTo { principal: [User], resource: Ticket, context: CheckContext };
"#,
        "  - { method: GET, path: \"/tickets/{id}\", action: \"tickets:read\", resource: 'Ticket::\"{id}\"' }\n",
        r#"
@id("dept-ops")
permit (principal, action == Action::"tickets:read", resource)
when { resource has claims && resource.claims.hasTag("dept") && resource.claims.getTag("dept") == "ops" };
@id("claims-read")
forbid (principal, action, resource)
when { context has token && context.token.claims.hasTag("block") };
"#,
        r#"[{ "uid": { "type": "Ticket", "id": "7" }, "attrs": {
              "claims": { "__entity": { "type": "TokenClaims", "id": "request" } } }, "parents": [] },
            { "uid": { "type": "TokenClaims", "id": "request" }, "attrs": {}, "parents": [],
              "tags": { "dept": "static" } }]"#,
    );
    let bob = Caller::Token(token("bob", &[], &[("dept", "ops")]));
    for _ in 0..2 {
        let (core, reference) = decide_both(&snapshot, "GET", "/tickets/7", &[], &bob);
        assert_eq!(said(&core), said(&reference));
        assert!(core.is_allow(), "{:?}", core.outcome);
    }
}

/// One check of `token` with everything a policy may read set by the caller.
fn evaluate_at(
    snapshot: &Snapshot,
    (method, target): (&str, &str),
    headers: &[(&str, &str)],
    peer: Option<&str>,
    token: &Arc<VerifiedToken>,
) -> Evaluation {
    let mut builder = check(method, target);
    for (name, value) in headers {
        builder = builder.header(name, value);
    }
    if let Some(peer) = peer {
        builder = builder.peer(peer);
    }
    let prepared = prepare(
        &Limits::default(),
        &Default::default(),
        envoy::input(builder.build()),
        NOW,
    )
    .unwrap();
    let presented = Presented {
        peer: Arc::new(prepared.peer),
        peer_refused: prepared.peer_refused.clone(),
        token: Ok(Some(Arc::clone(token))),
        token_required_by_default: true,
    };
    let core = decide::evaluate(snapshot, &prepared.request, &presented, NOW);
    let reference = decide::evaluate_reference(snapshot, &prepared.request, &presented, NOW);
    assert_eq!(
        said(&core),
        said(&reference),
        "{method} {target} {headers:?} {peer:?}"
    );
    core
}

#[test]
fn a_remembered_verdict_is_recalled_only_for_the_same_readable_inputs() {
    // Each policy reads one kind of per-request value: a header, a query parameter, a path
    // parameter (through the resource), the method and host, the peer.
    let snapshot = load(
        r#"
@id("tenant")
permit (principal, action == Action::"orders:list", resource)
when { context.request.headers.hasTag("x-tenant") && context.request.headers.getTag("x-tenant") == "blue" };
@id("query")
permit (principal, action == Action::"orders:list", resource)
when { context.request.query.hasTag("view") && context.request.query.getTag("view") == "mine" };
@id("host")
permit (principal, action == Action::"orders:read", resource)
when { context.request.host == "shop.example" && context.request.method == "GET" };
@id("peer")
permit (principal, action == Action::"orders:create", resource)
when { context.peer has spiffe_id && context.peer.spiffe_id == "spiffe://shop.example/ns/shop/sa/checkout" };
@id("block")
forbid (principal, action, resource)
when { context.request.headers.hasTag("x-block") };
"#,
        ENTITIES,
    );
    let alice = token("alice", &[], &[]);
    let list = ("GET", "/orders");
    let blue = [("x-tenant", "blue")];
    let run = |target, headers: &[(&str, &str)], peer| {
        let e = evaluate_at(&snapshot, target, headers, peer, &alice);
        (e.is_allow(), e.recall)
    };
    assert_eq!(run(list, &blue, None), (true, Recall::Miss));
    assert_eq!(run(list, &blue, None), (true, Recall::Hit));
    // A header no policy reads changes nothing a policy can see: the same verdict.
    let noisy = [("x-tenant", "blue"), ("x-request-noise", "42")];
    assert_eq!(run(list, &noisy, None), (true, Recall::Hit));
    // Every readable change is a new evaluation, never the remembered verdict.
    assert_eq!(
        run(list, &[("x-tenant", "red")], None),
        (false, Recall::Miss)
    );
    assert_eq!(
        run(list, &[("x-tenant", "blue"), ("x-block", "1")], None),
        (false, Recall::Miss)
    );
    assert_eq!(
        run(("GET", "/orders?view=mine"), &[], None),
        (true, Recall::Miss)
    );
    assert_eq!(
        run(("GET", "/orders?view=all"), &[], None),
        (false, Recall::Miss)
    );
    assert_eq!(
        run(("GET", "/orders?view=mine"), &[], None),
        (true, Recall::Hit)
    );
    assert_eq!(
        run(("GET", "/orders/1001"), &[], None),
        (true, Recall::Miss)
    );
    assert_eq!(
        run(("GET", "/orders/1002"), &[], None),
        (true, Recall::Miss)
    );
    assert_eq!(run(("GET", "/orders/1002"), &[], None), (true, Recall::Hit));
    let create = ("POST", "/orders");
    assert_eq!(run(create, &[], Some(CHECKOUT)), (true, Recall::Miss));
    assert_eq!(run(create, &[], None), (false, Recall::Miss));
    assert_eq!(run(create, &[], Some(CHECKOUT)), (true, Recall::Hit));
    let partner = "spiffe://partner.example/ns/shop/sa/checkout";
    assert_eq!(run(create, &[], Some(partner)), (false, Recall::Miss));
    // Another token of the same user starts with its own, empty cache.
    let again = token("alice", &[], &[]);
    let e = evaluate_at(&snapshot, list, &blue, None, &again);
    assert_eq!((e.is_allow(), e.recall), (true, Recall::Miss));
}

#[test]
fn nothing_is_remembered_when_a_policy_reads_the_time_or_the_request_id() {
    for condition in [
        "context.time > 0",
        "context.request.id == context.request.id",
        "context == context",
    ] {
        let snapshot = load(
            &format!("permit (principal, action, resource) when {{ {condition} }};"),
            ENTITIES,
        );
        let alice = token("alice", &[], &[]);
        for _ in 0..2 {
            let e = evaluate_at(&snapshot, ("GET", "/orders"), &[], None, &alice);
            assert!(e.is_allow(), "{condition}");
            assert_eq!(e.recall, Recall::Uncached, "{condition}");
        }
    }
}

/// The optional facts (`context.peer.ip`, `context.destination`, `context.request.extensions`)
/// decided both ways over a grid of client addresses (Envoy's, and `x-forwarded-for` with one
/// trusted hop), destinations and route extensions, twice with the same token `Arc`s so that
/// recalled verdicts are compared too: an address, port or extension the policies read must
/// never be recalled for another.
#[test]
fn the_core_decides_like_the_reference_on_network_and_route_facts() {
    let snapshot = load(
        r#"
@id("inside")
permit (principal, action, resource)
when { context.peer has ip && context.peer.ip.isInRange(ip("10.0.0.0/8")) };
@id("tls-port-only")
forbid (principal, action, resource)
when { context has destination && context.destination has port && context.destination.port != 8443 };
@id("zone")
forbid (principal, action, resource)
when { context.request.extensions.hasTag("zone") && context.request.extensions.getTag("zone") == "closed" };
@id("tier")
forbid (principal, action, resource)
when { context.request.route_metadata.hasTag("zone") && context.request.route_metadata.getTag("zone") == "closed" };
@id("v6-error")
forbid (principal, action, resource)
when {
  context.peer has ip && context.peer.ip.isIpv6() && context has destination &&
  context.destination has port && context.destination.port * 4611686018427387904 > 0
};
"#,
        ENTITIES,
    );
    let tokens = [
        token("alice", &["admins"], &[]),
        token("bob", &[], &[("tenant", "red")]),
    ];
    let addresses = ["10.1.1.1", "192.168.0.1", "fd00::1"];
    let forwarded = [None, Some("10.2.2.2"), Some("10.2.2.2, 172.16.0.9")];
    let ports = [8443, 9443];
    let zones = [None, Some("open"), Some("closed")];
    let mut seen = BTreeMap::new();
    for pass in 0..2 {
        for hops in [0, 1] {
            let settings = cedargate::config::PeerSettings {
                xff_trusted_hops: hops,
                ..Default::default()
            };
            for token in &tokens {
                for address in addresses {
                    for xff in forwarded {
                        for port in ports {
                            for zone in zones {
                                let mut builder = check("GET", "/orders")
                                    .address(address, 40000)
                                    .destination("10.9.9.9", port, "spiffe://shop.example/gw");
                                if let Some(xff) = xff {
                                    builder = builder.header("x-forwarded-for", xff);
                                }
                                // The zone as an extension on one port and as route
                                // metadata on the other: two maps, one key name.
                                if let Some(zone) = zone {
                                    builder = if port == 8443 {
                                        builder.extension("zone", zone)
                                    } else {
                                        builder.route_metadata("zone", zone)
                                    };
                                }
                                let prepared = prepare(
                                    &Limits::default(),
                                    &settings,
                                    envoy::input(builder.build()),
                                    NOW,
                                )
                                .unwrap();
                                let presented = Presented {
                                    peer: Arc::new(prepared.peer.clone()),
                                    peer_refused: prepared.peer_refused.clone(),
                                    token: Ok(Some(Arc::clone(token))),
                                    token_required_by_default: false,
                                };
                                let core =
                                    decide::evaluate(&snapshot, &prepared.request, &presented, NOW);
                                let reference = decide::evaluate_reference(
                                    &snapshot,
                                    &prepared.request,
                                    &presented,
                                    NOW,
                                );
                                assert_eq!(
                                    said(&core),
                                    said(&reference),
                                    "pass {pass} hops {hops} {address} {xff:?} {port} {zone:?}"
                                );
                                *seen.entry(said(&core).0).or_insert(0) += 1;
                                if core.recall == Recall::Hit {
                                    *seen.entry("recalled".to_owned()).or_insert(0) += 1;
                                }
                            }
                        }
                    }
                }
            }
        }
    }
    for reason in ["allow", "policy_denied", "policy_error", "recalled"] {
        assert!(
            seen.get(reason).copied().unwrap_or(0) > 0,
            "{reason}: {seen:?}"
        );
    }
}

/// Typed claims (the example schema's `claims: Claims` record): sets, booleans and strings
/// read as Cedar values, on the hot path and the reference alike; a token whose declared claim
/// has another type is a 401 before anything else, whatever the request.
#[test]
fn the_core_decides_like_the_reference_with_typed_claims() {
    let snapshot = load_on(
        TYPED_SCHEMA,
        "",
        "",
        r#"
@id("readers")
permit (principal, action == Action::"orders:list", resource)
when { context has token && context.token.claims has roles && context.token.claims.roles.contains("reader") };
@id("tenant")
permit (principal, action == Action::"orders:read", resource)
when {
  context has token && context.token.claims has tenant &&
  context.request.headers.hasTag("x-tenant") &&
  context.token.claims.tenant == context.request.headers.getTag("x-tenant")
};
@id("unverified")
forbid (principal, action, resource)
when { context has token && context.token.claims has email_verified && !context.token.claims.email_verified };
@id("block")
forbid (principal, action, resource)
when { context.request.headers.hasTag("x-block") };
"#,
        ENTITIES,
    );
    assert!(
        snapshot.reads.claims.is_some(),
        "the example schema types the claims"
    );
    let callers = [
        Caller::Token(token_json(
            "alice",
            serde_json::json!({ "tenant": "blue", "roles": ["reader", "viewer"], "email_verified": true }),
        )),
        Caller::Token(token_json(
            "bob",
            serde_json::json!({ "tenant": "red", "roles": [], "email_verified": false, "other": { "x": [1] } }),
        )),
        Caller::Token(token_json(
            "carol",
            serde_json::json!({ "roles": "reader" }),
        )),
        Caller::Token(token_json("dave", serde_json::json!({}))),
        Caller::Workload,
        Caller::Anonymous,
    ];
    let seen = compare_callers(&snapshot, &callers);
    for reason in [
        "allow",
        "policy_denied",
        "invalid_claim",
        "no_route",
        "recalled",
    ] {
        assert!(
            seen.get(reason).copied().unwrap_or(0) > 0,
            "{reason}: {seen:?}"
        );
    }
    // carol's token fails on every one of the grid's requests (8 targets × 4 header sets,
    // twice), unrouted ones included: authentication comes first.
    assert_eq!(seen["invalid_claim"], 64, "{seen:?}");
}

/// A typed-claims failure is a 401 even when the peer would be refused (403): every token
/// rule before any peer rule.
#[test]
fn an_invalid_claim_is_judged_before_a_refused_peer() {
    let snapshot = load_on(
        TYPED_SCHEMA,
        "",
        "",
        r#"permit (principal, action == Action::"orders:list", resource);"#,
        ENTITIES,
    );
    let prepared = prepare(
        &Limits::default(),
        &Default::default(),
        envoy::input(check("GET", "/orders").build()),
        NOW,
    )
    .unwrap();
    let presented = |token: Arc<VerifiedToken>| Presented {
        peer: Arc::new(prepared.peer.clone()),
        peer_refused: Some(cedargate::identity::peer::PeerError::Expired),
        token: Ok(Some(token)),
        token_required_by_default: true,
    };
    let bad = token_json("alice", serde_json::json!({ "email_verified": "yes" }));
    let evaluation = decide::evaluate(&snapshot, &prepared.request, &presented(bad), NOW);
    assert_eq!(said(&evaluation).0, "invalid_claim");
    let fine = token_json("alice", serde_json::json!({ "email_verified": true }));
    let evaluation = decide::evaluate(&snapshot, &prepared.request, &presented(fine), NOW);
    assert_ne!(said(&evaluation).0, "invalid_claim");
    assert!(!evaluation.is_allow());
}

/// The same token (one `Arc`, as the token cache hands it out) against a reloaded schema that
/// declares its claim with another type: judged against the new declaration.
#[test]
fn a_reload_that_retypes_a_claim_is_seen_by_the_next_check() {
    let policies = r#"
@id("readers")
permit (principal, action == Action::"orders:list", resource)
when { context has token && context.token.claims has roles && context.token.claims.roles.contains("reader") };
"#;
    let token = token_json(
        "alice",
        serde_json::json!({ "roles": ["reader"], "tenant": "7" }),
    );
    let before = load_on(TYPED_SCHEMA, "", "", policies, ENTITIES);
    assert!(evaluate(&before, "/orders", &token).is_allow());
    let retyped = TYPED_SCHEMA.replacen("tenant?: String", "tenant?: Long", 1);
    assert_ne!(retyped, TYPED_SCHEMA);
    let after = load_on(&retyped, "", "", policies, ENTITIES);
    let evaluation = evaluate(&after, "/orders", &token);
    assert_eq!(said(&evaluation).0, "invalid_claim");
    // And back: the first set's verdict again.
    assert!(evaluate(&before, "/orders", &token).is_allow());
}

/// Entities fetched from the application (`request.fetched`) join the store on the hot path
/// as in the reference: the fetched order, the static entries of the uids it names (its owner
/// and the owner's groups, which a `forbid` reads), a static entity winning over a fetched one
/// of the same uid; and a check whose data is unavailable is a 503 before any policy.
#[test]
fn fetched_entities_decide_like_the_reference() {
    let snapshot = load_on(
        TYPED_SCHEMA,
        "",
        "",
        r#"
@id("owner")
permit (principal is User, action == Action::"orders:read", resource is Order)
when { resource has owner && resource.owner == principal };
@id("banned")
forbid (principal, action, resource)
when { resource has owner && resource.owner in Group::"banned" };
"#,
        r#"[
  { "uid": { "type": "Group", "id": "banned" }, "attrs": {}, "parents": [] },
  { "uid": { "type": "User", "id": "mallory" }, "attrs": {}, "parents": [{ "type": "Group", "id": "banned" }] },
  { "uid": { "type": "Order", "id": "1002" }, "attrs": { "owner": { "__entity": { "type": "User", "id": "alice" } } }, "parents": [] }
]"#,
    );
    let fetched = |id: &str, owner: &str| {
        let json = serde_json::json!({
            "uid": { "type": "Order", "id": id },
            "attrs": { "owner": { "__entity": { "type": "User", "id": owner } } },
            "parents": []
        });
        Arc::new(cedargate::entities::FetchedEntity {
            entity: cedar_policy::Entity::from_json_value(json.clone(), Some(&snapshot.schema))
                .unwrap(),
            names: cedargate::entities::named_uids(&json),
        })
    };
    let mut seen = BTreeMap::new();
    let tokens: BTreeMap<&str, Arc<VerifiedToken>> = ["alice", "bob", "mallory"]
        .into_iter()
        .map(|user| (user, token(user, &[], &[])))
        .collect();
    let decide_fetched = |user: &str, path: &str, owner: &str, generation: u64| {
        let id = path.rsplit('/').next().unwrap();
        let mut prepared = prepare(
            &Limits::default(),
            &Default::default(),
            envoy::input(check("GET", path).build()),
            NOW,
        )
        .unwrap();
        let entity = fetched(id, owner);
        prepared.request.fetched = cedargate::entities::Fetched {
            consulted: vec![(entity.entity.uid(), generation)],
            entities: vec![entity],
            unavailable: Vec::new(),
        };
        let presented = Presented {
            peer: Arc::new(prepared.peer.clone()),
            peer_refused: None,
            token: Ok(Some(Arc::clone(&tokens[user]))),
            token_required_by_default: true,
        };
        (
            decide::evaluate(&snapshot, &prepared.request, &presented, NOW),
            decide::evaluate_reference(&snapshot, &prepared.request, &presented, NOW),
        )
    };
    for pass in 0..2 {
        for user in ["alice", "bob", "mallory"] {
            for (path, owner) in [
                ("/orders/2001", "alice"),
                ("/orders/2002", "mallory"),
                // A static Order 1002 (owned by alice) wins over the fetched one (bob's).
                ("/orders/1002", "bob"),
            ] {
                let (core, reference) = decide_fetched(user, path, owner, 1);
                assert_eq!(said(&core), said(&reference), "pass {pass}: {user} {path}");
                let outcome = format!("{user} {path} {}", said(&core).0);
                *seen.entry(outcome).or_insert(0) += 1;
                if core.recall == Recall::Hit {
                    *seen.entry("recalled".to_owned()).or_insert(0) += 1;
                }
            }
        }
    }
    assert!(
        seen.contains_key("recalled"),
        "the same answer may be recalled: {seen:?}"
    );
    // Another answer (a new generation) for the same uid: decided on it, not recalled.
    let (core, reference) = decide_fetched("alice", "/orders/2001", "bob", 2);
    assert_eq!(said(&core), said(&reference));
    assert_eq!(
        said(&core).0,
        "policy_denied",
        "alice no longer owns the order"
    );
    assert_ne!(core.recall, Recall::Hit);
    // alice reads her fetched order; mallory's own order is forbidden by her static group;
    // order 1002 is alice's (static), not bob's (fetched).
    for expected in [
        "alice /orders/2001 allow",
        "bob /orders/2001 policy_denied",
        "mallory /orders/2002 policy_denied",
        "alice /orders/1002 allow",
        "bob /orders/1002 policy_denied",
    ] {
        assert!(seen.contains_key(expected), "{expected}: {seen:?}");
    }
    // Unavailable data: a 503, whoever asks.
    let mut prepared = prepare(
        &Limits::default(),
        &Default::default(),
        envoy::input(check("GET", "/orders/2001").build()),
        NOW,
    )
    .unwrap();
    prepared.request.fetched.unavailable = vec![r#"Order::"2001""#.parse().unwrap()];
    let presented = Presented {
        peer: Arc::new(prepared.peer.clone()),
        peer_refused: None,
        token: Ok(Some(token("alice", &[], &[]))),
        token_required_by_default: true,
    };
    let evaluation = decide::evaluate(&snapshot, &prepared.request, &presented, NOW);
    assert_eq!(said(&evaluation).0, "entity_unavailable");
}

/// The example set with `extra.cedar` holding `extra` (empty: the example set itself).
fn example_with(extra: &str) -> Snapshot {
    let base = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
    let mut files = store::read_dir(&base).unwrap();
    files.push(store::SourceFile {
        path: base.join("extra.cedar"),
        text: extra.to_owned(),
    });
    store::load_files(files).unwrap()
}

/// The candidate (shadow) set's shortcut (`server::shadow::Comparison`): whenever it says the
/// candidate decides a check as the live set did, evaluating the candidate gives exactly that
/// decision; it says so for checks outside the slices a change touches, never for a change
/// that reads other request data, and always for an identical set.
#[test]
fn a_candidate_known_to_decide_alike_decides_alike() {
    use cedargate::server::shadow::Comparison;
    let with = example_with;
    let live = example_with("");
    let candidates = [
        (
            "a forbid in one slice",
            with(
                r#"@id("no-workload-create") forbid (principal is Workload, action == Action::"orders:create", resource);"#,
            ),
        ),
        (
            "a forbid over every profile read",
            with(
                r#"@id("profiles-closed") forbid (principal, action == Action::"profile:read", resource) unless { principal == resource };"#,
            ),
        ),
        (
            "a policy that reads another header",
            with(
                r#"@id("new-header") forbid (principal, action, resource) when { context.request.headers.hasTag("x-new") };"#,
            ),
        ),
        ("the same set", example_with("")),
    ];
    let callers = [
        Caller::Token(token("alice", &["admins"], &[])),
        Caller::Token(token("bob", &[], &[])),
        Caller::Workload,
        Caller::Anonymous,
    ];
    let targets = [
        ("GET", "/orders"),
        ("POST", "/orders"),
        ("GET", "/orders/1001"),
        ("GET", "/profiles/alice"),
        ("GET", "/profiles/bob"),
        ("GET", "/healthz"),
        ("GET", "/unrouted"),
    ];
    let mut counts = BTreeMap::new();
    for (name, candidate) in &candidates {
        let comparison = Comparison::new(&live, candidate);
        let (mut alike, mut evaluated) = (0, 0);
        for caller in &callers {
            for (method, path) in targets {
                let (live_said, _) = decide_both(&live, method, path, &[], caller);
                let (candidate_said, _) = decide_both(candidate, method, path, &[], caller);
                if comparison.decides_alike(&live, candidate, &live_said) {
                    assert_eq!(
                        said(&candidate_said),
                        said(&live_said),
                        "{name}: {method} {path} {caller:?}"
                    );
                    alike += 1;
                } else {
                    evaluated += 1;
                }
            }
        }
        counts.insert(*name, (alike, evaluated));
    }
    let (one_slice, profiles, new_header, same) = (
        counts["a forbid in one slice"],
        counts["a forbid over every profile read"],
        counts["a policy that reads another header"],
        counts["the same set"],
    );
    assert!(one_slice.0 > 0 && one_slice.1 > 0, "{counts:?}");
    assert!(profiles.0 > 0 && profiles.1 > 0, "{counts:?}");
    assert_eq!(new_header.0, 0, "{counts:?}");
    assert_eq!(same.1, 0, "{counts:?}");
}

/// The candidate set decided on the live set's Cedar call (`decide::evaluate_call`, what the
/// shadow does in a slice a change touches when the candidate would build the same call)
/// decides exactly as evaluating the candidate does; the comparison says the call is the same
/// for changes that look up no other entity, and never for one that looks one up.
#[test]
fn a_candidate_decided_on_the_live_call_decides_as_evaluating_it() {
    use cedargate::server::shadow::Comparison;
    let with = example_with;
    let live = example_with("");
    let candidates = [
        (
            "a forbid in one slice",
            with(
                r#"@id("no-workload-create") forbid (principal is Workload, action == Action::"orders:create", resource);"#,
            ),
            true,
        ),
        (
            "a forbid over every order read",
            with(
                r#"@id("orders-closed") forbid (principal, action == Action::"orders:read", resource) unless { principal in Group::"admins" };"#,
            ),
            true,
        ),
        (
            "a permit for everyone",
            with(r#"@id("open") permit (principal, action, resource);"#),
            true,
        ),
        (
            "a policy that looks up another entity",
            with(
                r#"@id("lookup") forbid (principal, action, resource) when { Order::"1002" has owner && Order::"1002".owner == principal };"#,
            ),
            false,
        ),
    ];
    let callers = [
        Caller::Token(token("alice", &["admins"], &[])),
        Caller::Token(token("bob", &[], &[])),
        Caller::Workload,
        Caller::Anonymous,
    ];
    let targets = [
        ("GET", "/orders"),
        ("POST", "/orders"),
        ("GET", "/orders/1001"),
        ("GET", "/orders/1002"),
        ("GET", "/profiles/alice"),
        ("GET", "/healthz"),
    ];
    for (name, candidate, same_call) in &candidates {
        let comparison = Comparison::new(&live, candidate);
        assert_eq!(comparison.same_call(), *same_call, "{name}");
        if !same_call {
            continue;
        }
        let (mut on_the_call, mut changed) = (0, 0);
        for caller in &callers {
            for (method, path) in targets {
                // A fresh token value, so that the live set asks Cedar (no recalled verdict).
                let fresh = match caller {
                    Caller::Token(token) => Caller::Token(Arc::new(VerifiedToken::clone(token))),
                    Caller::Workload => Caller::Workload,
                    Caller::Anonymous => Caller::Anonymous,
                };
                let (request, presented) = inputs(method, path, &[], &fresh);
                let request = &request;
                let (live_said, call) =
                    decide::evaluate_keeping_call(&live, request, &presented, NOW);
                let evaluated = decide::evaluate(candidate, request, &presented, NOW);
                let Some(call) = call else {
                    continue;
                };
                let on_call = decide::evaluate_call(candidate, &live_said, &call);
                assert_eq!(
                    said(&on_call),
                    said(&evaluated),
                    "{name}: {method} {path} {caller:?}"
                );
                assert_eq!(on_call.version, evaluated.version);
                on_the_call += 1;
                changed += usize::from(said(&on_call) != said(&live_said));
            }
        }
        assert!(
            on_the_call >= 12,
            "{name}: {on_the_call} decided on the call"
        );
        assert!(changed > 0, "{name}: the change changes no decision");
    }
}

/// A principal the entity source answers for: its attributes and parents join the principal
/// the token makes (whose groups stay), decided as the reference decides, never cached with
/// the token, and nothing of the answer replaces what the token asserts.
#[test]
fn a_fetched_principal_decides_like_the_reference() {
    let schema = TYPED_SCHEMA.replace(
        "entity User in [Group];",
        "entity User in [Group] { department?: String };",
    );
    assert_ne!(
        schema, TYPED_SCHEMA,
        "the example schema declares `entity User in [Group];`"
    );
    let snapshot = load_on(
        &schema,
        "",
        "",
        r#"
@id("sales") permit (principal is User, action == Action::"orders:read", resource)
when { principal has department && principal.department == "sales" };
@id("vip") permit (principal in Group::"vip", action == Action::"orders:list", resource);
@id("admins") permit (principal in Group::"admins", action == Action::"orders:list", resource);
"#,
        r#"[{ "uid": { "type": "Order", "id": "1002" }, "attrs": { "owner": { "__entity": { "type": "User", "id": "alice" } } }, "parents": [] }]"#,
    );
    let answer = |user: &str, department: &str, parents: &[&str]| {
        let parents: Vec<_> = parents
            .iter()
            .map(|g| serde_json::json!({ "type": "Group", "id": g }))
            .collect();
        let json = serde_json::json!({
            "uid": { "type": "User", "id": user },
            "attrs": { "department": department },
            "parents": parents
        });
        Arc::new(cedargate::entities::FetchedEntity {
            entity: cedar_policy::Entity::from_json_value(json.clone(), Some(&snapshot.schema))
                .unwrap(),
            names: cedargate::entities::named_uids(&json),
        })
    };
    let tokens: BTreeMap<&str, Arc<VerifiedToken>> = [
        ("alice", token("alice", &["admins"], &[])),
        ("bob", token("bob", &[], &[])),
        ("carol", token("carol", &[], &[])),
    ]
    .into_iter()
    .collect();
    let answers: BTreeMap<&str, _> = [
        ("alice", answer("alice", "sales", &[])),
        ("bob", answer("bob", "support", &["vip"])),
    ]
    .into_iter()
    .collect();
    let decide_as = |user: &str, method: &str, path: &str, generation: u64| {
        let mut prepared = prepare(
            &Limits::default(),
            &Default::default(),
            envoy::input(check(method, path).build()),
            NOW,
        )
        .unwrap();
        if let Some(entity) = answers.get(user) {
            prepared.request.fetched = cedargate::entities::Fetched {
                consulted: vec![(entity.entity.uid(), generation)],
                entities: vec![Arc::clone(entity)],
                unavailable: Vec::new(),
            };
        }
        let presented = Presented {
            peer: Arc::new(prepared.peer.clone()),
            peer_refused: None,
            token: Ok(Some(Arc::clone(&tokens[user]))),
            token_required_by_default: true,
        };
        let wanted = decide::wanted(&snapshot, &prepared.request, &presented);
        assert!(
            wanted
                .iter()
                .any(|uid| uid.to_string() == format!("User::\"{user}\"")),
            "the principal is wanted: {wanted:?}"
        );
        let core = decide::evaluate(&snapshot, &prepared.request, &presented, NOW);
        let reference = decide::evaluate_reference(&snapshot, &prepared.request, &presented, NOW);
        assert_eq!(said(&core), said(&reference), "{user} {method} {path}");
        said(&core).0
    };
    for generation in [1, 2] {
        // The fetched department.
        assert_eq!(
            decide_as("alice", "GET", "/orders/1002", generation),
            "allow"
        );
        assert_eq!(
            decide_as("bob", "GET", "/orders/1002", generation),
            "policy_denied"
        );
        // A fetched parent, and the token's group beside the fetched answer.
        assert_eq!(decide_as("bob", "GET", "/orders", generation), "allow");
        assert_eq!(decide_as("alice", "GET", "/orders", generation), "allow");
        // Nothing fetched: neither.
        assert_eq!(
            decide_as("carol", "GET", "/orders", generation),
            "policy_denied"
        );
        assert_eq!(
            decide_as("carol", "GET", "/orders/1002", generation),
            "policy_denied"
        );
    }
    // Refused before any policy (no declared action applies): neither the principal nor the
    // resource is asked of the source (an outside review found the principal asked, and a
    // source outage turning these 403s into 503s).
    for (method, path) in [("POST", "/nowhere"), ("DELETE", "/orders/1")] {
        let prepared = prepare(
            &Limits::default(),
            &Default::default(),
            envoy::input(check(method, path).build()),
            NOW,
        )
        .unwrap();
        let presented = Presented {
            peer: Arc::new(prepared.peer.clone()),
            peer_refused: None,
            token: Ok(Some(Arc::clone(&tokens["alice"]))),
            token_required_by_default: true,
        };
        let refused = decide::evaluate(&snapshot, &prepared.request, &presented, NOW);
        assert_eq!(said(&refused).0, "no_route", "{method} {path}");
        let wanted = decide::wanted(&snapshot, &prepared.request, &presented);
        assert!(wanted.is_empty(), "{method} {path}: {wanted:?}");
    }
}

/// What the certificate asserts is not replaced by the entity source: a workload's
/// `trust_domain` stays the certificate's whatever the source answers for it.
#[test]
fn a_fetched_workload_keeps_the_certificates_trust_domain() {
    let snapshot = load_on(
        TYPED_SCHEMA,
        "",
        "",
        r#"
@id("create") permit (principal is Workload, action == Action::"orders:create", resource);
@id("home") forbid (principal is Workload, action, resource) unless { principal.trust_domain == "shop.example" };
"#,
        "[]",
    );
    let mut prepared = prepare(
        &Limits::default(),
        &Default::default(),
        envoy::input(check("POST", "/orders").peer(CHECKOUT).build()),
        NOW,
    )
    .unwrap();
    let presented = Presented {
        peer: Arc::new(prepared.peer.clone()),
        peer_refused: None,
        token: Ok(None),
        token_required_by_default: false,
    };
    let wanted = decide::wanted(&snapshot, &prepared.request, &presented);
    let workload = wanted
        .iter()
        .find(|uid| uid.type_name().to_string() == "Workload")
        .expect("the workload is wanted")
        .clone();
    let json = serde_json::json!({
        "uid": { "type": "Workload", "id": workload.id().unescaped() },
        "attrs": { "trust_domain": "evil.example" },
        "parents": []
    });
    prepared.request.fetched = cedargate::entities::Fetched {
        consulted: vec![(workload.clone(), 1)],
        entities: vec![Arc::new(cedargate::entities::FetchedEntity {
            entity: cedar_policy::Entity::from_json_value(json.clone(), Some(&snapshot.schema))
                .unwrap(),
            names: cedargate::entities::named_uids(&json),
        })],
        unavailable: Vec::new(),
    };
    let core = decide::evaluate(&snapshot, &prepared.request, &presented, NOW);
    let reference = decide::evaluate_reference(&snapshot, &prepared.request, &presented, NOW);
    assert_eq!(said(&core), said(&reference));
    assert_eq!(said(&core).0, "allow", "{core:?}");
}
