//! Network and route facts as Cedar values, through the real gRPC server: `context.peer.ip`
//! (an `ipaddr`, from Envoy's source address or, with `peer.xff_trusted_hops`, from
//! `x-forwarded-for`), `context.destination` (Envoy's destination address, port and
//! principal) and `context.request.extensions` (Envoy's per-route `context_extensions` as
//! tags); a schema written before these facts still loads, and a schema that declares one
//! with another type than cedargate builds is refused at start-up.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use std::path::Path;

use cedargate::app;
use cedargate::config::PolicySource;
use cedargate::testutil::{TestServer, check, test_config};
use tonic::Code;

/// The example set, plus `extra` as one more policy file.
fn policies_with(extra: &str) -> tempfile::TempDir {
    support::policies::example_with(&[("network.cedar", extra)])
}

const ADMIN_FROM_INSIDE: &str = r#"
// The health page only from the internal network, and only through the 8443 listener.
@id("health-inside")
forbid (principal, action, resource == Path::"/healthz")
unless {
  context.peer has ip && context.peer.ip.isInRange(ip("10.0.0.0/8")) &&
  context has destination && context.destination has port && context.destination.port == 8443
};
"#;

async fn server(dir: &Path, hops: usize) -> TestServer {
    let mut config = test_config(PolicySource::Dir(dir.to_owned()));
    config.peer.xff_trusted_hops = hops;
    TestServer::with_config(config).await
}

#[tokio::test]
async fn the_client_address_and_the_destination_are_typed_values() {
    let dir = policies_with(ADMIN_FROM_INSIDE);
    let mut server = server(dir.path(), 0).await;
    let health = || check("GET", "/healthz");
    let inside = server
        .check(health().address("10.1.2.3", 40000).build())
        .await;
    assert_eq!(inside.code(), Code::Ok);
    let outside = server
        .check(health().address("192.168.1.9", 40000).build())
        .await;
    assert_eq!(outside.code(), Code::PermissionDenied);
    assert_eq!(outside.body()["error"], "policy_denied");
    // IPv6 is an ipaddr too (and outside 10/8).
    let v6 = server
        .check(health().address("fd00::1", 40000).build())
        .await;
    assert_eq!(v6.code(), Code::PermissionDenied);
    // Another listener port: the destination says so.
    let other_port = server
        .check(
            health()
                .address("10.1.2.3", 40000)
                .destination("10.9.9.9", 9443, "")
                .build(),
        )
        .await;
    assert_eq!(other_port.code(), Code::PermissionDenied);
    // Without the trusted-hops setting, x-forwarded-for is not read: a client cannot claim
    // an inside address with it.
    let forged = server
        .check(
            health()
                .address("192.168.1.9", 40000)
                .header("x-forwarded-for", "10.0.0.1")
                .build(),
        )
        .await;
    assert_eq!(forged.code(), Code::PermissionDenied);
}

#[tokio::test]
async fn trusted_hops_take_the_client_address_from_x_forwarded_for() {
    let dir = policies_with(ADMIN_FROM_INSIDE);
    // One trusted proxy in front of Envoy: it appended the address it received from.
    let mut server = server(dir.path(), 1).await;
    let ask = |xff: Option<&str>| {
        let mut request = check("GET", "/healthz").address("192.168.7.7", 40000);
        if let Some(xff) = xff {
            request = request.header("x-forwarded-for", xff);
        }
        request.build()
    };
    assert_eq!(server.check(ask(Some("10.0.0.5"))).await.code(), Code::Ok);
    // The client wrote the first entry itself; the proxy's (last) one counts.
    assert_eq!(
        server.check(ask(Some("10.6.6.6, 172.16.0.1"))).await.code(),
        Code::PermissionDenied
    );
    assert_eq!(
        server.check(ask(Some("172.16.0.1, 10.0.0.5"))).await.code(),
        Code::Ok
    );
    // No header, or no address in the trusted place: no ip, never the proxy's address.
    for xff in [None, Some("not-an-ip"), Some("")] {
        assert_eq!(
            server.check(ask(xff)).await.code(),
            Code::PermissionDenied,
            "{xff:?}"
        );
    }
    let mut two = self::server(dir.path(), 2).await;
    assert_eq!(
        two.check(ask(Some("10.0.0.5, 172.16.0.1"))).await.code(),
        Code::Ok
    );
    assert_eq!(
        two.check(ask(Some("10.0.0.5"))).await.code(),
        Code::PermissionDenied,
        "fewer entries than trusted hops"
    );
}

#[tokio::test]
async fn a_schema_that_declares_a_fact_with_another_type_is_refused() {
    let dir = policies_with(
        r#"@id("by-text") forbid (principal, action, resource)
           unless { context.peer has ip && context.peer.ip == "10.0.0.1" };"#,
    );
    let schema = dir.path().join("schema.cedarschema");
    let text = std::fs::read_to_string(&schema)
        .unwrap()
        .replace("ip?: ipaddr,\n};", "ip?: String,\n};");
    std::fs::write(&schema, text).unwrap();
    app::install_crypto_provider();
    let Err(err) = app::build(test_config(PolicySource::Dir(dir.path().to_owned()))).await else {
        panic!("start-up accepted a schema declaring `ip?: String`");
    };
    let err = err.to_string();
    assert!(err.contains("context.peer.ip"), "{err}");
    assert!(err.contains("ip?: ipaddr"), "{err}");
}

#[tokio::test]
async fn a_routes_context_extensions_are_tags_policies_read() {
    let dir = policies_with(
        r#"@id("internal-routes-only")
           forbid (principal, action, resource == Path::"/healthz")
           unless {
             context.request.extensions.hasTag("zone") &&
             context.request.extensions.getTag("zone") == "internal"
           };"#,
    );
    let mut server = server(dir.path(), 0).await;
    let health = || check("GET", "/healthz");
    let code = |reply: cedargate::testutil::Reply| reply.code();
    assert_eq!(
        code(
            server
                .check(health().extension("zone", "internal").build())
                .await
        ),
        Code::Ok
    );
    assert_eq!(
        code(
            server
                .check(health().extension("zone", "external").build())
                .await
        ),
        Code::PermissionDenied
    );
    assert_eq!(
        code(server.check(health().build()).await),
        Code::PermissionDenied
    );
}

#[tokio::test]
async fn a_schema_without_the_optional_facts_still_loads_and_decides() {
    let dir = policies_with("");
    let schema = dir.path().join("schema.cedarschema");
    let text = std::fs::read_to_string(&schema)
        .unwrap()
        .replace("entity ContextExtensions tags String;", "")
        .replace("  extensions: ContextExtensions,\n", "")
        .replace("entity RouteMetadata tags String;", "")
        .replace("  route_metadata: RouteMetadata,\n", "")
        .replace("  ip?: ipaddr,\n};", "};")
        .replace("  destination?: DestinationInfo,\n", "");
    assert!(
        !text.contains("ContextExtensions")
            && !text.contains("RouteMetadata")
            && !text.contains("destination?")
    );
    std::fs::write(&schema, text).unwrap();
    std::fs::remove_file(dir.path().join("network.cedar")).unwrap();
    let mut server = server(dir.path(), 0).await;
    let reply = server
        .check(check("GET", "/healthz").extension("zone", "x").build())
        .await;
    assert_eq!(reply.code(), Code::Ok);
}

#[tokio::test]
async fn a_routes_metadata_is_tags_policies_read() {
    let dir = policies_with(
        r#"@id("gold-only")
           forbid (principal, action, resource == Path::"/healthz")
           unless {
             context.request.route_metadata.hasTag("tier") &&
             context.request.route_metadata.getTag("tier") == "gold"
           };"#,
    );
    let mut server = server(dir.path(), 0).await;
    let health = || check("GET", "/healthz");
    let gold = server
        .check(health().route_metadata("tier", "gold").build())
        .await;
    assert_eq!(gold.code(), Code::Ok);
    let silver = server
        .check(health().route_metadata("tier", "silver").build())
        .await;
    assert_eq!(silver.code(), Code::PermissionDenied);
    // Context extensions are another map: the same key there does not count.
    let elsewhere = server
        .check(health().extension("tier", "gold").build())
        .await;
    assert_eq!(elsewhere.code(), Code::PermissionDenied);
}

/// A schema may require one fact and lack the others: the largest set it accepts is built.
#[tokio::test]
async fn a_schema_that_requires_some_facts_and_lacks_others_gets_those_it_declares() {
    let dir = policies_with(
        r#"@id("internal-routes-only")
           forbid (principal, action, resource == Path::"/healthz")
           unless { context.request.extensions.hasTag("zone") };"#,
    );
    let schema = dir.path().join("schema.cedarschema");
    let text = std::fs::read_to_string(&schema)
        .unwrap()
        .replace("entity RouteMetadata tags String;", "")
        .replace("  route_metadata: RouteMetadata,\n", "")
        .replace("  ip?: ipaddr,\n};", "};")
        .replace("  destination?: DestinationInfo,\n", "");
    assert!(text.contains("  extensions: ContextExtensions,\n"));
    std::fs::write(&schema, text).unwrap();
    let mut server = server(dir.path(), 0).await;
    let health = || check("GET", "/healthz");
    assert_eq!(
        server
            .check(health().extension("zone", "a").build())
            .await
            .code(),
        Code::Ok
    );
    assert_eq!(
        server.check(health().build()).await.code(),
        Code::PermissionDenied
    );
}
