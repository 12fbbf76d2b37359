//! Policy sets on disk: start-up refuses an invalid set with file and line, and a forbid that
//! errors at evaluation turns the decision into a deny.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::path::Path;

use cedargate::app;
use cedargate::config::PolicySource;
use cedargate::testutil::{TestServer, check, test_config};
use tonic::Code;

const SCHEMA: &str = r#"
entity HttpHeaders tags String;
entity HttpQuery tags String;
entity PathParams tags String;
type RequestInfo = { method: String, host: String, path: String, scheme: String, protocol: String,
                     id: String, headers: HttpHeaders, query: HttpQuery, params: PathParams };
type PeerInfo = { present: Bool, principal: String, address: String, dns_sans: Set<String>,
                  spiffe_id?: String, trust_domain?: String, subject?: String };
entity TokenClaims tags String;
type TokenInfo = { issuer: String, subject: String, audience: Set<String>, scope: Set<String>,
                   expires_at: Long, claims: TokenClaims };
type CheckContext = { request: RequestInfo, peer: PeerInfo, token?: TokenInfo, time: Long };
entity User;
entity Workload { trust_domain: String };
entity Anonymous;
entity Order { owner: User };
action "orders:read" appliesTo { principal: [User, Workload, Anonymous], resource: Order, context: CheckContext };
"#;

const ROUTES: &str = r#"
routes:
  - { method: GET, path: "/orders/{id}", action: "orders:read", resource: 'Order::"{id}"' }
"#;

fn policy_dir(policies: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| std::fs::write(dir.path().join(name), text).unwrap();
    write("schema.cedarschema", SCHEMA);
    write("routes.yaml", ROUTES);
    write("main.cedar", policies);
    dir
}

async fn start_error(dir: &Path) -> String {
    let config = test_config(PolicySource::Dir(dir.to_owned()));
    app::build(config)
        .await
        .expect_err("start-up must fail")
        .to_string()
}

#[tokio::test]
async fn erroring_forbid_is_a_deny_naming_the_policy() {
    // Valid against the schema, but Order::"7" is not in the entity store, so reading
    // `resource.owner` errors at evaluation. Cedar alone would skip the forbid and allow.
    let dir = policy_dir(
        r#"
        @id("allow-all")
        permit (principal, action, resource);

        @id("owner-only")
        forbid (principal, action, resource is Order) unless { resource.owner == principal };
        "#,
    );
    let mut server = TestServer::with_policies(dir.path()).await;
    let reply = server.check(check("GET", "/orders/7").build()).await;
    assert_eq!(reply.code(), Code::PermissionDenied);
    assert_eq!(reply.http_status(), Some(403));
    assert_eq!(reply.body()["error"], "policy_error");
    assert_eq!(reply.meta_list("policy_ids"), ["owner-only"]);
}

#[tokio::test]
async fn schema_violation_names_file_line_and_attribute() {
    let dir = policy_dir(
        "@id(\"ok\")\npermit (principal, action, resource);\n\n@id(\"typo\")\npermit (principal is User, action, resource)\nwhen { principal.nickname == \"x\" };\n",
    );
    let err = start_error(dir.path()).await;
    let file = dir.path().join("main.cedar");
    assert!(err.contains(&format!("{}:6:", file.display())), "{err}");
    assert!(err.contains("nickname"), "{err}");
    assert!(err.contains("policy `typo`"), "{err}");
}

#[tokio::test]
async fn syntax_error_names_file_and_line() {
    let dir = policy_dir("permit (principal, action, resource)\nwhen { principal == };\n");
    let err = start_error(dir.path()).await;
    let file = dir.path().join("main.cedar");
    assert!(err.contains(&format!("{}:2:", file.display())), "{err}");
}

#[tokio::test]
async fn route_to_undeclared_action_fails_start_up() {
    let dir = policy_dir("permit (principal, action, resource);");
    std::fs::write(
        dir.path().join("routes.yaml"),
        "routes:\n  - { method: GET, path: /x, action: \"orders:write\" }\n",
    )
    .unwrap();
    let err = start_error(dir.path()).await;
    assert!(err.contains("routes.yaml: route 1 (`GET /x`)"), "{err}");
    assert!(
        err.contains(r#"`Action::"orders:write"` is not declared"#),
        "{err}"
    );
}

#[tokio::test]
async fn schema_without_cedargate_context_fails_start_up() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("schema.cedarschema"),
        "entity User; entity Doc; action read appliesTo { principal: User, resource: Doc };",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("p.cedar"),
        "permit (principal, action, resource);",
    )
    .unwrap();
    let err = start_error(dir.path()).await;
    assert!(err.contains(r#"action `Action::"read"`"#), "{err}");
    assert!(err.contains("hint: declare the context"), "{err}");
}

#[tokio::test]
async fn missing_directory_fails_start_up() {
    let err = start_error(Path::new("/nonexistent/cedargate-policies")).await;
    assert!(
        err.contains("/nonexistent/cedargate-policies: cannot read"),
        "{err}"
    );
}

#[tokio::test]
async fn action_groups_work_without_an_entities_file() {
    let dir = policy_dir(r#"permit (principal, action in Action::"readers", resource is Order);"#);
    std::fs::write(
        dir.path().join("schema.cedarschema"),
        SCHEMA.replace(
            r#"action "orders:read" appliesTo"#,
            r#"action readers; action "orders:read" in [readers] appliesTo"#,
        ),
    )
    .unwrap();
    let mut server = TestServer::with_policies(dir.path()).await;
    let reply = server.check(check("GET", "/orders/7").build()).await;
    assert_eq!(reply.code(), Code::Ok);
}

#[tokio::test]
async fn principal_type_outside_applies_to_is_a_plain_deny() {
    // Anonymous is not in the action's appliesTo: a deny (403), never an allow, never an error.
    let dir = policy_dir("permit (principal, action, resource);");
    std::fs::write(
        dir.path().join("schema.cedarschema"),
        SCHEMA.replace(
            "principal: [User, Workload, Anonymous]",
            "principal: [User, Workload]",
        ),
    )
    .unwrap();
    let mut server = TestServer::with_policies(dir.path()).await;
    let reply = server.check(check("GET", "/orders/7").build()).await;
    // Even an unscoped permit must not match a principal type outside appliesTo.
    assert_eq!(reply.http_status(), Some(403));
    assert_eq!(reply.body()["error"], "no_route");

    std::fs::write(
        dir.path().join("main.cedar"),
        "permit (principal is User, action, resource);",
    )
    .unwrap();
    let mut server = TestServer::with_policies(dir.path()).await;
    let reply = server.check(check("GET", "/orders/7").build()).await;
    assert_eq!(reply.http_status(), Some(403));
    assert_eq!(reply.body()["error"], "no_route");
}

#[tokio::test]
async fn peer_record_without_spiffe_fields_fails_start_up() {
    let dir = policy_dir("permit (principal, action, resource);");
    std::fs::write(
        dir.path().join("schema.cedarschema"),
        SCHEMA.replace("spiffe_id?: String, trust_domain?: String, ", ""),
    )
    .unwrap();
    let err = start_error(dir.path()).await;
    assert!(err.contains(r#"action `Action::"orders:read"`"#), "{err}");
}

#[tokio::test]
async fn principal_in_entities_file_is_merged_not_a_duplicate() {
    // The workload is in entities.json (with a team); the request builds it again from the
    // peer identity. Both must merge into one entity: before, every such request was a 500.
    let dir = policy_dir(r#"permit (principal in Team::"ops", action, resource is Order);"#);
    std::fs::write(
        dir.path().join("schema.cedarschema"),
        SCHEMA.replace(
            "entity Workload { trust_domain: String };",
            "entity Team; entity Workload in [Team] { trust_domain: String, tier?: Long };",
        ),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("entities.json"),
        r#"[
          { "uid": { "type": "Team", "id": "ops" }, "attrs": {}, "parents": [] },
          { "uid": { "type": "Workload", "id": "spiffe://td/ns/a/sa/ops" },
            "attrs": { "trust_domain": "td", "tier": 1 },
            "parents": [ { "type": "Team", "id": "ops" } ] }
        ]"#,
    )
    .unwrap();
    let mut server = TestServer::with_policies(dir.path()).await;
    let known = check("GET", "/orders/7")
        .peer("spiffe://td/ns/a/sa/ops")
        .build();
    let reply = server.check(known).await;
    assert_eq!(reply.code(), Code::Ok, "{:?}", reply.body());
    let stranger = check("GET", "/orders/7")
        .peer("spiffe://td/ns/a/sa/other")
        .build();
    let reply = server.check(stranger).await;
    assert_eq!(reply.http_status(), Some(403));
}

#[tokio::test]
async fn two_routes_files_are_refused() {
    // Outside review: `routes.yml` beside `routes.yaml` was silently ignored.
    let dir = policy_dir("permit (principal, action, resource);");
    std::fs::write(
        dir.path().join("routes.yml"),
        "routes:\n  - { method: GET, path: \"/x/{id}\", action: \"orders:read\", resource: 'Order::\"{id}\"' }\n",
    )
    .unwrap();
    let err = start_error(dir.path()).await;
    assert!(err.contains("a second routes file"), "{err}");
}
