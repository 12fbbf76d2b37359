//! The Check API over a real socket with a real tonic client, on the example policy set:
//! allow, deny, unknown routes, malformed input and forged identity headers.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use cedargate::decision::{PEER_HEADER, PRINCIPAL_HEADER};
use cedargate::testutil::{CHECKOUT, FRONTEND, TestServer, check};
use envoy_types::pb::envoy::config::core::v3::header_value_option::HeaderAppendAction;
use envoy_types::pb::envoy::service::auth::v3::attribute_context::Request;
use envoy_types::pb::envoy::service::auth::v3::{AttributeContext, CheckRequest};
use serde_json::json;
use tonic::Code;

const OVERWRITE: i32 = HeaderAppendAction::OverwriteIfExistsOrAdd as i32;

#[tokio::test]
async fn checkout_workload_may_create_orders() {
    let mut server = TestServer::start().await;
    let reply = server
        .check(check("POST", "/orders").peer(CHECKOUT).build())
        .await;
    assert_eq!(reply.code(), Code::Ok);
    assert_eq!(
        reply.header(PRINCIPAL_HEADER),
        Some((format!(r#"Workload::"{CHECKOUT}""#), OVERWRITE))
    );
    assert_eq!(
        reply.header(PEER_HEADER),
        Some((CHECKOUT.to_owned(), OVERWRITE))
    );
    assert_eq!(reply.meta("decision").as_deref(), Some("allow"));
    assert_eq!(
        reply.meta("action").as_deref(),
        Some(r#"Action::"orders:create""#)
    );
    assert_eq!(
        reply.meta("resource").as_deref(),
        Some(r#"Collection::"orders""#)
    );
    assert_eq!(
        reply.meta_list("policy_ids"),
        ["orders-checkout-workload-create"]
    );
    assert_eq!(
        reply.meta("request_id").as_deref(),
        Some("5f0c1e52-9c0b-4b8e-8f7e-3d1f2a6b7c8d")
    );
}

#[tokio::test]
async fn other_workload_is_denied_with_403_and_json_body() {
    let mut server = TestServer::start().await;
    let reply = server
        .check(check("POST", "/orders").peer(FRONTEND).build())
        .await;
    assert_eq!(reply.code(), Code::PermissionDenied);
    assert_eq!(reply.http_status(), Some(403));
    assert_eq!(
        reply.body(),
        json!({"error": "policy_denied", "request_id": "5f0c1e52-9c0b-4b8e-8f7e-3d1f2a6b7c8d"})
    );
    assert_eq!(
        reply.header("content-type").map(|h| h.0).as_deref(),
        Some("application/json")
    );
    assert_eq!(
        reply.meta("principal"),
        Some(format!(r#"Workload::"{FRONTEND}""#))
    );
    assert!(reply.meta_list("policy_ids").is_empty());
}

#[tokio::test]
async fn forbid_names_its_policy() {
    let mut server = TestServer::start().await;
    let reply = server
        .check(
            check("GET", "/healthz")
                .peer("spiffe://other.example/ns/x/sa/y")
                .build(),
        )
        .await;
    assert_eq!(reply.http_status(), Some(403));
    assert_eq!(reply.meta_list("policy_ids"), ["foreign-workloads"]);
}

#[tokio::test]
async fn anonymous_reaches_public_paths_only() {
    let mut server = TestServer::start().await;
    let reply = server.check(check("GET", "/healthz").build()).await;
    assert_eq!(reply.code(), Code::Ok);
    assert_eq!(
        reply.header(PRINCIPAL_HEADER),
        Some((r#"Anonymous::"anonymous""#.to_owned(), OVERWRITE))
    );
    assert_eq!(reply.header(PEER_HEADER), None);

    let reply = server.check(check("GET", "/orders/1001").build()).await;
    assert_eq!(reply.http_status(), Some(403));
}

#[tokio::test]
async fn unknown_routes() {
    let mut server = TestServer::start().await;
    // A GET no route names falls back to Action::"GET" on Path::"<path>", which no policy permits.
    let reply = server
        .check(check("GET", "/admin/users").peer(CHECKOUT).build())
        .await;
    assert_eq!(reply.http_status(), Some(403));
    assert_eq!(reply.body()["error"], "policy_denied");
    assert_eq!(
        reply.meta("resource").as_deref(),
        Some(r#"Path::"/admin/users""#)
    );
    // A method whose fallback action the schema does not declare is a deny before Cedar runs.
    let reply = server
        .check(check("DELETE", "/orders/1001").peer(CHECKOUT).build())
        .await;
    assert_eq!(reply.code(), Code::PermissionDenied);
    assert_eq!(reply.http_status(), Some(403));
    assert_eq!(reply.body()["error"], "no_route");
}

#[tokio::test]
async fn malformed_paths_are_400_or_414() {
    let mut server = TestServer::start().await;
    let overlong = format!("/healthz?{}", "a".repeat(9000));
    let cases = [
        ("/a/../healthz", 400, "malformed_request"),
        ("/healthz/%2e%2e/orders", 400, "malformed_request"),
        ("/orders%2F1001", 400, "malformed_request"),
        ("/orders\\1001", 400, "malformed_request"),
        ("/healthz%zz", 400, "malformed_request"),
        ("/healthz%00", 400, "malformed_request"),
        ("healthz", 400, "malformed_request"),
        (overlong.as_str(), 414, "path_too_long"),
    ];
    for (path, status, error) in cases {
        let reply = server.check(check("GET", path).build()).await;
        assert_eq!(reply.code(), Code::InvalidArgument, "{path}");
        assert_eq!(reply.http_status(), Some(status), "{path}");
        assert_eq!(reply.body()["error"], error, "{path}");
        // A deny carries no identity header for the upstream.
        assert_eq!(reply.header(PRINCIPAL_HEADER), None, "{path}");
    }
}

#[tokio::test]
async fn missing_attributes_are_denied() {
    let mut server = TestServer::start().await;
    let empty = [
        CheckRequest { attributes: None },
        CheckRequest {
            attributes: Some(AttributeContext::default()),
        },
        CheckRequest {
            attributes: Some(AttributeContext {
                request: Some(Request::default()),
                ..AttributeContext::default()
            }),
        },
    ];
    for request in empty {
        let reply = server.check(request).await;
        assert_eq!(reply.http_status(), Some(400));
        assert_eq!(reply.body()["error"], "malformed_request");
    }
    // An HTTP request without a method.
    let reply = server.check(check("", "/healthz").build()).await;
    assert_eq!(reply.http_status(), Some(400));
}

#[tokio::test]
async fn non_utf8_header_value_is_denied() {
    let mut server = TestServer::start().await;
    let reply = server
        .check(
            check("GET", "/healthz")
                .raw_header("x-legacy", &[0x66, 0xff, 0x6f])
                .build(),
        )
        .await;
    assert_eq!(reply.code(), Code::InvalidArgument);
    assert_eq!(reply.http_status(), Some(400));
    // The same request with valid raw bytes passes, so the raw path itself works.
    let reply = server
        .check(
            check("GET", "/healthz")
                .raw_header("x-legacy", b"fine")
                .build(),
        )
        .await;
    assert_eq!(reply.code(), Code::Ok);
}

#[tokio::test]
async fn forged_identity_headers_never_reach_the_upstream() {
    let mut server = TestServer::start().await;
    let forged = check("GET", "/healthz")
        .header(PRINCIPAL_HEADER, r#"User::"admin""#)
        .header(PEER_HEADER, "spiffe://shop.example/ns/shop/sa/checkout")
        .header("x-cedargate-role", "admin");

    // Anonymous: the principal header is overwritten, every other forged header removed.
    let reply = server.check(forged.clone().build()).await;
    assert_eq!(reply.code(), Code::Ok);
    assert_eq!(
        reply.header(PRINCIPAL_HEADER),
        Some((r#"Anonymous::"anonymous""#.to_owned(), OVERWRITE))
    );
    let mut removed = reply.removed();
    removed.sort();
    // cedargate's identity headers and their `_` spellings are removed whether or not the
    // Check showed them (Envoy's allowed_headers may hide them); an anonymous caller has no
    // subject or issuer, so those are removed too.
    assert_eq!(
        removed,
        [
            "x-cedargate-dry-run",
            "x-cedargate-issuer",
            PEER_HEADER,
            "x-cedargate-role",
            "x-cedargate-subject",
            "x_cedargate_action",
            "x_cedargate_dry_run",
            "x_cedargate_issuer",
            "x_cedargate_peer_spiffe_id",
            "x_cedargate_principal",
            "x_cedargate_subject",
        ]
    );

    // The underscore spelling, which many frameworks read as the same header, is removed too.
    let reply = server
        .check(
            check("GET", "/healthz")
                .header("x_cedargate_peer_spiffe_id", "spiffe://x/y")
                .build(),
        )
        .await;
    let removed = reply.removed();
    assert!(
        removed.contains(&"x_cedargate_peer_spiffe_id".to_owned()),
        "{removed:?}"
    );
    // Identity headers cedargate does not set are removed even when the Check did not show them.
    assert!(removed.contains(&PEER_HEADER.to_owned()), "{removed:?}");

    // A workload: its own peer header overwrites the forged one; the rest is removed.
    let reply = server.check(forged.peer(FRONTEND).build()).await;
    assert_eq!(
        reply.header(PEER_HEADER),
        Some((FRONTEND.to_owned(), OVERWRITE))
    );
    let removed = reply.removed();
    assert!(!removed.contains(&PEER_HEADER.to_owned()), "{removed:?}");
    assert!(
        removed.contains(&"x-cedargate-role".to_owned()),
        "{removed:?}"
    );
}

#[tokio::test]
async fn context_extensions_override_the_route_table() {
    let mut server = TestServer::start().await;
    let reply = server
        .check(
            check("GET", "/v2/checkout")
                .peer(CHECKOUT)
                .extension("cedargate.action", "orders:create")
                .extension("cedargate.resource", r#"Collection::"orders""#)
                .build(),
        )
        .await;
    assert_eq!(reply.code(), Code::Ok);
    assert_eq!(
        reply.meta("action").as_deref(),
        Some(r#"Action::"orders:create""#)
    );

    // An extension naming an action the schema lacks is an unknown route.
    let reply = server
        .check(
            check("GET", "/healthz")
                .extension("cedargate.action", "orders:delete")
                .build(),
        )
        .await;
    assert_eq!(reply.body()["error"], "no_route");

    // A resource that is not Cedar syntax is an operator error: deny with 500.
    let reply = server
        .check(
            check("GET", "/healthz")
                .extension("cedargate.resource", "not a uid")
                .build(),
        )
        .await;
    assert_eq!(reply.code(), Code::Internal);
    assert_eq!(reply.http_status(), Some(500));
    assert_eq!(reply.body()["error"], "mapping_error");
}
