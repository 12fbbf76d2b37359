//! Test helpers shared by unit tests, `tests/` and `benches/` (feature `testutil`): a real
//! server on 127.0.0.1 port 0 with a real tonic client, and CheckRequests shaped like the ones
//! Envoy 1.40 sends. Not part of the public API.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    missing_docs
)]

pub mod jwt;
pub mod pki;
pub mod policygen;

use std::net::SocketAddr;
use std::path::Path;

use envoy_types::pb::envoy::service::auth::v3::CheckRequest;
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use tonic::transport::Channel;

use crate::app::{self, App};
use crate::config::{Config, PolicySource};

/// Context extension that makes a check panic after admission: fault injection for tests,
/// compiled only with the `testutil` feature. Envoy sets context extensions from its own
/// route configuration, never from a client's request.
pub use crate::server::check::PANIC_EXTENSION;

/// A running cedargate on ephemeral ports, and a client connected to it.
pub struct TestServer {
    pub app: App,
    pub client: AuthorizationClient<Channel>,
}

impl TestServer {
    /// Serves the example policy set.
    pub async fn start() -> Self {
        Self::with_config(test_config(PolicySource::Embedded)).await
    }

    /// Serves the policy set in `dir`.
    pub async fn with_policies(dir: &Path) -> Self {
        Self::with_config(test_config(PolicySource::Dir(dir.to_owned()))).await
    }

    /// A server whose listener the caller connects to itself (TLS tests): the plaintext
    /// client is never connected.
    pub async fn with_config_no_client(config: Config) -> Self {
        app::install_crypto_provider();
        let app = app::build(config).await.expect("server starts");
        let channel = tonic::transport::Endpoint::from_static("http://127.0.0.1:1").connect_lazy();
        Self {
            app,
            client: AuthorizationClient::new(channel),
        }
    }

    pub async fn with_config(config: Config) -> Self {
        app::install_crypto_provider();
        let app = app::build(config).await.expect("server starts");
        let client = AuthorizationClient::connect(format!("http://{}", grpc_addr(&app)))
            .await
            .expect("client connects");
        Self { app, client }
    }

    /// A new gRPC channel to the server, for other services (health, reflection).
    pub async fn channel(&self) -> Channel {
        tonic::transport::Endpoint::from_shared(format!("http://{}", self.grpc_addr()))
            .expect("valid URI")
            .connect()
            .await
            .expect("connects")
    }

    /// The admin listener's `/metrics` text.
    pub async fn metrics(&self) -> String {
        reqwest::get(self.admin_url("/metrics"))
            .await
            .expect("admin answers")
            .text()
            .await
            .expect("metrics text")
    }

    /// Waits until every issuer has its keys (bounded, so a bug fails instead of hanging),
    /// then checks that `/readyz` agrees.
    pub async fn ready(&self) {
        tokio::time::timeout(
            std::time::Duration::from_secs(10),
            self.app.shared.authn.wait_ready(),
        )
        .await
        .expect("every issuer's keys load");
        let ready = reqwest::get(self.admin_url("/readyz"))
            .await
            .expect("admin answers");
        assert_eq!(ready.status(), 200);
    }

    /// The base URL of the HTTP authorization listener (`listen.http` must be set).
    pub fn http_url(&self, path: &str) -> String {
        let addr = self.app.http_addr.expect("the test server has listen.http");
        format!("http://{addr}{path}")
    }

    /// The TCP address of the Check listener (test configurations listen on 127.0.0.1:0).
    pub fn grpc_addr(&self) -> SocketAddr {
        grpc_addr(&self.app)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.app.admin_addr)
    }
}

fn grpc_addr(app: &App) -> SocketAddr {
    app.grpc_addr.expect("the test server listens on TCP")
}

/// The value of the first sample of `metric` whose labels include every `labels` pair, in
/// Prometheus text; 0 when there is none yet.
pub fn metric_value(metrics: &str, metric: &str, labels: &[(&str, &str)]) -> f64 {
    metrics
        .lines()
        .filter(|l| {
            l.strip_prefix(metric)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .find(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .and_then(|l| l.rsplit(' ').next())
        .map_or(0.0, |v| v.parse().expect("a sample value"))
}

/// This process's resident set size, in KiB (Linux `/proc/self/status`).
pub fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .expect("/proc/self/status")
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/self/status")
}

/// An issuer for tests: `iss`, audience `orders`, keys from `jwks_uri` (plain HTTP on loopback).
pub fn test_issuer(iss: &str, jwks_uri: &str) -> crate::config::IssuerConfig {
    crate::config::IssuerConfig {
        issuer: iss.into(),
        audiences: vec!["orders".into()],
        jwks: crate::config::JwksSource::Uri {
            uri: jwks_uri.into(),
            fetch: crate::config::FetchOptions {
                insecure_allow_http: true,
                ca_file: None,
            },
        },
        algorithms: vec![
            jsonwebtoken::Algorithm::RS256,
            jsonwebtoken::Algorithm::ES256,
            jsonwebtoken::Algorithm::EdDSA,
        ],
        leeway: std::time::Duration::from_secs(5),
        max_token_age: None,
        required_claims: Vec::new(),
        principal_type: "User".into(),
        groups_claim: Some("groups".into()),
        group_type: "Group".into(),
        same_users_as: None,
        scope_claim: "scope".into(),
        require_cert_binding: false,
        token_types: Vec::new(),
    }
}

/// The default configuration on 127.0.0.1 port 0 for both listeners.
pub fn test_config(policies: PolicySource) -> Config {
    let mut config = Config::default();
    config.listen.grpc = crate::config::GrpcListen::Tcp(SocketAddr::from(([127, 0, 0, 1], 0)));
    config.listen.admin = SocketAddr::from(([127, 0, 0, 1], 0));
    config.policies = policies;
    config
}

/// Builds a CheckRequest the way Envoy's HTTP ext_authz filter fills it.
pub type Check = crate::server::envoy::builder::CheckBuilder;

/// A check for `method path` on host `shop.example` from 127.0.0.1 without TLS, with the
/// headers a curl request through Envoy carries.
pub fn check(method: &str, path: &str) -> Check {
    Check::new(method, path)
        .header("user-agent", "curl/8.5.0")
        .header("accept", "*/*")
        .header("x-forwarded-proto", "https")
        .header("x-request-id", "5f0c1e52-9c0b-4b8e-8f7e-3d1f2a6b7c8d")
}

/// The SPIFFE ID of the example checkout workload.
pub const CHECKOUT: &str = "spiffe://shop.example/ns/shop/sa/checkout";
/// The SPIFFE ID of an example workload that may not create orders.
pub const FRONTEND: &str = "spiffe://shop.example/ns/shop/sa/frontend";

/// Read access to a CheckResponse, for assertions.
#[derive(Debug, Clone)]
pub struct Reply(pub envoy_types::pb::envoy::service::auth::v3::CheckResponse);

impl Reply {
    /// The google.rpc.Code of the answer.
    pub fn code(&self) -> tonic::Code {
        tonic::Code::from(self.0.status.as_ref().expect("status is always set").code)
    }

    fn ok(&self) -> Option<&envoy_types::pb::envoy::service::auth::v3::OkHttpResponse> {
        use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
        match &self.0.http_response {
            Some(HttpResponse::OkResponse(ok)) => Some(ok),
            _ => None,
        }
    }

    fn denied(&self) -> Option<&envoy_types::pb::envoy::service::auth::v3::DeniedHttpResponse> {
        use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
        match &self.0.http_response {
            Some(HttpResponse::DeniedResponse(denied)) => Some(denied),
            _ => None,
        }
    }

    /// HTTP status of a denied response.
    pub fn http_status(&self) -> Option<i32> {
        self.denied()
            .and_then(|d| d.status.as_ref())
            .map(|s| s.code)
    }

    fn header_options(&self) -> &[envoy_types::pb::envoy::config::core::v3::HeaderValueOption] {
        self.ok()
            .map(|ok| ok.headers.as_slice())
            .or_else(|| self.denied().map(|d| d.headers.as_slice()))
            .unwrap_or_default()
    }

    /// Value of a header to set, with its append action.
    pub fn header(&self, name: &str) -> Option<(String, i32)> {
        self.header_options()
            .iter()
            .filter_map(|o| o.header.as_ref().map(|h| (h, o.append_action)))
            .find(|(h, _)| h.key == name)
            .map(|(h, action)| (h.value.clone(), action))
    }

    /// Every header to set (allow: upstream; deny: the client's response), in order.
    pub fn headers(&self) -> Vec<(String, String)> {
        self.header_options()
            .iter()
            .filter_map(|o| o.header.as_ref())
            .map(|h| (h.key.clone(), h.value.clone()))
            .collect()
    }

    /// The denied response body as sent (empty on allow).
    pub fn body_text(&self) -> String {
        self.denied().map(|d| d.body.clone()).unwrap_or_default()
    }

    /// Upstream headers to remove (allow only).
    pub fn removed(&self) -> Vec<String> {
        self.ok()
            .map(|ok| ok.headers_to_remove.clone())
            .unwrap_or_default()
    }

    /// The denied response body parsed as JSON.
    pub fn body(&self) -> serde_json::Value {
        serde_json::from_str(&self.denied().expect("a denied response").body).expect("JSON body")
    }

    /// A string (or boolean, as `true`/`false`) field of the dynamic metadata.
    pub fn meta(&self, key: &str) -> Option<String> {
        use envoy_types::pb::google::protobuf::value::Kind;
        match self
            .0
            .dynamic_metadata
            .as_ref()?
            .fields
            .get(key)?
            .kind
            .as_ref()?
        {
            Kind::StringValue(s) => Some(s.clone()),
            Kind::BoolValue(b) => Some(b.to_string()),
            _ => None,
        }
    }

    /// A list-of-strings field of the dynamic metadata.
    pub fn meta_list(&self, key: &str) -> Vec<String> {
        use envoy_types::pb::google::protobuf::value::Kind;
        let Some(Some(Kind::ListValue(list))) = self
            .0
            .dynamic_metadata
            .as_ref()
            .and_then(|m| m.fields.get(key))
            .map(|v| v.kind.as_ref())
        else {
            return Vec::new();
        };
        list.values
            .iter()
            .filter_map(|v| match &v.kind {
                Some(Kind::StringValue(s)) => Some(s.clone()),
                _ => None,
            })
            .collect()
    }
}

impl TestServer {
    /// Sends one Check and returns the answer; a transport error fails the test.
    pub async fn check(&mut self, request: CheckRequest) -> Reply {
        Reply(
            self.client
                .check(request)
                .await
                .expect("Check answers")
                .into_inner(),
        )
    }
}
