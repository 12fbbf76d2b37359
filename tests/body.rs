//! Request bodies through the real servers: the example schema declares
//! `context.request.body` (`total?: Long, currency?: String`), so a JSON body Envoy sends with
//! `with_request_body` reaches policies as typed values, over the gRPC Check and over the HTTP
//! authorization service alike; a body that is not JSON, of another shape, nested too deep,
//! over `limits.max_body_bytes` or cut short by Envoy is a deny with its own reason (400 or
//! 413), never an evaluation error; and a schema without `body` never reads one.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use std::path::Path;

use cedargate::config::{Config, PolicySource};
use cedargate::testutil::{TestServer, check, test_config};
use tonic::Code;

/// Anyone may create an order in euros; the example set's `orders-large-need-role` forbids
/// a total over 100000 without the `large-orders` role.
const EUROS: &str = r#"
@id("euros")
permit (principal, action == Action::"orders:create", resource)
when { context.request has body && context.request.body has currency && context.request.body.currency == "EUR" };
"#;

/// The example set plus `extra`, with `schema_edit` applied to its schema.
fn policies_with(extra: &str, schema_edit: impl Fn(String) -> String) -> tempfile::TempDir {
    let dir = support::policies::example_with(&[("body.cedar", extra)]);
    let schema = dir.path().join("schema.cedarschema");
    let text = std::fs::read_to_string(&schema).unwrap();
    std::fs::write(&schema, schema_edit(text)).unwrap();
    dir
}

async fn server(dir: &Path, edit: impl Fn(&mut Config)) -> TestServer {
    let mut config = test_config(PolicySource::Dir(dir.to_owned()));
    config.listen.http = Some(([127, 0, 0, 1], 0).into());
    edit(&mut config);
    let server = TestServer::with_config(config).await;
    server.ready().await;
    server
}

/// (gRPC code, HTTP status of a deny, reason) for `POST /orders` with a JSON `body`.
async fn create(server: &mut TestServer, body: &str, partial: bool) -> (Code, Option<i32>, String) {
    let request = check("POST", "/orders").header("content-type", "application/json");
    send(server, request.body(body), partial).await
}

async fn send(
    server: &mut TestServer,
    mut request: cedargate::testutil::Check,
    partial: bool,
) -> (Code, Option<i32>, String) {
    if partial {
        request = request.header("x-envoy-auth-partial-body", "true");
    }
    let reply = server.check(request.build()).await;
    let reason = if reply.code() == Code::Ok {
        "allow".to_owned()
    } else {
        reply.body()["error"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    };
    (reply.code(), reply.http_status(), reason)
}

#[tokio::test]
async fn a_json_body_reaches_policies_as_typed_values() {
    let dir = policies_with(EUROS, |s| s);
    let mut server = server(dir.path(), |_| {}).await;
    let cases: [(&str, bool, Code, Option<i32>, &str); 11] = [
        (
            r#"{"total": 2500, "currency": "EUR"}"#,
            false,
            Code::Ok,
            None,
            "allow",
        ),
        (
            r#"{"currency": "USD"}"#,
            false,
            Code::PermissionDenied,
            Some(403),
            "policy_denied",
        ),
        // The forbid reads the body's total: over 100000 without the role.
        (
            r#"{"total": 250000, "currency": "EUR"}"#,
            false,
            Code::PermissionDenied,
            Some(403),
            "policy_denied",
        ),
        // Undeclared fields are dropped, whatever their type.
        (
            r#"{"currency": "EUR", "items": [{"sku": 1}], "note": null}"#,
            false,
            Code::Ok,
            None,
            "allow",
        ),
        // No body: `context.request has body` is false.
        (
            "",
            false,
            Code::PermissionDenied,
            Some(403),
            "policy_denied",
        ),
        (
            "total=250000&currency=EUR",
            false,
            Code::InvalidArgument,
            Some(400),
            "bad_body",
        ),
        (
            r#"["EUR"]"#,
            false,
            Code::InvalidArgument,
            Some(400),
            "bad_body",
        ),
        // A total the forbid would compare, of another type: refused, not skipped.
        (
            r#"{"total": "250000", "currency": "EUR"}"#,
            false,
            Code::InvalidArgument,
            Some(400),
            "bad_body",
        ),
        (
            r#"{"total": 2.5e5, "currency": "EUR"}"#,
            false,
            Code::InvalidArgument,
            Some(400),
            "bad_body",
        ),
        // Envoy sent only the first bytes: nothing is decided on part of a body.
        (
            r#"{"total": 2500, "currency": "EUR"}"#,
            true,
            Code::InvalidArgument,
            Some(413),
            "body_too_large",
        ),
        (
            r#"{"currency": "EUR", "x": [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]}"#,
            false,
            Code::InvalidArgument,
            Some(400),
            "bad_body",
        ),
    ];
    for (body, partial, code, status, reason) in cases {
        let said = create(&mut server, body, partial).await;
        assert_eq!(
            said,
            (code, status, reason.to_owned()),
            "{body} (partial: {partial})"
        );
    }
}

/// A body is read one way only: what an upstream's parser could read otherwise is refused.
#[tokio::test]
async fn a_body_an_upstream_could_read_otherwise_is_refused() {
    let dir = policies_with(EUROS, |s| s);
    let mut server = server(dir.path(), |_| {}).await;
    let bad = (Code::InvalidArgument, Some(400), "bad_body".to_owned());
    for body in [
        // A key twice: parsers differ on which one counts.
        r#"{"currency": "EUR", "total": 250000, "total": 5}"#,
        r#"{"currency": "EUR", "total": 250000, "total": null}"#,
        // A declared field spelt otherwise (Go's encoding/json matches keys ignoring case).
        r#"{"currency": "EUR", "Total": 250000}"#,
        r#"{"currency": "EUR", "total": 5, "TOTAL": 250000}"#,
        // A key with a control character (a C parser could end it at the NUL).
        "{\"currency\": \"EUR\", \"total\\u0000\": 250000}",
    ] {
        assert_eq!(create(&mut server, body, false).await, bad, "{body}");
    }
    // The body must say it is JSON: a form reads otherwise.
    let form = check("POST", "/orders")
        .header("content-type", "application/x-www-form-urlencoded")
        .body(r#"{"currency": "EUR", "a": "&total=250000&"}"#);
    assert_eq!(send(&mut server, form, false).await, bad);
    let untyped = check("POST", "/orders").body(r#"{"currency": "EUR"}"#);
    assert_eq!(send(&mut server, untyped, false).await, bad);
    let vendor = check("POST", "/orders")
        .header("content-type", "application/vnd.shop+json; charset=utf-8")
        .body(r#"{"currency": "EUR"}"#);
    assert_eq!(send(&mut server, vendor, false).await.0, Code::Ok);
    // A body the request announces but Envoy did not send (with_request_body off): a 500
    // naming the gateway's setting, not a check without the body.
    let unsent = check("POST", "/orders")
        .header("content-type", "application/json")
        .header("content-length", "30");
    let said = send(&mut server, unsent, false).await;
    assert_eq!(
        said,
        (Code::InvalidArgument, Some(500), "body_not_sent".into())
    );
    let chunked = check("POST", "/orders").header("transfer-encoding", "chunked");
    assert_eq!(send(&mut server, chunked, false).await.2, "body_not_sent");
    // A route whose bodies are not JSON says so in Envoy: no body is read there.
    let upload = check("POST", "/orders")
        .header("content-length", "30")
        .extension("cedargate.body", "off");
    assert_eq!(send(&mut server, upload, false).await.2, "policy_denied");
}

#[tokio::test]
async fn a_body_over_the_limit_is_413_over_grpc_and_http() {
    let dir = policies_with(EUROS, |s| s);
    let mut server = server(dir.path(), |config| config.limits.max_body_bytes = 64).await;
    let small = r#"{"currency": "EUR"}"#;
    let large = format!(r#"{{"currency": "EUR", "pad": "{}"}}"#, "x".repeat(100));
    assert_eq!(create(&mut server, small, false).await.0, Code::Ok);
    let said = create(&mut server, &large, false).await;
    assert_eq!(
        said,
        (Code::InvalidArgument, Some(413), "body_too_large".into())
    );
    // The HTTP authorization service reads the body Envoy's http_service sends, to the limit.
    let client = reqwest::Client::new();
    let post = |body: String| {
        client
            .post(server.http_url("/orders"))
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    let allowed = post(small.to_owned()).await.unwrap();
    assert_eq!(allowed.status(), 200);
    let over = post(large).await.unwrap();
    assert_eq!(over.status(), 413);
    let body: serde_json::Value = serde_json::from_str(&over.text().await.unwrap()).unwrap();
    assert_eq!(body["error"], "body_too_large");
    let not_json = post("total=1".into()).await.unwrap();
    assert_eq!(not_json.status(), 400);
    let denied = post(r#"{"currency": "USD"}"#.into()).await.unwrap();
    assert_eq!(denied.status(), 403);
}

#[tokio::test]
async fn a_schema_without_a_body_never_reads_one() {
    // The example schema without its `body?: RequestBody` line, and no policy reading it.
    let dir = policies_with(
        r#"@id("anyone-creates") permit (principal, action == Action::"orders:create", resource);"#,
        |s| {
            let edited = s.replacen("  body?: RequestBody,\n", "", 1);
            assert_ne!(edited, s);
            edited
        },
    );
    let orders = dir.path().join("orders.cedar");
    let text = std::fs::read_to_string(&orders).unwrap();
    let edited = text.replace(
        "context.request has body && context.request.body has total && context.request.body.total > 100000",
        "false",
    );
    assert_ne!(edited, text);
    std::fs::write(&orders, edited).unwrap();
    let mut server = server(dir.path(), |config| config.limits.max_body_bytes = 8).await;
    for body in [
        "not json at all",
        r#"{"total": "x"}"#,
        "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[",
    ] {
        assert_eq!(create(&mut server, body, false).await.0, Code::Ok, "{body}");
    }
    assert_eq!(create(&mut server, "{}", true).await.0, Code::Ok);
}

#[test]
fn a_body_declared_as_an_entity_stops_the_load() {
    let dir = policies_with(EUROS, |s| {
        s.replacen("body?: RequestBody,", "body?: Order,", 1)
    });
    let err = cedargate::policy::store::load_dir(dir.path())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("request body: `context.request.body` is declared as entity Order"),
        "{err}"
    );
    assert!(err.contains("README: Request bodies"), "{err}");
}
