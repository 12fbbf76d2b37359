//! Property tests for the parsers that read attacker-controlled input: request normalisation,
//! token extraction and inspection, peer certificates and XFCC. For any input they return
//! (never panic), and what they accept satisfies the rules the rest of cedargate relies on.
//! A last property runs arbitrary tokens and paths through the real server: never an allow.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::collections::BTreeMap;

use cedargate::config::TokenSource;
use cedargate::identity::peer::{parse_certificate, parse_xfcc};
use cedargate::identity::token::{extract, inspect};
use cedargate::request::{RawHeader, RawHttp, normalise};
use cedargate::testutil::pki::TestCa;
use proptest::prelude::*;

/// Request targets built from the pieces that matter: separators, dots, escapes, semicolons.
fn target() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        Just("/".to_owned()),
        Just(".".to_owned()),
        Just("..".to_owned()),
        Just(";".to_owned()),
        Just("%".to_owned()),
        Just("%2e".to_owned()),
        Just("%2F".to_owned()),
        Just("%25".to_owned()),
        Just("%5c".to_owned()),
        Just("%00".to_owned()),
        Just("?".to_owned()),
        Just("#".to_owned()),
        "[a-zA-Z0-9]{1,4}",
        "\\PC{1,3}",
    ];
    prop::collection::vec(piece, 0..12).prop_map(|p| p.concat())
}

fn raw(method: String, target: String, headers: Vec<(String, Vec<u8>)>) -> RawHttp {
    RawHttp {
        method,
        target,
        host: "h".into(),
        headers: headers
            .into_iter()
            .map(|(name, value)| RawHeader { name, value })
            .collect(),
        ..RawHttp::default()
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn normalisation_never_panics_and_keeps_its_promises(
        method in "[A-Z]{1,7}|\\PC{0,4}",
        target in target(),
        headers in prop::collection::vec(("[a-zA-Z-]{1,8}", prop::collection::vec(any::<u8>(), 0..16)), 0..6),
    ) {
        if let Ok(req) = normalise(raw(method, target, headers), 256) {
            prop_assert!(req.path.starts_with('/'));
            prop_assert!(!req.path.contains('\\'));
            prop_assert!(!req.path.chars().any(char::is_control));
            for segment in req.path.split('/') {
                let head = segment.split(';').next().unwrap_or_default();
                prop_assert!(head != "." && head != "..", "{}", req.path);
            }
            let bytes = req.path.as_bytes();
            prop_assert!(!bytes.windows(3).any(|w| w[0] == b'%' && w[1].is_ascii_hexdigit() && w[2].is_ascii_hexdigit()), "{}", req.path);
            prop_assert!(req.headers.keys().all(|k| k == &k.to_ascii_lowercase()));
            prop_assert!(!req.request_id.is_empty() && req.request_id.len() <= 128);
        }
    }

    #[test]
    fn token_extraction_and_inspection_never_panic(
        authorization in "\\PC{0,40}|Bearer \\PC{0,40}|[Bb]earer[ \t]+[A-Za-z0-9_.-]{0,60}",
        token in "[A-Za-z0-9_=.+/-]{0,200}|\\PC{0,100}",
    ) {
        let headers = BTreeMap::from([("authorization".to_owned(), authorization)]);
        let _ = extract(&headers, &BTreeMap::new(), &TokenSource::default());
        let _ = inspect(&token, 8192);
    }

    #[test]
    fn inspection_of_structured_garbage_never_panics(
        header in prop::collection::vec(any::<u8>(), 0..64),
        payload in prop::collection::vec(any::<u8>(), 0..64),
        sig in prop::collection::vec(any::<u8>(), 0..16),
    ) {
        use base64::Engine;
        let b = |v: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v);
        let _ = inspect(&format!("{}.{}.{}", b(&header), b(&payload), b(&sig)), 8192);
    }

    #[test]
    fn xfcc_and_certificate_text_never_panic(text in "\\PC{0,200}") {
        let _ = parse_xfcc(&text);
        let _ = parse_certificate(&text, 0);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn mutated_certificates_never_panic_and_keep_their_identity(
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
    ) {
        use base64::Engine;
        let cert = TestCa::new("prop CA").issue(&["spiffe://td/ns/a/sa/b"], &["b.td"]);
        let mut der = cert.der.clone();
        for (index, byte) in &flips {
            let i = index.index(der.len());
            der[i] ^= byte | 1;
        }
        let b64 = base64::engine::general_purpose::STANDARD.encode(&der);
        let pem = format!("-----BEGIN CERTIFICATE-----\n{b64}\n-----END CERTIFICATE-----\n");
        let url = percent_encoding::utf8_percent_encode(&pem, percent_encoding::NON_ALPHANUMERIC).to_string();
        // A mutated certificate either fails to parse or still yields well-formed fields;
        // whether its signature is valid is Envoy's handshake's concern, not this parser's.
        if let Ok(parsed) = parse_certificate(&url, 1_700_000_000)
            && let Some(id) = &parsed.spiffe_id
        {
            prop_assert!(id.to_string().starts_with("spiffe://"));
        }
    }
}

/// Arbitrary bearer tokens and paths through the real server: never an allow. Without a
/// valid token the example policies allow only `/healthz` (public) and nothing under `/orders`.
#[tokio::test]
async fn arbitrary_tokens_and_paths_are_never_allowed() {
    use cedargate::config::PolicySource;
    use cedargate::testutil::jwt::{JwksServer, TestKey};
    use cedargate::testutil::{TestServer, check, test_config, test_issuer};
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;

    let key = TestKey::generate(jsonwebtoken::Algorithm::ES256, "k");
    let jwks = JwksServer::start(&[&key]).await;
    let mut config = test_config(PolicySource::Embedded);
    config.issuers = vec![test_issuer("https://idp.test", &jwks.uri())];
    let mut server = TestServer::with_config(config).await;
    server.ready().await;
    let mut runner = TestRunner::default();
    let tokens =
        "[A-Za-z0-9_.-]{0,120}|eyJ[A-Za-z0-9_-]{0,40}\\.[A-Za-z0-9_-]{0,80}\\.[A-Za-z0-9_-]{0,40}";
    // Mostly well-formed paths, so that most cases reach authentication and policy.
    let paths = "/orders(/[a-z0-9]{1,8}){0,2}|/profiles/[a-z]{1,6}|/orders(/[a-z0-9%.;]{0,8}){0,3}";
    for _ in 0..300 {
        let token = tokens.new_tree(&mut runner).unwrap().current();
        let path = paths.new_tree(&mut runner).unwrap().current();
        let reply = server
            .check(check("GET", &path).bearer(&token).build())
            .await;
        assert_ne!(
            reply.code(),
            tonic::Code::Ok,
            "{path} with {token:?} was allowed"
        );
    }
    jwks.stop().await;
}
