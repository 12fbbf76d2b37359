//! Typed claims through the real gRPC server, with real signed tokens and a real JWKS server:
//! the example schema declares `context.token.claims` as a record (`roles?: Set<String>`,
//! `email_verified?: Bool`, …), so policies use Cedar's set and boolean operators on them; a
//! declared claim of another type is a 401 naming the claim (never its value); undeclared
//! claims are dropped; and a declaration cedargate cannot build stops the load at its line.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use std::path::Path;

use cedargate::config::PolicySource;
use cedargate::policy::store;
use cedargate::testutil::jwt::{JwksServer, TestKey, claims};
use cedargate::testutil::{TestServer, check, metric_value, test_config, test_issuer};
use jsonwebtoken::Algorithm;
use serde_json::{Value, json};
use tonic::Code;

const ISS: &str = "https://idp.test";

/// The example set, plus `extra` as one more policy file (and `schema` instead of its schema).
fn policies_with(extra: &str, schema: Option<&str>) -> tempfile::TempDir {
    let mut files = vec![("claims.cedar", extra)];
    files.extend(schema.map(|s| ("schema.cedarschema", s)));
    support::policies::example_with(&files)
}

const READERS: &str = r#"
@id("readers-list")
permit (principal is User, action == Action::"orders:list", resource)
when { context has token && context.token.claims has roles && context.token.claims.roles.contains("reader") };

@id("unverified")
forbid (principal, action, resource)
when { context has token && context.token.claims has email_verified && !context.token.claims.email_verified };
"#;

struct Fixture {
    server: TestServer,
    key: TestKey,
    _jwks: JwksServer,
    _dir: tempfile::TempDir,
}

async fn fixture(dir: tempfile::TempDir) -> Fixture {
    let key = TestKey::generate(Algorithm::ES256, "ec-1");
    let jwks = JwksServer::start(&[&key]).await;
    let mut config = test_config(PolicySource::Dir(dir.path().to_owned()));
    config.issuers = vec![test_issuer(ISS, &jwks.uri())];
    let server = TestServer::with_config(config).await;
    server.ready().await;
    Fixture {
        server,
        key,
        _jwks: jwks,
        _dir: dir,
    }
}

impl Fixture {
    /// `GET /orders` with a token for `sub` carrying `extra` claims.
    async fn list(&mut self, sub: &str, extra: Value) -> cedargate::testutil::Reply {
        let mut body = claims(ISS, "orders", sub);
        for (name, value) in extra.as_object().unwrap() {
            body[name] = value.clone();
        }
        let token = self.key.sign(&body);
        self.server
            .check(check("GET", "/orders").bearer(&token).build())
            .await
    }
}

#[tokio::test]
async fn typed_claims_reach_policies_as_cedar_values() {
    let mut f = fixture(policies_with(READERS, None)).await;
    let allowed = f
        .list("alice", json!({ "roles": ["reader", "viewer"] }))
        .await;
    assert_eq!(allowed.code(), Code::Ok, "{}", allowed.body_text());
    // A set: "reader" is not a substring match of another role.
    let other = f.list("alice", json!({ "roles": ["readers"] })).await;
    assert_eq!(other.code(), Code::PermissionDenied);
    // A Bool: `false` is false, and the forbid decides.
    let unverified = f
        .list(
            "alice",
            json!({ "roles": ["reader"], "email_verified": false }),
        )
        .await;
    assert_eq!(unverified.code(), Code::PermissionDenied);
    assert_eq!(unverified.body()["error"], "policy_denied");
    // Undeclared claims of any type are dropped; `null` is an absent claim.
    let extra = f
        .list(
            "alice",
            json!({ "roles": ["reader"], "email_verified": null, "x": { "deep": [1, { "y": null }] } }),
        )
        .await;
    assert_eq!(extra.code(), Code::Ok, "{}", extra.body_text());
}

#[tokio::test]
async fn a_declared_claim_of_another_type_is_a_401_naming_it() {
    let mut f = fixture(policies_with(READERS, None)).await;
    for (claims, name) in [
        (json!({ "roles": "reader" }), "roles"),
        (json!({ "roles": ["reader", 7] }), "roles[1]"),
        (
            json!({ "roles": ["reader"], "email_verified": "false" }),
            "email_verified",
        ),
        (json!({ "tenant": ["acme"] }), "tenant"),
    ] {
        let reply = f.list("alice", claims.clone()).await;
        assert_eq!(reply.code(), Code::Unauthenticated, "{claims}");
        assert_eq!(reply.http_status(), Some(401));
        let body = reply.body();
        assert_eq!(body["error"], "invalid_claim", "{body}");
        assert_eq!(body["claim"], name, "{body}");
        // The claim's value is never echoed.
        assert!(!reply.body_text().contains("acme"), "{body}");
        let challenge = reply.header("www-authenticate").unwrap().0;
        assert!(
            challenge.contains(r#"error_description="invalid_claim""#),
            "{challenge}"
        );
    }
    // A 401 even where no route is near: authentication is judged first.
    let token = f.key.sign(&{
        let mut body = claims(ISS, "orders", "alice");
        body["roles"] = json!("reader");
        body
    });
    let unrouted = f
        .server
        .check(check("DELETE", "/nowhere").bearer(&token).build())
        .await;
    assert_eq!(unrouted.code(), Code::Unauthenticated);
    let metrics = f.server.metrics().await;
    assert!(
        metric_value(
            &metrics,
            "cedargate_decisions_total",
            &[("decision", "deny"), ("reason", "invalid_claim")]
        ) >= 5.0,
        "{metrics}"
    );
}

#[tokio::test]
async fn a_required_claim_must_be_present() {
    let schema = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("policies/schema.cedarschema"),
    )
    .unwrap();
    let required = schema.replacen("tenant?: String", "tenant: String", 1);
    assert_ne!(
        required, schema,
        "the example schema declares `tenant?: String`"
    );
    let mut f = fixture(policies_with(READERS, Some(&required))).await;
    let missing = f.list("alice", json!({ "roles": ["reader"] })).await;
    assert_eq!(missing.code(), Code::Unauthenticated);
    assert_eq!(missing.body()["claim"], "tenant");
    let present = f
        .list("alice", json!({ "roles": ["reader"], "tenant": "acme" }))
        .await;
    assert_eq!(present.code(), Code::Ok, "{}", present.body_text());
}

#[test]
fn a_claims_declaration_cedargate_cannot_build_stops_the_load_at_its_line() {
    let schema = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("policies/schema.cedarschema"),
    )
    .unwrap();
    let line = schema
        .lines()
        .position(|l| l.contains("tenant?: String"))
        .expect("the example schema declares `tenant?: String`")
        + 1;
    for (declared, says) in [
        ("tenant?: User", "declared as entity User"),
        ("tenant?: ipaddr", "declared as extension type ipaddr"),
    ] {
        let dir = policies_with(
            READERS,
            Some(&schema.replacen("tenant?: String", declared, 1)),
        );
        let err = store::load_dir(dir.path()).unwrap_err().to_string();
        assert!(err.contains(says), "{err}");
        assert!(err.contains("`context.token.claims.tenant`"), "{err}");
        // The position is the field's declaration, in the schema file.
        assert!(
            err.contains(&format!("schema.cedarschema:{line}:")),
            "{err} (expected line {line})"
        );
        assert!(err.contains("README: Typed claims"), "{err}");
    }
}
