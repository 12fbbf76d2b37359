//! Operations, through the `cedargate` binary and its real log output: the decision log line
//! carries the documented fields and never a token, cookie or Authorization value; SIGHUP
//! reloads the policy directory when file watching is off; dry-run allows and records the
//! would-be deny, globally or per route.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cedargate::testutil::jwt::{JwksServer, TestKey, claims};
use cedargate::testutil::{Reply, check};
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use jsonwebtoken::Algorithm;
use tonic::Code;

const ISS: &str = "https://idp.test";

/// The binary on a config file, its stderr collected line by line.
struct Running {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    grpc: String,
    admin: String,
}

impl Running {
    fn start(config: &Path) -> Self {
        // reqwest (metrics) is built with rustls and no default crypto provider.
        cedargate::app::install_crypto_provider();
        let mut child = Command::new(env!("CARGO_BIN_EXE_cedargate"))
            .args(["serve", "--config"])
            .arg(config)
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut reader = BufReader::new(child.stderr.take().unwrap()).lines();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let serving: serde_json::Value = loop {
            let line = reader
                .next()
                .expect("cedargate logs before exiting")
                .unwrap();
            lines.lock().unwrap().push(line.clone());
            let value: serde_json::Value = serde_json::from_str(&line).unwrap();
            if value["message"] == "cedargate serving" {
                break value;
            }
        };
        let collected = lines.clone();
        std::thread::spawn(move || {
            for line in reader.map_while(Result::ok) {
                collected.lock().unwrap().push(line);
            }
        });
        Self {
            child,
            lines,
            grpc: serving["grpc_addr"].as_str().unwrap().to_owned(),
            admin: serving["admin_addr"].as_str().unwrap().to_owned(),
        }
    }

    async fn client(&self) -> AuthorizationClient<tonic::transport::Channel> {
        AuthorizationClient::connect(format!("http://{}", self.grpc))
            .await
            .unwrap()
    }

    /// Waits, bounded, for a log line matching `pred`.
    async fn log_line(
        &self,
        what: &str,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let found = self
                .lines
                .lock()
                .unwrap()
                .iter()
                .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .find(|v| pred(v));
            if let Some(line) = found {
                return line;
            }
            assert!(
                Instant::now() < deadline,
                "no log line: {what}\n{}",
                self.all_logs()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn all_logs(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }

    async fn metrics(&self) -> String {
        reqwest::get(format!("http://{}/metrics", self.admin))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn write_config(dir: &Path, body: &str) -> std::path::PathBuf {
    let path = dir.join("cedargate.yaml");
    std::fs::write(
        &path,
        format!("listen:\n  grpc: 127.0.0.1:0\n  admin: 127.0.0.1:0\n{body}"),
    )
    .unwrap();
    path
}

/// The example policies copied into `dir/policies`.
fn copy_example_policies(dir: &Path) -> std::path::PathBuf {
    let target = dir.join("policies");
    std::fs::create_dir(&target).unwrap();
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
    for file in [
        "orders.cedar",
        "schema.cedarschema",
        "routes.yaml",
        "entities.json",
    ] {
        std::fs::copy(example.join(file), target.join(file)).unwrap();
    }
    target
}

#[tokio::test]
async fn decision_log_lines_carry_their_fields_and_never_credentials() {
    let key = TestKey::generate(Algorithm::ES256, "k");
    let jwks = JwksServer::start(&[&key]).await;
    let tmp = tempfile::tempdir().unwrap();
    let config = write_config(
        tmp.path(),
        &format!(
            r#"issuers:
  - issuer: {ISS}
    audiences: [orders]
    jwks: {{ uri: "{}", insecure_allow_http: true }}
authentication:
  token_header: x-auth-token
log:
  decisions:
    include_headers: [x-tenant, authorization, cookie, x-auth-token, x-secret-ish]
    include_claims: [email, tenant]
    include_body: [currency, card]
    redact: [email, x-secret-ish, card]
"#,
            jwks.uri()
        ),
    );
    let server = Running::start(&config);
    let mut client = server.client().await;
    let mut c = claims(ISS, "orders", "alice");
    c["email"] = "alice@example.org".into();
    c["tenant"] = "blue".into();
    let token = key.sign(&c);
    let signature = token.rsplit('.').next().unwrap().to_owned();

    // Allowed, with a token, a cookie and headers that must not be logged.
    let request = check("GET", "/profiles/alice")
        .bearer(&token)
        .header("cookie", "session=SECRET-COOKIE-VALUE")
        .header("x-tenant", "blue")
        .header("x-secret-ish", "hidden-value")
        .without_header("x-request-id")
        .header("x-request-id", "rid-allow-1")
        .header(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        )
        .build();
    let reply = Reply(client.check(request).await.unwrap().into_inner());
    assert_eq!(reply.code(), Code::Ok, "{:?}", reply.body());
    // Denied with a token sent in the custom header.
    let request = check("GET", "/profiles/bob")
        .header("x-auth-token", &token)
        .without_header("x-request-id")
        .header("x-request-id", "rid-deny-1")
        .build();
    let reply = Reply(client.check(request).await.unwrap().into_inner());
    assert_eq!(reply.http_status(), Some(403));
    // A body: only the listed fields, the redacted one hidden.
    let request = check("POST", "/orders")
        .header("content-type", "application/json")
        .body(r#"{"currency": "EUR", "card": "4111-SECRET-CARD", "note": "BODY-SECRET-NOTE"}"#)
        .without_header("x-request-id")
        .header("x-request-id", "rid-body-1")
        .build();
    let reply = Reply(client.check(request).await.unwrap().into_inner());
    assert_eq!(reply.http_status(), Some(403));

    let allow = server
        .log_line("the allow", |v| v["request_id"] == "rid-allow-1")
        .await;
    for field in [
        "service",
        "request_id",
        "peer_addr",
        "decision",
        "enforced",
        "reason",
        "principal",
        "action",
        "resource",
        "policy_ids",
        "policy_version",
        "latency_us",
    ] {
        assert!(!allow[field].is_null(), "field {field} in {allow}");
    }
    assert_eq!(allow["service"], "cedargate");
    assert_eq!(allow["decision"], "allow");
    assert_eq!(allow["principal"], r#"User::"alice""#);
    assert_eq!(allow["action"], r#"Action::"profile:read""#);
    assert_eq!(allow["target"], "cedargate::decision");
    assert_eq!(allow["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
    // Typed: an array and an object, not JSON text inside a string.
    assert!(allow["policy_ids"].is_array(), "{allow}");
    let attributes = &allow["attributes"];
    assert!(attributes.is_object(), "{allow}");
    assert_eq!(attributes["header.x-tenant"], "blue");
    assert_eq!(attributes["header.x-secret-ish"], "[redacted]");
    assert_eq!(attributes["claim.tenant"], "blue");
    assert_eq!(attributes["claim.email"], "[redacted]");
    assert!(attributes.get("header.authorization").is_none());
    assert!(attributes.get("header.cookie").is_none());

    let deny = server
        .log_line("the deny", |v| v["request_id"] == "rid-deny-1")
        .await;
    assert_eq!(deny["decision"], "deny");
    assert_eq!(deny["reason"], "policy_denied");
    let deny_attributes = &deny["attributes"];
    assert_eq!(deny_attributes["claim.tenant"], "blue");
    assert!(deny_attributes.get("header.x-auth-token").is_none());
    let body = server
        .log_line("the body", |v| v["request_id"] == "rid-body-1")
        .await;
    assert_eq!(body["attributes"]["body.currency"], "EUR", "{body}");
    assert_eq!(body["attributes"]["body.card"], "[redacted]", "{body}");
    assert!(body["attributes"].get("body.note").is_none(), "{body}");

    let logs = server.all_logs();
    for secret in [
        token.as_str(),
        signature.as_str(),
        "SECRET-COOKIE-VALUE",
        "alice@example.org",
        "hidden-value",
        "4111-SECRET-CARD",
        "BODY-SECRET-NOTE",
    ] {
        assert!(!logs.contains(secret), "`{secret}` leaked into the logs");
    }
    jwks.stop().await;
}

#[tokio::test]
async fn sighup_reloads_when_watching_is_off() {
    let tmp = tempfile::tempdir().unwrap();
    let policies = copy_example_policies(tmp.path());
    let config = write_config(
        tmp.path(),
        &format!("policies:\n  dir: {}\n  watch: false\n", policies.display()),
    );
    let server = Running::start(&config);
    let mut client = server.client().await;
    let list = || check("GET", "/orders").build();
    assert_eq!(
        Reply(client.check(list()).await.unwrap().into_inner()).http_status(),
        Some(403)
    );

    let mut text = std::fs::read_to_string(policies.join("orders.cedar")).unwrap();
    text.push_str(
        "\n@id(\"open-list\")\npermit (principal, action == Action::\"orders:list\", resource);\n",
    );
    std::fs::write(policies.join("orders.cedar"), text).unwrap();
    let hup = Command::new("kill")
        .args(["-HUP", &server.child.id().to_string()])
        .status()
        .unwrap();
    assert!(hup.success());
    server
        .log_line("the reload", |v| v["message"] == "policy set reloaded")
        .await;
    let reply = Reply(client.check(list()).await.unwrap().into_inner());
    assert_eq!(reply.code(), Code::Ok);
    assert!(
        server
            .metrics()
            .await
            .contains(r#"cedargate_policy_reloads_total{result="success"} 1"#)
    );
}

#[tokio::test]
async fn dry_run_allows_and_records_the_would_be_deny() {
    let tmp = tempfile::tempdir().unwrap();
    let policies = copy_example_policies(tmp.path());
    // Per route: only GET /orders is in dry-run.
    let routes = std::fs::read_to_string(policies.join("routes.yaml")).unwrap().replace(
        r#"action: "orders:list",    resource: 'Collection::"orders"' }"#,
        r#"action: "orders:list",    resource: 'Collection::"orders"', dry_run: true, token: optional }"#,
    );
    assert!(routes.contains("dry_run: true"));
    std::fs::write(policies.join("routes.yaml"), routes).unwrap();
    let config = write_config(
        tmp.path(),
        &format!("policies:\n  dir: {}\n", policies.display()),
    );
    let server = Running::start(&config);
    let mut client = server.client().await;

    let reply = Reply(
        client
            .check(check("GET", "/orders").build())
            .await
            .unwrap()
            .into_inner(),
    );
    assert_eq!(reply.code(), Code::Ok, "dry-run route: allowed");
    assert_eq!(reply.meta("decision").as_deref(), Some("deny"));
    assert_eq!(reply.meta("enforced").as_deref(), Some("false"));
    // The upstream can tell a would-be deny from an allow (review round 2).
    assert_eq!(
        reply
            .header(cedargate::decision::DRY_RUN_HEADER)
            .map(|h| h.0)
            .as_deref(),
        Some("deny")
    );
    let reply = Reply(
        client
            .check(check("POST", "/orders").build())
            .await
            .unwrap()
            .into_inner(),
    );
    assert_eq!(reply.http_status(), Some(403), "other routes are enforced");
    let metrics = server.metrics().await;
    assert!(
        metrics.contains(r#"cedargate_decisions_total{decision="deny",reason="policy_denied",enforced="false"} 1"#),
        "{metrics}"
    );
    drop(server);

    // Globally: every deny is recorded and allowed.
    let config = write_config(
        tmp.path(),
        &format!("dry_run: true\npolicies:\n  dir: {}\n", policies.display()),
    );
    let server = Running::start(&config);
    let mut client = server.client().await;
    let reply = Reply(
        client
            .check(check("DELETE", "/orders/1").build())
            .await
            .unwrap()
            .into_inner(),
    );
    assert_eq!(reply.code(), Code::Ok);
    assert_eq!(reply.meta("enforced").as_deref(), Some("false"));
    let line = server
        .log_line("the dry-run deny", |v| v["enforced"] == false)
        .await;
    assert_eq!(line["decision"], "deny");
}
