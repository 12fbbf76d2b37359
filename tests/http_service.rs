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

#[tokio::test]
async fn connections_beyond_the_cap_are_closed_and_headers_over_the_limit_get_cedargates_431() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let key = TestKey::generate(Algorithm::ES256, "k1");
    let jwks = JwksServer::start(&[&key]).await;
    let mut config: Config = test_config(PolicySource::Embedded);
    config.issuers = vec![test_issuer(ISS, &jwks.uri())];
    config.listen.http = Some(([127, 0, 0, 1], 0).into());
    config.limits.max_http_connections = 2;
    config.limits.max_headers = 20;
    let server = TestServer::with_config(config).await;
    server.ready().await;
    let addr = server.app.http_addr.unwrap();

    // Two idle connections hold both places; a third is closed without an answer.
    let held = [
        tokio::net::TcpStream::connect(addr).await.unwrap(),
        tokio::net::TcpStream::connect(addr).await.unwrap(),
    ];
    let mut third = tokio::net::TcpStream::connect(addr).await.unwrap();
    let _ = third
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: shop.example\r\n\r\n")
        .await;
    let mut answer = Vec::new();
    let _ = third.read_to_end(&mut answer).await;
    assert!(answer.is_empty(), "{}", String::from_utf8_lossy(&answer));
    let metrics = server.metrics().await;
    assert!(
        cedargate::testutil::metric_value(
            &metrics,
            "cedargate_rejected_total",
            &[("reason", "http_connections")]
        ) >= 1.0
    );
    drop(held);

    // The places come back once those connections close.
    let client = client();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let reply = loop {
        match client
            .get(server.http_url("/healthz"))
            .header("host", "shop.example")
            .send()
            .await
        {
            Ok(reply) => break reply,
            Err(err) => assert!(std::time::Instant::now() < deadline, "{err}"),
        }
    };
    assert_eq!(reply.status(), 200);

    // Over limits.max_headers: cedargate's own 431 with its JSON body, not hyper's.
    let mut many = client
        .get(server.http_url("/healthz"))
        .header("host", "shop.example");
    for i in 0..25 {
        many = many.header(format!("x-h{i}"), "v");
    }
    let reply = many.send().await.unwrap();
    assert_eq!(reply.status(), 431);
    let body: serde_json::Value = serde_json::from_str(&reply.text().await.unwrap()).unwrap();
    assert_eq!(body["error"], "headers_too_large");
    jwks.stop().await;
}
