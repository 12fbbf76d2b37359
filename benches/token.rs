//! Token verification cost: cold (inspect + signature + claims, per algorithm) against the raw
//! signature check of the crypto backend (aws-lc-rs) measured in the same run, and the cached
//! path (SHA-256 of the token + one concurrent-map hit).
//!
//! Run: `cargo bench --bench token`
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::hint::black_box;

use cedargate::config::{AuthSettings, JwksSource};
use cedargate::identity::authn::Authenticator;
use cedargate::identity::{jwks, token};
use cedargate::request::HttpRequest;
use cedargate::testutil::jwt::{TestKey, claims, now};
use cedargate::testutil::test_issuer;
use criterion::{Criterion, criterion_group, criterion_main};
use jsonwebtoken::Algorithm;
use serde_json::json;

const ISS: &str = "https://idp.bench";

fn bench(c: &mut Criterion) {
    for alg in [Algorithm::ES256, Algorithm::EdDSA, Algorithm::RS256] {
        let key = TestKey::generate(alg, "k");
        let keys = jwks::parse(json!({ "keys": [key.jwk] }).to_string().as_bytes()).unwrap();
        let policy = token::IssuerPolicy::new(test_issuer(ISS, "http://127.0.0.1:1/unused"));
        let token = key.sign(&claims(ISS, "orders", "alice"));
        let inspected = token::inspect(&token, 8192).unwrap();
        policy.verify(&token, &inspected, &keys, now()).unwrap();

        let (message, signature) = token.rsplit_once('.').unwrap();
        let decoding = &keys.find(Some("k")).unwrap().key;
        assert!(
            jsonwebtoken::crypto::verify(signature, message.as_bytes(), decoding, alg).unwrap()
        );

        let name = format!("{alg:?}");
        c.bench_function(&format!("signature_only/{name}"), |b| {
            b.iter(|| {
                jsonwebtoken::crypto::verify(
                    black_box(signature),
                    message.as_bytes(),
                    decoding,
                    alg,
                )
            })
        });
        c.bench_function(&format!("verify_cold/{name}"), |b| {
            b.iter(|| {
                let inspected = token::inspect(black_box(&token), 8192).unwrap();
                policy.verify(&token, &inspected, &keys, now()).unwrap()
            })
        });
    }

    // The cached path through the real Authenticator (keys from a file).
    let key = TestKey::generate(Algorithm::ES256, "k");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("jwks.json");
    std::fs::write(&file, json!({ "keys": [key.jwk] }).to_string()).unwrap();
    let mut issuer = test_issuer(ISS, "http://127.0.0.1:1/unused");
    issuer.jwks = JwksSource::File(file);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let authn = runtime
        .block_on(async { Authenticator::start(vec![issuer], AuthSettings::default()) })
        .unwrap();
    let token = key.sign(&claims(ISS, "orders", "alice"));
    let http = HttpRequest {
        method: "GET".into(),
        host: "shop.example".into(),
        path: "/profiles/alice".into(),
        scheme: "https".into(),
        protocol: "HTTP/1.1".into(),
        query: Default::default(),
        headers: [("authorization".to_owned(), format!("Bearer {token}"))].into(),
        request_id: "bench".into(),
    };
    assert!(
        runtime
            .block_on(authn.authenticate(&http, now()))
            .unwrap()
            .is_some()
    );
    let verified = authn.verifications();
    c.bench_function("verify_cached/ES256", |b| {
        b.to_async(&runtime)
            .iter(|| async { authn.authenticate(black_box(&http), now()).await.unwrap() })
    });
    assert_eq!(
        authn.verifications(),
        verified,
        "the cached path verified a signature"
    );
}

criterion_group!(benches, bench);
criterion_main!(benches);
