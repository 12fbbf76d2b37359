//! Several trusted issuers over real key servers on 127.0.0.1 and the example policy set: a
//! group claim is trusted only from an issuer configured for it, groups of different user
//! populations never share a type, and `same_users_as` lets two issuers speak for the same
//! users (review round 2, finding 1). SECURITY.md names these tests.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use cedargate::app;
use cedargate::config::{Config, IssuerConfig, PolicySource};
use cedargate::testutil::jwt::{JwksServer, TestKey, claims};
use cedargate::testutil::{TestServer, check, test_config, test_issuer};
use jsonwebtoken::Algorithm;
use serde_json::json;
use tonic::Code;

const HOME: &str = "https://idp.home.test";
const PARTNER: &str = "https://idp.partner.test";

fn config(issuers: Vec<IssuerConfig>) -> Config {
    let mut config = test_config(PolicySource::Embedded);
    config.issuers = issuers;
    config
}

/// A token of `iss` for `sub` in `groups`, signed by `key`.
fn token(key: &TestKey, iss: &str, sub: &str, groups: &[&str]) -> String {
    let mut claims = claims(iss, "orders", sub);
    claims["groups"] = json!(groups);
    key.sign(&claims)
}

#[tokio::test]
async fn a_partner_issuer_cannot_make_its_users_admins() {
    let home_key = TestKey::generate(Algorithm::ES256, "home");
    let partner_key = TestKey::generate(Algorithm::ES256, "partner");
    let home_jwks = JwksServer::start(&[&home_key]).await;
    let partner_jwks = JwksServer::start(&[&partner_key]).await;
    // The partner's users are `Service`s (a type of their own); its entry names no
    // `groups_claim`, as a configuration written for the first version would.
    let issuers = parse_issuers(&format!(
        "issuers:\n{}{}",
        issuer_yaml_at(HOME, &home_jwks.uri(), "User", "groups_claim: groups"),
        issuer_yaml_at(PARTNER, &partner_jwks.uri(), "Service", "")
    ));
    assert_eq!(issuers[1].groups_claim, None);
    let mut server = TestServer::with_config(config(issuers)).await;
    server.ready().await;

    // The home issuer's admins list orders (orders-admin).
    let admin = token(&home_key, HOME, "carol", &["admins"]);
    let reply = server
        .check(check("GET", "/orders").bearer(&admin).build())
        .await;
    assert_eq!(reply.code(), Code::Ok);
    assert_eq!(reply.meta_list("policy_ids"), ["orders-admin"]);

    // The partner's token says `groups: [admins]` too: the claim is not trusted from it.
    let forged = token(&partner_key, PARTNER, "carol", &["admins"]);
    for target in ["/orders", "/orders/1001", "/profiles/bob"] {
        let reply = server
            .check(check("GET", target).bearer(&forged).build())
            .await;
        assert_eq!(reply.code(), Code::PermissionDenied, "{target}");
        assert_eq!(reply.http_status(), Some(403), "{target}");
    }
    home_jwks.stop().await;
    partner_jwks.stop().await;
}

#[tokio::test]
async fn issuers_of_different_users_may_not_share_a_group_type() {
    // Both trusted with groups of the default type `Group`: refused at start-up.
    let mut home = test_issuer(HOME, "http://127.0.0.1:1/jwks.json");
    home.groups_claim = Some("groups".into());
    let mut partner = test_issuer(PARTNER, "http://127.0.0.1:1/jwks.json");
    partner.principal_type = "Service".into();
    partner.groups_claim = Some("groups".into());
    let text = format!(
        "issuers:\n{}{}",
        issuer_yaml(HOME, "User", "groups_claim: groups"),
        issuer_yaml(PARTNER, "Service", "groups_claim: groups")
    );
    let err = Config::from_yaml(std::path::Path::new("cedargate.yaml"), &text)
        .unwrap_err()
        .to_string();
    assert!(err.contains("`issuers[].group_type` = `Group`"), "{err}");
    assert!(err.contains("same_users_as"), "{err}");

    // The outside review: the home issuer asserts no groups (its admins are in entities.json),
    // and a partner asserting `Group` alone was accepted, making its users home admins.
    let text = format!(
        "issuers:\n{}{}",
        issuer_yaml(HOME, "User", ""),
        issuer_yaml(PARTNER, "Service", "groups_claim: groups")
    );
    let err = Config::from_yaml(std::path::Path::new("cedargate.yaml"), &text)
        .unwrap_err()
        .to_string();
    assert!(err.contains("`issuers[].group_type` = `Group`"), "{err}");
    assert!(err.contains("home users"), "{err}");

    // Its own group type is accepted by the configuration, and then must be in the schema:
    // the example schema has no `PartnerGroup`, so start-up names the issuer and the type.
    let text = format!(
        "issuers:\n{}{}",
        issuer_yaml(HOME, "User", "groups_claim: groups"),
        issuer_yaml(
            PARTNER,
            "Service",
            "groups_claim: groups\n    group_type: PartnerGroup"
        )
    );
    let parsed = Config::from_yaml(std::path::Path::new("cedargate.yaml"), &text).unwrap();
    assert_eq!(parsed.issuers[1].group_type, "PartnerGroup");
    partner.group_type = "PartnerGroup".into();
    let err = app::build(config(vec![home, partner]))
        .await
        .map(|_| ())
        .expect_err("start-up must fail")
        .to_string();
    assert!(err.contains(PARTNER), "{err}");
    assert!(err.contains("`PartnerGroup`"), "{err}");
}

fn issuer_yaml(iss: &str, principal_type: &str, extra: &str) -> String {
    issuer_yaml_at(iss, "http://127.0.0.1:1/k", principal_type, extra)
}

fn issuer_yaml_at(iss: &str, jwks: &str, principal_type: &str, extra: &str) -> String {
    format!(
        "  - issuer: {iss}\n    audiences: [orders]\n    jwks: {{ uri: \"{jwks}\", insecure_allow_http: true }}\n    principal_type: {principal_type}\n    {extra}\n"
    )
}

/// The issuers of a configuration file's text, as `serve` reads them.
fn parse_issuers(text: &str) -> Vec<IssuerConfig> {
    Config::from_yaml(std::path::Path::new("cedargate.yaml"), text)
        .unwrap()
        .issuers
}

#[tokio::test]
async fn a_second_issuer_for_the_same_users_shares_their_type_and_groups() {
    let old_key = TestKey::generate(Algorithm::ES256, "old");
    let new_key = TestKey::generate(Algorithm::ES256, "new");
    let old_jwks = JwksServer::start(&[&old_key]).await;
    let new_jwks = JwksServer::start(&[&new_key]).await;
    // An IdP migration: both issuers' `sub` name the same users, and say so.
    let old = test_issuer(HOME, &old_jwks.uri());
    let mut new = test_issuer(PARTNER, &new_jwks.uri());
    new.same_users_as = Some(HOME.into());
    let mut server = TestServer::with_config(config(vec![old, new])).await;
    server.ready().await;

    for (key, iss) in [(&old_key, HOME), (&new_key, PARTNER)] {
        // alice owns order 1002 (entities.json), whichever issuer signed her token.
        let alice = token(key, iss, "alice", &[]);
        let reply = server
            .check(check("GET", "/orders/1002").bearer(&alice).build())
            .await;
        assert_eq!(reply.code(), Code::Ok, "{iss}");
        assert_eq!(reply.meta("principal").as_deref(), Some(r#"User::"alice""#));
        let admin = token(key, iss, "carol", &["admins"]);
        let reply = server
            .check(check("GET", "/orders").bearer(&admin).build())
            .await;
        assert_eq!(reply.code(), Code::Ok, "{iss}");
    }

    // Without `same_users_as`, the same pair is refused at start-up.
    let text = format!(
        "issuers:\n{}{}",
        issuer_yaml(HOME, "User", ""),
        issuer_yaml(PARTNER, "User", "")
    );
    let err = Config::from_yaml(std::path::Path::new("cedargate.yaml"), &text)
        .unwrap_err()
        .to_string();
    assert!(err.contains("`issuers[].principal_type` = `User`"), "{err}");
    // Naming an issuer that is not configured, or a different principal type, is refused.
    for (extra, expected) in [
        (
            "same_users_as: https://nobody.test",
            "`issuers[].same_users_as` = `https://nobody.test`",
        ),
        (
            "same_users_as: https://idp.home.test\n    principal_type: Service",
            "`issuers[].principal_type` = `Service`",
        ),
    ] {
        let text = format!(
            "issuers:\n{}  - issuer: {PARTNER}\n    audiences: [orders]\n    jwks: {{ uri: \"http://127.0.0.1:1/k\", insecure_allow_http: true }}\n    {extra}\n",
            issuer_yaml(HOME, "User", "")
        );
        let err = Config::from_yaml(std::path::Path::new("cedargate.yaml"), &text)
            .unwrap_err()
            .to_string();
        assert!(err.contains(expected), "{extra}: {err}");
    }
    old_jwks.stop().await;
    new_jwks.stop().await;
}
