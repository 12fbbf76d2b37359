//! cedargate's own gRPC API (`cedargate.v1.AuthorizerService`) over a real socket: Explain
//! gives the same decision as Check plus the Cedar request and determining policies; Status
//! reports the policy set and the issuers' keys; the API is off by default and never on the
//! Check port; `cedargate check --server` asks a running server.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::net::SocketAddr;

use cedargate::api::pb::authorizer_service_client::AuthorizerServiceClient;
use cedargate::api::pb::{ExplainRequest, Outcome, StatusRequest};
use cedargate::config::{Config, PolicySource};
use cedargate::testutil::jwt::{JwksServer, TestKey, claims};
use cedargate::testutil::{TestServer, check, test_config, test_issuer};
use jsonwebtoken::Algorithm;
use prost::Message;
use tonic::Code;

const ISS: &str = "https://idp.test";

fn config_with_api(jwks: &JwksServer) -> Config {
    let mut config = test_config(PolicySource::Embedded);
    config.listen.api = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
    config.issuers = vec![test_issuer(ISS, &jwks.uri())];
    config
}

async fn api_client(server: &TestServer) -> AuthorizerServiceClient<tonic::transport::Channel> {
    let addr = server.app.api_addr.expect("the API listener is bound");
    AuthorizerServiceClient::connect(format!("http://{addr}"))
        .await
        .unwrap()
}

#[tokio::test]
async fn explain_agrees_with_check_and_shows_the_cedar_request() {
    let key = TestKey::generate(Algorithm::ES256, "ec-1");
    let jwks = JwksServer::start(&[&key]).await;
    let mut server = TestServer::with_config(config_with_api(&jwks)).await;
    server.ready().await;
    let mut api = api_client(&server).await;

    for (sub, path) in [("alice", "/orders/1002"), ("bob", "/orders/1002")] {
        let token = key.sign(&claims(ISS, "orders", sub));
        let request = check("GET", path).bearer(&token).build();
        let checked = server.check(request.clone()).await;
        let explained = api
            .explain(ExplainRequest {
                check_request: request.encode_to_vec(),
            })
            .await
            .unwrap()
            .into_inner();
        let allowed = checked.code() == Code::Ok;
        assert_eq!(explained.outcome() == Outcome::Allow, allowed, "{sub}");
        assert_eq!(explained.reason, checked.meta("reason").unwrap());
        assert_eq!(
            explained.policy_version,
            checked.meta("policy_version").unwrap()
        );
        let call = explained.cedar_request.as_ref().unwrap();
        assert_eq!(call.principal, format!("User::\"{sub}\""));
        assert_eq!(call.action, r#"Action::"orders:read""#);
        assert_eq!(call.resource, r#"Order::"1002""#);
        let context: serde_json::Value = serde_json::from_str(&call.context_json).unwrap();
        assert_eq!(context["token"]["issuer"], ISS);
        assert!(
            !call.entities_json.contains(&token),
            "the token is redacted"
        );
        if allowed {
            assert_eq!(explained.determining_policies, ["orders-owner-read"]);
            assert_eq!(explained.http_status, 0);
        } else {
            assert!(explained.determining_policies.is_empty());
            assert_eq!(explained.http_status, 403);
            assert_eq!(explained.message, "no policy permits this request");
        }
    }

    // A deny by a `forbid` names it, rather than claiming that nothing permits the request.
    let token = key.sign(&claims(ISS, "orders", "alice"));
    let foreign = check("GET", "/orders/1002")
        .bearer(&token)
        .peer("spiffe://partner.example/ns/x/sa/y")
        .build();
    let explained = api
        .explain(ExplainRequest {
            check_request: foreign.encode_to_vec(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(explained.reason, "policy_denied");
    assert_eq!(explained.determining_policies, ["foreign-workloads"]);
    assert_eq!(explained.message, "forbidden by policy `foreign-workloads`");

    // An explanation is not a decision: neither counted nor logged as one.
    let metrics = server.metrics().await;
    let counted: f64 = metrics
        .lines()
        .filter(|l| l.starts_with("cedargate_decisions_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(counted, 2.0, "only the two Checks count:\n{metrics}");

    // Garbage in is a clear error, not a decision.
    let status = api
        .explain(ExplainRequest {
            check_request: vec![0xff, 0xff, 0xff],
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
}

#[tokio::test]
async fn status_reports_the_policy_set_and_the_issuers_keys() {
    let key = TestKey::generate(Algorithm::ES256, "ec-1");
    let jwks = JwksServer::start(&[&key]).await;
    let server = TestServer::with_config(config_with_api(&jwks)).await;
    server.ready().await;
    let status = api_client(&server)
        .await
        .status(StatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(status.ready);
    assert_eq!(status.policy_count, 10);
    assert_eq!(
        status.policy_version,
        server.app.shared.snapshot.load().version.as_ref()
    );
    assert_eq!(status.version, env!("CARGO_PKG_VERSION"));
    let issuer = &status.issuers[0];
    assert_eq!(issuer.issuer, ISS);
    assert_eq!(issuer.principal_type, "User");
    assert_eq!(issuer.key_ids, ["ec-1"]);
    let refreshed = issuer.last_refresh.as_ref().unwrap().seconds;
    let now = cedargate::testutil::jwt::now();
    assert!(
        (now - 60..=now).contains(&refreshed),
        "{refreshed} vs {now}"
    );
}

#[tokio::test]
async fn the_api_is_off_by_default_and_never_on_the_check_port() {
    let server = TestServer::start().await;
    assert_eq!(server.app.api_addr, None);
    let mut on_check_port = AuthorizerServiceClient::new(server.channel().await);
    let status = on_check_port.status(StatusRequest {}).await.unwrap_err();
    assert_eq!(status.code(), Code::Unimplemented);
    let status = on_check_port
        .explain(ExplainRequest {
            check_request: check("GET", "/healthz").build().encode_to_vec(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unimplemented);
}

#[tokio::test]
async fn check_asks_a_running_server() {
    let key = TestKey::generate(Algorithm::ES256, "ec-1");
    let jwks = JwksServer::start(&[&key]).await;
    let server = TestServer::with_config(config_with_api(&jwks)).await;
    server.ready().await;
    let addr = server.app.api_addr.unwrap().to_string();
    let token = key.sign(&claims(ISS, "orders", "alice"));
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_cedargate"))
        .args([
            "check",
            "--server",
            &addr,
            "--path",
            "/profiles/alice",
            "--token",
            &token,
            "--format",
            "json",
        ])
        .output()
        .await
        .unwrap();
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let answer: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(answer["decision"], "allow");
    assert_eq!(
        answer["determining_policies"],
        serde_json::json!(["profile-self"])
    );
    assert_eq!(
        answer["policy_version"],
        server.app.shared.snapshot.load().version.as_ref()
    );

    // Claims cannot be signed for a remote server; a dead address is a clear error.
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_cedargate"))
        .args(["check", "--server", "127.0.0.1:1", "--path", "/healthz"])
        .output()
        .await
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("cannot reach the Explain API"));
}

#[tokio::test]
async fn explain_does_not_take_the_places_of_checks() {
    // Review round 2: Explain shared Check's in-flight permits, so a busy (or flooded) API
    // shed Envoy's checks, and a check at the cap refused Explain.
    let key = TestKey::generate(Algorithm::ES256, "ec-1");
    let jwks = JwksServer::start(&[&key]).await;
    let mut config = config_with_api(&jwks);
    config.limits.max_inflight = 1;
    let server = TestServer::with_config(config).await;
    server.ready().await;
    let mut api = api_client(&server).await;

    // One check holds the only place while it waits for a held key server.
    let fetched = jwks.fetches();
    let held = jwks.hold().await;
    let unknown = TestKey::generate(Algorithm::ES256, "unknown").sign(&claims(ISS, "orders", "a"));
    let mut client = server.client.clone();
    let request = check("GET", "/profiles/alice").bearer(&unknown).build();
    let waiting = tokio::spawn(async move { client.check(request).await });
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while jwks.fetches() <= fetched {
        assert!(
            std::time::Instant::now() < deadline,
            "the check never fetched"
        );
        tokio::task::yield_now().await;
    }

    let explained = api
        .explain(ExplainRequest {
            check_request: check("GET", "/healthz").build().encode_to_vec(),
        })
        .await
        .expect("Explain has its own places")
        .into_inner();
    assert_eq!(explained.outcome(), Outcome::Allow);
    drop(held);
    waiting.await.unwrap().expect("the held check is answered");
    jwks.stop().await;
}
