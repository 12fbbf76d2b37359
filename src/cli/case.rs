//! One request as a policy author writes it (YAML in a test file, JSON for `cedargate check`):
//! the HTTP request, the token (claims to sign, or a raw token), the peer, and for tests the
//! expected outcome. [`Case::build`] turns it into the CheckRequest Envoy would send.

use std::collections::BTreeMap;
use std::path::Path;

use envoy_types::pb::envoy::service::auth::v3::CheckRequest;
use serde::Deserialize;
use serde_json::Value;

use super::offline::{Offline, OfflineError};
use crate::server::envoy::builder::CheckBuilder;

/// A request to decide, with what a test expects of it.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Case {
    /// The test's name (`cedargate test` output and JUnit).
    #[serde(default)]
    pub name: Option<String>,
    pub request: RequestSpec,
    /// Claims of a token signed for a test issuer (`iss`, `aud`, `iat`, `exp` filled in).
    #[serde(default)]
    pub token: Option<Value>,
    /// The test issuer that signs `token`, by its `iss` (default: the claims' `iss`, else the
    /// first issuer).
    #[serde(default)]
    pub issuer: Option<String>,
    /// A token sent as it is (`Authorization: Bearer <raw_token>`).
    #[serde(default)]
    pub raw_token: Option<String>,
    #[serde(default)]
    pub peer: Option<PeerSpec>,
    /// Envoy's `destination`: where the request was going.
    #[serde(default)]
    pub destination: Option<DestinationSpec>,
    /// What the entity source answers in this case (Cedar entity JSON, the `entities.json`
    /// format): the entity of the request's resource, when its type is fetched. Each type
    /// given here is fetched in the file's run (besides the configuration's
    /// `entity_source.types`).
    #[serde(default)]
    pub entities: Vec<Value>,
    #[serde(default)]
    pub expect: Option<Expect>,
}

/// The HTTP request as Envoy saw it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestSpec {
    #[serde(default = "default_method")]
    pub method: String,
    /// The path with its query, as sent (`/orders?limit=10`).
    pub path: String,
    #[serde(default = "default_host")]
    pub host: String,
    #[serde(default = "default_scheme")]
    pub scheme: String,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Envoy's per-route `context_extensions` (`cedargate.action`, `cedargate.resource`).
    #[serde(default)]
    pub context_extensions: BTreeMap<String, String>,
    /// String fields of the route's metadata in the `cedargate` namespace.
    #[serde(default)]
    pub route_metadata: BTreeMap<String, String>,
    /// The request body as Envoy's `with_request_body` sends it: text, or YAML/JSON that is
    /// sent as its JSON text (`body: { amount: 5 }`).
    #[serde(default)]
    pub body: Option<serde_json::Value>,
}

impl Default for RequestSpec {
    fn default() -> Self {
        Self {
            method: default_method(),
            path: "/".into(),
            host: default_host(),
            scheme: default_scheme(),
            headers: BTreeMap::new(),
            context_extensions: BTreeMap::new(),
            route_metadata: BTreeMap::new(),
            body: None,
        }
    }
}

fn default_method() -> String {
    "GET".into()
}

fn default_host() -> String {
    "shop.example".into()
}

fn default_scheme() -> String {
    "https".into()
}

/// The downstream peer: a SPIFFE ID (Envoy's `source.principal`), a client certificate, or
/// both (they must agree, as in production).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerSpec {
    #[serde(default)]
    pub spiffe_id: Option<String>,
    /// A PEM certificate, inline or as a path relative to the test file.
    #[serde(default)]
    pub certificate: Option<String>,
    /// `ip:port` of the downstream connection.
    #[serde(default)]
    pub address: Option<String>,
}

/// Envoy's `destination`: the listener's `ip:port` and the identity Envoy presented.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DestinationSpec {
    pub address: String,
    #[serde(default)]
    pub principal: String,
}

/// What a test expects: `expect: allow` or a mapping.
#[derive(Debug, Clone)]
pub enum Expect {
    Outcome(ExpectedOutcome),
    Detailed(Detailed),
}

/// A word or a mapping, with errors that name the bad value or field (an untagged enum would
/// only say that nothing matched).
impl<'de> Deserialize<'de> for Expect {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Expect;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("allow, deny, unauthenticated, or a mapping with `decision`")
            }

            fn visit_str<E: serde::de::Error>(self, value: &str) -> Result<Expect, E> {
                ExpectedOutcome::deserialize(serde::de::value::StrDeserializer::<E>::new(value))
                    .map(Expect::Outcome)
            }

            fn visit_map<M: serde::de::MapAccess<'de>>(self, map: M) -> Result<Expect, M::Error> {
                Detailed::deserialize(serde::de::value::MapAccessDeserializer::new(map))
                    .map(Expect::Detailed)
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExpectedOutcome {
    Allow,
    Deny,
    Unauthenticated,
}

impl ExpectedOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Allow => "allow",
            Self::Deny => "deny",
            Self::Unauthenticated => "unauthenticated",
        }
    }
}

/// An expectation with details; every field given must match.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Detailed {
    pub decision: ExpectedOutcome,
    /// The reason code (`policy_denied`, `no_route`, `missing_token`, …).
    #[serde(default)]
    pub reason: Option<String>,
    /// The determining policy ids, as a set.
    #[serde(default)]
    pub policies: Option<Vec<String>>,
    /// The HTTP status of a denial.
    #[serde(default)]
    pub status: Option<u16>,
    /// Headers of the answer (upstream on allow, to the client on deny); a subset.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// False when dry-run lets the request through whatever the decision.
    #[serde(default)]
    pub enforced: Option<bool>,
}

impl Expect {
    pub fn detailed(&self) -> Detailed {
        match self {
            Self::Outcome(decision) => Detailed {
                decision: *decision,
                reason: None,
                policies: None,
                status: None,
                headers: BTreeMap::new(),
                enforced: None,
            },
            Self::Detailed(detailed) => detailed.clone(),
        }
    }
}

/// Why a case could not become a CheckRequest.
#[derive(Debug, thiserror::Error)]
pub enum CaseError {
    #[error("give either `token` (claims) or `raw_token`, not both")]
    TwoTokens,
    #[error("`token` needs the offline authorizer (claims are signed with its ephemeral key)")]
    ClaimsNeedOffline,
    #[error("certificate `{path}`: {source}")]
    Certificate {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("peer.address `{0}` is not ip:port")]
    Address(String),
    #[error("destination.address `{0}` is not ip:port")]
    DestinationAddress(String),
    #[error(transparent)]
    Sign(#[from] OfflineError),
}

impl Case {
    /// The CheckRequest Envoy would send for this case. `base` resolves certificate paths;
    /// `offline` signs token claims (a remote server can only take a raw token).
    pub fn build(&self, base: &Path, offline: Option<&Offline>) -> Result<CheckRequest, CaseError> {
        let RequestSpec {
            method,
            path,
            host,
            scheme,
            headers,
            context_extensions,
            route_metadata,
            body,
        } = &self.request;
        let mut builder = CheckBuilder::new(method, path).host(host).scheme(scheme);
        for (name, value) in headers {
            builder = builder.header(&name.to_ascii_lowercase(), value);
        }
        for (key, value) in context_extensions {
            builder = builder.extension(key, value);
        }
        for (key, value) in route_metadata {
            builder = builder.route_metadata(key, value);
        }
        match body {
            None => {}
            Some(serde_json::Value::String(text)) => builder = builder.body(text),
            Some(json) => {
                // A body written as YAML is JSON, and says so unless the case says otherwise.
                if !headers
                    .keys()
                    .any(|k| k.eq_ignore_ascii_case("content-type"))
                {
                    builder = builder.header("content-type", "application/json");
                }
                builder = builder.body(&json.to_string());
            }
        }
        let token = match (&self.token, &self.raw_token, offline) {
            (Some(_), Some(_), _) => return Err(CaseError::TwoTokens),
            (Some(claims), None, Some(offline)) => {
                Some(offline.sign(claims, self.issuer.as_deref())?)
            }
            (Some(_), None, None) => return Err(CaseError::ClaimsNeedOffline),
            (None, raw, _) => raw.clone(),
        };
        if let Some(token) = token {
            builder = builder.bearer(&token);
        }
        if let Some(peer) = &self.peer {
            if let Some(id) = &peer.spiffe_id {
                builder = builder.peer(id);
            }
            if let Some(certificate) = &peer.certificate {
                let pem = if certificate.contains("-----BEGIN") {
                    certificate.clone()
                } else {
                    let path = base.join(certificate);
                    std::fs::read_to_string(&path).map_err(|source| CaseError::Certificate {
                        path: path.display().to_string(),
                        source,
                    })?
                };
                let encoded =
                    percent_encoding::utf8_percent_encode(&pem, percent_encoding::NON_ALPHANUMERIC)
                        .to_string();
                builder = builder.certificate(&encoded);
            }
            if let Some(address) = &peer.address {
                let parsed: std::net::SocketAddr = address
                    .parse()
                    .map_err(|_| CaseError::Address(address.clone()))?;
                builder = builder.address(&parsed.ip().to_string(), u32::from(parsed.port()));
            }
        }
        if let Some(destination) = &self.destination {
            let parsed: std::net::SocketAddr = destination
                .address
                .parse()
                .map_err(|_| CaseError::DestinationAddress(destination.address.clone()))?;
            builder = builder.destination(
                &parsed.ip().to_string(),
                u32::from(parsed.port()),
                &destination.principal,
            );
        }
        Ok(builder.build())
    }
}
