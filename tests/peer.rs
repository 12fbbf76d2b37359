//! Peer identity from real certificates (rcgen PKI), forwarded as Envoy does: SPIFFE
//! workloads allowed or denied by policy, malformed or expired certificates refused, trust
//! domains allow-listed, certificate-bound tokens (RFC 8705), and Istio's XFCC header.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use cedargate::config::{Config, PolicySource};
use cedargate::decision::PRINCIPAL_HEADER;
use cedargate::testutil::jwt::{JwksServer, TestKey, claims};
use cedargate::testutil::pki::TestCa;
use cedargate::testutil::{CHECKOUT, FRONTEND, TestServer, check, test_config, test_issuer};
use jsonwebtoken::Algorithm;
use serde_json::json;
use tonic::Code;

fn config(tweak: impl FnOnce(&mut Config)) -> Config {
    let mut config = test_config(PolicySource::Embedded);
    tweak(&mut config);
    config
}

#[tokio::test]
async fn spiffe_workloads_from_certificates() {
    let ca = TestCa::new("shop CA");
    let checkout = ca.issue(&[CHECKOUT], &["checkout.shop.svc"]);
    let frontend = ca.issue(&[FRONTEND], &[]);
    let mut server = TestServer::start().await;

    let reply = server
        .check(
            check("POST", "/orders")
                .peer(CHECKOUT)
                .certificate(&checkout.url_encoded())
                .build(),
        )
        .await;
    assert_eq!(reply.code(), Code::Ok);
    assert_eq!(
        reply.header(PRINCIPAL_HEADER).unwrap().0,
        format!(r#"Workload::"{CHECKOUT}""#)
    );

    let reply = server
        .check(
            check("POST", "/orders")
                .peer(FRONTEND)
                .certificate(&frontend.url_encoded())
                .build(),
        )
        .await;
    assert_eq!(reply.http_status(), Some(403));
    assert_eq!(reply.body()["error"], "policy_denied");

    // Without source.principal (no SAN match configured in Envoy) the certificate still names it.
    let reply = server
        .check(
            check("POST", "/orders")
                .certificate(&checkout.url_encoded())
                .build(),
        )
        .await;
    assert_eq!(reply.code(), Code::Ok);
}

#[tokio::test]
async fn bad_certificates_are_refused_with_a_reason() {
    let ca = TestCa::new("shop CA");
    let expired = ca.issue_expired(&[CHECKOUT]);
    let two_uris = ca.issue(&[CHECKOUT, FRONTEND], &[]);
    let bad_spiffe = ca.issue(&["spiffe://shop.example/a/../b"], &[]);
    let frontend = ca.issue(&[FRONTEND], &[]);
    // Review round 2: a certificate was taken as an X509-SVID on its URI SAN alone.
    let as_ca = ca.issue_tweaked(&[CHECKOUT], |p| {
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    });
    // Outside review: a URI SAN `SPIFFE://…` (scheme in another case) was read as no SPIFFE
    // ID at all, skipping the trust-domain allowlist and the SVID checks.
    let upper_scheme = ca.issue(&["SPIFFE://evil.example/x"], &[]);
    let no_key_usage = ca.issue_tweaked(&[CHECKOUT], |p| p.key_usages.clear());
    let signs_certificates = ca.issue_tweaked(&[CHECKOUT], |p| {
        p.key_usages = vec![
            rcgen::KeyUsagePurpose::DigitalSignature,
            rcgen::KeyUsagePurpose::KeyCertSign,
        ];
    });
    let garbage = "-----BEGIN%20CERTIFICATE-----%0AnotDER%0A-----END%20CERTIFICATE-----%0A";
    let mut server = TestServer::start().await;
    let cases = [
        ("expired", expired.url_encoded(), "invalid_peer_certificate"),
        (
            "two URI SANs",
            two_uris.url_encoded(),
            "invalid_peer_certificate",
        ),
        (
            "invalid SPIFFE ID",
            bad_spiffe.url_encoded(),
            "invalid_peer_certificate",
        ),
        (
            "garbage PEM",
            garbage.to_owned(),
            "invalid_peer_certificate",
        ),
        (
            "not URL-encoded UTF-8",
            "%FF%FE".to_owned(),
            "invalid_peer_certificate",
        ),
        (
            "certificate of another workload",
            frontend.url_encoded(),
            "peer_mismatch",
        ),
        (
            "a CA certificate",
            as_ca.url_encoded(),
            "invalid_peer_certificate",
        ),
        (
            "a SPIFFE URI with the scheme in capitals",
            upper_scheme.url_encoded(),
            "invalid_peer_certificate",
        ),
        (
            "an SVID without keyUsage",
            no_key_usage.url_encoded(),
            "invalid_peer_certificate",
        ),
        (
            "an SVID that may sign certificates",
            signs_certificates.url_encoded(),
            "invalid_peer_certificate",
        ),
    ];
    for (name, certificate, reason) in cases {
        let reply = server
            .check(
                check("POST", "/orders")
                    .peer(CHECKOUT)
                    .certificate(&certificate)
                    .build(),
            )
            .await;
        assert_eq!(reply.code(), Code::PermissionDenied, "{name}");
        assert_eq!(reply.http_status(), Some(403), "{name}");
        assert_eq!(reply.body()["error"], reason, "{name}");
    }
}

#[tokio::test]
async fn trust_domains_are_allow_listed() {
    let other_ca = TestCa::new("partner CA");
    let partner = other_ca.issue(&["spiffe://partner.example/ns/x/sa/y"], &[]);
    let mut server = TestServer::with_config(config(|c| {
        c.peer.trust_domains = vec!["shop.example".into()];
    }))
    .await;
    let reply = server
        .check(
            check("GET", "/healthz")
                .certificate(&partner.url_encoded())
                .build(),
        )
        .await;
    assert_eq!(reply.http_status(), Some(403));
    assert_eq!(reply.body()["error"], "untrusted_trust_domain");
    let reply = server
        .check(check("GET", "/healthz").peer(CHECKOUT).build())
        .await;
    assert_eq!(reply.code(), Code::Ok);
    // A principal that claims the spiffe scheme in another spelling is not a name of no
    // trust domain: refused.
    for principal in [
        "SPIFFE://partner.example/ns/x/sa/y",
        "spiffe:/partner.example/x",
    ] {
        let reply = server
            .check(check("GET", "/healthz").peer(principal).build())
            .await;
        assert_eq!(reply.http_status(), Some(403), "{principal}");
        assert_eq!(
            reply.body()["error"],
            "invalid_peer_certificate",
            "{principal}"
        );
    }
}

#[tokio::test]
async fn certificate_bound_tokens() {
    let ca = TestCa::new("shop CA");
    let checkout = ca.issue(&[CHECKOUT], &[]);
    let frontend = ca.issue(&[FRONTEND], &[]);
    let key = TestKey::generate(Algorithm::ES256, "k");
    let jwks = JwksServer::start(&[&key]).await;
    let mut issuer = test_issuer("https://idp.test", &jwks.uri());
    issuer.require_cert_binding = true;
    let mut server = TestServer::with_config(config(|c| c.issuers = vec![issuer])).await;
    server.ready().await;

    let mut bound = claims("https://idp.test", "orders", "alice");
    bound["cnf"] = json!({ "x5t#S256": checkout.x5t_s256() });
    let token = key.sign(&bound);
    let with_cert = |cert: &str, peer: &str| {
        check("GET", "/profiles/alice")
            .bearer(&token)
            .peer(peer)
            .certificate(cert)
            .build()
    };
    let reply = server
        .check(with_cert(&checkout.url_encoded(), CHECKOUT))
        .await;
    assert_eq!(reply.code(), Code::Ok);

    // The same token replayed by another workload, or without a certificate: refused.
    let reply = server
        .check(with_cert(&frontend.url_encoded(), FRONTEND))
        .await;
    assert_eq!(reply.http_status(), Some(401));
    assert_eq!(reply.body()["error"], "cert_binding_mismatch");
    let reply = server
        .check(check("GET", "/profiles/alice").bearer(&token).build())
        .await;
    assert_eq!(reply.body()["error"], "cert_binding_mismatch");

    // A token without cnf from an issuer that requires binding: refused.
    let unbound = key.sign(&claims("https://idp.test", "orders", "alice"));
    let reply = server
        .check(
            check("GET", "/profiles/alice")
                .bearer(&unbound)
                .certificate(&checkout.url_encoded())
                .build(),
        )
        .await;
    assert_eq!(reply.body()["error"], "cert_binding_mismatch");
    jwks.stop().await;
}

#[tokio::test]
async fn xfcc_only_when_trusted() {
    let ca = TestCa::new("mesh CA");
    let checkout = ca.issue(&[CHECKOUT], &[]);
    let xfcc = format!(
        "By=spiffe://shop.example/ns/shop/sa/orders;Hash={};URI={CHECKOUT}",
        checkout.sha256_hex()
    );
    let request = check("POST", "/orders")
        .header("x-forwarded-client-cert", &xfcc)
        .build();

    // Untrusted by default: a client could have written the header itself.
    let mut server = TestServer::start().await;
    let reply = server.check(request.clone()).await;
    assert_eq!(reply.http_status(), Some(403));
    assert_eq!(
        reply.meta("principal").as_deref(),
        Some(r#"Anonymous::"anonymous""#)
    );

    let mut server = TestServer::with_config(config(|c| c.peer.trust_xfcc = true)).await;
    let reply = server.check(request).await;
    assert_eq!(reply.code(), Code::Ok);
    assert_eq!(
        reply.header(PRINCIPAL_HEADER).unwrap().0,
        format!(r#"Workload::"{CHECKOUT}""#)
    );
    let reply = server
        .check(
            check("POST", "/orders")
                .header("x-forwarded-client-cert", "Hash=zz")
                .build(),
        )
        .await;
    assert_eq!(reply.body()["error"], "invalid_peer_certificate");
}
