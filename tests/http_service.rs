//! The HTTP authorization service (`listen.http`) over a real socket with a real HTTP client:
//! every request of a grid is decided through it and through the gRPC Check of the same
//! server, and both answers must say the same (status, headers, removals, body); the
//! `path_prefix` and the forward-auth mode read the original request as documented.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::collections::BTreeSet;

use cedargate::config::{Config, OriginalRequest, PolicySource};
use cedargate::decision::PRINCIPAL_HEADER;
use cedargate::server::envoy::builder::CheckBuilder;
use cedargate::server::http::HEADERS_TO_REMOVE;
use cedargate::testutil::jwt::{JwksServer, TestKey, claims};
use cedargate::testutil::{TestServer, test_config, test_issuer};
use jsonwebtoken::Algorithm;

const ISS: &str = "https://idp.test";

async fn server(jwks: &JwksServer, prefix: &str, request: OriginalRequest) -> TestServer {
    let mut config: Config = test_config(PolicySource::Embedded);
    config.issuers = vec![test_issuer(ISS, &jwks.uri())];
    config.auth.forward_token = false;
    config.listen.http = Some(([127, 0, 0, 1], 0).into());
    config.http_service.path_prefix = prefix.to_owned();
    config.http_service.request = request;
    let server = TestServer::with_config(config).await;
    server.ready().await;
    server
}

fn client() -> reqwest::Client {
    cedargate::app::install_crypto_provider();
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// What an answer tells the proxy, in a form both transports can be compared in.
#[derive(Debug, PartialEq, Eq)]
struct Said {
    status: u16,
    headers: BTreeSet<(String, String)>,
    removed: BTreeSet<String>,
    body: String,
}

#[tokio::test]
async fn the_http_service_decides_as_the_grpc_check_does() {
    let key = TestKey::generate(Algorithm::ES256, "k1");
    let jwks = JwksServer::start(&[&key]).await;
    let mut server = server(&jwks, "/authz", OriginalRequest::Envoy).await;
    let client = client();
    let alice = key.sign(&claims(ISS, "orders", "alice"));
    let admin = key.sign(&claims(ISS, "orders", "1001"));
    let tokens = [
        None,
        Some(alice.as_str()),
        Some(admin.as_str()),
        Some("not.a.jwt"),
    ];
    let requests = [
        ("GET", "/orders"),
        ("GET", "/orders?limit=5"),
        ("GET", "/orders/42"),
        ("POST", "/orders"),
        ("DELETE", "/orders/42"),
        ("GET", "/profiles/alice"),
        ("PUT", "/profiles/alice"),
        ("GET", "/profiles/bob"),
        ("GET", "/healthz"),
        ("GET", "/orders/%2F42"),
        ("GET", "/orders?a=1&a=2"),
    ];
    let mut allowed = 0;
    let mut statuses = BTreeSet::new();
    for (n, (method, path)) in requests.iter().enumerate() {
        for (t, token) in tokens.iter().enumerate() {
            for forged in [false, true] {
                let id = format!("req-{n}-{t}-{forged}");
                let mut check = CheckBuilder::new(method, path)
                    .host("shop.example")
                    .scheme("http")
                    .header("x-request-id", &id);
                let mut http = client
                    .request(
                        method.parse().unwrap(),
                        server.http_url(&format!("/authz{path}")),
                    )
                    .header("host", "shop.example")
                    .header("x-request-id", &id);
                if let Some(token) = token {
                    check = check.bearer(token);
                    http = http.bearer_auth(token);
                }
                if forged {
                    check = check.header(PRINCIPAL_HEADER, r#"User::"1001""#);
                    http = http.header(PRINCIPAL_HEADER, r#"User::"1001""#);
                }
                let grpc = server.check(check.build()).await;
                let reply = http.send().await.unwrap();
                let status = reply.status().as_u16();
                let removed = reply
                    .headers()
                    .get(HEADERS_TO_REMOVE)
                    .map(|v| {
                        v.to_str()
                            .unwrap()
                            .split(',')
                            .map(|s| s.trim().to_owned())
                            .collect()
                    })
                    .unwrap_or_default();
                // The HTTP answer's own framing headers are not part of the decision.
                let headers = reply
                    .headers()
                    .iter()
                    .filter(|(name, _)| {
                        !matches!(name.as_str(), "content-length" | "date" | HEADERS_TO_REMOVE)
                    })
                    .map(|(name, value)| {
                        (name.as_str().to_owned(), value.to_str().unwrap().to_owned())
                    })
                    .collect();
                let over_http = Said {
                    status,
                    headers,
                    removed,
                    body: reply.text().await.unwrap(),
                };
                let over_grpc = Said {
                    status: grpc
                        .http_status()
                        .map_or(200, |s| u16::try_from(s).unwrap()),
                    headers: grpc.headers().into_iter().collect(),
                    removed: grpc.removed().into_iter().collect(),
                    body: grpc.body_text(),
                };
                assert_eq!(
                    over_http, over_grpc,
                    "{method} {path} token {t} forged {forged}"
                );
                if status == 200 {
                    allowed += 1;
                    // A forged identity header is overwritten (set) or removed, never kept.
                    assert!(
                        over_http.headers.iter().any(|(k, _)| k == PRINCIPAL_HEADER)
                            || over_http.removed.contains(PRINCIPAL_HEADER),
                        "{method} {path}"
                    );
                }
                statuses.insert(status);
            }
        }
    }
    // The grid reaches allows and each kind of deny, so the comparison compared something.
    assert!(allowed >= 6, "{allowed} allowed");
    for status in [200, 400, 401, 403] {
        assert!(statuses.contains(&status), "no {status} in {statuses:?}");
    }
    jwks.stop().await;
}

#[tokio::test]
async fn a_request_outside_the_path_prefix_is_refused() {
    let key = TestKey::generate(Algorithm::ES256, "k1");
    let jwks = JwksServer::start(&[&key]).await;
    let server = server(&jwks, "/authz", OriginalRequest::Envoy).await;
    let client = client();
    let alice = key.sign(&claims(ISS, "orders", "alice"));
    for outside in ["/profiles/alice", "/authzprofiles/alice"] {
        let reply = client
            .get(server.http_url(outside))
            .header("host", "shop.example")
            .bearer_auth(&alice)
            .send()
            .await
            .unwrap();
        assert_eq!(reply.status(), 400, "{outside}");
        let body: serde_json::Value = serde_json::from_str(&reply.text().await.unwrap()).unwrap();
        assert_eq!(body["error"], "malformed_request", "{outside}");
    }
    let inside = client
        .get(server.http_url("/authz/profiles/alice"))
        .header("host", "shop.example")
        .bearer_auth(&alice)
        .send()
        .await
        .unwrap();
    assert_eq!(inside.status(), 200);
    assert_eq!(
        inside.headers()[PRINCIPAL_HEADER].to_str().unwrap(),
        r#"User::"alice""#
    );
    jwks.stop().await;
}

#[tokio::test]
async fn forward_auth_reads_the_original_request_from_the_forwarded_headers() {
    let key = TestKey::generate(Algorithm::ES256, "k1");
    let jwks = JwksServer::start(&[&key]).await;
    let server = server(&jwks, "", OriginalRequest::Forwarded).await;
    let client = client();
    let alice = key.sign(&claims(ISS, "orders", "alice"));
    // Traefik and nginx call one fixed URL with GET; the original is in X-Forwarded-*.
    let ask = |uri: &str, method: &str| {
        client
            .get(server.http_url("/auth"))
            .bearer_auth(&alice)
            .header("x-forwarded-method", method)
            .header("x-forwarded-uri", uri)
            .header("x-forwarded-host", "shop.example")
            .header("x-forwarded-proto", "https")
            .send()
    };
    assert_eq!(ask("/profiles/alice", "GET").await.unwrap().status(), 200);
    assert_eq!(ask("/profiles/bob", "GET").await.unwrap().status(), 403);
    assert_eq!(ask("/profiles/alice", "PUT").await.unwrap().status(), 200);
    assert_eq!(
        ask("/profiles/alice", "DELETE").await.unwrap().status(),
        403
    );
    // Without the original request there is nothing to decide on: 400, never an allow.
    let bare = client
        .get(server.http_url("/profiles/alice"))
        .bearer_auth(&alice)
        .send()
        .await
        .unwrap();
    assert_eq!(bare.status(), 400);
    let body: serde_json::Value = serde_json::from_str(&bare.text().await.unwrap()).unwrap();
    assert_eq!(body["error"], "malformed_request", "{body}");
    jwks.stop().await;
}
